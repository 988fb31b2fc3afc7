//! `netbridge`: command-line door onto the control-plane API.
//!
//! - `netbridge api <command> key=value …`: one API call, cmk-style, printing
//!   the API's JSON; non-zero exit on an API error.
//! - `netbridge serve`: CloudStack's API wire format over HTTP.
//! - `netbridge keys create|list`: admin key pairs for `serve`.
//! - `netbridge status [--output table|json]`: every extension, registration
//!   and executor host with reachability, pinned certificate, signed health,
//!   build skew and networks held; exit 1 when something is wrong.
//! - `netbridge exec <command> <payload-file> [timeout-seconds]`: one network
//!   command through the in-process bridge, with the script contract of
//!   `netbridge-entrypoint` (stdout, exit 0 / 1 configuration or usage /
//!   2 unreachable or timeout / 3 executor failure). Details from the
//!   envelope, or with `--extension-id` and `--physical-network-id` from the
//!   registry (which then also keeps the network's binding). The command
//!   journal lives in the registry of `--state-dir`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[path = "netbridge/render.rs"]
mod render;

use clap::{Args, Parser, Subcommand};
use netbridge_control::api::http::{self, Duplicates, KeyRing, KeyStore, ServeOptions};
use netbridge_control::api::{Api, ApiConfig, ApiError};
use netbridge_control::bridge::{Bridge, BridgeConfig};
use netbridge_control::dispatch::DispatchError;
use netbridge_control::registry::StoreLocation;

/// Exit status of a command the API refused.
const EXIT_API_ERROR: u8 = 1;
/// Exit status of `status` when an executor or registration has a problem.
const EXIT_STATUS_PROBLEM: u8 = 1;
/// Exit status of a usage or local setup problem (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "netbridge",
    version = netbridge_control::VERSION,
    about = "netbridge control plane: CloudStack-style API from the command line and over HTTP"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Debug)]
struct GlobalOpts {
    /// Store settings (state_dir, database, key_file) used where no flag is given
    /// (default: /etc/netbridge/netbridge.toml when it exists)
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// State directory with the database and the secret key file
    /// (default: $NETBRIDGE_STATE_DIR, else state_dir of the config file, else /var/lib/netbridge)
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The store: a SQLite file (a path or sqlite:///path), or CloudStack's database
    /// mysql://user@host:port/cloud (password from $NETBRIDGE_DB_PASSWORD)
    /// (default: <state-dir>/netbridge.db)
    #[arg(long, global = true, value_name = "LOCATION", value_parser = parse_location)]
    database: Option<StoreLocation>,
    /// CloudStack's db.properties: use the `cloud` database it names (host, port,
    /// user, password, name), instead of --database
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "database")]
    cloudstack_db_properties: Option<PathBuf>,
    /// Key file encrypting secrets at rest (default: <state-dir>/secret.key)
    #[arg(long, global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Log level on stderr: off, error, warn, info, debug, trace (default: warn; info for serve)
    #[arg(long, global = true, value_name = "LEVEL", value_parser = parse_level)]
    log_level: Option<log::LevelFilter>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one API command: netbridge api createExtension name=x type=NetworkOrchestrator
    Api {
        /// Print the offerings of the response (generateNetworkOfferings) as cmk
        /// command lines instead of JSON
        #[arg(long)]
        cmk: bool,
        /// Output format: json (CloudStack's JSON), table (one row per object)
        /// or text (key = value lines)
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Json)]
        output: Output,
        /// Asynchronous commands: print the job id instead of waiting for the
        /// job's result
        #[arg(long)]
        no_wait: bool,
        /// API command name, e.g. listExtensions
        command: String,
        /// Parameters as key=value; map parameters as details[0].key=k details[0].value=v
        #[arg(value_name = "KEY=VALUE")]
        params: Vec<String>,
    },
    /// Serve the CloudStack API wire format over HTTP (signed requests only)
    Serve(ServeArgs),
    /// Run one network command on its executor (script contract of netbridge-entrypoint)
    Exec(ExecArgs),
    /// Health of every executor of every extension: reachability, pinned
    /// certificate, signed health, build, networks; exit 1 when something is wrong
    Status(StatusArgs),
    /// Manage the admin API keys accepted by `serve`
    Keys {
        #[command(subcommand)]
        action: KeysCmd,
    },
    /// Copy a store into another
    Store {
        #[command(subcommand)]
        action: StoreCmd,
    },
}

