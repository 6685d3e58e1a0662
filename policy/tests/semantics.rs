//! Table tests: one or more per NetworkPolicy v1 rule (ARCHITECTURE.md, "Semantics
//! that must be exact"). Every probe is evaluated twice, through the encoded maps as
//! the datapath would and through the reference evaluator, and the two must agree.

mod common;

use common::*;
use palisade_common::{PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use palisade_policy::{Direction, Object, PodKey, Protocol};

const EXT: &str = "192.0.2.1";
const EXT6: &str = "2001:db8::1";
const WEB: &str = "10.0.1.10";
const WEB6: &str = "fd00::1:10";
const DB: &str = "10.0.1.20";
const CLIENT: &str = "10.0.2.30";
const DEV_WEB: &str = "10.0.3.10";
const DEV_CLIENT: &str = "10.0.3.30";
const OTHER_X: &str = "10.0.4.40";

fn base() -> Vec<Object> {
    vec![
        ns("prod", &[("team", "a")]),
        ns("dev", &[("team", "b")]),
        ns("other", &[]),
        web_pod("prod", "node-a", &[WEB, WEB6], 8080),
        app_pod("prod", "db", "db", "node-b", &[DB]),
        app_pod("prod", "client", "client", "node-a", &[CLIENT]),
        web_pod("dev", "node-b", &[DEV_WEB], 9090),
        app_pod("dev", "client", "client", "node-a", &[DEV_CLIENT]),
        app_pod("other", "x", "client", "node-b", &[OTHER_X]),
    ]
}

fn world(extra: Vec<Object>) -> World {
    let mut objs = base();
    objs.extend(extra);
    World::with(objs)
}

// Rule: not isolated = everything allowed.
#[test]
fn no_policy_allows_everything() {
    let w = world(vec![]);
    assert!(w.tcp(CLIENT, WEB, 1));
    assert!(w.allowed(EXT, WEB, PROTO_ICMP, None));
    assert!(w.tcp(WEB, EXT, 443));
}

// Rule: policyTypes omitted = Ingress always, Egress only when `egress` is present.
#[test]
fn policy_types_default_ingress_only() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\ningress: []",
    )]);
    assert!(!w.tcp(CLIENT, WEB, 80), "ingress isolated");
    assert!(w.tcp(WEB, EXT, 80), "egress not isolated");
}

// Rule (API server defaulting): policyTypes omitted + at least one egress rule =
// Ingress and Egress.
#[test]
fn policy_types_default_with_egress_rules() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\negress:\n- ports: [{port: 53, protocol: UDP}]",
    )]);
    assert!(!w.tcp(CLIENT, WEB, 80), "ingress isolated");
    assert!(w.udp(WEB, EXT, 53));
    assert!(!w.tcp(WEB, EXT, 80), "egress isolated");
    assert!(!w.tcp(WEB, DB, 80));
}

// Rule (API server defaulting): `egress: []` and `egress: null` without
// policyTypes do not isolate egress (`len(egress) != 0` adds Egress).
#[test]
fn policy_types_default_with_empty_or_null_egress() {
    for spec in [
        "podSelector: {matchLabels: {app: web}}\negress: []",
        "podSelector: {matchLabels: {app: web}}\negress: null",
        "podSelector: {matchLabels: {app: web}}\ningress: [{}]\negress: []",
    ] {
        let w = world(vec![np("prod", "p", spec)]);
        assert!(w.tcp(WEB, EXT, 80), "egress open: {spec}");
        assert!(w.tcp(WEB, DB, 80), "egress open: {spec}");
    }
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\negress: []",
    )]);
    assert!(!w.tcp(CLIENT, WEB, 80), "ingress isolated");
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\ningress: [{}]\negress: []",
    )]);
    assert!(w.tcp(CLIENT, WEB, 80), "ingress allowed by its rule");
}

