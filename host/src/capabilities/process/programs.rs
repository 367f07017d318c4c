//! Which program a spawn request may run, matched exactly against the grant.
//!
//! A bare name is looked up through the PATH the operator fixes in the grant (never one the
//! plugin hands in), and the resolved absolute path is what runs, so the plugin's environment
//! cannot redirect the lookup. An absolute path must be one the grant names. Relative paths
//! with a slash are refused: relative to what the plugin controls, they would name a program
//! the plugin could have written. And a program inside the plugin's own writable root is
//! refused unless the grant allows it, since the plugin can write any file there.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::ProcessGrant;

/// Why a program was refused, in the capability's terms.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not allowed by the grant (the message says which key would allow it).
    Denied(String),
    /// Allowed, but not found on the grant's PATH.
    NotFound(String),
    Invalid(String),
}

pub struct ProgramPolicy {
    target: String,
    any: bool,
    names: Vec<String>,
    paths: Vec<PathBuf>,
    search: Vec<PathBuf>,
    allow_in_root: bool,
    root: PathBuf,
}

impl ProgramPolicy {
    pub fn new(target: &str, grant: &ProcessGrant, root: &Path) -> Self {
        let (paths, names): (Vec<&String>, Vec<&String>) = grant
            .programs
            .iter()
            .filter(|p| *p != "*")
            .partition(|p| p.starts_with('/'));
        Self {
            target: target.into(),
            any: grant.programs.iter().any(|p| p == "*"),
            names: names.into_iter().cloned().collect(),
            paths: paths.into_iter().map(PathBuf::from).collect(),
            search: grant.search_path(),
            allow_in_root: grant.allow_programs_in_root,
            root: root.to_path_buf(),
        }
    }

    fn key(&self, field: &str) -> String {
        format!("targets.{}.grants.process.{field}", self.target)
    }

    /// The absolute path to run for `program`.
    pub fn resolve(&self, program: &str) -> Result<PathBuf, Refusal> {
        if program.is_empty() {
            return Err(Refusal::Invalid("program is empty".into()));
        }
        if program.contains('\0') {
            return Err(Refusal::Invalid("program contains a NUL byte".into()));
        }
        let path = if program.starts_with('/') {
            let p = PathBuf::from(program);
            if !self.any && !self.paths.contains(&p) {
                return Err(Refusal::Denied(format!(
                    "program {program:?} is not in target {}'s allowed programs ({})",
                    self.target,
                    self.key("programs")
                )));
            }
            p
        } else if program.contains('/') {
            return Err(Refusal::Denied(format!(
                "program {program:?} is a relative path; give a bare name (looked up through {}) \
                 or an absolute path",
                self.key("path")
            )));
        } else {
            if !self.any && !self.names.iter().any(|n| n == program) {
                return Err(Refusal::Denied(format!(
                    "program {program:?} is not in target {}'s allowed programs ({})",
                    self.target,
                    self.key("programs")
                )));
            }
            self.search
                .iter()
                .map(|dir| dir.join(program))
                .find(|c| is_executable(c))
                .ok_or_else(|| {
                    Refusal::NotFound(format!(
                        "program {program:?} is not on target {}'s PATH ({} = {:?})",
                        self.target,
                        self.key("path"),
                        self.search
                    ))
                })?
        };
        if !self.allow_in_root && self.inside_root(&path) {
            return Err(Refusal::Denied(format!(
                "program {} is inside target {}'s writable root, where the plugin can write \
                 any file; allow it with {} = true",
                path.display(),
                self.target,
                self.key("allow_programs_in_root")
            )));
        }
        Ok(path)
    }

    /// By its text, or once links are resolved (a path outside whose links lead inside).
    fn inside_root(&self, path: &Path) -> bool {
        path.starts_with(&self.root)
            || path
                .canonicalize()
                .is_ok_and(|real| real.starts_with(&self.root))
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        bin: PathBuf,
        root: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(root.join("x")).unwrap();
        exe(&bin, "python3");
        Fixture {
            _dir: dir,
            bin,
            root,
        }
    }

    fn policy(f: &Fixture, programs: &[&str], allow_in_root: bool) -> ProgramPolicy {
        let grant = ProcessGrant {
            programs: programs.iter().map(|s| s.to_string()).collect(),
            path: Some(vec![f.root.join("x"), f.bin.clone()]),
            allow_programs_in_root: allow_in_root,
            ..Default::default()
        };
        ProgramPolicy::new("t", &grant, &f.root)
    }

    #[test]
    fn names_resolve_through_the_grants_path_only() {
        let f = fixture();
        let p = policy(&f, &["python3"], false);
        assert_eq!(p.resolve("python3").unwrap(), f.bin.join("python3"));
        assert!(matches!(p.resolve("bash"), Err(Refusal::Denied(_))));
        // The old file-name match: a granted name does not allow any path ending in it.
        assert!(matches!(
            p.resolve(f.root.join("x/python3").to_str().unwrap()),
            Err(Refusal::Denied(_))
        ));
        assert!(matches!(p.resolve("x/python3"), Err(Refusal::Denied(_))));
        assert!(matches!(p.resolve("./python3"), Err(Refusal::Denied(_))));
    }

    #[test]
    fn a_program_the_plugin_wrote_into_its_root_is_refused() {
        let f = fixture();
        let planted = exe(&f.root.join("x"), "python3");
        let any = policy(&f, &["*"], false);
        // Even with "*", and even when it comes first on the grant's PATH.
        match any.resolve(planted.to_str().unwrap()) {
            Err(Refusal::Denied(m)) => assert!(m.contains("allow_programs_in_root"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(any.resolve("python3"), Err(Refusal::Denied(_))));
        // A link outside the root that leads inside is inside.
        let link = f.bin.join("sneaky");
        std::os::unix::fs::symlink(&planted, &link).unwrap();
        assert!(matches!(
            any.resolve(link.to_str().unwrap()),
            Err(Refusal::Denied(_))
        ));
        let allowed = policy(&f, &["*"], true);
        assert_eq!(allowed.resolve(planted.to_str().unwrap()).unwrap(), planted);
    }

    #[test]
    fn absolute_paths_must_be_granted_exactly() {
        let f = fixture();
        let py = f.bin.join("python3");
        let p = policy(&f, &[py.to_str().unwrap()], false);
        assert_eq!(p.resolve(py.to_str().unwrap()).unwrap(), py);
        assert!(matches!(p.resolve("python3"), Err(Refusal::Denied(_))));
        assert!(matches!(p.resolve("/bin/sh"), Err(Refusal::Denied(_))));
        assert!(matches!(
            policy(&f, &["*"], false).resolve("nothing-like-this"),
            Err(Refusal::NotFound(_))
        ));
        assert!(matches!(p.resolve("a\0b"), Err(Refusal::Invalid(_))));
    }
}
