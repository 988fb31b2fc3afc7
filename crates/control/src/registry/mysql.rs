//! The shared store: CloudStack's own MySQL/MariaDB database, used by every
//! management server at once.
//!
//! # Tables
//!
//! What CloudStack owns is kept in CloudStack's tables, with CloudStack's
//! semantics, so a management server and netbridge see the same rows:
//! - `extension` (numeric `id`, `uuid`, `relative_path`, `state`, `created`,
//!   soft delete through `removed`) and `extension_details` (`name`,
//!   `value`, `display`);
//! - `extension_resource_map` (`resource_id` is the numeric id of the
//!   `physical_network` or `cluster` row whose `uuid` the API names; soft
//!   delete through `removed`) and `extension_resource_map_details`;
//! - `physical_network_service_providers`: the provider row registration
//!   creates (one `*_service_provided` flag per service).
//!
//! netbridge never creates or alters those: [`MysqlStore::open`] checks that
//! they exist with the columns and widths of CloudStack 4.23 and otherwise
//! refuses, naming the table and column. What only netbridge knows lives in
//! its own tables, all prefixed `netbridge_` and migrated by netbridge
//! (schema version in `netbridge_schema`): device bindings, generated
//! offerings, the failover journal (`netbridge_journal_heads`,
//! `netbridge_journal_entries`) and the lock rows (`netbridge_locks`).
//!
//! # Secrets
//!
//! A hidden detail is stored with `display=0` as CloudStack does, and its
//! value is never plain text: [`SEALED_PREFIX`] followed by the base64 of
//! the AES-256-GCM nonce and ciphertext, bound to the detail's name. CloudStack
//! hands such values to the extension's script unchanged; the entry point
//! and the library, which hold the same key file on every management
//! server, decrypt them ([`reveal_sealed_details`]).
//!
//! # Concurrency
//!
//! Every read-modify-write is one transaction (READ COMMITTED) that first
//! writes a lock row: `netbridge_locks` for the control plane (per
//! extension, per cluster, and one row for extension names), the journal's
//! head row for a network's journal. A write (not only `SELECT … FOR
//! UPDATE`) is what both serialises writers on one server and makes
//! conflicting transactions fail certification on a Galera cluster.
//! Deadlocks, lock wait timeouts and certification failures roll back and
//! are retried up to [`MAX_ATTEMPTS`] times, then answer
//! [`RegistryError::Busy`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use mysql::prelude::Queryable;
use mysql::{Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, Transaction, TxOpts};
use serde_json::Value;

use super::journal::{corrupt, encode_drops, open_entry, seal_entry};
use super::location::MysqlLocation;
use super::{
    is_hidden_key, new_uuid, rules, secrets, Binding, BindingTarget, DetailsUpdate, Extension,
    ExtensionFilter, ExtensionType, ExtensionUpdate, FullDetails, Include, Job, JobFilter,
    JobStatus, NewExtension, NewJob, Provider, ProviderFilter, ProviderRegistration, RegistryError,
    Resource, ResourceType, Secret, State, Store, StoredApiKey, StoredOffering,
};
use crate::dispatch::journal::{check_key, prefix_end, Change, Effect, JournalEntry};
use crate::dispatch::{JournalHead, JournalState};
use crate::offerings::{self, GeneratedOffering, Service};
use netbridge_protocol::Command;

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Prefix of a sealed detail value: `netbridge:aes256gcm:v1:<base64>`.
pub const SEALED_PREFIX: &str = "netbridge:aes256gcm:v1:";

/// Attempts of one transaction before [`RegistryError::Busy`].
pub const MAX_ATTEMPTS: u32 = 8;

/// The largest packet the driver accepts (the protocol's maximum).
const MAX_PACKET: usize = 1 << 30;

/// CloudStack's `value` width for extension details (4.23).
const DETAIL_VALUE_MAX: usize = 4096;

/// The CloudStack version whose schema this backend needs.
const CLOUDSTACK_VERSION: &str = "4.23";

/// Schema of netbridge's own tables; one entry per version.
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE IF NOT EXISTS netbridge_locks (
        scope VARCHAR(191) NOT NULL PRIMARY KEY,
        version BIGINT UNSIGNED NOT NULL DEFAULT 0
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        "CREATE TABLE IF NOT EXISTS netbridge_bindings (
        kind VARCHAR(16) NOT NULL,
        object_id VARCHAR(64) NOT NULL,
        extension_id BIGINT UNSIGNED NOT NULL,
        physical_network_id VARCHAR(64) NOT NULL,
        provider VARCHAR(255) NOT NULL,
        details MEDIUMTEXT NOT NULL,
        created DATETIME NOT NULL,
        PRIMARY KEY (kind, object_id),
        INDEX i_netbridge_bindings__provider (provider, physical_network_id),
        INDEX i_netbridge_bindings__extension (extension_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        "CREATE TABLE IF NOT EXISTS netbridge_offerings (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        uuid VARCHAR(40) NOT NULL UNIQUE,
        extension_id BIGINT UNSIGNED NOT NULL,
        kind VARCHAR(32) NOT NULL,
        name VARCHAR(255) NOT NULL,
        command VARCHAR(64) NOT NULL,
        params MEDIUMTEXT NOT NULL,
        created DATETIME NOT NULL,
        UNIQUE KEY uc_netbridge_offerings__name (extension_id, name)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        "CREATE TABLE IF NOT EXISTS netbridge_offering_services (
        offering_id BIGINT UNSIGNED NOT NULL,
        service VARCHAR(32) NOT NULL,
        PRIMARY KEY (offering_id, service),
        INDEX i_netbridge_offering_services__service (service)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        "CREATE TABLE IF NOT EXISTS netbridge_journal_heads (
        `key` VARCHAR(100) NOT NULL PRIMARY KEY,
        host VARCHAR(255) NULL,
        pending_drops MEDIUMTEXT NOT NULL,
        version BIGINT UNSIGNED NOT NULL DEFAULT 0,
        updated DATETIME NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        "CREATE TABLE IF NOT EXISTS netbridge_journal_entries (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        `key` VARCHAR(100) NOT NULL,
        seq BIGINT NOT NULL,
        slot VARBINARY(512) NULL,
        network_id VARCHAR(64) NULL,
        sealed MEDIUMBLOB NOT NULL,
        UNIQUE KEY uc_netbridge_journal_entries__order (`key`, seq),
        UNIQUE KEY uc_netbridge_journal_entries__slot (`key`, slot),
        INDEX i_netbridge_journal_entries__network (`key`, network_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    ],
    &[
        // Asynchronous API jobs of netbridge's own API (CloudStack's async_job
        // table belongs to its job manager).
        "CREATE TABLE IF NOT EXISTS netbridge_async_jobs (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        uuid VARCHAR(40) NOT NULL UNIQUE,
        command VARCHAR(100) NOT NULL,
        cmd VARCHAR(255) NOT NULL,
        status TINYINT NOT NULL,
        result_code INT NOT NULL DEFAULT 0,
        result MEDIUMTEXT NULL,
        instance_type VARCHAR(64) NULL,
        instance_id VARCHAR(64) NULL,
        owner VARCHAR(255) NOT NULL,
        created DATETIME NOT NULL,
        completed DATETIME NULL,
        INDEX i_netbridge_async_jobs__status (status)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    ],
    &[
        // The HTTP API's admin keys, shared by every management server; the
        // secret sealed like a hidden detail.
        "CREATE TABLE IF NOT EXISTS netbridge_api_keys (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        name VARCHAR(64) NOT NULL UNIQUE,
        apikey VARCHAR(128) NOT NULL UNIQUE,
        secretkey VARCHAR(512) NOT NULL,
        created DATETIME NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    ],
];

/// CloudStack keeps `orchestratorrequirespreparevm` as a hidden extension
/// detail (`display = 0`, plain text).
const PREPARE_VM_DETAIL: &str = "orchestratorrequirespreparevm";

/// Column names, each with the smallest `varchar` width needed (if any).
type ColumnNeeds = &'static [(&'static str, Option<u64>)];

/// `map id, name, value, display` of a registration's detail (the
/// detail's fields null when it has none).
type RegistrationDetailRow = (u64, Option<String>, Option<String>, Option<i64>);

/// `seq, slot, network_id, sealed` of a journal entry.
type EntryRow = (i64, Option<Vec<u8>>, Option<String>, Vec<u8>);

/// Columns netbridge reads or writes in CloudStack's tables, and the
/// smallest `varchar` width it needs where CloudStack widened one.
const CLOUDSTACK_COLUMNS: &[(&str, ColumnNeeds)] = &[
    (
        "extension",
        &[
            ("id", None),
            ("uuid", None),
            ("name", None),
            ("description", None),
            ("type", None),
            ("relative_path", None),
            ("path_ready", None),
            ("is_user_defined", None),
            ("state", None),
            ("created", None),
            ("removed", None),
        ],
    ),
    (
        "extension_details",
        &[
            ("id", None),
            ("extension_id", None),
            ("name", None),
            ("value", Some(DETAIL_VALUE_MAX as u64)),
            ("display", None),
        ],
    ),
    (
        "extension_resource_map",
        &[
            ("id", None),
            ("extension_id", None),
            ("resource_id", None),
            ("resource_type", None),
            ("created", None),
            ("removed", None),
        ],
    ),
    (
        "extension_resource_map_details",
        &[
            ("id", None),
            ("extension_resource_map_id", None),
            ("name", None),
            ("value", Some(DETAIL_VALUE_MAX as u64)),
            ("display", None),
        ],
    ),
    (
        "physical_network",
        &[("id", None), ("uuid", None), ("removed", None)],
    ),
    (
        "cluster",
        &[("id", None), ("uuid", None), ("removed", None)],
    ),
    (
        "physical_network_service_providers",
        &[
            ("id", None),
            ("uuid", None),
            ("physical_network_id", None),
            ("provider_name", None),
            ("state", None),
            ("vpn_service_provided", None),
            ("dhcp_service_provided", None),
            ("dns_service_provided", None),
            ("gateway_service_provided", None),
            ("firewall_service_provided", None),
            ("source_nat_service_provided", None),
            ("load_balance_service_provided", None),
            ("static_nat_service_provided", None),
            ("port_forwarding_service_provided", None),
            ("user_data_service_provided", None),
            ("security_group_service_provided", None),
            ("networkacl_service_provided", None),
            ("custom_action_service_provided", None),
            ("removed", None),
        ],
    ),
];

/// The provider flag column of each service.
fn service_column(service: Service) -> &'static str {
    match service {
        Service::Vpn => "vpn_service_provided",
        Service::Dhcp => "dhcp_service_provided",
        Service::Dns => "dns_service_provided",
        Service::Gateway => "gateway_service_provided",
        Service::Firewall => "firewall_service_provided",
        Service::SourceNat => "source_nat_service_provided",
        Service::Lb => "load_balance_service_provided",
        Service::StaticNat => "static_nat_service_provided",
        Service::PortForwarding => "port_forwarding_service_provided",
        Service::UserData => "user_data_service_provided",
        Service::SecurityGroup => "security_group_service_provided",
        Service::NetworkACL => "networkacl_service_provided",
        Service::CustomAction => "custom_action_service_provided",
    }
}

/// `SELECT` list of a provider row (with the extension's uuid and the
/// physical network's uuid), flags in [`Service::ALL`] order.
fn provider_select() -> String {
    let flags: Vec<String> = Service::ALL
        .iter()
        .map(|s| format!("p.{}", service_column(*s)))
        .collect();
    format!(
        "SELECT p.uuid, p.provider_name, pn.uuid, p.state, e.uuid,
                (SELECT DATE_FORMAT(MIN(m.created), '%Y-%m-%dT%H:%i:%s+0000')
                   FROM extension_resource_map m
                  WHERE m.extension_id = e.id AND m.resource_type = 'PhysicalNetwork'
                    AND m.resource_id = p.physical_network_id AND m.removed IS NULL),
                {}
           FROM physical_network_service_providers p
           JOIN physical_network pn ON pn.id = p.physical_network_id
           JOIN extension e ON e.name = p.provider_name AND e.removed IS NULL",
        flags.join(", ")
    )
}

