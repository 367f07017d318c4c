//! The wasm components built from this workspace, fresh on every build.
//!
//! The build script compiles `plugins/local`, `plugins/sagemaker`, `plugins/kubeflow`, `plugins/kserve` and the test fixtures for wasm32-wasip2 with a
//! nested cargo (release profile) and places the components in OUT_DIR. Bundled plugins are
//! embedded; fixtures are only referenced by path so they never ship inside the gateway.

/// The `local` target's plugin component.
pub const LOCAL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/local.wasm"));

/// The `sagemaker` target's plugin component.
pub const SAGEMAKER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sagemaker.wasm"));

/// The in-cluster training target's plugin component (`plugins/kubeflow`).
pub const KUBEFLOW: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kubeflow.wasm"));

/// The in-cluster serving target's plugin component (`plugins/kserve`).
pub const KSERVE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kserve.wasm"));

/// Absolute path of the misbehaving test plugin (`tests/fixtures/plugins/hostile`); load it
/// from disk in tests.
pub const HOSTILE_PATH: &str = concat!(env!("OUT_DIR"), "/hostile.wasm");

/// Absolute path of the test plugin that applies a raw Kubernetes manifest through the kube
/// capability (`tests/fixtures/plugins/kube-manifest`).
pub const KUBE_MANIFEST_PATH: &str = concat!(env!("OUT_DIR"), "/kube-manifest.wasm");

/// The plugins built into the gateway, by the name a target's `plugin` setting uses.
pub fn bundled() -> &'static [(&'static str, &'static [u8])] {
    &[
        ("local", LOCAL),
        ("sagemaker", SAGEMAKER),
        ("kubeflow", KUBEFLOW),
        ("kserve", KSERVE),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_component(bytes: &[u8]) -> bool {
        bytes.starts_with(b"\0asm") && bytes.get(6..8) == Some(&[0x01, 0x00])
    }

    #[test]
    fn bundles_components() {
        assert!(is_component(LOCAL));
        assert!(is_component(SAGEMAKER));
        assert!(is_component(KUBEFLOW));
        assert!(is_component(KSERVE));
        assert_eq!(
            bundled().iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["local", "sagemaker", "kubeflow", "kserve"]
        );
        for path in [HOSTILE_PATH, KUBE_MANIFEST_PATH] {
            assert!(is_component(&std::fs::read(path).unwrap()), "{path}");
        }
    }
}
