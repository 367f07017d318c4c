//! The environment a started process gets: what the operator passes through from the gateway
//! (`inherit_env`), then what the plugin asks for, minus the variables that make a loader or an
//! interpreter run code of the plugin's choosing (`LD_PRELOAD`, `PYTHONPATH`, `NODE_OPTIONS`, …)
//! unless the grant allows them by name. Refused, not silently dropped: a job that needed the
//! variable would otherwise run wrong without saying why.

use std::collections::BTreeSet;

/// Variables that steer dynamic loaders, interpreters and shells into loading other code.
const PROTECTED: &[&str] = &[
    "PATH",
    // glibc
    "GCONV_PATH",
    "GETCONF_DIR",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    // shells
    "BASH_ENV",
    "ENV",
    "BASHOPTS",
    "SHELLOPTS",
    "PROMPT_COMMAND",
    "PS4",
    "IFS",
    // Python
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONPLATLIBDIR",
    "PYTHONWARNINGS",
    "PYTHONBREAKPOINT",
    "PYTHONINSPECT",
    // other interpreters and runtimes
    "PERL5LIB",
    "PERLLIB",
    "PERL5OPT",
    "RUBYLIB",
    "RUBYOPT",
    "NODE_OPTIONS",
    "NODE_PATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    "R_PROFILE",
    "R_PROFILE_USER",
    "R_LIBS",
    "R_LIBS_USER",
    "GIT_EXEC_PATH",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_SYSTEM",
];

/// Whole families: the dynamic loaders' variables and exported shell functions.
const PROTECTED_PREFIXES: &[&str] = &["LD_", "DYLD_", "BASH_FUNC_"];

pub fn is_protected(name: &str) -> bool {
    PROTECTED.contains(&name) || PROTECTED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Why a plugin's environment was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Denied(String),
    Invalid(String),
}

pub struct EnvPolicy {
    target: String,
    allowed: BTreeSet<String>,
}

impl EnvPolicy {
    pub fn new(target: &str, allow_env: &[String]) -> Self {
        Self {
            target: target.into(),
            allowed: allow_env.iter().cloned().collect(),
        }
    }

    /// Checks the plugin's variables; the first one refused is named.
    pub fn check<'a>(
        &self,
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), Refusal> {
        for (k, v) in vars {
            if k.is_empty() || k.contains(['=', '\0']) {
                return Err(Refusal::Invalid(format!(
                    "environment variable name {k:?} is empty or contains '=' or NUL"
                )));
            }
            if v.contains('\0') {
                return Err(Refusal::Invalid(format!(
                    "environment variable {k} contains a NUL byte"
                )));
            }
            if is_protected(k) && !self.allowed.contains(k) {
                return Err(Refusal::Denied(format!(
                    "environment variable {k} steers how programs load code and may not be set \
                     by target {}'s plugin; allow it by name in targets.{}.grants.process.allow_env",
                    self.target, self.target
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_variables_need_the_grant() {
        let p = EnvPolicy::new("t", &["PYTHONPATH".to_string()]);
        assert!(
            p.check([("MLGW_OUTPUT_DIR", "/x"), ("PYTHONUNBUFFERED", "1")])
                .is_ok()
        );
        assert!(p.check([("PYTHONPATH", "/code")]).is_ok());
        for bad in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "NODE_OPTIONS",
            "PATH",
            "BASH_FUNC_x%%",
        ] {
            match p.check([(bad, "x")]) {
                Err(Refusal::Denied(m)) => {
                    assert!(m.contains(bad) && m.contains("allow_env"), "{m}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(p.check([("A", "x\0y")]), Err(Refusal::Invalid(_))));
        assert!(matches!(p.check([("A=B", "x")]), Err(Refusal::Invalid(_))));
    }
}
