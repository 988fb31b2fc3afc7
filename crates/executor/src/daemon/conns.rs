//! Connection admission: caps on open connections, in total and per client
//! address, and the choice of which connection to close when the table is
//! full.
//!
//! Anyone who reaches the port can open connections; only the bridge can
//! sign requests. A connection becomes *signed* once a request on it passed
//! the full signature check (the TLS session ties later requests to the same
//! client), and signed connections are never evicted. When the table is full,
//! a new connection takes the place of the unsigned connection that is least
//! likely to be useful: closing ones first, then idle ones, then those in the
//! TLS handshake, then those sending a request head, then those sending a
//! body, and the oldest first within each group. A fresh connection from the
//! bridge is therefore admitted however many addresses the attacker uses
//! (unless the bridge's own address already holds `max_connections_per_peer`
//! unsigned connections), and it is the newest: an attacker would have to
//! open `max_connections` further connections before the bridge's handshake
//! and first request complete (a few milliseconds) to close it. The per-address cap counts unsigned connections only, so one
//! address cannot take the whole table, while the bridge may keep as many
//! signed connections as it needs. When every connection is signed, new ones
//! are refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

/// Where a connection is in its life; the order is the eviction preference
/// (first evicted first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// A refusal is being sent, or the connection is draining before close.
    Closing = 0,
    /// Waiting for the first byte of a request.
    Idle = 1,
    /// TLS handshake in progress.
    Handshake = 2,
    /// A request head is arriving.
    Head = 3,
    /// A request is being read or served.
    Request = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Closing,
            1 => Phase::Idle,
            2 => Phase::Handshake,
            3 => Phase::Head,
            _ => Phase::Request,
        }
    }
}

/// One open connection, shared by its task, its HTTP layer and the table.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    peer: IpAddr,
    phase: AtomicU8,
    signed: AtomicBool,
    /// A request is being served: no idle deadline runs meanwhile.
    busy: AtomicBool,
    /// The reader that found the connection busy and waits for the request
    /// to end before its idle deadline can start: woken by `set_busy(false)`
    /// (nothing else would poll it again on a quiet socket).
    idle_waiter: std::sync::Mutex<Option<std::task::Waker>>,
    evicted: Notify,
}

impl Connection {
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// True once a request on this connection passed the signature check.
    pub fn is_signed(&self) -> bool {
        self.signed.load(Ordering::Acquire)
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Release);
        if !busy {
            let waiter = self
                .idle_waiter
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(w) = waiter {
                w.wake();
            }
        }
    }

    /// Whether a request is being served; if so, `waker` is woken when it
    /// ends.
    pub fn busy_or_wake_on_idle(&self, waker: &std::task::Waker) -> bool {
        if !self.is_busy() {
            return false;
        }
        *self
            .idle_waiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(waker.clone());
        // The request may have ended between the check and the registration.
        self.is_busy()
    }

    /// Resolves when the table gave this connection's place to another one.
    pub async fn evicted(&self) {
        self.evicted.notified().await
    }
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address already holds `max_connections_per_peer` unsigned connections.
    PerPeer,
    /// The table is full of signed connections.
    Capacity,
}

impl Refusal {
    /// Label of the refused-connections metric.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::PerPeer => "per_peer_limit",
            Refusal::Capacity => "capacity",
        }
    }
}

#[derive(Default)]
struct Table {
    open: HashMap<u64, Arc<Connection>>,
    unsigned_per_peer: HashMap<IpAddr, usize>,
    signed: usize,
    next_id: u64,
}

impl Table {
    fn forget_unsigned(&mut self, peer: IpAddr) {
        if let Some(n) = self.unsigned_per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.unsigned_per_peer.remove(&peer);
            }
        }
    }

    fn remove(&mut self, id: u64) -> Option<Arc<Connection>> {
        let conn = self.open.remove(&id)?;
        if conn.is_signed() {
            self.signed -= 1;
        } else {
            self.forget_unsigned(conn.peer);
        }
        Some(conn)
    }

    /// The unsigned connection to close first (see the module comment).
    fn victim(&self) -> Option<u64> {
        self.open
            .values()
            .filter(|c| !c.is_signed())
            .min_by_key(|c| (c.phase(), c.id))
            .map(|c| c.id)
    }
}

/// The table of open connections.
pub struct Registry {
    max_connections: usize,
    max_per_peer: usize,
    table: Mutex<Table>,
    emptied: Notify,
    last_warning: AtomicU64,
    epoch: Instant,
}

/// A place in the table; dropping it frees the place.
pub struct Admission {
    pub conn: Arc<Connection>,
    /// True when another connection was closed to make room.
    pub evicted_other: bool,
    registry: Arc<Registry>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut table = self.registry.lock();
        table.remove(self.conn.id);
        if table.open.is_empty() {
            self.registry.emptied.notify_waiters();
        }
    }
}

