//! Guest services wired into the engine: the 18 guest-service
//! commands, and the per-network runtime (dnsmasq, haproxy, metadata and
//! password server, VM data store) brought up after `implement-network` and
//! on reconcile, and stopped on shutdown/destroy.
//!
//! UDP load-balancing rules are no daemon's: they are part of the network's
//! nftables ruleset (planner → `services::nftlb`), so `apply-lb-rules` that
//! changes them re-plans and loads the ruleset here, then drops the
//! conntrack entries of flows whose backend or rule was revoked.
//!
//! This is a child module of `engine` so the
//! hook points in `engine.rs` stay one-line calls into here.
//!
//! The guest-service state (`services::GuestServices`) is a field of the network's
//! persisted [`NetworkState`], so it is saved atomically with it (a change
//! of records only as one line of the network's record log). VM data
//! lives in a [`MetadataStore`] beside it (one 0600 AES-256-GCM file per VM).
//!
//! Layout under the state directory. Every file the executor keeps is 0600
//! in 0700 directories, except what dnsmasq reads after it dropped root to
//! its unprivileged user (hosts files on SIGHUP, record shards by
//! inotify): those files are 0644, and every directory on the way to them
//! is traversable (`o+x`) but never listable:
//! ```text
//! <state>/                 0700; 0711 once a network has guest services
//!   networks/<ns>.json     0600  network state; `<ns>.log` its record log
//!                                (see [`crate::record_log`])
//!   vpcs/, pbr/, radvd/    0700  VPC state, policy-routing tables, radvd; 0600
//!   vpcs/cs-vpc-<id>.tier-<network_id>.log
//!                          0600  record log of a VPC tier
//!   guest/                 0711
//!     vmdata.key           0600  key of the VM data files (created once)
//!     <key>/               0711  key: the namespace, or for a VPC tier
//!                                `cs-vpc-<id>-tier-<network_id>`
//!       dnsmasq/           0711  dnsmasq.conf, leases, pid and log: 0600;
//!                                hosts, dhcp-hosts: 0644
//!         hosts.d/         0755  DNS record shards (`hostsdir`), 0644
//!       haproxy/           0700  conf, pid file, log
//!       vmdata/            0700  <ip>.vmdata, 0600, encrypted
//! ```
//! Parents of `<state>` must be traversable too (the default
//! `/var/lib/netbridge` is).

use std::fs;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;

use super::{Engine, ExecError};
use crate::record_log;
use crate::services::metadata::{ListenSpec, MetadataServer};
use crate::services::store::MetadataStore;
use crate::services::supervisor::{Daemon, DaemonSpec};
use crate::services::{self, dnsmasq, haproxy, run, GuestServices, ServicesError};
use crate::state::{NetworkState, StateError};
use crate::transition;
use netbridge_protocol::envelope::Envelope;
use netbridge_protocol::payload::NetworkFields;
use netbridge_protocol::Command;

/// How long a stopping daemon or metadata server gets before it is killed.
const GRACE: Duration = Duration::from_secs(5);
const KEY_FILE: &str = "vmdata.key";
/// Directories on the way to dnsmasq's files: the user dnsmasq drops to
/// may pass through, never list or read.
pub(super) const TRAVERSE_ONLY: u32 = 0o711;
/// A network's VM data directory, under its guest directory.
const VMDATA_DIR: &str = "vmdata";

/// Whether `command` is a guest-service command handled here.
pub(super) fn handles(command: Command) -> bool {
    use Command as C;
    matches!(
        command,
        C::PrepareNic
            | C::ReleaseNic
            | C::AddDhcpEntry
            | C::RemoveDhcpEntry
            | C::ConfigDhcpSubnet
            | C::RemoveDhcpSubnet
            | C::SetDhcpOptions
            | C::AddDnsEntry
            | C::RemoveDnsEntry
            | C::ConfigDnsSubnet
            | C::RemoveDnsSubnet
            | C::SaveVmData
            | C::SaveUserdata
            | C::SavePassword
            | C::SaveSshkey
            | C::SaveHypervisorHostname
            | C::ApplyLbRules
            | C::RestoreNetwork
    )
}

/// What runs for one network's guest services (held in the engine's slot).
#[derive(Default)]
pub(super) struct GuestRuntime {
    store: Option<Arc<MetadataStore>>,
    dnsmasq: Option<Daemon>,
    /// The dnsmasq files last written (what `dnsmasq` was given).
    dnsmasq_files: Option<dnsmasq::DnsmasqFiles>,
    haproxy: Option<Daemon>,
    /// Old haproxy processes finishing their connections after a reload.
    draining: Vec<Daemon>,
    metadata: Option<(Ipv4Addr, MetadataServer)>,
    /// `hosts.d` holds the record shards of the state last synced (else
    /// the next sync rewrites every shard).
    shards_synced: bool,
    /// Lines in the network's record log (`None`: not counted yet).
    record_log_lines: Option<usize>,
}

/// The runtime the metadata servers of every network run on. Never dropped
/// (a tokio runtime must not be dropped from async context, and the engine
/// may be dropped inside the daemon's runtime).
fn metadata_runtime() -> Result<&'static tokio::runtime::Runtime, ExecError> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("nb-metadata")
        .enable_all()
        .build()
        .map_err(|e| ExecError::Apply(format!("metadata runtime: {e}")))?;
    // A concurrent initialiser may win; its runtime is as good as ours.
    Ok(RT.get_or_init(|| rt))
}

fn io_state(context: &str, path: &Path, e: std::io::Error) -> ExecError {
    ExecError::State(format!("{context} {}: {e}", path.display()))
}

fn ensure_dir(path: &Path, mode: u32) -> Result<(), ExecError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| io_state("create", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io_state("chmod", path, e))
}

