//! Pure planner: desired state → the namespace's nftables table (as data,
//! see [`crate::nft`]) and the link/address plan. No I/O.
//!
//! Table layout (`table inet nb`):
//! - `prerouting` (nat, dstnat): `jump pf_dnat` (port forwards), then
//!   `jump sn_dnat` (static-NAT DNAT), then, only when the network has UDP
//!   load-balancing rules, `jump lb_udp` (DNAT to the backends, added by
//!   [`super::services::nftlb`]; gated by `fw_ingress` like port forwards).
//! - `postrouting` (nat, srcnat): `jump sn_snat` (static-NAT SNAT), then
//!   source NAT of the guest CIDR, only towards public legs.
//! - `input` (filter, policy drop): lo, established/related, the guest leg,
//!   IPv6 neighbour discovery, then `fw_ingress`.
//! - `forward` (filter, policy drop): established/related accept, invalid
//!   drop, the IPv6 rules of the guest leg ([`super::vpc::ipv6`]), guest →
//!   public via `fw_egress`, public → guest via `fw_ingress`.
//! - `fw_ingress`: a verdict map on `ct original ip daddr` (the public IP
//!   before DNAT) jumping to one chain `in_<a>_<b>_<c>_<d>` per public IP;
//!   each holds that IP's allow rules, matched on the original destination
//!   port (`ct original proto-dst`). TCP and UDP rules are elements of one
//!   interval set per chain and protocol (`<chain>_tcp`, `<chain>_udp`:
//!   source prefix . port interval, see [`ingress_chain`]); ICMP and
//!   all-protocol rules are plain rules. No match returns to the drop policy.
//! - `fw_egress`: listed egress rules (drop when `default_egress_allow`,
//!   accept otherwise) and the opposite final verdict.
//!
//! Rules use single addresses and prefixes (`ip saddr 10.0.0.1` is an exact
//! match), never anonymous sets per rule (they make the kernel transaction
//! slow at 10,000 rules); ingress rules share one named set instead.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use netbridge_protocol::payload::{GuestType, PortForwardFields};
use netbridge_protocol::rules::{Direction, FwRule};
use netbridge_protocol::validate::{Ipv4Cidr, Protocol, Vlan};

use super::nft::{self, Chain, Rule, Ruleset, Set, Verdict};
use super::state::NetworkState;
use super::vpc::ipv6;

/// Longest Linux interface name.
pub const IFNAMSIZ_MAX: usize = 15;

/// Which side of the router a leg is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegRole {
    Guest,
    Public,
}

/// One veth pair between a host bridge and the namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Leg {
    pub role: LegRole,
    /// End left on the host, enslaved to `bridge`.
    pub host_name: String,
    /// End inside the namespace.
    pub inner_name: String,
    /// `br<device>-<vlan>`.
    pub bridge: String,
    /// Physical device carrying the VLAN (used only with 802.1Q support).
    pub device: String,
    pub vlan: Vlan,
    /// Addresses with their prefix on the inner end, sorted.
    pub addrs: Vec<Ipv4Cidr>,
}

/// Links, addresses and routes of one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LinkPlan {
    pub namespace: String,
    /// Guest leg first, then public legs sorted by VLAN.
    pub legs: Vec<Leg>,
    /// `default via <gateway> dev <inner_name>`.
    pub default_route: Option<(Ipv4Addr, String)>,
    pub ipv4_forwarding: bool,
    /// Addresses to announce with gratuitous ARP: (inner dev, address).
    pub announce: Vec<(String, Ipv4Addr)>,
}

/// A complete plan for one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub links: LinkPlan,
    pub ruleset: Ruleset,
}

/// Planning errors (the state cannot be rendered).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("network {0} has no guest CIDR or extension_ip (implement-network first)")]
    NotImplemented(u64),
    #[error("bridge name '{0}' is longer than 15 characters; use a shorter device name")]
    NameTooLong(String),
}

/// `br<device>-<vlan>`, `br<device>` when untagged.
pub fn bridge_name(device: &str, vlan: Vlan) -> Result<String, PlanError> {
    let name = match vlan.0 {
        Some(v) => format!("br{device}-{v}"),
        None => format!("br{device}"),
    };
    if name.len() > IFNAMSIZ_MAX {
        return Err(PlanError::NameTooLong(name));
    }
    Ok(name)
}

/// `<prefix><body>` when it fits in 15 characters, else `<prefix>h` + the
/// first hex digits of SHA-256(`<body>`) filling the name to 15.
pub fn link_name(prefix: &str, body: &str) -> String {
    let plain = format!("{prefix}{body}");
    if plain.len() <= IFNAMSIZ_MAX {
        return plain;
    }
    let digest = hex::encode(Sha256::digest(body.as_bytes()));
    let room = IFNAMSIZ_MAX - prefix.len() - 1;
    format!("{prefix}h{}", &digest[..room])
}

/// Host end of the guest veth: `nbg<network_id>`.
pub fn guest_host_name(network_id: u64) -> String {
    link_name("nbg", &network_id.to_string())
}

/// Namespace end of the guest veth: `g<network_id>`.
pub fn guest_inner_name(network_id: u64) -> String {
    link_name("g", &network_id.to_string())
}

/// Host end of a public veth: `nbp<network_id>-<vlan>` (`u` for untagged).
pub fn public_host_name(network_id: u64, vlan: Vlan) -> String {
    let tag = vlan.0.map_or_else(|| "u".to_string(), |v| v.to_string());
    link_name("nbp", &format!("{network_id}-{tag}"))
}

/// Namespace end of a public veth: `p<vlan>` (`pu` for untagged).
pub fn public_inner_name(vlan: Vlan) -> String {
    vlan.0.map_or_else(|| "pu".to_string(), |v| format!("p{v}"))
}

/// Renders the complete plan of an implemented network.
pub fn plan(state: &NetworkState) -> Result<Plan, PlanError> {
    let links = link_plan(state)?;
    let ruleset = ruleset(state, &links);
    Ok(Plan { links, ruleset })
}

