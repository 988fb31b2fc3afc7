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
//!   `restore-network` supersedes the NIC, DHCP and DNS entries, and the
//!   metadata entries (and earlier restores) only when it carries every
//!   listed VM's data: an empty `vm_data` keeps what the VM had.
//! - `apply-lb-rules` carries only the changed rules, so every one is kept.
//! - `ensure-network-device` and `custom-action` are not state.
//!
//! Stored envelopes never hold `physical-network-extension-details` (they
//! carry the executor key and other hidden details); the current details are
//! put back at replay time.
//!
//! Storage is incremental: a command changes only the entries its effect
//! names ([`Change`]), and the host and pending drops ([`JournalHead`]) are
//! read and written apart from the entries, so the bridge's cost per command
//! does not grow with the network. Implementations: [`MemoryJournal`],
//! [`FileJournal`] (entry point) and `registry::RegistryJournal` (in
//! process).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use netbridge_protocol::envelope;
use netbridge_protocol::identity::{self, Family, Object, Touch};
use netbridge_protocol::target::Target;
use netbridge_protocol::Command;

/// Envelope keys: the registration details (never journaled) and the device
/// details from `ensure-network-device`.
pub use netbridge_protocol::envelope::{NETWORK_DETAILS, PHYSICAL_DETAILS};

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

pub(crate) enum Effect {
    Ignore,
    ClearAll,
    ClearNetwork(String),
    /// Keep only the latest of `slot`; `append` moves it to the end. Entries
    /// whose slot is one of `replaces` or starts with one of `supersedes`
    /// are dropped.
    Upsert {
        slot: String,
        append: bool,
        replaces: Vec<String>,
        supersedes: Vec<String>,
    },
    Remove {
        exact: Vec<String>,
        prefixes: Vec<String>,
    },
    Append,
}

/// The compaction effect of a command: what it touches (the protocol's
/// object identities, shared with the executor's state keys) as slot
/// strings.
fn effect(touch: Touch) -> Effect {
    let strings = |v: Vec<Object>| v.iter().map(Object::to_string).collect();
    let prefixes = |v: Vec<Family>| v.iter().map(Family::to_string).collect();
    match touch {
        Touch::Nothing => Effect::Ignore,
        Touch::Router => Effect::ClearAll,
        Touch::Tier(net) => Effect::ClearNetwork(net.to_string()),
        Touch::Set {
            object,
            append,
            replaces,
            supersedes,
        } => Effect::Upsert {
            slot: object.to_string(),
            append,
            replaces: strings(replaces),
            supersedes: prefixes(supersedes),
        },
        Touch::Unset { objects, families } => Effect::Remove {
            exact: strings(objects),
            prefixes: prefixes(families),
        },
        Touch::Accumulate => Effect::Append,
    }
}

/// One command to record, prepared once: its compaction effect, the entry
/// it would store and whether it tears the whole network/VPC down. Every
/// storage applies the same [`Effect`] (in memory, rows, a log).
pub(crate) struct Change {
    pub(crate) command: Command,
    pub(crate) effect: Effect,
    pub(crate) network_id: Option<String>,
    /// The envelope without `physical-network-extension-details`.
    pub(crate) stored: Value,
    /// Nothing is left to replay afterwards: the host is forgotten too, so
    /// the record (row, file) goes away with the network.
    pub(crate) teardown: bool,
}

impl Change {
    pub(crate) fn new(command: Command, envelope: &Value) -> Change {
        let empty = Map::new();
        let payload = envelope
            .get("payload")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        // Recorded commands were accepted by the executor, so their target
        // resolves (a tier may name its VPC by the device details only).
        let device = envelope::network_details(envelope.get(NETWORK_DETAILS)).unwrap_or_default();
        let target = Target::resolve(payload, &device)
            .or_else(|_| Target::resolve(payload, &empty))
            .ok();
        let network_id = target.and_then(Target::network_id).map(|n| n.to_string());
        let in_vpc = target.and_then(Target::vpc_id).is_some();
        let effect = effect(identity::touch(command, target, payload));
        let mut stored = envelope.clone();
        if let Some(obj) = stored.as_object_mut() {
            obj.remove(PHYSICAL_DETAILS);
        }
        // A teardown's effect is always ClearAll, so nothing is left.
        let teardown = match command {
            Command::ShutdownVpc => true,
            Command::DestroyNetwork | Command::ShutdownNetwork => !in_vpc,
            _ => false,
        };
        Change {
            command,
            effect,
            network_id,
            stored,
            teardown,
        }
    }