#[derive(Subcommand, Debug)]
enum StoreCmd {
    /// Copy every extension, registration, provider state, binding, offering and
    /// journal from one store into another (e.g. the SQLite registry into CloudStack's
    /// database); secrets are re-encrypted with the destination's key; idempotent;
    /// refuses to overwrite anything that differs
    Migrate {
        /// The store to copy (a path, sqlite:///path or mysql://…)
        #[arg(long, value_name = "LOCATION", value_parser = parse_location)]
        from: StoreLocation,
        /// The store to copy into
        #[arg(long, value_name = "LOCATION", value_parser = parse_location)]
        to: StoreLocation,
        /// Key file of the source (default: --key-file, else <state-dir>/secret.key)
        #[arg(long, value_name = "FILE")]
        from_key_file: Option<PathBuf>,
        /// Key file of the destination (default: the source's)
        #[arg(long, value_name = "FILE")]
        to_key_file: Option<PathBuf>,
    },
}

/// `netbridge api --output`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Json,
    Table,
    Text,
}

/// How long `netbridge api` waits for an asynchronous command's job.
const JOB_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the bound address is printed)
    #[arg(long, default_value = http::DEFAULT_LISTEN, value_name = "ADDR:PORT")]
    listen: std::net::SocketAddr,
    /// Take the API keys from this file (mode 0600 or stricter) instead of the store
    #[arg(long, value_name = "FILE")]
    keys_file: Option<PathBuf>,
    /// Largest accepted request body in bytes
    #[arg(long, default_value_t = http::DEFAULT_MAX_BODY_BYTES, value_name = "BYTES",
          value_parser = clap::value_parser!(usize))]
    max_body_bytes: usize,
}

#[derive(Args, Debug)]
struct ExecArgs {
    /// Command name, e.g. implement-network
    command: String,
    /// The payload envelope file, as CloudStack writes it
    payload_file: PathBuf,
    /// Time budget in seconds (1..86400)
    #[arg(default_value_t = DEFAULT_EXEC_TIMEOUT_SECS)]
    timeout_seconds: u64,
    /// Take the executor details from this extension's registration (with
    /// --physical-network-id) instead of the envelope
    #[arg(long, value_name = "UUID", requires = "physical_network_id")]
    extension_id: Option<String>,
    /// Physical network of the registration (with --extension-id)
    #[arg(long, value_name = "UUID", requires = "extension_id")]
    physical_network_id: Option<String>,
    /// Run executor traffic inside this network namespace (e.g. /run/netns/mgmt)
    #[arg(long, value_name = "PATH")]
    dispatch_netns: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// table (default) or json
    #[arg(long, value_enum, default_value_t = StatusOutput::Table)]
    output: StatusOutput,
    /// Bound of each executor's probe, in seconds (1..300)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    timeout: u64,
    /// Run executor traffic inside this network namespace (e.g. /run/netns/mgmt)
    #[arg(long, value_name = "PATH")]
    dispatch_netns: Option<PathBuf>,
}

/// Output of `status`; kept apart from the `api` output options.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum StatusOutput {
    Table,
    Json,
}

/// Default `exec` time budget.
const DEFAULT_EXEC_TIMEOUT_SECS: u64 = 60;
const MAX_EXEC_TIMEOUT_SECS: u64 = 86_400;

