//! The model at the edge: small typed specs of the objects the engine reads
//! (Namespace, Pod, Service, EndpointSlice, NetworkPolicy; ClusterNetworkPolicy and
//! Node in [`mod@crate::cluster_policy`]), their conversion from
//! k8s-openapi objects and from YAML manifests, and validation with errors that name
//! the object and the field path.
//!
//! Everything past this module works on validated specs only. A NetworkPolicy that
//! fails validation is still converted (as [`PolicyBody::Invalid`]) so the index can
//! fail closed for the pods it selects instead of silently forgetting it.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::api::networking::v1 as netv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::cluster_policy::{ClusterNetworkPolicy, ClusterNetworkPolicySpec, NodeSpec};
use crate::selector::{validate_label_key, validate_label_value, LabelSelector, Labels};

/// The label every namespace carries (API: set by the apiserver since 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `"namespace/name"` of a pod.
pub type PodKey = String;

/// Kind of an object the engine reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
    /// Cluster-scoped (`policy.networking.k8s.io/v1alpha2`).
    ClusterNetworkPolicy,
    /// Cluster-scoped; read for ClusterNetworkPolicy `nodes` peers.
    Node,
}

impl Kind {
    /// Lower-case name used in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::Pod => "pod",
            Kind::Service => "service",
            Kind::EndpointSlice => "endpointslice",
            Kind::NetworkPolicy => "networkpolicy",
            Kind::ClusterNetworkPolicy => "clusternetworkpolicy",
            Kind::Node => "node",
        }
    }
}

/// Identity of an object: kind, namespace (empty for cluster-scoped objects:
/// Namespace, Node, ClusterNetworkPolicy) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

/// What went wrong, coarsely, so callers can filter (e.g. skip unsupported kinds in a
/// manifest directory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The text is not YAML, or a document is not a well-formed object of its kind.
    Parse,
    /// A kind the engine does not read (Deployment, ...).
    UnsupportedKind,
    /// The object was read but fails validation.
    Invalid,
    /// The object is valid but uses something the engine does not support (a
    /// ClusterNetworkPolicy `domainNames` peer); the report says how it is treated.
    Unsupported,
}

/// A model error. Display: `[origin: ][kind ns/name: ][field: ]message`, e.g.
/// `networkpolicy x/deny-a: spec.ingress[0].from[1].ipBlock.except[0]: 10.1.0.0/24 is not inside cidr 10.0.0.0/16`.
/// The details are boxed (and reachable through `Deref`) to keep `Result`s small.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ModelError(Box<ErrorDetail>);

/// The parts of a [`ModelError`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorDetail {
    pub kind: ErrorKind,
    /// File (or other source) the object came from.
    pub origin: Option<String>,
    pub object: Option<ObjectRef>,
    /// Field path, `spec.ingress[0].ports[1].port`; for document-level errors
    /// `document N`.
    pub field: String,
    pub message: String,
}

impl std::ops::Deref for ModelError {
    type Target = ErrorDetail;
    fn deref(&self) -> &ErrorDetail {
        &self.0
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(o) = &self.origin {
            write!(f, "{o}: ")?;
        }
        if let Some(o) = &self.object {
            write!(f, "{o}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl ModelError {
    pub fn new(detail: ErrorDetail) -> Self {
        Self(Box::new(detail))
    }

    pub(crate) fn invalid(object: &ObjectRef, e: FieldError) -> Self {
        Self::new(ErrorDetail {
            kind: ErrorKind::Invalid,
            origin: None,
            object: Some(object.clone()),
            field: e.field,
            message: e.message,
        })
    }

    /// The same error, naming the file it came from.
    pub fn with_origin(mut self, origin: &str) -> Self {
        if !origin.is_empty() {
            self.0.origin = Some(origin.to_string());
        }
        self
    }
}

/// A validation error inside one object, before the object is named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

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
    fn parse(p: Option<&str>, field: &str) -> Result<Self, FieldError> {
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
        format!("{}/{}", self.namespace, self.name)
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
}

/// An EndpointSlice, kept for explanations only: the datapath decides service
/// traffic after DNAT, so the compiler never reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSliceSpec {
    pub namespace: String,
    pub name: String,
    pub service: Option<String>,
    pub addresses: Vec<IpAddr>,
}

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

/// An object the engine reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Namespace(NamespaceSpec),
    Pod(PodSpec),
    Service(ServiceSpec),
    EndpointSlice(EndpointSliceSpec),
    NetworkPolicy(NetworkPolicySpec),
    ClusterNetworkPolicy(ClusterNetworkPolicySpec),
    Node(NodeSpec),
}

impl Object {
    pub fn object_ref(&self) -> ObjectRef {
        match self {
            Object::Namespace(n) => ObjectRef::new(Kind::Namespace, "", &n.name),
            Object::Pod(p) => ObjectRef::new(Kind::Pod, &p.namespace, &p.name),
            Object::Service(s) => ObjectRef::new(Kind::Service, &s.namespace, &s.name),
            Object::EndpointSlice(s) => ObjectRef::new(Kind::EndpointSlice, &s.namespace, &s.name),
            Object::NetworkPolicy(p) => p.object_ref(),
            Object::ClusterNetworkPolicy(p) => p.object_ref(),
            Object::Node(n) => ObjectRef::new(Kind::Node, "", &n.name),
        }
    }

