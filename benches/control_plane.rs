//! Control-plane API latency with 1,000 extensions × 10 registrations:
//! `updateRegisteredExtension` and `listExtensions id=…` p50/p99, single thread
//! and 16 threads. Prints figures; asserts nothing.

use std::time::Instant;

use netbridge_control::api::{Api, ApiConfig};
use netbridge_testbed::registry_fill::{fill, params, percentile, physical_network};

const EXTENSIONS: usize = 1_000;
const REGISTRATIONS: usize = 10;
const SAMPLES: usize = 5_000;

fn report(label: &str, mut micros: Vec<f64>) {
    micros.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{label:<48} n={:<6} p50={:>8.1} µs  p99={:>8.1} µs",
        micros.len(),
        percentile(&micros, 0.50),
        percentile(&micros, 0.99)
    );
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::open(ApiConfig::in_dir(dir.path())).expect("open");
    let setup = Instant::now();
    let ids = fill(&api, EXTENSIONS, REGISTRATIONS);
    println!(
        "setup: {EXTENSIONS} extensions x {REGISTRATIONS} registrations in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let update = |i: usize| {
        let id = &ids[(i * 7919) % EXTENSIONS];
        let p = params(&[
            ("extensionid", id),
            ("resourceid", &physical_network(i % REGISTRATIONS)),
            ("resourcetype", "PhysicalNetwork"),
            ("details[0].hosts", &format!("10.0.{}.{}", i % 250, i % 200)),
            ("details[1].executor.port", "8443"),
        ]);
        let t = Instant::now();
        api.call("updateRegisteredExtension", &p).expect("update");
        t.elapsed().as_secs_f64() * 1e6
    };
    let list = |i: usize| {
        let p = params(&[("id", &ids[(i * 104_729) % EXTENSIONS])]);
        let t = Instant::now();
        api.call("listExtensions", &p).expect("list");
        t.elapsed().as_secs_f64() * 1e6
    };

    report(
        "updateRegisteredExtension (1 thread)",
        (0..SAMPLES).map(update).collect(),
    );
    report(
        "listExtensions id=… (1 thread)",
        (0..SAMPLES).map(list).collect(),
    );
    for (label, f) in [
        (
            "updateRegisteredExtension (16 threads)",
            &update as &(dyn Fn(usize) -> f64 + Sync),
        ),
        ("listExtensions id=… (16 threads)", &list),
    ] {
        let all: Vec<f64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|t| {
                    s.spawn(move || {
                        (0..SAMPLES / 16)
                            .map(|i| f(t * 1000 + i))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("thread"))
                .collect()
        });
        report(label, all);
    }
}
