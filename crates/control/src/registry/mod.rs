//! The registry: extensions, registrations, network service providers,
//! network/VPC device bindings, generated offerings and the failover
//! journal, behind one [`Store`] interface with two backends:
//!
//! - [`sqlite::SqliteStore`]: one embedded SQLite file, the default (a single
//!   management server, the demo, the tests);
//! - [`mysql::MysqlStore`]: CloudStack's own MySQL/MariaDB database, shared
//!   by every management server. What CloudStack owns lives in CloudStack's
//!   tables with CloudStack's semantics (`extension`, `extension_details`,
//!   `extension_resource_map`, `extension_resource_map_details`,
//!   `physical_network_service_providers`); what only netbridge knows lives
//!   in its own `netbridge_*` tables.
//!
//! [`StoreLocation`] is the one setting that chooses between them
//! (`sqlite:///path`, a plain path, `mysql://user@host:port/cloud`, or
//! CloudStack's `db.properties`).
//!
//! Hidden details (see [`secrets`]) are stored only as AES-256-GCM ciphertext.
//! Reads for API responses never touch them; [`Registry::registration_details_full`]
//! and [`Registry::extension_details_full`] decrypt them for internal callers.

pub mod journal;
pub mod location;
pub mod migrate;
pub mod mysql;
pub mod secrets;
pub mod sqlite;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::dispatch::{JournalHead, JournalState};
use crate::offerings::{GeneratedOffering, Service};
pub use journal::RegistryJournal;
pub use location::{LocationError, MysqlLocation, StoreLocation};
use netbridge_protocol::Command;
pub use secrets::{is_hidden_key, Secret};

/// Registry errors. `Invalid`, `NotFound` and `Conflict` carry user-facing
/// texts (API code 431); the others are internal (530).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("registry database error: {0}")]
    Storage(#[from] rusqlite::Error),
    #[error("registry database error: {0}")]
    Mysql(#[source] ::mysql::Error),
    /// Another management server held the rows too long (lock wait timeout,
    /// deadlock, or a Galera certification conflict) even after the bounded
    /// retries: the call changed nothing and may be retried.
    #[error("{0}")]
    Busy(String),
    /// The store cannot be used as configured (location, credentials,
    /// CloudStack schema); names what to fix.
    #[error("{0}")]
    Config(String),
    #[error("secret store error: {0}")]
    Secret(String),
    #[error("key file error: {0}")]
    KeyFile(String),
    /// The database path names something unusable (a directory, a file
    /// that is not a database, a place that cannot be written).
    #[error("database error: {0}")]
    Database(String),
    #[error("registry I/O error: {0}")]
    Io(String),
}

impl RegistryError {
    /// Whether the error is the caller's (parameter/state) rather than ours.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            RegistryError::Invalid(_) | RegistryError::NotFound(_) | RegistryError::Conflict(_)
        )
    }

    /// Whether the same call may succeed when repeated (concurrent
    /// management servers held the rows).
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Busy(_))
    }

    /// What is wrong when a setting (the key file, the database path or
    /// the store location) names something unusable: the operator's to
    /// fix, retrying will not help. The text names the setting.
    pub fn setting_problem(&self) -> Option<&str> {
        match self {
            RegistryError::KeyFile(p) | RegistryError::Database(p) | RegistryError::Config(p) => {
                Some(p)
            }
            _ => None,
        }
    }
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Extension type (exact case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionType {
    Orchestrator,
    NetworkOrchestrator,
}

impl ExtensionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ExtensionType::Orchestrator => "Orchestrator",
            ExtensionType::NetworkOrchestrator => "NetworkOrchestrator",
        }
    }
    /// Exact-case parse, as the API requires.
    pub fn parse(value: &str) -> Option<ExtensionType> {
        match value {
            "Orchestrator" => Some(ExtensionType::Orchestrator),
            "NetworkOrchestrator" => Some(ExtensionType::NetworkOrchestrator),
            _ => None,
        }
    }
}

/// Registration resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceType {
    Cluster,
    PhysicalNetwork,
}

impl ResourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Cluster => "Cluster",
            ResourceType::PhysicalNetwork => "PhysicalNetwork",
        }
    }
    /// Case-insensitive parse.
    pub fn parse(value: &str) -> Option<ResourceType> {
        if value.eq_ignore_ascii_case("Cluster") {
            Some(ResourceType::Cluster)
        } else if value.eq_ignore_ascii_case("PhysicalNetwork") {
            Some(ResourceType::PhysicalNetwork)
        } else {
            None
        }
    }
}

