//! The environment a training process sees. The same script should run here and on SageMaker
//! unchanged, so it gets both the MLGW_* names and SageMaker's SM_* names.

pub use mlgw_plugin_sdk::job_env::{env_suffix, hyperparameters_json, is_valid_env_name};
use mlgw_plugin_sdk::{KeyValue, TrainingSpec, strip_file_uri};

/// Host paths the environment points at.
pub struct JobPaths<'a> {
    pub job_id: &'a str,
    pub output_dir: &'a str,
    pub hyperparameters_file: &'a str,
    /// Where each input channel is on this machine, by channel name (an input fetched from the
    /// artifact store is in the job's directory; a local one where its URI says).
    pub inputs: &'a [(String, String)],
    /// The unpacked code, when the job came with some.
    pub code_dir: Option<&'a str>,
}

/// spec.env first, then the generated variables; a generated name overrides a user-supplied
/// one, because the job's output location must be the one the gateway reports.
pub fn training_env(spec: &TrainingSpec, paths: &JobPaths) -> Vec<KeyValue> {
    let mut env = Env::default();
    for kv in &spec.env {
        env.set(&kv.key, &kv.value);
    }
    env.set("MLGW_JOB_ID", paths.job_id);
    env.set("MLGW_OUTPUT_DIR", paths.output_dir);
    env.set("MLGW_HYPERPARAMETERS", paths.hyperparameters_file);
    for kv in &spec.hyperparameters {
        env.set(&format!("MLGW_HP_{}", env_suffix(&kv.key)), &kv.value);
    }
    for input in &spec.inputs {
        let path = paths
            .inputs
            .iter()
            .find(|(name, _)| *name == input.name)
            .map(|(_, p)| p.as_str())
            .unwrap_or_else(|| strip_file_uri(&input.uri));
        env.set(&format!("MLGW_INPUT_{}", env_suffix(&input.name)), path);
        env.set(&format!("SM_CHANNEL_{}", env_suffix(&input.name)), path);
    }
    if let Some(code) = paths.code_dir {
        env.set("MLGW_CODE_DIR", code);
    }
    env.set("SM_MODEL_DIR", paths.output_dir);
    env.set("SM_OUTPUT_DATA_DIR", paths.output_dir);
    env.set("SM_HPS", &hyperparameters_json(spec));
    let channels: Vec<&str> = spec.inputs.iter().map(|i| i.name.as_str()).collect();
    env.set(
        "SM_CHANNELS",
        &serde_json::to_string(&channels).unwrap_or_default(),
    );
    env.0
}

/// An ordered variable list where setting a name again replaces its value in place.
#[derive(Default)]
struct Env(Vec<KeyValue>);

impl Env {
    fn set(&mut self, key: &str, value: &str) {
        match self.0.iter_mut().find(|kv| kv.key == key) {
            Some(kv) => kv.value = value.to_string(),
            None => self.0.push(KeyValue {
                key: key.to_string(),
                value: value.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlgw_plugin_sdk::{InputChannel, Resources};

    fn spec() -> TrainingSpec {
        TrainingSpec {
            name: "t".into(),
            image: None,
            command: vec!["python".into()],
            args: vec![],
            env: vec![
                KeyValue {
                    key: "USER_VAR".into(),
                    value: "1".into(),
                },
                KeyValue {
                    key: "MLGW_OUTPUT_DIR".into(),
                    value: "/elsewhere".into(),
                },
            ],
            hyperparameters: vec![
                KeyValue {
                    key: "learning-rate".into(),
                    value: "0.1".into(),
                },
                KeyValue {
                    key: "epochs".into(),
                    value: "3".into(),
                },
            ],
            inputs: vec![
                InputChannel {
                    name: "train".into(),
                    uri: "file:///data/train".into(),
                },
                InputChannel {
                    name: "val.set".into(),
                    uri: "s3://b/val".into(),
                },
            ],
            output_uri: None,
            resources: Resources {
                cpu: None,
                memory: None,
                gpus: 0,
                gpu_type: None,
                instance_type: None,
                nodes: 1,
            },
            max_runtime_seconds: None,
            framework: None,
            code_uri: None,
        }
    }

    fn get<'a>(env: &'a [KeyValue], key: &str) -> Option<&'a str> {
        env.iter()
            .find(|kv| kv.key == key)
            .map(|kv| kv.value.as_str())
    }

    #[test]
    fn builds_mlgw_and_sagemaker_variables() {
        let env = training_env(
            &spec(),
            &JobPaths {
                job_id: "job-1",
                output_dir: "/root/jobs/x/output",
                hyperparameters_file: "/root/jobs/x/hyperparameters.json",
                inputs: &[("val.set".into(), "/root/jobs/x/inputs/val.set".into())],
                code_dir: Some("/root/jobs/x/code"),
            },
        );
        assert_eq!(get(&env, "USER_VAR"), Some("1"));
        assert_eq!(get(&env, "MLGW_JOB_ID"), Some("job-1"));
        assert_eq!(get(&env, "MLGW_OUTPUT_DIR"), Some("/root/jobs/x/output"));
        assert_eq!(
            get(&env, "MLGW_HYPERPARAMETERS"),
            Some("/root/jobs/x/hyperparameters.json")
        );
        assert_eq!(get(&env, "MLGW_HP_LEARNING_RATE"), Some("0.1"));
        assert_eq!(get(&env, "MLGW_HP_EPOCHS"), Some("3"));
        assert_eq!(get(&env, "MLGW_INPUT_TRAIN"), Some("/data/train"));
        assert_eq!(get(&env, "SM_CHANNEL_TRAIN"), Some("/data/train"));
        // Fetched from the store: where it was placed, not the URI.
        assert_eq!(
            get(&env, "MLGW_INPUT_VAL_SET"),
            Some("/root/jobs/x/inputs/val.set")
        );
        assert_eq!(get(&env, "MLGW_CODE_DIR"), Some("/root/jobs/x/code"));
        assert_eq!(get(&env, "SM_MODEL_DIR"), Some("/root/jobs/x/output"));
        assert_eq!(get(&env, "SM_OUTPUT_DATA_DIR"), Some("/root/jobs/x/output"));
        assert_eq!(get(&env, "SM_CHANNELS"), Some(r#"["train","val.set"]"#));
        let hps: serde_json::Value = serde_json::from_str(get(&env, "SM_HPS").unwrap()).unwrap();
        assert_eq!(
            hps,
            serde_json::json!({"learning-rate": "0.1", "epochs": "3"})
        );
        // Overridden in place, not duplicated.
        assert_eq!(
            env.iter().filter(|kv| kv.key == "MLGW_OUTPUT_DIR").count(),
            1
        );
    }
}
