//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`): the validated model
//! of one object, the wire type the Kubernetes source and the YAML reader
//! deserialize, and the parts of the API's semantics that belong to the object
//! itself (which pods a subject selects, what a rule does once the fail-closed
//! and unsupported-peer rules are applied), and the Node as `nodes` peers see it.
//! Parsing and validation of the spec live in
//! [`mod@crate::model::cluster_policy_parse`], conversion of the wire type in
//! [`mod@crate::model::k8s`]; evaluation in the reference evaluator and in
//! [`mod@crate::tiers`].
//!
//! An object that fails validation is kept as [`ClusterPolicyBody::Invalid`] only
//! so that its error can be reported: the index treats it as if the API server had
//! never admitted it (a previously admitted version stays in force, nothing else
//! changes).
//!
//! Choices where the API leaves room (each is tested):
//! - Same tier and priority: ordered by name (byte order), so the outcome is stable.
//! - A peer with no field set (a peer type this version does not know, pruned by the
//!   API server): API "fail closed": an `Accept` rule ignores that peer; a `Deny` or
//!   `Pass` rule becomes a `Deny` of every peer (its protocols still apply).
//! - `domainNames` needs DNS awareness and is not supported: an `Accept` rule with
//!   such a peer is skipped (which can only deny more); the API allows domainNames
//!   only in `Accept` rules, so a `Deny`/`Pass` rule with one fails closed like an
//!   unknown peer. Both are reported on the object
//!   ([`ErrorKind::Unsupported`](crate::object::ErrorKind::Unsupported)).
//! - `tcp: {}` (a protocol without `destinationPort`) is rejected, as the API's
//!   schema does (`minProperties: 1`); every port of a protocol is `range: {start:
//!   1, end: 65535}`.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::types::{Direction, PodSpec, Protocol};
use crate::object::{Kind, ModelError, ObjectRef};
use crate::selector::{LabelSelector, Labels};

/// `apiVersion` of the objects this module reads.
pub const API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";
/// API: `spec.ingress` / `spec.egress` hold at most 25 rules.
pub const MAX_RULES: usize = 25;
/// API: `from` / `to` hold 1 to 25 peers; `protocols`, `networks` and
/// `domainNames` 1 to 25 entries.
pub const MAX_ITEMS: usize = 25;
/// API: `priority` is 0..=1000.
pub const MAX_PRIORITY: u16 = 1000;
/// API: a rule name is at most 100 characters.
pub const MAX_RULE_NAME: usize = 100;

/// API: `spec.tier`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Evaluated before NetworkPolicy.
    Admin,
    /// Evaluated after NetworkPolicy, for what it leaves undecided.
    Baseline,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

/// API: a rule's `action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Allowed; no further rule of this direction is evaluated.
    Accept,
    /// Dropped; no further rule of this direction is evaluated.
    Deny,
    /// Skip the rest of the tier, continue with the next one.
    Pass,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

/// A ClusterNetworkPolicy, valid or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNetworkPolicySpec {
    pub name: String,
    pub body: ClusterPolicyBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterPolicyBody {
    Valid(ClusterPolicy),
    /// Failed validation: changes nothing, kept for its error.
    Invalid(ModelError),
}

impl ClusterNetworkPolicySpec {
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(Kind::ClusterNetworkPolicy, "", &self.name)
    }

    /// The policy, when valid.
    pub fn valid(&self) -> Option<&ClusterPolicy> {
        match &self.body {
            ClusterPolicyBody::Valid(p) => Some(p),
            ClusterPolicyBody::Invalid(_) => None,
        }
    }

    /// The validation error of an invalid object.
    pub fn error(&self) -> Option<&ModelError> {
        match &self.body {
            ClusterPolicyBody::Valid(_) => None,
            ClusterPolicyBody::Invalid(e) => Some(e),
        }
    }

    /// The validation error, or for a valid object the report of the rules it has
    /// that are not supported
    /// ([`ErrorKind::Unsupported`](crate::object::ErrorKind::Unsupported)).
    pub fn report(&self) -> Option<&ModelError> {
        match &self.body {
            ClusterPolicyBody::Valid(p) => p.unsupported.as_ref(),
            ClusterPolicyBody::Invalid(e) => Some(e),
        }
    }

    pub(crate) fn set_origin(&mut self, origin: &str) {
        match &mut self.body {
            ClusterPolicyBody::Valid(p) => {
                if let Some(e) = p.unsupported.take() {
                    p.unsupported = Some(e.with_origin(origin));
                }
            }
            ClusterPolicyBody::Invalid(e) => *e = e.clone().with_origin(origin),
        }
    }
}

/// A validated ClusterNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPolicy {
    pub tier: Tier,
    pub priority: u16,
    pub subject: Subject,
    /// In precedence order (API: the order they are written in).
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
    /// Rules that are not (fully) supported, reported once per change of the
    /// object; how each is treated is in the module docs.
    pub unsupported: Option<ModelError>,
}

