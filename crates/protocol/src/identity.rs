//! Which object of a router's desired state each command touches: its
//! identity. Defined here once, from the same typed payloads and keys the
//! executor's state uses ([`ForwardKey`] of a port forward, a public address, a
//! NIC's address, a VM's address), and read by the bridge's failover journal
//! to compact what it replays: the latest command per object is enough to
//! rebuild the executor's state (checked by a property test that replays a
//! compacted and a full command sequence through the executor's pure
//! transitions).
//!
//! An [`Object`] renders as the journal's slot string (`fw:42`,
//! `ip:42:203.0.113.10`, `pf:42:203.0.113.10:tcp:8080-8090`, …); a
//! [`Family`] is a prefix of such strings (every forward of one address,
//! every single-item save of one VM, every entry of one kind of a network).

use std::fmt;
use std::net::Ipv4Addr;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::envelope::{decode_document, Fields};
use super::payload::ForwardKey;
use super::target::{NetworkId, Target};
use super::{validate, Command};

/// A network id as a slot names it (`""` when the payload has none: VPC-wide
/// objects).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Net(pub Option<NetworkId>);

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => Ok(()),
        }
    }
}

/// Whose VM data a `restore-network` sets. The executor keeps a listed VM's
/// stored data when its `vm_data` is empty or absent, or when
/// `userdata_enabled` is false, and forgets unlisted VMs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RestoreScope {
    /// Every listed VM's: it supersedes every earlier VM data entry.
    EveryVm,
    /// None: the earlier entries rebuild the kept data on a replay; an
    /// earlier restore of this kind carried no VM data and is replaced.
    NoVm,
    /// Some VMs' (CloudStack could not generate the others'): kept beside
    /// the earlier entries, one per distinct document (hex digest), until a
    /// restore of every VM's data.
    SomeVms(String),
}

/// One object of a router's desired state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Object {
    /// A network's (or tier's) definition: `implement-network`.
    Network(Net),
    /// The VPC's definition: `implement-vpc`.
    Vpc,
    /// The VPC's source-NAT address.
    VpcSourceNat,
    /// A public address held by a network.
    PublicIp(Net, Ipv4Addr),
    /// The static NAT of a public address.
    StaticNat(Net, Ipv4Addr),
    /// A port forward.
    PortForward(Net, ForwardKey),
    /// The firewall document of a network.
    Firewall(Net),
    /// The ACL of a tier.
    Acl(Net),
    /// A NIC (by address, else MAC, else NIC id).
    Nic(Net, String),
    /// The DHCP entry of a NIC.
    DhcpEntry(Net, String),
    /// DHCP on a network.
    DhcpSubnet(Net),
    /// Extra DHCP options of a NIC (by NIC id).
    DhcpOptions(Net, String),
    /// The DNS record of an address.
    DnsEntry(Net, String),
    /// DNS on a network.
    DnsSubnet(Net),
    /// A VM's whole metadata (`save-vm-data`).
    VmData(Net, String),
    /// A VM's password.
    Password(Net, String),
    /// One metadata item of a VM (`save-userdata`, …).
    VmItem(Net, String, Command),
    /// A restore of the guest data of a network.
    Restore(Net, RestoreScope),
}

impl fmt::Display for Object {
    /// The journal's slot string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Network(n) => write!(f, "implement:{n}"),
            Object::Vpc => f.write_str("vpc"),
            Object::VpcSourceNat => f.write_str("vpc-snat"),
            Object::PublicIp(n, ip) => write!(f, "ip:{n}:{ip}"),
            Object::StaticNat(n, ip) => write!(f, "staticnat:{n}:{ip}"),
            Object::PortForward(n, k) => write!(
                f,
                "pf:{n}:{}:{}:{}",
                k.public_ip,
                k.protocol.as_str(),
                k.public_port
            ),
            Object::Firewall(n) => write!(f, "fw:{n}"),
            Object::Acl(n) => write!(f, "acl:{n}"),
            Object::Nic(n, k) => write!(f, "nic:{n}:{k}"),
            Object::DhcpEntry(n, k) => write!(f, "dhcp:{n}:{k}"),
            Object::DhcpSubnet(n) => write!(f, "dhcpsub:{n}"),
            Object::DhcpOptions(n, k) => write!(f, "dhcpopt:{n}:{k}"),
            Object::DnsEntry(n, k) => write!(f, "dns:{n}:{k}"),
            Object::DnsSubnet(n) => write!(f, "dnssub:{n}"),
            Object::VmData(n, ip) => write!(f, "vmdata:{n}:{ip}"),
            Object::Password(n, ip) => write!(f, "pw:{n}:{ip}"),
            Object::VmItem(n, ip, c) => write!(f, "vmitem:{n}:{ip}:{c}"),
            Object::Restore(n, RestoreScope::EveryVm) => write!(f, "restore:{n}"),
            Object::Restore(n, RestoreScope::NoVm) => write!(f, "restore:{n}:keep"),
            Object::Restore(n, RestoreScope::SomeVms(d)) => write!(f, "restore:{n}:data:{d}"),
        }
    }
}

