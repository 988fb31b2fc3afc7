//! `netbridge-entrypoint <command> <payload-file> <timeout-seconds>`: the
//! drop-in for the extension script of CloudStack 4.23.
//!
//! Script contract (docs/protocol.md): stdout is the command's result (one line of
//! JSON for `ensure-network-device`, the action's output or "OK" for
//! `custom-action`, the executor's JSON answer otherwise); exit 0 success,
//! 1 usage/configuration error, 2 executor unreachable or timed out, 3 the
//! executor reported a failure (an executor refusing the request signature,
//! i.e. a wrong `executor.key`, is a configuration error). On failure stdout carries
//! `{"status":"error","message":…}` and stderr the message.
//!
//! State journal (for replay on failover):
//! - shared by every management server, in the registry's database, when a
//!   store is configured: `NETBRIDGE_DATABASE` (a store location such as
//!   `mysql://cloud@db:3306/cloud`, password in `NETBRIDGE_DB_PASSWORD`) or
//!   `NETBRIDGE_CLOUDSTACK_DB_PROPERTIES` (CloudStack's `db.properties`), else
//!   the registration details `bridge.database` /
//!   `bridge.cloudstack.db.properties`. The key file (the same on every
//!   management server) is `NETBRIDGE_KEY_FILE`, else the detail
//!   `bridge.key.file`, else `/var/lib/netbridge/secret.key`;
//! - otherwise local files: the directory in `NETBRIDGE_STATE_DIR`, else the
//!   registration detail `bridge.state.dir`, else `/var/lib/netbridge/bridge`.
//!   When the default cannot be created the command still runs, without
//!   replay, and a warning goes to stderr.
//!
//! Hidden registration details that CloudStack passes as netbridge sealed
//! them in its database are decrypted with the key file before use.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use netbridge_control::dispatch::{
    CommandJournal, DispatchError, Dispatcher, FileJournal, MemoryJournal, RawEnvelope,
};
use netbridge_control::registry::{
    mysql::contains_sealed, mysql::reveal_sealed_envelope, secrets::Cipher, Registry,
    RegistryJournal, StoreLocation,
};

const USAGE: &str = "usage: netbridge-entrypoint <command> <payload-file> <timeout-seconds>";
const STATE_DIR_ENV: &str = "NETBRIDGE_STATE_DIR";
const STATE_DIR_DETAIL: &str = "bridge.state.dir";
const DEFAULT_STATE_DIR: &str = "/var/lib/netbridge/bridge";
const DATABASE_ENV: &str = "NETBRIDGE_DATABASE";
const DATABASE_DETAIL: &str = "bridge.database";
const DB_PROPERTIES_ENV: &str = "NETBRIDGE_CLOUDSTACK_DB_PROPERTIES";
const DB_PROPERTIES_DETAIL: &str = "bridge.cloudstack.db.properties";
const KEY_FILE_ENV: &str = "NETBRIDGE_KEY_FILE";
const KEY_FILE_DETAIL: &str = "bridge.key.file";
const DEFAULT_KEY_FILE: &str = "/var/lib/netbridge/secret.key";
const MAX_TIMEOUT_SECS: u64 = 86_400;

fn fail(command: &str, err: &DispatchError) -> ExitCode {
    eprintln!("netbridge-entrypoint: {command}: {err}");
    let out = serde_json::json!({"status": "error", "message": err.to_string()});
    println!("{out}");
    ExitCode::from(err.exit_code() as u8)
}

fn usage(message: &str) -> ExitCode {
    eprintln!("netbridge-entrypoint: {message}\n{USAGE}");
    ExitCode::from(1)
}

fn read_payload(path: &str) -> Result<Vec<u8>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read payload file '{path}': {e}"))?;
    let mut data = Vec::new();
    // Read one byte past the limit to detect oversized files without a stat race.
    file.take(netbridge_control::dispatch::MAX_ENVELOPE_BYTES as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read payload file '{path}': {e}"))?;
    if data.len() > netbridge_control::dispatch::MAX_ENVELOPE_BYTES {
        return Err(format!(
            "payload file '{path}' is larger than {} bytes",
            netbridge_control::dispatch::MAX_ENVELOPE_BYTES
        ));
    }
    Ok(data)
}

/// Registration details of the envelope.
type Details = BTreeMap<String, String>;

/// A setting from the environment, else from the registration details.
fn setting(details: Option<&Details>, env: &str, detail: &str) -> Option<String> {
    if let Some(v) = std::env::var(env).ok().filter(|v| !v.trim().is_empty()) {
        return Some(v.trim().to_string());
    }
    details?
        .get(detail)
        .map(|d| d.trim())
        .filter(|d| !d.is_empty())
        .map(str::to_string)
}

/// The state directory, and whether it was chosen explicitly.
fn state_dir(details: Option<&Details>) -> (PathBuf, bool) {
    match setting(details, STATE_DIR_ENV, STATE_DIR_DETAIL) {
        Some(d) => (PathBuf::from(d), true),
        None => (PathBuf::from(DEFAULT_STATE_DIR), false),
    }
}

