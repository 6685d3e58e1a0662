//! Policy engine benchmark (prints numbers; not a timed test).
//!
//! `cargo run --release -p palisade-policy --example bench`
//!
//! Generated cluster: 10,000 pods in 500 namespaces on 91 nodes (110 on the local
//! node), 2,000 policies mixing pod, namespace and ipBlock peers and named ports.
//! Measures the full compile (compile + encode + writes from nothing) and three
//! incremental changes through the stateful `Compiler`, then 100 Admin and 100
//! Baseline ClusterNetworkPolicies on top (added, full compile, one edit). Writes
//! `results/bench-policy.json` and `.svg`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use palisade_bench_report as report;
use palisade_policy::model::{
    IpBlock, NamedPort, NamespaceScope, NetworkPolicySpec, Peer, Policy, PolicyBody, PolicyTypes,
    PortRef, PortSpec, Rule,
};
use palisade_policy::selector::{Operator, Requirement};
use palisade_policy::{
    compile, encode, ClusterIndex, Compiler, LabelSelector, NamespaceSpec, NodeInfo, Object,
    PodKey, PodSpec, Protocol,
};

const NAMESPACES: usize = 500;
const PODS: usize = 10_000;
const NODES: usize = 91;

fn sel(pairs: &[(&str, String)]) -> LabelSelector {
    LabelSelector {
        match_labels: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        match_expressions: vec![],
    }
}

fn pod(i: usize) -> PodSpec {
    let ns = i % NAMESPACES;
    let j = i / NAMESPACES;
    PodSpec {
        namespace: format!("ns-{ns}"),
        name: format!("pod-{j}"),
        labels: [
            ("app".to_string(), format!("a{}", j % 5)),
            ("tier".to_string(), ["fe", "be"][j % 2].to_string()),
        ]
        .into(),
        node_name: Some(format!("node-{}", i % NODES)),
        host_network: false,
        ips: vec![IpAddr::V4(Ipv4Addr::new(
            10,
            100 + (i >> 16) as u8,
            (i >> 8) as u8,
            i as u8,
        ))],
        named_ports: vec![
            NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080 + (i % 3) as u16,
            },
            NamedPort {
                name: "metrics".into(),
                protocol: Protocol::Tcp,
                port: 9090,
            },
        ],
    }
}

fn tcp(port: u16) -> PortSpec {
    PortSpec {
        protocol: Protocol::Tcp,
        port: Some(PortRef::Numbers {
            first: port,
            last: port,
        }),
    }
}

fn named(n: &str) -> PortSpec {
    PortSpec {
        protocol: Protocol::Tcp,
        port: Some(PortRef::Named(n.into())),
    }
}

fn policy(ns: usize, k: usize, variant: u16) -> NetworkPolicySpec {
    let (pod_selector, types, ingress, egress) = match k {
        // Pod peers in the own namespace, named port.
        0 => (
            sel(&[("app", format!("a{}", ns % 5))]),
            PolicyTypes {
                ingress: true,
                egress: false,
            },
            vec![Rule {
                peers: vec![Peer::Pods {
                    namespaces: NamespaceScope::Own,
                    pods: sel(&[("app", format!("a{}", (ns + 1) % 5))]),
                }],
                ports: vec![named("http"), tcp(variant)],
            }],
            vec![],
        ),
        // Namespace peers AND pod selector, numeric ports and a range.
        1 => (
            sel(&[("tier", "fe".into())]),
            PolicyTypes {
                ingress: true,
                egress: false,
            },
            vec![Rule {
                peers: vec![Peer::Pods {
                    namespaces: NamespaceScope::Selector(sel(&[("team", format!("t{}", ns % 50))])),
                    pods: LabelSelector {
                        match_labels: Default::default(),
                        match_expressions: vec![Requirement {
                            key: "tier".into(),
                            op: Operator::In(["fe".to_string()].into()),
                        }],
                    },
                }],
                ports: vec![
                    tcp(443),
                    PortSpec {
                        protocol: Protocol::Tcp,
                        port: Some(PortRef::Numbers {
                            first: 9000,
                            last: 9010,
                        }),
                    },
                ],
            }],
            vec![],
        ),
        // Egress: ipBlock with except, DNS, and pods of the namespace on a named port.
        2 => (
            LabelSelector::everything(),
            PolicyTypes {
                ingress: false,
                egress: true,
            },
            vec![],
            vec![
                Rule {
                    peers: vec![Peer::IpBlock(IpBlock {
                        cidr: "10.0.0.0/8".parse().expect("a literal address"),
                        except: vec![format!("10.{}.0.0/16", 100 + ns % 2)
                            .parse()
                            .expect("a literal address")],
                    })],
                    ports: vec![tcp(443)],
                },
                Rule {
                    peers: vec![],
                    ports: vec![PortSpec {
                        protocol: Protocol::Udp,
                        port: Some(PortRef::Numbers {
                            first: 53,
                            last: 53,
                        }),
                    }],
                },
                Rule {
                    peers: vec![Peer::Pods {
                        namespaces: NamespaceScope::Own,
                        pods: LabelSelector::everything(),
                    }],
                    ports: vec![named("http")],
                },
            ],
        ),
        // ipBlock ingress from outside, all ports.
        _ => (
            sel(&[("app", format!("a{}", (ns + 2) % 5))]),
            PolicyTypes {
                ingress: true,
                egress: false,
            },
            vec![Rule {
                peers: vec![Peer::IpBlock(IpBlock {
                    cidr: "192.168.0.0/16".parse().expect("a literal address"),
                    except: vec!["192.168.7.0/24".parse().expect("a literal address")],
                })],
                ports: vec![],
            }],
            vec![],
        ),
    };
    NetworkPolicySpec {
        namespace: format!("ns-{ns}"),
        name: format!("p{k}"),
        body: PolicyBody::Valid(Policy {
            pod_selector,
            types,
            declared_types: Some(types),
            ingress,
            egress,
        }),
    }
}

