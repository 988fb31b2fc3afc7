//! The bridge's command journal ([`crate::dispatch::CommandJournal`]) in the
//! registry, so the desired state sent for each network/VPC survives
//! restarts and is shared by every process using the same database.
//!
//! One row per key (the network's or VPC's namespace name) in
//! `dispatch_journal`; the JSON [`JournalState`] is sealed with the
//! registry's AES-256-GCM key (bound to the key name), because envelopes may
//! carry VM passwords and user data. Updates are read-modify-write inside
//! one IMMEDIATE transaction, hence atomic per key across threads and
//! processes. An empty state deletes the row.

use std::sync::Arc;

use rusqlite::{params, OptionalExtension};

use super::{now_timestamp, Registry, RegistryError};
use crate::dispatch::{CommandJournal, JournalError, JournalState};

fn aad(key: &str) -> String {
    format!("netbridge/v1/journal/{key}")
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

fn journal_error(e: RegistryError) -> JournalError {
    JournalError(e.to_string())
}

impl Registry {
    fn journal_read(
        &self,
        conn: &rusqlite::Connection,
        key: &str,
    ) -> Result<JournalState, RegistryError> {
        let blob: Option<Vec<u8>> = conn
            .prepare_cached("SELECT state FROM dispatch_journal WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?;
        let Some(blob) = blob else {
            return Ok(JournalState::default());
        };
        let text = self.cipher.open(&aad(key), &blob)?;
        serde_json::from_str(text.expose())
            .map_err(|e| RegistryError::Io(format!("corrupt journal of {key}: {e}")))
    }

    /// Number of journaled networks/VPCs (for status and tests).
    pub fn journal_count(&self) -> Result<usize, RegistryError> {
        self.read(|conn| {
            let n: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM dispatch_journal")?
                .query_row([], |r| r.get(0))?;
            Ok(usize::try_from(n).unwrap_or(0))
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
            .read(|conn| self.registry.journal_read(conn, key))
            .map_err(journal_error)
    }

    fn update(
        &self,
        key: &str,
        change: &mut dyn FnMut(&mut JournalState),
    ) -> Result<JournalState, JournalError> {
        check_key(key)?;
        let reg = &self.registry;
        reg.write(|tx| {
            let mut state = reg.journal_read(tx, key)?;
            change(&mut state);
            if state.entries.is_empty() && state.host.is_none() && state.pending_drops.is_empty() {
                tx.prepare_cached("DELETE FROM dispatch_journal WHERE key = ?1")?
                    .execute([key])?;
            } else {
                let text = serde_json::to_string(&state)
                    .map_err(|e| RegistryError::Io(format!("cannot encode journal: {e}")))?;
                let blob = reg.cipher.seal(&aad(key), &text)?;
                tx.prepare_cached(
                    "INSERT INTO dispatch_journal (key, state, updated) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET state = excluded.state, updated = excluded.updated",
                )?
                .execute(params![key, blob, now_timestamp()])?;
            }
            Ok(state)
        })
        .map_err(journal_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Command;
    use serde_json::json;

    fn open(dir: &std::path::Path) -> Arc<Registry> {
        Arc::new(Registry::open(&dir.join("nb.db"), &dir.join("secret.key")).unwrap())
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
                        j.update("cs-net-43", &mut |st| {
                            st.pending_drops
                                .push(crate::dispatch::journal::PendingDrop {
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
        assert_eq!(j.load("cs-net-43").unwrap().pending_drops.len(), 80);
        assert!(j.load("../x").is_err());
        drop(j);
        drop(reg);
        // Nothing of the envelope is readable in the database file.
        let mut raw = std::fs::read(dir.path().join("nb.db")).unwrap();
        if let Ok(wal) = std::fs::read(dir.path().join("nb.db-wal")) {
            raw.extend(wal);
        }
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains("VMPASSWORD") && !text.contains("EXECKEY"));
        assert!(!text.contains("implement-network"));
        // Reopened: the state is still there, without the registration details.
        let reg = open(dir.path());
        let j = RegistryJournal::new(reg.clone());
        let s = j.load("cs-net-42").unwrap();
        assert_eq!(s.host.as_deref(), Some("h1"));
        let cmds: Vec<&str> = s.entries.iter().map(|e| e.command.as_str()).collect();
        assert_eq!(cmds, vec!["save-password", "implement-network"]);
        assert!(s.entries[0]
            .envelope
            .get("physical-network-extension-details")
            .is_none());
        assert_eq!(reg.journal_count().unwrap(), 2);
        j.update("cs-net-42", &mut |s| *s = JournalState::default())
            .unwrap();
        assert_eq!(reg.journal_count().unwrap(), 1);
        assert_eq!(j.load("cs-net-42").unwrap(), JournalState::default());
    }
}
