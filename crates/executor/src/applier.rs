//! Applier: installs a [`Plan`] on the host. Links and addresses are compared
//! with what exists and changed through one batched `ip -batch -` call for the
//! host side and one for the namespace; the ruleset is loaded in one
//! transaction through libnftables in process (module `libnft`), or else with
//! a single `nft -f -` whose process enters the namespace with `setns`.
//! Sysctls and gratuitous ARP are done from a short-lived thread that joined
//! the namespace (no process). Every argument is a validated, planner-made
//! value; no shell is ever involved.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use serde::Deserialize;

use super::planner::{Leg, LinkPlan, Plan};
use netbridge_protocol::validate::Ipv4Cidr;

/// Errors of the applier. Messages carry the failing tool's stderr.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{program} failed ({status}): {stderr}")]
    Tool {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("{0}")]
    Io(String),
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> ApplyError + '_ {
    move |e| ApplyError::Io(format!("{context}: {e}"))
}

/// Host-side settings of the applier.
#[derive(Debug, Clone)]
pub struct ApplierConfig {
    /// Where `ip netns` keeps its namespace files (`/run/netns`).
    pub netns_dir: PathBuf,
    pub ip_program: PathBuf,
    pub nft_program: PathBuf,
    /// Load rulesets in process through libnftables when it is available
    /// (no process spawn per command); otherwise `nft -f -`.
    pub use_libnftables: bool,
}

impl Default for ApplierConfig {
    fn default() -> Self {
        ApplierConfig {
            netns_dir: PathBuf::from("/run/netns"),
            ip_program: PathBuf::from("ip"),
            nft_program: PathBuf::from("nft"),
            use_libnftables: true,
        }
    }
}

const VLAN_UNKNOWN: u8 = 0;
const VLAN_YES: u8 = 1;
const VLAN_NO: u8 = 2;

/// Installs plans. One host-wide lock guards bridges and host-side veths.
pub struct Applier {
    config: ApplierConfig,
    host_lock: Mutex<()>,
    vlan_support: AtomicU8,
    /// libnftables contexts kept per namespace (see [`libnft`]).
    nft: libnft::Contexts,
}

#[derive(Debug, Deserialize)]
struct IpLink {
    ifname: String,
    /// A veth's peer when both ends are in the same namespace.
    #[serde(default)]
    link: Option<String>,
    #[serde(default)]
    master: Option<String>,
    #[serde(default)]
    link_type: Option<String>,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Debug, Deserialize)]
struct IpAddrInfo {
    family: String,
    local: String,
    prefixlen: u8,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IpRoute {
    dst: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    dev: Option<String>,
}

fn stderr_text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    // Tool errors for a 10,000-rule script can be long: keep the head.
    s.chars().take(2000).collect()
}

