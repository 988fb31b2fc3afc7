//! Root tests of the VPC building blocks in network namespaces this test
//! creates (prefix `nbv`, removed by Drop guards): ACL chains loaded with real
//! `nft -f` and proven with packets, policy-routing actions against a real
//! namespace, radvd giving a VM a SLAAC address.
//!
//! Without root every test prints a skip line and returns.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netbridge_executor::nft::{Rule, Verdict};
use netbridge_executor::vpc::acl::{parse_acl_rules, TierAcl};
use netbridge_executor::vpc::actions::{
    parse_custom_action, ActionRunner, BuiltinAction, ParsedAction,
};
use netbridge_executor::vpc::ipv6::{forward_rules, render_radvd_conf, Ipv6Network, RaIntervals};
use netbridge_executor::vpc::model::{parse_public_ip, vpc_sysctls, VpcRulesetParts, VpcState};
use netbridge_executor::vpc::pbr::PbrTables;
use serde_json::{json, Value};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    ($name:expr) => {
        if !is_root() {
            println!("skip {}: needs root", $name);
            return;
        }
    };
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

fn must(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("nbv{}{tag}", std::process::id());
        let _ = run(&["ip", "netns", "del", &name]);
        must(&["ip", "netns", "add", &name]);
        must(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }
    fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend_from_slice(args);
        must(&v)
    }
    fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(args);
        run(&v)
    }
    fn sysctl(&self, kv: &str) {
        let out = self.exec(&["sysctl", "-q", "-w", kv]);
        assert!(
            out.status.success(),
            "sysctl {kv}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.0]);
    }
}

/// Connects `a:ifa` with `b:ifb` (created inside the namespaces, never in
/// the root namespace).
fn veth(a: &Netns, ifa: &str, b: &Netns, ifb: &str) {
    a.ip(&[
        "link", "add", ifa, "type", "veth", "peer", "name", ifb, "netns", &b.0,
    ]);
    a.ip(&["link", "set", ifa, "up"]);
    b.ip(&["link", "set", ifb, "up"]);
}

/// Runs `f` on a thread that entered namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("open netns");
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        f()
    })
}

