//! VPC glue of the engine: VPCs and their tiers, `apply-network-acl`,
//! `custom-action` and IPv6 on guest legs. The engine calls
//! [`VpcEngine::execute`] first; it answers the commands it owns and returns
//! `None` for everything else.
//!
//! - One [`VpcDoc`] per VPC namespace `cs-vpc-<id>` holds the VPC model and
//!   the tiers' network states, behind one lock per namespace, persisted
//!   atomically as `<state_dir>/vpcs/cs-vpc-<id>.json` and re-installed on
//!   start (then the namespace's pbr tables are replayed). A guest command
//!   that changes only a tier's records appends one line to that tier's
//!   record log, `vpcs/cs-vpc-<id>.tier-<network_id>.log` (see
//!   [`crate::record_log`]), replayed over the document on start; every
//!   rewrite of the document folds the logs in and removes them.
//! - Tier commands (`vpc_id` in the payload, or a `cs-vpc-` namespace in the
//!   network details) update the tier's `NetworkState` with the engine's own
//!   transitions; the VPC's public addresses are then re-derived from the
//!   VPC source NAT plus every implemented tier's addresses (each tier one
//!   owner), so removing a tier removes only what no other owner uses.
//! - Guest services of a tier (DHCP/DNS dnsmasq on the tier's extension IP,
//!   metadata and password server on it, haproxy for the tier's LB rules)
//!   run inside the VPC namespace, one set per tier keyed
//!   `cs-vpc-<id>-tier-<network_id>` (own files, leases, PID files, VM
//!   data); the tier's guest state is part of its `NetworkState`, so it is
//!   persisted with the VPC. They come up on tier implement and on start,
//!   and stop exactly on tier shutdown/destroy and `shutdown-vpc`. LB public
//!   addresses must be the VPC's; their ports are opened in the input chain.
//! - A tier without `apply-network-acl` keeps CloudStack's default: ingress
//!   into the tier denied, egress allowed.
//! - Public addresses of tiers serve static NAT and port forwarding; inbound
//!   traffic to a tier is governed by the tier's ingress ACL (VPCs have no
//!   per-IP firewall).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::applier::Applier;
use super::engine::ExecError;
use super::nft::{Rule, Verdict};
use super::planner::{self, Plan};
use super::record_log;
use super::state::NetworkState;
use super::vpc::actions::{self, ActionOutcome, ActionRunner, BuiltinAction, PbrStore};
use super::vpc::model::{self, Owner, PublicIp, VpcRulesetParts, VpcState};
use super::vpc::{acl, ipv6, VpcError};
use netbridge_protocol::envelope::Envelope;
use netbridge_protocol::payload::{NetworkCommand, NetworkRequest};
use netbridge_protocol::target::{Namespace, NetworkId, Target, VpcId};
use netbridge_protocol::{validate, Command, ProtocolError};

/// Default directory of operator hooks.
pub const DEFAULT_HOOKS_DIR: &str = "/etc/netbridge/hooks";

const DOC_VERSION: u32 = 1;

/// The persisted desired state of one VPC namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VpcDoc {
    pub version: u32,
    pub vpc: VpcState,
    /// False after `shutdown-vpc`: kept, nothing installed.
    pub implemented: bool,
    /// Host device of the public bridge.
    pub public_device: String,
    /// The tiers' network states (by network id), implemented or not.
    pub tiers: BTreeMap<String, NetworkState>,
}

#[derive(Default)]
struct VpcSlot {
    doc: Option<VpcDoc>,
    applied: Option<Plan>,
    /// Lines in each tier's record log, by network id (absent: none).
    record_log_lines: HashMap<String, usize>,
}

/// VPC part of the engine.
pub(crate) struct VpcEngine {
    dir: PathBuf,
    pbr: PbrStore,
    runner: Mutex<ActionRunner>,
    slots: Mutex<HashMap<String, Arc<Mutex<VpcSlot>>>>,
    radvd: ipv6_runtime::Radvds,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn state_err(path: &Path, e: impl std::fmt::Display) -> ExecError {
    ExecError::State(format!("{}: {e}", path.display()))
}

fn vpc_link_for(vlan: &str) -> String {
    let v = validate::vlan("public_vlan", vlan).unwrap_or_default();
    planner::public_inner_name(v)
}

/// The router a command names (one decision, in the protocol's
/// [`Target`], which also checks the namespace of the device details);
/// `None` when it names neither a network nor a VPC, so that the command's
/// own parser names the field it misses.
fn target_of(env: &Envelope) -> Result<Option<Target>, ExecError> {
    match Target::resolve(&env.payload, &env.network_details) {
        Ok(t) => Ok(Some(t)),
        Err(ProtocolError::MissingTarget) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The VPC of a tier or VPC command.
fn vpc_of(env: &Envelope) -> Result<VpcId, ExecError> {
    target_of(env)?
        .and_then(Target::vpc_id)
        .ok_or_else(|| ProtocolError::MissingField(VpcId::FIELD.into()).into())
}

impl VpcEngine {
    pub(crate) fn open(state_dir: &Path) -> Result<VpcEngine, ExecError> {
        let dir = state_dir.join("vpcs");
        fs::create_dir_all(&dir).map_err(|e| state_err(&dir, e))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| state_err(&dir, e))?;
        let pbr = PbrStore::open(state_dir)?;
        Ok(VpcEngine {
            dir,
            pbr,
            runner: Mutex::new(ActionRunner {
                hooks_dir: Some(PathBuf::from(DEFAULT_HOOKS_DIR)),
                ..ActionRunner::default()
            }),
            slots: Mutex::new(HashMap::new()),
            radvd: ipv6_runtime::Radvds::new(state_dir.join("radvd")),
        })
    }

    /// Sets (or disables) the operator hooks directory.
    pub(crate) fn set_hooks_dir(&self, dir: Option<PathBuf>) {
        lock(&self.runner).hooks_dir = dir;
    }

    fn runner(&self) -> ActionRunner {
        lock(&self.runner).clone()
    }

    fn slot(&self, ns: &str) -> Arc<Mutex<VpcSlot>> {
        lock(&self.slots).entry(ns.to_string()).or_default().clone()
    }

    fn path(&self, ns: &str) -> PathBuf {
        self.dir.join(format!("{ns}.json"))
    }

    /// The record log of tier `network_id` of VPC namespace `ns`.
    fn tier_log_path(&self, ns: &str, network_id: &str) -> PathBuf {
        self.dir.join(format!("{ns}.tier-{network_id}.log"))
    }

    /// Tier record logs present for VPC namespace `ns`: (network id, path).
    fn tier_logs(&self, ns: &str) -> Vec<(String, PathBuf)> {
        let prefix = format!("{ns}.tier-");
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_prefix(&prefix)?.strip_suffix(".log")?;
                Some((id.to_string(), e.path()))
            })
            .collect()
    }

    /// Removes every tier record log of `ns` (the document now holds their
    /// records, or the VPC is gone).
    fn remove_tier_logs(&self, ns: &str) -> Result<(), ExecError> {
        for (_, path) in self.tier_logs(ns) {
            record_log::remove(&path)?;
        }
        Ok(())
    }

    /// Replays each tier's record log onto the loaded document; a log of a
    /// tier the document no longer has (destroyed before its log could go)
    /// is removed. Returns the line counts (for compaction).
    fn replay_tier_logs(&self, doc: &mut VpcDoc) -> Result<HashMap<String, usize>, ExecError> {
        let ns = doc.vpc.namespace();
        let mut lines = HashMap::new();
        for (id, path) in self.tier_logs(&ns) {
            match doc.tiers.get_mut(&id) {
                Some(tier) => {
                    let n = record_log::replay_log(&path, &mut tier.guest)?;
                    lines.insert(id, n);
                }
                None => record_log::remove(&path)?,
            }
        }
        Ok(lines)
    }