/// Kinds of per-network objects, for [`Family::Kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Nic,
    Dhcp,
    Dns,
    VmData,
    VmItem,
    Restore,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Nic => "nic",
            Kind::Dhcp => "dhcp",
            Kind::Dns => "dns",
            Kind::VmData => "vmdata",
            Kind::VmItem => "vmitem",
            Kind::Restore => "restore",
        }
    }
}

/// A set of objects named by a common prefix of their slot strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Family {
    /// Every port forward of a public address.
    ForwardsOf(Net, Ipv4Addr),
    /// Every single-item save of a VM.
    VmItemsOf(Net, String),
    /// Every object of one kind of a network.
    Kind(Kind, Net),
}

impl fmt::Display for Family {
    /// The slot prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Family::ForwardsOf(n, ip) => write!(f, "pf:{n}:{ip}:"),
            Family::VmItemsOf(n, ip) => write!(f, "vmitem:{n}:{ip}:"),
            Family::Kind(k, n) => write!(f, "{}:{n}:", k.as_str()),
        }
    }
}

/// What a command does to the objects of its router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touch {
    /// Nothing of the desired state (`ensure-network-device`,
    /// `custom-action`).
    Nothing,
    /// Everything of the router goes (a network's or VPC's teardown).
    Router,
    /// Everything of one tier goes.
    Tier(NetworkId),
    /// The command sets `object`, replacing its earlier setting; `append`:
    /// its place is now (later objects may depend on it), else its first
    /// place is kept. The objects `replaces` names and those of the
    /// families `supersedes` names go.
    Set {
        object: Object,
        append: bool,
        replaces: Vec<Object>,
        supersedes: Vec<Family>,
    },
    /// The objects and families go.
    Unset {
        objects: Vec<Object>,
        families: Vec<Family>,
    },
    /// The command adds to state without an identity of its own
    /// (`apply-lb-rules` carries only the changed rules), or names no
    /// object it could be matched by: every one is kept.
    Accumulate,
}

impl Touch {
    fn set(object: Option<Object>) -> Touch {
        match object {
            Some(object) => Touch::Set {
                object,
                append: false,
                replaces: Vec::new(),
                supersedes: Vec::new(),
            },
            None => Touch::Accumulate,
        }
    }

    fn unset(objects: impl IntoIterator<Item = Option<Object>>) -> Touch {
        Touch::Unset {
            objects: objects.into_iter().flatten().collect(),
            families: Vec::new(),
        }
    }
}

