//! Shared smoke-test harness: namespaces, bridges and veths with Drop guards,
//! the testbed topology of `docs/testbed.md`, executor processes, a signing HTTP(S)
//! client and small packet probes. Everything runs inside namespaces created
//! here; nothing touches the root namespace's links or addresses.
//!
//! Typical use (see `smoke/executor_security.rs` for working examples, e.g.
//! `http_api_end_to_end_source_nat_port_forward_and_destroy`):
//! ```ignore
//! use netbridge_testbed::*;
//! #[test]
//! fn source_nat() {
//!     if skip_unless_root("source_nat") { return; }
//!     let mut tb = Testbed::new("nbx", TopologyOptions::default().vm("vm1", "10.1.1.10/24", Some("10.1.1.1")));
//!     let vm1 = tb.vm("vm1").path();
//!     let up = tb.upstream.path();
//!     let host = tb.host(0);
//!     host.start_executor().unwrap();                 // TLS, pinned, signed
//!     let details = json!({"host": "h1", "namespace": "cs-net-42"});
//!     let payload = merged(network_payload(42, 100, "10.1.1.1", "10.1.1.0/24"), json!({"extension_ip": "10.1.1.1"}));
//!     let r = host.client().command("implement-network", &envelope(host, details, payload));
//!     assert_eq!(r.status, 200, "{}", r.body);
//!     let _srv = tcp_server(&up, "198.51.100.1:7000".parse().unwrap(), "up");
//!     let seen = tcp_probe(&vm1, "198.51.100.1:7000".parse().unwrap()).unwrap();
//!     assert_eq!(peer_of(&seen), "203.0.113.10");
//! }
//! ```
//!
//! Pieces:
//! - Topology: upstream ns (`203.0.113.1/24` gateway and `198.51.100.1/24`
//!   server on `up0`) on the public bridge `breth1-200` of host 1; host
//!   namespaces with guest bridge `breth1-100`, device `eth1`; VM namespaces
//!   with `eth0` on the guest bridge (static address or DHCP-only, MAC
//!   `02:00:00:00:<host>:<n>`). Several hosts share both segments.
//! - `Host`: `start_executor`, `kill9`, `restart` (router namespaces survive),
//!   `reboot` (they vanish; state dir stays), `stop` (SIGTERM), `rotate_key`,
//!   `client()`, `exec(argv)` (host netns + executor mount ns, so
//!   `ip netns exec cs-net-42 nft list ruleset` works), `namespaces()`,
//!   `router_ns("cs-net-42")` (a path usable by every probe), `log()`.
//!   Each host's executor runs in the host netns and a held private mount
//!   namespace (`--mount-ns`), or `--private-mounts` via
//!   `host.options.private_mounts`; `host.options.tls = false` for
//!   `--insecure-http`.
//! - `Client`: `command`, `get`, `networks`, `send(RawRequest)` for
//!   tampering, `with_key`, `with_pin`.
//! - Probes (all bounded): `tcp_probe`, `udp_probe`, `http_get`,
//!   `http_request`, `ping`, `dig`, `dhcp_discover`; servers that report
//!   the peer (`tcp_server`, `udp_server`, `http_server`, answers
//!   `"<name> <peer-ip>"`, see `peer_of`); `NsProcess` for a program in a
//!   namespace; `run_in`/`in_netns` for anything else; `eventually` for
//!   bounded waits.
//!
//! Create the `Testbed` in the test's own thread: helper processes die with
//! the thread that started them (PR_SET_PDEATHSIG), so nothing outlives a
//! crashed run.

pub mod mariadb;
pub mod registry_fill;
pub mod stand_in;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// The upstream ("internet") server address.
pub const UPSTREAM_ADDR: &str = "198.51.100.1";
/// Gateway of the public segment (held by the upstream namespace).
pub const PUBLIC_GATEWAY: &str = "203.0.113.1";
/// Public segment prefix length.
pub const PUBLIC_PREFIX_LEN: u8 = 24;
/// Public CIDR as sent in `public_cidr`-style fields.
pub const PUBLIC_CIDR: &str = "203.0.113.0/24";
/// Executor port inside each host namespace.
pub const EXECUTOR_PORT: u16 = 8443;
/// Shared HMAC key written to each host's key file.
pub const DEFAULT_KEY: &str = "smoke-test-shared-key-0123456789abcdef";
/// Upper bound of any single external command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of a probe's connect/read.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// basics

/// Prints a skip line and returns true when not root.
pub fn skip_unless_root(test: &str) -> bool {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP {test}: needs root (network namespaces)");
        return true;
    }
    false
}

/// Environment variable that marks the re-executed child of [`isolate`].
pub const ISOLATED_CHILD_ENV: &str = "NB_SMOKE_ISOLATED_CHILD";

/// Runs test `name` of this binary again inside `unshare --mount --net`
/// with a private tmpfs on `/run/netns`, so that network namespace plays a
/// KVM host and everything the test makes vanishes with it, also on failure.
/// True in the parent (after the child passed, or when not root: the test is
/// skipped); false in the child, which then runs the test body.
pub fn isolate(name: &str) -> bool {
    if std::env::var_os(ISOLATED_CHILD_ENV).is_some() {
        // Private mount namespace (unshare --propagation private): this tmpfs
        // hides the machine's named namespaces from the test only.
        std::fs::create_dir_all("/run/netns").expect("create /run/netns");
        // SAFETY: mount(2) with static, valid arguments.
        let rc = unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/run/netns".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "tmpfs on /run/netns");
        return false;
    }
    if skip_unless_root(name) {
        return true;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let status = Command::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "--"])
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ISOLATED_CHILD_ENV, "1")
        .status()
        .expect("run unshare");
    assert!(status.success(), "{name} failed in its private namespace");
    true
}

/// A per-run unique prefix: `base` (≤ 4 chars) plus 4 hex characters.
/// Interface names built as `<prefix><suffix ≤ 7>` fit in 15 characters.
pub fn unique_prefix(base: &str) -> String {
    assert!(
        base.len() <= 4 && base.bytes().all(|b| b.is_ascii_lowercase()),
        "prefix base must be ≤ 4 lower-case letters"
    );
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mix =
        (std::process::id().wrapping_mul(2654435761) ^ nanos ^ n.wrapping_mul(40503)) & 0xffff;
    format!("{base}{mix:04x}")
}

/// Runs a program (argument vector, no shell) with a time limit; Ok(stdout)
/// on exit 0, Err with the command line and stderr otherwise.
pub fn run(argv: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    output_ok(argv, run_command(cmd, COMMAND_TIMEOUT))
}

