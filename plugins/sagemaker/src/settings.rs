//! The operator's `[targets.<name>.settings]` for a SageMaker target, typed and checked.
//!
//! ```toml
//! [targets.sagemaker.settings]
//! output_path = "s3://ml-bucket/mlgw/output"          # S3OutputPath when a job gives none
//! checkpoint_path = "s3://ml-bucket/mlgw/checkpoints" # optional: <path>/<job>/ per job
//! volume_size_gb = 30
//! max_runtime_seconds = 86400                         # when a job gives none
//! spot = true                                         # managed spot training
//! spot_max_wait_seconds = 172800                      # default: twice the job's max runtime
//! default_instance_type = "ml.m5.large"               # when a spec asks for no resources
//! training_images = { sklearn = "…/sagemaker-scikit-learn:1.2-1-cpu-py3" }
//! serving_images = { sklearn = "…", xgboost = { image = "…", environment = { K = "v" } } }
//! instance_types = [
//!   { instance_type = "ml.m5.large", vcpu = 2, memory_gib = 8 },
//!   { instance_type = "ml.g5.xlarge", vcpu = 4, memory_gib = 16, gpus = 1, gpu_type = "a10g" },
//! ]
//! ```
//!
//! Every key is optional. `instance_types` replaces the built-in table (below) as a whole, so
//! an operator's table is also the list of types users may ask for.

use std::collections::BTreeMap;

use mlgw_plugin_sdk::{BackendError, CallContext, internal, settings, settings_as};
use serde::Deserialize;

use crate::names;

/// SageMaker's own default for MaxRuntimeInSeconds.
pub const DEFAULT_MAX_RUNTIME_SECONDS: u32 = 24 * 60 * 60;
/// SageMaker stops any training job after 28 days.
pub const MAX_RUNTIME_LIMIT_SECONDS: u32 = 28 * 24 * 60 * 60;
pub const DEFAULT_VOLUME_SIZE_GB: u32 = 30;
pub const DEFAULT_INSTANCE_TYPE: &str = "ml.m5.large";
/// SageMaker's limits on a container image reference, a model's environment and its entries.
pub const MAX_IMAGE: usize = 255;
pub const MAX_MODEL_ENV_ENTRIES: usize = 100;
pub const MAX_MODEL_ENV_KEY: usize = 1024;
pub const MAX_MODEL_ENV_VALUE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Training images by framework (matched case-insensitively) for jobs that name no image.
    pub training_images: BTreeMap<String, String>,
    /// Serving images by model format or runtime, for endpoints that name no image.
    pub serving_images: BTreeMap<String, ServingImage>,
    pub instance_types: Vec<InstanceType>,
    pub default_instance_type: String,
    pub output_path: Option<String>,
    pub checkpoint_path: Option<String>,
    pub volume_size_gb: u32,
    pub max_runtime_seconds: u32,
    pub spot: bool,
    pub spot_max_wait_seconds: Option<u32>,
}

/// A serving image, alone or with the environment its model server needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    untagged,
    expecting = "an image reference, or a table with `image` and an optional `environment`"
)]
pub enum ServingImage {
    Image(String),
    Container(ServingContainer),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingContainer {
    pub image: String,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
}

impl ServingImage {
    pub fn image(&self) -> &str {
        match self {
            Self::Image(i) => i,
            Self::Container(c) => &c.image,
        }
    }

    pub fn environment(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            Self::Image(_) => None,
            Self::Container(c) => Some(&c.environment),
        }
    }
}

/// One row of the instance table: what a type offers, to choose one by a spec's resources.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceType {
    pub instance_type: String,
    pub vcpu: u32,
    pub memory_gib: f64,
    #[serde(default)]
    pub gpus: u32,
    /// e.g. "t4", "a10g", "a100"
    #[serde(default)]
    pub gpu_type: Option<String>,
}

