//! Object identity and errors, shared by every layer: the kinds the engine reads,
//! [`ObjectRef`] (kind, namespace, name), [`PodKey`] (a pod's namespace and name),
//! and the errors of reading an object ([`FieldError`] inside one object,
//! [`ModelError`] naming the object, its origin and the field).
//!
//! It depends on no other module of the crate, so the model, selectors and
//! everything past them can share these types without importing each other.

use std::fmt;

/// Kind of an object the engine reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
    /// Cluster-scoped (`policy.networking.k8s.io/v1alpha2`).
    ClusterNetworkPolicy,
    /// Cluster-scoped; read for ClusterNetworkPolicy `nodes` peers.
    Node,
}

impl Kind {
    /// Lower-case name used in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::Pod => "pod",
            Kind::Service => "service",
            Kind::EndpointSlice => "endpointslice",
            Kind::NetworkPolicy => "networkpolicy",
            Kind::ClusterNetworkPolicy => "clusternetworkpolicy",
            Kind::Node => "node",
        }
    }
}

/// Identity of an object: kind, namespace (empty for cluster-scoped objects:
/// Namespace, Node, ClusterNetworkPolicy) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

/// A pod's identity: its namespace and name. Shown and serialised as the text
/// `namespace/name`, and ordered as that text, so sorted keys list in the order
/// they print.
///
/// Stored as that text with the position of the `/` that ends the namespace: one
/// allocation per key, and the order and equality of the text (the position tells
/// apart keys whose text is the same, possible only with a `/` inside a
/// namespace).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    text: String,
    slash: usize,
}

impl PodKey {
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        let (namespace, name) = (namespace.as_ref(), name.as_ref());
        Self {
            text: format!("{namespace}/{name}"),
            slash: namespace.len(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.text[..self.slash]
    }

    pub fn name(&self) -> &str {
        &self.text[self.slash + 1..]
    }

    /// `namespace/name`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the text starts with `namespace/`. In key order these keys form one
    /// run from `PodKey::new(namespace, "")`: the namespace's own keys, mixed only
    /// with keys whose namespace itself starts with `namespace/`.
    pub(crate) fn text_starts_with_namespace(&self, namespace: &str) -> bool {
        self.text.len() > namespace.len()
            && self.text.starts_with(namespace)
            && self.text.as_bytes()[namespace.len()] == b'/'
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A key equals its text `namespace/name`.
impl PartialEq<str> for PodKey {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for PodKey {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl serde::Serialize for PodKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// What went wrong, coarsely, so callers can filter (e.g. skip unsupported kinds in a
/// manifest directory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The text is not YAML, or a document is not a well-formed object of its kind.
    Parse,
    /// A kind the engine does not read (Deployment, ...).
    UnsupportedKind,
    /// The object was read but fails validation.
    Invalid,
    /// The object is valid but uses something the engine does not support (a
    /// ClusterNetworkPolicy `domainNames` peer); the report says how it is treated.
    Unsupported,
}

/// A model error. Display: `[origin: ][kind ns/name: ][field: ]message`, e.g.
/// `networkpolicy x/deny-a: spec.ingress[0].from[1].ipBlock.except[0]: 10.1.0.0/24 is not inside cidr 10.0.0.0/16`.
/// The details are boxed (and reachable through `Deref`) to keep `Result`s small.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ModelError(Box<ErrorDetail>);

/// The parts of a [`ModelError`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorDetail {
    pub kind: ErrorKind,
    /// File (or other source) the object came from.
    pub origin: Option<String>,
    pub object: Option<ObjectRef>,
    /// Field path, `spec.ingress[0].ports[1].port`; for document-level errors
    /// `document N`.
    pub field: String,
    pub message: String,
}

impl std::ops::Deref for ModelError {
    type Target = ErrorDetail;
    fn deref(&self) -> &ErrorDetail {
        &self.0
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(o) = &self.origin {
            write!(f, "{o}: ")?;
        }
        if let Some(o) = &self.object {
            write!(f, "{o}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl ModelError {
    pub fn new(detail: ErrorDetail) -> Self {
        Self(Box::new(detail))
    }

    /// `e` as an [`ErrorKind::Invalid`] error of `object`.
    pub(crate) fn invalid(object: &ObjectRef, e: FieldError) -> Self {
        Self::new(ErrorDetail {
            kind: ErrorKind::Invalid,
            origin: None,
            object: Some(object.clone()),
            field: e.field,
            message: e.message,
        })
    }

    /// The same error, naming the file it came from.
    pub fn with_origin(mut self, origin: &str) -> Self {
        if !origin.is_empty() {
            self.0.origin = Some(origin.to_string());
        }
        self
    }
}

/// A validation error inside one object, before the object is named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PodKey;

    #[test]
    fn pod_keys_order_as_their_text() {
        let texts = ["prod-eu/a", "prod/b", "prod/a.b", "prod/a", "pro/z", "q/a"];
        let mut keys: Vec<PodKey> = texts
            .iter()
            .map(|t| {
                let (ns, name) = t.split_once('/').expect("ns/name");
                PodKey::new(ns, name)
            })
            .collect();
        keys.sort();
        let mut sorted = texts.to_vec();
        sorted.sort();
        let shown: Vec<String> = keys.iter().map(PodKey::to_string).collect();
        assert_eq!(shown, sorted);
        assert!(keys.iter().zip(&sorted).all(|(k, t)| k == t));
    }

    #[test]
    fn pod_keys_of_a_namespace_follow_its_first_key() {
        let k = PodKey::new("prod", "web");
        assert_eq!(
            (k.namespace(), k.name(), k.as_str()),
            ("prod", "web", "prod/web")
        );
        assert!(k.text_starts_with_namespace("prod"));
        assert!(!k.text_starts_with_namespace("pro"));
        assert!(!PodKey::new("prod-eu", "web").text_starts_with_namespace("prod"));
        assert!(PodKey::new("prod/x", "web").text_starts_with_namespace("prod"));
        assert!(PodKey::new("prod", "") < k);
        // Same text, different keys.
        let (a, b) = (PodKey::new("a/b", "c"), PodKey::new("a", "b/c"));
        assert_ne!(a, b);
        assert_eq!((a.namespace(), a.name()), ("a/b", "c"));
        assert_eq!((b.namespace(), b.name()), ("a", "b/c"));
    }
}
