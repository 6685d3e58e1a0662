//! Running conformance cases: every scenario file on its own freshly built
//! cluster, a sanity check of every probed pair before any policy, the
//! agents, then each step's writes, a sync and the step's probes, compared
//! with the expected matrices.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use super::backend::{Built, CaseCluster};
use super::report::{side_by_side, CaseReport, CaseStatus, Summary};
use crate::agent::AgentConfig;
use crate::cluster::{Cluster, ClusterOptions, Topology};
use crate::matrix::{Cell, Peer, Probe, Via};
use crate::model::{Family, Transport};
use crate::probe::Outcome;
use crate::scenario::{self, Expectation, Scenario};
use crate::servers::sctp_supported;

/// How a run goes, whatever the backend.
#[derive(Clone, Debug)]
pub struct RunSettings {
    pub family: Family,
    /// Whether the pods can speak SCTP; when not, SCTP expectations are skipped.
    pub sctp: bool,
    /// Whether agents enforce (without them the run checks the harness and the
    /// scenarios themselves, or, on a real cluster, that its CNI does not enforce).
    pub enforced: bool,
    pub verbose: bool,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ConformanceOptions {
    /// Files and directories (a directory means every `*.yaml` below it, sorted).
    pub paths: Vec<PathBuf>,
    pub family: Family,
    /// The agent binary to run on every node; `None` runs without agents
    /// (only useful to check the harness and the scenarios themselves).
    pub agent: Option<PathBuf>,
    /// Print step timings and full agent logs of failed cases.
    pub verbose: bool,
    /// How nodes connect their pods.
    pub topology: Topology,
}

/// Runs every scenario and prints the report on stdout. The caller exits
/// non-zero when `!summary.success()` (or on `Err`, which means the paths
/// themselves could not be read).
pub fn run_conformance(opts: ConformanceOptions) -> Result<Summary> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run_conformance_to(&opts, &mut out)
}

/// [`run_conformance`] writing to any sink.
pub fn run_conformance_to(opts: &ConformanceOptions, out: &mut dyn Write) -> Result<Summary> {
    crate::netns::install_signal_handler();
    let settings = RunSettings {
        family: opts.family,
        sctp: sctp_supported(),
        enforced: opts.agent.is_some(),
        verbose: opts.verbose,
    };
    let build = |sc: &Scenario| -> Result<Built<Cluster>> {
        let copts = ClusterOptions {
            agent: opts.agent.as_ref().map(AgentConfig::new),
            keep_temp: false,
            topology: opts.topology,
        };
        Cluster::build(&sc.cluster_spec(opts.family), copts).map(Built::Ready)
    };
    run_scenarios(&opts.paths, &settings, build, out)
}

/// Runs every scenario under `paths` on clusters made by `build` (one per case)
/// and prints the report (FORMAT.md's output) to `out`.
pub fn run_scenarios<C, F>(
    paths: &[PathBuf],
    settings: &RunSettings,
    mut build: F,
    out: &mut dyn Write,
) -> Result<Summary>
where
    C: CaseCluster,
    F: FnMut(&Scenario) -> Result<Built<C>>,
{
    let files = scenario::collect_files(paths)?;
    let mut summary = Summary::default();
    let mut names = BTreeSet::new();
    for path in files {
        let t = Instant::now();
        let (name, status, notes) = match scenario::load(&path) {
            Err(e) => (
                path.display().to_string(),
                CaseStatus::Fail(format!("invalid scenario: {e:#}")),
                Vec::new(),
            ),
            Ok(sc) if !names.insert(sc.name.clone()) => (
                sc.name.clone(),
                CaseStatus::Fail(format!(
                    "{}: name: {:?} is used by another case",
                    path.display(),
                    sc.name
                )),
                Vec::new(),
            ),
            Ok(sc) => {
                // A panic in one case (a harness bug) fails that case, not the
                // run; the case's cluster is torn down by its Drop on unwind.
                let (status, notes) =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_case(&sc, settings, &mut build)
                    }))
                    .unwrap_or_else(|p| {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        (
                            CaseStatus::Fail(format!("harness panic: {msg}")),
                            Vec::new(),
                        )
                    });
                (sc.name.clone(), status, notes)
            }
        };
        let report = CaseReport {
            name,
            path,
            status,
            duration: t.elapsed(),
        };
        summary.record(report, &notes, settings.verbose, out)?;
    }
    writeln!(out, "{}", summary.totals_line())?;
    out.flush()?;
    Ok(summary)
}