    pub(crate) fn entry(&self, slot: Option<String>) -> JournalEntry {
        JournalEntry {
            command: self.command.to_string(),
            slot,
            network_id: self.network_id.clone(),
            envelope: self.stored.clone(),
        }
    }

    /// The host the journal names after this change.
    pub(crate) fn host_after(&self, host: &str) -> Option<String> {
        (!self.teardown).then(|| host.to_string())
    }
}

/// Byte-wise successor of every string starting with `prefix`: the range
/// `[prefix, successor)` holds exactly those strings (`None`: no upper
/// bound). UTF-8 never contains 0xFF, so in practice this is the prefix with
/// its last byte incremented.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl JournalState {
    /// Records a command that succeeded, compacting as described above.
    /// `envelope` is the command's envelope (standard form).
    pub fn apply(&mut self, command: Command, envelope: &Value) {
        self.apply_change(&Change::new(command, envelope));
    }

    pub(crate) fn apply_change(&mut self, change: &Change) {
        match &change.effect {
            Effect::Ignore => {}
            Effect::ClearAll => self.entries.clear(),
            Effect::ClearNetwork(net) => self
                .entries
                .retain(|e| e.network_id.as_deref() != Some(net.as_str())),
            Effect::Append => self.entries.push(change.entry(None)),
            Effect::Remove { exact, prefixes } => self.entries.retain(|e| match &e.slot {
                Some(s) => !exact.contains(s) && !prefixes.iter().any(|p| s.starts_with(p)),
                None => true,
            }),
            Effect::Upsert {
                slot,
                append,
                replaces,
                supersedes,
            } => {
                self.entries.retain(|e| match &e.slot {
                    Some(s) => {
                        !replaces.contains(s) && !supersedes.iter().any(|p| s.starts_with(p))
                    }
                    None => true,
                });
                let existing = self
                    .entries
                    .iter()
                    .position(|e| e.slot.as_deref() == Some(slot.as_str()));
                let entry = change.entry(Some(slot.clone()));
                match existing {
                    Some(i) if !*append => self.entries[i] = entry,
                    Some(i) => {
                        self.entries.remove(i);
                        self.entries.push(entry);
                    }
                    None => self.entries.push(entry),
                }
            }
        }
    }

    /// Records a command that succeeded on `host` (what
    /// [`CommandJournal::record`] does to storage).
    pub fn record(&mut self, host: &str, command: Command, envelope: &Value) {
        let change = Change::new(command, envelope);
        self.apply_change(&change);
        self.host = change.host_after(host);
    }

    /// The small part: host and pending drops.
    pub fn head(&self) -> JournalHead {
        JournalHead {
            host: self.host.clone(),
            pending_drops: self.pending_drops.clone(),
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.host.is_none() && self.pending_drops.is_empty()
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

/// Where a network's state lives and what former hosts still have to
/// drop: the part of a journal every command reads, kept apart from the
/// entries so that reading or changing it never touches them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JournalHead {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_drops: Vec<PendingDrop>,
}

impl JournalHead {
    pub fn is_empty(&self) -> bool {
        self.host.is_none() && self.pending_drops.is_empty()
    }
}

/// Storage of journals, keyed by namespace name (`cs-net-42`, `cs-vpc-7`).
/// Every operation is atomic per key (threads and, for shared storage,
/// processes). Costs: `head`, `update_head` and `record` must not grow with
/// the number of entries (they run on every command); `load` reads
/// everything (only a move replays it).
pub trait CommandJournal: Send + Sync {
    /// The whole journal of `key`, entries in replay order (empty when none).
    fn load(&self, key: &str) -> Result<JournalState, JournalError>;
    /// Host and pending drops of `key`, without the entries.
    fn head(&self, key: &str) -> Result<JournalHead, JournalError>;
    /// Read-modify-write of the head of `key`; entries are untouched.
    fn update_head(
        &self,
        key: &str,
        change: &mut dyn FnMut(&mut JournalHead),
    ) -> Result<JournalHead, JournalError>;
    /// Records a command that succeeded on `host`: applies its compaction
    /// effect to the stored entries and names `host` (none after a
    /// teardown). Same result as [`JournalState::record`] on the loaded
    /// state.
    fn record(
        &self,
        key: &str,
        host: &str,
        command: Command,
        envelope: &Value,
    ) -> Result<(), JournalError>;

    /// Notes that the state of `key` now lives on `host`.
    fn set_host(&self, key: &str, host: &str) -> Result<(), JournalError> {
        self.update_head(key, &mut |h| h.host = Some(host.to_string()))
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

    fn with<T>(&self, key: &str, f: impl FnOnce(&mut JournalState) -> T) -> T {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let state = states.entry(key.to_string()).or_default();
        let out = f(state);
        if state.is_empty() {
            states.remove(key);
        }
        out
    }
}

impl CommandJournal for MemoryJournal {
    fn load(&self, key: &str) -> Result<JournalState, JournalError> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        Ok(states.get(key).cloned().unwrap_or_default())
    }

    fn head(&self, key: &str) -> Result<JournalHead, JournalError> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        Ok(states.get(key).map(JournalState::head).unwrap_or_default())
    }

    fn update_head(
        &self,
        key: &str,
        change: &mut dyn FnMut(&mut JournalHead),
    ) -> Result<JournalHead, JournalError> {
        Ok(self.with(key, |s| {
            let mut head = s.head();
            change(&mut head);
            s.host = head.host.clone();
            s.pending_drops = head.pending_drops.clone();
            head
        }))
    }

    fn record(
        &self,
        key: &str,
        host: &str,
        command: Command,
        envelope: &Value,
    ) -> Result<(), JournalError> {
        self.with(key, |s| s.record(host, command, envelope));
        Ok(())
    }
}

