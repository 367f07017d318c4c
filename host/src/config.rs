//! The operator's configuration: where data lives, the targets (plugin + settings + grants),
//! the default target, and the sandbox limits. With no file, `Config::embedded` is a working
//! single-machine setup with the `local` target.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    pub default_target: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Extra plugins by name → path of a .wasm component. Bundled plugins ("local") need no entry.
    #[serde(default)]
    pub plugins: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
    #[serde(default)]
    pub artifacts: ArtifactsConfig,
    #[serde(default)]
    pub observability: ObservabilityConfig,
    #[serde(default)]
    pub store: StoreConfig,
}

/// The gateway's own records (`[store]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Finished jobs (succeeded, failed, cancelled) and deleted endpoints that ended longer
    /// ago than this are removed, with their events, change-feed entries and idempotency
    /// keys; a job that has not ended is kept however old. Unset: everything is kept.
    pub retention_seconds: Option<u64>,
    /// How often the store looks for records past their retention (and once at start).
    pub prune_interval_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            retention_seconds: None,
            prune_interval_ms: 60_000,
        }
    }
}

impl StoreConfig {
    /// How long finished records are kept; None: forever.
    pub fn retention(&self) -> Option<std::time::Duration> {
        self.retention_seconds.map(std::time::Duration::from_secs)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::Invalid(format!("store.{key}: {why}")));
        match self.retention_seconds {
            Some(0) => {
                return bad(
                    "retention_seconds",
                    "must be positive (leave it unset to keep every record)",
                );
            }
            // Beyond that the cut-off in milliseconds overflows; a century is forever enough.
            Some(s) if s > MAX_RETENTION_SECONDS => {
                return bad("retention_seconds", "at most 3153600000 (a century)");
            }
            _ => {}
        }
        if self.prune_interval_ms == 0 {
            return bad("prune_interval_ms", "must be positive");
        }
        Ok(())
    }
}

const MAX_RETENTION_SECONDS: u64 = 100 * 365 * 24 * 60 * 60;

/// Metrics, traces and the log format (`[observability]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilityConfig {
    /// Serves Prometheus metrics at `http://<this>/metrics`; unset: no metrics port.
    pub metrics_listen: Option<SocketAddr>,
    /// Exports traces over OTLP/gRPC to this collector (`http://otel-collector:4317`); unset:
    /// no traces leave the gateway.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` traces carry.
    pub service_name: String,
    /// `text` (the default) or `json`, one object per line, for log collectors.
    pub log_format: LogFormat,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self {
            metrics_listen: None,
            otlp_endpoint: None,
            service_name: "mlgw".into(),
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where uploaded code and model files live (`[artifacts]`): a directory by default, an
/// S3-compatible bucket in-cluster, so that every target can reach them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactsConfig {
    pub store: ArtifactStoreKind,
    /// The directory store's root. Default: `<data_dir>/artifacts`.
    pub dir: Option<PathBuf>,
    /// Required with `store = "s3"`.
    pub s3: Option<S3StoreConfig>,
    /// Largest upload, as sent (a directory's tarball, compressed).
    pub max_upload_bytes: u64,
    /// Largest a directory artifact may unpack to.
    pub max_unpacked_bytes: u64,
    /// Longest lifetime of a presigned URL handed to a target.
    pub presign_max_seconds: u64,
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        Self {
            store: ArtifactStoreKind::Dir,
            dir: None,
            s3: None,
            max_upload_bytes: 1 << 30,
            max_unpacked_bytes: 4 << 30,
            presign_max_seconds: 900,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactStoreKind {
    #[default]
    Dir,
    S3,
}

/// An S3 (or S3-compatible) bucket. Credentials come from the standard AWS chain (environment,
/// shared config and credentials files, web identity, container and instance metadata), never
/// from this file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3StoreConfig {
    pub bucket: String,
    /// Keys start with `<prefix>/<tenant>/`; empty: with the tenant.
    #[serde(default)]
    pub prefix: String,
    /// Default: the AWS chain's region (AWS_REGION, the profile), else us-east-1.
    pub region: Option<String>,
    /// Another endpoint than AWS's own: a VPC endpoint, MinIO, a test server.
    pub endpoint_url: Option<String>,
    /// `http://host/bucket/key` instead of `http://bucket.host/key` (most S3-compatible servers).
    #[serde(default)]
    pub force_path_style: bool,
}

/// S3 takes at most this much in one PUT, which is how uploads are stored.
pub const S3_MAX_PUT_BYTES: u64 = 5 << 30;
/// S3 refuses presigned URLs that live longer than a week.
pub const S3_MAX_PRESIGN_SECONDS: u64 = 7 * 24 * 60 * 60;

impl ArtifactsConfig {
    /// The directory store's root.
    pub fn dir_root(&self, data_dir: &Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| data_dir.join("artifacts"))
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| ConfigError::Invalid(format!("artifacts.{key}: {why}"));
        for (key, value) in [
            ("max_upload_bytes", self.max_upload_bytes),
            ("max_unpacked_bytes", self.max_unpacked_bytes),
            ("presign_max_seconds", self.presign_max_seconds),
        ] {
            if value == 0 {
                return Err(bad(key, "must be positive".into()));
            }
        }
        if self.presign_max_seconds > S3_MAX_PRESIGN_SECONDS {
            return Err(bad(
                "presign_max_seconds",
                format!("at most {S3_MAX_PRESIGN_SECONDS} (a week, S3's limit)"),
            ));
        }
        match (self.store, &self.s3) {
            (ArtifactStoreKind::Dir, _) => Ok(()),
            (ArtifactStoreKind::S3, None) => Err(bad(
                "s3",
                "store = \"s3\" needs an [artifacts.s3] table with at least a bucket".into(),
            )),
            (ArtifactStoreKind::S3, Some(s3)) => {
                if self.max_upload_bytes > S3_MAX_PUT_BYTES {
                    return Err(bad(
                        "max_upload_bytes",
                        format!(
                            "at most {S3_MAX_PUT_BYTES} (5 GiB, one S3 PUT) with store = \"s3\""
                        ),
                    ));
                }
                s3.check()
                    .map_err(|(key, why)| bad(&format!("s3.{key}"), why))
            }
        }
    }
}

