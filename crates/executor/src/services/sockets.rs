//! Which TCP sockets a daemon listens on, read from `/proc`.
//!
//! A daemon is ready when its own process holds a listening socket for each
//! address it must serve. `/proc/<pid>/net/tcp` lists the sockets of the
//! namespace that process lives in (so it works for daemons inside router
//! namespaces), and `/proc/<pid>/fd` tells which of them belong to the
//! process itself (after a graceful haproxy reload the old process still
//! listens on the same addresses until the new one has taken over).

use std::collections::HashSet;
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::supervisor::Daemon;
use super::ServicesError;

/// Kernel socket state `TCP_LISTEN` as `/proc/net/tcp` prints it.
const TCP_LISTEN: &str = "0A";

/// Listening IPv4 sockets in a `/proc/.../net/tcp` table: address and inode.
pub fn parse_listeners(table: &str) -> Vec<(SocketAddrV4, u64)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let state = cols.nth(1)?;
            if state != TCP_LISTEN {
                return None;
            }
            let inode = cols.nth(5)?.parse().ok()?;
            let (ip, port) = local.split_once(':')?;
            // The kernel prints the network-order address as a native u32.
            let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes());
            let port = u16::from_str_radix(port, 16).ok()?;
            Some((SocketAddrV4::new(ip, port), inode))
        })
        .collect()
}

/// Socket inodes held open by process `pid`.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Addresses of `want` on which process `pid` itself listens. A wildcard
/// listener (`0.0.0.0`) serves every address of its port.
pub fn listening(pid: u32, want: &[SocketAddrV4]) -> Vec<SocketAddrV4> {
    let Ok(table) = fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return Vec::new();
    };
    let own = socket_inodes(pid);
    let held: Vec<SocketAddrV4> = parse_listeners(&table)
        .into_iter()
        .filter(|(_, inode)| own.contains(inode))
        .map(|(addr, _)| addr)
        .collect();
    want.iter()
        .copied()
        .filter(|w| {
            held.iter()
                .any(|h| h.port() == w.port() && (h.ip() == w.ip() || h.ip().is_unspecified()))
        })
        .collect()
}

/// Waits until `daemon` listens on every address of `want`. Fails when it
/// exits first, or when `timeout` passes (a daemon that cannot bind).
pub fn wait_listening(
    daemon: &mut Daemon,
    want: &[SocketAddrV4],
    timeout: Duration,
) -> Result<(), ServicesError> {
    let end = Instant::now() + timeout;
    loop {
        if listening(daemon.pid(), want).len() == want.len() {
            return Ok(());
        }
        if !daemon.is_running() {
            return Err(ServicesError::Process(format!(
                "{}: exited before listening on {}",
                daemon.spec().name,
                list(want)
            )));
        }
        if Instant::now() >= end {
            return Err(ServicesError::Process(format!(
                "{}: not listening on {} after {} s",
                daemon.spec().name,
                list(want),
                timeout.as_secs()
            )));
        }
        // The kernel offers no event for "a socket entered LISTEN"; the
        // condition is re-read, never assumed after a delay.
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn list(addrs: &[SocketAddrV4]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_parsed_from_the_kernel_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100010A:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n\
   1: 0100010A:0050 0B00010A:C350 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 20 4 30 10 -1\n\
   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(
            parse_listeners(table),
            vec![
                ("10.1.0.1:80".parse().unwrap(), 4242),
                ("0.0.0.0:8080".parse().unwrap(), 77)
            ]
        );
    }

    #[test]
    fn our_own_listener_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            unreachable!()
        };
        let me = std::process::id();
        assert_eq!(listening(me, &[addr]), vec![addr]);
        drop(l);
        assert!(listening(me, &[addr]).is_empty());
    }
}
