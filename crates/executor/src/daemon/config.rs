//! Daemon configuration: a TOML file (`--config`) with command-line flags
//! taking precedence over it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::DaemonError;

/// Default HTTPS listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/netbridge";
/// Default guest and public device (`guest.network.device`, `public.network.device`).
pub const DEFAULT_DEVICE: &str = "eth1";
/// Default HMAC key file.
pub const DEFAULT_KEY_FILE: &str = "/etc/netbridge/executor.hmac";
/// Default largest accepted request body: the protocol's own limit, so that
/// rule documents with 10,000 rules fit, also in their Base64 form.
pub const DEFAULT_BODY_LIMIT: usize = netbridge_protocol::envelope::MAX_BODY_BYTES;
/// Default limit of request bodies read before their signature can be
/// checked, summed over connections that have not yet carried a signed
/// request: four bodies of the default limit.
pub const DEFAULT_MAX_UNVERIFIED_BODY_BYTES: usize = 4 * DEFAULT_BODY_LIMIT;
/// Shortest and longest accepted timeout, in seconds.
const TIMEOUT_RANGE: std::ops::RangeInclusive<f64> = 0.1..=3600.0;

/// Run-time flags of `netbridge-executor` (also used by the binary's clap parser).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct RunArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address (default 0.0.0.0:8443).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// State directory (default /var/lib/netbridge).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Default guest device (default eth1).
    #[arg(long, value_name = "DEV")]
    pub guest_device: Option<String>,
    /// Default public device (default eth1).
    #[arg(long, value_name = "DEV")]
    pub public_device: Option<String>,
    /// File holding the shared HMAC key (`executor.key` of the registration); mode 0600.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP (tests only). Forces a loopback listen address; requests
    /// are still signed.
    #[arg(long)]
    pub insecure_http: bool,
    /// Log level: error, warn, info, debug, trace (default info).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Host identity reported by /v1/health (default: the hostname).
    #[arg(long, value_name = "NAME")]
    pub host_name: Option<String>,
    /// Largest accepted request body in bytes (default 16 MiB).
    #[arg(long, value_name = "BYTES")]
    pub body_limit: Option<usize>,
    /// Tests: join the network namespace /run/netns/NAME before starting.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// Tests: run in a new private mount namespace with its own /run/netns.
    #[arg(long)]
    pub private_mounts: bool,
    /// Tests: join an existing mount namespace (e.g. /proc/PID/ns/mnt) whose
    /// /run/netns is private, so namespaces survive executor restarts.
    #[arg(long, value_name = "PATH", conflicts_with = "private_mounts")]
    pub mount_ns: Option<PathBuf>,
    /// Directory of operator `custom-action` hooks (default /etc/netbridge/hooks).
    #[arg(long, value_name = "DIR")]
    pub hooks_dir: Option<PathBuf>,
    /// Seconds a client may take to complete the TLS handshake (default 10).
    #[arg(long, value_name = "SECS")]
    pub tls_handshake_timeout: Option<f64>,
    /// Seconds from the first byte of a request head to its end (default 10).
    #[arg(long, value_name = "SECS")]
    pub header_read_timeout: Option<f64>,
    /// Seconds a connection may wait for the first byte of a request,
    /// after the handshake or between keep-alive requests (default 30).
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<f64>,
    /// Seconds within which a whole request body must arrive (default 60).
    #[arg(long, value_name = "SECS")]
    pub body_read_timeout: Option<f64>,
    /// Slowest accepted average body rate in bytes/s, counted after a 2 s
    /// grace (default 32768; 0 turns the rule off).
    #[arg(long, value_name = "BYTES")]
    pub body_min_rate: Option<u64>,
    /// Most open client connections (default 2048).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most open connections per client address that have not yet carried a
    /// signed request (default 64).
    #[arg(long, value_name = "N")]
    pub max_connections_per_peer: Option<usize>,
    /// Most bytes of request bodies read before their signature can be
    /// checked, over all connections not yet signed (default 64 MiB).
    #[arg(long, value_name = "BYTES")]
    pub max_unverified_body_bytes: Option<usize>,
    /// File holding a bearer token (mode 0600, at least 16 bytes) that also
    /// admits `GET /metrics`, for Prometheus, which cannot sign requests.
    #[arg(long, value_name = "FILE")]
    pub metrics_token_file: Option<PathBuf>,
}

