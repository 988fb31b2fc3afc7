//! I/O edge: writes rendered files and brings the network's dnsmasq and
//! haproxy to the rendered state with the least disruptive action.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::dnsmasq::{self, DnsmasqAction, DnsmasqFiles, DnsmasqPaths};
use super::haproxy::{self, HaproxyPaths};
use super::sockets;
use super::store::replace_file;
use super::supervisor::{Daemon, DaemonSpec};
use super::GuestServices;
use super::ServicesError;

pub const DNSMASQ_PROGRAM: &str = "/usr/sbin/dnsmasq";
pub const HAPROXY_PROGRAM: &str = "/usr/sbin/haproxy";
const GRACE: Duration = Duration::from_secs(5);
/// How long a started haproxy may take to listen on its frontends (a
/// loaded host can take seconds; a daemon that cannot bind exits sooner).
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// dnsmasq's directory: traversable (never listable) by the unprivileged
/// user dnsmasq drops to, which re-reads the hosts files on SIGHUP by name.
const DNSMASQ_DIR_MODE: u32 = 0o711;
/// `hostsdir`: dnsmasq (unprivileged) lists it and reads every file.
const HOSTS_DIR_MODE: u32 = 0o755;
/// What dnsmasq reads after dropping root: the hosts files and record shards.
const DNSMASQ_READ_MODE: u32 = 0o644;

/// Creates `dir` (and parents) with `mode`, and sets `mode` on it.
fn ensure_dir(dir: &Path, mode: u32) -> Result<(), ServicesError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| ServicesError::io(format!("create {}", dir.display()), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| ServicesError::io(format!("chmod {}", dir.display()), e))
}

pub fn dnsmasq_spec(paths: &DnsmasqPaths, netns: Option<&str>, label: &str) -> DaemonSpec {
    let args = paths.argv();
    let marker = args.last().cloned().unwrap_or_default();
    DaemonSpec {
        name: format!("dnsmasq {label}"),
        program: PathBuf::from(DNSMASQ_PROGRAM),
        args,
        netns: netns.map(str::to_string),
        pid_file: paths.pid_file(),
        log_file: Some(paths.dir.join("dnsmasq.log")),
        marker,
    }
}

pub fn haproxy_spec(paths: &HaproxyPaths, netns: Option<&str>, label: &str) -> DaemonSpec {
    DaemonSpec {
        name: format!("haproxy {label}"),
        program: PathBuf::from(HAPROXY_PROGRAM),
        args: paths.argv(),
        netns: netns.map(str::to_string),
        pid_file: paths.pid_file(),
        log_file: Some(paths.dir.join("haproxy.log")),
        marker: OsString::from(paths.conf()),
    }
}

/// The files currently on disk (what the running dnsmasq was given).
pub fn read_dnsmasq_files(paths: &DnsmasqPaths) -> Option<DnsmasqFiles> {
    let r = |p: PathBuf| fs::read_to_string(p).ok();
    Some(DnsmasqFiles {
        conf: r(paths.conf())?,
        hosts: r(paths.hosts())?,
        dhcp_hosts: r(paths.dhcp_hosts())?,
    })
}

/// Writes the files that differ from `old` (derived files: atomic, not
/// flushed; they are re-rendered from persisted state after a crash).
pub fn write_dnsmasq_files(
    paths: &DnsmasqPaths,
    files: &DnsmasqFiles,
    old: Option<&DnsmasqFiles>,
) -> Result<(), ServicesError> {
    ensure_dir(&paths.dir, DNSMASQ_DIR_MODE)?;
    if old.is_none_or(|o| o.conf != files.conf) {
        // dnsmasq refuses to start without its `hostsdir`.
        ensure_dir(&paths.hosts_dir(), HOSTS_DIR_MODE)?;
    }
    let before = old.map(|o| o.files(paths));
    let conf = paths.conf();
    for (i, (p, content)) in files.files(paths).iter().enumerate() {
        let same = before.as_ref().is_some_and(|b| b[i].1 == *content);
        if !same {
            // The main configuration is read as root, at start only.
            let mode = if *p == conf { 0o600 } else { DNSMASQ_READ_MODE };
            replace_file(p, content.as_bytes(), mode)?;
        }
    }
    Ok(())
}

