//! Round trip of a cheap command (`add-dns-entry`, and a sticky
//! `ensure-network-device`) through (a) the in-process Dispatcher → HTTPS →
//! fake executor, and (b) `netbridge-entrypoint` as a process per command.
//! The fake executor verifies the HMAC signature and answers at once, so
//! the figures are the bridge's own overhead plus loopback TLS.
//!
//! Run: `cargo bench --bench dispatch_roundtrip` (optional env:
//! `NB_BENCH_N` in-process iterations, `NB_BENCH_PROC_N` process runs).

#[path = "../tests/dispatch_support/mod.rs"]
mod dispatch_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_support::*;
use netbridge::dispatch::{Dispatcher, MemoryJournal};
use serde_json::json;

const KEY: &str = "bench-key";

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

    // (b) the entry point, a process per command, file journal.
    let dir = tempfile::tempdir().expect("tempdir");
    let payload = dir.path().join("payload.json");
    std::fs::write(&payload, &dns).expect("payload");
    let ensure_payload = dir.path().join("ensure.json");
    std::fs::write(&ensure_payload, &ensure).expect("payload");
    let bin = env!("CARGO_BIN_EXE_netbridge-entrypoint");
    let run = |command: &str, file: &std::path::Path| {
        let t = Instant::now();
        let out = std::process::Command::new(bin)
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
