//! `custom-action`: the flat envelope, the built-in actions and the runner.
//!
//! Built-ins: `reboot-device`, `dump-config` (the engine answers these from
//! its desired state: re-apply everything / return the state), and
//! `list-firewall-rules` plus the nine `pbr-*` actions, which
//! [`ActionRunner`] executes with `ip`/`nft` argument vectors.
//!
//! Any other action is an operator hook: an executable file named exactly
//! like the action (`[A-Za-z0-9._-]`, no leading dot) directly inside the
//! hooks directory. It runs without a shell as `<hook> <namespace>`, with a
//! cleared environment (`PATH`, `NETBRIDGE_ACTION`, `NETBRIDGE_NAMESPACE`), in
//! its own process group that is killed when the timeout expires. Its stdin
//! is one JSON object `{"action", "namespace", "network_id"|"vpc_id",
//! "params"}`; the detail objects are never passed (they hold secrets). Its
//! stdout (at most 1 MiB) is the answer; exit status ≠ 0 is a failure.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::pbr::{check_param, resolve_table, PbrTables, RouteSpec, RuleSpec};
use super::{scalar_str, VpcError};
use netbridge_protocol::envelope;
use netbridge_protocol::target::Target;
use netbridge_protocol::{sanitize_for_message, ProtocolError};

/// Largest stdout/stderr kept from a child.
const MAX_OUTPUT: usize = 1 << 20;
/// Bound on `ip rule del` repetitions when a table is deleted.
const MAX_RULE_DELETES: usize = 1024;

/// A parsed flat `custom-action` envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomAction {
    pub target: Target,
    pub action: String,
    /// `action-params` (or `action_params`), values as strings.
    pub params: BTreeMap<String, String>,
    /// The top-level object, for the engine (network fields, details).
    pub raw: Map<String, Value>,
}

/// Parses the flat envelope.
pub fn parse_custom_action(body: &[u8]) -> Result<CustomAction, VpcError> {
    // The protocol's one envelope parser (size limit, JSON object).
    let raw = envelope::RawEnvelope::parse(body)?.root;
    // A VPC action names only the VPC; a tier action carries both, and then
    // the tier (network) is the target, in the VPC's namespace.
    let details = envelope::network_details(raw.get(envelope::NETWORK_DETAILS))?;
    let target = match Target::resolve(&raw, &details) {
        Ok(t) => t,
        Err(ProtocolError::MissingTarget) => return Err(VpcError::Missing("network_id".into())),
        Err(e) => return Err(e.into()),
    };
    let action = scalar_str(raw.get("action")).ok_or_else(|| VpcError::Missing("action".into()))?;
    if !valid_action_name(&action) {
        return Err(VpcError::invalid(
            "action",
            format!(
                "'{}' is not a valid action name ([A-Za-z0-9._-], at most 64, no leading dot)",
                sanitize_for_message(&action)
            ),
        ));
    }
    let params_v = raw
        .get("action-params")
        .or_else(|| raw.get("action_params"));
    let params = parse_params(params_v)?;
    Ok(CustomAction {
        target,
        action,
        params,
        raw,
    })
}

fn parse_params(v: Option<&Value>) -> Result<BTreeMap<String, String>, VpcError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(o)) => o.clone(),
        // Some clients send the map as a JSON string.
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(BTreeMap::new()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => o,
            _ => return Err(VpcError::invalid("action-params", "expected a string map")),
        },
        Some(_) => return Err(VpcError::invalid("action-params", "expected a string map")),
    };
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let s = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            _ => {
                return Err(VpcError::invalid(
                    format!("action-params.{}", sanitize_for_message(&k)),
                    "expected a string",
                ))
            }
        };
        out.insert(k, s);
    }
    Ok(out)
}

