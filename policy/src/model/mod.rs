//! The model at the edge: small typed specs of the objects the engine reads
//! (Namespace, Pod, Service, EndpointSlice, NetworkPolicy, ClusterNetworkPolicy,
//! Node), their conversion from k8s-openapi objects and from YAML manifests, and
//! validation with errors that name the object and the field path.
//!
//! Everything past this module works on validated specs only. A NetworkPolicy that
//! fails validation is still converted (as [`PolicyBody::Invalid`]) so the index can
//! fail closed for the pods it selects instead of silently forgetting it.
//!
//! The submodules form layers, each importing only those below it: [`types`]
//! (core kinds), [`network_policy`] and [`cluster_policy`] (the policy kinds),
//! [`objects`] (the union of every kind), then the readers: [`value`] and
//! [`cluster_policy_parse`] (the ClusterNetworkPolicy spec), [`k8s`] and
//! [`k8s_network_policy`] (k8s-openapi objects), [`strict`] and [`yaml`]
//! (manifests). This module only names them.

pub mod cluster_policy;
pub mod cluster_policy_parse;
pub mod k8s;
pub mod k8s_network_policy;
pub mod network_policy;
pub mod objects;
pub mod strict;
pub mod types;
pub mod value;
pub mod yaml;

pub use cluster_policy::{
    Action, ClusterNetworkPolicy, ClusterNetworkPolicySpec, ClusterPeer, ClusterPolicy,
    ClusterPolicyBody, ClusterRule, NodeSpec, ProtocolMatch, RuleEffect, Subject, Tier,
};
pub use k8s::{object_from_k8s, K8sObject};
pub use network_policy::{
    parse_cidr, InvalidPolicy, IpBlock, NamespaceScope, NetworkPolicySpec, Peer, Policy,
    PolicyBody, PolicyTypes, PortRef, PortSpec, Rule,
};
pub use objects::Object;
pub use types::{
    Direction, EndpointSliceSpec, NamedPort, NamespaceSpec, PodSpec, Protocol, ServiceSpec,
    NAMESPACE_NAME_LABEL,
};
pub use yaml::parse_yaml_documents;