/// Journal keys are namespace names: short, `[A-Za-z0-9_-]` only (they
/// become file names and associated data).
pub(crate) fn check_key(key: &str) -> Result<(), JournalError> {
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

/// A journal stored as files per network in a directory (for the entry
/// point, which runs as a process per command), all mode 0600:
/// - `<key>.head`: host and pending drops (a few bytes; what a sticky
///   `ensure-network-device` reads, without any lock), replaced atomically;
/// - `<key>.log`: JSON lines, first the entries kept by the last compaction
///   (`{"e": entry}`), then one line per recorded command (`{"r": …}`),
///   appended; loading replays the records over the entries. When the log
///   grows past twice its compacted size plus 64 KiB it is rewritten
///   compacted, so a record costs one append (amortised) whatever the size
///   of the network;
/// - `.<key>.lock`: the `flock` that serialises writers of one key.
///
/// Nothing is fsynced (it would cost milliseconds per command): files are
/// replaced by write-then-rename and appended whole lines, so a crash never
/// leaves a torn file; a power loss may lose the latest records, and a line
/// cut by a crash is skipped when loading. VM passwords are not stored
/// (secrets only live in the encrypted registry), so a replay does not
/// restore a password that the VM has not fetched yet. A `<key>.json` of
/// earlier builds (one whole state per file) is converted on first use.
#[derive(Debug)]
pub struct FileJournal {
    dir: PathBuf,
}

/// Log growth allowed beyond twice the compacted size.
const LOG_SLACK: u64 = 64 << 10;

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileHead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending_drops: Vec<PendingDrop>,
    /// Size of the log right after its last compaction.
    #[serde(default)]
    base: u64,
}

#[derive(Deserialize)]
enum LogLine {
    #[serde(rename = "e")]
    Entry(JournalEntry),
    #[serde(rename = "r")]
    Record { c: String, v: Value },
}

