//! Field validation shared by the guest-service updates. Every value that ends
//! up in a daemon configuration file passes through here first, so renderers
//! can write values verbatim without quoting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::Ipv4Net;
use serde_json::{Map, Value};

use super::ServicesError;
use netbridge_protocol::envelope::DocumentForm;
use netbridge_protocol::{sanitize_for_message, ProtocolError};

pub type Payload = Map<String, Value>;

/// Error naming the field; the value is echoed sanitized.
pub fn invalid(field: &str, reason: impl Into<String>) -> ServicesError {
    ServicesError::Invalid(ProtocolError::InvalidField {
        field: field.to_string(),
        reason: reason.into(),
    })
}

pub fn missing(field: &str) -> ServicesError {
    ServicesError::Invalid(ProtocolError::MissingField(field.to_string()))
}

fn bad_value(field: &str, value: &str, what: &str) -> ServicesError {
    invalid(
        field,
        format!("'{}' is not {what}", sanitize_for_message(value)),
    )
}

/// A scalar field as text. The protocol sends strings; numbers and booleans
/// are accepted in their JSON spelling. Empty strings count as absent.
pub fn opt_str(p: &Payload, field: &str) -> Result<Option<String>, ServicesError> {
    match p.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(invalid(field, "expected a string")),
    }
}

pub fn req_str(p: &Payload, field: &str) -> Result<String, ServicesError> {
    opt_str(p, field)?.ok_or_else(|| missing(field))
}

pub fn ipv4(field: &str, s: &str) -> Result<Ipv4Addr, ServicesError> {
    s.trim()
        .parse()
        .map_err(|_| bad_value(field, s, "an IPv4 address"))
}

pub fn ipv6(field: &str, s: &str) -> Result<Ipv6Addr, ServicesError> {
    s.trim()
        .parse()
        .map_err(|_| bad_value(field, s, "an IPv6 address"))
}

pub fn ip(field: &str, s: &str) -> Result<IpAddr, ServicesError> {
    s.trim()
        .parse()
        .map_err(|_| bad_value(field, s, "an IP address"))
}

pub fn opt_ipv4(p: &Payload, field: &str) -> Result<Option<Ipv4Addr>, ServicesError> {
    opt_str(p, field)?.map(|s| ipv4(field, &s)).transpose()
}

pub fn opt_ipv6(p: &Payload, field: &str) -> Result<Option<Ipv6Addr>, ServicesError> {
    opt_str(p, field)?.map(|s| ipv6(field, &s)).transpose()
}

/// `10.0.0.0/24`; host bits are cleared (`10.0.0.1/24` names the same net).
pub fn cidr4(field: &str, s: &str) -> Result<Ipv4Net, ServicesError> {
    let net: Ipv4Net = s
        .trim()
        .parse()
        .map_err(|_| bad_value(field, s, "an IPv4 CIDR"))?;
    Ok(net.trunc())
}

/// MAC address, normalized to lower case with colons.
pub fn mac(field: &str, s: &str) -> Result<String, ServicesError> {
    let s = s.trim();
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(bad_value(field, s, "a MAC address"));
    }
    Ok(parts.join(":").to_ascii_lowercase())
}

/// RFC 1123 host name: one label, or dotted labels (FQDN) when `dotted`.
pub fn hostname(field: &str, s: &str, dotted: bool) -> Result<String, ServicesError> {
    let s = s.trim();
    let s = s.strip_suffix('.').unwrap_or(s);
    if !netbridge_protocol::validate::is_dns_name(s, dotted) {
        let what = if dotted {
            "a domain name"
        } else {
            "a host name"
        };
        return Err(bad_value(field, s, what));
    }
    Ok(s.to_string())
}

/// Protocol booleans: `"true"`/`"false"` (any case).
pub fn boolean(field: &str, s: &str) -> Result<bool, ServicesError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad_value(field, s, "true or false")),
    }
}

