//! Palisade's pure policy engine (NetworkPolicy v1 and ClusterNetworkPolicy
//! v1alpha2): it turns the cluster's objects into the entries of the datapath's
//! maps for one node, and the changes of those objects into the few map writes
//! that keep the maps current. No I/O, no async, no kernel access.
//!
//! The agent's path:
//!
//! ```text
//! Object --apply--> ClusterIndex --journal--> Compiler::update --> Vec<MapWrite>
//!                                             (per affected endpoint:
//!                                              compile_endpoint -> encode_endpoint
//!                                              -> diff against its last entries)
//! ```
//!
//! - [`model`]: sources convert each object ([`object_from_k8s`], or
//!   [`parse_yaml_documents`] for manifests) into a validated [`Object`]; identities
//!   and errors are in [`mod@object`].
//! - [`index`]: [`ClusterIndex::apply`] and [`ClusterIndex::delete`] keep the
//!   current projection of every object, drop no-ops, and record each real change
//!   in the [`journal`].
//! - [`incremental`]: in the steady state the agent calls [`Compiler::update`],
//!   which reads the changes since its last pass, works out the local endpoints
//!   they can affect, recompiles each ([`mod@compile`]: NetworkPolicy grants,
//!   then the ClusterNetworkPolicy [`tiers`]), encodes it into LPM entries with
//!   exact longest-prefix semantics ([`mod@encode`]), and returns the writes from
//!   its previous entries to the new ones in gap-free order ([`mod@diff`]).
//! - A full pass (the first, every resync, the pass after a failed write) starts a
//!   fresh [`Compiler`] and diffs its [`Compiler::map_set`] against what the maps
//!   actually hold, with [`diff()`].
//! - [`compile()`] + [`encode()`] do a whole node at once; the tests, golden files
//!   and benchmarks use them, and the property tests hold them equal to the
//!   [`Compiler`]'s state after any sequence of changes.
//! - [`mod@reference`] is an independent evaluator straight from the API text (no
//!   port sets, no prefixes), the oracle of the differential tests; [`mod@explain`]
//!   builds on it to say what decided a connection, which the agent adds to deny
//!   events.
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
//! - ClusterNetworkPolicy: the choices are in [`mod@model::cluster_policy`] (ties,
//!   peers of no known type, `domainNames`, invalid objects) and [`mod@tiers`] (how
//!   the tiers become entries); a packet without ports is allowed only where every
//!   port of its protocol is; a pod's traffic to its own IP is judged like any
//!   other in the maps (directly it never reaches the datapath; through a Service
//!   it is subject to cluster policy, API).

pub mod compile;
pub mod desired;
pub mod diff;
pub mod encode;
pub mod explain;
pub mod incremental;
pub mod index;
pub mod journal;
pub mod model;
pub mod object;
mod peers;
pub mod portset;
pub mod reference;
pub mod selector;
mod tier_deps;
pub mod tiers;

pub use compile::{compile, NodeInfo};
pub use desired::{Desired, DesiredEndpoint, Grant, PeerRules, ServiceFrontend};
pub use diff::{diff, MapWrite};
pub use encode::{encode, lpm_entries, value_allows, MapSet};
pub use explain::{explain, explain_direction, Explanation, SideExplanation};
pub use incremental::Compiler;
pub use index::{ApplyOutcome, ClusterIndex};
pub use journal::Change;
pub use model::{
    object_from_k8s, parse_yaml_documents, Action, ClusterNetworkPolicy, ClusterNetworkPolicySpec,
    ClusterPeer, ClusterPolicy, ClusterPolicyBody, ClusterRule, Direction, K8sObject,
    NamespaceSpec, NetworkPolicySpec, NodeSpec, Object, PodSpec, Protocol, ProtocolMatch,
    RuleEffect, ServiceSpec, Subject, Tier,
};
pub use object::{ErrorKind, Kind, ModelError, ObjectRef, PodKey};
pub use portset::PortSet;
pub use reference::{DecidedBy, Packet, RuleRef, Verdict};
pub use selector::{LabelSelector, Labels};