/// Creates `path` empty with mode 0600 unless it exists. dnsmasq opens its
/// lease file as root before dropping privileges and would otherwise
/// create it 0644 (it sets its own umask).
fn create_private(path: &Path) -> Result<(), ServicesError> {
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| ServicesError::io(format!("create {}", path.display()), e))
}

/// Writes the DNS record shards of `guest` into `hosts.d` (see
/// [`dnsmasq`]): only `changed` shards (an empty shard's file is deleted),
/// or with `None` every shard, deleting any other file there. Call it
/// before the sync of the main files, so a dnsmasq started or signalled
/// there finds the records.
pub fn write_record_shards(
    paths: &DnsmasqPaths,
    guest: &GuestServices,
    changed: Option<&BTreeSet<Ipv4Addr>>,
) -> Result<(), ServicesError> {
    let dir = paths.hosts_dir();
    let write = |shard: Ipv4Addr| -> Result<(), ServicesError> {
        let path = dir.join(shard.to_string());
        let text = dnsmasq::render_shard(guest, shard);
        if text.is_empty() {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(ServicesError::io(format!("remove {}", path.display()), e))
                }
                _ => Ok(()),
            };
        }
        // Rewritten in place, not replaced by rename: creating a temporary
        // file per command cost ~0.15 ms (ext4 inode allocation next to the
        // inode the rename frees). dnsmasq reads a `hostsdir` file when it
        // is closed after writing (IN_CLOSE_WRITE), so it sees the whole
        // content; after a crash mid-write the next start rewrites every
        // shard.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(DNSMASQ_READ_MODE)
            .open(&path)
            .map_err(|e| ServicesError::io(format!("open {}", path.display()), e))?;
        f.write_all(text.as_bytes())
            .map_err(|e| ServicesError::io(format!("write {}", path.display()), e))
    };
    if let Some(shards) = changed {
        return shards.iter().try_for_each(|sh| write(*sh));
    }
    ensure_dir(&paths.dir, DNSMASQ_DIR_MODE)?;
    ensure_dir(&dir, HOSTS_DIR_MODE)?;
    let want = dnsmasq::all_shards(guest);
    let listing =
        fs::read_dir(&dir).map_err(|e| ServicesError::io(format!("list {}", dir.display()), e))?;
    for entry in listing.flatten() {
        let name = entry.file_name();
        let keep = name
            .to_str()
            .and_then(|n| n.parse::<Ipv4Addr>().ok())
            .is_some_and(|ip| want.contains(&ip));
        if !keep {
            let path = entry.path();
            fs::remove_file(&path)
                .map_err(|e| ServicesError::io(format!("remove {}", path.display()), e))?;
        }
    }
    want.into_iter().try_for_each(write)
}

/// Brings dnsmasq to `new` (`None`: none should run). `running` is the
/// daemon the caller tracks (`None` after an executor restart: the PID file
/// is checked and the daemon adopted when it is really ours). Returns the
/// daemon now running and the action taken.
pub fn sync_dnsmasq(
    paths: &DnsmasqPaths,
    netns: Option<&str>,
    label: &str,
    new: Option<&DnsmasqFiles>,
    running: Option<Daemon>,
) -> Result<(Option<Daemon>, DnsmasqAction), ServicesError> {
    sync_dnsmasq_known(paths, netns, label, new, running, None)
}

/// As [`sync_dnsmasq`], with `known`: the files this process last wrote
/// there (they are compared instead of read back from disk, which costs
/// as much as rendering on a network with thousands of records).
pub fn sync_dnsmasq_known(
    paths: &DnsmasqPaths,
    netns: Option<&str>,
    label: &str,
    new: Option<&DnsmasqFiles>,
    running: Option<Daemon>,
    known: Option<DnsmasqFiles>,
) -> Result<(Option<Daemon>, DnsmasqAction), ServicesError> {
    let spec = dnsmasq_spec(paths, netns, label);
    let mut running = running.or_else(|| Daemon::adopt(spec.clone()));
    if let Some(d) = running.as_mut() {
        if !d.is_running() {
            log::warn!("{}: pid {} died; starting it again", spec.name, d.pid());
            running = None;
        }
    }
    let old = if running.is_some() {
        known.or_else(|| read_dnsmasq_files(paths))
    } else {
        None
    };
    let action = dnsmasq::plan_change(old.as_ref(), new);
    if let Some(files) = new {
        write_dnsmasq_files(paths, files, old.as_ref())?;
    }
    let now = match (action, running) {
        (DnsmasqAction::Nothing, r) => r,
        (DnsmasqAction::Hup, Some(mut d)) => {
            d.hup()?;
            Some(d)
        }
        (DnsmasqAction::Stop, Some(d)) => {
            d.stop(GRACE)?;
            None
        }
        (DnsmasqAction::Restart, Some(d)) => {
            create_private(&paths.leases())?;
            Some(d.restart(spec, GRACE)?)
        }
        (_, Some(d)) => Some(d),
        (DnsmasqAction::Start, None)
        | (DnsmasqAction::Hup, None)
        | (DnsmasqAction::Restart, None) => {
            create_private(&paths.leases())?;
            Some(Daemon::spawn(spec)?)
        }
        (DnsmasqAction::Stop, None) => None,
    };
    Ok((now, action))
}

