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
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::agent::Readiness;
use crate::conformance::{run_scenarios, Built, CaseCluster, RunSettings, Summary};
use crate::matrix::{Peer, Probe, Via};
use crate::model::{pod_service_name, ClusterSpec, Family, LabelMap, PodPlan, PortPlan, Transport};
use crate::podtool::{format_target, parse_results};
use crate::probe::{scatter, Outcome};
use crate::scenario::PolicyRef;

/// The annotation that marks what a run created (a label could be selected).
pub const OWNED: &str = "palisade.dev/e2e";
/// The annotation bumped after each step, whose resourceVersion agents must reach.
const SYNC_MARK: &str = "palisade.dev/e2e-sync";
/// The NetworkPolicy whose annotation marks a step on the policy stream. It
/// selects no pod (no pod has its label), so it changes no verdict.
const SYNC_POLICY: &str = "palisade-e2e-sync";
/// The container of the case pods.
const CONTAINER: &str = "serve";
/// Where `palisade-pod` lives in the image.
const POD_TOOL: &str = "/palisade-pod";

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

/// `kubectl` with the chosen context.
#[derive(Clone, Debug)]
pub struct Kubectl {
    context: Option<String>,
}

impl Kubectl {
    pub fn new(context: Option<String>) -> Self {
        Kubectl { context }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        if let Some(ctx) = &self.context {
            c.args(["--context", ctx]);
        }
        c.args(args);
        c
    }

    /// Runs kubectl and returns stdout; an error names the command and carries
    /// kubectl's own message.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut c = self.command(args);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .context("running kubectl (is it installed and on PATH?)")?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .context("writing kubectl's input")?;
        }
        let out = child.wait_with_output().context("waiting for kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let text = self.run(&a, None)?;
        serde_json::from_str(&text).with_context(|| format!("kubectl {}: not JSON", args.join(" ")))
    }
}

/// A node of the real cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub control_plane: bool,
    /// `spec.podCIDR`, once the controller manager has assigned one.
    pub pod_cidr: Option<String>,
}

/// Nodes from `kubectl get nodes -o json`, workers first (sorted by name), then
/// control-plane nodes: scenario node i is the i-th of this list (wrapping), so
/// two-node cases land on two workers where there are two.
pub fn parse_nodes(list: &Value) -> Result<Vec<Node>> {
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("node list has no items"))?;
    let mut nodes = Vec::new();
    for n in items {
        let name = n
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("a node without metadata.name"))?
            .to_string();
        let control_plane = n
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .is_some_and(|l| l.contains_key("node-role.kubernetes.io/control-plane"));
        let addresses = n
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
                    .filter_map(|a| a.get("address").and_then(Value::as_str)?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let pod_cidr = n
            .pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .map(str::to_string);
        nodes.push(Node {
            name,
            addresses,
            control_plane,
            pod_cidr,
        });
    }
    nodes.sort_by(|a, b| (a.control_plane, &a.name).cmp(&(b.control_plane, &b.name)));
    Ok(nodes)
}

/// The Namespace to create.
pub fn namespace_manifest(name: &str, labels: &LabelMap) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels, "annotations": {OWNED: "true"}},
    })
}

/// The Pod of a scenario pod: `palisade-pod serve` on its ports, pinned to `node`.
pub fn pod_manifest(p: &PodPlan, node: &str, image: &str, family: Family) -> Value {
    let mut command = vec![
        POD_TOOL.to_string(),
        "serve".into(),
        "--family".into(),
        family.as_str().into(),
        "--identity".into(),
        p.key(),
    ];
    command.extend(
        p.ports
            .iter()
            .map(|port| format!("{}/{}", port.port, port.protocol)),
    );
    let ports = crate::objects::container_ports(p);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": p.namespace,
            "name": p.name,
            "labels": p.labels,
            "annotations": {OWNED: "true"},
        },
        "spec": {
            // Placement is part of the case (same node / other node).
            "nodeName": node,
            "tolerations": [{"operator": "Exists"}],
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": CONTAINER,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": command,
                "ports": ports,
            }],
        },
    })
}

