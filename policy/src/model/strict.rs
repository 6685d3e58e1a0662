//! Strict reading of manifests: a field the typed object does not know is an
//! error, as `kubectl apply --validate=strict` makes it. Objects read from files
//! never met an API server, and a misspelt field (`exept`, `ingres`) read
//! leniently changes what a policy means without a word.
//!
//! The check compares the keys of the input with those of the typed object
//! serialised back: a key present (and not null) in the input but absent from
//! the round trip was not understood.

use serde_yaml::Value;

/// The path of the first field of `input` that `typed` (the object deserialised
/// from it) does not carry, as `spec.ingress[0].from[0].ipBlock.exept`.
pub fn unknown_field<T: serde::Serialize>(input: &Value, typed: &T) -> Option<String> {
    let back = serde_yaml::to_value(typed).ok()?;
    first_missing(input, &back, String::new())
}

fn first_missing(input: &Value, back: &Value, path: String) -> Option<String> {
    match (input, back) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let name = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .map(|s| s.trim().to_string())
                        .unwrap_or_default(),
                };
                let child = if path.is_empty() {
                    name
                } else {
                    format!("{path}.{name}")
                };
                match b.get(k) {
                    None => return Some(child),
                    Some(bv) => {
                        if let Some(p) = first_missing(v, bv, child) {
                            return Some(p);
                        }
                    }
                }
            }
            None
        }
        (Value::Sequence(a), Value::Sequence(b)) => a
            .iter()
            .zip(b.iter())
            .enumerate()
            .find_map(|(i, (x, y))| first_missing(x, y, format!("{path}[{i}]"))),
        (Value::Tagged(a), _) => first_missing(&a.value, back, path),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1 as netv1;

    fn check(yaml: &str) -> Option<String> {
        let v: Value = serde_yaml::from_str(yaml).expect("yaml");
        let typed: netv1::NetworkPolicy = serde_yaml::from_value(v.clone()).expect("typed");
        unknown_field(&v, &typed)
    }

    #[test]
    fn misspelt_fields_are_named_with_their_path() {
        assert_eq!(
            check("kind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  podSelector: {}\n  ingres: []\n")
                .as_deref(),
            Some("spec.ingres")
        );
        assert_eq!(
            check("kind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, exept: [10.1.0.0/16]}\n").as_deref(),
            Some("spec.ingress[0].from[0].ipBlock.exept")
        );
    }

    #[test]
    fn known_fields_nulls_and_empty_lists_pass() {
        assert_eq!(
            check("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x, labels: {}, annotations: {a: b}}\nspec:\n  podSelector: {matchLabels: {}}\n  policyTypes: []\n  egress: null\n  ingress:\n  - ports: [{port: 80, endPort: 90, protocol: TCP}, {port: http}]\n    from: []\n"),
            None
        );
    }
}
