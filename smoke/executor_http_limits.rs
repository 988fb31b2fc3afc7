//! Limits of the executor's HTTPS server against clients without the key
//! (root; each test runs in its own network and mount namespace): idle,
//! header and body deadlines, connection caps with eviction of unsigned
//! connections, signature headers checked before the body, the budget of
//! unverified bodies, and the JSON error body of every HTTP-layer refusal.
//!
//! The real executor binary serves real TLS on loopback. Timeouts are
//! configured small, and every wait is for the real condition (an answer,
//! the end of input) bounded by [`BOUND`], never a sleep.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use netbridge_testbed::*;
use serde_json::{json, Value};

/// Upper bound of every wait: a limit that does not work fails the test
/// instead of hanging it.
const BOUND: Duration = Duration::from_secs(30);
const KEY: &[u8] = b"http-limits-test-key-0123456789";
const PORT: u16 = 8443;
const COMMAND_PATH: &str = "/v1/commands/implement-network";

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// `127.0.0.<n>`: clients with different addresses on the same loopback.
fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// The executor process of one test; killed (by PID) on drop.
struct Executor {
    child: Child,
    dir: tempfile::TempDir,
    fingerprint: String,
}

impl Executor {
    fn start(extra: &[&str]) -> Executor {
        run(&["ip", "link", "set", "lo", "up"]).expect("loopback up");
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("executor.hmac");
        write_secret(&key_file, KEY).expect("key file");
        let cert = netbridge_executor::daemon::tls::generate_cert(
            &dir.path().join("tls"),
            "executor",
            &["127.0.0.1".to_string()],
        )
        .expect("certificate");
        let mut cmd = Command::new(netbridge_testbed::workspace_bin("netbridge-executor"));
        cmd.args(["--listen", &format!("127.0.0.1:{PORT}")])
            .args(["--log-level", "debug", "--host-name", "limits"])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--key-file")
            .arg(&key_file)
            .arg("--tls-cert")
            .arg(&cert.cert_path)
            .arg("--tls-key")
            .arg(&cert.key_path)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; the executor dies with this thread.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn netbridge-executor");
        let stderr = child.stderr.take().expect("stderr pipe");
        let mut log = File::create(dir.path().join("executor.log")).expect("log file");
        let (listening, started) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if line.contains("listening on") {
                    let _ = listening.send(());
                }
            }
        });
        let executor = Executor {
            child,
            dir,
            fingerprint: cert.fingerprint,
        };
        // The line is logged once the port is bound.
        started
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("executor did not start:\n{}", executor.log()));
        executor
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("executor.log")).unwrap_or_default()
    }

    /// A TLS connection from `from`, handshake completed (also on the
    /// server's side once the client's last flight is flushed).
    fn tls_from(&self, from: Ipv4Addr) -> Result<Tls, String> {
        self.tls_over(tcp_from(from, None))
    }

    fn tls_over(&self, tcp: TcpStream) -> Result<Tls, String> {
        let name =
            rustls::pki_types::ServerName::try_from("executor").map_err(|e| e.to_string())?;
        let conn =
            rustls::ClientConnection::new(Arc::new(pinned_client_config(&self.fingerprint)), name)
                .map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| format!("handshake: {e}"))?;
        }
        while tls.conn.wants_write() {
            tls.conn
                .write_tls(&mut tls.sock)
                .map_err(|e| format!("handshake: {e}"))?;
        }
        Ok(tls)
    }

    fn tls(&self) -> Tls {
        self.tls_from(Ipv4Addr::LOCALHOST)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// A signed keep-alive request on `tls` and its answer.
    fn signed(&self, tls: &mut Tls, method: &str, path: &str, body: &[u8]) -> Reply {
        let headers = signature_headers(KEY, method, path, now_secs(), body);
        let mut request = head(method, path, &headers, Some(body.len()), &[]);
        request.extend_from_slice(body);
        send(tls, &request);
        read_reply(tls).unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    /// The executor's metrics, read on `tls` (a signed connection, so the
    /// reading changes no connection count).
    fn metrics(&self, tls: &mut Tls) -> String {
        let reply = self.signed(tls, "GET", "/metrics", b"");
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.text()
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- executor log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP connection to the executor from `from`, optionally with a small
/// receive buffer.
fn tcp_from(from: Ipv4Addr, receive_buffer: Option<usize>) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    socket
        .bind(&SocketAddr::from((from, 0)).into())
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    socket
        .connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, PORT)).into(), BOUND)
        .expect("connect");
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(BOUND)).expect("read timeout");
    tcp.set_write_timeout(Some(BOUND)).expect("write timeout");
    tcp.set_nodelay(true).expect("nodelay");
    tcp
}

