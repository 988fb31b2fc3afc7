//! A small Prometheus registry: counters and fixed-bucket histograms,
//! rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the command latency histogram.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; LATENCY_BUCKETS.len()];
        }
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

#[derive(Default)]
struct Inner {
    /// (command, result) → count
    commands: BTreeMap<(String, &'static str), u64>,
    latency: BTreeMap<String, Histogram>,
    /// command → count of errors applying to the host (or persisting)
    apply_errors: BTreeMap<String, u64>,
    /// reason → count
    auth_failures: BTreeMap<&'static str, u64>,
    /// reason → count (oversized body, bad path, …)
    rejected: BTreeMap<&'static str, u64>,
    /// phase of a connection (handshake, idle, header, …) → count
    timeouts: BTreeMap<&'static str, u64>,
    /// reason → connections refused at accept
    connections_refused: BTreeMap<&'static str, u64>,
    /// unsigned connections closed to admit new ones
    connections_evicted: u64,
}

/// Process-wide metrics of the daemon.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        match self.inner.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// One executed command. `command` is a known wire name (never raw input).
    pub fn command(&self, command: &str, success: bool, elapsed: Duration) {
        let result = if success { "success" } else { "error" };
        self.with(|m| {
            *m.commands.entry((command.to_string(), result)).or_default() += 1;
            m.latency
                .entry(command.to_string())
                .or_default()
                .observe(elapsed.as_secs_f64());
        });
    }

    pub fn apply_error(&self, command: &str) {
        self.with(|m| *m.apply_errors.entry(command.to_string()).or_default() += 1);
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.with(|m| *m.auth_failures.entry(reason).or_default() += 1);
    }

    pub fn rejected(&self, reason: &'static str) {
        self.with(|m| *m.rejected.entry(reason).or_default() += 1);
    }

    /// A connection or request closed for taking too long in `phase`.
    pub fn timeout(&self, phase: &'static str) {
        self.with(|m| *m.timeouts.entry(phase).or_default() += 1);
    }

    pub fn connection_refused(&self, reason: &'static str) {
        self.with(|m| *m.connections_refused.entry(reason).or_default() += 1);
    }

    pub fn connection_evicted(&self) {
        self.with(|m| m.connections_evicted += 1);
    }

    /// Appends the gauge of open connections (from the connection table).
    pub fn render_connections(&self, out: &mut String, signed: usize, unsigned: usize) {
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP netbridge_executor_connections Open client connections, by whether one of their requests was signed."
        )
        .and_then(|()| writeln!(out, "# TYPE netbridge_executor_connections gauge"))
        .and_then(|()| writeln!(out, "netbridge_executor_connections{{signed=\"true\"}} {signed}"))
        .and_then(|()| {
            writeln!(
                out,
                "netbridge_executor_connections{{signed=\"false\"}} {unsigned}"
            )
        });
    }

    /// Total auth failures (all reasons).
    pub fn auth_failures_total(&self) -> u64 {
        self.with(|m| m.auth_failures.values().sum())
    }

    /// Renders the text exposition format.
    pub fn render(&self, networks: usize, uptime_secs: u64, version: &str) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.with(|m| render_into(&mut out, m, networks, uptime_secs, version));
        out
    }
}