// Rule (API server defaulting): `policyTypes: []` is defaulted like an omitted
// list: Ingress, plus Egress only with egress rules.
#[test]
fn policy_types_empty_list_is_defaulted() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\npolicyTypes: []",
    )]);
    assert!(!w.tcp(CLIENT, WEB, 80), "ingress isolated");
    assert!(w.tcp(WEB, EXT, 80), "egress open");
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\npolicyTypes: []\negress: []",
    )]);
    assert!(w.tcp(WEB, EXT, 80), "egress open with egress: []");
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\npolicyTypes: []\negress:\n- ports: [{port: 443}]",
    )]);
    assert!(w.tcp(WEB, EXT, 443));
    assert!(!w.tcp(WEB, EXT, 80), "egress isolated by its rule");
    assert!(!w.tcp(CLIENT, WEB, 80), "ingress isolated");
}

// Rule: an explicit `policyTypes: [Ingress, Egress]` with `egress: []` isolates
// egress (nothing is defaulted when the list is given).
#[test]
fn policy_types_explicit_egress_with_empty_list() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\npolicyTypes: [Ingress, Egress]\negress: []",
    )]);
    assert!(!w.tcp(WEB, EXT, 80));
    assert!(!w.tcp(CLIENT, WEB, 80));
}

// Rule: rules of a direction not in policyTypes are ignored (no isolation from them).
#[test]
fn policy_types_explicit_egress_ignores_ingress_rules() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\npolicyTypes: [Egress]\ningress:\n- ports: [{port: 80}]\negress:\n- ports: [{port: 53, protocol: UDP}]",
    )]);
    assert!(w.tcp(CLIENT, WEB, 1), "not ingress isolated");
    assert!(w.udp(WEB, EXT, 53));
    assert!(!w.tcp(WEB, EXT, 80));
}

// Rule: `ingress: []` or no rules = nothing allowed.
#[test]
fn empty_rules_allow_nothing() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {}\npolicyTypes: [Ingress, Egress]",
    )]);
    for dst in [WEB, DB, CLIENT] {
        assert!(!w.tcp(EXT, dst, 80));
        assert!(!w.allowed(DEV_CLIENT, dst, PROTO_ICMP, None));
    }
    assert!(!w.tcp(WEB, DEV_WEB, 80));
    assert!(w.tcp(DEV_CLIENT, DEV_WEB, 80), "other namespace unaffected");
}

// Rule: a rule with no from/to = all peers (any address, both families).
#[test]
fn rule_without_peers_allows_all_addresses() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\ningress:\n- ports: [{port: 80}]",
    )]);
    assert!(w.tcp(EXT, WEB, 80));
    assert!(w.tcp(EXT6, WEB6, 80));
    assert!(w.tcp(OTHER_X, WEB, 80));
    assert!(!w.tcp(EXT, WEB, 81));
}

// Rule: a rule with no ports = all ports and all protocols (ICMP, fragments too).
#[test]
fn rule_without_ports_allows_all_protocols() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\ningress:\n- from: [{podSelector: {matchLabels: {app: client}}}]",
    )]);
    assert!(w.tcp(CLIENT, WEB, 1));
    assert!(w.udp(CLIENT, WEB, 65535));
    assert!(w.allowed(CLIENT, WEB, PROTO_SCTP, Some(9)));
    assert!(w.allowed(CLIENT, WEB, PROTO_ICMP, None));
    assert!(w.allowed(CLIENT, WEB, PROTO_TCP, None), "fragment");
    assert!(!w.tcp(DB, WEB, 1));
}

// Rule: policies are additive (union), across policies and rules.
#[test]
fn policies_are_additive() {
    let w = world(vec![
        np(
            "prod",
            "a",
            "podSelector: {matchLabels: {app: web}}\ningress:\n- from: [{podSelector: {matchLabels: {app: client}}}]\n  ports: [{port: 80}]",
        ),
        np(
            "prod",
            "b",
            "podSelector: {}\ningress:\n- from: [{podSelector: {matchLabels: {app: db}}}]\n  ports: [{port: 443}]\n- from: [{podSelector: {matchLabels: {app: client}}}]\n  ports: [{port: 443}]",
        ),
    ]);
    assert!(w.tcp(CLIENT, WEB, 80));
    assert!(w.tcp(CLIENT, WEB, 443));
    assert!(w.tcp(DB, WEB, 443));
    assert!(!w.tcp(DB, WEB, 80));
    assert!(!w.tcp(CLIENT, DB, 80));
    assert!(w.tcp(CLIENT, DB, 443));
}

