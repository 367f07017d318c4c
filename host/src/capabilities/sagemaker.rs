//! The `sagemaker` capability: Amazon SageMaker, bound by the target's grant to one account,
//! region and execution role. Plugins hand over typed records; the host checks them against
//! the grant before anything is sent (every resource a call names must be the call's own
//! backend name or that name plus a `-suffix`, S3 locations stay under the granted prefixes),
//! sets what a plugin may not choose (the execution role, the gateway's tags, the VPC and KMS
//! key), signs with the gateway's own credentials and maps AWS's answers onto the contract.
//!
//! The clients are built once per target from the standard AWS chain, on the same HTTP client
//! (hyper over rustls with ring) as the S3 artifact store; building them sends nothing, so
//! missing credentials never stop the gateway from starting: they show in the target's health.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_sagemaker::config::http::HttpResponse;
use aws_sdk_sagemaker::config::{Credentials, Region};
use aws_sdk_sagemaker::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sagemaker::types as sm;
use aws_smithy_http_client::tls;
use sha2::{Digest, Sha256};

use crate::config::SagemakerGrant;
use crate::contract::mlgw::backend::sagemaker::{
    self as wit, Channel, Endpoint, EndpointConfigRequest, LogEvent, LogEvents, ModelRequest,
    ProductionVariant, TrainingJob, TrainingJobRequest, VariantStatus,
};
use crate::contract::types::{BackendError, Denial, FieldError, KeyValue};

use super::CallIdentity;

/// SageMaker's own limit on resource names.
const MAX_NAME: usize = 63;
/// Where SageMaker writes training logs: one stream per instance, `<job>/algo-<n>-<epoch>`.
pub const TRAINING_LOG_GROUP: &str = "/aws/sagemaker/TrainingJobs";
/// FilterLogEvents takes at most this many events per request.
const MAX_LOG_EVENTS: u32 = 10_000;
/// One log call reads at most this many pages (CloudWatch may answer empty pages while it
/// searches), so a call stays bounded however much the job logged.
const MAX_LOG_REQUESTS: usize = 10;
/// Bytes of messages one page hands the plugin (at least one event is always returned).
const MAX_LOG_PAGE_BYTES: usize = 1 << 20;
/// Event ids a cursor remembers at its timestamp; past this many events in one millisecond the
/// cursor moves on to the next millisecond, dropping that millisecond's remaining events.
const MAX_CURSOR_IDS: usize = 128;
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// A health answer is reused this long: `mlgw targets` is cheap to call, AWS requests are not.
const HEALTH_TTL: Duration = Duration::from_secs(10);

pub struct SagemakerCapability {
    target: String,
    role_arn: String,
    input_prefixes: Vec<S3Prefix>,
    output_prefixes: Vec<S3Prefix>,
    /// The grant's own tags, added after the gateway's.
    tags: Vec<(String, String)>,
    vpc: Option<sm::VpcConfig>,
    kms_key_id: Option<String>,
    api: aws_sdk_sagemaker::Client,
    runtime: aws_sdk_sagemakerruntime::Client,
    logs: aws_sdk_cloudwatchlogs::Client,
    /// The last health answer and when it was had. An async lock, held while a probe is in
    /// flight, so whoever asks meanwhile waits for that probe's answer instead of sending one
    /// more (the start-up probe and the first `mlgw targets` are one request).
    health: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

fn denied(reason: String) -> BackendError {
    BackendError::Denied(Denial {
        capability: "sagemaker".into(),
        reason,
    })
}

fn invalid(field: &str, reason: impl Into<String>) -> BackendError {
    BackendError::InvalidSpec(FieldError {
        field: field.into(),
        reason: reason.into(),
    })
}

/// The HTTP client every AWS client of the gateway uses: hyper 1 over rustls with ring, which
/// kube's client already brings, so no second TLS or crypto stack is built.
fn http_client() -> aws_sdk_sagemaker::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

// ---------------------------------------------------------------------------------------------
// Scope: names and S3 locations.

/// Whether SageMaker takes `name`: `^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Whether `name` belongs to the resource whose backend name is `backend`: the name itself, or
/// it followed by `-` and more. Backend names are `mlgw-` and letters and digits, so the
/// hyphen is what keeps one resource's suffixed names from ever being another's backend name
/// (`mlgw-ab` plus `c` would be the backend name of `ab`'s neighbour `abc`).
pub fn name_in_scope(backend: &str, name: &str) -> bool {
    !backend.is_empty()
        && name
            .strip_prefix(backend)
            .is_some_and(|rest| rest.is_empty() || (rest.len() > 1 && rest.starts_with('-')))
}

/// A resource name a call may use, checked before any request is sent: another resource's name
/// is `denied`, a name SageMaker would refuse is `invalid-spec` on `field`.
fn check_name(id: &CallIdentity, field: &str, name: &str) -> Result<(), BackendError> {
    if id.resource_id.is_empty() {
        return Err(denied(format!(
            "this call concerns no job or endpoint, so it may name no SageMaker resource \
             ({field} {name:?})"
        )));
    }
    let backend = &id.backend_name;
    if !name_in_scope(backend, name) {
        return Err(denied(format!(
            "{field} {name:?} is not this call's resource: names must be {backend} or \
             {backend}-<suffix>"
        )));
    }
    if !valid_name(name) {
        return Err(invalid(
            field,
            format!(
                "{name:?} is not a SageMaker name: 1-{MAX_NAME} letters, digits and hyphens, \
                 starting and ending with a letter or digit"
            ),
        ));
    }
    Ok(())
}

/// A granted S3 location: a bucket and a key prefix that is empty or ends with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct S3Prefix {
    bucket: String,
    key: String,
}

impl S3Prefix {
    fn parse(p: &str) -> Option<Self> {
        let rest = p.strip_prefix("s3://")?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let key = key.trim_end_matches('/');
        Some(Self {
            bucket: bucket.to_string(),
            key: if key.is_empty() {
                String::new()
            } else {
                format!("{key}/")
            },
        })
    }

    /// Whole path segments: `s3://b/team-a/` holds `s3://b/team-a` and `s3://b/team-a/x`,
    /// never `s3://b/team-ab`.
    fn holds(&self, bucket: &str, key: &str) -> bool {
        bucket == self.bucket
            && (key.starts_with(&self.key)
                || (!self.key.is_empty() && key == &self.key[..self.key.len() - 1]))
    }
}

impl std::fmt::Display for S3Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Bucket and key of an `s3://` URI a plugin gave. S3 takes `..` in a key literally, but
/// whatever reads the URI next may not, so such segments are refused rather than judged.
fn parse_s3_uri<'a>(field: &str, uri: &'a str) -> Result<(&'a str, &'a str), BackendError> {
    let Some(rest) = uri.strip_prefix("s3://") else {
        return Err(invalid(
            field,
            format!("{uri:?} is not an s3:// URI (SageMaker reads and writes S3 only)"),
        ));
    };
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid(field, format!("{uri:?} names no bucket")));
    }
    let segments = key.strip_suffix('/').unwrap_or(key);
    if uri.chars().any(char::is_control)
        || (!segments.is_empty()
            && segments
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == ".."))
    {
        return Err(invalid(
            field,
            format!("{uri:?}: key segments must not be empty, \".\" or \"..\""),
        ));
    }
    Ok((bucket, key))
}

/// Which of the grant's prefix lists a location must fall under.
#[derive(Clone, Copy)]
enum Within {
    Inputs,
    Outputs,
    Either,
}

// ---------------------------------------------------------------------------------------------
// AWS errors in the contract's terms.

