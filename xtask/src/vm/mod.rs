//! `cargo xtask vm-test`: the datapath and attach tests on Debian kernels in qemu.
//!
//! For each kernel series: `apt-get download` the Debian kernel package (cached in
//! `~/.cache/palisade/vm/`), extract vmlinuz and the modules the tests need (with
//! their dependencies, read from each module's `.modinfo`), build a newc initramfs
//! holding `palisade-vm-init` as `/init`, the test binaries, `ip`/`tc` and the
//! shared libraries `ldd` names, boot it under `qemu-system-x86_64 -accel tcg`,
//! and read the serial console until the init's result marker, a panic or the
//! timeout. One summary table at the end; non-zero exit on any failure.
//!
//! This module owns the suites and the run; `host` the host's packages,
//! `kernel` the guest kernel and its modules, `initramfs` the archive, `guest`
//! the boot and the summary.
use std::{collections::BTreeMap, fs, path::PathBuf, process::Stdio, time::Duration};

use anyhow::{bail, Context, Result};

use super::{cache_dir, cargo, run, step};

mod guest;
mod host;
mod initramfs;
mod kernel;

use guest::{boot, print_summary, Outcome};
use host::ensure_host_packages;
use initramfs::build_initramfs;
use kernel::prepare_kernel;

/// Kernel series tested when no `--kernel` is given: what Debian bookworm ships
/// (6.1) and its security-updates 6.12 series (TCX).
pub const DEFAULT_KERNELS: &[&str] = &["6.1", "6.12"];

/// Conformance cases run in the guest by default (`--conformance subset`): the
/// three SCTP cases (NetworkPolicy and ClusterNetworkPolicy), which the host
/// kernel cannot run, and one case for each of deny,
/// selectors, Services and replies. Under software emulation every agent start
/// costs tens of seconds of verifier time, so the whole suite is opt-in.
const CONFORMANCE_SUBSET: &[&str] = &[
    "010-default-deny-ingress.yaml",
    "170-three-tier.yaml",
    "360-via-service-and-pod.yaml",
    "372-replies-pass-both-ways.yaml",
    "380-sctp-port.yaml",
    "385-sctp-no-ports.yaml",
    "650-cnp-sctp.yaml",
];

/// Test binaries of palisade-agent run in the guest, with their libtest arguments
/// (after `--include-ignored`, which every suite gets: their tests need root and
/// are `#[ignore]`d for plain `cargo test`). `cluster` is real traffic: the agent
/// on a namespace cluster, restarted under an open connection, in the kernel's
/// own attach mode and in netlink mode.
const SUITES: &[(&str, &[&str])] = &[
    ("datapath", &[]),
    ("parse", &[]),
    ("conntrack", &[]),
    // The packet fuzz against the model, on this kernel's verifier and helpers.
    ("fuzz", &["--nocapture"]),
    ("attach", &["--nocapture"]),
    ("cluster", &["--test-threads", "2"]),
    // Repairs in this kernel's attach mode (netlink TC before 6.6).
    (
        "lapses",
        &[
            "--test-threads",
            "2",
            "removed_pins",
            "deleted_netlink_filter",
            "second_agent",
        ],
    ),
    // An upgrade across a change of map layout, in this kernel's attach mode.
    ("upgrade", &[]),
];

pub struct Options {
    pub kernels: Vec<String>,
    /// `subset`, `all` or `none`.
    pub conformance: String,
    /// Scenario files and directories to run instead of `conformance`.
    pub paths: Vec<PathBuf>,
    /// Names of the suites to run; empty: all of them.
    pub suites: Vec<String>,
    pub timeout: Duration,
    pub verbose: bool,
}