fn output_ok(argv: &[&str], out: Result<Output, String>) -> Result<String, String> {
    let out = out.map_err(|e| format!("{}: {e}", argv.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} failed ({}): {}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// Spawns `cmd`, waits at most `timeout`, kills it (by PID) when late.
pub fn run_command(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let deadline = Instant::now() + timeout;
    // Drain pipes in threads so a chatty program cannot block on a full pipe.
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = so.as_mut() {
            let _ = s.read_to_end(&mut b);
        }
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = se.as_mut() {
            let _ = s.read_to_end(&mut b);
        }
        b
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {timeout:?}"));
            }
            Err(e) => return Err(format!("wait: {e}")),
        }
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Path of a named namespace in the test's (root) mount namespace.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/netns/{name}"))
}

fn setns_fd(fd: RawFd, nstype: libc::c_int) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid descriptor.
    if unsafe { libc::setns(fd, nstype) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has entered the network namespace at
/// `ns` (a `/run/netns/…` path or `/proc/PID/ns/net`); sockets opened by `f`
/// belong to that namespace.
pub fn in_netns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let file = File::open(ns).map_err(|e| format!("{}: {e}", ns.display()))?;
    let handle = std::thread::spawn(move || -> Result<T, String> {
        setns_fd(file.as_raw_fd(), libc::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
        drop(file);
        Ok(f())
    });
    handle
        .join()
        .map_err(|_| "namespace thread panicked".to_string())?
}

/// Runs a program with its network namespace (and optionally mount
/// namespace) switched before exec; no `ip netns exec`, no shell.
pub fn run_in(
    ns: &Path,
    mnt: Option<&Path>,
    argv: &[&str],
    timeout: Duration,
) -> Result<String, String> {
    let net = File::open(ns).map_err(|e| format!("{}: {e}", ns.display()))?;
    let mnt = match mnt {
        Some(p) => Some(File::open(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let net_fd = net.as_raw_fd();
    let mnt_fd = mnt.as_ref().map(|f| f.as_raw_fd());
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = mnt_fd {
                setns_fd(fd, libc::CLONE_NEWNS)?;
            }
            setns_fd(net_fd, libc::CLONE_NEWNET)
        });
    }
    let out = run_command(cmd, timeout);
    drop(net);
    drop(mnt);
    output_ok(argv, out)
}

/// `run_in` for a namespace of the root mount namespace.
pub fn run_in_ns(ns: &Path, argv: &[&str]) -> Result<String, String> {
    run_in(ns, None, argv, COMMAND_TIMEOUT)
}

/// Polls `f` until it returns Some, at most `timeout` (bounded loop).
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// guards

/// A network namespace in the root mount namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns, String> {
        run(&["ip", "netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// `ip -n <ns> <args…>`
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        run(&argv)
    }

    /// Runs a program inside this namespace.
    pub fn exec(&self, argv: &[&str]) -> Result<String, String> {
        run_in_ns(&self.path(), argv)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Links inside go with the namespace.
        if let Err(e) = run(&["ip", "netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Creates a veth pair with each end directly in its namespace (no link
/// ever appears in the root namespace) and sets both up.
pub fn veth(ns_a: &str, name_a: &str, ns_b: &str, name_b: &str) -> Result<(), String> {
    run(&[
        "ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns",
        ns_b,
    ])?;
    run(&["ip", "-n", ns_a, "link", "set", name_a, "up"])?;
    run(&["ip", "-n", ns_b, "link", "set", name_b, "up"])?;
    Ok(())
}

/// Creates a bridge inside a namespace (if missing) and sets it up.
pub fn bridge(ns: &str, name: &str) -> Result<(), String> {
    if run(&["ip", "-n", ns, "link", "show", name]).is_err() {
        run(&["ip", "-n", ns, "link", "add", name, "type", "bridge"])?;
    }
    run(&["ip", "-n", ns, "link", "set", name, "up"])?;
    Ok(())
}

/// Enslaves a link to a bridge in the same namespace.
pub fn attach(ns: &str, link: &str, bridge: &str) -> Result<(), String> {
    run(&["ip", "-n", ns, "link", "set", link, "master", bridge])?;
    run(&["ip", "-n", ns, "link", "set", link, "up"])?;
    Ok(())
}

/// Inode of a namespace file (`/proc/PID/ns/mnt` …).
fn ns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// SIGKILLs every process (other than us) living in the mount namespace with
/// this inode: the executor and whatever it started (dnsmasq, haproxy, …).
/// Exact by namespace identity, never by name pattern.
fn kill_mount_ns_members(inode: u64) {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        if ns_inode(&PathBuf::from(format!("/proc/{pid}/ns/mnt"))) == Some(inode) {
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Sets PR_SET_PDEATHSIG so a helper dies with the thread that started it.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A process holding a private mount namespace with its own empty
/// `/run/netns`: the "host" filesystem view of one emulated KVM host. The
/// executor joins it (`--mount-ns`), so router namespaces survive executor
/// restarts; killing the holder and everything in it is a host reboot.
pub struct MountHolder {
    child: Child,
    inode: u64,
    /// Keeps the namespace (and so its inode number) alive until the sweep
    /// in `drop` is done, so the sweep can never hit a recycled inode.
    _pin: std::fs::File,
}

impl MountHolder {
    pub fn start() -> Result<MountHolder, String> {
        std::fs::create_dir_all("/run/netns").map_err(|e| e.to_string())?;
        let root = c"/";
        let none = c"none";
        let run_netns = c"/run/netns";
        let tmpfs = c"tmpfs";
        let opts = c"mode=0755";
        // With the executor's privileges: a process may only join the
        // namespaces of one whose capabilities are a subset of its own.
        let mut cmd = Command::new("setpriv");
        cmd.args(unit_privileges(&[])?)
            .args(["--", "sleep", "86400"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        // SAFETY: only syscalls between fork and exec; the C strings live in
        // the parent's memory image, copied by fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::mount(
                    none.as_ptr(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::mount(
                    tmpfs.as_ptr(),
                    run_netns.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    opts.as_ptr().cast(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("mount holder: {e}"))?;
        let path = PathBuf::from(format!("/proc/{}/ns/mnt", child.id()));
        let pin = std::fs::File::open(&path).map_err(|e| format!("mount holder: {e}"))?;
        let inode = ns_inode(&path).ok_or("mount holder vanished")?;
        Ok(MountHolder {
            child,
            inode,
            _pin: pin,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/proc/PID/ns/mnt`, for `--mount-ns` and `setns`.
    pub fn ns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/mnt", self.child.id()))
    }

    /// A path as seen inside the held mount namespace.
    pub fn inside(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{}", self.child.id(), path))
    }
}

impl Drop for MountHolder {
    fn drop(&mut self) {
        kill_mount_ns_members(self.inode);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// topology

/// One VM: a namespace with `eth0` on the guest bridge.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    /// `10.1.1.10/24`
    pub addr: String,
    /// default route
    pub gateway: Option<String>,
    /// index of the host whose guest bridge it is plugged into
    pub host: usize,
    /// MAC of `eth0`; default `02:00:00:00:<host>:<index+1>` (what a
    /// `prepare-nic`/`add-dhcp-entry` payload sends as `mac`).
    pub mac: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TopologyOptions {
    /// Number of emulated KVM hosts (guest and public segments span them all).
    pub hosts: usize,
    /// Guest bridge name in each host namespace (`br<guest-dev>-<vlan>`).
    pub guest_bridge: String,
    /// Public bridge name in each host namespace (`br<public-dev>-<vlan>`).
    pub public_bridge: String,
    /// Devices created in each host namespace (veth pairs, peer stays there),
    /// so that `guest.network.device`/`public.network.device` exist.
    pub host_devices: Vec<String>,
    pub vms: Vec<VmSpec>,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        TopologyOptions {
            hosts: 1,
            guest_bridge: "breth1-100".to_string(),
            public_bridge: "breth1-200".to_string(),
            host_devices: vec!["eth1".to_string()],
            vms: Vec::new(),
        }
    }
}

impl TopologyOptions {
    /// Adds a VM on host 0.
    pub fn vm(mut self, name: &str, addr: &str, gateway: Option<&str>) -> Self {
        self.vms.push(VmSpec {
            name: name.to_string(),
            addr: addr.to_string(),
            gateway: gateway.map(str::to_string),
            host: 0,
            mac: None,
        });
        self
    }

    /// Adds a VM on host 0 without a static address (for DHCP tests).
    pub fn vm_dhcp(mut self, name: &str, mac: &str) -> Self {
        self.vms.push(VmSpec {
            name: name.to_string(),
            addr: String::new(),
            gateway: None,
            host: 0,
            mac: Some(mac.to_string()),
        });
        self
    }

    /// Adds a VM on host `host` (0-based).
    pub fn vm_on(mut self, host: usize, name: &str, addr: &str, gateway: Option<&str>) -> Self {
        self.vms.push(VmSpec {
            name: name.to_string(),
            addr: addr.to_string(),
            gateway: gateway.map(str::to_string),
            host,
            mac: None,
        });
        self
    }

    pub fn hosts(mut self, n: usize) -> Self {
        self.hosts = n;
        self
    }
}

pub struct Vm {
    pub spec: VmSpec,
    pub ns: Netns,
}

impl Vm {
    pub fn path(&self) -> PathBuf {
        self.ns.path()
    }

    /// The VM's address without prefix.
    pub fn ip(&self) -> &str {
        self.spec.addr.split('/').next().unwrap_or("")
    }

    /// MAC of `eth0` (`aa:bb:…`).
    pub fn mac(&self) -> &str {
        self.spec.mac.as_deref().unwrap_or("")
    }

    /// Sends a DHCPDISCOVER from `eth0` and returns the offer.
    pub fn dhcp_discover(&self) -> Result<DhcpOffer, ProbeError> {
        dhcp_discover(&self.path(), "eth0", self.mac())
    }
}

/// Options of an executor process.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    pub tls: bool,
    pub guest_device: String,
    pub public_device: String,
    pub log_level: String,
    /// Listen address (default 0.0.0.0:8443 with TLS, 127.0.0.1:8443 without).
    pub listen: Option<String>,
    /// Use `--private-mounts` (a fresh mount namespace per executor start,
    /// so router namespaces die with the process) instead of joining the
    /// host's held mount namespace (`--mount-ns`, the default).
    pub private_mounts: bool,
    /// Extra flags appended verbatim.
    pub extra_args: Vec<String>,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        ExecutorOptions {
            tls: true,
            guest_device: "eth1".to_string(),
            public_device: "eth1".to_string(),
            log_level: "debug".to_string(),
            listen: None,
            private_mounts: false,
            extra_args: Vec::new(),
        }
    }
}

/// Certificate files of a host.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// hex SHA-256 of the DER leaf, as printed by `gen-cert`
    pub fingerprint: String,
}

/// One emulated KVM host: a network namespace, a held mount namespace, a
/// state directory, key and certificate, and the executor process.
pub struct Host {
    /// `h1`, `h2`, … (also the executor's `--host-name`)
    pub name: String,
    // Field order is drop order: executor first, then the mount namespace,
    // then the network namespace.
    child: Option<Child>,
    holder: Option<MountHolder>,
    pub netns: Netns,
    pub dir: tempfile::TempDir,
    pub key_file: PathBuf,
    pub key: Vec<u8>,
    pub tls: Option<TlsFiles>,
    pub options: ExecutorOptions,
    log_path: PathBuf,
    starts: u32,
}

impl Host {
    fn new(name: &str, netns: Netns) -> Result<Host, String> {
        let dir = tempfile::Builder::new()
            .prefix("nb-smoke-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let key_file = dir.path().join("executor.hmac");
        write_secret(&key_file, DEFAULT_KEY.as_bytes())?;
        let log_path = dir.path().join("executor.log");
        Ok(Host {
            name: name.to_string(),
            child: None,
            holder: Some(MountHolder::start()?),
            netns,
            dir,
            key_file,
            key: DEFAULT_KEY.as_bytes().to_vec(),
            tls: None,
            options: ExecutorOptions::default(),
            log_path,
            starts: 0,
        })
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn ns_path(&self) -> PathBuf {
        self.netns.path()
    }

    fn holder(&self) -> &MountHolder {
        // Only None transiently inside reboot().
        self.holder
            .as_ref()
            .unwrap_or_else(|| panic!("host {} has no mount namespace", self.name))
    }

    /// PID of a process whose mount namespace is the executor's.
    fn mount_pid(&self) -> u32 {
        match (self.options.private_mounts, self.executor_pid()) {
            (true, Some(pid)) => pid,
            _ => self.holder().pid(),
        }
    }

    /// A path as the executor sees it (its mount namespace).
    pub fn inside(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.mount_pid()))
    }

    /// The executor's mount namespace (`/proc/PID/ns/mnt`).
    pub fn mount_ns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/mnt", self.mount_pid()))
    }

    /// Path of a namespace the executor created (`cs-net-42`), usable with
    /// `in_netns`, probes and `run_in`.
    pub fn router_ns(&self, name: &str) -> PathBuf {
        self.inside(&format!("/run/netns/{name}"))
    }

    /// Names in this host's private `/run/netns`.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.inside("/run/netns"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Runs a program as the executor sees the host: its network namespace
    /// and its mount namespace (so `ip netns exec cs-net-42 nft list ruleset`
    /// works).
    pub fn exec(&self, argv: &[&str]) -> Result<String, String> {
        run_in(
            &self.ns_path(),
            Some(&self.mount_ns()),
            argv,
            COMMAND_TIMEOUT,
        )
    }

    /// Generates cert.pem/key.pem with the executor's own `gen-cert`.
    pub fn ensure_tls(&mut self) -> Result<TlsFiles, String> {
        if let Some(t) = &self.tls {
            return Ok(t.clone());
        }
        let out_dir = self.dir.path().join("tls");
        let out_dir_s = out_dir.display().to_string();
        let stdout = run(&[
            executor_bin(),
            "gen-cert",
            "--out-dir",
            &out_dir_s,
            "--name",
            &self.name,
            "--san",
            "127.0.0.1",
        ])?;
        let tls = TlsFiles {
            cert: out_dir.join("cert.pem"),
            key: out_dir.join("key.pem"),
            fingerprint: stdout.trim().to_string(),
        };
        self.tls = Some(tls.clone());
        Ok(tls)
    }

    fn args(&mut self) -> Result<Vec<String>, String> {
        let o = self.options.clone();
        let mut args = vec!["--netns".to_string(), self.netns.name.clone()];
        if o.private_mounts {
            args.push("--private-mounts".to_string());
        } else {
            args.extend([
                "--mount-ns".to_string(),
                self.holder().ns_path().display().to_string(),
            ]);
        }
        args.extend([
            "--state-dir".to_string(),
            self.state_dir().display().to_string(),
            "--key-file".to_string(),
            self.key_file.display().to_string(),
            "--host-name".to_string(),
            self.name.clone(),
            "--guest-device".to_string(),
            o.guest_device.clone(),
            "--public-device".to_string(),
            o.public_device.clone(),
            "--log-level".to_string(),
            o.log_level.clone(),
            "--listen".to_string(),
        ]);
        if o.tls {
            let tls = self.ensure_tls()?;
            args.push(
                o.listen
                    .clone()
                    .unwrap_or_else(|| format!("0.0.0.0:{EXECUTOR_PORT}")),
            );
            args.extend([
                "--tls-cert".to_string(),
                tls.cert.display().to_string(),
                "--tls-key".to_string(),
                tls.key.display().to_string(),
            ]);
        } else {
            args.push(
                o.listen
                    .clone()
                    .unwrap_or_else(|| format!("127.0.0.1:{EXECUTOR_PORT}")),
            );
            args.push("--insecure-http".to_string());
        }
        args.extend(o.extra_args.iter().cloned());
        Ok(args)
    }

    /// Starts the executor and waits (bounded) until `/v1/health` answers.
    pub fn start_executor(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Err(format!("executor of {} already running", self.name));
        }
        let args = self.args()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        self.starts += 1;
        // Under the privileges the packaged unit grants (capability bounding
        // set, no new privileges): every smoke test proves they suffice.
        // CAP_SYS_CHROOT only for the test flag --mount-ns: joining the
        // emulated host's mount namespace needs it; the service never does.
        let mut cmd = Command::new("setpriv");
        cmd.args(unit_privileges(&["sys_chroot"])?)
            .arg("--")
            .arg(executor_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| format!("spawn executor: {e}"))?;
        self.child = Some(child);
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "executor of {} exited ({status}) during start:\n{}",
                        self.name,
                        self.log()
                    ));
                }
            }
            if let Ok(r) = client.get("/v1/health") {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "executor of {} not healthy within 60 s:\n{}",
                    self.name,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// PID of the running executor.
    pub fn executor_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` the executor (by PID); its router namespaces stay.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (bounded); returns the exit status if it stopped.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain syscall on our own child's PID.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` and start again.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill9();
        self.start_executor()
    }

    /// Emulates a host reboot: the executor, everything it started and every
    /// namespace it created disappear; the state directory stays. The
    /// executor is started again.
    pub fn reboot(&mut self) -> Result<(), String> {
        self.power_off()?;
        self.start_executor()
    }

    /// The first half of [`Host::reboot`]: the executor, everything it
    /// started and every namespace it created disappear (the kernel tears
    /// the namespaces down in the background); nothing is started again.
    pub fn power_off(&mut self) -> Result<(), String> {
        self.kill9();
        drop(self.holder.take());
        self.holder = Some(MountHolder::start()?);
        Ok(())
    }

    /// Replaces the key file atomically (rename), as an operator rotating
    /// the key would; the running executor must pick it up.
    pub fn rotate_key(&mut self, key: &[u8]) -> Result<(), String> {
        let tmp = self.dir.path().join("executor.hmac.new");
        write_secret(&tmp, key)?;
        std::fs::rename(&tmp, &self.key_file).map_err(|e| e.to_string())?;
        self.key = key.to_vec();
        Ok(())
    }

    /// A signing client for this host's executor (current key, pinned
    /// fingerprint when TLS).
    pub fn client(&self) -> Client {
        Client {
            ns: self.ns_path(),
            addr: SocketAddr::from(([127, 0, 0, 1], EXECUTOR_PORT)),
            key: self.key.clone(),
            pin: if self.options.tls {
                self.tls.as_ref().map(|t| t.fingerprint.clone())
            } else {
                None
            },
        }
    }

    /// The executor's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- executor log of {} (last lines) ---", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        // With --private-mounts, what the executor started lives in the
        // executor's own mount namespace: stop those processes too.
        // The open namespace file pins the namespace, so its inode cannot be
        // reused by an unrelated process (e.g. `ip -n`, which unshares a
        // mount namespace) between the kill of the executor and the sweep.
        let own = if self.options.private_mounts {
            self.executor_pid()
                .and_then(|pid| std::fs::File::open(format!("/proc/{pid}/ns/mnt")).ok())
        } else {
            None
        };
        self.kill9();
        if let Some(ns) = &own {
            if let Ok(meta) = ns.metadata() {
                use std::os::unix::fs::MetadataExt;
                kill_mount_ns_members(meta.ino());
            }
        }
        drop(own);
        drop(self.holder.take());
    }
}

/// Open descriptors of process `pid`: all of them, and those below 1024
/// (the ones `select(2)` can watch).
pub fn descriptor_counts(pid: u32) -> (usize, usize) {
    let numbers: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let low = numbers.iter().filter(|n| **n < 1024).count();
    (numbers.len(), low)
}

/// Resident set size of process `pid` in KiB (`VmRSS` of its status), 0
/// when it cannot be read.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A binary of the workspace (`netbridge`, `netbridge-executor`,
/// `netbridge-entrypoint`): `NETBRIDGE_BIN_DIR/<name>` when set, else the one
/// Cargo built beside this test, example or bench (`target/<profile>/`).
/// Cargo only exposes a package's own binaries to its tests, and these live
/// in other crates of the workspace, so `make` builds them first.
pub fn workspace_bin(name: &str) -> PathBuf {
    let path = match std::env::var_os("NETBRIDGE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join(name)))
            .unwrap_or_else(|| PathBuf::from(name)),
    };
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// `setpriv` arguments giving a process what `netbridge-executor.service`
/// gives the daemon: its `CapabilityBoundingSet=` (plus `extra` capabilities)
/// and `NoNewPrivileges=`.
pub fn unit_privileges(extra: &[&str]) -> Result<Vec<String>, String> {
    const UNIT: &str = include_str!("../packaging/netbridge-executor.service");
    let caps = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .ok_or("the unit has no CapabilityBoundingSet=")?;
    let mut bounding = String::from("-all");
    for cap in caps.split_whitespace() {
        let name = cap
            .strip_prefix("CAP_")
            .ok_or_else(|| format!("unexpected capability '{cap}' in the unit"))?;
        bounding.push_str(",+");
        bounding.push_str(&name.to_ascii_lowercase());
    }
    for cap in extra {
        bounding.push_str(",+");
        bounding.push_str(cap);
    }
    let mut args = vec!["--bounding-set".to_string(), bounding];
    if UNIT.lines().any(|l| l.trim() == "NoNewPrivileges=true") {
        args.insert(0, "--no-new-privs".to_string());
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("setpriv").is_file()))
        .unwrap_or(false);
    if !found {
        return Err(
            "the smoke tests run the executor under setpriv (util-linux), which is missing".into(),
        );
    }
    Ok(args)
}

fn executor_bin() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| workspace_bin("netbridge-executor").display().to_string())
}

/// Writes a file with mode 0600 from the start.
pub fn write_secret(path: &Path, data: &[u8]) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| e.to_string())?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    f.write_all(data).map_err(|e| e.to_string())
}

/// The whole topology of docs/testbed.md.
///
/// ```text
///  [upstream] up0: 203.0.113.1/24, 198.51.100.1/24
///       │ veth  <p>u<i> ── public bridge (breth1-200) in host i
///  [host i] executor, guest bridge (breth1-100), device eth1 (veth eth1/<p>e)
///       │ veth  <p>v<j> ── eth0 in [vm j] (static address, default route)
///  hosts are chained: <p>g<i> / <p>q<i> link guest and public bridges of
///  host i-1 and host i.
/// ```
pub struct Testbed {
    pub prefix: String,
    // Drop order: hosts (executors) first.
    pub hosts: Vec<Host>,
    pub vms: Vec<Vm>,
    pub upstream: Netns,
    pub options: TopologyOptions,
}

impl Testbed {
    /// Builds the topology; panics with the failing command (cleaning up
    /// whatever was already created).
    pub fn new(base_prefix: &str, options: TopologyOptions) -> Testbed {
        match Testbed::try_new(base_prefix, options) {
            Ok(tb) => tb,
            Err(e) => panic!("testbed setup failed: {e}"),
        }
    }

    pub fn try_new(base_prefix: &str, options: TopologyOptions) -> Result<Testbed, String> {
        let p = unique_prefix(base_prefix);
        let upstream = Netns::create(&format!("{p}-up"))?;
        upstream.ip(&["link", "set", "lo", "up"])?;
        let mut hosts = Vec::new();
        for i in 1..=options.hosts.max(1) {
            let ns = Netns::create(&format!("{p}-h{i}"))?;
            let host = Host::new(&format!("h{i}"), ns)?;
            let hn = host.netns.name.clone();
            // Forwarding stays off in the host namespace; routers enable it
            // in their own namespaces.
            bridge(&hn, &options.guest_bridge)?;
            bridge(&hn, &options.public_bridge)?;
            for (d, dev) in options.host_devices.iter().enumerate() {
                veth(&hn, dev, &hn, &format!("{p}e{d}"))?;
            }
            if i == 1 {
                veth(&upstream.name, "up0", &hn, &format!("{p}u{i}"))?;
                attach(&hn, &format!("{p}u{i}"), &options.public_bridge)?;
                upstream.ip(&[
                    "addr",
                    "add",
                    &format!("{PUBLIC_GATEWAY}/{PUBLIC_PREFIX_LEN}"),
                    "dev",
                    "up0",
                ])?;
                upstream.ip(&["addr", "add", &format!("{UPSTREAM_ADDR}/24"), "dev", "up0"])?;
            } else {
                let prev: &Host = &hosts[hosts.len() - 1];
                let pn = prev.netns.name.clone();
                veth(&pn, &format!("{p}g{i}"), &hn, &format!("{p}g{i}"))?;
                attach(&pn, &format!("{p}g{i}"), &options.guest_bridge)?;
                attach(&hn, &format!("{p}g{i}"), &options.guest_bridge)?;
                veth(&pn, &format!("{p}q{i}"), &hn, &format!("{p}q{i}"))?;
                attach(&pn, &format!("{p}q{i}"), &options.public_bridge)?;
                attach(&hn, &format!("{p}q{i}"), &options.public_bridge)?;
            }
            hosts.push(host);
        }
        let mut vms = Vec::new();
        for (j, spec) in options.vms.iter().enumerate() {
            let ns = Netns::create(&format!("{p}-{}", spec.name))?;
            let host = hosts
                .get(spec.host)
                .ok_or_else(|| format!("vm {} on missing host {}", spec.name, spec.host))?;
            let hn = host.netns.name.clone();
            let hside = format!("{p}v{j}");
            veth(&hn, &hside, &ns.name, "eth0")?;
            let mut spec = spec.clone();
            let mac = spec
                .mac
                .clone()
                .unwrap_or_else(|| format!("02:00:00:00:{:02x}:{:02x}", spec.host, j + 1));
            ns.ip(&["link", "set", "eth0", "address", &mac])?;
            spec.mac = Some(mac);
            attach(&hn, &hside, &options.guest_bridge)?;
            if !spec.addr.is_empty() {
                ns.ip(&["addr", "add", &spec.addr, "dev", "eth0"])?;
            }
            if let Some(gw) = &spec.gateway {
                ns.ip(&["route", "add", "default", "via", gw])?;
            }
            vms.push(Vm { spec, ns });
        }
        Ok(Testbed {
            prefix: p,
            hosts,
            vms,
            upstream,
            options,
        })
    }

    pub fn vm(&self, name: &str) -> &Vm {
        self.vms
            .iter()
            .find(|v| v.spec.name == name)
            .unwrap_or_else(|| panic!("no vm {name}"))
    }

    pub fn host(&mut self, i: usize) -> &mut Host {
        &mut self.hosts[i]
    }
}

// ---------------------------------------------------------------------------
// envelopes

/// The registration details a bridge would send for this testbed.
pub fn physical_details(host: &Host) -> Value {
    json!({
        "hosts": host.name,
        "executor.port": EXECUTOR_PORT.to_string(),
        "executor.key": String::from_utf8_lossy(&host.key),
        "guest.network.device": host.options.guest_device,
        "public.network.device": host.options.public_device,
        "physicalnetworkname": "smoke-phys",
    })
}

/// An envelope exactly as CloudStack writes it.
pub fn envelope(host: &Host, network_details: Value, payload: Value) -> Value {
    json!({
        "physical-network-extension-details": physical_details(host),
        "network-extension-details": network_details,
        "payload": payload,
    })
}

/// Network fields shared by most commands (`network_id`, `vlan`, `cidr`, …).
pub fn network_payload(network_id: u32, vlan: u32, gateway: &str, cidr: &str) -> Value {
    json!({
        "network_id": network_id.to_string(),
        "vlan": format!("vlan://{vlan}"),
        "zone_id": "1",
        "guest_type": "isolated",
        "network_state": "implementing",
        "gateway": gateway,
        "cidr": cidr,
    })
}

/// Merges the fields of `extra` into the object `base`.
pub fn merged(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
    base
}

// ---------------------------------------------------------------------------
// signing HTTP(S) client

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// `message` of a JSON answer.
    pub fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// A request with explicit headers (for signature tampering tests).
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Current unix time in seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The three signature headers for a request.
pub fn signature_headers(
    key: &[u8],
    method: &str,
    path: &str,
    timestamp: u64,
    body: &[u8],
) -> Vec<(String, String)> {
    let s = netbridge_protocol::signing::sign(key, method, path, timestamp, body);
    headers_of(&s)
}

pub fn headers_of(s: &netbridge_protocol::signing::Signature) -> Vec<(String, String)> {
    use netbridge_protocol::signing::{HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP};
    vec![
        (HEADER_TIMESTAMP.to_string(), s.timestamp.to_string()),
        (HEADER_NONCE.to_string(), s.nonce.clone()),
        (HEADER_SIGNATURE.to_string(), s.signature.clone()),
    ]
}

/// A blocking client that reaches an executor inside a namespace: each
/// request runs on a thread that entered the namespace first.
#[derive(Debug, Clone)]
pub struct Client {
    pub ns: PathBuf,
    pub addr: SocketAddr,
    pub key: Vec<u8>,
    /// Pinned SHA-256 fingerprint (hex, colons allowed); None = plain HTTP.
    pub pin: Option<String>,
}

impl Client {
    /// Signed request with the current time and a fresh nonce.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<Response, String> {
        let headers = signature_headers(&self.key, method, path, now_secs(), body);
        self.send(RawRequest {
            method: method.to_string(),
            path: path.to_string(),
            headers,
            body: body.to_vec(),
        })
    }

    pub fn get(&self, path: &str) -> Result<Response, String> {
        self.request("GET", path, b"")
    }

    /// `POST /v1/commands/<command>` with a JSON envelope; panics on a
    /// transport failure (the executor must answer).
    pub fn command(&self, command: &str, envelope: &Value) -> Response {
        let body = serde_json::to_vec(envelope).unwrap_or_default();
        self.command_raw(command, &body)
            .unwrap_or_else(|e| panic!("{command}: {e}"))
    }

    pub fn command_raw(&self, command: &str, body: &[u8]) -> Result<Response, String> {
        self.request("POST", &format!("/v1/commands/{command}"), body)
    }

    /// `GET /v1/networks` parsed.
    pub fn networks(&self) -> Value {
        self.get("/v1/networks")
            .map(|r| r.json())
            .unwrap_or(Value::Null)
    }

    /// Sends a request exactly as given.
    pub fn send(&self, req: RawRequest) -> Result<Response, String> {
        let addr = self.addr;
        let pin = self.pin.clone();
        in_netns(&self.ns, move || http_exchange(addr, pin.as_deref(), &req))?
    }

    pub fn with_key(&self, key: &[u8]) -> Client {
        Client {
            key: key.to_vec(),
            ..self.clone()
        }
    }

    pub fn with_pin(&self, pin: Option<&str>) -> Client {
        Client {
            pin: pin.map(str::to_string),
            ..self.clone()
        }
    }
}

/// Bodies above this size are sent with `Expect: 100-continue`, so that an
/// early refusal (413) is read before the body is pushed into a closed socket.
const EXPECT_CONTINUE_ABOVE: usize = 64 * 1024;

fn encode_head(req: &RawRequest, host: &str) -> Vec<u8> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        req.method,
        req.path,
        req.body.len()
    );
    if !req.body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if req.body.len() > EXPECT_CONTINUE_ABOVE {
        head.push_str("Expect: 100-continue\r\n");
    }
    for (k, v) in &req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Writes the request and reads the whole answer, honouring 100-continue.
fn exchange<S: Read + Write>(
    stream: &mut S,
    req: &RawRequest,
    host: &str,
) -> Result<Vec<u8>, String> {
    let head = encode_head(req, host);
    if req.body.len() <= EXPECT_CONTINUE_ABOVE {
        let mut all = head;
        all.extend_from_slice(&req.body);
        stream.write_all(&all).map_err(|e| format!("write: {e}"))?;
        stream.flush().map_err(|e| format!("write: {e}"))?;
        return read_all(stream);
    }
    stream.write_all(&head).map_err(|e| format!("write: {e}"))?;
    stream.flush().map_err(|e| format!("write: {e}"))?;
    // Read the first response head: 100 Continue, or the final answer.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) => return Err("connection closed before an answer".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if !buf.starts_with(b"HTTP/1.1 100") {
        buf.extend(read_all(stream).unwrap_or_default());
        return Ok(buf);
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
    let rest = buf.split_off(end);
    stream
        .write_all(&req.body)
        .map_err(|e| format!("write body: {e}"))?;
    stream.flush().map_err(|e| format!("write body: {e}"))?;
    let mut out = rest;
    out.extend(read_all(stream)?);
    Ok(out)
}

fn read_all(stream: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(buf),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A peer closing without TLS close_notify after a full answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {
                return Ok(buf)
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response ({} bytes)", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let proto = parts.next().unwrap_or_default();
    if !proto.starts_with("HTTP/1.") {
        return Err(format!(
            "not an HTTP response: {}",
            status_line.chars().take(40).collect::<String>()
        ));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body)?;
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// One request over a fresh connection (in the caller's namespace).
pub fn http_exchange(
    addr: SocketAddr,
    pin: Option<&str>,
    req: &RawRequest,
) -> Result<Response, String> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let host = addr.to_string();
    let raw = match pin {
        None => exchange(&mut tcp, req, &host)?,
        Some(fp) => {
            let config = pinned_client_config(fp);
            let name =
                rustls::pki_types::ServerName::try_from("executor").map_err(|e| e.to_string())?;
            let conn = rustls::ClientConnection::new(Arc::new(config), name)
                .map_err(|e| format!("tls: {e}"))?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            exchange(&mut tls, req, &host)?
        }
    };
    parse_response(&raw)
}

/// Accepts exactly the certificate with this SHA-256 fingerprint; no CA, no
/// name check: the same trust model as the bridge's `executor.fingerprint`.
#[derive(Debug)]
struct PinnedCert {
    fingerprint: Vec<u8>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::Digest;
        let got = sha2::Sha256::digest(end_entity.as_ref());
        if got.as_slice() == self.fingerprint.as_slice() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "certificate fingerprint mismatch".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub fn pinned_client_config(fingerprint: &str) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let clean: String = fingerprint.chars().filter(|c| *c != ':').collect();
    let verifier = PinnedCert {
        fingerprint: hex::decode(clean.to_ascii_lowercase()).unwrap_or_default(),
        provider: provider.clone(),
    };
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("rustls: {e}"))
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth()
}

// ---------------------------------------------------------------------------
// traffic: reporting servers and probes

/// A server thread inside a namespace; stopped and joined on drop.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer format of every reporting server: `"<name> <peer-ip>\n"`.
pub fn peer_of(answer: &str) -> String {
    answer
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// Name part of a server answer.
pub fn name_of(answer: &str) -> String {
    answer
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[derive(Clone, Copy)]
enum Kind {
    Tcp,
    Http,
}

fn spawn_server(
    ns: &Path,
    bind: SocketAddr,
    name: &str,
    kind: Option<Kind>,
) -> Result<Server, String> {
    let file = File::open(ns).map_err(|e| format!("{}: {e}", ns.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let name = name.to_string();
    let (tx, rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    let thread = std::thread::spawn(move || {
        if let Err(e) = setns_fd(file.as_raw_fd(), libc::CLONE_NEWNET) {
            let _ = tx.send(Err(format!("setns: {e}")));
            return;
        }
        drop(file);
        match kind {
            Some(kind) => {
                let listener = match TcpListener::bind(bind)
                    .and_then(|l| l.set_nonblocking(true).map(|_| l))
                {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(format!("bind {bind}: {e}")));
                        return;
                    }
                };
                let _ = tx.send(listener.local_addr().map_err(|e| e.to_string()));
                while !stop2.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, peer)) => serve_tcp(stream, peer, &name, kind),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }
            None => {
                let sock = match UdpSocket::bind(bind).and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_millis(50)))
                        .map(|_| s)
                }) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(format!("bind udp {bind}: {e}")));
                        return;
                    }
                };
                let _ = tx.send(sock.local_addr().map_err(|e| e.to_string()));
                let mut buf = [0u8; 2048];
                while !stop2.load(Ordering::SeqCst) {
                    if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(format!("{name} {}\n", peer.ip()).as_bytes(), peer);
                    }
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "server did not start".to_string())??;
    Ok(Server {
        addr,
        stop,
        thread: Some(thread),
    })
}

fn serve_tcp(mut stream: TcpStream, peer: SocketAddr, name: &str, kind: Kind) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(PROBE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(PROBE_TIMEOUT));
    let answer = format!("{name} {}\n", peer.ip());
    match kind {
        Kind::Tcp => {
            let _ = stream.write_all(answer.as_bytes());
        }
        Kind::Http => {
            // Read the request head (bounded) before answering.
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while buf.len() < 16384 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let resp = format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}", answer.len());
            let _ = stream.write_all(resp.as_bytes());
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// TCP server: every connection gets `"<name> <peer-ip>\n"` and is closed.
pub fn tcp_server(ns: &Path, bind: SocketAddr, name: &str) -> Server {
    spawn_server(ns, bind, name, Some(Kind::Tcp))
        .unwrap_or_else(|e| panic!("tcp server {bind}: {e}"))
}

/// UDP server: every datagram is answered with `"<name> <peer-ip>\n"`.
pub fn udp_server(ns: &Path, bind: SocketAddr, name: &str) -> Server {
    spawn_server(ns, bind, name, None).unwrap_or_else(|e| panic!("udp server {bind}: {e}"))
}

/// HTTP server: any request gets 200 with body `"<name> <peer-ip>\n"`.
pub fn http_server(ns: &Path, bind: SocketAddr, name: &str) -> Server {
    spawn_server(ns, bind, name, Some(Kind::Http))
        .unwrap_or_else(|e| panic!("http server {bind}: {e}"))
}

/// Why a probe did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// RST / ICMP port unreachable (a reject rule or no listener).
    Refused,
    /// Nothing came back in time (a drop rule or no route).
    Timeout,
    /// Host/network unreachable and similar.
    Unreachable(String),
    Other(String),
}

fn classify(e: &std::io::Error) -> ProbeError {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused | ConnectionReset => ProbeError::Refused,
        TimedOut | WouldBlock => ProbeError::Timeout,
        HostUnreachable | NetworkUnreachable => ProbeError::Unreachable(e.to_string()),
        _ => ProbeError::Other(e.to_string()),
    }
}

/// Connects from namespace `ns` to `addr` and returns what the server said
/// (for the reporting servers: `"<name> <peer-ip>"`, trimmed).
pub fn tcp_probe(ns: &Path, addr: SocketAddr) -> Result<String, ProbeError> {
    in_netns(ns, move || -> Result<String, ProbeError> {
        let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| classify(&e))?;
        s.set_read_timeout(Some(PROBE_TIMEOUT))
            .map_err(|e| classify(&e))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map_err(|e| classify(&e))?;
        Ok(String::from_utf8_lossy(&buf).trim().to_string())
    })
    .map_err(ProbeError::Other)?
}

/// Sends one datagram (up to 3 tries) and returns the answer, trimmed.
/// Each probe is a new flow: its source port was never used by an earlier
/// probe of this run (a repeated kernel ephemeral port could meet a conntrack
/// entry of an earlier probe that is still alive, e.g. one load-balanced to
/// another backend).
pub fn udp_probe(ns: &Path, addr: SocketAddr) -> Result<String, ProbeError> {
    static NEXT_PORT: AtomicU32 = AtomicU32::new(0);
    in_netns(ns, move || -> Result<String, ProbeError> {
        let unspecified: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        let mut bound = None;
        for _ in 0..16 {
            let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
            // 45000..60999, then around again (far more than a run uses).
            let port = 45_000 + u16::try_from(n % 16_000).unwrap_or(0);
            match UdpSocket::bind(SocketAddr::new(unspecified, port)) {
                Ok(s) => {
                    bound = Some(s);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(classify(&e)),
            }
        }
        let s = bound.ok_or_else(|| ProbeError::Other("no free UDP source port".into()))?;
        s.connect(addr).map_err(|e| classify(&e))?;
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .map_err(|e| classify(&e))?;
        let mut last = ProbeError::Timeout;
        for _ in 0..3 {
            s.send(b"probe").map_err(|e| classify(&e))?;
            let mut buf = [0u8; 2048];
            match s.recv(&mut buf) {
                Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
                Err(e) => last = classify(&e),
            }
        }
        Err(last)
    })
    .map_err(ProbeError::Other)?
}

/// `GET path` over plain HTTP; returns (status, body).
pub fn http_get(ns: &Path, addr: SocketAddr, path: &str) -> Result<(u16, String), ProbeError> {
    http_request(ns, addr, "GET", path, &[])
}

/// One HTTP/1.0 request with extra headers (e.g. `DomU_Request:
/// send_my_password` for the password server); returns (status, body).
pub fn http_request(
    ns: &Path,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), ProbeError> {
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    in_netns(ns, move || -> Result<(u16, String), ProbeError> {
        let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| classify(&e))?;
        s.set_read_timeout(Some(PROBE_TIMEOUT))
            .map_err(|e| classify(&e))?;
        s.write_all(head.as_bytes()).map_err(|e| classify(&e))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map_err(|e| classify(&e))?;
        let r = parse_response(&buf).map_err(ProbeError::Other)?;
        Ok((r.status, r.body))
    })
    .map_err(ProbeError::Other)?
}

/// DNS lookup with `dig +short` from `ns` against `server`; the answer
/// lines (addresses or names). Err when dig fails or times out.
pub fn dig(ns: &Path, server: &str, name: &str, rtype: &str) -> Result<Vec<String>, String> {
    let at = format!("@{server}");
    let out = run_in(
        ns,
        None,
        &["dig", "+short", "+time=1", "+tries=2", &at, name, rtype],
        Duration::from_secs(10),
    )?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// One ICMP echo (`ping -c 1 -W 1`, up to `tries` attempts) from `ns`.
pub fn ping(ns: &Path, addr: &str, tries: u32) -> bool {
    (0..tries.max(1)).any(|_| {
        run_in(
            ns,
            None,
            &["ping", "-n", "-c", "1", "-W", "1", addr],
            Duration::from_secs(5),
        )
        .is_ok()
    })
}

// ---------------------------------------------------------------------------
// DHCP probe

/// What a DHCP server offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpOffer {
    /// Address offered to the client (`yiaddr`).
    pub address: std::net::Ipv4Addr,
    /// Option 54, the server identifier.
    pub server: Option<std::net::Ipv4Addr>,
    /// Option 1.
    pub netmask: Option<std::net::Ipv4Addr>,
    /// Option 3 (absent for non-default NICs).
    pub routers: Vec<std::net::Ipv4Addr>,
    /// Option 6.
    pub dns: Vec<std::net::Ipv4Addr>,
    /// Option 15.
    pub domain: Option<String>,
    /// Option 12.
    pub hostname: Option<String>,
    /// Every option as received (code → bytes).
    pub options: std::collections::BTreeMap<u8, Vec<u8>>,
}

fn parse_mac(mac: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = mac
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

fn ipv4_list(bytes: &[u8]) -> Vec<std::net::Ipv4Addr> {
    bytes
        .chunks_exact(4)
        .map(|c| std::net::Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect()
}

/// Builds a DHCPDISCOVER (broadcast flag set, asking for the usual options).
fn dhcp_discover_packet(xid: u32, mac: [u8; 6]) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // answer by broadcast: the client has no address yet
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, 1]); // DHCPDISCOVER
    p.extend_from_slice(&[55, 7, 1, 3, 6, 12, 15, 28, 51]);
    p.push(255);
    p
}