/// The VM data key: 32 random bytes created once (0600). A key file of the
/// wrong size is an error, never replaced: that would orphan the data.
fn load_or_create_key(root: &Path) -> Result<[u8; 32], ExecError> {
    let path = root.join(KEY_FILE);
    let mut key = [0u8; 32];
    match fs::File::open(&path) {
        Ok(mut f) => {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)
                .map_err(|e| io_state("read", &path, e))?;
            if buf.len() != key.len() {
                return Err(ExecError::State(format!(
                    "{}: expected a 32-byte key",
                    path.display()
                )));
            }
            key.copy_from_slice(&buf);
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut salt = [0u8; 8];
            getrandom::fill(&mut key)
                .and_then(|()| getrandom::fill(&mut salt))
                .map_err(|e| ExecError::State(format!("random: {e}")))?;
            // One temporary file per creator: networks implemented at the
            // same time must not write into each other's.
            let tmp = root.join(format!(".{KEY_FILE}.{}.tmp", hex::encode(salt)));
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io_state("create", &tmp, e))?;
            if let Err(e) = f.write_all(&key).and_then(|()| f.sync_all()) {
                let _ = fs::remove_file(&tmp);
                return Err(io_state("write", &tmp, e));
            }
            // No clobbering: a concurrent creator's key wins and is used.
            match fs::hard_link(&tmp, &path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let _ = fs::remove_file(&tmp);
                    return load_or_create_key(root);
                }
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(io_state("link", &path, e));
                }
            }
            let _ = fs::remove_file(&tmp);
            Ok(key)
        }
        Err(e) => Err(io_state("open", &path, e)),
    }
}

impl Engine {
    fn guest_root(&self) -> PathBuf {
        self.config.state_dir.join("guest")
    }

    fn guest_dir(&self, namespace: &str) -> PathBuf {
        self.guest_root().join(namespace)
    }

    /// Creates the directory layout (module docs) and opens the network's VM
    /// data store once.
    fn guest_store(
        &self,
        rt: &mut GuestRuntime,
        namespace: &str,
    ) -> Result<Arc<MetadataStore>, ExecError> {
        if let Some(s) = &rt.store {
            return Ok(s.clone());
        }
        let state_dir = &self.config.state_dir;
        let meta = fs::metadata(state_dir).map_err(|e| io_state("stat", state_dir, e))?;
        if meta.permissions().mode() & 0o7777 != TRAVERSE_ONLY {
            fs::set_permissions(state_dir, fs::Permissions::from_mode(TRAVERSE_ONLY))
                .map_err(|e| io_state("chmod", state_dir, e))?;
        }
        let root = self.guest_root();
        ensure_dir(&root, TRAVERSE_ONLY)?;
        let dir = self.guest_dir(namespace);
        ensure_dir(&dir, TRAVERSE_ONLY)?;
        let key = load_or_create_key(&root)?;
        let store = Arc::new(MetadataStore::open(dir.join(VMDATA_DIR), Some(key))?);
        rt.store = Some(store.clone());
        Ok(store)
    }

    /// The network's VM data store when it is open or on disk; `None`
    /// when the network has never stored VM data (nothing is created).
    fn stored_guest_store(
        &self,
        rt: &mut GuestRuntime,
        namespace: &str,
    ) -> Result<Option<Arc<MetadataStore>>, ExecError> {
        if rt.store.is_none() && !self.guest_dir(namespace).join(VMDATA_DIR).exists() {
            return Ok(None);
        }
        self.guest_store(rt, namespace).map(Some)
    }

    fn dnsmasq_paths(&self, namespace: &str) -> Result<dnsmasq::DnsmasqPaths, ExecError> {
        Ok(dnsmasq::paths_in(
            &self.guest_dir(namespace).join("dnsmasq"),
        )?)
    }

    fn haproxy_paths(&self, namespace: &str) -> haproxy::HaproxyPaths {
        haproxy::paths_in(&self.guest_dir(namespace).join("haproxy"))
    }

    /// Runs one guest-service command: pure update of the network's guest
    /// state and VM data, then (when implemented) the daemons, then persist.
    pub(super) fn execute_guest(
        &self,
        command: Command,
        envelope: &Envelope,
    ) -> Result<Value, ExecError> {
        let network = NetworkFields::parse(&envelope.fields())?;
        let namespace = NetworkState::namespace_for(network.network_id);
        let slot = self.slot(&namespace);
        let mut guard = super::lock(&slot);
        let slot = &mut *guard;
        // Taken out (not cloned: a network may hold thousands of records)
        // while the command runs, and put back on every path below.
        let held = slot.state.take();
        let fresh;
        let current = match &held {
            Some(s) => s,
            None => {
                // Guest data may arrive before implement-network.
                fresh = transition::unheld(envelope, &self.config.guest_device)?;
                &fresh
            }
        };
        match self.guest_step(slot, command, envelope, current, &namespace) {
            Ok(next) => slot.state = Some(next),
            Err(e) => {
                slot.state = held;
                return Err(e);
            }
        }
        log::info!("{namespace}: {command} done");
        Ok(serde_json::json!({ "namespace": namespace }))
    }

    /// One guest-service command on `current`: the pure update and the
    /// daemons, the network's ruleset when its UDP LB rules changed, then
    /// the state file. The new state, or an error with the old one in force.
    fn guest_step(
        &self,
        slot: &mut super::Slot,
        command: Command,
        envelope: &Envelope,
        current: &NetworkState,
        namespace: &str,
    ) -> Result<NetworkState, ExecError> {
        let next = self.apply_guest(&mut slot.guest, command, envelope, current, namespace)?;
        if next.implemented && udp_lb_changed(&current.guest, &next.guest) {
            // UDP LB is part of the network's ruleset: re-plan and load it.
            if let Err(e) = self.apply_udp_lb(slot, current, &next) {
                log::error!("{namespace}: {command}: UDP load balancing: {e}");
                // haproxy follows the TCP rules of the state still in force.
                let _ = self.sync_haproxy(&mut slot.guest, current, namespace);
                return Err(e);
            }
        }
        if let Err(e) = self.persist_guest(&mut slot.guest, current, &next) {
            log::error!("{namespace}: {command} applied but not persisted: {e}");
            return Err(e.into());
        }
        Ok(next)
    }

