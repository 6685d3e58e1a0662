//! `advise`: least-privilege NetworkPolicies for one namespace from its observed
//! allowed connections (the agents' flow events, `--flow-events`). One policy per
//! workload (pods with the same stable labels: hash labels that change with every
//! rollout are left out), isolating both directions and allowing exactly what was
//! observed: peers by namespace and pod labels, never by pod address (addresses
//! outside the cluster become `ipBlock`s of one address), ports by the name the
//! pod declares for them, else by number. Written as plain `networking.k8s.io/v1`
//! YAML with a comment per rule naming the connections it covers, or as JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use palisade_policy::{ClusterIndex, Labels, PodKey, PodSpec};
use serde_json::{json, Value};

use crate::Source;

/// Labels that differ between pods of one workload, or between its rollouts.
const UNSTABLE_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/controller-uid",
    "controller-uid",
    "batch.kubernetes.io/job-name",
    "job-name",
];

/// `kubectl palisade advise`.
#[derive(clap::Args)]
#[command(
    after_help = "Reads allowed (and audited) events: run the agents with \
    --flow-events=new (connections policy allows) or all-new (also pods no policy isolates yet).\n\n\
    Example:\n  kubectl palisade observe --agent 127.0.0.1:9464 -o json > flows.jsonl\n  \
    kubectl palisade advise --source-dir manifests/ -n shop --flows flows.jsonl > shop-policies.yaml\n  \
    kubectl palisade diff --source-dir manifests/ -f shop-policies.yaml --flows flows.jsonl"
)]
pub struct Args {
    #[command(flatten)]
    source: Source,
    /// The namespace to write policies for.
    #[arg(short, long)]
    namespace: String,
    /// Observed events as JSON lines (`observe -o json`, or the agents' logs);
    /// `-` for stdin.
    #[arg(long, value_name = "FILE")]
    flows: PathBuf,
    /// `yaml` (with a comment per rule) or `json` (a List).
    #[arg(short, long, value_enum, default_value_t = Output::Yaml)]
    output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Yaml,
    Json,
}

/// One side of an observed connection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Pod(PodKey),
    /// An address that is no pod (outside the cluster, or a node).
    Address(IpAddr),
}

/// One observed connection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Flow {
    src: End,
    dst: End,
    protocol: String,
    port: u16,
}

fn end(index: &ClusterIndex, v: &Value, side: &str) -> Option<End> {
    let f = |k: &str| v[format!("{side}_{k}")].as_str().unwrap_or("");
    if f("kind") == "pod" {
        let key = PodKey::new(f("namespace"), f("pod"));
        if index.pod(&key).is_some() {
            return Some(End::Pod(key));
        }
    }
    let ip: IpAddr = f("ip").parse().ok()?;
    Some(match index.pod_by_ip(ip) {
        Some(p) => End::Pod(p.key()),
        None => End::Address(ip),
    })
}

fn read_flows(index: &ClusterIndex, path: &PathBuf) -> Result<BTreeMap<Flow, usize>> {
    let input: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("--flows {}", path.display()))?,
        ))
    };
    let mut flows = BTreeMap::new();
    for line in input.lines() {
        let Some(v) = crate::observe::event(&line?) else {
            continue;
        };
        if !matches!(v["verdict"].as_str(), Some("allowed" | "audit")) {
            continue;
        }
        // A Service packet before DNAT: its decision (and event) is the
        // backend's; a ClusterIP is no peer a NetworkPolicy names.
        if v["reason"] == "service-deferred" {
            continue;
        }
        let to_service = v["dst_ip"]
            .as_str()
            .and_then(|d| d.parse::<IpAddr>().ok())
            .is_some_and(|d| index.services().any(|s| s.cluster_ips.contains(&d)));
        if to_service {
            continue;
        }
        let protocol = v["protocol"].as_str().unwrap_or("").to_string();
        let Some(port) = v["dst_port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
            continue;
        }
        let (Some(src), Some(dst)) = (end(index, &v, "src"), end(index, &v, "dst")) else {
            continue;
        };
        *flows
            .entry(Flow {
                src,
                dst,
                protocol,
                port,
            })
            .or_default() += 1;
    }
    Ok(flows)
}

