//! Applier: installs a [`Plan`] on the host. Links, addresses and routes are
//! compared with what exists and changed through rtnetlink in process
//! (module `rtnl`: one socket in the host namespace, one opened inside the
//! router namespace), and the router namespace itself is made and removed
//! in process (module `netns`); the ruleset is loaded in one transaction
//! through libnftables in process (module `libnft`), or else with a single
//! `nft -f -` whose process enters the namespace with `setns`. Sysctls and
//! gratuitous ARP are done from a short-lived thread that joined the
//! namespace. No process is started for links, addresses or routes; every
//! value is a validated, planner-made one; no shell is ever involved.

mod netns;
mod rtnl;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::planner::{Leg, LinkPlan, Plan};
use rtnl::{Link, Rtnl};

/// Errors of the applier. Messages carry the failing tool's stderr or the
/// kernel's answer.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{program} failed ({status}): {stderr}")]
    Tool {
        program: String,
        status: String,
        stderr: String,
    },
    /// The kernel refused a link, address, route or namespace change; the
    /// operation is named like the `ip` command it stands for.
    #[error("{operation}: {source}")]
    Netlink {
        operation: String,
        #[source]
        source: std::io::Error,
    },
    /// Links are not managed by this applier (see
    /// [`ApplierConfig::manage_links`]).
    #[error("link, address and route changes are disabled in this applier")]
    LinksDisabled,
    #[error("{0}")]
    Io(String),
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> ApplyError + '_ {
    move |e| ApplyError::Io(format!("{context}: {e}"))
}

/// Names a failed kernel operation (built only when it failed).
fn nl<F: FnOnce() -> String>(operation: F) -> impl FnOnce(std::io::Error) -> ApplyError {
    move |source| ApplyError::Netlink {
        operation: operation(),
        source,
    }
}

/// Host-side settings of the applier.
#[derive(Debug, Clone)]
pub struct ApplierConfig {
    /// Where `ip netns` keeps its namespace files (`/run/netns`).
    pub netns_dir: PathBuf,
    /// Change links, addresses, routes and namespaces (through rtnetlink
    /// in process). `false` refuses every such change with
    /// [`ApplyError::LinksDisabled`]: for tests that must never touch the
    /// host.
    pub manage_links: bool,
    pub nft_program: PathBuf,
    /// Load rulesets in process through libnftables when it is available
    /// (no process spawn per command); otherwise `nft -f -`.
    pub use_libnftables: bool,
}

impl Default for ApplierConfig {
    fn default() -> Self {
        ApplierConfig {
            netns_dir: PathBuf::from("/run/netns"),
            manage_links: true,
            nft_program: PathBuf::from("nft"),
            use_libnftables: true,
        }
    }
}

const VLAN_UNKNOWN: u8 = 0;
const VLAN_YES: u8 = 1;
const VLAN_NO: u8 = 2;

/// The link group of the namespace ends of the legs. A router namespace
/// holds only its network's links, so the whole group can go in one kernel
/// batch at teardown (see [`Applier::teardown`]).
const LEG_GROUP: u32 = 0x6e62_6c67;

/// How long host veth ends of a vanished namespace may take to go (the
/// kernel removes them while it cleans the namespace up).
const VANISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs plans.
pub struct Applier {
    config: ApplierConfig,
    /// The host namespace's rtnetlink socket, opened on first use. Holding
    /// it is the host-wide lock that guards bridges and host veth ends.
    host: Mutex<Option<Rtnl>>,
    vlan_support: AtomicU8,
    /// libnftables contexts kept per namespace (see [`libnft`]).
    nft: libnft::Contexts,
}

fn stderr_text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    // Tool errors for a 10,000-rule script can be long: keep the head.
    s.chars().take(2000).collect()
}

/// The socket in `slot`, opened when there is none yet.
fn host_socket(slot: &mut Option<Rtnl>) -> Result<&mut Rtnl, ApplyError> {
    let socket = match slot.take() {
        Some(s) => s,
        None => Rtnl::open().map_err(nl(|| "open the host's rtnetlink socket".into()))?,
    };
    Ok(slot.insert(socket))
}

impl Applier {
    pub fn new(config: ApplierConfig) -> Applier {
        Applier {
            config,
            host: Mutex::new(None),
            vlan_support: AtomicU8::new(VLAN_UNKNOWN),
            nft: libnft::Contexts::default(),
        }
    }

    pub fn netns_path(&self, namespace: &str) -> PathBuf {
        self.config.netns_dir.join(namespace)
    }

    pub fn namespace_exists(&self, namespace: &str) -> bool {
        self.netns_path(namespace).exists()
    }

