//! IPv6 of a network (`network_ip6_gateway` / `network_ip6_cidr`): radvd
//! configuration and the IPv6 firewall rules, for the engine's `inet` table.
//!
//! - The gateway address goes on the guest leg with the prefix length of
//!   `network_ip6_cidr` ([`Ipv6Network::gateway_with_prefix`]).
//! - radvd advertises the /64 prefix on-link and autonomous (SLAAC), the
//!   router as default router, and RDNSS = the IPv6 addresses of `dns`
//!   (falling back to the gateway when the network's own DNS service listens
//!   there).
//! - Firewall: like IPv4, forwarding into the guest network is denied unless
//!   allowed (the engine adds the allow rules of `fw_rules`/ACLs and the
//!   established/related accept); ICMPv6 neighbour discovery, router
//!   solicitation and the error messages IPv6 cannot work without (packet
//!   too big, …) are allowed.
//! - sysctls for the namespace: forwarding on, no RAs accepted on the
//!   router's legs.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{scalar_str, valid_ifname, VpcError};
use crate::nft::{Rule, Verdict};

/// The IPv6 settings of one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Network {
    pub gateway: Ipv6Addr,
    #[serde(with = "super::as_string")]
    pub cidr: Ipv6Net,
}

impl Ipv6Network {
    /// The IPv6 settings a network's state carries, if any.
    pub fn of(state: &crate::state::NetworkState) -> Option<Ipv6Network> {
        let (gw, cidr) = (state.ip6_gateway?, state.ip6_cidr?);
        let payload = serde_json::json!({"network_ip6_gateway": gw.to_string(),
            "network_ip6_cidr": cidr.to_string()});
        Ipv6Network::from_payload(payload.as_object()?)
            .ok()
            .flatten()
    }

    /// Reads `network_ip6_gateway` / `network_ip6_cidr`; `Ok(None)` when the
    /// network has no IPv6. Both must be present together.
    pub fn from_payload(payload: &Map<String, Value>) -> Result<Option<Ipv6Network>, VpcError> {
        let gw = scalar_str(payload.get("network_ip6_gateway"));
        let cidr = scalar_str(payload.get("network_ip6_cidr"));
        let (gw, cidr) = match (gw, cidr) {
            (None, None) => return Ok(None),
            (Some(_), None) => return Err(VpcError::Missing("network_ip6_cidr".into())),
            (None, Some(_)) => return Err(VpcError::Missing("network_ip6_gateway".into())),
            (Some(g), Some(c)) => (g, c),
        };
        let gateway: Ipv6Addr = gw
            .parse()
            .map_err(|_| VpcError::invalid("network_ip6_gateway", "expected an IPv6 address"))?;
        let cidr: Ipv6Net = cidr
            .parse()
            .map_err(|_| VpcError::invalid("network_ip6_cidr", "expected an IPv6 CIDR"))?;
        let cidr = cidr.trunc();
        if cidr.prefix_len() != 64 {
            return Err(VpcError::invalid(
                "network_ip6_cidr",
                "SLAAC needs a /64 prefix",
            ));
        }
        if !cidr.contains(&gateway) {
            return Err(VpcError::invalid(
                "network_ip6_gateway",
                format!("{gateway} is outside {cidr}"),
            ));
        }
        Ok(Some(Ipv6Network { gateway, cidr }))
    }

    /// `gateway/64` for `ip addr add` on the guest leg.
    pub fn gateway_with_prefix(&self) -> String {
        format!("{}/{}", self.gateway, self.cidr.prefix_len())
    }
}

/// RDNSS servers: the IPv6 entries of the `dns` comma list (others are
/// ignored, they are IPv4), else the gateway when the network's own DNS
/// service answers there.
pub fn rdnss_from_dns(dns: Option<&str>, net: &Ipv6Network, dns_on_gateway: bool) -> Vec<Ipv6Addr> {
    let mut out: Vec<Ipv6Addr> = dns
        .unwrap_or("")
        .split(',')
        .filter_map(|s| s.trim().parse::<Ipv6Addr>().ok())
        .collect();
    out.dedup();
    out.truncate(3);
    if out.is_empty() && dns_on_gateway {
        out.push(net.gateway);
    }
    out
}