/// An AWS answer as the contract's error. `op` names the operation for the message.
pub fn map_error<E>(op: &str, e: SdkError<E, HttpResponse>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let err = se.err();
            classify(
                op,
                status,
                err.code().unwrap_or_default(),
                err.message().unwrap_or_default(),
            )
        }
        // Not sent, or no answer: no route to AWS, no credentials to sign with, a timeout.
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            let text = one_line(&e);
            // The SDK reports a credential chain that found nothing as a dispatch failure whose
            // only mark is its text; the operator's fix differs, so it is said apart.
            if text.contains("no credentials") || text.contains("credential provider") {
                BackendError::Unavailable(format!(
                    "{op}: the gateway has no AWS credentials, nothing was sent: {text}"
                ))
            } else {
                BackendError::Unavailable(format!("{op}: SageMaker not reached: {text}"))
            }
        }
        // An answer that is no AWS answer (a proxy's error page, say): a 5xx is worth retrying.
        SdkError::ResponseError(r) if r.raw().status().is_server_error() => {
            BackendError::Unavailable(format!("{op}: {}", one_line(&e)))
        }
        _ => BackendError::Internal(format!("{op}: {}", one_line(&e))),
    }
}

/// The SDK's error and its causes, on one line and without their debug dump: it ends up in
/// health messages and table cells.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut at = Some(e);
    while let Some(e) = at {
        parts.push(e.to_string());
        at = e.source();
    }
    parts
        .join(": ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// An AWS error code, HTTP status and message as the contract's error.
fn classify(op: &str, status: u16, code: &str, message: &str) -> BackendError {
    let text = || format!("{op}: {code}: {message}");
    match code {
        // SageMaker answers an unknown resource with a ValidationException saying so.
        "ValidationException" | "ValidationError"
            if message.contains("Could not find") || message.contains("does not exist") =>
        {
            BackendError::NotFound(text())
        }
        "ValidationException" | "ValidationError" | "InvalidParameterException" => {
            invalid(&field_in_message(message).unwrap_or_default(), message)
        }
        "ResourceInUse" | "ConflictException" => BackendError::Conflict(text()),
        "ResourceNotFound" | "ResourceNotFoundException" => BackendError::NotFound(text()),
        "AccessDeniedException" | "AccessDenied" => denied(text()),
        // Bad, expired or unknown credentials: the gateway's to fix, so the work waits (the
        // reconciler backs off) instead of failing for good.
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "ExpiredTokenException"
        | "ExpiredToken"
        | "IncompleteSignature"
        | "MissingAuthenticationToken" => BackendError::Unavailable(format!(
            "{op}: AWS refused the gateway's credentials ({code}): {message}"
        )),
        "ResourceLimitExceeded" | "LimitExceededException" => BackendError::Unavailable(format!(
            "{op}: a SageMaker quota is reached{}: {message}",
            quota_in_message(message)
                .map(|q| format!(" ({q})"))
                .unwrap_or_default()
        )),
        "ThrottlingException"
        | "Throttling"
        | "ThrottledException"
        | "TooManyRequestsException"
        | "RequestLimitExceeded" => BackendError::Throttled(text()),
        "ServiceUnavailable" | "ServiceUnavailableException" | "InternalFailure" => {
            BackendError::Unavailable(text())
        }
        _ if status == 429 => BackendError::Throttled(text()),
        _ if status >= 500 => BackendError::Unavailable(text()),
        _ if status == 403 => denied(text()),
        _ => BackendError::Internal(format!("{} (HTTP {status})", text())),
    }
}

/// The member AWS's validation message names: `Value 'x' at 'resourceConfig.instanceType'
/// failed to satisfy constraint: ...` gives `resourceConfig.instanceType`.
fn field_in_message(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("' at '")?;
    let field = rest.split('\'').next()?;
    (!field.is_empty()).then(|| field.to_string())
}

/// The quota a ResourceLimitExceeded message names: `The account-level service limit
/// 'ml.p3.2xlarge for training job usage' is 0 Instances, ...`.
fn quota_in_message(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("limit '")?;
    let quota = rest.split('\'').next()?;
    (!quota.is_empty()).then(|| format!("quota '{quota}'"))
}

/// A contract error as one line, for health messages.
fn describe(e: &BackendError) -> String {
    match e {
        BackendError::InvalidSpec(f) => format!("{}: {}", f.field, f.reason),
        BackendError::Denied(d) => d.reason.clone(),
        BackendError::NotFound(m)
        | BackendError::Unavailable(m)
        | BackendError::Throttled(m)
        | BackendError::Conflict(m)
        | BackendError::Unsupported(m)
        | BackendError::Internal(m) => m.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Training logs: the cursor.

/// Where a log read resumes: after every event before `ts` and after the events at `ts`
/// whose ids (hashed) are listed. An event that arrives later at `ts` or after it, in any of
/// the job's streams, is still ahead of the cursor, so a followed log picks it up; only an
/// event that arrives with a timestamp before `ts` is never seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCursor {
    ts: Option<i64>,
    seen: BTreeSet<String>,
}

/// One log event as CloudWatch gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub id: String,
    pub ts: i64,
    pub stream: String,
    pub message: String,
}

fn id_hash(id: &str) -> String {
    hex::encode(&Sha256::digest(id.as_bytes())[..8])
}

impl LogCursor {
    pub fn parse(text: Option<&str>) -> Result<Self, BackendError> {
        let Some(text) = text.filter(|t| !t.is_empty()) else {
            return Ok(Self::default());
        };
        let bad = || {
            invalid(
                "cursor",
                "not a cursor this capability returned (pass back next-cursor as it is)",
            )
        };
        let rest = text.strip_prefix("v1:").ok_or_else(bad)?;
        let (ts, ids) = rest.split_once(':').ok_or_else(bad)?;
        let ts: i64 = ts.parse().map_err(|_| bad())?;
        let seen: BTreeSet<String> = ids
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                (s.len() == 16 && s.bytes().all(|c| c.is_ascii_hexdigit()))
                    .then(|| s.to_string())
                    .ok_or_else(bad)
            })
            .collect::<Result<_, _>>()?;
        if seen.len() > MAX_CURSOR_IDS {
            return Err(bad());
        }
        Ok(Self { ts: Some(ts), seen })
    }

    pub fn encode(&self) -> String {
        match self.ts {
            None => String::new(),
            Some(ts) => format!(
                "v1:{ts}:{}",
                self.seen.iter().cloned().collect::<Vec<_>>().join(",")
            ),
        }
    }

    /// Where the read starts: CloudWatch's startTime is inclusive.
    fn start_time(&self) -> Option<i64> {
        self.ts
    }

    fn is_new(&self, e: &RawEvent) -> bool {
        match self.ts {
            None => true,
            Some(ts) => e.ts > ts || (e.ts == ts && !self.seen.contains(&id_hash(&e.id))),
        }
    }

    /// The events after this cursor among `found` (those of other streams left out), merged in
    /// time order, at most `limit` of them and about `max_bytes` of messages; and the cursor
    /// after them.
    pub fn page(
        &self,
        found: Vec<RawEvent>,
        stream_prefix: &str,
        limit: usize,
        max_bytes: usize,
    ) -> (Vec<RawEvent>, LogCursor) {
        let mut ids = HashSet::new();
        let mut events: Vec<RawEvent> = found
            .into_iter()
            .filter(|e| e.stream.starts_with(stream_prefix) && self.is_new(e))
            .filter(|e| ids.insert(e.id.clone()))
            .collect();
        events.sort_by(|a, b| (a.ts, &a.stream, &a.id).cmp(&(b.ts, &b.stream, &b.id)));
        let mut bytes = 0;
        let mut taken = 0;
        for e in events.iter().take(limit) {
            bytes += e.message.len();
            if taken > 0 && bytes > max_bytes {
                break;
            }
            taken += 1;
        }
        events.truncate(taken);
        let Some(last) = events.last() else {
            return (events, self.clone());
        };
        let mut seen = if self.ts == Some(last.ts) {
            self.seen.clone()
        } else {
            BTreeSet::new()
        };
        seen.extend(
            events
                .iter()
                .filter(|e| e.ts == last.ts)
                .map(|e| id_hash(&e.id)),
        );
        let next = if seen.len() > MAX_CURSOR_IDS {
            LogCursor {
                ts: Some(last.ts + 1),
                seen: BTreeSet::new(),
            }
        } else {
            LogCursor {
                ts: Some(last.ts),
                seen,
            }
        };
        (events, next)
    }

    /// How many events a read must ask for to be sure of `limit` new ones.
    fn ask_for(&self, limit: usize) -> usize {
        limit + self.seen.len()
    }
}

