//! The cluster index: the current projection of every object the engine reads,
//! updated one object at a time, with cheap no-op detection, the lookups the
//! compiler, the reference evaluator and the agent need, and a bounded
//! [journal](mod@crate::journal) of real changes that the incremental
//! [`crate::Compiler`] consumes.
//!
//! ClusterNetworkPolicies: only admitted (valid) versions are in force. An invalid
//! version is treated as if the API server had never admitted it: the version in
//! force (if any) stays, nothing changes, and the error is reported once per
//! distinct invalid version. A delete removes the version in force.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::journal::{Change, Journal};
use crate::model::{
    ClusterNetworkPolicySpec, ClusterPolicy, Direction, EndpointSliceSpec, NamespaceSpec,
    NetworkPolicySpec, NodeSpec, Object, PodSpec, ServiceSpec, NAMESPACE_NAME_LABEL,
};
use crate::object::{Kind, ModelError, ObjectRef, PodKey};
use crate::selector::Labels;

/// Result of [`ClusterIndex::apply`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Whether anything the compiler reads changed (false for an identical re-apply).
    pub changed: bool,
    /// The validation error of an invalid NetworkPolicy, reported only when the
    /// policy changed (once per change, not per compile). The policy is stored
    /// anyway and fails closed. For a ClusterNetworkPolicy: its validation error
    /// (the object changes nothing), or the report of its unsupported rules
    /// ([`crate::ErrorKind::Unsupported`]).
    pub error: Option<ModelError>,
}

/// The current cluster state as the engine sees it.
#[derive(Clone, Debug, Default)]
pub struct ClusterIndex {
    namespaces: BTreeMap<String, NamespaceSpec>,
    pods: BTreeMap<PodKey, PodSpec>,
    /// Policy pods (not hostNetwork, with an address) by address.
    pods_by_ip: BTreeMap<IpAddr, BTreeSet<PodKey>>,
    /// Number of pods per namespace name, so namespaceSelector peers also reach
    /// pods whose Namespace object has not been seen (yet).
    pod_namespaces: BTreeMap<String, usize>,
    /// Pods by `spec.nodeName`, for finding a node's local pods quickly.
    pods_by_node: BTreeMap<String, BTreeSet<PodKey>>,
    services: BTreeMap<(String, String), ServiceSpec>,
    slices: BTreeMap<(String, String), EndpointSliceSpec>,
    policies: BTreeMap<(String, String), NetworkPolicySpec>,
    /// ClusterNetworkPolicies in force (valid), by name.
    cluster_policies: BTreeMap<String, ClusterNetworkPolicySpec>,
    /// The last invalid version applied per name, so its error is reported once.
    rejected: BTreeMap<String, ClusterNetworkPolicySpec>,
    nodes: BTreeMap<String, NodeSpec>,
    journal: Journal,
}

