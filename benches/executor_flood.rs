//! Flood of the executor's HTTPS port by clients without the key, while the
//! bridge's own client keeps sending signed health checks and commands
//! (root; `cargo bench --bench executor_flood`).
//!
//! The real executor (release binary, default limits unless told otherwise)
//! runs in a private network and mount namespace with this benchmark:
//! 1. flood: idle TLS connections and slow-header connections (one more
//!    head byte per second) from many loopback addresses, each address
//!    below the per-address cap; every connection the executor closes is
//!    opened again at once. Meanwhile a signed client sends a health check
//!    and a command (`apply-fw-rules`) ten times a second, and drops its
//!    pooled connections every 5 s, so new bridge connections must get in
//!    during the flood. Prints answered/sent and latencies, and the
//!    executor's RSS (goal: every signed request answered, RSS < 100 MB).
//! 2. unsigned bodies: concurrent 16 MiB POSTs without signature headers,
//!    each client pushing its body at once (goal: every one answered 401
//!    before its body is read, RSS growth < 20 MB).
//! 3. forged bodies: the same with well-formed but forged signatures, which
//!    the executor can only refuse after reading (bounded by
//!    `max_unverified_body_bytes`).
//!
//! Environment: `NBF_DURATION_SECS` (60), `NBF_IDLE` (1000), `NBF_SLOW`
//! (100), `NBF_BODIES` (32), `NBF_MAX_CONNECTIONS` (executor default; below
//! the flood's size it makes every new connection evict an unsigned one).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use hyper::Method;
use netbridge_control::dispatch::{Client, HostEntry, SecretKey, Transport};
use netbridge_testbed::rss_kb;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

const CHILD_ENV: &str = "NBF_BENCH_CHILD";
const KEY: &[u8] = b"flood-benchmark-key-0123456789ab";
const PORT: u16 = 8443;
const NETWORK_ID: u64 = 7;
/// Connections per source address: below the executor's default per-address cap (64).
const PER_ADDRESS: usize = 50;
const BODY: usize = 16 << 20;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Raises this process's open-files limit to the hard limit (the flood
/// holds more than a thousand sockets).
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

struct Executor {
    child: Child,
    dir: tempfile::TempDir,
    fingerprint: String,
}

impl Executor {
    fn start(extra: &[String]) -> Executor {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("executor.hmac");
        netbridge_testbed::write_secret(&key_file, KEY).expect("key file");
        let cert = netbridge_executor::daemon::tls::generate_cert(
            &dir.path().join("tls"),
            "executor",
            &["127.0.0.1".to_string()],
        )
        .expect("certificate");
        let mut child = Command::new(netbridge_testbed::workspace_bin("netbridge-executor"))
            .args(["--listen", &format!("127.0.0.1:{PORT}")])
            // One line per command at info, as packaged.
            .args(["--log-level", "info", "--host-name", "flood"])
            .args(["--guest-device", "nbeg", "--public-device", "nbep"])
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
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn netbridge-executor");
        let stderr = child.stderr.take().expect("stderr");
        let mut log = std::fs::File::create(dir.path().join("executor.log")).expect("log");
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
        started
            .recv_timeout(Duration::from_secs(60))
            .expect("executor listening");
        executor
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn pin(&self) -> Vec<[u8; 32]> {
        let mut fp = [0u8; 32];
        hex::decode_to_slice(&self.fingerprint, &mut fp).expect("fingerprint");
        vec![fp]
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::read_to_string(self.dir.path().join("executor.log")).unwrap_or_default();
        let warnings = log.lines().filter(|l| l.contains(" WARN ")).count();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
        println!(
            "executor log: {} lines, {warnings} warnings, {} errors",
            log.lines().count(),
            errors.len()
        );
        for line in errors.iter().take(5) {
            println!("  {line}");
        }
    }
}

/// The signed client: the bridge's own pooled, pinned HTTPS client.
struct Signed {
    client: Client,
    host: HostEntry,
    transport: Transport,
    key: SecretKey,
}

impl Signed {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Value), String> {
        let (status, body) = self.send_raw(method, path, body).await?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), String> {
        let request = self.client.request(
            &self.host,
            &self.transport,
            &self.key,
            method,
            path,
            Bytes::from(body),
        );
        match tokio::time::timeout(Duration::from_secs(30), request).await {
            Ok(Ok(reply)) => Ok((reply.status, reply.body)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 30 s".into()),
        }
    }

    async fn command(&self, command: &str, payload: Value) -> Result<(u16, Value), String> {
        let mut payload = payload;
        payload["network_id"] = json!(NETWORK_ID.to_string());
        let envelope = json!({
            "physical-network-extension-details": {"guest.network.device": "nbeg", "public.network.device": "nbep"},
            "network-extension-details": {},
            "payload": payload,
        });
        self.send(
            Method::POST,
            &format!("/v1/commands/{command}"),
            envelope.to_string().into_bytes(),
        )
        .await
    }
}

fn fw_payload(port: u64) -> Value {
    json!({"fw_rules": {"default_egress_allow": true, "rules": [
        {"id": "1", "type": "egress", "protocol": "tcp", "portStart": port.to_string(),
         "portEnd": port.to_string(), "destCidrs": ["0.0.0.0/0"]}]}})
}

#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    failures: Vec<String>,
}

