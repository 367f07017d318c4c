//! Predictions through the gateway against predictions straight to the same model server: an
//! iris model trained with the test venv's scikit-learn, deployed on the `local` target (a
//! real MLServer), the same OIP V2 request sent (a) through the gateway's
//! `inference.GRPCInferenceService` ModelInfer and (b) straight to that MLServer's REST
//! `/v2/models/<name>/infer`; and (c) the gateway's Predict called in-process, which splits
//! what the gateway adds between its gRPC hop and its data plane.

use std::time::{Duration, Instant};

use mlgw::api::oip::{
    self, grpc_inference_service_client::GrpcInferenceServiceClient,
    model_infer_request::InferInputTensor,
};
use mlgw::domain::{EndpointSpec, EndpointState};

use super::{Run, arg, channel, combine};
use crate::iris::{ROWS, TRAIN};

const MODEL: &str = "bench";

fn flat() -> Vec<f64> {
    ROWS.iter().flatten().copied().collect()
}

fn grpc_request() -> oip::ModelInferRequest {
    oip::ModelInferRequest {
        model_name: MODEL.into(),
        inputs: vec![InferInputTensor {
            name: "input-0".into(),
            datatype: "FP64".into(),
            shape: vec![ROWS.len() as i64, 4],
            contents: Some(oip::InferTensorContents {
                fp64_contents: flat(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The same request as OIP V2 JSON, as the gateway's data plane sends it on.
fn rest_body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"inputs": [{
        "name": "input-0", "shape": [ROWS.len(), 4], "datatype": "FP64", "data": flat()
    }]}))
    .unwrap()
}

#[derive(Clone, Copy)]
pub enum Path {
    Gateway,
    Direct,
    /// The gateway's Predict called in-process: its data plane without the gRPC hop.
    InProcess,
}

/// A gateway serving a deployed model, and that model server's own address.
pub struct Deployed {
    live: super::Live,
    endpoint_id: String,
    pub url: String,
    infer_url: String,
    _dir: tempfile::TempDir,
}

impl Deployed {
    /// Trains the model, deploys it on the local target and waits (bounded) until it serves;
    /// both paths are checked to answer the same before anything is timed.
    pub async fn start() -> Self {
        // The local target starts `mlserver` from PATH: the test venv's.
        let venv = crate::venv();
        let path = std::env::var("PATH").unwrap_or_default();
        if !path.starts_with(&venv.join("bin").display().to_string()) {
            // SAFETY: nothing that reads the environment runs concurrently with this.
            unsafe {
                std::env::set_var("PATH", format!("{}:{path}", venv.join("bin").display()));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let model_dir = dir.path().join("model");
        std::fs::create_dir_all(&model_dir).unwrap();
        let trained = std::process::Command::new(crate::python())
            .args(["-c", TRAIN])
            .env("MLGW_OUTPUT_DIR", &model_dir)
            .output()
            .unwrap();
        assert!(
            trained.status.success(),
            "{}",
            String::from_utf8_lossy(&trained.stderr)
        );

        let live = super::Live::start(dir.path().join("data")).await;
        let gw = live.gw.clone();
        let ep = gw
            .deploy(
                "local",
                EndpointSpec {
                    name: MODEL.into(),
                    model_uri: format!("file://{}", model_dir.display()),
                    model_format: "sklearn".into(),
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        let started = Instant::now();
        let url = loop {
            let e = gw.get_endpoint(&ep.id).unwrap();
            assert!(e.state != EndpointState::Failed, "{}", e.message);
            if e.state == EndpointState::Ready
                && let Some(u) = e.url
            {
                break u;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the model server did not become ready: {}",
                e.message
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let infer_url = format!("{}/v2/models/{MODEL}/infer", url.trim_end_matches('/'));
        let d = Deployed {
            live,
            endpoint_id: ep.id,
            url,
            infer_url,
            _dir: dir,
        };
        d.check_same_answer().await;
        // One short round each to warm connections and MLServer before anything counts.
        d.drive(Path::Direct, 1, 1.0).await;
        d.drive(Path::Gateway, 1, 1.0).await;
        d
    }

    async fn check_same_answer(&self) {
        let via_gw = GrpcInferenceServiceClient::new(channel(self.live.served.addr).await)
            .model_infer(grpc_request())
            .await
            .unwrap()
            .into_inner();
        let direct: serde_json::Value = serde_json::from_slice(
            &reqwest::Client::new()
                .post(&self.infer_url)
                .header("content-type", "application/json")
                .body(rest_body())
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
        )
        .unwrap();
        let want: Vec<i64> = serde_json::from_value(direct["outputs"][0]["data"].clone()).unwrap();
        assert_eq!(
            via_gw.outputs[0].contents.as_ref().unwrap().int64_contents,
            want
        );
    }

    /// `clients` concurrent clients, each on its own connection, for `secs`.
    pub async fn drive(&self, path: Path, clients: usize, secs: f64) -> Run {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let addr = self.live.served.addr;
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let infer_url = self.infer_url.clone();
            let gw = self.live.gw.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                match path {
                    Path::Gateway => {
                        let mut c = GrpcInferenceServiceClient::new(channel(addr).await);
                        let req = grpc_request();
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            c.model_infer(req.clone()).await.unwrap();
                            lat.push(t.elapsed());
                        }
                    }
                    Path::InProcess => {
                        let req = mlgw::dataplane::InferRequest {
                            inputs: vec![mlgw::dataplane::Tensor {
                                name: "input-0".into(),
                                datatype: "FP64".into(),
                                shape: vec![ROWS.len() as i64, 4],
                                parameters: Default::default(),
                                data: mlgw::dataplane::TensorData::Float(flat()),
                            }],
                            ..Default::default()
                        };
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            gw.predict(MODEL, req.clone()).await.unwrap();
                            lat.push(t.elapsed());
                        }
                    }
                    Path::Direct => {
                        let c = reqwest::Client::builder()
                            .tcp_nodelay(true)
                            .build()
                            .unwrap();
                        let body = rest_body();
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            let r = c
                                .post(&infer_url)
                                .header("content-type", "application/json")
                                .body(body.clone())
                                .send()
                                .await
                                .unwrap();
                            assert!(r.status().is_success(), "{}", r.status());
                            r.bytes().await.unwrap();
                            lat.push(t.elapsed());
                        }
                    }
                }
                lat
            }));
        }
        let start = Instant::now();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        Run::from_latencies(all, start.elapsed().as_secs_f64())
    }

    /// Undeploys (the model server process ends) and stops the gateway.
    pub async fn stop(self) {
        self.live
            .gw
            .delete_endpoint(&self.endpoint_id)
            .await
            .unwrap();
        self.live.stop().await.stop().await;
    }
}

/// `mlgw-loadgen predict`: alternating rounds per client count, printed as they run.
pub async fn run() {
    let clients: Vec<usize> = arg("--clients", "1,8")
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();
    let secs: f64 = arg("--seconds", "5").parse().unwrap();
    let rounds: usize = arg("--rounds", "3").parse().unwrap();
    let d = Deployed::start().await;
    println!(
        "Predict ({} rows of iris, FP64), {secs}s per round, {rounds} rounds alternating \
         direct (REST to MLServer at {}) / gateway (OIP gRPC ModelInfer)",
        ROWS.len(),
        d.url
    );
    println!(
        "{:>8} {:>10} {:>12} {:>10} {:>10}",
        "clients", "path", "pred/s", "p50 µs", "p99 µs"
    );
    for &c in &clients {
        let (mut direct, mut via, mut inproc) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            for (name, path, acc) in [
                ("direct", Path::Direct, &mut direct),
                ("gateway", Path::Gateway, &mut via),
                ("inproc", Path::InProcess, &mut inproc),
            ] {
                let r = d.drive(path, c, secs).await;
                println!(
                    "{c:>8} {name:>10} {:>12.0} {:>10} {:>10}",
                    r.rate(),
                    r.p50.as_micros(),
                    r.p99.as_micros()
                );
                acc.push(r);
            }
        }
        let (via, direct, inproc) = (combine(&via), combine(&direct), combine(&inproc));
        let added = |r: &Run| r.p50.as_micros() as i128 - direct.p50.as_micros() as i128;
        println!(
            "{c:>8} clients: gateway/direct throughput = {:.3}; p50 {} µs vs {} µs \
             (median of rounds), added {} µs; the data plane alone (in-process Predict): \
             {:.3}, added {} µs",
            via.rate() / direct.rate(),
            via.p50.as_micros(),
            direct.p50.as_micros(),
            added(&via),
            inproc.rate() / direct.rate(),
            added(&inproc)
        );
    }
    d.stop().await;
}
