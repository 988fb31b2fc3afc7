//! HTTP routes: signed commands, health, networks and metrics.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::auth::{Authenticator, KeyStore, SignedParts};
use super::config::HttpLimits;
use super::conns::{Connection, Registry};
use super::metrics::Metrics;
use crate::{Engine, ExecError};
use netbridge_protocol::{sanitize_for_message, signing, Command};

/// Everything the handlers share.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub auth: Authenticator,
    /// Bearer token that also admits `GET /metrics` (Prometheus cannot sign).
    pub metrics_token: Option<KeyStore>,
    pub metrics: Metrics,
    /// The last command that failed applying or persisting, for `/v1/health`.
    pub last_error: LastError,
    pub started: Instant,
    pub host: String,
    pub body_limit: usize,
    /// Last known network count: health must answer promptly even while a
    /// long command holds a network's lock.
    pub network_count: std::sync::atomic::AtomicUsize,
    /// Timeouts and caps of the HTTPS server.
    pub http: HttpLimits,
    /// Open connections.
    pub connections: Arc<Registry>,
    /// Bytes of request bodies that may be held before their signature is
    /// checked, on connections not yet signed (`max_unverified_body_bytes`).
    pub unverified_bodies: tokio::sync::Semaphore,
}

impl AppState {
    /// The shared state; `http` sizes the connection table and the budget
    /// of unverified bodies.
    pub fn new(
        engine: Arc<Engine>,
        auth: Authenticator,
        host: String,
        body_limit: usize,
        http: HttpLimits,
    ) -> AppState {
        AppState {
            network_count: std::sync::atomic::AtomicUsize::new(engine.network_count()),
            engine,
            auth,
            metrics_token: None,
            metrics: Metrics::default(),
            last_error: LastError::default(),
            started: Instant::now(),
            host,
            body_limit,
            connections: Arc::new(Registry::new(
                http.max_connections,
                http.max_connections_per_peer,
            )),
            unverified_bodies: tokio::sync::Semaphore::new(http.max_unverified_body_bytes),
            http,
        }
    }
}

/// The connection a request arrived on (request extension).
#[derive(Clone)]
pub struct ConnRef(pub Arc<Connection>);

/// The last command that failed on the host: what `netbridge status` shows an
/// operator without reading the executor's log.
#[derive(Default)]
pub struct LastError(std::sync::Mutex<Option<Value>>);

impl LastError {
    pub fn record(&self, command: Command, message: &str) {
        let entry = json!({"command": command.as_str(), "message": message, "at": now_secs()});
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(entry);
    }

    pub fn get(&self) -> Value {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or(Value::Null)
    }
}

/// How long health and metrics wait for a fresh network count.
const COUNT_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The engine's network count, or the last known one when the engine is busy.
async fn network_count(st: &Arc<AppState>) -> usize {
    use std::sync::atomic::Ordering;
    // Fast path without a thread hop: health probes sit on the bridge's
    // per-command path (sticky placement).
    if let Some(n) = st.engine.try_network_count() {
        st.network_count.store(n, Ordering::Relaxed);
        return n;
    }
    let engine = st.engine.clone();
    let task = tokio::task::spawn_blocking(move || engine.network_count());
    match tokio::time::timeout(COUNT_WAIT, task).await {
        Ok(Ok(n)) => {
            st.network_count.store(n, Ordering::Relaxed);
            n
        }
        _ => st.network_count.load(Ordering::Relaxed),
    }
}

/// The executor's error document `{"status":"error","message":…}`.
pub fn error_body(message: &str) -> Value {
    json!({"status": "error", "message": message})
}

/// `{"status":"error","message":…}` with the given HTTP status.
pub fn error_response(status: u16, message: impl Into<String>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(error_body(&message.into()))).into_response()
}

/// An error answer after which the connection closes: the request body was
/// left unread, so the connection cannot carry another request.
fn closing_error(status: u16, message: impl Into<String>) -> Response {
    let mut response = error_response(status, message);
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/commands/{command}", post(command))
        .route("/v1/health", get(health))
        .route("/v1/networks", get(networks))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .with_state(state)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    // A non-ASCII value is present but unusable: it then fails as malformed.
    headers.get(name).map(|v| v.to_str().unwrap_or(""))
}

