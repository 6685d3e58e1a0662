//! Reading scenario files: finding them under the paths a run names, parsing
//! them, and validating every value with errors that name the file and the
//! key (the default model for what a file leaves out, pods and namespaces
//! that exist, matrices whose peers exist and serve the port, placeholders
//! that name peers of the cluster).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::format::{ClusterDef, ExpectDef, FileDef, PortDef};
use super::placeholders::substitute;
use super::spec::{policy_key, Expectation, PolicyRef, Scenario, Step};
use crate::matrix::{Matrix, Peer, Via};
use crate::model::{
    default_ports, ClusterSpec, ExternalSpec, Family, LabelMap, PodPlan, PortPlan, Transport,
};
use crate::objects::CLUSTER_POLICY_KIND;

/// Every scenario file named by `paths`: a file as given, a directory as every
/// `*.yaml` below it sorted by path.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found)?;
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let e = e?;
        let path = e.path();
        if e.file_type()?.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "yaml") {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads and validates one scenario file.
pub fn load(path: &Path) -> Result<Scenario> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    parse(&text, path)
}

/// Parses and validates scenario text; errors start with the file name.
pub fn parse(text: &str, path: &Path) -> Result<Scenario> {
    let file = path.display().to_string();
    let def: FileDef = serde_yaml::from_str(text).map_err(|e| anyhow!("{file}: {e}"))?;
    validate(def, path).map_err(|e| anyhow!("{file}: {e:#}"))
}

fn protocol(p: &Option<String>, key: &str) -> Result<Transport> {
    match p {
        None => Ok(Transport::Tcp),
        Some(s) => s.parse().with_context(|| key.to_string()),
    }
}

fn ports(defs: &[PortDef], key: &str) -> Result<Vec<PortPlan>> {
    let mut out: Vec<PortPlan> = Vec::new();
    for (i, d) in defs.iter().enumerate() {
        let k = format!("{key}[{i}]");
        if d.port == 0 {
            bail!("{k}.port: must be 1..65535");
        }
        let proto = protocol(&d.protocol, &format!("{k}.protocol"))?;
        let sp = d.service_port.unwrap_or(d.port);
        if sp == 0 {
            bail!("{k}.service_port: must be 1..65535");
        }
        if out.iter().any(|p| p.port == d.port && p.protocol == proto) {
            bail!("{k}: {proto}/{} listed twice", d.port);
        }
        if out
            .iter()
            .any(|p| p.service_port == sp && p.protocol == proto)
        {
            bail!("{k}.service_port: {proto}/{sp} already used by another port");
        }
        if let Some(n) = &d.name {
            if n.is_empty() || out.iter().any(|p| p.name.as_deref() == Some(n)) {
                bail!("{k}.name: {n:?} is empty or not unique");
            }
        }
        out.push(PortPlan {
            port: d.port,
            protocol: proto,
            name: d.name.clone(),
            service_port: sp,
        });
    }
    Ok(out)
}