impl S3StoreConfig {
    fn check(&self) -> Result<(), (&'static str, String)> {
        let b = &self.bucket;
        // S3's bucket naming rules, so a typo fails here rather than on the first upload.
        if !(3..=63).contains(&b.len())
            || !b
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
            || !b.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !b.ends_with(|c: char| c.is_ascii_alphanumeric())
        {
            return Err((
                "bucket",
                format!("{b:?} is not a bucket name (3-63 lowercase letters, digits, '.' and '-')"),
            ));
        }
        if !self.prefix.is_empty()
            && (self.prefix.starts_with('/')
                || self.prefix.ends_with('/')
                || self
                    .prefix
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == "..")
                || self.prefix.chars().any(|c| c.is_control()))
        {
            return Err((
                "prefix",
                format!(
                    "{:?}: segments separated by single '/', none of them empty, \".\" or \"..\", no leading or trailing '/'",
                    self.prefix
                ),
            ));
        }
        if let Some(e) = &self.endpoint_url
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(("endpoint_url", format!("{e:?} is not an http(s):// URL")));
        }
        if let Some(r) = &self.region
            && (r.is_empty() || !r.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'))
        {
            return Err(("region", format!("{r:?} is not a region name")));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// A bundled plugin name or a key of `[plugins]`.
    pub plugin: String,
    /// Handed to the plugin as a JSON object on every call.
    #[serde(default)]
    pub settings: toml::Table,
    #[serde(default)]
    pub grants: Grants,
    /// Where the data plane may send this target's predictions and readiness probes.
    #[serde(default)]
    pub routes: Routes,
    /// Plugin calls per second this target may make, shared by the reconciler and client
    /// calls. Unset: unlimited, except on a target granted `sagemaker`, whose API limits
    /// are low (10 a second, bursts of 20).
    pub budget: Option<BudgetConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    pub requests_per_second: f64,
    /// Calls that may go at once after a quiet spell. Default: one second's worth.
    #[serde(default)]
    pub burst: u32,
}

impl TargetConfig {
    /// The budget this target runs under, its default filled in.
    pub fn budget(&self) -> Option<BudgetConfig> {
        match &self.budget {
            Some(b) => Some(BudgetConfig {
                requests_per_second: b.requests_per_second,
                burst: if b.burst == 0 {
                    b.requests_per_second.ceil() as u32
                } else {
                    b.burst
                },
            }),
            None if self.grants.sagemaker.is_some() => Some(BudgetConfig {
                requests_per_second: 10.0,
                burst: 20,
            }),
            None => None,
        }
    }
}

/// Capabilities the operator grants a target. Anything not granted answers `denied`; `log` is
/// always granted, within its bounds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    pub process: Option<ProcessGrant>,
    pub kube: Option<KubeGrant>,
    pub sagemaker: Option<SagemakerGrant>,
    #[serde(default)]
    pub log: LogGrant,
}

/// How much a target's plugin may write into the gateway's log. Over the budget, messages are
/// dropped and counted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogGrant {
    pub lines_per_call: u32,
    pub bytes_per_call: u64,
    /// Shared by all the target's calls.
    pub lines_per_second: u32,
    pub bytes_per_second: u64,
    /// Longer messages are cut.
    pub max_line_bytes: u32,
}

impl Default for LogGrant {
    fn default() -> Self {
        Self {
            lines_per_call: 200,
            bytes_per_call: 256 * 1024,
            lines_per_second: 100,
            bytes_per_second: 256 * 1024,
            max_line_bytes: 4096,
        }
    }
}

impl Grants {
    pub fn names(&self) -> Vec<String> {
        let mut names = vec!["log".to_string()];
        if self.process.is_some() {
            names.push("process".into());
        }
        if self.kube.is_some() {
            names.push("kube".into());
        }
        if self.sagemaker.is_some() {
            names.push("sagemaker".into());
        }
        names
    }
}