fn provider_from_row(row: mysql::Row) -> Result<Provider> {
    let (id, name, pn, state, ext, created): (
        String,
        String,
        String,
        String,
        String,
        Option<String>,
    ) = (
        take(&row, 0)?,
        take(&row, 1)?,
        take(&row, 2)?,
        take(&row, 3)?,
        take(&row, 4)?,
        take(&row, 5)?,
    );
    let mut services = Vec::new();
    for (i, s) in Service::ALL.iter().enumerate() {
        let flag: i64 = take(&row, 6 + i)?;
        if flag != 0 {
            services.push(s.as_str().to_string());
        }
    }
    Ok(Provider {
        id,
        name,
        physical_network_id: pn,
        state: State::parse(&state).unwrap_or(State::Disabled),
        services,
        extension_id: ext,
        created: created.unwrap_or_default(),
    })
}

fn take<T: mysql::prelude::FromValue>(row: &mysql::Row, index: usize) -> Result<T> {
    match row.get_opt::<T, usize>(index) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(RegistryError::Io(format!(
            "unexpected value in column {index}: {e}"
        ))),
        None => Err(RegistryError::Io(format!("column {index} missing"))),
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC), what DATETIME columns hold.
fn now_datetime() -> String {
    let ts = super::now_timestamp();
    // `2026-11-27T21:09:09+0000` → `2026-11-27 21:09:09`
    ts.get(..19).unwrap_or(&ts).replacen('T', " ", 1)
}

/// CloudStack's API date (`2026-11-27T21:09:09+0000`) as a DATETIME value
/// (`2026-11-27 21:09:09`); now when it is not one.
fn datetime_of(api_date: &str) -> String {
    match api_date.get(..19) {
        Some(t) if api_date.ends_with("+0000") => t.replacen('T', " ", 1),
        _ => now_datetime(),
    }
}

const CREATED: &str = "DATE_FORMAT(created, '%Y-%m-%dT%H:%i:%s+0000')";

/// The first row of a statement's result, the result read to its end.
///
/// `Queryable::exec_first` keeps the first row and discards the rest of
/// the result, and with it an error the server sends after the rows. On a
/// Galera node a transaction that a conflicting replicated write aborts
/// while one of its statements runs (a brute-force abort) gets the
/// deadlock error at the end of that statement's result: discarded, the
/// transaction is silently rolled back, the statements after it run on
/// their own (autocommit) and its COMMIT answers OK for nothing.
trait FirstRow: Queryable {
    fn exec_row<T, S, P>(&mut self, stmt: S, params: P) -> mysql::Result<Option<T>>
    where
        T: mysql::prelude::FromRow,
        S: mysql::prelude::AsStatement,
        P: Into<mysql::Params>,
    {
        self.exec_fold(stmt, params, None, |first, row| first.or(Some(row)))
    }

    fn query_row<T: mysql::prelude::FromRow, Q: AsRef<str>>(
        &mut self,
        query: Q,
    ) -> mysql::Result<Option<T>> {
        self.query_fold(query, None, |first, row| first.or(Some(row)))
    }
}

impl<Q: Queryable + ?Sized> FirstRow for Q {}

/// Whether a driver error is a transient conflict with another transaction
/// (deadlock, lock wait timeout, Galera certification failure).
fn is_conflict(e: &mysql::Error) -> bool {
    match e {
        // 1213 deadlock (also Galera's certification failure), 1205 lock
        // wait timeout, 1180 a commit the cluster refused, 1047 the Galera
        // node is not yet prepared (rejoining).
        mysql::Error::MySqlError(m) => matches!(m.code, 1213 | 1205 | 1180 | 1047),
        _ => false,
    }
}

/// Whether the connection itself failed (closed by the server after its
/// idle timeout, server restarted, network cut), not the statement.
fn is_connection_lost(e: &mysql::Error) -> bool {
    match e {
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) => true,
        mysql::Error::DriverError(d) => matches!(
            d,
            mysql::DriverError::PacketOutOfSync | mysql::DriverError::UnexpectedPacket
        ),
        // 1053 server shutdown, 1927 connection killed, 4031 closed by the
        // server for inactivity (MySQL 8).
        mysql::Error::MySqlError(m) => matches!(m.code, 1053 | 1927 | 4031),
        _ => false,
    }
}

/// Drops a connection without returning it to the pool: the reset the
/// pool runs on it fails on a dead connection, which the pool then forgets
/// (a live one is reset and keeps serving).
fn discard(mut conn: mysql::PooledConn) {
    conn.reset_connection(true);
}

impl From<mysql::Error> for RegistryError {
    fn from(e: mysql::Error) -> Self {
        RegistryError::Mysql(e)
    }
}

impl From<mysql::UrlError> for RegistryError {
    fn from(e: mysql::UrlError) -> Self {
        RegistryError::Config(format!("database: {e}"))
    }
}

/// The MySQL/MariaDB store; `Send + Sync`, pooled connections.
pub struct MysqlStore {
    pool: Pool,
    /// Dead pooled connections a call throws away before it gives up (a
    /// restarted server leaves every pooled connection dead).
    lost_retries: usize,
    cipher: secrets::Cipher,
    provider_sql: String,
}

/// Visible and hidden owners of details.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    Extension,
    Registration,
}

impl Owner {
    fn table(self) -> &'static str {
        match self {
            Owner::Extension => "extension_details",
            Owner::Registration => "extension_resource_map_details",
        }
    }
    fn column(self) -> &'static str {
        match self {
            Owner::Extension => "extension_id",
            Owner::Registration => "extension_resource_map_id",
        }
    }
}

/// Associated data of a sealed detail: its name only, because the entry
/// point decrypts the values CloudStack passes it without knowing the rows.
fn detail_aad(name: &str) -> String {
    format!("netbridge/v1/detail/{name}")
}

/// Decrypts, in place, every value of `details` (a JSON object of detail
/// name → value, e.g. an envelope's `physical-network-extension-details`)
/// that is in netbridge's sealed form. Values in any other form are left
/// as they are.
pub fn reveal_sealed_details(
    cipher: &secrets::Cipher,
    details: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    for (name, value) in details.iter_mut() {
        if let Value::String(text) = value {
            if let Some(plain) = open_sealed(cipher, name, text)? {
                *text = plain.expose().to_string();
            }
        }
    }
    Ok(())
}

/// The envelope with its `physical-network-extension-details` revealed
/// (see [`reveal_sealed_details`]); `None` when it holds no sealed value
/// (most envelopes: a byte search, no parsing).
pub fn reveal_sealed_envelope(
    cipher: &secrets::Cipher,
    envelope: &[u8],
) -> Result<Option<Vec<u8>>> {
    if !contains_sealed(envelope) {
        return Ok(None);
    }
    let mut root: Value = serde_json::from_slice(envelope)
        .map_err(|e| RegistryError::Invalid(format!("the envelope is not valid JSON: {e}")))?;
    if let Some(Value::Object(details)) = root.get_mut(crate::dispatch::journal::PHYSICAL_DETAILS) {
        reveal_sealed_details(cipher, details)?;
    }
    serde_json::to_vec(&root)
        .map(Some)
        .map_err(|e| RegistryError::Io(format!("cannot encode the envelope: {e}")))
}

/// Whether `bytes` hold a sealed detail value anywhere.
pub fn contains_sealed(bytes: &[u8]) -> bool {
    let needle = SEALED_PREFIX.as_bytes();
    bytes.windows(needle.len()).any(|w| w == needle)
}

fn seal_value(cipher: &secrets::Cipher, name: &str, plain: &str) -> Result<String> {
    let blob = cipher.seal(&detail_aad(name), plain)?;
    Ok(format!(
        "{SEALED_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(blob)
    ))
}

fn open_sealed(cipher: &secrets::Cipher, name: &str, text: &str) -> Result<Option<Secret>> {
    let Some(b64) = text.strip_prefix(SEALED_PREFIX) else {
        return Ok(None);
    };
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| {
            RegistryError::Secret(format!("sealed value of detail '{name}' is not base64"))
        })?;
    cipher.open(&detail_aad(name), &blob).map(Some)
}

/// An extension row: its numeric id and what the API shows.
struct ExtRow {
    id: u64,
    ext: Extension,
}