/// What [`sync_haproxy`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaproxyAction {
    Nothing,
    Start,
    Reload,
    /// Only servers changed: they were removed and added through the
    /// running process's runtime API (no new process).
    Servers,
    Stop,
}

/// How long one runtime API session may take: generous for a loaded
/// host, bounded for a process that stopped answering.
const RUNTIME_API_TIMEOUT: Duration = Duration::from_secs(10);

/// Brings haproxy to `config` (`None`: no rule left, no process). The file
/// gets a runtime API socket (see [`haproxy::with_runtime_api`]). When only
/// servers changed they are changed in the running process through that
/// API; any other change, or a refused runtime change (a removed server
/// that still has connections), is applied by graceful reload, and the
/// old process is pushed to `draining` (call [`reap_draining`] now and
/// then). Either way the file on disk is the configuration in force.
pub fn sync_haproxy(
    paths: &HaproxyPaths,
    netns: Option<&str>,
    label: &str,
    config: Option<&str>,
    running: Option<Daemon>,
    draining: &mut Vec<Daemon>,
) -> Result<(Option<Daemon>, HaproxyAction), ServicesError> {
    let spec = haproxy_spec(paths, netns, label);
    let mut running = running.or_else(|| Daemon::adopt(spec.clone()));
    if let Some(d) = running.as_mut() {
        if !d.is_running() {
            running = None;
        }
    }
    let Some(cfg) = config else {
        if let Some(d) = running {
            d.stop(GRACE)?;
            let _ = fs::remove_file(paths.conf());
            let _ = fs::remove_file(paths.runtime_socket());
            return Ok((None, HaproxyAction::Stop));
        }
        return Ok((None, HaproxyAction::Nothing));
    };
    let with_api = haproxy::with_runtime_api(cfg, &paths.runtime_socket());
    let cfg = with_api.as_deref().unwrap_or(cfg);
    let old = fs::read_to_string(paths.conf()).ok();
    ensure_dir(&paths.dir, 0o700)?;
    if running.is_some() && old.as_deref() == Some(cfg) {
        return Ok((running, HaproxyAction::Nothing));
    }
    // The running process may have been changed in part at run time
    // before falling back to a reload.
    let mut changed_at_run_time = false;
    let server_changes = match (&running, &old, &with_api) {
        (Some(_), Some(o), Some(_)) => haproxy::server_changes(o, cfg),
        _ => None,
    };
    if let Some(changes) = server_changes {
        replace_file(&paths.conf(), cfg.as_bytes(), 0o600)?;
        changed_at_run_time = true;
        match change_servers(&paths.runtime_socket(), &changes, cfg) {
            Ok(()) => return Ok((running, HaproxyAction::Servers)),
            Err(e) => log::info!(
                "{}: servers not changed at run time ({e}); reloading",
                spec.name
            ),
        }
    }
    replace_file(&paths.conf(), cfg.as_bytes(), 0o600)?;
    if let Err(e) = check_haproxy_config(&paths.conf()) {
        // Keep the configuration the running process was started with.
        match &old {
            Some(o) => replace_file(&paths.conf(), o.as_bytes(), 0o600)?,
            None => {
                let _ = fs::remove_file(paths.conf());
            }
        }
        if let (true, Some(d), Some(o)) = (changed_at_run_time, running, &old) {
            // Servers were partly changed: the configuration in force is
            // put back by a reload.
            if let Err(back) = start_or_reload(spec, Some(d), o, draining) {
                log::error!(
                    "{label}: haproxy could not be brought back to its configuration: {back}"
                );
            }
        }
        return Err(e);
    }
    let (new, action) = start_or_reload(spec, running, cfg, draining)?;
    Ok((Some(new), action))
}