#[derive(Serialize)]
enum LogLineRef<'a> {
    #[serde(rename = "e")]
    Entry(&'a JournalEntry),
    #[serde(rename = "r")]
    Record { c: &'a str, v: &'a Value },
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

    fn head_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.head"))
    }

    fn log_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.log"))
    }

    fn legacy_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The head file, `None` when absent.
    fn read_head(&self, key: &str) -> Result<Option<FileHead>, JournalError> {
        let path = self.head_path(key);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(JournalError(format!(
                    "cannot read '{}': {e}",
                    path.display()
                )))
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| JournalError(format!("corrupt journal '{}': {e}", path.display())))
    }

    /// The head, converting a legacy whole-state file first (under the
    /// caller's lock).
    fn head_locked(&self, key: &str) -> Result<FileHead, JournalError> {
        if let Some(h) = self.read_head(key)? {
            return Ok(h);
        }
        self.convert_legacy(key)?;
        Ok(self.read_head(key)?.unwrap_or_default())
    }

    fn convert_legacy(&self, key: &str) -> Result<(), JournalError> {
        let path = self.legacy_path(key);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(JournalError(format!(
                    "cannot read '{}': {e}",
                    path.display()
                )))
            }
        };
        let mut state: JournalState = serde_json::from_slice(&text)
            .map_err(|e| JournalError(format!("corrupt journal '{}': {e}", path.display())))?;
        redact_secrets(&mut state);
        let base = self.write_log(key, &state.entries)?;
        self.write_head(
            key,
            &FileHead {
                host: state.host,
                pending_drops: state.pending_drops,
                base,
            },
        )?;
        fs::remove_file(&path)
            .map_err(|e| JournalError(format!("cannot remove '{}': {e}", path.display())))?;
        log::info!("state journal of {key} converted to the incremental format");
        Ok(())
    }

    /// Writes `head` atomically, or removes it (and the empty log) when
    /// there is nothing left.
    fn write_head(&self, key: &str, head: &FileHead) -> Result<(), JournalError> {
        let path = self.head_path(key);
        if head.host.is_none() && head.pending_drops.is_empty() && !self.log_path(key).exists() {
            return remove_if_present(&path);
        }
        let text = serde_json::to_vec(head).map_err(|e| JournalError(e.to_string()))?;
        replace(&self.dir, &path, &text)
    }

    /// Replaces the log with `entries` (compacted); returns its size.
    fn write_log(&self, key: &str, entries: &[JournalEntry]) -> Result<u64, JournalError> {
        let path = self.log_path(key);
        if entries.is_empty() {
            remove_if_present(&path)?;
            return Ok(0);
        }
        let mut text = Vec::with_capacity(entries.len() * 256);
        for e in entries {
            serde_json::to_writer(&mut text, &LogLineRef::Entry(e))
                .map_err(|e| JournalError(e.to_string()))?;
            text.push(b'\n');
        }
        replace(&self.dir, &path, &text)?;
        Ok(text.len() as u64)
    }

    /// Appends one line; returns the log's size afterwards.
    fn append(&self, key: &str, line: &[u8]) -> Result<u64, JournalError> {
        use std::os::unix::fs::FileExt;
        let path = self.log_path(key);
        let io =
            |e: std::io::Error| JournalError(format!("cannot write '{}': {e}", path.display()));
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        let mut buf = Vec::with_capacity(line.len() + 2);
        if size > 0 {
            // A line cut by a crash must not swallow this one.
            let mut last = [0u8; 1];
            f.read_exact_at(&mut last, size - 1).map_err(io)?;
            if last[0] != b'\n' {
                buf.push(b'\n');
            }
        }
        buf.extend_from_slice(line);
        buf.push(b'\n');
        f.write_all(&buf).map_err(io)?;
        Ok(size + buf.len() as u64)
    }

    /// The entries: the log replayed (under the caller's lock).
    fn read_entries(&self, key: &str) -> Result<Vec<JournalEntry>, JournalError> {
        let path = self.log_path(key);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(JournalError(format!(
                    "cannot read '{}': {e}",
                    path.display()
                )))
            }
        };
        let mut state = JournalState::default();
        for (n, line) in text.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<LogLine>(line) {
                Ok(LogLine::Entry(e)) => state.entries.push(e),
                Ok(LogLine::Record { c, v }) => match c.parse::<Command>() {
                    Ok(command) => state.apply(command, &v),
                    Err(_) => log::warn!(
                        "{}: line {} names an unknown command; skipped",
                        path.display(),
                        n + 1
                    ),
                },
                // Only a crash in the middle of an append cuts a line.
                Err(e) => log::warn!(
                    "{}: line {} unreadable ({e}); skipped",
                    path.display(),
                    n + 1
                ),
            }
        }
        redact_secrets(&mut state);
        Ok(state.entries)
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

fn remove_if_present(path: &Path) -> Result<(), JournalError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(JournalError(format!(
            "cannot remove '{}': {e}",
            path.display()
        ))),
    }
}

/// Write-then-rename, mode 0600, not fsynced (see [`FileJournal`]). Callers
/// hold the key's lock, so one temporary name per file is enough.
fn replace(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |e: std::io::Error| JournalError(format!("cannot write '{}': {e}", path.display()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(e)
    })
}

/// Drops VM passwords from the state before it reaches a plain file.
fn redact_secrets(state: &mut JournalState) {
    state
        .entries
        .retain(|e| e.command != Command::SavePassword.as_str());
    for e in &mut state.entries {
        redact_envelope(&mut e.envelope);
    }
}

