//! Asynchronous commands as CloudStack runs them: the request is checked,
//! a job is stored (pending) and its id answered at once; the command runs
//! on a worker thread and its result or error is stored in the job. Jobs
//! live in the registry, so every process sharing the store answers
//! `queryAsyncJobResult`/`listAsyncJobs` for them and they outlive a
//! restart. A job whose process stopped before finishing it is marked failed
//! by the next process that opens the store on the same host.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::commands::{self, CommandSpec, Ctx};
use super::params::Req;
use super::{ApiError, Params};
use crate::registry::{Job, JobFilter, JobStatus, NewJob, Registry};

/// Text of a job whose process stopped before finishing it.
pub const INTERRUPTED_TEXT: &str =
    "Job was interrupted: the process running it stopped before it finished";

/// Jobs this process is running, so that a caller here can wait for one
/// without polling the store.
#[derive(Default)]
pub(super) struct Running {
    ids: Mutex<HashSet<String>>,
    done: Condvar,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, id: &str) {
        self.lock().remove(id);
        self.done.notify_all();
    }

    /// Waits until job `id` is no longer running here; `false` on timeout.
    pub(super) fn wait(&self, id: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut ids = self.lock();
        while ids.contains(id) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            ids = match self.done.wait_timeout(ids, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }
}

/// This process, as stored in the jobs it runs: `host:pid:start-time`.
/// The start time (clock ticks since boot, from `/proc/self/stat`) tells a
/// reused PID apart.
pub(super) fn process_identity() -> String {
    let pid = std::process::id();
    format!(
        "{}:{pid}:{}",
        host_name(),
        process_start_time(pid).unwrap_or_default()
    )
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Field 22 of `/proc/<pid>/stat` (after the parenthesised command name,
/// which may itself hold spaces).
fn process_start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19).map(str::to_string)
}

/// Whether the process named by `owner` still runs. Only decidable for
/// this host: jobs of other hosts count as alive.
fn owner_alive(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return true;
    };
    if host != host_name() {
        return true;
    }
    match pid.parse::<u32>() {
        Ok(pid) => process_start_time(pid).as_deref() == Some(start),
        Err(_) => true,
    }
}

/// Marks failed the pending jobs of this host whose process is gone.
pub(super) fn fail_orphans(registry: &Registry) -> Result<usize, ApiError> {
    let mut failed = 0;
    for job in registry.pending_jobs()? {
        if owner_alive(&job.owner) {
            continue;
        }
        let body = ApiError::internal(INTERRUPTED_TEXT).body().to_string();
        if registry.complete_job(&job.id, JobStatus::Failed, 530, &body)? {
            log::warn!(
                "job {} ({}) was interrupted: its process ({}) is gone",
                job.id,
                job.command,
                job.owner
            );
            failed += 1;
        }
    }
    Ok(failed)
}

/// The object a job works on, as CloudStack reports it.
fn instance_of(command: &CommandSpec, params: &Params) -> (Option<String>, Option<String>) {
    match command.name {
        "updateNetworkServiceProvider" => (
            Some("PhysicalNetworkServiceProvider".to_string()),
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("id"))
                .map(|(_, v)| v.trim().to_ascii_lowercase()),
        ),
        _ => (None, None),
    }
}

/// What [`start`] needs to run a job on its own thread.
pub(super) struct Runner {
    pub registry: Arc<Registry>,
    pub extensions_dir: Arc<str>,
    pub running: Arc<Running>,
    pub owner: Arc<str>,
}

