//! The reference evaluator: a deliberately simple second implementation that answers
//! "is this new connection allowed?" straight from the NetworkPolicy and
//! ClusterNetworkPolicy text, with no compilation, prefixes or caches. It is the
//! oracle of the differential tests and the basis of explanations
//! ([`mod@crate::explain`]).
//!
//! Semantics are those of direct pod-to-pod traffic (for Services: the backend pod
//! kube-proxy chose). Each side is judged on its own (API): a connection
//! `src -> dst` is allowed iff
//! - egress: `src` is not a policy pod, or its egress [`verdict`] allows (`dst`,
//!   proto, port); and
//! - ingress: `dst` is not a policy pod, or `src` is an address of `dst`'s node (API:
//!   an isolated pod accepts connections from its node), or its ingress verdict
//!   allows (`src`, proto, port).
//!
//! A verdict walks the tiers: Admin ClusterNetworkPolicies, NetworkPolicy (only
//! when it isolates the pod in that direction: some policy selecting it has the
//! direction in its policyTypes, and then some rule of such a policy must match),
//! Baseline ClusterNetworkPolicies, then allowed (see [`verdict`]).
//!
//! A pod reaching its own IP directly never leaves its network namespace, so the
//! datapath never judges it; here (as in the compiled maps) such a connection is
//! judged like any other, which is the answer through a Service (API: it is then
//! subject to ClusterNetworkPolicy).
//!
//! A "policy pod" is a pod that is not hostNetwork and has the address. Should two
//! pods claim one address, each must allow (both are judged).

use std::net::IpAddr;

use crate::cluster_policy::{Action, ClusterPeer, ProtocolMatch, RuleEffect, Tier};
use crate::index::ClusterIndex;
use crate::model::{
    Direction, NamespaceScope, Peer, PodSpec, Policy, PolicyBody, PortRef, Protocol, Rule,
};

/// Whether `src -> dst` (`proto`, destination `port`) is allowed.
pub fn allowed(
    index: &ClusterIndex,
    node_addrs: &dyn Fn(&str) -> Vec<IpAddr>,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: u16,
) -> bool {
    allowed_port(index, node_addrs, src, dst, proto, Some(port))
}

/// As [`allowed`], with `port: None` for a packet without ports (non-first
/// fragment), which only rules allowing every port of the protocol match.
pub fn allowed_port(
    index: &ClusterIndex,
    node_addrs: &dyn Fn(&str) -> Vec<IpAddr>,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: Option<u16>,
) -> bool {
    egress_allowed(index, src, dst, proto, port)
        && ingress_allowed(index, node_addrs, src, dst, proto, port)
}

/// The egress half: judged at every policy pod owning `src`.
pub fn egress_allowed(
    index: &ClusterIndex,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: Option<u16>,
) -> bool {
    index
        .pods()
        .filter(|p| owns(p, src))
        .all(|p| verdict(index, p, Direction::Egress, dst, dst, proto, port).allowed)
}

/// The ingress half: judged at every policy pod owning `dst`.
pub fn ingress_allowed(
    index: &ClusterIndex,
    node_addrs: &dyn Fn(&str) -> Vec<IpAddr>,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: Option<u16>,
) -> bool {
    index
        .pods()
        .filter(|p| owns(p, dst))
        .all(|p| ingress_verdict(index, node_addrs, p, src, dst, proto, port).allowed)
}

pub(crate) fn owns(p: &PodSpec, ip: IpAddr) -> bool {
    !p.host_network && p.ips.contains(&ip)
}

/// What decided one direction of a connection at one pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DecidedBy {
    /// Ingress from the pod's own node: allowed before any policy.
    Node,
    /// A rule of an Admin-tier ClusterNetworkPolicy.
    Admin,
    /// NetworkPolicy isolates the pod in this direction.
    NetworkPolicy,
    /// A rule of a Baseline-tier ClusterNetworkPolicy.
    Baseline,
    /// Nothing decided: allowed.
    Default,
}

impl DecidedBy {
    /// The name used in logs (`tier` field).
    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Node => "node",
            DecidedBy::Admin => "admin",
            DecidedBy::NetworkPolicy => "networkpolicy",
            DecidedBy::Baseline => "baseline",
            DecidedBy::Default => "default",
        }
    }
}