/// The TOML file. Every key is optional; unknown keys are refused so that a
/// typo does not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub guest_device: Option<String>,
    pub public_device: Option<String>,
    pub key_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub log_level: Option<String>,
    pub host_name: Option<String>,
    pub body_limit: Option<usize>,
    pub hooks_dir: Option<PathBuf>,
    pub tls_handshake_timeout: Option<f64>,
    pub header_read_timeout: Option<f64>,
    pub idle_timeout: Option<f64>,
    pub body_read_timeout: Option<f64>,
    pub body_min_rate: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_peer: Option<usize>,
    pub max_unverified_body_bytes: Option<usize>,
    pub metrics_token_file: Option<PathBuf>,
}

/// How the daemon serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Tls { cert: PathBuf, key: PathBuf },
    InsecureHttp,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub guest_device: String,
    pub public_device: String,
    pub key_file: PathBuf,
    pub transport: Transport,
    pub log_level: log::LevelFilter,
    pub host_name: Option<String>,
    pub body_limit: usize,
    /// Operator hooks of `custom-action`.
    pub hooks_dir: PathBuf,
    /// Bearer token admitting `GET /metrics` besides signed requests.
    pub metrics_token_file: Option<PathBuf>,
    /// Timeouts and caps of the HTTPS server.
    pub http: HttpLimits,
}

/// What one client may hold of the HTTPS server: timeouts of every phase of
/// a connection and caps on connections and on unverified request bodies.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpLimits {
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
    /// Bytes/s; 0 = only `body_read_timeout` applies.
    pub body_min_rate: u64,
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub max_unverified_body_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            // Longer than the bridge keeps a pooled connection idle (20 s),
            // so the bridge never sends on a connection being closed here.
            idle_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            body_min_rate: 32 * 1024,
            max_connections: 2048,
            max_connections_per_peer: 64,
            max_unverified_body_bytes: DEFAULT_MAX_UNVERIFIED_BODY_BYTES,
        }
    }
}

/// A timeout setting in seconds (fractions allowed).
fn timeout(field: &str, value: Option<f64>, default: Duration) -> Result<Duration, DaemonError> {
    match value {
        None => Ok(default),
        Some(secs) if secs.is_finite() && TIMEOUT_RANGE.contains(&secs) => {
            Ok(Duration::from_secs_f64(secs))
        }
        Some(_) => Err(invalid(
            field,
            format!(
                "must be a number of seconds from {} to {}",
                TIMEOUT_RANGE.start(),
                TIMEOUT_RANGE.end()
            ),
        )),
    }
}

impl HttpLimits {
    fn resolve(
        args: &RunArgs,
        file: &FileConfig,
        body_limit: usize,
    ) -> Result<HttpLimits, DaemonError> {
        let d = HttpLimits::default();
        let limits = HttpLimits {
            tls_handshake_timeout: timeout(
                "tls_handshake_timeout",
                args.tls_handshake_timeout.or(file.tls_handshake_timeout),
                d.tls_handshake_timeout,
            )?,
            header_read_timeout: timeout(
                "header_read_timeout",
                args.header_read_timeout.or(file.header_read_timeout),
                d.header_read_timeout,
            )?,
            idle_timeout: timeout(
                "idle_timeout",
                args.idle_timeout.or(file.idle_timeout),
                d.idle_timeout,
            )?,
            body_read_timeout: timeout(
                "body_read_timeout",
                args.body_read_timeout.or(file.body_read_timeout),
                d.body_read_timeout,
            )?,
            body_min_rate: args
                .body_min_rate
                .or(file.body_min_rate)
                .unwrap_or(d.body_min_rate),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            max_connections_per_peer: args
                .max_connections_per_peer
                .or(file.max_connections_per_peer)
                .unwrap_or(d.max_connections_per_peer),
            max_unverified_body_bytes: args
                .max_unverified_body_bytes
                .or(file.max_unverified_body_bytes)
                .unwrap_or(d.max_unverified_body_bytes.max(body_limit)),
        };
        if limits.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if limits.max_connections_per_peer == 0
            || limits.max_connections_per_peer > limits.max_connections
        {
            return Err(invalid(
                "max_connections_per_peer",
                format!(
                    "must be from 1 to max_connections ({})",
                    limits.max_connections
                ),
            ));
        }
        // A fresh connection must be able to send one body of the largest
        // accepted size; the budget is counted in u32 permits.
        if limits.max_unverified_body_bytes < body_limit
            || limits.max_unverified_body_bytes > u32::MAX as usize
        {
            return Err(invalid(
                "max_unverified_body_bytes",
                format!("must be from body_limit ({body_limit}) to {}", u32::MAX),
            ));
        }
        Ok(limits)
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> DaemonError {
    DaemonError::Config {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Device names follow the kernel's rules: 1-15 characters, no `/`, `:`,
/// whitespace; we also keep to a conservative alphabet because they end up in
/// bridge names and argument vectors.
fn check_device(field: &str, dev: &str) -> Result<(), DaemonError> {
    let ok = !dev.is_empty()
        && dev.len() <= 15
        && dev
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            "must be 1-15 characters of [A-Za-z0-9._-]".to_string(),
        ))
    }
}

fn check_host_name(name: &str) -> Result<(), DaemonError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "host_name",
            "must be 1-253 characters of [A-Za-z0-9._-]",
        ))
    }
}

