//! `netbridge status`: for every extension and registration, every executor
//! host with reachability, the certificate it presents against the pinned
//! fingerprint, signed health, build (and skew against the bridge's),
//! networks held and errors. Read-only: nothing is sent but a signed
//! `GET /v1/health`, and that only to a host whose certificate matches the
//! pin.
//!
//! Probes run concurrently on the dispatcher's runtime (inside the dispatch
//! namespace, when there is one), each bounded by [`StatusOptions::timeout`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use hyper::Method;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::bridge::Bridge;
use crate::dispatch::{Client, DispatchError, ExecutorConfig, HostEntry, Transport};
use crate::registry::{ExtensionFilter, Include, RegistryError, ResourceType};

/// Errors that keep a status report from being made at all (a host that is
/// down is part of the report, not an error).
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot read the registry: {0}")]
    Registry(#[source] RegistryError),
    #[error("cannot probe executors: {0}")]
    Dispatch(#[source] DispatchError),
}

/// How to probe.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// Bound of each host's probe (TLS handshake plus signed health).
    pub timeout: Duration,
}

impl Default for StatusOptions {
    fn default() -> Self {
        StatusOptions {
            timeout: Duration::from_secs(5),
        }
    }
}

/// The whole view.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The bridge's build (`<version>+<git revision>`).
    pub bridge_version: String,
    /// True when no problem was found (build skew is a warning only).
    pub ok: bool,
    pub problems: usize,
    pub warnings: usize,
    pub extensions: Vec<ExtensionStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExtensionStatus {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub ext_type: String,
    pub state: String,
    pub registrations: Vec<RegistrationStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegistrationStatus {
    pub resource_type: String,
    pub resource_id: String,
    /// Networks and VPCs the registry binds to this registration.
    pub networks_bound: usize,
    /// A registration whose executor details are unusable.
    pub error: Option<String>,
    pub executors: Vec<ExecutorStatus>,
}

/// One executor host of a registration.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutorStatus {
    /// The `hosts` entry.
    pub host: String,
    /// `ok`, `unreachable`, `pin_mismatch`, `auth_refused` or `unhealthy`.
    pub state: &'static str,
    pub reachable: bool,
    /// SHA-256 of the certificate the host presented (hex, as `gen-cert`
    /// and `fingerprint` print it); `None` without TLS or connection.
    pub fingerprint: Option<String>,
    /// Whether that certificate is one of `executor.fingerprint`.
    pub pin_match: Option<bool>,
    /// The signed `GET /v1/health` answered 200.
    pub healthy: bool,
    /// The executor's own name (`host_name`).
    pub executor_host: Option<String>,
    pub version: Option<String>,
    /// The executor runs another build than the bridge.
    pub build_skew: Option<bool>,
    pub uptime_secs: Option<u64>,
    /// Networks the executor holds.
    pub networks: Option<u64>,
    /// What this check found wrong.
    pub error: Option<String>,
    /// The last command that failed on the executor (`command`, `message`,
    /// `at` in Unix seconds), as its health reports it.
    pub last_error: Option<Value>,
}

impl ExecutorStatus {
    fn new(host: &str) -> ExecutorStatus {
        ExecutorStatus {
            host: host.to_string(),
            state: "unreachable",
            reachable: false,
            fingerprint: None,
            pin_match: None,
            healthy: false,
            executor_host: None,
            version: None,
            build_skew: None,
            uptime_secs: None,
            networks: None,
            error: None,
            last_error: None,
        }
    }
}

