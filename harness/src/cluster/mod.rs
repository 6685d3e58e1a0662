//! A simulated multi-node cluster made of network namespaces, and everything
//! it owns until teardown: the fabric bridge, node and pod namespaces and
//! their ptp-style veths and routes, external hosts, kube-proxy-style Service
//! rules, per-pod servers, the per-node source directories the agents read,
//! and the agents themselves.
//!
//! Layout (IPv4; IPv6 in brackets):
//! - fabric netns: bridge `br0` with one veth `n<i>` per node.
//! - node i: uplink `eth0` 10.255.0.i/24 [fd00:255::i/64]; pod CIDR
//!   10.100.i.0/24 [fd00:100:i::/64]; routes to other nodes' pod CIDRs via
//!   their uplink; forwarding on; Service CIDR routed to `eth0` so the node
//!   itself can reach ClusterIPs (DNAT in OUTPUT then reroutes).
//! - pod: `eth0` with its /32 [/128]; host side `palp<k>` in the node with the
//!   gateway 10.100.i.1/32 [fe80::1/64]; routes: gateway dev eth0, default via
//!   gateway; node: `<podip> dev palp<k>`.
//! - [`Topology::Bridge`] instead: node i has a bridge `cni0` with
//!   10.100.i.1/24 [fd00:100:i::1/64] and the pods' host sides as ports; a pod's
//!   `eth0` has its address with the subnet's prefix and a default route via
//!   the bridge's address; no host routes; br_netfilter on in the node.
//! - external k: `eth0` 10.254.0.(10+k)/32 [fd00:254::(10+k)/128] with host
//!   side `pale<k>` on node 1 (gateway 10.100.1.1 \[fe80::1\]); other nodes route
//!   10.254.0.0/24 [fd00:254::/64] via node 1.
//!
//! Teardown happens on [`Cluster::teardown`], on drop (also during a panic),
//! and on SIGINT/SIGTERM through the registry in [`crate::netns`].
//!
//! Its jobs are split by file, each an `impl Cluster` block: `network`
//! builds the namespaces, links and routes; `pods` records pods and externals
//! and runs their servers; `services` keeps the Services and every node's nat
//! table; `publish` writes what the agents read; `agents` runs the agents;
//! `probes` sends traffic between peers; `lookup` answers questions about
//! names and addresses; `error` holds [`ClusterError`].

use std::collections::BTreeMap;
use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::agent::{AgentConfig, NodeAgent};
use crate::model::{ClusterSpec, ExternalSpec, Family, LabelMap, PodPlan};
use crate::netns::{self, cleanup_leftovers, lock, new_run_id, Resources, SharedResources};
use crate::servers::ServerSet;
use crate::services::Service;

mod agents;
mod cni;
mod error;
mod lookup;
mod network;
mod pods;
mod probes;
mod publish;
mod services;

pub use cni::CniRun;
pub use error::ClusterError;

/// How a node connects its pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Topology {
    /// One routed veth per pod (kindnet, Calico, the CNI ptp plugin): the node
    /// holds a host route to each pod.
    #[default]
    Ptp,
    /// Pod veths on a bridge `cni0` that holds the gateway address (the CNI
    /// bridge plugin, flannel): pods of a node reach each other over layer 2,
    /// the node finds them only through neighbour and FDB entries.
    Bridge,
}

/// Options for [`Cluster::build`].
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// The agent to run on every node (started by [`Cluster::start_agents`]).
    /// `None` runs the cluster without agents.
    pub agent: Option<AgentConfig>,
    /// Keep the temp dir (sources, logs) after teardown. Also set by the
    /// environment variable `PALISADE_KEEP_TEMP=1`.
    pub keep_temp: bool,
    pub topology: Topology,
}

struct PodState {
    spec: PodPlan,
    ip: IpAddr,
    netns: String,
    host_veth: String,
    servers: Option<ServerSet>,
}

struct ExternalState {
    spec: ExternalSpec,
    ip: IpAddr,
    netns: String,
    servers: Option<ServerSet>,
}

/// A running namespace-built cluster. See the module docs for the layout.
pub struct Cluster {
    id: String,
    family: Family,
    topology: Topology,
    nodes: usize,
    fabric_ns: String,
    node_ns: Vec<String>,
    namespaces: BTreeMap<String, LabelMap>,
    pods: Vec<PodState>,
    externals: Vec<ExternalState>,
    services: Vec<Service>,
    next_service: usize,
    next_veth: usize,
    pods_per_node: Vec<usize>,
    policies: BTreeMap<(String, String), Value>,
    /// ClusterNetworkPolicies by name.
    cluster_policies: BTreeMap<String, Value>,
    /// Node number -> labels of its Node object (besides the hostname).
    node_labels: BTreeMap<usize, LabelMap>,
    /// Servers in the nodes' own namespaces (`node_ports`), by node.
    node_servers: Vec<ServerSet>,
    agents: Vec<NodeAgent>,
    agent_cfg: Option<AgentConfig>,
    temp_dir: PathBuf,
    revision_seq: u64,
    revision: Option<String>,
    res: SharedResources,
    torn_down: bool,
}

