//! Unit tests of scenario parsing and validation.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Result};

use super::*;
use crate::matrix::{Cell, Matrix, Peer, Via};
use crate::model::{ClusterSpec, Family, LabelMap, Transport};

fn p(text: &str) -> Result<Scenario> {
    parse(text, Path::new("case.yaml"))
}

fn err(text: &str) -> String {
    match p(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => format!("{e:#}"),
    }
}

const MINI: &str = r#"
name: mini
steps:
  - expect:
      - port: 80
        matrix: |
          from\to x/a x/b
          x/a      .   X
          node/1   .   ?
"#;

#[test]
fn default_model_when_cluster_omitted() {
    let s = p(MINI).expect("parse");
    assert_eq!(s.families, vec![Family::Ipv4, Family::Ipv6]);
    assert_eq!(s.cluster.nodes, 2);
    let keys: Vec<String> = s.cluster.pods.iter().map(|p| p.key()).collect();
    assert_eq!(
        keys,
        ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"]
    );
    let nodes: Vec<usize> = s.cluster.pods.iter().map(|p| p.node).collect();
    assert_eq!(nodes, [1, 2, 1, 2, 1, 2, 1, 2, 1]);
    assert_eq!(
        s.cluster.pods[4].labels,
        LabelMap::from([("pod".into(), "b".into())])
    );
    assert!(s.cluster.namespaces.values().all(|l| l.is_empty()));
    let ports = &s.cluster.pods[0].ports;
    assert_eq!(ports.len(), 6);
    assert!(ports.iter().any(|p| p.port == 81
        && p.protocol == Transport::Udp
        && p.name.as_deref() == Some("serve-81-udp")));
    let e = &s.steps[0].expect[0];
    assert_eq!(
        (e.protocol, e.via, e.ignore_loopback),
        (Transport::Tcp, Via::Service, true)
    );
    assert_eq!(e.matrix.rows[1].0, Peer::Node(1));
    assert_eq!(e.matrix.rows[0].1, vec![Cell::Reachable, Cell::Blocked]);
    assert!(!e.matrix.checked(true, 0, 0), "diagonal ignored");
    assert!(e.matrix.checked(false, 0, 0));
    assert!(!e.matrix.checked(true, 1, 1), "? is unchecked");
}

#[test]
fn empty_cluster_mapping_is_default_model() {
    let s = p(&MINI.replace("name: mini", "name: mini\ncluster: {}")).expect("parse");
    assert_eq!(s.cluster, ClusterSpec::default_model(Family::Ipv4));
    let s = p(&MINI.replace("name: mini", "name: mini\ncluster: {nodes: 3}")).expect("parse");
    assert_eq!(s.cluster.pods[2].node, 3);
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let e = err(&MINI.replace("port: 80", "port: 80\n        protcol: TCP"));
    assert!(e.contains("case.yaml") && e.contains("protcol"), "{e}");
    let e = err(&MINI.replace("name: mini", "name: mini\nextra: 1"));
    assert!(e.contains("extra"), "{e}");
    let e = err(&MINI.replace("name: mini", "name: mini\ncluster: {nodez: 2}"));
    assert!(e.contains("nodez"), "{e}");
    let e = err(&MINI.replace("- expect:", "- expct:"));
    assert!(e.contains("expct"), "{e}");
}

#[test]
fn missing_required_keys() {
    assert!(err("steps: []").contains("name"));
    assert!(err("name: a\nsteps: []").contains("at least one step"));
    assert!(err("name: a").contains("steps"));
}

#[test]
fn matrix_errors() {
    let m = |body: &str| {
        format!(
            "name: m\nsteps:\n  - expect:\n      - port: 80\n        matrix: |\n{}",
            body.lines()
                .map(|l| format!("          {l}\n"))
                .collect::<String>()
        )
    };
    let e = err(&m("to x/a\nx/a ."));
    assert!(e.contains("from\\to"), "{e}");
    let e = err(&m("from\\to x/a x/b\nx/a . "));
    assert!(e.contains("1 cells for 2 destinations"), "{e}");
    let e = err(&m("from\\to x/a\nx/b o"));
    assert!(e.contains("\"o\""), "{e}");
    let e = err(&m("from\\to x/a\nx/b x"));
    assert!(e.contains("\"x\""), "lowercase x is not a cell: {e}");
    let e = err(&m("from\\to x/a x/a\nx/b . ."));
    assert!(e.contains("twice"), "{e}");
    let e = err(&m("from\\to x/a\nq/q ."));
    assert!(e.contains("q/q"), "{e}");
    let e = err(&m("from\\to node/1\nx/a ."));
    assert!(e.contains("only with cluster.node_ports"), "{e}");
    let e = err(&m("from\\to x/a\nnode/3 ."));
    assert!(e.contains("node/3"), "{e}");
    let e = err(&m("from\\to x/a\n@nobody ."));
    assert!(e.contains("@nobody"), "{e}");
    let e = err(&m("from\\to x/a"));
    assert!(e.contains("no source rows"), "{e}");
    assert!(
        err(&m("from\\to x/a\nx/b .").replace("port: 80", "port: 82"))
            .contains("does not serve TCP/82")
    );
    // A `?` cell on an unserved port is fine.
    p(&m("from\\to x/a\nx/b ?").replace("port: 80", "port: 82")).expect("unchecked");
}

