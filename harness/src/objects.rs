//! The Kubernetes objects the harness publishes to the agents' file source:
//! rendering Namespaces, Nodes, Pods, Services, EndpointSlices and policies
//! as YAML, and writing them atomically (temp file + rename) into each node's
//! source directory, followed by a `REVISION` file the agents echo back once
//! programmed.
//!
//! File names: `namespace-<ns>.yaml`, `pod-<ns>-<name>.yaml`,
//! `service-<ns>-<name>.yaml`, `endpointslice-<ns>-<name>.yaml`,
//! `networkpolicy-<ns>-<name>.yaml`, and `REVISION`. Temp files start with a
//! dot and end in `.tmp`, so a watcher that reads only `*.yaml` never sees a
//! half-written file.

use std::fs;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::model::{Family, LabelMap, PodPlan};
use crate::services::Service;

/// The kind of a ClusterNetworkPolicy manifest, and its API version.
pub const CLUSTER_POLICY_KIND: &str = "ClusterNetworkPolicy";
pub const CLUSTER_POLICY_API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";

/// Writes `contents` to `dir/name` atomically.
pub fn write_atomic(dir: &Path, name: &str, contents: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, contents).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, dir.join(name)).with_context(|| format!("rename into {}", dir.display()))?;
    Ok(())
}

/// Serializes a JSON value as a YAML document.
pub fn to_yaml(v: &Value) -> Result<String> {
    serde_yaml::to_string(v).context("render YAML")
}

pub fn namespace_file(ns: &str) -> String {
    format!("namespace-{ns}.yaml")
}
pub fn pod_file(ns: &str, name: &str) -> String {
    format!("pod-{ns}-{name}.yaml")
}
pub fn service_file(ns: &str, name: &str) -> String {
    format!("service-{ns}-{name}.yaml")
}
pub fn endpointslice_file(ns: &str, name: &str) -> String {
    format!("endpointslice-{ns}-{name}.yaml")
}
pub fn policy_file(ns: &str, name: &str) -> String {
    format!("networkpolicy-{ns}-{name}.yaml")
}
pub fn cluster_policy_file(name: &str) -> String {
    format!("clusternetworkpolicy-{name}.yaml")
}
pub fn node_file(n: usize) -> String {
    format!("node-{n}.yaml")
}

/// A Node `name` with its address as InternalIP; `kubernetes.io/hostname` is
/// always the node's name.
pub fn node(name: &str, labels: &LabelMap, ip: IpAddr) -> Value {
    let mut l = labels.clone();
    l.insert("kubernetes.io/hostname".into(), name.into());
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": l},
        "status": {"addresses": [
            {"type": "InternalIP", "address": ip.to_string()},
            {"type": "Hostname", "address": name},
        ]},
    })
}

/// A ClusterNetworkPolicy manifest with `kind`/`apiVersion` filled in, and its
/// name.
pub fn cluster_policy_manifest(manifest: &Value) -> Result<(String, Value)> {
    let mut m = manifest.clone();
    let obj = m
        .as_object_mut()
        .ok_or_else(|| anyhow!("a ClusterNetworkPolicy manifest must be a mapping"))?;
    match obj.get("kind").and_then(Value::as_str) {
        None => {
            obj.insert("kind".into(), Value::from(CLUSTER_POLICY_KIND));
        }
        Some(CLUSTER_POLICY_KIND) => {}
        Some(k) => bail!("kind is {k:?}, expected ClusterNetworkPolicy"),
    }
    obj.entry("apiVersion")
        .or_insert_with(|| Value::from(CLUSTER_POLICY_API_VERSION));
    let name = m
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("metadata.name is required"))?
        .to_string();
    Ok((name, m))
}

/// A Namespace; `kubernetes.io/metadata.name` is always added.
pub fn namespace(name: &str, labels: &LabelMap) -> Value {
    let mut l = labels.clone();
    l.insert("kubernetes.io/metadata.name".into(), name.into());
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": l},
        "status": {"phase": "Active"},
    })
}

