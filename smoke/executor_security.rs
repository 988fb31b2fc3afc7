//! Security smoke tests of the executor daemon (root; skipped otherwise):
//! request authentication, TLS pinning, key rotation without restart, and
//! injection attempts. Every refusal must leave the host unchanged.

use netbridge_protocol::signing;
use netbridge_testbed::*;
use std::net::SocketAddr;

use serde_json::{json, Value};

const NETWORK_ID: u32 = 42;

fn implement_payload() -> Value {
    merged(
        network_payload(NETWORK_ID, 100, "10.1.1.1", "10.1.1.0/24"),
        json!({"extension_ip": "10.1.1.1"}),
    )
}

fn assign_payload() -> Value {
    merged(
        network_payload(NETWORK_ID, 100, "10.1.1.1", "10.1.1.0/24"),
        json!({
            "public_ip": "203.0.113.10",
            "public_vlan": "vlan://200",
            "public_gateway": PUBLIC_GATEWAY,
            "public_cidr": "203.0.113.0/24",
            "source_nat": "true",
        }),
    )
}

fn port_forward_payload() -> Value {
    merged(
        network_payload(NETWORK_ID, 100, "10.1.1.1", "10.1.1.0/24"),
        json!({
            "public_ip": "203.0.113.10",
            "public_port": "2222",
            "private_ip": "10.1.1.10",
            "private_port": "22",
            "protocol": "tcp",
        }),
    )
}

fn net_details() -> Value {
    json!({"host": "h1", "namespace": format!("cs-net-{NETWORK_ID}")})
}

/// What a refused request must not change: the executor's view of its
/// networks, the namespaces on the host, and the router's ruleset.
#[derive(Debug, PartialEq)]
struct Snapshot {
    networks: Value,
    namespaces: Vec<String>,
    ruleset: String,
}

fn snapshot(host: &Host) -> Snapshot {
    let client = host.client();
    let networks = client
        .get("/v1/networks")
        .map(|r| r.json())
        .unwrap_or(Value::Null);
    let namespaces = host.namespaces();
    let ns = format!("cs-net-{NETWORK_ID}");
    let ruleset = if namespaces.contains(&ns) {
        host.exec(&["ip", "netns", "exec", &ns, "nft", "list", "ruleset"])
            .unwrap_or_else(|e| e)
    } else {
        String::new()
    };
    Snapshot {
        networks,
        namespaces,
        ruleset,
    }
}

fn metrics_text(host: &Host) -> String {
    host.client()
        .get("/metrics")
        .map(|r| r.body)
        .unwrap_or_default()
}

fn raw(method: &str, path: &str, headers: Vec<(String, String)>, body: &[u8]) -> RawRequest {
    RawRequest {
        method: method.to_string(),
        path: path.to_string(),
        headers,
        body: body.to_vec(),
    }
}

fn assert_unauthorized(resp: Result<Response, String>, expected: &str) {
    let resp = resp.unwrap_or_else(|e| panic!("transport failure: {e}"));
    assert_eq!(resp.status, 401, "{}", resp.body);
    let body = resp.json();
    assert_eq!(body["status"], "error", "{}", resp.body);
    let msg = resp.message();
    assert!(
        msg.contains(expected),
        "message {msg:?} should contain {expected:?}"
    );
}

