//! `cargo xtask demo`: a three-tier app (web, api, db), a DNS pod in kube-system
//! and a backup server outside the pod network, on a 2-node namespace cluster with
//! the real agent on each node. Policies are applied step by step; after each the
//! connectivity matrix is probed and the deny log lines the agents printed for the
//! blocked attempts are shown. Everything is torn down at the end (and on Ctrl-C).
use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use palisade_harness::{
    AgentConfig, Cluster, ClusterOptions, ClusterSpec, ExternalSpec, Family, LabelMap, Outcome,
    Peer, PodPlan, PortPlan, Probe, Transport, Via,
};
use serde_json::Value;

struct Target {
    label: &'static str,
    to: &'static str,
    port: u16,
    protocol: Transport,
}

const TARGETS: &[Target] = &[
    Target {
        label: "web:80",
        to: "shop/web",
        port: 80,
        protocol: Transport::Tcp,
    },
    Target {
        label: "api:8080",
        to: "shop/api",
        port: 8080,
        protocol: Transport::Tcp,
    },
    Target {
        label: "db:5432",
        to: "shop/db",
        port: 5432,
        protocol: Transport::Tcp,
    },
    Target {
        label: "dns:53/udp",
        to: "kube-system/dns",
        port: 53,
        protocol: Transport::Udp,
    },
    Target {
        label: "@backup:873",
        to: "@backup",
        port: 873,
        protocol: Transport::Tcp,
    },
];

const SOURCES: &[&str] = &["shop/web", "shop/api", "shop/db", "@backup"];

fn labels(pairs: &[(&str, &str)]) -> LabelMap {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(ns: &str, name: &str, l: &[(&str, &str)], node: usize, ports: Vec<PortPlan>) -> PodPlan {
    PodPlan {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(l),
        node,
        ports,
    }
}

fn spec() -> ClusterSpec {
    let tcp = |p| PortPlan::new(p, Transport::Tcp);
    ClusterSpec {
        family: Family::Ipv4,
        nodes: 2,
        namespaces: [
            ("shop".to_string(), labels(&[("team", "shop")])),
            ("kube-system".to_string(), LabelMap::new()),
        ]
        .into(),
        pods: vec![
            pod(
                "shop",
                "web",
                &[("app", "web")],
                1,
                vec![tcp(80).named("http")],
            ),
            pod(
                "shop",
                "api",
                &[("app", "api")],
                2,
                vec![tcp(8080).named("http")],
            ),
            pod(
                "shop",
                "db",
                &[("app", "db")],
                1,
                vec![tcp(5432).named("postgres")],
            ),
            pod(
                "kube-system",
                "dns",
                &[("k8s-app", "kube-dns")],
                2,
                vec![
                    PortPlan::new(53, Transport::Udp).named("dns"),
                    tcp(53).named("dns-tcp"),
                ],
            ),
        ],
        externals: vec![ExternalSpec {
            name: "backup".into(),
            ports: vec![tcp(873)],
        }],
        node_labels: Default::default(),
        node_ports: Vec::new(),
    }
}

const STEPS: &[(&str, &str)] = &[
    (
        "Default deny: nothing in or out of namespace shop",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"#,
    ),
    (
        "Allow DNS: every shop pod may query kube-dns on UDP and TCP 53",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
"#,
    ),
    (
        "Web is public; web may call api on its named port http",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
  - ports: [{port: 80}]
  egress:
  - to: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: 5432}]
"#,
    ),
    (
        "Only api reaches db; db may push backups to the backup host outside the cluster",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: postgres}]
  egress:
  - to: [{ipBlock: {cidr: "{{host @backup}}"}}]
    ports: [{port: 873}]
"#,
    ),
    (
        "Cluster admin guardrail (ClusterNetworkPolicy, Admin tier): no pod reaches the backup host, whatever its namespace allows",
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-egress-outside}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {}}
  egress:
  - name: backup-host
    action: Deny
    to: [{networks: ["{{host @backup}}"]}]
"#,
    ),
];

fn probes() -> Vec<(usize, usize, Probe)> {
    let mut out = Vec::new();
    for (si, src) in SOURCES.iter().enumerate() {
        for (ti, t) in TARGETS.iter().enumerate() {
            if *src == t.to {
                continue;
            }
            let (Ok(from), Ok(to)) = (Peer::parse(src), Peer::parse(t.to)) else {
                continue;
            };
            out.push((
                si,
                ti,
                Probe {
                    from,
                    to,
                    port: t.port,
                    protocol: t.protocol,
                    via: Via::Service,
                },
            ));
        }
    }
    out
}

