//! The harness's own description of a cluster to build (independent of the
//! scenario file format): families, transports, ports, pods, externals, and
//! the deterministic address plan (which IP every node, pod, external and
//! Service gets, and the name of every pod's Service).
//!
//! These are plans of what to create, not the engine's view of the objects:
//! their names ([`PodPlan`], [`PortPlan`], [`LabelMap`], [`Transport`]) differ
//! from `palisade_policy`'s `PodSpec`, `PortSpec`, `Labels` and `Protocol` so
//! that a test using both never reads one for the other.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use anyhow::{bail, Result};

/// Label map (key -> value), as in Kubernetes metadata.labels.
pub type LabelMap = BTreeMap<String, String>;

/// Address family of a whole run: every pod, node and external host gets one
/// address of this family only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
    /// Host prefix length (`32` or `128`).
    pub fn host_prefix(self) -> u8 {
        match self {
            Family::Ipv4 => 32,
            Family::Ipv6 => 128,
        }
    }
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }
    /// Kubernetes spelling (`IPv4`/`IPv6`) for ipFamilies and addressType.
    pub fn k8s(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Family {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ipv4" => Ok(Family::Ipv4),
            "ipv6" => Ok(Family::Ipv6),
            _ => bail!("unknown family {s:?} (expected ipv4 or ipv6)"),
        }
    }
}

/// The transport (L4) protocol of a port or a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Tcp,
    Udp,
    Sctp,
}

impl Transport {
    /// Kubernetes spelling: `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
            Transport::Sctp => "SCTP",
        }
    }
    /// iptables `-p` spelling.
    pub fn iptables(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Transport {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "TCP" => Ok(Transport::Tcp),
            "UDP" => Ok(Transport::Udp),
            "SCTP" => Ok(Transport::Sctp),
            _ => bail!("unknown protocol {s:?} (expected TCP, UDP or SCTP)"),
        }
    }
}

/// A port a pod (or external host) serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPlan {
    /// Container port (what policies talk about).
    pub port: u16,
    pub protocol: Transport,
    /// Container port name (named ports in policies resolve against it).
    pub name: Option<String>,
    /// Port of the pod's Service mapping to this container port.
    pub service_port: u16,
}

impl PortPlan {
    pub fn new(port: u16, protocol: Transport) -> Self {
        PortPlan {
            port,
            protocol,
            name: None,
            service_port: port,
        }
    }
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
    pub fn with_service_port(mut self, service_port: u16) -> Self {
        self.service_port = service_port;
        self
    }
    /// A name usable as a Service port name: the container port name, or a
    /// generated `p<port>-<proto>` when the port is unnamed.
    pub fn service_port_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("p{}-{}", self.port, self.protocol.iptables()))
    }
}

/// A pod to create: where it runs, its labels and the ports it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub labels: LabelMap,
    /// 1-based node index.
    pub node: usize,
    pub ports: Vec<PortPlan>,
}

impl PodPlan {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A host outside every pod network, attached to node 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalSpec {
    /// Name without the `@`.
    pub name: String,
    pub ports: Vec<PortPlan>,
}

/// A whole cluster to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    pub family: Family,
    pub nodes: usize,
    /// Namespace name -> labels (without the automatic
    /// `kubernetes.io/metadata.name`, which is always added).
    pub namespaces: BTreeMap<String, LabelMap>,
    pub pods: Vec<PodPlan>,
    pub externals: Vec<ExternalSpec>,
    /// Node number (1-based) -> labels of its Node object (for
    /// ClusterNetworkPolicy `nodes` peers), besides the automatic
    /// `kubernetes.io/hostname: node-<N>`.
    pub node_labels: BTreeMap<usize, LabelMap>,
    /// Ports every node serves itself (a server in the node's own network
    /// namespace, as a hostNetwork pod would run).
    pub node_ports: Vec<PortPlan>,
}

/// Ports of the default model: 80 and 81 over TCP, UDP and SCTP, named
/// `serve-<port>-<proto>`.
pub fn default_ports() -> Vec<PortPlan> {
    let mut v = Vec::new();
    for port in [80u16, 81] {
        for proto in [Transport::Tcp, Transport::Udp, Transport::Sctp] {
            v.push(PortPlan::new(port, proto).named(&format!("serve-{port}-{}", proto.iptables())));
        }
    }
    v
}

impl ClusterSpec {
    /// The default model of FORMAT.md: namespaces x, y, z; pods a, b, c in
    /// each labelled `pod=<name>`, round-robin over 2 nodes, each serving
    /// [`default_ports`].
    pub fn default_model(family: Family) -> Self {
        let mut namespaces = BTreeMap::new();
        let mut pods = Vec::new();
        for ns in ["x", "y", "z"] {
            namespaces.insert(ns.to_string(), LabelMap::new());
            for p in ["a", "b", "c"] {
                let idx = pods.len();
                pods.push(PodPlan {
                    namespace: ns.to_string(),
                    name: p.to_string(),
                    labels: [("pod".to_string(), p.to_string())].into(),
                    node: idx % 2 + 1,
                    ports: default_ports(),
                });
            }
        }
        ClusterSpec {
            family,
            nodes: 2,
            namespaces,
            pods,
            externals: Vec::new(),
            node_labels: Default::default(),
            node_ports: Vec::new(),
        }
    }

