//! Datapath events as JSON log lines: one object per line on stdout (and on
//! `GET /events`), with the pods, namespaces and policies named: denies and
//! audits, and with `--flow-events` new allowed connections. Field names are
//! documented in README ("Deny logs").
use std::{net::IpAddr, time::SystemTime};

use palisade_common::{
    proto_bit, AllowReason, Event, Reason, DIR_INGRESS, EVF_FRAGMENT, PROTO_ICMP, PROTO_ICMPV6,
    PROTO_SCTP, PROTO_TCP, PROTO_UDP, VERDICT_ALLOWED, VERDICT_AUDIT,
};
use palisade_policy::{explain_direction, Direction, Packet, PodKey};
use serde_json::{json, Map, Value};

use crate::{events::event_addrs, status::Names};

pub fn protocol_name(p: u8) -> String {
    match p {
        PROTO_TCP => "TCP".into(),
        PROTO_UDP => "UDP".into(),
        PROTO_SCTP => "SCTP".into(),
        PROTO_ICMP => "ICMP".into(),
        PROTO_ICMPV6 => "ICMPv6".into(),
        n => n.to_string(),
    }
}

/// UTC RFC 3339 timestamp with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn peer(prefix: &str, ip: IpAddr, names: &Names, out: &mut Map<String, Value>) {
    out.insert(format!("{prefix}_ip"), json!(ip.to_string()));
    if let Some(pod) = names.by_ip.get(&ip) {
        let (ns, name) = (pod.namespace(), pod.name());
        out.insert(format!("{prefix}_kind"), json!("pod"));
        out.insert(format!("{prefix}_namespace"), json!(ns));
        out.insert(format!("{prefix}_pod"), json!(name));
    } else if names.node_addrs.contains(&ip) {
        out.insert(format!("{prefix}_kind"), json!("node"));
        out.insert(format!("{prefix}_node"), json!(names.node));
    } else {
        out.insert(format!("{prefix}_kind"), json!("external"));
    }
}

