//! Palisade's pure NetworkPolicy engine: model, selectors, index, compile, encode,
//! diff, and a reference evaluator. No I/O, no async, no kernel access.
//!
//! ```text
//! Object (model) --apply--> ClusterIndex --compile--> Desired --encode--> MapSet --diff--> Vec<MapWrite>
//! ```
//!
//! [`Compiler`] does compile+encode+diff incrementally: it recompiles only the local
//! endpoints a change can affect and emits the writes for those.

pub mod compile;
pub mod diff;
pub mod encode;
pub mod engine;
pub mod index;
pub mod model;
pub mod reference;
pub mod selector;

pub use compile::{
    compile, Desired, DesiredEndpoint, Grant, NodeInfo, PeerRules, PortSet, ServiceFrontend,
};
pub use diff::{diff, MapWrite};
pub use encode::{encode, lpm_entries, value_allows, MapSet};
pub use engine::Compiler;
pub use index::{ApplyOutcome, Change, ClusterIndex};
pub use model::{
    object_from_k8s, parse_yaml_documents, Direction, ErrorKind, K8sObject, Kind, ModelError,
    NamespaceSpec, NetworkPolicySpec, Object, ObjectRef, PodKey, PodSpec, Protocol, ServiceSpec,
};
pub use selector::{LabelSelector, Labels};