    /// Persists `next` after a guest command on `current` (which differ in
    /// `guest` only: `apply_guest` changes nothing else). A change of
    /// records only appends one line to the network's record log, whatever
    /// the number of records held; anything else, a network without a
    /// state file yet, or a log past its compaction threshold rewrites the
    /// state file and then drops the log. Not fsynced: one per VM record
    /// would cost milliseconds (see `StateStore::save_unsynced`); the data
    /// plane's commands are.
    fn persist_guest(
        &self,
        rt: &mut GuestRuntime,
        current: &NetworkState,
        next: &NetworkState,
    ) -> Result<(), StateError> {
        let path = self.store.path(&next.namespace);
        let log_path = record_log::log_path(&path);
        let lines = *rt
            .record_log_lines
            .get_or_insert_with(|| record_log::count_lines(&path));
        if let Some(ops) = record_log::delta(&current.guest, &next.guest) {
            if path.exists() {
                if ops.is_empty() {
                    return Ok(());
                }
                if !record_log::needs_compaction(lines + 1, &next.guest) {
                    record_log::append(&log_path, &ops)?;
                    rt.record_log_lines = Some(lines + 1);
                    return Ok(());
                }
            }
        }
        self.store.save_unsynced(next)?;
        // Only after the state file holds every record (see `record_log`).
        record_log::remove(&log_path)?;
        rt.record_log_lines = Some(0);
        Ok(())
    }

    /// Loads the ruleset of `next` (its UDP LB rules changed), then drops
    /// the conntrack entries of UDP flows whose backend or rule is gone, so
    /// a client that keeps its source port is not held on a revoked backend.
    fn apply_udp_lb(
        &self,
        slot: &mut super::Slot,
        current: &NetworkState,
        next: &NetworkState,
    ) -> Result<(), ExecError> {
        let plan = self.plan(next)?;
        self.applier.apply(&plan, slot.applied.as_ref())?;
        slot.applied = Some(plan);
        self.forget_stale_udp_flows(&next.namespace, &current.guest, &next.guest);
        Ok(())
    }

    /// After a VPC tier's ruleset took its new UDP LB rules (VPC hook):
    /// drops the conntrack entries of flows whose backend or rule is gone.
    pub(crate) fn forget_stale_udp_flows(
        &self,
        namespace: &str,
        old: &GuestServices,
        new: &GuestServices,
    ) {
        let stale = stale_udp_flows(old, new);
        if !stale.is_empty() {
            forget_udp_flows(&self.applier.netns_path(namespace), &stale);
        }
    }

    /// The pure update of one guest-service command plus, when the network
    /// is implemented, the daemons; the caller persists the result. `key`
    /// names the network's guest directory (its namespace for an isolated
    /// network, see [`tier_key`] for a VPC tier).
    fn apply_guest(
        &self,
        rt: &mut GuestRuntime,
        command: Command,
        envelope: &Envelope,
        current: &NetworkState,
        key: &str,
    ) -> Result<NetworkState, ExecError> {
        let namespace = current.namespace.as_str();
        let mut next = current.clone();
        transition::seed_addresses(&mut next);
        let opts = services::Options::default();
        let mut guest = std::mem::take(&mut next.guest);
        // `guest` is a copy dropped on error, and so is the store's set.
        let mut apply = |vms: &mut services::VmDataSet| {
            services::model::apply_in_place(command, &envelope.payload, &mut guest, vms, &opts)
        };
        let fx = if !services::model::touches_vm_data(command) {
            // No copy and no diff of every VM's data for a record command.
            apply(&mut services::VmDataSet::default())?
        } else if let Some(store) = self.stored_guest_store(rt, key)? {
            store.update(apply)?
        } else {
            // No VM data of this network on disk yet: the update runs on an
            // empty set first, so a refused command creates no directory,
            // key or file.
            let mut vms = services::VmDataSet::default();
            let fx = apply(&mut vms)?;
            if !vms.is_empty() {
                self.guest_store(rt, key)?.update(|set| {
                    *set = vms;
                    Ok(())
                })?;
            }
            fx
        };
        next.guest = guest;
        if next.implemented {
            self.guest_store(rt, key)?;
            // A removed NIC's granted lease would keep its name resolving
            // (dnsmasq answers names from leases): drop it with the NIC.
            let gone = removed_nics(&current.guest, &next.guest);
            if !gone.is_empty() {
                self.drop_leases(rt, namespace, key, &gone)?;
            }
            if fx.dnsmasq {
                if let Err(e) = self.sync_dnsmasq(rt, &next, key, Some(&current.guest)) {
                    log::error!("{key}: {command}: dnsmasq: {e}");
                    // Put the previous files back under the running daemon.
                    let _ = self.sync_dnsmasq(rt, current, key, None);
                    return Err(e);
                }
            }
            if fx.lb {
                // A refused configuration leaves the running one in place.
                self.sync_haproxy(rt, &next, key)?;
            }
        }
        Ok(next)
    }

    /// A guest-service command on a VPC tier: `tier` is the tier's state
    /// from the VPC document (namespace `cs-vpc-<id>`); the VPC engine
    /// persists the returned state with the VPC. The tier's runtime lives
    /// in an engine slot named by [`tier_key`] (its state stays `None`, so
    /// it never counts as a network).
    pub(crate) fn tier_guest_command(
        &self,
        command: Command,
        envelope: &Envelope,
        tier: &NetworkState,
    ) -> Result<NetworkState, ExecError> {
        let key = tier_key(tier);
        let slot = self.slot(&key);
        let mut slot = super::lock(&slot);
        self.apply_guest(&mut slot.guest, command, envelope, tier, &key)
    }

    /// Guest services of an implemented tier up (implement, reconcile).
    pub(crate) fn tier_guest_up(&self, tier: &NetworkState) -> Result<(), ExecError> {
        let key = tier_key(tier);
        let mut state = tier.clone();
        transition::seed_addresses(&mut state);
        let slot = self.slot(&key);
        let mut slot = super::lock(&slot);
        self.guest_up_keyed(&mut slot.guest, &state, &key)
    }