/// Hook and action names: `[A-Za-z0-9._-]{1,64}`, no leading dot (so never
/// `.`, `..` or a hidden file), hence no path separator either.
pub fn valid_action_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl CustomAction {
    /// The router namespace: `cs-vpc-<vpc_id>` when a VPC id is present
    /// (VPCs and their tiers), else `cs-net-<network_id>`.
    pub fn namespace(&self) -> String {
        self.target.namespace().to_string()
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .map(|s| s.as_str())
            .filter(|s| !s.trim().is_empty())
    }

    fn required(&self, name: &str) -> Result<&str, VpcError> {
        self.param(name)
            .ok_or_else(|| VpcError::Missing(name.to_string()))
    }

    /// Classifies and validates the action: a built-in with parsed
    /// parameters, or the name of an operator hook.
    pub fn parse_action(&self) -> Result<ParsedAction, VpcError> {
        let opt_table = |s: &Self| -> Result<Option<String>, VpcError> {
            match s.param("table") {
                Some(t) => {
                    check_param("table", t)?;
                    Ok(Some(t.trim().to_string()))
                }
                None => Ok(None),
            }
        };
        let b = match self.action.as_str() {
            "reboot-device" => BuiltinAction::RebootDevice,
            "dump-config" => BuiltinAction::DumpConfig,
            "list-firewall-rules" => BuiltinAction::ListFirewallRules,
            "pbr-create-table" => BuiltinAction::PbrCreateTable {
                id: self.required("table-id")?.to_string(),
                name: self.required("table-name")?.to_string(),
            },
            "pbr-delete-table" => BuiltinAction::PbrDeleteTable {
                table: {
                    let t = self
                        .param("table")
                        .or_else(|| self.param("table-name"))
                        .or_else(|| self.param("table-id"))
                        .ok_or_else(|| VpcError::Missing("table".into()))?;
                    check_param("table", t)?;
                    t.trim().to_string()
                },
            },
            "pbr-list-tables" => BuiltinAction::PbrListTables,
            "pbr-add-route" | "pbr-delete-route" => {
                let route = RouteSpec::parse("route", self.required("route")?)?;
                let table = opt_table(self)?;
                if self.action == "pbr-add-route" {
                    BuiltinAction::PbrAddRoute { table, route }
                } else {
                    BuiltinAction::PbrDeleteRoute { table, route }
                }
            }
            "pbr-list-routes" => BuiltinAction::PbrListRoutes {
                table: opt_table(self)?,
            },
            "pbr-add-rule" | "pbr-delete-rule" => {
                let rule = RuleSpec::parse("rule", self.required("rule")?)?;
                let table = opt_table(self)?;
                if self.action == "pbr-add-rule" {
                    BuiltinAction::PbrAddRule { table, rule }
                } else {
                    BuiltinAction::PbrDeleteRule { table, rule }
                }
            }
            "pbr-list-rules" => BuiltinAction::PbrListRules {
                table: opt_table(self)?,
            },
            other => {
                check_hook_params(&self.params)?;
                return Ok(ParsedAction::Hook(other.to_string()));
            }
        };
        Ok(ParsedAction::Builtin(b))
    }

    /// The JSON a hook receives on stdin (no detail objects: they hold secrets).
    pub fn hook_input(&self) -> Value {
        let mut o = Map::new();
        o.insert("action".into(), json!(self.action));
        o.insert("namespace".into(), json!(self.namespace()));
        if let Some(n) = self.target.network_id() {
            o.insert("network_id".into(), json!(n));
        }
        if let Some(v) = self.target.vpc_id() {
            o.insert("vpc_id".into(), json!(v));
        }
        o.insert("params".into(), json!(self.params));
        Value::Object(o)
    }
}

/// Longest hook parameter value.
pub const MAX_HOOK_PARAM_LEN: usize = 4096;

/// Hooks get their parameters as JSON data, never through a shell; still,
/// as defence in depth for hooks written in shell, keys must be
/// `[A-Za-z0-9._-]{1,64}` and values may not hold control characters or the
/// characters a shell acts on (`;` `|` `&` `$` `` ` `` `<` `>` `\`).
pub fn check_hook_params(params: &BTreeMap<String, String>) -> Result<(), VpcError> {
    for (k, v) in params {
        let field = format!("action-params.{}", sanitize_for_message(k));
        if !valid_action_name(k) {
            return Err(VpcError::invalid(field, "not a valid parameter name"));
        }
        if v.len() > MAX_HOOK_PARAM_LEN {
            return Err(VpcError::invalid(
                field,
                format!("longer than {MAX_HOOK_PARAM_LEN} characters"),
            ));
        }
        if let Some(c) = v
            .chars()
            .find(|c| c.is_control() || matches!(c, ';' | '|' | '&' | '$' | '`' | '<' | '>' | '\\'))
        {
            return Err(VpcError::invalid(
                field,
                format!("forbidden character '{}'", c.escape_default()),
            ));
        }
    }
    Ok(())
}

/// A classified action.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedAction {
    Builtin(BuiltinAction),
    Hook(String),
}

/// Built-in actions with their validated parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum BuiltinAction {
    /// The engine re-applies the network's whole desired state.
    RebootDevice,
    /// The engine returns the network's desired state (secrets redacted).
    DumpConfig,
    ListFirewallRules,
    PbrCreateTable {
        id: String,
        name: String,
    },
    PbrDeleteTable {
        table: String,
    },
    PbrListTables,
    PbrAddRoute {
        table: Option<String>,
        route: RouteSpec,
    },
    PbrDeleteRoute {
        table: Option<String>,
        route: RouteSpec,
    },
    PbrListRoutes {
        table: Option<String>,
    },
    PbrAddRule {
        table: Option<String>,
        rule: RuleSpec,
    },
    PbrDeleteRule {
        table: Option<String>,
        rule: RuleSpec,
    },
    PbrListRules {
        table: Option<String>,
    },
}

impl BuiltinAction {
    /// Whether the action may change the namespace's [`PbrTables`] (tables,
    /// recorded routes and rules; persisted afterwards).
    pub fn changes_tables(&self) -> bool {
        matches!(
            self,
            BuiltinAction::PbrCreateTable { .. }
                | BuiltinAction::PbrDeleteTable { .. }
                | BuiltinAction::PbrAddRoute { .. }
                | BuiltinAction::PbrDeleteRoute { .. }
                | BuiltinAction::PbrAddRule { .. }
                | BuiltinAction::PbrDeleteRule { .. }
        )
    }
}

/// The protocol's structured answer for custom actions.
pub fn success_message(message: Value) -> Value {
    json!({"status": "success", "printmessage": "true", "message": message})
}

/// Captured result of a child process.
#[derive(Debug)]
pub struct ChildOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

/// Output of one child pipe, filled by a reader thread.
struct PipeReader {
    buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    done: std::sync::mpsc::Receiver<()>,
}

