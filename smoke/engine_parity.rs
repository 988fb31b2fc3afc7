//! Root smoke tests that the executor's two engines (isolated networks in
//! `engine.rs`, VPCs in `vpc_engine.rs` + `vpc/`) keep one behaviour where
//! they used to differ, with real namespaces, packets and dnsmasq:
//!
//! - the VPC public leg uses the executor's configured public device when
//!   the envelope names none, like an isolated network's;
//! - policy-routing tables of an isolated network come back after a host
//!   reboot and go with the network;
//! - unknown `cs-net-*` and `cs-vpc-*` namespaces get the same start-up
//!   policy (kept and reported; the next implement converges them);
//! - a guest-record command on a VPC tier appends one line to the tier's
//!   record log instead of rewriting the VPC document.
//!
//! Each test re-executes this binary in `unshare --mount --net` with a
//! private tmpfs on `/run/netns` (`netbridge_testbed::isolate`): that
//! network namespace plays the KVM host, so every namespace, bridge and veth
//! made here (prefix `nbd`) vanishes with it, also on failure. The engine
//! is driven in process; daemons it starts are stopped by the commands at
//! the end of each test (and by a guard on failure).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use netbridge_executor::{Engine, EngineConfig};
use netbridge_protocol::Command as Cmd;
use netbridge_testbed::{dig, eventually, netns_path, run, tcp_probe, tcp_server};
use serde_json::{json, Value};

/// Host devices of this host's executor (`--guest-device`, `--public-device`).
const GUEST_DEV: &str = "nbdg";
const PUBLIC_DEV: &str = "nbdp";

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn must(argv: &[&str]) -> String {
    run(argv).unwrap_or_else(|e| panic!("{e}"))
}

fn open_engine(state_dir: &Path) -> Engine {
    Engine::open(EngineConfig {
        state_dir: state_dir.to_path_buf(),
        guest_device: GUEST_DEV.into(),
        public_device: PUBLIC_DEV.into(),
    })
    .expect("engine")
}

/// A state directory dnsmasq (which drops root) can traverse.
fn state_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    dir
}

/// The envelope as CloudStack writes it, without device details: the
/// executor's own configuration decides the devices.
fn envelope(namespace: &str, payload: Value) -> Vec<u8> {
    json!({
        "physical-network-extension-details": {"physicalnetworkname": "pn", "password": "secret"},
        "network-extension-details": {"host": "h1", "namespace": namespace},
        "payload": payload,
    })
    .to_string()
    .into_bytes()
}

