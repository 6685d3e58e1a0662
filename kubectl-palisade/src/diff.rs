//! `diff`: what a change would do to reachability before it is applied. Every
//! pair of pods, on every port the destination pod names (and `--port`), is
//! judged by the engine on the state as it is and with the change; the
//! connections whose verdict changes are listed. With `--flows`, observed
//! connections (events) that the change would block are listed too.
use std::{collections::BTreeSet, io::BufRead, net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::{bail, Context, Result};
use palisade_common::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use palisade_policy::{
    explain, parse_yaml_documents, ClusterIndex, Explanation, Kind, ObjectRef, Packet, PodSpec,
};
use serde_json::{json, Value};

use kubectl_palisade::judge::node_addrs;

use crate::Source;

/// `kubectl palisade diff`. Exit status: 0 no connection changes, 1 some do,
/// 2 an error.
#[derive(clap::Args)]
#[command(
    after_help = "Exit status: 0 nothing changes, 1 connections change, 2 an error.\n\n\
    Example:\n  kubectl palisade diff --source-dir manifests/ -f new-policy.yaml --flows observed.jsonl"
)]
pub struct Args {
    #[command(flatten)]
    source: Source,
    /// Objects to apply (a manifest file, as `kubectl apply -f` takes).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    change: Vec<PathBuf>,
    /// Objects to delete: `namespace/name` (a NetworkPolicy) or
    /// `ClusterNetworkPolicy/name`. Repeatable.
    #[arg(long, value_name = "REF")]
    delete: Vec<String>,
    /// Also judge these TCP ports on every pair (besides each destination
    /// pod's named ports). Repeatable.
    #[arg(long)]
    port: Vec<u16>,
    /// Observed connections (events as the agents print them, e.g.
    /// `observe -o json`): list those the change would block.
    #[arg(long, value_name = "FILE")]
    flows: Option<PathBuf>,
    /// `text` or `json`.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

/// One connection whose verdict the change flips.
struct Changed {
    from: String,
    to: String,
    proto: &'static str,
    port: u16,
    allowed_after: bool,
    /// What decides after the change (the side that drops it, or both).
    why: String,
    /// The namespace of the pod whose side decides, and the policy that does
    /// (the grouping of the output).
    namespace: String,
    policy: String,
}

/// Who decides after the change: for a drop the side that drops it, for an
/// opening the policies that now allow it (the destination's first).
fn decider(e: &Explanation) -> (String, String) {
    let name = |s: &palisade_policy::SideExplanation| {
        let v = &s.verdict;
        match (&v.rule, v.decided_by) {
            (Some(r), by) => format!("{} clusternetworkpolicy {}", by.as_str(), r.policy),
            (None, palisade_policy::DecidedBy::NetworkPolicy) if !v.allowed => {
                format!("networkpolicy {}", v.policies.join(", "))
            }
            (None, palisade_policy::DecidedBy::NetworkPolicy) => {
                format!("networkpolicy {}", v.allowed_by.join(", "))
            }
            (None, by) => by.as_str().to_string(),
        }
    };
    let side = e
        .denied_by()
        .or_else(|| {
            e.ingress
                .iter()
                .chain(&e.egress)
                .find(|s| s.verdict.decided_by != palisade_policy::DecidedBy::Default)
        })
        .or_else(|| e.sides().next());
    match side {
        Some(s) => (s.pod.namespace().to_string(), name(s)),
        None => (String::new(), "default".to_string()),
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_UDP => "UDP",
        PROTO_SCTP => "SCTP",
        _ => "TCP",
    }
}

fn why(e: &Explanation) -> String {
    match e.denied_by() {
        Some(s) => s.to_string(),
        None => e
            .sides()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    }
}

fn pair_addrs(a: &PodSpec, b: &PodSpec) -> Option<(IpAddr, IpAddr)> {
    if let (Some(x), Some(y)) = (a.ipv4(), b.ipv4()) {
        return Some((IpAddr::V4(x), IpAddr::V4(y)));
    }
    match (a.ipv6(), b.ipv6()) {
        (Some(x), Some(y)) => Some((IpAddr::V6(x), IpAddr::V6(y))),
        _ => None,
    }
}

fn changed_state(before: &ClusterIndex, a: &Args) -> Result<ClusterIndex> {
    let mut after = before.clone();
    for f in &a.change {
        let text = std::fs::read_to_string(f).with_context(|| format!("-f {}", f.display()))?;
        for o in parse_yaml_documents(&text, &f.display().to_string()) {
            let o = o.map_err(|e| anyhow::anyhow!("-f {}: {e}", f.display()))?;
            if let Some(e) = after.apply(o).error {
                eprintln!("warning: {e}");
            }
        }
    }
    for d in &a.delete {
        let r = match d.split_once('/') {
            Some((k, name)) if k.eq_ignore_ascii_case("ClusterNetworkPolicy") => ObjectRef {
                kind: Kind::ClusterNetworkPolicy,
                namespace: String::new(),
                name: name.to_string(),
            },
            Some((ns, name)) => ObjectRef {
                kind: Kind::NetworkPolicy,
                namespace: ns.to_string(),
                name: name.to_string(),
            },
            None => bail!("--delete {d}: expected namespace/name or ClusterNetworkPolicy/name"),
        };
        if !after.delete(&r) {
            bail!("--delete {d}: no such object in the manifests");
        }
    }
    if a.change.is_empty() && a.delete.is_empty() {
        bail!("give the change: -f FILE and/or --delete REF");
    }
    Ok(after)
}

/// Connections (from the `--flows` events) the state allows now and the
/// changed state blocks.
fn blocked_flows(
    before: &ClusterIndex,
    after: &ClusterIndex,
    path: &PathBuf,
) -> Result<Vec<Value>> {
    let f = std::fs::File::open(path).with_context(|| format!("--flows {}", path.display()))?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let Ok(v) = serde_json::from_str::<Value>(&line?) else {
            continue;
        };
        if v["verdict"] != "allowed" && v["verdict"] != "audit" {
            continue;
        }
        let (Some(src), Some(dst)) = (
            v["src_ip"].as_str().and_then(|s| s.parse::<IpAddr>().ok()),
            v["dst_ip"].as_str().and_then(|s| s.parse::<IpAddr>().ok()),
        ) else {
            continue;
        };
        // A Service packet before DNAT is judged on its backend, whose own
        // event is the one to check.
        let to_service = before.services().any(|s| s.cluster_ips.contains(&dst));
        if v["reason"] == "service-deferred" || to_service {
            continue;
        }
        let proto = match v["protocol"].as_str() {
            Some("UDP") => PROTO_UDP,
            Some("SCTP") => PROTO_SCTP,
            Some("TCP") => PROTO_TCP,
            _ => continue,
        };
        let port = v["dst_port"].as_u64().and_then(|p| u16::try_from(p).ok());
        if !seen.insert((src, dst, proto, port)) {
            continue;
        }
        let packet = Packet {
            src,
            dst,
            proto,
            port,
        };
        let e = explain(after, &|n| node_addrs(after, n), &packet);
        if !e.allowed && explain(before, &|n| node_addrs(before, n), &packet).allowed {
            out.push(json!({
                "src_ip": src.to_string(),
                "dst_ip": dst.to_string(),
                "protocol": proto_name(proto),
                "port": port,
                "observed": v["time"],
                "why": why(&e),
            }));
        }
    }
    Ok(out)
}