fn validate(def: FileDef, path: &Path) -> Result<Scenario> {
    if def.name.trim().is_empty() {
        bail!("name: must not be empty");
    }
    let families = match &def.families {
        None => vec![Family::Ipv4, Family::Ipv6],
        Some(v) if v.is_empty() => bail!("families: must list at least one family"),
        Some(v) => v
            .iter()
            .enumerate()
            .map(|(i, f)| f.parse().with_context(|| format!("families[{i}]")))
            .collect::<Result<Vec<_>>>()?,
    };
    let cluster = build_cluster(def.cluster)?;
    if def.steps.is_empty() {
        bail!("steps: at least one step is required");
    }
    let pods: BTreeSet<String> = cluster.pods.iter().map(|p| p.key()).collect();
    let mut policies: BTreeSet<PolicyRef> = BTreeSet::new();
    let mut steps = Vec::new();
    for (si, sd) in def.steps.into_iter().enumerate() {
        let sk = format!("steps[{si}]");
        let mut step = Step::default();
        if let Some(sl) = sd.set_labels {
            for (k, l) in sl.pods.unwrap_or_default() {
                if !pods.contains(&k) {
                    bail!("{sk}.set_labels.pods: no pod {k:?}");
                }
                step.set_pod_labels.push((k, l.unwrap_or_default()));
            }
            for (k, l) in sl.namespaces.unwrap_or_default() {
                if !cluster.namespaces.contains_key(&k) {
                    bail!("{sk}.set_labels.namespaces: no namespace {k:?}");
                }
                step.set_namespace_labels.push((k, l.unwrap_or_default()));
            }
        }
        for (i, d) in sd.delete.unwrap_or_default().into_iter().enumerate() {
            let (ns, name) = d
                .split_once('/')
                .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                .ok_or_else(|| {
                    anyhow!("{sk}.delete[{i}]: {d:?} is not namespace/name nor ClusterNetworkPolicy/name")
                })?;
            // Namespaces are lowercase, so the kind cannot be read as one.
            let key = if ns == CLUSTER_POLICY_KIND {
                PolicyRef::Cluster(name.to_string())
            } else {
                PolicyRef::Namespaced(ns.to_string(), name.to_string())
            };
            if !policies.remove(&key) {
                bail!("{sk}.delete[{i}]: no {key} was applied before this step");
            }
            step.delete.push(key);
        }
        for (i, m) in sd.apply.unwrap_or_default().into_iter().enumerate() {
            let k = format!("{sk}.apply[{i}]");
            let v: Value = serde_json::to_value(&m).map_err(|e| anyhow!("{k}: {e}"))?;
            let key = policy_key(&v).with_context(|| k.clone())?;
            if let PolicyRef::Namespaced(ns, _) = &key {
                if !cluster.namespaces.contains_key(ns) {
                    bail!("{k}.metadata.namespace: namespace {ns:?} is not in the cluster");
                }
            }
            check_placeholders(&v, &cluster).with_context(|| k.clone())?;
            policies.insert(key);
            step.apply.push(v);
        }
        for (i, e) in sd.expect.unwrap_or_default().into_iter().enumerate() {
            let k = format!("{sk}.expect[{i}]");
            step.expect
                .push(expectation(e, &cluster).with_context(|| k.clone())?);
        }
        steps.push(step);
    }
    Ok(Scenario {
        path: path.to_path_buf(),
        name: def.name,
        description: def.description,
        families,
        cluster,
        steps,
    })
}