    /// Namespaces present on the host (names only).
    pub fn namespaces(&self) -> Vec<String> {
        std::fs::read_dir(&self.config.netns_dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The host-wide lock with the host's rtnetlink socket in it.
    fn lock_host(&self) -> Result<MutexGuard<'_, Option<Rtnl>>, ApplyError> {
        if !self.config.manage_links {
            return Err(ApplyError::LinksDisabled);
        }
        Ok(self.host.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Runs a tool (optionally inside a namespace, optionally fed `stdin`).
    fn run(
        &self,
        program: &Path,
        args: &[&str],
        stdin: Option<&[u8]>,
        netns: Option<&Path>,
    ) -> Result<Vec<u8>, ApplyError> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let ns_file = match netns {
            Some(p) => Some(File::open(p).map_err(io(&p.display().to_string()))?),
            None => None,
        };
        if let Some(f) = &ns_file {
            let fd = f.as_raw_fd();
            // SAFETY: between fork and exec only the async-signal-safe
            // setns(2) is called, on a descriptor opened before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let name = program.display().to_string();
        let mut child = cmd.spawn().map_err(io(&name))?;
        let mut write_error = None;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A tool that exits early closes the pipe: its stderr says why.
            write_error = pipe.write_all(data).err();
        }
        let out = child.wait_with_output().map_err(io(&name))?;
        if let (Some(e), true) = (write_error, out.status.success()) {
            return Err(io(&name)(e));
        }
        if !out.status.success() {
            return Err(ApplyError::Tool {
                program: format!("{name} {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: stderr_text(&out.stderr),
            });
        }
        Ok(out.stdout)
    }

    /// Deletes host ends whose peer is gone. When the peer's namespace was
    /// deleted (a reboot, `ip netns del`), the kernel tears the pair down
    /// asynchronously, so a link listed a moment ago may vanish under us:
    /// "not found" is fine, and the names must be free before re-creating them.
    fn remove_vanishing_host_links(
        &self,
        host: &mut Rtnl,
        links: &[Link],
    ) -> Result<(), ApplyError> {
        if links.is_empty() {
            return Ok(());
        }
        for link in links {
            if let Err(e) = host.del_link(link.index) {
                log::debug!("link del {}: {e} (already being removed)", link.name);
            }
        }
        let deadline = Instant::now() + VANISH_TIMEOUT;
        loop {
            let mut left = Vec::new();
            for link in links {
                let name = link.name.as_str();
                if host
                    .link(name)
                    .map_err(nl(|| format!("ip link show {name}")))?
                    .is_some()
                {
                    left.push(name);
                }
            }
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ApplyError::Io(format!(
                    "links {} are still present after deletion",
                    left.join(", ")
                )));
            }
            // The kernel's namespace clean-up removes them; the condition
            // is re-read, never assumed after a delay.
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Loads a complete ruleset in one transaction inside the namespace.
    pub fn load_ruleset(&self, namespace: &str, ruleset: &str) -> Result<(), ApplyError> {
        if self.config.use_libnftables {
            if let Some(lib) = libnft::get() {
                return lib.run(&self.nft, &self.netns_path(namespace), namespace, ruleset);
            }
        }
        self.run(
            &self.config.nft_program,
            &["-f", "-"],
            Some(ruleset.as_bytes()),
            Some(&self.netns_path(namespace)),
        )
        .map(|_| ())
    }

    /// The namespace's current `table inet nb` as nft prints it.
    pub fn list_ruleset(&self, namespace: &str) -> Result<String, ApplyError> {
        let out = self.run(
            &self.config.nft_program,
            &["list", "table", "inet", "nb"],
            None,
            Some(&self.netns_path(namespace)),
        )?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Installs `plan`. `previous` is the plan installed before, if known:
    /// when its links are the same and the namespace exists only the ruleset
    /// is loaded, and when the new ruleset only appends rules to it just the
    /// appended rules are (see [`super::nft::delta`]); otherwise the
    /// complete ruleset replaces the table. Bridges the previous plan used
    /// and the new one does not are removed when empty.
    pub fn apply(&self, plan: &Plan, previous: Option<&Plan>) -> Result<(), ApplyError> {
        let ns = plan.links.namespace.as_str();
        let links_same =
            previous.is_some_and(|p| p.links == plan.links) && self.namespace_exists(ns);
        if !links_same {
            let started = Instant::now();
            self.apply_links(&plan.links, previous.map(|p| &p.links))?;
            log::debug!("{ns}: links applied in {:?}", started.elapsed());
        }
        if let (true, Some(prev)) = (links_same, previous) {
            if let Some(script) = super::nft::delta(&prev.ruleset, &plan.ruleset) {
                if script.is_empty() {
                    return Ok(());
                }
                match self.load_ruleset(ns, &script) {
                    Ok(()) => return Ok(()),
                    // The table differs from what we installed (changed by
                    // hand?): the complete ruleset repairs it.
                    Err(e) => {
                        log::warn!("{ns}: incremental ruleset failed ({e}); replacing the table")
                    }
                }
            }
        }
        self.load_ruleset(ns, &plan.ruleset.render())
    }

    /// Brings links, addresses, routes and sysctls in line with `plan`.
    pub fn apply_links(
        &self,
        plan: &LinkPlan,
        previous: Option<&LinkPlan>,
    ) -> Result<(), ApplyError> {
        let ns = plan.namespace.as_str();
        let mut inner = {
            let mut guard = self.lock_host()?;
            let host = host_socket(&mut guard)?;
            if !self.namespace_exists(ns) {
                netns::create(&self.config.netns_dir, ns)
                    .map_err(nl(|| format!("ip netns add {ns}")))?;
            }
            let mut inner = self.enter(ns, plan.ipv4_forwarding)?;
            self.host_legs(host, &mut inner, plan)?;
            inner
        };
        let announce = self.inner_links(&mut inner, plan)?;
        let public: Vec<(String, Ipv4Addr)> = announce
            .into_iter()
            .filter(|a| plan.announce.contains(a))
            .collect();
        announce_in_background(self.netns_path(ns), ns.to_string(), public);
        if let Some(prev) = previous {
            let unused: Vec<String> = prev
                .legs
                .iter()
                .filter(|l| !plan.legs.iter().any(|n| n.bridge == l.bridge))
                .map(|l| l.bridge.clone())
                .collect();
            self.remove_unused_bridges(&unused)?;
        }
        Ok(())
    }

    /// Joins the namespace on a short-lived thread to set its sysctls and
    /// open its rtnetlink socket (which stays in the namespace).
    fn enter(&self, namespace: &str, forwarding: bool) -> Result<Rtnl, ApplyError> {
        in_netns(&self.netns_path(namespace), || {
            // Before any address is added: without promote_secondaries,
            // removing the first address of a subnet (a released public IP,
            // an old source-NAT IP) removes every other address of that
            // subnet.
            for file in [
                "/proc/sys/net/ipv4/conf/all/promote_secondaries",
                "/proc/sys/net/ipv4/conf/default/promote_secondaries",
            ] {
                std::fs::write(file, b"1\n").map_err(io("promote_secondaries"))?;
            }
            // Set before the links exist; the ruleset (forward policy drop)
            // is loaded after them in any case.
            let value: &[u8] = if forwarding { b"1\n" } else { b"0\n" };
            std::fs::write("/proc/sys/net/ipv4/ip_forward", value).map_err(io("ip_forward"))?;
            Rtnl::open().map_err(nl(|| format!("open the rtnetlink socket of {namespace}")))
        })?
    }

    /// Host side of the legs: bridges (created when missing), veth pairs
    /// (re-created when an end is missing), host ends enslaved and up.
    fn host_legs(
        &self,
        host: &mut Rtnl,
        inner: &mut Rtnl,
        plan: &LinkPlan,
    ) -> Result<(), ApplyError> {
        let ns = plan.namespace.as_str();
        let inner_links: BTreeMap<String, u32> = inner
            .links()
            .map_err(nl(|| format!("ip -n {ns} link show")))?
            .into_iter()
            .map(|l| (l.name, l.index))
            .collect();
        let mut bridges: BTreeMap<&str, u32> = BTreeMap::new();
        let mut stale_host_ends = Vec::new();
        let mut new_pairs = Vec::new();
        for leg in &plan.legs {
            let bridge = match bridges.get(leg.bridge.as_str()) {
                Some(index) => *index,
                None => {
                    let index = self.ensure_bridge(host, leg)?;
                    bridges.insert(&leg.bridge, index);
                    index
                }
            };
            let host_end = host
                .link(&leg.host_name)
                .map_err(nl(|| format!("ip link show {}", leg.host_name)))?;
            let inner_end = inner_links.get(&leg.inner_name);
            match (host_end, inner_end) {
                (Some(end), Some(_)) => {
                    let master = (end.master != Some(bridge)).then_some(bridge);
                    host.set_up(end.index, master).map_err(nl(|| {
                        format!("ip link set {} master {} up", leg.host_name, leg.bridge)
                    }))?;
                }
                (host_end, inner_end) => {
                    stale_host_ends.extend(host_end);
                    if let Some(index) = inner_end {
                        // An orphaned inner end.
                        inner
                            .del_link(*index)
                            .map_err(nl(|| format!("ip -n {ns} link del {}", leg.inner_name)))?;
                    }
                    new_pairs.push((leg, bridge));
                }
            }
        }
        self.remove_vanishing_host_links(host, &stale_host_ends)?;
        if new_pairs.is_empty() {
            return Ok(());
        }
        let path = self.netns_path(ns);
        let ns_file = File::open(&path).map_err(io(&path.display().to_string()))?;
        for (leg, bridge) in new_pairs {
            host.add_veth(
                &leg.host_name,
                &leg.inner_name,
                ns_file.as_raw_fd(),
                LEG_GROUP,
                bridge,
            )
            .map_err(nl(|| {
                format!(
                    "ip link add {} master {} type veth peer name {} netns {ns}",
                    leg.host_name, leg.bridge, leg.inner_name
                )
            }))?;
        }
        Ok(())
    }

    /// The bridge of `leg`, created (up, with its VLAN sub-interface where
    /// the kernel has 802.1Q) when missing. Returns its index.
    fn ensure_bridge(&self, host: &mut Rtnl, leg: &Leg) -> Result<u32, ApplyError> {
        let name = leg.bridge.as_str();
        let show = || format!("ip link show {name}");
        if let Some(bridge) = host.link(name).map_err(nl(show))? {
            return Ok(bridge.index);
        }
        host.add_bridge(name)
            .map_err(nl(|| format!("ip link add name {name} type bridge")))?;
        let index = host
            .link(name)
            .map_err(nl(show))?
            .ok_or_else(|| ApplyError::Io(format!("bridge {name} vanished after its creation")))?
            .index;
        self.vlan_subinterface(host, leg, index)?;
        Ok(index)
    }

    /// Inside the namespace: loopback up, addresses, default route, stale
    /// legs removed. Returns the addresses added (to announce).
    fn inner_links(
        &self,
        inner: &mut Rtnl,
        plan: &LinkPlan,
    ) -> Result<Vec<(String, Ipv4Addr)>, ApplyError> {
        let ns = plan.namespace.as_str();
        let links = inner
            .links()
            .map_err(nl(|| format!("ip -n {ns} link show")))?;
        let addresses = inner
            .ipv4_addresses()
            .map_err(nl(|| format!("ip -n {ns} -4 addr show")))?;
        let route = inner
            .default_route()
            .map_err(nl(|| format!("ip -n {ns} -4 route show default")))?;
        let index_of: BTreeMap<&str, u32> =
            links.iter().map(|l| (l.name.as_str(), l.index)).collect();
        let wanted: BTreeMap<&str, &Leg> = plan
            .legs
            .iter()
            .map(|l| (l.inner_name.as_str(), l))
            .collect();
        // Order matters: the old default route goes first, then addresses,
        // then the new route, and stale legs last.
        if let (None, Some(_)) = (&plan.default_route, &route) {
            inner
                .del_default_route()
                .map_err(nl(|| format!("ip -n {ns} route del default")))?;
        }
        if let Some(&lo) = index_of.get("lo") {
            inner
                .set_up(lo, None)
                .map_err(nl(|| format!("ip -n {ns} link set lo up")))?;
        }
        let mut stale = Vec::new();
        let mut announce = Vec::new();
        for link in &links {
            if link.name == "lo" {
                continue;
            }
            let Some(leg) = wanted.get(link.name.as_str()) else {
                if link.ether {
                    stale.push(link);
                }
                continue;
            };
            let dev = link.name.as_str();
            let have: BTreeSet<_> = addresses
                .iter()
                .filter(|a| a.index == link.index && !a.host_scope)
                .map(|a| a.cidr)
                .collect();
            for a in &leg.addrs {
                if !have.contains(a) {
                    inner
                        .add_address(link.index, a)
                        .map_err(nl(|| format!("ip -n {ns} addr add {a} dev {dev}")))?;
                    announce.push((leg.inner_name.clone(), a.addr));
                }
            }
            for a in have.iter().filter(|a| !leg.addrs.contains(a)) {
                inner
                    .del_address(link.index, a)
                    .map_err(nl(|| format!("ip -n {ns} addr del {a} dev {dev}")))?;
            }
            inner
                .set_up(link.index, None)
                .map_err(nl(|| format!("ip -n {ns} link set {dev} up")))?;
        }
        if let Some((gateway, dev)) = &plan.default_route {
            let oif = index_of.get(dev.as_str()).copied();
            let current = route
                .as_ref()
                .is_some_and(|r| r.gateway == Some(*gateway) && oif.is_some() && r.oif == oif);
            if !current {
                let op =
                    || format!("ip -n {ns} route replace default via {gateway} dev {dev} onlink");
                let oif = oif.ok_or_else(|| ApplyError::Netlink {
                    operation: op(),
                    source: std::io::Error::from_raw_os_error(libc::ENODEV),
                })?;
                inner.replace_default_route(*gateway, oif).map_err(nl(op))?;
            }
        }
        for link in stale {
            // Both ends of a stale veth pair may be in here: deleting the
            // first took its peer with it.
            match inner.del_link(link.index) {
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                other => other.map_err(nl(|| format!("ip -n {ns} link del {}", link.name)))?,
            }
        }
        Ok(announce)
    }

    /// `<dev>.<vlan>` enslaved to the new bridge when the kernel has 802.1Q
    /// and the device exists; detected once, the fallback (plain bridge)
    /// logged once.
    fn vlan_subinterface(&self, host: &mut Rtnl, leg: &Leg, bridge: u32) -> Result<(), ApplyError> {
        let Some(vlan) = leg.vlan.0 else {
            return Ok(());
        };
        let device = leg.device.as_str();
        let Some(parent) = host
            .link(device)
            .map_err(nl(|| format!("ip link show {device}")))?
        else {
            return Ok(());
        };
        let sub = format!("{device}.{vlan}");
        let enslave = || format!("ip link set {sub} master {} up", leg.bridge);
        if let Some(existing) = host
            .link(&sub)
            .map_err(nl(|| format!("ip link show {sub}")))?
        {
            return host
                .set_up(existing.index, Some(bridge))
                .map_err(nl(enslave));
        }
        if sub.len() > super::planner::IFNAMSIZ_MAX {
            return Ok(());
        }
        let add = || {
            format!(
                "ip link add link {device} name {sub} master {} type vlan id {vlan}",
                leg.bridge
            )
        };
        match self.vlan_support.load(Ordering::Relaxed) {
            VLAN_UNKNOWN => match host.add_vlan(&sub, parent.index, vlan, bridge) {
                Ok(()) => self.vlan_support.store(VLAN_YES, Ordering::Relaxed),
                Err(e) => {
                    self.vlan_support.store(VLAN_NO, Ordering::Relaxed);
                    log::warn!("no 802.1Q VLAN support ({}: {e}); guest and public bridges are plain bridges without VLAN sub-interfaces", add());
                }
            },
            VLAN_YES => host
                .add_vlan(&sub, parent.index, vlan, bridge)
                .map_err(nl(add))?,
            _ => {}
        }
        Ok(())
    }

    /// Removes the given bridges when nothing but their own VLAN
    /// sub-interface is attached to them.
    pub fn remove_unused_bridges(&self, bridges: &[String]) -> Result<(), ApplyError> {
        if bridges.is_empty() {
            return Ok(());
        }
        let mut guard = self.lock_host()?;
        let host = host_socket(&mut guard)?;
        for br in bridges.iter().collect::<BTreeSet<_>>() {
            if br.is_empty() {
                continue;
            }
            let Some(bridge) = host.link(br).map_err(nl(|| format!("ip link show {br}")))? else {
                continue;
            };
            let members = host
                .links_of(bridge.index)
                .map_err(nl(|| format!("ip link show master {br}")))?;
            let only_vlan = matches!(members.as_slice(), [m] if m.name.contains('.') && m.ether);
            if members.is_empty() || only_vlan {
                for m in &members {
                    host.del_link(m.index)
                        .map_err(nl(|| format!("ip link del {}", m.name)))?;
                }
                host.del_link(bridge.index)
                    .map_err(nl(|| format!("ip link del {br}")))?;
            }
        }
        Ok(())
    }

    /// Removes the namespace, the host ends of its veths and the bridges
    /// nothing else uses. Idempotent.
    pub fn teardown(&self, namespace: &str, legs: &[Leg]) -> Result<(), ApplyError> {
        let started = Instant::now();
        {
            let mut guard = self.lock_host()?;
            let host = host_socket(&mut guard)?;
            // The veths first, while the namespace is there: deleting them
            // is synchronous, while the kernel frees the links of a
            // deleted namespace later. Deleted as one group from inside,
            // they cost one set of kernel RCU waits instead of one per leg.
            if self.namespace_exists(namespace) {
                if let Err(e) = self.remove_legs_inside(namespace, legs) {
                    log::warn!("{namespace}: removing its veths from inside failed ({e}); removing their host ends one by one");
                }
            }
            // Host ends whose peer was not in the namespace (deleted by hand).
            for leg in legs {
                let name = leg.host_name.as_str();
                let Some(end) = host
                    .link(name)
                    .map_err(nl(|| format!("ip link show {name}")))?
                else {
                    continue;
                };
                match host.del_link(end.index) {
                    Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                    other => other.map_err(nl(|| format!("ip link del {name}")))?,
                }
            }
            // A kept nftables socket would keep the deleted namespace alive.
            self.nft.forget(namespace);
            if self.namespace_exists(namespace) {
                netns::remove(&self.config.netns_dir, namespace)
                    .map_err(nl(|| format!("ip netns del {namespace}")))?;
            }
        }
        let links_gone = started.elapsed();
        let bridges: Vec<String> = legs.iter().map(|l| l.bridge.clone()).collect();
        self.remove_unused_bridges(&bridges)?;
        log::debug!(
            "{namespace}: veths and namespace removed in {links_gone:?}, bridges checked in {:?}",
            started.elapsed() - links_gone
        );
        Ok(())
    }

    /// Deletes the legs' veths from inside the namespace in one batch:
    /// their namespace ends (and links made by this applier, which carry
    /// [`LEG_GROUP`]) join the group, then the group goes, and with each
    /// namespace end its host end.
    fn remove_legs_inside(&self, namespace: &str, legs: &[Leg]) -> Result<(), ApplyError> {
        let mut inner = in_netns(&self.netns_path(namespace), || {
            Rtnl::open().map_err(nl(|| format!("open the rtnetlink socket of {namespace}")))
        })??;
        let links = inner
            .links()
            .map_err(nl(|| format!("ip -n {namespace} link show")))?;
        for link in &links {
            let leg = legs.iter().any(|l| l.inner_name == link.name);
            if leg && link.group != LEG_GROUP {
                inner.set_group(link.index, LEG_GROUP).map_err(nl(|| {
                    format!("ip -n {namespace} link set {} group {LEG_GROUP}", link.name)
                }))?;
            }
        }
        inner.del_group(LEG_GROUP).map_err(nl(|| {
            format!("ip -n {namespace} link del group {LEG_GROUP}")
        }))
    }

    /// Names of the links present on the host.
    pub fn host_links(&self) -> Result<Vec<String>, ApplyError> {
        let mut guard = self.lock_host()?;
        let host = host_socket(&mut guard)?;
        Ok(host
            .links()
            .map_err(nl(|| "ip link show".into()))?
            .into_iter()
            .map(|l| l.name)
            .collect())
    }

    /// Reads `net.ipv4.conf.all.promote_secondaries` inside the namespace.
    pub fn promote_secondaries(&self, namespace: &str) -> Result<bool, ApplyError> {
        let v = in_netns(&self.netns_path(namespace), || {
            std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/promote_secondaries")
        })?
        .map_err(io("promote_secondaries"))?;
        Ok(v.trim() == "1")
    }

    /// Reads `net.ipv4.ip_forward` inside the namespace.
    pub fn forwarding(&self, namespace: &str) -> Result<bool, ApplyError> {
        let v = in_netns(&self.netns_path(namespace), || {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        })?
        .map_err(io("ip_forward"))?;
        Ok(v.trim() == "1")
    }
}

/// Runs `f` on a fresh thread that joined the network namespace at `path`;
/// the thread ends with `f`, so the namespace never leaks to other work.
pub fn in_netns<R: Send>(path: &Path, f: impl FnOnce() -> R + Send) -> Result<R, ApplyError> {
    let file = File::open(path).map_err(io(&path.display().to_string()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscall on an open descriptor; affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(ApplyError::Io(format!(
                    "setns {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                )));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| ApplyError::Io("namespace thread panicked".into()))?
    })
}

/// Sends gratuitous ARP for new addresses a few times from a detached
/// thread: a freshly created veth may drop the first frames until the
/// kernel's link watcher activates its queue, and the command need not wait.
fn announce_in_background(path: PathBuf, ns: String, addrs: Vec<(String, Ipv4Addr)>) {
    if addrs.is_empty() {
        return;
    }
    std::thread::spawn(move || {
        for delay_ms in [0u64, 100, 400, 1000] {
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            let sent = in_netns(&path, || {
                for (dev, ip) in &addrs {
                    if let Err(e) = send_gratuitous_arp(dev, *ip) {
                        log::debug!("{ns}: gratuitous ARP for {ip} on {dev}: {e}");
                    }
                }
            });
            if sent.is_err() {
                // The namespace is gone (torn down meanwhile).
                return;
            }
        }
    });
}

/// Broadcasts an ARP request for `ip` from `ip` on `dev` (gratuitous ARP) so
/// the upstream router and bridges learn the new address at once. Must run
/// inside the namespace that owns `dev`.
pub fn send_gratuitous_arp(dev: &str, ip: Ipv4Addr) -> std::io::Result<()> {
    let cname = std::ffi::CString::new(dev).map_err(|_| std::io::Error::other("bad name"))?;
    // SAFETY: FFI calls with valid, owned buffers; the socket is closed below.
    unsafe {
        let index = libc::if_nametoindex(cname.as_ptr());
        if index == 0 {
            return Err(std::io::Error::last_os_error());
        }
        let proto = (libc::ETH_P_ARP as u16).to_be();
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(cname.as_bytes()) {
            *d = *s as libc::c_char;
        }
        let result = (|| {
            if libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut ifr) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut mac = [0u8; 6];
            for (d, s) in mac.iter_mut().zip(ifr.ifr_ifru.ifru_hwaddr.sa_data.iter()) {
                *d = *s as u8;
            }
            let mut frame = Vec::with_capacity(42);
            frame.extend_from_slice(&[0xff; 6]);
            frame.extend_from_slice(&mac);
            frame.extend_from_slice(&[0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
            frame.extend_from_slice(&mac);
            frame.extend_from_slice(&ip.octets());
            frame.extend_from_slice(&[0; 6]);
            frame.extend_from_slice(&ip.octets());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = proto;
            addr.sll_ifindex = index as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            let n = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })();
        libc::close(fd);
        result
    }
}

/// In-process nftables through `libnftables.so.1` (loaded once with
/// `dlopen`): the same `nft -f` script and transaction, without a process
/// spawn per command. A context is created on a thread that joined the
/// namespace, so its netlink socket belongs to that namespace.
///
/// Contexts are kept, one per namespace, for the few most recently changed
/// namespaces: closing an nftables netlink socket makes the kernel flush
/// its pending transaction clean-up (an RCU grace period, ~10 ms here)
/// whenever a recent transaction deleted anything, and every full ruleset
/// replace does. Kept open, that clean-up runs in the background instead,
/// and an evicted context is closed on a background thread. A context
/// is bound to the namespace's identity (the nsfs inode), so a namespace
/// deleted and re-created by hand gets a fresh one; [`Contexts::forget`]
/// closes it (on a background thread) when the namespace is removed (an
/// open socket keeps a deleted namespace alive), and all close when the
/// applier is dropped.
mod libnft {
    use std::collections::HashMap;
    use std::ffi::{c_char, c_int, c_void, CStr, CString};
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::sync::{Mutex, OnceLock};

    use super::{in_netns, ApplyError};

    type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
    type CtxFree = unsafe extern "C" fn(*mut c_void);
    type RunBuf = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
    type Buffer = unsafe extern "C" fn(*mut c_void) -> c_int;
    type GetBuf = unsafe extern "C" fn(*mut c_void) -> *const c_char;

    /// A context kept for one namespace, identified by (device, inode) of
    /// its nsfs file.
    struct Ctx {
        id: (u64, u64),
        ptr: *mut c_void,
        /// Use counter value of the last command (least recently used
        /// goes first).
        used: u64,
    }

    /// Contexts kept at most. Each holds ~1.2 MB of heap (libnftables'
    /// cache), so they go to the namespaces most recently changed; the
    /// executor's RSS goal (≤ 40 MB with 100 networks) allows a few.
    const KEPT: usize = 8;

    // SAFETY: the context is only used while holding `Contexts`'s lock, so
    // never from two threads at once; libnftables contexts are not tied to
    // the thread that created them.
    unsafe impl Send for Ctx {}

    /// The contexts an applier keeps, by namespace name, and a use counter.
    #[derive(Default)]
    pub struct Contexts(Mutex<(HashMap<String, Ctx>, u64)>);

    impl Drop for Contexts {
        fn drop(&mut self) {
            let (map, _) = self.0.get_mut().unwrap_or_else(|p| p.into_inner());
            if let Some(lib) = loaded() {
                for (_, ctx) in map.drain() {
                    lib.free(ctx);
                }
            }
        }
    }

    impl Contexts {
        /// Closes the context kept for `namespace`, if any.
        pub fn forget(&self, namespace: &str) {
            let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(ctx) = guard.0.remove(namespace) {
                // Closing waits for the kernel's clean-up of the last
                // transaction: not in the command's time. The namespace
                // lives on until then.
                std::thread::spawn(move || {
                    if let Some(lib) = loaded() {
                        lib.free(ctx);
                    }
                });
            }
        }
    }

    pub struct Lib {
        ctx_new: CtxNew,
        ctx_free: CtxFree,
        run_buf: RunBuf,
        buffer_output: Buffer,
        buffer_error: Buffer,
        get_output: GetBuf,
        get_error: GetBuf,
        /// libnftables keeps some process-wide state: one call at a time.
        lock: Mutex<()>,
    }

    static LIB: OnceLock<Option<Lib>> = OnceLock::new();

    pub fn get() -> Option<&'static Lib> {
        LIB.get_or_init(|| {
            let lib = load();
            match &lib {
                Some(_) => log::info!("nftables: using libnftables in process"),
                None => log::info!("nftables: libnftables not found, using `nft -f -`"),
            }
            lib
        })
        .as_ref()
    }

    /// The already loaded library, without loading it.
    pub fn loaded() -> Option<&'static Lib> {
        LIB.get().and_then(Option::as_ref)
    }

    fn load() -> Option<Lib> {
        // SAFETY: dlopen/dlsym with NUL-terminated names; the handle is kept
        // for the life of the process, and each symbol is cast to the C
        // signature documented in libnftables(3).
        unsafe {
            let handle = libc::dlopen(
                c"libnftables.so.1".as_ptr(),
                libc::RTLD_NOW | libc::RTLD_LOCAL,
            );
            if handle.is_null() {
                return None;
            }
            let sym = |name: &CStr| {
                let p = libc::dlsym(handle, name.as_ptr());
                (!p.is_null()).then_some(p)
            };
            Some(Lib {
                ctx_new: std::mem::transmute::<*mut c_void, CtxNew>(sym(c"nft_ctx_new")?),
                ctx_free: std::mem::transmute::<*mut c_void, CtxFree>(sym(c"nft_ctx_free")?),
                run_buf: std::mem::transmute::<*mut c_void, RunBuf>(sym(
                    c"nft_run_cmd_from_buffer",
                )?),
                buffer_output: std::mem::transmute::<*mut c_void, Buffer>(sym(
                    c"nft_ctx_buffer_output",
                )?),
                buffer_error: std::mem::transmute::<*mut c_void, Buffer>(sym(
                    c"nft_ctx_buffer_error",
                )?),
                get_output: std::mem::transmute::<*mut c_void, GetBuf>(sym(
                    c"nft_ctx_get_output_buffer",
                )?),
                get_error: std::mem::transmute::<*mut c_void, GetBuf>(sym(
                    c"nft_ctx_get_error_buffer",
                )?),
                lock: Mutex::new(()),
            })
        }
    }

    impl Lib {
        fn free(&self, ctx: Ctx) {
            let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            // SAFETY: a context we created and no longer hold anywhere.
            unsafe { (self.ctx_free)(ctx.ptr) };
        }

        pub fn run(
            &self,
            contexts: &Contexts,
            netns: &Path,
            namespace: &str,
            script: &str,
        ) -> Result<(), ApplyError> {
            let script = CString::new(script)
                .map_err(|_| ApplyError::Io("ruleset contains a NUL byte".into()))?;
            let meta = std::fs::metadata(netns)
                .map_err(|e| ApplyError::Io(format!("{}: {e}", netns.display())))?;
            let id = (meta.dev(), meta.ino());
            in_netns(netns, || {
                let mut guard = contexts.0.lock().unwrap_or_else(|p| p.into_inner());
                guard.1 += 1;
                let used = guard.1;
                let contexts = &mut guard.0;
                if contexts.get(namespace).is_some_and(|c| c.id != id) {
                    // The namespace was re-created: the old socket is in the
                    // old one.
                    if let Some(old) = contexts.remove(namespace) {
                        self.free(old);
                    }
                }
                let serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
                let ptr = match contexts.get_mut(namespace) {
                    Some(c) => {
                        c.used = used;
                        c.ptr
                    }
                    None => {
                        // SAFETY: plain constructor; the buffers are owned by
                        // the context.
                        let ptr = unsafe { (self.ctx_new)(0) };
                        if ptr.is_null() {
                            return Err(ApplyError::Io("nft_ctx_new failed".into()));
                        }
                        // SAFETY: a valid, fresh context.
                        unsafe {
                            (self.buffer_output)(ptr);
                            (self.buffer_error)(ptr);
                        }
                        contexts.insert(namespace.to_string(), Ctx { id, ptr, used });
                        ptr
                    }
                };
                // SAFETY: a live context used under the lock; the returned
                // buffers are read before the next call on it, and reading
                // them rewinds them for the next command.
                let (rc, text) = unsafe {
                    let rc = (self.run_buf)(ptr, script.as_ptr());
                    let _ = (self.get_output)(ptr);
                    let err = (self.get_error)(ptr);
                    let text = if err.is_null() {
                        String::new()
                    } else {
                        CStr::from_ptr(err).to_string_lossy().into_owned()
                    };
                    (rc, text)
                };
                if rc != 0 {
                    // Start the next command from a clean context.
                    drop(serial);
                    if let Some(old) = contexts.remove(namespace) {
                        self.free(old);
                    }
                    return Err(ApplyError::Tool {
                        program: "libnftables".into(),
                        status: format!("rc {rc}"),
                        stderr: super::stderr_text(text.as_bytes()),
                    });
                }
                drop(serial);
                if contexts.len() > KEPT {
                    let oldest = contexts
                        .iter()
                        .min_by_key(|(_, c)| c.used)
                        .map(|(name, _)| name.clone());
                    if let Some(old) = oldest.and_then(|name| contexts.remove(&name)) {
                        // Closing may wait for the kernel's clean-up: not
                        // in this command's time.
                        std::thread::spawn(move || {
                            if let Some(lib) = loaded() {
                                lib.free(old);
                                // SAFETY: no preconditions; returns freed
                                // heap pages (the context's cache) to the
                                // system.
                                unsafe { libc::malloc_trim(0) };
                            }
                        });
                    }
                }
                Ok(())
            })?
        }
    }
}
