//! Typed, validated payloads of the executor commands.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::envelope::{decode_document, Envelope, Fields};
use super::rules::FwRules;
use super::validate::{self, invalid, Ipv4Cidr, Ipv6Cidr, PortRange, Protocol, Vlan};
use super::ProtocolError;

/// `guest_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestType {
    Isolated,
    Shared,
    L2,
}

/// Network fields shared by every network command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkFields {
    pub network_id: u64,
    pub vlan: Vlan,
    pub zone_id: Option<u64>,
    pub guest_type: Option<GuestType>,
    pub gateway: Option<Ipv4Addr>,
    pub cidr: Option<Ipv4Cidr>,
    pub vpc_id: Option<u64>,
    pub ip6_gateway: Option<Ipv6Addr>,
    pub ip6_cidr: Option<Ipv6Cidr>,
}

impl NetworkFields {
    pub fn parse(f: &Fields<'_>) -> Result<NetworkFields, ProtocolError> {
        let guest_type = match f
            .opt_str("guest_type")?
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None => None,
            Some("isolated") => Some(GuestType::Isolated),
            Some("shared") => Some(GuestType::Shared),
            Some("l2") => Some(GuestType::L2),
            Some(_) => return Err(invalid(&f.name("guest_type"), "not isolated, shared or l2")),
        };
        if let Some(state) = f.opt_str("network_state")? {
            validate::token(&f.name("network_state"), &state)?;
        }
        Ok(NetworkFields {
            network_id: f.req("network_id", validate::id)?,
            vlan: f.opt("vlan", validate::vlan)?.unwrap_or_default(),
            zone_id: f.opt("zone_id", validate::id)?,
            guest_type,
            gateway: f.opt("gateway", validate::ipv4)?,
            cidr: f.opt("cidr", validate::ipv4_cidr)?,
            vpc_id: f.opt("vpc_id", validate::id)?,
            ip6_gateway: f.opt("network_ip6_gateway", validate::ipv6)?,
            ip6_cidr: f.opt("network_ip6_cidr", validate::ipv6_cidr)?,
        })
    }
}

/// Host devices from the registration details (validated names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices {
    pub guest: Option<String>,
    pub public: Option<String>,
}

impl Devices {
    pub fn parse(env: &Envelope) -> Result<Devices, ProtocolError> {
        let get = |k: &str| -> Result<Option<String>, ProtocolError> {
            env.detail(k)
                .map(|v| validate::device_name(k, v))
                .transpose()
        };
        Ok(Devices {
            guest: get("guest.network.device")?,
            public: get("public.network.device")?,
        })
    }
}

/// Public IP fields of `assign-ip` / `release-ip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIpFields {
    pub public_ip: Ipv4Addr,
    pub public_vlan: Vlan,
    pub public_gateway: Option<Ipv4Addr>,
    /// Prefix length from `public_cidr` (32 when absent).
    pub prefix: u8,
    pub source_nat: bool,
}

impl PublicIpFields {
    pub fn parse(f: &Fields<'_>) -> Result<PublicIpFields, ProtocolError> {
        Ok(PublicIpFields {
            public_ip: f.req("public_ip", validate::ipv4)?,
            public_vlan: f.opt("public_vlan", validate::vlan)?.unwrap_or_default(),
            public_gateway: f.opt("public_gateway", validate::ipv4)?,
            prefix: f
                .opt("public_cidr", validate::ipv4_cidr)?
                .map_or(32, |c| c.prefix),
            source_nat: f.opt_bool("source_nat")?.unwrap_or(false),
        })
    }
}

/// `add-static-nat` / `delete-static-nat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNatFields {
    pub public_ip: Ipv4Addr,
    pub private_ip: Ipv4Addr,
}

impl StaticNatFields {
    pub fn parse(f: &Fields<'_>) -> Result<StaticNatFields, ProtocolError> {
        Ok(StaticNatFields {
            public_ip: f.req("public_ip", validate::ipv4)?,
            private_ip: f.req("private_ip", validate::ipv4)?,
        })
    }
}

/// What names a port forward: one per public address, protocol and public
/// port range (the journal's compaction and the executor's state alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ForwardKey {
    pub public_ip: Ipv4Addr,
    pub protocol: Protocol,
    pub public_port: PortRange,
}

/// A forward's `protocol`: tcp when absent; tcp or udp.
fn forward_protocol(f: &Fields<'_>) -> Result<Protocol, ProtocolError> {
    let protocol = f
        .opt("protocol", validate::protocol)?
        .unwrap_or(Protocol::Tcp);
    if !protocol.has_ports() {
        return Err(invalid(
            &f.name("protocol"),
            "port forwarding needs tcp or udp",
        ));
    }
    Ok(protocol)
}

