//! ClusterNetworkPolicy rules in the reference evaluator, straight from the API
//! text: which addresses a rule's peers match and whether its `protocols` match
//! the packet. The tier walk that orders the rules is in [`mod@crate::reference`].

use std::net::IpAddr;

use crate::index::ClusterIndex;
use crate::model::{ClusterPeer, Direction, PodSpec, ProtocolMatch};
use crate::reference::verdict::{owns, Packet};

/// API: peers of a ClusterNetworkPolicy rule. Pod peers never match host-network
/// pods; `networks` match any address, pod addresses included; `nodes` match the
/// addresses of matching Nodes; peers of no known type and `domainNames` match
/// nothing here (their rules' fail-closed handling is `ClusterRule::effect`).
pub(super) fn cluster_peer_matches(index: &ClusterIndex, peer: &ClusterPeer, addr: IpAddr) -> bool {
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
pub(super) fn protocols_match(
    index: &ClusterIndex,
    protocols: &[ProtocolMatch],
    dir: Direction,
    pod: &PodSpec,
    packet: &Packet,
) -> bool {
    let Packet {
        dst, proto, port, ..
    } = *packet;
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
