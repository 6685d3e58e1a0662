//! The typed projections of the core objects the engine reads (Namespace, Pod,
//! Service, EndpointSlice) and the small vocabulary every policy kind shares
//! ([`Protocol`], [`Direction`]). Only validated values get here; conversion is
//! in [`mod@crate::model::k8s`].

use std::fmt;
use std::net::IpAddr;

use crate::object::{FieldError, PodKey};
use crate::selector::Labels;

/// The label every namespace carries (API: set by the apiserver since 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// L4 protocols NetworkPolicy ports can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => palisade_common::PROTO_TCP,
            Protocol::Udp => palisade_common::PROTO_UDP,
            Protocol::Sctp => palisade_common::PROTO_SCTP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            palisade_common::PROTO_TCP => Some(Protocol::Tcp),
            palisade_common::PROTO_UDP => Some(Protocol::Udp),
            palisade_common::PROTO_SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// API: protocol defaults to TCP; names are case-sensitive upper case.
    pub(crate) fn parse(p: Option<&str>, field: &str) -> Result<Self, FieldError> {
        match p {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some("SCTP") => Ok(Protocol::Sctp),
            Some(other) => Err(FieldError::new(
                field,
                format!("unknown protocol {other:?} (expected TCP, UDP or SCTP)"),
            )),
        }
    }
}

/// A direction of a policy decision, seen from the selected pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// `palisade_common::DIR_*`.
    pub fn as_u8(self) -> u8 {
        match self {
            Direction::Ingress => palisade_common::DIR_INGRESS,
            Direction::Egress => palisade_common::DIR_EGRESS,
        }
    }

    pub fn from_u8(d: u8) -> Option<Self> {
        match d {
            palisade_common::DIR_INGRESS => Some(Direction::Ingress),
            palisade_common::DIR_EGRESS => Some(Direction::Egress),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        })
    }
}

/// A namespace: name and labels (always including `kubernetes.io/metadata.name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceSpec {
    pub name: String,
    pub labels: Labels,
}

impl NamespaceSpec {
    /// Adds the `kubernetes.io/metadata.name` label when missing (API: the apiserver
    /// always sets it, so selectors may rely on it).
    pub fn new(name: impl Into<String>, mut labels: Labels) -> Self {
        let name = name.into();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
        Self { name, labels }
    }
}

/// A named container port (for named-port resolution).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// The projection of a Pod the engine reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node_name: Option<String>,
    pub host_network: bool,
    /// `status.podIPs` (or `podIP`), at most one per family, in API order. Empty
    /// while the pod has no address yet, and for pods in a terminal phase (their
    /// address may already belong to another pod).
    pub ips: Vec<IpAddr>,
    /// Named container ports (containers and init containers).
    pub named_ports: Vec<NamedPort>,
}

impl PodSpec {
    pub fn key(&self) -> PodKey {
        PodKey::new(&self.namespace, &self.name)
    }

    /// API: hostNetwork pods are neither selected nor pod peers; pods without an
    /// address are skipped until they get one.
    pub fn is_policy_pod(&self) -> bool {
        !self.host_network && !self.ips.is_empty()
    }

    pub fn ipv4(&self) -> Option<std::net::Ipv4Addr> {
        self.ips.iter().find_map(|ip| match ip {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
    }

    pub fn ipv6(&self) -> Option<std::net::Ipv6Addr> {
        self.ips.iter().find_map(|ip| match ip {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        })
    }

    /// Resolve a named port of `protocol` on this pod (API: named ports resolve
    /// against the destination pod's container ports).
    pub fn resolve_named_port(
        &self,
        name: &str,
        protocol: Protocol,
    ) -> impl Iterator<Item = u16> + '_ {
        let name = name.to_string();
        self.named_ports
            .iter()
            .filter(move |p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// A Service frontend set: ClusterIPs times ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<(Protocol, u16)>,
    /// The name of each named port (API: it matches the EndpointSlice port
    /// that carries its target); for explanations only.
    pub port_names: Vec<(Protocol, u16, String)>,
}

/// An EndpointSlice, kept for explanations only: the datapath decides service
/// traffic after DNAT, so the compiler never reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSliceSpec {
    pub namespace: String,
    pub name: String,
    pub service: Option<String>,
    pub addresses: Vec<IpAddr>,
    /// `ports[]`: name (empty when unnamed), protocol, the backends' port.
    pub ports: Vec<(String, Protocol, u16)>,
}
