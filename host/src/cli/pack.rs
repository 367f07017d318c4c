//! Packing a directory into the tarball a directory artifact is, and uploading it: one place
//! for `mlgw artifacts put` and `mlgw submit --code`.
//!
//! `.gitignore` and `.mlgwignore` files are honoured (in the directory, below it and above it),
//! `.git` is left out, and the archive is deterministic — sorted, no timestamps or owners —
//! so the same code packs to the same bytes and, the store being content-addressed, uploads
//! once. A symbolic link is kept as a link only if it points inside the directory; anything
//! else is refused before a byte is sent.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use crate::api::pb::{self, artifact_service_client::ArtifactServiceClient, upload_request::Part};

/// Content sent in chunks of this size.
const CHUNK: usize = 1 << 20;
/// Uploads at least this large show a progress bar (on a terminal).
const PROGRESS_FROM: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{}: {reason}", path.display())]
    Refused { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Content ready to upload, in a temporary file removed when this is dropped.
pub struct Packed {
    pub file: File,
    pub size: u64,
    pub sha256: String,
    pub kind: pb::ArtifactKind,
    pub name: String,
    /// Entries packed (1 for a file).
    pub entries: usize,
}

/// A file as it is, or a directory packed; named after its last component unless `name`.
pub fn prepare(path: &Path, name: Option<String>) -> Result<Packed, PackError> {
    let md = std::fs::metadata(path).map_err(io(path))?;
    let name = name.unwrap_or_else(|| {
        path.canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default()
    });
    if md.is_dir() {
        let (file, entries) = pack_dir(path)?;
        finish(file, pb::ArtifactKind::Directory, name, entries, path)
    } else if md.is_file() {
        let file = File::open(path).map_err(io(path))?;
        finish(file, pb::ArtifactKind::File, name, 1, path)
    } else {
        Err(PackError::Refused {
            path: path.into(),
            reason: "neither a file nor a directory".into(),
        })
    }
}

fn finish(
    mut file: File,
    kind: pb::ArtifactKind,
    name: String,
    entries: usize,
    path: &Path,
) -> Result<Packed, PackError> {
    file.rewind().map_err(io(path))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).map_err(io(path))?;
    file.rewind().map_err(io(path))?;
    Ok(Packed {
        file,
        size,
        sha256: hex::encode(hasher.finalize()),
        kind,
        name,
        entries,
    })
}

/// Packs `dir` as a gzip-compressed tar into an anonymous temporary file.
pub fn pack_dir(dir: &Path) -> Result<(File, usize), PackError> {
    let root = dir.canonicalize().map_err(io(dir))?;
    let out = tempfile::tempfile().map_err(io(dir))?;
    let gz = flate2::GzBuilder::new().write(out, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let walk = ignore::WalkBuilder::new(&root)
        .hidden(false)
        .git_ignore(true)
        .git_global(false)
        .git_exclude(false)
        .require_git(false)
        .follow_links(false)
        .add_custom_ignore_filename(".mlgwignore")
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(|e| e.file_name() != ".git")
        .build();
    let mut entries = 0;
    for entry in walk {
        let entry = entry.map_err(|e| PackError::Refused {
            path: root.clone(),
            reason: e.to_string(),
        })?;
        if entry.depth() == 0 {
            continue;
        }
        let path = entry.path();
        let rel = path.strip_prefix(&root).expect("walked below the root");
        let Some(ft) = entry.file_type() else {
            continue;
        };
        if ft.is_dir() {
            tar.append_dir(rel, path).map_err(io(path))?;
        } else if ft.is_file() {
            let mut f = File::open(path).map_err(io(path))?;
            tar.append_file(rel, &mut f).map_err(io(path))?;
        } else if ft.is_symlink() {
            let target = link_inside(&root, rel)?;
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            h.set_mtime(tar::DETERMINISTIC_TIMESTAMP);
            tar.append_link(&mut h, rel, &target).map_err(io(path))?;
        } else {
            return Err(PackError::Refused {
                path: path.into(),
                reason: "not a file, directory or symbolic link (a device, FIFO or socket)".into(),
            });
        }
        entries += 1;
    }
    let gz = tar.into_inner().map_err(io(dir))?;
    let mut out = gz.finish().map_err(io(dir))?;
    out.flush().map_err(io(dir))?;
    Ok((out, entries))
}

/// The target the link at `rel` (below `root`) gets in the archive: relative, and inside the
/// directory — lexically and as the filesystem resolves it — else the link is refused.
fn link_inside(root: &Path, rel: &Path) -> Result<PathBuf, PackError> {
    let path = root.join(rel);
    let target = std::fs::read_link(&path).map_err(io(&path))?;
    let out = |why: String| PackError::Refused {
        path: path.clone(),
        reason: format!(
            "a symbolic link to {} {why}; only links inside the directory can be packed",
            target.display()
        ),
    };
    let parent = rel.parent().unwrap_or(Path::new(""));
    // Where it points, relative to the root, as written.
    let lexical = if target.is_absolute() {
        target
            .strip_prefix(root)
            .map(Path::to_path_buf)
            .map_err(|_| out("leads out of the directory".into()))?
    } else {
        let mut at: Vec<Component> = parent.components().collect();
        for c in target.components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    if at.pop().is_none() {
                        return Err(out("leads out of the directory".into()));
                    }
                }
                Component::Normal(_) => at.push(c),
                _ => return Err(out("leads out of the directory".into())),
            }
        }
        at.iter().collect()
    };
    // And where the filesystem takes it, links on the way included.
    if let Ok(real) = path.canonicalize()
        && !real.starts_with(root)
    {
        return Err(out(format!("resolves to {}, outside it", real.display())));
    }
    // Written relative to the link's own directory, as the archive check wants.
    let ups = parent.components().count();
    let mut rewritten = PathBuf::new();
    for _ in 0..ups {
        rewritten.push("..");
    }
    rewritten.push(&lexical);
    if rewritten.as_os_str().is_empty() {
        rewritten.push(".");
    }
    Ok(if target.is_absolute() {
        rewritten
    } else {
        target
    })
}

