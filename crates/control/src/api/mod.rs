//! The CloudStack-style API: one dispatcher reached from JNI, the CLI and HTTP.
//!
//! Contract shared by every door:
//! - [`Api::open`] with an [`ApiConfig`]; the handle is `Send + Sync` and is
//!   used concurrently from many threads.
//! - [`Api::call`] takes a command name (`createExtension`, …) and flat
//!   CloudStack parameters (`details[0].key=…`), and returns the CloudStack JSON
//!   response object (`{"<command lower-case>response": {…}}`) or an [`ApiError`]
//!   carrying CloudStack's error code (431 parameter error, 530 internal).

mod commands;
pub mod params;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
pub mod http;

use crate::offerings::OfferingError;
use crate::registry::{Registry, RegistryError, StoreLocation};

/// Flat request parameters, as CloudStack receives them.
pub type Params = BTreeMap<String, String>;

/// CloudStack API error codes used by this project.
pub mod codes {
    /// `InvalidParameterValueException` and other parameter problems.
    pub const PARAM_ERROR: u16 = 431;
    /// Internal failure.
    pub const INTERNAL_ERROR: u16 = 530;
    /// CloudStack's `RESOURCE_UNAVAILABLE_ERROR`: the call changed nothing
    /// and may be retried (the shared registry stayed busy).
    pub const RESOURCE_UNAVAILABLE: u16 = 534;
    /// Unknown API command.
    pub const UNSUPPORTED: u16 = 432;
}

/// An API error: CloudStack error code plus text. The text never contains
/// secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text} (code {code})")]
pub struct ApiError {
    pub code: u16,
    pub text: String,
}

impl ApiError {
    pub fn param(text: impl Into<String>) -> Self {
        ApiError {
            code: codes::PARAM_ERROR,
            text: text.into(),
        }
    }
    pub fn internal(text: impl Into<String>) -> Self {
        ApiError {
            code: codes::INTERNAL_ERROR,
            text: text.into(),
        }
    }

    /// CloudStack's error response shape.
    pub fn to_response(&self) -> serde_json::Value {
        serde_json::json!({"errorresponse": {"errorcode": self.code, "errortext": self.text}})
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
}

impl Api {
    /// Opens (and migrates) the store.
    pub fn open(config: ApiConfig) -> Result<Api, ApiError> {
        let registry = Registry::open_at(&config.database, &config.key_file).map_err(|e| {
            log::error!("cannot open the registry: {e}");
            ApiError::internal(format!("Cannot open the registry: {e}"))
        })?;
        Ok(Api {
            registry: Arc::new(registry),
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

    /// Runs one API command.
    pub fn call(&self, command: &str, params: &Params) -> Result<serde_json::Value, ApiError> {
        let result = commands::dispatch(&self.registry, command, params);
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
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        if e.is_user_error() {
            ApiError::param(e.to_string())
        } else if e.is_retryable() {
            log::warn!("registry busy: {e}");
            ApiError {
                code: codes::RESOURCE_UNAVAILABLE,
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