fn key_file(details: Option<&Details>) -> PathBuf {
    PathBuf::from(
        setting(details, KEY_FILE_ENV, KEY_FILE_DETAIL).unwrap_or_else(|| DEFAULT_KEY_FILE.into()),
    )
}

/// The shared store, when one is configured.
fn store_location(details: Option<&Details>) -> Result<Option<StoreLocation>, DispatchError> {
    let config =
        |e: netbridge_control::registry::LocationError| DispatchError::Configuration(e.to_string());
    if let Some(file) = setting(details, DB_PROPERTIES_ENV, DB_PROPERTIES_DETAIL) {
        return StoreLocation::from_cloudstack_db_properties(std::path::Path::new(&file))
            .map(Some)
            .map_err(config);
    }
    match setting(details, DATABASE_ENV, DATABASE_DETAIL) {
        Some(text) => StoreLocation::parse(&text).map(Some).map_err(config),
        None => Ok(None),
    }
}

/// The journal, and the registry whose key decrypts sealed details when
/// the journal is the shared store's.
type Opened = (Arc<dyn CommandJournal>, Option<Arc<Registry>>);

/// The journal: the shared store's when configured, else local files.
fn open_journal(details: Option<&Details>) -> Result<Opened, DispatchError> {
    if let Some(location) = store_location(details)? {
        let registry = Registry::open_at(&location, &key_file(details)).map_err(|e| {
            DispatchError::Configuration(format!("cannot open the registry {location}: {e}"))
        })?;
        let registry = Arc::new(registry);
        return Ok((
            Arc::new(RegistryJournal::new(registry.clone())),
            Some(registry),
        ));
    }
    let (dir, explicit) = state_dir(details);
    match FileJournal::open(&dir) {
        Ok(j) => Ok((Arc::new(j), None)),
        Err(e) if explicit => Err(DispatchError::Configuration(e.to_string())),
        Err(e) => {
            log::warn!("{e}; continuing without failover replay (set {STATE_DIR_ENV})");
            Ok((Arc::new(MemoryJournal::new()), None))
        }
    }
}

/// The payload with sealed registration details decrypted; unchanged when
/// none is sealed.
fn reveal(
    payload: Vec<u8>,
    registry: Option<&Registry>,
    details: Option<&Details>,
) -> Result<Vec<u8>, DispatchError> {
    if !contains_sealed(&payload) {
        return Ok(payload);
    }
    let failed = |e: netbridge_control::registry::RegistryError| {
        DispatchError::Configuration(format!("sealed registration details: {e}"))
    };
    let revealed = match registry {
        Some(r) => r.reveal_envelope(&payload),
        None => {
            let cipher = Cipher::load_existing(&key_file(details)).map_err(failed)?;
            reveal_sealed_envelope(&cipher, &payload)
        }
    }
    .map_err(failed)?;
    Ok(revealed.unwrap_or(payload))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("NETBRIDGE_LOG", "warn"))
        .format_timestamp(None)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // What an operator (and the package test) asks an installed copy.
    if args.len() == 1 && args[0] == "--version" {
        println!("netbridge-entrypoint {}", netbridge_protocol::build_id());
        return ExitCode::SUCCESS;
    }
    if args.len() != 3 {
        return usage(&format!("expected 3 arguments, got {}", args.len()));
    }
    let (command, payload_path, timeout_arg) = (&args[0], &args[1], &args[2]);
    let command_name = netbridge_protocol::sanitize_for_message(command);
    if let Err(e) = command.parse::<netbridge_protocol::Command>() {
        return usage(&e.to_string());
    }
    let timeout = match timeout_arg.trim().parse::<u64>() {
        Ok(s) if (1..=MAX_TIMEOUT_SECS).contains(&s) => Duration::from_secs(s),
        _ => {
            return usage(&format!(
                "invalid timeout-seconds '{}': expected a whole number of seconds from 1 to {MAX_TIMEOUT_SECS}",
                netbridge_protocol::sanitize_for_message(timeout_arg)
            ))
        }
    };
    let payload = match read_payload(payload_path) {
        Ok(p) => p,
        Err(e) => return usage(&e),
    };
    // Parsed once: the settings come from its details, and the dispatcher
    // runs it unless sealed details have to be revealed first.
    let parsed = RawEnvelope::parse(&payload).ok();
    let details = parsed.as_ref().and_then(|p| p.physical().ok());
    let (journal, registry) = match open_journal(details.as_ref()) {
        Ok(opened) => opened,
        Err(e) => return fail(&command_name, &e),
    };
    let sealed = contains_sealed(&payload);
    let payload = match reveal(payload, registry.as_deref(), details.as_ref()) {
        Ok(p) => p,
        Err(e) => return fail(&command_name, &e),
    };
    let dispatcher = match Dispatcher::new_current_thread(journal) {
        Ok(d) => d,
        Err(e) => return fail(&command_name, &e),
    };
    let result = match parsed.filter(|_| !sealed) {
        Some(parsed) => dispatcher.execute_parsed(command, parsed, &payload, timeout),
        None => dispatcher.execute(command, &payload, timeout),
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&command_name, &e),
    }
}
