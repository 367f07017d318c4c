//! Checks on everything a client sends, done before any backend or the store sees it. Each
//! error names the field by its path in the API request so clients can point at it. Every
//! string is bounded, and a reason never echoes an unbounded value back: the error itself must
//! stay small enough to reach the client.

use std::collections::BTreeMap;

use super::{EndpointSpec, Resources, TrainingSpec};

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

type Result<T = (), E = FieldError> = std::result::Result<T, E>;

// --- Limits. Generous for real use; their job is to keep a broken or hostile request from
// reaching a backend, a process table or the store.

/// A job's human name (backends get names derived from the id instead).
pub const MAX_JOB_NAME: usize = 128;
/// Ids the gateway hands out are 34 bytes (`j-` + 32 hex digits) and endpoint names, which may
/// stand in for ids, at most 63: anything longer can never name a record.
pub const MAX_ID: usize = 128;
/// Target names come from the operator's config, which is held to the same bound.
pub const MAX_TARGET_NAME: usize = 64;
pub const MAX_IDEMPOTENCY_KEY: usize = 256;
/// The program and its arguments together.
pub const MAX_ARGS: usize = 1024;
/// One argument, environment value or hyperparameter value.
pub const MAX_VALUE: usize = 64 * 1024;
/// Entries in `env` or `hyperparameters`.
pub const MAX_ENTRIES: usize = 1024;
/// A map key: an environment variable, hyperparameter or parameter name.
pub const MAX_KEY: usize = 256;
pub const MAX_INPUTS: usize = 64;
/// SageMaker's own limit on channel names; channels also become environment variable names.
pub const MAX_CHANNEL_NAME: usize = 64;
pub const MAX_URI: usize = 4096;
/// An OCI reference: a 255-byte name, a 128-byte tag and a digest, with room to spare.
pub const MAX_IMAGE: usize = 1024;
/// A word naming something: framework, model format, runtime, GPU or instance type.
pub const MAX_WORD: usize = 256;
/// A Kubernetes quantity ("500m", "4Gi").
pub const MAX_QUANTITY: usize = 64;
/// GPUs, nodes and replicas.
pub const MAX_COUNT: u32 = 1024;
/// Targets turn `max_runtime_seconds` into deadlines (instants, timers, Kubernetes
/// `activeDeadlineSeconds`); a value near 2^63 overflows them. A year and a day is beyond any
/// real job; tighter caps of a backend (SageMaker's 28 days) are its plugin's to enforce.
pub const MAX_RUNTIME_SECONDS: u64 = 366 * 24 * 60 * 60;
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;
/// A log cursor: the gateway's `<skip>.<backend cursor>`, backend cursors being offsets,
/// timestamps or service tokens.
pub const MAX_CURSOR: usize = 4096;
/// Tensors in one prediction, inputs or requested outputs.
pub const MAX_TENSORS: usize = 256;
pub const MAX_TENSOR_NAME: usize = 256;
/// Parameters of a prediction or of one tensor.
pub const MAX_PARAMETERS: usize = 256;
pub const MAX_REQUEST_ID: usize = 256;
/// Dimensions of a tensor (numpy's own limit before 2.0).
pub const MAX_RANK: usize = 32;
/// Elements in one tensor: far more than a request the gateway accepts can carry, far less
/// than a shape's product that overflows. A shape claiming more (a zero dimension makes any
/// other one "fit") is a mistake or an attack on the model server.
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 26;

/// Map keys longer than this are cut in field paths (the path must stay readable).
const MAX_KEY_IN_PATH: usize = 64;

// --- Building blocks.

fn check_len(field: &str, value: &str, max: usize) -> Result {
    if value.len() > max {
        return Err(FieldError::new(
            field,
            format!("longer than {max} bytes ({})", value.len()),
        ));
    }
    Ok(())
}

