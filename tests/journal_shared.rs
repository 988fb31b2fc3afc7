//! The failover journal shared by every management server through
//! CloudStack's database (private MariaDB, `netbridge_testbed::mariadb`):
//! - the commands of one network are sent round-robin through three
//!   "management servers" (two `netbridge-entrypoint` processes, one
//!   configured by environment and one by registration details, and the
//!   library in this process), with the registration details exactly as
//!   CloudStack passes them (the executor key sealed); the network's host
//!   then fails and the new host gets every command from all three,
//!   passwords included;
//! - appends to one network's journal from concurrent servers lose nothing,
//!   and the stored rows follow the same compaction as the in-memory rules.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mysql::prelude::Queryable;
use netbridge_control::api::{Api, ApiConfig, Params};
use netbridge_control::bridge::{Bridge, BridgeConfig};
use netbridge_control::dispatch::{CommandJournal, JournalState};
use netbridge_control::protocol::Command as NetCommand;
use netbridge_control::registry::{Registry, RegistryJournal, StoreLocation};
use netbridge_testbed::mariadb::{cloud_database, CloudDb};
use netbridge_testbed::stand_in::{device, envelope, FakeExecutor, TestCert};
use serde_json::{json, Value};

const PN: &str = "7b6b8a3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
const KEY: &str = "shared-journal-executor-key";
const VM_PASSWORD: &str = "VM-Pa55word-42";

static ENTRYPOINT: std::sync::LazyLock<PathBuf> =
    std::sync::LazyLock::new(|| netbridge_testbed::workspace_bin("netbridge-entrypoint"));

/// A management server's own directory with its copy of the shared key.
fn server_dir(root: &Path, name: &str, key: &[u8]) -> PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("secret.key"))
        .unwrap();
    f.write_all(key).unwrap();
    dir
}

fn api_call(api: &Api, cmd: &str, params: &[(&str, &str)]) -> Value {
    let p: Params = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    api.call(cmd, &p)
        .unwrap_or_else(|e| panic!("{cmd}: {} {}", e.code, e.text))
}

/// The registration details as CloudStack reads them from its tables and
/// passes them to the extension's script (hidden values as stored).
fn details_as_cloudstack_passes_them(db: &CloudDb) -> Value {
    let rows: Vec<(String, String)> = db
        .conn()
        .query("SELECT name, value FROM extension_resource_map_details ORDER BY id")
        .unwrap();
    Value::Object(
        rows.into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    )
}

/// One management server: how it runs a command.
enum Server {
    /// `netbridge-entrypoint` with the store and key in its environment.
    EntryPointEnv { dir: PathBuf, url: String },
    /// `netbridge-entrypoint` configured by registration details only
    /// (`bridge.database`, `bridge.key.file`).
    EntryPointDetails { dir: PathBuf },
    /// The library (the JNI path) in this process.
    Library(Box<Bridge>),
}

