//! The host executor: applies protocol commands to this host's data plane.
//!
//! - [`engine`]: the synchronous core the daemon calls: parse and validate a
//!   command, update the network's desired state, plan, apply, persist.
//!   It owns per-network serialization and the host-wide lock.
//! - [`planner`]: desired state → nftables ruleset (table `inet nb`, layout
//!   documented there) and link/address plan, with the veth naming scheme
//!   (pure, no I/O).
//! - [`nft`]: the nftables table as data (chains, sets, rules), its one
//!   renderer to an `nft -f` transaction and the delta between two rulesets.
//! - [`applier`]: installs a plan: one ruleset transaction (libnftables in
//!   process, or `nft -f -` entered with setns); namespace, links, addresses
//!   and routes through rtnetlink in process (no `ip` process).
//! - [`state`]: desired state and its pure per-command transitions, persisted
//!   with atomic file replace (`<state_dir>/networks/cs-net-<id>.json`, 0600).
//! - [`record_log`]: append-only log of guest records next to a state
//!   file, so saving one VM's record does not rewrite the whole state.
//! - `reconcile`: on start, re-installs every persisted network.
//! - [`daemon`]: tokio HTTPS server, request authentication, metrics, config.
//! - `vpc_engine`: the engine's VPC glue: VPC namespaces and tiers,
//!   `apply-network-acl`, `custom-action`, IPv6 (radvd) on guest legs.

pub mod applier;
pub mod daemon;
pub mod engine;
pub mod nft;
pub mod planner;
mod reconcile;
pub mod record_log;
pub mod services;
pub mod state;
pub mod transition;
pub mod vpc;
pub(crate) mod vpc_engine;

pub use engine::{Engine, EngineConfig, ExecError};