// Rule: podSelector alone = pods in the policy's namespace.
#[test]
fn pod_selector_alone_is_own_namespace() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\ningress:\n- from: [{podSelector: {matchLabels: {app: client}}}]",
    )]);
    assert!(w.tcp(CLIENT, WEB, 80));
    assert!(!w.tcp(DEV_CLIENT, WEB, 80), "same labels, other namespace");
    assert!(!w.tcp(OTHER_X, WEB, 80));
}

// Rule: namespaceSelector alone = all pods in matching namespaces.
#[test]
fn namespace_selector_alone() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\ningress:\n- from: [{namespaceSelector: {matchLabels: {team: b}}}]",
    )]);
    assert!(w.tcp(DEV_CLIENT, WEB, 80));
    assert!(w.tcp(DEV_WEB, WEB, 80));
    assert!(
        !w.tcp(CLIENT, WEB, 80),
        "own namespace does not match team=b"
    );
    assert!(!w.tcp(EXT, WEB, 80));
}

// Rule: podSelector and namespaceSelector in one peer = AND.
#[test]
fn both_selectors_in_one_peer_and() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\ningress:\n- from:\n  - namespaceSelector: {}\n    podSelector: {matchLabels: {app: client}}",
    )]);
    assert!(w.tcp(CLIENT, WEB, 80));
    assert!(w.tcp(DEV_CLIENT, WEB, 80));
    assert!(w.tcp(OTHER_X, WEB, 80));
    assert!(!w.tcp(DEV_WEB, WEB, 80));
    assert!(!w.tcp(DB, WEB, 80));
}

// Rule: separate peers = OR.
#[test]
fn separate_peers_or() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {team: b}}\n  - podSelector: {matchLabels: {app: client}}",
    )]);
    assert!(w.tcp(CLIENT, WEB, 80));
    assert!(w.tcp(DEV_WEB, WEB, 80));
    assert!(!w.tcp(DB, WEB, 80));
    assert!(!w.tcp(OTHER_X, WEB, 80));
}

// Rule: `{}` selects everything (podSelector {} = all pods of the namespace,
// namespaceSelector {} = all namespaces), but not non-pod addresses.
#[test]
fn empty_selector_selects_everything() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {}\ningress:\n- from: [{podSelector: {}}]\n- from: [{namespaceSelector: {}}]\n  ports: [{port: 22}]",
    )]);
    assert!(w.tcp(DB, WEB, 80));
    assert!(w.tcp(CLIENT, DB, 80));
    assert!(!w.tcp(DEV_CLIENT, DB, 80));
    assert!(w.tcp(DEV_CLIENT, DB, 22));
    assert!(w.tcp(OTHER_X, DB, 22));
    assert!(!w.tcp(EXT, DB, 22));
}

// Rule: matchExpressions In, NotIn, Exists, DoesNotExist; NotIn and DoesNotExist
// match when the key is absent.
#[test]
fn match_expression_operators() {
    let mut objs = vec![
        Object::Pod(pod(
            "prod",
            "t1",
            &[("tier", "fe")],
            "node-a",
            &["10.0.9.1"],
        )),
        Object::Pod(pod(
            "prod",
            "t2",
            &[("tier", "be")],
            "node-a",
            &["10.0.9.2"],
        )),
        Object::Pod(pod("prod", "t3", &[], "node-b", &["10.0.9.3"])),
    ];
    objs.push(np(
        "prod",
        "in",
        "podSelector: {matchLabels: {app: web}}\ningress:\n- from: [{podSelector: {matchExpressions: [{key: tier, operator: In, values: [fe]}]}}]\n  ports: [{port: 1}]\n- from: [{podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [fe]}]}}]\n  ports: [{port: 2}]\n- from: [{podSelector: {matchExpressions: [{key: tier, operator: Exists}]}}]\n  ports: [{port: 3}]\n- from: [{podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}}]\n  ports: [{port: 4}]",
    ));
    let w = world(objs);
    let (t1, t2, t3) = ("10.0.9.1", "10.0.9.2", "10.0.9.3");
    assert!(w.tcp(t1, WEB, 1) && !w.tcp(t2, WEB, 1) && !w.tcp(t3, WEB, 1));
    assert!(
        !w.tcp(t1, WEB, 2) && w.tcp(t2, WEB, 2) && w.tcp(t3, WEB, 2),
        "NotIn: absent key matches"
    );
    assert!(w.tcp(t1, WEB, 3) && w.tcp(t2, WEB, 3) && !w.tcp(t3, WEB, 3));
    assert!(
        !w.tcp(t1, WEB, 4) && !w.tcp(t2, WEB, 4) && w.tcp(t3, WEB, 4),
        "DoesNotExist"
    );
    assert!(w.tcp(CLIENT, WEB, 4), "client has no tier label");
}

