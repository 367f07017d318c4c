//! The artifact store: code and model files that travel with jobs, kept where every target can
//! read them — a directory under the data dir by default, an S3-compatible bucket in-cluster.
//!
//! Content-addressed: an artifact's key is `<prefix>/<tenant>/sha256/<hex>`, so the same bytes
//! are stored once and keep their URI for good. An upload is spooled to a temporary file under
//! the data dir while it is hashed and measured; it becomes visible only once it is complete,
//! within the limits and verified, and the temporary file goes away on every path (done,
//! refused, cut off by the client).

mod archive;
mod dir;
mod s3;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{ArtifactStoreKind, ArtifactsConfig};
use crate::domain::Millis;

pub use archive::decoded as archive_reader;

/// Download chunks are at most this long.
pub const CHUNK_BYTES: usize = 1 << 20;
/// The longest name an upload may carry.
pub const MAX_NAME: usize = 256;
/// The longest artifact URI a request may name (the domain's bound for URIs).
pub const MAX_URI: usize = crate::domain::validate::MAX_URI;
/// Files `publish_dir` takes from one directory.
pub const MAX_PUBLISHED_FILES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// A request field (or the content it carries) that the store will not take.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("artifact {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Unsupported(String),
    /// The bucket could not be reached; a retry may do.
    #[error("artifact store unavailable: {0}")]
    Unavailable(String),
    /// The client's stream broke or ended before the upload was complete.
    #[error("upload cut off: {0}")]
    Cancelled(String),
    /// The store's own failure: disk, bucket permissions, a corrupt record.
    #[error("artifact store: {0}")]
    Storage(String),
}

fn invalid(field: &str, reason: impl Into<String>) -> ArtifactError {
    ArtifactError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn storage(what: &str, e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Storage(format!("{what}: {e}"))
}

fn joined(e: tokio::task::JoinError) -> ArtifactError {
    storage("a blocking task", e)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// One file, as given.
    File,
    /// A tar archive (gzip or plain) of a directory, checked to stay inside itself.
    Directory,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Directory => "directory",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "file" => Some(Self::File),
            "directory" => Some(Self::Directory),
            _ => None,
        }
    }
}

/// One stored artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub uri: String,
    pub sha256: String,
    pub size: u64,
    pub kind: ArtifactKind,
    pub name: String,
    pub created_at: Millis,
}

/// What the client says about an upload before its content.
#[derive(Debug, Clone, Default)]
pub struct UploadHeader {
    pub name: String,
    /// None: the client did not say, which is refused.
    pub kind: Option<ArtifactKind>,
    pub sha256: Option<String>,
    pub size: Option<u64>,
}

/// The part of an artifact's record a backend keeps beside its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    sha256: String,
    size: u64,
    kind: ArtifactKind,
    name: String,
    created_at: Millis,
}

/// The content of an upload, as it arrives.
pub type Chunks<'a> = Pin<Box<dyn Stream<Item = Result<Bytes, ArtifactError>> + Send + 'a>>;

/// A content stream for Download, in chunks of at most `CHUNK_BYTES`.
pub type Content = Pin<Box<dyn Stream<Item = Result<Bytes, ArtifactError>> + Send>>;

/// One page of a List.
pub struct ArtifactPage {
    pub artifacts: Vec<Artifact>,
    pub next_page_token: Option<String>,
}

enum Backend {
    Dir(dir::DirStore),
    S3(Box<s3::S3Store>),
}

pub struct ArtifactStore {
    backend: Backend,
    /// Uploads in progress; emptied at start (what a crash left there was never visible).
    spool_dir: PathBuf,
    max_upload_bytes: u64,
    max_unpacked_bytes: u64,
    presign_max: Duration,
}

/// A complete upload in its temporary file, which is removed when this is dropped unless it
/// was moved into place.
struct Spooled {
    path: tempfile::TempPath,
    sha256: String,
    size: u64,
}

