//! `observe`: the agents' events (the JSON lines their stdout prints and
//! `/events` streams), filtered, as one readable line each, a table, or JSON.
use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, TcpStream},
    process::ExitCode,
};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use serde_json::Value;

/// `kubectl palisade observe`.
#[derive(clap::Args)]
#[command(after_help = "--not before a filter negates it (Hubble's --not): \
    `--not --namespace kube-system` keeps the events of every other namespace; repeat it per filter.\n\n\
    Examples:\n  \
    kubectl palisade observe --verdict denied -n prod --follow       (every agent's log, live)\n  \
    kubectl palisade observe --node node-1 --last 20                 (one node's agent)\n  \
    kubectl palisade observe --agent 127.0.0.1:9464 --verdict denied -n prod --follow\n  \
    kubectl palisade observe --file events.jsonl --not --verdict allowed --not --reason fragment\n  \
    kubectl -n kube-system logs ds/palisade-agent | kubectl palisade observe --file - --to-pod prod/db")]
pub struct Args {
    /// An agent's HTTP address (`host:port`, as `--ready-addr`): read its
    /// `/events` stream.
    #[arg(long, value_name = "ADDR", conflicts_with = "file")]
    agent: Option<String>,
    /// JSON lines to read (`-`: stdin), e.g. `kubectl logs` of the agents;
    /// lines that are not events are skipped.
    #[arg(long, value_name = "FILE")]
    file: Option<String>,
    /// Without --agent and --file: the namespace of the agent pods, whose logs
    /// are read through the API server (every node's, or --node's).
    #[arg(long, value_name = "NS", default_value = "kube-system")]
    agent_namespace: String,
    /// The label selector of the agent pods.
    #[arg(
        long,
        value_name = "SELECTOR",
        default_value = "app.kubernetes.io/name=palisade-agent"
    )]
    agent_selector: String,
    #[command(flatten)]
    kube: kubectl_palisade::cluster::KubeArgs,
    /// With --agent: keep printing new events.
    #[arg(short, long)]
    follow: bool,
    /// With --agent: start from the events of this long ago (`30s`, `5m`,
    /// `2h`) or a UTC time; default: what the agent keeps (--event-history).
    #[arg(long)]
    since: Option<String>,
    /// Only the last N events (of those read; not with --follow).
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    #[command(flatten)]
    filter: Filter,
    /// Filters given after `--not` (see [`split_not`]): an event must match
    /// none of them.
    #[arg(skip)]
    pub not: Vec<Filter>,
    /// `compact` (one line: time, node, src -> dst:port/proto, direction,
    /// verdict, reason, deciding policy), `table`, or `json` (the events as
    /// the agent wrote them).
    #[arg(short, long, value_enum, default_value_t = Output::Compact)]
    output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Compact,
    Table,
    Json,
}

/// Filters (all given ones must match). Pods are `[namespace/]name`
/// prefixes; IPs are CIDRs or addresses.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Filter {
    /// `denied`, `audit` or `allowed`.
    #[arg(long)]
    verdict: Option<String>,
    /// The event's reason (`no-policy-allows`, `admin-deny`, `policy`, ...).
    #[arg(long)]
    reason: Option<String>,
    /// Either side in this namespace.
    #[arg(short, long)]
    namespace: Option<String>,
    /// Either side is this pod.
    #[arg(long)]
    pod: Option<String>,
    #[arg(long)]
    from_pod: Option<String>,
    #[arg(long)]
    to_pod: Option<String>,
    #[arg(long)]
    from_namespace: Option<String>,
    #[arg(long)]
    to_namespace: Option<String>,
    #[arg(long, value_parser = net)]
    from_ip: Option<IpNet>,
    #[arg(long, value_parser = net)]
    to_ip: Option<IpNet>,
    /// Either port.
    #[arg(long)]
    port: Option<u16>,
    #[arg(long)]
    to_port: Option<u16>,
    /// TCP, UDP, SCTP, ICMP, ICMPv6.
    #[arg(long)]
    protocol: Option<String>,
    /// A policy that selects the judged pod, or decided (NetworkPolicy
    /// `namespace/name`, or a ClusterNetworkPolicy name).
    #[arg(long)]
    policy: Option<String>,
    /// The node whose agent reported it.
    #[arg(long)]
    pub(crate) node: Option<String>,
}

/// One negated filter, parsed with the filters' own flags.
#[derive(clap::Parser)]
#[command(name = "--not")]
struct NotFilter {
    #[command(flatten)]
    filter: Filter,
}