#[test]
fn unsigned_forged_stale_and_replayed_requests_are_refused_and_change_nothing() {
    if skip_unless_root(
        "unsigned_forged_stale_and_replayed_requests_are_refused_and_change_nothing",
    ) {
        return;
    }
    let mut tb = Testbed::new("nbd", TopologyOptions::default());
    let host = tb.host(0);
    host.start_executor().unwrap();
    let client = host.client();
    let before = snapshot(host);
    let path = "/v1/commands/implement-network";
    let body = serde_json::to_vec(&envelope(host, net_details(), implement_payload())).unwrap();
    let now = now_secs();

    // Unsigned.
    assert_unauthorized(
        client.send(raw("POST", path, vec![], &body)),
        "request is not signed",
    );
    // Signed with another key.
    let forged = signature_headers(b"not-the-shared-key-0000000000", "POST", path, now, &body);
    assert_unauthorized(
        client.send(raw("POST", path, forged, &body)),
        "signature does not match",
    );
    // Valid signature of a different body.
    let other = signature_headers(&host.key, "POST", path, now, b"{}");
    assert_unauthorized(
        client.send(raw("POST", path, other, &body)),
        "signature does not match",
    );
    // Valid signature for another path.
    let moved = signature_headers(
        &host.key,
        "POST",
        "/v1/commands/destroy-network",
        now,
        &body,
    );
    assert_unauthorized(
        client.send(raw("POST", path, moved, &body)),
        "signature does not match",
    );
    // Stale and future timestamps (correctly signed).
    let stale = signature_headers(&host.key, "POST", path, now - 120, &body);
    assert_unauthorized(
        client.send(raw("POST", path, stale, &body)),
        "outside the accepted window",
    );
    let future = signature_headers(&host.key, "POST", path, now + 120, &body);
    assert_unauthorized(
        client.send(raw("POST", path, future, &body)),
        "outside the accepted window",
    );
    // Malformed nonce.
    let s = signing::sign_with_nonce(&host.key, "POST", path, now, "bad nonce;$(id)", &body);
    assert_unauthorized(
        client.send(raw("POST", path, headers_of(&s), &body)),
        "malformed signature header",
    );
    // Unsigned reads are refused too.
    assert_unauthorized(
        client.send(raw("GET", "/v1/networks", vec![], b"")),
        "request is not signed",
    );
    assert_unauthorized(
        client.send(raw("GET", "/metrics", vec![], b"")),
        "request is not signed",
    );

    assert_eq!(snapshot(host), before, "a refused request changed the host");

    // Replay: the first copy is authenticated (whatever the engine says),
    // the second identical copy is refused and changes nothing more.
    let ok = signature_headers(&host.key, "POST", path, now_secs(), &body);
    let first = client.send(raw("POST", path, ok.clone(), &body)).unwrap();
    assert_ne!(first.status, 401, "{}", first.body);
    let after_first = snapshot(host);
    assert_unauthorized(
        client.send(raw("POST", path, ok, &body)),
        "nonce was already used",
    );
    assert_eq!(
        snapshot(host),
        after_first,
        "a replayed request changed the host"
    );

    let metrics = metrics_text(host);
    for reason in [
        "unsigned",
        "bad_signature",
        "stale",
        "malformed",
        "replayed",
    ] {
        let line = format!("netbridge_executor_auth_failures_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "metrics lack {line}:\n{metrics}");
    }
    assert!(
        metrics.contains("netbridge_executor_auth_failures_total{reason=\"unsigned\"} 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("netbridge_executor_auth_failures_total{reason=\"stale\"} 2\n"),
        "{metrics}"
    );
}

#[test]
fn tls_pins_the_certificate_and_refuses_plain_http() {
    if skip_unless_root("tls_pins_the_certificate_and_refuses_plain_http") {
        return;
    }
    let mut tb = Testbed::new("nbd", TopologyOptions::default());
    let host = tb.host(0);
    host.start_executor().unwrap();
    let tls = host.tls.clone().unwrap();
    let client = host.client();

    // The pinned client works and sees this host and this build.
    let health = client.get("/v1/health").unwrap();
    assert_eq!(health.status, 200, "{}", health.body);
    let h = health.json();
    assert_eq!(h["host"], "h1");
    assert_eq!(h["version"], netbridge_protocol::build_id());
    assert!(h["uptime_secs"].is_u64(), "{h}");
    assert_eq!(h["networks"], 0);

    // `fingerprint --cert` agrees with what gen-cert printed; colon form pins too.
    let fp = run(&[
        &netbridge_testbed::workspace_bin("netbridge-executor")
            .display()
            .to_string(),
        "fingerprint",
        "--cert",
        &tls.cert.display().to_string(),
    ])
    .unwrap();
    assert_eq!(fp.trim(), tls.fingerprint);
    let colons: Vec<String> = tls
        .fingerprint
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect();
    assert_eq!(
        client
            .with_pin(Some(&colons.join(":")))
            .get("/v1/health")
            .unwrap()
            .status,
        200
    );

    // A different pinned fingerprint: the handshake fails, no answer.
    let wrong = format!("{:064x}", 0xdead_beef_u64);
    let err = client.with_pin(Some(&wrong)).get("/v1/health").unwrap_err();
    assert!(
        err.contains("fingerprint mismatch") || err.contains("certificate"),
        "{err}"
    );

    // Plain HTTP to the TLS port gets no HTTP answer.
    let err = client.with_pin(None).get("/v1/health").unwrap_err();
    assert!(!err.is_empty());

    // A signed request with a tampered signature over TLS is still refused.
    assert_unauthorized(
        client
            .with_key(b"some-other-key-0123456789")
            .get("/v1/health"),
        "signature does not match",
    );

    // SIGTERM: a clean exit.
    let status = host.stop().expect("executor did not stop after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(host.log().contains("SIGTERM"), "{}", host.log());
}

#[test]
fn private_mounts_give_each_host_its_own_run_netns() {
    if skip_unless_root("private_mounts_give_each_host_its_own_run_netns") {
        return;
    }
    let mut tb = Testbed::new("nbd", TopologyOptions::default().hosts(2));
    let name = format!("cs-net-{NETWORK_ID}");
    // Joining a host namespace without a private /run/netns is refused: the
    // executor would reconcile (and remove) other hosts' namespaces.
    let key = tb.hosts[0].key_file.display().to_string();
    let err = run(&[
        &netbridge_testbed::workspace_bin("netbridge-executor")
            .display()
            .to_string(),
        "--netns",
        &tb.hosts[0].netns.name,
        "--insecure-http",
        "--key-file",
        &key,
    ])
    .unwrap_err();
    assert!(
        err.contains("--netns needs --private-mounts or --mount-ns"),
        "{err}"
    );
    for host in tb.hosts.iter_mut() {
        host.options.private_mounts = true;
        host.start_executor().unwrap();
        assert!(host.namespaces().is_empty(), "{:?}", host.namespaces());
        // The same namespace name on both hosts, as two KVM hosts would have.
        host.exec(&["ip", "netns", "add", &name]).unwrap();
        assert_eq!(host.namespaces(), vec![name.clone()]);
    }
    let root_list = run(&["ip", "netns", "list"]).unwrap();
    assert!(
        !root_list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name.as_str())),
        "{name} leaked into the root mount namespace"
    );
    // The executor really lives in its host's network namespace: its /sys
    // shows that namespace's devices.
    let devices: Vec<String> = std::fs::read_dir(tb.hosts[0].inside("/sys/class/net"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    assert!(devices.contains(&"breth1-100".to_string()), "{devices:?}");
    assert!(!devices.contains(&"eth0".to_string()), "{devices:?}");
}

#[test]
fn key_rotation_by_replacing_the_file_needs_no_restart() {
    if skip_unless_root("key_rotation_by_replacing_the_file_needs_no_restart") {
        return;
    }
    let mut tb = Testbed::new("nbd", TopologyOptions::default());
    let host = tb.host(0);
    host.start_executor().unwrap();
    let pid = host.executor_pid();
    let old = host.client();
    assert_eq!(old.get("/v1/health").unwrap().status, 200);

    host.rotate_key(b"rotated-key-fedcba9876543210-2").unwrap();
    let new = host.client();
    assert_unauthorized(old.get("/v1/health"), "signature does not match");
    assert_eq!(new.get("/v1/health").unwrap().status, 200);
    assert_eq!(
        host.executor_pid(),
        pid,
        "rotation must not restart the executor"
    );

    // SIGHUP re-reads the key and keeps serving.
    let pid_num = pid.unwrap() as libc::pid_t;
    // SAFETY: signal to our own child by PID.
    unsafe { libc::kill(pid_num, libc::SIGHUP) };
    let after_hup = eventually(std::time::Duration::from_secs(5), || {
        host.log().contains("SIGHUP").then_some(())
    });
    assert!(after_hup.is_some(), "{}", host.log());
    assert_eq!(new.get("/v1/health").unwrap().status, 200);
    assert_eq!(host.executor_pid(), pid);

    // A replacement key file readable by others is not used: fail closed.
    let loose = host.dir.path().join("loose.hmac");
    std::fs::write(&loose, b"loose-key-0123456789abcdef").unwrap();
    std::fs::rename(&loose, &host.key_file).unwrap();
    let r = host
        .client()
        .with_key(b"loose-key-0123456789abcdef")
        .get("/v1/health")
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.message().contains("executor key is unavailable"),
        "{}",
        r.body
    );
    assert!(
        host.log().contains("too open"),
        "log should explain the refused key file"
    );

    // And an executor does not start with such a file.
    host.kill9();
    let err = host.start_executor().unwrap_err();
    assert!(err.contains("too open"), "{err}");
}

#[test]
fn insecure_http_is_loopback_only_and_still_signed() {
    if skip_unless_root("insecure_http_is_loopback_only_and_still_signed") {
        return;
    }
    let mut tb = Testbed::new("nbd", TopologyOptions::default());
    let host = tb.host(0);
    host.options.tls = false;
    host.options.listen = Some(format!("0.0.0.0:{EXECUTOR_PORT}"));
    host.start_executor().unwrap();
    let client = host.client();
    assert_eq!(client.get("/v1/health").unwrap().status, 200);
    assert_unauthorized(
        client.send(raw("GET", "/v1/health", vec![], b"")),
        "request is not signed",
    );
    // Give the host namespace a non-loopback address: the port is not open there.
    host.netns
        .ip(&["addr", "add", "192.0.2.50/24", "dev", "eth1"])
        .unwrap();
    let err = tcp_probe(
        &host.ns_path(),
        format!("192.0.2.50:{EXECUTOR_PORT}").parse().unwrap(),
    )
    .unwrap_err();
    assert_eq!(err, ProbeError::Refused);
    assert!(host.log().contains("127.0.0.1"), "{}", host.log());
}

/// Values that must never reach a program's argument vector.
fn hostile_values() -> Vec<String> {
    vec![
        "42; reboot".to_string(),
        "$(id)".to_string(),
        "`id`".to_string(),
        "10.1.1.1\nip link del eth1".to_string(),
        "10.1.1.1 && true".to_string(),
        "x".repeat(8192),
    ]
}

#[test]
fn injection_attempts_are_refused_and_change_nothing() {
    if skip_unless_root("injection_attempts_are_refused_and_change_nothing") {
        return;
    }
    let mut tb = Testbed::new("nbd", TopologyOptions::default());
    let host = tb.host(0);
    host.start_executor().unwrap();
    let client = host.client();

    // Command names are checked by the daemon itself.
    for (path_part, shown) in [
        ("implement-network;reboot", "implement-network;reboot"),
        ("%24%28id%29", "$(id)"),
        ("assign-ip%0Areboot", "assign-ip\\nreboot"),
        ("%FF%FE", "?"),
    ] {
        let r = client.command_raw(path_part, b"{}").unwrap();
        assert_eq!(r.status, 400, "{}", r.body);
        if shown == "?" {
            assert_eq!(r.message(), "command name is not valid UTF-8");
        } else {
            assert_eq!(r.message(), format!("unknown command '{shown}'"));
        }
    }
    // Oversized bodies are refused before anything else.
    let huge = vec![b' '; 17 * 1024 * 1024];
    let r = client.command_raw("implement-network", &huge).unwrap();
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.message(), "request body too large (limit 16777216 bytes)");

    // With a real engine, implement the network first so that the later
    // commands are refused for their bad field, not for a missing network.
    let ok = client.command(
        "implement-network",
        &envelope(host, net_details(), implement_payload()),
    );
    let engine_present = !ok.message().starts_with("unsupported");
    println!("engine present: {engine_present} ({})", ok.body);
    if engine_present {
        assert_eq!(ok.status, 200, "{}", ok.body);
    }
    let before = snapshot(host);

    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "implement-network",
            implement_payload(),
            vec!["network_id", "vlan", "gateway", "cidr", "extension_ip"],
        ),
        (
            "assign-ip",
            assign_payload(),
            vec![
                "public_ip",
                "public_vlan",
                "public_gateway",
                "public_cidr",
                "source_nat",
            ],
        ),
        (
            "add-port-forward",
            port_forward_payload(),
            vec![
                "public_ip",
                "public_port",
                "private_ip",
                "private_port",
                "protocol",
            ],
        ),
    ];
    let mut refused = 0;
    for (command, base, fields) in &cases {
        for field in fields {
            for value in hostile_values() {
                let mut payload = base.clone();
                payload[*field] = Value::String(value.clone());
                let r = client.command(command, &envelope(host, net_details(), payload));
                assert_eq!(
                    r.status,
                    400,
                    "{command} {field}={:?}: {}",
                    &value[..value.len().min(40)],
                    r.body
                );
                assert_eq!(r.json()["status"], "error");
                if engine_present {
                    assert!(
                        r.message().contains(&format!("'{field}'")),
                        "{command}: message should name {field}: {}",
                        r.message()
                    );
                }
                refused += 1;
            }
        }
    }
    // Static NAT addresses.
    let static_nat = merged(
        network_payload(NETWORK_ID, 100, "10.1.1.1", "10.1.1.0/24"),
        json!({"public_ip": "203.0.113.10", "private_ip": "10.1.1.10"}),
    );
    for field in ["public_ip", "private_ip"] {
        for value in hostile_values() {
            let mut payload = static_nat.clone();
            payload[field] = Value::String(value);
            let r = client.command("add-static-nat", &envelope(host, net_details(), payload));
            assert_eq!(r.status, 400, "add-static-nat {field}: {}", r.body);
            if engine_present {
                assert!(
                    r.message().contains(&format!("'{field}'")),
                    "{}",
                    r.message()
                );
            }
        }
    }
    // Every string inside a firewall rule document.
    let rule = json!({"id": "1", "type": "ingress", "protocol": "tcp", "portStart": "22",
        "portEnd": "22", "publicIp": "203.0.113.10", "sourceCidrs": ["0.0.0.0/0"]});
    for key in [
        "protocol",
        "portStart",
        "portEnd",
        "publicIp",
        "sourceCidrs",
        "cidr",
    ] {
        for value in hostile_values() {
            let mut r0 = rule.clone();
            let mut doc = json!({"default_egress_allow": true, "cidr": "10.1.1.0/24"});
            match key {
                "cidr" => doc["cidr"] = Value::String(value),
                "sourceCidrs" => r0["sourceCidrs"] = json!([value]),
                _ => r0[key] = Value::String(value),
            }
            doc["rules"] = json!([r0]);
            let payload = merged(
                network_payload(NETWORK_ID, 100, "10.1.1.1", "10.1.1.0/24"),
                json!({"fw_rules": doc}),
            );
            let r = client.command("apply-fw-rules", &envelope(host, net_details(), payload));
            assert_eq!(r.status, 400, "apply-fw-rules {key}: {}", r.body);
            if engine_present {
                let expected = if key == "cidr" {
                    "'fw_rules.cidr'".to_string()
                } else {
                    format!("fw_rules.rules[0].{key}")
                };
                assert!(
                    r.message().contains(&expected),
                    "{expected}: {}",
                    r.message()
                );
            }
        }
    }
    // Devices from the registration details are values too.
    for value in hostile_values() {
        let mut env = envelope(host, net_details(), implement_payload());
        env["physical-network-extension-details"]["guest.network.device"] = Value::String(value);
        let r = client.command("implement-network", &env);
        assert_eq!(r.status, 400, "{}", r.body);
        if engine_present {
            assert!(
                r.message().contains("guest.network.device"),
                "{}",
                r.message()
            );
        }
    }
    assert!(refused >= 90);
    assert_eq!(snapshot(host), before, "a refused command changed the host");
    // Nothing shell-like ever ran: the executor's log never shows the payloads executed.
    assert!(
        !host.log().contains("uid="),
        "output of an injected command appeared"
    );
}

