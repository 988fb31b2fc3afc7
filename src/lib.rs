//! netbridge: native bridge between Apache CloudStack `NetworkOrchestrator`
//! extensions and per-host executors.
//!
//! Layers (each with its own error enum):
//! - [`protocol`]: command names, envelopes, payloads, rule documents, request signing.
//! - [`registry`]: SQLite store (extensions, registrations, providers, bindings, secrets).
//! - [`offerings`]: service/capability vocabulary and offering generation.
//! - [`api`]: the CloudStack-style API dispatcher shared by JNI, CLI and HTTP.
//! - [`bridge`]: API + shared dispatcher in one process (JNI, `netbridge exec`).
//! - [`dispatch`]: placement, failover and the signed HTTPS client to executors.
//! - [`executor`]: the host daemon (planner, applier, state, reconcile).
//! - `jni`: thin JNI exports.

pub mod api;
pub mod bridge;
pub mod dispatch;
pub mod executor;
mod jni;
pub mod offerings;
pub mod protocol;
pub mod registry;
pub mod status;

/// Package version, compared by bridge and executors in the health handshake.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git revision the binary was built from ("unknown" outside a checkout).
pub const GIT_REVISION: &str = env!("NETBRIDGE_GIT_REV");

/// `"<version>+<revision>"`, the build identity reported by `/v1/health`.
pub fn build_id() -> String {
    format!("{VERSION}+{GIT_REVISION}")
}
