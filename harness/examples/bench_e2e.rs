//! End-to-end benchmark on a namespace cluster: TCP throughput (iperf3) and
//! new-connection rate (a connect/accept loop on threads inside the pods'
//! network namespaces) between two pods on different nodes and two pods on the
//! same node, for:
//!
//! - no program attached (measured at the start of every round, before any
//!   agent ran or after the agents stopped and their pins were removed, and
//!   once more at the end);
//! - an iptables enforcer: per-pod chain in the FORWARD chain of the server's
//!   node with N rules (`-s <cidr> -p tcp --dport 5201:5202 -j ACCEPT`), the
//!   allowed flow matching the last one, then DROP; replies accepted by
//!   `--ctdir REPLY`, so every packet of the original direction walks the chain
//!   (what Palisade does too: conntrack admits replies only);
//! - the same chain behind `-m conntrack --ctstate ESTABLISHED,RELATED -j
//!   ACCEPT`, as most iptables enforcers write it: only a connection's first
//!   packet walks the chain;
//! - nftables with the same N prefixes in one interval set;
//! - Palisade with no policy (programs attached, nothing isolated), then with
//!   one allow policy of N rules (an ipBlock peer and ports 5201-5202 each).
//!
//! Before measuring each enforcer, a probe to a port no rule allows (TCP 80,
//! served by the harness) must be blocked on both paths, and after it the
//! measured flows must have completed (at most 1% failed connections).
//!
//! The whole sequence runs in rounds (2 by default, 1 with `--quick`,
//! `--rounds N`); every figure is the median over rounds, with the range.
//!
//! `cargo xtask bench e2e [--quick] [--rounds N]` (root). Prints a table, writes
//! `results/bench-e2e.json` and `results/bench-e2e.svg` (`-quick` in the names with
//! `--quick`).

mod bench_util;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench_util::*;
use palisade_harness::netns::exec_in;
use palisade_harness::{
    AgentConfig, Cluster, ClusterOptions, ClusterSpec, Family, LabelMap, Outcome, Peer, PodPlan,
    PortPlan, Probe, Transport, Via,
};
use serde_json::{json, Value};

const IPERF_PORT: u16 = 5201;
const CONN_PORT: u16 = 5202;
/// Served by the harness on every pod; no rule allows it.
const DENIED_PORT: u16 = 80;
const NS: &str = "bench";
/// Both clients live on node 1 (10.100.1.0/24): the last rule allows them.
const CLIENT_CIDR: &str = "10.100.1.0/24";

struct FlowPath {
    name: &'static str,
    client: &'static str,
    server: &'static str,
    server_node: usize,
}

const PATHS: [FlowPath; 2] = [
    FlowPath {
        name: "cross-node",
        client: "bench/c1",
        server: "bench/s1",
        server_node: 2,
    },
    FlowPath {
        name: "same-node",
        client: "bench/c2",
        server: "bench/s2",
        server_node: 1,
    },
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Enforcer {
    None,
    Iptables(usize),
    IptablesEstablished(usize),
    Nft(usize),
    PalisadeNoPolicy,
    Palisade(usize),
}

impl Enforcer {
    fn label(&self) -> String {
        match self {
            Enforcer::None => "no program".into(),
            Enforcer::Iptables(n) => format!("iptables, {n} rules"),
            Enforcer::IptablesEstablished(n) => format!("iptables ESTABLISHED-first, {n} rules"),
            Enforcer::Nft(n) => format!("nftables set, {n} prefixes"),
            Enforcer::PalisadeNoPolicy => "Palisade, no policy".into(),
            Enforcer::Palisade(n) => format!("Palisade, {n} rules"),
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            Enforcer::None => "none",
            Enforcer::Iptables(_) => "iptables",
            Enforcer::IptablesEstablished(_) => "iptables-established",
            Enforcer::Nft(_) => "nftables",
            Enforcer::PalisadeNoPolicy | Enforcer::Palisade(_) => "palisade",
        }
    }
    fn rules(&self) -> usize {
        match self {
            Enforcer::Iptables(n)
            | Enforcer::IptablesEstablished(n)
            | Enforcer::Nft(n)
            | Enforcer::Palisade(n) => *n,
            _ => 0,
        }
    }
    fn blocks(&self) -> bool {
        !matches!(self, Enforcer::None | Enforcer::PalisadeNoPolicy)
    }
}

/// The i-th non-matching peer prefix: 172.16.0.0/12, one /32 each.
fn filler(i: usize) -> String {
    let a = 0xac10_0000u32 + i as u32 + 1;
    format!("{}/32", Ipv4Addr::from(a))
}

/// The N prefixes of an allow list; the last one holds the clients.
fn prefixes(n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n.saturating_sub(1)).map(filler).collect();
    v.push(CLIENT_CIDR.to_string());
    v
}

