//! Reliability in figures: the real agent on a namespace cluster under
//! sustained faults, with traffic that must keep flowing and traffic that
//! must never arrive.
//!
//! - **Restarts**: the agent of the node serving `x/b` is killed (SIGKILL) and
//!   restarted N times while long-lived TCP connections from `x/a` (allowed)
//!   echo every 50 ms and `y/a` sends a UDP datagram every 5 ms to `x/b`'s
//!   echo server on a port no policy allows; an echo is a datagram that
//!   reached a denied destination. Time from each start to ready (every agent
//!   programmed the current revision).
//! - **Changes**: M policy, pod-label and namespace-label changes, published
//!   in batches, under the same traffic; after each batch, pairs that stay
//!   allowed and pairs that stay denied through every change are probed
//!   (false drops, leaks), and so is the pod the changes toggle (a change not
//!   enforced). Change to enforced: from publishing a batch to every agent
//!   having programmed it.
//! - **API server outages** (`outage`): the agent in kube mode under the same
//!   traffic while the API server goes down and comes back, with changes
//!   made while it is down.
//!
//! `cargo xtask soak [--quick]` (root) runs it (100 restarts, 10,000
//! changes and 20 outages of 5 s; `--quick`: 3, 200 and 3 of 2 s), then the
//! packet fuzz. Prints a table and
//! writes `results/bench-soak.json`.
use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use palisade_bench_report as report;
use palisade_harness::{
    default_agent_path, AgentConfig, Cluster, ClusterOptions, ClusterSpec, Family, LabelMap,
    Outcome, Peer, Probe, Transport, Via,
};
use serde_json::json;

mod outage;
mod traffic;

use traffic::{Traffic, CONNECTIONS};

/// TCP 80 probes, run in parallel.
fn probe_all(c: &Cluster, pairs: &[(&str, &str)]) -> Result<Vec<Outcome>> {
    let probes = pairs
        .iter()
        .map(|(from, to)| {
            Ok(Probe {
                from: Peer::parse(from)?,
                to: Peer::parse(to)?,
                port: 80,
                protocol: Transport::Tcp,
                via: Via::Pod,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    c.probe(&probes)
}

/// Percentile `p` (0-100) of `xs`, sorted in place.
fn percentile(xs: &mut [f64], p: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (xs.len() - 1) as f64).round() as usize;
    xs[i.min(xs.len() - 1)]
}

fn base_policy() -> serde_json::Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "b-from-a", "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "b"}},
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"pod": "a"}}}],
                "ports": [{"port": 80, "protocol": "TCP"}]
            }]
        }
    })
}

/// While present, y/b accepts nothing.
fn toggled_policy() -> serde_json::Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "isolate-b", "namespace": "y"},
        "spec": {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress"]}
    })
}

