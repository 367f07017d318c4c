//! Human tables and machine JSON for the client subcommands.

use comfy_table::{Table, presets::NOTHING};
use serde_json::{Value, json};

use super::Output;
use crate::api::pb;

fn time(t: &Option<prost_types::Timestamp>) -> String {
    match t {
        Some(t) if t.seconds > 0 => {
            let st = std::time::UNIX_EPOCH
                + std::time::Duration::new(t.seconds as u64, t.nanos.max(0) as u32);
            humantime::format_rfc3339_seconds(st).to_string()
        }
        _ => String::new(),
    }
}

fn job_state(s: i32) -> String {
    pb::JobState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("JOB_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| s.to_string())
}

fn endpoint_state(s: i32) -> String {
    pb::EndpointState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("ENDPOINT_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| s.to_string())
}

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(header.to_vec());
    t
}

pub fn job_json(j: &pb::Job) -> Value {
    let spec = j.spec.clone().unwrap_or_default();
    json!({
        "id": j.id,
        "target": j.target,
        "name": spec.name,
        "state": job_state(j.state),
        "message": j.message,
        "backend_state": j.backend_state,
        "backend_ref": j.backend_ref,
        "output_uri": j.output_uri,
        "code_uri": spec.code_uri,
        "command": spec.command.iter().chain(&spec.args).collect::<Vec<_>>(),
        "created_at": time(&j.created_at),
        "updated_at": time(&j.updated_at),
        "finished_at": time(&j.finished_at),
        "cancel_requested": j.cancel_requested,
    })
}

pub fn job_detail(out: Output, j: &pb::Job) {
    let v = job_json(j);
    match out {
        Output::Json => print_json(&v),
        Output::Table => {
            let mut t = Table::new();
            t.load_preset(NOTHING);
            for (k, val) in v.as_object().into_iter().flatten() {
                let s = match val {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if !s.is_empty() {
                    t.add_row(vec![k.clone(), s]);
                }
            }
            println!("{t}");
        }
    }
}

pub fn jobs(out: Output, jobs: &[pb::Job]) {
    match out {
        Output::Json => print_json(&Value::Array(jobs.iter().map(job_json).collect())),
        Output::Table => {
            let mut t = table(&["ID", "TARGET", "NAME", "STATE", "CREATED", "MESSAGE"]);
            for j in jobs {
                t.add_row(vec![
                    j.id.clone(),
                    j.target.clone(),
                    j.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
                    job_state(j.state),
                    time(&j.created_at),
                    j.message.clone(),
                ]);
            }
            println!("{t}");
        }
    }
}

pub fn log_json(l: &pb::LogLine) -> Value {
    json!({"time": time(&l.time), "source": l.source, "text": l.text, "cursor": l.cursor})
}

pub fn endpoint_json(e: &pb::Endpoint) -> Value {
    let spec = e.spec.clone().unwrap_or_default();
    json!({
        "id": e.id,
        "name": spec.name,
        "target": e.target,
        "state": endpoint_state(e.state),
        "message": e.message,
        "model_uri": spec.model_uri,
        "model_format": spec.model_format,
        "url": e.url,
        "backend_ref": e.backend_ref,
        "backend_state": e.backend_state,
        "created_at": time(&e.created_at),
        "updated_at": time(&e.updated_at),
    })
}

pub fn endpoint_detail(out: Output, e: &pb::Endpoint) {
    let v = endpoint_json(e);
    match out {
        Output::Json => print_json(&v),
        Output::Table => {
            let mut t = Table::new();
            t.load_preset(NOTHING);
            for (k, val) in v.as_object().into_iter().flatten() {
                if let Some(s) = val.as_str().filter(|s| !s.is_empty()) {
                    t.add_row(vec![k.clone(), s.to_string()]);
                }
            }
            println!("{t}");
        }
    }
}

pub fn endpoints(out: Output, eps: &[pb::Endpoint]) {
    match out {
        Output::Json => print_json(&Value::Array(eps.iter().map(endpoint_json).collect())),
        Output::Table => {
            let mut t = table(&["NAME", "TARGET", "STATE", "MODEL", "ID", "MESSAGE"]);
            for e in eps {
                let spec = e.spec.clone().unwrap_or_default();
                t.add_row(vec![
                    spec.name,
                    e.target.clone(),
                    endpoint_state(e.state),
                    spec.model_uri,
                    e.id.clone(),
                    e.message.clone(),
                ]);
            }
            println!("{t}");
        }
    }
}

fn tensor_values(t: &pb::InferTensor) -> Value {
    if !t.bool_contents.is_empty() {
        json!(t.bool_contents)
    } else if !t.int64_contents.is_empty() {
        json!(t.int64_contents)
    } else if !t.uint64_contents.is_empty() {
        json!(t.uint64_contents)
    } else if !t.fp64_contents.is_empty() {
        json!(t.fp64_contents)
    } else {
        json!(
            t.bytes_contents
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect::<Vec<_>>()
        )
    }
}

pub fn prediction(out: Output, r: &pb::PredictResponse) {
    let outputs: Vec<Value> = r
        .outputs
        .iter()
        .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": tensor_values(t)}))
        .collect();
    match out {
        Output::Json => print_json(
            &json!({"model_name": r.model_name, "model_version": r.model_version, "outputs": outputs}),
        ),
        Output::Table => {
            for o in outputs {
                println!("{}: {}", o["name"].as_str().unwrap_or_default(), o["data"]);
            }
        }
    }
}

fn feature_name(f: i32) -> String {
    pb::Feature::try_from(f)
        .map(|f| {
            f.as_str_name()
                .trim_start_matches("FEATURE_")
                .to_lowercase()
                .replace('_', "-")
        })
        .unwrap_or_else(|_| f.to_string())
}

pub fn targets(out: Output, ts: &[pb::Target]) {
    let rows: Vec<Value> = ts
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "default": t.is_default,
                "plugin": t.plugin,
                "version": t.plugin_version,
                "features": t.features.iter().map(|f| feature_name(*f)).collect::<Vec<_>>(),
                "grants": t.grants,
                "health": pb::TargetHealth::try_from(t.health).map(|h| h.as_str_name().trim_start_matches("TARGET_HEALTH_").to_lowercase()).unwrap_or_default(),
                "health_message": t.health_message,
            })
        })
        .collect();
    match out {
        Output::Json => print_json(&Value::Array(rows)),
        Output::Table => {
            let mut t = table(&[
                "NAME", "DEFAULT", "PLUGIN", "VERSION", "FEATURES", "GRANTS", "HEALTH",
            ]);
            for r in rows {
                let list = |k: &str| {
                    r[k].as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default()
                };
                t.add_row(vec![
                    r["name"].as_str().unwrap_or_default().to_string(),
                    if r["default"].as_bool() == Some(true) {
                        "*".into()
                    } else {
                        String::new()
                    },
                    r["plugin"].as_str().unwrap_or_default().to_string(),
                    r["version"].as_str().unwrap_or_default().to_string(),
                    list("features"),
                    list("grants"),
                    // Why a target is unhealthy is what its operator needs to see.
                    match r["health"].as_str().unwrap_or_default() {
                        "unhealthy" => format!(
                            "unhealthy: {}",
                            r["health_message"].as_str().unwrap_or_default()
                        ),
                        h => h.to_string(),
                    },
                ]);
            }
            println!("{t}");
        }
    }
}