/// What `command` touches. `fields` is its payload (the flat object for
/// `custom-action`), `target` its router when it names one.
pub fn touch(command: Command, target: Option<Target>, fields: &Map<String, Value>) -> Touch {
    use Command::*;
    let f = Fields::new("", fields);
    let net = Net(target.and_then(Target::network_id));
    // String keys in their canonical form when valid; otherwise as given
    // (such a command is refused by the executor and never recorded, but
    // its identity must still be exact, never a pattern).
    let raw = |k: &str| f.opt_str(k).ok().flatten().map(|v| v.trim().to_string());
    let ip = || {
        f.opt("ip", validate::ip)
            .ok()
            .flatten()
            .map(|a| a.to_string())
            .or_else(|| raw("ip"))
    };
    let mac = || {
        f.opt("mac", validate::mac)
            .ok()
            .flatten()
            .or_else(|| raw("mac"))
    };
    let token = |k: &str| raw(k).filter(|v| !v.is_empty());
    let public_ip = || f.opt("public_ip", validate::ipv4).ok().flatten();
    // A NIC by its address, else its MAC, else its id.
    let nic = || {
        ip().or_else(mac)
            .or_else(|| token("nic_id"))
            .or_else(|| token("nic_uuid"))
    };
    match command {
        EnsureNetworkDevice | CustomAction => Touch::Nothing,
        DestroyNetwork | ShutdownNetwork => match target {
            Some(Target::Tier { network, .. }) => Touch::Tier(network),
            _ => Touch::Router,
        },
        ShutdownVpc => Touch::Router,
        ImplementNetwork => Touch::set(Some(Object::Network(net))),
        ImplementVpc => Touch::set(Some(Object::Vpc)),
        UpdateVpcSourceNatIp => Touch::set(Some(Object::VpcSourceNat)),
        AssignIp => Touch::set(public_ip().map(|ip| Object::PublicIp(net, ip))),
        ReleaseIp => match public_ip() {
            Some(ip) => Touch::Unset {
                objects: vec![Object::PublicIp(net, ip), Object::StaticNat(net, ip)],
                families: vec![Family::ForwardsOf(net, ip)],
            },
            None => Touch::Accumulate,
        },
        AddStaticNat => Touch::set(public_ip().map(|ip| Object::StaticNat(net, ip))),
        DeleteStaticNat => Touch::unset([public_ip().map(|ip| Object::StaticNat(net, ip))]),
        AddPortForward | DeletePortForward => {
            let key = ForwardKey::parse(&f)
                .ok()
                .map(|k| Object::PortForward(net, k));
            if command == AddPortForward {
                Touch::set(key)
            } else {
                Touch::unset([key])
            }
        }
        ApplyFwRules => Touch::set(Some(Object::Firewall(net))),
        ApplyNetworkAcl => Touch::set(Some(Object::Acl(net))),
        PrepareNic => Touch::set(nic().map(|n| Object::Nic(net, n))),
        ReleaseNic => match nic() {
            Some(n) => Touch::Unset {
                objects: vec![
                    Object::Nic(net, n.clone()),
                    Object::DhcpEntry(net, n.clone()),
                    Object::DnsEntry(net, n.clone()),
                    Object::VmData(net, n.clone()),
                    Object::Password(net, n.clone()),
                    Object::DhcpOptions(net, token("nic_id").unwrap_or_else(|| n.clone())),
                ],
                families: vec![Family::VmItemsOf(net, n)],
            },
            None => Touch::Accumulate,
        },
        AddDhcpEntry => Touch::set(nic().map(|n| Object::DhcpEntry(net, n))),
        // The executor keeps one record per NIC, which both `prepare-nic`
        // and `add-dhcp-entry` set: removing the DHCP entry removes it.
        RemoveDhcpEntry => match nic() {
            Some(n) => Touch::unset([
                Some(Object::DhcpEntry(net, n.clone())),
                Some(Object::Nic(net, n)),
            ]),
            None => Touch::unset([]),
        },
        ConfigDhcpSubnet => Touch::set(Some(Object::DhcpSubnet(net))),
        RemoveDhcpSubnet => Touch::unset([Some(Object::DhcpSubnet(net))]),
        SetDhcpOptions => Touch::set(
            token("nic_id")
                .or_else(nic)
                .map(|n| Object::DhcpOptions(net, n)),
        ),
        // The executor keeps one record per address.
        AddDnsEntry => Touch::set(ip().map(|n| Object::DnsEntry(net, n))),
        RemoveDnsEntry => Touch::unset([ip().map(|n| Object::DnsEntry(net, n))]),
        ConfigDnsSubnet => Touch::set(Some(Object::DnsSubnet(net))),
        RemoveDnsSubnet => Touch::unset([Some(Object::DnsSubnet(net))]),
        SaveVmData => match ip() {
            Some(ip) => Touch::Set {
                object: Object::VmData(net, ip.clone()),
                append: true,
                replaces: vec![Object::Password(net, ip.clone())],
                supersedes: vec![Family::VmItemsOf(net, ip)],
            },
            None => Touch::Accumulate,
        },
        SavePassword => Touch::set(ip().map(|ip| Object::Password(net, ip))),
        SaveUserdata | SaveSshkey | SaveHypervisorHostname => {
            Touch::set(ip().map(|ip| Object::VmItem(net, ip, command)))
        }
        ApplyLbRules => Touch::Accumulate,
        RestoreNetwork => {
            let kinds = |kinds: &[Kind]| kinds.iter().map(|k| Family::Kind(*k, net)).collect();
            // Every NIC, DHCP and DNS entry is replaced; VM data only for the
            // VMs the restore carries data for.
            let scope = restore_scope(fields);
            let supersedes = match scope {
                RestoreScope::EveryVm => kinds(&[
                    Kind::Nic,
                    Kind::Dhcp,
                    Kind::Dns,
                    Kind::VmData,
                    Kind::VmItem,
                    Kind::Restore,
                ]),
                RestoreScope::NoVm | RestoreScope::SomeVms(_) => {
                    kinds(&[Kind::Nic, Kind::Dhcp, Kind::Dns])
                }
            };
            Touch::Set {
                object: Object::Restore(net, scope),
                append: true,
                replaces: Vec::new(),
                supersedes,
            }
        }
    }
}