/// Reads a child's pipe on a thread (at most [`MAX_OUTPUT`] kept, the rest
/// drained so the child never blocks on a full pipe).
fn read_capped<R: Read + Send + 'static>(r: Option<R>) -> PipeReader {
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, done) = std::sync::mpsc::channel();
    let shared = buf.clone();
    std::thread::spawn(move || {
        if let Some(mut r) = r {
            let mut chunk = [0u8; 8192];
            loop {
                match r.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut b = shared.lock().unwrap_or_else(|p| p.into_inner());
                        let room = MAX_OUTPUT.saturating_sub(b.len());
                        b.extend_from_slice(&chunk[..n.min(room)]);
                    }
                }
            }
        }
        let _ = tx.send(());
    });
    PipeReader { buf, done }
}

/// How long output is awaited after the child ended: a background process
/// it started may hold the pipe open forever.
const PIPE_GRACE: Duration = Duration::from_secs(2);

fn collect(p: &PipeReader, program: &str, until: Instant) -> Vec<u8> {
    let wait = until.saturating_duration_since(Instant::now());
    if p.done.recv_timeout(wait).is_err() {
        log::warn!("{program}: a leftover process holds its output open; using what arrived");
    }
    let b = p.buf.lock().unwrap_or_else(|e| e.into_inner());
    b.clone()
}

/// Runs `program args…` (never through a shell) in its own process group,
/// feeding `stdin`, killing the whole group after `timeout`.
pub fn run_with_timeout(
    mut cmd: Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<ChildOutput, VpcError> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .map_err(|e| VpcError::Exec(format!("cannot run {program}: {e}")))?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => Some(std::thread::spawn(move || {
            // A child that ignores stdin closes the pipe: not an error.
            let _ = pipe.write_all(&data);
        })),
        _ => None,
    };
    let out = read_capped(child.stdout.take());
    let err = read_capped(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let pgid = child.id() as libc::pid_t;
                // SAFETY: kill(2) on the process group we created for this child.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(VpcError::Exec(format!("waiting for {program}: {e}"))),
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let until = Instant::now() + PIPE_GRACE;
    let stdout = collect(&out, &program, until);
    let stderr = collect(&err, &program, until);
    Ok(ChildOutput {
        success: !timed_out && status.is_some_and(|s| s.success()),
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
        timed_out,
    })
}

/// Executes built-in actions and hooks.
#[derive(Debug, Clone)]
pub struct ActionRunner {
    /// `ip` binary.
    pub ip: PathBuf,
    /// `nft` binary.
    pub nft: PathBuf,
    /// Directory of operator hooks; `None` disables hooks.
    pub hooks_dir: Option<PathBuf>,
    /// Per-program timeout (the protocol's 60 s by default).
    pub timeout: Duration,
}

impl Default for ActionRunner {
    fn default() -> Self {
        ActionRunner {
            ip: PathBuf::from("ip"),
            nft: PathBuf::from("nft"),
            hooks_dir: None,
            timeout: Duration::from_secs(60),
        }
    }
}

fn valid_namespace(ns: &str) -> Result<(), VpcError> {
    if ns.is_empty()
        || ns.len() > 64
        || ns.starts_with('.')
        || !ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(VpcError::invalid("namespace", "not a namespace name"));
    }
    Ok(())
}

/// The `ip` argument vectors a pbr mutation runs (pure; used by the runner
/// and by tests). `None` for actions that are not single `ip` calls.
pub fn pbr_argv(
    ns: &str,
    tables: &PbrTables,
    action: &BuiltinAction,
) -> Result<Option<Vec<String>>, VpcError> {
    let base = |fam: &str| vec!["-n".to_string(), ns.to_string(), fam.to_string()];
    Ok(match action {
        BuiltinAction::PbrAddRoute { table, route }
        | BuiltinAction::PbrDeleteRoute { table, route } => {
            let (id, _) = resolve_table(tables, table.as_deref(), route.table.as_deref(), "route")?;
            let verb = if matches!(action, BuiltinAction::PbrAddRoute { .. }) {
                "add"
            } else {
                "del"
            };
            let mut a = base(route.family_flag());
            a.extend(["route".to_string(), verb.to_string()]);
            a.extend(route.to_args(id));
            Some(a)
        }
        BuiltinAction::PbrAddRule { table, rule }
        | BuiltinAction::PbrDeleteRule { table, rule } => {
            let (id, _) = resolve_table(tables, table.as_deref(), rule.table.as_deref(), "rule")?;
            let verb = if matches!(action, BuiltinAction::PbrAddRule { .. }) {
                "add"
            } else {
                "del"
            };
            let mut a = base(rule.family_flag());
            a.extend(["rule".to_string(), verb.to_string()]);
            a.extend(rule.to_args(id));
            Some(a)
        }
        _ => None,
    })
}

impl ActionRunner {
    fn ip(&self, args: &[String]) -> Result<ChildOutput, VpcError> {
        log::debug!("ip {}", args.join(" "));
        let mut cmd = Command::new(&self.ip);
        cmd.args(args);
        run_with_timeout(cmd, None, self.timeout)
    }

    fn ip_ok(&self, args: &[String]) -> Result<Vec<u8>, VpcError> {
        let out = self.ip(args)?;
        if out.success {
            Ok(out.stdout)
        } else if out.timed_out {
            Err(VpcError::Exec("ip timed out".into()))
        } else {
            Err(VpcError::Exec(format!(
                "ip failed: {}",
                sanitize_for_message(String::from_utf8_lossy(&out.stderr).trim())
            )))
        }
    }

