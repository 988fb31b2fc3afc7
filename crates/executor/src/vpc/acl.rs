//! Network ACLs of VPC tiers (`apply-network-acl`): parsing, validation and
//! rendering into nft chains.
//!
//! Semantics (CloudStack VPC virtual router):
//! - Rules are evaluated by ascending `number`; the first match decides.
//! - `ingress` = traffic forwarded *into* the tier (out of its guest leg),
//!   `sourceCidrs` are sources; `egress` = traffic forwarded *out of* the tier
//!   (in through its guest leg), `sourceCidrs` are destinations.
//! - Ingress ends with a final deny. Egress ends with a final deny as soon as
//!   the list holds at least one egress rule; a list without egress rules
//!   leaves egress open (the VR only appends its egress DROP when egress
//!   rules exist).
//! - A tier with **no ACL applied** behaves like the VR's bare guest tier:
//!   ingress into the tier is denied (only replies to its own connections
//!   come back), egress out of it is allowed. CloudStack's `default_deny`
//!   list (deny all ingress, deny all egress) and `default_allow` list arrive
//!   as ordinary rules when applied.
//! - Replies (`ct state established,related`) are accepted by the engine's
//!   forward chain before any ACL chain is consulted.
//! - Address families: a CIDR matches only its own family (`0.0.0.0/0` is
//!   all of IPv4, `::/0` all of IPv6); a rule without CIDRs matches both.
//!   So IPv6 into a tier stays denied unless a rule names an IPv6 CIDR or no
//!   CIDR at all. For ICMP with an IPv6 CIDR the type/code numbers are
//!   ICMPv6's, used as given.
//!
//! Rendering: each tier gets two chains, `acl_in_<network_id>` and
//! `acl_out_<network_id>`. A matching *allow* rule `return`s to the calling
//! forward chain (which then applies the other side's ACL and accepts), a
//! *deny* rule drops. The chains are only jumped to for the tier's own guest
//! leg (see [`super::model::VpcState::forward_rules`]), so one tier's ACL never
//! touches another tier's traffic. One nft rule per CIDR keeps first-match
//! order exact and avoids interval-set overlap errors.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{scalar_str, VpcError};
use crate::nft::{Chain, Rule, Verdict};

/// Upper bound on rules × CIDRs rendered for one tier.
const MAX_RENDERED_RULES: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclAction {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrafficType {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclProtocol {
    Tcp,
    Udp,
    Icmp,
    All,
    /// An IP protocol number (`"41"`).
    Number(u8),
}

/// One validated ACL rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclRule {
    pub number: u64,
    pub action: AclAction,
    pub traffic_type: TrafficType,
    pub protocol: AclProtocol,
    /// Inclusive port range (tcp/udp only); `None` = any port.
    pub ports: Option<(u16, u16)>,
    /// ICMP type; `None` = any (`-1`).
    pub icmp_type: Option<u8>,
    /// ICMP code; `None` = any (`-1`).
    pub icmp_code: Option<u8>,
    /// Sources (ingress) or destinations (egress); empty = any address.
    #[serde(with = "super::as_string_vec")]
    pub cidrs: Vec<IpNet>,
}

/// The ACL state of one tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum TierAcl {
    /// No `apply-network-acl` received: ingress denied, egress allowed.
    #[default]
    NotApplied,
    /// The rules of the last `apply-network-acl`, sorted by number.
    Applied(Vec<AclRule>),
}

/// Decodes `acl_rules` as sent by CloudStack: a JSON array, or a string
/// holding Base64 of the JSON (older builds), or a string holding the JSON
/// ([`netbridge_protocol::envelope::decode_document`]). `null` and an empty
/// string are refused: read as "no rules" they would replace the tier's ACL
/// with an empty one.
pub fn decode_rule_document(value: &Value, field: &str) -> Result<Value, VpcError> {
    match netbridge_protocol::envelope::decode_document(field, Some(value)) {
        Ok(Some((doc, _))) => Ok(doc.into_owned()),
        Ok(None) => Err(VpcError::Missing(field.to_string())),
        Err(netbridge_protocol::ProtocolError::InvalidField { field, reason }) => {
            Err(VpcError::Invalid { field, reason })
        }
        Err(other) => Err(VpcError::invalid(field, other.to_string())),
    }
}