    /// The validation error carried by an invalid NetworkPolicy or
    /// ClusterNetworkPolicy.
    pub fn validation_error(&self) -> Option<&ModelError> {
        match self {
            Object::NetworkPolicy(p) => p.error(),
            Object::ClusterNetworkPolicy(p) => p.error(),
            _ => None,
        }
    }

    fn set_origin(&mut self, origin: &str) {
        match self {
            Object::NetworkPolicy(NetworkPolicySpec {
                body: PolicyBody::Invalid(inv),
                ..
            }) => inv.error = inv.error.clone().with_origin(origin),
            Object::ClusterNetworkPolicy(p) => p.set_origin(origin),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------
// Conversion from k8s-openapi objects.

/// A k8s-openapi object the engine can read.
pub trait K8sObject {
    /// Identity, available even when conversion fails (for deletes).
    fn object_ref(&self) -> ObjectRef;
    fn to_object(&self) -> Result<Object, ModelError>;
}

/// Convert a k8s-openapi object. NetworkPolicies never fail here: an invalid one
/// becomes [`PolicyBody::Invalid`] (see [`Object::validation_error`]).
pub fn object_from_k8s<T: K8sObject>(obj: &T) -> Result<Object, ModelError> {
    obj.to_object()
}

fn meta_ns(m: &ObjectMeta) -> String {
    // kubectl's default for manifests without a namespace.
    m.namespace.clone().unwrap_or_else(|| "default".to_string())
}

fn meta_name(m: &ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}

pub(crate) fn require_name(r: &ObjectRef) -> Result<(), ModelError> {
    if r.name.is_empty() {
        return Err(ModelError::invalid(
            r,
            FieldError::new("metadata.name", "required"),
        ));
    }
    Ok(())
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim().parse().ok()
}

impl K8sObject for corev1::Namespace {
    fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(Kind::Namespace, "", meta_name(&self.metadata))
    }
    fn to_object(&self) -> Result<Object, ModelError> {
        let r = K8sObject::object_ref(self);
        require_name(&r)?;
        Ok(Object::Namespace(NamespaceSpec::new(
            r.name,
            self.metadata.labels.clone().unwrap_or_default(),
        )))
    }
}

impl K8sObject for corev1::Pod {
    fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(
            Kind::Pod,
            meta_ns(&self.metadata),
            meta_name(&self.metadata),
        )
    }
    fn to_object(&self) -> Result<Object, ModelError> {
        let r = K8sObject::object_ref(self);
        require_name(&r)?;
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        let terminal = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        );
        let mut ips: Vec<IpAddr> = Vec::new();
        if !terminal {
            if let Some(st) = status {
                let listed = st.pod_ips.iter().flatten().map(|p| p.ip.as_str());
                let fields = (0..)
                    .map(|i| format!("status.podIPs[{i}].ip"))
                    .take(st.pod_ips.as_ref().map_or(0, Vec::len))
                    .chain(std::iter::once("status.podIP".to_string()));
                for (s, field) in listed.chain(st.pod_ip.as_deref()).zip(fields) {
                    // An address that does not parse is refused, not ignored: a
                    // typo would silently take the pod out of every peer set.
                    if s.trim().is_empty() {
                        continue;
                    }
                    let Some(ip) = parse_ip(s) else {
                        return Err(ModelError::invalid(
                            &r,
                            FieldError::new(field, format!("invalid IP address {s:?}")),
                        ));
                    };
                    if !ips.iter().any(|x| x.is_ipv4() == ip.is_ipv4()) {
                        ips.push(ip);
                    }
                }
            }
        }
        let mut named_ports = Vec::new();
        if let Some(spec) = spec {
            let containers = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten());
            for c in containers {
                for p in c.ports.iter().flatten() {
                    let (Some(name), Ok(port)) = (&p.name, u16::try_from(p.container_port)) else {
                        continue;
                    };
                    let Ok(protocol) = Protocol::parse(p.protocol.as_deref(), "") else {
                        continue;
                    };
                    if port == 0 {
                        continue;
                    }
                    let np = NamedPort {
                        name: name.clone(),
                        protocol,
                        port,
                    };
                    if !named_ports.contains(&np) {
                        named_ports.push(np);
                    }
                }
            }
        }
        named_ports.sort();
        Ok(Object::Pod(PodSpec {
            namespace: r.namespace,
            name: r.name,
            labels: self.metadata.labels.clone().unwrap_or_default(),
            node_name: spec
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            ips,
            named_ports,
        }))
    }
}