/// `Enabled` / `Disabled` (extensions and providers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Enabled,
    Disabled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Enabled => "Enabled",
            State::Disabled => "Disabled",
        }
    }
    /// Case-insensitive parse.
    pub fn parse(value: &str) -> Option<State> {
        if value.eq_ignore_ascii_case("Enabled") {
            Some(State::Enabled)
        } else if value.eq_ignore_ascii_case("Disabled") {
            Some(State::Disabled)
        } else {
            None
        }
    }
}

/// A registration as returned to API callers (visible details only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The resource's UUID (cluster or physical network).
    pub id: String,
    /// The cluster's or physical network's name, when the store knows it
    /// (see [`Registry::remember_resource_name`]).
    pub name: Option<String>,
    pub resource_type: ResourceType,
    pub created: String,
    pub details: BTreeMap<String, String>,
}

/// An extension as returned to API callers (visible details only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub id: String,
    pub name: String,
    pub description: String,
    pub ext_type: ExtensionType,
    pub state: State,
    pub path: String,
    /// `orchestratorrequirespreparevm`, when set (Orchestrator extensions).
    pub orchestrator_requires_prepare_vm: Option<bool>,
    pub created: String,
    /// Visible details; empty unless requested.
    pub details: BTreeMap<String, String>,
    /// Registrations; empty unless requested.
    pub resources: Vec<Resource>,
}

/// A network service provider created by registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub id: String,
    pub name: String,
    pub physical_network_id: String,
    pub state: State,
    pub services: Vec<String>,
    pub extension_id: String,
    pub created: String,
}

/// What a device binding belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingTarget {
    Network(String),
    Vpc(String),
}

impl BindingTarget {
    pub(crate) fn parts(&self) -> (&'static str, &str) {
        match self {
            BindingTarget::Network(id) => ("network", id),
            BindingTarget::Vpc(id) => ("vpc", id),
        }
    }
}

/// `extension.details` of a network or VPC, and the provider it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub target: BindingTarget,
    pub extension_id: String,
    pub physical_network_id: String,
    /// Provider (extension) name.
    pub provider: String,
    /// The opaque JSON `ensure-network-device` returned.
    pub details: String,
    pub created: String,
}

/// An offering the bridge generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOffering {
    pub id: String,
    pub extension_id: String,
    pub kind: String,
    pub name: String,
    pub command: String,
    pub params: Vec<(String, String)>,
    pub services: Vec<String>,
    pub created: String,
}

/// All details of an extension or registration, hidden ones decrypted.
/// For internal callers only; never serialise this into a response or log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FullDetails {
    pub visible: BTreeMap<String, String>,
    pub hidden: BTreeMap<String, Secret>,
}

impl FullDetails {
    /// Value of `key` (exact), visible or hidden.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.visible
            .get(key)
            .map(String::as_str)
            .or_else(|| self.hidden.get(key).map(Secret::expose))
    }

    /// One plain map of every detail, hidden ones exposed, e.g. for
    /// `Dispatcher::execute_with_details`. Internal use only: never log it or
    /// put it in a response.
    pub fn merged(&self) -> BTreeMap<String, String> {
        let mut out = self.visible.clone();
        for (k, v) in &self.hidden {
            out.insert(k.clone(), v.expose().to_string());
        }
        out
    }
}

/// See [`Registry::registration_for_provider`]. Holds decrypted secrets:
/// internal use only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRegistration {
    /// With visible details and registrations.
    pub extension: Extension,
    /// The provider row (state, services), if it exists.
    pub provider: Option<Provider>,
    /// The registration's details, hidden ones decrypted.
    pub details: FullDetails,
}

/// How a details map changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetailsUpdate {
    /// No change.
    Keep,
    /// New set = these keys, plus existing hidden keys not re-sent.
    Replace(Vec<(String, String)>),
    /// Remove details (which ones depends on the owner; see callers).
    Cleanup,
}

