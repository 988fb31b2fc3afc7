//! The Grafana dashboard (`packaging/grafana-dashboard.json`) against a real
//! `netbridge-executor`: every query parses as PromQL, and every metric and
//! label it selects or groups by is one the executor's `/metrics` exports,
//! scraped the way the operator's guide tells Prometheus to (HTTPS with the
//! executor's certificate as CA, bearer token). Conversely every metric family
//! the executor exports is shown by some panel.

mod executor_process;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use executor_process::{ExecutorOptions, ExecutorProcess};
use hyper::body::Bytes;
use hyper::Method;
use netbridge_control::dispatch::{Client, HostEntry, SecretKey, Transport};
use promql_parser::parser::{self, Expr, LabelModifier};
use serde_json::{json, Value};

const DASHBOARD: &str = include_str!("../packaging/grafana-dashboard.json");
const KEY: &str = "dashboard-test-key-0123456789";
const TOKEN: &str = "dashboard-metrics-token-0123456789";
/// Labels Prometheus attaches to every scraped series.
const TARGET_LABELS: &[&str] = &["instance", "job"];
/// Values the test substitutes for Grafana's variables before parsing.
const GRAFANA_BUILTINS: &[(&str, &str)] = &[
    ("$__rate_interval", "1m"),
    ("$__interval", "30s"),
    ("$__range", "6h"),
];

/// Exported series: name → label names seen on its samples.
type Exported = BTreeMap<String, BTreeSet<String>>;

/// Parses the text exposition: `# TYPE` lines give the families, sample
/// lines the series names and their label names.
fn parse_exposition(text: &str) -> (BTreeMap<String, String>, Exported) {
    let mut families = BTreeMap::new();
    let mut series: Exported = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                panic!("malformed TYPE line: {line}");
            };
            families.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("malformed sample line: {line}"));
        let name = &line[..name_end];
        let labels = series.entry(name.to_string()).or_default();
        if line[name_end..].starts_with('{') {
            let close = line
                .rfind('}')
                .unwrap_or_else(|| panic!("unclosed labels: {line}"));
            // Label values here never hold `,` or `=` (command names, reasons,
            // versions, bucket bounds).
            for pair in line[name_end + 1..close].split(',') {
                let (label, _) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("malformed label in: {line}"));
                labels.insert(label.to_string());
            }
        }
    }
    (families, series)
}

/// The family a series belongs to (`…_bucket`/`_sum`/`_count` of a histogram).
fn family_of<'a>(series: &'a str, families: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = series.strip_suffix(suffix) {
            if families.get(base).is_some_and(|k| k == "histogram") {
                return base;
            }
        }
    }
    series
}

/// A vector selector found in a query, with the `by (…)` labels of every
/// aggregation above it.
#[derive(Debug)]
struct Selected {
    name: String,
    matcher_labels: Vec<String>,
}

