//! Metadata and password services, served by the executor itself.
//!
//! - Metadata (`extension_ip:80`): EC2-style tree answered by the client's
//!   source address only: `/latest/user-data`, `/latest/meta-data/` (one
//!   entry a line), `/latest/meta-data/<file>`, `public-keys` (as a file, like
//!   the CloudStack virtual router, plus the EC2 forms `public-keys/`,
//!   `public-keys/0/` and `public-keys/0/openssh-key`), and the virtual
//!   router's short forms `/latest/<file>`. Unknown client or path: 404.
//! - Password (`extension_ip:8080`): the virtual-router protocol. Header
//!   `DomU_Request: send_my_password` → the pending password, or
//!   `saved_password` when there is none; `DomU_Request: saved_password` →
//!   forget it, answer `saved_password`; anything else → `bad_request` (400).
//!   Bodies carry no trailing newline.
//!
//! Sockets are created inside the network namespace by a short-lived thread
//! that `setns()`es first (namespace membership is per thread), then handed
//! to tokio.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::descriptors::above_select_limit;
use super::store::MetadataStore;
use super::vmdata::VmData;
use super::{validate, ServicesError};

/// Default ports of the two services.
pub const METADATA_PORT: u16 = 80;
pub const PASSWORD_PORT: u16 = 8080;

/// `/run/netns/<name>` after validating the name.
pub fn netns_path(name: &str) -> Result<PathBuf, ServicesError> {
    let n = validate::ident("namespace", name)?;
    Ok(PathBuf::from("/run/netns").join(n))
}

/// Binds a TCP listener inside network namespace `netns` (`None`: the
/// caller's namespace).
pub fn bind_in_netns(netns: Option<&str>, addr: SocketAddr) -> Result<StdListener, ServicesError> {
    let Some(ns) = netns else {
        return listen_freebind(addr).map_err(|e| ServicesError::io(format!("bind {addr}"), e));
    };
    let path = netns_path(ns)?;
    let file =
        File::open(&path).map_err(|e| ServicesError::io(format!("open {}", path.display()), e))?;
    let ns_name = ns.to_string();
    let t = std::thread::spawn(move || -> Result<StdListener, ServicesError> {
        // SAFETY: setns on a valid open namespace fd; affects only this
        // thread, which exits right after binding.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(ServicesError::io(
                format!("setns {ns_name}"),
                std::io::Error::last_os_error(),
            ));
        }
        listen_freebind(addr).map_err(|e| ServicesError::io(format!("bind {addr} in {ns_name}"), e))
    });
    t.join()
        .map_err(|_| ServicesError::Process("namespace bind thread panicked".into()))?
}

/// A listening IPv4 TCP socket with `IP_FREEBIND`, so the services can be
/// started (e.g. during reconcile after an executor restart) before the
/// namespace's guest address is configured; they answer once it is.
fn listen_freebind(addr: SocketAddr) -> std::io::Result<StdListener> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        return StdListener::bind(addr)
            .map(|l| StdListener::from(above_select_limit(std::os::fd::OwnedFd::from(l))));
    };
    // SAFETY: plain socket syscalls on a descriptor owned here; on error it
    // is closed by the OwnedFd drop.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [
            (libc::SOL_SOCKET, libc::SO_REUSEADDR),
            (libc::IPPROTO_IP, libc::IP_FREEBIND),
        ] {
            if libc::setsockopt(
                fd,
                opt.0,
                opt.1,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::listen(fd, 1024) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(StdListener::from(above_select_limit(owned)))
    }
}

/// Where the two services listen.
#[derive(Debug, Clone)]
pub struct ListenSpec {
    pub netns: Option<String>,
    pub ip: Ipv4Addr,
    pub metadata_port: u16,
    pub password_port: u16,
}

impl ListenSpec {
    pub fn new(netns: Option<&str>, ip: Ipv4Addr) -> Self {
        ListenSpec {
            netns: netns.map(str::to_string),
            ip,
            metadata_port: METADATA_PORT,
            password_port: PASSWORD_PORT,
        }
    }
}

/// A running pair of services. Dropping it stops them.
pub struct MetadataServer {
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub metadata_addr: SocketAddr,
    pub password_addr: SocketAddr,
}

