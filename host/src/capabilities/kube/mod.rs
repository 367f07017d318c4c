//! The `kube` capability: a Kubernetes client bound to the namespaces and kinds in the
//! target's grant. The scope check happens before any request leaves the gateway; the API
//! server then applies the gateway identity's own RBAC on top. Plugins only ever see JSON
//! documents, never the credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GetParams, ListParams, LogParams, Patch,
    PatchParams, PropagationPolicy, ValidationDirective, WatchParams,
};
use kube::core::{GroupVersionKind, Request};
use kube::discovery::{self, Scope};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::KubeGrant;
use crate::contract::mlgw::backend::kube::{
    self as wit, LogRequest, ObjectRef, Propagation, WatchEvent as WitEvent,
};
use crate::contract::types::{BackendError, Denial, FieldError};

/// Documents larger than this are refused rather than copied into the plugin.
const MAX_DOCUMENT: usize = 4 << 20;
/// An error response is a Status document; anything longer is not worth reading whole.
const MAX_STATUS: usize = 64 << 10;
const MAX_WATCH_SECONDS: u32 = 60;
const MAX_FOLLOW_MS: u32 = 30_000;

pub mod cache;

pub struct KubeCapability {
    target: String,
    /// Answers `get` and `list` from watches once synced (see `cache`).
    cache: cache::Cache,
    client: kube::Client,
    namespaces: Vec<String>,
    kinds: Vec<String>,
    cluster_kinds: Vec<String>,
    field_manager: String,
    /// Discovery answers by (apiVersion, kind): stable for the gateway's lifetime.
    resources: Mutex<HashMap<(String, String), (ApiResource, Scope)>>,
    /// The most a response may hand the plugin: a document, a list page, a log, a batch of
    /// watch events. Reading stops as soon as a response passes it.
    max_document: usize,
}

fn denied(reason: String) -> BackendError {
    BackendError::Denied(Denial {
        capability: "kube".into(),
        reason,
    })
}

fn invalid(field: &str, reason: impl Into<String>) -> BackendError {
    BackendError::InvalidSpec(FieldError {
        field: field.into(),
        reason: reason.into(),
    })
}

/// The API server's answer, in the contract's terms.
pub fn map_error(e: kube::Error) -> BackendError {
    match e {
        kube::Error::Api(s) => {
            let msg = s.message.clone();
            match s.code {
                // An admission webhook's refusal (KServe's validator, a policy engine) comes
                // back as 403 unless the webhook picks a code; it judges the document, not who
                // sent it, so it is bad input, not a missing right.
                403 if is_admission_denial(&msg) => {
                    invalid(&field_in_message(&msg).unwrap_or_default(), msg)
                }
                403 | 401 => denied(msg),
                404 => BackendError::NotFound(msg),
                409 => BackendError::Conflict(msg),
                410 => BackendError::Conflict(format!("{msg} (get the object again)")),
                400 | 422 => {
                    let field = s
                        .details
                        .as_ref()
                        .and_then(|d| d.causes.iter().find(|c| !c.field.is_empty()))
                        .map(|c| c.field.clone())
                        .or_else(|| field_in_message(&msg))
                        .unwrap_or_default();
                    invalid(&field, msg)
                }
                // Server-side apply reports a document that does not fit the schema's types
                // as a 500; it is the document's fault, not the server's.
                500 if msg.starts_with("failed to create typed patch object") => {
                    invalid(&field_in_message(&msg).unwrap_or_default(), msg)
                }
                429 => BackendError::Throttled(msg),
                500..=599 => BackendError::Unavailable(msg),
                _ => BackendError::Internal(format!("{} {}: {msg}", s.code, s.reason)),
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::HttpError(_) => {
            BackendError::Unavailable(format!("Kubernetes API unreachable: {e}"))
        }
        other => BackendError::Internal(format!("Kubernetes client: {other}")),
    }
}

/// `admission webhook "<name>" denied the request: <reason>`, as the API server words a
/// validating or mutating webhook's refusal.
fn is_admission_denial(msg: &str) -> bool {
    msg.starts_with("admission webhook ") && msg.contains(" denied the request")
}

/// The field path in the messages the API server gives without structured causes:
/// `... (ns/name; group/version, Kind=K): .spec.a.b: expected ...` from server-side apply and
/// `strict decoding error: unknown field "spec.x"` from strict field validation.
fn field_in_message(msg: &str) -> Option<String> {
    if let Some((_, rest)) = msg.split_once("): .") {
        let path = rest.split(": ").next()?;
        return Some(path.trim().to_string()).filter(|p| !p.is_empty());
    }
    let (_, rest) = msg.split_once("unknown field \"")?;
    rest.split('"').next().map(str::to_string)
}

/// How many items a list answer from the cache holds.
fn page_len(doc: &str) -> usize {
    serde_json::from_str::<Value>(doc)
        .ok()
        .and_then(|v| v["items"].as_array().map(Vec::len))
        .unwrap_or(usize::MAX)
}

fn bounded(doc: String) -> Result<String, BackendError> {
    if doc.len() > MAX_DOCUMENT {
        return Err(BackendError::Internal(format!(
            "response of {} bytes exceeds the {MAX_DOCUMENT}-byte limit",
            doc.len()
        )));
    }
    Ok(doc)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, BackendError> {
    bounded(serde_json::to_string(v).map_err(|e| BackendError::Internal(e.to_string()))?)
}

/// How a bounded read ended.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// The body ended within the limit.
    Whole,
    /// The body went on past the limit: what was kept stops at the limit and the rest was
    /// never read.
    Cut,
}

/// Appends `body` to `out` until the body ends or `out` holds `limit` bytes, reading no chunk
/// past the one that crosses the limit. Everything read stays in `out` even if the future is
/// dropped (a follow deadline), since a chunk is appended in the same poll it arrives in.
async fn read_into<S, E>(body: &mut S, out: &mut Vec<u8>, limit: usize) -> Result<Read, E>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let room = limit.saturating_sub(out.len());
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok(Read::Cut);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Read::Whole)
}

