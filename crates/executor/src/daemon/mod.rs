//! HTTPS daemon: server, authentication, TLS, metrics, configuration.
//!
//! [`run`] is the whole life of `netbridge-executor`: enter the test
//! namespaces (while still single-threaded), load configuration, key and
//! certificate, open the engine (which reconciles the host), then serve until
//! SIGTERM/SIGINT. SIGHUP re-reads the key file (it is also re-read on change).

pub mod auth;
pub mod config;
pub mod conns;
pub mod gate;
pub mod listener;
pub mod metrics;
pub mod nsenv;
pub mod server;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use config::{Config, FileConfig, HttpLimits, RunArgs, Transport};

use crate::{Engine, EngineConfig, ExecError};

/// Errors of the daemon layer (start-up and serving).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid configuration '{field}': {reason}")]
    Config { field: String, reason: String },
    #[error("key file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("namespace setup: {0}")]
    Namespace(String),
    #[error("{0}")]
    Io(String),
    #[error("engine: {0}")]
    Engine(#[from] ExecError),
}

/// How long in-flight commands may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = listener::SHUTDOWN_GRACE;
/// File descriptors kept for everything but client connections (state
/// files, namespaces, nftables sockets, daemons' pipes).
const FD_RESERVE: u64 = 256;

fn absolute(path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(&path))
            .unwrap_or(path)
    }
}

/// The machine's hostname, the default host identity.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // when the name fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Runs the daemon until a termination signal. Must be called before the
/// process starts any thread (namespace switches need a single thread).
pub fn run(args: RunArgs) -> Result<(), DaemonError> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let mut config = Config::resolve(&args, file)?;
    // Joining another mount namespace resets the working directory.
    config.state_dir = absolute(config.state_dir);
    config.key_file = absolute(config.key_file);
    config.metrics_token_file = config.metrics_token_file.map(absolute);
    if let Transport::Tls { cert, key } = &mut config.transport {
        *cert = absolute(cert.clone());
        *key = absolute(key.clone());
    }
    init_logging(config.log_level);

    nsenv::enter(
        args.netns.as_deref(),
        args.private_mounts,
        args.mount_ns.as_deref(),
    )?;

    let started_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let keys = auth::KeyStore::open(&config.key_file)?;
    let metrics_token = match &config.metrics_token_file {
        Some(path) => Some(auth::KeyStore::open(path)?),
        None => None,
    };
    let tls = match &config.transport {
        Transport::Tls { cert, key } => {
            let server = tls::server_config(cert, key)?;
            log::info!(
                "TLS certificate {} fingerprint {}",
                cert.display(),
                tls::fingerprint_file(cert)?
            );
            Some(server)
        }
        Transport::InsecureHttp => {
            log::warn!("serving plain HTTP on {} (tests only)", config.listen);
            None
        }
    };
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| DaemonError::Io(format!("state dir {}: {e}", config.state_dir.display())))?;
    let engine = Engine::open(EngineConfig {
        state_dir: config.state_dir.clone(),
        guest_device: config.guest_device.clone(),
        public_device: config.public_device.clone(),
    })?;
    engine.set_hooks_dir(Some(config.hooks_dir.clone()));
    let mut http = config.http.clone();
    let fd_limit = raise_fd_limit();
    if (http.max_connections as u64).saturating_add(FD_RESERVE) > fd_limit {
        let fitting = fd_limit.saturating_sub(FD_RESERVE).max(1) as usize;
        log::warn!(
            "max_connections {} does not fit the file descriptor limit {fd_limit}; using {fitting}",
            http.max_connections
        );
        http.max_connections = fitting;
        http.max_connections_per_peer = http.max_connections_per_peer.min(fitting);
    }
    let mut state = server::AppState::new(
        Arc::new(engine),
        auth::Authenticator::new(keys, started_secs),
        config.host_name.clone().unwrap_or_else(hostname),
        config.body_limit,
        http,
    );
    state.metrics_token = metrics_token;
    let state = Arc::new(state);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("executor")
        .build()
        .map_err(|e| DaemonError::Io(format!("tokio runtime: {e}")))?;
    let result = runtime.block_on(serve(config.listen, tls, state));
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    log::info!("stopped");
    result
}

/// Raises the soft limit of open files to the hard limit (every client
/// connection holds one) and returns the limit in force.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

fn init_logging(level: log::LevelFilter) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    // A second initialisation (tests) is harmless.
    let _ = builder.try_init();
}

async fn serve(
    listen: std::net::SocketAddr,
    tls: Option<rustls::ServerConfig>,
    state: Arc<server::AppState>,
) -> Result<(), DaemonError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| DaemonError::Io(format!("listen on {listen}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| DaemonError::Io(e.to_string()))?;
    spawn_sighup(state.clone());
    log::info!(
        "netbridge-executor {} listening on {local} ({})",
        netbridge_protocol::build_id(),
        if tls.is_some() { "https" } else { "http" }
    );
    listener::serve(listener, tls, state, shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => log::info!("SIGTERM: finishing in-flight requests"),
                _ = int.recv() => log::info!("SIGINT: finishing in-flight requests"),
            }
        }
        _ => {
            log::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

fn spawn_sighup(state: Arc<server::AppState>) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    log::info!("SIGHUP: re-reading the key file");
                    let _ = state.auth.keys().reload();
                }
            });
        }
        Err(e) => log::warn!("no SIGHUP handler: {e}"),
    }
}
