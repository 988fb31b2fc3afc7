//! The CloudStack-style API: one dispatcher reached from JNI, the CLI and HTTP.
//!
//! Contract shared by every door:
//! - [`Api::open`] with an [`ApiConfig`]; the handle is `Send + Sync` and is
//!   used concurrently from many threads.
//! - [`Api::call`] takes a command name (`createExtension`, …) and flat
//!   CloudStack parameters (`details[0].key=…`), and returns the CloudStack JSON
//!   response object (`{"<command lower-case>response": {…}}`) or an [`ApiError`]
//!   carrying CloudStack's error code (431 parameter error, 530 internal or
//!   the manager's refusal, 432 unknown command) and exception code.
//! - Asynchronous commands answer a `jobid` and run as jobs stored in the
//!   registry ([`jobs`]).

pub mod commands;
pub mod jobs;
pub mod params;
pub mod spec;
pub mod xml;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
pub mod http;

use crate::offerings::OfferingError;
use crate::registry::{Registry, RegistryError, StoreLocation};

/// Flat request parameters, as CloudStack receives them.
pub type Params = BTreeMap<String, String>;

/// CloudStack API error codes used by this project (`ApiErrorCode`).
pub mod codes {
    /// Authentication failure; with API-key authentication also an unknown command.
    pub const UNAUTHORIZED: u16 = 401;
    /// `InvalidParameterValueException` and other parameter problems.
    pub const PARAM_ERROR: u16 = 431;
    /// CloudStack's `RESOURCE_UNAVAILABLE_ERROR`: the call changed nothing
    /// and may be retried (the shared registry stayed busy).
    pub const RESOURCE_UNAVAILABLE: u16 = 534;
    /// An API that is not available.
    pub const UNSUPPORTED: u16 = 432;
    /// Internal failure, and the extension manager's own refusals
    /// (`CloudRuntimeException`).
    pub const INTERNAL_ERROR: u16 = 530;
}

/// CloudStack's exception codes (`cserrorcode`, from `CSExceptionErrorCode`):
/// which exception class CloudStack would have raised.
pub mod cs_codes {
    /// `CloudRuntimeException`.
    pub const CLOUD_RUNTIME: u32 = 4250;
    /// `InvalidParameterValueException`.
    pub const INVALID_PARAMETER_VALUE: u32 = 4350;
    /// `ServerApiException` raised on its own (transport, authentication,
    /// unknown command).
    pub const SERVER_API: u32 = 9999;
    /// `ResourceUnavailableException`.
    pub const RESOURCE_UNAVAILABLE: u32 = 4380;
}

/// An API error: CloudStack error code, exception code and text. The text
/// never contains secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text} (code {code})")]
pub struct ApiError {
    /// `errorcode`, also the HTTP status.
    pub code: u16,
    /// `cserrorcode`.
    pub cs_code: u32,
    /// `errortext`, also the `X-Description` header.
    pub text: String,
}

impl ApiError {
    /// A parameter problem: 431, `InvalidParameterValueException`.
    pub fn param(text: impl Into<String>) -> Self {
        ApiError {
            code: codes::PARAM_ERROR,
            cs_code: cs_codes::INVALID_PARAMETER_VALUE,
            text: text.into(),
        }
    }
    /// An internal failure or a refusal of the manager itself: 530,
    /// `CloudRuntimeException`.
    pub fn internal(text: impl Into<String>) -> Self {
        ApiError {
            code: codes::INTERNAL_ERROR,
            cs_code: cs_codes::CLOUD_RUNTIME,
            text: text.into(),
        }
    }
    /// An error CloudStack raises as a bare `ServerApiException` (unknown
    /// command, authentication, transport).
    pub fn server(code: u16, text: impl Into<String>) -> Self {
        ApiError {
            code,
            cs_code: cs_codes::SERVER_API,
            text: text.into(),
        }
    }

    /// CloudStack's error body: `{"<command>response": {"uuidList": [],
    /// "errorcode", "cserrorcode", "errortext"}}`, under `errorresponse`
    /// when no known command was identified.
    pub fn to_response(&self, command: Option<&str>) -> serde_json::Value {
        let key = command
            .and_then(commands::canonical_name)
            .map(|c| format!("{}response", c.to_ascii_lowercase()))
            .unwrap_or_else(|| "errorresponse".to_string());
        let mut out = serde_json::Map::with_capacity(1);
        out.insert(key, self.body());
        serde_json::Value::Object(out)
    }

    /// The fields of an error (also the `jobresult` of a failed job).
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "uuidList": [],
            "errorcode": self.code,
            "cserrorcode": self.cs_code,
            "errortext": self.text,
        })
    }
}

/// Where the control plane keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// The store: a SQLite file or CloudStack's MySQL/MariaDB database
    /// (see [`StoreLocation`]).
    pub database: StoreLocation,
    /// 32-byte key file for secrets at rest, created with mode 0600 on first use.
    pub key_file: PathBuf,
}

