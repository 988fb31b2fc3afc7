//! Bridge-side dispatch: placement, failover with state replay and the
//! signed HTTPS client to executors.
//!
//! - [`config`]: endpoints and credentials from the registration details.
//! - [`placement`]: POSIX cksum placement, scope and namespace (pure).
//! - [`journal`]: the desired state sent per network, for replay on a move.
//! - [`client`]: pooled, pinned, signing HTTPS client.
//! - [`netns`]: executor traffic inside another network namespace
//!   ([`Dispatcher::new_in_netns`], used with [`Dispatcher::execute_shared`]).
//!
//! The in-process product (JNI, `netbridge exec`) is [`crate::bridge::Bridge`]:
//! one shared dispatcher whose journal is the registry's
//! ([`crate::registry::RegistryJournal`]).
//!
//! Entry: [`Dispatcher::execute`] (blocking; JNI, CLI, entry point) or
//! [`Dispatcher::execute_async`]. It returns the command's stdout-equivalent
//! (what the script form prints) or a [`DispatchError`] whose
//! [`ErrorKind`] tells configuration, unreachable, remote failure and timeout
//! apart. Exit codes of the script form: 1, 2, 3 and 2 (a timeout means the
//! executor did not answer in time, so it counts as unreachable).
//!
//! Moves: only a placement decision moves a network (the host CloudStack
//! names is unhealthy or no longer listed). Then the target is cleared of any
//! stale copy (`destroy-network`, or each tier and `shutdown-vpc`), the
//! journal is replayed there in order, and the former host is told to drop
//! the network; a former host that cannot be reached is remembered and
//! retried during later `ensure-network-device` calls (rate-limited). When
//! CloudStack names a listed host that differs from the journal's, CloudStack
//! is trusted and the journal is aligned without replay (e.g. another
//! management server moved it). With several management servers the journal
//! must be shared (registry-backed, or one shared state directory).
//!
//! Certificate pin mismatch: on the command path it is a Configuration error
//! (retrying cannot help; either `executor.fingerprint` is wrong or someone is
//! in the middle). During placement a mismatching host is merely unhealthy; if
//! no host is healthy the error is Unreachable and lists each host's reason.
//!
//! A refused request signature (HTTP 401/403: `executor.key` is not the
//! executor's) is a Configuration error on the command path; during
//! placement such a host is not used, and when no host is usable while one
//! of them refused the signature, the error is Configuration too.

pub mod client;
pub mod config;
pub mod journal;
pub mod netns;
pub mod placement;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Bytes;
use hyper::Method;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

pub use client::{Client, Reply, TransportError};
pub use config::{ExecutorConfig, HostEntry, SecretKey, Transport};
pub use journal::{
    CommandJournal, FileJournal, JournalError, JournalHead, JournalState, MemoryJournal,
};
pub use netbridge_protocol::envelope::RawEnvelope;
pub use netns::Netns;
pub use placement::{cksum, device_details, placement_order};

use journal::{NETWORK_DETAILS, PHYSICAL_DETAILS};
use netbridge_protocol::target::Target;
use netbridge_protocol::{sanitize_for_message, Command};

/// Largest envelope accepted.
pub const MAX_ENVELOPE_BYTES: usize = netbridge_protocol::envelope::MAX_BODY_BYTES;

/// Which class of failure a [`DispatchError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad command, payload or registration details; fix and retry.
    Configuration,
    /// No executor could be reached.
    Unreachable,
    /// The executor answered with a failure (or an unusable answer).
    Remote,
    /// The timeout expired before the executor answered.
    Timeout,
}

/// Errors of the dispatch layer. Messages never contain secret details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    #[error("{0}")]
    Configuration(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Remote(String),
    #[error("{0}")]
    Timeout(String),
}

impl DispatchError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            DispatchError::Configuration(_) => ErrorKind::Configuration,
            DispatchError::Unreachable(_) => ErrorKind::Unreachable,
            DispatchError::Remote(_) => ErrorKind::Remote,
            DispatchError::Timeout(_) => ErrorKind::Timeout,
        }
    }

    /// Exit code of the script form: 1 configuration, 2 unreachable or
    /// timeout, 3 remote failure.
    pub fn exit_code(&self) -> i32 {
        match self.kind() {
            ErrorKind::Configuration => 1,
            ErrorKind::Unreachable | ErrorKind::Timeout => 2,
            ErrorKind::Remote => 3,
        }
    }

    /// Stable short code (`configuration`, `unreachable`, `remote`, `timeout`)
    /// for exceptions and API errors.
    pub fn code(&self) -> &'static str {
        match self.kind() {
            ErrorKind::Configuration => "configuration",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Remote => "remote",
            ErrorKind::Timeout => "timeout",
        }
    }
}

impl From<JournalError> for DispatchError {
    fn from(e: JournalError) -> Self {
        DispatchError::Configuration(e.to_string())
    }
}

