//! What the executor carries out, in one place: the control plane accepts no
//! other `Lb` capability value in an extension declaration, and the executor
//! refuses a rule outside it.
//!
//! | protocol | via | algorithms |
//! |---|---|---|
//! | `tcp` | haproxy | `roundrobin`, `leastconn`, `source` |
//! | `tcp-proxy` | haproxy (`send-proxy`) | `roundrobin`, `leastconn`, `source` |
//! | `udp` | nftables DNAT | `roundrobin` (`numgen inc`, per new flow), `source` (`jhash ip saddr`) |

/// Load-balancing protocols the executor implements: the only values the
/// control plane accepts for `Lb.SupportedProtocols`.
pub const LB_PROTOCOLS: &[&str] = &["tcp", "udp", "tcp-proxy"];
/// Load-balancing algorithms implemented (for at least one protocol): the
/// only values the control plane accepts for `Lb.SupportedLBAlgorithms`.
pub const LB_ALGORITHMS: &[&str] = &["roundrobin", "leastconn", "source"];
/// Algorithms of `udp` rules (nftables has no connection count).
pub const LB_UDP_ALGORITHMS: &[&str] = &["roundrobin", "source"];

/// Algorithms the executor carries out for `protocol` (one of
/// [`LB_PROTOCOLS`]); empty for an unknown protocol.
pub fn lb_algorithms_for(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "udp" => LB_UDP_ALGORITHMS,
        "tcp" | "tcp-proxy" => LB_ALGORITHMS,
        _ => &[],
    }
}