#[derive(Subcommand, Debug)]
enum KeysCmd {
    /// Generate an apikey/secretkey pair into the store (shared by every management
    /// server on it, the secret sealed); the secret is printed once
    Create {
        /// Label for the key, shown in logs ([A-Za-z0-9._-], at most 64)
        #[arg(long, default_value = "admin")]
        name: String,
        /// Write the key into this file (mode 0600) instead of the store
        #[arg(long, value_name = "FILE")]
        keys_file: Option<PathBuf>,
    },
    /// List key names and api keys (never secrets)
    List {
        /// List the keys of this file instead of the store's
        #[arg(long, value_name = "FILE")]
        keys_file: Option<PathBuf>,
    },
}

fn parse_location(text: &str) -> Result<StoreLocation, String> {
    StoreLocation::parse(text).map_err(|e| e.to_string())
}

fn parse_level(text: &str) -> Result<log::LevelFilter, String> {
    text.parse::<log::LevelFilter>().map_err(|_| {
        format!("unknown log level '{text}' (use off, error, warn, info, debug or trace)")
    })
}

fn init_logging(level: log::LevelFilter) {
    env_logger::Builder::new()
        .filter_level(level)
        .target(env_logger::Target::Stderr)
        .init();
}

/// The management package's configuration file.
const DEFAULT_CONFIG: &str = "/etc/netbridge/netbridge.toml";

/// `netbridge.toml`: where the store is, for every `netbridge` command run
/// without the matching flags. Unknown keys are refused.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    state_dir: Option<PathBuf>,
    /// A SQLite path, `sqlite:///path` or `mysql://…`, as `--database`.
    database: Option<String>,
    key_file: Option<PathBuf>,
}

impl StoreFile {
    /// `--config`, else the default file when it exists.
    fn load(explicit: Option<&Path>) -> Result<StoreFile, Failure> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None if Path::new(DEFAULT_CONFIG).exists() => PathBuf::from(DEFAULT_CONFIG),
            None => return Ok(StoreFile::default()),
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Failure(format!("configuration file {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| Failure(format!("configuration file {}: {e}", path.display())))
    }
}

impl GlobalOpts {
    /// Reads the configuration file into the settings no flag gave.
    fn apply_config_file(&mut self) -> Result<(), Failure> {
        let file = StoreFile::load(self.config.as_deref())?;
        if self.state_dir.is_none() && std::env::var_os("NETBRIDGE_STATE_DIR").is_none() {
            self.state_dir = file.state_dir;
        }
        let from_file = file
            .database
            .as_deref()
            .map(|d| {
                StoreLocation::parse(d)
                    .map_err(|e| Failure(format!("configuration file: database: {e}")))
            })
            .transpose()?;
        self.database = self.database.take().or(from_file);
        self.key_file = self.key_file.take().or(file.key_file);
        Ok(())
    }

    fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(ApiConfig::default_state_dir)
    }

    /// The configured store and key file; a `db.properties` that cannot be
    /// used is a configuration error naming what to fix.
    fn api_config(&self) -> Result<ApiConfig, Failure> {
        let defaults = ApiConfig::in_dir(self.state_dir());
        let database = match (&self.cloudstack_db_properties, &self.database) {
            (Some(file), _) => StoreLocation::from_cloudstack_db_properties(file)?,
            (None, Some(location)) => location.clone(),
            (None, None) => defaults.database,
        };
        Ok(ApiConfig {
            database,
            key_file: self.key_file.clone().unwrap_or(defaults.key_file),
        })
    }
}

/// Where `netbridge serve` takes its admin keys from.
#[derive(Clone)]
enum KeySource {
    /// The store (the default): the same keys on every management server.
    Store(Arc<Api>),
    /// A keys file given with `--keys-file`.
    File(PathBuf),
}

impl KeySource {
    fn load(&self) -> Result<KeyStore, http::HttpError> {
        match self {
            KeySource::Store(api) => KeyStore::from_registry(api.registry()),
            KeySource::File(path) => KeyStore::load(path),
        }
    }