/// The harness itself: packets flow on the guest segment across two hosts,
/// and the probes tell an answer, a refusal and a silent drop apart.
#[test]
fn harness_probes_tell_answers_refusals_and_drops_apart() {
    if skip_unless_root("harness_probes_tell_answers_refusals_and_drops_apart") {
        return;
    }
    let tb = Testbed::new(
        "nbd",
        TopologyOptions::default()
            .hosts(2)
            .vm("vm1", "10.1.1.10/24", None)
            .vm_on(1, "vm2", "10.1.1.20/24", None),
    );
    let vm1 = tb.vm("vm1").path();
    let vm2 = tb.vm("vm2");
    let _tcp = tcp_server(&vm2.path(), "10.1.1.20:80".parse().unwrap(), "vm2");
    let _udp = udp_server(&vm2.path(), "10.1.1.20:53".parse().unwrap(), "vm2");
    let _http = http_server(&vm2.path(), "10.1.1.20:8080".parse().unwrap(), "vm2");
    let _up = tcp_server(
        &tb.upstream.path(),
        format!("{UPSTREAM_ADDR}:7000").parse().unwrap(),
        "up",
    );

    let answer = tcp_probe(&vm1, "10.1.1.20:80".parse().unwrap()).unwrap();
    assert_eq!(name_of(&answer), "vm2");
    assert_eq!(peer_of(&answer), "10.1.1.10");
    assert_eq!(
        udp_probe(&vm1, "10.1.1.20:53".parse().unwrap()).unwrap(),
        "vm2 10.1.1.10"
    );
    let (status, body) = http_get(&vm1, "10.1.1.20:8080".parse().unwrap(), "/").unwrap();
    assert_eq!((status, body.trim()), (200, "vm2 10.1.1.10"));
    assert!(ping(&vm1, "10.1.1.20", 3));
    assert_eq!(
        tcp_probe(&vm1, "10.1.1.20:81".parse().unwrap()),
        Err(ProbeError::Refused)
    );

    // A silent drop times out.
    for argv in [
        vec!["nft", "add", "table", "inet", "probe"],
        vec![
            "nft",
            "add",
            "chain",
            "inet",
            "probe",
            "in",
            "{ type filter hook input priority 0 ; policy accept ; }",
        ],
        vec![
            "nft", "add", "rule", "inet", "probe", "in", "tcp", "dport", "80", "drop",
        ],
        vec![
            "nft",
            "add",
            "rule",
            "inet",
            "probe",
            "in",
            "icmp",
            "type",
            "echo-request",
            "drop",
        ],
    ] {
        vm2.ns.exec(&argv).unwrap();
    }
    assert_eq!(
        tcp_probe(&vm1, "10.1.1.20:80".parse().unwrap()),
        Err(ProbeError::Timeout)
    );
    assert!(!ping(&vm1, "10.1.1.20", 1));

    // The upstream server reports the peer too; the VMs have no route there.
    let up = tcp_probe(
        &tb.upstream.path(),
        format!("{UPSTREAM_ADDR}:7000").parse().unwrap(),
    )
    .unwrap();
    assert_eq!(up, format!("up {UPSTREAM_ADDR}"));
    assert!(matches!(
        tcp_probe(&vm1, format!("{UPSTREAM_ADDR}:7000").parse().unwrap()),
        Err(ProbeError::Unreachable(_)) | Err(ProbeError::Other(_))
    ));
}