/// The ClusterNetworkPolicy rule that decided.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef {
    pub policy: String,
    /// Index in the policy's `ingress` or `egress` list.
    pub rule_index: usize,
    pub rule_name: Option<String>,
    /// The action taken (a fail-closed rule's is `Deny`).
    pub action: Action,
}

/// The decision of one direction at one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub decided_by: DecidedBy,
    /// Set when a ClusterNetworkPolicy rule decided.
    pub rule: Option<RuleRef>,
    /// When NetworkPolicy decided: `"ns/name"` of the policies isolating the pod.
    pub policies: Vec<String>,
}

/// The ingress decision at `pod` (owning `dst`) for a connection from `src`.
pub fn ingress_verdict(
    index: &ClusterIndex,
    node_addrs: &dyn Fn(&str) -> Vec<IpAddr>,
    pod: &PodSpec,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: Option<u16>,
) -> Verdict {
    // API: an isolated pod still accepts connections from its own node; the
    // datapath applies this before any policy tier.
    let from_node = pod
        .node_name
        .as_deref()
        .is_some_and(|n| node_addrs(n).contains(&src));
    if from_node {
        return Verdict {
            allowed: true,
            decided_by: DecidedBy::Node,
            rule: None,
            policies: Vec::new(),
        };
    }
    verdict(index, pod, Direction::Ingress, src, dst, proto, port)
}

/// The decision at `pod` in `dir`, where `peer` is the other side and `dst` the
/// destination address (whose pod resolves named ports).
///
/// A packet without ports (`port: None`, a non-first fragment) of TCP/UDP/SCTP is
/// allowed only if every port of its protocol would be: the verdict is checked at
/// each port where any rule's port set starts or ends (it is constant between
/// those), and the first denial is returned.
#[allow(clippy::too_many_arguments)]
pub fn verdict(
    index: &ClusterIndex,
    pod: &PodSpec,
    dir: Direction,
    peer: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: Option<u16>,
) -> Verdict {
    let ported = Protocol::from_number(proto).is_some();
    if port.is_some() || !ported || !index.has_cluster_policies() {
        return tiers(index, pod, dir, peer, dst, proto, port);
    }
    let mut first = None;
    for p in port_boundaries(index) {
        let v = tiers(index, pod, dir, peer, dst, proto, Some(p));
        if !v.allowed {
            return v;
        }
        first.get_or_insert(v);
    }
    first.unwrap_or_else(|| tiers(index, pod, dir, peer, dst, proto, Some(0)))
}

/// Every port where some rule's port set can start or stop applying: 0, and for
/// every range of every policy its first port and the one after its last, and for
/// every named container port of every pod that port and the next.
fn port_boundaries(index: &ClusterIndex) -> std::collections::BTreeSet<u16> {
    let mut out = std::collections::BTreeSet::from([0u16]);
    let mut range = |f: u16, l: u16| {
        out.insert(f);
        if let Some(n) = l.checked_add(1) {
            out.insert(n);
        }
    };
    for (_, cp) in index.cluster_policies_ordered() {
        for r in cp.ingress.iter().chain(&cp.egress) {
            for m in &r.protocols {
                if let ProtocolMatch::Ports { first, last, .. } = m {
                    range(*first, *last);
                }
            }
        }
    }
    for pol in index.policies() {
        if let PolicyBody::Valid(p) = &pol.body {
            for r in p.ingress.iter().chain(&p.egress) {
                for ps in &r.ports {
                    if let Some(PortRef::Numbers { first, last }) = &ps.port {
                        range(*first, *last);
                    }
                }
            }
        }
    }
    for q in index.pods() {
        for np in &q.named_ports {
            range(np.port, np.port);
        }
    }
    out
}