/// The labels that identify a pod's workload.
fn stable(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| !UNSTABLE_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn end_text(e: &End) -> String {
    match e {
        End::Pod(k) => k.to_string(),
        End::Address(ip) => ip.to_string(),
    }
}

/// The peer of a rule for `e`, seen from a policy in `ns`.
fn peer(index: &ClusterIndex, ns: &str, e: &End) -> Option<Value> {
    match e {
        End::Address(ip) => {
            let len = if ip.is_ipv4() { 32 } else { 128 };
            Some(json!({"ipBlock": {"cidr": format!("{ip}/{len}")}}))
        }
        End::Pod(k) => {
            let p = index.pod(k)?;
            let mut v = json!({"podSelector": {"matchLabels": stable(&p.labels)}});
            if p.namespace != ns {
                v["namespaceSelector"] =
                    json!({"matchLabels": {"kubernetes.io/metadata.name": p.namespace}});
            }
            Some(v)
        }
    }
}

/// A port as the destination pod declares it: by name when it names it.
fn port(dst: Option<&PodSpec>, protocol: &str, number: u16) -> Value {
    let name = dst.and_then(|p| {
        p.named_ports
            .iter()
            .find(|n| n.port == number && n.protocol.as_str() == protocol)
    });
    match name {
        Some(n) => json!({"protocol": protocol, "port": n.name}),
        None => json!({"protocol": protocol, "port": number}),
    }
}

/// One rule: a peer, its ports, and the flows it covers.
struct Rule {
    peer: Value,
    ports: Vec<Value>,
    covers: Vec<String>,
}

/// The rules of one direction for the pods `members`: one per peer.
fn rules(
    index: &ClusterIndex,
    ns: &str,
    flows: &BTreeMap<Flow, usize>,
    members: &BTreeSet<PodKey>,
    ingress: bool,
) -> Vec<Rule> {
    let mut by_peer: BTreeMap<String, Rule> = BTreeMap::new();
    for (f, n) in flows {
        let (me, other) = if ingress {
            (&f.dst, &f.src)
        } else {
            (&f.src, &f.dst)
        };
        let End::Pod(k) = me else { continue };
        if !members.contains(k) {
            continue;
        }
        let Some(peer) = peer(index, ns, other) else {
            continue;
        };
        let dst_pod = match &f.dst {
            End::Pod(d) => index.pod(d),
            End::Address(_) => None,
        };
        let key = peer.to_string();
        let r = by_peer.entry(key).or_insert_with(|| Rule {
            peer,
            ports: Vec::new(),
            covers: Vec::new(),
        });
        let p = port(dst_pod, &f.protocol, f.port);
        if !r.ports.contains(&p) {
            r.ports.push(p);
        }
        r.covers.push(format!(
            "{} -> {}:{}/{} ({n}x)",
            end_text(&f.src),
            end_text(&f.dst),
            f.port,
            f.protocol
        ));
    }
    by_peer.into_values().collect()
}

/// A name for the policy of a workload: its `app` label, else its labels.
fn policy_name(labels: &Labels) -> String {
    let base = ["app.kubernetes.io/name", "app", "k8s-app", "name"]
        .iter()
        .find_map(|k| labels.get(*k).cloned())
        .unwrap_or_else(|| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}-{v}"))
                .collect::<Vec<_>>()
                .join("-")
        });
    let clean: String = base
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut name = format!("advised-{}", clean.trim_matches('-'));
    name.truncate(253);
    name
}

/// One advised policy and the comments of its rules.
struct Advice {
    policy: Value,
    ingress: Vec<Rule>,
    egress: Vec<Rule>,
}

fn advise(
    index: &ClusterIndex,
    ns: &str,
    flows: &BTreeMap<Flow, usize>,
) -> (Vec<Advice>, Vec<String>) {
    let mut workloads: BTreeMap<Labels, BTreeSet<PodKey>> = BTreeMap::new();
    let mut warnings = Vec::new();
    for p in index.pods_in(ns).filter(|p| !p.host_network) {
        let l = stable(&p.labels);
        if l.is_empty() {
            warnings.push(format!(
                "pod {} has no labels to select it by: no policy written for it",
                p.key()
            ));
            continue;
        }
        workloads.entry(l).or_default().insert(p.key());
    }
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (labels, members) in workloads {
        let ingress = rules(index, ns, flows, &members, true);
        let egress = rules(index, ns, flows, &members, false);
        let mut name = policy_name(&labels);
        let mut n = 2;
        while !names.insert(name.clone()) {
            name = format!("{}-{n}", policy_name(&labels));
            n += 1;
        }
        let section = |rs: &[Rule], key: &str| -> Vec<Value> {
            rs.iter()
                .map(|r| json!({key: [r.peer.clone()], "ports": r.ports.clone()}))
                .collect()
        };
        let policy = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "podSelector": {"matchLabels": labels},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": section(&ingress, "from"),
                "egress": section(&egress, "to"),
            }
        });
        out.push(Advice {
            policy,
            ingress,
            egress,
        });
    }
    (out, warnings)
}

