//! The bridge's command journal ([`crate::dispatch::CommandJournal`]) in the
//! registry, so the desired state sent for each network/VPC survives
//! restarts and is shared by every process using the same database
//! ([`RegistryJournal`], whatever the backend), and its SQLite rows.
//!
//! Stored incrementally, so a command costs the same whatever the size of
//! the network:
//! - `journal_heads`: one row per key (the network's or VPC's namespace
//!   name) with the host and the pending drops (host names and network ids,
//!   nothing secret);
//! - `journal_entries`: one row per entry, ordered by `seq` within its key,
//!   with its compaction `slot` (unique per key, indexed) and `network_id`
//!   in clear, and the command with its envelope sealed with the registry's
//!   AES-256-GCM key, bound to the key, seq and slot (envelopes may carry VM
//!   passwords and user data). A command seals only its own entry.
//!
//! Each operation is one IMMEDIATE transaction, hence atomic per key across
//! threads and processes. A key with no entries, no host and no pending
//! drops has no rows. Version-2 databases kept the whole state of a key in
//! one sealed blob (`dispatch_journal`); those are converted when the
//! registry opens.

use std::sync::Arc;

use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::secrets::Cipher;
use super::sqlite::SqliteStore;
use super::{now_timestamp, Registry, RegistryError};
use crate::dispatch::journal::{check_key, prefix_end, Change, Effect, JournalEntry, PendingDrop};
use crate::dispatch::{CommandJournal, JournalError, JournalHead, JournalState};
use netbridge_protocol::Command;

/// Associated data of version-2 blobs.
fn blob_aad(key: &str) -> String {
    format!("netbridge/v1/journal/{key}")
}

/// Associated data of one entry: a row copied to another key, position or
/// slot does not decrypt.
pub(super) fn entry_aad(key: &str, seq: i64, slot: Option<&str>) -> String {
    match slot {
        Some(s) => format!("netbridge/v2/journal/{key}/{seq}/s{s}"),
        None => format!("netbridge/v2/journal/{key}/{seq}/-"),
    }
}

fn journal_error(e: RegistryError) -> JournalError {
    JournalError(e.to_string())
}

pub(super) fn corrupt(key: &str, what: impl std::fmt::Display) -> RegistryError {
    RegistryError::Io(format!("corrupt journal of {key}: {what}"))
}

/// What is sealed per entry (the same form in every backend).
#[derive(Serialize)]
struct SealedRef<'a> {
    command: &'a str,
    envelope: &'a Value,
}

#[derive(Deserialize)]
struct Sealed {
    command: String,
    envelope: Value,
}

/// Seals `entry` for position `seq` of `key` (every backend stores this).
pub(super) fn seal_entry(
    cipher: &Cipher,
    key: &str,
    seq: i64,
    entry: &JournalEntry,
) -> Result<Vec<u8>, RegistryError> {
    let text = serde_json::to_string(&SealedRef {
        command: &entry.command,
        envelope: &entry.envelope,
    })
    .map_err(|e| RegistryError::Io(format!("cannot encode journal: {e}")))?;
    cipher.seal(&entry_aad(key, seq, entry.slot.as_deref()), &text)
}

/// The entry a backend's row holds: its position, slot, network and sealed
/// command.
pub(super) fn open_entry(
    cipher: &Cipher,
    key: &str,
    seq: i64,
    slot: Option<Vec<u8>>,
    network_id: Option<String>,
    sealed: &[u8],
) -> Result<JournalEntry, RegistryError> {
    let slot = slot
        .map(String::from_utf8)
        .transpose()
        .map_err(|e| corrupt(key, e))?;
    let text = cipher.open(&entry_aad(key, seq, slot.as_deref()), sealed)?;
    let s: Sealed = serde_json::from_str(text.expose()).map_err(|e| corrupt(key, e))?;
    Ok(JournalEntry {
        command: s.command,
        slot,
        network_id,
        envelope: s.envelope,
    })
}

