//! A scenario as the runner uses it once parsed and validated: the cluster to
//! build, its steps (label changes, policy deletions and applications,
//! expectations), and what identifies a policy a step applies or deletes.

use std::fmt;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use crate::matrix::{Matrix, Via};
use crate::model::{ClusterSpec, Family, LabelMap, Transport};
use crate::objects::CLUSTER_POLICY_KIND;

/// A parsed and validated scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub path: PathBuf,
    pub name: String,
    pub description: Option<String>,
    /// Families the case is valid for.
    pub families: Vec<Family>,
    /// The cluster (its `family` is set per run by [`Scenario::cluster_spec`]).
    pub cluster: ClusterSpec,
    pub steps: Vec<Step>,
}

/// One step: label changes, deletions, applications, then expectations.
#[derive(Clone, Debug, Default)]
pub struct Step {
    pub set_pod_labels: Vec<(String, LabelMap)>,
    pub set_namespace_labels: Vec<(String, LabelMap)>,
    /// Policies to delete.
    pub delete: Vec<PolicyRef>,
    /// NetworkPolicy and ClusterNetworkPolicy manifests, placeholders not yet
    /// substituted.
    pub apply: Vec<Value>,
    pub expect: Vec<Expectation>,
}

/// A policy a step applies or deletes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyRef {
    /// A NetworkPolicy, `namespace/name`.
    Namespaced(String, String),
    /// A ClusterNetworkPolicy (`ClusterNetworkPolicy/<name>` in `delete`).
    Cluster(String),
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyRef::Namespaced(ns, n) => write!(f, "NetworkPolicy {ns}/{n}"),
            PolicyRef::Cluster(n) => write!(f, "ClusterNetworkPolicy {n}"),
        }
    }
}

/// One `expect` entry.
#[derive(Clone, Debug)]
pub struct Expectation {
    /// Container port.
    pub port: u16,
    pub protocol: Transport,
    pub via: Via,
    pub ignore_loopback: bool,
    pub matrix: Matrix,
}

impl Scenario {
    /// The cluster to build for a run of `family`.
    pub fn cluster_spec(&self, family: Family) -> ClusterSpec {
        let mut c = self.cluster.clone();
        c.family = family;
        c
    }
}

/// What a manifest of `apply` is: a NetworkPolicy (the default kind) or a
/// ClusterNetworkPolicy (cluster-scoped: no namespace).
pub fn policy_key(v: &Value) -> Result<PolicyRef> {
    let obj = v
        .as_object()
        .ok_or_else(|| anyhow!("a policy manifest must be a mapping"))?;
    let cluster = match obj.get("kind").map(|k| (k, k.as_str())) {
        None | Some((_, Some("NetworkPolicy"))) => false,
        Some((_, Some(CLUSTER_POLICY_KIND))) => true,
        Some((kind, _)) => bail!("kind: {kind} is not NetworkPolicy or {CLUSTER_POLICY_KIND}"),
    };
    let meta = obj
        .get("metadata")
        .ok_or_else(|| anyhow!("metadata: required"))?;
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("metadata.name: required (a string)"))?;
    if cluster {
        if meta.get("namespace").is_some() {
            bail!("metadata.namespace: a {CLUSTER_POLICY_KIND} is cluster-scoped");
        }
        return Ok(PolicyRef::Cluster(name.to_string()));
    }
    let ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("metadata.namespace: required (a string)"))?;
    Ok(PolicyRef::Namespaced(ns.to_string(), name.to_string()))
}