/// The ports of a pod's Service: one per service port and protocol.
fn service_ports(p: &PodPlan) -> impl Iterator<Item = &PortPlan> {
    let mut seen = std::collections::BTreeSet::new();
    p.ports
        .iter()
        .filter(move |port| seen.insert((port.service_port, port.protocol)))
}

/// The selectorless Service `s-<ns>-<pod>` of a pod, every port it serves.
pub fn service_manifest(p: &PodPlan, family: Family) -> Value {
    let ports: Vec<Value> = service_ports(p)
        .map(|port| {
            json!({
                "name": port.service_port_name(),
                "port": port.service_port,
                "targetPort": port.port,
                "protocol": port.protocol.as_str(),
            })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "namespace": p.namespace,
            "name": pod_service_name(&p.namespace, &p.name),
            "annotations": {OWNED: "true"},
        },
        "spec": {
            "type": "ClusterIP",
            "ipFamilyPolicy": "SingleStack",
            "ipFamilies": [family.k8s()],
            "ports": ports,
        },
    })
}

/// The EndpointSlice that backs a pod's Service with that pod alone.
pub fn endpointslice_manifest(p: &PodPlan, ip: IpAddr, node: &str) -> Value {
    let service = pod_service_name(&p.namespace, &p.name);
    let ports: Vec<Value> = service_ports(p)
        .map(|port| {
            json!({
                "name": port.service_port_name(),
                "port": port.port,
                "protocol": port.protocol.as_str(),
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": p.namespace,
            "name": format!("{service}-e2e"),
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "palisade-e2e",
            },
            "annotations": {OWNED: "true"},
        },
        "addressType": Family::of(&ip).k8s(),
        "endpoints": [{
            "addresses": [ip.to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": node,
            "targetRef": {"kind": "Pod", "namespace": p.namespace, "name": p.name},
        }],
        "ports": ports,
    })
}

/// A merge patch that makes an object's labels exactly `new` (keys only in
/// `old` become null, which a JSON merge patch deletes).
pub fn labels_patch(old: &LabelMap, new: &LabelMap) -> Value {
    let mut m = serde_json::Map::new();
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        m.insert(k.clone(), Value::Null);
    }
    for (k, v) in new {
        m.insert(k.clone(), Value::from(v.as_str()));
    }
    json!({"metadata": {"labels": m}})
}

pub use crate::objects::policy_manifest;

struct PodState {
    spec: PodPlan,
    ip: IpAddr,
    /// ClusterIP of the pod's Service.
    cluster_ip: IpAddr,
}

/// One case's objects on a real cluster; deleted (namespaces and all) on drop.
pub struct KubeCluster {
    k: Kubectl,
    opts: KubeOptions,
    family: Family,
    nodes: Vec<Node>,
    namespaces: BTreeMap<String, LabelMap>,
    pods: BTreeMap<String, PodState>,
    policies: std::collections::BTreeSet<(String, String)>,
    /// ClusterNetworkPolicies the case created (cluster-scoped: deleted when
    /// the case ends, unlike namespaced objects, which go with their namespace).
    cluster_policies: std::collections::BTreeSet<String>,
    /// Node labels the case added, by node name (removed when the case ends).
    node_labels: BTreeMap<String, Vec<String>>,
    sync_seq: u64,
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
        if !spec.node_ports.is_empty() {
            return Ok(Built::Skip(
                "node_ports (servers on the nodes themselves) are not run by the real-cluster backend yet".into(),
            ));
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
        Ok(Built::Ready(c))
    }

    /// A namespace an earlier run left is deleted (and waited for) first.
    fn claim_namespace(&self, ns: &str) -> Result<()> {
        match namespace_owned(&self.k, ns)? {
            None => Ok(()),
            Some(true) => self.delete_namespaces(&[ns.to_string()], true),
            Some(false) => bail!("namespace {ns} exists and is not ours"),
        }
    }

