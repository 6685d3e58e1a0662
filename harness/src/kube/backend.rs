//! One conformance case on a real cluster, as the kube backend holds it: the
//! options of a run, the case's namespaces (claimed by exact name), pods,
//! Services and EndpointSlices, policies and node labels, created when the
//! case starts and deleted when it ends.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::kubectl::{parse_nodes, pod_ip, Kubectl, Node};
use super::manifests::{
    endpointslice_manifest, list, namespace_manifest, node_server_manifest, pod_manifest,
    service_manifest, sync_policy_manifest, unfit_names, NODE_SERVERS_NS, OWNED,
};
use crate::conformance::Built;
use crate::model::{pod_service_name, ClusterSpec, Family, LabelMap, PodPlan, PortPlan};

/// Where and how to run.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// `kubectl --context`; `None` uses the current context.
    pub context: Option<String>,
    /// The image with `/palisade-pod` (the agent image).
    pub image: String,
    /// Whether Palisade agents run (wait for their revisions, read their logs).
    /// Without them the run shows what the cluster's CNI alone enforces.
    pub agents: bool,
    /// Namespace and label selector of the agent pods.
    pub agent_namespace: String,
    pub agent_selector: String,
    /// The agents' readiness endpoint, on each node's loopback.
    pub agent_ready_addr: SocketAddr,
    /// How long cells that still differ are re-probed after a step.
    pub settle: Duration,
    /// Bound on pod start-up, namespace deletion and agent revisions.
    pub timeout: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            context: None,
            image: "palisade-agent:dev".into(),
            agents: true,
            agent_namespace: "kube-system".into(),
            agent_selector: "app.kubernetes.io/name=palisade-agent".into(),
            agent_ready_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            settle: Duration::from_secs(15),
            timeout: Duration::from_secs(180),
        }
    }
}

pub(super) struct PodState {
    pub(super) spec: PodPlan,
    pub(super) ip: IpAddr,
    /// ClusterIP of the pod's Service.
    pub(super) cluster_ip: IpAddr,
}

/// One case's objects on a real cluster; deleted (namespaces and all) on drop.
pub struct KubeCluster {
    pub(super) k: Kubectl,
    pub(super) opts: KubeOptions,
    pub(super) family: Family,
    pub(super) nodes: Vec<Node>,
    pub(super) namespaces: BTreeMap<String, LabelMap>,
    pub(super) pods: BTreeMap<String, PodState>,
    pub(super) policies: BTreeSet<(String, String)>,
    /// ClusterNetworkPolicies the case created (cluster-scoped: deleted when
    /// the case ends, unlike namespaced objects, which go with their namespace).
    pub(super) cluster_policies: BTreeSet<String>,
    /// Node labels the case added, by node name (removed when the case ends).
    pub(super) node_labels: BTreeMap<String, Vec<String>>,
    /// Ports the nodes serve themselves (hostNetwork servers), for `node/N`
    /// destinations.
    pub(super) node_ports: Vec<PortPlan>,
    pub(super) sync_seq: u64,
}

