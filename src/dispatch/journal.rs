//! The desired state the bridge has sent for each network or VPC: the
//! commands that define it, compacted, so that a move to another host can
//! replay them in order.
//!
//! Compaction ([`JournalState::apply`], pure):
//! - `destroy-network` / `shutdown-network` clear the network (for a VPC tier,
//!   only that tier's entries); `shutdown-vpc` clears the VPC.
//! - Commands that set a whole thing (`implement-network`, `apply-fw-rules`,
//!   `apply-network-acl`, `config-*-subnet`, …) keep only the latest, at the
//!   place of the first one (later commands may depend on them).
//! - add/delete pairs cancel (`assign-ip`/`release-ip`, static NAT, port
//!   forwarding, NIC, DHCP and DNS entries, subnets). Removals are never
//!   recorded: a replay targets a host that has nothing of this network.
//! - `save-vm-data` supersedes the single-item saves of that VM;
//!   `restore-network` supersedes the NIC, DHCP, DNS and metadata entries.
//! - `apply-lb-rules` carries only the changed rules, so every one is kept.
//! - `ensure-network-device` and `custom-action` are not state.
//!
//! Stored envelopes never hold `physical-network-extension-details` (they
//! carry the executor key and other hidden details); the current details are
//! put back at replay time.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::protocol::Command;

/// Envelope key of the registration details (never journaled).
pub const PHYSICAL_DETAILS: &str = "physical-network-extension-details";
/// Envelope key of the device details from `ensure-network-device`.
pub const NETWORK_DETAILS: &str = "network-extension-details";

/// A journal storage failure.
#[derive(Debug, thiserror::Error)]
#[error("state journal: {0}")]
pub struct JournalError(pub String);

/// One recorded command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Wire name of the command.
    pub command: String,
    /// Identity used for compaction (`fw:42`, `ip:42:203.0.113.10`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// The tier or network the entry belongs to (`None` for VPC-wide ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_id: Option<String>,
    /// The envelope sent, without `physical-network-extension-details`.
    pub envelope: Value,
}

/// Everything recorded for one network or VPC (key: its namespace name).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JournalState {
    /// The host (as listed in `hosts`) that holds this state.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub entries: Vec<JournalEntry>,
    /// Former hosts that could not be told to drop this network yet (they
    /// were unreachable when it moved away).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_drops: Vec<PendingDrop>,
}

/// A former host that still has to drop a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingDrop {
    pub host: String,
    /// VPC tiers to destroy there (empty for a standalone network).
    #[serde(default)]
    pub network_ids: Vec<String>,
    /// Unix seconds of the last attempt (attempts are rate-limited).
    #[serde(default)]
    pub last_attempt: u64,
}

enum Effect {
    Ignore,
    ClearAll,
    ClearNetwork(String),
    /// Keep only the latest of `slot`; `append` moves it to the end. Entries
    /// whose slot starts with one of `supersedes` are dropped.
    Upsert {
        slot: String,
        append: bool,
        supersedes: Vec<String>,
    },
    Remove {
        exact: Vec<String>,
        prefixes: Vec<String>,
    },
    Append,
}

