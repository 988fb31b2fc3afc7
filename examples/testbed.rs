//! End-to-end testbed (test support, not a product binary).
//!
//! Builds the topology of `docs/testbed.md` with the smoke harness: two emulated
//! KVM hosts, each running the real `netbridge-executor` (TLS, pinned
//! certificate, HMAC key) in its own network and mount namespace; the guest
//! and public segments span both hosts; an upstream namespace with reporting
//! servers; VM namespaces with small servers; and a management namespace
//! (`<prefix>-mg`, 172.16.200.1/24) from which the executors are reachable at
//! 172.16.200.11 and 172.16.200.12 (a bridge's `dispatchNetns`). The same
//! namespace holds fake executors: one that hangs, one that answers garbage
//! bytes, one that completes TLS with host 1's certificate (the pin matches)
//! and answers HTTP 200 with a body that is not JSON, and a closed port.
//!
//! Protocol: one JSON line describing the topology on stdout, then one JSON
//! request per stdin line, one JSON answer per stdout line:
//! `{"op":"tcp","ns":"vm1","addr":"198.51.100.1:7000"}` →
//! `{"ok":true,"reached":true,"answer":"up 203.0.113.10","peer":"203.0.113.10"}`.
//! Namespaces by name: `upstream`, `mgmt`, a VM name, `h1`/`h2` (host),
//! `h1:cs-net-42` (a router namespace on host 1). Ops: `tcp`, `udp`, `http`
//! (`path`), `ping`, `dig` (`server`, `name`, `type`), `dhcp` (`vm`),
//! `neigh` (`ns`: its neighbour table),
//! `kill_host` (`host`: 1 or 2; executor killed, its namespaces deleted),
//! `namespaces` (`host`), `networks` (`host`), `nft` (`host`, `netns`),
//! `rotate_key` (`key`, every host's key file), `log` (`host`), `quit`.
//!
//! Bounded: at most `--max-requests` requests and `--max-seconds` of life.
//! Everything is torn down (Drop guards, own PIDs only) when stdin closes,
//! on `quit`, SIGTERM/SIGINT/SIGHUP, or when a bound is reached.
//!
//! Usage: `testbed [--prefix nbt] [--per-host-certs] [--max-requests 2000]
//! [--max-seconds 1800] [--executor-log-level debug]`. By default both executors share one certificate
//! (one pinned fingerprint); `--per-host-certs` gives each its own and
//! `executor.fingerprint` becomes a comma list.
//! (root; the prefix base is at most 4 lower-case letters).

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netbridge_testbed::*;
use serde_json::{json, Value};

const MGMT_ADDR: &str = "172.16.200.1";
const GUEST_CIDR: &str = "10.1.1.0/24";
const GUEST_GATEWAY: &str = "10.1.1.1";
const UPSTREAM_TCP_PORT: u16 = 7000;
const UPSTREAM_UDP_PORT: u16 = 7001;
const UPSTREAM_HTTP_PORT: u16 = 8080;
const FAKE_HANG_PORT: u16 = 9001;
const FAKE_GARBAGE_PORT: u16 = 9002;
const FAKE_CLOSED_PORT: u16 = 9003;
const FAKE_TLS_GARBAGE_PORT: u16 = 9004;
/// Longest accepted request line.
const MAX_LINE: usize = 64 * 1024;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

