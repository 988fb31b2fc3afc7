//! VPC desired state: the VPC CIDR, its source-NAT address, its tiers (one
//! guest leg each in `cs-vpc-<id>`), and the public addresses and links they
//! share, reference-counted by owner so that removing one tier never removes
//! an address, link or route another owner still uses.
//!
//! The namespace's table ([`VpcState::ruleset`], as data, see [`crate::nft`]):
//! - [`VpcState::snat_rules`]: `postrouting` NAT rule(s) — SNAT of the
//!   VPC CIDR to the source-NAT address, leaving through that address's
//!   public link, placed *after* the tiers' static-NAT SNAT rules, so a VM
//!   with static NAT keeps its own address.
//! - [`VpcState::forward_rules`]: the `forward` rules of the VPC: the
//!   egress ACL of the tier a packet comes from, then the ingress ACL of the
//!   tier it goes to, then accept. Tiers route to each other through these
//!   rules; `ct state established,related accept` and the tiers' IPv6 rules
//!   come before them, the default-drop policy after them.
//! - every tier's ACL chains ([`acl::tier_chains`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::acl::{self, TierAcl};
use super::{valid_ifname, VpcError};
use crate::nft::{self, Chain, Rule, Ruleset, Verdict};
use netbridge_protocol::target::{Namespace, VpcId};
use netbridge_protocol::vpc::{self as vpc_wire, VpcFields, VpcPublicIp};

/// A public address as the payload describes it, plus the namespace link
/// (engine-named veth) it lives on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIp {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// Normalized VLAN: digits, or `untagged`.
    pub vlan: String,
    /// The public link (interface name in the namespace) for this VLAN.
    pub link: String,
}

impl PublicIp {
    /// The typed wire fields plus the public link `link_for_vlan` names for
    /// the normalized VLAN.
    pub fn from_wire(
        p: VpcPublicIp,
        link_for_vlan: impl Fn(&str) -> String,
    ) -> Result<PublicIp, VpcError> {
        let link = link_for_vlan(&p.vlan);
        if !valid_ifname(&link) {
            return Err(VpcError::invalid(
                "public_vlan",
                "link name is not an interface name",
            ));
        }
        Ok(PublicIp {
            ip: p.ip,
            prefix_len: p.prefix_len,
            gateway: p.gateway,
            vlan: p.vlan,
            link,
        })
    }
}

/// Reads the public-IP fields of a payload ([`VpcPublicIp`]);
/// `link_for_vlan` maps the normalized VLAN to the engine's public link name.
pub fn parse_public_ip(
    payload: &Map<String, Value>,
    link_for_vlan: impl Fn(&str) -> String,
) -> Result<PublicIp, VpcError> {
    PublicIp::from_wire(VpcPublicIp::parse(payload)?, link_for_vlan)
}

/// Who uses a public address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Owner {
    /// The VPC's source NAT.
    VpcSourceNat,
    /// A tier (its static NAT, port forwarding, LB rules or assignment).
    Tier(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicEntry {
    pub ip: PublicIp,
    pub owners: BTreeSet<Owner>,
}

/// One tier: a guest network of the VPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub network_id: String,
    /// The tier's guest leg inside the VPC namespace (engine-named).
    pub leg: String,
    pub gateway: Ipv4Addr,
    #[serde(with = "super::as_string")]
    pub cidr: Ipv4Net,
    pub acl: TierAcl,
}

/// What disappeared when owners let go; the engine removes exactly these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Released {
    pub addresses: Vec<PublicIp>,
    /// Public links no remaining address uses.
    pub links: Vec<String>,
}

/// Result of removing a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierRemoval {
    pub tier: Tier,
    /// ACL chains to delete.
    pub chains: [String; 2],
    pub released: Released,
}

/// Result of `update-vpc-source-nat-ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnatMove {
    pub old: Option<Ipv4Addr>,
    pub new: Ipv4Addr,
    /// The old address (and link) when nothing else uses them any more.
    pub released: Released,
}

/// The desired state of one VPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpcState {
    pub vpc_id: VpcId,
    #[serde(with = "super::as_string")]
    pub cidr: Ipv4Net,
    pub source_nat: Option<Ipv4Addr>,
    pub addresses: BTreeMap<Ipv4Addr, PublicEntry>,
    pub tiers: BTreeMap<String, Tier>,
}

/// Reads `vpc_cidr` (or the older `cidr`) of a VPC payload.
pub fn parse_vpc_cidr(payload: &Map<String, Value>) -> Result<Ipv4Net, VpcError> {
    Ok(vpc_wire::parse_vpc_cidr(payload)?)
}