/// Walks a PromQL tree: collects its selectors, and checks each aggregation's
/// `by`/`without` labels against the selectors below it.
fn walk(expr: &Expr, exported: &Exported, query: &str, out: &mut Vec<Selected>) {
    match expr {
        Expr::Aggregate(a) => {
            let mut below = Vec::new();
            walk(&a.expr, exported, query, &mut below);
            if let Some(p) = &a.param {
                walk(p, exported, query, out);
            }
            if let Some(modifier) = &a.modifier {
                let labels = match modifier {
                    LabelModifier::Include(l) | LabelModifier::Exclude(l) => &l.labels,
                };
                for label in labels {
                    let known = TARGET_LABELS.contains(&label.as_str())
                        || below
                            .iter()
                            .any(|s| exported.get(&s.name).is_some_and(|ls| ls.contains(label)));
                    assert!(
                        known,
                        "query groups by label '{label}' that no metric below it exports: {query}"
                    );
                }
            }
            out.extend(below);
        }
        Expr::Unary(u) => walk(&u.expr, exported, query, out),
        Expr::Binary(b) => {
            walk(&b.lhs, exported, query, out);
            walk(&b.rhs, exported, query, out);
        }
        Expr::Paren(p) => walk(&p.expr, exported, query, out),
        Expr::Subquery(s) => walk(&s.expr, exported, query, out),
        Expr::Call(c) => {
            for arg in &c.args.args {
                walk(arg, exported, query, out);
            }
        }
        Expr::VectorSelector(v) => out.push(selected(v)),
        Expr::MatrixSelector(m) => out.push(selected(&m.vs)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn selected(v: &promql_parser::parser::VectorSelector) -> Selected {
    let name = v.name.clone().unwrap_or_else(|| {
        v.matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__")
            .map(|m| m.value.clone())
            .unwrap_or_default()
    });
    Selected {
        name,
        matcher_labels: v
            .matchers
            .matchers
            .iter()
            .map(|m| m.name.clone())
            .filter(|n| n != "__name__")
            .collect(),
    }
}

/// Replaces the dashboard's variables and Grafana's built-ins by sample
/// values; a `$` left over is a variable nobody defines.
fn substitute(query: &str, variables: &[String]) -> String {
    let mut text = query.to_string();
    for (name, value) in GRAFANA_BUILTINS {
        text = text.replace(name, value);
    }
    for var in variables {
        text = text
            .replace(&format!("${{{var}}}"), ".*")
            .replace(&format!("${var}"), ".*");
    }
    assert!(
        !text.contains('$'),
        "query uses a variable the dashboard does not define: {query}"
    );
    text
}

/// Every PromQL query of the dashboard (panel targets, rows included).
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = stack.pop() {
        if let Some(children) = panel.get("panels").and_then(Value::as_array) {
            stack.extend(children);
        }
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel
            .get("targets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel '{title}' has a target without expr"));
            queries.push((title.clone(), expr.to_string()));
        }
    }
    queries
}

fn curl_metrics(exec: &ExecutorProcess, token: &str) -> (u16, String) {
    let url = format!("https://127.0.0.1:{}/metrics", exec.port);
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "30"])
        .arg("--cacert")
        .arg(exec.dir.join("cert.pem"))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--write-out", "\n%{http_code}", &url])
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs curl (apt-get install curl, as .ci/run does): {e}")
        });
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, code) = text.rsplit_once('\n').expect("curl status line");
    (code.trim().parse().expect("HTTP status"), body.to_string())
}

/// Drives one sample into every family: successful and refused commands, an
/// apply (persist) error, an authentication failure and a rejected request.
fn exercise(exec: &ExecutorProcess) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = Client::new();
    let host = HostEntry::parse(&exec.host(), 8443).expect("host");
    let pin =
        netbridge_control::dispatch::config::parse_fingerprint(&exec.fingerprint).expect("pin");
    let transport = Transport::Pinned(vec![pin]);
    let send = |key: &str, path: &str, body: Value| {
        let key = SecretKey::new(key.as_bytes());
        let request = client.request(
            &host,
            &transport,
            &key,
            Method::POST,
            path,
            Bytes::from(body.to_string()),
        );
        runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(60), request).await })
            .expect("executor answered in time")
            .expect("transport")
    };
    // Destroying a network this host never held succeeds and changes nothing.
    let destroy = json!({"physical-network-extension-details": {}, "network-extension-details": {},
        "payload": {"network_id": "4194301"}});
    let reply = send(KEY, "/v1/commands/destroy-network", destroy);
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    // Refused input: no cidr.
    let implement = json!({"physical-network-extension-details": {}, "network-extension-details": {},
        "payload": {"network_id": "43", "vlan": "vlan://100"}});
    let reply = send(KEY, "/v1/commands/implement-network", implement);
    assert_eq!(reply.status, 400, "{:?}", reply.body);
    // A public IP recorded on a network this host does not run is only
    // persisted; the state file's place is taken by a directory, so the
    // persist fails: an apply error that touches nothing on the machine.
    let assign = json!({"physical-network-extension-details": {}, "network-extension-details": {},
        "payload": {"network_id": "77", "vlan": "vlan://100", "cidr": "10.1.1.0/24", "gateway": "10.1.1.1",
            "public_ip": "203.0.113.10", "public_vlan": "vlan://200", "public_gateway": "203.0.113.1",
            "public_cidr": "203.0.113.0/24", "source_nat": "true"}});
    let reply = send(KEY, "/v1/commands/assign-ip", assign);
    assert_eq!(
        reply.status,
        500,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    // Wrong key: an authentication failure.
    let reply = send(
        "not-the-executor-key-0123456789",
        "/v1/commands/destroy-network",
        json!({}),
    );
    assert_eq!(reply.status, 401);
    // Unknown command: rejected before the engine.
    let reply = send(KEY, "/v1/commands/no-such-command", json!({}));
    assert_eq!(reply.status, 400);
    drop(client);

    // One unsigned connection per address: a second one is closed at
    // accept; the first, which never starts its TLS handshake, is closed
    // at the handshake deadline. Each close is seen as end of stream.
    use std::io::Read as _;
    let closed_by_executor = |stream: &mut std::net::TcpStream, what: &str| {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("read timeout");
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{what}: expected the executor to close it, got {other:?}"),
        }
    };
    let mut idle = std::net::TcpStream::connect(exec.host()).expect("connect");
    let mut second = std::net::TcpStream::connect(exec.host()).expect("connect");
    closed_by_executor(&mut second, "a second unsigned connection");
    closed_by_executor(&mut idle, "a connection without a handshake");
}

