//! Random ClusterNetworkPolicies and Node labels for the differential test: tiers,
//! priorities with ties, actions, subjects, every peer type (pod addresses inside
//! `networks` too), protocols with numbers, ranges and named ports, and now and
//! then an invalid object (which must change nothing) or an unsupported peer.
#![allow(
    dead_code,
    reason = "each test crate that includes this module uses part of it"
)]

use palisade_policy::{parse_yaml_documents, NodeSpec, Object};
use proptest::prelude::*;
use serde_json::{json, Value};

const POD_KEYS: [&str; 2] = ["app", "tier"];
const VALUES: [&str; 3] = ["x", "y", "z"];
const NAMESPACES: [&str; 4] = ["a", "b", "c", "d"];
const PRIORITIES: [u16; 5] = [0, 5, 5, 10, 1000];
const NETWORKS: [&str; 12] = [
    "10.0.0.0/8",
    "10.0.1.0/24",
    "10.0.1.16/28",
    "10.0.2.0/23",
    "10.0.3.1/32",
    "10.0.0.17/32",
    "0.0.0.0/0",
    "172.18.0.0/30",
    "172.18.0.3/32",
    "fd00::/16",
    "fd00::1:0/112",
    "::/0",
];
const PORTS: [u16; 8] = [53, 80, 443, 8080, 5353, 1000, 1011, 9090];
const RANGE_LEN: [u16; 3] = [1, 10, 1000];
const NAMED: [&str; 3] = ["http", "dns", "metrics"];
const ZONES: [&str; 2] = ["a", "b"];

/// A selector: 0 `{}`, 1 matchLabels, 2 In, 3 NotIn, 4 Exists, 5 DoesNotExist.
#[derive(Clone, Debug)]
pub struct Sel(usize, usize, usize);

#[derive(Clone, Debug)]
pub enum PeerPlan {
    Namespaces(Sel),
    Pods(Sel, Sel),
    Networks(Vec<usize>),
    Nodes(Sel),
    DomainNames,
    Empty,
}

#[derive(Clone, Debug)]
pub enum ProtoPlan {
    Number(usize, usize),
    Range(usize, usize, usize),
    Named(usize),
}

#[derive(Clone, Debug)]
pub struct RulePlan {
    action: usize,
    peers: Vec<PeerPlan>,
    protocols: Option<Vec<ProtoPlan>>,
}

#[derive(Clone, Debug)]
pub struct CnpPlan {
    admin: bool,
    priority: usize,
    /// `None`: a namespaces subject.
    subject: (Sel, Option<Sel>),
    ingress: Vec<RulePlan>,
    egress: Vec<RulePlan>,
    /// Break validation (priority out of range): the object must change nothing.
    invalid: bool,
}

fn sel() -> impl Strategy<Value = Sel> {
    (
        prop_oneof![3 => Just(0usize), 3 => Just(1usize), 4 => 2usize..6],
        0..4usize,
        0..4usize,
    )
        .prop_map(|(k, a, b)| Sel(k, a, b))
}

fn peer(egress: bool) -> impl Strategy<Value = PeerPlan> {
    let common = prop_oneof![
        10 => sel().prop_map(PeerPlan::Namespaces),
        10 => (sel(), sel()).prop_map(|(n, p)| PeerPlan::Pods(n, p)),
        1 => Just(PeerPlan::Empty),
    ];
    if egress {
        prop_oneof![
            21 => common,
            12 => proptest::collection::vec(0..NETWORKS.len(), 1..=3).prop_map(PeerPlan::Networks),
            5 => sel().prop_map(PeerPlan::Nodes),
            1 => Just(PeerPlan::DomainNames),
        ]
        .boxed()
    } else {
        common.boxed()
    }
}

fn proto() -> impl Strategy<Value = ProtoPlan> {
    prop_oneof![
        4 => (0..3usize, 0..PORTS.len()).prop_map(|(p, n)| ProtoPlan::Number(p, n)),
        3 => (0..3usize, 0..PORTS.len(), 0..RANGE_LEN.len())
            .prop_map(|(p, n, l)| ProtoPlan::Range(p, n, l)),
        3 => (0..NAMED.len()).prop_map(ProtoPlan::Named),
    ]
}

fn rule(egress: bool) -> impl Strategy<Value = RulePlan> {
    (
        0..3usize,
        proptest::collection::vec(peer(egress), 1..=3),
        proptest::option::weighted(0.55, proptest::collection::vec(proto(), 1..=3)),
    )
        .prop_map(|(action, peers, protocols)| RulePlan {
            action,
            peers,
            protocols,
        })
}

pub fn cnp_strategy() -> impl Strategy<Value = CnpPlan> {
    (
        proptest::bool::weighted(0.6),
        0..PRIORITIES.len(),
        (sel(), proptest::option::weighted(0.5, sel())),
        proptest::collection::vec(rule(false), 0..=3),
        proptest::collection::vec(rule(true), 0..=3),
        proptest::bool::weighted(0.04),
    )
        .prop_map(
            |(admin, priority, subject, ingress, egress, invalid)| CnpPlan {
                admin,
                priority,
                subject,
                ingress,
                egress,
                invalid,
            },
        )
}

/// Cluster policies of a cluster: none in a quarter of the cases.
pub fn cnps_strategy() -> impl Strategy<Value = Vec<CnpPlan>> {
    prop_oneof![
        1 => Just(Vec::new()),
        3 => proptest::collection::vec(cnp_strategy(), 1..=4),
    ]
}

