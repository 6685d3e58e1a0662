//! The kube backend as the conformance runner drives it: label changes and
//! policies through kubectl, waiting until every agent's `/ready` reaches the
//! resourceVersions of a step's writes, and probes run inside the source pods
//! (re-probed for a bounded time while cells still differ).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::backend::KubeCluster;
use super::manifests::{
    labels_patch, sync_cluster_policy_manifest, CONTAINER, POD_TOOL, SYNC_CLUSTER_POLICY,
    SYNC_MARK, SYNC_POLICY,
};
use crate::agent::Readiness;
use crate::conformance::CaseCluster;
use crate::matrix::{Peer, Probe, Via};
use crate::model::LabelMap;
use crate::objects::{cluster_policy_manifest, policy_manifest};
use crate::podtool::{format_target, parse_results};
use crate::probe::{scatter, Outcome};
use crate::scenario::{policy_key, PolicyRef};

impl KubeCluster {
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
        if let Peer::Node(i) = &p.to {
            // A node serves the case's node_ports itself (hostNetwork servers).
            if !self
                .node_ports
                .iter()
                .any(|np| np.port == p.port && np.protocol == p.protocol)
            {
                bail!(
                    "{}: the case's node_ports have no {}/{}",
                    p.to,
                    p.protocol,
                    p.port
                );
            }
            return Ok(SocketAddr::new(self.node_addr(*i)?, p.port));
        }
        let Peer::Pod(key) = &p.to else {
            bail!(
                "{}: only pods and nodes serve ports on a real cluster",
                p.to
            );
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
                self.k.run(
                    &[
                        "delete",
                        "clusternetworkpolicies.policy.networking.k8s.io",
                        name,
                    ],
                    None,
                )?;
                return Ok(());
            }
        };
        if !self.policies.remove(&(ns.to_string(), name.to_string())) {
            bail!("no NetworkPolicy {ns}/{name} to delete");
        }
        self.k
            .run(&["delete", "networkpolicy", "-n", ns, name], None)?;
        Ok(())
    }

    fn apply_policy(&mut self, manifest: &Value) -> Result<()> {
        if let PolicyRef::Cluster(_) = policy_key(manifest)? {
            // The marker of the cluster policies' stream, for `sync`.
            if !self.cluster_policies.contains(SYNC_CLUSTER_POLICY) {
                self.k
                    .run(
                        &["create", "-f", "-"],
                        Some(&sync_cluster_policy_manifest().to_string()),
                    )
                    .context("the sync marker ClusterNetworkPolicy")?;
                self.cluster_policies
                    .insert(SYNC_CLUSTER_POLICY.to_string());
            }
            let (name, m) = cluster_policy_manifest(manifest)?;
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
        if self.cluster_policies.contains(SYNC_CLUSTER_POLICY) {
            want.insert(
                "clusternetworkpolicies",
                self.mark("clusternetworkpolicy", SYNC_CLUSTER_POLICY, None)?,
            );
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