pub fn vm_test(opts: Options) -> Result<()> {
    let kernels: Vec<String> = if opts.kernels.is_empty() {
        DEFAULT_KERNELS.iter().map(|s| s.to_string()).collect()
    } else {
        opts.kernels.clone()
    };
    for name in &opts.suites {
        if !SUITES.iter().any(|(n, _)| n == name) {
            let known: Vec<&str> = SUITES.iter().map(|(n, _)| *n).collect();
            bail!(
                "--suite {name}: no such suite (known: {})",
                known.join(", ")
            );
        }
    }
    ensure_host_packages()?;
    let vm_dir = cache_dir().join("vm");
    fs::create_dir_all(&vm_dir).context("creating ~/.cache/palisade/vm")?;

    step("vm-test: building the guest init and the test binaries");
    let init = build_init()?;
    // First: it builds the workspace's crates with the other layout, and the
    // test binaries and the agent below build them back.
    let other_layout = super::build_test_layout_agent()?;
    let mut suites = build_suites()?;
    if !opts.suites.is_empty() {
        suites.retain(|(name, _, _)| opts.suites.contains(name));
    }
    let mut extra = Vec::new();
    let cases = if opts.paths.is_empty() {
        conformance_cases(&opts.conformance)?
    } else {
        let found = palisade_harness::scenario::collect_files(&opts.paths)?;
        if found.is_empty() {
            bail!("no scenario files (*.yaml) in {:?}", opts.paths);
        }
        found
    };
    // The init exports PALISADE_AGENT=/palisade/bin/palisade-agent for the
    // cluster tests and the conformance runner, and
    // PALISADE_AGENT_TEST_LAYOUT for the upgrade test.
    let agent = super::build_agent()?;
    extra.push(("palisade/bin/palisade-agent".to_string(), agent));
    extra.push((
        "palisade/bin/palisade-agent-test-layout".to_string(),
        other_layout,
    ));
    if !cases.is_empty() {
        let runner = super::build_harness_bin("palisade-conformance")?;
        extra.push(("palisade/bin/palisade-conformance".to_string(), runner));
        let mut args = vec![
            "--agent".to_string(),
            "/palisade/bin/palisade-agent".to_string(),
            "--require-sctp".to_string(),
        ];
        for (i, case) in cases.iter().enumerate() {
            let name = case
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("case.yaml");
            // Numbered: files of one name from two directories stay apart.
            let guest = format!("palisade/conformance/{i:04}-{name}");
            args.push(format!("/{guest}"));
            extra.push((guest, case.clone()));
        }
        suites.push((
            "conformance".to_string(),
            PathBuf::from("/palisade/bin/palisade-conformance"),
            args,
        ));
    }

    let mut outcomes = Vec::new();
    for spec in &kernels {
        step(&format!("vm-test: kernel {spec}"));
        let kernel = match prepare_kernel(&vm_dir, spec) {
            Ok(k) => k,
            Err(e) => {
                outcomes.push(Outcome {
                    kernel: spec.clone(),
                    attach_mode: "-".into(),
                    passed: 0,
                    failed: 0,
                    ignored: 0,
                    secs: 0.0,
                    error: Some(format!("{e:#}")),
                    kernel_fault: false,
                    first_boot: None,
                });
                continue;
            }
        };
        let initrd = vm_dir.join(format!("initramfs-{}.cpio", kernel.release));
        build_initramfs(&initrd, &init, &suites, &extra, &kernel.modules)
            .with_context(|| format!("building {}", initrd.display()))?;
        eprintln!(
            "    booting {} ({} modules, initramfs {} MiB)",
            kernel.release,
            kernel.modules.len(),
            fs::metadata(&initrd).map(|m| m.len() >> 20).unwrap_or(0)
        );
        let first = boot(&kernel, &initrd, &opts);
        let outcome = if first.kernel_fault {
            // A guest kernel that panicked (a soft lockup panics, see
            // GUEST_CMDLINE) is booted once more. Its console is printed above
            // and the summary names the first boot's fault, so a lockup is
            // never passed silently; a second fault fails the run.
            eprintln!(
                "    {}: {} on the first boot; booting it once more",
                kernel.release,
                first.error.as_deref().unwrap_or("kernel fault")
            );
            let mut again = boot(&kernel, &initrd, &opts);
            again.first_boot = first.error;
            again
        } else {
            first
        };
        outcomes.push(outcome);
    }

    print_summary(&outcomes);
    let bad: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.error.is_some() || o.failed > 0)
        .map(|o| o.kernel.as_str())
        .collect();
    if !bad.is_empty() {
        bail!("vm-test failed on: {}", bad.join(", "));
    }
    Ok(())
}

fn build_init() -> Result<PathBuf> {
    run(
        cargo().args(["build", "--release", "-p", "palisade-vm-init"]),
        "building palisade-vm-init",
        "See the compiler output above.",
    )?;
    Ok(super::target_dir().join("release/palisade-vm-init"))
}

/// The scenario files `--conformance` asks for.
fn conformance_cases(which: &str) -> Result<Vec<PathBuf>> {
    let dir = super::workspace_root().join("tests/conformance");
    let mut all: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    all.sort();
    match which {
        "none" => Ok(Vec::new()),
        "all" => Ok(all),
        "subset" => CONFORMANCE_SUBSET
            .iter()
            .map(|name| {
                let p = dir.join(name);
                if p.exists() {
                    Ok(p)
                } else {
                    bail!("conformance subset names {name}, which is not in tests/conformance")
                }
            })
            .collect(),
        other => bail!("--conformance {other}: expected subset, all or none"),
    }
}

/// Build the agent's test binaries and return (suite name, executable, args).
fn build_suites() -> Result<Vec<(String, PathBuf, Vec<String>)>> {
    let mut cmd = cargo();
    cmd.args(["test", "--release", "-p", "palisade-agent", "--no-run"])
        .args(["--message-format", "json-render-diagnostics"]);
    for (name, _) in SUITES {
        cmd.args(["--test", name]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the agent's test binaries failed; see the compiler output above");
    }
    let mut exes = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) {
            exes.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    SUITES
        .iter()
        .map(|(name, args)| {
            let exe = exes
                .get(*name)
                .with_context(|| format!("cargo named no executable for test {name}"))?;
            let args = std::iter::once(&"--include-ignored")
                .chain(args.iter())
                .map(|s| s.to_string())
                .collect();
            Ok((name.to_string(), exe.clone(), args))
        })
        .collect()
}