impl MetadataServer {
    /// Binds both listeners in the namespace and serves them on `rt`.
    pub fn start(
        rt: &tokio::runtime::Handle,
        spec: &ListenSpec,
        store: Arc<MetadataStore>,
    ) -> Result<MetadataServer, ServicesError> {
        let md = bind_in_netns(
            spec.netns.as_deref(),
            SocketAddr::new(spec.ip.into(), spec.metadata_port),
        )?;
        let pw = bind_in_netns(
            spec.netns.as_deref(),
            SocketAddr::new(spec.ip.into(), spec.password_port),
        )?;
        let metadata_addr = md
            .local_addr()
            .map_err(|e| ServicesError::io("local_addr", e))?;
        let password_addr = pw
            .local_addr()
            .map_err(|e| ServicesError::io("local_addr", e))?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let md_app = Router::new()
            .fallback(metadata_handler)
            .with_state(store.clone());
        let pw_app = Router::new().fallback(password_handler).with_state(store);
        for (l, app) in [(md, md_app), (pw, pw_app)] {
            l.set_nonblocking(true)
                .map_err(|e| ServicesError::io("set_nonblocking", e))?;
            let _guard = rt.enter();
            let l = tokio::net::TcpListener::from_std(l)
                .map_err(|e| ServicesError::io("listener", e))?;
            let mut rx = rx.clone();
            tasks.push(rt.spawn(async move {
                let stop = async move {
                    while !*rx.borrow() {
                        if rx.changed().await.is_err() {
                            break;
                        }
                    }
                };
                let svc = app.into_make_service_with_connect_info::<SocketAddr>();
                if let Err(e) = axum::serve(l, svc).with_graceful_shutdown(stop).await {
                    log::warn!("metadata service stopped: {e}");
                }
            }));
        }
        Ok(MetadataServer {
            shutdown: Some(tx),
            tasks,
            metadata_addr,
            password_addr,
        })
    }

