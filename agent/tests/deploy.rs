//! Checks of deploy/ that need no cluster: every Kubernetes manifest is a valid typed
//! object with no unknown field, the DaemonSet's command line parses with the
//! agent's own CLI definition and agrees with its probes and mounts, and the
//! ClusterRole grants exactly what the kube source uses (derived from code).
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use clap::{CommandFactory, Parser};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::ServiceAccount,
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use palisade_agent::{
    cli::Cli,
    source::kube::{VERBS, WATCHED},
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Files in deploy/ that are not Kubernetes API objects, checked separately.
const NOT_API_OBJECTS: &[&str] = &["kustomization.yaml", "kind-config.yaml"];

/// Every document of every Kubernetes manifest in deploy/: (file, document).
fn documents() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    for f in files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if NOT_API_OBJECTS.contains(&name.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("readable");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value =
                serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !v.is_null() {
                out.push((name.clone(), v));
            }
        }
    }
    out
}

/// The first place where `a` (as written) and `b` (as the typed object re-serializes
/// it) differ: a field the type does not know disappears on the way.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    None => return Some(format!("{p}: unknown field (or wrong place)")),
                    Some(vb) => {
                        if let Some(d) = first_difference(&p, va, vb) {
                            return Some(d);
                        }
                    }
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| format!("{path}.{k}: added by the type"))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (va, vb))| first_difference(&format!("{path}[{i}]"), va, vb)),
        _ if a == b => None,
        _ => Some(format!("{path}: written {a}, typed {b}")),
    }
}

/// Parse into `T` and require a lossless round trip.
fn typed<T: DeserializeOwned + Serialize>(file: &str, v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = serde_json::to_value(&t).expect("serializes");
    if let Some(d) = first_difference("", v, &back) {
        panic!("{file}: {d}");
    }
    t
}

struct Manifests {
    service_accounts: Vec<ServiceAccount>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemonsets: Vec<DaemonSet>,
}

fn manifests() -> Manifests {
    let mut m = Manifests {
        service_accounts: vec![],
        roles: vec![],
        bindings: vec![],
        daemonsets: vec![],
    };
    for (file, v) in documents() {
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let api = v["apiVersion"].as_str().unwrap_or_default().to_string();
        match (api.as_str(), kind.as_str()) {
            ("v1", "ServiceAccount") => m.service_accounts.push(typed(&file, &v)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => m.roles.push(typed(&file, &v)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                m.bindings.push(typed(&file, &v))
            }
            ("apps/v1", "DaemonSet") => m.daemonsets.push(typed(&file, &v)),
            _ => panic!("{file}: {api} {kind} is not an object this test knows; add it here"),
        }
    }
    m
}

#[test]
fn every_manifest_is_a_typed_object_without_unknown_fields() {
    let m = manifests();
    assert_eq!(m.service_accounts.len(), 1);
    assert_eq!(m.roles.len(), 1);
    assert_eq!(m.bindings.len(), 1);
    assert_eq!(m.daemonsets.len(), 1);
}

#[test]
fn the_round_trip_check_catches_unknown_fields() {
    let v: Value = serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "x", "namespace": "kube-system", "lables": {"a": "b"}}
    });
    let r = std::panic::catch_unwind(|| typed::<ServiceAccount>("inline", &v));
    assert!(r.is_err(), "a misspelt field must fail");
}

#[test]
fn kustomization_lists_every_manifest() {
    let text = std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).expect("read");
    let k: Value = serde_yaml::from_str(&text).expect("yaml");
    assert_eq!(k["kind"], "Kustomization");
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("string").to_string())
        .collect();
    let files: BTreeSet<String> = documents().into_iter().map(|(f, _)| f).collect();
    assert_eq!(
        listed, files,
        "kustomization.yaml resources vs the manifests in deploy/"
    );
}