/// Why a request body was not read completely.
enum BodyError {
    TooLarge,
    /// Not complete within `body_read_timeout`.
    Timeout,
    /// Arrived slower than `body_min_rate`.
    TooSlow,
    Read(axum::Error),
}

/// Grace before `body_min_rate` applies (connection set-up, first bytes).
const BODY_RATE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads a body of at most `limit` bytes (never holding more), completely
/// within `body_read_timeout` and, after a grace, at `body_min_rate` bytes/s
/// on average. `expected` is the declared length; capacity grows with the
/// data, so a false length costs nothing.
async fn read_body(
    body: Body,
    limit: usize,
    expected: usize,
    limits: &HttpLimits,
) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt;
    let start = tokio::time::Instant::now();
    let whole = start + limits.body_read_timeout;
    let mut body = body;
    let mut data: Vec<u8> = Vec::new();
    loop {
        let mut deadline = whole;
        if limits.body_min_rate > 0 {
            let earned =
                std::time::Duration::from_secs_f64(data.len() as f64 / limits.body_min_rate as f64);
            deadline = deadline.min(start + BODY_RATE_GRACE + earned);
        }
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) if deadline == whole => return Err(BodyError::Timeout),
            Err(_) => return Err(BodyError::TooSlow),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        let needed = data.len() + chunk.len();
        if needed > limit {
            return Err(BodyError::TooLarge);
        }
        if needed > data.capacity() {
            // Grow by doubling, but never past the declared length or the limit.
            let target = needed
                .max(data.capacity() * 2)
                .min(expected.max(needed))
                .min(limit);
            data.reserve_exact(target - data.len());
        }
        data.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(data))
}

