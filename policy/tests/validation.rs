//! Bad input: every validation error with its exact message, and no panic on any
//! input through the YAML path.

use palisade_policy::{parse_yaml_documents, ErrorKind, Object};
use proptest::prelude::*;

/// The error of the single NetworkPolicy in `spec` (YAML at column 0).
fn policy_error(spec: &str) -> String {
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    let text = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  namespace: x\n  name: deny-a\nspec:\n{body}"
    );
    let mut v = parse_yaml_documents(&text, "deny.yaml");
    assert_eq!(v.len(), 1);
    let obj = v.remove(0).expect("an invalid policy still converts");
    obj.validation_error()
        .map(|e| e.to_string())
        .unwrap_or_else(|| "valid".to_string())
}

const PFX: &str = "deny.yaml: networkpolicy x/deny-a: ";

#[track_caller]
fn expect(spec: &str, msg: &str) {
    assert_eq!(policy_error(spec), format!("{PFX}{msg}"), "spec:\n{spec}");
}

#[test]
fn bad_cidr() {
    expect(
        "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0/8}}]",
        "spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR \"10.0.0/8\"",
    );
    expect(
        "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.1}}]",
        "spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR \"10.0.0.1\"",
    );
    expect(
        "podSelector: {}\negress:\n- to: [{ipBlock: {cidr: 10.0.0.0/33}}]",
        "spec.egress[0].to[0].ipBlock.cidr: invalid CIDR \"10.0.0.0/33\"",
    );
    expect(
        "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/16, except: [nope]}}]",
        "spec.ingress[0].from[0].ipBlock.except[0]: invalid CIDR \"nope\"",
    );
}

#[test]
fn mixed_family_except() {
    expect(
        "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/16, except: [\"2001:db8::/64\"]}}]",
        "spec.ingress[0].from[0].ipBlock.except[0]: 2001:db8::/64 is not the same address family as cidr 10.0.0.0/16",
    );
}

#[test]
fn except_not_inside_cidr() {
    expect(
        "podSelector: {}\ningress:\n- from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]",
        "spec.ingress[0].from[1].ipBlock.except[0]: 10.1.0.0/24 is not inside cidr 10.0.0.0/16",
    );
    // API: a strict subset; the cidr itself is not inside.
    expect(
        "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]",
        "spec.ingress[0].from[0].ipBlock.except[0]: 10.0.0.0/16 is not inside cidr 10.0.0.0/16",
    );
    // Host bits are accepted on both and mean the network.
    assert_eq!(
        policy_error("podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.9.9/16, except: [10.0.1.1/24]}}]"),
        "valid"
    );
}

#[test]
fn port_out_of_range() {
    expect(
        "podSelector: {}\ningress:\n- ports: [{port: 0}]",
        "spec.ingress[0].ports[0].port: 0 is outside 1..65535",
    );
    expect(
        "podSelector: {}\negress:\n- ports: [{port: 80}, {port: 65536}]",
        "spec.egress[0].ports[1].port: 65536 is outside 1..65535",
    );
    expect(
        "podSelector: {}\ningress:\n- ports: [{port: 80, endPort: 70000}]",
        "spec.ingress[0].ports[0].endPort: 70000 is outside 1..65535",
    );
    expect(
        "podSelector: {}\ningress:\n- ports: [{port: -1}]",
        "spec.ingress[0].ports[0].port: -1 is outside 1..65535",
    );
    // API: a quoted number is a (bad) port name, not a number.
    expect(
        "podSelector: {}\ningress:\n- ports: [{port: \"80\"}]",
        "spec.ingress[0].ports[0].port: invalid port name \"80\"",
    );
}

#[test]
fn end_port_rules() {
    expect(
        "podSelector: {}\ningress:\n- ports: [{endPort: 90}]",
        "spec.ingress[0].ports[0].endPort: requires a numeric port",
    );
    expect(
        "podSelector: {}\ningress:\n- ports: [{port: http, endPort: 90}]",
        "spec.ingress[0].ports[0].endPort: requires a numeric port",
    );
    expect(
        "podSelector: {}\ningress:\n- ports: [{port: 443, endPort: 80}]",
        "spec.ingress[0].ports[0].endPort: 80 is below port 443",
    );
    assert_eq!(
        policy_error("podSelector: {}\ningress:\n- ports: [{port: 80, endPort: 80}]"),
        "valid"
    );
}

