//! Builds the bundled plugins (and the test fixtures) for wasm32-wasip2 with a nested cargo,
//! so a plain `cargo build`/`run`/`test` of the gateway always embeds fresh components.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET: &str = "wasm32-wasip2";

/// (package, file the component is built as, name in OUT_DIR)
const COMPONENTS: &[(&str, &str, &str)] = &[
    ("mlgw-plugin-local", "mlgw_plugin_local.wasm", "local.wasm"),
    (
        "mlgw-plugin-sagemaker",
        "mlgw_plugin_sagemaker.wasm",
        "sagemaker.wasm",
    ),
    (
        "mlgw-plugin-kubeflow",
        "mlgw_plugin_kubeflow.wasm",
        "kubeflow.wasm",
    ),
    (
        "mlgw-plugin-kserve",
        "mlgw_plugin_kserve.wasm",
        "kserve.wasm",
    ),
    (
        "mlgw-fixture-hostile",
        "mlgw_fixture_hostile.wasm",
        "hostile.wasm",
    ),
    (
        "mlgw-fixture-kube-manifest",
        "mlgw_fixture_kube_manifest.wasm",
        "kube-manifest.wasm",
    ),
];

/// Sources the components are built from, relative to the workspace root.
const INPUTS: &[&str] = &[
    "wit",
    "sdk/rust",
    "plugins/local",
    "plugins/sagemaker",
    "plugins/kubeflow",
    "plugins/kserve",
    "tests/fixtures/plugins",
    "Cargo.lock",
    // profiles, e.g. the plugins' opt-level
    "Cargo.toml",
];

/// Variables cargo hands this build script that describe the *outer* build. Passed on, they
/// would make the nested build compile wasm with host flags (RUSTFLAGS, e.g.
/// `-C target-cpu=native`), wrap rustc in clippy-driver under `cargo clippy`, or go back into
/// the outer target directory and wait forever on the lock the outer build holds.
const OUTER_BUILD_VARS: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_PRIMARY_PACKAGE",
];
// CARGO_MAKEFLAGS stays: it carries the outer build's jobserver, so the nested build shares
// its job slots instead of starting as many compilers again.

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    // plugins/artifacts → the workspace root
    let workspace = manifest_dir
        .ancestors()
        .nth(2)
        .expect("plugins/artifacts sits two levels below the workspace root")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));

    for input in INPUTS {
        // Relative to this package, not absolute: a build directory shared by checkouts at
        // other paths (a CI cache, a worktree) must watch *this* checkout's sources, and cargo
        // resolves relative paths against the package being built.
        println!("cargo::rerun-if-changed=../../{input}");
    }

    println!("cargo::rerun-if-env-changed={NESTED_DIR_VAR}");

    if let Err(message) = build(&workspace, &out_dir) {
        // cargo::error shows the message as is, without a panic's backtrace noise; the
        // non-zero exit makes cargo print the nested build's output too.
        for line in message.lines() {
            println!("cargo::error={line}");
        }
        std::process::exit(1);
    }
}

fn build(workspace: &Path, out_dir: &Path) -> Result<(), String> {
    check_target_installed()?;

    let target_dir = match env::var_os(NESTED_DIR_VAR) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => nested_target_dir(out_dir, workspace),
    };
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        // A configured build-dir would otherwise be shared with (and locked by) the outer build.
        .env("CARGO_BUILD_BUILD_DIR", &target_dir)
        // Cargo's messages go to stderr; stdout is where this script talks to cargo.
        .stdout(Stdio::from(std::io::stderr()));
    for (package, _, _) in COMPONENTS {
        cmd.args(["-p", package]);
    }
    for var in OUTER_BUILD_VARS {
        cmd.env_remove(var);
    }
    if env::var_os("CARGO_CFG_MIRI").is_some() {
        // Miri's rustc wrapper and sysroot are for the host, not for wasm.
        cmd.env_remove("RUSTC").env_remove("RUSTC_WRAPPER");
    }
    eprintln!("running: {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("could not run cargo to build the wasm plugins: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the wasm plugins for {TARGET} failed ({status}); the nested cargo's output is under `--- stderr` below"
        ));
    }

    let built = target_dir.join(TARGET).join("release");
    for (package, file, name) in COMPONENTS {
        let from = built.join(file);
        let bytes = fs::read(&from)
            .map_err(|e| format!("{package} built, but {} is unreadable: {e}", from.display()))?;
        check_component(&bytes).map_err(|e| format!("{}: {e}", from.display()))?;
        let to = out_dir.join(name);
        // Rewriting an unchanged file would make everything that embeds it rebuild.
        if fs::read(&to).ok().as_deref() != Some(bytes.as_slice()) {
            fs::write(&to, &bytes).map_err(|e| format!("writing {}: {e}", to.display()))?;
        }
    }
    Ok(())
}

/// Overrides where the nested build goes (see `nested_target_dir`).
const NESTED_DIR_VAR: &str = "MLGW_PLUGIN_TARGET_DIR";

/// `<target>/wasm-plugins/<checkout>`, beside the outer build's profile directories so it is
/// cleaned with them but never shares their locks. OUT_DIR is
/// `<target>/<profile>/build/<pkg>-<hash>/out` (with `<target>/<triple>/…` when
/// cross-compiling, which works just as well).
///
/// One directory per checkout: cargo names a cdylib's output without a hash, so two checkouts
/// sharing a target directory (worktrees, say) would overwrite each other's components, and
/// each would then find the other's newer file fresh and embed it. A build that is the only
/// one using its target directory (CI) may set MLGW_PLUGIN_TARGET_DIR to keep one nested
/// directory warm across checkouts at changing paths.
fn nested_target_dir(out_dir: &Path, workspace: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    workspace.hash(&mut h);
    let name = workspace
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let checkout = format!("{name}-{:016x}", h.finish());
    let build = out_dir.ancestors().nth(2);
    match (build, out_dir.ancestors().nth(4)) {
        (Some(build), Some(target)) if build.file_name().is_some_and(|n| n == "build") => {
            target.join("wasm-plugins").join(checkout)
        }
        // An unfamiliar layout: still correct, only rebuilt more often.
        _ => out_dir.join("wasm-plugins"),
    }
}

fn check_target_installed() -> Result<(), String> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(output) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        // Let the nested build report whatever is wrong with the toolchain.
        return Ok(());
    };
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || sysroot.is_empty() {
        return Ok(());
    }
    let target_lib = Path::new(&sysroot).join("lib/rustlib").join(TARGET);
    if target_lib.is_dir() {
        Ok(())
    } else {
        Err(format!(
            "the {TARGET} target is not installed for this toolchain ({sysroot}); the gateway's plugins are built for it.\nInstall it with: rustup target add {TARGET}"
        ))
    }
}

/// Components carry layer 1 in their header (`\0asm`, version 0x0d, layer 1); a core module
/// would mean the toolchain did not componentize the cdylib.
fn check_component(bytes: &[u8]) -> Result<(), String> {
    match bytes.get(..8) {
        Some([0x00, b'a', b's', b'm', _, _, 0x01, 0x00]) => Ok(()),
        Some([0x00, b'a', b's', b'm', ..]) => Err(
            "a core wasm module, not a component; the wasm32-wasip2 toolchain should link cdylibs with wasm-component-ld".into(),
        ),
        _ => Err("not a wasm file".into()),
    }
}
