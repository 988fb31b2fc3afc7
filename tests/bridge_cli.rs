//! `netbridge exec`: the script contract (stdout, exit 0/1/2/3) through the
//! in-process bridge, with envelope or registry details.

use netbridge_testbed::stand_in as dispatch_support;

use std::process::{Command, Output};

use dispatch_support::*;
use netbridge_control::api::{Api, ApiConfig, Params};
use netbridge_control::registry::BindingTarget;
use serde_json::{json, Value};

const PN: &str = "5f0e2a1b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";

fn exec(state: &std::path::Path, args: &[&str]) -> Output {
    Command::new(netbridge_testbed::workspace_bin("netbridge"))
        .arg("--state-dir")
        .arg(state)
        .arg("exec")
        .args(args)
        .output()
        .unwrap()
}

fn stdout_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

fn write(dir: &std::path::Path, name: &str, body: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn exec_follows_the_script_contract() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cert = TestCert::generate();
    let fake = FakeExecutor::start(&cert, "k");
    let good = details(&[fake.name()], "k", &cert.fingerprint());

    let ensure = write(
        dir.path(),
        "ensure.json",
        &envelope(
            &good,
            json!({}),
            json!({"network_id": "42", "current_details": "{}"}),
        ),
    );
    let o = exec(&state, &["ensure-network-device", &ensure, "10"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!(
            "{{\"host\":\"{}\",\"namespace\":\"cs-net-42\"}}\n",
            fake.name()
        )
    );

    // executor failure: exit 3, error JSON on stdout
    fake.set_mode(Mode::Error("nbb: no such bridge".into()));
    let implement = write(
        dir.path(),
        "implement.json",
        &envelope(
            &good,
            device(&fake.name(), "cs-net-42"),
            json!({"network_id": "42"}),
        ),
    );
    let o = exec(&state, &["implement-network", &implement]);
    assert_eq!(o.status.code(), Some(3));
    let out = stdout_json(&o);
    assert_eq!(out["status"], "error");
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .contains("nbb: no such bridge"),
        "{out}"
    );
    fake.set_mode(Mode::Ok);

    // unreachable: exit 2
    let gone = refused_host();
    let unreachable = write(
        dir.path(),
        "unreachable.json",
        &envelope(
            &details(std::slice::from_ref(&gone), "k", &cert.fingerprint()),
            device(&gone, "cs-net-42"),
            json!({"network_id": "42"}),
        ),
    );
    let o = exec(&state, &["implement-network", &unreachable, "20"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(stdout_json(&o)["status"], "error");

    // configuration: no hosts, bad timeout, missing file, unknown command: exit 1
    let no_hosts = write(
        dir.path(),
        "nohosts.json",
        &envelope(
            &json!({"executor.key": "k"}),
            json!({}),
            json!({"network_id": "42"}),
        ),
    );
    for args in [
        vec!["implement-network", no_hosts.as_str()],
        vec!["implement-network", implement.as_str(), "abc"],
        vec!["implement-network", implement.as_str(), "0"],
        vec!["implement-network", "/nonexistent/nbb-payload.json"],
        vec!["no-such-command", implement.as_str()],
    ] {
        let o = exec(&state, &args);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn exec_with_registry_details_binds_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cert = TestCert::generate();
    let fake = FakeExecutor::start(&cert, "k");
    let ext_id = {
        let api = Api::open(ApiConfig::in_dir(&state)).unwrap();
        let p = |kv: &[(&str, &str)]| -> Params {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let r = api
            .call(
                "createExtension",
                &p(&[("name", "nbb-cli"), ("type", "NetworkOrchestrator")]),
            )
            .unwrap();
        let id = r["createextensionresponse"]["extension"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let fp = cert.fingerprint();
        let name = fake.name();
        api.call(
            "registerExtension",
            &p(&[
                ("extensionid", &id),
                ("resourceid", PN),
                ("resourcetype", "PhysicalNetwork"),
                ("details[0].key", "hosts"),
                ("details[0].value", &name),
                ("details[1].key", "executor.key"),
                ("details[1].value", "k"),
                ("details[2].key", "executor.fingerprint"),
                ("details[2].value", &fp),
            ]),
        )
        .unwrap();
        id
    };
    // The envelope's own details point nowhere.
    let payload = write(
        dir.path(),
        "ensure.json",
        &envelope(
            &json!({"hosts": "192.0.2.1"}),
            json!({}),
            json!({"network_id": "42", "current_details": "{}"}),
        ),
    );
    let o = exec(
        &state,
        &[
            "--extension-id",
            &ext_id,
            "--physical-network-id",
            PN,
            "ensure-network-device",
            &payload,
            "10",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let api = Api::open(ApiConfig::in_dir(&state)).unwrap();
    let b = api
        .registry()
        .get_binding(&BindingTarget::Network("42".into()))
        .unwrap()
        .unwrap();
    assert_eq!(
        format!("{}\n", b.details),
        String::from_utf8_lossy(&o.stdout)
    );
    // --extension-id without --physical-network-id is a usage error (exit 1)
    let o = exec(
        &state,
        &["--extension-id", &ext_id, "ensure-network-device", &payload],
    );
    assert_eq!(o.status.code(), Some(1));
}

/// `netbridge exec` against the real executor with a key it does not
/// accept: exit 1 (configuration) and the message says the signature was
/// refused, for placement (`ensure-network-device`) as for a command.
#[test]
fn exec_reports_a_refused_signature_as_a_configuration_error() {
    const REAL_KEY: &str = "exec-real-executor-key-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let executor = RealExecutor::start(REAL_KEY);
    let h = executor.name();
    let wrong = details(
        std::slice::from_ref(&h),
        "exec-wrong-key-0123456789",
        &executor.fingerprint,
    );
    let expected = format!(
        "executor {h} refused the request signature (HTTP 401: authentication failed: signature does not match): check 'executor.key'"
    );
    for (command, body) in [
        (
            "ensure-network-device",
            envelope(
                &wrong,
                json!({}),
                json!({"network_id": "42", "current_details": "{}"}),
            ),
        ),
        (
            "implement-network",
            envelope(&wrong, device(&h, "cs-net-42"), json!({"network_id": "42"})),
        ),
    ] {
        let payload = write(dir.path(), &format!("{command}.json"), &body);
        let o = exec(&state, &[command, &payload, "20"]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{command}: {stderr}");
        assert!(stderr.contains(&expected), "{command}: {stderr}");
        let out = stdout_json(&o);
        assert_eq!(out["status"], "error");
        assert!(
            out["message"]
                .as_str()
                .unwrap_or_default()
                .contains(&expected),
            "{out}"
        );
    }
}
