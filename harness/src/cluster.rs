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
//!   side `pale<k>` on node 1 (gateway 10.100.1.1 [fe80::1]); other nodes route
//!   10.254.0.0/24 [fd00:254::/64] via node 1.
//!
//! Teardown happens on [`Cluster::teardown`], on drop (also during a panic),
//! and on SIGINT/SIGTERM through the registry in [`crate::netns`].

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::agent::{get_ready, parse_json_lines, tail, AgentConfig, NodeAgent, Readiness};
use crate::model::*;
use crate::netns::{
    self, cleanup_leftovers, exec_in, ip_batch, lock, new_run_id, Resources, SharedResources,
};
use crate::objects;
use crate::probe::{run_probes, whoami, Connection, Outcome, RawProbe, PROBE_TIMEOUT};
use crate::servers::{sctp_supported, ServerSet};
use crate::services::{render_nat_table, Backend, Service, ServicePort};

/// A probe source or destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// `namespace/name`.
    Pod(String),
    /// 1-based node index (`node/1`).
    Node(usize),
    /// External host name without the `@`.
    External(String),
}

impl Peer {
    /// Parses `ns/pod`, `node/N` or `@name` (a `node/N` is a node, not a pod).
    pub fn parse(s: &str) -> Result<Peer> {
        if let Some(name) = s.strip_prefix('@') {
            if name.is_empty() {
                bail!("empty external name in {s:?}");
            }
            return Ok(Peer::External(name.to_string()));
        }
        if let Some(n) = s.strip_prefix("node/") {
            if let Ok(i) = n.parse::<usize>() {
                return Ok(Peer::Node(i));
            }
        }
        match s.split_once('/') {
            Some((ns, p)) if !ns.is_empty() && !p.is_empty() && !p.contains('/') => {
                Ok(Peer::Pod(s.to_string()))
            }
            _ => bail!("{s:?} is not a pod (ns/name), node (node/N) or external (@name)"),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Pod(k) => f.write_str(k),
            Peer::Node(i) => write!(f, "node/{i}"),
            Peer::External(n) => write!(f, "@{n}"),
        }
    }
}

/// How a probe reaches a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// The ClusterIP of the pod's Service `s-<ns>-<pod>` (at the service port
    /// mapping to the container port).
    Service,
    /// The pod's IP.
    Pod,
}

