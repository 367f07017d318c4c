//! Endpoints as MLServer processes, one revision directory per deploy or update:
//!
//! ```text
//! endpoints/<name>/current.json                 ref of the newest revision (for adoption)
//! endpoints/<name>/<rev>/settings.json          server settings: ports on 127.0.0.1
//! endpoints/<name>/<rev>/model/model-settings.json
//! endpoints/<name>/<rev>/logs.txt, exit.json    written by the host's process supervisor
//! ```
//!
//! Updates are blue/green: the new revision starts on new ports, then the old one stops. The
//! host checks the new server's readiness before it routes traffic there.

use mlgw_plugin_sdk::artifacts;
use mlgw_plugin_sdk::process::{self, ProcessState, SpawnRequest};
use mlgw_plugin_sdk::{
    BackendError, BackendRef, CallContext, EndpointSpec, EndpointStatus, Protocol, Route, internal,
    parse_settings, strip_file_uri,
};
use serde_json::json;

use crate::files::{
    check_dir_name, create_dir_all, guest_path, now_ms, read_if_exists, write_atomic,
};
use crate::refs::EndpointData;
use crate::status::endpoint_status;
use crate::training::{is_remote, terminate};
use crate::validate;

pub fn deploy(ctx: &CallContext, spec: &EndpointSpec) -> Result<BackendRef, BackendError> {
    let implementation = validate::endpoint(spec)?;
    check_dir_name(&ctx.backend_name)?;
    let base = format!("endpoints/{}", ctx.backend_name);
    // A retried deploy (the gateway crashed before recording the ref) adopts the server it
    // already started, as long as that server is still up.
    if let Some(current) = running_revision(&base)? {
        mlgw_plugin_sdk::info(&format!(
            "endpoint {}: adopting the server started earlier ({})",
            ctx.backend_name, current.name
        ));
        return Ok(current);
    }
    start_revision(ctx, spec, &implementation, &base)
}

pub fn update(
    ctx: &CallContext,
    endpoint: &BackendRef,
    spec: &EndpointSpec,
) -> Result<BackendRef, BackendError> {
    let implementation = validate::endpoint(spec)?;
    check_dir_name(&ctx.backend_name)?;
    let old = EndpointData::from_ref(endpoint)?;
    let new = start_revision(
        ctx,
        spec,
        &implementation,
        &format!("endpoints/{}", ctx.backend_name),
    )?;
    // The new revision is already running and only this ref can reach it, so a failure to
    // stop the old one is logged rather than returned.
    if let Err(e) = terminate(old.handle()) {
        mlgw_plugin_sdk::error(&format!(
            "endpoint {}: started {} but could not stop the previous revision {}: {e}",
            ctx.backend_name, new.name, endpoint.name
        ));
    }
    Ok(new)
}

pub fn status(endpoint: &BackendRef) -> Result<EndpointStatus, BackendError> {
    let data = EndpointData::from_ref(endpoint)?;
    let state = process::state(data.handle(), &format!("{}/exit.json", data.dir))?;
    let log_rel = format!("{}/logs.txt", data.dir);
    let log_path = if state == ProcessState::Running {
        log_rel
    } else {
        // Only worth a host call when there is a failure to point operators at.
        process::host_path(&log_rel).unwrap_or(log_rel)
    };
    Ok(endpoint_status(state, data.pid, data.port, &log_path))
}

pub fn delete(endpoint: &BackendRef) -> Result<(), BackendError> {
    let data = EndpointData::from_ref(endpoint)?;
    terminate(data.handle())
}

pub fn route(endpoint: &BackendRef) -> Result<Route, BackendError> {
    let data = EndpointData::from_ref(endpoint)?;
    Ok(Route {
        url: format!("http://127.0.0.1:{}", data.port),
        protocol: Protocol::OipV2,
        model_name: data.model,
        headers: Vec::new(),
    })
}

fn start_revision(
    ctx: &CallContext,
    spec: &EndpointSpec,
    implementation: &str,
    base: &str,
) -> Result<BackendRef, BackendError> {
    let program = mlserver_program(&ctx.settings)?;
    if let Some(image) = spec.image.as_deref().filter(|i| !i.is_empty()) {
        mlgw_plugin_sdk::warn(&format!(
            "endpoint {}: image {image:?} ignored; the local target runs {program} directly",
            ctx.backend_name
        ));
    }
    let [http_port, grpc_port, metrics_port] = free_ports()?;

    // Millisecond revisions sort by age; two deploys within one millisecond take the next.
    let mut rev = now_ms();
    while guest_path(&format!("{base}/{rev}")).exists() {
        rev += 1;
    }
    let dir = format!("{base}/{rev}");
    create_dir_all(&guest_path(&format!("{dir}/model")))?;
    write_atomic(
        &guest_path(&format!("{dir}/settings.json")),
        server_settings(http_port, grpc_port, metrics_port).as_bytes(),
    )?;
    // A model in the object store is fetched next to the revision; a local one is used in place.
    let model_path = if is_remote(&spec.model_uri) {
        let rel = format!("{dir}/model-files");
        artifacts::fetch(&spec.model_uri, &rel)?;
        process::host_path(&rel)?
    } else {
        strip_file_uri(&spec.model_uri).to_string()
    };
    write_atomic(
        &guest_path(&format!("{dir}/model/model-settings.json")),
        model_settings(spec, implementation, &model_path).as_bytes(),
    )?;

    let handle = process::spawn(&SpawnRequest {
        program,
        args: vec!["start".into(), process::host_path(&dir)?],
        env: Vec::new(),
        cwd: dir.clone(),
        log_file: format!("{dir}/logs.txt"),
        exit_file: format!("{dir}/exit.json"),
    })?;
    let data = EndpointData {
        pid: handle.pid,
        start_ticks: handle.start_ticks,
        dir,
        port: http_port,
        model: spec.name.clone(),
    };
    let endpoint = data.to_ref();
    if let Err(e) = write_atomic(
        &guest_path(&format!("{base}/current.json")),
        json!({"name": endpoint.name, "data": endpoint.data})
            .to_string()
            .as_bytes(),
    ) {
        mlgw_plugin_sdk::error(&format!(
            "endpoint {}: started {} but could not record it for adoption: {e}",
            ctx.backend_name, endpoint.name
        ));
    }
    mlgw_plugin_sdk::info(&format!(
        "endpoint {}: started {} serving {:?} with {implementation}",
        ctx.backend_name, endpoint.name, spec.name
    ));
    Ok(endpoint)
}

