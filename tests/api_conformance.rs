//! The API against CloudStack 4.23: `listApis` checked against a table of
//! CloudStack's own parameters and response fields (from its command and
//! response classes), and the parameter semantics CloudStack has
//! (`orchestratorrequirespreparevm`, `listExtensions` filters,
//! `deleteExtension cleanup`, `pagesize=-1`, length limits), the reference
//! extension's capability declaration, resource names and jobs kept in
//! the store.

use netbridge_control::api::{Api, ApiConfig, ApiError, Params};
use netbridge_control::registry::ResourceType;
use serde_json::Value;

/// One CloudStack parameter: name, type, required.
type P = (&'static str, &'static str, bool);

/// CloudStack 4.23's commands as its `@APICommand`/`@Parameter`
/// annotations and response classes declare them: (command, async,
/// parameters, response fields).
const CLOUDSTACK: &[(&str, bool, &[P], &[&str])] = &[
    (
        "createExtension",
        false,
        &[
            ("name", "string", true),
            ("description", "string", false),
            ("type", "string", true),
            ("path", "string", false),
            ("orchestratorrequirespreparevm", "boolean", false),
            ("state", "string", false),
            ("details", "map", false),
        ],
        EXTENSION,
    ),
    (
        "updateExtension",
        false,
        &[
            ("id", "uuid", true),
            ("description", "string", false),
            ("orchestratorrequirespreparevm", "boolean", false),
            ("state", "string", false),
            ("details", "map", false),
            ("cleanupdetails", "boolean", false),
        ],
        EXTENSION,
    ),
    (
        "deleteExtension",
        false,
        &[("id", "uuid", false), ("cleanup", "boolean", false)],
        &["success", "displaytext"],
    ),
    (
        "listExtensions",
        false,
        &[
            ("name", "string", false),
            ("id", "uuid", false),
            ("details", "list", false),
            ("type", "string", false),
            ("resourceid", "string", false),
            ("resourcetype", "string", false),
            ("keyword", "string", false),
            ("page", "integer", false),
            ("pagesize", "integer", false),
        ],
        EXTENSION,
    ),
    (
        "registerExtension",
        false,
        &[
            ("extensionid", "uuid", true),
            ("resourceid", "string", true),
            ("resourcetype", "string", true),
            ("details", "map", false),
        ],
        EXTENSION,
    ),
    (
        "unregisterExtension",
        false,
        &[
            ("extensionid", "uuid", true),
            ("resourceid", "string", true),
            ("resourcetype", "string", true),
        ],
        EXTENSION,
    ),
    (
        "updateRegisteredExtension",
        false,
        &[
            ("extensionid", "uuid", true),
            ("resourceid", "string", true),
            ("resourcetype", "string", true),
            ("details", "map", false),
            ("cleanupdetails", "boolean", false),
        ],
        EXTENSION,
    ),
    (
        "listNetworkServiceProviders",
        false,
        &[
            ("name", "string", false),
            ("physicalnetworkid", "uuid", false),
            ("state", "string", false),
            ("keyword", "string", false),
            ("page", "integer", false),
            ("pagesize", "integer", false),
        ],
        PROVIDER,
    ),
    (
        "updateNetworkServiceProvider",
        true,
        &[
            ("state", "string", false),
            ("id", "uuid", true),
            ("servicelist", "list", false),
        ],
        PROVIDER,
    ),
    (
        "queryAsyncJobResult",
        false,
        &[("jobid", "uuid", true)],
        JOB,
    ),
    (
        "listAsyncJobs",
        false,
        &[
            ("startdate", "date", false),
            ("keyword", "string", false),
            ("page", "integer", false),
            ("pagesize", "integer", false),
        ],
        JOB,
    ),
    (
        "listApis",
        false,
        &[("name", "string", false)],
        &[
            "name",
            "description",
            "since",
            "isasync",
            "related",
            "params",
            "response",
            "type",
        ],
    ),
];

