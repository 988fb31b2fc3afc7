//! Guest services through the engine with real daemons (root;
//! `cargo bench --bench executor_guest`). Runs in a private mount+network
//! namespace like `executor_apply` and prints p50/p99 of `add-dhcp-entry`
//! (dnsmasq SIGHUP), `add-dns-entry` with few and 2,000 records held, on
//! an isolated network and on one tier of a VPC with 5 tiers
//! (`NBG_BENCH_ONLY_DNS=1` stops after them), `save-vm-data` (encrypted 0600
//! file), `apply-lb-rules` (one rule, 3 backends: changed backends through
//! haproxy's runtime API, a changed frontend by check + graceful reload;
//! and a UDP rule: an nftables ruleset load) and
//! `restore-network` with 1,000 VMs. Metadata requests per second are
//! measured by `benches/services_metadata.rs` (same server).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use netbridge_executor::{Engine, EngineConfig};
use netbridge_protocol::Command as Cmd;
use serde_json::{json, Value};

const CHILD_ENV: &str = "NBG_BENCH_CHILD";
const NET: u64 = 7;

fn envelope(payload: Value) -> Vec<u8> {
    let mut p = payload;
    p["network_id"] = json!(NET.to_string());
    p["vlan"] = json!("100");
    p["cidr"] = json!("10.7.0.0/16");
    p["gateway"] = json!("10.7.0.1");
    json!({"physical-network-extension-details": {"guest.network.device": "nbgg", "public.network.device": "nbgp"},
           "network-extension-details": {}, "payload": p})
    .to_string()
    .into_bytes()
}

fn time(engine: &Engine, cmd: Cmd, payload: Value) -> Duration {
    let body = envelope(payload);
    let start = Instant::now();
    if let Err(e) = engine.execute(cmd, &body) {
        panic!("{cmd}: {e}");
    }
    start.elapsed()
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name:<40} n={:<4} p50 {:>8.2} ms   p99 {:>8.2} ms",
        samples.len(),
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3
    );
}

fn vm_ip(i: u32) -> String {
    format!("10.7.{}.{}", 1 + i / 250, 2 + i % 250)
}

fn vm_mac(i: u32) -> String {
    format!("02:00:00:07:{:02x}:{:02x}", i / 256, i % 256)
}

fn vm_data(i: u32) -> Value {
    json!([
        {"dir": "userdata", "file": "user-data", "content": format!("#cloud-config {i}")},
        {"dir": "metadata", "file": "instance-id", "content": format!("i-{i}")},
        {"dir": "metadata", "file": "local-hostname", "content": format!("vm{i}")},
        {"dir": "metadata", "file": "public-keys", "content": "ssh-ed25519 AAAA bench"}
    ])
}