/// Whose VM data a `restore-network` payload sets.
pub fn restore_scope(fields: &Map<String, Value>) -> RestoreScope {
    let Ok(Some((doc, _))) = decode_document("restore_data", fields.get("restore_data")) else {
        // The executor refuses such a restore; it is never recorded.
        return RestoreScope::EveryVm;
    };
    let userdata = doc
        .get("userdata_enabled")
        .and_then(|v| {
            v.as_str()
                .map(str::to_string)
                .or_else(|| v.as_bool().map(|b| b.to_string()))
        })
        .is_none_or(|v| !v.trim().eq_ignore_ascii_case("false"));
    let vms = doc
        .get("vms")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let carries = |vm: &Value| {
        userdata
            && decode_document("vm_data", vm.get("vm_data"))
                .ok()
                .flatten()
                .is_some_and(|(d, _)| d.as_array().is_some_and(|a| !a.is_empty()))
    };
    let with_data = vms.iter().filter(|vm| carries(vm)).count();
    if with_data == vms.len() {
        RestoreScope::EveryVm
    } else if with_data == 0 {
        RestoreScope::NoVm
    } else {
        let digest = Sha256::digest(doc.to_string().as_bytes());
        RestoreScope::SomeVms(hex::encode(&digest[..8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::VpcId;
    use serde_json::json;

    fn slots(command: Command, target: Option<Target>, fields: Value) -> Touch {
        touch(command, target, fields.as_object().unwrap())
    }

    #[test]
    fn objects_render_as_journal_slots() {
        let net = Target::Network(NetworkId::new(42));
        let t = slots(
            Command::AddPortForward,
            Some(net),
            json!({"public_ip": "203.0.113.10", "public_port": "8080-8090",
                   "private_ip": "10.1.1.5", "private_port": "80-90"}),
        );
        let Touch::Set { object, .. } = t else {
            panic!("{t:?}")
        };
        // The protocol's default (tcp) is part of the identity.
        assert_eq!(object.to_string(), "pf:42:203.0.113.10:tcp:8080-8090");
        let t = slots(
            Command::ReleaseIp,
            Some(net),
            json!({"public_ip": "203.0.113.10"}),
        );
        assert_eq!(
            t,
            Touch::Unset {
                objects: vec![
                    Object::PublicIp(
                        Net(Some(NetworkId::new(42))),
                        "203.0.113.10".parse().unwrap()
                    ),
                    Object::StaticNat(
                        Net(Some(NetworkId::new(42))),
                        "203.0.113.10".parse().unwrap()
                    ),
                ],
                families: vec![Family::ForwardsOf(
                    Net(Some(NetworkId::new(42))),
                    "203.0.113.10".parse().unwrap()
                )],
            }
        );
        assert_eq!(
            Family::ForwardsOf(
                Net(Some(NetworkId::new(42))),
                "203.0.113.10".parse().unwrap()
            )
            .to_string(),
            "pf:42:203.0.113.10:"
        );
        assert_eq!(
            Object::VmItem(
                Net(Some(NetworkId::new(7))),
                "10.1.1.5".into(),
                Command::SaveSshkey
            )
            .to_string(),
            "vmitem:7:10.1.1.5:save-sshkey"
        );
        assert_eq!(Object::Network(Net::default()).to_string(), "implement:");
    }

    #[test]
    fn the_same_forward_in_any_spelling_is_one_object() {
        let net = Some(Target::Network(NetworkId::new(1)));
        let a = slots(
            Command::AddPortForward,
            net,
            json!({"public_ip": "203.0.113.10", "public_port": "080", "private_ip": "10.1.1.5"}),
        );
        let b = slots(
            Command::DeletePortForward,
            net,
            json!({"public_ip": "203.0.113.10", "public_port": 80, "protocol": "TCP",
                   "private_ip": "10.1.1.5"}),
        );
        let (Touch::Set { object: a, .. }, Touch::Unset { objects: b, .. }) = (a, b) else {
            panic!()
        };
        assert_eq!(vec![a], b);
    }

    #[test]
    fn teardowns_clear_the_router_or_the_tier() {
        let tier = Target::Tier {
            vpc: VpcId::new(5),
            network: NetworkId::new(11),
        };
        assert_eq!(
            slots(Command::DestroyNetwork, Some(tier), json!({})),
            Touch::Tier(NetworkId::new(11))
        );
        assert_eq!(
            slots(
                Command::ShutdownNetwork,
                Some(Target::Network(NetworkId::new(11))),
                json!({})
            ),
            Touch::Router
        );
        assert_eq!(
            slots(
                Command::ShutdownVpc,
                Some(Target::Vpc(VpcId::new(5))),
                json!({})
            ),
            Touch::Router
        );
        assert_eq!(
            slots(Command::CustomAction, None, json!({})),
            Touch::Nothing
        );
        assert_eq!(
            slots(Command::ApplyLbRules, None, json!({})),
            Touch::Accumulate
        );
    }
}
