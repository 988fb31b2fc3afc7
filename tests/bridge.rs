//! The bridge in process (`Bridge` = API + shared dispatcher, registry
//! journal) against fake executors on 127.0.0.1 with real TLS and HMAC.

use netbridge_testbed::stand_in as dispatch_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dispatch_support::*;
use netbridge_control::api::{ApiConfig, Params};
use netbridge_control::bridge::{Bridge, BridgeConfig};
use netbridge_control::dispatch::{Dispatcher, ErrorKind, MemoryJournal, Netns, Settings};
use netbridge_control::registry::BindingTarget;
use serde_json::{json, Value};

const PN: &str = "5f0e2a1b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
const T: Duration = Duration::from_secs(10);

fn settings() -> Settings {
    Settings {
        health_timeout: Duration::from_millis(500),
        drop_timeout: Duration::from_millis(500),
        max_attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        pending_drop_interval: Duration::ZERO,
    }
}

fn open(dir: &Path) -> Bridge {
    let mut config = BridgeConfig::new(ApiConfig::in_dir(dir));
    config.settings = settings();
    Bridge::open(config).unwrap()
}

fn params(kv: &[(&str, &str)]) -> Params {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn with_details(mut p: Params, details: &[(&str, &str)]) -> Params {
    for (i, (k, v)) in details.iter().enumerate() {
        p.insert(format!("details[{i}].key"), k.to_string());
        p.insert(format!("details[{i}].value"), v.to_string());
    }
    p
}

/// createExtension + registerExtension on PN; returns the extension id.
fn register(b: &Bridge, hosts: &str, key: &str, fingerprint: &str) -> String {
    let created = b
        .api()
        .call(
            "createExtension",
            &params(&[("name", "nbb-ext"), ("type", "NetworkOrchestrator")]),
        )
        .unwrap();
    let id = created["createextensionresponse"]["extension"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    b.api()
        .call(
            "registerExtension",
            &with_details(
                params(&[
                    ("extensionid", &id),
                    ("resourceid", PN),
                    ("resourcetype", "PhysicalNetwork"),
                ]),
                &[
                    ("hosts", hosts),
                    ("executor.key", key),
                    ("executor.fingerprint", fingerprint),
                ],
            ),
        )
        .unwrap();
    id
}

fn update_registration(b: &Bridge, id: &str, details: &[(&str, &str)]) {
    b.api()
        .call(
            "updateRegisteredExtension",
            &with_details(
                params(&[
                    ("extensionid", id),
                    ("resourceid", PN),
                    ("resourcetype", "PhysicalNetwork"),
                ]),
                details,
            ),
        )
        .unwrap();
}

/// An envelope whose own details are useless: the registry's must be used.
fn env(device: Value, payload: Value) -> Vec<u8> {
    envelope(
        &json!({"hosts": "192.0.2.1", "executor.key": "stale"}),
        device,
        payload,
    )
}

fn ensure(b: &Bridge, id: &str, current_host: Option<&str>, network: &str) -> String {
    let current = match current_host {
        Some(h) => json!({"host": h, "namespace": format!("cs-net-{network}")}).to_string(),
        None => "{}".to_string(),
    };
    b.execute_registered(
        id,
        PN,
        "ensure-network-device",
        &env(
            json!({}),
            json!({"network_id": network, "current_details": current}),
        ),
        T,
    )
    .unwrap()
}

fn run(b: &Bridge, id: &str, host: &str, command: &str, payload: Value) -> Result<String, String> {
    let ns = format!(
        "cs-net-{}",
        payload["network_id"].as_str().unwrap_or_default()
    );
    b.execute_registered(id, PN, command, &env(device(host, &ns), payload), T)
        .map_err(|e| format!("{:?}: {e}", e.kind()))
}

#[test]
fn registry_details_key_rotation_and_bindings() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate();
    let fake = FakeExecutor::start(&cert, "key-1");
    let b = open(dir.path());
    let id = register(&b, &fake.name(), "key-1", &cert.fingerprint());

    // ensure-network-device with the registry's details; binding recorded.
    let out = ensure(&b, &id, None, "42");
    assert_eq!(
        out,
        format!(r#"{{"host":"{}","namespace":"cs-net-42"}}"#, fake.name())
    );
    let binding = b
        .api()
        .registry()
        .get_binding(&BindingTarget::Network("42".into()))
        .unwrap()
        .unwrap();
    assert_eq!(binding.details, out);
    assert_eq!(binding.provider, "nbb-ext");

    run(
        &b,
        &id,
        &fake.name(),
        "implement-network",
        json!({"network_id": "42"}),
    )
    .unwrap();
    // The body sent carries the registry's details, not the envelope's.
    let (cmd, sent) = fake.received().last().cloned().unwrap();
    assert_eq!(cmd, "implement-network");
    let sent_details = &sent["physical-network-extension-details"];
    assert_eq!(sent_details["hosts"], json!(fake.name()));
    assert_eq!(sent_details["executor.key"], json!("key-1"));

    // The executors rotate to key-2 first: the registry's old key is refused.
    fake.set_key("key-2");
    let err = run(
        &b,
        &id,
        &fake.name(),
        "add-dns-entry",
        json!({"network_id": "42", "ip": "10.1.1.5", "hostname": "vm1"}),
    )
    .unwrap_err();
    assert!(
        err.starts_with("Configuration: ") && err.contains("check 'executor.key'"),
        "{err}"
    );
    assert!(!err.contains("key-1") && !err.contains("key-2"), "{err}");
    // updateRegisteredExtension rotates it: the next command succeeds, no restart.
    update_registration(
        &b,
        &id,
        &[
            ("hosts", &fake.name()),
            ("executor.key", "key-2"),
            ("executor.fingerprint", &cert.fingerprint()),
        ],
    );
    run(
        &b,
        &id,
        &fake.name(),
        "add-dns-entry",
        json!({"network_id": "42", "ip": "10.1.1.5", "hostname": "vm1"}),
    )
    .unwrap();

    // Unregister is refused while network 42 uses the provider.
    let unregister = params(&[
        ("extensionid", &id),
        ("resourceid", PN),
        ("resourcetype", "PhysicalNetwork"),
    ]);
    let e = b
        .api()
        .call("unregisterExtension", &unregister)
        .unwrap_err();
    assert_eq!(
        e.text,
        format!("Cannot unregister extension 'nbb-ext' from physical network {PN}. Provider is used by 1 existing network service(s)")
    );
    // The extension manager's refusal: CloudStack answers 530 for it.
    assert_eq!(e.code, 530);
    run(
        &b,
        &id,
        &fake.name(),
        "destroy-network",
        json!({"network_id": "42"}),
    )
    .unwrap();
    assert!(b
        .api()
        .registry()
        .get_binding(&BindingTarget::Network("42".into()))
        .unwrap()
        .is_none());
    // the journal record went away with the network
    assert_eq!(b.api().registry().journal_count().unwrap(), 0);
    b.api().call("unregisterExtension", &unregister).unwrap();
    // Not registered any more: a configuration error naming both ids.
    let e = b
        .execute_registered(
            &id,
            PN,
            "implement-network",
            &env(json!({}), json!({"network_id": "42"})),
            T,
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Configuration);
    assert_eq!(
        e.to_string(),
        format!("extension {id} is not registered with physical network {PN}")
    );
}

#[test]
fn hosts_change_moves_the_network_and_replays_the_journal_from_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate();
    let mut a = FakeExecutor::start(&cert, "k");
    let bb = FakeExecutor::start(&cert, "k");
    let id;
    {
        let b = open(dir.path());
        id = register(&b, &a.name(), "k", &cert.fingerprint());
        ensure(&b, &id, None, "42");
        run(
            &b,
            &id,
            &a.name(),
            "implement-network",
            json!({"network_id": "42"}),
        )
        .unwrap();
        run(
            &b,
            &id,
            &a.name(),
            "assign-ip",
            json!({"network_id": "42", "public_ip": "203.0.113.10"}),
        )
        .unwrap();
        run(
            &b,
            &id,
            &a.name(),
            "add-dns-entry",
            json!({"network_id": "42", "ip": "10.1.1.5", "hostname": "vm1"}),
        )
        .unwrap();
        assert_eq!(b.api().registry().journal_count().unwrap(), 1);
    }
    // Restart (a new Bridge on the same registry); host a is gone and the
    // operator lists only b.
    a.stop();
    let b2 = open(dir.path());
    update_registration(
        &b2,
        &id,
        &[
            ("hosts", &bb.name()),
            ("executor.key", "k"),
            ("executor.fingerprint", &cert.fingerprint()),
        ],
    );
    let out = ensure(&b2, &id, Some(&a.name()), "42");
    assert_eq!(
        out,
        format!(r#"{{"host":"{}","namespace":"cs-net-42"}}"#, bb.name())
    );
    let cmds = bb.received_commands();
    // cleared of any stale copy, then the journal replayed in order
    assert_eq!(
        cmds,
        vec![
            "destroy-network",
            "implement-network",
            "assign-ip",
            "add-dns-entry"
        ],
        "{cmds:?}"
    );
    // the replayed bodies carry the registry's current details
    for (_, sent) in bb.received() {
        assert_eq!(
            sent["physical-network-extension-details"]["hosts"],
            json!(bb.name())
        );
    }
    // the binding follows the move
    let binding = b2
        .api()
        .registry()
        .get_binding(&BindingTarget::Network("42".into()))
        .unwrap()
        .unwrap();
    assert_eq!(binding.details, out);
}

#[test]
fn envelope_details_form_needs_no_registry() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate();
    let fake = FakeExecutor::start(&cert, "k");
    let b = open(dir.path());
    let details = details(&[fake.name()], "k", &cert.fingerprint());
    let out = b
        .execute(
            "ensure-network-device",
            &envelope(
                &details,
                json!({}),
                json!({"network_id": "7", "current_details": "{}"}),
            ),
            T,
        )
        .unwrap();
    assert_eq!(
        out,
        format!(r#"{{"host":"{}","namespace":"cs-net-7"}}"#, fake.name())
    );
    // no registration named: no binding
    assert!(b
        .api()
        .registry()
        .get_binding(&BindingTarget::Network("7".into()))
        .unwrap()
        .is_none());
    let e = b.execute("implement-network", b"{}", T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Configuration);
}

/// A network namespace of this test run, removed on drop (also on failure).
struct NsGuard(String);

impl NsGuard {
    fn create(name: &str) -> NsGuard {
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", name]);
        let g = NsGuard(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
        g
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[test]
fn dispatch_netns_runs_executor_traffic_inside_the_namespace() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skip dispatch_netns test: needs root");
        return;
    }
    let name = format!("nbb-ns{}", std::process::id());
    let _guard = NsGuard::create(&name);
    let path = format!("/run/netns/{name}");
    let cert = TestCert::generate();
    // The executor listens on 127.0.0.1 inside the namespace only.
    let ns = Netns::open(Path::new(&path)).unwrap();
    let fake = std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter().unwrap();
            FakeExecutor::start(&cert, "k")
        })
        .join()
        .unwrap()
    });
    let details = details(&[fake.name()], "k", &cert.fingerprint());
    let envelope = envelope(
        &details,
        json!({}),
        json!({"network_id": "42", "current_details": "{}"}),
    );
    let expected = format!(r#"{{"host":"{}","namespace":"cs-net-42"}}"#, fake.name());

    // From the root namespace nothing answers there.
    let d1 = tempfile::tempdir().unwrap();
    let root = open(d1.path());
    let e = root
        .execute("ensure-network-device", &envelope, T)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");

    // With --dispatch-netns the same call (probe, then command) gets through,
    // while this thread stays in the root namespace.
    let d2 = tempfile::tempdir().unwrap();
    let mut config = BridgeConfig::new(ApiConfig::in_dir(d2.path()));
    config.settings = settings();
    config.dispatch_netns = Some(path.clone().into());
    let inside = Bridge::open(config).unwrap();
    assert_eq!(inside.dispatcher().netns(), Some(Path::new(&path)));
    for _ in 0..3 {
        assert_eq!(
            inside
                .execute("ensure-network-device", &envelope, T)
                .unwrap(),
            expected
        );
    }
    let me = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let init = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(me, init, "the calling thread must not have moved");

    // The connector opens its sockets inside the namespace whichever thread
    // drives the request: the blocking form runs on this thread, which
    // stays in the root namespace (nothing answers there, as shown above).
    // A command sent straight to its host (no health probe on a runtime
    // thread first) connects from here.
    let direct = Dispatcher::new_in_netns(Arc::new(MemoryJournal::new()), Some(Path::new(&path)))
        .unwrap()
        .with_settings(settings());
    let dns = dispatch_support::envelope(
        &details,
        device(&fake.name(), "cs-net-42"),
        json!({"network_id": "42", "ip": "10.1.1.5", "hostname": "vm1"}),
    );
    for _ in 0..3 {
        direct.execute("add-dns-entry", &dns, T).unwrap();
    }
    let me = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    assert_eq!(me, init, "the calling thread must not have moved");

    // A path that is not a namespace is refused at open.
    let d3 = tempfile::tempdir().unwrap();
    let mut config = BridgeConfig::new(ApiConfig::in_dir(d3.path()));
    config.dispatch_netns = Some("/run/netns/nbb-missing-ns".into());
    let e = Bridge::open(config).unwrap_err().to_string();
    assert!(
        e.starts_with("cannot open network namespace '/run/netns/nbb-missing-ns'"),
        "{e}"
    );
}

