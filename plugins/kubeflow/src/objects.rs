//! Spec → Kubernetes object: a PyTorchJob, a TrainJob or a batch Job, chosen by the target's
//! settings. Pure, so every mapping is unit-tested natively; `lib.rs` only adds the presigned
//! code URL and applies the result.

use mlgw_plugin_sdk::job_env::{env_suffix, hyperparameters_json, is_valid_env_name};
use mlgw_plugin_sdk::{BackendError, CallContext, TrainingSpec, invalid};
use serde_json::{Map, Value, json};

use crate::settings::{Kind, RestartPolicy, Settings, is_label_value};

pub const LABEL_JOB_ID: &str = "mlgw.dev/job-id";
pub const LABEL_TENANT: &str = "mlgw.dev/tenant";
pub const LABEL_TARGET: &str = "mlgw.dev/target";
pub const LABEL_QUEUE: &str = "kueue.x-k8s.io/queue-name";

/// The emptyDir the init container fills and the main container runs in.
pub const WORK_VOLUME: &str = "mlgw-work";
pub const WORK_DIR: &str = "/mlgw";
pub const CODE_DIR: &str = "/mlgw/code";
pub const HYPERPARAMETERS_FILE: &str = "/mlgw/hyperparameters.json";
/// Where a job without an output URI writes (lost with the pod; the job says so nowhere else).
pub const LOCAL_OUTPUT_DIR: &str = "/mlgw/output";

/// Run by the init container with `sh -c`. It needs no credentials: the code URL is presigned.
/// The values come from the environment, so nothing from the spec is ever parsed by the shell.
pub const INIT_SCRIPT: &str = r#"set -eu
mkdir -p /mlgw/code /mlgw/output
printf '%s' "$MLGW_HYPERPARAMETERS_JSON" > /mlgw/hyperparameters.json
if [ -n "${MLGW_CODE_URL:-}" ]; then
  wget -q -O /mlgw/code.tar.gz "$MLGW_CODE_URL"
  tar -xzf /mlgw/code.tar.gz -C /mlgw/code
  rm -f /mlgw/code.tar.gz
fi"#;

/// The image the job runs: the spec's, else the settings' for its framework, else the
/// settings' default.
pub fn image_of(spec: &TrainingSpec, s: &Settings) -> Result<String, BackendError> {
    if let Some(i) = spec.image.as_deref().filter(|i| !i.is_empty()) {
        return Ok(i.to_string());
    }
    if let Some(i) = spec.framework.as_deref().and_then(|f| s.images.get(f)) {
        return Ok(i.clone());
    }
    s.image.clone().ok_or_else(|| {
        let framework = spec.framework.as_deref().unwrap_or("");
        invalid(
            "image",
            format!(
                "this target needs an image: the spec names none and the target's settings have no image{}",
                if framework.is_empty() {
                    String::new()
                } else {
                    format!(" for framework {framework:?}")
                }
            ),
        )
    })
}

fn nodes(spec: &TrainingSpec) -> u32 {
    spec.resources.nodes.max(1)
}

