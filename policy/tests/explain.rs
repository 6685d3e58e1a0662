//! Explanations: which tier decided each side of a connection, with the policy
//! and rule, for deny-log enrichment and "why was this dropped"; and the
//! PBIT_OTHER contract of the encoded values.

mod common;

use common::*;
use palisade_common::{
    all_ports_bit, proto_bit, PolicyValue, PBIT_OTHER, PBIT_SCTP, PBIT_TCP, PBIT_UDP, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PV_ALL,
};
use palisade_policy::encode::to_value;
use palisade_policy::{
    explain, value_allows, Action, DecidedBy, Direction, Object, Packet, PodKey, PortSet, Protocol,
};

const WEB: &str = "10.0.1.10";
const CLIENT: &str = "10.0.3.30";
const SCRAPER: &str = "10.0.5.50";
const NODE_A: &str = "172.18.0.2";

fn world(extra: Vec<Object>) -> World {
    let mut objs = vec![
        ns("prod", &[("team", "a")]),
        ns("dev", &[("team", "b")]),
        ns("mon", &[("team", "mon")]),
        node("node-a", &[]),
        app_pod("prod", "web", "web", "node-a", &[WEB]),
        app_pod("dev", "client", "client", "node-a", &[CLIENT]),
        Object::Pod(pod("mon", "scraper", &[], "node-b", &[SCRAPER])),
    ];
    objs.extend(extra);
    World::with(objs)
}

fn why(w: &World, src: &str, dst: &str, port: u16) -> palisade_policy::Explanation {
    // The explanation's verdict is the datapath's.
    let allowed = w.tcp(src, dst, port);
    let e = explain(
        &w.index,
        &node_addrs,
        &Packet {
            src: ip(src),
            dst: ip(dst),
            proto: PROTO_TCP,
            port: Some(port),
        },
    );
    assert_eq!(e.allowed, allowed);
    e
}

fn policies() -> Vec<Object> {
    vec![
        cnp(
            "admin-prod",
            "tier: Admin\npriority: 1\nsubject: {namespaces: {matchLabels: {team: a}}}\ningress:\n- action: Pass\n  from: [{namespaces: {matchLabels: {team: mon}}}]\n- name: no-dev\n  action: Deny\n  from: [{namespaces: {matchLabels: {team: b}}}]\n  protocols: [{tcp: {destinationPort: {number: 22}}}]",
        ),
        cnp(
            "baseline-prod",
            "tier: Baseline\npriority: 1\nsubject: {namespaces: {matchLabels: {team: a}}}\ningress:\n- name: mon-deny\n  action: Deny\n  from: [{namespaces: {matchLabels: {team: mon}}}]",
        ),
    ]
}

#[test]
fn admin_rule_decides() {
    let w = world(policies());
    let e = why(&w, CLIENT, WEB, 22);
    let d = e.denied_by().expect("denied");
    assert_eq!(d.pod, "prod/web");
    assert_eq!(d.direction, Direction::Ingress);
    assert_eq!(d.verdict.decided_by, DecidedBy::Admin);
    assert_eq!(d.verdict.tier(), "admin");
    let r = d.verdict.rule.as_ref().expect("rule");
    assert_eq!(
        (
            r.policy.as_str(),
            r.rule_index,
            r.rule_name.as_deref(),
            r.action
        ),
        ("admin-prod", 1, Some("no-dev"), Action::Deny)
    );
    assert_eq!(
        d.to_string(),
        "ingress at prod/web: denied by admin clusternetworkpolicy admin-prod rule 1 (no-dev): Deny"
    );
    // The egress side (dev/client is not a subject) is allowed by default.
    assert_eq!(e.egress.len(), 1);
    assert_eq!(e.egress[0].verdict.decided_by, DecidedBy::Default);
    assert_eq!(e.egress[0].verdict.to_string(), "allowed by default");
}

#[test]
fn baseline_rule_decides_after_pass() {
    let w = world(policies());
    let e = why(&w, SCRAPER, WEB, 80);
    let d = e.denied_by().expect("denied");
    assert_eq!(d.verdict.decided_by, DecidedBy::Baseline);
    let r = d.verdict.rule.as_ref().expect("rule");
    assert_eq!((r.policy.as_str(), r.rule_index), ("baseline-prod", 0));
    assert!(e.egress.is_empty() || e.egress.iter().all(|s| s.verdict.allowed));
}