/// `ExtensionResponse`.
const EXTENSION: &[&str] = &[
    "id",
    "name",
    "description",
    "type",
    "path",
    "pathready",
    "isuserdefined",
    "state",
    "details",
    "resources",
    "created",
    "removed",
];
/// `ProviderResponse`.
const PROVIDER: &[&str] = &[
    "name",
    "physicalnetworkid",
    "destinationphysicalnetworkid",
    "state",
    "id",
    "servicelist",
    "canenableindividualservice",
];
/// `AsyncJobResponse` plus `jobid`/`jobstatus` of `BaseResponse`.
const JOB: &[&str] = &[
    "jobid",
    "jobstatus",
    "accountid",
    "userid",
    "cmd",
    "jobprocstatus",
    "jobresultcode",
    "jobresulttype",
    "jobresult",
    "jobinstancetype",
    "jobinstanceid",
    "created",
    "completed",
];

/// The reference extension's declaration, verbatim from `control-plane.md`.
const REFERENCE_CAPABILITIES: &str = r#"{"SourceNat": {"SupportedSourceNatTypes": "peraccount", "RedundantRouter": "false"},
 "StaticNat": {"Supported": "true"},
 "PortForwarding": {"SupportedProtocols": "tcp,udp"},
 "Firewall": {"TrafficStatistics": "per public ip", "SupportedProtocols": "tcp,udp,icmp",
              "SupportedEgressProtocols": "tcp,udp,icmp,all",
              "SupportedTrafficDirection": "ingress,egress", "MultipleIps": "true"},
 "Lb": {"SupportedLBAlgorithms": "roundrobin,leastconn,source", "SupportedLBIsolation": "dedicated",
        "SupportedProtocols": "tcp,udp,tcp-proxy", "SupportedStickinessMethods": "lbcookie,appsession",
        "LbSchemes": "Public", "SslTermination": "false", "VmAutoScaling": "false"},
 "Dhcp": {"DhcpAccrossMultipleSubnets": "true"},
 "Dns": {"AllowDnsSuffixModification": "true", "ExternalDns": "true"},
 "NetworkACL": {"SupportedProtocols": "tcp,udp,icmp"},
 "UserData": {"Supported": "true"}, "CustomAction": {"Supported": "true"}}"#;

const PN1: &str = "5e6f7a8b-0000-4000-8000-000000000001";
const PN2: &str = "5e6f7a8b-0000-4000-8000-000000000002";
const CLUSTER: &str = "c1c1c1c1-0000-4000-8000-000000000001";

struct Fx {
    api: Api,
    dir: tempfile::TempDir,
}

impl Fx {
    fn new() -> Fx {
        let dir = tempfile::tempdir().expect("temp dir");
        let api = Api::open(ApiConfig::in_dir(dir.path())).expect("open");
        Fx { api, dir }
    }

    fn call(&self, cmd: &str, params: &[(&str, &str)]) -> Result<Value, ApiError> {
        let p: Params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.api.call(cmd, &p)
    }

    fn ok(&self, cmd: &str, params: &[(&str, &str)]) -> Value {
        let key = format!("{}response", cmd.to_ascii_lowercase());
        match self.call(cmd, params) {
            Ok(v) => v[&key].clone(),
            Err(e) => panic!("{cmd} failed: {e:?}"),
        }
    }

    fn err(&self, cmd: &str, params: &[(&str, &str)]) -> ApiError {
        match self.call(cmd, params) {
            Ok(v) => panic!("{cmd} answered {v}"),
            Err(e) => e,
        }
    }

    fn create(&self, name: &str, ty: &str, extra: &[(&str, &str)]) -> String {
        let mut p = vec![("name", name), ("type", ty)];
        p.extend_from_slice(extra);
        self.ok("createExtension", &p)["extension"]["id"]
            .as_str()
            .expect("id")
            .to_string()
    }