struct Args {
    prefix: String,
    /// One certificate (one pinned fingerprint) for all executors, as a
    /// cluster would deploy it; `--per-host-certs` gives each its own.
    shared_cert: bool,
    max_requests: u64,
    max_seconds: u64,
    /// The executors' `--log-level` (debug by default: the tests read the
    /// logs; benchmarks pass `warn`, as a production host would run).
    executor_log_level: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        prefix: "nbt".to_string(),
        shared_cert: true,
        max_requests: 2000,
        max_seconds: 1800,
        executor_log_level: "debug".to_string(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        if flag == "--per-host-certs" {
            a.shared_cert = false;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag}: missing value"))?;
        match flag.as_str() {
            "--prefix" => {
                if value.is_empty()
                    || value.len() > 4
                    || !value.bytes().all(|b| b.is_ascii_lowercase())
                {
                    return Err("--prefix: 1 to 4 lower-case letters".to_string());
                }
                a.prefix = value.clone();
            }
            "--max-requests" => {
                a.max_requests = value
                    .parse()
                    .map_err(|_| "--max-requests: a number".to_string())?
            }
            "--max-seconds" => {
                a.max_seconds = value
                    .parse()
                    .map_err(|_| "--max-seconds: a number".to_string())?
            }
            "--executor-log-level" => {
                if !["error", "warn", "info", "debug", "trace"].contains(&value.as_str()) {
                    return Err("--executor-log-level: error, warn, info, debug or trace".into());
                }
                a.executor_log_level = value.clone();
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// Fake executors in the management namespace: a listener that accepts and
/// never answers, and one that answers garbage. Stopped on drop.
struct Fakes {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Fakes {
    /// `tls`: certificate and key of a real executor, so that the TLS fake
    /// passes the pin and then answers an HTTP 200 whose body is not JSON.
    fn start(mgmt: &std::path::Path, tls: &TlsFiles) -> Result<Fakes, String> {
        type Three = (TcpListener, TcpListener, TcpListener);
        let (hang, garbage, tls_garbage) = in_netns(mgmt, || -> std::io::Result<Three> {
            Ok((
                TcpListener::bind((MGMT_ADDR, FAKE_HANG_PORT))?,
                TcpListener::bind((MGMT_ADDR, FAKE_GARBAGE_PORT))?,
                TcpListener::bind((MGMT_ADDR, FAKE_TLS_GARBAGE_PORT))?,
            ))
        })?
        .map_err(|e| format!("fake executors: {e}"))?;
        let config = Arc::new(
            netbridge_executor::daemon::tls::server_config(&tls.cert, &tls.key)
                .map_err(|e| format!("fake TLS executor: {e}"))?,
        );
        tls_garbage
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        hang.set_nonblocking(true).map_err(|e| e.to_string())?;
        garbage.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let s1 = stop.clone();
        let t1 = std::thread::spawn(move || {
            // Held open, never read or answered, until the testbed stops.
            let mut held: Vec<TcpStream> = Vec::new();
            while !s1.load(Ordering::SeqCst) {
                match hang.accept() {
                    Ok((c, _)) if held.len() < 256 => held.push(c),
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        let s2 = stop.clone();
        let t2 = std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                match garbage.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut buf = [0u8; 4096];
                        let _ = c.read(&mut buf);
                        let _ = c.write_all(b"\x00\xffnot an executor\r\n\r\ngarbage\x01\x02");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        let s3 = stop.clone();
        let t3 = std::thread::spawn(move || {
            while !s3.load(Ordering::SeqCst) {
                match tls_garbage.accept() {
                    Ok((c, _)) => answer_tls_garbage(c, config.clone()),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Fakes {
            stop,
            threads: vec![t1, t2, t3],
        })
    }
}

/// One connection of the TLS fake: handshake, read the request head, answer
/// 200 with a body that is not JSON. Errors just end the connection.
fn answer_tls_garbage(c: TcpStream, config: Arc<rustls::ServerConfig>) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, c);
    let mut buf = [0u8; 16384];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = b"<html>surprise, not JSON</html>";
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tls.write_all(reply.as_bytes());
    let _ = tls.write_all(body);
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

impl Drop for Fakes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Everything alive while the testbed serves; field order is drop order.
struct World {
    /// Links of each host namespace before any network existed.
    baseline_links: Vec<Vec<String>>,
    _servers: Vec<Server>,
    fakes: Option<Fakes>,
    tb: Testbed,
    mgmt: Netns,
}

/// Link names in a namespace (`ip -o link show`, `name@peer` reduced to `name`).
fn links(ns: &str) -> Result<Vec<String>, String> {
    let out = run(&["ip", "-n", ns, "-o", "link", "show"])?;
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    names.sort();
    Ok(names)
}

fn host_addr(i: usize) -> String {
    format!("172.16.200.{}", 11 + i)
}

fn build(prefix: &str, shared_cert: bool, log_level: &str) -> Result<World, String> {
    let options = TopologyOptions::default()
        .hosts(2)
        .vm("vm1", "10.1.1.10/24", Some(GUEST_GATEWAY))
        .vm_on(1, "vm2", "10.1.1.11/24", Some(GUEST_GATEWAY));
    let mut tb = Testbed::try_new(prefix, options)?;
    let mgmt = Netns::create(&format!("{}-mg", tb.prefix))?;
    bridge(&mgmt.name, "mgbr")?;
    mgmt.ip(&["addr", "add", &format!("{MGMT_ADDR}/24"), "dev", "mgbr"])?;
    for i in 0..tb.hosts.len() {
        let hn = tb.hosts[i].netns.name.clone();
        let side = format!("m{}", i + 1);
        veth(&mgmt.name, &side, &hn, "mgmt0")?;
        attach(&mgmt.name, &side, "mgbr")?;
        run(&[
            "ip",
            "-n",
            &hn,
            "addr",
            "add",
            &format!("{}/24", host_addr(i)),
            "dev",
            "mgmt0",
        ])?;
        // dnsmasq drops privileges and must reach the state directory
        // inside the host's (0700) temporary directory.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                tb.hosts[i].dir.path(),
                std::fs::Permissions::from_mode(0o711),
            )
            .map_err(|e| format!("state dir permissions: {e}"))?;
        }
        if shared_cert && i > 0 {
            let tls = tb.host(0).ensure_tls()?;
            tb.host(i).tls = Some(tls);
        }
        tb.host(i).options.log_level = log_level.to_string();
        tb.host(i).start_executor()?;
    }
    let up = tb.upstream.path();
    let sa = |ip: &str, port: u16| -> Result<SocketAddr, String> {
        format!("{ip}:{port}")
            .parse()
            .map_err(|e| format!("{ip}:{port}: {e}"))
    };
    let mut servers = vec![
        tcp_server(&up, sa(UPSTREAM_ADDR, UPSTREAM_TCP_PORT)?, "up"),
        udp_server(&up, sa(UPSTREAM_ADDR, UPSTREAM_UDP_PORT)?, "up"),
        http_server(&up, sa(UPSTREAM_ADDR, UPSTREAM_HTTP_PORT)?, "up"),
    ];
    for vm in &tb.vms {
        let ip = vm.ip().to_string();
        servers.push(tcp_server(&vm.path(), sa(&ip, 22)?, &vm.spec.name));
        servers.push(http_server(&vm.path(), sa(&ip, 80)?, &vm.spec.name));
        servers.push(udp_server(&vm.path(), sa(&ip, 53)?, &vm.spec.name));
    }
    let tls0 = tb.host(0).ensure_tls()?;
    let fakes = Fakes::start(&mgmt.path(), &tls0)?;
    let baseline_links = tb
        .hosts
        .iter()
        .map(|h| links(&h.netns.name))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(World {
        baseline_links,
        _servers: servers,
        fakes: Some(fakes),
        tb,
        mgmt,
    })
}

fn describe(w: &World) -> Value {
    let hosts: Vec<String> = (0..w.tb.hosts.len()).map(host_addr).collect();
    let mut fps: Vec<String> =
        w.tb.hosts
            .iter()
            .map(|h| {
                h.tls
                    .as_ref()
                    .map(|t| t.fingerprint.clone())
                    .unwrap_or_default()
            })
            .collect();
    fps.dedup();
    let vms: Vec<Value> =
        w.tb.vms
            .iter()
            .map(|v| {
                json!({"name": v.spec.name, "ip": v.ip(), "mac": v.mac(), "host": v.spec.host + 1,
                   "netns": v.path().display().to_string(), "tcp_port": 22, "http_port": 80,
                   "udp_port": 53})
            })
            .collect();
    json!({
        "ready": true,
        "prefix": w.tb.prefix,
        "mgmt_netns": w.mgmt.path().display().to_string(),
        "hosts": hosts.join(","),
        "host_list": hosts,
        "host_names": w.tb.hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>(),
        "executor.port": EXECUTOR_PORT.to_string(),
        "executor.fingerprint": fps.join(","),
        "fingerprints": fps,
        "executor.key": DEFAULT_KEY,
        "guest": {"device": "eth1", "vlan": 100, "cidr": GUEST_CIDR, "gateway": GUEST_GATEWAY,
                  "bridge": w.tb.options.guest_bridge},
        "public": {"device": "eth1", "vlan": 200, "cidr": PUBLIC_CIDR, "gateway": PUBLIC_GATEWAY,
                   "bridge": w.tb.options.public_bridge},
        "vms": vms,
        "upstream": {"addr": UPSTREAM_ADDR, "tcp_port": UPSTREAM_TCP_PORT,
                     "udp_port": UPSTREAM_UDP_PORT, "http_port": UPSTREAM_HTTP_PORT,
                     "netns": w.tb.upstream.path().display().to_string()},
        "fakes": {"hang": format!("{MGMT_ADDR}:{FAKE_HANG_PORT}"),
                  "garbage": format!("{MGMT_ADDR}:{FAKE_GARBAGE_PORT}"),
                  "closed": format!("{MGMT_ADDR}:{FAKE_CLOSED_PORT}"),
                  "tls_garbage": format!("{MGMT_ADDR}:{FAKE_TLS_GARBAGE_PORT}")},
    })
}

fn str_field<'a>(req: &'a Value, name: &str) -> Result<&'a str, String> {
    req.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string field '{name}'"))
}

fn host_index(w: &World, req: &Value) -> Result<usize, String> {
    let n = req
        .get("host")
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str()?.trim_start_matches('h').parse().ok())
        })
        .ok_or("missing field 'host' (1-based number)")?;
    if n == 0 || n as usize > w.tb.hosts.len() {
        return Err(format!("no host {n}"));
    }
    Ok(n as usize - 1)
}

/// A router namespace name as the executor creates them (`cs-net-42`, …).
fn valid_ns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.starts_with('-')
}

fn ns_of(w: &World, name: &str) -> Result<PathBuf, String> {
    match name {
        "upstream" => return Ok(w.tb.upstream.path()),
        "mgmt" => return Ok(w.mgmt.path()),
        _ => {}
    }
    if let Some(vm) = w.tb.vms.iter().find(|v| v.spec.name == name) {
        return Ok(vm.path());
    }
    let (host, router) = match name.split_once(':') {
        Some((h, r)) => (h, Some(r)),
        None => (name, None),
    };
    let h =
        w.tb.hosts
            .iter()
            .find(|h| h.name == host)
            .ok_or_else(|| format!("unknown namespace '{name}'"))?;
    match router {
        None => Ok(h.ns_path()),
        Some(r) if valid_ns_name(r) => {
            let p = h.router_ns(r);
            if p.exists() {
                Ok(p)
            } else {
                Err(format!("no namespace '{r}' on {host}"))
            }
        }
        Some(_) => Err(format!("invalid namespace name in '{name}'")),
    }
}

fn sock(req: &Value) -> Result<SocketAddr, String> {
    let a = str_field(req, "addr")?;
    a.parse().map_err(|_| format!("invalid addr '{a}'"))
}

fn probe_answer(r: Result<String, ProbeError>) -> Value {
    match r {
        Ok(answer) => json!({"ok": true, "reached": true, "peer": peer_of(&answer),
                             "name": name_of(&answer), "answer": answer}),
        Err(e) => json!({"ok": true, "reached": false, "failure": probe_failure(&e)}),
    }
}

fn probe_failure(e: &ProbeError) -> String {
    match e {
        ProbeError::Refused => "refused".to_string(),
        ProbeError::Timeout => "timeout".to_string(),
        ProbeError::Unreachable(m) => format!("unreachable: {m}"),
        ProbeError::Other(m) => format!("other: {m}"),
    }
}

fn inode(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Host death: the executor is killed, every process living in one of its
/// router namespaces (started by that executor) is killed by PID, and the
/// namespaces are deleted, so their links leave the shared segments.
fn kill_host(w: &mut World, i: usize) -> Result<Value, String> {
    let host = w.tb.host(i);
    host.kill9();
    let names = host.namespaces();
    let inodes: Vec<u64> = names
        .iter()
        .filter_map(|n| inode(&host.router_ns(n)))
        .collect();
    let me = std::process::id();
    let mut killed = 0;
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            if let Some(ino) = inode(&PathBuf::from(format!("/proc/{pid}/ns/net"))) {
                if inodes.contains(&ino) {
                    // SAFETY: plain syscall; the PID lives in a namespace our executor made.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    killed += 1;
                }
            }
        }
    }
    let mut errors = Vec::new();
    for n in &names {
        if let Err(e) = host.exec(&["ip", "netns", "del", n]) {
            errors.push(e);
        }
    }
    let left = host.namespaces();
    // The kernel dismantles a namespace asynchronously; the host counts as
    // dead once the routers' links have left its bridges (bounded wait).
    let hn = host.netns.name.clone();
    let baseline = w.baseline_links[i].clone();
    let started = Instant::now();
    let gone = eventually(Duration::from_secs(30), || {
        (links(&hn).ok()? == baseline).then_some(())
    })
    .is_some();
    Ok(
        json!({"ok": errors.is_empty() && left.is_empty() && gone, "deleted": names,
              "processes_killed": killed, "left": left, "errors": errors,
              "links_gone": gone, "links_gone_secs": started.elapsed().as_secs_f64(),
              "links": links(&hn).unwrap_or_default()}),
    )
}

fn handle(w: &mut World, req: &Value) -> Result<Value, String> {
    let op = str_field(req, "op")?;
    match op {
        "tcp" => Ok(probe_answer(tcp_probe(
            &ns_of(w, str_field(req, "ns")?)?,
            sock(req)?,
        ))),
        "udp" => Ok(probe_answer(udp_probe(
            &ns_of(w, str_field(req, "ns")?)?,
            sock(req)?,
        ))),
        "http" => {
            let path = req.get("path").and_then(Value::as_str).unwrap_or("/");
            if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return Err("invalid path".to_string());
            }
            match http_get(&ns_of(w, str_field(req, "ns")?)?, sock(req)?, path) {
                Ok((status, body)) => Ok(json!({"ok": true, "reached": true, "status": status,
                    "body": body, "peer": peer_of(&body)})),
                Err(e) => Ok(json!({"ok": true, "reached": false, "failure": probe_failure(&e)})),
            }
        }
        "ping" => {
            let addr: std::net::IpAddr = str_field(req, "addr")?
                .parse()
                .map_err(|_| "invalid addr".to_string())?;
            let ok = ping(&ns_of(w, str_field(req, "ns")?)?, &addr.to_string(), 3);
            Ok(json!({"ok": true, "reached": ok}))
        }
        "dig" => {
            let server: std::net::IpAddr = str_field(req, "server")?
                .parse()
                .map_err(|_| "invalid server".to_string())?;
            let name = str_field(req, "name")?;
            if name.is_empty()
                || name.starts_with('-')
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                return Err("invalid name".to_string());
            }
            let rtype = req.get("type").and_then(Value::as_str).unwrap_or("A");
            if !matches!(rtype, "A" | "AAAA" | "PTR" | "CNAME" | "TXT") {
                return Err("invalid type".to_string());
            }
            let ns = ns_of(w, str_field(req, "ns")?)?;
            match dig(&ns, &server.to_string(), name, rtype) {
                Ok(lines) => Ok(json!({"ok": true, "reached": true, "answers": lines})),
                Err(e) => Ok(json!({"ok": true, "reached": false, "failure": e})),
            }
        }
        "dhcp" => {
            let name = str_field(req, "vm")?;
            let vm =
                w.tb.vms
                    .iter()
                    .find(|v| v.spec.name == name)
                    .ok_or_else(|| format!("no vm '{name}'"))?;
            match vm.dhcp_discover() {
                Ok(o) => Ok(json!({"ok": true, "reached": true,
                    "address": o.address.to_string(),
                    "server": o.server.map(|s| s.to_string()),
                    "routers": o.routers.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                    "dns": o.dns.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                    "domain": o.domain, "hostname": o.hostname})),
                Err(e) => Ok(json!({"ok": true, "reached": false, "failure": probe_failure(&e)})),
            }
        }
        "neigh" => {
            let ns = ns_of(w, str_field(req, "ns")?)?;
            let out = run_in(&ns, None, &["ip", "neigh", "show"], Duration::from_secs(10))?;
            let addr = run_in(
                &ns,
                None,
                &["ip", "-br", "link", "show"],
                Duration::from_secs(10),
            )?;
            Ok(json!({"ok": true, "neigh": out, "links": addr}))
        }
        "kill_host" => {
            let i = host_index(w, req)?;
            kill_host(w, i)
        }
        "namespaces" => {
            let i = host_index(w, req)?;
            Ok(json!({"ok": true, "namespaces": w.tb.hosts[i].namespaces()}))
        }
        "networks" => {
            let i = host_index(w, req)?;
            let r = w.tb.hosts[i].client().get("/v1/networks")?;
            Ok(json!({"ok": r.status == 200, "status": r.status, "body": r.json()}))
        }
        "nft" => {
            let i = host_index(w, req)?;
            let ns = str_field(req, "netns")?;
            if !valid_ns_name(ns) {
                return Err("invalid netns".to_string());
            }
            let out = w.tb.hosts[i].exec(&["ip", "netns", "exec", ns, "nft", "list", "ruleset"])?;
            Ok(json!({"ok": true, "ruleset": out}))
        }
        "rotate_key" => {
            let key = str_field(req, "key")?;
            if key.len() < 16 || key.len() > 4096 {
                return Err("key must be 16 to 4096 bytes".to_string());
            }
            for i in 0..w.tb.hosts.len() {
                w.tb.host(i).rotate_key(key.as_bytes())?;
            }
            Ok(json!({"ok": true}))
        }
        "log" => {
            let i = host_index(w, req)?;
            let log = w.tb.hosts[i].log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Ok(json!({"ok": true, "log": tail.join("\n")}))
        }
        other => Err(format!("unknown op '{other}'")),
    }
}

