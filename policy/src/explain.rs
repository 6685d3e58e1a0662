//! Explanations: for a connection (or one side of it), what decided and how — the
//! tier (`admin`, `networkpolicy`, `baseline`, `default`, or `node` for ingress
//! from the pod's own node), the verdict, and for a ClusterNetworkPolicy the
//! policy, rule index and rule name (for NetworkPolicy: the isolating policies).
//!
//! Pure functions over the index, built on the reference evaluator's verdicts,
//! which the differential tests hold equal to the compiled maps the datapath
//! reads; so the explanation of a drop is the reason the datapath dropped it.
//! The agent enriches deny events with [`explain_direction`] (the event names the
//! endpoint and direction); tools answer "why" with [`explain`].

use std::fmt;
use std::net::IpAddr;

use crate::index::ClusterIndex;
use crate::model::{Direction, PodSpec};
use crate::object::PodKey;
use crate::reference::{self, owns, DecidedBy, Packet, Verdict};

/// One side of a connection: the decision at one pod in one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideExplanation {
    pub pod: PodKey,
    pub direction: Direction,
    pub verdict: Verdict,
}

/// Both sides of a connection `src -> dst` (each judged on its own: egress at
/// the pods owning `src`, ingress at the pods owning `dst`; an address that is no
/// policy pod has no side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub allowed: bool,
    pub egress: Vec<SideExplanation>,
    pub ingress: Vec<SideExplanation>,
}

impl Explanation {
    pub fn sides(&self) -> impl Iterator<Item = &SideExplanation> {
        self.egress.iter().chain(&self.ingress)
    }

    /// The first side that drops the connection (egress before ingress).
    pub fn denied_by(&self) -> Option<&SideExplanation> {
        self.sides().find(|s| !s.verdict.allowed)
    }
}

/// Explain the connection `packet.src -> packet.dst`.
pub fn explain(
    index: &ClusterIndex,
    node_addrs: &dyn Fn(&str) -> Vec<IpAddr>,
    packet: &Packet,
) -> Explanation {
    let side = |p: &PodSpec, dir| SideExplanation {
        pod: p.key(),
        direction: dir,
        verdict: explain_direction(index, node_addrs, p, dir, packet),
    };
    let egress: Vec<SideExplanation> = index
        .pods()
        .filter(|p| owns(p, packet.src))
        .map(|p| side(p, Direction::Egress))
        .collect();
    let ingress: Vec<SideExplanation> = index
        .pods()
        .filter(|p| owns(p, packet.dst))
        .map(|p| side(p, Direction::Ingress))
        .collect();
    let allowed = egress.iter().chain(&ingress).all(|s| s.verdict.allowed);
    Explanation {
        allowed,
        egress,
        ingress,
    }
}

/// The decision at `pod` for `packet` in `dir` (egress: `pod` is the source;
/// ingress: the destination, and connections from its own node are allowed first).
pub fn explain_direction(
    index: &ClusterIndex,
    node_addrs: &dyn Fn(&str) -> Vec<IpAddr>,
    pod: &PodSpec,
    dir: Direction,
    packet: &Packet,
) -> Verdict {
    match dir {
        Direction::Egress => reference::verdict(index, pod, dir, packet),
        Direction::Ingress => reference::ingress_verdict(index, node_addrs, pod, packet),
    }
}

impl Verdict {
    /// The `tier` field of a log line.
    pub fn tier(&self) -> &'static str {
        self.decided_by.as_str()
    }
}

impl fmt::Display for Verdict {
    /// `denied by admin clusternetworkpolicy deny-dev rule 0 (from-dev)`,
    /// `allowed by networkpolicy prod/allow-web`, `allowed by default`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = if self.allowed { "allowed" } else { "denied" };
        match (&self.rule, self.decided_by) {
            (Some(r), by) => {
                write!(
                    f,
                    "{v} by {} clusternetworkpolicy {} rule {}",
                    by.as_str(),
                    r.policy,
                    r.rule_index
                )?;
                if let Some(n) = &r.rule_name {
                    write!(f, " ({n})")?;
                }
                write!(f, ": {}", r.action.as_str())
            }
            (None, DecidedBy::NetworkPolicy) if self.policies.is_empty() => {
                write!(f, "{v} by networkpolicy")
            }
            (None, DecidedBy::NetworkPolicy) => {
                write!(f, "{v} by networkpolicy {}", self.policies.join(", "))
            }
            (None, DecidedBy::Node) => write!(f, "{v}: from the pod's own node"),
            (None, by) => write!(f, "{v} by {}", by.as_str()),
        }
    }
}

impl fmt::Display for SideExplanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = match self.direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        write!(f, "{d} at {}: {}", self.pod, self.verdict)
    }
}
