//! Test helpers: build clusters, compile every node, and evaluate a connection both
//! the way the datapath does (encoded maps, LPM lookup) and with the reference.
#![allow(
    dead_code,
    reason = "each test crate that includes this module uses part of it"
)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use palisade_common::{Reason, DIR_EGRESS, DIR_INGRESS};
use palisade_policy::model::{NamedPort, PodSpec};
use palisade_policy::{
    compile, encode, parse_yaml_documents, reference, ClusterIndex, MapSet, NamespaceSpec,
    NodeInfo, Object, PodKey, Protocol,
};

pub const NODES: [(&str, [&str; 2]); 2] = [
    ("node-a", ["172.18.0.2", "fd00:18::2"]),
    ("node-b", ["172.18.0.3", "fd00:18::3"]),
];

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

pub fn node_addrs(name: &str) -> Vec<IpAddr> {
    NODES
        .iter()
        .filter(|(n, _)| *n == name)
        .flat_map(|(_, a)| a.iter().map(|s| ip(s)))
        .collect()
}

pub fn ns(name: &str, labels: &[(&str, &str)]) -> Object {
    Object::Namespace(NamespaceSpec::new(name, labels_of(labels)))
}

pub fn labels_of(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn pod(ns: &str, name: &str, labels: &[(&str, &str)], node: &str, ips: &[&str]) -> PodSpec {
    PodSpec {
        namespace: ns.to_string(),
        name: name.to_string(),
        labels: labels_of(labels),
        node_name: Some(node.to_string()),
        host_network: false,
        ips: ips.iter().map(|s| ip(s)).collect(),
        named_ports: Vec::new(),
    }
}

/// A pod labelled `app: <app>`, as an object.
pub fn app_pod(ns: &str, name: &str, app: &str, node: &str, ips: &[&str]) -> Object {
    Object::Pod(pod(ns, name, &[("app", app)], node, ips))
}

/// An `app: web` pod serving its named port `http` on TCP `port`.
pub fn web_pod(ns: &str, node: &str, ips: &[&str], port: u16) -> Object {
    Object::Pod(pod(ns, "web", &[("app", "web")], node, ips).port("http", Protocol::Tcp, port))
}

pub trait PodExt {
    fn port(self, name: &str, proto: Protocol, port: u16) -> Self;
    fn host_network(self) -> Self;
}

impl PodExt for PodSpec {
    fn port(mut self, name: &str, protocol: Protocol, port: u16) -> Self {
        self.named_ports.push(NamedPort {
            name: name.to_string(),
            protocol,
            port,
        });
        self
    }
    fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }
}

/// A NetworkPolicy from its spec (YAML at column 0).
pub fn np(ns: &str, name: &str, spec: &str) -> Object {
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    let text = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  namespace: {ns}\n  name: {name}\nspec:\n{body}"
    );
    let mut v = parse_yaml_documents(&text, "test");
    assert_eq!(v.len(), 1, "{text}");
    v.remove(0).expect("policy parses")
}

pub struct World {
    pub index: ClusterIndex,
    pub maps: BTreeMap<String, (MapSet, BTreeMap<PodKey, u32>)>,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    pub fn new() -> Self {
        Self {
            index: ClusterIndex::new(),
            maps: BTreeMap::new(),
        }
    }

    pub fn with(objs: Vec<Object>) -> Self {
        let mut w = Self::new();
        for o in objs {
            w.index.apply(o);
        }
        w.build();
        w
    }

    pub fn apply(&mut self, o: Object) {
        self.index.apply(o);
        self.build();
    }

    /// Compile and encode every node.
    pub fn build(&mut self) {
        self.maps.clear();
        let mut next = 1u32;
        for (node, _) in NODES {
            let d = compile(
                &self.index,
                &NodeInfo {
                    name: node.to_string(),
                },
            );
            let ids: BTreeMap<PodKey, u32> = d
                .endpoints
                .keys()
                .map(|k| {
                    next += 1;
                    (k.clone(), next * 7)
                })
                .collect();
            let m = encode(&d, &ids, false);
            self.maps.insert(node.to_string(), (m, ids));
        }
    }

