//! Compilation for one node: which local pods are isolated per direction, and per
//! pod and direction the allowed peers (address sets) with their protocol/port sets.
//!
//! The output ([`Desired`]) is still in host terms (networks, port sets); turning it
//! into LPM entries with exact longest-prefix semantics is [`mod@crate::encode`]'s job.
//! ClusterNetworkPolicy tiers are resolved into the same output by
//! [`mod@crate::tiers`].
//!
//! Services: the datapath decides pod egress to a Service *after* kube-proxy's DNAT
//! on the node (`svc_egress`), i.e. against the backend pod kube-proxy chose. So the
//! egress rules compiled here are about backend pods exactly as for direct traffic,
//! and the only service output is the table of frontends (every ClusterIP x port x
//! protocol, all namespaces) whose decision the datapath must defer. This is exact
//! even when only some backends of a Service are allowed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use crate::portset::PortSet;
use ipnet::IpNet;

use crate::index::ClusterIndex;
use crate::model::{
    Direction, NamespaceScope, NetworkPolicySpec, Peer, PodKey, PodSpec, PolicyBody, PortRef,
    PortSpec, Protocol, Rule,
};

/// The node being compiled for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
}

/// Peers `net` minus `except`, allowed on `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    pub net: IpNet,
    pub except: Vec<IpNet>,
    pub ports: PortSet,
}

/// Everything allowed in one direction: the union of the grants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerRules {
    pub grants: Vec<Grant>,
}

impl PeerRules {
    /// Whether `peer` on `(proto, port)` is allowed by some grant (host-side
    /// semantics, used in tests against the encoded form).
    pub fn allows(&self, peer: IpAddr, proto: u8, port: Option<u16>) -> bool {
        self.grants.iter().any(|g| {
            g.net.contains(&peer)
                && !g.except.iter().any(|e| e.contains(&peer))
                && g.ports.allows(proto, port)
        })
    }
}

/// What one local pod needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredEndpoint {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    /// Meaningful only when isolated in that direction.
    pub ingress: PeerRules,
    pub egress: PeerRules,
    /// `"ns/name"` of the policies selecting the pod per direction (invalid ones
    /// included: they isolate and allow nothing).
    pub ingress_policies: Vec<String>,
    pub egress_policies: Vec<String>,
    /// Names of the ClusterNetworkPolicies with rules applying to the pod per
    /// direction, in evaluation order. When non-empty the direction is isolated and
    /// its grants are the tiers' final result ([`mod@crate::tiers`]).
    pub ingress_cluster_policies: Vec<String>,
    pub egress_cluster_policies: Vec<String>,
}

/// A Service frontend whose egress decision the datapath defers until after DNAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceFrontend {
    pub ip: IpAddr,
    pub proto: u8,
    pub port: u16,
}

/// The desired state of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Local pods (on this node, not hostNetwork, with an address).
    pub endpoints: BTreeMap<PodKey, DesiredEndpoint>,
    /// ClusterIPs x service ports, all namespaces.
    pub services: BTreeSet<ServiceFrontend>,
}

/// Whether `pod` is one of `node`'s endpoints.
pub fn is_local(pod: &PodSpec, node: &NodeInfo) -> bool {
    pod.is_policy_pod() && pod.node_name.as_deref() == Some(node.name.as_str())
}

/// Compile the whole desired state of `node`.
pub fn compile(index: &ClusterIndex, node: &NodeInfo) -> Desired {
    let mut cache = PeerCache::default();
    let endpoints = index
        .pods_on_node(&node.name)
        .filter(|p| is_local(p, node))
        .map(|p| (p.key(), compile_endpoint(index, p, &mut cache)))
        .collect();
    Desired {
        endpoints,
        services: service_frontends(index),
    }
}

/// Every service frontend of the cluster.
pub fn service_frontends(index: &ClusterIndex) -> BTreeSet<ServiceFrontend> {
    let mut out = BTreeSet::new();
    for s in index.services() {
        for ip in &s.cluster_ips {
            for (proto, port) in &s.ports {
                out.insert(ServiceFrontend {
                    ip: *ip,
                    proto: proto.number(),
                    port: *port,
                });
            }
        }
    }
    out
}