/// Parses and validates `acl_rules`; the result is sorted by `number`.
/// Only an absent optional field takes its default (`protocol` all, any
/// port, any ICMP type/code, any address); a present field that is `null`,
/// empty, blank or not a scalar is refused with its name.
pub fn parse_acl_rules(value: &Value) -> Result<Vec<AclRule>, VpcError> {
    let doc = decode_rule_document(value, "acl_rules")?;
    let items = match &doc {
        Value::Array(a) => a,
        _ => return Err(VpcError::invalid("acl_rules", "expected an array of rules")),
    };
    let mut rules = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        rules.push(parse_rule(index, item)?);
    }
    rules.sort_by_key(|r| r.number);
    for pair in rules.windows(2) {
        if pair[0].number == pair[1].number {
            return Err(VpcError::invalid(
                format!("acl_rules[number={}].number", pair[0].number),
                "duplicate rule number",
            ));
        }
    }
    let rendered: usize = rules.iter().map(|r| r.cidrs.len().max(1)).sum();
    if rendered > MAX_RENDERED_RULES {
        return Err(VpcError::invalid(
            "acl_rules",
            format!("too many rules × CIDRs ({rendered}, limit {MAX_RENDERED_RULES})"),
        ));
    }
    Ok(rules)
}

/// A scalar field of an ACL item: `None` when absent; `null`, an empty or
/// blank string and non-scalars are refused (never read as absent).
fn item_str(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    field: impl Fn(&str) -> String,
) -> Result<Option<String>, VpcError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::Null) => Err(VpcError::invalid(
            field(key),
            "null; omit the field to use its default",
        )),
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => {
            scalar_str(Some(v)).map(Some).ok_or_else(|| {
                VpcError::invalid(field(key), "empty; omit the field to use its default")
            })
        }
        Some(_) => Err(VpcError::invalid(field(key), "expected a string")),
    }
}

fn parse_rule(index: usize, item: &Value) -> Result<AclRule, VpcError> {
    let obj = item
        .as_object()
        .ok_or_else(|| VpcError::invalid(format!("acl_rules[{index}]"), "expected an object"))?;
    let number_s = item_str(obj, "number", |k| format!("acl_rules[{index}].{k}"))?
        .ok_or_else(|| VpcError::Missing(format!("acl_rules[{index}].number")))?;
    let number: u64 = number_s.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
        VpcError::invalid(
            format!("acl_rules[{index}].number"),
            "expected a positive integer",
        )
    })?;
    let f = |name: &str| format!("acl_rules[number={number}].{name}");
    let get = |key: &str| item_str(obj, key, f);

    let action = match get("action")?.map(|s| s.to_ascii_lowercase()) {
        Some(a) if a == "allow" => AclAction::Allow,
        Some(a) if a == "deny" => AclAction::Deny,
        Some(_) => return Err(VpcError::invalid(f("action"), "expected allow or deny")),
        None => return Err(VpcError::Missing(f("action"))),
    };
    let traffic_type = match get("trafficType")?.map(|s| s.to_ascii_lowercase()) {
        Some(t) if t == "ingress" => TrafficType::Ingress,
        Some(t) if t == "egress" => TrafficType::Egress,
        Some(_) => {
            return Err(VpcError::invalid(
                f("trafficType"),
                "expected ingress or egress",
            ))
        }
        None => return Err(VpcError::Missing(f("trafficType"))),
    };
    let protocol = match get("protocol")?.map(|s| s.to_ascii_lowercase()) {
        None => AclProtocol::All,
        Some(p) => match p.as_str() {
            "tcp" => AclProtocol::Tcp,
            "udp" => AclProtocol::Udp,
            "icmp" => AclProtocol::Icmp,
            "all" => AclProtocol::All,
            other => other.parse::<u8>().map(AclProtocol::Number).map_err(|_| {
                VpcError::invalid(
                    f("protocol"),
                    "expected tcp, udp, icmp, all or a protocol number 0-255",
                )
            })?,
        },
    };

    let port_start = opt_port(get("portStart")?, &f("portStart"))?;
    let port_end = opt_port(get("portEnd")?, &f("portEnd"))?;
    let ports = match (port_start, port_end) {
        (None, None) => None,
        (Some(s), None) => Some((s, s)),
        (None, Some(_)) => {
            return Err(VpcError::invalid(f("portEnd"), "given without portStart"));
        }
        (Some(s), Some(e)) if e < s => {
            return Err(VpcError::invalid(
                f("portEnd"),
                format!("{e} is below portStart {s}"),
            ));
        }
        (Some(s), Some(e)) => Some((s, e)),
    };
    if ports.is_some() && !matches!(protocol, AclProtocol::Tcp | AclProtocol::Udp) {
        return Err(VpcError::invalid(
            f("portStart"),
            "ports only apply to tcp and udp",
        ));
    }

    let icmp_type_given = get("icmpType")?;
    let icmp_code_given = get("icmpCode")?;
    if protocol != AclProtocol::Icmp {
        // `-1` (any) counts too: CloudStack sends no ICMP fields otherwise.
        for (name, given) in [
            ("icmpType", &icmp_type_given),
            ("icmpCode", &icmp_code_given),
        ] {
            if given.is_some() {
                return Err(VpcError::invalid(f(name), "only applies to protocol icmp"));
            }
        }
    }
    let icmp_type = opt_icmp(icmp_type_given, &f("icmpType"))?;
    let icmp_code = opt_icmp(icmp_code_given, &f("icmpCode"))?;

    let cidrs = parse_cidrs(obj.get("sourceCidrs"), &f("sourceCidrs"))?;
    Ok(AclRule {
        number,
        action,
        traffic_type,
        protocol,
        ports,
        icmp_type,
        icmp_code,
        cidrs,
    })
}

