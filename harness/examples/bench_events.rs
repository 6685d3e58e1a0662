//! Deny-event benchmark: a pod floods a denied destination at full speed
//! while an allowed TCP flow (iperf3) runs between two other pods; measures
//! the deny-log lines per second, the events suppressed by the per-flow rate
//! limit (the `suppressed` field) and by the per-endpoint budget (`throttled`),
//! the CPU of the agent that logs them (from
//! /proc/PID/stat, % of one core), and the allowed flow's throughput against
//! its value without the flood.
//!
//! Two floods, each from one thread in the flooding pod's network namespace:
//! - one flow: a UDP socket sending to the denied port (one event a second,
//!   the rest suppressed);
//! - a new flow per packet: a raw UDP socket cycling the source port, so every
//!   packet is a flow the rate limiter has not seen (the worst case: an event
//!   per packet, up to what the ring buffer and the agent take).
//!
//! Then the cost of `--flow-events=new`: the same new-flow-per-packet flood,
//! to a port the target allows, with flow events off and on: allowed-flow
//! event lines per second and the agent's CPU.
//!
//! `cargo xtask bench events [--quick]` (root). Prints a table, writes
//! `results/bench-events.json` and `results/bench-events.svg` (`-quick` in the names with
//! `--quick`).

mod bench_util;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bench_util::*;
use palisade_harness::{
    AgentConfig, Cluster, ClusterOptions, ClusterSpec, Family, LabelMap, Outcome, Peer, PodPlan,
    PortPlan, Probe, Transport, Via,
};
use serde_json::{json, Value};

const NS: &str = "bench";
const IPERF_PORT: u16 = 5201;
const DENIED_PORT: u16 = 9;
/// UDP port ranges the target accepts from the flooder (flow-event cost), one
/// per `--flow-events` mode: conntrack outlives the agent's restart, so each
/// mode needs flows the other has not created. The flood cycles the source
/// port, and the destination port through its range each time the source
/// ports wrap, so every packet stays a new flow for the whole window.
const ALLOWED_PORTS: [(u16, u16); 2] = [(10_000, 29_999), (30_000, 49_999)];
/// The node whose agent enforces the denied destination (and the server).
const NODE: usize = 2;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Flood {
    None,
    OneFlow,
    FlowPerPacket,
}

impl Flood {
    fn label(self) -> &'static str {
        match self {
            Flood::None => "no flood",
            Flood::OneFlow => "flood, one flow",
            Flood::FlowPerPacket => "flood, new flow per packet",
        }
    }
}

