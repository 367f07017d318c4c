//! Spec checks. Pure, so the same rules run in validate-* and again before submit/deploy.

use mlgw_plugin_sdk::{
    BackendError, EndpointSpec, TrainingSpec, invalid, strip_file_uri, unsupported,
};

use crate::env::is_valid_env_name;

/// Model formats the local target serves, with the MLServer implementation for each.
pub const MLSERVER_IMPLEMENTATIONS: &[(&str, &str)] = &[
    ("sklearn", "mlserver_sklearn.SKLearnModel"),
    ("xgboost", "mlserver_xgboost.XGBoostModel"),
    ("lightgbm", "mlserver_lightgbm.LightGBMModel"),
    ("mlflow", "mlserver_mlflow.MLflowRuntime"),
    ("huggingface", "mlserver_huggingface.HuggingFaceRuntime"),
];

pub fn training(spec: &TrainingSpec) -> Result<(), BackendError> {
    match spec.command.first() {
        None => return Err(invalid("command", "must not be empty")),
        Some(program) if program.is_empty() => {
            return Err(invalid(
                "command",
                "the program (first element) must not be empty",
            ));
        }
        Some(_) => {}
    }
    if spec.resources.gpus > 0 {
        return Err(invalid("resources.gpus", "the local target has no GPUs"));
    }
    if spec.resources.nodes > 1 {
        return Err(invalid(
            "resources.nodes",
            "the local target runs a job on one node",
        ));
    }
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
    let mut channels = std::collections::BTreeSet::new();
    for (i, input) in spec.inputs.iter().enumerate() {
        if input.name.is_empty() {
            return Err(invalid(format!("inputs.{i}.name"), "must not be empty"));
        }
        // Channels become environment variables, so names that only differ in case or
        // punctuation would silently overwrite each other.
        if !channels.insert(crate::env::env_suffix(&input.name)) {
            return Err(invalid(
                format!("inputs.{i}.name"),
                format!("{:?} clashes with another input channel's name", input.name),
            ));
        }
    }
    output_path(spec.output_uri.as_deref())?;
    if spec.max_runtime_seconds == Some(0) {
        return Err(invalid("max_runtime_seconds", "must be positive when set"));
    }
    Ok(())
}

/// The local directory a custom output-uri names, or None for the job's own output directory.
/// Only local paths work: nothing here uploads anywhere.
pub fn output_path(output_uri: Option<&str>) -> Result<Option<String>, BackendError> {
    let Some(uri) = output_uri.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let path = strip_file_uri(uri);
    if !path.starts_with('/') {
        return Err(invalid(
            "output_uri",
            "the local target writes outputs to local paths: use an absolute path or a file:// URI, or leave it empty",
        ));
    }
    Ok(Some(path.to_string()))
}

/// Checks an endpoint spec and answers the MLServer implementation to run it with.
pub fn endpoint(spec: &EndpointSpec) -> Result<String, BackendError> {
    if spec.canary_percent.is_some() {
        return Err(unsupported(
            "canary rollouts need a target with traffic splitting, e.g. KServe",
        ));
    }
    if spec.model_uri.is_empty() {
        return Err(invalid("model_uri", "must not be empty"));
    }
    if spec.resources.gpus > 0 {
        return Err(invalid("resources.gpus", "the local target has no GPUs"));
    }
    if spec.max_replicas > 1 {
        return Err(invalid("max_replicas", "the local target runs one replica"));
    }
    if spec.min_replicas > 1 {
        return Err(invalid("min_replicas", "the local target runs one replica"));
    }
    mlserver_implementation(&spec.model_format, spec.runtime.as_deref())
}