/// Amazon SageMaker for one account, region and execution role (`[targets.X.grants.sagemaker]`).
/// Credentials come from the standard AWS chain (environment, shared config and credentials
/// files, web identity for IRSA, container and instance metadata), never from this file, and
/// never reach the plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagemakerGrant {
    /// Default: the AWS chain's region (AWS_REGION, the profile, instance metadata).
    pub region: Option<String>,
    /// The execution role the host sets on every training job and model: a plugin cannot
    /// choose one.
    pub role_arn: String,
    /// Another endpoint than AWS's own for all three APIs (SageMaker, its runtime and
    /// CloudWatch Logs): a test server, or one VPC endpoint that serves them all.
    pub endpoint_url: Option<String>,
    /// The runtime's (InvokeEndpoint) own endpoint, where it differs; default `endpoint_url`.
    pub runtime_endpoint_url: Option<String>,
    /// CloudWatch Logs' own endpoint, where it differs; default `endpoint_url`.
    pub logs_endpoint_url: Option<String>,
    /// `s3://bucket/prefix/` locations a job's channels (and a model's data) may read.
    #[serde(default)]
    pub input_prefixes: Vec<String>,
    /// `s3://bucket/prefix/` locations a job may write its output and checkpoints to (a model's
    /// data may come from them too).
    #[serde(default)]
    pub output_prefixes: Vec<String>,
    /// Added to everything the target creates, after the gateway's own `mlgw:` tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Set on every training job and model.
    pub vpc: Option<SagemakerVpc>,
    /// Encrypts training output and volumes and endpoint storage.
    pub kms_key_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagemakerVpc {
    pub subnets: Vec<String>,
    pub security_group_ids: Vec<String>,
}

/// Tag keys the gateway sets itself; a grant cannot set or override them.
pub const SAGEMAKER_RESERVED_TAG_PREFIX: &str = "mlgw:";
/// SageMaker takes at most 50 tags on a resource; the gateway sets 3 of them.
pub const SAGEMAKER_MAX_GRANT_TAGS: usize = 47;

impl SagemakerGrant {
    /// The first mistake, as (key below the grant, why).
    fn check(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, why: String| Err((key.to_string(), why));
        if let Some(r) = &self.region
            && (r.is_empty() || !r.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'))
        {
            return bad("region", format!("{r:?} is not a region name"));
        }
        if !is_role_arn(&self.role_arn) {
            return bad(
                "role_arn",
                format!(
                    "{:?} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)",
                    self.role_arn
                ),
            );
        }
        for (key, url) in [
            ("endpoint_url", &self.endpoint_url),
            ("runtime_endpoint_url", &self.runtime_endpoint_url),
            ("logs_endpoint_url", &self.logs_endpoint_url),
        ] {
            if let Some(u) = url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                return bad(key, format!("{u:?} is not an http(s):// URL"));
            }
        }
        for (key, prefixes) in [
            ("input_prefixes", &self.input_prefixes),
            ("output_prefixes", &self.output_prefixes),
        ] {
            for p in prefixes {
                if let Err(why) = check_s3_prefix(p) {
                    return bad(key, why);
                }
            }
        }
        if self.tags.len() > SAGEMAKER_MAX_GRANT_TAGS {
            return bad(
                "tags",
                format!(
                    "at most {SAGEMAKER_MAX_GRANT_TAGS} (SageMaker takes 50 and the gateway sets 3)"
                ),
            );
        }
        for (k, v) in &self.tags {
            if k.starts_with(SAGEMAKER_RESERVED_TAG_PREFIX) {
                return bad(
                    "tags",
                    format!("{k:?}: keys starting with \"mlgw:\" are the gateway's own"),
                );
            }
            if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
                return bad(
                    "tags",
                    format!("{k:?}: keys are 1-128 characters, values at most 256"),
                );
            }
        }
        if let Some(vpc) = &self.vpc {
            if vpc.subnets.is_empty() {
                return bad("vpc.subnets", "name at least one subnet".into());
            }
            if vpc.security_group_ids.is_empty() {
                return bad(
                    "vpc.security_group_ids",
                    "name at least one security group".into(),
                );
            }
        }
        if self
            .kms_key_id
            .as_ref()
            .is_some_and(|k| k.trim().is_empty())
        {
            return bad("kms_key_id", "must not be empty".into());
        }
        Ok(())
    }
}

fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(
        parts.as_slice(),
        ["arn", partition, "iam", "", account, resource]
            if partition.starts_with("aws")
                && account.len() == 12
                && account.bytes().all(|c| c.is_ascii_digit())
                && resource.strip_prefix("role/").is_some_and(|r| !r.is_empty())
    )
}

/// An `s3://bucket/` or `s3://bucket/key/prefix/` location. A prefix is matched by whole path
/// segments, so `s3://b/team-a` allows `s3://b/team-a/x` but not `s3://b/team-ab`.
fn check_s3_prefix(p: &str) -> Result<(), String> {
    let Some(rest) = p.strip_prefix("s3://") else {
        return Err(format!("{p:?} is not an s3:// location"));
    };
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("{p:?} names no bucket"));
    }
    let key = key.strip_suffix('/').unwrap_or(key);
    if !key.is_empty()
        && key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        || p.chars().any(|c| c.is_control())
    {
        return Err(format!(
            "{p:?}: key segments must not be empty, \".\" or \"..\""
        ));
    }
    Ok(())
}

