//! The embedded store: one SQLite file (the default, and the store of a
//! single management server, the demo and the tests).
//!
//! One connection behind a mutex is the single reader/writer path: SQLite
//! serialises writers anyway, and one connection keeps the prepared-statement
//! cache warm (the API's hot calls stay well under 100 µs). WAL mode, foreign
//! keys on, schema versioned with `PRAGMA user_version`.
//!
//! Hidden details (see [`super::secrets`]) are stored only as AES-256-GCM
//! ciphertext, bound to their row and key.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::{is_hidden_key, rules, Store};
use super::{
    new_uuid, now_timestamp, secrets, Binding, BindingTarget, DetailsUpdate, Extension,
    ExtensionFilter, ExtensionType, ExtensionUpdate, FullDetails, Include, Job, JobFilter,
    JobStatus, NewExtension, NewJob, Provider, ProviderFilter, ProviderRegistration, RegistryError,
    Resource, ResourceType, State, StoredApiKey, StoredOffering,
};
use crate::dispatch::{JournalHead, JournalState};
use crate::offerings::{self, GeneratedOffering, Service};
use netbridge_protocol::Command;
use serde_json::Value;

type Result<T, E = RegistryError> = std::result::Result<T, E>;

const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE extensions (
        id INTEGER PRIMARY KEY,
        uuid TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        description TEXT NOT NULL DEFAULT '',
        type TEXT NOT NULL,
        state TEXT NOT NULL,
        path TEXT NOT NULL,
        created TEXT NOT NULL
    );
    CREATE TABLE extension_details (
        owner INTEGER NOT NULL REFERENCES extensions(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT,
        secret BLOB,
        display INTEGER NOT NULL,
        PRIMARY KEY (owner, key)
    ) WITHOUT ROWID;
    CREATE TABLE registrations (
        id INTEGER PRIMARY KEY,
        uuid TEXT NOT NULL UNIQUE,
        extension_id INTEGER NOT NULL REFERENCES extensions(id) ON DELETE RESTRICT,
        resource_type TEXT NOT NULL,
        resource_id TEXT NOT NULL,
        created TEXT NOT NULL,
        UNIQUE (extension_id, resource_type, resource_id)
    );
    CREATE INDEX registrations_resource ON registrations(resource_type, resource_id);
    CREATE TABLE registration_details (
        owner INTEGER NOT NULL REFERENCES registrations(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT,
        secret BLOB,
        display INTEGER NOT NULL,
        PRIMARY KEY (owner, key)
    ) WITHOUT ROWID;
    CREATE TABLE providers (
        id INTEGER PRIMARY KEY,
        uuid TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL COLLATE NOCASE,
        physical_network_id TEXT NOT NULL,
        state TEXT NOT NULL,
        services TEXT NOT NULL,
        extension_id INTEGER REFERENCES extensions(id) ON DELETE SET NULL,
        created TEXT NOT NULL,
        UNIQUE (name, physical_network_id)
    );
    CREATE INDEX providers_extension ON providers(extension_id);
    CREATE TABLE bindings (
        kind TEXT NOT NULL,
        object_id TEXT NOT NULL,
        extension_id INTEGER NOT NULL REFERENCES extensions(id) ON DELETE RESTRICT,
        physical_network_id TEXT NOT NULL,
        provider TEXT NOT NULL COLLATE NOCASE,
        details TEXT NOT NULL,
        created TEXT NOT NULL,
        PRIMARY KEY (kind, object_id)
    );
    CREATE INDEX bindings_provider ON bindings(provider, physical_network_id);
    CREATE TABLE offerings (
        id INTEGER PRIMARY KEY,
        uuid TEXT NOT NULL UNIQUE,
        extension_id INTEGER NOT NULL REFERENCES extensions(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        command TEXT NOT NULL,
        params TEXT NOT NULL,
        created TEXT NOT NULL,
        UNIQUE (extension_id, name)
    );
    CREATE TABLE offering_services (
        offering INTEGER NOT NULL REFERENCES offerings(id) ON DELETE CASCADE,
        service TEXT NOT NULL,
        PRIMARY KEY (offering, service)
    ) WITHOUT ROWID;
    "#,
    // 2: the bridge's command journal (see `journal`), sealed per key.
    r#"
    CREATE TABLE dispatch_journal (
        key TEXT PRIMARY KEY,
        state BLOB NOT NULL,
        updated TEXT NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 3: the journal stored incrementally: a head per key and a row per
    // entry (envelope sealed per row). Version-2 blobs are converted when the
    // registry is opened (`journal::convert_blobs`), which needs the key.
    r#"
    CREATE TABLE journal_heads (
        key TEXT PRIMARY KEY,
        host TEXT,
        pending_drops TEXT NOT NULL DEFAULT '',
        updated TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE journal_entries (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        seq INTEGER NOT NULL,
        slot BLOB,
        network_id TEXT,
        sealed BLOB NOT NULL
    );
    CREATE UNIQUE INDEX journal_entries_order ON journal_entries(key, seq);
    CREATE UNIQUE INDEX journal_entries_slot ON journal_entries(key, slot);
    "#,
    // 4: CloudStack API fidelity: asynchronous jobs (answered by any process
    // sharing the store, kept across restarts), the names of registered
    // resources, `orchestratorrequirespreparevm`.
    r#"
    ALTER TABLE extensions ADD COLUMN prepare_vm INTEGER;
    CREATE TABLE resource_names (
        resource_type TEXT NOT NULL,
        resource_id TEXT NOT NULL,
        name TEXT NOT NULL,
        updated TEXT NOT NULL,
        PRIMARY KEY (resource_type, resource_id)
    ) WITHOUT ROWID;
    CREATE TABLE async_jobs (
        id INTEGER PRIMARY KEY,
        uuid TEXT NOT NULL UNIQUE,
        command TEXT NOT NULL,
        cmd TEXT NOT NULL,
        status INTEGER NOT NULL,
        result_code INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        instance_type TEXT,
        instance_id TEXT,
        owner TEXT NOT NULL,
        created TEXT NOT NULL,
        completed TEXT
    );
    CREATE INDEX async_jobs_status ON async_jobs(status);
    "#,
    // 5: the HTTP API's admin keys, the secret sealed per key.
    r#"
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        apikey TEXT NOT NULL UNIQUE,
        sealed BLOB NOT NULL,
        created TEXT NOT NULL
    );
    "#,
];

/// What a sealed API secret key is bound to.
fn api_key_aad(apikey: &str) -> String {
    format!("netbridge/v1/api-key/{apikey}")
}

/// The SQLite store; `Send + Sync`.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    pub(super) cipher: secrets::Cipher,
    _checkpointer: Option<Checkpointer>,
}

/// Checkpoints the WAL from a background thread, so that the fsync of a
/// checkpoint does not land inside an API call's commit (p99 latency).
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(database: &Path) -> Option<Checkpointer> {
        let conn = Connection::open(database)
            .and_then(|c| c.busy_timeout(Duration::from_secs(5)).map(|()| c))
            .map_err(|e| log::warn!("no background checkpointer: {e}"))
            .ok()?;
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("netbridge-wal".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(Duration::from_millis(500))
                {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        log::debug!("WAL checkpoint: {e}");
                    }
                }
            })
            .map_err(|e| log::warn!("no background checkpointer: {e}"))
            .ok()?;
        Some(Checkpointer {
            stop: Some(stop),
            handle: Some(handle),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Which details table, and the prefix of the associated data binding a
/// ciphertext to its row.
#[derive(Clone, Copy)]
enum Owner {
    Extension,
    Registration,
}

impl Owner {
    fn aad(self, owner_uuid: &str, key: &str) -> String {
        let kind = match self {
            Owner::Extension => "extension",
            Owner::Registration => "registration",
        };
        format!("netbridge/v1/{kind}/{owner_uuid}/{key}")
    }
}

struct ExtRow {
    rowid: i64,
    ext: Extension,
}

impl SqliteStore {
    /// Opens (creating and migrating) the database and the key file.
    pub fn open(database: &Path, key_file: &Path) -> Result<SqliteStore> {
        let shown = database.display();
        // An existing key is checked first: a bad one creates no database.
        let existing_key = if key_file.exists() {
            Some(secrets::Cipher::load_or_create(key_file)?)
        } else {
            None
        };
        if database.is_dir() {
            return Err(RegistryError::Database(format!(
                "database {shown} is a directory, not a SQLite database file"
            )));
        }
        if let Some(parent) = database.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                RegistryError::Database(format!(
                    "cannot create the directory of database {shown}: {e}"
                ))
            })?;
        }
        let existed = database.exists();
        let mut conn = Connection::open(database)
            .map_err(|e| RegistryError::Database(format!("cannot open database {shown}: {e}")))?;
        if !existed {
            use std::os::unix::fs::PermissionsExt;
            // Nothing secret is in plain text there, but keep it private anyway.
            let _ = std::fs::set_permissions(database, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(Duration::from_secs(5))?;
        // The first read of the file: where a file that is not a database,
        // or one that cannot be read, shows.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::NotADatabase) => RegistryError::Database(format!(
                    "database {shown} is not a SQLite database file"
                )),
                Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::PermissionDenied) => {
                    RegistryError::Database(format!("cannot open database {shown}: {e}"))
                }
                _ => RegistryError::Storage(e),
            })?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!("database {} not in WAL mode ({mode})", database.display());
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.set_prepared_statement_cache_capacity(128);
        migrate(&mut conn)?;
        let cipher = match existing_key {
            Some(cipher) => cipher,
            None => Self::new_key(&conn, key_file)?,
        };
        let checkpointer = Checkpointer::start(database);
        if checkpointer.is_some() {
            // Still bounded if the background thread falls behind.
            conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        }
        let registry = SqliteStore {
            conn: Mutex::new(conn),
            cipher,
            _checkpointer: checkpointer,
        };
        registry.convert_journal_blobs()?;
        Ok(registry)
    }

    /// Creates the key file of a database that holds no secret yet.
    fn new_key(conn: &Connection, key_file: &Path) -> Result<secrets::Cipher> {
        // A fresh key could never decrypt what is stored: refuse instead of
        // silently orphaning the secrets.
        let sealed: i64 = conn.query_row(
            "SELECT (SELECT COUNT(*) FROM extension_details WHERE secret IS NOT NULL)
                  + (SELECT COUNT(*) FROM registration_details WHERE secret IS NOT NULL)",
            [],
            |r| r.get(0),
        )?;
        if sealed > 0 {
            return Err(RegistryError::KeyFile(format!(
                "key file {} is missing but the database holds {sealed} encrypted detail(s); restore the key file",
                key_file.display()
            )));
        }
        secrets::Cipher::load_or_create(key_file)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock rolled its transaction back on drop;
        // the connection itself is still sound.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    pub(super) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.lock();
        f(&conn)
    }

    fn services_changed(
        &self,
        tx: &Transaction<'_>,
        row: &ExtRow,
        old: Option<&str>,
        new: Option<&str>,
    ) -> Result<()> {
        let parse = |v: Option<&str>| -> Vec<Service> {
            v.and_then(|v| offerings::parse_services(v).ok())
                .unwrap_or_default()
        };
        let old = parse(old);
        let new = parse(new);
        for removed in old.iter().filter(|s| !new.contains(s)) {
            let used: i64 = tx
                .prepare_cached(
                    "SELECT COUNT(*) FROM offering_services s JOIN offerings o ON o.id = s.offering
                     WHERE o.extension_id = ?1 AND s.service = ?2",
                )?
                .query_row(params![row.rowid, removed.as_str()], |r| r.get(0))?;
            if used > 0 {
                return Err(RegistryError::Conflict(format!(
                    "Cannot remove service {removed} from extension '{}' as it is used by a network/VPC offering",
                    row.ext.name
                )));
            }
        }
        let list = offerings::services_to_string(&new);
        let changed = tx
            .prepare_cached("UPDATE providers SET services = ?2 WHERE extension_id = ?1")?
            .execute(params![row.rowid, list])?;
        log::info!(
            "extension '{}' services now [{list}]; {changed} provider(s) updated",
            row.ext.name
        );
        Ok(())
    }

    // ---- details internals ------------------------------------------------

    fn put_detail(
        &self,
        tx: &Transaction<'_>,
        owner: Owner,
        rowid: i64,
        owner_uuid: &str,
        key: &str,
        value: &str,
    ) -> Result<()> {
        let sql = match owner {
            Owner::Extension => {
                "INSERT OR REPLACE INTO extension_details (owner, key, value, secret, display) VALUES (?1, ?2, ?3, ?4, ?5)"
            }
            Owner::Registration => {
                "INSERT OR REPLACE INTO registration_details (owner, key, value, secret, display) VALUES (?1, ?2, ?3, ?4, ?5)"
            }
        };
        let mut stmt = tx.prepare_cached(sql)?;
        if is_hidden_key(key) {
            let sealed = self.cipher.seal(&owner.aad(owner_uuid, key), value)?;
            stmt.execute(params![rowid, key, Option::<String>::None, sealed, 0])?;
        } else {
            stmt.execute(params![rowid, key, value, Option::<Vec<u8>>::None, 1])?;
        }
        Ok(())
    }

    /// `cleanup_hidden`: whether `Cleanup` also removes hidden details.
    fn apply_details(
        &self,
        tx: &Transaction<'_>,
        owner: Owner,
        rowid: i64,
        owner_uuid: &str,
        update: &DetailsUpdate,
        cleanup_hidden: bool,
    ) -> Result<()> {
        let (del_visible, del_all) = match owner {
            Owner::Extension => (
                "DELETE FROM extension_details WHERE owner = ?1 AND display = 1",
                "DELETE FROM extension_details WHERE owner = ?1",
            ),
            Owner::Registration => (
                "DELETE FROM registration_details WHERE owner = ?1 AND display = 1",
                "DELETE FROM registration_details WHERE owner = ?1",
            ),
        };
        match update {
            DetailsUpdate::Keep => {}
            DetailsUpdate::Cleanup => {
                let sql = if cleanup_hidden { del_all } else { del_visible };
                tx.prepare_cached(sql)?.execute([rowid])?;
            }
            DetailsUpdate::Replace(details) => {
                tx.prepare_cached(del_visible)?.execute([rowid])?;
                for (k, v) in details {
                    self.put_detail(tx, owner, rowid, owner_uuid, k, v)?;
                }
            }
        }
        Ok(())
    }

    fn full_details(
        &self,
        conn: &Connection,
        owner: Owner,
        rowid: i64,
        owner_uuid: &str,
    ) -> Result<FullDetails> {
        let sql = match owner {
            Owner::Extension => {
                "SELECT key, value, secret, display FROM extension_details WHERE owner = ?1"
            }
            Owner::Registration => {
                "SELECT key, value, secret, display FROM registration_details WHERE owner = ?1"
            }
        };
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map([rowid], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = FullDetails::default();
        for row in rows {
            let (key, value, secret, display) = row?;
            if display != 0 {
                out.visible.insert(key, value.unwrap_or_default());
            } else if let Some(blob) = secret {
                let plain = self.cipher.open(&owner.aad(owner_uuid, &key), &blob)?;
                out.hidden.insert(key, plain);
            }
        }
        Ok(out)
    }
}

