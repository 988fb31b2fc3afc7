//! Typed, validated payload fields of the VPC commands (`implement-vpc`,
//! `update-vpc-source-nat-ip`, and the public-address fields the VPC tier
//! commands share). Pure: the executor maps these to its desired state.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Map, Value};

use super::target::VpcId;
use super::validate::invalid;
use super::ProtocolError;

/// Reads a scalar that CloudStack may send as a JSON string or number.
/// Empty strings and null count as absent.
pub fn scalar_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if s.trim().is_empty() => None,
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Normalizes a VLAN field (`vlan://100`, `100`, empty, `untagged`) to its
/// digits or `untagged`.
pub fn normalize_vlan(field: &str, raw: Option<&str>) -> Result<String, ProtocolError> {
    let v = raw.unwrap_or("").trim();
    let v = v.strip_prefix("vlan://").unwrap_or(v);
    if v.is_empty() || v.eq_ignore_ascii_case("untagged") {
        return Ok("untagged".into());
    }
    match v.parse::<u16>() {
        Ok(n) if (1..=4094).contains(&n) => Ok(n.to_string()),
        _ => Err(invalid(field, "expected a VLAN id 1-4094 or untagged")),
    }
}

/// The public-address fields of a VPC payload: `public_ip`, `public_cidr`
/// (prefix length, 32 when absent; must contain the address),
/// `public_gateway` and `public_vlan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcPublicIp {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// Normalized VLAN: digits, or `untagged`.
    pub vlan: String,
}

impl VpcPublicIp {
    pub fn parse(payload: &Map<String, Value>) -> Result<VpcPublicIp, ProtocolError> {
        let ip = scalar_str(payload.get("public_ip"))
            .ok_or_else(|| ProtocolError::MissingField("public_ip".into()))?
            .parse::<Ipv4Addr>()
            .map_err(|_| invalid("public_ip", "expected an IPv4 address"))?;
        let prefix_len = match scalar_str(payload.get("public_cidr")) {
            None => 32,
            Some(c) => {
                let net: Ipv4Net = c
                    .parse()
                    .map_err(|_| invalid("public_cidr", "expected an IPv4 CIDR"))?;
                if !net.contains(&ip) {
                    return Err(invalid("public_cidr", format!("does not contain {ip}")));
                }
                net.prefix_len()
            }
        };
        let gateway = scalar_str(payload.get("public_gateway"))
            .map(|g| {
                g.parse::<Ipv4Addr>()
                    .map_err(|_| invalid("public_gateway", "expected an IPv4 address"))
            })
            .transpose()?;
        let vlan = normalize_vlan(
            "public_vlan",
            scalar_str(payload.get("public_vlan")).as_deref(),
        )?;
        Ok(VpcPublicIp {
            ip,
            prefix_len,
            gateway,
            vlan,
        })
    }
}

/// Reads `vpc_cidr` (or the older `cidr`) of a VPC payload: an IPv4 network
/// without host bits.
pub fn parse_vpc_cidr(payload: &Map<String, Value>) -> Result<Ipv4Net, ProtocolError> {
    let field = "vpc_cidr";
    let raw = scalar_str(payload.get("vpc_cidr"))
        .or_else(|| scalar_str(payload.get("cidr")))
        .ok_or_else(|| ProtocolError::MissingField(field.into()))?;
    let net: Ipv4Net = raw
        .parse()
        .map_err(|_| invalid(field, "expected an IPv4 CIDR"))?;
    if net.trunc() != net {
        return Err(invalid(field, "host bits are set"));
    }
    Ok(net)
}

/// `implement-vpc` / `update-vpc-source-nat-ip` payload: the VPC id, its
/// CIDR (`vpc_cidr`, older `cidr`; optional for the update) and the
/// source-NAT address when `public_ip` is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcFields {
    pub vpc_id: VpcId,
    pub cidr: Option<Ipv4Net>,
    pub source_nat: Option<VpcPublicIp>,
}