/// One line of a newline-delimited body (a watch stream).
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// Without its newline; the body's last line may have had none.
    Text(Bytes),
    /// More than the limit arrived without a newline. The reader is done after this.
    TooLong,
    End,
}

/// Splits a body into lines, holding at most one line and one chunk at a time.
struct Lines<S> {
    body: S,
    buf: BytesMut,
    /// How much of `buf` is known to hold no newline.
    searched: usize,
    ended: bool,
}

impl<S, E> Lines<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    fn new(body: S) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
            searched: 0,
            ended: false,
        }
    }

    /// The next line of at most `max` bytes. A longer line is `TooLong` as soon as more than
    /// `max` bytes of it are buffered; the rest of it is never read. Cancel-safe: whatever
    /// arrived stays buffered for the next call.
    async fn next(&mut self, max: usize) -> Result<Line, E> {
        loop {
            if let Some(i) = self.buf[self.searched..].iter().position(|&b| b == b'\n') {
                let end = self.searched + i;
                self.searched = 0;
                if end > max {
                    return Ok(Line::TooLong);
                }
                let mut line = self.buf.split_to(end + 1);
                line.truncate(end);
                return Ok(Line::Text(line.freeze()));
            }
            self.searched = self.buf.len();
            if self.buf.len() > max {
                return Ok(Line::TooLong);
            }
            if self.ended {
                self.searched = 0;
                return Ok(if self.buf.is_empty() {
                    Line::End
                } else {
                    Line::Text(self.buf.split().freeze())
                });
            }
            match self.body.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk?),
                None => self.ended = true,
            }
        }
    }
}

/// A watch line as the server frames it; the object stays the server's own text.
#[derive(serde::Deserialize)]
struct RawWatchEvent<'a> {
    #[serde(rename = "type", borrow)]
    event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    object: &'a RawValue,
}

fn watch_event(line: &[u8]) -> Result<WitEvent, BackendError> {
    let ev: RawWatchEvent = serde_json::from_slice(line)
        .map_err(|e| BackendError::Internal(format!("a watch event is not JSON: {e}")))?;
    match &*ev.event_type {
        "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" => Ok(WitEvent {
            object: json_object(ev.object.get().to_string())?,
            event_type: ev.event_type.into_owned(),
        }),
        "ERROR" => {
            let status: kube::core::Status = serde_json::from_str(ev.object.get())
                .map_err(|e| BackendError::Internal(format!("a watch ERROR event: {e}")))?;
            Err(map_error(kube::Error::Api(status.boxed())))
        }
        other => Err(BackendError::Internal(format!(
            "a watch event of unknown type {other:?}"
        ))),
    }
}

/// Watch events as they arrive: the first is awaited until `deadline` (the server ends the
/// stream at its own timeout before that), the rest are taken while they keep coming. Their
/// lines may add up to `limit`; the event that would pass it is left unread for the next
/// watch, which resumes after the last event returned. One event alone over the limit is an
/// error, since no watch could ever return it.
async fn watch_events<S>(
    lines: &mut Lines<S>,
    limit: usize,
    deadline: tokio::time::Instant,
    what: &str,
) -> Result<Vec<WitEvent>, BackendError>
where
    S: Stream<Item = Result<Bytes, BackendError>> + Unpin,
{
    let mut events = Vec::new();
    let mut total = 0;
    loop {
        let wait = if events.is_empty() {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        } else {
            Duration::from_millis(50)
        };
        let line = match tokio::time::timeout(wait, lines.next(limit)).await {
            Ok(line) => line?,
            Err(_) => break,
        };
        let line = match line {
            Line::End => break,
            Line::TooLong => {
                return Err(BackendError::Internal(format!(
                    "a watch event of {what} is larger than the {limit}-byte limit of the kube capability"
                )));
            }
            Line::Text(l) if l.trim_ascii().is_empty() => continue,
            Line::Text(l) => l,
        };
        total += line.len();
        if total > limit {
            break;
        }
        events.push(watch_event(&line)?);
    }
    Ok(events)
}