/// A policy on z/c that admits a namespace label the changes keep moving.
fn churn_policy(k: usize) -> serde_json::Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": format!("churn-{}", k % 10), "namespace": "z"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "c"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"churn": format!("{k}")}}}]}]
        }
    })
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (restarts, changes, batch, outages, down_for) = if quick {
        (3, 200, 20, 3, Duration::from_secs(2))
    } else {
        (100, 10_000, 50, 20, Duration::from_secs(5))
    };
    let started = Instant::now();
    let mut agent = AgentConfig::new(default_agent_path());
    agent.ready_timeout = Duration::from_secs(120);
    let mut c = Cluster::build(
        &ClusterSpec::default_model(Family::Ipv4),
        ClusterOptions {
            agent: Some(agent),
            keep_temp: false,
            ..Default::default()
        },
    )?;
    c.start_agents()?;
    c.apply_policy(&base_policy())?;
    c.sync()?;
    let node_b = c.pod_spec("x/b")?.node;
    anyhow::ensure!(
        probe_all(&c, &[("x/a", "x/b"), ("y/a", "x/b")])? == [Outcome::Reachable, Outcome::Blocked],
        "the base policy is not enforced before the soak"
    );

    eprintln!("==> soak: {restarts} agent restarts (SIGKILL) on node {node_b} under traffic");
    let traffic = Traffic::start(&c)?;
    let mut ready_ms = Vec::new();
    for i in 0..restarts {
        c.kill_agent(node_b)?;
        // Traffic flows while no agent runs.
        thread::sleep(Duration::from_millis(50 + (i as u64 * 37) % 200));
        let t = Instant::now();
        c.start_agent(node_b)?;
        ready_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if (i + 1) % 10 == 0 {
            eprintln!("    {} restarts", i + 1);
        }
    }
    let (r_broken, r_trips, r_sent, r_leaked) = traffic.finish();

    eprintln!("==> soak: {changes} policy, label and namespace changes under traffic");
    let traffic = Traffic::start(&c)?;
    let (mut false_drops, mut leaks, mut not_enforced) = (0u64, 0u64, 0u64);
    let mut enforced_ms = Vec::new();
    let mut isolated = false;
    let mut done = 0;
    while done < changes {
        for k in done..(done + batch).min(changes) {
            match k % 4 {
                0 => {
                    if isolated {
                        c.delete_policy("y", "isolate-b")?;
                    } else {
                        c.apply_policy(&toggled_policy())?;
                    }
                    isolated = !isolated;
                }
                1 => c.set_pod_labels(
                    "y/c",
                    LabelMap::from([
                        ("pod".to_string(), "c".to_string()),
                        ("churn".to_string(), format!("{k}")),
                    ]),
                )?,
                2 => c.set_namespace_labels(
                    "z",
                    LabelMap::from([("churn".to_string(), format!("{k}"))]),
                )?,
                _ => c.apply_policy(&churn_policy(k))?,
            }
        }
        done = (done + batch).min(changes);
        let t = Instant::now();
        c.sync()?;
        enforced_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let toggled = if isolated {
            Outcome::Blocked
        } else {
            Outcome::Reachable
        };
        let pairs = [
            ("x/a", "x/b"),
            ("y/a", "x/b"),
            ("z/c", "x/b"),
            ("x/a", "y/b"),
        ];
        let want = [
            Outcome::Reachable,
            Outcome::Blocked,
            Outcome::Blocked,
            toggled,
        ];
        let got = probe_all(&c, &pairs)?;
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            match (i, *g, w) {
                (3, g, w) if g != w => not_enforced += 1,
                (3, _, _) => {}
                (_, Outcome::Reachable, Outcome::Blocked) => leaks += 1,
                (_, g, w) if g != w => false_drops += 1,
                _ => {}
            }
        }
        if done % 1000 == 0 {
            eprintln!("    {done} changes");
        }
    }
    let (c_broken, c_trips, c_sent, c_leaked) = traffic.finish();
    c.teardown()?;

    eprintln!(
        "==> soak: {outages} API server outages of {} s in kube mode under traffic",
        down_for.as_secs()
    );
    let o = outage::run(&default_agent_path(), outages, down_for)?;
    let o50 = percentile(&mut o.caught_up_ms.clone(), 50.0);
    let o99 = percentile(&mut o.caught_up_ms.clone(), 99.0);

    let p50 = percentile(&mut ready_ms.clone(), 50.0);
    let p99 = percentile(&mut ready_ms.clone(), 99.0);
    let e50 = percentile(&mut enforced_ms.clone(), 50.0);
    let e99 = percentile(&mut enforced_ms.clone(), 99.0);
    let rows = vec![
        vec!["restarts (SIGKILL)".into(), restarts.to_string(), "".into()],
        vec![
            "  long-lived connections broken".into(),
            format!("{r_broken} of {CONNECTIONS} ({r_trips} round trips)"),
            "0".into(),
        ],
        vec![
            "  datagrams that reached a denied port".into(),
            format!("{r_leaked} of {r_sent}"),
            "0".into(),
        ],
        vec![
            "  start to ready p50 / p99".into(),
            format!("{p50:.0} / {p99:.0} ms"),
            "".into(),
        ],
        vec![
            "changes".into(),
            format!("{changes} in {} batches", enforced_ms.len()),
            "".into(),
        ],
        vec![
            "  false drops (pairs that stay allowed)".into(),
            false_drops.to_string(),
            "0".into(),
        ],
        vec![
            "  leaks (pairs that stay denied)".into(),
            leaks.to_string(),
            "0".into(),
        ],
        vec![
            "  toggled pod not as its policy says".into(),
            not_enforced.to_string(),
            "0".into(),
        ],
        vec![
            "  long-lived connections broken".into(),
            format!("{c_broken} of {CONNECTIONS} ({c_trips} round trips)"),
            "0".into(),
        ],
        vec![
            "  datagrams that reached a denied port".into(),
            format!("{c_leaked} of {c_sent}"),
            "0".into(),
        ],
        vec![
            "  change to enforced p50 / p99".into(),
            format!("{e50:.0} / {e99:.0} ms"),
            "".into(),
        ],
        vec![
            "API server outages (kube mode)".into(),
            format!(
                "{} of {} s, {} changes while down",
                o.outages,
                down_for.as_secs(),
                o.changes
            ),
            "".into(),
        ],
        vec![
            "  probes while down not as before it".into(),
            o.lost.to_string(),
            "0".into(),
        ],
        vec![
            "  changes made while down not enforced after".into(),
            o.not_enforced.to_string(),
            "0".into(),
        ],
        vec![
            "  false drops / leaks after".into(),
            format!("{} / {}", o.false_drops, o.leaks),
            "0 / 0".into(),
        ],
        vec![
            "  long-lived connections broken".into(),
            format!(
                "{} of {CONNECTIONS} ({} round trips)",
                o.broken, o.roundtrips
            ),
            "0".into(),
        ],
        vec![
            "  datagrams that reached a denied port".into(),
            format!("{} of {}", o.denied_arrived, o.denied_sent),
            "0".into(),
        ],
        vec![
            "  back up to every change programmed p50 / p99".into(),
            format!("{o50:.0} / {o99:.0} ms"),
            "".into(),
        ],
    ];
    println!("soak ({:.0} s)", started.elapsed().as_secs_f64());
    report::print_table(&["figure", "value", "target"], &rows);
    let path = report::write_json(
        "soak",
        &json!({
            "machine": report::machine(),
            "restarts": {
                "count": restarts,
                "connections": CONNECTIONS,
                "connections_broken": r_broken,
                "roundtrips": r_trips,
                "denied_datagrams_sent": r_sent,
                "denied_datagrams_arrived": r_leaked,
                "ready_ms_p50": p50,
                "ready_ms_p99": p99,
            },
            "changes": {
                "count": changes,
                "batches": enforced_ms.len(),
                "false_drops": false_drops,
                "leaks": leaks,
                "not_enforced": not_enforced,
                "connections_broken": c_broken,
                "roundtrips": c_trips,
                "denied_datagrams_sent": c_sent,
                "denied_datagrams_arrived": c_leaked,
                "enforced_ms_p50": e50,
                "enforced_ms_p99": e99,
            },
            "outages": {
                "count": o.outages,
                "down_seconds": down_for.as_secs(),
                "changes_while_down": o.changes,
                "probes_not_as_before": o.lost,
                "not_enforced_after": o.not_enforced,
                "false_drops": o.false_drops,
                "leaks": o.leaks,
                "connections_broken": o.broken,
                "roundtrips": o.roundtrips,
                "denied_datagrams_sent": o.denied_sent,
                "denied_datagrams_arrived": o.denied_arrived,
                "caught_up_ms_p50": o50,
                "caught_up_ms_p99": o99,
            },
            "took_seconds": started.elapsed().as_secs_f64(),
        }),
    )?;
    println!("wrote {}", path.display());
    let bad = r_broken
        + r_leaked
        + false_drops
        + leaks
        + not_enforced
        + c_broken
        + c_leaked
        + o.lost
        + o.not_enforced
        + o.false_drops
        + o.leaks
        + o.broken
        + o.denied_arrived;
    anyhow::ensure!(bad == 0, "the soak found {bad} failures (see the table)");
    Ok(())
}