impl VpcFields {
    pub fn parse(payload: &Map<String, Value>) -> Result<VpcFields, ProtocolError> {
        let vpc_id = scalar_str(payload.get("vpc_id"))
            .ok_or_else(|| ProtocolError::MissingField("vpc_id".into()))?;
        let vpc_id = VpcId::parse(VpcId::FIELD, &vpc_id)?;
        let cidr = if payload.contains_key("vpc_cidr") || payload.contains_key("cidr") {
            Some(parse_vpc_cidr(payload)?)
        } else {
            None
        };
        let source_nat = if scalar_str(payload.get("public_ip")).is_some() {
            Some(VpcPublicIp::parse(payload)?)
        } else {
            None
        };
        Ok(VpcFields {
            vpc_id,
            cidr,
            source_nat,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn err(r: Result<impl std::fmt::Debug, ProtocolError>) -> String {
        match r {
            Ok(v) => format!("unexpected success: {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn public_ip_fields_are_typed_and_name_the_bad_field() {
        let p = VpcPublicIp::parse(&obj(json!({"public_ip": "203.0.113.10",
            "public_cidr": "203.0.113.0/24", "public_gateway": "203.0.113.1",
            "public_vlan": "vlan://100"})))
        .expect("valid public ip");
        assert_eq!(
            p,
            VpcPublicIp {
                ip: Ipv4Addr::new(203, 0, 113, 10),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(203, 0, 113, 1)),
                vlan: "100".into(),
            }
        );
        let bare = VpcPublicIp::parse(&obj(
            json!({"public_ip": "203.0.113.11", "public_vlan": ""}),
        ))
        .expect("bare public ip");
        assert_eq!((bare.prefix_len, bare.vlan.as_str()), (32, "untagged"));
        for (payload, message) in [
            (json!({}), "missing required field 'public_ip'"),
            (
                json!({"public_ip": "x"}),
                "invalid value for 'public_ip': expected an IPv4 address",
            ),
            (
                json!({"public_ip": "203.0.113.10", "public_cidr": "198.51.100.0/24"}),
                "invalid value for 'public_cidr': does not contain 203.0.113.10",
            ),
            (
                json!({"public_ip": "203.0.113.10", "public_gateway": "gw"}),
                "invalid value for 'public_gateway': expected an IPv4 address",
            ),
            (
                json!({"public_ip": "203.0.113.10", "public_vlan": "vlan://5000"}),
                "invalid value for 'public_vlan': expected a VLAN id 1-4094 or untagged",
            ),
        ] {
            assert_eq!(err(VpcPublicIp::parse(&obj(payload))), message);
        }
    }

    #[test]
    fn vpc_fields_are_typed_and_name_the_bad_field() {
        let v = VpcFields::parse(&obj(json!({"vpc_id": 5, "cidr": "10.1.0.0/16"})))
            .expect("valid vpc payload");
        assert_eq!(v.vpc_id, VpcId::new(5));
        assert_eq!(v.cidr, "10.1.0.0/16".parse().ok());
        assert_eq!(v.source_nat, None);
        let update = VpcFields::parse(&obj(json!({"vpc_id": "5", "public_ip": "203.0.113.10"})))
            .expect("update payload");
        assert_eq!(update.cidr, None);
        assert_eq!(
            update.source_nat.map(|p| p.ip),
            Some(Ipv4Addr::new(203, 0, 113, 10))
        );
        for (payload, message) in [
            (
                json!({"vpc_cidr": "10.1.0.0/16"}),
                "missing required field 'vpc_id'",
            ),
            (
                json!({"vpc_id": "5", "vpc_cidr": "10.1.0.1/16"}),
                "invalid value for 'vpc_cidr': host bits are set",
            ),
            (
                json!({"vpc_id": "5", "cidr": "ten"}),
                "invalid value for 'vpc_cidr': expected an IPv4 CIDR",
            ),
        ] {
            assert_eq!(err(VpcFields::parse(&obj(payload))), message);
        }
    }
}
