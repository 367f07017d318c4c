//! Serving: an endpoint spec becomes a model, an endpoint config and an endpoint; an update
//! a new model and config for the call's revision and UpdateEndpoint; a canary two production
//! variants with weights. The plan is a pure function of the spec, the settings, the revision
//! and the stable variant; the calls to the host are at the bottom.
//!
//! A revision's model and config are named `<backend-name>-r<revision>-<digest>` (names.rs):
//! deterministic across retries (a retried create meets `conflict` and adopts what the first
//! attempt made) and never mistaken for another spec's objects at the same revision.

use std::collections::BTreeMap;

use mlgw_plugin_sdk::sagemaker::{
    self, Endpoint, EndpointConfigRequest, ModelRequest, ProductionVariant,
};
use mlgw_plugin_sdk::{
    BackendError, BackendRef, CallContext, EndpointSpec, EndpointState, EndpointStatus, KeyValue,
    Protocol, Route, internal, invalid,
};
use serde::{Deserialize, Serialize};

use crate::instances;
use crate::names::{self, listed, shown};
use crate::settings::{self, Settings};

/// What an endpoint's BackendRef carries: the endpoint, the config its revision put on it,
/// and every config and model of it that may still exist, so delete can remove them all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointData {
    pub endpoint: String,
    pub revision: u32,
    pub config: String,
    pub configs: Vec<String>,
    pub models: Vec<String>,
}

impl EndpointData {
    pub fn to_ref(&self, arn: &str) -> BackendRef {
        BackendRef {
            name: if arn.is_empty() {
                self.endpoint.clone()
            } else {
                arn.to_string()
            },
            data: serde_json::to_string(self).expect("EndpointData serializes"),
        }
    }

    pub fn from_ref(r: &BackendRef) -> Result<Self, BackendError> {
        serde_json::from_str(&r.data).map_err(|e| {
            internal(format!(
                "this endpoint's backend ref is not the sagemaker target's: {e}"
            ))
        })
    }
}

/// The model and config one revision creates.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub model: ModelRequest,
    pub config: EndpointConfigRequest,
}

/// The variant that keeps the rest of the traffic during a canary: the heaviest of the
/// config the endpoint serves now (the first of equals).
pub fn stable_variant(variants: &[ProductionVariant]) -> Option<&ProductionVariant> {
    variants.iter().rev().max_by_key(|v| v.initial_weight)
}

/// The revision's model and config. `stable` is the variant that keeps serving beside a
/// canary; without it (a first deploy, no canary percent) the new model takes all traffic.
pub fn plan(
    ctx: &CallContext,
    spec: &EndpointSpec,
    settings: &Settings,
    stable: Option<&ProductionVariant>,
) -> Result<Plan, BackendError> {
    let revision = ctx.revision.max(1);
    let (image, environment) = container(spec, settings)?;
    names::check_s3_uri(&spec.model_uri).map_err(|r| {
        invalid(
            "model_uri",
            format!("{r}: SageMaker loads models from S3 only"),
        )
    })?;
    let instance = instances::choose(settings, &spec.resources, "resources")?;
    let canary = match spec.canary_percent {
        Some(p) if p > 100 => {
            return Err(invalid(
                "canary_percent",
                format!("{p} is not a percentage (0 to 100)"),
            ));
        }
        Some(p) => Some(u32::from(p)),
        None => None,
    };
    if spec.max_replicas != 0 && spec.max_replicas < spec.min_replicas {
        return Err(invalid(
            "max_replicas",
            format!(
                "{} is below min_replicas ({})",
                spec.max_replicas, spec.min_replicas
            ),
        ));
    }

    let mut model = ModelRequest {
        name: String::new(),
        image,
        model_data_url: Some(spec.model_uri.clone()),
        environment,
    };
    model.name = names::revision_name(&ctx.backend_name, revision, model_digest(&model))?;

    let new = ProductionVariant {
        variant_name: format!("r{revision}"),
        model_name: model.name.clone(),
        instance_type: instance.instance_type.clone(),
        // SageMaker needs at least one instance behind a real-time variant.
        initial_instance_count: spec.min_replicas.max(1),
        initial_weight: 100,
    };
    let variants = match (canary, stable) {
        // All traffic to the new revision: nothing to keep beside it.
        (Some(100), _) | (None, _) | (Some(_), None) => vec![new],
        (Some(p), Some(stable)) => {
            let old = ProductionVariant {
                initial_weight: 100 - p,
                ..stable.clone()
            };
            if old.variant_name == new.variant_name {
                return Err(internal(format!(
                    "the endpoint already serves a variant named {} beside which revision {revision} would go",
                    old.variant_name
                )));
            }
            vec![
                old,
                ProductionVariant {
                    initial_weight: p,
                    ..new
                },
            ]
        }
    };
    let mut config = EndpointConfigRequest {
        name: String::new(),
        variants,
    };
    config.name = names::revision_name(&ctx.backend_name, revision, config_digest(&config))?;
    Ok(Plan { model, config })
}