#[test]
fn every_dashboard_query_selects_metrics_the_executor_exports() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("state/networks/cs-net-77.json/blocked"))
        .expect("blocking directory");
    let exec = ExecutorProcess::start(
        dir.path(),
        ExecutorOptions {
            host_name: "nbdash",
            key: KEY,
            metrics_token: Some(TOKEN),
            // Small enough for the exercise to reach the connection limits.
            extra: [
                "--tls-handshake-timeout",
                "1",
                "--max-connections-per-peer",
                "1",
            ]
            .map(String::from)
            .to_vec(),
        },
    );
    exercise(&exec);

    let (status, _) = curl_metrics(&exec, "wrong-token-0123456789abcdef");
    assert_eq!(status, 401, "a wrong bearer token must be refused");
    let (status, text) = curl_metrics(&exec, TOKEN);
    assert_eq!(status, 200, "{text}\n{}", exec.log());
    let (families, exported) = parse_exposition(&text);
    assert!(
        exported
            .get("netbridge_executor_apply_errors_total")
            .is_some_and(|l| l.contains("command")),
        "the exercise must produce an apply error:\n{text}\n{}",
        exec.log()
    );

    let variables: Vec<String> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| v["name"].as_str().expect("variable name").to_string())
        .collect();
    let mut shown_families = BTreeSet::new();
    let mut check = |origin: &str, query: &str| {
        let expr = parser::parse(&substitute(query, &variables))
            .unwrap_or_else(|e| panic!("{origin}: query does not parse: {e}\n{query}"));
        let mut selected = Vec::new();
        walk(&expr, &exported, query, &mut selected);
        assert!(
            !selected.is_empty(),
            "{origin}: query selects nothing: {query}"
        );
        for s in selected {
            let labels = exported.get(&s.name).unwrap_or_else(|| {
                panic!(
                    "{origin}: '{}' is not exported by the executor (exported: {:?}): {query}",
                    s.name,
                    exported.keys().collect::<Vec<_>>()
                )
            });
            for label in &s.matcher_labels {
                assert!(
                    labels.contains(label) || TARGET_LABELS.contains(&label.as_str()),
                    "{origin}: '{}' has no label '{label}' (it has {labels:?}): {query}",
                    s.name
                );
            }
            shown_families.insert(family_of(&s.name, &families).to_string());
        }
    };
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 10, "dashboard has too few queries");
    for (title, query) in &queries {
        check(&format!("panel '{title}'"), query);
    }
    // Template variables: label_values(<selector>, <label>).
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .expect("variable query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query is not label_values(…): {query}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let label = label.trim();
        check(&format!("variable '{}'", var["name"]), selector);
        let name = selector.split('{').next().unwrap_or_default().trim();
        assert!(
            exported[name].contains(label) || TARGET_LABELS.contains(&label),
            "variable '{}': '{name}' has no label '{label}'",
            var["name"]
        );
    }
    let all_families: BTreeSet<String> = families.keys().cloned().collect();
    assert_eq!(
        shown_families, all_families,
        "every metric family the executor exports is on the dashboard, and only those"
    );

    // Grafana structure: unique panel ids, a grid position each, one
    // Prometheus data source variable that every panel uses.
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_u64(), "panel {id}: gridPos.{key}");
        }
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {id}");
        }
    }
    assert_eq!(dashboard["templating"]["list"][0]["type"], "datasource");
    assert_eq!(dashboard["templating"]["list"][0]["query"], "prometheus");
}
