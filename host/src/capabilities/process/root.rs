//! The granted root directory, touched only beneath itself.
//!
//! A plugin writes freely under its root (it is preopened at /work), so it can plant a symbolic
//! link there that points anywhere. Checking a path's text is not enough: every path the host
//! (or the supervisor) opens under the root is resolved by the kernel with `openat2`
//! `RESOLVE_BENEATH`, relative to a descriptor of the root, so no link can lead out of it. Files
//! are opened non-blocking and checked to be regular files before they are read or appended to,
//! so a FIFO or a device planted under a name the host uses can neither block a thread nor feed
//! it endless bytes.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// The path's text is unusable: absolute, `..`, empty.
    #[error("{what} {path:?} {reason}")]
    BadPath {
        what: String,
        path: String,
        reason: &'static str,
    },
    /// Resolving the path would leave the root (a symbolic link out of it, or a magic link).
    #[error("{what} {path:?} leads out of the target's root through a symbolic link")]
    Escapes { what: String, path: String },
    #[error("{what} {path:?} is not a regular file")]
    NotRegular { what: String, path: String },
    #[error("{what} {path:?} is larger than {limit} bytes")]
    TooLarge {
        what: String,
        path: String,
        limit: usize,
    },
    #[error("{what} {path:?}: {source}")]
    Io {
        what: String,
        path: String,
        source: std::io::Error,
    },
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// A root directory: its canonical path (for handing absolute paths to processes) and a
/// descriptor that every lookup starts from.
pub struct Root {
    path: PathBuf,
    fd: OwnedFd,
}

/// One relative path under the root, with the words used to report it.
struct Rel<'a> {
    what: &'a str,
    text: &'a str,
    path: &'a Path,
}

impl Rel<'_> {
    fn err(&self, e: Errno) -> RootError {
        match e {
            // EXDEV: resolution left the root; ELOOP: a magic link, or too many links.
            Errno::XDEV | Errno::LOOP => RootError::Escapes {
                what: self.what.into(),
                path: self.text.into(),
            },
            other => RootError::Io {
                what: self.what.into(),
                path: self.text.into(),
                source: other.into(),
            },
        }
    }
}

/// Checks the text of a root-relative path: relative, and no `..` (refused, not normalised).
fn parse<'a>(what: &'a str, text: &'a str) -> Result<Rel<'a>, RootError> {
    let bad = |reason| RootError::BadPath {
        what: what.into(),
        path: text.into(),
        reason,
    };
    if text.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let path = Path::new(text);
    if path.is_absolute() {
        return Err(bad("is absolute; paths are relative to the target's root"));
    }
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(bad("leaves the target's root"));
    }
    Ok(Rel { what, text, path })
}

fn normal_components(p: &Path) -> Vec<&std::ffi::OsStr> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

impl Root {
    /// Opens (creating if needed) the root directory itself. Its path comes from the operator.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(path)?;
        let path = path.canonicalize()?;
        let fd = rustix::fs::open(
            &path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { path, fd })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The absolute host path of a root-relative path, after checking its text.
    pub fn host_path(&self, what: &str, rel: &str) -> Result<PathBuf, RootError> {
        let rel = parse(what, rel)?;
        Ok(self.path.join(rel.path))
    }

    fn openat(&self, path: &Path, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
        let path = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        loop {
            match rustix::fs::openat2(&self.fd, path, flags | OFlags::CLOEXEC, mode, BENEATH) {
                // openat2 asks for a retry when a rename raced the lookup.
                Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
                other => return other,
            }
        }
    }

