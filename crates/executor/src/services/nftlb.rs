//! UDP load balancing in nftables (pure): one DNAT rule per `udp` LB rule,
//! in chain [`CHAIN`] of the network's table, which `prerouting` jumps to.
//!
//! - `roundrobin`: `numgen inc mod N map { 0 : ip . port, … }`. NAT rules
//!   see only the first packet of a conntrack entry, so the counter advances
//!   once per new flow (client address and port), not per datagram.
//! - `source`: `jhash ip saddr mod N seed … map { … }`: one client address
//!   always lands on the same backend while the pool is unchanged. The seed
//!   is fixed so the mapping survives ruleset reloads and executor restarts.
//! - `leastconn` never gets here: the model refuses it for `udp`.
//!
//! Replies return through conntrack (un-DNAT), and the forwarded flows pass
//! the firewall exactly like port forwards: `forward` sends traffic towards
//! the guest leg to `fw_ingress`, which matches the original (pre-DNAT)
//! public address and port. A rule without backends renders nothing, so its
//! port is as closed as any other unforwarded one.
//!
//! Backends are rendered sorted by address and port, so the same pool
//! always gives the same map whatever order CloudStack sent it in.

use super::model::{Backend, GuestServices, LbAlgorithm, LbRule};
use crate::nft::{Chain, Rule, Ruleset, Verdict};

/// The regular chain holding the UDP load-balancing DNAT rules.
pub const CHAIN: &str = "lb_udp";

/// `jhash` seed: constant so client affinity is stable across reloads.
pub const JHASH_SEED: u32 = 0x6e62_7564;

/// The DNAT rule of one UDP LB rule; `None` for a TCP rule or a rule
/// without backends.
pub fn dnat_rule(r: &LbRule) -> Option<Rule> {
    if !r.protocol.is_udp() || r.backends.is_empty() {
        return None;
    }
    let mut pool: Vec<Backend> = r.backends.clone();
    pool.sort();
    pool.dedup();
    let matches = format!("ip daddr {} udp dport {}", r.public_ip, r.public_port);
    if let [one] = pool.as_slice() {
        return Some(Rule::new(
            matches,
            Verdict::Dnat(format!("{}:{}", one.ip, one.port)),
        ));
    }
    let elems: Vec<String> = pool
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {} . {}", b.ip, b.port))
        .collect();
    let n = pool.len();
    let selector = match r.algorithm {
        LbAlgorithm::Source => format!("jhash ip saddr mod {n} seed {JHASH_SEED:#010x}"),
        // Leastconn is refused for UDP by the model; round robin is the
        // safe reading should a stored state ever carry it.
        LbAlgorithm::Roundrobin | LbAlgorithm::Leastconn => format!("numgen inc mod {n}"),
    };
    let target = format!("{selector} map {{ {} }}", elems.join(", "));
    Some(Rule::new(matches, Verdict::Dnat(target)))
}

/// Every UDP DNAT rule of the network, in rule-id order.
pub fn dnat_rules(s: &GuestServices) -> Vec<Rule> {
    s.udp_lb_rules().filter_map(dnat_rule).collect()
}

