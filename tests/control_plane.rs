//! Control-plane API tests: every rule and error text of docs/control-plane.md,
//! run against both stores: the embedded SQLite file (`sqlite::…`) and
//! CloudStack's database on a private MariaDB server (`mariadb::…`, see
//! `netbridge_testbed::mariadb`). One suite: each test is a function of the
//! backend, and `on_both_backends!` makes the two `#[test]`s.

use netbridge_control::api::{Api, ApiConfig, ApiError, Params};
use netbridge_control::registry::{BindingTarget, ResourceType, StoreLocation};
use netbridge_testbed::mariadb::{cloud_database, CloudDb};
use serde_json::Value;

const PN1: &str = "7b6b8a3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
const PN2: &str = "0e8f2b1c-3d4e-4f5a-9b6c-7d8e9f0a1b2c";
const CLUSTER: &str = "c1a2b3c4-d5e6-4f70-8192-a3b4c5d6e7f8";
const NET1: &str = "11111111-2222-4333-8444-555555555555";
const SECRET: &str = "S3cr3t-executor-key-value-9f8e7d";

const REF_SERVICES: &str =
    "Dhcp,Dns,UserData,SourceNat,StaticNat,PortForwarding,Firewall,Lb,NetworkACL,CustomAction";
const REF_CAPS: &str = r#"{
  "SourceNat": {"SupportedSourceNatTypes": "peraccount", "RedundantRouter": "false"},
  "StaticNat": {"Supported": "true", "ElasticIp": "false", "AssociatePublicIP": "true"},
  "PortForwarding": {"SupportedProtocols": "tcp,udp"},
  "Firewall": {"TrafficStatistics": "per public ip", "SupportedProtocols": "tcp,udp,icmp",
               "SupportedEgressProtocols": "tcp,udp,icmp,all", "SupportedTrafficDirection": "ingress,egress",
               "MultipleIps": "true"},
  "Lb": {"SupportedLBAlgorithms": "roundrobin,leastconn,source", "SupportedLBIsolation": "dedicated",
         "SupportedProtocols": "tcp,udp,tcp-proxy", "SupportedStickinessMethods": "LbCookie,AppCookie,SourceBased",
         "LbSchemes": "Public", "SslTermination": "false", "VmAutoScaling": "false",
         "HealthCheckPolicy": "true", "ElasticLb": "false", "InlineMode": "false"},
  "Dhcp": {"DhcpAccrossMultipleSubnets": "true"},
  "Dns": {"AllowDnsSuffixModification": "true", "ExternalDns": "false"},
  "Gateway": {"RedundantRouter": "false"},
  "NetworkACL": {"SupportedProtocols": "tcp,udp,icmp,all"},
  "UserData": {"Supported": "true"},
  "CustomAction": {"Supported": "true"}
}"#;

/// CloudStack's (errorcode, cserrorcode) for an error text: the extension
/// manager's own refusals are CloudRuntimeExceptions (530, 4250), every
/// other problem an InvalidParameterValueException (431, 4350).
fn expected_codes(text: &str) -> (u16, u32) {
    let manager_refusal = text == "Extension by name already exists"
        || text.starts_with("Invalid type specified - ")
        || text.contains("' is already registered with ")
        || text == "Extension has associated resources, unregister them to delete the extension"
        || text.starts_with("Cannot unregister extension '")
        || text.starts_with("Cannot remove service ")
        || text.starts_with("Cannot delete extension '");
    if manager_refusal {
        (530, 4250)
    } else {
        (431, 4350)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    MariaDb,
}

/// Where a test's store lives: a SQLite file in `dir`, or a fresh CloudStack
/// database (with the physical networks and cluster the suite registers
/// with, as CloudStack would hold them); the key file is in `dir`.
struct Store {
    dir: tempfile::TempDir,
    db: Option<CloudDb>,
}

impl Store {
    fn new(backend: Backend) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let db = (backend == Backend::MariaDb).then(|| {
            let db = cloud_database("cp");
            db.add_physical_network(PN1);
            db.add_physical_network(PN2);
            db.add_cluster(CLUSTER);
            db
        });
        Store { dir, db }
    }

    /// The configuration of this store with the key file `key` in `dir`.
    fn config_with_key(&self, key: &str) -> ApiConfig {
        let in_dir = ApiConfig::in_dir(self.dir.path());
        ApiConfig {
            database: match &self.db {
                Some(db) => StoreLocation::parse(&db.url).unwrap(),
                None => in_dir.database,
            },
            key_file: self.dir.path().join(key),
        }
    }

    fn config(&self) -> ApiConfig {
        self.config_with_key("secret.key")
    }
}

struct Fx {
    api: Api,
    store: Store,
}

impl Fx {
    fn on(backend: Backend) -> Fx {
        let store = Store::new(backend);
        let api = Api::open(store.config()).unwrap();
        Fx { api, store }
    }

    fn reopen(self) -> Fx {
        let Fx { api, store } = self;
        drop(api);
        let api = Api::open(store.config()).unwrap();
        Fx { api, store }
    }

    /// One call; an asynchronous command's job is waited for and answered
    /// as the synchronous form would be (its result, or its error).
    fn call(&self, cmd: &str, params: &[(&str, &str)]) -> Result<Value, ApiError> {
        let p: Params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let answer = self.api.call(cmd, &p)?;
        let key = format!("{}response", cmd.to_ascii_lowercase());
        let Some(job) = answer[&key]["jobid"].as_str() else {
            return Ok(answer);
        };
        let done = self
            .api
            .wait_for_job(job, std::time::Duration::from_secs(60))?;
        let done = &done["queryasyncjobresultresponse"];
        let result = done["jobresult"].clone();
        match done["jobstatus"].as_i64() {
            Some(1) => Ok(serde_json::json!({ key: result })),
            Some(2) => Err(ApiError {
                code: u16::try_from(result["errorcode"].as_u64().unwrap_or(0)).unwrap_or(0),
                cs_code: u32::try_from(result["cserrorcode"].as_u64().unwrap_or(0)).unwrap_or(0),
                text: result["errortext"].as_str().unwrap_or("").to_string(),
            }),
            other => panic!("job {job} not done: {other:?} {done}"),
        }
    }

    fn ok(&self, cmd: &str, params: &[(&str, &str)]) -> Value {
        match self.call(cmd, params) {
            Ok(v) => v,
            Err(e) => panic!("{cmd} failed: {e:?}"),
        }
    }

    /// Asserts an error with exactly `text`, and CloudStack's codes for it
    /// (see [`expected_codes`]).
    fn err(&self, cmd: &str, params: &[(&str, &str)], text: &str) {
        let e = self.call(cmd, params).unwrap_err();
        assert_eq!(e.text, text, "{cmd}");
        assert_eq!((e.code, e.cs_code), expected_codes(text), "{cmd}: {text}");
    }

    /// Asserts an error whose text starts with `prefix` and CloudStack's
    /// codes for it; returns the text.
    fn err_starts(&self, cmd: &str, params: &[(&str, &str)], prefix: &str) -> String {
        let e = self.call(cmd, params).unwrap_err();
        assert_eq!((e.code, e.cs_code), expected_codes(&e.text), "{cmd}: {e:?}");
        assert!(e.text.starts_with(prefix), "{cmd}: got {:?}", e.text);
        e.text
    }

    fn create(&self, name: &str, ty: &str, extra: &[(&str, &str)]) -> Value {
        let mut p = vec![("name", name), ("type", ty)];
        p.extend_from_slice(extra);
        self.ok("createExtension", &p)["createextensionresponse"]["extension"].clone()
    }

    fn create_ref(&self, name: &str) -> String {
        let e = self.create(
            name,
            "NetworkOrchestrator",
            &[
                ("details[0].key", "network.services"),
                ("details[0].value", REF_SERVICES),
                ("details[1].key", "network.service.capabilities"),
                ("details[1].value", REF_CAPS),
            ],
        );
        e["id"].as_str().unwrap().to_string()
    }

