//! Rule documents (`fw_rules`, `acl_rules`) as validated types. The
//! guest-service documents (`lb_rules`, `vm_data`, `restore_data`) are parsed
//! from the raw payload by `executor::services` (one path, no duplicate). Each parser takes the decoded JSON
//! (see [`super::envelope::decode_document`]) and names the offending field
//! with its path, e.g. `fw_rules.rules[2].sourceCidrs[0]`.
//!
//! Fields are read strictly ([`Fields::strict`]): only an absent optional
//! field takes its default. `null`, an empty or blank value, an empty list
//! entry, ports on a protocol without ports and ICMP type/code on a protocol
//! other than ICMP are refused, because each would otherwise widen the rule
//! (every protocol, every port, every address).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::envelope::Fields;
use super::validate::{self, invalid, Ipv4Cidr, PortRange, Protocol};
use super::ProtocolError;

/// Most rules accepted in one document.
pub const MAX_RULES: usize = 100_000;

fn object<'a>(field: &str, v: &'a Value) -> Result<&'a Map<String, Value>, ProtocolError> {
    v.as_object()
        .ok_or_else(|| invalid(field, "expected a JSON object"))
}

fn array<'a>(field: &str, v: &'a Value) -> Result<&'a Vec<Value>, ProtocolError> {
    let a = v
        .as_array()
        .ok_or_else(|| invalid(field, "expected a JSON array"))?;
    if a.len() > MAX_RULES {
        return Err(invalid(field, format!("more than {MAX_RULES} entries")));
    }
    Ok(a)
}

/// Port range from `portStart`/`portEnd` (either may be missing: a single
/// port; both missing: all ports).
fn ports(f: &Fields<'_>, start: &str, end: &str) -> Result<Option<PortRange>, ProtocolError> {
    let s = f.opt(start, validate::port)?;
    let e = f.opt(end, validate::port)?;
    match (s, e) {
        (None, None) => Ok(None),
        (Some(a), None) | (None, Some(a)) => Ok(Some(PortRange::single(a))),
        (Some(a), Some(b)) if a <= b => Ok(Some(PortRange { start: a, end: b })),
        (Some(a), Some(b)) => Err(invalid(
            &f.name(end),
            format!("{b} is lower than {start} {a}"),
        )),
    }
}

fn icmp(f: &Fields<'_>, key: &str) -> Result<Option<u8>, ProtocolError> {
    match f.opt_int(key)? {
        None => Ok(None),
        Some(v) => validate::icmp_value(&f.name(key), v),
    }
}

/// Ports and ICMP type/code of a rule with `protocol`. Ports of a protocol
/// without ports (`{"protocol": "all", "portStart": 22}` would open every
/// port of every protocol) and ICMP fields of another protocol are refused,
/// as CloudStack itself refuses them.
fn protocol_details(f: &Fields<'_>, protocol: Protocol) -> Result<ProtocolDetails, ProtocolError> {
    let ports = ports(f, "portStart", "portEnd")?;
    if ports.is_some() && !protocol.has_ports() {
        let key = if f.present("portStart")?.is_some() {
            "portStart"
        } else {
            "portEnd"
        };
        return Err(invalid(
            &f.name(key),
            format!("ports only apply to tcp and udp, not {}", protocol.as_str()),
        ));
    }
    let (icmp_type, icmp_code) = (icmp(f, "icmpType")?, icmp(f, "icmpCode")?);
    if protocol != Protocol::Icmp {
        for key in ["icmpType", "icmpCode"] {
            if f.present(key)?.is_some() {
                return Err(invalid(
                    &f.name(key),
                    format!("only applies to icmp, not {}", protocol.as_str()),
                ));
            }
        }
    }
    Ok(ProtocolDetails {
        ports,
        icmp_type,
        icmp_code,
    })
}

/// The protocol-dependent fields of a rule.
struct ProtocolDetails {
    ports: Option<PortRange>,
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
}