    fn describe(&self) -> String {
        match self {
            KeySource::Store(api) => format!("the store {}", api.registry().location()),
            KeySource::File(path) => path.display().to_string(),
        }
    }
}

/// A local problem before any API call: message for stderr.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

/// Splits `key=value` arguments at the first `=` (values may contain more).
fn parse_kv_args(args: &[String]) -> Result<Vec<(String, String)>, String> {
    args.iter()
        .map(|arg| match arg.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err(format!(
                "invalid argument '{}': expected key=value",
                netbridge_protocol::sanitize_for_message(arg)
            )),
        })
        .collect()
}

/// Creates the state directory (0700) when the defaults point into it.
fn ensure_dir_for(file: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Failure(format!("cannot create directory {}: {e}", dir.display())))?;
        }
    }
    Ok(())
}

fn open_api(global: &GlobalOpts) -> Result<Api, ApiError> {
    let config = global
        .api_config()
        .map_err(|Failure(text)| ApiError::internal(text))?;
    ensure_dirs(&config).map_err(|Failure(text)| ApiError::internal(text))?;
    Api::open(config)
}

/// Writes `text` and a newline to stdout. A closed pipe (`netbridge api … |
/// head`) is `Err(BrokenPipe)`, which callers turn into a quiet exit.
fn emit(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Creates the directories of the SQLite file and of the key file.
fn ensure_dirs(config: &ApiConfig) -> Result<(), Failure> {
    if let Some(db) = config.database.sqlite_path() {
        ensure_dir_for(db)?;
    }
    ensure_dir_for(&config.key_file)
}

fn print_json(value: &serde_json::Value) -> std::io::Result<()> {
    match serde_json::to_string_pretty(value) {
        Ok(text) => emit(&text),
        Err(e) => {
            eprintln!("error: cannot render the response: {e}");
            Ok(())
        }
    }
}

/// Prints a response in the chosen format.
fn print_value(value: &serde_json::Value, output: Output) -> std::io::Result<()> {
    match output {
        Output::Json => print_json(value),
        Output::Table => emit(&render::table(value)),
        Output::Text => emit(&render::text(value)),
    }
}

/// The exit status for an output failure: quiet success when the reader
/// went away, else a message.
fn output_failed(e: &std::io::Error) -> ExitCode {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: cannot write the response: {e}");
        ExitCode::from(EXIT_API_ERROR)
    }
}

/// Prints an API error like cmk: CloudStack's error body on stdout (in the
/// chosen format), a line on stderr.
fn report_api_error(command: &str, error: &ApiError, output: Output) -> ExitCode {
    if let Err(e) = print_value(&error.to_response(Some(command)), output) {
        return output_failed(&e);
    }
    eprintln!(
        "error: {} failed with error code {}: {}",
        netbridge_protocol::sanitize_for_message(command),
        error.code,
        error.text
    );
    ExitCode::from(EXIT_API_ERROR)
}

/// The `jobid` of an asynchronous command's first answer.
fn job_id_of(value: &serde_json::Value) -> Option<String> {
    let body = value.as_object()?.values().next()?;
    let object = body.as_object()?;
    if object.len() != 1 {
        return None;
    }
    object.get("jobid")?.as_str().map(str::to_string)
}

struct ApiRun<'a> {
    command: &'a str,
    cmk: bool,
    output: Output,
    wait: bool,
}

