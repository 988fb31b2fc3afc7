//! Whitelist validators for every scalar the protocol carries. Each returns a
//! typed value or `ProtocolError::InvalidField` naming the field; nothing that
//! passes here can carry shell metacharacters, newlines or overlong text into
//! an argument vector or a configuration file.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{sanitize_for_message, ProtocolError};

/// Longest scalar accepted anywhere (hostnames are the longest legal values).
pub const MAX_SCALAR_LEN: usize = 255;

pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> ProtocolError {
    ProtocolError::InvalidField {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn bad_value(field: &str, value: &str, what: &str) -> ProtocolError {
    invalid(
        field,
        format!("'{}' is not {what}", sanitize_for_message(value)),
    )
}

/// Rejects empty, overlong and control-character values common to all checks.
fn basic(field: &str, value: &str) -> Result<(), ProtocolError> {
    if value.len() > MAX_SCALAR_LEN {
        return Err(invalid(
            field,
            format!(
                "value too long ({} bytes, limit {MAX_SCALAR_LEN})",
                value.len()
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "control characters are not allowed"));
    }
    Ok(())
}

/// Decimal id (`42`): digits only, no sign, at most 19 digits.
pub fn id(field: &str, value: &str) -> Result<u64, ProtocolError> {
    basic(field, value)?;
    if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_value(field, value, "a decimal id"));
    }
    value
        .parse::<u64>()
        .map_err(|_| bad_value(field, value, "a decimal id"))
}

/// `true` / `false`, case-insensitive.
pub fn boolean(field: &str, value: &str) -> Result<bool, ProtocolError> {
    basic(field, value)?;
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad_value(field, value, "true or false")),
    }
}

/// Dotted-quad IPv4 address; leading zeros are refused (no octal ambiguity).
pub fn ipv4(field: &str, value: &str) -> Result<Ipv4Addr, ProtocolError> {
    basic(field, value)?;
    Ipv4Addr::from_str(value).map_err(|_| bad_value(field, value, "an IPv4 address"))
}

/// IPv6 address.
pub fn ipv6(field: &str, value: &str) -> Result<Ipv6Addr, ProtocolError> {
    basic(field, value)?;
    Ipv6Addr::from_str(value).map_err(|_| bad_value(field, value, "an IPv6 address"))
}

/// IPv4 or IPv6 address.
pub fn ip(field: &str, value: &str) -> Result<IpAddr, ProtocolError> {
    basic(field, value)?;
    IpAddr::from_str(value).map_err(|_| bad_value(field, value, "an IP address"))
}

/// An IPv4 address with a prefix length. Host bits are kept (`203.0.113.10/24`
/// is a valid `public_cidr`); [`Ipv4Cidr::network`] clears them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }
    /// The network address (host bits cleared) with the same prefix.
    pub fn network(self) -> Ipv4Cidr {
        Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix: self.prefix,
        }
    }
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }
    /// `0.0.0.0/0`: matches everything.
    pub fn is_any(self) -> bool {
        self.prefix == 0
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `a.b.c.d/n`; a bare address means /32.
pub fn ipv4_cidr(field: &str, value: &str) -> Result<Ipv4Cidr, ProtocolError> {
    basic(field, value)?;
    let (addr, prefix) = match value.split_once('/') {
        Some((a, p)) => (a, p),
        None => (value, "32"),
    };
    let addr = Ipv4Addr::from_str(addr).map_err(|_| bad_value(field, value, "an IPv4 CIDR"))?;
    if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_value(field, value, "an IPv4 CIDR"));
    }
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| bad_value(field, value, "an IPv4 CIDR"))?;
    if prefix > 32 {
        return Err(bad_value(field, value, "an IPv4 CIDR (prefix 0-32)"));
    }
    Ok(Ipv4Cidr { addr, prefix })
}

