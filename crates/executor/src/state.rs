//! Desired state of a network: everything needed to rebuild it from scratch
//! (after a reboot or on another host), the pure transitions of each command,
//! and persistence with atomic file replace.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use netbridge_protocol::payload::{
    GuestType, NetworkCommand, NetworkRequest, PortForwardFields, PublicIpFields,
};
use netbridge_protocol::rules::{Direction, FwRules};
use netbridge_protocol::target::{Namespace, NetworkId};
use netbridge_protocol::validate::{Ipv4Cidr, Ipv6Cidr, Vlan};
use netbridge_protocol::ProtocolError;

/// Version of the persisted format.
pub const STATE_VERSION: u32 = 1;

/// A public address held by the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIp {
    pub ip: Ipv4Addr,
    pub vlan: Vlan,
    pub gateway: Option<Ipv4Addr>,
    pub prefix: u8,
    pub source_nat: bool,
    /// Host device of the public bridge (`public.network.device`).
    pub device: String,
}

/// 1:1 NAT between a public and a private address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StaticNat {
    pub public_ip: Ipv4Addr,
    pub private_ip: Ipv4Addr,
}

/// The desired state of one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkState {
    pub version: u32,
    pub network_id: u64,
    /// `cs-net-<network_id>`; also the state file's name.
    pub namespace: String,
    /// False after `shutdown-network` (or before the first implement): the
    /// state is kept and updated, but nothing is installed on the host.
    pub implemented: bool,
    pub guest_type: Option<GuestType>,
    pub vlan: Vlan,
    pub guest_device: String,
    pub gateway: Option<Ipv4Addr>,
    pub cidr: Option<Ipv4Cidr>,
    pub extension_ip: Option<Ipv4Addr>,
    pub ip6_gateway: Option<Ipv6Addr>,
    pub ip6_cidr: Option<Ipv6Cidr>,
    /// Sorted by address.
    pub public_ips: Vec<PublicIp>,
    /// In insertion order, at most one per public address.
    pub static_nats: Vec<StaticNat>,
    /// In insertion order; identity is the protocol's `ForwardKey`
    /// (public_ip, protocol, public_port).
    pub port_forwards: Vec<PortForwardFields>,
    /// The last `apply-fw-rules` document (`None`: never applied).
    pub firewall: Option<FwRules>,
    /// Guest services: DHCP/DNS, LB rules (VM data is stored apart).
    #[serde(default)]
    pub guest: crate::services::GuestServices,
}

/// What a command did to the desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Install the new state on the host (if implemented).
    Apply,
    /// Tear everything down and keep the state (shutdown).
    TearDown,
    /// Tear everything down and forget the network (destroy).
    Forget,
}

impl NetworkState {
    pub fn namespace_for(network_id: u64) -> String {
        Namespace::Network(NetworkId::new(network_id)).to_string()
    }

    /// An empty, not yet implemented network.
    pub fn new(req: &NetworkRequest, guest_device: &str) -> NetworkState {
        let n = &req.network;
        NetworkState {
            version: STATE_VERSION,
            network_id: n.network_id,
            namespace: Self::namespace_for(n.network_id),
            implemented: false,
            guest_type: n.guest_type,
            vlan: n.vlan,
            guest_device: req
                .devices
                .guest
                .clone()
                .unwrap_or_else(|| guest_device.to_string()),
            gateway: n.gateway,
            cidr: n.cidr,
            extension_ip: None,
            ip6_gateway: n.ip6_gateway,
            ip6_cidr: n.ip6_cidr,
            public_ips: Vec::new(),
            static_nats: Vec::new(),
            port_forwards: Vec::new(),
            firewall: None,
            guest: Default::default(),
        }
    }

    /// The source-NAT address, if any.
    pub fn source_nat_ip(&self) -> Option<&PublicIp> {
        self.public_ips.iter().find(|p| p.source_nat)
    }