#[test]
fn field_value_errors() {
    assert!(err(&MINI.replace("port: 80", "port: 80\n        protocol: tcp")).contains("protocol"));
    assert!(err(&MINI.replace("port: 80", "port: 80\n        via: node")).contains("via"));
    assert!(
        err(&MINI.replace("name: mini", "name: mini\nfamilies: [ipv5]")).contains("families[0]")
    );
    let e = err(&MINI.replace("- expect:", "- delete: [x/nothing]\n    expect:"));
    assert!(e.contains("steps[0].delete[0]"), "{e}");
    let e = err(&MINI.replace("- expect:", "- set_labels: {pods: {x/q: {}}}\n    expect:"));
    assert!(e.contains("x/q"), "{e}");
}

#[test]
fn custom_cluster() {
    let text = r#"
name: custom
families: [ipv4]
cluster:
  nodes: 3
  namespaces:
    x: {}
    y: {team: blue}
  ports:
    - {port: 80, protocol: TCP, name: serve-80-tcp}
    - {port: 81, protocol: TCP, name: serve-81-tcp, service_port: 8081}
  pods:
    - name: x/a
      labels: {pod: a}
    - name: y/b
      node: 1
      ports:
        - {port: 8080, protocol: TCP, name: http}
  externals:
    - name: backup
      ports: [{port: 80, protocol: TCP}]
steps:
  - apply:
      - kind: NetworkPolicy
        metadata: {name: p, namespace: x}
        spec:
          podSelector: {}
          ingress: [{from: [{ipBlock: {cidr: "{{host @backup}}"}}]}]
    expect:
      - port: 81
        matrix: |
          from\to x/a
          @backup  .
  - delete: [x/p]
    set_labels:
      pods: {x/a: {pod: a, extra: "1"}}
      namespaces: {y: {team: red}}
"#;
    let s = p(text).expect("parse");
    assert_eq!(s.families, vec![Family::Ipv4]);
    assert_eq!(s.cluster.nodes, 3);
    assert_eq!(s.cluster.pods[0].node, 1);
    assert_eq!(s.cluster.pods[1].node, 1);
    assert_eq!(s.cluster.pods[0].ports[1].service_port, 8081);
    assert_eq!(s.cluster.pods[1].ports[0].port, 8080);
    assert_eq!(s.cluster.namespaces["y"]["team"], "blue");
    assert_eq!(s.cluster.externals[0].name, "backup");
    assert_eq!(
        s.steps[1].delete,
        vec![PolicyRef::Namespaced("x".to_string(), "p".to_string())]
    );
    assert_eq!(s.steps[1].set_pod_labels[0].1["extra"], "1");
    assert_eq!(s.steps[1].set_namespace_labels[0].1["team"], "red");
    // Pods must be in listed namespaces; nodes in range.
    assert!(err(&text.replace("name: y/b", "name: w/b")).contains("namespace \"w\""));
    assert!(err(&text.replace("node: 1", "node: 4")).contains("node"));
    // Placeholders must name existing things.
    assert!(err(&text.replace("{{host @backup}}", "{{host @other}}")).contains("@other"));
    assert!(err(&text.replace("{{host @backup}}", "{{cidr x/a}}")).contains("unknown placeholder"));
    // Policies must be in a listed namespace.
    assert!(err(&text.replace("namespace: x}", "namespace: q}")).contains("metadata.namespace"));
}