/// The harness's restart helpers as the restart-safety tests use them:
/// `restart()` (kill -9) keeps the host's namespaces, `reboot()` loses them
/// and the executor's reconcile brings them back from the state directory.
#[test]
fn harness_restart_keeps_and_reboot_loses_router_namespaces() {
    if skip_unless_root("harness_restart_keeps_and_reboot_loses_router_namespaces") {
        return;
    }
    let mut tb = Testbed::new("nbd", TopologyOptions::default());
    let host = tb.host(0);
    host.start_executor().unwrap();
    let r = host.client().command(
        "implement-network",
        &envelope(host, net_details(), implement_payload()),
    );
    if r.message().starts_with("unsupported") {
        println!(
            "SKIP harness_restart_keeps_and_reboot_loses_router_namespaces: engine not merged"
        );
        return;
    }
    assert_eq!(r.status, 200, "{}", r.body);
    let ns = format!("cs-net-{NETWORK_ID}");
    assert_eq!(host.namespaces(), vec![ns.clone()]);
    let networks = host.client().networks();

    let pid = host.executor_pid();
    host.restart().unwrap();
    assert_ne!(host.executor_pid(), pid);
    assert_eq!(host.namespaces(), vec![ns.clone()]);
    assert_eq!(host.client().networks(), networks);
    let health = host.client().get("/v1/health").unwrap().json();
    assert_eq!(health["networks"], 1, "{health}");

    host.reboot().unwrap();
    assert_eq!(
        host.namespaces(),
        vec![ns.clone()],
        "reconcile should re-create {ns}"
    );
    assert!(host.router_ns(&ns).exists());
    // The re-created router answers on its guest address from inside.
    let addrs = host.exec(&["ip", "-n", &ns, "-o", "addr", "show"]).unwrap();
    assert!(addrs.contains("10.1.1.1/24"), "{addrs}");
}