/// A Kubernetes client bound to namespaces and kinds. The gateway's own identity (service
/// account in-cluster, or the kubeconfig named here) is used; plugins never see it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeGrant {
    /// A kubeconfig file. Absent: in-cluster service account when running in a pod, else
    /// $KUBECONFIG or ~/.kube/config.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// Namespaces the target may touch; the first is the default for objects that name none.
    pub namespaces: Vec<String>,
    /// Namespaced kinds the target may touch, as "apiVersion/Kind": "kubeflow.org/v1/PyTorchJob",
    /// "batch/v1/Job", "v1/Pod" (pods also cover their logs).
    pub kinds: Vec<String>,
    /// Cluster-scoped kinds the target may touch (none unless listed).
    #[serde(default)]
    pub cluster_kinds: Vec<String>,
    #[serde(default = "default_field_manager")]
    pub field_manager: String,
}

fn default_field_manager() -> String {
    "mlgw".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessGrant {
    /// The directory the plugin's processes and files live under. Default:
    /// `<data_dir>/targets/<target>`.
    pub root: Option<PathBuf>,
    /// Programs the plugin may start: bare names (looked up through `path`) and absolute
    /// paths, matched exactly; "*" allows any.
    #[serde(default = "any_program")]
    pub programs: Vec<String>,
    /// Where bare program names are looked up. Default: the gateway's own PATH when it starts.
    pub path: Option<Vec<PathBuf>>,
    /// Whether a program inside `root` (where the plugin can write any file) may run.
    #[serde(default)]
    pub allow_programs_in_root: bool,
    /// Environment variables passed through from the gateway to started processes.
    #[serde(default = "default_inherit_env")]
    pub inherit_env: Vec<String>,
    /// Loader and interpreter variables (LD_PRELOAD, PYTHONPATH, PATH, …) the plugin may set.
    #[serde(default)]
    pub allow_env: Vec<String>,
    /// Processes of this target alive at once; further spawns answer `exhausted`.
    #[serde(default = "default_max_processes")]
    pub max_processes: u32,
}

impl Default for ProcessGrant {
    fn default() -> Self {
        Self {
            root: None,
            programs: any_program(),
            path: None,
            allow_programs_in_root: false,
            inherit_env: default_inherit_env(),
            allow_env: Vec::new(),
            max_processes: default_max_processes(),
        }
    }
}

impl ProcessGrant {
    /// The directories bare program names resolve through.
    pub fn search_path(&self) -> Vec<PathBuf> {
        match &self.path {
            Some(p) => p.clone(),
            None => std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default(),
        }
    }

    pub fn any_program(&self) -> bool {
        self.programs.iter().any(|p| p == "*")
    }
}

fn default_max_processes() -> u32 {
    64
}

/// The operator's policy for the routes a target's plugin hands the data plane
/// (`[targets.X.routes]`). A route outside it is refused before any request is sent.
/// Link-local, cloud metadata and unspecified addresses are refused whatever this says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routes {
    /// URL schemes a route may use.
    pub schemes: Vec<String>,
    /// Host names a route may name: exact (`ingress.example.com`) or a suffix
    /// (`*.example.com`, which matches names below it, not the name itself). A listed name may
    /// resolve to any address except the never-allowed ones.
    pub hosts: Option<Vec<String>>,
    /// Address ranges (`10.0.0.0/8`, `::1/128`, or a bare address) a route may name as an IP
    /// literal, or that an unlisted host name must resolve into.
    /// Unset together with `hosts`: loopback for targets of the bundled `local` plugin (it
    /// only ever serves on this machine), nothing for every other plugin.
    pub cidrs: Option<Vec<String>>,
    /// Sensitive headers (credentials such as `Authorization` or `X-Api-Key`, Host-overriding
    /// ones such as `X-Forwarded-Host`) the plugin may set. Other headers need no entry;
    /// hop-by-hop and framing headers can never be set.
    pub headers: Vec<String>,
    /// Whether the plugin may set `Host`, e.g. to address one service behind an ingress.
    pub allow_host_header: bool,
    /// Largest response body read from a model server.
    pub max_response_bytes: u64,
    pub connect_timeout_ms: u64,
    /// One prediction, response body included.
    pub request_timeout_ms: u64,
    /// One readiness probe.
    pub probe_timeout_ms: u64,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            schemes: vec!["http".into(), "https".into()],
            hosts: None,
            cidrs: None,
            headers: Vec::new(),
            allow_host_header: false,
            max_response_bytes: 16 << 20,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 60_000,
            probe_timeout_ms: 2_000,
        }
    }
}

