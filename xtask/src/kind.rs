//! `cargo xtask kind up|deploy|down`: a kind cluster running Palisade.
//!
//! Needs docker and kind on PATH (kubectl for deploy). None of this has run on the
//! machines this project is developed on (no Docker engine, no registry); the
//! manifests it applies are checked by agent/tests/deploy.rs.
use std::process::Command;

use anyhow::{bail, Context, Result};

pub const CLUSTER: &str = "palisade";

fn tool(name: &str) -> Result<Command> {
    let found = Command::new(name)
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        bail!("`{name} version` failed: install {name} (and a running Docker engine) first");
    }
    Ok(Command::new(name))
}

fn check(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed (see above)");
    }
    Ok(())
}

pub fn up() -> Result<()> {
    let config = crate::workspace_root().join("deploy/kind-config.yaml");
    check(
        tool("kind")?
            .args(["create", "cluster", "--name", CLUSTER, "--config"])
            .arg(config),
        "kind create cluster",
    )
}

pub fn deploy() -> Result<()> {
    crate::image::image()?;
    check(
        tool("kind")?.args([
            "load",
            "docker-image",
            crate::image::IMAGE,
            "--name",
            CLUSTER,
        ]),
        "kind load docker-image",
    )?;
    let context = format!("kind-{CLUSTER}");
    check(
        tool("kubectl")?
            .args(["--context", &context, "apply", "-k"])
            .arg(crate::workspace_root().join("deploy")),
        "kubectl apply -k deploy/",
    )?;
    // Ready means every node's agent has programmed its first full state.
    check(
        tool("kubectl")?.args([
            "--context",
            &context,
            "-n",
            "kube-system",
            "rollout",
            "status",
            "ds/palisade-agent",
            "--timeout=300s",
        ]),
        "kubectl rollout status",
    )
}

pub fn down() -> Result<()> {
    check(
        tool("kind")?.args(["delete", "cluster", "--name", CLUSTER]),
        "kind delete cluster",
    )
}