/// An isolated network's UDP load balancing: when it has UDP rules,
/// `prerouting` jumps to chain [`CHAIN`], declared here with them; nothing
/// otherwise (the ruleset stays as it was without them).
pub fn contribute(rs: &mut Ruleset, s: &GuestServices) {
    let rules = dnat_rules(s);
    if !rules.is_empty() {
        rs.extend("prerouting", [Rule::always(Verdict::Jump(CHAIN.into()))]);
        rs.chain(Chain::new(CHAIN)).rules = rules;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::model::LbProtocol;

    fn rule(id: &str, port: u16, algorithm: LbAlgorithm, backends: &[(&str, u16)]) -> LbRule {
        LbRule {
            id: id.into(),
            public_ip: "203.0.113.10".parse().unwrap(),
            public_port: port,
            protocol: LbProtocol::Udp,
            algorithm,
            backends: backends
                .iter()
                .map(|(ip, port)| Backend {
                    ip: ip.parse().unwrap(),
                    port: *port,
                })
                .collect(),
        }
    }

    #[test]
    fn roundrobin_is_numgen_over_sorted_backends() {
        let r = rule(
            "1",
            53,
            LbAlgorithm::Roundrobin,
            &[
                ("10.1.1.12", 5353),
                ("10.1.1.10", 5353),
                ("10.1.1.11", 5353),
            ],
        );
        assert_eq!(
            dnat_rule(&r).unwrap(),
            "ip daddr 203.0.113.10 udp dport 53 dnat ip to numgen inc mod 3 map { 0 : 10.1.1.10 . 5353, 1 : 10.1.1.11 . 5353, 2 : 10.1.1.12 . 5353 }"
        );
    }

    #[test]
    fn source_is_jhash_of_client_address_with_fixed_seed() {
        let r = rule(
            "2",
            5000,
            LbAlgorithm::Source,
            &[("10.1.1.10", 6000), ("10.1.1.11", 6001)],
        );
        assert_eq!(
            dnat_rule(&r).unwrap(),
            "ip daddr 203.0.113.10 udp dport 5000 dnat ip to jhash ip saddr mod 2 seed 0x6e627564 map { 0 : 10.1.1.10 . 6000, 1 : 10.1.1.11 . 6001 }"
        );
    }

    #[test]
    fn one_backend_is_a_plain_dnat_and_none_is_nothing() {
        let one = rule("3", 53, LbAlgorithm::Source, &[("10.1.1.10", 53)]);
        assert_eq!(
            dnat_rule(&one).unwrap(),
            "ip daddr 203.0.113.10 udp dport 53 dnat ip to 10.1.1.10:53"
        );
        assert_eq!(
            dnat_rule(&rule("4", 53, LbAlgorithm::Roundrobin, &[])),
            None
        );
        let mut tcp = one.clone();
        tcp.protocol = LbProtocol::Tcp;
        assert_eq!(dnat_rule(&tcp), None);
    }

    #[test]
    fn chain_holds_only_udp_rules_in_id_order() {
        let mut s = GuestServices::default();
        for r in [
            rule("b", 54, LbAlgorithm::Roundrobin, &[("10.1.1.10", 54)]),
            rule("a", 53, LbAlgorithm::Roundrobin, &[("10.1.1.11", 53)]),
        ] {
            s.lb_rules.insert(r.id.clone(), r);
        }
        let mut tcp = rule("c", 80, LbAlgorithm::Leastconn, &[("10.1.1.12", 8080)]);
        tcp.protocol = LbProtocol::Tcp;
        s.lb_rules.insert("c".into(), tcp);
        let chains = |s: &GuestServices| {
            let mut rs = Ruleset::default();
            rs.chain(Chain::base(crate::nft::Hook::Prerouting));
            contribute(&mut rs, s);
            rs.render()
        };
        assert!(chains(&s).ends_with(
            "    jump lb_udp\n  }\n  chain lb_udp {\n    ip daddr 203.0.113.10 udp dport 53 dnat ip to 10.1.1.11:53\n    ip daddr 203.0.113.10 udp dport 54 dnat ip to 10.1.1.10:54\n  }\n}\n"
        ));
        s.lb_rules.retain(|_, r| !r.protocol.is_udp());
        assert!(dnat_rules(&s).is_empty());
        assert!(!chains(&s).contains("lb_udp"));
    }

    /// The network's whole ruleset: `prerouting` jumps to `lb_udp` after the
    /// port forwards and static NAT, forwarded flows reach `fw_ingress` on
    /// their original destination, and without UDP rules the ruleset is the
    /// one the network had before.
    #[test]
    fn planner_places_the_chain_in_the_network_ruleset() {
        use crate::planner;
        use crate::state::tests::{implemented, request};
        use netbridge_protocol::Command;
        use serde_json::json;

        let mut s = implemented();
        let mut p = json!({"network_id": "42", "public_ip": "203.0.113.10",
            "public_vlan": "vlan://200", "public_gateway": "203.0.113.1",
            "public_cidr": "203.0.113.0/24", "source_nat": "true"});
        s.transition(&request(Command::AssignIp, p.clone()), "eth1")
            .unwrap();
        let without = planner::plan(&s).unwrap().ruleset.render();
        assert!(!without.contains("lb_udp"), "{without}");
        p["lb_rules"] = json!([
            {"id": "1", "publicIp": "203.0.113.10", "publicPort": "53", "protocol": "udp",
             "algorithm": "roundrobin", "backends": [
                {"ip": "10.1.1.10", "port": "53"}, {"ip": "10.1.1.11", "port": "53"}]},
            {"id": "2", "publicIp": "203.0.113.10", "publicPort": "123", "protocol": "udp",
             "algorithm": "source", "backends": [
                {"ip": "10.1.1.12", "port": "1123"}, {"ip": "10.1.1.10", "port": "1123"},
                {"ip": "10.1.1.11", "port": "1123", "revoked": true}]}]);
        let payload = p.as_object().unwrap().clone();
        let mut vms = Default::default();
        crate::services::apply(
            Command::ApplyLbRules,
            &payload,
            &mut s.guest,
            &mut vms,
            &Default::default(),
        )
        .unwrap();
        let with = planner::plan(&s).unwrap().ruleset.render();
        assert!(with.contains(
            "    jump pf_dnat\n    jump sn_dnat\n    jump lb_udp\n  }\n  chain lb_udp {\n    ip daddr 203.0.113.10 udp dport 53 dnat ip to numgen inc mod 2 map { 0 : 10.1.1.10 . 53, 1 : 10.1.1.11 . 53 }\n    ip daddr 203.0.113.10 udp dport 123 dnat ip to jhash ip saddr mod 2 seed 0x6e627564 map { 0 : 10.1.1.10 . 1123, 1 : 10.1.1.12 . 1123 }\n  }\n  chain pf_dnat {\n"
        ), "{with}");
        assert!(
            with.contains("    oifname \"g42\" jump fw_ingress\n"),
            "{with}"
        );
        // Only the two additions differ.
        let start = with.find("  chain lb_udp {\n").unwrap();
        let end = start + with[start..].find("  }\n").unwrap() + "  }\n".len();
        let mut back = with.clone();
        back.replace_range(start..end, "");
        assert_eq!(back.replacen("    jump lb_udp\n", "", 1), without);
        // Revoking every UDP rule gives back the ruleset without them.
        p["lb_rules"] = json!([{"id": "1", "revoke": true}, {"id": "2", "revoke": "true"}]);
        let payload = p.as_object().unwrap().clone();
        crate::services::apply(
            Command::ApplyLbRules,
            &payload,
            &mut s.guest,
            &mut vms,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(planner::plan(&s).unwrap().ruleset.render(), without);
    }
}
