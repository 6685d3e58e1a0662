//! Reading YAML manifests: multi-document streams, `List` kinds expanded, each
//! document converted as the Kubernetes source converts objects
//! ([`mod@crate::model::k8s`]) and read strictly ([`mod@crate::model::strict`]).
//! Errors name the origin (file) and the document.

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::api::networking::v1 as netv1;

use crate::model::cluster_policy::ClusterNetworkPolicy;
use crate::model::k8s::K8sObject;
use crate::model::network_policy::{InvalidPolicy, PolicyBody};
use crate::model::objects::Object;
use crate::model::strict;
use crate::object::{ErrorDetail, ErrorKind, FieldError, ModelError};

fn doc_error(origin: &str, doc: usize, kind: ErrorKind, message: String) -> ModelError {
    ModelError::new(ErrorDetail {
        kind,
        origin: (!origin.is_empty()).then(|| origin.to_string()),
        object: None,
        field: format!("document {doc}"),
        message,
    })
}

/// Parse a multi-document YAML manifest (documents separated by `---`; `kind: List`
/// and `*List` are expanded). One result per object; empty documents are skipped.
/// Errors name `origin` and the document number (1-based). Never panics.
pub fn parse_yaml_documents(text: &str, origin: &str) -> Vec<Result<Object, ModelError>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let value = match serde_yaml::Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                out.push(Err(doc_error(
                    origin,
                    doc,
                    ErrorKind::Parse,
                    format!("invalid YAML: {e}"),
                )));
                // The YAML stream cannot be resynchronised after a syntax error.
                break;
            }
        };
        parse_value(value, origin, doc, &mut out, 0);
    }
    out
}

fn parse_value(
    value: serde_yaml::Value,
    origin: &str,
    doc: usize,
    out: &mut Vec<Result<Object, ModelError>>,
    depth: usize,
) {
    use serde_yaml::Value;
    if value.is_null() {
        return;
    }
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_string);
    let Some(kind) = kind else {
        out.push(Err(doc_error(
            origin,
            doc,
            ErrorKind::Parse,
            "missing kind".to_string(),
        )));
        return;
    };
    let converted = match kind.as_str() {
        "Namespace" => conv_named::<corev1::Namespace>(value),
        "Pod" => conv_named::<corev1::Pod>(value),
        "Service" => conv_named::<corev1::Service>(value),
        "EndpointSlice" => conv_named::<discoveryv1::EndpointSlice>(value),
        "NetworkPolicy" => conv_named::<netv1::NetworkPolicy>(value),
        "ClusterNetworkPolicy" => conv_named::<ClusterNetworkPolicy>(value),
        "Node" => conv_named::<corev1::Node>(value),
        k if k == "List" || k.ends_with("List") => {
            if depth > 4 {
                out.push(Err(doc_error(
                    origin,
                    doc,
                    ErrorKind::Parse,
                    "lists nested too deeply".to_string(),
                )));
                return;
            }
            match value.get("items") {
                Some(Value::Sequence(items)) => {
                    for item in items.clone() {
                        parse_value(item, origin, doc, out, depth + 1);
                    }
                }
                None | Some(Value::Null) => {}
                Some(_) => out.push(Err(doc_error(
                    origin,
                    doc,
                    ErrorKind::Parse,
                    "items: expected a sequence".to_string(),
                ))),
            }
            return;
        }
        other => {
            out.push(Err(doc_error(
                origin,
                doc,
                ErrorKind::UnsupportedKind,
                format!("unsupported kind {other:?}"),
            )));
            return;
        }
    };
    out.push(match converted {
        Ok(mut o) => {
            o.set_origin(origin);
            Ok(o)
        }
        Err(ConvError::Parse(m)) => Err(doc_error(origin, doc, ErrorKind::Parse, m)),
        Err(ConvError::Model(e)) => Err(e.with_origin(origin)),
    });
}

enum ConvError {
    Parse(String),
    Model(ModelError),
}

fn conv_named<T>(value: serde_yaml::Value) -> Result<Object, ConvError>
where
    T: K8sObject + serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T =
        serde_yaml::from_value(value.clone()).map_err(|e| ConvError::Parse(e.to_string()))?;
    let obj = typed.to_object().map_err(ConvError::Model)?;
    // Read strictly (kubectl's --validate=strict): an unknown field makes the
    // object invalid. An invalid NetworkPolicy is kept, fail-closed, like any
    // other invalid policy; any other kind is refused.
    let Some(field) = strict::unknown_field(&value, &typed) else {
        return Ok(obj);
    };
    let r = K8sObject::object_ref(&typed);
    let error = ModelError::invalid(&r, FieldError::new(field, "unknown field"));
    match obj {
        Object::NetworkPolicy(mut np) => {
            let (pod_selector, types) = match np.body {
                PolicyBody::Valid(p) => (Some(p.pod_selector), p.types),
                PolicyBody::Invalid(inv) => (inv.pod_selector, inv.types),
            };
            np.body = PolicyBody::Invalid(InvalidPolicy {
                pod_selector,
                types,
                error,
            });
            Ok(Object::NetworkPolicy(np))
        }
        _ => Err(ConvError::Model(error)),
    }
}