/// Input of [`Registry::create_extension`] (already validated).
#[derive(Debug, Clone)]
pub struct NewExtension {
    pub name: String,
    pub description: String,
    pub ext_type: ExtensionType,
    pub state: State,
    pub path: String,
    pub orchestrator_requires_prepare_vm: Option<bool>,
    pub details: Vec<(String, String)>,
}

/// Input of [`Registry::update_extension`] (already validated).
#[derive(Debug, Clone)]
pub struct ExtensionUpdate {
    pub description: Option<String>,
    pub state: Option<State>,
    pub orchestrator_requires_prepare_vm: Option<bool>,
    pub details: DetailsUpdate,
}

/// Filter of [`Registry::list_extensions`].
#[derive(Debug, Clone, Default)]
pub struct ExtensionFilter {
    pub id: Option<String>,
    pub name: Option<String>,
    pub keyword: Option<String>,
    pub ext_type: Option<ExtensionType>,
    /// Only extensions registered with this resource (and type, if given).
    pub resource_id: Option<String>,
    pub resource_type: Option<ResourceType>,
}

/// What a listed extension carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Include {
    pub details: bool,
    pub resources: bool,
}

impl Include {
    pub const ALL: Include = Include {
        details: true,
        resources: true,
    };
}

/// Filter of [`Registry::list_providers`].
#[derive(Debug, Clone, Default)]
pub struct ProviderFilter {
    pub id: Option<String>,
    pub name: Option<String>,
    pub physical_network_id: Option<String>,
    pub state: Option<State>,
}

/// An admin key pair of the HTTP API as the store holds it (the secret
/// sealed at rest, like a hidden detail).
#[derive(Debug, Clone)]
pub struct StoredApiKey {
    pub name: String,
    pub apikey: String,
    pub secretkey: Secret,
}

/// State of an asynchronous job (`jobstatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Pending = 0,
    Succeeded = 1,
    Failed = 2,
}

impl JobStatus {
    pub(crate) fn from_code(code: i64) -> JobStatus {
        match code {
            1 => JobStatus::Succeeded,
            2 => JobStatus::Failed,
            _ => JobStatus::Pending,
        }
    }
}

/// An asynchronous API job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    /// API command name (`updateNetworkServiceProvider`).
    pub command: String,
    /// CloudStack's command class, reported as `cmd`.
    pub cmd: String,
    pub status: JobStatus,
    /// `jobresultcode`: 0, or 530 for a failed job.
    pub result_code: i64,
    /// `jobresult` JSON text, once the job is done.
    pub result: Option<String>,
    pub instance_type: Option<String>,
    pub instance_id: Option<String>,
    /// The process running the job (see `api::jobs`).
    pub owner: String,
    pub created: String,
    pub completed: Option<String>,
}

/// Input of [`Registry::create_job`].
#[derive(Debug, Clone)]
pub struct NewJob {
    pub command: String,
    pub cmd: String,
    pub instance_type: Option<String>,
    pub instance_id: Option<String>,
    pub owner: String,
}

/// Filter of [`Registry::list_jobs`].
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Jobs created at or after this CloudStack timestamp.
    pub created_since: Option<String>,
    /// Case-insensitive substring of the command name.
    pub keyword: Option<String>,
    /// Only jobs still pending.
    pub pending_only: bool,
}

/// The registration rules every store enforces, worded as CloudStack words
/// them (the API conformance suite compares the texts).
pub(crate) mod rules {
    use super::{Extension, ExtensionType, RegistryError, ResourceType};

    pub(crate) fn unknown_extension() -> RegistryError {
        RegistryError::Invalid("Invalid extension specified".into())
    }

    /// Only a NetworkOrchestrator extension goes on a physical network.
    pub(crate) fn check_registrable(
        ext: &Extension,
        resource_type: ResourceType,
    ) -> Result<(), RegistryError> {
        if resource_type == ResourceType::PhysicalNetwork
            && ext.ext_type != ExtensionType::NetworkOrchestrator
        {
            return Err(RegistryError::Invalid(format!(
                "Only extensions of type NetworkOrchestrator can be registered with a physical network. Extension '{}' is of type {}.",
                ext.name,
                ext.ext_type.as_str()
            )));
        }
        Ok(())
    }

