//! Differential property test: random clusters and policies (NetworkPolicies and,
//! in three quarters of the cases, ClusterNetworkPolicies of both tiers with Nodes),
//! compiled per node and looked up the way the datapath does (endpoint flags,
//! longest prefix, then the protocol/port set), must agree with the reference
//! evaluator for random connections. Also: the incremental `Compiler` must produce exactly the full
//! encoding after random changes, and `diff` applied to the old maps gives the new.
//!
//! 2,000 clusters x 50 probes = 100,000 connection checks per run (override the number
//! of clusters with PROPTEST_CASES).

mod cnp_gen;
mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use common::{ip, node_addrs, World, NODES};
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use palisade_common::{Reason, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use palisade_policy::{
    compile, diff, encode, object_from_k8s, Compiler, Kind, MapSet, NodeInfo, Object, ObjectRef,
    Packet, PodKey,
};
use proptest::prelude::*;

const NAMESPACES: [&str; 4] = ["a", "b", "c", "d"]; // "d" has no Namespace object
const KEYS: [&str; 2] = ["app", "tier"];
const VALUES: [&str; 3] = ["x", "y", "z"];
const NS_KEYS: [&str; 2] = ["env", "team"];
const V4_POOL: [&str; 12] = [
    "10.0.0.1",
    "10.0.0.17",
    "10.0.0.130",
    "10.0.1.1",
    "10.0.1.17",
    "10.0.1.130",
    "10.0.2.1",
    "10.0.2.17",
    "10.0.2.130",
    "10.0.3.1",
    "10.0.3.17",
    "10.0.3.130",
];
const V6_POOL: [&str; 12] = [
    "fd00::0:1",
    "fd00::0:17",
    "fd00::0:130",
    "fd00::1:1",
    "fd00::1:17",
    "fd00::1:130",
    "fd00::2:1",
    "fd00::2:17",
    "fd00::2:130",
    "fd00::3:1",
    "fd00::3:17",
    "fd00::3:130",
];
const EXTERNAL_V4: [&str; 4] = ["10.0.1.200", "10.200.0.1", "192.0.2.1", "172.18.0.9"];
const EXTERNAL_V6: [&str; 3] = ["fd00::1:99", "2001:db8::1", "fd00:18::9"];
const CIDRS: [&str; 15] = [
    "10.0.0.0/8",
    "10.0.0.0/16",
    "10.0.1.0/24",
    "10.0.1.0/28",
    "10.0.2.0/23",
    "10.0.1.16/28",
    "0.0.0.0/0",
    "172.18.0.0/16",
    "10.0.3.1/32",
    "10.0.1.130/25",
    "fd00::/16",
    "::/0",
    "fd00::1:0/112",
    "fd00::1:0/124",
    "fd00::3:1/128",
];
// (name, protocol, per-pod alternatives)
const NAMED: [(&str, &str, [i32; 2]); 3] = [
    ("http", "TCP", [80, 8080]),
    ("dns", "UDP", [53, 5353]),
    ("metrics", "TCP", [9090, 80]),
];
const PORT_NUMBERS: [i32; 9] = [53, 80, 443, 8080, 5353, 1000, 1011, 1012, 82];
const PROBE_PORTS: [u16; 16] = [
    53, 80, 443, 8080, 5353, 9090, 1000, 1010, 1011, 1012, 81, 82, 1, 65535, 0, 2000,
];

#[derive(Clone, Debug)]
struct SelPlan {
    labels: Vec<(usize, usize)>,
    exprs: Vec<(usize, usize, Vec<usize>)>,
}

#[derive(Clone, Debug)]
enum PeerPlan {
    Pod(SelPlan),
    Ns(SelPlan),
    Both(SelPlan, SelPlan),
    Block(usize, Vec<(usize, bool)>),
}

#[derive(Clone, Debug)]
struct PortPlan {
    proto: usize,
    port: usize,
    end: usize,
}

#[derive(Clone, Debug)]
struct RulePlan {
    peers: Option<Vec<PeerPlan>>,
    ports: Option<Vec<PortPlan>>,
}

#[derive(Clone, Debug)]
struct PolicyPlan {
    ns: usize,
    sel: SelPlan,
    types: usize,
    ingress: Option<Vec<RulePlan>>,
    egress: Option<Vec<RulePlan>>,
}

#[derive(Clone, Debug)]
struct PodPlan {
    ns: usize,
    labels: Vec<(usize, usize)>,
    node: usize,
    addr: Option<usize>,
    v6: bool,
    host: bool,
    ports: Vec<(usize, usize)>,
}

#[derive(Clone, Debug)]
enum Mutation {
    PodLabels(usize, Vec<(usize, usize)>),
    NsLabels(usize, Vec<(usize, usize)>),
    DeletePod(usize),
    DeletePolicy(usize),
    Policy(PolicyPlan),
    AddPod(PodPlan),
    /// Create or replace cluster policy `cnp{i}`.
    Cnp(usize, cnp_gen::CnpPlan),
    DeleteCnp(usize),
    /// Node `i` gets zone label `z` (0: none).
    NodeZone(usize, usize),
}

#[derive(Clone, Debug)]
struct Plan {
    ns_labels: Vec<Vec<(usize, usize)>>,
    pods: Vec<PodPlan>,
    policies: Vec<PolicyPlan>,
    cnps: Vec<cnp_gen::CnpPlan>,
    zones: Vec<usize>,
    probes: Vec<(bool, usize, usize, usize, usize)>,
    mutations: Vec<Mutation>,
}

fn labels_strategy(keys: usize) -> impl Strategy<Value = Vec<(usize, usize)>> {
    proptest::collection::vec((0..keys, 0..VALUES.len()), 0..=2)
}

fn sel_strategy(keys: usize) -> impl Strategy<Value = SelPlan> {
    let expr = (
        0..keys,
        prop_oneof![40 => 0usize..4, 1 => Just(4usize)],
        proptest::collection::vec(0..VALUES.len(), 0..=2),
    );
    (
        proptest::collection::vec((0..keys, 0..VALUES.len()), 0..=1),
        proptest::collection::vec(expr, 0..=1),
    )
        .prop_map(|(labels, exprs)| SelPlan { labels, exprs })
}

fn peer_strategy() -> impl Strategy<Value = PeerPlan> {
    prop_oneof![
        sel_strategy(KEYS.len()).prop_map(PeerPlan::Pod),
        sel_strategy(NS_KEYS.len() + 1).prop_map(PeerPlan::Ns),
        (sel_strategy(KEYS.len()), sel_strategy(NS_KEYS.len() + 1))
            .prop_map(|(p, n)| PeerPlan::Both(p, n)),
        (
            0..CIDRS.len(),
            proptest::collection::vec((0..CIDRS.len(), proptest::bool::weighted(0.01)), 0..=2)
        )
            .prop_map(|(c, e)| PeerPlan::Block(c, e)),
    ]
}

fn port_strategy() -> impl Strategy<Value = PortPlan> {
    // port: 0 = none, 1..=9 numbers, 10..=15 named; end: 0 none, 1 +0, 2 +10, 3 +1000, 4 -1 (invalid)
    (
        0usize..4,
        0usize..16,
        prop_oneof![40 => 0usize..4, 1 => Just(4usize)],
    )
        .prop_map(|(proto, port, end)| PortPlan { proto, port, end })
}

fn rule_strategy() -> impl Strategy<Value = RulePlan> {
    (
        proptest::option::weighted(0.8, proptest::collection::vec(peer_strategy(), 0..=3)),
        proptest::option::weighted(0.7, proptest::collection::vec(port_strategy(), 0..=3)),
    )
        .prop_map(|(peers, ports)| RulePlan { peers, ports })
}

fn policy_strategy() -> impl Strategy<Value = PolicyPlan> {
    let everything = SelPlan {
        labels: vec![],
        exprs: vec![],
    };
    (
        0..3usize,
        prop_oneof![Just(everything), sel_strategy(KEYS.len())],
        0..4usize,
        proptest::option::weighted(0.8, proptest::collection::vec(rule_strategy(), 0..=3)),
        proptest::option::weighted(0.75, proptest::collection::vec(rule_strategy(), 0..=3)),
    )
        .prop_map(|(ns, sel, types, ingress, egress)| PolicyPlan {
            ns,
            sel,
            types,
            ingress,
            egress,
        })
}

fn pod_strategy() -> impl Strategy<Value = PodPlan> {
    (
        0..NAMESPACES.len(),
        labels_strategy(KEYS.len()),
        0..NODES.len(),
        proptest::option::weighted(0.9, 0..V4_POOL.len()),
        proptest::bool::weighted(0.4),
        proptest::bool::weighted(0.1),
        proptest::collection::vec((0..NAMED.len(), 0..2usize), 0..=3),
    )
        .prop_map(|(ns, labels, node, addr, v6, host, ports)| PodPlan {
            ns,
            labels,
            node,
            addr,
            v6,
            host,
            ports,
        })
}

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0..8usize, labels_strategy(KEYS.len())).prop_map(|(i, l)| Mutation::PodLabels(i, l)),
        (0..3usize, labels_strategy(NS_KEYS.len())).prop_map(|(i, l)| Mutation::NsLabels(i, l)),
        (0..8usize).prop_map(Mutation::DeletePod),
        (0..5usize).prop_map(Mutation::DeletePolicy),
        policy_strategy().prop_map(Mutation::Policy),
        (0..5usize, cnp_gen::cnp_strategy()).prop_map(|(i, c)| Mutation::Cnp(i, c)),
        (0..5usize).prop_map(Mutation::DeleteCnp),
        (0..2usize, 0..3usize).prop_map(|(i, z)| Mutation::NodeZone(i, z)),
        pod_strategy().prop_map(Mutation::AddPod),
    ]
}