fn exec(engine: &Engine, cmd: Cmd, namespace: &str, payload: Value) -> Value {
    engine
        .execute(cmd, &envelope(namespace, payload))
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// A flat `custom-action` (its own body form); the parsed answer message.
fn action(engine: &Engine, network_id: &str, name: &str, params: Value) -> Value {
    let body = json!({"network_id": network_id, "action": name, "action-params": params,
        "physical-network-extension-details": {},
        "network-extension-details": {"namespace": format!("cs-net-{network_id}")}});
    let out = engine
        .execute(Cmd::CustomAction, body.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let stdout: Value =
        serde_json::from_str(out["stdout"].as_str().expect("stdout")).expect("stdout json");
    stdout["message"].clone()
}

/// A namespace with `eth0` on `bridge` (created when missing), an address
/// and optionally a default route: a VM or the upstream router.
fn attach(ns: &str, host_if: &str, bridge: &str, addr: &str, gw: Option<&str>) {
    if run(&["ip", "link", "show", bridge]).is_err() {
        must(&["ip", "link", "add", bridge, "type", "bridge"]);
        must(&["ip", "link", "set", bridge, "up"]);
    }
    must(&["ip", "netns", "add", ns]);
    must(&[
        "ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ]);
    must(&["ip", "link", "set", host_if, "master", bridge, "up"]);
    must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    must(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
    must(&["ip", "-n", ns, "addr", "add", addr, "dev", "eth0"]);
    if let Some(gw) = gw {
        must(&["ip", "-n", ns, "route", "add", "default", "via", gw]);
    }
}

/// Upstream router 203.0.113.1 on the public bridge of `PUBLIC_DEV`, VLAN
/// 200 (`br<public-dev>-200`), with a server reporting the peer on 7000.
fn upstream() -> netbridge_testbed::Server {
    must(&["ip", "link", "set", "lo", "up"]);
    attach(
        "nbd-up",
        "nbdu0",
        &format!("br{PUBLIC_DEV}-200"),
        "203.0.113.1/24",
        None,
    );
    tcp_server(&netns_path("nbd-up"), sa("0.0.0.0:7000"), "up")
}

/// What the upstream server saw of a connection from `vm`: `"up <peer>"`,
/// retried for a while (neighbours learn a rebuilt router's MAC from its
/// gratuitous ARP, which a loaded machine delays).
fn outbound(vm: &str, want: &str) -> Option<String> {
    let mut last = None;
    eventually(Duration::from_secs(10), || {
        let got = tcp_probe(&netns_path(vm), sa("203.0.113.1:7000")).ok();
        if got.as_deref() == Some(want) {
            return got;
        }
        last = got;
        None
    })
    .or(last)
}

fn isolated_payload(network_id: &str) -> Value {
    json!({"network_id": network_id, "vlan": "vlan://100", "cidr": "10.1.1.0/24",
        "gateway": "10.1.1.1", "extension_ip": "10.1.1.1", "guest_type": "isolated"})
}

fn implement_isolated(engine: &Engine) {
    exec(
        engine,
        Cmd::ImplementNetwork,
        "cs-net-42",
        isolated_payload("42"),
    );
    exec(
        engine,
        Cmd::AssignIp,
        "cs-net-42",
        json!({"network_id": "42", "public_ip": "203.0.113.10", "public_vlan": "vlan://200",
            "public_gateway": "203.0.113.1", "public_cidr": "203.0.113.0/24", "source_nat": "true"}),
    );
    exec(
        engine,
        Cmd::ApplyFwRules,
        "cs-net-42",
        json!({"network_id": "42", "fw_rules": {"default_egress_allow": true,
            "cidr": "10.1.1.0/24", "rules": []}}),
    );
}

fn host_links() -> String {
    must(&["ip", "-o", "link", "show"])
}

/// Deletes a router namespace as a reboot does and, with `host_end`, waits
/// until the kernel has freed its veths (their host ends vanish
/// asynchronously; daemons still inside keep the namespace alive).
fn reboot_namespace(ns: &str, host_end: Option<&str>) {
    must(&["ip", "netns", "del", ns]);
    let Some(host_end) = host_end else {
        return;
    };
    let gone = eventually(Duration::from_secs(20), || {
        (!host_links().contains(host_end)).then_some(())
    });
    assert!(gone.is_some(), "{host_end} still present: {}", host_links());
}

/// What a reboot does to the tier daemons a dropped engine left running:
/// each is killed by the PID the engine recorded and waited for (pidfd).
fn kill_recorded_daemons(state: &Path, tiers: &[u32]) {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    for tier in tiers {
        let pid_file = state.join(format!("guest/{VPC_NS}-tier-{tier}/dnsmasq/dnsmasq.pid"));
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            continue;
        };
        let pid: libc::pid_t = text.trim().parse().expect("recorded dnsmasq PID");
        // SAFETY: pidfd_open(2) on a PID the engine recorded; the new
        // descriptor is owned once, below.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            continue; // already gone
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        // SAFETY: pidfd_send_signal(2) through the descriptor held above.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        assert_eq!(sent, 0, "SIGKILL to dnsmasq {pid}");
        let mut exited = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one valid pollfd; bounded so a stuck process fails.
        let ready = unsafe { libc::poll(&mut exited, 1, 60_000) };
        assert_eq!(ready, 1, "dnsmasq {pid} did not exit");
    }
}

const VPC_NS: &str = "cs-vpc-5";

fn vpc_payload() -> Value {
    json!({"vpc_id": "5", "vpc_cidr": "10.1.0.0/16", "public_ip": "203.0.113.10",
        "public_cidr": "203.0.113.0/24", "public_gateway": "203.0.113.1",
        "public_vlan": "vlan://200", "source_nat": "true"})
}

fn tier(id: u32) -> Value {
    json!({"network_id": id.to_string(), "vpc_id": "5", "vlan": format!("vlan://{}", 90 + id),
        "cidr": format!("10.1.{id}.0/24"), "gateway": format!("10.1.{id}.1"),
        "extension_ip": format!("10.1.{id}.1"), "guest_type": "isolated"})
}

fn merged(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

/// Shuts the VPC down when dropped (also when an assertion failed), so no
/// tier daemon outlives the test's namespace.
struct VpcDown<'a>(&'a Engine, Vec<u32>);

impl Drop for VpcDown<'_> {
    fn drop(&mut self) {
        for id in &self.1 {
            let _ = self
                .0
                .execute(Cmd::DestroyNetwork, &envelope(VPC_NS, tier(*id)));
        }
        let _ = self
            .0
            .execute(Cmd::ShutdownVpc, &envelope(VPC_NS, vpc_payload()));
    }
}

/// Regression: `implement-vpc` without `public.network.device` in the
/// envelope put the VPC's public leg on `breth1-<vlan>` (a literal) while an
/// isolated network used the executor's `--public-device`. The VPC must
/// reach upstream through `br<public-dev>-200`, source-NATed.
#[test]
fn vpc_public_leg_uses_the_executors_public_device() {
    if netbridge_testbed::isolate("vpc_public_leg_uses_the_executors_public_device") {
        return;
    }
    let _up = upstream();
    let dir = state_dir();
    let engine = open_engine(dir.path());
    let _down = VpcDown(&engine, vec![11]);
    exec(&engine, Cmd::ImplementVpc, VPC_NS, vpc_payload());
    exec(&engine, Cmd::ImplementNetwork, VPC_NS, tier(11));
    attach(
        "nbd-vm1",
        "nbdv1",
        &format!("br{GUEST_DEV}-101"),
        "10.1.11.5/24",
        Some("10.1.11.1"),
    );

    assert_eq!(
        outbound("nbd-vm1", "up 203.0.113.10").as_deref(),
        Some("up 203.0.113.10"),
        "the tier reaches upstream through the VPC source NAT; links: {}",
        host_links()
    );
    let links = host_links();
    assert!(
        !links.contains("breth1-"),
        "no bridge on the literal eth1: {links}"
    );
    let doc: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("vpcs/cs-vpc-5.json")).expect("VPC state"),
    )
    .expect("VPC state JSON");
    assert_eq!(doc["public_device"], PUBLIC_DEV);
    // A public address of a tier takes the same device.
    exec(
        &engine,
        Cmd::AssignIp,
        VPC_NS,
        merged(
            tier(11),
            json!({"public_ip": "203.0.113.20", "public_cidr": "203.0.113.0/24",
            "public_gateway": "203.0.113.1", "public_vlan": "vlan://200", "source_nat": "false"}),
        ),
    );
    let doc: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("vpcs/cs-vpc-5.json")).expect("VPC state"),
    )
    .expect("VPC state JSON");
    assert_eq!(doc["tiers"]["11"]["public_ips"][0]["device"], PUBLIC_DEV);
}

