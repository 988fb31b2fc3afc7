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

use std::os::unix::process::CommandExt as _;
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
        create_cloud_database(&mut self.root_conn(), &name);
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

/// A Galera cluster of private MariaDB nodes on loopback ports (Debian's
/// `galera-4`), each with its own data directory; node 0 bootstraps the
/// cluster, the others join by state transfer (rsync). CloudStack
/// operators run their database like this.
pub struct Galera {
    nodes: Vec<GaleraNode>,
    dir: Option<tempfile::TempDir>,
    cluster_address: String,
}

struct GaleraNode {
    child: Option<Child>,
    data: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    port: u16,
    galera_port: u16,
    ist_port: u16,
    sst_port: u16,
}

const GALERA_PROVIDER: &str = "/usr/lib/galera/libgalera_smm.so";

/// The account the nodes run as when the tests run as root: the rsync
/// state transfer's daemon writes as this account too (as root it would
/// switch to `nobody` and fail on root's private directories).
const GALERA_USER: &str = "nobody";

/// User and group ids of a local account (panics when it does not exist).
fn account_ids(user: &str) -> (u32, u32) {
    let name = std::ffi::CString::new(user).expect("account name");
    // SAFETY: getpwnam reads the account database; the record it returns
    // is read at once, before any other call could reuse it.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!entry.is_null(), "no account {user}");
    // SAFETY: checked non-null above.
    unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
}

/// `chown -R user` through the argument vector (no shell).
fn chown_tree(path: &Path, user: &str) {
    let ok = Command::new("chown")
        .arg("-R")
        .arg(user)
        .arg(path)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "chown -R {user} {}", path.display());
}

impl Galera {
    /// Starts `size` nodes and waits until all are synced.
    pub fn start(size: usize) -> Galera {
        assert!(
            Path::new(GALERA_PROVIDER).exists(),
            "{GALERA_PROVIDER} not found: install Debian's galera-4 package (and rsync)"
        );
        let install = find_binary(INSTALL_DB).unwrap_or_else(|| {
            panic!("{INSTALL_DB} not found: install Debian's mariadb-server package")
        });
        let dir = tempfile::Builder::new()
            .prefix("nb-galera-")
            .tempdir()
            .expect("temporary directory");
        if is_root() {
            // The nodes run as `nobody` (see GALERA_USER): it must reach them.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        let nodes: Vec<GaleraNode> = (0..size)
            .map(|i| {
                let node_dir = dir.path().join(format!("node{i}"));
                let data = node_dir.join("data");
                std::fs::create_dir_all(&node_dir).expect("node directory");
                let mut cmd = Command::new(&install);
                cmd.arg("--no-defaults")
                    .arg(format!("--datadir={}", data.display()))
                    .arg("--auth-root-authentication-method=normal")
                    .arg("--skip-test-db")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                if is_root() {
                    cmd.arg(format!("--user={GALERA_USER}"));
                }
                let out = cmd.output().expect("run mariadb-install-db");
                assert!(
                    out.status.success(),
                    "mariadb-install-db for Galera node {i} failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                if is_root() {
                    chown_tree(&node_dir, GALERA_USER);
                }
                GaleraNode {
                    child: None,
                    data,
                    socket: node_dir.join("mysqld.sock"),
                    log: node_dir.join("server.log"),
                    port: free_port(),
                    galera_port: free_port(),
                    ist_port: free_port(),
                    sst_port: free_port(),
                }
            })
            .collect();
        let cluster_address = format!(
            "gcomm://{}",
            nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.galera_port))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut galera = Galera {
            nodes,
            dir: Some(dir),
            cluster_address,
        };
        galera.launch(0, true);
        galera.wait_synced(0);
        let mut c = galera.root_conn(0);
        for host in ["127.0.0.1", "localhost"] {
            c.query_drop(format!(
                "CREATE USER IF NOT EXISTS '{USER}'@'{host}' IDENTIFIED BY '{PASSWORD}'"
            ))
            .expect("create user");
            c.query_drop(format!("GRANT ALL ON *.* TO '{USER}'@'{host}'"))
                .expect("grant");
        }
        for i in 1..size {
            galera.launch(i, false);
            galera.wait_synced(i);
        }
        // A donor of a state transfer goes back to Synced on its own, after
        // its joiner did; until then it refuses or holds writes.
        for i in 0..size {
            galera.wait_synced(i);
        }
        galera
    }

