//! What the agents read: every object written into each node's source
//! directory (Namespaces, Nodes, Pods, Services, EndpointSlices, policies,
//! arbitrary test files) and the `REVISION` file that marks a consistent
//! state; label changes and policy application go through here.

use std::fs;

use anyhow::Result;
use serde_json::Value;

use super::error::ClusterError;
use super::Cluster;
use crate::model::{node_addr, pod_service_name, LabelMap};
use crate::objects;
use crate::services::Service;

impl Cluster {
    /// Writes every object of the cluster (namespaces, nodes, pods with their
    /// Services) and a first `REVISION`.
    pub(super) fn publish_all(&mut self) -> Result<()> {
        let nss: Vec<String> = self.namespaces.keys().cloned().collect();
        for ns in nss {
            self.write_namespace(&ns)?;
        }
        for n in 1..=self.nodes {
            let labels = self.node_labels.get(&n).cloned().unwrap_or_default();
            self.write_node(n, &labels)?;
        }
        for k in &self.pod_keys() {
            self.publish_pod(k)?;
        }
        self.publish()?;
        Ok(())
    }

    pub(super) fn write_all_nodes(&self, file: &str, contents: &str) -> Result<()> {
        for a in &self.agents {
            objects::write_atomic(&a.source_dir, file, contents)?;
        }
        Ok(())
    }

