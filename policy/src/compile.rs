//! Compilation for one node: which local pods are isolated per direction, and per
//! pod and direction the allowed peers (address sets) with their protocol/port sets.
//!
//! The output ([`Desired`], [`mod@crate::desired`]) is still in host terms
//! (networks, port sets); turning it into LPM entries with exact longest-prefix
//! semantics is [`mod@crate::encode`]'s job. ClusterNetworkPolicy tiers are resolved
//! into the same output by [`mod@crate::tiers`]. [`compile`] does a whole node;
//! the incremental [`crate::Compiler`] calls `compile_endpoint` for the
//! endpoints a change can affect.
//!
//! Services: the datapath decides pod egress to a Service *after* kube-proxy's DNAT
//! on the node (`svc_egress`), i.e. against the backend pod kube-proxy chose. So the
//! egress rules compiled here are about backend pods exactly as for direct traffic,
//! and the only service output is the table of frontends (every ClusterIP x port x
//! protocol, all namespaces) whose decision the datapath must defer. This is exact
//! even when only some backends of a Service are allowed.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::desired::{Desired, DesiredEndpoint, Grant, ServiceFrontend};
use crate::index::ClusterIndex;
use crate::model::{Direction, Peer, PodSpec, PolicyBody, PortRef, PortSpec, Protocol, Rule};
use crate::peers::{PeerCache, RuleAt};
use crate::portset::PortSet;

/// The node being compiled for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
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
                let at = RuleAt {
                    policy: pol,
                    dir,
                    index: ri,
                };
                rule_grants(index, cache, at, rule, pod, &mut rules.grants);
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

/// The grants of `rule` (at `at`) for the selected local pod `local`.
fn rule_grants(
    index: &ClusterIndex,
    cache: &mut PeerCache,
    at: RuleAt<'_>,
    rule: &Rule,
    local: &PodSpec,
    out: &mut Vec<Grant>,
) {
    let (numeric, named) = split_ports(&rule.ports);
    match at.dir {
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
                        let m = cache.pod_peer(index, at, pi, namespaces, pods);
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
                        let m = cache.pod_peer(index, at, pi, namespaces, pods);
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