/// TCP servers in a namespace answering every connection with
/// `<name> <peer address>`; stopped on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &Netns, name: &str, ports: &[u16]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in ports {
            let stop = stop.clone();
            let name = name.to_string();
            let (tx, rx) = std::sync::mpsc::channel();
            threads.push(in_netns(&ns.0, move || {
                let l = TcpListener::bind(("::", port)).expect("bind");
                l.set_nonblocking(true).expect("nonblocking");
                let _ = tx.send(());
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, peer)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = writeln!(s, "{name} {}", peer.ip().to_canonical());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
            rx.recv_timeout(Duration::from_secs(5))
                .expect("server ready");
        }
        Servers { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects from namespace `ns` to `addr`; the server's line or None.
fn tcp_from(ns: &Netns, addr: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().expect("addr");
    in_netns(&ns.0, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(1500)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        Some(buf.trim().to_string())
    })
    .join()
    .expect("client thread")
}

fn ping_from(ns: &Netns, addr: &str) -> bool {
    ns.exec(&["ping", "-c", "1", "-W", "1", addr])
        .status
        .success()
}

fn nft_load(ns: &Netns, text: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft -f failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn acl_first_match_and_tier_isolation_with_real_packets() {
    require_root!("acl_first_match_and_tier_isolation_with_real_packets");
    let r = Netns::new("ar");
    let a = Netns::new("aa");
    let b = Netns::new("ab");
    let o = Netns::new("ao");
    veth(&r, "vt11", &a, "eth0");
    veth(&r, "vt12", &b, "eth0");
    veth(&r, "p0", &o, "eth0");
    r.ip(&["addr", "add", "10.1.1.1/24", "dev", "vt11"]);
    r.ip(&["addr", "add", "10.1.2.1/24", "dev", "vt12"]);
    r.ip(&["addr", "add", "203.0.113.10/24", "dev", "p0"]);
    r.sysctl("net.ipv4.ip_forward=1");
    a.ip(&["addr", "add", "10.1.1.10/24", "dev", "eth0"]);
    a.ip(&["route", "add", "default", "via", "10.1.1.1"]);
    b.ip(&["addr", "add", "10.1.2.10/24", "dev", "eth0"]);
    b.ip(&["route", "add", "default", "via", "10.1.2.1"]);
    o.ip(&["addr", "add", "203.0.113.1/24", "dev", "eth0"]);

    let mut vpc = VpcState::new(
        netbridge_protocol::target::VpcId::new(5),
        "10.1.0.0/16".parse().unwrap(),
    )
    .unwrap();
    let snat = parse_public_ip(
        json!({"public_ip": "203.0.113.10", "public_cidr": "203.0.113.0/24",
               "public_gateway": "203.0.113.1", "public_vlan": "untagged"})
        .as_object()
        .unwrap(),
        |_| "p0".to_string(),
    )
    .unwrap();
    vpc.implement(Some(snat)).unwrap();
    vpc.add_tier(
        "11",
        "vt11",
        "10.1.1.1".parse().unwrap(),
        "10.1.1.0/24".parse().unwrap(),
    )
    .unwrap();
    vpc.add_tier(
        "12",
        "vt12",
        "10.1.2.1".parse().unwrap(),
        "10.1.2.0/24".parse().unwrap(),
    )
    .unwrap();
    // Tier 1: ICMP allowed, TCP 22 denied before a broader allow of 22-80,
    // egress to the outside on 8080 denied, all other egress allowed.
    // Tier 2: no ACL applied (CloudStack default: ingress denied, egress open).
    let acl = parse_acl_rules(&json!([
        {"number": "30", "action": "allow", "trafficType": "ingress", "protocol": "tcp",
         "portStart": "22", "portEnd": "80", "sourceCidrs": ["0.0.0.0/0"]},
        {"number": "10", "action": "allow", "trafficType": "ingress", "protocol": "icmp",
         "icmpType": "-1", "icmpCode": "-1", "sourceCidrs": ["0.0.0.0/0"]},
        {"number": "20", "action": "deny", "trafficType": "ingress", "protocol": "tcp",
         "portStart": "22", "portEnd": "22", "sourceCidrs": ["10.1.2.0/24"]},
        {"number": "10", "action": "deny", "trafficType": "egress", "protocol": "tcp",
         "portStart": "8080", "sourceCidrs": ["203.0.113.0/24"]},
        {"number": "20", "action": "allow", "trafficType": "egress", "protocol": "all"}
    ]));
    // Duplicate numbers across directions are refused: renumber egress.
    assert!(acl.is_err());
    let acl = parse_acl_rules(&json!([
        {"number": "30", "action": "allow", "trafficType": "ingress", "protocol": "tcp",
         "portStart": "22", "portEnd": "80", "sourceCidrs": ["0.0.0.0/0"]},
        {"number": "10", "action": "allow", "trafficType": "ingress", "protocol": "icmp",
         "icmpType": "-1", "icmpCode": "-1", "sourceCidrs": ["0.0.0.0/0"]},
        {"number": "20", "action": "deny", "trafficType": "ingress", "protocol": "tcp",
         "portStart": "22", "portEnd": "22", "sourceCidrs": ["10.1.2.0/24"]},
        {"number": "40", "action": "deny", "trafficType": "egress", "protocol": "tcp",
         "portStart": "8080", "sourceCidrs": ["203.0.113.0/24"]},
        {"number": "50", "action": "allow", "trafficType": "egress", "protocol": "all"}
    ]))
    .unwrap();
    vpc.set_acl("11", TierAcl::Applied(acl)).unwrap();
    // Port forwards from the outside into each tier (as the engine renders them).
    let parts = VpcRulesetParts {
        dnat: vec![
            Rule::new(
                "ip daddr 203.0.113.10 tcp dport 2222",
                Verdict::Dnat("10.1.1.10:22".into()),
            ),
            Rule::new(
                "ip daddr 203.0.113.10 tcp dport 8000",
                Verdict::Dnat("10.1.2.10:80".into()),
            ),
        ],
        ..VpcRulesetParts::default()
    };
    nft_load(&r, &vpc.ruleset(&parts).unwrap().render());

    let _sa = Servers::start(&a, "vm1", &[22, 80]);
    let _sb = Servers::start(&b, "vm2", &[80]);
    let _so = Servers::start(&o, "up", &[80, 8080]);

    // Into tier 1 from tier 2: rule 20 (deny 22) wins over rule 30.
    assert_eq!(tcp_from(&b, "10.1.1.10:22"), None, "tcp 22 must be denied");
    // Positive control: another port rule 30 allows.
    assert_eq!(
        tcp_from(&b, "10.1.1.10:80").as_deref(),
        Some("vm1 10.1.2.10")
    );
    assert!(ping_from(&b, "10.1.1.10"), "icmp allowed by rule 10");
    // Into tier 2 (no ACL): denied, whatever tier 1 allows.
    assert_eq!(tcp_from(&a, "10.1.2.10:80"), None);
    assert!(!ping_from(&a, "10.1.2.10"));
    // Tier 1 egress: 8080 outside denied, 80 allowed and source-NATed.
    assert_eq!(tcp_from(&a, "203.0.113.1:8080"), None);
    assert_eq!(
        tcp_from(&a, "203.0.113.1:80").as_deref(),
        Some("up 203.0.113.10")
    );
    // Port forward into tier 1, port 22 from outside: rule 20 only denies
    // 10.1.2.0/24, so rule 30 allows it (CIDRs match exactly).
    assert_eq!(
        tcp_from(&o, "203.0.113.10:2222").as_deref(),
        Some("vm1 203.0.113.1")
    );
    // Port forward into tier 2: its default ACL denies ingress.
    assert_eq!(tcp_from(&o, "203.0.113.10:8000"), None);
    // Tier 1's egress deny never touches tier 2.
    assert_eq!(
        tcp_from(&b, "203.0.113.1:8080").as_deref(),
        Some("up 203.0.113.10")
    );

    // Replacing tier 1's ACL with the default_allow list opens tier 1 only.
    // list-firewall-rules shows the namespace's rules.
    let runner = ActionRunner::default();
    let listed = runner
        .run_builtin(
            &r.0,
            &mut PbrTables::default(),
            &BuiltinAction::ListFirewallRules,
        )
        .unwrap();
    assert_eq!(listed["status"], "success");
    let text = listed["message"].as_str().unwrap();
    assert!(
        text.contains("chain acl_in_11") && text.contains("comment \"acl 20 deny\""),
        "{text}"
    );

    let allow_all = parse_acl_rules(&json!([
        {"number": "1", "action": "allow", "trafficType": "ingress", "protocol": "all", "sourceCidrs": ["0.0.0.0/0"]},
        {"number": "2", "action": "allow", "trafficType": "egress", "protocol": "all", "sourceCidrs": ["0.0.0.0/0"]}
    ]))
    .unwrap();
    vpc.set_acl("11", TierAcl::Applied(allow_all)).unwrap();
    nft_load(&r, &vpc.ruleset(&parts).unwrap().render());
    assert_eq!(
        tcp_from(&b, "10.1.1.10:22").as_deref(),
        Some("vm1 10.1.2.10")
    );
    assert_eq!(tcp_from(&a, "10.1.2.10:80"), None, "tier 2 still closed");
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
        }
    }
    out
}