pub fn link_plan(state: &NetworkState) -> Result<LinkPlan, PlanError> {
    let (Some(cidr), Some(ext)) = (state.cidr, state.extension_ip) else {
        return Err(PlanError::NotImplemented(state.network_id));
    };
    let guest_inner = guest_inner_name(state.network_id);
    let mut legs = vec![Leg {
        role: LegRole::Guest,
        host_name: guest_host_name(state.network_id),
        inner_name: guest_inner.clone(),
        bridge: bridge_name(&state.guest_device, state.vlan)?,
        device: state.guest_device.clone(),
        vlan: state.vlan,
        addrs: vec![Ipv4Cidr {
            addr: ext,
            prefix: cidr.prefix,
        }],
    }];
    let mut publics: BTreeMap<(Vlan, String), Vec<Ipv4Cidr>> = BTreeMap::new();
    for p in &state.public_ips {
        publics
            .entry((p.vlan, p.device.clone()))
            .or_default()
            .push(Ipv4Cidr {
                addr: p.ip,
                prefix: p.prefix,
            });
    }
    // The guest address too: after a re-implement or a move to another host
    // the VMs' ARP entries for it point at the old veth (guest services).
    let mut announce = vec![(guest_inner.clone(), ext)];
    for ((vlan, device), mut addrs) in publics {
        addrs.sort();
        let inner = public_inner_name(vlan);
        announce.extend(addrs.iter().map(|a| (inner.clone(), a.addr)));
        legs.push(Leg {
            role: LegRole::Public,
            host_name: public_host_name(state.network_id, vlan),
            inner_name: inner,
            bridge: bridge_name(&device, vlan)?,
            device,
            vlan,
            addrs,
        });
    }
    // Default route: the source-NAT address's gateway, else the first public
    // address with one; a shared network without public IPs routes via its
    // guest gateway when the extension is not the gateway.
    let route_ip = state
        .source_nat_ip()
        .filter(|p| p.gateway.is_some())
        .or_else(|| state.public_ips.iter().find(|p| p.gateway.is_some()));
    let default_route = match route_ip {
        Some(p) => p.gateway.map(|g| (g, public_inner_name(p.vlan))),
        None => state
            .gateway
            .filter(|g| *g != ext && cidr.contains(*g))
            .map(|g| (g, guest_inner.clone())),
    };
    Ok(LinkPlan {
        namespace: state.namespace.clone(),
        legs,
        default_route,
        ipv4_forwarding: state.guest_type != Some(GuestType::Shared),
        announce,
    })
}

fn chain_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("in_{}_{}_{}_{}", o[0], o[1], o[2], o[3])
}