impl Registry {
    pub fn new(max_connections: usize, max_per_peer: usize) -> Registry {
        Registry {
            max_connections,
            max_per_peer,
            table: Mutex::new(Table::default()),
            emptied: Notify::new(),
            last_warning: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `peer`, closing an unsigned one when the
    /// table is full.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admission, Refusal> {
        let mut table = self.lock();
        if table.unsigned_per_peer.get(&peer).copied().unwrap_or(0) >= self.max_per_peer {
            return Err(Refusal::PerPeer);
        }
        let mut evicted_other = false;
        if table.open.len() >= self.max_connections {
            let victim = table.victim().ok_or(Refusal::Capacity)?;
            if let Some(conn) = table.remove(victim) {
                conn.set_phase(Phase::Closing);
                // notify_one keeps the wake-up if the task is not waiting yet.
                conn.evicted.notify_one();
                evicted_other = true;
            }
        }
        table.next_id += 1;
        let conn = Arc::new(Connection {
            id: table.next_id,
            peer,
            phase: AtomicU8::new(Phase::Handshake as u8),
            signed: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            idle_waiter: std::sync::Mutex::new(None),
            evicted: Notify::new(),
        });
        table.open.insert(conn.id, conn.clone());
        *table.unsigned_per_peer.entry(peer).or_default() += 1;
        Ok(Admission {
            conn,
            evicted_other,
            registry: self.clone(),
        })
    }

    /// Records that a request on `conn` passed the signature check.
    pub fn mark_signed(&self, conn: &Connection) {
        let mut table = self.lock();
        // Evicted connections are no longer in the table; their count is settled.
        if !table.open.contains_key(&conn.id) || conn.signed.swap(true, Ordering::AcqRel) {
            return;
        }
        table.signed += 1;
        table.forget_unsigned(conn.peer);
    }

    /// Closes one unsigned connection (when the process runs out of file
    /// descriptors); false when there is none.
    pub fn evict_one(&self) -> bool {
        let mut table = self.lock();
        let Some(victim) = table.victim() else {
            return false;
        };
        if let Some(conn) = table.remove(victim) {
            conn.set_phase(Phase::Closing);
            conn.evicted.notify_one();
        }
        true
    }

    /// (signed, unsigned) open connections.
    pub fn counts(&self) -> (usize, usize) {
        let table = self.lock();
        (table.signed, table.open.len() - table.signed)
    }

    /// Resolves once no connection is open.
    pub async fn wait_empty(&self) {
        loop {
            let notified = self.emptied.notified();
            if self.lock().open.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// True at most once per `every_secs`: keeps a flood from flooding the log.
    pub fn should_warn(&self, every_secs: u64) -> bool {
        let now = self.epoch.elapsed().as_secs() + every_secs;
        let last = self.last_warning.load(Ordering::Relaxed);
        now >= last + every_secs
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn per_peer_cap_counts_unsigned_connections_only() {
        let reg = Arc::new(Registry::new(10, 2));
        let a = reg.admit(ip(2)).unwrap();
        let _b = reg.admit(ip(2)).unwrap();
        assert_eq!(reg.admit(ip(2)).err(), Some(Refusal::PerPeer));
        // Another address is not affected.
        let _c = reg.admit(ip(3)).unwrap();
        // A signed connection leaves the address's unsigned quota.
        reg.mark_signed(&a.conn);
        let _d = reg.admit(ip(2)).unwrap();
        assert_eq!(reg.counts(), (1, 3));
        drop(a);
        assert_eq!(reg.counts(), (0, 3));
    }

    #[test]
    fn full_table_evicts_the_least_useful_unsigned_connection() {
        let reg = Arc::new(Registry::new(4, 4));
        let slow_head = reg.admit(ip(2)).unwrap();
        slow_head.conn.set_phase(Phase::Head);
        let old_idle = reg.admit(ip(2)).unwrap();
        old_idle.conn.set_phase(Phase::Idle);
        let young_idle = reg.admit(ip(3)).unwrap();
        young_idle.conn.set_phase(Phase::Idle);
        let bridge = reg.admit(ip(1)).unwrap();
        bridge.conn.set_phase(Phase::Request);
        reg.mark_signed(&bridge.conn);

        // Idle before head, the oldest idle first; signed never.
        let next = reg.admit(ip(4)).unwrap();
        assert!(next.evicted_other);
        assert_eq!(old_idle.conn.phase(), Phase::Closing);
        assert_eq!(reg.counts(), (1, 3));
        let next2 = reg.admit(ip(4)).unwrap();
        assert_eq!(young_idle.conn.phase(), Phase::Closing);
        // The newest connections are in the handshake: the oldest of them
        // goes before the slow head.
        let next3 = reg.admit(ip(5)).unwrap();
        assert_eq!(next.conn.phase(), Phase::Closing);
        assert_eq!(slow_head.conn.phase(), Phase::Head);
        // Dropping an evicted connection's admission changes nothing more.
        drop(old_idle);
        assert_eq!(reg.counts(), (1, 3));
        drop((next2, next3, young_idle, next));
        assert_eq!(reg.counts(), (1, 1));
    }

    #[test]
    fn a_table_full_of_signed_connections_refuses() {
        let reg = Arc::new(Registry::new(2, 2));
        let a = reg.admit(ip(1)).unwrap();
        let b = reg.admit(ip(1)).unwrap();
        reg.mark_signed(&a.conn);
        reg.mark_signed(&b.conn);
        assert_eq!(reg.admit(ip(2)).err(), Some(Refusal::Capacity));
        assert!(!reg.evict_one());
        drop(b);
        assert!(reg.admit(ip(2)).is_ok());
    }

    #[tokio::test]
    async fn eviction_wakes_the_connection_and_the_empty_table_is_noticed() {
        let reg = Arc::new(Registry::new(1, 1));
        let first = reg.admit(ip(2)).unwrap();
        // Evicted before its task waits: the wake-up is kept.
        let second = reg.admit(ip(3)).unwrap();
        first.conn.evicted().await;
        drop(first);
        let waiter = {
            let reg = reg.clone();
            tokio::spawn(async move { reg.wait_empty().await })
        };
        drop(second);
        waiter.await.unwrap();
        assert_eq!(reg.counts(), (0, 0));
    }
}
