//! ClusterNetworkPolicy compilation: the Admin tier, NetworkPolicy and the Baseline
//! tier resolved in user space into the same per-endpoint, per-direction output as
//! NetworkPolicy alone, so the datapath still does one longest-prefix lookup and
//! one port/protocol scan per new packet.
//!
//! A direction of an endpoint that some ClusterNetworkPolicy rule applies to (its
//! subject selects the pod and it has rules in that direction) is isolated in the
//! output, and its grants encode the final allowed set (API: a cluster policy alone
//! does not isolate a pod for NetworkPolicy purposes; the tiers decide, and what
//! none decides is allowed, so such a direction carries explicit allows).
//! Directions no cluster policy applies to are left exactly as NetworkPolicy made
//! them.
//!
//! Method. Let U be every prefix that matters: each rule's peer prefixes (pod and
//! node addresses as host prefixes, `networks` CIDRs), each NetworkPolicy grant
//! network and except, the host prefix of every pod an egress named port may
//! resolve on, and `0.0.0.0/0`, `::/0`. Prefixes form a laminar family (any two are
//! nested or disjoint), so for an address whose longest match in U is P, the rules
//! and grants covering the address are exactly those covering P. The tiers are
//! therefore evaluated once per P and per disjoint port piece (each protocol's port
//! space split at every rule and grant boundary, plus one piece for the protocols
//! without ports), giving P's final allowed set F(P). The output holds, for each P
//! whose F differs from its nearest kept ancestor's, a grant `P` minus its kept
//! children with ports F(P): under the union semantics of
//! [`crate::encode::lpm_entries`] every address then gets exactly F of its longest
//! match. F also carries, for what it does not allow, the tier that denies it
//! (`admin-deny`, `no-policy-allows` when NetworkPolicy decides, `baseline-deny`),
//! so the datapath reports the tier of a drop without walking tiers.
//!
//! Named ports resolve on the destination pod (API): for ingress the endpoint
//! itself, for egress the pod owning P (P a host prefix; no pod, no named port).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::rc::Rc;

use ipnet::IpNet;
use palisade_common::{Reason, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use crate::desired::{DesiredEndpoint, Grant};
use crate::encode::net_order;
use crate::index::ClusterIndex;
use crate::model::{
    Action, ClusterPeer, Direction, NamespaceScope, PodSpec, ProtocolMatch, RuleEffect, Tier,
};
use crate::object::PodKey;
use crate::peers::{pod_peer_matches, PeerCache};
use crate::portset::{DenyReasons, PortSet};
use crate::selector::LabelSelector;

/// One applicable rule, reduced to what resolution needs.
struct TierRule {
    tier: Tier,
    action: Action,
    nets: Rc<Vec<IpNet>>,
    /// `None`: every protocol and port (no `protocols`).
    ports: Option<RulePorts>,
}

struct RulePorts {
    /// `(protocol number, first, last)`.
    numeric: Vec<(u8, u16, u16)>,
    named: Vec<String>,
}

impl TierRule {
    /// Whether the rule's protocols match `(proto, port)`; `target` resolves named
    /// ports.
    fn matches(&self, proto: u8, port: Option<u16>, target: Option<&PodSpec>) -> bool {
        let Some(p) = &self.ports else { return true };
        let Some(x) = port else { return false };
        p.numeric
            .iter()
            .any(|&(q, f, l)| q == proto && f <= x && x <= l)
            || target.is_some_and(|t| {
                p.named.iter().any(|n| {
                    t.named_ports
                        .iter()
                        .any(|np| &np.name == n && np.protocol.number() == proto && np.port == x)
                })
            })
    }
}

fn roots() -> Vec<IpNet> {
    vec![
        IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ]
}

fn hosts(ips: impl IntoIterator<Item = IpAddr>) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = ips.into_iter().map(IpNet::from).collect();
    v.sort_by_key(net_order);
    v.dedup();
    v
}

