//! Root smoke test of the VPC building blocks driven through the
//! engine's applier, with real packets: a two-tier VPC planned by
//! `VpcState::plan` (tiers from the engine's `NetworkState`s) and installed
//! by `executor::applier::Applier` — port forwarding and static NAT into the
//! tiers, VPC source NAT, `update-vpc-source-nat-ip`, the reference ACL
//! scenario with inter-tier traffic, deleting tier 1, and a restart
//! (teardown + re-apply). LB (haproxy) is the engine's and not covered here.
//!
//! The test re-executes itself in `unshare --mount --net` with a private
//! tmpfs on `/run/netns`: that network namespace plays the KVM host, so the
//! bridges the applier creates and every namespace (prefix `nbv`) vanish
//! with it, also on failure.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use netbridge_executor::applier::{in_netns, Applier, ApplierConfig};
use netbridge_executor::nft::{Rule, Verdict};
use netbridge_executor::planner::{guest_inner_name, public_inner_name};
use netbridge_executor::state::NetworkState;
use netbridge_executor::vpc::acl::{parse_acl_rules, TierAcl};
use netbridge_executor::vpc::model::{
    parse_vpc_payload, vpc_sysctls, Owner, PublicIp, VpcRulesetParts, VpcState,
};
use netbridge_protocol::envelope::Envelope;
use netbridge_protocol::payload::NetworkRequest;
use netbridge_protocol::validate;
use netbridge_protocol::Command as Cmd;
use serde_json::{json, Value};

fn must(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ns_path(ns: &str) -> std::path::PathBuf {
    Path::new("/run/netns").join(ns)
}

/// TCP servers answering `<name>:<port> <peer>`; threads live as long as the
/// isolated child process.
fn serve(ns: &str, name: &str, ports: &[u16]) {
    for &port in ports {
        let l = in_netns(&ns_path(ns), || TcpListener::bind(("0.0.0.0", port)))
            .expect("netns")
            .expect("bind");
        let name = name.to_string();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let peer = c
                    .peer_addr()
                    .map(|p| p.ip().to_string())
                    .unwrap_or_default();
                let _ = writeln!(c, "{name}:{port} {peer}");
            }
        });
    }
}

fn probe(ns: &str, addr: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().expect("addr");
    in_netns(&ns_path(ns), || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(800)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut line = String::new();
        s.read_to_string(&mut line).ok()?;
        Some(line.trim().to_string())
    })
    .expect("netns")
}