#[test]
fn unknown_protocol() {
    expect(
        "podSelector: {}\ningress:\n- ports: [{protocol: ICMP}]",
        "spec.ingress[0].ports[0].protocol: unknown protocol \"ICMP\" (expected TCP, UDP or SCTP)",
    );
    expect(
        "podSelector: {}\ningress:\n- ports: [{protocol: tcp, port: 80}]",
        "spec.ingress[0].ports[0].protocol: unknown protocol \"tcp\" (expected TCP, UDP or SCTP)",
    );
}

#[test]
fn unknown_operator() {
    expect(
        "podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}",
        "spec.podSelector.matchExpressions[0].operator: unknown operator \"Equals\" (expected In, NotIn, Exists or DoesNotExist)",
    );
    expect(
        "podSelector: {}\ningress:\n- from: [{namespaceSelector: {matchExpressions: [{key: a, operator: Exists}, {key: b, operator: in, values: [x]}]}}]",
        "spec.ingress[0].from[0].namespaceSelector.matchExpressions[1].operator: unknown operator \"in\" (expected In, NotIn, Exists or DoesNotExist)",
    );
}

#[test]
fn selector_values() {
    expect(
        "podSelector: {matchExpressions: [{key: app, operator: In}]}",
        "spec.podSelector.matchExpressions[0].values: must be non-empty when operator is In",
    );
    expect(
        "podSelector: {matchExpressions: [{key: app, operator: NotIn, values: []}]}",
        "spec.podSelector.matchExpressions[0].values: must be non-empty when operator is NotIn",
    );
    expect(
        "podSelector: {}\negress:\n- to: [{podSelector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}}]",
        "spec.egress[0].to[0].podSelector.matchExpressions[0].values: must be empty when operator is Exists",
    );
    expect(
        "podSelector: {matchExpressions: [{key: app, operator: DoesNotExist, values: [a]}]}",
        "spec.podSelector.matchExpressions[0].values: must be empty when operator is DoesNotExist",
    );
}

#[test]
fn label_syntax() {
    expect(
        "podSelector: {matchLabels: {app: \"has space\"}}",
        "spec.podSelector.matchLabels.app: invalid label value \"has space\"",
    );
    expect(
        "podSelector: {matchLabels: {\"-bad\": x}}",
        "spec.podSelector.matchLabels: invalid label key \"-bad\"",
    );
    expect(
        "podSelector: {matchExpressions: [{key: app, operator: In, values: [\"a/b\"]}]}",
        "spec.podSelector.matchExpressions[0].values[0]: invalid label value \"a/b\"",
    );
}

#[test]
fn peers_and_types() {
    expect(
        "podSelector: {}\ningress:\n- from: [{}]",
        "spec.ingress[0].from[0]: must specify podSelector, namespaceSelector or ipBlock",
    );
    expect(
        "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]",
        "spec.ingress[0].from[0]: ipBlock may not be combined with podSelector or namespaceSelector",
    );
    expect(
        "podSelector: {}\npolicyTypes: [Ingress, Egres]",
        "spec.policyTypes[1]: unknown policy type \"Egres\" (expected Ingress or Egress)",
    );
    expect(
        "podSelector: {}\npolicyTypes: [Ingress, Egress, Ingress]",
        "spec.policyTypes: may not specify more than two policyTypes (got 3)",
    );
    expect(
        "podSelector: {}\ningress:\n- ports: [{port: \"HTTP\"}]",
        "spec.ingress[0].ports[0].port: invalid port name \"HTTP\"",
    );
}

#[test]
fn document_errors() {
    let v = parse_yaml_documents(
        "kind: Deployment\nmetadata: {name: x}\n---\nfoo: [\n",
        "f.yaml",
    );
    assert_eq!(v.len(), 2);
    let e0 = v[0].as_ref().unwrap_err();
    assert_eq!(e0.kind, ErrorKind::UnsupportedKind);
    assert_eq!(
        e0.to_string(),
        "f.yaml: document 1: unsupported kind \"Deployment\""
    );
    let e1 = v[1].as_ref().unwrap_err();
    assert_eq!(e1.kind, ErrorKind::Parse);
    assert!(
        e1.to_string()
            .starts_with("f.yaml: document 2: invalid YAML: "),
        "{e1}"
    );

    let v = parse_yaml_documents(
        "apiVersion: v1\nkind: Pod\nmetadata: {namespace: a}\n",
        "p.yaml",
    );
    assert_eq!(
        v[0].as_ref().unwrap_err().to_string(),
        "p.yaml: pod a/: metadata.name: required"
    );
    let v = parse_yaml_documents("name: x\n", "p.yaml");
    assert_eq!(
        v[0].as_ref().unwrap_err().to_string(),
        "p.yaml: document 1: missing kind"
    );
    let v = parse_yaml_documents(
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: a, name: s}\nspec: {clusterIP: 10.0.0.300, ports: [{port: 80}]}\n",
        "s.yaml",
    );
    assert_eq!(
        v[0].as_ref().unwrap_err().to_string(),
        "s.yaml: service a/s: spec.clusterIPs: invalid IP address \"10.0.0.300\""
    );
}