/// The server's JSON as it came, once it is known to be one JSON object.
fn json_object(text: String) -> Result<String, BackendError> {
    let not_object = |why: String| {
        BackendError::Internal(format!(
            "the API server's answer is not a JSON object: {why}"
        ))
    };
    serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| not_object(e.to_string()))?;
    if !text.trim_start().starts_with('{') {
        return Err(not_object("another JSON value".into()));
    }
    Ok(text)
}

fn utf8(bytes: Vec<u8>) -> Result<String, BackendError> {
    String::from_utf8(bytes)
        .map_err(|e| BackendError::Internal(format!("the API server's answer is not UTF-8: {e}")))
}

/// Log bytes as text. A cut at the limit may split a character, so that tail is dropped; other
/// bytes that are not UTF-8 show as U+FFFD rather than failing the whole read.
fn log_text(mut bytes: Vec<u8>) -> String {
    if let Err(e) = std::str::from_utf8(&bytes)
        && e.error_len().is_none()
    {
        bytes.truncate(e.valid_up_to());
    }
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A name that goes into the request path, checked to stay one path segment: the request
/// builders append names unescaped, so `..`, `/`, `?` or `#` would address something else
/// than the granted resource.
fn path_segment<'a>(field: &str, name: &'a str) -> Result<&'a str, BackendError> {
    if name.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name == "." || name == ".." {
        return Err(invalid(field, format!("{name:?} is not an object name")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '/' | '%' | '?' | '#'))
    {
        return Err(invalid(
            field,
            format!("{c:?} cannot be part of an object name"),
        ));
    }
    Ok(name)
}

/// An error response as the API server's Status, or one made from the text a proxy answered.
fn api_error(code: u16, body: &[u8]) -> kube::Error {
    let status = serde_json::from_slice::<kube::core::Status>(body)
        .ok()
        .filter(|s| s.code != 0)
        .unwrap_or_else(|| {
            kube::core::Status::failure(String::from_utf8_lossy(body).trim(), "not a Status")
                .with_code(code)
        });
    kube::Error::Api(status.boxed())
}

/// "group/version" or "version" and a kind → the GVK.
fn gvk(api_version: &str, kind: &str) -> Result<GroupVersionKind, BackendError> {
    if kind.is_empty() {
        return Err(invalid("kind", "must not be empty"));
    }
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    if version.is_empty() {
        return Err(invalid("apiVersion", "must not be empty"));
    }
    Ok(GroupVersionKind::gvk(group, version, kind))
}