    /// Extension `name` already holds `resource_id`.
    pub(crate) fn already_registered(
        name: &str,
        resource_type: ResourceType,
        resource_id: &str,
    ) -> RegistryError {
        let what = match resource_type {
            ResourceType::PhysicalNetwork => "physical network",
            ResourceType::Cluster => "cluster",
        };
        RegistryError::Conflict(format!(
            "Extension '{name}' is already registered with {what} {resource_id}"
        ))
    }
}

/// `2026-11-27T21:09:09+0000`, CloudStack's date format.
pub fn now_timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_timestamp(secs)
}

/// [`now_timestamp`]'s format for a Unix time in milliseconds (before
/// 1970: the epoch).
pub fn format_timestamp_ms(ms: i64) -> String {
    format_timestamp(u64::try_from(ms / 1000).unwrap_or(0))
}

pub(crate) fn format_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (proleptic Gregorian), Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+0000",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

pub(crate) fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What every backend provides; [`Registry`] is the handle callers hold.
/// Each read-modify-write is one transaction of the backend (atomic across
/// threads and, for shared backends, across processes and management
/// servers). Semantics and error texts are those documented on
/// [`Registry`]'s methods and are the same for every backend.
pub trait Store: Send + Sync {
    /// `sqlite` or `mysql`.
    fn backend(&self) -> &'static str;
    /// The cipher of hidden details and journal entries.
    fn cipher(&self) -> &secrets::Cipher;
    fn create_extension(&self, new: &NewExtension) -> Result<Extension>;
    fn update_extension(&self, uuid: &str, update: &ExtensionUpdate) -> Result<Extension>;
    fn delete_extension(&self, uuid: &str) -> Result<()>;
    fn get_extension(&self, uuid: &str, include: Include) -> Result<Option<Extension>>;
    fn find_extension_by_name(&self, name: &str, include: Include) -> Result<Option<Extension>>;
    fn list_extensions(
        &self,
        filter: &ExtensionFilter,
        include: Include,
        page: Option<(usize, usize)>,
    ) -> Result<(usize, Vec<Extension>)>;
    fn extension_details_full(&self, uuid: &str) -> Result<FullDetails>;
    fn register(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
        details: &[(String, String)],
    ) -> Result<Extension>;
    fn unregister(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
    ) -> Result<Extension>;
    fn update_registration_details(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
        update: &DetailsUpdate,
    ) -> Result<Extension>;
    fn registration_details_full(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
    ) -> Result<FullDetails>;
    fn registration_for_provider(
        &self,
        provider_name: &str,
        physical_network_id: &str,
    ) -> Result<Option<ProviderRegistration>>;
    fn extensions_on_physical_network(&self, physical_network_id: &str) -> Result<Vec<Extension>>;
    fn list_providers(&self, filter: &ProviderFilter) -> Result<Vec<Provider>>;
    fn update_provider(
        &self,
        uuid: &str,
        state: Option<State>,
        services: Option<&[Service]>,
    ) -> Result<Provider>;
    fn bind(
        &self,
        target: &BindingTarget,
        ext_uuid: &str,
        physical_network_id: &str,
        details_json: &str,
    ) -> Result<Binding>;
    fn unbind(&self, target: &BindingTarget) -> Result<bool>;
    fn get_binding(&self, target: &BindingTarget) -> Result<Option<Binding>>;
    fn count_bindings(&self, provider: &str, physical_network_id: &str) -> Result<usize>;
    fn store_offerings(
        &self,
        ext_uuid: &str,
        generated: &[GeneratedOffering],
    ) -> Result<Vec<StoredOffering>>;
    fn list_offerings(&self, ext_uuid: &str) -> Result<Vec<StoredOffering>>;
    fn delete_offering(&self, ext_uuid: &str, name: &str) -> Result<bool>;