#[test]
fn placeholder_substitution() {
    let resolve = |p: &Peer| -> Result<IpAddr> {
        Ok(match p {
            Peer::Pod(k) if k == "x/a" => "10.100.1.10".parse()?,
            Peer::External(n) if n == "backup" => "10.254.0.10".parse()?,
            Peer::Node(1) => "10.255.0.1".parse()?,
            _ => bail!("unknown {p}"),
        })
    };
    let v = serde_json::json!({
        "spec": {"ingress": [{"from": [
            {"ipBlock": {"cidr": "{{host x/a}}", "except": ["{{ip @backup}}/32", "{{ ip node/1 }}/24"]}},
            {"ipBlock": {"cidr": "{{ip x/a}}/4"}}
        ]}], "count": 3}
    });
    let out = substitute(&v, Family::Ipv4, &resolve).expect("subst");
    let from = &out["spec"]["ingress"][0]["from"];
    assert_eq!(from[0]["ipBlock"]["cidr"], "10.100.1.10/32");
    assert_eq!(from[0]["ipBlock"]["except"][0], "10.254.0.10/32");
    assert_eq!(from[0]["ipBlock"]["except"][1], "10.255.0.1/24");
    assert_eq!(from[1]["ipBlock"]["cidr"], "10.100.1.10/4");
    assert_eq!(out["spec"]["count"], 3);
    let v6 = |_: &Peer| -> Result<IpAddr> { Ok("fd00:100:1::a".parse()?) };
    assert_eq!(
        substitute_str("{{host x/a}}", Family::Ipv6, &v6).expect("v6"),
        "fd00:100:1::a/128"
    );
    assert!(substitute_str("{{ip x/a", Family::Ipv4, &resolve).is_err());
    assert!(substitute_str("{{ip y/z}}", Family::Ipv4, &resolve).is_err());
}

#[test]
fn matrix_roundtrip_display() {
    let m = Matrix::parse("from\\to x/a @e\n node/2 . X\n x/a ? .\n").expect("parse");
    assert_eq!(m.to_string(), "from\\to x/a @e\nnode/2 . X\nx/a ? .");
    assert_eq!(m.columns[1], Peer::External("e".into()));
}

/// FORMAT.md, "ClusterNetworkPolicy cases": CNP manifests in `apply`,
/// `delete: [ClusterNetworkPolicy/<name>]`, node labels and ports, `node/N` as
/// a destination, unnamed ports, steps with only `expect`, empty namespaces and
/// long namespace names.
#[test]
fn cluster_network_policy_cases() {
    let text = r#"
name: cnp
cluster:
  nodes: 2
  node_labels: {1: {zone: a}, 2: {zone: b}}
  node_ports: [{port: 8080, protocol: TCP}]
  namespaces:
    network-policy-conformance-gryffindor: {}
    empty: {}
  ports: [{port: 80, protocol: TCP}]
  pods:
    - {name: network-policy-conformance-gryffindor/harry, labels: {pod: harry}}
steps:
  - apply:
      - apiVersion: policy.networking.k8s.io/v1alpha2
        kind: ClusterNetworkPolicy
        metadata: {name: deny-nodes}
        spec:
          tier: Admin
          priority: 10
          subject: {namespaces: {}}
          egress:
            - action: Deny
              to: [{nodes: {matchLabels: {zone: a}}}]
    expect:
      - port: 8080
        protocol: TCP
        matrix: |
          from\to node/1 node/2
          network-policy-conformance-gryffindor/harry X .
  - expect:
      - port: 80
        matrix: |
          from\to network-policy-conformance-gryffindor/harry
          node/1 .
  - delete: [ClusterNetworkPolicy/deny-nodes]
"#;
    let s = parse(text, Path::new("cnp.yaml")).expect("parses");
    assert_eq!(s.cluster.node_labels[&1]["zone"], "a");
    assert_eq!(s.cluster.node_ports[0].port, 8080);
    assert_eq!(s.cluster.node_ports[0].name, None);
    assert!(s.cluster.namespaces.contains_key("empty"));
    assert_eq!(
        policy_key(&s.steps[0].apply[0]).unwrap(),
        PolicyRef::Cluster("deny-nodes".into())
    );
    assert!(s.steps[1].apply.is_empty() && s.steps[1].expect.len() == 1);
    assert_eq!(
        s.steps[2].delete,
        vec![PolicyRef::Cluster("deny-nodes".into())]
    );
    let err = |t: &str| parse(t, Path::new("cnp.yaml")).unwrap_err().to_string();
    assert!(err(&text.replace(
        "delete: [ClusterNetworkPolicy/deny-nodes]",
        "delete: [ClusterNetworkPolicy/other]"
    ))
    .contains("no ClusterNetworkPolicy other"));
    assert!(err(&text.replace("1: {zone: a}", "3: {zone: a}")).contains("node 3"));
    assert!(err(&text.replace(
        "metadata: {name: deny-nodes}",
        "metadata: {name: deny-nodes, namespace: empty}"
    ))
    .contains("cluster-scoped"));
    assert!(
        err(&text.replace("  node_ports: [{port: 8080, protocol: TCP}]\n", ""))
            .contains("node_ports")
    );
}
