//! ClusterNetworkPolicy parsing and validation: one test per rule of the API's
//! schema and CEL validations, each checking the exact message (object and field
//! path), plus the index's treatment of invalid objects (as if never admitted) and
//! Node parsing.

mod common;

use common::{cnp, cnp_text};
use palisade_policy::{
    parse_yaml_documents, Action, ClusterIndex, ClusterPeer, ErrorKind, Kind, Object, ObjectRef,
    Protocol, ProtocolMatch, Subject, Tier,
};

/// The report (validation error, or unsupported-rule note) of the single
/// ClusterNetworkPolicy `cnp-a` with `spec`.
fn report(spec: &str) -> String {
    let text = cnp_text("cnp-a", spec);
    let mut v = parse_yaml_documents(&text, "cnp.yaml");
    assert_eq!(v.len(), 1);
    match v.remove(0) {
        Ok(Object::ClusterNetworkPolicy(p)) => p
            .report()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "valid".to_string()),
        Ok(other) => panic!("not a cluster policy: {other:?}"),
        Err(e) => format!("parse error: {e}"),
    }
}

const PFX: &str = "cnp.yaml: clusternetworkpolicy cnp-a: ";
const HEAD: &str = "tier: Admin\npriority: 10\nsubject: {namespaces: {}}\n";

#[track_caller]
fn expect(spec: &str, msg: &str) {
    assert_eq!(report(spec), format!("{PFX}{msg}"), "spec:\n{spec}");
}

/// `HEAD` plus `rest`.
#[track_caller]
fn expect_rules(rest: &str, msg: &str) {
    expect(&format!("{HEAD}{rest}"), msg);
}

#[test]
fn valid_policy_parses_to_the_model() {
    let o = cnp(
        "full",
        "tier: Baseline\npriority: 1000\nsubject:\n  pods:\n    namespaceSelector: {matchLabels: {team: a}}\n    podSelector: {matchLabels: {app: web}}\ningress:\n- name: from-monitoring\n  action: Accept\n  from:\n  - namespaces: {matchLabels: {team: mon}}\n  - pods: {podSelector: {}}\n  protocols:\n  - tcp: {destinationPort: {number: 80}}\n  - udp: {destinationPort: {range: {start: 1000, end: 2000}}}\n  - destinationNamedPort: http\negress:\n- action: Pass\n  to:\n  - networks: [10.0.0.1/8, \"fd00::/16\"]\n  - nodes: {matchExpressions: [{key: zone, operator: Exists}]}\n",
    );
    let Object::ClusterNetworkPolicy(spec) = o else {
        panic!()
    };
    assert_eq!(
        spec.object_ref(),
        ObjectRef::new(Kind::ClusterNetworkPolicy, "", "full")
    );
    let p = spec.valid().expect("valid");
    assert_eq!(p.tier, Tier::Baseline);
    assert_eq!(p.priority, 1000);
    assert!(matches!(p.subject, Subject::Pods { .. }));
    assert_eq!(p.ingress.len(), 1);
    assert_eq!(p.ingress[0].name.as_deref(), Some("from-monitoring"));
    assert_eq!(p.ingress[0].action, Action::Accept);
    assert_eq!(p.ingress[0].peers.len(), 2);
    assert_eq!(
        p.ingress[0].protocols,
        vec![
            ProtocolMatch::Ports {
                protocol: Protocol::Tcp,
                first: 80,
                last: 80
            },
            ProtocolMatch::Ports {
                protocol: Protocol::Udp,
                first: 1000,
                last: 2000
            },
            ProtocolMatch::Named("http".to_string()),
        ]
    );
    assert_eq!(p.egress[0].action, Action::Pass);
    // API: a CIDR with host bits set means its network.
    assert_eq!(
        p.egress[0].peers[0],
        ClusterPeer::Networks(vec![
            "10.0.0.0/8".parse().unwrap(),
            "fd00::/16".parse().unwrap()
        ])
    );
    assert!(p.unsupported.is_none());
}