/// The serving image and its environment: `spec.image`, else the settings' image for the
/// runtime or the model format.
fn container(
    spec: &EndpointSpec,
    settings: &Settings,
) -> Result<(String, Vec<KeyValue>), BackendError> {
    let env_of = |e: Option<&BTreeMap<String, String>>| -> Vec<KeyValue> {
        e.into_iter()
            .flatten()
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect()
    };
    if let Some(image) = spec
        .image
        .as_deref()
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        if image.len() > settings::MAX_IMAGE {
            return Err(invalid(
                "image",
                format!(
                    "is {} characters; SageMaker takes at most {}",
                    image.len(),
                    settings::MAX_IMAGE
                ),
            ));
        }
        // The operator's environment for the format still applies: it is what the format's
        // model servers need, whichever image runs it.
        let env = settings
            .serving_images
            .get(&spec.model_format.to_ascii_lowercase())
            .and_then(|s| s.environment());
        return Ok((image.to_string(), env_of(env)));
    }
    let runtime = spec
        .runtime
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if let Some(r) = runtime
        && let Some(s) = settings.serving_images.get(&r.to_ascii_lowercase())
    {
        return Ok((s.image().to_string(), env_of(s.environment())));
    }
    if let Some(s) = settings
        .serving_images
        .get(&spec.model_format.to_ascii_lowercase())
    {
        return Ok((s.image().to_string(), env_of(s.environment())));
    }
    let offered = listed(settings.serving_images.keys().map(String::as_str), 24);
    Err(match runtime {
        Some(r) => invalid(
            "runtime",
            format!(
                "this target has no serving image for runtime {} or model format {}; it has images for {offered} (or give image)",
                shown(r),
                shown(&spec.model_format)
            ),
        ),
        None => invalid(
            "model_format",
            format!(
                "this target has no serving image for {}; it has images for {offered} (or give image)",
                shown(&spec.model_format)
            ),
        ),
    })
}

fn model_digest(m: &ModelRequest) -> u32 {
    let env: Vec<(&str, &str)> = m
        .environment
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_str()))
        .collect();
    names::digest(
        serde_json::json!([m.image, m.model_data_url, env])
            .to_string()
            .as_bytes(),
    )
}

fn config_digest(c: &EndpointConfigRequest) -> u32 {
    let variants: Vec<serde_json::Value> = c
        .variants
        .iter()
        .map(|v| {
            serde_json::json!([
                v.variant_name,
                v.model_name,
                v.instance_type,
                v.initial_instance_count,
                v.initial_weight
            ])
        })
        .collect();
    names::digest(serde_json::Value::Array(variants).to_string().as_bytes())
}

/// DescribeEndpoint's answer as the gateway's status. `data.config` is what the latest
/// revision put on the endpoint: serving another one once in service means the update was
/// rolled back.
pub fn status(ep: &Endpoint, data: &EndpointData) -> EndpointStatus {
    let reason = ep.failure_reason.clone().filter(|r| !r.is_empty());
    let (state, message) = match ep.status.as_str() {
        "InService" if ep.config_name != data.config && !ep.config_name.is_empty() => (
            EndpointState::Ready,
            Some(format!(
                "serving {}: the update to {} was rolled back{}",
                ep.config_name,
                data.config,
                reason.map(|r| format!(" ({r})")).unwrap_or_default()
            )),
        ),
        "InService" => (EndpointState::Ready, traffic(ep)),
        "Creating" => (EndpointState::Creating, None),
        "Updating" | "SystemUpdating" => (EndpointState::Updating, None),
        // Still serving the old config while it goes back to it.
        "RollingBack" => (EndpointState::Updating, reason),
        "Failed" => (
            EndpointState::Failed(reason.unwrap_or_else(|| "the endpoint failed".into())),
            None,
        ),
        "Deleting" => (
            EndpointState::Failed(
                "SageMaker is deleting the endpoint, and not at the gateway's request".into(),
            ),
            None,
        ),
        "OutOfService" => (
            EndpointState::Failed("SageMaker takes no requests for the endpoint".into()),
            reason,
        ),
        other => (
            EndpointState::Updating,
            Some(format!("SageMaker reports the endpoint as {other:?}")),
        ),
    };
    EndpointStatus {
        state,
        raw_state: ep.status.clone(),
        message,
        updated_ref: None,
    }
}

