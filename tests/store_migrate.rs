//! `netbridge store migrate`: an embedded SQLite registry copied into
//! CloudStack's database (private MariaDB) by the real binary: nothing
//! lost, secrets re-encrypted with the destination's key, idempotent, and
//! conflicting rows refused without writing anything.

use std::path::Path;
use std::process::Command;

use netbridge_control::api::{Api, ApiConfig, Params};
use netbridge_control::dispatch::CommandJournal;
use netbridge_control::protocol::Command as NetCommand;
use netbridge_control::registry::{
    BindingTarget, ProviderFilter, RegistryJournal, ResourceType, StoreLocation,
};
use netbridge_testbed::mariadb::cloud_database;
use serde_json::{json, Value};

const API_SECRET: &str = "nb-test-api-Secret-42";
const PN1: &str = "7b6b8a3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
const CLUSTER: &str = "c1a2b3c4-d5e6-4f70-8192-a3b4c5d6e7f8";
const SECRET: &str = "S3cr3t-executor-key-value-9f8e7d";
const VM_PASSWORD: &str = "vm-password-in-the-journal";

fn call(api: &Api, cmd: &str, params: &[(&str, &str)]) -> Value {
    let p: Params = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    api.call(cmd, &p)
        .unwrap_or_else(|e| panic!("{cmd}: {} {}", e.code, e.text))
}