/// The ref in current.json, if its server is still running.
fn running_revision(base: &str) -> Result<Option<BackendRef>, BackendError> {
    let Some(bytes) = read_if_exists(&guest_path(&format!("{base}/current.json")))? else {
        return Ok(None);
    };
    let current: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| internal(format!("{base}/current.json is corrupt: {e}")))?;
    let current = BackendRef {
        name: current["name"].as_str().unwrap_or_default().to_string(),
        data: current["data"].as_str().unwrap_or_default().to_string(),
    };
    let data = EndpointData::from_ref(&current)?;
    let state = process::state(data.handle(), &format!("{}/exit.json", data.dir))?;
    Ok((state == ProcessState::Running).then_some(current))
}

/// `free-port` answers what is free right now, so two calls in a row can answer the same port.
fn free_ports() -> Result<[u16; 3], BackendError> {
    let mut ports: Vec<u16> = Vec::with_capacity(3);
    for _ in 0..32 {
        let port = process::free_port()?;
        if !ports.contains(&port) {
            ports.push(port);
        }
        if let Ok(ports) = <[u16; 3]>::try_from(ports.as_slice()) {
            return Ok(ports);
        }
    }
    Err(BackendError::Unavailable(
        "could not find three distinct free ports".into(),
    ))
}

/// The program to run, from the target's `mlserver` setting: a name on PATH or a path.
pub fn mlserver_program(settings: &str) -> Result<String, BackendError> {
    match parse_settings(settings)?.get("mlserver") {
        None | Some(serde_json::Value::Null) => Ok("mlserver".to_string()),
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(other) => Err(internal(format!(
            "the target's \"mlserver\" setting must be a program name or path, not {other}"
        ))),
    }
}

/// MLServer's settings.json. Loopback only: the gateway is the one entry point.
pub fn server_settings(http_port: u16, grpc_port: u16, metrics_port: u16) -> String {
    json!({
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        // One process: extra inference workers would each load the model again.
        "parallel_workers": 0,
    })
    .to_string()
}

pub fn model_settings(spec: &EndpointSpec, implementation: &str, model_path: &str) -> String {
    json!({
        "name": spec.name,
        "implementation": implementation,
        "parameters": { "uri": model_path },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlgw_plugin_sdk::Resources;

    #[test]
    fn mlserver_program_comes_from_settings() {
        assert_eq!(mlserver_program("").unwrap(), "mlserver");
        assert_eq!(mlserver_program("{}").unwrap(), "mlserver");
        assert_eq!(
            mlserver_program(r#"{"mlserver": "/opt/venv/bin/mlserver"}"#).unwrap(),
            "/opt/venv/bin/mlserver"
        );
        assert!(mlserver_program(r#"{"mlserver": 3}"#).is_err());
        assert!(mlserver_program(r#"{"mlserver": ""}"#).is_err());
    }

    #[test]
    fn writes_mlserver_settings() {
        let v: serde_json::Value = serde_json::from_str(&server_settings(1, 2, 3)).unwrap();
        assert_eq!(
            v,
            json!({"host": "127.0.0.1", "http_port": 1, "grpc_port": 2, "metrics_port": 3, "parallel_workers": 0})
        );

        let spec = EndpointSpec {
            name: "iris".into(),
            model_uri: "file:///models/iris/model.joblib".into(),
            model_format: "sklearn".into(),
            runtime: None,
            image: None,
            resources: Resources {
                cpu: None,
                memory: None,
                gpus: 0,
                gpu_type: None,
                instance_type: None,
                nodes: 0,
            },
            min_replicas: 1,
            max_replicas: 1,
            canary_percent: None,
        };
        let v: serde_json::Value = serde_json::from_str(&model_settings(
            &spec,
            "mlserver_sklearn.SKLearnModel",
            strip_file_uri(&spec.model_uri),
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({
                "name": "iris",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "/models/iris/model.joblib"},
            })
        );
    }
}
