//! Control-plane benchmark: the real agent with the file source and real map
//! writes, on a synthetic cluster of 10,000 pods in 500 namespaces with 2,000
//! policies (the shape of `policy/examples/bench.rs`), 110 of the pods local:
//! veths in the node's network namespace (peers in the fabric namespace) with
//! host routes, so the agent discovers, attaches and programs them.
//!
//! Measures: start-up to ready; the time from a change (policy edit, pod add,
//! label change) written into the source directory to `/ready` reporting the
//! REVISION written after it, p50 and p99 (and the agent's own compile-and-
//! write time per change from its log); agent RSS; idle CPU of the file
//! source's polling; map entries and map memory (`bpftool map show/dump` on
//! the pinned maps).
//!
//! `cargo xtask bench control [--quick]` (root). Prints tables, writes
//! `results/bench-control.json` and `results/bench-control.svg` (`-quick` in the names with
//! `--quick`).

mod bench_util;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bench_util::*;
use palisade_harness::netns::{ip_batch, run_cmd};
use palisade_harness::objects::{self, to_yaml, write_atomic};
use palisade_harness::{
    AgentConfig, Cluster, ClusterOptions, ClusterSpec, Family, LabelMap, PodPlan, PortPlan,
    Transport,
};
use serde_json::{json, Value};

struct Size {
    pods: usize,
    namespaces: usize,
    /// Every `local_every`-th pod runs on this node.
    local_every: usize,
    changes_per_kind: usize,
}

/// The agent's default safety-net rescan; changes arrive through inotify.
const POLL_MS: u64 = 10_000;

fn pod_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a40_0000u32 + i as u32 + 1))
}

fn pod_spec(sz: &Size, i: usize) -> PodPlan {
    let ns = i % sz.namespaces;
    let j = i / sz.namespaces;
    PodPlan {
        namespace: format!("ns-{ns}"),
        name: format!("pod-{j}"),
        labels: [
            ("app".to_string(), format!("a{}", j % 5)),
            ("tier".to_string(), ["fe", "be"][j % 2].to_string()),
        ]
        .into(),
        node: if i.is_multiple_of(sz.local_every) {
            1
        } else {
            2 + i % 90
        },
        ports: vec![
            PortPlan::new(8080 + (i % 3) as u16, Transport::Tcp).named("http"),
            PortPlan::new(9090, Transport::Tcp).named("metrics"),
        ],
    }
}

fn host_ip(node: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 254, (node >> 8) as u8, node as u8))
}

fn pod_yaml(p: &PodPlan, ip: IpAddr) -> Result<String> {
    to_yaml(&objects::pod(p, ip, host_ip(p.node)))
}

/// Policy `k` (0..4) of namespace `ns`, as in the policy engine benchmark.
/// `variant` is the port edited by the policy-edit changes.
fn policy(ns: usize, k: usize, variant: u16) -> Value {
    let spec = match k {
        0 => json!({
            "podSelector": {"matchLabels": {"app": format!("a{}", ns % 5)}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"app": format!("a{}", (ns + 1) % 5)}}}],
                "ports": [{"port": "http"}, {"protocol": "TCP", "port": 7000}],
            }],
        }),
        1 => json!({
            "podSelector": {"matchLabels": {"tier": "fe"}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{
                    "namespaceSelector": {"matchLabels": {"team": format!("t{}", ns % 50)}},
                    "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]},
                }],
                "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 9000, "endPort": 9010}],
            }],
        }),
        2 => json!({
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [format!("10.{}.0.0/16", 100 + ns % 2)]}}],
                    "ports": [{"protocol": "TCP", "port": variant}],
                },
                {"ports": [{"protocol": "UDP", "port": 53}]},
                {"to": [{"podSelector": {}}], "ports": [{"port": "http"}]},
            ],
        }),
        _ => json!({
            "podSelector": {"matchLabels": {"app": format!("a{}", (ns + 2) % 5)}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.7.0/24"]}}]}],
        }),
    };
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": format!("ns-{ns}"), "name": format!("p{k}")},
        "spec": spec,
    })
}