    fn endpoint_of(&self, addr: IpAddr) -> Option<(&MapSet, palisade_common::Endpoint, String)> {
        let p = self.index.pod_by_ip(addr)?;
        let node = p.node_name.clone()?;
        let (m, _) = self.maps.get(&node)?;
        let ep = *m.endpoints.get(&p.key())?;
        Some((m, ep, node))
    }

    /// The datapath's decision: egress at the source endpoint (if a local pod of
    /// some node), then the node rule or ingress at the destination endpoint.
    pub fn datapath(&self, src: IpAddr, dst: IpAddr, proto: u8, port: Option<u16>) -> bool {
        if let Some((m, ep, _)) = self.endpoint_of(src) {
            if !m.lookup(&ep, DIR_EGRESS, dst, proto, port) {
                return false;
            }
        }
        if let Some((m, ep, node)) = self.endpoint_of(dst) {
            if node_addrs(&node).contains(&src) {
                return true;
            }
            if !m.lookup(&ep, DIR_INGRESS, src, proto, port) {
                return false;
            }
        }
        true
    }

    /// The datapath's reason for dropping the packet (`None`: allowed).
    pub fn datapath_reason(
        &self,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        port: Option<u16>,
    ) -> Option<Reason> {
        if let Some((m, ep, _)) = self.endpoint_of(src) {
            if let Err(r) = m.judge(&ep, DIR_EGRESS, dst, proto, port) {
                return Some(r);
            }
        }
        let (m, ep, node) = self.endpoint_of(dst)?;
        if node_addrs(&node).contains(&src) {
            return None;
        }
        m.judge(&ep, DIR_INGRESS, src, proto, port).err()
    }

    /// The reason the datapath must give for the reference's denial: the tier
    /// that decided (`None`: allowed).
    pub fn reference_reason(
        &self,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        port: Option<u16>,
    ) -> Option<Reason> {
        let packet = reference::Packet {
            src,
            dst,
            proto,
            port,
        };
        let (_, by) = reference::denial(&self.index, &node_addrs, &packet)?;
        Some(match by {
            reference::DecidedBy::Admin => Reason::AdminDeny,
            reference::DecidedBy::Baseline => Reason::BaselineDeny,
            _ => Reason::NoPolicyAllows,
        })
    }

    pub fn reference(&self, src: IpAddr, dst: IpAddr, proto: u8, port: Option<u16>) -> bool {
        reference::allowed_port(&self.index, &node_addrs, src, dst, proto, port)
    }

    /// Both evaluations, asserted equal.
    pub fn allowed(&self, src: &str, dst: &str, proto: u8, port: Option<u16>) -> bool {
        let (s, d) = (ip(src), ip(dst));
        let a = self.datapath(s, d, proto, port);
        let b = self.reference(s, d, proto, port);
        assert_eq!(
            a, b,
            "datapath {a} vs reference {b} for {src} -> {dst} proto {proto} port {port:?}"
        );
        a
    }

    pub fn tcp(&self, src: &str, dst: &str, port: u16) -> bool {
        self.allowed(src, dst, palisade_common::PROTO_TCP, Some(port))
    }

    pub fn udp(&self, src: &str, dst: &str, port: u16) -> bool {
        self.allowed(src, dst, palisade_common::PROTO_UDP, Some(port))
    }
}

/// A ClusterNetworkPolicy from its spec (YAML at column 0).
pub fn cnp(name: &str, spec: &str) -> Object {
    let mut v = parse_yaml_documents(&cnp_text(name, spec), "test");
    assert_eq!(v.len(), 1);
    let o = v.remove(0).expect("cluster policy parses");
    if let Some(e) = o.validation_error() {
        panic!("cluster policy {name} is invalid: {e}");
    }
    o
}

/// The manifest of a ClusterNetworkPolicy with `spec` (YAML at column 0).
pub fn cnp_text(name: &str, spec: &str) -> String {
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n{body}"
    )
}

/// A Node with labels and the addresses of `NODES` (every node also carries
/// `kubernetes.io/hostname`).
pub fn node(name: &str, labels: &[(&str, &str)]) -> Object {
    let mut l = labels_of(labels);
    l.insert("kubernetes.io/hostname".to_string(), name.to_string());
    Object::Node(palisade_policy::NodeSpec {
        name: name.to_string(),
        labels: l,
        addresses: node_addrs(name),
    })
}
