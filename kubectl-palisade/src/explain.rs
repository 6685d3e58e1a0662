//! `explain`: the verdict of one connection and what decided each side, judged
//! both from the compiled maps and from the model ([`kubectl_palisade::judge`]);
//! a disagreement is reported and fails.
use std::{net::IpAddr, process::ExitCode};

use anyhow::{anyhow, bail, Result};
use kubectl_palisade::judge::Evaluator;
use palisade_common::{Reason, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use palisade_policy::{
    ClusterIndex, DecidedBy, Packet, PodKey, Protocol, SideExplanation, Verdict,
};
use serde_json::{json, Value};

use crate::Source;

/// `kubectl palisade explain`. Exit status: 0 allowed, 1 denied, 2 an error,
/// 3 the compiled maps and the model disagree (a bug: please report it).
#[derive(clap::Args)]
#[command(after_help = "Exit status: 0 allowed, 1 denied, 2 an error.\n\n\
    Example:\n  kubectl palisade explain --source-dir manifests/ --from shop/web --to shop/api --port 8080")]
pub struct Args {
    #[command(flatten)]
    source: Source,
    /// The client: `namespace/pod` or an IP address.
    #[arg(long)]
    from: String,
    /// The server: `namespace/pod`, an IP address, or `svc/namespace/name`
    /// (with --port the Service port; judged on each backend after DNAT).
    #[arg(long)]
    to: String,
    /// Destination port (not for ICMP).
    #[arg(long)]
    port: Option<u16>,
    /// TCP, UDP, SCTP, ICMP (ICMPv6 for IPv6 addresses) or a protocol number.
    #[arg(long, default_value = "TCP")]
    protocol: String,
    /// `text` for people, `json` for scripts (one object: `allowed`, and
    /// `egress` and `ingress` with their own `allowed` and what decided).
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

/// One end of the connection.
struct End {
    /// As given.
    name: String,
    pod: Option<PodKey>,
    ips: Vec<IpAddr>,
}

fn resolve(index: &ClusterIndex, arg: &str, flag: &str) -> Result<End> {
    if let Ok(ip) = arg.parse::<IpAddr>() {
        let pod = index.pod_by_ip(ip).map(|p| p.key());
        return Ok(End {
            name: arg.to_string(),
            pod,
            ips: vec![ip],
        });
    }
    let Some((ns, name)) = arg.split_once('/') else {
        bail!("--{flag} {arg}: expected namespace/pod or an IP address");
    };
    let key = PodKey::new(ns, name);
    let Some(p) = index.pod(&key) else {
        bail!("--{flag} {arg}: no pod {ns}/{name} in the manifests");
    };
    let ips: Vec<IpAddr> = p
        .ipv4()
        .map(IpAddr::V4)
        .into_iter()
        .chain(p.ipv6().map(IpAddr::V6))
        .collect();
    if ips.is_empty() {
        bail!("--{flag} {arg}: the pod has no address (status.podIPs) yet");
    }
    Ok(End {
        name: arg.to_string(),
        pod: Some(key),
        ips,
    })
}

fn protocol(s: &str, v6: bool) -> Result<u8> {
    Ok(match s.to_ascii_uppercase().as_str() {
        "TCP" => PROTO_TCP,
        "UDP" => PROTO_UDP,
        "SCTP" => PROTO_SCTP,
        "ICMP" if v6 => PROTO_ICMPV6,
        "ICMP" => PROTO_ICMP,
        "ICMPV6" => PROTO_ICMPV6,
        n => n
            .parse()
            .map_err(|_| anyhow!("--protocol {s}: expected TCP, UDP, SCTP, ICMP or a number"))?,
    })
}

fn side_json(s: &SideExplanation, reason: Option<Reason>) -> Value {
    let v: &Verdict = &s.verdict;
    let mut m = json!({
        "pod": s.pod.to_string(),
        "allowed": v.allowed,
        "tier": v.tier(),
        "explanation": v.to_string(),
    });
    if let Some(r) = reason {
        m["reason"] = json!(r.as_str());
    }
    if v.decided_by == DecidedBy::NetworkPolicy {
        m["policies"] = json!(v.policies);
        m["allowed_by"] = json!(v.allowed_by);
    }
    if let Some(r) = &v.rule {
        m["cluster_policy"] = json!(r.policy);
        m["rule_index"] = json!(r.rule_index);
        m["rule_name"] = json!(r.rule_name);
        m["action"] = json!(r.action.as_str());
    }
    m
}

fn side_text(s: &SideExplanation, reason: Option<Reason>) -> String {
    let v = &s.verdict;
    let mut line = format!("  {s}");
    if let Some(r) = reason {
        line.push_str(&format!(" [{}]", r.as_str()));
    }
    if v.decided_by == DecidedBy::NetworkPolicy && v.allowed {
        line.push_str(&format!(
            " (a rule of {} allows it)",
            v.allowed_by.join(", ")
        ));
    } else if v.decided_by == DecidedBy::NetworkPolicy {
        line.push_str(" (no rule of them allows it)");
    }
    line
}

/// One connection judged: its JSON object, its text, whether it is allowed,
/// and the disagreements between the compiled maps and the model.
struct Judged {
    json: Value,
    text: String,
    allowed: bool,
    disagreements: Vec<String>,
}

fn judge_one(
    index: &ClusterIndex,
    a: &Args,
    from: &End,
    to: &End,
    port: Option<u16>,
) -> Result<Judged> {
    // One family: IPv4 when both ends have it.
    let (src, dst) = [true, false]
        .iter()
        .find_map(|v4| {
            let s = from.ips.iter().find(|ip| ip.is_ipv4() == *v4)?;
            let d = to.ips.iter().find(|ip| ip.is_ipv4() == *v4)?;
            Some((*s, *d))
        })
        .ok_or_else(|| anyhow!("{} and {} share no address family", from.name, to.name))?;
    let proto = protocol(&a.protocol, src.is_ipv6())?;
    let ported = matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP);
    let port = match (ported, port) {
        (true, Some(p)) => Some(p),
        (true, None) => bail!("--port is required for {}", a.protocol),
        (false, _) => None,
    };
    let packet = Packet {
        src,
        dst,
        proto,
        port,
    };
    let j = Evaluator::new(index).judge(&packet);
    let walk = &j.walk;
    let reasons = [&j.egress_reasons, &j.ingress_reasons];
    let name = |e: &End, ip: IpAddr| match &e.pod {
        Some(p) => format!("{p} ({ip})"),
        None => ip.to_string(),
    };
    let one = |s: &Vec<SideExplanation>, r: &Vec<Option<Reason>>| match s.as_slice() {
        [] => Value::Null,
        [x] => side_json(x, r[0]),
        many => Value::Array(many.iter().zip(r).map(|(x, r)| side_json(x, *r)).collect()),
    };
    let json = json!({
        "from": from.name,
        "to": to.name,
        "src_ip": src.to_string(),
        "dst_ip": dst.to_string(),
        "protocol": a.protocol.to_ascii_uppercase(),
        "port": port,
        "allowed": walk.allowed,
        "egress": one(&walk.egress, reasons[0]),
        "ingress": one(&walk.ingress, reasons[1]),
        "disagreements": j.disagreements,
    });
    let verdict = if walk.allowed { "allowed" } else { "denied" };
    let port_text = port.map(|p| format!(" port {p}")).unwrap_or_default();
    let mut text = format!(
        "{} -> {} {}{port_text}: {verdict}\n",
        name(from, src),
        name(to, dst),
        a.protocol.to_ascii_uppercase()
    );
    if walk.egress.is_empty() {
        text.push_str(&format!(
            "  egress: {src} is no pod: nothing judges it there\n"
        ));
    }
    for (s, r) in walk.egress.iter().zip(reasons[0]) {
        text.push_str(&side_text(s, *r));
        text.push('\n');
    }
    if walk.ingress.is_empty() {
        text.push_str(&format!(
            "  ingress: {dst} is no pod: nothing judges it there\n"
        ));
    }
    for (s, r) in walk.ingress.iter().zip(reasons[1]) {
        text.push_str(&side_text(s, *r));
        text.push('\n');
    }
    Ok(Judged {
        json,
        text,
        allowed: walk.allowed,
        disagreements: j.disagreements,
    })
}

/// The backends of Service `ns/name` for `port` of `protocol`: each backend
/// pod (or address) with the port it serves it on, as kube-proxy would pick
/// it (the Service port's name matches the EndpointSlice port; an unnamed
/// port is the only one).
fn service_backends(
    index: &ClusterIndex,
    svc: &str,
    port: u16,
    proto: Protocol,
) -> Result<Vec<(End, u16)>> {
    let Some((ns, name)) = svc.split_once('/') else {
        bail!("--to svc/{svc}: expected svc/namespace/name");
    };
    let Some(s) = index
        .services()
        .find(|s| s.namespace == ns && s.name == name)
    else {
        bail!("--to svc/{svc}: no Service {ns}/{name} in the manifests");
    };
    if !s.ports.contains(&(proto, port)) {
        let listed: Vec<String> = s
            .ports
            .iter()
            .map(|(p, n)| format!("{n}/{}", p.as_str()))
            .collect();
        bail!(
            "--port {port}: Service {ns}/{name} has no {} port {port} (it has {})",
            proto.as_str(),
            listed.join(", ")
        );
    }
    let port_name = s
        .port_names
        .iter()
        .find(|(p, n, _)| *p == proto && *n == port)
        .map_or("", |(_, _, n)| n.as_str());
    let mut out = Vec::new();
    for slice in index
        .endpoint_slices()
        .filter(|e| e.namespace == ns && e.service.as_deref() == Some(name))
    {
        let Some(target) = slice
            .ports
            .iter()
            .find(|(n, p, _)| n == port_name && *p == proto)
            .map(|(_, _, t)| *t)
        else {
            continue;
        };
        for ip in &slice.addresses {
            let pod = index.pod_by_ip(*ip).map(|p| p.key());
            let name = pod.as_ref().map_or(ip.to_string(), |p| p.to_string());
            out.push((
                End {
                    name,
                    pod,
                    ips: vec![*ip],
                },
                target,
            ));
        }
    }
    if out.is_empty() {
        bail!("--to svc/{svc}: the Service has no backends for port {port} in the EndpointSlices");
    }
    Ok(out)
}

pub fn run(a: &Args) -> Result<ExitCode> {
    let (index, errors) = a.source.load()?;
    for e in &errors {
        eprintln!("warning: {e}");
    }
    let from = resolve(&index, &a.from, "from")?;
    let judged: Vec<Judged>;
    let allowed;
    if let Some(svc) = a.to.strip_prefix("svc/") {
        // Service traffic is judged on the backend after DNAT, as the
        // datapath does: each backend at the port it serves.
        let proto = match protocol(&a.protocol, false)? {
            PROTO_TCP => Protocol::Tcp,
            PROTO_UDP => Protocol::Udp,
            PROTO_SCTP => Protocol::Sctp,
            _ => bail!("--protocol {}: Services carry TCP, UDP or SCTP", a.protocol),
        };
        let Some(port) = a.port else {
            bail!("--port is required for a Service (its port)");
        };
        let backends = service_backends(&index, svc, port, proto)?;
        judged = backends
            .iter()
            .map(|(to, target)| judge_one(&index, a, &from, to, Some(*target)))
            .collect::<Result<_>>()?;
        allowed = judged.iter().all(|j| j.allowed);
        let n = judged.iter().filter(|j| j.allowed).count();
        match a.output {
            Output::Json => println!(
                "{:#}",
                json!({
                    "from": a.from,
                    "to": a.to,
                    "protocol": a.protocol.to_ascii_uppercase(),
                    "port": port,
                    "allowed": allowed,
                    "backends_allowed": n,
                    "backends": judged.iter().map(|j| &j.json).collect::<Vec<_>>(),
                })
            ),
            Output::Text => {
                println!(
                    "{} -> {} port {port}: {} ({n} of {} backends allow it; judged on each backend after DNAT)",
                    a.from,
                    a.to,
                    if allowed { "allowed" } else { "denied" },
                    judged.len()
                );
                for j in &judged {
                    print!("{}", j.text);
                }
            }
        }
    } else {
        let to = resolve(&index, &a.to, "to")?;
        let j = judge_one(&index, a, &from, &to, a.port)?;
        match a.output {
            Output::Json => println!("{:#}", j.json),
            Output::Text => print!("{}", j.text),
        }
        allowed = j.allowed;
        judged = vec![j];
    }
    let disagree: Vec<&String> = judged.iter().flat_map(|j| &j.disagreements).collect();
    if !disagree.is_empty() {
        for d in disagree {
            eprintln!("error: {d}");
        }
        return Ok(ExitCode::from(3));
    }
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
