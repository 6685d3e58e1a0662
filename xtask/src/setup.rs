//! `cargo xtask setup`: the Debian packages, the nightly's `rust-src`,
//! `bpf-linker` built against the nightly's own libLLVM, and bpffs; every
//! task that needs the toolchain runs it first.
use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::{bpf_linker_bin, cache_dir, have, output, run, step};

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

pub(crate) fn setup() -> Result<()> {
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