#[test]
fn network_policy_decides_with_the_isolating_policies() {
    let mut objs = policies();
    objs.push(np("prod", "deny-all", "podSelector: {}"));
    let w = world(objs);
    let e = why(&w, SCRAPER, WEB, 80);
    let d = e.denied_by().expect("denied");
    assert_eq!(d.verdict.decided_by, DecidedBy::NetworkPolicy);
    assert_eq!(d.verdict.policies, vec!["prod/deny-all".to_string()]);
    assert_eq!(d.verdict.rule, None);
    assert_eq!(
        d.verdict.to_string(),
        "denied by networkpolicy prod/deny-all"
    );
}

#[test]
fn default_and_node() {
    let w = world(policies());
    let e = why(&w, CLIENT, WEB, 80);
    assert!(e.allowed);
    assert_eq!(e.ingress[0].verdict.decided_by, DecidedBy::Default);
    let e = why(&w, NODE_A, WEB, 22);
    assert!(e.allowed);
    assert_eq!(e.ingress[0].verdict.decided_by, DecidedBy::Node);
    assert_eq!(e.ingress[0].verdict.tier(), "node");
}

#[test]
fn egress_side_explained() {
    let w = world(vec![cnp(
        "client-out",
        "tier: Admin\npriority: 3\nsubject: {pods: {podSelector: {matchLabels: {app: client}}}}\negress:\n- name: no-ext\n  action: Deny\n  to: [{networks: [192.0.2.0/24]}]",
    )]);
    let e = why(&w, CLIENT, "192.0.2.9", 443);
    assert!(e.ingress.is_empty());
    let d = e.denied_by().expect("denied");
    assert_eq!(d.direction, Direction::Egress);
    assert_eq!(d.pod, "dev/client");
    let r = d.verdict.rule.as_ref().expect("rule");
    assert_eq!((r.policy.as_str(), r.rule_index), ("client-out", 0));
    // One side at a time, as the agent asks for a deny event.
    let pod = w
        .index
        .pod(&PodKey::new("dev", "client"))
        .expect("pod")
        .clone();
    let v = palisade_policy::explain_direction(
        &w.index,
        &node_addrs,
        &pod,
        Direction::Egress,
        &Packet {
            src: ip(CLIENT),
            dst: ip("192.0.2.9"),
            proto: PROTO_TCP,
            port: Some(443),
        },
    );
    assert_eq!(&v, &d.verdict);
}

// ---- PBIT_OTHER ----

#[test]
fn all_ports_bit_contract() {
    for p in [PROTO_TCP, PROTO_UDP, PROTO_SCTP] {
        assert_eq!(all_ports_bit(p), proto_bit(p));
        assert_ne!(proto_bit(p), 0);
    }
    for p in [PROTO_ICMP, PROTO_ICMPV6, 47, 0, 255] {
        assert_eq!(proto_bit(p), 0);
        assert_eq!(all_ports_bit(p), PBIT_OTHER);
    }
}

#[test]
fn other_allows_portless_protocols_only() {
    let mut s = PortSet::default();
    s.add_other();
    s.add_range(Protocol::Tcp, 443, 443);
    let v = to_value(&s).expect("fits");
    assert_eq!(v.all_ports, PBIT_OTHER);
    assert!(value_allows(&v, PROTO_ICMP, None));
    assert!(value_allows(&v, PROTO_ICMPV6, None));
    assert!(value_allows(&v, 47, None));
    assert!(value_allows(&v, PROTO_TCP, Some(443)));
    assert!(!value_allows(&v, PROTO_TCP, Some(80)));
    assert!(!value_allows(&v, PROTO_TCP, None));
    assert!(!value_allows(&v, PROTO_UDP, Some(53)));
    // Without the bit, a protocol without ports needs PV_ALL.
    let v = PolicyValue {
        all_ports: PBIT_TCP | PBIT_UDP | PBIT_SCTP,
        ..Default::default()
    };
    assert!(!value_allows(&v, PROTO_ICMP, None));
    let v = PolicyValue {
        flags: PV_ALL,
        ..Default::default()
    };
    assert!(value_allows(&v, PROTO_ICMP, None));
}

#[test]
fn port_set_normalisation() {
    // Other plus every port of the three protocols is everything.
    let mut s = PortSet::default();
    s.add_other();
    s.add_all_ports(Protocol::Tcp);
    s.add_all_ports(Protocol::Udp);
    assert!(!s.all);
    s.add_all_ports(Protocol::Sctp);
    assert_eq!(s, PortSet::everything());
    // Ranges covering every port of a protocol are its all-ports bit.
    let mut s = PortSet::default();
    s.add_range(Protocol::Udp, 0, 1000);
    s.add_range(Protocol::Udp, 1001, 65535);
    assert_eq!(s.all_ports, PBIT_UDP);
    assert!(s.ranges.is_empty());
    assert_eq!(s.to_string(), "UDP/*");
    let mut s = PortSet::default();
    s.add_other();
    assert_eq!(s.to_string(), "other");
}