impl K8sObject for corev1::Service {
    fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(
            Kind::Service,
            meta_ns(&self.metadata),
            meta_name(&self.metadata),
        )
    }
    fn to_object(&self) -> Result<Object, ModelError> {
        let r = K8sObject::object_ref(self);
        require_name(&r)?;
        let mut cluster_ips = Vec::new();
        let mut ports = Vec::new();
        if let Some(spec) = &self.spec {
            let listed = spec.cluster_ips.iter().flatten().map(|s| s.as_str());
            for s in listed.chain(spec.cluster_ip.as_deref()) {
                // "None" (headless) and "" have no frontend.
                if s.is_empty() || s == "None" {
                    continue;
                }
                let ip = parse_ip(s).ok_or_else(|| {
                    ModelError::invalid(
                        &r,
                        FieldError::new("spec.clusterIPs", format!("invalid IP address {s:?}")),
                    )
                })?;
                if !cluster_ips.contains(&ip) {
                    cluster_ips.push(ip);
                }
            }
            for (i, p) in spec.ports.iter().flatten().enumerate() {
                let proto =
                    Protocol::parse(p.protocol.as_deref(), &format!("spec.ports[{i}].protocol"))
                        .map_err(|e| ModelError::invalid(&r, e))?;
                let port = check_port(p.port, &format!("spec.ports[{i}].port"))
                    .map_err(|e| ModelError::invalid(&r, e))?;
                if !ports.contains(&(proto, port)) {
                    ports.push((proto, port));
                }
            }
        }
        Ok(Object::Service(ServiceSpec {
            namespace: r.namespace,
            name: r.name,
            cluster_ips,
            ports,
        }))
    }
}

impl K8sObject for discoveryv1::EndpointSlice {
    fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(
            Kind::EndpointSlice,
            meta_ns(&self.metadata),
            meta_name(&self.metadata),
        )
    }
    fn to_object(&self) -> Result<Object, ModelError> {
        let r = K8sObject::object_ref(self);
        require_name(&r)?;
        let service = self
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name").cloned());
        let addresses = self
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.iter())
            .filter_map(|a| parse_ip(a))
            .collect();
        Ok(Object::EndpointSlice(EndpointSliceSpec {
            namespace: r.namespace,
            name: r.name,
            service,
            addresses,
        }))
    }
}

impl K8sObject for netv1::NetworkPolicy {
    fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(
            Kind::NetworkPolicy,
            meta_ns(&self.metadata),
            meta_name(&self.metadata),
        )
    }
    fn to_object(&self) -> Result<Object, ModelError> {
        let r = K8sObject::object_ref(self);
        require_name(&r)?;
        let default_spec = netv1::NetworkPolicySpec::default();
        let spec = self.spec.as_ref().unwrap_or(&default_spec);
        let body = match convert_policy(spec) {
            Ok(p) => PolicyBody::Valid(p),
            Err(e) => {
                let pod_selector = spec
                    .pod_selector
                    .as_ref()
                    .map(|s| LabelSelector::from_k8s(s, "spec.podSelector"))
                    .unwrap_or(Ok(LabelSelector::everything()))
                    .ok();
                let types = policy_types(spec).unwrap_or(PolicyTypes {
                    ingress: true,
                    egress: true,
                });
                PolicyBody::Invalid(InvalidPolicy {
                    pod_selector,
                    types,
                    error: ModelError::invalid(&r, e),
                })
            }
        };
        Ok(Object::NetworkPolicy(NetworkPolicySpec {
            namespace: r.namespace,
            name: r.name,
            body,
        }))
    }
}