impl Cluster {
    /// Builds the whole cluster (namespaces, links, routes, Service rules,
    /// servers, source directories with every object and a first REVISION).
    /// Agents are not started: call [`Cluster::start_agents`].
    ///
    /// Leftovers of dead earlier runs are cleaned first. On error everything
    /// built so far is torn down.
    pub fn build(spec: &ClusterSpec, opts: ClusterOptions) -> Result<Cluster> {
        netns::check_privileges()?;
        spec.validate()?;
        netns::hold_liveness_lock();
        cleanup_leftovers();
        let id = new_run_id();
        let short = id.trim_start_matches(netns::NETNS_PREFIX).to_string();
        let temp_dir = std::env::temp_dir().join(format!("{}{short}", netns::TEMP_PREFIX));
        let keep_temp = opts.keep_temp
            || std::env::var("PALISADE_KEEP_TEMP")
                .map(|v| v == "1")
                .unwrap_or(false);
        let res: SharedResources = Arc::new(Mutex::new(Resources {
            temp_dir: Some(temp_dir.clone()),
            keep_temp,
            ..Default::default()
        }));
        netns::register(&res);
        let mut c = Cluster {
            fabric_ns: format!("{id}-fab"),
            node_ns: (1..=spec.nodes).map(|i| format!("{id}-n{i}")).collect(),
            id,
            family: spec.family,
            topology: opts.topology,
            nodes: spec.nodes,
            namespaces: spec.namespaces.clone(),
            pods: Vec::new(),
            externals: Vec::new(),
            services: Vec::new(),
            next_service: 0,
            next_veth: 0,
            pods_per_node: vec![0; spec.nodes + 1],
            policies: BTreeMap::new(),
            cluster_policies: BTreeMap::new(),
            node_labels: spec.node_labels.clone(),
            node_servers: Vec::new(),
            agents: Vec::new(),
            agent_cfg: opts.agent,
            temp_dir,
            revision_seq: 0,
            revision: None,
            res,
            torn_down: false,
        };
        // On error, `c` drops here and tears down what exists.
        c.build_inner(spec)?;
        Ok(c)
    }

    fn build_inner(&mut self, spec: &ClusterSpec) -> Result<()> {
        fs::create_dir_all(&self.temp_dir)
            .with_context(|| format!("create {}", self.temp_dir.display()))?;
        self.prepare_agents()?;
        // Pods and externals get their names and addresses first, so that
        // every namespace can be created in one batch.
        for p in &spec.pods {
            self.alloc_pod(p.clone());
        }
        for (k, e) in spec.externals.iter().enumerate() {
            self.alloc_external(k, e.clone());
        }
        self.build_network()?;
        // Services, one per pod.
        for k in &self.pod_keys() {
            self.create_pod_service(k);
        }
        self.sync_service_rules()?;
        self.start_servers(&spec.node_ports)?;
        // Objects for the agents.
        self.publish_all()
    }

    /// Tears everything down: agents (SIGTERM, then SIGKILL), servers,
    /// namespaces, pin dirs, temp dir. Also done on drop.
    pub fn teardown(mut self) -> Result<()> {
        self.teardown_inner();
        Ok(())
    }

    fn teardown_inner(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for a in &mut self.agents {
            a.signal_term();
        }
        for a in &mut self.agents {
            if let Some(pid) = a.stop(Duration::from_secs(5)) {
                lock(&self.res).agent_pids.remove(&(pid as i32));
            }
        }
        // Signal every server first: each stops within one poll interval, and
        // waiting for them one by one would add those intervals up.
        for s in self.pods.iter().filter_map(|p| p.servers.as_ref()) {
            s.signal_stop();
        }
        for s in self.externals.iter().filter_map(|e| e.servers.as_ref()) {
            s.signal_stop();
        }
        for s in &self.node_servers {
            s.signal_stop();
        }
        for mut s in std::mem::take(&mut self.node_servers) {
            s.stop();
        }
        for p in &mut self.pods {
            if let Some(mut s) = p.servers.take() {
                s.stop();
            }
        }
        for e in &mut self.externals {
            if let Some(mut s) = e.servers.take() {
                s.stop();
            }
        }
        netns::release(&mut lock(&self.res));
        netns::unregister(&self.res);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown_inner();
    }
}
