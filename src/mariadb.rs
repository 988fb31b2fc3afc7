//! A private MariaDB server for tests and benchmarks: Debian's
//! `mariadb-server` binaries, its own data directory under a temporary
//! directory (`mariadb-install-db`), listening on a Unix socket and a
//! loopback port, stopped by PID and removed at the end. No system service
//! is used or touched.
//!
//! [`shared`] starts one server per test process (on first use) and stops
//! it when the process exits; each test takes its own database from it
//! ([`MariaDb::cloud_database`]) holding the CloudStack 4.23 tables netbridge
//! uses (`sql/cloudstack-4.23-subset.sql`), so tests run in parallel.
//!
//! When the binaries are missing the tests fail with a message naming the
//! package (they are not skipped: CI installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;

/// What the CloudStack tables look like in a 4.23 database (the subset
/// netbridge needs, written from the public schema for the tests).
pub const CLOUDSTACK_SCHEMA: &str = include_str!("sql/cloudstack-4.23-subset.sql");

/// The account the tests' netbridge uses (over TCP, with a password).
pub const USER: &str = "netbridge";
pub const PASSWORD: &str = "nb-test-Pa55";

const INSTALL_DB: &str = "mariadb-install-db";
const SERVER: &str = "mariadbd";
/// How long a server may take to start or stop on a busy 2-core machine.
const DEADLINE: Duration = Duration::from_secs(120);

/// A running private server.
pub struct MariaDb {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    socket: PathBuf,
    port: u16,
}

/// One database of the server: CloudStack's tables, and netbridge's own
/// once a store opened it.
#[derive(Debug, Clone)]
pub struct CloudDb {
    pub name: String,
    /// `mysql://netbridge:…@127.0.0.1:<port>/<name>`.
    pub url: String,
    /// The same through the Unix socket (reachable from any network
    /// namespace): `mysql://netbridge:…@localhost/<name>?socket=…`.
    pub socket_url: String,
    socket: PathBuf,
    port: u16,
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            "/usr/sbin".into(),
            "/usr/bin".into(),
            "/usr/local/sbin".into(),
        ])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Waits (bounded) for `pid` to exit, through a pidfd: no polling of time.
fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    // SAFETY: plain syscalls on a pid we own (a child not yet reaped).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) } as i32;
    if fd >= 0 {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        if ready <= 0 {
            return false;
        }
    }
    child.wait().is_ok()
}

impl MariaDb {
    /// Installs a data directory and starts the server; panics with the
    /// server's own log when it does not come up.
    pub fn start() -> MariaDb {
        MariaDb::start_with(&[])
    }

    /// As [`MariaDb::start`], with extra server options (`--key=value`).
    pub fn start_with(extra: &[&str]) -> MariaDb {
        let install = find_binary(INSTALL_DB).unwrap_or_else(|| {
            panic!(
                "{INSTALL_DB} not found: install Debian's mariadb-server package \
                 (apt-get install mariadb-server mariadb-client); `make deps` and .ci/run do"
            )
        });
        let server = find_binary(SERVER).unwrap_or_else(|| {
            panic!("{SERVER} not found: install Debian's mariadb-server package")
        });
        let dir = tempfile::Builder::new()
            .prefix("nb-mariadb-")
            .tempdir()
            .expect("temporary directory");
        let data = dir.path().join("data");
        let mut install_cmd = Command::new(&install);
        install_cmd
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if is_root() {
            install_cmd.arg("--user=root");
        }
        let out = install_cmd.output().expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let socket = dir.path().join("mysqld.sock");
        let log = dir.path().join("server.log");
        // A port picked free may be taken before the server binds it (other
        // test processes): then start again on another one.
        for attempt in 0..3 {
            let port = free_port();
            let mut cmd = Command::new(&server);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!(
                    "--pid-file={}",
                    dir.path().join("mysqld.pid").display()
                ))
                .arg(format!("--log-error={}", log.display()))
                .arg("--skip-name-resolve")
                .arg("--performance-schema=OFF")
                .arg("--innodb-buffer-pool-size=64M")
                .arg("--max-connections=400")
                .arg("--innodb-lock-wait-timeout=10");
            if is_root() {
                cmd.arg("--user=root");
            }
            cmd.args(extra);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            crate::die_with_parent(&mut cmd);
            let child = cmd.spawn().expect("start mariadbd");
            let mut db = MariaDb {
                child: Some(child),
                dir: None,
                socket: socket.clone(),
                port,
            };
            match db.wait_ready() {
                Ok(()) => {
                    db.dir = Some(dir);
                    db.setup_account();
                    return db;
                }
                Err(e) => {
                    db.stop();
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if attempt < 2 && text.contains("Address already in use") {
                        continue;
                    }
                    panic!("MariaDB did not start: {e}\n--- server log ---\n{text}");
                }
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Until the server answers on its socket, or it exited, or the
    /// deadline passed.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("mariadbd exited: {status}"));
                }
            }
            if self.socket.exists() && self.root().is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("not ready after {DEADLINE:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn root(&self) -> Result<mysql::Conn, mysql::Error> {
        let opts = mysql::OptsBuilder::new()
            .socket(Some(self.socket.display().to_string()))
            .user(Some("root"))
            .prefer_socket(true);
        mysql::Conn::new(opts)
    }

