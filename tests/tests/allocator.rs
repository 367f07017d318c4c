//! The shipped binary runs on the gateway's allocator, configured before `main`: mimalloc
//! lists its options when asked to be verbose, and arena commit on demand is what keeps an
//! idle gateway's RSS at a third of the default's (the benchmark table's RSS row).

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");

#[test]
fn the_gateway_binary_commits_allocator_arenas_on_demand() {
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .env("MIMALLOC_VERBOSE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("option 'arena_eager_commit': 0"),
        "mimalloc's options as the binary started:\n{stderr}"
    );
}
