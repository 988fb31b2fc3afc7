//! Secrets never reach the log, at any level, on success or failure paths.

use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};
use netbridge_control::api::{Api, ApiConfig, Params};

const SECRET: &str = "n0t-in-any-log-7c1e";

struct Capture(Mutex<Vec<String>>);

impl Log for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &Record<'_>) {
        if let Ok(mut lines) = self.0.lock() {
            lines.push(format!("{} {}", record.level(), record.args()));
        }
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

fn params(pairs: &[(&str, &str)]) -> Params {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn secrets_are_not_logged() {
    log::set_logger(&CAPTURE).unwrap();
    log::set_max_level(LevelFilter::Trace);
    let dir = tempfile::tempdir().unwrap();
    let api = Api::open(ApiConfig::in_dir(dir.path())).unwrap();
    let r = api
        .call(
            "createExtension",
            &params(&[
                ("name", "logged"),
                ("type", "NetworkOrchestrator"),
                ("details[0].password", SECRET),
                ("details[1].network.services", "Dhcp,SourceNat"),
            ]),
        )
        .unwrap();
    let id = r["createextensionresponse"]["extension"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pn = "7b6b8a3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
    let reg = |extra: &[(&str, &str)]| {
        let mut p = vec![
            ("extensionid", id.as_str()),
            ("resourceid", pn),
            ("resourcetype", "PhysicalNetwork"),
        ];
        p.extend_from_slice(extra);
        params(&p)
    };
    api.call(
        "registerExtension",
        &reg(&[("details[0].executor.key", SECRET)]),
    )
    .unwrap();
    // Failure paths that carry the secret in the request.
    let bad = [
        reg(&[
            ("details[0].executor.key", SECRET),
            ("details[1].executor.port", "0"),
        ]),
        reg(&[("details[0].executor.key", SECRET), ("details[0].key", "x")]),
        reg(&[("details[0].db.secret", &format!("{SECRET}\u{1}"))]),
        reg(&[
            ("details[0].executor.key", SECRET),
            ("cleanupdetails", "maybe"),
        ]),
    ];
    for p in &bad {
        let e = api.call("updateRegisteredExtension", p).unwrap_err();
        assert!(!e.text.contains(SECRET), "{e:?}");
    }
    api.call(
        "updateRegisteredExtension",
        &reg(&[("details[0].executor.key", SECRET)]),
    )
    .unwrap();
    api.call("listExtensions", &params(&[])).unwrap();
    api.call("unregisterExtension", &reg(&[])).unwrap();
    let lines = CAPTURE.0.lock().unwrap().clone();
    // The capture works (we are looking at real log output)...
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(Level::Info.as_str())
                && l.contains("registered extension 'logged'")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("failed")), "{lines:?}");
    // ...and holds no secret.
    for line in &lines {
        assert!(!line.contains(SECRET), "secret in log line: {line}");
    }
}