    pub(super) fn remove_all_nodes(&self, file: &str) -> Result<()> {
        for a in &self.agents {
            let p = a.source_dir.join(file);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ClusterError::RemoveSource { path: p, source }.into()),
            }
        }
        Ok(())
    }

    /// Writes an arbitrary file into every node's source directory (for tests
    /// of invalid input: broken YAML, invalid policies). Not followed by a
    /// REVISION: call [`Cluster::sync`].
    pub fn write_source_file(&self, name: &str, contents: &str) -> Result<()> {
        self.write_all_nodes(name, contents)
    }

    /// Removes a file written by [`Cluster::write_source_file`].
    pub fn remove_source_file(&self, name: &str) -> Result<()> {
        self.remove_all_nodes(name)
    }

    fn write_namespace(&self, ns: &str) -> Result<()> {
        let labels = self
            .namespaces
            .get(ns)
            .ok_or_else(|| ClusterError::NoNamespace(ns.to_string()))?;
        self.write_all_nodes(
            &objects::namespace_file(ns),
            &objects::to_yaml(&objects::namespace(ns, labels))?,
        )
    }

    /// Writes node `n`'s Node object with `labels`.
    fn write_node(&self, n: usize, labels: &LabelMap) -> Result<()> {
        let node = objects::node(&format!("node-{n}"), labels, self.node_ip(n)?);
        self.write_all_nodes(&objects::node_file(n), &objects::to_yaml(&node)?)
    }

    pub(super) fn write_service(&self, svc: &Service) -> Result<()> {
        self.write_all_nodes(
            &objects::service_file(&svc.namespace, &svc.name),
            &objects::to_yaml(&objects::service(svc, self.family))?,
        )?;
        self.write_all_nodes(
            &objects::endpointslice_file(&svc.namespace, &svc.name),
            &objects::to_yaml(&objects::endpointslice(svc, self.family))?,
        )
    }

    /// Writes the Pod object of `pod` and its Service and EndpointSlice.
    pub fn publish_pod(&self, pod: &str) -> Result<()> {
        let p = self.pod_state(pod)?;
        self.write_all_nodes(
            &objects::pod_file(&p.spec.namespace, &p.spec.name),
            &objects::to_yaml(&objects::pod(
                &p.spec,
                p.ip,
                node_addr(self.family, p.spec.node),
            ))?,
        )?;
        let name = pod_service_name(&p.spec.namespace, &p.spec.name);
        if let Some(svc) = self
            .services
            .iter()
            .find(|s| s.namespace == p.spec.namespace && s.name == name)
        {
            self.write_service(svc)?;
        }
        Ok(())
    }

    /// Writes a new `REVISION` into every source directory and returns it.
    /// Agents report it back once everything written before it is programmed.
    pub fn publish(&mut self) -> Result<String> {
        self.revision_seq += 1;
        let rev = format!("{}-r{}", self.id, self.revision_seq);
        self.write_all_nodes("REVISION", &rev)?;
        self.revision = Some(rev.clone());
        Ok(rev)
    }

    /// [`Cluster::publish`], then wait until every running agent has
    /// programmed it.
    pub fn sync(&mut self) -> Result<String> {
        let rev = self.publish()?;
        self.wait_programmed()?;
        Ok(rev)
    }

    /// Replaces a pod's whole label map (written, not yet synced).
    pub fn set_pod_labels(&mut self, pod: &str, labels: LabelMap) -> Result<()> {
        let i = self.pod_index(pod)?;
        self.pods[i].spec.labels = labels;
        self.publish_pod(pod)
    }

    /// Replaces a namespace's labels (`kubernetes.io/metadata.name` is kept).
    pub fn set_namespace_labels(&mut self, ns: &str, labels: LabelMap) -> Result<()> {
        let l = self
            .namespaces
            .get_mut(ns)
            .ok_or_else(|| ClusterError::NoNamespace(ns.to_string()))?;
        *l = labels;
        self.write_namespace(ns)
    }

    /// Creates or replaces a NetworkPolicy (by metadata.namespace/name).
    /// Missing `apiVersion`/`kind` are filled in.
    pub fn apply_policy(&mut self, manifest: &Value) -> Result<()> {
        let (ns, name, m) = objects::policy_manifest(manifest)?;
        self.write_all_nodes(&objects::policy_file(&ns, &name), &objects::to_yaml(&m)?)?;
        self.policies.insert((ns, name), m);
        Ok(())
    }

    /// Creates or replaces a ClusterNetworkPolicy (by metadata.name).
    /// Missing `apiVersion`/`kind` are filled in.
    pub fn apply_cluster_policy(&mut self, manifest: &Value) -> Result<()> {
        let (name, m) = objects::cluster_policy_manifest(manifest)?;
        self.write_all_nodes(&objects::cluster_policy_file(&name), &objects::to_yaml(&m)?)?;
        self.cluster_policies.insert(name, m);
        Ok(())
    }

    /// Deletes a ClusterNetworkPolicy; an error when it does not exist.
    pub fn delete_cluster_policy(&mut self, name: &str) -> Result<()> {
        if self.cluster_policies.remove(name).is_none() {
            return Err(ClusterError::NoClusterPolicy(name.to_string()).into());
        }
        self.remove_all_nodes(&objects::cluster_policy_file(name))
    }

    /// Replaces node `n`'s labels (`kubernetes.io/hostname` is kept).
    pub fn set_node_labels(&mut self, n: usize, labels: LabelMap) -> Result<()> {
        let node = objects::node(&format!("node-{n}"), &labels, self.node_ip(n)?);
        self.node_labels.insert(n, labels);
        self.write_all_nodes(&objects::node_file(n), &objects::to_yaml(&node)?)
    }

    /// Deletes a NetworkPolicy; an error when it does not exist.
    pub fn delete_policy(&mut self, ns: &str, name: &str) -> Result<()> {
        if self
            .policies
            .remove(&(ns.to_string(), name.to_string()))
            .is_none()
        {
            return Err(ClusterError::NoPolicy {
                namespace: ns.to_string(),
                name: name.to_string(),
            }
            .into());
        }
        self.remove_all_nodes(&objects::policy_file(ns, name))
    }

    /// Whether a NetworkPolicy `ns/name` is currently applied.
    pub fn has_policy(&self, ns: &str, name: &str) -> bool {
        self.policies
            .contains_key(&(ns.to_string(), name.to_string()))
    }
}
