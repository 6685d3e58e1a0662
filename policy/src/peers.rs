//! Pod peers for compilation: which pods a pod-selector peer matches (shared by
//! NetworkPolicy and ClusterNetworkPolicy compilation), and [`PeerCache`], the
//! peers already resolved during one compilation, since many endpoints share the
//! same policies.

use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

use ipnet::IpNet;

use crate::index::ClusterIndex;
use crate::model::{Direction, NamespaceScope, NetworkPolicySpec, PodSpec};
use crate::object::PodKey;
use crate::selector::LabelSelector;

/// Peers resolved during one compilation.
#[derive(Default)]
pub(crate) struct PeerCache {
    /// NetworkPolicy pod peers: the `(address, pod key)` pairs they matched.
    peers: HashMap<PeerId, PeerPods>,
    /// ClusterNetworkPolicy rule peers as prefixes, by ("cnp/name", direction,
    /// rule index, 0).
    pub(crate) cluster: HashMap<PeerId, Rc<Vec<IpNet>>>,
}

/// (policy "ns/name", direction, rule index, peer index).
pub(crate) type PeerId = (String, Direction, usize, usize);
pub(crate) type PeerPods = Rc<Vec<(IpAddr, PodKey)>>;

/// Where a NetworkPolicy rule is: its policy, direction and index in that
/// direction's rules (with the peer index, the key of its peers in the cache).
#[derive(Clone, Copy)]
pub(crate) struct RuleAt<'a> {
    pub policy: &'a NetworkPolicySpec,
    pub dir: Direction,
    pub index: usize,
}

impl PeerCache {
    /// The pods (with each of their addresses) matched by peer `peer_index` of
    /// the rule at `at`, a pod peer with these selectors.
    pub(crate) fn pod_peer(
        &mut self,
        index: &ClusterIndex,
        at: RuleAt<'_>,
        peer_index: usize,
        namespaces: &NamespaceScope,
        pods: &LabelSelector,
    ) -> PeerPods {
        let key = (at.policy.id(), at.dir, at.index, peer_index);
        if let Some(v) = self.peers.get(&key) {
            return v.clone();
        }
        let v: Vec<(IpAddr, PodKey)> =
            pod_peer_matches(index, &at.policy.namespace, namespaces, pods)
                .into_iter()
                .flat_map(|q| q.ips.iter().map(move |ip| (*ip, q.key())))
                .collect();
        let v = Rc::new(v);
        self.peers.insert(key, v.clone());
        v
    }
}

/// Pods matched by a pod peer of a policy in `policy_ns` (API: podSelector alone =
/// the policy's namespace; namespaceSelector alone = all pods of matching
/// namespaces; both = AND; hostNetwork pods and pods without address never match).
pub(crate) fn pod_peer_matches<'a>(
    index: &'a ClusterIndex,
    policy_ns: &str,
    namespaces: &NamespaceScope,
    pods: &LabelSelector,
) -> Vec<&'a PodSpec> {
    let mut out = Vec::new();
    let take_ns = |ns: &str, out: &mut Vec<&'a PodSpec>| {
        out.extend(
            index
                .pods_in(ns)
                .filter(|q| q.is_policy_pod() && pods.matches(&q.labels)),
        );
    };
    match namespaces {
        NamespaceScope::Own => take_ns(policy_ns, &mut out),
        NamespaceScope::Selector(sel) => {
            for ns in index.pod_namespaces() {
                if sel.matches(&index.namespace_labels(ns)) {
                    take_ns(ns, &mut out);
                }
            }
        }
    }
    out
}
