//! Which local endpoints a change can affect through ClusterNetworkPolicy, for the
//! incremental compiler. An endpoint's tiers depend only on the cluster policies
//! whose subject selects it and on what their rules' peers match, so:
//! - a cluster policy: the endpoints its old or new version selects;
//! - a pod: the pod itself (its subjects), and the endpoints selected by a policy
//!   with a peer that may match the old or new pod (when only its labels changed,
//!   pod selectors alone can tell; otherwise namespace and pod selectors
//!   by labels, networks by address: egress named ports resolve on the pod there;
//!   an empty peer, which can stand for every address, always);
//! - a namespace: its local pods (their subjects), and the endpoints selected by
//!   a policy with a namespace or pod peer whose namespace selector matches the
//!   old or new labels;
//! - a node: the endpoints selected by a policy with a `nodes` peer matching the
//!   old or new labels.
//!
//! Conservative: an endpoint marked needlessly is recompiled and writes nothing.

use std::collections::BTreeSet;

use crate::compile::{is_local, NodeInfo};
use crate::index::ClusterIndex;
use crate::journal::Change;
use crate::model::{ClusterPeer, ClusterPolicy, ClusterRule, PodSpec};
use crate::object::PodKey;
use crate::Labels;

/// Mark in `dirty` the local endpoints of `node` that `c` can affect through a
/// cluster policy (module docs). NetworkPolicy's dependencies are not covered.
pub(crate) fn mark(
    index: &ClusterIndex,
    node: &NodeInfo,
    c: &Change,
    dirty: &mut BTreeSet<PodKey>,
) {
    match c {
        Change::ClusterPolicy { old, new } => {
            let versions: Vec<&ClusterPolicy> = old
                .iter()
                .chain(new.iter())
                .filter_map(|p| p.valid())
                .collect();
            mark_subjects(index, node, &versions, dirty);
        }
        Change::Pod { old, new } => {
            for p in old.iter().chain(new.iter()) {
                if is_local(p, node) {
                    dirty.insert(p.key());
                }
            }
            let pods: Vec<&PodSpec> = old.iter().chain(new.iter()).collect();
            // Only its labels changed: only pod selectors can see that.
            let labels_only = match (old, new) {
                (Some(o), Some(n)) => {
                    PodSpec {
                        labels: n.labels.clone(),
                        ..o.clone()
                    } == *n
                }
                _ => false,
            };
            let seeing = policies_where(index, |peer| {
                let by_labels = matches!(peer, ClusterPeer::Pods { .. });
                (by_labels || !labels_only)
                    && pods.iter().any(|p| peer_may_match_pod(index, peer, p))
            });
            mark_subjects(index, node, &seeing, dirty);
        }
        Change::Namespace { old, new } => {
            let name = old.as_ref().or(new.as_ref()).map(|n| n.name.as_str());
            if let Some(name) = name {
                for p in index.pods_in(name) {
                    if is_local(p, node) {
                        dirty.insert(p.key());
                    }
                }
            }
            let labels: Vec<&Labels> = old.iter().chain(new.iter()).map(|n| &n.labels).collect();
            let seeing = policies_where(index, |peer| match peer {
                ClusterPeer::Namespaces(ns) | ClusterPeer::Pods { namespaces: ns, .. } => {
                    labels.iter().any(|l| ns.matches(l))
                }
                _ => false,
            });
            mark_subjects(index, node, &seeing, dirty);
        }
        Change::Node { old, new } => {
            let labels: Vec<&Labels> = old.iter().chain(new.iter()).map(|n| &n.labels).collect();
            let seeing = policies_where(index, |peer| match peer {
                ClusterPeer::Nodes(sel) => labels.iter().any(|l| sel.matches(l)),
                _ => false,
            });
            mark_subjects(index, node, &seeing, dirty);
        }
        Change::Policy { .. } | Change::Service => {}
    }
}

/// The valid cluster policies with a rule peer for which `f` holds.
fn policies_where(index: &ClusterIndex, f: impl Fn(&ClusterPeer) -> bool) -> Vec<&ClusterPolicy> {
    index
        .cluster_policies()
        .filter_map(|p| p.valid())
        .filter(|p| {
            p.ingress
                .iter()
                .chain(&p.egress)
                .flat_map(|r: &ClusterRule| &r.peers)
                .any(&f)
        })
        .collect()
}

/// Whether `peer` may match `pod` (its labels, its namespace's labels now, its
/// addresses). An empty or `domainNames` peer may make its rule deny every
/// address, where egress named ports resolve on each pod: it may match any.
fn peer_may_match_pod(index: &ClusterIndex, peer: &ClusterPeer, pod: &PodSpec) -> bool {
    match peer {
        ClusterPeer::Namespaces(ns) => ns.matches(&index.namespace_labels(&pod.namespace)),
        ClusterPeer::Pods { namespaces, pods } => {
            pods.matches(&pod.labels) && namespaces.matches(&index.namespace_labels(&pod.namespace))
        }
        ClusterPeer::Networks(nets) => nets.iter().any(|n| pod.ips.iter().any(|ip| n.contains(ip))),
        ClusterPeer::DomainNames(_) | ClusterPeer::Empty => true,
        ClusterPeer::Nodes(_) => false,
    }
}

/// Mark the local endpoints some of `policies` selects.
fn mark_subjects(
    index: &ClusterIndex,
    node: &NodeInfo,
    policies: &[&ClusterPolicy],
    dirty: &mut BTreeSet<PodKey>,
) {
    if policies.is_empty() {
        return;
    }
    for p in index.pods_on_node(&node.name).filter(|p| is_local(p, node)) {
        if dirty.contains(&p.key()) {
            continue;
        }
        let ns = index.namespace_labels(&p.namespace);
        if policies.iter().any(|c| c.subject.selects(p, &ns)) {
            dirty.insert(p.key());
        }
    }
}
