//! The signed HTTPS client to executors, on hyper-util's pooled client
//! (`hyper_util::client::legacy::Client`: HTTP/1.1 keep-alive, idle
//! expiry, requests retried on a fresh connection when a pooled one turns
//! out closed before the request went out) with this module's connector:
//!
//! - the TCP socket is opened inside the management network namespace when
//!   the bridge has one (`dispatchNetns`, see [`super::netns`]), whichever
//!   thread asks for the connection;
//! - TLS is pinned to the executor certificate's SHA-256 (no CA validation,
//!   handshake signatures still verified with the ring provider).
//!
//! Every request is signed per [`netbridge_protocol::signing`]. One pool per
//! pinned certificate set (and one for plain loopback HTTP in tests), so a
//! connection checked against one pin is never reused under another.
//!
//! reqwest was not used: its connector opens sockets in the calling
//! thread's namespace and has no hook to open them elsewhere.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client as PooledClient;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use super::config::{HostEntry, SecretKey, Transport};
use super::netns::Netns;
use netbridge_protocol::signing;

/// Largest executor answer read (an answer is a small JSON document).
const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// Idle connections older than this are not reused: the executor may have
/// closed them, and a request racing that close has an unknown outcome.
const MAX_IDLE: Duration = Duration::from_secs(20);
const MAX_IDLE_PER_HOST: usize = 32;

/// A transport-level failure (no HTTP answer was obtained).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The connection could not be made: nothing reached the executor.
    Connect(String),
    /// The executor's certificate does not match `executor.fingerprint`.
    PinMismatch,
    /// TLS handshake failed for another reason: nothing reached the executor.
    Tls(String),
    /// The exchange failed after the request may have been sent.
    Io(String),
}

impl TransportError {
    /// True when the request certainly never reached the executor.
    pub fn not_sent(&self) -> bool {
        matches!(self, TransportError::Connect(_) | TransportError::Tls(_))
    }
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Connect(m) => write!(f, "cannot connect: {m}"),
            TransportError::PinMismatch => {
                f.write_str("the executor's certificate does not match 'executor.fingerprint'")
            }
            TransportError::Tls(m) => write!(f, "TLS handshake failed: {m}"),
            TransportError::Io(m) => write!(f, "connection failed: {m}"),
        }
    }
}

/// The connector's own failures travel through the pooled client as this.
impl std::error::Error for TransportError {}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

/// Accepts exactly one certificate, by the SHA-256 of its DER encoding, and
/// still checks that the peer holds its key (handshake signatures).
#[derive(Debug)]
struct PinnedVerifier {
    fingerprints: Vec<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if self.fingerprints.contains(&digest) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn is_pin_mismatch(err: &io::Error) -> bool {
    matches!(
        err.get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure
        ))
    )
}

/// Address a host entry connects to, as a `host:port` for the Host header.
fn authority(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// A connection to an executor: TLS, or plain TCP for loopback tests.
enum ExecutorStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for ExecutorStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for ExecutorStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ExecutorStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ExecutorStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ExecutorStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ExecutorStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ExecutorStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ExecutorStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ExecutorStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ExecutorStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ExecutorStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ExecutorStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ExecutorStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ExecutorStream::Plain(s) => s.is_write_vectored(),
            ExecutorStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Opens executor connections for the pooled client: TCP (inside the
/// management namespace when there is one), then the pinned TLS handshake.
#[derive(Clone)]
struct ExecutorConnector {
    /// `None`: plain HTTP (insecure loopback transport).
    tls: Option<Arc<ClientConfig>>,
    netns: Option<Arc<Netns>>,
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<ExecutorStream>, TransportError>> + Send>>;

impl tower_service::Service<Uri> for ExecutorConnector {
    type Response = TokioIo<ExecutorStream>;
    type Error = TransportError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await.map(TokioIo::new) })
    }
}

impl ExecutorConnector {
    async fn connect(self, uri: Uri) -> Result<ExecutorStream, TransportError> {
        // `Uri::host` keeps the brackets of an IPv6 literal.
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let target = authority(&host, port);
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| TransportError::Connect(format!("cannot resolve {target}: {e}")))?
                .collect(),
        };
        let mut last = format!("no address for {target}");
        let mut stream = None;
        for addr in addrs {
            let connected = match self.socket_for(&addr) {
                Ok(socket) => socket.connect(addr).await,
                Err(e) => Err(e),
            };
            match connected {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = format!("{target}: {e}"),
            }
        }
        let tcp = stream.ok_or(TransportError::Connect(last))?;
        // Requests are small and latency-bound.
        let _ = tcp.set_nodelay(true);
        let Some(config) = self.tls else {
            return Ok(ExecutorStream::Plain(tcp));
        };
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.clone())
                .map_err(|e| TransportError::Tls(format!("{target}: {e}")))?,
        };
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                if is_pin_mismatch(&e) {
                    TransportError::PinMismatch
                } else {
                    TransportError::Tls(format!("{target}: {e}"))
                }
            })?;
        Ok(ExecutorStream::Tls(Box::new(tls)))
    }

    /// A TCP socket of the management namespace (a socket belongs to the
    /// namespace of the thread that creates it; connecting can then happen
    /// anywhere). Threads of a dispatcher made for that namespace are in it
    /// already; any other thread has a short-lived helper make the socket.
    fn socket_for(&self, addr: &SocketAddr) -> io::Result<TcpSocket> {
        let make = || {
            if addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
        };
        let Some(netns) = self.netns.as_deref() else {
            return make();
        };
        if netns.is_current_thread_in()? {
            return make();
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                netns.enter()?;
                make()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("socket thread panicked")))
        })
    }
}

