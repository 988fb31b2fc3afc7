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
//! - [`run`]: I/O edge that writes rendered files and starts, SIGHUPs,
//!   restarts, reloads or stops the daemons with the least disruptive action.
//!
//! # How the engine drives it
//!
//! Per network the engine keeps a [`GuestServices`] (serde; persist it with
//! the network's state), an `Arc<`[`store::MetadataStore`]`>` opened on
//! `<state>/<namespace>/vmdata` (pass the executor's 32-byte data key to
//! encrypt at rest), the tracked daemons (`Option<`[`supervisor::Daemon`]`>`
//! for dnsmasq and haproxy, `Vec<Daemon>` of draining haproxy processes) and
//! an `Option<`[`metadata::MetadataServer`]`>`. For a guest-service command:
//!
//! ```text
//! let mut next = guest.clone();
//! let fx = store.update(|vms| services::apply(cmd, payload, &mut next, vms, &opts))?;
//! guest = next;                                   // then persist it
//! if fx.dnsmasq {
//!     let files = dnsmasq::render(&guest, &dns_paths);
//!     (dnsmasq_daemon, _) = run::sync_dnsmasq(&dns_paths, Some(ns), ns, files.as_ref(), dnsmasq_daemon.take())?;
//! }
//! if fx.lb {
//!     let cfg = haproxy::render(&guest);
//!     (haproxy_daemon, _) = run::sync_haproxy(&lb_paths, Some(ns), ns, cfg.as_deref(), haproxy_daemon.take(), &mut draining)?;
//! }
//! // fx.vm_data: already on disk and visible to the metadata server.
//! ```
//!
//! `payload` is the envelope's `payload` object. Start the metadata server
//! ([`metadata::MetadataServer::start`] on `guest.listen_ip()`) once the
//! namespace carries `extension_ip` (after `implement-network`); stop it,
//! the daemons ([`supervisor::Daemon::stop`]) and, on destroy,
//! [`store::MetadataStore::destroy`] on shutdown. After an executor restart
//! call the two `sync_*` functions with `None` as the running daemon: they
//! adopt the daemons recorded in the PID files when `/proc` proves they are
//! ours, and start them otherwise.
//!
//! Capabilities: TCP and `tcp-proxy` load balancing ([`LB_PROTOCOLS`]); UDP
//! rules are refused with [`ServicesError::Unsupported`] naming the field.

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

/// Load-balancing protocols this executor implements (for the capabilities
/// it declares). `udp` is refused with a clear error.
pub const LB_PROTOCOLS: &[&str] = &["tcp", "tcp-proxy"];
/// Load-balancing algorithms implemented.
pub const LB_ALGORITHMS: &[&str] = &["roundrobin", "leastconn", "source"];

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