    /// Checks internal consistency (nodes in range, unique names, namespaces
    /// listed, limits of the address plan).
    pub fn validate(&self) -> Result<()> {
        if self.nodes == 0 || self.nodes > 200 {
            bail!("nodes must be between 1 and 200, got {}", self.nodes);
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut per_node = vec![0usize; self.nodes + 1];
        for p in &self.pods {
            if !self.namespaces.contains_key(&p.namespace) {
                bail!("pod {}: namespace {} is not listed", p.key(), p.namespace);
            }
            if p.node == 0 || p.node > self.nodes {
                bail!(
                    "pod {}: node {} out of range 1..={}",
                    p.key(),
                    p.node,
                    self.nodes
                );
            }
            if !seen.insert(p.key()) {
                bail!("pod {} listed twice", p.key());
            }
            per_node[p.node] += 1;
            if per_node[p.node] > 240 {
                bail!("more than 240 pods on node {}", p.node);
            }
        }
        let mut ext = std::collections::BTreeSet::new();
        for e in &self.externals {
            if !ext.insert(e.name.clone()) {
                bail!("external @{} listed twice", e.name);
            }
        }
        if self.externals.len() > 200 {
            bail!("at most 200 externals");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- address plan

/// Name of the per-pod Service: `s-<ns>-<pod>`.
pub fn pod_service_name(ns: &str, pod: &str) -> String {
    format!("s-{ns}-{pod}")
}

/// Node i's uplink address (10.255.0.i / fd00:255::i) — also the pod's hostIP.
pub fn node_addr(family: Family, node: usize) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(10, 255, 0, node as u8)),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x255, 0, 0, 0, 0, 0, node as u16)),
    }
}

/// Node i's pod gateway (10.100.i.1 on every host veth; fe80::1 for IPv6).
pub fn node_gateway(family: Family, node: usize) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(10, 100, node as u8, 1)),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
    }
}

/// Node i's gateway on a bridge-style node: the bridge's address, inside the
/// pod CIDR (10.100.i.1 / fd00:100:i::1).
pub fn bridge_gateway(family: Family, node: usize) -> IpAddr {
    match family {
        Family::Ipv4 => node_gateway(family, node),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x100, node as u16, 0, 0, 0, 0, 1)),
    }
}

/// Node i's pod CIDR as text (10.100.i.0/24 / fd00:100:i::/64).
pub fn pod_cidr(family: Family, node: usize) -> String {
    match family {
        Family::Ipv4 => format!("10.100.{node}.0/24"),
        Family::Ipv6 => format!("fd00:100:{node:x}::/64"),
    }
}

/// The cluster CIDR that contains every node's pod CIDR.
pub fn cluster_cidr(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "10.100.0.0/16",
        Family::Ipv6 => "fd00:100::/32",
    }
}

/// The Service CIDR.
pub fn service_cidr(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "10.96.0.0/16",
        Family::Ipv6 => "fd00:96::/112",
    }
}

/// The externals' network.
pub fn external_cidr(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "10.254.0.0/24",
        Family::Ipv6 => "fd00:254::/64",
    }
}

/// The k-th (0-based) pod on node i: 10.100.i.(10+k).
pub fn pod_addr(family: Family, node: usize, k: usize) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(10, 100, node as u8, (10 + k) as u8)),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0x100,
            node as u16,
            0,
            0,
            0,
            0,
            (10 + k) as u16,
        )),
    }
}

/// The k-th (0-based) external host: 10.254.0.(10+k).
pub fn external_addr(family: Family, k: usize) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(10, 254, 0, (10 + k) as u8)),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x254, 0, 0, 0, 0, 0, (10 + k) as u16)),
    }
}

/// The n-th (0-based) ClusterIP: 10.96.0.0 + 10 + n.
pub fn cluster_ip(family: Family, n: usize) -> IpAddr {
    match family {
        Family::Ipv4 => {
            let base = u32::from(Ipv4Addr::new(10, 96, 0, 0));
            IpAddr::V4(Ipv4Addr::from(base + 10 + n as u32))
        }
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, (10 + n) as u16)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(cidr: &str, ip: IpAddr) -> bool {
        let (net, len) = cidr.split_once('/').expect("cidr");
        let len: u32 = len.parse().expect("len");
        match (net.parse::<IpAddr>().expect("net"), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                u32::from(n) & m == u32::from(a) & m
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                u128::from(n) & m == u128::from(a) & m
            }
            _ => false,
        }
    }

    /// kube-proxy's masquerade rule (`! -s <cluster CIDR>`) relies on every
    /// pod address being inside the cluster CIDR, and externals/nodes outside.
    #[test]
    fn address_plan_is_consistent() {
        for f in [Family::Ipv4, Family::Ipv6] {
            for node in [1, 2, 9, 200] {
                for k in [0, 5, 239] {
                    let ip = pod_addr(f, node, k);
                    assert!(contains(cluster_cidr(f), ip), "{f} {ip}");
                    assert!(contains(&pod_cidr(f, node), ip), "{f} {ip}");
                    assert!(!contains(&pod_cidr(f, node + 1), ip), "{f} {ip}");
                }
                assert!(!contains(cluster_cidr(f), node_addr(f, node)));
            }
            for k in [0, 199] {
                let e = external_addr(f, k);
                assert!(contains(external_cidr(f), e));
                assert!(!contains(cluster_cidr(f), e));
            }
            assert!(contains(service_cidr(f), cluster_ip(f, 0)));
            assert!(!contains(cluster_cidr(f), cluster_ip(f, 0)));
        }
    }
}
