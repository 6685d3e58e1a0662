//! `diff` predicts the conformance cases: for every case of `tests/conformance/`
//! and every step after the first, the state of the step before (the objects the
//! file source would read) is written to a directory and the step's own change
//! (its manifests, relabelled pods and namespaces, deletions) to a file; what
//! `kubectl palisade diff` says becomes blocked or allowed must be exactly the
//! pod-to-pod cells whose expected outcome differs between the two steps'
//! matrices (every cell diff judges: TCP on the probed ports, and each
//! destination pod's named ports).
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use palisade_harness::{
    model::node_addr, objects, scenario, CaseCluster, Cell, Family, Judge, OfflineCluster,
    OfflineConnection, Peer, Transport,
};
use serde_json::Value;

/// The state tracker needs no judge: nothing is probed.
struct NoJudge;
impl Judge for NoJudge {
    fn allowed(
        &mut self,
        _: &[Value],
        _: &[(String, IpAddr)],
        c: &[OfflineConnection],
    ) -> Result<Vec<bool>> {
        Ok(vec![true; c.len()])
    }
}

/// A deletion as diff's `--delete` names it.
fn diff_ref(r: &scenario::PolicyRef) -> String {
    match r {
        scenario::PolicyRef::Namespaced(ns, n) => format!("{ns}/{n}"),
        scenario::PolicyRef::Cluster(n) => format!("ClusterNetworkPolicy/{n}"),
    }
}

fn docs(objs: &[Value]) -> String {
    objs.iter().map(|o| format!("---\n{o}\n")).collect()
}

/// (from, to, protocol, port).
type CellKey = (String, String, String, u16);

fn proto(t: Transport) -> &'static str {
    match t {
        Transport::Tcp => "TCP",
        Transport::Udp => "UDP",
        Transport::Sctp => "SCTP",
    }
}

/// Expected outcome per pod-to-pod cell of a step's expectations.
fn expected(step: &scenario::Step) -> Vec<(CellKey, bool)> {
    let mut out = Vec::new();
    for e in &step.expect {
        for (r, (src, cells)) in e.matrix.rows.iter().enumerate() {
            for (c, dst) in e.matrix.columns.iter().enumerate() {
                let (Peer::Pod(s), Peer::Pod(d)) = (src, dst) else {
                    continue;
                };
                if s == d || !e.matrix.checked(e.ignore_loopback, r, c) {
                    continue;
                }
                let k = (s.clone(), d.clone(), proto(e.protocol).to_string(), e.port);
                out.push((k, cells[c] == Cell::Reachable));
            }
        }
    }
    out
}