fn run_bench() {
    let dir = tempfile::tempdir().expect("tempdir");
    // dnsmasq drops root: the state dir's parents must be traversable.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let engine = Engine::open(EngineConfig {
        state_dir: dir.path().to_path_buf(),
        guest_device: "nbgg".into(),
        public_device: "nbgp".into(),
    })
    .expect("engine");
    let scope = json!({"extension_ip": "10.7.0.1", "dns": "192.0.2.53", "domain": "bench.test"});
    time(&engine, Cmd::ImplementNetwork, scope.clone());
    time(
        &engine,
        Cmd::AssignIp,
        json!({"public_ip": "198.51.100.7", "public_vlan": "200",
            "public_gateway": "198.51.100.1", "public_cidr": "198.51.100.0/24", "source_nat": "true"}),
    );
    time(&engine, Cmd::ConfigDhcpSubnet, scope.clone());
    time(&engine, Cmd::ConfigDnsSubnet, scope.clone());

    let dhcp: Vec<Duration> = (0..200u32)
        .map(|i| {
            time(
                &engine,
                Cmd::AddDhcpEntry,
                json!({"mac": vm_mac(i), "ip": vm_ip(i), "hostname": format!("vm{i}"),
                    "default_nic": "true"}),
            )
        })
        .collect();
    report("add-dhcp-entry (dnsmasq HUP)", dhcp);

    // add-dns-entry: does the cost grow with the records held?
    let dns = |from: u32, n: u32| -> Vec<Duration> {
        (from..from + n)
            .map(|i| {
                time(
                    &engine,
                    Cmd::AddDnsEntry,
                    json!({"ip": format!("10.7.{}.{}", 100 + i / 250, 2 + i % 250),
                        "hostname": format!("dns{i}")}),
                )
            })
            .collect()
    };
    report("add-dns-entry (first 200 records)", dns(0, 200));
    dns(200, 1800);
    report("add-dns-entry (2,000+ records held)", dns(2000, 200));
    vpc_tier_dns(&engine);
    if std::env::var_os("NBG_BENCH_ONLY_DNS").is_some() {
        // Stops dnsmasq: it would outlive the benchmark and keep its
        // namespace alive.
        time(&engine, Cmd::DestroyNetwork, json!({}));
        return;
    }

    let vmd: Vec<Duration> = (0..200u32)
        .map(|i| {
            time(
                &engine,
                Cmd::SaveVmData,
                json!({"ip": vm_ip(i), "vm_data": vm_data(i)}),
            )
        })
        .collect();
    report("save-vm-data (4 items)", vmd);

    let lb_rule = |public_port: u32, port: u32| {
        let port = port.to_string();
        json!({"lb_rules": [{"id": "1", "name": "web", "publicIp": "198.51.100.7",
            "publicPort": public_port.to_string(), "privatePort": port, "protocol": "tcp",
            "algorithm": "roundrobin",
            "backends": [{"ip": vm_ip(0), "port": port}, {"ip": vm_ip(1), "port": port},
                         {"ip": vm_ip(2), "port": port}]}]})
    };
    // The first rule starts haproxy (configuration check, start, wait
    // until it listens).
    let start = time(&engine, Cmd::ApplyLbRules, lb_rule(80, 7999));
    println!(
        "apply-lb-rules (first rule: haproxy start)  {:>8.2} ms",
        start.as_secs_f64() * 1e3
    );
    // A different backend port each time: three servers out, three in,
    // through the runtime API of the running process.
    let lb: Vec<Duration> = (0..30u32)
        .map(|rep| time(&engine, Cmd::ApplyLbRules, lb_rule(80, 8000 + rep)))
        .collect();
    report("apply-lb-rules (3 backends changed)", lb);
    // A different public port each time: a new frontend, so a check and a
    // graceful reload.
    let reload: Vec<Duration> = (0..10u32)
        .map(|rep| time(&engine, Cmd::ApplyLbRules, lb_rule(81 + rep, 8029)))
        .collect();
    report("apply-lb-rules (frontend changed: reload)", reload);

    let udp: Vec<Duration> = (0..30u32)
        .map(|rep| {
            // A different backend port each time: a new ruleset every call
            // (nftables DNAT, the whole table replaced in one transaction).
            let port = (9000 + rep).to_string();
            time(
                &engine,
                Cmd::ApplyLbRules,
                json!({"lb_rules": [{"id": "2", "name": "dns", "publicIp": "198.51.100.7",
                    "publicPort": "53", "privatePort": port, "protocol": "udp", "algorithm": "roundrobin",
                    "backends": [{"ip": vm_ip(0), "port": port}, {"ip": vm_ip(1), "port": port},
                                 {"ip": vm_ip(2), "port": port}]}]}),
            )
        })
        .collect();
    report("apply-lb-rules udp (1 rule, 3 backends)", udp);

    let vms: Vec<Value> = (0..1000u32)
        .map(|i| {
            json!({"ip": vm_ip(i), "mac": vm_mac(i), "hostname": format!("vm{i}"),
                "default_nic": "true", "vm_data": vm_data(i)})
        })
        .collect();
    // First call: 1,000 new encrypted VM files (one syncfs), dnsmasq restart.
    let cold = time(
        &engine,
        Cmd::RestoreNetwork,
        json!({"restore_data": {"dhcp_enabled": "true", "dns_enabled": "true",
            "userdata_enabled": "true", "vms": vms.clone()}}),
    );
    println!(
        "restore-network (1,000 VMs, all new files)        {:>8.2} ms",
        cold.as_secs_f64() * 1e3
    );
    let restore: Vec<Duration> = (0..5u32)
        .map(|rep| {
            // Change one VM's user data per repetition so each call writes.
            let mut list = vms.clone();
            list[0]["vm_data"][0]["content"] = json!(format!("#cloud-config rep {rep}"));
            time(
                &engine,
                Cmd::RestoreNetwork,
                json!({"restore_data": {"dhcp_enabled": "true", "dns_enabled": "true",
                    "userdata_enabled": "true", "vms": list}}),
            )
        })
        .collect();
    report("restore-network (1,000 VMs, 1 changed)", restore);

    let destroy = time(&engine, Cmd::DestroyNetwork, json!({}));
    println!(
        "destroy-network (daemons, server, files)  {:>8.2} ms",
        destroy.as_secs_f64() * 1e3
    );
}