/// Checks the signature headers, reads the body (bounded) and checks the
/// whole signature before any handler runs. An unsigned, malformed or stale
/// request is refused before a byte of its body is read.
async fn authenticate(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    use axum::body::HttpBody;
    let peer = req
        .extensions()
        .get::<ConnectInfo<super::tls::PeerAddr>>()
        .map(|c| c.0 .0.to_string())
        .unwrap_or_else(|| "?".to_string());
    let conn = req.extensions().get::<ConnRef>().map(|c| c.0.clone());
    let (parts, body) = req.into_parts();
    let too_large = || format!("request body too large (limit {} bytes)", st.body_limit);
    let hint = body.size_hint();
    if hint.lower() > st.body_limit as u64 {
        st.metrics.rejected("body_too_large");
        return closing_error(413, too_large());
    }
    // The declared length (hyper knows it from Content-Length).
    let expected = hint
        .upper()
        .unwrap_or(st.body_limit as u64)
        .min(st.body_limit as u64) as usize;
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or_else(|| parts.uri.path());
    if let Some(verdict) = metrics_bearer(&st, &parts) {
        if let Err(reason) = verdict {
            st.metrics.auth_failure(reason);
            let text = match reason {
                "key_unavailable" => "the metrics token file is unusable",
                _ => "wrong bearer token for /metrics",
            };
            log::warn!("refused GET /metrics from {peer}: {text}");
            return error_response(401, format!("authentication failed: {text}"));
        }
        // A GET carries no body worth reading: it goes on unread.
        return next.run(Request::from_parts(parts, body)).await;
    }
    let mut signed = SignedParts {
        method: parts.method.as_str(),
        path,
        timestamp: header(&parts.headers, signing::HEADER_TIMESTAMP),
        nonce: header(&parts.headers, signing::HEADER_NONCE),
        signature: header(&parts.headers, signing::HEADER_SIGNATURE),
        body: &[],
    };
    let refuse = |e: super::auth::AuthError, body_unread: bool| {
        st.metrics.auth_failure(e.reason());
        log::warn!(
            "refused {} {} from {peer}: {e}",
            parts.method,
            sanitize_for_message(path)
        );
        let message = format!("authentication failed: {e}");
        if body_unread {
            closing_error(e.http_status(), message)
        } else {
            error_response(e.http_status(), message)
        }
    };
    if let Err(e) = st.auth.precheck(&signed, now_secs()) {
        return refuse(e, expected > 0);
    }
    // Headers that look signed prove nothing until the body's hash is
    // checked: bodies on connections that never carried a signed request
    // share one budget, so forged headers cannot make the executor hold
    // more than `max_unverified_body_bytes`.
    let trusted = conn.as_ref().is_some_and(|c| c.is_signed());
    let budget = if trusted || expected == 0 {
        None
    } else {
        let bytes = u32::try_from(expected).unwrap_or(u32::MAX);
        match st.unverified_bodies.try_acquire_many(bytes) {
            Ok(permit) => Some(permit),
            Err(_) => {
                st.metrics.rejected("unverified_bodies_busy");
                return closing_error(
                    503,
                    format!(
                        "executor busy: too many request bodies awaiting their signature check (max_unverified_body_bytes {}); retry",
                        st.http.max_unverified_body_bytes
                    ),
                );
            }
        }
    };
    let bytes = match read_body(body, st.body_limit, expected, &st.http).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            st.metrics.rejected("body_too_large");
            return closing_error(413, too_large());
        }
        Err(BodyError::Timeout) => {
            st.metrics.timeout("body");
            return closing_error(
                408,
                format!(
                    "request body not received within body_read_timeout ({} s)",
                    st.http.body_read_timeout.as_secs_f64()
                ),
            );
        }
        Err(BodyError::TooSlow) => {
            st.metrics.timeout("body_rate");
            return closing_error(
                408,
                format!(
                    "request body arrived slower than body_min_rate ({} bytes/s)",
                    st.http.body_min_rate
                ),
            );
        }
        Err(BodyError::Read(e)) => {
            st.metrics.rejected("body_unreadable");
            return closing_error(400, format!("could not read request body: {e}"));
        }
    };
    signed.body = &bytes;
    if let Err(e) = st.auth.check(&signed, now_secs()) {
        return refuse(e, false);
    }
    drop(budget);
    if let Some(conn) = &conn {
        st.connections.mark_signed(conn);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// `GET /metrics` with `Authorization: Bearer …` when a metrics token is
/// configured: `Some(Ok)` admits it, `Some(Err(reason))` refuses it, `None`
/// leaves the request to the signature check.
fn metrics_bearer(
    st: &AppState,
    parts: &axum::http::request::Parts,
) -> Option<Result<(), &'static str>> {
    use subtle::ConstantTimeEq;
    let store = st.metrics_token.as_ref()?;
    if parts.method != axum::http::Method::GET || parts.uri.path() != "/metrics" {
        return None;
    }
    let given = header(&parts.headers, axum::http::header::AUTHORIZATION.as_str())?;
    let Some(token) = given.strip_prefix("Bearer ") else {
        return Some(Err("bad_token"));
    };
    let Some(expected) = store.key() else {
        return Some(Err("key_unavailable"));
    };
    if bool::from(token.trim().as_bytes().ct_eq(&expected)) {
        Some(Ok(()))
    } else {
        Some(Err("bad_token"))
    }
}

async fn command(
    State(st): State<Arc<AppState>>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Bytes,
) -> Response {
    let Ok(Path(name)) = name else {
        st.metrics.rejected("unknown_command");
        return error_response(400, "command name is not valid UTF-8");
    };
    let command: Command = match name.parse() {
        Ok(c) => c,
        Err(e) => {
            st.metrics.rejected("unknown_command");
            return error_response(400, format!("{e}"));
        }
    };
    let engine = st.engine.clone();
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(move || engine.execute(command, &body)).await;
    let elapsed = started.elapsed();
    match result {
        Ok(Ok(output)) => {
            st.metrics.command(command.as_str(), true, elapsed);
            log::info!("{command}: success in {} ms", elapsed.as_millis());
            (StatusCode::OK, Json(success_body(command, output))).into_response()
        }
        Ok(Err(e)) => {
            st.metrics.command(command.as_str(), false, elapsed);
            if matches!(e, ExecError::Apply(_) | ExecError::State(_)) {
                st.metrics.apply_error(command.as_str());
                st.last_error.record(command, &e.to_string());
                log::error!("{command}: {e}");
            } else {
                log::info!("{command}: refused: {e}");
            }
            error_response(e.http_status(), e.to_string())
        }
        Err(join) => {
            st.metrics.command(command.as_str(), false, elapsed);
            st.metrics.apply_error(command.as_str());
            st.last_error
                .record(command, &format!("engine task failed: {join}"));
            log::error!("{command}: engine task failed: {join}");
            error_response(500, format!("internal error while running {command}"))
        }
    }
}