pub(super) fn encode_drops(drops: &[PendingDrop]) -> Result<String, RegistryError> {
    if drops.is_empty() {
        return Ok(String::new());
    }
    serde_json::to_string(drops)
        .map_err(|e| RegistryError::Io(format!("cannot encode journal: {e}")))
}

impl SqliteStore {
    fn head_in(
        &self,
        conn: &rusqlite::Connection,
        key: &str,
    ) -> Result<Option<JournalHead>, RegistryError> {
        let row: Option<(Option<String>, String)> = conn
            .prepare_cached("SELECT host, pending_drops FROM journal_heads WHERE key = ?1")?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((host, drops)) = row else {
            return Ok(None);
        };
        let pending_drops = if drops.is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&drops).map_err(|e| corrupt(key, e))?
        };
        Ok(Some(JournalHead {
            host,
            pending_drops,
        }))
    }

    /// Writes the head of `key` (none left when empty and without entries).
    fn journal_put_head(
        &self,
        tx: &Transaction<'_>,
        key: &str,
        head: &JournalHead,
    ) -> Result<(), RegistryError> {
        if head.is_empty() {
            let has_entries: bool = tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM journal_entries WHERE key = ?1)")?
                .query_row([key], |r| r.get(0))?;
            if !has_entries {
                tx.prepare_cached("DELETE FROM journal_heads WHERE key = ?1")?
                    .execute([key])?;
                return Ok(());
            }
        }
        tx.prepare_cached(
            "INSERT INTO journal_heads (key, host, pending_drops, updated) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key) DO UPDATE SET host = excluded.host,
                 pending_drops = excluded.pending_drops, updated = excluded.updated",
        )?
        .execute(params![
            key,
            head.host,
            encode_drops(&head.pending_drops)?,
            now_timestamp()
        ])?;
        Ok(())
    }

    fn journal_entries(
        &self,
        conn: &rusqlite::Connection,
        key: &str,
    ) -> Result<Vec<JournalEntry>, RegistryError> {
        let mut stmt = conn.prepare_cached(
            "SELECT seq, slot, network_id, sealed FROM journal_entries WHERE key = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([key], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<Vec<u8>>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })?;
        let mut entries = Vec::new();
        for row in rows {
            let (seq, slot, network_id, sealed) = row?;
            entries.push(open_entry(
                &self.cipher,
                key,
                seq,
                slot,
                network_id,
                &sealed,
            )?);
        }
        Ok(entries)
    }

    /// Inserts `entry` after every other entry of `key`.
    fn journal_push(
        &self,
        tx: &Transaction<'_>,
        key: &str,
        entry: &JournalEntry,
    ) -> Result<(), RegistryError> {
        let seq: i64 = tx
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) + 1 FROM journal_entries WHERE key = ?1")?
            .query_row([key], |r| r.get(0))?;
        let sealed = self.seal_entry(key, seq, entry)?;
        tx.prepare_cached(
            "INSERT INTO journal_entries (key, seq, slot, network_id, sealed)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            key,
            seq,
            entry.slot.as_deref().map(str::as_bytes),
            entry.network_id,
            sealed
        ])?;
        Ok(())
    }

    fn seal_entry(
        &self,
        key: &str,
        seq: i64,
        entry: &JournalEntry,
    ) -> Result<Vec<u8>, RegistryError> {
        seal_entry(&self.cipher, key, seq, entry)
    }

    /// Deletes the entries of `key` whose slot starts with `prefix` (a range
    /// on the slot index, no pattern matching).
    fn journal_delete_prefix(
        &self,
        tx: &Transaction<'_>,
        key: &str,
        prefix: &str,
    ) -> Result<(), RegistryError> {
        match prefix_end(prefix.as_bytes()) {
            Some(end) => tx
                .prepare_cached(
                    "DELETE FROM journal_entries WHERE key = ?1 AND slot >= ?2 AND slot < ?3",
                )?
                .execute(params![key, prefix.as_bytes(), end])?,
            None => tx
                .prepare_cached("DELETE FROM journal_entries WHERE key = ?1 AND slot >= ?2")?
                .execute(params![key, prefix.as_bytes()])?,
        };
        Ok(())
    }

    fn journal_delete_slot(
        &self,
        tx: &Transaction<'_>,
        key: &str,
        slot: &str,
    ) -> Result<(), RegistryError> {
        tx.prepare_cached("DELETE FROM journal_entries WHERE key = ?1 AND slot = ?2")?
            .execute(params![key, slot.as_bytes()])?;
        Ok(())
    }

    /// Applies one command's effect to the rows of `key` (the same result as
    /// [`JournalState::apply_change`] on the loaded entries).
    fn journal_apply(
        &self,
        tx: &Transaction<'_>,
        key: &str,
        change: &Change,
    ) -> Result<(), RegistryError> {
        match &change.effect {
            Effect::Ignore => {}
            Effect::ClearAll => {
                tx.prepare_cached("DELETE FROM journal_entries WHERE key = ?1")?
                    .execute([key])?;
            }
            Effect::ClearNetwork(net) => {
                tx.prepare_cached(
                    "DELETE FROM journal_entries WHERE key = ?1 AND network_id = ?2",
                )?
                .execute(params![key, net])?;
            }
            Effect::Append => self.journal_push(tx, key, &change.entry(None))?,
            Effect::Remove { exact, prefixes } => {
                for slot in exact {
                    self.journal_delete_slot(tx, key, slot)?;
                }
                for p in prefixes {
                    self.journal_delete_prefix(tx, key, p)?;
                }
            }
            Effect::Upsert {
                slot,
                append,
                replaces,
                supersedes,
            } => {
                for r in replaces {
                    self.journal_delete_slot(tx, key, r)?;
                }
                for p in supersedes {
                    self.journal_delete_prefix(tx, key, p)?;
                }
                let entry = change.entry(Some(slot.clone()));
                let existing: Option<(i64, i64)> = tx
                    .prepare_cached(
                        "SELECT id, seq FROM journal_entries WHERE key = ?1 AND slot = ?2",
                    )?
                    .query_row(params![key, slot.as_bytes()], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                match existing {
                    // In place: the entry keeps its position.
                    Some((id, seq)) if !*append => {
                        let sealed = self.seal_entry(key, seq, &entry)?;
                        tx.prepare_cached(
                            "UPDATE journal_entries SET network_id = ?2, sealed = ?3 WHERE id = ?1",
                        )?
                        .execute(params![id, entry.network_id, sealed])?;
                    }
                    Some((id, _)) => {
                        tx.prepare_cached("DELETE FROM journal_entries WHERE id = ?1")?
                            .execute([id])?;
                        self.journal_push(tx, key, &entry)?;
                    }
                    None => self.journal_push(tx, key, &entry)?,
                }
            }
        }
        Ok(())
    }

    /// Replaces everything stored for `key` by `state`.
    pub(super) fn journal_replace_rows(
        &self,
        tx: &Transaction<'_>,
        key: &str,
        state: &JournalState,
    ) -> Result<(), RegistryError> {
        tx.prepare_cached("DELETE FROM journal_entries WHERE key = ?1")?
            .execute([key])?;
        for e in &state.entries {
            self.journal_push(tx, key, e)?;
        }
        self.journal_put_head(tx, key, &state.head())
    }

    /// Converts version-2 journals (one sealed blob per key) to rows. A
    /// blob that does not decrypt (key file replaced) or parse is left in
    /// place and reported; it is never used again.
    pub(super) fn convert_journal_blobs(&self) -> Result<(), RegistryError> {
        self.write(|tx| {
            let blobs: Vec<(String, Vec<u8>)> = {
                let mut stmt = tx.prepare("SELECT key, state FROM dispatch_journal")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            for (key, blob) in blobs {
                let state = self.cipher.open(&blob_aad(&key), &blob).and_then(|text| {
                    serde_json::from_str::<JournalState>(text.expose())
                        .map_err(|e| corrupt(&key, e))
                });
                match state {
                    Ok(state) if check_key(&key).is_ok() => {
                        self.journal_replace_rows(tx, &key, &state)?;
                        tx.execute("DELETE FROM dispatch_journal WHERE key = ?1", [&key])?;
                        log::info!("state journal of {key} converted to rows");
                    }
                    Ok(_) => log::warn!("journal with an invalid key left unconverted"),
                    Err(e) => log::warn!("journal of {key} left unconverted: {e}"),
                }
            }
            Ok(())
        })
    }

    pub(super) fn journal_count_rows(&self) -> Result<usize, RegistryError> {
        self.read(|conn| {
            let n: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM journal_heads")?
                .query_row([], |r| r.get(0))?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    pub(super) fn journal_key_rows(&self) -> Result<Vec<String>, RegistryError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT key FROM journal_heads UNION SELECT key FROM journal_entries ORDER BY 1",
            )?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    pub(super) fn journal_load_rows(&self, key: &str) -> Result<JournalState, RegistryError> {
        self.read(|conn| {
            let head = self.head_in(conn, key)?.unwrap_or_default();
            Ok(JournalState {
                host: head.host,
                entries: self.journal_entries(conn, key)?,
                pending_drops: head.pending_drops,
            })
        })
    }

    pub(super) fn journal_head_row(&self, key: &str) -> Result<JournalHead, RegistryError> {
        self.read(|conn| Ok(self.head_in(conn, key)?.unwrap_or_default()))
    }

    pub(super) fn journal_update_head_row(
        &self,
        key: &str,
        change: &mut dyn FnMut(&mut JournalHead),
    ) -> Result<JournalHead, RegistryError> {
        self.write(|tx| {
            let mut head = self.head_in(tx, key)?.unwrap_or_default();
            let before = head.clone();
            change(&mut head);
            if head != before {
                self.journal_put_head(tx, key, &head)?;
            }
            Ok(head)
        })
    }

    pub(super) fn journal_record_rows(
        &self,
        key: &str,
        host: &str,
        command: Command,
        envelope: &Value,
    ) -> Result<(), RegistryError> {
        let change = Change::new(command, envelope);
        self.write(|tx| {
            let head = self.head_in(tx, key)?;
            self.journal_apply(tx, key, &change)?;
            let host = change.host_after(host);
            if head.as_ref().map(|h| &h.host) != Some(&host) {
                let mut head = head.unwrap_or_default();
                head.host = host;
                self.journal_put_head(tx, key, &head)?;
            }
            Ok(())
        })
    }
}

/// [`CommandJournal`] backed by the registry database.
#[derive(Clone)]
pub struct RegistryJournal {
    registry: Arc<Registry>,
}

impl std::fmt::Debug for RegistryJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryJournal")
    }
}

impl RegistryJournal {
    pub fn new(registry: Arc<Registry>) -> RegistryJournal {
        RegistryJournal { registry }
    }
}

impl CommandJournal for RegistryJournal {
    fn load(&self, key: &str) -> Result<JournalState, JournalError> {
        check_key(key)?;
        self.registry
            .store()
            .journal_load(key)
            .map_err(journal_error)
    }

    fn head(&self, key: &str) -> Result<JournalHead, JournalError> {
        check_key(key)?;
        self.registry
            .store()
            .journal_head(key)
            .map_err(journal_error)
    }

    fn update_head(
        &self,
        key: &str,
        change: &mut dyn FnMut(&mut JournalHead),
    ) -> Result<JournalHead, JournalError> {
        check_key(key)?;
        self.registry
            .store()
            .journal_update_head(key, change)
            .map_err(journal_error)
    }

    fn record(
        &self,
        key: &str,
        host: &str,
        command: Command,
        envelope: &Value,
    ) -> Result<(), JournalError> {
        check_key(key)?;
        self.registry
            .store()
            .journal_record(key, host, command, envelope)
            .map_err(journal_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn open(dir: &std::path::Path) -> Arc<Registry> {
        Arc::new(Registry::open(&dir.join("nb.db"), &dir.join("secret.key")).unwrap())
    }

    /// A second connection on the test's SQLite file, for what the store
    /// does not offer (raw rows).
    fn raw_conn(dir: &std::path::Path) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(dir.join("nb.db")).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        c
    }

    fn raw_db(dir: &std::path::Path) -> String {
        let mut raw = std::fs::read(dir.join("nb.db")).unwrap();
        if let Ok(wal) = std::fs::read(dir.join("nb.db-wal")) {
            raw.extend(wal);
        }
        String::from_utf8_lossy(&raw).into_owned()
    }

    #[test]
    fn journal_is_encrypted_atomic_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let reg = open(dir.path());
        let j = RegistryJournal::new(reg.clone());
        let env = json!({
            "physical-network-extension-details": {"executor.key": "EXECKEY"},
            "network-extension-details": {},
            "payload": {"network_id": "42", "ip": "10.1.1.5", "password": "VMPASSWORD"},
        });
        j.record("cs-net-42", "h1", Command::SavePassword, &env)
            .unwrap();
        j.record(
            "cs-net-42",
            "h1",
            Command::ImplementNetwork,
            &json!({"payload": {"network_id": "42"}}),
        )
        .unwrap();
        // Concurrent updates from many threads are not lost.
        std::thread::scope(|s| {
            for t in 0..8 {
                let j = j.clone();
                s.spawn(move || {
                    for i in 0..10 {
                        j.update_head("cs-net-43", &mut |h| {
                            h.pending_drops.push(PendingDrop {
                                host: format!("h{t}-{i}"),
                                network_ids: vec![],
                                last_attempt: 0,
                            })
                        })
                        .unwrap();
                        j.record(
                            "cs-net-43",
                            "h1",
                            Command::AddDnsEntry,
                            &json!({"payload": {"network_id": "43", "ip": format!("10.0.{t}.{i}")}}),
                        )
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!(j.head("cs-net-43").unwrap().pending_drops.len(), 80);
        assert_eq!(j.load("cs-net-43").unwrap().entries.len(), 80);
        assert!(j.load("../x").is_err());
        assert!(j.head("cs-net-42' OR 1=1").is_err());
        drop(j);
        drop(reg);
        // Nothing of the envelope is readable in the database file.
        let text = raw_db(dir.path());
        assert!(!text.contains("VMPASSWORD") && !text.contains("EXECKEY"));
        assert!(!text.contains("implement-network"));
        // Reopened: the state is still there, without the registration details.
        let reg = open(dir.path());
        let j = RegistryJournal::new(reg.clone());
        let s = j.load("cs-net-42").unwrap();
        assert_eq!(s.host.as_deref(), Some("h1"));
        let cmds: Vec<&str> = s.entries.iter().map(|e| e.command.as_str()).collect();
        assert_eq!(cmds, vec!["save-password", "implement-network"]);
        assert_eq!(s.entries[0].envelope["payload"]["password"], "VMPASSWORD");
        assert!(s.entries[0]
            .envelope
            .get("physical-network-extension-details")
            .is_none());
        assert_eq!(reg.journal_count().unwrap(), 2);
        // A teardown removes every row of the key.
        j.record(
            "cs-net-42",
            "h1",
            Command::DestroyNetwork,
            &json!({"payload": {"network_id": "42"}}),
        )
        .unwrap();
        assert_eq!(reg.journal_count().unwrap(), 1);
        assert_eq!(j.load("cs-net-42").unwrap(), JournalState::default());
        let rows: i64 = raw_conn(dir.path())
            .query_row(
                "SELECT COUNT(*) FROM journal_entries WHERE key = 'cs-net-42'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, 0);
    }

    fn env(payload: Value) -> Value {
        json!({
            "physical-network-extension-details": {"hosts": "h1", "executor.key": "SECRET"},
            "network-extension-details": {"host": "h1", "namespace": "cs-net-42"},
            "payload": payload,
        })
    }

    fn tags(s: &JournalState) -> Vec<String> {
        s.entries
            .iter()
            .map(|e| {
                let p = &e.envelope["payload"];
                let tag = p
                    .get("tag")
                    .or(p.get("ip"))
                    .or(p.get("public_ip"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                format!("{}@{tag}", e.command)
            })
            .collect()
    }

    #[test]
    fn rows_follow_the_compaction_rules() {
        let dir = tempfile::tempdir().unwrap();
        let j = RegistryJournal::new(open(dir.path()));
        let k = "cs-net-42";
        let rec = |c: Command, p: Value| j.record(k, "h1", c, &env(p)).unwrap();
        rec(
            Command::ImplementNetwork,
            json!({"network_id": "42", "tag": "i1"}),
        );
        rec(
            Command::AddDnsEntry,
            json!({"network_id": "42", "ip": "10.1.1.5", "tag": "d1"}),
        );
        rec(
            Command::SaveUserdata,
            json!({"network_id": "42", "ip": "10.1.1.5", "tag": "u1"}),
        );
        rec(
            Command::SavePassword,
            json!({"network_id": "42", "ip": "10.1.1.5", "tag": "p1"}),
        );
        rec(
            Command::ApplyLbRules,
            json!({"network_id": "42", "tag": "lb1"}),
        );
        // Upsert in place keeps the position.
        rec(
            Command::ImplementNetwork,
            json!({"network_id": "42", "tag": "i2"}),
        );
        rec(
            Command::AddDnsEntry,
            json!({"network_id": "42", "ip": "10.1.1.5", "tag": "d2"}),
        );
        assert_eq!(
            tags(&j.load(k).unwrap()),
            vec![
                "implement-network@i2",
                "add-dns-entry@d2",
                "save-userdata@u1",
                "save-password@p1",
                "apply-lb-rules@lb1"
            ]
        );
        // save-vm-data supersedes the single items (a prefix range) and
        // moves to the end when repeated.
        rec(
            Command::SaveVmData,
            json!({"network_id": "42", "ip": "10.1.1.5", "tag": "v1"}),
        );
        rec(
            Command::ApplyLbRules,
            json!({"network_id": "42", "tag": "lb2"}),
        );
        rec(
            Command::SaveVmData,
            json!({"network_id": "42", "ip": "10.1.1.5", "tag": "v2"}),
        );
        assert_eq!(
            tags(&j.load(k).unwrap()),
            vec![
                "implement-network@i2",
                "add-dns-entry@d2",
                "apply-lb-rules@lb1",
                "apply-lb-rules@lb2",
                "save-vm-data@v2"
            ]
        );
        // Prefixes are ranges, not patterns: '%' and '_' match themselves.
        rec(
            Command::AddPortForward,
            json!({"network_id": "42", "public_ip": "203.0.113.1", "public_port": "22", "protocol": "tcp"}),
        );
        rec(
            Command::AddPortForward,
            json!({"network_id": "42", "public_ip": "203.0.113.10", "public_port": "22", "protocol": "tcp"}),
        );
        rec(
            Command::ReleaseIp,
            json!({"network_id": "42", "public_ip": "203.0.113.1"}),
        );
        let after: Vec<String> = tags(&j.load(k).unwrap());
        assert!(
            after.contains(&"add-port-forward@203.0.113.10".to_string()),
            "{after:?}"
        );
        assert!(
            !after.contains(&"add-port-forward@203.0.113.1".to_string()),
            "{after:?}"
        );
        rec(
            Command::AddDnsEntry,
            json!({"network_id": "42", "ip": "10.1.1.%", "tag": "pct"}),
        );
        rec(
            Command::ReleaseNic,
            json!({"network_id": "42", "ip": "10.1.1.%"}),
        );
        let after = tags(&j.load(k).unwrap());
        assert!(after.contains(&"add-dns-entry@d2".to_string()), "{after:?}");
        assert!(
            !after.contains(&"add-dns-entry@pct".to_string()),
            "{after:?}"
        );
        // A VPC tier's destroy clears that tier only.
        let v = "cs-vpc-7";
        let recv = |c: Command, p: Value| j.record(v, "h2", c, &env(p)).unwrap();
        recv(Command::ImplementVpc, json!({"vpc_id": "7"}));
        recv(
            Command::ImplementNetwork,
            json!({"vpc_id": "7", "network_id": "50"}),
        );
        recv(
            Command::ImplementNetwork,
            json!({"vpc_id": "7", "network_id": "51"}),
        );
        recv(
            Command::DestroyNetwork,
            json!({"vpc_id": "7", "network_id": "50"}),
        );
        let s = j.load(v).unwrap();
        assert_eq!(s.host.as_deref(), Some("h2"));
        assert_eq!(s.network_ids(), vec!["51"]);
        recv(Command::ShutdownVpc, json!({"vpc_id": "7"}));
        assert_eq!(j.load(v).unwrap(), JournalState::default());
    }

    /// Deterministic pseudo-random commands: rows and the in-memory rules
    /// agree after every step.
    #[test]
    fn rows_match_the_pure_rules_on_random_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let j = RegistryJournal::new(open(dir.path()));
        let mut model = JournalState::default();
        let steps = crate::dispatch::journal::tests::random_steps(600, 0x9e37_79b9_7f4a_7c15);
        for (step, (host, c, e)) in steps.into_iter().enumerate() {
            model.record(host, c, &e);
            j.record("cs-net-42", host, c, &e).unwrap();
            if step % 50 == 0 || step > 580 {
                assert_eq!(j.load("cs-net-42").unwrap(), model, "step {step} ({c})");
            }
        }
    }

    #[test]
    fn version_2_blobs_are_converted() {
        let dir = tempfile::tempdir().unwrap();
        let reg = open(dir.path());
        let mut state = JournalState::default();
        state.record(
            "h1",
            Command::ImplementNetwork,
            &env(json!({"network_id": "42"})),
        );
        state.record(
            "h1",
            Command::AddDnsEntry,
            &env(json!({"network_id": "42", "ip": "10.1.1.5"})),
        );
        state.pending_drops.push(PendingDrop {
            host: "h0".into(),
            network_ids: vec![],
            last_attempt: 5,
        });
        let blob = reg
            .store()
            .cipher()
            .seal(
                &blob_aad("cs-net-42"),
                &serde_json::to_string(&state).unwrap(),
            )
            .unwrap();
        raw_conn(dir.path())
            .execute(
                "INSERT INTO dispatch_journal (key, state, updated) VALUES ('cs-net-42', ?1, 'x'),
                 ('cs-net-43', x'00112233445566778899aabbccddeeff0011223344', 'x')",
                [blob],
            )
            .unwrap();
        drop(reg);
        let reg = open(dir.path());
        let j = RegistryJournal::new(reg.clone());
        assert_eq!(j.load("cs-net-42").unwrap(), state);
        // The blob that does not decrypt stays where it was, unused.
        let left: Vec<String> = {
            let c = raw_conn(dir.path());
            let mut st = c.prepare("SELECT key FROM dispatch_journal").unwrap();
            let rows = st.query_map([], |r| r.get(0)).unwrap();
            rows.collect::<Result<_, _>>().unwrap()
        };
        assert_eq!(left, vec!["cs-net-43".to_string()]);
        assert_eq!(j.load("cs-net-43").unwrap(), JournalState::default());
    }

    #[test]
    fn a_row_moved_to_another_position_does_not_decrypt() {
        let dir = tempfile::tempdir().unwrap();
        let reg = open(dir.path());
        let j = RegistryJournal::new(reg.clone());
        j.record(
            "cs-net-42",
            "h1",
            Command::ImplementNetwork,
            &env(json!({"network_id": "42"})),
        )
        .unwrap();
        raw_conn(dir.path())
            .execute("UPDATE journal_entries SET seq = seq + 5", [])
            .unwrap();
        assert!(j.load("cs-net-42").is_err());
    }
}