impl ForwardKey {
    /// The identity fields of a forward (`protocol` defaults to tcp).
    pub fn parse(f: &Fields<'_>) -> Result<ForwardKey, ProtocolError> {
        let protocol = forward_protocol(f)?;
        Ok(ForwardKey {
            public_ip: f.req("public_ip", validate::ipv4)?,
            protocol,
            public_port: f.req("public_port", validate::port_range)?,
        })
    }
}

/// `add-port-forward` / `delete-port-forward`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortForwardFields {
    pub public_ip: Ipv4Addr,
    pub protocol: Protocol,
    pub public_port: PortRange,
    pub private_ip: Ipv4Addr,
    pub private_port: PortRange,
}

impl PortForwardFields {
    /// The forward's identity.
    pub fn key(&self) -> ForwardKey {
        ForwardKey {
            public_ip: self.public_ip,
            protocol: self.protocol,
            public_port: self.public_port,
        }
    }

    pub fn parse(f: &Fields<'_>) -> Result<PortForwardFields, ProtocolError> {
        let protocol = forward_protocol(f)?;
        let public_port = f.req("public_port", validate::port_range)?;
        let private_port = f
            .opt("private_port", validate::port_range)?
            .unwrap_or(public_port);
        // A range maps onto a range of the same length, or onto one port.
        if !private_port.is_single() && private_port.len() != public_port.len() {
            return Err(invalid(
                &f.name("private_port"),
                format!("range {private_port} does not match public_port {public_port}"),
            ));
        }
        Ok(PortForwardFields {
            public_ip: f.req("public_ip", validate::ipv4)?,
            protocol,
            public_port,
            private_ip: f.req("private_ip", validate::ipv4)?,
            private_port,
        })
    }
}

/// The executor commands with their validated payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkCommand {
    Implement { extension_ip: Option<Ipv4Addr> },
    Shutdown,
    Destroy,
    AssignIp(PublicIpFields),
    ReleaseIp(PublicIpFields),
    AddStaticNat(StaticNatFields),
    DeleteStaticNat(StaticNatFields),
    AddPortForward(PortForwardFields),
    DeletePortForward(PortForwardFields),
    ApplyFwRules(FwRules),
}

/// A fully validated request for one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRequest {
    pub network: NetworkFields,
    pub devices: Devices,
    pub command: NetworkCommand,
}

