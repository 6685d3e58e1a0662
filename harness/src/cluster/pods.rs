//! The cluster's pods and external hosts: recording their names and
//! addresses, starting their servers, and adding, re-plumbing and removing
//! pods while the cluster runs.

use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};

use super::error::ClusterError;
use super::{Cluster, ExternalState, PodState};
use crate::model::{external_addr, pod_addr, pod_service_name, ExternalSpec, PodPlan, PortPlan};
use crate::netns::{self, ip_batch, lock};
use crate::objects;
use crate::servers::ServerSet;

impl Cluster {
    /// Records a pod (names and address) without creating anything yet.
    pub(super) fn alloc_pod(&mut self, spec: PodPlan) -> usize {
        let k = self.pods_per_node[spec.node];
        self.pods_per_node[spec.node] += 1;
        let veth = format!("palp{}", self.next_veth);
        self.next_veth += 1;
        let idx = self.pods.len();
        self.pods.push(PodState {
            ip: pod_addr(self.family, spec.node, k),
            netns: format!("{}-p{}", self.id, self.next_veth),
            host_veth: veth,
            spec,
            servers: None,
        });
        idx
    }

    /// Records the k-th (0-based) external host without creating anything yet.
    pub(super) fn alloc_external(&mut self, k: usize, spec: ExternalSpec) {
        self.externals.push(ExternalState {
            spec,
            ip: external_addr(self.family, k),
            netns: format!("{}-e{}", self.id, k + 1),
            servers: None,
        });
    }

    /// Starts the servers of every pod and external (in parallel), and of
    /// every node when `node_ports` lists any.
    pub(super) fn start_servers(&mut self, node_ports: &[PortPlan]) -> Result<()> {
        let family = self.family;
        let mut started: Vec<(usize, bool, Result<ServerSet>)> = Vec::new();
        std::thread::scope(|s| {
            let mut hs = Vec::new();
            for (i, p) in self.pods.iter().enumerate() {
                let (ns, id, ports) = (p.netns.clone(), p.spec.key(), p.spec.ports.clone());
                hs.push((
                    i,
                    true,
                    s.spawn(move || ServerSet::start(&ns, family, &id, &ports)),
                ));
            }
            for (i, e) in self.externals.iter().enumerate() {
                let (ns, id, ports) = (
                    e.netns.clone(),
                    format!("@{}", e.spec.name),
                    e.spec.ports.clone(),
                );
                hs.push((
                    i,
                    false,
                    s.spawn(move || ServerSet::start(&ns, family, &id, &ports)),
                ));
            }
            for (i, is_pod, h) in hs {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("server start panicked")));
                started.push((i, is_pod, r));
            }
        });
        for (i, is_pod, r) in started {
            if is_pod {
                self.pods[i].servers = Some(r?);
            } else {
                self.externals[i].servers = Some(r?);
            }
        }
        if !node_ports.is_empty() {
            for n in 1..=self.nodes {
                let ns = self.node_ns[n - 1].clone();
                let ip = self.node_ip(n)?;
                let set =
                    ServerSet::start_on(&ns, family, &format!("node/{n}"), node_ports, Some(ip))?;
                self.node_servers.push(set);
            }
        }
        Ok(())
    }

    /// A pod that can be added: its namespace exists, its node is in range,
    /// no pod of its name exists.
    pub(super) fn check_new_pod(&self, spec: &PodPlan) -> Result<()> {
        if !self.namespaces.contains_key(&spec.namespace) {
            bail!(
                "pod {}: namespace {} does not exist",
                spec.key(),
                spec.namespace
            );
        }
        if spec.node == 0 || spec.node > self.nodes {
            bail!("pod {}: node {} out of range", spec.key(), spec.node);
        }
        if self.pods.iter().any(|p| p.spec.key() == spec.key()) {
            return Err(ClusterError::PodExists(spec.key()).into());
        }
        Ok(())
    }

    /// Pod `i`'s network namespace, veth, addresses and routes (what a pod
    /// network's CNI plugin makes).
    pub(super) fn create_pod_network(&mut self, i: usize) -> Result<()> {
        let (ns, node) = (self.pods[i].netns.clone(), self.pods[i].spec.node);
        self.create_netns(std::slice::from_ref(&ns))?;
        ip_batch(&self.node_ns[node - 1], &self.pod_veth_lines(&self.pods[i]))?;
        ip_batch(&ns, &self.pod_guest_script(&self.pods[i]))
    }

    /// Adds a pod's network (namespace, veth, routes, servers) and its Service
    /// rules, without publishing any object: the agent sees only a new veth.
    /// Follow with [`Cluster::publish_pod`] and [`Cluster::sync`]. Returns the
    /// pod's IP.
    pub fn add_pod_network(&mut self, spec: PodPlan) -> Result<IpAddr> {
        self.check_new_pod(&spec)?;
        let key = spec.key();
        let i = self.alloc_pod(spec);
        self.create_pod_network(i)?;
        let ns = self.pods[i].netns.clone();
        self.pods[i].servers = Some(ServerSet::start(
            &ns,
            self.family,
            &key,
            &self.pods[i].spec.ports,
        )?);
        self.create_pod_service(&key);
        self.sync_service_rules()?;
        Ok(self.pods[i].ip)
    }

    /// Replaces a pod's veth pair, as a CNI does when it re-creates a pod's
    /// sandbox: same host-side name and addresses, a new interface (new ifindex).
    /// The pod object and its servers stay.
    pub fn replace_pod_veth(&mut self, pod: &str) -> Result<()> {
        let i = self.pod_index(pod)?;
        let node = self.pods[i].spec.node;
        let node_ns = self.node_ns[node - 1].clone();
        ip_batch(&node_ns, &format!("link del {}\n", self.pods[i].host_veth))?;
        ip_batch(&node_ns, &self.pod_veth_lines(&self.pods[i]))?;
        ip_batch(&self.pods[i].netns, &self.pod_guest_script(&self.pods[i]))
    }

    /// [`Cluster::add_pod_network`] + [`Cluster::publish_pod`] (not synced).
    pub fn add_pod(&mut self, spec: PodPlan) -> Result<IpAddr> {
        let key = spec.key();
        let ip = self.add_pod_network(spec)?;
        self.publish_pod(&key)?;
        Ok(ip)
    }

    /// Removes a pod: objects, its Service, servers, veth and namespace.
    pub fn remove_pod(&mut self, pod: &str) -> Result<()> {
        let i = self.pod_index(pod)?;
        let mut p = self.pods.remove(i);
        self.remove_all_nodes(&objects::pod_file(&p.spec.namespace, &p.spec.name))?;
        let sname = pod_service_name(&p.spec.namespace, &p.spec.name);
        if self.service(&p.spec.namespace, &sname).is_some() {
            self.remove_service(&p.spec.namespace, &sname)?;
        }
        for s in self.services.iter_mut() {
            s.backends.retain(|b| b.pod != pod);
        }
        self.sync_service_rules()?;
        if let Some(mut s) = p.servers.take() {
            s.stop();
        }
        netns::delete_netns(&p.netns);
        lock(&self.res).netns.retain(|n| n != &p.netns);
        Ok(())
    }
}
