//! The control-plane benchmarks' registry: extensions with registrations on
//! physical networks, created through the API as an operator would.

use netbridge_control::api::{Api, Params};

/// API parameters from `(name, value)` pairs.
pub fn params(pairs: &[(&str, &str)]) -> Params {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The UUID of the benchmarks' physical network `i` (also the one a private
/// MariaDB's CloudStack rows are given).
pub fn physical_network(i: usize) -> String {
    format!("5e1f0000-0000-4000-8000-{i:012}")
}

/// Creates `extensions` extensions, each registered on physical networks
/// `0..registrations` (hosts and a hidden executor key), and returns their ids.
pub fn fill(api: &Api, extensions: usize, registrations: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(extensions);
    for e in 0..extensions {
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
        for r in 0..registrations {
            api.call(
                "registerExtension",
                &params(&[
                    ("extensionid", &id),
                    ("resourceid", &physical_network(r)),
                    ("resourcetype", "PhysicalNetwork"),
                    ("details[0].hosts", "10.0.0.1"),
                    ("details[1].executor.key", "bench-secret"),
                ]),
            )
            .expect("register");
        }
        ids.push(id);
    }
    ids
}

/// The value at quantile `p` of ascending `sorted`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}