    // The failover journal (see `crate::dispatch::CommandJournal`); keys are
    // checked by the caller.
    fn journal_load(&self, key: &str) -> Result<JournalState>;
    fn journal_head(&self, key: &str) -> Result<JournalHead>;
    fn journal_update_head(
        &self,
        key: &str,
        change: &mut dyn FnMut(&mut JournalHead),
    ) -> Result<JournalHead>;
    fn journal_record(
        &self,
        key: &str,
        host: &str,
        command: Command,
        envelope: &Value,
    ) -> Result<()>;
    /// Number of journaled networks/VPCs.
    fn journal_count(&self) -> Result<usize>;
    /// Every journal key (for migration and status).
    fn journal_keys(&self) -> Result<Vec<String>>;
    /// Every binding (for migration).
    fn list_bindings(&self) -> Result<Vec<Binding>>;
    /// Replaces the whole journal of `key` (for migration).
    fn journal_replace(&self, key: &str, state: &JournalState) -> Result<()>;
    /// Creates an extension as it is elsewhere: same uuid, name, state,
    /// path, `created` and every detail (hidden ones sealed with this
    /// store's key). For migration; `Conflict` when the uuid or name exists.
    fn import_extension(&self, ext: &Extension, details: &FullDetails) -> Result<()>;
    /// Sets when a registration was made (migration keeps the original).
    fn set_registration_created(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
        created: &str,
    ) -> Result<()>;
    /// Whether a resource can be registered with (CloudStack's database:
    /// its `physical_network` / `cluster` row exists; SQLite: always).
    fn resource_exists(&self, resource_type: ResourceType, uuid: &str) -> Result<bool>;

    /// Records the name of a cluster or physical network for
    /// `resources[].name` (CloudStack's database has it already).
    fn remember_resource_name(
        &self,
        resource_type: ResourceType,
        resource_id: &str,
        name: &str,
    ) -> Result<()>;
    /// Asynchronous jobs, shared by every process on the store.
    fn create_job(&self, new: &NewJob) -> Result<Job>;
    /// Completes a pending job; `false` when it was already completed.
    fn complete_job(
        &self,
        uuid: &str,
        status: JobStatus,
        result_code: i64,
        result: &str,
    ) -> Result<bool>;
    fn get_job(&self, uuid: &str) -> Result<Option<Job>>;
    /// Jobs, oldest first.
    fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>>;
    /// The HTTP API's admin keys, oldest first.
    fn api_keys(&self) -> Result<Vec<StoredApiKey>>;
    /// Adds an admin key; `Conflict` when the name or the api key exists.
    fn add_api_key(&self, name: &str, apikey: &str, secretkey: &str) -> Result<()>;
}

/// The registry handle; `Send + Sync`, shared by the API, the dispatcher's
/// journal and the bindings of one process.
pub struct Registry {
    store: Box<dyn Store>,
    location: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("location", &self.location)
            .finish()
    }
}

impl Registry {
    /// Opens (creating and migrating) the SQLite database `database` and
    /// the key file.
    pub fn open(database: &Path, key_file: &Path) -> Result<Registry> {
        Registry::open_at(&StoreLocation::Sqlite(database.to_path_buf()), key_file)
    }

    /// Opens the store at `location` with the key file protecting secrets.
    /// MySQL: checks CloudStack's tables and creates or migrates netbridge's
    /// own `netbridge_*` tables.
    pub fn open_at(location: &StoreLocation, key_file: &Path) -> Result<Registry> {
        let store: Box<dyn Store> = match location {
            StoreLocation::Sqlite(path) => Box::new(sqlite::SqliteStore::open(path, key_file)?),
            StoreLocation::Mysql(m) => Box::new(mysql::MysqlStore::open(m, key_file)?),
        };
        Ok(Registry {
            store,
            location: location.to_string(),
        })
    }

    /// The backend in use: `sqlite` or `mysql`.
    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    /// Where the store is, for messages (never with a password).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The backend itself (migration, tests).
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    // ---- resource names and asynchronous jobs ------------------------------

    /// Records the name of a cluster or physical network (CloudStack sends
    /// it with every network command, as `physicalnetworkname`), so that
    /// `resources[].name` can show it. A write only when it changed.
    pub fn remember_resource_name(
        &self,
        resource_type: ResourceType,
        resource_id: &str,
        name: &str,
    ) -> Result<()> {
        self.store
            .remember_resource_name(resource_type, resource_id, name)
    }

    /// Creates a pending job.
    pub fn create_job(&self, new: &NewJob) -> Result<Job> {
        self.store.create_job(new)
    }

    /// Completes a pending job with its result (`jobresult` JSON text).
    /// A job already completed is left as it is; returns whether it changed.
    pub fn complete_job(
        &self,
        uuid: &str,
        status: JobStatus,
        result_code: i64,
        result: &str,
    ) -> Result<bool> {
        self.store.complete_job(uuid, status, result_code, result)
    }

    /// One job by id.
    pub fn get_job(&self, uuid: &str) -> Result<Option<Job>> {
        self.store.get_job(uuid)
    }

