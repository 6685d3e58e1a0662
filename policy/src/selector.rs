//! Label selectors: the typed form of `metav1.LabelSelector`, its validation, and
//! matching against a label map; validation of label keys and values.
//!
//! Semantics (API): `matchLabels` AND every `matchExpressions` requirement; an empty
//! selector `{}` selects everything; `NotIn` and `DoesNotExist` match when the key is
//! absent.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;

use crate::object::FieldError;

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// A validated label selector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    pub key: String,
    pub op: Operator,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// `{}`: selects everything.
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn is_everything(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` satisfy every term (API: matchLabels AND matchExpressions).
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Convert and validate; `field` is the path of the selector, used in errors.
    pub fn from_k8s(sel: &metav1::LabelSelector, field: &str) -> Result<Self, FieldError> {
        let mut out = LabelSelector::default();
        if let Some(ml) = &sel.match_labels {
            for (k, v) in ml {
                validate_label_key(k)
                    .map_err(|m| FieldError::new(format!("{field}.matchLabels"), m))?;
                validate_label_value(v)
                    .map_err(|m| FieldError::new(format!("{field}.matchLabels.{k}"), m))?;
                out.match_labels.insert(k.clone(), v.clone());
            }
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let path = format!("{field}.matchExpressions[{i}]");
            validate_label_key(&e.key).map_err(|m| FieldError::new(format!("{path}.key"), m))?;
            let values = e.values.as_deref().unwrap_or(&[]);
            let op_name = e.operator.as_str();
            let op = match op_name {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        return Err(FieldError::new(
                            format!("{path}.values"),
                            format!("must be non-empty when operator is {op_name}"),
                        ));
                    }
                    let mut set = BTreeSet::new();
                    for (j, v) in values.iter().enumerate() {
                        validate_label_value(v)
                            .map_err(|m| FieldError::new(format!("{path}.values[{j}]"), m))?;
                        set.insert(v.clone());
                    }
                    if op_name == "In" {
                        Operator::In(set)
                    } else {
                        Operator::NotIn(set)
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        return Err(FieldError::new(
                            format!("{path}.values"),
                            format!("must be empty when operator is {op_name}"),
                        ));
                    }
                    if op_name == "Exists" {
                        Operator::Exists
                    } else {
                        Operator::DoesNotExist
                    }
                }
                other => {
                    return Err(FieldError::new(
                        format!("{path}.operator"),
                        format!(
                        "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                    ),
                    ))
                }
            };
            out.match_expressions.push(Requirement {
                key: e.key.clone(),
                op,
            });
        }
        Ok(out)
    }
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match &self.op {
            Operator::In(set) => v.is_some_and(|v| set.contains(v)),
            // API: NotIn matches when the key is absent.
            Operator::NotIn(set) => v.is_none_or(|v| !set.contains(v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
        }
    }
}

fn is_name_part(s: &str) -> bool {
    // Qualified-name part: [A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?, at most 63.
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && !s.is_empty()
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// Label key: `[prefix/]name` (API: qualified name).
pub fn validate_label_key(k: &str) -> Result<(), String> {
    let ok = match k.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_name_part(name),
        None => is_name_part(k),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("invalid label key {k:?}"))
    }
}

/// Label value: empty or a qualified-name part (API: at most 63 characters).
pub fn validate_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || is_name_part(v) {
        Ok(())
    } else {
        Err(format!("invalid label value {v:?}"))
    }
}

/// Validate a label map (for objects read from files, where no apiserver checked
/// them). Returns the first bad key or value.
pub fn validate_labels(labels: &Labels) -> Result<(), String> {
    for (k, v) in labels {
        validate_label_key(k)?;
        validate_label_value(v)?;
    }
    Ok(())
}