fn plan_strategy() -> impl Strategy<Value = Plan> {
    (
        proptest::collection::vec(labels_strategy(NS_KEYS.len()), 3),
        proptest::collection::vec(pod_strategy(), 3..11),
        proptest::collection::vec(policy_strategy(), 1..6),
        proptest::collection::vec(
            (any::<bool>(), 0..32usize, 0..32usize, 0..5usize, 0..18usize),
            50,
        ),
        proptest::collection::vec(mutation_strategy(), 0..4),
        (
            cnp_gen::cnps_strategy(),
            proptest::collection::vec(0..3usize, NODES.len()),
        ),
    )
        .prop_map(
            |(ns_labels, mut pods, policies, probes, mutations, cluster)| {
                // Addresses are unique per pod (fewer pods than pool slots).
                let mut used = Vec::new();
                for p in &mut pods {
                    if let Some(a) = &mut p.addr {
                        while used.contains(a) {
                            *a = (*a + 1) % V4_POOL.len();
                        }
                        used.push(*a);
                    }
                }
                (ns_labels, pods, policies, probes, mutations, cluster)
            },
        )
        .prop_map(
            |(ns_labels, pods, policies, probes, mutations, (cnps, zones))| Plan {
                ns_labels,
                pods,
                policies,
                probes,
                mutations,
                cnps,
                zones,
            },
        )
}