    /// Jobs, oldest first.
    pub fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        self.store.list_jobs(filter)
    }

    /// Pending jobs (to find those whose process is gone).
    pub fn pending_jobs(&self) -> Result<Vec<Job>> {
        self.store.list_jobs(&JobFilter {
            pending_only: true,
            ..JobFilter::default()
        })
    }

    /// The HTTP API's admin keys (shared by every management server on
    /// the store), secrets decrypted in memory only.
    pub fn api_keys(&self) -> Result<Vec<StoredApiKey>> {
        self.store.api_keys()
    }

    /// Adds an admin key of the HTTP API.
    pub fn add_api_key(&self, name: &str, apikey: &str, secretkey: &str) -> Result<()> {
        self.store.add_api_key(name, apikey, secretkey)
    }

    // ---- extensions -------------------------------------------------------

    /// Creates an extension. Conflict: "Extension by name already exists".
    pub fn create_extension(&self, new: &NewExtension) -> Result<Extension> {
        self.store.create_extension(new)
    }

    /// Updates an extension. With `DetailsUpdate::Cleanup` the visible details
    /// are removed and the hidden ones kept. Service changes in
    /// `network.services` propagate to the extension's providers; removing a
    /// service an offering uses is refused.
    pub fn update_extension(&self, uuid: &str, update: &ExtensionUpdate) -> Result<Extension> {
        self.store.update_extension(uuid, update)
    }

    /// Deletes an extension; refused while registered anywhere or while a
    /// network uses it.
    pub fn delete_extension(&self, uuid: &str) -> Result<()> {
        self.store.delete_extension(uuid)
    }

    /// One extension by UUID.
    pub fn get_extension(&self, uuid: &str, include: Include) -> Result<Option<Extension>> {
        self.store.get_extension(uuid, include)
    }

    /// One extension by name (case-insensitive).
    pub fn find_extension_by_name(
        &self,
        name: &str,
        include: Include,
    ) -> Result<Option<Extension>> {
        self.store.find_extension_by_name(name, include)
    }

    /// Extensions matching `filter`: (total count, the requested page).
    pub fn list_extensions(
        &self,
        filter: &ExtensionFilter,
        include: Include,
        page: Option<(usize, usize)>,
    ) -> Result<(usize, Vec<Extension>)> {
        self.store.list_extensions(filter, include, page)
    }

    /// Every detail of an extension, hidden ones decrypted. Internal use only.
    pub fn extension_details_full(&self, uuid: &str) -> Result<FullDetails> {
        self.store.extension_details_full(uuid)
    }

    // ---- registrations ----------------------------------------------------

    /// Registers an extension with a cluster or physical network; on a
    /// physical network also creates the provider.
    pub fn register(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
        details: &[(String, String)],
    ) -> Result<Extension> {
        self.store
            .register(ext_uuid, resource_type, resource_id, details)
    }

    /// Unregisters; refused while a binding uses the provider on that
    /// physical network. No mapping: silent success.
    pub fn unregister(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
    ) -> Result<Extension> {
        self.store.unregister(ext_uuid, resource_type, resource_id)
    }

    /// `updateRegisteredExtension`: `Cleanup` removes every detail (hidden
    /// too); `Replace` keeps existing hidden keys not re-sent and drops
    /// visible keys not re-sent; `Keep` changes nothing.
    pub fn update_registration_details(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
        update: &DetailsUpdate,
    ) -> Result<Extension> {
        self.store
            .update_registration_details(ext_uuid, resource_type, resource_id, update)
    }

    /// Every detail of a registration, hidden ones decrypted (e.g.
    /// `executor.key`). Internal use only.
    pub fn registration_details_full(
        &self,
        ext_uuid: &str,
        resource_type: ResourceType,
        resource_id: &str,
    ) -> Result<FullDetails> {
        self.store
            .registration_details_full(ext_uuid, resource_type, resource_id)
    }

    /// What dispatch needs to reach the executors behind provider
    /// `provider_name` (= extension name, case-insensitive) on a physical
    /// network: the extension, its provider row and the registration's
    /// details with hidden ones decrypted. `None` when not registered there.
    pub fn registration_for_provider(
        &self,
        provider_name: &str,
        physical_network_id: &str,
    ) -> Result<Option<ProviderRegistration>> {
        self.store
            .registration_for_provider(provider_name, physical_network_id)
    }

    /// Extensions registered with a physical network (with their visible
    /// details and registrations), in registration order.
    pub fn extensions_on_physical_network(
        &self,
        physical_network_id: &str,
    ) -> Result<Vec<Extension>> {
        self.store
            .extensions_on_physical_network(physical_network_id)
    }

    // ---- providers --------------------------------------------------------

    /// Providers created by registration.
    pub fn list_providers(&self, filter: &ProviderFilter) -> Result<Vec<Provider>> {
        self.store.list_providers(filter)
    }

    /// Changes a provider's state and/or service list.
    pub fn update_provider(
        &self,
        uuid: &str,
        state: Option<State>,
        services: Option<&[Service]>,
    ) -> Result<Provider> {
        self.store.update_provider(uuid, state, services)
    }

    // ---- bindings ---------------------------------------------------------

    /// Records (or replaces) the device binding of a network or VPC: the
    /// `extension.details` JSON and the provider/physical network it uses.
    pub fn bind(
        &self,
        target: &BindingTarget,
        ext_uuid: &str,
        physical_network_id: &str,
        details_json: &str,
    ) -> Result<Binding> {
        serde_json::from_str::<Value>(details_json).map_err(|_| {
            RegistryError::Invalid("extension.details of a binding must be valid JSON".into())
        })?;
        self.store
            .bind(target, ext_uuid, physical_network_id, details_json)
    }

    /// As [`Registry::bind`], naming the provider (= extension name,
    /// case-insensitive) instead of the extension id, as CloudStack's
    /// network objects do.
    pub fn bind_provider(
        &self,
        target: &BindingTarget,
        provider_name: &str,
        physical_network_id: &str,
        details_json: &str,
    ) -> Result<Binding> {
        let ext = self
            .find_extension_by_name(
                provider_name,
                Include {
                    details: false,
                    resources: false,
                },
            )?
            .ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "No extension provides network service provider '{provider_name}'"
                ))
            })?;
        self.bind(target, &ext.id, physical_network_id, details_json)
    }

    /// Removes a binding; returns whether one existed.
    pub fn unbind(&self, target: &BindingTarget) -> Result<bool> {
        self.store.unbind(target)
    }

    /// The binding of a network or VPC, if any.
    pub fn get_binding(&self, target: &BindingTarget) -> Result<Option<Binding>> {
        self.store.get_binding(target)
    }

    /// Number of networks/VPCs using provider `provider` on a physical network.
    pub fn count_bindings(&self, provider: &str, physical_network_id: &str) -> Result<usize> {
        self.store.count_bindings(provider, physical_network_id)
    }

    // ---- offerings --------------------------------------------------------

    /// Stores generated offerings (replacing same-named ones of the extension).
    pub fn store_offerings(
        &self,
        ext_uuid: &str,
        generated: &[GeneratedOffering],
    ) -> Result<Vec<StoredOffering>> {
        self.store.store_offerings(ext_uuid, generated)
    }

    /// Offerings generated for an extension.
    pub fn list_offerings(&self, ext_uuid: &str) -> Result<Vec<StoredOffering>> {
        self.store.list_offerings(ext_uuid)
    }

    /// Forgets a generated offering (e.g. after it was deleted in CloudStack),
    /// which frees its services for removal. Returns whether one existed.
    pub fn delete_offering(&self, ext_uuid: &str, name: &str) -> Result<bool> {
        self.store.delete_offering(ext_uuid, name)
    }

    /// Number of journaled networks/VPCs (for status and tests).
    pub fn journal_count(&self) -> Result<usize> {
        self.store.journal_count()
    }

    /// `envelope` with the sealed values of its registration details
    /// decrypted (CloudStack passes the hidden details it holds as netbridge
    /// sealed them); `None` when nothing in it is sealed.
    pub fn reveal_envelope(&self, envelope: &[u8]) -> Result<Option<Vec<u8>>> {
        mysql::reveal_sealed_envelope(self.store.cipher(), envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_cloudstack_format() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00+0000");
        assert_eq!(format_timestamp(1_795_900_149), "2026-11-28T21:09:09+0000");
        assert_eq!(format_timestamp(951_782_400), "2000-02-29T00:00:00+0000");
    }
}
