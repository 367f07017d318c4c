//! Training: a spec becomes a CreateTrainingJob request, SageMaker's DescribeTrainingJob
//! answer becomes the gateway's job status, and the job's CloudWatch streams become log pages.
//! Every mapping here is a pure function; `submit`, `status`, `cancel` and `logs` at the
//! bottom are the only code that calls the host.

use std::collections::BTreeSet;

use mlgw_plugin_sdk::sagemaker::{self, Channel, LogEvents, TrainingJob, TrainingJobRequest};
use mlgw_plugin_sdk::{
    BackendError, BackendRef, CallContext, JobState, JobStatus, KeyValue, LogLine, LogPage,
    TrainingSpec, internal, invalid,
};
use serde::{Deserialize, Serialize};

use crate::names::{self, shown};
use crate::settings::{self, MAX_IMAGE, MAX_RUNTIME_LIMIT_SECONDS, Settings};
use crate::{instances, names::listed};

/// Where SageMaker puts things inside a training container.
pub const MODEL_DIR: &str = "/opt/ml/model";
pub const HYPERPARAMETERS_FILE: &str = "/opt/ml/input/config/hyperparameters.json";
pub const INPUT_DIR: &str = "/opt/ml/input/data";
/// Where the framework images' entrypoint unpacks `sagemaker_submit_directory`.
pub const CODE_DIR: &str = "/opt/ml/code";

/// The hyperparameters SageMaker's framework estimators use to hand code over.
pub const SUBMIT_DIRECTORY: &str = "sagemaker_submit_directory";
pub const PROGRAM: &str = "sagemaker_program";

/// CreateTrainingJob's limits on Environment and HyperParameters.
pub const MAX_ENV_ENTRIES: usize = 100;
pub const MAX_ENV_KEY: usize = 512;
pub const MAX_ENV_VALUE: usize = 512;
pub const MAX_HYPERPARAMETERS: usize = 100;
pub const MAX_HYPERPARAMETER_KEY: usize = 256;
pub const MAX_HYPERPARAMETER_VALUE: usize = 2500;

/// What a job's BackendRef carries: the name is all later calls need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobData {
    pub job: String,
}

impl JobData {
    pub fn to_ref(&self, arn: &str) -> BackendRef {
        BackendRef {
            name: if arn.is_empty() {
                self.job.clone()
            } else {
                arn.to_string()
            },
            data: serde_json::to_string(self).expect("JobData serializes"),
        }
    }

    pub fn from_ref(r: &BackendRef) -> Result<Self, BackendError> {
        serde_json::from_str(&r.data).map_err(|e| {
            internal(format!(
                "this job's backend ref is not the sagemaker target's: {e}"
            ))
        })
    }
}