/// Uploads prepared content; shows a progress bar on stderr for big uploads.
pub async fn upload(ch: Channel, p: Packed) -> Result<pb::Artifact, tonic::Status> {
    let bar = if p.size >= PROGRESS_FROM {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(p.size),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(format!("uploading {}", p.name));
        Some(bar)
    } else {
        None
    };
    let header = pb::UploadHeader {
        name: p.name,
        kind: p.kind as i32,
        // Both checked by the gateway: a read that fails half way here cannot be stored as
        // if it were the whole.
        sha256: p.sha256,
        size: p.size,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadRequest>(4);
    let mut file = p.file;
    let progress = bar.clone();
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let first = pb::UploadRequest {
            part: Some(Part::Header(header)),
        };
        if tx.blocking_send(first).is_err() {
            return Ok(());
        }
        loop {
            let mut buf = vec![0; CHUNK];
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            if let Some(b) = &progress {
                b.inc(n as u64);
            }
            let msg = pb::UploadRequest {
                part: Some(Part::Chunk(buf)),
            };
            if tx.blocking_send(msg).is_err() {
                return Ok(());
            }
        }
    });
    let answer = ArtifactServiceClient::new(ch)
        .upload(receiver_stream(rx))
        .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Ok(Err(e)) = reader.await {
        return Err(tonic::Status::aborted(format!("reading the upload: {e}")));
    }
    answer.map(|r| r.into_inner())
}

fn receiver_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    async_stream::stream! {
        while let Some(m) = rx.recv().await {
            yield m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(file: File) -> Vec<(String, tar::EntryType, Option<String>)> {
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                    e.link_name().unwrap().map(|l| l.display().to_string()),
                )
            })
            .collect()
    }

    #[test]
    fn packs_what_is_not_ignored_deterministically() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("pkg/__pycache__")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join(".git/HEAD"), "ref").unwrap();
        std::fs::write(root.join("train.py"), "print(1)").unwrap();
        std::fs::write(root.join("pkg/mod.py"), "x = 1").unwrap();
        std::fs::write(root.join("pkg/__pycache__/mod.pyc"), "junk").unwrap();
        std::fs::write(root.join("big.bin"), "junk").unwrap();
        std::fs::write(root.join(".gitignore"), "__pycache__/\n").unwrap();
        std::fs::write(root.join(".mlgwignore"), "*.bin\n").unwrap();
        std::os::unix::fs::symlink("train.py", root.join("main.py")).unwrap();
        std::os::unix::fs::symlink(root.join("pkg/mod.py"), root.join("abs.py")).unwrap();
        let a = prepare(root, None).unwrap();
        let names: Vec<_> = entries(a.file.try_clone().unwrap());
        let paths: Vec<&str> = names.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                ".gitignore",
                ".mlgwignore",
                "abs.py",
                "main.py",
                "pkg",
                "pkg/mod.py",
                "train.py"
            ]
        );
        let link = |p: &str| names.iter().find(|(n, _, _)| n == p).unwrap().2.clone();
        assert_eq!(link("main.py").as_deref(), Some("train.py"));
        // An absolute link inside is rewritten relative, as the store requires.
        assert_eq!(link("abs.py").as_deref(), Some("pkg/mod.py"));
        // Packed twice, the same bytes: the same code uploads once.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(root.join("train.py"), "print(1)").unwrap();
        let b = prepare(root, None).unwrap();
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(a.kind, pb::ArtifactKind::Directory);
    }

    #[test]
    fn a_link_out_of_the_directory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("src");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(d.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("sub/leak")).unwrap();
        let e = prepare(&root, None).err().unwrap().to_string();
        assert!(
            e.contains("sub/leak") && e.contains("leads out of the directory"),
            "{e}"
        );

        std::fs::remove_file(root.join("sub/leak")).unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("sub/leak")).unwrap();
        let e = prepare(&root, None).err().unwrap().to_string();
        assert!(e.contains("leads out of the directory"), "{e}");

        // Inside as written, outside through another link: refused too.
        std::fs::remove_file(root.join("sub/leak")).unwrap();
        std::os::unix::fs::symlink("..", root.join("sub/up")).unwrap();
        std::os::unix::fs::symlink("up/../secret", root.join("sub/x")).unwrap();
        let e = prepare(&root, None).err().unwrap().to_string();
        assert!(e.contains("sub/x") && e.contains("outside"), "{e}");
    }
}
