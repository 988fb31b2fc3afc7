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
//! State journal (for replay on failover): the directory in
//! `NETBRIDGE_STATE_DIR`, else the registration detail `bridge.state.dir`,
//! else `/var/lib/netbridge/bridge`. When the default cannot be created the
//! command still runs, without replay, and a warning goes to stderr.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use netbridge_control::dispatch::{
    CommandJournal, DispatchError, Dispatcher, FileJournal, MemoryJournal,
};

const USAGE: &str = "usage: netbridge-entrypoint <command> <payload-file> <timeout-seconds>";
const STATE_DIR_ENV: &str = "NETBRIDGE_STATE_DIR";
const STATE_DIR_DETAIL: &str = "bridge.state.dir";
const DEFAULT_STATE_DIR: &str = "/var/lib/netbridge/bridge";
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

/// The state directory, and whether it was chosen explicitly.
fn state_dir(payload: &[u8]) -> (PathBuf, bool) {
    if let Some(dir) = std::env::var_os(STATE_DIR_ENV).filter(|d| !d.is_empty()) {
        return (PathBuf::from(dir), true);
    }
    let detail = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| {
            v.get("physical-network-extension-details")?
                .get(STATE_DIR_DETAIL)?
                .as_str()
                .map(str::to_string)
        })
        .filter(|d| !d.trim().is_empty());
    match detail {
        Some(d) => (PathBuf::from(d.trim()), true),
        None => (PathBuf::from(DEFAULT_STATE_DIR), false),
    }
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
    let (dir, explicit) = state_dir(&payload);
    let journal: Arc<dyn CommandJournal> = match FileJournal::open(&dir) {
        Ok(j) => Arc::new(j),
        Err(e) if explicit => {
            return fail(&command_name, &DispatchError::Configuration(e.to_string()));
        }
        Err(e) => {
            log::warn!("{e}; continuing without failover replay (set {STATE_DIR_ENV})");
            Arc::new(MemoryJournal::new())
        }
    };
    let dispatcher = match Dispatcher::new_current_thread(journal) {
        Ok(d) => d,
        Err(e) => return fail(&command_name, &e),
    };
    match dispatcher.execute(command, &payload, timeout) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&command_name, &e),
    }
}