    /// Applies one command to the desired state (pure). Repeating a command
    /// yields the same state.
    pub fn transition(
        &mut self,
        req: &NetworkRequest,
        default_public_device: &str,
    ) -> Result<Transition, ProtocolError> {
        let n = &req.network;
        match &req.command {
            NetworkCommand::Implement { extension_ip } => {
                let cidr = n
                    .cidr
                    .or(self.cidr)
                    .ok_or_else(|| ProtocolError::MissingField("cidr".into()))?;
                let ext = extension_ip
                    .or(n.gateway)
                    .or(self.extension_ip)
                    .ok_or_else(|| ProtocolError::MissingField("extension_ip".into()))?;
                if !cidr.contains(ext) {
                    return Err(ProtocolError::InvalidField {
                        field: "extension_ip".into(),
                        reason: format!("{ext} is outside cidr {}", cidr.network()),
                    });
                }
                self.cidr = Some(cidr.network());
                self.extension_ip = Some(ext);
                self.gateway = n.gateway.or(self.gateway);
                self.vlan = n.vlan;
                self.guest_type = n.guest_type.or(self.guest_type);
                self.ip6_gateway = n.ip6_gateway.or(self.ip6_gateway);
                self.ip6_cidr = n.ip6_cidr.or(self.ip6_cidr);
                if let Some(dev) = &req.devices.guest {
                    self.guest_device = dev.clone();
                }
                self.implemented = true;
                Ok(Transition::Apply)
            }
            NetworkCommand::Shutdown => {
                self.implemented = false;
                Ok(Transition::TearDown)
            }
            NetworkCommand::Destroy => {
                self.implemented = false;
                Ok(Transition::Forget)
            }
            NetworkCommand::AssignIp(p) => {
                self.assign_ip(
                    p,
                    req.devices
                        .public
                        .as_deref()
                        .unwrap_or(default_public_device),
                );
                Ok(Transition::Apply)
            }
            NetworkCommand::ReleaseIp(p) => {
                self.release_ip(p.public_ip);
                Ok(Transition::Apply)
            }
            NetworkCommand::AddStaticNat(s) => {
                let entry = StaticNat {
                    public_ip: s.public_ip,
                    private_ip: s.private_ip,
                };
                // Insertion order is kept so that an addition renders as an
                // append (a repeat changes nothing).
                if !self.static_nats.contains(&entry) {
                    self.static_nats.retain(|x| x.public_ip != s.public_ip);
                    self.static_nats.push(entry);
                }
                Ok(Transition::Apply)
            }
            NetworkCommand::DeleteStaticNat(s) => {
                self.static_nats.retain(|x| x.public_ip != s.public_ip);
                Ok(Transition::Apply)
            }
            NetworkCommand::AddPortForward(pf) => {
                if self.port_forwards.contains(pf) {
                    return Ok(Transition::Apply);
                }
                self.port_forwards.retain(|x| !same_forward(x, pf));
                if let Some(clash) = self.port_forwards.iter().find(|x| {
                    x.public_ip == pf.public_ip
                        && x.protocol == pf.protocol
                        && x.public_port.start <= pf.public_port.end
                        && pf.public_port.start <= x.public_port.end
                }) {
                    return Err(ProtocolError::InvalidField {
                        field: "public_port".into(),
                        reason: format!(
                            "{} overlaps the existing forward of {}:{}",
                            pf.public_port, clash.public_ip, clash.public_port
                        ),
                    });
                }
                self.port_forwards.push(pf.clone());
                Ok(Transition::Apply)
            }
            NetworkCommand::DeletePortForward(pf) => {
                self.port_forwards.retain(|x| !same_forward(x, pf));
                Ok(Transition::Apply)
            }
            NetworkCommand::ApplyFwRules(fw) => {
                self.firewall = Some(fw.clone());
                Ok(Transition::Apply)
            }
        }
    }

    fn assign_ip(&mut self, p: &PublicIpFields, device: &str) {
        let new = PublicIp {
            ip: p.public_ip,
            vlan: p.public_vlan,
            gateway: p.public_gateway,
            prefix: p.prefix,
            source_nat: p.source_nat,
            device: device.to_string(),
        };
        if p.source_nat {
            // One source-NAT address per network: the newest wins.
            for other in &mut self.public_ips {
                other.source_nat = false;
            }
        }
        self.public_ips.retain(|x| x.ip != p.public_ip);
        self.public_ips.push(new);
        self.public_ips.sort_by_key(|x| x.ip);
    }

    /// Forgets the address and everything that refers to it (exact match).
    fn release_ip(&mut self, ip: Ipv4Addr) {
        self.public_ips.retain(|x| x.ip != ip);
        self.static_nats.retain(|x| x.public_ip != ip);
        self.port_forwards.retain(|x| x.public_ip != ip);
        if let Some(fw) = &mut self.firewall {
            fw.rules
                .retain(|r| !(r.direction == Direction::Ingress && r.public_ip == Some(ip)));
        }
    }

