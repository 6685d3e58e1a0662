//! Reading an untyped YAML/JSON value field by field, every error naming the path
//! of the field (`spec.ingress[0].from[1]`): objects with a fixed set of fields
//! (`null` meaning omitted), required fields, strings, integers in a range, lists
//! of a bounded length, label selectors. The ClusterNetworkPolicy parser is built on
//! these.

use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

use crate::object::FieldError;
use crate::selector::LabelSelector;

/// The fields of an object that are set, by name.
pub(crate) type Fields<'a> = BTreeMap<&'a str, &'a Value>;

/// `path.key`, or `key` at the top.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// What a value is, for messages (`expected a string, got a list`).
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "an object",
        Value::Tagged(_) => "a tagged value",
    }
}

/// The value under any YAML tags.
pub(crate) fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => untag(&t.value),
        other => other,
    }
}

/// The fields of an object, each key one of `allowed`; `null` values count as
/// omitted (as in the API's JSON).
pub(crate) fn object<'a>(
    v: &'a Value,
    path: &str,
    allowed: &[&str],
) -> Result<Fields<'a>, FieldError> {
    let m: &Mapping = match untag(v) {
        Value::Mapping(m) => m,
        other => {
            return Err(FieldError::new(
                path,
                format!("expected an object, got {}", type_name(other)),
            ))
        }
    };
    let mut out = Fields::new();
    for (k, v) in m {
        let Some(k) = untag(k).as_str() else {
            return Err(FieldError::new(path, "field names must be strings"));
        };
        if !allowed.contains(&k) {
            return Err(FieldError::new(
                join(path, k),
                format!("unknown field (expected one of: {})", allowed.join(", ")),
            ));
        }
        if !untag(v).is_null() {
            out.insert(k, untag(v));
        }
    }
    Ok(out)
}

/// Field `key` of `f`, which must be set.
pub(crate) fn required<'a>(f: &Fields<'a>, key: &str, path: &str) -> Result<&'a Value, FieldError> {
    f.get(key)
        .copied()
        .ok_or_else(|| FieldError::new(join(path, key), "required"))
}

/// A string value.
pub(crate) fn string<'a>(v: &'a Value, path: &str) -> Result<&'a str, FieldError> {
    v.as_str()
        .ok_or_else(|| FieldError::new(path, format!("expected a string, got {}", type_name(v))))
}

/// An integer in `min..=max`.
pub(crate) fn integer(v: &Value, path: &str, min: i64, max: i64) -> Result<i64, FieldError> {
    let n = v.as_i64().ok_or_else(|| {
        FieldError::new(path, format!("expected an integer, got {}", type_name(v)))
    })?;
    if n < min || n > max {
        return Err(FieldError::new(
            path,
            format!("{n} is outside {min}..{max}"),
        ));
    }
    Ok(n)
}

/// A list of `min..=max` items.
pub(crate) fn list<'a>(
    v: &'a Value,
    path: &str,
    min: usize,
    max: usize,
) -> Result<&'a [Value], FieldError> {
    let s = v
        .as_sequence()
        .ok_or_else(|| FieldError::new(path, format!("expected a list, got {}", type_name(v))))?;
    if s.len() < min {
        return Err(FieldError::new(
            path,
            format!("must have at least {min} item(s)"),
        ));
    }
    if s.len() > max {
        return Err(FieldError::new(
            path,
            format!("must have at most {max} items (got {})", s.len()),
        ));
    }
    Ok(s)
}

/// A `metav1.LabelSelector` (`{}` selects everything).
pub(crate) fn selector(v: &Value, path: &str) -> Result<LabelSelector, FieldError> {
    let f = object(v, path, &["matchLabels", "matchExpressions"])?;
    if let Some(ml) = f.get("matchLabels") {
        let key_path = join(path, "matchLabels");
        let m = ml.as_mapping().ok_or_else(|| {
            FieldError::new(
                &key_path,
                format!("expected an object, got {}", type_name(ml)),
            )
        })?;
        for (k, val) in m {
            let k = string(untag(k), &key_path)?;
            string(untag(val), &join(&key_path, k))?;
        }
    }
    if let Some(me) = f.get("matchExpressions") {
        let me_path = join(path, "matchExpressions");
        let items = list(me, &me_path, 0, usize::MAX)?;
        for (i, e) in items.iter().enumerate() {
            let p = format!("{me_path}[{i}]");
            let ef = object(e, &p, &["key", "operator", "values"])?;
            string(required(&ef, "key", &p)?, &join(&p, "key"))?;
            string(required(&ef, "operator", &p)?, &join(&p, "operator"))?;
            if let Some(vals) = ef.get("values") {
                let vp = join(&p, "values");
                for (j, x) in list(vals, &vp, 0, usize::MAX)?.iter().enumerate() {
                    string(untag(x), &format!("{vp}[{j}]"))?;
                }
            }
        }
    }
    let k8s: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
        serde_yaml::from_value(v.clone()).map_err(|e| FieldError::new(path, e.to_string()))?;
    LabelSelector::from_k8s(&k8s, path)
}