fn action(
    ns: &Netns,
    runner: &ActionRunner,
    tables: &mut PbrTables,
    name: &str,
    params: Value,
) -> Value {
    let body = json!({"network_id": "42", "action": name, "action-params": params});
    let a = parse_custom_action(body.to_string().as_bytes()).expect("envelope");
    let ParsedAction::Builtin(b) = a.parse_action().expect("action") else {
        panic!("{name} is built in");
    };
    runner.run_builtin(&ns.0, tables, &b).expect(name)
}

#[test]
fn pbr_actions_against_a_real_namespace() {
    require_root!("pbr_actions_against_a_real_namespace");
    let before = snapshot(Path::new("/etc/iproute2"));
    let ns = Netns::new("p");
    let runner = ActionRunner::default();
    let mut t = PbrTables::default();

    let r = action(
        &ns,
        &runner,
        &mut t,
        "pbr-create-table",
        json!({"table-id": "100", "table-name": "isp2"}),
    );
    assert_eq!(
        r,
        json!({"status": "success", "printmessage": "true", "message": "table 'isp2' (100) created"})
    );
    let r = action(&ns, &runner, &mut t, "pbr-list-tables", json!({}));
    assert_eq!(r["message"], json!([{"name": "isp2", "id": 100}]));

    action(
        &ns,
        &runner,
        &mut t,
        "pbr-add-route",
        json!({"table": "isp2", "route": "blackhole 10.99.0.0/16"}),
    );
    action(
        &ns,
        &runner,
        &mut t,
        "pbr-add-rule",
        json!({"table": "isp2", "rule": "from 10.1.1.0/24 priority 100"}),
    );
    // The kernel has them, in table 100 of this namespace only.
    assert!(ns
        .ip(&["route", "show", "table", "100"])
        .contains("blackhole 10.99.0.0/16"));
    assert!(ns
        .ip(&["rule", "show"])
        .contains("100:\tfrom 10.1.1.0/24 lookup 100"));

    let routes = action(
        &ns,
        &runner,
        &mut t,
        "pbr-list-routes",
        json!({"table": "isp2"}),
    );
    let listed = &routes["message"][0];
    assert_eq!(listed["table"], "isp2");
    assert_eq!(listed["routes"][0]["dst"], "10.99.0.0/16");
    assert_eq!(listed["routes"][0]["type"], "blackhole");
    let rules = action(&ns, &runner, &mut t, "pbr-list-rules", json!({}));
    assert_eq!(rules["message"].as_array().map(|a| a.len()), Some(1));
    assert_eq!(rules["message"][0]["priority"], 100);
    assert_eq!(rules["message"][0]["src"], "10.1.1.0");
    assert_eq!(rules["message"][0]["table"], "isp2");

    // The namespace is rebuilt (restart, reboot, failover): the recorded
    // routes and rules come back.
    must(&["ip", "netns", "del", &ns.0]);
    must(&["ip", "netns", "add", &ns.0]);
    assert!(!ns.ip(&["rule", "show"]).contains("lookup 100"));
    runner.replay_pbr(&ns.0, &t).unwrap();
    runner.replay_pbr(&ns.0, &t).unwrap();
    assert!(ns
        .ip(&["route", "show", "table", "100"])
        .contains("blackhole 10.99.0.0/16"));
    assert_eq!(
        ns.ip(&["rule", "show"])
            .matches("100:\tfrom 10.1.1.0/24 lookup 100")
            .count(),
        1
    );

    // Injection never reaches ip.
    let bad = json!({"network_id": "42", "action": "pbr-add-route",
        "action-params": {"table": "isp2", "route": "blackhole 10.98.0.0/16; ip link del lo"}});
    let a = parse_custom_action(bad.to_string().as_bytes()).unwrap();
    assert_eq!(
        a.parse_action().unwrap_err().to_string(),
        "invalid value for 'route': forbidden character ';'"
    );

    action(
        &ns,
        &runner,
        &mut t,
        "pbr-delete-route",
        json!({"table": "isp2", "route": "blackhole 10.99.0.0/16"}),
    );
    action(
        &ns,
        &runner,
        &mut t,
        "pbr-delete-rule",
        json!({"table": "100", "rule": "from 10.1.1.0/24 priority 100"}),
    );
    let routes = action(
        &ns,
        &runner,
        &mut t,
        "pbr-list-routes",
        json!({"table": "isp2"}),
    );
    assert_eq!(routes["message"][0]["routes"], json!([]));
    let rules = action(
        &ns,
        &runner,
        &mut t,
        "pbr-list-rules",
        json!({"table": "isp2"}),
    );
    assert_eq!(rules["message"], json!([]));
    assert!(!ns
        .ip(&["route", "show", "table", "all"])
        .contains("10.99.0.0"));

    // Deleting a table also clears what is left in it.
    action(
        &ns,
        &runner,
        &mut t,
        "pbr-add-route",
        json!({"table": "isp2", "route": "unreachable 10.97.0.0/16"}),
    );
    action(
        &ns,
        &runner,
        &mut t,
        "pbr-add-rule",
        json!({"rule": "fwmark 0x5 lookup isp2 priority 200"}),
    );
    action(
        &ns,
        &runner,
        &mut t,
        "pbr-delete-table",
        json!({"table": "isp2"}),
    );
    assert!(t.tables.is_empty());
    assert!(!ns
        .ip(&["route", "show", "table", "all"])
        .contains("10.97.0.0"));
    assert!(!ns.ip(&["rule", "show"]).contains("lookup 100"));
    let r = action(&ns, &runner, &mut t, "pbr-list-tables", json!({}));
    assert_eq!(r["message"], json!([]));

    assert_eq!(
        snapshot(Path::new("/etc/iproute2")),
        before,
        "/etc/iproute2 changed"
    );
}