/// Collects the report. Blocking: call from a plain thread.
pub fn collect(bridge: &Bridge, options: &StatusOptions) -> Result<StatusReport, StatusError> {
    let registry = bridge.api().registry();
    let (_, extensions) = registry
        .list_extensions(&ExtensionFilter::default(), Include::ALL, None)
        .map_err(StatusError::Registry)?;
    let bridge_version = netbridge_protocol::build_id();
    let mut report = StatusReport {
        bridge_version: bridge_version.clone(),
        ok: true,
        problems: 0,
        warnings: 0,
        extensions: Vec::new(),
    };
    // (extension index, registration index, host index) → what to probe.
    let mut probes = Vec::new();
    for ext in &extensions {
        let mut status = ExtensionStatus {
            id: ext.id.clone(),
            name: ext.name.clone(),
            ext_type: ext.ext_type.as_str().to_string(),
            state: ext.state.as_str().to_string(),
            registrations: Vec::new(),
        };
        for resource in &ext.resources {
            let mut reg = RegistrationStatus {
                resource_type: resource.resource_type.as_str().to_string(),
                resource_id: resource.id.clone(),
                networks_bound: 0,
                error: None,
                executors: Vec::new(),
            };
            if resource.resource_type == ResourceType::PhysicalNetwork {
                reg.networks_bound = registry
                    .count_bindings(&ext.name, &resource.id)
                    .map_err(StatusError::Registry)?;
                let config = registry
                    .registration_details_full(&ext.id, resource.resource_type, &resource.id)
                    .map_err(StatusError::Registry)
                    .map(|d| ExecutorConfig::from_details(&d.merged()))?;
                match config {
                    Ok(config) => {
                        for (i, host) in config.hosts.iter().enumerate() {
                            reg.executors.push(ExecutorStatus::new(&host.name));
                            probes.push((
                                status.registrations.len(),
                                report.extensions.len(),
                                i,
                                host.clone(),
                                config.clone(),
                            ));
                        }
                    }
                    Err(e) => reg.error = Some(e.to_string()),
                }
            }
            status.registrations.push(reg);
        }
        report.extensions.push(status);
    }

    let client = bridge.dispatcher().client().clone();
    let timeout = options.timeout;
    let version = bridge_version.clone();
    let jobs: Vec<_> = probes
        .iter()
        .map(|(_, _, _, host, config)| (host.clone(), config.clone()))
        .collect();
    let results = bridge
        .dispatcher()
        .run_on_runtime(async move {
            let mut set = tokio::task::JoinSet::new();
            for (i, (host, config)) in jobs.into_iter().enumerate() {
                let (client, version) = (client.clone(), version.clone());
                set.spawn(
                    async move { (i, probe(&client, &host, &config, timeout, &version).await) },
                );
            }
            let mut out = BTreeMap::new();
            while let Some(joined) = set.join_next().await {
                if let Ok((i, status)) = joined {
                    out.insert(i, status);
                }
            }
            out
        })
        .map_err(StatusError::Dispatch)?;
    for (i, (reg_index, ext_index, host_index, host, _)) in probes.iter().enumerate() {
        let status = results.get(&i).cloned().unwrap_or_else(|| {
            let mut s = ExecutorStatus::new(&host.name);
            s.error = Some("the probe did not finish".into());
            s
        });
        report.extensions[*ext_index].registrations[*reg_index].executors[*host_index] = status;
    }
    for reg in report
        .extensions
        .iter()
        .flat_map(|e| e.registrations.iter())
    {
        if reg.error.is_some() {
            report.problems += 1;
        }
        for exec in &reg.executors {
            if exec.state != "ok" {
                report.problems += 1;
            } else if exec.build_skew == Some(true) {
                report.warnings += 1;
            }
        }
    }
    report.ok = report.problems == 0;
    Ok(report)
}

/// Probes one host: the certificate it presents, then (only when it matches
/// the pin) the signed health.
async fn probe(
    client: &Client,
    host: &HostEntry,
    config: &ExecutorConfig,
    timeout: Duration,
    bridge_version: &str,
) -> ExecutorStatus {
    let mut status = ExecutorStatus::new(&host.name);
    if let Transport::Pinned(pins) = &config.transport {
        match tokio::time::timeout(timeout, presented_certificate(host)).await {
            Err(_) => {
                status.error = Some(format!(
                    "no TLS handshake within {} ms",
                    timeout.as_millis()
                ));
                return status;
            }
            Ok(Err(e)) => {
                status.error = Some(e);
                return status;
            }
            Ok(Ok(digest)) => {
                status.reachable = true;
                status.fingerprint = Some(hex::encode(digest));
                let matches = pins.contains(&digest);
                status.pin_match = Some(matches);
                if !matches {
                    status.state = "pin_mismatch";
                    status.error = Some(
                        "the executor's certificate does not match 'executor.fingerprint'".into(),
                    );
                    return status;
                }
            }
        }
    }
    let request = client.request(
        host,
        &config.transport,
        &config.key,
        Method::GET,
        "/v1/health",
        Bytes::new(),
    );
    let reply = match tokio::time::timeout(timeout, request).await {
        Err(_) => {
            status.state = if status.reachable {
                "unhealthy"
            } else {
                "unreachable"
            };
            status.error = Some(format!(
                "no health answer within {} ms",
                timeout.as_millis()
            ));
            return status;
        }
        Ok(Err(e)) => {
            status.error = Some(e.to_string());
            return status;
        }
        Ok(Ok(reply)) => reply,
    };
    status.reachable = true;
    let body = serde_json::from_slice::<Value>(&reply.body).ok();
    let message = body
        .as_ref()
        .and_then(|b| b.get("message"))
        .and_then(Value::as_str)
        .map(crate::protocol::sanitize_for_message);
    match reply.status {
        200 => {}
        401 => {
            status.state = "auth_refused";
            status.error = Some(format!(
                "the executor refused the signed request (is 'executor.key' the executor's key?): {}",
                message.unwrap_or_default()
            ));
            return status;
        }
        code => {
            status.state = "unhealthy";
            status.error = Some(format!(
                "health answered HTTP {code}: {}",
                message.unwrap_or_default()
            ));
            return status;
        }
    }
    let Some(Value::Object(health)) = body else {
        status.state = "unhealthy";
        status.error = Some("health answer is not a JSON object".into());
        return status;
    };
    status.healthy = true;
    status.state = "ok";
    status.executor_host = health
        .get("host")
        .and_then(Value::as_str)
        .map(str::to_string);
    status.version = health
        .get("version")
        .and_then(Value::as_str)
        .map(str::to_string);
    status.build_skew = status.version.as_deref().map(|v| v != bridge_version);
    status.uptime_secs = health.get("uptime_secs").and_then(Value::as_u64);
    status.networks = health.get("networks").and_then(Value::as_u64);
    status.last_error = health.get("last_error").filter(|v| !v.is_null()).cloned();
    status
}