    /// Guest services of one tier stopped exactly (its own PIDs only); with
    /// `forget` (destroy) its guest files go too.
    pub(crate) fn tier_guest_down(
        &self,
        tier: &NetworkState,
        forget: bool,
    ) -> Result<(), ExecError> {
        let key = tier_key(tier);
        let slot = self.slot(&key);
        let r = {
            let mut s = super::lock(&slot);
            self.guest_down_keyed(&mut s.guest, &tier.namespace, &key, forget)
        };
        if forget && r.is_ok() {
            super::lock(&self.slots).remove(&key);
        }
        r
    }

    /// Removes the leases of `gone` (MAC, IP): dnsmasq keeps its lease
    /// database in memory and rewrites the file, so it is stopped, the file
    /// edited, and the caller's sync starts it again.
    fn drop_leases(
        &self,
        rt: &mut GuestRuntime,
        namespace: &str,
        key: &str,
        gone: &[(String, Ipv4Addr)],
    ) -> Result<(), ExecError> {
        let paths = self.dnsmasq_paths(key)?;
        let Ok(text) = fs::read_to_string(paths.leases()) else {
            return Ok(());
        };
        let kept = strip_leases(&text, gone);
        if kept == text {
            return Ok(());
        }
        let spec = run::dnsmasq_spec(&paths, Some(namespace), key);
        if let Some(d) = rt.dnsmasq.take().or_else(|| Daemon::adopt(spec)) {
            d.stop(GRACE)?;
        }
        services::store::replace_file(&paths.leases(), kept.as_bytes(), 0o600)?;
        Ok(())
    }

    /// Brings dnsmasq's files and process to `state`. With `old` (the
    /// guest state whose files are on disk) only the record shards that
    /// differ are written; without it, every shard.
    fn sync_dnsmasq(
        &self,
        rt: &mut GuestRuntime,
        state: &NetworkState,
        key: &str,
        old: Option<&GuestServices>,
    ) -> Result<(), ExecError> {
        let ns = state.namespace.as_str();
        let paths = self.dnsmasq_paths(key)?;
        let files = dnsmasq::render(&state.guest, &paths);
        let synced = std::mem::take(&mut rt.shards_synced);
        if files.is_some() {
            let changed = old
                .filter(|_| synced)
                .and_then(|o| dnsmasq::changed_shards(o, &state.guest));
            run::write_record_shards(&paths, &state.guest, changed.as_ref())?;
        }
        // Taken: after a failure the files are read back from disk.
        let known = rt.dnsmasq_files.take();
        let (daemon, action) = run::sync_dnsmasq_known(
            &paths,
            Some(ns),
            key,
            files.as_ref(),
            rt.dnsmasq.take(),
            known,
        )?;
        log::debug!("{key}: dnsmasq {action:?}");
        rt.dnsmasq = daemon;
        rt.shards_synced = files.is_some();
        rt.dnsmasq_files = files;
        Ok(())
    }

    fn sync_haproxy(
        &self,
        rt: &mut GuestRuntime,
        state: &NetworkState,
        key: &str,
    ) -> Result<(), ExecError> {
        let ns = state.namespace.as_str();
        run::reap_draining(&mut rt.draining);
        let paths = self.haproxy_paths(key);
        let cfg = haproxy::render(&state.guest);
        let (daemon, action) = run::sync_haproxy(
            &paths,
            Some(ns),
            key,
            cfg.as_deref(),
            rt.haproxy.take(),
            &mut rt.draining,
        )?;
        log::debug!("{key}: haproxy {action:?}");
        rt.haproxy = daemon;
        Ok(())
    }

    /// Brings every guest service of an implemented network up (after
    /// `implement-network` and on reconcile): daemons adopted from their PID
    /// files when they survived an executor restart, started otherwise.
    pub(super) fn guest_up(
        &self,
        rt: &mut GuestRuntime,
        state: &NetworkState,
    ) -> Result<(), ExecError> {
        self.guest_up_keyed(rt, state, &state.namespace)
    }

    fn guest_up_keyed(
        &self,
        rt: &mut GuestRuntime,
        state: &NetworkState,
        key: &str,
    ) -> Result<(), ExecError> {
        let ns = state.namespace.as_str();
        let store = self.guest_store(rt, key)?;
        let want = state.guest.listen_ip();
        if rt.metadata.as_ref().map(|(ip, _)| *ip) != want {
            if let Some((_, old)) = rt.metadata.take() {
                stop_metadata(old);
            }
            if let Some(ip) = want {
                let runtime = metadata_runtime()?;
                let server =
                    MetadataServer::start(runtime.handle(), &ListenSpec::new(Some(ns), ip), store)?;
                log::info!(
                    "{key}: metadata on {}, passwords on {}",
                    server.metadata_addr,
                    server.password_addr
                );
                rt.metadata = Some((ip, server));
            }
        }
        if rt.dnsmasq.is_none() {
            let spec = run::dnsmasq_spec(&self.dnsmasq_paths(key)?, Some(ns), key);
            rt.dnsmasq = adopt_in_place(spec, ns);
        }
        if rt.haproxy.is_none() {
            let spec = run::haproxy_spec(&self.haproxy_paths(key), Some(ns), key);
            rt.haproxy = adopt_in_place(spec, ns);
        }
        self.sync_dnsmasq(rt, state, key, None)?;
        self.sync_haproxy(rt, state, key)
    }

    /// Stops every guest service of a network exactly (tracked PIDs, or the
    /// PID files a previous executor left when they prove to be ours). With
    /// `forget` (destroy) the network's guest files go too.
    pub(super) fn guest_down(
        &self,
        rt: &mut GuestRuntime,
        namespace: &str,
        forget: bool,
    ) -> Result<(), ExecError> {
        self.guest_down_keyed(rt, namespace, namespace, forget)
    }

