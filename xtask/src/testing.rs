//! `cargo xtask test`: lints, every test crate (the root-only tests
//! included), the conformance suite on both topologies and families, the
//! quick benchmarks and soak, and the VM tests; then the check that nothing
//! was left behind.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Result};

use crate::{bench, builds::*, cargo, output, run, setup::setup, step, vm, workspace_root};

pub(crate) fn test(no_lint: bool) -> Result<()> {
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

pub(crate) fn conformance(
    agent: &Path,
    family: &str,
    bridge: bool,
    paths: &[PathBuf],
) -> Result<()> {
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