fn field(payload: &Value, name: &str) -> Option<String> {
    match payload.get(name)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn effect(command: Command, payload: &Value) -> Effect {
    use Command::*;
    let net = field(payload, "network_id").unwrap_or_default();
    let f = |name: &str| field(payload, name);
    let nic = || {
        f("ip")
            .or_else(|| f("mac"))
            .or_else(|| f("nic_id"))
            .or_else(|| f("nic_uuid"))
    };
    let up = |slot: Option<String>| match slot {
        Some(slot) => Effect::Upsert {
            slot,
            append: false,
            supersedes: Vec::new(),
        },
        None => Effect::Append,
    };
    let rm = |slots: Vec<Option<String>>| Effect::Remove {
        exact: slots.into_iter().flatten().collect(),
        prefixes: Vec::new(),
    };
    match command {
        EnsureNetworkDevice | CustomAction => Effect::Ignore,
        DestroyNetwork | ShutdownNetwork => {
            if f("vpc_id").is_some() && !net.is_empty() {
                Effect::ClearNetwork(net)
            } else {
                Effect::ClearAll
            }
        }
        ShutdownVpc => Effect::ClearAll,
        ImplementNetwork => up(Some(format!("implement:{net}"))),
        ImplementVpc => up(Some("vpc".into())),
        UpdateVpcSourceNatIp => up(Some("vpc-snat".into())),
        AssignIp => up(f("public_ip").map(|ip| format!("ip:{net}:{ip}"))),
        ReleaseIp => match f("public_ip") {
            Some(ip) => Effect::Remove {
                exact: vec![format!("ip:{net}:{ip}"), format!("staticnat:{net}:{ip}")],
                prefixes: vec![format!("pf:{net}:{ip}:")],
            },
            None => Effect::Append,
        },
        AddStaticNat => up(f("public_ip").map(|ip| format!("staticnat:{net}:{ip}"))),
        DeleteStaticNat => rm(vec![
            f("public_ip").map(|ip| format!("staticnat:{net}:{ip}"))
        ]),
        AddPortForward | DeletePortForward => {
            let slot = match (f("public_ip"), f("public_port")) {
                (Some(ip), Some(port)) => Some(format!(
                    "pf:{net}:{ip}:{}:{port}",
                    f("protocol").unwrap_or_default().to_ascii_lowercase()
                )),
                _ => None,
            };
            if command == AddPortForward {
                up(slot)
            } else {
                rm(vec![slot])
            }
        }
        ApplyFwRules => up(Some(format!("fw:{net}"))),
        ApplyNetworkAcl => up(Some(format!("acl:{net}"))),
        PrepareNic => up(nic().map(|n| format!("nic:{net}:{n}"))),
        ReleaseNic => match nic() {
            Some(n) => Effect::Remove {
                exact: vec![
                    format!("nic:{net}:{n}"),
                    format!("dhcp:{net}:{n}"),
                    format!("dns:{net}:{n}"),
                    format!("vmdata:{net}:{n}"),
                    format!("pw:{net}:{n}"),
                    format!("dhcpopt:{net}:{}", f("nic_id").unwrap_or_else(|| n.clone())),
                ],
                prefixes: vec![format!("vmitem:{net}:{n}:")],
            },
            None => Effect::Append,
        },
        AddDhcpEntry => up(nic().map(|n| format!("dhcp:{net}:{n}"))),
        RemoveDhcpEntry => rm(vec![nic().map(|n| format!("dhcp:{net}:{n}"))]),
        ConfigDhcpSubnet => up(Some(format!("dhcpsub:{net}"))),
        RemoveDhcpSubnet => rm(vec![Some(format!("dhcpsub:{net}"))]),
        SetDhcpOptions => up(f("nic_id")
            .or_else(nic)
            .map(|n| format!("dhcpopt:{net}:{n}"))),
        AddDnsEntry => up(f("ip")
            .or_else(|| f("hostname"))
            .map(|n| format!("dns:{net}:{n}"))),
        RemoveDnsEntry => rm(vec![f("ip")
            .or_else(|| f("hostname"))
            .map(|n| format!("dns:{net}:{n}"))]),
        ConfigDnsSubnet => up(Some(format!("dnssub:{net}"))),
        RemoveDnsSubnet => rm(vec![Some(format!("dnssub:{net}"))]),
        SaveVmData => match f("ip") {
            Some(ip) => Effect::Upsert {
                slot: format!("vmdata:{net}:{ip}"),
                append: true,
                supersedes: vec![format!("vmitem:{net}:{ip}:"), format!("pw:{net}:{ip}")],
            },
            None => Effect::Append,
        },
        SavePassword => up(f("ip").map(|ip| format!("pw:{net}:{ip}"))),
        SaveUserdata | SaveSshkey | SaveHypervisorHostname => {
            up(f("ip").map(|ip| format!("vmitem:{net}:{ip}:{command}")))
        }
        ApplyLbRules => Effect::Append,
        RestoreNetwork => Effect::Upsert {
            slot: format!("restore:{net}"),
            append: true,
            supersedes: ["nic", "dhcp", "dns", "vmdata", "vmitem"]
                .iter()
                .map(|k| format!("{k}:{net}:"))
                .collect(),
        },
    }
}

impl JournalState {
    /// Records a command that succeeded, compacting as described above.
    /// `envelope` is the command's envelope (standard form).
    pub fn apply(&mut self, command: Command, envelope: &Value) {
        let payload = envelope.get("payload").cloned().unwrap_or(Value::Null);
        let network_id = field(&payload, "network_id");
        let mut stored = envelope.clone();
        if let Some(obj) = stored.as_object_mut() {
            obj.remove(PHYSICAL_DETAILS);
        }
        let entry = |slot: Option<String>| JournalEntry {
            command: command.to_string(),
            slot,
            network_id: network_id.clone(),
            envelope: stored.clone(),
        };
        match effect(command, &payload) {
            Effect::Ignore => {}
            Effect::ClearAll => self.entries.clear(),
            Effect::ClearNetwork(net) => self
                .entries
                .retain(|e| e.network_id.as_deref() != Some(net.as_str())),
            Effect::Append => self.entries.push(entry(None)),
            Effect::Remove { exact, prefixes } => self.entries.retain(|e| match &e.slot {
                Some(s) => !exact.contains(s) && !prefixes.iter().any(|p| s.starts_with(p)),
                None => true,
            }),
            Effect::Upsert {
                slot,
                append,
                supersedes,
            } => {
                self.entries.retain(|e| match &e.slot {
                    Some(s) => !supersedes.iter().any(|p| s.starts_with(p)),
                    None => true,
                });
                let existing = self
                    .entries
                    .iter()
                    .position(|e| e.slot.as_deref() == Some(slot.as_str()));
                match existing {
                    Some(i) if !append => self.entries[i] = entry(Some(slot)),
                    Some(i) => {
                        self.entries.remove(i);
                        self.entries.push(entry(Some(slot)));
                    }
                    None => self.entries.push(entry(Some(slot))),
                }
            }
        }
    }

    /// Tier network ids seen in the entries (for dropping a VPC elsewhere).
    pub fn network_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for e in &self.entries {
            if let Some(id) = &e.network_id {
                if !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
        }
        ids
    }
}

/// Storage of journals, keyed by namespace name (`cs-net-42`, `cs-vpc-7`).
/// Implementations must make `update` atomic per key.
pub trait CommandJournal: Send + Sync {
    /// The journal of `key` (empty when none).
    fn load(&self, key: &str) -> Result<JournalState, JournalError>;
    /// Read-modify-write of the journal of `key`.
    fn update(
        &self,
        key: &str,
        change: &mut dyn FnMut(&mut JournalState),
    ) -> Result<JournalState, JournalError>;

    /// Records a command that succeeded on `host`.
    fn record(
        &self,
        key: &str,
        host: &str,
        command: Command,
        envelope: &Value,
    ) -> Result<(), JournalError> {
        self.update(key, &mut |s| {
            s.host = Some(host.to_string());
            s.apply(command, envelope);
            // Nothing left to replay after a teardown: forget the host too,
            // so the record (row/file) goes away with the network.
            let in_vpc = envelope
                .get("payload")
                .and_then(|p| field(p, "vpc_id"))
                .is_some();
            let teardown = match command {
                Command::ShutdownVpc => true,
                Command::DestroyNetwork | Command::ShutdownNetwork => !in_vpc,
                _ => false,
            };
            if teardown && s.entries.is_empty() {
                s.host = None;
            }
        })
        .map(|_| ())
    }

    /// Notes that the state of `key` now lives on `host`.
    fn set_host(&self, key: &str, host: &str) -> Result<(), JournalError> {
        self.update(key, &mut |s| s.host = Some(host.to_string()))
            .map(|_| ())
    }
}

/// A journal that lives as long as the process (in-process dispatcher, tests).
#[derive(Debug, Default)]
pub struct MemoryJournal {
    states: Mutex<HashMap<String, JournalState>>,
}

impl MemoryJournal {
    pub fn new() -> MemoryJournal {
        MemoryJournal::default()
    }
}

impl CommandJournal for MemoryJournal {
    fn load(&self, key: &str) -> Result<JournalState, JournalError> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        Ok(states.get(key).cloned().unwrap_or_default())
    }

    fn update(
        &self,
        key: &str,
        change: &mut dyn FnMut(&mut JournalState),
    ) -> Result<JournalState, JournalError> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let state = states.entry(key.to_string()).or_default();
        change(state);
        Ok(state.clone())
    }
}