fn show_matrix(c: &Cluster) -> Result<()> {
    let ps = probes();
    let list: Vec<Probe> = ps.iter().map(|(_, _, p)| p.clone()).collect();
    let outcomes = c.probe_with_timeout(&list, Duration::from_millis(800))?;
    let mut cells: BTreeMap<(usize, usize), &str> = BTreeMap::new();
    for ((si, ti, _), o) in ps.iter().zip(&outcomes) {
        cells.insert(
            (*si, *ti),
            match o {
                Outcome::Reachable => "ok",
                Outcome::Blocked => "BLOCKED",
                Outcome::Skipped => "skip",
            },
        );
    }
    print!("    {:<12}", "from \\ to");
    for t in TARGETS {
        print!("{:<13}", t.label);
    }
    println!();
    for (si, s) in SOURCES.iter().enumerate() {
        print!("    {s:<12}");
        for ti in 0..TARGETS.len() {
            print!("{:<13}", cells.get(&(si, ti)).copied().unwrap_or("-"));
        }
        println!();
    }
    Ok(())
}

fn show_denies(c: &Cluster, seen: &mut [usize]) -> Result<()> {
    let mut any = false;
    for node in 1..=c.node_count() {
        let lines = c.deny_log_lines(node)?;
        let start = seen[node - 1].min(lines.len());
        // The agents also report allowed connections (--flow-events=new, for
        // `kubectl palisade advise` at the end); the steps show the drops.
        for v in lines[start..]
            .iter()
            .filter(|v| v["event"] != "palisade-allow")
        {
            if !any {
                println!("  deny log (agent stdout, one JSON object per line; abridged):");
                any = true;
            }
            println!("    {}", abridge(v));
        }
        seen[node - 1] = lines.len();
    }
    if !any {
        println!("  deny log: nothing denied");
    }
    Ok(())
}

fn who(v: &Value, side: &str) -> String {
    let s = |k: &str| v[format!("{side}_{k}")].as_str().unwrap_or("").to_string();
    match s("kind").as_str() {
        "pod" => format!("{}/{}", s("namespace"), s("pod")),
        "node" => format!("node {}", s("node")),
        _ => format!("external {}", s("ip")),
    }
}

fn abridge(v: &Value) -> String {
    // A cluster policy's rule decided: name it instead of the namespace's.
    if let Some(cnp) = v["cluster_policy"].as_str() {
        return format!(
            "{} {} {} {} -> {}:{} {} endpoint={} tier={} cluster_policy={cnp} rule={}",
            v["node"].as_str().unwrap_or("?"),
            v["verdict"].as_str().unwrap_or("?"),
            v["direction"].as_str().unwrap_or("?"),
            who(v, "src"),
            who(v, "dst"),
            v["dst_port"],
            v["protocol"].as_str().unwrap_or("?"),
            v["endpoint"].as_str().unwrap_or("-"),
            v["tier"].as_str().unwrap_or("?"),
            v["rule_name"].as_str().unwrap_or("?"),
        );
    }
    format!(
        "{} {} {} {} -> {}:{} {} endpoint={} policies={}",
        v["node"].as_str().unwrap_or("?"),
        v["verdict"].as_str().unwrap_or("?"),
        v["direction"].as_str().unwrap_or("?"),
        who(v, "src"),
        who(v, "dst"),
        v["dst_port"],
        v["protocol"].as_str().unwrap_or("?"),
        v["endpoint"].as_str().unwrap_or("-"),
        v["policies"],
    )
}

/// A few lines of node 1's `/metrics` (what Prometheus scrapes).
fn show_metrics(c: &Cluster) -> Result<()> {
    let ns = c.node_netns(1)?.to_string();
    let addr: std::net::SocketAddr = palisade_harness::agent::READY_ADDR.parse()?;
    let (_, text) = palisade_harness::in_netns(&ns, move || {
        palisade_harness::agent::http_get(addr, "/metrics")
    })??;
    println!("\nMetrics of node-1 (GET /metrics, scraped by Prometheus; a few lines):");
    // Packets by direction, verdict and reason: the series that counted any.
    for line in text.lines().filter(|l| {
        (l.starts_with("palisade_packets_total") && !l.ends_with(" 0"))
            || l.starts_with("palisade_policy_programming_seconds_count")
            || l.starts_with("palisade_map_entries{map=\"policy_v4\"}")
    }) {
        println!("    {line}");
    }
    Ok(())
}