/// An IPv6 address with a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ipv6Cidr {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `x::/n`; a bare address means /128.
pub fn ipv6_cidr(field: &str, value: &str) -> Result<Ipv6Cidr, ProtocolError> {
    basic(field, value)?;
    let (addr, prefix) = match value.split_once('/') {
        Some((a, p)) => (a, p),
        None => (value, "128"),
    };
    let addr = Ipv6Addr::from_str(addr).map_err(|_| bad_value(field, value, "an IPv6 CIDR"))?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_value(field, value, "an IPv6 CIDR"));
    }
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| bad_value(field, value, "an IPv6 CIDR"))?;
    if prefix > 128 {
        return Err(bad_value(field, value, "an IPv6 CIDR (prefix 0-128)"));
    }
    Ok(Ipv6Cidr { addr, prefix })
}

/// Dotted netmask (`255.255.255.0`) → prefix length; non-contiguous refused.
pub fn netmask(field: &str, value: &str) -> Result<u8, ProtocolError> {
    let m = u32::from(ipv4(field, value)?);
    let prefix = m.leading_ones();
    if m.checked_shl(prefix).unwrap_or(0) != 0 {
        return Err(bad_value(field, value, "a contiguous netmask"));
    }
    Ok(prefix as u8)
}

/// A TCP/UDP port 1-65535.
pub fn port(field: &str, value: &str) -> Result<u16, ProtocolError> {
    basic(field, value)?;
    if value.is_empty() || value.len() > 5 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_value(field, value, "a port (1-65535)"));
    }
    match value.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(bad_value(field, value, "a port (1-65535)")),
    }
}

/// An inclusive port range; a single port has `start == end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn single(port: u16) -> PortRange {
        PortRange {
            start: port,
            end: port,
        }
    }
    pub fn is_single(self) -> bool {
        self.start == self.end
    }
    /// Number of ports in the range.
    pub fn len(self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }
    pub fn is_empty(self) -> bool {
        false
    }
}

impl fmt::Display for PortRange {
    /// nftables syntax: `80` or `80-90`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

const RANGE_WHAT: &str = "a port (1-65535) or range a-b";

/// `22` or `8080-8090` (start ≤ end).
pub fn port_range(field: &str, value: &str) -> Result<PortRange, ProtocolError> {
    basic(field, value)?;
    match value.split_once('-') {
        None => Ok(PortRange::single(
            port(field, value).map_err(|_| bad_value(field, value, RANGE_WHAT))?,
        )),
        Some((a, b)) => {
            let start = port(field, a).map_err(|_| bad_value(field, value, RANGE_WHAT))?;
            let end = port(field, b).map_err(|_| bad_value(field, value, RANGE_WHAT))?;
            if start > end {
                return Err(invalid(
                    field,
                    format!(
                        "range '{}' starts after it ends",
                        sanitize_for_message(value)
                    ),
                ));
            }
            Ok(PortRange { start, end })
        }
    }
}

/// Transport protocol of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    All,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::All => "all",
        }
    }
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }
}

/// `tcp`, `udp`, `icmp`, `all` (case-insensitive).
pub fn protocol(field: &str, value: &str) -> Result<Protocol, ProtocolError> {
    basic(field, value)?;
    match value.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "icmp" => Ok(Protocol::Icmp),
        "all" | "any" => Ok(Protocol::All),
        _ => Err(bad_value(field, value, "a protocol (tcp, udp, icmp, all)")),
    }
}

/// ICMP type or code: -1 (any) or 0-255.
pub fn icmp_value(field: &str, value: i64) -> Result<Option<u8>, ProtocolError> {
    match value {
        -1 => Ok(None),
        0..=255 => Ok(Some(value as u8)),
        _ => Err(invalid(
            field,
            format!("{value} is not an ICMP value (-1 or 0-255)"),
        )),
    }
}

/// A VLAN tag; `None` is untagged.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub struct Vlan(pub Option<u16>);