impl KubeCapability {
    pub async fn connect(target: &str, grant: &KubeGrant) -> anyhow::Result<Self> {
        let options = kube::config::KubeConfigOptions {
            context: grant.context.clone(),
            ..Default::default()
        };
        let config = match &grant.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    anyhow::anyhow!("target {target}: kubeconfig {}: {e}", path.display())
                })?;
                kube::Config::from_custom_kubeconfig(kc, &options).await?
            }
            None if grant.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
            None => kube::Config::infer().await?,
        };
        Ok(Self {
            target: target.into(),
            cache: cache::Cache::new(target),
            client: kube::Client::try_from(config)?,
            namespaces: grant.namespaces.clone(),
            kinds: grant.kinds.clone(),
            cluster_kinds: grant.cluster_kinds.clone(),
            field_manager: grant.field_manager.clone(),
            resources: Mutex::new(HashMap::new()),
            max_document: MAX_DOCUMENT,
        })
    }

    /// Lowers the response limit from its default of 4 MiB (never raises it: the limit is
    /// what keeps one plugin call from holding the gateway's memory).
    pub fn with_max_document(mut self, bytes: usize) -> Self {
        self.max_document = bytes.min(MAX_DOCUMENT);
        self
    }

    /// Namespace and kind against the grant. Returns the namespace to use (the default one
    /// when the plugin named none) or `None` for a granted cluster-scoped kind.
    fn authorize(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
    ) -> Result<Option<String>, BackendError> {
        let key = format!("{api_version}/{kind}");
        if self.cluster_kinds.contains(&key) {
            return Ok(None);
        }
        if !self.kinds.contains(&key) {
            return Err(denied(format!(
                "kind {key} is not granted to target {}",
                self.target
            )));
        }
        let ns = if namespace.is_empty() {
            self.namespaces[0].clone()
        } else {
            namespace.to_string()
        };
        if !self.namespaces.contains(&ns) {
            return Err(denied(format!(
                "namespace {ns} is not granted to target {}",
                self.target
            )));
        }
        Ok(Some(ns))
    }

    async fn resource(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, Scope), BackendError> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(r) = self
            .resources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(r.clone());
        }
        let (ar, caps) = discovery::pinned_kind(&self.client, &gvk(api_version, kind)?)
            .await
            .map_err(|e| match map_error(e) {
                BackendError::NotFound(_) => invalid(
                    "kind",
                    format!(
                        "the cluster does not serve {api_version} {kind} (is its CRD installed?)"
                    ),
                ),
                other => other,
            })?;
        let r = (ar, caps.scope);
        self.resources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, r.clone());
        Ok(r)
    }

    /// The Api for a kind in a namespace, with the scope the grant and the server agree on.
    async fn api(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
    ) -> Result<Api<DynamicObject>, BackendError> {
        let ns = self.authorize(api_version, kind, namespace)?;
        let (ar, scope) = self.resource(api_version, kind).await?;
        match (scope, ns) {
            (Scope::Namespaced, Some(ns)) => {
                Ok(Api::namespaced_with(self.client.clone(), &ns, &ar))
            }
            (Scope::Cluster, None) => Ok(Api::all_with(self.client.clone(), &ar)),
            (Scope::Cluster, Some(_)) => Err(denied(format!(
                "{api_version}/{kind} is cluster-scoped and target {} is granted it only as namespaced",
                self.target
            ))),
            (Scope::Namespaced, None) => Err(invalid(
                "kind",
                format!(
                    "{api_version}/{kind} is namespaced; grant it under kinds, not cluster_kinds"
                ),
            )),
        }
    }

    pub async fn apply(&self, object: &str) -> Result<String, BackendError> {
        let mut doc: Value = serde_json::from_str(object)
            .map_err(|e| invalid("", format!("not a JSON object: {e}")))?;
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(invalid("metadata.name", "must not be empty"));
        }
        let namespace = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let api = self.api(&api_version, &kind, &namespace).await?;
        if let Some(ns) = self.authorize(&api_version, &kind, &namespace)? {
            doc["metadata"]["namespace"] = Value::String(ns);
        }
        // Strict: a misspelt field is an error rather than silently dropped.
        let pp = PatchParams {
            field_validation: Some(ValidationDirective::Strict),
            ..PatchParams::apply(&self.field_manager).force()
        };
        let stored = api
            .patch(&name, &pp, &Patch::Apply(&doc))
            .await
            .map_err(map_error)?;
        to_json(&stored)
    }

    /// Sends a request built for a resource the grant allows. A success answers the body as
    /// it arrives; an error answers the API server's Status, of which at most `MAX_STATUS`
    /// bytes are read.
    async fn send(
        &self,
        req: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<impl Stream<Item = Result<Bytes, BackendError>> + Unpin + use<>, kube::Error> {
        let req = req.map_err(kube::Error::BuildRequest)?;
        let span = tracing::info_span!(
            "capability.kube",
            mlgw.target = %self.target,
            http.method = %req.method(),
            http.path = %req.uri().path()
        );
        let res = tracing::Instrument::instrument(
            self.client.send(req.map(kube::client::Body::from)),
            span,
        )
        .await?;
        let code = res.status();
        let mut body = res.into_body().into_data_stream();
        if code.is_client_error() || code.is_server_error() {
            let mut text = Vec::new();
            read_into(&mut body, &mut text, MAX_STATUS).await?;
            return Err(api_error(code.as_u16(), &text));
        }
        Ok(body.map_err(map_error))
    }

    fn too_large(&self, what: &str) -> String {
        format!(
            "{what} is larger than the {}-byte limit of the kube capability",
            self.max_document
        )
    }

    /// The records whose objects changed, for the reconciler to look at now.
    pub fn wakeups(&self) -> std::sync::Arc<cache::Wakeups> {
        self.cache.wakeups()
    }

    pub async fn get(&self, r: &ObjectRef) -> Result<String, BackendError> {
        let name = path_segment("name", &r.name)?;
        let api = self.api(&r.api_version, &r.kind, &r.namespace).await?;
        if let Some(ns) = self.authorize(&r.api_version, &r.kind, &r.namespace)? {
            let key = format!("{}/{}", r.api_version, r.kind);
            if let cache::Answer::Hit(doc) = self.cache.get(&key, &ns, name, || api.clone())
                && doc.len() <= self.max_document
            {
                return Ok(doc.to_string());
            }
        }
        let req = Request::new(api.resource_url()).get(name, &GetParams::default());
        let mut body = self.send(req).await.map_err(map_error)?;
        let mut doc = Vec::new();
        if read_into(&mut body, &mut doc, self.max_document).await? == Read::Cut {
            return Err(BackendError::Internal(
                self.too_large(&format!("{} {}", r.kind, r.name)),
            ));
        }
        json_object(utf8(doc)?)
    }

    /// One page of the list: at most `limit` objects (0: as many as the server gives), from
    /// `continue_token` on (empty: the first page).
    pub async fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        selector: &str,
        limit: u32,
        continue_token: &str,
    ) -> Result<String, BackendError> {
        let api = self.api(api_version, kind, namespace).await?;
        if continue_token.is_empty()
            && let Some(ns) = self.authorize(api_version, kind, namespace)?
        {
            let key = format!("{api_version}/{kind}");
            if let cache::Answer::Hit(doc) =
                self.cache.list(&key, kind, &ns, selector, || api.clone())
                && doc.len() <= self.max_document
                && (limit == 0 || page_len(&doc) <= limit as usize)
            {
                return Ok(doc.to_string());
            }
        }
        let mut lp = ListParams::default();
        if !selector.is_empty() {
            lp = lp.labels(selector);
        }
        if limit > 0 {
            lp = lp.limit(limit);
        }
        if !continue_token.is_empty() {
            lp = lp.continue_token(continue_token);
        }
        let req = Request::new(api.resource_url()).list(&lp);
        let mut body = self.send(req).await.map_err(|e| match e {
            // The token outlived the server's compaction; only a fresh list is consistent.
            kube::Error::Api(s) if s.code == 410 && !continue_token.is_empty() => {
                BackendError::Conflict(format!("{} (list again from the first page)", s.message))
            }
            // The server names neither argument in its 400s, only in their words.
            kube::Error::Api(s) if s.code == 400 && s.message.starts_with("invalid continue") => {
                invalid("continue-token", s.message)
            }
            kube::Error::Api(s) if s.code == 400 && s.message.contains("parse requirement") => {
                invalid("label-selector", s.message)
            }
            e => map_error(e),
        })?;
        let mut doc = Vec::new();
        if read_into(&mut body, &mut doc, self.max_document).await? == Read::Cut {
            let what = format!("a page of {kind} objects");
            return Err(invalid(
                "limit",
                format!("{}: ask for fewer objects per page", self.too_large(&what)),
            ));
        }
        json_object(utf8(doc)?)
    }

    pub async fn delete(
        &self,
        r: &ObjectRef,
        propagation: Propagation,
    ) -> Result<(), BackendError> {
        let api = self.api(&r.api_version, &r.kind, &r.namespace).await?;
        let dp = DeleteParams {
            propagation_policy: Some(match propagation {
                Propagation::Foreground => PropagationPolicy::Foreground,
                Propagation::Background => PropagationPolicy::Background,
                Propagation::Orphan => PropagationPolicy::Orphan,
            }),
            ..Default::default()
        };
        api.delete(&r.name, &dp).await.map_err(map_error)?;
        Ok(())
    }

    /// Waits at most `timeout_seconds`, and never past `until` (the plugin call's deadline,
    /// less a margin to hand back what arrived): a watch that outlived the call would be cut
    /// off with everything it had read.
    pub async fn watch(
        &self,
        r: &ObjectRef,
        resource_version: &str,
        timeout_seconds: u32,
        until: Option<tokio::time::Instant>,
    ) -> Result<Vec<WitEvent>, BackendError> {
        let api = self.api(&r.api_version, &r.kind, &r.namespace).await?;
        let timeout = timeout_seconds.clamp(1, MAX_WATCH_SECONDS);
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={}", r.name))
            .timeout(timeout);
        let rv = if resource_version.is_empty() {
            "0"
        } else {
            resource_version
        };
        let req = Request::new(api.resource_url()).watch(&wp, rv);
        let body = self.send(req).await.map_err(map_error)?;
        let mut deadline = tokio::time::Instant::now() + Duration::from_secs(timeout as u64 + 5);
        if let Some(until) = until {
            deadline = deadline.min(until);
        }
        let what = format!("{} {}", r.kind, r.name);
        watch_events(&mut Lines::new(body), self.max_document, deadline, &what).await
    }

    /// At most `limit-bytes` (never more than the capability's limit) of the log: the log is
    /// cut there, as the API server's own `limitBytes` cuts it.
    pub async fn pod_logs(
        &self,
        req: &LogRequest,
        until: Option<tokio::time::Instant>,
    ) -> Result<String, BackendError> {
        let Some(ns) = self.authorize("v1", "Pod", &req.namespace)? else {
            return Err(invalid("kind", "pods are namespaced"));
        };
        let pod = path_segment("pod", &req.pod)?;
        let limit = req.limit_bytes.map_or(self.max_document, |b| {
            usize::try_from(b).map_or(self.max_document, |b| b.min(self.max_document))
        });
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), &ns);
        let since_time = match req.since_time.as_deref() {
            None => None,
            Some(t) => Some(t.parse::<jiff::Timestamp>().map_err(|e| {
                invalid("since-time", format!("{t:?} is not an RFC 3339 time: {e}"))
            })?),
        };
        let lp = LogParams {
            container: req.container.clone(),
            since_seconds: req.since_seconds.map(|s| s as i64),
            since_time,
            tail_lines: req.tail_lines.map(i64::from),
            limit_bytes: Some(limit as i64),
            timestamps: req.timestamps,
            follow: req.follow_ms > 0,
            ..Default::default()
        };
        let request = Request::new(api.resource_url()).logs(pod, &lp);
        let mut body = self.send(request).await.map_err(map_error)?;
        let mut out = Vec::new();
        if req.follow_ms == 0 {
            read_into(&mut body, &mut out, limit).await?;
        } else {
            let mut follow = Duration::from_millis(req.follow_ms.min(MAX_FOLLOW_MS) as u64);
            if let Some(until) = until {
                follow = follow.min(until.saturating_duration_since(tokio::time::Instant::now()));
            }
            match tokio::time::timeout(follow, read_into(&mut body, &mut out, limit)).await {
                Ok(read) => {
                    read?;
                }
                // Still following: a line still being written is left for the next call.
                Err(_) => {
                    let whole_lines = out.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                    out.truncate(whole_lines);
                }
            }
        }
        Ok(log_text(out))
    }
}

