//! Palisade's pure policy engine (NetworkPolicy v1 and ClusterNetworkPolicy
//! v1alpha2): model, selectors, index, compile (with the cluster policy tiers),
//! encode, diff, a reference evaluator and explanations. No I/O, no async, no
//! kernel access.
//!
//! ```text
//! Object (model) --apply--> ClusterIndex --compile--> Desired --encode--> MapSet --diff--> Vec<MapWrite>
//! ```
//!
//! [`Compiler`] does compile+encode+diff incrementally: it recompiles only the local
//! endpoints a change can affect and emits the writes for those. The pure functions
//! and the `Compiler` produce identical map state (checked by the property tests).
//!
//! Defaults the API server applies to a NetworkPolicy, applied here to every object
//! (objects read from files never met an API server; on stored ones they change
//! nothing):
//! - `policyTypes` omitted or empty: `[Ingress]`, plus `Egress` when `egress` has
//!   at least one rule (`egress: []` / `egress: null` do not isolate egress).
//! - `ports[].protocol` omitted: `TCP`.
//! - `podSelector` omitted: `{}` (every pod of the namespace); a peer's selectors
//!   omitted: not part of the peer.
//!
//! Choices where the API text leaves room (each is tested):
//! - Services: decided in the datapath after kube-proxy's DNAT, so egress rules are
//!   compiled about backend pods and only the frontend table is output
//!   ([`mod@compile`] module docs).
//! - Egress named ports resolve on each destination pod (per-pod host entries). For
//!   an ipBlock peer, or a rule without `to`, a named port matches only pod
//!   addresses inside the block (minus except) whose pod has that port; non-pod
//!   addresses have no container ports to resolve against.
//! - A named port matches a container port of the same name *and* protocol.
//! - Invalid NetworkPolicy: stored, isolates the pods it selects in its directions
//!   with nothing allowed by it. If its podSelector is itself invalid it selects
//!   every pod of its namespace; if policyTypes is unreadable it isolates both
//!   directions (fail closed).
//! - Pods in phase Succeeded/Failed count as having no address (their IP may
//!   already belong to a new pod).
//! - `EP_FAIL_CLOSED` (rules that do not fit): the endpoint gets no policy entries,
//!   so every direction it is isolated in denies everything; a direction it is not
//!   isolated in stays open (policy does not judge it).
//! - Node rule (ingress from the pod's own node) is not encoded; the datapath applies
//!   it with the node-address map. The reference evaluator implements it.
//! - Two pods claiming one address (a stale pod): the reference judges each; the
//!   datapath judges by interface. Tests keep addresses unique.
//! - ClusterNetworkPolicy: the choices are in [`mod@cluster_policy`] (ties, peers
//!   of no known type, `domainNames`, invalid objects) and [`mod@tiers`] (how the
//!   tiers become entries); a packet without ports is allowed only where every
//!   port of its protocol is; a pod's traffic to its own IP is judged like any
//!   other in the maps (directly it never reaches the datapath; through a Service
//!   it is subject to cluster policy, API).

pub mod cluster_policy;
pub mod cluster_policy_parse;
pub mod compile;
pub mod diff;
pub mod encode;
pub mod engine;
pub mod explain;
pub mod index;
pub mod model;
pub mod portset;
pub mod reference;
pub mod selector;
pub mod strict;
pub mod tiers;

pub use cluster_policy::{
    Action, ClusterNetworkPolicy, ClusterNetworkPolicySpec, ClusterPeer, ClusterPolicy,
    ClusterPolicyBody, ClusterRule, NodeSpec, ProtocolMatch, RuleEffect, Subject, Tier,
};
pub use compile::{
    compile, Desired, DesiredEndpoint, Grant, NodeInfo, PeerRules, PortSet, ServiceFrontend,
};
pub use diff::{diff, MapWrite};
pub use encode::{encode, lpm_entries, value_allows, MapSet};
pub use engine::Compiler;
pub use explain::{explain, explain_direction, Explanation, SideExplanation};
pub use index::{ApplyOutcome, Change, ClusterIndex};
pub use model::{
    object_from_k8s, parse_yaml_documents, Direction, ErrorKind, K8sObject, Kind, ModelError,
    NamespaceSpec, NetworkPolicySpec, Object, ObjectRef, PodKey, PodSpec, Protocol, ServiceSpec,
};
pub use reference::{DecidedBy, RuleRef, Verdict};
pub use selector::{LabelSelector, Labels};
