//! The objects the kube backend creates for a case, as JSON manifests: the
//! case's Namespaces, one Pod per scenario pod running `palisade-pod serve`,
//! a selectorless Service and an EndpointSlice per pod, the step marker
//! policy, label patches, and the check that the case's names are valid
//! Kubernetes names. Everything carries the [`OWNED`] annotation.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{json, Value};

use crate::model::{pod_service_name, ClusterSpec, Family, LabelMap, PodPlan, PortPlan};

/// The annotation that marks what a run created (a label could be selected).
pub const OWNED: &str = "palisade.dev/e2e";
/// The annotation bumped after each step, whose resourceVersion agents must reach.
pub(super) const SYNC_MARK: &str = "palisade.dev/e2e-sync";
/// The NetworkPolicy whose annotation marks a step on the policy stream. It
/// selects no pod (no pod has its label), so it changes no verdict.
pub(super) const SYNC_POLICY: &str = "palisade-e2e-sync";
/// The container of the case pods.
pub(super) const CONTAINER: &str = "serve";
/// Where `palisade-pod` lives in the image.
pub(super) const POD_TOOL: &str = "/palisade-pod";

/// The Namespace to create.
pub fn namespace_manifest(name: &str, labels: &LabelMap) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels, "annotations": {OWNED: "true"}},
    })
}

/// `palisade-pod serve` answering as `identity` on `ports`.
fn serve_command(family: Family, identity: String, ports: &[PortPlan]) -> Vec<String> {
    let mut command = vec![
        POD_TOOL.to_string(),
        "serve".into(),
        "--family".into(),
        family.as_str().into(),
        "--identity".into(),
        identity,
    ];
    command.extend(
        ports
            .iter()
            .map(|port| format!("{}/{}", port.port, port.protocol)),
    );
    command
}

/// The Pod of a scenario pod: `palisade-pod serve` on its ports, pinned to `node`.
pub fn pod_manifest(p: &PodPlan, node: &str, image: &str, family: Family) -> Value {
    let command = serve_command(family, p.key(), &p.ports);
    let ports = crate::objects::container_ports(p);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": p.namespace,
            "name": p.name,
            "labels": p.labels,
            "annotations": {OWNED: "true"},
        },
        "spec": {
            // Placement is part of the case (same node / other node).
            "nodeName": node,
            "tolerations": [{"operator": "Exists"}],
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": CONTAINER,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": command,
                "ports": ports,
            }],
        },
    })
}

/// The namespace of the servers on the nodes themselves (`node_ports`).
pub(super) const NODE_SERVERS_NS: &str = "palisade-e2e-nodes";

/// A server on node `n` itself for the case's `node_ports`: a hostNetwork pod
/// (never selected by any policy, as a node is not) running `palisade-pod
/// serve` on those ports of the node's addresses.
pub fn node_server_manifest(
    n: usize,
    node: &str,
    ports: &[PortPlan],
    image: &str,
    family: Family,
) -> Value {
    let command = serve_command(family, format!("node/{n}"), ports);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": NODE_SERVERS_NS,
            "name": format!("node-{n}"),
            "annotations": {OWNED: "true"},
        },
        "spec": {
            "nodeName": node,
            "hostNetwork": true,
            "tolerations": [{"operator": "Exists"}],
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": CONTAINER,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": command,
            }],
        },
    })
}

/// The ports of a pod's Service: one per service port and protocol.
fn service_ports(p: &PodPlan) -> impl Iterator<Item = &PortPlan> {
    let mut seen = BTreeSet::new();
    p.ports
        .iter()
        .filter(move |port| seen.insert((port.service_port, port.protocol)))
}

/// The selectorless Service `s-<ns>-<pod>` of a pod, every port it serves.
pub fn service_manifest(p: &PodPlan, family: Family) -> Value {
    let ports: Vec<Value> = service_ports(p)
        .map(|port| {
            json!({
                "name": port.service_port_name(),
                "port": port.service_port,
                "targetPort": port.port,
                "protocol": port.protocol.as_str(),
            })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "namespace": p.namespace,
            "name": pod_service_name(&p.namespace, &p.name),
            "annotations": {OWNED: "true"},
        },
        "spec": {
            "type": "ClusterIP",
            "ipFamilyPolicy": "SingleStack",
            "ipFamilies": [family.k8s()],
            "ports": ports,
        },
    })
}

