//! The names a training job's environment uses on every target, so one script reads the same
//! variables wherever it runs: `MLGW_HP_<NAME>` and `MLGW_INPUT_<NAME>` (SageMaker's `SM_*`
//! alike), and the hyperparameters as one JSON object of strings.

use crate::TrainingSpec;

/// POSIX shells (and SageMaker) only accept these as variable names; anything else is
/// unreachable from a script, so it is better refused up front.
pub fn is_valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `learning-rate` → `LEARNING_RATE`: the suffix of a generated variable name.
pub fn env_suffix(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The hyperparameters as a JSON object of strings (hyperparameters.json and SM_HPS).
pub fn hyperparameters_json(spec: &TrainingSpec) -> String {
    let map: serde_json::Map<String, serde_json::Value> = spec
        .hyperparameters
        .iter()
        .map(|kv| (kv.key.clone(), serde_json::Value::String(kv.value.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        assert!(is_valid_env_name("PATH"));
        assert!(is_valid_env_name("_x1"));
        assert!(!is_valid_env_name(""));
        assert!(!is_valid_env_name("1X"));
        assert!(!is_valid_env_name("A-B"));
        assert!(!is_valid_env_name("A=B"));
        assert!(!is_valid_env_name("É"));
        assert_eq!(env_suffix("learning-rate"), "LEARNING_RATE");
        assert_eq!(env_suffix("val.set"), "VAL_SET");
        assert_eq!(env_suffix("Été"), "_T_");
    }
}
