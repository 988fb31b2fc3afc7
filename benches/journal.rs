//! Cost of the bridge's failover journal per command (`cargo bench --bench
//! journal`): `record` of an `add-dns-entry` (a new slot, and re-pointing
//! one) and the `head` a sticky `ensure-network-device` reads, for the
//! registry journal (in-process/JNI) and the file journal (entry point), on
//! a network holding 0 and 2,000 records. Prints p50/p99; asserts nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use netbridge_control::dispatch::{CommandJournal, FileJournal};
use netbridge_control::registry::{Registry, RegistryJournal};
use netbridge_protocol::Command;
use serde_json::{json, Value};

fn envelope(i: usize) -> Value {
    json!({
        "physical-network-extension-details": {"hosts": "10.0.0.1", "executor.key": "k"},
        "network-extension-details": {"host": "10.0.0.1", "namespace": "cs-net-42"},
        "payload": {"network_id": "42", "ip": format!("10.100.{}.{}", i / 256, i % 256),
                    "hostname": format!("bench-{i}"), "vlan": "100",
                    "cidr": "10.1.1.0/24", "gateway": "10.1.1.1", "domain": "e2e.test"},
    })
}

fn report(name: &str, mut s: Vec<Duration>) {
    s.sort();
    let q = |f: f64| s[((s.len() - 1) as f64 * f).round() as usize].as_secs_f64() * 1e6;
    println!(
        "{name:<58} n={:<5} p50 {:>8.1} us  p99 {:>8.1} us",
        s.len(),
        q(0.5),
        q(0.99)
    );
}

fn run(label: &str, j: &dyn CommandJournal) {
    let key = "cs-net-42";
    let mut next = 0usize;
    for held in [0usize, 2000] {
        while next < held {
            j.record(key, "10.0.0.1", Command::AddDnsEntry, &envelope(next))
                .expect("record");
            next += 1;
        }
        let mut new = Vec::new();
        for _ in 0..200 {
            let e = envelope(next);
            next += 1;
            let t = Instant::now();
            j.record(key, "10.0.0.1", Command::AddDnsEntry, &e)
                .expect("record");
            new.push(t.elapsed());
        }
        report(&format!("{label}: record, new record ({held}+ held)"), new);
        let mut same = Vec::new();
        for _ in 0..200 {
            let e = envelope(0);
            let t = Instant::now();
            j.record(key, "10.0.0.1", Command::AddDnsEntry, &e)
                .expect("record");
            same.push(t.elapsed());
        }
        report(&format!("{label}: record, re-pointed ({held}+ held)"), same);
        let mut head = Vec::new();
        for _ in 0..500 {
            let t = Instant::now();
            let h = j.head(key).expect("head");
            head.push(t.elapsed());
            assert!(h.host.is_some());
        }
        report(&format!("{label}: head ({held}+ held)"), head);
        next += 1;
    }
    let t = Instant::now();
    let s = j.load(key).expect("load");
    println!(
        "{label}: load of {} entries (a move's replay) {:.1} ms",
        s.entries.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Arc::new(
        Registry::open(&dir.path().join("nb.db"), &dir.path().join("nb.key")).expect("registry"),
    );
    run("registry", &RegistryJournal::new(reg));
    let files = FileJournal::open(dir.path().join("state")).expect("file journal");
    run("file", &files);
}
