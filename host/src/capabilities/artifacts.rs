//! The `artifacts` capability: the gateway's artifact store, bound to the artifacts of the job
//! or endpoint a call concerns.
//!
//! A call's scope is the URIs its spec names (a job's code, inputs and output; an endpoint's
//! model), fixed by the host when the call starts: a plugin can place them on its target or
//! hand them to its backend, but can name no other artifact and never sees the store's
//! credentials. Unpacking and fetching write beneath the process grant's root only (`Root`),
//! on the blocking pool, bounded by the store's unpacked-size limit.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use crate::artifacts::{ArtifactError, ArtifactStore, archive_reader};
use crate::contract::mlgw::backend::artifacts as wit;
use crate::contract::types::{BackendError, Denial, FieldError};

use super::process::{Root, RootError};

/// Whose artifacts calls may name until authentication brings tenants.
const TENANT: &str = crate::gateway::DEFAULT_TENANT;

/// What every call of every target shares: the store and the operator's limits.
pub struct ArtifactsCapability {
    store: Arc<ArtifactStore>,
    presign_max: Duration,
    max_unpacked: u64,
}

impl ArtifactsCapability {
    pub fn new(store: Arc<ArtifactStore>, presign_max: Duration, max_unpacked: u64) -> Self {
        Self {
            store,
            presign_max,
            max_unpacked,
        }
    }
}

/// One call's view: the store, where it may write, and the URIs it may name.
pub struct ArtifactsCall {
    target: Arc<str>,
    cap: Option<Arc<ArtifactsCapability>>,
    root: Option<Arc<Root>>,
    scope: Arc<[String]>,
}

fn denied(reason: String) -> BackendError {
    BackendError::Denied(Denial {
        capability: "artifacts".into(),
        reason,
    })
}

fn invalid(field: &str, reason: String) -> BackendError {
    BackendError::InvalidSpec(FieldError {
        field: field.into(),
        reason,
    })
}

fn from_store(e: ArtifactError) -> BackendError {
    match e {
        ArtifactError::NotFound(m) => BackendError::NotFound(m),
        ArtifactError::Unsupported(m) => BackendError::Unsupported(m),
        ArtifactError::Unavailable(m) => BackendError::Unavailable(m),
        other => BackendError::Internal(other.to_string()),
    }
}

fn from_root(e: RootError) -> BackendError {
    match e {
        RootError::BadPath { .. } | RootError::Escapes { .. } => denied(e.to_string()),
        other => BackendError::Internal(other.to_string()),
    }
}

impl ArtifactsCall {
    pub fn new(
        target: Arc<str>,
        cap: Option<Arc<ArtifactsCapability>>,
        root: Option<Arc<Root>>,
        scope: Arc<[String]>,
    ) -> Self {
        Self {
            target,
            cap,
            root,
            scope,
        }
    }

    /// The store, once `uri` is one this call may name.
    fn allowed(&self, uri: &str) -> Result<&Arc<ArtifactsCapability>, BackendError> {
        let cap = self.cap.as_ref().ok_or_else(|| {
            denied(format!(
                "target {} has no artifact store to reach",
                self.target
            ))
        })?;
        if !self.scope.iter().any(|s| s == uri) {
            return Err(denied(format!(
                "{uri:?} is not an artifact of the job or endpoint this call of target {} \
                 concerns",
                self.target
            )));
        }
        Ok(cap)
    }

    fn root(&self, what: &str) -> Result<Arc<Root>, BackendError> {
        self.root.clone().ok_or_else(|| {
            denied(format!(
                "{what} writes under the process grant's root, and target {} has no process grant",
                self.target
            ))
        })
    }
}