/// Starts haproxy, or reloads `running` gracefully (the old process goes
/// to `draining`), and waits until the new process serves every frontend
/// of `cfg`: the rules are applied then, not when it was merely started.
fn start_or_reload(
    spec: DaemonSpec,
    running: Option<Daemon>,
    cfg: &str,
    draining: &mut Vec<Daemon>,
) -> Result<(Daemon, HaproxyAction), ServicesError> {
    let (mut new, action) = match running {
        Some(d) => {
            let (new, old) = d.reload_haproxy(spec)?;
            draining.push(old);
            (new, HaproxyAction::Reload)
        }
        None => (Daemon::spawn(spec)?, HaproxyAction::Start),
    };
    if let Err(e) = sockets::wait_listening(&mut new, &haproxy::binds(cfg), READY_TIMEOUT) {
        let _ = new.stop(GRACE);
        return Err(e);
    }
    Ok((new, action))
}

/// Removes and adds servers through the runtime API at `socket`, then
/// checks that the process serves exactly the servers of `cfg`.
fn change_servers(
    socket: &Path,
    changes: &haproxy::ServerChanges,
    cfg: &str,
) -> Result<(), ServicesError> {
    let commands = haproxy::runtime_commands(changes);
    let mut answers = runtime_session(socket, &commands, "show servers state")?;
    let state = answers.pop().unwrap_or_default();
    for (command, answer) in commands.iter().zip(&answers) {
        if !haproxy::command_succeeded(command, answer) {
            return Err(ServicesError::Process(format!(
                "haproxy refused '{command}': {}",
                answer.trim()
            )));
        }
    }
    let servers = haproxy::parse_servers_state(&state).map_err(ServicesError::Process)?;
    haproxy::check_servers(cfg, &servers).map_err(ServicesError::Process)
}

/// One interactive runtime API session: `commands`, then `last`; returns
/// one answer per command, then the answer to `last`.
fn runtime_session(
    socket: &Path,
    commands: &[String],
    last: &str,
) -> Result<Vec<String>, ServicesError> {
    let context = || format!("haproxy runtime API {}", socket.display());
    let mut stream = UnixStream::connect(socket).map_err(|e| ServicesError::io(context(), e))?;
    stream
        .set_read_timeout(Some(RUNTIME_API_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(RUNTIME_API_TIMEOUT)))
        .map_err(|e| ServicesError::io(context(), e))?;
    let mut script = String::from("prompt\n");
    for command in commands.iter().map(String::as_str).chain([last]) {
        script.push_str(command);
        script.push('\n');
    }
    script.push_str("quit\n");
    stream
        .write_all(script.as_bytes())
        .map_err(|e| ServicesError::io(context(), e))?;
    let mut out = String::new();
    stream
        .read_to_string(&mut out)
        .map_err(|e| ServicesError::io(context(), e))?;
    // In interactive mode every answer ends with the prompt "\n> "; the
    // first answers `prompt` itself and nothing follows the last one.
    let answers: Vec<String> = out
        .split("\n> ")
        .skip(1)
        .take(commands.len() + 1)
        .map(str::to_string)
        .collect();
    if answers.len() != commands.len() + 1 {
        return Err(ServicesError::Process(format!(
            "{}: {} answers to {} commands",
            context(),
            answers.len(),
            commands.len() + 1
        )));
    }
    Ok(answers)
}

/// Drops draining processes that have exited (reaping them).
pub fn reap_draining(draining: &mut Vec<Daemon>) {
    draining.retain_mut(|d| d.is_running());
}

/// `haproxy -c -f <conf>`: refuses a configuration before any process sees it.
pub fn check_haproxy_config(conf: &Path) -> Result<(), ServicesError> {
    let out = std::process::Command::new(HAPROXY_PROGRAM)
        .arg("-c")
        .arg("-q")
        .arg("-f")
        .arg(conf)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| ServicesError::Process(format!("haproxy -c: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr);
    let first: String = msg.lines().take(3).collect::<Vec<_>>().join(" / ");
    Err(ServicesError::Process(format!(
        "haproxy refused the configuration: {first}"
    )))
}