// Rule: matchLabels AND matchExpressions.
#[test]
fn match_labels_and_expressions() {
    let w = world(vec![
        Object::Pod(pod("prod", "c2", &[("app", "client"), ("v", "2")], "node-b", &["10.0.9.5"])),
        np(
            "prod",
            "p",
            "podSelector: {matchLabels: {app: web}}\ningress:\n- from: [{podSelector: {matchLabels: {app: client}, matchExpressions: [{key: v, operator: Exists}]}}]",
        ),
    ]);
    assert!(w.tcp("10.0.9.5", WEB, 80));
    assert!(!w.tcp(CLIENT, WEB, 80));
}

// Rule: ipBlock = cidr minus except, and it matches pod IPs too. Nested prefixes:
// the entry found for an address carries exactly the union of what applies.
#[test]
fn ip_block_nested_prefixes() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}]\n  ports: [{port: 80}]\n- from: [{podSelector: {matchLabels: {app: client}}}]\n  ports: [{port: 443}]\n- from: [{ipBlock: {cidr: 10.0.2.0/23}}]\n  ports: [{port: 8443}]",
    )]);
    assert!(w.tcp(DB, WEB, 80), "pod IP inside the block");
    assert!(w.tcp("10.0.200.1", WEB, 80));
    assert!(!w.tcp(CLIENT, WEB, 80), "except hole");
    assert!(w.tcp(CLIENT, WEB, 443), "pod /32 inside the hole");
    assert!(w.tcp(CLIENT, WEB, 8443), "/23 covering the hole");
    assert!(w.tcp("10.0.2.99", WEB, 8443));
    assert!(!w.tcp("10.0.2.99", WEB, 80));
    assert!(!w.tcp("10.0.2.99", WEB, 443));
    assert!(w.tcp("10.0.3.99", WEB, 80) && w.tcp("10.0.3.99", WEB, 8443));
    assert!(!w.tcp("10.1.0.1", WEB, 80));
}

// Rule: an except hole with nothing else allowed must still be an entry (deny).
#[test]
fn except_hole_is_written() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\ningress:\n- from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]",
    )]);
    assert!(w.tcp(EXT, WEB, 80));
    assert!(!w.tcp(CLIENT, WEB, 80));
    assert!(!w.tcp(EXT6, WEB6, 80), "v4 block says nothing about v6");
}

// Rule: a CIDR with host bits set means its network.
#[test]
fn cidr_host_bits_mean_network() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\ningress:\n- from: [{ipBlock: {cidr: 10.0.2.77/24}}]",
    )]);
    assert!(w.tcp(CLIENT, WEB, 80));
    assert!(w.tcp("10.0.2.1", WEB, 80));
    assert!(!w.tcp("10.0.3.1", WEB, 80));
}

