//! Executor apply benchmark (root; `cargo bench --bench executor_apply`).
//!
//! Runs the engine in a private mount+network namespace (like the smoke
//! tests) and prints p50/p99 per command: implement-network, assign-ip,
//! add-port-forward, add-static-nat, apply-fw-rules with 1/100/1,000/10,000
//! ingress rules; shutdown-network; the process RSS with 100 networks; and the per-rule
//! baseline (one `ip netns exec … iptables` process per rule, as the
//! reference does) on the same rules, with the ratio.
//! `NBE_BENCH_BASELINE_MAX` caps the baseline rule count (default 1000).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netbridge_executor::{Engine, EngineConfig};
use netbridge_protocol::Command as Cmd;
use serde_json::{json, Value};

const CHILD_ENV: &str = "NBE_BENCH_CHILD";

fn envelope(network_id: u64, payload: Value) -> Vec<u8> {
    let mut p = payload;
    p["network_id"] = json!(network_id.to_string());
    json!({"physical-network-extension-details": {"guest.network.device": "nbeg", "public.network.device": "nbep"},
           "network-extension-details": {}, "payload": p})
    .to_string()
    .into_bytes()
}

fn time(engine: &Engine, cmd: Cmd, network_id: u64, payload: Value) -> Duration {
    let body = envelope(network_id, payload);
    let start = Instant::now();
    if let Err(e) = engine.execute(cmd, &body) {
        panic!("{cmd}: {e}");
    }
    start.elapsed()
}

fn report(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let (p50, p99) = (pick(0.5), pick(0.99));
    println!(
        "{name:<34} n={:<4} p50 {:>9.2} ms   p99 {:>9.2} ms",
        samples.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    p50
}

fn implement_payload(i: u64) -> Value {
    json!({"vlan": "100", "cidr": format!("10.{}.{}.0/24", i / 250, i % 250),
        "gateway": format!("10.{}.{}.1", i / 250, i % 250), "guest_type": "isolated"})
}

fn public_ip(i: u64) -> String {
    format!("198.51.{}.{}", 100 + i / 250, i % 250 + 2)
}

fn ingress_rules(n: usize, public: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"id": i.to_string(), "type": "ingress", "protocol": "tcp",
                "portStart": (1000 + i % 60000).to_string(), "portEnd": (1000 + i % 60000).to_string(),
                "publicIp": public, "sourceCidrs": [format!("10.{}.{}.0/24", i / 250 % 250, i % 250)]})
        })
        .collect()
}

/// One `ip netns exec <ns> iptables -A …` process per rule.
fn baseline(ns: &str, n: usize) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        let src = format!("10.{}.{}.0/24", i / 250 % 250, i % 250);
        let port = (1000 + i % 60000).to_string();
        let ok = Command::new("ip")
            .args([
                "netns", "exec", ns, "iptables", "-A", "FORWARD", "-d", "10.0.0.5", "-s", &src,
                "-p", "tcp", "--dport", &port, "-j", "ACCEPT",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "iptables baseline failed at rule {i}");
    }
    start.elapsed()
}

fn fw_case(engine: &Engine, rules: usize, reps: usize) -> Duration {
    // Every repetition changes the first rule's port, so each apply is
    // a real rebuild (an identical document would be a no-op).
    let samples: Vec<Duration> = (0..reps)
        .map(|rep| {
            let mut list = ingress_rules(rules, &public_ip(3));
            list[0]["portStart"] = json!((100 + rep).to_string());
            list[0]["portEnd"] = json!((100 + rep).to_string());
            let doc = json!({"default_egress_allow": true, "rules": list});
            time(engine, Cmd::ApplyFwRules, 3, json!({"fw_rules": doc}))
        })
        .collect();
    report(&format!("apply-fw-rules {rules} rules"), samples)
}