impl Vlan {
    /// The tag as used in names (`100`, or `untagged`).
    pub fn tag(self) -> String {
        match self.0 {
            Some(v) => v.to_string(),
            None => "untagged".to_string(),
        }
    }
}

/// `vlan://100`, `100`, `` / `untagged` / `vlan://untagged` (→ untagged); 1-4094.
pub fn vlan(field: &str, value: &str) -> Result<Vlan, ProtocolError> {
    basic(field, value)?;
    let v = value.strip_prefix("vlan://").unwrap_or(value);
    if v.is_empty() || v.eq_ignore_ascii_case("untagged") {
        return Ok(Vlan(None));
    }
    if v.len() > 4 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_value(field, value, "a VLAN (vlan://N, N, untagged)"));
    }
    match v.parse::<u16>() {
        Ok(n @ 1..=4094) => Ok(Vlan(Some(n))),
        _ => Err(bad_value(field, value, "a VLAN id 1-4094")),
    }
}

/// MAC address `aa:bb:cc:dd:ee:ff` (normalized to lower case).
pub fn mac(field: &str, value: &str) -> Result<String, ProtocolError> {
    basic(field, value)?;
    let parts: Vec<&str> = value.split(':').collect();
    if parts.len() != 6
        || !parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(bad_value(field, value, "a MAC address"));
    }
    Ok(value.to_ascii_lowercase())
}

/// The one DNS-name rule (RFC 1123): labels of 1-63 letters, digits and
/// `-`, not starting or ending with `-`, at most 253 characters in all;
/// dots between labels only when `dotted` (a domain or FQDN), else one
/// label (a host name). A trailing dot is not part of the name: callers
/// that accept the absolute form strip it first. Used for guest host names
/// and domains (dnsmasq, radvd), hypervisor host names and the bridge's
/// executor host names.
pub fn is_dns_name(value: &str, dotted: bool) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    !value.is_empty()
        && value.len() <= 253
        && (dotted || !value.contains('.'))
        && value.split('.').all(label_ok)
}

/// A host name or FQDN ([`is_dns_name`], dotted).
pub fn hostname(field: &str, value: &str) -> Result<String, ProtocolError> {
    basic(field, value)?;
    if !is_dns_name(value, true) {
        return Err(bad_value(field, value, "a hostname"));
    }
    Ok(value.to_string())
}

/// A Linux interface name usable in `br<dev>-<vlan>`: 1-15 characters of
/// letters, digits, `_`, `.`, `-`, not starting with `-` or `.`.
pub fn device_name(field: &str, value: &str) -> Result<String, ProtocolError> {
    basic(field, value)?;
    let ok = !value.is_empty()
        && value.len() <= 15
        && !value.starts_with('-')
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return Err(bad_value(
            field,
            value,
            "an interface name (≤15 of A-Z a-z 0-9 _ . -)",
        ));
    }
    Ok(value.to_string())
}