impl ArtifactStore {
    pub async fn open(cfg: &ArtifactsConfig, data_dir: &Path) -> Result<Self, ArtifactError> {
        let spool_dir = data_dir.join("tmp").join("uploads");
        let clean = spool_dir.clone();
        tokio::task::spawn_blocking(move || {
            // Left by a gateway that died mid-upload: never visible, now never needed.
            match std::fs::remove_dir_all(&clean) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(storage(&format!("clearing {}", clean.display()), e)),
            }
            std::fs::create_dir_all(&clean)
                .map_err(|e| storage(&format!("creating {}", clean.display()), e))
        })
        .await
        .map_err(joined)??;
        let backend = match cfg.store {
            ArtifactStoreKind::Dir => {
                Backend::Dir(dir::DirStore::open(&cfg.dir_root(data_dir)).await?)
            }
            ArtifactStoreKind::S3 => {
                let s3cfg = cfg.s3.as_ref().ok_or_else(|| {
                    storage("config", "store = \"s3\" without an [artifacts.s3] table")
                })?;
                Backend::S3(Box::new(s3::S3Store::open(s3cfg).await?))
            }
        };
        Ok(Self {
            backend,
            spool_dir,
            max_upload_bytes: cfg.max_upload_bytes,
            max_unpacked_bytes: cfg.max_unpacked_bytes,
            presign_max: Duration::from_secs(cfg.presign_max_seconds),
        })
    }

    /// Whether the store is somewhere else than this machine (S3): targets elsewhere can
    /// reach it, through presigned URLs.
    pub fn is_remote(&self) -> bool {
        matches!(self.backend, Backend::S3(_))
    }

    /// Where uploads are spooled while they arrive.
    pub fn spool_dir(&self) -> &Path {
        &self.spool_dir
    }

    /// Whether `uri` names something in this store: an artifact (`sha256:<hex>` included), or a
    /// published output.
    pub fn owns(&self, uri: &str) -> bool {
        if let Some(hex) = uri.strip_prefix("sha256:") {
            return parse_hex(hex).is_some();
        }
        match &self.backend {
            Backend::Dir(d) => d.key_of(uri).is_some(),
            Backend::S3(s) => s.key_of(uri).is_some(),
        }
    }

    /// The artifact `uri` names, as the `uri` field of a request.
    pub async fn stat(&self, tenant: &str, uri: &str) -> Result<Artifact, ArtifactError> {
        let hex = self.locate(tenant, uri)?;
        self.stat_hex(tenant, &hex)
            .await?
            .ok_or_else(|| ArtifactError::NotFound(uri.to_string()))
    }

    async fn stat_hex(&self, tenant: &str, hex: &str) -> Result<Option<Artifact>, ArtifactError> {
        match &self.backend {
            Backend::Dir(d) => d.stat(tenant, hex).await,
            Backend::S3(s) => s.stat(tenant, hex).await,
        }
    }

    /// The content as a blocking reader (for unpacking on the blocking pool: an S3 body is
    /// bridged from the async runtime, so read it off the runtime's own threads).
    pub async fn open_blocking(
        &self,
        tenant: &str,
        uri: &str,
    ) -> Result<Box<dyn Read + Send>, ArtifactError> {
        let hex = self.locate(tenant, uri)?;
        let found = match &self.backend {
            Backend::Dir(d) => d.reader(tenant, &hex).await?,
            Backend::S3(s) => s.open_blocking(tenant, &hex).await?,
        };
        found.ok_or_else(|| ArtifactError::NotFound(uri.to_string()))
    }

    /// What a target fetches: an artifact of this store (one reader, path ""), or with an
    /// object store any `s3://` object or every object under an `s3://…/` prefix, as (path
    /// below the prefix, reader) pairs.
    pub async fn open_objects(
        &self,
        tenant: &str,
        uri: &str,
    ) -> Result<Vec<(String, Box<dyn Read + Send>)>, ArtifactError> {
        if self.locate(tenant, uri).is_ok() {
            return Ok(vec![(
                String::new(),
                self.open_blocking(tenant, uri).await?,
            )]);
        }
        match &self.backend {
            Backend::S3(s) if uri.starts_with("s3://") => {
                s.open_any(uri, MAX_PUBLISHED_FILES).await
            }
            _ => Err(ArtifactError::NotFound(uri.to_string())),
        }
    }

    /// The artifact and its content, for Download.
    pub async fn download(
        &self,
        tenant: &str,
        uri: &str,
    ) -> Result<(Artifact, Content), ArtifactError> {
        let hex = self.locate(tenant, uri)?;
        let found = match &self.backend {
            Backend::Dir(d) => d.download(tenant, &hex).await?,
            Backend::S3(s) => s.download(tenant, &hex).await?,
        };
        found.ok_or_else(|| ArtifactError::NotFound(uri.to_string()))
    }

    /// A URL that GETs the content until it expires (S3 only; the directory store answers
    /// Unsupported). `uri` is an s3:// URI of this store — an artifact's, or a published
    /// output file's — which must exist; `ttl` is cut to `presign_max_seconds`.
    pub async fn presign_get(&self, uri: &str, ttl: Duration) -> Result<String, ArtifactError> {
        check_uri(uri)?;
        if ttl.is_zero() {
            return Err(invalid("ttl", "must be positive"));
        }
        match &self.backend {
            Backend::Dir(_) => Err(ArtifactError::Unsupported(
                "the directory artifact store has no presigned URLs (its files are on this machine)"
                    .into(),
            )),
            Backend::S3(s) => {
                let key = s
                    .key_of(uri)
                    .ok_or_else(|| ArtifactError::NotFound(uri.to_string()))?;
                s.presign_get(&key, ttl.min(self.presign_max)).await
            }
        }
    }

    /// Uploads every regular file under `dir` to `<prefix>/<tenant>/outputs/<name>/…`; returns
    /// that prefix's URI (s3://…/ with a trailing slash; the directory store returns the
    /// file:// URI of its copy). Symbolic links and special files are left out, so a job
    /// cannot publish what its directory only points at.
    pub async fn publish_dir(
        &self,
        tenant: &str,
        name: &str,
        dir: &Path,
    ) -> Result<String, ArtifactError> {
        check_tenant(tenant)?;
        check_output_name(name)?;
        let root = dir.to_path_buf();
        let limit = self.max_unpacked_bytes;
        let files = tokio::task::spawn_blocking(move || outputs::list(&root, limit))
            .await
            .map_err(joined)??;
        match &self.backend {
            Backend::Dir(d) => d.publish(tenant, name, dir, files).await,
            Backend::S3(s) => s.publish(tenant, name, dir, files).await,
        }
    }

    /// The caller's artifacts, newest first. `page_token` is the `next_page_token` of the page
    /// before.
    pub async fn list(
        &self,
        tenant: &str,
        page_token: Option<&str>,
        page_size: usize,
    ) -> Result<ArtifactPage, ArtifactError> {
        check_tenant(tenant)?;
        let after = page_token.map(parse_page_token).transpose()?;
        let mut entries = match &self.backend {
            Backend::Dir(d) => d.list(tenant).await?,
            Backend::S3(s) => s.list(tenant).await?,
        };
        // Newest first; the digest orders artifacts of the same millisecond.
        entries.sort_by(|a, b| b.cmp(a));
        let start = match &after {
            Some(pos) => entries.partition_point(|e| e >= pos),
            None => 0,
        };
        let page: Vec<_> = entries
            .iter()
            .skip(start)
            .take(page_size)
            .cloned()
            .collect();
        let more = entries.len() > start + page.len();
        let mut artifacts = Vec::with_capacity(page.len());
        let hexes: Vec<String> = page.iter().map(|(_, hex)| hex.clone()).collect();
        let stats = futures::stream::iter(hexes)
            .map(|hex| async move { self.stat_hex(tenant, &hex).await })
            .buffered(8)
            .collect::<Vec<_>>()
            .await;
        for s in stats {
            // One removed meanwhile is simply not on the page.
            if let Some(a) = s? {
                artifacts.push(a);
            }
        }
        let next_page_token = match (more, page.last()) {
            (true, Some((t, hex))) => Some(format!("{t}-{hex}")),
            _ => None,
        };
        Ok(ArtifactPage {
            artifacts,
            next_page_token,
        })
    }

    /// Stores one upload: the header, then its content. Nothing is visible until all of it
    /// has arrived and passed every check; the same bytes uploaded again return the artifact
    /// already stored.
    pub async fn upload(
        &self,
        tenant: &str,
        header: UploadHeader,
        chunks: Chunks<'_>,
    ) -> Result<Artifact, ArtifactError> {
        check_tenant(tenant)?;
        let kind = self.check_header(&header)?;
        let spooled = self.spool(chunks).await?;
        if let Some(want) = header.size
            && want != spooled.size
        {
            return Err(invalid(
                "header.size",
                format!("{} bytes arrived, the header said {want}", spooled.size),
            ));
        }
        if let Some(want) = &header.sha256
            && *want != spooled.sha256
        {
            return Err(invalid(
                "header.sha256",
                format!(
                    "the content's sha256 is {}, not {want}: it changed on the way, or the header is wrong",
                    spooled.sha256
                ),
            ));
        }
        if kind == ArtifactKind::Directory {
            let path = spooled.path.to_path_buf();
            let limit = self.max_unpacked_bytes;
            tokio::task::spawn_blocking(move || archive::check_file(&path, limit))
                .await
                .map_err(joined)??;
        }
        let meta = Meta {
            sha256: spooled.sha256.clone(),
            size: spooled.size,
            kind,
            name: header.name,
            created_at: crate::domain::now_ms(),
        };
        match &self.backend {
            Backend::Dir(d) => d.put(tenant, spooled, meta).await,
            Backend::S3(s) => s.put(tenant, spooled, meta).await,
        }
    }

    fn check_header(&self, h: &UploadHeader) -> Result<ArtifactKind, ArtifactError> {
        if h.name.len() > MAX_NAME {
            return Err(invalid(
                "header.name",
                format!("at most {MAX_NAME} bytes, not {}", h.name.len()),
            ));
        }
        if let Some(at) = h.name.chars().position(|c| c.is_control()) {
            return Err(invalid(
                "header.name",
                format!("no control characters (character {at} is one)"),
            ));
        }
        let kind = h.kind.ok_or_else(|| {
            invalid(
                "header.kind",
                "required: ARTIFACT_KIND_FILE or ARTIFACT_KIND_DIRECTORY",
            )
        })?;
        if let Some(hex) = &h.sha256
            && parse_hex(hex).is_none()
        {
            return Err(invalid(
                "header.sha256",
                "64 hexadecimal digits (the sha256 of the content), or empty",
            ));
        }
        if let Some(size) = h.size
            && size > self.max_upload_bytes
        {
            return Err(invalid(
                "header.size",
                format!(
                    "{size} bytes is over the gateway's limit of {} (artifacts.max_upload_bytes)",
                    self.max_upload_bytes
                ),
            ));
        }
        Ok(kind)
    }

    /// Writes the content to a temporary file, hashing and measuring it. Each chunk is
    /// written and hashed by a short task on the blocking pool, so a slow client holds no
    /// thread while it sends nothing. The file's path is held here: however this ends — an
    /// error, a refusal, a client gone and this future dropped with it — the file goes.
    async fn spool(&self, mut chunks: Chunks<'_>) -> Result<Spooled, ArtifactError> {
        let dir = self.spool_dir.clone();
        let created = tokio::task::spawn_blocking(move || {
            tempfile::Builder::new()
                .prefix("upload-")
                .tempfile_in(&dir)
                .map_err(|e| storage(&format!("creating a file in {}", dir.display()), e))
        })
        .await
        .map_err(joined)??;
        let (file, path) = created.into_parts();
        let mut state = Some((file, Sha256::new()));
        let mut size = 0u64;
        let limit = self.max_upload_bytes;
        while let Some(chunk) = chunks.next().await {
            let b = chunk?;
            size += b.len() as u64;
            if size > limit {
                return Err(invalid(
                    "chunk",
                    format!(
                        "the upload is over the gateway's limit of {limit} bytes (artifacts.max_upload_bytes)"
                    ),
                ));
            }
            let (mut file, mut hasher) = state.take().expect("put back after every chunk");
            state = Some(
                tokio::task::spawn_blocking(move || {
                    hasher.update(&b);
                    file.write_all(&b)
                        .map_err(|e| storage("writing an upload", e))?;
                    Ok::<_, ArtifactError>((file, hasher))
                })
                .await
                .map_err(joined)??,
            );
        }
        let (file, hasher) = state.take().expect("put back after every chunk");
        // On disk before it is moved into place, so a crash cannot leave a short artifact.
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(joined)?
            .map_err(|e| storage("writing an upload", e))?;
        Ok(Spooled {
            path,
            sha256: hex::encode(hasher.finalize()),
            size,
        })
    }

    /// The digest `uri` names, for `tenant`.
    fn locate(&self, tenant: &str, uri: &str) -> Result<String, ArtifactError> {
        check_tenant(tenant)?;
        check_uri(uri)?;
        if let Some(hex) = uri.strip_prefix("sha256:") {
            return parse_hex(hex).ok_or_else(|| {
                invalid("uri", "sha256: takes the 64 hexadecimal digits of a digest")
            });
        }
        let key = match &self.backend {
            Backend::Dir(d) => d.key_of(uri),
            Backend::S3(s) => s.key_of(uri),
        };
        let not_found = || ArtifactError::NotFound(uri.to_string());
        let key = key.ok_or_else(not_found)?;
        // `<tenant>/sha256/<hex>`, this tenant's: another tenant's artifact is not found, not
        // forbidden, so its existence is not given away.
        let mut parts = key.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(t), Some("sha256"), Some(hex), None) if t == tenant => {
                parse_hex(hex).filter(|h| h == hex).ok_or_else(not_found)
            }
            _ => Err(not_found()),
        }
    }
}

