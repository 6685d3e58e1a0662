//! Project tasks: set-up, tests, the conformance runner and the demo.
//!
//! Every task that needs the toolchain runs `setup` first; setup is idempotent and
//! quick when everything is present, and names the failing step otherwise.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

mod bench;
mod builds;
mod demo;
mod image;
mod kind;
mod setup;
mod testing;
mod vm;

use builds::*;
use setup::setup;
use testing::{conformance, test};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Palisade project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need: Debian packages, nightly rust-src,
    /// bpf-linker (built against the nightly's own LLVM), and mount bpffs.
    Setup,
    /// Set up, then run everything CI runs (needs root): fmt, clippy, the unit,
    /// property, datapath, cluster and harness tests (the root-only ones are
    /// `#[ignore]`d for plain `cargo test`; here `--include-ignored` runs
    /// them), every benchmark in
    /// --quick mode (so their code cannot rot; numbers not judged), the
    /// conformance suite on ptp- and bridge-style nodes (IPv4) and on ptp-style
    /// nodes (IPv6), and the VM tests on
    /// Debian's 6.1 kernel in qemu (datapath, attach, a conformance subset with
    /// SCTP). About 45 minutes on 2 cores from a clean clone.
    Test {
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
    },
    /// Run conformance scenarios (tests/conformance/FORMAT.md) on a namespace cluster.
    Conformance {
        /// Address family of the cluster.
        #[arg(long, value_enum, default_value_t = FamilyArg::Ipv4)]
        family: FamilyArg,
        /// Bridge-style nodes (pod veths on a bridge, as the CNI bridge plugin
        /// and flannel build them) instead of ptp ones.
        #[arg(long)]
        bridge: bool,
        /// Scenario files or directories (every *.yaml below, sorted).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Set up, build a small cluster, and show Palisade enforcing policies step by step.
    Demo,
    /// Benchmarks that print numbers, ratios against a baseline of the same run,
    /// and write results/bench-<part>.json and a bar chart, results/bench-<part>.svg.
    /// `datapath`: ns/packet of the TC programs (BPF_PROG_TEST_RUN) with 10 to
    /// 100,000 prefixes against an empty program, and each program's instruction
    /// and stack budget. `conntrack`: whether a pod flooding new flows breaks
    /// other pods' established connections. `policy`: the engine on a
    /// generated cluster of 10,000 pods / 2,000 policies. `e2e`: iperf3 and
    /// connections/s between pods of a namespace cluster, no program vs
    /// iptables, nftables and Palisade with 10 to 10,000 rules. `control`: the
    /// agent on 10,000 pods / 2,000 policies / 110 local pods: change to
    /// /ready p50/p99, start-up, RSS, maps. `events`: a pod flooding a denied
    /// port: deny lines/s, agent CPU, allowed throughput. `all`: every part.
    Bench {
        #[arg(value_enum, default_value_t = BenchPart::All)]
        part: BenchPart,
        /// Tiny sizes, seconds per part (CI runs this so the code cannot rot).
        #[arg(long)]
        quick: bool,
        /// `e2e`: rounds of the whole sequence; figures are medians over them
        /// (default 2, 1 with --quick).
        #[arg(long)]
        rounds: Option<u32>,
    },
    /// Reliability figures (root): the agent killed (SIGKILL) and restarted 100
    /// times under traffic (connections broken, datagrams that reached a denied
    /// port, time to ready), 10,000 policy and label changes under traffic
    /// (false drops, leaks, change to enforced), 20 API server outages of 5 s
    /// under a kube-mode agent with changes made during each (nothing lost,
    /// every change enforced once it is back), then the packet fuzz with
    /// 1,000,000 frames. Table and results/bench-soak.json.
    Soak {
        /// 3 restarts, 200 changes, 3 outages of 2 s, 20,000 frames (CI runs
        /// this).
        #[arg(long)]
        quick: bool,
    },
    /// Build the release agent and its container image (deploy/Dockerfile, FROM
    /// scratch, host files only); without a Docker engine, stage the context and
    /// say so.
    Image,
    /// A kind cluster with Palisade. `up`: 1 control plane + 2 workers, with plain
    /// ptp pod networking instead of kindnet (which enforces NetworkPolicy itself). `deploy`: image, kind load, a
    /// check that the CNI alone enforces nothing (first deploy only), kubectl apply
    /// -k deploy/, wait for every agent's readiness. `e2e`: deploy, then the
    /// conformance scenarios on the real cluster (real pods, one Service per pod,
    /// probes from inside the pods), FORMAT.md's output. `down`: delete the
    /// cluster. Needs docker, kind and kubectl; not exercised on this project's
    /// machines, which have no Docker engine.
    Kind {
        #[arg(value_enum)]
        action: KindAction,
        /// e2e: scenario files or directories (default: tests/conformance).
        paths: Vec<PathBuf>,
        /// e2e: report SCTP expectations as skipped (nodes without SCTP).
        #[arg(long)]
        no_sctp: bool,
        /// e2e: seconds a differing cell is re-probed after the agents report a
        /// step programmed (watches of different resources arrive separately).
        #[arg(long, default_value_t = 15)]
        settle: u64,
        /// e2e: step timings and whole agent logs on failure.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Boot Debian kernels in qemu (tcg) and run the datapath and attach tests
    /// there; one summary table per kernel. Caches in ~/.cache/palisade/vm.
    VmTest {
        /// Kernel series or ABI (`6.1`, `6.12`, `6.1.0-56`); repeatable.
        /// Default: 6.1 and 6.12.
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Conformance cases to run in the guest: `subset` (both SCTP cases and
        /// four others), `all`, or `none`. Ignored when PATHs are given.
        #[arg(long, value_enum, default_value_t = VmConformance::Subset)]
        conformance: VmConformance,
        /// Scenario files or directories (every `*.yaml` below) to run in the
        /// guest instead of the suite's own cases: your own cases on other
        /// kernels.
        #[arg(value_name = "PATH")]
        paths: Vec<std::path::PathBuf>,
        /// Run only this test suite (datapath, parse, conntrack, fuzz, attach,
        /// cluster, lapses, upgrade); repeatable. Default: every suite.
        #[arg(long = "suite", value_name = "NAME")]
        suites: Vec<String>,
        /// Seconds a guest may run before it counts as hung.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Stream the whole guest console.
        #[arg(long, short)]
        verbose: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FamilyArg {
    Ipv4,
    Ipv6,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BenchPart {
    Datapath,
    Conntrack,
    Policy,
    E2e,
    Control,
    Events,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KindAction {
    Up,
    Deploy,
    E2e,
    Down,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum VmConformance {
    Subset,
    All,
    None,
}

/// The command-line name of a choice.
fn choice(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Test { no_lint } => test(no_lint),
        Cmd::Conformance {
            family,
            bridge,
            paths,
        } => {
            setup()?;
            let agent = build_agent()?;
            conformance(&agent, &choice(family), bridge, &paths)
        }
        Cmd::Demo => {
            setup()?;
            let agent = build_agent()?;
            let plugin = build_plugin()?;
            demo::run(&agent, &plugin)
        }
        Cmd::Soak { quick } => {
            setup()?;
            bench::soak(quick)
        }
        Cmd::Bench {
            part,
            quick,
            rounds,
        } => {
            setup()?;
            bench::bench(&choice(part), quick, rounds)
        }
        Cmd::Image => {
            setup()?;
            image::image()
        }
        Cmd::Kind {
            action,
            paths,
            no_sctp,
            settle,
            verbose,
        } => match action {
            KindAction::Up => kind::up(),
            KindAction::Deploy => {
                setup()?;
                kind::deploy()
            }
            KindAction::E2e => {
                setup()?;
                kind::deploy()?;
                let paths = if paths.is_empty() {
                    vec![workspace_root().join("tests/conformance")]
                } else {
                    paths
                };
                kind::e2e(&paths, !no_sctp, settle, verbose)
            }
            KindAction::Down => kind::down(),
        },
        Cmd::VmTest {
            kernels,
            conformance,
            paths,
            suites,
            timeout,
            verbose,
        } => {
            setup()?;
            vm::vm_test(vm::Options {
                kernels,
                conformance: choice(conformance),
                paths,
                suites,
                timeout: std::time::Duration::from_secs(timeout),
                verbose,
            })
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` (relative to the
/// workspace when relative), else `<workspace>/target`.
pub(crate) fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    }
}

fn cache_dir() -> PathBuf {
    let home = env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/palisade")
}

fn bpf_linker_bin() -> PathBuf {
    cache_dir().join("bpf-linker/bin")
}

/// PATH with the cached bpf-linker first.
fn path_env() -> String {
    let old = env::var("PATH").unwrap_or_default();
    format!("{}:{old}", bpf_linker_bin().display())
}

fn step(name: &str) {
    eprintln!("==> {name}");
}

fn run(cmd: &mut Command, what: &str, hint: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not start {cmd:?}. {hint}"))?;
    if !status.success() {
        bail!("{what} failed ({status}). {hint}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where a host program is: `PATH`, then the sbin directories (not on a
/// non-root user's PATH on Debian).
pub(crate) fn find_tool(name: &str) -> Result<PathBuf> {
    let path = env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found.with_context(|| format!("{name} not found on this machine (PATH, /usr/sbin, /sbin)"))
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn cargo() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.env("PATH", path_env()).current_dir(workspace_root());
    c
}