/// Every path under `dir` (sorted).
fn paths_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(p) = pending.pop() {
        if p.is_dir() {
            pending.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        out.push(p);
    }
    out.sort();
    out
}

/// Opening with a setting that names something unusable is a
/// configuration error (431, what JNI turns into kind CONFIGURATION) whose
/// text names the setting, its path and the problem; nothing is created.
#[test]
fn open_refuses_unusable_settings_as_configuration_errors() {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = |name: &str, len: usize, mode: u32| {
        let p = d.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .unwrap();
        std::io::Write::write_all(&mut f, &vec![7u8; len]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let loose = key("loose.key", 32, 0o644);
    let short = key("short.key", 16, 0o600);
    let good = key("good.key", 32, 0o600);
    let key_dir = d.join("key-is-a-dir");
    std::fs::create_dir(&key_dir).unwrap();
    let db_dir = d.join("db-is-a-dir");
    std::fs::create_dir(&db_dir).unwrap();
    let not_db = d.join("notes.txt");
    std::fs::write(
        &not_db,
        "not a database, but long enough to be read as a header\n".repeat(20),
    )
    .unwrap();
    let cases = [
        (
            d.join("a.db"),
            loose.clone(),
            format!(
                "key file {} is accessible by group or others (mode 644); refusing to use it, chmod 600 it",
                loose.display()
            ),
        ),
        (
            d.join("b.db"),
            short.clone(),
            format!("key file {} must hold exactly 32 bytes", short.display()),
        ),
        (
            d.join("c.db"),
            key_dir.clone(),
            format!("key file {} is not a regular file", key_dir.display()),
        ),
        (
            db_dir.clone(),
            good.clone(),
            format!(
                "database {} is a directory, not a SQLite database file",
                db_dir.display()
            ),
        ),
        (
            db_dir.clone(),
            d.join("new.key"),
            format!(
                "database {} is a directory, not a SQLite database file",
                db_dir.display()
            ),
        ),
        (
            not_db.clone(),
            d.join("new.key"),
            format!("database {} is not a SQLite database file", not_db.display()),
        ),
    ];
    for (database, key_file, expected) in cases {
        let before = paths_under(d);
        let config = BridgeConfig::new(ApiConfig {
            database: netbridge_control::registry::StoreLocation::Sqlite(database),
            key_file,
        });
        let e = Bridge::open(config).unwrap_err();
        assert!(e.is_configuration(), "{e:?}");
        let netbridge_control::bridge::BridgeOpenError::Api(api) = &e else {
            panic!("{e:?}");
        };
        assert_eq!((api.code, api.text.as_str()), (431, expected.as_str()));
        assert_eq!(paths_under(d), before, "{expected}: something was created");
    }
}