/// `"a"` for one name, `{ "a", "b" }` for several.
pub(crate) fn quoted_set(names: &[&str]) -> String {
    match names {
        [one] => format!("\"{one}\""),
        many => format!(
            "{{ {} }}",
            many.iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// L4 match of a firewall rule. `original`: match the pre-DNAT port.
fn l4_match(out: &mut Vec<String>, r: &FwRule, original: bool) {
    match r.protocol {
        Protocol::All => {}
        Protocol::Icmp => {
            out.push("meta l4proto icmp".into());
            out.extend(r.icmp_type.map(|t| format!("icmp type {t}")));
            out.extend(r.icmp_code.map(|c| format!("icmp code {c}")));
        }
        Protocol::Tcp | Protocol::Udp => {
            let p = r.protocol.as_str();
            out.push(format!("meta l4proto {p}"));
            out.extend(r.ports.map(|ports| match original {
                true => format!("ct original proto-dst {ports}"),
                false => format!("{p} dport {ports}"),
            }));
        }
    }
}

/// `None` in the list means "any".
fn cidr_options(cidrs: &[Ipv4Cidr]) -> Vec<Option<Ipv4Cidr>> {
    if cidrs.is_empty() || cidrs.iter().any(|c| c.is_any()) {
        vec![None]
    } else {
        cidrs.iter().copied().map(Some).collect()
    }
}

/// `ip <dir> <address or prefix>` (a single address without `/32`, so nft
/// matches it exactly).
fn addr_match(dir: &str, c: Option<Ipv4Cidr>) -> Option<String> {
    c.map(|c| match c.prefix {
        32 => format!("ip {dir} {}", c.addr),
        _ => format!("ip {dir} {}", c.network()),
    })
}

/// The DNAT rule of a port forward (VPC tiers place theirs with it).
pub(crate) fn port_forward(pf: &PortForwardFields) -> Rule {
    let p = pf.protocol.as_str();
    let matches = format!(
        "ip daddr {} meta l4proto {p} {p} dport {}",
        pf.public_ip, pf.public_port
    );
    let target = if pf.private_port == pf.public_port {
        // Same port(s) on both sides: keep the destination port.
        pf.private_ip.to_string()
    } else if pf.private_port.is_single() {
        format!("{}:{}", pf.private_ip, pf.private_port.start)
    } else {
        // Shifted range: one map element per port keeps the 1:1 mapping.
        let elems: Vec<String> = (0..pf.public_port.len())
            .map(|i| {
                format!(
                    "{} . {} : {} . {}",
                    pf.public_ip,
                    u32::from(pf.public_port.start) + i,
                    pf.private_ip,
                    u32::from(pf.private_port.start) + i
                )
            })
            .collect();
        format!("ip daddr . {p} dport map {{ {} }}", elems.join(", "))
    };
    Rule::new(matches, Verdict::Dnat(target))
}

/// The DNAT rule of a static NAT.
pub(crate) fn static_nat_dnat(public: Ipv4Addr, private: Ipv4Addr) -> Rule {
    Rule::new(
        format!("ip daddr {public}"),
        Verdict::Dnat(private.to_string()),
    )
}

/// Source NAT: packets from `from` leaving through `oif` (quoted, see
/// [`quoted_set`]) take the address `to`.
pub(crate) fn snat(oif: &str, from: impl std::fmt::Display, to: Ipv4Addr) -> Rule {
    let matches = format!("oifname {oif} ip saddr {from}");
    Rule::new(matches, Verdict::Snat(to.to_string()))
}

/// The filter skeleton of every router: `input` takes loopback,
/// established flows, the guest legs and IPv6 neighbour discovery, drops
/// invalid packets; `forward` takes established flows and drops invalid
/// ones. Both drop the rest; contributors append after these rules.
pub(crate) fn filter_skeleton(rs: &mut Ruleset, guest_legs: &[&str]) {
    let input = rs.chain(Chain::base(nft::Hook::Input));
    input.rules = vec![
        Rule::new("iif \"lo\"", Verdict::Accept),
        Rule::new("ct state established,related", Verdict::Accept),
        Rule::new("ct state invalid", Verdict::Drop),
    ];
    if !guest_legs.is_empty() {
        let legs = quoted_set(guest_legs);
        input
            .rules
            .push(Rule::new(format!("iifname {legs}"), Verdict::Accept));
    }
    input.rules.push(Rule::new(
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert }",
        Verdict::Accept,
    ));
    rs.chain(Chain::base(nft::Hook::Forward)).rules = vec![
        Rule::new("ct state established,related", Verdict::Accept),
        Rule::new("ct state invalid", Verdict::Drop),
    ];
}

/// The network's table: NAT, filter skeleton, IPv6, firewall.
pub fn ruleset(state: &NetworkState, links: &LinkPlan) -> Ruleset {
    let mut rs = Ruleset::default();
    let guest = links
        .legs
        .iter()
        .find(|l| l.role == LegRole::Guest)
        .map(|l| l.inner_name.clone())
        .unwrap_or_else(|| guest_inner_name(state.network_id));
    let publics: Vec<&str> = links
        .legs
        .iter()
        .filter(|l| l.role == LegRole::Public)
        .map(|l| l.inner_name.as_str())
        .collect();
    let jump = |c: &str| Rule::always(Verdict::Jump(c.into()));

    // NAT. Forwards and static NAT live in their own regular chains so that
    // adding one is an append (see `nft::delta`).
    rs.chain(Chain::base(nft::Hook::Prerouting)).rules = vec![jump("pf_dnat"), jump("sn_dnat")];
    super::services::nftlb::contribute(&mut rs, &state.guest);
    rs.chain(Chain::new("pf_dnat")).rules = state.port_forwards.iter().map(port_forward).collect();
    rs.chain(Chain::new("sn_dnat")).rules = state
        .static_nats
        .iter()
        .map(|sn| static_nat_dnat(sn.public_ip, sn.private_ip))
        .collect();
    let oif = quoted_set(&publics);
    let sn_snat = rs.chain(Chain::new("sn_snat"));
    if !publics.is_empty() {
        sn_snat.rules = state
            .static_nats
            .iter()
            .map(|sn| snat(&oif, sn.private_ip, sn.public_ip))
            .collect();
    }
    // The 1:1 SNAT of static NAT wins over the network's source NAT.
    let post = rs.chain(Chain::base(nft::Hook::Postrouting));
    post.rules.push(jump("sn_snat"));
    if !publics.is_empty() {
        if let (Some(ip), Some(cidr)) = (state.source_nat_ip(), state.cidr) {
            post.rules.push(snat(&oif, cidr.network(), ip.ip));
        }
    }

    filter_skeleton(&mut rs, &[&guest]);
    rs.extend("input", [jump("fw_ingress")]);
    if let Some(net) = ipv6::Ipv6Network::of(state) {
        rs.extend("forward", ipv6::forward_rules(&guest, &net));
    }
    rs.extend(
        "forward",
        [
            Rule::new(
                format!("iifname \"{guest}\" oifname != \"{guest}\""),
                Verdict::Jump("fw_egress".into()),
            ),
            Rule::new(
                format!("oifname \"{guest}\""),
                Verdict::Jump("fw_ingress".into()),
            ),
        ],
    );
    firewall(&mut rs, state);
    rs
}

/// Ingress: per public IP chains behind a verdict map on the original
/// destination; egress: the listed rules, then the opposite verdict.
fn firewall(rs: &mut Ruleset, state: &NetworkState) {
    let mut per_ip: BTreeMap<Ipv4Addr, Vec<&FwRule>> = BTreeMap::new();
    let mut any_ip: Vec<&FwRule> = Vec::new();
    let mut egress: Vec<&FwRule> = Vec::new();
    for r in state.firewall.iter().flat_map(|f| &f.rules) {
        match (r.direction, r.public_ip) {
            (Direction::Ingress, Some(ip)) => per_ip.entry(ip).or_default().push(r),
            (Direction::Ingress, None) => any_ip.push(r),
            (Direction::Egress, _) => egress.push(r),
        }
    }
    let vmap = (!per_ip.is_empty()).then(|| {
        let map = per_ip.keys().map(|ip| (ip.to_string(), chain_for(*ip)));
        Rule::new("ct original ip daddr", Verdict::JumpMap(map.collect()))
    });
    ingress_chain(rs, "fw_ingress", &any_ip, vmap);
    for (ip, rules) in &per_ip {
        ingress_chain(rs, &chain_for(*ip), rules, None);
    }

    let allow_default = state
        .firewall
        .as_ref()
        .is_none_or(|f| f.default_egress_allow);
    let (listed, fallback) = match allow_default {
        true => (Verdict::Drop, Verdict::Accept),
        false => (Verdict::Accept, Verdict::Drop),
    };
    let chain = rs.chain(Chain::new("fw_egress"));
    for r in &egress {
        for src in cidr_options(&r.source_cidrs) {
            for dst in cidr_options(&r.dest_cidrs) {
                let mut m: Vec<String> = addr_match("saddr", src).into_iter().collect();
                m.extend(addr_match("daddr", dst));
                l4_match(&mut m, r, false);
                chain.rules.push(Rule::new(m.join(" "), listed.clone()));
            }
        }
    }
    chain.rules.push(Rule::always(fallback));
}

/// A port interval, both ends included.
type Ports = (u16, u16);

/// One ingress chain `name` with its accept rules, then `tail`. TCP and UDP
/// rules become elements of one named interval set per protocol
/// (`<name>_tcp`, `<name>_udp`: source prefix . original destination port
/// interval), matched by a single rule; ICMP and all-protocol rules stay
/// plain rules. Every ingress rule is an accept, so their order never
/// mattered; one set lookup costs the kernel and libnftables far less than
/// a rule per (rule, source CIDR) pair, which made 1,000 rules take ~30 ms
/// to load.
fn ingress_chain(rs: &mut Ruleset, name: &str, rules: &[&FwRule], tail: Option<Rule>) {
    let mut chain = Chain::new(name);
    let mut boxes: [BTreeMap<(u32, u8), Vec<Ports>>; 2] = Default::default();
    for r in rules {
        let i = match r.protocol {
            Protocol::Tcp => 0,
            Protocol::Udp => 1,
            Protocol::All | Protocol::Icmp => {
                for src in cidr_options(&r.source_cidrs) {
                    let mut m: Vec<String> = addr_match("saddr", src).into_iter().collect();
                    l4_match(&mut m, r, true);
                    chain.rules.push(Rule::new(m.join(" "), Verdict::Accept));
                }
                continue;
            }
        };
        let ports = r.ports.map_or((0, u16::MAX), |p| (p.start, p.end));
        for src in cidr_options(&r.source_cidrs) {
            let c = src.map_or((0, 0), |c| (u32::from(c.network().addr), c.prefix));
            boxes[i].entry(c).or_default().push(ports);
        }
    }
    for (i, proto) in [(0, "tcp"), (1, "udp")] {
        let elements = disjoint_boxes(std::mem::take(&mut boxes[i]));
        if elements.is_empty() {
            continue;
        }
        let set = format!("{name}_{proto}");
        let mut elems = Vec::new();
        for ((addr, prefix), ranges) in &elements {
            let addr = Ipv4Addr::from(*addr);
            let src = match prefix {
                32 => addr.to_string(),
                _ => format!("{addr}/{prefix}"),
            };
            elems.extend(ranges.iter().map(|(lo, hi)| match lo == hi {
                true => format!("{src} . {lo}"),
                false => format!("{src} . {lo}-{hi}"),
            }));
        }
        rs.set(Set {
            name: set.clone(),
            key: "ipv4_addr . inet_service",
            interval: true,
            elements: elems,
        });
        chain.rules.push(Rule::new(
            format!("meta l4proto {proto} ip saddr . ct original proto-dst @{set}"),
            Verdict::Accept,
        ));
    }
    chain.rules.extend(tail);
    rs.chain(chain);
}

/// Sorted, merged (overlapping or adjacent intervals joined).
fn merge_ports(mut ranges: Vec<Ports>) -> Vec<Ports> {
    ranges.sort_unstable();
    let mut out: Vec<Ports> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// `a` minus `b`, both sorted and merged.
fn subtract_ports(a: &[Ports], b: &[Ports]) -> Vec<Ports> {
    let mut out = Vec::new();
    for &(lo, hi) in a {
        let mut lo = u32::from(lo);
        let hi = u32::from(hi);
        for &(blo, bhi) in b {
            let (blo, bhi) = (u32::from(blo), u32::from(bhi));
            if bhi < lo || blo > hi {
                continue;
            }
            if blo > lo {
                out.push((lo as u16, (blo - 1) as u16));
            }
            lo = bhi + 1;
            if lo > hi {
                break;
            }
        }
        if lo <= hi {
            out.push((lo as u16, hi as u16));
        }
    }
    out
}

/// Non-overlapping (source prefix, port intervals) elements whose union is
/// exactly the union of `boxes` (keys: network address, prefix length).
/// The kernel refuses overlapping elements in an interval set, and firewall
/// rules may overlap. Prefixes are either nested or disjoint, so each prefix
/// keeps only the ports that no enclosing prefix in the set already opens:
/// a port it loses is opened, for all its addresses, by the outermost
/// enclosing prefix that lists it, which keeps it.
fn disjoint_boxes(boxes: BTreeMap<(u32, u8), Vec<Ports>>) -> Vec<((u32, u8), Vec<Ports>)> {
    let merged: BTreeMap<(u32, u8), Vec<Ports>> = boxes
        .into_iter()
        .map(|(k, v)| (k, merge_ports(v)))
        .collect();
    let mut lengths: Vec<u8> = merged.keys().map(|k| k.1).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut out = Vec::with_capacity(merged.len());
    for (&(net, len), ranges) in &merged {
        let mut outer: Vec<Ports> = Vec::new();
        for &l in lengths.iter().take_while(|l| **l < len) {
            let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
            if let Some(r) = merged.get(&(net & mask, l)) {
                outer.extend_from_slice(r);
            }
        }
        let own = if outer.is_empty() {
            ranges.clone()
        } else {
            subtract_ports(ranges, &merge_ports(outer))
        };
        if !own.is_empty() {
            out.push(((net, len), own));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::delta;
    use crate::state::tests::{implemented, request};
    use netbridge_protocol::Command;
    use serde_json::json;

    fn run(s: &mut NetworkState, c: Command, p: serde_json::Value) {
        let mut p = p;
        p["network_id"] = json!("42");
        s.transition(&request(c, p), "eth1").unwrap();
    }

    fn with_ips() -> NetworkState {
        let mut s = implemented();
        run(
            &mut s,
            Command::AssignIp,
            json!({"public_ip": "203.0.113.10", "public_vlan": "vlan://200",
            "public_gateway": "203.0.113.1", "public_cidr": "203.0.113.0/24", "source_nat": "true"}),
        );
        run(
            &mut s,
            Command::AssignIp,
            json!({"public_ip": "203.0.113.11", "public_vlan": "200",
            "public_gateway": "203.0.113.1", "public_cidr": "203.0.113.0/24", "source_nat": "false"}),
        );
        s
    }

    fn rules_of(s: &NetworkState) -> String {
        plan(s).unwrap().ruleset.render()
    }

    fn set_of(s: &NetworkState) -> Ruleset {
        plan(s).unwrap().ruleset
    }

    /// Whole-token match so `10.0.0.1` never matches `10.0.0.10`.
    fn mentions(text: &str, token: &str) -> bool {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '/' || c == '_'))
            .any(|t| t == token || t.split('/').next() == Some(token))
    }

    #[test]
    fn names_fit_and_are_deterministic() {
        assert_eq!(guest_host_name(42), "nbg42");
        assert_eq!(guest_inner_name(42), "g42");
        assert_eq!(public_host_name(42, Vlan(Some(200))), "nbp42-200");
        assert_eq!(public_host_name(42, Vlan(None)), "nbp42-u");
        assert_eq!(public_inner_name(Vlan(Some(4094))), "p4094");
        let long = public_host_name(123_456_789_012, Vlan(Some(4094)));
        assert_eq!(long.len(), 15);
        assert!(long.starts_with("nbph"));
        assert_eq!(long, public_host_name(123_456_789_012, Vlan(Some(4094))));
        assert_ne!(long, public_host_name(123_456_789_012, Vlan(Some(4093))));
        assert_eq!(guest_host_name(u64::MAX).len(), 15);
        assert_eq!(bridge_name("eth1", Vlan(Some(100))).unwrap(), "breth1-100");
        assert_eq!(bridge_name("eth1", Vlan(None)).unwrap(), "breth1");
        assert!(bridge_name("enp129s0f1np1", Vlan(Some(100))).is_err());
    }

    #[test]
    fn implement_renders_default_deny_forward_and_the_guest_leg() {
        let s = implemented();
        let p = plan(&s).unwrap();
        assert!(p
            .ruleset
            .render()
            .starts_with("table inet nb {}\ndelete table inet nb\ntable inet nb {\n"));
        assert!(p.ruleset.render().contains("type filter hook forward priority filter; policy drop;\n    ct state established,related accept"));
        assert!(p
            .ruleset
            .render()
            .contains("iifname \"g42\" oifname != \"g42\" jump fw_egress"));
        assert!(
            !p.ruleset.render().contains("snat ip to"),
            "no public IP, no SNAT"
        );
        assert_eq!(p.links.legs.len(), 1);
        assert_eq!(p.links.legs[0].bridge, "breth1-100");
        assert_eq!(p.links.legs[0].addrs[0].to_string(), "10.1.1.1/24");
        assert!(p.links.ipv4_forwarding);
        assert_eq!(p.links.default_route, None);
        // Without a firewall document egress is open.
        assert!(p
            .ruleset
            .render()
            .contains("  chain fw_egress {\n    accept\n  }"));
    }

    #[test]
    fn assign_ip_source_nat_route_and_legs() {
        let s = with_ips();
        let p = plan(&s).unwrap();
        assert!(p
            .ruleset
            .render()
            .contains("    oifname \"p200\" ip saddr 10.1.1.0/24 snat ip to 203.0.113.10\n"));
        assert_eq!(p.links.legs.len(), 2);
        let pubs = &p.links.legs[1];
        assert_eq!(
            (
                pubs.host_name.as_str(),
                pubs.inner_name.as_str(),
                pubs.bridge.as_str()
            ),
            ("nbp42-200", "p200", "breth1-200")
        );
        assert_eq!(
            pubs.addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["203.0.113.10/24", "203.0.113.11/24"]
        );
        assert_eq!(
            p.links.default_route,
            Some((Ipv4Addr::new(203, 0, 113, 1), "p200".into()))
        );
        assert_eq!(
            p.links.announce.len(),
            3,
            "guest address and two public ones"
        );
    }

    #[test]
    fn public_ips_on_two_vlans_and_untagged() {
        let mut s = with_ips();
        run(
            &mut s,
            Command::AssignIp,
            json!({"public_ip": "198.51.100.5", "public_vlan": "untagged"}),
        );
        let p = plan(&s).unwrap();
        assert_eq!(p.links.legs.len(), 3);
        assert_eq!(p.links.legs[1].inner_name, "pu");
        assert_eq!(p.links.legs[1].addrs[0].to_string(), "198.51.100.5/32");
        assert!(p
            .ruleset
            .render()
            .contains("oifname { \"pu\", \"p200\" } ip saddr 10.1.1.0/24 snat ip to 203.0.113.10"));
    }

    #[test]
    fn static_nat_both_ways_and_delete() {
        let mut s = with_ips();
        run(
            &mut s,
            Command::AddStaticNat,
            json!({"public_ip": "203.0.113.11", "private_ip": "10.1.1.10"}),
        );
        let r = rules_of(&s);
        assert!(r.contains("    ip daddr 203.0.113.11 dnat ip to 10.1.1.10\n"));
        let snat_static = r
            .find("ip saddr 10.1.1.10 snat ip to 203.0.113.11")
            .unwrap();
        let snat_net = r
            .find("ip saddr 10.1.1.0/24 snat ip to 203.0.113.10")
            .unwrap();
        assert!(
            snat_static < snat_net,
            "the 1:1 SNAT must win over source NAT"
        );
        run(
            &mut s,
            Command::DeleteStaticNat,
            json!({"public_ip": "203.0.113.11", "private_ip": "10.1.1.10"}),
        );
        assert!(!mentions(&rules_of(&s), "10.1.1.10"));
    }

    #[test]
    fn port_forward_single_range_and_shifted_range() {
        let mut s = with_ips();
        run(
            &mut s,
            Command::AddPortForward,
            json!({"public_ip": "203.0.113.10", "public_port": "2222",
            "private_ip": "10.1.1.5", "private_port": "22", "protocol": "tcp"}),
        );
        run(
            &mut s,
            Command::AddPortForward,
            json!({"public_ip": "203.0.113.10", "public_port": "8000-8010",
            "private_ip": "10.1.1.5", "private_port": "8000-8010", "protocol": "udp"}),
        );
        run(
            &mut s,
            Command::AddPortForward,
            json!({"public_ip": "203.0.113.10", "public_port": "9000-9002",
            "private_ip": "10.1.1.6", "private_port": "7000-7002", "protocol": "tcp"}),
        );
        let r = rules_of(&s);
        assert!(r.contains(
            "ip daddr 203.0.113.10 meta l4proto tcp tcp dport 2222 dnat ip to 10.1.1.5:22\n"
        ));
        assert!(r.contains(
            "ip daddr 203.0.113.10 meta l4proto udp udp dport 8000-8010 dnat ip to 10.1.1.5\n"
        ));
        assert!(r.contains("tcp dport 9000-9002 dnat ip to ip daddr . tcp dport map { 203.0.113.10 . 9000 : 10.1.1.6 . 7000, 203.0.113.10 . 9001 : 10.1.1.6 . 7001, 203.0.113.10 . 9002 : 10.1.1.6 . 7002 }"));
        assert!(
            !r.contains("80:90") && !r.contains("8000:8010"),
            "nft ranges use a dash"
        );
        run(
            &mut s,
            Command::DeletePortForward,
            json!({"public_ip": "203.0.113.10", "public_port": "2222",
            "private_ip": "10.1.1.5", "private_port": "22", "protocol": "tcp"}),
        );
        let r = rules_of(&s);
        assert!(!r.contains("dport 2222"));
        assert!(r.contains("udp dport 8000-8010"));
    }

    fn fw(s: &mut NetworkState, doc: serde_json::Value) {
        run(s, Command::ApplyFwRules, json!({"fw_rules": doc}));
    }

    #[test]
    fn ingress_per_public_ip_on_the_original_destination() {
        let mut s = with_ips();
        fw(
            &mut s,
            json!({"default_egress_allow": true, "rules": [
                {"id": "1", "type": "ingress", "protocol": "tcp", "portStart": "80", "portEnd": "90",
                 "publicIp": "203.0.113.10", "sourceCidrs": ["192.0.2.0/24", "198.51.100.7/32"]},
                {"id": "2", "type": "ingress", "protocol": "icmp", "icmpType": "-1", "icmpCode": "-1",
                 "publicIp": "203.0.113.11", "sourceCidrs": ["0.0.0.0/0"]},
                {"id": "3", "type": "ingress", "protocol": "icmp", "icmpType": "8", "icmpCode": "0",
                 "publicIp": "203.0.113.10", "sourceCidrs": []},
                {"id": "4", "type": "ingress", "protocol": "all", "publicIp": "203.0.113.11", "sourceCidrs": ["10.9.0.0/16"]}
            ]}),
        );
        let r = rules_of(&s);
        assert!(r.contains("    ct original ip daddr vmap { 203.0.113.10 : jump in_203_0_113_10, 203.0.113.11 : jump in_203_0_113_11 }\n"));
        assert!(r.contains("  set in_203_0_113_10_tcp {\n    type ipv4_addr . inet_service\n    flags interval\n    elements = { 192.0.2.0/24 . 80-90, 198.51.100.7 . 80-90 }\n  }\n  chain in_203_0_113_10 {\n    meta l4proto icmp icmp type 8 icmp code 0 accept\n    meta l4proto tcp ip saddr . ct original proto-dst @in_203_0_113_10_tcp accept\n  }"));
        assert!(!r.contains("in_203_0_113_10_udp"), "no empty set");
        assert!(r.contains("  chain in_203_0_113_11 {\n    meta l4proto icmp accept\n    ip saddr 10.9.0.0/16 accept\n  }"));
        assert!(r.contains("oifname \"g42\" jump fw_ingress"));
    }

    #[test]
    fn empty_firewall_closes_every_public_ip() {
        let mut s = with_ips();
        run(
            &mut s,
            Command::AddStaticNat,
            json!({"public_ip": "203.0.113.11", "private_ip": "10.1.1.10"}),
        );
        fw(&mut s, json!({"default_egress_allow": true, "rules": []}));
        let r = rules_of(&s);
        assert!(r.contains("  chain fw_ingress {\n  }\n"));
        assert!(r.contains("policy drop;\n    ct state established"));
    }

    #[test]
    fn egress_both_defaults() {
        let mut s = with_ips();
        let rules = json!([{"type": "egress", "protocol": "tcp", "portStart": "25", "portEnd": "25",
            "sourceCidrs": ["10.1.1.0/24"], "destCidrs": ["0.0.0.0/0"]},
            {"type": "egress", "protocol": "udp", "portStart": "53", "destCidrs": ["192.0.2.53/32", "198.51.100.0/24"]}]);
        fw(
            &mut s,
            json!({"default_egress_allow": true, "rules": rules.clone()}),
        );
        let r = rules_of(&s);
        assert!(r.contains("  chain fw_egress {\n    ip saddr 10.1.1.0/24 meta l4proto tcp tcp dport 25 drop\n    ip daddr 192.0.2.53 meta l4proto udp udp dport 53 drop\n    ip daddr 198.51.100.0/24 meta l4proto udp udp dport 53 drop\n    accept\n  }"));
        fw(
            &mut s,
            json!({"default_egress_allow": false, "rules": rules}),
        );
        let r = rules_of(&s);
        assert!(r.contains("tcp dport 25 accept\n"));
        assert!(r.ends_with("    drop\n  }\n}\n"));
        fw(
            &mut s,
            json!({"default_egress_allow": "false", "rules": []}),
        );
        assert!(rules_of(&s).contains("  chain fw_egress {\n    drop\n  }"));
    }

    #[test]
    fn exact_addresses_never_prefixes() {
        let mut s = implemented();
        run(
            &mut s,
            Command::AssignIp,
            json!({"public_ip": "203.0.113.1", "public_vlan": "200", "source_nat": "true"}),
        );
        run(
            &mut s,
            Command::AssignIp,
            json!({"public_ip": "203.0.113.10", "public_vlan": "200"}),
        );
        run(
            &mut s,
            Command::AddStaticNat,
            json!({"public_ip": "203.0.113.10", "private_ip": "10.1.1.10"}),
        );
        run(
            &mut s,
            Command::AddPortForward,
            json!({"public_ip": "203.0.113.1", "public_port": "22",
            "private_ip": "10.1.1.1", "protocol": "tcp"}),
        );
        fw(
            &mut s,
            json!({"rules": [
            {"type": "ingress", "protocol": "tcp", "portStart": "22", "publicIp": "203.0.113.1"},
            {"type": "ingress", "protocol": "tcp", "portStart": "80", "publicIp": "203.0.113.10"}]}),
        );
        run(
            &mut s,
            Command::ReleaseIp,
            json!({"public_ip": "203.0.113.1"}),
        );
        let r = rules_of(&s);
        assert!(!mentions(&r, "203.0.113.1"), "{r}");
        assert!(!r.contains("in_203_0_113_1 "));
        assert!(mentions(&r, "203.0.113.10"));
        assert!(r.contains("ip daddr 203.0.113.10 dnat ip to 10.1.1.10"));
        assert!(r.contains(
            "set in_203_0_113_10_tcp {\n    type ipv4_addr . inet_service\n    flags interval\n    elements = { 0.0.0.0/0 . 80 }\n  }\n  chain in_203_0_113_10 {\n    meta l4proto tcp ip saddr . ct original proto-dst @in_203_0_113_10_tcp accept\n  }"
        ));
        // Single addresses render without a /32 so nft matches exactly.
        assert!(!r.contains("/32"));
    }

    #[test]
    fn release_ip_removes_every_rule_mentioning_it_and_its_leg() {
        let mut s = with_ips();
        run(
            &mut s,
            Command::AddStaticNat,
            json!({"public_ip": "203.0.113.11", "private_ip": "10.1.1.10"}),
        );
        run(
            &mut s,
            Command::AddPortForward,
            json!({"public_ip": "203.0.113.11", "public_port": "80",
            "private_ip": "10.1.1.10", "protocol": "tcp"}),
        );
        fw(
            &mut s,
            json!({"rules": [{"type": "ingress", "protocol": "tcp", "portStart": "80", "publicIp": "203.0.113.11"}]}),
        );
        run(
            &mut s,
            Command::ReleaseIp,
            json!({"public_ip": "203.0.113.11"}),
        );
        let r = rules_of(&s);
        assert!(!mentions(&r, "203.0.113.11"), "{r}");
        assert!(!mentions(&r, "10.1.1.10"));
        run(
            &mut s,
            Command::ReleaseIp,
            json!({"public_ip": "203.0.113.10"}),
        );
        let p = plan(&s).unwrap();
        assert_eq!(p.links.legs.len(), 1, "no address left on the public leg");
        assert!(!p.ruleset.render().contains("snat ip to"));
        assert_eq!(p.links.default_route, None);
    }

    #[test]
    fn shared_network_routes_via_gateway_without_forwarding() {
        let req = request(
            Command::ImplementNetwork,
            json!({"network_id": "7", "vlan": "300", "cidr": "10.7.0.0/16",
            "gateway": "10.7.0.1", "extension_ip": "10.7.0.2", "guest_type": "shared"}),
        );
        let mut s = NetworkState::new(&req, "eth1");
        s.transition(&req, "eth1").unwrap();
        let p = plan(&s).unwrap();
        assert_eq!(
            p.links.default_route,
            Some((Ipv4Addr::new(10, 7, 0, 1), "g7".into()))
        );
        assert!(!p.links.ipv4_forwarding);
    }

    #[test]
    fn not_implemented_cannot_be_planned() {
        let req = request(
            Command::AssignIp,
            json!({"network_id": "9", "public_ip": "203.0.113.10"}),
        );
        let s = NetworkState::new(&req, "eth1");
        assert_eq!(plan(&s).unwrap_err(), PlanError::NotImplemented(9));
    }

    #[test]
    fn additions_render_as_appends_and_repeats_as_nothing() {
        let mut s = with_ips();
        fw(
            &mut s,
            json!({"rules": [{"type": "ingress", "protocol": "tcp", "portStart": "22", "publicIp": "203.0.113.10"}]}),
        );
        let old = set_of(&s);
        run(
            &mut s,
            Command::AddPortForward,
            json!({"public_ip": "203.0.113.10", "public_port": "2222",
            "private_ip": "10.1.1.5", "private_port": "22", "protocol": "tcp"}),
        );
        let mid = set_of(&s);
        assert_eq!(
            delta(&old, &mid).unwrap(),
            "add rule inet nb pf_dnat ip daddr 203.0.113.10 meta l4proto tcp tcp dport 2222 dnat ip to 10.1.1.5:22\n"
        );
        run(
            &mut s,
            Command::AddPortForward,
            json!({"public_ip": "203.0.113.10", "public_port": "2222",
            "private_ip": "10.1.1.5", "private_port": "22", "protocol": "tcp"}),
        );
        assert_eq!(
            delta(&mid, &set_of(&s)).unwrap(),
            "",
            "a repeat changes nothing"
        );
        run(
            &mut s,
            Command::AddPortForward,
            json!({"public_ip": "203.0.113.10", "public_port": "80",
            "private_ip": "10.1.1.5", "protocol": "tcp"}),
        );
        let two = set_of(&s);
        assert_eq!(
            delta(&mid, &two).unwrap().lines().count(),
            1,
            "appended after 2222 though 80 sorts first"
        );
        run(
            &mut s,
            Command::AddStaticNat,
            json!({"public_ip": "203.0.113.11", "private_ip": "10.1.1.10"}),
        );
        let d = delta(&two, &set_of(&s)).unwrap();
        assert_eq!(
            d,
            "add rule inet nb sn_dnat ip daddr 203.0.113.11 dnat ip to 10.1.1.10\nadd rule inet nb sn_snat oifname \"p200\" ip saddr 10.1.1.10 snat ip to 203.0.113.11\n"
        );
        // Removals, rule changes and new chains need the full replace.
        let with_sn = set_of(&s);
        run(
            &mut s,
            Command::DeletePortForward,
            json!({"public_ip": "203.0.113.10", "public_port": "2222",
            "private_ip": "10.1.1.5", "private_port": "22", "protocol": "tcp"}),
        );
        assert_eq!(delta(&with_sn, &set_of(&s)), None);
        let before_fw = set_of(&s);
        fw(
            &mut s,
            json!({"rules": [{"type": "ingress", "protocol": "tcp", "portStart": "22", "publicIp": "203.0.113.11"}]}),
        );
        assert_eq!(
            delta(&before_fw, &set_of(&s)),
            None,
            "a new per-IP chain and a changed vmap"
        );
        let mut policy = old.clone();
        if let Some(c) = policy.chain_mut("input") {
            c.hook = Some(nft::Hook::Forward);
        }
        assert_eq!(delta(&old, &policy), None);
    }

    /// Prints a full ruleset (`cargo test print_sample -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn print_sample() {
        let mut s = with_ips();
        run(
            &mut s,
            Command::AddStaticNat,
            json!({"public_ip": "203.0.113.11", "private_ip": "10.1.1.10"}),
        );
        run(
            &mut s,
            Command::AddPortForward,
            json!({"public_ip": "203.0.113.10", "public_port": "9000-9002",
            "private_ip": "10.1.1.6", "private_port": "7000-7002", "protocol": "tcp"}),
        );
        run(
            &mut s,
            Command::AddPortForward,
            json!({"public_ip": "203.0.113.10", "public_port": "80",
            "private_ip": "10.1.1.6", "protocol": "tcp"}),
        );
        fw(
            &mut s,
            json!({"default_egress_allow": false, "rules": [
            {"type": "ingress", "protocol": "tcp", "portStart": "80", "portEnd": "90", "publicIp": "203.0.113.10", "sourceCidrs": ["192.0.2.0/24"]},
            {"type": "ingress", "protocol": "icmp", "icmpType": "8", "icmpCode": "-1", "publicIp": "203.0.113.11"},
            {"type": "ingress", "protocol": "all", "sourceCidrs": ["198.51.100.0/24"]},
            {"type": "egress", "protocol": "udp", "portStart": "53", "destCidrs": ["192.0.2.53/32"]},
            {"type": "egress", "protocol": "icmp", "icmpType": "-1"}]}),
        );
        print!("{}", rules_of(&s));
    }

    #[test]
    fn ten_thousand_rules_render_one_set_element_each() {
        let mut s = with_ips();
        let rules: Vec<_> = (0..10_000)
            .map(|i| json!({"type": "ingress", "protocol": "tcp", "portStart": (1000 + i % 60000).to_string(),
                "publicIp": "203.0.113.10", "sourceCidrs": [format!("10.{}.{}.0/24", i / 250, i % 250)]}))
            .collect();
        fw(&mut s, json!({"rules": rules}));
        let r = rules_of(&s);
        assert_eq!(r.matches("ct original proto-dst").count(), 1);
        assert_eq!(r.matches(".0/24 . ").count(), 10_000);
        assert!(r.contains("elements = { 10.0.0.0/24 . 1000, 10.0.1.0/24 . 1001, "));
    }

    #[test]
    fn ingress_any_ip_udp_and_all_ports_share_the_set_layout() {
        let mut s = with_ips();
        fw(
            &mut s,
            json!({"rules": [
                {"type": "ingress", "protocol": "udp", "portStart": "53", "sourceCidrs": ["192.0.2.0/24"]},
                {"type": "ingress", "protocol": "tcp", "sourceCidrs": ["198.51.100.0/24"]},
                {"type": "ingress", "protocol": "udp", "portStart": "54", "portEnd": "60", "sourceCidrs": ["192.0.2.0/24"]}
            ]}),
        );
        let r = rules_of(&s);
        assert!(r.contains("  set fw_ingress_tcp {\n    type ipv4_addr . inet_service\n    flags interval\n    elements = { 198.51.100.0/24 . 0-65535 }\n  }\n"));
        // 53 and 54-60 from the same source merge into one interval.
        assert!(r.contains("  set fw_ingress_udp {\n    type ipv4_addr . inet_service\n    flags interval\n    elements = { 192.0.2.0/24 . 53-60 }\n  }\n"));
        assert!(r.contains("  chain fw_ingress {\n    meta l4proto tcp ip saddr . ct original proto-dst @fw_ingress_tcp accept\n    meta l4proto udp ip saddr . ct original proto-dst @fw_ingress_udp accept\n  }\n"));
        // A new rule changes a set: never an incremental append.
        let before = set_of(&s);
        fw(
            &mut s,
            json!({"rules": [
                {"type": "ingress", "protocol": "udp", "portStart": "53", "sourceCidrs": ["192.0.2.0/24"]},
                {"type": "ingress", "protocol": "tcp", "sourceCidrs": ["198.51.100.0/24"]},
                {"type": "ingress", "protocol": "udp", "portStart": "54", "portEnd": "60", "sourceCidrs": ["192.0.2.0/24"]},
                {"type": "ingress", "protocol": "udp", "portStart": "99", "sourceCidrs": ["192.0.2.0/24"]}
            ]}),
        );
        assert_eq!(delta(&before, &set_of(&s)), None);
    }

    #[test]
    fn overlapping_ingress_rules_become_disjoint_elements() {
        let mut b = BTreeMap::new();
        let net = |s: &str| {
            let c: Ipv4Cidr = netbridge_protocol::validate::ipv4_cidr("c", s).unwrap();
            (u32::from(c.network().addr), c.prefix)
        };
        b.insert(net("0.0.0.0/0"), vec![(80, 90)]);
        b.insert(net("10.0.0.0/8"), vec![(85, 100), (22, 22)]);
        b.insert(net("10.1.0.0/16"), vec![(70, 95), (23, 23)]);
        b.insert(net("10.1.2.3/32"), vec![(80, 80)]);
        let d = disjoint_boxes(b);
        assert_eq!(
            d,
            vec![
                (net("0.0.0.0/0"), vec![(80, 90)]),
                (net("10.0.0.0/8"), vec![(22, 22), (91, 100)]),
                (net("10.1.0.0/16"), vec![(23, 23), (70, 79)]),
            ]
        );
        assert_eq!(
            merge_ports(vec![(5, 9), (1, 3), (4, 4), (20, 30), (25, 26)]),
            vec![(1, 9), (20, 30)]
        );
        assert_eq!(
            subtract_ports(&[(0, 65535)], &[(0, 10), (65535, 65535)]),
            vec![(11, 65534)]
        );
    }

    /// Random overlapping rules: the elements never overlap and accept
    /// exactly the (source, port) pairs the rules accept.
    #[test]
    fn disjoint_boxes_keep_the_union() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let inside = |(net, len): (u32, u8), addr: u32| {
            len == 0 || (addr ^ net) >> (32 - u32::from(len)) == 0
        };
        for _ in 0..200 {
            let mut input: BTreeMap<(u32, u8), Vec<Ports>> = BTreeMap::new();
            for _ in 0..(next() % 12) {
                let len = [0u8, 8, 16, 24, 30, 32][(next() % 6) as usize];
                let addr = 0x0a00_0000 | (next() as u32 & 0x0003_0303);
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                let lo = (next() % 40) as u16;
                let hi = lo + (next() % 10) as u16;
                input.entry((addr & mask, len)).or_default().push((lo, hi));
            }
            let out = disjoint_boxes(input.clone());
            let covers = |boxes: &[((u32, u8), Vec<Ports>)], a: u32, p: u16| {
                boxes
                    .iter()
                    .filter(|(k, r)| inside(*k, a) && r.iter().any(|(lo, hi)| *lo <= p && p <= *hi))
                    .count()
            };
            let input: Vec<_> = input.into_iter().collect();
            for a in 0..64u32 {
                let addr = 0x0a00_0000 | (a & 3) | ((a >> 2 & 3) << 8) | ((a >> 4 & 3) << 16);
                for p in 0..52u16 {
                    let n = covers(&out, addr, p);
                    assert!(n <= 1, "overlap at {addr:x}:{p}: {out:?}");
                    assert_eq!(
                        n == 1,
                        covers(&input, addr, p) > 0,
                        "{addr:x}:{p} {input:?} -> {out:?}"
                    );
                }
            }
        }
    }
}