impl ApiConfig {
    /// Default state directory, overridable with `NETBRIDGE_STATE_DIR`.
    pub fn default_state_dir() -> PathBuf {
        std::env::var_os("NETBRIDGE_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/netbridge"))
    }

    /// `<dir>/netbridge.db` and `<dir>/secret.key`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        ApiConfig {
            database: StoreLocation::Sqlite(dir.join("netbridge.db")),
            key_file: dir.join("secret.key"),
        }
    }
}

/// The API dispatcher.
pub struct Api {
    registry: Arc<Registry>,
    extensions_dir: Arc<str>,
    running: Arc<jobs::Running>,
    owner: Arc<str>,
}

/// Environment variable naming the extensions directory that `path` is
/// answered under (default [`commands::DEFAULT_EXTENSIONS_DIR`]).
pub const EXTENSIONS_DIR_ENV: &str = "NETBRIDGE_EXTENSIONS_DIR";

impl Api {
    /// Opens (and migrates) the store, and marks failed the jobs that a
    /// stopped process of this host left pending. A key file or database
    /// path that cannot be used is a parameter error (431) whose text names
    /// the setting, its path and the problem; anything else is internal (530).
    pub fn open(config: ApiConfig) -> Result<Api, ApiError> {
        let registry = Registry::open_at(&config.database, &config.key_file).map_err(|e| {
            log::error!("cannot open the registry: {e}");
            match e.setting_problem() {
                Some(problem) => ApiError::param(problem),
                None => ApiError::internal(format!("Cannot open the registry: {e}")),
            }
        })?;
        jobs::fail_orphans(&registry)?;
        let extensions_dir = std::env::var(EXTENSIONS_DIR_ENV)
            .ok()
            .filter(|d| d.starts_with('/'))
            .unwrap_or_else(|| commands::DEFAULT_EXTENSIONS_DIR.to_string());
        Ok(Api {
            registry: Arc::new(registry),
            extensions_dir: Arc::from(extensions_dir.trim_end_matches('/')),
            running: Arc::default(),
            owner: Arc::from(jobs::process_identity()),
        })
    }

    /// The registry, for internal layers (dispatch: bindings, decrypted
    /// registration details).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A shared handle on the registry (the dispatch journal keeps one).
    pub fn registry_handle(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// Runs one API command. An asynchronous command (see
    /// [`commands::CommandSpec::is_async`]) is checked, stored as a job and
    /// answered with `{"<command>response": {"jobid": …}}` at once; its
    /// result comes from `queryAsyncJobResult` (or [`Api::wait_for_job`]).
    pub fn call(&self, command: &str, params: &Params) -> Result<serde_json::Value, ApiError> {
        let result = self.call_inner(command, params);
        if let Err(e) = &result {
            // Error texts never carry secret values, so they may be logged.
            log::debug!(
                "API {} failed: {}",
                netbridge_protocol::sanitize_for_message(command),
                e
            );
        }
        result
    }

    fn call_inner(&self, command: &str, params: &Params) -> Result<serde_json::Value, ApiError> {
        let spec = commands::find(command).ok_or_else(|| commands::unsupported(command))?;
        if spec.is_async {
            commands::precheck(spec, params)?;
            let runner = jobs::Runner {
                registry: Arc::clone(&self.registry),
                extensions_dir: Arc::clone(&self.extensions_dir),
                running: Arc::clone(&self.running),
                owner: Arc::clone(&self.owner),
            };
            let id = jobs::start(&runner, spec, params.clone())?;
            let mut out = serde_json::Map::with_capacity(1);
            out.insert(
                format!("{}response", spec.name.to_ascii_lowercase()),
                serde_json::json!({ "jobid": id }),
            );
            return Ok(serde_json::Value::Object(out));
        }
        let ctx = commands::Ctx {
            registry: &self.registry,
            extensions_dir: &self.extensions_dir,
        };
        commands::run(&ctx, spec, params)
    }

    /// Waits (up to `timeout`) for a job this process runs to finish, then
    /// answers as `queryAsyncJobResult` does.
    pub fn wait_for_job(
        &self,
        job_id: &str,
        timeout: std::time::Duration,
    ) -> Result<serde_json::Value, ApiError> {
        if !self.running.wait(job_id, timeout) {
            log::warn!("job {job_id} still running after {timeout:?}");
        }
        let mut params = Params::new();
        params.insert("jobid".into(), job_id.to_string());
        self.call("queryAsyncJobResult", &params)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        if matches!(e, RegistryError::Conflict(_)) {
            // The extension manager's own refusals (name taken, already
            // registered, still registered, in use): CloudStack raises them
            // as CloudRuntimeException, code 530.
            ApiError::internal(e.to_string())
        } else if e.is_user_error() {
            ApiError::param(e.to_string())
        } else if e.is_retryable() {
            log::warn!("registry busy: {e}");
            ApiError {
                code: codes::RESOURCE_UNAVAILABLE,
                cs_code: cs_codes::RESOURCE_UNAVAILABLE,
                text: e.to_string(),
            }
        } else {
            log::error!("registry failure: {e}");
            ApiError::internal(format!("Internal error: {e}"))
        }
    }
}

impl From<OfferingError> for ApiError {
    fn from(e: OfferingError) -> Self {
        ApiError::param(e.to_string())
    }
}