/// Regression: `pbr-*` tables of an isolated network were neither replayed
/// when the executor reconciled a rebooted host nor deleted with the
/// network, so a re-created network of the same id inherited them.
#[test]
fn isolated_pbr_tables_survive_a_reboot_and_go_with_the_network() {
    if netbridge_testbed::isolate("isolated_pbr_tables_survive_a_reboot_and_go_with_the_network") {
        return;
    }
    let _up = upstream();
    let guest_bridge = format!("br{GUEST_DEV}-100");
    attach(
        "nbd-vm1",
        "nbdv1",
        &guest_bridge,
        "10.1.1.5/24",
        Some("10.1.1.1"),
    );
    attach(
        "nbd-vm2",
        "nbdv2",
        &guest_bridge,
        "10.1.1.6/24",
        Some("10.1.1.1"),
    );
    let dir = state_dir();
    let engine = open_engine(dir.path());
    implement_isolated(&engine);
    let snat = Some("up 203.0.113.10".to_string());
    assert_eq!(outbound("nbd-vm1", "up 203.0.113.10"), snat);

    // vm1's traffic to the public segment is blackholed by policy routing.
    action(
        &engine,
        "42",
        "pbr-create-table",
        json!({"table-id": "100", "table-name": "isp2"}),
    );
    action(
        &engine,
        "42",
        "pbr-add-route",
        json!({"table": "isp2", "route": "blackhole 203.0.113.0/24"}),
    );
    action(
        &engine,
        "42",
        "pbr-add-rule",
        json!({"table": "isp2", "rule": "from 10.1.1.5/32 priority 100"}),
    );
    let vm1 = netns_path("nbd-vm1");
    assert!(tcp_probe(&vm1, sa("203.0.113.1:7000")).is_err());
    assert_eq!(outbound("nbd-vm2", "up 203.0.113.10"), snat);

    // Host reboot: the namespace is gone, the executor starts again.
    drop(engine);
    reboot_namespace("cs-net-42", Some("nbg42"));
    let engine = open_engine(dir.path());
    assert_eq!(
        outbound("nbd-vm2", "up 203.0.113.10"),
        snat,
        "the network is back"
    );
    assert!(
        must(&["ip", "-n", "cs-net-42", "rule", "show"]).contains("100:\tfrom 10.1.1.5 lookup 100"),
        "the policy rule is back"
    );
    assert!(
        must(&["ip", "-n", "cs-net-42", "route", "show", "table", "100"])
            .contains("blackhole 203.0.113.0/24")
    );
    assert!(
        tcp_probe(&vm1, sa("203.0.113.1:7000")).is_err(),
        "vm1 is still policy-routed into the blackhole"
    );

    // Destroy forgets the tables: a network re-created with the same id
    // starts without them.
    exec(
        &engine,
        Cmd::DestroyNetwork,
        "cs-net-42",
        json!({"network_id": "42"}),
    );
    assert!(!dir.path().join("pbr/cs-net-42.json").exists());
    implement_isolated(&engine);
    assert_eq!(
        action(&engine, "42", "pbr-list-tables", json!({})),
        json!([])
    );
    assert!(!must(&["ip", "-n", "cs-net-42", "rule", "show"]).contains("lookup 100"));
    assert_eq!(outbound("nbd-vm1", "up 203.0.113.10"), snat);
    exec(
        &engine,
        Cmd::DestroyNetwork,
        "cs-net-42",
        json!({"network_id": "42"}),
    );
}