/// radvd run by PID, killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn global_v6(ns: &Netns, dev: &str) -> Option<String> {
    let out = ns.ip(&["-j", "-6", "addr", "show", "dev", dev, "scope", "global"]);
    let v: Value = serde_json::from_str(&out).ok()?;
    v.get(0)?
        .get("addr_info")?
        .as_array()?
        .iter()
        .find(|a| {
            a.get("tentative").is_none()
                && a.get("family").and_then(|f| f.as_str()) == Some("inet6")
        })
        .and_then(|a| a.get("local")?.as_str().map(|s| s.to_string()))
}

#[test]
fn radvd_gives_a_vm_a_slaac_address_and_inbound_v6_is_refused() {
    require_root!("radvd_gives_a_vm_a_slaac_address_and_inbound_v6_is_refused");
    if run(&["which", "radvd"]).stdout.is_empty() {
        println!("skip: radvd not installed");
        return;
    }
    let r = Netns::new("6r");
    let v = Netns::new("6v");
    let o = Netns::new("6o");
    r.sysctl("net.ipv6.conf.all.forwarding=1");
    veth(&r, "gl42", &v, "eth0");
    veth(&r, "p0", &o, "eth0");
    let net = Ipv6Network::from_payload(
        json!({"network_ip6_gateway": "2001:db8:42::1", "network_ip6_cidr": "2001:db8:42::/64"})
            .as_object()
            .unwrap(),
    )
    .unwrap()
    .unwrap();
    r.ip(&[
        "addr",
        "add",
        &net.gateway_with_prefix(),
        "dev",
        "gl42",
        "nodad",
    ]);
    r.ip(&["addr", "add", "2001:db8:ff::1/64", "dev", "p0", "nodad"]);
    o.ip(&["addr", "add", "2001:db8:ff::2/64", "dev", "eth0", "nodad"]);
    o.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:42::/64",
        "via",
        "2001:db8:ff::1",
    ]);

    // The IPv6 firewall: forward policy drop, replies allowed, guest egress
    // allowed, ingress into the guest network denied.
    let mut fw = String::from(
        "table inet nbv6 {\n  chain forward {\n    type filter hook forward priority filter; policy drop;\n    ct state established,related accept\n    iifname \"gl42\" accept\n",
    );
    for rule in forward_rules("gl42", &net) {
        fw.push_str(&format!("    {rule}\n"));
    }
    fw.push_str("  }\n}\n");
    nft_load(&r, &fw);

    let dir = tempfile::tempdir().unwrap();
    let conf = render_radvd_conf(
        "gl42",
        &net,
        &[net.gateway],
        Some("example.org"),
        RaIntervals { min: 3, max: 4 },
    )
    .unwrap();
    let conf_path = dir.path().join("radvd.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let pid_path = dir.path().join("radvd.pid");
    let child = Command::new("ip")
        .args(["netns", "exec", &r.0, "radvd", "-n", "-m", "stderr", "-C"])
        .arg(&conf_path)
        .arg("-p")
        .arg(&pid_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("radvd");
    let _radvd = Daemon(child);

    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        if let Some(a) = global_v6(&v, "eth0") {
            break a;
        }
        assert!(Instant::now() < deadline, "no SLAAC address within 30 s");
        std::thread::sleep(Duration::from_millis(250));
    };
    let parsed: std::net::Ipv6Addr = addr.parse().unwrap();
    assert!(net.cidr.contains(&parsed), "{addr} not in {}", net.cidr);
    // The VM learnt its default route from the RA and reaches the gateway.
    assert!(v
        .ip(&["-6", "route", "show", "default"])
        .contains("via fe80::"));
    assert!(ping_from(&v, "2001:db8:42::1"), "ping6 gateway");

    // Outbound from the VM works, unsolicited inbound is refused.
    let _so = Servers::start(&o, "up", &[80]);
    let _sv = Servers::start(&v, "vm", &[80]);
    std::thread::sleep(Duration::from_millis(200));
    let seen = tcp_from(&v, "[2001:db8:ff::2]:80");
    assert_eq!(seen.as_deref(), Some(format!("up {addr}").as_str()));
    assert_eq!(tcp_from(&o, &format!("[{addr}]:80")), None);
}

