//! Start-up reconcile: every persisted network is re-installed (namespace,
//! links, addresses, ruleset) whatever survived a reboot, a crash or a hand
//! deletion. Unknown `cs-net-*` namespaces are reported and left alone.

use std::collections::BTreeSet;

use super::engine::{Engine, ExecError};
use super::planner::{self, Leg, LegRole};
use super::state::NetworkState;

/// Loads every persisted network and installs it. Failures of single
/// networks are logged and do not stop the others (or the daemon).
pub(crate) fn reconcile(engine: &Engine) -> Result<(), ExecError> {
    let (states, errors) = engine.store().load_all()?;
    for e in errors {
        log::error!("reconcile: skipping unreadable state: {e}");
    }
    let held: BTreeSet<String> = states.iter().map(|s| s.namespace.clone()).collect();
    let (mut ok, mut failed) = (0usize, 0usize);
    for state in states {
        let ns = state.namespace.clone();
        match engine.adopt(state) {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                log::error!("reconcile: {ns}: {e}");
            }
        }
    }
    // Namespaces that look like ours but have no state are reported, not
    // removed: they may belong to another tool (e.g. the reference script
    // during a migration).
    for ns in engine.applier().namespaces() {
        let ours = ns
            .strip_prefix(netbridge_protocol::namespace::NETWORK_PREFIX)
            .is_some_and(|id| netbridge_protocol::validate::id("namespace", id).is_ok());
        if ours && !held.contains(&ns) {
            log::warn!(
                "reconcile: namespace {ns} exists but no persisted network owns it; left alone"
            );
        }
    }
    log::info!("reconcile: {ok} network(s) installed, {failed} failed");
    Ok(())
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
