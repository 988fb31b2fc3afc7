//! Engine contract used by the daemon. (Placeholder until the engine lands:
//! the daemon codes against exactly these signatures.)

use std::path::PathBuf;

use crate::protocol::Command;

/// Errors of the executor layer.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Bad input: the message names the field. Nothing was changed.
    #[error("{0}")]
    Invalid(#[from] crate::protocol::ProtocolError),
    /// Applying to the host failed; the previous state is still in force.
    #[error("apply failed: {0}")]
    Apply(String),
    /// The command is valid but not supported by this executor.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Persisting state failed.
    #[error("state: {0}")]
    State(String),
}

impl ExecError {
    /// HTTP status the daemon answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            ExecError::Invalid(_) | ExecError::Unsupported(_) => 400,
            ExecError::Apply(_) | ExecError::State(_) => 500,
        }
    }
}

/// Host-level settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where desired state, daemon configs and data files live.
    pub state_dir: PathBuf,
    /// Default guest device (`guest.network.device`), e.g. `eth1`.
    pub guest_device: String,
    /// Default public device (`public.network.device`), e.g. `eth1`.
    pub public_device: String,
}

/// The executor core. `Send + Sync`; commands of different networks may run
/// concurrently, commands of one network are serialized inside.
pub struct Engine {
    config: EngineConfig,
}

impl Engine {
    /// Loads persisted state and reconciles the host to it.
    pub fn open(config: EngineConfig) -> Result<Engine, ExecError> {
        Ok(Engine { config })
    }

    /// Runs one command. `body` is the envelope exactly as CloudStack writes it
    /// (flat form for `custom-action`). Returns extra output fields that the
    /// daemon merges into `{"status":"success","message":…}`.
    pub fn execute(&self, command: Command, body: &[u8]) -> Result<serde_json::Value, ExecError> {
        let _ = (body, &self.config);
        Err(ExecError::Unsupported(command.to_string()))
    }

    /// Summary of the networks this host holds (for `GET /v1/networks`).
    pub fn networks(&self) -> serde_json::Value {
        serde_json::json!([])
    }

    /// Number of networks held (for `GET /v1/health`).
    pub fn network_count(&self) -> usize {
        0
    }
}