    /// Atomic replace: temp file (0600), fsync, rename, fsync of the
    /// directory; then the tier record logs go (the document holds every
    /// record: replaying a line it already reflects would change nothing,
    /// so a crash between the two loses nothing).
    fn save(&self, doc: &VpcDoc) -> Result<(), ExecError> {
        let ns = doc.vpc.namespace();
        let path = self.path(&ns);
        let tmp = self.dir.join(format!(".{ns}.json.tmp"));
        let data = serde_json::to_vec(doc).map_err(|e| state_err(&path, e))?;
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| state_err(&tmp, e))?;
            f.write_all(&data).map_err(|e| state_err(&tmp, e))?;
            f.sync_all().map_err(|e| state_err(&tmp, e))?;
        }
        fs::rename(&tmp, &path).map_err(|e| state_err(&path, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| state_err(&self.dir, e))?;
        self.remove_tier_logs(&ns)
    }

    fn remove(&self, ns: &str) -> Result<(), ExecError> {
        // The tier logs first: a VPC re-created under this id starts clean.
        self.remove_tier_logs(ns)?;
        let path = self.path(ns);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(state_err(&path, e)),
        }
    }

    /// Number of VPCs held, and their summaries.
    /// Number of VPCs held, `None` when one of them is busy (see
    /// `Engine::try_network_count`).
    pub(crate) fn try_count(&self) -> Option<usize> {
        let slots: Vec<Arc<Mutex<VpcSlot>>> = lock(&self.slots).values().cloned().collect();
        let mut n = 0;
        for slot in &slots {
            if slot.try_lock().ok()?.doc.is_some() {
                n += 1;
            }
        }
        Some(n)
    }

    pub(crate) fn summaries(&self) -> Vec<Value> {
        let slots: Vec<Arc<Mutex<VpcSlot>>> = lock(&self.slots).values().cloned().collect();
        slots
            .iter()
            .filter_map(|s| {
                lock(s).doc.as_ref().map(|d| {
                    json!({
                        "vpc_id": d.vpc.vpc_id,
                        "namespace": d.vpc.namespace(),
                        "state": if d.implemented { "implemented" } else { "shutdown" },
                        "cidr": d.vpc.cidr.to_string(),
                        "source_nat_ip": d.vpc.source_nat.map(|a| a.to_string()),
                        "tiers": d.tiers.keys().cloned().collect::<Vec<_>>(),
                        "public_ips": d.vpc.addresses.keys().map(|a| a.to_string()).collect::<Vec<_>>(),
                    })
                })
            })
            .collect()
    }

    /// Start-up: installs every persisted VPC and replays its pbr tables.
    /// `cs-vpc-` namespaces no persisted VPC owns are left to the engine's
    /// one policy for unknown router namespaces (`reconcile.rs`).
    pub(crate) fn reconcile(&self, applier: &Applier) {
        self.reconcile_held(applier);
    }

    /// Namespaces of the VPCs held.
    pub(crate) fn held_namespaces(&self) -> Vec<String> {
        let slots: Vec<(String, Arc<Mutex<VpcSlot>>)> = lock(&self.slots)
            .iter()
            .map(|(ns, slot)| (ns.clone(), slot.clone()))
            .collect();
        slots
            .into_iter()
            .filter(|(_, slot)| lock(slot).doc.is_some())
            .map(|(ns, _)| ns)
            .collect()
    }

    fn reconcile_held(&self, applier: &Applier) {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                log::error!("reconcile: {}: {e}", self.dir.display());
                return;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let mut doc = match fs::read(entry.path())
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<VpcDoc>(&b).map_err(|e| e.to_string()))
            {
                Ok(d) if format!("{}.json", d.vpc.namespace()) == name => d,
                Ok(_) => {
                    log::error!("reconcile: {name}: namespace does not match the file name");
                    continue;
                }
                Err(e) => {
                    log::error!("reconcile: skipping unreadable VPC state {name}: {e}");
                    continue;
                }
            };
            let ns = doc.vpc.namespace();
            // Guest records saved since the document was written.
            let lines = match self.replay_tier_logs(&mut doc) {
                Ok(lines) => lines,
                Err(e) => {
                    log::error!("reconcile: skipping {ns}: tier record logs: {e}");
                    continue;
                }
            };
            let slot = self.slot(&ns);
            let mut slot = lock(&slot);
            slot.record_log_lines = lines;
            if doc.implemented {
                match self.install(applier, &doc, None) {
                    Ok(links) => {
                        slot.applied = Some(links);
                        self.replay_pbr(&ns);
                        log::info!("reconcile: {ns} installed");
                    }
                    Err(e) => log::error!("reconcile: {ns}: {e}"),
                }
            }
            slot.doc = Some(doc);
        }
    }

    /// Re-adds the namespace's recorded pbr routes and rules after the
    /// namespace was (re)built: reconcile, implement, `reboot-device`.
    pub(crate) fn replay_pbr(&self, ns: &str) {
        match self.pbr.load(ns) {
            Ok(t) => {
                if let Err(e) = self.runner().replay_pbr(ns, &t) {
                    log::error!("{ns}: replaying pbr tables: {e}");
                }
            }
            Err(e) => log::error!("{ns}: loading pbr tables: {e}"),
        }
    }

    /// Forgets the namespace's pbr tables (the network is destroyed), so a
    /// network re-created under the same id starts without them.
    pub(crate) fn forget_pbr(&self, ns: &str) -> Result<(), ExecError> {
        Ok(self.pbr.remove(ns)?)
    }

    /// Answers the VPC commands; `None` for everything else. Needs the
    /// engine for custom actions on isolated networks.
    pub(crate) fn execute(
        &self,
        engine: &super::engine::Engine,
        command: Command,
        body: &[u8],
    ) -> Option<Result<Value, ExecError>> {
        match command {
            Command::CustomAction => return Some(self.custom_action(engine, body)),
            Command::ImplementVpc | Command::ShutdownVpc | Command::UpdateVpcSourceNatIp => {}
            _ => {}
        }
        let envelope = match Envelope::parse(body) {
            Ok(e) => e,
            Err(e) => return Some(Err(e.into())),
        };
        self.execute_envelope(engine, command, &envelope)
    }

    /// [`VpcEngine::execute`] for a command other than `custom-action`
    /// whose envelope the engine already parsed (a 10,000-rule document is
    /// parsed once).
    pub(crate) fn execute_envelope(
        &self,
        engine: &super::engine::Engine,
        command: Command,
        envelope: &Envelope,
    ) -> Option<Result<Value, ExecError>> {
        match command {
            Command::ImplementVpc | Command::ShutdownVpc | Command::UpdateVpcSourceNatIp => {
                Some(self.vpc_command(engine, command, envelope))
            }
            Command::ApplyNetworkAcl => Some(self.tier_command(engine, command, envelope)),
            _ => match target_of(envelope) {
                Err(e) => Some(Err(e)),
                Ok(Some(Target::Tier { .. } | Target::Vpc(_))) => {
                    match NetworkRequest::parse(command, envelope) {
                        Ok(Some(_)) => Some(self.tier_command(engine, command, envelope)),
                        // Guest services (DHCP, DNS, metadata, LB) of a tier run
                        // inside the VPC namespace, one set per tier.
                        Ok(None) => Some(self.tier_guest(engine, command, envelope)),
                        Err(e) => Some(Err(e.into())),
                    }
                }
                Ok(Some(Target::Network(_)) | None) => None,
            },
        }
    }

    fn vpc_command(
        &self,
        engine: &super::engine::Engine,
        command: Command,
        env: &Envelope,
    ) -> Result<Value, ExecError> {
        let applier = engine.applier();
        let p = model::parse_vpc_payload(&env.payload, vpc_link_for)?;
        // The device details must name this VPC's namespace.
        target_of(env)?;
        let ns = Namespace::Vpc(p.vpc_id).to_string();
        // The executor's configured device when the envelope names none,
        // as for isolated networks.
        let public_device = netbridge_protocol::payload::Devices::parse(env)?
            .public
            .unwrap_or_else(|| engine.public_device().to_string());
        let slot = self.slot(&ns);
        let mut slot = lock(&slot);
        let current = slot.doc.clone();
        let mut next = match (&current, command) {
            (Some(d), _) => d.clone(),
            (None, Command::ShutdownVpc) => {
                log::info!("{ns}: {command} done (no state held)");
                return Ok(json!({ "namespace": ns }));
            }
            (None, _) => {
                let cidr = p
                    .cidr
                    .ok_or_else(|| ProtocolError::MissingField("vpc_cidr".into()))?;
                VpcDoc {
                    version: DOC_VERSION,
                    vpc: VpcState::new(p.vpc_id, cidr)?,
                    implemented: false,
                    public_device: public_device.clone(),
                    tiers: BTreeMap::new(),
                }
            }
        };
        match command {
            Command::ImplementVpc => {
                if let Some(c) = p.cidr {
                    if c != next.vpc.cidr {
                        for t in next.vpc.tiers.values() {
                            if !c.contains(&t.cidr) {
                                return Err(VpcError::invalid(
                                    "vpc_cidr",
                                    format!("{c} does not contain tier {}", t.network_id),
                                )
                                .into());
                            }
                        }
                        next.vpc.cidr = c;
                    }
                }
                next.vpc.implement(p.source_nat)?;
                next.public_device = public_device;
                next.implemented = true;
            }
            Command::UpdateVpcSourceNatIp => {
                let ip = p
                    .source_nat
                    .ok_or_else(|| ProtocolError::MissingField("public_ip".into()))?;
                next.vpc.update_source_nat(ip)?;
            }
            _ => {
                // shutdown-vpc: nothing of the VPC stays on the host; the
                // tiers were shut down before (CloudStack's order); any
                // tier guest services still up stop here.
                for t in next.tiers.values() {
                    engine.tier_guest_down(t, true)?;
                }
                if let Some(plan) = slot.applied.take() {
                    applier.teardown(&ns, &plan.links.legs)?;
                } else {
                    applier.teardown(&ns, &[])?;
                }
                self.stop_radvds(&next);
                self.pbr.remove(&ns)?;
                self.remove(&ns)?;
                slot.doc = None;
                log::info!("{ns}: {command} done");
                return Ok(json!({ "namespace": ns }));
            }
        }
        self.commit(applier, &mut slot, current.as_ref(), next, command)?;
        Ok(json!({ "namespace": ns }))
    }

    /// Installs `next` (when implemented), persists it, and on failure puts
    /// the previous state back.
    fn commit(
        &self,
        applier: &Applier,
        slot: &mut VpcSlot,
        current: Option<&VpcDoc>,
        next: VpcDoc,
        command: Command,
    ) -> Result<(), ExecError> {
        let ns = next.vpc.namespace();
        if next.implemented {
            match self.install(applier, &next, slot.applied.as_ref()) {
                Ok(links) => slot.applied = Some(links),
                Err(e) => {
                    log::error!("{ns}: {command} failed to apply: {e}");
                    if let Some(prev) = current.filter(|c| c.implemented) {
                        match self.install(applier, prev, None) {
                            Ok(l) => slot.applied = Some(l),
                            Err(e2) => {
                                log::error!("{ns}: restoring the previous state failed: {e2}");
                                slot.applied = None;
                            }
                        }
                    }
                    return Err(e);
                }
            }
        }
        self.save(&next)?;
        slot.record_log_lines.clear();
        slot.doc = Some(next);
        log::info!("{ns}: {command} done");
        Ok(())
    }

    /// Plans and applies the whole namespace; returns the installed links.
    fn install(
        &self,
        applier: &Applier,
        doc: &VpcDoc,
        previous: Option<&Plan>,
    ) -> Result<Plan, ExecError> {
        let tiers: Vec<&NetworkState> = doc.tiers.values().filter(|t| t.implemented).collect();
        let parts = ruleset_parts(doc, &tiers)?;
        let plan = doc.vpc.plan(&tiers, &doc.public_device, &parts)?;
        applier.apply(&plan, previous)?;
        let ns = doc.vpc.namespace();
        for t in &tiers {
            self.ensure_ipv6(applier, &ns, t)?;
        }
        Ok(plan)
    }

    /// IPv6 of one guest leg: address, sysctls, radvd (isolated networks and tiers).
    pub(crate) fn ensure_ipv6(
        &self,
        applier: &Applier,
        ns: &str,
        state: &NetworkState,
    ) -> Result<(), ExecError> {
        let Some(net) = ipv6::Ipv6Network::of(state) else {
            return Ok(());
        };
        let leg = planner::guest_inner_name(state.network_id);
        ipv6_runtime::configure_leg(applier, ns, &leg, &net)?;
        // RDNSS: the network's IPv6 DNS servers (dnsmasq listens on IPv4 only).
        let dns: Vec<String> = state
            .guest
            .dns
            .iter()
            .filter(|a| a.is_ipv6())
            .map(|a| a.to_string())
            .collect();
        let rdnss = ipv6::rdnss_from_dns(Some(&dns.join(",")), &net, false);
        self.radvd
            .ensure(
                ns,
                state.network_id,
                &leg,
                &net,
                &rdnss,
                state.guest.domain.as_deref(),
            )
            .map_err(ExecError::Apply)
    }

    /// Stops the radvd of a network (teardown of an isolated network or tier).
    pub(crate) fn stop_radvd(&self, ns: &str, network_id: u64) {
        self.radvd.stop(ns, network_id);
    }

    fn stop_radvds(&self, doc: &VpcDoc) {
        for t in doc.tiers.values() {
            self.radvd.stop(&doc.vpc.namespace(), t.network_id);
        }
    }

    /// Network commands on a tier, and `apply-network-acl`.
    fn tier_command(
        &self,
        engine: &super::engine::Engine,
        command: Command,
        env: &Envelope,
    ) -> Result<Value, ExecError> {
        let applier = engine.applier();
        let vpc_id = vpc_of(env)?;
        let ns = Namespace::Vpc(vpc_id).to_string();
        let slot = self.slot(&ns);
        let mut slot = lock(&slot);
        let Some(current) = slot.doc.clone() else {
            if matches!(command, Command::ShutdownNetwork | Command::DestroyNetwork) {
                return Ok(json!({ "namespace": ns }));
            }
            return Err(ProtocolError::InvalidField {
                field: "vpc_id".into(),
                reason: format!("VPC {vpc_id} is not implemented on this host"),
            }
            .into());
        };
        let mut next = current.clone();
        let network_id = target_of(env)?
            .and_then(Target::network_id)
            .ok_or_else(|| ProtocolError::MissingField(NetworkId::FIELD.into()))?
            .get();
        let key = network_id.to_string();
        if command == Command::ApplyNetworkAcl {
            let raw = env
                .payload
                .get("acl_rules")
                .ok_or_else(|| ProtocolError::MissingField("acl_rules".into()))?;
            let rules = acl::parse_acl_rules(raw)?;
            next.vpc.set_acl(&key, acl::TierAcl::Applied(rules))?;
            self.commit(applier, &mut slot, Some(&current), next, command)?;
            return Ok(json!({ "namespace": ns }));
        }
        let req = NetworkRequest::parse(command, env)?
            .ok_or_else(|| ExecError::Unsupported(command.to_string()))?;
        let mut tier = next.tiers.get(&key).cloned().unwrap_or_else(|| {
            let mut t = NetworkState::new(&req, engine.guest_device());
            t.namespace = ns.clone();
            t
        });
        tier.transition(&req, &next.public_device)?;
        tier.namespace = ns.clone();
        match &req.command {
            NetworkCommand::Implement { .. } => {
                let (Some(gw), Some(cidr)) = (tier.extension_ip.or(tier.gateway), tier.cidr) else {
                    return Err(ProtocolError::MissingField("cidr".into()).into());
                };
                let net = cidr.network();
                let cidr: ipnet::Ipv4Net = format!("{}/{}", net.addr, net.prefix)
                    .parse()
                    .map_err(|_| VpcError::invalid("cidr", "expected an IPv4 CIDR"))?;
                next.vpc
                    .add_tier(&key, &planner::guest_inner_name(network_id), gw, cidr)?;
                super::engine::seed_tier(&mut tier, env)?;
                next.tiers.insert(key.clone(), tier);
            }
            NetworkCommand::Shutdown | NetworkCommand::Destroy => {
                // This tier's daemons only: the other tiers' keep serving.
                engine.tier_guest_down(&tier, matches!(req.command, NetworkCommand::Destroy))?;
                next.vpc.remove_tier(&key);
                self.radvd.stop(&ns, network_id);
                if matches!(req.command, NetworkCommand::Destroy) {
                    next.tiers.remove(&key);
                } else {
                    next.tiers.insert(key.clone(), tier);
                }
            }
            _ => {
                next.tiers.insert(key.clone(), tier);
            }
        }
        derive_addresses(&mut next)?;
        let up = matches!(req.command, NetworkCommand::Implement { .. })
            .then(|| next.tiers.get(&key).cloned())
            .flatten();
        self.commit(applier, &mut slot, Some(&current), next, command)?;
        if let Some(t) = up {
            engine.tier_guest_up(&t)?;
        }
        Ok(json!({ "namespace": ns }))
    }

    /// A guest-service command on a tier: the tier's guest state changes,
    /// its daemons follow (when implemented), then it is persisted like an
    /// isolated network's: a change of records only as one line of the
    /// tier's record log (the VPC document, with every tier's records, is
    /// not rewritten); anything else rewrites the document.
    fn tier_guest(
        &self,
        engine: &super::engine::Engine,
        command: Command,
        env: &Envelope,
    ) -> Result<Value, ExecError> {
        let vpc_id = vpc_of(env)?;
        let ns = Namespace::Vpc(vpc_id).to_string();
        let network = netbridge_protocol::payload::NetworkFields::parse(&env.fields())?;
        let slot = self.slot(&ns);
        let mut guard = lock(&slot);
        let slot = &mut *guard;
        let key = network.network_id.to_string();
        // The document is borrowed, not cloned: it holds every tier's records.
        let (updated, record_ops, old_guest) = {
            let Some(doc) = slot.doc.as_ref() else {
                return Err(ProtocolError::InvalidField {
                    field: "vpc_id".into(),
                    reason: format!("VPC {vpc_id} is not implemented on this host"),
                }
                .into());
            };
            let fresh;
            let tier = match doc.tiers.get(&key) {
                Some(t) => t,
                None => {
                    // Guest data may arrive before implement-network.
                    let req = NetworkRequest {
                        network,
                        devices: netbridge_protocol::payload::Devices::parse(env)?,
                        command: NetworkCommand::Shutdown,
                    };
                    let mut t = NetworkState::new(&req, engine.guest_device());
                    t.namespace = ns.clone();
                    fresh = t;
                    &fresh
                }
            };
            // An LB public address must be the VPC's before haproxy binds it.
            if command == Command::ApplyLbRules && tier.implemented {
                let mut probe = tier.guest.clone();
                let mut vms = Default::default();
                crate::services::apply(
                    command,
                    &env.payload,
                    &mut probe,
                    &mut vms,
                    &Default::default(),
                )?;
                for r in probe.lb_rules.values() {
                    if !doc.vpc.addresses.contains_key(&r.public_ip) {
                        return Err(ProtocolError::InvalidField {
                            field: "lb_rules".into(),
                            reason: format!("{} is not assigned to the VPC", r.public_ip),
                        }
                        .into());
                    }
                }
            }
            let updated = engine.tier_guest_command(command, env, tier)?;
            // Records of a tier the document already holds can be logged.
            let record_ops = doc
                .tiers
                .contains_key(&key)
                .then(|| record_log::delta(&tier.guest, &updated.guest))
                .flatten();
            let lb_changed = updated.guest.lb_rules != tier.guest.lb_rules;
            (updated, record_ops, lb_changed.then(|| tier.guest.clone()))
        };
        let network_id = updated.network_id;
        if let Some(old_guest) = old_guest {
            // Input-chain openings of the LB ports and the UDP LB DNAT
            // follow the rules; flows of revoked UDP backends go.
            let current = slot.doc.clone();
            let mut next = current.clone().ok_or_else(|| not_held(&ns))?;
            let new_guest = updated.guest.clone();
            next.tiers.insert(key, updated);
            self.commit(engine.applier(), slot, current.as_ref(), next, command)?;
            engine.forget_stale_udp_flows(&ns, &old_guest, &new_guest);
        } else {
            self.persist_tier_guest(slot, &ns, key, updated, record_ops)?;
        }
        log::info!("{ns}: {command} on tier {network_id} done");
        Ok(json!({ "namespace": ns }))
    }

    /// Persists a tier's new state after a guest command that changed no
    /// LB rule: `record_ops` (its records' change, when nothing else
    /// changed) as one line of the tier's record log, unless that log is
    /// past its compaction threshold; else the whole document.
    fn persist_tier_guest(
        &self,
        slot: &mut VpcSlot,
        ns: &str,
        key: String,
        updated: NetworkState,
        record_ops: Option<Vec<record_log::RecordOp>>,
    ) -> Result<(), ExecError> {
        let doc = slot.doc.as_mut().ok_or_else(|| not_held(ns))?;
        if let Some(ops) = record_ops {
            let lines = slot.record_log_lines.get(&key).copied().unwrap_or(0);
            if ops.is_empty() {
                doc.tiers.insert(key, updated);
                return Ok(());
            }
            if !record_log::needs_compaction(lines + 1, &updated.guest) {
                record_log::append(&self.tier_log_path(ns, &key), &ops)?;
                slot.record_log_lines.insert(key.clone(), lines + 1);
                doc.tiers.insert(key, updated);
                return Ok(());
            }
        }
        let previous = doc.tiers.insert(key.clone(), updated);
        if let Err(e) = self.save(doc) {
            // The state in force stays the one held before the command.
            match previous {
                Some(p) => doc.tiers.insert(key, p),
                None => doc.tiers.remove(&key),
            };
            return Err(e);
        }
        slot.record_log_lines.clear();
        Ok(())
    }

    /// Start-up: guest services of every implemented tier back (daemons
    /// adopted from their PID files when they survived).
    pub(crate) fn reconcile_guest(&self, engine: &super::engine::Engine) {
        let slots: Vec<Arc<Mutex<VpcSlot>>> = lock(&self.slots).values().cloned().collect();
        for slot in slots {
            let slot = lock(&slot);
            let Some(doc) = slot.doc.as_ref().filter(|d| d.implemented) else {
                continue;
            };
            for t in doc.tiers.values().filter(|t| t.implemented) {
                if let Err(e) = engine.tier_guest_up(t) {
                    log::error!(
                        "reconcile: {} tier {}: guest services: {e}",
                        t.namespace,
                        t.network_id
                    );
                }
            }
        }
    }

    /// `custom-action` for isolated networks, tiers and VPCs, under the
    /// namespace's lock.
    fn custom_action(
        &self,
        engine: &super::engine::Engine,
        body: &[u8],
    ) -> Result<Value, ExecError> {
        let parsed = actions::parse_custom_action(body)?;
        let ns = parsed.namespace();
        let answer = if parsed.target.namespace().is_vpc() {
            let slot = self.slot(&ns);
            let mut slot = lock(&slot);
            self.vpc_action(engine, &ns, body, &mut slot)?
        } else {
            let answer = engine.with_network(&ns, |state| self.network_action(&ns, body, state))?;
            match answer {
                Some(a) => a,
                None => {
                    // reboot-device: the engine rebuilds under the network's lock.
                    if !engine.rebuild_network(&ns)? {
                        return Err(not_held(&ns));
                    }
                    self.replay_pbr(&ns);
                    actions::success_message(json!(format!("{ns} rebuilt from its desired state")))
                }
            }
        };
        log::info!("{ns}: custom-action {} done", parsed.action);
        Ok(json!({ "namespace": ns, "stdout": answer.to_string() }))
    }

    /// Runs the action; `reboot-device`/`dump-config` come back to the caller.
    fn run_action(&self, ns: &str, body: &[u8], held: bool) -> Result<ActionOutcome, ExecError> {
        if !held {
            // Validate first so bad input is reported as such.
            let a = actions::parse_custom_action(body)?;
            a.parse_action()?;
            return Err(not_held(ns));
        }
        let (_, outcome) = actions::execute_custom_action(body, &self.runner(), &self.pbr)?;
        Ok(outcome)
    }

    fn vpc_action(
        &self,
        engine: &super::engine::Engine,
        ns: &str,
        body: &[u8],
        slot: &mut VpcSlot,
    ) -> Result<Value, ExecError> {
        let held = slot.doc.as_ref().is_some_and(|d| d.implemented);
        Ok(match self.run_action(ns, body, held)? {
            ActionOutcome::Answer(a) => a,
            ActionOutcome::Engine(BuiltinAction::DumpConfig) => {
                let doc = slot.doc.as_ref().ok_or_else(|| not_held(ns))?;
                self.dump(ns, serde_json::to_value(doc).unwrap_or(Value::Null))?
            }
            ActionOutcome::Engine(_) => {
                let doc = slot.doc.clone().ok_or_else(|| not_held(ns))?;
                let applier = engine.applier();
                let legs = slot
                    .applied
                    .take()
                    .map(|p| p.links.legs)
                    .unwrap_or_default();
                applier.teardown(ns, &legs)?;
                self.stop_radvds(&doc);
                slot.applied = Some(self.install(applier, &doc, None)?);
                self.replay_pbr(ns);
                actions::success_message(json!(format!("{ns} rebuilt from its desired state")))
            }
        })
    }

    /// `None`: `reboot-device`, which the caller hands to the engine.
    fn network_action(
        &self,
        ns: &str,
        body: &[u8],
        state: Option<&NetworkState>,
    ) -> Result<Option<Value>, ExecError> {
        let held = state.is_some_and(|s| s.implemented);
        Ok(match self.run_action(ns, body, held)? {
            ActionOutcome::Answer(a) => Some(a),
            ActionOutcome::Engine(BuiltinAction::DumpConfig) => {
                let st = state.ok_or_else(|| not_held(ns))?;
                Some(self.dump(ns, serde_json::to_value(st).unwrap_or(Value::Null))?)
            }
            ActionOutcome::Engine(_) => None,
        })
    }

    fn dump(&self, ns: &str, config: Value) -> Result<Value, ExecError> {
        Ok(actions::success_message(json!({
            "namespace": ns,
            "config": actions::redact_secrets(&config),
            "pbr": serde_json::to_value(self.pbr.load(ns)?).unwrap_or(Value::Null),
        })))
    }
}