    /// A root connection through the socket (setup, assertions).
    pub fn root_conn(&self) -> mysql::Conn {
        self.root().expect("root connection to the private MariaDB")
    }

    fn setup_account(&self) {
        let mut c = self.root_conn();
        for host in ["127.0.0.1", "localhost"] {
            c.query_drop(format!(
                "CREATE USER IF NOT EXISTS '{USER}'@'{host}' IDENTIFIED BY '{PASSWORD}'"
            ))
            .expect("create user");
            c.query_drop(format!("GRANT ALL ON *.* TO '{USER}'@'{host}'"))
                .expect("grant");
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The server's PID (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A new database `<prefix>_<n>` with CloudStack's tables.
    pub fn cloud_database(&self, prefix: &str) -> CloudDb {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}_{n}");
        let mut c = self.root_conn();
        c.query_drop(format!("CREATE DATABASE `{name}` CHARACTER SET utf8"))
            .expect("create database");
        c.query_drop(format!("USE `{name}`")).expect("use");
        for statement in CLOUDSTACK_SCHEMA
            .split(";\n")
            .map(|s| {
                s.lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .filter(|s| !s.trim().is_empty())
        {
            c.query_drop(&statement)
                .unwrap_or_else(|e| panic!("CloudStack schema: {e}\n{statement}"));
        }
        CloudDb {
            url: format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{}/{name}", self.port),
            socket_url: format!(
                "mysql://{USER}:{PASSWORD}@localhost/{name}?socket={}",
                self.socket.display()
            ),
            name,
            socket: self.socket.clone(),
            port: self.port,
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL past the deadline) and
    /// removes its directory.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by PID.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            if !wait_exit(&mut child, DEADLINE) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
    }
}

impl CloudDb {
    /// A connection as the tests' account, on this database.
    pub fn conn(&self) -> mysql::Conn {
        let opts = mysql::OptsBuilder::new()
            .ip_or_hostname(Some("127.0.0.1"))
            .tcp_port(self.port)
            .user(Some(USER))
            .pass(Some(PASSWORD))
            .db_name(Some(self.name.clone()));
        mysql::Conn::new(opts).expect("connection to the test database")
    }

    /// Adds a physical network with this UUID (as CloudStack would);
    /// returns its numeric id.
    pub fn add_physical_network(&self, uuid: &str) -> u64 {
        let mut c = self.conn();
        c.exec_drop(
            "INSERT INTO physical_network (uuid, name, data_center_id, state, created)
             VALUES (?, ?, 1, 'Enabled', UTC_TIMESTAMP())",
            (uuid, format!("pn-{uuid}")),
        )
        .expect("insert physical network");
        c.last_insert_id()
    }

    /// Adds a cluster with this UUID; returns its numeric id.
    pub fn add_cluster(&self, uuid: &str) -> u64 {
        let mut c = self.conn();
        c.exec_drop(
            "INSERT INTO cluster (uuid, name, data_center_id, hypervisor_type)
             VALUES (?, ?, 1, 'KVM')",
            (uuid, format!("cluster-{uuid}")),
        )
        .expect("insert cluster");
        c.last_insert_id()
    }

    /// `mariadb-dump` of the database (as an operator's backup would be).
    pub fn dump(&self) -> String {
        let dump = find_binary("mariadb-dump")
            .or_else(|| find_binary("mysqldump"))
            .expect("mariadb-dump not found: install Debian's mariadb-client package");
        let out = Command::new(dump)
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .arg("--user=root")
            .arg("--skip-extended-insert")
            .arg(&self.name)
            .output()
            .expect("run mariadb-dump");
        assert!(
            out.status.success(),
            "mariadb-dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

static SHARED: OnceLock<Mutex<Option<MariaDb>>> = OnceLock::new();

extern "C" fn stop_shared_at_exit() {
    if let Some(lock) = SHARED.get() {
        if let Ok(mut guard) = lock.lock() {
            if let Some(mut db) = guard.take() {
                db.stop();
            }
        }
    }
}

/// The test process's server, started on first use and stopped (by PID,
/// directory removed) by an exit hook when the process exits. The server
/// dies with the thread that started it (PR_SET_PDEATHSIG), so it is
/// started from a thread that lives as long as the process: a test run
/// killed outright does not leave it behind either.
pub fn shared() -> &'static Mutex<Option<MariaDb>> {
    SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("mariadb-keeper".into())
            .spawn(move || {
                let _ = tx.send(std::panic::catch_unwind(MariaDb::start));
                loop {
                    std::thread::park();
                }
            })
            .expect("thread");
        let db = match rx.recv() {
            Ok(Ok(db)) => db,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("the private MariaDB did not start"),
        };
        // SAFETY: registering a plain function without captured state.
        unsafe { libc::atexit(stop_shared_at_exit) };
        Mutex::new(Some(db))
    })
}

/// A fresh CloudStack database on the shared server.
pub fn cloud_database(prefix: &str) -> CloudDb {
    let guard = shared().lock().unwrap_or_else(|e| e.into_inner());
    guard
        .as_ref()
        .expect("the shared MariaDB was stopped")
        .cloud_database(prefix)
}
