//! Test isolation: join a network namespace and a private mount namespace so
//! that several emulated hosts on one machine can each own `cs-net-42`.
//! Everything here must run while the process is still single-threaded.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::DaemonError;

fn ns_err(what: &str) -> DaemonError {
    DaemonError::Namespace(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// Names as `ip netns` accepts them, kept to a safe alphabet.
pub fn valid_netns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn cstr(s: &str) -> CString {
    // Only called with literals that contain no NUL.
    CString::new(s).unwrap_or_default()
}

fn mount(
    src: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), DaemonError> {
    let src = cstr(src);
    let target_c = cstr(target);
    let fstype = fstype.map(cstr);
    let data = data.map(cstr);
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    if rc != 0 {
        return Err(ns_err(&format!("mount {target}")));
    }
    Ok(())
}

/// Makes every mount of the current (new) mount namespace private and gives
/// it an empty `/run/netns`.
pub fn private_mounts() -> Result<(), DaemonError> {
    // SAFETY: plain syscall.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(ns_err("unshare(CLONE_NEWNS)"));
    }
    mount("none", "/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    std::fs::create_dir_all("/run/netns")
        .map_err(|e| DaemonError::Namespace(format!("/run/netns: {e}")))?;
    mount("tmpfs", "/run/netns", Some("tmpfs"), 0, Some("mode=0755"))
}

/// Applies `--netns`, `--private-mounts` and `--mount-ns`.
pub fn enter(
    netns: Option<&str>,
    private: bool,
    mount_ns: Option<&Path>,
) -> Result<(), DaemonError> {
    // An executor reconciles every `cs-net-*` in its /run/netns: joining a
    // test host's network namespace while sharing the machine's /run/netns
    // would let it tear down other hosts' namespaces (testbed rule 4).
    if netns.is_some() && !private && mount_ns.is_none() {
        return Err(DaemonError::Namespace(
            "--netns needs --private-mounts or --mount-ns (a private /run/netns per emulated host)"
                .to_string(),
        ));
    }
    // Open the network namespace first: a private /run/netns hides it.
    let net = match netns {
        Some(name) => {
            if !valid_netns_name(name) {
                return Err(DaemonError::Namespace(format!(
                    "invalid network namespace name '{}'",
                    netbridge_protocol::sanitize_for_message(name)
                )));
            }
            let path = format!("/run/netns/{name}");
            Some(File::open(&path).map_err(|e| DaemonError::Namespace(format!("{path}: {e}")))?)
        }
        None => None,
    };
    let own_mounts = private || mount_ns.is_some();
    if let Some(path) = mount_ns {
        let f = File::open(path)
            .map_err(|e| DaemonError::Namespace(format!("{}: {e}", path.display())))?;
        // SAFETY: valid fd; the process is single-threaded here.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
            return Err(ns_err("setns(mount)"));
        }
    } else if private {
        private_mounts()?;
    }
    if let Some(f) = net {
        // SAFETY: valid fd of a network namespace.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(ns_err("setns(net)"));
        }
        if own_mounts {
            // /sys shows the devices of the namespace that mounted it; remount
            // so tools reading /sys/class/net see this namespace.
            // SAFETY: valid NUL-terminated path.
            let sys = cstr("/sys");
            unsafe { libc::umount2(sys.as_ptr(), libc::MNT_DETACH) };
            mount("sysfs", "/sys", Some("sysfs"), 0, None)?;
        }
        log::info!("running in network namespace {}", netns.unwrap_or_default());
    }
    Ok(())
}
