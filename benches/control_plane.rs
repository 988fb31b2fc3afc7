//! Control-plane API latency with 1,000 extensions × 10 registrations:
//! `updateRegisteredExtension` and `listExtensions id=…` p50/p99, single thread
//! and 16 threads. Prints figures; asserts nothing.

use std::time::Instant;

use netbridge_control::api::{Api, ApiConfig, Params};

const EXTENSIONS: usize = 1_000;
const REGISTRATIONS: usize = 10;
const SAMPLES: usize = 5_000;

fn params(pairs: &[(&str, &str)]) -> Params {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pn(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

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
    let mut ids = Vec::with_capacity(EXTENSIONS);
    for e in 0..EXTENSIONS {
        let r = api
            .call(
                "createExtension",
                &params(&[
                    ("name", &format!("ext-{e}")),
                    ("type", "NetworkOrchestrator"),
                    ("details[0].network.services", "Dhcp,Dns,UserData,SourceNat"),
                ]),
            )
            .expect("create");
        let id = r["createextensionresponse"]["extension"]["id"]
            .as_str()
            .expect("id")
            .to_string();
        for r in 0..REGISTRATIONS {
            api.call(
                "registerExtension",
                &params(&[
                    ("extensionid", &id),
                    ("resourceid", &pn(r)),
                    ("resourcetype", "PhysicalNetwork"),
                    ("details[0].hosts", "10.0.0.1"),
                    ("details[1].executor.key", "bench-secret"),
                ]),
            )
            .expect("register");
        }
        ids.push(id);
    }
    println!(
        "setup: {EXTENSIONS} extensions x {REGISTRATIONS} registrations in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let update = |i: usize| {
        let id = &ids[(i * 7919) % EXTENSIONS];
        let p = params(&[
            ("extensionid", id),
            ("resourceid", &pn(i % REGISTRATIONS)),
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