/// The CreateTrainingJob request for `spec`, or invalid-spec naming the field SageMaker (or
/// this target) cannot take.
pub fn request(
    ctx: &CallContext,
    spec: &TrainingSpec,
    settings: &Settings,
) -> Result<TrainingJobRequest, BackendError> {
    let name = names::resource_name(&ctx.backend_name, "")?;
    let image = image(spec, settings)?;
    let code = code(spec)?;
    let (entrypoint, arguments) = match &code {
        // The framework image's own entrypoint fetches the code and runs the program.
        Some(_) => (Vec::new(), Vec::new()),
        None => (spec.command.clone(), spec.args.clone()),
    };
    let channels = channels(spec)?;
    let hyperparameters = hyperparameters(spec, code.as_ref())?;
    let environment = environment(ctx, spec, code.is_some())?;
    let output_path = output_path(spec, settings)?;
    let instance = instances::choose(settings, &spec.resources, "resources")?;
    let max_runtime_seconds = max_runtime(spec, settings)?;
    let spot_max_wait_seconds = spot_wait(settings, max_runtime_seconds)?;
    let checkpoint_s3_uri = settings
        .checkpoint_path
        .as_deref()
        .map(|p| format!("{}/{name}/", p.trim_end_matches('/')));
    Ok(TrainingJobRequest {
        name,
        image,
        entrypoint,
        arguments,
        environment,
        hyperparameters,
        channels,
        output_path,
        instance_type: instance.instance_type.clone(),
        instance_count: spec.resources.nodes.max(1),
        volume_size_gb: settings.volume_size_gb,
        max_runtime_seconds,
        spot_max_wait_seconds,
        checkpoint_s3_uri,
    })
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// `spec.image`, else the settings' image for `spec.framework`.
fn image(spec: &TrainingSpec, settings: &Settings) -> Result<String, BackendError> {
    let offered = || listed(settings.training_images.keys().map(String::as_str), 24);
    let image = match (non_empty(&spec.image), non_empty(&spec.framework)) {
        (Some(image), _) => {
            if image.len() > MAX_IMAGE {
                return Err(invalid(
                    "image",
                    format!("is {} characters; SageMaker takes at most {MAX_IMAGE}", image.len()),
                ));
            }
            image.to_string()
        }
        (None, Some(framework)) => settings
            .training_images
            .get(&framework.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| {
                invalid(
                    "framework",
                    format!(
                        "this target has no training image for {}; it has images for {} (or give image)",
                        shown(framework),
                        offered()
                    ),
                )
            })?,
        (None, None) => {
            return Err(invalid(
                "image",
                format!(
                    "SageMaker runs a container image: give image, or a framework this target has an image for ({})",
                    offered()
                ),
            ));
        }
    };
    Ok(image)
}

/// How the job's code reaches the container, when it has any.
#[derive(Debug, Clone, PartialEq)]
pub struct Code {
    /// the s3:// URI of the code's tar.gz
    pub uri: String,
    /// the entry script, relative to the unpacked code
    pub program: String,
}

/// Programs that run an entry script: the framework images' entrypoint picks the interpreter
/// by the script itself (Python for `.py`, a shell for `.sh`), so naming one is optional.
fn is_interpreter(program: &str) -> bool {
    let base = program.rsplit('/').next().unwrap_or(program);
    base == "sh"
        || base == "bash"
        || base
            .strip_prefix("python")
            .is_some_and(|v| v.bytes().all(|c| c.is_ascii_digit() || c == b'.'))
}

/// The code handover, SageMaker's framework estimators' way: `sagemaker_submit_directory` and
/// `sagemaker_program`, and the image's own entrypoint. That entrypoint runs the program with
/// the hyperparameters as `--name value` and nothing else, so a command with more than the
/// interpreter and the script, or any args, is refused rather than silently dropped.
fn code(spec: &TrainingSpec) -> Result<Option<Code>, BackendError> {
    let Some(uri) = non_empty(&spec.code_uri) else {
        return Ok(None);
    };
    if uri.starts_with("file:") || uri.starts_with('/') {
        return Err(invalid(
            "code_uri",
            "local code cannot reach SageMaker: the gateway's artifact store must be S3 for this target",
        ));
    }
    names::check_s3_uri(uri).map_err(|r| invalid("code_uri", r))?;
    let (program, extra) = match spec.command.as_slice() {
        [] => {
            return Err(invalid(
                "command",
                "with code_uri, name the entry script to run, e.g. [\"python\", \"train.py\"]",
            ));
        }
        [interpreter, rest @ ..] if is_interpreter(interpreter) => match rest {
            [] => {
                return Err(invalid(
                    "command",
                    format!(
                        "with code_uri, {} needs the entry script after it, e.g. [\"python\", \"train.py\"]",
                        shown(interpreter)
                    ),
                ));
            }
            [script, extra @ ..] => (script, extra),
        },
        [script, extra @ ..] => (script, extra),
    };
    if program.is_empty()
        || program.starts_with('/')
        || program.starts_with('-')
        || program.split('/').any(|s| s == "..")
    {
        return Err(invalid(
            "command",
            format!(
                "{} is not a script inside the job's code: give its path relative to the code directory",
                shown(program)
            ),
        ));
    }
    let why = "the framework image runs the entry script with the hyperparameters as --name value arguments and nothing else: pass options as hyperparameters";
    if !extra.is_empty() {
        return Err(invalid(
            "command",
            format!("{} after the entry script: {why}", shown(&extra[0])),
        ));
    }
    if !spec.args.is_empty() {
        return Err(invalid("args", format!("with code_uri, {why}")));
    }
    Ok(Some(Code {
        uri: uri.to_string(),
        program: program.clone(),
    }))
}

/// One channel per input, all S3: SageMaker downloads each to /opt/ml/input/data/<name>.
fn channels(spec: &TrainingSpec) -> Result<Vec<Channel>, BackendError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(spec.inputs.len());
    for (i, input) in spec.inputs.iter().enumerate() {
        let field = |f: &str| format!("inputs[{i}].{f}");
        if !names::is_channel_name(&input.name) {
            return Err(invalid(
                field("name"),
                format!(
                    "{} is not a SageMaker channel name: 1-{} letters, digits, '.', '-' and '_'",
                    shown(&input.name),
                    names::MAX_CHANNEL_NAME
                ),
            ));
        }
        // Channels become MLGW_INPUT_<NAME>: names that differ only in case or punctuation
        // would overwrite each other there.
        if !seen.insert(names::env_suffix(&input.name)) {
            return Err(invalid(
                field("name"),
                format!("{} clashes with another input's name", shown(&input.name)),
            ));
        }
        names::check_s3_uri(&input.uri).map_err(|r| {
            invalid(
                field("uri"),
                format!("{r}: SageMaker reads training inputs from S3 only"),
            )
        })?;
        out.push(Channel {
            name: input.name.clone(),
            s3_uri: input.uri.clone(),
            s3_data_type: "S3Prefix".into(),
            input_mode: "File".into(),
            distribution: "FullyReplicated".into(),
            content_type: None,
        });
    }
    Ok(out)
}