    fn register(&self, ext: &str, rtype: &str, rid: &str, extra: &[(&str, &str)]) -> Value {
        let mut p = vec![
            ("extensionid", ext),
            ("resourceid", rid),
            ("resourcetype", rtype),
        ];
        p.extend_from_slice(extra);
        self.ok("registerExtension", &p)["registerextensionresponse"]["extension"].clone()
    }

    fn get(&self, id: &str) -> Value {
        self.ok("listExtensions", &[("id", id)])["listextensionsresponse"]["extension"][0].clone()
    }

    fn providers(&self, pn: &str) -> Vec<Value> {
        let r = self.ok("listNetworkServiceProviders", &[("physicalnetworkid", pn)]);
        r["listnetworkserviceprovidersresponse"]["networkserviceprovider"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

fn resource<'a>(ext: &'a Value, rid: &str) -> &'a Value {
    ext["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == rid)
        .unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

// ---- createExtension -----------------------------------------------------------

fn create_extension_response_shape_and_defaults(backend: Backend) {
    let fx = Fx::on(backend);
    let r = fx.ok(
        "createExtension",
        &[
            ("name", "My Net"),
            ("type", "NetworkOrchestrator"),
            ("description", "d"),
        ],
    );
    let e = &r["createextensionresponse"]["extension"];
    assert_eq!(e["name"], "My Net");
    assert_eq!(e["description"], "d");
    assert_eq!(e["type"], "NetworkOrchestrator");
    assert_eq!(e["state"], "Enabled");
    // Absolute under CloudStack's extensions directory; empty maps and
    // lists are left out, as CloudStack does.
    assert_eq!(
        e["path"],
        "/usr/share/cloudstack-management/extensions/my_net/my_net.sh"
    );
    assert_eq!(e["pathready"], true);
    assert_eq!(e["isuserdefined"], true);
    assert!(e.get("details").is_none(), "{e}");
    assert!(e.get("resources").is_none(), "{e}");
    assert!(e.get("orchestratorrequirespreparevm").is_none(), "{e}");
    let id = e["id"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    let created = e["created"].as_str().unwrap();
    assert!(
        created.ends_with("+0000") && created.len() == 24,
        "{created}"
    );
    let e = fx.create(
        "x2",
        "Orchestrator",
        &[("state", "Disabled"), ("path", "x2/run.sh")],
    );
    assert_eq!(e["state"], "Disabled");
    assert_eq!(
        e["path"],
        "/usr/share/cloudstack-management/extensions/x2/run.sh"
    );
}

fn create_extension_errors(backend: Backend) {
    let fx = Fx::on(backend);
    fx.create("dup", "NetworkOrchestrator", &[]);
    fx.err(
        "createExtension",
        &[("name", "dup"), ("type", "NetworkOrchestrator")],
        "Extension by name already exists",
    );
    fx.err(
        "createExtension",
        &[("name", "DUP"), ("type", "Orchestrator")],
        "Extension by name already exists",
    );
    fx.err(
        "createExtension",
        &[("name", "t"), ("type", "networkorchestrator")],
        "Invalid type specified - networkorchestrator",
    );
    fx.err(
        "createExtension",
        &[("name", "t"), ("type", "Bogus")],
        "Invalid type specified - Bogus",
    );
    fx.err(
        "createExtension",
        &[
            ("name", "t"),
            ("type", "Orchestrator"),
            ("state", "Running"),
        ],
        "Invalid state specified",
    );
    fx.err(
        "createExtension",
        &[("type", "Orchestrator")],
        "Unable to execute API command createextension due to missing parameter name",
    );
    fx.err(
        "createExtension",
        &[("name", "t")],
        "Unable to execute API command createextension due to missing parameter type",
    );
    // CloudStack's string length limit (255) and text.
    let long = "n".repeat(256);
    fx.err(
        "createExtension",
        &[("name", &long), ("type", "Orchestrator")],
        "Value greater than max allowed length 255 for param: name",
    );
    let long_desc = "d".repeat(256);
    fx.err(
        "createExtension",
        &[
            ("name", "t"),
            ("type", "Orchestrator"),
            ("description", &long_desc),
        ],
        "Value greater than max allowed length 255 for param: description",
    );
    // 255 characters (not bytes: Java counts UTF-16 units) pass.
    fx.create(
        &"é".repeat(255),
        "Orchestrator",
        &[("description", &"d".repeat(255))],
    );
    fx.err(
        "createExtension",
        &[("name", "a\u{0}b"), ("type", "Orchestrator")],
        "Invalid parameter name: control characters are not allowed",
    );
    fx.err_starts(
        "createExtension",
        &[
            ("name", "t"),
            ("type", "Orchestrator"),
            ("path", "../../etc/passwd"),
        ],
        "Invalid parameter path:",
    );
    // Nothing was created by the failures (the two above are "dup" and
    // the 255-character name).
    let r = fx.ok("listExtensions", &[]);
    assert_eq!(r["listextensionsresponse"]["count"], 2);
}

fn injection_strings_are_plain_data(backend: Backend) {
    let fx = Fx::on(backend);
    let name = "x'); DROP TABLE extensions; --";
    let e = fx.create(
        name,
        "Orchestrator",
        &[("description", "$(reboot) `id` ; rm -rf /")],
    );
    let got = fx.get(e["id"].as_str().unwrap());
    assert_eq!(got["name"], name);
    assert_eq!(got["description"], "$(reboot) `id` ; rm -rf /");
    assert_eq!(
        got["path"],
        "/usr/share/cloudstack-management/extensions/x____drop_table_extensions__--/x____drop_table_extensions__--.sh"
    );
    let r = fx.ok("listExtensions", &[("keyword", "%' OR 1=1 --")]);
    assert_eq!(r["listextensionsresponse"], serde_json::json!({}));
    fx.err_starts(
        "listExtensions",
        &[("id", "1' OR '1'='1")],
        "Invalid parameter id value=1\\' OR \\'1\\'=\\'1 due to incorrect long value format",
    );
}

// ---- details validation ----------------------------------------------------------

fn network_services_and_capabilities_are_validated_and_canonical(backend: Backend) {
    let fx = Fx::on(backend);
    let e = fx.create(
        "n",
        "NetworkOrchestrator",
        &[
            ("details[0].network.services", "dhcp, DNS,sourcenat"),
            ("details[1].key", "network.service.capabilities"),
            (
                "details[1].value",
                r#"{"sourcenat":{"supportedsourcenattypes":"PerAccount"}}"#,
            ),
        ],
    );
    assert_eq!(e["details"]["network.services"], "Dhcp,Dns,SourceNat");
    assert_eq!(
        e["details"]["network.service.capabilities"],
        r#"{"SourceNat":{"SupportedSourceNatTypes":"peraccount"}}"#
    );

    let bad = |key: &str, value: &str, prefix: &str| {
        let t = fx.err_starts(
            "createExtension",
            &[
                ("name", "bad"),
                ("type", "NetworkOrchestrator"),
                ("details[0].key", key),
                ("details[0].value", value),
            ],
            prefix,
        );
        assert!(t.contains(key), "{t}");
        t
    };
    let t = bad(
        "network.services",
        "Dhcp,Teleport",
        "Invalid service 'Teleport' in detail network.services; accepted services: ",
    );
    assert!(t.contains("SourceNat, StaticNat, PortForwarding, Firewall, Lb") || t.contains("Lb"));
    bad(
        "network.services",
        "Dhcp,,Dns",
        "Invalid service '' in detail network.services",
    );
    bad(
        "network.services",
        "Dhcp,dhcp",
        "Duplicate service 'Dhcp' in detail network.services",
    );
    bad(
        "network.service.capabilities",
        "{\"Lb\":",
        "Invalid JSON in detail network.service.capabilities",
    );
    bad(
        "network.service.capabilities",
        "[1,2]",
        "Detail network.service.capabilities must be a JSON object",
    );
    bad(
        "network.service.capabilities",
        r#"{"Teleport":{}}"#,
        "Invalid service 'Teleport' in detail network.service.capabilities; accepted services:",
    );
    let t = bad(
        "network.service.capabilities",
        r#"{"Lb":{"Warp":"9"}}"#,
        "Invalid capability 'Warp' for service Lb in detail network.service.capabilities; accepted capabilities: SupportedLBAlgorithms,",
    );
    assert!(t.contains("InlineMode"), "{t}");
    bad(
        "network.service.capabilities",
        r#"{"Lb":{"SupportedLBAlgorithms":"random"}}"#,
        "Invalid value 'random' for capability Lb.SupportedLBAlgorithms in detail network.service.capabilities; accepted values: comma list of roundrobin, leastconn, source",
    );
    // Lb protocols: exactly what the executor carries out.
    bad(
        "network.service.capabilities",
        r#"{"Lb":{"SupportedProtocols":"tcp,udp,sctp"}}"#,
        "Invalid value 'tcp,udp,sctp' for capability Lb.SupportedProtocols in detail network.service.capabilities; accepted values: comma list of tcp, udp, tcp-proxy",
    );
    bad(
        "network.service.capabilities",
        r#"{"SourceNat":{"RedundantRouter":1}}"#,
        "Invalid value for capability SourceNat.RedundantRouter in detail network.service.capabilities: expected a string",
    );
    bad(
        "network.service.capabilities",
        r#"{"SourceNat":{"RedundantRouter":"maybe"}}"#,
        "Invalid value 'maybe' for capability SourceNat.RedundantRouter",
    );
    bad(
        "network.service.capabilities",
        r#"{"Dhcp":["x"]}"#,
        "Invalid value for service Dhcp in detail network.service.capabilities",
    );
    bad(
        "network.allocate.extension.ip",
        "perhaps",
        "Invalid value for detail network.allocate.extension.ip: expected true or false",
    );
    // Nothing partial was stored.
    let r = fx.ok("listExtensions", &[("name", "bad")]);
    assert_eq!(r["listextensionsresponse"], serde_json::json!({}));
}

fn bad_details_parameters(backend: Backend) {
    let fx = Fx::on(backend);
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("details[0].key", "a")], "Invalid parameter details[0]: details[0].value is missing"),
        (&[("details[0].value", "a")], "Invalid parameter details[0]: details[0].key is missing"),
        (&[("details[zz].key", "a")], "Invalid parameter details[zz].key: expected details[<index>].<key>"),
        (&[("details[0]", "a")], "Invalid parameter details[0]: expected details[<index>].<key>"),
        (
            &[("details[0].key", "a b"), ("details[0].value", "v")],
            "Invalid detail key 'a b' in parameter details[0]: keys are 1-255 letters, digits and . _ - :",
        ),
        (
            &[("details[0].a", "1"), ("details[1].a", "2")],
            "Duplicate detail key 'a' in parameter details",
        ),
        (
            &[("details[0].a", "x\u{7}y")],
            "Invalid value of detail 'a' in parameter details[0]: control characters are not allowed",
        ),
    ];
    for (extra, text) in cases {
        let mut p = vec![("name", "d"), ("type", "Orchestrator")];
        p.extend_from_slice(extra);
        fx.err("createExtension", &p, text);
    }
    let big = "v".repeat(8193);
    fx.err(
        "createExtension",
        &[
            ("name", "d"),
            ("type", "Orchestrator"),
            ("details[0].k", &big),
        ],
        "Invalid value of detail 'k' in parameter details[0]: longer than 8192 bytes",
    );
    let huge = "v".repeat(70_000);
    fx.err_starts(
        "createExtension",
        &[
            ("name", "d"),
            ("type", "Orchestrator"),
            ("description", &huge),
        ],
        "Value of parameter description is too long",
    );
}

fn parameter_names_are_case_insensitive_and_unknown_command_is_refused(backend: Backend) {
    let fx = Fx::on(backend);
    let r = fx.ok(
        "CREATEEXTENSION",
        &[
            ("Name", "ci"),
            ("TYPE", "Orchestrator"),
            ("Details[0].Key", "Foo"),
            ("DETAILS[0].VALUE", "bar"),
        ],
    );
    assert_eq!(
        r["createextensionresponse"]["extension"]["details"]["Foo"],
        "bar"
    );
    let e = fx.call("launchMissiles", &[]).unwrap_err();
    assert_eq!(e.code, 432);
    assert_eq!(e.text, "Unsupported API command: launchMissiles");
    assert_eq!(
        e.to_response(Some("launchMissiles")),
        serde_json::json!({"errorresponse": {"uuidList": [], "errorcode": 432, "cserrorcode": 9999,
            "errortext": "Unsupported API command: launchMissiles"}})
    );
}

// ---- updateExtension / deleteExtension -------------------------------------------

fn update_extension_replaces_visible_details_and_keeps_hidden(backend: Backend) {
    let fx = Fx::on(backend);
    let e = fx.create(
        "u",
        "Orchestrator",
        &[
            ("details[0].a", "1"),
            ("details[1].b", "2"),
            ("details[2].password", SECRET),
        ],
    );
    let id = e["id"].as_str().unwrap();
    assert_eq!(e["details"], serde_json::json!({"a": "1", "b": "2"}));
    let r = fx.ok(
        "updateExtension",
        &[
            ("id", id),
            ("description", "new"),
            ("state", "Disabled"),
            ("details[0].c", "3"),
        ],
    );
    let e = &r["updateextensionresponse"]["extension"];
    assert_eq!(e["details"], serde_json::json!({"c": "3"}));
    assert_eq!(e["description"], "new");
    assert_eq!(e["state"], "Disabled");
    let full = fx.api.registry().extension_details_full(id).unwrap();
    assert_eq!(full.get("password"), Some(SECRET));
    // cleanupdetails wipes the visible ones and ignores details.
    let r = fx.ok(
        "updateExtension",
        &[
            ("id", id),
            ("cleanupdetails", "true"),
            ("details[0].d", "4"),
        ],
    );
    // An empty map is left out, as CloudStack does.
    assert!(r["updateextensionresponse"]["extension"]
        .get("details")
        .is_none());
    let full = fx.api.registry().extension_details_full(id).unwrap();
    assert_eq!(full.get("password"), Some(SECRET));
    assert!(full.visible.is_empty());
    // Neither: no change to details.
    fx.ok("updateExtension", &[("id", id), ("details[0].e", "5")]);
    let r = fx.ok("updateExtension", &[("id", id), ("description", "x")]);
    assert_eq!(
        r["updateextensionresponse"]["extension"]["details"],
        serde_json::json!({"e": "5"})
    );

    fx.err(
        "updateExtension",
        &[("id", id), ("state", "Broken")],
        "Invalid state specified",
    );
    fx.err(
        "updateExtension",
        &[("id", "00000000-0000-4000-8000-000000000000")],
        "Unable to find extension with id 00000000-0000-4000-8000-000000000000",
    );
    fx.err(
        "updateExtension",
        &[("id", id), ("cleanupdetails", "sure")],
        "Invalid value 'sure' for parameter cleanupdetails: expected true or false",
    );
    fx.err_starts(
        "updateExtension",
        &[("id", id), ("details[0].network.services", "Nope")],
        "Invalid service 'Nope' in detail network.services",
    );
}

fn delete_extension_refused_while_registered(backend: Backend) {
    let fx = Fx::on(backend);
    let id = fx.create_ref("del");
    fx.register(&id, "PhysicalNetwork", PN1, &[]);
    fx.err(
        "deleteExtension",
        &[("id", &id)],
        "Extension has associated resources, unregister them to delete the extension",
    );
    fx.ok(
        "unregisterExtension",
        &[
            ("extensionid", &id),
            ("resourceid", PN1),
            ("resourcetype", "PhysicalNetwork"),
        ],
    );
    let r = fx.ok("deleteExtension", &[("id", &id)]);
    assert_eq!(
        r,
        serde_json::json!({"deleteextensionresponse": {"success": true}})
    );
    fx.err(
        "deleteExtension",
        &[("id", &id)],
        &format!("Unable to find extension with id {id}"),
    );
}

// ---- listExtensions ----------------------------------------------------------------

fn list_extensions_filters_and_detail_levels(backend: Backend) {
    let fx = Fx::on(backend);
    let a = fx.create_ref("alpha");
    let b = fx.create(
        "beta",
        "Orchestrator",
        &[("description", "the second"), ("details[0].k", "v")],
    );
    let b = b["id"].as_str().unwrap().to_string();
    fx.register(
        &a,
        "PhysicalNetwork",
        PN1,
        &[
            ("details[0].hosts", "10.0.0.1"),
            ("details[1].executor.key", SECRET),
        ],
    );
    fx.register(&b, "Cluster", CLUSTER, &[]);

    let all = fx.ok("listExtensions", &[]);
    assert_eq!(all["listextensionsresponse"]["count"], 2);
    let by_name = fx.ok("listExtensions", &[("name", "BETA")]);
    assert_eq!(
        by_name["listextensionsresponse"]["extension"][0]["id"],
        b.as_str()
    );
    let by_kw = fx.ok("listExtensions", &[("keyword", "second")]);
    assert_eq!(by_kw["listextensionsresponse"]["count"], 1);
    let by_type = fx.ok("listExtensions", &[("type", "NetworkOrchestrator")]);
    assert_eq!(
        by_type["listextensionsresponse"]["extension"][0]["name"],
        "alpha"
    );
    fx.err(
        "listExtensions",
        &[("type", "Other")],
        "Invalid type specified - Other",
    );

    let e = fx.get(&a);
    let r = resource(&e, PN1);
    assert_eq!(r["type"], "PhysicalNetwork");
    // CloudStack's database names the physical network; the embedded store
    // knows no name until a network command brings one, and shows the id.
    let name = match backend {
        Backend::Sqlite => PN1.to_string(),
        Backend::MariaDb => format!("pn-{PN1}"),
    };
    assert_eq!(r["name"], name);
    assert_eq!(r["details"], serde_json::json!({"hosts": "10.0.0.1"}));
    assert!(r["created"].as_str().unwrap().ends_with("+0000"));
    assert!(!e.to_string().contains(SECRET));
    assert!(!e.to_string().contains("executor.key"));

    let min = fx.ok("listExtensions", &[("id", &a), ("details", "min")]);
    let m = &min["listextensionsresponse"]["extension"][0];
    assert!(m.get("details").is_none() && m.get("resources").is_none());
    let res = fx.ok("listExtensions", &[("id", &a), ("details", "resource")]);
    let m = &res["listextensionsresponse"]["extension"][0];
    assert!(m.get("details").is_none() && m.get("resources").is_some());
    let ext = fx.ok("listExtensions", &[("id", &a), ("details", "external")]);
    let m = &ext["listextensionsresponse"]["extension"][0];
    assert!(m.get("details").is_some() && m.get("resources").is_none());
    fx.err(
        "listExtensions",
        &[("details", "everything")],
        "Invalid value 'everything' for parameter details; accepted values: all, resource, external, min",
    );
    let page = fx.ok("listExtensions", &[("page", "2"), ("pagesize", "1")]);
    assert_eq!(page["listextensionsresponse"]["count"], 2);
    assert_eq!(
        page["listextensionsresponse"]["extension"][0]["name"],
        "beta"
    );
    fx.err(
        "listExtensions",
        &[("pagesize", "0")],
        "Invalid value '0' for parameter pagesize: expected an integer from 1 to 10000",
    );
    let none = fx.ok(
        "listExtensions",
        &[("id", "00000000-0000-4000-8000-000000000000")],
    );
    assert_eq!(none, serde_json::json!({"listextensionsresponse": {}}));
}

// ---- registerExtension / unregisterExtension -------------------------------------

fn register_errors(backend: Backend) {
    let fx = Fx::on(backend);
    let net = fx.create_ref("net");
    let orch = fx.create("orch", "Orchestrator", &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reg = |ext: &str, t: &str, rid: &str| {
        vec![
            ("extensionid".to_string(), ext.to_string()),
            ("resourceid".to_string(), rid.to_string()),
            ("resourcetype".to_string(), t.to_string()),
        ]
    };
    let call = |p: Vec<(String, String)>| {
        fx.api
            .call("registerExtension", &p.into_iter().collect())
            .unwrap_err()
    };
    let e = call(reg(&net, "Zone", PN1));
    assert_eq!(
        (e.code, e.text.as_str()),
        (
            431,
            "Currently only [Cluster, PhysicalNetwork] can be used to register an extension"
        )
    );
    let e = call(reg(
        "00000000-0000-4000-8000-000000000000",
        "PhysicalNetwork",
        PN1,
    ));
    assert_eq!(e.text, "Invalid extension specified");
    let e = call(reg(&orch, "PhysicalNetwork", PN1));
    assert_eq!(
        e.text,
        "Only extensions of type NetworkOrchestrator can be registered with a physical network. Extension 'orch' is of type Orchestrator."
    );
    fx.register(&net, "PhysicalNetwork", PN1, &[]);
    let e = call(reg(&net, "physicalnetwork", PN1));
    assert_eq!(
        e.text,
        format!("Extension 'net' is already registered with physical network {PN1}")
    );
    let e = call(reg(&net, "PhysicalNetwork", "not-a-uuid"));
    assert!(e.text.starts_with(
        "Invalid parameter resourceid value=not-a-uuid due to incorrect long value format"
    ));
    fx.err(
        "registerExtension",
        &[("extensionid", &net), ("resourcetype", "Cluster")],
        "Unable to execute API command registerextension due to missing parameter resourceid",
    );
    // Several extensions may share a physical network; a cluster takes one.
    let net2 = fx.create_ref("net2");
    fx.register(&net2, "PhysicalNetwork", PN1, &[]);
    fx.register(&orch, "Cluster", CLUSTER, &[]);
    let e = call(reg(&net2, "Cluster", CLUSTER));
    assert_eq!(
        e.text,
        format!("Extension 'orch' is already registered with cluster {CLUSTER}")
    );
    // Registration details are validated.
    fx.err(
        "registerExtension",
        &[
            ("extensionid", &net2),
            ("resourceid", PN2),
            ("resourcetype", "PhysicalNetwork"),
            ("details[0].executor.port", "99999"),
        ],
        "Invalid value for detail executor.port: expected a port number from 1 to 65535",
    );
    fx.err(
        "registerExtension",
        &[
            ("extensionid", &net2),
            ("resourceid", PN2),
            ("resourcetype", "PhysicalNetwork"),
            ("details[0].hosts", "10.0.0.1;reboot"),
        ],
        "Invalid value for detail hosts: expected a comma list of addr or addr:port",
    );
    fx.err(
        "registerExtension",
        &[
            ("extensionid", &net2),
            ("resourceid", PN2),
            ("resourcetype", "PhysicalNetwork"),
            ("details[0].executor.fingerprint", "abc"),
        ],
        "Invalid value for detail executor.fingerprint: expected the hex SHA-256 of the executor certificate",
    );
    let pin = "ab".repeat(32);
    fx.err(
        "registerExtension",
        &[
            ("extensionid", &net2),
            ("resourceid", PN2),
            ("resourcetype", "PhysicalNetwork"),
            ("details[0].executor.fingerprint", &format!("{pin},abc")),
        ],
        "Invalid value for detail executor.fingerprint: expected the hex SHA-256 of the executor certificate",
    );
    assert!(fx.providers(PN2).is_empty());
}

fn provider_lifecycle_follows_registration_and_services(backend: Backend) {
    let fx = Fx::on(backend);
    let id = fx.create_ref("prov");
    fx.register(&id, "PhysicalNetwork", PN1, &[]);
    let p = fx.providers(PN1);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["name"], "prov");
    assert_eq!(p[0]["state"], "Enabled");
    assert_eq!(p[0]["physicalnetworkid"], PN1);
    assert_eq!(
        strings(&p[0]["servicelist"]),
        REF_SERVICES.split(',').collect::<Vec<_>>()
    );

    // Service changes propagate.
    fx.ok(
        "updateExtension",
        &[
            ("id", &id),
            ("details[0].network.services", "Dhcp,Dns,Gateway"),
            ("details[1].network.service.capabilities", REF_CAPS),
        ],
    );
    assert_eq!(
        strings(&fx.providers(PN1)[0]["servicelist"]),
        vec!["Dhcp", "Dns", "Gateway"]
    );

    // updateNetworkServiceProvider
    let pid = p[0]["id"].as_str().unwrap().to_string();
    let r = fx.ok(
        "updateNetworkServiceProvider",
        &[("id", &pid), ("state", "Disabled")],
    );
    assert_eq!(
        r["updatenetworkserviceproviderresponse"]["networkserviceprovider"]["state"],
        "Disabled"
    );
    let r = fx.ok("listNetworkServiceProviders", &[("state", "Disabled")]);
    assert_eq!(r["listnetworkserviceprovidersresponse"]["count"], 1);
    fx.err(
        "updateNetworkServiceProvider",
        &[("id", &pid), ("state", "Shutdown")],
        "Invalid value 'Shutdown' for parameter state; accepted values: Enabled, Disabled",
    );
    fx.err(
        "updateNetworkServiceProvider",
        &[("id", &pid), ("servicelist", "Dhcp,Lb")],
        "Service Lb in parameter servicelist is not declared by extension 'prov'",
    );
    let r = fx.ok(
        "updateNetworkServiceProvider",
        &[("id", &pid), ("servicelist", "dns")],
    );
    assert_eq!(
        strings(
            &r["updatenetworkserviceproviderresponse"]["networkserviceprovider"]["servicelist"]
        ),
        vec!["Dns"]
    );
    fx.err(
        "updateNetworkServiceProvider",
        &[("id", NET1), ("state", "Enabled")],
        &format!("Unable to find network service provider with id {NET1}"),
    );

    fx.ok(
        "unregisterExtension",
        &[
            ("extensionid", &id),
            ("resourceid", PN1),
            ("resourcetype", "PhysicalNetwork"),
        ],
    );
    assert!(fx.providers(PN1).is_empty());
    // No mapping: silent success.
    let r = fx.ok(
        "unregisterExtension",
        &[
            ("extensionid", &id),
            ("resourceid", PN1),
            ("resourcetype", "PhysicalNetwork"),
        ],
    );
    assert!(r["unregisterextensionresponse"]["extension"]
        .get("resources")
        .is_none());
}

fn extension_without_services_gets_empty_provider(backend: Backend) {
    let fx = Fx::on(backend);
    let id = fx.create("bare", "NetworkOrchestrator", &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    fx.register(&id, "PhysicalNetwork", PN2, &[]);
    let p = fx.providers(PN2);
    // No services: the empty list is left out, as CloudStack does.
    assert!(p[0].get("servicelist").is_none(), "{}", p[0]);
}

fn unregister_refused_while_a_network_uses_the_provider(backend: Backend) {
    let fx = Fx::on(backend);
    let id = fx.create_ref("busy");
    fx.register(&id, "PhysicalNetwork", PN1, &[]);
    let reg = fx.api.registry();
    reg.bind(
        &BindingTarget::Network(NET1.into()),
        &id,
        PN1,
        r#"{"bridge":"br1"}"#,
    )
    .unwrap();
    reg.bind_provider(&BindingTarget::Vpc("vpc-1".into()), "BUSY", PN1, "{}")
        .unwrap();
    assert!(reg
        .bind_provider(&BindingTarget::Vpc("vpc-2".into()), "ghost", PN1, "{}")
        .is_err());
    fx.err(
        "unregisterExtension",
        &[("extensionid", &id), ("resourceid", PN1), ("resourcetype", "PhysicalNetwork")],
        &format!("Cannot unregister extension 'busy' from physical network {PN1}. Provider is used by 2 existing network service(s)"),
    );
    let b = reg
        .get_binding(&BindingTarget::Network(NET1.into()))
        .unwrap()
        .unwrap();
    assert_eq!(b.details, r#"{"bridge":"br1"}"#);
    assert_eq!(b.provider, "busy");
    assert_eq!(b.physical_network_id, PN1);
    assert_eq!(reg.count_bindings("busy", PN1).unwrap(), 2);
    let pr = reg.registration_for_provider("BUSY", PN1).unwrap().unwrap();
    assert_eq!(pr.extension.id, id);
    assert_eq!(pr.provider.unwrap().state.as_str(), "Enabled");
    assert!(pr.details.visible.is_empty());
    assert!(reg
        .registration_for_provider("busy", PN2)
        .unwrap()
        .is_none());
    assert!(reg
        .registration_for_provider("nobody", PN1)
        .unwrap()
        .is_none());
    assert!(reg.unbind(&BindingTarget::Network(NET1.into())).unwrap());
    assert!(reg.unbind(&BindingTarget::Vpc("vpc-1".into())).unwrap());
    assert!(!reg.unbind(&BindingTarget::Vpc("vpc-1".into())).unwrap());
    fx.ok(
        "unregisterExtension",
        &[
            ("extensionid", &id),
            ("resourceid", PN1),
            ("resourcetype", "PhysicalNetwork"),
        ],
    );
    assert!(reg
        .bind(&BindingTarget::Network(NET1.into()), &id, PN1, "{nope")
        .is_err());
}

// ---- updateRegisteredExtension ---------------------------------------------------

fn update_registered_extension_exact_semantics(backend: Backend) {
    let fx = Fx::on(backend);
    let id = fx.create_ref("ure");
    fx.register(
        &id,
        "PhysicalNetwork",
        PN1,
        &[
            ("details[0].hosts", "10.0.0.1"),
            ("details[1].guest.network.device", "eth1"),
            ("details[2].executor.key", SECRET),
            ("details[3].password", "pw-1"),
        ],
    );
    let reg = fx.api.registry();
    let full = || {
        reg.registration_details_full(&id, ResourceType::PhysicalNetwork, PN1)
            .unwrap()
    };
    let upd = |extra: &[(&str, &str)]| {
        let mut p = vec![
            ("extensionid", id.as_str()),
            ("resourceid", PN1),
            ("resourcetype", "PhysicalNetwork"),
        ];
        p.extend_from_slice(extra);
        fx.ok("updateRegisteredExtension", &p)["updateregisteredextensionresponse"]["extension"]
            .clone()
    };

    // details given: sent keys + hidden not sent; visible not re-sent removed.
    let e = upd(&[
        ("details[0].hosts", "10.0.0.2:9443"),
        ("details[1].password", "pw-2"),
    ]);
    assert_eq!(
        resource(&e, PN1)["details"],
        serde_json::json!({"hosts": "10.0.0.2:9443"})
    );
    let f = full();
    assert_eq!(f.visible.len(), 1);
    assert_eq!(f.get("hosts"), Some("10.0.0.2:9443"));
    assert_eq!(f.get("executor.key"), Some(SECRET));
    assert_eq!(f.get("password"), Some("pw-2"));
    assert_eq!(f.get("guest.network.device"), None);
    let merged = f.merged();
    assert_eq!(merged.len(), 3);
    assert_eq!(merged["executor.key"], SECRET);
    assert!(format!("{f:?}").contains("<redacted>") && !format!("{f:?}").contains(SECRET));
    // The response is the extension with its details.
    assert_eq!(e["name"], "ure");
    assert_eq!(e["details"]["network.services"], REF_SERVICES);
    assert!(!e.to_string().contains(SECRET) && !e.to_string().contains("pw-2"));

    // neither: no change.
    upd(&[]);
    assert_eq!(full(), f);

    // cleanupdetails=true: everything goes, details ignored.
    let e = upd(&[("cleanupdetails", "true"), ("details[0].hosts", "10.9.9.9")]);
    assert!(resource(&e, PN1).get("details").is_none());
    let f = full();
    assert!(f.visible.is_empty() && f.hidden.is_empty());
    // cleanupdetails=false with details behaves as details.
    upd(&[
        ("cleanupdetails", "false"),
        ("details[0].key", "hosts"),
        ("details[0].value", "10.0.0.3"),
    ]);
    assert_eq!(full().get("hosts"), Some("10.0.0.3"));

    // Not registered.
    fx.err(
        "updateRegisteredExtension",
        &[
            ("extensionid", &id),
            ("resourceid", PN2),
            ("resourcetype", "PhysicalNetwork"),
            ("details[0].a", "b"),
        ],
        &format!("Extension 'ure' is not registered with resource {PN2} (PhysicalNetwork)"),
    );
    fx.err(
        "updateRegisteredExtension",
        &[
            ("extensionid", &id),
            ("resourceid", PN1),
            ("resourcetype", "Cluster"),
        ],
        &format!("Extension 'ure' is not registered with resource {PN1} (Cluster)"),
    );
    fx.err(
        "updateRegisteredExtension",
        &[
            ("extensionid", &id),
            ("resourceid", PN1),
            ("resourcetype", "Host"),
        ],
        "Currently only [Cluster, PhysicalNetwork] can be used to register an extension",
    );
    fx.err(
        "updateRegisteredExtension",
        &[
            ("extensionid", "00000000-0000-4000-8000-000000000000"),
            ("resourceid", PN1),
            ("resourcetype", "Cluster"),
        ],
        "Invalid extension specified",
    );
    fx.err(
        "updateRegisteredExtension",
        &[("extensionid", &id), ("resourceid", PN1)],
        "Unable to execute API command updateregisteredextension due to missing parameter resourcetype",
    );
}

fn update_registered_extension_on_cluster(backend: Backend) {
    let fx = Fx::on(backend);
    let id = fx.create("cl", "Orchestrator", &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    fx.register(
        &id,
        "Cluster",
        CLUSTER,
        &[
            ("details[0].a", "1"),
            ("details[1].sshkey", "KEYDATA\nline2"),
        ],
    );
    let r = fx.ok(
        "updateRegisteredExtension",
        &[
            ("extensionid", &id),
            ("resourceid", CLUSTER),
            ("resourcetype", "Cluster"),
            ("details[0].b", "2"),
        ],
    );
    let e = &r["updateregisteredextensionresponse"]["extension"];
    assert_eq!(
        resource(e, CLUSTER)["details"],
        serde_json::json!({"b": "2"})
    );
    let f = fx
        .api
        .registry()
        .registration_details_full(&id, ResourceType::Cluster, CLUSTER)
        .unwrap();
    assert_eq!(f.get("sshkey"), Some("KEYDATA\nline2"));
}

// ---- offerings -----------------------------------------------------------------------

fn generate_offerings_for_reference_extension(backend: Backend) {
    let fx = Fx::on(backend);
    let id = fx.create_ref("refext");
    let r = fx.ok(
        "generateNetworkOfferings",
        &[("extensionid", &id), ("offeringtype", "all")],
    );
    let list = &r["generatenetworkofferingsresponse"];
    assert_eq!(list["count"], 4);
    let offs = list["offering"].as_array().unwrap();
    let by = |kind: &str| {
        offs.iter()
            .find(|o| o["offeringtype"] == kind)
            .unwrap()
            .clone()
    };

    let iso = by("isolated");
    assert_eq!(iso["command"], "createNetworkOffering");
    let p = &iso["params"];
    assert_eq!(p["name"], "refext-isolated");
    assert_eq!(p["guestiptype"], "Isolated");
    assert_eq!(p["traffictype"], "GUEST");
    assert_eq!(
        p["supportedservices"],
        "Dhcp,Dns,UserData,SourceNat,StaticNat,PortForwarding,Firewall,Lb,CustomAction"
    );
    for i in 0..9 {
        assert_eq!(p[format!("serviceProviderList[{i}].provider")], "refext");
    }
    assert_eq!(p["serviceProviderList[3].service"], "SourceNat");
    assert_eq!(p["serviceCapabilityList[0].service"], "SourceNat");
    assert_eq!(
        p["serviceCapabilityList[0].capabilitytype"],
        "SupportedSourceNatTypes"
    );
    assert_eq!(p["serviceCapabilityList[0].capabilityvalue"], "peraccount");

    let shared = by("shared");
    assert_eq!(shared["params"]["supportedservices"], "Dhcp,Dns,UserData");
    assert_eq!(shared["params"]["guestiptype"], "Shared");
    assert_eq!(shared["params"]["specifyIpRanges"], "true");
    assert_eq!(shared["params"]["specifyVlan"], "true");

    let tier = by("vpctier");
    assert_eq!(
        tier["params"]["supportedservices"],
        "Dhcp,Dns,UserData,SourceNat,StaticNat,PortForwarding,Lb,NetworkACL,CustomAction"
    );
    assert_eq!(tier["params"]["useVpc"], "on");
    assert_eq!(tier["params"]["forvpc"], "true");

    assert_eq!(
        iso["enable"],
        serde_json::json!({"command": "updateNetworkOffering", "params": {"state": "Enabled"}})
    );
    let vpc = by("vpc");
    assert_eq!(vpc["command"], "createVPCOffering");
    assert_eq!(vpc["enable"]["command"], "updateVPCOffering");
    assert!(vpc["params"].get("guestiptype").is_none());
    assert!(!vpc["params"]["supportedservices"]
        .as_str()
        .unwrap()
        .contains("Firewall"));

    // Stored: a service an offering maps cannot be removed.
    fx.err(
        "updateExtension",
        &[("id", &id), ("details[0].network.services", "Dhcp,Dns"), ("details[1].network.service.capabilities", REF_CAPS)],
        "Cannot remove service UserData from extension 'refext' as it is used by a network/VPC offering",
    );
    fx.err(
        "updateExtension",
        &[("id", &id), ("cleanupdetails", "true")],
        "Cannot remove service Dhcp from extension 'refext' as it is used by a network/VPC offering",
    );
    assert_eq!(fx.get(&id)["details"]["network.services"], REF_SERVICES);
    // Adding a service is fine.
    fx.ok(
        "updateExtension",
        &[
            ("id", &id),
            (
                "details[0].network.services",
                &format!("{REF_SERVICES},Gateway"),
            ),
            ("details[1].network.service.capabilities", REF_CAPS),
        ],
    );
    // Name prefix and single kind; regenerating replaces the stored one.
    let r = fx.ok(
        "generateNetworkOfferings",
        &[
            ("extensionid", &id),
            ("offeringtype", "Shared"),
            ("name", "custom"),
        ],
    );
    assert_eq!(
        r["generatenetworkofferingsresponse"]["offering"][0]["name"],
        "custom-shared"
    );
    assert_eq!(fx.api.registry().list_offerings(&id).unwrap().len(), 5);
    fx.ok(
        "generateNetworkOfferings",
        &[
            ("extensionid", &id),
            ("offeringtype", "shared"),
            ("name", "custom"),
        ],
    );
    assert_eq!(fx.api.registry().list_offerings(&id).unwrap().len(), 5);
    fx.err(
        "generateNetworkOfferings",
        &[("extensionid", &id), ("offeringtype", "l2")],
        "Invalid value 'l2' for parameter offeringtype; accepted values: isolated, shared, vpctier, vpc, all",
    );
}

fn generation_applies_public_ip_dependency_and_type_rules(backend: Backend) {
    let fx = Fx::on(backend);
    let id = fx.create(
        "dep",
        "NetworkOrchestrator",
        &[("details[0].network.services", "Dhcp,StaticNat,Lb,Firewall")],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = fx.ok(
        "generateNetworkOfferings",
        &[("extensionid", &id), ("offeringtype", "isolated")],
    );
    assert_eq!(
        r["generatenetworkofferingsresponse"]["offering"][0]["params"]["supportedservices"],
        "Dhcp"
    );
    let id2 = fx.create(
        "none",
        "NetworkOrchestrator",
        &[("details[0].network.services", "NetworkACL")],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    fx.err(
        "generateNetworkOfferings",
        &[("extensionid", &id2), ("offeringtype", "shared")],
        "Extension 'none' declares no service usable in a shared offering",
    );
    let orch = fx.create("o", "Orchestrator", &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    fx.err(
        "generateNetworkOfferings",
        &[("extensionid", &orch), ("offeringtype", "all")],
        "Extension 'o' is of type Orchestrator; offerings can only be generated for NetworkOrchestrator extensions",
    );
    fx.err(
        "generateNetworkOfferings",
        &[
            ("extensionid", "00000000-0000-4000-8000-000000000000"),
            ("offeringtype", "all"),
        ],
        "Invalid extension specified",
    );
}

fn validate_network_offering(backend: Backend) {
    let fx = Fx::on(backend);
    let id = fx.create_ref("val");
    let ok = fx.ok(
        "validateNetworkOffering",
        &[
            ("extensionid", &id),
            ("supportedservices", "Dhcp,SourceNat,Lb"),
            ("serviceProviderList[0].service", "Dhcp"),
            ("serviceProviderList[0].provider", "val"),
            ("serviceProviderList[1].service", "SourceNat"),
            ("serviceProviderList[1].provider", "val"),
            ("serviceProviderList[2].service", "Lb"),
            ("serviceProviderList[2].provider", "val"),
            ("serviceCapabilityList[0].service", "SourceNat"),
            (
                "serviceCapabilityList[0].capabilitytype",
                "SupportedSourceNatTypes",
            ),
            ("serviceCapabilityList[0].capabilityvalue", "peraccount"),
            ("servicecapabilitylist[1].service", "Lb"),
            (
                "servicecapabilitylist[1].capabilitytype",
                "SupportedLBAlgorithms",
            ),
            ("servicecapabilitylist[1].capabilityvalue", "leastconn"),
        ],
    );
    let body = &ok["validatenetworkofferingresponse"];
    assert_eq!(body["success"], true);
    assert_eq!(strings(&body["services"]), vec!["Dhcp", "SourceNat", "Lb"]);

    fx.err(
        "validateNetworkOffering",
        &[
            ("extensionid", &id),
            ("supportedservices", "Dhcp,SourceNat"),
            ("serviceCapabilityList[0].service", "SourceNat"),
            ("serviceCapabilityList[0].capabilitytype", "SupportedSourceNatTypes"),
            ("serviceCapabilityList[0].capabilityvalue", "perzone"),
        ],
        "Value 'perzone' of capability SourceNat.SupportedSourceNatTypes in serviceCapabilityList[0] is not declared by extension 'val' (declared: peraccount)",
    );
    fx.err(
        "validateNetworkOffering",
        &[("extensionid", &id), ("supportedservices", "Dhcp,Gateway")],
        &format!("Service Gateway is not declared by extension 'val' (declared: {REF_SERVICES})"),
    );
    fx.err_starts(
        "validateNetworkOffering",
        &[("extensionid", &id), ("supportedservices", "Dhcp,Warp")],
        "Invalid service 'Warp' in supportedservices; accepted services: Dhcp, Dns",
    );
    fx.err(
        "validateNetworkOffering",
        &[
            ("extensionid", &id),
            ("supportedservices", "SourceNat"),
            ("serviceCapabilityList[0].service", "SourceNat"),
            ("serviceCapabilityList[0].capabilitytype", "SupportedSourceNatTypes"),
        ],
        "Invalid parameter serviceCapabilityList[0]: serviceCapabilityList[0].capabilityvalue is missing",
    );
    fx.err(
        "validateNetworkOffering",
        &[("extensionid", &id)],
        "Unable to execute API command validatenetworkoffering due to missing parameter supportedservices",
    );
    // An LB algorithm not listed.
    let id2 = fx.create(
        "lbx",
        "NetworkOrchestrator",
        &[
            ("details[0].network.services", "SourceNat,Lb"),
            (
                "details[1].network.service.capabilities",
                r#"{"Lb":{"SupportedLBAlgorithms":"roundrobin"}}"#,
            ),
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    fx.err(
        "validateNetworkOffering",
        &[
            ("extensionid", &id2),
            ("supportedservices", "SourceNat,Lb"),
            ("serviceCapabilityList[0].service", "Lb"),
            ("serviceCapabilityList[0].capabilitytype", "SupportedLBAlgorithms"),
            ("serviceCapabilityList[0].capabilityvalue", "source"),
        ],
        "Value 'source' of capability Lb.SupportedLBAlgorithms in serviceCapabilityList[0] is not declared by extension 'lbx' (declared: roundrobin)",
    );
}

// ---- persistence, secrets, concurrency ----------------------------------------------

fn data_survives_reopen(backend: Backend) {
    let fx = Fx::on(backend);
    let id = fx.create_ref("persist");
    fx.register(
        &id,
        "PhysicalNetwork",
        PN1,
        &[
            ("details[0].hosts", "10.0.0.1"),
            ("details[1].executor.key", SECRET),
        ],
    );
    fx.ok(
        "generateNetworkOfferings",
        &[("extensionid", &id), ("offeringtype", "isolated")],
    );
    fx.api
        .registry()
        .bind(
            &BindingTarget::Network(NET1.into()),
            &id,
            PN1,
            r#"{"vni":5001}"#,
        )
        .unwrap();
    let before = fx.get(&id);
    let fx = fx.reopen();
    assert_eq!(fx.get(&id), before);
    let reg = fx.api.registry();
    assert_eq!(
        reg.registration_details_full(&id, ResourceType::PhysicalNetwork, PN1)
            .unwrap()
            .get("executor.key"),
        Some(SECRET)
    );
    assert_eq!(fx.providers(PN1).len(), 1);
    assert_eq!(reg.list_offerings(&id).unwrap().len(), 1);
    assert_eq!(
        reg.get_binding(&BindingTarget::Network(NET1.into()))
            .unwrap()
            .unwrap()
            .details,
        r#"{"vni":5001}"#
    );
}

fn secrets_are_not_in_the_database_files(backend: Backend) {
    let fx = Fx::on(backend);
    let id = fx.create(
        "sec",
        "NetworkOrchestrator",
        &[
            ("details[0].api.secret", SECRET),
            ("details[1].visible", "plain-marker-42"),
            ("details[2].Admin.Password", SECRET),
            ("details[3].sshkey", SECRET),
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    fx.register(
        &id,
        "PhysicalNetwork",
        PN1,
        &[
            ("details[0].executor.key", SECRET),
            ("details[1].PASSWORD", SECRET),
        ],
    );
    fx.ok(
        "updateRegisteredExtension",
        &[
            ("extensionid", &id),
            ("resourceid", PN1),
            ("resourcetype", "PhysicalNetwork"),
            ("details[0].db.password", SECRET),
        ],
    );
    let listed = fx.ok("listExtensions", &[]).to_string();
    assert!(!listed.contains(SECRET));
    assert!(!listed.contains("api.secret") && !listed.contains("Admin.Password"));
    let full = fx.api.registry().extension_details_full(&id).unwrap();
    assert_eq!(full.hidden.len(), 3);
    assert_eq!(full.get("Admin.Password"), Some(SECRET));
    assert!(listed.contains("plain-marker-42"));
    // Every byte the store holds: the SQLite file and its WAL, or a dump
    // of the CloudStack database as an operator's backup would hold it.
    let raw: Vec<u8> = match &fx.store.db {
        None => {
            let db = fx.store.dir.path().join("netbridge.db");
            let mut raw = std::fs::read(&db).unwrap();
            raw.extend(std::fs::read(db.with_extension("db-wal")).unwrap_or_default());
            raw
        }
        Some(db) => {
            let dump = db.dump();
            // Hidden details are CloudStack rows with display=0, sealed in
            // netbridge's self-describing form.
            assert!(dump.contains("'sshkey','netbridge:aes256gcm:v1:"), "{dump}");
            assert!(
                dump.contains("'executor.key','netbridge:aes256gcm:v1:"),
                "{dump}"
            );
            dump.into_bytes()
        }
    };
    let contains = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
    // The visible marker proves we are looking at the right bytes.
    assert!(contains(b"plain-marker-42"));
    assert!(!contains(SECRET.as_bytes()));
    // And the key file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(fx.store.dir.path().join("secret.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

fn wrong_key_file_cannot_read_secrets(backend: Backend) {
    let fx = Fx::on(backend);
    let id = fx.create("k", "NetworkOrchestrator", &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    fx.register(
        &id,
        "PhysicalNetwork",
        PN1,
        &[("details[0].executor.key", SECRET)],
    );
    let Fx { api, store } = fx;
    drop(api);
    let cfg = store.config_with_key("other.key");
    // A missing key file is not silently replaced while secrets exist: the
    // key file setting is the operator's to fix (431).
    let e = Api::open(cfg.clone()).err().unwrap();
    assert_eq!(e.code, 431);
    assert!(
        e.text
            .contains("is missing but the database holds 1 encrypted detail(s)"),
        "{e:?}"
    );
    assert!(!cfg.key_file.exists());
    // Another valid key opens, but cannot decrypt.
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&cfg.key_file)
            .unwrap();
        f.write_all(&[7u8; 32]).unwrap();
    }
    let api = Api::open(cfg).unwrap();
    let e = api
        .registry()
        .registration_details_full(&id, ResourceType::PhysicalNetwork, PN1)
        .unwrap_err();
    assert!(e.to_string().contains("failed authentication"), "{e}");
    assert!(!e.to_string().contains(SECRET));
    // Listing still works: hidden values are never decrypted for responses.
    let p: Params = [("id".to_string(), id.clone())].into_iter().collect();
    assert!(api.call("listExtensions", &p).is_ok());
}

fn concurrent_calls_are_consistent(backend: Backend) {
    let fx = Fx::on(backend);
    let ids: Vec<String> = (0..4).map(|i| fx.create_ref(&format!("c{i}"))).collect();
    for id in &ids {
        fx.register(
            id,
            "PhysicalNetwork",
            PN1,
            &[("details[0].executor.key", SECRET)],
        );
    }
    std::thread::scope(|s| {
        for t in 0..16 {
            let fx = &fx;
            let ids = &ids;
            s.spawn(move || {
                for i in 0..40 {
                    let id = &ids[(t + i) % ids.len()];
                    let value = format!("10.0.{t}.{i}");
                    fx.ok(
                        "updateRegisteredExtension",
                        &[
                            ("extensionid", id),
                            ("resourceid", PN1),
                            ("resourcetype", "PhysicalNetwork"),
                            ("details[0].hosts", &value),
                        ],
                    );
                    let e = fx.get(id);
                    assert_eq!(e["resources"].as_array().unwrap().len(), 1);
                    let name = format!("t{t}-{i}");
                    fx.create(&name, "Orchestrator", &[]);
                }
            });
        }
    });
    let r = fx.ok("listExtensions", &[("details", "min")]);
    assert_eq!(r["listextensionsresponse"]["count"], 4 + 16 * 40);
    for id in &ids {
        let f = fx
            .api
            .registry()
            .registration_details_full(id, ResourceType::PhysicalNetwork, PN1)
            .unwrap();
        assert_eq!(f.get("executor.key"), Some(SECRET));
        assert!(f.get("hosts").unwrap().starts_with("10.0."));
    }
}

fn more_bad_input(backend: Backend) {
    let fx = Fx::on(backend);
    fx.err(
        "createExtension",
        &[("name", "   "), ("type", "Orchestrator")],
        "Unable to execute API command createextension due to missing parameter name",
    );
    let mut many: Vec<(String, String)> = (0..300)
        .map(|i| (format!("details[{i}].k{i}"), "v".to_string()))
        .collect();
    many.push(("name".into(), "many".into()));
    many.push(("type".into(), "Orchestrator".into()));
    let e = fx
        .api
        .call("createExtension", &many.into_iter().collect())
        .unwrap_err();
    assert_eq!(
        (e.code, e.text.as_str()),
        (431, "Too many entries in parameter details (at most 256)")
    );
    let long_key = "k".repeat(256);
    let name = format!("details[0].{long_key}");
    fx.err_starts(
        "createExtension",
        &[("name", "lk"), ("type", "Orchestrator"), (&name, "v")],
        "Invalid detail key 'kkkk",
    );
    fx.err(
        "listExtensions",
        &[("page", "abc")],
        "Invalid value 'abc' for parameter page: expected an integer from 1 to 1000000",
    );
    fx.err_starts(
        "deleteExtension",
        &[("id", "42")],
        "Invalid parameter id value=42 due to incorrect long value format",
    );
    fx.err(
        "deleteExtension",
        &[],
        "Unable to execute API command deleteextension due to missing parameter id",
    );
    // Unicode names are fine; the default path keeps only safe characters.
    let e = fx.create("Ωmega Net", "NetworkOrchestrator", &[]);
    assert_eq!(e["name"], "Ωmega Net");
    assert_eq!(
        e["path"],
        "/usr/share/cloudstack-management/extensions/_mega_net/_mega_net.sh"
    );
    // Empty detail values are values.
    let e = fx.create(
        "empty",
        "Orchestrator",
        &[("details[0].key", "k"), ("details[0].value", "")],
    );
    assert_eq!(e["details"], serde_json::json!({"k": ""}));
    // Duplicate keys after canonicalisation of network.* keys.
    fx.err(
        "createExtension",
        &[
            ("name", "dupk"),
            ("type", "NetworkOrchestrator"),
            ("details[0].network.services", "Dhcp"),
            ("details[1].Network.Services", "Dns"),
        ],
        "Duplicate detail key 'network.services' in parameter details",
    );
}

fn api_is_shareable_and_refuses_a_loose_key_file(backend: Backend) {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Api>();
    use std::os::unix::fs::PermissionsExt;
    let store = Store::new(backend);
    let cfg = store.config_with_key("state/secret.key");
    drop(Api::open(cfg.clone()).unwrap());
    std::fs::set_permissions(&cfg.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Api::open(cfg).err().unwrap();
    assert_eq!(e.code, 431);
    assert!(
        e.text
            .contains("is accessible by group or others (mode 644); refusing to use it"),
        "{e:?}"
    );
}

fn two_handles_on_one_database_see_each_other(backend: Backend) {
    // e.g. the CLI next to a running server, or two management servers.
    let store = Store::new(backend);
    let a = Api::open(store.config()).unwrap();
    let b = Api::open(store.config()).unwrap();
    let p: Params = [("name", "shared"), ("type", "Orchestrator")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    a.call("createExtension", &p).unwrap();
    let q: Params = [("name".to_string(), "shared".to_string())]
        .into_iter()
        .collect();
    let r = b.call("listExtensions", &q).unwrap();
    assert_eq!(r["listextensionsresponse"]["count"], 1);
    let e = b.call("createExtension", &p).unwrap_err();
    assert_eq!(e.text, "Extension by name already exists");
}

/// One `#[test]` per backend for each test function of the suite.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(super::Backend::Sqlite)
            })*
        }
        mod mariadb {
            $(#[test]
            fn $name() {
                super::$name(super::Backend::MariaDb)
            })*
        }
    };
}

on_both_backends!(
    create_extension_response_shape_and_defaults,
    create_extension_errors,
    injection_strings_are_plain_data,
    network_services_and_capabilities_are_validated_and_canonical,
    bad_details_parameters,
    parameter_names_are_case_insensitive_and_unknown_command_is_refused,
    update_extension_replaces_visible_details_and_keeps_hidden,
    delete_extension_refused_while_registered,
    list_extensions_filters_and_detail_levels,
    register_errors,
    provider_lifecycle_follows_registration_and_services,
    extension_without_services_gets_empty_provider,
    unregister_refused_while_a_network_uses_the_provider,
    update_registered_extension_exact_semantics,
    update_registered_extension_on_cluster,
    generate_offerings_for_reference_extension,
    generation_applies_public_ip_dependency_and_type_rules,
    validate_network_offering,
    data_survives_reopen,
    secrets_are_not_in_the_database_files,
    wrong_key_file_cannot_read_secrets,
    concurrent_calls_are_consistent,
    more_bad_input,
    api_is_shareable_and_refuses_a_loose_key_file,
    two_handles_on_one_database_see_each_other,
);