/// What the spec asks that this target cannot do, before anything is created.
pub fn validate(spec: &TrainingSpec, s: &Settings) -> Result<(), BackendError> {
    match spec.command.first() {
        None => return Err(invalid("command", "must not be empty")),
        Some(p) if p.is_empty() => {
            return Err(invalid(
                "command",
                "the program (first element) must not be empty",
            ));
        }
        Some(_) => {}
    }
    image_of(spec, s)?;
    for kv in &spec.env {
        if !is_valid_env_name(&kv.key) {
            return Err(invalid(
                format!("env.{}", kv.key),
                "not a valid environment variable name (letters, digits, _; not starting with a digit)",
            ));
        }
    }
    for kv in &spec.hyperparameters {
        if kv.key.is_empty() {
            return Err(invalid(
                "hyperparameters",
                "a hyperparameter has an empty name",
            ));
        }
    }
    for (i, input) in spec.inputs.iter().enumerate() {
        if input.name.is_empty() {
            return Err(invalid(format!("inputs.{i}.name"), "must not be empty"));
        }
    }
    if s.kind == Kind::Job && nodes(spec) > 1 {
        return Err(invalid(
            "resources.nodes",
            format!(
                "this target runs batch Jobs, one pod each; {} nodes need kind = \"pytorchjob\" or \"trainjob\"",
                nodes(spec)
            ),
        ));
    }
    gpu_placement(spec, s)?;
    if let Some(code) = &spec.code_uri
        && !code.is_empty()
        && !code.starts_with("s3://")
    {
        return Err(invalid(
            "code_uri",
            "pods fetch code from an object store: the gateway needs [artifacts] store = \"s3\"",
        ));
    }
    Ok(())
}

