//! Honest states from an InferenceService: its conditions (Ready, PredictorReady, IngressReady,
//! LatestDeploymentReady) and `status.modelStatus`. A model that failed to load is failed with
//! KServe's reason whatever a Ready condition says; "Ready" is only believed for the generation
//! the gateway last applied, and the gateway still probes the model server before serving.

use mlgw_plugin_sdk::EndpointState;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub state: EndpointState,
    /// KServe's own word: a model state, a condition reason, "Ready"
    pub raw: String,
    pub message: Option<String>,
}

/// The conditions that stand between an InferenceService and serving, in the order a reader
/// should see them: the first one not True says why it is not ready.
const CONDITIONS: &[&str] = &[
    "PredictorReady",
    "LatestDeploymentReady",
    "IngressReady",
    "Ready",
];

fn text(v: &Value, key: &str) -> Option<String> {
    v[key]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn condition<'a>(obj: &'a Value, t: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

/// `reason: message`, or whichever there is.
fn why(v: &Value) -> Option<String> {
    match (text(v, "reason"), text(v, "message")) {
        (Some(r), Some(m)) => Some(format!("{r}: {m}")),
        (Some(x), None) | (None, Some(x)) => Some(x),
        (None, None) => None,
    }
}

/// The URL the InferenceService is served at, once KServe has published one.
pub fn url(obj: &Value) -> Option<&str> {
    obj["status"]["url"]
        .as_str()
        .or_else(|| obj["status"]["address"]["url"].as_str())
        .filter(|u| !u.is_empty())
}

fn model_failure(obj: &Value) -> Option<Observed> {
    let ms = &obj["status"]["modelStatus"];
    let states = &ms["states"];
    let failed_to_load = states["activeModelState"] == "FailedToLoad"
        || states["targetModelState"] == "FailedToLoad";
    let transition = ms["transitionStatus"].as_str().unwrap_or_default();
    if !failed_to_load && !matches!(transition, "BlockedByFailedLoad" | "InvalidSpec") {
        return None;
    }
    let info = &ms["lastFailureInfo"];
    let mut reason = why(info).unwrap_or_else(|| {
        if transition == "InvalidSpec" {
            "KServe found the predictor's spec invalid".into()
        } else {
            "the model failed to load".into()
        }
    });
    if let Some(code) = info["exitCode"].as_i64() {
        reason.push_str(&format!(" (exit code {code})"));
    }
    let raw = if failed_to_load {
        "FailedToLoad"
    } else {
        transition
    };
    Some(Observed {
        state: EndpointState::Failed(reason),
        raw: raw.into(),
        message: None,
    })
}

/// The endpoint's state from its InferenceService. `updating` says which of creating and
/// updating a not-yet-ready object is (a revision after the first).
pub fn state_of(obj: &Value, updating: bool) -> Observed {
    let waiting = if updating {
        EndpointState::Updating
    } else {
        EndpointState::Creating
    };
    let progress = |raw: &str, message: String| Observed {
        state: waiting.clone(),
        raw: raw.into(),
        message: Some(message),
    };
    if obj["metadata"]["deletionTimestamp"].is_string() {
        return Observed {
            state: EndpointState::Failed("the InferenceService is being deleted".into()),
            raw: "Terminating".into(),
            message: None,
        };
    }
    if let Some(f) = model_failure(obj) {
        return f;
    }
    // A status written for an older generation says nothing about what was just applied.
    let generation = obj["metadata"]["generation"].as_i64();
    let observed = obj["status"]["observedGeneration"].as_i64();
    if let (Some(g), Some(o)) = (generation, observed)
        && o < g
    {
        return progress(
            "Reconciling",
            format!("waiting for KServe to reconcile generation {g} (its status is for {o})"),
        );
    }
    let not_true = CONDITIONS.iter().find_map(|t| {
        let c = condition(obj, t)?;
        (c["status"] != "True").then_some((t, c))
    });
    let ready = condition(obj, "Ready").is_some_and(|c| c["status"] == "True");
    let model_state = obj["status"]["modelStatus"]["states"]["activeModelState"]
        .as_str()
        .filter(|s| !s.is_empty());
    match (ready, not_true, model_state) {
        (true, None, None | Some("Loaded")) => match url(obj) {
            Some(_) => Observed {
                state: EndpointState::Ready,
                raw: "Ready".into(),
                message: None,
            },
            None => progress(
                "Ready",
                "ready, but KServe has not published its URL yet".into(),
            ),
        },
        (_, Some((t, c)), _) => progress(
            text(c, "reason").as_deref().unwrap_or("NotReady"),
            match why(c) {
                Some(w) => format!("{t}: {w}"),
                None => format!("{t} is {}", c["status"].as_str().unwrap_or("Unknown")),
            },
        ),
        (_, None, Some(m)) => progress(m, format!("the model is {m}")),
        (false, None, None) => progress(
            "Pending",
            "waiting for KServe to report on the InferenceService".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(t: &str, status: &str) -> Value {
        json!({"type": t, "status": status})
    }

    fn isvc(conditions: Vec<Value>, model_status: Value) -> Value {
        json!({
            "metadata": {"name": "m", "generation": 1},
            "status": {
                "observedGeneration": 1,
                "url": "http://m-team-a.example.com",
                "address": {"url": "http://m-predictor.team-a.svc.cluster.local"},
                "conditions": conditions,
                "modelStatus": model_status,
            }
        })
    }

    fn all_true() -> Vec<Value> {
        CONDITIONS.iter().map(|t| cond(t, "True")).collect()
    }

    fn loaded() -> Value {
        json!({"transitionStatus": "UpToDate",
               "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"}})
    }

    #[test]
    fn ready_needs_every_condition_and_a_loaded_model() {
        let o = state_of(&isvc(all_true(), loaded()), false);
        assert_eq!(o.state, EndpointState::Ready);
        assert_eq!(o.raw, "Ready");
        // No modelStatus at all (older KServe): the conditions decide.
        let o = state_of(&isvc(all_true(), Value::Null), false);
        assert_eq!(o.state, EndpointState::Ready);
    }

    #[test]
    fn failed_to_load_wins_over_a_ready_condition() {
        let ms = json!({
            "transitionStatus": "BlockedByFailedLoad",
            "states": {"activeModelState": "FailedToLoad", "targetModelState": "FailedToLoad"},
            "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "no model.joblib in /mnt/models", "exitCode": 1}
        });
        let o = state_of(&isvc(all_true(), ms), false);
        assert_eq!(
            o.state,
            EndpointState::Failed(
                "ModelLoadFailed: no model.joblib in /mnt/models (exit code 1)".into()
            )
        );
        assert_eq!(o.raw, "FailedToLoad");
        // A blocked transition without states still fails, with KServe's word.
        let o = state_of(
            &isvc(all_true(), json!({"transitionStatus": "InvalidSpec"})),
            true,
        );
        assert_eq!(o.raw, "InvalidSpec");
        assert!(matches!(o.state, EndpointState::Failed(m) if m.contains("invalid")));
    }

    #[test]
    fn progress_says_which_condition_waits() {
        let mut c = all_true();
        c[0] = json!({"type": "PredictorReady", "status": "False", "reason": "MinimumReplicasUnavailable",
                      "message": "Deployment does not have minimum availability."});
        c[3] = cond("Ready", "False");
        let o = state_of(&isvc(c, loaded()), false);
        assert_eq!(o.state, EndpointState::Creating);
        assert_eq!(o.raw, "MinimumReplicasUnavailable");
        assert_eq!(
            o.message.as_deref(),
            Some(
                "PredictorReady: MinimumReplicasUnavailable: Deployment does not have minimum availability."
            )
        );
        let mut c = all_true();
        c[2] = cond("IngressReady", "Unknown");
        let o = state_of(&isvc(c, loaded()), true);
        assert_eq!(o.state, EndpointState::Updating);
        assert_eq!(o.message.as_deref(), Some("IngressReady is Unknown"));
    }

    #[test]
    fn a_loading_model_is_not_ready_even_if_ready_says_so() {
        for m in ["Pending", "Loading", "Standby"] {
            let ms = json!({"transitionStatus": "InProgress", "states": {"activeModelState": m}});
            let o = state_of(&isvc(all_true(), ms), false);
            assert_eq!(o.state, EndpointState::Creating, "{m}");
            assert_eq!(o.raw, m);
            assert_eq!(o.message, Some(format!("the model is {m}")));
        }
    }

    #[test]
    fn a_status_for_an_older_generation_is_not_believed() {
        let mut o = isvc(all_true(), loaded());
        o["metadata"]["generation"] = json!(2);
        let s = state_of(&o, true);
        assert_eq!(s.state, EndpointState::Updating);
        assert_eq!(s.raw, "Reconciling");
    }

    #[test]
    fn no_status_yet_and_no_url_yet() {
        let o = state_of(&json!({"metadata": {"generation": 1}}), false);
        assert_eq!(o.state, EndpointState::Creating);
        assert_eq!(o.raw, "Pending");
        let mut o = isvc(all_true(), loaded());
        o["status"]["url"] = Value::Null;
        o["status"]["address"] = Value::Null;
        let s = state_of(&o, false);
        assert_eq!(s.state, EndpointState::Creating);
        assert!(s.message.unwrap().contains("URL"));
    }

    #[test]
    fn being_deleted_is_not_serving() {
        let mut o = isvc(all_true(), loaded());
        o["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
        assert!(matches!(
            state_of(&o, false).state,
            EndpointState::Failed(_)
        ));
    }
}