pub fn opt_bool(p: &Payload, field: &str) -> Result<Option<bool>, ServicesError> {
    opt_str(p, field)?.map(|s| boolean(field, &s)).transpose()
}

/// Comma-separated resolver addresses (`dns`), empty entries ignored.
pub fn dns_list(field: &str, s: &str) -> Result<Vec<IpAddr>, ServicesError> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| ip(field, x))
        .collect()
}

pub fn port(field: &str, s: &str) -> Result<u16, ServicesError> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(bad_value(field, s, "a port number 1-65535")),
    }
}

/// Identifiers used in file and section names: `[A-Za-z0-9_.-]{1,64}`, not
/// starting with a dot.
pub fn ident(field: &str, s: &str) -> Result<String, ServicesError> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return Err(bad_value(
            field,
            s,
            "an identifier ([A-Za-z0-9_.-], at most 64)",
        ));
    }
    Ok(s.to_string())
}

/// A rule document (`lb_rules`, `vm_data`, `restore_data`): a JSON value, a
/// string holding JSON, or (older builds) a string that Base64-decodes to
/// JSON ([`netbridge_protocol::envelope::decode_document`]); `null` and an
/// empty string are refused. The form tells how `vm_data` contents are
/// encoded (see [`super::vmdata::ContentEncoding::of`]).
pub fn document(field: &str, v: &Value) -> Result<(Value, DocumentForm), ServicesError> {
    match netbridge_protocol::envelope::decode_document(field, Some(v))? {
        Some((doc, form)) => Ok((doc.into_owned(), form)),
        None => Err(missing(field)),
    }
}

/// A scalar of a rule document (`lb_rules` and its backends): `None` when
/// absent; `null`, an empty or blank string and non-scalars are refused with
/// the field's name, never read as absent (an empty `protocol` or `revoked`
/// must not fall back to a default).
pub fn rule_str(p: &Payload, key: &str, field: &str) -> Result<Option<String>, ServicesError> {
    match p.get(key) {
        None => Ok(None),
        Some(Value::Null) => Err(invalid(field, "null; omit the field to use its default")),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(invalid(field, "empty; omit the field to use its default"))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(invalid(field, "expected a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_is_normalized_and_garbage_refused() {
        assert_eq!(
            mac("mac", "52:54:00:AA:bb:0C").unwrap(),
            "52:54:00:aa:bb:0c"
        );
        assert_eq!(
            mac("mac", "52-54-00-aa-bb-0c").unwrap(),
            "52:54:00:aa:bb:0c"
        );
        let e = mac("mac", "52:54:00:aa:bb:0c\ndhcp-script=/x").unwrap_err();
        assert!(e.to_string().contains("'mac'"), "{e}");
    }

    #[test]
    fn hostnames_refuse_injection() {
        assert_eq!(hostname("hostname", "vm-1", false).unwrap(), "vm-1");
        for bad in ["vm 1", "vm\n1", "-vm", "vm,1", "a.b", "", "vm#x", "vm/x"] {
            let e = hostname("hostname", bad, false).unwrap_err();
            assert!(
                e.to_string().starts_with("invalid value for 'hostname'"),
                "{e}"
            );
        }
        assert_eq!(
            hostname("domain", "cs.example.", true).unwrap(),
            "cs.example"
        );
    }

    #[test]
    fn scalars() {
        assert_eq!(port("publicPort", "80").unwrap(), 80);
        assert!(port("publicPort", "0").is_err());
        assert!(port("publicPort", "65536").is_err());
        assert!(boolean("default_nic", "TRUE").unwrap());
        assert_eq!(
            cidr4("cidr", "10.1.1.7/24").unwrap().to_string(),
            "10.1.1.0/24"
        );
        assert_eq!(dns_list("dns", "8.8.8.8, ,2001:db8::1").unwrap().len(), 2);
        assert!(dns_list("dns", "8.8.8.8,evil").is_err());
        assert!(ident("id", "../x").is_err());
    }
}