#[test]
fn spec_and_api_version() {
    let text = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata:\n  name: cnp-a\n";
    let o = parse_yaml_documents(text, "cnp.yaml").remove(0).unwrap();
    assert_eq!(
        o.validation_error().unwrap().to_string(),
        format!("{PFX}spec: required")
    );
    let text = cnp_text("cnp-a", HEAD).replace("v1alpha2", "v1alpha1");
    let o = parse_yaml_documents(&text, "cnp.yaml").remove(0).unwrap();
    assert_eq!(
        o.validation_error().unwrap().to_string(),
        format!("{PFX}apiVersion: unsupported apiVersion \"policy.networking.k8s.io/v1alpha1\" (expected policy.networking.k8s.io/v1alpha2)")
    );
    // Unknown top-level fields are parse errors of the document.
    let text = format!("{}status2: {{}}\n", cnp_text("cnp-a", HEAD));
    let e = parse_yaml_documents(&text, "cnp.yaml")
        .remove(0)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Parse);
    assert!(e.to_string().contains("unknown field `status2`"), "{e}");
}

#[test]
fn tier() {
    expect(
        "priority: 1\nsubject: {namespaces: {}}",
        "spec.tier: required",
    );
    expect(
        "tier: admin\npriority: 1\nsubject: {namespaces: {}}",
        "spec.tier: unsupported value \"admin\" (expected Admin or Baseline)",
    );
}

#[test]
fn priority() {
    expect(
        "tier: Admin\nsubject: {namespaces: {}}",
        "spec.priority: required",
    );
    expect(
        "tier: Admin\npriority: 1001\nsubject: {namespaces: {}}",
        "spec.priority: 1001 is outside 0..1000",
    );
    expect(
        "tier: Admin\npriority: -1\nsubject: {namespaces: {}}",
        "spec.priority: -1 is outside 0..1000",
    );
    expect(
        "tier: Admin\npriority: \"5\"\nsubject: {namespaces: {}}",
        "spec.priority: expected an integer, got a string",
    );
    assert_eq!(
        report("tier: Admin\npriority: 0\nsubject: {namespaces: {}}"),
        "valid"
    );
}

#[test]
fn subject_exactly_one() {
    expect("tier: Admin\npriority: 1", "spec.subject: required");
    expect(
        "tier: Admin\npriority: 1\nsubject: {}",
        "spec.subject: must set exactly one of namespaces and pods",
    );
    expect(
        "tier: Admin\npriority: 1\nsubject: {namespaces: {}, pods: {podSelector: {}}}",
        "spec.subject: must set exactly one of namespaces and pods (both are set)",
    );
    expect(
        "tier: Admin\npriority: 1\nsubject: {pods: {namespaceSelector: {}}}",
        "spec.subject.pods.podSelector: required",
    );
    expect(
        "tier: Admin\npriority: 1\nsubject: {pods: {podSelector: {}, nodeSelector: {}}}",
        "spec.subject.pods.nodeSelector: unknown field (expected one of: namespaceSelector, podSelector)",
    );
}

#[test]
fn selectors_are_validated_with_their_path() {
    expect(
        "tier: Admin\npriority: 1\nsubject: {namespaces: {matchExpressions: [{key: a, operator: Maybe}]}}",
        "spec.subject.namespaces.matchExpressions[0].operator: unknown operator \"Maybe\" (expected In, NotIn, Exists or DoesNotExist)",
    );
    expect(
        "tier: Admin\npriority: 1\nsubject: {namespaces: {matchLabel: {a: b}}}",
        "spec.subject.namespaces.matchLabel: unknown field (expected one of: matchLabels, matchExpressions)",
    );
    expect_rules(
        "ingress:\n- action: Deny\n  from: [{pods: {podSelector: {matchLabels: {\"bad key!\": x}}}}]",
        "spec.ingress[0].from[0].pods.podSelector.matchLabels: invalid label key \"bad key!\"",
    );
}

