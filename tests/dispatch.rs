//! The in-process Dispatcher against fake executors on 127.0.0.1 with real
//! TLS and HMAC verification.

use netbridge_testbed::stand_in as dispatch_support;

use std::sync::Arc;
use std::time::Duration;

use dispatch_support::*;
use netbridge_control::dispatch::{Dispatcher, ErrorKind, MemoryJournal, Settings};
use serde_json::{json, Value};

const KEY: &str = "k1-shared-secret";
const T: Duration = Duration::from_secs(10);

fn dispatcher() -> Dispatcher {
    Dispatcher::new(Arc::new(MemoryJournal::new()))
        .unwrap()
        .with_settings(Settings {
            health_timeout: Duration::from_millis(500),
            drop_timeout: Duration::from_millis(500),
            max_attempts: 4,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            pending_drop_interval: Duration::ZERO,
        })
}

struct Cluster {
    cert: TestCert,
    fakes: Vec<FakeExecutor>,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        let cert = TestCert::generate();
        let fakes = (0..n).map(|_| FakeExecutor::start(&cert, KEY)).collect();
        Cluster { cert, fakes }
    }
    fn names(&self) -> Vec<String> {
        self.fakes.iter().map(|f| f.name()).collect()
    }
    fn details(&self) -> Value {
        details(&self.names(), KEY, &self.cert.fingerprint())
    }
}

fn ensure(
    d: &Dispatcher,
    details: &Value,
    current: &str,
    payload: Value,
) -> Result<String, netbridge_control::dispatch::DispatchError> {
    let mut payload = payload;
    payload["current_details"] = Value::String(current.to_string());
    d.execute(
        "ensure-network-device",
        &envelope(details, json!({}), payload),
        T,
    )
}

