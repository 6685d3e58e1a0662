//! Palisade's test harness: a multi-node Kubernetes-like cluster simulated
//! with network namespaces (one per node, pod and external host), with
//! kube-proxy-style Services, servers and parallel probes, the real agent on
//! every node, and the conformance runner for scenario files
//! (tests/conformance/FORMAT.md).
//!
//! Everything it creates lives in network namespaces named `pal-<pid>-...`;
//! it never touches the machine's own interfaces, routes or firewall, and it
//! tears everything down on drop, on panic and on SIGINT/SIGTERM.
//!
//! Entry points: [`Cluster::build`] with a [`ClusterSpec`] (e.g.
//! [`ClusterSpec::default_model`]), and [`run_conformance`].

pub mod agent;
pub mod cluster;
pub mod conformance;
pub mod kube;
pub mod matrix;
pub mod model;
pub mod netns;
pub mod objects;
pub mod podtool;
pub mod probe;
pub mod scenario;
pub mod servers;
pub mod services;

pub use agent::{default_agent_path, AgentConfig, Uplinks};
pub use cluster::{Cluster, ClusterError, ClusterOptions, CniRun, Topology};
pub use conformance::{
    run_conformance, run_conformance_to, run_scenarios, Built, CaseCluster, CaseReport, CaseStatus,
    ConformanceOptions, Judge, OfflineCluster, OfflineConnection, RunSettings, Summary,
};
pub use matrix::{Cell, Matrix, Peer, Probe, Via};
pub use model::{
    pod_service_name, ClusterSpec, ExternalSpec, Family, LabelMap, PodPlan, PortPlan, Transport,
};
pub use netns::{cleanup_leftovers, in_netns, install_signal_handler};
pub use probe::{Connection, Outcome};
pub use servers::sctp_supported;
pub use services::{Backend, Service, ServicePort};