/// The EndpointSlice that backs a pod's Service with that pod alone.
pub fn endpointslice_manifest(p: &PodPlan, ip: IpAddr, node: &str) -> Value {
    let service = pod_service_name(&p.namespace, &p.name);
    let ports: Vec<Value> = service_ports(p)
        .map(|port| {
            json!({
                "name": port.service_port_name(),
                "port": port.port,
                "protocol": port.protocol.as_str(),
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": p.namespace,
            "name": format!("{service}-e2e"),
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "palisade-e2e",
            },
            "annotations": {OWNED: "true"},
        },
        "addressType": Family::of(&ip).k8s(),
        "endpoints": [{
            "addresses": [ip.to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": node,
            "targetRef": {"kind": "Pod", "namespace": p.namespace, "name": p.name},
        }],
        "ports": ports,
    })
}

/// A merge patch that makes an object's labels exactly `new` (keys only in
/// `old` become null, which a JSON merge patch deletes).
pub fn labels_patch(old: &LabelMap, new: &LabelMap) -> Value {
    let mut m = serde_json::Map::new();
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        m.insert(k.clone(), Value::Null);
    }
    for (k, v) in new {
        m.insert(k.clone(), Value::from(v.as_str()));
    }
    json!({"metadata": {"labels": m}})
}

/// The step marker policy (`SYNC_POLICY`) in namespace `ns`.
pub fn sync_policy_manifest(ns: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": ns, "name": SYNC_POLICY, "annotations": {OWNED: "true"}},
        "spec": {
            "podSelector": {"matchLabels": {"palisade.dev/e2e-sync-marker": "selects-no-pod"}},
            "policyTypes": ["Ingress"],
        },
    })
}

/// The ClusterNetworkPolicy whose annotation marks the cluster policies'
/// watch stream: its subject selects no namespace, it has no rules.
pub(super) const SYNC_CLUSTER_POLICY: &str = "palisade-e2e-sync";

pub fn sync_cluster_policy_manifest() -> Value {
    json!({
        "apiVersion": crate::objects::CLUSTER_POLICY_API_VERSION,
        "kind": crate::objects::CLUSTER_POLICY_KIND,
        "metadata": {"name": SYNC_CLUSTER_POLICY, "annotations": {OWNED: "true"}},
        "spec": {
            "tier": "Baseline",
            "priority": 1000,
            "subject": {"namespaces": {"matchLabels": {"palisade.dev/e2e-sync-marker": "selects-no-namespace"}}},
        },
    })
}

/// Why the API server would refuse the case's names, if it would: namespace
/// names are RFC 1123 labels and Service names (`s-<ns>-<pod>`) RFC 1035 labels,
/// 63 characters at most. (The scenario format allows more.)
pub fn unfit_names(spec: &ClusterSpec) -> Option<String> {
    fn label(s: &str, first_letter: bool) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && (!first_letter || s.starts_with(|c: char| c.is_ascii_lowercase()))
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }
    if let Some(ns) = spec.namespaces.keys().find(|ns| !label(ns, false)) {
        return Some(format!("namespace name {ns:?} is not a DNS label"));
    }
    spec.pods.iter().find_map(|p| {
        let svc = pod_service_name(&p.namespace, &p.name);
        (!label(&svc, true)).then(|| {
            format!(
                "the Service name {svc:?} of pod {} is not an RFC 1035 label",
                p.key()
            )
        })
    })
}