/// A flooding thread inside a namespace; stops on drop.
struct Flooder {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    h: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Flooder {
    /// Floods `dst` on `ports` (inclusive; one port but for the new-flow
    /// flood's destination cycling).
    fn start(ns: &str, kind: Flood, dst: Ipv4Addr, ports: (u16, u16)) -> Result<Self> {
        let port = ports.0;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (st, se) = (stop.clone(), sent.clone());
        let h = spawn_in(ns, move || -> Result<()> {
            let payload = [0u8; 64];
            match kind {
                Flood::OneFlow => {
                    let s = UdpSocket::bind("0.0.0.0:0")?;
                    let to = SocketAddr::new(IpAddr::V4(dst), port);
                    while !st.load(Ordering::Relaxed) {
                        for _ in 0..256 {
                            if s.send_to(&payload, to).is_ok() {
                                se.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                Flood::FlowPerPacket => {
                    // SAFETY: plain socket(2); the fd is owned below.
                    let fd =
                        unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error()).context("raw UDP socket");
                    }
                    // SAFETY: fd is a fresh socket we own.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    // SAFETY: zeroed sockaddr_in is valid; fields set below.
                    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                    sa.sin_family = libc::AF_INET as u16;
                    sa.sin_addr.s_addr = u32::from(dst).to_be();
                    let mut pkt = [0u8; 8 + 64];
                    pkt[2..4].copy_from_slice(&port.to_be_bytes());
                    let udp_len = pkt.len() as u16;
                    pkt[4..6].copy_from_slice(&udp_len.to_be_bytes());
                    // Checksum 0: none (allowed for UDP over IPv4).
                    let mut sport: u16 = 1024;
                    let mut dport = ports.0;
                    while !st.load(Ordering::Relaxed) {
                        for _ in 0..256 {
                            if sport == u16::MAX {
                                sport = 1024;
                                dport = if dport >= ports.1 { ports.0 } else { dport + 1 };
                                pkt[2..4].copy_from_slice(&dport.to_be_bytes());
                            } else {
                                sport += 1;
                            }
                            pkt[0..2].copy_from_slice(&sport.to_be_bytes());
                            // SAFETY: buffer and address outlive the call.
                            let n = unsafe {
                                libc::sendto(
                                    fd.as_raw_fd(),
                                    pkt.as_ptr().cast(),
                                    pkt.len(),
                                    0,
                                    (&sa as *const libc::sockaddr_in).cast(),
                                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                                )
                            };
                            if n > 0 {
                                se.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                Flood::None => {}
            }
            Ok(())
        })?;
        Ok(Flooder {
            stop,
            sent,
            h: Some(h),
        })
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Flooder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.h.take() {
            if let Err(e) = join(h) {
                eprintln!("flood thread: {e:#}");
            }
        }
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// What the deny log gained after byte `from`.
struct LogWindow {
    lines: u64,
    /// Sum of `suppressed` (the per-flow rate limit).
    suppressed: u64,
    /// Sum of `throttled` (the per-endpoint budget).
    throttled: u64,
    /// Lines about the flood target.
    flood: u64,
}

fn log_since(p: &Path, from: u64, target: &str) -> Result<LogWindow> {
    let mut f = std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
    f.seek(SeekFrom::Start(from))?;
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    let mut w = LogWindow {
        lines: 0,
        suppressed: 0,
        throttled: 0,
        flood: 0,
    };
    for l in s.lines() {
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        w.lines += 1;
        w.suppressed += v["suppressed"].as_u64().unwrap_or(0);
        w.throttled += v["throttled"].as_u64().unwrap_or(0);
        if v["dst_ip"].as_str() == Some(target) {
            w.flood += 1;
        }
    }
    Ok(w)
}

struct Row {
    flood: Flood,
    gbps: f64,
    sent_per_s: f64,
    lines_per_s: f64,
    flood_lines: u64,
    suppressed_per_s: f64,
    throttled_per_s: f64,
    cpu_pct: f64,
    secs: f64,
}

/// One flow-event window.
struct FlowRow {
    mode: &'static str,
    sent_per_s: f64,
    lines_per_s: f64,
    cpu_pct: f64,
}

/// The agent on [`NODE`] restarted with each `--flow-events` mode, under a
/// flood of new allowed flows: what reporting them costs.
fn flow_event_cost(
    c: &mut Cluster,
    flood_ns: &str,
    target: Ipv4Addr,
    secs: u32,
) -> Result<Vec<FlowRow>> {
    let node_ns = c.node_netns(NODE)?.to_string();
    let log = c.deny_log_path(NODE)?;
    let mut rows = Vec::new();
    for (mode, port) in ["off", "new"].into_iter().zip(ALLOWED_PORTS) {
        c.set_agent_args(&["--flow-events", mode])?;
        c.stop_agent(NODE)?;
        c.start_agent(NODE)?;
        let pid = *pids_in_netns(&node_ns, "palisade-agent")
            .first()
            .ok_or_else(|| anyhow!("agent process not found in {node_ns}"))?;
        let flooder = Flooder::start(flood_ns, Flood::FlowPerPacket, target, port)?;
        std::thread::sleep(Duration::from_millis(500));
        let (off, ticks0, sent0, t0) = (
            file_len(&log),
            cpu_ticks(pid).unwrap_or(0),
            flooder.sent(),
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs(u64::from(secs)));
        let el = t0.elapsed().as_secs_f64();
        let ticks = cpu_ticks(pid).unwrap_or(0).saturating_sub(ticks0);
        let sent = flooder.sent() - sent0;
        drop(flooder);
        std::thread::sleep(Duration::from_millis(300));
        let w = log_since(&log, off, &target.to_string())?;
        if mode == "new" && w.flood == 0 {
            bail!("--flow-events=new: no allowed-flow line names the target");
        }
        let r = FlowRow {
            mode,
            sent_per_s: sent as f64 / el,
            lines_per_s: w.flood as f64 / el,
            cpu_pct: ticks as f64 / clk_tck() / el * 100.0,
        };
        eprintln!(
            "    flow events {:<4} flood {:>9.0} pkt/s  {:>8.0} allowed-flow lines/s  agent {:>5.1}% CPU",
            r.mode, r.sent_per_s, r.lines_per_s, r.cpu_pct
        );
        rows.push(r);
    }
    Ok(rows)
}

fn spec() -> ClusterSpec {
    let mut namespaces = BTreeMap::new();
    namespaces.insert(NS.to_string(), LabelMap::new());
    let pod = |name: &str, role: &str, node: usize, ports: Vec<PortPlan>| PodPlan {
        namespace: NS.into(),
        name: name.into(),
        labels: [("role".to_string(), role.to_string())].into(),
        node,
        ports,
    };
    ClusterSpec {
        family: Family::Ipv4,
        nodes: 2,
        namespaces,
        pods: vec![
            pod("client", "client", 1, vec![]),
            pod("server", "server", NODE, vec![]),
            pod("flooder", "flooder", 1, vec![]),
            pod(
                "target",
                "target",
                NODE,
                vec![PortPlan::new(DENIED_PORT, Transport::Udp)],
            ),
        ],
        externals: vec![],
        node_labels: Default::default(),
        node_ports: Vec::new(),
    }
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let started = Instant::now();
    let secs: u32 = if quick { 2 } else { 10 };
    let mut cfg = AgentConfig::new(agent_binary()?);
    cfg.ready_timeout = Duration::from_secs(60);
    let mut c = Cluster::build(
        &spec(),
        ClusterOptions {
            agent: Some(cfg),
            keep_temp: false,
            ..Default::default()
        },
    )?;
    c.start_agents()?;
    c.apply_policy(&json!({
        "metadata": {"namespace": NS, "name": "allow-client"},
        "spec": {
            "podSelector": {"matchLabels": {"role": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                "ports": [{"protocol": "TCP", "port": IPERF_PORT}],
            }],
        },
    }))?;
    c.apply_policy(&json!({
        "metadata": {"namespace": NS, "name": "target-allowed-port"},
        "spec": {
            "podSelector": {"matchLabels": {"role": "target"}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"role": "flooder"}}}],
                "ports": [{
                    "protocol": "UDP",
                    "port": ALLOWED_PORTS[0].0,
                    "endPort": ALLOWED_PORTS[1].1,
                }],
            }],
        },
    }))?;
    c.sync()?;
    let probe = c.probe(&[Probe {
        from: Peer::Pod(format!("{NS}/flooder")),
        to: Peer::Pod(format!("{NS}/target")),
        port: DENIED_PORT,
        protocol: Transport::Udp,
        via: Via::Pod,
    }])?;
    if probe.first() != Some(&Outcome::Blocked) {
        bail!("the flood's destination is not denied ({probe:?})");
    }
    let node_ns = c.node_netns(NODE)?.to_string();
    let pid = *pids_in_netns(&node_ns, "palisade-agent")
        .first()
        .ok_or_else(|| anyhow!("agent process not found in {node_ns}"))?;
    let log = c.deny_log_path(NODE)?;
    let client_ns = c.pod_netns(&format!("{NS}/client"))?.to_string();
    let flood_ns = c.pod_netns(&format!("{NS}/flooder"))?.to_string();
    let server_ip = c.pod_ip(&format!("{NS}/server"))?;
    let target_ip = match c.pod_ip(&format!("{NS}/target"))? {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => bail!("IPv4 cluster expected"),
    };
    let _iperf = Iperf3Server::start(c.pod_netns(&format!("{NS}/server"))?, IPERF_PORT)?;

    let mut rows = Vec::new();
    for flood in [
        Flood::None,
        Flood::OneFlow,
        Flood::FlowPerPacket,
        Flood::None,
    ] {
        let flooder = match flood {
            Flood::None => None,
            f => Some(Flooder::start(
                &flood_ns,
                f,
                target_ip,
                (DENIED_PORT, DENIED_PORT),
            )?),
        };
        // Let the flood reach its steady state before the window opens.
        std::thread::sleep(Duration::from_millis(if flooder.is_some() {
            500
        } else {
            0
        }));
        let (off, ticks0, sent0, t0) = (
            file_len(&log),
            cpu_ticks(pid).unwrap_or(0),
            flooder.as_ref().map_or(0, Flooder::sent),
            Instant::now(),
        );
        let gbps = iperf3_tcp(&client_ns, server_ip, IPERF_PORT, secs)
            .with_context(|| format!("{}: iperf3 of the allowed flow", flood.label()))?;
        let el = t0.elapsed().as_secs_f64();
        let ticks = cpu_ticks(pid).unwrap_or(0).saturating_sub(ticks0);
        let sent = flooder.as_ref().map_or(0, Flooder::sent) - sent0;
        drop(flooder);
        // The agent may still be writing the window's last events.
        std::thread::sleep(Duration::from_millis(300));
        let w = log_since(&log, off, &target_ip.to_string())?;
        if flood != Flood::None && w.flood == 0 {
            bail!(
                "{}: no deny line names the flood's destination",
                flood.label()
            );
        }
        let r = Row {
            flood,
            gbps,
            sent_per_s: sent as f64 / el,
            lines_per_s: w.lines as f64 / el,
            flood_lines: w.flood,
            suppressed_per_s: w.suppressed as f64 / el,
            throttled_per_s: w.throttled as f64 / el,
            cpu_pct: ticks as f64 / clk_tck() / el * 100.0,
            secs: el,
        };
        eprintln!(
            "    {:<28} {:>6.2} Gbit/s  flood {:>9.0} pkt/s  {:>8.0} lines/s  {:>9.0} suppressed/s  {:>9.0} throttled/s  agent {:>5.1}% CPU",
            flood.label(),
            r.gbps,
            r.sent_per_s,
            r.lines_per_s,
            r.suppressed_per_s,
            r.throttled_per_s,
            r.cpu_pct
        );
        rows.push(r);
    }
    drop(_iperf);
    let flow_rows = flow_event_cost(&mut c, &flood_ns, target_ip, secs)?;
    c.teardown()?;

    // Baseline: mean of the two no-flood windows.
    let base: Vec<f64> = rows
        .iter()
        .filter(|r| r.flood == Flood::None)
        .map(|r| r.gbps)
        .collect();
    let base = base.iter().sum::<f64>() / base.len().max(1) as f64;
    let mut table = Vec::new();
    let mut json_rows = Vec::new();
    for r in &rows {
        table.push(vec![
            r.flood.label().to_string(),
            format!("{:.2}", r.gbps),
            format!("{:.0}%", r.gbps / base * 100.0),
            format!("{:.0}", r.sent_per_s),
            format!("{:.0}", r.lines_per_s),
            format!("{:.0}", r.suppressed_per_s),
            format!("{:.0}", r.throttled_per_s),
            format!("{:.1}%", r.cpu_pct),
        ]);
        json_rows.push(json!({
            "case": r.flood.label(),
            "allowed_gbit_per_s": r.gbps,
            "allowed_throughput_ratio": r.gbps / base,
            "flood_packets_per_s": r.sent_per_s,
            "deny_lines_per_s": r.lines_per_s,
            "flood_deny_lines": r.flood_lines,
            "suppressed_per_s": r.suppressed_per_s,
            "throttled_per_s": r.throttled_per_s,
            "agent_cpu_percent_of_core": r.cpu_pct,
            "window_seconds": r.secs,
        }));
    }
    println!();
    println!(
        "events: allowed TCP flow (iperf3, {secs} s windows) while a pod floods a denied UDP port; agent on the enforcing node; event interval 1 s per flow"
    );
    print_table(
        &[
            "case",
            "allowed Gbit/s",
            "vs no flood",
            "flood pkt/s",
            "deny lines/s",
            "suppressed/s",
            "throttled/s",
            "agent CPU",
        ],
        &table,
    );
    println!();
    println!(
        "flow events: a new allowed flow per packet to the target ({secs} s windows), --flow-events off vs new"
    );
    print_table(
        &[
            "flow events",
            "flood pkt/s",
            "allowed-flow lines/s",
            "agent CPU",
        ],
        &flow_rows
            .iter()
            .map(|r| {
                vec![
                    r.mode.to_string(),
                    format!("{:.0}", r.sent_per_s),
                    format!("{:.0}", r.lines_per_s),
                    format!("{:.1}%", r.cpu_pct),
                ]
            })
            .collect::<Vec<_>>(),
    );
    let flow_json: Vec<Value> = flow_rows
        .iter()
        .map(|r| {
            json!({
                "flow_events": r.mode,
                "flood_packets_per_s": r.sent_per_s,
                "allowed_flow_lines_per_s": r.lines_per_s,
                "agent_cpu_percent_of_core": r.cpu_pct,
            })
        })
        .collect();
    let json = json!({
        "part": "events",
        "flow_events": flow_json,
        "quick": quick,
        "machine": machine(),
        "window_seconds": secs,
        "baseline_gbit_per_s": base,
        "rows": json_rows,
        "took_seconds": started.elapsed().as_secs_f64(),
    });
    let jp = write_json("events", &json)?;
    let bars = |f: &dyn Fn(&Row) -> (f64, String)| -> Vec<(String, f64, String)> {
        rows.iter()
            .map(|r| {
                let (v, t) = f(r);
                (r.flood.label().to_string(), v, t)
            })
            .collect()
    };
    let panels = vec![
        Panel {
            title: "allowed flow during the flood, Gbit/s".into(),
            bars: bars(&|r| {
                (
                    r.gbps,
                    format!("{:.2} ({:.0}%)", r.gbps, r.gbps / base * 100.0),
                )
            }),
        },
        Panel {
            title: "deny log lines per second".into(),
            bars: bars(&|r| (r.lines_per_s, format!("{:.0}", r.lines_per_s))),
        },
        Panel {
            title: "agent CPU, % of one core".into(),
            bars: bars(&|r| (r.cpu_pct, format!("{:.1}%", r.cpu_pct))),
        },
    ];
    let sp = write_svg("events", "Palisade deny events under a flood", &panels)?;
    println!(
        "wrote {} and {} ({:.0} s)",
        jp.display(),
        sp.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
