//! The process and log capabilities keep to their grants against a plugin that tries to get
//! out (the hostile fixture's `escapes`): planted programs, loader variables, symbolic links
//! out of the root, FIFOs and devices where the host reads, process floods and log floods.
//! Each is refused with a clear error while a well-behaved target keeps serving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mlgw::api::pb;
use mlgw_tests::*;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");

async fn gateway() -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
default_target = "local"

[limits]
call_timeout_ms = 2000

[plugins]
hostile = "{}"

[targets.local]
plugin = "local"
[targets.local.grants.process]

[targets.hostile]
plugin = "hostile"

# Any program, as the local default grants.
[targets.hostile-any]
plugin = "hostile"
[targets.hostile-any.grants.process]

# What an operator who lists programs grants.
[targets.hostile-some]
plugin = "hostile"
[targets.hostile-some.grants.process]
programs = ["sleep", "python3"]
max_processes = 4
"#,
        mlgw_plugin_artifacts::HOSTILE_PATH
    );
    let gw = Gateway::start(BIN, &dir.path().join("data"), Some(&config)).await;
    (dir, gw)
}

fn root(gw: &Gateway, target: &str) -> PathBuf {
    gw.data_dir.join("targets").join(target)
}

fn escape(name: &str, args: &[&str]) -> pb::TrainingJobSpec {
    let mut s = spec(&["irrelevant"]);
    s.name = name.into();
    s.args = args.iter().map(|a| a.to_string()).collect();
    s
}

async fn refused(gw: &Gateway, target: &str, s: pb::TrainingJobSpec) -> tonic::Status {
    let mut c = gw.training().await;
    match submit(&mut c, target, s).await {
        Ok(j) => panic!("{target}: accepted as job {}", j.id),
        Err(e) => e,
    }
}

/// A local job still runs to success: the gateway is whole.
async fn local_job_succeeds(gw: &Gateway) {
    let mut c = gw.training().await;
    let j = submit(&mut c, "local", spec(&["true"])).await.unwrap();
    let done = wait_job(&mut c, &j.id, Duration::from_secs(60)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.message);
}

#[tokio::test]
async fn planted_programs_and_loader_variables_are_refused() {
    let (_d, gw) = gateway().await;

    // With any program allowed, a program the plugin wrote into its own root still is not.
    let e = refused(&gw, "hostile-any", escape("program-in-root", &[])).await;
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert!(
        e.message().contains("allow_programs_in_root"),
        "{}",
        e.message()
    );
    // With a list, the planted file's name matching a granted name is not enough.
    let e = refused(&gw, "hostile-some", escape("program-in-root", &[])).await;
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert!(e.message().contains("allowed programs"), "{}", e.message());
    for t in ["hostile-any", "hostile-some"] {
        assert!(
            !root(&gw, t).join("planted/ran").exists(),
            "{t}: the planted program ran"
        );
    }

    let e = refused(&gw, "hostile-any", escape("env-preload", &[])).await;
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert!(
        e.message().contains("LD_PRELOAD") && e.message().contains("allow_env"),
        "{}",
        e.message()
    );
    local_job_succeeds(&gw).await;
}

#[tokio::test]
async fn symbolic_links_never_lead_out_of_the_root() {
    let (_d, gw) = gateway().await;
    let outside = tempfile::tempdir().unwrap();
    let e = refused(
        &gw,
        "hostile-any",
        escape("symlink-escape", &[outside.path().to_str().unwrap()]),
    )
    .await;
    // The fixture answers `internal("escaped: …")` if any of cwd, log file, exit file or
    // host path got through; every one must be refused.
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert!(e.message().contains("symbolic link"), "{}", e.message());
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "something was created outside the root"
    );
    local_job_succeeds(&gw).await;
}

