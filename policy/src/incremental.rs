//! The incremental compiler ([`Compiler`]), the agent's steady-state path: it keeps
//! the last encoded state per endpoint and, after index changes (read from the
//! index's journal), recompiles only the local endpoints a change can affect,
//! encodes them and emits the ordered writes for just those. Its map state is the
//! one [`crate::compile()`] + [`crate::encode()`] give for the same index (checked by
//! the property tests).
//!
//! Affected endpoints of a change (conservative; a false positive costs a recompile
//! of that endpoint and produces no writes if nothing changed):
//! - a policy: endpoints the old or the new version selects;
//! - a pod: the pod itself if local, plus endpoints selected by a policy with a pod
//!   peer matching the old or new pod (its labels and namespace), or with an egress
//!   rule having named ports whose peers could include the pod (named ports resolve
//!   on the destination pod);
//! - a namespace: endpoints selected by a policy with a namespaceSelector peer;
//! - a service: only the frontend table;
//! - ClusterNetworkPolicy: a change of one, and a change of a Node, pod or
//!   namespace while one is in force, also marks the endpoints whose tiers it can
//!   touch ([`crate::tier_deps`]: the subjects of the changed policy, or of the
//!   policies whose peers may match the changed object).

use std::collections::{BTreeMap, BTreeSet};

use palisade_common::ServiceKey;

use crate::compile::{compile_endpoint, is_local, service_frontends, NodeInfo};
use crate::diff::{diff_endpoints, MapWrite, WriteSet};
use crate::encode::{encode_endpoint, encode_services, EndpointEntries, MapSet};
use crate::index::ClusterIndex;
use crate::journal::Change;
use crate::model::{
    Direction, NamespaceScope, NetworkPolicySpec, Peer, PodSpec, PolicyBody, PortRef,
};
use crate::object::PodKey;
use crate::peers::PeerCache;
use crate::tier_deps;

/// Incremental compile + encode + diff for one node.
#[derive(Debug)]
pub struct Compiler {
    node: NodeInfo,
    audit: bool,
    /// Generation of the index last compiled; `None` before the first compile.
    generation: Option<u64>,
    entries: BTreeMap<PodKey, EndpointEntries>,
    services: BTreeSet<ServiceKey>,
    ids: BTreeMap<PodKey, u32>,
    /// Endpoints recompiled by the last `update` (for benchmarks and metrics).
    last_recompiled: usize,
}

impl Compiler {
    pub fn new(node: NodeInfo, audit: bool) -> Self {
        Self {
            node,
            audit,
            generation: None,
            entries: BTreeMap::new(),
            services: BTreeSet::new(),
            ids: BTreeMap::new(),
            last_recompiled: 0,
        }
    }

    /// The map state last produced (what the writes so far lead to).
    pub fn map_set(&self) -> MapSet {
        let mut m = MapSet {
            services: self.services.clone(),
            ..Default::default()
        };
        for (pod, e) in &self.entries {
            m.add_endpoint(pod, e.clone());
        }
        m
    }