impl MysqlStore {
    /// Connects (a small pool), checks CloudStack's tables and migrates
    /// netbridge's own.
    pub fn open(location: &MysqlLocation, key_file: &Path) -> Result<MysqlStore> {
        let mut params: std::collections::HashMap<String, String> =
            location.params.clone().into_iter().collect();
        let pool_min = params.remove("pool_min");
        let pool_max = params.remove("pool_max");
        let parse = |v: Option<String>, default: usize, name: &str| -> Result<usize> {
            match v {
                None => Ok(default),
                Some(v) => v.parse().map_err(|_| {
                    RegistryError::Config(format!("database: {name} '{v}' is not a number"))
                }),
            }
        };
        let (min, max) = (
            parse(pool_min, 1, "pool_min")?,
            parse(pool_max, 16, "pool_max")?,
        );
        // Seconds a statement waits for a row another server holds before
        // the transaction is retried.
        let lock_wait = parse(params.remove("lock_wait_timeout"), 10, "lock_wait_timeout")?;
        // A ping before each use of a pooled connection costs a round trip
        // per call; without it a connection the server closed (idle
        // timeout, restart) is found by the call's first statement, thrown
        // away, and the call retried on another one (see `write`/`read`).
        // `check_health=true` brings the ping back.
        let check_health = match params.remove("check_health").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(RegistryError::Config(format!(
                    "database: check_health '{other}' is not true or false"
                )))
            }
        };
        let constraints = PoolConstraints::new(min, max.max(1)).ok_or_else(|| {
            RegistryError::Config(format!(
                "database: pool_min {min} must not exceed pool_max {max}"
            ))
        })?;
        let mut builder = OptsBuilder::new()
            .from_hash_map(&params)?
            .ip_or_hostname(Some(location.host.clone()))
            .tcp_port(location.port)
            .user(Some(location.user.clone()))
            .pass(location.password.as_ref().map(|p| p.expose().to_string()))
            .db_name(Some(location.database.clone()))
            .stmt_cache_size(Some(256))
            .tcp_connect_timeout(Some(Duration::from_secs(10)));
        if !params.contains_key("max_allowed_packet") {
            // Known up front, the driver does not ask the server for it on
            // every new connection (a round trip).
            builder = builder.max_allowed_packet(Some(MAX_PACKET));
        }
        let unreachable = |e: mysql::Error| {
            RegistryError::Config(format!("cannot connect to the database {location}: {e}"))
        };
        let session = |galera: bool| {
            // One round trip on each new connection. A server on this host
            // named as `localhost`/127.0.0.1 is reached through its Unix
            // socket (the driver's `prefer_socket`, on unless set to false;
            // `socket=` skips the TCP connection that finds the path).
            let mut settings = format!(
                "SET SESSION time_zone = '+00:00', innodb_lock_wait_timeout = {}",
                lock_wait.max(1)
            );
            if galera {
                // Management servers talk to different nodes: a read must
                // see what another server committed before it (causal reads).
                settings.push_str(", wsrep_sync_wait = 1");
            }
            vec![format!(
                "{settings}; SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"
            )]
        };
        let pool_of = |galera: bool| {
            Pool::new(Opts::from(
                builder
                    .clone()
                    // No reset when a connection goes back to the pool: it
                    // would drop the session settings above and every
                    // prepared statement (transactions always end in commit
                    // or rollback).
                    .pool_opts(
                        PoolOpts::default()
                            .with_constraints(constraints)
                            .with_reset_connection(false)
                            .with_check_health(check_health),
                    )
                    .init(session(galera)),
            ))
            .map_err(unreachable)
        };
        // The pool's first connection does the checks and the migration.
        let mut pool = pool_of(false)?;
        let mut conn = pool.get_conn().map_err(unreachable)?;
        // On a Galera node the checks too must read causally: the tables may
        // just have been created through another node.
        let wsrep: Option<(String, String)> = conn.query_row("SHOW VARIABLES LIKE 'wsrep_on'")?;
        let galera = wsrep.is_some_and(|(_, on)| on.eq_ignore_ascii_case("ON"));
        if galera {
            conn.query_drop("SET SESSION wsrep_sync_wait = 1")?;
        }
        let version = check_cloudstack_schema(&mut conn, &location.database)?;
        migrate(&mut conn, version)?;
        if galera {
            log::info!(
                "{location} is a Galera node: reads wait for the cluster (wsrep_sync_wait=1)"
            );
            drop(conn);
            pool = pool_of(true)?;
            conn = pool.get_conn().map_err(unreachable)?;
        }
        if !key_file.exists() {
            // A fresh key could never decrypt what is stored.
            let (details, entries): (u64, u64) = conn
                .exec_row(
                    "SELECT (SELECT COUNT(*) FROM extension_details WHERE value LIKE ?)
                          + (SELECT COUNT(*) FROM extension_resource_map_details WHERE value LIKE ?),
                            (SELECT COUNT(*) FROM netbridge_journal_entries)",
                    (
                        format!("{SEALED_PREFIX}%"),
                        format!("{SEALED_PREFIX}%"),
                    ),
                )?
                .unwrap_or((0, 0));
            if details + entries > 0 {
                return Err(RegistryError::KeyFile(format!(
                    "key file {} is missing but the database holds {details} encrypted detail(s) \
                     and {entries} encrypted journal entries; copy the key file from another \
                     management server of this database",
                    key_file.display()
                )));
            }
        }
        drop(conn);
        let cipher = secrets::Cipher::load_or_create(key_file)?;
        log::info!("registry in {location}");
        Ok(MysqlStore {
            pool,
            lost_retries: max.max(1) + 1,
            cipher,
            provider_sql: provider_select(),
        })
    }

    /// Runs `f` in one transaction, retrying conflicts with other
    /// transactions (`f` runs again from the start on a fresh transaction).
    /// A pooled connection found dead when the transaction starts (nothing
    /// sent yet had any effect) is thrown away and another one taken.
    fn write<T>(&self, mut f: impl FnMut(&mut Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut last = String::new();
        let mut attempt = 0;
        let mut lost = 0;
        while attempt < MAX_ATTEMPTS {
            let mut conn = self.pool.get_conn()?;
            let outcome = match conn.start_transaction(TxOpts::default()) {
                Err(e) => Err(e),
                Ok(mut tx) => Ok(match f(&mut tx) {
                    Ok(value) => tx.commit().map(|()| value).map_err(RegistryError::from),
                    Err(e) => {
                        // A failed statement may leave the transaction open.
                        let _ = tx.rollback();
                        Err(e)
                    }
                }),
            };
            match outcome {
                Err(e) if is_connection_lost(&e) && lost < self.lost_retries => {
                    log::debug!("pooled database connection lost, taking another: {e}");
                    discard(conn);
                    lost += 1;
                }
                Err(e) => {
                    if is_connection_lost(&e) {
                        discard(conn);
                    }
                    return Err(e.into());
                }
                Ok(Err(RegistryError::Mysql(e))) if is_conflict(&e) => {
                    log::debug!(
                        "registry transaction conflicted (attempt {}): {e}",
                        attempt + 1
                    );
                    last = e.to_string();
                    attempt += 1;
                    drop(conn);
                    if attempt < MAX_ATTEMPTS {
                        backoff(attempt);
                    }
                }
                Ok(other) => {
                    if matches!(&other, Err(RegistryError::Mysql(e)) if is_connection_lost(e)) {
                        discard(conn);
                    }
                    return other;
                }
            }
        }
        log::warn!("registry transaction still conflicting after {MAX_ATTEMPTS} attempts: {last}");
        Err(RegistryError::Busy(format!(
            "The registry is busy: other management servers kept changing the same rows \
             ({MAX_ATTEMPTS} attempts); nothing was changed, retry the call"
        )))
    }

    /// Runs the reads of `f` on a pooled connection, again on another one
    /// when the connection turns out dead.
    fn read<T>(&self, mut f: impl FnMut(&mut mysql::PooledConn) -> Result<T>) -> Result<T> {
        let mut lost = 0;
        loop {
            let mut conn = self.pool.get_conn()?;
            match f(&mut conn) {
                Err(RegistryError::Mysql(e)) if is_connection_lost(&e) => {
                    discard(conn);
                    if lost >= self.lost_retries {
                        return Err(RegistryError::Mysql(e));
                    }
                    log::debug!("pooled database connection lost, taking another: {e}");
                    lost += 1;
                }
                other => return other,
            }
        }
    }

    // ---- details ------------------------------------------------------------

    /// Sets `details` (replacing rows of the same names): one DELETE for
    /// the names and one multi-row INSERT, hidden values sealed.
    fn put_details<K: AsRef<str>, V: AsRef<str>>(
        &self,
        tx: &mut Transaction<'_>,
        owner: Owner,
        owner_id: u64,
        details: &[(K, V)],
    ) -> Result<()> {
        self.replace_details(tx, owner, owner_id, details, false)
    }

    /// Deletes the rows of `details`' names (and every visible row with
    /// `visible_too`) in one DELETE, then inserts `details` in one
    /// multi-row INSERT, hidden values sealed. Every value is checked
    /// before anything is written.
    fn replace_details<K: AsRef<str>, V: AsRef<str>>(
        &self,
        tx: &mut Transaction<'_>,
        owner: Owner,
        owner_id: u64,
        details: &[(K, V)],
        visible_too: bool,
    ) -> Result<()> {
        let mut rows: Vec<mysql::Value> = Vec::with_capacity(details.len() * 4);
        let mut names: Vec<mysql::Value> = Vec::with_capacity(details.len() + 1);
        names.push(owner_id.into());
        for (name, value) in details {
            let (name, value) = (name.as_ref(), value.as_ref());
            let (stored, display) = if is_hidden_key(name) {
                (seal_value(&self.cipher, name, value)?, 0u8)
            } else {
                (value.to_string(), 1u8)
            };
            if stored.chars().count() > DETAIL_VALUE_MAX {
                return Err(RegistryError::Invalid(format!(
                    "details: the value of '{name}' is too long ({} characters{}; CloudStack {CLOUDSTACK_VERSION} stores at most {DETAIL_VALUE_MAX})",
                    stored.chars().count(),
                    if display == 0 { " once encrypted" } else { "" },
                )));
            }
            names.push(name.into());
            rows.extend([owner_id.into(), name.into(), stored.into(), display.into()]);
        }
        let which = match (details.is_empty(), visible_too) {
            (true, false) => return Ok(()),
            (true, true) => "display = 1".to_string(),
            (false, false) => format!("name IN ({})", vec!["?"; details.len()].join(", ")),
            (false, true) => format!(
                "(display = 1 OR name IN ({}))",
                vec!["?"; details.len()].join(", ")
            ),
        };
        tx.exec_drop(
            format!(
                "DELETE FROM {} WHERE {} = ? AND {which}",
                owner.table(),
                owner.column()
            ),
            mysql::Params::Positional(names),
        )?;
        if details.is_empty() {
            return Ok(());
        }
        let tuples = vec!["(?, ?, ?, ?)"; details.len()].join(", ");
        tx.exec_drop(
            format!(
                "INSERT INTO {} ({}, name, value, display) VALUES {tuples}",
                owner.table(),
                owner.column()
            ),
            mysql::Params::Positional(rows),
        )?;
        Ok(())
    }

    fn apply_details(
        &self,
        tx: &mut Transaction<'_>,
        owner: Owner,
        owner_id: u64,
        update: &DetailsUpdate,
        cleanup_hidden: bool,
    ) -> Result<()> {
        match update {
            DetailsUpdate::Keep => {}
            DetailsUpdate::Cleanup => {
                let sql = if cleanup_hidden {
                    format!("DELETE FROM {} WHERE {} = ?", owner.table(), owner.column())
                } else {
                    format!(
                        "DELETE FROM {} WHERE {} = ? AND display = 1",
                        owner.table(),
                        owner.column()
                    )
                };
                tx.exec_drop(sql, (owner_id,))?;
            }
            // Visible rows all go, hidden ones only when named again.
            DetailsUpdate::Replace(details) => {
                self.replace_details(tx, owner, owner_id, details, true)?
            }
        }
        Ok(())
    }

    fn full_details<Q: Queryable>(
        &self,
        conn: &mut Q,
        owner: Owner,
        owner_id: u64,
    ) -> Result<FullDetails> {
        let rows: Vec<(String, String, i64)> = conn.exec(
            format!(
                "SELECT name, value, display FROM {} WHERE {} = ? ORDER BY id",
                owner.table(),
                owner.column()
            ),
            (owner_id,),
        )?;
        self.details_of_rows(owner, rows)
    }

    /// Visible and hidden details (secrets decrypted) of `name, value,
    /// display` rows.
    fn details_of_rows(
        &self,
        owner: Owner,
        rows: impl IntoIterator<Item = (String, String, i64)>,
    ) -> Result<FullDetails> {
        let mut out = FullDetails::default();
        for (name, value, display) in rows {
            if owner == Owner::Extension && name == PREPARE_VM_DETAIL {
                continue;
            }
            if display != 0 {
                out.visible.insert(name, value);
            } else {
                let secret = match open_sealed(&self.cipher, &name, &value)? {
                    Some(s) => s,
                    // Written by CloudStack itself (plain text, hidden).
                    None => Secret::new(value),
                };
                out.hidden.insert(name, secret);
            }
        }
        Ok(out)
    }

    /// Takes the lock row `scope` for the rest of the transaction.
    fn lock(tx: &mut Transaction<'_>, scope: &str) -> Result<()> {
        tx.exec_drop(
            "INSERT INTO netbridge_locks (scope, version) VALUES (?, 1)
             ON DUPLICATE KEY UPDATE version = version + 1",
            (scope,),
        )?;
        Ok(())
    }

    fn services_changed(
        &self,
        tx: &mut Transaction<'_>,
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
            let used: u64 = tx
                .exec_row(
                    "SELECT COUNT(*) FROM netbridge_offering_services s
                       JOIN netbridge_offerings o ON o.id = s.offering_id
                      WHERE o.extension_id = ? AND s.service = ?",
                    (row.id, removed.as_str()),
                )?
                .unwrap_or(0);
            if used > 0 {
                return Err(RegistryError::Conflict(format!(
                    "Cannot remove service {removed} from extension '{}' as it is used by a network/VPC offering",
                    row.ext.name
                )));
            }
        }
        let sets: Vec<String> = Service::ALL
            .iter()
            .map(|s| format!("{} = {}", service_column(*s), u8::from(new.contains(s))))
            .collect();
        tx.exec_drop(
            format!(
                "UPDATE physical_network_service_providers p
                    JOIN extension_resource_map m ON m.resource_id = p.physical_network_id
                     AND m.resource_type = 'PhysicalNetwork' AND m.removed IS NULL
                     SET {}
                  WHERE m.extension_id = ? AND p.provider_name = ?",
                sets.join(", ")
            ),
            (row.id, &row.ext.name),
        )?;
        let changed = tx.affected_rows();
        log::info!(
            "extension '{}' services now [{}]; {changed} provider(s) updated",
            row.ext.name,
            offerings::services_to_string(&new)
        );
        Ok(())
    }

    fn resource_numeric_id<Q: Queryable>(
        conn: &mut Q,
        resource_type: ResourceType,
        uuid: &str,
    ) -> Result<Option<u64>> {
        let sql = match resource_type {
            ResourceType::PhysicalNetwork => {
                "SELECT id FROM physical_network WHERE uuid = ? AND removed IS NULL"
            }
            ResourceType::Cluster => "SELECT id FROM cluster WHERE uuid = ? AND removed IS NULL",
        };
        Ok(conn.exec_row(sql, (uuid,))?)
    }

    fn resource_id_or_error<Q: Queryable>(
        conn: &mut Q,
        resource_type: ResourceType,
        uuid: &str,
    ) -> Result<u64> {
        Self::resource_numeric_id(conn, resource_type, uuid)?.ok_or_else(|| {
            let what = match resource_type {
                ResourceType::PhysicalNetwork => "physical network",
                ResourceType::Cluster => "cluster",
            };
            RegistryError::Invalid(format!(
                "Invalid parameter resourceid: no {what} with id {uuid} in CloudStack"
            ))
        })
    }

    fn registration<Q: Queryable>(
        conn: &mut Q,
        ext_id: u64,
        resource_type: ResourceType,
        resource_uuid: &str,
    ) -> Result<Option<u64>> {
        let sql = match resource_type {
            ResourceType::PhysicalNetwork => {
                "SELECT m.id FROM extension_resource_map m JOIN physical_network r ON r.id = m.resource_id
                  WHERE m.extension_id = ? AND m.resource_type = 'PhysicalNetwork' AND r.uuid = ?
                    AND m.removed IS NULL ORDER BY m.id LIMIT 1"
            }
            ResourceType::Cluster => {
                "SELECT m.id FROM extension_resource_map m JOIN cluster r ON r.id = m.resource_id
                  WHERE m.extension_id = ? AND m.resource_type = 'Cluster' AND r.uuid = ?
                    AND m.removed IS NULL ORDER BY m.id LIMIT 1"
            }
        };
        Ok(conn.exec_row(sql, (ext_id, resource_uuid))?)
    }

    fn binding_rows<Q: Queryable>(
        conn: &mut Q,
        where_sql: &str,
        params: mysql::Params,
    ) -> Result<Vec<Binding>> {
        let rows: Vec<(String, String, String, String, String, String, String)> = conn.exec(
            format!(
                "SELECT b.kind, b.object_id, e.uuid, b.physical_network_id, b.provider, b.details,
                        DATE_FORMAT(b.created, '%Y-%m-%dT%H:%i:%s+0000')
                   FROM netbridge_bindings b JOIN extension e ON e.id = b.extension_id
                  {where_sql} ORDER BY b.kind, b.object_id"
            ),
            params,
        )?;
        Ok(rows
            .into_iter()
            .map(
                |(kind, object_id, ext, pn, provider, details, created)| Binding {
                    target: if kind == "vpc" {
                        BindingTarget::Vpc(object_id)
                    } else {
                        BindingTarget::Network(object_id)
                    },
                    extension_id: ext,
                    physical_network_id: pn,
                    provider,
                    details,
                    created,
                },
            )
            .collect())
    }
}

