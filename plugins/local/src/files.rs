//! The granted root directory. The host preopens it at /work; the `process` capability takes
//! the same locations relative to the root, so paths are kept relative and joined here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use mlgw_plugin_sdk::{BackendError, internal};

pub const GUEST_ROOT: &str = "/work";

/// Where a root-relative path is inside this guest.
pub fn guest_path(rel: &str) -> PathBuf {
    Path::new(GUEST_ROOT).join(rel)
}

/// backend-name becomes a directory name; the host promises a DNS label, but a name that could
/// climb out of the job directory must never reach the filesystem.
pub fn check_dir_name(name: &str) -> Result<(), BackendError> {
    let ok = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']);
    if ok {
        Ok(())
    } else {
        Err(internal(format!(
            "backend name {name:?} is not usable as a directory name"
        )))
    }
}

pub fn create_dir_all(path: &Path) -> Result<(), BackendError> {
    std::fs::create_dir_all(path).map_err(|e| internal(format!("creating {}: {e}", path.display())))
}

/// Writes via a temporary file and a rename, so a crash never leaves a half-written file for
/// the next call to trip over.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), BackendError> {
    let err = |e: std::io::Error| internal(format!("writing {}: {e}", path.display()));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}

/// The file's contents, or None if it does not exist.
pub fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, BackendError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(internal(format!("reading {}: {e}", path.display()))),
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names() {
        check_dir_name("job-abc123").unwrap();
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b"] {
            assert!(check_dir_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn guest_paths_are_under_the_root() {
        assert_eq!(
            guest_path("jobs/x/logs.txt"),
            PathBuf::from("/work/jobs/x/logs.txt")
        );
    }

    #[test]
    fn atomic_writes_replace_and_read_back() {
        let dir = std::env::temp_dir().join(format!("mlgw-local-files-{}", std::process::id()));
        create_dir_all(&dir).unwrap();
        let path = dir.join("handle.json");
        assert_eq!(read_if_exists(&path).unwrap(), None);
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(read_if_exists(&path).unwrap().as_deref(), Some(&b"two"[..]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
