//! In-test fake executor: real TLS (rcgen certificate, tokio-rustls), real
//! HMAC verification (crate::protocol::signing), axum 0.8 routes, and fault
//! injection (unhealthy, hang, garbage, error status, dropped connections).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use netbridge_protocol::signing;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

/// A self-signed certificate and its key.
pub struct TestCert {
    pub der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

impl TestCert {
    pub fn generate() -> TestCert {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("rcgen");
        TestCert {
            der: ck.cert.der().clone(),
            key_der: ck.signing_key.serialize_der(),
        }
    }

    /// Upper-case, colon-separated SHA-256 of the DER certificate.
    pub fn fingerprint(&self) -> String {
        Sha256::digest(self.der.as_ref())
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Ok,
    /// Never answers (health included).
    Hang,
    /// HTTP 200 with a body that is not JSON.
    Garbage,
    /// HTTP 500 `{"status":"error","message":…}`.
    Error(String),
    /// HTTP 200 success with this `stdout` field.
    Stdout(String),
}

pub struct FakeState {
    pub key: Mutex<Vec<u8>>,
    pub mode: Mutex<Mode>,
    pub healthy: AtomicBool,
    /// Commands accepted (signature verified), in arrival order.
    pub received: Mutex<Vec<(String, Value)>>,
    /// Every command request that reached the server, dropped ones included.
    pub command_requests: AtomicUsize,
    pub health_checks: AtomicUsize,
    pub auth_failures: AtomicUsize,
    /// Connections to close right after reading the request (no answer).
    pub drop_next: AtomicUsize,
}

pub struct FakeExecutor {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn json_response(status: StatusCode, body: Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn handle(State(st): State<Arc<FakeState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 24)
        .await
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    let key = st.key.lock().unwrap().clone();
    if path.starts_with("/v1/commands/") {
        st.command_requests.fetch_add(1, Ordering::SeqCst);
    }
    if let Err(e) = signing::verify(
        &key,
        parts.method.as_str(),
        &path,
        now(),
        header(signing::HEADER_TIMESTAMP),
        header(signing::HEADER_NONCE),
        header(signing::HEADER_SIGNATURE),
        &body,
    ) {
        st.auth_failures.fetch_add(1, Ordering::SeqCst);
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"status": "error", "message": e.to_string()}),
        );
    }
    let mode = st.mode.lock().unwrap().clone();
    if mode == Mode::Hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if path == "/v1/health" {
        st.health_checks.fetch_add(1, Ordering::SeqCst);
        if !st.healthy.load(Ordering::SeqCst) {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "error", "message": "draining"}),
            );
        }
        return json_response(
            StatusCode::OK,
            json!({"host": "fake", "version": "test", "uptime_secs": 1, "networks": 0}),
        );
    }
    let Some(command) = path.strip_prefix("/v1/commands/") else {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({"status": "error", "message": "no such path"}),
        );
    };
    let envelope: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match mode {
        Mode::Garbage => Response::builder()
            .status(200)
            .body(Body::from("<html>internal oops</html>"))
            .unwrap(),
        Mode::Error(msg) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"status": "error", "message": msg}),
        ),
        Mode::Stdout(out) => {
            st.received
                .lock()
                .unwrap()
                .push((command.to_string(), envelope));
            json_response(
                StatusCode::OK,
                json!({"status": "success", "message": "", "stdout": out}),
            )
        }
        Mode::Ok | Mode::Hang => {
            st.received
                .lock()
                .unwrap()
                .push((command.to_string(), envelope));
            json_response(
                StatusCode::OK,
                json!({"status": "success", "message": format!("{command} done")}),
            )
        }
    }
}

impl FakeExecutor {
    pub fn start(cert: &TestCert, key: &str) -> FakeExecutor {
        FakeExecutor::start_on(cert, key, "127.0.0.1:0".parse().unwrap(), false)
    }

    /// Plain HTTP (for `executor.insecure=true`).
    pub fn start_plain(cert: &TestCert, key: &str) -> FakeExecutor {
        FakeExecutor::start_on(cert, key, "127.0.0.1:0".parse().unwrap(), true)
    }

    /// Restarts an executor on the address of a stopped one.
    pub fn start_at(cert: &TestCert, key: &str, addr: SocketAddr) -> FakeExecutor {
        FakeExecutor::start_on(cert, key, addr, false)
    }