fn run_api(global: &GlobalOpts, run: &ApiRun<'_>, raw: &[String]) -> ExitCode {
    let command = run.command;
    let pairs = match parse_kv_args(raw) {
        Ok(p) => p,
        Err(text) => {
            eprintln!("error: {text}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let params = match http::to_api_params(&pairs, Duplicates::Reject) {
        Ok(p) => p,
        Err(e) => return report_api_error(command, &e, run.output),
    };
    let api = match open_api(global) {
        Ok(api) => api,
        Err(e) => return report_api_error(command, &e, run.output),
    };
    let mut value = match api.call(command, &params) {
        Ok(value) => value,
        Err(e) => return report_api_error(command, &e, run.output),
    };
    let mut failed = false;
    if let (true, Some(job)) = (run.wait, job_id_of(&value)) {
        // Like cmk: wait for the job and show its result. The job runs in
        // this process, which must not exit before it is done.
        match api.wait_for_job(&job, JOB_WAIT) {
            Ok(result) => {
                failed = result
                    .as_object()
                    .and_then(|o| o.values().next())
                    .and_then(|b| b.get("jobstatus"))
                    .and_then(serde_json::Value::as_i64)
                    == Some(2);
                value = result;
            }
            Err(e) => return report_api_error(command, &e, run.output),
        }
    }
    let printed = match offerings_as_cmk(&value).filter(|_| run.cmk) {
        Some(lines) => lines.iter().try_for_each(|line| emit(line)),
        None => {
            if run.cmk {
                eprintln!("note: --cmk: the response holds no offerings, printed as JSON");
            }
            print_value(&value, run.output)
        }
    };
    if let Err(e) = printed {
        return output_failed(&e);
    }
    if failed {
        eprintln!(
            "error: {} failed: the job ended with jobstatus 2",
            netbridge_protocol::sanitize_for_message(command)
        );
        return ExitCode::from(EXIT_API_ERROR);
    }
    ExitCode::SUCCESS
}

/// `cmk <command> k=v …` lines for every `offering` (with `command` and
/// `params`) of a response; `None` when there is none.
fn offerings_as_cmk(response: &serde_json::Value) -> Option<Vec<String>> {
    let body = response.as_object()?.values().next()?;
    let offerings = body.get("offering")?.as_array()?;
    let lines: Vec<String> = offerings
        .iter()
        .filter_map(|o| {
            let command = o.get("command")?.as_str()?;
            let params = o.get("params")?.as_object()?;
            let mut line = format!("cmk {}", shell_word(command));
            for (key, value) in params {
                let value = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                line.push(' ');
                line.push_str(&shell_word(&format!("{key}={value}")));
            }
            Some(line)
        })
        .collect();
    (!lines.is_empty()).then_some(lines)
}

/// Quotes a word for a POSIX shell when it holds anything but plain characters
/// (the lines are meant to be pasted by an operator; we never run a shell).
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._,:/=@+-%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn run_serve(global: &GlobalOpts, args: &ServeArgs) -> Result<(), Failure> {
    if args.max_body_bytes == 0 {
        return Err(Failure("--max-body-bytes must be at least 1".into()));
    }
    let api = Arc::new(open_api(global).map_err(|e| Failure(e.text))?);
    let source = match &args.keys_file {
        Some(path) => KeySource::File(path.clone()),
        None => KeySource::Store(api.clone()),
    };
    let keys = source.load()?;
    if !args.listen.ip().is_loopback() {
        log::warn!(
            "listening on non-loopback address {}: the API is reachable from the network (plain HTTP)",
            args.listen
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|source| http::HttpError::Bind {
                addr: args.listen,
                source,
            })?;
        let bound = listener.local_addr()?;
        // Installed before the address is announced, so an early SIGHUP
        // reloads instead of killing the server.
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        // Tests and scripts read this line to learn a port picked with :0.
        println!("listening on http://{bound}/client/api");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        log::info!("serving {} key(s) from {}", keys.len(), source.describe());
        let options = ServeOptions {
            max_body_bytes: args.max_body_bytes,
        };
        let ring = KeyRing::new(keys);
        tokio::spawn(reload_keys_on_hangup(hup, ring.clone(), source.clone()));
        http::serve(listener, api, ring, options, shutdown_signal()).await?;
        log::info!("stopped");
        Ok::<(), Failure>(())
    })
}

/// SIGHUP re-reads the keys; a bad source keeps the keys in force.
async fn reload_keys_on_hangup(
    mut hup: tokio::signal::unix::Signal,
    ring: KeyRing,
    source: KeySource,
) {
    while hup.recv().await.is_some() {
        let reading = source.clone();
        match tokio::task::spawn_blocking(move || reading.load()).await {
            Ok(Ok(store)) => {
                log::info!("reloaded {} key(s) from {}", store.len(), source.describe());
                ring.replace(store);
            }
            Ok(Err(e)) => log::error!("keys not reloaded, previous keys stay in force: {e}"),
            Err(e) => log::error!("keys not reloaded, previous keys stay in force: {e}"),
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn run_keys(global: &GlobalOpts, action: &KeysCmd) -> Result<(), Failure> {
    match action {
        KeysCmd::Create { name, keys_file } => {
            let (key, place) = match keys_file {
                Some(path) => (http::create_key(path, name)?, path.display().to_string()),
                None => {
                    let api = open_api(global).map_err(|e| Failure(e.text))?;
                    let key = http::create_stored_key(api.registry(), name)?;
                    (key, format!("the store {}", api.registry().location()))
                }
            };
            println!("{}", serde_json::to_string_pretty(&key)?);
            eprintln!(
                "note: key '{}' added to {place}; the secret key is shown only this once",
                key.name
            );
            Ok(())
        }
        KeysCmd::List { keys_file } => {
            let store = match keys_file {
                Some(path) => KeyStore::load(path)?,
                None => {
                    let api = open_api(global).map_err(|e| Failure(e.text))?;
                    KeyStore::from_registry(api.registry())?
                }
            };
            let list: Vec<serde_json::Value> = store
                .public_view()
                .into_iter()
                .map(|(name, apikey)| serde_json::json!({"name": name, "apikey": apikey}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
            Ok(())
        }
    }
}

fn run_store(global: &GlobalOpts, action: &StoreCmd) -> Result<(), Failure> {
    match action {
        StoreCmd::Migrate {
            from,
            to,
            from_key_file,
            to_key_file,
        } => {
            use netbridge_control::registry::{migrate, Registry};
            let default_key = global
                .key_file
                .clone()
                .unwrap_or_else(|| ApiConfig::in_dir(global.state_dir()).key_file);
            let from_key = from_key_file.clone().unwrap_or(default_key);
            let to_key = to_key_file.clone().unwrap_or_else(|| from_key.clone());
            if from == to {
                return Err(Failure("--from and --to name the same store".to_string()));
            }
            if !from_key.exists() {
                return Err(Failure(format!(
                    "the source's key file {} does not exist",
                    from_key.display()
                )));
            }
            let source = Registry::open_at(from, &from_key)
                .map_err(|e| Failure(format!("cannot open the source {from}: {e}")))?;
            if let Some(db) = to.sqlite_path() {
                ensure_dir_for(db)?;
            }
            ensure_dir_for(&to_key)?;
            let destination = Registry::open_at(to, &to_key)
                .map_err(|e| Failure(format!("cannot open the destination {to}: {e}")))?;
            let report = migrate::migrate(&source, &destination)
                .map_err(|e| Failure(format!("migration from {from} to {to}: {e}")))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            eprintln!("note: migrated {from} into {to}");
            Ok(())
        }
    }
}

/// `exec` failure in the script form: the error JSON on stdout, the text on
/// stderr, exit 1/2/3 by kind.
fn exec_failure(command: &str, err: &DispatchError) -> ExitCode {
    eprintln!(
        "netbridge exec: {}: {err}",
        netbridge_protocol::sanitize_for_message(command)
    );
    println!(
        "{}",
        serde_json::json!({"status": "error", "message": err.to_string()})
    );
    ExitCode::from(err.exit_code() as u8)
}

fn run_exec(global: &GlobalOpts, args: &ExecArgs) -> ExitCode {
    let config_error =
        |text: String| exec_failure(&args.command, &DispatchError::Configuration(text));
    if !(1..=MAX_EXEC_TIMEOUT_SECS).contains(&args.timeout_seconds) {
        return config_error(format!(
            "invalid timeout-seconds '{}': expected a whole number of seconds from 1 to {MAX_EXEC_TIMEOUT_SECS}",
            args.timeout_seconds
        ));
    }
    let payload = match read_payload(&args.payload_file) {
        Ok(p) => p,
        Err(text) => return config_error(text),
    };
    let api = match global.api_config() {
        Ok(api) => api,
        Err(Failure(text)) => return config_error(text),
    };
    if let Err(Failure(text)) = ensure_dirs(&api) {
        return config_error(text);
    }
    let mut config = BridgeConfig::new(api);
    config.dispatch_netns = args.dispatch_netns.clone();
    let progress = TerminalProgress::start();
    config.progress = progress.as_ref().map(TerminalProgress::sink);
    let bridge = match Bridge::open(config) {
        Ok(b) => b,
        Err(e) => return config_error(e.to_string()),
    };
    let timeout = std::time::Duration::from_secs(args.timeout_seconds);
    let result = match (&args.extension_id, &args.physical_network_id) {
        (Some(ext), Some(pn)) => {
            bridge.execute_registered(ext, pn, &args.command, &payload, timeout)
        }
        _ => bridge.execute(&args.command, &payload, timeout),
    };
    drop(progress);
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => exec_failure(&args.command, &e),
    }
}

/// One status line on a terminal's stderr showing the stage of a long
/// command (a journal replay "step 37 of 120", the executor working on a
/// restore) and the seconds it has taken; cleared when done. Only when
/// stderr is a terminal: scripts and CloudStack get clean output.
struct TerminalProgress {
    stages: std::sync::mpsc::Sender<Option<String>>,
    painter: Option<std::thread::JoinHandle<()>>,
}

impl TerminalProgress {
    /// Shown only for commands that take longer than this.
    const QUIET: std::time::Duration = std::time::Duration::from_millis(500);
    const REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

    fn start() -> Option<TerminalProgress> {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let (stages, rx) = std::sync::mpsc::channel::<Option<String>>();
        let painter = std::thread::spawn(move || {
            use std::sync::mpsc::RecvTimeoutError;
            let started = std::time::Instant::now();
            let mut stage = String::new();
            let mut shown = false;
            loop {
                match rx.recv_timeout(Self::REFRESH) {
                    Ok(Some(next)) => stage = next,
                    Ok(None) | Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {}
                }
                let elapsed = started.elapsed();
                if elapsed >= Self::QUIET && !stage.is_empty() {
                    eprint!("\r\x1b[2K{stage} ({} s)", elapsed.as_secs());
                    shown = true;
                }
            }
            if shown {
                eprint!("\r\x1b[2K");
            }
        });
        Some(TerminalProgress {
            stages,
            painter: Some(painter),
        })
    }

    fn sink(&self) -> netbridge_control::dispatch::ProgressSink {
        let stages = std::sync::Mutex::new(self.stages.clone());
        Arc::new(move |stage: &str| {
            if let Ok(tx) = stages.lock() {
                let _ = tx.send(Some(netbridge_protocol::sanitize_for_message(stage)));
            }
        })
    }
}

impl Drop for TerminalProgress {
    fn drop(&mut self) {
        let _ = self.stages.send(None);
        if let Some(painter) = self.painter.take() {
            let _ = painter.join();
        }
    }
}

fn run_status(global: &GlobalOpts, args: &StatusArgs) -> ExitCode {
    use std::io::IsTerminal;
    let api = match global
        .api_config()
        .and_then(|api| ensure_dirs(&api).map(|()| api))
    {
        Ok(api) => api,
        Err(Failure(text)) => {
            eprintln!("error: {text}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut config = BridgeConfig::new(api);
    config.dispatch_netns = args.dispatch_netns.clone();
    let bridge = match Bridge::open(config) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let terminal = std::io::stderr().is_terminal();
    if terminal {
        eprint!("probing executors (at most {} s)…", args.timeout);
    }
    let options = netbridge_control::status::StatusOptions {
        timeout: std::time::Duration::from_secs(args.timeout),
    };
    let result = netbridge_control::status::collect(&bridge, &options);
    if terminal {
        // Clears the progress line.
        eprint!("\r\x1b[2K");
    }
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match args.output {
        StatusOutput::Json => match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: cannot render the report: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        StatusOutput::Table => print!("{}", netbridge_control::status::render_table(&report)),
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_STATUS_PROBLEM)
    }
}

fn read_payload(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let shown = path.display();
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read payload file '{shown}': {e}"))?;
    let limit = netbridge_control::dispatch::MAX_ENVELOPE_BYTES;
    let mut data = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read payload file '{shown}': {e}"))?;
    if data.len() > limit {
        return Err(format!(
            "payload file '{shown}' is larger than {limit} bytes"
        ));
    }
    Ok(data)
}

fn main() -> ExitCode {
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `exec` keeps the script contract: usage errors exit 1 (2 means
        // "executor unreachable" there).
        Err(e) if e.use_stderr() && std::env::args().any(|a| a == "exec") => {
            let _ = e.print();
            return ExitCode::from(1);
        }
        Err(e) => e.exit(),
    };
    let default_level = match cli.command {
        Cmd::Serve(_) => log::LevelFilter::Info,
        _ => log::LevelFilter::Warn,
    };
    init_logging(cli.global.log_level.unwrap_or(default_level));
    if let Err(Failure(text)) = cli.global.apply_config_file() {
        eprintln!("error: {text}");
        // `exec` keeps the script contract: 1 is a configuration error there.
        let code = if matches!(cli.command, Cmd::Exec(_)) {
            1
        } else {
            EXIT_USAGE
        };
        return ExitCode::from(code);
    }
    let outcome = match &cli.command {
        Cmd::Api {
            command,
            params,
            cmk,
            output,
            no_wait,
        } => {
            let run = ApiRun {
                command,
                cmk: *cmk,
                output: *output,
                wait: !*no_wait,
            };
            return run_api(&cli.global, &run, params);
        }
        Cmd::Exec(args) => return run_exec(&cli.global, args),
        Cmd::Status(args) => return run_status(&cli.global, args),
        Cmd::Serve(args) => run_serve(&cli.global, args),
        Cmd::Keys { action } => run_keys(&cli.global, action),
        Cmd::Store { action } => run_store(&cli.global, action),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(text)) => {
            eprintln!("error: {text}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_split_at_first_equals() {
        let args = vec![
            "name=a=b".to_string(),
            "details[0].value=x=y=z".to_string(),
            "empty=".to_string(),
        ];
        assert_eq!(
            parse_kv_args(&args),
            Ok(vec![
                ("name".into(), "a=b".into()),
                ("details[0].value".into(), "x=y=z".into()),
                ("empty".into(), "".into()),
            ])
        );
        assert_eq!(
            parse_kv_args(&["novalue".to_string()]),
            Err("invalid argument 'novalue': expected key=value".to_string())
        );
        assert_eq!(
            parse_kv_args(&["=v".to_string()]),
            Err("invalid argument '=v': expected key=value".to_string())
        );
    }

    #[test]
    fn offerings_print_as_cmk_lines() {
        let response = serde_json::json!({"generatenetworkofferingsresponse": {
            "count": 1,
            "offering": [{
                "command": "createNetworkOffering",
                "params": {
                    "name": "ext isolated",
                    "guestiptype": "Isolated",
                    "serviceProviderList[0].service": "Dhcp",
                    "displaytext": "it's"
                }
            }]
        }});
        assert_eq!(
            offerings_as_cmk(&response),
            Some(vec![
                "cmk createNetworkOffering 'displaytext=it'\\''s' guestiptype=Isolated \
                 'name=ext isolated' 'serviceProviderList[0].service=Dhcp'"
                    .to_string()
            ])
        );
        assert_eq!(offerings_as_cmk(&serde_json::json!({"x": {}})), None);
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