impl KubeCluster {
    /// Creates the case's namespaces, pods, Services and EndpointSlices and waits
    /// until every pod runs. A case with external hosts is skipped: a real
    /// cluster has no host outside every pod network that the run controls.
    pub fn build(spec: &ClusterSpec, opts: &KubeOptions) -> Result<Built<KubeCluster>> {
        if !spec.externals.is_empty() {
            return Ok(Built::Skip(
                "external hosts (@name) need a host outside every pod network, which a real cluster run does not have".into(),
            ));
        }
        if let Some(why) = unfit_names(spec) {
            return Ok(Built::Skip(why));
        }
        let k = Kubectl::new(opts.context.clone());
        let nodes = parse_nodes(&k.json(&["get", "nodes"])?)?;
        if nodes.len() < spec.nodes.max(1) {
            // Wrapping would put "other node" pods on one node and test nothing.
            return Ok(Built::Skip(format!(
                "the case needs {} nodes and the cluster has {}",
                spec.nodes,
                nodes.len()
            )));
        }
        // A namespace of the case that exists and is not ours (kube-system, say)
        // is never touched: the case cannot run here.
        for ns in spec.namespaces.keys() {
            if let Some(false) = namespace_owned(&k, ns)? {
                return Ok(Built::Skip(format!(
                    "namespace {ns} exists and was not created by a Palisade e2e run (no {OWNED} annotation)"
                )));
            }
        }
        let mut c = KubeCluster {
            k,
            opts: opts.clone(),
            family: spec.family,
            nodes,
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            policies: Default::default(),
            cluster_policies: Default::default(),
            node_labels: BTreeMap::new(),
            node_ports: Vec::new(),
            sync_seq: 0,
        };
        for (n, labels) in &spec.node_labels {
            let name = c.node_name(*n)?;
            let mut args = vec![
                "label".to_string(),
                "node".to_string(),
                name.clone(),
                "--overwrite".to_string(),
            ];
            args.extend(labels.iter().map(|(k, v)| format!("{k}={v}")));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            c.k.run(&args, None)
                .with_context(|| format!("labelling node {name}"))?;
            c.node_labels.insert(name, labels.keys().cloned().collect());
        }
        for (ns, labels) in &spec.namespaces {
            c.claim_namespace(ns)?;
            c.namespaces.insert(ns.clone(), labels.clone());
        }
        let namespaces: Vec<Value> = spec
            .namespaces
            .iter()
            .map(|(ns, l)| namespace_manifest(ns, l))
            .collect();
        c.k.run(&["create", "-f", "-"], Some(&list(namespaces).to_string()))
            .context("creating the case's namespaces")?;
        // The ServiceAccount admission refuses pods until the namespace's
        // `default` ServiceAccount exists, which a controller creates shortly
        // after the namespace.
        for ns in spec.namespaces.keys() {
            c.wait_for_default_service_account(ns)?;
        }
        let mut items = Vec::new();
        if let Some(ns) = spec.namespaces.keys().next() {
            items.push(sync_policy_manifest(ns));
        }
        for p in &spec.pods {
            let node = c.node_name(p.node)?;
            items.push(pod_manifest(p, &node, &opts.image, spec.family));
            items.push(service_manifest(p, spec.family));
        }
        c.k.run(&["create", "-f", "-"], Some(&list(items).to_string()))
            .context("creating the case's pods and Services")?;
        let timeout = format!("--timeout={}s", opts.timeout.as_secs());
        for ns in spec.namespaces.keys() {
            if spec.pods.iter().any(|p| &p.namespace == ns) {
                c.k.run(
                    &[
                        "wait",
                        "-n",
                        ns,
                        "--for=condition=Ready",
                        "pod",
                        "--all",
                        &timeout,
                    ],
                    None,
                )
                .with_context(|| format!("waiting for the pods of namespace {ns}"))?;
            }
        }
        let mut slices = Vec::new();
        for p in &spec.pods {
            let node = c.node_name(p.node)?;
            let got = c.k.json(&["get", "pod", "-n", &p.namespace, &p.name])?;
            let ip = pod_ip(&got, spec.family).with_context(|| format!("pod {}", p.key()))?;
            let svc = pod_service_name(&p.namespace, &p.name);
            let got = c.k.json(&["get", "service", "-n", &p.namespace, &svc])?;
            let cluster_ip = got
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("Service {}/{svc} has no clusterIP", p.namespace))?;
            slices.push(endpointslice_manifest(p, ip, &node));
            c.pods.insert(
                p.key(),
                PodState {
                    spec: p.clone(),
                    ip,
                    cluster_ip,
                },
            );
        }
        if !slices.is_empty() {
            c.k.run(&["create", "-f", "-"], Some(&list(slices).to_string()))
                .context("creating the EndpointSlices")?;
        }
        if !spec.node_ports.is_empty() {
            c.start_node_servers(spec, &timeout)?;
        }
        Ok(Built::Ready(c))
    }

    /// Servers on the nodes themselves (`node_ports`): one hostNetwork pod per
    /// node of the case, in a namespace of their own deleted with the case.
    fn start_node_servers(&mut self, spec: &ClusterSpec, timeout: &str) -> Result<()> {
        let ns = NODE_SERVERS_NS;
        self.claim_namespace(ns)?;
        self.namespaces.insert(ns.to_string(), LabelMap::new());
        self.k
            .run(
                &["create", "-f", "-"],
                Some(&namespace_manifest(ns, &LabelMap::new()).to_string()),
            )
            .context("creating the node servers' namespace")?;
        self.wait_for_default_service_account(ns)?;
        let mut items = Vec::new();
        for n in 1..=spec.nodes {
            let node = self.node_name(n)?;
            items.push(node_server_manifest(
                n,
                &node,
                &spec.node_ports,
                &self.opts.image,
                spec.family,
            ));
        }
        self.k
            .run(&["create", "-f", "-"], Some(&list(items).to_string()))
            .context("creating the node servers")?;
        self.k
            .run(
                &[
                    "wait",
                    "-n",
                    ns,
                    "--for=condition=Ready",
                    "pod",
                    "--all",
                    timeout,
                ],
                None,
            )
            .context("waiting for the node servers")?;
        self.node_ports = spec.node_ports.clone();
        Ok(())
    }

    /// A namespace an earlier run left is deleted (and waited for) first.
    fn claim_namespace(&self, ns: &str) -> Result<()> {
        match namespace_owned(&self.k, ns)? {
            None => Ok(()),
            Some(true) => self.delete_namespaces(&[ns.to_string()], true),
            Some(false) => bail!("namespace {ns} exists and is not ours"),
        }
    }

    fn wait_for_default_service_account(&self, ns: &str) -> Result<()> {
        let deadline = Instant::now() + self.opts.timeout;
        loop {
            let found = self.k.run(
                &[
                    "get",
                    "serviceaccount",
                    "default",
                    "-n",
                    ns,
                    "--ignore-not-found",
                    "-o",
                    "name",
                ],
                None,
            )?;
            if !found.trim().is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "namespace {ns}: no `default` ServiceAccount after {:?} (is kube-controller-manager running?)",
                    self.opts.timeout
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn delete_namespaces(&self, names: &[String], wait: bool) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let timeout = format!("--timeout={}s", self.opts.timeout.as_secs());
        let wait = if wait { "--wait=true" } else { "--wait=false" };
        let mut args = vec!["delete", "namespace", "--ignore-not-found", wait, &timeout];
        args.extend(names.iter().map(String::as_str));
        self.k.run(&args, None)?;
        Ok(())
    }

    pub(super) fn node_name(&self, i: usize) -> Result<String> {
        let n = self.nodes.len();
        if i == 0 {
            bail!("node 0: scenario nodes are 1-based");
        }
        Ok(self.nodes[(i - 1) % n].name.clone())
    }

    pub(super) fn node_addr(&self, i: usize) -> Result<IpAddr> {
        let name = self.node_name(i)?;
        let node = self
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("no node {name}"))?;
        node.addresses
            .iter()
            .find(|a| Family::of(a) == self.family)
            .copied()
            .ok_or_else(|| anyhow!("node {name} has no {} InternalIP", self.family))
    }
}

