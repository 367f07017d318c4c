//! Training jobs as local processes, one directory per job under `jobs/<backend-name>/`:
//!
//! ```text
//! jobs/<name>/handle.json           the ref returned by submit (for adoption on retry)
//! jobs/<name>/hyperparameters.json
//! jobs/<name>/output/               unless output-uri names another local directory
//! jobs/<name>/logs.txt              written by the host's process supervisor
//! jobs/<name>/exit.json             likewise, once the process ends
//! jobs/<name>/cancelled, timed-out  why the gateway ended it, if it did
//! ```

use mlgw_plugin_sdk::artifacts;
use mlgw_plugin_sdk::process::{self, ProcessHandle, ProcessState, SpawnRequest};
use mlgw_plugin_sdk::{
    BackendError, BackendRef, CallContext, JobState, JobStatus, LogPage, TrainingSpec, internal,
};

use crate::env::{JobPaths, hyperparameters_json, training_env};
use crate::files::{
    check_dir_name, create_dir_all, guest_path, now_ms, read_if_exists, write_atomic,
};
use crate::logs::{effective_max_lines, parse_cursor, read_page};
use crate::refs::JobData;
use crate::status::{Ending, job_status, runtime_exceeded};
use crate::validate;

/// How long a job gets between SIGTERM and SIGKILL, to flush checkpoints and logs.
pub const GRACE_MS: u32 = 5_000;

const CANCELLED: &str = "cancelled";
const TIMED_OUT: &str = "timed-out";

pub fn submit(ctx: &CallContext, spec: &TrainingSpec) -> Result<BackendRef, BackendError> {
    validate::training(spec)?;
    check_dir_name(&ctx.backend_name)?;
    let dir = format!("jobs/{}", ctx.backend_name);
    let handle_file = guest_path(&format!("{dir}/handle.json"));

    // A retried submit (the gateway crashed before recording the ref) must find the job it
    // already started rather than run it twice.
    if let Some(stored) = read_if_exists(&handle_file)? {
        let stored: StoredRef = serde_json::from_slice(&stored)
            .map_err(|e| internal(format!("{} is corrupt: {e}", handle_file.display())))?;
        mlgw_plugin_sdk::info(&format!(
            "training job {}: adopting the process started earlier ({})",
            ctx.backend_name, stored.name
        ));
        return Ok(BackendRef {
            name: stored.name,
            data: stored.data,
        });
    }

    if let Some(image) = spec.image.as_deref().filter(|i| !i.is_empty()) {
        // Not an error: the same client request must work whichever target it is sent to.
        mlgw_plugin_sdk::warn(&format!(
            "training job {}: image {image:?} ignored; the local target runs the command directly",
            ctx.backend_name
        ));
    }

    create_dir_all(&guest_path(&dir))?;
    let hp_rel = format!("{dir}/hyperparameters.json");
    write_atomic(&guest_path(&hp_rel), hyperparameters_json(spec).as_bytes())?;
    let output = match validate::output_path(spec.output_uri.as_deref())? {
        // The caller's own directory: theirs to create and manage.
        Some(path) => path,
        None => {
            let rel = format!("{dir}/output");
            create_dir_all(&guest_path(&rel))?;
            process::host_path(&rel)?
        }
    };
    let hyperparameters_file = process::host_path(&hp_rel)?;
    // The job's code and remote inputs come from the gateway's artifact store; the command
    // runs in the unpacked code, as on every other target.
    let cwd = match spec.code_uri.as_deref().filter(|c| !c.is_empty()) {
        Some(code) => {
            let rel = format!("{dir}/code");
            artifacts::unpack(code, &rel)?;
            rel
        }
        None => dir.clone(),
    };
    let code_dir = match spec.code_uri.as_deref().filter(|c| !c.is_empty()) {
        Some(_) => Some(process::host_path(&cwd)?),
        None => None,
    };
    let mut inputs = Vec::new();
    for input in spec.inputs.iter().filter(|i| is_remote(&i.uri)) {
        let rel = format!("{dir}/inputs/{}", input.name);
        artifacts::fetch(&input.uri, &rel)?;
        inputs.push((input.name.clone(), process::host_path(&rel)?));
    }
    let env = training_env(
        spec,
        &JobPaths {
            job_id: &ctx.resource_id,
            output_dir: &output,
            hyperparameters_file: &hyperparameters_file,
            inputs: &inputs,
            code_dir: code_dir.as_deref(),
        },
    );

    let started_ms = now_ms();
    let handle = process::spawn(&SpawnRequest {
        program: spec.command[0].clone(),
        args: spec.command[1..]
            .iter()
            .chain(&spec.args)
            .cloned()
            .collect(),
        env,
        cwd,
        log_file: format!("{dir}/logs.txt"),
        exit_file: format!("{dir}/exit.json"),
    })?;
    let data = JobData {
        pid: handle.pid,
        start_ticks: handle.start_ticks,
        dir,
        started_ms,
        max_runtime_s: spec.max_runtime_seconds,
        output,
    };
    let job = data.to_ref();
    let stored = serde_json::to_vec(&StoredRef {
        name: job.name.clone(),
        data: job.data.clone(),
    })
    .expect("StoredRef serializes");
    // The process is running whatever happens here; failing the call would only make the
    // gateway retry and start a second one.
    if let Err(e) = write_atomic(&handle_file, &stored) {
        mlgw_plugin_sdk::error(&format!(
            "training job {}: started {} but could not record it for adoption: {e}",
            ctx.backend_name, job.name
        ));
    }
    mlgw_plugin_sdk::info(&format!(
        "training job {}: started {}",
        ctx.backend_name, job.name
    ));
    Ok(job)
}

