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
