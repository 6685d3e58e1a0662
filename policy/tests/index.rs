//! The index: no-op detection, deletes, lookups used by the agent.

mod common;

use common::*;
use palisade_policy::{ClusterIndex, Direction, Kind, Object, ObjectRef, PodKey};

#[test]
fn apply_detects_no_ops_and_deletes() {
    let mut idx = ClusterIndex::new();
    let p = pod("a", "p", &[("app", "x")], "node-a", &["10.0.0.1"]);
    assert!(idx.apply(Object::Pod(p.clone())).changed);
    assert!(
        !idx.apply(Object::Pod(p.clone())).changed,
        "identical re-apply"
    );
    let mut p2 = p.clone();
    p2.labels.insert("v".into(), "2".into());
    assert!(idx.apply(Object::Pod(p2)).changed);
    assert!(idx.apply(ns("a", &[])).changed);
    assert!(!idx.apply(ns("a", &[])).changed);
    let pol = np("a", "deny", "podSelector: {}");
    assert!(idx.apply(pol.clone()).changed);
    assert!(!idx.apply(pol).changed);
    assert!(idx.delete(&ObjectRef::new(Kind::NetworkPolicy, "a", "deny")));
    assert!(!idx.delete(&ObjectRef::new(Kind::NetworkPolicy, "a", "deny")));
    assert!(idx.delete(&ObjectRef::new(Kind::Pod, "a", "p")));
    assert!(idx.pod_by_ip(ip("10.0.0.1")).is_none());
}

#[test]
fn pod_by_ip_and_policies_selecting() {
    let mut idx = ClusterIndex::new();
    idx.apply(app_pod("a", "p", "x", "node-a", &["10.0.0.1", "fd00::1"]));
    idx.apply(Object::Pod(
        pod("a", "h", &[("app", "x")], "node-a", &["172.18.0.2"]).host_network(),
    ));
    idx.apply(np("a", "ing", "podSelector: {matchLabels: {app: x}}"));
    idx.apply(np("a", "eg", "podSelector: {}\npolicyTypes: [Egress]"));
    idx.apply(np("b", "other", "podSelector: {}"));
    assert_eq!(
        idx.pod_by_ip(ip("fd00::1")).map(|p| p.name.as_str()),
        Some("p")
    );
    assert!(
        idx.pod_by_ip(ip("172.18.0.2")).is_none(),
        "hostNetwork excluded"
    );
    assert_eq!(
        idx.policies_selecting(&PodKey::new("a", "p"), Direction::Ingress),
        vec!["a/ing".to_string()]
    );
    assert_eq!(
        idx.policies_selecting(&PodKey::new("a", "p"), Direction::Egress),
        vec!["a/eg".to_string()]
    );
    assert!(idx
        .policies_selecting(&PodKey::new("a", "h"), Direction::Ingress)
        .is_empty());
}

#[test]
fn endpoint_slices_do_not_change_compilation() {
    let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {namespace: a, name: s-1, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\n";
    let obj = palisade_policy::parse_yaml_documents(text, "e.yaml")
        .remove(0)
        .unwrap();
    let mut idx = ClusterIndex::new();
    assert!(!idx.apply(obj).changed);
    assert_eq!(idx.endpoint_slices().count(), 1);
}

#[test]
fn pods_in_lists_exactly_the_namespace() {
    let mut idx = ClusterIndex::new();
    for (ns, name, ip) in [
        ("pro", "a", "10.0.0.1"),
        ("prod", "b", "10.0.0.2"),
        ("prod-eu", "c", "10.0.0.3"),
        ("prod", "d", "10.0.0.4"),
        ("prodx", "e", "10.0.0.5"),
    ] {
        idx.apply(Object::Pod(pod(ns, name, &[], "node-a", &[ip])));
    }
    let names = |ns: &str| -> Vec<String> { idx.pods_in(ns).map(|p| p.name.clone()).collect() };
    assert_eq!(names("prod"), vec!["b", "d"]);
    assert_eq!(names("pro"), vec!["a"]);
    assert_eq!(names("prod-eu"), vec!["c"]);
    assert!(names("pr").is_empty());
    let keys: Vec<String> = idx.pods().map(|p| p.key().to_string()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "pods list in the order of their keys' text");
}