/// Drops VM passwords from an envelope (`vm_data` and `restore_data`).
fn redact_envelope(envelope: &mut Value) {
    let Some(payload) = envelope.get_mut("payload") else {
        return;
    };
    if let Some(vm_data) = payload.get_mut("vm_data") {
        edit_document(vm_data, redact_vm_data);
    }
    if let Some(restore) = payload.get_mut("restore_data") {
        edit_document(restore, |restore| {
            if let Some(vms) = restore.get_mut("vms").and_then(Value::as_array_mut) {
                for vm in vms {
                    if let Some(vm_data) = vm.get_mut("vm_data") {
                        edit_document(vm_data, redact_vm_data);
                    }
                }
            }
        });
    }
}

/// Applies `edit` to a rule document in the form it arrived in (a JSON
/// value, JSON text, or Base64 of the JSON as older builds send it) and
/// writes it back in that same form: the executor reads the form of a
/// `vm_data` document as the encoding of its contents, so a replayed
/// document must keep it. A string that is no document is left alone.
fn edit_document(doc: &mut Value, edit: impl FnOnce(&mut Value)) {
    use crate::protocol::envelope::{decode_document, DocumentForm};
    if !doc.is_string() {
        edit(doc);
        return;
    }
    let Ok(Some((decoded, form))) = decode_document("", Some(doc)) else {
        return;
    };
    let mut value = decoded.into_owned();
    edit(&mut value);
    let text = value.to_string();
    *doc = Value::String(match form {
        DocumentForm::Base64 => base64::engine::general_purpose::STANDARD.encode(text),
        DocumentForm::Json => text,
    });
}

fn redact_vm_data(vm_data: &mut Value) {
    if let Some(items) = vm_data.as_array_mut() {
        items.retain(|item| item.get("dir").and_then(Value::as_str) != Some("password"));
    }
}

impl CommandJournal for FileJournal {
    fn load(&self, key: &str) -> Result<JournalState, JournalError> {
        check_key(key)?;
        let _lock = self.lock(key)?;
        let head = self.head_locked(key)?;
        Ok(JournalState {
            host: head.host,
            entries: self.read_entries(key)?,
            pending_drops: head.pending_drops,
        })
    }

    fn head(&self, key: &str) -> Result<JournalHead, JournalError> {
        check_key(key)?;
        // Replaced atomically: readable without the lock.
        let head = match self.read_head(key)? {
            Some(h) => h,
            None if self.legacy_path(key).exists() => {
                let _lock = self.lock(key)?;
                self.head_locked(key)?
            }
            None => FileHead::default(),
        };
        Ok(JournalHead {
            host: head.host,
            pending_drops: head.pending_drops,
        })
    }

    fn update_head(
        &self,
        key: &str,
        change: &mut dyn FnMut(&mut JournalHead),
    ) -> Result<JournalHead, JournalError> {
        check_key(key)?;
        let _lock = self.lock(key)?;
        let mut file = self.head_locked(key)?;
        let mut head = JournalHead {
            host: file.host.take(),
            pending_drops: std::mem::take(&mut file.pending_drops),
        };
        change(&mut head);
        file.host = head.host.clone();
        file.pending_drops = head.pending_drops.clone();
        self.write_head(key, &file)?;
        Ok(head)
    }