/// Parses a DHCPOFFER answering `xid`; None for anything else.
fn parse_offer(data: &[u8], xid: u32) -> Option<DhcpOffer> {
    if data.len() < 240
        || data[0] != 2
        || data[4..8] != xid.to_be_bytes()
        || data[236..240] != [99, 130, 83, 99]
    {
        return None;
    }
    let mut options = std::collections::BTreeMap::new();
    let mut i = 240;
    while i < data.len() {
        let code = data[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = *data.get(i + 1)? as usize;
        let value = data.get(i + 2..i + 2 + len)?.to_vec();
        options.insert(code, value);
        i += 2 + len;
    }
    if options.get(&53).map(Vec::as_slice) != Some(&[2]) {
        return None; // not an OFFER
    }
    let text = |code: u8| {
        options.get(&code).map(|v| {
            String::from_utf8_lossy(v)
                .trim_end_matches('\0')
                .to_string()
        })
    };
    Some(DhcpOffer {
        address: std::net::Ipv4Addr::new(data[16], data[17], data[18], data[19]),
        server: options.get(&54).and_then(|v| ipv4_list(v).first().copied()),
        netmask: options.get(&1).and_then(|v| ipv4_list(v).first().copied()),
        routers: options.get(&3).map(|v| ipv4_list(v)).unwrap_or_default(),
        dns: options.get(&6).map(|v| ipv4_list(v)).unwrap_or_default(),
        domain: text(15),
        hostname: text(12),
        options,
    })
}

/// Sends one DHCPDISCOVER out of `iface` in namespace `ns` (up to 3 tries,
/// 1 s each) and returns the first matching offer. Leaves no lease and no
/// address behind (it never sends a REQUEST).
pub fn dhcp_discover(ns: &Path, iface: &str, mac: &str) -> Result<DhcpOffer, ProbeError> {
    let mac = parse_mac(mac).ok_or_else(|| ProbeError::Other(format!("bad mac '{mac}'")))?;
    let iface = iface.to_string();
    in_netns(ns, move || -> Result<DhcpOffer, ProbeError> {
        let sock = UdpSocket::bind("0.0.0.0:68").map_err(|e| classify(&e))?;
        sock.set_broadcast(true).map_err(|e| classify(&e))?;
        let name = std::ffi::CString::new(iface).map_err(|e| ProbeError::Other(e.to_string()))?;
        let bytes = name.as_bytes_with_nul();
        // SAFETY: valid socket and buffer for SO_BINDTODEVICE.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                bytes.as_ptr().cast(),
                bytes.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(ProbeError::Other(format!(
                "SO_BINDTODEVICE: {}",
                std::io::Error::last_os_error()
            )));
        }
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .map_err(|e| classify(&e))?;
        let xid = std::process::id() ^ now_secs() as u32;
        let packet = dhcp_discover_packet(xid, mac);
        for _ in 0..3 {
            sock.send_to(&packet, "255.255.255.255:67")
                .map_err(|e| classify(&e))?;
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                let mut buf = [0u8; 1500];
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    if let Some(offer) = parse_offer(&buf[..n], xid) {
                        return Ok(offer);
                    }
                }
            }
        }
        Err(ProbeError::Timeout)
    })
    .map_err(ProbeError::Other)?
}

/// A program started in a namespace (a test DHCP/DNS server, …), killed by
/// PID on drop.
pub struct NsProcess {
    child: Child,
}

impl NsProcess {
    /// Starts `argv` with the network namespace `ns`; dies with the thread
    /// that started it.
    pub fn spawn(ns: &Path, argv: &[&str]) -> Result<NsProcess, String> {
        let net = File::open(ns).map_err(|e| format!("{}: {e}", ns.display()))?;
        let fd = net.as_raw_fd();
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        // SAFETY: only setns between fork and exec.
        unsafe {
            cmd.pre_exec(move || setns_fd(fd, libc::CLONE_NEWNET));
        }
        let child = cmd.spawn().map_err(|e| format!("{}: {e}", argv[0]))?;
        drop(net);
        Ok(NsProcess { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