    /// Bring the state up to `index` with endpoint ids `ids` and return the ordered
    /// writes. Endpoints whose id changed, or that appear or vanish from `ids`, are
    /// recompiled too. Set `audit` changes with [`Compiler::set_audit`].
    pub fn update(&mut self, index: &ClusterIndex, ids: &BTreeMap<PodKey, u32>) -> Vec<MapWrite> {
        let mut dirty: BTreeSet<PodKey> = BTreeSet::new();
        let mut services_dirty = false;
        let cluster_policies = index.has_cluster_policies();
        let full = match self.generation.and_then(|g| index.changes_since(g)) {
            None => true,
            Some(changes) => {
                for c in changes {
                    match c {
                        Change::Service => services_dirty = true,
                        Change::ClusterPolicy { .. } => {
                            tier_deps::mark(index, &self.node, c, &mut dirty)
                        }
                        other => {
                            self.affected(index, other, &mut dirty);
                            if cluster_policies {
                                tier_deps::mark(index, &self.node, other, &mut dirty);
                            }
                        }
                    }
                }
                false
            }
        };
        for (pod, id) in ids {
            if self.ids.get(pod) != Some(id) {
                dirty.insert(pod.clone());
            }
        }
        for pod in self.ids.keys() {
            if !ids.contains_key(pod) {
                dirty.insert(pod.clone());
            }
        }
        self.ids = ids.clone();
        self.generation = Some(index.generation());

        let mut ws = WriteSet::default();
        if full || services_dirty {
            let new = encode_services(&service_frontends(index));
            ws.svc_up.extend(new.difference(&self.services).copied());
            ws.svc_del.extend(self.services.difference(&new).copied());
            self.services = new;
        }
        let targets: Vec<PodKey> = if full {
            self.entries
                .keys()
                .cloned()
                .chain(
                    index
                        .pods()
                        .filter(|p| is_local(p, &self.node))
                        .map(|p| p.key()),
                )
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        } else {
            dirty.into_iter().collect()
        };
        self.last_recompiled = targets.len();
        let mut cache = PeerCache::default();
        let mut old_eps = BTreeMap::new();
        let mut new_eps = BTreeMap::new();
        for pod in targets {
            let new = index
                .pod(&pod)
                .filter(|p| is_local(p, &self.node))
                .and_then(|p| {
                    let id = *self.ids.get(&pod)?;
                    Some(encode_endpoint(
                        &compile_endpoint(index, p, &mut cache),
                        id,
                        self.audit,
                    ))
                });
            let old = self.entries.remove(&pod);
            let empty = EndpointEntries::default();
            let (o, n) = (
                old.as_ref().unwrap_or(&empty),
                new.as_ref().unwrap_or(&empty),
            );
            ws.lpm4(&o.v4, &n.v4);
            ws.lpm6(&o.v6, &n.v6);
            if let Some(o) = &old {
                old_eps.insert(pod.clone(), o.endpoint);
            }
            if let Some(n) = new {
                new_eps.insert(pod.clone(), n.endpoint);
                self.entries.insert(pod, n);
            }
        }
        diff_endpoints(&mut ws, &old_eps, &new_eps);
        ws.into_ordered()
    }

    /// How many endpoints the last [`Compiler::update`] recompiled.
    pub fn last_recompiled(&self) -> usize {
        self.last_recompiled
    }

    /// Change audit mode; the next `update` rewrites every endpoint.
    pub fn set_audit(&mut self, audit: bool) {
        if audit != self.audit {
            self.audit = audit;
            self.generation = None;
        }
    }

    /// Overflowed endpoints (fail closed) with the reason.
    pub fn overflow(&self) -> Vec<(PodKey, String)> {
        self.entries
            .iter()
            .filter_map(|(p, e)| e.overflow.clone().map(|m| (p.clone(), m)))
            .collect()
    }

    /// Rough heap size of the compiled state, for the benchmark.
    pub fn approx_bytes(&self) -> usize {
        self.entries
            .values()
            .map(|e| 64 + e.v4.len() * (16 + 200 + 32) + e.v6.len() * (28 + 200 + 32))
            .sum::<usize>()
            + self.services.len() * 40
    }