    fn record(
        &self,
        key: &str,
        host: &str,
        command: Command,
        envelope: &Value,
    ) -> Result<(), JournalError> {
        check_key(key)?;
        let _lock = self.lock(key)?;
        let mut head = self.head_locked(key)?;
        let change = Change::new(command, envelope);
        let new_host = change.host_after(host);
        let mut head_changed = head.host != new_host;
        head.host = new_host;
        // The host first: the command was applied there whatever happens
        // to the record.
        if head_changed && !matches!(change.effect, Effect::ClearAll) {
            self.write_head(key, &head)?;
            head_changed = false;
        }
        match &change.effect {
            Effect::Ignore => {}
            Effect::ClearAll => {
                remove_if_present(&self.log_path(key))?;
                head.base = 0;
                head_changed = true;
            }
            // Its effect only touches password entries, never stored here.
            _ if command == Command::SavePassword => {}
            _ => {
                let mut stored = change.stored;
                redact_envelope(&mut stored);
                let line = serde_json::to_vec(&LogLineRef::Record {
                    c: command.as_str(),
                    v: &stored,
                })
                .map_err(|e| JournalError(e.to_string()))?;
                let size = self.append(key, &line)?;
                if size > head.base.saturating_mul(2).saturating_add(LOG_SLACK) {
                    let entries = self.read_entries(key)?;
                    head.base = self.write_log(key, &entries)?;
                    head_changed = true;
                }
            }
        }
        if head_changed {
            self.write_head(key, &head)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
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

    fn restore(tag: &str, userdata: bool, vms: Value) -> Value {
        json!({"network_id": "42", "tag": tag, "restore_data": {
            "dhcp_enabled": "true", "dns_enabled": "true",
            "userdata_enabled": userdata.to_string(), "vms": vms}})
    }

    /// A `restore-network` that keeps some VM's stored data (its `vm_data`
    /// is empty or absent, or UserData is off) must not drop the entries a
    /// replay needs to rebuild that data on another host; a restore that
    /// carries every VM's data supersedes them all, and the partial ones.
    #[test]
    fn restore_keeping_vm_data_keeps_what_a_replay_needs() {
        let data = json!([{"dir": "metadata", "file": "instance-id", "content": "i"}]);
        let mut s = JournalState::default();
        apply(
            &mut s,
            Command::ImplementNetwork,
            json!({"network_id": "42", "tag": "impl"}),
        );
        for ip in ["10.1.1.5", "10.1.1.6"] {
            apply(
                &mut s,
                Command::SaveVmData,
                json!({"network_id": "42", "ip": ip}),
            );
        }
        let both =
            json!([{"ip": "10.1.1.5", "vm_data": data}, {"ip": "10.1.1.6", "vm_data": data}]);
        apply(
            &mut s,
            Command::RestoreNetwork,
            restore("r1", true, both.clone()),
        );
        assert_eq!(
            commands(&s),
            vec!["implement-network@impl", "restore-network@r1"]
        );
        apply(
            &mut s,
            Command::SaveVmData,
            json!({"network_id": "42", "ip": "10.1.1.7"}),
        );
        apply(
            &mut s,
            Command::SaveUserdata,
            json!({"network_id": "42", "ip": "10.1.1.6"}),
        );
        // .7 sent without data (CloudStack could not generate it), .6 absent.
        let partial = json!([{"ip": "10.1.1.5", "vm_data": data},
            {"ip": "10.1.1.6"}, {"ip": "10.1.1.7", "vm_data": []}]);
        apply(
            &mut s,
            Command::RestoreNetwork,
            restore("r2", true, partial),
        );
        let kept = vec![
            "implement-network@impl",
            "restore-network@r1",
            "save-vm-data@10.1.1.7",
            "save-userdata@10.1.1.6",
            "restore-network@r2",
        ];
        assert_eq!(commands(&s), kept);
        // UserData off (every vm_data kept; here `[]` in Base64): r2 stays,
        // it carries .5's data; such a restore replaces the previous one of
        // its kind only (neither carries VM data).
        for tag in ["r3", "r3b"] {
            apply(
                &mut s,
                Command::RestoreNetwork,
                restore(tag, false, json!([{"ip": "10.1.1.5", "vm_data": "W10="}])),
            );
            let mut now = kept.clone();
            now.push(if tag == "r3" {
                "restore-network@r3"
            } else {
                "restore-network@r3b"
            });
            assert_eq!(commands(&s), now);
        }
        // A restore carrying every VM's data replaces all of it.
        apply(&mut s, Command::RestoreNetwork, restore("r4", true, both));
        assert_eq!(
            commands(&s),
            vec!["implement-network@impl", "restore-network@r4"]
        );
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
        for name in ["cs-net-42.log", "cs-net-42.head"] {
            let path = dir.path().join("state").join(name);
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
            let text = fs::read_to_string(&path).unwrap();
            assert!(
                !text.contains("SECRET") && !text.contains("VMPASS"),
                "{text}"
            );
        }
        let s = j.load("cs-net-42").unwrap();
        assert_eq!(s.host.as_deref(), Some("h1"));
        assert_eq!(
            commands(&s),
            vec!["implement-network", "save-vm-data@10.1.1.6"]
        );
        assert!(j.load("../etc").is_err());
        assert!(j.head("../etc").is_err());
        // A teardown leaves no file behind.
        j.record(
            "cs-net-42",
            "h1",
            Command::DestroyNetwork,
            &env(json!({"network_id": "42"})),
        )
        .unwrap();
        let left: Vec<String> = fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(j.load("cs-net-42").unwrap(), JournalState::default());
    }

    #[test]
    fn redaction_keeps_the_form_legacy_documents_arrived_in() {
        use base64::engine::general_purpose::STANDARD;
        let b64 = |v: &Value| Value::String(STANDARD.encode(v.to_string()));
        let unb64 = |v: &Value| -> Value {
            serde_json::from_slice(&STANDARD.decode(v.as_str().unwrap()).unwrap()).unwrap()
        };
        // Older builds: the document and each content Base64-encoded.
        let legacy = json!([
            {"dir": "metadata", "file": "instance-id", "content": STANDARD.encode("i-alpha")},
            {"dir": "password", "file": "vm_password", "content": STANDARD.encode("VMPASS")}]);
        let kept = json!([
            {"dir": "metadata", "file": "instance-id", "content": STANDARD.encode("i-alpha")}]);
        let mut e = env(
            json!({"network_id": "42", "ip": "10.1.1.6", "vm_data": b64(&legacy),
            "restore_data": b64(&json!({"vms": [{"ip": "10.1.1.6", "vm_data": legacy}]}))}),
        );
        redact_envelope(&mut e);
        // Still Base64 documents (a replay must not turn them into 4.23
        // documents whose Base64 contents would be served as text).
        assert_eq!(unb64(&e["payload"]["vm_data"]), kept);
        assert_eq!(
            unb64(&e["payload"]["restore_data"]),
            json!({"vms": [{"ip": "10.1.1.6", "vm_data": kept}]})
        );
        // JSON text stays JSON text; a JSON value stays a value.
        let plain = json!([{"dir": "metadata", "file": "instance-id", "content": "i-alpha"},
            {"dir": "password", "file": "vm_password", "content": "VMPASS"}]);
        let mut e = env(json!({"network_id": "42", "vm_data": plain.to_string(),
            "restore_data": {"vms": [{"ip": "10.1.1.6", "vm_data": plain}]}}));
        redact_envelope(&mut e);
        let text = e["payload"]["vm_data"].as_str().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(text).unwrap(),
            json!([{"dir": "metadata", "file": "instance-id", "content": "i-alpha"}])
        );
        assert!(!e.to_string().contains("VMPASS"), "{e}");
        assert_eq!(
            e["payload"]["restore_data"]["vms"][0]["vm_data"][0]["content"],
            "i-alpha"
        );
    }

    /// A deterministic pseudo-random command sequence over few slots (also
    /// used by the registry journal's tests): (host, command, envelope).
    pub(crate) fn random_steps(n: usize, mut seed: u64) -> Vec<(&'static str, Command, Value)> {
        let mut next = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        let commands = [
            Command::ImplementNetwork,
            Command::AssignIp,
            Command::ReleaseIp,
            Command::AddStaticNat,
            Command::AddPortForward,
            Command::DeletePortForward,
            Command::ApplyFwRules,
            Command::PrepareNic,
            Command::ReleaseNic,
            Command::AddDnsEntry,
            Command::RemoveDnsEntry,
            Command::SaveVmData,
            Command::SaveUserdata,
            Command::SavePassword,
            Command::ApplyLbRules,
            Command::RestoreNetwork,
            Command::CustomAction,
        ];
        (0..n)
            .map(|step| {
                let c = commands[next(commands.len() as u64) as usize];
                let mut p = json!({"network_id": "42", "ip": format!("10.1.1.{}", next(6)),
                    "public_ip": format!("203.0.113.{}", next(3)), "public_port": "22",
                    "protocol": "tcp", "tag": step.to_string(),
                    "vm_data": [{"dir": "password", "file": "vm_password", "content": "PW"},
                                {"dir": "userdata", "file": "user-data", "content": "u"}]});
                if c == Command::SavePassword {
                    p["password"] = json!("PW");
                }
                let host = if next(10) == 0 { "h2" } else { "h1" };
                (host, c, env(p))
            })
            .collect()
    }

    #[test]
    fn file_journal_matches_the_rules_and_compacts_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let j = FileJournal::open(dir.path().join("state")).unwrap();
        let log = dir.path().join("state/cs-net-42.log");
        let mut model = JournalState::default();
        let mut largest = 0;
        for (n, (host, c, e)) in random_steps(3000, 0x2545_f491_4f6c_dd1d)
            .into_iter()
            .enumerate()
        {
            model.record(host, c, &e);
            j.record("cs-net-42", host, c, &e).unwrap();
            largest = largest.max(fs::metadata(&log).map(|m| m.len()).unwrap_or(0));
            if n % 250 == 0 {
                let mut expected = model.clone();
                redact_secrets(&mut expected);
                assert_eq!(j.load("cs-net-42").unwrap(), expected, "step {n}");
                assert_eq!(j.head("cs-net-42").unwrap(), model.head());
            }
        }
        let mut expected = model.clone();
        redact_secrets(&mut expected);
        assert_eq!(j.load("cs-net-42").unwrap(), expected);
        // A few slots: the log is compacted instead of growing with every record.
        let head: FileHead =
            serde_json::from_slice(&fs::read(dir.path().join("state/cs-net-42.head")).unwrap())
                .unwrap();
        assert!(
            largest <= head.base * 2 + LOG_SLACK + 4096,
            "{largest} {}",
            head.base
        );
        assert!(!fs::read_to_string(&log).unwrap().contains("PW"));
    }