/// The types most accounts have, from AWS's published specifications.
const BUILT_IN_INSTANCE_TYPES: &[(&str, u32, f64, u32, Option<&str>)] = &[
    ("ml.m5.large", 2, 8.0, 0, None),
    ("ml.m5.xlarge", 4, 16.0, 0, None),
    ("ml.m5.2xlarge", 8, 32.0, 0, None),
    ("ml.m5.4xlarge", 16, 64.0, 0, None),
    ("ml.m5.12xlarge", 48, 192.0, 0, None),
    ("ml.m5.24xlarge", 96, 384.0, 0, None),
    ("ml.c5.xlarge", 4, 8.0, 0, None),
    ("ml.c5.2xlarge", 8, 16.0, 0, None),
    ("ml.c5.4xlarge", 16, 32.0, 0, None),
    ("ml.c5.9xlarge", 36, 72.0, 0, None),
    ("ml.c5.18xlarge", 72, 144.0, 0, None),
    ("ml.g4dn.xlarge", 4, 16.0, 1, Some("t4")),
    ("ml.g4dn.2xlarge", 8, 32.0, 1, Some("t4")),
    ("ml.g4dn.12xlarge", 48, 192.0, 4, Some("t4")),
    ("ml.g5.xlarge", 4, 16.0, 1, Some("a10g")),
    ("ml.g5.2xlarge", 8, 32.0, 1, Some("a10g")),
    ("ml.g5.12xlarge", 48, 192.0, 4, Some("a10g")),
    ("ml.g5.48xlarge", 192, 768.0, 8, Some("a10g")),
    ("ml.p3.2xlarge", 8, 61.0, 1, Some("v100")),
    ("ml.p3.8xlarge", 32, 244.0, 4, Some("v100")),
    ("ml.p3.16xlarge", 64, 488.0, 8, Some("v100")),
    ("ml.p4d.24xlarge", 96, 1152.0, 8, Some("a100")),
    ("ml.p5.48xlarge", 192, 2048.0, 8, Some("h100")),
];

pub fn built_in_instance_types() -> Vec<InstanceType> {
    BUILT_IN_INSTANCE_TYPES
        .iter()
        .map(|&(t, vcpu, memory_gib, gpus, gpu_type)| InstanceType {
            instance_type: t.to_string(),
            vcpu,
            memory_gib,
            gpus,
            gpu_type: gpu_type.map(str::to_string),
        })
        .collect()
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            training_images: BTreeMap::new(),
            serving_images: BTreeMap::new(),
            instance_types: built_in_instance_types(),
            default_instance_type: DEFAULT_INSTANCE_TYPE.to_string(),
            output_path: None,
            checkpoint_path: None,
            volume_size_gb: DEFAULT_VOLUME_SIZE_GB,
            max_runtime_seconds: DEFAULT_MAX_RUNTIME_SECONDS,
            spot: false,
            spot_max_wait_seconds: None,
        }
    }
}

/// The target's settings, or an internal error naming the setting that is wrong: the operator's
/// config is at fault, so nothing in the request could mend it.
pub fn load(ctx: &CallContext) -> Result<Settings, BackendError> {
    match settings_as::<Settings>(ctx) {
        Ok(settings) => settings.checked(),
        Err(e) => Err(name_the_setting(ctx).unwrap_or(e)),
    }
}

/// serde's message says what did not fit but not where; trying each setting alone finds it.
fn name_the_setting(ctx: &CallContext) -> Option<BackendError> {
    let map = match settings(ctx) {
        Ok(map) => map,
        Err(e) => return Some(e),
    };
    map.iter().find_map(|(key, value)| {
        let alone = serde_json::Value::Object([(key.clone(), value.clone())].into_iter().collect());
        serde_json::from_value::<Settings>(alone)
            .err()
            .map(|e| internal(format!("the target's setting {key} does not fit: {e}")))
    })
}