/// Node selector and tolerations for the GPU type the spec asks for.
fn gpu_placement(spec: &TrainingSpec, s: &Settings) -> Result<(Value, Value), BackendError> {
    let r = &spec.resources;
    let named = r.gpu_type.as_deref().filter(|t| !t.is_empty());
    let entry = match named {
        Some(t) => Some(s.gpu_types.get(t).ok_or_else(|| {
            let known: Vec<&str> = s.gpu_types.keys().map(String::as_str).collect();
            invalid(
                "resources.gpu_type",
                format!(
                    "{t:?} is not a GPU type of this target (it has: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })?),
        None if r.gpus > 0 => s.gpu_types.get("default"),
        None => None,
    };
    if named.is_some() && r.gpus == 0 {
        return Err(invalid(
            "resources.gpus",
            "a GPU type is named but no GPUs are asked for",
        ));
    }
    let Some(e) = entry else {
        return Ok((Value::Null, Value::Null));
    };
    let selector = if e.node_selector.is_empty() {
        Value::Null
    } else {
        json!(e.node_selector)
    };
    let tolerations = if e.tolerations.is_empty() {
        Value::Null
    } else {
        json!(e.tolerations)
    };
    Ok((selector, tolerations))
}

/// The labels every object and pod of the job carries. Values Kubernetes would refuse as
/// labels (the gateway's ids always fit) are left to the annotations.
pub fn labels(ctx: &CallContext, s: &Settings, with_queue: bool) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in [
        (LABEL_JOB_ID, &ctx.resource_id),
        (LABEL_TENANT, &ctx.tenant),
        (LABEL_TARGET, &ctx.target),
    ] {
        if is_label_value(v) {
            m.insert(k.into(), json!(v));
        }
    }
    if with_queue && let Some(q) = &s.queue {
        m.insert(LABEL_QUEUE.into(), json!(q));
    }
    m
}

fn annotations(ctx: &CallContext) -> Value {
    json!({
        LABEL_JOB_ID: ctx.resource_id,
        LABEL_TENANT: ctx.tenant,
        LABEL_TARGET: ctx.target,
    })
}

/// The job's environment: spec.env first, then what the gateway sets (which wins, so the
/// output location is the one the gateway reports).
pub fn env(
    ctx: &CallContext,
    spec: &TrainingSpec,
    output: Option<&str>,
    has_code: bool,
) -> Vec<Value> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: String, v: String| match env.iter_mut().find(|(n, _)| *n == k) {
        Some(kv) => kv.1 = v,
        None => env.push((k, v)),
    };
    for kv in &spec.env {
        set(kv.key.clone(), kv.value.clone());
    }
    let out = output.unwrap_or(LOCAL_OUTPUT_DIR);
    set("MLGW_JOB_ID".into(), ctx.resource_id.clone());
    set("MLGW_OUTPUT_DIR".into(), out.into());
    set("MLGW_HYPERPARAMETERS".into(), HYPERPARAMETERS_FILE.into());
    for kv in &spec.hyperparameters {
        set(format!("MLGW_HP_{}", env_suffix(&kv.key)), kv.value.clone());
    }
    for input in &spec.inputs {
        set(
            format!("MLGW_INPUT_{}", env_suffix(&input.name)),
            input.uri.clone(),
        );
        set(
            format!("SM_CHANNEL_{}", env_suffix(&input.name)),
            input.uri.clone(),
        );
    }
    if has_code {
        set("MLGW_CODE_DIR".into(), CODE_DIR.into());
    }
    set("SM_MODEL_DIR".into(), out.into());
    set("SM_HPS".into(), hyperparameters_json(spec));
    env.into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect()
}

fn init_env(spec: &TrainingSpec, code_url: Option<&str>) -> Value {
    let mut env =
        vec![json!({"name": "MLGW_HYPERPARAMETERS_JSON", "value": hyperparameters_json(spec)})];
    if let Some(u) = code_url {
        env.push(json!({"name": "MLGW_CODE_URL", "value": u}));
    }
    env.push(json!({"name": "MLGW_INIT_SCRIPT", "value": INIT_SCRIPT}));
    Value::Array(env)
}

fn resources(spec: &TrainingSpec, s: &Settings) -> Value {
    mlgw_plugin_sdk::kube_objects::container_resources(&spec.resources, &s.gpu_resource)
}

fn volume_mount() -> Value {
    json!([{"name": WORK_VOLUME, "mountPath": WORK_DIR}])
}

/// Everything a pod template of the job needs: what runs, where, with what.
pub struct Parts {
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<Value>,
    pub init_env: Value,
    pub resources: Value,
    pub node_selector: Value,
    pub tolerations: Value,
    pub has_code: bool,
}

pub fn parts(
    ctx: &CallContext,
    spec: &TrainingSpec,
    s: &Settings,
    output: Option<&str>,
    code_url: Option<&str>,
) -> Result<Parts, BackendError> {
    let (node_selector, tolerations) = gpu_placement(spec, s)?;
    Ok(Parts {
        image: image_of(spec, s)?,
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: env(ctx, spec, output, code_url.is_some()),
        init_env: init_env(spec, code_url),
        resources: resources(spec, s),
        node_selector,
        tolerations,
        has_code: code_url.is_some(),
    })
}

/// Drops nulls and empty lists, so the applied object holds only what was said (server-side
/// apply would otherwise own empty fields). Empty objects stay: `emptyDir: {}` means something.
fn prune(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, prune(v)))
                .filter(|(_, v)| match v {
                    Value::Null => false,
                    Value::Array(a) => !a.is_empty(),
                    _ => true,
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(prune).collect()),
        other => other,
    }
}

/// `ours` merged into `base`: objects merge key by key, lists are appended to, and scalars of
/// `ours` win. The settings' `pod_template` is the base, so the plugin's values always hold.
pub fn merge(base: Value, ours: Value) -> Value {
    match (base, ours) {
        (Value::Object(mut b), Value::Object(o)) => {
            for (k, v) in o {
                let merged = match b.remove(&k) {
                    Some(bv) => merge(bv, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Object(b)
        }
        (Value::Array(mut b), Value::Array(o)) => {
            b.extend(o);
            Value::Array(b)
        }
        (b, Value::Null) => b,
        (_, o) => o,
    }
}

fn pod_template(ctx: &CallContext, s: &Settings, p: &Parts, restart: Option<&str>) -> Value {
    let mut pod_labels = labels(ctx, s, false);
    for (k, v) in &s.pod_labels {
        pod_labels.entry(k.clone()).or_insert(json!(v));
    }
    let mut pod_annotations = annotations(ctx);
    for (k, v) in &s.pod_annotations {
        pod_annotations[k] = json!(v);
    }
    let main = json!({
        "name": s.kind.main_container(),
        "image": p.image,
        "command": p.command,
        "args": p.args,
        "env": p.env,
        "resources": p.resources,
        "volumeMounts": volume_mount(),
        "workingDir": if p.has_code { json!(CODE_DIR) } else { Value::Null },
    });
    let init = json!({
        "name": s.init_container,
        "image": s.init_image,
        "command": ["sh", "-c", "eval \"$MLGW_INIT_SCRIPT\""],
        "env": p.init_env,
        "volumeMounts": volume_mount(),
    });
    let ours = json!({
        "metadata": {"labels": pod_labels, "annotations": pod_annotations},
        "spec": {
            "restartPolicy": restart,
            "serviceAccountName": s.service_account,
            "nodeSelector": p.node_selector,
            "tolerations": p.tolerations,
            "initContainers": [init],
            "containers": [main],
            "volumes": [{"name": WORK_VOLUME, "emptyDir": {}}],
        }
    });
    let base = s
        .pod_template
        .clone()
        .map(Value::Object)
        .unwrap_or(Value::Null);
    merge(base, prune(ours))
}

fn metadata(ctx: &CallContext, s: &Settings) -> Value {
    json!({
        "name": ctx.backend_name,
        "namespace": if s.namespace.is_empty() { Value::Null } else { json!(s.namespace) },
        "labels": labels(ctx, s, true),
        "annotations": annotations(ctx),
    })
}

fn restart_word(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::Never => "Never",
        RestartPolicy::OnFailure => "OnFailure",
        RestartPolicy::ExitCode => "ExitCode",
    }
}

/// The object to apply for the job.
pub fn build(
    ctx: &CallContext,
    spec: &TrainingSpec,
    s: &Settings,
    output: Option<&str>,
    code_url: Option<&str>,
) -> Result<Value, BackendError> {
    validate(spec, s)?;
    let p = parts(ctx, spec, s, output, code_url)?;
    let deadline = spec.max_runtime_seconds.filter(|d| *d > 0);
    let obj = match s.kind {
        Kind::PyTorchJob => {
            // The operator sets each pod's restartPolicy from its replica spec.
            let template = pod_template(ctx, s, &p, None);
            let replica = |n: u32| {
                json!({
                    "replicas": n,
                    "restartPolicy": restart_word(s.restart_policy),
                    "template": template,
                })
            };
            let mut replicas = json!({"Master": replica(1)});
            if nodes(spec) > 1 {
                replicas["Worker"] = replica(nodes(spec) - 1);
            }
            json!({
                "apiVersion": s.kind.api_version(),
                "kind": s.kind.name(),
                "metadata": metadata(ctx, s),
                "spec": {
                    "runPolicy": {
                        "cleanPodPolicy": format!("{:?}", s.clean_pod_policy),
                        "backoffLimit": s.backoff_limit,
                        "activeDeadlineSeconds": deadline,
                        "ttlSecondsAfterFinished": s.ttl_seconds_after_finished,
                    },
                    "pytorchReplicaSpecs": replicas,
                }
            })
        }
        Kind::Job => json!({
            "apiVersion": s.kind.api_version(),
            "kind": s.kind.name(),
            "metadata": metadata(ctx, s),
            "spec": {
                "backoffLimit": s.backoff_limit.unwrap_or(0),
                "activeDeadlineSeconds": deadline,
                "ttlSecondsAfterFinished": s.ttl_seconds_after_finished,
                "template": pod_template(ctx, s, &p, Some(restart_word(s.restart_policy))),
            }
        }),
        Kind::TrainJob => trainjob(ctx, spec, s, &p),
    };
    Ok(prune(obj))
}

/// A TrainJob sets only what its runtime leaves open: the trainer's image, command, env and
/// resources, and per-pod overrides (placement, volumes, mounts, the env of the runtime's
/// init container named in the settings, which must run `sh -c "eval \"$MLGW_INIT_SCRIPT\""`).
fn trainjob(ctx: &CallContext, spec: &TrainingSpec, s: &Settings, p: &Parts) -> Value {
    let r = s.runtime_ref.as_ref();
    let mut command: Vec<String> = spec.command.clone();
    let mut args = spec.args.clone();
    if p.has_code {
        // A TrainJob cannot set the working directory; a shell changes into the code first.
        let mut all = command;
        all.append(&mut args);
        command = vec![
            "sh".into(),
            "-c".into(),
            format!("cd {CODE_DIR} && exec \"$0\" \"$@\""),
        ];
        args = all;
    }
    let mut pod_labels = labels(ctx, s, false);
    for (k, v) in &s.pod_labels {
        pod_labels.entry(k.clone()).or_insert(json!(v));
    }
    json!({
        "apiVersion": s.kind.api_version(),
        "kind": s.kind.name(),
        "metadata": metadata(ctx, s),
        "spec": {
            "runtimeRef": r.map(|r| json!({"name": r.name, "kind": r.kind, "apiGroup": r.api_group})),
            "labels": pod_labels,
            "trainer": {
                "image": p.image,
                "command": command,
                "args": args,
                "env": p.env,
                "numNodes": nodes(spec),
                "resourcesPerNode": p.resources,
            },
            "podTemplateOverrides": [{
                "targetJobs": [{"name": s.kind.main_container()}],
                "metadata": {"annotations": s.pod_annotations},
                "spec": {
                    "serviceAccountName": s.service_account,
                    "nodeSelector": p.node_selector,
                    "tolerations": p.tolerations,
                    "volumes": [{"name": WORK_VOLUME, "emptyDir": {}}],
                    "initContainers": [{
                        "name": s.init_container,
                        "env": p.init_env,
                        "volumeMounts": volume_mount(),
                    }],
                    "containers": [{
                        "name": s.kind.main_container(),
                        "volumeMounts": volume_mount(),
                    }],
                }
            }],
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlgw_plugin_sdk::{InputChannel, KeyValue, Resources};

    pub fn ctx() -> CallContext {
        CallContext {
            tenant: "team-a".into(),
            target: "gpu".into(),
            resource_id: "j-1234".into(),
            backend_name: "mlgw-j1234".into(),
            settings: String::new(),
            revision: 0,
        }
    }

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: v.into(),
        }
    }

    pub fn spec() -> TrainingSpec {
        TrainingSpec {
            name: "t".into(),
            image: None,
            command: vec!["python".into(), "train.py".into()],
            args: vec!["--epochs".into(), "3".into()],
            env: vec![kv("USER_VAR", "1"), kv("MLGW_OUTPUT_DIR", "/mine")],
            hyperparameters: vec![kv("learning-rate", "0.1")],
            inputs: vec![InputChannel {
                name: "train".into(),
                uri: "s3://b/train/".into(),
            }],
            output_uri: None,
            resources: Resources {
                cpu: Some("4".into()),
                memory: Some("16Gi".into()),
                gpus: 2,
                gpu_type: None,
                instance_type: None,
                nodes: 2,
            },
            max_runtime_seconds: Some(3600),
            framework: Some("pytorch".into()),
            code_uri: None,
        }
    }

    fn settings(json: &str) -> Settings {
        let mut s: Settings = serde_json::from_str(json).unwrap();
        s.check().unwrap();
        if s.image.is_none() {
            s.image = Some("python:3.12".into());
        }
        s
    }

    fn env_of(c: &Value) -> Vec<(String, String)> {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["value"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_pytorchjob_has_a_master_and_nodes_minus_one_workers() {
        let s = settings(
            r#"{"images": {"pytorch": "pytorch/pytorch:2.5.1"},
                "gpu_types": {"default": {"node_selector": {"nvidia.com/gpu.present": "true"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}},
                "queue": "team-a-gpu", "backoff_limit": 2, "clean_pod_policy": "Running",
                "pod_annotations": {"mlgw.dev/fake-duration": "5s"}}"#,
        );
        let mut sp = spec();
        sp.output_uri = Some("s3://b/out/".into());
        let o = build(&ctx(), &sp, &s, sp.output_uri.as_deref(), None).unwrap();
        assert_eq!(o["apiVersion"], "kubeflow.org/v1");
        assert_eq!(o["kind"], "PyTorchJob");
        assert_eq!(o["metadata"]["name"], "mlgw-j1234");
        assert!(o["metadata"].get("namespace").is_none());
        let labels = &o["metadata"]["labels"];
        assert_eq!(labels[LABEL_JOB_ID], "j-1234");
        assert_eq!(labels[LABEL_TENANT], "team-a");
        assert_eq!(labels[LABEL_TARGET], "gpu");
        assert_eq!(labels[LABEL_QUEUE], "team-a-gpu");
        let rp = &o["spec"]["runPolicy"];
        assert_eq!(
            rp,
            &json!({"cleanPodPolicy": "Running", "backoffLimit": 2, "activeDeadlineSeconds": 3600})
        );
        let replicas = &o["spec"]["pytorchReplicaSpecs"];
        assert_eq!(replicas["Master"]["replicas"], 1);
        assert_eq!(replicas["Worker"]["replicas"], 1);
        assert_eq!(replicas["Master"]["restartPolicy"], "Never");
        let pod = &replicas["Worker"]["template"];
        assert_eq!(pod["metadata"]["labels"][LABEL_JOB_ID], "j-1234");
        assert!(pod["metadata"]["labels"].get(LABEL_QUEUE).is_none());
        assert_eq!(
            pod["metadata"]["annotations"]["mlgw.dev/fake-duration"],
            "5s"
        );
        assert_eq!(
            pod["spec"]["nodeSelector"],
            json!({"nvidia.com/gpu.present": "true"})
        );
        assert_eq!(pod["spec"]["tolerations"][0]["key"], "nvidia.com/gpu");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["name"], "pytorch");
        assert_eq!(c["image"], "pytorch/pytorch:2.5.1");
        assert_eq!(c["command"], json!(["python", "train.py"]));
        assert_eq!(c["args"], json!(["--epochs", "3"]));
    }

    #[test]
    fn resources_env_and_command() {
        let s = settings("{}");
        let mut sp = spec();
        sp.output_uri = Some("s3://b/out/".into());
        let o = build(&ctx(), &sp, &s, sp.output_uri.as_deref(), None).unwrap();
        let c = &o["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "python:3.12", "no framework image: the default");
        assert_eq!(
            c["resources"],
            json!({"requests": {"cpu": "4", "memory": "16Gi"},
                   "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"}})
        );
        let env = env_of(c);
        assert_eq!(get(&env, "USER_VAR"), Some("1"));
        assert_eq!(
            get(&env, "MLGW_OUTPUT_DIR"),
            Some("s3://b/out/"),
            "the gateway's wins"
        );
        assert_eq!(get(&env, "MLGW_JOB_ID"), Some("j-1234"));
        assert_eq!(
            get(&env, "MLGW_HYPERPARAMETERS"),
            Some(HYPERPARAMETERS_FILE)
        );
        assert_eq!(get(&env, "MLGW_HP_LEARNING_RATE"), Some("0.1"));
        assert_eq!(get(&env, "MLGW_INPUT_TRAIN"), Some("s3://b/train/"));
        assert_eq!(get(&env, "SM_HPS"), Some(r#"{"learning-rate":"0.1"}"#));
        assert_eq!(get(&env, "MLGW_CODE_DIR"), None);
        assert_eq!(
            env.iter().filter(|(n, _)| n == "MLGW_OUTPUT_DIR").count(),
            1
        );
        assert!(c.get("workingDir").is_none());
        assert_eq!(
            o["spec"]["runPolicy"],
            json!({"cleanPodPolicy": "None", "activeDeadlineSeconds": 3600}),
            "no backoff limit unless the settings give one"
        );
        // No nodes asked: one Master, no Worker.
        let mut one = spec();
        one.resources.nodes = 0;
        let o = build(&ctx(), &one, &s, None, None).unwrap();
        assert!(o["spec"]["pytorchReplicaSpecs"].get("Worker").is_none());
        let c = &o["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0];
        assert_eq!(get(&env_of(c), "MLGW_OUTPUT_DIR"), Some(LOCAL_OUTPUT_DIR));
    }

    #[test]
    fn the_init_container_fetches_code_and_writes_hyperparameters() {
        let s = settings(r#"{"init_image": "curlimages/curl:8.10.1"}"#);
        let mut sp = spec();
        sp.code_uri = Some("s3://b/mlgw/team-a/sha256/ab".into());
        let url = "http://s3.local/b/x?X-Amz-Signature=1";
        let o = build(&ctx(), &sp, &s, None, Some(url)).unwrap();
        let pod = &o["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"];
        let init = &pod["initContainers"][0];
        assert_eq!(init["name"], "mlgw-init");
        assert_eq!(init["image"], "curlimages/curl:8.10.1");
        let ienv = env_of(init);
        assert_eq!(get(&ienv, "MLGW_CODE_URL"), Some(url));
        assert_eq!(
            get(&ienv, "MLGW_HYPERPARAMETERS_JSON"),
            Some(r#"{"learning-rate":"0.1"}"#)
        );
        assert_eq!(get(&ienv, "MLGW_INIT_SCRIPT"), Some(INIT_SCRIPT));
        assert_eq!(init["volumeMounts"][0]["mountPath"], WORK_DIR);
        let c = &pod["containers"][0];
        assert_eq!(c["workingDir"], CODE_DIR);
        assert_eq!(get(&env_of(c), "MLGW_CODE_DIR"), Some(CODE_DIR));
        assert_eq!(
            pod["volumes"],
            json!([{"name": WORK_VOLUME, "emptyDir": {}}])
        );
        assert!(pod.get("restartPolicy").is_none(), "the operator's to set");
    }

    #[test]
    fn the_init_script_runs_in_a_real_shell() {
        // The script as the init container runs it, on this machine's sh: hyperparameters land
        // in the file the job's env names, and no code URL means no fetch.
        let dir = std::env::temp_dir().join(format!("mlgw-kf-init-{}", std::process::id()));
        let script = INIT_SCRIPT.replace("/mlgw", dir.to_str().unwrap());
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("eval \"$MLGW_INIT_SCRIPT\"")
            .env("MLGW_INIT_SCRIPT", &script)
            .env("MLGW_HYPERPARAMETERS_JSON", r#"{"a":"it's $HOME"}"#)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("hyperparameters.json")).unwrap(),
            r#"{"a":"it's $HOME"}"#
        );
        assert!(dir.join("code").is_dir() && dir.join("output").is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_batch_job_for_single_node_work() {
        let s = settings(
            r#"{"kind": "job", "restart_policy": "OnFailure", "ttl_seconds_after_finished": 600}"#,
        );
        let mut sp = spec();
        sp.resources.nodes = 1;
        let o = build(&ctx(), &sp, &s, None, None).unwrap();
        assert_eq!(o["apiVersion"], "batch/v1");
        assert_eq!(o["kind"], "Job");
        assert_eq!(o["spec"]["backoffLimit"], 0);
        assert_eq!(o["spec"]["activeDeadlineSeconds"], 3600);
        assert_eq!(o["spec"]["ttlSecondsAfterFinished"], 600);
        let pod = &o["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "OnFailure");
        assert_eq!(pod["containers"][0]["name"], "train");
        // Several nodes are not a batch Job's.
        let err = build(&ctx(), &spec(), &s, None, None).unwrap_err();
        assert!(matches!(err, BackendError::InvalidSpec(f) if f.field == "resources.nodes"));
    }

    #[test]
    fn a_trainjob_on_its_runtime() {
        let s = settings(
            r#"{"kind": "trainjob", "runtime_ref": {"name": "torch-distributed"},
                "gpu_types": {"a100": {"node_selector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}}}}"#,
        );
        let mut sp = spec();
        sp.resources.gpu_type = Some("a100".into());
        sp.code_uri = Some("s3://b/code".into());
        let o = build(&ctx(), &sp, &s, None, Some("http://u")).unwrap();
        assert_eq!(o["apiVersion"], "trainer.kubeflow.org/v1alpha1");
        assert_eq!(
            o["spec"]["runtimeRef"],
            json!({"name": "torch-distributed", "kind": "ClusterTrainingRuntime", "apiGroup": "trainer.kubeflow.org"})
        );
        let t = &o["spec"]["trainer"];
        assert_eq!(t["numNodes"], 2);
        assert_eq!(t["resourcesPerNode"]["limits"]["nvidia.com/gpu"], "2");
        assert_eq!(t["command"][0], "sh");
        assert_eq!(t["args"], json!(["python", "train.py", "--epochs", "3"]));
        let ov = &o["spec"]["podTemplateOverrides"][0];
        assert_eq!(ov["targetJobs"], json!([{"name": "node"}]));
        assert_eq!(
            ov["spec"]["nodeSelector"]["nvidia.com/gpu.product"],
            "NVIDIA-A100-SXM4-40GB"
        );
        assert_eq!(ov["spec"]["initContainers"][0]["name"], "mlgw-init");
        assert_eq!(o["spec"]["labels"][LABEL_JOB_ID], "j-1234");
    }

    #[test]
    fn what_the_target_cannot_run_names_the_field() {
        let s = settings(r#"{"gpu_types": {"a100": {}}}"#);
        let field = |sp: TrainingSpec, s: &Settings| match build(&ctx(), &sp, s, None, None) {
            Err(BackendError::InvalidSpec(f)) => (f.field, f.reason),
            other => panic!("{other:?}"),
        };
        let mut sp = spec();
        sp.resources.gpu_type = Some("h100".into());
        let (f, why) = field(sp, &s);
        assert_eq!(f, "resources.gpu_type");
        assert!(why.contains("it has: a100"), "{why}");
        let mut sp = spec();
        sp.command.clear();
        assert_eq!(field(sp, &s).0, "command");
        let mut sp = spec();
        sp.env.push(kv("1BAD", "x"));
        assert_eq!(field(sp, &s).0, "env.1BAD");
        let mut sp = spec();
        sp.code_uri = Some("file:///tmp/code".into());
        assert_eq!(field(sp, &s).0, "code_uri");
        let none: Settings = serde_json::from_str("{}").unwrap();
        let mut sp = spec();
        sp.framework = Some("xgboost".into());
        let (f, why) = field(sp, &none);
        assert_eq!(f, "image");
        assert!(why.contains("\"xgboost\""), "{why}");
    }

    #[test]
    fn the_settings_pod_template_is_merged_under_ours() {
        let s = settings(
            r#"{"kind": "job", "pod_template": {"spec": {"priorityClassName": "high",
                 "restartPolicy": "Always",
                 "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}]}}}"#,
        );
        let mut sp = spec();
        sp.resources.nodes = 1;
        let o = build(&ctx(), &sp, &s, None, None).unwrap();
        let pod = &o["spec"]["template"]["spec"];
        assert_eq!(pod["priorityClassName"], "high");
        assert_eq!(pod["restartPolicy"], "Never", "the plugin's value wins");
        assert_eq!(pod["volumes"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn env_names() {
        assert_eq!(env_suffix("val.set-1"), "VAL_SET_1");
        assert!(is_valid_env_name("_A1"));
        assert!(!is_valid_env_name("A-B"));
    }
}