/// The tiers, literally (API): Admin ClusterNetworkPolicies by (priority, name),
/// each one's rules in order, the first matching rule decides (`Pass` skips the
/// rest of the Admin tier); then NetworkPolicy, which decides if it isolates the
/// pod in this direction; then the Baseline tier the same way (`Pass` falls
/// through); then allowed.
#[allow(clippy::too_many_arguments)]
fn tiers(
    index: &ClusterIndex,
    pod: &PodSpec,
    dir: Direction,
    peer: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: Option<u16>,
) -> Verdict {
    let ordered = index.cluster_policies_ordered();
    let ns_labels = index.namespace_labels(&pod.namespace);
    let decided = |allowed, decided_by, rule| Verdict {
        allowed,
        decided_by,
        rule,
        policies: Vec::new(),
    };
    for tier in [Tier::Admin, Tier::Baseline] {
        if tier == Tier::Baseline {
            // API: NetworkPolicy, between the two tiers, decides when it
            // isolates the pod (a ClusterNetworkPolicy alone never does).
            let (isolated, allowed, policies) =
                network_policy(index, pod, dir, peer, dst, proto, port);
            if isolated {
                return Verdict {
                    allowed,
                    decided_by: DecidedBy::NetworkPolicy,
                    rule: None,
                    policies,
                };
            }
        }
        let by = match tier {
            Tier::Admin => DecidedBy::Admin,
            Tier::Baseline => DecidedBy::Baseline,
        };
        'tier: for (name, cp) in ordered.iter().filter(|(_, cp)| cp.tier == tier) {
            if !cp.subject.selects(pod, &ns_labels) {
                continue;
            }
            for (i, rule) in cp.rules(dir).iter().enumerate() {
                let action = match rule.effect() {
                    RuleEffect::Skipped => continue,
                    RuleEffect::Peers(a) => {
                        if !rule
                            .peers
                            .iter()
                            .any(|p| cluster_peer_matches(index, p, peer))
                        {
                            continue;
                        }
                        a
                    }
                    RuleEffect::DenyEveryPeer => Action::Deny,
                };
                if !protocols_match(index, &rule.protocols, dir, pod, dst, proto, port) {
                    continue;
                }
                let r = RuleRef {
                    policy: name.to_string(),
                    rule_index: i,
                    rule_name: rule.name.clone(),
                    action,
                };
                match action {
                    Action::Accept => return decided(true, by, Some(r)),
                    Action::Deny => return decided(false, by, Some(r)),
                    // API: Pass skips the rest of this tier.
                    Action::Pass => break 'tier,
                }
            }
        }
    }
    decided(true, DecidedBy::Default, None)
}

/// API: peers of a ClusterNetworkPolicy rule. Pod peers never match host-network
/// pods; `networks` match any address, pod addresses included; `nodes` match the
/// addresses of matching Nodes; peers of no known type and `domainNames` match
/// nothing here (their rules' fail-closed handling is `ClusterRule::effect`).
fn cluster_peer_matches(index: &ClusterIndex, peer: &ClusterPeer, addr: IpAddr) -> bool {
    match peer {
        ClusterPeer::Namespaces(ns) => index
            .pods()
            .any(|q| owns(q, addr) && ns.matches(&index.namespace_labels(&q.namespace))),
        ClusterPeer::Pods { namespaces, pods } => index.pods().any(|q| {
            owns(q, addr)
                && pods.matches(&q.labels)
                && namespaces.matches(&index.namespace_labels(&q.namespace))
        }),
        ClusterPeer::Networks(nets) => nets.iter().any(|n| n.contains(&addr)),
        ClusterPeer::Nodes(sel) => index
            .nodes()
            .any(|n| sel.matches(&n.labels) && n.addresses.contains(&addr)),
        ClusterPeer::DomainNames(_) | ClusterPeer::Empty => false,
    }
}

/// API: no `protocols` = every protocol and port (ICMP too); otherwise any entry
/// matches: a protocol with its port or range, or a named port resolved on the
/// destination pod (ingress: the selected pod; egress: the pod owning `dst`) with
/// the container port's protocol.
#[allow(clippy::too_many_arguments)]
fn protocols_match(
    index: &ClusterIndex,
    protocols: &[ProtocolMatch],
    dir: Direction,
    pod: &PodSpec,
    dst: IpAddr,
    proto: u8,
    port: Option<u16>,
) -> bool {
    if protocols.is_empty() {
        return true;
    }
    let Some(x) = port else { return false };
    protocols.iter().any(|m| match m {
        ProtocolMatch::Ports {
            protocol,
            first,
            last,
        } => protocol.number() == proto && *first <= x && x <= *last,
        ProtocolMatch::Named(name) => {
            let resolves_on = |q: &PodSpec| {
                q.named_ports
                    .iter()
                    .any(|np| &np.name == name && np.protocol.number() == proto && np.port == x)
            };
            match dir {
                Direction::Ingress => resolves_on(pod),
                Direction::Egress => index.pods().filter(|q| owns(q, dst)).any(resolves_on),
            }
        }
    })
}

