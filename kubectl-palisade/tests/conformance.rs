//! `explain`'s judgement held to every expected cell of every conformance case in
//! `tests/conformance/`, IPv4 and IPv6: the conformance runner drives each case on
//! an offline cluster (the objects the file source would read, no network) and
//! every probe is answered by the plugin's evaluator, which judges each side from
//! the compiled maps and from the model and fails the case when the two differ.
//! Zero failures means zero disagreements with the expectations and between the
//! plugin's two readings.
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Result};
use kubectl_palisade::judge::Evaluator;
use palisade_common::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use palisade_harness::{
    run_scenarios, scenario, Built, Family, Judge, OfflineCluster, OfflineConnection, RunSettings,
    Transport,
};
use palisade_policy::{parse_yaml_documents, ClusterIndex, Packet};
use serde_json::Value;

/// Answers probes with the plugin's evaluator on the index of the objects.
struct ExplainJudge;

fn index_of(objects: &[Value]) -> Result<ClusterIndex> {
    let mut index = ClusterIndex::new();
    for o in objects {
        // JSON is YAML: the file source's reader takes either.
        for r in parse_yaml_documents(&o.to_string(), "case") {
            let outcome = index.apply(r?);
            if let Some(e) = outcome.error {
                // An invalid policy is part of some cases: it changes nothing.
                eprintln!("note: {e}");
            }
        }
    }
    Ok(index)
}

impl Judge for ExplainJudge {
    fn allowed(
        &mut self,
        objects: &[Value],
        _node_addrs: &[(String, IpAddr)],
        conns: &[OfflineConnection],
    ) -> Result<Vec<bool>> {
        let index = index_of(objects)?;
        let mut ev = Evaluator::new(&index);
        let mut out = Vec::new();
        for c in conns {
            let proto = match c.protocol {
                Transport::Tcp => PROTO_TCP,
                Transport::Udp => PROTO_UDP,
                Transport::Sctp => PROTO_SCTP,
            };
            let j = ev.judge(&Packet {
                src: c.src,
                dst: c.dst,
                proto,
                port: Some(c.port),
            });
            if !j.disagreements.is_empty() {
                bail!(
                    "{} -> {}:{}/{}: {}",
                    c.src,
                    c.dst,
                    c.port,
                    c.protocol,
                    j.disagreements.join("; ")
                );
            }
            out.push(j.walk.allowed);
        }
        Ok(out)
    }
}

fn run(family: Family) {
    let cases = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance");
    let settings = RunSettings {
        family,
        sctp: true,
        enforced: true,
        verbose: false,
    };
    let build = |sc: &scenario::Scenario| -> Result<Built<OfflineCluster<ExplainJudge>>> {
        Ok(Built::Ready(OfflineCluster::new(
            sc.cluster_spec(family),
            ExplainJudge,
        )))
    };
    let mut out = Vec::new();
    let summary = run_scenarios(&[cases], &settings, build, &mut out).expect("cases readable");
    let text = String::from_utf8_lossy(&out);
    let failed: Vec<&str> = text.lines().filter(|l| !l.starts_with("PASS")).collect();
    println!("{family}: {}", summary.totals_line());
    assert!(summary.success(), "{family}:\n{}", failed.join("\n"));
    assert!(summary.passed >= 90, "{family}: {}", summary.totals_line());
}

#[test]
fn explain_agrees_with_every_expected_cell_ipv4() {
    run(Family::Ipv4);
}

#[test]
fn explain_agrees_with_every_expected_cell_ipv6() {
    run(Family::Ipv6);
}