    fn ip_json(&self, args: &[String]) -> Result<Vec<Value>, VpcError> {
        let res = self.ip(args)?;
        if !res.success {
            let err = String::from_utf8_lossy(&res.stderr);
            // A table never used in one family does not exist there yet:
            // that is an empty list, not a failure.
            if err.contains("FIB table does not exist") {
                return Ok(Vec::new());
            }
            return Err(VpcError::Exec(format!(
                "ip failed: {}",
                sanitize_for_message(err.trim())
            )));
        }
        if res.stdout.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Vec::new());
        }
        match serde_json::from_slice::<Value>(&res.stdout) {
            Ok(Value::Array(a)) => Ok(a),
            _ => Err(VpcError::Exec("ip returned unreadable JSON".into())),
        }
    }

    /// Runs `list-firewall-rules` and the `pbr-*` actions in namespace `ns`.
    /// `tables` is changed only when the action succeeds; the caller persists
    /// it. Returns the protocol answer
    /// `{"status":"success","printmessage":"true","message":…}`.
    pub fn run_builtin(
        &self,
        ns: &str,
        tables: &mut PbrTables,
        action: &BuiltinAction,
    ) -> Result<Value, VpcError> {
        valid_namespace(ns)?;
        let s = |v: &str| v.to_string();
        let message = match action {
            BuiltinAction::RebootDevice | BuiltinAction::DumpConfig => {
                return Err(VpcError::Exec(
                    "reboot-device and dump-config are answered by the engine".into(),
                ))
            }
            BuiltinAction::ListFirewallRules => {
                let mut cmd = Command::new(&self.ip);
                cmd.args(["netns", "exec", ns])
                    .arg(&self.nft)
                    .args(["list", "ruleset"]);
                let out = run_with_timeout(cmd, None, self.timeout)?;
                if !out.success {
                    return Err(VpcError::Exec(format!(
                        "nft list ruleset failed: {}",
                        sanitize_for_message(String::from_utf8_lossy(&out.stderr).trim())
                    )));
                }
                json!(String::from_utf8_lossy(&out.stdout))
            }
            BuiltinAction::PbrCreateTable { id, name } => {
                let mut next = tables.clone();
                let (id, name) = next.create(id, name)?;
                *tables = next;
                json!(format!("table '{name}' ({id}) created"))
            }
            BuiltinAction::PbrDeleteTable { table } => {
                let (id, name) = tables.resolve("table", table)?;
                for fam in ["-4", "-6"] {
                    // Flushing an empty table fails on some iproute2 versions: ignore.
                    let _ = self.ip(&[
                        s("-n"),
                        s(ns),
                        s(fam),
                        s("route"),
                        s("flush"),
                        s("table"),
                        id.to_string(),
                    ]);
                    for _ in 0..MAX_RULE_DELETES {
                        let out = self.ip(&[
                            s("-n"),
                            s(ns),
                            s(fam),
                            s("rule"),
                            s("del"),
                            s("table"),
                            id.to_string(),
                        ])?;
                        if !out.success {
                            break;
                        }
                    }
                }
                tables.remove(&name);
                json!(format!("table '{name}' ({id}) deleted"))
            }
            BuiltinAction::PbrListTables => {
                let list: Vec<Value> = tables
                    .tables
                    .iter()
                    .map(|(n, i)| json!({"name": n, "id": i}))
                    .collect();
                json!(list)
            }
            BuiltinAction::PbrAddRoute { .. }
            | BuiltinAction::PbrDeleteRoute { .. }
            | BuiltinAction::PbrAddRule { .. }
            | BuiltinAction::PbrDeleteRule { .. } => {
                let argv = pbr_argv(ns, tables, action)?
                    .ok_or_else(|| VpcError::Exec("no command".into()))?;
                self.ip_ok(&argv)?;
                // Keep the desired routes/rules so a rebuilt namespace gets them back.
                match action {
                    BuiltinAction::PbrAddRoute { table, route } => {
                        let (id, _) = resolve_table(
                            tables,
                            table.as_deref(),
                            route.table.as_deref(),
                            "route",
                        )?;
                        tables.record_route(id, &route.source);
                    }
                    BuiltinAction::PbrDeleteRoute { table, route } => {
                        let (id, _) = resolve_table(
                            tables,
                            table.as_deref(),
                            route.table.as_deref(),
                            "route",
                        )?;
                        tables.forget_route(id, &route.source);
                    }
                    BuiltinAction::PbrAddRule { table, rule } => {
                        let (id, _) =
                            resolve_table(tables, table.as_deref(), rule.table.as_deref(), "rule")?;
                        tables.record_rule(id, &rule.source);
                    }
                    BuiltinAction::PbrDeleteRule { table, rule } => {
                        let (id, _) =
                            resolve_table(tables, table.as_deref(), rule.table.as_deref(), "rule")?;
                        tables.forget_rule(id, &rule.source);
                    }
                    _ => {}
                }
                let what = match action {
                    BuiltinAction::PbrAddRoute { .. } => "route added",
                    BuiltinAction::PbrDeleteRoute { .. } => "route deleted",
                    BuiltinAction::PbrAddRule { .. } => "rule added",
                    _ => "rule deleted",
                };
                json!(what)
            }
            BuiltinAction::PbrListRoutes { table } => {
                let selected = self.selected_tables(tables, table.as_deref())?;
                let mut out = Vec::new();
                for (id, name) in selected {
                    let mut routes = Vec::new();
                    for fam in ["-4", "-6"] {
                        routes.extend(self.ip_json(&[
                            s("-n"),
                            s(ns),
                            s("-j"),
                            s(fam),
                            s("route"),
                            s("show"),
                            s("table"),
                            id.to_string(),
                        ])?);
                    }
                    out.push(json!({"table": name, "id": id, "routes": routes}));
                }
                json!(out)
            }
            BuiltinAction::PbrListRules { table } => {
                let selected = self.selected_tables(tables, table.as_deref())?;
                let mut rules = Vec::new();
                for fam in ["-4", "-6"] {
                    for mut r in
                        self.ip_json(&[s("-n"), s(ns), s("-j"), s(fam), s("rule"), s("show")])?
                    {
                        let t = r
                            .get("table")
                            .and_then(|t| t.as_str())
                            .map(|t| t.to_string());
                        let hit = t.as_deref().and_then(|t| {
                            selected
                                .iter()
                                .find(|(id, name)| t == id.to_string() || t == name)
                        });
                        if let (Some((_, name)), Some(obj)) = (hit, r.as_object_mut()) {
                            obj.insert("table".into(), json!(name));
                            rules.push(r);
                        }
                    }
                }
                json!(rules)
            }
        };
        Ok(success_message(message))
    }

    /// Re-adds every recorded route and rule of `tables` in namespace `ns`
    /// (after the engine rebuilt it). Rules already present are skipped.
    pub fn replay_pbr(&self, ns: &str, tables: &PbrTables) -> Result<(), VpcError> {
        valid_namespace(ns)?;
        for args in tables.replay_args() {
            let mut argv = vec!["-n".to_string(), ns.to_string()];
            argv.extend(args);
            let out = self.ip(&argv)?;
            if !out.success && !String::from_utf8_lossy(&out.stderr).contains("File exists") {
                return Err(VpcError::Exec(format!(
                    "replaying pbr in {ns}: {}",
                    sanitize_for_message(String::from_utf8_lossy(&out.stderr).trim())
                )));
            }
        }
        Ok(())
    }

    fn selected_tables(
        &self,
        tables: &PbrTables,
        table: Option<&str>,
    ) -> Result<Vec<(u32, String)>, VpcError> {
        Ok(match table {
            Some(t) => vec![tables.resolve("table", t)?],
            None => tables.tables.iter().map(|(n, i)| (*i, n.clone())).collect(),
        })
    }

    /// Finds the hook for `name`: validated name, a regular executable file
    /// whose resolved path lies directly in the hooks directory.
    pub fn hook_path(&self, name: &str) -> Result<PathBuf, VpcError> {
        if !valid_action_name(name) {
            return Err(VpcError::invalid("action", "not a valid action name"));
        }
        let dir = self
            .hooks_dir
            .as_ref()
            .ok_or_else(|| VpcError::UnknownAction(name.to_string()))?;
        let dir = dir
            .canonicalize()
            .map_err(|_| VpcError::UnknownAction(name.to_string()))?;
        let path = dir.join(name);
        let resolved = path
            .canonicalize()
            .map_err(|_| VpcError::UnknownAction(name.to_string()))?;
        if resolved.parent() != Some(dir.as_path()) {
            return Err(VpcError::invalid(
                "action",
                "hook resolves outside the hooks directory",
            ));
        }
        let meta =
            std::fs::metadata(&resolved).map_err(|_| VpcError::UnknownAction(name.to_string()))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(VpcError::UnknownAction(name.to_string()));
        }
        Ok(resolved)
    }

    /// Runs an operator hook; returns its stdout (`"OK"` when empty).
    pub fn run_hook(&self, action: &CustomAction) -> Result<String, VpcError> {
        check_hook_params(&action.params)?;
        let path = self.hook_path(&action.action)?;
        let ns = action.namespace();
        let mut cmd = Command::new(&path);
        cmd.arg(&ns)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("NETBRIDGE_ACTION", &action.action)
            .env("NETBRIDGE_NAMESPACE", &ns)
            .current_dir(path.parent().unwrap_or(Path::new("/")));
        let input = serde_json::to_vec(&action.hook_input())
            .map_err(|e| VpcError::Exec(format!("encoding hook input: {e}")))?;
        log::info!("running hook {} for {}", action.action, ns);
        let out = run_with_timeout(cmd, Some(input), self.timeout)?;
        if out.timed_out {
            return Err(VpcError::Exec(format!(
                "hook '{}' timed out after {}s and was killed",
                action.action,
                self.timeout.as_secs()
            )));
        }
        if !out.success {
            return Err(VpcError::Exec(format!(
                "hook '{}' failed (exit {}): {}",
                action.action,
                out.code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "signal".into()),
                sanitize_for_message(String::from_utf8_lossy(&out.stderr).trim())
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(if text.trim().is_empty() {
            "OK".into()
        } else {
            text
        })
    }
}

pub use netbridge_protocol::secrets::is_secret_key;

/// A copy of `v` with every secret value replaced by `"<redacted>"`, for
/// `dump-config` answers and logs. `vm_data` entries of the `password` dir
/// are redacted too.
pub fn redact_secrets(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let password_entry = o.get("dir").and_then(|d| d.as_str()) == Some("password");
            Value::Object(
                o.iter()
                    .map(|(k, val)| {
                        let secret = is_secret_key(k) || (password_entry && k == "content");
                        let val = if secret && !val.is_null() {
                            json!("<redacted>")
                        } else {
                            redact_secrets(val)
                        };
                        (k.clone(), val)
                    })
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(redact_secrets).collect()),
        other => other.clone(),
    }
}

/// Persists each namespace's [`PbrTables`] as
/// `<state_dir>/pbr/<namespace>.json` (atomic replace, 0600 in a 0700
/// directory, like every state file), so tables survive restarts and follow
/// the network's state, never `/etc/iproute2`.
#[derive(Debug, Clone)]
pub struct PbrStore {
    dir: PathBuf,
}

impl PbrStore {
    pub fn open(state_dir: &Path) -> Result<PbrStore, VpcError> {
        let dir = state_dir.join("pbr");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| VpcError::Exec(format!("creating {}: {e}", dir.display())))?;
        Ok(PbrStore { dir })
    }

    fn path(&self, ns: &str) -> Result<PathBuf, VpcError> {
        valid_namespace(ns)?;
        Ok(self.dir.join(format!("{ns}.json")))
    }

    /// The namespace's tables (empty when none were ever created).
    pub fn load(&self, ns: &str) -> Result<PbrTables, VpcError> {
        let path = self.path(ns)?;
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| VpcError::Exec(format!("{} is corrupt: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PbrTables::default()),
            Err(e) => Err(VpcError::Exec(format!("reading {}: {e}", path.display()))),
        }
    }

    pub fn save(&self, ns: &str, tables: &PbrTables) -> Result<(), VpcError> {
        let path = self.path(ns)?;
        let tmp = self.dir.join(format!(".{ns}.json.tmp"));
        let data = serde_json::to_vec_pretty(tables)
            .map_err(|e| VpcError::Exec(format!("encoding pbr tables: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| VpcError::Exec(format!("writing {}: {e}", path.display())))
    }

    /// Forgets the namespace's tables (destroy-network / shutdown-vpc).
    pub fn remove(&self, ns: &str) -> Result<(), VpcError> {
        match std::fs::remove_file(self.path(ns)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(VpcError::Exec(format!("removing pbr tables of {ns}: {e}"))),
        }
    }
}

/// What [`execute_custom_action`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionOutcome {
    /// The full answer (`{"status":"success","printmessage":"true","message":…}`).
    Answer(Value),
    /// `reboot-device` or `dump-config`: the engine answers from its state.
    Engine(BuiltinAction),
}

/// The whole `custom-action` command except the two engine-state actions:
/// parse the flat envelope, validate, run the built-in or the hook, persist
/// the namespace's tables. The caller holds the namespace's lock.
pub fn execute_custom_action(
    body: &[u8],
    runner: &ActionRunner,
    store: &PbrStore,
) -> Result<(CustomAction, ActionOutcome), VpcError> {
    let action = parse_custom_action(body)?;
    let ns = action.namespace();
    let outcome = match action.parse_action()? {
        ParsedAction::Builtin(b @ (BuiltinAction::RebootDevice | BuiltinAction::DumpConfig)) => {
            ActionOutcome::Engine(b)
        }
        ParsedAction::Builtin(b) => {
            let mut tables = store.load(&ns)?;
            let answer = runner.run_builtin(&ns, &mut tables, &b)?;
            if b.changes_tables() {
                store.save(&ns, &tables)?;
            }
            ActionOutcome::Answer(answer)
        }
        ParsedAction::Hook(_) => {
            let out = runner.run_hook(&action)?;
            ActionOutcome::Answer(hook_answer(&action.action, &out)?)
        }
    };
    Ok((action, outcome))
}

/// A hook that prints a protocol object is passed through (a `status` other
/// than `success` is a failure); any other output becomes the message.
fn hook_answer(name: &str, out: &str) -> Result<Value, VpcError> {
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(out.trim()) {
        if let Some(status) = o.get("status").and_then(|s| s.as_str()) {
            if !status.eq_ignore_ascii_case("success") {
                let msg = o
                    .get("message")
                    .map(|m| {
                        m.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| m.to_string())
                    })
                    .unwrap_or_default();
                return Err(VpcError::Exec(format!(
                    "hook '{name}' reported {}: {}",
                    sanitize_for_message(status),
                    sanitize_for_message(&msg)
                )));
            }
            return Ok(Value::Object(o));
        }
    }
    Ok(success_message(json!(out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netbridge_protocol::target::{NetworkId, VpcId};

    fn envelope(v: Value) -> CustomAction {
        parse_custom_action(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn envelope_accepts_both_param_spellings_and_targets() {
        let a = envelope(json!({"network_id": "42", "action": "pbr-create-table",
            "action-params": {"table-id": "100", "table-name": "isp2"},
            "physical-network-extension-details": {"executor.key": "s3cret"}}));
        assert_eq!(a.target, Target::Network(NetworkId::new(42)));
        assert_eq!(a.namespace(), "cs-net-42");
        assert_eq!(a.params["table-id"], "100");
        let b = envelope(json!({"vpc_id": 7, "action": "pbr-list-tables",
            "action_params": {"x": 1}}));
        assert_eq!(b.target, Target::Vpc(VpcId::new(7)));
        assert_eq!(b.namespace(), "cs-vpc-7");
        assert_eq!(b.params["x"], "1");
        let tier = envelope(json!({"network_id": "12", "vpc_id": "7", "action": "dump-config"}));
        assert_eq!(tier.namespace(), "cs-vpc-7");
        // Hooks never see the details (secrets).
        let input = a.hook_input().to_string();
        assert!(!input.contains("s3cret"));
        assert!(input.contains("\"table-name\":\"isp2\""));
    }

    #[test]
    fn envelope_errors_name_the_field() {
        let cases = [
            (json!({"action": "x"}), "missing required field 'network_id'"),
            (json!({"network_id": "4 2", "action": "x"}), "invalid value for 'network_id': '4 2' is not a decimal id"),
            (json!({"network_id": "42"}), "missing required field 'action'"),
            (
                json!({"network_id": "42", "action": "../../bin/sh"}),
                "invalid value for 'action': '../../bin/sh' is not a valid action name ([A-Za-z0-9._-], at most 64, no leading dot)",
            ),
            (
                json!({"network_id": "42", "action": "x", "action-params": {"a": {"b": 1}}}),
                "invalid value for 'action-params.a': expected a string",
            ),
        ];
        for (v, want) in cases {
            assert_eq!(
                parse_custom_action(v.to_string().as_bytes())
                    .unwrap_err()
                    .to_string(),
                want
            );
        }
    }

    #[test]
    fn builtins_are_classified_and_hooks_pass_through() {
        let a = envelope(json!({"network_id": "1", "action": "pbr-add-route",
            "action-params": {"table": "isp2", "route": "blackhole 10.9.0.0/16"}}));
        let ParsedAction::Builtin(b) = a.parse_action().unwrap() else {
            panic!()
        };
        let mut t = PbrTables::default();
        t.create("100", "isp2").unwrap();
        assert_eq!(
            pbr_argv("cs-net-1", &t, &b).unwrap().unwrap(),
            [
                "-n",
                "cs-net-1",
                "-4",
                "route",
                "add",
                "blackhole",
                "10.9.0.0/16",
                "table",
                "100"
            ]
        );
        let r = envelope(json!({"network_id": "1", "action": "pbr-delete-rule",
            "action-params": {"table": "100", "rule": "from 10.1.0.0/24 priority 50"}}));
        let ParsedAction::Builtin(b) = r.parse_action().unwrap() else {
            panic!()
        };
        assert_eq!(
            pbr_argv("cs-net-1", &t, &b).unwrap().unwrap(),
            [
                "-n",
                "cs-net-1",
                "-4",
                "rule",
                "del",
                "from",
                "10.1.0.0/24",
                "priority",
                "50",
                "table",
                "100"
            ]
        );
        let h = envelope(json!({"network_id": "1", "action": "my-hook.v2"}));
        assert_eq!(
            h.parse_action().unwrap(),
            ParsedAction::Hook("my-hook.v2".into())
        );
        for (params, want) in [
            (
                json!({"x": "a; reboot"}),
                "invalid value for 'action-params.x': forbidden character ';'",
            ),
            (
                json!({"x": "$(reboot)"}),
                "invalid value for 'action-params.x': forbidden character '$'",
            ),
            (
                json!({"x": "`id`"}),
                "invalid value for 'action-params.x': forbidden character '`'",
            ),
            (
                json!({"x": "a\nb"}),
                "invalid value for 'action-params.x': forbidden character '\\n'",
            ),
            (
                json!({"x": "a | b"}),
                "invalid value for 'action-params.x': forbidden character '|'",
            ),
            (
                json!({"../x": "a"}),
                "invalid value for 'action-params.../x': not a valid parameter name",
            ),
            (
                json!({"x": "a".repeat(5000)}),
                "invalid value for 'action-params.x': longer than 4096 characters",
            ),
        ] {
            let h =
                envelope(json!({"network_id": "1", "action": "my-hook", "action-params": params}));
            assert_eq!(h.parse_action().unwrap_err().to_string(), want);
        }
        let bad = envelope(json!({"network_id": "1", "action": "pbr-add-route",
            "action-params": {"table": "isp2", "route": "blackhole 10.9.0.0/16;reboot"}}));
        assert_eq!(
            bad.parse_action().unwrap_err().to_string(),
            "invalid value for 'route': forbidden character ';'"
        );
        let missing = envelope(json!({"network_id": "1", "action": "pbr-create-table",
            "action-params": {"table-id": "100"}}));
        assert_eq!(
            missing.parse_action().unwrap_err().to_string(),
            "missing required field 'table-name'"
        );
        let unknown_table = envelope(json!({"network_id": "1", "action": "pbr-add-rule",
            "action-params": {"table": "nope", "rule": "from all"}}));
        let ParsedAction::Builtin(b) = unknown_table.parse_action().unwrap() else {
            panic!()
        };
        assert_eq!(
            pbr_argv("cs-net-1", &t, &b).unwrap_err().to_string(),
            "invalid value for 'table': no table 'nope' (create it with pbr-create-table)"
        );
    }

    #[test]
    fn hook_names_are_validated() {
        for good in ["a", "my-hook", "x.sh", "A_b-9.1"] {
            assert!(valid_action_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "a;b",
            "a$b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(!valid_action_name(bad), "{bad}");
        }
    }

    #[test]
    fn hooks_run_with_stdin_json_argv_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        // Shell-free fixtures: the kernel runs `<interpreter> <hook> <namespace>`.
        // `tee` copies stdin to stdout and to the file named like its argument.
        write("echo-input", "#!/usr/bin/tee\n", 0o755);
        write("fails", "#!/bin/false\n", 0o755);
        write("sleeper", "#!/usr/bin/tail -f\n", 0o755);
        write("not-exec", "#!/usr/bin/tee\n", 0o644);
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("evil");
        std::fs::write(&target, "#!/usr/bin/tee\n").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("escape")).unwrap();

        let runner = ActionRunner {
            hooks_dir: Some(dir.path().to_path_buf()),
            timeout: Duration::from_secs(2),
            ..ActionRunner::default()
        };
        let act = |name: &str| {
            envelope(json!({"network_id": "42", "action": name,
                "action-params": {"k": "v w (x) 'y' \"z\""},
                "physical-network-extension-details": {"password": "pw"}}))
        };
        let out = runner.run_hook(&act("echo-input")).unwrap();
        let got: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            got,
            json!({"action": "echo-input", "namespace": "cs-net-42", "network_id": "42",
                   "params": {"k": "v w (x) 'y' \"z\""}})
        );
        // argv[1] was the namespace: tee wrote a file of that name.
        let copy = std::fs::read_to_string(dir.path().join("cs-net-42")).unwrap();
        assert_eq!(copy, out);
        let err = runner.run_hook(&act("fails")).unwrap_err().to_string();
        assert_eq!(err, "hook 'fails' failed (exit 1): ");
        let err = runner.run_hook(&act("sleeper")).unwrap_err().to_string();
        assert_eq!(err, "hook 'sleeper' timed out after 2s and was killed");
        assert_eq!(
            runner.run_hook(&act("not-exec")).unwrap_err(),
            VpcError::UnknownAction("not-exec".into())
        );
        assert_eq!(
            runner.run_hook(&act("absent")).unwrap_err(),
            VpcError::UnknownAction("absent".into())
        );
        assert_eq!(
            runner.run_hook(&act("escape")).unwrap_err().to_string(),
            "invalid value for 'action': hook resolves outside the hooks directory"
        );
        let no_hooks = ActionRunner::default();
        assert_eq!(
            no_hooks.run_hook(&act("echo-input")).unwrap_err(),
            VpcError::UnknownAction("echo-input".into())
        );
    }

    #[test]
    fn pbr_tables_persist_per_namespace_and_engine_actions_are_handed_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = PbrStore::open(dir.path()).unwrap();
        assert_eq!(store.load("cs-net-42").unwrap(), PbrTables::default());
        let runner = ActionRunner::default();
        let body = json!({"network_id": "42", "action": "pbr-create-table",
            "action-params": {"table-id": "100", "table-name": "isp2"}});
        let (_, out) = execute_custom_action(body.to_string().as_bytes(), &runner, &store).unwrap();
        assert_eq!(
            out,
            ActionOutcome::Answer(json!({"status": "success", "printmessage": "true",
                "message": "table 'isp2' (100) created"}))
        );
        assert_eq!(store.load("cs-net-42").unwrap().tables["isp2"], 100);
        assert_eq!(store.load("cs-net-43").unwrap(), PbrTables::default());
        let body = json!({"vpc_id": "7", "action": "dump-config"});
        let (a, out) = execute_custom_action(body.to_string().as_bytes(), &runner, &store).unwrap();
        assert_eq!(out, ActionOutcome::Engine(BuiltinAction::DumpConfig));
        assert_eq!(a.namespace(), "cs-vpc-7");
        store.remove("cs-net-42").unwrap();
        store.remove("cs-net-42").unwrap();
        assert_eq!(store.load("cs-net-42").unwrap(), PbrTables::default());
        assert!(store.load("../etc").is_err());
    }

    #[test]
    fn hook_output_becomes_the_answer() {
        assert_eq!(
            hook_answer("h", "hello\n").unwrap(),
            json!({"status": "success", "printmessage": "true", "message": "hello\n"})
        );
        let own = json!({"status": "Success", "message": {"a": 1}});
        assert_eq!(hook_answer("h", &own.to_string()).unwrap(), own);
        assert_eq!(
            hook_answer("h", r#"{"status":"error","message":"disk full"}"#)
                .unwrap_err()
                .to_string(),
            "hook 'h' reported error: disk full"
        );
    }

    #[test]
    fn dump_config_redacts_secrets() {
        let v = json!({"physical-network-extension-details": {"hosts": "h1", "executor.key": "k",
                "password": "p", "api.secret": "s", "x.password": "y"},
            "vm_data": [{"dir": "password", "file": "vm_password", "content": "pw"},
                        {"dir": "userdata", "file": "user-data", "content": "hello"}],
            "sshkey": "ssh-rsa AAA"});
        let r = redact_secrets(&v);
        let text = r.to_string();
        for secret in ["\"k\"", "\"p\"", "\"s\"", "\"y\"", "\"pw\"", "ssh-rsa"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(r["physical-network-extension-details"]["hosts"], "h1");
        assert_eq!(r["vm_data"][1]["content"], "hello");
        assert_eq!(r["sshkey"], "<redacted>");
    }

    #[test]
    fn timeouts_kill_and_leftover_processes_do_not_hang_the_runner() {
        let mut cmd = Command::new("tail");
        cmd.args(["-f", "/dev/null"]);
        let out = run_with_timeout(cmd, None, Duration::from_millis(300)).unwrap();
        assert!(out.timed_out && !out.success);
        // `setsid -f` leaves a grandchild (outside our process group) holding
        // stdout for 4 s after the direct child exited: output is collected
        // after the grace period instead of waiting for it.
        let mut cmd = Command::new("setsid");
        cmd.args(["-f", "sleep", "4"]);
        let start = Instant::now();
        let out = run_with_timeout(cmd, None, Duration::from_secs(10)).unwrap();
        assert!(out.success && !out.timed_out);
        assert!(start.elapsed() < Duration::from_millis(3500));
        let mut cmd = Command::new("printf");
        cmd.arg("%s").arg("a;b $(x)");
        let out = run_with_timeout(cmd, Some(b"ignored".to_vec()), Duration::from_secs(5)).unwrap();
        assert!(out.success);
        assert_eq!(out.stdout, b"a;b $(x)");
    }
}
