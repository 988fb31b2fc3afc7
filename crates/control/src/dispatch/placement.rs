//! Reference placement: POSIX `cksum` of the key, modulo the host count, then
//! the first healthy host wrapping round. Pure.

use crc::{Crc, CRC_32_CKSUM};

use super::DispatchError;
use netbridge_protocol::sanitize_for_message;

const CKSUM: Crc<u32> = Crc::<u32>::new(&CRC_32_CKSUM);

/// The CRC printed by POSIX `cksum(1)`: CRC-32/CKSUM over the data followed by
/// its length in as few bytes as needed, least significant first.
pub fn cksum(data: &[u8]) -> u32 {
    let mut digest = CKSUM.digest();
    digest.update(data);
    let mut len = data.len() as u64;
    while len > 0 {
        digest.update(&[(len & 0xff) as u8]);
        len >>= 8;
    }
    digest.finalize()
}

/// Host indices in the order placement tries them for `key`.
pub fn placement_order(key: &str, host_count: usize) -> Vec<usize> {
    if host_count == 0 {
        return Vec::new();
    }
    let start = cksum(key.as_bytes()) as usize % host_count;
    (0..host_count).map(|i| (start + i) % host_count).collect()
}

/// What a command is about: a VPC (and its tiers) or a standalone network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub vpc_id: Option<String>,
    pub network_id: Option<String>,
}

impl Scope {
    /// Validates the ids (they end up in namespace and file names).
    pub fn new(vpc_id: Option<&str>, network_id: Option<&str>) -> Result<Scope, DispatchError> {
        let check = |field: &str, v: Option<&str>| -> Result<Option<String>, DispatchError> {
            match v.map(str::trim).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v)
                    if v.len() <= 64
                        && v.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                {
                    Ok(Some(v.to_string()))
                }
                Some(v) => Err(DispatchError::Configuration(format!(
                    "invalid value for '{field}': '{}' is not an id",
                    sanitize_for_message(v)
                ))),
            }
        };
        let scope = Scope {
            vpc_id: check("vpc_id", vpc_id)?,
            network_id: check("network_id", network_id)?,
        };
        if scope.vpc_id.is_none() && scope.network_id.is_none() {
            return Err(DispatchError::Configuration(
                "missing required field 'network_id' (or 'vpc_id')".to_string(),
            ));
        }
        Ok(scope)
    }

    /// The placement key: the decimal `vpc_id` when present, else `network_id`.
    pub fn placement_key(&self) -> &str {
        self.vpc_id
            .as_deref()
            .or(self.network_id.as_deref())
            .unwrap_or_default()
    }

    /// `cs-vpc-<vpc_id>` for VPCs and their tiers, else `cs-net-<network_id>`.
    /// Also the journal key.
    pub fn namespace(&self) -> String {
        match &self.vpc_id {
            Some(v) => netbridge_protocol::namespace::vpc(v),
            None => netbridge_protocol::namespace::network(
                self.network_id.as_deref().unwrap_or_default(),
            ),
        }
    }

    /// The one-line JSON that `ensure-network-device` prints for `host`.
    pub fn device_details(&self, host: &str) -> String {
        #[derive(serde::Serialize)]
        struct Details<'a> {
            host: &'a str,
            namespace: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            vpc_id: Option<&'a str>,
        }
        let d = Details {
            host,
            namespace: self.namespace(),
            vpc_id: self.vpc_id.as_deref(),
        };
        serde_json::to_string(&d).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cksum_matches_posix_vectors() {
        assert_eq!(cksum(b"42"), 1199578407);
        assert_eq!(cksum(b"5"), 1559342856);
        assert_eq!(cksum(b"209"), 493350278);
        assert_eq!(cksum(b"7"), 4228067591);
        // `printf '' | cksum` = 4294967295
        assert_eq!(cksum(b""), 4294967295);
    }

    #[test]
    fn order_starts_at_cksum_mod_n_and_wraps() {
        // 1199578407 % 3 = 0, 1559342856 % 3 = 0, 493350278 % 3 = 2, 4228067591 % 3 = 2
        assert_eq!(placement_order("42", 3), vec![0, 1, 2]);
        assert_eq!(placement_order("209", 3), vec![2, 0, 1]);
        // 1199578407 % 2 = 1
        assert_eq!(placement_order("42", 2), vec![1, 0]);
        assert_eq!(placement_order("5", 2), vec![0, 1]);
        assert_eq!(placement_order("7", 1), vec![0]);
        assert!(placement_order("7", 0).is_empty());
    }

    #[test]
    fn scope_namespace_and_details() {
        let net = Scope::new(None, Some("42")).unwrap();
        assert_eq!(net.placement_key(), "42");
        assert_eq!(
            net.device_details("10.0.0.1"),
            r#"{"host":"10.0.0.1","namespace":"cs-net-42"}"#
        );
        let tier = Scope::new(Some("7"), Some("42")).unwrap();
        assert_eq!(tier.placement_key(), "7");
        assert_eq!(
            tier.device_details("h2"),
            r#"{"host":"h2","namespace":"cs-vpc-7","vpc_id":"7"}"#
        );
        let e = Scope::new(None, None).unwrap_err().to_string();
        assert!(e.contains("'network_id'"), "{e}");
        let e = Scope::new(None, Some("../x")).unwrap_err().to_string();
        assert!(e.contains("'network_id'"), "{e}");
    }
}