impl Settings {
    /// Itself with its keys normalised, once every setting has been checked.
    pub fn checked(mut self) -> Result<Self, BackendError> {
        let bad =
            |key: &str, reason: String| internal(format!("the target's setting {key}: {reason}"));

        self.training_images = lowercase_keys(std::mem::take(&mut self.training_images))
            .map_err(|k| bad("training_images", format!("{k:?} is given twice")))?;
        for (framework, image) in &self.training_images {
            check_image(image).map_err(|r| bad(&format!("training_images.{framework}"), r))?;
        }
        self.serving_images = lowercase_keys(std::mem::take(&mut self.serving_images))
            .map_err(|k| bad("serving_images", format!("{k:?} is given twice")))?;
        for (format, serving) in &self.serving_images {
            let key = format!("serving_images.{format}");
            check_image(serving.image()).map_err(|r| bad(&key, r))?;
            if let Some(env) = serving.environment() {
                check_model_environment(env).map_err(|r| bad(&format!("{key}.environment"), r))?;
            }
        }

        if self.instance_types.is_empty() {
            return Err(bad("instance_types", "must list at least one type".into()));
        }
        for (i, row) in self.instance_types.iter().enumerate() {
            let key = format!("instance_types[{i}]");
            if !names::is_instance_type(&row.instance_type) {
                return Err(bad(
                    &format!("{key}.instance_type"),
                    format!(
                        "{:?} is not a SageMaker instance type (ml.<family>.<size>)",
                        row.instance_type
                    ),
                ));
            }
            if self.instance_types[..i]
                .iter()
                .any(|r| r.instance_type == row.instance_type)
            {
                return Err(bad(&key, format!("{} is listed twice", row.instance_type)));
            }
            if row.vcpu == 0 {
                return Err(bad(&format!("{key}.vcpu"), "must be positive".into()));
            }
            if !(row.memory_gib.is_finite() && row.memory_gib > 0.0) {
                return Err(bad(&format!("{key}.memory_gib"), "must be positive".into()));
            }
            match (&row.gpu_type, row.gpus) {
                (Some(_), 0) => {
                    return Err(bad(
                        &format!("{key}.gpu_type"),
                        "is set for a type with no GPUs (gpus is 0)".into(),
                    ));
                }
                (Some(t), _) if t.trim().is_empty() => {
                    return Err(bad(&format!("{key}.gpu_type"), "must not be empty".into()));
                }
                _ => {}
            }
        }
        if !self
            .instance_types
            .iter()
            .any(|r| r.instance_type == self.default_instance_type)
        {
            return Err(bad(
                "default_instance_type",
                format!(
                    "{:?} is not in the instance table",
                    self.default_instance_type
                ),
            ));
        }

        for (key, path) in [
            ("output_path", &self.output_path),
            ("checkpoint_path", &self.checkpoint_path),
        ] {
            if let Some(p) = path {
                names::check_s3_uri(p).map_err(|r| bad(key, r))?;
            }
        }
        if self.volume_size_gb == 0 {
            return Err(bad("volume_size_gb", "must be positive".into()));
        }
        if self.max_runtime_seconds == 0 || self.max_runtime_seconds > MAX_RUNTIME_LIMIT_SECONDS {
            return Err(bad(
                "max_runtime_seconds",
                format!(
                    "must be between 1 and {MAX_RUNTIME_LIMIT_SECONDS} (SageMaker's 28 days), not {}",
                    self.max_runtime_seconds
                ),
            ));
        }
        if let Some(wait) = self.spot_max_wait_seconds
            && self.spot
            && wait < self.max_runtime_seconds
        {
            return Err(bad(
                "spot_max_wait_seconds",
                format!(
                    "{wait} is below max_runtime_seconds ({}); SageMaker's max wait covers a spot job's waiting and running together",
                    self.max_runtime_seconds
                ),
            ));
        }
        Ok(self)
    }

    pub fn instance(&self, instance_type: &str) -> Option<&InstanceType> {
        self.instance_types
            .iter()
            .find(|r| r.instance_type == instance_type)
    }

    pub fn default_instance(&self) -> &InstanceType {
        // `checked` made sure it is in the table.
        self.instance(&self.default_instance_type)
            .unwrap_or(&self.instance_types[0])
    }
}

fn lowercase_keys<V>(map: BTreeMap<String, V>) -> Result<BTreeMap<String, V>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let lower = k.to_ascii_lowercase();
        if out.insert(lower, v).is_some() {
            return Err(k);
        }
    }
    Ok(out)
}

fn check_image(image: &str) -> Result<(), String> {
    if image.trim().is_empty() {
        return Err("the image must not be empty".into());
    }
    if image.len() > MAX_IMAGE {
        return Err(format!(
            "the image reference is {} characters; SageMaker takes at most {MAX_IMAGE}",
            image.len()
        ));
    }
    Ok(())
}

