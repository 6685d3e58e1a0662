//! Parsing and validation of a ClusterNetworkPolicy spec: what the API's schema and
//! CEL rules state (required fields, enums, counts, ranges, exactly-one fields,
//! `start < end`, named ports not combined with networks/nodes/domainNames peers),
//! plus unknown fields, each error naming the exact field path
//! (`spec.ingress[0].from[1].pods.podSelector`).
//!
//! The spec is walked as a YAML/JSON value rather than through derived serde types
//! so that every error, unknown fields included, carries its path.

use serde_yaml::Value;

use crate::model::cluster_policy::{
    Action, ClusterNetworkPolicy, ClusterPeer, ClusterPolicy, ClusterRule, ProtocolMatch, Subject,
    Tier, API_VERSION, MAX_ITEMS, MAX_PRIORITY, MAX_RULES, MAX_RULE_NAME,
};
use crate::model::network_policy::parse_cidr;
use crate::model::types::Protocol;
use crate::model::value::{integer, join, list, object, required, selector, string, untag};
use crate::object::FieldError;
use crate::selector::LabelSelector;

/// API `NamespacedPod`: `podSelector` required, `namespaceSelector` omitted = `{}`.
fn namespaced_pod(v: &Value, path: &str) -> Result<(LabelSelector, LabelSelector), FieldError> {
    let f = object(v, path, &["namespaceSelector", "podSelector"])?;
    let namespaces = match f.get("namespaceSelector") {
        Some(s) => selector(s, &join(path, "namespaceSelector"))?,
        None => LabelSelector::everything(),
    };
    let pods = selector(
        required(&f, "podSelector", path)?,
        &join(path, "podSelector"),
    )?;
    Ok((namespaces, pods))
}

/// Parse and validate the spec of `obj`; also returns the report of unsupported
/// peers (the first one's path; the caller names the object).
pub(crate) fn parse(
    obj: &ClusterNetworkPolicy,
) -> Result<(ClusterPolicy, Option<FieldError>), FieldError> {
    if !obj.api_version.is_empty() && obj.api_version != API_VERSION {
        return Err(FieldError::new(
            "apiVersion",
            format!(
                "unsupported apiVersion {:?} (expected {API_VERSION})",
                obj.api_version
            ),
        ));
    }
    let spec = obj
        .spec
        .as_ref()
        .filter(|v| !v.is_null())
        .ok_or_else(|| FieldError::new("spec", "required"))?;
    let f = object(
        spec,
        "spec",
        &["tier", "priority", "subject", "ingress", "egress"],
    )?;
    let tier = match string(required(&f, "tier", "spec")?, "spec.tier")? {
        "Admin" => Tier::Admin,
        "Baseline" => Tier::Baseline,
        other => {
            return Err(FieldError::new(
                "spec.tier",
                format!("unsupported value {other:?} (expected Admin or Baseline)"),
            ))
        }
    };
    let priority = integer(
        required(&f, "priority", "spec")?,
        "spec.priority",
        0,
        i64::from(MAX_PRIORITY),
    )?;
    let subject = parse_subject(required(&f, "subject", "spec")?)?;
    let mut notes = Vec::new();
    let mut rules = |key: &str| -> Result<Vec<ClusterRule>, FieldError> {
        let path = format!("spec.{key}");
        let Some(v) = f.get(key) else {
            return Ok(Vec::new());
        };
        list(v, &path, 0, MAX_RULES)?
            .iter()
            .enumerate()
            .map(|(i, r)| parse_rule(r, &format!("{path}[{i}]"), key == "egress", &mut notes))
            .collect()
    };
    let ingress = rules("ingress")?;
    let egress = rules("egress")?;
    let unsupported = match notes.len() {
        0 => None,
        1 => notes.pop(),
        n => {
            let first = notes.swap_remove(0);
            Some(FieldError::new(
                first.field,
                format!("{} (and {} more unsupported rule(s))", first.message, n - 1),
            ))
        }
    };
    let policy = ClusterPolicy {
        tier,
        // Checked against 0..=1000 above.
        priority: priority as u16,
        subject,
        ingress,
        egress,
        unsupported: None,
    };
    Ok((policy, unsupported))
}