/// Whether namespace `ns` exists (`None` if not) and carries our annotation.
fn namespace_owned(k: &Kubectl, ns: &str) -> Result<Option<bool>> {
    let found = k.run(
        &["get", "namespace", ns, "--ignore-not-found", "-o", "json"],
        None,
    )?;
    if found.trim().is_empty() {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(&found).context("kubectl get namespace: not JSON")?;
    Ok(Some(
        v.pointer(&format!(
            "/metadata/annotations/{}",
            OWNED.replace('/', "~1")
        ))
        .is_some(),
    ))
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        for name in std::mem::take(&mut self.cluster_policies) {
            let r = self.k.run(
                &[
                    "delete",
                    "clusternetworkpolicies.policy.networking.k8s.io",
                    "--ignore-not-found",
                    &name,
                ],
                None,
            );
            if let Err(e) = r {
                eprintln!("warning: deleting ClusterNetworkPolicy {name}: {e:#}");
            }
        }
        for (node, keys) in std::mem::take(&mut self.node_labels) {
            let mut args = vec!["label".to_string(), "node".to_string(), node.clone()];
            args.extend(keys.iter().map(|k| format!("{k}-")));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(e) = self.k.run(&args, None) {
                eprintln!("warning: removing the case's labels from node {node}: {e:#}");
            }
        }
        // Not waited for: the next case that needs a name waits in `claim_namespace`.
        let names: Vec<String> = self.namespaces.keys().cloned().collect();
        if let Err(e) = self.delete_namespaces(&names, false) {
            eprintln!("warning: deleting the case's namespaces {names:?}: {e:#}");
        }
    }
}