/// A journal stored as one JSON file per network in a directory (for the
/// entry point, which runs as a process per command). Files are mode 0600,
/// replaced atomically (write then rename, not fsynced), and updated under an exclusive `flock` per key so
/// concurrent processes do not lose records. VM passwords are not stored
/// (secrets only live in the encrypted registry), so a replay does not
/// restore a password that the VM has not fetched yet.
#[derive(Debug)]
pub struct FileJournal {
    dir: PathBuf,
}

impl FileJournal {
    /// Opens (creating with mode 0700) the state directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileJournal, JournalError> {
        let dir = dir.into();
        if !dir.is_absolute() {
            return Err(JournalError(format!(
                "state directory '{}' must be an absolute path",
                dir.display()
            )));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| JournalError(format!("cannot create '{}': {e}", dir.display())))?;
        Ok(FileJournal { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_key(key: &str) -> Result<(), JournalError> {
        if key.is_empty()
            || key.len() > 100
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(JournalError("invalid journal key".to_string()));
        }
        Ok(())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    fn read(&self, key: &str) -> Result<JournalState, JournalError> {
        let path = self.path(key);
        let mut text = String::new();
        match File::open(&path) {
            Ok(mut f) => f
                .read_to_string(&mut text)
                .map_err(|e| JournalError(format!("cannot read '{}': {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(JournalState::default())
            }
            Err(e) => {
                return Err(JournalError(format!(
                    "cannot read '{}': {e}",
                    path.display()
                )))
            }
        };
        serde_json::from_str(&text)
            .map_err(|e| JournalError(format!("corrupt journal '{}': {e}", path.display())))
    }

    fn write(&self, key: &str, state: &JournalState) -> Result<(), JournalError> {
        let path = self.path(key);
        let tmp = self
            .dir
            .join(format!(".{key}.json.{}.tmp", std::process::id()));
        let io =
            |e: std::io::Error| JournalError(format!("cannot write '{}': {e}", path.display()));
        let text = serde_json::to_vec(state).map_err(|e| JournalError(e.to_string()))?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&text).map_err(io)?;
        // No fsync: it would cost milliseconds per command in the entry
        // point. Write-then-rename never exposes a torn file; a power loss
        // may lose the latest records (ext4 flushes replaced files on rename).
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io(e)
        })
    }

    fn lock(&self, key: &str) -> Result<File, JournalError> {
        let path = self.dir.join(format!(".{key}.lock"));
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| JournalError(format!("cannot open '{}': {e}", path.display())))?;
        // SAFETY: flock on a file descriptor we own; released when `f` closes.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(JournalError(format!(
                "cannot lock '{}': {}",
                path.display(),
                std::io::Error::last_os_error()
            )));
        }
        Ok(f)
    }
}