fn build_cluster(def: Option<ClusterDef>) -> Result<ClusterSpec> {
    // An omitted field takes the default model's value, so `cluster: {}` is
    // the default model and `cluster: {nodes: 3}` the default model on 3 nodes.
    let def = def.unwrap_or_default();
    let default = ClusterSpec::default_model(Family::Ipv4);
    let nodes = def.nodes.unwrap_or(2);
    if nodes == 0 || nodes > 200 {
        bail!("cluster.nodes: must be 1..200, got {nodes}");
    }
    let namespaces: BTreeMap<String, LabelMap> = match def.namespaces {
        None => default.namespaces.clone(),
        Some(m) => m
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect(),
    };
    for ns in namespaces.keys() {
        if !is_dns_label(ns) {
            bail!("cluster.namespaces: {ns:?} is not a valid namespace name");
        }
    }
    let base_ports = match &def.ports {
        None => default_ports(),
        Some(p) => ports(p, "cluster.ports")?,
    };
    let pods = match def.pods {
        None => {
            let mut v = default.pods.clone();
            for (i, p) in v.iter_mut().enumerate() {
                p.node = i % nodes + 1;
                p.ports = base_ports.clone();
            }
            v
        }
        Some(defs) => {
            let mut v = Vec::new();
            for (i, d) in defs.into_iter().enumerate() {
                let k = format!("cluster.pods[{i}]");
                let (ns, name) = d
                    .name
                    .split_once('/')
                    .filter(|(a, b)| !a.is_empty() && is_dns_label(b))
                    .ok_or_else(|| anyhow!("{k}.name: {:?} is not namespace/name", d.name))?;
                if !namespaces.contains_key(ns) {
                    bail!("{k}.name: namespace {ns:?} is not listed in cluster.namespaces");
                }
                let node = d.node.unwrap_or(i % nodes + 1);
                if node == 0 || node > nodes {
                    bail!("{k}.node: {node} is not in 1..={nodes}");
                }
                let pod_ports = match &d.ports {
                    Some(p) => ports(p, &format!("{k}.ports"))?,
                    None => base_ports.clone(),
                };
                v.push(PodPlan {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    labels: d.labels.unwrap_or_default(),
                    node,
                    ports: pod_ports,
                });
            }
            v
        }
    };
    let mut externals = Vec::new();
    for (i, d) in def.externals.unwrap_or_default().into_iter().enumerate() {
        let k = format!("cluster.externals[{i}]");
        if d.name.is_empty()
            || d.name.contains('/')
            || d.name.starts_with('@')
            || d.name.contains(char::is_whitespace)
        {
            bail!("{k}.name: {:?} is not a valid external name", d.name);
        }
        externals.push(ExternalSpec {
            name: d.name,
            ports: ports(&d.ports.unwrap_or_default(), &format!("{k}.ports"))?,
        });
    }
    let mut node_labels = BTreeMap::new();
    for (n, labels) in def.node_labels.unwrap_or_default() {
        if n == 0 || n > nodes {
            bail!("cluster.node_labels: node {n} is not in 1..={nodes}");
        }
        let labels = labels.unwrap_or_default();
        if labels.contains_key("kubernetes.io/hostname") {
            bail!(
                "cluster.node_labels.{n}: kubernetes.io/hostname is set by the runner (node-{n})"
            );
        }
        node_labels.insert(n, labels);
    }
    let node_ports = ports(&def.node_ports.unwrap_or_default(), "cluster.node_ports")?;
    let spec = ClusterSpec {
        family: Family::Ipv4,
        nodes,
        namespaces,
        pods,
        externals,
        node_labels,
        node_ports,
    };
    spec.validate().context("cluster")?;
    Ok(spec)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn peer_exists(p: &Peer, c: &ClusterSpec) -> bool {
    match p {
        Peer::Pod(k) => c.pods.iter().any(|q| &q.key() == k),
        Peer::Node(i) => *i >= 1 && *i <= c.nodes,
        Peer::External(n) => c.externals.iter().any(|e| &e.name == n),
    }
}

fn serves(p: &Peer, c: &ClusterSpec, port: u16, proto: Transport) -> bool {
    let ports = match p {
        Peer::Pod(k) => c.pods.iter().find(|q| &q.key() == k).map(|q| &q.ports),
        Peer::External(n) => c.externals.iter().find(|e| &e.name == n).map(|e| &e.ports),
        Peer::Node(_) => Some(&c.node_ports),
    };
    ports.is_some_and(|ps| ps.iter().any(|q| q.port == port && q.protocol == proto))
}

fn expectation(e: ExpectDef, c: &ClusterSpec) -> Result<Expectation> {
    if e.port == 0 {
        bail!("port: must be 1..65535");
    }
    let protocol = protocol(&e.protocol, "protocol")?;
    let via = match e.via.as_deref() {
        None | Some("service") => Via::Service,
        Some("pod") => Via::Pod,
        Some(v) => bail!("via: {v:?} is not `service` or `pod`"),
    };
    let ignore_loopback = e.ignore_loopback.unwrap_or(true);
    let matrix = Matrix::parse(&e.matrix).context("matrix")?;
    for col in &matrix.columns {
        if matches!(col, Peer::Node(_)) && c.node_ports.is_empty() {
            bail!("matrix: {col} can be a destination only with cluster.node_ports");
        }
        if !peer_exists(col, c) {
            bail!("matrix: destination {col} is not in the cluster");
        }
    }
    for (r, (row, _)) in matrix.rows.iter().enumerate() {
        if !peer_exists(row, c) {
            bail!("matrix: source {row} is not in the cluster");
        }
        for (ci, col) in matrix.columns.iter().enumerate() {
            if matrix.checked(ignore_loopback, r, ci) && !serves(col, c, e.port, protocol) {
                bail!(
                    "matrix: {col} does not serve {protocol}/{} (cell {row} -> {col})",
                    e.port
                );
            }
        }
    }
    Ok(Expectation {
        port: e.port,
        protocol,
        via,
        ignore_loopback,
        matrix,
    })
}

fn check_placeholders(v: &Value, c: &ClusterSpec) -> Result<()> {
    let probe = |p: &Peer| -> Result<IpAddr> {
        if peer_exists(p, c) {
            Ok(IpAddr::from([0, 0, 0, 0]))
        } else {
            bail!("placeholder refers to {p}, which is not in the cluster")
        }
    };
    substitute(v, Family::Ipv4, &probe).map(|_| ())
}