fn server_ip(c: &Cluster, p: &FlowPath) -> Result<Ipv4Addr> {
    match c.pod_ip(p.server)? {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(_) => bail!("IPv4 cluster expected"),
    }
}

/// The iptables enforcer of node `node`: replies accepted first, and with
/// `established` every packet of a tracked connection too.
fn iptables_rules(c: &Cluster, node: usize, n: usize, established: bool) -> Result<String> {
    let mut s =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    let mut body = if established {
        String::from("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n")
    } else {
        String::from("-A FORWARD -m conntrack --ctdir REPLY -j ACCEPT\n")
    };
    for (k, p) in PATHS
        .iter()
        .enumerate()
        .filter(|(_, p)| p.server_node == node)
    {
        let chain = format!("PALBENCH-{k}");
        s += &format!(":{chain} - [0:0]\n");
        body += &format!("-A FORWARD -d {}/32 -j {chain}\n", server_ip(c, p)?);
        for cidr in prefixes(n) {
            body += &format!(
                "-A {chain} -s {cidr} -p tcp -m tcp --dport {IPERF_PORT}:{CONN_PORT} -j ACCEPT\n"
            );
        }
        body += &format!("-A {chain} -j DROP\n");
    }
    Ok(s + &body + "COMMIT\n")
}

const IPTABLES_EMPTY: &str =
    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

fn nft_rules(c: &Cluster, node: usize, n: usize) -> Result<String> {
    let mut s = String::from("table inet palbench {\n");
    let mut fwd = String::from(
        "  chain forward {\n    type filter hook forward priority 0; policy accept;\n    ct direction reply accept\n",
    );
    for (k, p) in PATHS
        .iter()
        .enumerate()
        .filter(|(_, p)| p.server_node == node)
    {
        s += &format!(
            "  set allow{k} {{\n    type ipv4_addr; flags interval;\n    elements = {{ {} }}\n  }}\n",
            prefixes(n).join(", ")
        );
        s += &format!(
            "  chain pod{k} {{\n    ip saddr @allow{k} tcp dport {IPERF_PORT}-{CONN_PORT} accept\n    drop\n  }}\n"
        );
        fwd += &format!("    ip daddr {} jump pod{k}\n", server_ip(c, p)?);
    }
    Ok(s + &fwd + "  }\n}\n")
}

