//! Guest-service command latencies: `restore-network` with 1,000 VMs (model
//! update + dnsmasq rendering + file writes, goal < 1 s) and the p50 of
//! `add-dhcp-entry`, `save-vm-data`, `apply-lb-rules` (1 rule, 3 backends).
//! No daemons are signalled: this measures the executor's own work.

use std::time::{Duration, Instant};

use netbridge_executor::services::dnsmasq::{self, DnsmasqPaths};
use netbridge_executor::services::haproxy;
use netbridge_executor::services::model::{apply, GuestServices, Options};
use netbridge_executor::services::run;
use netbridge_executor::services::store::MetadataStore;
use netbridge_protocol::Command;
use serde_json::{json, Map, Value};

fn p(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn restore_doc(n: usize, tag: &str) -> Value {
    let vms: Vec<Value> = (0..n)
        .map(|i| {
            let ip = format!("10.8.{}.{}", i / 250, i % 250 + 2);
            json!({"ip": ip, "mac": format!("52:54:00:00:{:02x}:{:02x}", i / 256, i % 256),
                "hostname": format!("vm{i}"), "default_nic": "true", "nic_uuid": format!("u{i}"),
                "vm_data": [
                    {"dir":"userdata","file":"user-data","content": format!("#cloud-config\nhostname: vm{i}\n{tag}\n")},
                    {"dir":"metadata","file":"instance-id","content": format!("i-2-{i}-VM")},
                    {"dir":"metadata","file":"local-hostname","content": format!("vm{i}")},
                    {"dir":"metadata","file":"public-keys","content": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchKey bench"},
                    {"dir":"metadata","file":"availability-zone","content": "zone1"}]})
        })
        .collect();
    json!({"network_id":"42","gateway":"10.8.0.1","cidr":"10.8.0.0/16","extension_ip":"10.8.0.1",
        "dns":"198.51.100.53","domain":"bench.example",
        "restore_data":{"dhcp_enabled":"true","dns_enabled":"true","userdata_enabled":"true","vms":vms}})
}

struct Net {
    state: GuestServices,
    store: MetadataStore,
    paths: DnsmasqPaths,
}

/// One full command the way the engine runs it: pure update inside the
/// store's transaction, then render and write dnsmasq files.
fn command(net: &mut Net, cmd: Command, payload: &Map<String, Value>) {
    let o = Options::default();
    let mut st = net.state.clone();
    net.store
        .update(|vms| apply(cmd, payload, &mut st, vms, &o))
        .expect("command");
    net.state = st;
    if let Some(files) = dnsmasq::render(&net.state, &net.paths) {
        let old = run::read_dnsmasq_files(&net.paths);
        run::write_dnsmasq_files(&net.paths, &files, old.as_ref()).expect("write");
    }
    if let Some(cfg) = haproxy::render(&net.state) {
        let _ = cfg.len();
    }
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = DnsmasqPaths::new(dir.path().join("dnsmasq")).expect("paths");
    std::fs::create_dir_all(&paths.dir).expect("mkdir");
    let store = MetadataStore::open(dir.path().join("vmdata"), Some([3u8; 32])).expect("store");
    let mut net = Net {
        state: GuestServices::default(),
        store,
        paths,
    };

    for (label, tag) in [
        ("restore-network 1000 VMs, all new", "a"),
        ("restore-network 1000 VMs, unchanged", "a"),
        ("restore-network 1000 VMs, all user data changed", "b"),
    ] {
        let doc = p(restore_doc(1000, tag));
        let t = Instant::now();
        command(&mut net, Command::RestoreNetwork, &doc);
        println!("{label}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    }
    // Pure part alone (no file I/O).
    let doc = p(restore_doc(1000, "c"));
    let t = Instant::now();
    let mut st = net.state.clone();
    let mut vms = (*net.store.snapshot()).clone();
    apply(
        Command::RestoreNetwork,
        &doc,
        &mut st,
        &mut vms,
        &Options::default(),
    )
    .expect("apply");
    let files = dnsmasq::render(&st, &net.paths).expect("render");
    println!(
        "restore-network 1000 VMs, model + render only: {:.1} ms ({} bytes of dnsmasq files)",
        t.elapsed().as_secs_f64() * 1e3,
        files.conf.len() + files.hosts.len() + files.dhcp_hosts.len()
    );

    let mut add = Vec::new();
    for i in 0..200 {
        let pl = p(
            json!({"mac": format!("52:54:00:aa:{:02x}:{:02x}", i / 256, i % 256),
            "ip": format!("10.8.9.{}", i + 2), "hostname": format!("x{i}"), "default_nic":"true"}),
        );
        let t = Instant::now();
        command(&mut net, Command::AddDhcpEntry, &pl);
        add.push(t.elapsed());
    }
    let mut save = Vec::new();
    for i in 0..200 {
        let pl = p(json!({"ip": format!("10.8.9.{}", i + 2), "vm_data": [
            {"dir":"userdata","file":"user-data","content":"#cloud-config\n"},
            {"dir":"metadata","file":"instance-id","content": format!("i-{i}")},
            {"dir":"password","file":"vm_password","content":"Bench-pw1"}]}));
        let t = Instant::now();
        command(&mut net, Command::SaveVmData, &pl);
        save.push(t.elapsed());
    }
    let mut lb = Vec::new();
    for i in 0..200 {
        let pl = p(
            json!({"lb_rules":[{"id":"1","publicIp":"203.0.113.10","publicPort":"80","privatePort":"8080",
            "algorithm": if i % 2 == 0 {"roundrobin"} else {"leastconn"},
            "backends":[{"ip":"10.8.0.10","port":"8080"},{"ip":"10.8.0.11","port":"8080"},{"ip":"10.8.0.12","port":"8080"}]}]}),
        );
        let t = Instant::now();
        command(&mut net, Command::ApplyLbRules, &pl);
        lb.push(t.elapsed());
    }
    println!("(network holds 1,200 NICs; each command re-renders the dnsmasq files and rewrites the changed ones)");
    println!("p50 add-dhcp-entry: {:.3} ms", p50(add).as_secs_f64() * 1e3);
    println!(
        "p50 save-vm-data:   {:.3} ms",
        p50(save).as_secs_f64() * 1e3
    );
    println!(
        "p50 apply-lb-rules (1 rule, 3 backends, render only): {:.3} ms",
        p50(lb).as_secs_f64() * 1e3
    );
}