impl NetworkRequest {
    /// Validates the envelope of `command`; `None` if the command is not a
    /// network data-plane command handled here.
    pub fn parse(
        command: super::Command,
        env: &Envelope,
    ) -> Result<Option<NetworkRequest>, ProtocolError> {
        use super::Command as C;
        if !matches!(
            command,
            C::ImplementNetwork
                | C::ShutdownNetwork
                | C::DestroyNetwork
                | C::AssignIp
                | C::ReleaseIp
                | C::AddStaticNat
                | C::DeleteStaticNat
                | C::AddPortForward
                | C::DeletePortForward
                | C::ApplyFwRules
        ) {
            return Ok(None);
        }
        let f = env.fields();
        let network = NetworkFields::parse(&f)?;
        let devices = Devices::parse(env)?;
        let command = match command {
            C::ImplementNetwork => NetworkCommand::Implement {
                extension_ip: f.opt("extension_ip", validate::ipv4)?,
            },
            C::ShutdownNetwork => NetworkCommand::Shutdown,
            C::DestroyNetwork => NetworkCommand::Destroy,
            C::AssignIp => NetworkCommand::AssignIp(PublicIpFields::parse(&f)?),
            C::ReleaseIp => NetworkCommand::ReleaseIp(PublicIpFields::parse(&f)?),
            C::AddStaticNat => NetworkCommand::AddStaticNat(StaticNatFields::parse(&f)?),
            C::DeleteStaticNat => NetworkCommand::DeleteStaticNat(StaticNatFields::parse(&f)?),
            C::AddPortForward => NetworkCommand::AddPortForward(PortForwardFields::parse(&f)?),
            C::DeletePortForward => {
                NetworkCommand::DeletePortForward(PortForwardFields::parse(&f)?)
            }
            C::ApplyFwRules => {
                let (doc, _) = decode_document("fw_rules", env.payload.get("fw_rules"))?
                    .ok_or_else(|| ProtocolError::MissingField("fw_rules".into()))?;
                NetworkCommand::ApplyFwRules(FwRules::parse("fw_rules", &doc)?)
            }
            _ => return Ok(None),
        };
        Ok(Some(NetworkRequest {
            network,
            devices,
            command,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;
    use serde_json::json;

    fn env(payload: serde_json::Value) -> Envelope {
        Envelope::parse(
            json!({"physical-network-extension-details": {"guest.network.device": "eth1"},
                   "network-extension-details": {}, "payload": payload})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn implement_network_fields() {
        let e = env(
            json!({"network_id": "42", "vlan": "vlan://100", "gateway": "10.1.1.1",
            "cidr": "10.1.1.0/24", "extension_ip": "10.1.1.1", "guest_type": "isolated",
            "network_state": "implementing"}),
        );
        let r = NetworkRequest::parse(Command::ImplementNetwork, &e)
            .unwrap()
            .unwrap();
        assert_eq!(r.network.network_id, 42);
        assert_eq!(r.network.vlan, Vlan(Some(100)));
        assert_eq!(r.devices.guest.as_deref(), Some("eth1"));
        assert_eq!(
            r.command,
            NetworkCommand::Implement {
                extension_ip: Some(Ipv4Addr::new(10, 1, 1, 1))
            }
        );
    }

    #[test]
    fn port_forward_ranges() {
        let e = env(
            json!({"network_id": "42", "public_ip": "203.0.113.10", "public_port": "8080-8090",
            "private_ip": "10.1.1.5", "private_port": "80-90", "protocol": "tcp"}),
        );
        let NetworkCommand::AddPortForward(pf) = NetworkRequest::parse(Command::AddPortForward, &e)
            .unwrap()
            .unwrap()
            .command
        else {
            panic!("wrong command")
        };
        assert_eq!(
            pf.public_port,
            PortRange {
                start: 8080,
                end: 8090
            }
        );
        let e = env(
            json!({"network_id": "42", "public_ip": "203.0.113.10", "public_port": "8080-8090",
            "private_ip": "10.1.1.5", "private_port": "80-85", "protocol": "tcp"}),
        );
        assert_eq!(
            NetworkRequest::parse(Command::AddPortForward, &e)
                .unwrap_err()
                .to_string(),
            "invalid value for 'private_port': range 80-85 does not match public_port 8080-8090"
        );
        let e = env(
            json!({"network_id": "42", "public_ip": "203.0.113.10", "public_port": "22",
            "private_ip": "10.1.1.5", "protocol": "icmp"}),
        );
        assert!(NetworkRequest::parse(Command::AddPortForward, &e).is_err());
    }

    #[test]
    fn injection_in_every_string_field_is_refused() {
        let base = json!({"network_id": "42", "vlan": "100", "gateway": "10.1.1.1", "cidr": "10.1.1.0/24",
            "public_ip": "203.0.113.10", "public_vlan": "200", "public_gateway": "203.0.113.1",
            "public_cidr": "203.0.113.10/24", "source_nat": "true", "private_ip": "10.1.1.5",
            "public_port": "22", "private_port": "22", "protocol": "tcp", "extension_ip": "10.1.1.1"});
        for cmd in [
            Command::AssignIp,
            Command::AddPortForward,
            Command::ImplementNetwork,
        ] {
            assert!(
                NetworkRequest::parse(cmd, &env(base.clone())).is_ok(),
                "{cmd}"
            );
        }
        let long = "9".repeat(4096);
        for key in base.as_object().unwrap().keys() {
            for evil in ["1;reboot", "$(id)", "1\n2", "`id`", long.as_str()] {
                let mut p = base.clone();
                p[key] = json!(evil);
                let mut refused = 0;
                for cmd in [
                    Command::AssignIp,
                    Command::AddPortForward,
                    Command::ImplementNetwork,
                ] {
                    if let Err(e) = NetworkRequest::parse(cmd, &env(p.clone())) {
                        assert!(e.to_string().contains(&format!("'{key}'")), "{key}: {e}");
                        refused += 1;
                    }
                }
                assert!(refused > 0, "{key}={evil:.20} accepted everywhere");
            }
        }
        let mut e = env(base);
        e.physical
            .insert("guest.network.device".into(), "eth1;rm".into());
        assert!(NetworkRequest::parse(Command::ImplementNetwork, &e).is_err());
    }

    #[test]
    fn other_commands_are_not_network_requests() {
        let e = env(json!({"network_id": "42"}));
        assert_eq!(NetworkRequest::parse(Command::PrepareNic, &e), Ok(None));
        let e = env(json!({"network_id": "x"}));
        assert!(NetworkRequest::parse(Command::ShutdownNetwork, &e).is_err());
    }
}