/// Router-advertisement timing (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaIntervals {
    pub min: u32,
    pub max: u32,
}

impl Default for RaIntervals {
    /// Hosts that come up solicit an RA at once; periodic ones every 30-100 s
    /// keep the prefix fresh without chatter.
    fn default() -> Self {
        RaIntervals { min: 30, max: 100 }
    }
}

/// radvd.conf for one network's guest leg.
pub fn render_radvd_conf(
    leg: &str,
    net: &Ipv6Network,
    rdnss: &[Ipv6Addr],
    domain: Option<&str>,
    intervals: RaIntervals,
) -> Result<String, VpcError> {
    if !valid_ifname(leg) {
        return Err(VpcError::invalid("leg", "not an interface name"));
    }
    if intervals.min < 3 || intervals.max < 4 || intervals.min * 4 > intervals.max * 3 {
        return Err(VpcError::invalid(
            "ra_intervals",
            "need 3 <= min <= 0.75 * max, max >= 4",
        ));
    }
    let mut s = String::new();
    s.push_str(&format!("interface {leg} {{\n"));
    s.push_str("\tAdvSendAdvert on;\n");
    s.push_str(&format!("\tMinRtrAdvInterval {};\n", intervals.min));
    s.push_str(&format!("\tMaxRtrAdvInterval {};\n", intervals.max));
    s.push_str(&format!(
        "\tAdvDefaultLifetime {};\n",
        (intervals.max * 3).clamp(4, 9000)
    ));
    s.push_str("\tAdvManagedFlag off;\n\tAdvOtherConfigFlag off;\n");
    s.push_str(&format!("\tprefix {} {{\n", net.cidr));
    s.push_str("\t\tAdvOnLink on;\n\t\tAdvAutonomous on;\n\t\tAdvRouterAddr on;\n");
    s.push_str("\t};\n");
    if !rdnss.is_empty() {
        let list: Vec<String> = rdnss.iter().map(|a| a.to_string()).collect();
        s.push_str(&format!(
            "\tRDNSS {} {{\n\t\tAdvRDNSSLifetime {};\n\t}};\n",
            list.join(" "),
            intervals.max * 2
        ));
    }
    if let Some(d) = domain.map(str::trim).filter(|d| !d.is_empty()) {
        if !netbridge_protocol::validate::is_dns_name(d, true) {
            return Err(VpcError::invalid("domain", "not a DNS domain name"));
        }
        s.push_str(&format!(
            "\tDNSSL {d} {{\n\t\tAdvDNSSLLifetime {};\n\t}};\n",
            intervals.max * 2
        ));
    }
    s.push_str("};\n");
    Ok(s)
}

/// ICMPv6 the router must accept (`input`): neighbour discovery, router
/// solicitations, echo (ping the gateway), and the error messages.
pub fn render_ipv6_input_rules(leg: &str) -> Vec<String> {
    vec![
        format!(
            "iifname \"{leg}\" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, echo-request, destination-unreachable, packet-too-big, time-exceeded, parameter-problem, mld-listener-query, mld2-listener-report }} accept"
        ),
    ]
}

/// `forward` rules of IPv6: the error messages path-MTU discovery needs, the
/// guest network's own egress (subject to the engine's egress policy, which
/// it places before these), and a final drop of everything else going
/// *into* the guest network over IPv6.
pub fn forward_rules(leg: &str, net: &Ipv6Network) -> Vec<Rule> {
    let errors =
        "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem }";
    vec![
        Rule::new(
            format!("oifname \"{leg}\" ip6 daddr {} {errors}", net.cidr),
            Verdict::Accept,
        ),
        Rule::new(
            format!("oifname \"{leg}\" meta nfproto ipv6"),
            Verdict::Drop,
        )
        .comment("ipv6 ingress denied unless allowed"),
    ]
}