/// Drops VM passwords from an entry before it reaches a plain file.
fn redact_secrets(state: &mut JournalState) {
    state
        .entries
        .retain(|e| e.command != Command::SavePassword.as_str());
    for e in &mut state.entries {
        let Some(payload) = e.envelope.get_mut("payload") else {
            continue;
        };
        if let Some(vm_data) = payload.get_mut("vm_data") {
            redact_vm_data(vm_data);
        }
        if let Some(vms) = payload
            .get_mut("restore_data")
            .and_then(|r| r.get_mut("vms"))
            .and_then(Value::as_array_mut)
        {
            for vm in vms {
                if let Some(vm_data) = vm.get_mut("vm_data") {
                    redact_vm_data(vm_data);
                }
            }
        }
    }
}

fn redact_vm_data(vm_data: &mut Value) {
    // Older builds send the document as Base64 of the JSON: decode to filter.
    if let Value::String(s) = vm_data {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        match decoded {
            Some(v) => *vm_data = v,
            None => return,
        }
    }
    if let Some(items) = vm_data.as_array_mut() {
        items.retain(|item| item.get("dir").and_then(Value::as_str) != Some("password"));
    }
}

impl CommandJournal for FileJournal {
    fn load(&self, key: &str) -> Result<JournalState, JournalError> {
        Self::check_key(key)?;
        let _lock = self.lock(key)?;
        self.read(key)
    }