#[test]
fn unknown_fields() {
    expect(
        &format!("{HEAD}ingres: []"),
        "spec.ingres: unknown field (expected one of: tier, priority, subject, ingress, egress)",
    );
    expect_rules(
        "ingress:\n- action: Deny\n  to: [{namespaces: {}}]",
        "spec.ingress[0].to: unknown field (expected one of: name, action, from, protocols)",
    );
    // API: ingress peers are only namespaces and pods.
    expect_rules(
        "ingress:\n- action: Deny\n  from: [{networks: [10.0.0.0/8]}]",
        "spec.ingress[0].from[0].networks: unknown field (expected one of: namespaces, pods)",
    );
    expect_rules(
        "egress:\n- action: Deny\n  to: [{ipBlock: {cidr: 10.0.0.0/8}}]",
        "spec.egress[0].to[0].ipBlock: unknown field (expected one of: namespaces, pods, nodes, networks, domainNames)",
    );
    expect_rules(
        "egress:\n- action: Deny\n  to: [{namespaces: {}}]\n  protocols: [{tcp: {destinationPort: {number: 80}, flags: [syn]}}]",
        "spec.egress[0].protocols[0].tcp.flags: unknown field (expected one of: destinationPort)",
    );
}

#[test]
fn rule_counts() {
    let rule = "- action: Deny\n  from: [{namespaces: {}}]\n";
    let many: String = std::iter::repeat_n(rule, 26).collect();
    expect_rules(
        &format!("ingress:\n{many}"),
        "spec.ingress: must have at most 25 items (got 26)",
    );
    let many: String = std::iter::repeat_n(rule.replace("from", "to"), 26).collect();
    expect_rules(
        &format!("egress:\n{many}"),
        "spec.egress: must have at most 25 items (got 26)",
    );
    let ok: String = std::iter::repeat_n(rule, 25).collect();
    assert_eq!(report(&format!("{HEAD}ingress:\n{ok}")), "valid");
}

#[test]
fn rule_fields() {
    expect_rules(
        "ingress:\n- from: [{namespaces: {}}]",
        "spec.ingress[0].action: required",
    );
    expect_rules(
        "ingress:\n- action: Allow\n  from: [{namespaces: {}}]",
        "spec.ingress[0].action: unsupported value \"Allow\" (expected Accept, Deny or Pass)",
    );
    expect_rules("egress:\n- action: Deny", "spec.egress[0].to: required");
    expect_rules(
        "egress:\n- action: Deny\n  to: []",
        "spec.egress[0].to: must have at least 1 item(s)",
    );
    let peers = vec!["{namespaces: {}}"; 26].join(", ");
    expect_rules(
        &format!("ingress:\n- action: Deny\n  from: [{peers}]"),
        "spec.ingress[0].from: must have at most 25 items (got 26)",
    );
    let name = "n".repeat(101);
    expect_rules(
        &format!("ingress:\n- name: {name}\n  action: Deny\n  from: [{{namespaces: {{}}}}]"),
        "spec.ingress[0].name: must be at most 100 characters",
    );
}

#[test]
fn peers_exactly_one_field() {
    expect_rules(
        "egress:\n- action: Deny\n  to: [{namespaces: {}}, {namespaces: {}, networks: [10.0.0.0/8]}]",
        "spec.egress[0].to[1]: must set exactly one field (got namespaces, networks)",
    );
}

#[test]
fn networks() {
    expect_rules(
        "egress:\n- action: Deny\n  to: [{networks: [10.0.0/8]}]",
        "spec.egress[0].to[0].networks[0]: invalid CIDR \"10.0.0/8\"",
    );
    expect_rules(
        "egress:\n- action: Deny\n  to: [{networks: [10.0.0.1]}]",
        "spec.egress[0].to[0].networks[0]: invalid CIDR \"10.0.0.1\"",
    );
    expect_rules(
        "egress:\n- action: Deny\n  to: [{networks: [10.0.0.0/8, 10.0.0.0/8]}]",
        "spec.egress[0].to[0].networks[1]: duplicate value \"10.0.0.0/8\"",
    );
    expect_rules(
        "egress:\n- action: Deny\n  to: [{networks: []}]",
        "spec.egress[0].to[0].networks: must have at least 1 item(s)",
    );
    let many: Vec<String> = (0..26).map(|i| format!("10.{i}.0.0/16")).collect();
    expect_rules(
        &format!(
            "egress:\n- action: Deny\n  to: [{{networks: [{}]}}]",
            many.join(", ")
        ),
        "spec.egress[0].to[0].networks: must have at most 25 items (got 26)",
    );
}

