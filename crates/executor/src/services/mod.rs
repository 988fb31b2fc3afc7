//! Guest services of a network: DHCP/DNS through dnsmasq, TCP load
//! balancing through haproxy, UDP load balancing through nftables, and the
//! metadata/password server the executor serves itself.
//!
//! Layers (pure first, I/O at the edges):
//! - [`model`]: desired guest-service state of one network and the pure
//!   update function per command ([`model::apply`]).
//! - [`vmdata`]: per-IP VM data (user data, meta-data files, password) and its
//!   pure updates.
//! - [`dnsmasq`], [`haproxy`]: pure renderers of daemon configuration files.
//! - [`nftlb`]: pure renderer of the UDP load-balancing DNAT rules, part of
//!   the network's nftables ruleset (the planner places them).
//! - [`supervisor`]: runs a daemon inside a network namespace and tracks its
//!   exact process (pidfd).
//! - [`sockets`]: which addresses a daemon's own process listens on (its
//!   readiness).
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
//! UDP rules (`protocol: udp`) never reach haproxy: they live in the same
//! [`GuestServices::lb_rules`] (accumulated, revoked, persisted and restored
//! like the TCP ones) and are rendered by [`nftlb`] into chain `lb_udp` of the
//! network's ruleset, so the engine re-plans the ruleset when they change.
//!
//! # Capabilities
//!
//! What this executor carries out is declared once in
//! [`netbridge_protocol::capabilities`] (re-exported here); the control plane
//! accepts no other `Lb` capability value from an extension declaration.
//!
//! `leastconn` has no meaning for UDP in nftables (nothing counts open
//! flows per backend): a `udp` rule with `leastconn` is refused with
//! [`ServicesError::Unsupported`] naming `lb_rules[i].algorithm`, and the
//! call changes nothing.

pub mod descriptors;
pub mod dnsmasq;
pub mod haproxy;
pub mod metadata;
pub mod model;
pub mod nftlb;
pub mod run;
pub mod sockets;
pub mod store;
pub mod supervisor;
pub mod validate;
pub mod vmdata;

use netbridge_protocol::ProtocolError;

pub use model::{apply, Effects, GuestServices, Options};
pub use vmdata::{VmData, VmDataSet};

pub use netbridge_protocol::capabilities::{
    lb_algorithms_for, LB_ALGORITHMS, LB_PROTOCOLS, LB_UDP_ALGORITHMS,
};

/// Errors of the guest-services layer.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    /// Bad input; the message names the field. Nothing was changed.
    #[error(transparent)]
    Invalid(#[from] ProtocolError),
    /// Valid input this executor does not support (e.g. `leastconn` for a
    /// UDP load-balancing rule). Nothing was changed.
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

impl From<ServicesError> for crate::ExecError {
    fn from(e: ServicesError) -> Self {
        use crate::ExecError;
        match e {
            ServicesError::Invalid(p) => ExecError::Invalid(p),
            ServicesError::Unsupported(s) => ExecError::Unsupported(s),
            other @ ServicesError::Io { .. } => ExecError::State(other.to_string()),
            other @ ServicesError::Process(_) => ExecError::Apply(other.to_string()),
        }
    }
}