    #[test]
    fn file_journal_survives_a_cut_line_and_converts_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let j = FileJournal::open(&state).unwrap();
        let mut legacy = JournalState::default();
        legacy.record(
            "h1",
            Command::ImplementNetwork,
            &env(json!({"network_id": "42"})),
        );
        legacy.record(
            "h1",
            Command::SavePassword,
            &env(json!({"network_id": "42", "ip": "10.1.1.5", "password": "VMPASS"})),
        );
        legacy.pending_drops.push(PendingDrop {
            host: "h0".into(),
            network_ids: vec![],
            last_attempt: 1,
        });
        fs::write(
            state.join("cs-net-42.json"),
            serde_json::to_vec(&legacy).unwrap(),
        )
        .unwrap();
        let mut expected = legacy.clone();
        redact_secrets(&mut expected);
        assert_eq!(j.head("cs-net-42").unwrap(), legacy.head());
        assert!(!state.join("cs-net-42.json").exists());
        assert_eq!(j.load("cs-net-42").unwrap(), expected);
        // A crash in the middle of an append: that record is lost, the
        // others are not.
        let mut f = OpenOptions::new()
            .append(true)
            .open(state.join("cs-net-42.log"))
            .unwrap();
        f.write_all(br#"{"r":{"c":"add-dns-entry","v":{"payl"#)
            .unwrap();
        drop(f);
        j.record(
            "cs-net-42",
            "h1",
            Command::AddDnsEntry,
            &env(json!({"network_id": "42", "ip": "10.1.1.9"})),
        )
        .unwrap();
        assert_eq!(
            commands(&j.load("cs-net-42").unwrap()),
            vec!["implement-network", "add-dns-entry@10.1.1.9"]
        );
    }