/// An explicit runtime wins, so operators can serve formats this table does not know.
pub fn mlserver_implementation(
    model_format: &str,
    runtime: Option<&str>,
) -> Result<String, BackendError> {
    if let Some(runtime) = runtime.filter(|r| !r.is_empty()) {
        return Ok(runtime.to_string());
    }
    let format = model_format.to_ascii_lowercase();
    MLSERVER_IMPLEMENTATIONS
        .iter()
        .find(|(f, _)| *f == format)
        .map(|(_, implementation)| implementation.to_string())
        .ok_or_else(|| {
            let supported: Vec<&str> = MLSERVER_IMPLEMENTATIONS.iter().map(|(f, _)| *f).collect();
            invalid(
                "model_format",
                format!(
                    "{model_format:?} is not served by the local target; supported: {} (or set runtime to an MLServer implementation)",
                    supported.join(", ")
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlgw_plugin_sdk::{FieldError, InputChannel, KeyValue, Resources};

    fn resources() -> Resources {
        Resources {
            cpu: None,
            memory: None,
            gpus: 0,
            gpu_type: None,
            instance_type: None,
            nodes: 1,
        }
    }

    fn training_spec() -> TrainingSpec {
        TrainingSpec {
            name: "t".into(),
            image: Some("ignored:latest".into()),
            command: vec!["python".into(), "train.py".into()],
            args: vec![],
            env: vec![KeyValue {
                key: "FOO_1".into(),
                value: "x".into(),
            }],
            hyperparameters: vec![KeyValue {
                key: "lr".into(),
                value: "0.1".into(),
            }],
            inputs: vec![InputChannel {
                name: "train".into(),
                uri: "file:///data".into(),
            }],
            output_uri: None,
            resources: resources(),
            max_runtime_seconds: None,
            framework: None,
            code_uri: None,
        }
    }

    fn endpoint_spec() -> EndpointSpec {
        EndpointSpec {
            name: "m".into(),
            model_uri: "file:///models/m".into(),
            model_format: "sklearn".into(),
            runtime: None,
            image: None,
            resources: resources(),
            min_replicas: 1,
            max_replicas: 1,
            canary_percent: None,
        }
    }

    fn field_of(r: Result<impl std::fmt::Debug, BackendError>) -> String {
        match r {
            Err(BackendError::InvalidSpec(FieldError { field, .. })) => field,
            other => panic!("expected invalid-spec, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_plain_training_spec_and_ignores_the_image() {
        training(&training_spec()).unwrap();
    }

    #[test]
    fn rejects_what_the_local_target_cannot_run() {
        let mut s = training_spec();
        s.command.clear();
        assert_eq!(field_of(training(&s)), "command");

        let mut s = training_spec();
        s.command = vec![String::new()];
        assert_eq!(field_of(training(&s)), "command");

        let mut s = training_spec();
        s.resources.gpus = 1;
        assert_eq!(field_of(training(&s)), "resources.gpus");

        let mut s = training_spec();
        s.resources.nodes = 2;
        assert_eq!(field_of(training(&s)), "resources.nodes");

        let mut s = training_spec();
        s.env.push(KeyValue {
            key: "1BAD".into(),
            value: String::new(),
        });
        assert_eq!(field_of(training(&s)), "env.1BAD");

        let mut s = training_spec();
        s.env.push(KeyValue {
            key: "A=B".into(),
            value: String::new(),
        });
        assert_eq!(field_of(training(&s)), "env.A=B");

        let mut s = training_spec();
        s.output_uri = Some("s3://bucket/out".into());
        assert_eq!(field_of(training(&s)), "output_uri");

        let mut s = training_spec();
        s.inputs.push(InputChannel {
            name: "TRAIN".into(),
            uri: "/x".into(),
        });
        assert_eq!(field_of(training(&s)), "inputs.1.name");

        let mut s = training_spec();
        s.max_runtime_seconds = Some(0);
        assert_eq!(field_of(training(&s)), "max_runtime_seconds");
    }

    #[test]
    fn zero_nodes_means_unset() {
        let mut s = training_spec();
        s.resources.nodes = 0;
        training(&s).unwrap();
    }

    #[test]
    fn local_output_paths() {
        assert_eq!(output_path(None).unwrap(), None);
        assert_eq!(output_path(Some("")).unwrap(), None);
        assert_eq!(
            output_path(Some("file:///out/x")).unwrap().as_deref(),
            Some("/out/x")
        );
        assert_eq!(
            output_path(Some("/out/x")).unwrap().as_deref(),
            Some("/out/x")
        );
        assert!(output_path(Some("out/x")).is_err());
    }

    #[test]
    fn maps_formats_to_mlserver_implementations() {
        assert_eq!(
            endpoint(&endpoint_spec()).unwrap(),
            "mlserver_sklearn.SKLearnModel"
        );
        assert_eq!(
            mlserver_implementation("XGBoost", None).unwrap(),
            "mlserver_xgboost.XGBoostModel"
        );
        assert_eq!(
            mlserver_implementation("onnx", Some("my_runtime.Onnx")).unwrap(),
            "my_runtime.Onnx"
        );
        match mlserver_implementation("onnx", None) {
            Err(BackendError::InvalidSpec(FieldError { field, reason })) => {
                assert_eq!(field, "model_format");
                assert!(reason.contains("sklearn, xgboost, lightgbm, mlflow, huggingface"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_endpoints_the_local_target_cannot_serve() {
        let mut s = endpoint_spec();
        s.model_uri.clear();
        assert_eq!(field_of(endpoint(&s)), "model_uri");

        let mut s = endpoint_spec();
        s.resources.gpus = 1;
        assert_eq!(field_of(endpoint(&s)), "resources.gpus");

        let mut s = endpoint_spec();
        s.max_replicas = 3;
        assert_eq!(field_of(endpoint(&s)), "max_replicas");

        let mut s = endpoint_spec();
        s.canary_percent = Some(10);
        assert!(matches!(endpoint(&s), Err(BackendError::Unsupported(m)) if m.contains("KServe")));
    }
}