// ---- building k8s objects from a plan ----

fn labels(l: &[(usize, usize)], keys: &[&str]) -> BTreeMap<String, String> {
    l.iter()
        .map(|(k, v)| (keys[*k].to_string(), VALUES[*v].to_string()))
        .collect()
}

fn selector(s: &SelPlan, keys: &[&str]) -> metav1::LabelSelector {
    // Namespace selectors may also use the name label (index == keys.len()).
    let key = |k: usize| {
        keys.get(k)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "kubernetes.io/metadata.name".to_string())
    };
    let value = |k: usize, v: usize| {
        if k >= keys.len() {
            NAMESPACES[v % NAMESPACES.len()].to_string()
        } else {
            VALUES[v].to_string()
        }
    };
    let ops = ["In", "NotIn", "Exists", "DoesNotExist", "Bogus"];
    metav1::LabelSelector {
        match_labels: Some(
            s.labels
                .iter()
                .map(|(k, v)| (key(*k), value(*k, *v)))
                .collect(),
        ),
        match_expressions: Some(
            s.exprs
                .iter()
                .map(|(k, op, vals)| {
                    // Mostly valid: In/NotIn get values, Exists/DoesNotExist none.
                    let values = match op {
                        0 | 1 if vals.is_empty() => vec![value(*k, 0)],
                        0 | 1 => vals.iter().map(|v| value(*k, *v)).collect(),
                        _ => vec![],
                    };
                    metav1::LabelSelectorRequirement {
                        key: key(*k),
                        operator: ops[*op].to_string(),
                        values: Some(values),
                    }
                })
                .collect(),
        ),
    }
}

