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
//!
//! Files: this module walks the tiers; `network_policy` is the NetworkPolicy tier,
//! `cluster_policy` the matching of one ClusterNetworkPolicy rule, `verdict` the
//! packet and the answer. None of it uses the compiler's port sets or prefixes, so
//! that the differential tests compare two independent readings of the API.

mod cluster_policy;
mod network_policy;
mod verdict;

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::index::ClusterIndex;
use crate::model::{
    Action, Direction, PodSpec, PolicyBody, PortRef, Protocol, ProtocolMatch, RuleEffect, Tier,
};

use cluster_policy::{cluster_peer_matches, protocols_match};
use network_policy::network_policy;
pub(crate) use verdict::owns;
pub use verdict::{DecidedBy, Packet, RuleRef, Verdict};

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
    let packet = Packet {
        src,
        dst,
        proto,
        port,
    };
    egress_allowed(index, &packet) && ingress_allowed(index, node_addrs, &packet)
}

/// When `packet` is denied: the side that denies first as the datapath judges
/// (egress at the source, then ingress at the destination) and what decided.
pub fn denial(
    index: &ClusterIndex,
    node_addrs: &dyn Fn(&str) -> Vec<IpAddr>,
    packet: &Packet,
) -> Option<(Direction, DecidedBy)> {
    let egress = index
        .pods()
        .filter(|p| owns(p, packet.src))
        .map(|p| verdict(index, p, Direction::Egress, packet))
        .find(|v| !v.allowed)
        .map(|v| (Direction::Egress, v.decided_by));
    egress.or_else(|| {
        index
            .pods()
            .filter(|p| owns(p, packet.dst))
            .map(|p| ingress_verdict(index, node_addrs, p, packet))
            .find(|v| !v.allowed)
            .map(|v| (Direction::Ingress, v.decided_by))
    })
}

/// The egress half: judged at every policy pod owning `src`.
pub fn egress_allowed(index: &ClusterIndex, packet: &Packet) -> bool {
    index
        .pods()
        .filter(|p| owns(p, packet.src))
        .all(|p| verdict(index, p, Direction::Egress, packet).allowed)
}

/// The ingress half: judged at every policy pod owning `dst`.
pub fn ingress_allowed(
    index: &ClusterIndex,
    node_addrs: &dyn Fn(&str) -> Vec<IpAddr>,
    packet: &Packet,
) -> bool {
    index
        .pods()
        .filter(|p| owns(p, packet.dst))
        .all(|p| ingress_verdict(index, node_addrs, p, packet).allowed)
}

/// The ingress decision at `pod` (owning `packet.dst`) for a connection from
/// `packet.src`.
pub fn ingress_verdict(
    index: &ClusterIndex,
    node_addrs: &dyn Fn(&str) -> Vec<IpAddr>,
    pod: &PodSpec,
    packet: &Packet,
) -> Verdict {
    // API: an isolated pod still accepts connections from its own node; the
    // datapath applies this before any policy tier.
    let from_node = pod
        .node_name
        .as_deref()
        .is_some_and(|n| node_addrs(n).contains(&packet.src));
    if from_node {
        return Verdict {
            allowed: true,
            decided_by: DecidedBy::Node,
            rule: None,
            policies: Vec::new(),
            allowed_by: Vec::new(),
        };
    }
    verdict(index, pod, Direction::Ingress, packet)
}

/// The decision at `pod` in `dir`, where the peer is the other side
/// ([`Packet::peer`]) and `packet.dst` the destination address (whose pod
/// resolves named ports).
///
/// A packet without ports (`port: None`, a non-first fragment) of TCP/UDP/SCTP is
/// allowed only if every port of its protocol would be: the verdict is checked at
/// each port where any rule's port set starts or ends (it is constant between
/// those), and the first denial is returned.
pub fn verdict(index: &ClusterIndex, pod: &PodSpec, dir: Direction, packet: &Packet) -> Verdict {
    let ported = Protocol::from_number(packet.proto).is_some();
    if packet.port.is_some() || !ported || !index.has_cluster_policies() {
        return tiers(index, pod, dir, packet);
    }
    let mut first = None;
    for p in port_boundaries(index) {
        let v = tiers(index, pod, dir, &packet.with_port(Some(p)));
        if !v.allowed {
            return v;
        }
        first.get_or_insert(v);
    }
    first.unwrap_or_else(|| tiers(index, pod, dir, &packet.with_port(Some(0))))
}

/// Every port where some rule's port set can start or stop applying: 0, and for
/// every range of every policy its first port and the one after its last, and for
/// every named container port of every pod that port and the next.
fn port_boundaries(index: &ClusterIndex) -> BTreeSet<u16> {
    let mut out = BTreeSet::from([0u16]);
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
fn tiers(index: &ClusterIndex, pod: &PodSpec, dir: Direction, packet: &Packet) -> Verdict {
    let peer = packet.peer(dir);
    let ordered = index.cluster_policies_ordered();
    let ns_labels = index.namespace_labels(&pod.namespace);
    let decided = |allowed, decided_by, rule| Verdict {
        allowed,
        decided_by,
        rule,
        policies: Vec::new(),
        allowed_by: Vec::new(),
    };
    for tier in [Tier::Admin, Tier::Baseline] {
        if tier == Tier::Baseline {
            // API: NetworkPolicy, between the two tiers, decides when it
            // isolates the pod (a ClusterNetworkPolicy alone never does).
            let (policies, allowed_by) = network_policy(index, pod, dir, packet);
            if !policies.is_empty() {
                return Verdict {
                    allowed: !allowed_by.is_empty(),
                    decided_by: DecidedBy::NetworkPolicy,
                    rule: None,
                    policies,
                    allowed_by,
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
                if !protocols_match(index, &rule.protocols, dir, pod, packet) {
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
