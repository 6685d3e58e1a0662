//! The conformance runner as a standalone binary, for places where `cargo xtask`
//! is not available (the `cargo xtask vm-test` guest), and for a real cluster
//! where Palisade is deployed (`--kube`). Same output and exit status as
//! `cargo xtask conformance` (tests/conformance/FORMAT.md).
use std::{path::PathBuf, process::ExitCode};

use palisade_harness::{
    kube::{run_kube_conformance, KubeOptions},
    run_conformance, sctp_supported, ConformanceOptions, Family, RunSettings, Topology,
};

const USAGE: &str = "usage: palisade-conformance [--family ipv4|ipv6] [--agent PATH] \
[--require-sctp] [--bridge] [--verbose] PATH...
       palisade-conformance --kube [--context CTX] [--image IMAGE] [--no-sctp] \
[--family ipv4|ipv6] [--verbose] PATH...

Runs the scenario files (or directories of them) on a network-namespace cluster
with the real agent on every node. --agent defaults to $PALISADE_AGENT.
--require-sctp fails at once when this kernel has no SCTP, instead of reporting
SCTP expectations as skipped. --bridge builds bridge-style nodes (pod veths
on a bridge, as the CNI bridge plugin and flannel do) instead of ptp ones.

With --kube, runs them on the cluster of kubectl's context CTX (default: the
current one), where Palisade runs as deploy/ installs it: pods from IMAGE (the
agent image, default palisade-agent:dev, which carries /palisade-pod), one
Service per pod, probes from inside the pods. --no-sctp reports SCTP
expectations as skipped (nodes without SCTP).";

fn main() -> ExitCode {
    let mut family = Family::Ipv4;
    let mut agent = None;
    let mut require_sctp = false;
    let mut verbose = false;
    let mut topology = Topology::Ptp;
    let mut paths = Vec::new();
    let mut kube = false;
    let mut kube_opts = KubeOptions::default();
    let mut sctp = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--family" => match args.next().as_deref() {
                Some("ipv4") => family = Family::Ipv4,
                Some("ipv6") => family = Family::Ipv6,
                other => return usage(&format!("--family {other:?}: expected ipv4 or ipv6")),
            },
            "--agent" => match args.next() {
                Some(p) => agent = Some(PathBuf::from(p)),
                None => return usage("--agent needs a path"),
            },
            "--require-sctp" => require_sctp = true,
            "--kube" => kube = true,
            "--context" => match args.next() {
                Some(c) => kube_opts.context = Some(c),
                None => return usage("--context needs a kubectl context name"),
            },
            "--image" => match args.next() {
                Some(i) => kube_opts.image = i,
                None => return usage("--image needs an image reference"),
            },
            "--no-sctp" => sctp = false,
            "--verbose" => verbose = true,
            "--bridge" => topology = Topology::Bridge,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            s if s.starts_with('-') => return usage(&format!("unknown option {s}")),
            _ => paths.push(PathBuf::from(a)),
        }
    }
    if kube {
        if paths.is_empty() {
            return usage("no scenario paths given");
        }
        let settings = RunSettings {
            family,
            sctp,
            enforced: true,
            verbose,
        };
        let stdout = std::io::stdout();
        return match run_kube_conformance(&paths, &settings, &kube_opts, &mut stdout.lock()) {
            Ok(summary) if summary.failed == 0 => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("palisade-conformance: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(agent) = agent.or_else(|| std::env::var_os("PALISADE_AGENT").map(PathBuf::from))
    else {
        return usage("no agent binary: pass --agent or set PALISADE_AGENT");
    };
    if paths.is_empty() {
        return usage("no scenario paths given");
    }
    if require_sctp && !sctp_supported() {
        eprintln!("palisade-conformance: --require-sctp, but this kernel cannot open an SCTP socket (sctp module not loaded?)");
        return ExitCode::FAILURE;
    }
    match run_conformance(ConformanceOptions {
        paths,
        family,
        agent: Some(agent),
        verbose,
        topology,
    }) {
        Ok(summary) if summary.failed == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("palisade-conformance: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("palisade-conformance: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}