fn opt_port(v: Option<String>, field: &str) -> Result<Option<u16>, VpcError> {
    match v {
        None => Ok(None),
        Some(s) => match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(Some(p)),
            _ => Err(VpcError::invalid(field, "expected a port 1-65535")),
        },
    }
}

fn opt_icmp(v: Option<String>, field: &str) -> Result<Option<u8>, VpcError> {
    match v {
        None => Ok(None),
        Some(s) if s == "-1" => Ok(None),
        Some(s) => s
            .parse::<u8>()
            .map(Some)
            .map_err(|_| VpcError::invalid(field, "expected -1 (any) or 0-255")),
    }
}

/// Parses a CIDR list (JSON array or comma-separated string). A bare address
/// is a host route (/32, /128); host bits are cleared. Absent or `[]` is an
/// empty list (any address); `null`, an empty string and an empty or `null`
/// entry are refused, naming the entry: they must not read as "any address".
pub fn parse_cidrs(v: Option<&Value>, field: &str) -> Result<Vec<IpNet>, VpcError> {
    const EMPTY: &str = "empty; omit the field to use its default";
    // (entry text, the entry's own name)
    let raw: Vec<(String, String)> = match v {
        None => Vec::new(),
        Some(Value::Null) => {
            return Err(VpcError::invalid(
                field,
                "null; omit the field to use its default",
            ))
        }
        Some(Value::String(s)) => s
            .split(',')
            .map(|p| (p.trim().to_string(), field.to_string()))
            .collect(),
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => out.push((s.trim().to_string(), format!("{field}[{i}]"))),
                    _ => {
                        return Err(VpcError::invalid(
                            format!("{field}[{i}]"),
                            "expected a CIDR string",
                        ))
                    }
                }
            }
            out
        }
        Some(_) => return Err(VpcError::invalid(field, "expected a list of CIDRs")),
    };
    let mut cidrs = Vec::new();
    for (s, name) in &raw {
        if s.is_empty() {
            return Err(VpcError::invalid(name.as_str(), EMPTY));
        }
        let net = parse_cidr(s).ok_or_else(|| {
            VpcError::invalid(
                name.as_str(),
                format!(
                    "'{}' is not a CIDR",
                    netbridge_protocol::sanitize_for_message(s)
                ),
            )
        })?;
        if !cidrs.contains(&net) {
            cidrs.push(net);
        }
    }
    Ok(cidrs)
}

