//! NetworkPolicy (`networking.k8s.io/v1`) from k8s-openapi: conversion with the
//! API server's defaulting and validation, each error naming its field path. A
//! policy that fails validation still converts, as
//! [`PolicyBody::Invalid`], with what is needed to fail closed.

use k8s_openapi::api::networking::v1 as netv1;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::k8s::{check_port, meta_name, meta_ns, require_name, K8sObject};
use crate::model::network_policy::{
    parse_cidr, InvalidPolicy, IpBlock, NamespaceScope, NetworkPolicySpec, Peer, Policy,
    PolicyBody, PolicyTypes, PortRef, PortSpec, Rule,
};
use crate::model::objects::Object;
use crate::model::types::Protocol;
use crate::object::{FieldError, Kind, ModelError, ObjectRef};
use crate::selector::LabelSelector;

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