impl ClusterIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Insert or replace an object.
    pub fn apply(&mut self, obj: Object) -> ApplyOutcome {
        match obj {
            Object::Namespace(n) => {
                let old = self.namespaces.get(&n.name);
                if old == Some(&n) {
                    return ApplyOutcome::default();
                }
                let old = self.namespaces.insert(n.name.clone(), n.clone());
                self.record(Change::Namespace { old, new: Some(n) });
                changed()
            }
            Object::Pod(p) => {
                let key = p.key();
                if self.pods.get(&key) == Some(&p) {
                    return ApplyOutcome::default();
                }
                if let Some(old) = self.pods.get(&key).cloned() {
                    self.unindex_pod(&old);
                }
                self.index_pod(&p);
                let old = self.pods.insert(key, p.clone());
                self.record(Change::Pod { old, new: Some(p) });
                changed()
            }
            Object::Service(s) => {
                let key = (s.namespace.clone(), s.name.clone());
                if self.services.get(&key) == Some(&s) {
                    return ApplyOutcome::default();
                }
                self.services.insert(key, s);
                self.record(Change::Service);
                changed()
            }
            Object::EndpointSlice(s) => {
                // Not read by the compiler (service decisions are made after DNAT).
                self.slices.insert((s.namespace.clone(), s.name.clone()), s);
                ApplyOutcome::default()
            }
            Object::NetworkPolicy(p) => {
                let key = (p.namespace.clone(), p.name.clone());
                if self.policies.get(&key) == Some(&p) {
                    return ApplyOutcome::default();
                }
                let error = p.error().cloned();
                let old = self.policies.insert(key, p.clone());
                self.record(Change::Policy { old, new: Some(p) });
                ApplyOutcome {
                    changed: true,
                    error,
                }
            }
            Object::ClusterNetworkPolicy(p) => self.apply_cluster_policy(p),
            Object::Node(n) => {
                if self.nodes.get(&n.name) == Some(&n) {
                    return ApplyOutcome::default();
                }
                let old = self.nodes.insert(n.name.clone(), n.clone());
                self.record(Change::Node { old, new: Some(n) });
                changed()
            }
        }
    }

    fn apply_cluster_policy(&mut self, p: ClusterNetworkPolicySpec) -> ApplyOutcome {
        if p.error().is_some() {
            // Not admitted: nothing changes; report each distinct version once.
            if self.rejected.get(&p.name) == Some(&p) {
                return ApplyOutcome::default();
            }
            let error = p.error().cloned();
            self.rejected.insert(p.name.clone(), p);
            return ApplyOutcome {
                changed: false,
                error,
            };
        }
        self.rejected.remove(&p.name);
        if self.cluster_policies.get(&p.name) == Some(&p) {
            return ApplyOutcome::default();
        }
        let error = p.report().cloned();
        let old = self.cluster_policies.insert(p.name.clone(), p.clone());
        self.record(Change::ClusterPolicy { old, new: Some(p) });
        ApplyOutcome {
            changed: true,
            error,
        }
    }

    /// Remove an object. Returns whether anything the compiler reads changed.
    pub fn delete(&mut self, r: &ObjectRef) -> bool {
        match r.kind {
            Kind::Namespace => match self.namespaces.remove(&r.name) {
                Some(old) => {
                    self.record(Change::Namespace {
                        old: Some(old),
                        new: None,
                    });
                    true
                }
                None => false,
            },
            Kind::Pod => match self.pods.remove(&PodKey::new(&r.namespace, &r.name)) {
                Some(old) => {
                    self.unindex_pod(&old);
                    self.record(Change::Pod {
                        old: Some(old),
                        new: None,
                    });
                    true
                }
                None => false,
            },
            Kind::Service => {
                let removed = self
                    .services
                    .remove(&(r.namespace.clone(), r.name.clone()))
                    .is_some();
                if removed {
                    self.record(Change::Service);
                }
                removed
            }
            Kind::EndpointSlice => {
                self.slices.remove(&(r.namespace.clone(), r.name.clone()));
                false
            }
            Kind::NetworkPolicy => {
                match self.policies.remove(&(r.namespace.clone(), r.name.clone())) {
                    Some(old) => {
                        self.record(Change::Policy {
                            old: Some(old),
                            new: None,
                        });
                        true
                    }
                    None => false,
                }
            }
            Kind::ClusterNetworkPolicy => {
                self.rejected.remove(&r.name);
                match self.cluster_policies.remove(&r.name) {
                    Some(old) => {
                        self.record(Change::ClusterPolicy {
                            old: Some(old),
                            new: None,
                        });
                        true
                    }
                    None => false,
                }
            }
            Kind::Node => match self.nodes.remove(&r.name) {
                Some(old) => {
                    self.record(Change::Node {
                        old: Some(old),
                        new: None,
                    });
                    true
                }
                None => false,
            },
        }
    }

    fn record(&mut self, c: Change) {
        self.journal.record(c);
    }

    /// Generation after the last change (monotonic).
    pub fn generation(&self) -> u64 {
        self.journal.generation()
    }

    /// Changes after generation `since`, or `None` when they are no longer kept.
    pub fn changes_since(&self, since: u64) -> Option<impl Iterator<Item = &Change>> {
        self.journal.since(since)
    }

    fn index_pod(&mut self, p: &PodSpec) {
        *self.pod_namespaces.entry(p.namespace.clone()).or_default() += 1;
        if let Some(n) = &p.node_name {
            self.pods_by_node
                .entry(n.clone())
                .or_default()
                .insert(p.key());
        }
        if p.is_policy_pod() {
            for ip in &p.ips {
                self.pods_by_ip.entry(*ip).or_default().insert(p.key());
            }
        }
    }

    fn unindex_pod(&mut self, p: &PodSpec) {
        if let Some(n) = &p.node_name {
            if let Some(set) = self.pods_by_node.get_mut(n) {
                set.remove(&p.key());
                if set.is_empty() {
                    self.pods_by_node.remove(n);
                }
            }
        }
        if let Some(n) = self.pod_namespaces.get_mut(&p.namespace) {
            *n -= 1;
            if *n == 0 {
                self.pod_namespaces.remove(&p.namespace);
            }
        }
        for ip in &p.ips {
            if let Some(set) = self.pods_by_ip.get_mut(ip) {
                set.remove(&p.key());
                if set.is_empty() {
                    self.pods_by_ip.remove(ip);
                }
            }
        }
    }

    // ---- reads ----

    pub fn namespace(&self, name: &str) -> Option<&NamespaceSpec> {
        self.namespaces.get(name)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &NamespaceSpec> {
        self.namespaces.values()
    }

    /// Names of the namespaces that have at least one pod (known or not).
    pub fn pod_namespaces(&self) -> impl Iterator<Item = &str> {
        self.pod_namespaces.keys().map(String::as_str)
    }

    /// Labels of a namespace; a namespace not (yet) seen still carries its
    /// `kubernetes.io/metadata.name` label, as the apiserver guarantees.
    pub fn namespace_labels(&self, name: &str) -> std::borrow::Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(n) => std::borrow::Cow::Borrowed(&n.labels),
            None => {
                let mut l = Labels::new();
                l.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
                std::borrow::Cow::Owned(l)
            }
        }
    }

    pub fn pod(&self, key: &PodKey) -> Option<&PodSpec> {
        self.pods.get(key)
    }

    pub fn pods(&self) -> impl Iterator<Item = &PodSpec> {
        self.pods.values()
    }

    /// Pods whose `spec.nodeName` is `node` (any kind: filter with
    /// [`PodSpec::is_policy_pod`] for endpoints).
    pub fn pods_on_node<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a PodSpec> + 'a {
        self.pods_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
    }

    /// Pods of one namespace.
    pub fn pods_in(&self, ns: &str) -> impl Iterator<Item = &PodSpec> {
        let ns = ns.to_string();
        self.pods
            .range(PodKey::new(&ns, "")..)
            // The run of keys whose text starts with `ns/`: the namespace's own, and
            // any of a namespace that itself starts with `ns/`.
            .map_while(move |(k, p)| {
                k.text_starts_with_namespace(&ns)
                    .then(|| (k.namespace() == ns).then_some(p))
            })
            .flatten()
    }

    /// The pod owning `ip` (hostNetwork pods excluded), for deny-log enrichment.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodSpec> {
        self.pods_by_ip
            .get(&ip)
            .and_then(|s| s.iter().next())
            .and_then(|k| self.pods.get(k))
    }

    /// Every policy pod owning `ip` (normally at most one).
    pub fn pods_by_ip(&self, ip: IpAddr) -> impl Iterator<Item = &PodSpec> {
        self.pods_by_ip
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
    }

    /// Policy pods whose address lies in `net`, with that address.
    pub fn pods_in_net(&self, net: ipnet::IpNet) -> impl Iterator<Item = (IpAddr, &PodSpec)> {
        self.pods_by_ip
            .range(net.network()..=net.broadcast())
            .flat_map(move |(ip, keys)| {
                keys.iter()
                    .filter_map(move |k| self.pods.get(k).map(|p| (*ip, p)))
            })
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceSpec> {
        self.services.values()
    }

    pub fn endpoint_slices(&self) -> impl Iterator<Item = &EndpointSliceSpec> {
        self.slices.values()
    }

    pub fn policies(&self) -> impl Iterator<Item = &NetworkPolicySpec> {
        self.policies.values()
    }

    /// Policies of one namespace.
    pub fn policies_in(&self, ns: &str) -> impl Iterator<Item = &NetworkPolicySpec> {
        let ns_owned = ns.to_string();
        self.policies
            .range((ns.to_string(), String::new())..)
            .take_while(move |((n, _), _)| *n == ns_owned)
            .map(|(_, p)| p)
    }

    pub fn policy(&self, ns: &str, name: &str) -> Option<&NetworkPolicySpec> {
        self.policies.get(&(ns.to_string(), name.to_string()))
    }

    /// `"ns/name"` of the policies that select `pod` for `dir` (podSelector
    /// matches and `dir` in effective policyTypes), invalid ones included.
    pub fn policies_selecting(&self, pod: &PodKey, dir: Direction) -> Vec<String> {
        let Some(p) = self.pods.get(pod) else {
            return Vec::new();
        };
        self.policies_in(pod.namespace())
            .filter(|pol| pol.selects(p, dir))
            .map(|pol| pol.id())
            .collect()
    }

    /// ClusterNetworkPolicies in force (valid ones), by name.
    pub fn cluster_policies(&self) -> impl Iterator<Item = &ClusterNetworkPolicySpec> {
        self.cluster_policies.values()
    }

    pub fn cluster_policy(&self, name: &str) -> Option<&ClusterNetworkPolicySpec> {
        self.cluster_policies.get(name)
    }

    pub fn has_cluster_policies(&self) -> bool {
        !self.cluster_policies.is_empty()
    }

    /// The valid ClusterNetworkPolicies in evaluation order: Admin tier first,
    /// then Baseline; within a tier by priority (lower first), then by name (API:
    /// equal priorities are ambiguous; the name makes the order stable).
    pub fn cluster_policies_ordered(&self) -> Vec<(&str, &ClusterPolicy)> {
        let mut v: Vec<(&str, &ClusterPolicy)> = self
            .cluster_policies
            .values()
            .filter_map(|c| c.valid().map(|p| (c.name.as_str(), p)))
            .collect();
        v.sort_by(|a, b| (a.1.tier, a.1.priority, a.0).cmp(&(b.1.tier, b.1.priority, b.0)));
        v
    }

    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeSpec> {
        self.nodes.values()
    }

    /// Rough heap size of the index, for the benchmark's memory estimate.
    pub fn approx_bytes(&self) -> usize {
        let labels = |l: &Labels| l.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>();
        let mut n = 0;
        for p in self.pods.values() {
            n += 2 * (p.namespace.len() + p.name.len()) + 200 + labels(&p.labels);
            n += p
                .named_ports
                .iter()
                .map(|np| np.name.len() + 40)
                .sum::<usize>();
        }
        n += self.pods_by_ip.len() * 96;
        for ns in self.namespaces.values() {
            n += ns.name.len() + 64 + labels(&ns.labels);
        }
        n += self.policies.len() * 1024;
        n += self.services.len() * 200;
        n += self.cluster_policies.len() * 2048 + self.nodes.len() * 256;
        n
    }
}

fn changed() -> ApplyOutcome {
    ApplyOutcome {
        changed: true,
        error: None,
    }
}
