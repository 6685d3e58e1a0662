//! NetworkPolicy (`networking.k8s.io/v1`) as the engine reads it: a validated
//! [`Policy`], or an [`InvalidPolicy`] kept so that the pods it selects fail
//! closed instead of the policy being silently forgotten, and which pods a policy
//! selects in which direction. Conversion and validation are in
//! [`mod@crate::model::k8s_network_policy`].

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::types::{Direction, PodSpec, Protocol};
use crate::object::{Kind, ModelError, ObjectRef};
use crate::selector::LabelSelector;

/// Effective `policyTypes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyTypes {
    pub ingress: bool,
    pub egress: bool,
}

impl PolicyTypes {
    pub fn has(self, d: Direction) -> bool {
        match d {
            Direction::Ingress => self.ingress,
            Direction::Egress => self.egress,
        }
    }
}

/// A NetworkPolicy, valid or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicySpec {
    pub namespace: String,
    pub name: String,
    pub body: PolicyBody,
}

impl NetworkPolicySpec {
    /// `"namespace/name"`, the form used in logs and `policies_selecting`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(Kind::NetworkPolicy, &self.namespace, &self.name)
    }

    /// Whether this policy selects `pod` for direction `d` (it is in the pod's
    /// namespace, its podSelector matches, and `d` is in its effective policyTypes).
    /// An invalid policy selects like a valid one (fail closed).
    pub fn selects(&self, pod: &PodSpec, d: Direction) -> bool {
        if pod.namespace != self.namespace || !pod.is_policy_pod() {
            return false;
        }
        match &self.body {
            PolicyBody::Valid(p) => p.types.has(d) && p.pod_selector.matches(&pod.labels),
            PolicyBody::Invalid(inv) => {
                inv.types.has(d)
                    && inv
                        .pod_selector
                        .as_ref()
                        .is_none_or(|s| s.matches(&pod.labels))
            }
        }
    }

    /// The validation error of an invalid policy.
    pub fn error(&self) -> Option<&ModelError> {
        match &self.body {
            PolicyBody::Valid(_) => None,
            PolicyBody::Invalid(inv) => Some(&inv.error),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyBody {
    Valid(Policy),
    Invalid(InvalidPolicy),
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub pod_selector: LabelSelector,
    /// Effective policyTypes (defaulted as the API server does).
    pub types: PolicyTypes,
    /// `policyTypes` as written; `None` when omitted or empty. Kept so that the
    /// reference evaluator can apply the defaulting rule on its own.
    pub declared_types: Option<PolicyTypes>,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

impl Policy {
    /// Rules that apply in `d` (API: rules of a direction not in policyTypes are
    /// ignored).
    pub fn rules(&self, d: Direction) -> &[Rule] {
        if !self.types.has(d) {
            return &[];
        }
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// What is kept of a policy that failed validation: enough to fail closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidPolicy {
    /// `None` when the podSelector itself is invalid: then the policy is taken to
    /// select every pod of its namespace (fail closed rather than open).
    pub pod_selector: Option<LabelSelector>,
    /// The directions the policy would isolate; both when `policyTypes` itself is
    /// unreadable.
    pub types: PolicyTypes,
    pub error: ModelError,
}

/// One ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Empty: all peers (API: `from`/`to` empty or missing matches all).
    pub peers: Vec<Peer>,
    /// Empty: all ports and all protocols (API: `ports` empty or missing).
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// podSelector and/or namespaceSelector (API: both in one peer = AND).
    Pods {
        namespaces: NamespaceScope,
        /// Absent podSelector = all pods of the selected namespaces.
        pods: LabelSelector,
    },
    IpBlock(IpBlock),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NamespaceScope {
    /// API: podSelector alone = the policy's own namespace.
    Own,
    Selector(LabelSelector),
}

/// `cidr` minus `except`, networks normalised (API: host bits set = its network).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl IpBlock {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: Option<PortRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortRef {
    /// Inclusive range; `first == last` without endPort.
    Numbers {
        first: u16,
        last: u16,
    },
    Named(String),
}

/// Parse a CIDR; API: host bits set means the network (`10.0.0.1/8` = `10.0.0.0/8`).
/// A bare address is not accepted (the apiserver requires the prefix length).
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let net: IpNet = s.parse().ok()?;
    Some(net.trunc())
}
