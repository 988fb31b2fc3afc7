//! Root smoke tests of the executor data plane with real packets
//! (scenarios 1-7). Each test re-executes this binary inside
//! `unshare --mount --net --propagation private` with a fresh tmpfs on
//! `/run/netns`: the child's network namespace plays the KVM host, and every
//! namespace, bridge and veth it makes (prefix `nbe`) vanishes with it, also
//! on failure. Traffic runs only between namespaces made here, with
//! documentation addresses. Servers and clients are threads that joined a
//! namespace (no external processes except `ip`, `nft`, `ping`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use netbridge_executor::applier::{in_netns, ApplierConfig};
use netbridge_executor::{Engine, EngineConfig};
use netbridge_protocol::Command as Cmd;
use serde_json::{json, Value};

const ROLE_ENV: &str = "NBE_SMOKE_ROLE";

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

/// A TCP server in `ns` answering `<name>:<port> <peer ip>\n` on each port.
fn serve(ns: &str, name: &str, ports: &[u16]) {
    for &port in ports {
        let listener = in_netns(&ns_path(ns), || {
            TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        })
        .unwrap()
        .unwrap();
        let name = name.to_string();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let peer = conn
                    .peer_addr()
                    .map(|p| p.ip().to_string())
                    .unwrap_or_default();
                let _ = writeln!(conn, "{name}:{port} {peer}");
            }
        });
    }
}

/// A UDP server in `ns` answering each datagram with `<name>:<port> <peer ip>`.
fn serve_udp(ns: &str, name: &str, ports: &[u16]) {
    for &port in ports {
        let socket = in_netns(&ns_path(ns), || {
            UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        })
        .unwrap()
        .unwrap();
        let name = name.to_string();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((_, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(format!("{name}:{port} {}", peer.ip()).as_bytes(), peer);
            }
        });
    }
}

/// One datagram from `ns` to `ip:port`; the answer or an error text.
fn probe_udp(ns: &str, ip: &str, port: u16) -> Result<String, String> {
    let addr = SocketAddr::new(ip.parse().unwrap(), port);
    in_netns(&ns_path(ns), || {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        s.send_to(b"hi", addr).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 128];
        let n = s.recv(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .unwrap()
}

/// Connects from `ns` to `ip:port`; the server's line or an error text.
fn probe(ns: &str, ip: &str, port: u16) -> Result<String, String> {
    let addr = SocketAddr::new(ip.parse().unwrap(), port);
    in_netns(&ns_path(ns), || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(800))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut line = String::new();
        s.read_to_string(&mut line).map_err(|e| e.to_string())?;
        Ok(line.trim().to_string())
    })
    .unwrap()
}

/// [`probe`] retried for a few seconds until `want` arrives: right after a
/// namespace is (re)built, neighbours may hold the old router MAC until the
/// gratuitous ARP lands, which a loaded machine delays. The assertion is that
/// connectivity comes back, not that it is back within one SYN.
fn probe_expect(ns: &str, ip: &str, port: u16, want: &str) -> Result<String, String> {
    netbridge_testbed::eventually(Duration::from_secs(10), || {
        probe(ns, ip, port).ok().filter(|got| got == want)
    })
    // Not there in time: one more probe, so the failure shows what came back.
    .map_or_else(|| probe(ns, ip, port), Ok)
}