/// Tunables of the dispatcher. Defaults suit production.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Per-probe bound of `GET /v1/health` during placement.
    pub health_timeout: Duration,
    /// Bound of telling a former host to drop a network.
    pub drop_timeout: Duration,
    /// Attempts of an idempotent command on transport failures (≥ 1).
    pub max_attempts: u32,
    /// First retry delay, doubled up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Least interval between two attempts (made during
    /// `ensure-network-device`) to drop a network on a former host that was
    /// unreachable when the network moved away.
    pub pending_drop_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            health_timeout: Duration::from_millis(1500),
            drop_timeout: Duration::from_secs(2),
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            pending_drop_interval: Duration::from_secs(60),
        }
    }
}

/// A command's envelope, parsed once (the protocol's [`RawEnvelope`]):
/// the root is kept whole to forward and to journal.
struct Envelope {
    root: Map<String, Value>,
    details: BTreeMap<String, String>,
    /// The router the command is about (the journal key is its namespace).
    target: Target,
}

impl Envelope {
    fn new(
        command: Command,
        raw: RawEnvelope,
        details_override: Option<&BTreeMap<String, String>>,
    ) -> Result<Envelope, DispatchError> {
        let invalid =
            |e: netbridge_protocol::ProtocolError| DispatchError::Configuration(e.to_string());
        let details = match details_override {
            Some(d) => d.clone(),
            None => raw.physical().map_err(invalid)?,
        };
        let target = raw.target(command).map_err(invalid)?;
        Ok(Envelope {
            root: raw.root,
            details,
            target,
        })
    }

    fn network_details_host(&self) -> Option<String> {
        self.root
            .get(NETWORK_DETAILS)
            .and_then(|d| d.get("host"))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
    }

    /// `current_details.host` (a JSON string, or an object), else the
    /// network-extension-details host.
    fn current_host(&self) -> Option<String> {
        let current = self
            .root
            .get("payload")
            .and_then(|p| p.get("current_details"));
        let parsed = match current {
            Some(Value::String(s)) => serde_json::from_str::<Value>(s).ok(),
            Some(v @ Value::Object(_)) => Some(v.clone()),
            _ => None,
        };
        parsed
            .as_ref()
            .and_then(|v| v.get("host"))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .or_else(|| self.network_details_host())
    }

    fn details_value(&self) -> Value {
        Value::Object(
            self.details
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    }
}

/// Receives each stage of a command as it begins ("replaying cs-net-42 to
/// executor h2 (step 3 of 120: apply-fw-rules)"): what a terminal shows
/// during long operations such as a journal replay on a move.
pub type ProgressSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Per-call context: the deadline and what we were doing (for timeouts).
struct Call {
    command: Command,
    timeout: Duration,
    deadline: Instant,
    stage: Mutex<String>,
    progress: Option<ProgressSink>,
}

impl Call {
    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
    fn note(&self, stage: String) {
        if let Some(progress) = &self.progress {
            progress(&stage);
        }
        *self.stage.lock().unwrap_or_else(|p| p.into_inner()) = stage;
    }
}

/// Places and runs commands on executors. `Send + Sync`: share one per
/// process; it owns the connection pool and a small runtime.
pub struct Dispatcher {
    client: Client,
    journal: Arc<dyn CommandJournal>,
    /// None for [`Dispatcher::for_async`] (the caller's runtime is used).
    runtime: Option<tokio::runtime::Runtime>,
    settings: Settings,
    /// Namespace the runtime threads entered ([`Dispatcher::new_in_netns`]).
    netns: Option<Arc<Netns>>,
    /// Set when a runtime thread could not enter `netns`.
    netns_failed: Arc<AtomicBool>,
    progress: Option<ProgressSink>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Dispatcher {
    /// For long-lived processes (JNI, CLI server): a two-thread runtime keeps
    /// pooled connections alive between calls from any number of threads.
    pub fn new(journal: Arc<dyn CommandJournal>) -> Result<Dispatcher, DispatchError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("netbridge-dispatch")
            .enable_all()
            .build()
            .map_err(|e| DispatchError::Configuration(format!("cannot start runtime: {e}")))?;
        Ok(Dispatcher::with_runtime(journal, Some(runtime)))
    }

    /// As [`Dispatcher::new`], with every runtime thread (workers and the
    /// blocking pool, hence every connection and health probe) inside the
    /// network namespace `netns` (e.g. `/run/netns/mgmt`); `None` is
    /// [`Dispatcher::new`]. Commands then run on the runtime's threads: use
    /// [`Dispatcher::execute_shared`]. Needs CAP_SYS_ADMIN; a namespace that
    /// cannot be entered is a Configuration error here.
    pub fn new_in_netns(
        journal: Arc<dyn CommandJournal>,
        netns: Option<&Path>,
    ) -> Result<Dispatcher, DispatchError> {
        let Some(path) = netns else {
            return Dispatcher::new(journal);
        };
        let ns = Arc::new(Netns::open(path)?);
        let failed = Arc::new(AtomicBool::new(false));
        let (ns2, failed2) = (ns.clone(), failed.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("netbridge-dispatch")
            .on_thread_start(move || {
                if let Err(e) = ns2.enter() {
                    log::error!(
                        "dispatch thread cannot enter network namespace {}: {e}",
                        ns2.path().display()
                    );
                    failed2.store(true, Ordering::SeqCst);
                }
            })
            .enable_all()
            .build()
            .map_err(|e| DispatchError::Configuration(format!("cannot start runtime: {e}")))?;
        log::info!(
            "executor traffic runs in network namespace {}",
            path.display()
        );
        let mut d = Dispatcher::with_runtime(journal, Some(runtime));
        // Connections are opened inside the namespace whichever thread
        // drives the request (`execute` blocks on the caller's thread).
        d.client = Client::with_netns(Some(ns.clone()));
        d.netns = Some(ns);
        d.netns_failed = failed;
        Ok(d)
    }

    /// The namespace executor traffic runs in, if not the caller's.
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref().map(Netns::path)
    }