    fn launch(&mut self, i: usize, bootstrap: bool) {
        let server = find_binary(SERVER).expect("mariadbd");
        let address = self.cluster_address.clone();
        let n = &mut self.nodes[i];
        let mut cmd = Command::new(server);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", n.data.display()))
            .arg(format!("--socket={}", n.socket.display()))
            .arg(format!("--port={}", n.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--log-error={}", n.log.display()))
            .arg("--skip-name-resolve")
            .arg("--performance-schema=OFF")
            .arg("--innodb-buffer-pool-size=64M")
            .arg("--binlog-format=ROW")
            .arg("--innodb-autoinc-lock-mode=2")
            .arg("--wsrep-on=ON")
            .arg(format!("--wsrep-provider={GALERA_PROVIDER}"))
            .arg("--wsrep-cluster-name=netbridge-test")
            .arg(format!("--wsrep-cluster-address={address}"))
            .arg(format!("--wsrep-node-name=node{i}"))
            .arg(format!("--wsrep-node-address=127.0.0.1:{}", n.galera_port))
            .arg(format!("--wsrep-node-incoming-address=127.0.0.1:{}", n.port))
            .arg(format!(
                "--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{};ist.recv_addr=127.0.0.1:{};gcache.size=64M;evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S",
                n.galera_port, n.ist_port
            ))
            .arg(format!("--wsrep-sst-receive-address=127.0.0.1:{}", n.sst_port))
            .arg("--wsrep-sst-method=rsync");
        if bootstrap {
            cmd.arg("--wsrep-new-cluster");
        }
        if is_root() {
            // Started as the account rather than switching to it itself
            // (`--user`): a process that changes its credentials loses its
            // parent-death signal, and a node must not outlive a test
            // process that was killed.
            let (uid, gid) = account_ids(GALERA_USER);
            cmd.uid(uid).gid(gid);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        crate::die_with_parent(&mut cmd);
        n.child = Some(cmd.spawn().expect("start a Galera node"));
    }

    /// Until node `i` answers and reports `Synced` (bounded; panics with its log).
    pub fn wait_synced(&mut self, i: usize) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(child) = self.nodes[i].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.nodes[i].child = None;
                    panic!("Galera node {i} exited ({status})\n{}", self.logs());
                }
            }
            if let Ok(mut c) = self.try_root(i) {
                let state: Option<(String, String)> = c
                    .query_first("SHOW STATUS LIKE 'wsrep_local_state_comment'")
                    .unwrap_or(None);
                if state.is_some_and(|(_, v)| v == "Synced") {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "Galera node {i} not synced after {DEADLINE:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of every node's log (for failures).
    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(150).collect();
            out.push_str(&format!("--- node {i} log (last lines) ---\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn try_root(&self, i: usize) -> Result<mysql::Conn, mysql::Error> {
        let opts = mysql::OptsBuilder::new()
            .socket(Some(self.nodes[i].socket.display().to_string()))
            .user(Some("root"))
            .prefer_socket(true);
        mysql::Conn::new(opts)
    }

    pub fn root_conn(&self, i: usize) -> mysql::Conn {
        self.try_root(i).expect("root connection to a Galera node")
    }

    /// A CloudStack database created through node 0 (replicated to all);
    /// `url(i)` reaches it through node `i`.
    pub fn cloud_database(&self, prefix: &str) -> GaleraDb {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!("{prefix}_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        create_cloud_database(&mut self.root_conn(0), &name);
        GaleraDb {
            name,
            ports: self.nodes.iter().map(|n| n.port).collect(),
        }
    }

    /// SIGKILL of node `i` (its data directory stays).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its data directory: it rejoins the cluster
    /// (incremental or full state transfer).
    pub fn restart(&mut self, i: usize) {
        self.launch(i, false);
        self.wait_synced(i);
        // Its donor, too, is back to Synced before anyone writes to it.
        for other in 0..self.nodes.len() {
            if self.nodes[other].child.is_some() {
                self.wait_synced(other);
            }
        }
    }

    /// `wsrep_cluster_size` seen by node `i`.
    pub fn cluster_size(&self, i: usize) -> u32 {
        let row: Option<(String, String)> = self
            .root_conn(i)
            .query_first("SHOW STATUS LIKE 'wsrep_cluster_size'")
            .expect("status");
        row.and_then(|(_, v)| v.parse().ok()).unwrap_or(0)
    }

    /// Stops every node (SIGTERM, SIGKILL past the deadline) and removes
    /// the directories.
    pub fn stop(&mut self) {
        for n in self.nodes.iter_mut().rev() {
            if let Some(mut child) = n.child.take() {
                // SAFETY: signalling our own child by PID.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                if !wait_exit(&mut child, DEADLINE) {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

impl Drop for Galera {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A database of a Galera cluster.
#[derive(Debug, Clone)]
pub struct GaleraDb {
    pub name: String,
    ports: Vec<u16>,
}

impl GaleraDb {
    /// The location through node `i`.
    pub fn url(&self, i: usize) -> String {
        format!(
            "mysql://{USER}:{PASSWORD}@127.0.0.1:{}/{}",
            self.ports[i], self.name
        )
    }

    /// A connection through node `i`.
    pub fn conn(&self, i: usize) -> mysql::Conn {
        let opts = mysql::OptsBuilder::new()
            .ip_or_hostname(Some("127.0.0.1"))
            .tcp_port(self.ports[i])
            .user(Some(USER))
            .pass(Some(PASSWORD))
            .db_name(Some(self.name.clone()));
        mysql::Conn::new(opts).expect("connection to a Galera node")
    }
}

/// Creates database `name` with CloudStack's tables through `c`.
fn create_cloud_database(c: &mut mysql::Conn, name: &str) {
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
}