    fn guest_down_keyed(
        &self,
        rt: &mut GuestRuntime,
        namespace: &str,
        key: &str,
        forget: bool,
    ) -> Result<(), ExecError> {
        rt.dnsmasq_files = None;
        rt.shards_synced = false;
        if let Some((_, server)) = rt.metadata.take() {
            stop_metadata(server);
        }
        let mut first_err: Option<ExecError> = None;
        let mut note = |r: Result<(), ServicesError>| {
            if let Err(e) = r {
                log::error!("{namespace}: stopping a guest daemon: {e}");
                first_err.get_or_insert(e.into());
            }
        };
        let dns_spec = self
            .dnsmasq_paths(key)
            .map(|p| run::dnsmasq_spec(&p, Some(namespace), key));
        let dns = rt
            .dnsmasq
            .take()
            .or_else(|| dns_spec.ok().and_then(Daemon::adopt));
        if let Some(d) = dns {
            note(d.stop(GRACE));
        }
        let lb_spec = run::haproxy_spec(&self.haproxy_paths(key), Some(namespace), key);
        let lb = rt.haproxy.take().or_else(|| Daemon::adopt(lb_spec));
        if let Some(d) = lb {
            note(d.stop(GRACE));
        }
        for d in rt.draining.drain(..) {
            note(d.stop(GRACE));
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if forget {
            if let Some(store) = rt.store.take() {
                store.destroy()?;
            }
            let dir = self.guest_dir(key);
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_state("remove", &dir, e)),
            }
        }
        Ok(())
    }
}

/// Guest directory and engine-slot name of a network's guest services:
/// its namespace for an isolated network; `<namespace>-tier-<id>` for a VPC
/// tier, so each tier of a VPC namespace has its own dnsmasq files, leases,
/// PID files and VM data.
pub(crate) fn tier_key(state: &NetworkState) -> String {
    if state.namespace == NetworkState::namespace_for(state.network_id) {
        state.namespace.clone()
    } else {
        format!("{}-tier-{}", state.namespace, state.network_id)
    }
}

/// A daemon a previous executor left, adopted only when it still lives in
/// the network's current namespace. After the namespace was recreated (a
/// hand deletion, a reboot emulation that kept processes) it would serve a
/// dead namespace: it is stopped (exactly that PID) and the sync starts a
/// fresh one.
fn adopt_in_place(spec: DaemonSpec, ns: &str) -> Option<Daemon> {
    let d = Daemon::adopt(spec)?;
    if same_netns(d.pid(), ns) {
        return Some(d);
    }
    log::warn!(
        "{ns}: pid {} runs in an older copy of the namespace; replacing it",
        d.pid()
    );
    if let Err(e) = d.stop(GRACE) {
        log::error!("{ns}: stopping the stale daemon: {e}");
    }
    None
}

