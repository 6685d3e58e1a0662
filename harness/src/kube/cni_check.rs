//! The check that a cluster's own CNI does not enforce NetworkPolicy, run
//! before Palisade is deployed so that results on that cluster are
//! Palisade's.

use anyhow::{bail, Result};
use serde_json::json;

use super::backend::{KubeCluster, KubeOptions};
use crate::conformance::{Built, CaseCluster};
use crate::matrix::{Peer, Probe, Via};
use crate::model::{ClusterSpec, Family, LabelMap, PodPlan, PortPlan, Transport};
use crate::probe::Outcome;

/// The namespace of [`check_cni_does_not_enforce`].
pub const CNI_CHECK_NAMESPACE: &str = "palisade-cni-check";

/// Proves that the cluster's own CNI does not enforce NetworkPolicy, before
/// Palisade is deployed (with it deployed, the check means nothing): two pods on
/// two nodes reach each other, then a deny-all policy is applied and they must
/// still reach each other after `opts.settle`. Otherwise every Palisade result on
/// this cluster would be the CNI's.
pub fn check_cni_does_not_enforce(opts: &KubeOptions, family: Family) -> Result<()> {
    let ns = CNI_CHECK_NAMESPACE.to_string();
    let pod = |name: &str, node: usize| PodPlan {
        namespace: ns.clone(),
        name: name.into(),
        labels: [("pod".to_string(), name.to_string())].into(),
        node,
        ports: vec![PortPlan::new(80, Transport::Tcp).named("http")],
    };
    let spec = ClusterSpec {
        family,
        nodes: 2,
        namespaces: [(ns.clone(), LabelMap::new())].into(),
        pods: vec![pod("a", 1), pod("b", 2)],
        externals: Vec::new(),
        node_labels: Default::default(),
        node_ports: Vec::new(),
    };
    let opts = KubeOptions {
        agents: false,
        ..opts.clone()
    };
    let Built::Ready(mut c) = KubeCluster::build(&spec, &opts)? else {
        bail!("the CNI check cluster has no externals and cannot be skipped");
    };
    let probes: Vec<Probe> = [("a", "b"), ("b", "a")]
        .iter()
        .map(|(f, t)| Probe {
            from: Peer::Pod(format!("{ns}/{f}")),
            to: Peer::Pod(format!("{ns}/{t}")),
            port: 80,
            protocol: Transport::Tcp,
            via: Via::Pod,
        })
        .collect();
    let before = c.probe(&probes, &[Outcome::Reachable, Outcome::Reachable])?;
    if before.iter().any(|o| *o != Outcome::Reachable) {
        bail!("CNI check: pods {ns}/a and {ns}/b on two nodes cannot reach each other with no policy at all ({before:?})");
    }
    c.apply_policy(&json!({
        "metadata": {"namespace": ns, "name": "deny-all"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }))?;
    // Give an enforcing CNI the whole settle time to show itself: the probes
    // "want" blocked, so they are repeated until then while traffic passes.
    let after = c.probe(&probes, &[Outcome::Blocked, Outcome::Blocked])?;
    if after.iter().any(|o| *o != Outcome::Reachable) {
        bail!(
            "the cluster's CNI enforces NetworkPolicy: a deny-all policy in {ns} blocked traffic \
             without Palisade ({after:?}); Palisade's results on this cluster would not be its own. \
             Use a CNI without policy enforcement (kind's default, kindnet, before v0.24; \
             see deploy/kind-config.yaml)"
        );
    }
    Ok(())
}
