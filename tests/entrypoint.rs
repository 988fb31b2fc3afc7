//! `netbridge-entrypoint` run as a process per command, exactly as
//! CloudStack 4.23 runs its extension script, against fake executors.

use netbridge_testbed::stand_in as dispatch_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use dispatch_support::*;
use serde_json::{json, Value};

const KEY: &str = "entry-key";
static BIN: std::sync::LazyLock<std::path::PathBuf> =
    std::sync::LazyLock::new(|| netbridge_testbed::workspace_bin("netbridge-entrypoint"));

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

struct Env {
    dir: tempfile::TempDir,
    n: std::cell::Cell<usize>,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            n: std::cell::Cell::new(0),
        }
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn payload(&self, bytes: &[u8]) -> PathBuf {
        self.n.set(self.n.get() + 1);
        let p = self
            .dir
            .path()
            .join(format!("payload-{}.json", self.n.get()));
        std::fs::write(&p, bytes).unwrap();
        p
    }
    fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(&*BIN)
            .args(args)
            .env("NETBRIDGE_STATE_DIR", self.state())
            .env_remove("NETBRIDGE_LOG")
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    fn cmd(&self, command: &str, envelope: &[u8], timeout: &str) -> Run {
        let p = self.payload(envelope);
        self.run(&[command, path(&p), timeout])
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stdout_json(r: &Run) -> Value {
    serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|_| panic!("stdout not JSON: {:?}", r.stdout))
}