type Pool = PooledClient<ExecutorConnector, Full<Bytes>>;

/// Which pool a request uses: its transport (the pinned certificates).
type PoolKey = Option<Vec<[u8; 32]>>;

struct Inner {
    pools: Mutex<HashMap<PoolKey, Pool>>,
    provider: Arc<CryptoProvider>,
    netns: Option<Arc<Netns>>,
}

/// The pooled, pinned, signing client. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

impl Client {
    pub fn new() -> Client {
        Client::with_netns(None)
    }

    /// A client whose connections are opened inside `netns` (the
    /// management network namespace), `None`: the calling thread's.
    pub fn with_netns(netns: Option<Arc<Netns>>) -> Client {
        Client {
            inner: Arc::new(Inner {
                pools: Mutex::new(HashMap::new()),
                provider: Arc::new(rustls::crypto::ring::default_provider()),
                netns,
            }),
        }
    }

    fn tls_config(&self, fingerprints: &[[u8; 32]]) -> Result<Arc<ClientConfig>, TransportError> {
        let verifier = PinnedVerifier {
            fingerprints: fingerprints.to_vec(),
            algorithms: self.inner.provider.signature_verification_algorithms,
        };
        let config = ClientConfig::builder_with_provider(self.inner.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// The pool of `transport`, made on first use.
    fn pool(&self, transport: &Transport) -> Result<Pool, TransportError> {
        let key: PoolKey = match transport {
            Transport::Pinned(fp) => Some(fp.clone()),
            Transport::InsecureLoopback => None,
        };
        let mut pools = self.inner.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(&key) {
            return Ok(pool.clone());
        }
        let tls = match &key {
            Some(fp) => Some(self.tls_config(fp)?),
            None => None,
        };
        let connector = ExecutorConnector {
            tls,
            netns: self.inner.netns.clone(),
        };
        let pool = PooledClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(MAX_IDLE)
            .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
            .retry_canceled_requests(true)
            .build(connector);
        pools.insert(key, pool.clone());
        Ok(pool)
    }

    /// Drops every pooled connection (tests, benchmarks).
    pub fn clear_pool(&self) {
        self.inner
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Sends one signed request and reads the whole answer. No timeout here:
    /// the caller bounds the whole exchange.
    pub async fn request(
        &self,
        host: &HostEntry,
        transport: &Transport,
        key: &SecretKey,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Reply, TransportError> {
        let pool = self.pool(transport)?;
        let authority = authority(&host.addr, host.port);
        let scheme = match transport {
            Transport::Pinned(_) => "https",
            Transport::InsecureLoopback => "http",
        };
        let uri: Uri = format!("{scheme}://{authority}{path}")
            .parse()
            .map_err(|e| TransportError::Connect(format!("bad request: {e}")))?;
        let sig = signing::sign(key.expose(), method.as_str(), path, unix_now(), &body);
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(signing::HEADER_TIMESTAMP, sig.timestamp.to_string())
            .header(signing::HEADER_NONCE, sig.nonce)
            .header(signing::HEADER_SIGNATURE, sig.signature)
            .body(Full::new(body))
            .map_err(|e| TransportError::Connect(format!("bad request: {e}")))?;
        let response = pool
            .request(request)
            .await
            .map_err(|e| classify(&authority, &e))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| TransportError::Io(format!("{authority}: reading the answer: {e}")))?
            .to_bytes();
        Ok(Reply { status, body })
    }
}

/// The pooled client's error as a [`TransportError`]: the connector's own
/// error when connecting failed; a request hyper cancelled before writing
/// it never left; anything else may have reached the executor.
fn classify(authority: &str, e: &hyper_util::client::legacy::Error) -> TransportError {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<TransportError>() {
            return t.clone();
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_canceled() {
                return TransportError::Connect(format!(
                    "{authority}: connection closed before the request"
                ));
            }
            return TransportError::Io(format!("{authority}: {h}"));
        }
        source = s.source();
    }
    if e.is_connect() {
        TransportError::Connect(format!("{authority}: {e}"))
    } else {
        TransportError::Io(format!("{authority}: {e}"))
    }
}