pub fn run(a: &Args) -> Result<ExitCode> {
    let (before, errors) = a.source.load()?;
    for e in &errors {
        eprintln!("warning: {e}");
    }
    let after = changed_state(&before, a)?;
    let pods: Vec<&PodSpec> = before.pods().filter(|p| p.is_policy_pod()).collect();
    let mut changed = Vec::new();
    for src in &pods {
        for dst in &pods {
            if src.key() == dst.key() {
                continue;
            }
            let Some((s, d)) = pair_addrs(src, dst) else {
                continue;
            };
            let mut ports: BTreeSet<(u8, u16)> = dst
                .named_ports
                .iter()
                .map(|p| (p.protocol.number(), p.port))
                .collect();
            ports.extend(a.port.iter().map(|p| (PROTO_TCP, *p)));
            for (proto, port) in ports {
                let packet = Packet {
                    src: s,
                    dst: d,
                    proto,
                    port: Some(port),
                };
                let was = explain(&before, &|n| node_addrs(&before, n), &packet);
                let now = explain(&after, &|n| node_addrs(&after, n), &packet);
                if was.allowed != now.allowed {
                    let (namespace, policy) = decider(&now);
                    changed.push(Changed {
                        namespace,
                        policy,
                        from: src.key().to_string(),
                        to: dst.key().to_string(),
                        proto: proto_name(proto),
                        port,
                        allowed_after: now.allowed,
                        why: why(&now),
                    });
                }
            }
        }
    }
    let flows = match &a.flows {
        Some(f) => Some(blocked_flows(&before, &after, f)?),
        None => None,
    };
    changed.sort_by(|x, y| {
        (&x.namespace, &x.policy, &x.from, &x.to).cmp(&(&y.namespace, &y.policy, &y.from, &y.to))
    });
    let entry = |c: &Changed| json!({"from": c.from, "to": c.to, "protocol": c.proto, "port": c.port, "why": c.why, "namespace": c.namespace, "policy": c.policy});
    match a.output {
        Output::Json => {
            let out = json!({
                "blocked": changed.iter().filter(|c| !c.allowed_after).map(entry).collect::<Vec<_>>(),
                "allowed": changed.iter().filter(|c| c.allowed_after).map(entry).collect::<Vec<_>>(),
                "observed_blocked": flows,
            });
            println!("{out:#}");
        }
        Output::Text => {
            for (title, after) in [("newly blocked", false), ("newly allowed", true)] {
                let rows: Vec<&Changed> = changed
                    .iter()
                    .filter(|c| c.allowed_after == after)
                    .collect();
                println!("{title}: {}", rows.len());
                let mut group = None;
                for c in rows {
                    // Grouped by namespace and deciding policy.
                    if group != Some((&c.namespace, &c.policy)) {
                        group = Some((&c.namespace, &c.policy));
                        println!("  namespace {}, {}:", c.namespace, c.policy);
                    }
                    println!(
                        "    {} -> {} {}/{}: {}",
                        c.from, c.to, c.port, c.proto, c.why
                    );
                }
            }
            if let Some(f) = &flows {
                println!("observed connections it would block: {}", f.len());
                for v in f {
                    println!(
                        "  {} -> {} {}/{} (seen {}): {}",
                        v["src_ip"].as_str().unwrap_or(""),
                        v["dst_ip"].as_str().unwrap_or(""),
                        v["port"],
                        v["protocol"].as_str().unwrap_or(""),
                        v["observed"].as_str().unwrap_or("?"),
                        v["why"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    let any = !changed.is_empty() || flows.as_ref().is_some_and(|f| !f.is_empty());
    Ok(if any {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
