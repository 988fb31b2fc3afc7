//! Payload forms and strict rule fields through the executor daemon (signed
//! TLS, the harness of `smoke/common`), root only:
//!
//! - every rule document sent as CloudStack 4.23 sends it (JSON values,
//!   plain `vm_data` contents) and as older builds send it (Base64 documents,
//!   Base64 contents) leaves the same executor state, and VMs fetch plain
//!   text over real HTTP either way;
//! - a firewall rule with an empty or null field is refused with 400 naming
//!   it, and real packets show that nothing changed.
//!
//! Namespaces use the prefix `nbl`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use netbridge_executor::services::store::MetadataStore;
use netbridge_testbed::*;
use serde_json::{json, Value};

const NET: u32 = 4601;
const TIER: u32 = 4602;
const VPC: &str = "46";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A document as older builds send it: Base64 of the JSON text.
fn b64_doc(doc: &Value) -> Value {
    Value::String(b64(doc.to_string()))
}

/// Older builds' `vm_data`: every content Base64 too (inside a Base64
/// document when `wrap`).
fn legacy_vm_data(doc: &Value, wrap: bool) -> Value {
    let mut inner = doc.clone();
    for item in inner.as_array_mut().into_iter().flatten() {
        let text = item["content"].as_str().unwrap_or_default().to_string();
        item["content"] = json!(b64(text));
    }
    if wrap {
        b64_doc(&inner)
    } else {
        inner
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    /// CloudStack 4.23: JSON values, plain contents.
    Current,
    /// Older builds: Base64 documents, Base64 contents.
    Legacy,
}

impl Form {
    fn doc(self, doc: Value) -> Value {
        match self {
            Form::Current => doc,
            Form::Legacy => b64_doc(&doc),
        }
    }

    fn vm_data(self, doc: Value) -> Value {
        match self {
            Form::Current => doc,
            Form::Legacy => legacy_vm_data(&doc, true),
        }
    }

    fn restore_data(self, mut doc: Value) -> Value {
        match self {
            Form::Current => doc,
            Form::Legacy => {
                for vm in doc["vms"].as_array_mut().into_iter().flatten() {
                    vm["vm_data"] = legacy_vm_data(&vm["vm_data"], false);
                }
                b64_doc(&doc)
            }
        }
    }
}

fn net_details(id: u32) -> Value {
    json!({"host": "h1", "namespace": format!("cs-net-{id}")})
}

fn vpc_details() -> Value {
    json!({"host": "h1", "namespace": format!("cs-vpc-{VPC}"), "vpc_id": VPC})
}

fn net() -> Value {
    merged(
        network_payload(NET, 100, "10.1.1.1", "10.1.1.0/24"),
        json!({"extension_ip": "10.1.1.1"}),
    )
}

fn tier() -> Value {
    merged(
        network_payload(TIER, 101, "10.2.1.1", "10.2.1.0/24"),
        json!({"vpc_id": VPC, "extension_ip": "10.2.1.1"}),
    )
}

#[track_caller]
fn ok(host: &Host, details: Value, base: Value, command: &str, extra: Value) {
    let r = host
        .client()
        .command(command, &envelope(host, details, merged(base, extra)));
    assert_eq!(r.status, 200, "{command}: {}", r.body);
}

fn fw_rules() -> Value {
    json!({"default_egress_allow": false, "cidr": "10.1.1.0/24", "rules": [
        {"id": 1, "type": "ingress", "protocol": "tcp", "portStart": 22, "portEnd": 22,
         "publicIp": "203.0.113.10", "sourceCidrs": ["0.0.0.0/0"], "destCidrs": []},
        {"id": 2, "type": "ingress", "protocol": "udp", "portStart": 5000, "portEnd": 5010,
         "publicIp": "203.0.113.10", "sourceCidrs": ["198.51.100.0/24", "192.0.2.7"], "destCidrs": []},
        {"id": 3, "type": "ingress", "protocol": "icmp", "icmpType": -1, "icmpCode": -1,
         "publicIp": "203.0.113.10", "sourceCidrs": [], "destCidrs": []},
        {"id": 4, "type": "egress", "protocol": "all", "sourceCidrs": ["10.1.1.0/24"],
         "destCidrs": ["198.51.100.0/24"]},
        {"id": 5, "type": "egress", "protocol": "tcp", "portStart": 443, "portEnd": 443,
         "sourceCidrs": [], "destCidrs": []}
    ]})
}

fn lb_rules() -> Value {
    json!([
        {"id": 7, "name": "web", "publicIp": "203.0.113.10", "publicPort": 80, "privatePort": 8080,
         "protocol": "tcp", "algorithm": "source", "revoke": false, "backends": [
            {"ip": "10.1.1.10", "port": 8080, "revoked": false},
            {"ip": "10.1.1.11", "port": 8080, "revoked": false},
            {"ip": "10.1.1.12", "port": 8080, "revoked": true}]},
        {"id": 8, "name": "dns", "publicIp": "203.0.113.10", "publicPort": 53, "privatePort": 53,
         "protocol": "udp", "algorithm": "roundrobin", "revoke": false, "backends": [
            {"ip": "10.1.1.10", "port": 53, "revoked": false}]}
    ])
}

fn acl_rules() -> Value {
    json!([
        {"number": 30, "action": "allow", "trafficType": "ingress", "protocol": "tcp",
         "portStart": 22, "portEnd": 80, "sourceCidrs": ["0.0.0.0/0"]},
        {"number": 10, "action": "allow", "trafficType": "ingress", "protocol": "icmp",
         "icmpType": -1, "icmpCode": -1, "sourceCidrs": ["0.0.0.0/0"]},
        {"number": 20, "action": "deny", "trafficType": "ingress", "protocol": "tcp",
         "portStart": 22, "portEnd": 22, "sourceCidrs": ["10.2.2.0/24"]},
        {"number": 40, "action": "deny", "trafficType": "egress", "protocol": "udp",
         "portStart": 53, "sourceCidrs": ["198.51.100.0/24"]},
        {"number": 50, "action": "allow", "trafficType": "egress", "protocol": "all", "sourceCidrs": []}
    ])
}

/// The user data: UTF-8 beyond ASCII, several lines.
const USER_DATA: &str = "#cloud-config\nruncmd:\n  - echo grüße\n";

/// vm1's data at deploy. `dm0x` (a valid host name) is also valid Base64:
/// a 4.23 document must keep it as it is.
fn vm1_data() -> Value {
    json!([
        {"dir": "userdata", "file": "user-data", "content": USER_DATA},
        {"dir": "meta-data", "file": "instance-id", "content": "i-alpha"},
        {"dir": "metadata", "file": "local-hostname", "content": "dm0x"},
        {"dir": "metadata", "file": "public-keys", "content": "ssh-ed25519 AAAAC3Nz alpha@example"},
        {"dir": "password", "file": "vm_password", "content": "Pw alpha/1+2="},
        {"dir": "password", "file": "vm-password-md5checksum", "content": "5f4dcc3b5aa765d61d8327deb882cf99"}
    ])
}

/// restore-network after a restart: both VMs, new user data for vm1, no
/// passwords (the stored one is kept).
fn restore() -> Value {
    json!({"dhcp_enabled": false, "dns_enabled": false, "userdata_enabled": true, "vms": [
        {"ip": "10.1.1.10", "mac": "02:00:00:00:01:01", "hostname": "vm1", "default_nic": true,
         "vm_data": [
            {"dir": "userdata", "file": "user-data", "content": "#cloud-config\nrestored: true\n"},
            {"dir": "meta-data", "file": "instance-id", "content": "i-alpha"},
            {"dir": "meta-data", "file": "local-hostname", "content": "dm0x"}]},
        {"ip": "10.1.1.11", "mac": "02:00:00:00:01:02", "hostname": "vm2", "default_nic": true,
         "vm_data": [
            {"dir": "meta-data", "file": "instance-id", "content": "i-beta"},
            {"dir": "meta-data", "file": "availability-zone", "content": "zone-1"}]}
    ]})
}

/// A VM deployed after the restore (no namespace needed).
fn vm3_data() -> Value {
    json!([
        {"dir": "meta-data", "file": "instance-id", "content": "aS1nYW1tYQ=="},
        {"dir": "password", "file": "vm_password", "content": "Pw-gamma"}
    ])
}

/// Sends every command that carries a rule document, in `form`.
fn build(host: &Host, form: Form) {
    let d = || net_details(NET);
    ok(host, d(), net(), "implement-network", json!({}));
    ok(
        host,
        d(),
        net(),
        "assign-ip",
        json!({"public_ip": "203.0.113.10", "public_vlan": "vlan://200",
            "public_gateway": PUBLIC_GATEWAY, "public_cidr": PUBLIC_CIDR, "source_nat": "true"}),
    );
    ok(
        host,
        d(),
        net(),
        "apply-fw-rules",
        json!({"fw_rules": form.doc(fw_rules())}),
    );
    ok(
        host,
        d(),
        net(),
        "save-vm-data",
        json!({"ip": "10.1.1.10", "vm_data": form.vm_data(vm1_data())}),
    );
    ok(
        host,
        d(),
        net(),
        "apply-lb-rules",
        json!({"lb_rules": form.doc(lb_rules())}),
    );
    ok(
        host,
        d(),
        net(),
        "restore-network",
        json!({"restore_data": form.restore_data(restore())}),
    );
    ok(
        host,
        d(),
        net(),
        "save-vm-data",
        json!({"ip": "10.1.1.12", "vm_data": form.vm_data(vm3_data())}),
    );
    ok(
        host,
        vpc_details(),
        json!({"vpc_id": VPC, "zone_id": "1", "vpc_cidr": "10.2.0.0/16"}),
        "implement-vpc",
        json!({}),
    );
    ok(host, vpc_details(), tier(), "implement-network", json!({}));
    ok(
        host,
        vpc_details(),
        tier(),
        "apply-network-acl",
        json!({"acl_rules": form.doc(acl_rules())}),
    );
}

/// Commands with one field present but empty, or a legacy content that is
/// not Base64, in `form`: each is refused with 400 naming the field.
fn refusals(host: &Host, form: Form) {
    let mut fw = fw_rules();
    fw["rules"][2]["protocol"] = json!("");
    let mut acl = acl_rules();
    acl[1]["sourceCidrs"] = json!(["0.0.0.0/0", ""]);
    let mut lb = lb_rules();
    lb[0]["backends"][1]["revoked"] = Value::Null;
    let mut vm3 = legacy_vm_data(&vm3_data(), false);
    vm3[1]["content"] = json!("not Base64!");
    let cases = [
        (
            net_details(NET),
            net(),
            "apply-fw-rules",
            json!({"fw_rules": form.doc(fw)}),
            "fw_rules.rules[2].protocol",
        ),
        (
            vpc_details(),
            tier(),
            "apply-network-acl",
            json!({"acl_rules": form.doc(acl)}),
            "acl_rules[number=10].sourceCidrs[1]",
        ),
        (
            vpc_details(),
            tier(),
            "apply-network-acl",
            json!({"acl_rules": ""}),
            "acl_rules",
        ),
        (
            net_details(NET),
            net(),
            "apply-lb-rules",
            json!({"lb_rules": form.doc(lb)}),
            "lb_rules[0].backends[1].revoked",
        ),
        (
            net_details(NET),
            net(),
            "save-vm-data",
            json!({"ip": "10.1.1.12", "vm_data": b64_doc(&vm3)}),
            "vm_data[1].content",
        ),
    ];
    for (details, base, command, extra, field) in cases {
        let r = host
            .client()
            .command(command, &envelope(host, details, merged(base, extra)));
        assert_eq!(r.status, 400, "{command} {field}: {}", r.body);
        assert!(
            r.message().contains(&format!("'{field}'")),
            "{field}: {}",
            r.message()
        );
        // A content may be a password: never echoed.
        assert!(!r.body.contains("not Base64!"), "{}", r.body);
    }
}

fn tear_down(host: &Host) {
    ok(host, net_details(NET), net(), "destroy-network", json!({}));
    ok(host, vpc_details(), tier(), "destroy-network", json!({}));
    ok(
        host,
        vpc_details(),
        json!({"vpc_id": VPC}),
        "shutdown-vpc",
        json!({}),
    );
    assert!(host.namespaces().is_empty(), "{:?}", host.namespaces());
}

/// Everything the executor keeps for the network and the VPC: persisted
/// desired state, installed rulesets, the haproxy configuration and the VM
/// data (decrypted with the executor's key).
fn executor_state(host: &Host) -> BTreeMap<String, Value> {
    let state = host.state_dir();
    let normalize = |text: String| text.replace(&state.display().to_string(), "<state>");
    let json_file = |path: PathBuf| -> Value {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        serde_json::from_str(&normalize(text)).unwrap()
    };
    let mut out = BTreeMap::new();
    out.insert(
        "network".into(),
        json_file(state.join(format!("networks/cs-net-{NET}.json"))),
    );
    let log = state.join(format!("networks/cs-net-{NET}.log"));
    out.insert(
        "network record log".into(),
        json!(std::fs::read_to_string(log).unwrap_or_default()),
    );
    out.insert(
        "vpc".into(),
        json_file(state.join(format!("vpcs/cs-vpc-{VPC}.json"))),
    );
    for ns in [format!("cs-net-{NET}"), format!("cs-vpc-{VPC}")] {
        let rules = host
            .exec(&["ip", "netns", "exec", &ns, "nft", "list", "ruleset"])
            .unwrap();
        out.insert(format!("nft {ns}"), json!(rules));
    }
    let guest = guest_dir(host);
    out.insert(
        "haproxy.cfg".into(),
        json!(normalize(
            std::fs::read_to_string(guest.join("haproxy/haproxy.cfg")).unwrap()
        )),
    );
    let key: [u8; 32] = std::fs::read(state.join("guest/vmdata.key"))
        .unwrap()
        .try_into()
        .unwrap();
    let store = MetadataStore::open(guest.join("vmdata"), Some(key)).unwrap();
    out.insert(
        "vm data".into(),
        serde_json::to_value(&*store.snapshot()).unwrap(),
    );
    out
}

fn guest_dir(host: &Host) -> PathBuf {
    host.state_dir().join(format!("guest/cs-net-{NET}"))
}

fn md(ns: &Path, path: &str) -> (u16, String) {
    http_get(ns, "10.1.1.1:80".parse().unwrap(), path).unwrap_or((0, String::new()))
}

fn password(ns: &Path, request: &str) -> String {
    let addr: SocketAddr = "10.1.1.1:8080".parse().unwrap();
    http_request(ns, addr, "GET", "/", &[("DomU_Request", request)])
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default()
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Kills (by PID, after checking that its command line names our state
/// dir) a haproxy this test's executor left behind when the test fails.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let pid_file = self
            .0
            .join(format!("guest/cs-net-{NET}/haproxy/haproxy.pid"));
        if let Some(pid) = read_pid(&pid_file) {
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&self.0.display().to_string()))
                .unwrap_or(false);
            if ours {
                // SAFETY: plain syscall on a PID verified above.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// Each command that carries a rule document, sent as 4.23 sends it and as
/// older builds send it (Base64 documents with Base64 `vm_data` contents,
/// `restore_data` with Base64 contents inside), leaves the same executor
/// state, and the VMs fetch the same plain text over HTTP.
#[test]
fn legacy_and_current_payloads_leave_identical_executor_state() {
    if skip_unless_root("legacy_and_current_payloads_leave_identical_executor_state") {
        return;
    }
    let mut tb = Testbed::new(
        "nbl",
        TopologyOptions::default()
            .vm("vm1", "10.1.1.10/24", Some("10.1.1.1"))
            .vm("vm2", "10.1.1.11/24", Some("10.1.1.1")),
    );
    let (vm1, vm2) = (tb.vm("vm1").path(), tb.vm("vm2").path());
    let host = tb.host(0);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(host.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let _reaper = Reaper(host.state_dir());
    host.start_executor().unwrap();
    let host = &*host;

    let mut states = Vec::new();
    for form in [Form::Current, Form::Legacy] {
        build(host, form);
        let state = executor_state(host);
        refusals(host, form);
        assert_eq!(
            executor_state(host),
            state,
            "a refused command changed the state"
        );
        // What the VMs are served: plain text, exactly as CloudStack meant it.
        assert_eq!(
            md(&vm1, "/latest/user-data"),
            (200, "#cloud-config\nrestored: true\n".to_string()),
            "{form:?}"
        );
        assert_eq!(
            md(&vm1, "/latest/meta-data/instance-id"),
            (200, "i-alpha".into()),
            "{form:?}"
        );
        assert_eq!(
            md(&vm1, "/latest/meta-data/local-hostname"),
            (200, "dm0x".into()),
            "{form:?}"
        );
        assert_eq!(
            md(&vm2, "/latest/meta-data/instance-id"),
            (200, "i-beta".into()),
            "{form:?}"
        );
        assert_eq!(
            md(&vm2, "/latest/meta-data/availability-zone"),
            (200, "zone-1".into()),
            "{form:?}"
        );
        // The password kept across restore-network, served once.
        assert_eq!(
            password(&vm1, "send_my_password"),
            "Pw alpha/1+2=",
            "{form:?}"
        );
        assert_eq!(password(&vm1, "saved_password"), "saved_password");
        assert_eq!(password(&vm2, "send_my_password"), "saved_password");
        tear_down(host);
        states.push(state);
    }
    let (current, legacy) = (&states[0], &states[1]);
    // Not two equally wrong states: spot checks of the decoded values.
    let vm = |ip: &str| &current["vm data"][ip];
    assert_eq!(vm("10.1.1.10")["meta"]["instance-id"], "i-alpha");
    assert_eq!(vm("10.1.1.10")["meta"]["local-hostname"], "dm0x");
    assert_eq!(vm("10.1.1.10")["password"], "Pw alpha/1+2=");
    assert_eq!(
        vm("10.1.1.10")["userdata"],
        json!(b64("#cloud-config\nrestored: true\n"))
    );
    assert_eq!(vm("10.1.1.11")["meta"]["availability-zone"], "zone-1");
    assert_eq!(vm("10.1.1.12")["meta"]["instance-id"], "aS1nYW1tYQ==");
    assert_eq!(vm("10.1.1.12")["password"], "Pw-gamma");
    assert_eq!(
        current["network"]["firewall"]["rules"]
            .as_array()
            .map(Vec::len),
        Some(5)
    );
    assert_eq!(
        current["network"]["guest"]["lb_rules"]["7"]["backends"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let acl = current["nft cs-vpc-46"].as_str().unwrap();
    assert!(acl.contains("acl 50 allow"), "{acl}");
    let nat = current["nft cs-net-4601"].as_str().unwrap();
    assert!(nat.contains("udp dport 53"), "{nat}");
    for key in current.keys() {
        assert_eq!(current[key], legacy[key], "{key} differs between the forms");
    }
    assert_eq!(current, legacy);
}

/// A firewall rule with an empty or null field would have opened more
/// (every protocol, every public IP, every port, every source); it is
/// refused with 400 naming the field, the previous ruleset stays in force,
/// and real packets show it: the port it would have opened stays closed, a
/// port allowed before stays open.
#[test]
fn refused_firewall_rule_changes_nothing_on_the_wire() {
    if skip_unless_root("refused_firewall_rule_changes_nothing_on_the_wire") {
        return;
    }
    let mut tb = Testbed::new(
        "nbl",
        TopologyOptions::default().vm("vm1", "10.1.1.10/24", Some("10.1.1.1")),
    );
    let vm1 = tb.vm("vm1").path();
    let upstream = tb.upstream.path();
    let host = tb.host(0);
    host.start_executor().unwrap();
    let host = &*host;
    let d = || net_details(NET);
    ok(host, d(), net(), "implement-network", json!({}));
    ok(
        host,
        d(),
        net(),
        "assign-ip",
        json!({"public_ip": "203.0.113.10", "public_vlan": "vlan://200",
            "public_gateway": PUBLIC_GATEWAY, "public_cidr": PUBLIC_CIDR, "source_nat": "true"}),
    );
    let _ssh = tcp_server(&vm1, "10.1.1.10:22".parse().unwrap(), "vm1-22");
    let _web = tcp_server(&vm1, "10.1.1.10:80".parse().unwrap(), "vm1-80");
    for (public_port, private_port) in [("2222", "22"), ("8080", "80")] {
        ok(
            host,
            d(),
            net(),
            "add-port-forward",
            json!({"public_ip": "203.0.113.10", "public_port": public_port,
                "private_ip": "10.1.1.10", "private_port": private_port, "protocol": "tcp"}),
        );
    }
    let allowed: SocketAddr = "203.0.113.10:2222".parse().unwrap();
    let guarded: SocketAddr = "203.0.113.10:8080".parse().unwrap();
    let ssh_rule = json!({"id": "1", "type": "ingress", "protocol": "tcp", "portStart": "2222",
        "portEnd": "2222", "publicIp": "203.0.113.10", "sourceCidrs": ["0.0.0.0/0"]});
    let fw = |rules: Value| json!({"fw_rules": {"default_egress_allow": true, "cidr": "10.1.1.0/24", "rules": rules}});
    ok(host, d(), net(), "apply-fw-rules", fw(json!([ssh_rule])));
    let answer = format!("vm1-22 {PUBLIC_GATEWAY}");
    assert_eq!(tcp_probe(&upstream, allowed), Ok(answer.clone()));
    assert!(tcp_probe(&upstream, guarded).is_err(), "8080 has no rule");

    let ns = format!("cs-net-{NET}");
    let ruleset = || {
        host.exec(&["ip", "netns", "exec", &ns, "nft", "list", "ruleset"])
            .unwrap()
    };
    let state_file = host.state_dir().join(format!("networks/cs-net-{NET}.json"));
    let (rules_before, state_before) = (ruleset(), std::fs::read(&state_file).unwrap());
    // The rule that opens 8080 to the upstream, each time with one field
    // broken; read as absent, the field would widen the rule (every
    // protocol and port, every public IP, every port, every source) and
    // 8080 would open.
    let web = json!({"id": "2", "type": "ingress", "protocol": "tcp", "portStart": "8080",
        "portEnd": "8080", "publicIp": "203.0.113.10", "sourceCidrs": [PUBLIC_CIDR]});
    let with = |key: &str, value: Value| {
        let mut r = web.clone();
        r[key] = value;
        r
    };
    let mut no_ports = web.clone();
    no_ports["portStart"] = json!("");
    no_ports["portEnd"] = json!("");
    let cases = [
        (with("protocol", json!("")), "fw_rules.rules[1].protocol"),
        (with("protocol", Value::Null), "fw_rules.rules[1].protocol"),
        (with("publicIp", json!("")), "fw_rules.rules[1].publicIp"),
        (no_ports, "fw_rules.rules[1].portStart"),
        (
            with("sourceCidrs", json!([""])),
            "fw_rules.rules[1].sourceCidrs[0]",
        ),
        (
            with("protocol", json!("all")),
            "fw_rules.rules[1].portStart",
        ),
    ];
    for (bad, field) in cases {
        for legacy in [false, true] {
            let mut payload = fw(json!([ssh_rule.clone(), bad.clone()]));
            if legacy {
                payload["fw_rules"] = b64_doc(&payload["fw_rules"]);
            }
            let r = host.client().command(
                "apply-fw-rules",
                &envelope(host, d(), merged(net(), payload)),
            );
            assert_eq!(r.status, 400, "{bad}: {}", r.body);
            assert_eq!(r.json()["status"], "error");
            assert!(
                r.message().contains(&format!("'{field}'")),
                "{field}: {}",
                r.message()
            );
            // Refused before anything changed: no wait needed.
            assert!(tcp_probe(&upstream, guarded).is_err(), "{bad} opened 8080");
            assert_eq!(tcp_probe(&upstream, allowed), Ok(answer.clone()), "{bad}");
        }
    }
    assert_eq!(ruleset(), rules_before);
    assert_eq!(std::fs::read(&state_file).unwrap(), state_before);
    // The probe does see an opening: the rule, well formed, opens 8080.
    ok(
        host,
        d(),
        net(),
        "apply-fw-rules",
        fw(json!([ssh_rule, web])),
    );
    assert_eq!(
        tcp_probe(&upstream, guarded),
        Ok(format!("vm1-80 {PUBLIC_GATEWAY}"))
    );
    ok(host, d(), net(), "destroy-network", json!({}));
    assert!(host.namespaces().is_empty(), "{:?}", host.namespaces());
}
