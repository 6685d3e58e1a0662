//! What the reference evaluator judges and what it answers: the [`Packet`] (the
//! first packet of a new connection), the [`Verdict`] of one direction at one pod
//! and what decided it, and which pods own an address.

use std::net::IpAddr;

use crate::model::{Action, Direction, PodSpec};

/// The first packet of a new connection, as a verdict sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Destination port; `None` for a packet without ports (a non-first fragment,
    /// ICMP).
    pub port: Option<u16>,
}

impl Packet {
    /// The other side, seen from the pod judging in `dir`: the source for
    /// ingress, the destination for egress.
    pub fn peer(&self, dir: Direction) -> IpAddr {
        match dir {
            Direction::Ingress => self.src,
            Direction::Egress => self.dst,
        }
    }

    /// The same packet with destination port `port`.
    pub fn with_port(self, port: Option<u16>) -> Self {
        Self { port, ..self }
    }
}

/// Whether `p` is a policy pod with address `ip` (not hostNetwork).
pub(crate) fn owns(p: &PodSpec, ip: IpAddr) -> bool {
    !p.host_network && p.ips.contains(&ip)
}

/// What decided one direction of a connection at one pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DecidedBy {
    /// Ingress from the pod's own node: allowed before any policy.
    Node,
    /// A rule of an Admin-tier ClusterNetworkPolicy.
    Admin,
    /// NetworkPolicy isolates the pod in this direction.
    NetworkPolicy,
    /// A rule of a Baseline-tier ClusterNetworkPolicy.
    Baseline,
    /// Nothing decided: allowed.
    Default,
}

impl DecidedBy {
    /// Whether a drop the datapath reports as `reason` is this tier's: the tier
    /// reasons (`admin-deny`, `baseline-deny`, `no-policy-allows`) name one;
    /// any other reason (fail-closed, fragment, ...) agrees with every tier.
    pub fn agrees_with_drop(self, reason: palisade_common::Reason) -> bool {
        use palisade_common::Reason;
        match reason {
            Reason::AdminDeny => self == DecidedBy::Admin,
            Reason::BaselineDeny => self == DecidedBy::Baseline,
            Reason::NoPolicyAllows => self == DecidedBy::NetworkPolicy,
            _ => true,
        }
    }

    /// The name used in logs (`tier` field).
    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Node => "node",
            DecidedBy::Admin => "admin",
            DecidedBy::NetworkPolicy => "networkpolicy",
            DecidedBy::Baseline => "baseline",
            DecidedBy::Default => "default",
        }
    }
}

/// The ClusterNetworkPolicy rule that decided.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef {
    pub policy: String,
    /// Index in the policy's `ingress` or `egress` list.
    pub rule_index: usize,
    pub rule_name: Option<String>,
    /// The action taken (a fail-closed rule's is `Deny`).
    pub action: Action,
}

/// The decision of one direction at one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub decided_by: DecidedBy,
    /// Set when a ClusterNetworkPolicy rule decided.
    pub rule: Option<RuleRef>,
    /// When NetworkPolicy decided: `"ns/name"` of the policies isolating the pod.
    pub policies: Vec<String>,
    /// When NetworkPolicy allowed: those of them with a rule allowing the packet.
    pub allowed_by: Vec<String>,
}