/// `implement-vpc` / `update-vpc-source-nat-ip` payload ([`VpcFields`]) with
/// the source-NAT address placed on its public link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcPayload {
    pub vpc_id: VpcId,
    pub cidr: Option<Ipv4Net>,
    pub source_nat: Option<PublicIp>,
}

pub fn parse_vpc_payload(
    payload: &Map<String, Value>,
    link_for_vlan: impl Fn(&str) -> String,
) -> Result<VpcPayload, VpcError> {
    let f = VpcFields::parse(payload)?;
    Ok(VpcPayload {
        vpc_id: f.vpc_id,
        cidr: f.cidr,
        source_nat: f
            .source_nat
            .map(|p| PublicIp::from_wire(p, link_for_vlan))
            .transpose()?,
    })
}

impl VpcState {
    pub fn new(vpc_id: VpcId, cidr: Ipv4Net) -> Result<VpcState, VpcError> {
        Ok(VpcState {
            vpc_id,
            cidr,
            source_nat: None,
            addresses: BTreeMap::new(),
            tiers: BTreeMap::new(),
        })
    }

    /// The namespace of the VPC and all its tiers.
    pub fn namespace(&self) -> String {
        Namespace::Vpc(self.vpc_id).to_string()
    }

    /// Adds `owner` to a public address (creating it). The same address
    /// with a different prefix/link is refused: one address, one place.
    pub fn acquire(&mut self, owner: Owner, ip: PublicIp) -> Result<(), VpcError> {
        if let Some(entry) = self.addresses.get_mut(&ip.ip) {
            if entry.ip.link != ip.link || entry.ip.prefix_len != ip.prefix_len {
                return Err(VpcError::invalid(
                    "public_ip",
                    format!(
                        "{} is already configured on {}/{}",
                        ip.ip, entry.ip.link, entry.ip.prefix_len
                    ),
                ));
            }
            if ip.gateway.is_some() {
                entry.ip.gateway = ip.gateway;
            }
            entry.owners.insert(owner);
        } else {
            self.addresses.insert(
                ip.ip,
                PublicEntry {
                    ip,
                    owners: BTreeSet::from([owner]),
                },
            );
        }
        Ok(())
    }

    /// Drops `owner` from an address; the address goes when nobody is left.
    pub fn release(&mut self, owner: &Owner, ip: Ipv4Addr) -> Released {
        let mut gone = Vec::new();
        if let Some(entry) = self.addresses.get_mut(&ip) {
            entry.owners.remove(owner);
            if entry.owners.is_empty() {
                if let Some(e) = self.addresses.remove(&ip) {
                    gone.push(e.ip);
                }
            }
        }
        self.finish_release(gone)
    }

    /// `release-ip`: the address goes regardless of owners (CloudStack only
    /// releases an address nothing uses any more).
    pub fn release_address(&mut self, ip: Ipv4Addr) -> Released {
        let gone: Vec<PublicIp> = self
            .addresses
            .remove(&ip)
            .map(|e| e.ip)
            .into_iter()
            .collect();
        if self.source_nat == Some(ip) {
            self.source_nat = None;
        }
        self.finish_release(gone)
    }

    fn finish_release(&mut self, gone: Vec<PublicIp>) -> Released {
        let in_use: BTreeSet<&str> = self
            .addresses
            .values()
            .map(|e| e.ip.link.as_str())
            .collect();
        let mut links: Vec<String> = gone
            .iter()
            .filter(|g| !in_use.contains(g.link.as_str()))
            .map(|g| g.link.clone())
            .collect();
        links.sort();
        links.dedup();
        Released {
            addresses: gone,
            links,
        }
    }

    /// `implement-vpc`: records the source-NAT address when given. Idempotent.
    pub fn implement(&mut self, source_nat: Option<PublicIp>) -> Result<(), VpcError> {
        if let Some(ip) = source_nat {
            if self.source_nat.is_some_and(|cur| cur != ip.ip) {
                self.update_source_nat(ip)?;
            } else {
                let addr = ip.ip;
                self.acquire(Owner::VpcSourceNat, ip)?;
                self.source_nat = Some(addr);
            }
        }
        Ok(())
    }

    /// `update-vpc-source-nat-ip`: only the VPC's SNAT reference moves; the
    /// old address stays while a tier still uses it, and no other rule is
    /// touched.
    pub fn update_source_nat(&mut self, ip: PublicIp) -> Result<SnatMove, VpcError> {
        let new = ip.ip;
        let old = self.source_nat;
        self.acquire(Owner::VpcSourceNat, ip)?;
        self.source_nat = Some(new);
        let released = match old {
            Some(o) if o != new => self.release(&Owner::VpcSourceNat, o),
            _ => Released::default(),
        };
        Ok(SnatMove { old, new, released })
    }