fn render_into(
    out: &mut String,
    m: &Inner,
    networks: usize,
    uptime_secs: u64,
    version: &str,
) -> std::fmt::Result {
    writeln!(
        out,
        "# HELP netbridge_executor_build_info Build of the running executor."
    )?;
    writeln!(out, "# TYPE netbridge_executor_build_info gauge")?;
    writeln!(
        out,
        "netbridge_executor_build_info{{version=\"{}\"}} 1",
        escape(version)
    )?;
    writeln!(
        out,
        "# HELP netbridge_executor_uptime_seconds Seconds since the executor started."
    )?;
    writeln!(out, "# TYPE netbridge_executor_uptime_seconds gauge")?;
    writeln!(out, "netbridge_executor_uptime_seconds {uptime_secs}")?;
    writeln!(
        out,
        "# HELP netbridge_executor_networks Networks held by this executor."
    )?;
    writeln!(out, "# TYPE netbridge_executor_networks gauge")?;
    writeln!(out, "netbridge_executor_networks {networks}")?;

    writeln!(
        out,
        "# HELP netbridge_executor_commands_total Commands executed, by command and result."
    )?;
    writeln!(out, "# TYPE netbridge_executor_commands_total counter")?;
    for ((command, result), n) in &m.commands {
        writeln!(
            out,
            "netbridge_executor_commands_total{{command=\"{}\",result=\"{result}\"}} {n}",
            escape(command)
        )?;
    }
    writeln!(
        out,
        "# HELP netbridge_executor_command_duration_seconds Command latency."
    )?;
    writeln!(
        out,
        "# TYPE netbridge_executor_command_duration_seconds histogram"
    )?;
    for (command, h) in &m.latency {
        let c = escape(command);
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let n = h.counts.get(i).copied().unwrap_or(0);
            writeln!(
                out,
                "netbridge_executor_command_duration_seconds_bucket{{command=\"{c}\",le=\"{bound}\"}} {n}"
            )?;
        }
        writeln!(
            out,
            "netbridge_executor_command_duration_seconds_bucket{{command=\"{c}\",le=\"+Inf\"}} {}",
            h.count
        )?;
        writeln!(
            out,
            "netbridge_executor_command_duration_seconds_sum{{command=\"{c}\"}} {}",
            h.sum
        )?;
        writeln!(
            out,
            "netbridge_executor_command_duration_seconds_count{{command=\"{c}\"}} {}",
            h.count
        )?;
    }
    writeln!(
        out,
        "# HELP netbridge_executor_apply_errors_total Commands that failed applying to the host."
    )?;
    writeln!(out, "# TYPE netbridge_executor_apply_errors_total counter")?;
    for (command, n) in &m.apply_errors {
        writeln!(
            out,
            "netbridge_executor_apply_errors_total{{command=\"{}\"}} {n}",
            escape(command)
        )?;
    }
    writeln!(
        out,
        "# HELP netbridge_executor_auth_failures_total Requests refused by authentication."
    )?;
    writeln!(out, "# TYPE netbridge_executor_auth_failures_total counter")?;
    for (reason, n) in &m.auth_failures {
        writeln!(
            out,
            "netbridge_executor_auth_failures_total{{reason=\"{reason}\"}} {n}"
        )?;
    }
    writeln!(
        out,
        "# HELP netbridge_executor_requests_rejected_total Requests refused before authentication."
    )?;
    writeln!(
        out,
        "# TYPE netbridge_executor_requests_rejected_total counter"
    )?;
    for (reason, n) in &m.rejected {
        writeln!(
            out,
            "netbridge_executor_requests_rejected_total{{reason=\"{reason}\"}} {n}"
        )?;
    }
    writeln!(
        out,
        "# HELP netbridge_executor_timeouts_total Connections and requests closed for taking too long, by phase."
    )?;
    writeln!(out, "# TYPE netbridge_executor_timeouts_total counter")?;
    for (phase, n) in &m.timeouts {
        writeln!(
            out,
            "netbridge_executor_timeouts_total{{phase=\"{phase}\"}} {n}"
        )?;
    }
    writeln!(
        out,
        "# HELP netbridge_executor_connections_refused_total Connections closed at accept."
    )?;
    writeln!(
        out,
        "# TYPE netbridge_executor_connections_refused_total counter"
    )?;
    for (reason, n) in &m.connections_refused {
        writeln!(
            out,
            "netbridge_executor_connections_refused_total{{reason=\"{reason}\"}} {n}"
        )?;
    }
    writeln!(
        out,
        "# HELP netbridge_executor_connections_evicted_total Unsigned connections closed to admit new ones."
    )?;
    writeln!(
        out,
        "# TYPE netbridge_executor_connections_evicted_total counter"
    )?;
    writeln!(
        out,
        "netbridge_executor_connections_evicted_total {}",
        m.connections_evicted
    )?;
    Ok(())
}

/// Label values are escaped per the exposition format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.command("assign-ip", true, Duration::from_millis(3));
        m.command("assign-ip", false, Duration::from_millis(700));
        m.apply_error("assign-ip");
        m.auth_failure("stale");
        let text = m.render(2, 10, "0.1.0+abc");
        assert!(text.contains(
            "netbridge_executor_commands_total{command=\"assign-ip\",result=\"success\"} 1\n"
        ));
        assert!(text.contains(
            "netbridge_executor_commands_total{command=\"assign-ip\",result=\"error\"} 1\n"
        ));
        assert!(text.contains("netbridge_executor_command_duration_seconds_bucket{command=\"assign-ip\",le=\"0.005\"} 1\n"));
        assert!(text.contains("netbridge_executor_command_duration_seconds_bucket{command=\"assign-ip\",le=\"1\"} 2\n"));
        assert!(text.contains("netbridge_executor_command_duration_seconds_bucket{command=\"assign-ip\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("netbridge_executor_apply_errors_total{command=\"assign-ip\"} 1\n"));
        assert!(text.contains("netbridge_executor_auth_failures_total{reason=\"stale\"} 1\n"));
        assert!(text.contains("netbridge_executor_networks 2\n"));
    }

    #[test]
    fn renders_connection_counters_and_gauge() {
        let m = Metrics::default();
        m.timeout("idle");
        m.timeout("idle");
        m.connection_refused("per_peer_limit");
        m.connection_evicted();
        let mut text = m.render(0, 1, "v");
        m.render_connections(&mut text, 2, 5);
        assert!(text.contains("netbridge_executor_timeouts_total{phase=\"idle\"} 2\n"));
        assert!(text.contains(
            "netbridge_executor_connections_refused_total{reason=\"per_peer_limit\"} 1\n"
        ));
        assert!(text.contains("netbridge_executor_connections_evicted_total 1\n"));
        assert!(text.contains("netbridge_executor_connections{signed=\"true\"} 2\n"));
        assert!(text.contains("netbridge_executor_connections{signed=\"false\"} 5\n"));
    }
}
