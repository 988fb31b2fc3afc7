//! Guest services of a network (issue 4): DHCP/DNS through dnsmasq, TCP load
//! balancing through haproxy, and the metadata/password server the executor
//! serves itself.
//!
//! Layers (pure first, I/O at the edges):
//! - [`model`]: desired guest-service state of one network and the pure
//!   update function per command ([`model::apply`]).
//! - [`vmdata`]: per-IP VM data (user data, meta-data files, password) and its
//!   pure updates.
//! - [`dnsmasq`], [`haproxy`]: pure renderers of daemon configuration files.
//! - [`supervisor`]: runs a daemon inside a network namespace and tracks its
//!   exact PID.
//! - [`store`]: VM data persisted as one 0600 file per IP (atomic replace,
//!   optionally AES-256-GCM encrypted).
//! - [`metadata`]: the HTTP metadata and password services bound inside a
//!   namespace.

pub mod dnsmasq;
pub mod haproxy;
pub mod metadata;
pub mod model;
pub mod run;
pub mod store;
pub mod supervisor;
pub mod validate;
pub mod vmdata;

use crate::protocol::ProtocolError;

pub use model::{apply, Effects, GuestServices, Options};
pub use vmdata::{VmData, VmDataSet};

/// Errors of the guest-services layer.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    /// Bad input; the message names the field. Nothing was changed.
    #[error(transparent)]
    Invalid(#[from] ProtocolError),
    /// Valid input this executor does not support (e.g. UDP load balancing).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// File-system failure; `context` names the path or operation.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Spawning, signalling or identifying a daemon failed.
    #[error("process: {0}")]
    Process(String),
}

impl ServicesError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ServicesError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<ServicesError> for crate::executor::ExecError {
    fn from(e: ServicesError) -> Self {
        use crate::executor::ExecError;
        match e {
            ServicesError::Invalid(p) => ExecError::Invalid(p),
            ServicesError::Unsupported(s) => ExecError::Unsupported(s),
            other @ ServicesError::Io { .. } => ExecError::State(other.to_string()),
            other @ ServicesError::Process(_) => ExecError::Apply(other.to_string()),
        }
    }
}