/// The container ports of a pod (named ports resolve against these).
pub fn container_ports(p: &PodPlan) -> Vec<Value> {
    p.ports
        .iter()
        .map(|port| {
            let mut v = json!({"containerPort": port.port, "protocol": port.protocol.as_str()});
            if let Some(n) = &port.name {
                v["name"] = json!(n);
            }
            v
        })
        .collect()
}

/// A NetworkPolicy manifest with missing `kind`/`apiVersion` filled in, and its
/// namespace and name (both required).
pub fn policy_manifest(manifest: &Value) -> Result<(String, String, Value)> {
    let mut m = manifest.clone();
    let obj = m
        .as_object_mut()
        .ok_or_else(|| anyhow!("a NetworkPolicy manifest must be a mapping"))?;
    match obj.get("kind").and_then(Value::as_str) {
        None => {
            obj.insert("kind".into(), Value::from("NetworkPolicy"));
        }
        Some("NetworkPolicy") => {}
        Some(k) => bail!("kind is {k:?}, expected NetworkPolicy"),
    }
    obj.entry("apiVersion")
        .or_insert_with(|| Value::from("networking.k8s.io/v1"));
    let name = m
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("metadata.name is required"))?
        .to_string();
    let ns = m
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("metadata.namespace is required (policy {name})"))?
        .to_string();
    Ok((ns, name, m))
}

/// A running Pod with its IP, host IP, node and container ports.
pub fn pod(p: &PodPlan, ip: IpAddr, host_ip: IpAddr) -> Value {
    let ports = container_ports(p);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": p.namespace, "name": p.name, "labels": p.labels},
        "spec": {
            "nodeName": format!("node-{}", p.node),
            "containers": [{"name": "server", "image": "palisade-harness/server", "ports": ports}],
        },
        "status": {
            "phase": "Running",
            "hostIP": ip_str(host_ip),
            "hostIPs": [{"ip": ip_str(host_ip)}],
            "podIP": ip_str(ip),
            "podIPs": [{"ip": ip_str(ip)}],
        },
    })
}

fn ip_str(ip: IpAddr) -> String {
    ip.to_string()
}

/// A ClusterIP Service. It has no selector: its backends are listed in the
/// EndpointSlice the harness writes beside it (a selectorless Service with a
/// managed EndpointSlice is valid Kubernetes), so relabelling a pod never
/// changes which pods back a Service — exactly like the harness's DNAT rules.
pub fn service(svc: &Service, family: Family) -> Value {
    let ports: Vec<Value> = svc
        .ports
        .iter()
        .map(|p| {
            json!({"name": p.name, "port": p.port, "targetPort": p.target_port,
                   "protocol": p.protocol.as_str()})
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": svc.namespace, "name": svc.name},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": svc.cluster_ip.to_string(),
            "clusterIPs": [svc.cluster_ip.to_string()],
            "ipFamilies": [family.k8s()],
            "ports": ports,
        },
    })
}

/// The EndpointSlice of a Service: every backend pod, ready.
pub fn endpointslice(svc: &Service, family: Family) -> Value {
    let endpoints: Vec<Value> = svc
        .backends
        .iter()
        .map(|b| {
            let (ns, name) = b.pod.split_once('/').unwrap_or(("", b.pod.as_str()));
            json!({
                "addresses": [b.ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", b.node),
                "targetRef": {"kind": "Pod", "namespace": ns, "name": name},
            })
        })
        .collect();
    let ports: Vec<Value> = svc
        .ports
        .iter()
        .map(|p| json!({"name": p.name, "port": p.target_port, "protocol": p.protocol.as_str()}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": svc.namespace,
            "name": format!("{}-harness", svc.name),
            "labels": {
                "kubernetes.io/service-name": svc.name,
                "endpointslice.kubernetes.io/managed-by": "palisade-harness",
            },
        },
        "addressType": family.k8s(),
        "endpoints": endpoints,
        "ports": ports,
    })
}