/// Addresses a peer matches, as prefixes (API: pod peers never match host-network
/// pods; `networks` match pod addresses too; `nodes` match Node addresses).
fn peer_nets(index: &ClusterIndex, peer: &ClusterPeer) -> Vec<IpNet> {
    let pods = |ns: &LabelSelector, pods: &LabelSelector| {
        let scope = NamespaceScope::Selector(ns.clone());
        hosts(
            pod_peer_matches(index, "", &scope, pods)
                .into_iter()
                .flat_map(|q| q.ips.iter().copied()),
        )
    };
    match peer {
        ClusterPeer::Namespaces(ns) => pods(ns, &LabelSelector::everything()),
        ClusterPeer::Pods {
            namespaces,
            pods: p,
        } => pods(namespaces, p),
        ClusterPeer::Networks(nets) => nets.clone(),
        ClusterPeer::Nodes(sel) => hosts(
            index
                .nodes()
                .filter(|n| sel.matches(&n.labels))
                .flat_map(|n| n.addresses.iter().copied()),
        ),
        ClusterPeer::DomainNames(_) | ClusterPeer::Empty => Vec::new(),
    }
}

/// The applicable rules of `pod` in `dir`, in precedence order, and the names of
/// the policies they come from.
fn applicable(
    index: &ClusterIndex,
    cache: &mut PeerCache,
    pod: &PodSpec,
    dir: Direction,
) -> (Vec<TierRule>, Vec<String>) {
    let ns_labels = index.namespace_labels(&pod.namespace);
    let mut rules = Vec::new();
    let mut names = Vec::new();
    // Admin before Baseline; within a tier (priority, name); then rule order.
    for (name, cp) in index.cluster_policies_ordered() {
        if !cp.subject.selects(pod, &ns_labels) || cp.rules(dir).is_empty() {
            continue;
        }
        names.push(name.to_string());
        for (ri, rule) in cp.rules(dir).iter().enumerate() {
            let (action, nets) = match rule.effect() {
                RuleEffect::Skipped => continue,
                RuleEffect::DenyEveryPeer => (Action::Deny, Rc::new(roots())),
                RuleEffect::Peers(a) => {
                    let key = (format!("cnp/{name}"), dir, ri, 0);
                    let nets = match cache.cluster.get(&key) {
                        Some(n) => n.clone(),
                        None => {
                            let mut v: Vec<IpNet> = rule
                                .peers
                                .iter()
                                .flat_map(|p| peer_nets(index, p))
                                .collect();
                            v.sort_by_key(net_order);
                            v.dedup();
                            let v = Rc::new(v);
                            cache.cluster.insert(key, v.clone());
                            v
                        }
                    };
                    (a, nets)
                }
            };
            let ports = (!rule.protocols.is_empty()).then(|| {
                let mut p = RulePorts {
                    numeric: Vec::new(),
                    named: Vec::new(),
                };
                for m in &rule.protocols {
                    match m {
                        ProtocolMatch::Ports {
                            protocol,
                            first,
                            last,
                        } => p.numeric.push((protocol.number(), *first, *last)),
                        ProtocolMatch::Named(n) => p.named.push(n.clone()),
                    }
                }
                p
            });
            rules.push(TierRule {
                tier: cp.tier,
                action,
                nets,
                ports,
            });
        }
    }
    (rules, names)
}

/// Apply the cluster policy tiers to a compiled endpoint (NetworkPolicy grants and
/// isolation already in `ep`).
pub(crate) fn apply_tiers(
    index: &ClusterIndex,
    cache: &mut PeerCache,
    pod: &PodSpec,
    ep: &mut DesiredEndpoint,
) {
    if !index.has_cluster_policies() {
        return;
    }
    for dir in Direction::BOTH {
        let (rules, names) = applicable(index, cache, pod, dir);
        if rules.is_empty() {
            continue;
        }
        let (iso, peer_rules, cnp_names) = match dir {
            Direction::Ingress => (
                &mut ep.ingress_isolated,
                &mut ep.ingress,
                &mut ep.ingress_cluster_policies,
            ),
            Direction::Egress => (
                &mut ep.egress_isolated,
                &mut ep.egress,
                &mut ep.egress_cluster_policies,
            ),
        };
        let np = (*iso).then_some(peer_rules.grants.as_slice());
        let grants = resolve(index, pod, dir, &rules, np);
        *iso = true;
        peer_rules.grants = grants;
        *cnp_names = names;
    }
}

/// Per-prefix bookkeeping of the walk over U.
#[derive(Default)]
struct Node {
    rules: Vec<usize>,
    grants: Vec<usize>,
    excepts: Vec<usize>,
}

type Nodes = BTreeMap<(u8, u128, u8), (IpNet, Node)>;

/// (covering rules, NetworkPolicy set, target pod when named ports matter).
type MemoKey = (Vec<usize>, Option<PortSet>, Option<PodKey>);