#[test]
fn lists_and_multi_documents() {
    let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: a}
- apiVersion: v1
  kind: Pod
  metadata: {namespace: a, name: p, labels: {app: x}}
  spec:
    nodeName: n1
    containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
  status: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]}
---
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: a, name: np}
spec: {podSelector: {}}
"#;
    let v = parse_yaml_documents(text, "l.yaml");
    assert_eq!(v.len(), 3, "{v:?}");
    match &v[1] {
        Ok(Object::Pod(p)) => {
            assert_eq!(p.ips.len(), 2);
            assert_eq!(p.named_ports[0].port, 8080);
            assert_eq!(p.node_name.as_deref(), Some("n1"));
        }
        other => panic!("{other:?}"),
    }
    match &v[0] {
        Ok(Object::Namespace(n)) => {
            assert_eq!(n.labels["kubernetes.io/metadata.name"], "a");
        }
        other => panic!("{other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    // No panic on arbitrary text.
    #[test]
    fn yaml_never_panics(s in ".{0,400}") {
        let _ = parse_yaml_documents(&s, "fuzz");
    }

    // No panic on arbitrary values in the fields we read, in a well-formed manifest.
    #[test]
    fn policy_fields_never_panic(
        cidr in "[0-9a-f:./]{0,24}",
        except in "[0-9a-f:./]{0,24}",
        port in "[-a-zA-Z0-9\"]{0,8}",
        end in proptest::option::of(any::<i64>()),
        proto in "[A-Za-z]{0,5}",
        op in "[A-Za-z]{0,12}",
        key in "[-a-z0-9./_]{0,20}",
    ) {
        let end = end.map(|e| format!(", endPort: {e}")).unwrap_or_default();
        let text = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{namespace: x, name: y}}\nspec:\n  podSelector: {{matchExpressions: [{{key: \"{key}\", operator: \"{op}\", values: [a]}}]}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: \"{cidr}\", except: [\"{except}\"]}}}}]\n    ports: [{{protocol: \"{proto}\", port: {port}{end}}}]\n"
        );
        let _ = parse_yaml_documents(&text, "fuzz");
    }
}

// Strict reading (kubectl --validate=strict): an unknown field makes a policy
// invalid (fail closed), with the field named.
#[test]
fn unknown_fields_make_the_policy_invalid() {
    expect(
        "podSelector: {}\ningres:\n- from: [{podSelector: {}}]",
        "spec.ingres: unknown field",
    );
    expect(
        "podSelector: {}\ningress:\n- from:\n  - ipBlock: {cidr: 10.0.0.0/8, exept: [10.1.0.0/16]}",
        "spec.ingress[0].from[0].ipBlock.exept: unknown field",
    );
    expect(
        "podSelector: {}\ningress:\n- from: [{podSelector: {}}]\n  port: [{port: 80}]",
        "spec.ingress[0].port: unknown field",
    );
}

#[test]
fn unknown_fields_and_bad_addresses_refuse_other_objects() {
    let v = parse_yaml_documents(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x, lables: {a: b}}\n",
        "p.yaml",
    );
    assert_eq!(
        v[0].as_ref().map(|_| ()).unwrap_err().to_string(),
        "p.yaml: pod x/p: metadata.lables: unknown field"
    );
    let v = parse_yaml_documents(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nstatus: {podIP: 10.100.1.999}\n",
        "p.yaml",
    );
    assert_eq!(
        v[0].as_ref().map(|_| ()).unwrap_err().to_string(),
        "p.yaml: pod x/p: status.podIP: invalid IP address \"10.100.1.999\""
    );
    let v = parse_yaml_documents(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nstatus: {podIPs: [{ip: 10.1.1.1}, {ip: \"fd00::x\"}]}\n",
        "p.yaml",
    );
    assert_eq!(
        v[0].as_ref().map(|_| ()).unwrap_err().to_string(),
        "p.yaml: pod x/p: status.podIPs[1].ip: invalid IP address \"fd00::x\""
    );
    let v = parse_yaml_documents(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec: {nodeName: n, containers: [{name: c, resources: {limits: {cpu: 1}}, ports: [{containerPort: 80, name: http}]}]}\nstatus: {podIP: 10.1.1.1, phase: Running}\n",
        "p.yaml",
    );
    assert!(v[0].is_ok(), "{:?}", v[0]);
}
