//! Compiled plugins on disk, so a restart does not recompile. Artifacts are keyed by the
//! engine's compatibility hash and the wasm's sha256, and only files this gateway wrote into
//! its own cache directory are ever deserialized (deserializing is trusted native code).

use std::hash::{Hash, Hasher};
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

pub fn load_component(
    engine: &Engine,
    cache_dir: &Path,
    bytes: &[u8],
) -> wasmtime::Result<(Component, String)> {
    let digest = hex::encode(Sha256::digest(bytes));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let path = cache_dir.join(format!("{:016x}-{digest}.cwasm", h.finish()));
    if path.exists() {
        // SAFETY: the file is in the gateway's private cache, named by the engine's
        // compatibility hash and the source digest, and was written by `precompile_component`
        // below through a rename, so it is a complete artifact for this engine.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => return Ok((c, digest)),
            Err(e) => {
                tracing::warn!(path = %path.display(), "recompiling: cached artifact unusable: {e}")
            }
        }
    }
    let artifact = engine.precompile_component(bytes)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &artifact)?;
    std::fs::rename(&tmp, &path)?;
    // SAFETY: produced by this engine a moment ago.
    let component = unsafe { Component::deserialize(engine, &artifact)? };
    Ok((component, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_load_reuses_the_artifact_and_a_new_wasm_gets_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let wasm = mlgw_plugin_artifacts::LOCAL;
        let (_, digest) = load_component(&engine, dir.path(), wasm).unwrap();
        let files = || {
            let mut v: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            v.sort();
            v
        };
        let first = files();
        assert_eq!(first.len(), 1);
        assert!(
            first[0]
                .to_string_lossy()
                .ends_with(&format!("{digest}.cwasm"))
        );
        let written = std::fs::metadata(&first[0]).unwrap().modified().unwrap();
        load_component(&engine, dir.path(), wasm).unwrap();
        assert_eq!(files(), first, "no second artifact");
        assert_eq!(
            std::fs::metadata(&first[0]).unwrap().modified().unwrap(),
            written,
            "the cached artifact was reused, not rewritten"
        );
        // A damaged artifact is recompiled rather than trusted.
        std::fs::write(&first[0], b"not an artifact").unwrap();
        load_component(&engine, dir.path(), wasm).unwrap();
        assert_ne!(std::fs::read(&first[0]).unwrap(), b"not an artifact");
    }
}