/// Free-form but safe token (e.g. a rule name): letters, digits and `_ . - : /`
/// only, at most `MAX_SCALAR_LEN` bytes.
pub fn token(field: &str, value: &str) -> Result<String, ProtocolError> {
    basic(field, value)?;
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':' | b'/'))
    {
        return Err(bad_value(
            field,
            value,
            "a plain token (A-Z a-z 0-9 _ . - : /)",
        ));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(e: ProtocolError) -> String {
        e.to_string()
    }

    #[test]
    fn ids_are_plain_decimals() {
        assert_eq!(id("network_id", "42"), Ok(42));
        for bad in [
            "",
            "-1",
            "+4",
            "4 2",
            "42;",
            "$(id)",
            "0x10",
            "99999999999999999999",
        ] {
            let e = id("network_id", bad).unwrap_err();
            assert!(
                matches!(e, ProtocolError::InvalidField { ref field, .. } if field == "network_id"),
                "{bad}"
            );
        }
    }

    #[test]
    fn addresses_and_cidrs() {
        assert_eq!(ipv4("ip", "10.0.0.1"), Ok(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(ipv4("ip", "010.0.0.1").is_err());
        assert!(ipv4("ip", "10.0.0.1\n").is_err());
        assert!(ipv4("ip", "10.0.0.256").is_err());
        let c = ipv4_cidr("public_cidr", "203.0.113.10/24").unwrap();
        assert_eq!(c.to_string(), "203.0.113.10/24");
        assert_eq!(c.network().to_string(), "203.0.113.0/24");
        assert!(c.contains(Ipv4Addr::new(203, 0, 113, 200)));
        assert_eq!(ipv4_cidr("cidr", "10.1.1.1").unwrap().prefix, 32);
        assert!(ipv4_cidr("cidr", "10.0.0.0/33").is_err());
        assert!(ipv4_cidr("cidr", "10.0.0.0/").is_err());
        assert!(ipv4_cidr("cidr", "10.0.0.0/24;reboot").is_err());
        assert!(ipv6_cidr("network_ip6_cidr", "fd00::/64").is_ok());
        assert!(ipv6_cidr("network_ip6_cidr", "fd00::/129").is_err());
        assert_eq!(netmask("netmask", "255.255.255.0"), Ok(24));
        assert!(netmask("netmask", "255.0.255.0").is_err());
    }

    #[test]
    fn ports_and_ranges() {
        assert_eq!(port_range("public_port", "22"), Ok(PortRange::single(22)));
        assert_eq!(
            port_range("public_port", "8080-8090"),
            Ok(PortRange {
                start: 8080,
                end: 8090
            })
        );
        assert_eq!(PortRange { start: 80, end: 90 }.to_string(), "80-90");
        for bad in [
            "0",
            "65536",
            "90-80",
            "80:90",
            "80-",
            "-80",
            "a",
            "80-90-100",
            "80;",
        ] {
            assert!(port_range("public_port", bad).is_err(), "{bad}");
        }
        assert_eq!(
            reason(port_range("public_port", "90-80").unwrap_err()),
            "invalid value for 'public_port': range '90-80' starts after it ends"
        );
    }

    #[test]
    fn vlans_in_every_form() {
        assert_eq!(vlan("vlan", "vlan://100"), Ok(Vlan(Some(100))));
        assert_eq!(vlan("vlan", "100"), Ok(Vlan(Some(100))));
        assert_eq!(vlan("vlan", ""), Ok(Vlan(None)));
        assert_eq!(vlan("vlan", "untagged"), Ok(Vlan(None)));
        assert_eq!(vlan("vlan", "vlan://untagged"), Ok(Vlan(None)));
        for bad in ["0", "4095", "vlan://5000", "vxlan://5", "10;0"] {
            assert!(vlan("vlan", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_macs_protocols() {
        assert!(mac("mac", "02:00:0A:00:00:05").is_ok());
        assert!(mac("mac", "02:00:0a:00:00").is_err());
        assert!(hostname("hostname", "vm-1.example").is_ok());
        for bad in ["-vm", "vm_1", "a;b", "$(reboot)", "a\nb", ""] {
            assert!(hostname("hostname", bad).is_err(), "{bad}");
        }
        assert!(device_name("guest.network.device", "eth1").is_ok());
        assert!(device_name("guest.network.device", "averyveryverylongname").is_err());
        assert!(device_name("guest.network.device", "eth1;ls").is_err());
        assert_eq!(protocol("protocol", "TCP"), Ok(Protocol::Tcp));
        assert!(protocol("protocol", "gre").is_err());
        assert_eq!(icmp_value("icmpType", -1), Ok(None));
        assert_eq!(icmp_value("icmpType", 8), Ok(Some(8)));
        assert!(icmp_value("icmpType", 256).is_err());
    }

    #[test]
    fn overlong_values_are_refused_and_named() {
        let long = "1".repeat(300);
        let e = id("network_id", &long).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("invalid value for 'network_id': value too long"));
    }
}