    /// Bumps the sync annotation on an object; returns its new resourceVersion.
    fn mark(&self, kind: &str, name: &str, ns: Option<&str>) -> Result<u64> {
        let mark = format!("{SYNC_MARK}={}", self.sync_seq);
        let mut args = vec!["annotate", kind, name, &mark, "--overwrite"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        args.extend(["-o", "jsonpath={.metadata.resourceVersion}"]);
        let text = self.k.run(&args, None)?;
        text.trim()
            .parse()
            .with_context(|| format!("{kind} {name}: resourceVersion {text:?} is not a number"))
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
        self.k.run(&args, None).map(|_| ())
    }

    fn node_name(&self, i: usize) -> Result<String> {
        let n = self.nodes.len();
        if i == 0 {
            bail!("node 0: scenario nodes are 1-based");
        }
        Ok(self.nodes[(i - 1) % n].name.clone())
    }

    fn node_addr(&self, i: usize) -> Result<IpAddr> {
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

    /// The agent pod on each node: (node, pod name).
    fn agent_pods(&self) -> Result<BTreeMap<String, String>> {
        let v = self.k.json(&[
            "get",
            "pods",
            "-n",
            &self.opts.agent_namespace,
            "-l",
            &self.opts.agent_selector,
        ])?;
        let mut out = BTreeMap::new();
        for p in v
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // A terminating agent (rolling update) is not the one that counts.
            if p.pointer("/metadata/deletionTimestamp").is_some()
                || p.pointer("/status/phase").and_then(Value::as_str) != Some("Running")
            {
                continue;
            }
            let (Some(name), Some(node)) = (
                p.pointer("/metadata/name").and_then(Value::as_str),
                p.pointer("/spec/nodeName").and_then(Value::as_str),
            ) else {
                continue;
            };
            out.insert(node.to_string(), name.to_string());
        }
        Ok(out)
    }

    fn readiness(&self, agent_pod: &str) -> Result<Readiness> {
        let addr = self.opts.agent_ready_addr.to_string();
        let mut c = self.k.command(&[
            "exec",
            "-n",
            &self.opts.agent_namespace,
            agent_pod,
            "-c",
            "agent",
            "--",
            POD_TOOL,
            "get",
            &addr,
            "/ready",
        ]);
        let out = c.output().context("running kubectl exec")?;
        // `get` exits 3 on a non-200 answer (503 before the first programming);
        // anything else is kubectl's or the tool's own failure.
        let status = match out.status.code() {
            Some(0) => 200,
            Some(3) => 503,
            _ => bail!(
                "agent pod {agent_pod}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        };
        Ok(Readiness::parse(
            status,
            &String::from_utf8_lossy(&out.stdout),
        ))
    }

    /// Where a probe goes (FORMAT.md: ClusterIP and service port, or the pod IP).
    fn target(&self, p: &Probe) -> Result<SocketAddr> {
        let Peer::Pod(key) = &p.to else {
            bail!("{}: only pods serve ports on a real cluster", p.to);
        };
        let st = self
            .pods
            .get(key)
            .ok_or_else(|| anyhow!("no pod {key} in the case"))?;
        if p.via == Via::Service {
            let port = st
                .spec
                .ports
                .iter()
                .find(|sp| sp.port == p.port && sp.protocol == p.protocol)
                .ok_or_else(|| anyhow!("pod {key} serves no {}/{}", p.protocol, p.port))?;
            Ok(SocketAddr::new(st.cluster_ip, port.service_port))
        } else {
            Ok(SocketAddr::new(st.ip, p.port))
        }
    }

    /// (namespace, pod, container) a probe from `from` runs in.
    fn source(
        &self,
        from: &Peer,
        agents: &BTreeMap<String, String>,
    ) -> Result<(String, String, String)> {
        match from {
            Peer::Pod(key) => {
                let st = self
                    .pods
                    .get(key)
                    .ok_or_else(|| anyhow!("no pod {key} in the case"))?;
                Ok((
                    st.spec.namespace.clone(),
                    st.spec.name.clone(),
                    CONTAINER.into(),
                ))
            }
            Peer::Node(i) => {
                let node = self.node_name(*i)?;
                let pod = agents.get(&node).ok_or_else(|| {
                    anyhow!(
                        "probes from node/{i} run in the agent pod on {node}, and there is none"
                    )
                })?;
                Ok((
                    self.opts.agent_namespace.clone(),
                    pod.clone(),
                    "agent".into(),
                ))
            }
            Peer::External(n) => bail!("@{n}: no external hosts on a real cluster"),
        }
    }

    /// One probe round: one `kubectl exec` per source, at most 8 at a time.
    fn probe_once(&self, probes: &[&Probe]) -> Result<Vec<Outcome>> {
        let agents = if probes.iter().any(|p| matches!(p.from, Peer::Node(_))) {
            self.agent_pods()?
        } else {
            BTreeMap::new()
        };
        let mut groups: BTreeMap<(String, String, String), Vec<(usize, String)>> = BTreeMap::new();
        for (i, p) in probes.iter().enumerate() {
            let src = self.source(&p.from, &agents)?;
            let to = self.target(p)?;
            groups
                .entry(src)
                .or_default()
                .push((i, format_target(to, p.protocol)));
        }
        let groups: Vec<_> = groups.into_iter().collect();
        let mut out = vec![Outcome::Blocked; probes.len()];
        for batch in groups.chunks(8) {
            scatter(&mut out, batch, |((ns, pod, container), targets)| {
                let words: Vec<String> = targets.iter().map(|(_, t)| t.clone()).collect();
                let mut args = vec![
                    "exec", "-n", ns, pod, "-c", container, "--", POD_TOOL, "probe",
                ];
                args.extend(words.iter().map(String::as_str));
                let text = self
                    .k
                    .run(&args, None)
                    .with_context(|| format!("probing from {ns}/{pod}"))?;
                let res = parse_results(&text, &words)?;
                Ok(targets.iter().map(|(i, _)| *i).zip(res).collect())
            })?;
        }
        Ok(out)
    }
}

/// The step marker policy of [`SYNC_POLICY`] in namespace `ns`.
pub fn sync_policy_manifest(ns: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": ns, "name": SYNC_POLICY, "annotations": {OWNED: "true"}},
        "spec": {
            "podSelector": {"matchLabels": {"palisade.dev/e2e-sync-marker": "selects-no-pod"}},
            "policyTypes": ["Ingress"],
        },
    })
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

/// Why the API server would refuse the case's names, if it would: namespace
/// names are RFC 1123 labels and Service names (`s-<ns>-<pod>`) RFC 1035 labels,
/// 63 characters at most. (The scenario format allows more.)
pub fn unfit_names(spec: &ClusterSpec) -> Option<String> {
    fn label(s: &str, first_letter: bool) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && (!first_letter || s.starts_with(|c: char| c.is_ascii_lowercase()))
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }
    if let Some(ns) = spec.namespaces.keys().find(|ns| !label(ns, false)) {
        return Some(format!("namespace name {ns:?} is not a DNS label"));
    }
    spec.pods.iter().find_map(|p| {
        let svc = pod_service_name(&p.namespace, &p.name);
        (!label(&svc, true)).then(|| {
            format!(
                "the Service name {svc:?} of pod {} is not an RFC 1035 label",
                p.key()
            )
        })
    })
}

/// A `v1` List of objects, for one `kubectl create -f -`.
fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// The pod's IP of `family` from its status.
pub fn pod_ip(pod: &Value, family: Family) -> Result<IpAddr> {
    pod.pointer("/status/podIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("ip").and_then(Value::as_str)?.parse::<IpAddr>().ok())
        .find(|ip| Family::of(ip) == family)
        .ok_or_else(|| anyhow!("no {family} address in status.podIPs"))
}

impl CaseCluster for KubeCluster {
    fn start_enforcement(&mut self) -> Result<()> {
        Ok(())
    }

    fn set_pod_labels(&mut self, pod: &str, labels: LabelMap) -> Result<()> {
        let st = self
            .pods
            .get_mut(pod)
            .ok_or_else(|| anyhow!("no pod {pod} in the case"))?;
        let patch = labels_patch(&st.spec.labels, &labels).to_string();
        self.k.run(
            &[
                "patch",
                "pod",
                "-n",
                &st.spec.namespace,
                &st.spec.name,
                "--type=merge",
                "-p",
                &patch,
            ],
            None,
        )?;
        st.spec.labels = labels;
        Ok(())
    }

    fn set_namespace_labels(&mut self, ns: &str, labels: LabelMap) -> Result<()> {
        let old = self
            .namespaces
            .get(ns)
            .ok_or_else(|| anyhow!("no namespace {ns} in the case"))?;
        // The API server owns kubernetes.io/metadata.name; never remove it.
        let mut new = labels.clone();
        new.insert("kubernetes.io/metadata.name".into(), ns.into());
        let patch = labels_patch(old, &new).to_string();
        self.k.run(
            &["patch", "namespace", ns, "--type=merge", "-p", &patch],
            None,
        )?;
        self.namespaces.insert(ns.to_string(), labels);
        Ok(())
    }

    fn delete_policy(&mut self, r: &PolicyRef) -> Result<()> {
        let (ns, name) = match r {
            PolicyRef::Namespaced(ns, name) => (ns, name),
            PolicyRef::Cluster(name) => {
                if !self.cluster_policies.remove(name) {
                    bail!("no ClusterNetworkPolicy {name} to delete");
                }
                return self
                    .k
                    .run(
                        &[
                            "delete",
                            "clusternetworkpolicies.policy.networking.k8s.io",
                            name,
                        ],
                        None,
                    )
                    .map(|_| ());
            }
        };
        if !self.policies.remove(&(ns.to_string(), name.to_string())) {
            bail!("no NetworkPolicy {ns}/{name} to delete");
        }
        self.k
            .run(&["delete", "networkpolicy", "-n", ns, name], None)
            .map(|_| ())
    }

    fn apply_policy(&mut self, manifest: &Value) -> Result<()> {
        if let PolicyRef::Cluster(_) = crate::scenario::policy_key(manifest)? {
            let (name, m) = crate::objects::cluster_policy_manifest(manifest)?;
            let verb = if self.cluster_policies.contains(&name) {
                "replace"
            } else {
                "create"
            };
            self.k
                .run(&[verb, "-f", "-"], Some(&m.to_string()))
                .with_context(|| format!("ClusterNetworkPolicy {name}"))?;
            self.cluster_policies.insert(name);
            return Ok(());
        }
        let (ns, name, m) = policy_manifest(manifest)?;
        // FORMAT.md: create, or replace by namespace/name (a PUT, not a merge).
        let verb = if self.policies.contains(&(ns.clone(), name.clone())) {
            "replace"
        } else {
            "create"
        };
        self.k
            .run(&[verb, "-f", "-"], Some(&m.to_string()))
            .with_context(|| format!("NetworkPolicy {ns}/{name}"))?;
        self.policies.insert((ns, name));
        Ok(())
    }

    fn address_of(&self, peer: &Peer) -> Result<IpAddr> {
        match peer {
            Peer::Pod(k) => self
                .pods
                .get(k)
                .map(|p| p.ip)
                .ok_or_else(|| anyhow!("no pod {k} in the case")),
            Peer::Node(i) => self.node_addr(*i),
            Peer::External(n) => bail!("@{n}: no external hosts on a real cluster"),
        }
    }

    fn sync(&mut self) -> Result<()> {
        if !self.opts.agents {
            return Ok(());
        }
        let Some(ns) = self.namespaces.keys().next().cloned() else {
            return Ok(());
        };
        // Each resource is its own watch stream: one marker write per stream
        // the steps change. Once an agent reports a stream at its marker, it has
        // programmed every earlier event of that stream (a stream is in order).
        self.sync_seq += 1;
        let mut want: BTreeMap<&str, u64> = BTreeMap::new();
        want.insert("namespaces", self.mark("namespace", &ns, None)?);
        want.insert(
            "networkpolicies",
            self.mark("networkpolicy", SYNC_POLICY, Some(&ns))?,
        );
        if let Some(p) = self.pods.values().next().map(|p| p.spec.clone()) {
            want.insert("pods", self.mark("pod", &p.name, Some(&p.namespace))?);
        }
        let reached = |r: &Readiness| -> bool {
            if r.revisions.is_empty() {
                // An agent that reports no per-resource revisions: its overall one.
                let max = want.values().copied().max().unwrap_or(0);
                return r
                    .revision
                    .as_deref()
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|v| v >= max);
            }
            want.iter()
                .all(|(res, rv)| r.revisions.get(*res).is_some_and(|have| have >= rv))
        };
        let deadline = Instant::now() + self.opts.timeout;
        let mut last = BTreeMap::new();
        loop {
            let agents = self.agent_pods()?;
            if agents.is_empty() {
                bail!(
                    "no agent pods ({} in {}): is Palisade deployed?",
                    self.opts.agent_selector,
                    self.opts.agent_namespace
                );
            }
            let mut pending = Vec::new();
            for (node, pod) in &agents {
                match self.readiness(pod) {
                    Ok(r) if r.ready && reached(&r) => {}
                    Ok(r) => {
                        last.insert(node.clone(), format!("HTTP {} {}", r.status, r.body));
                        pending.push(node.clone());
                    }
                    Err(e) => {
                        last.insert(node.clone(), format!("{e:#}"));
                        pending.push(node.clone());
                    }
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let node = &pending[0];
                bail!(
                    "the agent on {node} did not program the resourceVersions {want:?} within {:?}; last /ready: {}",
                    self.opts.timeout,
                    last.get(node).cloned().unwrap_or_default()
                );
            }
            // Polling a fact (the programmed revision), not guessing at timing.
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn probe(&mut self, probes: &[Probe], want: &[Outcome]) -> Result<Vec<Outcome>> {
        let deadline = Instant::now() + self.opts.settle;
        let mut out = vec![Outcome::Blocked; probes.len()];
        let mut pending: Vec<usize> = (0..probes.len()).collect();
        loop {
            let batch: Vec<&Probe> = pending.iter().map(|&i| &probes[i]).collect();
            let res = self.probe_once(&batch)?;
            for (&i, o) in pending.iter().zip(res) {
                out[i] = o;
            }
            pending.retain(|&i| want.get(i).is_some_and(|w| out[i] != *w));
            if pending.is_empty() || Instant::now() >= deadline {
                return Ok(out);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn logs(&self, verbose: bool) -> String {
        if !self.opts.agents {
            return String::new();
        }
        let tail = if verbose { "-1" } else { "30" };
        let tail = format!("--tail={tail}");
        match self.k.run(
            &[
                "logs",
                "-n",
                &self.opts.agent_namespace,
                "-l",
                &self.opts.agent_selector,
                "--prefix",
                &tail,
            ],
            None,
        ) {
            Ok(text) => format!("--- agent logs ({tail}) ---\n{text}"),
            Err(e) => format!("--- agent logs unavailable: {e:#}\n"),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_workers_first_then_control_plane_with_their_internal_ips() {
        let list = json!({"items": [
            {"metadata": {"name": "palisade-control-plane",
                          "labels": {"node-role.kubernetes.io/control-plane": ""}},
             "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"},
                                      {"type": "Hostname", "address": "palisade-control-plane"}]}},
            {"metadata": {"name": "palisade-worker2", "labels": {}},
             "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.4"},
                                      {"type": "InternalIP", "address": "fc00:f853::4"}]}},
            {"metadata": {"name": "palisade-worker"},
             "spec": {"podCIDR": "10.244.1.0/24"},
             "status": {"addresses": [{"type": "Hostname", "address": "palisade-worker"},
                                      {"type": "InternalIP", "address": "172.18.0.3"}]}},
        ]});
        let nodes = parse_nodes(&list).expect("parses");
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "palisade-worker",
                "palisade-worker2",
                "palisade-control-plane"
            ]
        );
        assert_eq!(nodes[1].addresses.len(), 2);
        assert_eq!(nodes[0].pod_cidr.as_deref(), Some("10.244.1.0/24"));
        assert_eq!(
            nodes[0].addresses,
            ["172.18.0.3".parse::<IpAddr>().expect("ip")],
            "InternalIP only"
        );
        assert_eq!(nodes[2].pod_cidr, None, "not assigned yet");
        assert!(nodes[2].control_plane && !nodes[0].control_plane);
        assert!(parse_nodes(&json!({})).is_err());
    }

    #[test]
    fn a_label_patch_replaces_the_whole_map() {
        let old: LabelMap = [("pod", "a"), ("gone", "1"), ("kept", "x")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let new: LabelMap = [("pod", "b"), ("kept", "x"), ("extra", "1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            labels_patch(&old, &new),
            json!({"metadata": {"labels": {"pod": "b", "gone": null, "kept": "x", "extra": "1"}}})
        );
    }

    #[test]
    fn policies_get_kind_and_api_version_and_need_a_namespace() {
        let (ns, name, m) =
            policy_manifest(&json!({"metadata": {"namespace": "x", "name": "deny"}, "spec": {}}))
                .expect("valid");
        assert_eq!((ns.as_str(), name.as_str()), ("x", "deny"));
        assert_eq!(m["kind"], "NetworkPolicy");
        assert_eq!(m["apiVersion"], "networking.k8s.io/v1");
        assert!(policy_manifest(&json!({"metadata": {"name": "deny"}})).is_err());
        assert!(policy_manifest(
            &json!({"kind": "Pod", "metadata": {"namespace": "x", "name": "p"}})
        )
        .is_err());
    }

    #[test]
    fn pod_ip_takes_the_run_family() {
        let pod = json!({"status": {"podIP": "10.244.1.5",
                                    "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00:10:244:1::5"}]}});
        assert_eq!(
            pod_ip(&pod, Family::Ipv6).expect("v6"),
            "fd00:10:244:1::5".parse::<IpAddr>().expect("ip")
        );
        assert!(pod_ip(&json!({"status": {}}), Family::Ipv4).is_err());
    }

    /// The pod runs `palisade-pod serve` with every port; the Service maps service
    /// ports to container ports and names them like the EndpointSlice does.
    #[test]
    fn pod_command_and_service_ports_follow_the_scenario() {
        let p = PodPlan {
            namespace: "x".into(),
            name: "a".into(),
            labels: [("pod".to_string(), "a".to_string())].into(),
            node: 2,
            ports: vec![
                PortPlan::new(80, Transport::Tcp).named("serve-80-tcp"),
                PortPlan::new(81, Transport::Udp).with_service_port(8081),
            ],
        };
        let pod = pod_manifest(&p, "w2", "img:1", Family::Ipv4);
        assert_eq!(
            pod["spec"]["containers"][0]["command"],
            json!([
                "/palisade-pod",
                "serve",
                "--family",
                "ipv4",
                "--identity",
                "x/a",
                "80/TCP",
                "81/UDP"
            ])
        );
        assert_eq!(pod["spec"]["nodeName"], "w2");
        assert_eq!(
            pod["metadata"]["labels"],
            json!({"pod": "a"}),
            "no label of ours"
        );
        let svc = service_manifest(&p, Family::Ipv4);
        assert_eq!(svc["metadata"]["name"], "s-x-a");
        assert!(
            svc["spec"].get("selector").is_none(),
            "backends come from our slice"
        );
        assert_eq!(svc["spec"]["ports"][1]["port"], 8081);
        assert_eq!(svc["spec"]["ports"][1]["targetPort"], 81);
        let slice = endpointslice_manifest(&p, "10.244.2.9".parse().expect("ip"), "w2");
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "s-x-a"
        );
        assert_eq!(slice["endpoints"][0]["addresses"], json!(["10.244.2.9"]));
        assert_eq!(slice["ports"][1]["port"], 81);
        assert_eq!(slice["ports"][1]["name"], svc["spec"]["ports"][1]["name"]);
    }

    /// Names the API server would refuse skip the case instead of failing it.
    #[test]
    fn names_the_api_server_refuses_are_found() {
        let spec = |ns: &str, pod: &str| ClusterSpec {
            family: Family::Ipv4,
            nodes: 2,
            namespaces: [(ns.to_string(), LabelMap::new())].into(),
            pods: vec![PodPlan {
                namespace: ns.into(),
                name: pod.into(),
                labels: LabelMap::new(),
                node: 1,
                ports: vec![PortPlan::new(80, Transport::Tcp)],
            }],
            externals: Vec::new(),
            node_labels: Default::default(),
            node_ports: Vec::new(),
        };
        assert_eq!(unfit_names(&spec("x", "a")), None);
        assert!(unfit_names(&spec("x.y", "a")).is_some(), "dots");
        assert!(
            unfit_names(&spec("x", &"p".repeat(62))).is_some(),
            "over 63"
        );
        assert!(unfit_names(&spec("X", "a")).is_some(), "upper case");
    }
}