fn selector(s: &Sel, keys: &[&str], values: &dyn Fn(usize, usize) -> String) -> Value {
    let Sel(kind, k, v) = *s;
    let key = keys[k % keys.len()];
    let val = values(k % keys.len(), v);
    let expr = |op: &str, vals: Vec<String>| json!({"matchExpressions": [{"key": key, "operator": op, "values": vals}]});
    match kind {
        0 => json!({}),
        1 => json!({"matchLabels": {key: val}}),
        2 => expr("In", vec![val]),
        3 => expr("NotIn", vec![val]),
        4 => expr("Exists", vec![]),
        _ => expr("DoesNotExist", vec![]),
    }
}

fn ns_selector(s: &Sel) -> Value {
    selector(
        s,
        &["env", "team", "kubernetes.io/metadata.name"],
        &|k, v| {
            if k == 2 {
                NAMESPACES[v % NAMESPACES.len()].to_string()
            } else {
                VALUES[v % VALUES.len()].to_string()
            }
        },
    )
}

fn pod_selector(s: &Sel) -> Value {
    selector(s, &POD_KEYS, &|_, v| VALUES[v % VALUES.len()].to_string())
}

fn node_selector(s: &Sel) -> Value {
    selector(s, &["zone", "kubernetes.io/hostname"], &|k, v| {
        if k == 0 {
            ZONES[v % 2].to_string()
        } else {
            ["node-a", "node-b"][v % 2].to_string()
        }
    })
}

fn rule_json(r: &RulePlan, egress: bool) -> Value {
    let peers: Vec<Value> = r
        .peers
        .iter()
        .map(|p| match p {
            PeerPlan::Namespaces(s) => json!({"namespaces": ns_selector(s)}),
            PeerPlan::Pods(n, p) => json!({"pods": {"namespaceSelector": ns_selector(n), "podSelector": pod_selector(p)}}),
            PeerPlan::Networks(v) => {
                let mut nets: Vec<&str> = v.iter().map(|i| NETWORKS[*i]).collect();
                nets.sort_unstable();
                nets.dedup();
                json!({"networks": nets})
            }
            PeerPlan::Nodes(s) => json!({"nodes": node_selector(s)}),
            PeerPlan::DomainNames => json!({"domainNames": ["example.com"]}),
            PeerPlan::Empty => json!({}),
        })
        .collect();
    // API (CEL): no named ports with networks/nodes/domainNames peers; such a
    // rule's named ports become numbers (invalid objects are made on purpose
    // elsewhere).
    let no_named = egress
        && r.peers.iter().any(|p| {
            matches!(
                p,
                PeerPlan::Networks(_) | PeerPlan::Nodes(_) | PeerPlan::DomainNames
            )
        });
    let protos = ["tcp", "udp", "sctp"];
    let action = ["Accept", "Deny", "Pass"][r.action];
    let peer_key = if egress { "to" } else { "from" };
    let mut out = json!({ "action": action, peer_key: peers });
    if let Some(ps) = &r.protocols {
        let list: Vec<Value> = ps
            .iter()
            .map(|p| match p {
                ProtoPlan::Number(q, n) => {
                    json!({protos[*q]: {"destinationPort": {"number": PORTS[*n]}}})
                }
                ProtoPlan::Range(q, n, l) => {
                    let start = PORTS[*n];
                    json!({protos[*q]: {"destinationPort": {"range": {"start": start, "end": start + RANGE_LEN[*l]}}}})
                }
                ProtoPlan::Named(i) if no_named => {
                    json!({"tcp": {"destinationPort": {"number": PORTS[*i]}}})
                }
                ProtoPlan::Named(i) => json!({"destinationNamedPort": NAMED[*i]}),
            })
            .collect();
        out["protocols"] = Value::Array(list);
    }
    out
}

/// The manifest of cluster policy `cnp{i}`, as JSON (which is YAML).
pub fn cnp_text(i: usize, c: &CnpPlan) -> String {
    let subject = match &c.subject {
        (n, None) => json!({"namespaces": ns_selector(n)}),
        (n, Some(p)) => {
            json!({"pods": {"namespaceSelector": ns_selector(n), "podSelector": pod_selector(p)}})
        }
    };
    let priority = if c.invalid {
        1001
    } else {
        PRIORITIES[c.priority]
    };
    let mut spec = json!({
        "tier": if c.admin { "Admin" } else { "Baseline" },
        "priority": priority,
        "subject": subject,
    });
    if !c.ingress.is_empty() {
        spec["ingress"] = c.ingress.iter().map(|r| rule_json(r, false)).collect();
    }
    if !c.egress.is_empty() {
        spec["egress"] = c.egress.iter().map(|r| rule_json(r, true)).collect();
    }
    let doc = json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": format!("cnp{i}")},
        "spec": spec,
    });
    doc.to_string()
}

pub fn cnp(i: usize, c: &CnpPlan) -> Object {
    let text = cnp_text(i, c);
    let mut v = parse_yaml_documents(&text, "gen");
    assert_eq!(v.len(), 1, "{text}");
    let o = v.remove(0).expect("generated cluster policies convert");
    assert_eq!(
        o.validation_error().is_some(),
        c.invalid,
        "{text}: {:?}",
        o.validation_error()
    );
    o
}

/// Node `name` with `addrs`; `zone`: 0 none, 1 `a`, 2 `b`.
pub fn node(name: &str, addrs: Vec<std::net::IpAddr>, zone: usize) -> Object {
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("kubernetes.io/hostname".to_string(), name.to_string());
    if zone > 0 {
        labels.insert("zone".to_string(), ZONES[zone - 1].to_string());
    }
    Object::Node(NodeSpec {
        name: name.to_string(),
        labels,
        addresses: addrs,
    })
}