/// Pods a pod-selector peer matched: `(address, pod key)` pairs. Cached per
/// compilation because many endpoints share the same policies.
#[derive(Default)]
pub(crate) struct PeerCache {
    peers: HashMap<PeerId, PeerPods>,
    /// ClusterNetworkPolicy rule peers as prefixes, by ("cnp/name", direction,
    /// rule index, 0).
    pub(crate) cluster: HashMap<PeerId, std::rc::Rc<Vec<IpNet>>>,
}

/// (policy "ns/name", direction, rule index, peer index).
type PeerId = (String, Direction, usize, usize);
type PeerPods = std::rc::Rc<Vec<(IpAddr, PodKey)>>;

/// Pods matched by a pod peer of a policy in `policy_ns` (API: podSelector alone =
/// the policy's namespace; namespaceSelector alone = all pods of matching
/// namespaces; both = AND; hostNetwork pods and pods without address never match).
pub(crate) fn pod_peer_matches<'a>(
    index: &'a ClusterIndex,
    policy_ns: &str,
    namespaces: &NamespaceScope,
    pods: &crate::selector::LabelSelector,
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

#[allow(clippy::too_many_arguments)]
fn cached_peer(
    index: &ClusterIndex,
    cache: &mut PeerCache,
    pol: &NetworkPolicySpec,
    dir: Direction,
    rule_i: usize,
    peer_i: usize,
    namespaces: &NamespaceScope,
    pods: &crate::selector::LabelSelector,
) -> PeerPods {
    let key = (pol.id(), dir, rule_i, peer_i);
    if let Some(v) = cache.peers.get(&key) {
        return v.clone();
    }
    let v: Vec<(IpAddr, PodKey)> = pod_peer_matches(index, &pol.namespace, namespaces, pods)
        .into_iter()
        .flat_map(|q| q.ips.iter().map(move |ip| (*ip, q.key())))
        .collect();
    let v = std::rc::Rc::new(v);
    cache.peers.insert(key, v.clone());
    v
}

/// Numeric part of a rule's ports, and its named ports.
fn split_ports(ports: &[PortSpec]) -> (PortSet, Vec<(Protocol, &str)>) {
    if ports.is_empty() {
        // API: a rule without ports allows all ports and protocols.
        return (PortSet::everything(), Vec::new());
    }
    let mut numeric = PortSet::default();
    let mut named = Vec::new();
    for p in ports {
        match &p.port {
            None => numeric.add_all_ports(p.protocol),
            Some(PortRef::Numbers { first, last }) => numeric.add_range(p.protocol, *first, *last),
            Some(PortRef::Named(n)) => named.push((p.protocol, n.as_str())),
        }
    }
    (numeric, named)
}

