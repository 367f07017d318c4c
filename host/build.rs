use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps a fresh machine free of a system protobuf install.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };

    // Read at run time: the compiled build script is reused by clones at other paths.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let files = [
        "training.proto",
        "serving.proto",
        "targets.proto",
        "common.proto",
        "artifacts.proto",
    ]
    .map(|f| proto_root.join("mlgw/v1").join(f));
    let files = [
        files.as_slice(),
        &[proto_root.join("inference/grpc_predict_v2.proto")],
    ]
    .concat();
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("mlgw_descriptor.bin"))
        .compile_protos(&files, std::slice::from_ref(&proto_root))?;
    // Relative to this package: a build directory shared with a checkout at another path
    // must watch this checkout's protos, not the first one's.
    println!("cargo:rerun-if-changed=../proto");
    Ok(())
}
