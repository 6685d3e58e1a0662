//! The cluster's Services: one per pod (`s-<ns>-<pod>`) plus those a test
//! adds with several backends, and the kube-proxy-style nat table that every
//! node gets rewritten from them after each change.

use std::net::IpAddr;

use anyhow::{Context, Result};

use super::error::ClusterError;
use super::network::parallel;
use super::Cluster;
use crate::model::{cluster_ip, pod_service_name, Family};
use crate::netns::exec_in;
use crate::objects;
use crate::servers::sctp_supported;
use crate::services::{render_nat_table, Backend, Service, ServicePort};

impl Cluster {
    pub(super) fn create_pod_service(&mut self, key: &str) {
        let Some(p) = self.pods.iter().find(|p| p.spec.key() == key) else {
            return;
        };
        let mut ports: Vec<ServicePort> = Vec::new();
        for port in &p.spec.ports {
            if ports
                .iter()
                .any(|sp| sp.port == port.service_port && sp.protocol == port.protocol)
            {
                continue;
            }
            ports.push(ServicePort {
                name: port.service_port_name(),
                port: port.service_port,
                target_port: port.port,
                protocol: port.protocol,
            });
        }
        if ports.is_empty() {
            return;
        }
        let svc = Service {
            namespace: p.spec.namespace.clone(),
            name: pod_service_name(&p.spec.namespace, &p.spec.name),
            cluster_ip: cluster_ip(self.family, self.next_service),
            ports,
            backends: vec![Backend {
                pod: key.to_string(),
                ip: p.ip,
                node: p.spec.node,
            }],
        };
        self.next_service += 1;
        self.services.push(svc);
    }

    /// Rewrites the nat table of every node from the current Services.
    pub(super) fn sync_service_rules(&self) -> Result<()> {
        let table = render_nat_table(self.family, &self.services, sctp_supported());
        let restore = match self.family {
            Family::Ipv4 => "iptables-restore",
            Family::Ipv6 => "ip6tables-restore",
        };
        parallel(&self.node_ns, |ns| {
            exec_in(ns, restore, &["-w"], Some(&table))
                .map(|_| ())
                .with_context(|| format!("program Services in {ns}"))
        })
    }

    /// Creates a Service with several backends (kube-proxy random choice among
    /// them), writes it and its EndpointSlice, and programs every node.
    /// Returns its ClusterIP. Not synced: call [`Cluster::sync`].
    pub fn add_service(
        &mut self,
        namespace: &str,
        name: &str,
        ports: Vec<ServicePort>,
        backends: &[&str],
    ) -> Result<IpAddr> {
        if !self.namespaces.contains_key(namespace) {
            return Err(ClusterError::NoNamespace(namespace.to_string()).into());
        }
        if self
            .services
            .iter()
            .any(|s| s.namespace == namespace && s.name == name)
        {
            return Err(ClusterError::ServiceExists {
                namespace: namespace.to_string(),
                name: name.to_string(),
            }
            .into());
        }
        let svc = Service {
            namespace: namespace.to_string(),
            name: name.to_string(),
            cluster_ip: cluster_ip(self.family, self.next_service),
            ports,
            backends: self.backends(backends)?,
        };
        self.next_service += 1;
        let ip = svc.cluster_ip;
        self.services.push(svc.clone());
        self.sync_service_rules()?;
        self.write_service(&svc)?;
        Ok(ip)
    }

    /// Replaces the backends of a Service.
    pub fn set_service_backends(
        &mut self,
        namespace: &str,
        name: &str,
        backends: &[&str],
    ) -> Result<()> {
        let b = self.backends(backends)?;
        let svc = self
            .services
            .iter_mut()
            .find(|s| s.namespace == namespace && s.name == name)
            .ok_or_else(|| ClusterError::NoService {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })?;
        svc.backends = b;
        let svc = svc.clone();
        self.sync_service_rules()?;
        self.write_service(&svc)
    }

    /// Removes a Service (rules and objects).
    pub fn remove_service(&mut self, namespace: &str, name: &str) -> Result<()> {
        let before = self.services.len();
        self.services
            .retain(|s| !(s.namespace == namespace && s.name == name));
        if self.services.len() == before {
            return Err(ClusterError::NoService {
                namespace: namespace.to_string(),
                name: name.to_string(),
            }
            .into());
        }
        self.sync_service_rules()?;
        self.remove_all_nodes(&objects::service_file(namespace, name))?;
        self.remove_all_nodes(&objects::endpointslice_file(namespace, name))
    }

    fn backends(&self, pods: &[&str]) -> Result<Vec<Backend>> {
        pods.iter()
            .map(|k| {
                let p = self.pod_state(k)?;
                Ok(Backend {
                    pod: p.spec.key(),
                    ip: p.ip,
                    node: p.spec.node,
                })
            })
            .collect()
    }

    /// A Service by namespace and name.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// All Services.
    pub fn services(&self) -> &[Service] {
        &self.services
    }
}