/// What a waiting call keeps back from its plugin call's deadline, to hand back what arrived.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// The capability as one call's Store sees it: granted or not, and until when it may wait.
pub struct KubeCall {
    target: Arc<str>,
    cap: Option<Arc<KubeCapability>>,
    until: Option<tokio::time::Instant>,
}

impl KubeCall {
    pub fn new(
        target: Arc<str>,
        cap: Option<Arc<KubeCapability>>,
        deadline: Option<std::time::Instant>,
    ) -> Self {
        let until = deadline.map(|d| tokio::time::Instant::from_std(d) - DEADLINE_MARGIN);
        Self { target, cap, until }
    }

    fn granted(&self) -> Result<Arc<KubeCapability>, BackendError> {
        self.cap.clone().ok_or_else(|| {
            denied(format!(
                "target {} is not granted the kube capability",
                self.target
            ))
        })
    }
}

impl wit::Host for KubeCall {
    async fn apply(&mut self, object: String) -> wasmtime::Result<Result<String, BackendError>> {
        Ok(match self.granted() {
            Ok(k) => k.apply(&object).await,
            Err(e) => Err(e),
        })
    }

    async fn get(&mut self, r: ObjectRef) -> wasmtime::Result<Result<String, BackendError>> {
        Ok(match self.granted() {
            Ok(k) => k.get(&r).await,
            Err(e) => Err(e),
        })
    }