/// Links of a hand-made namespace (names only).
fn links_in(ns: &str) -> Vec<String> {
    must(&["ip", "-n", ns, "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// One start-up policy for router namespaces without state, whatever their
/// kind: `cs-net-*` used to be kept while `cs-vpc-*` was deleted. They are
/// kept (the executor cannot tell a leftover from a network whose state it
/// lost or could not read, and deleting cuts live traffic); the next
/// implement of that network or VPC converges the namespace.
#[test]
fn unknown_router_namespaces_are_kept_alike_and_converged_on_implement() {
    if netbridge_testbed::isolate(
        "unknown_router_namespaces_are_kept_alike_and_converged_on_implement",
    ) {
        return;
    }
    must(&["ip", "link", "set", "lo", "up"]);
    for ns in ["cs-net-42", VPC_NS] {
        must(&["ip", "netns", "add", ns]);
        must(&[
            "ip", "-n", ns, "link", "add", "left0", "type", "veth", "peer", "name", "left1",
        ]);
    }
    let dir = state_dir();
    let engine = open_engine(dir.path());
    for ns in ["cs-net-42", VPC_NS] {
        let links = links_in(ns);
        assert!(
            links.contains(&"left0".to_string()) && links.contains(&"left1".to_string()),
            "{ns} kept as it was: {links:?}"
        );
    }
    assert_eq!(engine.network_count(), 0, "nothing is adopted as held");
    drop(engine);
    // A second start keeps them too (nothing was deleted in between).
    let engine = open_engine(dir.path());
    assert!(links_in("cs-net-42").contains(&"left0".to_string()));
    assert!(links_in(VPC_NS).contains(&"left0".to_string()));

    // Implementing converges each namespace to its plan: the leftovers go.
    let _up = upstream();
    implement_isolated(&engine);
    let links = links_in("cs-net-42");
    assert!(!links.iter().any(|l| l.starts_with("left")), "{links:?}");
    assert!(links.contains(&"g42".to_string()), "{links:?}");
    let _down = VpcDown(&engine, vec![]);
    exec(&engine, Cmd::ImplementVpc, VPC_NS, vpc_payload());
    let links = links_in(VPC_NS);
    assert!(!links.iter().any(|l| l.starts_with("left")), "{links:?}");
    exec(
        &engine,
        Cmd::DestroyNetwork,
        "cs-net-42",
        json!({"network_id": "42"}),
    );
}

fn file_lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |t| t.iter().filter(|b| **b == b'\n').count())
}

/// Regression: a guest-record command on a VPC tier rewrote (and fsynced)
/// the whole VPC document, every tier's records included, while an
/// isolated network appends one line to its record log. The tier's records
/// now go to a per-tier record log, replayed on start.
#[test]
fn vpc_tier_records_go_to_a_per_tier_log_and_come_back_after_a_reboot() {
    if netbridge_testbed::isolate(
        "vpc_tier_records_go_to_a_per_tier_log_and_come_back_after_a_reboot",
    ) {
        return;
    }
    let _up = upstream();
    attach(
        "nbd-vm1",
        "nbdv1",
        &format!("br{GUEST_DEV}-101"),
        "10.1.11.5/24",
        Some("10.1.11.1"),
    );
    let vm1 = netns_path("nbd-vm1");
    let dir = state_dir();
    let doc_path = dir.path().join("vpcs/cs-vpc-5.json");
    let log_of = |id: u32| -> PathBuf { dir.path().join(format!("vpcs/cs-vpc-5.tier-{id}.log")) };
    let engine = open_engine(dir.path());
    let down = VpcDown(&engine, vec![11, 12]);
    exec(&engine, Cmd::ImplementVpc, VPC_NS, vpc_payload());
    for id in [11, 12] {
        exec(&engine, Cmd::ImplementNetwork, VPC_NS, tier(id));
        exec(
            &engine,
            Cmd::ConfigDnsSubnet,
            VPC_NS,
            merged(
                tier(id),
                json!({"dns": format!("10.1.{id}.1"), "domain": "tier.test"}),
            ),
        );
    }
    let add = |engine: &Engine, id: u32, host: u32| {
        exec(
            engine,
            Cmd::AddDnsEntry,
            VPC_NS,
            merged(
                tier(id),
                json!({"ip": format!("10.1.{id}.{host}"), "hostname": format!("vm{host}")}),
            ),
        );
    };
    add(&engine, 11, 20);
    add(&engine, 12, 20);
    let doc = std::fs::read(&doc_path).expect("VPC state");
    let (lines11, lines12) = (file_lines(&log_of(11)), file_lines(&log_of(12)));
    for host in 21..26 {
        add(&engine, 11, host);
    }
    assert!(
        std::fs::read(&doc_path).expect("VPC state") == doc,
        "records only: the VPC document is not rewritten"
    );
    assert_eq!(file_lines(&log_of(11)), lines11 + 5, "one line per command");
    assert_eq!(
        file_lines(&log_of(12)),
        lines12,
        "another tier's log is untouched"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(log_of(11))
            .expect("log")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let name = |host: u32| format!("vm{host}.tier.test");
    assert_eq!(
        dig(&vm1, "10.1.11.1", &name(25), "A").expect("dig"),
        ["10.1.11.25"]
    );
    // Removing a record is one line too.
    exec(
        &engine,
        Cmd::RemoveDnsEntry,
        VPC_NS,
        merged(tier(11), json!({"ip": "10.1.11.21"})),
    );
    assert_eq!(file_lines(&log_of(11)), lines11 + 6);
    assert!(std::fs::read(&doc_path).expect("VPC state") == doc);

    // Host reboot: processes and namespace gone, dnsmasq's record shards
    // too; only the document and logs remain.
    std::mem::forget(down);
    drop(engine);
    kill_recorded_daemons(dir.path(), &[11, 12]);
    reboot_namespace(VPC_NS, None);
    let shards = dir.path().join("guest/cs-vpc-5-tier-11/dnsmasq/hosts.d");
    std::fs::remove_dir_all(&shards).expect("remove record shards");
    let engine = open_engine(dir.path());
    let _down = VpcDown(&engine, vec![11, 12]);
    // The VM asks the rebuilt tier gateway at once: its new leg announced
    // itself (gratuitous ARP), as an isolated network's guest leg does.
    let answer = eventually(Duration::from_secs(10), || {
        dig(&vm1, "10.1.11.1", &name(25), "A")
            .ok()
            .filter(|a| !a.is_empty())
    });
    assert_eq!(answer, Some(vec!["10.1.11.25".to_string()]));
    assert_eq!(
        dig(&vm1, "10.1.11.1", &name(21), "A").expect("dig"),
        Vec::<String>::new(),
        "the removed record stays removed"
    );
    // A command that changes more than records writes the document, which
    // then holds every record: the logs are folded into it and removed.
    exec(
        &engine,
        Cmd::ConfigDnsSubnet,
        VPC_NS,
        merged(
            tier(11),
            json!({"dns": "10.1.11.1", "domain": "tier2.test"}),
        ),
    );
    assert!(!log_of(11).exists() && !log_of(12).exists());
    let doc: Value =
        serde_json::from_slice(&std::fs::read(&doc_path).expect("VPC state")).expect("JSON");
    let records = doc["tiers"]["11"]["guest"]["dns_records"]
        .as_object()
        .map(|m| m.len());
    assert_eq!(records, Some(5), "{}", doc["tiers"]["11"]["guest"]);
    // A destroyed tier takes its log with it: a re-created tier of that id
    // starts without records.
    add(&engine, 12, 30);
    assert_eq!(file_lines(&log_of(12)), 1);
    exec(&engine, Cmd::DestroyNetwork, VPC_NS, tier(12));
    assert!(!log_of(12).exists());
}
