//! CloudStack's database as netbridge's store, on a private MariaDB server
//! (`netbridge_testbed::mariadb`):
//! - the rows written are exactly what CloudStack holds (asserted with SQL);
//! - the schema check at open refuses other CloudStack schemas, naming the
//!   table, the column and the version, and never alters CloudStack's tables;
//! - several management servers (in-process API handles and `netbridge api`
//!   processes) on one database: no lost update, one winner per name,
//!   consistent register/unregister, a server killed with SIGKILL in the
//!   middle of a transaction;
//! - rows another server keeps locked end in a clear retryable error.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mysql::prelude::Queryable;
use netbridge_control::api::{Api, ApiConfig, Params};
use netbridge_control::registry::{ResourceType, StoreLocation};
use netbridge_testbed::mariadb::{cloud_database, CloudDb};
use serde_json::Value;

const PN1: &str = "7b6b8a3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
const PN2: &str = "0e8f2b1c-3d4e-4f5a-9b6c-7d8e9f0a1b2c";
const CLUSTER: &str = "c1a2b3c4-d5e6-4f70-8192-a3b4c5d6e7f8";
const SECRET: &str = "S3cr3t-executor-key-value-9f8e7d";
const SEALED: &str = "netbridge:aes256gcm:v1:";

static BIN: std::sync::LazyLock<PathBuf> =
    std::sync::LazyLock::new(|| netbridge_testbed::workspace_bin("netbridge"));

struct Fx {
    db: CloudDb,
    dir: tempfile::TempDir,
    api: Api,
    pn1: u64,
    cluster: u64,
}

impl Fx {
    fn new() -> Fx {
        Fx::with_params("")
    }

    /// `params`: location parameters (`?lock_wait_timeout=1`).
    fn with_params(params: &str) -> Fx {
        let db = cloud_database("st");
        let pn1 = db.add_physical_network(PN1);
        db.add_physical_network(PN2);
        let cluster = db.add_cluster(CLUSTER);
        let dir = tempfile::tempdir().unwrap();
        let api = Api::open(config(&db, dir.path(), params)).unwrap();
        Fx {
            db,
            dir,
            api,
            pn1,
            cluster,
        }
    }

    /// Another management server's handle on the same database and key.
    fn server(&self) -> Api {
        Api::open(config(&self.db, self.dir.path(), "")).unwrap()
    }

    fn call(&self, api: &Api, cmd: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let p: Params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        api.call(cmd, &p)
            .map_err(|e| format!("{} {}", e.code, e.text))
    }

    fn ok(&self, cmd: &str, params: &[(&str, &str)]) -> Value {
        self.call(&self.api, cmd, params)
            .unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }

