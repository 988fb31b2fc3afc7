//! Running the bridge's executor traffic inside another network namespace
//! (management network in a VRF/namespace; root-run tests with executors in
//! namespaces while the JVM stays in the root namespace).
//!
//! A namespace is entered per thread (`setns(2)` with `CLONE_NEWNET` affects
//! only the calling thread), so the [`super::Dispatcher`] enters it on every
//! runtime thread it starts and runs each command on those threads, never on
//! the caller's. Needs CAP_SYS_ADMIN.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::DispatchError;

/// An open network namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`).
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    fd: OwnedFd,
    /// Device and inode of the namespace file: its identity.
    id: (u64, u64),
}

impl Netns {
    /// Opens `path` and checks, from a scratch thread, that it can be entered.
    pub fn open(path: &Path) -> Result<Netns, DispatchError> {
        let shown = path.display().to_string();
        if !path.is_absolute() {
            return Err(DispatchError::Configuration(format!(
                "invalid value for 'dispatch netns': '{}' must be an absolute path",
                netbridge_protocol::sanitize_for_message(&shown)
            )));
        }
        let file = File::open(path).map_err(|e| {
            DispatchError::Configuration(format!(
                "cannot open network namespace '{}': {e}",
                netbridge_protocol::sanitize_for_message(&shown)
            ))
        })?;
        let meta = file.metadata().map_err(|e| {
            DispatchError::Configuration(format!(
                "cannot read network namespace '{}': {e}",
                netbridge_protocol::sanitize_for_message(&shown)
            ))
        })?;
        let netns = Netns {
            path: path.to_path_buf(),
            fd: OwnedFd::from(file),
            id: (meta.dev(), meta.ino()),
        };
        std::thread::scope(|s| {
            s.spawn(|| netns.enter())
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("probe thread panicked")))
        })
        .map_err(|e| {
            DispatchError::Configuration(format!(
                "cannot enter network namespace '{}': {e}",
                netbridge_protocol::sanitize_for_message(&shown)
            ))
        })?;
        Ok(netns)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the calling thread is inside this namespace.
    pub fn is_current_thread_in(&self) -> std::io::Result<bool> {
        let here = std::fs::metadata("/proc/thread-self/ns/net")?;
        Ok((here.dev(), here.ino()) == self.id)
    }

    /// Moves the calling thread into the namespace.
    pub fn enter(&self) -> std::io::Result<()> {
        // SAFETY: setns on a descriptor we own; affects only this thread.
        let rc = unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_paths_are_configuration_errors() {
        let e = Netns::open(Path::new("run/netns/x")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value for 'dispatch netns': 'run/netns/x' must be an absolute path"
        );
        let e = Netns::open(Path::new("/nonexistent/nbb-netns")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot open network namespace '/nonexistent/nbb-netns': "),
            "{e}"
        );
        // A regular file is not a namespace: setns refuses it (EINVAL), also as root.
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = Netns::open(f.path()).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot enter network namespace"),
            "{e}"
        );
    }

    #[test]
    fn own_namespace_can_be_entered() {
        // Entering the namespace we are already in needs CAP_SYS_ADMIN.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skip: needs root");
            return;
        }
        let n = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(n.path(), Path::new("/proc/self/ns/net"));
        assert!(n.is_current_thread_in().unwrap());
    }
}
