//! The reference evaluator: a deliberately simple second implementation that answers
//! "is this new connection allowed?" straight from the NetworkPolicy text, with no
//! compilation, prefixes or caches. It is the oracle of the differential tests and
//! the basis of explanations.
//!
//! Semantics are those of direct pod-to-pod traffic (for Services: the backend pod
//! kube-proxy chose). A connection `src -> dst` is allowed iff
//! - egress: `src` is not a policy pod, or no policy selecting it has Egress, or some
//!   egress rule of such a policy matches (`dst`, proto, port); and
//! - ingress: `dst` is not a policy pod, or `src` is an address of `dst`'s node (API:
//!   an isolated pod accepts connections from its node), or no policy selecting it
//!   has Ingress, or some ingress rule of such a policy matches (`src`, proto, port).
//!
//! A "policy pod" is a pod that is not hostNetwork and has the address. Should two
//! pods claim one address, each must allow (both are judged).

use std::net::IpAddr;

use crate::index::ClusterIndex;
use crate::model::{Direction, NamespaceScope, Peer, PodSpec, Policy, PolicyBody, PortRef, Rule};

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
        .all(|p| direction_allows(index, p, Direction::Egress, dst, dst, proto, port))
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
    index.pods().filter(|p| owns(p, dst)).all(|p| {
        // API: an isolated pod still accepts connections from its own node.
        let from_node = p
            .node_name
            .as_deref()
            .is_some_and(|n| node_addrs(n).contains(&src));
        from_node || direction_allows(index, p, Direction::Ingress, src, dst, proto, port)
    })
}

fn owns(p: &PodSpec, ip: IpAddr) -> bool {
    !p.host_network && p.ips.contains(&ip)
}

/// Whether `pod` allows the connection in `dir`, where `peer` is the other side and
/// `dst` the destination address (whose pod resolves named ports).
#[allow(clippy::too_many_arguments)]
fn direction_allows(
    index: &ClusterIndex,
    pod: &PodSpec,
    dir: Direction,
    peer: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: Option<u16>,
) -> bool {
    let mut isolated = false;
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
                isolated |= pol.selects(pod, dir);
                continue;
            }
        };
        isolated = true;
        let rules = match dir {
            Direction::Ingress => &p.ingress,
            Direction::Egress => &p.egress,
        };
        for rule in rules {
            if rule_matches(
                index,
                &pol.namespace,
                rule,
                dir,
                pod,
                peer,
                dst,
                proto,
                port,
            ) {
                return true;
            }
        }
    }
    !isolated
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
