//! Executor endpoints and credentials from the registration details
//! (`physical-network-extension-details`). Pure parsing, no I/O.
//!
//! Keys:
//! - `hosts`: comma list of `addr` or `addr:port` (`[v6]:port` for IPv6 with a
//!   port); `host` is the single-host fallback.
//! - `executor.port`: default port (8443).
//! - `executor.key`: shared HMAC key (hidden; never logged or echoed).
//! - `executor.fingerprint`: hex SHA-256 of the executor's DER leaf
//!   certificate, colons allowed. Pinned; no CA validation. A comma list is
//!   accepted (per-host certificates, or old and new during a rotation).
//! - `executor.insecure`: `true` allows plain HTTP without a fingerprint, and
//!   only when every host is a loopback address (tests).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use super::DispatchError;
use netbridge_protocol::sanitize_for_message;

pub const DEFAULT_EXECUTOR_PORT: u16 = 8443;
pub const KEY_HOSTS: &str = "hosts";
pub const KEY_HOST: &str = "host";
pub const KEY_PORT: &str = "executor.port";
pub const KEY_SECRET: &str = "executor.key";
pub const KEY_FINGERPRINT: &str = "executor.fingerprint";
pub const KEY_INSECURE: &str = "executor.insecure";

/// One executor as named in `hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostEntry {
    /// The entry exactly as listed (trimmed): what placement prints as `host`.
    pub name: String,
    /// Address or DNS name to connect to (IPv6 without brackets).
    pub addr: String,
    pub port: u16,
}

impl HostEntry {
    /// Parses one `hosts` entry with `default_port` for entries without one.
    pub fn parse(entry: &str, default_port: u16) -> Result<HostEntry, DispatchError> {
        let name = entry.trim();
        let bad = |reason: &str| {
            DispatchError::Configuration(format!(
                "invalid value for '{KEY_HOSTS}': entry '{}' {reason}",
                sanitize_for_message(name)
            ))
        };
        if name.is_empty() {
            return Err(bad("is empty"));
        }
        let (addr, port) = if let Some(rest) = name.strip_prefix('[') {
            let (v6, tail) = rest
                .split_once(']')
                .ok_or_else(|| bad("has an unclosed '['"))?;
            let port = match tail {
                "" => default_port,
                t => parse_port(t.strip_prefix(':').ok_or_else(|| bad("is malformed"))?)
                    .ok_or_else(|| bad("has an invalid port"))?,
            };
            (v6.to_string(), port)
        } else if name.matches(':').count() > 1 {
            (name.to_string(), default_port)
        } else if let Some((a, p)) = name.split_once(':') {
            (
                a.to_string(),
                parse_port(p).ok_or_else(|| bad("has an invalid port"))?,
            )
        } else {
            (name.to_string(), default_port)
        };
        if addr.parse::<IpAddr>().is_err()
            && !netbridge_protocol::validate::is_dns_name(&addr, true)
        {
            return Err(bad("is neither an IP address nor a host name"));
        }
        Ok(HostEntry {
            name: name.to_string(),
            addr,
            port,
        })
    }

    /// True for 127.0.0.0/8, ::1 and `localhost`.
    pub fn is_loopback(&self) -> bool {
        match self.addr.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => self.addr.eq_ignore_ascii_case("localhost"),
        }
    }
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p > 0)
}

/// How connections to executors are secured.
#[derive(Clone, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS, accepting only certificates whose DER SHA-256 is listed
    /// (one per executor certificate, or one shared by all).
    Pinned(Vec<[u8; 32]>),
    /// Plain HTTP to loopback, for tests (`executor.insecure=true`).
    InsecureLoopback,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Pinned(fps) => {
                let list: Vec<String> = fps.iter().map(hex::encode).collect();
                write!(f, "Pinned({})", list.join(","))
            }
            Transport::InsecureLoopback => f.write_str("InsecureLoopback"),
        }
    }
}

/// The shared HMAC key. Debug output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Vec<u8>);