    /// One-line summary for `GET /v1/networks`.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "network_id": self.network_id.to_string(),
            "namespace": self.namespace,
            "state": if self.implemented { "implemented" } else { "shutdown" },
            "vlan": self.vlan.tag(),
            "cidr": self.cidr.map(|c| c.to_string()),
            "extension_ip": self.extension_ip.map(|a| a.to_string()),
            "public_ips": self.public_ips.iter().map(|p| p.ip.to_string()).collect::<Vec<_>>(),
            "static_nats": self.static_nats.len(),
            "port_forwards": self.port_forwards.len(),
            "firewall_rules": self.firewall.as_ref().map_or(0, |f| f.rules.len()),
        })
    }
}

/// One forward per identity (the protocol's, which the bridge's journal
/// compacts by too).
fn same_forward(a: &PortForwardFields, b: &PortForwardFields) -> bool {
    a.key() == b.key()
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: corrupt state: {reason}")]
    Corrupt { path: String, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Persisted desired states: `<state_dir>/networks/<namespace>.json`, 0600.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn open(state_dir: &Path) -> Result<StateStore, StateError> {
        let dir = state_dir.join("networks");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;
        Ok(StateStore { dir })
    }

    pub fn path(&self, namespace: &str) -> PathBuf {
        self.dir.join(format!("{namespace}.json"))
    }

    /// Atomic replace: temp file, fsync, rename; the directory is fsynced
    /// when the file is new. Replacing an existing file skips that second
    /// fsync (it cost ~2/3 of a command's persistence time, 8 of 12 ms with
    /// the disk busy): the new content is on disk before the rename, so the
    /// file is always one complete state, and a `kill -9` loses nothing; only
    /// a power loss within the file system's next journal commit (≤ 5 s on
    /// ext4) can bring back the previous state of that network.
    pub fn save(&self, state: &NetworkState) -> Result<(), StateError> {
        self.write(state, true)
    }

    /// Atomic replace without the fsyncs (guest-service records, which
    /// change per VM and must stay cheap): a killed executor still finds the
    /// old or the new file, never a torn one; a power loss may lose changes
    /// of the last seconds (the kernel's writeback interval).
    pub fn save_unsynced(&self, state: &NetworkState) -> Result<(), StateError> {
        self.write(state, false)
    }

    fn write(&self, state: &NetworkState, durable: bool) -> Result<(), StateError> {
        let path = self.path(&state.namespace);
        let new_file = !path.exists();
        let tmp = self.dir.join(format!(".{}.json.tmp", state.namespace));
        let data = serde_json::to_vec(state).map_err(|e| StateError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            f.write_all(&data).map_err(io_err(&tmp))?;
            if durable {
                f.sync_all().map_err(io_err(&tmp))?;
            }
        }
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        if durable && new_file {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.dir))?;
        }
        Ok(())
    }

    pub fn remove(&self, namespace: &str) -> Result<(), StateError> {
        let path = self.path(namespace);
        // Its record log first: a new network of that name starts clean.
        super::record_log::remove(&super::record_log::log_path(&path))?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path)(e)),
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }

    /// Every persisted network; unreadable files are reported, not fatal.
    pub fn load_all(&self) -> Result<(Vec<NetworkState>, Vec<StateError>), StateError> {
        let mut states = Vec::new();
        let mut errors = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            match fs::read(&path).map_err(io_err(&path)).and_then(|bytes| {
                serde_json::from_slice::<NetworkState>(&bytes).map_err(|e| StateError::Corrupt {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
            }) {
                Ok(mut s) if format!("{}.json", s.namespace) == name => {
                    // Guest records saved since the file was written.
                    match super::record_log::replay(&path, &mut s.guest) {
                        Ok(_) => states.push(s),
                        Err(e) => errors.push(e),
                    }
                }
                Ok(_) => errors.push(StateError::Corrupt {
                    path: path.display().to_string(),
                    reason: "namespace does not match the file name".into(),
                }),
                Err(e) => errors.push(e),
            }
        }
        states.sort_by_key(|s| s.network_id);
        Ok((states, errors))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use netbridge_protocol::envelope::Envelope;
    use netbridge_protocol::Command;

    pub fn request(command: Command, payload: serde_json::Value) -> NetworkRequest {
        let env = Envelope::parse(
            serde_json::json!({"physical-network-extension-details": {}, "payload": payload})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        NetworkRequest::parse(command, &env).unwrap().unwrap()
    }

    pub fn implemented() -> NetworkState {
        let req = request(
            Command::ImplementNetwork,
            serde_json::json!({"network_id": "42", "vlan": "vlan://100", "cidr": "10.1.1.0/24",
                "gateway": "10.1.1.1", "extension_ip": "10.1.1.1", "guest_type": "isolated"}),
        );
        let mut s = NetworkState::new(&req, "eth1");
        s.transition(&req, "eth1").unwrap();
        s
    }

    #[test]
    fn implement_requires_cidr_and_extension_inside_it() {
        let req = request(
            Command::ImplementNetwork,
            serde_json::json!({"network_id": "42", "cidr": "10.1.1.0/24", "extension_ip": "10.2.0.1"}),
        );
        let mut s = NetworkState::new(&req, "eth1");
        assert_eq!(
            s.transition(&req, "eth1").unwrap_err().to_string(),
            "invalid value for 'extension_ip': 10.2.0.1 is outside cidr 10.1.1.0/24"
        );
        let req = request(
            Command::ImplementNetwork,
            serde_json::json!({"network_id": "42"}),
        );
        assert!(s.transition(&req, "eth1").is_err());
    }

    #[test]
    fn commands_are_idempotent_and_release_forgets_everything_of_the_ip() {
        let mut s = implemented();
        let cmds = [
            (
                Command::AssignIp,
                serde_json::json!({"network_id": "42", "public_ip": "203.0.113.10",
                "public_vlan": "200", "public_gateway": "203.0.113.1", "public_cidr": "203.0.113.10/24", "source_nat": "true"}),
            ),
            (
                Command::AssignIp,
                serde_json::json!({"network_id": "42", "public_ip": "203.0.113.1",
                "public_vlan": "200", "public_gateway": "203.0.113.1", "public_cidr": "203.0.113.1/24"}),
            ),
            (
                Command::AddStaticNat,
                serde_json::json!({"network_id": "42", "public_ip": "203.0.113.1", "private_ip": "10.1.1.10"}),
            ),
            (
                Command::AddPortForward,
                serde_json::json!({"network_id": "42", "public_ip": "203.0.113.10",
                "public_port": "80", "private_ip": "10.1.1.5", "private_port": "8080", "protocol": "tcp"}),
            ),
            (
                Command::ApplyFwRules,
                serde_json::json!({"network_id": "42", "fw_rules": {"rules": [
                {"type": "ingress", "protocol": "tcp", "portStart": "80", "publicIp": "203.0.113.10"},
                {"type": "ingress", "protocol": "tcp", "portStart": "22", "publicIp": "203.0.113.1"}]}}),
            ),
        ];
        for (c, p) in &cmds {
            let req = request(*c, p.clone());
            s.transition(&req, "eth1").unwrap();
            let once = s.clone();
            s.transition(&req, "eth1").unwrap();
            assert_eq!(s, once, "{c} is not idempotent");
        }
        let rel = request(
            Command::ReleaseIp,
            serde_json::json!({"network_id": "42", "public_ip": "203.0.113.1"}),
        );
        s.transition(&rel, "eth1").unwrap();
        assert_eq!(s.public_ips.len(), 1);
        assert!(s.static_nats.is_empty());
        assert_eq!(
            s.port_forwards.len(),
            1,
            "the forward of 203.0.113.10 stays"
        );
        assert_eq!(s.firewall.as_ref().unwrap().rules.len(), 1);
    }

    #[test]
    fn overlapping_forwards_are_refused() {
        let mut s = implemented();
        let a = request(
            Command::AddPortForward,
            serde_json::json!({"network_id": "42", "public_ip": "203.0.113.10",
            "public_port": "80-90", "private_ip": "10.1.1.5", "protocol": "tcp"}),
        );
        s.transition(&a, "eth1").unwrap();
        let b = request(
            Command::AddPortForward,
            serde_json::json!({"network_id": "42", "public_ip": "203.0.113.10",
            "public_port": "85", "private_ip": "10.1.1.6", "protocol": "tcp"}),
        );
        assert_eq!(
            s.transition(&b, "eth1").unwrap_err().to_string(),
            "invalid value for 'public_port': 85 overlaps the existing forward of 203.0.113.10:80-90"
        );
    }

    #[test]
    fn store_round_trip_atomic_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let s = implemented();
        store.save(&s).unwrap();
        store.save(&s).unwrap();
        let path = store.path("cs-net-42");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::write(dir.path().join("networks/cs-net-7.json"), b"{broken").unwrap();
        let (loaded, errors) = store.load_all().unwrap();
        assert_eq!(loaded, vec![s]);
        assert_eq!(errors.len(), 1);
        store.remove("cs-net-42").unwrap();
        store.remove("cs-net-42").unwrap();
        assert!(!path.exists());
    }
}