/// A digest as 64 lowercase hex digits (uppercase is accepted and lowered).
fn parse_hex(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

fn check_uri(uri: &str) -> Result<(), ArtifactError> {
    if uri.is_empty() {
        return Err(invalid("uri", "required"));
    }
    if uri.len() > MAX_URI {
        return Err(invalid(
            "uri",
            format!("at most {MAX_URI} bytes, not {}", uri.len()),
        ));
    }
    if uri.chars().any(|c| c.is_control()) {
        return Err(invalid("uri", "no control characters"));
    }
    let scheme = uri.split_once(':').map(|(s, _)| s).unwrap_or("");
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !is_scheme {
        return Err(invalid(
            "uri",
            "not an artifact URI: give the URI Upload returned (file://…, s3://…) or sha256:<hex>",
        ));
    }
    Ok(())
}

/// Tenants become a path segment and a key segment.
fn check_tenant(tenant: &str) -> Result<(), ArtifactError> {
    if tenant.is_empty()
        || tenant.len() > 64
        || !tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(storage("tenant", format!("{tenant:?} cannot name a key")));
    }
    Ok(())
}

fn check_output_name(name: &str) -> Result<(), ArtifactError> {
    if name.is_empty()
        || name.len() > 128
        || name == "."
        || name == ".."
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(invalid(
            "name",
            format!("{name:?}: 1-128 letters, digits, '-', '_' and '.', one path segment"),
        ));
    }
    Ok(())
}