    fn register(&self, ext: &str, kind: &str, resource: &str) {
        self.ok(
            "registerExtension",
            &[
                ("extensionid", ext),
                ("resourceid", resource),
                ("resourcetype", kind),
            ],
        );
    }

    fn names(&self, params: &[(&str, &str)]) -> Vec<String> {
        let r = self.ok("listExtensions", params);
        r["extension"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["name"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[test]
fn list_apis_matches_cloudstack_for_every_command() {
    let fx = Fx::new();
    let all = fx.ok("listApis", &[]);
    let apis = all["api"].as_array().expect("api list");
    assert_eq!(all["count"], apis.len());
    for (name, is_async, params, fields) in CLOUDSTACK {
        let api = apis
            .iter()
            .find(|a| a["name"] == *name)
            .unwrap_or_else(|| panic!("listApis lacks {name}"));
        assert_eq!(api["isasync"], *is_async, "{name} isasync");
        assert!(
            api["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}"
        );
        let ours = api["params"].as_array().expect("params");
        for (pname, ptype, required) in *params {
            let p = ours
                .iter()
                .find(|p| p["name"] == *pname)
                .unwrap_or_else(|| panic!("{name} lacks parameter {pname}"));
            assert_eq!(p["type"], *ptype, "{name}.{pname} type");
            assert_eq!(p["required"], *required, "{name}.{pname} required");
            assert_eq!(p["length"], 255, "{name}.{pname} length");
        }
        // Every parameter required by us is required by CloudStack too.
        for p in ours.iter().filter(|p| p["required"] == true) {
            assert!(
                params.iter().any(|(n, _, r)| p["name"] == *n && *r),
                "{name}: {} required only here",
                p["name"]
            );
        }
        let response: Vec<&str> = api["response"]
            .as_array()
            .expect("response")
            .iter()
            .filter_map(|f| f["name"].as_str())
            .collect();
        for field in *fields {
            assert!(
                response.contains(field),
                "{name} response lacks {field}: {response:?}"
            );
        }
    }
    // Since-versions CloudStack declares.
    let since = |n: &str| {
        apis.iter()
            .find(|a| a["name"] == n)
            .map(|a| a["since"].clone())
    };
    assert_eq!(since("createExtension"), Some("4.21.0".into()));
    assert_eq!(since("updateRegisteredExtension"), Some("4.23.0".into()));
    assert_eq!(since("updateNetworkServiceProvider"), Some("3.0.0".into()));
    let resources = apis
        .iter()
        .find(|a| a["name"] == "listExtensions")
        .and_then(|a| a["response"].as_array())
        .and_then(|r| r.iter().find(|f| f["name"] == "resources"))
        .map(|f| f["response"].clone())
        .expect("resources fields");
    let resource_fields: Vec<&str> = resources
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        resource_fields,
        ["id", "name", "type", "details", "created"]
    );

    // `name=` picks one; an unknown name is a 431 naming it.
    let one = fx.ok("listApis", &[("name", "listextensions")]);
    assert_eq!(one["count"], 1);
    assert_eq!(one["api"][0]["name"], "listExtensions");
    let e = fx.err("listApis", &[("name", "nope")]);
    assert_eq!(e.code, 431);
    assert!(e.text.ends_with(": nope"), "{}", e.text);
}

#[test]
fn the_command_table_checks_requests() {
    let fx = Fx::new();
    // A required parameter missing, named as CloudStack names it.
    let e = fx.err("registerExtension", &[("extensionid", PN1)]);
    assert_eq!(
        (e.code, e.cs_code, e.text.as_str()),
        (
            431,
            4350,
            "Unable to execute API command registerextension due to missing parameter resourceid"
        )
    );
    // CloudStack's length limit on every string parameter, naming it.
    let long = "k".repeat(256);
    let e = fx.err("listExtensions", &[("keyword", &long)]);
    assert_eq!(
        e.text,
        "Value greater than max allowed length 255 for param: keyword"
    );
    let e = fx.err("listNetworkServiceProviders", &[("name", &long)]);
    assert_eq!(
        e.text,
        "Value greater than max allowed length 255 for param: name"
    );
    // Booleans and UUIDs are checked before the command runs.
    let e = fx.err("deleteExtension", &[("id", PN1), ("cleanup", "maybe")]);
    assert_eq!(
        e.text,
        "Invalid value 'maybe' for parameter cleanup: expected true or false"
    );
    let e = fx.err("queryAsyncJobResult", &[("jobid", "42")]);
    assert!(
        e.text.starts_with("Invalid parameter jobid value=42"),
        "{}",
        e.text
    );
    // An unknown job id: CloudStack's text for an id naming nothing.
    let e = fx.err("queryAsyncJobResult", &[("jobid", PN1)]);
    assert_eq!(e.code, 431);
    assert!(e.text.contains("entity does not exist"), "{}", e.text);
}

#[test]
fn the_reference_declaration_is_accepted_as_written() {
    let fx = Fx::new();
    let id = fx.create(
        "ns-ext",
        "NetworkOrchestrator",
        &[
            ("details[0].key", "network.services"),
            (
                "details[0].value",
                "SourceNat,StaticNat,PortForwarding,Firewall,Lb,Dhcp,Dns,UserData,NetworkACL,CustomAction",
            ),
            ("details[1].key", "network.service.capabilities"),
            ("details[1].value", REFERENCE_CAPABILITIES),
        ],
    );
    let r = fx.ok("listExtensions", &[("id", &id)]);
    let stored: Value = serde_json::from_str(
        r["extension"][0]["details"]["network.service.capabilities"]
            .as_str()
            .expect("capabilities stored"),
    )
    .expect("JSON");
    let sent: Value = serde_json::from_str(REFERENCE_CAPABILITIES).expect("JSON");
    // Every declared value is kept (capability names and values compare
    // case-insensitively: the store keeps CloudStack's canonical case).
    for (service, caps) in sent.as_object().expect("object") {
        for (cap, value) in caps.as_object().expect("object") {
            let kept = stored[service][cap].as_str().unwrap_or("");
            assert!(
                kept.eq_ignore_ascii_case(value.as_str().unwrap_or("")),
                "{service}.{cap}: sent {value}, stored {kept}"
            );
        }
    }
    // What the executor carries out stays checked.
    let e = fx.err(
        "createExtension",
        &[
            ("name", "x"),
            ("type", "NetworkOrchestrator"),
            ("details[0].key", "network.service.capabilities"),
            (
                "details[0].value",
                r#"{"Lb": {"SupportedLBAlgorithms": "random"}}"#,
            ),
        ],
    );
    assert!(
        e.text
            .starts_with("Invalid value 'random' for capability Lb.SupportedLBAlgorithms"),
        "{}",
        e.text
    );
    // Stickiness methods: CloudStack's names and the reference's, any case.
    fx.create(
        "sticky",
        "NetworkOrchestrator",
        &[
            ("details[0].key", "network.service.capabilities"),
            (
                "details[0].value",
                r#"{"Lb": {"SupportedStickinessMethods": "LBCOOKIE,AppCookie,sourcebased,AppSession"}}"#,
            ),
        ],
    );
}

#[test]
fn orchestrator_requires_prepare_vm() {
    let fx = Fx::new();
    let e = fx.err(
        "createExtension",
        &[
            ("name", "n"),
            ("type", "NetworkOrchestrator"),
            ("orchestratorrequirespreparevm", "true"),
        ],
    );
    assert_eq!(e.code, 431);
    assert!(
        e.text.contains("orchestratorrequirespreparevm"),
        "{}",
        e.text
    );
    assert!(fx.names(&[]).is_empty(), "nothing created");

    let id = fx.create(
        "o",
        "Orchestrator",
        &[("orchestratorrequirespreparevm", "true")],
    );
    let r = fx.ok("listExtensions", &[("id", &id)]);
    assert_eq!(r["extension"][0]["orchestratorrequirespreparevm"], true);
    let u = fx.ok(
        "updateExtension",
        &[("id", &id), ("orchestratorrequirespreparevm", "false")],
    );
    assert_eq!(u["extension"]["orchestratorrequirespreparevm"], false);

    let net = fx.create("n", "NetworkOrchestrator", &[]);
    let e = fx.err(
        "updateExtension",
        &[("id", &net), ("orchestratorrequirespreparevm", "true")],
    );
    assert_eq!(e.code, 431);
    let r = fx.ok("listExtensions", &[("id", &net)]);
    assert!(r["extension"][0]
        .get("orchestratorrequirespreparevm")
        .is_none());
}

#[test]
fn list_filters_paging_cleanup_and_resource_names() {
    let fx = Fx::new();
    let a = fx.create("a", "NetworkOrchestrator", &[]);
    let b = fx.create("b", "NetworkOrchestrator", &[]);
    let c = fx.create("c", "Orchestrator", &[]);
    fx.register(&a, "PhysicalNetwork", PN1);
    fx.register(&b, "PhysicalNetwork", PN2);
    fx.register(&c, "Cluster", CLUSTER);

    assert_eq!(fx.names(&[("resourceid", PN1)]), ["a"]);
    assert_eq!(fx.names(&[("resourcetype", "Cluster")]), ["c"]);
    assert_eq!(fx.names(&[("resourcetype", "PhysicalNetwork")]), ["a", "b"]);
    assert_eq!(
        fx.names(&[("resourceid", PN1), ("resourcetype", "Cluster")]),
        Vec::<String>::new()
    );
    assert_eq!(fx.names(&[("type", "Orchestrator")]), ["c"]);
    assert_eq!(
        fx.names(&[("id", &b), ("resourceid", PN1)]),
        Vec::<String>::new()
    );
    assert_eq!(fx.names(&[("id", &a), ("resourceid", PN1)]), ["a"]);
    let e = fx.err("listExtensions", &[("resourcetype", "Host")]);
    assert_eq!(
        e.text,
        "Currently only [Cluster, PhysicalNetwork] can be used to register an extension"
    );

    // pagesize=-1: everything, as in CloudStack; other sizes page.
    let all = fx.ok("listExtensions", &[("pagesize", "-1")]);
    assert_eq!(all["count"], 3);
    assert_eq!(all["extension"].as_array().map(Vec::len), Some(3));
    let page = fx.ok("listExtensions", &[("page", "2"), ("pagesize", "2")]);
    assert_eq!(page["count"], 3);
    assert_eq!(page["extension"][0]["name"], "c");
    let e = fx.err("listExtensions", &[("pagesize", "-2")]);
    assert!(e.text.contains("pagesize"), "{}", e.text);

    // A resource's name: its id until the store learns the name.
    let res = |fx: &Fx| {
        fx.ok("listExtensions", &[("id", &a)])["extension"][0]["resources"][0]["name"].clone()
    };
    assert_eq!(res(&fx), PN1);
    fx.api
        .registry()
        .remember_resource_name(ResourceType::PhysicalNetwork, PN1, "physnet-guest")
        .expect("remember");
    assert_eq!(res(&fx), "physnet-guest");

    // deleteExtension cleanup=true: validated, then the same deletion.
    fx.ok(
        "unregisterExtension",
        &[
            ("extensionid", &c),
            ("resourceid", CLUSTER),
            ("resourcetype", "Cluster"),
        ],
    );
    let d = fx.ok("deleteExtension", &[("id", &c), ("cleanup", "true")]);
    assert_eq!(d["success"], true);
    assert_eq!(fx.names(&[]), ["a", "b"]);
}

#[test]
fn jobs_are_kept_in_the_store_and_interrupted_ones_fail() {
    let fx = Fx::new();
    let id = fx.create(
        "j",
        "NetworkOrchestrator",
        &[
            ("details[0].key", "network.services"),
            ("details[0].value", "Dhcp,Dns"),
        ],
    );
    fx.register(&id, "PhysicalNetwork", PN1);
    let providers = fx.ok("listNetworkServiceProviders", &[("physicalnetworkid", PN1)]);
    let provider = providers["networkserviceprovider"][0]["id"]
        .as_str()
        .expect("provider id")
        .to_string();
    let queued = fx.ok(
        "updateNetworkServiceProvider",
        &[("id", &provider), ("state", "Disabled")],
    );
    let job = queued["jobid"].as_str().expect("jobid").to_string();
    assert_eq!(queued.as_object().map(|o| o.len()), Some(1), "{queued}");
    let done = fx
        .api
        .wait_for_job(&job, std::time::Duration::from_secs(60))
        .expect("job");
    let done = &done["queryasyncjobresultresponse"];
    assert_eq!(done["jobstatus"], 1, "{done}");
    assert_eq!(done["jobresultcode"], 0);
    assert_eq!(done["jobresulttype"], "object");
    assert_eq!(
        done["jobresult"]["networkserviceprovider"]["state"],
        "Disabled"
    );
    assert_eq!(done["jobinstancetype"], "PhysicalNetworkServiceProvider");
    assert_eq!(done["jobinstanceid"], provider.as_str());

    // Parameter errors answer at once, as CloudStack checks before queueing.
    let e = fx.err("updateNetworkServiceProvider", &[("state", "Disabled")]);
    assert_eq!(e.code, 431);
    // An error while running: jobstatus 2, jobresultcode 530, the error.
    let queued = fx.ok(
        "updateNetworkServiceProvider",
        &[("id", &provider), ("state", "Shutdown")],
    );
    let failed_job = queued["jobid"].as_str().expect("jobid").to_string();
    let failed = fx
        .api
        .wait_for_job(&failed_job, std::time::Duration::from_secs(60))
        .expect("job");
    let failed = &failed["queryasyncjobresultresponse"];
    assert_eq!(failed["jobstatus"], 2, "{failed}");
    assert_eq!(failed["jobresultcode"], 530);
    assert_eq!(failed["jobresult"]["errorcode"], 431);
    assert!(failed["jobresult"]["errortext"]
        .as_str()
        .is_some_and(|t| t.contains("parameter state")));

    // A job left pending by a process that is gone is failed by the next
    // process opening the store; finished jobs stay as they were.
    let orphan = fx
        .api
        .registry()
        .create_job(&netbridge_control::registry::NewJob {
            command: "updateNetworkServiceProvider".into(),
            cmd: "x".into(),
            instance_type: None,
            instance_id: None,
            owner: format!(
                "{}:4294967295:1",
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .unwrap_or_default()
                    .trim()
            ),
        })
        .expect("job row");
    let Fx { api, dir } = fx;
    drop(api);
    let fx = Fx {
        api: Api::open(ApiConfig::in_dir(dir.path())).expect("reopen"),
        dir,
    };
    let q = fx.ok("queryAsyncJobResult", &[("jobid", &orphan.id)]);
    assert_eq!(q["jobstatus"], 2, "{q}");
    assert_eq!(
        q["jobresult"]["errortext"],
        netbridge_control::api::jobs::INTERRUPTED_TEXT
    );
    let q = fx.ok("queryAsyncJobResult", &[("jobid", &job)]);
    assert_eq!(q["jobstatus"], 1);
    let listed = fx.ok("listAsyncJobs", &[("keyword", "networkserviceprovider")]);
    assert_eq!(listed["count"], 3, "{listed}");
    let later = fx.ok(
        "listAsyncJobs",
        &[("startdate", "2999-01-01T00:00:00+0000")],
    );
    assert_eq!(later, serde_json::json!({}));
}