/// Keeps what the demo cluster's agents read and printed under
/// `<target>/demo/` (its manifests, its events), and shows `kubectl palisade`
/// answering about it.
fn hand_over(c: &Cluster, plugin: &Path) -> Result<()> {
    let out = crate::target_dir().join("demo");
    let manifests = out.join("manifests");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&manifests).context("creating the demo's output directory")?;
    for e in std::fs::read_dir(c.source_dir(1)?)?.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "yaml" || x == "json") {
            std::fs::copy(&p, manifests.join(e.file_name()))?;
        }
    }
    let mut events = String::new();
    for node in 1..=c.node_count() {
        events.push_str(&std::fs::read_to_string(c.deny_log_path(node)?).unwrap_or_default());
    }
    let events_file = out.join("events.jsonl");
    std::fs::write(&events_file, events)?;
    let m = manifests.display().to_string();
    let e = events_file.display().to_string();
    let p = plugin.display().to_string();
    println!(
        "
Ask the engine why (kubectl palisade, on the demo's manifests and events):"
    );
    let advice = out.join("shop-advice.yaml");
    let a = advice.display().to_string();
    let runs: [Vec<&str>; 5] = [
        vec![
            "explain",
            "--source-dir",
            &m,
            "--from",
            "shop/web",
            "--to",
            "shop/db",
            "--port",
            "5432",
        ],
        vec![
            "observe",
            "--file",
            &e,
            "--verdict",
            "denied",
            "--last",
            "3",
        ],
        vec!["diff", "--source-dir", &m, "--delete", "shop/db"],
        // Least-privilege policies from the connections the agents saw
        // allowed (--flow-events=new), and the check that they block nothing
        // that was observed.
        vec!["advise", "--source-dir", &m, "-n", "shop", "--flows", &e],
        vec!["diff", "--source-dir", &m, "-f", &a, "--flows", &e],
    ];
    for args in runs {
        println!("  $ kubectl palisade {}", args.join(" "));
        let o = std::process::Command::new(plugin)
            .args(&args)
            .output()
            .with_context(|| format!("running {p}"))?;
        if args[0] == "advise" && o.status.success() {
            std::fs::write(&advice, &o.stdout).context("writing the advice")?;
        }
        if o.status.code() == Some(2) || o.status.code().is_none() {
            bail!(
                "kubectl palisade {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        for line in String::from_utf8_lossy(&o.stdout).lines().take(8) {
            println!("    {line}");
        }
    }
    println!(
        "
Try more: put {} on PATH (kubectl then runs it as `kubectl palisade`), and see
`kubectl palisade --help`. On what the demo left in {}:
  kubectl palisade explain --source-dir {m} --from shop/web --to svc/shop/s-shop-api --port 8080
  kubectl palisade observe --file {e} --not --verdict allowed -o table
  kubectl palisade advise --source-dir {m} -n shop --flows {e}
Against a running agent, `kubectl palisade observe --agent 127.0.0.1:9464 --follow`; on a
cluster, the same commands without --source-dir/--file use your kubeconfig.",
        plugin
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        out.display()
    );
    Ok(())
}

pub fn run(agent: &Path, plugin: &Path) -> Result<()> {
    println!("Palisade demo: web -> api -> db, kube-dns, and a backup host outside the cluster,");
    println!("on two nodes built from network namespaces, with palisade-agent on each node.\n");
    let mut c = Cluster::build(
        &spec(),
        ClusterOptions {
            agent: Some({
                let mut a = AgentConfig::new(agent);
                a.extra_args = vec!["--flow-events=new".into()];
                a
            }),
            keep_temp: false,
            ..Default::default()
        },
    )
    .context("building the demo cluster")?;
    let result = (|| -> Result<()> {
        c.start_agents()?;
        c.sync()?;
        let mut seen = vec![0usize; c.node_count()];
        println!(
            "Step 0: no NetworkPolicy; everything is reachable (probes via Service ClusterIPs)"
        );
        show_matrix(&c)?;
        show_denies(&c, &mut seen)?;
        for (i, (title, yaml)) in STEPS.iter().enumerate() {
            println!("\nStep {}: {title}", i + 1);
            let backup = c.external_ip("backup")?;
            let host = format!("{backup}/32");
            let text = yaml.replace("{{host @backup}}", &host);
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v: Value = serde::Deserialize::deserialize(doc).context("demo policy YAML")?;
                let name = v["metadata"]["name"].as_str().unwrap_or("?");
                if v["kind"] == "ClusterNetworkPolicy" {
                    println!("  kubectl apply: clusternetworkpolicy {name}");
                    c.apply_cluster_policy(&v)?;
                } else {
                    println!("  kubectl apply: networkpolicy shop/{name}");
                    c.apply_policy(&v)?;
                }
            }
            c.sync()?;
            show_matrix(&c)?;
            // Give the agents a moment to print what they denied.
            std::thread::sleep(Duration::from_millis(300));
            show_denies(&c, &mut seen)?;
        }
        println!(
            "\nDone: web is public, api only from web, db only from api, DNS for all; the cluster admin's\nguardrail overrides the namespace's backup rule."
        );
        show_metrics(&c)?;
        hand_over(&c, plugin)?;
        Ok(())
    })();
    let down = c.teardown();
    result?;
    down?;
    println!("Cluster torn down; nothing left behind.");
    Ok(())
}