impl SqliteStore {
    fn binding_rows(&self) -> Result<Vec<Binding>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT kind, object_id FROM bindings ORDER BY kind, object_id")?;
            let keys: Vec<(String, String)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::with_capacity(keys.len());
            for (kind, id) in keys {
                let target = if kind == "vpc" {
                    BindingTarget::Vpc(id)
                } else {
                    BindingTarget::Network(id)
                };
                out.extend(get_binding(conn, &target)?);
            }
            Ok(out)
        })
    }
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn cipher(&self) -> &secrets::Cipher {
        &self.cipher
    }

    // ---- extensions -------------------------------------------------------

    /// Creates an extension. Conflict: "Extension by name already exists".
    fn create_extension(&self, new: &NewExtension) -> Result<Extension> {
        self.write(|tx| {
            let exists: Option<i64> = tx
                .prepare_cached("SELECT id FROM extensions WHERE name = ?1")?
                .query_row([&new.name], |r| r.get(0))
                .optional()?;
            if exists.is_some() {
                return Err(RegistryError::Conflict(
                    "Extension by name already exists".into(),
                ));
            }
            let uuid = new_uuid();
            tx.prepare_cached(
                "INSERT INTO extensions (uuid, name, description, type, state, path, created, prepare_vm)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                uuid,
                new.name,
                new.description,
                new.ext_type.as_str(),
                new.state.as_str(),
                new.path,
                now_timestamp(),
                new.orchestrator_requires_prepare_vm
            ])?;
            let rowid = tx.last_insert_rowid();
            for (k, v) in &new.details {
                self.put_detail(tx, Owner::Extension, rowid, &uuid, k, v)?;
            }
            load_extension(tx, rowid, Include::ALL)
        })
    }

    /// Updates an extension. With `DetailsUpdate::Cleanup` the visible details
    /// are removed and the hidden ones kept. Service changes in
    /// `network.services` propagate to the extension's providers; removing a
    /// service an offering uses is refused.
    fn update_extension(&self, uuid: &str, update: &ExtensionUpdate) -> Result<Extension> {
        self.write(|tx| {
            let row = ext_by_uuid(tx, uuid)?.ok_or_else(|| not_found_extension(uuid))?;
            if let Some(description) = &update.description {
                tx.prepare_cached("UPDATE extensions SET description = ?2 WHERE id = ?1")?
                    .execute(params![row.rowid, description])?;
            }
            if let Some(state) = update.state {
                tx.prepare_cached("UPDATE extensions SET state = ?2 WHERE id = ?1")?
                    .execute(params![row.rowid, state.as_str()])?;
            }
            if let Some(prepare) = update.orchestrator_requires_prepare_vm {
                tx.prepare_cached("UPDATE extensions SET prepare_vm = ?2 WHERE id = ?1")?
                    .execute(params![row.rowid, prepare])?;
            }
            if update.details != DetailsUpdate::Keep {
                let old = visible_detail(tx, Owner::Extension, row.rowid, offerings::SERVICES_KEY)?;
                self.apply_details(
                    tx,
                    Owner::Extension,
                    row.rowid,
                    &row.ext.id,
                    &update.details,
                    false,
                )?;
                let new = visible_detail(tx, Owner::Extension, row.rowid, offerings::SERVICES_KEY)?;
                if old != new {
                    self.services_changed(tx, &row, old.as_deref(), new.as_deref())?;
                }
            }
            load_extension(tx, row.rowid, Include::ALL)
        })
    }

    /// Deletes an extension; refused while registered anywhere.
    fn delete_extension(&self, uuid: &str) -> Result<()> {
        self.write(|tx| {
            let row = ext_by_uuid(tx, uuid)?.ok_or_else(|| not_found_extension(uuid))?;
            let regs: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM registrations WHERE extension_id = ?1")?
                .query_row([row.rowid], |r| r.get(0))?;
            if regs > 0 {
                return Err(RegistryError::Conflict(
                    "Extension has associated resources, unregister them to delete the extension"
                        .into(),
                ));
            }
            let bound: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM bindings WHERE extension_id = ?1")?
                .query_row([row.rowid], |r| r.get(0))?;
            if bound > 0 {
                return Err(RegistryError::Conflict(format!(
                    "Cannot delete extension '{}' as it is used by {bound} existing network(s)/VPC(s)",
                    row.ext.name
                )));
            }
            tx.prepare_cached("DELETE FROM providers WHERE extension_id = ?1")?
                .execute([row.rowid])?;
            tx.prepare_cached("DELETE FROM extensions WHERE id = ?1")?
                .execute([row.rowid])?;
            Ok(())
        })
    }

    /// One extension by UUID.
    fn get_extension(&self, uuid: &str, include: Include) -> Result<Option<Extension>> {
        self.read(|conn| match ext_rowid(conn, "uuid", uuid)? {
            Some(rowid) => load_extension(conn, rowid, include).map(Some),
            None => Ok(None),
        })
    }

    /// One extension by name (case-insensitive).
    fn find_extension_by_name(&self, name: &str, include: Include) -> Result<Option<Extension>> {
        self.read(|conn| match ext_rowid(conn, "name", name)? {
            Some(rowid) => load_extension(conn, rowid, include).map(Some),
            None => Ok(None),
        })
    }

    /// Extensions matching `filter`: (total count, the requested page).
    fn list_extensions(
        &self,
        filter: &ExtensionFilter,
        include: Include,
        page: Option<(usize, usize)>,
    ) -> Result<(usize, Vec<Extension>)> {
        self.read(|conn| {
            let mut rowids: Vec<i64> = Vec::new();
            let by_resource = filter.resource_id.is_some() || filter.resource_type.is_some();
            if let (Some(id), None, None, None, false) = (
                &filter.id,
                &filter.name,
                &filter.keyword,
                filter.ext_type,
                by_resource,
            ) {
                // Hot path (`listExtensions id=…`): one load, no filtering.
                let found = match ext_rowid(conn, "uuid", id)? {
                    Some(rowid) => vec![load_extension(conn, rowid, include)?],
                    None => Vec::new(),
                };
                let count = found.len();
                let skip = page
                    .map(|(p, s)| p.saturating_sub(1).saturating_mul(s))
                    .unwrap_or(0);
                return Ok((count, found.into_iter().skip(skip).collect()));
            }
            if let Some(id) = &filter.id {
                rowids.extend(ext_rowid(conn, "uuid", id)?);
            } else if by_resource {
                let mut stmt = conn.prepare_cached(
                    "SELECT DISTINCT extension_id FROM registrations
                     WHERE (?1 IS NULL OR resource_id = ?1) AND (?2 IS NULL OR resource_type = ?2)
                     ORDER BY extension_id",
                )?;
                let rows = stmt.query_map(
                    params![filter.resource_id, filter.resource_type.map(ResourceType::as_str)],
                    |r| r.get(0),
                )?;
                for r in rows {
                    rowids.push(r?);
                }
            } else {
                let mut stmt = conn.prepare_cached("SELECT id FROM extensions ORDER BY id")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                for r in rows {
                    rowids.push(r?);
                }
            }
            let keyword = filter.keyword.as_ref().map(|k| k.to_lowercase());
            let mut matching = Vec::new();
            for rowid in rowids {
                let ext = load_extension(
                    conn,
                    rowid,
                    Include {
                        details: false,
                        resources: false,
                    },
                )?;
                if let Some(name) = &filter.name {
                    if !ext.name.eq_ignore_ascii_case(name) {
                        continue;
                    }
                }
                if let Some(t) = filter.ext_type {
                    if ext.ext_type != t {
                        continue;
                    }
                }
                if filter.id.is_some() && by_resource {
                    let registered: i64 = conn
                        .prepare_cached(
                            "SELECT COUNT(*) FROM registrations WHERE extension_id = ?1
                             AND (?2 IS NULL OR resource_id = ?2) AND (?3 IS NULL OR resource_type = ?3)",
                        )?
                        .query_row(
                            params![
                                rowid,
                                filter.resource_id,
                                filter.resource_type.map(ResourceType::as_str)
                            ],
                            |r| r.get(0),
                        )?;
                    if registered == 0 {
                        continue;
                    }
                }
                if let Some(k) = &keyword {
                    if !ext.name.to_lowercase().contains(k)
                        && !ext.description.to_lowercase().contains(k)
                    {
                        continue;
                    }
                }
                matching.push(rowid);
            }
            let count = matching.len();
            let selected: Vec<i64> = match page {
                Some((page, size)) => matching
                    .into_iter()
                    .skip(page.saturating_sub(1).saturating_mul(size))
                    .take(size)
                    .collect(),
                None => matching,
            };
            let mut out = Vec::with_capacity(selected.len());
            for rowid in selected {
                out.push(load_extension(conn, rowid, include)?);
            }
            Ok((count, out))
        })
    }

    /// Every detail of an extension, hidden ones decrypted. Internal use only.
    fn extension_details_full(&self, uuid: &str) -> Result<FullDetails> {
        self.read(|conn| {
            let rowid = ext_rowid(conn, "uuid", uuid)?.ok_or_else(|| not_found_extension(uuid))?;
            self.full_details(conn, Owner::Extension, rowid, uuid)
        })
    }

    // ---- registrations ----------------------------------------------------

    /// Registers an extension with a cluster or physical network; on a
    /// physical network also creates the provider.
    fn register(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
        details: &[(String, String)],
    ) -> Result<Extension> {
        self.write(|tx| {
            let row = ext_by_uuid(tx, ext_uuid)?
                .ok_or_else(rules::unknown_extension)?;
            match resource_type {
                ResourceType::PhysicalNetwork => {
                    rules::check_registrable(&row.ext, resource_type)?;
                    if registration_rowid(tx, row.rowid, resource_type, resource_id)?.is_some() {
                        return Err(rules::already_registered(&row.ext.name, resource_type, resource_id));
                    }
                }
                ResourceType::Cluster => {
                    let existing: Option<String> = tx
                        .prepare_cached(
                            "SELECT e.name FROM registrations r JOIN extensions e ON e.id = r.extension_id
                             WHERE r.resource_type = 'Cluster' AND r.resource_id = ?1",
                        )?
                        .query_row([resource_id], |r| r.get(0))
                        .optional()?;
                    if let Some(name) = existing {
                        return Err(rules::already_registered(&name, resource_type, resource_id));
                    }
                }
            }
            let reg_uuid = new_uuid();
            tx.prepare_cached(
                "INSERT INTO registrations (uuid, extension_id, resource_type, resource_id, created)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                reg_uuid,
                row.rowid,
                resource_type.as_str(),
                resource_id,
                now_timestamp()
            ])?;
            let reg_rowid = tx.last_insert_rowid();
            for (k, v) in details {
                self.put_detail(tx, Owner::Registration, reg_rowid, &reg_uuid, k, v)?;
            }
            if resource_type == ResourceType::PhysicalNetwork {
                let services = visible_detail(tx, Owner::Extension, row.rowid, offerings::SERVICES_KEY)?
                    .and_then(|v| offerings::parse_services(&v).ok())
                    .unwrap_or_default();
                let created = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO providers
                         (uuid, name, physical_network_id, state, services, extension_id, created)
                         VALUES (?1, ?2, ?3, 'Enabled', ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        new_uuid(),
                        row.ext.name,
                        resource_id,
                        offerings::services_to_string(&services),
                        row.rowid,
                        now_timestamp()
                    ])?;
                if created == 0 {
                    log::info!(
                        "provider '{}' already exists on physical network {resource_id}; left as it is",
                        row.ext.name
                    );
                }
            }
            log::info!(
                "registered extension '{}' with {} {resource_id}",
                row.ext.name,
                resource_type.as_str()
            );
            load_extension(tx, row.rowid, Include::ALL)
        })
    }

    /// Unregisters; refused while a binding uses the provider on that
    /// physical network. No mapping: silent success.
    fn unregister(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
    ) -> Result<Extension> {
        self.write(|tx| {
            let row = ext_by_uuid(tx, ext_uuid)?
                .ok_or_else(rules::unknown_extension)?;
            let Some((reg_rowid, _)) = registration_rowid(tx, row.rowid, resource_type, resource_id)?
            else {
                return load_extension(tx, row.rowid, Include::ALL);
            };
            if resource_type == ResourceType::PhysicalNetwork {
                let used: i64 = tx
                    .prepare_cached(
                        "SELECT COUNT(*) FROM bindings WHERE provider = ?1 AND physical_network_id = ?2",
                    )?
                    .query_row(params![row.ext.name, resource_id], |r| r.get(0))?;
                if used > 0 {
                    return Err(RegistryError::Conflict(format!(
                        "Cannot unregister extension '{}' from physical network {resource_id}. Provider is used by {used} existing network service(s)",
                        row.ext.name
                    )));
                }
                tx.prepare_cached(
                    "DELETE FROM providers WHERE extension_id = ?1 AND physical_network_id = ?2",
                )?
                .execute(params![row.rowid, resource_id])?;
            }
            tx.prepare_cached("DELETE FROM registrations WHERE id = ?1")?
                .execute([reg_rowid])?;
            log::info!(
                "unregistered extension '{}' from {} {resource_id}",
                row.ext.name,
                resource_type.as_str()
            );
            load_extension(tx, row.rowid, Include::ALL)
        })
    }

    /// `updateRegisteredExtension`: `Cleanup` removes every detail (hidden
    /// too); `Replace` keeps existing hidden keys not re-sent and drops
    /// visible keys not re-sent; `Keep` changes nothing.
    fn update_registration_details(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
        update: &DetailsUpdate,
    ) -> Result<Extension> {
        self.write(|tx| {
            let row = ext_by_uuid(tx, ext_uuid)?.ok_or_else(rules::unknown_extension)?;
            let (reg_rowid, reg_uuid) =
                registration_rowid(tx, row.rowid, resource_type, resource_id)?.ok_or_else(
                    || {
                        RegistryError::Invalid(format!(
                            "Extension '{}' is not registered with resource {resource_id} ({})",
                            row.ext.name,
                            resource_type.as_str()
                        ))
                    },
                )?;
            self.apply_details(tx, Owner::Registration, reg_rowid, &reg_uuid, update, true)?;
            load_extension(tx, row.rowid, Include::ALL)
        })
    }

    /// Every detail of a registration, hidden ones decrypted (e.g.
    /// `executor.key`). Internal use only.
    fn registration_details_full(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
    ) -> Result<FullDetails> {
        self.read(|conn| {
            let rowid =
                ext_rowid(conn, "uuid", ext_uuid)?.ok_or_else(|| not_found_extension(ext_uuid))?;
            let (reg_rowid, reg_uuid) =
                registration_rowid(conn, rowid, resource_type, resource_id)?.ok_or_else(|| {
                    RegistryError::NotFound(format!(
                        "Extension {ext_uuid} is not registered with resource {resource_id} ({})",
                        resource_type.as_str()
                    ))
                })?;
            self.full_details(conn, Owner::Registration, reg_rowid, &reg_uuid)
        })
    }

    /// What dispatch needs to reach the executors behind provider
    /// `provider_name` (= extension name, case-insensitive) on a physical
    /// network: the extension, its provider row and the registration's
    /// details with hidden ones decrypted. `None` when not registered there.
    fn registration_for_provider(
        &self,
        provider_name: &str,
        physical_network_id: &str,
    ) -> Result<Option<ProviderRegistration>> {
        self.read(|conn| {
            let Some(rowid) = ext_rowid(conn, "name", provider_name)? else {
                return Ok(None);
            };
            let Some((reg_rowid, reg_uuid)) = registration_rowid(
                conn,
                rowid,
                ResourceType::PhysicalNetwork,
                physical_network_id,
            )?
            else {
                return Ok(None);
            };
            let extension = load_extension(conn, rowid, Include::ALL)?;
            let provider = conn
                .prepare_cached(
                    "SELECT p.uuid, p.name, p.physical_network_id, p.state, p.services, e.uuid, p.created
                     FROM providers p LEFT JOIN extensions e ON e.id = p.extension_id
                     WHERE p.name = ?1 AND p.physical_network_id = ?2",
                )?
                .query_row(params![extension.name, physical_network_id], provider_from_row)
                .optional()?;
            let details = self.full_details(conn, Owner::Registration, reg_rowid, &reg_uuid)?;
            Ok(Some(ProviderRegistration {
                extension,
                provider,
                details,
            }))
        })
    }

    /// Extensions registered with a physical network (with their visible
    /// details and registrations), in registration order.
    fn extensions_on_physical_network(&self, physical_network_id: &str) -> Result<Vec<Extension>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT extension_id FROM registrations
                 WHERE resource_type = 'PhysicalNetwork' AND resource_id = ?1 ORDER BY id",
            )?;
            let ids: Vec<i64> = stmt
                .query_map([physical_network_id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            ids.into_iter()
                .map(|id| load_extension(conn, id, Include::ALL))
                .collect()
        })
    }

    // ---- providers --------------------------------------------------------

    /// Providers created by registration.
    fn list_providers(&self, filter: &ProviderFilter) -> Result<Vec<Provider>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT p.uuid, p.name, p.physical_network_id, p.state, p.services, e.uuid, p.created
                 FROM providers p LEFT JOIN extensions e ON e.id = p.extension_id
                 WHERE (?1 IS NULL OR p.uuid = ?1) AND (?2 IS NULL OR p.name = ?2)
                   AND (?3 IS NULL OR p.physical_network_id = ?3) AND (?4 IS NULL OR p.state = ?4)
                 ORDER BY p.id",
            )?;
            let rows = stmt.query_map(
                params![
                    filter.id,
                    filter.name,
                    filter.physical_network_id,
                    filter.state.map(State::as_str)
                ],
                provider_from_row,
            )?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Changes a provider's state and/or service list.
    fn update_provider(
        &self,
        uuid: &str,
        state: Option<State>,
        services: Option<&[Service]>,
    ) -> Result<Provider> {
        self.write(|tx| {
            tx
                .prepare_cached(
                    "SELECT p.uuid, p.name, p.physical_network_id, p.state, p.services, e.uuid, p.created
                     FROM providers p LEFT JOIN extensions e ON e.id = p.extension_id WHERE p.uuid = ?1",
                )?
                .query_row([uuid], provider_from_row)
                .optional()?
                .ok_or_else(|| {
                    RegistryError::NotFound(format!(
                        "Unable to find network service provider with id {uuid}"
                    ))
                })?;
            if let Some(state) = state {
                tx.prepare_cached("UPDATE providers SET state = ?2 WHERE uuid = ?1")?
                    .execute(params![uuid, state.as_str()])?;
            }
            if let Some(services) = services {
                tx.prepare_cached("UPDATE providers SET services = ?2 WHERE uuid = ?1")?
                    .execute(params![uuid, offerings::services_to_string(services)])?;
            }
            Ok(tx
                .prepare_cached(
                    "SELECT p.uuid, p.name, p.physical_network_id, p.state, p.services, e.uuid, p.created
                     FROM providers p LEFT JOIN extensions e ON e.id = p.extension_id WHERE p.uuid = ?1",
                )?
                .query_row([uuid], provider_from_row)?)
        })
    }

    // ---- bindings ---------------------------------------------------------

    /// Records (or replaces) the device binding of a network or VPC: the
    /// `extension.details` JSON and the provider/physical network it uses.
    fn bind(
        &self,
        target: &BindingTarget,
        ext_uuid: &str,
        physical_network_id: &str,
        details_json: &str,
    ) -> Result<Binding> {
        serde_json::from_str::<serde_json::Value>(details_json).map_err(|_| {
            RegistryError::Invalid("extension.details of a binding must be valid JSON".into())
        })?;
        self.write(|tx| {
            let row = ext_by_uuid(tx, ext_uuid)?.ok_or_else(|| not_found_extension(ext_uuid))?;
            let (kind, object_id) = target.parts();
            tx.prepare_cached(
                "INSERT INTO bindings (kind, object_id, extension_id, physical_network_id, provider, details, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (kind, object_id) DO UPDATE SET extension_id = excluded.extension_id,
                   physical_network_id = excluded.physical_network_id, provider = excluded.provider,
                   details = excluded.details",
            )?
            .execute(params![
                kind,
                object_id,
                row.rowid,
                physical_network_id,
                row.ext.name,
                details_json,
                now_timestamp()
            ])?;
            get_binding(tx, target)?
                .ok_or_else(|| RegistryError::Io("binding vanished after write".into()))
        })
    }

    /// Removes a binding; returns whether one existed.
    fn unbind(&self, target: &BindingTarget) -> Result<bool> {
        self.write(|tx| {
            let (kind, object_id) = target.parts();
            Ok(tx
                .prepare_cached("DELETE FROM bindings WHERE kind = ?1 AND object_id = ?2")?
                .execute(params![kind, object_id])?
                > 0)
        })
    }

    /// The binding of a network or VPC, if any.
    fn get_binding(&self, target: &BindingTarget) -> Result<Option<Binding>> {
        self.read(|conn| get_binding(conn, target))
    }

    /// Number of networks/VPCs using provider `provider` on a physical network.
    fn count_bindings(&self, provider: &str, physical_network_id: &str) -> Result<usize> {
        self.read(|conn| {
            let n: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM bindings WHERE provider = ?1 AND physical_network_id = ?2",
                )?
                .query_row(params![provider, physical_network_id], |r| r.get(0))?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    // ---- offerings --------------------------------------------------------

    /// Stores generated offerings (replacing same-named ones of the extension).
    fn store_offerings(
        &self,
        ext_uuid: &str,
        generated: &[GeneratedOffering],
    ) -> Result<Vec<StoredOffering>> {
        self.write(|tx| {
            let row = ext_by_uuid(tx, ext_uuid)?.ok_or_else(|| not_found_extension(ext_uuid))?;
            let mut out = Vec::new();
            for g in generated {
                tx.prepare_cached("DELETE FROM offerings WHERE extension_id = ?1 AND name = ?2")?
                    .execute(params![row.rowid, g.name])?;
                let params_json = serde_json::to_string(&g.params)
                    .map_err(|e| RegistryError::Io(format!("cannot encode offering: {e}")))?;
                let uuid = new_uuid();
                tx.prepare_cached(
                    "INSERT INTO offerings (uuid, extension_id, kind, name, command, params, created)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    uuid,
                    row.rowid,
                    g.kind.as_str(),
                    g.name,
                    g.command,
                    params_json,
                    now_timestamp()
                ])?;
                let offering = tx.last_insert_rowid();
                for s in &g.services {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO offering_services (offering, service) VALUES (?1, ?2)",
                    )?
                    .execute(params![offering, s.as_str()])?;
                }
                out.extend(load_offering(tx, offering, &row.ext.id)?);
            }
            Ok(out)
        })
    }

    /// Offerings generated for an extension.
    fn list_offerings(&self, ext_uuid: &str) -> Result<Vec<StoredOffering>> {
        self.read(|conn| {
            let rowid =
                ext_rowid(conn, "uuid", ext_uuid)?.ok_or_else(|| not_found_extension(ext_uuid))?;
            let mut stmt = conn
                .prepare_cached("SELECT id FROM offerings WHERE extension_id = ?1 ORDER BY id")?;
            let ids: Vec<i64> = stmt
                .query_map([rowid], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::new();
            for id in ids {
                out.extend(load_offering(conn, id, ext_uuid)?);
            }
            Ok(out)
        })
    }

    /// Forgets a generated offering (e.g. after it was deleted in CloudStack),
    /// which frees its services for removal. Returns whether one existed.
    fn delete_offering(&self, ext_uuid: &str, name: &str) -> Result<bool> {
        self.write(|tx| {
            let row = ext_by_uuid(tx, ext_uuid)?.ok_or_else(|| not_found_extension(ext_uuid))?;
            Ok(tx
                .prepare_cached("DELETE FROM offerings WHERE extension_id = ?1 AND name = ?2")?
                .execute(params![row.rowid, name])?
                > 0)
        })
    }

    fn journal_load(&self, key: &str) -> Result<JournalState> {
        self.journal_load_rows(key)
    }

    fn journal_head(&self, key: &str) -> Result<JournalHead> {
        self.journal_head_row(key)
    }

    fn journal_update_head(
        &self,
        key: &str,
        change: &mut dyn FnMut(&mut JournalHead),
    ) -> Result<JournalHead> {
        self.journal_update_head_row(key, change)
    }

    fn journal_record(
        &self,
        key: &str,
        host: &str,
        command: Command,
        envelope: &Value,
    ) -> Result<()> {
        self.journal_record_rows(key, host, command, envelope)
    }

    fn journal_count(&self) -> Result<usize> {
        self.journal_count_rows()
    }

    fn journal_keys(&self) -> Result<Vec<String>> {
        self.journal_key_rows()
    }

    fn list_bindings(&self) -> Result<Vec<Binding>> {
        self.binding_rows()
    }

    fn journal_replace(&self, key: &str, state: &JournalState) -> Result<()> {
        self.write(|tx| self.journal_replace_rows(tx, key, state))
    }

    fn set_registration_created(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
        created: &str,
    ) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached(
                "UPDATE registrations SET created = ?4 WHERE resource_type = ?2 AND resource_id = ?3
                   AND extension_id = (SELECT id FROM extensions WHERE uuid = ?1)",
            )?
            .execute(params![ext_uuid, resource_type.as_str(), resource_id, created])?;
            Ok(())
        })
    }

    fn resource_exists(&self, _resource_type: ResourceType, _uuid: &str) -> Result<bool> {
        Ok(true)
    }

    fn remember_resource_name(
        &self,
        resource_type: ResourceType,
        resource_id: &str,
        name: &str,
    ) -> Result<()> {
        let known: Option<String> = self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT name FROM resource_names WHERE resource_type = ?1 AND resource_id = ?2",
                )?
                .query_row(params![resource_type.as_str(), resource_id], |r| r.get(0))
                .optional()?)
        })?;
        if known.as_deref() == Some(name) {
            return Ok(());
        }
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO resource_names (resource_type, resource_id, name, updated)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (resource_type, resource_id) DO UPDATE SET name = excluded.name,
                   updated = excluded.updated",
            )?
            .execute(params![
                resource_type.as_str(),
                resource_id,
                name,
                now_timestamp()
            ])?;
            Ok(())
        })
    }

    /// Creates a pending job.
    fn create_job(&self, new: &NewJob) -> Result<Job> {
        self.write(|tx| {
            let uuid = new_uuid();
            tx.prepare_cached(
                "INSERT INTO async_jobs (uuid, command, cmd, status, instance_type, instance_id, owner, created)
                 VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                uuid,
                new.command,
                new.cmd,
                new.instance_type,
                new.instance_id,
                new.owner,
                now_timestamp()
            ])?;
            load_job(tx, &uuid)?.ok_or_else(|| RegistryError::Io("job vanished after write".into()))
        })
    }

    /// Completes a pending job with its result (`jobresult` JSON text).
    /// A job already completed is left as it is; returns whether it changed.
    fn complete_job(
        &self,
        uuid: &str,
        status: JobStatus,
        result_code: i64,
        result: &str,
    ) -> Result<bool> {
        self.write(|tx| {
            Ok(tx
                .prepare_cached(
                    "UPDATE async_jobs SET status = ?2, result_code = ?3, result = ?4, completed = ?5
                     WHERE uuid = ?1 AND status = 0",
                )?
                .execute(params![
                    uuid,
                    status as i64,
                    result_code,
                    result,
                    now_timestamp()
                ])?
                > 0)
        })
    }

    /// One job by id.
    fn get_job(&self, uuid: &str) -> Result<Option<Job>> {
        self.read(|conn| load_job(conn, uuid))
    }

    /// Jobs, oldest first.
    fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT uuid FROM async_jobs
                 WHERE (?1 IS NULL OR created >= ?1)
                   AND (?2 IS NULL OR instr(lower(command), lower(?2)) > 0)
                   AND (?3 = 0 OR status = 0)
                 ORDER BY id",
            )?;
            let ids: Vec<String> = stmt
                .query_map(
                    params![filter.created_since, filter.keyword, filter.pending_only],
                    |r| r.get(0),
                )?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.extend(load_job(conn, &id)?);
            }
            Ok(out)
        })
    }

    fn api_keys(&self) -> Result<Vec<StoredApiKey>> {
        let rows: Vec<(String, String, Vec<u8>)> = self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT name, apikey, sealed FROM api_keys ORDER BY id")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })?;
        rows.into_iter()
            .map(|(name, apikey, sealed)| {
                let secretkey = self.cipher.open(&api_key_aad(&apikey), &sealed)?;
                Ok(StoredApiKey {
                    name,
                    apikey,
                    secretkey,
                })
            })
            .collect()
    }

    fn add_api_key(&self, name: &str, apikey: &str, secretkey: &str) -> Result<()> {
        let sealed = self.cipher.seal(&api_key_aad(apikey), secretkey)?;
        self.write(|tx| {
            let taken: Option<i64> = tx
                .prepare_cached("SELECT id FROM api_keys WHERE name = ?1 OR apikey = ?2")?
                .query_row(params![name, apikey], |r| r.get(0))
                .optional()?;
            if taken.is_some() {
                return Err(RegistryError::Conflict(format!(
                    "a key named '{name}' already exists"
                )));
            }
            tx.prepare_cached(
                "INSERT INTO api_keys (name, apikey, sealed, created) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![name, apikey, sealed, now_timestamp()])?;
            Ok(())
        })
    }

    fn import_extension(&self, ext: &Extension, details: &FullDetails) -> Result<()> {
        self.write(|tx| {
            let taken: Option<i64> = tx
                .prepare_cached("SELECT id FROM extensions WHERE uuid = ?1 OR name = ?2")?
                .query_row(params![ext.id, ext.name], |r| r.get(0))
                .optional()?;
            if taken.is_some() {
                return Err(RegistryError::Conflict(format!(
                    "extension '{}' ({}) already exists",
                    ext.name, ext.id
                )));
            }
            tx.prepare_cached(
                "INSERT INTO extensions (uuid, name, description, type, state, path, created, prepare_vm)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                ext.id,
                ext.name,
                ext.description,
                ext.ext_type.as_str(),
                ext.state.as_str(),
                ext.path,
                ext.created,
                ext.orchestrator_requires_prepare_vm
            ])?;
            let rowid = tx.last_insert_rowid();
            for (k, v) in details.merged() {
                self.put_detail(tx, Owner::Extension, rowid, &ext.id, &k, &v)?;
            }
            Ok(())
        })
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let target = MIGRATIONS.len() as i64;
    loop {
        // The version is read inside the write transaction so that two
        // processes opening a new database do not both run a migration.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > target {
            return Err(RegistryError::Io(format!(
                "database schema version {version} is newer than this build supports ({target})"
            )));
        }
        let Some(sql) = usize::try_from(version)
            .ok()
            .and_then(|v| MIGRATIONS.get(v))
        else {
            return Ok(());
        };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
        log::info!("registry schema migrated to version {}", version + 1);
    }
}

