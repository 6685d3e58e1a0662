//! What the runner needs of a cluster ([`CaseCluster`]), whichever backend
//! builds it, and the network-namespace [`Cluster`]'s side of it.

use std::net::IpAddr;

use anyhow::Result;
use serde_json::Value;

use crate::cluster::Cluster;
use crate::matrix::{Peer, Probe};
use crate::model::LabelMap;
use crate::probe::Outcome;
use crate::scenario::{self, PolicyRef};

/// What the runner needs of a cluster: the network-namespace [`Cluster`] is one,
/// [`crate::kube::KubeCluster`] (a real cluster, through kubectl) the other. The
/// case logic, the comparison and the output are the same for both.
pub trait CaseCluster {
    /// Called after the sanity probes: the namespace cluster starts its agents
    /// here; on a real cluster the DaemonSet runs already.
    fn start_enforcement(&mut self) -> Result<()>;
    /// Replaces a pod's whole label map.
    fn set_pod_labels(&mut self, pod: &str, labels: LabelMap) -> Result<()>;
    /// Replaces a namespace's labels (`kubernetes.io/metadata.name` is kept).
    fn set_namespace_labels(&mut self, ns: &str, labels: LabelMap) -> Result<()>;
    /// Deletes a NetworkPolicy or a ClusterNetworkPolicy.
    fn delete_policy(&mut self, r: &PolicyRef) -> Result<()>;
    /// Creates or replaces a NetworkPolicy or a ClusterNetworkPolicy (by
    /// `kind`).
    fn apply_policy(&mut self, manifest: &Value) -> Result<()>;
    /// A peer's own address, for the manifest placeholders.
    fn address_of(&self, peer: &Peer) -> Result<IpAddr>;
    /// Returns once every agent has programmed everything written so far.
    fn sync(&mut self) -> Result<()>;
    /// Runs the probes; outcomes in input order. `want` is what the case expects:
    /// a backend whose agents learn of changes asynchronously may re-probe the
    /// cells that differ for a bounded time before answering.
    fn probe(&mut self, probes: &[Probe], want: &[Outcome]) -> Result<Vec<Outcome>>;
    /// The agents' recent logs, for a failure report.
    fn logs(&self, verbose: bool) -> String;
}

impl CaseCluster for Cluster {
    fn start_enforcement(&mut self) -> Result<()> {
        self.start_agents()
    }
    fn set_pod_labels(&mut self, pod: &str, labels: LabelMap) -> Result<()> {
        Cluster::set_pod_labels(self, pod, labels)
    }
    fn set_namespace_labels(&mut self, ns: &str, labels: LabelMap) -> Result<()> {
        Cluster::set_namespace_labels(self, ns, labels)
    }
    fn delete_policy(&mut self, r: &PolicyRef) -> Result<()> {
        match r {
            PolicyRef::Namespaced(ns, name) => Cluster::delete_policy(self, ns, name),
            PolicyRef::Cluster(name) => Cluster::delete_cluster_policy(self, name),
        }
    }
    fn apply_policy(&mut self, manifest: &Value) -> Result<()> {
        match scenario::policy_key(manifest)? {
            PolicyRef::Namespaced(..) => Cluster::apply_policy(self, manifest),
            PolicyRef::Cluster(_) => Cluster::apply_cluster_policy(self, manifest),
        }
    }
    fn address_of(&self, peer: &Peer) -> Result<IpAddr> {
        Ok(Cluster::address_of(self, peer)?)
    }
    fn sync(&mut self) -> Result<()> {
        Cluster::sync(self).map(|_| ())
    }
    /// The agents here report exactly what they programmed ([`Cluster::sync`]
    /// waits for it), so one probe round is the answer.
    fn probe(&mut self, probes: &[Probe], _want: &[Outcome]) -> Result<Vec<Outcome>> {
        Cluster::probe(self, probes)
    }
    fn logs(&self, verbose: bool) -> String {
        agent_logs(self, verbose)
    }
}

/// A cluster for one case, or why the case cannot run on this backend.
pub enum Built<C> {
    Ready(C),
    Skip(String),
}

fn agent_logs(cluster: &Cluster, verbose: bool) -> String {
    let lines = if verbose { 100_000 } else { 30 };
    let mut s = String::new();
    for n in 1..=cluster.node_count() {
        let t = cluster.agent_log_tail(n, lines);
        if !t.is_empty() {
            s += &format!("--- agent log node-{n} (last {lines} lines) ---\n{t}\n");
        }
    }
    s
}