fn policy(n: usize) -> Value {
    let rules: Vec<Value> = prefixes(n)
        .into_iter()
        .map(|cidr| {
            json!({
                "from": [{"ipBlock": {"cidr": cidr}}],
                "ports": [{"protocol": "TCP", "port": IPERF_PORT, "endPort": CONN_PORT}],
            })
        })
        .collect();
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": NS, "name": "bench-allow"},
        "spec": {
            "podSelector": {"matchLabels": {"role": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    })
}

/// Installs or removes the kernel-firewall enforcers on both nodes.
fn set_firewall(c: &Cluster, e: Enforcer) -> Result<()> {
    for node in 1..=2 {
        let ns = c.node_netns(node)?.to_string();
        exec_in(&ns, "iptables-restore", &[], Some(IPTABLES_EMPTY))
            .context("flush the filter table")?;
        let _ = exec_in(&ns, "nft", &["delete", "table", "inet", "palbench"], None);
        match e {
            Enforcer::Iptables(n) | Enforcer::IptablesEstablished(n) => {
                let established = matches!(e, Enforcer::IptablesEstablished(_));
                exec_in(
                    &ns,
                    "iptables-restore",
                    &[],
                    Some(&iptables_rules(c, node, n, established)?),
                )
                .context("iptables-restore")?;
            }
            Enforcer::Nft(n) => {
                exec_in(&ns, "nft", &["-f", "-"], Some(&nft_rules(c, node, n)?))
                    .context("nft -f")?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Probes TCP 80 (no rule allows it) on both paths: blocked exactly when the
/// enforcer should block it.
fn check_denied_flow(c: &Cluster, e: Enforcer) -> Result<()> {
    let probes: Vec<Probe> = PATHS
        .iter()
        .map(|p| Probe {
            from: Peer::Pod(p.client.into()),
            to: Peer::Pod(p.server.into()),
            port: DENIED_PORT,
            protocol: Transport::Tcp,
            via: Via::Pod,
        })
        .collect();
    let want = if e.blocks() {
        Outcome::Blocked
    } else {
        Outcome::Reachable
    };
    let got = c.probe(&probes)?;
    for (p, o) in PATHS.iter().zip(&got) {
        if *o != want {
            bail!(
                "{}: {} -> {} TCP/{DENIED_PORT} is {o:?}, expected {want:?}; the enforcer is not doing what the benchmark claims",
                e.label(),
                p.client,
                p.server
            );
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
struct Measurement {
    enforcer: Enforcer,
    path: &'static str,
    gbps: f64,
    conn_per_sec: f64,
    connections: u64,
    failures: u64,
}

struct Settings {
    iperf_secs: u32,
    conn_dur: Duration,
    conn_threads: usize,
}

fn measure(c: &Cluster, e: Enforcer, s: &Settings, out: &mut Vec<Measurement>) -> Result<()> {
    check_denied_flow(c, e)?;
    for p in &PATHS {
        let client_ns = c.pod_netns(p.client)?.to_string();
        let sip = IpAddr::V4(server_ip(c, p)?);
        let gbps = iperf3_tcp(&client_ns, sip, IPERF_PORT, s.iperf_secs)
            .with_context(|| format!("{} {}: iperf3", e.label(), p.name))?;
        let rate = conn_rate(
            &client_ns,
            SocketAddr::new(sip, CONN_PORT),
            s.conn_dur,
            s.conn_threads,
        )?;
        // A stray failure (a lost SYN on a loaded machine) is reported, not
        // fatal; more than 1% means the allowed flow is not really allowed.
        if rate.connections == 0 || rate.failures * 100 > rate.connections {
            bail!(
                "{} {}: {} of {} connections of the allowed flow failed",
                e.label(),
                p.name,
                rate.failures,
                rate.failures + rate.connections
            );
        }
        eprintln!(
            "    {:<28} {:<10} {:>7.2} Gbit/s {:>9.0} conn/s",
            e.label(),
            p.name,
            gbps,
            rate.per_sec
        );
        out.push(Measurement {
            enforcer: e,
            path: p.name,
            gbps,
            conn_per_sec: rate.per_sec,
            connections: rate.connections,
            failures: rate.failures,
        });
    }
    Ok(())
}

fn spec() -> ClusterSpec {
    let mut namespaces = BTreeMap::new();
    namespaces.insert(NS.to_string(), LabelMap::new());
    let pod = |name: &str, role: &str, node: usize| PodPlan {
        namespace: NS.into(),
        name: name.into(),
        labels: [("role".to_string(), role.to_string())].into(),
        node,
        ports: vec![PortPlan::new(DENIED_PORT, Transport::Tcp)],
    };
    ClusterSpec {
        family: Family::Ipv4,
        nodes: 2,
        namespaces,
        pods: vec![
            pod("c1", "client", 1),
            pod("s1", "server", 2),
            pod("c2", "client", 1),
            pod("s2", "server", 1),
        ],
        externals: vec![],
        node_labels: Default::default(),
        node_ports: Vec::new(),
    }
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let started = Instant::now();
    let sizes: &[usize] = if quick { &[10] } else { &[10, 1000, 10_000] };
    let settings = if quick {
        Settings {
            iperf_secs: 1,
            conn_dur: Duration::from_millis(500),
            conn_threads: 2,
        }
    } else {
        Settings {
            iperf_secs: 5,
            conn_dur: Duration::from_secs(3),
            conn_threads: 2,
        }
    };
    let mut cfg = AgentConfig::new(agent_binary()?);
    cfg.ready_timeout = Duration::from_secs(120);
    let mut c = Cluster::build(
        &spec(),
        ClusterOptions {
            agent: Some(cfg),
            keep_temp: false,
            ..Default::default()
        },
    )?;
    for p in &PATHS {
        let ns = c.pod_netns(p.client)?.to_string();
        sysctl_in(&ns, &["net.ipv4.ip_local_port_range=1024 65535"])?;
    }
    // Many short connections: keep conntrack's TIME_WAIT entries from filling
    // the table on the nodes (the harness's Service NAT tracks every flow).
    for node in 1..=2 {
        let ns = c.node_netns(node)?.to_string();
        sysctl_in(&ns, &["net.netfilter.nf_conntrack_tcp_timeout_time_wait=1"])?;
    }
    let mut servers = Vec::new();
    for p in &PATHS {
        let ns = c.pod_netns(p.server)?.to_string();
        servers.push(Iperf3Server::start(&ns, IPERF_PORT)?);
    }
    let mut conn_servers = Vec::new();
    for p in &PATHS {
        let ns = c.pod_netns(p.server)?.to_string();
        conn_servers.push(ConnServer::start(&ns, CONN_PORT, 2)?);
    }

    let rounds: usize = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 2 });
    let mut m = Vec::new();
    for round in 1..=rounds {
        eprintln!("==> e2e: round {round} of {rounds}");
        measure(&c, Enforcer::None, &settings, &mut m)?;
        for &n in sizes {
            for e in [
                Enforcer::Iptables(n),
                Enforcer::IptablesEstablished(n),
                Enforcer::Nft(n),
            ] {
                set_firewall(&c, e)?;
                measure(&c, e, &settings, &mut m)?;
            }
        }
        set_firewall(&c, Enforcer::None)?;
        c.start_agents()?;
        measure(&c, Enforcer::PalisadeNoPolicy, &settings, &mut m)?;
        for &n in sizes {
            c.apply_policy(&policy(n))?;
            let t = Instant::now();
            c.sync()?;
            eprintln!(
                "    policy with {n} rules programmed in {:.0} ms",
                t.elapsed().as_secs_f64() * 1e3
            );
            measure(&c, Enforcer::Palisade(n), &settings, &mut m)?;
        }
        // Back to no program: drop the policy (the next round's agents start
        // without it), stop the agents and unpin their links and maps, which
        // detaches the programs.
        c.delete_policy(NS, "bench-allow")?;
        c.sync()?;
        for node in 1..=2 {
            c.stop_agent(node)?;
            let pins = c.pin_dir(node)?;
            std::fs::remove_dir_all(&pins).with_context(|| format!("remove {}", pins.display()))?;
        }
        // The kernel releases unpinned links asynchronously: wait until the
        // denied flow passes again (at most 20 s) before measuring.
        let t = Instant::now();
        while check_denied_flow(&c, Enforcer::None).is_err() {
            if t.elapsed() > Duration::from_secs(20) {
                bail!("the programs are still attached 20 s after the agents stopped and their pins were removed");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    eprintln!("==> e2e: no program again");
    measure(&c, Enforcer::None, &settings, &mut m)?;
    drop(conn_servers);
    drop(servers);
    c.teardown()?;

    report(&m, rounds, sizes, &settings, quick, started.elapsed())
}

fn report(
    m: &[Measurement],
    rounds: usize,
    sizes: &[usize],
    s: &Settings,
    quick: bool,
    took: Duration,
) -> Result<()> {
    // Every case: median over its samples (rounds; the no-program case is
    // measured at the start of every round and once more at the end).
    struct Agg {
        enforcer: Enforcer,
        path: &'static str,
        gbps: Vec<f64>,
        conn: Vec<f64>,
        connections: u64,
        failures: u64,
    }
    let mut aggs: Vec<Agg> = Vec::new();
    for x in m {
        match aggs
            .iter_mut()
            .find(|a| a.enforcer == x.enforcer && a.path == x.path)
        {
            Some(a) => {
                a.gbps.push(x.gbps);
                a.conn.push(x.conn_per_sec);
                a.connections += x.connections;
                a.failures += x.failures;
            }
            None => aggs.push(Agg {
                enforcer: x.enforcer,
                path: x.path,
                gbps: vec![x.gbps],
                conn: vec![x.conn_per_sec],
                connections: x.connections,
                failures: x.failures,
            }),
        }
    }
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    };
    let base: BTreeMap<&str, (f64, f64)> = aggs
        .iter()
        .filter(|a| a.enforcer == Enforcer::None)
        .map(|a| (a.path, (median(&a.gbps), median(&a.conn))))
        .collect();
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for a in &aggs {
        let (bg, br) = base.get(a.path).copied().unwrap_or((f64::NAN, f64::NAN));
        let (g, r) = (median(&a.gbps), median(&a.conn));
        let (glo, ghi) = range(&a.gbps);
        let (rlo, rhi) = range(&a.conn);
        rows.push(vec![
            a.enforcer.label(),
            a.path.to_string(),
            format!("{g:.2}"),
            format!("{glo:.2}-{ghi:.2}"),
            format!("{:.0}%", g / bg * 100.0),
            format!("{r:.0}"),
            format!("{rlo:.0}-{rhi:.0}"),
            format!("{:.0}%", r / br * 100.0),
            a.failures.to_string(),
        ]);
        json_rows.push(json!({
            "case": a.enforcer.label(),
            "enforcer": a.enforcer.kind(),
            "rules": a.enforcer.rules(),
            "path": a.path,
            "gbit_per_s": g,
            "gbit_per_s_samples": a.gbps,
            "throughput_ratio": g / bg,
            "conn_per_s": r,
            "conn_per_s_samples": a.conn,
            "conn_rate_ratio": r / br,
            "connections": a.connections,
            "failed_connections": a.failures,
        }));
    }
    println!();
    println!(
        "e2e: TCP throughput (iperf3, {} s) and new connections/s ({} threads, {:.1} s), median of {rounds} round(s) (no program: {} samples); ratios against no program",
        s.iperf_secs,
        s.conn_threads,
        s.conn_dur.as_secs_f64(),
        rounds + 1
    );
    print_table(
        &[
            "case", "path", "Gbit/s", "range", "vs none", "conn/s", "range", "vs none", "failed",
        ],
        &rows,
    );

    // Goals of issue 7 at the largest size.
    let largest = sizes.iter().max().copied().unwrap_or(0);
    let mut goals = Vec::new();
    for p in &PATHS {
        let pick = |e: Enforcer| {
            aggs.iter()
                .find(|a| a.enforcer == e && a.path == p.name)
                .map(|a| (median(&a.gbps), median(&a.conn)))
        };
        let (bg, br) = base.get(p.name).copied().unwrap_or((f64::NAN, f64::NAN));
        if let (Some(pal), Some(ipt), Some(est)) = (
            pick(Enforcer::Palisade(largest)),
            pick(Enforcer::Iptables(largest)),
            pick(Enforcer::IptablesEstablished(largest)),
        ) {
            goals.push(json!({
                "path": p.name,
                "rules": largest,
                "palisade_throughput_ratio": pal.0 / bg,
                "palisade_conn_rate_ratio": pal.1 / br,
                "throughput_vs_iptables": pal.0 / ipt.0,
                "conn_rate_vs_iptables": pal.1 / ipt.1,
                "throughput_vs_iptables_established_first": pal.0 / est.0,
                "conn_rate_vs_iptables_established_first": pal.1 / est.1,
                "goal_throughput_98pct": pal.0 / bg >= 0.98,
                "goal_conn_rate_95pct": pal.1 / br >= 0.95,
            }));
            println!(
                "{} at {largest} rules: Palisade {:.0}% throughput, {:.0}% conn/s of no program (goals 98%, 95%); {:.1}x / {:.1}x the re-checking iptables chain, {:.2}x / {:.2}x the ESTABLISHED-first one",
                p.name,
                pal.0 / bg * 100.0,
                pal.1 / br * 100.0,
                pal.0 / ipt.0,
                pal.1 / ipt.1,
                pal.0 / est.0,
                pal.1 / est.1
            );
        }
    }

    let json = json!({
        "part": "e2e",
        "quick": quick,
        "machine": machine(),
        "rounds": rounds,
        "iperf3_seconds": s.iperf_secs,
        "conn_seconds": s.conn_dur.as_secs_f64(),
        "conn_threads": s.conn_threads,
        "baseline": base.iter().map(|(k, (g, r))| (k.to_string(), json!({"gbit_per_s": g, "conn_per_s": r}))).collect::<serde_json::Map<_, _>>(),
        "rows": json_rows,
        "goals": goals,
        "took_seconds": took.as_secs_f64(),
    });
    let jp = write_json("e2e", &json)?;

    let mut panels = Vec::new();
    for p in &PATHS {
        let (bg, br) = base.get(p.name).copied().unwrap_or((f64::NAN, f64::NAN));
        let xs: Vec<&Agg> = aggs.iter().filter(|a| a.path == p.name).collect();
        panels.push(Panel {
            title: format!("{}: TCP throughput, Gbit/s (median)", p.name),
            bars: xs
                .iter()
                .map(|a| {
                    let g = median(&a.gbps);
                    (
                        a.enforcer.label(),
                        g,
                        format!("{g:.2} ({:.0}%)", g / bg * 100.0),
                    )
                })
                .collect(),
        });
        panels.push(Panel {
            title: format!("{}: new connections per second (median)", p.name),
            bars: xs
                .iter()
                .map(|a| {
                    let r = median(&a.conn);
                    (
                        a.enforcer.label(),
                        r,
                        format!("{r:.0} ({:.0}%)", r / br * 100.0),
                    )
                })
                .collect(),
        });
    }
    let sp = write_svg(
        "e2e",
        "Palisade e2e: throughput and connection rate against no program",
        &panels,
    )?;
    println!(
        "wrote {} and {} ({:.0} s)",
        jp.display(),
        sp.display(),
        took.as_secs_f64()
    );
    Ok(())
}