    #[test]
    fn file_journal_writers_do_not_lose_records() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::thread::scope(|s| {
            for t in 0..4 {
                let state = state.clone();
                s.spawn(move || {
                    // Own handle per writer: the flock is what serialises them.
                    let j = FileJournal::open(state).unwrap();
                    for i in 0..60 {
                        j.record(
                            "cs-net-42",
                            "h1",
                            Command::AddDnsEntry,
                            &env(json!({"network_id": "42", "ip": format!("10.{t}.0.{i}"),
                                "hostname": "x".repeat(2000)})),
                        )
                        .unwrap();
                        j.update_head("cs-net-42", &mut |h| {
                            h.pending_drops.push(PendingDrop {
                                host: format!("h{t}-{i}"),
                                network_ids: vec![],
                                last_attempt: 0,
                            })
                        })
                        .unwrap();
                    }
                });
            }
        });
        let j = FileJournal::open(&state).unwrap();
        let s = j.load("cs-net-42").unwrap();
        assert_eq!(s.entries.len(), 240);
        assert_eq!(s.pending_drops.len(), 240);
        assert_eq!(s.host.as_deref(), Some("h1"));
    }

    #[test]
    fn memory_journal_forgets_empty_keys() {
        let j = MemoryJournal::new();
        j.set_host("cs-net-1", "h1").unwrap();
        assert_eq!(j.head("cs-net-1").unwrap().host.as_deref(), Some("h1"));
        j.update_head("cs-net-1", &mut |h| h.host = None).unwrap();
        assert!(j.states.lock().unwrap().is_empty());
    }

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_end(b"dns:42:"), Some(b"dns:42;".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