    /// For one-shot processes (the entry point): no worker threads.
    pub fn new_current_thread(
        journal: Arc<dyn CommandJournal>,
    ) -> Result<Dispatcher, DispatchError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DispatchError::Configuration(format!("cannot start runtime: {e}")))?;
        Ok(Dispatcher::with_runtime(journal, Some(runtime)))
    }

    /// For callers that already run tokio: only
    /// [`Dispatcher::execute_async`] is available (no runtime of its own, so
    /// it may also be dropped inside async code).
    pub fn for_async(journal: Arc<dyn CommandJournal>) -> Dispatcher {
        Dispatcher::with_runtime(journal, None)
    }

    fn with_runtime(
        journal: Arc<dyn CommandJournal>,
        runtime: Option<tokio::runtime::Runtime>,
    ) -> Dispatcher {
        Dispatcher {
            client: Client::new(),
            journal,
            runtime,
            settings: Settings::default(),
            netns: None,
            netns_failed: Arc::new(AtomicBool::new(false)),
            progress: None,
        }
    }

    /// Reports the stages of every command to `sink` (see [`ProgressSink`]).
    pub fn with_progress(mut self, sink: ProgressSink) -> Dispatcher {
        self.progress = Some(sink);
        self
    }

    pub fn with_settings(mut self, settings: Settings) -> Dispatcher {
        self.settings = settings;
        self
    }

    pub fn journal(&self) -> &Arc<dyn CommandJournal> {
        &self.journal
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `command` with the envelope exactly as CloudStack writes it; the
    /// registration details come from its `physical-network-extension-details`.
    /// Blocks the calling thread (must not be called from async code; use
    /// [`Dispatcher::execute_async`] there).
    pub fn execute(
        &self,
        command: &str,
        envelope: &[u8],
        timeout: Duration,
    ) -> Result<String, DispatchError> {
        self.execute_with_details(command, envelope, None, timeout)
    }

    /// The runtime a synchronous caller blocks on: only a dispatcher made for
    /// synchronous callers has one, and blocking from async code would stall
    /// the caller's own runtime.
    fn blocking_runtime(&self) -> Result<&tokio::runtime::Runtime, DispatchError> {
        let Some(runtime) = &self.runtime else {
            return Err(DispatchError::Configuration(
                "this Dispatcher was made for async callers; use execute_async".into(),
            ));
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(DispatchError::Configuration(
                "Dispatcher::execute called from async code; use execute_async".into(),
            ));
        }
        Ok(runtime)
    }

    /// As [`Dispatcher::execute`], with the registration details supplied by
    /// the caller (the registry) instead of the envelope's.
    pub fn execute_with_details(
        &self,
        command: &str,
        envelope: &[u8],
        details: Option<&BTreeMap<String, String>>,
        timeout: Duration,
    ) -> Result<String, DispatchError> {
        let runtime = self.blocking_runtime()?;
        runtime.block_on(self.execute_async(command, envelope, details, timeout))
    }

    /// As [`Dispatcher::execute_with_details`] for a shared dispatcher: with a
    /// namespace ([`Dispatcher::new_in_netns`]) the command runs on the
    /// runtime's threads (inside the namespace) while the caller waits;
    /// otherwise on the calling thread.
    pub fn execute_shared(
        self: &Arc<Self>,
        command: &str,
        envelope: &[u8],
        details: Option<&BTreeMap<String, String>>,
        timeout: Duration,
    ) -> Result<String, DispatchError> {
        if self.netns.is_none() {
            return self.execute_with_details(command, envelope, details, timeout);
        }
        let runtime = self.blocking_runtime()?;
        if self.netns_failed.load(Ordering::SeqCst) {
            return Err(DispatchError::Configuration(format!(
                "a dispatch thread could not enter network namespace {}",
                self.netns()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )));
        }
        let (this, command, envelope, details) = (
            Arc::clone(self),
            command.to_string(),
            envelope.to_vec(),
            details.cloned(),
        );
        // The caller keeps its own reference until the task has finished, so
        // the runtime is never dropped from one of its own threads.
        let task = runtime.spawn(async move {
            this.execute_async(&command, &envelope, details.as_ref(), timeout)
                .await
        });
        runtime
            .block_on(task)
            .map_err(|e| DispatchError::Configuration(format!("dispatch task failed: {e}")))?
    }

    /// Runs `future` on the dispatcher's runtime threads (inside the
    /// dispatch namespace, when there is one) and waits for it: diagnostics
    /// such as `netbridge status` reach executors the way commands do.
    pub fn run_on_runtime<F>(&self, future: F) -> Result<F::Output, DispatchError>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(DispatchError::Configuration(
                "this Dispatcher was made for async callers".into(),
            ));
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(DispatchError::Configuration(
                "Dispatcher::run_on_runtime called from async code".into(),
            ));
        }
        let task = runtime.spawn(future);
        runtime
            .block_on(task)
            .map_err(|e| DispatchError::Configuration(format!("dispatch task failed: {e}")))
    }

    /// The async form; runs on the caller's runtime.
    pub async fn execute_async(
        &self,
        command: &str,
        envelope: &[u8],
        details: Option<&BTreeMap<String, String>>,
        timeout: Duration,
    ) -> Result<String, DispatchError> {
        self.execute_inner(command, None, envelope, details, timeout)
            .await
    }

    /// As [`Dispatcher::execute`] for an envelope the caller has parsed
    /// already (the entry point reads its settings from it): `parsed` is
    /// `envelope` parsed, which is forwarded as it is.
    pub fn execute_parsed(
        &self,
        command: &str,
        parsed: RawEnvelope,
        envelope: &[u8],
        timeout: Duration,
    ) -> Result<String, DispatchError> {
        let runtime = self.blocking_runtime()?;
        runtime.block_on(self.execute_inner(command, Some(parsed), envelope, None, timeout))
    }

    async fn execute_inner(
        &self,
        command: &str,
        parsed: Option<RawEnvelope>,
        envelope: &[u8],
        details: Option<&BTreeMap<String, String>>,
        timeout: Duration,
    ) -> Result<String, DispatchError> {
        let command: Command =
            command
                .parse()
                .map_err(|e: netbridge_protocol::ProtocolError| {
                    DispatchError::Configuration(e.to_string())
                })?;
        if timeout.is_zero() {
            return Err(DispatchError::Configuration(
                "invalid value for 'timeout': must be positive".into(),
            ));
        }
        let parsed = match parsed {
            Some(p) => p,
            None => RawEnvelope::parse(envelope)
                .map_err(|e| DispatchError::Configuration(e.to_string()))?,
        };
        let env = Envelope::new(command, parsed, details)?;
        let config = ExecutorConfig::from_details(&env.details)?;
        let call = Call {
            command,
            timeout,
            deadline: Instant::now() + timeout,
            stage: Mutex::new(String::from("starting")),
            progress: self.progress.clone(),
        };
        let body = match details {
            // The executor reads the details from the envelope: keep them in
            // step with the registry's.
            Some(_) => {
                let mut root = env.root.clone();
                root.insert(PHYSICAL_DETAILS.to_string(), env.details_value());
                Bytes::from(serde_json::to_vec(&root).unwrap_or_default())
            }
            None => Bytes::copy_from_slice(envelope),
        };
        let work = async {
            if command == Command::EnsureNetworkDevice {
                self.ensure(&call, &env, &config).await
            } else {
                self.run(&call, &env, &config, body).await
            }
        };
        match tokio::time::timeout_at(call.deadline, work).await {
            Ok(r) => r,
            Err(_) => {
                let stage = call.stage.lock().unwrap_or_else(|p| p.into_inner()).clone();
                Err(DispatchError::Timeout(format!(
                    "{command} timed out after {} s ({stage})",
                    fmt_secs(call.timeout)
                )))
            }
        }
    }

    async fn ensure(
        &self,
        call: &Call,
        env: &Envelope,
        config: &ExecutorConfig,
    ) -> Result<String, DispatchError> {
        let key = env.target.namespace().to_string();
        // Only the head: the entries are read when the network moves.
        let head = self.journal.head(&key)?;
        let current = env.current_host();
        let target = self.place(call, env, config, current.as_deref()).await?;
        if current.as_deref() == Some(target.name.as_str()) {
            self.adopt(&key, &head, &target)?;
        } else {
            self.relocate(call, env, config, current.as_deref(), &target)
                .await?;
        }
        if !head.pending_drops.is_empty() {
            self.retry_pending_drops(call, env, config, &target).await?;
        }
        Ok(device_details(env.target, &target.name))
    }

    async fn run(
        &self,
        call: &Call,
        env: &Envelope,
        config: &ExecutorConfig,
        body: Bytes,
    ) -> Result<String, DispatchError> {
        let key = env.target.namespace().to_string();
        let head = self.journal.head(&key)?;
        let named = env.network_details_host();
        let target = match named.as_deref().and_then(|h| config.host(h)) {
            // CloudStack's record of where the network lives is trusted.
            Some(h) => {
                self.adopt(&key, &head, h)?;
                h.clone()
            }
            // No (or no longer configured) host: place as ensure would.
            None => {
                let target = self.place(call, env, config, head.host.as_deref()).await?;
                let from = named.or_else(|| head.host.clone());
                if from.as_deref() == Some(target.name.as_str()) {
                    self.adopt(&key, &head, &target)?;
                } else {
                    self.relocate(call, env, config, from.as_deref(), &target)
                        .await?;
                }
                target
            }
        };
        let path = format!("/v1/commands/{}", call.command);
        call.note(format!("waiting for executor {}", target.name));
        let reply = self.send(call, config, &target, &path, body).await?;
        let out = interpret(call.command, &target, &reply)?;
        if let Some(journal_key) = (call.command != Command::CustomAction).then_some(&key) {
            self.journal
                .record(
                    journal_key,
                    &target.name,
                    call.command,
                    &Value::Object(env.root.clone()),
                )
                .map_err(|e| {
                    DispatchError::Configuration(format!(
                        "{} was applied on {} but recording it failed: {e}",
                        call.command, target.name
                    ))
                })?;
        }
        Ok(out)
    }

    /// Sticky host while healthy, else the first healthy host in cksum order.
    async fn place(
        &self,
        call: &Call,
        env: &Envelope,
        config: &ExecutorConfig,
        current: Option<&str>,
    ) -> Result<HostEntry, DispatchError> {
        let mut reasons: Vec<Option<Unhealthy>> = vec![None; config.hosts.len()];
        let sticky = current.and_then(|c| config.hosts.iter().position(|h| h.name == c));
        if let Some(i) = sticky {
            call.note(format!("probing executor {}", config.hosts[i].name));
            match self.probe(call, config, &config.hosts[i]).await {
                Ok(()) => return Ok(config.hosts[i].clone()),
                Err(r) => reasons[i] = Some(r),
            }
        }
        call.note("probing executors".to_string());
        let mut probes = tokio::task::JoinSet::new();
        for (i, host) in config.hosts.iter().enumerate() {
            if Some(i) == sticky {
                continue;
            }
            let (client, host, transport, key) = (
                self.client.clone(),
                host.clone(),
                config.transport.clone(),
                config.key.clone(),
            );
            let bound = self.settings.health_timeout.min(call.remaining());
            probes.spawn(async move { (i, probe(&client, &host, &transport, &key, bound).await) });
        }
        let mut healthy = vec![false; config.hosts.len()];
        while let Some(joined) = probes.join_next().await {
            if let Ok((i, result)) = joined {
                match result {
                    Ok(()) => healthy[i] = true,
                    Err(r) => reasons[i] = Some(r),
                }
            }
        }
        for i in placement_order(&env.target.placement_key(), config.hosts.len()) {
            if healthy[i] {
                log::info!(
                    "placing {} on {} (previous: {})",
                    env.target.namespace(),
                    config.hosts[i].name,
                    current.unwrap_or("none")
                );
                return Ok(config.hosts[i].clone());
            }
        }
        // A host that refused the signature is misconfigured, not down:
        // waiting or retrying cannot help.
        let refused = reasons
            .iter()
            .any(|r| matches!(r, Some(Unhealthy::SignatureRefused(_))));
        let why: Vec<String> = config
            .hosts
            .iter()
            .zip(reasons)
            .map(|(h, r)| match r {
                Some(Unhealthy::SignatureRefused(m)) => m,
                Some(Unhealthy::Down(m)) => format!("{}: {m}", h.name),
                None => format!("{}: not probed", h.name),
            })
            .collect();
        let ns = env.target.namespace().to_string();
        if refused {
            return Err(DispatchError::Configuration(format!(
                "no usable executor for {ns}: {}",
                why.join("; ")
            )));
        }
        Err(DispatchError::Unreachable(format!(
            "no healthy executor for {ns} ({})",
            why.join("; ")
        )))
    }

    async fn probe(
        &self,
        call: &Call,
        config: &ExecutorConfig,
        host: &HostEntry,
    ) -> Result<(), Unhealthy> {
        let bound = self.settings.health_timeout.min(call.remaining());
        probe(&self.client, host, &config.transport, &config.key, bound).await
    }

    /// The network stays where CloudStack says it is: only align the
    /// journal (no replay; a journal that disagrees is the stale one).
    fn adopt(
        &self,
        key: &str,
        head: &JournalHead,
        target: &HostEntry,
    ) -> Result<(), DispatchError> {
        let listed_pending = head.pending_drops.iter().any(|p| p.host == target.name);
        if head.host.as_deref() != Some(target.name.as_str()) || listed_pending {
            let name = target.name.clone();
            self.journal.update_head(key, &mut |s| {
                s.host = Some(name.clone());
                s.pending_drops.retain(|p| p.host != name);
            })?;
        }
        Ok(())
    }

    /// Placement moved the network from `from` to `target`: clears any stale
    /// copy on `target`, replays the journal there in order, records the
    /// move, and asks `from` to drop the network (remembered for later when
    /// it cannot be reached).
    async fn relocate(
        &self,
        call: &Call,
        env: &Envelope,
        config: &ExecutorConfig,
        from: Option<&str>,
        target: &HostEntry,
    ) -> Result<(), DispatchError> {
        let key = env.target.namespace().to_string();
        let state = self.journal.load(&key)?;
        let old = from.filter(|h| *h != target.name).map(str::to_string);
        let tiers = state.network_ids();
        let device = serde_json::from_str::<Value>(&device_details(env.target, &target.name))
            .unwrap_or(Value::Null);
        let total = state.entries.len();
        let fail = |step: String, e: DispatchError| {
            let msg = format!("moving {key} to {} failed while {step}: {e}", target.name);
            match e {
                DispatchError::Configuration(_) => DispatchError::Configuration(msg),
                DispatchError::Unreachable(_) => DispatchError::Unreachable(msg),
                DispatchError::Remote(_) => DispatchError::Remote(msg),
                DispatchError::Timeout(_) => DispatchError::Timeout(msg),
            }
        };
        if total > 0 {
            log::info!(
                "moving {key} from {} to {}: replaying {total} commands",
                old.as_deref().unwrap_or("unknown"),
                target.name
            );
            // The target may still hold a stale copy from an earlier stay.
            for (command, payload) in teardown_commands(env.target, &tiers) {
                call.note(format!("clearing stale {key} on executor {}", target.name));
                let envelope = json!({
                    PHYSICAL_DETAILS: env.details_value(),
                    NETWORK_DETAILS: device.clone(),
                    "payload": payload,
                });
                match self
                    .send_value(call, config, target, command, &envelope)
                    .await
                {
                    Ok(_) => {}
                    Err(DispatchError::Remote(m)) => {
                        log::warn!("clearing {key} on {} before replay: {m}", target.name)
                    }
                    Err(e) => return Err(fail(format!("clearing it there ({command})"), e)),
                }
            }
        }
        for (n, entry) in state.entries.iter().enumerate() {
            let command: Command =
                entry
                    .command
                    .parse()
                    .map_err(|e: netbridge_protocol::ProtocolError| {
                        DispatchError::Configuration(format!("state journal of {key}: {e}"))
                    })?;
            let mut envelope = entry.envelope.clone();
            if let Some(obj) = envelope.as_object_mut() {
                obj.insert(PHYSICAL_DETAILS.to_string(), env.details_value());
                obj.insert(NETWORK_DETAILS.to_string(), device.clone());
            }
            call.note(format!(
                "replaying {key} to executor {} (step {} of {total}: {command})",
                target.name,
                n + 1
            ));
            if let Err(e) = self
                .send_value(call, config, target, command, &envelope)
                .await
            {
                return Err(fail(
                    format!("replaying step {} of {total} ({command})", n + 1),
                    e,
                ));
            }
        }
        let target_name = target.name.clone();
        self.journal.update_head(&key, &mut |s| {
            s.host = Some(target_name.clone());
            // The network lives there again: never drop it there.
            s.pending_drops.retain(|p| p.host != target_name);
        })?;
        if let Some(old) = old {
            if !self.drop_on(call, env, config, &old, &tiers).await {
                let pending = journal::PendingDrop {
                    host: old.clone(),
                    network_ids: tiers.clone(),
                    last_attempt: unix_now(),
                };
                self.journal.update_head(&key, &mut |s| {
                    s.pending_drops.retain(|p| p.host != pending.host);
                    s.pending_drops.push(pending.clone());
                })?;
            }
        }
        Ok(())
    }

    /// Retries drops that failed earlier, at most once per
    /// `Settings::pending_drop_interval` per host, so that a former host that comes
    /// back does not keep serving a network that moved away.
    async fn retry_pending_drops(
        &self,
        call: &Call,
        env: &Envelope,
        config: &ExecutorConfig,
        target: &HostEntry,
    ) -> Result<(), DispatchError> {
        let key = env.target.namespace().to_string();
        let head = self.journal.head(&key)?;
        let now = unix_now();
        for p in head.pending_drops {
            if p.host == target.name
                || now.saturating_sub(p.last_attempt)
                    < self.settings.pending_drop_interval.as_secs()
            {
                continue;
            }
            let reached = self
                .drop_on(call, env, config, &p.host, &p.network_ids)
                .await;
            self.journal.update_head(&key, &mut |s| {
                if reached {
                    s.pending_drops.retain(|q| q.host != p.host);
                } else if let Some(q) = s.pending_drops.iter_mut().find(|q| q.host == p.host) {
                    q.last_attempt = now;
                }
            })?;
        }
        Ok(())
    }

    /// Sends a JSON envelope with the usual retry policy and interprets it.
    async fn send_value(
        &self,
        call: &Call,
        config: &ExecutorConfig,
        host: &HostEntry,
        command: Command,
        envelope: &Value,
    ) -> Result<String, DispatchError> {
        let body = Bytes::from(serde_json::to_vec(envelope).unwrap_or_default());
        let sub = Call {
            command,
            timeout: call.timeout,
            deadline: call.deadline,
            stage: Mutex::new(String::new()),
            progress: None,
        };
        let reply = self
            .send(&sub, config, host, &format!("/v1/commands/{command}"), body)
            .await?;
        interpret(command, host, &reply)
    }

    /// Tells `old` to drop the network, bounded by `drop_timeout`, no
    /// retries. True when the executor answered (whatever it said).
    async fn drop_on(
        &self,
        call: &Call,
        env: &Envelope,
        config: &ExecutorConfig,
        old: &str,
        tiers: &[String],
    ) -> bool {
        let Some(host) = config
            .host(old)
            .cloned()
            .or_else(|| HostEntry::parse(old, config.default_port).ok())
        else {
            return true;
        };
        let ns = env.target.namespace().to_string();
        let bound = self.settings.drop_timeout.min(call.remaining());
        let deadline = Instant::now() + bound;
        call.note(format!("asking former executor {} to drop {ns}", host.name));
        for (command, payload) in teardown_commands(env.target, tiers) {
            let envelope = json!({
                PHYSICAL_DETAILS: env.details_value(),
                NETWORK_DETAILS: {"host": host.name, "namespace": ns},
                "payload": payload,
            });
            let body = Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default());
            let sent = tokio::time::timeout_at(
                deadline,
                self.client.request(
                    &host,
                    &config.transport,
                    &config.key,
                    Method::POST,
                    &format!("/v1/commands/{command}"),
                    body,
                ),
            )
            .await;
            match sent {
                Ok(Ok(reply)) => match interpret(command, &host, &reply) {
                    Ok(_) => log::info!("former executor {} dropped {ns} ({command})", host.name),
                    Err(e) => log::warn!("former executor {} could not drop {ns}: {e}", host.name),
                },
                Ok(Err(e)) => {
                    log::warn!(
                        "former executor {} unreachable, {ns} not dropped there yet: {e}",
                        host.name
                    );
                    return false;
                }
                Err(_) => {
                    log::warn!(
                        "former executor {} did not answer, {ns} not dropped there yet",
                        host.name
                    );
                    return false;
                }
            }
        }
        true
    }

    /// One command to one host, retried on transport failures only when the
    /// command is idempotent, with backoff, never past the deadline.
    async fn send(
        &self,
        call: &Call,
        config: &ExecutorConfig,
        host: &HostEntry,
        path: &str,
        body: Bytes,
    ) -> Result<Reply, DispatchError> {
        let mut attempt = 1u32;
        let mut backoff = self.settings.initial_backoff;
        loop {
            let result = self
                .client
                .request(
                    host,
                    &config.transport,
                    &config.key,
                    Method::POST,
                    path,
                    body.clone(),
                )
                .await;
            let err = match result {
                Ok(reply) => return Ok(reply),
                Err(TransportError::PinMismatch) => {
                    return Err(DispatchError::Configuration(format!(
                        "executor {} presented a certificate that does not match 'executor.fingerprint'",
                        host.name
                    )))
                }
                Err(e) => e,
            };
            let retry = call.command.is_idempotent()
                && attempt < self.settings.max_attempts.max(1)
                && call.remaining() > backoff;
            if !retry {
                let tail = if err.not_sent() {
                    String::new()
                } else if call.command.is_idempotent() {
                    String::from("; retries exhausted")
                } else {
                    format!(
                        "; {} is not retried, it may or may not have been applied",
                        call.command
                    )
                };
                return Err(DispatchError::Unreachable(format!(
                    "executor {} unreachable for {} after {attempt} attempt(s): {err}{tail}",
                    host.name, call.command
                )));
            }
            log::warn!(
                "{} to {} failed (attempt {attempt}): {err}; retrying in {} ms",
                call.command,
                host.name,
                backoff.as_millis()
            );
            tokio::time::sleep(backoff).await;
            attempt += 1;
            backoff = (backoff * 2).min(self.settings.max_backoff);
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Commands that remove a network (or a VPC with its `tiers`) from a host.
fn teardown_commands(target: Target, tiers: &[String]) -> Vec<(Command, Value)> {
    match target.vpc_id() {
        Some(vpc) => {
            let mut out: Vec<(Command, Value)> = tiers
                .iter()
                .map(|net| {
                    (
                        Command::DestroyNetwork,
                        json!({"network_id": net, "vpc_id": vpc}),
                    )
                })
                .collect();
            out.push((Command::ShutdownVpc, json!({"vpc_id": vpc})));
            out
        }
        None => vec![(
            Command::DestroyNetwork,
            json!({ "network_id": target.network_id() }),
        )],
    }
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", d.as_secs())
    } else {
        format!("{s:.3}")
    }
}

/// Why a host failed its health probe.
#[derive(Debug, Clone)]
enum Unhealthy {
    /// It answered 401/403: the message from [`signature_refused`].
    SignatureRefused(String),
    /// No (usable) answer.
    Down(String),
}

async fn probe(
    client: &Client,
    host: &HostEntry,
    transport: &Transport,
    key: &SecretKey,
    bound: Duration,
) -> Result<(), Unhealthy> {
    let request = client.request(
        host,
        transport,
        key,
        Method::GET,
        "/v1/health",
        Bytes::new(),
    );
    match tokio::time::timeout(bound, request).await {
        Err(_) => Err(Unhealthy::Down(format!(
            "no health answer within {} ms",
            bound.as_millis()
        ))),
        Ok(Err(e)) => Err(Unhealthy::Down(e.to_string())),
        Ok(Ok(reply)) if reply.status == 200 => {
            match serde_json::from_slice::<Value>(&reply.body) {
                Ok(Value::Object(_)) => Ok(()),
                _ => Err(Unhealthy::Down("health answer is not a JSON object".into())),
            }
        }
        Ok(Ok(reply)) if is_signature_refusal(&reply) => {
            Err(Unhealthy::SignatureRefused(signature_refused(host, &reply)))
        }
        Ok(Ok(reply)) => Err(Unhealthy::Down(format!(
            "health check answered HTTP {}",
            reply.status
        ))),
    }
}

/// The `message` of a JSON answer (bounded), or "".
fn reply_message(reply: &Reply) -> String {
    match serde_json::from_slice::<Value>(&reply.body) {
        Ok(Value::Object(o)) => o
            .get("message")
            .and_then(Value::as_str)
            .map(|m| m.chars().take(2000).collect())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn is_signature_refusal(reply: &Reply) -> bool {
    reply.status == 401 || reply.status == 403
}

/// What to tell the operator when an executor refused a request's
/// signature: the registration's `executor.key` is not the executor's.
fn signature_refused(host: &HostEntry, reply: &Reply) -> String {
    let message = reply_message(reply);
    format!(
        "executor {} refused the request signature (HTTP {}: {}): check 'executor.key'",
        host.name,
        reply.status,
        if message.is_empty() {
            "unauthorized"
        } else {
            &message
        }
    )
}

/// Turns an executor answer into the stdout-equivalent or an error.
fn interpret(command: Command, host: &HostEntry, reply: &Reply) -> Result<String, DispatchError> {
    let text = String::from_utf8_lossy(&reply.body);
    let object = match serde_json::from_slice::<Value>(&reply.body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    };
    if is_signature_refusal(reply) {
        return Err(DispatchError::Configuration(signature_refused(host, reply)));
    }
    let message = reply_message(reply);
    let Some(object) = object else {
        return Err(DispatchError::Remote(format!(
            "executor {} answered {command} with HTTP {} and a body that is not a JSON object: '{}'",
            host.name,
            reply.status,
            sanitize_for_message(text.trim())
        )));
    };
    let status = object.get("status").and_then(Value::as_str);
    match status {
        Some(s) if s.eq_ignore_ascii_case("success") && (200..300).contains(&reply.status) => {}
        Some(s) => {
            return Err(DispatchError::Remote(format!(
                "executor {} reported {command} {}: {}",
                host.name,
                if s.eq_ignore_ascii_case("success") {
                    format!("with HTTP {}", reply.status)
                } else {
                    format!("status '{}'", sanitize_for_message(s))
                },
                if message.is_empty() {
                    "no message".to_string()
                } else {
                    message
                }
            )))
        }
        None => {
            return Err(DispatchError::Remote(format!(
                "executor {} answered {command} (HTTP {}) without a 'status' field",
                host.name, reply.status
            )))
        }
    }
    if command == Command::CustomAction {
        // The action's own output, as the script form would print it.
        if let Some(out) = object.get("stdout").and_then(Value::as_str) {
            let out = out.trim_end();
            return Ok(if out.is_empty() {
                "OK".to_string()
            } else {
                out.to_string()
            });
        }
    }
    Ok(Value::Object(object).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostEntry {
        HostEntry::parse("10.0.0.1", 8443).unwrap()
    }
    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn answers_are_interpreted_per_contract() {
        let ok = interpret(
            Command::AddDnsEntry,
            &host(),
            &reply(200, r#"{"status":"Success","message":"done"}"#),
        );
        assert_eq!(ok.unwrap(), r#"{"message":"done","status":"Success"}"#);
        let err = interpret(
            Command::AddDnsEntry,
            &host(),
            &reply(500, r#"{"status":"error","message":"nft failed"}"#),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Remote);
        assert_eq!(
            err.to_string(),
            "executor 10.0.0.1 reported add-dns-entry status 'error': nft failed"
        );
        let garbage =
            interpret(Command::AddDnsEntry, &host(), &reply(200, "<html>oops")).unwrap_err();
        assert_eq!(
            garbage.to_string(),
            "executor 10.0.0.1 answered add-dns-entry with HTTP 200 and a body that is not a JSON object: '<html>oops'"
        );
        let auth = interpret(
            Command::AddDnsEntry,
            &host(),
            &reply(
                401,
                r#"{"status":"error","message":"signature does not match"}"#,
            ),
        )
        .unwrap_err();
        assert_eq!(auth.kind(), ErrorKind::Configuration);
        assert_eq!(auth.exit_code(), 1);
        let custom = interpret(
            Command::CustomAction,
            &host(),
            &reply(200, r#"{"status":"success","stdout":""}"#),
        );
        assert_eq!(custom.unwrap(), "OK");
        let custom = interpret(
            Command::CustomAction,
            &host(),
            &reply(200, r#"{"status":"success","stdout":"hello\n"}"#),
        );
        assert_eq!(custom.unwrap(), "hello");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(DispatchError::Configuration(String::new()).exit_code(), 1);
        assert_eq!(DispatchError::Unreachable(String::new()).exit_code(), 2);
        assert_eq!(DispatchError::Timeout(String::new()).exit_code(), 2);
        assert_eq!(DispatchError::Remote(String::new()).exit_code(), 3);
    }
}
