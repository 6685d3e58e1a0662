//! An offline backend for the conformance runner: no network, no agents. The case's
//! cluster is the objects the file source would read (Namespaces, Nodes, Pods with
//! their addresses from the harness's address plan, and the case's policies), and
//! every probe is answered by a [`Judge`] from those objects. Tools that predict
//! enforcement (`kubectl palisade explain`) are held to the scenarios' expected
//! matrices this way, cell for cell.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{anyhow, Result};
use serde_json::Value;

use super::backend::CaseCluster;
use crate::matrix::{Peer, Probe, Via};
use crate::model::{external_addr, node_addr, pod_addr, ClusterSpec, LabelMap, Transport};
use crate::objects;
use crate::probe::Outcome;
use crate::scenario::{self, PolicyRef};

/// One connection to judge, as the datapath sees it: a Service probe is judged
/// on its backend (the probed pod, at its container port), as after DNAT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineConnection {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Transport,
    pub port: u16,
    /// `node-N` when the source is a node's own address.
    pub src_node: Option<String>,
}

/// Decides connections from the objects in force.
pub trait Judge {
    /// Whether each of `conns` is allowed. `objects` are every object of the
    /// cluster (JSON, as in manifests); `node_addrs` each node's name and
    /// address. An error fails the case (e.g. the judge's own two readings
    /// disagree).
    fn allowed(
        &mut self,
        objects: &[Value],
        node_addrs: &[(String, IpAddr)],
        conns: &[OfflineConnection],
    ) -> Result<Vec<bool>>;
}

/// A case's cluster as objects, judged by `J`.
pub struct OfflineCluster<J: Judge> {
    judge: J,
    spec: ClusterSpec,
    pod_ips: BTreeMap<String, IpAddr>,
    /// Keyed like the file source's files, so a re-apply replaces.
    policies: BTreeMap<String, Value>,
    enforced: bool,
}

impl<J: Judge> OfflineCluster<J> {
    /// The cluster of `spec` (addresses as [`crate::Cluster`] gives them).
    pub fn new(spec: ClusterSpec, judge: J) -> Self {
        let mut per_node: BTreeMap<usize, usize> = BTreeMap::new();
        let mut pod_ips = BTreeMap::new();
        for p in &spec.pods {
            let k = per_node.entry(p.node).or_default();
            pod_ips.insert(p.key(), pod_addr(spec.family, p.node, *k));
            *k += 1;
        }
        Self {
            judge,
            spec,
            pod_ips,
            policies: BTreeMap::new(),
            enforced: false,
        }
    }

    fn node_addrs(&self) -> Vec<(String, IpAddr)> {
        (1..=self.spec.nodes)
            .map(|n| (format!("node-{n}"), node_addr(self.spec.family, n)))
            .collect()
    }

    /// Every object in force.
    pub fn objects(&self) -> Vec<Value> {
        let mut v: Vec<Value> = self
            .spec
            .namespaces
            .iter()
            .map(|(n, l)| objects::namespace(n, l))
            .collect();
        for n in 1..=self.spec.nodes {
            let labels = self.spec.node_labels.get(&n).cloned().unwrap_or_default();
            v.push(objects::node(
                &format!("node-{n}"),
                &labels,
                node_addr(self.spec.family, n),
            ));
        }
        for p in &self.spec.pods {
            if let Some(ip) = self.pod_ips.get(&p.key()) {
                v.push(objects::pod(p, *ip, node_addr(self.spec.family, p.node)));
            }
        }
        v.extend(self.policies.values().cloned());
        v
    }

    fn connection(&self, p: &Probe) -> Result<OfflineConnection> {
        let src_node = match p.from {
            Peer::Node(n) => Some(format!("node-{n}")),
            _ => None,
        };
        Ok(OfflineConnection {
            src: self.address_of(&p.from)?,
            dst: self.address_of(&p.to)?,
            protocol: p.protocol,
            port: p.port,
            src_node,
        })
    }
}

fn policy_file(r: &PolicyRef) -> String {
    match r {
        PolicyRef::Namespaced(ns, name) => objects::policy_file(ns, name),
        PolicyRef::Cluster(name) => objects::cluster_policy_file(name),
    }
}

impl<J: Judge> CaseCluster for OfflineCluster<J> {
    fn start_enforcement(&mut self) -> Result<()> {
        self.enforced = true;
        Ok(())
    }
    fn set_pod_labels(&mut self, pod: &str, labels: LabelMap) -> Result<()> {
        let p = self
            .spec
            .pods
            .iter_mut()
            .find(|p| p.key() == pod)
            .ok_or_else(|| anyhow!("no pod {pod}"))?;
        p.labels = labels;
        Ok(())
    }
    fn set_namespace_labels(&mut self, ns: &str, labels: LabelMap) -> Result<()> {
        let l = self
            .spec
            .namespaces
            .get_mut(ns)
            .ok_or_else(|| anyhow!("no namespace {ns}"))?;
        *l = labels;
        Ok(())
    }
    fn delete_policy(&mut self, r: &PolicyRef) -> Result<()> {
        self.policies.remove(&policy_file(r));
        Ok(())
    }
    fn apply_policy(&mut self, manifest: &Value) -> Result<()> {
        let r = scenario::policy_key(manifest)?;
        let m = match &r {
            PolicyRef::Namespaced(..) => objects::policy_manifest(manifest)?.2,
            PolicyRef::Cluster(_) => objects::cluster_policy_manifest(manifest)?.1,
        };
        self.policies.insert(policy_file(&r), m);
        Ok(())
    }
    fn address_of(&self, peer: &Peer) -> Result<IpAddr> {
        match peer {
            Peer::Pod(k) => self
                .pod_ips
                .get(k)
                .copied()
                .ok_or_else(|| anyhow!("no pod {k}")),
            Peer::Node(n) if (1..=self.spec.nodes).contains(n) => {
                Ok(node_addr(self.spec.family, *n))
            }
            Peer::Node(n) => Err(anyhow!("no node {n}")),
            Peer::External(name) => self
                .spec
                .externals
                .iter()
                .position(|e| &e.name == name)
                .map(|k| external_addr(self.spec.family, k))
                .ok_or_else(|| anyhow!("no external @{name}")),
        }
    }
    fn sync(&mut self) -> Result<()> {
        Ok(())
    }
    fn probe(&mut self, probes: &[Probe], _want: &[Outcome]) -> Result<Vec<Outcome>> {
        // A pod reaching its own address directly never leaves its namespace:
        // nothing judges it. Through its Service it is judged.
        let judged: Vec<usize> = (0..probes.len())
            .filter(|&i| {
                let p = &probes[i];
                let direct_self =
                    p.from == p.to && matches!(p.from, Peer::Pod(_)) && p.via == Via::Pod;
                self.enforced && !direct_self
            })
            .collect();
        let conns = judged
            .iter()
            .map(|&i| self.connection(&probes[i]))
            .collect::<Result<Vec<_>>>()?;
        let mut out = vec![Outcome::Reachable; probes.len()];
        if conns.is_empty() {
            return Ok(out);
        }
        let verdicts = self
            .judge
            .allowed(&self.objects(), &self.node_addrs(), &conns)?;
        if verdicts.len() != conns.len() {
            return Err(anyhow!(
                "the judge answered {} of {} connections",
                verdicts.len(),
                conns.len()
            ));
        }
        for (&i, ok) in judged.iter().zip(verdicts) {
            if !ok {
                out[i] = Outcome::Blocked;
            }
        }
        Ok(out)
    }
    fn logs(&self, _verbose: bool) -> String {
        String::new()
    }
}