fn ping(ns: &str, ip: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Bridges, an upstream router (203.0.113.1, server on 7000/7001), a second
/// outside host (203.0.113.100) and two VMs on the guest segment.
fn topology() {
    run("ip", &["link", "set", "lo", "up"]);
    for br in ["brnbep-200", "brnbeg-100"] {
        run("ip", &["link", "add", br, "type", "bridge"]);
        run("ip", &["link", "set", br, "up"]);
    }
    let attach = |ns: &str, host_if: &str, br: &str, addr: &str, gw: Option<&str>| {
        run("ip", &["netns", "add", ns]);
        run(
            "ip",
            &[
                "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        );
        run("ip", &["link", "set", host_if, "master", br, "up"]);
        run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        run("ip", &["-n", ns, "link", "set", "eth0", "up"]);
        run("ip", &["-n", ns, "addr", "add", addr, "dev", "eth0"]);
        if let Some(gw) = gw {
            run("ip", &["-n", ns, "route", "add", "default", "via", gw]);
        }
    };
    attach("nbe-up", "nbeu0", "brnbep-200", "203.0.113.1/24", None);
    attach("nbe-out", "nbeo0", "brnbep-200", "203.0.113.100/24", None);
    attach(
        "nbe-vm1",
        "nbev1",
        "brnbeg-100",
        "10.1.1.5/24",
        Some("10.1.1.1"),
    );
    attach(
        "nbe-vm2",
        "nbev2",
        "brnbeg-100",
        "10.1.1.10/24",
        Some("10.1.1.1"),
    );
    serve("nbe-up", "up", &[7000, 7001]);
    serve("nbe-vm1", "vm1", &[22, 8000, 8001, 8002, 7000, 7001, 7002]);
    serve_udp("nbe-vm1", "vm1", &[5000, 5001]);
    serve("nbe-vm2", "vm2", &[80, 443]);
}

fn open_engine(state_dir: &Path) -> Engine {
    Engine::open(EngineConfig {
        state_dir: state_dir.to_path_buf(),
        guest_device: "nbeg".into(),
        public_device: "nbep".into(),
    })
    .unwrap()
}

/// The engine loading rulesets with `nft -f -` processes instead of libnftables.
fn open_engine_nft_exec(state_dir: &Path) -> Engine {
    Engine::open_with(
        EngineConfig {
            state_dir: state_dir.to_path_buf(),
            guest_device: "nbeg".into(),
            public_device: "nbep".into(),
        },
        ApplierConfig {
            use_libnftables: false,
            ..ApplierConfig::default()
        },
    )
    .unwrap()
}

fn envelope(payload: Value) -> Vec<u8> {
    let mut p = payload;
    if p.get("network_id").is_none() {
        p["network_id"] = json!("42");
    }
    json!({
        "physical-network-extension-details": {"guest.network.device": "nbeg",
            "public.network.device": "nbep", "physicalnetworkname": "pn", "password": "secret"},
        "network-extension-details": {"host": "h1", "namespace": format!("cs-net-{}", p["network_id"].as_str().unwrap())},
        "payload": p,
    })
    .to_string()
    .into_bytes()
}

fn exec(engine: &Engine, cmd: Cmd, payload: Value) -> Value {
    match engine.execute(cmd, &envelope(payload)) {
        Ok(v) => v,
        Err(e) => panic!("{cmd}: {e}"),
    }
}

fn implement(engine: &Engine) {
    exec(
        engine,
        Cmd::ImplementNetwork,
        json!({"vlan": "vlan://100", "cidr": "10.1.1.0/24",
        "gateway": "10.1.1.1", "extension_ip": "10.1.1.1", "guest_type": "isolated"}),
    );
    exec(
        engine,
        Cmd::AssignIp,
        json!({"public_ip": "203.0.113.10", "public_vlan": "vlan://200",
        "public_gateway": "203.0.113.1", "public_cidr": "203.0.113.0/24", "source_nat": "true"}),
    );
}

fn fw(engine: &Engine, default_egress_allow: bool, rules: Value) {
    exec(
        engine,
        Cmd::ApplyFwRules,
        json!({"fw_rules": {"default_egress_allow": default_egress_allow,
        "cidr": "10.1.1.0/24", "rules": rules}}),
    );
}

fn pf(public_port: &str, private_ip: &str, private_port: &str) -> Value {
    json!({"public_ip": "203.0.113.10", "public_port": public_port, "private_ip": private_ip,
        "private_port": private_port, "protocol": "tcp"})
}

fn ruleset(engine: &Engine) -> String {
    engine.installed_ruleset(42).unwrap().unwrap_or_default()
}

fn host_links() -> String {
    output("ip", &["-o", "link", "show"])
}

#[test]
fn isolated_network_scenarios() {
    if netbridge_testbed::isolate("isolated_network_scenarios") {
        return;
    }
    topology();
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path());
    implement(&engine);

    // Namespace state: addresses, forwarding, ruleset.
    let addrs = output("ip", &["-n", "cs-net-42", "-o", "addr", "show"]);
    assert!(
        addrs.contains("g42") && addrs.contains("10.1.1.1/24"),
        "{addrs}"
    );
    assert!(
        addrs.contains("p200") && addrs.contains("203.0.113.10/24"),
        "{addrs}"
    );
    let sysctl = output(
        "ip",
        &[
            "netns",
            "exec",
            "cs-net-42",
            "sysctl",
            "-n",
            "net.ipv4.ip_forward",
        ],
    );
    assert_eq!(sysctl.trim(), "1");
    assert_eq!(
        output("sysctl", &["-n", "net.ipv4.ip_forward"]).trim(),
        "0",
        "host forwarding untouched"
    );
    assert!(ruleset(&engine).contains("policy drop"));

    // 1. Source NAT: upstream sees the source-NAT address.
    assert_eq!(
        probe_expect("nbe-vm1", "203.0.113.1", 7000, "up:7000 203.0.113.10"),
        Ok("up:7000 203.0.113.10".into())
    );

    // 2. Static NAT: closed without a rule, open with one, outbound with the static IP.
    exec(
        &engine,
        Cmd::AssignIp,
        json!({"public_ip": "203.0.113.11", "public_vlan": "200",
        "public_gateway": "203.0.113.1", "public_cidr": "203.0.113.0/24", "source_nat": "false"}),
    );
    exec(
        &engine,
        Cmd::AddStaticNat,
        json!({"public_ip": "203.0.113.11", "private_ip": "10.1.1.10"}),
    );
    assert!(
        probe("nbe-up", "203.0.113.11", 80).is_err(),
        "firewall closed by default"
    );
    fw(
        &engine,
        true,
        json!([{"id": "1", "type": "ingress", "protocol": "tcp", "portStart": "80",
        "portEnd": "80", "publicIp": "203.0.113.11", "sourceCidrs": ["0.0.0.0/0"]}]),
    );
    assert_eq!(
        probe_expect("nbe-up", "203.0.113.11", 80, "vm2:80 203.0.113.1"),
        Ok("vm2:80 203.0.113.1".into())
    );
    assert!(
        probe("nbe-up", "203.0.113.11", 443).is_err(),
        "only port 80 is open"
    );
    assert_eq!(
        probe_expect("nbe-vm2", "203.0.113.1", 7000, "up:7000 203.0.113.11"),
        Ok("up:7000 203.0.113.11".into())
    );
    assert_eq!(
        probe_expect("nbe-vm1", "203.0.113.1", 7000, "up:7000 203.0.113.10"),
        Ok("up:7000 203.0.113.10".into())
    );

    // 3. Port forwarding: single port and a range; refused after delete.
    exec(&engine, Cmd::AddPortForward, pf("2222", "10.1.1.5", "22"));
    exec(
        &engine,
        Cmd::AddPortForward,
        pf("8000-8002", "10.1.1.5", "8000-8002"),
    );
    exec(
        &engine,
        Cmd::AddPortForward,
        pf("9000-9002", "10.1.1.5", "7000-7002"),
    );
    exec(
        &engine,
        Cmd::AddPortForward,
        pf("9000-9002", "10.1.1.5", "7000-7002"),
    ); // idempotent
    let open_pf = json!([
        {"type": "ingress", "protocol": "tcp", "portStart": "80", "portEnd": "80", "publicIp": "203.0.113.11"},
        {"type": "ingress", "protocol": "tcp", "portStart": "2222", "portEnd": "2222", "publicIp": "203.0.113.10"},
        {"type": "ingress", "protocol": "tcp", "portStart": "8000", "portEnd": "8002", "publicIp": "203.0.113.10"},
        {"type": "ingress", "protocol": "tcp", "portStart": "9000", "portEnd": "9002", "publicIp": "203.0.113.10"},
        {"type": "ingress", "protocol": "udp", "portStart": "5000", "portEnd": "5001", "publicIp": "203.0.113.10"}]);
    let udp_forward = json!({"public_ip": "203.0.113.10", "public_port": "5000-5001",
        "private_ip": "10.1.1.5", "private_port": "5000-5001", "protocol": "udp"});
    exec(&engine, Cmd::AddPortForward, udp_forward.clone());
    assert!(
        probe_udp("nbe-up", "203.0.113.10", 5001).is_err(),
        "closed until a rule allows it"
    );
    fw(&engine, true, open_pf.clone());
    assert_eq!(
        probe_udp("nbe-up", "203.0.113.10", 5001),
        Ok("vm1:5001 203.0.113.1".into())
    );
    exec(&engine, Cmd::DeletePortForward, udp_forward);
    // A fresh source port, so no conntrack entry of the first probe is reused.
    assert!(
        probe_udp("nbe-up", "203.0.113.10", 5000).is_err(),
        "udp forward removed"
    );
    assert_eq!(
        probe_expect("nbe-up", "203.0.113.10", 2222, "vm1:22 203.0.113.1"),
        Ok("vm1:22 203.0.113.1".into())
    );
    assert_eq!(
        probe_expect("nbe-up", "203.0.113.10", 8001, "vm1:8001 203.0.113.1"),
        Ok("vm1:8001 203.0.113.1".into())
    );
    assert_eq!(
        probe_expect("nbe-up", "203.0.113.10", 8002, "vm1:8002 203.0.113.1"),
        Ok("vm1:8002 203.0.113.1".into())
    );
    assert_eq!(
        probe_expect("nbe-up", "203.0.113.10", 9002, "vm1:7002 203.0.113.1"),
        Ok("vm1:7002 203.0.113.1".into())
    );
    exec(
        &engine,
        Cmd::DeletePortForward,
        pf("2222", "10.1.1.5", "22"),
    );
    assert!(
        probe("nbe-up", "203.0.113.10", 2222).is_err(),
        "forward removed"
    );
    assert_eq!(
        probe_expect("nbe-up", "203.0.113.10", 8000, "vm1:8000 203.0.113.1"),
        Ok("vm1:8000 203.0.113.1".into())
    );

    // 4. Firewall ingress by source CIDR, removal, ICMP type rules.
    fw(
        &engine,
        true,
        json!([{"type": "ingress", "protocol": "tcp", "portStart": "80", "portEnd": "80",
        "publicIp": "203.0.113.11", "sourceCidrs": ["203.0.113.1/32"]}]),
    );
    assert_eq!(
        probe_expect("nbe-up", "203.0.113.11", 80, "vm2:80 203.0.113.1"),
        Ok("vm2:80 203.0.113.1".into())
    );
    assert!(
        probe("nbe-out", "203.0.113.11", 80).is_err(),
        "203.0.113.100 is not 203.0.113.1/32"
    );
    assert!(
        probe("nbe-up", "203.0.113.10", 8000).is_err(),
        "rule for 8000 removed"
    );
    assert!(!ping("nbe-up", "203.0.113.11"), "ICMP closed");
    fw(
        &engine,
        true,
        json!([{"type": "ingress", "protocol": "icmp", "icmpType": "8", "icmpCode": "-1",
        "publicIp": "203.0.113.11", "sourceCidrs": ["0.0.0.0/0"]}]),
    );
    assert!(ping("nbe-up", "203.0.113.11"), "echo-request allowed");
    assert!(
        probe("nbe-up", "203.0.113.11", 80).is_err(),
        "tcp closed again"
    );
    fw(
        &engine,
        true,
        json!([{"type": "ingress", "protocol": "icmp", "icmpType": "0", "icmpCode": "-1",
        "publicIp": "203.0.113.11"}]),
    );
    assert!(
        !ping("nbe-up", "203.0.113.11"),
        "only echo-reply allowed: ping refused"
    );
    fw(&engine, true, json!([]));
    assert!(probe("nbe-up", "203.0.113.11", 80).is_err());

    // 5. Egress with both defaults.
    fw(
        &engine,
        true,
        json!([{"type": "egress", "protocol": "tcp", "portStart": "7000", "portEnd": "7000",
        "destCidrs": ["203.0.113.1/32"]}]),
    );
    assert!(
        probe("nbe-vm1", "203.0.113.1", 7000).is_err(),
        "denied by the egress rule"
    );
    assert_eq!(
        probe_expect("nbe-vm1", "203.0.113.1", 7001, "up:7001 203.0.113.10"),
        Ok("up:7001 203.0.113.10".into())
    );
    fw(
        &engine,
        false,
        json!([{"type": "egress", "protocol": "tcp", "portStart": "7001", "portEnd": "7001",
        "sourceCidrs": ["10.1.1.0/24"], "destCidrs": ["0.0.0.0/0"]}]),
    );
    assert!(
        probe("nbe-vm1", "203.0.113.1", 7000).is_err(),
        "default deny"
    );
    assert_eq!(
        probe_expect("nbe-vm1", "203.0.113.1", 7001, "up:7001 203.0.113.10"),
        Ok("up:7001 203.0.113.10".into())
    );
    fw(&engine, false, json!([]));
    assert!(probe("nbe-vm1", "203.0.113.1", 7001).is_err());

    // A failing command changes nothing (bad input, nothing applied).
    let before = ruleset(&engine);
    let err = engine
        .execute(
            Cmd::AddPortForward,
            &envelope(pf("80;reboot", "10.1.1.5", "80")),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid value for 'public_port': '80;reboot' is not a port (1-65535) or range a-b"
    );
    assert_eq!(err.http_status(), 400);
    assert_eq!(ruleset(&engine), before);

    // 6. release-ip, shutdown, destroy leave nothing behind.
    fw(&engine, true, open_pf);
    exec(
        &engine,
        Cmd::ReleaseIp,
        json!({"public_ip": "203.0.113.11", "public_vlan": "200"}),
    );
    let rules = ruleset(&engine);
    assert!(
        !rules.contains("203.0.113.11 ")
            && !rules.contains("203.0.113.11\n")
            && !rules.contains("10.1.1.10"),
        "{rules}"
    );
    let addrs = output("ip", &["-n", "cs-net-42", "-o", "addr", "show"]);
    assert!(!addrs.contains("203.0.113.11/"), "{addrs}");
    assert!(probe("nbe-up", "203.0.113.11", 80).is_err());
    exec(
        &engine,
        Cmd::ReleaseIp,
        json!({"public_ip": "203.0.113.10", "public_vlan": "200"}),
    );
    assert!(
        !host_links().contains("nbp42-200"),
        "public veth removed with its last address"
    );
    assert!(!ruleset(&engine).contains("snat ip to"));
    assert!(
        host_links().contains("brnbep-200"),
        "the public bridge still has the upstream attached"
    );
    exec(&engine, Cmd::ShutdownNetwork, json!({}));
    assert!(!ns_path("cs-net-42").exists());
    assert!(!host_links().contains("nbg42"));
    assert!(
        dir.path().join("networks/cs-net-42.json").exists(),
        "shutdown keeps the desired state"
    );
    exec(&engine, Cmd::ShutdownNetwork, json!({}));
    exec(&engine, Cmd::DestroyNetwork, json!({}));
    assert!(!dir.path().join("networks/cs-net-42.json").exists());
    assert_eq!(engine.network_count(), 0);

    // A network on a VLAN nobody else uses: its bridges come and go with it.
    exec(
        &engine,
        Cmd::ImplementNetwork,
        json!({"network_id": "43", "vlan": "101", "cidr": "10.3.0.0/24",
        "gateway": "10.3.0.1", "guest_type": "isolated"}),
    );
    exec(
        &engine,
        Cmd::AssignIp,
        json!({"network_id": "43", "public_ip": "198.51.100.20", "public_vlan": "201",
        "public_gateway": "198.51.100.1", "public_cidr": "198.51.100.0/24", "source_nat": "true"}),
    );
    let links = host_links();
    assert!(
        links.contains("brnbeg-101") && links.contains("brnbep-201") && links.contains("nbp43-201"),
        "{links}"
    );
    exec(&engine, Cmd::DestroyNetwork, json!({"network_id": "43"}));
    let links = host_links();
    assert!(
        !links.contains("brnbeg-101") && !links.contains("brnbep-201") && !links.contains("nbg43"),
        "{links}"
    );
    assert!(!ns_path("cs-net-43").exists());
    assert_eq!(
        std::fs::read_dir(dir.path().join("networks"))
            .unwrap()
            .count(),
        0
    );
}

/// The burst role: applies forwards one by one, printing `ack <n>` after each
/// acknowledged command, until killed.
fn burst(state_dir: &Path) {
    let engine = open_engine(state_dir);
    let mut out = std::io::stdout().lock();
    for i in 0..2000u32 {
        let port = (10_000 + i).to_string();
        exec(&engine, Cmd::AddPortForward, pf(&port, "10.1.1.5", "22"));
        writeln!(out, "ack {i}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn restart_safety() {
    if let Ok(dir) = std::env::var(ROLE_ENV) {
        burst(Path::new(&dir));
        return;
    }
    if netbridge_testbed::isolate("restart_safety") {
        return;
    }
    topology();
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = open_engine_nft_exec(dir.path());
        implement(&engine);
        exec(&engine, Cmd::AddPortForward, pf("2222", "10.1.1.5", "22"));
        fw(
            &engine,
            true,
            json!([{"type": "ingress", "protocol": "tcp", "portStart": "2222",
            "portEnd": "2222", "publicIp": "203.0.113.10"}]),
        );
        assert_eq!(
            probe_expect("nbe-up", "203.0.113.10", 2222, "vm1:22 203.0.113.1"),
            Ok("vm1:22 203.0.113.1".into())
        );
    }

    // kill -9 in the middle of a burst; restart converges to what was acknowledged.
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "restart_safety",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_ENV, dir.path())
        .env_remove(netbridge_testbed::ISOLATED_CHILD_ENV)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = None;
    let reader = BufReader::new(child.stdout.take().unwrap());
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("ack ") {
            let n: u32 = n.trim().parse().unwrap();
            acked = Some(n);
            if n >= 40 {
                break;
            }
        }
    }
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let acked = acked.expect("the burst acknowledged commands");
    let engine = open_engine(dir.path());
    let rules = ruleset(&engine);
    for i in 0..=acked {
        assert!(
            rules.contains(&format!("tcp dport {} dnat ip to 10.1.1.5:22", 10_000 + i)),
            "forward {i} lost"
        );
    }
    let held = engine.networks();
    let forwards = held[0]["port_forwards"].as_u64().unwrap();
    assert!(
        forwards == u64::from(acked) + 2 || forwards == u64::from(acked) + 3,
        "{forwards} vs {acked}"
    );
    assert_eq!(
        probe_expect("nbe-up", "203.0.113.10", 2222, "vm1:22 203.0.113.1"),
        Ok("vm1:22 203.0.113.1".into())
    );
    assert_eq!(
        probe_expect("nbe-vm1", "203.0.113.1", 7000, "up:7000 203.0.113.10"),
        Ok("up:7000 203.0.113.10".into())
    );
    drop(engine);

    // The namespace deleted by hand (a reboot): a restart brings connectivity back.
    run("ip", &["netns", "del", "cs-net-42"]);
    // The kernel frees a deleted namespace's links asynchronously.
    for _ in 0..100 {
        if !host_links().contains("nbg42") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(probe("nbe-up", "203.0.113.10", 2222).is_err());
    let engine = open_engine(dir.path());
    let back = probe_expect("nbe-up", "203.0.113.10", 2222, "vm1:22 203.0.113.1");
    if back.is_err() {
        println!("host: {}", host_links());
        println!("ns: {}", output("ip", &["-n", "cs-net-42", "-o", "addr"]));
        println!("route: {}", output("ip", &["-n", "cs-net-42", "route"]));
        println!("up neigh: {}", output("ip", &["-n", "nbe-up", "neigh"]));
        println!("{}", ruleset(&engine));
    }
    assert_eq!(back, Ok("vm1:22 203.0.113.1".into()));
    assert_eq!(
        probe_expect("nbe-vm1", "203.0.113.1", 7000, "up:7000 203.0.113.10"),
        Ok("up:7000 203.0.113.10".into())
    );
    assert_eq!(engine.network_count(), 1);

    // Ruleset flushed by hand: the same restart repairs it.
    drop(engine);
    run(
        "ip",
        &["netns", "exec", "cs-net-42", "nft", "flush", "ruleset"],
    );
    let engine = open_engine(dir.path());
    assert_eq!(
        probe_expect("nbe-up", "203.0.113.10", 2222, "vm1:22 203.0.113.1"),
        Ok("vm1:22 203.0.113.1".into())
    );

    // A command whose ruleset cannot be installed fails with 500 and leaves
    // the previous desired state and ruleset in force.
    let state_file = dir.path().join("networks/cs-net-42.json");
    let saved = std::fs::read(&state_file).unwrap();
    let before = ruleset(&engine);
    let broken = Engine::open_with(
        EngineConfig {
            state_dir: dir.path().to_path_buf(),
            guest_device: "nbeg".into(),
            public_device: "nbep".into(),
        },
        ApplierConfig {
            use_libnftables: false,
            nft_program: "/bin/false".into(),
            ..ApplierConfig::default()
        },
    )
    .unwrap();
    let err = broken
        .execute(Cmd::AddPortForward, &envelope(pf("3333", "10.1.1.5", "22")))
        .unwrap_err();
    assert_eq!(err.http_status(), 500, "{err}");
    assert!(
        err.to_string().starts_with("apply failed: /bin/false -f -"),
        "{err}"
    );
    assert_eq!(std::fs::read(&state_file).unwrap(), saved);
    assert_eq!(ruleset(&engine), before);
    assert_eq!(
        probe_expect("nbe-up", "203.0.113.10", 2222, "vm1:22 203.0.113.1"),
        Ok("vm1:22 203.0.113.1".into())
    );
    drop(broken);

    exec(&engine, Cmd::DestroyNetwork, json!({}));
}

#[test]
fn parallel_networks_then_nothing_left() {
    if netbridge_testbed::isolate("parallel_networks_then_nothing_left") {
        return;
    }
    run("ip", &["link", "set", "lo", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path());
    // Three threads, two networks each, sharing the guest and public bridges.
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let engine = &engine;
            s.spawn(move || {
                for k in 0..2u64 {
                    let id = 100 + t * 2 + k;
                    exec(engine, Cmd::ImplementNetwork, json!({"network_id": id.to_string(), "vlan": "100",
                        "cidr": format!("10.9.{id}.0/24"), "gateway": format!("10.9.{id}.1")}));
                    exec(engine, Cmd::AssignIp, json!({"network_id": id.to_string(),
                        "public_ip": format!("198.51.100.{id}"), "public_vlan": "200",
                        "public_gateway": "198.51.100.1", "public_cidr": "198.51.100.0/24", "source_nat": "true"}));
                }
            });
        }
    });
    assert_eq!(engine.network_count(), 6);
    let links = host_links();
    for id in 100..106u64 {
        assert!(ns_path(&format!("cs-net-{id}")).exists());
        assert!(
            links.contains(&format!("nbg{id}")) && links.contains(&format!("nbp{id}-200")),
            "{links}"
        );
        let rules = engine.installed_ruleset(id).unwrap().unwrap();
        assert!(
            rules.contains(&format!("snat ip to 198.51.100.{id}")),
            "{rules}"
        );
    }
    std::thread::scope(|s| {
        for id in 100..106u64 {
            let engine = &engine;
            s.spawn(move || {
                exec(
                    engine,
                    Cmd::DestroyNetwork,
                    json!({"network_id": id.to_string()}),
                )
            });
        }
    });
    let links = host_links();
    assert!(
        !links.contains("nbg") && !links.contains("nbp") && !links.contains("brnbe"),
        "{links}"
    );
    assert_eq!(std::fs::read_dir("/run/netns").unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(dir.path().join("networks"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(engine.networks(), json!([]));
}

// Through the real daemon (`netbridge-executor` over signed HTTPS, hosts
// with their own mount namespaces), driven by the testbed library.

/// Scenario 7 through the daemon: `kill -9` of the executor process in the
/// middle of a burst of signed commands, start again, and the network has
/// every acknowledged forward; then a host reboot (its namespaces gone) and
/// connectivity returns without any command.
#[test]
fn http_kill9_mid_burst_then_reboot_converge() {
    use std::sync::atomic::{AtomicU32, Ordering};
    if netbridge_testbed::skip_unless_root("http_kill9_mid_burst_then_reboot_converge") {
        return;
    }
    let mut tb = netbridge_testbed::Testbed::new(
        "nbk",
        netbridge_testbed::TopologyOptions::default().vm("vm1", "10.1.1.10/24", Some("10.1.1.1")),
    );
    let vm1 = tb.vm("vm1").path();
    let upstream = tb.upstream.path();
    let host = tb.host(0);
    host.start_executor().unwrap();
    let details = json!({"host": "h1", "namespace": "cs-net-42"});
    let body = |host: &netbridge_testbed::Host, extra: Value| {
        netbridge_testbed::envelope(
            host,
            details.clone(),
            netbridge_testbed::merged(
                netbridge_testbed::network_payload(42, 100, "10.1.1.1", "10.1.1.0/24"),
                extra,
            ),
        )
    };
    let pf_to_vm1 = |port: u32| {
        json!({"public_ip": "203.0.113.10", "public_port": port.to_string(),
            "private_ip": "10.1.1.10", "private_port": "22", "protocol": "tcp"})
    };
    let steps = [
        ("implement-network", json!({"extension_ip": "10.1.1.1"})),
        (
            "assign-ip",
            json!({"public_ip": "203.0.113.10", "public_vlan": "vlan://200",
            "public_gateway": netbridge_testbed::PUBLIC_GATEWAY, "public_cidr": "203.0.113.0/24", "source_nat": "true"}),
        ),
        ("add-port-forward", pf_to_vm1(2222)),
        (
            "apply-fw-rules",
            json!({"fw_rules": {"default_egress_allow": true, "cidr": "10.1.1.0/24",
            "rules": [{"id": "1", "type": "ingress", "protocol": "tcp", "portStart": "2222",
                "portEnd": "2222", "publicIp": "203.0.113.10", "sourceCidrs": ["0.0.0.0/0"]}]}}),
        ),
    ];
    for (command, extra) in steps {
        let r = host.client().command(command, &body(host, extra));
        assert_eq!(r.status, 200, "{command}: {}", r.body);
    }
    let _ssh = netbridge_testbed::tcp_server(&vm1, "10.1.1.10:22".parse().unwrap(), "vm1");
    let _up = netbridge_testbed::tcp_server(
        &upstream,
        format!("{}:7000", netbridge_testbed::UPSTREAM_ADDR)
            .parse()
            .unwrap(),
        "up",
    );
    let public: SocketAddr = "203.0.113.10:2222".parse().unwrap();
    let upstream_server: SocketAddr = format!("{}:7000", netbridge_testbed::UPSTREAM_ADDR)
        .parse()
        .unwrap();
    // Connectivity must come back; after a restart or reboot the neighbours
    // may need a moment (gratuitous ARP) before the first probe succeeds.
    let check = || {
        let want_in = format!("vm1 {}", netbridge_testbed::PUBLIC_GATEWAY);
        let inbound = netbridge_testbed::eventually(Duration::from_secs(10), || {
            netbridge_testbed::tcp_probe(&upstream, public)
                .ok()
                .filter(|answer| *answer == want_in)
        });
        assert_eq!(
            inbound,
            Some(want_in.clone()),
            "inbound through the forward"
        );
        let outbound = netbridge_testbed::eventually(Duration::from_secs(10), || {
            netbridge_testbed::tcp_probe(&vm1, upstream_server)
                .ok()
                .map(|answer| netbridge_testbed::peer_of(&answer))
                .filter(|peer| peer == "203.0.113.10")
        });
        assert_eq!(outbound.as_deref(), Some("203.0.113.10"), "source NAT");
    };
    check();

    // The burst: 10000.. forwards, one signed request each, counted when acknowledged.
    let bodies: Vec<Vec<u8>> = (0..500)
        .map(|i| body(host, pf_to_vm1(10_000 + i)).to_string().into_bytes())
        .collect();
    let client = host.client();
    let acked = AtomicU32::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            for b in &bodies {
                // The kill ends the burst with a transport error.
                match client.command_raw("add-port-forward", b) {
                    Ok(r) if r.status == 200 => {}
                    _ => break,
                }
                acked.fetch_add(1, Ordering::SeqCst);
            }
        });
        let reached = netbridge_testbed::eventually(Duration::from_secs(60), || {
            (acked.load(Ordering::SeqCst) >= 25).then_some(())
        });
        assert!(reached.is_some(), "the burst did not progress");
        host.restart().unwrap(); // kill -9, then start again
    });
    let acked = acked.load(Ordering::SeqCst);
    println!("burst: {acked} forwards acknowledged before kill -9");
    assert!(acked < 500, "the kill landed after the burst");
    let rules = host
        .exec(&[
            "ip",
            "netns",
            "exec",
            "cs-net-42",
            "nft",
            "list",
            "table",
            "inet",
            "nb",
        ])
        .unwrap();
    for i in 0..acked {
        assert!(
            rules.contains(&format!("tcp dport {} dnat ip to 10.1.1.10:22", 10_000 + i)),
            "forward {i} lost"
        );
    }
    let networks = host.client().networks();
    let held = networks["networks"][0]["port_forwards"]
        .as_u64()
        .unwrap_or(0);
    println!("after restart: {held} forwards held");
    assert!(
        held == u64::from(acked) + 1 || held == u64::from(acked) + 2,
        "{held} held, {acked} acknowledged: {networks}"
    );
    check();

    // A reboot: the router namespace is gone until the executor's reconcile.
    host.reboot().unwrap();
    check();
}