/// The API server's defaulting of `policyTypes` (`SetDefaults_NetworkPolicySpec`):
/// omitted or empty = `[Ingress]`, plus `Egress` when `egress` has at least one
/// rule (`egress: []` and `egress: null` do not isolate egress). Objects read from
/// files never met an API server, so the engine applies it to every object; on
/// objects the API server stored it changes nothing. Validation: at most two
/// entries, each `Ingress` or `Egress`.
fn policy_types(spec: &netv1::NetworkPolicySpec) -> Result<PolicyTypes, FieldError> {
    Ok(declared_policy_types(spec)?.unwrap_or(PolicyTypes {
        ingress: true,
        egress: spec.egress.as_ref().is_some_and(|e| !e.is_empty()),
    }))
}

/// `policyTypes` as written; `None` when omitted or empty (then defaulted).
fn declared_policy_types(
    spec: &netv1::NetworkPolicySpec,
) -> Result<Option<PolicyTypes>, FieldError> {
    let list = match &spec.policy_types {
        None => return Ok(None),
        Some(list) if list.is_empty() => return Ok(None),
        Some(list) => list,
    };
    if list.len() > 2 {
        return Err(FieldError::new(
            "spec.policyTypes",
            format!(
                "may not specify more than two policyTypes (got {})",
                list.len()
            ),
        ));
    }
    let mut t = PolicyTypes {
        ingress: false,
        egress: false,
    };
    for (i, s) in list.iter().enumerate() {
        match s.as_str() {
            "Ingress" => t.ingress = true,
            "Egress" => t.egress = true,
            other => {
                return Err(FieldError::new(
                    format!("spec.policyTypes[{i}]"),
                    format!("unknown policy type {other:?} (expected Ingress or Egress)"),
                ))
            }
        }
    }
    Ok(Some(t))
}

fn convert_policy(spec: &netv1::NetworkPolicySpec) -> Result<Policy, FieldError> {
    let pod_selector = match &spec.pod_selector {
        Some(s) => LabelSelector::from_k8s(s, "spec.podSelector")?,
        None => LabelSelector::everything(),
    };
    let types = policy_types(spec)?;
    let declared_types = declared_policy_types(spec)?;
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let base = format!("spec.ingress[{i}]");
        ingress.push(convert_rule(
            r.from.as_deref(),
            r.ports.as_deref(),
            &base,
            "from",
        )?);
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let base = format!("spec.egress[{i}]");
        egress.push(convert_rule(
            r.to.as_deref(),
            r.ports.as_deref(),
            &base,
            "to",
        )?);
    }
    Ok(Policy {
        pod_selector,
        types,
        declared_types,
        ingress,
        egress,
    })
}

fn convert_rule(
    peers: Option<&[netv1::NetworkPolicyPeer]>,
    ports: Option<&[netv1::NetworkPolicyPort]>,
    base: &str,
    peer_field: &str,
) -> Result<Rule, FieldError> {
    let mut rule = Rule {
        peers: Vec::new(),
        ports: Vec::new(),
    };
    for (j, p) in peers.unwrap_or(&[]).iter().enumerate() {
        let path = format!("{base}.{peer_field}[{j}]");
        rule.peers.push(convert_peer(p, &path)?);
    }
    for (j, p) in ports.unwrap_or(&[]).iter().enumerate() {
        let path = format!("{base}.ports[{j}]");
        rule.ports.push(convert_port(p, &path)?);
    }
    Ok(rule)
}