#[test]
fn diff_predicts_exactly_the_cells_each_step_changes() {
    let cases = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance");
    let work = std::env::temp_dir().join(format!("palisade-diffconf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    let family = Family::Ipv4;
    let (mut pairs, mut compared, mut changed) = (0, 0, 0);
    let mut failures = Vec::new();
    for path in scenario::collect_files(&[cases]).expect("cases") {
        let sc = scenario::load(&path).expect("scenario");
        if !sc.families.contains(&family) {
            continue;
        }
        let spec = sc.cluster_spec(family);
        let mut c = OfflineCluster::new(spec.clone(), NoJudge);
        let mut before: Option<Vec<(CellKey, bool)>> = None;
        for (si, step) in sc.steps.iter().enumerate() {
            let state = c.objects();
            // The step's change as diff takes it.
            let resolve = |p: &Peer| c.address_of(p);
            let applied: Vec<Value> = step
                .apply
                .iter()
                .map(|m| scenario::substitute(m, family, &resolve).expect("placeholders"))
                .collect();
            let mut change = applied.clone();
            for (pod, labels) in &step.set_pod_labels {
                let mut plan = spec
                    .pods
                    .iter()
                    .find(|p| p.key() == *pod)
                    .expect("pod")
                    .clone();
                plan.labels = labels.clone();
                let ip = c.address_of(&Peer::Pod(pod.clone())).expect("pod ip");
                change.push(objects::pod(&plan, ip, node_addr(family, plan.node)));
            }
            for (ns, labels) in &step.set_namespace_labels {
                change.push(objects::namespace(ns, labels));
            }
            let reapplied: BTreeSet<String> = applied
                .iter()
                .filter_map(|m| scenario::policy_key(m).ok())
                .map(|r| diff_ref(&r))
                .collect();
            let deletes: Vec<String> = step
                .delete
                .iter()
                .map(diff_ref)
                .filter(|r| !reapplied.contains(r))
                .collect();
            // Apply the step to the tracker (the state after it).
            for (pod, labels) in &step.set_pod_labels {
                c.set_pod_labels(pod, labels.clone()).expect("labels");
            }
            for (ns, labels) in &step.set_namespace_labels {
                c.set_namespace_labels(ns, labels.clone()).expect("labels");
            }
            for r in &step.delete {
                c.delete_policy(r).expect("delete");
            }
            for m in &applied {
                c.apply_policy(m).expect("apply");
            }
            let after = expected(step);
            let Some(prev) = before.replace(after.clone()) else {
                continue;
            };
            if change.is_empty() && deletes.is_empty() {
                continue;
            }
            let dir = work.join(format!("{}-{si}", sc.name));
            std::fs::create_dir_all(&dir).expect("dir");
            std::fs::write(dir.join("state.yaml"), docs(&state)).expect("state");
            let change_file = dir.join("change.json.yaml");
            std::fs::write(&change_file, docs(&change)).expect("change");
            let tcp_ports: BTreeSet<u16> = step
                .expect
                .iter()
                .filter(|e| e.protocol == Transport::Tcp)
                .map(|e| e.port)
                .collect();
            let predicted = run_diff(&dir, &change, &change_file, &deletes, &tcp_ports);
            pairs += 1;
            // Cells both steps expect, which diff judges.
            let named = |pod: &str, proto: &str, port: u16| {
                spec.pods.iter().find(|p| p.key() == pod).is_some_and(|p| {
                    p.ports.iter().any(|pp| {
                        pp.name.is_some() && pp.port == port && self::proto(pp.protocol) == proto
                    })
                })
            };
            for (k, now) in &after {
                let Some((_, was)) = prev.iter().find(|(pk, _)| pk == k) else {
                    continue;
                };
                let judged = (k.2 == "TCP" && tcp_ports.contains(&k.3)) || named(&k.1, &k.2, k.3);
                if !judged {
                    continue;
                }
                compared += 1;
                let want = (was != now).then_some(*now);
                let got = predicted.iter().find(|(pk, _)| pk == k).map(|(_, a)| *a);
                if want.is_some() {
                    changed += 1;
                }
                if want != got {
                    failures.push(format!(
                        "{} step {}: {} -> {} {}/{}: expected {:?}, diff says {:?} (Some(true): newly allowed)",
                        sc.name,
                        si + 1,
                        k.0,
                        k.1,
                        k.3,
                        k.2,
                        want,
                        got
                    ));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    println!("{pairs} step pairs, {compared} cells compared, {changed} changed");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        pairs >= 20 && changed >= 50,
        "{pairs} step pairs, {changed} changed cells"
    );
}

/// diff's changed cells: (cell, allowed after).
fn run_diff(
    dir: &Path,
    change: &[Value],
    change_file: &Path,
    deletes: &[String],
    ports: &BTreeSet<u16>,
) -> Vec<(CellKey, bool)> {
    let state = dir.join("state.yaml");
    let src = dir.join("src");
    std::fs::create_dir_all(&src).expect("src");
    std::fs::rename(&state, src.join("state.yaml")).expect("move state");
    let mut args: Vec<String> = vec![
        "diff".into(),
        "--source-dir".into(),
        src.to_string_lossy().into_owned(),
        "-o".into(),
        "json".into(),
    ];
    if !change.is_empty() {
        args.extend(["-f".into(), change_file.to_string_lossy().into_owned()]);
    }
    for d in deletes {
        args.extend(["--delete".into(), d.clone()]);
    }
    for p in ports {
        args.extend(["--port".into(), p.to_string()]);
    }
    let o = Command::new(env!("CARGO_BIN_EXE_kubectl-palisade"))
        .args(&args)
        .output()
        .expect("diff runs");
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "diff {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("diff json");
    let mut out = Vec::new();
    for (key, allowed) in [("blocked", false), ("allowed", true)] {
        for e in v[key].as_array().into_iter().flatten() {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            let port = e["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(0);
            out.push(((s("from"), s("to"), s("protocol"), port), allowed));
        }
    }
    out
}