fn artifact_kind(k: i32) -> String {
    pb::ArtifactKind::try_from(k)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("ARTIFACT_KIND_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| k.to_string())
}

pub fn artifact_json(a: &pb::Artifact) -> Value {
    json!({
        "uri": a.uri,
        "sha256": a.sha256,
        "size": a.size,
        "kind": artifact_kind(a.kind),
        "name": a.name,
        "created_at": time(&a.created_at),
    })
}

/// An uploaded artifact: its URI alone on a table, for scripts (`uri=$(mlgw artifacts put .)`).
pub fn artifact_uri(out: Output, a: &pb::Artifact) {
    match out {
        Output::Json => print_json(&artifact_json(a)),
        Output::Table => println!("{}", a.uri),
    }
}

pub fn artifacts(out: Output, list: &[pb::Artifact]) {
    match out {
        Output::Json => print_json(&Value::Array(list.iter().map(artifact_json).collect())),
        Output::Table => {
            let mut t = table(&["NAME", "KIND", "SIZE", "CREATED", "URI"]);
            for a in list {
                t.add_row(vec![
                    a.name.clone(),
                    artifact_kind(a.kind),
                    a.size.to_string(),
                    time(&a.created_at),
                    a.uri.clone(),
                ]);
            }
            println!("{t}");
        }
    }
}