impl Server {
    fn run(&self, command: &str, envelope: &[u8]) -> String {
        match self {
            Server::Library(bridge) => bridge
                .execute(command, envelope, Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("{command} through the library: {e}")),
            Server::EntryPointEnv { dir, .. } | Server::EntryPointDetails { dir } => {
                let payload = dir.join("payload.json");
                std::fs::write(&payload, envelope).unwrap();
                let mut cmd = Command::new(&*ENTRYPOINT);
                cmd.arg(command)
                    .arg(&payload)
                    .arg("60")
                    // Local journal files would land here: there must be none.
                    .env("NETBRIDGE_STATE_DIR", dir.join("state"))
                    .env_remove("NETBRIDGE_DATABASE")
                    .env_remove("NETBRIDGE_CLOUDSTACK_DB_PROPERTIES")
                    .env_remove("NETBRIDGE_KEY_FILE")
                    .env_remove("NETBRIDGE_DB_PASSWORD")
                    .env_remove("NETBRIDGE_LOG");
                if let Server::EntryPointEnv { url, .. } = self {
                    cmd.env("NETBRIDGE_DATABASE", url)
                        .env("NETBRIDGE_KEY_FILE", dir.join("secret.key"));
                }
                let out = cmd.output().unwrap();
                assert!(
                    out.status.success(),
                    "{command} through {}: {}{}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        }
    }
}

#[test]
fn commands_spread_over_three_servers_move_with_all_of_them() {
    let db = cloud_database("journal");
    db.add_physical_network(PN);
    let root = tempfile::tempdir().unwrap();
    let cert = TestCert::generate();
    let fakes = [
        FakeExecutor::start(&cert, KEY),
        FakeExecutor::start(&cert, KEY),
    ];
    let names: Vec<String> = fakes.iter().map(|f| f.name()).collect();

    // The first management server creates the key; the operator copies it
    // to the others.
    let first = root.path().join("admin");
    let admin = Api::open(ApiConfig {
        database: StoreLocation::parse(&db.url).unwrap(),
        key_file: first.join("secret.key"),
    })
    .unwrap();
    let key = std::fs::read(first.join("secret.key")).unwrap();
    let ext = api_call(
        &admin,
        "createExtension",
        &[("name", "nb"), ("type", "NetworkOrchestrator")],
    )["createextensionresponse"]["extension"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b_dir = server_dir(root.path(), "b", &key);
    let b_key = b_dir.join("secret.key").display().to_string();
    api_call(
        &admin,
        "registerExtension",
        &[
            ("extensionid", &ext),
            ("resourceid", PN),
            ("resourcetype", "PhysicalNetwork"),
            ("details[0].hosts", &names.join(",")),
            ("details[1].executor.key", KEY),
            ("details[2].executor.fingerprint", &cert.fingerprint()),
            ("details[3].bridge.database", &db.url),
            ("details[4].bridge.key.file", &b_key),
        ],
    );
    let details = details_as_cloudstack_passes_them(&db);
    assert!(
        details["executor.key"]
            .as_str()
            .unwrap()
            .starts_with("netbridge:aes256gcm:v1:"),
        "{details}"
    );

    let a_dir = server_dir(root.path(), "a", &key);
    let c_dir = server_dir(root.path(), "c", &key);
    let library = Bridge::open(BridgeConfig::new(ApiConfig {
        database: StoreLocation::parse(&db.url).unwrap(),
        key_file: c_dir.join("secret.key"),
    }))
    .unwrap();
    let servers = [
        Server::EntryPointEnv {
            dir: a_dir.clone(),
            url: db.url.clone(),
        },
        Server::EntryPointDetails { dir: b_dir.clone() },
        Server::Library(Box::new(library)),
    ];

    // cksum("42") % 2 = 1: the network starts on the second executor.
    let out = servers[0].run(
        "ensure-network-device",
        &envelope(
            &details,
            json!({}),
            json!({"network_id": "42", "current_details": "{}"}),
        ),
    );
    assert_eq!(
        out.trim(),
        format!("{{\"host\":\"{}\",\"namespace\":\"cs-net-42\"}}", names[1])
    );
    let dev = device(&names[1], "cs-net-42");
    let commands = [
        ("implement-network", json!({"network_id": "42"})),
        (
            "assign-ip",
            json!({"network_id": "42", "public_ip": "203.0.113.10"}),
        ),
        (
            "add-dhcp-entry",
            json!({"network_id": "42", "ip": "10.1.1.5", "mac": "02:00:00:00:00:05", "hostname": "vm5"}),
        ),
        (
            "add-dns-entry",
            json!({"network_id": "42", "ip": "10.1.1.5", "hostname": "vm5"}),
        ),
        (
            "save-password",
            json!({"network_id": "42", "ip": "10.1.1.5", "password": VM_PASSWORD}),
        ),
        (
            "add-static-nat",
            json!({"network_id": "42", "public_ip": "203.0.113.10", "private_ip": "10.1.1.5"}),
        ),
        (
            "apply-fw-rules",
            json!({"network_id": "42", "fw_rules": {"default_egress_allow": true, "rules": []}}),
        ),
        (
            "add-dns-entry",
            json!({"network_id": "42", "ip": "10.1.1.6", "hostname": "vm6"}),
        ),
        (
            "save-password",
            json!({"network_id": "42", "ip": "10.1.1.6", "password": "second-vm-pw"}),
        ),
    ];
    for (i, (command, payload)) in commands.iter().enumerate() {
        servers[i % 3].run(command, &envelope(&details, dev.clone(), payload.clone()));
    }
    let sent: Vec<&str> = commands.iter().map(|(c, _)| *c).collect();
    assert_eq!(fakes[1].received_commands(), sent);

    // Nothing was journaled locally; the shared journal holds no secret.
    for dir in [&a_dir, &b_dir] {
        let files: Vec<_> = std::fs::read_dir(dir.join("state"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(files.is_empty(), "{}: {files:?}", dir.display());
    }
    let dump = db.dump();
    assert!(dump.contains("netbridge_journal_entries"));
    assert!(!dump.contains(VM_PASSWORD) && !dump.contains(KEY));

    // The host fails; the next command, through yet another server, moves
    // the network and replays what all three recorded.
    fakes[1].set_healthy(false);
    let current = serde_json::to_string(&dev).unwrap();
    let out = servers[1].run(
        "ensure-network-device",
        &envelope(
            &details,
            dev.clone(),
            json!({"network_id": "42", "current_details": current}),
        ),
    );
    assert_eq!(
        out.trim(),
        format!("{{\"host\":\"{}\",\"namespace\":\"cs-net-42\"}}", names[0])
    );
    assert_eq!(
        fakes[0].received_commands(),
        [
            "destroy-network",
            "implement-network",
            "assign-ip",
            "add-dhcp-entry",
            "add-dns-entry",
            "save-password",
            "add-static-nat",
            "apply-fw-rules",
            "add-dns-entry",
            "save-password"
        ]
    );
    // The replay carried the passwords and the DNS entries of both VMs.
    let received = fakes[0].received();
    let passwords: Vec<&str> = received
        .iter()
        .filter(|(c, _)| c == "save-password")
        .filter_map(|(_, body)| body["payload"]["password"].as_str())
        .collect();
    assert_eq!(passwords, vec![VM_PASSWORD, "second-vm-pw"]);
    let dns: Vec<&str> = received
        .iter()
        .filter(|(c, _)| c == "add-dns-entry")
        .filter_map(|(_, body)| body["payload"]["ip"].as_str())
        .collect();
    assert_eq!(dns, vec!["10.1.1.5", "10.1.1.6"]);
    // The journal names the new host for every server.
    let registry = Registry::open_at(
        &StoreLocation::parse(&db.url).unwrap(),
        &a_dir.join("secret.key"),
    )
    .unwrap();
    let journal = RegistryJournal::new(Arc::new(registry));
    assert_eq!(
        journal.head("cs-net-42").unwrap().host.as_deref(),
        Some(names[0].as_str())
    );
}

fn dns(ip: &str) -> Value {
    json!({"payload": {"network_id": "42", "ip": ip, "hostname": format!("h-{ip}")}})
}

#[test]
fn concurrent_appends_from_three_servers_lose_nothing() {
    let db = cloud_database("journal");
    let dir = tempfile::tempdir().unwrap();
    let location = StoreLocation::parse(&db.url).unwrap();
    let open = || {
        RegistryJournal::new(Arc::new(
            Registry::open_at(&location, &dir.path().join("secret.key")).unwrap(),
        ))
    };
    let first = open();
    first
        .record(
            "cs-net-42",
            "h1",
            NetCommand::ImplementNetwork,
            &json!({"payload": {"network_id": "42"}}),
        )
        .unwrap();
    let servers = [first, open(), open()];
    // Each server adds 20 DNS entries and removes every fourth one again,
    // all at once on the same network.
    std::thread::scope(|s| {
        for (n, journal) in servers.iter().enumerate() {
            s.spawn(move || {
                for i in 0..20 {
                    let ip = format!("10.{n}.0.{i}");
                    journal
                        .record("cs-net-42", "h1", NetCommand::AddDnsEntry, &dns(&ip))
                        .unwrap();
                    if i % 4 == 3 {
                        journal
                            .record("cs-net-42", "h1", NetCommand::RemoveDnsEntry, &dns(&ip))
                            .unwrap();
                    }
                }
            });
        }
    });
    let state = servers[2].load("cs-net-42").unwrap();
    assert_eq!(state.entries[0].command, "implement-network");
    let mut ips: Vec<String> = state.entries[1..]
        .iter()
        .map(|e| e.envelope["payload"]["ip"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ips.len(), 3 * 15, "{ips:?}");
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3 * 15);
    // Positions are unique and in order.
    let seqs: Vec<i64> = db
        .conn()
        .query("SELECT seq FROM netbridge_journal_entries WHERE `key` = 'cs-net-42' ORDER BY seq")
        .unwrap();
    assert_eq!(seqs.len(), 1 + 3 * 15);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));

    // The same sequence recorded in memory and in the shared rows agree
    // after every kind of compaction.
    let key = "cs-net-43";
    let mut model = JournalState::default();
    let env = |payload: Value| json!({"physical-network-extension-details": {"executor.key": "x"}, "payload": payload});
    let steps: Vec<(NetCommand, Value)> = vec![
        (
            NetCommand::ImplementNetwork,
            env(json!({"network_id": "43", "tag": 1})),
        ),
        (
            NetCommand::AssignIp,
            env(json!({"network_id": "43", "public_ip": "203.0.113.5"})),
        ),
        (
            NetCommand::AddPortForward,
            env(
                json!({"network_id": "43", "public_ip": "203.0.113.5", "public_port": "22", "protocol": "tcp"}),
            ),
        ),
        (
            NetCommand::SavePassword,
            env(json!({"network_id": "43", "ip": "10.4.0.2", "password": "p"})),
        ),
        (
            NetCommand::SaveUserdata,
            env(json!({"network_id": "43", "ip": "10.4.0.2"})),
        ),
        (
            NetCommand::ImplementNetwork,
            env(json!({"network_id": "43", "tag": 2})),
        ),
        (
            NetCommand::SaveVmData,
            env(json!({"network_id": "43", "ip": "10.4.0.2"})),
        ),
        (
            NetCommand::ApplyLbRules,
            env(json!({"network_id": "43", "lb_rules": []})),
        ),
        (
            NetCommand::ReleaseIp,
            env(json!({"network_id": "43", "public_ip": "203.0.113.5"})),
        ),
        (NetCommand::RestoreNetwork, env(json!({"network_id": "43"}))),
    ];
    for (i, (command, envelope)) in steps.iter().enumerate() {
        model.record("h2", *command, envelope);
        servers[i % 3]
            .record(key, "h2", *command, envelope)
            .unwrap();
        assert_eq!(
            servers[(i + 1) % 3].load(key).unwrap(),
            model,
            "step {i} ({command})"
        );
    }
    servers[0]
        .record(
            key,
            "h2",
            NetCommand::DestroyNetwork,
            &env(json!({"network_id": "43"})),
        )
        .unwrap();
    assert_eq!(servers[1].load(key).unwrap(), JournalState::default());
    let left: Vec<u64> = db
        .conn()
        .query("SELECT COUNT(*) FROM netbridge_journal_heads WHERE `key` = 'cs-net-43'")
        .unwrap();
    assert_eq!(left, vec![0], "a torn-down network leaves no row");
}