fn summary(name: &str, s: &Samples) -> bool {
    let mut l = s.latencies.clone();
    l.sort();
    let pick = |q: f64| {
        l.get(((l.len().max(1) - 1) as f64 * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let sent = l.len() + s.failures.len();
    println!(
        "{name:<16} answered {}/{sent}  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        l.len(),
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );
    for f in s.failures.iter().take(5) {
        println!("  failure: {f}");
    }
    s.failures.is_empty()
}

/// What the attackers observed.
#[derive(Default)]
struct Attack {
    opened: AtomicU64,
    closed_by_executor: AtomicU64,
    refused: AtomicU64,
    idle_held: AtomicUsize,
    slow_held: AtomicUsize,
    stop: AtomicBool,
}

fn tls_connector(fingerprint: &str) -> TlsConnector {
    TlsConnector::from(Arc::new(netbridge_testbed::pinned_client_config(
        fingerprint,
    )))
}

async fn connect_from(
    connector: &TlsConnector,
    from: Ipv4Addr,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    let tcp = socket
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, PORT)))
        .await?;
    let name = rustls::pki_types::ServerName::try_from("executor")
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    connector.connect(name, tcp).await
}

/// Holds one connection from `from` for the whole flood, opening it again
/// whenever the executor closes it; `slow` drips a never-ending head.
async fn hold(connector: TlsConnector, from: Ipv4Addr, slow: bool, attack: Arc<Attack>) {
    let held = if slow {
        &attack.slow_held
    } else {
        &attack.idle_held
    };
    while !attack.stop.load(Ordering::Relaxed) {
        let mut tls = match connect_from(&connector, from).await {
            Ok(t) => t,
            Err(_) => {
                attack.refused.fetch_add(1, Ordering::Relaxed);
                // Pacing of the attacker's retries, not a synchronisation.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        attack.opened.fetch_add(1, Ordering::Relaxed);
        held.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 1024];
        if slow {
            let _ = tls
                .write_all(b"GET /v1/health HTTP/1.1\r\nHost: executor\r\nX-Slow: ")
                .await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if attack.stop.load(Ordering::Relaxed) || tls.write_all(b"a").await.is_err() {
                            break;
                        }
                    }
                    read = tls.read(&mut buf) => {
                        if matches!(read, Ok(0) | Err(_)) { break; }
                    }
                }
            }
        } else {
            let stop = async {
                while !attack.stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            };
            tokio::select! {
                _ = async { while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {} } => {}
                () = stop => {}
            }
        }
        held.fetch_sub(1, Ordering::Relaxed);
        if !attack.stop.load(Ordering::Relaxed) {
            attack.closed_by_executor.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Samples the executor's RSS until `stop`; returns the largest (kB).
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut max = rss_kb(pid);
        while !stop.load(Ordering::Relaxed) {
            max = max.max(rss_kb(pid));
            std::thread::sleep(Duration::from_millis(100));
        }
        max.max(rss_kb(pid))
    })
}

