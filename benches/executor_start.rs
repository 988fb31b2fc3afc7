//! Executor start with many persisted networks (root; `cargo bench --bench
//! executor_start`).
//!
//! One emulated host of the testbed runs the release executor. The bench
//! implements `NBS_NETWORKS` isolated networks (default 1,000), each with a
//! source-NAT public address and one ingress firewall rule, then measures
//! how long a new executor process takes until it answers `/v1/health`: the
//! executor opens its engine (which reconciles every persisted network)
//! before it serves, so that is "reconciled and serving". Two cases, each
//! `NBS_ROUNDS` times (default 3):
//!
//! - restart: `kill -9` of the executor, router namespaces stay (a crash or
//!   an upgrade);
//! - reboot: the executor and every namespace it made disappear, the state
//!   directory stays (a host reboot): everything is rebuilt. The clock starts
//!   once the kernel has finished tearing the old namespaces down (their
//!   veth legs are gone from the host), as after a real reboot.
//!
//! After each start it checks that every network is back (the executor's
//! network list, and one namespace's ruleset) and prints the executor's RSS.

use std::time::{Duration, Instant};

use netbridge_testbed::*;
use serde_json::{json, Value};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn details(id: usize) -> Value {
    json!({"host": "h1", "namespace": format!("cs-net-{id}")})
}

fn network(id: usize) -> Value {
    let (a, b) = (id / 250, id % 250);
    network_payload(
        id as u32,
        (1000 + id) as u32,
        &format!("10.{a}.{b}.1"),
        &format!("10.{a}.{b}.0/24"),
    )
}

fn public_ip(id: usize) -> String {
    format!("198.51.{}.{}", 100 + id / 250, id % 250 + 2)
}

fn send(host: &Host, id: usize, command: &str, extra: Value) {
    let payload = merged(network(id), extra);
    let r = host
        .client()
        .command(command, &envelope(host, details(id), payload));
    assert_eq!(r.status, 200, "{command} on network {id}: {}", r.body);
}

fn network_count(host: &Host) -> usize {
    let listed = host.client().networks();
    listed
        .get("networks")
        .and_then(Value::as_array)
        .map(Vec::len)
        .or_else(|| listed.as_array().map(Vec::len))
        .unwrap_or(0)
}

/// Every network is listed and the last one's router has its ruleset.
fn check_restored(host: &Host, networks: usize) {
    let count = network_count(host);
    assert_eq!(count, networks, "networks listed after start");
    let ns = host.router_ns(&format!("cs-net-{networks}"));
    let rules = run_in_ns(&ns, &["nft", "list", "ruleset"]).expect("nft list ruleset");
    assert!(
        rules.contains(&public_ip(networks)),
        "cs-net-{networks} lost its public address rules after start"
    );
}

/// veth links in the host's own namespace: the host ends of the routers'
/// legs are among them until the kernel has torn their namespaces down
/// (the bridges and VLAN devices the executor made there stay).
fn host_links(host: &Host) -> usize {
    host.netns
        .ip(&["-o", "link", "show", "type", "veth"])
        .map(|out| out.lines().count())
        .unwrap_or(0)
}

fn start(host: &mut Host, reboot: bool, links_without_routers: usize) -> Duration {
    if reboot {
        host.power_off().expect("power off");
        // A real reboot starts from an empty kernel; here the old namespaces
        // are still being destroyed in the background, which would compete
        // with the rebuild. Wait until their legs are gone.
        let gone = eventually(Duration::from_secs(600), || {
            (host_links(host) <= links_without_routers).then_some(())
        });
        assert!(
            gone.is_some(),
            "the old router namespaces were not torn down"
        );
    } else {
        host.kill9();
    }
    let begin = Instant::now();
    if let Err(e) = host.start_executor() {
        panic!("executor start: {e}");
    }
    begin.elapsed()
}

fn main() {
    if skip_unless_root("executor_start bench") {
        return;
    }
    let networks = env_usize("NBS_NETWORKS", 1000);
    let rounds = env_usize("NBS_ROUNDS", 3);
    let mut tb = Testbed::new("nbst", TopologyOptions::default());
    let host = tb.host(0);
    host.options.log_level = "info".to_string();
    let links_without_routers = host_links(host);
    host.start_executor().expect("executor start");

    let filled = Instant::now();
    for id in 1..=networks {
        send(host, id, "implement-network", json!({}));
        let ip = public_ip(id);
        send(
            host,
            id,
            "assign-ip",
            json!({"public_ip": ip, "public_vlan": "200", "public_gateway": "198.51.100.1",
                "public_cidr": format!("{ip}/22"), "source_nat": "true"}),
        );
        send(
            host,
            id,
            "apply-fw-rules",
            json!({"fw_rules": {"default_egress_allow": true, "cidr": network(id)["cidr"], "rules": [
                {"id": "1", "type": "ingress", "protocol": "tcp", "portStart": "22", "portEnd": "22",
                 "publicIp": ip, "sourceCidrs": ["0.0.0.0/0"]}]}}),
        );
    }
    let pid = host.executor_pid().unwrap_or(0);
    let (fds, low) = descriptor_counts(pid);
    println!(
        "{networks} networks (implement + source-NAT address + 1 firewall rule) in {:.1} s; executor RSS {:.1} MB, {fds} descriptors ({low} below 1024)",
        filled.elapsed().as_secs_f64(),
        rss_kb(pid) as f64 / 1024.0
    );
    check_restored(host, networks);

    for (case, reboot) in [
        ("restart (namespaces kept)", false),
        ("reboot (rebuilt)", true),
    ] {
        for round in 1..=rounds {
            let took = start(host, reboot, links_without_routers);
            let pid = host.executor_pid().unwrap_or(0);
            let rss = rss_kb(pid) as f64 / 1024.0;
            check_restored(host, networks);
            let (fds, low) = descriptor_counts(pid);
            println!(
                "{case:<28} round {round}: serving after {:>6.2} s, RSS {rss:.1} MB, {fds} descriptors ({low} below 1024)",
                took.as_secs_f64()
            );
        }
    }
    println!("(goal: reconciled and serving in <= 10 s, RSS <= 60 MB)");
}