    fn local_endpoints<'a>(
        &'a self,
        index: &'a ClusterIndex,
    ) -> impl Iterator<Item = &'a PodSpec> + 'a {
        // Local pods come from the index, not from `entries`, so pods without an id
        // yet are considered as well (they are skipped at encode time).
        index
            .pods_on_node(&self.node.name)
            .filter(|p| is_local(p, &self.node))
    }

    fn mark_selected(
        &self,
        index: &ClusterIndex,
        pol: &NetworkPolicySpec,
        dirty: &mut BTreeSet<PodKey>,
    ) {
        for p in index.pods_in(&pol.namespace) {
            if is_local(p, &self.node) && Direction::BOTH.iter().any(|d| pol.selects(p, *d)) {
                dirty.insert(p.key());
            }
        }
    }

    fn affected(&self, index: &ClusterIndex, c: &Change, dirty: &mut BTreeSet<PodKey>) {
        match c {
            Change::Policy { old, new } => {
                for pol in old.iter().chain(new.iter()) {
                    self.mark_selected(index, pol, dirty);
                }
            }
            Change::Pod { old, new } => {
                for p in old.iter().chain(new.iter()) {
                    if p.node_name.as_deref() == Some(self.node.name.as_str()) {
                        dirty.insert(p.key());
                    }
                }
                let relevant = |pol: &NetworkPolicySpec| {
                    policy_may_see_pod(index, pol, old.as_ref(), new.as_ref())
                };
                self.mark_by_policy(index, relevant, dirty);
            }
            Change::Namespace { .. } => {
                let relevant = |pol: &NetworkPolicySpec| match &pol.body {
                    PolicyBody::Valid(p) => p.ingress.iter().chain(&p.egress).any(|r| {
                        r.peers.iter().any(|peer| {
                            matches!(
                                peer,
                                Peer::Pods {
                                    namespaces: NamespaceScope::Selector(_),
                                    ..
                                }
                            )
                        })
                    }),
                    PolicyBody::Invalid(_) => false,
                };
                self.mark_by_policy(index, relevant, dirty);
            }
            Change::Service | Change::ClusterPolicy { .. } | Change::Node { .. } => {}
        }
    }

    fn mark_by_policy(
        &self,
        index: &ClusterIndex,
        relevant: impl Fn(&NetworkPolicySpec) -> bool,
        dirty: &mut BTreeSet<PodKey>,
    ) {
        let mut by_ns: BTreeMap<&str, Vec<&NetworkPolicySpec>> = BTreeMap::new();
        for pol in index.policies() {
            if relevant(pol) {
                by_ns.entry(pol.namespace.as_str()).or_default().push(pol);
            }
        }
        if by_ns.is_empty() {
            return;
        }
        for p in self.local_endpoints(index) {
            if dirty.contains(&p.key()) {
                continue;
            }
            if let Some(pols) = by_ns.get(p.namespace.as_str()) {
                if pols
                    .iter()
                    .any(|pol| Direction::BOTH.iter().any(|d| pol.selects(p, *d)))
                {
                    dirty.insert(p.key());
                }
            }
        }
    }
}

/// Whether a change of pod (`old` -> `new`) can change what `pol` grants: the pod
/// is (or was) matched by one of its pod peers, or it is a possible destination of an
/// egress rule with named ports (they resolve on the destination pod).
fn policy_may_see_pod(
    index: &ClusterIndex,
    pol: &NetworkPolicySpec,
    old: Option<&PodSpec>,
    new: Option<&PodSpec>,
) -> bool {
    let PolicyBody::Valid(p) = &pol.body else {
        return false;
    };
    let pods: Vec<&PodSpec> = old
        .into_iter()
        .chain(new)
        .filter(|q| q.is_policy_pod())
        .collect();
    if pods.is_empty() {
        return false;
    }
    let rules = p
        .ingress
        .iter()
        .map(|r| (r, false))
        .chain(p.egress.iter().map(|r| (r, true)));
    for (r, egress) in rules {
        let named = egress
            && r.ports
                .iter()
                .any(|ps| matches!(ps.port, Some(PortRef::Named(_))));
        if named && r.peers.is_empty() {
            return true;
        }
        for peer in &r.peers {
            let hit = match peer {
                Peer::IpBlock(b) => {
                    named
                        && pods
                            .iter()
                            .any(|q| q.ips.iter().any(|ip| b.cidr.contains(ip)))
                }
                Peer::Pods {
                    namespaces,
                    pods: sel,
                } => pods.iter().any(|q| {
                    sel.matches(&q.labels)
                        && match namespaces {
                            NamespaceScope::Own => q.namespace == pol.namespace,
                            NamespaceScope::Selector(s) => {
                                s.matches(&index.namespace_labels(&q.namespace))
                            }
                        }
                }),
            };
            if hit {
                return true;
            }
        }
    }
    false
}