impl Applier {
    pub fn new(config: ApplierConfig) -> Applier {
        Applier {
            config,
            host_lock: Mutex::new(()),
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

    fn ip(&self, args: &[&str]) -> Result<Vec<u8>, ApplyError> {
        self.run(&self.config.ip_program, args, None, None)
    }

    fn ip_batch(&self, namespace: Option<&str>, lines: &[String]) -> Result<(), ApplyError> {
        if lines.is_empty() {
            return Ok(());
        }
        let script = lines.join("\n") + "\n";
        let args: Vec<&str> = match namespace {
            Some(ns) => vec!["-n", ns, "-batch", "-"],
            None => vec!["-batch", "-"],
        };
        log::debug!(
            "ip {}: {}",
            args.join(" "),
            script.trim_end().replace('\n', "; ")
        );
        self.run(
            &self.config.ip_program,
            &args,
            Some(script.as_bytes()),
            None,
        )
        .map(|_| ())
    }

    /// Deletes host ends whose peer is gone. When the peer's namespace was
    /// deleted (a reboot, `ip netns del`), the kernel tears the pair down
    /// asynchronously, so a link listed a moment ago may vanish under us:
    /// "not found" is fine, and the names must be free before re-creating them.
    fn remove_vanishing_host_links(&self, names: &[String]) -> Result<(), ApplyError> {
        if names.is_empty() {
            return Ok(());
        }
        for name in names {
            if let Err(e) = self.ip(&["link", "del", name]) {
                log::debug!("link del {name}: {e} (already being removed)");
            }
        }
        for _ in 0..100 {
            if !self.links(None)?.iter().any(|l| names.contains(&l.ifname)) {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(ApplyError::Io(format!(
            "links {} are still present after deletion",
            names.join(", ")
        )))
    }

    fn links(&self, namespace: Option<&str>) -> Result<Vec<IpLink>, ApplyError> {
        let out = match namespace {
            Some(ns) => self.ip(&["-n", ns, "-j", "addr", "show"])?,
            None => self.ip(&["-j", "link", "show"])?,
        };
        serde_json::from_slice(&out).map_err(|e| ApplyError::Io(format!("ip -j output: {e}")))
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
    /// appended rules are (see [`super::planner::delta`]); otherwise the
    /// complete ruleset replaces the table. Bridges the previous plan used
    /// and the new one does not are removed when empty.
    pub fn apply(&self, plan: &Plan, previous: Option<&Plan>) -> Result<(), ApplyError> {
        let ns = plan.links.namespace.as_str();
        let links_same =
            previous.is_some_and(|p| p.links == plan.links) && self.namespace_exists(ns);
        if !links_same {
            self.apply_links(&plan.links, previous.map(|p| &p.links))?;
        }
        if let (true, Some(prev)) = (links_same, previous) {
            if let Some(script) = super::planner::delta(&prev.ruleset, &plan.ruleset) {
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
        self.load_ruleset(ns, &plan.ruleset)
    }

    /// Brings links, addresses, routes and sysctls in line with `plan`.
    pub fn apply_links(
        &self,
        plan: &LinkPlan,
        previous: Option<&LinkPlan>,
    ) -> Result<(), ApplyError> {
        let ns = plan.namespace.as_str();
        {
            let _host = self.host_lock.lock().unwrap_or_else(|p| p.into_inner());
            if !self.namespace_exists(ns) {
                self.ip(&["netns", "add", ns])?;
            }
            let inner = self.links(Some(ns))?;
            let host = self.links(None)?;
            let host_names: BTreeMap<&str, &IpLink> =
                host.iter().map(|l| (l.ifname.as_str(), l)).collect();
            let inner_names: BTreeSet<&str> = inner.iter().map(|l| l.ifname.as_str()).collect();
            let mut batch = Vec::new();
            let mut stale_host_ends = Vec::new();
            let mut bridges_made = BTreeSet::new();
            for leg in &plan.legs {
                if !host_names.contains_key(leg.bridge.as_str())
                    && bridges_made.insert(leg.bridge.clone())
                {
                    batch.push(format!("link add name {} type bridge", leg.bridge));
                    batch.push(format!("link set {} up", leg.bridge));
                    if let Some(sub) = self.vlan_subinterface(leg, &host_names) {
                        batch.push(sub);
                    }
                }
                let host_end = host_names.get(leg.host_name.as_str());
                let recreate = host_end.is_none() || !inner_names.contains(leg.inner_name.as_str());
                if recreate {
                    if host_end.is_some() {
                        stale_host_ends.push(leg.host_name.clone());
                    }
                    if inner_names.contains(leg.inner_name.as_str()) {
                        // An orphaned inner end: removed through the namespace below.
                        self.ip_batch(Some(ns), &[format!("link del {}", leg.inner_name)])?;
                    }
                    batch.push(format!(
                        "link add {} type veth peer name {} netns {ns}",
                        leg.host_name, leg.inner_name
                    ));
                }
                // A re-created pair is a new link: it has no master yet.
                if recreate
                    || host_end.and_then(|l| l.master.as_deref()) != Some(leg.bridge.as_str())
                {
                    batch.push(format!("link set {} master {}", leg.host_name, leg.bridge));
                }
                batch.push(format!("link set {} up", leg.host_name));
            }
            self.remove_vanishing_host_links(&stale_host_ends)?;
            self.ip_batch(None, &batch)?;
        }

        // Before any address is added: without promote_secondaries, removing
        // the first address of a subnet (a released public IP, an old
        // source-NAT IP) removes every other address of that subnet.
        self.set_promote_secondaries(ns)?;

        // Inside the namespace: stale veths, addresses, default route.
        let inner = self.links(Some(ns))?;
        let wanted: BTreeMap<&str, &Leg> = plan
            .legs
            .iter()
            .map(|l| (l.inner_name.as_str(), l))
            .collect();
        // Order matters in one batch: drop the old default route first, then
        // addresses, then the new route, and stale legs last.
        let mut batch = vec!["link set lo up".to_string()];
        let mut stale = Vec::new();
        let mut announce = Vec::new();
        for link in &inner {
            if link.ifname == "lo" {
                continue;
            }
            let Some(leg) = wanted.get(link.ifname.as_str()) else {
                // Deleting one end of a veth pair deletes its peer: a
                // second `link del` would fail the whole batch.
                let peer_going = link
                    .link
                    .as_ref()
                    .is_some_and(|p| stale.contains(&format!("link del {p}")));
                if link.link_type.as_deref() == Some("ether") && !peer_going {
                    stale.push(format!("link del {}", link.ifname));
                }
                continue;
            };
            let have: BTreeSet<Ipv4Cidr> = link
                .addr_info
                .iter()
                .filter(|a| a.family == "inet" && a.scope.as_deref() != Some("host"))
                .filter_map(|a| {
                    a.local.parse().ok().map(|addr| Ipv4Cidr {
                        addr,
                        prefix: a.prefixlen,
                    })
                })
                .collect();
            for a in &leg.addrs {
                if !have.contains(a) {
                    batch.push(format!("addr add {a} dev {}", leg.inner_name));
                    announce.push((leg.inner_name.clone(), a.addr));
                }
            }
            for a in have.iter().filter(|a| !leg.addrs.contains(a)) {
                batch.push(format!("addr del {a} dev {}", link.ifname));
            }
            batch.push(format!("link set {} up", leg.inner_name));
        }
        let routes: Vec<IpRoute> =
            serde_json::from_slice(&self.ip(&["-n", ns, "-j", "-4", "route", "show", "default"])?)
                .map_err(|e| ApplyError::Io(format!("ip -j route output: {e}")))?;
        let current = routes.iter().find(|r| r.dst == "default");
        match (&plan.default_route, current) {
            (Some((gw, dev)), Some(r))
                if r.gateway.as_deref() == Some(gw.to_string().as_str())
                    && r.dev.as_deref() == Some(dev.as_str()) => {}
            (Some((gw, dev)), _) => {
                batch.push(format!("route replace default via {gw} dev {dev} onlink"))
            }
            (None, Some(_)) => batch.insert(0, "route del default".to_string()),
            (None, None) => {}
        }
        batch.extend(stale);
        self.ip_batch(Some(ns), &batch)?;

        self.set_forwarding(ns, plan.ipv4_forwarding)?;
        if !announce.is_empty() {
            let public: Vec<(String, Ipv4Addr)> = announce
                .into_iter()
                .filter(|a| plan.announce.contains(a))
                .collect();
            announce_in_background(self.netns_path(ns), ns.to_string(), public);
        }
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

    /// `<dev>.<vlan>` enslaved to the bridge when the kernel has 802.1Q and the
    /// device exists; detected once, the fallback (plain bridge) logged once.
    fn vlan_subinterface(&self, leg: &Leg, host: &BTreeMap<&str, &IpLink>) -> Option<String> {
        let vlan = leg.vlan.0?;
        if !host.contains_key(leg.device.as_str()) {
            return None;
        }
        let sub = format!("{}.{vlan}", leg.device);
        if sub.len() > super::planner::IFNAMSIZ_MAX || host.contains_key(sub.as_str()) {
            return host
                .contains_key(sub.as_str())
                .then(|| format!("link set {sub} master {} up", leg.bridge));
        }
        if self.vlan_support.load(Ordering::Relaxed) == VLAN_UNKNOWN {
            let probe = self.ip(&[
                "link",
                "add",
                "link",
                &leg.device,
                "name",
                &sub,
                "type",
                "vlan",
                "id",
                &vlan.to_string(),
            ]);
            match probe {
                Ok(_) => {
                    self.vlan_support.store(VLAN_YES, Ordering::Relaxed);
                    return Some(format!("link set {sub} master {} up", leg.bridge));
                }
                Err(e) => {
                    self.vlan_support.store(VLAN_NO, Ordering::Relaxed);
                    log::warn!("no 802.1Q VLAN support ({e}); guest and public bridges are plain bridges without VLAN sub-interfaces");
                    return None;
                }
            }
        }
        if self.vlan_support.load(Ordering::Relaxed) == VLAN_YES {
            // Two lines in one batch: create, then enslave.
            return Some(format!(
                "link add link {} name {sub} type vlan id {vlan}\nlink set {sub} master {} up",
                leg.device, leg.bridge
            ));
        }
        None
    }

    /// Removes the given bridges when nothing but their own VLAN
    /// sub-interface is attached to them.
    pub fn remove_unused_bridges(&self, bridges: &[String]) -> Result<(), ApplyError> {
        if bridges.is_empty() {
            return Ok(());
        }
        let _host = self.host_lock.lock().unwrap_or_else(|p| p.into_inner());
        let host = self.links(None)?;
        let mut batch = Vec::new();
        for br in bridges.iter().collect::<BTreeSet<_>>() {
            if br.is_empty() || !host.iter().any(|l| &l.ifname == br) {
                continue;
            }
            let members: Vec<&IpLink> = host
                .iter()
                .filter(|l| l.master.as_deref() == Some(br.as_str()))
                .collect();
            let only_vlan = members.iter().all(|m| {
                m.ifname.contains('.')
                    && m.link_type.as_deref() == Some("ether")
                    && members.len() == 1
            });
            if members.is_empty() || only_vlan {
                for m in &members {
                    batch.push(format!("link del {}", m.ifname));
                }
                batch.push(format!("link del {br}"));
            }
        }
        self.ip_batch(None, &batch)
    }

    /// Removes the namespace, the host ends of its veths and the bridges
    /// nothing else uses. Idempotent.
    pub fn teardown(&self, namespace: &str, legs: &[Leg]) -> Result<(), ApplyError> {
        {
            let _host = self.host_lock.lock().unwrap_or_else(|p| p.into_inner());
            // Host ends first: deleting a veth is synchronous, while the
            // kernel frees the links of a deleted namespace later.
            let host = self.links(None)?;
            let batch: Vec<String> = legs
                .iter()
                .filter(|l| host.iter().any(|h| h.ifname == l.host_name))
                .map(|l| format!("link del {}", l.host_name))
                .collect();
            self.ip_batch(None, &batch)?;
            // A kept nftables socket would keep the deleted namespace alive.
            self.nft.forget(namespace);
            if self.namespace_exists(namespace) {
                self.ip(&["netns", "del", namespace])?;
            }
        }
        let bridges: Vec<String> = legs.iter().map(|l| l.bridge.clone()).collect();
        self.remove_unused_bridges(&bridges)
    }

    /// Host ends of veths present on the host, by name.
    pub fn host_links(&self) -> Result<Vec<String>, ApplyError> {
        Ok(self.links(None)?.into_iter().map(|l| l.ifname).collect())
    }

    /// `net.ipv4.conf.{all,default}.promote_secondaries=1` in the namespace.
    fn set_promote_secondaries(&self, namespace: &str) -> Result<(), ApplyError> {
        in_netns(&self.netns_path(namespace), || {
            std::fs::write("/proc/sys/net/ipv4/conf/all/promote_secondaries", b"1\n")?;
            std::fs::write(
                "/proc/sys/net/ipv4/conf/default/promote_secondaries",
                b"1\n",
            )
        })?
        .map_err(io("promote_secondaries"))
    }

    /// Reads `net.ipv4.conf.all.promote_secondaries` inside the namespace.
    pub fn promote_secondaries(&self, namespace: &str) -> Result<bool, ApplyError> {
        let v = in_netns(&self.netns_path(namespace), || {
            std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/promote_secondaries")
        })?
        .map_err(io("promote_secondaries"))?;
        Ok(v.trim() == "1")
    }

    /// Writes `net.ipv4.ip_forward` of the namespace from a thread inside it.
    fn set_forwarding(&self, namespace: &str, on: bool) -> Result<(), ApplyError> {
        let value: &[u8] = if on { b"1\n" } else { b"0\n" };
        in_netns(&self.netns_path(namespace), || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", value)
        })?
        .map_err(io("ip_forward"))
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
/// closes it before the namespace is removed (an open socket would keep a
/// deleted namespace alive), and all close when the applier is dropped.
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
            if let (Some(ctx), Some(lib)) = (guard.0.remove(namespace), loaded()) {
                lib.free(ctx);
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