fn emit(v: &Value) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}").and_then(|_| out.flush()).is_ok()
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("testbed: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    if skip_unless_root("testbed") {
        emit(&json!({"ready": false, "error": "needs root (network namespaces)"}));
        return std::process::ExitCode::from(3);
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
    let started = Instant::now();
    let mut world = match build(&args.prefix, args.shared_cert, &args.executor_log_level) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("testbed: setup failed: {e}");
            emit(&json!({"ready": false, "error": e}));
            return std::process::ExitCode::from(2);
        }
    };
    if !emit(&describe(&world)) {
        return std::process::ExitCode::from(2);
    }
    // stdin on its own thread so the loop can notice signals and deadlines.
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut lock = stdin.lock();
        loop {
            let mut line = String::new();
            match (&mut lock).take(MAX_LINE as u64).read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let deadline = started + Duration::from_secs(args.max_seconds);
    let mut served = 0u64;
    let reason = loop {
        if STOP.load(Ordering::SeqCst) {
            break "signal";
        }
        if Instant::now() >= deadline {
            break "time limit";
        }
        let line = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break "stdin closed",
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        served += 1;
        let req: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                emit(&json!({"ok": false, "error": format!("bad request: {e}")}));
                continue;
            }
        };
        let id = req.get("id").cloned().unwrap_or(Value::Null);
        if req.get("op").and_then(Value::as_str) == Some("quit") {
            emit(&json!({"id": id, "ok": true, "bye": true}));
            break "quit";
        }
        let mut answer = match handle(&mut world, &req) {
            Ok(v) => v,
            Err(e) => json!({"ok": false, "error": e}),
        };
        answer["id"] = id;
        if !emit(&answer) {
            break "stdout closed";
        }
        if served >= args.max_requests {
            break "request limit";
        }
    };
    eprintln!("testbed: tearing down ({reason}, {served} requests)");
    world.fakes.take();
    drop(world);
    std::process::ExitCode::SUCCESS
}
