//! [`Object`]: the validated projection of one object of any kind the engine
//! reads, as sources hand it to the index.

use crate::model::cluster_policy::{ClusterNetworkPolicySpec, NodeSpec};
use crate::model::network_policy::{NetworkPolicySpec, PolicyBody};
use crate::model::types::{EndpointSliceSpec, NamespaceSpec, PodSpec, ServiceSpec};
use crate::object::{Kind, ModelError, ObjectRef};

/// An object the engine reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Namespace(NamespaceSpec),
    Pod(PodSpec),
    Service(ServiceSpec),
    EndpointSlice(EndpointSliceSpec),
    NetworkPolicy(NetworkPolicySpec),
    ClusterNetworkPolicy(ClusterNetworkPolicySpec),
    Node(NodeSpec),
}

impl Object {
    pub fn object_ref(&self) -> ObjectRef {
        match self {
            Object::Namespace(n) => ObjectRef::new(Kind::Namespace, "", &n.name),
            Object::Pod(p) => ObjectRef::new(Kind::Pod, &p.namespace, &p.name),
            Object::Service(s) => ObjectRef::new(Kind::Service, &s.namespace, &s.name),
            Object::EndpointSlice(s) => ObjectRef::new(Kind::EndpointSlice, &s.namespace, &s.name),
            Object::NetworkPolicy(p) => p.object_ref(),
            Object::ClusterNetworkPolicy(p) => p.object_ref(),
            Object::Node(n) => ObjectRef::new(Kind::Node, "", &n.name),
        }
    }

    /// The validation error carried by an invalid NetworkPolicy or
    /// ClusterNetworkPolicy.
    pub fn validation_error(&self) -> Option<&ModelError> {
        match self {
            Object::NetworkPolicy(p) => p.error(),
            Object::ClusterNetworkPolicy(p) => p.error(),
            _ => None,
        }
    }

    /// Name the file the object came from in the error it carries (an invalid
    /// policy's, or a ClusterNetworkPolicy's report of unsupported rules).
    pub(crate) fn set_origin(&mut self, origin: &str) {
        match self {
            Object::NetworkPolicy(NetworkPolicySpec {
                body: PolicyBody::Invalid(inv),
                ..
            }) => inv.error = inv.error.clone().with_origin(origin),
            Object::ClusterNetworkPolicy(p) => p.set_origin(origin),
            _ => {}
        }
    }
}