/// API: exactly one of `namespaces` and `pods`.
fn parse_subject(v: &Value) -> Result<Subject, FieldError> {
    let path = "spec.subject";
    let f = object(v, path, &["namespaces", "pods"])?;
    match (f.get("namespaces"), f.get("pods")) {
        (Some(ns), None) => Ok(Subject::Namespaces(selector(
            ns,
            &join(path, "namespaces"),
        )?)),
        (None, Some(p)) => {
            let (namespaces, pods) = namespaced_pod(p, &join(path, "pods"))?;
            Ok(Subject::Pods { namespaces, pods })
        }
        (Some(_), Some(_)) => Err(FieldError::new(
            path,
            "must set exactly one of namespaces and pods (both are set)",
        )),
        (None, None) => Err(FieldError::new(
            path,
            "must set exactly one of namespaces and pods",
        )),
    }
}

fn parse_rule(
    v: &Value,
    path: &str,
    egress: bool,
    notes: &mut Vec<FieldError>,
) -> Result<ClusterRule, FieldError> {
    let peer_key = if egress { "to" } else { "from" };
    let f = object(v, path, &["name", "action", peer_key, "protocols"])?;
    let name = match f.get("name") {
        Some(n) => {
            let n = string(n, &join(path, "name"))?;
            if n.chars().count() > MAX_RULE_NAME {
                return Err(FieldError::new(
                    join(path, "name"),
                    format!("must be at most {MAX_RULE_NAME} characters"),
                ));
            }
            (!n.is_empty()).then(|| n.to_string())
        }
        None => None,
    };
    let action = match string(required(&f, "action", path)?, &join(path, "action"))? {
        "Accept" => Action::Accept,
        "Deny" => Action::Deny,
        "Pass" => Action::Pass,
        other => {
            return Err(FieldError::new(
                join(path, "action"),
                format!("unsupported value {other:?} (expected Accept, Deny or Pass)"),
            ))
        }
    };
    let peers_path = join(path, peer_key);
    let mut peers = Vec::new();
    for (j, p) in list(required(&f, peer_key, path)?, &peers_path, 1, MAX_ITEMS)?
        .iter()
        .enumerate()
    {
        peers.push(parse_peer(p, &format!("{peers_path}[{j}]"), egress)?);
    }
    let mut protocols = Vec::new();
    if let Some(pv) = f.get("protocols") {
        let pp = join(path, "protocols");
        for (j, p) in list(pv, &pp, 1, MAX_ITEMS)?.iter().enumerate() {
            protocols.push(parse_protocol(p, &format!("{pp}[{j}]"))?);
        }
    }
    // API (CEL): networks/nodes/domainNames peers cannot be set with named ports,
    // since they have no named ports.
    if let Some(named) = protocols
        .iter()
        .position(|p| matches!(p, ProtocolMatch::Named(_)))
    {
        if let Some(j) = peers.iter().position(|p| {
            matches!(
                p,
                ClusterPeer::Networks(_) | ClusterPeer::Nodes(_) | ClusterPeer::DomainNames(_)
            )
        }) {
            return Err(FieldError::new(
                format!("{path}.protocols[{named}].destinationNamedPort"),
                format!(
                    "may not be combined with a networks, nodes or domainNames peer ({peers_path}[{j}]): they have no named ports"
                ),
            ));
        }
    }
    for (j, p) in peers.iter().enumerate() {
        let note = match (p, action) {
            (ClusterPeer::DomainNames(_), Action::Accept) => {
                "domainNames peers are not supported (they need DNS awareness): the rule is skipped, which can only deny more"
            }
            (ClusterPeer::DomainNames(_), _) => {
                "domainNames peers are not supported, and the API allows them only in Accept rules: the rule denies every destination (fail closed)"
            }
            (ClusterPeer::Empty, Action::Accept) => {
                "peer has no known field set: it matches nothing (fail closed)"
            }
            (ClusterPeer::Empty, _) => {
                "peer has no known field set: the rule denies every peer (fail closed)"
            }
            _ => continue,
        };
        notes.push(FieldError::new(format!("{peers_path}[{j}]"), note));
        break;
    }
    Ok(ClusterRule {
        name,
        action,
        peers,
        protocols,
    })
}

