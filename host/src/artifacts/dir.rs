//! The directory store: `<root>/<tenant>/sha256/<hex>` holds the content and `<hex>.json` beside
//! it the record. The content is renamed into place last, so a present content file means a
//! complete artifact; a record without content (a crash in between) is not an artifact.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::outputs::{self, OutputFile};
use super::{
    Artifact, ArtifactError, ArtifactKind, CHUNK_BYTES, Content, Meta, Spooled, joined, storage,
};
use crate::domain::Millis;

pub struct DirStore {
    /// Absolute and canonical: URIs are built from it and matched against it.
    root: PathBuf,
}

fn io(what: &Path, e: std::io::Error) -> ArtifactError {
    storage(&what.display().to_string(), e)
}

impl DirStore {
    pub async fn open(root: &Path) -> Result<Self, ArtifactError> {
        let root = root.to_path_buf();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&root).map_err(|e| io(&root, e))?;
            let root = root.canonicalize().map_err(|e| io(&root, e))?;
            Ok(Self { root })
        })
        .await
        .map_err(joined)?
    }

    fn uri(&self, path: &Path) -> String {
        format!("file://{}", path.display())
    }

    fn content(&self, tenant: &str, hex: &str) -> PathBuf {
        self.root.join(tenant).join("sha256").join(hex)
    }

    fn meta_path(&self, tenant: &str, hex: &str) -> PathBuf {
        self.root
            .join(tenant)
            .join("sha256")
            .join(format!("{hex}.json"))
    }

    /// The key below the root a `file://` URI names, if it is below the root at all. Only
    /// the text is looked at: nothing on disk is followed for a client's URI.
    pub fn key_of(&self, uri: &str) -> Option<String> {
        let path = uri.strip_prefix("file://")?;
        let root = self.root.to_str()?;
        let rest = path.strip_prefix(root)?.strip_prefix('/')?;
        let rest = rest.trim_end_matches('/');
        (!rest.is_empty()
            && rest
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".."))
        .then(|| rest.to_string())
    }

    fn artifact(&self, tenant: &str, meta: Meta) -> Artifact {
        Artifact {
            uri: self.uri(&self.content(tenant, &meta.sha256)),
            sha256: meta.sha256,
            size: meta.size,
            kind: meta.kind,
            name: meta.name,
            created_at: meta.created_at,
        }
    }

    /// The record of a complete artifact, read on the calling (blocking) thread.
    fn read(&self, tenant: &str, hex: &str) -> Result<Option<Meta>, ArtifactError> {
        let content = self.content(tenant, hex);
        let md = match std::fs::symlink_metadata(&content) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&content, e)),
        };
        if !md.is_file() {
            return Err(io(&content, std::io::Error::other("not a regular file")));
        }
        let path = self.meta_path(tenant, hex);
        let text = std::fs::read(&path).map_err(|e| io(&path, e))?;
        let mut meta: Meta =
            serde_json::from_slice(&text).map_err(|e| io(&path, std::io::Error::other(e)))?;
        // What is on disk is the truth about the content.
        meta.size = md.len();
        meta.sha256 = hex.to_string();
        Ok(Some(meta))
    }

    fn write_meta(&self, tenant: &str, meta: &Meta) -> Result<(), ArtifactError> {
        let path = self.meta_path(tenant, &meta.sha256);
        let dir = path.parent().expect("a record has a directory");
        let mut tmp = tempfile::Builder::new()
            .prefix(".meta-")
            .tempfile_in(dir)
            .map_err(|e| io(dir, e))?;
        serde_json::to_writer(&mut tmp, meta).map_err(|e| io(&path, std::io::Error::other(e)))?;
        tmp.as_file().sync_all().map_err(|e| io(&path, e))?;
        tmp.persist(&path).map_err(|e| io(&path, e.error))?;
        Ok(())
    }

    pub async fn put(
        &self,
        tenant: &str,
        spooled: Spooled,
        meta: Meta,
    ) -> Result<Artifact, ArtifactError> {
        let this = self.clone_ref();
        let tenant = tenant.to_string();
        tokio::task::spawn_blocking(move || {
            let content = this.content(&tenant, &meta.sha256);
            let dir = content.parent().expect("content has a directory");
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
            if let Ok(Some(existing)) = this.read(&tenant, &meta.sha256) {
                // The same bytes: one object. A checked directory upload of bytes first sent
                // as a file makes them usable as a directory from now on.
                if existing.kind == ArtifactKind::File && meta.kind == ArtifactKind::Directory {
                    let upgraded = Meta {
                        kind: ArtifactKind::Directory,
                        ..existing
                    };
                    this.write_meta(&tenant, &upgraded)?;
                    return Ok(this.artifact(&tenant, upgraded));
                }
                return Ok(this.artifact(&tenant, existing));
            }
            this.write_meta(&tenant, &meta)?;
            persist(spooled, &content)?;
            Ok(this.artifact(&tenant, meta))
        })
        .await
        .map_err(joined)?
    }

    fn clone_ref(&self) -> Self {
        Self {
            root: self.root.clone(),
        }
    }

    pub async fn stat(&self, tenant: &str, hex: &str) -> Result<Option<Artifact>, ArtifactError> {
        let this = self.clone_ref();
        let (tenant, hex) = (tenant.to_string(), hex.to_string());
        tokio::task::spawn_blocking(move || {
            Ok(this.read(&tenant, &hex)?.map(|m| this.artifact(&tenant, m)))
        })
        .await
        .map_err(joined)?
    }

    pub async fn reader(
        &self,
        tenant: &str,
        hex: &str,
    ) -> Result<Option<Box<dyn Read + Send>>, ArtifactError> {
        Ok(self
            .open_file(tenant, hex)
            .await?
            .map(|(_, f)| Box::new(f) as Box<dyn Read + Send>))
    }

    async fn open_file(
        &self,
        tenant: &str,
        hex: &str,
    ) -> Result<Option<(Artifact, File)>, ArtifactError> {
        let this = self.clone_ref();
        let (tenant, hex) = (tenant.to_string(), hex.to_string());
        tokio::task::spawn_blocking(move || {
            let Some(meta) = this.read(&tenant, &hex)? else {
                return Ok(None);
            };
            let path = this.content(&tenant, &hex);
            let f = File::open(&path).map_err(|e| io(&path, e))?;
            Ok(Some((this.artifact(&tenant, meta), f)))
        })
        .await
        .map_err(joined)?
    }

    pub async fn download(
        &self,
        tenant: &str,
        hex: &str,
    ) -> Result<Option<(Artifact, Content)>, ArtifactError> {
        let Some((artifact, mut file)) = self.open_file(tenant, hex).await? else {
            return Ok(None);
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, ArtifactError>>(2);
        // Read on the blocking pool; a client that stops reading stops the reader.
        tokio::task::spawn_blocking(move || {
            loop {
                let mut buf = vec![0; CHUNK_BYTES];
                let n = match file.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(storage("reading an artifact", e)));
                        return;
                    }
                };
                buf.truncate(n);
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return;
                }
            }
        });
        let content = async_stream::stream! {
            while let Some(item) = rx.recv().await {
                yield item;
            }
        };
        Ok(Some((artifact, Box::pin(content))))
    }

    /// Every complete artifact of the tenant, as (created_at, digest).
    pub async fn list(&self, tenant: &str) -> Result<Vec<(Millis, String)>, ArtifactError> {
        let this = self.clone_ref();
        let tenant = tenant.to_string();
        tokio::task::spawn_blocking(move || {
            let dir = this.root.join(&tenant).join("sha256");
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(io(&dir, e)),
            };
            let mut out = Vec::new();
            for entry in rd {
                let entry = entry.map_err(|e| io(&dir, e))?;
                let name = entry.file_name();
                let Some(hex) = name
                    .to_str()
                    .filter(|n| super::parse_hex(n).as_deref() == Some(*n))
                else {
                    continue;
                };
                if let Some(meta) = this.read(&tenant, hex)? {
                    out.push((meta.created_at, meta.sha256));
                }
            }
            Ok(out)
        })
        .await
        .map_err(joined)?
    }

    /// Copies the files into `<root>/<tenant>/outputs/<name>`, replacing an earlier copy whole.
    pub async fn publish(
        &self,
        tenant: &str,
        name: &str,
        src: &Path,
        files: Vec<OutputFile>,
    ) -> Result<String, ArtifactError> {
        let this = self.clone_ref();
        let (tenant, name, src) = (tenant.to_string(), name.to_string(), src.to_path_buf());
        tokio::task::spawn_blocking(move || {
            let parent = this.root.join(&tenant).join("outputs");
            std::fs::create_dir_all(&parent).map_err(|e| io(&parent, e))?;
            // Built beside its place and renamed there, so no one sees half a copy.
            let staging = tempfile::Builder::new()
                .prefix(&format!(".{name}-"))
                .tempdir_in(&parent)
                .map_err(|e| io(&parent, e))?;
            for f in &files {
                let mut from = outputs::open(&src, &f.rel)?;
                let to = staging.path().join(&f.rel);
                if let Some(d) = to.parent() {
                    std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
                }
                let mut out = File::create(&to).map_err(|e| io(&to, e))?;
                std::io::copy(&mut (&mut from).take(f.size), &mut out).map_err(|e| io(&to, e))?;
                out.sync_all().map_err(|e| io(&to, e))?;
            }
            let dest = parent.join(&name);
            match std::fs::remove_dir_all(&dest) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&dest, e)),
            }
            let staged = staging.keep();
            std::fs::rename(&staged, &dest).map_err(|e| {
                let _ = std::fs::remove_dir_all(&staged);
                io(&dest, e)
            })?;
            Ok(this.uri(&dest))
        })
        .await
        .map_err(joined)?
    }
}

/// Moves a complete upload to its place: a rename on the same filesystem; else a copy beside
/// the place, then a rename, so the place only ever holds the whole content.
fn persist(spooled: Spooled, dest: &Path) -> Result<(), ArtifactError> {
    match spooled.path.persist(dest) {
        Ok(()) => Ok(()),
        Err(e) if e.error.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            let mut src = File::open(&e.path).map_err(|err| io(&e.path, err))?;
            let dir = dest.parent().expect("content has a directory");
            let mut tmp = tempfile::Builder::new()
                .prefix(".upload-")
                .tempfile_in(dir)
                .map_err(|e| io(dir, e))?;
            std::io::copy(&mut src, &mut tmp).map_err(|e| io(dest, e))?;
            tmp.as_file().sync_all().map_err(|e| io(dest, e))?;
            tmp.persist(dest).map_err(|e| io(dest, e.error))?;
            // e.path, dropped here, removes the spooled file.
            Ok(())
        }
        Err(e) => Err(io(dest, e.error)),
    }
}
