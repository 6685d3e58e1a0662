//! Project tasks: set-up, tests, the conformance runner and the demo.
//!
//! Every task that needs the toolchain runs `setup` first; setup is idempotent and
//! quick when everything is present, and names the failing step otherwise.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

mod bench;
mod demo;
mod image;
mod kind;
mod vm;

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
    /// SCTP). About 25 minutes on 2 cores from a clean clone.
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
    /// (false drops, leaks, change to enforced), then the packet fuzz with
    /// 1,000,000 frames. Table and results/bench-soak.json.
    Soak {
        /// 3 restarts, 200 changes, 20,000 frames (CI runs this).
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

const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("bpftool", "bpftool"),
    ("iptables", "iptables"),
    ("nft", "nftables"),
    ("iperf3", "iperf3"),
    // The harness's agent-launch tests run a stand-in agent written in Python.
    ("python3", "python3"),
    // A real Prometheus server scrapes the agent in the metrics test.
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    // The plugin test runs `kubectl palisade` through kubectl's plugin lookup.
    ("kubectl", "kubernetes-client"),
];

fn setup() -> Result<()> {
    step("setup: Debian packages");
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(bin, _)| !have(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        let hint = "Run as root on Debian with the package archive reachable.";
        run(
            Command::new("apt-get").args(["update", "-qq"]),
            "apt-get update",
            hint,
        )?;
        run(
            Command::new("apt-get")
                .args(["install", "-y", "-qq"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            &format!("apt-get install {}", missing.join(" ")),
            hint,
        )?;
    }

    step("setup: nightly rust-src");
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .map(|s| PathBuf::from(s.trim()))
        .context("setup: `rustc +nightly` not found. Install a nightly toolchain: rustup toolchain install nightly")?;
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        run(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
            "rustup component add rust-src",
            "rustup needs to reach the Rust distribution server.",
        )?;
    }

    step("setup: bpf-linker");
    let llvm_so = std::fs::read_dir(sysroot.join("lib"))
        .context("setup: reading the nightly sysroot")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so"))
        .context("setup: the nightly toolchain ships no libLLVM.so; bpf-linker cannot be linked against it")?;
    let prefix = cache_dir().join("rust-llvm");
    std::fs::create_dir_all(prefix.join("lib")).context("setup: creating the LLVM link dir")?;
    for link in ["libLLVM.so", llvm_so.as_str()] {
        let dst = prefix.join("lib").join(link);
        let _ = std::fs::remove_file(&dst);
        std::os::unix::fs::symlink(sysroot.join("lib").join(&llvm_so), &dst)
            .with_context(|| format!("setup: linking {}", dst.display()))?;
    }
    let linker = bpf_linker_bin().join("bpf-linker");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        eprintln!("    building bpf-linker against {llvm_so} (about 3 minutes)");
        run(
            Command::new("cargo")
                .args([
                    "+nightly",
                    "install",
                    "bpf-linker",
                    "--version",
                    "0.13.0",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                    "--force",
                    "--root",
                ])
                .arg(cache_dir().join("bpf-linker"))
                .env("LLVM_PREFIX", &prefix),
            "building bpf-linker",
            "See TOOLCHAIN notes in README: needs nightly with libLLVM 22 and crates.io.",
        )?;
    }

    step("setup: bpffs");
    let mounted = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"));
    if !mounted {
        run(
            Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]),
            "mounting bpffs at /sys/fs/bpf",
            "Run as root.",
        )?;
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.env("PATH", path_env()).current_dir(workspace_root());
    c
}

fn build_agent() -> Result<PathBuf> {
    step("build: palisade-agent");
    run(
        cargo().args(["build", "--release", "-p", "palisade-agent"]),
        "cargo build -p palisade-agent",
        "Run `cargo xtask setup` and read its output.",
    )?;
    Ok(target_dir().join("release/palisade-agent"))
}