/// Takes every `--not FILTER` out of `args` (the filter as `--flag value`,
/// `--flag=value` or `-n value`), parsed: clap has no notion of one flag
/// modifying the next.
pub fn split_not(args: Vec<std::ffi::OsString>) -> Result<(Vec<std::ffi::OsString>, Vec<Filter>)> {
    let mut rest = Vec::new();
    let mut not = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a != "--not" {
            rest.push(a);
            continue;
        }
        let Some(flag) = it.next() else {
            bail!("--not must come before a filter, e.g. --not --namespace kube-system");
        };
        let mut words = vec![std::ffi::OsString::from("--not"), flag.clone()];
        let text = flag.to_string_lossy();
        if !text.starts_with('-') {
            bail!("--not {text}: expected a filter flag after --not");
        }
        if !text.contains('=') {
            match it.next() {
                Some(v) => words.push(v),
                None => bail!("--not {text}: the filter needs a value"),
            }
        }
        let parsed = <NotFilter as clap::Parser>::try_parse_from(&words)
            .map_err(|e| anyhow::anyhow!("--not {}: {}", text, e.kind()))?;
        not.push(parsed.filter);
    }
    Ok((rest, not))
}

/// A CIDR, or one address (as its host prefix).
fn net(v: &str) -> Result<IpNet, String> {
    v.parse::<IpNet>()
        .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{v}: expected an address or a CIDR"))
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// `[ns/]name` prefix against a side of the event.
fn pod_matches(want: &str, v: &Value, side: &str) -> bool {
    let ns = s(v, &format!("{side}_namespace"));
    let name = s(v, &format!("{side}_pod"));
    if name.is_empty() {
        return false;
    }
    match want.split_once('/') {
        Some((wns, wname)) => ns == wns && name.starts_with(wname),
        None => name.starts_with(want),
    }
}

fn ip_in(net: &IpNet, v: &Value, side: &str) -> bool {
    s(v, &format!("{side}_ip"))
        .parse::<IpAddr>()
        .is_ok_and(|ip| net.contains(&ip))
}

impl Filter {
    pub fn matches(&self, v: &Value) -> bool {
        let eq = |want: &Option<String>, got: &str| want.as_ref().is_none_or(|w| w == got);
        let policies: Vec<&str> = v["policies"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        eq(&self.verdict, s(v, "verdict"))
            && eq(&self.reason, s(v, "reason"))
            && eq(&self.node, s(v, "node"))
            && self
                .protocol
                .as_ref()
                .is_none_or(|p| p.eq_ignore_ascii_case(s(v, "protocol")))
            && self
                .namespace
                .as_ref()
                .is_none_or(|n| s(v, "src_namespace") == n || s(v, "dst_namespace") == n)
            && eq(&self.from_namespace, s(v, "src_namespace"))
            && eq(&self.to_namespace, s(v, "dst_namespace"))
            && self
                .pod
                .as_ref()
                .is_none_or(|p| pod_matches(p, v, "src") || pod_matches(p, v, "dst"))
            && self
                .from_pod
                .as_ref()
                .is_none_or(|p| pod_matches(p, v, "src"))
            && self
                .to_pod
                .as_ref()
                .is_none_or(|p| pod_matches(p, v, "dst"))
            && self.from_ip.as_ref().is_none_or(|n| ip_in(n, v, "src"))
            && self.to_ip.as_ref().is_none_or(|n| ip_in(n, v, "dst"))
            && self.port.is_none_or(|p| {
                v["src_port"].as_u64() == Some(u64::from(p))
                    || v["dst_port"].as_u64() == Some(u64::from(p))
            })
            && self
                .to_port
                .is_none_or(|p| v["dst_port"].as_u64() == Some(u64::from(p)))
            && self
                .policy
                .as_ref()
                .is_none_or(|p| policies.contains(&p.as_str()) || s(v, "cluster_policy") == p)
    }
}

/// One side as `ns/pod`, `node:NAME` or the address.
fn who(v: &Value, side: &str) -> String {
    match s(v, &format!("{side}_kind")) {
        "pod" => format!(
            "{}/{}",
            s(v, &format!("{side}_namespace")),
            s(v, &format!("{side}_pod"))
        ),
        "node" => format!("node:{}", s(v, &format!("{side}_node"))),
        _ => s(v, &format!("{side}_ip")).to_string(),
    }
}

/// What decided: the ClusterNetworkPolicy rule, or the NetworkPolicies.
fn decided(v: &Value) -> String {
    if let Some(cnp) = v["cluster_policy"].as_str() {
        let rule = v["rule_name"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v["rule_index"].to_string());
        return format!("{} {cnp} rule {rule}", s(v, "tier"));
    }
    let p: Vec<&str> = v["policies"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if p.is_empty() {
        "-".to_string()
    } else {
        p.join(",")
    }
}

/// The compact line of one event.
pub fn compact(v: &Value) -> String {
    format!(
        "{} {} {} -> {}:{}/{} {} {} {} {}",
        s(v, "time"),
        s(v, "node"),
        who(v, "src"),
        who(v, "dst"),
        v["dst_port"],
        s(v, "protocol"),
        s(v, "direction"),
        s(v, "verdict"),
        s(v, "reason"),
        decided(v)
    )
}

fn table_row(v: &Value) -> [String; 8] {
    [
        s(v, "time").to_string(),
        s(v, "node").to_string(),
        who(v, "src"),
        format!("{}:{}/{}", who(v, "dst"), v["dst_port"], s(v, "protocol")),
        s(v, "direction").to_string(),
        s(v, "verdict").to_string(),
        s(v, "reason").to_string(),
        decided(v),
    ]
}

/// A line that is an event of the agent (not its own logs).
pub(crate) fn event(line: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(line.trim()).ok()?;
    matches!(s(&v, "event"), "palisade-deny" | "palisade-allow").then_some(v)
}

fn open(a: &Args) -> Result<Box<dyn BufRead>> {
    if let Some(addr) = &a.agent {
        let addr = addr.trim_start_matches("http://").trim_end_matches('/');
        let mut q = vec![format!("follow={}", a.follow)];
        // Without --since: everything the agent keeps.
        let since = a.since.as_deref().unwrap_or("1970-01-01T00:00:00Z");
        q.push(format!("since={since}"));
        let mut sock =
            TcpStream::connect(addr).with_context(|| format!("--agent {addr}: connecting"))?;
        write!(
            sock,
            "GET /events?{} HTTP/1.1\r\nHost: {addr}\r\n\r\n",
            q.join("&")
        )
        .with_context(|| format!("--agent {addr}: sending the request"))?;
        let mut r = BufReader::new(sock);
        let mut status = String::new();
        r.read_line(&mut status)?;
        if !status.contains(" 200 ") {
            let mut body = String::new();
            let _ = std::io::Read::read_to_string(&mut r, &mut body);
            bail!("--agent {addr}: {} {}", status.trim(), body.trim());
        }
        let mut line = String::new();
        while r.read_line(&mut line)? > 0 && line != "\r\n" {
            line.clear();
        }
        return Ok(Box::new(r));
    }
    match a.file.as_deref() {
        Some("-") => Ok(Box::new(BufReader::new(std::io::stdin()))),
        Some(f) => Ok(Box::new(BufReader::new(
            std::fs::File::open(f).with_context(|| format!("--file {f}"))?,
        ))),
        None => {
            if a.since.is_some() {
                bail!("--since needs --agent (the agents' logs are read whole)");
            }
            let agents = kubectl_palisade::cluster::Agents {
                namespace: a.agent_namespace.clone(),
                selector: a.agent_selector.clone(),
                node: a.filter.node.clone(),
            };
            kubectl_palisade::cluster::agent_logs(&a.kube, &agents, a.follow)
        }
    }
}

pub fn run(a: &Args) -> Result<ExitCode> {
    if a.follow && a.last.is_some() {
        bail!("--last and --follow exclude each other");
    }
    let input = open(a)?;
    let mut out = std::io::stdout().lock();
    let mut kept: Vec<Value> = Vec::new();
    for line in input.lines() {
        let line = line?;
        let Some(v) = event(&line) else { continue };
        if !a.filter.matches(&v) || a.not.iter().any(|n| n.matches(&v)) {
            continue;
        }
        if a.last.is_some() || a.output == Output::Table {
            kept.push(v);
            continue;
        }
        let text = match a.output {
            Output::Json => v.to_string(),
            _ => compact(&v),
        };
        if writeln!(out, "{text}").is_err() {
            // The reader went away (a pipe into head): done.
            return Ok(ExitCode::SUCCESS);
        }
    }
    if let Some(n) = a.last {
        let skip = kept.len().saturating_sub(n);
        kept.drain(..skip);
    }
    match a.output {
        Output::Table => {
            let head = [
                "TIME",
                "NODE",
                "FROM",
                "TO",
                "DIRECTION",
                "VERDICT",
                "REASON",
                "POLICY",
            ];
            let rows: Vec<[String; 8]> = kept.iter().map(table_row).collect();
            let mut w = head.map(str::len);
            for r in &rows {
                for (i, c) in r.iter().enumerate() {
                    w[i] = w[i].max(c.len());
                }
            }
            let line = |cells: Vec<&str>| {
                cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c:<width$}", width = w[i]))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            writeln!(out, "{}", line(head.to_vec()))?;
            for r in &rows {
                writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
            }
        }
        Output::Json => {
            for v in &kept {
                writeln!(out, "{v}")?;
            }
        }
        Output::Compact => {
            for v in &kept {
                writeln!(out, "{}", compact(v))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