// ---------------------------------------------------------------------------------------------

fn millis(t: Option<&aws_sdk_sagemaker::primitives::DateTime>) -> Option<u64> {
    t.and_then(|t| t.to_millis().ok())
        .map(|ms| ms.max(0) as u64)
}

fn count(field: &str, n: u32) -> Result<i32, BackendError> {
    i32::try_from(n).map_err(|_| invalid(field, format!("{n} is too large")))
}

/// Key-value pairs as a map, refusing a key given twice (one of them would be dropped).
fn map_of(field: &str, kvs: Vec<KeyValue>) -> Result<HashMap<String, String>, BackendError> {
    let mut map = HashMap::with_capacity(kvs.len());
    for (i, kv) in kvs.into_iter().enumerate() {
        if map.contains_key(&kv.key) {
            return Err(invalid(
                &format!("{field}[{i}].key"),
                format!("{:?} is given more than once", kv.key),
            ));
        }
        map.insert(kv.key, kv.value);
    }
    Ok(map)
}

fn one_of<'a>(
    field: &str,
    value: &'a str,
    default: &'a str,
    allowed: &[&str],
) -> Result<&'a str, BackendError> {
    let v = if value.is_empty() { default } else { value };
    if allowed.contains(&v) {
        Ok(v)
    } else {
        Err(invalid(
            field,
            format!("{v:?} is not one of {}", allowed.join(", ")),
        ))
    }
}

fn weight(w: Option<f32>) -> u32 {
    w.map_or(0, |w| w.max(0.0).round() as u32)
}

impl SagemakerCapability {
    /// Clients for the grant, with credentials from the standard AWS chain. Sends nothing.
    pub async fn connect(target: &str, grant: &SagemakerGrant) -> anyhow::Result<Self> {
        Self::load(target, grant, None).await
    }

    /// As `connect`, with fixed credentials instead of the chain's (tests and tools).
    pub async fn connect_with(
        target: &str,
        grant: &SagemakerGrant,
        credentials: Credentials,
    ) -> anyhow::Result<Self> {
        Self::load(target, grant, Some(credentials)).await
    }