#[test]
fn kind_config_has_three_nodes_and_no_default_cni() {
    let text = std::fs::read_to_string(deploy_dir().join("kind-config.yaml")).expect("read");
    let k: Value = serde_yaml::from_str(&text).expect("yaml");
    assert_eq!(k["kind"], "Cluster");
    assert_eq!(k["apiVersion"], "kind.x-k8s.io/v1alpha4");
    let roles: Vec<&str> = k["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["role"].as_str().expect("role"))
        .collect();
    assert_eq!(roles, ["control-plane", "worker", "worker"]);
    // kindnet enforces NetworkPolicy itself (kind 0.24+): it must be off, and
    // `cargo xtask kind up` configures plain ptp networking in its place, for the
    // pod subnet written here.
    assert_eq!(k["networking"]["disableDefaultCNI"], true);
    assert!(k["networking"]["podSubnet"].as_str().is_some());
}

#[test]
fn cluster_role_grants_exactly_what_the_kube_source_uses() {
    let m = manifests();
    let role = &m.roles[0];
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none(), "no per-name rules expected");
        assert!(
            rule.non_resource_urls.is_none(),
            "no non-resource URLs expected"
        );
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    granted.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    let mut wanted = BTreeSet::new();
    for w in WATCHED {
        for v in VERBS {
            wanted.insert((w.group.to_string(), w.resource.to_string(), v.to_string()));
        }
    }
    assert_eq!(granted, wanted);

    // The binding ties that role to the DaemonSet's ServiceAccount.
    let sa = &m.service_accounts[0];
    let b = &m.bindings[0];
    assert_eq!(b.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&b.role_ref.name), role.metadata.name.as_ref());
    let subjects = b.subjects.as_ref().expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);
    let ds = &m.daemonsets[0];
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
}

#[test]
fn daemonset_command_line_parses_with_the_agent_cli() {
    let m = manifests();
    let ds = &m.daemonsets[0];
    let spec = ds.spec.as_ref().expect("spec");
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];

    // NODE_NAME comes from the downward API, and it is the variable the CLI reads.
    let cmd = Cli::command();
    let node_arg = cmd
        .get_arguments()
        .find(|a| a.get_id() == "node_name")
        .expect("node_name arg");
    let env_name = node_arg
        .get_env()
        .and_then(|e| e.to_str())
        .expect("node_name has an env var");
    let env = c.env.as_ref().expect("env");
    let node_env = env
        .iter()
        .find(|e| e.name == env_name)
        .expect("NODE_NAME set");
    let field = node_env
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("from the downward API");
    assert_eq!(field.field_path, "spec.nodeName");

    // Parse exactly as the container would start, with the env the pod would have.
    let mut argv: Vec<String> = c.command.clone().expect("command");
    argv.extend(c.args.clone().unwrap_or_default());
    assert_eq!(argv[0], "/palisade-agent");
    let with_node = argv
        .iter()
        .any(|a| a == "--node-name" || a.starts_with("--node-name="));
    if !with_node {
        // Same as clap reading the variable, without touching this process's env.
        argv.extend(["--node-name".to_string(), "kind-worker".to_string()]);
    }
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(cli.kube, "the DaemonSet runs the kube source");
    assert!(cli.source_dir.is_none());
    assert_eq!(
        cli.log_format,
        palisade_agent::cli::LogFormat::Json,
        "kubectl logs | jq needs JSON on stderr too"
    );

    // Probes hit the address the agent serves; it is the node's loopback, which the
    // kubelet reaches because the pod shares the node's network namespace.
    for (what, probe, path) in [
        ("readiness", &c.readiness_probe, "/ready"),
        ("liveness", &c.liveness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what} probe is an httpGet"));
        assert_eq!(get.path.as_deref(), Some(path), "{what}");
        let port = match &get.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p,
            other => panic!("{what}: numeric port expected, got {other:?}"),
        };
        assert_eq!(port, i32::from(cli.ready_addr.port()), "{what} port");
        assert_eq!(
            get.host.as_deref(),
            Some(cli.ready_addr.ip().to_string().as_str()),
            "{what} host"
        );
    }

    // The pin dir is inside the bpffs mount, which comes from the host.
    let mounts = c.volume_mounts.as_ref().expect("mounts");
    let bpf = mounts
        .iter()
        .find(|m| cli.pin_dir.starts_with(&m.mount_path))
        .expect("pin dir under a mount");
    assert_eq!(bpf.mount_propagation.as_deref(), Some("HostToContainer"));
    let vol = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == bpf.name)
        .expect("volume");
    assert_eq!(
        vol.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/sys/fs/bpf")
    );

    // The CNI plugin's socket is on the node, where the runtime runs the plugin.
    let sock = cli.cni_socket.as_ref().expect("--cni-socket");
    let m = mounts
        .iter()
        .find(|m| sock.starts_with(&m.mount_path))
        .expect("CNI socket under a mount");
    let vol = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == m.name)
        .expect("volume");
    assert_eq!(
        vol.host_path.as_ref().map(|h| h.path.as_str()),
        Some(m.mount_path.as_str()),
        "the socket directory is the node's own"
    );
    // The init container installs the plugin into the node's CNI directory.
    let init = pod.init_containers.as_ref().expect("init containers");
    let install = init
        .iter()
        .find(|c| c.name == "install-cni")
        .expect("install-cni");
    let cmd = install.command.clone().expect("command");
    assert_eq!(cmd[..2], ["/palisade-cni", "install"]);
    let dir = install
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == cmd[2])
        .expect("install dir mounted");
    let vol = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == dir.name)
        .expect("volume");
    assert_eq!(
        vol.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/opt/cni/bin")
    );

    // Capabilities: exactly the three, nothing privileged.
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON"]));

    // Everywhere, and never two agents on one node.
    let tolerations = pod.tolerations.as_ref().expect("tolerations");
    assert!(tolerations
        .iter()
        .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()));
    let ru = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref())
        .expect("rolling update");
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(ru.max_surge, Some(IntOrString::Int(0)));
    let res = c.resources.as_ref().expect("resources");
    assert!(res.requests.is_some() && res.limits.is_some());
}