fn node(nodes: &mut Nodes, net: IpNet) -> &mut Node {
    let net = net.trunc();
    &mut nodes
        .entry(net_order(&net))
        .or_insert_with(|| (net, Node::default()))
        .1
}

struct Frame {
    net: IpNet,
    rules: Vec<usize>,
    grants: Vec<usize>,
    value: PortSet,
    /// Index in the output of the nearest kept prefix containing this one (itself
    /// when kept).
    kept: usize,
}

/// The exact grants of one direction (module docs). `np`: the NetworkPolicy
/// grants when NetworkPolicy isolates the direction.
fn resolve(
    index: &ClusterIndex,
    pod: &PodSpec,
    dir: Direction,
    rules: &[TierRule],
    np: Option<&[Grant]>,
) -> Vec<Grant> {
    let mut nodes: Nodes = BTreeMap::new();
    for r in roots() {
        node(&mut nodes, r);
    }
    for (i, r) in rules.iter().enumerate() {
        for n in r.nets.iter() {
            node(&mut nodes, *n).rules.push(i);
        }
        // Egress named ports resolve on the pod at each address: give every pod a
        // rule may cover its own prefix.
        let named = r.ports.as_ref().is_some_and(|p| !p.named.is_empty());
        if named && dir == Direction::Egress {
            for n in r.nets.iter() {
                for (ip, _) in index.pods_in_net(*n) {
                    node(&mut nodes, IpNet::from(ip));
                }
            }
        }
    }
    for (gi, g) in np.unwrap_or(&[]).iter().enumerate() {
        node(&mut nodes, g.net).grants.push(gi);
        for e in &g.except {
            node(&mut nodes, *e).excepts.push(gi);
        }
    }
    let np_grants = np.unwrap_or(&[]);
    let mut memo: HashMap<MemoKey, PortSet> = HashMap::new();
    let mut out: Vec<Grant> = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    for (_, (net, n)) in nodes {
        while stack.last().is_some_and(|f| !f.net.contains(&net)) {
            stack.pop();
        }
        let parent = stack.last();
        let mut covering: Vec<usize> = parent.map(|f| f.rules.clone()).unwrap_or_default();
        covering.extend(n.rules);
        covering.sort_unstable();
        covering.dedup();
        let mut grants: Vec<usize> = parent.map(|f| f.grants.clone()).unwrap_or_default();
        grants.retain(|g| !n.excepts.contains(g));
        grants.extend(n.grants);
        grants.sort_unstable();
        grants.dedup();
        let np_set = np.map(|_| {
            let mut s = PortSet::default();
            for &g in &grants {
                s.union_with(&np_grants[g].ports);
            }
            s
        });
        let target = match dir {
            Direction::Ingress => Some(pod),
            Direction::Egress => host_addr(&net).and_then(|a| index.pods_by_ip(a).next()),
        };
        // Many prefixes (every pod of a namespaces peer) share rules and grants:
        // evaluate each combination once. The target pod matters only to named
        // ports of egress rules.
        let named = dir == Direction::Egress
            && covering
                .iter()
                .any(|&i| rules[i].ports.as_ref().is_some_and(|p| !p.named.is_empty()));
        let key = (
            covering.clone(),
            np_set.clone(),
            target.filter(|_| named).map(PodSpec::key),
        );
        let value = match memo.get(&key) {
            Some(v) => v.clone(),
            None => {
                let covering_rules: Vec<&TierRule> = covering.iter().map(|&i| &rules[i]).collect();
                let v = final_set(&covering_rules, np_set.as_ref(), target);
                memo.insert(key, v.clone());
                v
            }
        };
        let kept = match parent {
            Some(f) if f.value == value => f.kept,
            _ => {
                if let Some(f) = parent {
                    out[f.kept].except.push(net);
                }
                out.push(Grant {
                    net,
                    except: Vec::new(),
                    ports: value.clone(),
                });
                out.len() - 1
            }
        };
        stack.push(Frame {
            net,
            rules: covering,
            grants,
            value,
            kept,
        });
    }
    out
}

fn host_addr(net: &IpNet) -> Option<IpAddr> {
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}