/// The replay cache lives in memory: a request captured before a restart
/// must still be refused afterwards.
#[test]
fn replay_after_an_executor_restart_is_refused() {
    if skip_unless_root("replay_after_an_executor_restart_is_refused") {
        return;
    }
    let mut tb = Testbed::new("nbd", TopologyOptions::default());
    let host = tb.host(0);
    host.start_executor().unwrap();
    let client = host.client();
    let captured = raw(
        "GET",
        "/v1/networks",
        signature_headers(&host.key, "GET", "/v1/networks", now_secs(), b""),
        b"",
    );
    assert_eq!(client.send(captured.clone()).unwrap().status, 200);
    // Make sure the restart happens in a later second than the signature.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    host.restart().unwrap();
    assert_unauthorized(client.send(captured), "signed before the executor started");
    assert_eq!(client.get("/v1/networks").unwrap().status, 200);
}

/// Harness, daemon and engine together over signed HTTPS, the way the
/// bridge drives an executor: source NAT and a firewalled port forward seen
/// with real packets, then destroy leaves nothing, and the metrics count it.
#[test]
fn http_api_end_to_end_source_nat_port_forward_and_destroy() {
    if skip_unless_root("http_api_end_to_end_source_nat_port_forward_and_destroy") {
        return;
    }
    let mut tb = Testbed::new(
        "nbd",
        TopologyOptions::default().vm("vm1", "10.1.1.10/24", Some("10.1.1.1")),
    );
    let vm1 = tb.vm("vm1").path();
    let upstream = tb.upstream.path();
    let host = tb.host(0);
    host.start_executor().unwrap();
    let client = host.client();
    let send = |command: &str, payload: Value| {
        let r = client.command(command, &envelope(host, net_details(), payload));
        (r.status, r.body)
    };
    let (status, body) = send("implement-network", implement_payload());
    if body.contains("unsupported") {
        println!("SKIP http_api_end_to_end_source_nat_port_forward_and_destroy: engine not merged");
        return;
    }
    assert_eq!(status, 200, "{body}");
    let (status, body) = send("assign-ip", assign_payload());
    assert_eq!(status, 200, "{body}");

    let _up = tcp_server(
        &upstream,
        format!("{UPSTREAM_ADDR}:7000").parse().unwrap(),
        "up",
    );
    let seen = tcp_probe(&vm1, format!("{UPSTREAM_ADDR}:7000").parse().unwrap()).unwrap();
    assert_eq!(peer_of(&seen), "203.0.113.10", "{seen}");

    let _ssh = tcp_server(&vm1, "10.1.1.10:22".parse().unwrap(), "vm1");
    let (status, body) = send("add-port-forward", port_forward_payload());
    assert_eq!(status, 200, "{body}");
    let public: SocketAddr = "203.0.113.10:2222".parse().unwrap();
    // Closed until a firewall rule allows it.
    assert!(tcp_probe(&upstream, public).is_err());
    let rules = json!({"default_egress_allow": true, "cidr": "10.1.1.0/24", "rules": [
        {"id": "1", "type": "ingress", "protocol": "tcp", "portStart": "2222", "portEnd": "2222",
         "publicIp": "203.0.113.10", "sourceCidrs": ["203.0.113.0/24"]}
    ]});
    let fw = merged(
        network_payload(NETWORK_ID, 100, "10.1.1.1", "10.1.1.0/24"),
        json!({"fw_rules": rules}),
    );
    let (status, body) = send("apply-fw-rules", fw);
    assert_eq!(status, 200, "{body}");
    let answer = tcp_probe(&upstream, public).unwrap();
    assert_eq!(answer, format!("vm1 {PUBLIC_GATEWAY}"));

    let (status, body) = send("delete-port-forward", port_forward_payload());
    assert_eq!(status, 200, "{body}");
    assert!(tcp_probe(&upstream, public).is_err());

    let (status, body) = send(
        "destroy-network",
        network_payload(NETWORK_ID, 100, "10.1.1.1", "10.1.1.0/24"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(host.namespaces().is_empty(), "{:?}", host.namespaces());
    assert_eq!(client.networks(), json!({"networks": []}));

    let metrics = metrics_text(host);
    for command in [
        "implement-network",
        "assign-ip",
        "add-port-forward",
        "apply-fw-rules",
        "delete-port-forward",
        "destroy-network",
    ] {
        let line = format!(
            "netbridge_executor_commands_total{{command=\"{command}\",result=\"success\"}}"
        );
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
    assert!(
        metrics.contains(
            "netbridge_executor_command_duration_seconds_count{command=\"apply-fw-rules\"} 1\n"
        ),
        "{metrics}"
    );
}

/// The harness's DHCP probe against a plain dnsmasq: offer, router and DNS
/// options are decoded; nothing is leased to the probe's interface.
#[test]
fn harness_dhcp_probe_reads_an_offer() {
    if skip_unless_root("harness_dhcp_probe_reads_an_offer") {
        return;
    }
    let tb = Testbed::new(
        "nbd",
        TopologyOptions::default()
            .vm("srv", "10.1.1.1/24", None)
            .vm_dhcp("vm1", "02:00:00:00:00:99"),
    );
    let dir = tempfile::tempdir().unwrap();
    let leases = dir.path().join("leases").display().to_string();
    let pid_file = dir.path().join("pid").display().to_string();
    let vm1 = tb.vm("vm1");
    let host_opt = format!("--dhcp-host={},10.1.1.10,vm-one", vm1.mac());
    let leases_opt = format!("--dhcp-leasefile={leases}");
    let pid_opt = format!("--pid-file={pid_file}");
    let _dnsmasq = NsProcess::spawn(
        &tb.vm("srv").path(),
        &[
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--host-record=data-server,10.1.1.1",
            "--interface=eth0",
            "--bind-interfaces",
            "--dhcp-range=10.1.1.0,static,255.255.255.0,1h",
            &host_opt,
            "--dhcp-option=3,10.1.1.1",
            "--dhcp-option=6,10.1.1.1,192.0.2.53",
            "--domain=smoke.test",
            &leases_opt,
            &pid_opt,
            "--user=root",
        ],
    )
    .unwrap();
    let offer = eventually(std::time::Duration::from_secs(10), || {
        vm1.dhcp_discover().ok()
    })
    .expect("no DHCP offer");
    assert_eq!(offer.address.to_string(), "10.1.1.10");
    assert_eq!(
        offer.routers,
        vec!["10.1.1.1".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(offer.dns.len(), 2, "{offer:?}");
    assert_eq!(offer.domain.as_deref(), Some("smoke.test"));
    assert_eq!(
        offer.server.map(|a| a.to_string()).as_deref(),
        Some("10.1.1.1")
    );
}