    /// Stops accepting at once; open connections finish on their own.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
    }

    /// Stops and waits until both listeners are closed.
    pub async fn shutdown(mut self) {
        self.stop();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn client_v4(peer: SocketAddr) -> Option<Ipv4Addr> {
    match peer.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

fn text(status: StatusCode, body: impl Into<Vec<u8>>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body.into()).into_response()
}

async fn metadata_handler(
    State(store): State<Arc<MetadataStore>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let data = client_v4(peer).and_then(|ip| store.get(ip));
    match metadata_answer(data.as_ref(), uri.path()) {
        Some(body) => text(StatusCode::OK, body),
        None => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The metadata answer for a client's data and a path (pure). `None` = 404.
pub fn metadata_answer(data: Option<&VmData>, path: &str) -> Option<Vec<u8>> {
    let d = data?;
    let p = path.trim_start_matches('/');
    let (p, dir) = match p.strip_suffix('/') {
        Some(x) => (x, true),
        None => (p, false),
    };
    let keys = || d.meta.get("public-keys").filter(|k| !k.trim().is_empty());
    match p {
        "" => Some(b"latest\n".to_vec()),
        "latest" => {
            let mut s = String::from("meta-data/\n");
            if d.userdata.is_some() {
                s.push_str("user-data\n");
            }
            Some(s.into_bytes())
        }
        "latest/user-data" if !dir => d.userdata.clone(),
        "latest/meta-data" => {
            let mut s = String::new();
            for k in d.meta.keys() {
                s.push_str(k);
                s.push('\n');
            }
            Some(s.into_bytes())
        }
        "latest/meta-data/public-keys" if dir => keys().map(|_| b"0=key\n".to_vec()),
        "latest/meta-data/public-keys/0" if dir => keys().map(|_| b"openssh-key\n".to_vec()),
        "latest/meta-data/public-keys/0" | "latest/meta-data/public-keys/0/openssh-key" if !dir => {
            keys().map(|k| k.clone().into_bytes())
        }
        _ if !dir => {
            let file = p
                .strip_prefix("latest/meta-data/")
                .or_else(|| p.strip_prefix("latest/"))?;
            if file.contains('/') {
                return None;
            }
            d.meta.get(file).map(|c| c.clone().into_bytes())
        }
        _ => None,
    }
}

/// What the password service does for a request (pure part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordRequest {
    Send,
    Saved,
    Bad,
}

pub fn classify_password_request(headers: &HeaderMap) -> PasswordRequest {
    match headers
        .get("DomU_Request")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        Some("send_my_password") => PasswordRequest::Send,
        Some("saved_password") => PasswordRequest::Saved,
        _ => PasswordRequest::Bad,
    }
}

async fn password_handler(
    State(store): State<Arc<MetadataStore>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ip = client_v4(peer);
    match (classify_password_request(&headers), ip) {
        (PasswordRequest::Send, Some(ip)) => match store.get(ip).and_then(|d| d.password) {
            Some(pw) => {
                log::info!("password service: handed the pending password to {ip}");
                text(StatusCode::OK, pw.expose().as_bytes().to_vec())
            }
            None => text(StatusCode::OK, "saved_password"),
        },
        (PasswordRequest::Saved, Some(ip)) => {
            let store = store.clone();
            let r = tokio::task::spawn_blocking(move || store.forget_password(ip)).await;
            match r {
                Ok(Ok(_)) => text(StatusCode::OK, "saved_password"),
                Ok(Err(e)) => {
                    log::warn!("password service: cannot persist acknowledgement of {ip}: {e}");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "error")
                }
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "error"),
            }
        }
        _ => text(StatusCode::BAD_REQUEST, "bad_request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> VmData {
        let mut d = VmData {
            userdata: Some(b"#cloud-config".to_vec()),
            ..VmData::default()
        };
        d.meta.insert("instance-id".into(), "i-1".into());
        d.meta
            .insert("public-keys".into(), "ssh-ed25519 AAAA k".into());
        d
    }

    #[test]
    fn tree() {
        let d = vm();
        let a = |p: &str| metadata_answer(Some(&d), p).map(|b| String::from_utf8(b).unwrap());
        assert_eq!(a("/latest/user-data").as_deref(), Some("#cloud-config"));
        assert_eq!(
            a("/latest/meta-data/").as_deref(),
            Some("instance-id\npublic-keys\n")
        );
        assert_eq!(
            a("/latest/meta-data").as_deref(),
            Some("instance-id\npublic-keys\n")
        );
        assert_eq!(a("/latest/meta-data/instance-id").as_deref(), Some("i-1"));
        assert_eq!(a("/latest/instance-id").as_deref(), Some("i-1"));
        assert_eq!(
            a("/latest/meta-data/public-keys").as_deref(),
            Some("ssh-ed25519 AAAA k")
        );
        assert_eq!(
            a("/latest/meta-data/public-keys/").as_deref(),
            Some("0=key\n")
        );
        assert_eq!(
            a("/latest/meta-data/public-keys/0/openssh-key").as_deref(),
            Some("ssh-ed25519 AAAA k")
        );
        assert_eq!(a("/latest/").as_deref(), Some("meta-data/\nuser-data\n"));
        assert_eq!(a("/latest/meta-data/nope"), None);
        assert_eq!(a("/latest/meta-data/../user-data"), None);
        assert_eq!(a("/etc/passwd"), None);
        assert_eq!(metadata_answer(None, "/latest/user-data"), None);
    }

    #[test]
    fn password_requests() {
        let mut h = HeaderMap::new();
        assert_eq!(classify_password_request(&h), PasswordRequest::Bad);
        h.insert("DomU_Request", "send_my_password".parse().unwrap());
        assert_eq!(classify_password_request(&h), PasswordRequest::Send);
        h.insert("DomU_Request", "saved_password".parse().unwrap());
        assert_eq!(classify_password_request(&h), PasswordRequest::Saved);
        h.insert("DomU_Request", "other".parse().unwrap());
        assert_eq!(classify_password_request(&h), PasswordRequest::Bad);
        assert!(netns_path("../x").is_err());
        assert_eq!(
            netns_path("cs-net-42").unwrap(),
            PathBuf::from("/run/netns/cs-net-42")
        );
    }
}