/// One CIDR or bare address, host bits cleared.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// Converts the engine's parsed `acl_rules`
/// ([`netbridge_protocol::rules::AclRule::parse_list`], IPv4 only, no protocol
/// numbers) into renderer rules, keeping their order. [`parse_acl_rules`] is
/// the superset parser (IPv6 CIDRs, protocol numbers, duplicate numbers
/// refused); either feeds [`TierAcl::Applied`].
pub fn from_protocol(rules: &[netbridge_protocol::rules::AclRule]) -> Vec<AclRule> {
    use netbridge_protocol::rules::{AclAction as PA, Direction};
    use netbridge_protocol::validate::Protocol;
    let mut out: Vec<AclRule> = rules
        .iter()
        .map(|r| AclRule {
            number: r.number,
            action: match r.action {
                PA::Allow => AclAction::Allow,
                PA::Deny => AclAction::Deny,
            },
            traffic_type: match r.direction {
                Direction::Ingress => TrafficType::Ingress,
                Direction::Egress => TrafficType::Egress,
            },
            protocol: match r.protocol {
                Protocol::Tcp => AclProtocol::Tcp,
                Protocol::Udp => AclProtocol::Udp,
                Protocol::Icmp => AclProtocol::Icmp,
                Protocol::All => AclProtocol::All,
            },
            ports: r.ports.map(|p| (p.start, p.end)),
            icmp_type: r.icmp_type,
            icmp_code: r.icmp_code,
            cidrs: {
                let mut v: Vec<IpNet> = Vec::new();
                for c in &r.cidrs {
                    let c = c.network();
                    if let Ok(n) = ipnet::Ipv4Net::new(c.addr, c.prefix) {
                        let n = IpNet::V4(n);
                        if !v.contains(&n) {
                            v.push(n);
                        }
                    }
                }
                v
            },
        })
        .collect();
    out.sort_by_key(|r| r.number);
    out
}

/// Chain holding the tier's ingress rules.
pub fn ingress_chain(network_id: &str) -> String {
    format!("acl_in_{network_id}")
}

/// Chain holding the tier's egress rules.
pub fn egress_chain(network_id: &str) -> String {
    format!("acl_out_{network_id}")
}

/// Network ids end up in chain names: digits, letters and `_` only.
pub fn validate_network_id(id: &str) -> Result<(), VpcError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(VpcError::invalid(
            "network_id",
            "expected letters, digits or '_' (at most 64)",
        ));
    }
    Ok(())
}

/// The ingress and egress chains of a tier.
pub fn tier_chains(network_id: &str, acl: &TierAcl) -> Result<[Chain; 2], VpcError> {
    validate_network_id(network_id)?;
    let (ingress, egress) = chain_rules(acl);
    let chain = |name: String, rules: Vec<Rule>| Chain {
        rules,
        ..Chain::new(name)
    };
    Ok([
        chain(ingress_chain(network_id), ingress),
        chain(egress_chain(network_id), egress),
    ])
}

/// The rules of the ingress and egress chains, final verdict included.
pub fn chain_rules(acl: &TierAcl) -> (Vec<Rule>, Vec<Rule>) {
    match acl {
        TierAcl::NotApplied => (
            vec![Rule::always(Verdict::Drop).comment("no acl: ingress denied")],
            vec![Rule::always(Verdict::Return).comment("no acl: egress allowed")],
        ),
        TierAcl::Applied(rules) => {
            let mut ingress = Vec::new();
            let mut egress = Vec::new();
            for rule in rules {
                let target = match rule.traffic_type {
                    TrafficType::Ingress => &mut ingress,
                    TrafficType::Egress => &mut egress,
                };
                target.extend(nft_rules(rule));
            }
            let has_egress = !egress.is_empty();
            ingress.push(Rule::always(Verdict::Drop).comment("acl final deny"));
            egress.push(match has_egress {
                true => Rule::always(Verdict::Drop).comment("acl final deny"),
                false => Rule::always(Verdict::Return)
                    .comment("acl without egress rules: egress allowed"),
            });
            (ingress, egress)
        }
    }
}

