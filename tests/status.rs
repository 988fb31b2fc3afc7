//! `netbridge status` end to end: the real CLI against real executors (TLS
//! on loopback), with one host of each kind of trouble — a certificate that
//! is not the pinned one, a wrong `executor.key`, a port nobody listens on,
//! a registration without executor details — then the same registrations
//! repaired by `updateRegisteredExtension`, without restarting anything.

mod executor_process;

use std::path::Path;
use std::process::Command;

use executor_process::{ExecutorOptions, ExecutorProcess};
use netbridge_control::api::{Api, ApiConfig, Params};
use serde_json::{json, Value};

static BIN: std::sync::LazyLock<std::path::PathBuf> =
    std::sync::LazyLock::new(|| netbridge_testbed::workspace_bin("netbridge"));
const KEY: &str = "status-test-key-0123456789";
const PN_A: &str = "3d2c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a";
const PN_B: &str = "4e3d2c1b-0a9f-4e8d-9c7b-6a5f4e3d2c1b";

fn details(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        out.push((format!("details[{i}].key"), k.to_string()));
        out.push((format!("details[{i}].value"), v.to_string()));
    }
    out
}

fn call(
    api: &Api,
    command: &str,
    mut base: Vec<(String, String)>,
    extra: &[(&str, &str)],
) -> Value {
    base.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let p: Params = base.into_iter().collect();
    api.call(command, &p)
        .unwrap_or_else(|e| panic!("{command}: {}", e.text))
}

fn create_extension(api: &Api, name: &str) -> String {
    let v = call(
        api,
        "createExtension",
        Vec::new(),
        &[("name", name), ("type", "NetworkOrchestrator")],
    );
    v["createextensionresponse"]["extension"]["id"]
        .as_str()
        .expect("extension id")
        .to_string()
}