#[test]
fn protocols() {
    let rule = |p: &str| {
        format!("ingress:\n- action: Deny\n  from: [{{namespaces: {{}}}}]\n  protocols: {p}")
    };
    expect_rules(
        &rule("[]"),
        "spec.ingress[0].protocols: must have at least 1 item(s)",
    );
    expect_rules(
        &rule("[{}]"),
        "spec.ingress[0].protocols[0]: must set exactly one of tcp, udp, sctp and destinationNamedPort (got none)",
    );
    expect_rules(
        &rule("[{tcp: {destinationPort: {number: 80}}, destinationNamedPort: http}]"),
        "spec.ingress[0].protocols[0]: must set exactly one of tcp, udp, sctp and destinationNamedPort (got destinationNamedPort, tcp)",
    );
    // API: minProperties 1 on tcp/udp/sctp.
    expect_rules(
        &rule("[{tcp: {}}]"),
        "spec.ingress[0].protocols[0].tcp.destinationPort: required",
    );
    expect_rules(
        &rule("[{udp: {destinationPort: {}}}]"),
        "spec.ingress[0].protocols[0].udp.destinationPort: must set exactly one of number and range",
    );
    expect_rules(
        &rule("[{sctp: {destinationPort: {number: 80, range: {start: 1, end: 2}}}}]"),
        "spec.ingress[0].protocols[0].sctp.destinationPort: must set exactly one of number and range",
    );
    expect_rules(
        &rule("[{tcp: {destinationPort: {number: 0}}}]"),
        "spec.ingress[0].protocols[0].tcp.destinationPort.number: 0 is outside 1..65535",
    );
    expect_rules(
        &rule("[{tcp: {destinationPort: {number: 65536}}}]"),
        "spec.ingress[0].protocols[0].tcp.destinationPort.number: 65536 is outside 1..65535",
    );
    expect_rules(
        &rule("[{tcp: {destinationPort: {range: {start: 80}}}}]"),
        "spec.ingress[0].protocols[0].tcp.destinationPort.range.end: required",
    );
    // API (CEL): start < end, so a one-port range is rejected.
    expect_rules(
        &rule("[{tcp: {destinationPort: {range: {start: 80, end: 80}}}}]"),
        "spec.ingress[0].protocols[0].tcp.destinationPort.range: start (80) must be less than end (80)",
    );
    expect_rules(
        &rule("[{tcp: {destinationPort: {range: {start: 90, end: 80}}}}]"),
        "spec.ingress[0].protocols[0].tcp.destinationPort.range: start (90) must be less than end (80)",
    );
    expect_rules(
        &rule("[{destinationNamedPort: \"\"}]"),
        "spec.ingress[0].protocols[0].destinationNamedPort: must not be empty",
    );
    let many = vec!["{tcp: {destinationPort: {number: 1}}}"; 26].join(", ");
    expect_rules(
        &rule(&format!("[{many}]")),
        "spec.ingress[0].protocols: must have at most 25 items (got 26)",
    );
}

#[test]
fn named_ports_not_with_networks_or_nodes() {
    for (peer, j) in [
        ("networks: [10.0.0.0/8]", 1),
        ("nodes: {}", 1),
        ("domainNames: [example.com]", 1),
    ] {
        expect_rules(
            &format!("egress:\n- action: Accept\n  to: [{{namespaces: {{}}}}, {{{peer}}}]\n  protocols: [{{tcp: {{destinationPort: {{number: 53}}}}}}, {{destinationNamedPort: dns}}]"),
            &format!("spec.egress[0].protocols[1].destinationNamedPort: may not be combined with a networks, nodes or domainNames peer (spec.egress[0].to[{j}]): they have no named ports"),
        );
    }
    // With pod peers they are fine.
    assert_eq!(
        report(&format!("{HEAD}egress:\n- action: Accept\n  to: [{{pods: {{podSelector: {{}}}}}}]\n  protocols: [{{destinationNamedPort: dns}}]")),
        "valid"
    );
}