/// A model container's environment as SageMaker takes it.
pub fn check_model_environment(env: &BTreeMap<String, String>) -> Result<(), String> {
    if env.len() > MAX_MODEL_ENV_ENTRIES {
        return Err(format!(
            "{} variables; SageMaker takes at most {MAX_MODEL_ENV_ENTRIES}",
            env.len()
        ));
    }
    for (k, v) in env {
        if !names::is_env_name(k) || k.len() > MAX_MODEL_ENV_KEY {
            return Err(format!(
                "{k:?} is not an environment variable name SageMaker takes"
            ));
        }
        if v.chars().count() > MAX_MODEL_ENV_VALUE {
            return Err(format!(
                "the value of {k} is longer than SageMaker's {MAX_MODEL_ENV_VALUE} characters"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings, BackendError> {
        let ctx = CallContext {
            tenant: "t".into(),
            target: "sagemaker".into(),
            resource_id: "j-1".into(),
            backend_name: "mlgw-j1".into(),
            settings: json.into(),
            revision: 0,
        };
        load(&ctx)
    }

    fn internal_message(r: Result<Settings, BackendError>) -> String {
        match r {
            Err(BackendError::Internal(m)) => m,
            other => panic!("expected an internal error, got {other:?}"),
        }
    }

    #[test]
    fn empty_settings_have_defaults() {
        let s = parse("").unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.default_instance().instance_type, "ml.m5.large");
        assert_eq!(s.volume_size_gb, 30);
        assert_eq!(s.max_runtime_seconds, 86_400);
        assert!(!s.spot);
        assert!(s.output_path.is_none());
        assert!(s.instance("ml.g5.xlarge").is_some_and(|r| r.gpus == 1));
    }

    #[test]
    fn parses_every_setting() {
        let s = parse(
            r#"{
                "output_path": "s3://b/out",
                "checkpoint_path": "s3://b/ckpt",
                "volume_size_gb": 50,
                "max_runtime_seconds": 3600,
                "spot": true,
                "spot_max_wait_seconds": 7200,
                "default_instance_type": "ml.c5.xlarge",
                "training_images": {"PyTorch": "img/pt:2"},
                "serving_images": {
                    "sklearn": "img/sk:1",
                    "xgboost": {"image": "img/xgb:1", "environment": {"SAGEMAKER_PROGRAM": "serve.py"}}
                },
                "instance_types": [
                    {"instance_type": "ml.c5.xlarge", "vcpu": 4, "memory_gib": 8},
                    {"instance_type": "ml.g5.xlarge", "vcpu": 4, "memory_gib": 16, "gpus": 1, "gpu_type": "a10g"}
                ]
            }"#,
        )
        .unwrap();
        assert_eq!(s.output_path.as_deref(), Some("s3://b/out"));
        assert_eq!(s.checkpoint_path.as_deref(), Some("s3://b/ckpt"));
        assert_eq!((s.volume_size_gb, s.max_runtime_seconds), (50, 3600));
        assert_eq!((s.spot, s.spot_max_wait_seconds), (true, Some(7200)));
        // Frameworks and formats match whatever case the operator wrote them in.
        assert_eq!(s.training_images["pytorch"], "img/pt:2");
        assert_eq!(s.serving_images["sklearn"].image(), "img/sk:1");
        assert_eq!(s.serving_images["sklearn"].environment(), None);
        assert_eq!(
            s.serving_images["xgboost"].environment().unwrap()["SAGEMAKER_PROGRAM"],
            "serve.py"
        );
        assert_eq!(s.instance_types.len(), 2);
        assert_eq!(s.default_instance().instance_type, "ml.c5.xlarge");
    }

    #[test]
    fn refuses_bad_settings_naming_them() {
        for (json, key) in [
            (r#"{"volume_size_gb": "big"}"#, "volume_size_gb"),
            (r#"{"output_dir": "s3://b"}"#, "output_dir"),
            (r#"{"output_path": "/tmp/out"}"#, "output_path"),
            (r#"{"checkpoint_path": "s3://"}"#, "checkpoint_path"),
            (r#"{"volume_size_gb": 0}"#, "volume_size_gb"),
            (r#"{"max_runtime_seconds": 0}"#, "max_runtime_seconds"),
            (r#"{"max_runtime_seconds": 2419201}"#, "max_runtime_seconds"),
            (
                r#"{"spot": true, "max_runtime_seconds": 7200, "spot_max_wait_seconds": 3600}"#,
                "spot_max_wait_seconds",
            ),
            (
                r#"{"default_instance_type": "ml.x9.huge"}"#,
                "default_instance_type",
            ),
            (r#"{"instance_types": []}"#, "instance_types"),
            (
                r#"{"instance_types": [{"instance_type": "m5.large", "vcpu": 2, "memory_gib": 8}]}"#,
                "instance_types[0].instance_type",
            ),
            (
                r#"{"instance_types": [{"instance_type": "ml.m5.large", "vcpu": 0, "memory_gib": 8}]}"#,
                "instance_types[0].vcpu",
            ),
            (
                r#"{"instance_types": [{"instance_type": "ml.m5.large", "vcpu": 2, "memory_gib": 8, "gpu_type": "t4"}]}"#,
                "instance_types[0].gpu_type",
            ),
            (
                r#"{"default_instance_type": "ml.m5.large", "instance_types": [
                    {"instance_type": "ml.m5.large", "vcpu": 2, "memory_gib": 8},
                    {"instance_type": "ml.m5.large", "vcpu": 2, "memory_gib": 8}]}"#,
                "instance_types[1]",
            ),
            (
                r#"{"training_images": {"sklearn": ""}}"#,
                "training_images.sklearn",
            ),
            (
                r#"{"training_images": {"sklearn": "a", "SKLearn": "b"}}"#,
                "training_images",
            ),
            (r#"{"serving_images": {"onnx": 3}}"#, "serving_images"),
            (r#"{"serving_images": {"onnx": 3}}"#, "an image reference"),
            (
                r#"{"serving_images": {"onnx": {"image": "i", "environment": {"1X": "v"}}}}"#,
                "serving_images.onnx.environment",
            ),
        ] {
            let m = internal_message(parse(json));
            assert!(m.contains(key), "{json}: {m}");
        }
        // Not a JSON object at all.
        internal_message(parse("[1]"));
    }

    #[test]
    fn spot_wait_below_runtime_is_fine_without_spot() {
        parse(r#"{"max_runtime_seconds": 7200, "spot_max_wait_seconds": 3600}"#).unwrap();
    }

    #[test]
    fn the_built_in_table_is_consistent() {
        Settings::default().checked().unwrap();
    }
}
