//! Reference placement: POSIX `cksum` of the key, modulo the host count, then
//! the first healthy host wrapping round. Pure.

use crc::{Crc, CRC_32_CKSUM};

use netbridge_protocol::target::{Target, VpcId};

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

/// The one-line JSON that `ensure-network-device` prints for `host`: the
/// host, the router namespace and, for a VPC or tier, the VPC id.
pub fn device_details(target: Target, host: &str) -> String {
    #[derive(serde::Serialize)]
    struct Details<'a> {
        host: &'a str,
        namespace: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        vpc_id: Option<VpcId>,
    }
    let d = Details {
        host,
        namespace: target.namespace().to_string(),
        vpc_id: target.vpc_id(),
    };
    serde_json::to_string(&d).unwrap_or_default()
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
    fn device_details_name_the_router() {
        use netbridge_protocol::target::NetworkId;
        let net = Target::Network(NetworkId::new(42));
        assert_eq!(net.placement_key(), "42");
        assert_eq!(
            device_details(net, "10.0.0.1"),
            r#"{"host":"10.0.0.1","namespace":"cs-net-42"}"#
        );
        let tier = Target::Tier {
            vpc: VpcId::new(7),
            network: NetworkId::new(42),
        };
        assert_eq!(tier.placement_key(), "7");
        assert_eq!(
            device_details(tier, "h2"),
            r#"{"host":"h2","namespace":"cs-vpc-7","vpc_id":"7"}"#
        );
    }
}