impl ClusterPolicy {
    pub fn rules(&self, d: Direction) -> &[ClusterRule] {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// API: `spec.subject`, exactly one of `namespaces` and `pods`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// Every pod of the matching namespaces.
    Namespaces(LabelSelector),
    /// Pods matching `pods` in namespaces matching `namespaces` (AND).
    Pods {
        namespaces: LabelSelector,
        pods: LabelSelector,
    },
}

impl Subject {
    /// Whether the subject selects `pod`, whose namespace has `ns_labels`. API:
    /// host-network pods are never selected; pods without an address are not
    /// endpoints.
    pub fn selects(&self, pod: &PodSpec, ns_labels: &Labels) -> bool {
        if !pod.is_policy_pod() {
            return false;
        }
        match self {
            Subject::Namespaces(ns) => ns.matches(ns_labels),
            Subject::Pods { namespaces, pods } => {
                namespaces.matches(ns_labels) && pods.matches(&pod.labels)
            }
        }
    }
}

/// One ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterRule {
    pub name: Option<String>,
    pub action: Action,
    /// `from` / `to`: 1 to 25 peers, any of which may match (OR).
    pub peers: Vec<ClusterPeer>,
    /// Empty: every protocol and port, ICMP too (API: protocols unspecified).
    pub protocols: Vec<ProtocolMatch>,
}

/// What a rule does once the API's fail-closed rules are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleEffect {
    /// Not evaluated at all (an `Accept` rule with `domainNames`: unsupported).
    Skipped,
    /// `action` for the peers the rule's peers match.
    Peers(Action),
    /// API fail closed: a `Deny`/`Pass` rule with a peer of no known type is a
    /// `Deny` of every peer (protocols still apply).
    DenyEveryPeer,
}

impl ClusterRule {
    /// The rule as it is evaluated (module docs: unknown and `domainNames` peers).
    pub fn effect(&self) -> RuleEffect {
        let unknown = self
            .peers
            .iter()
            .any(|p| matches!(p, ClusterPeer::Empty | ClusterPeer::DomainNames(_)));
        match (self.action, unknown) {
            (_, false) => RuleEffect::Peers(self.action),
            (Action::Accept, true) => {
                if self
                    .peers
                    .iter()
                    .any(|p| matches!(p, ClusterPeer::DomainNames(_)))
                {
                    RuleEffect::Skipped
                } else {
                    // An unknown peer of an Accept rule matches nothing; the
                    // others still apply.
                    RuleEffect::Peers(Action::Accept)
                }
            }
            (Action::Deny | Action::Pass, true) => RuleEffect::DenyEveryPeer,
        }
    }

    /// Whether the rule has a `destinationNamedPort` entry.
    pub fn has_named_port(&self) -> bool {
        self.protocols
            .iter()
            .any(|p| matches!(p, ProtocolMatch::Named(_)))
    }
}

/// A peer. Ingress rules have only `Namespaces` and `Pods` (API).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClusterPeer {
    /// Every pod of the matching namespaces (not host-network pods).
    Namespaces(LabelSelector),
    /// Pods matching `pods` in namespaces matching `namespaces`.
    Pods {
        namespaces: LabelSelector,
        pods: LabelSelector,
    },
    /// Egress: CIDRs (host bits cleared); API: they match pod addresses too.
    Networks(Vec<IpNet>),
    /// Egress: the addresses of the matching Nodes (InternalIP / ExternalIP).
    Nodes(LabelSelector),
    /// Egress: not supported (module docs).
    DomainNames(Vec<String>),
    /// No field set (module docs: fail closed).
    Empty,
}

/// One `protocols` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProtocolMatch {
    /// `tcp` / `udp` / `sctp` with `destinationPort` (`number`: first == last).
    Ports {
        protocol: Protocol,
        first: u16,
        last: u16,
    },
    /// `destinationNamedPort`: resolved against the destination pod's container
    /// ports (ingress: the selected pod; egress: the destination pod), any of
    /// TCP/UDP/SCTP as the container port says.
    Named(String),
}

/// A Node as `nodes` peers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub labels: Labels,
    /// `status.addresses` of type InternalIP and ExternalIP, deduplicated.
    pub addresses: Vec<IpAddr>,
}

/// The wire form of a ClusterNetworkPolicy, as the API server and manifests carry
/// it. The spec stays untyped here so that
/// [`mod@crate::model::cluster_policy_parse`] can name the exact field path of every
/// error, unknown fields included.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterNetworkPolicy {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_yaml::Value>,
    /// Written by implementations; not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_yaml::Value>,
}

impl k8s_openapi::Resource for ClusterNetworkPolicy {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = "policy.networking.k8s.io";
    const KIND: &'static str = "ClusterNetworkPolicy";
    const VERSION: &'static str = "v1alpha2";
    const URL_PATH_SEGMENT: &'static str = "clusternetworkpolicies";
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::ListableResource for ClusterNetworkPolicy {
    const LIST_KIND: &'static str = "ClusterNetworkPolicyList";
}

impl k8s_openapi::Metadata for ClusterNetworkPolicy {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
