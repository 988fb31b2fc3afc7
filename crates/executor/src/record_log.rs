//! Append-only log of a network's guest records (NICs with their static
//! leases, DNS records), next to its state file:
//! `<state_dir>/networks/<namespace>.log`, 0600; for a VPC tier, next to
//! the VPC's document: `<state_dir>/vpcs/cs-vpc-<id>.tier-<network_id>.log`.
//!
//! Saving a whole network state costs time proportional to its records
//! (thousands of VMs); a command that only adds, changes or removes records
//! appends one line instead: a JSON array of the record operations of that
//! command, written with one `write` on an `O_APPEND` file. Loading replays
//! the lines in order on top of the state file. Every operation is "set this
//! key to this value" or "remove this key", so replaying a line the state
//! file already reflects changes nothing: the state file may be rewritten
//! (compaction, or any command that changes more than records) before the
//! log is removed, and a crash in between loses nothing.
//!
//! A `kill -9` during an append leaves at most an unterminated last line:
//! that command was never acknowledged, so the line is dropped on load (the
//! file is cut back to its last complete line, so the next append starts on
//! a line of its own). Like the state file's unsynced replace, lines are
//! not fsynced: a power loss may lose the last seconds of records.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::services::model::{DnsRecord, Nic};
use super::services::GuestServices;
use super::state::StateError;

/// One record operation (last writer wins per key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordOp {
    /// NIC set, keyed by its MAC.
    Nic(Nic),
    NicRemoved(String),
    Dns {
        ip: Ipv4Addr,
        record: DnsRecord,
    },
    DnsRemoved(Ipv4Addr),
}

/// The log of the network whose state file is `state_path`.
pub fn log_path(state_path: &Path) -> PathBuf {
    state_path.with_extension("log")
}

/// The record operations turning `old` into `new`, or `None` when anything
/// other than records differs (the caller then saves the whole state).
/// Walks both maps once, comparing only: no serialisation, no clone of
/// unchanged records.
pub fn delta(old: &GuestServices, new: &GuestServices) -> Option<Vec<RecordOp>> {
    if !same_except_records(old, new) {
        return None;
    }
    let mut ops = Vec::new();
    diff_maps(
        &old.nics,
        &new.nics,
        &mut ops,
        |_, n| RecordOp::Nic(Nic::clone(n)),
        |k| RecordOp::NicRemoved(k.clone()),
    );
    diff_maps(
        &old.dns_records,
        &new.dns_records,
        &mut ops,
        |ip, r| RecordOp::Dns {
            ip: *ip,
            record: DnsRecord::clone(r),
        },
        |ip| RecordOp::DnsRemoved(*ip),
    );
    Some(ops)
}

/// Equality of everything but `nics` and `dns_records`. Destructured so a
/// new field cannot be forgotten here.
fn same_except_records(a: &GuestServices, b: &GuestServices) -> bool {
    let GuestServices {
        extension_ip,
        gateway,
        cidr,
        dns,
        domain,
        dhcp_enabled,
        dns_enabled,
        nics: _,
        dns_records: _,
        nic_options,
        lb_rules,
    } = a;
    *extension_ip == b.extension_ip
        && *gateway == b.gateway
        && *cidr == b.cidr
        && *dns == b.dns
        && *domain == b.domain
        && *dhcp_enabled == b.dhcp_enabled
        && *dns_enabled == b.dns_enabled
        && *nic_options == b.nic_options
        && *lb_rules == b.lb_rules
}

fn diff_maps<K: Ord, V: PartialEq>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    ops: &mut Vec<RecordOp>,
    set: impl Fn(&K, &V) -> RecordOp,
    gone: impl Fn(&K) -> RecordOp,
) {
    let mut o = old.iter().peekable();
    let mut n = new.iter().peekable();
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some((ok, _)), None) => {
                ops.push(gone(ok));
                o.next();
            }
            (None, Some((nk, nv))) => {
                ops.push(set(nk, nv));
                n.next();
            }
            (Some((ok, ov)), Some((nk, nv))) => match ok.cmp(nk) {
                std::cmp::Ordering::Less => {
                    ops.push(gone(ok));
                    o.next();
                }
                std::cmp::Ordering::Greater => {
                    ops.push(set(nk, nv));
                    n.next();
                }
                std::cmp::Ordering::Equal => {
                    if ov != nv {
                        ops.push(set(nk, nv));
                    }
                    o.next();
                    n.next();
                }
            },
        }
    }
}