impl Routes {
    /// The allowed host names and address ranges, defaults applied (`loopback_default`: the
    /// target runs the bundled `local` plugin).
    pub fn allowed(&self, loopback_default: bool) -> (Vec<String>, Vec<String>) {
        match (&self.hosts, &self.cidrs) {
            (None, None) if loopback_default => {
                (Vec::new(), vec!["127.0.0.0/8".into(), "::1/128".into()])
            }
            (hosts, cidrs) => (
                hosts.clone().unwrap_or_default(),
                cidrs.clone().unwrap_or_default(),
            ),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock budget for one plugin call, host calls included.
    pub call_timeout_ms: u64,
    /// Linear memory cap per plugin instance.
    pub memory_mib: u64,
    /// Plugin instances alive at once; further calls wait.
    pub max_concurrent_calls: u32,
    /// How often live jobs and endpoints are polled.
    pub reconcile_interval_ms: u64,
    /// On targets granted `kube`, whose objects' changes wake their records through watches:
    /// about how often a record in a steady state (a running job, a ready endpoint) is still
    /// polled, in case an event was missed (each at a spread point between half of this and
    /// all of it). Records in transition keep the interval above. A safety net, not the way
    /// status arrives: a broken watch relists and wakes every record itself, so the default is
    /// long (informers elsewhere resync every 10 minutes to 10 hours); each poll is a plugin
    /// call, and 10,000 running jobs at one minute kept a core busy.
    pub kube_resync_ms: u64,
    /// Plugin calls of one target at once (client calls and the reconciler's), so a slow or
    /// hostile target only ever waits on itself. At most `max_concurrent_calls`.
    pub target_concurrent_calls: u32,
    /// How long a Ready endpoint's readiness probe may keep failing (it is `degraded`
    /// meanwhile) before the endpoint is `failed`.
    pub endpoint_failure_after_ms: u64,
    /// What a plugin may return, checked before anything is stored: names, states, messages,
    /// URIs and route fields; a backend-ref's data; one page of log lines.
    pub max_plugin_text_bytes: usize,
    pub max_plugin_ref_bytes: usize,
    pub max_plugin_log_page_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout_ms: 10_000,
            memory_mib: 64,
            max_concurrent_calls: 64,
            reconcile_interval_ms: 500,
            kube_resync_ms: 600_000,
            target_concurrent_calls: 16,
            endpoint_failure_after_ms: 30_000,
            max_plugin_text_bytes: 16 * 1024,
            max_plugin_ref_bytes: 64 * 1024,
            max_plugin_log_page_bytes: 4 << 20,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}

fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("mlgw");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/share/mlgw");
    }
    PathBuf::from(".mlgw")
}

fn any_program() -> Vec<String> {
    vec!["*".into()]
}

fn default_inherit_env() -> Vec<String> {
    [
        "PATH",
        "HOME",
        "USER",
        "LANG",
        "LC_ALL",
        "TZ",
        "TMPDIR",
        "VIRTUAL_ENV",
        "PYTHONPATH",
    ]
    .map(String::from)
    .to_vec()
}

