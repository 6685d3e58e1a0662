//! `kubectl` as the kube backend runs it: one command with the chosen
//! context, its stdout, or a [`KubectlError`] that names the command and
//! carries kubectl's own message; and reading what it returns about nodes
//! and pods.

use std::io::{self, Write};
use std::net::IpAddr;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{anyhow, Result};
use serde_json::Value;

use crate::model::Family;

/// Why a kubectl command failed.
#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    #[error("running kubectl (is it installed and on PATH?)")]
    Spawn(#[source] io::Error),
    #[error("writing kubectl's input")]
    Input(#[source] io::Error),
    #[error("waiting for kubectl")]
    Wait(#[source] io::Error),
    /// kubectl ran and exited non-zero; `stderr` is its own message.
    #[error("kubectl {command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("kubectl {command}: not JSON")]
    NotJson {
        command: String,
        #[source]
        source: serde_json::Error,
    },
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

    pub(super) fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        if let Some(ctx) = &self.context {
            c.args(["--context", ctx]);
        }
        c.args(args);
        c
    }

    /// Runs kubectl and returns stdout; an error names the command and carries
    /// kubectl's own message.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, KubectlError> {
        let mut c = self.command(args);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(KubectlError::Spawn)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .map_err(KubectlError::Input)?;
        }
        let out = child.wait_with_output().map_err(KubectlError::Wait)?;
        if !out.status.success() {
            return Err(KubectlError::Failed {
                command: args.join(" "),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl with `-o json` and parses its output.
    pub fn json(&self, args: &[&str]) -> Result<Value, KubectlError> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let text = self.run(&a, None)?;
        serde_json::from_str(&text).map_err(|source| KubectlError::NotJson {
            command: args.join(" "),
            source,
        })
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

#[cfg(test)]
mod tests {
    use serde_json::json;

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
    fn pod_ip_takes_the_run_family() {
        let pod = json!({"status": {"podIP": "10.244.1.5",
                                    "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00:10:244:1::5"}]}});
        assert_eq!(
            pod_ip(&pod, Family::Ipv6).expect("v6"),
            "fd00:10:244:1::5".parse::<IpAddr>().expect("ip")
        );
        assert!(pod_ip(&json!({"status": {}}), Family::Ipv4).is_err());
    }
}
