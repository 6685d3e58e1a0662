//! Pods created the way a container runtime creates them with `palisade-cni`
//! chained after the plugin that makes the pod's network: the pod object
//! first, without addresses (the API server has none before the sandbox);
//! then the sandbox's veth and addresses (the first plugin's work); then the
//! plugin binary run as the CNI spec says (`CNI_*` environment, the network
//! configuration with `prevResult` on stdin); the pod's addresses are
//! published afterwards, as the kubelet reports them.
use std::{
    io::Write,
    net::IpAddr,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{error::ClusterError, Cluster, PodState};
use crate::model::{node_addr, PodPlan};
use crate::netns::netns_path;
use crate::objects;
use crate::servers::ServerSet;

/// What one run of the plugin printed.
#[derive(Debug)]
pub struct CniRun {
    pub success: bool,
    /// The result or the CNI error, as JSON.
    pub stdout: Value,
    pub stderr: String,
}

impl Cluster {
    /// The socket the agent of `node` serves CNI requests on (agents started
    /// with [`crate::AgentConfig::cni`]).
    pub fn cni_socket(&self, node: usize) -> Result<std::path::PathBuf> {
        let a = self
            .agents
            .get(node.wrapping_sub(1))
            .ok_or(ClusterError::NoNode(node))?;
        Ok(a.cni_socket())
    }

    /// Adds a pod through the CNI plugin at `plugin`: the pod object without
    /// addresses is published and synced, its network created, and the
    /// plugin's ADD run. The pod's servers start once ADD has returned (its
    /// containers would); its addresses are not published: follow with
    /// [`Cluster::publish_pod`] and [`Cluster::sync`] for the kubelet's status
    /// update.
    pub fn add_pod_via_cni(&mut self, spec: PodPlan, plugin: &Path) -> Result<CniRun> {
        self.check_new_pod(&spec)?;
        let key = spec.key();
        let i = self.alloc_pod(spec);
        let p = &self.pods[i];
        let mut pod = objects::pod(&p.spec, p.ip, node_addr(self.family, p.spec.node));
        if let Some(status) = pod["status"].as_object_mut() {
            status.remove("podIP");
            status.remove("podIPs");
        }
        self.write_all_nodes(
            &objects::pod_file(&p.spec.namespace, &p.spec.name),
            &objects::to_yaml(&pod)?,
        )?;
        self.sync()?;
        self.create_pod_network(i)?;
        let ns = self.pods[i].netns.clone();
        let run = self.run_cni("ADD", &self.pods[i], plugin, &self.pods[i].netns)?;
        if run.success {
            self.pods[i].servers = Some(ServerSet::start(
                &ns,
                self.family,
                &key,
                &self.pods[i].spec.ports,
            )?);
        }
        Ok(run)
    }

    /// Runs the plugin's `command` (ADD, CHECK, DEL) for `pod`, which must
    /// have been added through [`Cluster::add_pod_via_cni`].
    pub fn cni(&self, command: &str, pod: &str, plugin: &Path) -> Result<CniRun> {
        let p = self.pod_state(pod)?;
        self.run_cni(command, p, plugin, &p.netns)
    }

    /// [`Cluster::cni`] for another sandbox of the pod (`CNI_CONTAINERID`):
    /// what a runtime sends for a sandbox it replaced or garbage-collects.
    pub fn cni_for_sandbox(
        &self,
        command: &str,
        pod: &str,
        plugin: &Path,
        container_id: &str,
    ) -> Result<CniRun> {
        let p = self.pod_state(pod)?;
        self.run_cni(command, p, plugin, container_id)
    }

    fn run_cni(
        &self,
        command: &str,
        p: &PodState,
        plugin: &Path,
        container_id: &str,
    ) -> Result<CniRun> {
        let netns = netns_path(&p.netns);
        let plen = if p.ip.is_ipv4() { 32 } else { 128 };
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": "palisade-harness",
            "type": "palisade-cni",
            "socket": self.cni_socket(p.spec.node)?,
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": p.host_veth},
                    {"name": "eth0", "sandbox": netns},
                ],
                "ips": [{"address": format!("{}/{plen}", ip_text(p.ip)), "interface": 1}],
            },
        });
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            p.spec.namespace, p.spec.name, container_id
        );
        let dir = plugin.parent().unwrap_or(Path::new("."));
        let mut child = Command::new(plugin)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", args)
            .env("CNI_PATH", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", plugin.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.to_string().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let stdout = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(text.trim())
                .with_context(|| format!("{command}: the plugin printed {text:?}"))?
        };
        Ok(CniRun {
            success: out.status.success(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

fn ip_text(ip: IpAddr) -> String {
    ip.to_string()
}