/// Applies `ops` in order.
pub fn apply(guest: &mut GuestServices, ops: Vec<RecordOp>) {
    for op in ops {
        match op {
            RecordOp::Nic(nic) => {
                guest.nics.insert(nic.mac.clone(), Arc::new(nic));
            }
            RecordOp::NicRemoved(mac) => {
                guest.nics.remove(&mac);
            }
            RecordOp::Dns { ip, record } => {
                guest.dns_records.insert(ip, Arc::new(record));
            }
            RecordOp::DnsRemoved(ip) => {
                guest.dns_records.remove(&ip);
            }
        }
    }
}

fn io_err(path: &Path, source: std::io::Error) -> StateError {
    StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The encoded line of one command's operations.
pub fn encode(ops: &[RecordOp]) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(ops)?;
    line.push(b'\n');
    Ok(line)
}

/// Appends one command's operations as one line (one `write`).
pub fn append(path: &Path, ops: &[RecordOp]) -> Result<(), StateError> {
    let line = encode(ops).map_err(|e| StateError::Corrupt {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    let before = f.metadata().map_err(|e| io_err(path, e))?.len();
    f.write_all(&line).map_err(|e| {
        // A partial line (disk full) would swallow the next command's
        // line: cut it off again (the command fails, unacknowledged).
        let _ = f.set_len(before);
        io_err(path, e)
    })
}

/// Removes the log (after the state file took its records).
pub fn remove(path: &Path) -> Result<(), StateError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Complete lines of `text` decoded in order, plus the length of the
/// complete part (an unterminated tail is a torn append). A complete line
/// that does not decode is skipped with a warning.
pub fn decode(text: &[u8], path: &Path) -> (Vec<Vec<RecordOp>>, usize) {
    let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut lines = Vec::new();
    for (i, line) in text[..complete].split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Vec<RecordOp>>(line) {
            Ok(ops) => lines.push(ops),
            Err(e) => log::warn!("{}: line {} skipped: {e}", path.display(), i + 1),
        }
    }
    (lines, complete)
}

/// Replays the log of `state_path` (if any) onto `guest`; cuts a torn last
/// line off the file. Returns the number of lines (for compaction).
pub fn replay(state_path: &Path, guest: &mut GuestServices) -> Result<usize, StateError> {
    replay_log(&log_path(state_path), guest)
}

/// [`replay`] of the log at `path` itself (a VPC tier's log, named by the
/// VPC engine).
pub fn replay_log(path: &Path, guest: &mut GuestServices) -> Result<usize, StateError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(path, e)),
    };
    let (lines, complete) = decode(&text, path);
    if complete < text.len() {
        log::warn!(
            "{}: dropping an incomplete last line (interrupted write)",
            path.display()
        );
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(complete as u64))
            .map_err(|e| io_err(path, e))?;
    }
    let n = lines.len();
    for ops in lines {
        apply(guest, ops);
    }
    Ok(n)
}

/// Number of lines in the log (an executor that did not load it counts once).
pub fn count_lines(state_path: &Path) -> usize {
    fs::read(log_path(state_path)).map_or(0, |t| t.iter().filter(|b| **b == b'\n').count())
}

