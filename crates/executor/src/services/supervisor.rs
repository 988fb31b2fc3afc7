//! Runs a daemon (dnsmasq, haproxy, later radvd) inside a named network
//! namespace and tracks its exact PID.
//!
//! - The child `setns()`es into `/run/netns/<ns>` (opened by the parent, so
//!   the child only makes async-signal-safe calls) and starts a new session,
//!   so it neither shares the executor's signals nor dies with it.
//! - Daemons run in the foreground: the child's PID is the daemon's PID. It
//!   is written to `pid_file` so a restarted executor can find it again.
//! - Every daemon is held by a pidfd opened while its identity is certain
//!   (our own unreaped child, or an adopted PID that runs `program` with
//!   `marker` among its arguments in the expected namespace, checked before
//!   and after opening). Signals go through the pidfd and exit is observed on
//!   it, so a reused PID is never signalled and a daemon that is still
//!   exiting (empty `/proc/<pid>/cmdline`) is never taken for gone.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::metadata::netns_path;
use super::ServicesError;

/// How to run one daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSpec {
    /// Label for logs (`dnsmasq cs-net-42`).
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub netns: Option<String>,
    /// Where the exact PID is recorded.
    pub pid_file: PathBuf,
    /// stdout and stderr go here (appended); `None` discards them.
    pub log_file: Option<PathBuf>,
    /// An argument that identifies this instance (e.g. its config path).
    pub marker: OsString,
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    spec: DaemonSpec,
    pid: u32,
    /// Refers to exactly this process for its whole life.
    pidfd: OwnedFd,
    child: Option<Child>,
    /// Seen with a SIGHUP handler installed (see [`Daemon::hup`]).
    hup_ready: bool,
}

/// Whether process `pid` has a handler for `sig` (`SigCgt` of
/// `/proc/<pid>/status`).
fn catches(pid: u32, sig: libc::c_int) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let Some(mask) = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
    else {
        return false;
    };
    (1..=64).contains(&sig) && mask & (1u64 << (sig - 1)) != 0
}

fn proc_err(spec: &DaemonSpec, what: impl std::fmt::Display) -> ServicesError {
    ServicesError::Process(format!("{}: {what}", spec.name))
}

/// Inode of the namespace the daemon must run in (`None` in the spec: the
/// executor's own namespace).
fn ns_inode(spec: &DaemonSpec) -> Result<Option<u64>, ServicesError> {
    match &spec.netns {
        None => {
            let m = fs::metadata("/proc/self/ns/net")
                .map_err(|e| ServicesError::io("stat /proc/self/ns/net", e))?;
            Ok(Some(m.ino()))
        }
        Some(ns) => {
            let p = netns_path(ns)?;
            let m = fs::metadata(&p)
                .map_err(|e| ServicesError::io(format!("stat {}", p.display()), e))?;
            Ok(Some(m.ino()))
        }
    }
}

/// Whether `pid` runs `spec` right now (program name, marker, namespace).
pub fn identify(pid: u32, spec: &DaemonSpec) -> bool {
    let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
    let Some(argv0) = args.first() else {
        return false;
    };
    let want = spec.program.file_name().map(|n| n.as_bytes());
    let got = Path::new(std::ffi::OsStr::from_bytes(argv0))
        .file_name()
        .map(|n| n.as_bytes());
    if want.is_none() || want != got {
        return false;
    }
    if !args.iter().any(|a| *a == spec.marker.as_bytes()) {
        return false;
    }
    match ns_inode(spec) {
        Ok(Some(ino)) => fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == ino),
        Ok(None) => true,
        Err(_) => false,
    }
}

/// `pidfd_open(2)`: a descriptor for process `pid` that stays bound to it
/// even after the PID number is reused.
fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(super::descriptors::above_select_limit(fd))
}

/// Waits up to `timeout` for the process behind `pidfd` to exit (a pidfd
/// becomes readable when its process has terminated); true when it has.
fn pidfd_wait(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            return true;
        }
        if rc == 0 {
            return false;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}

fn read_pid_file(path: &Path) -> Option<u32> {
    fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 1)
}

impl Daemon {
    /// Starts the daemon.
    pub fn spawn(spec: DaemonSpec) -> Result<Daemon, ServicesError> {
        Self::spawn_with(spec, &[])
    }