    async fn load(
        target: &str,
        grant: &SagemakerGrant,
        credentials: Option<Credentials>,
    ) -> anyhow::Result<Self> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client());
        if let Some(r) = &grant.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(c) = credentials {
            loader = loader.credentials_provider(c);
        }
        Self::from_sdk_config(target, grant, &loader.load().await)
    }

    /// Clients from a prepared AWS config; the grant's region and endpoints win over its own.
    pub fn from_sdk_config(
        target: &str,
        grant: &SagemakerGrant,
        sdk: &SdkConfig,
    ) -> anyhow::Result<Self> {
        let region = grant
            .region
            .clone()
            .map(Region::new)
            .or_else(|| sdk.region().cloned())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "targets.{target}.grants.sagemaker.region: no region in the grant or the AWS \
                     chain (AWS_REGION, the profile); SageMaker needs one"
                )
            })?;
        let prefixes = |list: &[String]| -> anyhow::Result<Vec<S3Prefix>> {
            list.iter()
                .map(|p| {
                    S3Prefix::parse(p)
                        .ok_or_else(|| anyhow::anyhow!("{p:?} is not an s3:// prefix"))
                })
                .collect()
        };
        let api_endpoint = grant.endpoint_url.clone();
        let runtime_endpoint = grant
            .runtime_endpoint_url
            .clone()
            .or_else(|| api_endpoint.clone());
        let logs_endpoint = grant
            .logs_endpoint_url
            .clone()
            .or_else(|| api_endpoint.clone());
        let api = {
            let mut b = aws_sdk_sagemaker::config::Builder::from(sdk).region(region.clone());
            if let Some(e) = &api_endpoint {
                b = b.endpoint_url(e);
            }
            aws_sdk_sagemaker::Client::from_conf(b.build())
        };
        let runtime = {
            let mut b = aws_sdk_sagemakerruntime::config::Builder::from(sdk).region(region.clone());
            if let Some(e) = &runtime_endpoint {
                b = b.endpoint_url(e);
            }
            aws_sdk_sagemakerruntime::Client::from_conf(b.build())
        };
        let logs = {
            let mut b = aws_sdk_cloudwatchlogs::config::Builder::from(sdk).region(region);
            if let Some(e) = &logs_endpoint {
                b = b.endpoint_url(e);
            }
            aws_sdk_cloudwatchlogs::Client::from_conf(b.build())
        };
        Ok(Self {
            target: target.into(),
            role_arn: grant.role_arn.clone(),
            input_prefixes: prefixes(&grant.input_prefixes)?,
            output_prefixes: prefixes(&grant.output_prefixes)?,
            tags: grant
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            vpc: grant.vpc.as_ref().map(|v| {
                sm::VpcConfig::builder()
                    .set_subnets(Some(v.subnets.clone()))
                    .set_security_group_ids(Some(v.security_group_ids.clone()))
                    .build()
            }),
            kms_key_id: grant.kms_key_id.clone(),
            api,
            runtime,
            logs,
            health: tokio::sync::Mutex::new(None),
        })
    }

    /// The runtime client, for the data plane's InvokeEndpoint.
    pub fn runtime_client(&self) -> &aws_sdk_sagemakerruntime::Client {
        &self.runtime
    }

    /// The SageMaker client itself, unchecked: for measuring the capability against it.
    pub fn api_client(&self) -> &aws_sdk_sagemaker::Client {
        &self.api
    }

    /// Whether the gateway can use SageMaker with its credentials: one cheap, bounded
    /// ListTrainingJobs. The reason is AWS's own (refused credentials, none found, no route).
    pub async fn health(&self) -> Result<(), String> {
        let mut last = self.health.lock().await;
        if let Some((at, answer)) = &*last
            && at.elapsed() < HEALTH_TTL
        {
            return answer.clone();
        }
        // One attempt: a probe reports how things are now, and the client's retries (three
        // attempts, a second or more of backoff between them) kept every TargetService.List
        // waiting on an unreachable endpoint. The next probe, after HEALTH_TTL, asks again.
        let once = aws_sdk_sagemaker::config::Builder::default()
            .retry_config(aws_sdk_sagemaker::config::retry::RetryConfig::disabled());
        let answer = match tokio::time::timeout(
            HEALTH_TIMEOUT,
            self.api
                .list_training_jobs()
                .max_results(1)
                .customize()
                .config_override(once)
                .send(),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "sagemaker: {}",
                describe(&map_error("ListTrainingJobs", e))
            )),
            Err(_) => Err(format!(
                "sagemaker: ListTrainingJobs got no answer within {} s",
                HEALTH_TIMEOUT.as_secs()
            )),
        };
        *last = Some((Instant::now(), answer.clone()));
        answer
    }

    fn key(&self, k: &str) -> String {
        format!("targets.{}.grants.sagemaker.{k}", self.target)
    }

    /// An S3 location a plugin gave, under the grant's prefixes for `within`.
    fn check_s3(&self, field: &str, uri: &str, within: Within) -> Result<(), BackendError> {
        let (bucket, key) = parse_s3_uri(field, uri)?;
        let (lists, keys): (Vec<&[S3Prefix]>, &str) = match within {
            Within::Inputs => (vec![&self.input_prefixes], "input_prefixes"),
            Within::Outputs => (vec![&self.output_prefixes], "output_prefixes"),
            Within::Either => (
                vec![&self.input_prefixes, &self.output_prefixes],
                "input_prefixes or output_prefixes",
            ),
        };
        if lists.iter().any(|l| l.iter().any(|p| p.holds(bucket, key))) {
            return Ok(());
        }
        let granted: Vec<String> = lists
            .iter()
            .flat_map(|l| l.iter().map(|p| p.to_string()))
            .collect();
        Err(denied(format!(
            "{field} {uri} is outside the S3 locations target {} may use ([{}]; {})",
            self.target,
            granted.join(", "),
            match within {
                Within::Either => format!(
                    "{} or {}",
                    self.key("input_prefixes"),
                    self.key("output_prefixes")
                ),
                _ => self.key(keys),
            }
        )))
    }

    /// The gateway's tags first (what made it, for whom, under which target), then the grant's.
    fn tags(&self, id: &CallIdentity) -> Vec<sm::Tag> {
        [
            ("mlgw:resource-id", id.resource_id.as_str()),
            ("mlgw:tenant", id.tenant.as_str()),
            ("mlgw:target", self.target.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(self.tags.iter().cloned())
        .map(|(k, v)| sm::Tag::builder().key(k).value(v).build())
        .collect()
    }

    fn channel(&self, i: usize, c: Channel) -> Result<sm::Channel, BackendError> {
        let field = |f: &str| format!("channels[{i}].{f}");
        if c.name.is_empty() {
            return Err(invalid(&field("name"), "must not be empty"));
        }
        self.check_s3(&field("s3-uri"), &c.s3_uri, Within::Inputs)?;
        let data_type = one_of(
            &field("s3-data-type"),
            &c.s3_data_type,
            "S3Prefix",
            &["S3Prefix", "ManifestFile"],
        )?;
        let mode = one_of(
            &field("input-mode"),
            &c.input_mode,
            "File",
            &["File", "Pipe", "FastFile"],
        )?;
        let distribution = one_of(
            &field("distribution"),
            &c.distribution,
            "FullyReplicated",
            &["FullyReplicated", "ShardedByS3Key"],
        )?;
        let source = sm::S3DataSource::builder()
            .s3_uri(c.s3_uri)
            .s3_data_type(sm::S3DataType::from(data_type))
            .s3_data_distribution_type(sm::S3DataDistribution::from(distribution))
            .build();
        Ok(sm::Channel::builder()
            .channel_name(c.name)
            .data_source(sm::DataSource::builder().s3_data_source(source).build())
            .input_mode(sm::TrainingInputMode::from(mode))
            .set_content_type(c.content_type)
            .build())
    }

    pub async fn create_training_job(
        &self,
        id: &CallIdentity,
        req: TrainingJobRequest,
    ) -> Result<String, BackendError> {
        check_name(id, "name", &req.name)?;
        self.check_s3("output-path", &req.output_path, Within::Outputs)?;
        if let Some(c) = &req.checkpoint_s3_uri {
            self.check_s3("checkpoint-s3-uri", c, Within::Outputs)?;
        }
        let channels = req
            .channels
            .into_iter()
            .enumerate()
            .map(|(i, c)| self.channel(i, c))
            .collect::<Result<Vec<_>, _>>()?;
        let mut names = HashSet::new();
        for (i, c) in channels.iter().enumerate() {
            if !names.insert(c.channel_name().unwrap_or_default()) {
                return Err(invalid(
                    &format!("channels[{i}].name"),
                    "a channel of that name is given already",
                ));
            }
        }
        let hyperparameters = map_of("hyperparameters", req.hyperparameters)?;
        let environment = map_of("environment", req.environment)?;
        let algorithm = sm::AlgorithmSpecification::builder()
            .training_image(req.image)
            .training_input_mode(sm::TrainingInputMode::File)
            .set_container_entrypoint((!req.entrypoint.is_empty()).then_some(req.entrypoint))
            .set_container_arguments((!req.arguments.is_empty()).then_some(req.arguments))
            .build();
        let output = sm::OutputDataConfig::builder()
            .s3_output_path(req.output_path)
            .set_kms_key_id(self.kms_key_id.clone())
            .build();
        let resources = sm::ResourceConfig::builder()
            .instance_type(sm::TrainingInstanceType::from(req.instance_type.as_str()))
            .instance_count(count("instance-count", req.instance_count)?)
            .volume_size_in_gb(count("volume-size-gb", req.volume_size_gb)?)
            .set_volume_kms_key_id(self.kms_key_id.clone())
            .build();
        let stopping = sm::StoppingCondition::builder()
            .max_runtime_in_seconds(count("max-runtime-seconds", req.max_runtime_seconds)?)
            .set_max_wait_time_in_seconds(
                req.spot_max_wait_seconds
                    .map(|s| count("spot-max-wait-seconds", s))
                    .transpose()?,
            )
            .build();
        let out = self
            .api
            .create_training_job()
            .training_job_name(&req.name)
            .algorithm_specification(algorithm)
            .role_arn(&self.role_arn)
            .set_hyper_parameters((!hyperparameters.is_empty()).then_some(hyperparameters))
            .set_environment((!environment.is_empty()).then_some(environment))
            .set_input_data_config((!channels.is_empty()).then_some(channels))
            .output_data_config(output)
            .resource_config(resources)
            .stopping_condition(stopping)
            .set_enable_managed_spot_training(req.spot_max_wait_seconds.map(|_| true))
            .set_checkpoint_config(
                req.checkpoint_s3_uri
                    .map(|u| sm::CheckpointConfig::builder().s3_uri(u).build()),
            )
            .set_vpc_config(self.vpc.clone())
            .set_tags(Some(self.tags(id)))
            .send()
            .await
            .map_err(|e| map_error("CreateTrainingJob", e))?;
        Ok(out.training_job_arn().unwrap_or_default().to_string())
    }

    pub async fn describe_training_job(
        &self,
        id: &CallIdentity,
        name: &str,
    ) -> Result<TrainingJob, BackendError> {
        check_name(id, "name", name)?;
        let out = self
            .api
            .describe_training_job()
            .training_job_name(name)
            .send()
            .await
            .map_err(|e| map_error("DescribeTrainingJob", e))?;
        Ok(TrainingJob {
            name: out.training_job_name().unwrap_or(name).to_string(),
            arn: out.training_job_arn().unwrap_or_default().to_string(),
            status: out
                .training_job_status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            secondary_status: out
                .secondary_status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            failure_reason: out.failure_reason().map(String::from),
            model_artifacts: out
                .model_artifacts()
                .and_then(|m| m.s3_model_artifacts())
                .map(String::from),
            role_arn: out.role_arn().unwrap_or_default().to_string(),
            created_ms: millis(out.creation_time()).unwrap_or(0),
            ended_ms: millis(out.training_end_time()),
        })
    }

    pub async fn stop_training_job(
        &self,
        id: &CallIdentity,
        name: &str,
    ) -> Result<(), BackendError> {
        check_name(id, "name", name)?;
        self.api
            .stop_training_job()
            .training_job_name(name)
            .send()
            .await
            .map_err(|e| map_error("StopTrainingJob", e))?;
        Ok(())
    }

    /// The job's log events after `cursor`: every stream of the job (one per instance) merged
    /// in time order. A job that has not logged yet has an empty page and the same cursor.
    pub async fn training_job_logs(
        &self,
        id: &CallIdentity,
        name: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<LogEvents, BackendError> {
        check_name(id, "name", name)?;
        if limit == 0 {
            return Err(invalid("limit", "must be at least 1"));
        }
        let cursor = LogCursor::parse(cursor)?;
        let limit = limit.min(MAX_LOG_EVENTS) as usize;
        let prefix = format!("{name}/");
        let ask = cursor.ask_for(limit).min(MAX_LOG_EVENTS as usize) as i32;
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        // FilterLogEvents answers every matching stream interleaved in time order, so the
        // pages read so far hold the earliest new events: reading stops once they are enough.
        for _ in 0..MAX_LOG_REQUESTS {
            let res = self
                .logs
                .filter_log_events()
                .log_group_name(TRAINING_LOG_GROUP)
                .log_stream_name_prefix(&prefix)
                .set_start_time(cursor.start_time())
                .limit(ask)
                .set_next_token(token.take())
                .send()
                .await;
            let out = match res {
                Ok(out) => out,
                // No job of the account has logged yet.
                Err(SdkError::ServiceError(se)) if se.err().is_resource_not_found_exception() => {
                    break;
                }
                Err(e) => return Err(map_error("FilterLogEvents", e)),
            };
            found.extend(out.events().iter().filter_map(|e| {
                Some(RawEvent {
                    id: e.event_id()?.to_string(),
                    ts: e.timestamp()?,
                    stream: e.log_stream_name()?.to_string(),
                    message: e.message().unwrap_or_default().to_string(),
                })
            }));
            let fresh = found
                .iter()
                .filter(|e| e.stream.starts_with(&prefix) && cursor.is_new(e))
                .count();
            match out.next_token() {
                Some(t) if fresh < limit && !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        let (events, next) = cursor.page(found, &prefix, limit, MAX_LOG_PAGE_BYTES);
        Ok(LogEvents {
            events: events
                .into_iter()
                .map(|e| LogEvent {
                    timestamp_ms: e.ts.max(0) as u64,
                    log_stream: e.stream,
                    message: e.message,
                })
                .collect(),
            next_cursor: next.encode(),
        })
    }

    pub async fn create_model(
        &self,
        id: &CallIdentity,
        req: ModelRequest,
    ) -> Result<String, BackendError> {
        check_name(id, "name", &req.name)?;
        if let Some(u) = &req.model_data_url {
            self.check_s3("model-data-url", u, Within::Either)?;
        }
        let environment = map_of("environment", req.environment)?;
        let container = sm::ContainerDefinition::builder()
            .image(req.image)
            .set_model_data_url(req.model_data_url)
            .set_environment((!environment.is_empty()).then_some(environment))
            .build();
        let out = self
            .api
            .create_model()
            .model_name(&req.name)
            .execution_role_arn(&self.role_arn)
            .primary_container(container)
            .set_vpc_config(self.vpc.clone())
            .set_tags(Some(self.tags(id)))
            .send()
            .await
            .map_err(|e| map_error("CreateModel", e))?;
        Ok(out.model_arn().unwrap_or_default().to_string())
    }

    pub async fn delete_model(&self, id: &CallIdentity, name: &str) -> Result<(), BackendError> {
        check_name(id, "name", name)?;
        self.api
            .delete_model()
            .model_name(name)
            .send()
            .await
            .map_err(|e| map_error("DeleteModel", e))?;
        Ok(())
    }

    pub async fn create_endpoint_config(
        &self,
        id: &CallIdentity,
        req: EndpointConfigRequest,
    ) -> Result<String, BackendError> {
        check_name(id, "name", &req.name)?;
        if req.variants.is_empty() {
            return Err(invalid("variants", "at least one production variant"));
        }
        let mut variants = Vec::with_capacity(req.variants.len());
        for (i, v) in req.variants.into_iter().enumerate() {
            let field = |f: &str| format!("variants[{i}].{f}");
            // A config serves models; one of another resource's would serve that resource.
            check_name(id, &field("model-name"), &v.model_name)?;
            variants.push(
                sm::ProductionVariant::builder()
                    .variant_name(v.variant_name)
                    .model_name(v.model_name)
                    .instance_type(sm::ProductionVariantInstanceType::from(
                        v.instance_type.as_str(),
                    ))
                    .initial_instance_count(count(
                        &field("initial-instance-count"),
                        v.initial_instance_count,
                    )?)
                    .initial_variant_weight(v.initial_weight as f32)
                    .build(),
            );
        }
        let out = self
            .api
            .create_endpoint_config()
            .endpoint_config_name(&req.name)
            .set_production_variants(Some(variants))
            .set_kms_key_id(self.kms_key_id.clone())
            .set_tags(Some(self.tags(id)))
            .send()
            .await
            .map_err(|e| map_error("CreateEndpointConfig", e))?;
        Ok(out.endpoint_config_arn().unwrap_or_default().to_string())
    }

    pub async fn describe_endpoint_config(
        &self,
        id: &CallIdentity,
        name: &str,
    ) -> Result<Vec<ProductionVariant>, BackendError> {
        check_name(id, "name", name)?;
        let out = self
            .api
            .describe_endpoint_config()
            .endpoint_config_name(name)
            .send()
            .await
            .map_err(|e| map_error("DescribeEndpointConfig", e))?;
        Ok(out
            .production_variants()
            .iter()
            .map(|v| ProductionVariant {
                variant_name: v.variant_name().unwrap_or_default().to_string(),
                model_name: v.model_name().unwrap_or_default().to_string(),
                instance_type: v
                    .instance_type()
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_default(),
                initial_instance_count: v.initial_instance_count().unwrap_or(0).max(0) as u32,
                initial_weight: weight(v.initial_variant_weight()),
            })
            .collect())
    }

    pub async fn delete_endpoint_config(
        &self,
        id: &CallIdentity,
        name: &str,
    ) -> Result<(), BackendError> {
        check_name(id, "name", name)?;
        self.api
            .delete_endpoint_config()
            .endpoint_config_name(name)
            .send()
            .await
            .map_err(|e| map_error("DeleteEndpointConfig", e))?;
        Ok(())
    }

    pub async fn create_endpoint(
        &self,
        id: &CallIdentity,
        name: &str,
        config_name: &str,
    ) -> Result<String, BackendError> {
        check_name(id, "name", name)?;
        check_name(id, "config-name", config_name)?;
        let out = self
            .api
            .create_endpoint()
            .endpoint_name(name)
            .endpoint_config_name(config_name)
            .set_tags(Some(self.tags(id)))
            .send()
            .await
            .map_err(|e| map_error("CreateEndpoint", e))?;
        Ok(out.endpoint_arn().unwrap_or_default().to_string())
    }

    pub async fn describe_endpoint(
        &self,
        id: &CallIdentity,
        name: &str,
    ) -> Result<Endpoint, BackendError> {
        check_name(id, "name", name)?;
        let out = self
            .api
            .describe_endpoint()
            .endpoint_name(name)
            .send()
            .await
            .map_err(|e| map_error("DescribeEndpoint", e))?;
        Ok(Endpoint {
            name: out.endpoint_name().unwrap_or(name).to_string(),
            arn: out.endpoint_arn().unwrap_or_default().to_string(),
            status: out
                .endpoint_status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            failure_reason: out.failure_reason().map(String::from),
            config_name: out.endpoint_config_name().unwrap_or_default().to_string(),
            variants: out
                .production_variants()
                .iter()
                .map(|v| VariantStatus {
                    variant_name: v.variant_name().unwrap_or_default().to_string(),
                    current_weight: weight(v.current_weight()),
                    desired_weight: weight(v.desired_weight()),
                    current_instance_count: v.current_instance_count().unwrap_or(0).max(0) as u32,
                })
                .collect(),
        })
    }

    pub async fn update_endpoint(
        &self,
        id: &CallIdentity,
        name: &str,
        config_name: &str,
    ) -> Result<(), BackendError> {
        check_name(id, "name", name)?;
        check_name(id, "config-name", config_name)?;
        self.api
            .update_endpoint()
            .endpoint_name(name)
            .endpoint_config_name(config_name)
            .send()
            .await
            .map_err(|e| map_error("UpdateEndpoint", e))?;
        Ok(())
    }

    pub async fn delete_endpoint(&self, id: &CallIdentity, name: &str) -> Result<(), BackendError> {
        check_name(id, "name", name)?;
        self.api
            .delete_endpoint()
            .endpoint_name(name)
            .send()
            .await
            .map_err(|e| map_error("DeleteEndpoint", e))?;
        Ok(())
    }
}

/// The capability as one call's Store sees it: granted or not, and for which resource.
pub struct SagemakerCall {
    target: std::sync::Arc<str>,
    cap: Option<std::sync::Arc<SagemakerCapability>>,
    id: CallIdentity,
}

impl SagemakerCall {
    pub fn new(
        target: std::sync::Arc<str>,
        cap: Option<std::sync::Arc<SagemakerCapability>>,
        id: CallIdentity,
    ) -> Self {
        Self { target, cap, id }
    }

    fn granted(&self) -> Result<std::sync::Arc<SagemakerCapability>, BackendError> {
        self.cap.clone().ok_or_else(|| {
            denied(format!(
                "target {} is not granted the sagemaker capability",
                self.target
            ))
        })
    }
}

/// One granted call: the capability's answer, or `denied` without it.
macro_rules! granted {
    ($self:ident, $cap:ident => $call:expr) => {
        Ok(match $self.granted() {
            Ok($cap) => $call.await,
            Err(e) => Err(e),
        })
    };
}

impl wit::Host for SagemakerCall {
    async fn create_training_job(
        &mut self,
        req: TrainingJobRequest,
    ) -> wasmtime::Result<Result<String, BackendError>> {
        granted!(self, c => c.create_training_job(&self.id, req))
    }

    async fn describe_training_job(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<TrainingJob, BackendError>> {
        granted!(self, c => c.describe_training_job(&self.id, &name))
    }

    async fn stop_training_job(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<(), BackendError>> {
        granted!(self, c => c.stop_training_job(&self.id, &name))
    }

    async fn training_job_logs(
        &mut self,
        name: String,
        cursor: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Result<LogEvents, BackendError>> {
        granted!(self, c => c.training_job_logs(&self.id, &name, cursor.as_deref(), limit))
    }

    async fn create_model(
        &mut self,
        req: ModelRequest,
    ) -> wasmtime::Result<Result<String, BackendError>> {
        granted!(self, c => c.create_model(&self.id, req))
    }

    async fn delete_model(&mut self, name: String) -> wasmtime::Result<Result<(), BackendError>> {
        granted!(self, c => c.delete_model(&self.id, &name))
    }

    async fn create_endpoint_config(
        &mut self,
        req: EndpointConfigRequest,
    ) -> wasmtime::Result<Result<String, BackendError>> {
        granted!(self, c => c.create_endpoint_config(&self.id, req))
    }

    async fn describe_endpoint_config(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Vec<ProductionVariant>, BackendError>> {
        granted!(self, c => c.describe_endpoint_config(&self.id, &name))
    }

    async fn delete_endpoint_config(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<(), BackendError>> {
        granted!(self, c => c.delete_endpoint_config(&self.id, &name))
    }

    async fn create_endpoint(
        &mut self,
        name: String,
        config_name: String,
    ) -> wasmtime::Result<Result<String, BackendError>> {
        granted!(self, c => c.create_endpoint(&self.id, &name, &config_name))
    }

    async fn describe_endpoint(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Endpoint, BackendError>> {
        granted!(self, c => c.describe_endpoint(&self.id, &name))
    }

    async fn update_endpoint(
        &mut self,
        name: String,
        config_name: String,
    ) -> wasmtime::Result<Result<(), BackendError>> {
        granted!(self, c => c.update_endpoint(&self.id, &name, &config_name))
    }

    async fn delete_endpoint(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<(), BackendError>> {
        granted!(self, c => c.delete_endpoint(&self.id, &name))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aws_config::retry::RetryConfig;
    use aws_sdk_sagemaker::config::SharedCredentialsProvider;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::SagemakerVpc;

    fn grant(endpoint: &str) -> SagemakerGrant {
        SagemakerGrant {
            region: Some("eu-west-1".into()),
            role_arn: "arn:aws:iam::123456789012:role/mlgw-training".into(),
            endpoint_url: Some(endpoint.into()),
            runtime_endpoint_url: None,
            logs_endpoint_url: None,
            input_prefixes: vec!["s3://data/team-a/".into()],
            output_prefixes: vec!["s3://models/team-a".into()],
            tags: [("team".to_string(), "a".to_string())].into(),
            vpc: Some(SagemakerVpc {
                subnets: vec!["subnet-1".into()],
                security_group_ids: vec!["sg-1".into()],
            }),
            kms_key_id: Some("alias/mlgw".into()),
        }
    }

    fn identity(id: &str) -> CallIdentity {
        CallIdentity {
            tenant: "default".into(),
            resource_id: id.into(),
            backend_name: crate::domain::backend_name(id),
        }
    }

    /// A test double for AWS answers moto cannot give (quotas, throttling, refused
    /// credentials, an HTML 503): every request gets the same canned HTTP response, as AWS's
    /// JSON protocol frames it, and is counted. The SDK parses it exactly as it parses AWS's.
    struct CannedAws {
        endpoint: String,
        requests: Arc<AtomicUsize>,
    }

    impl CannedAws {
        async fn start(status: u16, body: &'static str) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let endpoint = format!("http://{}", listener.local_addr().unwrap());
            let requests = Arc::new(AtomicUsize::new(0));
            let seen = requests.clone();
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    seen.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        // Read the request head and body, then answer and close.
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        loop {
                            let n = conn.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                            let text = String::from_utf8_lossy(&buf);
                            if let Some(end) = text.find("\r\n\r\n") {
                                let len = text[..end]
                                    .lines()
                                    .find_map(|l| {
                                        l.to_ascii_lowercase()
                                            .strip_prefix("content-length:")
                                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                    })
                                    .unwrap_or(0);
                                if buf.len() >= end + 4 + len {
                                    break;
                                }
                            }
                        }
                        let content_type = if body.starts_with('{') {
                            "application/x-amz-json-1.1"
                        } else {
                            "text/html"
                        };
                        let answer = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = conn.write_all(answer.as_bytes()).await;
                    });
                }
            });
            Self { endpoint, requests }
        }

        fn capability(&self) -> SagemakerCapability {
            let sdk = SdkConfig::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("eu-west-1"))
                .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                    "AKIDTEST", "secret", None, None, "test",
                )))
                .http_client(http_client())
                // One answer per call: the mapping is under test, not the retry policy.
                .retry_config(RetryConfig::disabled())
                .build();
            SagemakerCapability::from_sdk_config("sm", &grant(&self.endpoint), &sdk).unwrap()
        }

        fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }
    }

    fn job(name: &str) -> TrainingJobRequest {
        TrainingJobRequest {
            name: name.into(),
            image: "123456789012.dkr.ecr.eu-west-1.amazonaws.com/train:1".into(),
            entrypoint: vec![],
            arguments: vec![],
            environment: vec![],
            hyperparameters: vec![],
            channels: vec![Channel {
                name: "train".into(),
                s3_uri: "s3://data/team-a/iris/".into(),
                s3_data_type: String::new(),
                input_mode: String::new(),
                distribution: String::new(),
                content_type: None,
            }],
            output_path: "s3://models/team-a/out/".into(),
            instance_type: "ml.m5.large".into(),
            instance_count: 1,
            volume_size_gb: 10,
            max_runtime_seconds: 3600,
            spot_max_wait_seconds: None,
            checkpoint_s3_uri: None,
        }
    }

    #[test]
    fn names_are_the_backend_name_or_it_plus_a_hyphenated_suffix() {
        let b = "mlgw-0193ab";
        for ok in [
            "mlgw-0193ab",
            "mlgw-0193ab-r2",
            "mlgw-0193ab-r2-canary",
            "mlgw-0193ab--x",
        ] {
            assert!(name_in_scope(b, ok), "{ok}");
        }
        // Another resource's backend name, and names with no hyphen after ours.
        for other in [
            "mlgw-0193ac",
            "mlgw-0193abc",
            "mlgw-0193a",
            "x-mlgw-0193ab",
            "mlgw-0193ab-",
            "",
        ] {
            assert!(!name_in_scope(b, other), "{other}");
        }
        assert!(!name_in_scope("", "anything"));
        assert!(valid_name("mlgw-0193ab-r2"));
        for bad in ["-a", "a-", "a_b", "a.b", "", &"a".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_name(&"a".repeat(63)));
    }

    #[test]
    fn a_name_outside_the_call_is_denied_and_one_sagemaker_refuses_is_invalid() {
        let id = identity("0193AB");
        assert!(check_name(&id, "name", "mlgw-0193ab-r1").is_ok());
        match check_name(&id, "name", "mlgw-other") {
            Err(BackendError::Denied(d)) => {
                assert_eq!(d.capability, "sagemaker");
                assert!(
                    d.reason.contains("mlgw-0193ab or mlgw-0193ab-<suffix>"),
                    "{}",
                    d.reason
                );
            }
            other => panic!("{other:?}"),
        }
        match check_name(&id, "config-name", "mlgw-0193ab-r_1") {
            Err(BackendError::InvalidSpec(f)) => assert_eq!(f.field, "config-name"),
            other => panic!("{other:?}"),
        }
        let long = format!("mlgw-0193ab-{}", "x".repeat(60));
        assert!(matches!(
            check_name(&id, "name", &long),
            Err(BackendError::InvalidSpec(_))
        ));
        // A call about no resource (a health check, a load) may name nothing at all.
        let none = identity("");
        assert!(matches!(
            check_name(&none, "name", "mlgw-"),
            Err(BackendError::Denied(_))
        ));
    }

    #[test]
    fn s3_locations_stay_under_whole_prefix_segments() {
        let p = S3Prefix::parse("s3://models/team-a").unwrap();
        assert_eq!(p.to_string(), "s3://models/team-a/");
        assert!(p.holds("models", "team-a/x/y"));
        assert!(p.holds("models", "team-a/"));
        assert!(p.holds("models", "team-a"));
        assert!(!p.holds("models", "team-ab/x"));
        assert!(!p.holds("models2", "team-a/x"));
        let bucket = S3Prefix::parse("s3://data/").unwrap();
        assert!(bucket.holds("data", "anything/at/all"));
        assert!(!bucket.holds("dat", "x"));

        for (uri, why) in [
            ("/data/team-a/x", "not an s3:// URI"),
            ("https://data.s3.amazonaws.com/team-a/x", "not an s3:// URI"),
            ("s3:///team-a/x", "names no bucket"),
            ("s3://data/team-a/../team-b/x", "\"..\""),
            ("s3://data/team-a//x", "must not be empty"),
        ] {
            match parse_s3_uri("channels[0].s3-uri", uri) {
                Err(BackendError::InvalidSpec(f)) => {
                    assert_eq!(f.field, "channels[0].s3-uri");
                    assert!(f.reason.contains(why), "{uri}: {}", f.reason);
                }
                other => panic!("{uri}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn out_of_scope_requests_are_refused_before_anything_is_sent() {
        let aws = CannedAws::start(200, "{}").await;
        let c = aws.capability();
        let id = identity("0193ab");

        let mut other = job("mlgw-0193ac");
        match c.create_training_job(&id, other.clone()).await {
            Err(BackendError::Denied(d)) => {
                assert!(d.reason.contains("mlgw-0193ac"), "{}", d.reason)
            }
            other => panic!("{other:?}"),
        }
        other.name = "mlgw-0193ab".into();
        other.channels[0].s3_uri = "s3://data/team-b/iris/".into();
        match c.create_training_job(&id, other.clone()).await {
            Err(BackendError::Denied(d)) => {
                assert!(
                    d.reason
                        .contains("channels[0].s3-uri s3://data/team-b/iris/"),
                    "{}",
                    d.reason
                );
                assert!(
                    d.reason
                        .contains("targets.sm.grants.sagemaker.input_prefixes"),
                    "{}",
                    d.reason
                );
            }
            other => panic!("{other:?}"),
        }
        other.channels[0].s3_uri = "/home/me/iris".into();
        match c.create_training_job(&id, other.clone()).await {
            Err(BackendError::InvalidSpec(f)) => assert_eq!(f.field, "channels[0].s3-uri"),
            other => panic!("{other:?}"),
        }
        // An input location is no output location.
        let mut out = job("mlgw-0193ab");
        out.output_path = "s3://data/team-a/out/".into();
        match c.create_training_job(&id, out).await {
            Err(BackendError::Denied(d)) => {
                assert!(d.reason.contains("output_prefixes"), "{}", d.reason)
            }
            other => panic!("{other:?}"),
        }
        let mut ckpt = job("mlgw-0193ab");
        ckpt.checkpoint_s3_uri = Some("s3://elsewhere/x/".into());
        assert!(matches!(
            c.create_training_job(&id, ckpt).await,
            Err(BackendError::Denied(_))
        ));
        let mut unknown = job("mlgw-0193ab");
        unknown.channels[0].input_mode = "Stream".into();
        match c.create_training_job(&id, unknown).await {
            Err(BackendError::InvalidSpec(f)) => assert_eq!(f.field, "channels[0].input-mode"),
            other => panic!("{other:?}"),
        }
        let config = EndpointConfigRequest {
            name: "mlgw-0193ab-r1".into(),
            variants: vec![ProductionVariant {
                variant_name: "main".into(),
                model_name: "mlgw-someone-else-r1".into(),
                instance_type: "ml.m5.large".into(),
                initial_instance_count: 1,
                initial_weight: 100,
            }],
        };
        match c.create_endpoint_config(&id, config).await {
            Err(BackendError::Denied(d)) => {
                assert!(d.reason.contains("variants[0].model-name"), "{}", d.reason)
            }
            other => panic!("{other:?}"),
        }
        let model = ModelRequest {
            name: "mlgw-0193ab-r1".into(),
            image: "img".into(),
            model_data_url: Some("s3://other/model.tar.gz".into()),
            environment: vec![],
        };
        assert!(matches!(
            c.create_model(&id, model).await,
            Err(BackendError::Denied(_))
        ));
        for (name, config) in [("mlgw-0193ab", "mlgw-x-r1"), ("mlgw-x", "mlgw-0193ab-r1")] {
            assert!(matches!(
                c.update_endpoint(&id, name, config).await,
                Err(BackendError::Denied(_))
            ));
        }
        assert!(matches!(
            c.describe_training_job(&id, "prod-job").await,
            Err(BackendError::Denied(_))
        ));
        assert!(matches!(
            c.training_job_logs(&id, "prod-job", None, 10).await,
            Err(BackendError::Denied(_))
        ));
        assert!(matches!(
            c.delete_endpoint(&identity(""), "mlgw-").await,
            Err(BackendError::Denied(_))
        ));
        assert_eq!(aws.requests(), 0, "a refused call must send nothing");

        // In scope, the request goes out.
        c.describe_endpoint(&id, "mlgw-0193ab").await.unwrap();
        assert_eq!(aws.requests(), 1);
    }

    /// AWS's answers as it frames them (JSON protocol, `__type` and message), through the
    /// SDK's own parsing, then the contract's mapping.
    #[tokio::test]
    async fn aws_errors_map_onto_the_contract() {
        let id = identity("0193ab");
        type Case = (u16, &'static str, fn(&BackendError) -> bool);
        let cases: [Case; 9] = [
            (
                400,
                r#"{"__type":"com.amazon.coral.validate#ValidationException","message":"Could not find requested job with name mlgw-0193ab"}"#,
                |e| matches!(e, BackendError::NotFound(m) if m.contains("Could not find")),
            ),
            (
                400,
                r#"{"__type":"com.amazon.coral.validate#ValidationException","message":"1 validation error detected: Value 'ml.nope' at 'resourceConfig.instanceType' failed to satisfy constraint: Member must satisfy enum value set"}"#,
                |e| {
                    matches!(e, BackendError::InvalidSpec(f)
                    if f.field == "resourceConfig.instanceType" && f.reason.contains("ml.nope"))
                },
            ),
            (
                400,
                r#"{"__type":"ResourceInUse","Message":"Training job names must be unique within an AWS account and region, and a training job with this name already exists"}"#,
                |e| matches!(e, BackendError::Conflict(m) if m.contains("must be unique")),
            ),
            (
                400,
                r#"{"__type":"ResourceNotFound","Message":"Endpoint mlgw-0193ab does not exist"}"#,
                |e| matches!(e, BackendError::NotFound(_)),
            ),
            (
                400,
                r#"{"__type":"AccessDeniedException","Message":"User: arn:aws:sts::123456789012:assumed-role/gw/x is not authorized to perform: sagemaker:DescribeEndpoint"}"#,
                |e| {
                    matches!(e, BackendError::Denied(d)
                    if d.capability == "sagemaker" && d.reason.contains("not authorized"))
                },
            ),
            (
                400,
                r#"{"__type":"ResourceLimitExceeded","Message":"The account-level service limit 'ml.p3.2xlarge for training job usage' is 0 Instances, with current utilization of 0 Instances and a request delta of 1 Instances. Please use AWS Service Quotas to request an increase for this quota."}"#,
                |e| {
                    matches!(e, BackendError::Unavailable(m)
                    if m.contains("quota 'ml.p3.2xlarge for training job usage'"))
                },
            ),
            (
                400,
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
                |e| matches!(e, BackendError::Throttled(m) if m.contains("Rate exceeded")),
            ),
            (
                400,
                r#"{"__type":"UnrecognizedClientException","message":"The security token included in the request is invalid."}"#,
                |e| {
                    matches!(e, BackendError::Unavailable(m)
                    if m.contains("refused the gateway's credentials")
                        && m.contains("security token included in the request is invalid"))
                },
            ),
            (503, "<html><body>Service Unavailable</body></html>", |e| {
                matches!(e, BackendError::Unavailable(_))
            }),
        ];
        for (status, body, expected) in cases {
            let aws = CannedAws::start(status, body).await;
            let got = aws
                .capability()
                .describe_endpoint(&id, "mlgw-0193ab")
                .await
                .unwrap_err();
            assert!(expected(&got), "{status} {body}: {got:?}");
            assert_eq!(aws.requests(), 1);
        }
        // Nothing listening: unavailable, so the reconciler backs off and retries.
        let closed = CannedAws {
            endpoint: "http://127.0.0.1:1".into(),
            requests: Arc::default(),
        };
        let got = closed
            .capability()
            .describe_training_job(&id, "mlgw-0193ab")
            .await;
        assert!(matches!(got, Err(BackendError::Unavailable(_))), "{got:?}");
    }

    #[tokio::test]
    async fn health_is_a_bounded_call_that_names_awss_reason() {
        let refused = CannedAws::start(
            400,
            r#"{"__type":"UnrecognizedClientException","message":"The security token included in the request is invalid."}"#,
        )
        .await;
        let c = refused.capability();
        let why = c.health().await.unwrap_err();
        assert!(
            why.starts_with("sagemaker: ListTrainingJobs: AWS refused"),
            "{why}"
        );
        assert!(
            why.contains("security token included in the request is invalid"),
            "{why}"
        );
        // Asked again at once, the answer is the one just learnt.
        assert_eq!(c.health().await.unwrap_err(), why);
        assert_eq!(refused.requests(), 1);

        let fine = CannedAws::start(200, r#"{"TrainingJobSummaries":[]}"#).await;
        fine.capability().health().await.unwrap();
    }

    fn ev(id: &str, ts: i64, stream: &str) -> RawEvent {
        RawEvent {
            id: id.into(),
            ts,
            stream: format!("mlgw-j/{stream}"),
            message: format!("{stream} at {ts}"),
        }
    }

    #[test]
    fn every_instance_is_merged_in_time_order_and_other_jobs_left_out() {
        let found = vec![
            ev("a2", 20, "algo-1-1"),
            ev("b1", 10, "algo-2-1"),
            ev("a1", 10, "algo-1-1"),
            ev("b2", 30, "algo-2-1"),
            RawEvent {
                id: "x".into(),
                ts: 5,
                stream: "mlgw-jk/algo-1-1".into(),
                message: "another job".into(),
            },
            ev("a2", 20, "algo-1-1"),
        ];
        let (page, next) = LogCursor::default().page(found, "mlgw-j/", 10, usize::MAX);
        let ids: Vec<&str> = page.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a1", "b1", "a2", "b2"]);
        assert_eq!(next.ts, Some(30));
        assert_eq!(next.seen, [id_hash("b2")].into());
    }

    #[test]
    fn a_cursor_resumes_exactly_after_the_last_event_even_within_one_millisecond() {
        let first = vec![
            ev("a1", 10, "algo-1-1"),
            ev("a2", 20, "algo-1-1"),
            ev("a3", 20, "algo-1-1"),
        ];
        let (page, cursor) = LogCursor::default().page(first, "mlgw-j/", 2, usize::MAX);
        assert_eq!(
            page.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["a1", "a2"]
        );
        let cursor = LogCursor::parse(Some(&cursor.encode())).unwrap();
        // A later read (from the cursor's millisecond on) sees a3 and two events that arrived
        // meanwhile: one from another instance at the very same millisecond, one later.
        let second = vec![
            ev("a2", 20, "algo-1-1"),
            ev("a3", 20, "algo-1-1"),
            ev("b1", 20, "algo-2-1"),
            ev("a4", 25, "algo-1-1"),
        ];
        let (page, cursor) = cursor.page(second.clone(), "mlgw-j/", 10, usize::MAX);
        assert_eq!(
            page.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["a3", "b1", "a4"]
        );
        // Nothing new: an empty page and the same cursor, however often it is asked.
        let (page, again) = cursor.page(second, "mlgw-j/", 10, usize::MAX);
        assert!(page.is_empty());
        assert_eq!(again, cursor);
    }

    #[test]
    fn a_page_stops_at_its_byte_budget_but_always_moves_on() {
        let found = vec![
            ev("a1", 1, "algo-1-1"),
            ev("a2", 2, "algo-1-1"),
            ev("a3", 3, "algo-1-1"),
        ];
        let one = found[0].message.len();
        let (page, next) = LogCursor::default().page(found.clone(), "mlgw-j/", 10, one + 1);
        assert_eq!(page.len(), 1);
        let (page, _) = next.page(found, "mlgw-j/", 10, 0);
        assert_eq!(page.len(), 1, "one event over the budget is still returned");
    }

    #[test]
    fn a_crowded_millisecond_cannot_grow_the_cursor_without_bound() {
        let found: Vec<RawEvent> = (0..MAX_CURSOR_IDS + 1)
            .map(|i| ev(&format!("e{i}"), 7, "algo-1-1"))
            .collect();
        let (page, next) = LogCursor::default().page(found, "mlgw-j/", 10_000, usize::MAX);
        assert_eq!(page.len(), MAX_CURSOR_IDS + 1);
        assert_eq!(next.ts, Some(8));
        assert!(next.encode().len() < 100);
        let full: Vec<RawEvent> = (0..MAX_CURSOR_IDS)
            .map(|i| ev(&format!("e{i}"), 7, "algo-1-1"))
            .collect();
        let (_, next) = LogCursor::default().page(full, "mlgw-j/", 10_000, usize::MAX);
        assert_eq!(LogCursor::parse(Some(&next.encode())).unwrap(), next);
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(LogCursor::parse(None).unwrap(), LogCursor::default());
        assert_eq!(LogCursor::parse(Some("")).unwrap(), LogCursor::default());
        let c = LogCursor {
            ts: Some(1_700_000_000_123),
            seen: [id_hash("x"), id_hash("y")].into(),
        };
        assert_eq!(LogCursor::parse(Some(&c.encode())).unwrap(), c);
        for bad in [
            "x",
            "v1:abc:",
            "v1:12",
            "v2:1:",
            "v1:1:zz",
            "v1:1:0123456789abcdeg",
        ] {
            match LogCursor::parse(Some(bad)) {
                Err(BackendError::InvalidSpec(f)) => assert_eq!(f.field, "cursor", "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn messages_name_the_member_and_the_quota() {
        assert_eq!(
            field_in_message("1 validation error detected: Value '0' at 'resourceConfig.instanceCount' failed to satisfy constraint").as_deref(),
            Some("resourceConfig.instanceCount")
        );
        assert_eq!(field_in_message("Could not find model"), None);
        assert_eq!(
            quota_in_message(
                "The account-level service limit 'ml.g5.xlarge for endpoint usage' is 0 Instances"
            )
            .as_deref(),
            Some("quota 'ml.g5.xlarge for endpoint usage'")
        );
    }
}