/// Namespace sysctls (key, value) for IPv6 routing on `leg`.
pub fn ipv6_sysctls(leg: &str) -> Vec<(String, String)> {
    vec![
        ("net.ipv6.conf.all.forwarding".into(), "1".into()),
        (format!("net.ipv6.conf.{leg}.accept_ra"), "0".into()),
        (format!("net.ipv6.conf.{leg}.disable_ipv6"), "0".into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn net() -> Ipv6Network {
        Ipv6Network::from_payload(
            json!({"network_ip6_gateway": "2001:db8:1:2::1", "network_ip6_cidr": "2001:db8:1:2::/64"})
                .as_object()
                .unwrap(),
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn payload_fields_are_validated() {
        assert_eq!(net().gateway_with_prefix(), "2001:db8:1:2::1/64");
        let none = Ipv6Network::from_payload(json!({}).as_object().unwrap()).unwrap();
        assert_eq!(none, None);
        let cases = [
            (
                json!({"network_ip6_gateway": "2001:db8::1"}),
                "missing required field 'network_ip6_cidr'",
            ),
            (
                json!({"network_ip6_gateway": "2001:db8::1", "network_ip6_cidr": "2001:db8::/56"}),
                "invalid value for 'network_ip6_cidr': SLAAC needs a /64 prefix",
            ),
            (
                json!({"network_ip6_gateway": "2001:db9::1", "network_ip6_cidr": "2001:db8::/64"}),
                "invalid value for 'network_ip6_gateway': 2001:db9::1 is outside 2001:db8::/64",
            ),
            (
                json!({"network_ip6_gateway": "10.0.0.1", "network_ip6_cidr": "2001:db8::/64"}),
                "invalid value for 'network_ip6_gateway': expected an IPv6 address",
            ),
        ];
        for (p, want) in cases {
            assert_eq!(
                Ipv6Network::from_payload(p.as_object().unwrap())
                    .unwrap_err()
                    .to_string(),
                want
            );
        }
    }

    #[test]
    fn radvd_conf_advertises_prefix_and_rdnss() {
        let n = net();
        let rdnss = rdnss_from_dns(Some("8.8.8.8, 2001:4860:4860::8888,bogus"), &n, true);
        assert_eq!(
            rdnss,
            vec!["2001:4860:4860::8888".parse::<Ipv6Addr>().unwrap()]
        );
        let conf = render_radvd_conf(
            "gl42",
            &n,
            &rdnss,
            Some("example.org"),
            RaIntervals::default(),
        )
        .unwrap();
        assert_eq!(
            conf,
            "interface gl42 {\n\tAdvSendAdvert on;\n\tMinRtrAdvInterval 30;\n\tMaxRtrAdvInterval 100;\n\
             \tAdvDefaultLifetime 300;\n\tAdvManagedFlag off;\n\tAdvOtherConfigFlag off;\n\
             \tprefix 2001:db8:1:2::/64 {\n\t\tAdvOnLink on;\n\t\tAdvAutonomous on;\n\t\tAdvRouterAddr on;\n\t};\n\
             \tRDNSS 2001:4860:4860::8888 {\n\t\tAdvRDNSSLifetime 200;\n\t};\n\
             \tDNSSL example.org {\n\t\tAdvDNSSLLifetime 200;\n\t};\n};\n"
        );
        // No IPv6 resolver given: the gateway, when DNS is served there.
        assert_eq!(rdnss_from_dns(Some("8.8.8.8"), &n, true), vec![n.gateway]);
        assert!(rdnss_from_dns(None, &n, false).is_empty());
        assert!(render_radvd_conf("bad;name", &n, &[], None, RaIntervals::default()).is_err());
        assert_eq!(
            render_radvd_conf(
                "gl42",
                &n,
                &[],
                Some("x\";}; evil {"),
                RaIntervals::default()
            )
            .unwrap_err()
            .to_string(),
            "invalid value for 'domain': not a DNS domain name"
        );
        assert!(render_radvd_conf("gl42", &n, &[], None, RaIntervals { min: 10, max: 5 }).is_err());
    }

    #[test]
    fn firewall_allows_nd_and_denies_unsolicited_ingress() {
        let n = net();
        let input = render_ipv6_input_rules("gl42");
        assert!(input[0].contains("nd-neighbor-solicit") && input[0].contains("nd-router-solicit"));
        let fwd = forward_rules("gl42", &n);
        assert_eq!(
            fwd.last().unwrap(),
            "oifname \"gl42\" meta nfproto ipv6 drop comment \"ipv6 ingress denied unless allowed\""
        );
        assert!(ipv6_sysctls("gl42").contains(&("net.ipv6.conf.all.forwarding".into(), "1".into())));
    }
}
