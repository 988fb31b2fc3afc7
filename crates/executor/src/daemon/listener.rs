//! The accept loop and the life of one connection: admission to the
//! connection table, TLS handshake (bounded), the head gate, HTTP/1.1
//! through hyper, eviction and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::conns::{Admission, Connection, Phase};
use super::gate::{Gate, MAX_HEAD_BYTES};
use super::server::{self, AppState, ConnRef};
use super::tls::PeerAddr;

/// How long in-flight requests may take to finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Pause after a failed accept: the error repeats at once while it lasts
/// (e.g. no file descriptor left).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Warnings about a flood are logged at most this often (seconds).
const WARN_EVERY_SECS: u64 = 10;
/// hyper's read buffer: a head (at most [`MAX_HEAD_BYTES`]) and body chunks.
const HYPER_BUFFER: usize = 4 * MAX_HEAD_BYTES;

/// Serves `listener` until `shutdown` resolves, then lets in-flight requests
/// finish (at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tls.map(|config| TlsAcceptor::from(Arc::new(config)));
    let service = TowerToHyperService::new(server::router(state.clone()));
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => admit(tcp, peer, &state, &acceptor, &service, &stopped),
                Err(e) => accept_failed(e, &state).await,
            },
        }
    }
    drop(listener);
    let _ = stop.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, state.connections.wait_empty())
        .await
        .is_err()
    {
        log::warn!(
            "connections still open {} s after shutdown; closing them",
            SHUTDOWN_GRACE.as_secs()
        );
    }
}

type RouterService = TowerToHyperService<axum::Router>;

fn admit(
    tcp: TcpStream,
    peer: SocketAddr,
    state: &Arc<AppState>,
    acceptor: &Option<TlsAcceptor>,
    service: &RouterService,
    stopped: &watch::Receiver<bool>,
) {
    let admission = match state.connections.admit(peer.ip()) {
        Ok(a) => a,
        Err(refusal) => {
            state.metrics.connection_refused(refusal.reason());
            if state.connections.should_warn(WARN_EVERY_SECS) {
                log::warn!(
                    "refusing connections ({}), e.g. from {peer}",
                    refusal.reason().replace('_', " ")
                );
            }
            // Dropping the socket closes it at once.
            return;
        }
    };
    if admission.evicted_other {
        state.metrics.connection_evicted();
        if state.connections.should_warn(WARN_EVERY_SECS) {
            log::warn!(
                "connection table full ({} connections): closing unsigned connections to admit new ones",
                state.http.max_connections
            );
        }
    }
    // Small request/response exchanges stall ~40 ms on Nagle + delayed ACK.
    if let Err(e) = tcp.set_nodelay(true) {
        log::debug!("TCP_NODELAY on {peer}: {e}");
    }
    tokio::spawn(connection(
        tcp,
        peer,
        admission,
        state.clone(),
        acceptor.clone(),
        service.clone(),
        stopped.clone(),
    ));
}

async fn accept_failed(e: io::Error, state: &AppState) {
    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
        && state.connections.evict_one()
    {
        state.metrics.connection_evicted();
    }
    if state.connections.should_warn(WARN_EVERY_SECS) {
        log::warn!("accept failed: {e}");
    }
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// Resolves once shutdown was requested.
async fn shutdown_requested(stopped: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means shutdown.
    let _ = stopped.wait_for(|stop| *stop).await;
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    admission: Admission,
    state: Arc<AppState>,
    acceptor: Option<TlsAcceptor>,
    service: RouterService,
    mut stopped: watch::Receiver<bool>,
) {
    let conn = admission.conn.clone();
    tokio::select! {
        biased;
        () = conn.evicted() => {
            log::debug!("closed the connection from {peer} to admit another one");
        }
        () = run(tcp, peer, &conn, &state, acceptor, service, &mut stopped) => {}
    }
    drop(admission);
}

async fn run(
    tcp: TcpStream,
    peer: SocketAddr,
    conn: &Arc<Connection>,
    state: &Arc<AppState>,
    acceptor: Option<TlsAcceptor>,
    service: RouterService,
    stopped: &mut watch::Receiver<bool>,
) {
    let Some(acceptor) = acceptor else {
        let gate = Gate::new(tcp, conn.clone(), state.clone());
        return http(gate, peer, conn, service, stopped).await;
    };
    conn.set_phase(Phase::Handshake);
    let handshake = tokio::time::timeout(state.http.tls_handshake_timeout, acceptor.accept(tcp));
    let tls = tokio::select! {
        result = handshake => match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                log::debug!("TLS handshake with {peer} failed: {e}");
                return;
            }
            Err(_) => {
                state.metrics.timeout("handshake");
                log::debug!("TLS handshake with {peer} timed out");
                return;
            }
        },
        () = shutdown_requested(stopped) => return,
    };
    let gate = Gate::new(tls, conn.clone(), state.clone());
    http(gate, peer, conn, service, stopped).await
}

/// Clears the connection's busy mark when a request's handling ends.
struct Busy(Arc<Connection>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.set_busy(false);
    }
}

async fn http<S>(
    mut gate: Gate<S>,
    peer: SocketAddr,
    conn: &Arc<Connection>,
    service: RouterService,
    stopped: &mut watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    conn.set_phase(Phase::Idle);
    // hyper starts with the first complete head: until then a connection
    // costs its socket, its TLS state and this task, nothing more.
    let first = tokio::select! {
        first = gate.first_head() => first,
        () = shutdown_requested(stopped) => return,
    };
    match first {
        Ok(true) => {}
        Ok(false) => {
            // Sends the gate's refusal, if there is one.
            if let Err(e) = gate.shutdown().await {
                log::debug!("closing the connection from {peer}: {e}");
            }
            return;
        }
        Err(e) => {
            log::debug!("connection from {peer}: {e}");
            return;
        }
    }
    let request_conn = conn.clone();
    let handler = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
        req.extensions_mut().insert(ConnRef(request_conn.clone()));
        request_conn.set_busy(true);
        let busy = Busy(request_conn.clone());
        let answer = service.call(req);
        async move {
            let response = answer.await;
            drop(busy);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .max_buf_size(HYPER_BUFFER)
        // The gate owns every head deadline.
        .header_read_timeout(None);
    let served = builder.serve_connection(TokioIo::new(gate), handler);
    tokio::pin!(served);
    let result = tokio::select! {
        result = served.as_mut() => result,
        () = shutdown_requested(stopped) => {
            // Finish the request in progress; an idle connection closes now.
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        log::debug!("connection from {peer}: {e}");
    }
}
