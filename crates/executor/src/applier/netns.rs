//! Named network namespaces in process, as `ip netns add|del` makes them:
//! a file in the netns directory on which a new namespace is bind-mounted,
//! the directory itself a shared mount point so that the namespace mounts
//! propagate to other mount namespaces (daemons, `ip netns exec`).

use std::ffi::CString;
use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes `dir` a mount point with shared propagation (bind-mounting it on
/// itself first when it is a plain directory), as `ip netns add` does.
fn make_shared(dir: &Path) -> io::Result<()> {
    let c = c_path(dir)?;
    let shared = || {
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        check(unsafe {
            libc::mount(
                c"none".as_ptr(),
                c.as_ptr(),
                std::ptr::null(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        })
    };
    match shared() {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // Not a mount point yet.
            // SAFETY: as above.
            check(unsafe {
                libc::mount(
                    c.as_ptr(),
                    c.as_ptr(),
                    c"none".as_ptr(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                )
            })?;
            shared()
        }
        other => other,
    }
}

/// Creates the namespace `dir/name`: a fresh network namespace, made on a
/// short-lived thread (`unshare` affects only that thread) and kept alive
/// by the bind mount. Fails with `AlreadyExists` when the name is taken.
pub fn create(dir: &Path, name: &str) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    make_shared(dir)?;
    let path = dir.join(name);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)?;
    let target = c_path(&path)?;
    let made = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare(2) and mount(2) on this thread only, with
            // NUL-terminated strings that outlive the calls.
            unsafe {
                check(libc::unshare(libc::CLONE_NEWNET))?;
                check(libc::mount(
                    c"/proc/thread-self/ns/net".as_ptr(),
                    target.as_ptr(),
                    c"none".as_ptr(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))
            }
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(())
}

/// Removes the namespace `dir/name` (`ip netns del`): the mount is
/// detached and the file removed; the kernel frees the namespace once
/// nothing uses it any more. A missing name is not an error.
pub fn remove(dir: &Path, name: &str) -> io::Result<()> {
    let path = dir.join(name);
    let c = c_path(&path)?;
    // SAFETY: umount2(2) with a NUL-terminated path; EINVAL (not mounted,
    // a half-made entry) leaves only the file to remove.
    let unmounted = check(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) });
    match unmounted {
        Err(e) if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => {
            return Err(e)
        }
        _ => {}
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