    async fn list_objects(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        label_selector: String,
        limit: u32,
        continue_token: String,
    ) -> wasmtime::Result<Result<String, BackendError>> {
        Ok(match self.granted() {
            Ok(k) => {
                k.list(
                    &api_version,
                    &kind,
                    &namespace,
                    &label_selector,
                    limit,
                    &continue_token,
                )
                .await
            }
            Err(e) => Err(e),
        })
    }

    async fn delete(
        &mut self,
        r: ObjectRef,
        propagation: Propagation,
    ) -> wasmtime::Result<Result<(), BackendError>> {
        Ok(match self.granted() {
            Ok(k) => k.delete(&r, propagation).await,
            Err(e) => Err(e),
        })
    }

    async fn watch(
        &mut self,
        r: ObjectRef,
        resource_version: String,
        timeout_seconds: u32,
    ) -> wasmtime::Result<Result<Vec<WitEvent>, BackendError>> {
        Ok(match self.granted() {
            Ok(k) => {
                k.watch(&r, &resource_version, timeout_seconds, self.until)
                    .await
            }
            Err(e) => Err(e),
        })
    }

    async fn pod_logs(
        &mut self,
        req: LogRequest,
    ) -> wasmtime::Result<Result<String, BackendError>> {
        Ok(match self.granted() {
            Ok(k) => k.pod_logs(&req, self.until).await,
            Err(e) => Err(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn grant() -> KubeGrant {
        KubeGrant {
            kubeconfig: None,
            context: None,
            namespaces: vec!["team-a".into()],
            kinds: vec!["kubeflow.org/v1/PyTorchJob".into(), "v1/Pod".into()],
            cluster_kinds: vec![],
            field_manager: "mlgw".into(),
        }
    }

    /// A capability whose client points at a closed port: any request that did leave would
    /// fail as `unavailable`, so `denied` proves the check ran first.
    fn offline() -> KubeCapability {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let g = grant();
        KubeCapability {
            cache: cache::Cache::new("t"),
            target: "t".into(),
            client: kube::Client::try_from(config).unwrap(),
            namespaces: g.namespaces,
            kinds: g.kinds,
            cluster_kinds: g.cluster_kinds,
            field_manager: g.field_manager,
            resources: Mutex::new(HashMap::new()),
            max_document: MAX_DOCUMENT,
        }
    }

    #[tokio::test]
    async fn out_of_scope_requests_are_denied_before_they_are_sent() {
        let k = offline();
        let other_ns = r#"{"apiVersion":"kubeflow.org/v1","kind":"PyTorchJob","metadata":{"name":"x","namespace":"team-b"}}"#;
        match k.apply(other_ns).await {
            Err(BackendError::Denied(d)) => {
                assert!(d.reason.contains("namespace team-b"), "{}", d.reason)
            }
            other => panic!("expected denied, got {other:?}"),
        }
        let cluster_kind = ObjectRef {
            api_version: "rbac.authorization.k8s.io/v1".into(),
            kind: "ClusterRole".into(),
            namespace: String::new(),
            name: "admin".into(),
        };
        match k.get(&cluster_kind).await {
            Err(BackendError::Denied(d)) => {
                assert!(d.reason.contains("ClusterRole"), "{}", d.reason)
            }
            other => panic!("expected denied, got {other:?}"),
        }
        // In scope: the request is sent, and fails only because nothing listens.
        let in_scope = ObjectRef {
            api_version: "kubeflow.org/v1".into(),
            kind: "PyTorchJob".into(),
            namespace: String::new(),
            name: "x".into(),
        };
        assert!(matches!(
            k.get(&in_scope).await,
            Err(BackendError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn names_that_would_leave_their_path_segment_are_refused_before_they_are_sent() {
        let k = offline();
        for name in [
            "..",
            "x/../../secrets/y",
            "x?labelSelector=a",
            "x#y",
            "x%2Fy",
            "a b",
        ] {
            let r = ObjectRef {
                api_version: "v1".into(),
                kind: "Pod".into(),
                namespace: String::new(),
                name: name.into(),
            };
            match k.get(&r).await {
                Err(BackendError::InvalidSpec(f)) => assert_eq!(f.field, "name", "{name}"),
                other => panic!("{name}: expected invalid-spec, got {other:?}"),
            }
        }
        assert_eq!(
            path_segment("name", "system:admin").unwrap(),
            "system:admin"
        );
    }

    /// A body that never ends, counting the chunks it is asked for. A reader that keeps on
    /// asking long past any limit the tests use fails there, rather than hanging the test or
    /// filling the machine's memory.
    fn endless(
        chunk: &'static [u8],
        pulled: &Arc<AtomicUsize>,
    ) -> impl Stream<Item = Result<Bytes, BackendError>> + Unpin + use<> {
        let pulled = pulled.clone();
        futures::stream::repeat_with(move || {
            let n = pulled.fetch_add(1, Ordering::Relaxed);
            assert!(n < 1000, "the reader read on past its limit");
            Ok(Bytes::from_static(chunk))
        })
    }

    #[tokio::test]
    async fn a_bounded_read_stops_at_its_limit_on_a_body_that_never_ends() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let mut body = endless(&[b'x'; 1000], &pulled);
        let mut out = Vec::new();
        let read = read_into(&mut body, &mut out, 10_500).await;
        assert_eq!(read.unwrap(), Read::Cut);
        assert_eq!(out.len(), 10_500);
        // Ten whole chunks and the one that crossed the limit; not one more.
        assert_eq!(pulled.load(Ordering::Relaxed), 11);
    }

    #[tokio::test]
    async fn a_bounded_read_takes_a_body_of_exactly_its_limit_whole() {
        let chunks = |n: usize| {
            futures::stream::iter(
                (0..n).map(|_| Ok::<_, BackendError>(Bytes::from_static(b"0123456789"))),
            )
        };
        let mut out = Vec::new();
        let read = read_into(&mut chunks(3), &mut out, 30).await;
        assert_eq!(read.unwrap(), Read::Whole);
        assert_eq!(out.len(), 30);
        let mut out = Vec::new();
        let read = read_into(&mut chunks(4), &mut out, 30).await;
        assert_eq!(read.unwrap(), Read::Cut);
        assert_eq!(out.len(), 30);
    }

    #[tokio::test]
    async fn a_line_longer_than_the_limit_stops_the_read() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let mut lines = Lines::new(endless(&[b'x'; 1000], &pulled));
        assert_eq!(lines.next(10_500).await.unwrap(), Line::TooLong);
        assert_eq!(pulled.load(Ordering::Relaxed), 11);
    }

    #[tokio::test]
    async fn lines_are_split_across_chunks() {
        let body = futures::stream::iter(
            ["ab", "c\nd", "e\n\nf"]
                .map(|c| Ok::<_, BackendError>(Bytes::from_static(c.as_bytes()))),
        );
        let mut lines = Lines::new(body);
        let mut got = Vec::new();
        loop {
            match lines.next(100).await.unwrap() {
                Line::Text(l) => got.push(String::from_utf8(l.to_vec()).unwrap()),
                Line::End => break,
                Line::TooLong => panic!("too long"),
            }
        }
        assert_eq!(got, ["abc", "de", "", "f"]);
    }

    #[tokio::test]
    async fn a_watch_returns_the_events_that_fit_and_stops_reading() {
        // Spacing and key order as a server might send them: the plugin gets them unchanged.
        const EVENT: &[u8] =
            b"{\"type\":\"MODIFIED\",\"object\":{\"kind\": \"ConfigMap\",  \"apiVersion\":\"v1\",\"data\":{\"k\":\"0123456789012345678901234567890123456789\"}}}\n";
        let pulled = Arc::new(AtomicUsize::new(0));
        let mut lines = Lines::new(endless(EVENT, &pulled));
        let per_line = EVENT.len() - 1;
        let limit = per_line * 7 + per_line / 2;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let events = watch_events(&mut lines, limit, deadline, "ConfigMap c")
            .await
            .unwrap();
        assert_eq!(events.len(), 7);
        // The eighth was read to find it would not fit; nothing after it.
        assert_eq!(pulled.load(Ordering::Relaxed), 8);
        let object = &EVENT[br#"{"type":"MODIFIED","object":"#.len()..EVENT.len() - 2];
        for ev in &events {
            assert_eq!(ev.event_type, "MODIFIED");
            assert_eq!(ev.object.as_bytes(), object);
        }

        // One event over the limit can never be returned: an error naming the limit.
        let mut lines = Lines::new(endless(EVENT, &pulled));
        match watch_events(&mut lines, per_line - 1, deadline, "ConfigMap c").await {
            Err(BackendError::Internal(m)) => {
                assert!(m.contains(&format!("{}-byte limit", per_line - 1)), "{m}")
            }
            other => panic!("expected internal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_watch_error_event_is_the_servers_error() {
        let gone = br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version: 1 (5)","reason":"Expired","code":410}}
"#;
        let body = futures::stream::iter([Ok::<_, BackendError>(Bytes::from_static(gone))]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        match watch_events(&mut Lines::new(body), MAX_DOCUMENT, deadline, "x").await {
            Err(BackendError::Conflict(m)) => assert!(m.contains("too old"), "{m}"),
            other => panic!("expected conflict, got {other:?}"),
        }
    }

    #[test]
    fn an_error_answer_that_is_no_status_keeps_its_http_code() {
        match map_error(api_error(503, b"upstream connect error\n")) {
            BackendError::Unavailable(m) => assert_eq!(m, "upstream connect error"),
            other => panic!("{other:?}"),
        }
        let busy = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Too many requests, please try again later.","reason":"TooManyRequests","code":429}"#;
        match map_error(api_error(429, busy)) {
            BackendError::Throttled(m) => assert!(m.contains("Too many requests"), "{m}"),
            other => panic!("{other:?}"),
        }
        match map_error(api_error(404, br#"{"error": "no route"}"#)) {
            BackendError::NotFound(m) => assert!(m.contains("no route"), "{m}"),
            other => panic!("{other:?}"),
        }
        let status = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"configmaps \"x\" not found","reason":"NotFound","code":404}"#;
        match map_error(api_error(404, status)) {
            BackendError::NotFound(m) => assert_eq!(m, r#"configmaps "x" not found"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn documents_must_be_json_objects() {
        assert!(json_object(" {\"a\": 1}\n".into()).is_ok());
        for bad in ["[1]", "\"s\"", "{\"a\":", "{} {}", ""] {
            assert!(
                matches!(json_object(bad.into()), Err(BackendError::Internal(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_log_cut_inside_a_character_drops_that_character() {
        let mut cut = "line é".as_bytes().to_vec();
        cut.pop();
        assert_eq!(log_text(cut), "line ");
        assert_eq!(log_text(b"a\xffb".to_vec()), "a\u{fffd}b");
    }

    #[test]
    fn api_errors_map_to_the_contract() {
        // As the API server sends them.
        let status = |code: u16, causes: Value| {
            let s: kube::core::Status = serde_json::from_value(serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "m",
                "reason": "r", "code": code, "details": {"causes": causes}
            }))
            .unwrap();
            kube::Error::Api(Box::new(s))
        };
        let none = || serde_json::json!([]);
        assert!(matches!(
            map_error(status(403, none())),
            BackendError::Denied(_)
        ));
        assert!(matches!(
            map_error(status(404, none())),
            BackendError::NotFound(_)
        ));
        assert!(matches!(
            map_error(status(409, none())),
            BackendError::Conflict(_)
        ));
        let causes = serde_json::json!([{"reason": "FieldValueInvalid", "message": "bad",
            "field": "spec.pytorchReplicaSpecs.Master.replicas"}]);
        match map_error(status(422, causes)) {
            BackendError::InvalidSpec(f) => {
                assert_eq!(f.field, "spec.pytorchReplicaSpecs.Master.replicas")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            map_error(status(503, none())),
            BackendError::Unavailable(_)
        ));
        let mut webhook = status(403, none());
        if let kube::Error::Api(s) = &mut webhook {
            s.message = r#"admission webhook "policy.example.com" denied the request: no"#.into();
        }
        assert!(matches!(map_error(webhook), BackendError::InvalidSpec(_)));
    }

    #[test]
    fn field_paths_are_found_in_unstructured_messages() {
        assert_eq!(
            field_in_message(
                "failed to create typed patch object (team-a/x; kubeflow.org/v1, Kind=PyTorchJob): \
                 .spec.pytorchReplicaSpecs.Master.replicas: expected numeric (int or float), got string"
            )
            .as_deref(),
            Some("spec.pytorchReplicaSpecs.Master.replicas")
        );
        assert_eq!(
            field_in_message(r#"PyTorchJob in version "v1" cannot be handled as a PyTorchJob: strict decoding error: unknown field "spec.replicaz""#)
                .as_deref(),
            Some("spec.replicaz")
        );
        assert_eq!(field_in_message("something else"), None);
    }
}