/// Every object `cargo xtask kind e2e` creates, for every conformance case, is a
/// typed Kubernetes object without unknown fields, with names the API server
/// accepts; and every policy of every case (placeholders rendered) is a typed
/// NetworkPolicy. No cluster runs here, so this is what keeps the e2e's objects
/// honest.
#[test]
fn kind_e2e_objects_of_every_conformance_case_are_valid() {
    use k8s_openapi::api::{
        core::v1::{Namespace, Pod, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    };
    use palisade_harness::{kube, scenario, Family, Peer};

    // RFC 1035 label: what Service names must be (and, at most 63, slice names).
    fn dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance");
    let files = scenario::collect_files(&[dir]).expect("tests/conformance");
    assert!(files.len() > 50, "the suite is there");
    let (mut pods, mut policies) = (0, 0);
    for f in files {
        let sc = scenario::load(&f).expect("scenario parses");
        let name = sc.name.clone();
        for family in [Family::Ipv4, Family::Ipv6] {
            let spec = sc.cluster_spec(family);
            let ip = |p: &str| -> std::net::IpAddr {
                match family {
                    Family::Ipv4 => format!("10.244.{}.{}", p.len(), p.len() + 7),
                    Family::Ipv6 => format!("fd00:10:244::{}", p.len() + 7),
                }
                .parse()
                .expect("address")
            };
            for (ns, labels) in &spec.namespaces {
                typed::<Namespace>(&name, &kube::namespace_manifest(ns, labels));
            }
            for p in &spec.pods {
                let pod: Pod = typed(
                    &name,
                    &kube::pod_manifest(p, "palisade-worker", "palisade-agent:dev", family),
                );
                for port in pod
                    .spec
                    .iter()
                    .flat_map(|s| &s.containers)
                    .flat_map(|c| c.ports.iter().flatten())
                {
                    if let Some(n) = &port.name {
                        assert!(
                            n.len() <= 15,
                            "{name}: port name {n:?} is over 15 characters"
                        );
                    }
                }
                let svc: Service = typed(&name, &kube::service_manifest(p, family));
                let svc_name = svc.metadata.name.clone().unwrap_or_default();
                assert!(dns_label(&svc_name), "{name}: Service name {svc_name:?}");
                let slice: EndpointSlice = typed(
                    &name,
                    &kube::endpointslice_manifest(p, ip(&p.name), "palisade-worker"),
                );
                let slice_name = slice.metadata.name.clone().unwrap_or_default();
                assert!(
                    dns_label(&slice_name),
                    "{name}: EndpointSlice {slice_name:?}"
                );
                // The slice's ports are the Service's by name (kube-proxy joins them so).
                let svc_ports: BTreeSet<Option<String>> = svc
                    .spec
                    .iter()
                    .flat_map(|s| s.ports.iter().flatten())
                    .map(|p| p.name.clone())
                    .collect();
                let slice_ports: BTreeSet<Option<String>> = slice
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| p.name.clone())
                    .collect();
                assert_eq!(svc_ports, slice_ports, "{name}: {svc_name}");
                pods += 1;
            }
            if !sc.families.contains(&family) {
                continue;
            }
            let resolve = |peer: &Peer| Ok(ip(&peer.to_string()));
            for step in &sc.steps {
                for m in &step.apply {
                    let m = scenario::substitute(m, family, &resolve).expect("placeholders");
                    match scenario::policy_key(&m).expect("a policy") {
                        scenario::PolicyRef::Namespaced(..) => {
                            let (_, _, m) = kube::policy_manifest(&m).expect("a policy");
                            typed::<NetworkPolicy>(&name, &m);
                        }
                        scenario::PolicyRef::Cluster(_) => {
                            let (_, m) = palisade_harness::objects::cluster_policy_manifest(&m)
                                .expect("a cluster policy");
                            typed::<palisade_policy::ClusterNetworkPolicy>(&name, &m);
                        }
                    }
                    policies += 1;
                }
            }
        }
    }
    assert!(
        pods > 500 && policies > 50,
        "{pods} pods, {policies} policies checked"
    );
    let marker: NetworkPolicy = typed("sync marker", &kube::sync_policy_manifest("x"));
    let selector = marker
        .spec
        .and_then(|s| s.pod_selector)
        .and_then(|p| p.match_labels);
    assert!(
        selector.is_some_and(|l| !l.is_empty()),
        "the step marker policy selects by a label no pod carries"
    );
}

