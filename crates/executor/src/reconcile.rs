//! Start-up reconcile: every persisted network is re-installed (namespace,
//! links, addresses, ruleset) whatever survived a reboot, a crash or a hand
//! deletion.
//!
//! Router namespaces (`cs-net-<id>`, `cs-vpc-<id>`) that no persisted
//! network or VPC owns follow one policy, whatever their kind: they are
//! kept and reported, never deleted. The executor cannot tell a leftover
//! from a network whose state it lost or could not read (a corrupt file, a
//! wrong `--state-dir`), and deleting such a namespace cuts its VMs off;
//! its own destroy removes the namespace before the state, so it leaves
//! no such namespace behind. The next `implement-network` or
//! `implement-vpc` of that id converges the namespace to its plan (stale
//! links and addresses go, the ruleset is replaced).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::engine::{Engine, ExecError};
use super::planner::{self, Leg, LegRole};
use super::state::NetworkState;

/// Loads every persisted network and installs it. Failures of single
/// networks are logged and do not stop the others (or the daemon).
///
/// Networks are independent (each has its own namespace, slot and files),
/// so a few workers install them side by side: most of a network's time is
/// spent waiting on the kernel (netlink, the ruleset transaction, binding
/// its listeners from a thread inside the namespace), and a host with a
/// thousand networks must be serving again within seconds.
pub(crate) fn reconcile(engine: &Engine) -> Result<(), ExecError> {
    let (states, errors) = engine.store().load_all()?;
    for e in errors {
        log::error!("reconcile: skipping unreadable state: {e}");
    }
    let total = states.len();
    let queue = Mutex::new(states.into_iter());
    let failed = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get() * 2)
        .clamp(1, MAX_RECONCILE_WORKERS)
        .min(total.max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let next = match queue.lock() {
                    Ok(mut q) => q.next(),
                    Err(poisoned) => poisoned.into_inner().next(),
                };
                let Some(state) = next else { break };
                let ns = state.namespace.clone();
                if let Err(e) = engine.adopt(state) {
                    failed.fetch_add(1, Ordering::Relaxed);
                    log::error!("reconcile: {ns}: {e}");
                }
            });
        }
    });
    let failed = failed.into_inner();
    log::info!(
        "reconcile: {} network(s) installed, {failed} failed ({workers} workers)",
        total - failed
    );
    Ok(())
}

/// Upper bound of networks installed at once at start-up.
const MAX_RECONCILE_WORKERS: usize = 8;

/// Reports, once per start, the router namespaces nothing held owns (see
/// the module docs for why they are kept).
pub(crate) fn report_unowned(engine: &Engine, held: &BTreeSet<String>) {
    for ns in engine.applier().namespaces() {
        if is_router_namespace(&ns) && !held.contains(&ns) {
            log::warn!(
                "reconcile: namespace {ns} exists but no persisted network or VPC owns it; \
                 kept (the next implement of that id takes it over; `ip netns del {ns}` removes it)"
            );
        }
    }
}

/// Whether `ns` has the name of a router namespace this executor makes.
fn is_router_namespace(ns: &str) -> bool {
    ns.strip_prefix("cs-net-")
        .or_else(|| ns.strip_prefix("cs-vpc-"))
        .is_some_and(|id| netbridge_protocol::validate::id("namespace", id).is_ok())
}

/// The legs to remove for a network: its full link plan when it can be
/// planned, else the guest leg derived from its id.
pub(crate) fn legs_for_teardown(state: &NetworkState) -> Vec<Leg> {
    if let Ok(plan) = planner::link_plan(state) {
        return plan.legs;
    }
    vec![Leg {
        role: LegRole::Guest,
        host_name: planner::guest_host_name(state.network_id),
        inner_name: planner::guest_inner_name(state.network_id),
        bridge: planner::bridge_name(&state.guest_device, state.vlan).unwrap_or_default(),
        device: state.guest_device.clone(),
        vlan: state.vlan,
        addrs: Vec::new(),
    }]
}