/// The agent built with another map layout (`PALISADE_TEST_LAYOUT=1`, see
/// `common/build.rs`), copied to `<target>/test-layout/`: the agent the
/// upgrade test replaces. Built in the shared target directory, so only the
/// workspace's crates are compiled again (twice: `build_agent` after this
/// builds the normal layout back).
fn build_test_layout_agent() -> Result<PathBuf> {
    step("build: palisade-agent with another map layout (for the upgrade test)");
    run(
        cargo()
            .args([
                "build",
                "--release",
                "-p",
                "palisade-agent",
                "--bin",
                "palisade-agent",
            ])
            .env("PALISADE_TEST_LAYOUT", "1"),
        "cargo build -p palisade-agent (test layout)",
        "See the compiler output above.",
    )?;
    let dir = target_dir().join("test-layout");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let to = dir.join("palisade-agent");
    let from = target_dir().join("release/palisade-agent");
    fs::copy(&from, &to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(to)
}

/// `kubectl-palisade`, the kubectl plugin.
fn build_plugin() -> Result<PathBuf> {
    step("build: kubectl-palisade");
    run(
        cargo().args(["build", "--release", "-p", "kubectl-palisade"]),
        "cargo build -p kubectl-palisade",
        "Run `cargo xtask setup` and read its output.",
    )?;
    Ok(target_dir().join("release/kubectl-palisade"))
}

/// `palisade-cni`, the chained CNI plugin the image carries.
fn build_cni() -> Result<PathBuf> {
    step("build: palisade-cni");
    run(
        cargo().args(["build", "--release", "-p", "palisade-cni"]),
        "cargo build -p palisade-cni",
        "See the compiler output above.",
    )?;
    Ok(target_dir().join("release/palisade-cni"))
}

/// `palisade-pod`, which the image carries for the pods of `kind e2e`.
fn build_pod_tool() -> Result<PathBuf> {
    step("build: palisade-pod");
    build_harness_bin("palisade-pod")
}

/// A release binary of the harness crate (`palisade-pod`, `palisade-conformance`).
fn build_harness_bin(name: &str) -> Result<PathBuf> {
    run(
        cargo().args([
            "build",
            "--release",
            "-p",
            "palisade-harness",
            "--bin",
            name,
        ]),
        &format!("cargo build --bin {name}"),
        "See the compiler output above.",
    )?;
    Ok(target_dir().join("release").join(name))
}

fn test(no_lint: bool) -> Result<()> {
    setup()?;
    if unsafe { libc_geteuid() } != 0 {
        bail!("the test suite needs root (BPF, network namespaces): run `sudo cargo xtask test`");
    }
    if !no_lint {
        step("lint: cargo fmt --check");
        run(
            cargo().args(["fmt", "--all", "--", "--check"]),
            "cargo fmt --check",
            "Run `cargo fmt --all`.",
        )?;
        step("lint: cargo clippy");
        run(
            cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]),
            "cargo clippy",
            "Fix the warnings above.",
        )?;
    }
    let other_layout = build_test_layout_agent()?;
    let agent = build_agent()?;
    step("test: unit, property, datapath and harness tests");
    // The tests that need root (BPF, network namespaces) are `#[ignore]`d, so
    // that plain `cargo test` passes without root and lists them; here they run.
    run(
        cargo()
            .args([
                "test",
                "--release",
                "--workspace",
                "--exclude",
                "palisade-ebpf",
                "--",
                "--include-ignored",
            ])
            .env("PALISADE_AGENT", &agent)
            .env("PALISADE_AGENT_TEST_LAYOUT", &other_layout),
        "cargo test",
        "See the failing test above.",
    )?;
    step("test: benchmarks in --quick mode (numbers are not judged)");
    bench::bench("all", true, None)?;
    step("test: soak in --quick mode");
    bench::soak(true)?;
    step("test: conformance suite");
    conformance(
        &agent,
        "ipv4",
        false,
        &[workspace_root().join("tests/conformance")],
    )?;
    step("test: conformance suite on bridge-style nodes (CNI bridge plugin, flannel)");
    conformance(
        &agent,
        "ipv4",
        true,
        &[workspace_root().join("tests/conformance")],
    )?;
    step("test: conformance suite, IPv6");
    conformance(
        &agent,
        "ipv6",
        false,
        &[workspace_root().join("tests/conformance")],
    )?;
    step("test: VM tests (Debian 6.1 kernel in qemu: datapath, attach, conformance subset with SCTP)");
    vm::vm_test(vm::Options {
        kernels: vec!["6.1".into()],
        conformance: "subset".into(),
        paths: Vec::new(),
        suites: Vec::new(),
        timeout: std::time::Duration::from_secs(1200),
        verbose: false,
    })?;
    let left = output(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    let ours: Vec<&str> = left.lines().filter(|l| l.starts_with("pal-")).collect();
    if !ours.is_empty() {
        bail!("tests left network namespaces behind: {ours:?}");
    }
    eprintln!("==> all tests passed");
    Ok(())
}

fn conformance(agent: &Path, family: &str, bridge: bool, paths: &[PathBuf]) -> Result<()> {
    let family = match family {
        "ipv4" => palisade_harness::Family::Ipv4,
        "ipv6" => palisade_harness::Family::Ipv6,
        other => bail!("--family {other}: expected ipv4 or ipv6"),
    };
    let summary = palisade_harness::run_conformance(palisade_harness::ConformanceOptions {
        paths: paths.to_vec(),
        family,
        agent: Some(agent.to_path_buf()),
        verbose: env::var_os("PALISADE_VERBOSE").is_some(),
        topology: if bridge {
            palisade_harness::Topology::Bridge
        } else {
            palisade_harness::Topology::Ptp
        },
    })?;
    if summary.failed > 0 {
        bail!("{} conformance case(s) failed", summary.failed);
    }
    Ok(())
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
