//! The two stores side by side (SQLite file, CloudStack's database on a
//! private MariaDB over loopback TCP): prints figures, asserts nothing.
//!
//! - control plane in process, 1,000 extensions × 10 registrations:
//!   `updateRegisteredExtension` and `listExtensions id=…` p50/p99;
//! - the failover journal per command: `record` of an `add-dns-entry` with
//!   0 and 2,000 entries held, and `head` (what a sticky command reads);
//! - `netbridge-entrypoint`, a process per command, `add-dns-entry` to a TLS
//!   executor stand-in, with the journal in local files and in MariaDB.
//!
//! `cargo bench --bench store` (after `cargo build --release --bins`);
//! `NBS_BENCH_QUICK=1` for fewer samples; `NBS_BENCH_FLUSH=2` runs MariaDB
//! with `innodb_flush_log_at_trx_commit=2` (the log written at each commit,
//! flushed to disk once a second: what Galera deployments, durable through
//! replication, usually run) instead of the default flush at every commit;
//! `NBS_BENCH_ONLY=mariadb` skips the SQLite part; `NBS_BENCH_PARAMS` adds
//! location parameters (e.g. `check_health=false`).

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use netbridge_control::api::{Api, ApiConfig};
use netbridge_control::dispatch::CommandJournal;
use netbridge_control::protocol::Command as NetCommand;
use netbridge_control::registry::{Registry, RegistryJournal, StoreLocation};
use netbridge_testbed::mariadb::MariaDb;
use netbridge_testbed::registry_fill::{fill, params, percentile, physical_network};
use netbridge_testbed::stand_in::{details, device, envelope, FakeExecutor, TestCert};
use serde_json::json;

const EXTENSIONS: usize = 1_000;
const REGISTRATIONS: usize = 10;

fn quick() -> bool {
    std::env::var_os("NBS_BENCH_QUICK").is_some()
}

fn report(label: &str, mut micros: Vec<f64>) {
    micros.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{label:<58} n={:<5} p50={:>9.1} µs  p99={:>9.1} µs",
        micros.len(),
        percentile(&micros, 0.50),
        percentile(&micros, 0.99)
    );
}

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e6
}