    fn start_on(cert: &TestCert, key: &str, bind: SocketAddr, plain: bool) -> FakeExecutor {
        let state = Arc::new(FakeState {
            key: Mutex::new(key.as_bytes().to_vec()),
            mode: Mutex::new(Mode::Ok),
            healthy: AtomicBool::new(true),
            received: Mutex::new(Vec::new()),
            command_requests: AtomicUsize::new(0),
            health_checks: AtomicUsize::new(0),
            auth_failures: AtomicUsize::new(0),
            drop_next: AtomicUsize::new(0),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let std_listener = std::net::TcpListener::bind(bind).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let router = Router::new().fallback(handle).with_state(st.clone());
                loop {
                    let accepted = tokio::select! {
                        _ = &mut stop_rx => break,
                        a = listener.accept() => a,
                    };
                    let Ok((tcp, _)) = accepted else { continue };
                    // Without it, Nagle + delayed ACK add ~40 ms to handshakes.
                    let _ = tcp.set_nodelay(true);
                    let (acceptor, router, st) = (acceptor.clone(), router.clone(), st.clone());
                    tokio::spawn(async move {
                        if plain {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(
                                    TokioIo::new(tcp),
                                    TowerToHyperService::new(router),
                                )
                                .await;
                            return;
                        }
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let drop_it = st
                            .drop_next
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        if drop_it {
                            let mut buf = [0u8; 8192];
                            let _ = tls.read(&mut buf).await;
                            st.command_requests.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router))
                            .await;
                    });
                }
            });
            // Dropping the runtime closes every connection, as a dead host would.
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        FakeExecutor {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// As listed in `hosts`.
    pub fn name(&self) -> String {
        self.addr.to_string()
    }

    /// Stops listening and closes every connection (a dead host).
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    pub fn set_key(&self, key: &str) {
        *self.state.key.lock().unwrap() = key.as_bytes().to_vec();
    }

    pub fn received(&self) -> Vec<(String, Value)> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn received_commands(&self) -> Vec<String> {
        self.received().into_iter().map(|(c, _)| c).collect()
    }

    pub fn clear_received(&self) {
        self.state.received.lock().unwrap().clear();
    }

    pub fn command_requests(&self) -> usize {
        self.state.command_requests.load(Ordering::SeqCst)
    }
}

impl Drop for FakeExecutor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback address where nothing listens.
pub fn refused_host() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

/// Registration details for `hosts` with the shared key and pinned cert.
pub fn details(hosts: &[String], key: &str, fingerprint: &str) -> Value {
    json!({
        "hosts": hosts.join(","),
        "executor.key": key,
        "executor.fingerprint": fingerprint,
        "guest.network.device": "eth1",
        "physicalnetworkname": "pn1",
    })
}

/// A standard envelope.
pub fn envelope(details: &Value, device: Value, payload: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "physical-network-extension-details": details,
        "network-extension-details": device,
        "payload": payload,
    }))
    .unwrap()
}

/// `network-extension-details` naming `host` for network 42.
pub fn device(host: &str, namespace: &str) -> Value {
    json!({"host": host, "namespace": namespace})
}

/// A `custom-action` envelope (flat form) for network 42 on `host`.
pub fn custom_action(details: &Value, host: &str, action: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "network_id": "42",
        "action": action,
        "action-params": {"a": "1"},
        "physical-network-extension-details": details,
        "network-extension-details": device(host, "cs-net-42"),
    }))
    .unwrap()
}

/// The real `netbridge-executor` binary on 127.0.0.1 (TLS with a certificate
/// from its own `gen-cert`, signed requests, key file 0600) with a private
/// state directory. Requests it refuses at authentication touch nothing;
/// `ensure-network-device` needs no root. Stopped by PID on drop.
pub struct RealExecutor {
    child: std::process::Child,
    pub addr: SocketAddr,
    pub fingerprint: String,
    _dir: tempfile::TempDir,
}

impl RealExecutor {
    pub fn start(key: &str) -> RealExecutor {
        use std::io::BufRead;
        use std::os::unix::fs::OpenOptionsExt;
        use std::process::{Command, Stdio};
        let bin = crate::workspace_bin("netbridge-executor");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let gen = Command::new(&bin)
            .args([
                "gen-cert",
                "--name",
                "nbe-real",
                "--san",
                "127.0.0.1",
                "--out-dir",
            ])
            .arg(d)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        assert!(gen.status.success(), "gen-cert failed");
        let fingerprint = String::from_utf8_lossy(&gen.stdout).trim().to_string();
        let key_file = d.join("executor.key");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_file)
            .unwrap();
        std::io::Write::write_all(&mut f, key.as_bytes()).unwrap();
        drop(f);
        let mut child = Command::new(&bin)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--host-name",
                "nbe-real",
                "--log-level",
                "info",
            ])
            .arg("--state-dir")
            .arg(d.join("state"))
            .arg("--key-file")
            .arg(&key_file)
            .arg("--tls-cert")
            .arg(d.join("cert.pem"))
            .arg("--tls-key")
            .arg(d.join("key.pem"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The log names the bound address; the reader keeps draining it.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
        std::thread::spawn(move || {
            let mut seen = String::new();
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let bound = line
                    .split_once(" listening on ")
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .and_then(|a| a.parse().ok());
                match bound {
                    Some(addr) => {
                        let _ = tx.send(Ok(addr));
                    }
                    None if seen.len() < 4096 => {
                        seen.push_str(&line);
                        seen.push('\n');
                    }
                    None => {}
                }
            }
            // Exited (or closed its log) before listening: say why.
            let _ = tx.send(Err(seen));
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(addr)) => addr,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("netbridge-executor did not report its address: {other:?}");
            }
        };
        RealExecutor {
            child,
            addr,
            fingerprint,
            _dir: dir,
        }
    }

    /// As listed in `hosts`.
    pub fn name(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for RealExecutor {
    fn drop(&mut self) {
        // Exactly the process started above.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