/// What `ip` and the mount table say about the links, addresses, routes
/// and namespace the applier made through netlink in process, a teardown
/// of veths that an older executor made without the leg group, and a
/// kernel refusal that names the operation and leaves nothing behind.
#[test]
fn links_made_in_process_as_ip_sees_them() {
    if netbridge_testbed::isolate("links_made_in_process_as_ip_sees_them") {
        return;
    }
    run("ip", &["link", "set", "lo", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path());
    exec(
        &engine,
        Cmd::ImplementNetwork,
        json!({"network_id": "43", "vlan": "vlan://100", "cidr": "10.4.3.0/24",
            "gateway": "10.4.3.1", "guest_type": "isolated"}),
    );
    exec(
        &engine,
        Cmd::AssignIp,
        json!({"network_id": "43", "public_ip": "203.0.113.43", "public_vlan": "vlan://200",
            "public_gateway": "203.0.113.1", "public_cidr": "203.0.113.0/24", "source_nat": "true"}),
    );

    // A named namespace as `ip netns add` makes it: an nsfs bind mount
    // under a shared /run/netns, usable by `ip netns exec`.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    // The last mount on a point is the one in force.
    let mount = |point: &str| {
        mounts
            .lines()
            .rev()
            .find(|l| l.split_whitespace().nth(4) == Some(point))
            .unwrap_or_else(|| panic!("{point} not mounted:\n{mounts}"))
            .to_string()
    };
    assert!(mount("/run/netns/cs-net-43").contains(" - nsfs "));
    assert!(
        mount("/run/netns").contains(" shared:"),
        "{}",
        mount("/run/netns")
    );
    run("ip", &["netns", "exec", "cs-net-43", "true"]);

    // Host ends enslaved and up, bridges made (no 802.1Q here: plain ones).
    let guest_end = output("ip", &["-o", "link", "show", "nbg43"]);
    assert!(
        guest_end.contains("master brnbeg-100") && guest_end.contains("state UP"),
        "{guest_end}"
    );
    let public_end = output("ip", &["-o", "link", "show", "nbp43-200"]);
    assert!(public_end.contains("master brnbep-200"), "{public_end}");
    // Inside: addresses, loopback, the leg group, the on-link default route.
    let addrs = output("ip", &["-n", "cs-net-43", "-o", "-4", "addr", "show"]);
    assert!(addrs.contains("g43    inet 10.4.3.1/24"), "{addrs}");
    assert!(addrs.contains("p200    inet 203.0.113.43/24"), "{addrs}");
    assert!(addrs.contains("lo    inet 127.0.0.1/8"), "{addrs}");
    let guest_leg = output("ip", &["-n", "cs-net-43", "-d", "link", "show", "g43"]);
    assert!(guest_leg.contains("group 1851944039"), "{guest_leg}");
    let route = output("ip", &["-n", "cs-net-43", "-4", "route", "show", "default"]);
    assert_eq!(route.trim(), "default via 203.0.113.1 dev p200 onlink");

    // Releasing the address removes it; another one on the same leg stays.
    exec(
        &engine,
        Cmd::AssignIp,
        json!({"network_id": "43", "public_ip": "203.0.113.44", "public_vlan": "vlan://200",
            "public_cidr": "203.0.113.0/24"}),
    );
    exec(
        &engine,
        Cmd::ReleaseIp,
        json!({"network_id": "43", "public_ip": "203.0.113.43", "public_vlan": "vlan://200",
            "public_cidr": "203.0.113.0/24"}),
    );
    let addrs = output(
        "ip",
        &["-n", "cs-net-43", "-o", "-4", "addr", "show", "p200"],
    );
    assert!(
        addrs.contains("203.0.113.44/24") && !addrs.contains("203.0.113.43/"),
        "{addrs}"
    );

    // Veths of an older executor carry no group: the teardown removes
    // them all the same, host ends and unused bridges included.
    run(
        "ip",
        &["-n", "cs-net-43", "link", "set", "g43", "group", "default"],
    );
    exec(&engine, Cmd::ShutdownNetwork, json!({"network_id": "43"}));
    let links = host_links();
    assert!(
        !links.contains("nbg43") && !links.contains("nbp43-200"),
        "{links}"
    );
    assert!(
        !links.contains("brnbeg-100") && !links.contains("brnbep-200"),
        "{links}"
    );
    assert!(!ns_path("cs-net-43").exists());
    assert!(!std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains("/run/netns/cs-net-43 "));
    exec(&engine, Cmd::DestroyNetwork, json!({"network_id": "43"}));

    // A change the kernel refuses: the error names it as the `ip`
    // command it stands for, and the teardown leaves nothing.
    let applier = netbridge_executor::applier::Applier::new(ApplierConfig::default());
    let plan = netbridge_executor::planner::LinkPlan {
        namespace: "nbt-refused".into(),
        legs: Vec::new(),
        default_route: Some((Ipv4Addr::new(192, 0, 2, 1), "nosuchdev".into())),
        ipv4_forwarding: false,
        announce: Vec::new(),
    };
    let err = applier.apply_links(&plan, None).unwrap_err().to_string();
    assert_eq!(
        err,
        "ip -n nbt-refused route replace default via 192.0.2.1 dev nosuchdev onlink: No such device (os error 19)"
    );
    applier.teardown("nbt-refused", &[]).unwrap();
    assert!(!ns_path("nbt-refused").exists());
}