impl FileConfig {
    /// Parses the TOML text of a configuration file.
    pub fn parse(text: &str) -> Result<FileConfig, DaemonError> {
        toml::from_str(text).map_err(|e| invalid("config", e.to_string()))
    }

    pub fn load(path: &Path) -> Result<FileConfig, DaemonError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid("config", format!("{}: {e}", path.display())))?;
        FileConfig::parse(&text)
    }
}

impl Config {
    /// Merges flags over the file over the defaults and validates the result.
    pub fn resolve(args: &RunArgs, file: FileConfig) -> Result<Config, DaemonError> {
        let body_limit = args
            .body_limit
            .or(file.body_limit)
            .unwrap_or(DEFAULT_BODY_LIMIT);
        if body_limit < 1024 {
            return Err(invalid("body_limit", "must be at least 1024 bytes"));
        }
        let http = HttpLimits::resolve(args, &file, body_limit)?;
        let listen_text = args
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let mut listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| invalid("listen", "expected ADDRESS:PORT, e.g. 0.0.0.0:8443"))?;
        let cert = args.tls_cert.clone().or(file.tls_cert);
        let key = args.tls_key.clone().or(file.tls_key);
        let transport = if args.insecure_http {
            // Plain HTTP must never be reachable from another machine.
            if !listen.ip().is_loopback() {
                let loopback = if listen.is_ipv6() {
                    std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
                } else {
                    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
                };
                log::warn!(
                    "--insecure-http: listening on {loopback} instead of {}",
                    listen.ip()
                );
                listen.set_ip(loopback);
            }
            Transport::InsecureHttp
        } else {
            match (cert, key) {
                (Some(cert), Some(key)) => Transport::Tls { cert, key },
                (None, _) => {
                    return Err(invalid(
                        "tls_cert",
                        "a TLS certificate is required (or --insecure-http for tests)",
                    ))
                }
                (_, None) => {
                    return Err(invalid(
                        "tls_key",
                        "a TLS private key is required (or --insecure-http for tests)",
                    ))
                }
            }
        };
        let guest_device = args
            .guest_device
            .clone()
            .or(file.guest_device)
            .unwrap_or_else(|| DEFAULT_DEVICE.to_string());
        check_device("guest_device", &guest_device)?;
        let public_device = args
            .public_device
            .clone()
            .or(file.public_device)
            .unwrap_or_else(|| DEFAULT_DEVICE.to_string());
        check_device("public_device", &public_device)?;
        let level_text = args
            .log_level
            .clone()
            .or(file.log_level)
            .unwrap_or_else(|| "info".to_string());
        let log_level: log::LevelFilter = level_text
            .parse()
            .map_err(|_| invalid("log_level", "expected error, warn, info, debug or trace"))?;
        let host_name = args.host_name.clone().or(file.host_name);
        if let Some(name) = &host_name {
            check_host_name(name)?;
        }
        Ok(Config {
            listen,
            state_dir: args
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            guest_device,
            public_device,
            key_file: args
                .key_file
                .clone()
                .or(file.key_file)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE)),
            transport,
            log_level,
            host_name,
            body_limit,
            hooks_dir: args
                .hooks_dir
                .clone()
                .or(file.hooks_dir)
                .unwrap_or_else(|| PathBuf::from(crate::vpc_engine::DEFAULT_HOOKS_DIR)),
            http,
            metrics_token_file: args.metrics_token_file.clone().or(file.metrics_token_file),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_args() -> RunArgs {
        RunArgs {
            tls_cert: Some("/c.pem".into()),
            tls_key: Some("/k.pem".into()),
            ..RunArgs::default()
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let c = Config::resolve(&tls_args(), FileConfig::default()).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/netbridge"));
        assert_eq!(c.guest_device, "eth1");
        assert_eq!(c.public_device, "eth1");
        assert_eq!(c.body_limit, DEFAULT_BODY_LIMIT);
    }

    #[test]
    fn flags_override_the_file() {
        let file = FileConfig::parse(
            "listen = \"0.0.0.0:9000\"\nguest_device = \"bond0\"\nstate_dir = \"/srv/nb\"\n",
        )
        .unwrap();
        let args = RunArgs {
            listen: Some("127.0.0.1:9443".into()),
            ..tls_args()
        };
        let c = Config::resolve(&args, file).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9443");
        assert_eq!(c.guest_device, "bond0");
        assert_eq!(c.state_dir, PathBuf::from("/srv/nb"));
    }

    #[test]
    fn insecure_http_forces_loopback() {
        let args = RunArgs {
            insecure_http: true,
            listen: Some("0.0.0.0:8080".into()),
            ..RunArgs::default()
        };
        let c = Config::resolve(&args, FileConfig::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.transport, Transport::InsecureHttp);
    }

    #[test]
    fn http_limits_come_from_the_file_and_flags() {
        let c = Config::resolve(&tls_args(), FileConfig::default()).unwrap();
        assert_eq!(c.http, HttpLimits::default());
        let file = FileConfig::parse(
            "idle_timeout = 45\nheader_read_timeout = 2.5\nmax_connections = 100\n\
             max_connections_per_peer = 10\nbody_min_rate = 0\n",
        )
        .unwrap();
        let args = RunArgs {
            idle_timeout: Some(0.5),
            max_unverified_body_bytes: Some(DEFAULT_BODY_LIMIT),
            ..tls_args()
        };
        let c = Config::resolve(&args, file).unwrap();
        assert_eq!(c.http.idle_timeout, Duration::from_millis(500));
        assert_eq!(c.http.header_read_timeout, Duration::from_millis(2500));
        assert_eq!(c.http.body_read_timeout, Duration::from_secs(60));
        assert_eq!(c.http.body_min_rate, 0);
        assert_eq!(
            (c.http.max_connections, c.http.max_connections_per_peer),
            (100, 10)
        );
        assert_eq!(c.http.max_unverified_body_bytes, DEFAULT_BODY_LIMIT);
    }

    #[test]
    fn bad_http_limits_name_the_field() {
        let cases = [
            ("idle_timeout = 0", "'idle_timeout'"),
            ("tls_handshake_timeout = 7200", "'tls_handshake_timeout'"),
            ("body_read_timeout = nan", "'body_read_timeout'"),
            ("max_connections = 0", "'max_connections'"),
            (
                "max_connections = 10\nmax_connections_per_peer = 11",
                "'max_connections_per_peer'",
            ),
            (
                "max_unverified_body_bytes = 1024",
                "'max_unverified_body_bytes'",
            ),
        ];
        for (text, field) in cases {
            let file = FileConfig::parse(text).unwrap();
            let err = Config::resolve(&tls_args(), file).unwrap_err();
            assert!(err.to_string().contains(field), "{text}: {err}");
        }
        let err = FileConfig::parse("header_read_timeout = \"10s\"").unwrap_err();
        assert!(err.to_string().contains("header_read_timeout"), "{err}");
    }

    #[test]
    fn packaged_example_config_is_valid() {
        let file = FileConfig::parse(include_str!("../../../../packaging/executor.toml")).unwrap();
        let c = Config::resolve(&RunArgs::default(), file).unwrap();
        assert_eq!(c.key_file, PathBuf::from("/etc/netbridge/executor.hmac"));
        assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
        // The example spells out the defaults.
        assert_eq!(c.http, HttpLimits::default());
        assert_eq!(c.metrics_token_file, None);
        let file =
            FileConfig::parse("metrics_token_file = \"/etc/netbridge/metrics.token\"\n").unwrap();
        let c = Config::resolve(&tls_args(), file).unwrap();
        assert_eq!(
            c.metrics_token_file,
            Some(PathBuf::from("/etc/netbridge/metrics.token"))
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = Config::resolve(&RunArgs::default(), FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("'tls_cert'"), "{err}");
        let args = RunArgs {
            guest_device: Some("eth1;reboot".into()),
            ..tls_args()
        };
        let err = Config::resolve(&args, FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("'guest_device'"), "{err}");
        let err = FileConfig::parse("lissen = \"x\"").unwrap_err();
        assert!(err.to_string().contains("lissen"), "{err}");
    }
}