/// The probes of one expectation: (row, column, probe) for every checked cell.
fn expectation_probes(e: &Expectation) -> Vec<(usize, usize, Probe)> {
    let mut v = Vec::new();
    for (r, (src, _)) in e.matrix.rows.iter().enumerate() {
        for (c, dst) in e.matrix.columns.iter().enumerate() {
            if e.matrix.checked(e.ignore_loopback, r, c) {
                v.push((
                    r,
                    c,
                    Probe {
                        from: src.clone(),
                        to: dst.clone(),
                        port: e.port,
                        protocol: e.protocol,
                        via: e.via,
                    },
                ));
            }
        }
    }
    v
}

fn skipped(e: &Expectation, settings: &RunSettings) -> bool {
    e.protocol == Transport::Sctp && !settings.sctp
}

fn run_case<C: CaseCluster>(
    sc: &Scenario,
    settings: &RunSettings,
    build: &mut dyn FnMut(&Scenario) -> Result<Built<C>>,
) -> (CaseStatus, Vec<String>) {
    let opts = settings;
    if !sc.families.contains(&opts.family) {
        let fams: Vec<&str> = sc.families.iter().map(|f| f.as_str()).collect();
        return (
            CaseStatus::Skip(format!(
                "not valid for {}; valid for {}",
                opts.family,
                fams.join(", ")
            )),
            Vec::new(),
        );
    }
    let total: usize = sc.steps.iter().map(|s| s.expect.len()).sum();
    let n_skipped: usize = sc
        .steps
        .iter()
        .flat_map(|s| &s.expect)
        .filter(|e| skipped(e, settings))
        .count();
    if total > 0 && n_skipped == total {
        return (
            CaseStatus::Skip("every expectation is SCTP and this kernel has no SCTP".into()),
            Vec::new(),
        );
    }
    let mut notes = Vec::new();
    if n_skipped > 0 {
        notes.push(format!(
            "{n_skipped} of {total} expectations skipped: SCTP, which this kernel does not support"
        ));
    }
    let mut cluster = match build(sc) {
        Ok(Built::Ready(c)) => c,
        Ok(Built::Skip(reason)) => return (CaseStatus::Skip(reason), notes),
        Err(e) => {
            return (
                CaseStatus::Fail(format!("harness error: building the cluster: {e:#}")),
                notes,
            )
        }
    };
    let status = match run_case_inner(sc, settings, &mut cluster, &mut notes) {
        Ok(None) => CaseStatus::Pass,
        Ok(Some(details)) => CaseStatus::Fail(details),
        Err(e) => CaseStatus::Fail(format!("{e:#}")),
    };
    (status, notes)
}