    /// Starts the daemon with extra arguments (e.g. haproxy `-sf <pid>`).
    pub fn spawn_with(spec: DaemonSpec, extra: &[OsString]) -> Result<Daemon, ServicesError> {
        let ns_file = match &spec.netns {
            Some(ns) => {
                let p = netns_path(ns)?;
                Some(
                    File::open(&p)
                        .map_err(|e| ServicesError::io(format!("open {}", p.display()), e))?,
                )
            }
            None => None,
        };
        let (out, err) = match &spec.log_file {
            Some(p) => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)
                    .map_err(|e| ServicesError::io(format!("open {}", p.display()), e))?;
                let f2 = f.try_clone().map_err(|e| ServicesError::io("dup log", e))?;
                (Stdio::from(f), Stdio::from(f2))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let ns_fd = ns_file.as_ref().map(|f| f.as_raw_fd());
        // SAFETY: only async-signal-safe calls (setns, setsid, umask) on an
        // fd that stays open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                // Files the daemon creates in the state directory (pid
                // files, sockets) are private to root.
                libc::umask(0o077);
                if let Some(fd) = ns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| proc_err(&spec, format!("spawn {}: {e}", spec.program.display())))?;
        drop(ns_file);
        let pid = child.id();
        // Our child cannot be reaped by anyone else while we hold it, so the
        // PID is certainly still this process.
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                return Err(proc_err(&spec, format!("pidfd_open {pid}: {e}")));
            }
        };
        let d = Daemon {
            spec,
            pid,
            pidfd,
            child: Some(child),
            hup_ready: false,
        };
        super::store::replace_file(&d.spec.pid_file, format!("{pid}\n").as_bytes(), 0o600)?;
        log::info!("{}: started pid {pid}", d.spec.name);
        Ok(d)
    }

    /// Finds the daemon a previous executor started (from `pid_file`), if it
    /// still runs exactly `spec`. A stale PID file is removed.
    pub fn adopt(spec: DaemonSpec) -> Option<Daemon> {
        let pid = read_pid_file(&spec.pid_file)?;
        // Identify, open, identify again: if the second check still holds,
        // the pidfd was opened on the right process (not a PID reused in
        // between).
        let pidfd = identify(pid, &spec)
            .then(|| pidfd_open(pid).ok())
            .flatten()
            .filter(|_| identify(pid, &spec));
        if let Some(pidfd) = pidfd {
            log::info!("{}: adopted running pid {pid}", spec.name);
            Some(Daemon {
                spec,
                pid,
                pidfd,
                child: None,
                hup_ready: false,
            })
        } else {
            log::info!(
                "{}: pid file names {pid}, which is not this daemon; ignoring it",
                spec.name
            );
            let _ = fs::remove_file(&spec.pid_file);
            None
        }
    }

    /// Adopts the running daemon or starts a new one.
    pub fn ensure(spec: DaemonSpec) -> Result<Daemon, ServicesError> {
        match Self::adopt(spec.clone()) {
            Some(d) => Ok(d),
            None => Self::spawn(spec),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn spec(&self) -> &DaemonSpec {
        &self.spec
    }

    /// Whether the process still runs (reaping it when it is our child).
    pub fn is_running(&mut self) -> bool {
        if pidfd_wait(&self.pidfd, Duration::ZERO) {
            self.reap();
            return false;
        }
        true
    }

    /// Collects our child's exit status once it has terminated.
    fn reap(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.try_wait();
        }
    }

    /// Sends `sig` through the pidfd (never to a reused PID).
    pub fn signal(&mut self, sig: libc::c_int) -> Result<(), ServicesError> {
        if !self.is_running() {
            return Err(proc_err(
                &self.spec,
                format!("pid {} is no longer running", self.pid),
            ));
        }
        // SAFETY: pidfd_send_signal(2) on a pidfd we own, no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc != 0 {
            return Err(proc_err(&self.spec, std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// SIGHUP (dnsmasq re-reads its hosts and option files). A daemon
    /// started moments ago may not have installed its handler yet, and the
    /// default action of SIGHUP would kill it: wait (bounded) for the
    /// handler first, once per daemon.
    pub fn hup(&mut self) -> Result<(), ServicesError> {
        if !self.hup_ready {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !catches(self.pid, libc::SIGHUP) && Instant::now() < deadline && self.is_running()
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            self.hup_ready = catches(self.pid, libc::SIGHUP);
        }
        self.signal(libc::SIGHUP)
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; removes the PID file.
    /// Stopping a daemon that already exited is not an error.
    pub fn stop(mut self, grace: Duration) -> Result<(), ServicesError> {
        if self.is_running() {
            self.signal(libc::SIGTERM)?;
            if !self.wait_exit(grace) {
                log::warn!(
                    "{}: pid {} ignored SIGTERM, killing it",
                    self.spec.name,
                    self.pid
                );
                let _ = self.signal(libc::SIGKILL);
                self.wait_exit(Duration::from_secs(5));
            }
        }
        if read_pid_file(&self.spec.pid_file) == Some(self.pid) {
            let _ = fs::remove_file(&self.spec.pid_file);
        }
        log::info!("{}: stopped pid {}", self.spec.name, self.pid);
        Ok(())
    }

    /// Waits until the process has terminated; true when it has.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        if pidfd_wait(&self.pidfd, timeout) {
            self.reap();
            return true;
        }
        false
    }

    /// Stop then start with `spec` (a changed main configuration).
    pub fn restart(self, spec: DaemonSpec, grace: Duration) -> Result<Daemon, ServicesError> {
        self.stop(grace)?;
        Self::spawn(spec)
    }

    /// haproxy graceful reload: a new process with `-sf <old pid>` takes over
    /// the listeners and tells the old one to finish its connections. Returns
    /// `(new, old)`; keep `old` and call [`Daemon::is_running`] (which reaps
    /// it) until it has exited.
    pub fn reload_haproxy(self, spec: DaemonSpec) -> Result<(Daemon, Daemon), ServicesError> {
        let extra = super::haproxy::reload_args(self.pid);
        let new = Self::spawn_with(spec, &extra)?;
        Ok((new, self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" fn nothing(_: libc::c_int) {}

    fn sleeper(dir: &Path) -> DaemonSpec {
        DaemonSpec {
            name: "sleeper".into(),
            program: PathBuf::from("/bin/sleep"),
            args: vec!["1000".into()],
            netns: None,
            pid_file: dir.join("sleeper.pid"),
            log_file: None,
            marker: "1000".into(),
        }
    }

    /// `Z` (exited, not yet reaped) or no process at all.
    fn terminated(pid: u32) -> bool {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(s) => s
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        }
    }

    #[test]
    fn adopted_daemon_is_stopped_only_once_it_has_exited() {
        let dir = tempfile::tempdir().unwrap();
        let spec = sleeper(dir.path());
        let first = Daemon::spawn(spec.clone()).unwrap();
        let pid = first.pid();
        // A restarted executor: the process is no longer its child's handle.
        let mut parent_side = first.child;
        let adopted = Daemon::adopt(spec.clone()).expect("adopted from the pid file");
        assert_eq!(adopted.pid(), pid);
        adopted.stop(Duration::from_secs(30)).unwrap();
        assert!(
            terminated(pid),
            "stop() returned while pid {pid} still runs"
        );
        assert!(!spec.pid_file.exists());
        if let Some(c) = parent_side.as_mut() {
            let _ = c.wait();
        }
    }

    #[test]
    fn a_reused_pid_is_not_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let spec = sleeper(dir.path());
        // Our own PID runs a different program: not the daemon.
        fs::write(&spec.pid_file, format!("{}\n", std::process::id())).unwrap();
        assert!(Daemon::adopt(spec.clone()).is_none());
        assert!(!spec.pid_file.exists(), "stale pid file removed");
    }

    #[test]
    fn exit_is_seen_on_the_pidfd() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::spawn(sleeper(dir.path())).unwrap();
        assert!(d.is_running());
        d.signal(libc::SIGKILL).unwrap();
        assert!(d.wait_exit(Duration::from_secs(30)));
        assert!(!d.is_running());
        assert!(d.signal(libc::SIGTERM).is_err(), "no signal after exit");
    }

    #[test]
    fn signal_handlers_are_read_from_proc() {
        let me = std::process::id();
        assert!(!catches(me, libc::SIGUSR2));
        // SAFETY: installs a no-op handler for a signal nothing else uses here.
        unsafe { libc::signal(libc::SIGUSR2, nothing as *const () as libc::sighandler_t) };
        assert!(catches(me, libc::SIGUSR2));
        assert!(!catches(u32::MAX, libc::SIGHUP));
        assert!(!catches(me, 0));
    }
}