/// "r1 90%, r2 10%" while more than one variant serves.
fn traffic(ep: &Endpoint) -> Option<String> {
    (ep.variants.len() > 1).then(|| {
        let total: u32 = ep.variants.iter().map(|v| v.current_weight).sum();
        ep.variants
            .iter()
            .map(|v| {
                let pct = (v.current_weight.saturating_mul(100) + total / 2)
                    .checked_div(total)
                    .unwrap_or(0);
                format!("{} {pct}%", v.variant_name)
            })
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// The data plane signs and sends InvokeEndpoint to the endpoint by name.
pub fn route(data: &EndpointData) -> Route {
    Route {
        url: data.endpoint.clone(),
        protocol: Protocol::SagemakerRuntime,
        model_name: data.endpoint.clone(),
        headers: Vec::new(),
    }
}

/// The ref after an update to `plan` at `revision`: it keeps the new revision's objects and
/// those the endpoint serves until the update is done (`previous`); the rest of what the old
/// ref listed is stale, to be deleted (configs, then models).
pub fn after_update(
    data: &EndpointData,
    previous_config: &str,
    previous_models: &[String],
    plan: &Plan,
    revision: u32,
) -> (EndpointData, Vec<String>, Vec<String>) {
    fn push_new(list: &mut Vec<String>, s: &str) {
        if !list.iter().any(|x| x == s) {
            list.push(s.to_string());
        }
    }
    let mut configs = Vec::new();
    for c in [previous_config, plan.config.name.as_str()] {
        push_new(&mut configs, c);
    }
    let mut models = Vec::new();
    for m in previous_models
        .iter()
        .chain(plan.config.variants.iter().map(|v| &v.model_name))
    {
        push_new(&mut models, m);
    }
    let stale = |old: &[String], keep: &[String]| -> Vec<String> {
        old.iter().filter(|x| !keep.contains(x)).cloned().collect()
    };
    let stale_configs = stale(&data.configs, &configs);
    let stale_models = stale(&data.models, &models);
    (
        EndpointData {
            endpoint: data.endpoint.clone(),
            revision,
            config: plan.config.name.clone(),
            configs,
            models,
        },
        stale_configs,
        stale_models,
    )
}

/// The config traffic moves away from: what the endpoint serves (after a rolled-back update
/// that is not what the ref says), unless that is already this revision's, a retry after
/// UpdateEndpoint went out: then the one the ref says, which the host keeps until an update
/// returns.
pub fn previous_config(data: &EndpointData, live: &Endpoint, revision: u32) -> String {
    if live.config_name.is_empty()
        || names::revision_of(&data.endpoint, &live.config_name) == Some(revision)
    {
        data.config.clone()
    } else {
        live.config_name.clone()
    }
}

/// Whether UpdateEndpoint is still to be sent. SageMaker takes it only from an endpoint that
/// is not already changing, so while it is, the update is `unavailable` (retried later).
pub fn needs_update(live: &Endpoint, plan: &Plan) -> Result<bool, BackendError> {
    if live.config_name == plan.config.name {
        return Ok(false);
    }
    match live.status.as_str() {
        "InService" | "Failed" => Ok(true),
        other => Err(BackendError::Unavailable(format!(
            "endpoint {} is {other}; it can be updated once it is InService",
            live.name
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Calls to the host.

/// `Ok` also when the object exists already: a retry adopts what its first attempt made.
fn adopt(r: Result<String, BackendError>) -> Result<(), BackendError> {
    match r {
        Ok(_) | Err(BackendError::Conflict(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn gone_is_fine(r: Result<(), BackendError>) -> Result<(), BackendError> {
    match r {
        Ok(()) | Err(BackendError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn create(plan: &Plan) -> Result<(), BackendError> {
    adopt(sagemaker::create_model(&plan.model))?;
    adopt(sagemaker::create_endpoint_config(&plan.config))
}

pub fn validate(ctx: &CallContext, spec: &EndpointSpec) -> Result<(), BackendError> {
    plan(ctx, spec, &settings::load(ctx)?, None).map(|_| ())
}

pub fn deploy(ctx: &CallContext, spec: &EndpointSpec) -> Result<BackendRef, BackendError> {
    let settings = settings::load(ctx)?;
    // A first deploy has no older revision to split traffic with: all of it goes to this one.
    let plan = plan(ctx, spec, &settings, None)?;
    let endpoint = names::resource_name(&ctx.backend_name, "")?;
    create(&plan)?;
    let arn = match sagemaker::create_endpoint(&endpoint, &plan.config.name) {
        Ok(arn) => arn,
        Err(BackendError::Conflict(_)) => sagemaker::describe_endpoint(&endpoint)?.arn,
        Err(e) => return Err(e),
    };
    mlgw_plugin_sdk::info(&format!(
        "creating endpoint {endpoint} with {}",
        plan.config.name
    ));
    Ok(EndpointData {
        endpoint,
        revision: ctx.revision.max(1),
        config: plan.config.name.clone(),
        configs: vec![plan.config.name],
        models: vec![plan.model.name],
    }
    .to_ref(&arn))
}

pub fn update(
    ctx: &CallContext,
    current: &BackendRef,
    spec: &EndpointSpec,
) -> Result<BackendRef, BackendError> {
    let settings = settings::load(ctx)?;
    let data = EndpointData::from_ref(current)?;
    let live = sagemaker::describe_endpoint(&data.endpoint)?;
    let revision = ctx.revision.max(1);
    let previous_config = previous_config(&data, &live, revision);
    let previous = match sagemaker::describe_endpoint_config(&previous_config) {
        Ok(variants) => variants,
        // Only a canary needs what it held; without one the new revision takes all traffic.
        Err(BackendError::NotFound(_)) if spec.canary_percent.is_none() => Vec::new(),
        Err(e) => return Err(e),
    };
    let stable = spec.canary_percent.and_then(|_| stable_variant(&previous));
    let plan = plan(ctx, spec, &settings, stable)?;
    create(&plan)?;
    if needs_update(&live, &plan)? {
        sagemaker::update_endpoint(&data.endpoint, &plan.config.name)?;
    }
    let previous_models: Vec<String> = previous.iter().map(|v| v.model_name.clone()).collect();
    let (mut next, stale_configs, stale_models) =
        after_update(&data, &previous_config, &previous_models, &plan, revision);
    // What no revision serves any more; one that will not go stays listed for delete.
    for c in stale_configs {
        if let Err(e) = gone_is_fine(sagemaker::delete_endpoint_config(&c)) {
            mlgw_plugin_sdk::warn(&format!("could not delete endpoint config {c}: {e:?}"));
            next.configs.push(c);
        }
    }
    for m in stale_models {
        if let Err(e) = gone_is_fine(sagemaker::delete_model(&m)) {
            mlgw_plugin_sdk::warn(&format!("could not delete model {m}: {e:?}"));
            next.models.push(m);
        }
    }
    mlgw_plugin_sdk::info(&format!(
        "updating endpoint {} to {}",
        data.endpoint, plan.config.name
    ));
    Ok(next.to_ref(&live.arn))
}

pub fn describe(endpoint: &BackendRef) -> Result<EndpointStatus, BackendError> {
    let data = EndpointData::from_ref(endpoint)?;
    Ok(status(
        &sagemaker::describe_endpoint(&data.endpoint)?,
        &data,
    ))
}

/// The endpoint, then every config and model of it: those in the ref and those the endpoint
/// served. What is gone already is fine, so a retried delete finishes what one began.
pub fn delete(endpoint: &BackendRef) -> Result<(), BackendError> {
    let data = EndpointData::from_ref(endpoint)?;
    let mut configs = data.configs.clone();
    let mut models = data.models.clone();
    match sagemaker::describe_endpoint(&data.endpoint) {
        Ok(live) if !live.config_name.is_empty() => {
            if !configs.contains(&live.config_name) {
                configs.push(live.config_name);
            }
        }
        Ok(_) | Err(BackendError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    for c in &configs {
        match sagemaker::describe_endpoint_config(c) {
            Ok(variants) => {
                for v in variants {
                    if !models.contains(&v.model_name) {
                        models.push(v.model_name);
                    }
                }
            }
            Err(BackendError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    gone_is_fine(sagemaker::delete_endpoint(&data.endpoint))?;
    let mut first_error = None;
    for r in configs
        .iter()
        .map(|c| gone_is_fine(sagemaker::delete_endpoint_config(c)))
        .chain(
            models
                .iter()
                .map(|m| gone_is_fine(sagemaker::delete_model(m))),
        )
    {
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

pub fn route_of(endpoint: &BackendRef) -> Result<Route, BackendError> {
    Ok(route(&EndpointData::from_ref(endpoint)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlgw_plugin_sdk::sagemaker::VariantStatus;
    use mlgw_plugin_sdk::{FieldError, Resources};

    use crate::settings::{ServingContainer, ServingImage};

    fn ctx(revision: u32) -> CallContext {
        CallContext {
            tenant: "default".into(),
            target: "sagemaker".into(),
            resource_id: "e-0193ab".into(),
            backend_name: "mlgw-e0193ab".into(),
            settings: String::new(),
            revision,
        }
    }

    fn settings() -> Settings {
        Settings {
            serving_images: [
                (
                    "sklearn".to_string(),
                    ServingImage::Image("img/sk-serve:1".into()),
                ),
                (
                    "xgboost".to_string(),
                    ServingImage::Container(ServingContainer {
                        image: "img/xgb-serve:1".into(),
                        environment: [("SAGEMAKER_PROGRAM".to_string(), "serve.py".to_string())]
                            .into(),
                    }),
                ),
                (
                    "mlserver".to_string(),
                    ServingImage::Image("img/mlserver:1".into()),
                ),
            ]
            .into(),
            ..Settings::default()
        }
    }

    fn spec() -> EndpointSpec {
        EndpointSpec {
            name: "iris".into(),
            model_uri: "s3://out/jobs/mlgw-j1/output/model.tar.gz".into(),
            model_format: "SKLearn".into(),
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
            min_replicas: 0,
            max_replicas: 0,
            canary_percent: None,
        }
    }

    fn refused(spec: &EndpointSpec) -> FieldError {
        match plan(&ctx(1), spec, &settings(), None) {
            Err(BackendError::InvalidSpec(f)) => f,
            other => panic!("expected invalid-spec, got {other:?}"),
        }
    }

    fn is_revision_name(name: &str, revision: u32) -> bool {
        names::revision_of("mlgw-e0193ab", name) == Some(revision)
    }

    #[test]
    fn a_first_deploy_is_one_model_and_one_variant() {
        let p = plan(&ctx(1), &spec(), &settings(), None).unwrap();
        assert!(is_revision_name(&p.model.name, 1), "{}", p.model.name);
        assert!(is_revision_name(&p.config.name, 1), "{}", p.config.name);
        assert_eq!(p.model.image, "img/sk-serve:1");
        assert_eq!(
            p.model.model_data_url.as_deref(),
            Some("s3://out/jobs/mlgw-j1/output/model.tar.gz")
        );
        assert!(p.model.environment.is_empty());
        assert_eq!(
            p.config.variants,
            [ProductionVariant {
                variant_name: "r1".into(),
                model_name: p.model.name.clone(),
                instance_type: "ml.m5.large".into(),
                initial_instance_count: 1,
                initial_weight: 100,
            }]
        );
        // A revision of 0 (not an endpoint call) still names revision 1.
        assert_eq!(plan(&ctx(0), &spec(), &settings(), None).unwrap(), p);
    }

    #[test]
    fn names_are_deterministic_and_tell_specs_apart() {
        let a = plan(&ctx(2), &spec(), &settings(), None).unwrap();
        assert_eq!(a, plan(&ctx(2), &spec(), &settings(), None).unwrap());
        let mut other = spec();
        other.model_uri = "s3://out/other/model.tar.gz".into();
        let b = plan(&ctx(2), &other, &settings(), None).unwrap();
        assert_ne!(a.model.name, b.model.name);
        assert_ne!(a.config.name, b.config.name);
        // Same model, more instances: a new config, the same model.
        let mut more = spec();
        more.min_replicas = 3;
        let c = plan(&ctx(2), &more, &settings(), None).unwrap();
        assert_eq!(a.model.name, c.model.name);
        assert_ne!(a.config.name, c.config.name);
        assert_eq!(c.config.variants[0].initial_instance_count, 3);
        // Every name stays within SageMaker's limit with the host's longest backend names.
        let mut long = ctx(u32::MAX);
        long.backend_name = format!("mlgw-e{}", "0".repeat(32));
        let p = plan(&long, &spec(), &settings(), None).unwrap();
        assert!(names::is_resource_name(&p.model.name), "{}", p.model.name);
        assert!(
            p.config
                .name
                .starts_with(&format!("{}-", long.backend_name))
        );
    }

    #[test]
    fn images_by_runtime_or_format() {
        let mut s = spec();
        s.model_format = "xgboost".into();
        let p = plan(&ctx(1), &s, &settings(), None).unwrap();
        assert_eq!(p.model.image, "img/xgb-serve:1");
        assert_eq!(
            p.model.environment,
            [KeyValue {
                key: "SAGEMAKER_PROGRAM".into(),
                value: "serve.py".into()
            }]
        );
        // A runtime the settings know wins over the format.
        s.runtime = Some("MLServer".into());
        assert_eq!(
            plan(&ctx(1), &s, &settings(), None).unwrap().model.image,
            "img/mlserver:1"
        );
        // An explicit image wins over both, keeping the format's environment.
        s.image = Some("acct/custom:2".into());
        let p = plan(&ctx(1), &s, &settings(), None).unwrap();
        assert_eq!(p.model.image, "acct/custom:2");
        assert_eq!(p.model.environment.len(), 1);
    }

    #[test]
    fn bad_endpoint_specs_name_the_field() {
        let with = |f: &dyn Fn(&mut EndpointSpec)| {
            let mut s = spec();
            f(&mut s);
            refused(&s)
        };
        let f = with(&|s| s.model_format = "onnx".into());
        assert_eq!(f.field, "model_format");
        assert!(
            f.reason.contains("images for mlserver, sklearn, xgboost"),
            "{}",
            f.reason
        );
        let f = with(&|s| {
            s.model_format = "onnx".into();
            s.runtime = Some("triton".into());
        });
        assert_eq!(f.field, "runtime");
        let f = with(&|s| s.model_uri = "file:///models/iris".into());
        assert_eq!(f.field, "model_uri");
        assert!(f.reason.contains("S3 only"), "{}", f.reason);
        assert_eq!(with(&|s| s.model_uri = String::new()).field, "model_uri");
        assert_eq!(
            with(&|s| s.resources.instance_type = Some("ml.z9.huge".into())).field,
            "resources.instance_type"
        );
        assert_eq!(
            with(&|s| s.canary_percent = Some(101)).field,
            "canary_percent"
        );
        assert_eq!(with(&|s| s.image = Some("i".repeat(300))).field, "image");
        assert_eq!(
            with(&|s| {
                s.min_replicas = 3;
                s.max_replicas = 2;
            })
            .field,
            "max_replicas"
        );
    }

    fn variant(name: &str, model: &str, weight: u32) -> ProductionVariant {
        ProductionVariant {
            variant_name: name.into(),
            model_name: model.into(),
            instance_type: "ml.c5.xlarge".into(),
            initial_instance_count: 2,
            initial_weight: weight,
        }
    }

    #[test]
    fn a_canary_is_two_weighted_variants() {
        let stable = variant("r1", "mlgw-e0193ab-r1-00000001", 100);
        let mut s = spec();
        s.canary_percent = Some(10);
        let p = plan(&ctx(2), &s, &settings(), Some(&stable)).unwrap();
        assert_eq!(p.config.variants.len(), 2);
        // The stable variant keeps its own model, instance type and count.
        assert_eq!(
            p.config.variants[0],
            variant("r1", "mlgw-e0193ab-r1-00000001", 90)
        );
        assert_eq!(p.config.variants[1].variant_name, "r2");
        assert_eq!(p.config.variants[1].model_name, p.model.name);
        assert_eq!(p.config.variants[1].initial_weight, 10);
        assert_eq!(p.config.variants[1].instance_type, "ml.m5.large");

        // Another percentage is another config.
        s.canary_percent = Some(25);
        let q = plan(&ctx(2), &s, &settings(), Some(&stable)).unwrap();
        assert_ne!(p.config.name, q.config.name);
        assert_eq!(p.model.name, q.model.name);
        assert_eq!(
            q.config
                .variants
                .iter()
                .map(|v| v.initial_weight)
                .collect::<Vec<_>>(),
            [75, 25]
        );

        // 100 percent: the new revision alone; no percent: likewise.
        s.canary_percent = Some(100);
        let all = plan(&ctx(2), &s, &settings(), Some(&stable)).unwrap();
        assert_eq!(all.config.variants.len(), 1);
        assert_eq!(all.config.variants[0].initial_weight, 100);
        // Zero percent: the new revision is deployed beside, with no traffic yet.
        s.canary_percent = Some(0);
        let none = plan(&ctx(2), &s, &settings(), Some(&stable)).unwrap();
        assert_eq!(
            none.config
                .variants
                .iter()
                .map(|v| v.initial_weight)
                .collect::<Vec<_>>(),
            [100, 0]
        );
        // A first deploy has nothing to split with.
        s.canary_percent = Some(10);
        assert_eq!(
            plan(&ctx(1), &s, &settings(), None)
                .unwrap()
                .config
                .variants
                .len(),
            1
        );
    }

    #[test]
    fn the_stable_variant_is_the_heaviest() {
        let vs = [variant("r1", "m1", 90), variant("r2", "m2", 10)];
        assert_eq!(stable_variant(&vs).unwrap().variant_name, "r1");
        let vs = [variant("r1", "m1", 10), variant("r2", "m2", 90)];
        assert_eq!(stable_variant(&vs).unwrap().variant_name, "r2");
        let vs = [variant("r1", "m1", 50), variant("r2", "m2", 50)];
        assert_eq!(
            stable_variant(&vs).unwrap().variant_name,
            "r1",
            "the first of equals"
        );
        assert!(stable_variant(&[]).is_none());
    }

    fn data() -> EndpointData {
        EndpointData {
            endpoint: "mlgw-e0193ab".into(),
            revision: 2,
            config: "mlgw-e0193ab-r2-0000000c".into(),
            configs: vec![
                "mlgw-e0193ab-r1-0000000c".into(),
                "mlgw-e0193ab-r2-0000000c".into(),
            ],
            models: vec![
                "mlgw-e0193ab-r1-0000000a".into(),
                "mlgw-e0193ab-r2-0000000a".into(),
            ],
        }
    }

    fn endpoint(status: &str, config: &str) -> Endpoint {
        Endpoint {
            name: "mlgw-e0193ab".into(),
            arn: "arn:aws:sagemaker:eu-west-1:1:endpoint/mlgw-e0193ab".into(),
            status: status.into(),
            failure_reason: None,
            config_name: config.into(),
            variants: vec![],
        }
    }

    #[test]
    fn endpoint_status_table() {
        let cfg = "mlgw-e0193ab-r2-0000000c";
        for (word, state) in [
            ("InService", EndpointState::Ready),
            ("Creating", EndpointState::Creating),
            ("Updating", EndpointState::Updating),
            ("SystemUpdating", EndpointState::Updating),
            ("RollingBack", EndpointState::Updating),
            (
                "Failed",
                EndpointState::Failed("the endpoint failed".into()),
            ),
            ("Hibernating", EndpointState::Updating),
        ] {
            let s = status(&endpoint(word, cfg), &data());
            assert_eq!(s.state, state, "{word}");
            assert_eq!(s.raw_state, word);
            assert_eq!(s.updated_ref, None);
        }
        assert!(matches!(
            status(&endpoint("Deleting", cfg), &data()).state,
            EndpointState::Failed(m) if m.contains("not at the gateway's request")
        ));
        assert!(matches!(
            status(&endpoint("OutOfService", cfg), &data()).state,
            EndpointState::Failed(_)
        ));
        let s = status(&endpoint("Hibernating", cfg), &data());
        assert!(s.message.unwrap().contains("\"Hibernating\""));

        let mut failed = endpoint("Failed", cfg);
        failed.failure_reason = Some("model data missing".into());
        assert_eq!(
            status(&failed, &data()).state,
            EndpointState::Failed("model data missing".into())
        );
    }

    #[test]
    fn a_rolled_back_update_and_a_canarys_traffic_show() {
        let mut back = endpoint("InService", "mlgw-e0193ab-r1-0000000c");
        back.failure_reason = Some("the new model failed its health check".into());
        let s = status(&back, &data());
        assert_eq!(s.state, EndpointState::Ready);
        let m = s.message.unwrap();
        assert!(m.contains("serving mlgw-e0193ab-r1-0000000c"), "{m}");
        assert!(
            m.contains("update to mlgw-e0193ab-r2-0000000c was rolled back"),
            "{m}"
        );
        assert!(m.contains("health check"), "{m}");

        let mut canary = endpoint("InService", "mlgw-e0193ab-r2-0000000c");
        canary.variants = vec![
            VariantStatus {
                variant_name: "r1".into(),
                current_weight: 90,
                desired_weight: 90,
                current_instance_count: 1,
            },
            VariantStatus {
                variant_name: "r2".into(),
                current_weight: 10,
                desired_weight: 10,
                current_instance_count: 1,
            },
        ];
        let s = status(&canary, &data());
        assert_eq!(s.state, EndpointState::Ready);
        assert_eq!(s.message.as_deref(), Some("r1 90%, r2 10%"));
        assert_eq!(
            status(&endpoint("InService", "mlgw-e0193ab-r2-0000000c"), &data()).message,
            None
        );
    }

    #[test]
    fn routes_go_to_sagemaker_runtime_by_endpoint_name() {
        let r = route(&data());
        assert_eq!(r.url, "mlgw-e0193ab");
        assert_eq!(r.model_name, "mlgw-e0193ab");
        assert_eq!(r.protocol, Protocol::SagemakerRuntime);
        assert!(r.headers.is_empty());
    }

    #[test]
    fn an_update_keeps_what_serves_and_drops_the_rest() {
        let mut s = spec();
        s.canary_percent = Some(10);
        let stable = variant("r2", "mlgw-e0193ab-r2-0000000a", 100);
        let p = plan(&ctx(3), &s, &settings(), Some(&stable)).unwrap();
        let (next, stale_configs, stale_models) = after_update(
            &data(),
            "mlgw-e0193ab-r2-0000000c",
            &["mlgw-e0193ab-r2-0000000a".to_string()],
            &p,
            3,
        );
        assert_eq!(next.revision, 3);
        assert_eq!(next.config, p.config.name);
        assert_eq!(
            next.configs,
            [
                "mlgw-e0193ab-r2-0000000c".to_string(),
                p.config.name.clone()
            ]
        );
        assert_eq!(
            next.models,
            ["mlgw-e0193ab-r2-0000000a".to_string(), p.model.name.clone()]
        );
        assert_eq!(stale_configs, ["mlgw-e0193ab-r1-0000000c"]);
        assert_eq!(stale_models, ["mlgw-e0193ab-r1-0000000a"]);

        // A retry of the same update lists nothing twice and drops nothing it made.
        let (again, sc, sm) = after_update(
            &next,
            "mlgw-e0193ab-r2-0000000c",
            &["mlgw-e0193ab-r2-0000000a".to_string()],
            &p,
            3,
        );
        assert_eq!(again, next);
        assert!(sc.is_empty() && sm.is_empty());
    }

    #[test]
    fn an_update_moves_traffic_away_from_what_serves() {
        let d = data();
        // The usual case: the endpoint serves what the ref says.
        let live = endpoint("InService", "mlgw-e0193ab-r2-0000000c");
        assert_eq!(previous_config(&d, &live, 3), "mlgw-e0193ab-r2-0000000c");
        // Revision 2 was rolled back: revision 1's config still serves, so it is the stable one.
        let live = endpoint("InService", "mlgw-e0193ab-r1-0000000c");
        assert_eq!(previous_config(&d, &live, 3), "mlgw-e0193ab-r1-0000000c");
        // A retry of revision 3 after UpdateEndpoint went out: the endpoint has 3's config
        // already, and what it moves away from is still the ref's.
        let live = endpoint("Updating", "mlgw-e0193ab-r3-12345678");
        assert_eq!(previous_config(&d, &live, 3), "mlgw-e0193ab-r2-0000000c");
        assert_eq!(previous_config(&d, &endpoint("InService", ""), 3), d.config);
    }

    #[test]
    fn update_endpoint_is_sent_once_and_only_to_a_settled_endpoint() {
        let p = plan(&ctx(3), &spec(), &settings(), None).unwrap();
        let old = "mlgw-e0193ab-r2-0000000c";
        assert!(needs_update(&endpoint("InService", old), &p).unwrap());
        assert!(needs_update(&endpoint("Failed", old), &p).unwrap());
        // A retry: the endpoint has this revision's config already, whatever its status.
        assert!(!needs_update(&endpoint("Updating", &p.config.name), &p).unwrap());
        assert!(!needs_update(&endpoint("InService", &p.config.name), &p).unwrap());
        for busy in [
            "Creating",
            "Updating",
            "SystemUpdating",
            "RollingBack",
            "Deleting",
        ] {
            match needs_update(&endpoint(busy, old), &p) {
                Err(BackendError::Unavailable(m)) => assert!(m.contains(busy), "{m}"),
                other => panic!("{busy}: {other:?}"),
            }
        }
    }

    #[test]
    fn endpoint_refs_round_trip() {
        let r = data().to_ref("arn:e");
        assert_eq!(r.name, "arn:e");
        assert_eq!(EndpointData::from_ref(&r).unwrap(), data());
        assert!(matches!(
            EndpointData::from_ref(&BackendRef {
                name: "x".into(),
                data: "{\"job\":\"x\"}".into()
            }),
            Err(BackendError::Internal(_))
        ));
    }
}