fn peer(p: &PeerPlan) -> netv1::NetworkPolicyPeer {
    let mut out = netv1::NetworkPolicyPeer::default();
    let ns_keys: Vec<&str> = NS_KEYS.to_vec();
    match p {
        PeerPlan::Pod(s) => out.pod_selector = Some(selector(s, &KEYS)),
        PeerPlan::Ns(s) => out.namespace_selector = Some(selector(s, &ns_keys)),
        PeerPlan::Both(p, n) => {
            out.pod_selector = Some(selector(p, &KEYS));
            out.namespace_selector = Some(selector(n, &ns_keys));
        }
        PeerPlan::Block(c, excepts) => {
            let cidr: ipnet::IpNet = CIDRS[*c].parse().expect("a literal network");
            let cidr = cidr.trunc();
            let except: Vec<String> = excepts
                .iter()
                .filter(|(e, keep_invalid)| {
                    let e: ipnet::IpNet = CIDRS[*e]
                        .parse::<ipnet::IpNet>()
                        .expect("a literal network")
                        .trunc();
                    *keep_invalid || (cidr.contains(&e) && e.prefix_len() > cidr.prefix_len())
                })
                .map(|(e, _)| CIDRS[*e].to_string())
                .collect();
            out.ip_block = Some(netv1::IPBlock {
                cidr: CIDRS[*c].to_string(),
                except: Some(except),
            });
        }
    }
    out
}

fn port(p: &PortPlan) -> netv1::NetworkPolicyPort {
    let protocol = [None, Some("TCP"), Some("UDP"), Some("SCTP")][p.proto].map(str::to_string);
    let (port, numeric) = match p.port {
        0 => (None, None),
        n @ 1..=9 => (
            Some(IntOrString::Int(PORT_NUMBERS[n - 1])),
            Some(PORT_NUMBERS[n - 1]),
        ),
        n => (
            Some(IntOrString::String(NAMED[(n - 10) % 3].0.to_string())),
            None,
        ),
    };
    let end_port = numeric.and_then(|n| match p.end {
        1 => Some(n),
        2 => Some(n + 10),
        3 => Some(n + 1000),
        4 => Some(n - 1),
        _ => None,
    });
    netv1::NetworkPolicyPort {
        protocol,
        port,
        end_port,
    }
}

fn rule_parts(
    r: &RulePlan,
) -> (
    Option<Vec<netv1::NetworkPolicyPeer>>,
    Option<Vec<netv1::NetworkPolicyPort>>,
) {
    (
        r.peers.as_ref().map(|v| v.iter().map(peer).collect()),
        r.ports.as_ref().map(|v| v.iter().map(port).collect()),
    )
}

fn policy(i: usize, p: &PolicyPlan) -> Object {
    let types = match p.types {
        0 => None,
        1 => Some(vec!["Ingress".to_string()]),
        2 => Some(vec!["Egress".to_string()]),
        _ => Some(vec!["Ingress".to_string(), "Egress".to_string()]),
    };
    let np = netv1::NetworkPolicy {
        metadata: metav1::ObjectMeta {
            namespace: Some(NAMESPACES[p.ns].to_string()),
            name: Some(format!("p{i}")),
            ..Default::default()
        },
        spec: Some(netv1::NetworkPolicySpec {
            pod_selector: Some(selector(&p.sel, &KEYS)),
            policy_types: types,
            ingress: p.ingress.as_ref().map(|rules| {
                rules
                    .iter()
                    .map(|r| {
                        let (from, ports) = rule_parts(r);
                        netv1::NetworkPolicyIngressRule { from, ports }
                    })
                    .collect()
            }),
            egress: p.egress.as_ref().map(|rules| {
                rules
                    .iter()
                    .map(|r| {
                        let (to, ports) = rule_parts(r);
                        netv1::NetworkPolicyEgressRule { to, ports }
                    })
                    .collect()
            }),
        }),
    };
    object_from_k8s(&np).expect("policies always convert")
}

