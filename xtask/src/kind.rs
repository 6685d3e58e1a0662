//! `cargo xtask kind up|deploy|e2e|down`: a kind cluster running Palisade, and the
//! conformance scenarios run against it.
//!
//! Needs docker, kind and kubectl on PATH. None of this has run on the machines
//! this project is developed on (no Docker engine, no registry for kind's node
//! images); the manifests it applies are checked by agent/tests/deploy.rs, the
//! objects it creates per case and the pod tool by the harness's tests.
use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use palisade_harness::{
    kube::{check_cni_does_not_enforce, run_kube_conformance, KubeOptions, Kubectl},
    Family, RunSettings,
};

pub const CLUSTER: &str = "palisade";

fn context() -> String {
    format!("kind-{CLUSTER}")
}

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

fn cluster_exists() -> Result<bool> {
    let out = tool("kind")?
        .args(["get", "clusters"])
        .output()
        .context("running kind get clusters")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == CLUSTER))
}

pub fn up() -> Result<()> {
    if cluster_exists()? {
        eprintln!("kind cluster {CLUSTER} exists; not creating it again");
    } else {
        let config = crate::workspace_root().join("deploy/kind-config.yaml");
        check(
            tool("kind")?
                .args(["create", "cluster", "--name", CLUSTER, "--config"])
                .arg(config),
            "kind create cluster",
        )?;
    }
    // kind 0.24 and later run kube-network-policies beside kindnet, which
    // enforces NetworkPolicy itself; Palisade must be the only enforcer, or
    // every result would be that controller's. `deploy` proves it is gone.
    check(
        tool("kubectl")?.args([
            "--context",
            &context(),
            "-n",
            "kube-system",
            "delete",
            "daemonset",
            "kube-network-policies",
            "--ignore-not-found",
            "--wait=true",
        ]),
        "kubectl delete daemonset kube-network-policies",
    )
}

fn deployed(k: &Kubectl) -> Result<bool> {
    let out = k.run(
        &[
            "-n",
            "kube-system",
            "get",
            "daemonset",
            "palisade-agent",
            "--ignore-not-found",
            "-o",
            "name",
        ],
        None,
    )?;
    Ok(!out.trim().is_empty())
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
    let k = Kubectl::new(Some(context()));
    if deployed(&k)? {
        eprintln!(
            "palisade-agent is deployed already: the CNI check runs only before the first deploy"
        );
    } else {
        crate::step("kind: checking that the cluster's CNI does not enforce NetworkPolicy");
        let opts = KubeOptions {
            context: Some(context()),
            image: crate::image::IMAGE.into(),
            settle: Duration::from_secs(10),
            ..KubeOptions::default()
        };
        check_cni_does_not_enforce(&opts, Family::Ipv4)?;
        eprintln!("a deny-all policy blocked nothing without Palisade: good");
    }
    check(
        tool("kubectl")?
            .args(["--context", &context(), "apply", "-k"])
            .arg(crate::workspace_root().join("deploy")),
        "kubectl apply -k deploy/",
    )?;
    // A new image under the same tag: restart so every node runs it.
    check(
        tool("kubectl")?.args([
            "--context",
            &context(),
            "-n",
            "kube-system",
            "rollout",
            "restart",
            "ds/palisade-agent",
        ]),
        "kubectl rollout restart",
    )?;
    // Ready means every node's agent has programmed its first full state.
    check(
        tool("kubectl")?.args([
            "--context",
            &context(),
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

/// The conformance scenarios on the kind cluster (deployed first by the caller).
pub fn e2e(paths: &[PathBuf], family: &str, sctp: bool, settle: u64, verbose: bool) -> Result<()> {
    let family = match family {
        "ipv6" => Family::Ipv6,
        _ => Family::Ipv4,
    };
    crate::step("kind: conformance scenarios on the real cluster");
    let settings = RunSettings {
        family,
        sctp,
        enforced: true,
        verbose,
    };
    let opts = KubeOptions {
        context: Some(context()),
        image: crate::image::IMAGE.into(),
        settle: Duration::from_secs(settle),
        ..KubeOptions::default()
    };
    let stdout = std::io::stdout();
    let summary = run_kube_conformance(paths, &settings, &opts, &mut stdout.lock())?;
    if summary.failed > 0 {
        bail!("{} conformance case(s) failed on kind", summary.failed);
    }
    Ok(())
}

pub fn down() -> Result<()> {
    check(
        tool("kind")?.args(["delete", "cluster", "--name", CLUSTER]),
        "kind delete cluster",
    )
}