fn not_found_extension(uuid: &str) -> RegistryError {
    RegistryError::NotFound(format!("Unable to find extension with id {uuid}"))
}

fn ext_rowid(conn: &Connection, column: &str, value: &str) -> Result<Option<i64>> {
    let sql = if column == "name" {
        "SELECT id FROM extensions WHERE name = ?1"
    } else {
        "SELECT id FROM extensions WHERE uuid = ?1"
    };
    Ok(conn
        .prepare_cached(sql)?
        .query_row([value], |r| r.get(0))
        .optional()?)
}

fn ext_by_uuid(conn: &Connection, uuid: &str) -> Result<Option<ExtRow>> {
    match ext_rowid(conn, "uuid", uuid)? {
        Some(rowid) => Ok(Some(ExtRow {
            rowid,
            ext: load_extension(
                conn,
                rowid,
                Include {
                    details: false,
                    resources: false,
                },
            )?,
        })),
        None => Ok(None),
    }
}

fn registration_rowid(
    conn: &Connection,
    ext_rowid: i64,
    resource_type: ResourceType,
    resource_id: &str,
) -> Result<Option<(i64, String)>> {
    Ok(conn
        .prepare_cached(
            "SELECT id, uuid FROM registrations
             WHERE extension_id = ?1 AND resource_type = ?2 AND resource_id = ?3",
        )?
        .query_row(
            params![ext_rowid, resource_type.as_str(), resource_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

fn visible_detail(
    conn: &Connection,
    owner: Owner,
    rowid: i64,
    key: &str,
) -> Result<Option<String>> {
    let sql = match owner {
        Owner::Extension => {
            "SELECT value FROM extension_details WHERE owner = ?1 AND key = ?2 AND display = 1"
        }
        Owner::Registration => {
            "SELECT value FROM registration_details WHERE owner = ?1 AND key = ?2 AND display = 1"
        }
    };
    Ok(conn
        .prepare_cached(sql)?
        .query_row(params![rowid, key], |r| r.get::<_, Option<String>>(0))
        .optional()?
        .flatten())
}

fn visible_details(
    conn: &Connection,
    owner: Owner,
    rowid: i64,
) -> Result<BTreeMap<String, String>> {
    let sql = match owner {
        Owner::Extension => {
            "SELECT key, value FROM extension_details WHERE owner = ?1 AND display = 1"
        }
        Owner::Registration => {
            "SELECT key, value FROM registration_details WHERE owner = ?1 AND display = 1"
        }
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([rowid], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (k, v) = row?;
        out.insert(k, v.unwrap_or_default());
    }
    Ok(out)
}

fn load_extension(conn: &Connection, rowid: i64, include: Include) -> Result<Extension> {
    let mut ext = conn
        .prepare_cached(
            "SELECT uuid, name, description, type, state, path, created, prepare_vm FROM extensions WHERE id = ?1",
        )?
        .query_row([rowid], |r| {
            let t: String = r.get(3)?;
            let s: String = r.get(4)?;
            Ok(Extension {
                id: r.get(0)?,
                name: r.get(1)?,
                description: r.get(2)?,
                ext_type: ExtensionType::parse(&t).unwrap_or(ExtensionType::Orchestrator),
                state: State::parse(&s).unwrap_or(State::Disabled),
                path: r.get(5)?,
                created: r.get(6)?,
                orchestrator_requires_prepare_vm: r.get(7)?,
                details: BTreeMap::new(),
                resources: Vec::new(),
            })
        })?;
    if include.details {
        ext.details = visible_details(conn, Owner::Extension, rowid)?;
    }
    if include.resources {
        // One pass: registrations with their visible details (LEFT JOIN keeps
        // registrations without details).
        let mut stmt = conn.prepare_cached(
            "SELECT r.id, r.resource_type, r.resource_id, r.created, d.key, d.value, n.name
             FROM registrations r
             LEFT JOIN registration_details d ON d.owner = r.id AND d.display = 1
             LEFT JOIN resource_names n
               ON n.resource_type = r.resource_type AND n.resource_id = r.resource_id
             WHERE r.extension_id = ?1 ORDER BY r.id",
        )?;
        let mut rows = stmt.query([rowid])?;
        let mut last: Option<i64> = None;
        while let Some(row) = rows.next()? {
            let reg_rowid: i64 = row.get(0)?;
            if last != Some(reg_rowid) {
                last = Some(reg_rowid);
                let rt: String = row.get(1)?;
                ext.resources.push(Resource {
                    id: row.get(2)?,
                    name: row.get(6)?,
                    resource_type: ResourceType::parse(&rt).unwrap_or(ResourceType::Cluster),
                    created: row.get(3)?,
                    details: BTreeMap::new(),
                });
            }
            if let (Some(key), Some(resource)) =
                (row.get::<_, Option<String>>(4)?, ext.resources.last_mut())
            {
                let value: Option<String> = row.get(5)?;
                resource.details.insert(key, value.unwrap_or_default());
            }
        }
    }
    Ok(ext)
}

fn provider_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Provider> {
    let state: String = r.get(3)?;
    let services: String = r.get(4)?;
    Ok(Provider {
        id: r.get(0)?,
        name: r.get(1)?,
        physical_network_id: r.get(2)?,
        state: State::parse(&state).unwrap_or(State::Disabled),
        services: services
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        extension_id: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
        created: r.get(6)?,
    })
}

fn get_binding(conn: &Connection, target: &BindingTarget) -> Result<Option<Binding>> {
    let (kind, object_id) = target.parts();
    Ok(conn
        .prepare_cached(
            "SELECT e.uuid, b.physical_network_id, b.provider, b.details, b.created
             FROM bindings b JOIN extensions e ON e.id = b.extension_id
             WHERE b.kind = ?1 AND b.object_id = ?2",
        )?
        .query_row(params![kind, object_id], |r| {
            Ok(Binding {
                target: target.clone(),
                extension_id: r.get(0)?,
                physical_network_id: r.get(1)?,
                provider: r.get(2)?,
                details: r.get(3)?,
                created: r.get(4)?,
            })
        })
        .optional()?)
}

fn load_job(conn: &Connection, uuid: &str) -> Result<Option<Job>> {
    Ok(conn
        .prepare_cached(
            "SELECT uuid, command, cmd, status, result_code, result, instance_type, instance_id,
                    owner, created, completed
             FROM async_jobs WHERE uuid = ?1",
        )?
        .query_row([uuid], |r| {
            Ok(Job {
                id: r.get(0)?,
                command: r.get(1)?,
                cmd: r.get(2)?,
                status: JobStatus::from_code(r.get(3)?),
                result_code: r.get(4)?,
                result: r.get(5)?,
                instance_type: r.get(6)?,
                instance_id: r.get(7)?,
                owner: r.get(8)?,
                created: r.get(9)?,
                completed: r.get(10)?,
            })
        })
        .optional()?)
}

fn load_offering(conn: &Connection, rowid: i64, ext_uuid: &str) -> Result<Option<StoredOffering>> {
    let row = conn
        .prepare_cached(
            "SELECT uuid, kind, name, command, params, created FROM offerings WHERE id = ?1",
        )?
        .query_row([rowid], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .optional()?;
    let Some((uuid, kind, name, command, params_json, created)) = row else {
        return Ok(None);
    };
    let params: Vec<(String, String)> = serde_json::from_str(&params_json)
        .map_err(|e| RegistryError::Io(format!("stored offering {uuid} is corrupt: {e}")))?;
    let mut services: Vec<String> = conn
        .prepare_cached("SELECT service FROM offering_services WHERE offering = ?1")?
        .query_map([rowid], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    // Keep CloudStack's service order rather than alphabetical.
    services.sort_by_key(|s| Service::parse(s).map(|s| s as usize).unwrap_or(usize::MAX));
    Ok(Some(StoredOffering {
        id: uuid,
        extension_id: ext_uuid.to_string(),
        kind,
        name,
        command,
        params,
        services,
        created,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_versioned_and_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("r.db");
        let key = dir.path().join("k");
        drop(SqliteStore::open(&db, &key).unwrap());
        let conn = Connection::open(&db).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        // Reopening an up-to-date database is a no-op.
        drop(SqliteStore::open(&db, &key).unwrap());
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = SqliteStore::open(&db, &key).err().unwrap().to_string();
        assert!(err.contains("schema version 99 is newer"), "{err}");
    }

    #[test]
    fn foreign_keys_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let r = SqliteStore::open(&dir.path().join("r.db"), &dir.path().join("k")).unwrap();
        let conn = r.lock();
        let err = conn.execute(
            "INSERT INTO registrations (uuid, extension_id, resource_type, resource_id, created)
             VALUES ('x', 12345, 'Cluster', 'y', 'z')",
            [],
        );
        assert!(err.is_err());
    }
}