#[test]
fn placement_follows_cksum_order_and_sticks_to_a_healthy_host() {
    let c = Cluster::new(3);
    let d = dispatcher();
    let names = c.names();
    // cksum("209") = 493350278, % 3 = 2
    let out = ensure(&d, &c.details(), "{}", json!({"network_id": "209"})).unwrap();
    assert_eq!(
        out,
        format!(r#"{{"host":"{}","namespace":"cs-net-209"}}"#, names[2])
    );
    // cksum("42") = 1199578407, % 3 = 0
    let out = ensure(&d, &c.details(), "{}", json!({"network_id": "42"})).unwrap();
    assert_eq!(
        out,
        format!(r#"{{"host":"{}","namespace":"cs-net-42"}}"#, names[0])
    );
    // VPC tier: key is vpc_id; cksum("7") = 4228067591, % 3 = 2
    let out = ensure(
        &d,
        &c.details(),
        "{}",
        json!({"network_id": "43", "vpc_id": "7"}),
    )
    .unwrap();
    assert_eq!(
        out,
        format!(
            r#"{{"host":"{}","namespace":"cs-vpc-7","vpc_id":"7"}}"#,
            names[2]
        )
    );
    // Sticky: the current host stays while healthy, whatever cksum says.
    let current = format!(r#"{{"host":"{}","namespace":"cs-net-209"}}"#, names[1]);
    let out = ensure(&d, &c.details(), &current, json!({"network_id": "209"})).unwrap();
    assert_eq!(
        out,
        format!(r#"{{"host":"{}","namespace":"cs-net-209"}}"#, names[1])
    );
    // Sticky also from network-extension-details when current_details is "{}".
    let env = envelope(
        &c.details(),
        device(&names[1], "cs-net-5"),
        json!({"network_id": "5", "current_details": "{}"}),
    );
    let out = d.execute("ensure-network-device", &env, T).unwrap();
    assert_eq!(
        out,
        format!(r#"{{"host":"{}","namespace":"cs-net-5"}}"#, names[1])
    );
    // Health probes are signed and verified: no auth failure anywhere.
    for f in &c.fakes {
        assert_eq!(
            f.state
                .auth_failures
                .load(std::sync::atomic::Ordering::SeqCst),
            0
        );
    }
}

#[test]
fn unhealthy_and_dead_hosts_are_skipped_wrapping_round() {
    let mut c = Cluster::new(3);
    let d = dispatcher();
    let names = c.names();
    c.fakes[2].set_healthy(false);
    // "209" starts at 2 (unhealthy) and wraps to 0.
    let out = ensure(&d, &c.details(), "{}", json!({"network_id": "209"})).unwrap();
    assert_eq!(
        out,
        format!(r#"{{"host":"{}","namespace":"cs-net-209"}}"#, names[0])
    );
    // A hung host counts as unhealthy after the probe timeout.
    c.fakes[0].set_mode(Mode::Hang);
    let out = ensure(&d, &c.details(), "{}", json!({"network_id": "210"})).unwrap();
    assert_eq!(
        out,
        format!(r#"{{"host":"{}","namespace":"cs-net-210"}}"#, names[1])
    );
    // Sticky host dead: moves on.
    c.fakes[0].set_mode(Mode::Ok);
    c.fakes[2].set_healthy(true);
    c.fakes[1].stop();
    let current = format!(r#"{{"host":"{}"}}"#, names[1]);
    let out = ensure(&d, &c.details(), &current, json!({"network_id": "209"})).unwrap();
    assert_eq!(
        out,
        format!(r#"{{"host":"{}","namespace":"cs-net-209"}}"#, names[2])
    );
    // Nothing healthy: Unreachable, naming each host's reason.
    c.fakes[0].set_healthy(false);
    c.fakes[2].set_healthy(false);
    let err = ensure(&d, &c.details(), "{}", json!({"network_id": "209"})).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable);
    assert_eq!(err.exit_code(), 2);
    let msg = err.to_string();
    assert!(
        msg.starts_with("no healthy executor for cs-net-209 ("),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{}: health check answered HTTP 503", names[0])),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{}: cannot connect", names[1])),
        "{msg}"
    );
}

fn send(
    d: &Dispatcher,
    details: &Value,
    host: &str,
    command: &str,
    payload: Value,
) -> Result<String, netbridge_control::dispatch::DispatchError> {
    d.execute(
        command,
        &envelope(details, device(host, "cs-net-42"), payload),
        T,
    )
}

#[test]
fn failover_replays_the_journal_in_order_and_drops_on_the_old_host() {
    let mut c = Cluster::new(2);
    // The stages a terminal shows (netbridge exec) while the network moves.
    let stages = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = stages.clone();
    let d = dispatcher().with_progress(Arc::new(move |stage: &str| {
        sink.lock().unwrap().push(stage.to_string())
    }));
    let names = c.names();
    let det = c.details();
    // cksum("42") % 2 = 1
    let out = ensure(&d, &det, "{}", json!({"network_id": "42"})).unwrap();
    assert_eq!(
        out,
        format!(r#"{{"host":"{}","namespace":"cs-net-42"}}"#, names[1])
    );
    let h = &names[1];
    let net = |extra: Value| {
        let mut p = json!({"network_id": "42", "cidr": "10.1.1.0/24"});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    send(
        &d,
        &det,
        h,
        "implement-network",
        net(json!({"extension_ip": "10.1.1.1"})),
    )
    .unwrap();
    send(
        &d,
        &det,
        h,
        "assign-ip",
        net(json!({"public_ip": "203.0.113.10", "source_nat": "true"})),
    )
    .unwrap();
    send(
        &d,
        &det,
        h,
        "apply-fw-rules",
        net(json!({"fw_rules": {"rules": [], "v": 1}})),
    )
    .unwrap();
    send(
        &d,
        &det,
        h,
        "add-static-nat",
        net(json!({"public_ip": "203.0.113.11", "private_ip": "10.1.1.5"})),
    )
    .unwrap();
    send(
        &d,
        &det,
        h,
        "add-dns-entry",
        net(json!({"ip": "10.1.1.5", "hostname": "vm1"})),
    )
    .unwrap();
    send(
        &d,
        &det,
        h,
        "apply-fw-rules",
        net(json!({"fw_rules": {"rules": [], "v": 2}})),
    )
    .unwrap();
    send(
        &d,
        &det,
        h,
        "delete-static-nat",
        net(json!({"public_ip": "203.0.113.11"})),
    )
    .unwrap();
    d.execute("custom-action", &custom_action(&det, h, "x"), T)
        .unwrap();
    assert_eq!(c.fakes[1].received().len(), 8);
    assert!(c.fakes[0].received().is_empty());

    // Host 1 turns unhealthy but stays reachable: the network moves to host 0.
    c.fakes[1].set_healthy(false);
    let current = format!(r#"{{"host":"{}","namespace":"cs-net-42"}}"#, names[1]);
    let out = ensure(&d, &det, &current, json!({"network_id": "42"})).unwrap();
    assert_eq!(
        out,
        format!(r#"{{"host":"{}","namespace":"cs-net-42"}}"#, names[0])
    );
    // A clean slate first (a stale copy may exist there), then the state in order.
    assert_eq!(
        c.fakes[0].received_commands(),
        vec![
            "destroy-network",
            "implement-network",
            "assign-ip",
            "apply-fw-rules",
            "add-dns-entry"
        ]
    );
    let replayed = c.fakes[0].received();
    // The latest firewall, the new device details, the current registration details.
    assert_eq!(replayed[3].1["payload"]["fw_rules"]["v"], json!(2));
    assert_eq!(
        replayed[1].1["network-extension-details"]["host"],
        json!(names[0])
    );
    assert_eq!(
        replayed[1].1["physical-network-extension-details"]["executor.key"],
        json!(KEY)
    );
    let seen = stages.lock().unwrap().clone();
    let replay: Vec<&String> = seen.iter().filter(|s| s.starts_with("replaying")).collect();
    assert_eq!(
        replay,
        [
            "implement-network",
            "assign-ip",
            "apply-fw-rules",
            "add-dns-entry"
        ]
        .iter()
        .enumerate()
        .map(|(i, c)| format!(
            "replaying cs-net-42 to executor {} (step {} of 4: {c})",
            names[0],
            i + 1
        ))
        .collect::<Vec<_>>()
        .iter()
        .collect::<Vec<_>>(),
        "{seen:#?}"
    );
    // The old host was told to drop the network.
    let old = c.fakes[1].received();
    assert_eq!(old.last().unwrap().0, "destroy-network");
    assert_eq!(
        old.last().unwrap().1["payload"],
        json!({"network_id": "42"})
    );

    // The next command goes to the new host; no second replay.
    c.fakes[0].clear_received();
    send(&d, &det, &names[0], "add-port-forward", net(json!({"public_ip": "203.0.113.10", "public_port": "22", "private_port": "22", "protocol": "tcp"}))).unwrap();
    assert_eq!(c.fakes[0].received_commands(), vec!["add-port-forward"]);

    // Host 0 dies; host 1 is healthy again: everything comes back to host 1,
    // and the drop on the dead host fails quietly.
    c.fakes[1].set_healthy(true);
    c.fakes[1].clear_received();
    c.fakes[0].stop();
    let current = format!(r#"{{"host":"{}","namespace":"cs-net-42"}}"#, names[0]);
    let out = ensure(&d, &det, &current, json!({"network_id": "42"})).unwrap();
    assert_eq!(
        out,
        format!(r#"{{"host":"{}","namespace":"cs-net-42"}}"#, names[1])
    );
    assert_eq!(
        c.fakes[1].received_commands(),
        vec![
            "destroy-network",
            "implement-network",
            "assign-ip",
            "apply-fw-rules",
            "add-dns-entry",
            "add-port-forward"
        ]
    );
    // The dead host is remembered, and told to drop the network once it is back.
    let state = d.journal().load("cs-net-42").unwrap();
    assert_eq!(state.pending_drops.len(), 1);
    assert_eq!(state.pending_drops[0].host, names[0]);
    let revived = FakeExecutor::start_at(&c.cert, KEY, c.fakes[0].addr);
    let current = format!(r#"{{"host":"{}","namespace":"cs-net-42"}}"#, names[1]);
    let out = ensure(&d, &det, &current, json!({"network_id": "42"})).unwrap();
    assert_eq!(
        out,
        format!(r#"{{"host":"{}","namespace":"cs-net-42"}}"#, names[1])
    );
    assert_eq!(revived.received_commands(), vec!["destroy-network"]);
    assert!(d
        .journal()
        .load("cs-net-42")
        .unwrap()
        .pending_drops
        .is_empty());
}

#[test]
fn a_command_naming_a_host_that_is_no_longer_listed_is_placed_and_replayed() {
    let c = Cluster::new(2);
    let d = dispatcher();
    let names = c.names();
    let one = details(&names[1..], KEY, &c.cert.fingerprint());
    send(
        &d,
        &one,
        &names[1],
        "implement-network",
        json!({"network_id": "42"}),
    )
    .unwrap();
    // hosts changed to host 0 only; CloudStack still names host 1.
    let zero = details(&names[..1], KEY, &c.cert.fingerprint());
    send(
        &d,
        &zero,
        &names[1],
        "apply-fw-rules",
        json!({"network_id": "42", "fw_rules": {}}),
    )
    .unwrap();
    assert_eq!(
        c.fakes[0].received_commands(),
        vec!["destroy-network", "implement-network", "apply-fw-rules"]
    );
    assert_eq!(
        c.fakes[1].received_commands(),
        vec!["implement-network", "destroy-network"]
    );
}

#[test]
fn pinned_fingerprint_mismatch_is_refused() {
    let c = Cluster::new(1);
    let d = dispatcher();
    let other = TestCert::generate();
    let det = details(&c.names(), KEY, &other.fingerprint());
    let err = send(
        &d,
        &det,
        &c.names()[0],
        "add-dns-entry",
        json!({"network_id": "42", "ip": "10.1.1.5"}),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert_eq!(
        err.to_string(),
        format!(
            "executor {} presented a certificate that does not match 'executor.fingerprint'",
            c.names()[0]
        )
    );
    assert_eq!(c.fakes[0].command_requests(), 0);
    // In placement the host is unhealthy, and with no other host: Unreachable.
    let err = ensure(&d, &det, "{}", json!({"network_id": "42"})).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable);
    assert!(
        err.to_string()
            .contains("does not match 'executor.fingerprint'"),
        "{err}"
    );
    // A list of fingerprints accepts any of them.
    let both = details(
        &c.names(),
        KEY,
        &format!("{},{}", other.fingerprint(), c.cert.fingerprint()),
    );
    send(
        &d,
        &both,
        &c.names()[0],
        "add-dns-entry",
        json!({"network_id": "42", "ip": "10.1.1.5"}),
    )
    .unwrap();
}

#[test]
fn a_hanging_executor_hits_the_timeout() {
    let c = Cluster::new(1);
    let d = dispatcher();
    c.fakes[0].set_mode(Mode::Hang);
    let env = envelope(
        &c.details(),
        device(&c.names()[0], "cs-net-42"),
        json!({"network_id": "42"}),
    );
    let err = d
        .execute("implement-network", &env, Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        format!(
            "implement-network timed out after 1 s (waiting for executor {})",
            c.names()[0]
        )
    );
}

#[test]
fn a_refused_connection_is_unreachable_after_bounded_retries() {
    let c = Cluster::new(1);
    let d = dispatcher();
    let dead = refused_host();
    let det = details(std::slice::from_ref(&dead), KEY, &c.cert.fingerprint());
    let err = send(
        &d,
        &det,
        &dead,
        "add-dns-entry",
        json!({"network_id": "42", "ip": "10.1.1.5"}),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable);
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("executor {dead} unreachable for add-dns-entry after 4 attempt(s): cannot connect: {dead}: ")),
        "{msg}"
    );
}

#[test]
fn garbage_and_error_answers_are_remote_failures() {
    let c = Cluster::new(1);
    let d = dispatcher();
    let h = c.names()[0].clone();
    c.fakes[0].set_mode(Mode::Garbage);
    let err = send(
        &d,
        &c.details(),
        &h,
        "add-dns-entry",
        json!({"network_id": "42", "ip": "10.1.1.5"}),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Remote);
    assert_eq!(err.exit_code(), 3);
    assert_eq!(
        err.to_string(),
        format!("executor {h} answered add-dns-entry with HTTP 200 and a body that is not a JSON object: '<html>internal oops</html>'")
    );
    c.fakes[0].set_mode(Mode::Error("invalid value for 'ip': not an address".into()));
    let err = send(
        &d,
        &c.details(),
        &h,
        "add-dns-entry",
        json!({"network_id": "42", "ip": "x"}),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Remote);
    assert_eq!(
        err.to_string(),
        format!("executor {h} reported add-dns-entry status 'error': invalid value for 'ip': not an address")
    );
    // Failed commands are not part of the desired state.
    let state = d.journal().load("cs-net-42").unwrap();
    assert!(state.entries.is_empty());
}

#[test]
fn only_idempotent_commands_are_retried() {
    let c = Cluster::new(1);
    let d = dispatcher();
    let h = c.names()[0].clone();
    c.fakes[0]
        .state
        .drop_next
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let out = send(
        &d,
        &c.details(),
        &h,
        "add-dns-entry",
        json!({"network_id": "42", "ip": "10.1.1.5"}),
    )
    .unwrap();
    assert_eq!(
        out,
        r#"{"message":"add-dns-entry done","status":"success"}"#
    );
    assert_eq!(c.fakes[0].command_requests(), 3);

    let d = dispatcher(); // fresh pool: the next connection is dropped
    c.fakes[0]
        .state
        .drop_next
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let err = d
        .execute(
            "custom-action",
            &custom_action(&c.details(), &h, "reboot"),
            T,
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable);
    assert!(
        err.to_string()
            .contains("custom-action is not retried, it may or may not have been applied"),
        "{err}"
    );
    assert_eq!(c.fakes[0].command_requests(), 4);
}

#[test]
fn key_rotation_takes_effect_on_the_next_command() {
    let c = Cluster::new(1);
    let d = dispatcher();
    let h = c.names()[0].clone();
    let old = c.details();
    send(
        &d,
        &old,
        &h,
        "add-dns-entry",
        json!({"network_id": "42", "ip": "10.1.1.5"}),
    )
    .unwrap();
    // The executor now only accepts the new key.
    c.fakes[0].set_key("k2-rotated");
    let err = send(
        &d,
        &old,
        &h,
        "add-dns-entry",
        json!({"network_id": "42", "ip": "10.1.1.6"}),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert_eq!(
        err.to_string(),
        format!("executor {h} refused the request signature (HTTP 401: signature does not match): check 'executor.key'")
    );
    assert!(!err.to_string().contains(KEY));
    let new = details(&c.names(), "k2-rotated", &c.cert.fingerprint());
    send(
        &d,
        &new,
        &h,
        "add-dns-entry",
        json!({"network_id": "42", "ip": "10.1.1.6"}),
    )
    .unwrap();
    // Registry-supplied details override the envelope's (in-process path).
    let registry: std::collections::BTreeMap<String, String> =
        serde_json::from_value(new.clone()).unwrap();
    let env = envelope(
        &old,
        device(&h, "cs-net-42"),
        json!({"network_id": "42", "ip": "10.1.1.7"}),
    );
    d.execute_with_details("add-dns-entry", &env, Some(&registry), T)
        .unwrap();
    let last = c.fakes[0].received().pop().unwrap();
    assert_eq!(
        last.1["physical-network-extension-details"]["executor.key"],
        json!("k2-rotated")
    );
}

#[test]
fn bad_input_is_a_configuration_error_naming_the_field() {
    let c = Cluster::new(1);
    let d = dispatcher();
    let h = c.names()[0].clone();
    let err = d.execute("frobnicate", b"{}", T).unwrap_err();
    assert_eq!(err.to_string(), "unknown command 'frobnicate'");
    let err = d.execute("implement-network", b"not json", T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert!(err.to_string().starts_with("malformed JSON"), "{err}");
    let mut det = c.details();
    det.as_object_mut().unwrap().remove("executor.key");
    let err = send(
        &d,
        &det,
        &h,
        "implement-network",
        json!({"network_id": "42"}),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "missing registration detail 'executor.key': the shared key for signing requests to executors"
    );
    let err = send(
        &d,
        &c.details(),
        &h,
        "implement-network",
        json!({"cidr": "10.0.0.0/24"}),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "missing required field 'network_id' (or 'vpc_id')"
    );
    assert_eq!(c.fakes[0].command_requests(), 0);
}

#[test]
fn custom_action_output_is_returned_and_ok_when_empty() {
    let c = Cluster::new(1);
    let d = dispatcher();
    let det = c.details();
    let flat = |action: &str| custom_action(&det, &c.names()[0], action);
    c.fakes[0].set_mode(Mode::Stdout(String::new()));
    assert_eq!(d.execute("custom-action", &flat("noop"), T).unwrap(), "OK");
    c.fakes[0].set_mode(Mode::Stdout("uptime 3 days\n".into()));
    assert_eq!(
        d.execute("custom-action", &flat("uptime"), T).unwrap(),
        "uptime 3 days"
    );
    // custom-action is not state.
    assert!(d.journal().load("cs-net-42").unwrap().entries.is_empty());
}

#[test]
fn insecure_plain_http_only_for_loopback_tests() {
    let cert = TestCert::generate();
    let fake = FakeExecutor::start_plain(&cert, KEY);
    let d = dispatcher();
    let det = json!({"hosts": fake.name(), "executor.key": KEY, "executor.insecure": "true"});
    let out = send(
        &d,
        &det,
        &fake.name(),
        "add-dns-entry",
        json!({"network_id": "42", "ip": "10.1.1.5"}),
    )
    .unwrap();
    assert_eq!(
        out,
        r#"{"message":"add-dns-entry done","status":"success"}"#
    );
    let det = json!({"hosts": "192.0.2.10", "executor.key": KEY, "executor.insecure": "true"});
    let err = send(
        &d,
        &det,
        "192.0.2.10",
        "add-dns-entry",
        json!({"network_id": "42", "ip": "10.1.1.5"}),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "'executor.insecure=true' is only allowed with loopback hosts; '192.0.2.10' is not loopback"
    );
}

#[test]
fn one_dispatcher_serves_many_threads_over_the_pool() {
    let c = Cluster::new(1);
    let d = Arc::new(dispatcher());
    let h = c.names()[0].clone();
    let det = c.details();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (d, h, det) = (d.clone(), h.clone(), det.clone());
            std::thread::spawn(move || {
                for i in 0..25 {
                    let env = envelope(
                        &det,
                        json!({"host": h, "namespace": format!("cs-net-{t}")}),
                        json!({"network_id": t.to_string(), "ip": format!("10.1.{t}.{i}")}),
                    );
                    d.execute("add-dns-entry", &env, T).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(c.fakes[0].received().len(), 200);
    for t in 0..8 {
        assert_eq!(
            d.journal()
                .load(&format!("cs-net-{t}"))
                .unwrap()
                .entries
                .len(),
            25
        );
    }
}

#[test]
fn async_callers_use_their_own_runtime() {
    fn shared<T: Send + Sync>() {}
    shared::<Dispatcher>();
    let c = Cluster::new(1);
    let h = c.names()[0].clone();
    let env = envelope(
        &c.details(),
        device(&h, "cs-net-42"),
        json!({"network_id": "42", "ip": "10.1.1.5"}),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let d = Dispatcher::for_async(Arc::new(MemoryJournal::new()));
        let out = d
            .execute_async("add-dns-entry", &env, None, T)
            .await
            .unwrap();
        assert_eq!(
            out,
            r#"{"message":"add-dns-entry done","status":"success"}"#
        );
        let err = d.execute("add-dns-entry", &env, T).unwrap_err();
        assert_eq!(
            err.to_string(),
            "this Dispatcher was made for async callers; use execute_async"
        );
    });
}

#[test]
fn a_vpc_moves_with_all_its_tiers() {
    let c = Cluster::new(2);
    let d = dispatcher();
    let names = c.names();
    let det = c.details();
    // cksum("7") = 4228067591, % 2 = 1
    let out = ensure(&d, &det, "{}", json!({"vpc_id": "7"})).unwrap();
    assert_eq!(
        out,
        format!(
            r#"{{"host":"{}","namespace":"cs-vpc-7","vpc_id":"7"}}"#,
            names[1]
        )
    );
    let dev = json!({"host": names[1], "namespace": "cs-vpc-7", "vpc_id": "7"});
    for (command, payload) in [
        (
            "implement-vpc",
            json!({"vpc_id": "7", "vpc_cidr": "10.7.0.0/16"}),
        ),
        (
            "implement-network",
            json!({"vpc_id": "7", "network_id": "71"}),
        ),
        (
            "implement-network",
            json!({"vpc_id": "7", "network_id": "72"}),
        ),
        (
            "apply-network-acl",
            json!({"vpc_id": "7", "network_id": "71", "acl_rules": []}),
        ),
    ] {
        d.execute(command, &envelope(&det, dev.clone(), payload), T)
            .unwrap();
    }
    c.fakes[1].set_healthy(false);
    let mut payload = json!({"vpc_id": "7", "network_id": "72"});
    payload["current_details"] = json!(dev.to_string());
    let out = d
        .execute(
            "ensure-network-device",
            &envelope(&det, dev.clone(), payload),
            T,
        )
        .unwrap();
    assert_eq!(
        out,
        format!(
            r#"{{"host":"{}","namespace":"cs-vpc-7","vpc_id":"7"}}"#,
            names[0]
        )
    );
    assert_eq!(
        c.fakes[0].received_commands(),
        vec![
            "destroy-network",
            "destroy-network",
            "shutdown-vpc",
            "implement-vpc",
            "implement-network",
            "implement-network",
            "apply-network-acl"
        ]
    );
    let old: Vec<(String, Value)> = c.fakes[1].received().into_iter().skip(4).collect();
    assert_eq!(
        old,
        vec![
            ("destroy-network".to_string(), old[0].1.clone()),
            ("destroy-network".to_string(), old[1].1.clone()),
            ("shutdown-vpc".to_string(), old[2].1.clone()),
        ]
    );
    assert_eq!(
        old[0].1["payload"],
        json!({"network_id": "71", "vpc_id": "7"})
    );
    assert_eq!(old[2].1["payload"], json!({"vpc_id": "7"}));
}

#[test]
fn a_host_named_by_cloudstack_is_trusted_without_replay() {
    // Another management server (or a lost journal) moved the network: the
    // local journal is the stale party, so nothing is replayed or destroyed.
    let c = Cluster::new(2);
    let d = dispatcher();
    let names = c.names();
    let det = c.details();
    send(
        &d,
        &det,
        &names[1],
        "implement-network",
        json!({"network_id": "42"}),
    )
    .unwrap();
    send(
        &d,
        &det,
        &names[0],
        "add-dns-entry",
        json!({"network_id": "42", "ip": "10.1.1.5"}),
    )
    .unwrap();
    assert_eq!(c.fakes[0].received_commands(), vec!["add-dns-entry"]);
    assert_eq!(c.fakes[1].received_commands(), vec!["implement-network"]);
    assert_eq!(
        d.journal().load("cs-net-42").unwrap().host.as_deref(),
        Some(names[0].as_str())
    );
    // Likewise a sticky ensure only aligns the journal.
    let current = format!(r#"{{"host":"{}"}}"#, names[1]);
    ensure(&d, &det, &current, json!({"network_id": "42"})).unwrap();
    assert_eq!(c.fakes[1].received_commands(), vec!["implement-network"]);
    assert_eq!(
        d.journal().load("cs-net-42").unwrap().host.as_deref(),
        Some(names[1].as_str())
    );
}

/// The real executor with a different key: placement (`ensure-network-device`
/// probes health) and a command to the host CloudStack names are both
/// configuration errors saying the signature was refused, not
/// "unreachable"; a second, dead host does not hide it. The right key works.
#[test]
fn a_real_executor_refusing_the_signature_is_a_configuration_error() {
    const REAL_KEY: &str = "dispatch-real-executor-key-0123";
    let exec = RealExecutor::start(REAL_KEY);
    let h = exec.name();
    let dead = refused_host();
    let d = dispatcher();
    let wrong = details(&[h.clone(), dead.clone()], KEY, &exec.fingerprint);
    let expected = format!(
        "executor {h} refused the request signature (HTTP 401: authentication failed: signature does not match): check 'executor.key'"
    );
    let err = ensure(&d, &wrong, "{}", json!({"network_id": "42"})).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    assert_eq!(err.exit_code(), 1);
    let text = err.to_string();
    assert!(
        text.starts_with("no usable executor for cs-net-42: "),
        "{text}"
    );
    assert!(text.contains(&expected), "{text}");
    assert!(text.contains(&format!("{dead}: ")), "{text}");
    assert!(!text.contains(KEY) && !text.contains(REAL_KEY), "{text}");
    let err = send(
        &d,
        &wrong,
        &h,
        "implement-network",
        json!({"network_id": "42"}),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    assert_eq!(err.to_string(), expected);

    let good = details(std::slice::from_ref(&h), REAL_KEY, &exec.fingerprint);
    assert_eq!(
        ensure(&d, &good, "{}", json!({"network_id": "42"})).unwrap(),
        format!("{{\"host\":\"{h}\",\"namespace\":\"cs-net-42\"}}")
    );
}