/// Only NUL is refused: no process can receive it in an argument or the environment, while
/// newlines and tabs are everyday content (a `python -c` script).
fn check_no_nul(field: &str, value: &str) -> Result {
    if let Some(at) = value.find('\0') {
        return Err(FieldError::new(
            field,
            format!("contains a NUL byte (at byte {at}); no process can receive one"),
        ));
    }
    Ok(())
}

fn check_no_control(field: &str, value: &str) -> Result {
    if let Some((at, c)) = value.char_indices().find(|(_, c)| c.is_control()) {
        return Err(FieldError::new(
            field,
            format!(
                "contains the control character U+{:04X} (at byte {at})",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// Bounded text without control characters: names, URIs.
fn check_text(field: &str, value: &str, max: usize) -> Result {
    check_len(field, value, max)?;
    check_no_control(field, value)
}

/// Bounded, no control characters and no whitespace: image references, format and type names.
fn check_word(field: &str, value: &str, max: usize) -> Result {
    check_text(field, value, max)?;
    if let Some(at) = value.find(char::is_whitespace) {
        return Err(FieldError::new(
            field,
            format!("must not contain whitespace (at byte {at})"),
        ));
    }
    Ok(())
}

/// An argument or a value handed to a process.
fn check_arg(field: &str, value: &str) -> Result {
    check_len(field, value, MAX_VALUE)?;
    check_no_nul(field, value)
}

/// `prefix.key` for a map entry. A key that is not short printable ASCII is escaped and cut,
/// so a hostile key can make neither the path nor the trailer carrying it unreadable.
fn key_path(prefix: &str, key: &str) -> String {
    let plain = key.len() <= MAX_KEY_IN_PATH && key.bytes().all(|b| (0x21..0x7f).contains(&b));
    if plain {
        return format!("{prefix}.{key}");
    }
    let mut shown = String::new();
    let mut chars = key.chars();
    for c in chars.by_ref() {
        shown.extend(c.escape_default());
        if shown.len() >= MAX_KEY_IN_PATH {
            break;
        }
    }
    if chars.next().is_some() {
        shown.push_str("...");
    }
    format!("{prefix}.{shown}")
}

fn check_count(field: &str, n: usize, max: usize, what: &str) -> Result {
    if n > max {
        return Err(FieldError::new(
            field,
            format!("more than {max} {what} ({n})"),
        ));
    }
    Ok(())
}

fn check_at_most(field: &str, n: u32, max: u32) -> Result {
    if n > max {
        return Err(FieldError::new(field, format!("at most {max} ({n})")));
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

fn check_quantity(field: &str, q: &str, example: &str) -> Result {
    check_len(field, q, MAX_QUANTITY)?;
    if !is_quantity(q) {
        return Err(FieldError::new(
            field,
            format!("{q:?} is not a quantity (e.g. {example})"),
        ));
    }
    Ok(())
}

fn validate_resources(prefix: &str, r: &Resources) -> Result {
    if let Some(cpu) = &r.cpu {
        check_quantity(&format!("{prefix}.cpu"), cpu, "\"2\" or \"500m\"")?;
    }
    if let Some(mem) = &r.memory {
        check_quantity(&format!("{prefix}.memory"), mem, "\"4Gi\"")?;
    }
    check_at_most(&format!("{prefix}.gpus"), r.gpus, MAX_COUNT)?;
    if let Some(t) = &r.gpu_type {
        check_word(&format!("{prefix}.gpu_type"), t, MAX_WORD)?;
    }
    if let Some(t) = &r.instance_type {
        check_word(&format!("{prefix}.instance_type"), t, MAX_WORD)?;
    }
    check_at_most(&format!("{prefix}.nodes"), r.nodes, MAX_COUNT)?;
    Ok(())
}

// --- Specs.

pub fn validate_training_spec(spec: &TrainingSpec) -> Result {
    check_text("spec.name", &spec.name, MAX_JOB_NAME)?;
    if let Some(image) = &spec.image {
        check_word("spec.image", image, MAX_IMAGE)?;
    }
    if spec.command.is_empty() || spec.command[0].trim().is_empty() {
        return Err(FieldError::new(
            "spec.command",
            "must not be empty: give the program to run and its arguments",
        ));
    }
    let field = if spec.command.len() > MAX_ARGS {
        "spec.command"
    } else {
        "spec.args"
    };
    check_count(
        field,
        spec.command.len() + spec.args.len(),
        MAX_ARGS,
        "arguments with the program",
    )?;
    for (i, a) in spec.command.iter().enumerate() {
        check_arg(&format!("spec.command[{i}]"), a)?;
    }
    for (i, a) in spec.args.iter().enumerate() {
        check_arg(&format!("spec.args[{i}]"), a)?;
    }
    check_count("spec.env", spec.env.len(), MAX_ENTRIES, "variables")?;
    for (k, v) in &spec.env {
        let field = key_path("spec.env", k);
        check_len(&field, k, MAX_KEY)?;
        if !is_env_name(k) {
            return Err(FieldError::new(
                field,
                "not a valid environment variable name (letters, digits, _; not starting with a digit)",
            ));
        }
        check_arg(&field, v)?;
    }
    check_count(
        "spec.hyperparameters",
        spec.hyperparameters.len(),
        MAX_ENTRIES,
        "hyperparameters",
    )?;
    for (k, v) in &spec.hyperparameters {
        if k.is_empty() {
            return Err(FieldError::new(
                "spec.hyperparameters",
                "keys must not be empty",
            ));
        }
        let field = key_path("spec.hyperparameters", k);
        check_len(&field, k, MAX_KEY)?;
        check_no_control(&field, k)?;
        check_arg(&field, v)?;
    }
    check_count(
        "spec.inputs",
        spec.inputs.len(),
        MAX_INPUTS,
        "input channels",
    )?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, input) in spec.inputs.iter().enumerate() {
        let name_field = format!("spec.inputs[{i}].name");
        if input.name.is_empty() {
            return Err(FieldError::new(name_field, "must not be empty"));
        }
        check_len(&name_field, &input.name, MAX_CHANNEL_NAME)?;
        if !input
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(FieldError::new(
                name_field,
                "only letters, digits, '_' and '-'",
            ));
        }
        if !seen.insert(&input.name) {
            return Err(FieldError::new(
                name_field,
                format!("channel {:?} given twice", input.name),
            ));
        }
        let uri_field = format!("spec.inputs[{i}].uri");
        if input.uri.is_empty() {
            return Err(FieldError::new(uri_field, "must not be empty"));
        }
        check_text(&uri_field, &input.uri, MAX_URI)?;
    }
    if let Some(uri) = &spec.output_uri {
        check_text("spec.output_uri", uri, MAX_URI)?;
    }
    if let Some(uri) = &spec.code_uri {
        check_text("spec.code_uri", uri, MAX_URI)?;
    }
    validate_resources("spec.resources", &spec.resources)?;
    match spec.max_runtime_seconds {
        Some(0) => {
            return Err(FieldError::new(
                "spec.max_runtime_seconds",
                "must be positive",
            ));
        }
        Some(s) if s > MAX_RUNTIME_SECONDS => {
            return Err(FieldError::new(
                "spec.max_runtime_seconds",
                format!("at most {MAX_RUNTIME_SECONDS} (366 days), not {s}"),
            ));
        }
        _ => {}
    }
    if let Some(f) = &spec.framework {
        check_word("spec.framework", f, MAX_WORD)?;
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

fn check_endpoint_name(name: &str) -> Result {
    if !is_dns_label(name) {
        return Err(FieldError::new(
            "spec.name",
            "must be 1-63 lowercase letters, digits or '-', not starting or ending with '-'",
        ));
    }
    Ok(())
}

/// The fields an endpoint spec may carry, each on its own; empty means unset.
fn check_endpoint_fields(spec: &EndpointSpec) -> Result {
    check_text("spec.model_uri", &spec.model_uri, MAX_URI)?;
    check_word("spec.model_format", &spec.model_format, MAX_WORD)?;
    if let Some(r) = &spec.runtime {
        check_word("spec.runtime", r, MAX_WORD)?;
    }
    if let Some(i) = &spec.image {
        check_word("spec.image", i, MAX_IMAGE)?;
    }
    validate_resources("spec.resources", &spec.resources)?;
    check_at_most("spec.min_replicas", spec.min_replicas, MAX_COUNT)?;
    check_at_most("spec.max_replicas", spec.max_replicas, MAX_COUNT)?;
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

pub fn validate_endpoint_spec(spec: &EndpointSpec) -> Result {
    check_endpoint_name(&spec.name)?;
    if spec.model_uri.trim().is_empty() {
        return Err(FieldError::new("spec.model_uri", "must not be empty"));
    }
    if spec.model_format.trim().is_empty() {
        return Err(FieldError::new(
            "spec.model_format",
            "must not be empty (e.g. \"sklearn\")",
        ));
    }
    check_endpoint_fields(spec)?;
    if spec.max_replicas < spec.min_replicas {
        return Err(FieldError::new(
            "spec.max_replicas",
            format!(
                "{} is below min_replicas {}",
                spec.max_replicas, spec.min_replicas
            ),
        ));
    }
    Ok(())
}

/// An Update's partial spec: every field it sets must be valid on its own, before the endpoint
/// is looked up. The spec it merges into is checked whole afterwards.
pub fn validate_endpoint_changes(spec: &EndpointSpec) -> Result {
    if !spec.name.is_empty() {
        check_endpoint_name(&spec.name)?;
    }
    check_endpoint_fields(spec)
}

// --- The rest of a request.

/// A job or endpoint id, or an endpoint name in its place. One that could never name a record
/// is refused; a plausible but unknown one is left to the lookup (NOT_FOUND).
pub fn validate_id(field: &str, id: &str) -> Result {
    if id.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    check_len(field, id, MAX_ID)?;
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(FieldError::new(
            field,
            "not an id or name: only letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(())
}

/// A target name as the config allows them (`Config::check`); an unknown one is NOT_FOUND.
pub fn validate_target_name(field: &str, name: &str) -> Result {
    if name.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    check_len(field, name, MAX_TARGET_NAME)?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(FieldError::new(
            field,
            "not a target name: only letters, digits, '-' and '_'",
        ));
    }
    Ok(())
}

/// A target name where empty means "the default" (or "any", in a filter).
pub fn validate_target(field: &str, name: &str) -> Result {
    if name.is_empty() {
        return Ok(());
    }
    validate_target_name(field, name)
}

/// Keys are stored for the life of a record and compared byte for byte: printable ASCII keeps
/// them unambiguous across clients. Empty means no key.
pub fn validate_idempotency_key(key: &str) -> Result {
    const FIELD: &str = "idempotency_key";
    check_len(FIELD, key, MAX_IDEMPOTENCY_KEY)?;
    if let Some(at) = key.bytes().position(|b| !(0x20..0x7f).contains(&b)) {
        return Err(FieldError::new(
            FIELD,
            format!("only printable ASCII (byte {at} is not)"),
        ));
    }
    Ok(())
}

/// The number of records a List returns; 0 means the default.
pub fn page_size(n: u32) -> Result<usize> {
    match n {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n > MAX_PAGE_SIZE => Err(FieldError::new(
            "page_size",
            format!("at most {MAX_PAGE_SIZE} ({n}); page through the rest with next_page_token"),
        )),
        n => Ok(n as usize),
    }
}

/// Whether `s` has the shape of an id the gateway hands out: `<prefix>-` and 32 lowercase hex
/// digits (`store::new_id`).
pub fn is_record_id(prefix: &str, s: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| {
            hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// A page token is the last id of the previous page, as the gateway handed it out; anything
/// else would start a scan at an arbitrary key. (An empty token in a request means the first
/// page and never gets here.)
pub fn validate_page_token(prefix: &str, token: &str) -> Result {
    if is_record_id(prefix, token) {
        return Ok(());
    }
    Err(FieldError::new(
        "page_token",
        "not a page token this gateway handed out: pass next_page_token from the previous page, or nothing",
    ))
}

/// A log cursor's size and characters; its form is the log stream's to check.
pub fn validate_cursor(cursor: &str) -> Result {
    check_text("cursor", cursor, MAX_CURSOR)
}

/// A prediction's own fields (its tensors are checked by the data plane).
pub fn validate_predict(
    request_id: &str,
    inputs: usize,
    outputs: &[String],
    parameters: &BTreeMap<String, String>,
) -> Result {
    if inputs == 0 {
        return Err(FieldError::new(
            "inputs",
            "at least one input tensor is needed",
        ));
    }
    check_count("inputs", inputs, MAX_TENSORS, "tensors")?;
    check_count("outputs", outputs.len(), MAX_TENSORS, "outputs")?;
    for (i, o) in outputs.iter().enumerate() {
        validate_tensor_name(&format!("outputs[{i}]"), o)?;
    }
    check_text("request_id", request_id, MAX_REQUEST_ID)?;
    validate_parameters("parameters", parameters)
}

pub fn validate_tensor_name(field: &str, name: &str) -> Result {
    if name.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    check_text(field, name, MAX_TENSOR_NAME)
}

/// Inference parameters: bounded names without control characters, values without NUL.
pub fn validate_parameters(prefix: &str, parameters: &BTreeMap<String, String>) -> Result {
    check_count(prefix, parameters.len(), MAX_PARAMETERS, "parameters")?;
    for (k, v) in parameters {
        if k.is_empty() {
            return Err(FieldError::new(prefix, "names must not be empty"));
        }
        let field = key_path(prefix, k);
        check_len(&field, k, MAX_KEY)?;
        check_no_control(&field, k)?;
        check_arg(&field, v)?;
    }
    Ok(())
}

/// The number of elements a tensor shape holds, in checked arithmetic: a product that wraps
/// around could otherwise match the contents given and pass.
pub fn tensor_elements(field: &str, shape: &[i64]) -> Result<u64> {
    if shape.len() > MAX_RANK {
        return Err(FieldError::new(
            field,
            format!("more than {MAX_RANK} dimensions ({})", shape.len()),
        ));
    }
    let mut elements: u64 = 1;
    for (i, d) in shape.iter().enumerate() {
        let d = u64::try_from(*d).map_err(|_| {
            FieldError::new(
                field,
                format!("dimension {i} is {d}: dimensions must not be negative"),
            )
        })?;
        if d > MAX_TENSOR_ELEMENTS {
            return Err(FieldError::new(
                field,
                format!("dimension {i} is {d}, above the limit of {MAX_TENSOR_ELEMENTS} elements"),
            ));
        }
        elements = elements
            .checked_mul(d)
            .filter(|n| *n <= MAX_TENSOR_ELEMENTS)
            .ok_or_else(|| {
                FieldError::new(
                    field,
                    format!("holds more than the limit of {MAX_TENSOR_ELEMENTS} elements"),
                )
            })?;
    }
    Ok(elements)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{InputChannel, Resources};

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

    fn endpoint() -> EndpointSpec {
        EndpointSpec {
            name: "iris".into(),
            model_uri: "file:///m".into(),
            model_format: "sklearn".into(),
            min_replicas: 1,
            max_replicas: 1,
            ..Default::default()
        }
    }

    /// Ways to break a spec, each with the field it must be refused for.
    type Breaks<T> = Vec<(Box<dyn Fn(&mut T)>, &'static str)>;

    fn field(r: Result<impl std::fmt::Debug>) -> String {
        r.unwrap_err().field
    }

    #[test]
    fn empty_command_names_the_field() {
        let mut s = training();
        s.command.clear();
        assert_eq!(field(validate_training_spec(&s)), "spec.command");
    }

    #[test]
    fn bad_env_name_is_rejected() {
        let mut s = training();
        s.env.insert("1BAD".into(), "x".into());
        assert_eq!(field(validate_training_spec(&s)), "spec.env.1BAD");
    }

    #[test]
    fn no_process_can_receive_a_nul_byte() {
        let mut s = training();
        s.command.push("a\0b".into());
        let e = validate_training_spec(&s).unwrap_err();
        assert_eq!(e.field, "spec.command[1]");
        assert!(e.reason.contains("NUL"), "{}", e.reason);

        let mut s = training();
        s.args = vec!["ok".into(), "\0".into()];
        assert_eq!(field(validate_training_spec(&s)), "spec.args[1]");

        let mut s = training();
        s.env.insert("A".into(), "x\0".into());
        assert_eq!(field(validate_training_spec(&s)), "spec.env.A");

        let mut s = training();
        s.hyperparameters.insert("lr".into(), "0.1\0".into());
        assert_eq!(field(validate_training_spec(&s)), "spec.hyperparameters.lr");

        // Newlines and tabs are ordinary in arguments (a `python -c` script).
        let mut s = training();
        s.args = vec!["-c".into(), "import os\n\tprint(1)".into()];
        validate_training_spec(&s).unwrap();
    }

    #[test]
    fn names_and_words_have_no_control_characters() {
        let mut s = training();
        s.name = "nightly\nrun".into();
        let e = validate_training_spec(&s).unwrap_err();
        assert_eq!(e.field, "spec.name");
        assert!(e.reason.contains("U+000A"), "{}", e.reason);

        let mut s = training();
        s.image = Some("python:3.12 slim".into());
        assert_eq!(field(validate_training_spec(&s)), "spec.image");

        let mut s = training();
        s.resources.gpu_type = Some("a100\u{7f}".into());
        assert_eq!(field(validate_training_spec(&s)), "spec.resources.gpu_type");

        let mut s = training();
        s.hyperparameters.insert("l\u{1b}r".into(), "1".into());
        assert_eq!(
            field(validate_training_spec(&s)),
            "spec.hyperparameters.l\\u{1b}r"
        );
    }

    #[test]
    fn every_string_is_bounded() {
        fn long(n: usize) -> String {
            "x".repeat(n)
        }
        let cases: Breaks<TrainingSpec> = vec![
            (Box::new(|s| s.name = long(MAX_JOB_NAME + 1)), "spec.name"),
            (
                Box::new(|s| s.image = Some(long(MAX_IMAGE + 1))),
                "spec.image",
            ),
            (
                Box::new(|s| s.command.push(long(MAX_VALUE + 1))),
                "spec.command[1]",
            ),
            (
                Box::new(|s| s.args = vec![String::new(); MAX_ARGS]),
                "spec.args",
            ),
            (
                Box::new(|s| s.output_uri = Some(long(MAX_URI + 1))),
                "spec.output_uri",
            ),
            (
                Box::new(|s| s.code_uri = Some(long(MAX_URI + 1))),
                "spec.code_uri",
            ),
            (
                Box::new(|s| s.framework = Some(long(MAX_WORD + 1))),
                "spec.framework",
            ),
            (
                Box::new(|s| s.resources.cpu = Some("1".repeat(MAX_QUANTITY + 1))),
                "spec.resources.cpu",
            ),
            (
                Box::new(|s| s.resources.instance_type = Some(long(MAX_WORD + 1))),
                "spec.resources.instance_type",
            ),
            (
                Box::new(|s| {
                    s.inputs = (0..=MAX_INPUTS)
                        .map(|i| InputChannel {
                            name: format!("c{i}"),
                            uri: "/d".into(),
                        })
                        .collect()
                }),
                "spec.inputs",
            ),
            (
                Box::new(|s| {
                    s.inputs.push(InputChannel {
                        name: "train".into(),
                        uri: long(MAX_URI + 1),
                    })
                }),
                "spec.inputs[0].uri",
            ),
            (
                Box::new(|s| {
                    s.env = (0..=MAX_ENTRIES)
                        .map(|i| (format!("V{i}"), String::new()))
                        .collect()
                }),
                "spec.env",
            ),
        ];
        for (break_it, want) in cases {
            let mut s = training();
            break_it(&mut s);
            assert_eq!(field(validate_training_spec(&s)), want);
        }
    }

    #[test]
    fn a_huge_key_is_cut_in_the_field_path() {
        let mut s = training();
        s.env.insert("K".repeat(1 << 20), String::new());
        let e = validate_training_spec(&s).unwrap_err();
        assert!(e.field.starts_with("spec.env.KKKK"), "{}", e.field);
        assert!(e.field.ends_with("..."), "{}", e.field);
        assert!(e.field.len() < 100, "{}", e.field.len());
        assert!(e.reason.contains("longer than 256 bytes"), "{}", e.reason);
    }

    #[test]
    fn max_runtime_is_bounded_so_deadlines_cannot_overflow() {
        let mut s = training();
        s.max_runtime_seconds = Some(MAX_RUNTIME_SECONDS);
        validate_training_spec(&s).unwrap();
        for bad in [0, MAX_RUNTIME_SECONDS + 1, 1 << 63, u64::MAX] {
            s.max_runtime_seconds = Some(bad);
            assert_eq!(
                field(validate_training_spec(&s)),
                "spec.max_runtime_seconds",
                "{bad}"
            );
        }
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
        assert_eq!(field(validate_training_spec(&s)), "spec.resources.memory");
    }

    #[test]
    fn duplicate_channels_are_rejected() {
        let mut s = training();
        for _ in 0..2 {
            s.inputs.push(InputChannel {
                name: "train".into(),
                uri: "file:///d".into(),
            });
        }
        assert_eq!(field(validate_training_spec(&s)), "spec.inputs[1].name");
    }

    #[test]
    fn endpoint_names_are_dns_labels() {
        let mut e = endpoint();
        e.name = "Iris".into();
        assert_eq!(field(validate_endpoint_spec(&e)), "spec.name");
        e.name = "iris".into();
        assert!(validate_endpoint_spec(&e).is_ok());
        e.canary_percent = Some(101);
        assert_eq!(field(validate_endpoint_spec(&e)), "spec.canary_percent");
    }

    #[test]
    fn endpoint_fields_are_bounded() {
        let cases: Breaks<EndpointSpec> = vec![
            (
                Box::new(|e| e.model_uri = "x".repeat(MAX_URI + 1)),
                "spec.model_uri",
            ),
            (
                Box::new(|e| e.model_uri = "file:///m\r\n".into()),
                "spec.model_uri",
            ),
            (
                Box::new(|e| e.model_format = "sk learn".into()),
                "spec.model_format",
            ),
            (
                Box::new(|e| e.runtime = Some("x".repeat(MAX_WORD + 1))),
                "spec.runtime",
            ),
            (Box::new(|e| e.image = Some("img\0".into())), "spec.image"),
            (
                Box::new(|e| e.min_replicas = MAX_COUNT + 1),
                "spec.min_replicas",
            ),
            (
                Box::new(|e| e.max_replicas = MAX_COUNT + 1),
                "spec.max_replicas",
            ),
        ];
        for (break_it, want) in cases {
            let mut full = endpoint();
            break_it(&mut full);
            if want == "spec.min_replicas" {
                full.max_replicas = full.min_replicas;
            }
            assert_eq!(field(validate_endpoint_spec(&full)), want);
            // An Update's partial spec is held to the same bounds field by field.
            let mut partial = EndpointSpec::default();
            break_it(&mut partial);
            assert_eq!(field(validate_endpoint_changes(&partial)), want);
        }
        // Unset fields of a partial spec are fine.
        validate_endpoint_changes(&EndpointSpec::default()).unwrap();
    }

    #[test]
    fn ids_that_could_never_name_a_record_are_refused() {
        for ok in [
            "j-missing",
            "iris",
            "e-0193ab",
            "j-0193abcdef0123456789abcdef012345",
        ] {
            validate_id("id", ok).unwrap();
        }
        for bad in ["", "j missing", "j-\0", "j-\u{e9}", &"j".repeat(MAX_ID + 1)] {
            assert_eq!(field(validate_id("id", bad)), "id", "{bad:?}");
        }
        validate_target("target", "").unwrap();
        validate_target("target", "gpu-a_1").unwrap();
        assert_eq!(field(validate_target_name("name", "")), "name");
        assert_eq!(field(validate_target("target", "a/b")), "target");
        assert_eq!(
            field(validate_target("target", &"t".repeat(MAX_TARGET_NAME + 1))),
            "target"
        );
    }

    #[test]
    fn idempotency_keys_are_bounded_printable_ascii() {
        validate_idempotency_key("").unwrap();
        validate_idempotency_key("nightly 2026-11-22/#1").unwrap();
        for bad in [
            "k".repeat(MAX_IDEMPOTENCY_KEY + 1),
            "a\nb".into(),
            "\0".into(),
            "cl\u{e9}".into(),
        ] {
            assert_eq!(field(validate_idempotency_key(&bad)), "idempotency_key");
        }
    }

    #[test]
    fn page_sizes_and_tokens() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(MAX_PAGE_SIZE).unwrap(), MAX_PAGE_SIZE as usize);
        assert_eq!(field(page_size(MAX_PAGE_SIZE + 1)), "page_size");

        let id = crate::store::new_id("j");
        assert!(is_record_id("j", &id));
        validate_page_token("j", &id).unwrap();
        for bad in [
            String::new(),
            "garbage".to_string(),
            id.replace("j-", "e-"),
            id.to_uppercase(),
            id[..id.len() - 1].to_string(),
            format!("{id}0"),
            "j-".to_string(),
            format!("j-{}", "g".repeat(32)),
        ] {
            assert_eq!(field(validate_page_token("j", &bad)), "page_token", "{bad}");
        }
    }

    #[test]
    fn cursors_are_bounded() {
        validate_cursor("3.120").unwrap();
        assert_eq!(
            field(validate_cursor(&"1".repeat(MAX_CURSOR + 1))),
            "cursor"
        );
        assert_eq!(field(validate_cursor("0.\u{0}")), "cursor");
    }

    #[test]
    fn predict_fields() {
        let none = BTreeMap::new();
        validate_predict("r-1", 1, &["predict".into()], &none).unwrap();
        assert_eq!(field(validate_predict("", 0, &[], &none)), "inputs");
        assert_eq!(
            field(validate_predict("", MAX_TENSORS + 1, &[], &none)),
            "inputs"
        );
        assert_eq!(
            field(validate_predict(
                "",
                1,
                &["ok".into(), String::new()],
                &none
            )),
            "outputs[1]"
        );
        assert_eq!(
            field(validate_predict(
                &"r".repeat(MAX_REQUEST_ID + 1),
                1,
                &[],
                &none
            )),
            "request_id"
        );
        let params = BTreeMap::from([("content_type".to_string(), "np\0".to_string())]);
        assert_eq!(
            field(validate_predict("", 1, &[], &params)),
            "parameters.content_type"
        );
        let params = BTreeMap::from([(String::new(), "x".to_string())]);
        assert_eq!(
            field(validate_parameters("inputs[0].parameters", &params)),
            "inputs[0].parameters"
        );
    }

    #[test]
    fn tensor_shapes_are_counted_without_overflow() {
        assert_eq!(tensor_elements("shape", &[2, 3]).unwrap(), 6);
        assert_eq!(tensor_elements("shape", &[]).unwrap(), 1);
        assert_eq!(tensor_elements("shape", &[0, 5]).unwrap(), 0);
        // 2^32 * 2^32 wraps to 0 in 64 bits, which would "match" an empty tensor.
        for bad in [
            vec![1 << 32, 1 << 32],
            vec![i64::MAX, 2],
            vec![0, 1 << 40],
            vec![1 << 13, 1 << 13, 2],
            vec![-1],
            vec![1; MAX_RANK + 1],
        ] {
            assert_eq!(field(tensor_elements("shape", &bad)), "shape", "{bad:?}");
        }
    }
}