fn parse_peer(v: &Value, path: &str, egress: bool) -> Result<ClusterPeer, FieldError> {
    let allowed: &[&str] = if egress {
        &["namespaces", "pods", "nodes", "networks", "domainNames"]
    } else {
        &["namespaces", "pods"]
    };
    let f = object(v, path, allowed)?;
    if f.len() > 1 {
        let set: Vec<&str> = f.keys().copied().collect();
        return Err(FieldError::new(
            path,
            format!("must set exactly one field (got {})", set.join(", ")),
        ));
    }
    let Some((&key, &value)) = f.iter().next() else {
        // API: no field set means a peer type this version does not know; the
        // rule fails closed (ClusterRule::effect).
        return Ok(ClusterPeer::Empty);
    };
    let p = join(path, key);
    Ok(match key {
        "namespaces" => ClusterPeer::Namespaces(selector(value, &p)?),
        "pods" => {
            let (namespaces, pods) = namespaced_pod(value, &p)?;
            ClusterPeer::Pods { namespaces, pods }
        }
        "nodes" => ClusterPeer::Nodes(selector(value, &p)?),
        "networks" => {
            let mut nets = Vec::new();
            let mut seen: Vec<&str> = Vec::new();
            for (k, c) in list(value, &p, 1, MAX_ITEMS)?.iter().enumerate() {
                let cp = format!("{p}[{k}]");
                let s = string(untag(c), &cp)?;
                // API: listType=set, CIDR at most 43 characters, isCIDR.
                if seen.contains(&s) {
                    return Err(FieldError::new(cp, format!("duplicate value {s:?}")));
                }
                seen.push(s);
                let net = (s.len() <= 43)
                    .then(|| parse_cidr(s))
                    .flatten()
                    .ok_or_else(|| FieldError::new(&cp, format!("invalid CIDR {s:?}")))?;
                if !nets.contains(&net) {
                    nets.push(net);
                }
            }
            ClusterPeer::Networks(nets)
        }
        _ => {
            let mut names: Vec<String> = Vec::new();
            for (k, d) in list(value, &p, 1, MAX_ITEMS)?.iter().enumerate() {
                let dp = format!("{p}[{k}]");
                let s = string(untag(d), &dp)?;
                if !valid_domain_name(s) {
                    return Err(FieldError::new(dp, format!("invalid domain name {s:?}")));
                }
                if names.iter().any(|n| n == s) {
                    return Err(FieldError::new(dp, format!("duplicate value {s:?}")));
                }
                names.push(s.to_string());
            }
            ClusterPeer::DomainNames(names)
        }
    })
}

/// API `DomainName` pattern: an optional `*.` prefix, then two or more labels of
/// `[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?`, an optional trailing dot.
fn valid_domain_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    let s = s.strip_suffix('.').unwrap_or(s);
    let labels: Vec<&str> = s.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        })
}

/// API: exactly one of `tcp`, `udp`, `sctp` (each with `destinationPort`) and
/// `destinationNamedPort`.
fn parse_protocol(v: &Value, path: &str) -> Result<ProtocolMatch, FieldError> {
    let f = object(v, path, &["tcp", "udp", "sctp", "destinationNamedPort"])?;
    if f.len() != 1 {
        let set: Vec<&str> = f.keys().copied().collect();
        let got = if set.is_empty() {
            "none".to_string()
        } else {
            set.join(", ")
        };
        return Err(FieldError::new(
            path,
            format!("must set exactly one of tcp, udp, sctp and destinationNamedPort (got {got})"),
        ));
    }
    let Some((&key, &value)) = f.iter().next() else {
        return Err(FieldError::new(path, "must set exactly one field"));
    };
    let p = join(path, key);
    let protocol = match key {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => {
            let name = string(value, &p)?;
            if name.is_empty() {
                return Err(FieldError::new(p, "must not be empty"));
            }
            return Ok(ProtocolMatch::Named(name.to_string()));
        }
    };
    let pf = object(value, &p, &["destinationPort"])?;
    // API: minProperties 1 (a protocol entry always names its port or range).
    let dp_path = join(&p, "destinationPort");
    let dp = required(&pf, "destinationPort", &p)?;
    let df = object(dp, &dp_path, &["number", "range"])?;
    let (first, last) = match (df.get("number"), df.get("range")) {
        (Some(n), None) => {
            let n = integer(n, &join(&dp_path, "number"), 1, 65535)? as u16;
            (n, n)
        }
        (None, Some(r)) => {
            let rp = join(&dp_path, "range");
            let rf = object(r, &rp, &["start", "end"])?;
            let start = integer(required(&rf, "start", &rp)?, &join(&rp, "start"), 1, 65535)?;
            let end = integer(required(&rf, "end", &rp)?, &join(&rp, "end"), 1, 65535)?;
            // API (CEL): self.start < self.end.
            if start >= end {
                return Err(FieldError::new(
                    rp,
                    format!("start ({start}) must be less than end ({end})"),
                ));
            }
            (start as u16, end as u16)
        }
        _ => {
            return Err(FieldError::new(
                dp_path,
                "must set exactly one of number and range",
            ))
        }
    };
    Ok(ProtocolMatch::Ports {
        protocol,
        first,
        last,
    })
}