/// `Ok(None)` = pass, `Ok(Some(details))` = expectation mismatch, `Err` =
/// harness or agent error.
fn run_case_inner<C: CaseCluster>(
    sc: &Scenario,
    opts: &RunSettings,
    cluster: &mut C,
    notes: &mut Vec<String>,
) -> Result<Option<String>> {
    let mut log = String::new();

    // Sanity: every checked pair of every step reachable before any policy,
    // and before any agent runs, so a failure here is the harness's own.
    let mut seen = BTreeSet::new();
    let mut sanity = Vec::new();
    for e in sc
        .steps
        .iter()
        .flat_map(|s| &s.expect)
        .filter(|e| !skipped(e, opts))
    {
        for (_, _, p) in expectation_probes(e) {
            let key = (
                p.from.clone(),
                p.to.clone(),
                p.port,
                p.protocol,
                p.via == Via::Service,
            );
            if seen.insert(key) {
                sanity.push(p);
            }
        }
    }
    let t = Instant::now();
    let res = cluster
        .probe(&sanity, &vec![Outcome::Reachable; sanity.len()])
        .context("harness error: sanity probes")?;
    let bad: Vec<String> = sanity
        .iter()
        .zip(&res)
        .filter(|(_, o)| **o == Outcome::Blocked)
        .map(|(p, _)| {
            format!(
                "{} -> {} {}/{} via {}",
                p.from,
                p.to,
                p.protocol,
                p.port,
                p.via.as_str()
            )
        })
        .collect();
    // A probe that could not run at all (the pods' kernel has no SCTP, which
    // only the pods know on a real cluster): its expectations are skipped,
    // never passed.
    let sctp_absent = sanity
        .iter()
        .zip(&res)
        .any(|(p, o)| p.protocol == Transport::Sctp && *o == Outcome::Skipped);
    if sctp_absent {
        notes.push("SCTP expectations skipped: the pods' kernel has no SCTP".to_string());
    }
    let skipped = |e: &Expectation, opts: &RunSettings| {
        skipped(e, opts) || (sctp_absent && e.protocol == Transport::Sctp)
    };
    if !bad.is_empty() {
        let shown: Vec<&String> = bad.iter().take(20).collect();
        anyhow::bail!(
            "harness error: sanity check before the first step: {} of {} pairs unreachable with no policy:\n  {}",
            bad.len(),
            sanity.len(),
            shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")
        );
    }
    if opts.verbose {
        log += &format!(
            "sanity: {} probes ok in {:.1}s\n",
            sanity.len(),
            t.elapsed().as_secs_f64()
        );
    }

    if opts.enforced {
        let t = Instant::now();
        cluster.start_enforcement().context("starting the agents")?;
        if opts.verbose {
            log += &format!("agents ready in {:.2}s\n", t.elapsed().as_secs_f64());
        }
    }

    let mut failures = String::new();
    let nsteps = sc.steps.len();
    for (si, step) in sc.steps.iter().enumerate() {
        let t = Instant::now();
        let r: Result<()> = (|| {
            for (pod, labels) in &step.set_pod_labels {
                cluster.set_pod_labels(pod, labels.clone())?;
            }
            for (ns, labels) in &step.set_namespace_labels {
                cluster.set_namespace_labels(ns, labels.clone())?;
            }
            for r in &step.delete {
                cluster.delete_policy(r)?;
            }
            for m in &step.apply {
                let resolve = |p: &Peer| cluster.address_of(p);
                let m = scenario::substitute(m, opts.family, &resolve)?;
                cluster.apply_policy(&m)?;
            }
            cluster.sync()?;
            Ok(())
        })();
        r.with_context(|| format!("step {} of {nsteps}", si + 1))
            .map_err(|e| with_logs(e, &*cluster, opts.verbose))?;
        let t_sync = t.elapsed();

        // All expectations of a step probe together: one timeout per step.
        let mut probes = Vec::new();
        let mut want = Vec::new();
        let mut owners = Vec::new();
        for (ei, e) in step.expect.iter().enumerate() {
            if skipped(e, opts) {
                continue;
            }
            for (r, c, p) in expectation_probes(e) {
                probes.push(p);
                want.push(if e.matrix.rows[r].1[c] == Cell::Reachable {
                    Outcome::Reachable
                } else {
                    Outcome::Blocked
                });
                owners.push((ei, r, c));
            }
        }
        let res = cluster
            .probe(&probes, &want)
            .with_context(|| format!("step {}: probes", si + 1))?;
        for (ei, e) in step.expect.iter().enumerate() {
            if skipped(e, opts) {
                continue;
            }
            let rows = e.matrix.rows.len();
            let cols = e.matrix.columns.len();
            let mut observed = vec![vec![None; cols]; rows];
            for ((oe, r, c), o) in owners.iter().zip(&res) {
                if *oe == ei {
                    observed[*r][*c] = Some(*o);
                }
            }
            let mut differs = false;
            for (r, (_, cells)) in e.matrix.rows.iter().enumerate() {
                for c in 0..cols {
                    if let Some(o) = observed[r][c] {
                        let want = cells[c] == Cell::Reachable;
                        if (o == Outcome::Reachable) != want {
                            differs = true;
                        }
                    }
                }
            }
            if differs {
                failures += &format!(
                    "step {} of {nsteps}: port {} {} via {}\n{}",
                    si + 1,
                    e.port,
                    e.protocol,
                    e.via.as_str(),
                    side_by_side(e, &observed)
                );
            }
        }
        if opts.verbose {
            log += &format!(
                "step {}: programmed in {:.2}s, {} probes in {:.2}s\n",
                si + 1,
                t_sync.as_secs_f64(),
                probes.len(),
                (t.elapsed() - t_sync).as_secs_f64()
            );
        }
    }
    if failures.is_empty() {
        if opts.verbose && !log.is_empty() {
            eprint!("{log}");
        }
        return Ok(None);
    }
    let mut details = log + &failures;
    if opts.enforced {
        details += &cluster.logs(opts.verbose);
    }
    Ok(Some(details))
}

fn with_logs<C: CaseCluster + ?Sized>(
    e: anyhow::Error,
    cluster: &C,
    verbose: bool,
) -> anyhow::Error {
    let logs = cluster.logs(verbose);
    if logs.is_empty() {
        e
    } else {
        anyhow::anyhow!("{e:#}\n{logs}")
    }
}