    fn create(&self, name: &str, services: &str, extra: &[(&str, &str)]) -> String {
        let mut p = vec![
            ("name", name),
            ("type", "NetworkOrchestrator"),
            ("details[0].key", "network.services"),
            ("details[0].value", services),
        ];
        p.extend_from_slice(extra);
        self.ok("createExtension", &p)["createextensionresponse"]["extension"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// `netbridge --database … api <command> k=v …` as a separate process.
    fn cli(&self) -> Command {
        let mut cmd = Command::new(&*BIN);
        cmd.arg("--database")
            .arg(&self.db.url)
            .arg("--key-file")
            .arg(self.dir.path().join("secret.key"))
            .arg("--state-dir")
            .arg(self.dir.path())
            .env_remove("NETBRIDGE_STATE_DIR")
            .env_remove("NETBRIDGE_DB_PASSWORD")
            .stdin(Stdio::null());
        cmd
    }

    fn sql<T: mysql::prelude::FromRow>(&self, query: &str) -> Vec<T> {
        self.db.conn().query(query).unwrap()
    }
}

fn config(db: &CloudDb, dir: &Path, params: &str) -> ApiConfig {
    ApiConfig {
        database: StoreLocation::parse(&format!("{}{params}", db.url)).unwrap(),
        key_file: dir.join("secret.key"),
    }
}

/// `id, uuid, name, type, relative_path, state, path_ready, is_user_defined,
/// removed` of an `extension` row.
type ExtensionRow = (
    u64,
    String,
    String,
    String,
    String,
    String,
    u8,
    u8,
    Option<String>,
);

/// `uuid, physical_network_id, provider_name, state` and seven service flags.
type ProviderRow = (String, u64, String, String, u8, u8, u8, u8, u8, u8, u8);

fn is_uuid(s: &str) -> bool {
    uuid_shape(s) && s.as_bytes()[14] == b'4'
}

fn uuid_shape(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
}

#[test]
fn rows_are_what_cloudstack_holds() {
    let fx = Fx::new();
    let ext = fx.create(
        "ovs-ext",
        "Dhcp,Dns,SourceNat,StaticNat,CustomAction",
        &[
            ("details[1].key", "api.secret"),
            ("details[1].value", SECRET),
            ("details[2].key", "visible.marker"),
            ("details[2].value", "m-1"),
        ],
    );
    assert!(is_uuid(&ext), "{ext}");
    fx.ok(
        "registerExtension",
        &[
            ("extensionid", &ext),
            ("resourceid", PN1),
            ("resourcetype", "PhysicalNetwork"),
            ("details[0].hosts", "192.0.2.11,192.0.2.12"),
            ("details[1].executor.key", SECRET),
        ],
    );
    let orch = fx.ok(
        "createExtension",
        &[("name", "orch"), ("type", "Orchestrator")],
    )["createextensionresponse"]["extension"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    fx.ok(
        "registerExtension",
        &[
            ("extensionid", &orch),
            ("resourceid", CLUSTER),
            ("resourcetype", "Cluster"),
        ],
    );

    // extension: CloudStack's columns, a v4 uuid, not removed.
    let rows: Vec<ExtensionRow> = fx.sql(
        "SELECT id, uuid, name, type, relative_path, state, path_ready, is_user_defined,
                DATE_FORMAT(removed, '%Y') FROM extension WHERE name = 'ovs-ext'",
    );
    assert_eq!(rows.len(), 1);
    let (ext_id, uuid, name, ty, path, state, path_ready, user_defined, removed) = rows[0].clone();
    assert_eq!(uuid, ext);
    assert_eq!(
        (name.as_str(), ty.as_str(), path.as_str(), state.as_str()),
        (
            "ovs-ext",
            "NetworkOrchestrator",
            "ovs-ext/ovs-ext.sh",
            "Enabled"
        )
    );
    assert_eq!((path_ready, user_defined, removed), (0, 1, None));
    let created: Vec<String> = fx.sql(&format!(
        "SELECT DATE_FORMAT(created, '%Y-%m-%d %H:%i') FROM extension WHERE id = {ext_id}"
    ));
    assert_eq!(created.len(), 1);

    // extension_details: hidden ones with display=0 and sealed, never plain.
    let details: Vec<(String, String, u8)> = fx.sql(&format!(
        "SELECT name, value, display FROM extension_details WHERE extension_id = {ext_id} ORDER BY name"
    ));
    let by_name = |n: &str| details.iter().find(|d| d.0 == n).cloned().unwrap();
    assert_eq!(by_name("network.services").2, 1);
    assert_eq!(
        by_name("visible.marker"),
        ("visible.marker".into(), "m-1".into(), 1)
    );
    let (_, secret_value, display) = by_name("api.secret");
    assert_eq!(display, 0);
    assert!(secret_value.starts_with(SEALED), "{secret_value}");
    assert!(!secret_value.contains(SECRET));

    // extension_resource_map: CloudStack's numeric resource ids.
    let maps: Vec<(u64, u64, String, Option<String>)> = fx.sql(
        "SELECT id, resource_id, TRIM(resource_type), DATE_FORMAT(removed, '%Y')
           FROM extension_resource_map ORDER BY id",
    );
    assert_eq!(maps.len(), 2);
    assert_eq!(
        (maps[0].1, maps[0].2.as_str(), maps[0].3.clone()),
        (fx.pn1, "PhysicalNetwork", None)
    );
    assert_eq!((maps[1].1, maps[1].2.as_str()), (fx.cluster, "Cluster"));
    let map_details: Vec<(String, String, u8)> = fx.sql(&format!(
        "SELECT name, value, display FROM extension_resource_map_details
          WHERE extension_resource_map_id = {} ORDER BY name",
        maps[0].0
    ));
    assert_eq!(map_details.len(), 2);
    assert_eq!(map_details[0].0, "executor.key");
    assert_eq!(map_details[0].2, 0);
    assert!(map_details[0].1.starts_with(SEALED));
    assert_eq!(
        map_details[1],
        ("hosts".into(), "192.0.2.11,192.0.2.12".into(), 1)
    );

    // The provider row registration created, on CloudStack's numeric id.
    let providers: Vec<ProviderRow> = fx.sql(
        "SELECT uuid, physical_network_id, provider_name, state, dhcp_service_provided,
                dns_service_provided, source_nat_service_provided, static_nat_service_provided,
                custom_action_service_provided, load_balance_service_provided, firewall_service_provided
           FROM physical_network_service_providers",
    );
    assert_eq!(providers.len(), 1);
    let p = &providers[0];
    assert!(is_uuid(&p.0));
    assert_eq!(
        (p.1, p.2.as_str(), p.3.as_str()),
        (fx.pn1, "ovs-ext", "Enabled")
    );
    assert_eq!((p.4, p.5, p.6, p.7, p.8, p.9, p.10), (1, 1, 1, 1, 1, 0, 0));
    let listed = fx.ok("listNetworkServiceProviders", &[("physicalnetworkid", PN1)]);
    let nsp = &listed["listnetworkserviceprovidersresponse"]["networkserviceprovider"][0];
    assert_eq!(nsp["id"], p.0.as_str());

    // An extension CloudStack itself created is seen by netbridge.
    fx.db
        .conn()
        .query_drop(
            "INSERT INTO extension (uuid, name, description, type, relative_path, path_ready,
                                    is_user_defined, state, created)
             VALUES ('9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a', 'Proxmox', 'by CloudStack',
                     'Orchestrator', 'Proxmox/proxmox.sh', 1, 0, 'Enabled', UTC_TIMESTAMP())",
        )
        .unwrap();
    let r = fx.ok("listExtensions", &[("name", "proxmox")]);
    assert_eq!(
        r["listextensionsresponse"]["extension"][0]["id"],
        "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
    );

    // Unregister: the mapping is marked removed, its details and the
    // provider row go.
    fx.ok(
        "unregisterExtension",
        &[
            ("extensionid", &ext),
            ("resourceid", PN1),
            ("resourcetype", "PhysicalNetwork"),
        ],
    );
    let removed: Vec<(u64, Option<String>)> = fx.sql(&format!(
        "SELECT id, DATE_FORMAT(removed, '%Y') FROM extension_resource_map WHERE id = {}",
        maps[0].0
    ));
    assert!(removed[0].1.is_some(), "removed is set");
    let left: Vec<u64> = fx.sql(&format!(
        "SELECT COUNT(*) FROM extension_resource_map_details WHERE extension_resource_map_id = {}",
        maps[0].0
    ));
    assert_eq!(left, vec![0]);
    let left: Vec<u64> = fx.sql("SELECT COUNT(*) FROM physical_network_service_providers");
    assert_eq!(left, vec![0]);
    // Registering again creates a new mapping and provider.
    fx.ok(
        "registerExtension",
        &[
            ("extensionid", &ext),
            ("resourceid", PN1),
            ("resourcetype", "PhysicalNetwork"),
        ],
    );
    let active: Vec<u64> = fx.sql(
        "SELECT COUNT(*) FROM extension_resource_map WHERE resource_type = 'PhysicalNetwork' AND removed IS NULL",
    );
    assert_eq!(active, vec![1]);
    fx.ok(
        "unregisterExtension",
        &[
            ("extensionid", &ext),
            ("resourceid", PN1),
            ("resourcetype", "PhysicalNetwork"),
        ],
    );

    // Delete: soft, details gone; the name is free again.
    fx.ok("deleteExtension", &[("id", &ext)]);
    let gone: Vec<(Option<String>,)> = fx.sql(&format!(
        "SELECT DATE_FORMAT(removed, '%Y') FROM extension WHERE id = {ext_id}"
    ));
    assert!(gone[0].0.is_some());
    let left: Vec<u64> = fx.sql(&format!(
        "SELECT COUNT(*) FROM extension_details WHERE extension_id = {ext_id}"
    ));
    assert_eq!(left, vec![0]);
    let r = fx.ok("listExtensions", &[("id", &ext)]);
    assert!(
        r["listextensionsresponse"]["extension"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{r}"
    );
    let again = fx.create("ovs-ext", "Dhcp", &[]);
    assert_ne!(again, ext);

    // A resource CloudStack does not know is refused, naming the parameter.
    let e = fx
        .call(
            &fx.api,
            "registerExtension",
            &[
                ("extensionid", &again),
                ("resourceid", "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"),
                ("resourcetype", "PhysicalNetwork"),
            ],
        )
        .unwrap_err();
    assert_eq!(
        e,
        "431 Invalid parameter resourceid: no physical network with id aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee in CloudStack"
    );
}

/// `SHOW CREATE TABLE` of every CloudStack table.
fn cloudstack_ddl(db: &CloudDb) -> Vec<String> {
    let mut c = db.conn();
    [
        "data_center",
        "physical_network",
        "cluster",
        "physical_network_service_providers",
        "extension",
        "extension_details",
        "extension_resource_map",
        "extension_resource_map_details",
    ]
    .iter()
    .map(|t| {
        let row: Option<(String, String)> =
            c.query_first(format!("SHOW CREATE TABLE `{t}`")).unwrap();
        // The AUTO_INCREMENT counter is data, not schema.
        let ddl = row.unwrap().1;
        ddl.split(' ')
            .filter(|w| !w.starts_with("AUTO_INCREMENT="))
            .collect::<Vec<_>>()
            .join(" ")
    })
    .collect()
}

fn open_err(db: &CloudDb, dir: &Path) -> String {
    match Api::open(config(db, dir, "")) {
        Ok(_) => panic!("opened a database it should refuse"),
        Err(e) => e.text,
    }
}

#[test]
fn schema_check_refuses_other_cloudstack_schemas_and_never_alters_them() {
    let dir = tempfile::tempdir().unwrap();
    // A good database: netbridge's own tables appear, CloudStack's stay as
    // they were.
    let db = cloud_database("schema");
    let before = cloudstack_ddl(&db);
    let api = Api::open(config(&db, dir.path(), "")).unwrap();
    drop(api);
    drop(Api::open(config(&db, dir.path(), "")).unwrap());
    assert_eq!(cloudstack_ddl(&db), before);
    let mut ours: Vec<String> = db
        .conn()
        .query(format!(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = '{}'
              AND table_name LIKE 'netbridge%'",
            db.name
        ))
        .unwrap();
    ours.sort();
    assert_eq!(
        ours,
        vec![
            "netbridge_api_keys",
            "netbridge_async_jobs",
            "netbridge_bindings",
            "netbridge_journal_entries",
            "netbridge_journal_heads",
            "netbridge_locks",
            "netbridge_offering_services",
            "netbridge_offerings",
            "netbridge_schema"
        ]
    );
    // A newer netbridge schema is refused.
    db.conn()
        .query_drop("UPDATE netbridge_schema SET version = 99")
        .unwrap();
    let e = open_err(&db, dir.path());
    assert!(e.contains("netbridge schema version 99"), "{e}");

    // CloudStack 4.22: detail values of 255 characters.
    let db = cloud_database("schema");
    db.conn()
        .query_drop("ALTER TABLE extension_resource_map_details MODIFY value varchar(255) NOT NULL")
        .unwrap();
    let before = cloudstack_ddl(&db);
    let e = open_err(&db, dir.path());
    assert!(
        e.contains(
            "CloudStack table 'extension_resource_map_details' column 'value' is varchar(255)"
        ) && e.contains("varchar(4096) as in CloudStack 4.23"),
        "{e}"
    );
    assert_eq!(cloudstack_ddl(&db), before, "refused without altering");

    // Before 4.23: no custom action flag on providers.
    let db = cloud_database("schema");
    db.conn()
        .query_drop("ALTER TABLE physical_network_service_providers DROP COLUMN custom_action_service_provided")
        .unwrap();
    let e = open_err(&db, dir.path());
    assert!(
        e.contains("CloudStack table 'physical_network_service_providers' has no column 'custom_action_service_provided'")
            && e.contains("CloudStack 4.23"),
        "{e}"
    );

    // Not a CloudStack database at all (before 4.21: no extension tables).
    let db = cloud_database("schema");
    db.conn()
        .query_drop("DROP TABLE extension_resource_map_details")
        .unwrap();
    let e = open_err(&db, dir.path());
    assert!(
        e.contains("table 'extension_resource_map_details' is missing")
            && e.contains("never creates CloudStack's tables"),
        "{e}"
    );
    let ours: Vec<u64> = db
        .conn()
        .query(format!(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{}'
              AND table_name LIKE 'netbridge%'",
            db.name
        ))
        .unwrap();
    assert_eq!(ours, vec![0], "nothing created in a refused database");
}

#[test]
fn rows_held_by_another_server_end_in_a_retryable_error() {
    let fx = Fx::with_params("?lock_wait_timeout=1");
    let ext = fx.create("busy", "Dhcp", &[]);
    fx.ok(
        "registerExtension",
        &[
            ("extensionid", &ext),
            ("resourceid", PN1),
            ("resourcetype", "PhysicalNetwork"),
            ("details[0].hosts", "192.0.2.1"),
        ],
    );
    // Another server holds the extension's lock row in an open transaction.
    let mut holder = fx.db.conn();
    holder.query_drop("START TRANSACTION").unwrap();
    holder
        .exec_drop(
            "UPDATE netbridge_locks SET version = version + 1 WHERE scope = ?",
            (format!("extension:{ext}"),),
        )
        .unwrap();
    let params = [
        ("extensionid", ext.as_str()),
        ("resourceid", PN1),
        ("resourcetype", "PhysicalNetwork"),
        ("details[0].hosts", "192.0.2.2"),
    ];
    let e = fx
        .call(&fx.api, "updateRegisteredExtension", &params)
        .unwrap_err();
    assert!(
        e.starts_with("534 The registry is busy: other management servers kept changing the same rows (8 attempts); nothing was changed, retry the call"),
        "{e}"
    );
    assert!(!e.contains("Lock wait timeout"), "no driver text: {e}");
    holder.query_drop("ROLLBACK").unwrap();
    // Nothing changed, and the same call now succeeds.
    let full = fx
        .api
        .registry()
        .registration_details_full(&ext, ResourceType::PhysicalNetwork, PN1)
        .unwrap();
    assert_eq!(full.get("hosts"), Some("192.0.2.1"));
    fx.ok("updateRegisteredExtension", &params);
    let full = fx
        .api
        .registry()
        .registration_details_full(&ext, ResourceType::PhysicalNetwork, PN1)
        .unwrap();
    assert_eq!(full.get("hosts"), Some("192.0.2.2"));
}

/// Ends every connection the database's server holds for `db` other than
/// `own`'s and waits until the server has closed them.
fn kill_connections(db: &CloudDb, own: &mut mysql::Conn) -> usize {
    let ids: Vec<u64> = own
        .exec(
            "SELECT id FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
            (&db.name,),
        )
        .unwrap();
    for id in &ids {
        match own.query_drop(format!("KILL CONNECTION {id}")) {
            // Already gone by itself: as good.
            Err(mysql::Error::MySqlError(e)) if e.code == 1094 => {}
            other => other.unwrap(),
        }
    }
    wait_until(
        "the killed connections to close",
        Duration::from_secs(30),
        || {
            let left: Vec<u64> = own
            .exec(
                "SELECT id FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
                (&db.name,),
            )
            .unwrap();
            left.iter().all(|id| !ids.contains(id))
        },
    );
    ids.len()
}

#[test]
fn connections_the_server_closed_are_replaced_without_failing_a_call() {
    let fx = Fx::new();
    let ext = fx.create("reconnect", "Dhcp", &[]);
    let register = [
        ("extensionid", ext.as_str()),
        ("resourceid", PN1),
        ("resourcetype", "PhysicalNetwork"),
        ("details[0].hosts", "192.0.2.1"),
    ];
    fx.ok("registerExtension", &register);
    let mut own = fx.db.conn();
    // As after the server's idle timeout or a restart: every pooled
    // connection is dead. A read, then a write, each find a dead one first.
    assert!(kill_connections(&fx.db, &mut own) > 0);
    let listed = fx.ok("listExtensions", &[("id", &ext)]);
    assert_eq!(
        listed["listextensionsresponse"]["extension"][0]["resources"][0]["details"]["hosts"],
        "192.0.2.1"
    );
    assert!(kill_connections(&fx.db, &mut own) > 0);
    let update = [
        ("extensionid", ext.as_str()),
        ("resourceid", PN1),
        ("resourcetype", "PhysicalNetwork"),
        ("details[0].hosts", "192.0.2.2"),
    ];
    let answer = fx.ok("updateRegisteredExtension", &update);
    assert_eq!(
        answer["updateregisteredextensionresponse"]["extension"]["resources"][0]["details"]
            ["hosts"],
        "192.0.2.2",
        "{answer}"
    );
    // Applied exactly once, and the pool keeps serving.
    let hosts: Vec<String> = fx.sql(&format!(
        "SELECT d.value FROM extension_resource_map_details d
           JOIN extension_resource_map m ON m.id = d.extension_resource_map_id
           JOIN extension e ON e.id = m.extension_id
          WHERE e.uuid = '{ext}' AND d.name = 'hosts'"
    ));
    assert_eq!(hosts, vec!["192.0.2.2".to_string()]);
    fx.ok("listExtensions", &[("id", &ext)]);
}

#[test]
fn sealed_details_reach_the_executor_path_decrypted() {
    let fx = Fx::new();
    let ext = fx.create("sealed", "Dhcp", &[]);
    fx.ok(
        "registerExtension",
        &[
            ("extensionid", &ext),
            ("resourceid", PN1),
            ("resourcetype", "PhysicalNetwork"),
            ("details[0].hosts", "192.0.2.1"),
            ("details[1].executor.key", SECRET),
        ],
    );
    // What CloudStack passes the script: the details as stored.
    let stored: Vec<(String, String)> =
        fx.sql("SELECT name, value FROM extension_resource_map_details ORDER BY name");
    let details: serde_json::Map<String, Value> = stored
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    assert!(details["executor.key"]
        .as_str()
        .unwrap()
        .starts_with(SEALED));
    let envelope = serde_json::json!({
        "physical-network-extension-details": details,
        "network-extension-details": {},
        "payload": {"network_id": "42"},
    });
    let bytes = serde_json::to_vec(&envelope).unwrap();
    let revealed = fx.api.registry().reveal_envelope(&bytes).unwrap().unwrap();
    let revealed: Value = serde_json::from_slice(&revealed).unwrap();
    assert_eq!(
        revealed["physical-network-extension-details"]["executor.key"],
        SECRET
    );
    assert_eq!(
        revealed["physical-network-extension-details"]["hosts"],
        "192.0.2.1"
    );
    // An envelope without sealed values is left alone (no parsing).
    assert!(fx.api.registry().reveal_envelope(b"{}").unwrap().is_none());
    // A sealed value moved to another detail name does not decrypt.
    let mut moved = envelope.clone();
    let sealed = moved["physical-network-extension-details"]["executor.key"].clone();
    moved["physical-network-extension-details"]["other.key"] = sealed;
    let e = fx
        .api
        .registry()
        .reveal_envelope(&serde_json::to_vec(&moved).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("failed authentication"), "{e}");
}

/// Runs `f(server, round)` on `servers` threads at once, each standing for
/// a management server; returns their results.
fn on_servers<T: Send>(servers: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = std::sync::Barrier::new(servers);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..servers)
            .map(|i| {
                let f = &f;
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The visible details of a registration.
fn visible(fx: &Fx, ext: &str) -> serde_json::Map<String, Value> {
    let r = fx.ok("listExtensions", &[("id", ext)]);
    r["listextensionsresponse"]["extension"][0]["resources"][0]["details"]
        .as_object()
        .unwrap()
        .clone()
}

#[test]
fn concurrent_updates_from_three_servers_never_lose_or_mix() {
    let fx = Fx::new();
    let ext = fx.create("race", "Dhcp,Dns", &[]);
    fx.ok(
        "registerExtension",
        &[
            ("extensionid", &ext),
            ("resourceid", PN1),
            ("resourcetype", "PhysicalNetwork"),
            ("details[0].executor.key", SECRET),
            ("details[1].hosts", "192.0.2.1"),
        ],
    );
    // Server 0 is an API handle in this process; servers 1 and 2 run
    // `netbridge api` processes. Every call sends a set of three visible
    // keys tagged with the same set id.
    let in_process = fx.server();
    let rounds = 6;
    let set = |server: usize, round: usize| format!("s{server}-r{round}");
    let sent: Vec<Vec<String>> = on_servers(3, |server| {
        let mut done = Vec::new();
        for round in 0..rounds {
            let tag = set(server, round);
            let hosts = format!("192.0.2.{}", 10 + server * 10 + round);
            let pairs = [
                ("details[0].hosts".to_string(), hosts),
                ("details[1].set".to_string(), tag.clone()),
                ("details[2].set.copy".to_string(), tag.clone()),
            ];
            if server == 0 {
                let mut p: Vec<(&str, &str)> = vec![
                    ("extensionid", &ext),
                    ("resourceid", PN1),
                    ("resourcetype", "PhysicalNetwork"),
                ];
                p.extend(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                fx.call(&in_process, "updateRegisteredExtension", &p)
                    .unwrap_or_else(|e| panic!("server 0: {e}"));
            } else {
                let out = fx
                    .cli()
                    .args(["api", "updateRegisteredExtension"])
                    .arg(format!("extensionid={ext}"))
                    .arg(format!("resourceid={PN1}"))
                    .arg("resourcetype=PhysicalNetwork")
                    .args(pairs.iter().map(|(k, v)| format!("{k}={v}")))
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "server {server}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // Never a mix: whatever this server reads back is one whole set.
            let now = visible(&fx, &ext);
            assert_eq!(now["set"], now["set.copy"], "{now:?}");
            done.push(tag);
        }
        done
    });
    let final_details = visible(&fx, &ext);
    let tag = final_details["set"].as_str().unwrap().to_string();
    assert!(sent.iter().flatten().any(|t| *t == tag), "{tag}");
    assert_eq!(final_details["set.copy"], tag.as_str());
    assert_eq!(final_details.len(), 3, "{final_details:?}");
    // The hidden key nobody re-sent survived every update.
    let full = fx
        .api
        .registry()
        .registration_details_full(&ext, ResourceType::PhysicalNetwork, PN1)
        .unwrap();
    assert_eq!(full.get("executor.key"), Some(SECRET));
    let rows: Vec<u64> = fx.sql("SELECT COUNT(*) FROM extension_resource_map_details");
    assert_eq!(rows, vec![4], "3 visible + executor.key, no leftovers");
}

#[test]
fn concurrent_creates_of_one_name_have_exactly_one_winner() {
    let fx = Fx::new();
    let servers = fx.server();
    for name in ["dup-a", "Dup-B", "dup-c"] {
        // Three in-process servers and three processes, all at once.
        let outcomes: Vec<bool> = on_servers(6, |server| {
            if server < 3 {
                fx.call(
                    &servers,
                    "createExtension",
                    &[("name", name), ("type", "Orchestrator")],
                )
                .map_err(|e| assert!(e.contains("Extension by name already exists"), "{e}"))
                .is_ok()
            } else {
                let out = fx
                    .cli()
                    .args(["api", "createExtension"])
                    .arg(format!("name={name}"))
                    .arg("type=Orchestrator")
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success() || text.contains("Extension by name already exists"),
                    "{text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                out.status.success()
            }
        });
        assert_eq!(
            outcomes.iter().filter(|ok| **ok).count(),
            1,
            "{name}: {outcomes:?}"
        );
        let rows: Vec<u64> = fx.sql(&format!(
            "SELECT COUNT(*) FROM extension WHERE name = '{name}' AND removed IS NULL"
        ));
        assert_eq!(rows, vec![1], "{name}");
    }
}

#[test]
fn concurrent_register_and_unregister_stay_consistent() {
    let fx = Fx::new();
    let ext = fx.create("flip", "Dhcp,Lb", &[]);
    let server = fx.server();
    let args = |cmd: &str| {
        vec![
            "api".to_string(),
            cmd.to_string(),
            format!("extensionid={ext}"),
            format!("resourceid={PN2}"),
            "resourcetype=PhysicalNetwork".to_string(),
        ]
    };
    on_servers(3, |i| {
        for round in 0..5 {
            let cmd = if (i + round) % 2 == 0 {
                "registerExtension"
            } else {
                "unregisterExtension"
            };
            if i == 0 {
                // Registering twice is refused; anything else must succeed.
                if let Err(e) = fx.call(
                    &server,
                    cmd,
                    &[
                        ("extensionid", &ext),
                        ("resourceid", PN2),
                        ("resourcetype", "PhysicalNetwork"),
                    ],
                ) {
                    assert!(
                        e.contains("is already registered with physical network"),
                        "{e}"
                    );
                }
            } else {
                let out = fx.cli().args(args(cmd)).output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success() || text.contains("is already registered"),
                    "{text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    });
    // At most one active mapping, and the provider exists exactly when it
    // does.
    let active: Vec<u64> =
        fx.sql("SELECT COUNT(*) FROM extension_resource_map WHERE removed IS NULL");
    let providers: Vec<u64> = fx.sql("SELECT COUNT(*) FROM physical_network_service_providers");
    assert!(active[0] <= 1, "{active:?}");
    assert_eq!(active, providers);
    let listed = fx.ok("listExtensions", &[("id", &ext)]);
    let resources = listed["listextensionsresponse"]["extension"][0]["resources"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    assert_eq!(resources as u64, active[0]);
}

/// Until `pred` holds (the testbed's bounded poll of a condition).
fn wait_until(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
    let held = netbridge_testbed::eventually(timeout, || pred().then_some(()));
    assert!(held.is_some(), "timed out waiting for {what}");
}

#[test]
fn a_server_killed_in_the_middle_of_a_transaction_changes_nothing() {
    let fx = Fx::new();
    let ext = fx.create("kill9", "Dhcp,Dns", &[]);
    fx.ok(
        "registerExtension",
        &[
            ("extensionid", &ext),
            ("resourceid", PN1),
            ("resourcetype", "PhysicalNetwork"),
        ],
    );
    // Hold the provider row, so that an updateExtension changing the
    // services stops there: after it rewrote the extension's details, before
    // it commits.
    let mut holder = fx.db.conn();
    holder.query_drop("START TRANSACTION").unwrap();
    let _: Vec<u64> = holder
        .query("SELECT id FROM physical_network_service_providers FOR UPDATE")
        .unwrap();
    let mut child = fx
        .cli()
        .args(["api", "updateExtension"])
        .arg(format!("id={ext}"))
        .arg("details[0].network.services=Dhcp,Dns,Lb,SourceNat")
        .arg("details[1].marker=from-the-killed-server")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The real condition: its transaction waits for the provider row (other
    // tests share the server: only this database's transactions count).
    let transactions = |state: &str| -> u64 {
        let n: Vec<u64> = fx
            .db
            .conn()
            .exec(
                "SELECT COUNT(*) FROM information_schema.innodb_trx t
                   JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id
                  WHERE p.db = ? AND t.trx_state LIKE ?",
                (&fx.db.name, state),
            )
            .unwrap();
        n[0]
    };
    // Its statement on the provider rows is running (blocked on them).
    let blocked = || -> u64 {
        let n: Vec<u64> = fx
            .db
            .conn()
            .exec(
                "SELECT COUNT(*) FROM information_schema.processlist
                  WHERE db = ? AND info LIKE 'UPDATE physical_network_service_providers%'",
                (&fx.db.name,),
            )
            .unwrap();
        n[0]
    };
    wait_until(
        "the server's transaction to block on the provider rows",
        Duration::from_secs(60),
        || blocked() >= 1,
    );
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    child.wait().unwrap();
    holder.query_drop("ROLLBACK").unwrap();
    // The server's connection is gone; its transaction was rolled back.
    wait_until(
        "the killed server's transaction to roll back",
        Duration::from_secs(60),
        || blocked() == 0 && transactions("%") == 0,
    );
    let details = fx.ok("listExtensions", &[("id", &ext)])["listextensionsresponse"]["extension"]
        [0]["details"]
        .clone();
    assert_eq!(details, serde_json::json!({"network.services": "Dhcp,Dns"}));
    let flags: Vec<(u8, u8)> = fx.sql(
        "SELECT load_balance_service_provided, source_nat_service_provided FROM physical_network_service_providers",
    );
    assert_eq!(flags, vec![(0, 0)]);
    // The others carry on: the same update from another server succeeds.
    let other = fx.server();
    fx.call(
        &other,
        "updateExtension",
        &[("id", &ext), ("details[0].network.services", "Dhcp,Dns,Lb")],
    )
    .unwrap();
    let flags: Vec<(u8, u8)> = fx.sql(
        "SELECT load_balance_service_provided, source_nat_service_provided FROM physical_network_service_providers",
    );
    assert_eq!(flags, vec![(1, 0)]);
}