/// The tiers for one prefix, piece by piece: what is allowed at addresses whose
/// longest match it is, and why the rest is denied (the datapath's reason).
fn final_set(rules: &[&TierRule], np: Option<&PortSet>, target: Option<&PodSpec>) -> PortSet {
    let mut out = PortSet::default();
    let mut ranges = Vec::new();
    // Denied pieces in port order, `(protocol, first, last, reason)`.
    let mut denied: Vec<(u8, u16, u16, Reason)> = Vec::new();
    for proto in [PROTO_TCP, PROTO_UDP, PROTO_SCTP] {
        // Every port where some rule or grant can start or stop applying.
        let mut cuts: Vec<u32> = vec![0];
        let mut cut = |f: u16, l: u16| {
            cuts.push(u32::from(f));
            cuts.push(u32::from(l) + 1);
        };
        for r in rules {
            let Some(p) = &r.ports else { continue };
            for &(q, f, l) in &p.numeric {
                if q == proto {
                    cut(f, l);
                }
            }
            if let Some(t) = target {
                for np in &t.named_ports {
                    if np.protocol.number() == proto && p.named.contains(&np.name) {
                        cut(np.port, np.port);
                    }
                }
            }
        }
        if let Some(s) = np {
            for &(q, f, l) in &s.ranges {
                if q == proto {
                    cut(f, l);
                }
            }
        }
        cuts.push(65536);
        cuts.sort_unstable();
        cuts.dedup();
        for w in cuts.windows(2) {
            // Pieces lie within 0..=65535 (the last cut is 65536).
            let (lo, hi) = (w[0] as u16, (w[1] - 1) as u16);
            match decide(rules, np, target, proto, Some(lo)) {
                None => ranges.push((proto, lo, hi)),
                Some(r) => denied.push((proto, lo, hi, r)),
            }
        }
    }
    let other = decide(rules, np, target, PROTO_ICMP, None);
    if other.is_none() {
        out.add_other();
    }
    out.add_ranges(ranges);
    if !out.all {
        out.set_deny(deny_reasons(&denied, other));
    }
    out
}

/// The denied pieces as the datapath holds them: the reason of the most runs as
/// the default, the others as ranges (a run may span allowed ports, which the
/// datapath tests first).
fn deny_reasons(denied: &[(u8, u16, u16, Reason)], other: Option<Reason>) -> DenyReasons {
    let mut runs: Vec<(u8, u16, u16, Reason)> = Vec::new();
    for &(p, f, l, r) in denied {
        match runs.last_mut() {
            Some(last) if last.0 == p && last.3 == r => last.2 = l,
            _ => runs.push((p, f, l, r)),
        }
    }
    let mut counts: BTreeMap<u8, usize> = BTreeMap::new();
    for &(_, _, _, r) in &runs {
        *counts.entry(DenyReasons::code(r)).or_default() += 1;
    }
    if let Some(r) = other {
        *counts.entry(DenyReasons::code(r)).or_default() += 1;
    }
    // Most runs first, then the lowest code.
    let default = counts
        .iter()
        .max_by_key(|&(code, n)| (*n, std::cmp::Reverse(*code)))
        .map_or(0, |(code, _)| *code);
    DenyReasons {
        default,
        other: other.map_or(0, DenyReasons::code),
        ranges: runs
            .into_iter()
            .map(|(p, f, l, r)| (p, f, l, r as u8))
            .filter(|&(_, _, _, code)| DenyReasons::code_of(code) != default)
            .collect(),
    }
}

/// One packet against the tiers (API): Admin in precedence order, the first
/// matching rule decides and `Pass` leaves the tier; NetworkPolicy decides when it
/// isolates; then Baseline the same way; then allowed. `None`: allowed;
/// otherwise the reason of the drop.
fn decide(
    rules: &[&TierRule],
    np: Option<&PortSet>,
    target: Option<&PodSpec>,
    proto: u8,
    port: Option<u16>,
) -> Option<Reason> {
    for tier in [Tier::Admin, Tier::Baseline] {
        if tier == Tier::Baseline {
            if let Some(s) = np {
                return (!s.allows(proto, port)).then_some(Reason::NoPolicyAllows);
            }
        }
        for r in rules.iter().filter(|r| r.tier == tier) {
            if !r.matches(proto, port, target) {
                continue;
            }
            match r.action {
                Action::Accept => return None,
                Action::Deny => {
                    return Some(match tier {
                        Tier::Admin => Reason::AdminDeny,
                        Tier::Baseline => Reason::BaselineDeny,
                    })
                }
                Action::Pass => break,
            }
        }
    }
    None
}