/// One nft rule per CIDR (or one for "any address").
pub fn nft_rules(rule: &AclRule) -> Vec<Rule> {
    let verdict = match rule.action {
        AclAction::Allow => Verdict::Return,
        AclAction::Deny => Verdict::Drop,
    };
    let comment = format!(
        "acl {} {}",
        rule.number,
        match rule.action {
            AclAction::Allow => "allow",
            AclAction::Deny => "deny",
        }
    );
    let dir = match rule.traffic_type {
        TrafficType::Ingress => "saddr",
        TrafficType::Egress => "daddr",
    };
    let cidrs: Vec<Option<IpNet>> = if rule.cidrs.is_empty() {
        vec![None]
    } else {
        rule.cidrs.iter().copied().map(Some).collect()
    };
    cidrs
        .into_iter()
        .map(|cidr| {
            let mut parts: Vec<String> = Vec::new();
            let v6 = matches!(cidr, Some(IpNet::V6(_)));
            match cidr {
                Some(net) if net.prefix_len() == 0 => {
                    parts.push(format!("meta nfproto {}", if v6 { "ipv6" } else { "ipv4" }))
                }
                Some(IpNet::V4(net)) => parts.push(format!("ip {dir} {net}")),
                Some(IpNet::V6(net)) => parts.push(format!("ip6 {dir} {net}")),
                None => {}
            }
            parts.extend(protocol_match(rule, v6));
            Rule::new(parts.join(" "), verdict.clone()).comment(comment.clone())
        })
        .collect()
}

