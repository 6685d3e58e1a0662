//! The NetworkPolicy tier of the reference evaluator, straight from the API text:
//! which policies isolate a pod in a direction, and whether a rule of one of them
//! matches the packet.

use std::net::IpAddr;

use crate::index::ClusterIndex;
use crate::model::{Direction, NamespaceScope, Peer, PodSpec, Policy, PolicyBody, PortRef, Rule};
use crate::reference::verdict::{owns, Packet};

/// NetworkPolicy at `pod` in `dir`: the isolating policies, and of those the
/// ones with a rule that allows `packet` (API: the union of what they allow).
pub(super) fn network_policy(
    index: &ClusterIndex,
    pod: &PodSpec,
    dir: Direction,
    packet: &Packet,
) -> (Vec<String>, Vec<String>) {
    let mut isolating = Vec::new();
    let mut allowing = Vec::new();
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
        if rules
            .iter()
            .any(|rule| rule_matches(index, &pol.namespace, rule, dir, pod, packet))
        {
            allowing.push(pol.id());
        }
    }
    (isolating, allowing)
}

/// API server defaulting: `policyTypes` omitted or empty means Ingress, and
/// Egress too when the policy has at least one egress rule.
fn isolates(p: &Policy, dir: Direction) -> bool {
    match p.declared_types {
        Some(t) => t.has(dir),
        None => dir == Direction::Ingress || !p.egress.is_empty(),
    }
}

/// Whether `rule` of a policy in `policy_ns`, selecting `pod` in `dir`, matches
/// `packet`.
fn rule_matches(
    index: &ClusterIndex,
    policy_ns: &str,
    rule: &Rule,
    dir: Direction,
    pod: &PodSpec,
    packet: &Packet,
) -> bool {
    let Packet {
        dst, proto, port, ..
    } = *packet;
    let peer = packet.peer(dir);
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

/// Whether `addr` is one of `peer`'s.
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