fn convert_peer(p: &netv1::NetworkPolicyPeer, path: &str) -> Result<Peer, FieldError> {
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (Some(b), None, None) => Ok(Peer::IpBlock(convert_ip_block(
            b,
            &format!("{path}.ipBlock"),
        )?)),
        (Some(_), _, _) => Err(FieldError::new(
            path,
            "ipBlock may not be combined with podSelector or namespaceSelector",
        )),
        (None, None, None) => Err(FieldError::new(
            path,
            "must specify podSelector, namespaceSelector or ipBlock",
        )),
        (None, pods, ns) => {
            let pods = match pods {
                Some(s) => LabelSelector::from_k8s(s, &format!("{path}.podSelector"))?,
                None => LabelSelector::everything(),
            };
            let namespaces = match ns {
                Some(s) => NamespaceScope::Selector(LabelSelector::from_k8s(
                    s,
                    &format!("{path}.namespaceSelector"),
                )?),
                None => NamespaceScope::Own,
            };
            Ok(Peer::Pods { namespaces, pods })
        }
    }
}

/// Parse a CIDR; API: host bits set means the network (`10.0.0.1/8` = `10.0.0.0/8`).
/// A bare address is not accepted (the apiserver requires the prefix length).
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let net: IpNet = s.parse().ok()?;
    Some(net.trunc())
}

fn convert_ip_block(b: &netv1::IPBlock, path: &str) -> Result<IpBlock, FieldError> {
    let cidr = parse_cidr(&b.cidr).ok_or_else(|| {
        FieldError::new(format!("{path}.cidr"), format!("invalid CIDR {:?}", b.cidr))
    })?;
    let mut except = Vec::new();
    for (k, e) in b.except.iter().flatten().enumerate() {
        let field = format!("{path}.except[{k}]");
        let net =
            parse_cidr(e).ok_or_else(|| FieldError::new(&field, format!("invalid CIDR {e:?}")))?;
        if net.addr().is_ipv4() != cidr.addr().is_ipv4() {
            return Err(FieldError::new(
                &field,
                format!("{net} is not the same address family as cidr {cidr}"),
            ));
        }
        // API: except must be a strict subset of cidr.
        if !(cidr.contains(&net) && net.prefix_len() > cidr.prefix_len()) {
            return Err(FieldError::new(
                &field,
                format!("{net} is not inside cidr {cidr}"),
            ));
        }
        if !except.contains(&net) {
            except.push(net);
        }
    }
    Ok(IpBlock { cidr, except })
}

fn check_port(n: i32, field: &str) -> Result<u16, FieldError> {
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(FieldError::new(field, format!("{n} is outside 1..65535"))),
    }
}

/// IANA service name (API: named ports): 1-15 of [a-z0-9-], at least one letter, no
/// leading, trailing or double hyphen.
fn valid_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

fn convert_port(p: &netv1::NetworkPolicyPort, path: &str) -> Result<PortSpec, FieldError> {
    let protocol = Protocol::parse(p.protocol.as_deref(), &format!("{path}.protocol"))?;
    let port = match (&p.port, p.end_port) {
        (None, None) => None,
        (None, Some(_)) | (Some(IntOrString::String(_)), Some(_)) => {
            return Err(FieldError::new(
                format!("{path}.endPort"),
                "requires a numeric port",
            ))
        }
        (Some(IntOrString::Int(n)), end) => {
            let first = check_port(*n, &format!("{path}.port"))?;
            let last = match end {
                None => first,
                Some(e) => {
                    let last = check_port(e, &format!("{path}.endPort"))?;
                    if last < first {
                        return Err(FieldError::new(
                            format!("{path}.endPort"),
                            format!("{last} is below port {first}"),
                        ));
                    }
                    last
                }
            };
            Some(PortRef::Numbers { first, last })
        }
        (Some(IntOrString::String(s)), None) => {
            // API: a string port must be an IANA service name ("80" in quotes is
            // rejected by the apiserver too).
            if valid_port_name(s) {
                Some(PortRef::Named(s.clone()))
            } else {
                return Err(FieldError::new(
                    format!("{path}.port"),
                    format!("invalid port name {s:?}"),
                ));
            }
        }
    };
    Ok(PortSpec { protocol, port })
}

// ---------------------------------------------------------------------------------
// YAML.

fn doc_error(origin: &str, doc: usize, kind: ErrorKind, message: String) -> ModelError {
    ModelError::new(ErrorDetail {
        kind,
        origin: (!origin.is_empty()).then(|| origin.to_string()),
        object: None,
        field: format!("document {doc}"),
        message,
    })
}