fn write_cluster(dir: &Path, sz: &Size) -> Result<()> {
    for ns in 0..sz.namespaces {
        let name = format!("ns-{ns}");
        let labels: LabelMap = [("team".to_string(), format!("t{}", ns % 50))].into();
        write_atomic(
            dir,
            &objects::namespace_file(&name),
            &to_yaml(&objects::namespace(&name, &labels))?,
        )?;
        for k in 0..4 {
            write_atomic(
                dir,
                &objects::policy_file(&name, &format!("p{k}")),
                &to_yaml(&policy(ns, k, 443))?,
            )?;
        }
    }
    for i in 0..sz.pods {
        let p = pod_spec(sz, i);
        write_atomic(
            dir,
            &objects::pod_file(&p.namespace, &p.name),
            &pod_yaml(&p, pod_ip(i))?,
        )?;
    }
    Ok(())
}

/// Creates one veth per local pod: host side `palq<k>` in the node namespace
/// with a host route to the pod address, peer in the fabric namespace.
fn make_local_interfaces(node_ns: &str, fabric_ns: &str, locals: &[usize]) -> Result<()> {
    let mut node = String::new();
    let mut fab = String::new();
    for (k, &i) in locals.iter().enumerate() {
        node += &format!(
            "link add palq{k} type veth peer name q{k} netns {fabric_ns}\nlink set palq{k} up\nroute add {}/32 dev palq{k}\n",
            pod_ip(i)
        );
        fab += &format!("link set q{k} up\n");
    }
    ip_batch(node_ns, &node)?;
    ip_batch(fabric_ns, &fab)?;
    Ok(())
}

/// Polls `/ready` from a thread inside the node namespace (every 1 ms) until
/// it reports a wanted revision; answers with the instant it saw it.
struct ReadyPoller {
    tx: mpsc::Sender<(String, Instant)>,
    rx: mpsc::Receiver<Result<Instant>>,
}

fn ready_revision() -> Option<String> {
    let mut s = TcpStream::connect(palisade_harness::agent::READY_ADDR).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let body = text.split_once("\r\n\r\n")?.1;
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    if v.get("ready").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    v.get("revision")
        .and_then(Value::as_str)
        .map(str::to_string)
}

impl ReadyPoller {
    fn start(node_ns: &str) -> Result<Self> {
        let (tx, rx_req) = mpsc::channel::<(String, Instant)>();
        let (tx_res, rx) = mpsc::channel();
        // Detached: it ends when the sender is dropped.
        let _h = spawn_in(node_ns, move || {
            for (want, deadline) in rx_req {
                let r = loop {
                    if ready_revision().as_deref() == Some(want.as_str()) {
                        break Ok(Instant::now());
                    }
                    if Instant::now() > deadline {
                        break Err(anyhow!("revision {want} not reported before the deadline"));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                };
                if tx_res.send(r).is_err() {
                    break;
                }
            }
            Ok(())
        })?;
        Ok(ReadyPoller { tx, rx })
    }

    fn wait(&self, rev: &str, timeout: Duration) -> Result<Instant> {
        self.tx
            .send((rev.to_string(), Instant::now() + timeout))
            .map_err(|_| anyhow!("ready poller stopped"))?;
        self.rx
            .recv()
            .map_err(|_| anyhow!("ready poller stopped"))?
    }
}

/// Seconds since midnight UTC (the agent logs RFC 3339 UTC timestamps).
fn day_seconds(t: std::time::SystemTime) -> f64 {
    let d = t
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_nanos()) / 1e9
}