fn not_held(ns: &str) -> ExecError {
    ExecError::Invalid(ProtocolError::InvalidField {
        field: "network_id".into(),
        reason: format!("{ns} is not held by this host"),
    })
}

/// The engine's public address → the VPC model's.
fn model_ip(p: &super::state::PublicIp) -> PublicIp {
    PublicIp {
        ip: p.ip,
        prefix_len: p.prefix,
        gateway: p.gateway,
        vlan: p.vlan.tag(),
        link: planner::public_inner_name(p.vlan),
    }
}

/// Re-derives the tiers' ownership of public addresses from their states:
/// the VPC source NAT keeps its entry; every implemented tier owns the
/// addresses it holds.
fn derive_addresses(doc: &mut VpcDoc) -> Result<(), ExecError> {
    let owners: Vec<(std::net::Ipv4Addr, Owner)> = doc
        .vpc
        .addresses
        .iter()
        .flat_map(|(ip, e)| {
            e.owners
                .iter()
                .filter(|o| matches!(o, Owner::Tier(_)))
                .map(|o| (*ip, o.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    for (ip, o) in owners {
        doc.vpc.release(&o, ip);
    }
    for (id, t) in &doc.tiers {
        if !t.implemented || !doc.vpc.tiers.contains_key(id) {
            continue;
        }
        for p in &t.public_ips {
            doc.vpc.acquire(Owner::Tier(id.clone()), model_ip(p))?;
        }
    }
    Ok(())
}

/// Per-tier DNAT (port forwarding, static NAT, UDP LB), static-NAT SNAT,
/// input and IPv6 rules.
fn ruleset_parts(doc: &VpcDoc, tiers: &[&NetworkState]) -> Result<VpcRulesetParts, ExecError> {
    let mut parts = VpcRulesetParts::default();
    for t in tiers {
        parts
            .dnat
            .extend(t.port_forwards.iter().map(planner::port_forward));
        for sn in &t.static_nats {
            parts
                .dnat
                .push(planner::static_nat_dnat(sn.public_ip, sn.private_ip));
            let link = doc
                .vpc
                .addresses
                .get(&sn.public_ip)
                .map(|e| e.ip.link.clone())
                .ok_or_else(|| ProtocolError::InvalidField {
                    field: "public_ip".into(),
                    reason: format!("{} is not assigned to the VPC", sn.public_ip),
                })?;
            let oif = planner::quoted_set(&[&link]);
            parts
                .snat
                .push(planner::snat(&oif, sn.private_ip, sn.public_ip));
        }
        // UDP LB rules are DNAT to the tier's backends, gated by
        // the tier's ingress ACL in `forward` like port forwards.
        for r in t.guest.udp_lb_rules() {
            if doc.vpc.addresses.contains_key(&r.public_ip) {
                parts.dnat.extend(super::services::nftlb::dnat_rule(r));
            }
        }
        // The tier's haproxy frontends listen on VPC public addresses: their
        // ports are opened in the namespace's input chain (apply-lb-rules
        // refuses other addresses; one released later just stops matching).
        for r in t.guest.tcp_lb_rules() {
            if !doc.vpc.addresses.contains_key(&r.public_ip) {
                continue;
            }
            parts.input.push(Rule::new(
                format!("ip daddr {} tcp dport {}", r.public_ip, r.public_port),
                Verdict::Accept,
            ));
        }
        if let Some(net) = ipv6::Ipv6Network::of(t) {
            let leg = planner::guest_inner_name(t.network_id);
            parts.ipv6_forward.extend(ipv6::forward_rules(&leg, &net));
        }
    }
    Ok(parts)
}

/// IPv6 runtime pieces: leg configuration and radvd supervision.
pub(crate) mod ipv6_runtime {
    use std::collections::HashMap;
    use std::ffi::OsString;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::super::applier::{in_netns, Applier};
    use super::super::services::supervisor::{Daemon, DaemonSpec};
    use super::super::vpc::ipv6;
    use super::ExecError;

    /// Gateway address, forwarding and RA sysctls of a guest leg.
    pub fn configure_leg(
        applier: &Applier,
        ns: &str,
        leg: &str,
        net: &ipv6::Ipv6Network,
    ) -> Result<(), ExecError> {
        let path = applier.netns_path(ns);
        let mut sysctls = ipv6::ipv6_sysctls(leg);
        // Unsolicited neighbour advertisements when the gateway address
        // appears: after a rebuild the VMs learn the new leg's MAC at once
        // (the IPv6 counterpart of the gratuitous ARP of IPv4 addresses).
        sysctls.push((format!("net.ipv6.conf.{leg}.ndisc_notify"), "1".into()));
        in_netns(&path, || -> std::io::Result<()> {
            for (k, v) in &sysctls {
                let file = format!("/proc/sys/{}", k.replace('.', "/"));
                std::fs::write(file, format!("{v}\n"))?;
            }
            Ok(())
        })
        .map_err(|e| ExecError::Apply(e.to_string()))?
        .map_err(|e| ExecError::Apply(format!("{ns}: ipv6 sysctls: {e}")))?;
        let addr = net.gateway_with_prefix();
        let out = std::process::Command::new("ip")
            .args([
                "-n", ns, "-6", "addr", "replace", &addr, "dev", leg, "nodad",
            ])
            .output()
            .map_err(|e| ExecError::Apply(format!("ip: {e}")))?;
        if !out.status.success() {
            return Err(ExecError::Apply(format!(
                "{ns}: adding {addr} to {leg}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// One radvd per network, tracked by exact PID.
    pub struct Radvds {
        dir: PathBuf,
        running: Mutex<HashMap<(String, u64), Daemon>>,
    }

    impl Radvds {
        pub fn new(dir: PathBuf) -> Radvds {
            Radvds {
                dir,
                running: Mutex::new(HashMap::new()),
            }
        }

        fn spec(&self, ns: &str, network_id: u64) -> (DaemonSpec, PathBuf) {
            let conf = self.dir.join(format!("{ns}-{network_id}.conf"));
            let pid = self.dir.join(format!("{ns}-{network_id}.pid"));
            let spec = DaemonSpec {
                name: format!("radvd {ns}/{network_id}"),
                program: PathBuf::from("radvd"),
                args: vec![
                    OsString::from("-n"),
                    OsString::from("-C"),
                    conf.clone().into_os_string(),
                    OsString::from("-p"),
                    self.dir
                        .join(format!("{ns}-{network_id}.radvd.pid"))
                        .into_os_string(),
                    OsString::from("-u"),
                    OsString::from("root"),
                ],
                netns: Some(ns.to_string()),
                pid_file: pid,
                log_file: Some(self.dir.join(format!("{ns}-{network_id}.log"))),
                marker: conf.clone().into_os_string(),
            };
            (spec, conf)
        }

        /// Writes the configuration and (re)starts radvd when it changed or died.
        pub fn ensure(
            &self,
            ns: &str,
            network_id: u64,
            leg: &str,
            net: &ipv6::Ipv6Network,
            rdnss: &[std::net::Ipv6Addr],
            domain: Option<&str>,
        ) -> Result<(), String> {
            // radvd runs as root (`-u root`): nothing here is for others.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .and_then(|()| {
                    std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                })
                .map_err(|e| e.to_string())?;
            let (spec, conf) = self.spec(ns, network_id);
            let intervals = ipv6::RaIntervals::default();
            // A domain radvd cannot take is left out rather than failing the network.
            let text = ipv6::render_radvd_conf(leg, net, rdnss, domain, intervals)
                .or_else(|_| ipv6::render_radvd_conf(leg, net, rdnss, None, intervals))
                .map_err(|e| e.to_string())?;
            let changed = std::fs::read_to_string(&conf).ok().as_deref() != Some(text.as_str());
            if changed {
                super::super::services::store::replace_file(&conf, text.as_bytes(), 0o600)
                    .map_err(|e| e.to_string())?;
            }
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            let key = (ns.to_string(), network_id);
            if let Some(mut d) = running.remove(&key) {
                if !changed && d.is_running() {
                    running.insert(key, d);
                    return Ok(());
                }
                let _ = d.stop(Duration::from_secs(2));
            } else if let Some(d) = Daemon::adopt(spec.clone()) {
                if !changed {
                    running.insert(key, d);
                    return Ok(());
                }
                let _ = d.stop(Duration::from_secs(2));
            }
            let d = Daemon::spawn(spec).map_err(|e| e.to_string())?;
            running.insert(key, d);
            Ok(())
        }

        pub fn stop(&self, ns: &str, network_id: u64) {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            let key = (ns.to_string(), network_id);
            let d = running
                .remove(&key)
                .or_else(|| Daemon::adopt(self.spec(ns, network_id).0));
            if let Some(d) = d {
                if let Err(e) = d.stop(Duration::from_secs(2)) {
                    log::warn!("radvd {ns}/{network_id}: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::request;

    fn tier_state(id: &str, vlan: &str, gw: &str, cidr: &str) -> NetworkState {
        let req = request(
            Command::ImplementNetwork,
            json!({"network_id": id, "vpc_id": "5", "vlan": vlan, "cidr": cidr,
                "gateway": gw, "extension_ip": gw}),
        );
        let mut s = NetworkState::new(&req, "eth1");
        s.transition(&req, "eth1").unwrap();
        s
    }

    fn run(s: &mut NetworkState, c: Command, p: Value) {
        s.transition(&request(c, p), "eth1").unwrap();
    }

    fn assign(id: &str, ip: &str) -> Value {
        json!({"network_id": id, "public_ip": ip, "public_cidr": "203.0.113.0/24",
            "public_gateway": "203.0.113.1", "public_vlan": "200"})
    }

    fn doc() -> VpcDoc {
        let snat = model::parse_vpc_payload(
            json!({"vpc_id": "5", "vpc_cidr": "10.1.0.0/16", "public_ip": "203.0.113.10",
                "public_cidr": "203.0.113.0/24", "public_gateway": "203.0.113.1",
                "public_vlan": "vlan://200"})
            .as_object()
            .unwrap(),
            vpc_link_for,
        )
        .unwrap();
        let mut vpc = VpcState::new(VpcId::new(5), "10.1.0.0/16".parse().unwrap()).unwrap();
        vpc.implement(snat.source_nat).unwrap();
        let mut tiers = BTreeMap::new();
        for (id, vlan, gw, cidr) in [
            ("11", "100", "10.1.1.1", "10.1.1.0/24"),
            ("12", "101", "10.1.2.1", "10.1.2.0/24"),
        ] {
            let t = tier_state(id, vlan, gw, cidr);
            vpc.add_tier(
                id,
                &planner::guest_inner_name(t.network_id),
                gw.parse().unwrap(),
                cidr.parse().unwrap(),
            )
            .unwrap();
            tiers.insert(id.to_string(), t);
        }
        VpcDoc {
            version: DOC_VERSION,
            vpc,
            implemented: true,
            public_device: "eth1".into(),
            tiers,
        }
    }

    #[test]
    fn shared_addresses_stay_while_another_tier_uses_them() {
        let mut d = doc();
        for (id, ip) in [
            ("11", "203.0.113.20"),
            ("12", "203.0.113.20"),
            ("12", "203.0.113.22"),
        ] {
            let t = d.tiers.get_mut(id).unwrap();
            run(t, Command::AssignIp, assign(id, ip));
        }
        derive_addresses(&mut d).unwrap();
        let ips =
            |d: &VpcDoc| -> Vec<String> { d.vpc.addresses.keys().map(|a| a.to_string()).collect() };
        assert_eq!(ips(&d), ["203.0.113.10", "203.0.113.20", "203.0.113.22"]);
        // Tier 11 goes: .20 stays for tier 12, the source NAT stays.
        d.vpc.remove_tier("11");
        d.tiers.remove("11");
        derive_addresses(&mut d).unwrap();
        assert_eq!(ips(&d), ["203.0.113.10", "203.0.113.20", "203.0.113.22"]);
        let t = d.tiers.get_mut("12").unwrap();
        run(t, Command::ReleaseIp, assign("12", "203.0.113.20"));
        derive_addresses(&mut d).unwrap();
        assert_eq!(ips(&d), ["203.0.113.10", "203.0.113.22"]);
        // Deriving twice changes nothing.
        let once = d.clone();
        derive_addresses(&mut d).unwrap();
        assert_eq!(d, once);
    }

    #[test]
    fn tier_lb_ports_open_and_udp_dnat_only_on_vpc_addresses_and_tiers_have_own_keys() {
        let mut d = doc();
        let t = d.tiers.get_mut("12").unwrap();
        run(t, Command::AssignIp, assign("12", "203.0.113.22"));
        let mut vms = Default::default();
        let lb = json!({"lb_rules": [
            {"id": "7", "publicIp": "203.0.113.22", "publicPort": "80", "privatePort": "80",
             "protocol": "tcp", "algorithm": "roundrobin",
             "backends": [{"ip": "10.1.2.10", "port": "80"}]},
            {"id": "8", "publicIp": "203.0.113.99", "publicPort": "443", "privatePort": "443",
             "protocol": "tcp", "algorithm": "roundrobin",
             "backends": [{"ip": "10.1.2.10", "port": "443"}]},
            {"id": "9", "publicIp": "203.0.113.22", "publicPort": "53", "privatePort": "53",
             "protocol": "udp", "algorithm": "source",
             "backends": [{"ip": "10.1.2.11", "port": "53"}, {"ip": "10.1.2.10", "port": "53"}]},
            {"id": "10", "publicIp": "203.0.113.99", "publicPort": "53", "privatePort": "53",
             "protocol": "udp", "algorithm": "roundrobin",
             "backends": [{"ip": "10.1.2.10", "port": "53"}]}]});
        crate::services::apply(
            Command::ApplyLbRules,
            lb.as_object().unwrap(),
            &mut t.guest,
            &mut vms,
            &Default::default(),
        )
        .unwrap();
        derive_addresses(&mut d).unwrap();
        let tiers: Vec<&NetworkState> = d.tiers.values().collect();
        let parts = ruleset_parts(&d, &tiers).unwrap();
        // The address the VPC does not hold opens nothing; UDP rules open
        // no input port: they are DNAT to the tier, gated by its ACL.
        assert_eq!(parts.input, ["ip daddr 203.0.113.22 tcp dport 80 accept"]);
        assert_eq!(
            parts.dnat,
            ["ip daddr 203.0.113.22 udp dport 53 dnat ip to jhash ip saddr mod 2 seed 0x6e627564 map { 0 : 10.1.2.10 . 53, 1 : 10.1.2.11 . 53 }"]
        );
        let keys: Vec<String> = d
            .tiers
            .values()
            .map(|t| {
                let mut t = t.clone();
                t.namespace = "cs-vpc-5".into();
                crate::engine::tier_guest_key(&t)
            })
            .collect();
        assert_eq!(keys, ["cs-vpc-5-tier-11", "cs-vpc-5-tier-12"]);
        // An isolated network keeps its namespace as the key.
        assert_eq!(
            crate::engine::tier_guest_key(&tier_state("11", "100", "10.1.1.1", "10.1.1.0/24")),
            "cs-net-11"
        );
    }

    #[test]
    fn tier_rules_render_into_the_vpc_ruleset() {
        let mut d = doc();
        let t = d.tiers.get_mut("11").unwrap();
        run(t, Command::AssignIp, assign("11", "203.0.113.20"));
        run(
            t,
            Command::AddStaticNat,
            json!({"network_id": "11", "public_ip": "203.0.113.20", "private_ip": "10.1.1.10"}),
        );
        run(
            t,
            Command::AddPortForward,
            json!({"network_id": "11", "public_ip": "203.0.113.10", "public_port": "8080",
                "private_ip": "10.1.1.10", "private_port": "80", "protocol": "tcp"}),
        );
        derive_addresses(&mut d).unwrap();
        let tiers: Vec<&NetworkState> = d.tiers.values().collect();
        let parts = ruleset_parts(&d, &tiers).unwrap();
        assert_eq!(
            parts.dnat,
            [
                "ip daddr 203.0.113.10 meta l4proto tcp tcp dport 8080 dnat ip to 10.1.1.10:80",
                "ip daddr 203.0.113.20 dnat ip to 10.1.1.10"
            ]
        );
        let link = planner::public_inner_name(validate::vlan("v", "200").unwrap());
        assert_eq!(
            parts.snat,
            [format!(
                "oifname \"{link}\" ip saddr 10.1.1.10 snat ip to 203.0.113.20"
            )]
        );
        let ruleset = d.vpc.plan(&tiers, "eth1", &parts).unwrap().ruleset.render();
        // Static NAT SNAT comes before the VPC-wide source NAT.
        let a = ruleset.find("snat ip to 203.0.113.20").unwrap();
        let b = ruleset.find("snat ip to 203.0.113.10").unwrap();
        assert!(a < b, "{ruleset}");
        // A static NAT of an address the VPC does not hold is refused.
        let t = d.tiers.get_mut("12").unwrap();
        run(
            t,
            Command::AddStaticNat,
            json!({"network_id": "12", "public_ip": "203.0.113.99", "private_ip": "10.1.2.10"}),
        );
        let tiers: Vec<&NetworkState> = d.tiers.values().collect();
        assert_eq!(
            ruleset_parts(&d, &tiers).unwrap_err().to_string(),
            "invalid value for 'public_ip': 203.0.113.99 is not assigned to the VPC"
        );
    }

    #[test]
    fn ipv6_rules_go_into_the_forward_chain_after_the_fixed_rules() {
        let mut s = tier_state("42", "100", "10.1.1.1", "10.1.1.0/24");
        run(
            &mut s,
            Command::ImplementNetwork,
            json!({"network_id": "42", "vlan": "100", "cidr": "10.1.1.0/24",
                "gateway": "10.1.1.1", "network_ip6_gateway": "fd00:42::1",
                "network_ip6_cidr": "fd00:42::/64"}),
        );
        let ruleset = planner::plan(&s).unwrap().ruleset.render();
        let fwd = ruleset.find("chain forward").unwrap();
        let drop6 = ruleset
            .find("meta nfproto ipv6 drop comment \"ipv6 ingress denied unless allowed\"")
            .unwrap();
        let invalid = ruleset[fwd..].find("ct state invalid drop").unwrap() + fwd;
        assert!(invalid < drop6, "{ruleset}");
        assert_eq!(ruleset.matches("nfproto ipv6 drop").count(), 1);
        // Without IPv6 nothing changes.
        let plain = tier_state("43", "100", "10.1.1.1", "10.1.1.0/24");
        let ruleset = planner::plan(&plain).unwrap().ruleset.render();
        assert!(!ruleset.contains("nfproto ipv6"), "{ruleset}");
    }

    /// An isolated network with every contributor: source NAT, static NAT,
    /// port forwards (single, shifted range), firewall (per IP, any IP,
    /// egress), UDP and TCP load balancing, IPv6.
    fn golden_network() -> NetworkState {
        let mut s = tier_state("42", "100", "10.1.1.1", "10.1.1.0/24");
        run(
            &mut s,
            Command::ImplementNetwork,
            json!({"network_id": "42", "vlan": "100", "cidr": "10.1.1.0/24",
                "gateway": "10.1.1.1", "extension_ip": "10.1.1.1",
                "network_ip6_gateway": "fd00:42::1", "network_ip6_cidr": "fd00:42::/64"}),
        );
        let ip = |ip: &str, snat: bool| {
            json!({"network_id": "42", "public_ip": ip, "public_cidr": "203.0.113.0/24",
                "public_gateway": "203.0.113.1", "public_vlan": "200", "source_nat": snat.to_string()})
        };
        run(&mut s, Command::AssignIp, ip("203.0.113.10", true));
        run(&mut s, Command::AssignIp, ip("203.0.113.11", false));
        run(
            &mut s,
            Command::AddStaticNat,
            json!({"network_id": "42", "public_ip": "203.0.113.11", "private_ip": "10.1.1.10"}),
        );
        for (public, private) in [("9000-9002", "7000-7002"), ("80", "80"), ("2222", "22")] {
            run(
                &mut s,
                Command::AddPortForward,
                json!({"network_id": "42", "public_ip": "203.0.113.10", "public_port": public,
                    "private_ip": "10.1.1.6", "private_port": private, "protocol": "tcp"}),
            );
        }
        run(
            &mut s,
            Command::ApplyFwRules,
            json!({"network_id": "42", "fw_rules": {"default_egress_allow": false, "rules": [
            {"type": "ingress", "protocol": "tcp", "portStart": "80", "portEnd": "90", "publicIp": "203.0.113.10", "sourceCidrs": ["192.0.2.0/24"]},
            {"type": "ingress", "protocol": "tcp", "portStart": "85", "portEnd": "95", "publicIp": "203.0.113.10", "sourceCidrs": ["192.0.2.0/25", "0.0.0.0/0"]},
            {"type": "ingress", "protocol": "udp", "portStart": "53", "publicIp": "203.0.113.10"},
            {"type": "ingress", "protocol": "icmp", "icmpType": "8", "icmpCode": "-1", "publicIp": "203.0.113.11"},
            {"type": "ingress", "protocol": "all", "sourceCidrs": ["198.51.100.0/24"]},
            {"type": "ingress", "protocol": "udp", "portStart": "500", "sourceCidrs": ["198.51.100.7/32"]},
            {"type": "egress", "protocol": "udp", "portStart": "53", "destCidrs": ["192.0.2.53/32"]},
            {"type": "egress", "protocol": "tcp", "sourceCidrs": ["10.1.1.0/25"], "destCidrs": ["192.0.2.0/24", "198.51.100.0/24"]},
            {"type": "egress", "protocol": "icmp", "icmpType": "-1"}]}}),
        );
        let lb = json!({"lb_rules": [
            {"id": "7", "publicIp": "203.0.113.11", "publicPort": "80", "privatePort": "80",
             "protocol": "tcp", "algorithm": "roundrobin",
             "backends": [{"ip": "10.1.1.10", "port": "80"}]},
            {"id": "9", "publicIp": "203.0.113.10", "publicPort": "53", "privatePort": "53",
             "protocol": "udp", "algorithm": "source",
             "backends": [{"ip": "10.1.1.11", "port": "53"}, {"ip": "10.1.1.10", "port": "53"}]},
            {"id": "10", "publicIp": "203.0.113.11", "publicPort": "123", "privatePort": "123",
             "protocol": "udp", "algorithm": "roundrobin",
             "backends": [{"ip": "10.1.1.12", "port": "123"}]}]});
        crate::services::apply(
            Command::ApplyLbRules,
            lb.as_object().unwrap(),
            &mut s.guest,
            &mut Default::default(),
            &Default::default(),
        )
        .unwrap();
        s
    }

    /// A VPC with three tiers: one without ACL, one with ingress and egress
    /// rules (IPv4, IPv6, ICMP, port ranges), one with ingress rules only;
    /// static NAT, port forwarding and UDP/TCP load balancing, IPv6.
    fn golden_vpc() -> VpcDoc {
        let mut d = doc();
        let mut t = tier_state("13", "102", "10.1.3.1", "10.1.3.0/24");
        run(
            &mut t,
            Command::ImplementNetwork,
            json!({"network_id": "13", "vpc_id": "5", "vlan": "102", "cidr": "10.1.3.0/24",
                "gateway": "10.1.3.1", "extension_ip": "10.1.3.1",
                "network_ip6_gateway": "fd00:13::1", "network_ip6_cidr": "fd00:13::/64"}),
        );
        d.vpc
            .add_tier(
                "13",
                &planner::guest_inner_name(13),
                "10.1.3.1".parse().unwrap(),
                "10.1.3.0/24".parse().unwrap(),
            )
            .unwrap();
        d.tiers.insert("13".into(), t);
        let t = d.tiers.get_mut("11").unwrap();
        run(t, Command::AssignIp, assign("11", "203.0.113.20"));
        run(
            t,
            Command::AddStaticNat,
            json!({"network_id": "11", "public_ip": "203.0.113.20", "private_ip": "10.1.1.10"}),
        );
        run(
            t,
            Command::AddPortForward,
            json!({"network_id": "11", "public_ip": "203.0.113.10", "public_port": "8080",
                "private_ip": "10.1.1.10", "private_port": "80", "protocol": "tcp"}),
        );
        let t = d.tiers.get_mut("12").unwrap();
        run(t, Command::AssignIp, assign("12", "203.0.113.22"));
        let lb = json!({"lb_rules": [
            {"id": "7", "publicIp": "203.0.113.22", "publicPort": "80", "privatePort": "80",
             "protocol": "tcp", "algorithm": "roundrobin",
             "backends": [{"ip": "10.1.2.10", "port": "80"}]},
            {"id": "9", "publicIp": "203.0.113.22", "publicPort": "53", "privatePort": "53",
             "protocol": "udp", "algorithm": "source",
             "backends": [{"ip": "10.1.2.11", "port": "53"}, {"ip": "10.1.2.10", "port": "53"}]}]});
        crate::services::apply(
            Command::ApplyLbRules,
            lb.as_object().unwrap(),
            &mut t.guest,
            &mut Default::default(),
            &Default::default(),
        )
        .unwrap();
        let acl = |v: Value| acl::TierAcl::Applied(acl::parse_acl_rules(&v).unwrap());
        d.vpc.tiers.get_mut("12").unwrap().acl = acl(json!([
            {"number": "10", "trafficType": "Ingress", "action": "Allow", "protocol": "tcp",
             "portStart": "22", "portEnd": "23", "sourceCidrs": ["192.0.2.0/24", "2001:db8::/32"]},
            {"number": "20", "trafficType": "Ingress", "action": "Deny", "protocol": "icmp",
             "icmpType": "8", "icmpCode": "-1", "sourceCidrs": ["0.0.0.0/0"]},
            {"number": "30", "trafficType": "Egress", "action": "Allow", "protocol": "udp",
             "portStart": "53", "sourceCidrs": ["192.0.2.53/32"]},
            {"number": "40", "trafficType": "Egress", "action": "Deny", "protocol": "all"}]));
        d.vpc.tiers.get_mut("13").unwrap().acl = acl(json!([
            {"number": "5", "trafficType": "Ingress", "action": "Allow", "protocol": "41"}]));
        derive_addresses(&mut d).unwrap();
        d
    }

    /// The rulesets of representative states, compared with the files in
    /// `src/nft/golden/` (`NB_GOLDEN_WRITE=1` rewrites them).
    #[test]
    fn golden_rulesets() {
        let plan = planner::plan(&golden_network()).unwrap();
        let d = golden_vpc();
        let tiers: Vec<&NetworkState> = d.tiers.values().filter(|t| t.implemented).collect();
        let parts = ruleset_parts(&d, &tiers).unwrap();
        let vplan = d.vpc.plan(&tiers, &d.public_device, &parts).unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/nft/golden");
        for (name, rs) in [("network.nft", plan.ruleset), ("vpc.nft", vplan.ruleset)] {
            let text = rs.render();
            let path = dir.join(name);
            if std::env::var_os("NB_GOLDEN_WRITE").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
            }
            let want = std::fs::read_to_string(&path).unwrap();
            assert_eq!(text, want, "{name}");
        }
    }

    #[test]
    fn vpc_id_comes_from_the_payload_or_the_namespace() {
        let env = |v: Value| Envelope::parse(v.to_string().as_bytes()).unwrap();
        let vpc_id = |e: &Envelope| target_of(e).map(|t| t.and_then(Target::vpc_id));
        let e = env(json!({"payload": {"network_id": "11", "vpc_id": "5"}}));
        assert_eq!(vpc_id(&e).unwrap(), Some(VpcId::new(5)));
        let e = env(
            json!({"network-extension-details": {"namespace": "cs-vpc-7"},
            "payload": {"network_id": "11"}}),
        );
        assert_eq!(vpc_id(&e).unwrap(), Some(VpcId::new(7)));
        let e = env(json!({"payload": {"network_id": "11"}}));
        assert_eq!(vpc_id(&e).unwrap(), None);
        let e = env(json!({"payload": {"network_id": "11", "vpc_id": "5;reboot"}}));
        assert!(vpc_id(&e)
            .unwrap_err()
            .to_string()
            .starts_with("invalid value for 'vpc_id'"));
        let e = env(
            json!({"network-extension-details": {"namespace": "cs-net-7"},
            "payload": {"network_id": "11", "vpc_id": "5"}}),
        );
        assert!(target_of(&e).is_err());
    }

    fn engine(dir: &Path) -> crate::Engine {
        let netns = dir.join("netns");
        fs::create_dir_all(&netns).unwrap();
        crate::Engine::open_with(
            crate::EngineConfig {
                state_dir: dir.join("state"),
                guest_device: "eth1".into(),
                public_device: "eth1".into(),
            },
            crate::applier::ApplierConfig {
                netns_dir: netns,
                manage_links: false,
                nft_program: "/nonexistent/nft".into(),
                use_libnftables: false,
            },
        )
        .unwrap()
    }

    fn body(payload: Value) -> Vec<u8> {
        json!({"physical-network-extension-details": {"executor.key": "hidden"},
            "network-extension-details": {}, "payload": payload})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn vpc_commands_are_validated_before_anything_changes() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let cases = [
            (
                Command::ImplementVpc,
                json!({"vpc_id": "5"}),
                "missing required field 'vpc_cidr'",
            ),
            (
                Command::ImplementVpc,
                json!({"vpc_id": "5", "vpc_cidr": "10.1.0.1/16"}),
                "invalid value for 'vpc_cidr': host bits are set",
            ),
            (
                Command::UpdateVpcSourceNatIp,
                json!({"vpc_id": "5", "vpc_cidr": "10.1.0.0/16", "public_ip": "203.0.113.300"}),
                "invalid value for 'public_ip': expected an IPv4 address",
            ),
            (
                Command::ImplementNetwork,
                json!({"network_id": "11", "vpc_id": "5", "cidr": "10.1.1.0/24", "gateway": "10.1.1.1"}),
                "invalid value for 'vpc_id': VPC 5 is not implemented on this host",
            ),
            (
                Command::ApplyNetworkAcl,
                json!({"network_id": "11", "vpc_id": "5", "acl_rules": []}),
                "invalid value for 'vpc_id': VPC 5 is not implemented on this host",
            ),
            (
                Command::PrepareNic,
                json!({"network_id": "11", "vpc_id": "5"}),
                "invalid value for 'vpc_id': VPC 5 is not implemented on this host",
            ),
        ];
        for (c, p, text) in cases {
            let err = e.execute(c, &body(p)).unwrap_err();
            assert_eq!(err.to_string(), text, "{c}");
            assert_eq!(err.http_status(), 400);
        }
        // Shutting down what this host never held is a no-op.
        let out = e
            .execute(Command::ShutdownVpc, &body(json!({"vpc_id": "5"})))
            .unwrap();
        assert_eq!(out["namespace"], "cs-vpc-5");
        assert_eq!(
            fs::read_dir(dir.path().join("state/vpcs")).unwrap().count(),
            0
        );
        // custom-action on a network this host does not hold.
        let err = e
            .execute(
                Command::CustomAction,
                json!({"network_id": "42", "action": "pbr-list-tables"})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for 'network_id': cs-net-42 is not held by this host"
        );
        let err = e
            .execute(
                Command::CustomAction,
                json!({"network_id": "42", "action": "pbr-add-route",
                    "action-params": {"route": "blackhole 10.0.0.0/8 | sh"}})
                .to_string()
                .as_bytes(),
            )
            .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid value for 'route'"),
            "{err}"
        );
    }

    #[test]
    fn tier_logs_replay_onto_their_tiers_and_a_destroyed_tiers_log_goes() {
        let dir = tempfile::tempdir().unwrap();
        let v = VpcEngine::open(dir.path()).unwrap();
        let mut d = doc();
        v.save(&d).unwrap();
        let ip: std::net::Ipv4Addr = "10.1.1.20".parse().unwrap();
        let record = crate::services::model::DnsRecord {
            hostname: "vm20".into(),
            ip6: None,
        };
        let set = [record_log::RecordOp::Dns { ip, record }];
        record_log::append(&v.tier_log_path("cs-vpc-5", "11"), &set).unwrap();
        record_log::append(&v.tier_log_path("cs-vpc-5", "11"), &set).unwrap();
        // A tier the document no longer has, and another VPC's tier.
        record_log::append(&v.tier_log_path("cs-vpc-5", "99"), &set).unwrap();
        record_log::append(&v.tier_log_path("cs-vpc-55", "11"), &set).unwrap();
        let lines = v.replay_tier_logs(&mut d).unwrap();
        assert_eq!(lines, HashMap::from([("11".to_string(), 2)]));
        assert_eq!(d.tiers["11"].guest.dns_records[&ip].hostname, "vm20");
        assert!(d.tiers["12"].guest.dns_records.is_empty());
        assert!(!v.tier_log_path("cs-vpc-5", "99").exists());
        assert!(v.tier_log_path("cs-vpc-55", "11").exists());
        // Saving the document folds the logs in: they go, this VPC's only.
        v.save(&d).unwrap();
        assert!(!v.tier_log_path("cs-vpc-5", "11").exists());
        assert!(v.tier_log_path("cs-vpc-55", "11").exists());
        let back: VpcDoc = serde_json::from_slice(&fs::read(v.path("cs-vpc-5")).unwrap()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn vpc_state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let v = VpcEngine::open(dir.path()).unwrap();
        let d = doc();
        v.save(&d).unwrap();
        let path = v.path("cs-vpc-5");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back: VpcDoc = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, d);
        v.remove("cs-vpc-5").unwrap();
        v.remove("cs-vpc-5").unwrap();
        assert!(!path.exists());
    }
}