fn control_plane(label: &str, config: ApiConfig) {
    let api = Api::open(config).expect("open");
    let setup = Instant::now();
    let ids = fill(&api, EXTENSIONS, REGISTRATIONS);
    println!(
        "[{label}] setup: {EXTENSIONS} extensions x {REGISTRATIONS} registrations in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    let samples = if quick() { 300 } else { 3_000 };
    let mut update = Vec::with_capacity(samples);
    let mut list = Vec::with_capacity(samples);
    for i in 0..samples + 200 {
        let id = &ids[(i * 7919) % EXTENSIONS];
        let host = format!("10.0.{}.{}", i % 250, (i / 250) % 250);
        let d = timed(|| {
            api.call(
                "updateRegisteredExtension",
                &params(&[
                    ("extensionid", id),
                    ("resourceid", &physical_network(i % REGISTRATIONS)),
                    ("resourcetype", "PhysicalNetwork"),
                    ("details[0].hosts", &host),
                    ("details[1].executor.port", "8443"),
                ]),
            )
            .expect("update");
        });
        let l = timed(|| {
            api.call("listExtensions", &params(&[("id", id)]))
                .expect("list");
        });
        if i >= 200 {
            update.push(d);
            list.push(l);
        }
    }
    report(&format!("[{label}] updateRegisteredExtension"), update);
    report(&format!("[{label}] listExtensions id=…"), list);
}

fn dns(n: usize) -> serde_json::Value {
    json!({
        "physical-network-extension-details": {"executor.key": "k"},
        "network-extension-details": {"host": "h1", "namespace": "cs-net-42"},
        "payload": {"network_id": "42", "ip": format!("10.{}.{}.{}", n / 65_536, (n / 256) % 256, n % 256),
                    "hostname": format!("vm-{n}")},
    })
}

fn journal(label: &str, registry: Registry) {
    let j = RegistryJournal::new(Arc::new(registry));
    let n = if quick() { 300 } else { 2_000 };
    j.record(
        "cs-net-42",
        "h1",
        NetCommand::ImplementNetwork,
        &json!({"payload": {"network_id": "42"}}),
    )
    .expect("record");
    let mut first = Vec::new();
    for i in 0..n {
        let d = timed(|| {
            j.record("cs-net-42", "h1", NetCommand::AddDnsEntry, &dns(i))
                .expect("record")
        });
        if i < 200 {
            first.push(d);
        }
    }
    let mut held = Vec::new();
    for i in n..n + 200 {
        held.push(timed(|| {
            j.record("cs-net-42", "h1", NetCommand::AddDnsEntry, &dns(i))
                .expect("record")
        }));
    }
    let mut head = Vec::new();
    for _ in 0..500 {
        head.push(timed(|| {
            j.head("cs-net-42").expect("head");
        }));
    }
    let load = timed(|| {
        j.load("cs-net-42").expect("load");
    });
    report(
        &format!("[{label}] journal record, 0-200 entries held"),
        first,
    );
    report(
        &format!("[{label}] journal record, {n}+ entries held"),
        held,
    );
    report(&format!("[{label}] journal head"), head);
    println!(
        "[{label}] journal load (a move's replay), {} entries: {:.1} ms",
        n + 201,
        load / 1000.0
    );
}

/// `netbridge-entrypoint add-dns-entry` as a process per command.
fn entry_point(label: &str, env: &[(&str, String)], dir: &std::path::Path) {
    let cert = TestCert::generate();
    let fake = FakeExecutor::start(&cert, "bench-key");
    let host = fake.name();
    let det = details(
        std::slice::from_ref(&host),
        "bench-key",
        &cert.fingerprint(),
    );
    let bin = netbridge_testbed::workspace_bin("netbridge-entrypoint");
    let runs = if quick() { 40 } else { 300 };
    let mut times = Vec::new();
    for i in 0..runs + 10 {
        let payload = dir.join(format!("p-{label}-{i}.json"));
        std::fs::write(
            &payload,
            envelope(
                &det,
                device(&host, "cs-net-42"),
                json!({"network_id": "42", "ip": format!("10.1.{}.{}", i / 250, i % 250), "hostname": format!("vm{i}")}),
            ),
        )
        .expect("payload");
        let mut cmd = Command::new(&bin);
        cmd.arg("add-dns-entry").arg(&payload).arg("60");
        cmd.env_remove("NETBRIDGE_DATABASE")
            .env_remove("NETBRIDGE_LOG")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let mut ok = true;
        let d = timed(|| {
            ok = cmd.output().map(|o| o.status.success()).unwrap_or(false);
        });
        assert!(ok, "entry point failed");
        if i >= 10 {
            times.push(d);
        }
    }
    report(
        &format!("[{label}] netbridge-entrypoint add-dns-entry (process)"),
        times,
    );
}

/// The location with `NBS_BENCH_PARAMS` appended.
fn with_params(url: &str) -> String {
    match std::env::var("NBS_BENCH_PARAMS") {
        Ok(p) if !p.is_empty() => format!("{url}?{p}"),
        _ => url.to_string(),
    }
}

fn main() {
    println!(
        "store benchmark: {} cpus, load {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let dir = tempfile::tempdir().expect("tempdir");

    if std::env::var("NBS_BENCH_ONLY").as_deref() != Ok("mariadb") {
        control_plane("sqlite", ApiConfig::in_dir(dir.path().join("cp")));
        journal(
            "sqlite",
            Registry::open(&dir.path().join("j/nb.db"), &dir.path().join("j/k")).expect("open"),
        );
        entry_point(
            "files",
            &[(
                "NETBRIDGE_STATE_DIR",
                dir.path().join("ep").display().to_string(),
            )],
            dir.path(),
        );
    }

    // MariaDB over loopback TCP.
    let flush = std::env::var("NBS_BENCH_FLUSH").unwrap_or_else(|_| "1".into());
    println!("MariaDB: innodb_flush_log_at_trx_commit={flush}");
    let server = MariaDb::start_with(&[&format!("--innodb-flush-log-at-trx-commit={flush}")]);
    let cp = server.cloud_database("bench");
    for r in 0..REGISTRATIONS {
        cp.add_physical_network(&physical_network(r));
    }
    control_plane(
        "mariadb",
        ApiConfig {
            database: StoreLocation::parse(&with_params(&cp.url)).expect("url"),
            key_file: dir.path().join("m.key"),
        },
    );
    let jdb = server.cloud_database("bench");
    journal(
        "mariadb",
        Registry::open_at(
            &StoreLocation::parse(&with_params(&jdb.url)).expect("url"),
            &dir.path().join("m.key"),
        )
        .expect("open"),
    );
    let edb = server.cloud_database("bench");
    entry_point(
        "mariadb",
        &[
            ("NETBRIDGE_DATABASE", with_params(&edb.url)),
            (
                "NETBRIDGE_KEY_FILE",
                dir.path().join("m.key").display().to_string(),
            ),
            (
                "NETBRIDGE_STATE_DIR",
                dir.path().join("ep2").display().to_string(),
            ),
        ],
        dir.path(),
    );
    drop(server);
}