/// A `v1` List of objects, for one `kubectl create -f -`.
pub(super) fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::policy_manifest;
    use crate::model::Transport;

    #[test]
    fn a_label_patch_replaces_the_whole_map() {
        let old: LabelMap = [("pod", "a"), ("gone", "1"), ("kept", "x")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let new: LabelMap = [("pod", "b"), ("kept", "x"), ("extra", "1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            labels_patch(&old, &new),
            json!({"metadata": {"labels": {"pod": "b", "gone": null, "kept": "x", "extra": "1"}}})
        );
    }

    #[test]
    fn policies_get_kind_and_api_version_and_need_a_namespace() {
        let (ns, name, m) =
            policy_manifest(&json!({"metadata": {"namespace": "x", "name": "deny"}, "spec": {}}))
                .expect("valid");
        assert_eq!((ns.as_str(), name.as_str()), ("x", "deny"));
        assert_eq!(m["kind"], "NetworkPolicy");
        assert_eq!(m["apiVersion"], "networking.k8s.io/v1");
        assert!(policy_manifest(&json!({"metadata": {"name": "deny"}})).is_err());
        assert!(policy_manifest(
            &json!({"kind": "Pod", "metadata": {"namespace": "x", "name": "p"}})
        )
        .is_err());
    }

    /// A node's own server: hostNetwork on that node, serving the node_ports
    /// under the identity `node/N` that probes check.
    #[test]
    fn node_servers_run_on_the_node_network() {
        let ports = [
            PortPlan::new(80, Transport::Tcp),
            PortPlan::new(53, Transport::Udp),
        ];
        let pod = node_server_manifest(2, "w2", &ports, "img:1", Family::Ipv6);
        assert_eq!(pod["metadata"]["namespace"], NODE_SERVERS_NS);
        assert_eq!(pod["spec"]["hostNetwork"], true);
        assert_eq!(pod["spec"]["nodeName"], "w2");
        assert_eq!(
            pod["spec"]["containers"][0]["command"],
            json!([
                "/palisade-pod",
                "serve",
                "--family",
                "ipv6",
                "--identity",
                "node/2",
                "80/TCP",
                "53/UDP"
            ])
        );
    }

    /// The pod runs `palisade-pod serve` with every port; the Service maps service
    /// ports to container ports and names them like the EndpointSlice does.
    #[test]
    fn pod_command_and_service_ports_follow_the_scenario() {
        let p = PodPlan {
            namespace: "x".into(),
            name: "a".into(),
            labels: [("pod".to_string(), "a".to_string())].into(),
            node: 2,
            ports: vec![
                PortPlan::new(80, Transport::Tcp).named("serve-80-tcp"),
                PortPlan::new(81, Transport::Udp).with_service_port(8081),
            ],
        };
        let pod = pod_manifest(&p, "w2", "img:1", Family::Ipv4);
        assert_eq!(
            pod["spec"]["containers"][0]["command"],
            json!([
                "/palisade-pod",
                "serve",
                "--family",
                "ipv4",
                "--identity",
                "x/a",
                "80/TCP",
                "81/UDP"
            ])
        );
        assert_eq!(pod["spec"]["nodeName"], "w2");
        assert_eq!(
            pod["metadata"]["labels"],
            json!({"pod": "a"}),
            "no label of ours"
        );
        let svc = service_manifest(&p, Family::Ipv4);
        assert_eq!(svc["metadata"]["name"], "s-x-a");
        assert!(
            svc["spec"].get("selector").is_none(),
            "backends come from our slice"
        );
        assert_eq!(svc["spec"]["ports"][1]["port"], 8081);
        assert_eq!(svc["spec"]["ports"][1]["targetPort"], 81);
        let slice = endpointslice_manifest(&p, "10.244.2.9".parse().expect("ip"), "w2");
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "s-x-a"
        );
        assert_eq!(slice["endpoints"][0]["addresses"], json!(["10.244.2.9"]));
        assert_eq!(slice["ports"][1]["port"], 81);
        assert_eq!(slice["ports"][1]["name"], svc["spec"]["ports"][1]["name"]);
    }

    /// Names the API server would refuse skip the case instead of failing it.
    #[test]
    fn names_the_api_server_refuses_are_found() {
        let spec = |ns: &str, pod: &str| ClusterSpec {
            family: Family::Ipv4,
            nodes: 2,
            namespaces: [(ns.to_string(), LabelMap::new())].into(),
            pods: vec![PodPlan {
                namespace: ns.into(),
                name: pod.into(),
                labels: LabelMap::new(),
                node: 1,
                ports: vec![PortPlan::new(80, Transport::Tcp)],
            }],
            externals: Vec::new(),
            node_labels: Default::default(),
            node_ports: Vec::new(),
        };
        assert_eq!(unfit_names(&spec("x", "a")), None);
        assert!(unfit_names(&spec("x.y", "a")).is_some(), "dots");
        assert!(
            unfit_names(&spec("x", &"p".repeat(62))).is_some(),
            "over 63"
        );
        assert!(unfit_names(&spec("X", "a")).is_some(), "upper case");
    }
}
