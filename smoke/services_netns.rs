//! Root tests with real daemons and real clients inside namespaces named
//! `nbs-<pid>-*` (removed by a Drop guard, also on failure).
//!
//! Topology: router namespace R with bridge `nbsbr` carrying 10.1.1.1/24 (the
//! network's `extension_ip`), VM namespaces V1 (default NIC, 10.1.1.10) and V2
//! (non-default NIC, 10.1.1.11) plugged into that bridge, and an upstream
//! namespace U (198.51.100.53, a test DNS server) linked to R.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netbridge_executor::services::dnsmasq::{self, DnsmasqAction, DnsmasqPaths};
use netbridge_executor::services::haproxy::{self, HaproxyPaths};
use netbridge_executor::services::metadata::{bind_in_netns, ListenSpec, MetadataServer};
use netbridge_executor::services::model::{apply, GuestServices, Options};
use netbridge_executor::services::run::{self, HaproxyAction};
use netbridge_executor::services::sockets;
use netbridge_executor::services::store::MetadataStore;
use netbridge_executor::services::supervisor::{identify, Daemon, DaemonSpec};
use netbridge_executor::services::VmDataSet;
use netbridge_protocol::Command as Cmd;
use serde_json::{json, Value};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
    };
}

/// The process has exited (a zombie counts: after the simulated executor
/// restart the test process is still its parent and never reaps it).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn ip_cmd_ok(d: &Daemon) -> bool {
    identify(d.pid(), d.spec())
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `program args` inside `ns` and returns stdout.
fn exec(ns: &str, program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Namespaces and child processes of one test; removed on drop.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let prefix = format!("nbs-{}-{tag}", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        // dnsmasq drops root and must still reach its files on SIGHUP.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Lab {
            prefix,
            namespaces: Vec::new(),
            children: Vec::new(),
            dir,
        }
    }

    fn ns(&mut self, name: &str) -> String {
        let n = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &n]);
        self.namespaces.push(n.clone());
        ip(&["-n", &n, "link", "set", "lo", "up"]);
        n
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Router R with bridge at 10.1.1.1/24, VMs V1/V2 on it.
    fn guest_network(&mut self) -> (String, String, String) {
        let r = self.ns("r");
        ip(&["-n", &r, "link", "add", "nbsbr", "type", "bridge"]);
        ip(&["-n", &r, "addr", "add", "10.1.1.1/24", "dev", "nbsbr"]);
        ip(&["-n", &r, "link", "set", "nbsbr", "up"]);
        let mut vms = Vec::new();
        for (i, mac) in [(1, "52:54:00:00:00:0a"), (2, "52:54:00:00:00:0b")] {
            let v = self.ns(&format!("v{i}"));
            let host_end = format!("nbsv{i}r");
            ip(&[
                "-n", &r, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0",
                "netns", &v,
            ]);
            ip(&["-n", &r, "link", "set", &host_end, "master", "nbsbr", "up"]);
            ip(&["-n", &v, "link", "set", "eth0", "address", mac, "up"]);
            vms.push(v);
        }
        let v2 = vms.pop().unwrap();
        let v1 = vms.pop().unwrap();
        (r, v1, v2)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Daemons a failed test left running inside our namespaces: stop
        // exactly those PIDs (`ip netns pids` lists only this namespace's).
        for n in &self.namespaces {
            let out = Command::new("ip").args(["netns", "pids", n]).output();
            let pids = out
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a PID that runs inside our test namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for n in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn p(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn state() -> (GuestServices, VmDataSet) {
    let mut s = GuestServices::default();
    let mut v = VmDataSet::new();
    let o = Options::default();
    for (cmd, pl) in [
        (
            Cmd::ConfigDhcpSubnet,
            json!({"gateway":"10.1.1.1","cidr":"10.1.1.0/24","dns":"198.51.100.53","domain":"cs42.example","extension_ip":"10.1.1.1"}),
        ),
        (
            Cmd::ConfigDnsSubnet,
            json!({"gateway":"10.1.1.1","cidr":"10.1.1.0/24","dns":"198.51.100.53","domain":"cs42.example"}),
        ),
        (
            Cmd::PrepareNic,
            json!({"mac":"52:54:00:00:00:0a","ip":"10.1.1.10","hostname":"vm1","default_nic":"true","nic_id":"7"}),
        ),
        (
            Cmd::AddDhcpEntry,
            json!({"mac":"52:54:00:00:00:0b","ip":"10.1.1.11","hostname":"vm2","default_nic":"false","nic_id":"8"}),
        ),
        (Cmd::AddDnsEntry, json!({"ip":"10.1.1.11","hostname":"vm2"})),
        (
            Cmd::SetDhcpOptions,
            json!({"nic_id":"8","options":"{\"42\":\"10.1.1.1\"}"}),
        ),
    ] {
        apply(cmd, &p(pl), &mut s, &mut v, &o).unwrap();
    }
    (s, v)
}

/// Runs dhclient in `ns` (no script: nothing on the host is configured) and
/// returns the lease file text once a lease arrived.
fn dhcp_lease(lab: &mut Lab, ns: &str, name: &str) -> String {
    let lf = lab.path(&format!("{name}.leases"));
    let pf = lab.path(&format!("{name}.pid"));
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "dhclient",
            "-d",
            "-1",
            "-sf",
            "/bin/true",
            "-lf",
        ])
        .arg(&lf)
        .arg("-pf")
        .arg(&pf)
        .arg("eth0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lab.children.push(child);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&lf).unwrap_or_default();
        if text.contains("fixed-address") {
            return text;
        }
        assert!(Instant::now() < end, "no DHCP lease for {name}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dig(ns: &str, name: &str, rtype: &str) -> String {
    let (_, out) = exec(
        ns,
        "dig",
        &["+short", "+time=2", "+tries=2", "@10.1.1.1", name, rtype],
    );
    out.trim().to_string()
}

#[test]
fn dnsmasq_dhcp_and_dns_with_real_clients() {
    require_root!();
    let mut lab = Lab::new("d");
    let (r, v1, v2) = lab.guest_network();
    // Upstream DNS server in U, reachable from R.
    let u = lab.ns("u");
    ip(&[
        "-n", &r, "link", "add", "nbsup", "type", "veth", "peer", "name", "nbsupu", "netns", &u,
    ]);
    ip(&["-n", &r, "addr", "add", "198.51.100.1/24", "dev", "nbsup"]);
    ip(&["-n", &r, "link", "set", "nbsup", "up"]);
    ip(&["-n", &u, "addr", "add", "198.51.100.53/24", "dev", "nbsupu"]);
    ip(&["-n", &u, "link", "set", "nbsupu", "up"]);
    let up_conf = lab.path("upstream.conf");
    std::fs::write(
        &up_conf,
        "listen-address=198.51.100.53\nbind-interfaces\nno-hosts\nno-resolv\nport=53\nhost-record=up.example.org,198.51.100.7\n",
    )
    .unwrap();
    let up_spec = DaemonSpec {
        name: "upstream dns".into(),
        program: run::DNSMASQ_PROGRAM.into(),
        args: vec![
            "--keep-in-foreground".into(),
            format!("--conf-file={}", up_conf.display()).into(),
            format!("--pid-file={}", lab.path("up.dnsmasq.pid").display()).into(),
        ],
        netns: Some(u.clone()),
        pid_file: lab.path("upstream.pid"),
        log_file: None,
        marker: format!("--conf-file={}", up_conf.display()).into(),
    };
    let upstream = Daemon::spawn(up_spec).unwrap();

    let (mut s, mut v) = state();
    let paths = DnsmasqPaths::new(lab.path("dnsmasq")).unwrap();
    let files = dnsmasq::render(&s, &paths).unwrap();
    run::write_record_shards(&paths, &s, None).unwrap();
    let (daemon, action) = run::sync_dnsmasq(&paths, Some(&r), "t", Some(&files), None).unwrap();
    assert_eq!(action, DnsmasqAction::Start);
    let mut daemon = daemon.unwrap();
    let pid = daemon.pid();
    assert!(identify(pid, daemon.spec()));

    // DHCP: V1 (default NIC) gets address, router, DNS and domain.
    let l1 = dhcp_lease(&mut lab, &v1, "v1");
    assert!(l1.contains("fixed-address 10.1.1.10;"), "{l1}");
    assert!(l1.contains("option routers 10.1.1.1;"), "{l1}");
    assert!(
        l1.contains("option domain-name-servers 10.1.1.1,198.51.100.53;"),
        "{l1}"
    );
    assert!(l1.contains("option domain-name \"cs42.example\";"), "{l1}");
    assert!(l1.contains("option host-name \"vm1\";"), "{l1}");
    // V2 (non-default NIC): no router option at all, its extra option (42).
    let l2 = dhcp_lease(&mut lab, &v2, "v2");
    assert!(l2.contains("fixed-address 10.1.1.11;"), "{l2}");
    assert!(!l2.contains("routers"), "{l2}");
    assert!(l2.contains("option ntp-servers 10.1.1.1;"), "{l2}");

    // DNS from the VMs (addresses as the lease said).
    ip(&["-n", &v1, "addr", "add", "10.1.1.10/24", "dev", "eth0"]);
    ip(&["-n", &v2, "addr", "add", "10.1.1.11/24", "dev", "eth0"]);
    assert_eq!(dig(&v1, "vm2.cs42.example", "A"), "10.1.1.11");
    assert_eq!(dig(&v2, "vm1", "A"), "10.1.1.10");
    assert_eq!(dig(&v2, "data-server", "A"), "10.1.1.1");
    assert_eq!(dig(&v1, "up.example.org", "A"), "198.51.100.7");

    // A new DNS entry is one new shard file in `hostsdir`: no signal, same
    // PID, and the name resolves as soon as the file is in place.
    let before = s.clone();
    apply(
        Cmd::AddDnsEntry,
        &p(json!({"ip":"10.1.1.12","hostname":"vm3"})),
        &mut s,
        &mut v,
        &Options::default(),
    )
    .unwrap();
    let files = dnsmasq::render(&s, &paths).unwrap();
    let changed = dnsmasq::changed_shards(&before, &s).unwrap();
    run::write_record_shards(&paths, &s, Some(&changed)).unwrap();
    let (d, action) = run::sync_dnsmasq(&paths, Some(&r), "t", Some(&files), Some(daemon)).unwrap();
    assert_eq!(action, DnsmasqAction::Nothing);
    daemon = d.unwrap();
    assert_eq!(daemon.pid(), pid);
    assert_eq!(
        dig(&v1, "vm3.cs42.example", "A"),
        "10.1.1.12",
        "{}",
        std::fs::read_to_string(paths.dir.join("dnsmasq.log")).unwrap_or_default()
    );
    // Removing it deletes the shard's last record: gone at once too.
    let before = s.clone();
    apply(
        Cmd::RemoveDnsEntry,
        &p(json!({"ip":"10.1.1.12"})),
        &mut s,
        &mut v,
        &Options::default(),
    )
    .unwrap();
    let changed = dnsmasq::changed_shards(&before, &s).unwrap();
    run::write_record_shards(&paths, &s, Some(&changed)).unwrap();
    assert_ne!(dig(&v1, "vm3.cs42.example", "A"), "10.1.1.12");
    assert_eq!(dig(&v1, "vm1.cs42.example", "A"), "10.1.1.10");
    // A record alone in its shard: the file is created, then deleted.
    for (cmd, payload) in [
        (
            Cmd::AddDnsEntry,
            json!({"ip":"10.1.1.40","hostname":"solo"}),
        ),
        (Cmd::RemoveDnsEntry, json!({"ip":"10.1.1.40"})),
    ] {
        let before = s.clone();
        apply(cmd, &p(payload), &mut s, &mut v, &Options::default()).unwrap();
        let changed = dnsmasq::changed_shards(&before, &s).unwrap();
        run::write_record_shards(&paths, &s, Some(&changed)).unwrap();
        let file = paths.hosts_dir().join("10.1.1.32");
        if cmd == Cmd::AddDnsEntry {
            assert!(file.exists());
            assert_eq!(dig(&v1, "solo.cs42.example", "A"), "10.1.1.40");
        } else {
            assert!(!file.exists());
            assert_ne!(dig(&v1, "solo.cs42.example", "A"), "10.1.1.40");
        }
    }

    // Executor restart: the daemon is adopted from its PID file, not duplicated.
    drop(daemon);
    let (d, action) = run::sync_dnsmasq(&paths, Some(&r), "t", Some(&files), None).unwrap();
    assert_eq!(action, DnsmasqAction::Nothing);
    let daemon = d.unwrap();
    assert_eq!(daemon.pid(), pid);

    // DNS off (main config change): restart with a new PID, port 53 closed.
    apply(
        Cmd::RemoveDnsSubnet,
        &p(json!({})),
        &mut s,
        &mut v,
        &Options::default(),
    )
    .unwrap();
    let files = dnsmasq::render(&s, &paths).unwrap();
    let (d, action) = run::sync_dnsmasq(&paths, Some(&r), "t", Some(&files), Some(daemon)).unwrap();
    assert_eq!(action, DnsmasqAction::Restart);
    let daemon = d.unwrap();
    assert_ne!(daemon.pid(), pid);
    assert!(gone(pid), "old dnsmasq still alive");
    // Port 53 closed (dnsmasq `port=0`), DHCP still served.
    assert!(dig(&v1, "vm1", "A").contains("no servers could be reached"));
    assert!(ip_cmd_ok(&daemon));

    // Nothing left: stop exactly that PID.
    let last = daemon.pid();
    apply(
        Cmd::RemoveDhcpSubnet,
        &p(json!({})),
        &mut s,
        &mut v,
        &Options::default(),
    )
    .unwrap();
    assert!(dnsmasq::render(&s, &paths).is_none());
    let (d, action) = run::sync_dnsmasq(&paths, Some(&r), "t", None, Some(daemon)).unwrap();
    assert_eq!(action, DnsmasqAction::Stop);
    assert!(d.is_none());
    assert!(gone(last));
    assert!(!paths.pid_file().exists());
    upstream.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn supervisor_tracks_exact_pid_and_ignores_stale_pid_files() {
    require_root!();
    let mut lab = Lab::new("s");
    let ns = lab.ns("x");
    let marker = format!("{}", 3000 + std::process::id() % 1000);
    let spec = DaemonSpec {
        name: "sleep".into(),
        program: "/usr/bin/sleep".into(),
        args: vec![marker.clone().into()],
        netns: Some(ns.clone()),
        pid_file: lab.path("sleep.pid"),
        log_file: Some(lab.path("sleep.log")),
        marker: marker.into(),
    };
    let d = Daemon::spawn(spec.clone()).unwrap();
    let pid = d.pid();
    // It runs in the namespace, not in ours.
    let ns_ino = std::fs::metadata(format!("/run/netns/{ns}")).unwrap();
    let proc_ino = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(ns_ino.ino(), proc_ino.ino());
    assert_eq!(
        std::fs::read_to_string(&spec.pid_file).unwrap().trim(),
        pid.to_string()
    );
    // After an "executor restart" the PID file finds the same process.
    let adopted = Daemon::adopt(spec.clone()).unwrap();
    assert_eq!(adopted.pid(), pid);
    // A PID file naming another process (ours) is stale: never adopted.
    std::fs::write(&spec.pid_file, format!("{}\n", std::process::id())).unwrap();
    assert!(Daemon::adopt(spec.clone()).is_none());
    assert!(!spec.pid_file.exists(), "stale pid file not removed");
    // Same program and marker but another namespace: not ours either.
    let mut other = spec.clone();
    other.netns = None;
    assert!(!identify(pid, &other));
    d.stop(Duration::from_secs(5)).unwrap();
    assert!(gone(pid));
}

/// Connects from inside `ns` (socket created there) with a short timeout.
fn connect_in(ns: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    std::thread::scope(|sc| {
        sc.spawn(|| {
            // SAFETY: per-thread setns on a valid namespace fd.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        })
        .join()
        .unwrap()
    })
}

fn http_get(ns: &str, addr: SocketAddr, path: &str, header: Option<&str>) -> (u16, String) {
    let mut s = connect_in(ns, addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let extra = header.map(|h| format!("{h}\r\n")).unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn metadata_and_password_by_source_address() {
    require_root!();
    let mut lab = Lab::new("m");
    let (r, v1, v2) = lab.guest_network();
    ip(&["-n", &v1, "addr", "add", "10.1.1.10/24", "dev", "eth0"]);
    ip(&["-n", &v2, "addr", "add", "10.1.1.11/24", "dev", "eth0"]);
    // Starting before the guest address exists works (IP_FREEBIND): the
    // services answer once the address is configured.
    ip(&["-n", &r, "addr", "del", "10.1.1.1/24", "dev", "nbsbr"]);
    let store = Arc::new(MetadataStore::open(lab.path("vmdata"), Some([7u8; 32])).unwrap());
    let mut g = GuestServices::default();
    let o = Options::default();
    for (ipaddr, name) in [("10.1.1.10", "vm1"), ("10.1.1.11", "vm2")] {
        store
            .update(|vms| {
                apply(
                    Cmd::SaveVmData,
                    &p(json!({"ip":ipaddr,"vm_data":[
                    {"dir":"userdata","file":"user-data","content":format!("#cloud-config {name}")},
                    {"dir":"metadata","file":"local-hostname","content":name},
                    {"dir":"metadata","file":"instance-id","content":format!("i-{name}")},
                    {"dir":"metadata","file":"public-keys","content":format!("ssh-ed25519 AAAA {name}")}]})),
                    &mut g,
                    vms,
                    &o,
                )
            })
            .unwrap();
    }
    store
        .update(|vms| {
            apply(
                Cmd::SavePassword,
                &p(json!({"ip":"10.1.1.10","password":"Pa55-vm1"})),
                &mut g,
                vms,
                &o,
            )
        })
        .unwrap();
    // Files are 0600 and encrypted (the password is not in clear).
    let f = lab.path("vmdata").join("10.1.1.10.vmdata");
    assert_eq!(
        std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let raw = std::fs::read(&f).unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("Pa55-vm1"));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let spec = ListenSpec::new(Some(&r), Ipv4Addr::new(10, 1, 1, 1));
    let server = MetadataServer::start(rt.handle(), &spec, store.clone()).unwrap();
    ip(&["-n", &r, "addr", "add", "10.1.1.1/24", "dev", "nbsbr"]);
    let md: SocketAddr = "10.1.1.1:80".parse().unwrap();
    let pw: SocketAddr = "10.1.1.1:8080".parse().unwrap();

    assert_eq!(
        http_get(&v1, md, "/latest/user-data", None),
        (200, "#cloud-config vm1".into())
    );
    assert_eq!(
        http_get(&v2, md, "/latest/user-data", None),
        (200, "#cloud-config vm2".into())
    );
    assert_eq!(
        http_get(&v1, md, "/latest/meta-data/", None),
        (200, "instance-id\nlocal-hostname\npublic-keys\n".into())
    );
    assert_eq!(
        http_get(&v2, md, "/latest/meta-data/local-hostname", None),
        (200, "vm2".into())
    );
    assert_eq!(
        http_get(&v1, md, "/latest/meta-data/public-keys", None),
        (200, "ssh-ed25519 AAAA vm1".into())
    );
    assert_eq!(http_get(&v1, md, "/latest/meta-data/nothing", None).0, 404);
    // A VM cannot read another VM's data: no path names another client.
    assert_eq!(
        http_get(&v2, md, "/latest/meta-data/10.1.1.10/user-data", None).0,
        404
    );
    // An unknown client (router's own address) gets 404.
    let (code, _) = http_get(&r, md, "/latest/user-data", None);
    assert_eq!(code, 404);

    let send = Some("DomU_Request: send_my_password");
    let ack = Some("DomU_Request: saved_password");
    assert_eq!(http_get(&v1, pw, "/", send), (200, "Pa55-vm1".into()));
    assert_eq!(http_get(&v2, pw, "/", send), (200, "saved_password".into()));
    assert_eq!(
        http_get(&v1, pw, "/", Some("DomU_Request: x")),
        (400, "bad_request".into())
    );
    assert_eq!(http_get(&v1, pw, "/", None), (400, "bad_request".into()));
    // Served again until acknowledged, then gone; survives a reopen.
    assert_eq!(http_get(&v1, pw, "/", send), (200, "Pa55-vm1".into()));
    assert_eq!(http_get(&v1, pw, "/", ack), (200, "saved_password".into()));
    assert_eq!(http_get(&v1, pw, "/", send), (200, "saved_password".into()));
    let reopened = MetadataStore::open(lab.path("vmdata"), Some([7u8; 32])).unwrap();
    assert!(reopened
        .get(Ipv4Addr::new(10, 1, 1, 10))
        .unwrap()
        .password
        .is_none());
    assert_eq!(
        reopened.get(Ipv4Addr::new(10, 1, 1, 11)).unwrap().meta["local-hostname"],
        "vm2"
    );
    // The wrong key does not open the files.
    assert!(MetadataStore::open(lab.path("vmdata"), Some([8u8; 32])).is_err());

    rt.block_on(server.shutdown());
    // A process forked elsewhere in this test binary may still hold a copy
    // of the listening descriptor until it execs (close-on-exec): the port
    // is closed once the kernel has released the socket.
    wait_for("metadata listener released", || {
        !tcp_listeners_in(&r).iter().any(|(a, _)| *a == sa4(md))
    });
    assert!(connect_in(&v1, md).is_err(), "metadata port still open");
}

/// The listening TCP sockets of namespace `ns`.
fn tcp_listeners_in(ns: &str) -> Vec<(std::net::SocketAddrV4, u64)> {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    let table = std::thread::scope(|sc| {
        sc.spawn(|| {
            // SAFETY: per-thread setns on a valid namespace fd.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap()
        })
        .join()
        .unwrap()
    });
    sockets::parse_listeners(&table)
}

fn sa4(a: SocketAddr) -> std::net::SocketAddrV4 {
    match a {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(_) => panic!("IPv4 expected: {a}"),
    }
}

/// Backend answering its name on every connection, inside `ns`.
fn name_server(ns: &str, addr: SocketAddr, name: &'static str) {
    let l = bind_in_netns(Some(ns), addr).unwrap();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(name.as_bytes());
            // Keep the connection until the client closes it (leastconn
            // counts open connections).
            std::thread::spawn(move || {
                let mut sink = [0u8; 64];
                while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
}

/// Opens a connection and reads the backend's two-letter name, keeping the
/// connection open.
fn hold(ns: &str, addr: SocketAddr) -> Option<(TcpStream, String)> {
    let mut s = connect_in(ns, addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut b = [0u8; 2];
    s.read_exact(&mut b).ok()?;
    Some((s, String::from_utf8_lossy(&b).into_owned()))
}

fn ask(ns: &str, addr: SocketAddr) -> Option<String> {
    hold(ns, addr).map(|(_, name)| name)
}

fn counts(ns: &str, addr: SocketAddr, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for _ in 0..n {
        let who = ask(ns, addr).unwrap_or_else(|| "<none>".into());
        *m.entry(who).or_insert(0) += 1;
    }
    m
}

/// Current sessions of one haproxy server (`scur` of `show stat` on the
/// runtime API); `None` when the process has no such server.
fn server_sessions(paths: &HaproxyPaths, backend: &str, server: &str) -> Option<usize> {
    let mut api = std::os::unix::net::UnixStream::connect(paths.runtime_socket()).ok()?;
    api.write_all(b"show stat\n").ok()?;
    let mut out = String::new();
    api.read_to_string(&mut out).ok()?;
    out.lines().find_map(|line| {
        let cols: Vec<&str> = line.split(',').collect();
        if cols.first() == Some(&backend) && cols.get(1) == Some(&server) {
            cols.get(4)?.parse().ok()
        } else {
            None
        }
    })
}

fn lb_apply(s: &mut GuestServices, rules: Value) {
    let mut v = VmDataSet::new();
    apply(
        Cmd::ApplyLbRules,
        &p(json!({ "lb_rules": rules })),
        s,
        &mut v,
        &Options::default(),
    )
    .unwrap();
}

fn backends(algo: &str, revoked3: bool) -> Value {
    json!([{"id":"9","publicIp":"203.0.113.10","publicPort":"80","privatePort":"8080","protocol":"tcp",
        "algorithm":algo,"backends":[
            {"ip":"10.1.1.10","port":"8081"},{"ip":"10.1.1.10","port":"8082"},
            {"ip":"10.1.1.11","port":"8083","revoked":revoked3}]}])
}

fn wait_for<F: FnMut() -> bool>(what: &str, mut f: F) {
    let end = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn haproxy_roundrobin_source_revoke() {
    require_root!();
    let mut lab = Lab::new("h");
    let (r, v1, v2) = lab.guest_network();
    ip(&["-n", &v1, "addr", "add", "10.1.1.10/24", "dev", "eth0"]);
    ip(&["-n", &v2, "addr", "add", "10.1.1.11/24", "dev", "eth0"]);
    ip(&["-n", &v1, "route", "add", "default", "via", "10.1.1.1"]);
    ip(&["-n", &r, "addr", "add", "203.0.113.10/32", "dev", "lo"]);
    name_server(&v1, "10.1.1.10:8081".parse().unwrap(), "b1");
    name_server(&v1, "10.1.1.10:8082".parse().unwrap(), "b2");
    name_server(&v2, "10.1.1.11:8083".parse().unwrap(), "b3");
    let vip: SocketAddr = "203.0.113.10:80".parse().unwrap();

    let paths = HaproxyPaths::new(lab.path("haproxy"));
    let mut draining = Vec::new();
    let mut s = GuestServices::default();
    lb_apply(&mut s, backends("roundrobin", false));
    let cfg = haproxy::render(&s);
    let (d, a) =
        run::sync_haproxy(&paths, Some(&r), "t", cfg.as_deref(), None, &mut draining).unwrap();
    assert_eq!(a, HaproxyAction::Start);
    let d = d.unwrap();
    // Started means serving: the frontend answers at once.
    assert!(ask(&v1, vip).is_some(), "haproxy not serving after start");
    let rr = counts(&v1, vip, 30);
    assert_eq!(
        rr.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{rr:?}"
    );

    // leastconn: with two backends busy, a new connection goes to the idle one.
    lb_apply(&mut s, backends("leastconn", false));
    let cfg = haproxy::render(&s);
    let (d, a) = run::sync_haproxy(
        &paths,
        Some(&r),
        "t",
        cfg.as_deref(),
        Some(d),
        &mut draining,
    )
    .unwrap();
    assert_eq!(a, HaproxyAction::Reload);
    let d = d.unwrap();
    wait_for("old haproxy gone", || {
        run::reap_draining(&mut draining);
        draining.is_empty()
    });
    let (c1, n1) = hold(&v1, vip).unwrap();
    let (c2, n2) = hold(&v1, vip).unwrap();
    assert_ne!(n1, n2);
    let idle = ["b1", "b2", "b3"]
        .into_iter()
        .find(|b| *b != n1 && *b != n2)
        .unwrap();
    assert_eq!(ask(&v1, vip).as_deref(), Some(idle));
    drop((c1, c2));

    // source: one client sticks to one backend.
    lb_apply(&mut s, backends("source", false));
    let cfg = haproxy::render(&s);
    let (d, a) = run::sync_haproxy(
        &paths,
        Some(&r),
        "t",
        cfg.as_deref(),
        Some(d),
        &mut draining,
    )
    .unwrap();
    assert_eq!(a, HaproxyAction::Reload);
    let d = d.unwrap();
    wait_for("old haproxy gone", || {
        run::reap_draining(&mut draining);
        draining.is_empty()
    });
    let st = counts(&v1, vip, 12);
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(st.values().sum::<usize>(), 12);

    // Back to roundrobin: the algorithm changed, a reload.
    lb_apply(&mut s, backends("roundrobin", false));
    let cfg = haproxy::render(&s);
    let (d, a) = run::sync_haproxy(
        &paths,
        Some(&r),
        "t",
        cfg.as_deref(),
        Some(d),
        &mut draining,
    )
    .unwrap();
    assert_eq!(a, HaproxyAction::Reload);
    let d = d.unwrap();
    wait_for("old haproxy gone", || {
        run::reap_draining(&mut draining);
        draining.is_empty()
    });
    let pid = d.pid();

    // Revoking backend 3 changes only servers: the running process drops
    // it through its runtime API, no new process. (haproxy refuses to
    // delete a server while a connection through it is still closing.)
    wait_for("no session left on backend 3", || {
        server_sessions(&paths, "lb_9", "s_10.1.1.11_8083") == Some(0)
    });
    lb_apply(&mut s, backends("roundrobin", true));
    let cfg = haproxy::render(&s);
    let (d, a) = run::sync_haproxy(
        &paths,
        Some(&r),
        "t",
        cfg.as_deref(),
        Some(d),
        &mut draining,
    )
    .unwrap();
    assert_eq!(a, HaproxyAction::Servers);
    let d = d.unwrap();
    assert_eq!(d.pid(), pid, "the same process serves on");
    assert!(draining.is_empty());
    let rr = counts(&v1, vip, 10);
    assert_eq!(
        rr.keys().cloned().collect::<Vec<_>>(),
        vec!["b1".to_string(), "b2".to_string()],
        "{rr:?}"
    );
    // The file is the configuration in force: a restart starts the same.
    let with_api = haproxy::with_runtime_api(cfg.as_deref().unwrap(), &paths.runtime_socket());
    assert_eq!(std::fs::read_to_string(paths.conf()).ok(), with_api);
    assert_eq!(server_sessions(&paths, "lb_9", "s_10.1.1.11_8083"), None);

    // Backend 3 back: added at run time, and it takes its share at once.
    lb_apply(&mut s, backends("roundrobin", false));
    let cfg = haproxy::render(&s);
    let (d, a) = run::sync_haproxy(
        &paths,
        Some(&r),
        "t",
        cfg.as_deref(),
        Some(d),
        &mut draining,
    )
    .unwrap();
    assert_eq!(a, HaproxyAction::Servers);
    let d = d.unwrap();
    assert_eq!(d.pid(), pid);
    let rr = counts(&v1, vip, 30);
    assert_eq!(
        rr.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{rr:?}"
    );

    // Revoking a backend that still has an open connection: haproxy
    // refuses to delete it, so the change falls back to a graceful reload
    // and the old process keeps serving that connection until it closes.
    let mut held = None;
    for _ in 0..6 {
        match hold(&v1, vip) {
            Some((c, name)) if name == "b3" => {
                held = Some(c);
                break;
            }
            _ => {}
        }
    }
    let mut held = held.expect("roundrobin reached backend 3");
    lb_apply(&mut s, backends("roundrobin", true));
    let cfg = haproxy::render(&s);
    let (d, a) = run::sync_haproxy(
        &paths,
        Some(&r),
        "t",
        cfg.as_deref(),
        Some(d),
        &mut draining,
    )
    .unwrap();
    assert_eq!(a, HaproxyAction::Reload);
    let d = d.unwrap();
    assert_ne!(d.pid(), pid);
    run::reap_draining(&mut draining);
    assert_eq!(draining.len(), 1, "the old process holds the connection");
    held.write_all(b"still there").unwrap();
    let rr = counts(&v1, vip, 10);
    assert_eq!(
        rr.keys().cloned().collect::<Vec<_>>(),
        vec!["b1".to_string(), "b2".to_string()],
        "{rr:?}"
    );
    drop(held);
    wait_for("old haproxy gone once its connection closed", || {
        run::reap_draining(&mut draining);
        draining.is_empty()
    });
    assert_eq!(std::fs::read_to_string(paths.conf()).ok(), {
        haproxy::with_runtime_api(cfg.as_deref().unwrap(), &paths.runtime_socket())
    });
    // The new process's runtime API outlived the old one's exit.
    lb_apply(&mut s, backends("roundrobin", false));
    let cfg = haproxy::render(&s);
    let reloaded = d.pid();
    let (d, a) = run::sync_haproxy(
        &paths,
        Some(&r),
        "t",
        cfg.as_deref(),
        Some(d),
        &mut draining,
    )
    .unwrap();
    assert_eq!(a, HaproxyAction::Servers);
    let d = d.unwrap();
    assert_eq!(d.pid(), reloaded);
    assert_eq!(counts(&v1, vip, 3).len(), 3);

    // Revoking the rule: no haproxy process, port closed.
    let pid = d.pid();
    lb_apply(&mut s, json!([{"id":"9","revoke":"true"}]));
    let cfg = haproxy::render(&s);
    assert!(cfg.is_none());
    let (d, a) = run::sync_haproxy(&paths, Some(&r), "t", None, Some(d), &mut draining).unwrap();
    assert_eq!(a, HaproxyAction::Stop);
    assert!(d.is_none());
    assert!(gone(pid));
    assert!(connect_in(&v1, vip).is_err());
    assert!(!Path::new(&paths.pid_file()).exists());
}

#[test]
fn restore_network_after_shutdown_brings_back_leases_names_and_metadata() {
    require_root!();
    let mut lab = Lab::new("x");
    let (r, v1, v2) = lab.guest_network();
    let store = Arc::new(MetadataStore::open(lab.path("vmdata"), Some([9u8; 32])).unwrap());
    let o = Options::default();
    // Before the shutdown: a pending password for vm1.
    let mut before = GuestServices::default();
    store
        .update(|vms| {
            apply(
                Cmd::SavePassword,
                &p(json!({"ip":"10.1.1.10","password":"Kept-pw"})),
                &mut before,
                vms,
                &o,
            )
        })
        .unwrap();
    // shutdown-network tore everything down; implement-network rebuilt the
    // namespace (here: the lab's fresh one) and restore-network arrives.
    let mut s = GuestServices::default();
    let restore = json!({"network_id":"42","gateway":"10.1.1.1","cidr":"10.1.1.0/24","extension_ip":"10.1.1.1",
        "dns":"198.51.100.53","domain":"cs42.example",
        "restore_data":{"dhcp_enabled":"true","dns_enabled":"true","userdata_enabled":"true","vms":[
            {"ip":"10.1.1.10","mac":"52:54:00:00:00:0a","hostname":"vm1","default_nic":"true",
             "vm_data":[{"dir":"metadata","file":"instance-id","content":"i-vm1"},
                        {"dir":"userdata","file":"user-data","content":"ud-vm1"}]},
            {"ip":"10.1.1.11","mac":"52:54:00:00:00:0b","hostname":"vm2","default_nic":"false",
             "vm_data":[{"dir":"metadata","file":"instance-id","content":"i-vm2"}]}]}});
    let fx = store
        .update(|vms| apply(Cmd::RestoreNetwork, &p(restore), &mut s, vms, &o))
        .unwrap();
    assert!(fx.dnsmasq && fx.vm_data);
    let paths = DnsmasqPaths::new(lab.path("dnsmasq")).unwrap();
    let files = dnsmasq::render(&s, &paths);
    let (d, action) = run::sync_dnsmasq(&paths, Some(&r), "t", files.as_ref(), None).unwrap();
    assert_eq!(action, DnsmasqAction::Start);
    let d = d.unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = MetadataServer::start(
        rt.handle(),
        &ListenSpec::new(Some(&r), s.listen_ip().unwrap()),
        store.clone(),
    )
    .unwrap();

    let l1 = dhcp_lease(&mut lab, &v1, "v1");
    assert!(
        l1.contains("fixed-address 10.1.1.10;") && l1.contains("option routers 10.1.1.1;"),
        "{l1}"
    );
    let l2 = dhcp_lease(&mut lab, &v2, "v2");
    assert!(
        l2.contains("fixed-address 10.1.1.11;") && !l2.contains("routers"),
        "{l2}"
    );
    ip(&["-n", &v1, "addr", "add", "10.1.1.10/24", "dev", "eth0"]);
    ip(&["-n", &v2, "addr", "add", "10.1.1.11/24", "dev", "eth0"]);
    assert_eq!(dig(&v2, "vm1.cs42.example", "A"), "10.1.1.10");
    assert_eq!(dig(&v1, "vm2", "A"), "10.1.1.11");
    let md: SocketAddr = "10.1.1.1:80".parse().unwrap();
    let pw: SocketAddr = "10.1.1.1:8080".parse().unwrap();
    assert_eq!(
        http_get(&v1, md, "/latest/user-data", None),
        (200, "ud-vm1".into())
    );
    assert_eq!(
        http_get(&v2, md, "/latest/meta-data/instance-id", None),
        (200, "i-vm2".into())
    );
    // The password stored before the shutdown survived the restore.
    assert_eq!(
        http_get(&v1, pw, "/", Some("DomU_Request: send_my_password")),
        (200, "Kept-pw".into())
    );
    rt.block_on(server.shutdown());
    let pid = d.pid();
    d.stop(Duration::from_secs(5)).unwrap();
    assert!(gone(pid));
}