/// Jittered pause before retrying a conflicting transaction, so that two
/// servers that collided do not collide again in lockstep.
fn backoff(attempt: u32) {
    let mut r = [0u8; 2];
    let jitter = getrandom::fill(&mut r)
        .map(|()| u64::from(u16::from_le_bytes(r)) % 1000)
        .unwrap_or(500);
    let base = 500u64 << attempt.min(6);
    std::thread::sleep(Duration::from_micros(base + jitter * u64::from(attempt)));
}

/// Checks CloudStack's tables and answers the version of netbridge's schema
/// (0: none yet), in one round trip.
fn check_cloudstack_schema<Q: Queryable>(conn: &mut Q, database: &str) -> Result<u32> {
    // Naming the tables lets the server open only those (a CloudStack
    // database has hundreds).
    let names: Vec<String> = CLOUDSTACK_COLUMNS
        .iter()
        .map(|(t, _)| format!("'{t}'"))
        .collect();
    let mut result = conn.query_iter(format!(
        "SELECT table_name, column_name, data_type, character_maximum_length
           FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name IN ({});
         SELECT version FROM netbridge_schema WHERE id = 1",
        names.join(", ")
    ))?;
    let mut rows: Vec<(String, String, String, Option<u64>)> = Vec::new();
    let mut version = 0u32;
    let mut index = 0;
    while let Some(set) = result.iter() {
        for row in set {
            let row = match row {
                Ok(row) => row,
                // No netbridge schema yet.
                Err(mysql::Error::MySqlError(e)) if index == 1 && e.code == 1146 => break,
                Err(e) => return Err(e.into()),
            };
            match index {
                0 => rows.push(mysql::from_row_opt(row).map_err(|e| {
                    RegistryError::Io(format!("unexpected information_schema row: {e}"))
                })?),
                _ => version = take(&row, 0)?,
            }
        }
        index += 1;
    }
    drop(result);
    let mut columns: BTreeMap<(String, String), (String, Option<u64>)> = BTreeMap::new();
    for (t, c, ty, len) in rows {
        columns.insert((t.to_ascii_lowercase(), c.to_ascii_lowercase()), (ty, len));
    }
    for (table, needed) in CLOUDSTACK_COLUMNS {
        let present = columns.keys().any(|(t, _)| t == table);
        if !present {
            return Err(RegistryError::Config(format!(
                "database {database} is not a CloudStack {CLOUDSTACK_VERSION} database: table '{table}' \
                 is missing (netbridge needs CloudStack {CLOUDSTACK_VERSION} or later; it never creates \
                 CloudStack's tables)"
            )));
        }
        for (column, min_len) in needed.iter() {
            let Some((ty, len)) = columns.get(&(table.to_string(), column.to_string())) else {
                return Err(RegistryError::Config(format!(
                    "CloudStack table '{table}' has no column '{column}' (netbridge needs the schema of \
                     CloudStack {CLOUDSTACK_VERSION} or later)"
                )));
            };
            if let Some(min) = min_len {
                let wide_enough = match len {
                    Some(l) => *l >= *min,
                    None => false,
                } || matches!(
                    ty.to_ascii_lowercase().as_str(),
                    "text" | "mediumtext" | "longtext"
                );
                if !wide_enough {
                    return Err(RegistryError::Config(format!(
                        "CloudStack table '{table}' column '{column}' is {ty}({}); netbridge needs \
                         varchar({min}) as in CloudStack {CLOUDSTACK_VERSION} or later",
                        len.map(|l| l.to_string()).unwrap_or_default()
                    )));
                }
            }
        }
    }
    Ok(version)
}

/// Brings netbridge's own tables from `version` (read by
/// [`check_cloudstack_schema`]) to this build's.
fn migrate<Q: Queryable>(conn: &mut Q, version: u32) -> Result<()> {
    let target = MIGRATIONS.len() as u32;
    if version > target {
        return Err(RegistryError::Config(format!(
            "netbridge schema version {version} in the database is newer than this build supports ({target}); \
             upgrade netbridge on this management server"
        )));
    }
    if version == target {
        return Ok(());
    }
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS netbridge_schema (
            id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
            version INT UNSIGNED NOT NULL
        ) ENGINE=InnoDB",
    )?;
    // DDL commits by itself: every step is idempotent (IF NOT EXISTS), so
    // two servers migrating at once end in the same schema.
    for (index, statements) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        for sql in statements.iter() {
            conn.query_drop(*sql)?;
        }
        let reached = index as u32 + 1;
        conn.exec_drop(
            "INSERT INTO netbridge_schema (id, version) VALUES (1, ?)
             ON DUPLICATE KEY UPDATE version = GREATEST(version, VALUES(version))",
            (reached,),
        )?;
        log::info!("netbridge schema migrated to version {reached}");
    }
    Ok(())
}

/// What a sealed API secret key is bound to (in place of a detail name).
fn api_key_label(apikey: &str) -> String {
    format!("api-key/{apikey}")
}

/// Sets `orchestratorrequirespreparevm` as CloudStack stores it.
fn set_prepare_vm(tx: &mut Transaction<'_>, extension_id: u64, prepare: bool) -> Result<()> {
    tx.exec_drop(
        "DELETE FROM extension_details WHERE extension_id = ? AND name = ?",
        (extension_id, PREPARE_VM_DETAIL),
    )?;
    tx.exec_drop(
        "INSERT INTO extension_details (extension_id, name, value, display) VALUES (?, ?, ?, 0)",
        (extension_id, PREPARE_VM_DETAIL, prepare.to_string()),
    )?;
    Ok(())
}

/// Columns of a job, in [`job_from_row`]'s order.
const JOB_COLUMNS: &str = "uuid, command, cmd, status, result_code, result, instance_type, \
    instance_id, owner, DATE_FORMAT(created, '%Y-%m-%dT%H:%i:%s+0000'), \
    DATE_FORMAT(completed, '%Y-%m-%dT%H:%i:%s+0000')";

fn job_from_row(row: &mysql::Row) -> Result<Job> {
    Ok(Job {
        id: take(row, 0)?,
        command: take(row, 1)?,
        cmd: take(row, 2)?,
        status: JobStatus::from_code(take(row, 3)?),
        result_code: take(row, 4)?,
        result: take(row, 5)?,
        instance_type: take(row, 6)?,
        instance_id: take(row, 7)?,
        owner: take(row, 8)?,
        created: take(row, 9)?,
        completed: take(row, 10)?,
    })
}

fn load_job<Q: Queryable>(conn: &mut Q, uuid: &str) -> Result<Option<Job>> {
    let row: Option<mysql::Row> = conn.exec_row(
        format!("SELECT {JOB_COLUMNS} FROM netbridge_async_jobs WHERE uuid = ?"),
        (uuid,),
    )?;
    row.as_ref().map(job_from_row).transpose()
}

fn not_found_extension(uuid: &str) -> RegistryError {
    RegistryError::NotFound(format!("Unable to find extension with id {uuid}"))
}

fn ext_id<Q: Queryable>(conn: &mut Q, by_name: bool, value: &str) -> Result<Option<u64>> {
    let sql = if by_name {
        "SELECT id FROM extension WHERE name = ? AND removed IS NULL ORDER BY id LIMIT 1"
    } else {
        "SELECT id FROM extension WHERE uuid = ? AND removed IS NULL"
    };
    Ok(conn.exec_row(sql, (value,))?)
}

fn ext_by_uuid<Q: Queryable>(conn: &mut Q, uuid: &str) -> Result<Option<ExtRow>> {
    Ok(
        extension_row(conn, "e.uuid = ? AND e.removed IS NULL", uuid.into())?
            .map(|(id, ext)| ExtRow { id, ext }),
    )
}

/// The columns of an extension row `e` as [`ext_of_row`] reads them.
fn ext_columns() -> String {
    format!(
        "e.id, e.uuid, e.name, e.description, e.type, e.state, e.relative_path,
         DATE_FORMAT(e.created, '%Y-%m-%dT%H:%i:%s+0000'),
         (SELECT d.value FROM extension_details d
           WHERE d.extension_id = e.id AND d.name = '{PREPARE_VM_DETAIL}'
           ORDER BY d.id DESC LIMIT 1)"
    )
}

/// The extension of a row whose columns start at `at` ([`ext_columns`]).
fn ext_of_row(row: &mysql::Row, at: usize) -> Result<(u64, Extension)> {
    let id: u64 = take(row, at)?;
    let description: Option<String> = take(row, at + 3)?;
    let ty: String = take(row, at + 4)?;
    let state: String = take(row, at + 5)?;
    let prepare_vm: Option<String> = take(row, at + 8)?;
    Ok((
        id,
        Extension {
            id: take(row, at + 1)?,
            name: take(row, at + 2)?,
            description: description.unwrap_or_default(),
            ext_type: ExtensionType::parse(&ty).unwrap_or(ExtensionType::Orchestrator),
            state: State::parse(&state).unwrap_or(State::Disabled),
            path: take(row, at + 6)?,
            created: take(row, at + 7)?,
            orchestrator_requires_prepare_vm: prepare_vm.map(|v| v.eq_ignore_ascii_case("true")),
            details: BTreeMap::new(),
            resources: Vec::new(),
        },
    ))
}

