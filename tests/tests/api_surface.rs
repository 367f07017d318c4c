//! The gateway as generic gRPC tools and the `mlgw` CLI see it.

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use mlgw_tests::*;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");

#[tokio::test]
async fn health_and_reflection_answer() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(BIN, &dir.path().join("data"), None).await;
    let mut health = HealthClient::new(gw.channel().await);
    for service in ["", "mlgw.v1.TrainingService", "mlgw.v1.ServingService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let mut refl = ServerReflectionClient::new(gw.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut s = refl
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        s.next().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "mlgw.v1.TrainingService",
        "mlgw.v1.ServingService",
        "mlgw.v1.TargetService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

fn cli(addr: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .env("MLGW_SERVER", addr)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_cli_submits_waits_and_reads_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(BIN, &dir.path().join("data"), None).await;
    let addr = gw.addr.clone();
    tokio::task::spawn_blocking(move || {
        let out = cli(
            &addr,
            &[
                "submit",
                "--name",
                "cli",
                "--env",
                "X=1",
                "--",
                &python(),
                "-c",
                "import os; print('x is', os.environ['X'])",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(id.starts_with("j-"), "{id}");

        let out = cli(&addr, &["wait", &id, "--timeout", "60"]);
        assert!(
            out.status.success(),
            "wait exits 0 for a succeeded job: {}",
            String::from_utf8_lossy(&out.stdout)
        );

        let out = cli(&addr, &["get", &id, "-o", "json"]);
        let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(job["state"], "succeeded");
        assert_eq!(job["name"], "cli");

        let out = cli(&addr, &["logs", &id]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "x is 1");

        let out = cli(&addr, &["list", "-o", "json"]);
        let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(jobs.as_array().unwrap().len(), 1);

        // A failing job: wait exits non-zero.
        let out = cli(&addr, &["submit", "--", "false"]);
        let failing = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let out = cli(&addr, &["wait", &failing, "--timeout", "60"]);
        assert!(!out.status.success());

        // Errors are one readable line with the reason.
        let out = cli(&addr, &["get", "j-nope"]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("error: not found: job j-nope"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let out = cli(&addr, &["targets", "-o", "json"]);
        let targets: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(targets[0]["name"], "local");
        assert_eq!(targets[0]["default"], true);
        assert!(
            targets[0]["features"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "serving")
        );
    })
    .await
    .unwrap();
    // Keep the gateway alive until the blocking client is done.
    tokio::time::sleep(Duration::from_millis(1)).await;
    drop(gw);
}

#[test]
fn an_unreachable_gateway_is_a_clear_error() {
    let out = cli("127.0.0.1:1", &["list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the gateway at http://127.0.0.1:1"),
        "{err}"
    );
}
