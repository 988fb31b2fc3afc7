//! The bridge: everything netbridge runs on a CloudStack management server.
//!
//! Layers (each with its own error enum):
//! - [`registry`]: SQLite store (extensions, registrations, providers, bindings, secrets, journal).
//! - [`offerings`]: service/capability vocabulary and offering generation.
//! - [`api`]: the CloudStack-style API dispatcher shared by JNI, CLI and HTTP.
//! - [`bridge`]: API + shared dispatcher in one process (JNI, `netbridge exec`).
//! - [`dispatch`]: placement, failover and the signed HTTPS client to executors.
//!
//! The wire contract lives in [`protocol`] (the `netbridge-protocol` crate);
//! the data plane is the `netbridge-executor` crate, which this crate never
//! links: the library the management server loads carries no data plane.

pub mod api;
pub mod bridge;
pub mod dispatch;
pub mod offerings;
pub mod registry;
pub mod status;

pub use netbridge_protocol as protocol;
pub use netbridge_protocol::{build_id, GIT_REVISION, VERSION};