/// A request head (keep-alive); `length` becomes `Content-Length`.
fn head(
    method: &str,
    path: &str,
    signature: &[(String, String)],
    length: Option<usize>,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: executor\r\n");
    if let Some(n) = length {
        text.push_str(&format!("Content-Length: {n}\r\n"));
    }
    for (k, v) in signature {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    for (k, v) in extra {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

fn send(tls: &mut Tls, bytes: &[u8]) {
    tls.write_all(bytes).expect("write");
    tls.flush().expect("flush");
}

/// Signature headers that look right (fresh timestamp, valid nonce, 64 hex
/// digits) but were made without the key.
fn forged(method: &str, path: &str, body: &[u8]) -> Vec<(String, String)> {
    signature_headers(
        b"not-the-executor-key-000000",
        method,
        path,
        now_secs(),
        body,
    )
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the executor's JSON error body and the connection's closing.
    fn assert_refusal(&self, status: u16, message: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(
            self.json(),
            json!({"status": "error", "message": message}),
            "{}",
            self.text()
        );
    }
}

/// Reads one response (an interim `100 Continue` included) byte by byte,
/// so nothing past it is consumed; `read` gives its first bytes.
fn read_reply_from(s: &mut impl Read, mut raw: Vec<u8>) -> Result<Reply, String> {
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => return Err(format!("closed after {} bytes of a head", raw.len())),
            Ok(_) => raw.push(byte[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {text:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body)
        .map_err(|e| format!("body of {length} bytes: {e}"))?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn read_reply(s: &mut impl Read) -> Result<Reply, String> {
    read_reply_from(s, Vec::new())
}

/// Waits (bounded) until the server closed the connection.
fn wait_closed(s: &mut impl Read) -> Result<(), String> {
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!(
            "unexpected data: {:?}",
            String::from_utf8_lossy(&buf[..n])
        )),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(format!("still open after {} s: {e}", BOUND.as_secs())),
    }
}

fn assert_metric(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "metrics lack {line:?}:\n{text}"
    );
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    if isolate("idle_connections_are_closed_after_the_idle_timeout") {
        return;
    }
    let limit = Duration::from_secs(1);
    let ex = Executor::start(&["--idle-timeout", "1", "--tls-handshake-timeout", "1"]);

    // Each clock starts before the client's last step, so that it cannot
    // start after the server's deadline did (the client may be scheduled
    // late on a busy machine). A TLS connection that never sends a request:
    let start = Instant::now();
    let mut idle = ex.tls();
    wait_closed(&mut idle).expect("idle connection closed");
    assert!(
        start.elapsed() >= limit,
        "closed after {:?}",
        start.elapsed()
    );

    // A keep-alive connection after a signed request.
    let mut kept = ex.tls();
    let start = Instant::now();
    let reply = ex.signed(&mut kept, "GET", "/v1/health", b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("connection"), None);
    wait_closed(&mut kept).expect("keep-alive connection closed");
    assert!(
        start.elapsed() >= limit,
        "closed after {:?}",
        start.elapsed()
    );

    // A TCP connection that never starts the TLS handshake.
    let start = Instant::now();
    let mut silent = tcp_from(Ipv4Addr::LOCALHOST, None);
    wait_closed(&mut silent).expect("connection without handshake closed");
    assert!(
        start.elapsed() >= limit,
        "closed after {:?}",
        start.elapsed()
    );

    let mut probe = ex.tls();
    let metrics = ex.metrics(&mut probe);
    assert_metric(
        &metrics,
        "netbridge_executor_timeouts_total{phase=\"idle\"} 2",
    );
    assert_metric(
        &metrics,
        "netbridge_executor_timeouts_total{phase=\"handshake\"} 1",
    );
}

#[test]
fn a_client_that_does_not_read_its_answers_is_closed_after_the_idle_timeout() {
    if isolate("a_client_that_does_not_read_its_answers_is_closed_after_the_idle_timeout") {
        return;
    }
    let ex = Executor::start(&["--idle-timeout", "1"]);
    let mut greedy = ex
        .tls_over(tcp_from(Ipv4Addr::LOCALHOST, Some(4096)))
        .expect("TLS handshake");
    // Pipelined signed requests for the metrics (a few KiB of answer
    // each), never reading an answer, until the executor stops reading
    // them: its answers wait for this client.
    greedy
        .sock
        .set_write_timeout(Some(Duration::from_millis(200)))
        .expect("write timeout");
    let start = Instant::now();
    let mut sent = 0;
    loop {
        assert!(start.elapsed() < BOUND, "the executor kept reading");
        let batch: Vec<u8> = (0..20)
            .flat_map(|_| {
                let signature = signature_headers(KEY, "GET", "/metrics", now_secs(), b"");
                head("GET", "/metrics", &signature, None, &[])
            })
            .collect();
        if greedy
            .write_all(&batch)
            .and_then(|()| greedy.flush())
            .is_err()
        {
            break;
        }
        sent += 20;
    }
    assert!(sent > 20, "only {sent} requests were taken");
    // The executor closes the connection: with input it did not read, the
    // close is a reset, which poll(2) reports without reading the answers.
    let mut hangup = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&greedy.sock),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut hangup, 1, BOUND.as_millis() as libc::c_int) };
    assert_eq!(
        ready,
        1,
        "connection still open after {} s",
        BOUND.as_secs()
    );
    assert_ne!(
        hangup.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLRDHUP),
        0
    );
    let mut probe = ex.tls();
    let metrics = ex.metrics(&mut probe);
    assert_metric(
        &metrics,
        "netbridge_executor_timeouts_total{phase=\"write\"} 1",
    );
}