/// A probe in cluster terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub from: Peer,
    pub to: Peer,
    /// Container port on the destination.
    pub port: u16,
    pub protocol: Transport,
    /// Ignored (treated as [`Via::Pod`]) when either end is an external or
    /// the destination is a node.
    pub via: Via,
}

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
        for i in 1..=self.nodes {
            let dir = self.temp_dir.join(format!("n{i}"));
            let source_dir = dir.join("source");
            fs::create_dir_all(&source_dir)?;
            let pin_dir = Path::new(netns::PIN_ROOT).join(format!(
                "{}-n{i}",
                self.id.trim_start_matches(netns::NETNS_PREFIX)
            ));
            lock(&self.res).pin_dirs.push(pin_dir.clone());
            self.agents.push(NodeAgent {
                node: i,
                netns: self.node_ns[i - 1].clone(),
                source_dir,
                pin_dir,
                stdout_path: dir.join("deny-log.jsonl"),
                stderr_path: dir.join("agent.log"),
                child: None,
            });
        }

        // Pods and externals get their names and addresses first, so that
        // every namespace can be created in one batch.
        for p in &spec.pods {
            self.alloc_pod(p.clone());
        }
        for (k, e) in spec.externals.iter().enumerate() {
            self.externals.push(ExternalState {
                spec: e.clone(),
                ip: external_addr(self.family, k),
                netns: format!("{}-e{}", self.id, k + 1),
                servers: None,
            });
        }

        let mut all_ns = vec![self.fabric_ns.clone()];
        all_ns.extend(self.node_ns.iter().cloned());
        all_ns.extend(self.pods.iter().map(|p| p.netns.clone()));
        all_ns.extend(self.externals.iter().map(|e| e.netns.clone()));
        self.create_netns(&all_ns)?;

        // Fabric: one bridge, one veth per node.
        let mut fab = String::from("link add br0 type bridge\nlink set br0 up\nlink set lo up\n");
        for (i, ns) in self.node_ns.iter().enumerate() {
            let i = i + 1;
            fab += &format!(
                "link add n{i} type veth peer name eth0 netns {ns}\nlink set n{i} master br0\nlink set n{i} up\n"
            );
        }
        ip_batch(&self.fabric_ns, &fab)?;

        // Nodes (host sides of every veth), in parallel.
        let scripts: Vec<(String, String)> = (1..=self.nodes)
            .map(|i| (self.node_ns[i - 1].clone(), self.node_script(i)))
            .collect();
        parallel(&scripts, |(ns, s)| ip_batch(ns, s))?;

        // Pod and external sides, in parallel.
        let mut scripts = Vec::new();
        for p in &self.pods {
            scripts.push((p.netns.clone(), self.pod_guest_script(p)));
        }
        for e in &self.externals {
            scripts.push((
                e.netns.clone(),
                self.guest_script(e.ip, node_gateway(self.family, 1)),
            ));
        }
        parallel(&scripts, |(ns, s)| ip_batch(ns, s))?;

        // Services, one per pod.
        let keys: Vec<String> = self.pods.iter().map(|p| p.spec.key()).collect();
        for k in &keys {
            self.create_pod_service(k);
        }
        self.sync_service_rules()?;

        // Servers.
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
        if !spec.node_ports.is_empty() {
            for n in 1..=self.nodes {
                let ns = self.node_ns[n - 1].clone();
                let ip = self.node_ip(n)?;
                let set = ServerSet::start_on(
                    &ns,
                    family,
                    &format!("node/{n}"),
                    &spec.node_ports,
                    Some(ip),
                )?;
                self.node_servers.push(set);
            }
        }

        // Objects for the agents.
        let nss: Vec<String> = self.namespaces.keys().cloned().collect();
        for ns in nss {
            self.write_namespace(&ns)?;
        }
        for n in 1..=self.nodes {
            let labels = self.node_labels.get(&n).cloned().unwrap_or_default();
            let node = objects::node(&format!("node-{n}"), &labels, self.node_ip(n)?);
            self.write_all_nodes(&objects::node_file(n), &objects::to_yaml(&node)?)?;
        }
        for k in &keys {
            self.publish_pod(k)?;
        }
        self.publish()?;
        Ok(())
    }

    fn create_netns(&self, names: &[String]) -> Result<()> {
        lock(&self.res).netns.extend(names.iter().cloned());
        let script: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
        netns::run_cmd("ip", &["-batch", "-"], Some(&script))?;
        // DAD off everywhere (addresses usable at once, no 1-2 s IPv6 stall);
        // forwarding and loose rp_filter on nodes.
        parallel(names, |ns| {
            let mut args = vec![
                "-q",
                "-w",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ];
            if self.node_ns.contains(ns) {
                args.extend([
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                ]);
                if self.topology == Topology::Bridge {
                    // kube-proxy's DNAT must see bridged replies between pods
                    // of one node (br_netfilter), as on a real bridge node.
                    args.extend([
                        "net.bridge.bridge-nf-call-iptables=1",
                        "net.bridge.bridge-nf-call-ip6tables=1",
                    ]);
                }
            }
            exec_in(ns, "sysctl", &args, None).map(|_| ())
        })
    }

    /// Records a pod (names and address) without creating anything yet.
    fn alloc_pod(&mut self, spec: PodPlan) -> usize {
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

    fn addr_line(&self, ip: IpAddr, dev: &str) -> String {
        match ip {
            IpAddr::V4(_) => format!("addr add {ip}/32 dev {dev}\n"),
            IpAddr::V6(_) => format!("addr add {ip}/128 dev {dev} nodad\n"),
        }
    }

    fn gateway_line(&self, node: usize, dev: &str) -> String {
        match node_gateway(self.family, node) {
            IpAddr::V4(g) => format!("addr add {g}/32 dev {dev}\n"),
            IpAddr::V6(g) => format!("addr add {g}/64 dev {dev} nodad\n"),
        }
    }

    fn host_route(&self, ip: IpAddr, dev: &str) -> String {
        format!("route add {ip}/{} dev {dev}\n", self.family.host_prefix())
    }

    fn pod_veth_lines(&self, p: &PodState) -> String {
        if self.topology == Topology::Bridge {
            return format!(
                "link add {v} type veth peer name eth0 netns {ns}\nlink set {v} master cni0\nlink set {v} up\n",
                v = p.host_veth,
                ns = p.netns,
            );
        }
        format!(
            "link add {v} type veth peer name eth0 netns {ns}\nlink set {v} up\n{}{}",
            self.gateway_line(p.spec.node, &p.host_veth),
            self.host_route(p.ip, &p.host_veth),
            v = p.host_veth,
            ns = p.netns,
        )
    }

    fn node_script(&self, i: usize) -> String {
        let f = self.family;
        let uplink = match (f, node_addr(f, i)) {
            (Family::Ipv4, a) => format!("addr add {a}/24 dev eth0\n"),
            (Family::Ipv6, a) => format!("addr add {a}/64 dev eth0 nodad\n"),
        };
        let mut s = format!("link set lo up\n{uplink}link set eth0 up\n");
        if self.topology == Topology::Bridge {
            s += "link add cni0 type bridge\nlink set cni0 up\n";
            s += &match bridge_gateway(f, i) {
                IpAddr::V4(g) => format!("addr add {g}/24 dev cni0\n"),
                IpAddr::V6(g) => format!("addr add {g}/64 dev cni0 nodad\n"),
            };
        }
        for j in 1..=self.nodes {
            if j != i {
                s += &format!("route add {} via {}\n", pod_cidr(f, j), node_addr(f, j));
            }
        }
        s += &format!("route add {} dev eth0\n", service_cidr(f));
        for p in self.pods.iter().filter(|p| p.spec.node == i) {
            s += &self.pod_veth_lines(p);
        }
        if i == 1 {
            for (k, e) in self.externals.iter().enumerate() {
                let v = format!("pale{}", k + 1);
                s += &format!(
                    "link add {v} type veth peer name eth0 netns {}\nlink set {v} up\n",
                    e.netns
                );
                s += &self.gateway_line(1, &v);
                s += &self.host_route(e.ip, &v);
            }
        } else if !self.externals.is_empty() {
            s += &format!("route add {} via {}\n", external_cidr(f), node_addr(f, 1));
        }
        s
    }

    /// Inside a pod: its address and the default route through its node.
    fn pod_guest_script(&self, p: &PodState) -> String {
        if self.topology == Topology::Ptp {
            return self.guest_script(p.ip, node_gateway(self.family, p.spec.node));
        }
        // Bridge: the node's pod subnet is on-link (same-node pods talk over
        // layer 2), everything else goes through the bridge's address.
        let (addr, gw) = match (p.ip, bridge_gateway(self.family, p.spec.node)) {
            (IpAddr::V4(a), g) => (format!("addr add {a}/24 dev eth0\n"), g),
            (IpAddr::V6(a), g) => (format!("addr add {a}/64 dev eth0 nodad\n"), g),
        };
        format!("link set lo up\n{addr}link set eth0 up\nroute add default via {gw} dev eth0\n")
    }

    /// Inside a pod or external: address, gateway route, default route.
    fn guest_script(&self, ip: IpAddr, gw: IpAddr) -> String {
        let mut s = String::from("link set lo up\n");
        s += &self.addr_line(ip, "eth0");
        s += "link set eth0 up\n";
        match gw {
            IpAddr::V4(g) => {
                s += &format!("route add {g}/32 dev eth0 scope link\n");
                s += &format!("route add 0.0.0.0/0 via {g} dev eth0\n");
            }
            IpAddr::V6(g) => s += &format!("route add ::/0 via {g} dev eth0\n"),
        }
        s
    }

    fn create_pod_service(&mut self, key: &str) {
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
    fn sync_service_rules(&self) -> Result<()> {
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

    // ------------------------------------------------------------ objects

    fn write_all_nodes(&self, file: &str, contents: &str) -> Result<()> {
        for a in &self.agents {
            objects::write_atomic(&a.source_dir, file, contents)?;
        }
        Ok(())
    }

    fn remove_all_nodes(&self, file: &str) -> Result<()> {
        for a in &self.agents {
            let p = a.source_dir.join(file);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("remove {}", p.display())),
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
            .ok_or_else(|| anyhow!("no namespace {ns}"))?;
        self.write_all_nodes(
            &objects::namespace_file(ns),
            &objects::to_yaml(&objects::namespace(ns, labels))?,
        )
    }

    fn write_service(&self, svc: &Service) -> Result<()> {
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
            .ok_or_else(|| anyhow!("no namespace {ns}"))?;
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
            bail!("no ClusterNetworkPolicy {name} to delete");
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
            bail!("no NetworkPolicy {ns}/{name} to delete");
        }
        self.remove_all_nodes(&objects::policy_file(ns, name))
    }

    /// Whether a NetworkPolicy `ns/name` is currently applied.
    pub fn has_policy(&self, ns: &str, name: &str) -> bool {
        self.policies
            .contains_key(&(ns.to_string(), name.to_string()))
    }

    // ------------------------------------------------------------ services API

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
            bail!("no namespace {namespace}");
        }
        if self
            .services
            .iter()
            .any(|s| s.namespace == namespace && s.name == name)
        {
            bail!("Service {namespace}/{name} exists");
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
            .ok_or_else(|| anyhow!("no Service {namespace}/{name}"))?;
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
            bail!("no Service {namespace}/{name}");
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

    // ------------------------------------------------------------ pods at runtime

    /// Adds a pod's network (namespace, veth, routes, servers) and its Service
    /// rules, without publishing any object: the agent sees only a new veth.
    /// Follow with [`Cluster::publish_pod`] and [`Cluster::sync`]. Returns the
    /// pod's IP.
    pub fn add_pod_network(&mut self, spec: PodPlan) -> Result<IpAddr> {
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
            bail!("pod {} exists", spec.key());
        }
        let key = spec.key();
        let i = self.alloc_pod(spec);
        let (ns, node) = (self.pods[i].netns.clone(), self.pods[i].spec.node);
        self.create_netns(std::slice::from_ref(&ns))?;
        ip_batch(&self.node_ns[node - 1], &self.pod_veth_lines(&self.pods[i]))?;
        ip_batch(&ns, &self.pod_guest_script(&self.pods[i]))?;
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

    /// The process id of the running agent on `node`.
    pub fn agent_pid(&self, node: usize) -> Option<u32> {
        self.agent(node).ok()?.child.as_ref().map(|c| c.id())
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

    // ------------------------------------------------------------ agents

    /// Starts the agent on every node and waits until all report the current
    /// revision.
    pub fn start_agents(&mut self) -> Result<()> {
        for i in 1..=self.nodes {
            self.spawn_agent(i)?;
        }
        self.wait_programmed()
    }

    /// Starts the agent on one node (1-based) and waits for it.
    pub fn start_agent(&mut self, node: usize) -> Result<()> {
        self.spawn_agent(node)?;
        self.wait_programmed()
    }

    /// Replaces the extra arguments agents started from now on get (a restart
    /// with other flags, e.g. another attach mode).
    pub fn set_agent_args(&mut self, args: &[&str]) -> Result<()> {
        let cfg = self
            .agent_cfg
            .as_mut()
            .ok_or_else(|| anyhow!("this cluster was built without an agent"))?;
        cfg.extra_args = args.iter().map(|s| s.to_string()).collect();
        Ok(())
    }

    /// Starts the agent on one node without waiting for it (an agent that reads
    /// an API server, [`AgentConfig::kube`], knows nothing of this cluster's
    /// revisions).
    pub fn launch_agent(&mut self, node: usize) -> Result<()> {
        self.spawn_agent(node)
    }

    fn spawn_agent(&mut self, node: usize) -> Result<()> {
        let cfg = self
            .agent_cfg
            .clone()
            .ok_or_else(|| anyhow!("this cluster was built without an agent"))?;
        let node_ip = self.node_ip(node)?;
        let a = self.agent_mut(node)?;
        let pid = a.start(&cfg, node_ip)?;
        lock(&self.res).agent_pids.insert(pid as i32);
        Ok(())
    }

    /// Stops the agent on one node (SIGTERM, SIGKILL after 10 s). Its pins
    /// stay, so a restarted agent can adopt them.
    pub fn stop_agent(&mut self, node: usize) -> Result<()> {
        let a = self.agent_mut(node)?;
        if let Some(pid) = a.stop(Duration::from_secs(10)) {
            lock(&self.res).agent_pids.remove(&(pid as i32));
        }
        Ok(())
    }

    /// Whether the agent on `node` is running.
    pub fn agent_running(&mut self, node: usize) -> bool {
        match self.agent_mut(node) {
            Ok(a) => a.child.is_some() && a.exited().is_none(),
            Err(_) => false,
        }
    }

    fn agent_mut(&mut self, node: usize) -> Result<&mut NodeAgent> {
        self.agents
            .get_mut(node.wrapping_sub(1))
            .ok_or_else(|| anyhow!("no node {node}"))
    }

    /// Waits until every running agent reports the last published revision
    /// (timeout from the agent config, 30 s by default). Without running
    /// agents, returns at once.
    pub fn wait_programmed(&mut self) -> Result<()> {
        let Some(rev) = self.revision.clone() else {
            return Ok(());
        };
        let timeout = self
            .agent_cfg
            .as_ref()
            .map(|c| c.ready_timeout)
            .unwrap_or(Duration::from_secs(30));
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<usize> = self
            .agents
            .iter()
            .filter(|a| a.child.is_some())
            .map(|a| a.node)
            .collect();
        let mut last: BTreeMap<usize, String> = BTreeMap::new();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for node in pending {
                let a = &mut self.agents[node - 1];
                if let Some(st) = a.exited() {
                    bail!(
                        "agent on node-{node} exited ({st}) while waiting for revision {rev}\n--- agent log (last 50 lines) ---\n{}",
                        tail(&a.stderr_path, 50)
                    );
                }
                match get_ready(&a.netns) {
                    Ok(Readiness {
                        status: 200,
                        ready: true,
                        revision: Some(r),
                        ..
                    }) if r == rev => {}
                    Ok(r) => {
                        last.insert(node, format!("HTTP {} {}", r.status, r.body));
                        still.push(node);
                    }
                    Err(e) => {
                        last.insert(node, format!("no answer: {e:#}"));
                        still.push(node);
                    }
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let node = pending[0];
                bail!(
                    "agent on node-{node} did not report revision {rev} within {timeout:?}; last response: {}\n--- agent log (last 50 lines) ---\n{}",
                    last.get(&node).cloned().unwrap_or_default(),
                    tail(&self.agents[node - 1].stderr_path, 50)
                );
            }
            // Polling interval for a fact (the revision), not a guess at timing.
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The agent's deny-log lines (its stdout) on `node`, parsed as JSON.
    pub fn deny_log_lines(&self, node: usize) -> Result<Vec<Value>> {
        parse_json_lines(&self.agent(node)?.stdout_path)
    }

    /// Deny-log lines of `node` after the first `*seen` ones; advances
    /// `*seen`. For streaming the log while traffic runs (the demo).
    pub fn new_deny_log_lines(&self, node: usize, seen: &mut usize) -> Result<Vec<Value>> {
        let all = self.deny_log_lines(node)?;
        let new = all.get(*seen..).map(<[Value]>::to_vec).unwrap_or_default();
        *seen = all.len().max(*seen);
        Ok(new)
    }

    /// Probes every row × column pair (`port`/`protocol`, `via`) and returns
    /// the observed matrix (`.` reachable, `X` blocked, `?` for a peer to
    /// itself). Print it with [`crate::scenario::Matrix::to_aligned_string`].
    pub fn observe_matrix(
        &self,
        rows: &[Peer],
        cols: &[Peer],
        port: u16,
        protocol: Transport,
        via: Via,
    ) -> Result<crate::scenario::Matrix> {
        use crate::scenario::{Cell, Matrix};
        let mut probes = Vec::new();
        for r in rows {
            for c in cols.iter().filter(|c| *c != r) {
                probes.push(Probe {
                    from: r.clone(),
                    to: c.clone(),
                    port,
                    protocol,
                    via,
                });
            }
        }
        let mut out = self.probe(&probes)?.into_iter();
        let mut m = Matrix {
            columns: cols.to_vec(),
            rows: Vec::new(),
        };
        for r in rows {
            let cells = cols
                .iter()
                .map(|c| {
                    if c == r {
                        return Cell::Unchecked;
                    }
                    match out.next() {
                        Some(Outcome::Reachable) => Cell::Reachable,
                        Some(Outcome::Blocked) => Cell::Blocked,
                        _ => Cell::Unchecked,
                    }
                })
                .collect();
            m.rows.push((r.clone(), cells));
        }
        Ok(m)
    }

    /// Path of the agent's stdout (JSON deny-log lines) on `node`.
    pub fn deny_log_path(&self, node: usize) -> Result<PathBuf> {
        Ok(self.agent(node)?.stdout_path.clone())
    }

    /// Path of the agent's stderr log on `node`.
    pub fn agent_log_path(&self, node: usize) -> Result<PathBuf> {
        Ok(self.agent(node)?.stderr_path.clone())
    }

    /// The last `lines` lines of the agent's log on `node`.
    pub fn agent_log_tail(&self, node: usize, lines: usize) -> String {
        self.agent(node)
            .map(|a| tail(&a.stderr_path, lines))
            .unwrap_or_default()
    }

    /// The source directory the agent on `node` reads.
    pub fn source_dir(&self, node: usize) -> Result<PathBuf> {
        Ok(self.agent(node)?.source_dir.clone())
    }

    /// The pin directory passed to the agent on `node`.
    pub fn pin_dir(&self, node: usize) -> Result<PathBuf> {
        Ok(self.agent(node)?.pin_dir.clone())
    }

    fn agent(&self, node: usize) -> Result<&NodeAgent> {
        self.agents
            .get(node.wrapping_sub(1))
            .ok_or_else(|| anyhow!("no node {node}"))
    }

    // ------------------------------------------------------------ lookups

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
    pub fn pod_spec(&self, pod: &str) -> Result<&PodPlan> {
        Ok(&self.pod_state(pod)?.spec)
    }
    pub fn pod_ip(&self, pod: &str) -> Result<IpAddr> {
        Ok(self.pod_state(pod)?.ip)
    }
    pub fn pod_netns(&self, pod: &str) -> Result<&str> {
        Ok(&self.pod_state(pod)?.netns)
    }
    /// Name of the pod's host-side veth in its node namespace.
    pub fn pod_host_veth(&self, pod: &str) -> Result<&str> {
        Ok(&self.pod_state(pod)?.host_veth)
    }
    pub fn node_netns(&self, node: usize) -> Result<&str> {
        self.node_ns
            .get(node.wrapping_sub(1))
            .map(String::as_str)
            .ok_or_else(|| anyhow!("no node {node}"))
    }
    /// Node `node`'s uplink address (its hostIP).
    pub fn node_ip(&self, node: usize) -> Result<IpAddr> {
        if node == 0 || node > self.nodes {
            bail!("no node {node}");
        }
        Ok(node_addr(self.family, node))
    }
    pub fn external_ip(&self, name: &str) -> Result<IpAddr> {
        Ok(self.external_state(name)?.ip)
    }
    pub fn external_netns(&self, name: &str) -> Result<&str> {
        Ok(&self.external_state(name)?.netns)
    }
    /// Labels of a namespace (without the automatic metadata.name label).
    pub fn namespace_labels(&self, ns: &str) -> Option<&LabelMap> {
        self.namespaces.get(ns)
    }

    fn pod_index(&self, pod: &str) -> Result<usize> {
        self.pods
            .iter()
            .position(|p| p.spec.key() == pod)
            .ok_or_else(|| anyhow!("no pod {pod}"))
    }
    fn pod_state(&self, pod: &str) -> Result<&PodState> {
        Ok(&self.pods[self.pod_index(pod)?])
    }
    fn external_state(&self, name: &str) -> Result<&ExternalState> {
        self.externals
            .iter()
            .find(|e| e.spec.name == name)
            .ok_or_else(|| anyhow!("no external @{name}"))
    }

    /// The network namespace a peer's traffic starts from.
    pub fn netns_of(&self, peer: &Peer) -> Result<String> {
        Ok(match peer {
            Peer::Pod(k) => self.pod_netns(k)?.to_string(),
            Peer::Node(i) => self.node_netns(*i)?.to_string(),
            Peer::External(n) => self.external_netns(n)?.to_string(),
        })
    }

    /// A peer's own address (pod IP, node uplink, external address).
    pub fn address_of(&self, peer: &Peer) -> Result<IpAddr> {
        match peer {
            Peer::Pod(k) => self.pod_ip(k),
            Peer::Node(i) => self.node_ip(*i),
            Peer::External(n) => self.external_ip(n),
        }
    }

    /// Where a probe from `from` to `to` connects.
    pub fn target_addr(
        &self,
        from: &Peer,
        to: &Peer,
        port: u16,
        protocol: Transport,
        via: Via,
    ) -> Result<SocketAddr> {
        let by_service =
            via == Via::Service && !matches!(from, Peer::External(_)) && matches!(to, Peer::Pod(_));
        if !by_service {
            return Ok(SocketAddr::new(self.address_of(to)?, port));
        }
        let Peer::Pod(key) = to else {
            unreachable!("checked above")
        };
        let p = self.pod_state(key)?;
        let sname = pod_service_name(&p.spec.namespace, &p.spec.name);
        let svc = self
            .service(&p.spec.namespace, &sname)
            .ok_or_else(|| anyhow!("pod {key} has no Service"))?;
        let sp = svc
            .ports
            .iter()
            .find(|sp| sp.target_port == port && sp.protocol == protocol)
            .ok_or_else(|| anyhow!("Service {sname} has no port for {protocol}/{port}"))?;
        Ok(SocketAddr::new(svc.cluster_ip, sp.port))
    }

    /// Runs probes in parallel (1 s timeout each); outcomes in input order.
    pub fn probe(&self, probes: &[Probe]) -> Result<Vec<Outcome>> {
        self.probe_with_timeout(probes, PROBE_TIMEOUT)
    }

    /// [`Cluster::probe`] with another timeout.
    pub fn probe_with_timeout(&self, probes: &[Probe], timeout: Duration) -> Result<Vec<Outcome>> {
        let raw = probes
            .iter()
            .map(|p| {
                Ok(RawProbe {
                    netns: self.netns_of(&p.from)?,
                    to: self.target_addr(&p.from, &p.to, p.port, p.protocol, p.via)?,
                    protocol: p.protocol,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        run_probes(&raw, timeout)
    }

    /// Asks whoever answers at `to` (any address, e.g. a ClusterIP) for its
    /// identity (`ns/pod` or `@name`), from inside `from`.
    pub fn whoami(
        &self,
        from: &Peer,
        to: SocketAddr,
        protocol: Transport,
    ) -> Result<Option<String>> {
        whoami(&self.netns_of(from)?, to, protocol, PROBE_TIMEOUT)
    }

    /// Opens a long-lived TCP/SCTP connection from `from` to `to` (container
    /// `port`, reached `via` the Service or the pod IP) and returns it for
    /// repeated [`Connection::roundtrip`] checks.
    pub fn connect(
        &self,
        from: &Peer,
        to: &Peer,
        port: u16,
        protocol: Transport,
        via: Via,
    ) -> Result<Connection> {
        let addr = self.target_addr(from, to, port, protocol, via)?;
        Connection::open(&self.netns_of(from)?, addr, protocol, PROBE_TIMEOUT)
    }

    /// Runs a command inside a peer's namespace (`ip netns exec`).
    pub fn exec(&self, peer: &Peer, program: &str, args: &[&str]) -> Result<String> {
        exec_in(&self.netns_of(peer)?, program, args, None)
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

/// Name of the per-pod Service: `s-<ns>-<pod>`.
pub fn pod_service_name(ns: &str, pod: &str) -> String {
    format!("s-{ns}-{pod}")
}

/// Runs `f` over items on parallel threads; first error wins.
fn parallel<T: Sync, F>(items: &[T], f: F) -> Result<()>
where
    F: Fn(&T) -> Result<()> + Sync,
{
    std::thread::scope(|s| {
        let hs: Vec<_> = items.iter().map(|it| s.spawn(|| f(it))).collect();
        let mut first = Ok(());
        for h in hs {
            let r = h.join().unwrap_or_else(|_| Err(anyhow!("worker panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}