/// ClusterNetworkPolicy `i` of `tier`: subject the namespaces of one team,
/// a Deny of another team's namespaces on one TCP port, an Accept to a /16.
fn cluster_policy_yaml(i: usize, tier: &str, port: u16) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {{name: {tier_l}-{i}}}
spec:
  tier: {tier}
  priority: {prio}
  subject: {{namespaces: {{matchLabels: {{team: t{subj}}}}}}}
  ingress:
  - name: deny-t{peer}
    action: Deny
    from: [{{namespaces: {{matchLabels: {{team: t{peer}}}}}}}]
    protocols: [{{tcp: {{destinationPort: {{number: {port}}}}}}}]
  egress:
  - name: accept-net
    action: Accept
    to: [{{networks: [10.{net}.0.0/16]}}]
",
        tier_l = tier.to_lowercase(),
        prio = i % 1000,
        subj = i % 50,
        peer = (i + 7) % 50,
        net = 100 + i % 100,
    )
}

fn cluster_policies(per_tier: usize) -> Vec<Object> {
    let mut out = Vec::new();
    for tier in ["Admin", "Baseline"] {
        for i in 0..per_tier {
            let text = cluster_policy_yaml(i, tier, 22);
            for r in palisade_policy::parse_yaml_documents(&text, "bench") {
                match r {
                    Ok(o) => out.push(o),
                    Err(e) => panic!("bench cluster policy {i}: {e}"),
                }
            }
        }
    }
    out
}

fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    let rss0 = rss_kib();
    let mut index = ClusterIndex::new();
    for ns in 0..NAMESPACES {
        index.apply(Object::Namespace(NamespaceSpec::new(
            format!("ns-{ns}"),
            [("team".to_string(), format!("t{}", ns % 50))].into(),
        )));
    }
    for i in 0..PODS {
        index.apply(Object::Pod(pod(i)));
    }
    for ns in 0..NAMESPACES {
        for k in 0..4 {
            index.apply(Object::NetworkPolicy(policy(ns, k, 8443)));
        }
    }
    let node = NodeInfo {
        name: "node-0".into(),
    };
    let local: Vec<PodKey> = index.pods_on_node("node-0").map(|p| p.key()).collect();
    let ids: BTreeMap<PodKey, u32> = local
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), i as u32 + 1))
        .collect();
    println!(
        "cluster: {} namespaces, {} pods, {} policies, {} local pods on {}",
        NAMESPACES,
        index.pods().count(),
        index.policies().count(),
        local.len(),
        node.name
    );

    let t = Instant::now();
    let desired = compile(&index, &node);
    let t_compile = t.elapsed();
    let t = Instant::now();
    let maps = encode(&desired, &ids, false);
    let t_encode = t.elapsed();
    println!(
        "pure compile(): {:.1} ms, encode(): {:.1} ms -> {} v4 entries, {} endpoints",
        t_compile.as_secs_f64() * 1e3,
        t_encode.as_secs_f64() * 1e3,
        maps.policy_v4.len(),
        maps.endpoints.len()
    );

    let mut compiler = Compiler::new(node.clone(), false);
    let t = Instant::now();
    let writes = compiler.update(&index, &ids);
    let t_full = t.elapsed();
    let full_writes = writes.len();
    println!(
        "full compile (Compiler::update from nothing): {:.1} ms, {full_writes} writes",
        t_full.as_secs_f64() * 1e3,
    );
    assert_eq!(
        compiler.map_set(),
        maps,
        "incremental state equals pure encode"
    );

    // (change, ms, map writes, endpoints recompiled)
    let mut changes: Vec<(String, f64, usize, usize)> = Vec::new();
    let mut step = |label: &str, index: &mut ClusterIndex, obj: Object| {
        let t0 = Instant::now();
        let changed = index.apply(obj).changed;
        let writes = compiler.update(index, &ids);
        let dt = t0.elapsed();
        changes.push((
            label.to_string(),
            dt.as_secs_f64() * 1e3,
            writes.len(),
            compiler.last_recompiled(),
        ));
        println!(
            "{label}: changed={changed} {:.3} ms, {} writes, {} endpoints recompiled",
            dt.as_secs_f64() * 1e3,
            writes.len(),
            compiler.last_recompiled()
        );
    };

    // 1. A pod added (on another node) to a namespace that local policies select
    //    through namespaceSelector team=t0 and pod peers.
    let mut new_pod = pod(0);
    new_pod.name = "pod-new".into();
    new_pod.node_name = Some("node-5".into());
    new_pod.ips = vec![IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1))];
    step(
        "pod added to a selected namespace",
        &mut index,
        Object::Pod(new_pod),
    );

    // 2. A label change of a remote pod that peers select.
    // pod(1) is tier=fe in ns-1 (team t1), matched by the namespace peers of p1 in
    // the team-t1 namespaces.
    let mut relabel = pod(1);
    relabel.labels.insert("tier".into(), "be".into());
    step("one label change", &mut index, Object::Pod(relabel));

    // 3. A policy edit in a namespace with local pods (port 8443 -> 8444).
    let ns_local = index
        .pod(&local[0])
        .map(|p| p.namespace.clone())
        .unwrap_or_default();
    let ns_i: usize = ns_local.trim_start_matches("ns-").parse().unwrap_or(0);
    step(
        "one policy edit",
        &mut index,
        Object::NetworkPolicy(policy(ns_i, 0, 8444)),
    );

    // 4. A no-op re-apply.
    step(
        "no-op re-apply of the same policy",
        &mut index,
        Object::NetworkPolicy(policy(ns_i, 0, 8444)),
    );

    let full_after = encode(&compile(&index, &node), &ids, false);
    assert_eq!(
        compiler.map_set(),
        full_after,
        "incremental == full after changes"
    );

    // 5. ClusterNetworkPolicies on top: 100 Admin and 100 Baseline, subjects
    //    and peers by team, some with networks and ports.
    let cnps = cluster_policies(100);
    let t0 = Instant::now();
    let mut added = 0;
    for o in cnps {
        added += usize::from(index.apply(o).changed);
    }
    let writes = compiler.update(&index, &ids);
    let t_cnp = t0.elapsed();
    println!(
        "{added} ClusterNetworkPolicies added (100 Admin + 100 Baseline): {:.1} ms, {} writes, {} endpoints recompiled",
        t_cnp.as_secs_f64() * 1e3,
        writes.len(),
        compiler.last_recompiled()
    );
    changes.push((
        "200 ClusterNetworkPolicies added".to_string(),
        t_cnp.as_secs_f64() * 1e3,
        writes.len(),
        compiler.last_recompiled(),
    ));
    let mut fresh = Compiler::new(node.clone(), false);
    let t0 = Instant::now();
    let cnp_full_writes = fresh.update(&index, &ids).len();
    let t_cnp_full = t0.elapsed();
    println!(
        "full compile with them: {:.1} ms, {cnp_full_writes} writes",
        t_cnp_full.as_secs_f64() * 1e3
    );
    changes.push((
        "full compile with 200 ClusterNetworkPolicies".to_string(),
        t_cnp_full.as_secs_f64() * 1e3,
        cnp_full_writes,
        fresh.last_recompiled(),
    ));
    let edit = cluster_policy_yaml(0, "Admin", 23);
    let t0 = Instant::now();
    for o in palisade_policy::parse_yaml_documents(&edit, "bench")
        .into_iter()
        .flatten()
    {
        index.apply(o);
    }
    let writes = compiler.update(&index, &ids);
    let dt = t0.elapsed();
    println!(
        "one ClusterNetworkPolicy edit: {:.1} ms, {} writes, {} endpoints recompiled",
        dt.as_secs_f64() * 1e3,
        writes.len(),
        compiler.last_recompiled()
    );
    changes.push((
        "one ClusterNetworkPolicy edit".to_string(),
        dt.as_secs_f64() * 1e3,
        writes.len(),
        compiler.last_recompiled(),
    ));
    // A remote pod relabelled under the cluster policies (pod peers by label
    // can see it; namespace peers cannot).
    let mut relabel = pod(3);
    relabel.labels.insert("app".into(), "moved".into());
    let t0 = Instant::now();
    index.apply(Object::Pod(relabel));
    let writes = compiler.update(&index, &ids);
    let dt = t0.elapsed();
    println!(
        "one pod relabelled under them: {:.1} ms, {} writes, {} endpoints recompiled",
        dt.as_secs_f64() * 1e3,
        writes.len(),
        compiler.last_recompiled()
    );
    changes.push((
        "one pod relabelled under 200 ClusterNetworkPolicies".to_string(),
        dt.as_secs_f64() * 1e3,
        writes.len(),
        compiler.last_recompiled(),
    ));
    assert_eq!(
        compiler.map_set(),
        encode(&compile(&index, &node), &ids, false),
        "incremental == full with cluster policies"
    );

    let rss = rss_kib();
    println!(
        "memory: index ~{:.1} MB, compiler state ~{:.1} MB (estimates); process RSS {} MB (start {} MB)",
        index.approx_bytes() as f64 / 1e6,
        compiler.approx_bytes() as f64 / 1e6,
        rss.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        rss0.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
    );

    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let mut bars = vec![
        (
            "pure compile()".to_string(),
            ms(t_compile),
            format!("{:.1} ms", ms(t_compile)),
        ),
        (
            "encode()".to_string(),
            ms(t_encode),
            format!("{:.1} ms", ms(t_encode)),
        ),
        (
            "full compile from nothing".to_string(),
            ms(t_full),
            format!("{:.1} ms, {full_writes} writes", ms(t_full)),
        ),
    ];
    bars.extend(changes.iter().map(|(label, ms, writes, recompiled)| {
        (
            label.clone(),
            *ms,
            format!("{ms:.2} ms, {writes} writes, {recompiled} endpoints"),
        )
    }));
    let json = serde_json::json!({
        "machine": report::machine(),
        "cluster": {
            "namespaces": NAMESPACES,
            "pods": index.pods().count(),
            "policies": index.policies().count(),
            "local_pods": local.len(),
        },
        "compile_ms": ms(t_compile),
        "encode_ms": ms(t_encode),
        "full_compile_ms": ms(t_full),
        "full_compile_writes": full_writes,
        "changes": changes.iter().map(|(label, ms, writes, recompiled)| serde_json::json!({
            "change": label, "ms": ms, "writes": writes, "endpoints_recompiled": recompiled,
        })).collect::<Vec<_>>(),
        "index_bytes_estimate": index.approx_bytes(),
        "compiler_bytes_estimate": compiler.approx_bytes(),
        "rss_kib": rss,
    });
    let written = report::write_json("policy", &json).and_then(|j| {
        let panels = [report::Panel {
            title: format!(
                "{PODS} pods, {} policies, {} local pods: milliseconds",
                index.policies().count(),
                local.len()
            ),
            bars,
        }];
        let svg = report::write_svg("policy", "Palisade policy engine", &panels)?;
        Ok((j, svg))
    });
    match written {
        Ok((j, svg)) => println!("wrote {} and {}", j.display(), svg.display()),
        Err(e) => {
            eprintln!("bench: writing results: {e:#}");
            std::process::exit(1);
        }
    }
}