/// The spec's hyperparameters as given, plus the code handover. The framework estimators
/// JSON-encode every value; the images' entrypoint decodes what it can and keeps the rest as
/// text, so the user's strings go as they are and only the handover is encoded.
fn hyperparameters(
    spec: &TrainingSpec,
    code: Option<&Code>,
) -> Result<Vec<KeyValue>, BackendError> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for kv in &spec.hyperparameters {
        let field = format!("hyperparameters.{}", kv.key);
        if kv.key.is_empty() {
            return Err(invalid(
                "hyperparameters",
                "a hyperparameter has an empty name",
            ));
        }
        if kv.key.starts_with("sagemaker_") {
            return Err(invalid(
                field,
                "names starting with sagemaker_ are SageMaker's own (the code handover uses them)",
            ));
        }
        if kv.key.chars().count() > MAX_HYPERPARAMETER_KEY {
            return Err(invalid(
                "hyperparameters",
                format!(
                    "the name {} is longer than SageMaker's {MAX_HYPERPARAMETER_KEY} characters",
                    shown(&kv.key)
                ),
            ));
        }
        if kv.value.chars().count() > MAX_HYPERPARAMETER_VALUE {
            return Err(invalid(
                field,
                format!("is longer than SageMaker's {MAX_HYPERPARAMETER_VALUE} characters"),
            ));
        }
        if !seen.insert(kv.key.as_str()) {
            return Err(invalid(field, "is given twice"));
        }
        out.push(kv.clone());
    }
    if let Some(code) = code {
        for (key, value) in [(SUBMIT_DIRECTORY, &code.uri), (PROGRAM, &code.program)] {
            out.push(KeyValue {
                key: key.into(),
                value: serde_json::Value::String(value.clone()).to_string(),
            });
        }
    }
    if out.len() > MAX_HYPERPARAMETERS {
        return Err(invalid(
            "hyperparameters",
            format!(
                "{} in all{}; SageMaker takes at most {MAX_HYPERPARAMETERS}",
                out.len(),
                if code.is_some() {
                    " with the code handover's two"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(out)
}

/// spec.env, then the variables the local target sets under the same names (pointing at
/// SageMaker's paths), so a script reads the same names on both; a generated name overrides a
/// user's, as on the local target. SM_* are SageMaker's and left to it.
fn environment(
    ctx: &CallContext,
    spec: &TrainingSpec,
    with_code: bool,
) -> Result<Vec<KeyValue>, BackendError> {
    let mut env: Vec<KeyValue> = Vec::new();
    let mut set = |key: String, value: String| match env.iter_mut().find(|kv| kv.key == key) {
        Some(kv) => kv.value = value,
        None => env.push(KeyValue { key, value }),
    };
    for kv in &spec.env {
        let field = format!("env.{}", kv.key);
        if !names::is_env_name(&kv.key) || kv.key.len() > MAX_ENV_KEY {
            return Err(invalid(
                field,
                format!(
                    "not an environment variable name SageMaker takes (letters, digits and _, not starting with a digit, at most {MAX_ENV_KEY})"
                ),
            ));
        }
        if kv.value.chars().count() > MAX_ENV_VALUE {
            return Err(invalid(
                field,
                format!("the value is longer than SageMaker's {MAX_ENV_VALUE} characters"),
            ));
        }
        set(kv.key.clone(), kv.value.clone());
    }
    set("MLGW_JOB_ID".into(), ctx.resource_id.clone());
    set("MLGW_OUTPUT_DIR".into(), MODEL_DIR.into());
    set("MLGW_HYPERPARAMETERS".into(), HYPERPARAMETERS_FILE.into());
    for kv in &spec.hyperparameters {
        set(
            format!("MLGW_HP_{}", names::env_suffix(&kv.key)),
            kv.value.clone(),
        );
    }
    for input in &spec.inputs {
        set(
            format!("MLGW_INPUT_{}", names::env_suffix(&input.name)),
            format!("{INPUT_DIR}/{}", input.name),
        );
    }
    if with_code {
        set("MLGW_CODE_DIR".into(), CODE_DIR.into());
    }
    if let Some(kv) = env
        .iter()
        .find(|kv| kv.value.chars().count() > MAX_ENV_VALUE)
    {
        // Only a hyperparameter's copy can get here: spec.env was checked above.
        let hp = kv.key.trim_start_matches("MLGW_HP_");
        return Err(invalid(
            "hyperparameters",
            format!(
                "the value for {hp} goes into the environment as {}, and is longer than SageMaker's {MAX_ENV_VALUE} characters there",
                kv.key
            ),
        ));
    }
    if env.len() > MAX_ENV_ENTRIES {
        return Err(invalid(
            "env",
            format!(
                "{} variables with the gateway's MLGW_* (one per hyperparameter and input); SageMaker takes at most {MAX_ENV_ENTRIES}",
                env.len()
            ),
        ));
    }
    Ok(env)
}

fn output_path(spec: &TrainingSpec, settings: &Settings) -> Result<String, BackendError> {
    match (non_empty(&spec.output_uri), settings.output_path.as_deref()) {
        (Some(uri), _) => {
            names::check_s3_uri(uri).map_err(|r| {
                invalid(
                    "output_uri",
                    format!("{r}: SageMaker writes a job's outputs to S3 only"),
                )
            })?;
            Ok(uri.to_string())
        }
        (None, Some(default)) => Ok(default.to_string()),
        (None, None) => Err(invalid(
            "output_uri",
            "this target has no default output location (settings output_path): give an s3:// output_uri",
        )),
    }
}

fn max_runtime(spec: &TrainingSpec, settings: &Settings) -> Result<u32, BackendError> {
    match spec.max_runtime_seconds {
        None => Ok(settings.max_runtime_seconds),
        Some(s) if s == 0 || s > u64::from(MAX_RUNTIME_LIMIT_SECONDS) => Err(invalid(
            "max_runtime_seconds",
            format!(
                "must be between 1 and {MAX_RUNTIME_LIMIT_SECONDS} (SageMaker's 28 days), not {s}"
            ),
        )),
        Some(s) => Ok(s as u32),
    }
}

/// Managed spot's MaxWaitTimeInSeconds covers waiting and running together, so it must be at
/// least the job's runtime: the settings' wait, or twice the runtime.
fn spot_wait(settings: &Settings, max_runtime: u32) -> Result<Option<u32>, BackendError> {
    if !settings.spot {
        return Ok(None);
    }
    let wait = settings
        .spot_max_wait_seconds
        .unwrap_or_else(|| max_runtime.saturating_mul(2));
    if wait < max_runtime {
        return Err(invalid(
            "max_runtime_seconds",
            format!(
                "{max_runtime} is above this target's spot_max_wait_seconds ({wait}), which must cover a spot job's waiting and running"
            ),
        ));
    }
    Ok(Some(wait))
}

/// DescribeTrainingJob's answer as the gateway's status. SecondaryStatus is the finer word
/// (Starting, Downloading, Training, Uploading…), so it is what operators see as the raw state.
pub fn status(job: &TrainingJob) -> JobStatus {
    let state = match job.status.as_str() {
        "InProgress" | "Stopping" => JobState::Running,
        "Completed" => JobState::Succeeded,
        "Failed" => JobState::Failed(
            job.failure_reason
                .clone()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "the training job failed".into()),
        ),
        "Stopped" => JobState::Cancelled,
        // A status SageMaker adds later: still its own, so still running; the word shows.
        _ => JobState::Running,
    };
    let raw_state = match (job.status.as_str(), job.secondary_status.as_str()) {
        (s, "") => s.to_string(),
        (_, secondary) => secondary.to_string(),
    };
    JobStatus {
        state,
        raw_state,
        message: job.failure_reason.clone().filter(|r| !r.is_empty()),
        output_uri: job.model_artifacts.clone().filter(|u| !u.is_empty()),
        updated_ref: None,
    }
}

/// Whether SageMaker is done with the job: nothing more will be logged after its last lines.
pub fn has_ended(job: &TrainingJob) -> bool {
    matches!(job.status.as_str(), "Completed" | "Failed" | "Stopped")
}

/// A page of the job's log events as gateway log lines. The host's cursor passes through as
/// it is. The log is complete once a read that began after the job had ended finds nothing
/// new: a short page proves nothing, since the host also cuts pages by size.
pub fn log_page(job: &str, events: LogEvents, ended_before: bool) -> LogPage {
    let prefix = format!("{job}/");
    let complete = ended_before && events.events.is_empty();
    LogPage {
        lines: events
            .events
            .into_iter()
            .map(|e| LogLine {
                timestamp_ms: e.timestamp_ms,
                // `algo-1-1700000000`: which instance said it.
                source: e
                    .log_stream
                    .strip_prefix(&prefix)
                    .unwrap_or(&e.log_stream)
                    .to_string(),
                text: e.message.trim_end_matches(['\n', '\r']).to_string(),
            })
            .collect(),
        next_cursor: events.next_cursor,
        complete,
    }
}

// ---------------------------------------------------------------------------------------------
// Calls to the host.

pub fn submit(ctx: &CallContext, spec: &TrainingSpec) -> Result<BackendRef, BackendError> {
    let settings = settings::load(ctx)?;
    let req = request(ctx, spec, &settings)?;
    let data = JobData {
        job: req.name.clone(),
    };
    let arn = match sagemaker::create_training_job(&req) {
        Ok(arn) => arn,
        // A retried submit: the job is ours by name, so adopt it.
        Err(BackendError::Conflict(_)) => sagemaker::describe_training_job(&data.job)?.arn,
        Err(e) => return Err(e),
    };
    mlgw_plugin_sdk::info(&format!("started training job {}", data.job));
    Ok(data.to_ref(&arn))
}

pub fn status_of(job: &BackendRef) -> Result<JobStatus, BackendError> {
    let data = JobData::from_ref(job)?;
    Ok(status(&sagemaker::describe_training_job(&data.job)?))
}

/// StopTrainingJob, unless SageMaker is already stopping or done with the job: the gateway
/// asks again until the job ends, and SageMaker refuses to stop a job that is not running.
pub fn cancel(job: &BackendRef) -> Result<(), BackendError> {
    let data = JobData::from_ref(job)?;
    let now = sagemaker::describe_training_job(&data.job)?;
    if has_ended(&now) || now.status == "Stopping" {
        return Ok(());
    }
    sagemaker::stop_training_job(&data.job)
}

pub fn logs(
    job: &BackendRef,
    cursor: Option<String>,
    max_lines: u32,
) -> Result<LogPage, BackendError> {
    let data = JobData::from_ref(job)?;
    // Asked before reading: a job that had ended by then has logged everything it will.
    let ended = has_ended(&sagemaker::describe_training_job(&data.job)?);
    let events = sagemaker::training_job_logs(&data.job, cursor.as_deref(), max_lines.max(1))?;
    Ok(log_page(&data.job, events, ended))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlgw_plugin_sdk::sagemaker::LogEvent;
    use mlgw_plugin_sdk::{FieldError, InputChannel, Resources};

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: v.into(),
        }
    }

    fn ctx() -> CallContext {
        CallContext {
            tenant: "default".into(),
            target: "sagemaker".into(),
            resource_id: "j-0193ab".into(),
            backend_name: "mlgw-j0193ab".into(),
            settings: String::new(),
            revision: 0,
        }
    }

    fn settings() -> Settings {
        settings::Settings {
            output_path: Some("s3://out/jobs".into()),
            training_images: [("sklearn".to_string(), "img/sklearn:1".to_string())].into(),
            ..Settings::default()
        }
    }

    fn spec() -> TrainingSpec {
        TrainingSpec {
            name: "train".into(),
            image: None,
            command: vec!["python".into(), "train.py".into()],
            args: vec![],
            env: vec![
                kv("MLGW_TEST_OUTCOME", "Completed"),
                kv("MLGW_OUTPUT_DIR", "/elsewhere"),
            ],
            hyperparameters: vec![kv("learning-rate", "0.1"), kv("epochs", "3")],
            inputs: vec![
                InputChannel {
                    name: "train".into(),
                    uri: "s3://data/train/".into(),
                },
                InputChannel {
                    name: "val.set".into(),
                    uri: "s3://data/val.csv".into(),
                },
            ],
            output_uri: None,
            resources: Resources {
                cpu: None,
                memory: None,
                gpus: 0,
                gpu_type: None,
                instance_type: None,
                nodes: 0,
            },
            max_runtime_seconds: None,
            framework: Some("SKLearn".into()),
            code_uri: Some("s3://artifacts/code/abc.tar.gz".into()),
        }
    }

    fn get<'a>(kvs: &'a [KeyValue], key: &str) -> Option<&'a str> {
        kvs.iter()
            .find(|kv| kv.key == key)
            .map(|kv| kv.value.as_str())
    }

    fn refused(spec: &TrainingSpec) -> FieldError {
        refused_with(spec, &settings())
    }

    fn refused_with(spec: &TrainingSpec, s: &Settings) -> FieldError {
        match request(&ctx(), spec, s) {
            Err(BackendError::InvalidSpec(f)) => f,
            other => panic!("expected invalid-spec, got {other:?}"),
        }
    }

    #[test]
    fn a_job_with_code_uses_the_framework_handover() {
        let r = request(&ctx(), &spec(), &settings()).unwrap();
        assert_eq!(r.name, "mlgw-j0193ab");
        // The framework is matched whatever its case.
        assert_eq!(r.image, "img/sklearn:1");
        // The image's own entrypoint downloads and runs the code.
        assert!(r.entrypoint.is_empty() && r.arguments.is_empty());
        assert_eq!(
            get(&r.hyperparameters, SUBMIT_DIRECTORY),
            Some("\"s3://artifacts/code/abc.tar.gz\"")
        );
        assert_eq!(get(&r.hyperparameters, PROGRAM), Some("\"train.py\""));
        assert_eq!(get(&r.hyperparameters, "learning-rate"), Some("0.1"));
        assert_eq!(r.hyperparameters.len(), 4);
        assert_eq!(r.output_path, "s3://out/jobs");
        assert_eq!(r.instance_type, "ml.m5.large");
        assert_eq!(r.instance_count, 1, "nodes 0 means one");
        assert_eq!(r.volume_size_gb, 30);
        assert_eq!(r.max_runtime_seconds, 86_400);
        assert_eq!(r.spot_max_wait_seconds, None);
        assert_eq!(r.checkpoint_s3_uri, None);
    }

    #[test]
    fn the_environment_matches_the_local_targets_names() {
        let r = request(&ctx(), &spec(), &settings()).unwrap();
        let env = &r.environment;
        // The user's own pass through (the test server reads its outcome from here).
        assert_eq!(get(env, "MLGW_TEST_OUTCOME"), Some("Completed"));
        assert_eq!(get(env, "MLGW_JOB_ID"), Some("j-0193ab"));
        // The gateway's names win, in place.
        assert_eq!(get(env, "MLGW_OUTPUT_DIR"), Some("/opt/ml/model"));
        assert_eq!(
            env.iter().filter(|kv| kv.key == "MLGW_OUTPUT_DIR").count(),
            1
        );
        assert_eq!(
            get(env, "MLGW_HYPERPARAMETERS"),
            Some("/opt/ml/input/config/hyperparameters.json")
        );
        assert_eq!(get(env, "MLGW_HP_LEARNING_RATE"), Some("0.1"));
        assert_eq!(get(env, "MLGW_HP_EPOCHS"), Some("3"));
        assert_eq!(
            get(env, "MLGW_INPUT_TRAIN"),
            Some("/opt/ml/input/data/train")
        );
        assert_eq!(
            get(env, "MLGW_INPUT_VAL_SET"),
            Some("/opt/ml/input/data/val.set")
        );
        assert_eq!(get(env, "MLGW_CODE_DIR"), Some("/opt/ml/code"));
        // SM_* are SageMaker's own.
        assert!(env.iter().all(|kv| !kv.key.starts_with("SM_")));
    }

    #[test]
    fn a_job_without_code_runs_command_and_args_as_the_entrypoint() {
        let mut s = spec();
        s.code_uri = None;
        s.image = Some("acct.dkr.ecr/custom:1".into());
        s.command = vec!["python".into(), "-m".into(), "trainer".into()];
        s.args = vec!["--epochs".into(), "3".into()];
        let r = request(&ctx(), &s, &settings()).unwrap();
        // An explicit image wins over the framework's.
        assert_eq!(r.image, "acct.dkr.ecr/custom:1");
        assert_eq!(r.entrypoint, ["python", "-m", "trainer"]);
        assert_eq!(r.arguments, ["--epochs", "3"]);
        assert_eq!(get(&r.hyperparameters, PROGRAM), None);
        assert_eq!(get(&r.environment, "MLGW_CODE_DIR"), None);

        // Nothing to run: the image's own entrypoint.
        s.command.clear();
        s.args.clear();
        let r = request(&ctx(), &s, &settings()).unwrap();
        assert!(r.entrypoint.is_empty() && r.arguments.is_empty());
    }

    #[test]
    fn entry_scripts_with_and_without_an_interpreter() {
        let program = |command: &[&str]| {
            let mut s = spec();
            s.command = command.iter().map(|c| c.to_string()).collect();
            let r = request(&ctx(), &s, &settings()).unwrap();
            get(&r.hyperparameters, PROGRAM).unwrap().to_string()
        };
        assert_eq!(program(&["python3", "src/train.py"]), "\"src/train.py\"");
        assert_eq!(
            program(&["/usr/bin/python3.11", "train.py"]),
            "\"train.py\""
        );
        assert_eq!(program(&["train.py"]), "\"train.py\"");
        assert_eq!(program(&["bash", "run.sh"]), "\"run.sh\"");
    }

    #[test]
    fn code_handover_refusals_name_the_field() {
        let with = |f: &dyn Fn(&mut TrainingSpec)| {
            let mut s = spec();
            f(&mut s);
            refused(&s)
        };
        let f = with(&|s| s.code_uri = Some("file:///tmp/code".into()));
        assert_eq!(f.field, "code_uri");
        assert!(
            f.reason.contains("artifact store must be S3"),
            "{}",
            f.reason
        );
        assert_eq!(
            with(&|s| s.code_uri = Some("gs://b/code.tgz".into())).field,
            "code_uri"
        );
        assert_eq!(with(&|s| s.command.clear()).field, "command");
        assert_eq!(
            with(&|s| s.command = vec!["python".into()]).field,
            "command"
        );
        assert_eq!(
            with(&|s| s.command = vec!["python".into(), "/abs/train.py".into()]).field,
            "command"
        );
        assert_eq!(
            with(&|s| s.command = vec!["python".into(), "../train.py".into()]).field,
            "command"
        );
        // Extra arguments cannot reach the script through the framework entrypoint.
        let f = with(&|s| s.command.push("--epochs".into()));
        assert_eq!(f.field, "command");
        assert!(
            f.reason.contains("\"--epochs\" after the entry script"),
            "{}",
            f.reason
        );
        assert!(
            f.reason.contains("pass options as hyperparameters"),
            "{}",
            f.reason
        );
        let f = with(&|s| s.args = vec!["--epochs".into()]);
        assert_eq!(f.field, "args");
        assert_eq!(
            with(&|s| s.hyperparameters.push(kv("sagemaker_program", "x.py"))).field,
            "hyperparameters.sagemaker_program"
        );
    }

    #[test]
    fn inputs_become_s3_channels() {
        let r = request(&ctx(), &spec(), &settings()).unwrap();
        assert_eq!(
            r.channels,
            [
                Channel {
                    name: "train".into(),
                    s3_uri: "s3://data/train/".into(),
                    s3_data_type: "S3Prefix".into(),
                    input_mode: "File".into(),
                    distribution: "FullyReplicated".into(),
                    content_type: None,
                },
                Channel {
                    name: "val.set".into(),
                    s3_uri: "s3://data/val.csv".into(),
                    s3_data_type: "S3Prefix".into(),
                    input_mode: "File".into(),
                    distribution: "FullyReplicated".into(),
                    content_type: None,
                },
            ]
        );
    }

    #[test]
    fn bad_inputs_name_their_index() {
        let input = |name: &str, uri: &str| {
            let mut s = spec();
            s.inputs.push(InputChannel {
                name: name.into(),
                uri: uri.into(),
            });
            refused(&s)
        };
        let f = input("test", "file:///data/test");
        assert_eq!(f.field, "inputs[2].uri");
        assert!(f.reason.contains("S3 only"), "{}", f.reason);
        assert_eq!(
            input("test", "https://example.com/x").field,
            "inputs[2].uri"
        );
        assert_eq!(input("test", "s3://").field, "inputs[2].uri");
        assert_eq!(input("a b", "s3://d/x").field, "inputs[2].name");
        assert_eq!(input("", "s3://d/x").field, "inputs[2].name");
        let f = input("VAL-SET", "s3://d/x");
        assert_eq!(f.field, "inputs[2].name");
        assert!(f.reason.contains("clashes"), "{}", f.reason);
    }

    #[test]
    fn images_come_from_the_spec_or_the_framework() {
        let mut s = spec();
        s.framework = Some("pytorch".into());
        let f = refused(&s);
        assert_eq!(f.field, "framework");
        assert!(f.reason.contains("\"pytorch\""), "{}", f.reason);
        assert!(f.reason.contains("images for sklearn"), "{}", f.reason);

        s.framework = None;
        let f = refused(&s);
        assert_eq!(f.field, "image");

        s.image = Some("x".repeat(256));
        assert_eq!(refused(&s).field, "image");
    }

    #[test]
    fn output_and_runtime() {
        let mut s = spec();
        s.output_uri = Some("s3://mine/out/".into());
        s.max_runtime_seconds = Some(600);
        let r = request(&ctx(), &s, &settings()).unwrap();
        assert_eq!(r.output_path, "s3://mine/out/");
        assert_eq!(r.max_runtime_seconds, 600);

        s.output_uri = Some("/tmp/out".into());
        assert_eq!(refused(&s).field, "output_uri");

        let no_default = Settings {
            output_path: None,
            ..settings()
        };
        let f = refused_with(&spec(), &no_default);
        assert_eq!(f.field, "output_uri");
        assert!(f.reason.contains("output_path"), "{}", f.reason);

        let mut s = spec();
        s.max_runtime_seconds = Some(0);
        assert_eq!(refused(&s).field, "max_runtime_seconds");
        s.max_runtime_seconds = Some(u64::from(MAX_RUNTIME_LIMIT_SECONDS) + 1);
        assert_eq!(refused(&s).field, "max_runtime_seconds");
    }

    #[test]
    fn resources_pick_the_instance_and_nodes_the_count() {
        let mut s = spec();
        s.resources.gpus = 1;
        s.resources.gpu_type = Some("a10g".into());
        s.resources.nodes = 4;
        let r = request(&ctx(), &s, &settings()).unwrap();
        assert_eq!(r.instance_type, "ml.g5.xlarge");
        assert_eq!(r.instance_count, 4);

        let mut s = spec();
        s.resources.instance_type = Some("ml.nope.large".into());
        assert_eq!(refused(&s).field, "resources.instance_type");
    }

    #[test]
    fn spot_and_checkpoints_from_the_settings() {
        let mut st = Settings {
            spot: true,
            checkpoint_path: Some("s3://ckpt/mlgw/".into()),
            ..settings()
        };
        let mut s = spec();
        s.max_runtime_seconds = Some(3600);
        let r = request(&ctx(), &s, &st).unwrap();
        assert_eq!(
            r.spot_max_wait_seconds,
            Some(7200),
            "twice the runtime by default"
        );
        assert_eq!(
            r.checkpoint_s3_uri.as_deref(),
            Some("s3://ckpt/mlgw/mlgw-j0193ab/")
        );

        st.spot_max_wait_seconds = Some(5000);
        assert_eq!(
            request(&ctx(), &s, &st).unwrap().spot_max_wait_seconds,
            Some(5000)
        );
        s.max_runtime_seconds = Some(6000);
        let f = refused_with(&s, &st);
        assert_eq!(f.field, "max_runtime_seconds");
        assert!(
            f.reason.contains("spot_max_wait_seconds (5000)"),
            "{}",
            f.reason
        );
    }

    #[test]
    fn environment_and_hyperparameter_limits() {
        let mut s = spec();
        s.env.push(kv("1BAD", "x"));
        assert_eq!(refused(&s).field, "env.1BAD");

        let mut s = spec();
        s.env.push(kv("BIG", &"v".repeat(513)));
        assert_eq!(refused(&s).field, "env.BIG");

        let mut s = spec();
        s.hyperparameters = (0..99).map(|i| kv(&format!("h{i}"), "1")).collect();
        // 99 of the user's and the handover's two make 101.
        let f = refused(&s);
        assert_eq!(f.field, "hyperparameters");
        assert!(
            f.reason.contains("101 in all with the code handover's two"),
            "{}",
            f.reason
        );

        let mut s = spec();
        s.hyperparameters = (0..95).map(|i| kv(&format!("h{i}"), "1")).collect();
        // 95 MLGW_HP_* and the other seven make 102 variables.
        let f = refused(&s);
        assert_eq!(f.field, "env");

        let mut s = spec();
        s.hyperparameters.push(kv("epochs", "4"));
        assert_eq!(refused(&s).field, "hyperparameters.epochs");

        let mut s = spec();
        s.hyperparameters.push(kv("long", &"v".repeat(600)));
        let f = refused(&s);
        assert_eq!(f.field, "hyperparameters");
        assert!(f.reason.contains("MLGW_HP_LONG"), "{}", f.reason);
    }

    #[test]
    fn a_backend_name_sagemaker_refuses_is_the_gateways_fault() {
        let mut c = ctx();
        c.backend_name = format!("mlgw-{}", "x".repeat(60));
        assert!(matches!(
            request(&c, &spec(), &settings()),
            Err(BackendError::Internal(_))
        ));
    }

    fn job(status: &str, secondary: &str) -> TrainingJob {
        TrainingJob {
            name: "mlgw-j0193ab".into(),
            arn: "arn:aws:sagemaker:eu-west-1:1:training-job/mlgw-j0193ab".into(),
            status: status.into(),
            secondary_status: secondary.into(),
            failure_reason: None,
            model_artifacts: None,
            role_arn: "arn:aws:iam::1:role/r".into(),
            created_ms: 1,
            ended_ms: None,
        }
    }

    #[test]
    fn status_table() {
        for (word, secondary, state, raw) in [
            ("InProgress", "Starting", JobState::Running, "Starting"),
            ("InProgress", "Training", JobState::Running, "Training"),
            ("Stopping", "Stopping", JobState::Running, "Stopping"),
            ("Completed", "Completed", JobState::Succeeded, "Completed"),
            ("Stopped", "Stopped", JobState::Cancelled, "Stopped"),
            (
                "Failed",
                "Failed",
                JobState::Failed("the training job failed".into()),
                "Failed",
            ),
            // Unknown words stay running, with the word kept.
            ("Paused", "", JobState::Running, "Paused"),
            (
                "InProgress",
                "Hibernating",
                JobState::Running,
                "Hibernating",
            ),
        ] {
            let s = status(&job(word, secondary));
            assert_eq!(
                (s.state, s.raw_state.as_str()),
                (state, raw),
                "{word}/{secondary}"
            );
        }
    }

    #[test]
    fn failures_and_outputs() {
        let mut j = job("Failed", "Failed");
        j.failure_reason = Some("AlgorithmError: exit 3".into());
        let s = status(&j);
        assert_eq!(s.state, JobState::Failed("AlgorithmError: exit 3".into()));
        assert_eq!(s.message.as_deref(), Some("AlgorithmError: exit 3"));

        let mut j = job("Completed", "Completed");
        j.model_artifacts = Some("s3://out/jobs/mlgw-j0193ab/output/model.tar.gz".into());
        let s = status(&j);
        assert_eq!(
            s.output_uri.as_deref(),
            Some("s3://out/jobs/mlgw-j0193ab/output/model.tar.gz")
        );
        assert_eq!(s.message, None);
        assert!(has_ended(&j));
        assert!(!has_ended(&job("Stopping", "Stopping")));
    }

    fn events(n: usize, cursor: &str) -> LogEvents {
        LogEvents {
            events: (0..n)
                .map(|i| LogEvent {
                    timestamp_ms: 1000 + i as u64,
                    log_stream: format!("mlgw-j0193ab/algo-{}-1700000000", i % 2 + 1),
                    message: format!("line {i}\n"),
                })
                .collect(),
            next_cursor: cursor.into(),
        }
    }

    #[test]
    fn log_pages_pass_the_cursor_through() {
        let p = log_page("mlgw-j0193ab", events(3, "v1:1002:abcd"), false);
        assert_eq!(p.next_cursor, "v1:1002:abcd");
        assert_eq!(p.lines.len(), 3);
        assert_eq!(p.lines[0].source, "algo-1-1700000000");
        assert_eq!(p.lines[1].source, "algo-2-1700000000");
        assert_eq!(p.lines[0].text, "line 0");
        assert_eq!(p.lines[2].timestamp_ms, 1002);
        assert!(!p.complete, "a running job's log goes on");

        // Ended, but any page may have more behind it (the host cuts pages by size too):
        // complete only once a read after the end finds nothing new.
        assert!(!log_page("mlgw-j0193ab", events(1, "c"), true).complete);
        let last = log_page("mlgw-j0193ab", events(0, "c"), true);
        assert!(last.complete);
        assert_eq!(last.next_cursor, "c");
        assert!(!log_page("mlgw-j0193ab", events(0, "c"), false).complete);
    }

    #[test]
    fn job_refs_round_trip() {
        let d = JobData {
            job: "mlgw-j0193ab".into(),
        };
        let r = d.to_ref("arn:x");
        assert_eq!(r.name, "arn:x");
        assert_eq!(JobData::from_ref(&r).unwrap(), d);
        assert_eq!(d.to_ref("").name, "mlgw-j0193ab");
        assert!(matches!(
            JobData::from_ref(&BackendRef {
                name: "x".into(),
                data: "{}".into()
            }),
            Err(BackendError::Internal(_))
        ));
    }
}