const VPC: u64 = 8;
const VPC_TIERS: u64 = 5;

/// A VPC tier: network `80 + k`, VLAN `110 + k`, `10.8.<16k>.0/20`.
fn vpc_tier(k: u64) -> Value {
    json!({"network_id": (80 + k).to_string(), "vpc_id": VPC.to_string(),
        "vlan": (110 + k).to_string(), "cidr": format!("10.8.{}.0/20", 16 * k),
        "gateway": format!("10.8.{}.1", 16 * k), "extension_ip": format!("10.8.{}.1", 16 * k)})
}

fn vpc_time(engine: &Engine, cmd: Cmd, payload: Value) -> Duration {
    let body = json!({"physical-network-extension-details": {"guest.network.device": "nbgg", "public.network.device": "nbgp"},
           "network-extension-details": {"namespace": format!("cs-vpc-{VPC}")}, "payload": payload})
    .to_string()
    .into_bytes();
    let start = Instant::now();
    if let Err(e) = engine.execute(cmd, &body) {
        panic!("{cmd}: {e}");
    }
    start.elapsed()
}

fn merged(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    base
}

/// `add-dns-entry` on one tier of a VPC with 5 tiers (every tier holding
/// records, the measured one 2,000), like the isolated case above.
fn vpc_tier_dns(engine: &Engine) {
    vpc_time(
        engine,
        Cmd::ImplementVpc,
        json!({"vpc_id": VPC.to_string(), "vpc_cidr": "10.8.0.0/16", "public_ip": "198.51.100.8",
            "public_cidr": "198.51.100.0/24", "public_gateway": "198.51.100.1",
            "public_vlan": "200", "source_nat": "true"}),
    );
    for k in 1..=VPC_TIERS {
        vpc_time(engine, Cmd::ImplementNetwork, vpc_tier(k));
        let gw = format!("10.8.{}.1", 16 * k);
        vpc_time(
            engine,
            Cmd::ConfigDnsSubnet,
            merged(vpc_tier(k), json!({"dns": gw, "domain": "bench.test"})),
        );
    }
    let dns = |k: u64, from: u32, n: u32| -> Vec<Duration> {
        (from..from + n)
            .map(|i| {
                vpc_time(
                    engine,
                    Cmd::AddDnsEntry,
                    merged(
                        vpc_tier(k),
                        json!({"ip": format!("10.8.{}.{}", 16 * k as u32 + 1 + i / 250, 2 + i % 250),
                            "hostname": format!("t{k}dns{i}")}),
                    ),
                )
            })
            .collect()
    };
    for k in 2..=VPC_TIERS {
        dns(k, 0, 400);
    }
    report(
        "add-dns-entry VPC tier (first 200, 5 tiers)",
        dns(1, 0, 200),
    );
    dns(1, 200, 1800);
    report(
        "add-dns-entry VPC tier (2,000+ held, 5 tiers)",
        dns(1, 2000, 200),
    );
    for k in 1..=VPC_TIERS {
        vpc_time(engine, Cmd::DestroyNetwork, vpc_tier(k));
    }
    vpc_time(engine, Cmd::ShutdownVpc, json!({"vpc_id": VPC.to_string()}));
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("executor_guest: skipped (needs root)");
        return;
    }
    if std::env::var_os(CHILD_ENV).is_some() {
        // SAFETY: mount(2) with static arguments in our private mount namespace.
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
        let _ = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        run_bench();
        return;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let status = Command::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "--"])
        .arg(exe)
        .args(std::env::args().skip(1))
        .env(CHILD_ENV, "1")
        .status()
        .expect("unshare");
    if !status.success() {
        eprintln!("executor_guest: benchmark failed");
        std::process::exit(1);
    }
}