fn run_bench() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(EngineConfig {
        state_dir: dir.path().to_path_buf(),
        guest_device: "nbeg".into(),
        public_device: "nbep".into(),
    })
    .expect("engine");

    // NBE_BENCH_ONLY_FW=1 runs only the apply-fw-rules cases (network 3
    // implemented with its public IP) to keep iterations short.
    if std::env::var_os("NBE_BENCH_ONLY_FW").is_some() {
        time(&engine, Cmd::ImplementNetwork, 3, implement_payload(3));
        time(
            &engine,
            Cmd::AssignIp,
            3,
            json!({"public_ip": public_ip(3), "public_vlan": "200",
            "public_gateway": "198.51.100.1", "public_cidr": format!("{}/22", public_ip(3)), "source_nat": "true"}),
        );
        for (rules, reps) in [(1usize, 30usize), (100, 20), (1_000, 20), (10_000, 5)] {
            fw_case(&engine, rules, reps);
        }
        let _ = engine.execute(Cmd::DestroyNetwork, &envelope(3, json!({})));
        return;
    }
    let n = 30u64;
    let implement: Vec<Duration> = (1..=n)
        .map(|i| time(&engine, Cmd::ImplementNetwork, i, implement_payload(i)))
        .collect();
    report("implement-network", implement);
    let assign: Vec<Duration> = (1..=n)
        .map(|i| {
            time(&engine, Cmd::AssignIp, i, json!({"public_ip": public_ip(i), "public_vlan": "200",
                "public_gateway": "198.51.100.1", "public_cidr": format!("{}/22", public_ip(i)), "source_nat": "true"}))
        })
        .collect();
    report("assign-ip (first, with its veth)", assign);
    // NBE_BENCH_ONLY_LINKS=1 stops here: implement, assign and shutdown
    // (the commands that change links) without the ruleset cases.
    if std::env::var_os("NBE_BENCH_ONLY_LINKS").is_some() {
        let shutdown: Vec<Duration> = (1..=n)
            .map(|i| time(&engine, Cmd::ShutdownNetwork, i, json!({})))
            .collect();
        report("shutdown-network", shutdown);
        for i in 1..=n {
            let _ = engine.execute(Cmd::DestroyNetwork, &envelope(i, json!({})));
        }
        return;
    }
    let extra: Vec<Duration> = (1..=n)
        .map(|i| {
            time(
                &engine,
                Cmd::AssignIp,
                1,
                json!({"public_ip": format!("203.0.113.{}", i + 10),
                "public_vlan": "200", "public_cidr": "203.0.113.0/24"}),
            )
        })
        .collect();
    report("assign-ip (more on the same leg)", extra);
    for i in n + 1..=100 {
        time(&engine, Cmd::ImplementNetwork, i, implement_payload(i));
        time(
            &engine,
            Cmd::AssignIp,
            i,
            json!({"public_ip": public_ip(i), "public_vlan": "200",
            "public_cidr": format!("{}/22", public_ip(i)), "source_nat": "true"}),
        );
    }
    println!(
        "RSS with {} networks implemented: {:.1} MB",
        engine.network_count(),
        netbridge_testbed::rss_kb(std::process::id()) as f64 / 1024.0
    );

    let pf: Vec<Duration> = (0..200u64)
        .map(|i| {
            time(&engine, Cmd::AddPortForward, 2, json!({"public_ip": public_ip(2),
                "public_port": (2000 + i).to_string(), "private_ip": "10.0.2.5", "private_port": "22", "protocol": "tcp"}))
        })
        .collect();
    let pf_p50 = report("add-port-forward", pf);
    let sn: Vec<Duration> = (1..=n)
        .map(|i| {
            time(
                &engine,
                Cmd::AddStaticNat,
                1,
                json!({"public_ip": format!("203.0.113.{}", i + 10),
                "private_ip": format!("10.0.1.{}", i + 10)}),
            )
        })
        .collect();
    report("add-static-nat", sn);

    let mut fw_p50 = Vec::new();
    for (rules, reps) in [(1usize, 30usize), (100, 20), (1_000, 10), (10_000, 5)] {
        fw_p50.push((rules, fw_case(&engine, rules, reps)));
    }

    let max: usize = std::env::var("NBE_BENCH_BASELINE_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    for (rules, ours) in fw_p50.iter().filter(|(r, _)| *r > 1 && *r <= max) {
        let ns = format!("cs-net-{}", 3);
        let _ = Command::new("ip")
            .args(["netns", "exec", &ns, "iptables", "-F", "FORWARD"])
            .status();
        let theirs = baseline(&ns, *rules);
        println!(
            "baseline per-rule iptables {rules:>6} rules: {:>9.1} ms  (nft transaction {:.1} ms, {:.0}x faster)",
            theirs.as_secs_f64() * 1e3,
            ours.as_secs_f64() * 1e3,
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }
    println!(
        "goals: add-port-forward p50 {:.2} ms (<= 5), fw 1000 {:.1} ms (<= 50), fw 10000 {:.1} ms (<= 500)",
        pf_p50.as_secs_f64() * 1e3,
        fw_p50[2].1.as_secs_f64() * 1e3,
        fw_p50[3].1.as_secs_f64() * 1e3
    );
    // Shutdown of networks with a guest and a public leg: daemons, veths,
    // namespace and nftables context go, the state stays.
    let shutdown: Vec<Duration> = (1..=n)
        .map(|i| time(&engine, Cmd::ShutdownNetwork, i, json!({})))
        .collect();
    report("shutdown-network", shutdown);
    for i in 1..=100 {
        let _ = engine.execute(Cmd::DestroyNetwork, &envelope(i, json!({})));
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("executor_apply: skipped (needs root)");
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
        let _ = env_logger::try_init();
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
        eprintln!("executor_apply: benchmark failed");
        std::process::exit(1);
    }
}