/// Like [`probe`], but retries for a few seconds until the expected answer
/// arrives: right after a namespace is rebuilt, neighbours may still hold the
/// old router MAC until gratuitous ARP lands, which a loaded machine delays.
fn probe_expect(ns: &str, addr: &str, want: &str) -> Option<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = probe(ns, addr);
        if got.as_deref() == Some(want) || std::time::Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ping(ns: &str, ip: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A "VM" or upstream host: a namespace with `eth0` on `bridge`.
fn attach(ns: &str, host_if: &str, bridge: &str, addr: &str, gw: Option<&str>) {
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

/// IPv4 addresses on the VPC's public leg, sorted.
fn public_addrs(ns: &str) -> Vec<String> {
    let out = must(&["ip", "-n", ns, "-4", "-br", "addr", "show", "dev", "p300"]);
    let mut v: Vec<String> = out.split_whitespace().skip(2).map(str::to_string).collect();
    v.sort();
    v
}

fn tier_state(id: &str, vlan: &str, cidr: &str, gw: &str) -> NetworkState {
    let body = json!({"physical-network-extension-details": {}, "payload": {
        "network_id": id, "vpc_id": "5", "vlan": vlan, "cidr": cidr, "gateway": gw,
        "extension_ip": gw, "guest_type": "isolated"}});
    let env = Envelope::parse(body.to_string().as_bytes()).expect("envelope");
    let req = NetworkRequest::parse(Cmd::ImplementNetwork, &env)
        .expect("request")
        .expect("network command");
    let mut s = NetworkState::new(&req, "nbvg");
    s.transition(&req, "nbvp").expect("implement");
    s
}

fn link_for(vlan: &str) -> String {
    public_inner_name(validate::vlan("public_vlan", vlan).expect("vlan"))
}

fn public(ip: &str) -> PublicIp {
    let payload = json!({"vpc_id": "5", "public_ip": ip, "public_cidr": "203.0.113.0/24",
        "public_gateway": "203.0.113.1", "public_vlan": "vlan://300"});
    parse_vpc_payload(payload.as_object().expect("object"), link_for)
        .expect("public ip")
        .source_nat
        .expect("address")
}

fn acl(doc: Value) -> TierAcl {
    TierAcl::Applied(parse_acl_rules(&doc).expect("acl"))
}

#[test]
fn vpc_two_tiers_through_the_engine_applier() {
    if netbridge_testbed::isolate("vpc_two_tiers_through_the_engine_applier") {
        return;
    }
    must(&["ip", "link", "set", "lo", "up"]);
    for br in ["brnbvg-101", "brnbvg-102", "brnbvp-300"] {
        must(&["ip", "link", "add", br, "type", "bridge"]);
        must(&["ip", "link", "set", br, "up"]);
    }
    attach("nbv-up", "nbvu0", "brnbvp-300", "203.0.113.1/24", None);
    attach(
        "nbv-vm1",
        "nbvv1",
        "brnbvg-101",
        "10.1.1.5/24",
        Some("10.1.1.1"),
    );
    attach(
        "nbv-vm2",
        "nbvv2",
        "brnbvg-102",
        "10.1.2.5/24",
        Some("10.1.2.1"),
    );
    serve("nbv-up", "up", &[7000, 7001]);
    serve("nbv-vm1", "vm1", &[22, 80, 8080]);
    serve("nbv-vm2", "vm2", &[22, 80]);

    // implement-vpc with its source-NAT address, then two tiers.
    let payload = json!({"vpc_id": "5", "vpc_cidr": "10.1.0.0/16", "public_ip": "203.0.113.10",
        "public_cidr": "203.0.113.0/24", "public_gateway": "203.0.113.1",
        "public_vlan": "vlan://300", "source_nat": "true"});
    let p = parse_vpc_payload(payload.as_object().expect("object"), link_for).expect("payload");
    let mut vpc = VpcState::new(p.vpc_id, p.cidr.expect("cidr")).expect("vpc");
    vpc.implement(p.source_nat).expect("implement");
    let t11 = tier_state("11", "vlan://101", "10.1.1.0/24", "10.1.1.1");
    let t12 = tier_state("12", "vlan://102", "10.1.2.0/24", "10.1.2.1");
    for t in [&t11, &t12] {
        let cidr = t.cidr.expect("cidr");
        let net = format!("{}/{}", cidr.network().addr, cidr.prefix);
        vpc.add_tier(
            &t.network_id.to_string(),
            &guest_inner_name(t.network_id),
            t.gateway.expect("gw"),
            net.parse().expect("cidr"),
        )
        .expect("tier");
    }
    // Reference ACLs. Tier 1: ICMP allowed, TCP 22 denied, 80/8080 allowed,
    // egress allowed. Tier 2: ICMP and TCP 22 allowed, egress to the
    // outside's port 7001 denied, other egress allowed.
    vpc.set_acl(
        "11",
        acl(json!([
            {"number": "1", "action": "allow", "trafficType": "ingress", "protocol": "icmp", "icmpType": "-1", "icmpCode": "-1"},
            {"number": "2", "action": "deny", "trafficType": "ingress", "protocol": "tcp", "portStart": "22", "portEnd": "22"},
            {"number": "3", "action": "allow", "trafficType": "ingress", "protocol": "tcp", "portStart": "80", "portEnd": "80"},
            {"number": "4", "action": "allow", "trafficType": "ingress", "protocol": "tcp", "portStart": "8080", "portEnd": "8080"},
            {"number": "5", "action": "allow", "trafficType": "egress", "protocol": "all", "sourceCidrs": ["0.0.0.0/0"]}
        ])),
    )
    .expect("acl 11");
    vpc.set_acl(
        "12",
        acl(json!([
            {"number": "1", "action": "allow", "trafficType": "ingress", "protocol": "icmp", "icmpType": "-1", "icmpCode": "-1"},
            {"number": "2", "action": "allow", "trafficType": "ingress", "protocol": "tcp", "portStart": "22", "portEnd": "22"},
            {"number": "3", "action": "deny", "trafficType": "egress", "protocol": "tcp", "portStart": "7001", "sourceCidrs": ["203.0.113.0/24"]},
            {"number": "4", "action": "allow", "trafficType": "egress", "protocol": "all"}
        ])),
    )
    .expect("acl 12");
    // Static NAT .20 <-> vm1 (tier 11); port forwards of both tiers on the
    // source-NAT address (each tier holds a reference to it).
    vpc.acquire(Owner::Tier("11".into()), public("203.0.113.20"))
        .expect("static nat ip");
    vpc.acquire(Owner::Tier("11".into()), public("203.0.113.10"))
        .expect("pf ip");
    vpc.acquire(Owner::Tier("12".into()), public("203.0.113.10"))
        .expect("pf ip");
    let dnat = |m: &str, to: &str| Rule::new(m, Verdict::Dnat(to.into()));
    let tier1_dnat = vec![
        dnat(
            "ip daddr 203.0.113.10 meta l4proto tcp tcp dport 8080",
            "10.1.1.5",
        ),
        dnat("ip daddr 203.0.113.20", "10.1.1.5"),
    ];
    let tier1_snat = vec![Rule::new(
        "oifname \"p300\" ip saddr 10.1.1.5",
        Verdict::Snat("203.0.113.20".into()),
    )];
    let tier2_dnat = vec![dnat(
        "ip daddr 203.0.113.10 meta l4proto tcp tcp dport 2200",
        "10.1.2.5:22",
    )];
    let mut parts = VpcRulesetParts {
        dnat: [tier1_dnat.clone(), tier2_dnat.clone()].concat(),
        snat: tier1_snat.clone(),
        ..VpcRulesetParts::default()
    };

    let applier = Applier::new(ApplierConfig::default());
    let plan = vpc.plan(&[&t11, &t12], "nbvp", &parts).expect("plan");
    applier.apply(&plan, None).expect("apply");
    let ns = vpc.namespace();
    for (k, v) in vpc_sysctls() {
        must(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-q",
            "-w",
            &format!("{k}={v}"),
        ]);
    }
    let mut previous = plan;

    let check_inbound = |what: &str| {
        assert_eq!(
            probe_expect("nbv-up", "203.0.113.10:8080", "vm1:8080 203.0.113.1").as_deref(),
            Some("vm1:8080 203.0.113.1"),
            "{what}: pf tier 1"
        );
        assert_eq!(
            probe_expect("nbv-up", "203.0.113.20:80", "vm1:80 203.0.113.1").as_deref(),
            Some("vm1:80 203.0.113.1"),
            "{what}: static nat"
        );
        assert_eq!(
            probe_expect("nbv-up", "203.0.113.10:2200", "vm2:22 203.0.113.1").as_deref(),
            Some("vm2:22 203.0.113.1"),
            "{what}: pf tier 2"
        );
        assert_eq!(
            probe("nbv-up", "203.0.113.20:22"),
            None,
            "{what}: tier 1 denies 22"
        );
    };

    // 1. Inbound paths and source NAT.
    check_inbound("initial");
    assert_eq!(
        probe_expect("nbv-vm1", "203.0.113.1:7000", "up:7000 203.0.113.20").as_deref(),
        Some("up:7000 203.0.113.20")
    );
    assert_eq!(
        probe_expect("nbv-vm2", "203.0.113.1:7000", "up:7000 203.0.113.10").as_deref(),
        Some("up:7000 203.0.113.10")
    );

    // 3. ACLs between tiers and egress deny.
    assert!(ping("nbv-vm1", "10.1.2.5"), "tier 1 -> tier 2 ping");
    assert!(ping("nbv-vm2", "10.1.1.5"), "tier 2 -> tier 1 ping");
    assert_eq!(probe("nbv-vm2", "10.1.1.5:22"), None, "tier 1 denies 22");
    assert_eq!(
        probe_expect("nbv-vm2", "10.1.1.5:80", "vm1:80 10.1.2.5").as_deref(),
        Some("vm1:80 10.1.2.5")
    );
    assert_eq!(
        probe_expect("nbv-vm1", "10.1.2.5:22", "vm2:22 10.1.1.5").as_deref(),
        Some("vm2:22 10.1.1.5")
    );
    assert_eq!(
        probe("nbv-vm1", "10.1.2.5:80"),
        None,
        "tier 2 allows only 22"
    );
    assert_eq!(
        probe("nbv-vm2", "203.0.113.1:7001"),
        None,
        "tier 2 egress deny"
    );
    assert_eq!(
        probe_expect("nbv-vm1", "203.0.113.1:7001", "up:7001 203.0.113.20").as_deref(),
        Some("up:7001 203.0.113.20")
    );

    // 2. update-vpc-source-nat-ip: VMs now leave with .30; inbound unchanged,
    // and .10 stays because both tiers' port forwards use it.
    let mv = vpc
        .update_source_nat(public("203.0.113.30"))
        .expect("move snat");
    assert!(mv.released.addresses.is_empty(), "the forwards keep .10");
    let plan = vpc.plan(&[&t11, &t12], "nbvp", &parts).expect("plan");
    applier.apply(&plan, Some(&previous)).expect("apply");
    previous = plan;
    assert_eq!(
        probe_expect("nbv-vm2", "203.0.113.1:7000", "up:7000 203.0.113.30").as_deref(),
        Some("up:7000 203.0.113.30")
    );
    assert_eq!(
        probe_expect("nbv-vm1", "203.0.113.1:7000", "up:7000 203.0.113.20").as_deref(),
        Some("up:7000 203.0.113.20")
    );
    check_inbound("after snat move");
    assert_eq!(
        public_addrs(&ns),
        ["203.0.113.10/24", "203.0.113.20/24", "203.0.113.30/24"]
    );

    // 4. Delete tier 1: tier 2's forward, address and egress keep working.
    let removal = vpc.remove_tier("11").expect("tier 11");
    let gone: Vec<String> = removal
        .released
        .addresses
        .iter()
        .map(|a| a.ip.to_string())
        .collect();
    assert_eq!(gone, ["203.0.113.20"], "only tier 1's own address goes");
    assert!(removal.released.links.is_empty());
    parts = VpcRulesetParts {
        dnat: tier2_dnat.clone(),
        snat: vec![],
        ..VpcRulesetParts::default()
    };
    let plan = vpc.plan(&[&t12], "nbvp", &parts).expect("plan");
    applier.apply(&plan, Some(&previous)).expect("apply");
    previous = plan;
    assert_eq!(
        probe_expect("nbv-up", "203.0.113.10:2200", "vm2:22 203.0.113.1").as_deref(),
        Some("vm2:22 203.0.113.1")
    );
    assert_eq!(
        probe_expect("nbv-vm2", "203.0.113.1:7000", "up:7000 203.0.113.30").as_deref(),
        Some("up:7000 203.0.113.30")
    );
    assert_eq!(probe("nbv-up", "203.0.113.20:80"), None);
    assert!(!ping("nbv-vm2", "10.1.1.5"), "tier 1 is gone");
    assert_eq!(public_addrs(&ns), ["203.0.113.10/24", "203.0.113.30/24"]);

    // 5. Restart: shut down everything, re-implement from the same state.
    applier
        .teardown(&ns, &previous.links.legs)
        .expect("teardown");
    assert_eq!(probe("nbv-vm2", "203.0.113.1:7000"), None, "down");
    vpc.add_tier(
        "11",
        &guest_inner_name(11),
        "10.1.1.1".parse().expect("gw"),
        "10.1.1.0/24".parse().expect("cidr"),
    )
    .expect("tier");
    vpc.set_acl(
        "11",
        acl(json!([{"number": "1", "action": "allow", "trafficType": "ingress", "protocol": "tcp", "portStart": "80"}])),
    )
    .expect("acl");
    vpc.acquire(Owner::Tier("11".into()), public("203.0.113.20"))
        .expect("static nat ip");
    parts = VpcRulesetParts {
        dnat: [tier1_dnat, tier2_dnat].concat(),
        snat: tier1_snat,
        ..VpcRulesetParts::default()
    };
    let plan = vpc.plan(&[&t11, &t12], "nbvp", &parts).expect("plan");
    applier.apply(&plan, None).expect("apply");
    for (k, v) in vpc_sysctls() {
        must(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-q",
            "-w",
            &format!("{k}={v}"),
        ]);
    }
    assert_eq!(
        probe_expect("nbv-up", "203.0.113.20:80", "vm1:80 203.0.113.1").as_deref(),
        Some("vm1:80 203.0.113.1")
    );
    assert_eq!(
        probe_expect("nbv-up", "203.0.113.10:2200", "vm2:22 203.0.113.1").as_deref(),
        Some("vm2:22 203.0.113.1")
    );
    assert_eq!(
        probe_expect("nbv-vm2", "203.0.113.1:7000", "up:7000 203.0.113.30").as_deref(),
        Some("up:7000 203.0.113.30")
    );
    assert_eq!(
        probe_expect("nbv-vm1", "203.0.113.1:7000", "up:7000 203.0.113.20").as_deref(),
        Some("up:7000 203.0.113.20")
    );
}