pub fn status(job: &BackendRef) -> Result<JobStatus, BackendError> {
    let data = JobData::from_ref(job)?;
    let state = process_state(&data)?;
    // The common case, polled every few hundred milliseconds: a running job within its
    // budget. Decide it without touching the job directory.
    if state == ProcessState::Running
        && !runtime_exceeded(data.started_ms, data.max_runtime_s, now_ms())
    {
        return Ok(job_status(state, Ending::Natural, data.pid, &data.output));
    }
    let ending = ending(&data);
    if state == ProcessState::Running && ending == Ending::Natural {
        let max_runtime_s = data.max_runtime_s.unwrap_or_default();
        // Recorded before acting, so every later status explains the kill the same way.
        mark(&data, TIMED_OUT)?;
        mlgw_plugin_sdk::warn(&format!(
            "training job {}: max runtime of {max_runtime_s}s exceeded; terminating",
            data.dir
        ));
        terminate(data.handle())?;
        return Ok(JobStatus {
            state: JobState::Failed(format!("max runtime of {max_runtime_s}s exceeded")),
            raw_state: format!("timed out pid {}", data.pid),
            message: None,
            output_uri: Some(format!("file://{}", data.output)),
            updated_ref: None,
        });
    }
    Ok(job_status(state, ending, data.pid, &data.output))
}

pub fn cancel(job: &BackendRef) -> Result<(), BackendError> {
    let data = JobData::from_ref(job)?;
    // A job that already finished keeps its real outcome.
    if process_state(&data)? != ProcessState::Running {
        return Ok(());
    }
    mark(&data, CANCELLED)?;
    terminate(data.handle())
}

pub fn logs(
    job: &BackendRef,
    cursor: Option<&str>,
    max_lines: u32,
) -> Result<LogPage, BackendError> {
    let data = JobData::from_ref(job)?;
    let offset = parse_cursor(cursor)?;
    // Asked before reading: once the process has ended its last line is already in the file,
    // so `complete` can never skip output written after the read.
    let ended = process_state(&data)? != ProcessState::Running;
    let page = read_page(
        &guest_path(&format!("{}/logs.txt", data.dir)),
        offset,
        effective_max_lines(max_lines),
        ended,
    )?;
    Ok(LogPage {
        lines: page.lines,
        next_cursor: page.next.to_string(),
        complete: page.complete,
    })
}

/// SIGTERM, then SIGKILL after the grace. A process that is already gone is already stopped.
pub fn terminate(handle: ProcessHandle) -> Result<(), BackendError> {
    match process::terminate_group(handle, GRACE_MS) {
        Ok(()) | Err(process::ProcessError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn process_state(data: &JobData) -> Result<ProcessState, BackendError> {
    Ok(process::state(
        data.handle(),
        &format!("{}/exit.json", data.dir),
    )?)
}

fn ending(data: &JobData) -> Ending {
    let marked = |marker: &str| guest_path(&format!("{}/{marker}", data.dir)).exists();
    if marked(TIMED_OUT) {
        Ending::TimedOut {
            max_runtime_s: data.max_runtime_s.unwrap_or_default(),
        }
    } else if marked(CANCELLED) {
        Ending::Cancelled
    } else {
        Ending::Natural
    }
}

fn mark(data: &JobData, marker: &str) -> Result<(), BackendError> {
    write_atomic(&guest_path(&format!("{}/{marker}", data.dir)), b"")
}

/// A URI the artifact store fetches (an object store); everything else is a local path.
pub fn is_remote(uri: &str) -> bool {
    uri.starts_with("s3://")
}

/// handle.json: the ref exactly as returned, so adoption returns the same ref.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredRef {
    name: String,
    data: String,
}