fn protocol_match(rule: &AclRule, v6: bool) -> Vec<String> {
    let mut parts = Vec::new();
    match rule.protocol {
        AclProtocol::Tcp | AclProtocol::Udp => {
            let p = if rule.protocol == AclProtocol::Tcp {
                "tcp"
            } else {
                "udp"
            };
            match rule.ports {
                Some((s, e)) if s == e => parts.push(format!("{p} dport {s}")),
                Some((s, e)) => parts.push(format!("{p} dport {s}-{e}")),
                None => parts.push(format!("meta l4proto {p}")),
            }
        }
        AclProtocol::Icmp => {
            let (kw, proto) = if v6 {
                ("icmpv6", "ipv6-icmp")
            } else {
                ("icmp", "icmp")
            };
            if rule.icmp_type.is_none() && rule.icmp_code.is_none() {
                parts.push(format!("meta l4proto {proto}"));
            }
            if let Some(t) = rule.icmp_type {
                parts.push(format!("{kw} type {t}"));
            }
            if let Some(c) = rule.icmp_code {
                parts.push(format!("{kw} code {c}"));
            }
        }
        AclProtocol::All => {}
        AclProtocol::Number(n) => parts.push(format!("meta l4proto {n}")),
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(v: Value) -> Result<Vec<AclRule>, VpcError> {
        parse_acl_rules(&v)
    }

    #[test]
    fn rules_are_sorted_by_number_and_rendered_in_that_order() {
        let rules = one(json!([
            {"number": "20", "action": "deny", "trafficType": "ingress", "protocol": "tcp",
             "portStart": "22", "portEnd": "22", "sourceCidrs": ["0.0.0.0/0"]},
            {"number": "10", "action": "allow", "trafficType": "ingress", "protocol": "icmp",
             "icmpType": "-1", "icmpCode": "-1", "sourceCidrs": ["0.0.0.0/0"]},
        ]))
        .unwrap();
        assert_eq!(rules[0].number, 10);
        let (ingress, egress) = chain_rules(&TierAcl::Applied(rules));
        assert_eq!(
            ingress,
            vec![
                "meta nfproto ipv4 meta l4proto icmp return comment \"acl 10 allow\"",
                "meta nfproto ipv4 tcp dport 22 drop comment \"acl 20 deny\"",
                "drop comment \"acl final deny\"",
            ]
        );
        assert_eq!(
            egress,
            vec!["return comment \"acl without egress rules: egress allowed\""]
        );
    }

    #[test]
    fn egress_rules_match_destinations_and_end_in_deny() {
        let rules = one(json!([
            {"number": 1, "action": "allow", "trafficType": "egress", "protocol": "udp",
             "portStart": 53, "portEnd": 53, "sourceCidrs": ["192.0.2.53/32"]},
        ]))
        .unwrap();
        let (_, egress) = chain_rules(&TierAcl::Applied(rules));
        assert_eq!(
            egress,
            vec![
                "ip daddr 192.0.2.53/32 udp dport 53 return comment \"acl 1 allow\"",
                "drop comment \"acl final deny\"",
            ]
        );
    }

    #[test]
    fn port_ranges_use_a_dash_and_single_ports_stay_single() {
        let rules = one(json!([
            {"number": 5, "action": "allow", "trafficType": "ingress", "protocol": "tcp",
             "portStart": "8080", "portEnd": "8090", "sourceCidrs": "10.1.0.0/16"},
            {"number": 6, "action": "allow", "trafficType": "ingress", "protocol": "udp",
             "portStart": "53"},
        ]))
        .unwrap();
        let lines: Vec<Rule> = rules.iter().flat_map(nft_rules).collect();
        assert_eq!(
            lines,
            vec![
                "ip saddr 10.1.0.0/16 tcp dport 8080-8090 return comment \"acl 5 allow\"",
                "udp dport 53 return comment \"acl 6 allow\"",
            ]
        );
    }

    #[test]
    fn icmp_minus_one_means_any_and_specific_type_code_render() {
        let rules = one(json!([
            {"number": 1, "action": "allow", "trafficType": "ingress", "protocol": "icmp",
             "icmpType": -1, "icmpCode": -1},
            {"number": 2, "action": "deny", "trafficType": "ingress", "protocol": "ICMP",
             "icmpType": "8", "icmpCode": "0", "sourceCidrs": ["2001:db8::/32"]},
            {"number": 3, "action": "deny", "trafficType": "ingress", "protocol": "icmp",
             "icmpType": "3"},
        ]))
        .unwrap();
        let lines: Vec<Rule> = rules.iter().flat_map(nft_rules).collect();
        assert_eq!(lines[0], "meta l4proto icmp return comment \"acl 1 allow\"");
        assert_eq!(
            lines[1],
            "ip6 saddr 2001:db8::/32 icmpv6 type 8 icmpv6 code 0 drop comment \"acl 2 deny\""
        );
        assert_eq!(lines[2], "icmp type 3 drop comment \"acl 3 deny\"");
    }

    #[test]
    fn cidrs_are_exact_one_rule_each_and_host_addresses_are_slash_32() {
        let rules = one(json!([
            {"number": 1, "action": "allow", "trafficType": "ingress", "protocol": "all",
             "sourceCidrs": ["10.0.0.1", "10.0.0.10/32", "10.9.9.9/24", "10.0.0.1/32"]},
        ]))
        .unwrap();
        assert_eq!(rules[0].cidrs.len(), 3);
        let lines = nft_rules(&rules[0]);
        assert_eq!(
            lines,
            vec![
                "ip saddr 10.0.0.1/32 return comment \"acl 1 allow\"",
                "ip saddr 10.0.0.10/32 return comment \"acl 1 allow\"",
                "ip saddr 10.9.9.0/24 return comment \"acl 1 allow\"",
            ]
        );
    }

    #[test]
    fn protocol_numbers_are_accepted() {
        let rules = one(json!([
            {"number": 1, "action": "allow", "trafficType": "egress", "protocol": "41"},
        ]))
        .unwrap();
        assert_eq!(rules[0].protocol, AclProtocol::Number(41));
        assert_eq!(
            nft_rules(&rules[0]),
            vec!["meta l4proto 41 return comment \"acl 1 allow\""]
        );
    }

    #[test]
    fn base64_documents_are_accepted() {
        let doc =
            json!([{"number": 3, "action": "allow", "trafficType": "ingress", "protocol": "all"}]);
        let b64 = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(doc.to_string())
        };
        let rules = parse_acl_rules(&Value::String(b64)).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].number, 3);
        // The same document as JSON text.
        assert_eq!(
            parse_acl_rules(&Value::String(doc.to_string())).unwrap(),
            rules
        );
        // An empty list is an empty ACL; an empty or null document is refused.
        assert_eq!(parse_acl_rules(&json!([])).unwrap(), vec![]);
        assert!(parse_acl_rules(&json!("")).is_err());
        assert!(parse_acl_rules(&Value::Null).is_err());
    }

    #[test]
    fn errors_name_the_rule_and_field() {
        let cases = [
            (
                json!([{"number": "7", "action": "maybe", "trafficType": "ingress"}]),
                "invalid value for 'acl_rules[number=7].action': expected allow or deny",
            ),
            (
                json!([{"number": "7", "action": "allow", "trafficType": "sideways"}]),
                "invalid value for 'acl_rules[number=7].trafficType': expected ingress or egress",
            ),
            (
                json!([{"action": "allow", "trafficType": "ingress"}]),
                "missing required field 'acl_rules[0].number'",
            ),
            (
                json!([{"number": "7", "action": "allow", "trafficType": "ingress", "protocol": "tcp", "portStart": "90", "portEnd": "80"}]),
                "invalid value for 'acl_rules[number=7].portEnd': 80 is below portStart 90",
            ),
            (
                json!([{"number": "7", "action": "allow", "trafficType": "ingress", "protocol": "tcp", "portStart": "70000"}]),
                "invalid value for 'acl_rules[number=7].portStart': expected a port 1-65535",
            ),
            (
                json!([{"number": "7", "action": "allow", "trafficType": "ingress", "protocol": "icmp", "portStart": "22"}]),
                "invalid value for 'acl_rules[number=7].portStart': ports only apply to tcp and udp",
            ),
            (
                json!([{"number": "7", "action": "allow", "trafficType": "ingress", "protocol": "tcp", "icmpType": "8"}]),
                "invalid value for 'acl_rules[number=7].icmpType': only applies to protocol icmp",
            ),
            (
                json!([{"number": "7", "action": "allow", "trafficType": "ingress", "sourceCidrs": ["10.0.0.0/33"]}]),
                "invalid value for 'acl_rules[number=7].sourceCidrs[0]': '10.0.0.0/33' is not a CIDR",
            ),
            (
                json!([{"number": "7", "action": "allow", "trafficType": "ingress", "sourceCidrs": ["1.2.3.4; rm -rf /"]}]),
                "invalid value for 'acl_rules[number=7].sourceCidrs[0]': '1.2.3.4; rm -rf /' is not a CIDR",
            ),
            (
                json!([{"number": "7", "action": "allow", "trafficType": "ingress", "protocol": "gre"}]),
                "invalid value for 'acl_rules[number=7].protocol': expected tcp, udp, icmp, all or a protocol number 0-255",
            ),
            (
                json!([{"number": 1, "action": "allow", "trafficType": "ingress"},
                       {"number": 1, "action": "deny", "trafficType": "ingress"}]),
                "invalid value for 'acl_rules[number=1].number': duplicate rule number",
            ),
            (
                json!({"rules": []}),
                "invalid value for 'acl_rules': expected an array of rules",
            ),
            (
                json!("!!not json"),
                "invalid value for 'acl_rules': neither JSON nor Base64 of JSON",
            ),
        ];
        for (doc, want) in cases {
            assert_eq!(parse_acl_rules(&doc).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn every_acl_field_present_without_a_value_is_refused_by_path() {
        let tcp = json!({"number": "30", "action": "allow", "trafficType": "ingress", "protocol": "tcp",
                         "portStart": "22", "portEnd": "23", "sourceCidrs": ["10.0.0.0/8"]});
        let icmp = json!({"number": "30", "action": "deny", "trafficType": "egress", "protocol": "icmp",
                          "icmpType": "8", "icmpCode": "0", "sourceCidrs": []});
        let field = |e: VpcError| match e {
            VpcError::Invalid { field, .. } | VpcError::Missing(field) => field,
            other => panic!("{other}"),
        };
        let first = json!({"number": "1", "action": "deny", "trafficType": "egress"});
        for (base, key, malformed) in [
            (&tcp, "action", "maybe"),
            (&tcp, "trafficType", "both"),
            (&tcp, "protocol", "gre"),
            (&tcp, "portStart", "0"),
            (&tcp, "portEnd", "x"),
            (&icmp, "icmpType", "300"),
            (&icmp, "icmpCode", "-2"),
        ] {
            for bad in [
                json!(""),
                json!(" "),
                Value::Null,
                json!([]),
                json!({}),
                json!(malformed),
            ] {
                let mut rule = base.clone();
                rule[key] = bad.clone();
                let e = one(json!([first.clone(), rule])).unwrap_err();
                assert_eq!(
                    field(e),
                    format!("acl_rules[number=30].{key}"),
                    "{key} = {bad}"
                );
            }
        }
        for bad in [json!(""), Value::Null, json!("x")] {
            let mut rule = tcp.clone();
            rule["number"] = bad.clone();
            let e = one(json!([first.clone(), rule])).unwrap_err();
            assert_eq!(field(e), "acl_rules[1].number", "number = {bad}");
        }
        for (bad, named) in [
            (json!([""]), "acl_rules[number=30].sourceCidrs[0]"),
            (
                json!(["10.0.0.0/8", "  "]),
                "acl_rules[number=30].sourceCidrs[1]",
            ),
            (
                json!(["10.0.0.0/8", null]),
                "acl_rules[number=30].sourceCidrs[1]",
            ),
            (json!(""), "acl_rules[number=30].sourceCidrs"),
            (
                json!("10.0.0.0/8,,10.2.0.0/16"),
                "acl_rules[number=30].sourceCidrs",
            ),
            (Value::Null, "acl_rules[number=30].sourceCidrs"),
        ] {
            let mut rule = tcp.clone();
            rule["sourceCidrs"] = bad.clone();
            let e = one(json!([first.clone(), rule])).unwrap_err();
            assert_eq!(field(e), named, "sourceCidrs = {bad}");
        }
        // `-1` (any) is still an ICMP field: refused on another protocol.
        let mut rule = tcp.clone();
        rule["icmpType"] = json!("-1");
        assert_eq!(
            field(one(json!([rule])).unwrap_err()),
            "acl_rules[number=30].icmpType"
        );
        // Absent fields take their defaults: all protocols, any address.
        let rules = one(json!([first])).unwrap();
        assert_eq!(rules[0].protocol, AclProtocol::All);
        assert!(rules[0].cidrs.is_empty() && rules[0].ports.is_none());
    }

    #[test]
    fn engine_parsed_rules_render_like_ours() {
        let doc = json!([
            {"number": "20", "action": "deny", "trafficType": "ingress", "protocol": "tcp",
             "portStart": "22", "portEnd": "22", "sourceCidrs": ["10.0.0.0/8"]},
            {"number": "10", "action": "allow", "trafficType": "egress", "protocol": "icmp",
             "icmpType": "-1", "icmpCode": "-1", "sourceCidrs": ["192.0.2.1"]},
        ]);
        let theirs = netbridge_protocol::rules::AclRule::parse_list("acl_rules", &doc).unwrap();
        assert_eq!(from_protocol(&theirs), parse_acl_rules(&doc).unwrap());
    }

    #[test]
    fn tier_without_acl_denies_ingress_and_allows_egress() {
        let mut rs = crate::nft::Ruleset::default();
        for c in tier_chains("12", &TierAcl::NotApplied).unwrap() {
            rs.chain(c);
        }
        assert_eq!(
            rs.render()
                .strip_prefix("table inet nb {}\ndelete table inet nb\ntable inet nb {\n")
                .and_then(|t| t.strip_suffix("}\n"))
                .unwrap(),
            "  chain acl_in_12 {\n    drop comment \"no acl: ingress denied\"\n  }\n\
             \x20 chain acl_out_12 {\n    return comment \"no acl: egress allowed\"\n  }\n"
        );
        assert!(tier_chains("1;2", &TierAcl::NotApplied).is_err());
    }
}