/// What decided a policy verdict, from the engine's explanation of the same
/// state the maps hold: `tier` (`admin`, `networkpolicy`, `baseline`), and for a
/// ClusterNetworkPolicy its name and the rule (`rule_index`, `rule_name`), when
/// the explanation names the tier of the datapath's own reason; an allowed
/// connection's `policies` are the NetworkPolicies whose rules allow it.
fn decided_by(
    ev: &Event,
    pod: &PodKey,
    names: &Names,
    (src, dst): (IpAddr, IpAddr),
    m: &mut Map<String, Value>,
) {
    let Some(index) = names.index.upgrade() else {
        return;
    };
    let Some(spec) = index.pod(pod) else {
        return;
    };
    let dir = if ev.direction == DIR_INGRESS {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    let fragment = ev.flags & EVF_FRAGMENT != 0;
    let port = (proto_bit(ev.proto) != 0 && !fragment).then_some(ev.dport);
    let node_addrs = |n: &str| {
        if n == names.node {
            names.node_addrs.clone()
        } else {
            Vec::new()
        }
    };
    let packet = Packet {
        src,
        dst,
        proto: ev.proto,
        port,
    };
    let v = explain_direction(&index, &node_addrs, spec, dir, &packet);
    let allowed_event = ev.verdict == VERDICT_ALLOWED;
    let tier_agrees = allowed_event
        || Reason::from_u8(ev.reason).is_none_or(|r| v.decided_by.agrees_with_drop(r));
    if v.allowed != allowed_event || !tier_agrees {
        // The engine judges otherwise: the maps are ahead of or behind this
        // event's state; say nothing rather than something wrong.
        return;
    }
    if allowed_event && v.rule.is_none() {
        m.insert("policies".into(), json!(v.allowed_by));
    }
    m.insert("tier".into(), json!(v.tier()));
    if let Some(r) = &v.rule {
        m.insert("cluster_policy".into(), json!(r.policy));
        m.insert("rule_index".into(), json!(r.rule_index));
        if let Some(n) = &r.rule_name {
            m.insert("rule_name".into(), json!(n));
        }
    }
}

/// One deny/audit event as a JSON object.
pub fn render(ev: &Event, names: &Names, now: SystemTime) -> Value {
    let (src, dst) = event_addrs(ev);
    let mut m = Map::new();
    m.insert("time".into(), json!(rfc3339(now)));
    let allowed = ev.verdict == VERDICT_ALLOWED;
    m.insert(
        "event".into(),
        json!(if allowed {
            "palisade-allow"
        } else {
            "palisade-deny"
        }),
    );
    m.insert("node".into(), json!(names.node));
    let (verdict, reason) = if allowed {
        let r = AllowReason::from_u8(ev.reason).map_or("unknown", AllowReason::as_str);
        ("allowed", r)
    } else {
        let r = Reason::from_u8(ev.reason).map_or("unknown", Reason::as_str);
        let v = if ev.verdict == VERDICT_AUDIT {
            "audit"
        } else {
            "denied"
        };
        (v, r)
    };
    m.insert("verdict".into(), json!(verdict));
    m.insert("reason".into(), json!(reason));
    let ingress = ev.direction == DIR_INGRESS;
    m.insert(
        "direction".into(),
        json!(if ingress { "ingress" } else { "egress" }),
    );
    m.insert("protocol".into(), json!(protocol_name(ev.proto)));
    peer("src", src, names, &mut m);
    m.insert("src_port".into(), json!(ev.sport));
    peer("dst", dst, names, &mut m);
    m.insert("dst_port".into(), json!(ev.dport));
    // The pod whose policy judged the packet, and the policies that select it.
    let pod = names
        .by_id
        .get(&ev.endpoint_id)
        .filter(|_| ev.endpoint_id != 0)
        .or_else(|| names.by_ifindex.get(&ev.ifindex));
    match pod {
        Some(p) => {
            m.insert("endpoint".into(), json!(p));
            let pols = names
                .policies
                .get(p)
                .map(|(i, e)| if ingress { i.clone() } else { e.clone() })
                .unwrap_or_default();
            // A pod isolated by a policy that failed validation is denied
            // because that policy allows nothing: name it as the reason.
            let invalid: Vec<&String> =
                pols.iter().filter(|p| names.invalid.contains(*p)).collect();
            let policy_drop = !allowed && ev.reason == Reason::NoPolicyAllows as u8;
            if !invalid.is_empty() && policy_drop {
                m.insert("reason".into(), json!("invalid-policy"));
                m.insert("invalid_policies".into(), json!(invalid));
            }
            m.insert("policies".into(), json!(pols));
            let policy_allow = allowed && ev.reason == AllowReason::Policy as u8;
            let tier_drop = !allowed
                && (ev.reason == Reason::AdminDeny as u8
                    || ev.reason == Reason::BaselineDeny as u8);
            if policy_drop || tier_drop || policy_allow {
                decided_by(ev, p, names, (src, dst), &mut m);
            }
        }
        None => {
            m.insert("endpoint".into(), Value::Null);
            m.insert("policies".into(), json!([]));
        }
    }
    m.insert("ifindex".into(), json!(ev.ifindex));
    m.insert("fragment".into(), json!(ev.flags & EVF_FRAGMENT != 0));
    m.insert("suppressed".into(), json!(ev.suppressed));
    m.insert("throttled".into(), json!(ev.throttled));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drop decided by a ClusterNetworkPolicy rule names the tier, the
    /// policy and the rule, from the engine's explanation.
    #[test]
    fn cluster_policy_drops_name_the_tier_policy_and_rule() {
        let yaml = "apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {kubernetes.io/metadata.name: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {kubernetes.io/metadata.name: y}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y}
spec: {nodeName: node-2, containers: [{name: c}]}
status: {podIP: 10.0.0.2}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-y}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}
  ingress:
  - {name: keep-y-out, action: Deny, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: y}}}]}