/// A list position: created_at, then digest. Tokens are `<millis>-<hex>`.
fn parse_page_token(t: &str) -> Result<(Millis, String), ArtifactError> {
    t.split_once('-')
        .and_then(|(ms, hex)| Some((ms.parse().ok()?, parse_hex(hex).filter(|h| h == hex)?)))
        .ok_or_else(|| {
            invalid(
                "page_token",
                "not a page token this gateway handed out: pass next_page_token from the previous page, or nothing",
            )
        })
}

/// Percent-encodes what is not unreserved (S3 metadata travels as HTTP headers).
fn pct_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn pct_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Walking a job's output directory for `publish_dir`.
mod outputs {
    use std::fs::File;
    use std::os::fd::OwnedFd;
    use std::path::{Path, PathBuf};

    use rustix::fs::{Mode, OFlags, ResolveFlags};

    use super::{ArtifactError, MAX_PUBLISHED_FILES, invalid, storage};

    /// A regular file below the published directory, by its path relative to it ('/'-joined).
    pub struct OutputFile {
        pub rel: String,
        pub size: u64,
    }

    /// The regular files below `root`, sorted, within `limit` bytes in all. Links and
    /// special files are skipped (and logged): a job could otherwise publish whatever a link
    /// it planted points at.
    pub fn list(root: &Path, limit: u64) -> Result<Vec<OutputFile>, ArtifactError> {
        let mut out = Vec::new();
        let mut total = 0u64;
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let dir = root.join(&rel);
            let rd = std::fs::read_dir(&dir)
                .map_err(|e| storage(&format!("reading {}", dir.display()), e))?;
            for entry in rd {
                let entry = entry.map_err(|e| storage(&format!("reading {}", dir.display()), e))?;
                let rel = rel.join(entry.file_name());
                let ft = entry
                    .file_type()
                    .map_err(|e| storage(&format!("reading {}", dir.display()), e))?;
                let Some(rel_str) = rel.to_str() else {
                    return Err(invalid(
                        "outputs",
                        format!("{}: a file name that is not UTF-8", rel.display()),
                    ));
                };
                if ft.is_dir() {
                    stack.push(rel);
                } else if ft.is_file() {
                    let size = entry
                        .metadata()
                        .map_err(|e| storage(&format!("reading {}", rel.display()), e))?
                        .len();
                    total = total.saturating_add(size);
                    if total > limit || out.len() >= MAX_PUBLISHED_FILES {
                        return Err(invalid(
                            "outputs",
                            format!(
                                "more than {limit} bytes or {MAX_PUBLISHED_FILES} files (artifacts.max_unpacked_bytes)"
                            ),
                        ));
                    }
                    out.push(OutputFile {
                        rel: rel_str.to_string(),
                        size,
                    });
                } else {
                    tracing::warn!(path = %root.join(&rel).display(), "not publishing a link or special file");
                }
            }
        }
        out.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(out)
    }

    /// Opens `rel` below `root` as the kernel resolves it: beneath the root, through no
    /// symbolic link, and only if it is a regular file — whatever was swapped in since it
    /// was listed.
    pub fn open(root: &Path, rel: &str) -> Result<File, ArtifactError> {
        let fail = |e: std::io::Error| storage(&format!("opening {rel} in {}", root.display()), e);
        let root_fd: OwnedFd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail(e.into()))?;
        let fd = loop {
            match rustix::fs::openat2(
                &root_fd,
                rel,
                OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            ) {
                Err(rustix::io::Errno::AGAIN) => continue,
                other => break other.map_err(|e| fail(e.into()))?,
            }
        };
        let file = File::from(fd);
        let md = file.metadata().map_err(fail)?;
        if !md.is_file() {
            return Err(fail(std::io::Error::other("not a regular file")));
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests;