#[test]
fn slow_heads_and_lying_content_lengths_get_408_json_and_are_closed() {
    if isolate("slow_heads_and_lying_content_lengths_get_408_json_and_are_closed") {
        return;
    }
    let limit = Duration::from_secs(1);
    let ex = Executor::start(&[
        "--header-read-timeout",
        "1",
        "--body-read-timeout",
        "1",
        "--body-min-rate",
        "0",
    ]);

    // Slowloris: the head keeps growing, one byte per poll of the answer;
    // the deadline runs from its first byte whatever the progress.
    let mut slow = ex.tls();
    let start = Instant::now();
    send(
        &mut slow,
        b"GET /v1/health HTTP/1.1\r\nHost: executor\r\nX-Slow: ",
    );
    slow.sock
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    let mut first = [0u8; 1];
    let mut dripped = 0;
    loop {
        assert!(start.elapsed() < BOUND, "slow head still open");
        // The server may close while a byte is on its way.
        if slow.write_all(b"a").and_then(|()| slow.flush()).is_ok() {
            dripped += 1;
        }
        match slow.read(&mut first) {
            Ok(1) => break,
            Ok(_) => panic!("closed without an answer"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    slow.sock
        .set_read_timeout(Some(BOUND))
        .expect("read timeout");
    let reply = read_reply_from(&mut slow, first.to_vec()).expect("408 answer");
    reply.assert_refusal(
        408,
        "request header not complete within header_read_timeout (1 s)",
    );
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(
        start.elapsed() >= limit,
        "answered after {:?}",
        start.elapsed()
    );
    assert!(dripped > 1, "the head should have grown meanwhile");
    wait_closed(&mut slow).expect("slow head closed");

    // A signed request that declares 1,000 bytes and sends 10.
    let mut lying = ex.tls();
    let body = vec![b'x'; 1000];
    let signature = signature_headers(KEY, "POST", COMMAND_PATH, now_secs(), &body);
    let mut request = head("POST", COMMAND_PATH, &signature, Some(body.len()), &[]);
    request.extend_from_slice(&body[..10]);
    let start = Instant::now();
    send(&mut lying, &request);
    let reply = read_reply(&mut lying).expect("408 answer");
    reply.assert_refusal(
        408,
        "request body not received within body_read_timeout (1 s)",
    );
    assert!(
        start.elapsed() >= limit,
        "answered after {:?}",
        start.elapsed()
    );
    wait_closed(&mut lying).expect("lying request closed");

    let mut probe = ex.tls();
    let metrics = ex.metrics(&mut probe);
    assert_metric(
        &metrics,
        "netbridge_executor_timeouts_total{phase=\"header\"} 1",
    );
    assert_metric(
        &metrics,
        "netbridge_executor_timeouts_total{phase=\"body\"} 1",
    );
}

#[test]
fn a_body_slower_than_the_minimum_rate_is_refused_long_before_the_body_deadline() {
    if isolate("a_body_slower_than_the_minimum_rate_is_refused_long_before_the_body_deadline") {
        return;
    }
    // body_read_timeout stays at its default (60 s), beyond BOUND.
    let ex = Executor::start(&["--body-min-rate", "1000"]);
    let mut lying = ex.tls();
    let body = vec![b'x'; 100_000];
    let signature = signature_headers(KEY, "POST", COMMAND_PATH, now_secs(), &body);
    let mut request = head("POST", COMMAND_PATH, &signature, Some(body.len()), &[]);
    request.extend_from_slice(&body[..10]);
    let start = Instant::now();
    send(&mut lying, &request);
    let reply = read_reply(&mut lying).expect("408 within the read bound");
    reply.assert_refusal(
        408,
        "request body arrived slower than body_min_rate (1000 bytes/s)",
    );
    // The rule starts after a 2 s grace.
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "answered after {:?}",
        start.elapsed()
    );
    wait_closed(&mut lying).expect("slow body closed");
}

#[test]
fn connection_caps_refuse_and_evict_while_signed_requests_succeed() {
    if isolate("connection_caps_refuse_and_evict_while_signed_requests_succeed") {
        return;
    }
    let ex = Executor::start(&["--max-connections", "6", "--max-connections-per-peer", "2"]);

    // Two unsigned connections per address; the third is closed at once.
    let mut a1 = ex.tls_from(ip(2)).expect("first from .2");
    let mut a2 = ex.tls_from(ip(2)).expect("second from .2");
    assert!(
        ex.tls_from(ip(2)).is_err(),
        "a third unsigned connection from one address must be refused"
    );
    let mut others: Vec<Tls> = [ip(3), ip(3), ip(4), ip(4)]
        .into_iter()
        .map(|from| ex.tls_from(from).expect("idle connection"))
        .collect();

    // The table is full of idle unsigned connections; the bridge still
    // gets in, in place of the oldest of them.
    let mut bridge = ex.tls();
    let reply = ex.signed(&mut bridge, "GET", "/v1/health", b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    wait_closed(&mut a1).expect("the oldest idle connection was closed");
    let metrics = ex.metrics(&mut bridge);
    assert_metric(
        &metrics,
        "netbridge_executor_connections{signed=\"true\"} 1",
    );
    assert_metric(
        &metrics,
        "netbridge_executor_connections{signed=\"false\"} 5",
    );

    // Signed connections are never closed to make room: five more take
    // the places of the five unsigned ones.
    let mut signed = vec![bridge];
    for _ in 0..5 {
        let mut conn = ex.tls();
        let reply = ex.signed(&mut conn, "GET", "/v1/health", b"");
        assert_eq!(reply.status, 200, "{}", reply.text());
        signed.push(conn);
    }
    wait_closed(&mut a2).expect("evicted");
    for conn in &mut others {
        wait_closed(conn).expect("evicted");
    }
    // A table full of signed connections refuses the next one at once,
    // and every signed connection keeps working.
    assert!(
        ex.tls_from(ip(5)).is_err(),
        "the connection beyond a table of signed ones must be refused"
    );
    for conn in &mut signed {
        let reply = ex.signed(conn, "GET", "/v1/health", b"");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let metrics = ex.metrics(&mut signed[0]);
    assert_metric(
        &metrics,
        "netbridge_executor_connections{signed=\"true\"} 6",
    );
    assert_metric(
        &metrics,
        "netbridge_executor_connections{signed=\"false\"} 0",
    );
    assert_metric(&metrics, "netbridge_executor_connections_evicted_total 6");
    assert_metric(
        &metrics,
        "netbridge_executor_connections_refused_total{reason=\"per_peer_limit\"} 1",
    );
    assert_metric(
        &metrics,
        "netbridge_executor_connections_refused_total{reason=\"capacity\"} 1",
    );
}

#[test]
fn unsigned_and_oversized_bodies_are_refused_before_they_are_read() {
    if isolate("unsigned_and_oversized_bodies_are_refused_before_they_are_read") {
        return;
    }
    const MIB: usize = 1 << 20;
    let ex = Executor::start(&[
        "--body-limit",
        "1048576",
        "--max-unverified-body-bytes",
        "2097152",
    ]);

    // Unsigned, 1 MiB declared: the answer arrives while only the head
    // was sent.
    let mut unsigned = ex.tls();
    send(
        &mut unsigned,
        &head("POST", COMMAND_PATH, &[], Some(MIB), &[]),
    );
    let reply = read_reply(&mut unsigned).expect("401 answer");
    reply.assert_refusal(
        401,
        "authentication failed: request is not signed (missing header 'x-netbridge-timestamp')",
    );
    assert_eq!(reply.header("connection"), Some("close"));
    wait_closed(&mut unsigned).expect("closed");

    // A stale signature asking for 100-continue: refused, no 100 sent.
    let body = vec![b' '; MIB];
    let stale = signature_headers(KEY, "POST", COMMAND_PATH, now_secs() - 120, &body);
    let mut late = ex.tls();
    let expect = [("Expect", "100-continue")];
    send(
        &mut late,
        &head("POST", COMMAND_PATH, &stale, Some(MIB), &expect),
    );
    read_reply(&mut late).expect("401 answer").assert_refusal(
        401,
        "authentication failed: request timestamp outside the accepted window of 30 s",
    );

    // A declared length over the limit: 413 at once.
    let mut huge = ex.tls();
    let signature = signature_headers(KEY, "POST", COMMAND_PATH, now_secs(), b"");
    send(
        &mut huge,
        &head("POST", COMMAND_PATH, &signature, Some(MIB + 1), &[]),
    );
    read_reply(&mut huge)
        .expect("413 answer")
        .assert_refusal(413, "request body too large (limit 1048576 bytes)");
    wait_closed(&mut huge).expect("closed");

    // Forged but well-formed signatures make the executor read bodies; on
    // unsigned connections those share a budget of 2 MiB. `100 Continue`
    // shows that the executor reserved the body and started reading it.
    let forged_head = || {
        head(
            "POST",
            COMMAND_PATH,
            &forged("POST", COMMAND_PATH, &body),
            Some(MIB),
            &expect,
        )
    };
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut conn = ex.tls();
        send(&mut conn, &forged_head());
        assert_eq!(read_reply(&mut conn).expect("interim answer").status, 100);
        holders.push(conn);
    }
    let mut third = ex.tls();
    send(&mut third, &forged_head());
    read_reply(&mut third).expect("503 answer").assert_refusal(
        503,
        "executor busy: too many request bodies awaiting their signature check (max_unverified_body_bytes 2097152); retry",
    );
    wait_closed(&mut third).expect("closed");

    // A connection that carried a signed request is not limited by the
    // budget: its 1 MiB command reaches the engine meanwhile.
    let mut bridge = ex.tls();
    assert_eq!(ex.signed(&mut bridge, "GET", "/v1/health", b"").status, 200);
    let mut envelope = serde_json::to_vec(&json!({"payload": {"network_id": "42"}})).unwrap();
    envelope.resize(MIB, b' ');
    let reply = ex.signed(&mut bridge, "POST", COMMAND_PATH, &envelope);
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(
        !reply.text().contains("authentication") && !reply.text().contains("busy"),
        "{}",
        reply.text()
    );

    // A forged body is refused once read, which frees its share.
    let mut first = holders.remove(0);
    send(&mut first, &body);
    read_reply(&mut first)
        .expect("401 answer")
        .assert_refusal(401, "authentication failed: signature does not match");
    let mut next = ex.tls();
    send(&mut next, &forged_head());
    assert_eq!(read_reply(&mut next).expect("interim answer").status, 100);
}

#[test]
fn every_http_layer_refusal_answers_the_json_error_body() {
    if isolate("every_http_layer_refusal_answers_the_json_error_body") {
        return;
    }
    let ex = Executor::start(&[]);
    let long_target = format!(
        "GET /{} HTTP/1.1\r\nHost: executor\r\n\r\n",
        "a".repeat(5000)
    );
    let big_field = format!(
        "GET /v1/health HTTP/1.1\r\nHost: executor\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    let mut many_fields = String::from("GET /v1/health HTTP/1.1\r\n");
    for i in 0..65 {
        many_fields.push_str(&format!("X-Field-{i}: v\r\n"));
    }
    many_fields.push_str("\r\n");
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            b"GARBAGE\r\n\r\n".to_vec(),
            400,
            "malformed request: invalid token",
        ),
        (
            b"GET /v1/health HTTP/7.0\r\n\r\n".to_vec(),
            400,
            "malformed request: invalid HTTP version",
        ),
        (
            b"GET /v1/health HTTP/1.1\r\nBad Field\r\n\r\n".to_vec(),
            400,
            "malformed request: invalid header name",
        ),
        (
            b"POST /v1/commands/assign-ip HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
            400,
            "malformed request: invalid 'Content-Length'",
        ),
        (
            b"POST /v1/commands/assign-ip HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            411,
            "a request body needs a 'Content-Length' header; 'Transfer-Encoding' is not supported",
        ),
        (
            long_target.into_bytes(),
            414,
            "request target longer than 4096 bytes",
        ),
        (
            big_field.into_bytes(),
            431,
            "request header fields larger than 16384 bytes",
        ),
        (many_fields.into_bytes(), 431, "more than 64 header fields"),
        (
            head("POST", COMMAND_PATH, &[], Some(17 << 20), &[]),
            413,
            "request body too large (limit 16777216 bytes)",
        ),
    ];
    for (request, status, message) in cases {
        let mut conn = ex.tls();
        send(&mut conn, &request);
        let reply = read_reply(&mut conn).unwrap_or_else(|e| panic!("{message}: {e}"));
        reply.assert_refusal(status, message);
        assert_eq!(reply.header("connection"), Some("close"), "{message}");
        wait_closed(&mut conn).unwrap_or_else(|e| panic!("{message}: {e}"));
    }

    // An unsigned request without a body leaves the connection usable.
    let mut conn = ex.tls();
    send(&mut conn, &head("GET", "/v1/health", &[], None, &[]));
    read_reply(&mut conn).expect("401 answer").assert_refusal(
        401,
        "authentication failed: request is not signed (missing header 'x-netbridge-timestamp')",
    );
    // On that keep-alive connection, after a signed request, a malformed
    // one still gets its JSON answer.
    let reply = ex.signed(&mut conn, "GET", "/v1/health", b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    send(&mut conn, b"GET /v1/health HTTP/1.1\r\nBad Field\r\n\r\n");
    read_reply(&mut conn)
        .expect("400 answer")
        .assert_refusal(400, "malformed request: invalid header name");
    wait_closed(&mut conn).expect("closed after the refusal");

    let mut probe = ex.tls();
    let metrics = ex.metrics(&mut probe);
    for line in [
        "netbridge_executor_requests_rejected_total{reason=\"malformed_request\"} 5",
        "netbridge_executor_requests_rejected_total{reason=\"length_required\"} 1",
        "netbridge_executor_requests_rejected_total{reason=\"uri_too_long\"} 1",
        "netbridge_executor_requests_rejected_total{reason=\"header_too_large\"} 2",
        "netbridge_executor_requests_rejected_total{reason=\"body_too_large\"} 1",
    ] {
        assert_metric(&metrics, line);
    }
}
