//! Read-only views of a running cluster: its identity, and the names and
//! addresses of its nodes, pods, external hosts, namespaces and peers.

use std::net::IpAddr;
use std::path::Path;

use super::error::ClusterError;
use super::{Cluster, ExternalState, PodState};
use crate::matrix::Peer;
use crate::model::{node_addr, Family, LabelMap, PodPlan};
use crate::netns::lock;

impl Cluster {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn node_count(&self) -> usize {
        self.nodes
    }

    pub fn temp_dir(&self) -> &Path {
        &self.temp_dir
    }

    /// The last published revision.
    pub fn revision(&self) -> Option<&str> {
        self.revision.as_deref()
    }

    /// Every network namespace this cluster owns.
    pub fn all_netns(&self) -> Vec<String> {
        lock(&self.res).netns.clone()
    }

    /// `ns/name` of every pod, in creation order.
    pub fn pod_keys(&self) -> Vec<String> {
        self.pods.iter().map(|p| p.spec.key()).collect()
    }

    /// The spec of a pod (labels as currently set).
    pub fn pod_spec(&self, pod: &str) -> Result<&PodPlan, ClusterError> {
        Ok(&self.pod_state(pod)?.spec)
    }

    pub fn pod_ip(&self, pod: &str) -> Result<IpAddr, ClusterError> {
        Ok(self.pod_state(pod)?.ip)
    }

    pub fn pod_netns(&self, pod: &str) -> Result<&str, ClusterError> {
        Ok(&self.pod_state(pod)?.netns)
    }

    /// Name of the pod's host-side veth in its node namespace.
    pub fn pod_host_veth(&self, pod: &str) -> Result<&str, ClusterError> {
        Ok(&self.pod_state(pod)?.host_veth)
    }

    pub fn node_netns(&self, node: usize) -> Result<&str, ClusterError> {
        self.node_ns
            .get(node.wrapping_sub(1))
            .map(String::as_str)
            .ok_or(ClusterError::NoNode(node))
    }

    /// Node `node`'s uplink address (its hostIP).
    pub fn node_ip(&self, node: usize) -> Result<IpAddr, ClusterError> {
        if node == 0 || node > self.nodes {
            return Err(ClusterError::NoNode(node));
        }
        Ok(node_addr(self.family, node))
    }

    pub fn external_ip(&self, name: &str) -> Result<IpAddr, ClusterError> {
        Ok(self.external_state(name)?.ip)
    }

    pub fn external_netns(&self, name: &str) -> Result<&str, ClusterError> {
        Ok(&self.external_state(name)?.netns)
    }

    /// Labels of a namespace (without the automatic metadata.name label).
    pub fn namespace_labels(&self, ns: &str) -> Option<&LabelMap> {
        self.namespaces.get(ns)
    }

    /// The network namespace a peer's traffic starts from.
    pub fn netns_of(&self, peer: &Peer) -> Result<String, ClusterError> {
        Ok(match peer {
            Peer::Pod(k) => self.pod_netns(k)?.to_string(),
            Peer::Node(i) => self.node_netns(*i)?.to_string(),
            Peer::External(n) => self.external_netns(n)?.to_string(),
        })
    }

    /// A peer's own address (pod IP, node uplink, external address).
    pub fn address_of(&self, peer: &Peer) -> Result<IpAddr, ClusterError> {
        match peer {
            Peer::Pod(k) => self.pod_ip(k),
            Peer::Node(i) => self.node_ip(*i),
            Peer::External(n) => self.external_ip(n),
        }
    }

    pub(super) fn pod_index(&self, pod: &str) -> Result<usize, ClusterError> {
        self.pods
            .iter()
            .position(|p| p.spec.key() == pod)
            .ok_or_else(|| ClusterError::NoPod(pod.to_string()))
    }

    pub(super) fn pod_state(&self, pod: &str) -> Result<&PodState, ClusterError> {
        Ok(&self.pods[self.pod_index(pod)?])
    }

    pub(super) fn external_state(&self, name: &str) -> Result<&ExternalState, ClusterError> {
        self.externals
            .iter()
            .find(|e| e.spec.name == name)
            .ok_or_else(|| ClusterError::NoExternal(name.to_string()))
    }
}
