//! The signed HTTPS client to executors: one pool of HTTP/1.1 keep-alive
//! connections per process, TLS pinned to the executor certificate's
//! SHA-256 (no CA validation, handshake signatures still verified with the
//! ring provider), every request signed per [`netbridge_protocol::signing`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use super::config::{HostEntry, SecretKey, Transport};
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

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: String,
    port: u16,
    pin: Option<Vec<[u8; 32]>>,
}

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

struct Inner {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    tls: Mutex<HashMap<Vec<[u8; 32]>, Arc<ClientConfig>>>,
    provider: Arc<CryptoProvider>,
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

fn is_pin_mismatch(err: &std::io::Error) -> bool {
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

impl Client {
    pub fn new() -> Client {
        Client {
            inner: Arc::new(Inner {
                idle: Mutex::new(HashMap::new()),
                tls: Mutex::new(HashMap::new()),
                provider: Arc::new(rustls::crypto::ring::default_provider()),
            }),
        }
    }

    fn tls_config(&self, fingerprints: &[[u8; 32]]) -> Result<Arc<ClientConfig>, TransportError> {
        let mut configs = self.inner.tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = configs.get(fingerprints) {
            return Ok(c.clone());
        }
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
        let config = Arc::new(config);
        configs.insert(fingerprints.to_vec(), config.clone());
        Ok(config)
    }

    fn take_idle(&self, key: &PoolKey) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        while let Some(entry) = list.pop() {
            if !entry.sender.is_closed() && entry.since.elapsed() < MAX_IDLE {
                return Some(entry.sender);
            }
        }
        None
    }

    fn put_idle(&self, key: PoolKey, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(key).or_default();
        list.retain(|e| !e.sender.is_closed() && e.since.elapsed() < MAX_IDLE);
        if list.len() < MAX_IDLE_PER_HOST {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Drops every pooled connection (tests, benchmarks).
    pub fn clear_pool(&self) {
        self.inner
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    async fn connect(
        &self,
        host: &HostEntry,
        transport: &Transport,
    ) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        let target = authority(&host.addr, host.port);
        let addrs: Vec<SocketAddr> = match host.addr.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, host.port)],
            Err(_) => tokio::net::lookup_host((host.addr.as_str(), host.port))
                .await
                .map_err(|e| TransportError::Connect(format!("cannot resolve {target}: {e}")))?
                .collect(),
        };
        let mut last = format!("no address for {target}");
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
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
        let handshake_err = |e: hyper::Error| TransportError::Connect(format!("{target}: {e}"));
        match transport {
            Transport::Pinned(fp) => {
                let config = self.tls_config(fp)?;
                let name = match host.addr.parse::<IpAddr>() {
                    Ok(ip) => ServerName::IpAddress(ip.into()),
                    Err(_) => ServerName::try_from(host.addr.clone())
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
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(handshake_err)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        log::debug!("executor connection closed: {e}");
                    }
                });
                Ok(sender)
            }
            Transport::InsecureLoopback => {
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(handshake_err)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        log::debug!("executor connection closed: {e}");
                    }
                });
                Ok(sender)
            }
        }
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
        let pool_key = PoolKey {
            addr: host.addr.clone(),
            port: host.port,
            pin: match transport {
                Transport::Pinned(fp) => Some(fp.clone()),
                Transport::InsecureLoopback => None,
            },
        };
        let authority = authority(&host.addr, host.port);
        // A pooled connection that turns out dead before the request went
        // out is replaced by a fresh one; at most a few times.
        for _ in 0..4 {
            let (mut sender, reused) = match self.take_idle(&pool_key) {
                Some(s) => (s, true),
                None => (self.connect(host, transport).await?, false),
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(TransportError::Connect(format!(
                    "{authority}: connection closed before the request"
                )));
            }
            let sig = signing::sign(key.expose(), method.as_str(), path, unix_now(), &body);
            let request = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(hyper::header::HOST, authority.as_str())
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(signing::HEADER_TIMESTAMP, sig.timestamp.to_string())
                .header(signing::HEADER_NONCE, sig.nonce)
                .header(signing::HEADER_SIGNATURE, sig.signature)
                .body(Full::new(body.clone()))
                .map_err(|e| TransportError::Connect(format!("bad request: {e}")))?;
            let response = match sender.try_send_request(request).await {
                Ok(r) => r,
                Err(mut e) => {
                    if e.take_message().is_some() {
                        if reused {
                            continue;
                        }
                        return Err(TransportError::Connect(format!(
                            "{authority}: {}",
                            e.error()
                        )));
                    }
                    return Err(TransportError::Io(format!("{authority}: {}", e.error())));
                }
            };
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| TransportError::Io(format!("{authority}: reading the answer: {e}")))?
                .to_bytes();
            self.put_idle(pool_key, sender);
            return Ok(Reply { status, body });
        }
        Err(TransportError::Connect(format!(
            "{authority}: pooled connections kept failing"
        )))
    }
}
