//! The executor core the daemon calls: parse and validate a command, update
//! the network's desired state, plan, apply, persist. Commands of one network
//! are serialized by a per-network lock; host-wide objects (bridges, host
//! veth ends) are guarded by the applier's host lock.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use super::applier::{Applier, ApplierConfig, ApplyError};
use super::planner::{self, Plan, PlanError};
use super::reconcile;
use super::state::{NetworkState, StateError, StateStore, Transition};
use netbridge_protocol::envelope::Envelope;
use netbridge_protocol::payload::NetworkRequest;
use netbridge_protocol::{validate, Command, ProtocolError};

// Guest services: glue in engine/guest.rs, a child module so the hooks
// below stay one-line calls.
mod guest;

/// Guest-service facts of a VPC tier taken at `implement-network` (the VPC
/// engine's hook into the guest services).
pub(crate) fn seed_tier(
    tier: &mut super::state::NetworkState,
    envelope: &netbridge_protocol::envelope::Envelope,
) -> Result<(), ExecError> {
    crate::transition::seed(tier, envelope)
}

/// Name of a network's guest directory and runtime slot (VPC hook).
#[cfg(test)]
pub(crate) fn tier_guest_key(state: &super::state::NetworkState) -> String {
    guest::tier_key(state)
}

/// Errors of the executor layer.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Bad input: the message names the field. Nothing was changed.
    #[error("{0}")]
    Invalid(#[from] netbridge_protocol::ProtocolError),
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

impl From<ApplyError> for ExecError {
    fn from(e: ApplyError) -> Self {
        ExecError::Apply(e.to_string())
    }
}

impl From<StateError> for ExecError {
    fn from(e: StateError) -> Self {
        ExecError::State(e.to_string())
    }
}

impl From<PlanError> for ExecError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::NameTooLong(_) => ExecError::Invalid(ProtocolError::InvalidField {
                field: "guest.network.device".into(),
                reason: e.to_string(),
            }),
            PlanError::NotImplemented(_) => ExecError::Apply(e.to_string()),
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

/// What the engine holds for one network, behind its own lock.
#[derive(Default)]
struct Slot {
    state: Option<NetworkState>,
    /// The plan last installed successfully (lets a command skip link work
    /// and load only appended rules).
    applied: Option<Plan>,
    /// Guest-service daemons, metadata server and VM data store.
    guest: guest::GuestRuntime,
}

/// The executor core. `Send + Sync`; commands of different networks may run
/// concurrently, commands of one network are serialized inside.
pub struct Engine {
    config: EngineConfig,
    store: StateStore,
    applier: Applier,
    slots: Mutex<HashMap<String, Arc<Mutex<Slot>>>>,
    // VPC hook: VPCs, ACLs, custom actions, IPv6 (vpc_engine.rs).
    vpc: super::vpc_engine::VpcEngine,
}

/// The state directory is the executor's alone: 0700, or 0711 (traversable
/// by dnsmasq's unprivileged user, see `guest`) once guest services ran.
fn restrict_state_dir(dir: &std::path::Path) -> Result<(), ExecError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |e: std::io::Error| ExecError::State(format!("{}: {e}", dir.display()));
    let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode() & 0o7777;
    let want = if mode & 0o001 != 0 {
        guest::TRAVERSE_ONLY
    } else {
        0o700
    };
    if mode != want {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(want)).map_err(err)?;
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Loads persisted state and reconciles the host to it.
    pub fn open(config: EngineConfig) -> Result<Engine, ExecError> {
        Self::open_with(config, ApplierConfig::default())
    }

    /// [`Engine::open`] with explicit tool paths and netns directory.
    pub fn open_with(config: EngineConfig, applier: ApplierConfig) -> Result<Engine, ExecError> {
        validate::device_name("guest.network.device", &config.guest_device)?;
        validate::device_name("public.network.device", &config.public_device)?;
        let store = StateStore::open(&config.state_dir)?;
        restrict_state_dir(&config.state_dir)?;
        let vpc = super::vpc_engine::VpcEngine::open(&config.state_dir)?;
        let engine = Engine {
            config,
            store,
            applier: Applier::new(applier),
            slots: Mutex::new(HashMap::new()),
            vpc,
        };
        reconcile::reconcile(&engine)?;
        // VPC hook: VPC namespaces and pbr tables.
        engine.vpc.reconcile(&engine.applier);
        engine.vpc.reconcile_guest(&engine);
        let mut held = engine.held_namespaces();
        held.extend(engine.vpc.held_namespaces());
        reconcile::report_unowned(&engine, &held);
        Ok(engine)
    }

    pub(crate) fn store(&self) -> &StateStore {
        &self.store
    }

    pub(crate) fn applier(&self) -> &Applier {
        &self.applier
    }

    fn slot(&self, namespace: &str) -> Arc<Mutex<Slot>> {
        lock(&self.slots)
            .entry(namespace.to_string())
            .or_default()
            .clone()
    }

    /// Installs a loaded state at start-up (reconcile). Failures are
    /// returned; the state stays held so later commands can repair it.
    pub(crate) fn adopt(&self, state: NetworkState) -> Result<(), ExecError> {
        let slot = self.slot(&state.namespace);
        let mut slot = lock(&slot);
        let result = if state.implemented {
            self.plan(&state)
                .and_then(|plan| {
                    self.applier.apply(&plan, None)?;
                    self.vpc
                        .ensure_ipv6(&self.applier, &state.namespace, &state)?;
                    Ok(plan)
                })
                .map(Some)
        } else {
            Ok(None)
        };
        // Policy routing and guest services back up.
        if result.is_ok() && state.implemented {
            self.vpc.replay_pbr(&state.namespace);
            if let Err(e) = self.guest_up(&mut slot.guest, &state) {
                log::error!("reconcile: {}: guest services: {e}", state.namespace);
            }
        }
        slot.state = Some(state);
        slot.applied = result.as_ref().ok().cloned().flatten();
        result.map(|_| ())
    }

    /// Runs one command. `body` is the envelope exactly as CloudStack writes it
    /// (flat form for `custom-action`). Returns extra output fields that the
    /// daemon merges into `{"status":"success","message":…}`.
    pub fn execute(&self, command: Command, body: &[u8]) -> Result<serde_json::Value, ExecError> {
        let started = std::time::Instant::now();
        // VPC hook: VPC commands, tiers, ACLs and custom actions
        // (`custom-action` has its own body form).
        if command == Command::CustomAction {
            if let Some(answer) = self.vpc.execute(self, command, body) {
                return answer;
            }
        }
        let envelope = Envelope::parse(body)?;
        if let Some(answer) = self.vpc.execute_envelope(self, command, &envelope) {
            return answer;
        }
        // Guest-service hook.
        if guest::handles(command) {
            return self.execute_guest(command, &envelope);
        }
        let Some(req) = NetworkRequest::parse(command, &envelope)? else {
            return Err(ExecError::Unsupported(command.to_string()));
        };
        let namespace = NetworkState::namespace_for(req.network.network_id);
        // The namespace of the device details was checked with the target.
        let slot = self.slot(&namespace);
        let mut slot = lock(&slot);
        // The held state stays untouched until the command has succeeded.
        let (next, transition) = crate::transition::network_command(
            slot.state.as_ref(),
            &req,
            &envelope,
            crate::transition::Defaults {
                guest_device: &self.config.guest_device,
                public_device: &self.config.public_device,
            },
        )?;
        match transition {
            Transition::Apply => {
                let plan = if next.implemented {
                    Some(self.plan(&next)?)
                } else {
                    None
                };
                let planned = started.elapsed();
                if let Some(plan) = &plan {
                    if let Err(e) = self
                        .applier
                        .apply(plan, slot.applied.as_ref())
                        .map_err(ExecError::from)
                        .and_then(|()| self.vpc.ensure_ipv6(&self.applier, &namespace, &next))
                    {
                        log::error!("{namespace}: {command} failed to apply: {e}");
                        self.restore(&mut slot);
                        return Err(e);
                    }
                }
                let applied = started.elapsed();
                if let Err(e) = self.store.save(&next) {
                    log::error!("{namespace}: {command} applied but not persisted: {e}");
                    self.restore(&mut slot);
                    return Err(e.into());
                }
                log::debug!(
                    "{namespace}: {command}: parse+plan {:?}, apply {:?}, persist {:?}",
                    planned,
                    applied - planned,
                    started.elapsed() - applied
                );
                slot.applied = plan;
                // Policy routing and guest services up after implement
                // (the namespace may be new: a first implement, or one
                // after shutdown-network).
                if command == Command::ImplementNetwork {
                    self.vpc.replay_pbr(&namespace);
                    slot.state = Some(next.clone());
                    self.guest_up(&mut slot.guest, &next)?;
                }
            }
            Transition::TearDown | Transition::Forget => {
                // Guest-service hook: daemons stop before the namespace goes.
                self.guest_down(
                    &mut slot.guest,
                    &namespace,
                    transition == Transition::Forget,
                )?;
                let held = slot.state.clone();
                self.teardown(held.as_ref().unwrap_or(&next))?;
                slot.applied = None;
                if transition == Transition::Forget {
                    // Its pbr tables go before its state: a network re-created
                    // under this id must not inherit them.
                    self.vpc.forget_pbr(&namespace)?;
                    self.store.remove(&namespace)?;
                    // The slot stays (empty) so a waiting command of the same
                    // network keeps sharing its lock.
                    slot.state = None;
                    log::info!("{namespace}: {command} done");
                    return Ok(serde_json::json!({ "namespace": namespace }));
                }
                if slot.state.is_none() {
                    // Shutdown of a network this host never held: nothing to keep.
                    log::info!("{namespace}: {command} done (no state held)");
                    return Ok(serde_json::json!({ "namespace": namespace }));
                }
                self.store.save(&next)?;
            }
        }
        slot.state = Some(next);
        log::info!("{namespace}: {command} done");
        Ok(serde_json::json!({ "namespace": namespace }))
    }

    /// Re-installs the previous state after a failed apply, so the network
    /// keeps what it had (the ruleset is replaced atomically, so a failed
    /// `nft -f` changed nothing; links may need putting back).
    fn restore(&self, slot: &mut Slot) {
        let plan = match (slot.applied.clone(), &slot.state) {
            (Some(plan), _) => plan,
            (None, Some(previous)) if previous.implemented => match self.plan(previous) {
                Ok(plan) => plan,
                Err(e) => {
                    log::error!(
                        "{}: previous state cannot be planned: {e}",
                        previous.namespace
                    );
                    return;
                }
            },
            _ => return,
        };
        match self.applier.apply(&plan, None) {
            Ok(()) => slot.applied = Some(plan),
            Err(e) => {
                log::error!(
                    "{}: restoring the previous state failed: {e}",
                    plan.links.namespace
                );
                slot.applied = None;
            }
        }
    }

    /// Removes everything of a network from the host (idempotent).
    pub(crate) fn teardown(&self, state: &NetworkState) -> Result<(), ExecError> {
        self.vpc.stop_radvd(&state.namespace, state.network_id);
        let legs = reconcile::legs_for_teardown(state);
        self.applier.teardown(&state.namespace, &legs)?;
        Ok(())
    }

    /// The engine's plan of a network.
    fn plan(&self, state: &NetworkState) -> Result<Plan, ExecError> {
        Ok(planner::plan(state)?)
    }

    /// Default guest device (VPC hook).
    pub(crate) fn guest_device(&self) -> &str {
        &self.config.guest_device
    }

    /// Default public device (VPC hook).
    pub(crate) fn public_device(&self) -> &str {
        &self.config.public_device
    }

    /// Sets the operator hooks directory of `custom-action` (`None`: no hooks).
    pub fn set_hooks_dir(&self, dir: Option<PathBuf>) {
        self.vpc.set_hooks_dir(dir);
    }

    /// Runs `f` under a network's lock with its state (VPC hook: custom
    /// actions on isolated networks).
    pub(crate) fn with_network<R>(
        &self,
        namespace: &str,
        f: impl FnOnce(Option<&NetworkState>) -> R,
    ) -> R {
        let slot = self.slot(namespace);
        let slot = lock(&slot);
        f(slot.state.as_ref())
    }

    /// Rebuilds a network from its desired state under its lock
    /// (`reboot-device`, VPC hook): guest services down, teardown, full
    /// install, guest services up. `false` when the network is not held.
    pub(crate) fn rebuild_network(&self, namespace: &str) -> Result<bool, ExecError> {
        let slot = self.slot(namespace);
        let mut slot = lock(&slot);
        let Some(state) = slot.state.clone() else {
            return Ok(false);
        };
        self.guest_down(&mut slot.guest, namespace, false)?;
        self.teardown(&state)?;
        slot.applied = None;
        if state.implemented {
            let plan = self.plan(&state)?;
            self.applier.apply(&plan, None)?;
            self.vpc.ensure_ipv6(&self.applier, namespace, &state)?;
            slot.applied = Some(plan);
            self.guest_up(&mut slot.guest, &state)?;
        }
        Ok(true)
    }

    /// Namespaces of the isolated networks held.
    fn held_namespaces(&self) -> std::collections::BTreeSet<String> {
        let slots: Vec<Arc<Mutex<Slot>>> = lock(&self.slots).values().cloned().collect();
        slots
            .iter()
            .filter_map(|s| lock(s).state.as_ref().map(|st| st.namespace.clone()))
            .collect()
    }

    /// Summary of the networks this host holds (for `GET /v1/networks`).
    pub fn networks(&self) -> serde_json::Value {
        let slots: Vec<Arc<Mutex<Slot>>> = lock(&self.slots).values().cloned().collect();
        let mut list: Vec<serde_json::Value> = slots
            .iter()
            .filter_map(|s| lock(s).state.as_ref().map(NetworkState::summary))
            .collect();
        list.extend(self.vpc.summaries());
        list.sort_by(|a, b| a["namespace"].as_str().cmp(&b["namespace"].as_str()));
        serde_json::Value::Array(list)
    }

    /// Number of networks held (for `GET /v1/health`).
    pub fn network_count(&self) -> usize {
        let slots: Vec<Arc<Mutex<Slot>>> = lock(&self.slots).values().cloned().collect();
        // VPC hook: VPCs count like the entries of `networks()`.
        slots.iter().filter(|s| lock(s).state.is_some()).count() + self.vpc.summaries().len()
    }

    /// [`Engine::network_count`] without waiting: `None` when a network or
    /// VPC is busy with a command (its lock is held), so health checks can
    /// answer on the spot in the common case and fall back to waiting.
    pub fn try_network_count(&self) -> Option<usize> {
        let slots: Vec<Arc<Mutex<Slot>>> = lock(&self.slots).values().cloned().collect();
        let mut n = 0;
        for slot in &slots {
            if slot.try_lock().ok()?.state.is_some() {
                n += 1;
            }
        }
        Some(n + self.vpc.try_count()?)
    }

    /// The nftables table currently installed for a network (diagnostics and
    /// tests); `None` when the namespace does not exist.
    pub fn installed_ruleset(&self, network_id: u64) -> Result<Option<String>, ExecError> {
        let ns = NetworkState::namespace_for(network_id);
        if !self.applier.namespace_exists(&ns) {
            return Ok(None);
        }
        Ok(Some(self.applier.list_ruleset(&ns)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine whose netns directory is a private temp dir, so tests never
    /// look at the host's namespaces; only input errors are exercised here
    /// (they are refused before anything touches the host).
    fn engine(dir: &std::path::Path) -> Engine {
        let netns = dir.join("netns");
        std::fs::create_dir_all(&netns).unwrap();
        Engine::open_with(
            EngineConfig {
                state_dir: dir.join("state"),
                guest_device: "eth1".into(),
                public_device: "eth1".into(),
            },
            ApplierConfig {
                netns_dir: netns,
                manage_links: false,
                nft_program: "/nonexistent/nft".into(),
                use_libnftables: false,
            },
        )
        .unwrap()
    }

    fn body(payload: serde_json::Value) -> Vec<u8> {
        serde_json::json!({"physical-network-extension-details": {"password": "hidden"},
            "network-extension-details": {}, "payload": payload})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn bad_input_is_refused_with_the_field_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let cases = [
            (
                Command::ImplementNetwork,
                serde_json::json!({"network_id": "42;reboot"}),
                "invalid value for 'network_id': '42;reboot' is not a decimal id",
            ),
            (
                Command::ImplementNetwork,
                serde_json::json!({"network_id": "42", "cidr": "10.0.0.0/24", "extension_ip": "$(id)"}),
                "invalid value for 'extension_ip': '$(id)' is not an IPv4 address",
            ),
            (
                Command::AssignIp,
                serde_json::json!({"network_id": "42", "public_ip": "203.0.113.10\nx"}),
                "invalid value for 'public_ip': control characters are not allowed",
            ),
            (
                Command::ApplyFwRules,
                serde_json::json!({"network_id": "42"}),
                "missing required field 'fw_rules'",
            ),
            (
                Command::AddStaticNat,
                serde_json::json!({"network_id": "42", "public_ip": "203.0.113.10"}),
                "missing required field 'private_ip'",
            ),
        ];
        for (cmd, payload, text) in cases {
            let err = e.execute(cmd, &body(payload)).unwrap_err();
            assert_eq!(err.to_string(), text);
            assert_eq!(err.http_status(), 400);
        }
        let err = e
            .execute(Command::ImplementNetwork, b"{not json")
            .unwrap_err();
        assert_eq!(err.http_status(), 400);
        assert_eq!(e.network_count(), 0);
        assert_eq!(
            std::fs::read_dir(dir.path().join("state/networks"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn other_commands_and_foreign_namespaces_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let err = e
            .execute(
                Command::PrepareNic,
                &body(serde_json::json!({"network_id": "42"})),
            )
            .unwrap_err();
        // Guest services answer prepare-nic now: bad input is refused.
        assert_eq!(err.http_status(), 400);
        // cs-vpc-<id> namespaces belong to VPC tiers (vpc_engine.rs).
        let b = serde_json::json!({"network-extension-details": {"namespace": "cs-net-7"},
            "payload": {"network_id": "42"}});
        let err = e
            .execute(Command::ShutdownNetwork, b.to_string().as_bytes())
            .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("invalid value for 'network-extension-details.namespace'"));
    }

    #[test]
    fn state_of_unimplemented_networks_is_kept_without_touching_the_host() {
        // assign-ip before implement-network: recorded, nothing applied
        // (the tool paths do not even exist).
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let out = e
            .execute(
                Command::AssignIp,
                &body(serde_json::json!({"network_id": "42",
                "public_ip": "203.0.113.10", "source_nat": "true"})),
            )
            .unwrap();
        assert_eq!(out["namespace"], "cs-net-42");
        assert_eq!(e.network_count(), 1);
        assert_eq!(e.networks()[0]["state"], "shutdown");
        let saved =
            std::fs::read_to_string(dir.path().join("state/networks/cs-net-42.json")).unwrap();
        assert!(saved.contains("203.0.113.10") && !saved.contains("hidden"));
        drop(e);
        let e = engine(dir.path());
        assert_eq!(e.networks()[0]["public_ips"][0], "203.0.113.10");
    }
}
