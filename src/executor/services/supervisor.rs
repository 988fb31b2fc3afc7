//! Runs a daemon (dnsmasq, haproxy, later radvd) inside a named network
//! namespace and tracks its exact PID.
//!
//! - The child `setns()`es into `/run/netns/<ns>` (opened by the parent, so
//!   the child only makes async-signal-safe calls) and starts a new session,
//!   so it neither shares the executor's signals nor dies with it.
//! - Daemons run in the foreground: the child's PID is the daemon's PID. It
//!   is written to `pid_file` so a restarted executor can find it again.
//! - Before any signal the PID is re-identified: our own child must not have
//!   exited; an adopted PID must still run `program` with `marker` among its
//!   arguments in the expected namespace. A stale or reused PID is never
//!   signalled.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
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
        let d = Daemon {
            spec,
            pid,
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
        if identify(pid, &spec) {
            log::info!("{}: adopted running pid {pid}", spec.name);
            Some(Daemon {
                spec,
                pid,
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
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => identify(self.pid, &self.spec),
        }
    }

    /// Sends `sig` after re-identifying the PID.
    pub fn signal(&mut self, sig: libc::c_int) -> Result<(), ServicesError> {
        if !self.is_running() {
            return Err(proc_err(
                &self.spec,
                format!("pid {} is no longer running", self.pid),
            ));
        }
        let pid = libc::pid_t::try_from(self.pid)
            .map_err(|_| proc_err(&self.spec, "pid out of range"))?;
        // SAFETY: plain kill(2) on a PID just verified to be this daemon.
        if unsafe { libc::kill(pid, sig) } != 0 {
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

    /// Waits until the process is gone; true when it is.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