    /// Creates `rel` and its parents as directories beneath the root; returns the directory.
    pub fn create_dir_all(&self, what: &str, rel: &str) -> Result<OwnedFd, RootError> {
        let rel = parse(what, rel)?;
        let dir = OFlags::PATH | OFlags::DIRECTORY;
        let parts = normal_components(rel.path);
        let mut current = self
            .openat(Path::new("."), dir, Mode::empty())
            .map_err(|e| rel.err(e))?;
        let mut prefix = PathBuf::new();
        for part in parts {
            prefix.push(part);
            current = match self.openat(&prefix, dir, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(&current, part, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(rel.err(e)),
                    }
                    self.openat(&prefix, dir, Mode::empty())
                        .map_err(|e| rel.err(e))?
                }
                Err(e) => return Err(rel.err(e)),
            };
        }
        Ok(current)
    }

    /// Opens a directory beneath the root (as a path descriptor, for `*at` calls and fchdir).
    pub fn open_dir(&self, what: &str, rel: &str) -> Result<OwnedFd, RootError> {
        let rel = parse(what, rel)?;
        self.openat(rel.path, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            .map_err(|e| rel.err(e))
    }

    /// Checks that `rel`, as far as it exists, resolves beneath the root: the longest existing
    /// prefix is opened beneath it.
    pub fn check_beneath(&self, what: &str, rel: &str) -> Result<(), RootError> {
        let rel = parse(what, rel)?;
        let parts = normal_components(rel.path);
        for n in (0..=parts.len()).rev() {
            let prefix: PathBuf = parts[..n].iter().collect();
            match self.openat(&prefix, OFlags::PATH, Mode::empty()) {
                Ok(_) => return Ok(()),
                Err(Errno::NOENT) | Err(Errno::NOTDIR) => continue,
                Err(e) => return Err(rel.err(e)),
            }
        }
        Ok(())
    }

    /// Opens (creating) a regular file beneath the root for appending.
    pub fn open_append(&self, what: &str, rel: &str) -> Result<File, RootError> {
        let rel = parse(what, rel)?;
        let fd = self
            .openat(
                rel.path,
                OFlags::WRONLY
                    | OFlags::APPEND
                    | OFlags::CREATE
                    | OFlags::NONBLOCK
                    | OFlags::NOCTTY,
                Mode::from_raw_mode(0o644),
            )
            .map_err(|e| rel.err(e))?;
        regular(&rel, &fd)?;
        Ok(File::from(fd))
    }

    /// Creates (or truncates) a regular file beneath the root for writing, with `mode`. A link
    /// in its place is not followed.
    pub fn create_file(&self, what: &str, rel: &str, mode: u32) -> Result<File, RootError> {
        let rel = parse(what, rel)?;
        let fd = self
            .openat(
                rel.path,
                OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::TRUNC
                    | OFlags::NOFOLLOW
                    | OFlags::NONBLOCK
                    | OFlags::NOCTTY,
                Mode::from_raw_mode(mode & 0o777),
            )
            .map_err(|e| rel.err(e))?;
        regular(&rel, &fd)?;
        Ok(File::from(fd))
    }

    /// Makes `rel` a symbolic link to `target`, which must be relative and, from where the link
    /// is, stay beneath the root.
    pub fn symlink(&self, what: &str, target: &str, rel: &str) -> Result<(), RootError> {
        let parsed = parse(what, rel)?;
        let bad = |reason| RootError::BadPath {
            what: what.into(),
            path: format!("{rel} -> {target}"),
            reason,
        };
        let t = Path::new(target);
        if t.is_absolute() || target.contains('\0') {
            return Err(bad("points to an absolute path"));
        }
        // Depth of the link's directory below the root, against the `..`s of its target.
        let mut depth = normal_components(parsed.path).len() as i64 - 1;
        for c in t.components() {
            match c {
                Component::ParentDir => depth -= 1,
                Component::Normal(_) => depth += 1,
                _ => {}
            }
            if depth < 0 {
                return Err(bad("points out of the target's root"));
            }
        }
        let name = parsed.path.file_name().ok_or(bad("names no file"))?;
        let parent = parsed.path.parent().unwrap_or(Path::new(""));
        let dir = self
            .openat(parent, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            .map_err(|e| parsed.err(e))?;
        rustix::fs::symlinkat(target, &dir, name).map_err(|e| parsed.err(e))
    }

    /// Reads a regular file beneath the root, refusing one larger than `limit`. `None` when it
    /// does not exist.
    pub fn read_regular(
        &self,
        what: &str,
        rel: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, RootError> {
        let rel = parse(what, rel)?;
        let fd = match self.openat(
            rel.path,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(rel.err(e)),
        };
        regular(&rel, &fd)?;
        let mut bytes = Vec::new();
        File::from(fd)
            .take(limit as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| RootError::Io {
                what: rel.what.into(),
                path: rel.text.into(),
                source,
            })?;
        if bytes.len() > limit {
            return Err(RootError::TooLarge {
                what: rel.what.into(),
                path: rel.text.into(),
                limit,
            });
        }
        Ok(Some(bytes))
    }

    /// Replaces `rel` atomically with `contents`: written to a fresh temporary beside it, then
    /// renamed over it within the same directory descriptor.
    pub fn write_atomic(&self, what: &str, rel: &str, contents: &[u8]) -> Result<(), RootError> {
        let parsed = parse(what, rel)?;
        let name = parsed.path.file_name().ok_or(RootError::BadPath {
            what: what.into(),
            path: rel.into(),
            reason: "names no file",
        })?;
        let parent = parsed.path.parent().unwrap_or(Path::new(""));
        let dir = self
            .openat(parent, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            .map_err(|e| parsed.err(e))?;
        let mut tmp = name.to_os_string();
        tmp.push(".tmp");
        // Whatever sits at the temporary name (a planted link, say) is removed, not followed.
        match rustix::fs::unlinkat(&dir, tmp.as_os_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(parsed.err(e)),
        }
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_os_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| parsed.err(e))?;
        File::from(fd)
            .write_all(contents)
            .map_err(|source| RootError::Io {
                what: what.into(),
                path: rel.into(),
                source,
            })?;
        rustix::fs::renameat(&dir, tmp.as_os_str(), &dir, name).map_err(|e| parsed.err(e))
    }
}

fn regular(rel: &Rel, fd: &OwnedFd) -> Result<(), RootError> {
    let st = rustix::fs::fstat(fd).map_err(|e| rel.err(e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(RootError::NotRegular {
            what: rel.what.into(),
            path: rel.text.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root() -> (tempfile::TempDir, tempfile::TempDir, Root) {
        let base = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = Root::open(&base.path().join("root")).unwrap();
        (base, outside, root)
    }

    #[test]
    fn creates_reads_and_writes_beneath_the_root() {
        let (_b, _o, root) = root();
        root.create_dir_all("cwd", "jobs/a/b").unwrap();
        assert!(root.path().join("jobs/a/b").is_dir());
        root.write_atomic("exit-file", "jobs/a/exit.json", b"{}")
            .unwrap();
        assert_eq!(
            root.read_regular("exit-file", "jobs/a/exit.json", 10)
                .unwrap(),
            Some(b"{}".to_vec())
        );
        assert_eq!(root.read_regular("x", "jobs/a/none", 10).unwrap(), None);
        let mut f = root.open_append("log-file", "jobs/a/log.txt").unwrap();
        f.write_all(b"line\n").unwrap();
        assert!(matches!(
            root.read_regular("x", "jobs/a/log.txt", 2),
            Err(RootError::TooLarge { limit: 2, .. })
        ));
    }

    #[test]
    fn links_out_of_the_root_are_never_followed() {
        let (_b, outside, root) = root();
        // A relative link that climbs out, and an absolute one.
        symlink("../../../../../../..", root.path().join("up")).unwrap();
        symlink(outside.path(), root.path().join("abs")).unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        for rel in ["up/tmp/x", "abs/x", "abs/secret"] {
            assert!(
                matches!(
                    root.create_dir_all("cwd", rel),
                    Err(RootError::Escapes { .. })
                ),
                "{rel}"
            );
            assert!(
                matches!(root.open_append("log", rel), Err(RootError::Escapes { .. })),
                "{rel}"
            );
            assert!(matches!(
                root.check_beneath("path", rel),
                Err(RootError::Escapes { .. })
            ));
        }
        assert!(matches!(
            root.read_regular("exit", "abs/secret", 100),
            Err(RootError::Escapes { .. })
        ));
        assert!(matches!(
            root.write_atomic("exit", "abs/secret", b"x"),
            Err(RootError::Escapes { .. })
        ));
        assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"s");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
        // A link that stays inside is fine.
        root.create_dir_all("d", "real").unwrap();
        symlink("real", root.path().join("inside")).unwrap();
        root.create_dir_all("d", "inside/sub").unwrap();
        assert!(root.path().join("real/sub").is_dir());
        root.check_beneath("p", "inside/sub/not-yet").unwrap();
    }

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let (_b, _o, root) = root();
        let fifo = root.path().join("exit.json");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert!(matches!(
            root.read_regular("exit-file", "exit.json", 100),
            Err(RootError::NotRegular { .. })
        ));
        assert!(matches!(
            root.open_append("log-file", "exit.json"),
            Err(RootError::NotRegular { .. }) | Err(RootError::Io { .. })
        ));
        // Replacing it atomically works: the rename does not open it.
        root.write_atomic("exit-file", "exit.json", b"{}").unwrap();
        assert!(root.path().join("exit.json").is_file());
        symlink("/dev/zero", root.path().join("zero")).unwrap();
        assert!(matches!(
            root.read_regular("exit-file", "zero", 100),
            Err(RootError::Escapes { .. })
        ));
    }

    #[test]
    fn bad_text_is_refused() {
        let (_b, _o, root) = root();
        for bad in ["/etc/passwd", "../x", "a/../../x", "a\0b"] {
            assert!(
                matches!(root.host_path("p", bad), Err(RootError::BadPath { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            root.host_path("p", "jobs/x").unwrap(),
            root.path().join("jobs/x")
        );
    }
}
