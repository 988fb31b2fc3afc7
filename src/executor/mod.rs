//! The host executor: applies protocol commands to this host's data plane.
//!
//! - [`engine`]: the synchronous core the daemon calls: parse and validate a
//!   command, update the network's desired state, plan, apply, persist.
//!   It owns per-network serialization and the host-wide lock.
//! - `planner`: desired state → nftables ruleset, link/address plan, daemon
//!   configs (pure, no I/O).
//! - `applier`: installs a plan (one `nft -f` transaction, batched links).
//! - `state`: desired state persisted with atomic file replace; reconcile on start.
//! - [`daemon`]: tokio HTTPS server, request authentication, metrics, config.

pub mod applier;
pub mod daemon;
pub mod engine;
pub mod planner;
mod reconcile;
pub mod services;
pub mod state;
pub mod vpc;
pub(crate) mod vpc_engine;

pub use engine::{Engine, EngineConfig, ExecError};