impl Config {
    /// No file: data in the default directory, the `local` target granted local processes.
    pub fn embedded() -> Self {
        let mut targets = BTreeMap::new();
        targets.insert(
            "local".to_string(),
            TargetConfig {
                plugin: "local".into(),
                settings: toml::Table::new(),
                grants: Grants {
                    process: Some(ProcessGrant::default()),
                    kube: None,
                    sagemaker: None,
                    log: LogGrant::default(),
                },
                routes: Routes::default(),
                budget: None,
            },
        );
        Self {
            listen: default_listen(),
            data_dir: default_data_dir(),
            default_target: Some("local".into()),
            limits: Limits::default(),
            plugins: BTreeMap::new(),
            targets,
            artifacts: ArtifactsConfig::default(),
            observability: ObservabilityConfig::default(),
            store: StoreConfig::default(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        // Relative plugin paths are relative to the config file, as operators expect.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in cfg.plugins.values_mut() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.check()?;
        Ok(cfg)
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        if self.targets.is_empty() {
            return Err(ConfigError::Invalid("no [targets] defined".into()));
        }
        for (name, t) in &self.targets {
            if let Some(b) = &t.budget
                && !(b.requests_per_second.is_finite() && b.requests_per_second >= 0.001)
            {
                return Err(ConfigError::Invalid(format!(
                    "targets.{name}.budget.requests_per_second must be a positive number \
                     (at least 0.001), not {}",
                    b.requests_per_second
                )));
            }
        }
        if let Some(e) = &self.observability.otlp_endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "observability.otlp_endpoint {e:?} is not an http:// or https:// URL"
            )));
        }
        if self.observability.metrics_listen.is_some()
            && self.observability.metrics_listen == Some(self.listen)
        {
            return Err(ConfigError::Invalid(
                "observability.metrics_listen is the gateway's own listen address".into(),
            ));
        }
        if let Some(d) = &self.default_target
            && !self.targets.contains_key(d)
        {
            return Err(ConfigError::Invalid(format!(
                "default_target {d:?} is not a defined target"
            )));
        }
        for (name, t) in &self.targets {
            // Clients name targets in requests, where the same rule holds.
            if crate::domain::validate::validate_target_name("target", name).is_err() {
                return Err(ConfigError::Invalid(format!(
                    "target name {name:?}: 1-{} letters, digits, '-' and '_'",
                    crate::domain::validate::MAX_TARGET_NAME
                )));
            }
            if let Some(p) = &t.grants.process {
                // A target that runs any program runs users' commands as the gateway's user:
                // fine on a laptop, not for whoever can reach a network listener.
                if p.any_program() && !self.listen.ip().is_loopback() {
                    return Err(ConfigError::Invalid(format!(
                        "targets.{name}.grants.process.programs: \"*\" (any program, the default) \
                         is only allowed when the gateway listens on a loopback address, not on {}; \
                         list the programs this target may run",
                        self.listen
                    )));
                }
                if p.max_processes == 0 {
                    return Err(ConfigError::Invalid(format!(
                        "targets.{name}.grants.process.max_processes: must be positive"
                    )));
                }
                for prog in &p.programs {
                    if prog != "*"
                        && (prog.is_empty() || (!prog.starts_with('/') && prog.contains('/')))
                    {
                        return Err(ConfigError::Invalid(format!(
                            "targets.{name}.grants.process.programs: {prog:?} is neither a bare \
                             name nor an absolute path"
                        )));
                    }
                }
            }
            if let Some(k) = &t.grants.kube {
                if k.namespaces.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "targets.{name}.grants.kube.namespaces: grant at least one namespace"
                    )));
                }
                for kind in k.kinds.iter().chain(&k.cluster_kinds) {
                    if kind
                        .rsplit_once('/')
                        .is_none_or(|(v, k)| v.is_empty() || k.is_empty())
                    {
                        return Err(ConfigError::Invalid(format!(
                            "targets.{name}.grants.kube: {kind:?} is not \"apiVersion/Kind\""
                        )));
                    }
                }
            }
            if let Some(g) = &t.grants.sagemaker {
                g.check().map_err(|(key, why)| {
                    ConfigError::Invalid(format!("targets.{name}.grants.sagemaker.{key}: {why}"))
                })?;
            }
            crate::dataplane::policy::RoutePolicy::new(name, &t.routes, self.runs_bundled_local(t))
                .map_err(ConfigError::Invalid)?;
            if !self.plugins.contains_key(&t.plugin)
                && !mlgw_plugin_artifacts::bundled()
                    .iter()
                    .any(|(n, _)| *n == t.plugin)
            {
                return Err(ConfigError::Invalid(format!(
                    "targets.{name}.plugin: {:?} is neither bundled nor listed in [plugins]",
                    t.plugin
                )));
            }
        }
        let l = &self.limits;
        for (key, value) in [
            ("call_timeout_ms", l.call_timeout_ms),
            ("memory_mib", l.memory_mib),
            ("max_concurrent_calls", u64::from(l.max_concurrent_calls)),
            // The reconciler ticks at this interval; a zero one is a panic in its timer.
            ("reconcile_interval_ms", l.reconcile_interval_ms),
            ("kube_resync_ms", l.kube_resync_ms),
            (
                "target_concurrent_calls",
                u64::from(l.target_concurrent_calls),
            ),
            ("max_plugin_text_bytes", l.max_plugin_text_bytes as u64),
            ("max_plugin_ref_bytes", l.max_plugin_ref_bytes as u64),
            (
                "max_plugin_log_page_bytes",
                l.max_plugin_log_page_bytes as u64,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "limits.{key}: must be positive"
                )));
            }
        }
        if l.target_concurrent_calls > l.max_concurrent_calls {
            return Err(ConfigError::Invalid(format!(
                "limits.target_concurrent_calls: {} is more than limits.max_concurrent_calls ({})",
                l.target_concurrent_calls, l.max_concurrent_calls
            )));
        }
        self.artifacts.check()?;
        self.store.check()?;
        // Slower than this, live records would look stuck to everyone watching them.
        const MAX_RECONCILE_INTERVAL_MS: u64 = 60 * 60 * 1000;
        if l.reconcile_interval_ms > MAX_RECONCILE_INTERVAL_MS {
            return Err(ConfigError::Invalid(format!(
                "limits.reconcile_interval_ms: at most {MAX_RECONCILE_INTERVAL_MS} (an hour)"
            )));
        }
        Ok(())
    }

    /// The default target: configured, or the only one.
    pub fn default_target(&self) -> Option<&str> {
        self.default_target.as_deref().or_else(|| {
            (self.targets.len() == 1).then(|| self.targets.keys().next().unwrap().as_str())
        })
    }

    /// Whether a target runs the bundled `local` plugin (not one the operator named "local").
    pub fn runs_bundled_local(&self, t: &TargetConfig) -> bool {
        t.plugin == "local" && !self.plugins.contains_key("local")
    }

    pub fn process_root(&self, target: &str, grant: &ProcessGrant) -> PathBuf {
        grant
            .root
            .clone()
            .unwrap_or_else(|| self.data_dir.join("targets").join(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observability_is_checked_like_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mlgw.toml");
        let load = |obs: &str| {
            std::fs::write(
                &p,
                format!("[observability]\n{obs}\n[targets.local]\nplugin = \"local\"\n"),
            )
            .unwrap();
            Config::load(&p)
        };
        let c = load("metrics_listen = \"0.0.0.0:9090\"\nlog_format = \"json\"").unwrap();
        assert_eq!(
            c.observability.metrics_listen,
            Some("0.0.0.0:9090".parse().unwrap())
        );
        assert_eq!(c.observability.log_format, LogFormat::Json);
        assert_eq!(c.observability.service_name, "mlgw");
        for (bad, says) in [
            ("metrics_port = 9090", "metrics_port"),
            ("log_format = \"xml\"", "xml"),
            ("otlp_endpoint = \"collector:4317\"", "otlp_endpoint"),
            ("metrics_listen = \"127.0.0.1:50051\"", "metrics_listen"),
        ] {
            let e = load(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn store_retention_is_unset_by_default_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mlgw.toml");
        let load = |store: &str| {
            std::fs::write(
                &p,
                format!("[store]\n{store}\n[targets.local]\nplugin = \"local\"\n"),
            )
            .unwrap();
            Config::load(&p)
        };
        let c = load("").unwrap();
        assert_eq!(c.store.retention(), None, "nothing is pruned unless asked");
        assert!(Config::embedded().store.retention().is_none());
        let c = load("retention_seconds = 2592000\nprune_interval_ms = 1000").unwrap();
        assert_eq!(
            c.store.retention(),
            Some(std::time::Duration::from_secs(30 * 24 * 3600))
        );
        assert_eq!(c.store.prune_interval_ms, 1000);
        for (bad, says) in [
            (
                "retention_seconds = 0",
                "store.retention_seconds: must be positive",
            ),
            (
                "retention_seconds = 31536000000",
                "store.retention_seconds: at most",
            ),
            ("prune_interval_ms = 0", "store.prune_interval_ms"),
            ("retention = \"30d\"", "retention"),
        ] {
            let e = load(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn parses_a_full_config() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mlgw.toml");
        std::fs::write(
            &p,
            r#"
listen = "127.0.0.1:6000"
data_dir = "/tmp/x"
default_target = "cpu"
[limits]
call_timeout_ms = 2000
[plugins]
mine = "plugins/mine.wasm"
[targets.cpu]
plugin = "local"
settings = { mlserver = "/opt/venv/bin/mlserver" }
[targets.cpu.grants.process]
programs = ["python3"]
[targets.other]
plugin = "mine"
"#,
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.default_target(), Some("cpu"));
        assert_eq!(c.limits.call_timeout_ms, 2000);
        assert_eq!(c.limits.memory_mib, 64);
        assert_eq!(c.plugins["mine"], dir.path().join("plugins/mine.wasm"));
        let g = c.targets["cpu"].grants.process.as_ref().unwrap();
        assert_eq!(g.programs, vec!["python3"]);
        assert!(c.targets["other"].grants.process.is_none());
    }

    #[test]
    fn unknown_plugin_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[targets.a]\nplugin = \"nope\"\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("targets.a.plugin"), "{e}");
    }

    #[test]
    fn route_policies_parse_and_their_mistakes_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            r#"
[targets.kserve]
plugin = "local"
[targets.kserve.routes]
hosts = ["*.ingress.example.com"]
cidrs = ["10.0.0.0/8"]
headers = ["X-Api-Key"]
allow_host_header = true
max_response_bytes = 1024
"#,
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        let r = &c.targets["kserve"].routes;
        assert_eq!(r.max_response_bytes, 1024);
        assert_eq!(r.request_timeout_ms, 60_000);
        // Listing hosts or ranges replaces the local plugin's loopback default.
        assert_eq!(
            r.allowed(c.runs_bundled_local(&c.targets["kserve"])),
            (
                vec!["*.ingress.example.com".to_string()],
                vec!["10.0.0.0/8".to_string()]
            )
        );
        let embedded = Config::embedded();
        let local = &embedded.targets["local"];
        assert!(embedded.runs_bundled_local(local));
        assert_eq!(
            local.routes.allowed(true).1,
            vec!["127.0.0.0/8".to_string(), "::1/128".to_string()]
        );

        std::fs::write(
            &p,
            "[targets.a]\nplugin = \"local\"\n[targets.a.routes]\ncidrs = [\"169.254.0.0/16\"]\n",
        )
        .unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("targets.a.routes.cidrs"), "{e}");
        std::fs::write(
            &p,
            "[targets.a]\nplugin = \"local\"\n[targets.a.routes]\nhost = [\"x\"]\n",
        )
        .unwrap();
        assert!(matches!(Config::load(&p), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[targets.a]\nplugin = \"local\"\ngrant = 1\n").unwrap();
        assert!(matches!(Config::load(&p), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn limits_are_checked_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        for (limits, key) in [
            ("reconcile_interval_ms = 0", "limits.reconcile_interval_ms"),
            (
                "reconcile_interval_ms = 3600001",
                "limits.reconcile_interval_ms",
            ),
            ("call_timeout_ms = 0", "limits.call_timeout_ms"),
            ("max_concurrent_calls = 0", "limits.max_concurrent_calls"),
        ] {
            std::fs::write(
                &p,
                format!("[limits]\n{limits}\n[targets.a]\nplugin = \"local\"\n"),
            )
            .unwrap();
            let e = Config::load(&p).unwrap_err().to_string();
            assert!(e.starts_with(&format!("config: {key}:")), "{limits}: {e}");
        }
        let mut c = Config::embedded();
        c.limits.reconcile_interval_ms = 1;
        c.check().unwrap();
    }

    #[test]
    fn the_artifacts_section_parses_and_its_mistakes_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let write = |artifacts: &str| {
            std::fs::write(
                &p,
                format!("[targets.a]\nplugin = \"local\"\n[artifacts]\n{artifacts}\n"),
            )
            .unwrap();
        };
        write(
            "store = \"s3\"\nmax_upload_bytes = 10\n[artifacts.s3]\nbucket = \"ml-art\"\nprefix = \"team/a\"\nendpoint_url = \"http://127.0.0.1:9000\"\nforce_path_style = true",
        );
        let c = Config::load(&p).unwrap();
        assert_eq!(c.artifacts.store, ArtifactStoreKind::S3);
        assert_eq!(c.artifacts.max_upload_bytes, 10);
        assert_eq!(c.artifacts.max_unpacked_bytes, 4 << 30);
        assert_eq!(c.artifacts.presign_max_seconds, 900);
        let s3 = c.artifacts.s3.as_ref().unwrap();
        assert_eq!(
            (s3.bucket.as_str(), s3.prefix.as_str()),
            ("ml-art", "team/a")
        );
        assert!(s3.force_path_style);
        assert_eq!(
            Config::embedded().artifacts.dir_root(Path::new("/d")),
            PathBuf::from("/d/artifacts")
        );
        for (artifacts, key) in [
            ("store = \"s3\"", "artifacts.s3:"),
            ("max_upload_bytes = 0", "artifacts.max_upload_bytes:"),
            (
                "presign_max_seconds = 604801",
                "artifacts.presign_max_seconds:",
            ),
            (
                "store = \"s3\"\nmax_upload_bytes = 6000000000\n[artifacts.s3]\nbucket = \"b-1\"",
                "artifacts.max_upload_bytes:",
            ),
            (
                "store = \"s3\"\n[artifacts.s3]\nbucket = \"Bad_Bucket\"",
                "artifacts.s3.bucket:",
            ),
            (
                "store = \"s3\"\n[artifacts.s3]\nbucket = \"b-1\"\nprefix = \"/a//b\"",
                "artifacts.s3.prefix:",
            ),
            (
                "store = \"s3\"\n[artifacts.s3]\nbucket = \"b-1\"\nendpoint_url = \"127.0.0.1:9000\"",
                "artifacts.s3.endpoint_url:",
            ),
        ] {
            write(artifacts);
            let e = Config::load(&p).unwrap_err().to_string();
            assert!(e.starts_with(&format!("config: {key}")), "{artifacts}: {e}");
        }
        for typo in [
            "stor = \"dir\"",
            "store = \"ftp\"",
            "[artifacts.s3]\nbuckt = \"b\"",
        ] {
            write(typo);
            assert!(
                matches!(Config::load(&p), Err(ConfigError::Parse { .. })),
                "{typo}"
            );
        }
    }

    #[test]
    fn the_sagemaker_grant_parses_and_its_mistakes_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let write = |grant: &str| {
            std::fs::write(
                &p,
                format!(
                    "[targets.sm]\nplugin = \"local\"\n[targets.sm.grants.sagemaker]\n{grant}\n"
                ),
            )
            .unwrap();
        };
        let role = "role_arn = \"arn:aws:iam::123456789012:role/mlgw-training\"";
        write(&format!(
            "{role}\nregion = \"eu-west-1\"\nendpoint_url = \"http://127.0.0.1:5000\"\n\
             input_prefixes = [\"s3://data/team-a/\"]\noutput_prefixes = [\"s3://models/team-a\"]\n\
             tags = {{ team = \"a\", cost-center = \"42\" }}\nkms_key_id = \"alias/mlgw\"\n\
             [targets.sm.grants.sagemaker.vpc]\nsubnets = [\"subnet-1\"]\nsecurity_group_ids = [\"sg-1\"]"
        ));
        let c = Config::load(&p).unwrap();
        let g = c.targets["sm"].grants.sagemaker.as_ref().unwrap();
        assert_eq!(g.region.as_deref(), Some("eu-west-1"));
        assert_eq!(g.input_prefixes, ["s3://data/team-a/"]);
        assert_eq!(g.tags["cost-center"], "42");
        assert_eq!(g.vpc.as_ref().unwrap().subnets, ["subnet-1"]);
        assert_eq!(
            c.targets["sm"].grants.names(),
            ["log".to_string(), "sagemaker".to_string()]
        );
        for (grant, key) in [
            ("", "missing field `role_arn`"),
            (
                "role_arn = \"arn:aws:iam::1234:role/x\"",
                "targets.sm.grants.sagemaker.role_arn:",
            ),
            (
                &format!("{role}\nregion = \"eu west\""),
                "targets.sm.grants.sagemaker.region:",
            ),
            (
                &format!("{role}\nendpoint_url = \"127.0.0.1:5000\""),
                "targets.sm.grants.sagemaker.endpoint_url:",
            ),
            (
                &format!("{role}\ninput_prefixes = [\"data/team-a/\"]"),
                "targets.sm.grants.sagemaker.input_prefixes:",
            ),
            (
                &format!("{role}\noutput_prefixes = [\"s3://b/a/../c/\"]"),
                "targets.sm.grants.sagemaker.output_prefixes:",
            ),
            (
                &format!("{role}\ntags = {{ \"mlgw:target\" = \"x\" }}"),
                "targets.sm.grants.sagemaker.tags:",
            ),
            (
                &format!(
                    "{role}\n[targets.sm.grants.sagemaker.vpc]\nsubnets = []\nsecurity_group_ids = [\"sg\"]"
                ),
                "targets.sm.grants.sagemaker.vpc.subnets:",
            ),
            (&format!("{role}\nrole = \"x\""), "unknown field `role`"),
        ] {
            write(grant);
            let e = Config::load(&p).unwrap_err().to_string();
            assert!(e.contains(key), "{grant}: {e}");
        }
    }

    #[test]
    fn target_names_must_be_nameable_in_requests() {
        let mut c = Config::embedded();
        let t = c.targets["local"].clone();
        c.targets.insert("t".repeat(65), t);
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("target name"), "{e}");
    }
}
