//! Descriptors the executor holds for a network's whole life (its metadata
//! and password listeners, the pidfds of its daemons) live above
//! `FD_SETSIZE`.
//!
//! libnftables waits for the kernel's answer to a ruleset transaction with
//! `select(2)` on a netlink socket it opens per context, and glibc aborts the
//! whole process when a descriptor of 1024 or more is put in an `fd_set`.
//! New descriptors take the lowest free number, so without this an executor
//! holding a few descriptors per network aborts on its first ruleset change
//! after roughly 500 networks. Keeping the long-lived descriptors high leaves
//! the low numbers to short-lived ones, whatever the number of networks.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The first descriptor number `select(2)` cannot watch.
pub const SELECT_LIMIT: libc::c_int = libc::FD_SETSIZE as libc::c_int;

/// Moves `fd` to the lowest free number at or above [`SELECT_LIMIT`]
/// (close-on-exec kept). When that is impossible (an open-files limit of
/// 1024 or less) the descriptor is returned unchanged: the executor still
/// works, only with fewer networks before the limit matters.
pub fn above_select_limit(fd: OwnedFd) -> OwnedFd {
    if fd.as_raw_fd() >= SELECT_LIMIT {
        return fd;
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; a non-negative result
    // is a new descriptor owned by nobody else.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, SELECT_LIMIT) };
    if moved < 0 {
        log::debug!(
            "descriptor {} stays below {SELECT_LIMIT}: {}",
            fd.as_raw_fd(),
            std::io::Error::last_os_error()
        );
        return fd;
    }
    // SAFETY: see above; the original closes when `fd` drops.
    unsafe { OwnedFd::from_raw_fd(moved) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_limit() -> u64 {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct passed.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        limit.rlim_cur
    }

    #[test]
    fn a_long_lived_descriptor_moves_above_the_select_limit() {
        let file = std::fs::File::open("/dev/null").expect("open /dev/null");
        let low = OwnedFd::from(file);
        let low_number = low.as_raw_fd();
        let moved = above_select_limit(low);
        if open_limit() > SELECT_LIMIT as u64 + 64 {
            assert!(
                moved.as_raw_fd() >= SELECT_LIMIT,
                "moved to {}",
                moved.as_raw_fd()
            );
            // The low number is free again for short-lived descriptors.
            let again = OwnedFd::from(std::fs::File::open("/dev/null").expect("reopen"));
            assert!(again.as_raw_fd() < SELECT_LIMIT);
        } else {
            assert_eq!(moved.as_raw_fd(), low_number, "kept when the limit forbids");
        }
        // Close-on-exec survives the move.
        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(moved.as_raw_fd(), libc::F_GETFD) };
        assert!(flags & libc::FD_CLOEXEC != 0);
    }

    #[test]
    fn a_descriptor_already_high_is_left_alone() {
        let file = std::fs::File::open("/dev/null").expect("open /dev/null");
        let once = above_select_limit(OwnedFd::from(file));
        let number = once.as_raw_fd();
        let twice = above_select_limit(once);
        assert_eq!(twice.as_raw_fd(), number);
    }
}