/// Keys in the order people write them in a NetworkPolicy.
const KEY_ORDER: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "spec",
    "podSelector",
    "policyTypes",
    "from",
    "to",
    "namespaceSelector",
    "ipBlock",
    "ports",
    "protocol",
    "port",
];

/// A scalar as YAML: plain when YAML reads it back as the same string, else
/// JSON-quoted (which YAML reads as it is).
fn scalar(v: &Value) -> String {
    if let Value::String(s) = v {
        let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "./_-".contains(c))
            && !matches!(
                s.to_ascii_lowercase().as_str(),
                "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
            );
        if plain {
            return s.clone();
        }
    }
    v.to_string()
}

/// YAML for one value, indented by `pad`, in block style.
fn yaml(v: &Value, pad: usize, out: &mut String) {
    let ind = " ".repeat(pad);
    match v {
        Value::Object(m) if !m.is_empty() => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by_key(|k| {
                (
                    KEY_ORDER
                        .iter()
                        .position(|o| o == k)
                        .unwrap_or(KEY_ORDER.len()),
                    k.as_str(),
                )
            });
            for k in keys {
                out.push_str(&format!("{ind}{}:", scalar(&json!(k))));
                block(&m[k], pad + 2, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for x in a {
                out.push_str(&format!("{ind}-"));
                match x {
                    Value::Object(m) if !m.is_empty() => {
                        let mut inner = String::new();
                        yaml(x, pad + 2, &mut inner);
                        out.push(' ');
                        out.push_str(inner.trim_start());
                    }
                    _ => block(x, pad + 2, out),
                }
            }
        }
        _ => out.push_str(&format!("{ind}{}\n", scalar(v))),
    }
}

/// The value after a `key:` or `-`.
fn block(x: &Value, pad: usize, out: &mut String) {
    match x {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            yaml(x, pad, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            yaml(x, pad, out);
        }
        _ => out.push_str(&format!(" {}\n", scalar(x))),
    }
}

/// A policy as YAML with a comment before each rule.
fn advice_yaml(a: &Advice) -> String {
    let mut s = String::new();
    let spec = &a.policy["spec"];
    let head = json!({
        "apiVersion": a.policy["apiVersion"],
        "kind": a.policy["kind"],
        "metadata": a.policy["metadata"],
    });
    yaml(&head, 0, &mut s);
    s.push_str("spec:\n");
    let top = json!({"podSelector": spec["podSelector"], "policyTypes": spec["policyTypes"]});
    yaml(&top, 2, &mut s);
    for (key, rules, values) in [
        ("ingress", &a.ingress, &spec["ingress"]),
        ("egress", &a.egress, &spec["egress"]),
    ] {
        if rules.is_empty() {
            s.push_str(&format!("  {key}: []  # nothing observed: all denied\n"));
            continue;
        }
        s.push_str(&format!("  {key}:\n"));
        for (r, v) in rules.iter().zip(values.as_array().into_iter().flatten()) {
            for c in &r.covers {
                s.push_str(&format!("  # {c}\n"));
            }
            let mut one = String::new();
            yaml(&json!([v]), 2, &mut one);
            s.push_str(&one);
        }
    }
    s
}

pub fn run(a: &Args) -> Result<ExitCode> {
    let (index, errors) = a.source.load()?;
    for e in &errors {
        eprintln!("warning: {e}");
    }
    if index.pods_in(&a.namespace).next().is_none() {
        bail!("-n {}: no pods in the manifests", a.namespace);
    }
    let flows = read_flows(&index, &a.flows)?;
    let (advice, warnings) = advise(&index, &a.namespace, &flows);
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let total: usize = flows.values().sum();
    match a.output {
        Output::Json => {
            let items: Vec<&Value> = advice.iter().map(|x| &x.policy).collect();
            println!(
                "{:#}",
                json!({"apiVersion": "v1", "kind": "List", "items": items})
            );
        }
        Output::Yaml => {
            println!(
                "# Advised by kubectl palisade for namespace {} from {} observed connection events ({} distinct).",
                a.namespace,
                total,
                flows.len()
            );
            for x in &advice {
                println!("---");
                print!("{}", advice_yaml(x));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