/// The oldest Kubernetes minor version the manifests are written for (README,
/// "Kubernetes (kind)"). The typed check above runs against one schema (the
/// k8s-openapi version feature); these are the Pod fields that schema knows and
/// API servers from this version on do not, each with the version that added it.
const MIN_MINOR: u32 = 27;
const NEWER_POD_FIELDS: &[(&str, u32)] = &[
    ("appArmorProfile", 30),
    ("recursiveReadOnly", 30),
    ("supplementalGroupsPolicy", 31),
    ("seLinuxChangePolicy", 32),
    ("restartPolicy@containers", 28),
];

fn field_uses(v: &Value, parent: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                out.push(format!("{k}@{parent}"));
                out.push(k.clone());
                field_uses(child, k, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| field_uses(x, parent, out)),
        _ => {}
    }
}

#[test]
fn manifests_use_no_field_newer_than_the_oldest_supported_kubernetes() {
    for (file, doc) in documents() {
        let mut uses = Vec::new();
        field_uses(&doc, "", &mut uses);
        for (field, minor) in NEWER_POD_FIELDS {
            assert!(
                !(*minor > MIN_MINOR && uses.iter().any(|u| u == field)),
                "{file}: {field} needs Kubernetes 1.{minor}; the manifests support 1.{MIN_MINOR} and later"
            );
        }
    }
    let ds: Value = documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "DaemonSet")
        .map(|(_, d)| d)
        .expect("a DaemonSet");
    let container = ds["spec"]["template"]["spec"]["containers"][0]["name"]
        .as_str()
        .expect("container name")
        .to_string();
    assert_eq!(
        ds["spec"]["template"]["metadata"]["annotations"]
            [format!("container.apparmor.security.beta.kubernetes.io/{container}")],
        "unconfined",
        "the AppArmor annotation names the agent's container"
    );
}