/// Named ports resolved against the destination pod (API: named ports resolve
/// against the destination pod's container ports).
fn resolve_named(named: &[(Protocol, &str)], dst: &PodSpec) -> PortSet {
    let mut s = PortSet::default();
    for (proto, name) in named {
        for port in dst.resolve_named_port(name, *proto) {
            s.add_range(*proto, port, port);
        }
    }
    s
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

fn all_nets() -> [IpNet; 2] {
    [
        IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ]
}

/// Compile one local pod.
pub(crate) fn compile_endpoint(
    index: &ClusterIndex,
    pod: &PodSpec,
    cache: &mut PeerCache,
) -> DesiredEndpoint {
    let mut ep = DesiredEndpoint {
        ipv4: pod.ipv4(),
        ipv6: pod.ipv6(),
        ..Default::default()
    };
    for pol in index.policies_in(&pod.namespace) {
        for dir in Direction::BOTH {
            if !pol.selects(pod, dir) {
                continue;
            }
            // API: a pod is isolated in a direction when any policy selecting it
            // has that direction in policyTypes.
            let (iso, rules, names) = match dir {
                Direction::Ingress => (
                    &mut ep.ingress_isolated,
                    &mut ep.ingress,
                    &mut ep.ingress_policies,
                ),
                Direction::Egress => (
                    &mut ep.egress_isolated,
                    &mut ep.egress,
                    &mut ep.egress_policies,
                ),
            };
            *iso = true;
            names.push(pol.id());
            // An invalid policy isolates and allows nothing (fail closed).
            let PolicyBody::Valid(p) = &pol.body else {
                continue;
            };
            for (ri, rule) in p.rules(dir).iter().enumerate() {
                rule_grants(index, cache, pol, dir, ri, rule, pod, &mut rules.grants);
            }
        }
    }
    ep.ingress.grants.sort();
    ep.ingress.grants.dedup();
    ep.egress.grants.sort();
    ep.egress.grants.dedup();
    crate::tiers::apply_tiers(index, cache, pod, &mut ep);
    ep
}

#[allow(clippy::too_many_arguments)]
fn rule_grants(
    index: &ClusterIndex,
    cache: &mut PeerCache,
    pol: &NetworkPolicySpec,
    dir: Direction,
    rule_i: usize,
    rule: &Rule,
    local: &PodSpec,
    out: &mut Vec<Grant>,
) {
    let (numeric, named) = split_ports(&rule.ports);
    match dir {
        Direction::Ingress => {
            // Ingress: the destination is the selected local pod itself.
            let mut ports = numeric;
            ports.union_with(&resolve_named(&named, local));
            if ports.is_empty() {
                return;
            }
            if rule.peers.is_empty() {
                // API: a rule without `from` matches all sources.
                for net in all_nets() {
                    out.push(Grant {
                        net,
                        except: Vec::new(),
                        ports: ports.clone(),
                    });
                }
                return;
            }
            for (pi, peer) in rule.peers.iter().enumerate() {
                match peer {
                    Peer::Pods { namespaces, pods } => {
                        let m = cached_peer(index, cache, pol, dir, rule_i, pi, namespaces, pods);
                        for (ip, _) in m.iter() {
                            out.push(Grant {
                                net: host_net(*ip),
                                except: Vec::new(),
                                ports: ports.clone(),
                            });
                        }
                    }
                    Peer::IpBlock(b) => out.push(Grant {
                        net: b.cidr,
                        except: b.except.clone(),
                        ports: ports.clone(),
                    }),
                }
            }
        }
        Direction::Egress => {
            // Egress: named ports resolve against each destination pod, so they
            // become per-pod host entries. For ipBlock (and all-peer) rules a named
            // port can only match destinations that are pods inside the block
            // (minus except) having that named port; other addresses have no
            // container ports to resolve against.
            let push_named = |ip: IpAddr, q: &PodSpec, out: &mut Vec<Grant>| {
                let ports = resolve_named(&named, q);
                if !ports.is_empty() {
                    out.push(Grant {
                        net: host_net(ip),
                        except: Vec::new(),
                        ports,
                    });
                }
            };
            if rule.peers.is_empty() {
                // API: a rule without `to` matches all destinations.
                for net in all_nets() {
                    if !numeric.is_empty() {
                        out.push(Grant {
                            net,
                            except: Vec::new(),
                            ports: numeric.clone(),
                        });
                    }
                    if !named.is_empty() {
                        for (ip, q) in index.pods_in_net(net) {
                            push_named(ip, q, out);
                        }
                    }
                }
                return;
            }
            for (pi, peer) in rule.peers.iter().enumerate() {
                match peer {
                    Peer::Pods { namespaces, pods } => {
                        let m = cached_peer(index, cache, pol, dir, rule_i, pi, namespaces, pods);
                        for (ip, key) in m.iter() {
                            let mut ports = numeric.clone();
                            if !named.is_empty() {
                                if let Some(q) = index.pod(key) {
                                    ports.union_with(&resolve_named(&named, q));
                                }
                            }
                            if !ports.is_empty() {
                                out.push(Grant {
                                    net: host_net(*ip),
                                    except: Vec::new(),
                                    ports,
                                });
                            }
                        }
                    }
                    Peer::IpBlock(b) => {
                        if !numeric.is_empty() {
                            out.push(Grant {
                                net: b.cidr,
                                except: b.except.clone(),
                                ports: numeric.clone(),
                            });
                        }
                        if !named.is_empty() {
                            for (ip, q) in index.pods_in_net(b.cidr) {
                                if !b.except.iter().any(|e| e.contains(&ip)) {
                                    push_named(ip, q, out);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