// Rule: protocol defaults to TCP.
#[test]
fn protocol_defaults_to_tcp() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\ningress:\n- ports: [{port: 53}]\n- ports: [{port: 53, protocol: UDP}, {protocol: SCTP}]",
    )]);
    assert!(w.tcp(EXT, WEB, 53));
    assert!(w.udp(EXT, WEB, 53));
    assert!(!w.udp(EXT, WEB, 54));
    assert!(
        w.allowed(EXT, WEB, PROTO_SCTP, Some(7)),
        "protocol-only rule"
    );
    assert!(
        w.allowed(EXT, WEB, PROTO_SCTP, None),
        "fragment of an all-ports protocol"
    );
    assert!(
        !w.allowed(EXT, WEB, PROTO_TCP, None),
        "TCP fragment: no all-ports TCP rule"
    );
    assert!(!w.allowed(EXT, WEB, PROTO_ICMP, None));
}

// Rule: ingress named ports resolve against the selected (destination) pod, so one
// rule means different numbers on different pods.
#[test]
fn named_port_ingress_resolves_per_selected_pod() {
    let w = world(vec![
        np(
            "prod",
            "p",
            "podSelector: {matchLabels: {app: web}}\ningress:\n- ports: [{port: http}]",
        ),
        np(
            "dev",
            "p",
            "podSelector: {matchLabels: {app: web}}\ningress:\n- ports: [{port: http}]",
        ),
    ]);
    assert!(w.tcp(EXT, WEB, 8080));
    assert!(!w.tcp(EXT, WEB, 9090));
    assert!(w.tcp(EXT, DEV_WEB, 9090));
    assert!(!w.tcp(EXT, DEV_WEB, 8080));
    assert!(!w.udp(EXT, WEB, 8080), "named port is per protocol");
}

// Rule: egress named ports resolve against each peer pod.
#[test]
fn named_port_egress_resolves_per_peer_pod() {
    let w = world(vec![np(
        "dev",
        "p",
        "podSelector: {matchLabels: {app: client}}\negress:\n- to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]\n  ports: [{port: http}, {port: 5000}]",
    )]);
    assert!(w.tcp(DEV_CLIENT, WEB, 8080));
    assert!(!w.tcp(DEV_CLIENT, WEB, 9090));
    assert!(w.tcp(DEV_CLIENT, DEV_WEB, 9090));
    assert!(!w.tcp(DEV_CLIENT, DEV_WEB, 8080));
    assert!(w.tcp(DEV_CLIENT, DEV_WEB, 5000));
    assert!(!w.tcp(DEV_CLIENT, DB, 8080));
}

// Rule (documented choice): an egress ipBlock (or all-peers) rule with a named port
// matches only pods inside the block that have that named port.
#[test]
fn named_port_egress_ip_block() {
    let w = world(vec![np(
        "dev",
        "p",
        "podSelector: {matchLabels: {app: client}}\negress:\n- to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.3.0/24]}}]\n  ports: [{port: http}, {port: 7000}]\n- ports: [{port: http, protocol: TCP}]\n  to: [{ipBlock: {cidr: 10.0.3.0/24}}]",
    )]);
    assert!(w.tcp(DEV_CLIENT, WEB, 8080));
    assert!(w.tcp(DEV_CLIENT, WEB, 7000));
    assert!(w.tcp(DEV_CLIENT, DB, 7000));
    assert!(!w.tcp(DEV_CLIENT, DB, 8080), "db has no named port http");
    assert!(!w.tcp(DEV_CLIENT, "10.9.9.9", 8080), "not a pod");
    assert!(w.tcp(DEV_CLIENT, DEV_WEB, 9090), "second rule");
    assert!(!w.tcp(DEV_CLIENT, DEV_WEB, 7000), "except");
}

// Rule: endPort makes an inclusive range.
#[test]
fn end_port_inclusive_range() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\ningress:\n- ports: [{port: 1000, endPort: 1010}, {port: 1011, protocol: TCP}, {port: 2000, endPort: 2000, protocol: UDP}]",
    )]);
    assert!(!w.tcp(EXT, WEB, 999));
    assert!(w.tcp(EXT, WEB, 1000));
    assert!(w.tcp(EXT, WEB, 1010));
    assert!(w.tcp(EXT, WEB, 1011));
    assert!(!w.tcp(EXT, WEB, 1012));
    assert!(w.udp(EXT, WEB, 2000) && !w.udp(EXT, WEB, 2001) && !w.tcp(EXT, WEB, 2000));
}