/// Accepts any certificate but still checks that the peer holds its key: the
/// handshake only looks at what the host presents; nothing is sent over it.
#[derive(Debug)]
struct PresentedCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PresentedCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// SHA-256 of the leaf certificate `host` presents in a TLS handshake.
async fn presented_certificate(host: &HostEntry) -> Result<[u8; 32], String> {
    let target = if host.addr.contains(':') {
        format!("[{}]:{}", host.addr, host.port)
    } else {
        format!("{}:{}", host.addr, host.port)
    };
    let addrs: Vec<SocketAddr> = match host.addr.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, host.port)],
        Err(_) => tokio::net::lookup_host((host.addr.as_str(), host.port))
            .await
            .map_err(|e| format!("cannot resolve {target}: {e}"))?
            .collect(),
    };
    let mut last = format!("no address for {target}");
    let mut tcp = None;
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect: {target}: {e}"),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PresentedCertificate {
        algorithms: provider.signature_verification_algorithms,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let name = match host.addr.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.addr.clone())
            .map_err(|e| format!("TLS handshake failed: {target}: {e}"))?,
    };
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {target}: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| format!("TLS handshake failed: {target}: no certificate presented"))?;
    Ok(Sha256::digest(leaf.as_ref()).into())
}

/// The report as an aligned table, one row per executor, with indented
/// lines for errors, then a summary line.
pub fn render_table(report: &StatusReport) -> String {
    let header = [
        "EXTENSION",
        "RESOURCE",
        "EXECUTOR",
        "STATE",
        "PIN",
        "BUILD",
        "NETWORKS",
        "UPTIME",
    ];
    // Each row: cells, then the lines printed under it.
    let mut rows: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    let dash = || "-".to_string();
    for ext in &report.extensions {
        if ext.registrations.is_empty() {
            rows.push((
                vec![
                    ext.name.clone(),
                    "(not registered)".into(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                ],
                Vec::new(),
            ));
        }
        for reg in &ext.registrations {
            let resource = format!("{} {}", reg.resource_type, reg.resource_id);
            if let Some(error) = &reg.error {
                rows.push((
                    vec![
                        ext.name.clone(),
                        resource.clone(),
                        dash(),
                        "config_error".into(),
                        dash(),
                        dash(),
                        reg.networks_bound.to_string(),
                        dash(),
                    ],
                    vec![format!("error: {error}")],
                ));
                continue;
            }
            if reg.executors.is_empty() {
                rows.push((
                    vec![
                        ext.name.clone(),
                        resource.clone(),
                        dash(),
                        dash(),
                        dash(),
                        dash(),
                        dash(),
                        dash(),
                    ],
                    Vec::new(),
                ));
            }
            for exec in &reg.executors {
                let pin = match exec.pin_match {
                    Some(true) => "match",
                    Some(false) => "MISMATCH",
                    None => "-",
                };
                let build = match (&exec.version, exec.build_skew) {
                    (Some(v), Some(true)) => format!("{v} (skew)"),
                    (Some(v), _) => v.clone(),
                    (None, _) => dash(),
                };
                let networks = match exec.networks {
                    Some(n) => format!("{n} ({} bound)", reg.networks_bound),
                    None => format!("- ({} bound)", reg.networks_bound),
                };
                let mut notes = Vec::new();
                if let Some(error) = &exec.error {
                    notes.push(format!("error: {error}"));
                }
                if exec.pin_match == Some(false) {
                    if let Some(fp) = &exec.fingerprint {
                        notes.push(format!("presented certificate: {fp}"));
                    }
                }
                if let Some(last) = &exec.last_error {
                    notes.push(format!(
                        "last failed command: {} ({} s ago): {}",
                        last.get("command").and_then(Value::as_str).unwrap_or("?"),
                        last.get("at")
                            .and_then(Value::as_u64)
                            .map(|at| unix_now().saturating_sub(at).to_string())
                            .unwrap_or_else(|| "?".into()),
                        last.get("message").and_then(Value::as_str).unwrap_or("")
                    ));
                }
                rows.push((
                    vec![
                        ext.name.clone(),
                        resource.clone(),
                        exec.host.clone(),
                        exec.state.to_string(),
                        pin.to_string(),
                        build,
                        networks,
                        exec.uptime_secs.map(human_duration).unwrap_or_else(dash),
                    ],
                    notes,
                ));
            }
        }
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for (cells, _) in &rows {
        for (w, cell) in widths.iter_mut().zip(cells) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        text.trim_end().to_string()
    };
    let mut out = format!("bridge {}\n", report.bridge_version);
    if rows.is_empty() {
        out.push_str("no extensions\n");
    } else {
        out.push_str(&line(&header.map(str::to_string)));
        out.push('\n');
        for (cells, notes) in &rows {
            out.push_str(&line(cells));
            out.push('\n');
            for note in notes {
                out.push_str("    ");
                out.push_str(note);
                out.push('\n');
            }
        }
    }
    let executors: usize = report
        .extensions
        .iter()
        .flat_map(|e| &e.registrations)
        .map(|r| r.executors.len())
        .sum();
    out.push_str(&format!(
        "{}: {executors} executor(s), {} problem(s), {} warning(s)\n",
        if report.ok { "OK" } else { "PROBLEMS" },
        report.problems,
        report.warnings
    ));
    out
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `45s`, `12m`, `5h3m`, `2d4h`.
fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executor(host: &str, state: &'static str) -> ExecutorStatus {
        ExecutorStatus {
            state,
            ..ExecutorStatus::new(host)
        }
    }

    #[test]
    fn table_shows_every_executor_and_its_problems() {
        let mut good = executor("192.0.2.11:8443", "ok");
        good.pin_match = Some(true);
        good.healthy = true;
        good.version = Some("0.1.0+aaaa".into());
        good.build_skew = Some(true);
        good.networks = Some(3);
        good.uptime_secs = Some(3 * 86_400 + 7200);
        let mut bad = executor("192.0.2.12:8443", "pin_mismatch");
        bad.reachable = true;
        bad.pin_match = Some(false);
        bad.fingerprint = Some("AB:CD".into());
        bad.error = Some("the executor's certificate does not match 'executor.fingerprint'".into());
        let report = StatusReport {
            bridge_version: "0.1.0+bbbb".into(),
            ok: false,
            problems: 1,
            warnings: 1,
            extensions: vec![ExtensionStatus {
                id: "e1".into(),
                name: "ovs-ext".into(),
                ext_type: "NetworkOrchestrator".into(),
                state: "Enabled".into(),
                registrations: vec![RegistrationStatus {
                    resource_type: "PhysicalNetwork".into(),
                    resource_id: "pn1".into(),
                    networks_bound: 2,
                    error: None,
                    executors: vec![good, bad],
                }],
            }],
        };
        let table = render_table(&report);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "bridge 0.1.0+bbbb");
        assert!(lines[1].starts_with("EXTENSION  RESOURCE "), "{table}");
        assert!(
            lines[2].contains("192.0.2.11:8443  ok ")
                && lines[2].contains("match")
                && lines[2].contains("0.1.0+aaaa (skew)")
                && lines[2].contains("3 (2 bound)")
                && lines[2].ends_with("3d2h"),
            "{table}"
        );
        assert!(
            lines[3].contains("pin_mismatch") && lines[3].contains("MISMATCH"),
            "{table}"
        );
        assert_eq!(
            lines[4],
            "    error: the executor's certificate does not match 'executor.fingerprint'"
        );
        assert_eq!(lines[5], "    presented certificate: AB:CD");
        assert_eq!(
            lines[6],
            "PROBLEMS: 2 executor(s), 1 problem(s), 1 warning(s)"
        );
    }
}
