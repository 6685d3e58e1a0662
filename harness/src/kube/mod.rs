//! Conformance cases on a real cluster, through `kubectl`: the backend of
//! `cargo xtask kind e2e` (and of `palisade-conformance --kube`).
//!
//! Per case it owns the scenario's namespaces (created with their exact names, so
//! that `kubernetes.io/metadata.name` selectors in the cases mean what they say,
//! and marked with an annotation, never a label, so no selector sees the mark),
//! one pod per scenario pod running `palisade-pod serve` from the agent image and
//! pinned to a node with `nodeName`, and per pod a selectorless Service
//! `s-<ns>-<pod>` with an EndpointSlice naming that pod only, so relabelling a pod
//! never changes a Service's backends (as in the namespace harness).
//!
//! Probes run inside the source pod (`kubectl exec ... palisade-pod probe`, one
//! exec per source pod for all its targets), or, for `node/N`, in the agent's
//! hostNetwork pod on that node. After a step's writes the runner bumps an
//! annotation on one of the case's namespaces and waits until every agent's
//! `/ready` revision (the highest resourceVersion it has programmed) reaches that
//! write's resourceVersion. Watches of different resources are separate streams,
//! so cells that still differ are then re-probed for a bounded time, as the
//! upstream network policy e2e tests do.
//!
//! Files: `kubectl` runs kubectl and reads what it returns; `manifests`
//! renders the case's objects; `backend` creates and deletes one case's
//! objects; `case` drives a case for the conformance runner; `cni_check`
//! checks that the cluster's own CNI enforces no policy. This file holds the
//! entry points of a whole run.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::conformance::{run_scenarios, RunSettings, Summary};

mod backend;
mod case;
mod cni_check;
mod kubectl;
mod manifests;

pub use self::backend::{KubeCluster, KubeOptions};
pub use self::cni_check::{check_cni_does_not_enforce, CNI_CHECK_NAMESPACE};
pub use self::kubectl::{parse_nodes, pod_ip, Kubectl, KubectlError, Node};
pub use self::manifests::{
    endpointslice_manifest, labels_patch, namespace_manifest, pod_manifest, service_manifest,
    sync_policy_manifest, unfit_names, OWNED,
};
pub use crate::objects::policy_manifest;

/// The conformance cases under `paths` on the cluster `opts` names, with the
/// output of FORMAT.md.
pub fn run_kube_conformance(
    paths: &[PathBuf],
    settings: &RunSettings,
    opts: &KubeOptions,
    out: &mut dyn Write,
) -> Result<Summary> {
    let opts = KubeOptions {
        agents: settings.enforced,
        ..opts.clone()
    };
    let summary = run_scenarios(
        paths,
        settings,
        |sc| KubeCluster::build(&sc.cluster_spec(settings.family), &opts),
        out,
    );
    // Each case deletes its namespaces without waiting; whatever is left of
    // them (a case that failed half-built, a deletion still running) goes
    // now, and the run waits for it.
    if let Err(e) = delete_owned_namespaces(&opts) {
        eprintln!("warning: deleting the run's namespaces: {e:#}");
    }
    summary
}

/// Deletes every namespace a Palisade e2e run created (those with the
/// [`OWNED`] annotation), waiting until they are gone.
pub fn delete_owned_namespaces(opts: &KubeOptions) -> Result<Vec<String>> {
    let k = Kubectl::new(opts.context.clone());
    let list = k.json(&["get", "namespaces"])?;
    let owned: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["metadata"]["annotations"][OWNED] == "true")
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    if owned.is_empty() {
        return Ok(owned);
    }
    let timeout = format!("--timeout={}s", opts.timeout.as_secs());
    let mut args = vec![
        "delete",
        "namespace",
        "--ignore-not-found",
        "--wait=true",
        &timeout,
    ];
    args.extend(owned.iter().map(String::as_str));
    k.run(&args, None)?;
    Ok(owned)
}