fn pod(i: usize, p: &PodPlan, label_override: Option<&[(usize, usize)]>) -> Object {
    let node = NODES[p.node];
    let ips: Vec<String> = if p.host {
        vec![node.1[0].to_string()]
    } else {
        match p.addr {
            Some(slot) => {
                let mut v = vec![V4_POOL[slot].to_string()];
                if p.v6 {
                    v.push(V6_POOL[slot].to_string());
                }
                v
            }
            None => vec![],
        }
    };
    let ports = p
        .ports
        .iter()
        .map(|(n, alt)| corev1::ContainerPort {
            name: Some(NAMED[*n].0.to_string()),
            protocol: Some(NAMED[*n].1.to_string()),
            container_port: NAMED[*n].2[*alt],
            ..Default::default()
        })
        .collect();
    let k = corev1::Pod {
        metadata: metav1::ObjectMeta {
            namespace: Some(NAMESPACES[p.ns].to_string()),
            name: Some(format!("pod{i}")),
            labels: Some(labels(label_override.unwrap_or(&p.labels), &KEYS)),
            ..Default::default()
        },
        spec: Some(corev1::PodSpec {
            node_name: Some(node.0.to_string()),
            host_network: Some(p.host),
            containers: vec![corev1::Container {
                name: "c".to_string(),
                ports: Some(ports),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(corev1::PodStatus {
            pod_ips: Some(
                ips.iter()
                    .map(|s| corev1::PodIP { ip: s.clone() })
                    .collect(),
            ),
            ..Default::default()
        }),
    };
    object_from_k8s(&k).expect("pod converts")
}

fn namespace(i: usize, l: &[(usize, usize)]) -> Object {
    let k = corev1::Namespace {
        metadata: metav1::ObjectMeta {
            name: Some(NAMESPACES[i].to_string()),
            labels: Some(labels(l, &NS_KEYS)),
            ..Default::default()
        },
        ..Default::default()
    };
    object_from_k8s(&k).expect("namespace converts")
}

fn initial_objects(plan: &Plan) -> Vec<Object> {
    let mut objs = Vec::new();
    for (i, l) in plan.ns_labels.iter().enumerate() {
        objs.push(namespace(i, l));
    }
    for (i, p) in plan.pods.iter().enumerate() {
        objs.push(pod(i, p, None));
    }
    for (i, p) in plan.policies.iter().enumerate() {
        objs.push(policy(i, p));
    }
    for (i, z) in plan.zones.iter().enumerate() {
        objs.push(node_object(i, *z));
    }
    for (i, c) in plan.cnps.iter().enumerate() {
        objs.push(cnp_gen::cnp(i, c));
    }
    objs
}

fn node_object(i: usize, zone: usize) -> Object {
    let (name, _) = NODES[i];
    cnp_gen::node(name, node_addrs(name), zone)
}

/// Probe address `i` of a family: mostly pod addresses, else any of the pool.
fn pick(w: &World, v6: bool, i: usize) -> IpAddr {
    let pool = addr_pool(w, v6);
    let pods = w
        .index
        .pods()
        .filter(|p| p.ips.iter().any(|a| a.is_ipv6() == v6))
        .count();
    if i < 24 && pods > 0 {
        pool[i % pods]
    } else {
        pool[i % pool.len()]
    }
}

fn addr_pool(w: &World, v6: bool) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = w
        .index
        .pods()
        .flat_map(|p| p.ips.iter().copied())
        .filter(|a| a.is_ipv6() == v6)
        .collect();
    for (_, addrs) in NODES {
        v.extend(addrs.iter().map(|s| ip(s)).filter(|a| a.is_ipv6() == v6));
    }
    let ext: &[&str] = if v6 { &EXTERNAL_V6 } else { &EXTERNAL_V4 };
    v.extend(ext.iter().map(|s| ip(s)));
    v
}

fn check_probes(w: &World, plan: &Plan) -> Result<(), TestCaseError> {
    let protos = [PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_ICMP, PROTO_TCP];
    for &(v6, s, d, pr, po) in &plan.probes {
        let src = pick(w, v6, s);
        let dst = pick(w, v6, d);
        let proto = protos[pr];
        let port = if proto == PROTO_ICMP || po >= PROBE_PORTS.len() {
            None
        } else {
            Some(PROBE_PORTS[po])
        };
        let a = w.datapath(src, dst, proto, port);
        let b = w.reference(src, dst, proto, port);
        prop_assert_eq!(a, b, "{} -> {} proto {} port {:?}", src, dst, proto, port);
        // The drop's reason names the tier that decided (a fragment's and a
        // fail-closed endpoint's reason is their own).
        let ra = w.datapath_reason(src, dst, proto, port);
        let rb = w.reference_reason(src, dst, proto, port);
        if !matches!(ra, Some(Reason::Fragment | Reason::FailClosed)) {
            prop_assert_eq!(
                ra,
                rb,
                "reason of {} -> {} proto {} port {:?}",
                src,
                dst,
                proto,
                port
            );
        }
    }
    Ok(())
}

/// Stable ids: derived from the pod's number (`podN`).
fn ids_for(w: &World) -> BTreeMap<PodKey, u32> {
    w.index
        .pods()
        .map(|p| (p.key(), 100 + p.name[3..].parse::<u32>().unwrap_or(0)))
        .collect()
}

fn full_maps(w: &World, node: &str, ids: &BTreeMap<PodKey, u32>) -> MapSet {
    encode(
        &compile(
            &w.index,
            &NodeInfo {
                name: node.to_string(),
            },
        ),
        ids,
        false,
    )
}

fn run(plan: &Plan) -> Result<(), TestCaseError> {
    let mut w = World::with(initial_objects(plan));
    check_probes(&w, plan)?;

    // Incremental compiler vs full encode, through the mutations.
    let node = NODES[0].0;
    let mut compiler = Compiler::new(
        NodeInfo {
            name: node.to_string(),
        },
        false,
    );
    let mut shadow = MapSet::default();
    let mut ids = ids_for(&w);
    for wr in compiler.update(&w.index, &ids) {
        wr.apply_to(&mut shadow);
    }
    let mut expected = full_maps(&w, node, &ids);
    prop_assert_eq!(&shadow.policy_v4, &expected.policy_v4);
    prop_assert_eq!(&shadow.endpoints, &expected.endpoints);
    for (k, m) in plan.mutations.iter().enumerate() {
        match m {
            Mutation::PodLabels(i, l) => {
                if let Some(p) = plan.pods.get(*i) {
                    w.index.apply(pod(*i, p, Some(l)));
                }
            }
            Mutation::NsLabels(i, l) => {
                w.index.apply(namespace(*i, l));
            }
            Mutation::DeletePod(i) => {
                if let Some(p) = plan.pods.get(*i) {
                    w.index.delete(&ObjectRef::new(
                        Kind::Pod,
                        NAMESPACES[p.ns],
                        format!("pod{i}"),
                    ));
                }
            }
            Mutation::DeletePolicy(i) => {
                if let Some(p) = plan.policies.get(*i) {
                    w.index.delete(&ObjectRef::new(
                        Kind::NetworkPolicy,
                        NAMESPACES[p.ns],
                        format!("p{i}"),
                    ));
                }
            }
            Mutation::Policy(p) => {
                w.index.apply(policy(plan.policies.len() / 2, p));
            }
            Mutation::AddPod(p) => {
                // A new pod on a free address (or none).
                let mut p = p.clone();
                if let Some(a) = &mut p.addr {
                    let free = (0..V4_POOL.len())
                        .map(|k| (*a + k) % V4_POOL.len())
                        .find(|k| w.index.pod_by_ip(ip(V4_POOL[*k])).is_none());
                    match free {
                        Some(f) => *a = f,
                        None => p.addr = None,
                    }
                }
                // A fresh name (and so a fresh endpoint id) per added pod: the
                // pod count can repeat after a delete, and two endpoints sharing
                // an id would share their entries.
                let n = 50 + k;
                w.index.apply(pod(n, &p, None));
                ids = ids_for(&w);
            }
            Mutation::Cnp(i, c) => {
                w.index.apply(cnp_gen::cnp(*i, c));
            }
            Mutation::DeleteCnp(i) => {
                w.index.delete(&ObjectRef::new(
                    Kind::ClusterNetworkPolicy,
                    "",
                    format!("cnp{i}"),
                ));
            }
            Mutation::NodeZone(i, z) => {
                w.index.apply(node_object(*i, *z));
            }
        }
        let writes = compiler.update(&w.index, &ids);
        let before = shadow.clone();
        for wr in &writes {
            wr.apply_to(&mut shadow);
        }
        let new_expected = full_maps(&w, node, &ids);
        prop_assert_eq!(
            &shadow.policy_v4,
            &new_expected.policy_v4,
            "incremental v4 after {:?}",
            m
        );
        prop_assert_eq!(&shadow.policy_v6, &new_expected.policy_v6);
        prop_assert_eq!(&shadow.endpoints, &new_expected.endpoints);
        // The pure diff gives the same final state and no write for unchanged entries.
        let mut via_diff = expected.clone();
        let d = diff(&expected, &new_expected);
        for wr in &d {
            wr.apply_to(&mut via_diff);
        }
        prop_assert_eq!(&via_diff.policy_v4, &new_expected.policy_v4);
        prop_assert_eq!(&via_diff.endpoints, &new_expected.endpoints);
        prop_assert_eq!(
            d.len(),
            writes.len(),
            "incremental writes == diff writes ({:?})",
            before == expected
        );
        expected = new_expected;
    }
    w.build();
    check_probes(&w, plan)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn compiled_maps_agree_with_reference(plan in plan_strategy()) {
        run(&plan)?;
    }
}

/// The generated cases are rich enough for the agreement above to mean
/// something: over 200 plans, probes are both allowed and denied, some
/// policies are invalid, and cluster policies decide some sides. Prints the
/// numbers (and entries, overflowed endpoints): `cargo test -p palisade-policy
/// --test differential generated_cases -- --nocapture`.
#[test]
fn generated_cases_mix_allowed_denied_invalid_and_cluster_decided() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::default();
    let (mut allowed, mut total, mut invalid, mut pols, mut entries) = (0, 0, 0, 0, 0);
    let (mut cnps, mut cluster_decided, mut overflow) = (0, 0, 0);
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    for _ in 0..200 {
        let plan = plan_strategy().new_tree(&mut runner).unwrap().current();
        let w = World::with(initial_objects(&plan));
        invalid += w.index.policies().filter(|p| p.error().is_some()).count();
        pols += w.index.policies().count();
        entries += w
            .maps
            .values()
            .map(|m| m.0.policy_v4.len() + m.0.policy_v6.len())
            .sum::<usize>();
        cnps += w.index.cluster_policies().count();
        overflow += w.maps.values().map(|m| m.0.overflow.len()).sum::<usize>();
        let protos = [PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_ICMP, PROTO_TCP];
        for &(v6, s, d, pr, po) in &plan.probes {
            let port = PROBE_PORTS.get(po).copied();
            total += 1;
            let (src, dst) = (pick(&w, v6, s), pick(&w, v6, d));
            if w.reference(src, dst, protos[pr], port) {
                allowed += 1;
            }
            if let Some(r) = w.datapath_reason(src, dst, protos[pr], port) {
                *reasons.entry(r.as_str()).or_default() += 1;
            }
            let e = palisade_policy::explain::explain(
                &w.index,
                &node_addrs,
                &Packet {
                    src,
                    dst,
                    proto: protos[pr],
                    port,
                },
            );
            if e.sides().any(|v| {
                matches!(
                    v.verdict.decided_by,
                    palisade_policy::reference::DecidedBy::Admin
                        | palisade_policy::reference::DecidedBy::Baseline
                )
            }) {
                cluster_decided += 1;
            }
        }
    }
    println!("allowed {allowed}/{total}, invalid policies {invalid}/{pols}, entries {entries}");
    println!("cluster policies {cnps}, sides decided by a cluster policy {cluster_decided}/{total}, overflowed endpoints {overflow}");
    println!("datapath drop reasons {reasons:?}");
    for r in ["no-policy-allows", "admin-deny", "baseline-deny"] {
        assert!(
            reasons.get(r).is_some_and(|n| *n > 0),
            "no drop for {r} in 200 plans: {reasons:?}"
        );
    }
    // About two thirds allowed, a twentieth of the policies invalid, a sixth
    // of the sides decided by a cluster policy; the bounds leave room for the
    // random seed.
    assert!(
        total / 10 < allowed && allowed < total - total / 10,
        "allowed {allowed} of {total} probes: too few of one outcome"
    );
    assert!(
        0 < invalid && invalid < pols,
        "invalid policies {invalid} of {pols}"
    );
    assert!(entries > 0, "no map entries in 200 plans");
    assert!(cnps > 0, "no cluster policy in 200 plans");
    assert!(
        cluster_decided > 0,
        "no side decided by a cluster policy in {total} probes"
    );
}
