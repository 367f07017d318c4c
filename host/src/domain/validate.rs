//! Spec validation the gateway does before any backend sees a spec. Each error names the field
//! by its path in the API request so clients can point at it.

use super::{EndpointSpec, TrainingSpec};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

const MAX_NAME: usize = 128;
const MAX_LIST: usize = 1024;
const MAX_VALUE: usize = 64 * 1024;

fn check_len(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(FieldError::new(field, format!("longer than {max} bytes")));
    }
    Ok(())
}

fn is_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Kubernetes quantity syntax ("2", "500m", "1.5", "4Gi", "1e3"): targets pass these through.
fn is_quantity(q: &str) -> bool {
    let num_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(num_end);
    if num.is_empty() || num.parse::<f64>().is_err() {
        return false;
    }
    matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || (suffix.starts_with(['e', 'E']) && suffix[1..].parse::<i32>().is_ok())
}

fn validate_resources(prefix: &str, r: &super::Resources) -> Result<(), FieldError> {
    if let Some(cpu) = &r.cpu
        && !is_quantity(cpu)
    {
        return Err(FieldError::new(
            format!("{prefix}.cpu"),
            format!("{cpu:?} is not a quantity (e.g. \"2\" or \"500m\")"),
        ));
    }
    if let Some(mem) = &r.memory
        && !is_quantity(mem)
    {
        return Err(FieldError::new(
            format!("{prefix}.memory"),
            format!("{mem:?} is not a quantity (e.g. \"4Gi\")"),
        ));
    }
    if r.nodes > 1024 {
        return Err(FieldError::new(format!("{prefix}.nodes"), "at most 1024"));
    }
    if r.gpus > 1024 {
        return Err(FieldError::new(format!("{prefix}.gpus"), "at most 1024"));
    }
    Ok(())
}

pub fn validate_training_spec(spec: &TrainingSpec) -> Result<(), FieldError> {
    check_len("spec.name", &spec.name, MAX_NAME)?;
    if spec.command.is_empty() || spec.command[0].trim().is_empty() {
        return Err(FieldError::new(
            "spec.command",
            "must not be empty: give the program to run and its arguments",
        ));
    }
    if spec.command.len() + spec.args.len() > MAX_LIST {
        return Err(FieldError::new(
            "spec.args",
            format!("more than {MAX_LIST} arguments"),
        ));
    }
    for (i, a) in spec.command.iter().chain(&spec.args).enumerate() {
        check_len(&format!("spec.command[{i}]"), a, MAX_VALUE)?;
    }
    for (k, v) in &spec.env {
        if !is_env_name(k) {
            return Err(FieldError::new(
                format!("spec.env.{k}"),
                "not a valid environment variable name (letters, digits, _; not starting with a digit)",
            ));
        }
        check_len(&format!("spec.env.{k}"), v, MAX_VALUE)?;
    }
    for (k, v) in &spec.hyperparameters {
        if k.is_empty() {
            return Err(FieldError::new(
                "spec.hyperparameters",
                "keys must not be empty",
            ));
        }
        check_len(&format!("spec.hyperparameters.{k}"), v, MAX_VALUE)?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, input) in spec.inputs.iter().enumerate() {
        if input.name.is_empty() {
            return Err(FieldError::new(
                format!("spec.inputs[{i}].name"),
                "must not be empty",
            ));
        }
        if !input
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(FieldError::new(
                format!("spec.inputs[{i}].name"),
                "only letters, digits, '_' and '-'",
            ));
        }
        if !seen.insert(&input.name) {
            return Err(FieldError::new(
                format!("spec.inputs[{i}].name"),
                format!("channel {:?} given twice", input.name),
            ));
        }
        if input.uri.is_empty() {
            return Err(FieldError::new(
                format!("spec.inputs[{i}].uri"),
                "must not be empty",
            ));
        }
    }
    validate_resources("spec.resources", &spec.resources)?;
    if spec.max_runtime_seconds == Some(0) {
        return Err(FieldError::new(
            "spec.max_runtime_seconds",
            "must be positive",
        ));
    }
    Ok(())
}

/// Endpoint names double as model names on the model server and as Kubernetes object names.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn validate_endpoint_spec(spec: &EndpointSpec) -> Result<(), FieldError> {
    if !is_dns_label(&spec.name) {
        return Err(FieldError::new(
            "spec.name",
            "must be 1-63 lowercase letters, digits or '-', not starting or ending with '-'",
        ));
    }
    if spec.model_uri.trim().is_empty() {
        return Err(FieldError::new("spec.model_uri", "must not be empty"));
    }
    check_len("spec.model_uri", &spec.model_uri, 4096)?;
    if spec.model_format.trim().is_empty() {
        return Err(FieldError::new(
            "spec.model_format",
            "must not be empty (e.g. \"sklearn\")",
        ));
    }
    validate_resources("spec.resources", &spec.resources)?;
    if spec.max_replicas < spec.min_replicas {
        return Err(FieldError::new(
            "spec.max_replicas",
            format!(
                "{} is below min_replicas {}",
                spec.max_replicas, spec.min_replicas
            ),
        ));
    }
    if let Some(p) = spec.canary_percent
        && p > 100
    {
        return Err(FieldError::new(
            "spec.canary_percent",
            "must be between 0 and 100",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Resources;

    fn training() -> TrainingSpec {
        TrainingSpec {
            command: vec!["python3".into()],
            resources: Resources {
                nodes: 1,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn empty_command_names_the_field() {
        let mut s = training();
        s.command.clear();
        assert_eq!(
            validate_training_spec(&s).unwrap_err().field,
            "spec.command"
        );
    }

    #[test]
    fn bad_env_name_is_rejected() {
        let mut s = training();
        s.env.insert("1BAD".into(), "x".into());
        assert_eq!(
            validate_training_spec(&s).unwrap_err().field,
            "spec.env.1BAD"
        );
    }

    #[test]
    fn quantities() {
        for ok in ["2", "500m", "1.5", "4Gi", "1e3", "128974848"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "two", "4GB", "-1", "Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
        let mut s = training();
        s.resources.memory = Some("4GB".into());
        assert_eq!(
            validate_training_spec(&s).unwrap_err().field,
            "spec.resources.memory"
        );
    }

    #[test]
    fn duplicate_channels_are_rejected() {
        let mut s = training();
        for _ in 0..2 {
            s.inputs.push(crate::domain::InputChannel {
                name: "train".into(),
                uri: "file:///d".into(),
            });
        }
        assert_eq!(
            validate_training_spec(&s).unwrap_err().field,
            "spec.inputs[1].name"
        );
    }

    #[test]
    fn endpoint_names_are_dns_labels() {
        let mut e = EndpointSpec {
            name: "Iris".into(),
            model_uri: "file:///m".into(),
            model_format: "sklearn".into(),
            min_replicas: 1,
            max_replicas: 1,
            ..Default::default()
        };
        assert_eq!(validate_endpoint_spec(&e).unwrap_err().field, "spec.name");
        e.name = "iris".into();
        assert!(validate_endpoint_spec(&e).is_ok());
        e.canary_percent = Some(101);
        assert_eq!(
            validate_endpoint_spec(&e).unwrap_err().field,
            "spec.canary_percent"
        );
    }
}