/// `2026-01-01T07:08:32.087247Z` -> seconds since midnight.
fn parse_day_seconds(ts: &str) -> Option<f64> {
    let time = ts.split_once('T')?.1.trim_end_matches('Z');
    let mut it = time.split(':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// One `programmed` line of the agent's JSON log.
struct Pass {
    at: f64,
    revision: String,
    took_ms: f64,
    writes: u64,
}

fn programmed_passes(log: &Path) -> Vec<Pass> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = Vec::new();
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        let f = &v["fields"];
        if f["message"].as_str() != Some("programmed") {
            continue;
        }
        let (Some(at), Some(rev), Some(took)) = (
            v["timestamp"].as_str().and_then(parse_day_seconds),
            f["revision"].as_str(),
            f["took_ms"].as_f64(),
        ) else {
            continue;
        };
        out.push(Pass {
            at,
            revision: rev.to_string(),
            took_ms: took,
            writes: f["writes"].as_u64().unwrap_or(0),
        });
    }
    out
}

struct Sample {
    kind: Change,
    rev: String,
    /// Wall clock (seconds since midnight UTC) when the change was written.
    wall: f64,
    to_ready_ms: f64,
}

/// What the agent's log says about one change: ms from the write to the end
/// of the pass that wrote its map entries, that pass's own time and writes,
/// and how many passes ran until the revision was reported.
struct Agentside {
    to_written_ms: f64,
    pass_ms: f64,
    writes: u64,
    passes: usize,
}

fn agentside(s: &Sample, passes: &[Pass]) -> Option<Agentside> {
    let after: Vec<&Pass> = passes.iter().filter(|p| p.at >= s.wall).collect();
    let last = after.iter().position(|p| p.revision == s.rev)?;
    let upto = &after[..=last];
    let w = upto.iter().find(|p| p.writes > 0).unwrap_or(&upto[last]);
    Some(Agentside {
        to_written_ms: (w.at - s.wall) * 1e3,
        pass_ms: w.took_ms,
        writes: w.writes,
        passes: upto.len(),
    })
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Change {
    PolicyEdit,
    PodAdd,
    Relabel,
}

impl Change {
    fn name(self) -> &'static str {
        match self {
            Change::PolicyEdit => "policy edit",
            Change::PodAdd => "pod add",
            Change::Relabel => "label change",
        }
    }
}

struct MapStat {
    name: String,
    kind: String,
    max_entries: u64,
    entries: Option<u64>,
    bytes: u64,
}