/// `{"status":"success","message":…}` plus the engine's output fields. The
/// engine may supply its own `message`; `status` is always ours.
pub fn success_body(command: Command, output: Value) -> Value {
    let mut body = Map::new();
    body.insert("status".into(), json!("success"));
    body.insert("message".into(), json!(format!("{command} succeeded")));
    match output {
        Value::Object(fields) => {
            for (k, v) in fields {
                if k != "status" {
                    body.insert(k, v);
                }
            }
        }
        Value::Null => {}
        other => {
            body.insert("output".into(), other);
        }
    }
    Value::Object(body)
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let count = network_count(&st).await;
    Json(json!({
        "host": st.host,
        "version": netbridge_protocol::build_id(),
        "uptime_secs": st.started.elapsed().as_secs(),
        "networks": count,
        "last_error": st.last_error.get(),
    }))
    .into_response()
}

async fn networks(State(st): State<Arc<AppState>>) -> Response {
    let engine = st.engine.clone();
    match tokio::task::spawn_blocking(move || engine.networks()).await {
        Ok(list) => Json(json!({"networks": list})).into_response(),
        Err(_) => error_response(500, "internal error while listing networks"),
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let count = network_count(&st).await;
    let mut text = st.metrics.render(
        count,
        st.started.elapsed().as_secs(),
        &netbridge_protocol::build_id(),
    );
    let (signed, unsigned) = st.connections.counts();
    st.metrics.render_connections(&mut text, signed, unsigned);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

async fn not_found(req: Request) -> Response {
    error_response(
        404,
        format!(
            "no such endpoint: {} {}",
            req.method(),
            sanitize_for_message(req.uri().path())
        ),
    )
}

async fn method_not_allowed(req: Request) -> Response {
    error_response(
        405,
        format!(
            "method {} not allowed on {}",
            req.method(),
            sanitize_for_message(req.uri().path())
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::applier::ApplierConfig;
    use crate::daemon::auth::KeyStore;
    use crate::EngineConfig;
    use std::os::unix::fs::PermissionsExt;
    use tower::ServiceExt;

    const KEY: &[u8] = b"unit-test-key-0123456789abcdef";
    const METRICS_TOKEN: &str = "unit-metrics-token-0123456789";

    /// A daemon whose engine sees an empty, private netns directory, so
    /// nothing on the machine is touched.
    fn app(dir: &std::path::Path) -> (Router, Arc<AppState>) {
        let key_file = dir.join("key");
        std::fs::write(&key_file, KEY).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let token_file = dir.join("metrics.token");
        std::fs::write(&token_file, METRICS_TOKEN).unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let netns_dir = dir.join("netns");
        std::fs::create_dir_all(&netns_dir).unwrap();
        let engine = Engine::open_with(
            EngineConfig {
                state_dir: dir.join("state"),
                guest_device: "eth1".into(),
                public_device: "eth1".into(),
            },
            ApplierConfig {
                netns_dir,
                ..ApplierConfig::default()
            },
        )
        .unwrap();
        let mut state = AppState::new(
            Arc::new(engine),
            Authenticator::new(KeyStore::open(&key_file).unwrap(), 0),
            "unit".into(),
            4096,
            HttpLimits {
                max_unverified_body_bytes: 8192,
                ..HttpLimits::default()
            },
        );
        state.metrics_token = Some(KeyStore::open(&token_file).unwrap());
        let state = Arc::new(state);
        (router(state.clone()), state)
    }

    fn signed(method: &str, path: &str, body: &[u8]) -> Request {
        let s = signing::sign(KEY, method, path, now_secs(), body);
        Request::builder()
            .method(method)
            .uri(path)
            .header(signing::HEADER_TIMESTAMP, s.timestamp.to_string())
            .header(signing::HEADER_NONCE, s.nonce)
            .header(signing::HEADER_SIGNATURE, s.signature)
            .body(Body::from(body.to_vec()))
            .unwrap()
    }

    async fn answer(router: &Router, req: Request) -> (u16, Value) {
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    #[tokio::test]
    async fn unsigned_requests_get_401_json_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (router, state) = app(dir.path());
        let req = Request::builder()
            .uri("/v1/health")
            .body(Body::empty())
            .unwrap();
        let (status, body) = answer(&router, req).await;
        assert_eq!(status, 401);
        assert_eq!(
            body,
            json!({"status": "error", "message": "authentication failed: request is not signed (missing header 'x-netbridge-timestamp')"})
        );
        assert_eq!(state.metrics.auth_failures_total(), 1);
    }

    #[tokio::test]
    async fn signed_health_networks_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let (router, _) = app(dir.path());
        let (status, body) = answer(&router, signed("GET", "/v1/health", b"")).await;
        assert_eq!(status, 200);
        assert_eq!(body["host"], "unit");
        assert_eq!(body["version"], netbridge_protocol::build_id());
        assert_eq!(body["networks"], 0);
        assert!(body["uptime_secs"].is_u64());
        assert_eq!(body["last_error"], Value::Null);
        let (status, body) = answer(&router, signed("GET", "/v1/networks", b"")).await;
        assert_eq!((status, body), (200, json!({"networks": []})));
        let (status, body) = answer(&router, signed("GET", "/metrics", b"")).await;
        assert_eq!(status, 200);
        assert!(body
            .as_str()
            .unwrap()
            .contains("netbridge_executor_networks 0\n"));
    }

    #[tokio::test]
    async fn metrics_token_admits_only_get_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let (router, state) = app(dir.path());
        let bearer = |method: &str, path: &str, token: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap()
        };
        let (status, body) = answer(&router, bearer("GET", "/metrics", METRICS_TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        assert!(body
            .as_str()
            .unwrap()
            .contains("netbridge_executor_networks 0\n"));
        // The token opens nothing else, and a wrong token is counted.
        let (status, _) = answer(&router, bearer("GET", "/v1/health", METRICS_TOKEN)).await;
        assert_eq!(status, 401);
        let (status, body) =
            answer(&router, bearer("GET", "/metrics", "wrong-token-0123456789")).await;
        assert_eq!(
            (status, body),
            (
                401,
                json!({"status": "error", "message": "authentication failed: wrong bearer token for /metrics"})
            )
        );
        let text = state.metrics.render(0, 0, "v");
        assert!(
            text.contains("netbridge_executor_auth_failures_total{reason=\"bad_token\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("netbridge_executor_auth_failures_total{reason=\"unsigned\"} 1\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn unknown_command_oversized_body_and_unknown_path() {
        let dir = tempfile::tempdir().unwrap();
        let (router, state) = app(dir.path());
        let (status, body) = answer(&router, signed("POST", "/v1/commands/rm%20-rf", b"{}")).await;
        assert_eq!(status, 400);
        assert_eq!(body["message"], "unknown command 'rm -rf'");
        let big = vec![b' '; 5000];
        let (status, body) = answer(&router, signed("POST", "/v1/commands/assign-ip", &big)).await;
        assert_eq!(status, 413);
        assert_eq!(body["message"], "request body too large (limit 4096 bytes)");
        let (status, body) = answer(&router, signed("GET", "/v2/x", b"")).await;
        assert_eq!(status, 404);
        assert_eq!(body["message"], "no such endpoint: GET /v2/x");
        // Bad input reaches the engine, which names the field; the metrics
        // count the command as an error.
        let (status, body) =
            answer(&router, signed("POST", "/v1/commands/assign-ip", b"[1]")).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["status"], "error");
        let text = state.metrics.render(0, 0, "v");
        assert!(
            text.contains(
                "netbridge_executor_commands_total{command=\"assign-ip\",result=\"error\"} 1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn success_body_merges_output_but_keeps_status() {
        let body = success_body(
            Command::EnsureNetworkDevice,
            json!({"host": "h1", "namespace": "cs-net-42", "status": "bogus"}),
        );
        assert_eq!(body["status"], "success");
        assert_eq!(body["host"], "h1");
        assert_eq!(body["namespace"], "cs-net-42");
        let body = success_body(Command::AssignIp, Value::Null);
        assert_eq!(
            body,
            json!({"status": "success", "message": "assign-ip succeeded"})
        );
    }
}
