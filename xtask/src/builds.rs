//! Release builds of the binaries the tasks run: the agent (and the build of
//! another map layout for the upgrade test), the plugins and the harness's
//! tools.
use std::{fs, path::PathBuf};

use anyhow::{Context, Result};

use crate::{cargo, run, step, target_dir};

/// `cargo build --release -p <package>`, whose binary has the package's name.
fn build_package(package: &str, hint: &str) -> Result<PathBuf> {
    step(&format!("build: {package}"));
    run(
        cargo().args(["build", "--release", "-p", package]),
        &format!("cargo build -p {package}"),
        hint,
    )?;
    Ok(target_dir().join("release").join(package))
}

pub(crate) fn build_agent() -> Result<PathBuf> {
    build_package(
        "palisade-agent",
        "Run `cargo xtask setup` and read its output.",
    )
}

/// The agent built with another map layout (`PALISADE_TEST_LAYOUT=1`, see
/// `common/build.rs`), copied to `<target>/test-layout/`: the agent the
/// upgrade test replaces. Built in the shared target directory, so only the
/// workspace's crates are compiled again (twice: `build_agent` after this
/// builds the normal layout back).
pub(crate) fn build_test_layout_agent() -> Result<PathBuf> {
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
pub(crate) fn build_plugin() -> Result<PathBuf> {
    build_package(
        "kubectl-palisade",
        "Run `cargo xtask setup` and read its output.",
    )
}

/// `palisade-cni`, the chained CNI plugin the image carries.
pub(crate) fn build_cni() -> Result<PathBuf> {
    build_package("palisade-cni", "See the compiler output above.")
}

/// `palisade-pod`, which the image carries for the pods of `kind e2e`.
pub(crate) fn build_pod_tool() -> Result<PathBuf> {
    step("build: palisade-pod");
    build_harness_bin("palisade-pod")
}

/// A release binary of the harness crate (`palisade-pod`, `palisade-conformance`).
pub(crate) fn build_harness_bin(name: &str) -> Result<PathBuf> {
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