/// Parse a multi-document YAML manifest (documents separated by `---`; `kind: List`
/// and `*List` are expanded). One result per object; empty documents are skipped.
/// Errors name `origin` and the document number (1-based). Never panics.
pub fn parse_yaml_documents(text: &str, origin: &str) -> Vec<Result<Object, ModelError>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let value = match serde_yaml::Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                out.push(Err(doc_error(
                    origin,
                    doc,
                    ErrorKind::Parse,
                    format!("invalid YAML: {e}"),
                )));
                // The YAML stream cannot be resynchronised after a syntax error.
                break;
            }
        };
        parse_value(value, origin, doc, &mut out, 0);
    }
    out
}

fn parse_value(
    value: serde_yaml::Value,
    origin: &str,
    doc: usize,
    out: &mut Vec<Result<Object, ModelError>>,
    depth: usize,
) {
    use serde_yaml::Value;
    if value.is_null() {
        return;
    }
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_string);
    let Some(kind) = kind else {
        out.push(Err(doc_error(
            origin,
            doc,
            ErrorKind::Parse,
            "missing kind".to_string(),
        )));
        return;
    };
    let converted = match kind.as_str() {
        "Namespace" => conv_named::<corev1::Namespace>(value),
        "Pod" => conv_named::<corev1::Pod>(value),
        "Service" => conv_named::<corev1::Service>(value),
        "EndpointSlice" => conv_named::<discoveryv1::EndpointSlice>(value),
        "NetworkPolicy" => conv_named::<netv1::NetworkPolicy>(value),
        "ClusterNetworkPolicy" => conv_named::<ClusterNetworkPolicy>(value),
        "Node" => conv_named::<corev1::Node>(value),
        k if k == "List" || k.ends_with("List") => {
            if depth > 4 {
                out.push(Err(doc_error(
                    origin,
                    doc,
                    ErrorKind::Parse,
                    "lists nested too deeply".to_string(),
                )));
                return;
            }
            match value.get("items") {
                Some(Value::Sequence(items)) => {
                    for item in items.clone() {
                        parse_value(item, origin, doc, out, depth + 1);
                    }
                }
                None | Some(Value::Null) => {}
                Some(_) => out.push(Err(doc_error(
                    origin,
                    doc,
                    ErrorKind::Parse,
                    "items: expected a sequence".to_string(),
                ))),
            }
            return;
        }
        other => {
            out.push(Err(doc_error(
                origin,
                doc,
                ErrorKind::UnsupportedKind,
                format!("unsupported kind {other:?}"),
            )));
            return;
        }
    };
    out.push(match converted {
        Ok(mut o) => {
            o.set_origin(origin);
            Ok(o)
        }
        Err(ConvError::Parse(m)) => Err(doc_error(origin, doc, ErrorKind::Parse, m)),
        Err(ConvError::Model(e)) => Err(e.with_origin(origin)),
    });
}

enum ConvError {
    Parse(String),
    Model(ModelError),
}

fn conv_named<T>(value: serde_yaml::Value) -> Result<Object, ConvError>
where
    T: K8sObject + serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T =
        serde_yaml::from_value(value.clone()).map_err(|e| ConvError::Parse(e.to_string()))?;
    let obj = typed.to_object().map_err(ConvError::Model)?;
    // Read strictly (kubectl's --validate=strict): an unknown field makes the
    // object invalid. An invalid NetworkPolicy is kept, fail-closed, like any
    // other invalid policy; any other kind is refused.
    let Some(field) = crate::strict::unknown_field(&value, &typed) else {
        return Ok(obj);
    };
    let r = K8sObject::object_ref(&typed);
    let error = ModelError::invalid(&r, FieldError::new(field, "unknown field"));
    match obj {
        Object::NetworkPolicy(mut np) => {
            let (pod_selector, types) = match np.body {
                PolicyBody::Valid(p) => (Some(p.pod_selector), p.types),
                PolicyBody::Invalid(inv) => (inv.pod_selector, inv.types),
            };
            np.body = PolicyBody::Invalid(InvalidPolicy {
                pod_selector,
                types,
                error,
            });
            Ok(Object::NetworkPolicy(np))
        }
        _ => Err(ConvError::Model(error)),
    }
}

/// Validate a label map (used for objects read from files, where no apiserver
/// checked them). Returns the first bad key or value.
pub fn validate_labels(labels: &Labels) -> Result<(), String> {
    for (k, v) in labels {
        validate_label_key(k)?;
        validate_label_value(v)?;
    }
    Ok(())
}