impl SecretKey {
    pub fn new(bytes: impl Into<Vec<u8>>) -> SecretKey {
        SecretKey(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Everything needed to reach the executors of one registration.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub hosts: Vec<HostEntry>,
    pub default_port: u16,
    pub key: SecretKey,
    pub transport: Transport,
}

impl ExecutorConfig {
    /// Reads and validates the registration details. Errors name the key and
    /// never contain the value of `executor.key`.
    pub fn from_details(
        details: &BTreeMap<String, String>,
    ) -> Result<ExecutorConfig, DispatchError> {
        let get = |k: &str| details.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let default_port = match get(KEY_PORT) {
            None => DEFAULT_EXECUTOR_PORT,
            Some(p) => parse_port(p).ok_or_else(|| {
                DispatchError::Configuration(format!(
                    "invalid value for '{KEY_PORT}': expected a port number 1-65535, got '{}'",
                    sanitize_for_message(p)
                ))
            })?,
        };
        let list = get(KEY_HOSTS).or_else(|| get(KEY_HOST)).ok_or_else(|| {
            DispatchError::Configuration(format!(
                "missing registration detail '{KEY_HOSTS}' (or '{KEY_HOST}'): no executor hosts configured"
            ))
        })?;
        let mut hosts: Vec<HostEntry> = Vec::new();
        for entry in list.split(',').filter(|e| !e.trim().is_empty()) {
            let host = HostEntry::parse(entry, default_port)?;
            if !hosts.iter().any(|h| h.name == host.name) {
                hosts.push(host);
            }
        }
        if hosts.is_empty() {
            return Err(DispatchError::Configuration(format!(
                "invalid value for '{KEY_HOSTS}': no host listed"
            )));
        }
        let key = match details.get(KEY_SECRET) {
            Some(k) if !k.is_empty() => SecretKey::new(k.as_bytes()),
            _ => {
                return Err(DispatchError::Configuration(format!(
                    "missing registration detail '{KEY_SECRET}': the shared key for signing requests to executors"
                )))
            }
        };
        let insecure = match get(KEY_INSECURE) {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                return Err(DispatchError::Configuration(format!(
                    "invalid value for '{KEY_INSECURE}': expected true or false, got '{}'",
                    sanitize_for_message(v)
                )))
            }
        };
        let transport = match get(KEY_FINGERPRINT) {
            Some(list) => {
                let mut fps = Vec::new();
                for fp in list.split(',').filter(|f| !f.trim().is_empty()) {
                    fps.push(parse_fingerprint(fp)?);
                }
                if fps.is_empty() {
                    return Err(DispatchError::Configuration(format!(
                        "invalid value for '{KEY_FINGERPRINT}': no fingerprint listed"
                    )));
                }
                Transport::Pinned(fps)
            }
            None if insecure => {
                if let Some(h) = hosts.iter().find(|h| !h.is_loopback()) {
                    return Err(DispatchError::Configuration(format!(
                        "'{KEY_INSECURE}=true' is only allowed with loopback hosts; '{}' is not loopback",
                        sanitize_for_message(&h.name)
                    )));
                }
                Transport::InsecureLoopback
            }
            None => {
                return Err(DispatchError::Configuration(format!(
                    "missing registration detail '{KEY_FINGERPRINT}': the SHA-256 fingerprint of the executor certificate is required"
                )))
            }
        };
        Ok(ExecutorConfig {
            hosts,
            default_port,
            key,
            transport,
        })
    }

    /// The configured host whose listed name is `name`.
    pub fn host(&self, name: &str) -> Option<&HostEntry> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

/// Parses a hex SHA-256 fingerprint; colons and case are ignored.
pub fn parse_fingerprint(value: &str) -> Result<[u8; 32], DispatchError> {
    let cleaned: String = value.chars().filter(|c| *c != ':').collect();
    let err = || {
        DispatchError::Configuration(format!(
            "invalid value for '{KEY_FINGERPRINT}': expected 64 hex digits (colons allowed), the SHA-256 of the executor's DER certificate"
        ))
    };
    let bytes = hex::decode(cleaned.trim().to_ascii_lowercase()).map_err(|_| err())?;
    bytes.try_into().map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const FP: &str = "AB:CD:EF:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89";

    #[test]
    fn hosts_ports_and_fingerprint_parse() {
        let cfg = ExecutorConfig::from_details(&details(&[
            (
                "hosts",
                "10.0.0.1, 10.0.0.2:9443,[fd00::1]:7443,fd00::2,exec-3.example",
            ),
            ("executor.port", "8500"),
            ("executor.key", "s3cret"),
            ("executor.fingerprint", FP),
        ]))
        .unwrap();
        let got: Vec<(&str, &str, u16)> = cfg
            .hosts
            .iter()
            .map(|h| (h.name.as_str(), h.addr.as_str(), h.port))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.1", "10.0.0.1", 8500),
                ("10.0.0.2:9443", "10.0.0.2", 9443),
                ("[fd00::1]:7443", "fd00::1", 7443),
                ("fd00::2", "fd00::2", 8500),
                ("exec-3.example", "exec-3.example", 8500),
            ]
        );
        match cfg.transport {
            Transport::Pinned(fp) => assert_eq!(fp[0][0], 0xab),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(format!("{:?}", cfg.key), "SecretKey(<redacted>)");
    }

    #[test]
    fn host_fallback_and_default_port() {
        let cfg = ExecutorConfig::from_details(&details(&[
            ("host", "192.0.2.7"),
            ("executor.key", "k"),
            ("executor.fingerprint", FP),
        ]))
        .unwrap();
        assert_eq!(cfg.hosts[0].port, DEFAULT_EXECUTOR_PORT);
    }

    #[test]
    fn errors_name_the_key_and_never_echo_the_secret() {
        let base = [
            ("hosts", "10.0.0.1"),
            ("executor.key", "TOPSECRET"),
            ("executor.fingerprint", FP),
        ];
        let case = |over: &[(&str, &str)], remove: &str| {
            let mut d = details(&base);
            d.remove(remove);
            for (k, v) in over {
                d.insert(k.to_string(), v.to_string());
            }
            let e = ExecutorConfig::from_details(&d).unwrap_err().to_string();
            assert!(!e.contains("TOPSECRET"), "{e}");
            e
        };
        assert!(case(&[], "hosts").contains("'hosts'"));
        assert!(case(&[], "executor.key").contains("'executor.key'"));
        assert!(case(&[], "executor.fingerprint").contains("'executor.fingerprint'"));
        assert!(case(&[("executor.fingerprint", "abc")], "").contains("'executor.fingerprint'"));
        assert!(case(&[("executor.port", "70000")], "").contains("'executor.port'"));
        assert!(case(&[("hosts", "10.0.0.1:0")], "").contains("'hosts'"));
        assert!(case(&[("hosts", "bad host;rm")], "").contains("'hosts'"));
        assert!(case(&[("executor.insecure", "maybe")], "").contains("'executor.insecure'"));
        // insecure only for loopback
        let e = case(&[("executor.insecure", "true")], "executor.fingerprint");
        assert!(e.contains("only allowed with loopback"), "{e}");
        let mut d = details(&base);
        d.remove("executor.fingerprint");
        d.insert("hosts".into(), "127.0.0.1:9000,[::1]:9001".into());
        d.insert("executor.insecure".into(), "true".into());
        let cfg = ExecutorConfig::from_details(&d).unwrap();
        assert_eq!(cfg.transport, Transport::InsecureLoopback);
    }
}