#[test]
fn usage_errors_exit_1_with_a_clear_message() {
    let e = Env::new();
    let r = e.run(&[]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "netbridge-entrypoint: expected 3 arguments, got 0\nusage: netbridge-entrypoint <command> <payload-file> <timeout-seconds>\n"
    );
    assert_eq!(r.stdout, "");
    let p = e.payload(b"{}");
    let r = e.run(&["frobnicate", path(&p), "60"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .starts_with("netbridge-entrypoint: unknown command 'frobnicate'\n"),
        "{}",
        r.stderr
    );
    let r = e.run(&["implement-network", path(&p), "soon"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with("netbridge-entrypoint: invalid timeout-seconds 'soon': expected a whole number of seconds from 1 to 86400\n"),
        "{}",
        r.stderr
    );
    let missing = e.dir.path().join("nope.json");
    let r = e.run(&["implement-network", path(&missing), "60"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains(&format!("cannot read payload file '{}'", missing.display())),
        "{}",
        r.stderr
    );
}

#[test]
fn contract_success_configuration_unreachable_remote() {
    let e = Env::new();
    let cert = TestCert::generate();
    let fake = FakeExecutor::start(&cert, KEY);
    let h = fake.name();
    let det = details(std::slice::from_ref(&h), KEY, &cert.fingerprint());

    // ensure-network-device: exactly one line of JSON.
    let r = e.cmd(
        "ensure-network-device",
        &envelope(
            &det,
            json!({}),
            json!({"network_id": "42", "current_details": "{}"}),
        ),
        "60",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!("{{\"host\":\"{h}\",\"namespace\":\"cs-net-42\"}}\n")
    );

    // A command: the executor's JSON answer, status success.
    let r = e.cmd(
        "implement-network",
        &envelope(&det, device(&h, "cs-net-42"), json!({"network_id": "42"})),
        "60",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        stdout_json(&r),
        json!({"status": "success", "message": "implement-network done"})
    );
    assert_eq!(fake.received_commands(), vec!["implement-network"]);

    // custom-action: its output, "OK" when empty.
    fake.set_mode(Mode::Stdout(String::new()));
    let r = e.cmd("custom-action", &custom_action(&det, &h, "noop"), "60");
    assert_eq!((r.code, r.stdout.as_str()), (0, "OK\n"));

    // Configuration: exit 1, status error on stdout, the key named, never echoed.
    let mut bad = det.clone();
    bad["executor.fingerprint"] = json!("zz");
    let r = e.cmd(
        "implement-network",
        &envelope(&bad, device(&h, "cs-net-42"), json!({"network_id": "42"})),
        "60",
    );
    assert_eq!(r.code, 1);
    assert_eq!(stdout_json(&r)["status"], json!("error"));
    assert!(
        r.stderr
            .contains("invalid value for 'executor.fingerprint'"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(KEY) && !r.stdout.contains(KEY));

    // Remote failure: exit 3.
    fake.set_mode(Mode::Error("apply failed: nft: syntax error".into()));
    let r = e.cmd(
        "apply-fw-rules",
        &envelope(&det, device(&h, "cs-net-42"), json!({"network_id": "42"})),
        "60",
    );
    assert_eq!(r.code, 3);
    let expected = format!(
        "executor {h} reported apply-fw-rules status 'error': apply failed: nft: syntax error"
    );
    assert_eq!(
        stdout_json(&r),
        json!({"status": "error", "message": expected})
    );
    assert_eq!(
        r.stderr,
        format!("netbridge-entrypoint: apply-fw-rules: {expected}\n")
    );

    // Garbage: exit 3.
    fake.set_mode(Mode::Garbage);
    let r = e.cmd(
        "apply-fw-rules",
        &envelope(&det, device(&h, "cs-net-42"), json!({"network_id": "42"})),
        "60",
    );
    assert_eq!(r.code, 3);
    assert!(
        r.stderr.contains("a body that is not a JSON object"),
        "{}",
        r.stderr
    );

    // Hang: the timeout argument is enforced, exit 2.
    fake.set_mode(Mode::Hang);
    let r = e.cmd(
        "apply-fw-rules",
        &envelope(&det, device(&h, "cs-net-42"), json!({"network_id": "42"})),
        "1",
    );
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr,
        format!("netbridge-entrypoint: apply-fw-rules: apply-fw-rules timed out after 1 s (waiting for executor {h})\n")
    );

    // Refused: exit 2 (fresh state dir: no journal to replay).
    let e = Env::new();
    let dead = refused_host();
    let det_dead = details(std::slice::from_ref(&dead), KEY, &cert.fingerprint());
    let r = e.cmd("custom-action", &custom_action(&det_dead, &dead, "x"), "60");
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(&format!(
            "executor {dead} unreachable for custom-action after 1 attempt(s): cannot connect"
        )),
        "{}",
        r.stderr
    );
}

#[test]
fn failover_replays_state_recorded_by_earlier_processes() {
    let e = Env::new();
    let cert = TestCert::generate();
    let fakes = [
        FakeExecutor::start(&cert, KEY),
        FakeExecutor::start(&cert, KEY),
    ];
    let names: Vec<String> = fakes.iter().map(|f| f.name()).collect();
    let det = details(&names, KEY, &cert.fingerprint());
    // cksum("42") % 2 = 1
    let r = e.cmd(
        "ensure-network-device",
        &envelope(
            &det,
            json!({}),
            json!({"network_id": "42", "current_details": "{}"}),
        ),
        "60",
    );
    assert_eq!(
        r.stdout,
        format!(
            "{{\"host\":\"{}\",\"namespace\":\"cs-net-42\"}}\n",
            names[1]
        )
    );
    let dev = device(&names[1], "cs-net-42");
    for (command, payload) in [
        ("implement-network", json!({"network_id": "42"})),
        (
            "assign-ip",
            json!({"network_id": "42", "public_ip": "203.0.113.10"}),
        ),
        (
            "save-password",
            json!({"network_id": "42", "ip": "10.1.1.5", "password": "VMSECRET"}),
        ),
        (
            "apply-lb-rules",
            json!({"network_id": "42", "lb_rules": []}),
        ),
    ] {
        let r = e.cmd(command, &envelope(&det, dev.clone(), payload), "60");
        assert_eq!(r.code, 0, "{command}: {}", r.stderr);
    }
    // The journal files are private and hold no secret.
    for name in ["cs-net-42.log", "cs-net-42.head"] {
        let file = e.state().join(name);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(KEY) && !text.contains("VMSECRET"), "{text}");
    }

    fakes[1].set_healthy(false);
    let current = serde_json::to_string(&dev).unwrap();
    let r = e.cmd(
        "ensure-network-device",
        &envelope(
            &det,
            dev.clone(),
            json!({"network_id": "42", "current_details": current}),
        ),
        "60",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!(
            "{{\"host\":\"{}\",\"namespace\":\"cs-net-42\"}}\n",
            names[0]
        )
    );
    assert_eq!(
        fakes[0].received_commands(),
        vec![
            "destroy-network",
            "implement-network",
            "assign-ip",
            "apply-lb-rules"
        ]
    );
    assert_eq!(
        fakes[1].received_commands().last().map(String::as_str),
        Some("destroy-network")
    );
}

#[test]
fn the_state_directory_can_come_from_the_registration() {
    let e = Env::new();
    let cert = TestCert::generate();
    let fake = FakeExecutor::start(&cert, KEY);
    let h = fake.name();
    let mut det = details(std::slice::from_ref(&h), KEY, &cert.fingerprint());
    let dir = e.dir.path().join("from-detail");
    det["bridge.state.dir"] = json!(dir.to_str().unwrap());
    let p = e.payload(&envelope(
        &det,
        device(&h, "cs-net-42"),
        json!({"network_id": "42"}),
    ));
    let out = Command::new(&*BIN)
        .args(["implement-network", path(&p), "60"])
        .env_remove("NETBRIDGE_STATE_DIR")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head: Value =
        serde_json::from_slice(&std::fs::read(dir.join("cs-net-42.head")).unwrap()).unwrap();
    assert_eq!(head["host"], json!(h));
    let log = std::fs::read_to_string(dir.join("cs-net-42.log")).unwrap();
    let first: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["r"]["c"], json!("implement-network"));
    // A relative directory is refused (exit 1), nothing is sent.
    det["bridge.state.dir"] = json!("relative/dir");
    let p = e.payload(&envelope(
        &det,
        device(&h, "cs-net-42"),
        json!({"network_id": "42"}),
    ));
    let out = Command::new(&*BIN)
        .args(["implement-network", path(&p), "60"])
        .env_remove("NETBRIDGE_STATE_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("state directory 'relative/dir' must be an absolute path"));
    assert_eq!(fake.received_commands(), vec!["implement-network"]);
}

/// The real executor refuses a request signed with another key (HTTP 401):
/// a configuration error (exit 1) saying so, whether the refusal comes
/// from the health probe of `ensure-network-device` or from a command sent
/// to the host CloudStack names; never "unreachable" (exit 2). The key
/// itself appears nowhere.
#[test]
fn an_executor_refusing_the_signature_is_a_configuration_error() {
    const REAL_KEY: &str = "entry-real-executor-key-0123456789";
    const WRONG: &str = "not-the-executor-key-0123456789";
    let e = Env::new();
    let exec = RealExecutor::start(REAL_KEY);
    let h = exec.name();
    let good = details(std::slice::from_ref(&h), REAL_KEY, &exec.fingerprint);
    let wrong = details(std::slice::from_ref(&h), WRONG, &exec.fingerprint);
    let ensure = |det: &Value| {
        envelope(
            det,
            json!({}),
            json!({"network_id": "42", "current_details": "{}"}),
        )
    };
    // The right key: the real executor answers.
    let r = e.cmd("ensure-network-device", &ensure(&good), "60");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!("{{\"host\":\"{h}\",\"namespace\":\"cs-net-42\"}}\n")
    );

    let expected = format!(
        "executor {h} refused the request signature (HTTP 401: authentication failed: signature does not match): check 'executor.key'"
    );
    let fresh = Env::new();
    for (command, body) in [
        ("ensure-network-device", ensure(&wrong)),
        (
            "implement-network",
            envelope(&wrong, device(&h, "cs-net-42"), json!({"network_id": "42"})),
        ),
    ] {
        let r = fresh.cmd(command, &body, "60");
        assert_eq!(r.code, 1, "{command}: {}", r.stderr);
        let message = stdout_json(&r)["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains(&expected), "{command}: {message}");
        assert!(r.stderr.contains(&expected), "{command}: {}", r.stderr);
        for out in [&r.stdout, &r.stderr] {
            assert!(!out.contains(WRONG) && !out.contains(REAL_KEY), "{out}");
        }
    }
}