fn same_netns(pid: u32, ns: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(path) = services::metadata::netns_path(ns) else {
        return false;
    };
    match (
        fs::metadata(format!("/proc/{pid}/ns/net")),
        fs::metadata(path),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether the UDP load-balancing rules (the ruleset's part) differ.
fn udp_lb_changed(old: &GuestServices, new: &GuestServices) -> bool {
    !old.udp_lb_rules().eq(new.udp_lb_rules())
}

/// A set of UDP conntrack entries: original destination, and the backend
/// they were DNATed to (`None`: every backend).
#[derive(Debug, Clone, PartialEq, Eq)]
struct UdpFlows {
    public_ip: Ipv4Addr,
    public_port: u16,
    backend: Option<services::model::Backend>,
}

/// Flows that must not outlive an update (pure): all flows of a UDP rule
/// that is gone, and those of each backend that left a rule's pool.
fn stale_udp_flows(old: &GuestServices, new: &GuestServices) -> Vec<UdpFlows> {
    let mut out = Vec::new();
    for r in old.udp_lb_rules() {
        let kept = new.lb_rules.get(&r.id).filter(|n| {
            n.protocol.is_udp() && n.public_ip == r.public_ip && n.public_port == r.public_port
        });
        match kept {
            None => out.push(UdpFlows {
                public_ip: r.public_ip,
                public_port: r.public_port,
                backend: None,
            }),
            Some(n) => out.extend(
                r.backends
                    .iter()
                    .filter(|b| !n.backends.contains(b))
                    .map(|b| UdpFlows {
                        public_ip: r.public_ip,
                        public_port: r.public_port,
                        backend: Some(*b),
                    }),
            ),
        }
    }
    out
}

/// `conntrack -D` argument vector for one set of flows (typed values only).
fn conntrack_delete_args(f: &UdpFlows) -> Vec<String> {
    let mut argv: Vec<String> = [
        "-D",
        "-p",
        "udp",
        "--orig-dst",
        &f.public_ip.to_string(),
        "--orig-port-dst",
        &f.public_port.to_string(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    if let Some(b) = f.backend {
        argv.extend([
            "--reply-src".to_string(),
            b.ip.to_string(),
            "--reply-port-src".to_string(),
            b.port.to_string(),
        ]);
    }
    argv
}

/// Best effort: the rules are already in force; a flow left behind only
/// lives until its conntrack timeout. `conntrack` exits 1 when nothing
/// matched, which is no failure. A namespace that tracks no flow at all
/// (the per-namespace count in `/proc/sys/net`, read from the thread that
/// entered it) needs no `conntrack` process.
fn forget_udp_flows(netns: &Path, flows: &[UdpFlows]) {
    let result = crate::applier::in_netns(netns, || {
        let tracked = fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count");
        if tracked.is_ok_and(|n| n.trim() == "0") {
            return;
        }
        for f in flows {
            match std::process::Command::new("conntrack")
                .args(conntrack_delete_args(f))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
            {
                Ok(st) if matches!(st.code(), Some(0) | Some(1)) => {}
                Ok(st) => log::warn!("conntrack -D for {f:?}: {st}"),
                Err(e) => log::warn!("conntrack -D for {f:?}: {e}"),
            }
        }
    });
    if let Err(e) = result {
        log::warn!("{}: dropping stale UDP flows: {e}", netns.display());
    }
}

/// NICs present in `old` but not in `new` (MAC, IP).
fn removed_nics(old: &GuestServices, new: &GuestServices) -> Vec<(String, Ipv4Addr)> {
    old.nics
        .values()
        .filter(|n| new.nics.get(&n.mac).is_none_or(|m| m.ip != n.ip))
        .map(|n| (n.mac.clone(), n.ip))
        .collect()
}

/// The lease file without the lines of `gone` (pure). A line is
/// `<expiry> <mac> <ip> <hostname> <client-id>`; matches are exact.
fn strip_leases(text: &str, gone: &[(String, Ipv4Addr)]) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (mac, ip) = (f.nth(1), f.next());
        let drop = gone.iter().any(|(m, i)| {
            mac.is_some_and(|x| x.eq_ignore_ascii_case(m)) || ip == Some(i.to_string().as_str())
        });
        if !drop {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Stops accepting and waits (bounded) until both listeners are closed.
fn stop_metadata(server: MetadataServer) {
    match metadata_runtime() {
        Ok(rt) => {
            rt.block_on(async {
                let _ = tokio::time::timeout(GRACE, server.shutdown()).await;
            });
        }
        Err(_) => drop(server),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(dir: &Path) -> Engine {
        let netns = dir.join("netns");
        fs::create_dir_all(&netns).unwrap();
        Engine::open_with(
            super::super::EngineConfig {
                state_dir: dir.join("state"),
                guest_device: "eth1".into(),
                public_device: "eth1".into(),
            },
            super::super::ApplierConfig {
                netns_dir: netns,
                manage_links: false,
                nft_program: "/nonexistent/nft".into(),
                use_libnftables: false,
            },
        )
        .unwrap()
    }

    fn body(payload: Value) -> Vec<u8> {
        let mut p = payload;
        p["network_id"] = serde_json::json!("42");
        serde_json::json!({"physical-network-extension-details": {}, "payload": p})
            .to_string()
            .into_bytes()
    }

    /// Guest data of a network not implemented here: kept, persisted with the
    /// network state, private and encrypted on disk, back after a restart,
    /// gone after destroy; bad input changes nothing. No daemon is needed.
    #[test]
    fn guest_state_persists_privately_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let nic = serde_json::json!({"mac": "02:00:00:00:00:05", "ip": "10.1.1.5",
            "hostname": "vm5", "cidr": "10.1.1.0/24", "gateway": "10.1.1.1"});
        e.execute(Command::PrepareNic, &body(nic)).unwrap();
        e.execute(
            Command::SavePassword,
            &body(serde_json::json!({"ip": "10.1.1.5", "password": "Sekrit-Pw-123"})),
        )
        .unwrap();
        let bad = e
            .execute(
                Command::AddDhcpEntry,
                &body(serde_json::json!({"mac": "02:00:00:00:00:06", "ip": "10.1.1.300"})),
            )
            .unwrap_err();
        assert_eq!(bad.http_status(), 400);
        assert!(bad.to_string().contains("'ip'"), "{bad}");
        let udp = e
            .execute(
                Command::ApplyLbRules,
                &body(
                    serde_json::json!({"lb_rules": [{"id": "1", "publicIp": "203.0.113.10",
                    "publicPort": "53", "protocol": "udp", "algorithm": "leastconn",
                    "backends": [{"ip": "10.1.1.5", "port": "53"}]}]}),
                ),
            )
            .unwrap_err();
        assert_eq!(udp.http_status(), 400);
        assert_eq!(
            udp.to_string(),
            "unsupported: lb_rules[0].algorithm: leastconn is not supported for udp rules (UDP load balancing supports roundrobin, source)"
        );
        // A UDP rule is kept (and persisted) like a TCP one.
        e.execute(
            Command::ApplyLbRules,
            &body(
                serde_json::json!({"lb_rules": [{"id": "2", "publicIp": "203.0.113.10",
                "publicPort": "53", "protocol": "udp", "algorithm": "source",
                "backends": [{"ip": "10.1.1.5", "port": "5353"}]}]}),
            ),
        )
        .unwrap();

        let state = dir.path().join("state");
        let file = state.join("guest/cs-net-42/vmdata/10.1.1.5.vmdata");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let raw = fs::read(&file).unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("Sekrit"));
        let key = state.join("guest").join(KEY_FILE);
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let guest_mode = fs::metadata(state.join("guest"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(guest_mode & 0o777, 0o711, "traversable, not listable");
        drop(e);

        let e = engine(dir.path());
        let held = e.networks();
        assert_eq!(held[0]["namespace"], "cs-net-42");
        let slot = e.slot("cs-net-42");
        let mut slot = super::super::lock(&slot);
        let g = &slot.state.as_ref().unwrap().guest;
        assert_eq!(g.nics.len(), 1, "the bad entry changed nothing");
        assert_eq!(g.dns_records.values().next().unwrap().hostname, "vm5");
        let lb: Vec<&str> = g.lb_rules.keys().map(String::as_str).collect();
        assert_eq!(lb, ["2"], "the refused udp+leastconn rule changed nothing");
        assert_eq!(
            services::nftlb::dnat_rules(g),
            ["ip daddr 203.0.113.10 udp dport 53 dnat ip to 10.1.1.5:5353"]
        );
        let store = e.guest_store(&mut slot.guest, "cs-net-42").unwrap();
        let vm = store.get("10.1.1.5".parse().unwrap()).unwrap();
        assert_eq!(
            vm.password.as_ref().map(|p| p.expose()),
            Some("Sekrit-Pw-123")
        );
        // Destroy's guest part (the host part needs root): files gone.
        e.guest_down(&mut slot.guest, "cs-net-42", true).unwrap();
        assert!(!state.join("guest/cs-net-42").exists());
    }

    /// Every path under `root` with its mode and, for files, its content.
    fn tree(root: &Path) -> Vec<(PathBuf, u32, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(p) = pending.pop() {
            let meta = fs::symlink_metadata(&p).unwrap();
            let content = meta.is_file().then(|| fs::read(&p).unwrap());
            if meta.is_dir() {
                for entry in fs::read_dir(&p).unwrap() {
                    pending.push(entry.unwrap().path());
                }
            }
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            out.push((rel, meta.permissions().mode(), content));
        }
        out.sort();
        out
    }

    /// A refused guest command for a network this executor has never seen
    /// (no implement-network, no earlier guest data) leaves the state
    /// directory exactly as it was: no guest directory, no VM data key, no
    /// mode change, no state file.
    #[test]
    fn refused_guest_commands_for_an_unknown_network_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let state = dir.path().join("state");
        let before = tree(&state);
        let refused = [
            (
                Command::AddDhcpEntry,
                serde_json::json!({"mac": "02:00:00:00:00:06", "ip": "10.1.1.300"}),
                "'ip'",
            ),
            (
                Command::PrepareNic,
                serde_json::json!({"mac": "not-a-mac", "ip": "10.1.1.6"}),
                "'mac'",
            ),
            (
                Command::AddDnsEntry,
                serde_json::json!({"ip": "10.1.1.6", "hostname": "bad name"}),
                "'hostname'",
            ),
            (
                Command::SaveVmData,
                serde_json::json!({"ip": "10.1.1.6", "vm_data": [
                    {"dir": "elsewhere", "file": "x", "content": "y"}]}),
                "'vm_data[0].dir'",
            ),
            (
                Command::SavePassword,
                serde_json::json!({"ip": "10.1.1.6"}),
                "'password'",
            ),
            (
                Command::ApplyLbRules,
                serde_json::json!({"lb_rules": [{"id": "1", "publicIp": "203.0.113.10",
                    "publicPort": "53", "protocol": "udp", "algorithm": "leastconn",
                    "backends": [{"ip": "10.1.1.5", "port": "53"}]}]}),
                "lb_rules[0].algorithm",
            ),
            (
                Command::RestoreNetwork,
                serde_json::json!({"restore_data": {"vms": [{"ip": "10.1.1.6",
                    "vm_data": [{"dir": "metadata", "file": "../escape", "content": "x"}]}]}}),
                "'restore_data.vms[0].vm_data[0].file'",
            ),
        ];
        for (command, payload, field) in refused {
            let err = e.execute(command, &body(payload)).unwrap_err();
            assert_eq!(err.http_status(), 400, "{command}: {err}");
            assert!(err.to_string().contains(field), "{command}: {err}");
            assert_eq!(tree(&state), before, "{command} left something behind");
        }
        assert_eq!(e.networks(), serde_json::json!([]));
        // The same network's first accepted command creates its files.
        e.execute(
            Command::SavePassword,
            &body(serde_json::json!({"ip": "10.1.1.6", "password": "Pw-6-accepted"})),
        )
        .unwrap();
        assert!(state
            .join("guest/cs-net-42/vmdata/10.1.1.6.vmdata")
            .exists());
        assert_eq!(e.networks()[0]["namespace"], "cs-net-42");
    }

    /// `restore-network` with an empty `vm_data` for a VM keeps the VM's
    /// stored data on disk (user data, meta-data, password), also across a
    /// restart; the VM's NIC and record are restored as sent.
    #[test]
    fn restore_with_empty_vm_data_keeps_the_stored_files() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        e.execute(
            Command::SaveVmData,
            &body(serde_json::json!({"ip": "10.1.1.5", "vm_data": [
                {"dir": "userdata", "file": "user-data", "content": "#cloud-config vm5"},
                {"dir": "metadata", "file": "instance-id", "content": "i-vm5"}]})),
        )
        .unwrap();
        e.execute(
            Command::SavePassword,
            &body(serde_json::json!({"ip": "10.1.1.5", "password": "Pw-vm5-kept"})),
        )
        .unwrap();
        let file = dir
            .path()
            .join("state/guest/cs-net-42/vmdata/10.1.1.5.vmdata");
        let sealed = fs::read(&file).unwrap();
        e.execute(
            Command::RestoreNetwork,
            &body(serde_json::json!({"restore_data": {"dhcp_enabled": "true",
                "dns_enabled": "true", "userdata_enabled": "true", "vms": [
                {"ip": "10.1.1.5", "mac": "02:00:00:00:00:05", "hostname": "vm5",
                 "default_nic": "true", "vm_data": []}]}})),
        )
        .unwrap();
        assert_eq!(fs::read(&file).unwrap(), sealed, "file not rewritten");
        drop(e);

        let e = engine(dir.path());
        let slot = e.slot("cs-net-42");
        let mut slot = super::super::lock(&slot);
        let g = &slot.state.as_ref().unwrap().guest;
        assert_eq!(g.nics["02:00:00:00:00:05"].hostname.as_deref(), Some("vm5"));
        let store = e.guest_store(&mut slot.guest, "cs-net-42").unwrap();
        let vm = store.get("10.1.1.5".parse().unwrap()).unwrap();
        assert_eq!(vm.userdata.as_deref(), Some(&b"#cloud-config vm5"[..]));
        assert_eq!(vm.meta["instance-id"], "i-vm5");
        assert_eq!(
            vm.password.as_ref().map(|p| p.expose()),
            Some("Pw-vm5-kept")
        );
    }

    #[test]
    fn record_changes_go_to_the_log_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let add = |e: &Engine, i: u32| {
            let ip = format!("10.1.1.{}", 10 + i % 200);
            e.execute(
                Command::AddDnsEntry,
                &body(serde_json::json!({"ip": ip, "hostname": format!("vm{i}"),
                    "cidr": "10.1.1.0/24", "gateway": "10.1.1.1"})),
            )
            .unwrap();
        };
        add(&e, 0);
        let state = dir.path().join("state/networks/cs-net-42.json");
        let log = record_log::log_path(&state);
        let first = fs::read(&state).unwrap();
        assert!(!log.exists(), "the first command writes the state file");
        for i in 1..20 {
            add(&e, i);
        }
        e.execute(
            Command::RemoveDnsEntry,
            &body(serde_json::json!({"ip": "10.1.1.15"})),
        )
        .unwrap();
        assert_eq!(fs::read(&state).unwrap(), first, "records only: no rewrite");
        assert_eq!(record_log::count_lines(&state), 20);
        assert_eq!(
            fs::metadata(&log).unwrap().permissions().mode() & 0o777,
            0o600
        );
        drop(e);

        let e = engine(dir.path());
        {
            let slot = e.slot("cs-net-42");
            let slot = super::super::lock(&slot);
            let g = &slot.state.as_ref().unwrap().guest;
            assert_eq!(g.dns_records.len(), 19);
            assert!(!g.dns_records.contains_key(&"10.1.1.15".parse().unwrap()));
            assert_eq!(
                g.dns_records[&"10.1.1.29".parse().unwrap()].hostname,
                "vm19"
            );
        }
        // Past 2 x records + 64 lines (here 2 x 19 or 20 + 64) the log is
        // folded into the state file.
        for _ in 0..50 {
            add(&e, 180);
            e.execute(
                Command::RemoveDnsEntry,
                &body(serde_json::json!({"ip": "10.1.1.190"})),
            )
            .unwrap();
        }
        add(&e, 129);
        assert!(record_log::count_lines(&state) < 20);
        assert_ne!(fs::read(&state).unwrap(), first);
        drop(e);
        let e = engine(dir.path());
        let slot = e.slot("cs-net-42");
        let slot = super::super::lock(&slot);
        let g = &slot.state.as_ref().unwrap().guest;
        assert_eq!(g.dns_records.len(), 20);
        assert!(!g.dns_records.contains_key(&"10.1.1.190".parse().unwrap()));
        assert_eq!(
            g.dns_records[&"10.1.1.139".parse().unwrap()].hostname,
            "vm129"
        );
    }

    fn udp_rule(id: &str, port: u16, backends: &[&str]) -> services::model::LbRule {
        services::model::LbRule {
            id: id.into(),
            public_ip: "203.0.113.10".parse().unwrap(),
            public_port: port,
            protocol: services::model::LbProtocol::Udp,
            algorithm: services::model::LbAlgorithm::Roundrobin,
            backends: backends
                .iter()
                .map(|ip| services::model::Backend {
                    ip: ip.parse().unwrap(),
                    port: 5353,
                })
                .collect(),
        }
    }

    #[test]
    fn stale_udp_flows_name_revoked_backends_and_rules() {
        let mut old = GuestServices::default();
        for r in [
            udp_rule("1", 53, &["10.1.1.10", "10.1.1.11", "10.1.1.12"]),
            udp_rule("2", 54, &["10.1.1.10"]),
        ] {
            old.lb_rules.insert(r.id.clone(), r);
        }
        let mut new = old.clone();
        new.lb_rules
            .insert("1".into(), udp_rule("1", 53, &["10.1.1.10", "10.1.1.11"]));
        new.lb_rules.remove("2");
        assert!(udp_lb_changed(&old, &new));
        assert!(!udp_lb_changed(&old, &old.clone()));
        let stale = stale_udp_flows(&old, &new);
        assert_eq!(stale.len(), 2);
        assert_eq!(
            conntrack_delete_args(&stale[0]),
            [
                "-D",
                "-p",
                "udp",
                "--orig-dst",
                "203.0.113.10",
                "--orig-port-dst",
                "53",
                "--reply-src",
                "10.1.1.12",
                "--reply-port-src",
                "5353"
            ]
        );
        assert_eq!(
            conntrack_delete_args(&stale[1]),
            [
                "-D",
                "-p",
                "udp",
                "--orig-dst",
                "203.0.113.10",
                "--orig-port-dst",
                "54"
            ]
        );
        // TCP rules are haproxy's: no ruleset change, no flow to drop.
        let mut tcp = udp_rule("3", 80, &["10.1.1.10"]);
        tcp.protocol = services::model::LbProtocol::Tcp;
        let mut with_tcp = old.clone();
        with_tcp.lb_rules.insert("3".into(), tcp);
        assert!(!udp_lb_changed(&old, &with_tcp));
        assert!(stale_udp_flows(&with_tcp, &old).is_empty());
    }

    /// Networks implemented at the same time all create the VM data key
    /// at once: every creator ends up with the one key in the file.
    #[test]
    fn concurrent_first_key_creation_agrees_on_one_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let start = std::sync::Barrier::new(8);
            let keys: Vec<Result<[u8; 32], String>> = std::thread::scope(|s| {
                let workers: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            load_or_create_key(dir.path()).map_err(|e| e.to_string())
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            let on_disk = fs::read(dir.path().join(KEY_FILE)).unwrap();
            for k in keys {
                assert_eq!(k.as_ref().map(|k| k.to_vec()), Ok(on_disk.clone()));
            }
            let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
            assert_eq!(left.len(), 1, "temporary files left: {left:?}");
        }
    }

    #[test]
    fn strip_leases_removes_exactly_the_named_nics() {
        let text = "1700000000 02:00:00:00:00:33 10.1.1.12 vm3 *\n\
                    1700000000 02:00:00:00:00:01 10.1.1.10 vm1 *\n\
                    1700000000 02:00:00:00:00:02 10.1.1.120 vm9 *\n";
        let gone = vec![(
            "02:00:00:00:00:33".to_string(),
            "10.1.1.12".parse().unwrap(),
        )];
        let kept = strip_leases(text, &gone);
        assert!(!kept.contains("vm3"));
        assert!(kept.contains("10.1.1.10 vm1"));
        assert!(kept.contains("10.1.1.120 vm9"), "no prefix match");
    }

    #[test]
    fn removed_nics_lists_dropped_and_moved_nics() {
        let nic = |mac: &str, ip: &str| services::model::Nic {
            mac: mac.into(),
            ip: ip.parse().unwrap(),
            ip6: None,
            hostname: None,
            default_nic: true,
            nic_id: None,
            gateway: None,
        };
        let mut old = GuestServices::default();
        for n in [
            nic("aa", "10.0.0.1"),
            nic("bb", "10.0.0.2"),
            nic("cc", "10.0.0.3"),
        ] {
            old.nics.insert(n.mac.clone(), Arc::new(n));
        }
        let mut new = old.clone();
        new.nics.remove("aa");
        new.nics
            .insert("bb".into(), Arc::new(nic("bb", "10.0.0.9")));
        let gone = removed_nics(&old, &new);
        assert_eq!(
            gone,
            vec![
                ("aa".to_string(), "10.0.0.1".parse().unwrap()),
                ("bb".to_string(), "10.0.0.2".parse().unwrap())
            ]
        );
    }
}
