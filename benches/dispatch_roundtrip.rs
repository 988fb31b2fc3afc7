//! Round trip of a cheap command (`add-dns-entry`, and a sticky
//! `ensure-network-device`) through (a) the in-process Dispatcher → HTTPS →
//! fake executor, and (b) `netbridge-entrypoint` as a process per command.
//! The fake executor verifies the HMAC signature and answers at once, so
//! the figures are the bridge's own overhead plus loopback TLS.
//!
//! Run: `cargo bench --bench dispatch_roundtrip` (optional env:
//! `NB_BENCH_N` in-process iterations, `NB_BENCH_PROC_N` process runs).

use netbridge_testbed::stand_in as dispatch_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_support::*;
use netbridge_control::api::{ApiConfig, Params};
use netbridge_control::bridge::{Bridge, BridgeConfig};
use netbridge_control::dispatch::{Dispatcher, MemoryJournal};
use serde_json::json;

const KEY: &str = "bench-key";
const BENCH_PN: &str = "0b7c5a1e-2f3d-4e6a-9b8c-7d6e5f4a3b2c";

/// createExtension + registerExtension of the fake; returns the extension id.
fn register(bridge: &Bridge, host: &str, fingerprint: &str) -> String {
    let p = |kv: &[(&str, &str)]| -> Params {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let r = bridge
        .api()
        .call(
            "createExtension",
            &p(&[("name", "nbb-bench"), ("type", "NetworkOrchestrator")]),
        )
        .expect("createExtension");
    let id = r["createextensionresponse"]["extension"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    bridge
        .api()
        .call(
            "registerExtension",
            &p(&[
                ("extensionid", &id),
                ("resourceid", BENCH_PN),
                ("resourcetype", "PhysicalNetwork"),
                ("details[0].key", "hosts"),
                ("details[0].value", host),
                ("details[1].key", "executor.key"),
                ("details[1].value", KEY),
                ("details[2].key", "executor.fingerprint"),
                ("details[2].value", fingerprint),
            ]),
        )
        .expect("registerExtension");
    id
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), samples[samples.len() - 1])
}

fn report(name: &str, samples: Vec<Duration>) -> Duration {
    let n = samples.len();
    let (p50, p99, max) = percentiles(samples);
    println!(
        "{name:<58} n={n:<5} p50={:>9.1} µs  p99={:>9.1} µs  max={:>9.1} µs",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        max.as_secs_f64() * 1e6
    );
    p50
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env_usize("NB_BENCH_N", 3000);
    let proc_n = env_usize("NB_BENCH_PROC_N", 200);
    let cert = TestCert::generate();
    let fake = FakeExecutor::start(&cert, KEY);
    let host = fake.name();
    let det = details(std::slice::from_ref(&host), KEY, &cert.fingerprint());
    let dns = envelope(
        &det,
        device(&host, "cs-net-42"),
        json!({"network_id": "42", "ip": "10.1.1.5", "hostname": "vm1"}),
    );
    let ensure = envelope(
        &det,
        device(&host, "cs-net-42"),
        json!({"network_id": "42", "current_details": serde_json::to_string(&device(&host, "cs-net-42")).unwrap()}),
    );

    // (a) in process, pooled keep-alive connection.
    let d = Dispatcher::new(Arc::new(MemoryJournal::new())).expect("dispatcher");
    let timeout = Duration::from_secs(60);
    for _ in 0..200 {
        d.execute("add-dns-entry", &dns, timeout).expect("warm-up");
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        d.execute("add-dns-entry", &dns, timeout)
            .expect("add-dns-entry");
        samples.push(t.elapsed());
    }
    let a = report("(a) in-process add-dns-entry (HTTPS, keep-alive)", samples);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        d.execute("ensure-network-device", &ensure, timeout)
            .expect("ensure");
        samples.push(t.elapsed());
    }
    report(
        "(a) in-process sticky ensure-network-device (1 probe)",
        samples,
    );
    let mut samples = Vec::with_capacity(n / 10);
    for _ in 0..n / 10 {
        d.client().clear_pool();
        let t = Instant::now();
        d.execute("add-dns-entry", &dns, timeout)
            .expect("add-dns-entry");
        samples.push(t.elapsed());
    }
    report(
        "(a') in-process add-dns-entry, new TLS connection each",
        samples,
    );

    // (a'') the in-process Bridge (JNI's core): registry-backed journal, and
    // the registry form (details decrypted per call, binding kept).
    let bdir = tempfile::tempdir().expect("tempdir");
    let bridge = Bridge::open(BridgeConfig::new(ApiConfig::in_dir(bdir.path()))).expect("bridge");
    for _ in 0..200 {
        bridge
            .execute("add-dns-entry", &dns, timeout)
            .expect("warm-up");
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        bridge
            .execute("add-dns-entry", &dns, timeout)
            .expect("add-dns-entry");
        samples.push(t.elapsed());
    }
    report("(a'') Bridge add-dns-entry (registry journal)", samples);
    let ext_id = register(&bridge, &host, &cert.fingerprint());
    for _ in 0..200 {
        bridge
            .execute_registered(&ext_id, BENCH_PN, "add-dns-entry", &dns, timeout)
            .expect("warm-up");
    }
    for (name, command, body) in [
        (
            "(a'') Bridge add-dns-entry, registry details",
            "add-dns-entry",
            &dns,
        ),
        (
            "(a'') Bridge sticky ensure, registry details + binding",
            "ensure-network-device",
            &ensure,
        ),
    ] {
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            bridge
                .execute_registered(&ext_id, BENCH_PN, command, body, timeout)
                .expect("registry form");
            samples.push(t.elapsed());
        }
        report(name, samples);
    }
    drop(bridge);

    // (b) the entry point, a process per command, file journal.
    let dir = tempfile::tempdir().expect("tempdir");
    let payload = dir.path().join("payload.json");
    std::fs::write(&payload, &dns).expect("payload");
    let ensure_payload = dir.path().join("ensure.json");
    std::fs::write(&ensure_payload, &ensure).expect("payload");
    let bin = netbridge_testbed::workspace_bin("netbridge-entrypoint");
    let run = |command: &str, file: &std::path::Path| {
        let t = Instant::now();
        let out = std::process::Command::new(&bin)
            .args([command, file.to_str().unwrap_or_default(), "60"])
            .env("NETBRIDGE_STATE_DIR", dir.path().join("state"))
            .output()
            .expect("spawn");
        let e = t.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        e
    };
    for _ in 0..10 {
        run("add-dns-entry", &payload);
    }
    let samples: Vec<Duration> = (0..proc_n)
        .map(|_| run("add-dns-entry", &payload))
        .collect();
    let b = report(
        "(b) entry point add-dns-entry (process per command)",
        samples,
    );
    let samples: Vec<Duration> = (0..proc_n)
        .map(|_| run("ensure-network-device", &ensure_payload))
        .collect();
    report("(b) entry point sticky ensure-network-device", samples);
    println!(
        "ratio (b)/(a) p50 add-dns-entry: {:.1}x",
        b.as_secs_f64() / a.as_secs_f64()
    );
}