/// Whether a log of `lines` lines should be folded into the state file:
/// past twice the live records plus a constant, so rewriting stays
/// amortised O(1) per command.
pub fn needs_compaction(lines: usize, guest: &GuestServices) -> bool {
    lines > 2 * (guest.nics.len() + guest.dns_records.len()) + 64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(mac: &str, ip: [u8; 4]) -> Nic {
        Nic {
            mac: mac.into(),
            ip: Ipv4Addr::from(ip),
            ip6: None,
            hostname: Some(format!("vm{}", ip[3])),
            default_nic: true,
            nic_id: None,
            gateway: None,
        }
    }

    fn rec(name: &str) -> DnsRecord {
        DnsRecord {
            hostname: name.into(),
            ip6: None,
        }
    }

    fn base() -> GuestServices {
        let mut g = GuestServices {
            dhcp_enabled: true,
            dns_enabled: true,
            ..Default::default()
        };
        g.nics.insert(
            "02:00:00:00:00:01".into(),
            Arc::new(nic("02:00:00:00:00:01", [10, 1, 1, 11])),
        );
        g.dns_records
            .insert(Ipv4Addr::new(10, 1, 1, 11), Arc::new(rec("vm11")));
        g
    }

    #[test]
    fn delta_names_exactly_the_changed_records() {
        let old = base();
        let mut new = old.clone();
        assert_eq!(delta(&old, &new), Some(vec![]));
        new.dns_records
            .insert(Ipv4Addr::new(10, 1, 1, 12), Arc::new(rec("vm12")));
        new.dns_records.remove(&Ipv4Addr::new(10, 1, 1, 11));
        Arc::make_mut(new.nics.get_mut("02:00:00:00:00:01").unwrap()).hostname =
            Some("renamed".into());
        let ops = delta(&old, &new).unwrap();
        assert_eq!(ops.len(), 3);
        let mut replayed = old.clone();
        apply(&mut replayed, ops);
        assert_eq!(replayed, new);
        // Anything else changed: the whole state is saved.
        let mut other = old.clone();
        other.domain = Some("example.test".into());
        assert_eq!(delta(&old, &other), None);
    }

    #[test]
    fn replay_applies_lines_in_order_and_cuts_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("cs-net-7.json");
        let log = log_path(&state);
        let ip = Ipv4Addr::new(10, 1, 1, 20);
        append(
            &log,
            &[RecordOp::Dns {
                ip,
                record: rec("first"),
            }],
        )
        .unwrap();
        append(&log, &[RecordOp::DnsRemoved(ip)]).unwrap();
        append(
            &log,
            &[RecordOp::Dns {
                ip,
                record: rec("last"),
            }],
        )
        .unwrap();
        // An interrupted append: half a line, no newline.
        let torn = encode(&[RecordOp::NicRemoved("02:00:00:00:00:01".into())]).unwrap();
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(f);
        let mut g = base();
        assert_eq!(replay(&state, &mut g).unwrap(), 3);
        assert_eq!(g.dns_records[&ip].hostname, "last");
        assert!(
            g.nics.contains_key("02:00:00:00:00:01"),
            "torn line ignored"
        );
        // The file was cut back: the next append is a line of its own.
        append(&log, &[RecordOp::NicRemoved("02:00:00:00:00:01".into())]).unwrap();
        let mut g = base();
        assert_eq!(replay(&state, &mut g).unwrap(), 4);
        assert!(g.nics.is_empty());
        assert_eq!(count_lines(&state), 4);
    }

    #[test]
    fn replaying_over_a_state_that_already_has_the_lines_is_harmless() {
        // Compaction writes the state file before removing the log.
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("cs-net-8.json");
        let mut live = base();
        let steps = [
            vec![RecordOp::Dns {
                ip: Ipv4Addr::new(10, 1, 1, 30),
                record: rec("a"),
            }],
            vec![RecordOp::DnsRemoved(Ipv4Addr::new(10, 1, 1, 11))],
            vec![RecordOp::NicRemoved("02:00:00:00:00:01".into())],
        ];
        for ops in &steps {
            append(&log_path(&state), ops).unwrap();
            apply(&mut live, ops.clone());
        }
        let mut again = live.clone();
        replay(&state, &mut again).unwrap();
        assert_eq!(again, live);
        remove(&log_path(&state)).unwrap();
        remove(&log_path(&state)).unwrap();
        assert_eq!(count_lines(&state), 0);
    }

    #[test]
    fn a_garbled_complete_line_is_skipped_not_fatal() {
        let p = Path::new("/x/cs-net-1.log");
        let text = b"[{\"dns_removed\":\"10.0.0.1\"}]\nnot json\n[]\n";
        let (lines, n) = decode(text, p);
        assert_eq!(
            lines,
            vec![vec![RecordOp::DnsRemoved([10, 0, 0, 1].into())], vec![]]
        );
        assert_eq!(n, text.len());
    }

    #[test]
    fn compaction_threshold_grows_with_live_records() {
        let g = base();
        assert!(!needs_compaction(68, &g));
        assert!(needs_compaction(69, &g));
    }
}
