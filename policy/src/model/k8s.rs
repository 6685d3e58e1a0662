//! Conversion from k8s-openapi objects (and the ClusterNetworkPolicy wire type)
//! into the validated model: the [`K8sObject`] trait and its implementations for
//! every kind but NetworkPolicy, whose conversion and validation are in
//! [`mod@crate::model::k8s_network_policy`]. Errors name the object and the field
//! path.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::cluster_policy::{
    ClusterNetworkPolicy, ClusterNetworkPolicySpec, ClusterPolicyBody, NodeSpec,
};
use crate::model::cluster_policy_parse;
use crate::model::objects::Object;
use crate::model::types::{
    EndpointSliceSpec, NamedPort, NamespaceSpec, PodSpec, Protocol, ServiceSpec,
};
use crate::object::{ErrorDetail, ErrorKind, FieldError, Kind, ModelError, ObjectRef};

/// A k8s-openapi object the engine can read.
pub trait K8sObject {
    /// Identity, available even when conversion fails (for deletes).
    fn object_ref(&self) -> ObjectRef;
    fn to_object(&self) -> Result<Object, ModelError>;
}

/// Convert a k8s-openapi object. NetworkPolicies never fail here: an invalid one
/// becomes [`PolicyBody::Invalid`](crate::model::PolicyBody::Invalid) (see
/// [`Object::validation_error`]).
pub fn object_from_k8s<T: K8sObject>(obj: &T) -> Result<Object, ModelError> {
    obj.to_object()
}

/// `metadata.namespace`, or `default` when omitted.
pub(crate) fn meta_ns(m: &ObjectMeta) -> String {
    // kubectl's default for manifests without a namespace.
    m.namespace.clone().unwrap_or_else(|| "default".to_string())
}

/// `metadata.name`; empty when omitted (refused by [`require_name`]).
pub(crate) fn meta_name(m: &ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}

/// API: every object has a name.
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
        let mut port_names = Vec::new();
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
                if let Some(n) = p.name.as_ref().filter(|n| !n.is_empty()) {
                    port_names.push((proto, port, n.clone()));
                }
            }
        }
        Ok(Object::Service(ServiceSpec {
            namespace: r.namespace,
            name: r.name,
            cluster_ips,
            ports,
            port_names,
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
        // A port entry without a valid number carries no target to explain.
        let ports = self
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let number = u16::try_from(p.port?).ok().filter(|n| *n > 0)?;
                let proto = Protocol::parse(p.protocol.as_deref(), "ports[].protocol").ok()?;
                Some((p.name.clone().unwrap_or_default(), proto, number))
            })
            .collect();
        Ok(Object::EndpointSlice(EndpointSliceSpec {
            namespace: r.namespace,
            name: r.name,
            service,
            addresses,
            ports,
        }))
    }
}

impl K8sObject for ClusterNetworkPolicy {
    fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(
            Kind::ClusterNetworkPolicy,
            "",
            self.metadata.name.clone().unwrap_or_default(),
        )
    }

    /// Never fails for a named object: an invalid one becomes
    /// [`ClusterPolicyBody::Invalid`].
    fn to_object(&self) -> Result<Object, ModelError> {
        let r = K8sObject::object_ref(self);
        require_name(&r)?;
        let body = match cluster_policy_parse::parse(self) {
            Ok((mut p, note)) => {
                p.unsupported = note.map(|e| {
                    ModelError::new(ErrorDetail {
                        kind: ErrorKind::Unsupported,
                        origin: None,
                        object: Some(r.clone()),
                        field: e.field,
                        message: e.message,
                    })
                });
                ClusterPolicyBody::Valid(p)
            }
            Err(e) => ClusterPolicyBody::Invalid(ModelError::invalid(&r, e)),
        };
        Ok(Object::ClusterNetworkPolicy(ClusterNetworkPolicySpec {
            name: r.name,
            body,
        }))
    }
}

impl K8sObject for corev1::Node {
    fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(
            Kind::Node,
            "",
            self.metadata.name.clone().unwrap_or_default(),
        )
    }

    fn to_object(&self) -> Result<Object, ModelError> {
        let r = K8sObject::object_ref(self);
        require_name(&r)?;
        let mut addresses: Vec<IpAddr> = Vec::new();
        let listed = self
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten();
        for a in listed {
            // API: `nodes` peers match the node's IPs in status.addresses
            // (Hostname entries are names, not addresses).
            if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
                continue;
            }
            // An unparseable address only removes a peer address.
            if let Ok(ip) = a.address.trim().parse::<IpAddr>() {
                if !addresses.contains(&ip) {
                    addresses.push(ip);
                }
            }
        }
        Ok(Object::Node(NodeSpec {
            name: r.name,
            labels: self.metadata.labels.clone().unwrap_or_default(),
            addresses,
        }))
    }
}

/// A port number: API: 1..65535.
pub(crate) fn check_port(n: i32, field: &str) -> Result<u16, FieldError> {
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(FieldError::new(field, format!("{n} is outside 1..65535"))),
    }
}
