//! `kubectl palisade`: ask Palisade's own engine about a cluster. `explain`
//! gives the verdict of a connection and what decided it, from a directory of
//! manifests (what the agent's file source reads); `observe` shows the
//! agents' events (an agent's `/events` stream, or JSON lines from a file),
//! filtered; `diff` what a change would do to reachability before it is
//! applied; `advise` least-privilege policies from the observed connections. kubectl runs the binary as a plugin (`kubectl-palisade` on PATH).
mod advise;
mod diff;
mod explain;
mod observe;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kubectl-palisade",
    bin_name = "kubectl palisade",
    version,
    about = "Ask Palisade why a connection is allowed or denied, and watch what it drops",
    long_about = "Ask Palisade why a connection is allowed or denied, and watch what it drops.\n\n\
        `explain` runs the engine the agent runs (the same compilation into map entries and the \
        same lookup the datapath makes) on a directory of manifests, and shows the rules that \
        decided. `observe` prints the agents' deny (and, with --flow-events, allowed) events. \
        `diff` shows what a change would do to reachability before it is applied; `advise` writes \
        least-privilege NetworkPolicies from the observed connections."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The verdict of a connection: egress at the source, ingress at the
    /// destination, and the rules that decided each.
    Explain(explain::Args),
    /// The agents' events, filtered: from an agent's /events stream or from
    /// JSON lines (a file, or `-` for stdin).
    Observe(Box<observe::Args>),
    /// What a change (objects to apply or delete) would do to reachability,
    /// before it is applied; with --flows, which observed connections it
    /// would block.
    Diff(diff::Args),
    /// Least-privilege NetworkPolicies for a namespace from its observed
    /// allowed connections (the agents' --flow-events).
    Advise(advise::Args),
}

/// Where the objects come from: a directory of manifests, else the cluster
/// of the kubeconfig.
#[derive(clap::Args, Clone, Debug)]
pub struct Source {
    /// A directory of YAML/JSON manifests, as the agent's file source reads it
    /// (Namespaces, Pods with spec.nodeName and status.podIPs, Services,
    /// EndpointSlices, NetworkPolicies, ClusterNetworkPolicies, Nodes).
    /// Without it: the cluster of the kubeconfig, listed now.
    #[arg(long, value_name = "DIR")]
    pub source_dir: Option<PathBuf>,
    #[command(flatten)]
    pub kube: kubectl_palisade::cluster::KubeArgs,
}

impl Source {
    /// The index of the objects, and those that could not be read.
    pub fn load(&self) -> anyhow::Result<(palisade_policy::ClusterIndex, Vec<String>)> {
        match &self.source_dir {
            Some(d) => kubectl_palisade::manifests::load(d),
            None => kubectl_palisade::cluster::load(&self.kube),
        }
    }
}

fn main() -> std::process::ExitCode {
    let (args, not) = match observe::split_not(std::env::args_os().collect()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("kubectl palisade: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    if !not.is_empty() && !matches!(cli.cmd, Cmd::Observe(_)) {
        eprintln!("kubectl palisade: --not is a filter of observe");
        return std::process::ExitCode::from(2);
    }
    let r = match cli.cmd {
        Cmd::Explain(a) => explain::run(&a),
        Cmd::Observe(mut a) => {
            a.not = not;
            observe::run(&a)
        }
        Cmd::Diff(a) => diff::run(&a),
        Cmd::Advise(a) => advise::run(&a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kubectl palisade: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