    fn update(
        &self,
        key: &str,
        change: &mut dyn FnMut(&mut JournalState),
    ) -> Result<JournalState, JournalError> {
        Self::check_key(key)?;
        let _lock = self.lock(key)?;
        let mut state = self.read(key)?;
        change(&mut state);
        redact_secrets(&mut state);
        if state.entries.is_empty() && state.host.is_none() && state.pending_drops.is_empty() {
            match fs::remove_file(self.path(key)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(JournalError(format!("cannot remove journal: {e}"))),
            }
        } else {
            self.write(key, &state)?;
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(payload: Value) -> Value {
        json!({
            PHYSICAL_DETAILS: {"hosts": "h1", "executor.key": "SECRET"},
            NETWORK_DETAILS: {"host": "h1", "namespace": "cs-net-42"},
            "payload": payload,
        })
    }

    fn commands(s: &JournalState) -> Vec<String> {
        s.entries
            .iter()
            .map(|e| {
                let p = &e.envelope["payload"];
                let tag = p
                    .get("public_ip")
                    .or(p.get("ip"))
                    .or(p.get("tag"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                format!(
                    "{}{}{}",
                    e.command,
                    if tag.is_empty() { "" } else { "@" },
                    tag
                )
            })
            .collect()
    }

    fn apply(s: &mut JournalState, cmd: Command, payload: Value) {
        s.apply(cmd, &env(payload));
    }

    #[test]
    fn compaction_rules() {
        let mut s = JournalState::default();
        apply(
            &mut s,
            Command::EnsureNetworkDevice,
            json!({"network_id": "42"}),
        );
        apply(
            &mut s,
            Command::ImplementNetwork,
            json!({"network_id": "42", "tag": "a"}),
        );
        apply(
            &mut s,
            Command::AssignIp,
            json!({"network_id": "42", "public_ip": "203.0.113.10"}),
        );
        apply(
            &mut s,
            Command::ApplyFwRules,
            json!({"network_id": "42", "tag": "fw1"}),
        );
        apply(
            &mut s,
            Command::AddStaticNat,
            json!({"network_id": "42", "public_ip": "203.0.113.11"}),
        );
        apply(
            &mut s,
            Command::AddPortForward,
            json!({"network_id": "42", "public_ip": "203.0.113.10", "public_port": "22", "protocol": "tcp"}),
        );
        apply(
            &mut s,
            Command::ApplyFwRules,
            json!({"network_id": "42", "tag": "fw2"}),
        );
        apply(
            &mut s,
            Command::DeleteStaticNat,
            json!({"network_id": "42", "public_ip": "203.0.113.11"}),
        );
        apply(
            &mut s,
            Command::ApplyLbRules,
            json!({"network_id": "42", "tag": "lb1"}),
        );
        apply(
            &mut s,
            Command::ApplyLbRules,
            json!({"network_id": "42", "tag": "lb2"}),
        );
        apply(&mut s, Command::CustomAction, json!({"network_id": "42"}));
        // restart: implement again stays first
        apply(
            &mut s,
            Command::ImplementNetwork,
            json!({"network_id": "42", "tag": "b"}),
        );
        assert_eq!(
            commands(&s),
            vec![
                "implement-network@b",
                "assign-ip@203.0.113.10",
                "apply-fw-rules@fw2",
                "add-port-forward@203.0.113.10",
                "apply-lb-rules@lb1",
                "apply-lb-rules@lb2",
            ]
        );
        // the registration details (and the executor key) are never stored
        assert!(s
            .entries
            .iter()
            .all(|e| e.envelope.get(PHYSICAL_DETAILS).is_none()));
        // release-ip drops the IP and its port forwards
        apply(
            &mut s,
            Command::ReleaseIp,
            json!({"network_id": "42", "public_ip": "203.0.113.10"}),
        );
        assert_eq!(
            commands(&s),
            vec![
                "implement-network@b",
                "apply-fw-rules@fw2",
                "apply-lb-rules@lb1",
                "apply-lb-rules@lb2"
            ]
        );
        apply(&mut s, Command::DestroyNetwork, json!({"network_id": "42"}));
        assert!(s.entries.is_empty());
    }

    #[test]
    fn vm_data_and_nics() {
        let mut s = JournalState::default();
        apply(
            &mut s,
            Command::PrepareNic,
            json!({"network_id": "42", "ip": "10.1.1.5", "mac": "02:00:00:00:00:05"}),
        );
        apply(
            &mut s,
            Command::SaveUserdata,
            json!({"network_id": "42", "ip": "10.1.1.5"}),
        );
        apply(
            &mut s,
            Command::AddDnsEntry,
            json!({"network_id": "42", "ip": "10.1.1.5"}),
        );
        apply(
            &mut s,
            Command::SaveVmData,
            json!({"network_id": "42", "ip": "10.1.1.5"}),
        );
        assert_eq!(
            commands(&s),
            vec![
                "prepare-nic@10.1.1.5",
                "add-dns-entry@10.1.1.5",
                "save-vm-data@10.1.1.5"
            ]
        );
        apply(
            &mut s,
            Command::ReleaseNic,
            json!({"network_id": "42", "ip": "10.1.1.5"}),
        );
        assert!(s.entries.is_empty(), "{:?}", commands(&s));
    }

    #[test]
    fn vpc_tier_destroy_keeps_other_tiers() {
        let mut s = JournalState::default();
        apply(&mut s, Command::ImplementVpc, json!({"vpc_id": "7"}));
        apply(
            &mut s,
            Command::ImplementNetwork,
            json!({"vpc_id": "7", "network_id": "42"}),
        );
        apply(
            &mut s,
            Command::ApplyNetworkAcl,
            json!({"vpc_id": "7", "network_id": "42", "tag": "a1"}),
        );
        apply(
            &mut s,
            Command::ImplementNetwork,
            json!({"vpc_id": "7", "network_id": "43"}),
        );
        apply(
            &mut s,
            Command::ApplyNetworkAcl,
            json!({"vpc_id": "7", "network_id": "42", "tag": "a2"}),
        );
        assert_eq!(s.network_ids(), vec!["42", "43"]);
        apply(
            &mut s,
            Command::DestroyNetwork,
            json!({"vpc_id": "7", "network_id": "42"}),
        );
        assert_eq!(commands(&s), vec!["implement-vpc", "implement-network"]);
        apply(&mut s, Command::ShutdownVpc, json!({"vpc_id": "7"}));
        assert!(s.entries.is_empty());
    }

    #[test]
    fn file_journal_is_private_atomic_and_keeps_no_passwords() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let j = FileJournal::open(dir.path().join("state")).unwrap();
        j.record(
            "cs-net-42",
            "h1",
            Command::ImplementNetwork,
            &env(json!({"network_id": "42"})),
        )
        .unwrap();
        j.record(
            "cs-net-42",
            "h1",
            Command::SavePassword,
            &env(json!({"network_id": "42", "ip": "10.1.1.5", "password": "VMPASS"})),
        )
        .unwrap();
        j.record(
            "cs-net-42",
            "h1",
            Command::SaveVmData,
            &env(json!({"network_id": "42", "ip": "10.1.1.6", "vm_data": [
                {"dir": "userdata", "file": "user-data", "content": "hi"},
                {"dir": "password", "file": "vm_password", "content": "VMPASS2"}]})),
        )
        .unwrap();
        let path = dir.path().join("state/cs-net-42.json");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("SECRET") && !text.contains("VMPASS"),
            "{text}"
        );
        let s = j.load("cs-net-42").unwrap();
        assert_eq!(s.host.as_deref(), Some("h1"));
        assert_eq!(
            commands(&s),
            vec!["implement-network", "save-vm-data@10.1.1.6"]
        );
        assert!(j.load("../etc").is_err());
        j.update("cs-net-42", &mut |s| *s = JournalState::default())
            .unwrap();
        assert!(!path.exists());
    }
}