/// Stores a pending job for an (already checked) async command, runs it on
/// a worker thread and returns the job id.
pub(super) fn start(
    runner: &Runner,
    command: &'static CommandSpec,
    params: Params,
) -> Result<String, ApiError> {
    let (instance_type, instance_id) = instance_of(command, &params);
    let job = runner.registry.create_job(&NewJob {
        command: command.name.to_string(),
        cmd: command.class.to_string(),
        instance_type,
        instance_id,
        owner: runner.owner.to_string(),
    })?;
    let id = job.id.clone();
    runner.running.lock().insert(id.clone());
    let registry = Arc::clone(&runner.registry);
    let extensions_dir = Arc::clone(&runner.extensions_dir);
    let running = Arc::clone(&runner.running);
    let job_id = id.clone();
    let spawned = std::thread::Builder::new()
        .name("netbridge-job".into())
        .spawn(move || {
            let ctx = Ctx {
                registry: &registry,
                extensions_dir: &extensions_dir,
            };
            let (status, code, result) = match commands::run(&ctx, command, &params) {
                Ok(answer) => {
                    // The job result is the response object without its
                    // `<command>response` wrapper.
                    let body = answer
                        .as_object()
                        .and_then(|o| o.values().next().cloned())
                        .unwrap_or(Value::Null);
                    (JobStatus::Succeeded, 0, body)
                }
                Err(e) => {
                    log::debug!("job {job_id} ({}) failed: {e}", command.name);
                    (JobStatus::Failed, 530, e.body())
                }
            };
            if let Err(e) = registry.complete_job(&job_id, status, code, &result.to_string()) {
                log::error!("job {job_id}: cannot store its result: {e}");
            }
            running.finish(&job_id);
        });
    if let Err(e) = spawned {
        runner.running.finish(&id);
        let error = ApiError::internal(format!("Cannot start the job: {e}"));
        let _ =
            runner
                .registry
                .complete_job(&id, JobStatus::Failed, 530, &error.body().to_string());
        return Err(error);
    }
    log::info!("job {id} started: {}", command.name);
    Ok(id)
}

/// CloudStack's `AsyncJobResponse`.
pub fn job_json(job: &Job) -> Value {
    let mut o = Map::new();
    o.insert("jobid".into(), json!(job.id));
    o.insert("cmd".into(), json!(job.cmd));
    o.insert("jobstatus".into(), json!(job.status as i64));
    o.insert("jobprocstatus".into(), json!(0));
    o.insert("jobresultcode".into(), json!(job.result_code));
    if job.status != JobStatus::Pending {
        o.insert("jobresulttype".into(), json!("object"));
        let result = job
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str::<Value>(r).ok())
            .unwrap_or(Value::Null);
        o.insert("jobresult".into(), result);
    }
    if let Some(t) = &job.instance_type {
        o.insert("jobinstancetype".into(), json!(t));
    }
    if let Some(i) = &job.instance_id {
        o.insert("jobinstanceid".into(), json!(i));
    }
    o.insert("created".into(), json!(job.created));
    if let Some(c) = &job.completed {
        o.insert("completed".into(), json!(c));
    }
    Value::Object(o)
}

pub(super) fn query_async_job_result(ctx: &Ctx<'_>, req: &Req<'_>) -> Result<Value, ApiError> {
    let id = req.required_uuid("jobid")?;
    let job = ctx.registry.get_job(&id)?.ok_or_else(|| {
        // CloudStack resolves the id before the command runs, with this text.
        super::params::unknown_entity("jobid", &id)
    })?;
    Ok(job_json(&job))
}

pub(super) fn list_async_jobs(ctx: &Ctx<'_>, req: &Req<'_>) -> Result<Value, ApiError> {
    let created_since = match req.get("startdate") {
        None => None,
        Some(text) => {
            let ms = super::http::parse_expires(text.trim()).ok_or_else(|| {
                ApiError::param(format!(
                    "Invalid value '{}' for parameter startdate: expected a date such as 2026-11-27T21:09:09+0000",
                    crate::protocol::sanitize_for_message(text)
                ))
            })?;
            Some(crate::registry::format_timestamp_ms(ms))
        }
    };
    let keyword = req.get("keyword").map(|k| k.trim().to_string());
    let jobs = ctx.registry.list_jobs(&JobFilter {
        created_since,
        keyword,
        pending_only: false,
    })?;
    let count = jobs.len();
    let items: Vec<Value> = match commands::paging(req)? {
        Some((page, size)) => jobs
            .iter()
            .skip(page.saturating_sub(1).saturating_mul(size))
            .take(size)
            .map(job_json)
            .collect(),
        None => jobs.iter().map(job_json).collect(),
    };
    Ok(commands::list("asyncjobs", items, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_gone_one_is_not() {
        let me = process_identity();
        assert!(owner_alive(&me), "{me}");
        let host = host_name();
        // PID 1 exists but never with start time "x".
        assert!(!owner_alive(&format!("{host}:1:x")));
        assert!(!owner_alive(&format!("{host}:4294967295:1")));
        // Other hosts cannot be checked from here.
        assert!(owner_alive("elsewhere.example:1:1"));
    }
}