    /// Adds or refreshes a tier (implement-network with `vpc_id`). A re-sent
    /// tier keeps its applied ACL.
    pub fn add_tier(
        &mut self,
        network_id: &str,
        leg: &str,
        gateway: Ipv4Addr,
        cidr: Ipv4Net,
    ) -> Result<(), VpcError> {
        acl::validate_network_id(network_id)?;
        if !valid_ifname(leg) {
            return Err(VpcError::invalid("leg", "not an interface name"));
        }
        if cidr.trunc() != cidr {
            return Err(VpcError::invalid("cidr", "host bits are set"));
        }
        if !self.cidr.contains(&cidr) {
            return Err(VpcError::invalid(
                "cidr",
                format!("{cidr} is outside the VPC CIDR {}", self.cidr),
            ));
        }
        if !cidr.contains(&gateway)
            || gateway == cidr.network()
            || (cidr.prefix_len() < 31 && gateway == cidr.broadcast())
        {
            return Err(VpcError::invalid(
                "gateway",
                format!("{gateway} is not a host of {cidr}"),
            ));
        }
        for (id, t) in &self.tiers {
            if id == network_id {
                continue;
            }
            if t.cidr.contains(&cidr) || cidr.contains(&t.cidr) {
                return Err(VpcError::invalid(
                    "cidr",
                    format!("{cidr} overlaps tier {id} ({})", t.cidr),
                ));
            }
            if t.leg == leg {
                return Err(VpcError::invalid(
                    "leg",
                    format!("{leg} is already tier {id}'s leg"),
                ));
            }
        }
        let acl = self
            .tiers
            .get(network_id)
            .map(|t| t.acl.clone())
            .unwrap_or_default();
        self.tiers.insert(
            network_id.to_string(),
            Tier {
                network_id: network_id.to_string(),
                leg: leg.to_string(),
                gateway,
                cidr,
                acl,
            },
        );
        Ok(())
    }

    /// `apply-network-acl` for a tier.
    pub fn set_acl(&mut self, network_id: &str, acl: TierAcl) -> Result<(), VpcError> {
        let t = self.tiers.get_mut(network_id).ok_or_else(|| {
            VpcError::invalid(
                "network_id",
                format!("{network_id} is not a tier of this VPC"),
            )
        })?;
        t.acl = acl;
        Ok(())
    }

    /// Removes a tier and only what nothing else uses (shutdown/destroy of a tier).
    pub fn remove_tier(&mut self, network_id: &str) -> Option<TierRemoval> {
        let tier = self.tiers.remove(network_id)?;
        let owner = Owner::Tier(network_id.to_string());
        let ips: Vec<Ipv4Addr> = self
            .addresses
            .iter()
            .filter(|(_, e)| e.owners.contains(&owner))
            .map(|(ip, _)| *ip)
            .collect();
        let mut released = Released::default();
        for ip in ips {
            let r = self.release(&owner, ip);
            released.addresses.extend(r.addresses);
            released.links.extend(r.links);
        }
        Some(TierRemoval {
            chains: [
                acl::ingress_chain(network_id),
                acl::egress_chain(network_id),
            ],
            tier,
            released,
        })
    }

    /// Public links in use → their addresses.
    pub fn links(&self) -> BTreeMap<String, Vec<PublicIp>> {
        let mut m: BTreeMap<String, Vec<PublicIp>> = BTreeMap::new();
        for e in self.addresses.values() {
            m.entry(e.ip.link.clone()).or_default().push(e.ip.clone());
        }
        m
    }

    /// The default route: via the source-NAT address's gateway, else the
    /// first address that has one. Present while such an address exists.
    pub fn default_route(&self) -> Option<(Ipv4Addr, String)> {
        let pick = |e: &PublicEntry| e.ip.gateway.map(|g| (g, e.ip.link.clone()));
        self.source_nat
            .and_then(|s| self.addresses.get(&s))
            .and_then(pick)
            .or_else(|| self.addresses.values().find_map(pick))
    }

    /// The VPC source-NAT rule (nat `postrouting`).
    pub fn snat_rules(&self) -> Vec<Rule> {
        let Some(snat) = self.source_nat.and_then(|s| self.addresses.get(&s)) else {
            return Vec::new();
        };
        let oif = crate::planner::quoted_set(&[&snat.ip.link]);
        vec![crate::planner::snat(&oif, self.cidr, snat.ip.ip)
            .comment(format!("vpc {} source nat", self.vpc_id))]
    }