fn migrate(from: &str, to: &str, from_key: &Path, to_key: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(netbridge_testbed::workspace_bin("netbridge"))
        .args(["store", "migrate", "--from", from, "--to", to])
        .arg("--from-key-file")
        .arg(from_key)
        .arg("--to-key-file")
        .arg(to_key)
        .env_remove("NETBRIDGE_STATE_DIR")
        .env_remove("NETBRIDGE_DB_PASSWORD")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The extensions as the API lists them, without what a store assigns
/// itself (provider ids).
fn listing(api: &Api) -> Value {
    call(api, "listExtensions", &[])["listextensionsresponse"].clone()
}

/// A listing without the names of registered resources: the embedded store
/// shows a resource's id until a network command names it, CloudStack's
/// database shows its own name. Returns the names taken out.
fn without_resource_names(mut listing: Value) -> (Value, Vec<Value>) {
    let mut names = Vec::new();
    if let Some(extensions) = listing["extension"].as_array_mut() {
        for ext in extensions {
            if let Some(resources) = ext["resources"].as_array_mut() {
                for r in resources {
                    if let Some(obj) = r.as_object_mut() {
                        names.extend(obj.remove("name"));
                    }
                }
            }
        }
    }
    (listing, names)
}

#[test]
fn sqlite_registry_moves_into_cloudstacks_database() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("netbridge.db");
    let old_key = dir.path().join("old.key");
    let new_key = dir.path().join("new.key");

    // The single server's registry.
    let source = Api::open(ApiConfig {
        database: StoreLocation::Sqlite(sqlite.clone()),
        key_file: old_key.clone(),
    })
    .unwrap();
    let ext = call(
        &source,
        "createExtension",
        &[
            ("name", "ovs-ext"),
            ("type", "NetworkOrchestrator"),
            ("description", "the network extension"),
            (
                "details[0].network.services",
                "Dhcp,Dns,SourceNat,StaticNat,Firewall",
            ),
            ("details[1].api.secret", SECRET),
        ],
    )["createextensionresponse"]["extension"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let orch = call(
        &source,
        "createExtension",
        &[
            ("name", "orch"),
            ("type", "Orchestrator"),
            ("state", "Disabled"),
        ],
    )["createextensionresponse"]["extension"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    call(
        &source,
        "registerExtension",
        &[
            ("extensionid", &ext),
            ("resourceid", PN1),
            ("resourcetype", "PhysicalNetwork"),
            ("details[0].hosts", "192.0.2.11,192.0.2.12"),
            ("details[1].executor.key", SECRET),
        ],
    );
    call(
        &source,
        "registerExtension",
        &[
            ("extensionid", &orch),
            ("resourceid", CLUSTER),
            ("resourcetype", "Cluster"),
        ],
    );
    let provider = source
        .registry()
        .list_providers(&ProviderFilter::default())
        .unwrap()
        .remove(0);
    call(
        &source,
        "updateNetworkServiceProvider",
        &[("id", &provider.id), ("state", "Disabled")],
    );
    call(
        &source,
        "generateNetworkOfferings",
        &[("extensionid", &ext), ("offeringtype", "isolated")],
    );
    source
        .registry()
        .bind(
            &BindingTarget::Network("209".into()),
            &ext,
            PN1,
            r#"{"host":"h1"}"#,
        )
        .unwrap();
    let journal = RegistryJournal::new(source.registry_handle());
    let env = |p: Value| json!({"payload": p});
    journal
        .record(
            "cs-net-209",
            "192.0.2.11",
            NetCommand::ImplementNetwork,
            &env(json!({"network_id": "209"})),
        )
        .unwrap();
    journal
        .record(
            "cs-net-209",
            "192.0.2.11",
            NetCommand::SavePassword,
            &env(json!({"network_id": "209", "ip": "10.1.1.5", "password": VM_PASSWORD})),
        )
        .unwrap();
    let source_journal = journal.load("cs-net-209").unwrap();
    source
        .registry()
        .add_api_key("ops", "ops-api-key", API_SECRET)
        .unwrap();
    let source_listing = listing(&source);
    drop(journal);
    drop(source);

    // CloudStack's database knows the resources.
    let db = cloud_database("migrate");
    db.add_physical_network(PN1);
    db.add_cluster(CLUSTER);
    let from = format!("sqlite://{}", sqlite.display());
    let (code, out, err) = migrate(&from, &db.url, &old_key, &new_key);
    assert_eq!(code, Some(0), "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["created"],
        json!({"extensions": 2, "registrations": 2, "bindings": 1, "offerings": 1, "journals": 1, "api_keys": 1})
    );
    assert!(
        !err.contains("nb-test-Pa55"),
        "the password is never shown: {err}"
    );

    // Nothing lost, read with the new key only.
    let dest = Api::open(ApiConfig {
        database: StoreLocation::parse(&db.url).unwrap(),
        key_file: new_key.clone(),
    })
    .unwrap();
    let keys = dest.registry().api_keys().unwrap();
    assert_eq!(
        (
            keys[0].name.as_str(),
            keys[0].apikey.as_str(),
            keys[0].secretkey.expose()
        ),
        ("ops", "ops-api-key", API_SECRET),
        "the API key moved, readable with the new key"
    );
    let (moved, names) = without_resource_names(listing(&dest));
    assert_eq!(moved, without_resource_names(source_listing).0);
    // Names now come from CloudStack's physical_network and cluster rows.
    assert!(
        !names.is_empty()
            && names.iter().all(|n| n
                .as_str()
                .is_some_and(|n| n.starts_with("pn-") || n.starts_with("cluster-"))),
        "{names:?}"
    );
    let reg = dest.registry();
    assert_eq!(
        reg.extension_details_full(&ext).unwrap().get("api.secret"),
        Some(SECRET)
    );
    assert_eq!(
        reg.registration_details_full(&ext, ResourceType::PhysicalNetwork, PN1)
            .unwrap()
            .get("executor.key"),
        Some(SECRET)
    );
    let providers = reg.list_providers(&ProviderFilter::default()).unwrap();
    assert_eq!(providers.len(), 1);
    assert_eq!(
        (providers[0].name.as_str(), &providers[0].services),
        ("ovs-ext", &provider.services)
    );
    assert_eq!(providers[0].state.as_str(), "Disabled");
    assert_eq!(
        reg.get_binding(&BindingTarget::Network("209".into()))
            .unwrap()
            .unwrap()
            .details,
        r#"{"host":"h1"}"#
    );
    assert_eq!(reg.list_offerings(&ext).unwrap().len(), 1);
    let dest_journal = RegistryJournal::new(dest.registry_handle());
    assert_eq!(dest_journal.load("cs-net-209").unwrap(), source_journal);
    let dump = db.dump();
    assert!(!dump.contains(SECRET) && !dump.contains(VM_PASSWORD) && !dump.contains(API_SECRET));
    drop(dest_journal);
    drop(dest);
    // Sealed with the new key: the old one cannot read them.
    let with_old = Api::open(ApiConfig {
        database: StoreLocation::parse(&db.url).unwrap(),
        key_file: old_key.clone(),
    })
    .unwrap();
    let e = with_old
        .registry()
        .extension_details_full(&ext)
        .unwrap_err()
        .to_string();
    assert!(e.contains("failed authentication"), "{e}");
    drop(with_old);

    // Idempotent: a second run creates nothing.
    let (code, out, err) = migrate(&from, &db.url, &old_key, &new_key);
    assert_eq!(code, Some(0), "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["created"],
        json!({"extensions": 0, "registrations": 0, "bindings": 0, "offerings": 0, "journals": 0, "api_keys": 0})
    );
    assert_eq!(
        report["unchanged"],
        json!({"extensions": 2, "registrations": 2, "bindings": 1, "offerings": 1, "journals": 1, "api_keys": 1})
    );

    // A row changed in the destination is not overwritten, and nothing
    // else is written either.
    let dest = Api::open(ApiConfig {
        database: StoreLocation::parse(&db.url).unwrap(),
        key_file: new_key.clone(),
    })
    .unwrap();
    call(
        &dest,
        "updateRegisteredExtension",
        &[
            ("extensionid", &ext),
            ("resourceid", PN1),
            ("resourcetype", "PhysicalNetwork"),
            ("details[0].hosts", "192.0.2.99"),
        ],
    );
    let before = listing(&dest);
    drop(dest);
    let (code, out, err) = migrate(&from, &db.url, &old_key, &new_key);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        err.contains(&format!(
            "the registration of 'ovs-ext' with PhysicalNetwork {PN1} has other details in the destination; nothing was migrated"
        )),
        "{err}"
    );
    let dest = Api::open(ApiConfig {
        database: StoreLocation::parse(&db.url).unwrap(),
        key_file: new_key,
    })
    .unwrap();
    assert_eq!(listing(&dest), before);
}