/// The extension row matching `condition` on `e` (one parameter), without
/// details or registrations: one query.
fn extension_row<Q: Queryable>(
    conn: &mut Q,
    condition: &str,
    param: mysql::Value,
) -> Result<Option<(u64, Extension)>> {
    let row: Option<mysql::Row> = conn.exec_row(
        format!(
            "SELECT {} FROM extension e WHERE {condition}",
            ext_columns()
        ),
        mysql::Params::Positional(vec![param]),
    )?;
    row.map(|row| ext_of_row(&row, 0)).transpose()
}

/// The extension matching `condition` on `e` (one parameter) with its
/// visible details and registrations as `include` asks: the row, then one
/// query for each part asked. (One `UNION` of the three, or JSON aggregates
/// of the row, measured slower: CloudStack's long `value` columns make the
/// server build temporary tables.)
fn extension_full<Q: Queryable>(
    conn: &mut Q,
    condition: &str,
    param: mysql::Value,
    include: Include,
) -> Result<Option<(u64, Extension)>> {
    Ok(extension_with_map_ids(conn, condition, param, include)?.map(|(id, ext, _)| (id, ext)))
}

/// A registration with one of its visible details: map id, detail id,
/// resource type, resource uuid, created, detail name, detail value,
/// resource name.
type ResourceDetailRow = (
    u64,
    Option<u64>,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// [`extension_full`] with the `extension_resource_map` id of each of
/// `resources`.
fn extension_with_map_ids<Q: Queryable>(
    conn: &mut Q,
    condition: &str,
    param: mysql::Value,
    include: Include,
) -> Result<Option<(u64, Extension, Vec<u64>)>> {
    let Some((id, mut ext)) = extension_row(conn, condition, param)? else {
        return Ok(None);
    };
    let mut map_ids: Vec<u64> = Vec::new();
    if include.details {
        let rows: Vec<(String, String)> = conn.exec(
            "SELECT name, value FROM extension_details WHERE extension_id = ? AND display = 1 ORDER BY id",
            (id,),
        )?;
        ext.details = rows.into_iter().collect();
    }
    if include.resources {
        // Sorted here rather than by the server (a temporary table for
        // the joined rows).
        let mut rows: Vec<ResourceDetailRow> = conn.exec(
            "SELECT m.id, d.id, m.resource_type, COALESCE(pn.uuid, c.uuid),
                    DATE_FORMAT(m.created, '%Y-%m-%dT%H:%i:%s+0000'), d.name, d.value,
                    COALESCE(pn.name, c.name)
               FROM extension_resource_map m
               LEFT JOIN physical_network pn ON m.resource_type = 'PhysicalNetwork' AND pn.id = m.resource_id
               LEFT JOIN cluster c ON m.resource_type = 'Cluster' AND c.id = m.resource_id
               LEFT JOIN extension_resource_map_details d
                      ON d.extension_resource_map_id = m.id AND d.display = 1
              WHERE m.extension_id = ? AND m.removed IS NULL",
            (id,),
        )?;
        rows.sort_by_key(|r| (r.0, r.1));
        for (map_id, _, rt, rid, created, name, value, resource_name) in rows {
            if map_ids.last() != Some(&map_id) {
                map_ids.push(map_id);
                ext.resources.push(Resource {
                    id: rid.unwrap_or_default(),
                    name: resource_name,
                    resource_type: ResourceType::parse(&rt).unwrap_or(ResourceType::Cluster),
                    created,
                    details: BTreeMap::new(),
                });
            }
            if let (Some(name), Some(resource)) = (name, ext.resources.last_mut()) {
                resource.details.insert(name, value.unwrap_or_default());
            }
        }
    }
    Ok(Some((id, ext, map_ids)))
}

fn visible_detail<Q: Queryable>(
    conn: &mut Q,
    owner: Owner,
    id: u64,
    name: &str,
) -> Result<Option<String>> {
    Ok(conn.exec_row(
        format!(
            "SELECT value FROM {} WHERE {} = ? AND name = ? AND display = 1 ORDER BY id DESC LIMIT 1",
            owner.table(),
            owner.column()
        ),
        (id, name),
    )?)
}

fn load_extension<Q: Queryable>(conn: &mut Q, id: u64, include: Include) -> Result<Extension> {
    Ok(extension_full(conn, "e.id = ?", id.into(), include)?
        .ok_or_else(|| RegistryError::Io(format!("extension row {id} vanished")))?
        .1)
}

fn load_offering<Q: Queryable>(
    conn: &mut Q,
    id: u64,
    ext_uuid: &str,
) -> Result<Option<StoredOffering>> {
    let row: Option<(String, String, String, String, String, String)> = conn.exec_row(
        format!("SELECT uuid, kind, name, command, params, {CREATED} FROM netbridge_offerings WHERE id = ?"),
        (id,),
    )?;
    let Some((uuid, kind, name, command, params_json, created)) = row else {
        return Ok(None);
    };
    let params: Vec<(String, String)> = serde_json::from_str(&params_json)
        .map_err(|e| RegistryError::Io(format!("stored offering {uuid} is corrupt: {e}")))?;
    let mut services: Vec<String> = conn.exec(
        "SELECT service FROM netbridge_offering_services WHERE offering_id = ?",
        (id,),
    )?;
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

// ---- journal rows -------------------------------------------------------------

impl MysqlStore {
    fn head_in<Q: Queryable>(conn: &mut Q, key: &str) -> Result<Option<JournalHead>> {
        let row: Option<(Option<String>, String)> = conn.exec_row(
            "SELECT host, pending_drops FROM netbridge_journal_heads WHERE `key` = ?",
            (key,),
        )?;
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

    /// Takes the journal's lock (its head row, created when missing) and
    /// returns the head as stored.
    fn lock_head(tx: &mut Transaction<'_>, key: &str) -> Result<JournalHead> {
        tx.exec_drop(
            "INSERT INTO netbridge_journal_heads (`key`, host, pending_drops, version, updated)
             VALUES (?, NULL, '', 1, ?) ON DUPLICATE KEY UPDATE version = version + 1",
            (key, now_datetime()),
        )?;
        Ok(Self::head_in(tx, key)?.unwrap_or_default())
    }

    /// Writes the head; removes the row when it is empty and no entry is left.
    fn put_head(tx: &mut Transaction<'_>, key: &str, head: &JournalHead) -> Result<()> {
        if head.is_empty() {
            let has_entries: Option<u8> = tx.exec_row(
                "SELECT 1 FROM netbridge_journal_entries WHERE `key` = ? LIMIT 1",
                (key,),
            )?;
            if has_entries.is_none() {
                tx.exec_drop(
                    "DELETE FROM netbridge_journal_heads WHERE `key` = ?",
                    (key,),
                )?;
                return Ok(());
            }
        }
        tx.exec_drop(
            "UPDATE netbridge_journal_heads SET host = ?, pending_drops = ?, updated = ? WHERE `key` = ?",
            (
                head.host.as_deref(),
                encode_drops(&head.pending_drops)?,
                now_datetime(),
                key,
            ),
        )?;
        Ok(())
    }

    fn entries<Q: Queryable>(&self, conn: &mut Q, key: &str) -> Result<Vec<JournalEntry>> {
        let rows: Vec<EntryRow> = conn.exec(
            "SELECT seq, slot, network_id, sealed FROM netbridge_journal_entries WHERE `key` = ? ORDER BY seq",
            (key,),
        )?;
        let mut entries = Vec::with_capacity(rows.len());
        for (seq, slot, network_id, sealed) in rows {
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

    fn seal_entry(&self, key: &str, seq: i64, entry: &JournalEntry) -> Result<Vec<u8>> {
        seal_entry(&self.cipher, key, seq, entry)
    }

    /// Appends `entry` at position `seq`, or after the last one when `None`
    /// (one more read).
    fn push(
        &self,
        tx: &mut Transaction<'_>,
        key: &str,
        entry: &JournalEntry,
        seq: Option<i64>,
    ) -> Result<()> {
        let seq: i64 = match seq {
            Some(seq) => seq,
            None => tx
                .exec_row(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM netbridge_journal_entries WHERE `key` = ?",
                    (key,),
                )?
                .unwrap_or(1),
        };
        let sealed = self.seal_entry(key, seq, entry)?;
        tx.exec_drop(
            "INSERT INTO netbridge_journal_entries (`key`, seq, slot, network_id, sealed)
             VALUES (?, ?, ?, ?, ?)",
            (
                key,
                seq,
                entry.slot.as_deref().map(str::as_bytes),
                entry.network_id.as_deref(),
                sealed,
            ),
        )?;
        Ok(())
    }

    fn delete_prefix(tx: &mut Transaction<'_>, key: &str, prefix: &str) -> Result<()> {
        match prefix_end(prefix.as_bytes()) {
            Some(end) => tx.exec_drop(
                "DELETE FROM netbridge_journal_entries WHERE `key` = ? AND slot >= ? AND slot < ?",
                (key, prefix.as_bytes(), end),
            )?,
            None => tx.exec_drop(
                "DELETE FROM netbridge_journal_entries WHERE `key` = ? AND slot >= ?",
                (key, prefix.as_bytes()),
            )?,
        }
        Ok(())
    }

    fn apply(&self, tx: &mut Transaction<'_>, key: &str, change: &Change) -> Result<()> {
        match &change.effect {
            Effect::Ignore => {}
            Effect::ClearAll => {
                tx.exec_drop(
                    "DELETE FROM netbridge_journal_entries WHERE `key` = ?",
                    (key,),
                )?;
            }
            Effect::ClearNetwork(net) => {
                tx.exec_drop(
                    "DELETE FROM netbridge_journal_entries WHERE `key` = ? AND network_id = ?",
                    (key, net),
                )?;
            }
            Effect::Append => self.push(tx, key, &change.entry(None), None)?,
            Effect::Remove { exact, prefixes } => {
                for slot in exact {
                    tx.exec_drop(
                        "DELETE FROM netbridge_journal_entries WHERE `key` = ? AND slot = ?",
                        (key, slot.as_bytes()),
                    )?;
                }
                for p in prefixes {
                    Self::delete_prefix(tx, key, p)?;
                }
            }
            Effect::Upsert {
                slot,
                append,
                replaces,
                supersedes,
            } => {
                for r in replaces {
                    tx.exec_drop(
                        "DELETE FROM netbridge_journal_entries WHERE `key` = ? AND slot = ?",
                        (key, r.as_bytes()),
                    )?;
                }
                for p in supersedes {
                    Self::delete_prefix(tx, key, p)?;
                }
                let entry = change.entry(Some(slot.clone()));
                // The slot's entry and the next position in one read.
                let (next, id, seq): (i64, Option<u64>, Option<i64>) = tx
                    .exec_row(
                        "SELECT (SELECT COALESCE(MAX(seq), 0) + 1 FROM netbridge_journal_entries
                                  WHERE `key` = ?), e.id, e.seq
                           FROM (SELECT 1 AS one) o
                           LEFT JOIN netbridge_journal_entries e ON e.`key` = ? AND e.slot = ?",
                        (key, key, slot.as_bytes()),
                    )?
                    .unwrap_or((1, None, None));
                match (id, seq) {
                    (Some(id), Some(seq)) if !*append => {
                        let sealed = self.seal_entry(key, seq, &entry)?;
                        tx.exec_drop(
                            "UPDATE netbridge_journal_entries SET network_id = ?, sealed = ? WHERE id = ?",
                            (entry.network_id.as_deref(), sealed, id),
                        )?;
                    }
                    (Some(id), _) => {
                        tx.exec_drop("DELETE FROM netbridge_journal_entries WHERE id = ?", (id,))?;
                        self.push(tx, key, &entry, Some(next))?;
                    }
                    (None, _) => self.push(tx, key, &entry, Some(next))?,
                }
            }
        }
        Ok(())
    }
}

impl Store for MysqlStore {
    fn backend(&self) -> &'static str {
        "mysql"
    }

    fn cipher(&self) -> &secrets::Cipher {
        &self.cipher
    }

    fn create_extension(&self, new: &NewExtension) -> Result<Extension> {
        self.write(|tx| {
            Self::lock(tx, "extension-names")?;
            if ext_id(tx, true, &new.name)?.is_some() {
                return Err(RegistryError::Conflict(
                    "Extension by name already exists".into(),
                ));
            }
            let uuid = new_uuid();
            tx.exec_drop(
                "INSERT INTO extension (uuid, name, description, type, relative_path, path_ready,
                                        is_user_defined, state, created, removed)
                 VALUES (?, ?, ?, ?, ?, 0, 1, ?, ?, NULL)",
                (
                    &uuid,
                    &new.name,
                    &new.description,
                    new.ext_type.as_str(),
                    &new.path,
                    new.state.as_str(),
                    now_datetime(),
                ),
            )?;
            let id = tx
                .last_insert_id()
                .ok_or_else(|| RegistryError::Io("no id for the new extension".into()))?;
            self.put_details(tx, Owner::Extension, id, &new.details)?;
            if let Some(prepare) = new.orchestrator_requires_prepare_vm {
                set_prepare_vm(tx, id, prepare)?;
            }
            load_extension(tx, id, Include::ALL)
        })
    }

    fn update_extension(&self, uuid: &str, update: &ExtensionUpdate) -> Result<Extension> {
        self.write(|tx| {
            Self::lock(tx, &format!("extension:{uuid}"))?;
            let row = ext_by_uuid(tx, uuid)?.ok_or_else(|| not_found_extension(uuid))?;
            if let Some(description) = &update.description {
                tx.exec_drop(
                    "UPDATE extension SET description = ? WHERE id = ?",
                    (description, row.id),
                )?;
            }
            if let Some(state) = update.state {
                tx.exec_drop(
                    "UPDATE extension SET state = ? WHERE id = ?",
                    (state.as_str(), row.id),
                )?;
            }
            if let Some(prepare) = update.orchestrator_requires_prepare_vm {
                set_prepare_vm(tx, row.id, prepare)?;
            }
            if update.details != DetailsUpdate::Keep {
                let old = visible_detail(tx, Owner::Extension, row.id, offerings::SERVICES_KEY)?;
                self.apply_details(tx, Owner::Extension, row.id, &update.details, false)?;
                let new = visible_detail(tx, Owner::Extension, row.id, offerings::SERVICES_KEY)?;
                if old != new {
                    self.services_changed(tx, &row, old.as_deref(), new.as_deref())?;
                }
            }
            load_extension(tx, row.id, Include::ALL)
        })
    }

    fn delete_extension(&self, uuid: &str) -> Result<()> {
        self.write(|tx| {
            Self::lock(tx, &format!("extension:{uuid}"))?;
            let row = ext_by_uuid(tx, uuid)?.ok_or_else(|| not_found_extension(uuid))?;
            let regs: u64 = tx
                .exec_row(
                    "SELECT COUNT(*) FROM extension_resource_map WHERE extension_id = ? AND removed IS NULL",
                    (row.id,),
                )?
                .unwrap_or(0);
            if regs > 0 {
                return Err(RegistryError::Conflict(
                    "Extension has associated resources, unregister them to delete the extension"
                        .into(),
                ));
            }
            let bound: u64 = tx
                .exec_row(
                    "SELECT COUNT(*) FROM netbridge_bindings WHERE extension_id = ?",
                    (row.id,),
                )?
                .unwrap_or(0);
            if bound > 0 {
                return Err(RegistryError::Conflict(format!(
                    "Cannot delete extension '{}' as it is used by {bound} existing network(s)/VPC(s)",
                    row.ext.name
                )));
            }
            // CloudStack's own delete: details removed, the row kept with
            // `removed` set.
            tx.exec_drop(
                "DELETE FROM extension_details WHERE extension_id = ?",
                (row.id,),
            )?;
            tx.exec_drop(
                "DELETE s FROM netbridge_offering_services s JOIN netbridge_offerings o
                    ON o.id = s.offering_id WHERE o.extension_id = ?",
                (row.id,),
            )?;
            tx.exec_drop(
                "DELETE FROM netbridge_offerings WHERE extension_id = ?",
                (row.id,),
            )?;
            tx.exec_drop(
                "UPDATE extension SET removed = ? WHERE id = ?",
                (now_datetime(), row.id),
            )?;
            Ok(())
        })
    }

    fn get_extension(&self, uuid: &str, include: Include) -> Result<Option<Extension>> {
        self.read(|conn| {
            Ok(extension_full(
                conn,
                "e.uuid = ? AND e.removed IS NULL",
                uuid.into(),
                include,
            )?
            .map(|(_, ext)| ext))
        })
    }

    fn find_extension_by_name(&self, name: &str, include: Include) -> Result<Option<Extension>> {
        self.read(|conn| match ext_id(conn, true, name)? {
            Some(id) => load_extension(conn, id, include).map(Some),
            None => Ok(None),
        })
    }

    fn list_extensions(
        &self,
        filter: &ExtensionFilter,
        include: Include,
        page: Option<(usize, usize)>,
    ) -> Result<(usize, Vec<Extension>)> {
        self.read(|conn| {
            let by_resource = filter.resource_id.is_some() || filter.resource_type.is_some();
            if let (Some(id), None, None, None, false) = (
                &filter.id,
                &filter.name,
                &filter.keyword,
                filter.ext_type,
                by_resource,
            ) {
                // Hot path (`listExtensions id=…`): the row and its parts.
                let found: Vec<Extension> =
                    extension_full(conn, "e.uuid = ? AND e.removed IS NULL", id.into(), include)?
                        .map(|(_, ext)| ext)
                        .into_iter()
                        .collect();
                let count = found.len();
                let skip = page
                    .map(|(p, s)| p.saturating_sub(1).saturating_mul(s))
                    .unwrap_or(0);
                return Ok((count, found.into_iter().skip(skip).collect()));
            }
            let rows: Vec<(u64, String, String, Option<String>, String)> = match &filter.id {
                Some(id) => conn.exec(
                    "SELECT id, uuid, name, description, type FROM extension
                      WHERE uuid = ? AND removed IS NULL",
                    (id,),
                )?,
                None => conn.query(
                    "SELECT id, uuid, name, description, type FROM extension
                      WHERE removed IS NULL ORDER BY id",
                )?,
            };
            let registered: Option<std::collections::BTreeSet<u64>> = if by_resource {
                let ids: Vec<u64> = conn.exec(
                    "SELECT DISTINCT m.extension_id FROM extension_resource_map m
                       LEFT JOIN physical_network pn
                              ON m.resource_type = 'PhysicalNetwork' AND pn.id = m.resource_id
                       LEFT JOIN cluster c ON m.resource_type = 'Cluster' AND c.id = m.resource_id
                      WHERE m.removed IS NULL
                        AND (? IS NULL OR COALESCE(pn.uuid, c.uuid) = ?)
                        AND (? IS NULL OR m.resource_type = ?)",
                    (
                        &filter.resource_id,
                        &filter.resource_id,
                        filter.resource_type.map(ResourceType::as_str),
                        filter.resource_type.map(ResourceType::as_str),
                    ),
                )?;
                Some(ids.into_iter().collect())
            } else {
                None
            };
            let keyword = filter.keyword.as_ref().map(|k| k.to_lowercase());
            let mut matching = Vec::new();
            for (id, _uuid, name, description, ty) in rows {
                if registered.as_ref().is_some_and(|r| !r.contains(&id)) {
                    continue;
                }
                if let Some(n) = &filter.name {
                    if !name.eq_ignore_ascii_case(n) {
                        continue;
                    }
                }
                if let Some(t) = filter.ext_type {
                    if ExtensionType::parse(&ty) != Some(t) {
                        continue;
                    }
                }
                if let Some(k) = &keyword {
                    if !name.to_lowercase().contains(k)
                        && !description.unwrap_or_default().to_lowercase().contains(k)
                    {
                        continue;
                    }
                }
                matching.push(id);
            }
            let count = matching.len();
            let selected: Vec<u64> = match page {
                Some((page, size)) => matching
                    .into_iter()
                    .skip(page.saturating_sub(1).saturating_mul(size))
                    .take(size)
                    .collect(),
                None => matching,
            };
            let mut out = Vec::with_capacity(selected.len());
            for id in selected {
                out.push(load_extension(conn, id, include)?);
            }
            Ok((count, out))
        })
    }

    fn extension_details_full(&self, uuid: &str) -> Result<FullDetails> {
        self.read(|conn| {
            let id = ext_id(conn, false, uuid)?.ok_or_else(|| not_found_extension(uuid))?;
            self.full_details(conn, Owner::Extension, id)
        })
    }

    fn register(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
        details: &[(String, String)],
    ) -> Result<Extension> {
        self.write(|tx| {
            Self::lock(tx, &format!("extension:{ext_uuid}"))?;
            let row = ext_by_uuid(tx, ext_uuid)?
                .ok_or_else(rules::unknown_extension)?;
            rules::check_registrable(&row.ext, resource_type)?;
            let numeric = Self::resource_id_or_error(tx, resource_type, resource_id)?;
            match resource_type {
                ResourceType::PhysicalNetwork => {
                    if Self::registration(tx, row.id, resource_type, resource_id)?.is_some() {
                        return Err(rules::already_registered(&row.ext.name, resource_type, resource_id));
                    }
                }
                ResourceType::Cluster => {
                    Self::lock(tx, &format!("cluster:{numeric}"))?;
                    let existing: Option<String> = tx.exec_row(
                        "SELECT e.name FROM extension_resource_map m JOIN extension e ON e.id = m.extension_id
                          WHERE m.resource_type = 'Cluster' AND m.resource_id = ? AND m.removed IS NULL
                            AND e.removed IS NULL LIMIT 1",
                        (numeric,),
                    )?;
                    if let Some(name) = existing {
                        return Err(rules::already_registered(&name, resource_type, resource_id));
                    }
                }
            }
            tx.exec_drop(
                "INSERT INTO extension_resource_map (extension_id, resource_id, resource_type, created, removed)
                 VALUES (?, ?, ?, ?, NULL)",
                (row.id, numeric, resource_type.as_str(), now_datetime()),
            )?;
            let map_id = tx
                .last_insert_id()
                .ok_or_else(|| RegistryError::Io("no id for the new registration".into()))?;
            self.put_details(tx, Owner::Registration, map_id, details)?;
            if resource_type == ResourceType::PhysicalNetwork {
                let services = visible_detail(tx, Owner::Extension, row.id, offerings::SERVICES_KEY)?
                    .and_then(|v| offerings::parse_services(&v).ok())
                    .unwrap_or_default();
                let existing: Option<(u64, Option<String>)> = tx.exec_row(
                    "SELECT id, DATE_FORMAT(removed, '%Y-%m-%d') FROM physical_network_service_providers
                      WHERE physical_network_id = ? AND provider_name = ?",
                    (numeric, &row.ext.name),
                )?;
                let flags: Vec<String> = Service::ALL
                    .iter()
                    .map(|s| service_column(*s).to_string())
                    .collect();
                let values: Vec<u8> = Service::ALL
                    .iter()
                    .map(|s| u8::from(services.contains(s)))
                    .collect();
                match existing {
                    Some((_, None)) => log::info!(
                        "provider '{}' already exists on physical network {resource_id}; left as it is",
                        row.ext.name
                    ),
                    Some((provider_id, Some(_))) => {
                        // A provider CloudStack removed earlier: revived,
                        // because its (network, name) key is unique.
                        let sets: Vec<String> = flags
                            .iter()
                            .zip(&values)
                            .map(|(c, v)| format!("{c} = {v}"))
                            .collect();
                        tx.exec_drop(
                            format!(
                                "UPDATE physical_network_service_providers SET removed = NULL,
                                        state = 'Enabled', {} WHERE id = ?",
                                sets.join(", ")
                            ),
                            (provider_id,),
                        )?;
                    }
                    None => {
                        let values: Vec<String> = values.iter().map(u8::to_string).collect();
                        tx.exec_drop(
                            format!(
                                "INSERT INTO physical_network_service_providers
                                   (uuid, physical_network_id, provider_name, state, {})
                                 VALUES (?, ?, ?, 'Enabled', {})",
                                flags.join(", "),
                                values.join(", ")
                            ),
                            (new_uuid(), numeric, &row.ext.name),
                        )?;
                    }
                }
            }
            log::info!(
                "registered extension '{}' with {} {resource_id}",
                row.ext.name,
                resource_type.as_str()
            );
            load_extension(tx, row.id, Include::ALL)
        })
    }

    fn unregister(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
    ) -> Result<Extension> {
        self.write(|tx| {
            Self::lock(tx, &format!("extension:{ext_uuid}"))?;
            let row = ext_by_uuid(tx, ext_uuid)?
                .ok_or_else(rules::unknown_extension)?;
            let Some(map_id) = Self::registration(tx, row.id, resource_type, resource_id)? else {
                return load_extension(tx, row.id, Include::ALL);
            };
            if resource_type == ResourceType::PhysicalNetwork {
                let used: u64 = tx
                    .exec_row(
                        "SELECT COUNT(*) FROM netbridge_bindings WHERE provider = ? AND physical_network_id = ?",
                        (&row.ext.name, resource_id),
                    )?
                    .unwrap_or(0);
                if used > 0 {
                    return Err(RegistryError::Conflict(format!(
                        "Cannot unregister extension '{}' from physical network {resource_id}. Provider is used by {used} existing network service(s)",
                        row.ext.name
                    )));
                }
                // Deleted, not marked removed: the (network, name) key is
                // unique, and a later registration creates it again.
                tx.exec_drop(
                    "DELETE p FROM physical_network_service_providers p
                       JOIN physical_network pn ON pn.id = p.physical_network_id
                      WHERE pn.uuid = ? AND p.provider_name = ?",
                    (resource_id, &row.ext.name),
                )?;
            }
            tx.exec_drop(
                "DELETE FROM extension_resource_map_details WHERE extension_resource_map_id = ?",
                (map_id,),
            )?;
            tx.exec_drop(
                "UPDATE extension_resource_map SET removed = ? WHERE id = ?",
                (now_datetime(), map_id),
            )?;
            log::info!(
                "unregistered extension '{}' from {} {resource_id}",
                row.ext.name,
                resource_type.as_str()
            );
            load_extension(tx, row.id, Include::ALL)
        })
    }

    fn update_registration_details(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
        update: &DetailsUpdate,
    ) -> Result<Extension> {
        self.write(|tx| {
            Self::lock(tx, &format!("extension:{ext_uuid}"))?;
            // Everything the answer shows, read once under the lock; the
            // answer is that with the registration's new visible details.
            let (_, mut ext, map_ids) = extension_with_map_ids(
                tx,
                "e.uuid = ? AND e.removed IS NULL",
                ext_uuid.into(),
                Include::ALL,
            )?
            .ok_or_else(rules::unknown_extension)?;
            // The first registration with the resource, as `registration`.
            let at = ext
                .resources
                .iter()
                .position(|r| {
                    r.resource_type == resource_type && r.id.eq_ignore_ascii_case(resource_id)
                })
                .ok_or_else(|| {
                    RegistryError::Invalid(format!(
                        "Extension '{}' is not registered with resource {resource_id} ({})",
                        ext.name,
                        resource_type.as_str()
                    ))
                })?;
            self.apply_details(tx, Owner::Registration, map_ids[at], update, true)?;
            let shown = &mut ext.resources[at].details;
            match update {
                DetailsUpdate::Keep => {}
                DetailsUpdate::Cleanup => shown.clear(),
                DetailsUpdate::Replace(details) => {
                    *shown = details
                        .iter()
                        .filter(|(name, _)| !is_hidden_key(name))
                        .map(|(name, value)| (name.clone(), value.clone()))
                        .collect();
                }
            }
            Ok(ext)
        })
    }

    fn registration_details_full(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
    ) -> Result<FullDetails> {
        let (table, kind) = match resource_type {
            ResourceType::PhysicalNetwork => ("physical_network", "PhysicalNetwork"),
            ResourceType::Cluster => ("cluster", "Cluster"),
        };
        // What every command of a registered extension reads: one query
        // (the registration as `registration` picks it, and its details).
        let sql = format!(
            "SELECT m.id, d.name, d.value, d.display
               FROM extension e
               JOIN extension_resource_map m ON m.extension_id = e.id
                AND m.resource_type = '{kind}' AND m.removed IS NULL
               JOIN {table} r ON r.id = m.resource_id AND r.uuid = ?
               LEFT JOIN extension_resource_map_details d ON d.extension_resource_map_id = m.id
              WHERE e.uuid = ? AND e.removed IS NULL
              ORDER BY m.id, d.id"
        );
        self.read(|conn| {
            let rows: Vec<RegistrationDetailRow> = conn.exec(&sql, (resource_id, ext_uuid))?;
            let Some(first) = rows.first().map(|r| r.0) else {
                ext_id(conn, false, ext_uuid)?.ok_or_else(|| not_found_extension(ext_uuid))?;
                return Err(RegistryError::NotFound(format!(
                    "Extension {ext_uuid} is not registered with resource {resource_id} ({})",
                    resource_type.as_str()
                )));
            };
            let details = rows.into_iter().take_while(|r| r.0 == first).filter_map(
                |(_, name, value, display)| {
                    Some((name?, value.unwrap_or_default(), display.unwrap_or(1)))
                },
            );
            self.details_of_rows(Owner::Registration, details)
        })
    }

    fn registration_for_provider(
        &self,
        provider_name: &str,
        physical_network_id: &str,
    ) -> Result<Option<ProviderRegistration>> {
        self.read(|conn| {
            let Some(id) = ext_id(conn, true, provider_name)? else {
                return Ok(None);
            };
            let Some(map_id) =
                Self::registration(conn, id, ResourceType::PhysicalNetwork, physical_network_id)?
            else {
                return Ok(None);
            };
            let extension = load_extension(conn, id, Include::ALL)?;
            let provider = match conn.exec_row::<mysql::Row, _, _>(
                format!(
                    "{} WHERE p.provider_name = ? AND pn.uuid = ? AND p.removed IS NULL",
                    self.provider_sql
                ),
                (&extension.name, physical_network_id),
            )? {
                Some(row) => Some(provider_from_row(row)?),
                None => None,
            };
            let details = self.full_details(conn, Owner::Registration, map_id)?;
            Ok(Some(ProviderRegistration {
                extension,
                provider,
                details,
            }))
        })
    }

    fn extensions_on_physical_network(&self, physical_network_id: &str) -> Result<Vec<Extension>> {
        self.read(|conn| {
            let ids: Vec<u64> = conn.exec(
                "SELECT m.extension_id FROM extension_resource_map m
                   JOIN physical_network pn ON pn.id = m.resource_id
                   JOIN extension e ON e.id = m.extension_id AND e.removed IS NULL
                  WHERE m.resource_type = 'PhysicalNetwork' AND pn.uuid = ? AND m.removed IS NULL
                  ORDER BY m.id",
                (physical_network_id,),
            )?;
            ids.into_iter()
                .map(|id| load_extension(conn, id, Include::ALL))
                .collect()
        })
    }

    fn list_providers(&self, filter: &ProviderFilter) -> Result<Vec<Provider>> {
        self.read(|conn| {
            let rows: Vec<mysql::Row> = conn.exec(
                format!(
                    "{} WHERE p.removed IS NULL AND (? IS NULL OR p.uuid = ?) AND (? IS NULL OR p.provider_name = ?)
                       AND (? IS NULL OR pn.uuid = ?) AND (? IS NULL OR p.state = ?)
                     ORDER BY p.id",
                    self.provider_sql
                ),
                (
                    &filter.id,
                    &filter.id,
                    &filter.name,
                    &filter.name,
                    &filter.physical_network_id,
                    &filter.physical_network_id,
                    filter.state.map(State::as_str),
                    filter.state.map(State::as_str),
                ),
            )?;
            rows.into_iter().map(provider_from_row).collect()
        })
    }

    fn update_provider(
        &self,
        uuid: &str,
        state: Option<State>,
        services: Option<&[Service]>,
    ) -> Result<Provider> {
        let select = format!(
            "{} WHERE p.uuid = ? AND p.removed IS NULL",
            self.provider_sql
        );
        self.write(|tx| {
            let not_found = || {
                RegistryError::NotFound(format!(
                    "Unable to find network service provider with id {uuid}"
                ))
            };
            tx.exec_row::<mysql::Row, _, _>(&select, (uuid,))?
                .ok_or_else(not_found)?;
            if let Some(state) = state {
                tx.exec_drop(
                    "UPDATE physical_network_service_providers SET state = ? WHERE uuid = ?",
                    (state.as_str(), uuid),
                )?;
            }
            if let Some(services) = services {
                let sets: Vec<String> = Service::ALL
                    .iter()
                    .map(|s| {
                        format!(
                            "{} = {}",
                            service_column(*s),
                            u8::from(services.contains(s))
                        )
                    })
                    .collect();
                tx.exec_drop(
                    format!(
                        "UPDATE physical_network_service_providers SET {} WHERE uuid = ?",
                        sets.join(", ")
                    ),
                    (uuid,),
                )?;
            }
            let row = tx
                .exec_row::<mysql::Row, _, _>(&select, (uuid,))?
                .ok_or_else(not_found)?;
            provider_from_row(row)
        })
    }

    fn bind(
        &self,
        target: &BindingTarget,
        ext_uuid: &str,
        physical_network_id: &str,
        details_json: &str,
    ) -> Result<Binding> {
        self.write(|tx| {
            // The extension's lock: an unregistration checking for users of
            // the provider cannot miss a binding made meanwhile.
            Self::lock(tx, &format!("extension:{ext_uuid}"))?;
            let row = ext_by_uuid(tx, ext_uuid)?.ok_or_else(|| not_found_extension(ext_uuid))?;
            let (kind, object_id) = target.parts();
            tx.exec_drop(
                "INSERT INTO netbridge_bindings
                   (kind, object_id, extension_id, physical_network_id, provider, details, created)
                 VALUES (?, ?, ?, ?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE extension_id = VALUES(extension_id),
                   physical_network_id = VALUES(physical_network_id), provider = VALUES(provider),
                   details = VALUES(details)",
                (
                    kind,
                    object_id,
                    row.id,
                    physical_network_id,
                    &row.ext.name,
                    details_json,
                    now_datetime(),
                ),
            )?;
            Self::binding_rows(
                tx,
                "WHERE b.kind = ? AND b.object_id = ?",
                (kind, object_id).into(),
            )?
            .pop()
            .ok_or_else(|| RegistryError::Io("binding vanished after write".into()))
        })
    }

    fn unbind(&self, target: &BindingTarget) -> Result<bool> {
        let (kind, object_id) = target.parts();
        self.write(|tx| {
            tx.exec_drop(
                "DELETE FROM netbridge_bindings WHERE kind = ? AND object_id = ?",
                (kind, object_id),
            )?;
            Ok(tx.affected_rows() > 0)
        })
    }

    fn get_binding(&self, target: &BindingTarget) -> Result<Option<Binding>> {
        let (kind, object_id) = target.parts();
        self.read(|conn| {
            Ok(Self::binding_rows(
                conn,
                "WHERE b.kind = ? AND b.object_id = ?",
                (kind, object_id).into(),
            )?
            .pop())
        })
    }

    fn count_bindings(&self, provider: &str, physical_network_id: &str) -> Result<usize> {
        self.read(|conn| {
            let n: u64 = conn
                .exec_row(
                    "SELECT COUNT(*) FROM netbridge_bindings WHERE provider = ? AND physical_network_id = ?",
                    (provider, physical_network_id),
                )?
                .unwrap_or(0);
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn store_offerings(
        &self,
        ext_uuid: &str,
        generated: &[GeneratedOffering],
    ) -> Result<Vec<StoredOffering>> {
        self.write(|tx| {
            Self::lock(tx, &format!("extension:{ext_uuid}"))?;
            let row = ext_by_uuid(tx, ext_uuid)?.ok_or_else(|| not_found_extension(ext_uuid))?;
            let mut out = Vec::new();
            for g in generated {
                tx.exec_drop(
                    "DELETE s FROM netbridge_offering_services s JOIN netbridge_offerings o
                        ON o.id = s.offering_id WHERE o.extension_id = ? AND o.name = ?",
                    (row.id, &g.name),
                )?;
                tx.exec_drop(
                    "DELETE FROM netbridge_offerings WHERE extension_id = ? AND name = ?",
                    (row.id, &g.name),
                )?;
                let params_json = serde_json::to_string(&g.params)
                    .map_err(|e| RegistryError::Io(format!("cannot encode offering: {e}")))?;
                tx.exec_drop(
                    "INSERT INTO netbridge_offerings (uuid, extension_id, kind, name, command, params, created)
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        new_uuid(),
                        row.id,
                        g.kind.as_str(),
                        &g.name,
                        &g.command,
                        params_json,
                        now_datetime(),
                    ),
                )?;
                let offering = tx
                    .last_insert_id()
                    .ok_or_else(|| RegistryError::Io("no id for the new offering".into()))?;
                for s in &g.services {
                    tx.exec_drop(
                        "INSERT IGNORE INTO netbridge_offering_services (offering_id, service) VALUES (?, ?)",
                        (offering, s.as_str()),
                    )?;
                }
                out.extend(load_offering(tx, offering, &row.ext.id)?);
            }
            Ok(out)
        })
    }

    fn list_offerings(&self, ext_uuid: &str) -> Result<Vec<StoredOffering>> {
        self.read(|conn| {
            let id = ext_id(conn, false, ext_uuid)?.ok_or_else(|| not_found_extension(ext_uuid))?;
            let ids: Vec<u64> = conn.exec(
                "SELECT id FROM netbridge_offerings WHERE extension_id = ? ORDER BY id",
                (id,),
            )?;
            let mut out = Vec::new();
            for o in ids {
                out.extend(load_offering(conn, o, ext_uuid)?);
            }
            Ok(out)
        })
    }

    fn delete_offering(&self, ext_uuid: &str, name: &str) -> Result<bool> {
        self.write(|tx| {
            Self::lock(tx, &format!("extension:{ext_uuid}"))?;
            let row = ext_by_uuid(tx, ext_uuid)?.ok_or_else(|| not_found_extension(ext_uuid))?;
            tx.exec_drop(
                "DELETE s FROM netbridge_offering_services s JOIN netbridge_offerings o
                    ON o.id = s.offering_id WHERE o.extension_id = ? AND o.name = ?",
                (row.id, name),
            )?;
            tx.exec_drop(
                "DELETE FROM netbridge_offerings WHERE extension_id = ? AND name = ?",
                (row.id, name),
            )?;
            Ok(tx.affected_rows() > 0)
        })
    }

    fn journal_load(&self, key: &str) -> Result<JournalState> {
        self.read(|conn| {
            // One transaction: the head and the entries of the same moment.
            let mut tx = conn.start_transaction(TxOpts::default())?;
            let head = Self::head_in(&mut tx, key)?.unwrap_or_default();
            let entries = self.entries(&mut tx, key)?;
            tx.commit()?;
            Ok(JournalState {
                host: head.host,
                entries,
                pending_drops: head.pending_drops,
            })
        })
    }

    fn journal_head(&self, key: &str) -> Result<JournalHead> {
        self.read(|conn| Ok(Self::head_in(conn, key)?.unwrap_or_default()))
    }

    fn journal_update_head(
        &self,
        key: &str,
        change: &mut dyn FnMut(&mut JournalHead),
    ) -> Result<JournalHead> {
        self.write(|tx| {
            let mut head = Self::lock_head(tx, key)?;
            change(&mut head);
            Self::put_head(tx, key, &head)?;
            Ok(head)
        })
    }

    fn journal_record(
        &self,
        key: &str,
        host: &str,
        command: Command,
        envelope: &Value,
    ) -> Result<()> {
        check_key(key).map_err(|e| RegistryError::Invalid(e.0))?;
        let change = Change::new(command, envelope);
        self.write(|tx| match change.host_after(host) {
            // The usual case in one statement: the journal's lock taken and
            // the host named (the head stays, pending drops untouched).
            Some(host) => {
                tx.exec_drop(
                    "INSERT INTO netbridge_journal_heads (`key`, host, pending_drops, version, updated)
                     VALUES (?, ?, '', 1, ?)
                     ON DUPLICATE KEY UPDATE version = version + 1, host = VALUES(host),
                                             updated = VALUES(updated)",
                    (key, &host, now_datetime()),
                )?;
                self.apply(tx, key, &change)
            }
            // A teardown: the head may go away with the entries.
            None => {
                let mut head = Self::lock_head(tx, key)?;
                self.apply(tx, key, &change)?;
                head.host = None;
                Self::put_head(tx, key, &head)
            }
        })
    }

    fn journal_count(&self) -> Result<usize> {
        self.read(|conn| {
            let n: u64 = conn
                .query_row("SELECT COUNT(*) FROM netbridge_journal_heads")?
                .unwrap_or(0);
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn journal_keys(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            Ok(conn.query(
                "SELECT `key` FROM netbridge_journal_heads UNION SELECT `key` FROM netbridge_journal_entries ORDER BY 1",
            )?)
        })
    }

    fn list_bindings(&self) -> Result<Vec<Binding>> {
        self.read(|conn| Self::binding_rows(conn, "", mysql::Params::Empty))
    }

    fn set_registration_created(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
        created: &str,
    ) -> Result<()> {
        let created = datetime_of(created);
        self.write(|tx| {
            let ext = ext_id(tx, false, ext_uuid)?.ok_or_else(|| not_found_extension(ext_uuid))?;
            if let Some(map_id) = Self::registration(tx, ext, resource_type, resource_id)? {
                tx.exec_drop(
                    "UPDATE extension_resource_map SET created = ? WHERE id = ?",
                    (&created, map_id),
                )?;
            }
            Ok(())
        })
    }

    fn resource_exists(&self, resource_type: ResourceType, uuid: &str) -> Result<bool> {
        self.read(|conn| Ok(Self::resource_numeric_id(conn, resource_type, uuid)?.is_some()))
    }

    fn remember_resource_name(
        &self,
        _resource_type: ResourceType,
        _resource_id: &str,
        _name: &str,
    ) -> Result<()> {
        // CloudStack's own physical_network and cluster rows name them.
        Ok(())
    }

    fn create_job(&self, new: &NewJob) -> Result<Job> {
        self.write(|tx| {
            let uuid = new_uuid();
            tx.exec_drop(
                "INSERT INTO netbridge_async_jobs
                        (uuid, command, cmd, status, instance_type, instance_id, owner, created)
                 VALUES (?, ?, ?, 0, ?, ?, ?, ?)",
                (
                    &uuid,
                    &new.command,
                    &new.cmd,
                    &new.instance_type,
                    &new.instance_id,
                    &new.owner,
                    now_datetime(),
                ),
            )?;
            load_job(tx, &uuid)?.ok_or_else(|| RegistryError::Io("job vanished after write".into()))
        })
    }

    fn complete_job(
        &self,
        uuid: &str,
        status: JobStatus,
        result_code: i64,
        result: &str,
    ) -> Result<bool> {
        self.write(|tx| {
            tx.exec_drop(
                "UPDATE netbridge_async_jobs
                    SET status = ?, result_code = ?, result = ?, completed = ?
                  WHERE uuid = ? AND status = 0",
                (status as i64, result_code, result, now_datetime(), uuid),
            )?;
            Ok(tx.affected_rows() > 0)
        })
    }

    fn get_job(&self, uuid: &str) -> Result<Option<Job>> {
        self.read(|conn| load_job(conn, uuid))
    }

    fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let since = filter.created_since.as_deref().map(datetime_of);
        self.read(|conn| {
            let rows: Vec<mysql::Row> = conn.exec(
                format!(
                    "SELECT {JOB_COLUMNS} FROM netbridge_async_jobs
                      WHERE (? IS NULL OR created >= ?)
                        AND (? IS NULL OR INSTR(LOWER(command), LOWER(?)) > 0)
                        AND (? = 0 OR status = 0)
                      ORDER BY id"
                ),
                (
                    &since,
                    &since,
                    &filter.keyword,
                    &filter.keyword,
                    filter.pending_only,
                ),
            )?;
            rows.iter().map(job_from_row).collect()
        })
    }

    fn api_keys(&self) -> Result<Vec<StoredApiKey>> {
        let rows: Vec<(String, String, String)> = self.read(|conn| {
            Ok(conn.query("SELECT name, apikey, secretkey FROM netbridge_api_keys ORDER BY id")?)
        })?;
        rows.into_iter()
            .map(|(name, apikey, sealed)| {
                let secretkey = open_sealed(&self.cipher, &api_key_label(&apikey), &sealed)?
                    .ok_or_else(|| {
                        RegistryError::Secret(format!(
                            "the secret of API key '{name}' is not sealed"
                        ))
                    })?;
                Ok(StoredApiKey {
                    name,
                    apikey,
                    secretkey,
                })
            })
            .collect()
    }

    fn add_api_key(&self, name: &str, apikey: &str, secretkey: &str) -> Result<()> {
        let sealed = seal_value(&self.cipher, &api_key_label(apikey), secretkey)?;
        self.write(|tx| {
            Self::lock(tx, "api-keys")?;
            let taken: Option<u64> = tx.exec_row(
                "SELECT id FROM netbridge_api_keys WHERE name = ? OR apikey = ?",
                (name, apikey),
            )?;
            if taken.is_some() {
                return Err(RegistryError::Conflict(format!(
                    "a key named '{name}' already exists"
                )));
            }
            tx.exec_drop(
                "INSERT INTO netbridge_api_keys (name, apikey, secretkey, created) VALUES (?, ?, ?, ?)",
                (name, apikey, &sealed, now_datetime()),
            )?;
            Ok(())
        })
    }

    fn import_extension(&self, ext: &Extension, details: &FullDetails) -> Result<()> {
        let created = datetime_of(&ext.created);
        self.write(|tx| {
            Self::lock(tx, "extension-names")?;
            let taken: Option<u64> = tx.exec_row(
                "SELECT id FROM extension WHERE uuid = ? OR (name = ? AND removed IS NULL) LIMIT 1",
                (&ext.id, &ext.name),
            )?;
            if taken.is_some() {
                return Err(RegistryError::Conflict(format!(
                    "extension '{}' ({}) already exists",
                    ext.name, ext.id
                )));
            }
            tx.exec_drop(
                "INSERT INTO extension (uuid, name, description, type, relative_path, path_ready,
                                        is_user_defined, state, created, removed)
                 VALUES (?, ?, ?, ?, ?, 0, 1, ?, ?, NULL)",
                (
                    &ext.id,
                    &ext.name,
                    &ext.description,
                    ext.ext_type.as_str(),
                    &ext.path,
                    ext.state.as_str(),
                    &created,
                ),
            )?;
            let id = tx
                .last_insert_id()
                .ok_or_else(|| RegistryError::Io("no id for the imported extension".into()))?;
            let merged: Vec<(String, String)> = details.merged().into_iter().collect();
            self.put_details(tx, Owner::Extension, id, &merged)?;
            if let Some(prepare) = ext.orchestrator_requires_prepare_vm {
                set_prepare_vm(tx, id, prepare)?;
            }
            Ok(())
        })
    }

    fn journal_replace(&self, key: &str, state: &JournalState) -> Result<()> {
        self.write(|tx| {
            Self::lock_head(tx, key)?;
            tx.exec_drop(
                "DELETE FROM netbridge_journal_entries WHERE `key` = ?",
                (key,),
            )?;
            // Positions 1, 2, … once every entry is gone.
            for (seq, e) in (1..).zip(&state.entries) {
                self.push(tx, key, e, Some(seq))?;
            }
            Self::put_head(tx, key, &state.head())
        })
    }
}