fn cidrs(f: &Fields<'_>, key: &str) -> Result<Vec<Ipv4Cidr>, ProtocolError> {
    let name = f.name(key);
    let mut out: Vec<Ipv4Cidr> = Vec::new();
    for (i, s) in f.str_list(key)?.iter().enumerate() {
        // The indexed name is built only for the error.
        let c = validate::ipv4_cidr("", s)
            .or_else(|_| validate::ipv4_cidr(&format!("{name}[{i}]"), s))?
            .network();
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// Direction of a firewall rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

/// One `fw_rules` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwRule {
    pub id: Option<u64>,
    pub direction: Direction,
    pub protocol: Protocol,
    pub ports: Option<PortRange>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// Ingress: the public IP the rule opens.
    pub public_ip: Option<Ipv4Addr>,
    /// Deduplicated, host bits cleared; empty = any.
    pub source_cidrs: Vec<Ipv4Cidr>,
    pub dest_cidrs: Vec<Ipv4Cidr>,
}

/// The whole firewall of a network (`fw_rules`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwRules {
    pub default_egress_allow: bool,
    pub cidr: Option<Ipv4Cidr>,
    pub rules: Vec<FwRule>,
}

impl FwRules {
    pub fn parse(field: &str, doc: &Value) -> Result<FwRules, ProtocolError> {
        let f = Fields::strict(field, object(field, doc)?);
        let default_egress_allow = f.opt_bool("default_egress_allow")?.unwrap_or(true);
        let cidr = f.opt("cidr", validate::ipv4_cidr)?;
        let mut rules = Vec::new();
        if let Some(list) = f.present("rules")? {
            let list_name = f.name("rules");
            let items = array(&list_name, list)?;
            // Field names (`fw_rules.rules[7].portStart`) only serve error
            // messages but cost most of the parse of a 10,000-rule document:
            // rules are read without them first (same validators, same
            // result) and, only if one is refused, again with them for the
            // error.
            let unnamed: Option<Vec<FwRule>> = items
                .iter()
                .map(|r| {
                    r.as_object()
                        .and_then(|m| FwRule::parse(&Fields::strict("", m)).ok())
                })
                .collect();
            match unnamed {
                Some(all) => rules = all,
                None => {
                    for (i, r) in items.iter().enumerate() {
                        let rname = format!("{list_name}[{i}]");
                        let rf = Fields::strict(&rname, object(&rname, r)?);
                        rules.push(FwRule::parse(&rf)?);
                    }
                }
            }
        }
        Ok(FwRules {
            default_egress_allow,
            cidr,
            rules,
        })
    }
}

impl FwRule {
    fn parse(f: &Fields<'_>) -> Result<FwRule, ProtocolError> {
        let direction = match f.opt_str("type")?.as_deref().map(str::to_ascii_lowercase) {
            None => Direction::Ingress,
            Some(t) if t == "ingress" => Direction::Ingress,
            Some(t) if t == "egress" => Direction::Egress,
            Some(t) => {
                return Err(invalid(
                    &f.name("type"),
                    format!(
                        "'{}' is not ingress or egress",
                        super::sanitize_for_message(&t)
                    ),
                ))
            }
        };
        let protocol = f
            .opt("protocol", validate::protocol)?
            .unwrap_or(Protocol::All);
        let ProtocolDetails {
            ports,
            icmp_type,
            icmp_code,
        } = protocol_details(f, protocol)?;
        Ok(FwRule {
            id: f.opt("id", validate::id)?,
            direction,
            protocol,
            ports,
            icmp_type,
            icmp_code,
            public_ip: f.opt("publicIp", validate::ipv4)?,
            source_cidrs: cidrs(f, "sourceCidrs")?,
            dest_cidrs: cidrs(f, "destCidrs")?,
        })
    }
}

/// `allow` / `deny` of an ACL rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclAction {
    Allow,
    Deny,
}

/// One `acl_rules` entry (VPC tiers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclRule {
    pub number: u64,
    pub action: AclAction,
    pub direction: Direction,
    pub protocol: Protocol,
    pub ports: Option<PortRange>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// Sources for ingress, destinations for egress.
    pub cidrs: Vec<Ipv4Cidr>,
}