/// Unpacks the tar stream `r` into `dest` beneath `root`, as the store checked it at upload:
/// directories, regular files (keeping their executable bits) and links that stay inside.
fn unpack(r: Box<dyn Read + Send>, root: &Root, dest: &str, max: u64) -> Result<(), BackendError> {
    root.create_dir_all("dest", dest).map_err(from_root)?;
    let mut ar = tar::Archive::new(
        archive_reader(r)
            .map_err(|e| BackendError::Internal(format!("reading the archive: {e}")))?,
    );
    let corrupt = |e: std::io::Error| BackendError::Internal(format!("reading the archive: {e}"));
    let mut written = 0u64;
    for entry in ar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let path = entry
            .path()
            .map_err(corrupt)?
            .to_string_lossy()
            .into_owned();
        let path = path.trim_start_matches("./").trim_end_matches('/');
        if path.is_empty() || path == "." {
            continue;
        }
        let rel = format!("{dest}/{path}");
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                root.create_dir_all("entry", &rel).map_err(from_root)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                written += entry.size();
                if written > max {
                    return Err(BackendError::Internal(format!(
                        "the archive unpacks to more than {max} bytes"
                    )));
                }
                if let Some(parent) = std::path::Path::new(&rel).parent().and_then(|p| p.to_str()) {
                    root.create_dir_all("entry", parent).map_err(from_root)?;
                }
                let mode = entry.header().mode().unwrap_or(0o644);
                let mut f = root
                    .create_file("entry", &rel, if mode & 0o111 != 0 { 0o755 } else { 0o644 })
                    .map_err(from_root)?;
                std::io::copy(&mut entry, &mut f).map_err(corrupt)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                root.symlink("entry", &target, &rel).map_err(from_root)?;
            }
            // Extension headers are consumed by the reader; anything else was refused at upload.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                return Err(BackendError::Internal(format!(
                    "entry {path:?}: {other:?} entries are not unpacked"
                )));
            }
        }
    }
    Ok(())
}

/// Copies the stream `r` to the file `dest` beneath `root`, bounded.
fn copy_to(r: Box<dyn Read + Send>, root: &Root, dest: &str, max: u64) -> Result<(), BackendError> {
    if let Some(parent) = std::path::Path::new(dest).parent().and_then(|p| p.to_str()) {
        root.create_dir_all("dest", parent).map_err(from_root)?;
    }
    let mut f = root.create_file("dest", dest, 0o644).map_err(from_root)?;
    let n = std::io::copy(&mut r.take(max + 1), &mut f)
        .map_err(|e| BackendError::Internal(format!("fetching: {e}")))?;
    if n > max {
        return Err(BackendError::Internal(format!(
            "the object is larger than {max} bytes"
        )));
    }
    Ok(())
}

async fn blocking(
    f: impl FnOnce() -> Result<(), BackendError> + Send + 'static,
) -> Result<(), BackendError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(BackendError::Internal(format!(
            "file-system task failed: {e}"
        )))
    })
}

impl wit::Host for ArtifactsCall {
    async fn unpack(
        &mut self,
        uri: String,
        dest: String,
    ) -> wasmtime::Result<Result<(), BackendError>> {
        let run = async {
            let cap = self.allowed(&uri)?.clone();
            let root = self.root("unpack")?;
            let r = cap
                .store
                .open_blocking(TENANT, &uri)
                .await
                .map_err(from_store)?;
            let max = cap.max_unpacked;
            blocking(move || unpack(r, &root, &dest, max)).await
        };
        Ok(run.await)
    }

    async fn fetch(
        &mut self,
        uri: String,
        dest: String,
    ) -> wasmtime::Result<Result<(), BackendError>> {
        let run = async {
            let cap = self.allowed(&uri)?.clone();
            let root = self.root("fetch")?;
            let max = cap.max_unpacked;
            let files = cap
                .store
                .open_objects(TENANT, &uri)
                .await
                .map_err(from_store)?;
            for (rel, r) in files {
                let dest = if rel.is_empty() {
                    dest.clone()
                } else {
                    format!("{dest}/{rel}")
                };
                let root = root.clone();
                blocking(move || copy_to(r, &root, &dest, max)).await?;
            }
            Ok(())
        };
        Ok(run.await)
    }

    async fn presign(
        &mut self,
        uri: String,
        ttl_seconds: u32,
    ) -> wasmtime::Result<Result<String, BackendError>> {
        let run = async {
            let cap = self.allowed(&uri)?;
            let ttl = match ttl_seconds {
                0 => cap.presign_max,
                s => Duration::from_secs(s.into()).min(cap.presign_max),
            };
            if !uri.starts_with("s3://") && !cap.store.owns(&uri) {
                return Err(invalid("uri", format!("{uri:?} is not in an object store")));
            }
            cap.store.presign_get(&uri, ttl).await.map_err(from_store)
        };
        Ok(run.await)
    }
}
