//! What compilation produces for one node ([`Desired`]): per local pod whether
//! it is isolated in each direction and, per direction, the allowed peers as
//! [`Grant`]s (a network minus its excepts, with a protocol/port set); and the
//! Service frontends whose egress decision the datapath defers until after DNAT.
//! Still in host terms; [`mod@crate::encode`] turns it into map entries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::object::PodKey;
use crate::portset::PortSet;

/// Peers `net` minus `except`, allowed on `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    pub net: IpNet,
    pub except: Vec<IpNet>,
    pub ports: PortSet,
}

/// Everything allowed in one direction: the union of the grants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerRules {
    pub grants: Vec<Grant>,
}

impl PeerRules {
    /// Whether `peer` on `(proto, port)` is allowed by some grant (host-side
    /// semantics, used in tests against the encoded form).
    pub fn allows(&self, peer: IpAddr, proto: u8, port: Option<u16>) -> bool {
        self.grants.iter().any(|g| {
            g.net.contains(&peer)
                && !g.except.iter().any(|e| e.contains(&peer))
                && g.ports.allows(proto, port)
        })
    }
}

/// What one local pod needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredEndpoint {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    /// Meaningful only when isolated in that direction.
    pub ingress: PeerRules,
    pub egress: PeerRules,
    /// `"ns/name"` of the policies selecting the pod per direction (invalid ones
    /// included: they isolate and allow nothing).
    pub ingress_policies: Vec<String>,
    pub egress_policies: Vec<String>,
    /// Names of the ClusterNetworkPolicies with rules applying to the pod per
    /// direction, in evaluation order. When non-empty the direction is isolated and
    /// its grants are the tiers' final result ([`mod@crate::tiers`]).
    pub ingress_cluster_policies: Vec<String>,
    pub egress_cluster_policies: Vec<String>,
}

/// A Service frontend whose egress decision the datapath defers until after DNAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceFrontend {
    pub ip: IpAddr,
    pub proto: u8,
    pub port: u16,
}

/// The desired state of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Local pods (on this node, not hostNetwork, with an address).
    pub endpoints: BTreeMap<PodKey, DesiredEndpoint>,
    /// ClusterIPs x service ports, all namespaces.
    pub services: BTreeSet<ServiceFrontend>,
}