fn map_stats(pin_dir: &Path) -> Vec<MapStat> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(pin_dir.join("maps")) else {
        return out;
    };
    let mut paths: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        let ps = p.display().to_string();
        let Ok(show) = run_cmd("bpftool", &["-j", "map", "show", "pinned", &ps], None) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&show) else {
            continue;
        };
        let kind = v["type"].as_str().unwrap_or("?").to_string();
        let entries = if kind == "ringbuf" {
            None
        } else {
            run_cmd("bpftool", &["-j", "map", "dump", "pinned", &ps], None)
                .ok()
                .and_then(|d| serde_json::from_str::<Value>(&d).ok())
                .and_then(|d| d.as_array().map(|a| a.len() as u64))
        };
        out.push(MapStat {
            name: p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            kind,
            max_entries: v["max_entries"].as_u64().unwrap_or(0),
            entries,
            bytes: v["bytes_memlock"].as_u64().unwrap_or(0),
        });
    }
    out
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let started = Instant::now();
    let sz = if quick {
        Size {
            pods: 1_000,
            namespaces: 50,
            local_every: 91,
            changes_per_kind: 5,
        }
    } else {
        Size {
            pods: 10_000,
            namespaces: 500,
            local_every: 91,
            changes_per_kind: 70,
        }
    };
    let locals: Vec<usize> = (0..sz.pods)
        .filter(|i| i.is_multiple_of(sz.local_every))
        .collect();
    let mut cfg = AgentConfig::new(agent_binary()?);
    cfg.ready_timeout = Duration::from_secs(300);
    cfg.extra_args = vec![
        "--log-format".into(),
        "json".into(),
        "--poll-ms".into(),
        POLL_MS.to_string(),
    ];
    let spec = ClusterSpec {
        family: Family::Ipv4,
        nodes: 1,
        namespaces: BTreeMap::new(),
        pods: vec![],
        externals: vec![],
        node_labels: Default::default(),
        node_ports: Vec::new(),
    };
    let mut c = Cluster::build(
        &spec,
        ClusterOptions {
            agent: Some(cfg),
            keep_temp: false,
            ..Default::default()
        },
    )?;
    let node_ns = c.node_netns(1)?.to_string();
    let fabric_ns = format!("{}-fab", c.id());
    make_local_interfaces(&node_ns, &fabric_ns, &locals)?;
    let dir = c.source_dir(1)?;
    let t = Instant::now();
    write_cluster(&dir, &sz)?;
    let rev0 = c.publish()?;
    eprintln!(
        "==> control: wrote {} pods, {} namespaces, {} policies ({} local) in {:.1} s",
        sz.pods,
        sz.namespaces,
        sz.namespaces * 4,
        locals.len(),
        t.elapsed().as_secs_f64()
    );

    // Start-up: spawn to /ready reporting the first revision.
    let t = Instant::now();
    c.start_agent(1)?;
    let startup = t.elapsed();
    let pid = *pids_in_netns(&node_ns, "palisade-agent")
        .first()
        .ok_or_else(|| anyhow!("agent process not found in {node_ns}"))?;
    let rss_start = rss_kib(pid).unwrap_or(0);
    let log = c.agent_log_path(1)?;
    let startup_program_ms = programmed_passes(&log)
        .iter()
        .find(|p| p.revision == rev0)
        .map(|p| p.took_ms);
    let ready_body = palisade_harness::agent::get_ready(&node_ns)?.body;
    let ready: Value = serde_json::from_str(&ready_body).unwrap_or(Value::Null);
    let endpoints = ready["endpoints"].as_u64().unwrap_or(0);
    eprintln!(
        "    ready after {:.2} s, {endpoints} endpoints, RSS {} MiB",
        startup.as_secs_f64(),
        rss_start / 1024
    );
    if endpoints as usize != locals.len() {
        bail!(
            "the agent programmed {endpoints} endpoints, expected {}: {ready_body}",
            locals.len()
        );
    }

    // Idle cost of the polling file source.
    let idle = if quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let t0 = cpu_ticks(pid).unwrap_or(0);
    std::thread::sleep(idle);
    let idle_cpu =
        (cpu_ticks(pid).unwrap_or(0).saturating_sub(t0)) as f64 / clk_tck() / idle.as_secs_f64()
            * 100.0;

    // Changes, round-robin over the three kinds, each on a namespace that
    // has a local pod so that it leads to map writes.
    let poller = ReadyPoller::start(&node_ns)?;
    let local_ns: Vec<usize> = locals.iter().map(|i| i % sz.namespaces).collect();
    let mut samples: Vec<Sample> = Vec::new();
    let mut labels_flipped: BTreeMap<usize, bool> = BTreeMap::new();
    let kinds = [Change::PolicyEdit, Change::PodAdd, Change::Relabel];
    for n in 0..sz.changes_per_kind * kinds.len() {
        let kind = kinds[n % kinds.len()];
        let round = n / kinds.len();
        let ns = local_ns[round % local_ns.len()];
        let wall = day_seconds(std::time::SystemTime::now());
        let t = Instant::now();
        match kind {
            Change::PolicyEdit => {
                let name = format!("ns-{ns}");
                write_atomic(
                    &dir,
                    &objects::policy_file(&name, "p2"),
                    &to_yaml(&policy(ns, 2, 10_000 + n as u16))?,
                )?;
            }
            Change::PodAdd => {
                let i = sz.pods + n;
                let mut p = pod_spec(&sz, i);
                p.namespace = format!("ns-{ns}");
                p.name = format!("new-{n}");
                p.node = 2;
                write_atomic(
                    &dir,
                    &objects::pod_file(&p.namespace, &p.name),
                    &pod_yaml(&p, pod_ip(i))?,
                )?;
            }
            Change::Relabel => {
                // A local pod's app label toggles between its own and one that
                // policy p0 or p3 of its namespace selects: its rules change.
                let i = locals[round % locals.len()];
                let mut p = pod_spec(&sz, i);
                let flipped = labels_flipped.entry(i).or_insert(false);
                *flipped = !*flipped;
                if *flipped {
                    let own = p.labels.get("app").cloned().unwrap_or_default();
                    let mut app = format!("a{}", (i % sz.namespaces) % 5);
                    if app == own {
                        app = format!("a{}", ((i % sz.namespaces) + 2) % 5);
                    }
                    p.labels.insert("app".into(), app);
                }
                write_atomic(
                    &dir,
                    &objects::pod_file(&p.namespace, &p.name),
                    &pod_yaml(&p, pod_ip(i))?,
                )?;
            }
        }
        let rev = c.publish()?;
        let seen = poller.wait(&rev, Duration::from_secs(60))?;
        samples.push(Sample {
            kind,
            rev,
            wall,
            to_ready_ms: seen.duration_since(t).as_secs_f64() * 1e3,
        });
    }
    drop(poller);
    let rss_end = rss_kib(pid).unwrap_or(0);
    let maps = map_stats(&c.pin_dir(1)?);
    let passes = programmed_passes(&log);
    let agent_cpu_total = cpu_ticks(pid).unwrap_or(0) as f64 / clk_tck();
    c.teardown()?;

    // ------------------------------------------------------------ report
    let stats = |xs: &mut Vec<f64>| -> (f64, f64, f64) {
        xs.sort_by(f64::total_cmp);
        (quantile(xs, 0.5), quantile(xs, 0.99), quantile(xs, 1.0))
    };
    let mut rows = Vec::new();
    let mut json_changes = Vec::new();
    let mut panel_bars = Vec::new();
    for kind in kinds.iter().map(|k| Some(*k)).chain([None]) {
        let sel: Vec<&Sample> = samples
            .iter()
            .filter(|s| kind.is_none_or(|k| s.kind == k))
            .collect();
        let mut e2e: Vec<f64> = sel.iter().map(|s| s.to_ready_ms).collect();
        let agent: Vec<Agentside> = sel.iter().filter_map(|s| agentside(s, &passes)).collect();
        let mut written: Vec<f64> = agent.iter().map(|a| a.to_written_ms).collect();
        let mut pass: Vec<f64> = agent.iter().map(|a| a.pass_ms).collect();
        let writes = median(&agent.iter().map(|a| a.writes as f64).collect::<Vec<_>>());
        let npasses = median(&agent.iter().map(|a| a.passes as f64).collect::<Vec<_>>());
        let name = kind.map_or("all changes", |k| k.name()).to_string();
        let n = e2e.len();
        let (p50, p99, max) = stats(&mut e2e);
        let (w50, w99, _) = stats(&mut written);
        let (g50, g99, _) = stats(&mut pass);
        rows.push(vec![
            name.clone(),
            n.to_string(),
            format!("{p50:.0}"),
            format!("{p99:.0}"),
            format!("{max:.0}"),
            format!("{w50:.0}"),
            format!("{w99:.0}"),
            format!("{g50:.0}"),
            format!("{g99:.0}"),
            format!("{writes:.0}"),
            format!("{npasses:.0}"),
        ]);
        json_changes.push(json!({
            "change": name, "count": n,
            "change_to_ready_ms": {"p50": p50, "p99": p99, "max": max},
            "change_to_maps_written_ms": {"p50": w50, "p99": w99},
            "agent_pass_ms": {"p50": g50, "p99": g99},
            "median_map_writes": writes,
            "median_passes_until_ready": npasses,
        }));
        panel_bars.push((
            format!("{name}: to /ready p50"),
            p50,
            format!("{p50:.0} ms"),
        ));
        panel_bars.push((
            format!("{name}: to /ready p99"),
            p99,
            format!("{p99:.0} ms"),
        ));
        panel_bars.push((
            format!("{name}: agent pass p99"),
            g99,
            format!("{g99:.0} ms"),
        ));
    }
    let map_entries: u64 = maps.iter().filter_map(|m| m.entries).sum();
    let map_bytes: u64 = maps.iter().map(|m| m.bytes).sum();

    println!();
    println!(
        "control: {} pods, {} namespaces, {} policies, {} local endpoints; file source on inotify, rescanning every {POLL_MS} ms",
        sz.pods,
        sz.namespaces,
        sz.namespaces * 4,
        locals.len()
    );
    println!(
        "start-up to ready: {:.2} s (agent's first programming pass {} ms)",
        startup.as_secs_f64(),
        startup_program_ms.map_or("?".into(), |v| format!("{v:.0}"))
    );
    println!(
        "agent RSS: {:.1} MiB after start, {:.1} MiB after the changes; idle CPU (polling) {:.1}% of a core; CPU total {:.1} s",
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        idle_cpu,
        agent_cpu_total
    );
    println!();
    print_table(
        &[
            "change",
            "n",
            "to ready p50 ms",
            "p99",
            "max",
            "maps written p50",
            "p99",
            "pass p50 ms",
            "p99",
            "writes",
            "passes",
        ],
        &rows,
    );
    println!();
    print_table(
        &["map", "type", "entries", "max entries", "memory KiB"],
        &maps
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    m.kind.clone(),
                    m.entries.map_or("-".into(), |e| e.to_string()),
                    m.max_entries.to_string(),
                    format!("{}", m.bytes / 1024),
                ]
            })
            .collect::<Vec<_>>(),
    );
    println!(
        "maps total: {map_entries} entries, {:.1} MiB",
        map_bytes as f64 / 1048576.0
    );

    let json = json!({
        "part": "control",
        "quick": quick,
        "machine": machine(),
        "cluster": {"pods": sz.pods, "namespaces": sz.namespaces, "policies": sz.namespaces * 4, "local_endpoints": locals.len()},
        "poll_ms": POLL_MS,
        "startup_to_ready_s": startup.as_secs_f64(),
        "startup_program_ms": startup_program_ms,
        "rss_mib": {"after_start": rss_start as f64 / 1024.0, "after_changes": rss_end as f64 / 1024.0},
        "idle_cpu_percent_of_core": idle_cpu,
        "changes": json_changes,
        "maps": maps.iter().map(|m| json!({"name": m.name, "type": m.kind, "entries": m.entries, "max_entries": m.max_entries, "bytes": m.bytes})).collect::<Vec<_>>(),
        "map_entries_total": map_entries,
        "map_bytes_total": map_bytes,
        "took_seconds": started.elapsed().as_secs_f64(),
    });
    let jp = write_json("control", &json)?;
    let mut panels = vec![Panel {
        title: format!("change to /ready, ms (file source polls every {POLL_MS} ms)"),
        bars: panel_bars,
    }];
    panels.push(Panel {
        title: "agent".into(),
        bars: vec![
            (
                "RSS after changes, MiB".into(),
                rss_end as f64 / 1024.0,
                format!("{:.1}", rss_end as f64 / 1024.0),
            ),
            (
                "map memory, MiB".into(),
                map_bytes as f64 / 1048576.0,
                format!("{:.1}", map_bytes as f64 / 1048576.0),
            ),
            (
                "start-up to ready, s".into(),
                startup.as_secs_f64(),
                format!("{:.2}", startup.as_secs_f64()),
            ),
        ],
    });
    let sp = write_svg(
        "control",
        &format!(
            "Palisade control plane: {} pods, {} policies, {} local endpoints",
            sz.pods,
            sz.namespaces * 4,
            locals.len()
        ),
        &panels,
    )?;
    println!(
        "wrote {} and {} ({:.0} s)",
        jp.display(),
        sp.display(),
        started.elapsed().as_secs_f64()
    );
    if samples.is_empty() {
        bail!("no changes measured");
    }
    Ok(())
}