/// One 16 MiB POST pushed at once; returns (status, bytes the client had
/// sent when the answer arrived).
async fn push_body(
    connector: TlsConnector,
    from: Ipv4Addr,
    signature: Vec<(String, String)>,
) -> Result<(u16, u64), String> {
    let tls = connect_from(&connector, from)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let mut head = format!(
        "POST /v1/commands/implement-network HTTP/1.1\r\nHost: executor\r\nContent-Length: {BODY}\r\n"
    );
    for (k, v) in &signature {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            if wr.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..BODY / chunk.len() {
                if wr.write_all(&chunk).await.is_err() {
                    return;
                }
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        })
    };
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(60), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err("closed without an answer".into()),
            Err(_) => return Err("no answer within 60 s".into()),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
        if let Some(line) = answer
            .split(|b| *b == b'\n')
            .next()
            .filter(|_| answer.contains(&b'\n'))
        {
            let text = String::from_utf8_lossy(line);
            break text
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or_else(|| format!("bad status line {text:?}"))?;
        }
    };
    let at_answer = sent.load(Ordering::Relaxed);
    writer.abort();
    Ok((status, at_answer))
}

async fn bodies(
    ex: &Executor,
    count: usize,
    signature: impl Fn() -> Vec<(String, String)>,
) -> (Vec<Result<(u16, u64), String>>, u64, u64) {
    let connector = tls_connector(&ex.fingerprint);
    let before = rss_kb(ex.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(ex.pid(), stop.clone());
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            tokio::spawn(push_body(
                connector.clone(),
                Ipv4Addr::new(127, 0, 3, 1),
                signature(),
            ))
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    stop.store(true, Ordering::Relaxed);
    let max = sampler.join().unwrap_or(0);
    (results, before, max)
}

fn report_bodies(name: &str, results: &[Result<(u16, u64), String>], before: u64, max: u64) {
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    let mut failures = Vec::new();
    let mut most_sent = 0;
    for r in results {
        match r {
            Ok((status, sent)) => {
                *by_status.entry(*status).or_default() += 1;
                most_sent = most_sent.max(*sent);
            }
            Err(e) => failures.push(e.clone()),
        }
    }
    println!(
        "{name}: answers {by_status:?}, {} without answer; the most a client had pushed when answered: {} KiB; executor RSS {:.1} -> max {:.1} MB (growth {:.1} MB)",
        failures.len(),
        most_sent / 1024,
        mb(before),
        mb(max),
        mb(max.saturating_sub(before))
    );
    for f in failures.iter().take(3) {
        println!("  failure: {f}");
    }
}

fn metric(text: &str, name: &str) -> String {
    text.lines()
        .filter(|l| l.starts_with(name))
        .map(|l| l.trim_start_matches("netbridge_executor_").to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn run() {
    let duration = Duration::from_secs(env_num("NBF_DURATION_SECS", 60));
    let idle = env_num("NBF_IDLE", 1000) as usize;
    let slow = env_num("NBF_SLOW", 100) as usize;
    let body_count = env_num("NBF_BODIES", 32) as usize;
    let mut extra = Vec::new();
    if let Ok(n) = std::env::var("NBF_MAX_CONNECTIONS") {
        extra.extend(["--max-connections".to_string(), n]);
    }
    let fds = raise_fd_limit();
    println!(
        "executor_flood: {} s, {idle} idle TLS + {slow} slow-header connections ({PER_ADDRESS} per address), executor flags {extra:?}, open-files limit {fds}, load average {}",
        duration.as_secs(),
        load_average()
    );
    let ex = Executor::start(&extra);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let signed = Arc::new(Signed {
        client: Client::new(),
        host: HostEntry {
            name: "flood".into(),
            addr: "127.0.0.1".into(),
            port: PORT,
        },
        transport: Transport::Pinned(ex.pin()),
        key: SecretKey::new(KEY.to_vec()),
    });

    runtime.block_on(async {
        let implemented = signed
            .command("implement-network", json!({"vlan": "100", "cidr": "10.7.0.0/24", "gateway": "10.7.0.1", "guest_type": "isolated", "extension_ip": "10.7.0.1"}))
            .await;
        assert!(
            matches!(implemented, Ok((200, _))),
            "implement-network: {implemented:?}"
        );
        let warm = signed.command("apply-fw-rules", fw_payload(1)).await;
        assert!(matches!(warm, Ok((200, _))), "apply-fw-rules: {warm:?}");
    });
    // The same signed traffic without a flood, for comparison.
    let quiet_health = Mutex::new(Samples::default());
    let quiet_commands = Mutex::new(Samples::default());
    runtime.block_on(async {
        for port in 0..100 {
            let start = Instant::now();
            let r = signed.send(Method::GET, "/v1/health", Vec::new()).await;
            record(&quiet_health, r, start, 200);
            let start = Instant::now();
            let r = signed
                .command("apply-fw-rules", fw_payload(1000 + port))
                .await;
            record(&quiet_commands, r, start, 200);
        }
    });
    summary(
        "quiet health",
        &quiet_health.lock().unwrap_or_else(|p| p.into_inner()),
    );
    summary(
        "quiet command",
        &quiet_commands.lock().unwrap_or_else(|p| p.into_inner()),
    );
    let rss_before = rss_kb(ex.pid());

    // 1. The flood.
    let attack = Arc::new(Attack::default());
    let connector = tls_connector(&ex.fingerprint);
    let flood_started = Instant::now();
    for i in 0..idle {
        let from = Ipv4Addr::new(127, 0, 1, 1 + (i / PER_ADDRESS) as u8);
        runtime.spawn(hold(connector.clone(), from, false, attack.clone()));
    }
    for i in 0..slow {
        let from = Ipv4Addr::new(127, 0, 2, 1 + (i / PER_ADDRESS) as u8);
        runtime.spawn(hold(connector.clone(), from, true, attack.clone()));
    }
    let stop_rss = Arc::new(AtomicBool::new(false));
    let rss_sampler = sample_rss(ex.pid(), stop_rss.clone());
    let health = Arc::new(Mutex::new(Samples::default()));
    let commands = Arc::new(Mutex::new(Samples::default()));
    let (held_idle, held_slow) = runtime.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut port = 2;
        let mut last_clear = Instant::now();
        let mut held_min = (usize::MAX, usize::MAX);
        while flood_started.elapsed() < duration {
            tick.tick().await;
            if last_clear.elapsed() >= Duration::from_secs(5) {
                // New bridge connections must get in during the flood too.
                signed.client.clear_pool();
                last_clear = Instant::now();
            }
            let start = Instant::now();
            let r = signed.send(Method::GET, "/v1/health", Vec::new()).await;
            record(&health, r, start, 200);
            port += 1;
            let start = Instant::now();
            let r = signed.command("apply-fw-rules", fw_payload(port)).await;
            record(&commands, r, start, 200);
            if flood_started.elapsed() > duration / 2 {
                held_min = (
                    held_min.0.min(attack.idle_held.load(Ordering::Relaxed)),
                    held_min.1.min(attack.slow_held.load(Ordering::Relaxed)),
                );
            }
        }
        held_min
    });
    let metrics = runtime
        .block_on(signed.send_raw(Method::GET, "/metrics", Vec::new()))
        .map(|(_, text)| String::from_utf8_lossy(&text).into_owned())
        .unwrap_or_default();
    attack.stop.store(true, Ordering::Relaxed);
    stop_rss.store(true, Ordering::Relaxed);
    let rss_max = rss_sampler.join().unwrap_or(0);
    let health_ok = summary(
        "signed health",
        &health.lock().unwrap_or_else(|p| p.into_inner()),
    );
    let commands_ok = summary(
        "signed command",
        &commands.lock().unwrap_or_else(|p| p.into_inner()),
    );
    println!(
        "attackers: {} connections opened, {} closed by the executor, {} refused or failed at connect; held in the second half (minimum): idle {}/{idle}, slow {}/{slow}",
        attack.opened.load(Ordering::Relaxed),
        attack.closed_by_executor.load(Ordering::Relaxed),
        attack.refused.load(Ordering::Relaxed),
        if held_idle == usize::MAX { 0 } else { held_idle },
        if held_slow == usize::MAX { 0 } else { held_slow },
    );
    let text = metrics;
    println!(
        "executor metrics: {}; {}; {}; {}",
        metric(&text, "netbridge_executor_timeouts_total{"),
        metric(&text, "netbridge_executor_connections_evicted_total"),
        metric(&text, "netbridge_executor_connections_refused_total{"),
        metric(&text, "netbridge_executor_connections{"),
    );
    println!(
        "executor RSS: {:.1} MB before, {:.1} MB max during the flood (goal < 100 MB: {}); every signed request answered: {}",
        mb(rss_before),
        mb(rss_max),
        if rss_max < 100 * 1024 { "met" } else { "NOT met" },
        if health_ok && commands_ok { "met" } else { "NOT met" },
    );

    // 2 and 3. Bodies, once the flood's connections are gone.
    let wound_down = Instant::now();
    while attack.idle_held.load(Ordering::Relaxed) + attack.slow_held.load(Ordering::Relaxed) > 0 {
        assert!(
            wound_down.elapsed() < Duration::from_secs(30),
            "attackers still holding connections"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    runtime.block_on(async {
        let (results, before, max) = bodies(&ex, body_count, Vec::new).await;
        report_bodies(
            &format!("{body_count} unsigned 16 MiB bodies"),
            &results,
            before,
            max,
        );
        let all_refused = results.iter().all(|r| matches!(r, Ok((401, _))));
        println!(
            "unsigned bodies refused before being read: {}; RSS growth < 20 MB: {}",
            if all_refused { "met" } else { "NOT met" },
            if max.saturating_sub(before) < 20 * 1024 {
                "met"
            } else {
                "NOT met"
            }
        );
        let forged = || {
            netbridge_testbed::signature_headers(
                b"not-the-executor-key-00000000",
                "POST",
                "/v1/commands/implement-network",
                netbridge_testbed::now_secs(),
                b"",
            )
        };
        let (results, before, max) = bodies(&ex, body_count, forged).await;
        report_bodies(
            &format!("{body_count} forged-signature 16 MiB bodies"),
            &results,
            before,
            max,
        );
    });
    println!("load average at the end: {}", load_average());
}

fn record(
    samples: &Mutex<Samples>,
    result: Result<(u16, Value), String>,
    start: Instant,
    want: u16,
) {
    let mut s = samples.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok((status, _)) if status == want => s.latencies.push(start.elapsed()),
        Ok((status, body)) => s.failures.push(format!("HTTP {status}: {body}")),
        Err(e) => s.failures.push(e),
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("executor_flood: skipped (needs root)");
        return;
    }
    if std::env::var_os(CHILD_ENV).is_some() {
        // SAFETY: mount(2) with static arguments in our private mount namespace.
        let rc = unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/run/netns".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "tmpfs on /run/netns");
        netbridge_testbed::run(&["ip", "link", "set", "lo", "up"]).expect("loopback up");
        run();
        return;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let status = Command::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "--"])
        .arg(exe)
        .args(std::env::args().skip(1))
        .env(CHILD_ENV, "1")
        .status()
        .expect("unshare");
    if !status.success() {
        eprintln!("executor_flood: benchmark failed");
        std::process::exit(1);
    }
}