/// NetworkPolicy at `pod` in `dir`: (isolated, allowed, isolating policies).
#[allow(clippy::too_many_arguments)]
fn network_policy(
    index: &ClusterIndex,
    pod: &PodSpec,
    dir: Direction,
    peer: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: Option<u16>,
) -> (bool, bool, Vec<String>) {
    let mut isolating = Vec::new();
    let mut allowed = false;
    for pol in index.policies() {
        let p = match &pol.body {
            PolicyBody::Valid(p) => {
                // API: a policy applies when it is in the pod's namespace, its
                // podSelector selects the pod, and the direction is in its
                // policyTypes, as defaulted.
                if pol.namespace != pod.namespace
                    || pod.host_network
                    || !p.pod_selector.matches(&pod.labels)
                    || !isolates(p, dir)
                {
                    continue;
                }
                p
            }
            // Invalid: isolates what it would select, allows nothing.
            PolicyBody::Invalid(_) => {
                if pol.selects(pod, dir) {
                    isolating.push(pol.id());
                }
                continue;
            }
        };
        isolating.push(pol.id());
        let rules = match dir {
            Direction::Ingress => &p.ingress,
            Direction::Egress => &p.egress,
        };
        allowed = allowed
            || rules.iter().any(|rule| {
                rule_matches(
                    index,
                    &pol.namespace,
                    rule,
                    dir,
                    pod,
                    peer,
                    dst,
                    proto,
                    port,
                )
            });
    }
    (!isolating.is_empty(), allowed, isolating)
}

/// API server defaulting: `policyTypes` omitted or empty means Ingress, and
/// Egress too when the policy has at least one egress rule.
fn isolates(p: &Policy, dir: Direction) -> bool {
    match p.declared_types {
        Some(t) => t.has(dir),
        None => dir == Direction::Ingress || !p.egress.is_empty(),
    }
}

#[allow(clippy::too_many_arguments)]
fn rule_matches(
    index: &ClusterIndex,
    policy_ns: &str,
    rule: &Rule,
    dir: Direction,
    pod: &PodSpec,
    peer: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: Option<u16>,
) -> bool {
    // API: no from/to = all peers; otherwise any peer (OR).
    let peer_ok = rule.peers.is_empty()
        || rule
            .peers
            .iter()
            .any(|p| peer_matches(index, policy_ns, p, peer));
    if !peer_ok {
        return false;
    }
    // API: no ports = all ports and protocols.
    if rule.ports.is_empty() {
        return true;
    }
    rule.ports.iter().any(|ps| {
        if ps.protocol.number() != proto {
            return false;
        }
        match &ps.port {
            // API: protocol without port = every port of it (portless packets too).
            None => true,
            Some(PortRef::Numbers { first, last }) => {
                port.is_some_and(|x| *first <= x && x <= *last)
            }
            Some(PortRef::Named(name)) => {
                let Some(x) = port else { return false };
                // API: a named port resolves against the destination pod: for
                // ingress the selected pod, for egress the pod owning `dst`.
                let resolves_on = |q: &PodSpec| {
                    q.named_ports
                        .iter()
                        .any(|np| &np.name == name && np.protocol == ps.protocol && np.port == x)
                };
                match dir {
                    Direction::Ingress => resolves_on(pod),
                    Direction::Egress => index.pods().filter(|q| owns(q, dst)).any(resolves_on),
                }
            }
        }
    })
}

fn peer_matches(index: &ClusterIndex, policy_ns: &str, peer: &Peer, addr: IpAddr) -> bool {
    match peer {
        // API: ipBlock = cidr minus except; matches any address, pod IPs included.
        Peer::IpBlock(b) => b.cidr.contains(&addr) && !b.except.iter().any(|e| e.contains(&addr)),
        Peer::Pods { namespaces, pods } => index.pods().any(|q| {
            owns(q, addr)
                && pods.matches(&q.labels)
                && match namespaces {
                    // API: podSelector alone = the policy's namespace.
                    NamespaceScope::Own => q.namespace == policy_ns,
                    // API: namespaceSelector (AND podSelector when both are given).
                    NamespaceScope::Selector(s) => s.matches(&index.namespace_labels(&q.namespace)),
                }
        }),
    }
}