    /// The VPC's `forward` rules (see the module documentation).
    pub fn forward_rules(&self) -> Vec<Rule> {
        let mut out = Vec::new();
        for t in self.tiers.values() {
            let chain = acl::egress_chain(&t.network_id);
            out.push(Rule::new(
                format!("iifname \"{}\"", t.leg),
                Verdict::Jump(chain),
            ));
        }
        for t in self.tiers.values() {
            let chain = acl::ingress_chain(&t.network_id);
            out.push(Rule::new(
                format!("oifname \"{}\"", t.leg),
                Verdict::Jump(chain),
            ));
        }
        if !self.tiers.is_empty() {
            let legs: Vec<String> = self
                .tiers
                .values()
                .map(|t| format!("\"{}\"", t.leg))
                .collect();
            let set = legs.join(", ");
            for dir in ["iifname", "oifname"] {
                out.push(
                    Rule::new(format!("{dir} {{ {set} }}"), Verdict::Accept)
                        .comment(format!("vpc {} tiers", self.vpc_id)),
                );
            }
        }
        out
    }

    /// The namespace's table in the engine's layout (same chain names and
    /// hooks, see [`crate::planner`]): NAT with the tiers' DNAT and SNAT
    /// before the VPC source NAT, the filter skeleton, the tiers' IPv6 and
    /// input rules, the ACL jumps and every tier's ACL chains.
    pub fn ruleset(&self, parts: &VpcRulesetParts) -> Result<Ruleset, VpcError> {
        let mut rs = Ruleset::default();
        rs.chain(Chain::base(nft::Hook::Prerouting)).rules = parts.dnat.clone();
        let post = rs.chain(Chain::base(nft::Hook::Postrouting));
        post.rules = parts.snat.clone();
        post.rules.extend(self.snat_rules());
        let legs: Vec<&str> = self.tiers.values().map(|t| t.leg.as_str()).collect();
        crate::planner::filter_skeleton(&mut rs, &legs);
        rs.extend("input", parts.input.iter().cloned());
        rs.extend("forward", parts.ipv6_forward.iter().cloned());
        rs.extend("forward", self.forward_rules());
        for t in self.tiers.values() {
            for chain in acl::tier_chains(&t.network_id, &t.acl)? {
                rs.chain(chain);
            }
        }
        Ok(rs)
    }
}

/// Host end of a VPC public veth: `nbx<vpc_id>-<vlan>` (`u` untagged),
/// hashed like the engine's names when longer than 15 characters. Distinct
/// from the engine's `nbp<network_id>-…` so VPC 5 and network 5 never clash.
pub fn vpc_public_host_name(vpc_id: &str, vlan: netbridge_protocol::validate::Vlan) -> String {
    let tag = vlan.0.map_or_else(|| "u".to_string(), |v| v.to_string());
    crate::planner::link_name("nbx", &format!("{vpc_id}-{tag}"))
}

impl VpcState {
    /// The whole namespace as the engine's [`crate::planner::Plan`],
    /// ready for its applier: one guest leg per tier (bridge, names and
    /// address from the tier's `NetworkState`), one public leg per VLAN in
    /// use, the default route, forwarding, and [`VpcState::ruleset`].
    /// `tiers` are the tiers' network states (extra ones are ignored).
    pub fn plan(
        &self,
        tiers: &[&crate::state::NetworkState],
        public_device: &str,
        parts: &VpcRulesetParts,
    ) -> Result<crate::planner::Plan, VpcError> {
        use crate::planner::{self, Leg, LegRole, LinkPlan};
        use netbridge_protocol::validate::{self, Ipv4Cidr};
        let mut legs = Vec::new();
        // Tier gateways are announced like an isolated network's guest
        // address: after a rebuild or a move to another host the VMs' ARP
        // entries point at the old veth.
        let mut announce = Vec::new();
        for tier in self.tiers.values() {
            let st = tiers
                .iter()
                .find(|s| s.network_id.to_string() == tier.network_id)
                .ok_or_else(|| {
                    VpcError::invalid(
                        "network_id",
                        format!("no network state for tier {}", tier.network_id),
                    )
                })?;
            let inner = planner::guest_inner_name(st.network_id);
            if inner != tier.leg {
                return Err(VpcError::invalid(
                    "leg",
                    format!(
                        "tier {} leg {} is not the engine's {inner}",
                        tier.network_id, tier.leg
                    ),
                ));
            }
            let gateway = st.extension_ip.unwrap_or(tier.gateway);
            announce.push((inner.clone(), gateway));
            legs.push(Leg {
                role: LegRole::Guest,
                host_name: planner::guest_host_name(st.network_id),
                inner_name: inner,
                bridge: planner::bridge_name(&st.guest_device, st.vlan)
                    .map_err(|e| VpcError::invalid("guest.network.device", e.to_string()))?,
                device: st.guest_device.clone(),
                vlan: st.vlan,
                addrs: vec![Ipv4Cidr {
                    addr: gateway,
                    prefix: tier.cidr.prefix_len(),
                }],
            });
        }
        for (link, ips) in self.links() {
            let Some(first) = ips.first() else { continue };
            let vlan = validate::vlan("public_vlan", &first.vlan)?;
            let mut addrs: Vec<Ipv4Cidr> = ips
                .iter()
                .map(|p| Ipv4Cidr {
                    addr: p.ip,
                    prefix: p.prefix_len,
                })
                .collect();
            addrs.sort();
            announce.extend(addrs.iter().map(|a| (link.clone(), a.addr)));
            legs.push(Leg {
                role: LegRole::Public,
                host_name: vpc_public_host_name(&self.vpc_id.to_string(), vlan),
                inner_name: link.clone(),
                bridge: planner::bridge_name(public_device, vlan)
                    .map_err(|e| VpcError::invalid("public.network.device", e.to_string()))?,
                device: public_device.to_string(),
                vlan,
                addrs,
            });
        }
        Ok(planner::Plan {
            links: LinkPlan {
                namespace: self.namespace(),
                legs,
                default_route: self.default_route(),
                ipv4_forwarding: true,
                announce,
            },
            ruleset: self.ruleset(parts)?,
        })
    }
}