// Rule: hostNetwork pods are neither selected nor pod peers (only ipBlocks match
// their address, which is the node's).
#[test]
fn host_network_pods() {
    let w = world(vec![
        Object::Pod(pod("prod", "hn", &[("app", "client")], "node-b", &["172.18.0.3"]).host_network()),
        np("prod", "deny", "podSelector: {}\npolicyTypes: [Ingress, Egress]"),
        np(
            "prod",
            "allow",
            "podSelector: {matchLabels: {app: web}}\ningress:\n- from: [{podSelector: {matchLabels: {app: client}}}]",
        ),
    ]);
    assert!(
        !w.tcp(CLIENT, WEB, 80),
        "client's egress is isolated by deny"
    );
    assert!(
        !w.tcp("172.18.0.3", WEB, 80),
        "hostNetwork pod is not a pod peer"
    );
    assert!(
        w.tcp("172.18.0.3", DB, 80),
        "node-b's own address reaches db on node-b"
    );
    assert!(!w.tcp("172.18.0.2", DB, 80), "another node is ordinary");
    assert!(w
        .index
        .policies_selecting(&PodKey::new("prod", "hn"), Direction::Ingress)
        .is_empty());
}

// Rule: pods without an IP are skipped, and picked up once they have one.
#[test]
fn pods_without_ip_then_with_ip() {
    let mut w = world(vec![
        app_pod("prod", "new", "client", "node-a", &[]),
        np(
            "prod",
            "p",
            "podSelector: {matchLabels: {app: web}}\ningress:\n- from: [{podSelector: {matchLabels: {app: client}}}]",
        ),
    ]);
    assert!(!w.maps["node-a"]
        .0
        .endpoints
        .contains_key(&PodKey::new("prod", "new")));
    assert!(!w.tcp("10.0.9.9", WEB, 80));
    w.apply(app_pod("prod", "new", "client", "node-a", &["10.0.9.9"]));
    assert!(w.maps["node-a"]
        .0
        .endpoints
        .contains_key(&PodKey::new("prod", "new")));
    assert!(w.tcp("10.0.9.9", WEB, 80));
}

// Rule: dual-stack pods get both families.
#[test]
fn dual_stack() {
    let w = world(vec![
        app_pod("prod", "c6", "client", "node-b", &["10.0.9.6", "fd00::9:6"]),
        np(
            "prod",
            "p",
            "podSelector: {matchLabels: {app: web}}\ningress:\n- from: [{podSelector: {matchLabels: {app: client}}}]\negress:\n- to: [{podSelector: {matchLabels: {app: client}}}]",
        ),
    ]);
    assert!(w.tcp("fd00::9:6", WEB6, 80));
    assert!(w.tcp("10.0.9.6", WEB, 80));
    assert!(w.tcp(WEB6, "fd00::9:6", 80));
    assert!(!w.tcp(WEB6, EXT6, 80));
    let ep = w.maps["node-a"].0.endpoints[&PodKey::new("prod", "web")];
    assert_eq!(
        ep.flags & palisade_common::EP_HAS_V6,
        palisade_common::EP_HAS_V6
    );
    assert_eq!(
        ep.ipv6,
        WEB6.parse::<std::net::Ipv6Addr>().unwrap().octets()
    );
}

// Rule: namespace labels always include kubernetes.io/metadata.name.
#[test]
fn namespace_name_label() {
    let w = world(vec![np(
        "prod",
        "p",
        "podSelector: {matchLabels: {app: web}}\ningress:\n- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}}]",
    )]);
    assert!(w.tcp(OTHER_X, WEB, 80));
    assert!(!w.tcp(DEV_CLIENT, WEB, 80));
    // Also for a namespace whose object has not been seen.
    let w = world(vec![
        Object::Pod(pod("ghost", "g", &[], "node-b", &["10.0.9.7"])),
        np(
            "prod",
            "p",
            "podSelector: {matchLabels: {app: web}}\ningress:\n- from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [ghost]}]}}]",
        ),
    ]);
    assert!(w.tcp("10.0.9.7", WEB, 80));
}

