//! The real `netbridge-executor` binary as a child process on loopback with
//! TLS: certificate made by its own `gen-cert`, key files written 0600, the
//! port it bound (`--listen 127.0.0.1:0`) read from its log, stopped by PID
//! when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Generous bound for a start on a busy 2-core machine.
const START_DEADLINE: Duration = Duration::from_secs(60);

pub fn executor_binary() -> PathBuf {
    netbridge_testbed::workspace_bin("netbridge-executor")
}

/// Writes a secret file with mode 0600 (the executor refuses looser modes).
pub fn write_secret(path: &Path, data: &str) {
    std::fs::write(path, data).expect("write secret file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 0600");
}

/// `netbridge-executor gen-cert` into `dir`: returns the fingerprint it printed.
pub fn gen_cert(dir: &Path, name: &str) -> String {
    let out = Command::new(executor_binary())
        .args(["gen-cert", "--out-dir"])
        .arg(dir)
        .args(["--name", name, "--san", "127.0.0.1"])
        .output()
        .expect("run gen-cert");
    assert!(
        out.status.success(),
        "gen-cert failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

pub struct ExecutorProcess {
    child: Child,
    pub dir: PathBuf,
    pub port: u16,
    pub fingerprint: String,
    pub key: String,
    pub host_name: String,
    log: Arc<Mutex<String>>,
}

pub struct ExecutorOptions<'a> {
    pub host_name: &'a str,
    pub key: &'a str,
    /// Bearer token for `GET /metrics` (`--metrics-token-file`).
    pub metrics_token: Option<&'a str>,
    /// Extra arguments (e.g. `--log-level warn`).
    pub extra: Vec<String>,
}

impl ExecutorProcess {
    /// Starts an executor whose files live under `dir` (created if needed):
    /// `cert.pem`/`key.pem`, `executor.key`, `metrics.token`, `state/`.
    pub fn start(dir: &Path, options: ExecutorOptions<'_>) -> ExecutorProcess {
        std::fs::create_dir_all(dir).expect("executor dir");
        let fingerprint = if dir.join("cert.pem").exists() {
            let out = Command::new(executor_binary())
                .args(["fingerprint", "--cert"])
                .arg(dir.join("cert.pem"))
                .output()
                .expect("run fingerprint");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        } else {
            gen_cert(dir, options.host_name)
        };
        write_secret(&dir.join("executor.key"), options.key);
        let mut command = Command::new(executor_binary());
        command
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(dir.join("state"))
            .arg("--key-file")
            .arg(dir.join("executor.key"))
            .arg("--tls-cert")
            .arg(dir.join("cert.pem"))
            .arg("--tls-key")
            .arg(dir.join("key.pem"))
            .args(["--host-name", options.host_name, "--log-level", "info"])
            .args(&options.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(token) = options.metrics_token {
            write_secret(&dir.join("metrics.token"), token);
            command
                .arg("--metrics-token-file")
                .arg(dir.join("metrics.token"));
        }
        let mut child = command.spawn().expect("spawn netbridge-executor");
        let stderr = child.stderr.take().expect("stderr pipe");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<u16>();
        let sink = log.clone();
        // Drains the log for the whole life of the process (a full pipe
        // would block the executor) and reports the bound port once.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(port) = bound_port(&line) {
                    let _ = tx.send(port);
                }
                let mut text = sink.lock().unwrap_or_else(|p| p.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        let port = match rx.recv_timeout(START_DEADLINE) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "executor did not report a listening port within {START_DEADLINE:?}:\n{}",
                    log.lock().unwrap_or_else(|p| p.into_inner())
                );
            }
        };
        ExecutorProcess {
            child,
            dir: dir.to_path_buf(),
            port,
            fingerprint,
            key: options.key.to_string(),
            host_name: options.host_name.to_string(),
            log,
        }
    }

    /// `127.0.0.1:<port>`, as listed in the registration detail `hosts`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the executor (SIGKILL by PID) and waits for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ExecutorProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The port of the executor's "listening on 127.0.0.1:PORT" log line.
fn bound_port(line: &str) -> Option<u16> {
    let rest = line.split("listening on ").nth(1)?;
    let addr = rest.split_whitespace().next()?;
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}