fn public_ip(ip: &str) -> netbridge_executor::vpc::model::PublicIp {
    parse_public_ip(
        json!({"public_ip": ip, "public_cidr": "203.0.113.0/24",
               "public_gateway": "203.0.113.1", "public_vlan": "untagged"})
        .as_object()
        .unwrap(),
        |_| "p0".to_string(),
    )
    .unwrap()
}

/// Test-side applier: makes `p0`'s addresses match the model (adding and
/// removing only the differences) and loads the namespace ruleset.
fn apply(r: &Netns, vpc: &VpcState, parts: &VpcRulesetParts) {
    let want: Vec<String> = vpc
        .links()
        .get("p0")
        .map(|ips| ips.iter().map(|p| p.ip.to_string()).collect())
        .unwrap_or_default();
    let have = addrs_on(r, "p0");
    for a in want.iter().filter(|a| !have.contains(a)) {
        r.ip(&["addr", "add", &format!("{a}/24"), "dev", "p0"]);
    }
    for a in have.iter().filter(|a| !want.contains(a)) {
        r.ip(&["addr", "del", &format!("{a}/24"), "dev", "p0"]);
    }
    nft_load(r, &vpc.ruleset(parts).unwrap().render());
}

fn addrs_on(ns: &Netns, dev: &str) -> Vec<String> {
    let out = ns.ip(&["-j", "-4", "addr", "show", "dev", dev]);
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v.get(0)
        .and_then(|i| i.get("addr_info"))
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.get("local").and_then(|l| l.as_str()).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn snat_move_and_tier_removal_keep_other_paths_with_real_packets() {
    use netbridge_executor::vpc::model::Owner;
    require_root!("snat_move_and_tier_removal_keep_other_paths_with_real_packets");
    let r = Netns::new("sr");
    let a = Netns::new("sa");
    let b = Netns::new("sb");
    let o = Netns::new("so");
    veth(&r, "vt11", &a, "eth0");
    veth(&r, "vt12", &b, "eth0");
    veth(&r, "p0", &o, "eth0");
    for (k, v) in vpc_sysctls() {
        r.sysctl(&format!("{k}={v}"));
    }
    r.ip(&["addr", "add", "10.1.1.1/24", "dev", "vt11"]);
    r.ip(&["addr", "add", "10.1.2.1/24", "dev", "vt12"]);
    a.ip(&["addr", "add", "10.1.1.10/24", "dev", "eth0"]);
    a.ip(&["route", "add", "default", "via", "10.1.1.1"]);
    b.ip(&["addr", "add", "10.1.2.10/24", "dev", "eth0"]);
    b.ip(&["route", "add", "default", "via", "10.1.2.1"]);
    o.ip(&["addr", "add", "203.0.113.1/24", "dev", "eth0"]);

    let mut vpc = VpcState::new(
        netbridge_protocol::target::VpcId::new(9),
        "10.1.0.0/16".parse().unwrap(),
    )
    .unwrap();
    vpc.implement(Some(public_ip("203.0.113.10"))).unwrap();
    vpc.add_tier(
        "11",
        "vt11",
        "10.1.1.1".parse().unwrap(),
        "10.1.1.0/24".parse().unwrap(),
    )
    .unwrap();
    vpc.add_tier(
        "12",
        "vt12",
        "10.1.2.1".parse().unwrap(),
        "10.1.2.0/24".parse().unwrap(),
    )
    .unwrap();
    let open = parse_acl_rules(&json!([
        {"number": "1", "action": "allow", "trafficType": "ingress", "protocol": "tcp", "portStart": "80"},
        {"number": "2", "action": "allow", "trafficType": "egress", "protocol": "all"}
    ]))
    .unwrap();
    vpc.set_acl("11", TierAcl::Applied(open.clone())).unwrap();
    vpc.set_acl("12", TierAcl::Applied(open)).unwrap();
    // Tier 1: static NAT 203.0.113.20 <-> 10.1.1.10.
    // Tier 2: port forward 203.0.113.30:8000 -> 10.1.2.10:80.
    vpc.acquire(Owner::Tier("11".into()), public_ip("203.0.113.20"))
        .unwrap();
    vpc.acquire(Owner::Tier("12".into()), public_ip("203.0.113.30"))
        .unwrap();
    let tier1_dnat = Rule::new("ip daddr 203.0.113.20", Verdict::Dnat("10.1.1.10".into()));
    let tier1_snat = Rule::new(
        "oifname \"p0\" ip saddr 10.1.1.10",
        Verdict::Snat("203.0.113.20".into()),
    );
    let tier2_dnat = Rule::new(
        "ip daddr 203.0.113.30 tcp dport 8000",
        Verdict::Dnat("10.1.2.10:80".into()),
    );
    let mut parts = VpcRulesetParts {
        dnat: vec![tier1_dnat, tier2_dnat.clone()],
        snat: vec![tier1_snat],
        ..VpcRulesetParts::default()
    };
    apply(&r, &vpc, &parts);
    let _sa = Servers::start(&a, "vm1", &[80]);
    let _sb = Servers::start(&b, "vm2", &[80]);
    let _so = Servers::start(&o, "up", &[80]);

    assert_eq!(
        tcp_from(&a, "203.0.113.1:80").as_deref(),
        Some("up 203.0.113.20")
    );
    assert_eq!(
        tcp_from(&b, "203.0.113.1:80").as_deref(),
        Some("up 203.0.113.10")
    );
    assert_eq!(
        tcp_from(&o, "203.0.113.20:80").as_deref(),
        Some("vm1 203.0.113.1")
    );
    assert_eq!(
        tcp_from(&o, "203.0.113.30:8000").as_deref(),
        Some("vm2 203.0.113.1")
    );

    // update-vpc-source-nat-ip: only the SNAT moves.
    let mv = vpc.update_source_nat(public_ip("203.0.113.40")).unwrap();
    assert_eq!(mv.released.addresses.len(), 1);
    apply(&r, &vpc, &parts);
    assert!(!addrs_on(&r, "p0").contains(&"203.0.113.10".to_string()));
    assert_eq!(
        tcp_from(&b, "203.0.113.1:80").as_deref(),
        Some("up 203.0.113.40")
    );
    assert_eq!(
        tcp_from(&a, "203.0.113.1:80").as_deref(),
        Some("up 203.0.113.20")
    );
    assert_eq!(
        tcp_from(&o, "203.0.113.20:80").as_deref(),
        Some("vm1 203.0.113.1")
    );
    assert_eq!(
        tcp_from(&o, "203.0.113.30:8000").as_deref(),
        Some("vm2 203.0.113.1")
    );

    // Delete tier 1: only its static-NAT address, chains and leg go.
    let removal = vpc.remove_tier("11").unwrap();
    let gone: Vec<String> = removal
        .released
        .addresses
        .iter()
        .map(|p| p.ip.to_string())
        .collect();
    assert_eq!(gone, ["203.0.113.20"]);
    assert!(removal.released.links.is_empty(), "p0 is still used");
    parts = VpcRulesetParts {
        dnat: vec![tier2_dnat],
        snat: vec![],
        ..VpcRulesetParts::default()
    };
    r.ip(&["link", "del", &removal.tier.leg]);
    apply(&r, &vpc, &parts);
    let mut left = addrs_on(&r, "p0");
    left.sort();
    assert_eq!(left, ["203.0.113.30", "203.0.113.40"]);
    assert_eq!(
        tcp_from(&b, "203.0.113.1:80").as_deref(),
        Some("up 203.0.113.40")
    );
    assert_eq!(
        tcp_from(&o, "203.0.113.30:8000").as_deref(),
        Some("vm2 203.0.113.1")
    );
    assert_eq!(tcp_from(&o, "203.0.113.20:80"), None);
    let rules = r.exec(&["nft", "list", "ruleset"]);
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(!rules.contains("acl_in_11") && rules.contains("acl_in_12"));
}

#[test]
fn every_rendered_form_is_accepted_by_nft_and_radvd() {
    require_root!("every_rendered_form_is_accepted_by_nft_and_radvd");
    let r = Netns::new("c");
    let mut vpc = VpcState::new(
        netbridge_protocol::target::VpcId::new(3),
        "10.3.0.0/16".parse().unwrap(),
    )
    .unwrap();
    vpc.implement(Some(public_ip("203.0.113.50"))).unwrap();
    vpc.add_tier(
        "31",
        "vt31",
        "10.3.1.1".parse().unwrap(),
        "10.3.1.0/24".parse().unwrap(),
    )
    .unwrap();
    vpc.add_tier(
        "32",
        "vt32",
        "10.3.2.1".parse().unwrap(),
        "10.3.2.0/24".parse().unwrap(),
    )
    .unwrap();
    let rules = parse_acl_rules(&json!([
        {"number": 1, "action": "allow", "trafficType": "ingress", "protocol": "icmp", "icmpType": 8, "icmpCode": 0,
         "sourceCidrs": ["0.0.0.0/0", "::/0", "2001:db8::/32", "10.0.0.1"]},
        {"number": 2, "action": "deny", "trafficType": "ingress", "protocol": "icmp", "icmpType": -1, "icmpCode": 3},
        {"number": 3, "action": "allow", "trafficType": "ingress", "protocol": "tcp", "portStart": 1000, "portEnd": 2000},
        {"number": 4, "action": "allow", "trafficType": "ingress", "protocol": "udp", "portStart": 53},
        {"number": 5, "action": "deny", "trafficType": "ingress", "protocol": "41", "sourceCidrs": ["2001:db8::1"]},
        {"number": 6, "action": "allow", "trafficType": "egress", "protocol": "all", "sourceCidrs": ["192.0.2.0/24"]},
        {"number": 7, "action": "deny", "trafficType": "egress", "protocol": "icmp", "sourceCidrs": ["2001:db8:1::/48"]},
        {"number": 8, "action": "allow", "trafficType": "egress", "protocol": "tcp", "portStart": 443, "sourceCidrs": ["::/0"]}
    ]))
    .unwrap();
    vpc.set_acl("31", TierAcl::Applied(rules)).unwrap();
    let parts = VpcRulesetParts {
        dnat: vec![Rule::new(
            "ip daddr 203.0.113.60",
            Verdict::Dnat("10.3.1.5".into()),
        )],
        snat: vec![Rule::new(
            "oifname \"p0\" ip saddr 10.3.1.5",
            Verdict::Snat("203.0.113.60".into()),
        )],
        input: vec![Rule::new("iifname \"p0\" tcp dport 80", Verdict::Accept)],
        ..VpcRulesetParts::default()
    };
    let mut text = vpc.ruleset(&parts).unwrap().render();
    let net = Ipv6Network::from_payload(
        json!({"network_ip6_gateway": "2001:db8:31::1", "network_ip6_cidr": "2001:db8:31::/64"})
            .as_object()
            .unwrap(),
    )
    .unwrap()
    .unwrap();
    text.push_str("table inet nbv6check {\n  chain forward {\n    type filter hook forward priority filter; policy drop;\n");
    for rule in forward_rules("vt31", &net) {
        text.push_str(&format!("    {rule}\n"));
    }
    text.push_str(
        "  }\n  chain input {\n    type filter hook input priority filter; policy drop;\n",
    );
    for rule in netbridge_executor::vpc::ipv6::render_ipv6_input_rules("vt31") {
        text.push_str(&format!("    {rule}\n"));
    }
    text.push_str("  }\n}\n");
    nft_load(&r, &text);
    let listed = String::from_utf8_lossy(
        &r.exec(&["nft", "list", "chain", "inet", "nb", "acl_in_31"])
            .stdout,
    )
    .into_owned();
    assert!(
        listed.contains("icmpv6 type echo-request") || listed.contains("icmpv6 type 8"),
        "{listed}"
    );
    assert!(listed.contains("tcp dport 1000-2000"), "{listed}");

    if !run(&["which", "radvd"]).stdout.is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let conf = render_radvd_conf(
            "vt31",
            &net,
            &[net.gateway],
            Some("example.org"),
            RaIntervals::default(),
        )
        .unwrap();
        let path = dir.path().join("radvd.conf");
        std::fs::write(&path, conf).unwrap();
        let out = r.exec(&["radvd", "-c", "-C", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "radvd -c: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