#[test]
fn domain_names_are_validated_and_reported_unsupported() {
    expect_rules(
        "egress:\n- action: Accept\n  to: [{domainNames: [\"*\"]}]",
        "spec.egress[0].to[0].domainNames[0]: invalid domain name \"*\"",
    );
    expect_rules(
        "egress:\n- action: Accept\n  to: [{namespaces: {}}, {domainNames: [\"*.example.com\"]}]",
        "spec.egress[0].to[1]: domainNames peers are not supported (they need DNS awareness): the rule is skipped, which can only deny more",
    );
    expect_rules(
        "egress:\n- action: Deny\n  to: [{domainNames: [example.com]}]\n- action: Accept\n  to: [{domainNames: [example.org]}]",
        "spec.egress[0].to[0]: domainNames peers are not supported, and the API allows them only in Accept rules: the rule denies every destination (fail closed) (and 1 more unsupported rule(s))",
    );
    let o = parse_yaml_documents(
        &cnp_text(
            "cnp-a",
            &format!("{HEAD}egress:\n- action: Accept\n  to: [{{domainNames: [example.com]}}]"),
        ),
        "cnp.yaml",
    )
    .remove(0)
    .unwrap();
    // Valid (not a validation error), but reported.
    assert!(o.validation_error().is_none());
    let mut index = ClusterIndex::new();
    let out = index.apply(o);
    assert!(out.changed);
    assert_eq!(out.error.map(|e| e.kind), Some(ErrorKind::Unsupported));
}

#[test]
fn empty_peer_is_reported() {
    expect_rules(
        "ingress:\n- action: Deny\n  from: [{}]",
        "spec.ingress[0].from[0]: peer has no known field set: the rule denies every peer (fail closed)",
    );
    expect_rules(
        "ingress:\n- action: Accept\n  from: [{}]",
        "spec.ingress[0].from[0]: peer has no known field set: it matches nothing (fail closed)",
    );
}

#[test]
fn invalid_object_changes_nothing() {
    let mut index = ClusterIndex::new();
    let good = cnp(
        "p",
        &format!("{HEAD}ingress:\n- action: Deny\n  from: [{{namespaces: {{}}}}]"),
    );
    assert!(index.apply(good.clone()).changed);
    let generation = index.generation();
    let bad = parse_yaml_documents(
        &cnp_text(
            "p",
            "tier: Admin\npriority: 5000\nsubject: {namespaces: {}}",
        ),
        "f",
    )
    .remove(0)
    .unwrap();
    let out = index.apply(bad.clone());
    assert!(!out.changed);
    assert_eq!(
        out.error.map(|e| e.to_string()),
        Some("f: clusternetworkpolicy p: spec.priority: 5000 is outside 0..1000".to_string())
    );
    // The admitted version stays in force; the same invalid version is reported once.
    assert_eq!(index.generation(), generation);
    let Object::ClusterNetworkPolicy(g) = &good else {
        panic!()
    };
    assert_eq!(index.cluster_policy("p"), Some(g));
    assert_eq!(index.apply(bad.clone()).error, None);
    // A delete removes the version in force.
    assert!(index.delete(&ObjectRef::new(Kind::ClusterNetworkPolicy, "", "p")));
    assert!(!index.has_cluster_policies());
    // An invalid first version is never in force.
    assert!(index.apply(bad).error.is_some());
    assert!(!index.has_cluster_policies());
}

#[test]
fn nodes_parse_internal_and_external_addresses() {
    let text = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n  labels: {zone: a}\nstatus:\n  addresses:\n  - {type: Hostname, address: node-1}\n  - {type: InternalIP, address: 172.18.0.2}\n  - {type: InternalIP, address: \"fd00:18::2\"}\n  - {type: ExternalIP, address: 192.0.2.7}\n  - {type: InternalDNS, address: 10.9.9.9}\n";
    let o = parse_yaml_documents(text, "n.yaml").remove(0).unwrap();
    let Object::Node(n) = &o else { panic!("{o:?}") };
    assert_eq!(n.name, "node-1");
    assert_eq!(n.labels.get("zone").map(String::as_str), Some("a"));
    let want: Vec<std::net::IpAddr> = ["172.18.0.2", "fd00:18::2", "192.0.2.7"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(n.addresses, want);
    assert_eq!(o.object_ref().to_string(), "node node-1");
    let mut index = ClusterIndex::new();
    assert!(index.apply(o.clone()).changed);
    assert!(!index.apply(o).changed);
    assert!(index.delete(&ObjectRef::new(Kind::Node, "", "node-1")));
}