impl From<netbridge_protocol::ProtocolError> for VpcError {
    fn from(e: netbridge_protocol::ProtocolError) -> Self {
        match e {
            netbridge_protocol::ProtocolError::InvalidField { field, reason } => {
                VpcError::Invalid { field, reason }
            }
            netbridge_protocol::ProtocolError::MissingField(f) => VpcError::Missing(f),
            other => VpcError::invalid("payload", other.to_string()),
        }
    }
}

/// Namespace sysctls a VPC router needs: IPv4 forwarding, and promotion of
/// secondary addresses: without it, removing the first address of a public
/// link (e.g. the old source-NAT IP) silently removes every other address
/// of the same subnet on that link (static NAT, port forwarding, the new
/// source-NAT IP). Set before any address is added (`all` and `default`).
pub fn vpc_sysctls() -> Vec<(String, String)> {
    vec![
        ("net.ipv4.ip_forward".into(), "1".into()),
        ("net.ipv4.conf.all.promote_secondaries".into(), "1".into()),
        (
            "net.ipv4.conf.default.promote_secondaries".into(),
            "1".into(),
        ),
    ]
}

/// Per-tier rules the engine contributes to the VPC namespace's ruleset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VpcRulesetParts {
    /// `prerouting` (nat): port-forwarding, static-NAT and UDP LB DNAT of
    /// all tiers.
    pub dnat: Vec<Rule>,
    /// `postrouting` (nat), before the VPC source NAT: static-NAT SNAT.
    pub snat: Vec<Rule>,
    /// `input`, after the fixed rules (e.g. public service ports).
    pub input: Vec<Rule>,
    /// `forward`, right after the fixed rules: the tiers' IPv6 rules.
    pub ipv6_forward: Vec<Rule>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pip(ip: &str, vlan: &str) -> PublicIp {
        let payload = json!({"public_ip": ip, "public_cidr": format!("{ip}/24"),
            "public_gateway": "203.0.113.1", "public_vlan": vlan});
        parse_public_ip(payload.as_object().unwrap(), |v| format!("pub-{v}")).unwrap()
    }

    fn vpc() -> VpcState {
        let mut v = VpcState::new(VpcId::new(5), "10.1.0.0/16".parse().unwrap()).unwrap();
        v.implement(Some(pip("203.0.113.10", "vlan://100")))
            .unwrap();
        v.add_tier(
            "11",
            "vt11",
            "10.1.1.1".parse().unwrap(),
            "10.1.1.0/24".parse().unwrap(),
        )
        .unwrap();
        v.add_tier(
            "12",
            "vt12",
            "10.1.2.1".parse().unwrap(),
            "10.1.2.0/24".parse().unwrap(),
        )
        .unwrap();
        v
    }

    #[test]
    fn public_ip_fields_are_parsed_and_validated() {
        let p = pip("203.0.113.10", "vlan://100");
        assert_eq!(
            (p.prefix_len, p.vlan.as_str(), p.link.as_str()),
            (24, "100", "pub-100")
        );
        assert_eq!(pip("203.0.113.11", "").vlan, "untagged");
        let bad = json!({"public_ip": "203.0.113.10", "public_cidr": "198.51.100.0/24"});
        assert_eq!(
            parse_public_ip(bad.as_object().unwrap(), |_| "p".into())
                .unwrap_err()
                .to_string(),
            "invalid value for 'public_cidr': does not contain 203.0.113.10"
        );
        let bad = json!({"public_ip": "203.0.113.10", "public_vlan": "vlan://5000"});
        assert_eq!(
            parse_public_ip(bad.as_object().unwrap(), |_| "p".into())
                .unwrap_err()
                .to_string(),
            "invalid value for 'public_vlan': expected a VLAN id 1-4094 or untagged"
        );
        assert_eq!(
            parse_vpc_cidr(json!({"cidr": "10.1.0.0/16"}).as_object().unwrap()).unwrap(),
            "10.1.0.0/16".parse::<Ipv4Net>().unwrap()
        );
    }

    #[test]
    fn snat_covers_the_vpc_cidr_and_moves_alone() {
        let mut v = vpc();
        v.acquire(Owner::Tier("11".into()), pip("203.0.113.20", "100"))
            .unwrap();
        assert_eq!(
            v.snat_rules(),
            vec!["oifname \"pub-100\" ip saddr 10.1.0.0/16 snat ip to 203.0.113.10 comment \"vpc 5 source nat\""]
        );
        let forward_before = v.forward_rules();
        let mv = v.update_source_nat(pip("203.0.113.30", "100")).unwrap();
        assert_eq!(mv.old, Some("203.0.113.10".parse().unwrap()));
        // Old SNAT address was used only by the SNAT: it goes, the link stays.
        assert_eq!(mv.released.addresses.len(), 1);
        assert!(mv.released.links.is_empty());
        assert_eq!(
            v.snat_rules(),
            vec!["oifname \"pub-100\" ip saddr 10.1.0.0/16 snat ip to 203.0.113.30 comment \"vpc 5 source nat\""]
        );
        assert_eq!(v.forward_rules(), forward_before);
        assert!(v.addresses.contains_key(&"203.0.113.20".parse().unwrap()));
        // Moving SNAT onto an address a tier uses and back keeps the tier's.
        v.update_source_nat(pip("203.0.113.20", "100")).unwrap();
        let mv = v.update_source_nat(pip("203.0.113.30", "100")).unwrap();
        assert!(mv.released.addresses.is_empty());
        assert!(v.addresses[&"203.0.113.20".parse().unwrap()]
            .owners
            .contains(&Owner::Tier("11".into())));
    }

    #[test]
    fn deleting_a_tier_keeps_what_another_tier_uses() {
        let mut v = vpc();
        let shared = pip("203.0.113.20", "100");
        v.acquire(Owner::Tier("11".into()), shared.clone()).unwrap();
        v.acquire(Owner::Tier("12".into()), shared).unwrap();
        v.acquire(Owner::Tier("11".into()), pip("198.51.100.5", "200"))
            .unwrap();
        let r = v.remove_tier("11").unwrap();
        assert_eq!(
            r.chains,
            ["acl_in_11".to_string(), "acl_out_11".to_string()]
        );
        // Only tier 11's own address and its now-unused link go.
        assert_eq!(
            r.released
                .addresses
                .iter()
                .map(|a| a.ip.to_string())
                .collect::<Vec<_>>(),
            ["198.51.100.5"]
        );
        assert_eq!(r.released.links, ["pub-200"]);
        assert!(v.addresses.contains_key(&"203.0.113.20".parse().unwrap()));
        assert!(v.addresses.contains_key(&"203.0.113.10".parse().unwrap()));
        assert_eq!(
            v.default_route(),
            Some(("203.0.113.1".parse().unwrap(), "pub-100".into()))
        );
        assert_eq!(
            v.forward_rules(),
            vec![
                "iifname \"vt12\" jump acl_out_12",
                "oifname \"vt12\" jump acl_in_12",
                "iifname { \"vt12\" } accept comment \"vpc 5 tiers\"",
                "oifname { \"vt12\" } accept comment \"vpc 5 tiers\"",
            ]
        );
        assert!(v.remove_tier("11").is_none());
        // Last tier gone: the SNAT address is still the VPC's.
        let r = v.remove_tier("12").unwrap();
        assert!(r
            .released
            .addresses
            .iter()
            .all(|a| a.ip.to_string() != "203.0.113.10"));
        assert_eq!(v.snat_rules().len(), 1);
    }

    #[test]
    fn tiers_are_validated_and_keep_their_acl() {
        let mut v = vpc();
        let e = |r: Result<(), VpcError>| r.unwrap_err().to_string();
        assert_eq!(
            e(v.add_tier(
                "13",
                "vt13",
                "10.2.0.1".parse().unwrap(),
                "10.2.0.0/24".parse().unwrap()
            )),
            "invalid value for 'cidr': 10.2.0.0/24 is outside the VPC CIDR 10.1.0.0/16"
        );
        assert_eq!(
            e(v.add_tier(
                "13",
                "vt13",
                "10.1.1.129".parse().unwrap(),
                "10.1.1.128/25".parse().unwrap()
            )),
            "invalid value for 'cidr': 10.1.1.128/25 overlaps tier 11 (10.1.1.0/24)"
        );
        assert_eq!(
            e(v.add_tier(
                "13",
                "vt11",
                "10.1.3.1".parse().unwrap(),
                "10.1.3.0/24".parse().unwrap()
            )),
            "invalid value for 'leg': vt11 is already tier 11's leg"
        );
        assert_eq!(
            e(v.add_tier(
                "13",
                "vt13",
                "10.1.4.1".parse().unwrap(),
                "10.1.3.0/24".parse().unwrap()
            )),
            "invalid value for 'gateway': 10.1.4.1 is not a host of 10.1.3.0/24"
        );
        v.set_acl("11", TierAcl::Applied(vec![])).unwrap();
        v.add_tier(
            "11",
            "vt11",
            "10.1.1.1".parse().unwrap(),
            "10.1.1.0/24".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(v.tiers["11"].acl, TierAcl::Applied(vec![]));
        assert!(v.set_acl("99", TierAcl::NotApplied).is_err());
    }

    #[test]
    fn ruleset_puts_static_nat_before_vpc_snat_and_acls_in_forward() {
        let v = vpc();
        let parts = VpcRulesetParts {
            dnat: vec![Rule::new(
                "ip daddr 203.0.113.20",
                Verdict::Dnat("10.1.1.5".into()),
            )],
            snat: vec![Rule::new(
                "oifname \"pub-100\" ip saddr 10.1.1.5",
                Verdict::Snat("203.0.113.20".into()),
            )],
            ..VpcRulesetParts::default()
        };
        let r = v.ruleset(&parts).unwrap().render();
        assert!(r.starts_with("table inet nb {}\ndelete table inet nb\ntable inet nb {\n"));
        let static_snat = r.find("snat ip to 203.0.113.20").unwrap();
        let vpc_snat = r.find("snat ip to 203.0.113.10").unwrap();
        assert!(static_snat < vpc_snat);
        assert!(r.contains("    iifname { \"vt11\", \"vt12\" } accept\n"));
        assert!(r.contains("    ct state invalid drop\n    iifname \"vt11\" jump acl_out_11\n"));
        assert!(
            r.contains("  chain acl_in_12 {\n    drop comment \"no acl: ingress denied\"\n  }\n")
        );
        assert!(r.ends_with("  }\n}\n"));
    }

    #[test]
    fn vpc_payloads_are_parsed() {
        let p = json!({"vpc_id": "5", "vpc_cidr": "10.1.0.0/16", "public_ip": "203.0.113.10",
            "public_cidr": "203.0.113.0/24", "public_gateway": "203.0.113.1", "public_vlan": "vlan://100",
            "source_nat": "true"});
        let v = parse_vpc_payload(p.as_object().unwrap(), |v| format!("p{v}")).unwrap();
        assert_eq!(v.vpc_id, VpcId::new(5));
        assert_eq!(v.cidr, Some("10.1.0.0/16".parse().unwrap()));
        assert_eq!(v.source_nat.unwrap().link, "p100");
        let bare = parse_vpc_payload(
            json!({"vpc_id": "5", "cidr": "10.1.0.0/16"})
                .as_object()
                .unwrap(),
            |_| "p".into(),
        )
        .unwrap();
        assert_eq!(bare.source_nat, None);
        assert_eq!(
            parse_vpc_payload(
                json!({"vpc_id": "5", "vpc_cidr": "10.1.0.1/16"})
                    .as_object()
                    .unwrap(),
                |_| "p".into()
            )
            .unwrap_err()
            .to_string(),
            "invalid value for 'vpc_cidr': host bits are set"
        );
        assert_eq!(
            parse_vpc_payload(
                json!({"vpc_cidr": "10.1.0.0/16"}).as_object().unwrap(),
                |_| "p".into()
            )
            .unwrap_err()
            .to_string(),
            "missing required field 'vpc_id'"
        );
    }

    fn tier_state(id: &str, vlan: &str, cidr: &str, gw: &str) -> crate::state::NetworkState {
        use crate::state::{tests::request, NetworkState};
        use netbridge_protocol::Command;
        let req = request(
            Command::ImplementNetwork,
            json!({"network_id": id, "vpc_id": "5", "vlan": vlan, "cidr": cidr, "gateway": gw,
                   "extension_ip": gw, "guest_type": "isolated"}),
        );
        let mut s = NetworkState::new(&req, "eth1");
        s.transition(&req, "eth2").unwrap();
        s
    }

    #[test]
    fn plan_has_one_guest_leg_per_tier_and_shared_public_legs() {
        use crate::planner::{guest_inner_name, public_inner_name, LegRole};
        use netbridge_protocol::validate::Vlan;
        let mut v = VpcState::new(VpcId::new(5), "10.1.0.0/16".parse().unwrap()).unwrap();
        let link =
            |vlan: &str| public_inner_name(netbridge_protocol::validate::vlan("v", vlan).unwrap());
        let p = |ip: &str, vlan: &str| {
            let payload = json!({"public_ip": ip, "public_cidr": format!("{ip}/24"),
                "public_gateway": "203.0.113.1", "public_vlan": vlan});
            parse_public_ip(payload.as_object().unwrap(), link).unwrap()
        };
        v.implement(Some(p("203.0.113.10", "vlan://300"))).unwrap();
        v.acquire(Owner::Tier("11".into()), p("203.0.113.20", "300"))
            .unwrap();
        v.acquire(Owner::Tier("12".into()), p("198.51.100.7", "untagged"))
            .unwrap();
        v.add_tier(
            "11",
            &guest_inner_name(11),
            "10.1.1.1".parse().unwrap(),
            "10.1.1.0/24".parse().unwrap(),
        )
        .unwrap();
        v.add_tier(
            "12",
            &guest_inner_name(12),
            "10.1.2.1".parse().unwrap(),
            "10.1.2.0/24".parse().unwrap(),
        )
        .unwrap();
        let t11 = tier_state("11", "vlan://101", "10.1.1.0/24", "10.1.1.1");
        let t12 = tier_state("12", "vlan://102", "10.1.2.0/24", "10.1.2.1");
        let plan = v
            .plan(&[&t11, &t12], "eth2", &VpcRulesetParts::default())
            .unwrap();
        assert_eq!(plan.links.namespace, "cs-vpc-5");
        let legs: Vec<(LegRole, &str, &str, &str, String)> = plan
            .links
            .legs
            .iter()
            .map(|l| {
                let addrs: Vec<String> = l.addrs.iter().map(|a| a.to_string()).collect();
                (
                    l.role,
                    l.host_name.as_str(),
                    l.inner_name.as_str(),
                    l.bridge.as_str(),
                    addrs.join(","),
                )
            })
            .collect();
        assert_eq!(
            legs,
            vec![
                (
                    LegRole::Guest,
                    "nbg11",
                    "g11",
                    "breth1-101",
                    "10.1.1.1/24".to_string()
                ),
                (
                    LegRole::Guest,
                    "nbg12",
                    "g12",
                    "breth1-102",
                    "10.1.2.1/24".to_string()
                ),
                (
                    LegRole::Public,
                    "nbx5-300",
                    "p300",
                    "breth2-300",
                    "203.0.113.10/24,203.0.113.20/24".to_string()
                ),
                (
                    LegRole::Public,
                    "nbx5-u",
                    "pu",
                    "breth2",
                    "198.51.100.7/24".to_string()
                ),
            ]
        );
        assert_eq!(
            plan.links.default_route,
            Some(("203.0.113.1".parse().unwrap(), "p300".into()))
        );
        assert!(plan.links.ipv4_forwarding);
        assert!(plan.ruleset.render().contains("snat ip to 203.0.113.10"));
        assert_eq!(
            vpc_public_host_name("123456789012", Vlan(Some(4094))).len(),
            15
        );
        // A tier without its network state cannot be planned.
        assert_eq!(
            v.plan(&[&t11], "eth2", &VpcRulesetParts::default())
                .unwrap_err()
                .to_string(),
            "invalid value for 'network_id': no network state for tier 12"
        );
    }

    #[test]
    fn the_same_address_cannot_live_on_two_links() {
        let mut v = vpc();
        assert_eq!(
            v.acquire(Owner::Tier("11".into()), pip("203.0.113.10", "200"))
                .unwrap_err()
                .to_string(),
            "invalid value for 'public_ip': 203.0.113.10 is already configured on pub-100/24"
        );
        let r = v.release_address("203.0.113.10".parse().unwrap());
        assert_eq!(r.links, ["pub-100"]);
        assert!(v.snat_rules().is_empty());
        assert_eq!(v.default_route(), None);
    }
}