// Rule: an invalid policy isolates the pods its podSelector selects, in its
// directions, with nothing allowed by it; other policies are unaffected; the error
// is reported once per change.
#[test]
fn invalid_policy_fails_closed() {
    let bad = np(
        "prod",
        "bad",
        "podSelector: {matchLabels: {app: web}}\ningress:\n- ports: [{port: 0}]\negress: [{}]",
    );
    let good = np(
        "prod",
        "good",
        "podSelector: {matchLabels: {app: web}}\ningress:\n- ports: [{port: 80}]",
    );
    let mut w = World::with(base());
    let out = w.index.apply(bad.clone());
    assert!(out.changed);
    assert_eq!(
        out.error.map(|e| e.to_string()).as_deref(),
        Some("test: networkpolicy prod/bad: spec.ingress[0].ports[0].port: 0 is outside 1..65535")
    );
    let again = w.index.apply(bad);
    assert!(
        !again.changed && again.error.is_none(),
        "reported once per change"
    );
    w.index.apply(good);
    w.build();
    assert!(w.tcp(EXT, WEB, 80), "other policies still apply");
    assert!(!w.tcp(EXT, WEB, 81));
    assert!(
        !w.tcp(WEB, EXT, 80),
        "egress isolated by the invalid policy"
    );
    assert!(w.tcp(EXT, DB, 81), "unselected pods unaffected");
    assert_eq!(
        w.index
            .policies_selecting(&PodKey::new("prod", "web"), Direction::Egress),
        vec!["prod/bad".to_string()]
    );
}

// Rule (documented choice): an invalid podSelector isolates the whole namespace.
#[test]
fn invalid_pod_selector_isolates_namespace() {
    let w = world(vec![np(
        "prod",
        "bad",
        "podSelector: {matchExpressions: [{key: app, operator: Is, values: [web]}]}",
    )]);
    assert!(!w.tcp(EXT, WEB, 80));
    assert!(!w.tcp(EXT, DB, 80));
    assert!(w.tcp(WEB, EXT, 80), "only Ingress (default types)");
    assert!(w.tcp(EXT, DEV_WEB, 80));
}

// Rule: ingress from the pod's own node is always allowed; egress to the node is
// ordinary.
#[test]
fn node_rule() {
    let w = world(vec![np(
        "prod",
        "deny",
        "podSelector: {}\npolicyTypes: [Ingress, Egress]",
    )]);
    assert!(w.tcp("172.18.0.2", WEB, 8080), "web is on node-a");
    assert!(w.tcp("fd00:18::2", WEB6, 8080));
    assert!(!w.tcp("172.18.0.3", WEB, 8080), "node-b is not web's node");
    assert!(
        !w.tcp(WEB, "172.18.0.2", 10250),
        "egress to the node is judged"
    );
}

// Rule: egress decisions are about the destination (backend) pod; services only
// contribute their frontends.
#[test]
fn services_are_frontends_only() {
    let svc = palisade_policy::model::ServiceSpec {
        namespace: "prod".into(),
        name: "web".into(),
        cluster_ips: vec![ip("10.96.0.10"), ip("fd00:96::a")],
        ports: vec![(Protocol::Tcp, 80), (Protocol::Udp, 53)],
        port_names: Vec::new(),
    };
    let mut idx = palisade_policy::ClusterIndex::new();
    idx.apply(Object::Service(svc));
    let d = palisade_policy::compile(&idx, &palisade_policy::NodeInfo { name: "n".into() });
    assert_eq!(d.services.len(), 4);
    let m = palisade_policy::encode(&d, &Default::default(), false);
    assert!(m.services.iter().any(|k| k.family == 4
        && k.port == 80
        && k.proto == PROTO_TCP
        && k.addr[..4] == [10, 96, 0, 10]));
    assert!(m
        .services
        .iter()
        .any(|k| k.family == 6 && k.port == 53 && k.proto == PROTO_UDP));
}