fn mkfifo(p: &Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let ok = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test]
async fn fifos_and_devices_where_files_are_read_block_nothing() {
    let (_d, gw) = gateway().await;
    let fifo = root(&gw, "hostile-any").join("fifo");
    mkfifo(&fifo);

    // More plugin reads of a FIFO than the runtime has threads: each ends at its own
    // deadline and the gateway keeps serving meanwhile.
    let reads = (0..4).map(|_| {
        let gw = &gw;
        async move { refused(gw, "hostile-any", escape("fifo-read", &[])).await }
    });
    let (errors, ()) = tokio::time::timeout(Duration::from_secs(90), async {
        tokio::join!(futures::future::join_all(reads), local_job_succeeds(&gw))
    })
    .await
    .expect("the gateway stopped answering while plugins read a FIFO");
    for e in errors {
        assert_eq!(e.code(), Code::DeadlineExceeded, "{}", e.message());
    }

    // The host reading a job's exit file: a FIFO is refused, not waited on; a link to a device
    // outside the root is not followed.
    let planted = root(&gw, "hostile-any").join("planted-exit");
    mkfifo(&planted.join("fifo"));
    std::os::unix::fs::symlink("/dev/zero", planted.join("zero")).unwrap();
    let e = tokio::time::timeout(
        Duration::from_secs(30),
        refused(
            &gw,
            "hostile-any",
            escape("exit-file-fifo", &["planted-exit/fifo"]),
        ),
    )
    .await
    .expect("the host blocked reading a FIFO planted as an exit file");
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(
        e.message().contains("not a regular file"),
        "{}",
        e.message()
    );
    let e = refused(
        &gw,
        "hostile-any",
        escape("exit-file-fifo", &["planted-exit/zero"]),
    )
    .await;
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    local_job_succeeds(&gw).await;

    // Let the reads still blocked on the FIFO go.
    let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
}

#[tokio::test]
async fn a_target_keeps_to_its_process_limit() {
    let (_d, gw) = gateway().await;
    let mut c = gw.training().await;
    // The limit is retryable: the job waits for a slot rather than failing.
    let j = submit(&mut c, "hostile-some", escape("process-flood", &[]))
        .await
        .unwrap();
    assert_eq!(state(&j), pb::JobState::Pending);
    assert!(j.message.contains("max_processes"), "{}", j.message);
    let pids: Vec<i32> = std::fs::read_to_string(root(&gw, "hostile-some").join("flood.pids"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 4, "started exactly max_processes");
    c.cancel(pb::CancelJobRequest { id: j.id.clone() })
        .await
        .unwrap();
    for pid in &pids {
        assert!(!process_gone(*pid as u32), "pid {pid} should be running");
        // Each leads its own group (the supervisor's session).
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
    }
    local_job_succeeds(&gw).await;
}

#[tokio::test]
async fn plugin_logs_are_bounded_and_cannot_forge_entries() {
    let (_d, gw) = gateway().await;
    let mut c = gw.training().await;
    submit(&mut c, "hostile", escape("log-flood", &[]))
        .await
        .unwrap();
    // On another target: the flood has used up this one's per-second budget.
    submit(&mut c, "hostile-any", escape("log-forge", &[]))
        .await
        .unwrap();
    let log = gw.log();
    let flood = log.lines().filter(|l| l.contains("\"flood ")).count();
    assert!(
        (1..=200).contains(&flood),
        "{flood} flood lines reached the gateway's log; the per-call bound is 200"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("dropped") && l.contains("targets.hostile.grants.log")),
        "the drop is reported once, naming the grant"
    );
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2020-01-01T00:00:00.000000Z  INFO mlgw: forged")),
        "a plugin forged a gateway log entry"
    );
    assert!(
        log.contains(r#"innocent\n2020-01-01"#),
        "the message is kept, escaped"
    );
}

#[tokio::test]
async fn a_target_without_a_capability_its_plugin_needs_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mlgw.toml");
    std::fs::write(&cfg, "[targets.local]\nplugin = \"local\"\n").unwrap();
    let data = dir.path().join("data");
    let (_, err) = serve_refuses(
        BIN,
        &[
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--config".as_ref(),
            cfg.as_os_str(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ],
    )
    .await;
    assert!(
        err.contains("needs the process capability")
            && err.contains("[targets.local.grants.process]"),
        "{err}"
    );
}

#[tokio::test]
async fn any_program_is_refused_on_a_network_listener() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, err) = serve_refuses(
        BIN,
        &[
            "--listen".as_ref(),
            "0.0.0.0:0".as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ],
    )
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("targets.local.grants.process.programs") && err.contains("loopback"),
        "{err}"
    );
}