/// `deploy/monitoring/`: the Prometheus Operator objects, parsed into types
/// of their CRDs' schema (monitoring.coreos.com/v1) without unknown fields.
mod monitoring {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::Service;
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    use super::{deploy_dir, manifests, typed};

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Meta {
        name: String,
        namespace: String,
        labels: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Selector {
        match_labels: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct NamespaceSelector {
        match_names: Vec<String>,
    }

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Endpoint {
        port: String,
        path: String,
        interval: String,
    }

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct MonitorSpec {
        selector: Selector,
        namespace_selector: NamespaceSelector,
        #[serde(skip_serializing_if = "Option::is_none")]
        endpoints: Option<Vec<Endpoint>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pod_metrics_endpoints: Option<Vec<Endpoint>>,
    }

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Monitor {
        api_version: String,
        kind: String,
        metadata: Meta,
        spec: MonitorSpec,
    }

    fn read(file: &str) -> Value {
        let path = deploy_dir().join("monitoring").join(file);
        let text = std::fs::read_to_string(&path).expect("readable");
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
    }

    #[test]
    fn monitors_scrape_the_agents_metrics_port() {
        let ds = &manifests().daemonsets[0];
        let tpl = ds.spec.as_ref().expect("spec").template.clone();
        let pod_labels = tpl.metadata.and_then(|m| m.labels).unwrap_or_default();
        let ns = ds.metadata.namespace.clone().unwrap_or_default();
        let container = &tpl.spec.expect("pod spec").containers[0];
        let metrics_port = container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("metrics"))
            .expect("the DaemonSet names a `metrics` container port");
        for (file, kind, eps) in [
            ("podmonitor.yaml", "PodMonitor", "podMetricsEndpoints"),
            ("servicemonitor.yaml", "ServiceMonitor", "endpoints"),
        ] {
            let m: Monitor = typed(file, &read(file));
            assert_eq!(m.api_version, "monitoring.coreos.com/v1", "{file}");
            assert_eq!(m.kind, kind, "{file}");
            assert_eq!(m.metadata.namespace, ns, "{file}");
            assert_eq!(
                m.spec.namespace_selector.match_names,
                vec![ns.as_str()],
                "{file}"
            );
            let endpoints = m
                .spec
                .endpoints
                .or(m.spec.pod_metrics_endpoints)
                .unwrap_or_else(|| panic!("{file}: no {eps}"));
            for e in &endpoints {
                assert_eq!(e.port, "metrics", "{file}");
                assert_eq!(e.path, "/metrics", "{file}");
            }
            if kind == "PodMonitor" {
                for (k, v) in &m.spec.selector.match_labels {
                    assert_eq!(pod_labels.get(k), Some(v), "{file} selects the agent pods");
                }
            }
        }
        let svc: Service = typed("service.yaml", &read("service.yaml"));
        let spec = svc.spec.expect("service spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "headless");
        for (k, v) in spec.selector.unwrap_or_default() {
            assert_eq!(
                pod_labels.get(&k),
                Some(&v),
                "the Service selects the agent pods"
            );
        }
        let port = &spec.ports.unwrap_or_default()[0];
        assert_eq!(port.name.as_deref(), Some("metrics"));
        assert_eq!(port.port, metrics_port.container_port);
        let sm: Monitor = typed("servicemonitor.yaml", &read("servicemonitor.yaml"));
        let svc_labels = svc.metadata.labels.unwrap_or_default();
        for (k, v) in &sm.spec.selector.match_labels {
            assert_eq!(
                svc_labels.get(k),
                Some(v),
                "the ServiceMonitor selects the Service"
            );
        }
    }

    #[test]
    fn the_component_lists_every_file() {
        let k = read("kustomization.yaml");
        assert_eq!(k["kind"], "Component");
        assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1alpha1");
        let mut listed: Vec<String> = k["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| r.as_str().expect("a file").to_string())
            .collect();
        listed.sort();
        let mut files: Vec<String> = std::fs::read_dir(deploy_dir().join("monitoring"))
            .expect("deploy/monitoring")
            .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
            .filter(|n| n != "kustomization.yaml")
            .collect();
        files.sort();
        assert_eq!(listed, files);
    }
}