impl AclRule {
    /// Parses the array and sorts it by `number` (lower first).
    pub fn parse_list(field: &str, doc: &Value) -> Result<Vec<AclRule>, ProtocolError> {
        let mut out = Vec::new();
        for (i, r) in array(field, doc)?.iter().enumerate() {
            let rname = format!("{field}[{i}]");
            let f = Fields::strict(&rname, object(&rname, r)?);
            let action = match f.req_str("action")?.to_ascii_lowercase().as_str() {
                "allow" => AclAction::Allow,
                "deny" => AclAction::Deny,
                _ => return Err(invalid(&f.name("action"), "not allow or deny")),
            };
            let direction = match f.req_str("trafficType")?.to_ascii_lowercase().as_str() {
                "ingress" => Direction::Ingress,
                "egress" => Direction::Egress,
                _ => return Err(invalid(&f.name("trafficType"), "not ingress or egress")),
            };
            let protocol = f
                .opt("protocol", validate::protocol)?
                .unwrap_or(Protocol::All);
            let ProtocolDetails {
                ports,
                icmp_type,
                icmp_code,
            } = protocol_details(&f, protocol)?;
            out.push(AclRule {
                number: f.req("number", validate::id)?,
                action,
                direction,
                protocol,
                ports,
                icmp_type,
                icmp_code,
                cidrs: cidrs(&f, "sourceCidrs")?,
            });
        }
        out.sort_by_key(|r| r.number);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn firewall_document_parses_with_defaults_and_dedup() {
        let doc = json!({"default_egress_allow": "false", "cidr": "10.1.1.0/24", "rules": [
            {"id": "7", "type": "ingress", "protocol": "TCP", "portStart": "80", "portEnd": "90",
             "publicIp": "203.0.113.10", "sourceCidrs": ["0.0.0.0/0", "10.9.9.9/8", "10.0.0.0/8"]},
            {"id": 8, "type": "ingress", "protocol": "icmp", "icmpType": -1, "icmpCode": "-1",
             "publicIp": "203.0.113.10", "sourceCidrs": "192.0.2.0/24"},
            {"type": "egress", "protocol": "all", "destCidrs": []}
        ]});
        let fw = FwRules::parse("fw_rules", &doc).unwrap();
        assert!(!fw.default_egress_allow);
        assert_eq!(fw.rules.len(), 3);
        assert_eq!(fw.rules[0].ports, Some(PortRange { start: 80, end: 90 }));
        assert_eq!(
            fw.rules[0].source_cidrs.len(),
            2,
            "10.9.9.9/8 and 10.0.0.0/8 are the same network"
        );
        assert_eq!(fw.rules[1].icmp_type, None);
        assert_eq!(fw.rules[1].source_cidrs[0].to_string(), "192.0.2.0/24");
        assert_eq!(fw.rules[2].direction, Direction::Egress);
    }

    #[test]
    fn firewall_errors_name_the_nested_field() {
        let doc = json!({"rules": [{"type": "ingress", "protocol": "tcp", "portStart": "80",
            "publicIp": "203.0.113.10", "sourceCidrs": ["10.0.0.0/8", "1.2.3.4/24;reboot"]}]});
        assert_eq!(
            FwRules::parse("fw_rules", &doc).unwrap_err().to_string(),
            "invalid value for 'fw_rules.rules[0].sourceCidrs[1]': '1.2.3.4/24;reboot' is not an IPv4 CIDR"
        );
        let doc = json!({"rules": [{"protocol": "tcp", "portStart": "90", "portEnd": "80"}]});
        assert!(FwRules::parse("fw_rules", &doc)
            .unwrap_err()
            .to_string()
            .contains("fw_rules.rules[0].portEnd"));
        let doc = json!({"rules": [{"protocol": "icmp", "icmpType": "300"}]});
        assert!(FwRules::parse("fw_rules", &doc).is_err());
        let doc = json!({"rules": [{"type": "sideways"}]});
        assert!(FwRules::parse("fw_rules", &doc).is_err());
    }

    /// The field named by a refusal.
    fn refused_field(e: ProtocolError) -> String {
        match e {
            ProtocolError::InvalidField { field, .. } | ProtocolError::MissingField(field) => field,
            other => panic!("unexpected error {other}"),
        }
    }

    fn tcp_rule() -> Value {
        json!({"id": "4", "type": "ingress", "protocol": "tcp", "portStart": "22", "portEnd": "23",
               "publicIp": "203.0.113.10", "sourceCidrs": ["198.51.100.0/24"], "destCidrs": []})
    }

    fn icmp_rule() -> Value {
        json!({"id": "5", "type": "egress", "protocol": "icmp", "icmpType": "8", "icmpCode": "0",
               "sourceCidrs": ["10.1.1.0/24"], "destCidrs": ["192.0.2.0/24"]})
    }

    /// `bad` in place of the rule at index 3 (after three valid ones).
    fn with_rule_3(bad: Value) -> Value {
        json!({"default_egress_allow": false, "cidr": "10.1.1.0/24",
               "rules": [tcp_rule(), icmp_rule(), tcp_rule(), bad]})
    }

    #[test]
    fn every_firewall_field_present_without_a_value_is_refused_by_path() {
        assert!(FwRules::parse("fw_rules", &with_rule_3(tcp_rule())).is_ok());
        assert!(FwRules::parse("fw_rules", &with_rule_3(icmp_rule())).is_ok());
        let blank_values = [
            json!(""),
            json!("  "),
            Value::Null,
            json!({}),
            json!(["tcp"]),
        ];
        let scalars = [
            (tcp_rule(), "id", "x1"),
            (tcp_rule(), "type", "both"),
            (tcp_rule(), "protocol", "gre"),
            (tcp_rule(), "portStart", "0"),
            (tcp_rule(), "portEnd", "65536"),
            (tcp_rule(), "publicIp", "203.0.113"),
            (icmp_rule(), "icmpType", "256"),
            (icmp_rule(), "icmpCode", "x"),
        ];
        for (base, key, malformed) in scalars {
            for bad in blank_values.iter().cloned().chain([json!(malformed)]) {
                let mut rule = base.clone();
                rule[key] = bad.clone();
                let e = FwRules::parse("fw_rules", &with_rule_3(rule)).unwrap_err();
                assert_eq!(
                    refused_field(e),
                    format!("fw_rules.rules[3].{key}"),
                    "{key} = {bad}"
                );
            }
        }
        for key in ["sourceCidrs", "destCidrs"] {
            for (bad, named) in [
                (json!([""]), format!("fw_rules.rules[3].{key}[0]")),
                (
                    json!(["10.0.0.0/8", " "]),
                    format!("fw_rules.rules[3].{key}[1]"),
                ),
                (
                    json!(["10.0.0.0/8", null]),
                    format!("fw_rules.rules[3].{key}[1]"),
                ),
                (
                    json!(["10.0.0.0/33"]),
                    format!("fw_rules.rules[3].{key}[0]"),
                ),
                (
                    json!([["10.0.0.0/8"]]),
                    format!("fw_rules.rules[3].{key}[0]"),
                ),
                (json!(""), format!("fw_rules.rules[3].{key}")),
                (
                    json!("10.0.0.0/8,,10.1.0.0/16"),
                    format!("fw_rules.rules[3].{key}"),
                ),
                (Value::Null, format!("fw_rules.rules[3].{key}")),
                (json!({}), format!("fw_rules.rules[3].{key}")),
            ] {
                let mut rule = tcp_rule();
                rule[key] = bad.clone();
                let e = FwRules::parse("fw_rules", &with_rule_3(rule)).unwrap_err();
                assert_eq!(refused_field(e), named, "{key} = {bad}");
            }
        }
        // Fields that would widen the rule on another protocol.
        for (protocol, key, value) in [
            ("all", "portStart", "22"),
            ("all", "portEnd", "22"),
            ("icmp", "portStart", "22"),
            ("tcp", "icmpType", "-1"),
            ("udp", "icmpCode", "0"),
            ("all", "icmpType", "8"),
        ] {
            let mut rule =
                json!({"type": "ingress", "protocol": protocol, "publicIp": "203.0.113.10"});
            rule[key] = json!(value);
            let e = FwRules::parse("fw_rules", &with_rule_3(rule)).unwrap_err();
            assert_eq!(
                refused_field(e),
                format!("fw_rules.rules[3].{key}"),
                "{protocol} with {key}"
            );
        }
        // The document's own fields.
        for (key, bad) in [
            ("default_egress_allow", json!("")),
            ("default_egress_allow", Value::Null),
            ("default_egress_allow", json!("yes")),
            ("cidr", json!("")),
            ("cidr", json!("10.1.1.0/40")),
            ("rules", Value::Null),
            ("rules", json!("")),
            ("rules", json!({})),
        ] {
            let mut doc = with_rule_3(tcp_rule());
            doc[key] = bad.clone();
            let e = FwRules::parse("fw_rules", &doc).unwrap_err();
            assert_eq!(refused_field(e), format!("fw_rules.{key}"), "{key} = {bad}");
        }
        let e = FwRules::parse("fw_rules", &with_rule_3(json!("tcp"))).unwrap_err();
        assert_eq!(refused_field(e), "fw_rules.rules[3]");
    }

    #[test]
    fn absent_firewall_fields_take_their_documented_defaults() {
        let fw = FwRules::parse(
            "fw_rules",
            &json!({"rules": [{"type": "egress"}, {"protocol": "udp", "publicIp": "203.0.113.10"},
                              {"protocol": "tcp", "portStart": "80"}]}),
        )
        .unwrap();
        assert!(fw.default_egress_allow);
        assert_eq!(fw.cidr, None);
        let r = &fw.rules[0];
        assert_eq!(
            (r.direction, r.protocol, r.ports),
            (Direction::Egress, Protocol::All, None)
        );
        assert!(r.source_cidrs.is_empty() && r.dest_cidrs.is_empty() && r.id.is_none());
        assert_eq!(fw.rules[1].direction, Direction::Ingress);
        assert_eq!(fw.rules[1].ports, None, "udp without ports: every port");
        assert_eq!(fw.rules[2].public_ip, None, "no publicIp: every public IP");
        assert_eq!(fw.rules[2].ports, Some(PortRange::single(80)));
        // An empty list (what CloudStack sends for "no CIDR") is any address.
        let fw = FwRules::parse(
            "fw_rules",
            &json!({"rules": [tcp_rule()], "cidr": "10.1.1.0/24"}),
        )
        .unwrap();
        assert!(fw.rules[0].dest_cidrs.is_empty());
        assert_eq!(
            FwRules::parse("fw_rules", &json!({})).unwrap().rules,
            vec![]
        );
    }

    #[test]
    fn acl_items_present_without_a_value_are_refused_by_path() {
        let item = json!({"number": "10", "action": "allow", "trafficType": "ingress",
                          "protocol": "tcp", "portStart": "22", "portEnd": "22", "sourceCidrs": ["10.0.0.0/8"]});
        for key in [
            "number",
            "action",
            "trafficType",
            "protocol",
            "portStart",
            "portEnd",
        ] {
            for bad in [json!(""), Value::Null, json!(" ")] {
                let mut i = item.clone();
                i[key] = bad.clone();
                let e = AclRule::parse_list("acl_rules", &json!([item.clone(), i])).unwrap_err();
                assert_eq!(
                    refused_field(e),
                    format!("acl_rules[1].{key}"),
                    "{key} = {bad}"
                );
            }
        }
        let mut i = item.clone();
        i["sourceCidrs"] = json!(["10.0.0.0/8", ""]);
        let e = AclRule::parse_list("acl_rules", &json!([i])).unwrap_err();
        assert_eq!(refused_field(e), "acl_rules[0].sourceCidrs[1]");
        let mut i = item;
        i["protocol"] = json!("all");
        let e = AclRule::parse_list("acl_rules", &json!([i])).unwrap_err();
        assert_eq!(refused_field(e), "acl_rules[0].portStart");
    }

    #[test]
    fn acl_rules_sorted_by_number() {
        let doc = json!([
            {"number": "20", "action": "deny", "trafficType": "egress", "protocol": "all", "sourceCidrs": []},
            {"number": "10", "action": "allow", "trafficType": "ingress", "protocol": "tcp",
             "portStart": "22", "portEnd": "22", "sourceCidrs": ["10.0.0.0/8"]}
        ]);
        let acl = AclRule::parse_list("acl_rules", &doc).unwrap();
        assert_eq!(acl[0].number, 10);
        assert_eq!(acl[1].action, AclAction::Deny);
    }
}