";
        let mut index = palisade_policy::ClusterIndex::new();
        for o in palisade_policy::parse_yaml_documents(yaml, "test") {
            index.apply(o.expect("valid test object"));
        }
        let index = std::sync::Arc::new(index);
        let mut names = Names {
            node: "node-1".into(),
            index: std::sync::Arc::downgrade(&index),
            ..Default::default()
        };
        std::sync::Arc::make_mut(&mut names.by_ip)
            .insert("10.0.0.1".parse().unwrap(), PodKey::new("x", "a"));
        std::sync::Arc::make_mut(&mut names.by_ip)
            .insert("10.0.0.2".parse().unwrap(), PodKey::new("y", "b"));
        names.by_id.insert(1, PodKey::new("x", "a"));
        let mut ev = Event {
            endpoint_id: 1,
            family: 4,
            proto: PROTO_TCP,
            direction: DIR_INGRESS,
            reason: Reason::AdminDeny as u8,
            verdict: palisade_common::VERDICT_DENIED,
            sport: 40000,
            dport: 80,
            ..Default::default()
        };
        ev.src[..4].copy_from_slice(&[10, 0, 0, 2]);
        ev.dst[..4].copy_from_slice(&[10, 0, 0, 1]);
        let v = render(&ev, &names, SystemTime::UNIX_EPOCH);
        assert_eq!(v["reason"], "admin-deny", "{v}");
        assert_eq!(v["tier"], "admin");
        assert_eq!(v["cluster_policy"], "no-y");
        assert_eq!(v["rule_index"], 0);
        assert_eq!(v["rule_name"], "keep-y-out");
        // A datapath reason of another tier (the maps behind the index): the
        // line keeps the kernel's reason and names no rule.
        ev.reason = Reason::BaselineDeny as u8;
        let v = render(&ev, &names, SystemTime::UNIX_EPOCH);
        assert_eq!(v["reason"], "baseline-deny", "{v}");
        assert!(
            v.get("tier").is_none() && v.get("cluster_policy").is_none(),
            "{v}"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn events_name_pods_and_policies() {
        let mut names = Names {
            node: "node-1".into(),
            ..Default::default()
        };
        std::sync::Arc::make_mut(&mut names.by_ip)
            .insert("10.0.0.1".parse().unwrap(), PodKey::new("x", "a"));
        std::sync::Arc::make_mut(&mut names.by_ip)
            .insert("10.0.0.2".parse().unwrap(), PodKey::new("y", "b"));
        names.by_id.insert(3, PodKey::new("y", "b"));
        names
            .policies
            .insert(PodKey::new("y", "b"), (vec!["y/deny-all".into()], vec![]));
        let mut ev = Event {
            endpoint_id: 3,
            family: 4,
            proto: PROTO_TCP,
            direction: DIR_INGRESS,
            reason: Reason::NoPolicyAllows as u8,
            verdict: palisade_common::VERDICT_DENIED,
            sport: 40000,
            dport: 80,
            ..Default::default()
        };
        ev.src[..4].copy_from_slice(&[10, 0, 0, 1]);
        ev.dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        let v = render(&ev, &names, SystemTime::UNIX_EPOCH);
        assert_eq!(v["verdict"], "denied");
        assert_eq!(v["reason"], "no-policy-allows");
        assert_eq!(v["src_namespace"], "x");
        assert_eq!(v["src_pod"], "a");
        assert_eq!(v["dst_pod"], "b");
        assert_eq!(v["dst_port"], 80);
        assert_eq!(v["protocol"], "TCP");
        assert_eq!(v["endpoint"], "y/b");
        assert_eq!(v["policies"][0], "y/deny-all");
        assert_eq!(v["node"], "node-1");
        ev.src[..4].copy_from_slice(&[192, 0, 2, 1]);
        let v = render(&ev, &names, SystemTime::UNIX_EPOCH);
        assert_eq!(v["src_kind"], "external");
        // Isolated by a policy that failed validation: that is the reason.
        std::sync::Arc::make_mut(&mut names.invalid).insert("y/deny-all".into());
        let v = render(&ev, &names, SystemTime::UNIX_EPOCH);
        assert_eq!(v["reason"], "invalid-policy");
        assert_eq!(v["invalid_policies"], json!(["y/deny-all"]));
    }
}