fn registration(ext: &str, pn: &str) -> Vec<(String, String)> {
    [
        ("extensionid", ext),
        ("resourceid", pn),
        ("resourcetype", "PhysicalNetwork"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Runs `netbridge status` and returns (exit code, stdout, stderr).
fn status(state: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(&*BIN)
        .arg("--state-dir")
        .arg(state)
        .arg("status")
        .args(extra)
        .output()
        .expect("run netbridge status");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn executor<'a>(report: &'a Value, extension: &str, host: &str) -> &'a Value {
    report["extensions"]
        .as_array()
        .expect("extensions")
        .iter()
        .filter(|e| e["name"] == extension)
        .flat_map(|e| e["registrations"].as_array().expect("registrations"))
        .flat_map(|r| r["executors"].as_array().expect("executors"))
        .find(|x| x["host"] == host)
        .unwrap_or_else(|| panic!("no executor {host} of {extension} in {report:#}"))
}

#[test]
fn status_reports_each_executor_problem_and_clears_after_repair() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("bridge");
    std::fs::create_dir_all(&state).expect("state dir");
    // Executor A: healthy, and once failed to persist a network (last error).
    std::fs::create_dir_all(dir.path().join("a/state/networks/cs-net-77.json/blocked"))
        .expect("blocking directory");
    let a = ExecutorProcess::start(
        &dir.path().join("a"),
        ExecutorOptions {
            host_name: "nbst-a",
            key: KEY,
            metrics_token: None,
            extra: vec![],
        },
    );
    // Executor B: runs with a certificate that is not the one pinned.
    let b = ExecutorProcess::start(
        &dir.path().join("b"),
        ExecutorOptions {
            host_name: "nbst-b",
            key: KEY,
            metrics_token: None,
            extra: vec![],
        },
    );
    let failed_assign = a_failed_command(&a);

    let (ext_ok, ext_bad) = {
        let api = Api::open(ApiConfig::in_dir(state.clone())).expect("registry");
        let ext_ok = create_extension(&api, "nbst-ext");
        let ext_bad = create_extension(&api, "nbst-other");
        // nbst-ext on PN_A: A (good), B (pinned to A's certificate), a dead port.
        let hosts = format!("{},{},127.0.0.1:1", a.host(), b.host());
        let mut base = registration(&ext_ok, PN_A);
        base.extend(details(&[
            ("hosts", &hosts),
            ("executor.key", KEY),
            ("executor.fingerprint", &a.fingerprint),
        ]));
        call(&api, "registerExtension", base, &[]);
        // nbst-ext on PN_B: A with the wrong key.
        let mut base = registration(&ext_ok, PN_B);
        base.extend(details(&[
            ("hosts", &a.host()),
            ("executor.key", "not-the-executor-key-012345"),
            ("executor.fingerprint", &a.fingerprint),
        ]));
        call(&api, "registerExtension", base, &[]);
        // nbst-other on PN_A: no executor details at all.
        let mut base = registration(&ext_bad, PN_A);
        base.extend(details(&[("guest.network.device", "eth1")]));
        call(&api, "registerExtension", base, &[]);
        (ext_ok, ext_bad)
    };

    let (code, stdout, stderr) = status(&state, &["--output", "json"]);
    assert_eq!(code, 1, "problems exit 1\n{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["bridge_version"], netbridge_protocol::build_id());
    assert_eq!(report["ok"], false);
    assert_eq!(report["problems"], 4, "{report:#}");

    let good = executor(&report, "nbst-ext", &a.host());
    let registrations = &report["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == ext_ok.as_str())
        .unwrap()["registrations"];
    let good_on_a = registrations
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource_id"] == PN_A)
        .unwrap()["executors"][0]
        .clone();
    assert_eq!(good, &good_on_a);
    assert_eq!(good["state"], "ok", "{good:#}");
    assert_eq!(good["reachable"], true);
    assert_eq!(good["pin_match"], true);
    assert_eq!(good["fingerprint"], a.fingerprint.as_str());
    assert_eq!(good["healthy"], true);
    assert_eq!(good["executor_host"], "nbst-a");
    assert_eq!(good["version"], netbridge_protocol::build_id());
    assert_eq!(good["build_skew"], false);
    assert_eq!(good["networks"], 0);
    assert_eq!(good["last_error"]["command"], "assign-ip");
    assert_eq!(good["last_error"]["message"], failed_assign.as_str());
    assert_eq!(good["error"], Value::Null);

    let pinned_wrong = executor(&report, "nbst-ext", &b.host());
    assert_eq!(pinned_wrong["state"], "pin_mismatch", "{pinned_wrong:#}");
    assert_eq!(pinned_wrong["reachable"], true);
    assert_eq!(pinned_wrong["pin_match"], false);
    assert_eq!(pinned_wrong["fingerprint"], b.fingerprint.as_str());
    assert_eq!(pinned_wrong["healthy"], false);
    assert_eq!(pinned_wrong["version"], Value::Null);

    let dead = executor(&report, "nbst-ext", "127.0.0.1:1");
    assert_eq!(dead["state"], "unreachable", "{dead:#}");
    assert_eq!(dead["reachable"], false);
    assert!(
        dead["error"]
            .as_str()
            .unwrap_or("")
            .contains("cannot connect"),
        "{dead:#}"
    );

    let wrong_key = registrations
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource_id"] == PN_B)
        .unwrap()["executors"][0]
        .clone();
    assert_eq!(wrong_key["state"], "auth_refused", "{wrong_key:#}");
    assert_eq!(wrong_key["pin_match"], true);
    let text = wrong_key["error"].as_str().unwrap_or("");
    assert!(text.contains("executor.key"), "{text}");
    assert!(
        !text.contains("not-the-executor-key"),
        "the key never shows: {text}"
    );
    assert!(!stdout.contains(KEY), "the key never shows");

    let unconfigured = report["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == ext_bad.as_str())
        .unwrap()["registrations"][0]
        .clone();
    assert!(
        unconfigured["error"]
            .as_str()
            .unwrap_or("")
            .contains("missing registration detail 'hosts'"),
        "{unconfigured:#}"
    );

    // The table: one row per executor, problems spelled out under it.
    let (code, table, _) = status(&state, &[]);
    assert_eq!(code, 1);
    assert!(
        table.starts_with(&format!("bridge {}\n", netbridge_protocol::build_id())),
        "{table}"
    );
    let row_of = |host: &str| {
        table
            .lines()
            .find(|l| l.starts_with("nbst-ext ") && l.contains(host))
            .unwrap_or_else(|| panic!("no row for {host}:\n{table}"))
            .to_string()
    };
    assert!(row_of(&a.host()).contains(" ok "), "{table}");
    assert!(row_of(&b.host()).contains("MISMATCH"), "{table}");
    assert!(row_of("127.0.0.1:1").contains("unreachable"), "{table}");
    assert!(
        table.contains(&format!("    presented certificate: {}", b.fingerprint)),
        "{table}"
    );
    assert!(
        table.contains("    last failed command: assign-ip ("),
        "{table}"
    );
    assert!(table.contains("config_error"), "{table}");
    assert!(
        table.ends_with("PROBLEMS: 4 executor(s), 4 problem(s), 0 warning(s)\n"),
        "{table}"
    );

    // Repair every registration; nothing restarts.
    {
        let api = Api::open(ApiConfig::in_dir(state.clone())).expect("registry");
        let both_pins = format!("{},{}", a.fingerprint, b.fingerprint);
        let hosts = format!("{},{}", a.host(), b.host());
        let mut base = registration(&ext_ok, PN_A);
        base.extend(details(&[
            ("hosts", &hosts),
            ("executor.fingerprint", &both_pins),
        ]));
        call(&api, "updateRegisteredExtension", base, &[]);
        let mut base = registration(&ext_ok, PN_B);
        base.extend(details(&[
            ("hosts", &a.host()),
            ("executor.key", KEY),
            ("executor.fingerprint", &a.fingerprint),
        ]));
        call(&api, "updateRegisteredExtension", base, &[]);
        call(
            &api,
            "unregisterExtension",
            registration(&ext_bad, PN_A),
            &[],
        );
    }
    let (code, stdout, stderr) = status(&state, &["--output", "json"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["ok"], true);
    assert_eq!(report["problems"], 0);
    for host in [a.host(), b.host()] {
        let x = executor(&report, "nbst-ext", &host);
        assert_eq!(x["state"], "ok", "{x:#}");
        assert_eq!(x["pin_match"], true);
    }
    assert_eq!(
        executor(&report, "nbst-ext", &b.host())["executor_host"],
        "nbst-b"
    );
    let (code, table, _) = status(&state, &[]);
    assert_eq!(code, 0);
    assert!(
        table.ends_with("OK: 3 executor(s), 0 problem(s), 0 warning(s)\n"),
        "{table}"
    );
}

/// Makes executor A fail one command (its state file's place is taken by a
/// directory, so persisting fails); returns the error message it answered.
fn a_failed_command(a: &ExecutorProcess) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let host = netbridge_control::dispatch::HostEntry::parse(&a.host(), 8443).expect("host");
    let pin = netbridge_control::dispatch::config::parse_fingerprint(&a.fingerprint).expect("pin");
    let body = json!({"physical-network-extension-details": {}, "network-extension-details": {},
        "payload": {"network_id": "77", "vlan": "vlan://100", "cidr": "10.1.1.0/24", "gateway": "10.1.1.1",
            "public_ip": "203.0.113.10", "public_vlan": "vlan://200", "public_gateway": "203.0.113.1",
            "public_cidr": "203.0.113.0/24", "source_nat": "true"}});
    let client = netbridge_control::dispatch::Client::new();
    let key = netbridge_control::dispatch::SecretKey::new(KEY.as_bytes());
    let transport = netbridge_control::dispatch::Transport::Pinned(vec![pin]);
    let request = client.request(
        &host,
        &transport,
        &key,
        hyper::Method::POST,
        "/v1/commands/assign-ip",
        hyper::body::Bytes::from(body.to_string()),
    );
    let reply = runtime
        .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(60), request).await })
        .expect("answer in time")
        .expect("transport");
    assert_eq!(reply.status, 500);
    let answer: Value = serde_json::from_slice(&reply.body).expect("JSON answer");
    answer["message"].as_str().expect("message").to_string()
}
