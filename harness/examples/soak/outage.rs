//! API server outages in kube mode: the agent (`--kube`) reads an
//! in-process API server (`palisade-fake-apiserver`) on a one-node cluster,
//! under the soak's traffic. Each round the API server goes down, changes are
//! made meanwhile (a policy that opens x/a to y/a is added or removed, pod
//! and namespace labels change, a policy selecting nobody is rewritten), the
//! state before the outage must stay enforced while it is down, and once it
//! is back every change must be programmed (the agent reports the API
//! server's last resourceVersion) and enforced.
use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use palisade_fake_apiserver::FakeApi;
use palisade_harness::{
    agent::get_ready, in_netns, objects, AgentConfig, Cluster, ClusterOptions, ClusterSpec, Family,
    LabelMap, Outcome, PodPlan, PortPlan, Transport,
};
use serde_json::{json, Value};

use crate::{probe_all, traffic::Traffic};

/// What the outage rounds measured.
pub struct Figures {
    pub outages: usize,
    pub changes: usize,
    /// Probes during an outage that did not see the state before it.
    pub lost: u64,
    /// Rounds after which the toggled pair was not as the last change says.
    pub not_enforced: u64,
    pub false_drops: u64,
    pub leaks: u64,
    pub broken: u64,
    pub roundtrips: u64,
    pub denied_sent: u64,
    pub denied_arrived: u64,
    /// From the API server's return to every change programmed, per round.
    pub caught_up_ms: Vec<f64>,
}

fn labels(pairs: &[(&str, &str)]) -> LabelMap {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn spec() -> ClusterSpec {
    let pod = |ns: &str, name: &str| PodPlan {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(&[("pod", name)]),
        node: 1,
        ports: vec![
            PortPlan::new(80, Transport::Tcp),
            PortPlan::new(81, Transport::Udp),
        ],
    };
    ClusterSpec {
        family: Family::Ipv4,
        nodes: 1,
        namespaces: [("x", LabelMap::new()), ("y", LabelMap::new())]
            .into_iter()
            .map(|(n, l)| (n.to_string(), l))
            .collect(),
        pods: vec![pod("x", "a"), pod("x", "b"), pod("y", "a"), pod("y", "b")],
        externals: Vec::new(),
        node_labels: Default::default(),
        node_ports: Vec::new(),
    }
}

/// x admits only x, on TCP 80.
fn same_namespace_only() -> Value {
    json!({
        "metadata": {"namespace": "x", "name": "same-namespace-only"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}]}]}
    })
}

/// x/a admits y/a on TCP 80: the change each outage toggles.
fn let_y_in() -> Value {
    json!({
        "metadata": {"namespace": "x", "name": "let-y-in"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"namespaceSelector": {},
                                        "podSelector": {"matchLabels": {"pod": "a"}}}],
                              "ports": [{"port": 80}]}]}
    })
}

/// A policy that selects no pod, rewritten each round.
fn churn(k: usize) -> Value {
    json!({
        "metadata": {"namespace": "y", "name": "churn"},
        "spec": {"podSelector": {"matchLabels": {"none": format!("{k}")}},
                 "ingress": [{"ports": [{"port": 1000 + (k % 1000) as u16}]}]}
    })
}

/// Waits until the agent of node 1 has programmed resourceVersion `rv`.
fn wait_programmed(ns: &str, rv: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = get_ready(ns) {
            if r.ready && r.revision.as_deref() == Some(rv.to_string().as_str()) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("resourceVersion {rv} not programmed after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

pub fn run(agent_binary: &std::path::Path, outages: usize, down_for: Duration) -> Result<Figures> {
    let rt = tokio::runtime::Runtime::new()?;
    let kubeconfig =
        std::env::temp_dir().join(format!("palisade-soak-kubeconfig-{}", std::process::id()));
    let mut agent = AgentConfig::new(agent_binary);
    agent.kube = true;
    agent.env = vec![
        ("KUBECONFIG".into(), kubeconfig.display().to_string()),
        ("RUST_LOG".into(), "info,kube_runtime=error".into()),
    ];
    let spec = spec();
    let mut c = Cluster::build(
        &spec,
        ClusterOptions {
            agent: Some(agent),
            keep_temp: false,
            ..Default::default()
        },
    )?;
    let result = rounds(&rt, &mut c, &spec, &kubeconfig, outages, down_for);
    let _ = std::fs::remove_file(&kubeconfig);
    c.teardown()?;
    result
}

fn rounds(
    rt: &tokio::runtime::Runtime,
    c: &mut Cluster,
    spec: &ClusterSpec,
    kubeconfig: &std::path::Path,
    outages: usize,
    down_for: Duration,
) -> Result<Figures> {
    let ns = c.node_netns(1)?.to_string();
    // The API server listens in the node's namespace, where the agent runs.
    let listener = in_netns(&ns, || std::net::TcpListener::bind("127.0.0.1:0"))?
        .context("binding the API server in the node")?;
    listener.set_nonblocking(true)?;
    let api = {
        let _rt = rt.enter();
        FakeApi::serve_on(tokio::net::TcpListener::from_std(listener)?)
    };
    std::fs::write(
        kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\n",
            api.addr
        ),
    )?;
    for n in spec.namespaces.keys() {
        api.put("namespaces", objects::namespace(n, &LabelMap::new()));
    }
    let node_ip: IpAddr = c.node_ip(1)?;
    for p in &spec.pods {
        let ip = c.pod_ip(&format!("{}/{}", p.namespace, p.name))?;
        api.put("pods", objects::pod(p, ip, node_ip));
    }
    api.put("networkpolicies", same_namespace_only());
    c.launch_agent(1)?;
    wait_programmed(&ns, api.rv(), Duration::from_secs(120))?;
    let base = probe_all(c, &[("x/a", "x/b"), ("y/a", "x/b"), ("y/a", "x/a")])?;
    if base != [Outcome::Reachable, Outcome::Blocked, Outcome::Blocked] {
        bail!("the base policy is not enforced before the outages: {base:?}");
    }

    let traffic = Traffic::start(c)?;
    let mut f = Figures {
        outages,
        changes: 0,
        lost: 0,
        not_enforced: 0,
        false_drops: 0,
        leaks: 0,
        broken: 0,
        roundtrips: 0,
        denied_sent: 0,
        denied_arrived: 0,
        caught_up_ms: Vec::new(),
    };
    let y_b = spec
        .pods
        .iter()
        .find(|p| p.namespace == "y" && p.name == "b")
        .context("y/b")?
        .clone();
    let y_b_ip = c.pod_ip("y/b")?;
    let mut open = false;
    for k in 0..outages {
        let before = if open {
            Outcome::Reachable
        } else {
            Outcome::Blocked
        };
        api.set_down(true);
        // Changes the agent cannot see until the API server is back.
        if open {
            api.delete("networkpolicies", "x/let-y-in", false);
        } else {
            api.put("networkpolicies", let_y_in());
        }
        open = !open;
        let mut relabelled = y_b.clone();
        relabelled
            .labels
            .insert("churn".to_string(), format!("{k}"));
        api.put("pods", objects::pod(&relabelled, y_b_ip, node_ip));
        api.put(
            "namespaces",
            objects::namespace("y", &labels(&[("churn", &format!("{k}"))])),
        );
        api.put("networkpolicies", churn(k));
        f.changes += 4;
        thread::sleep(down_for);
        // Down: the state before the outage is what is enforced.
        let during = probe_all(c, &[("x/a", "x/b"), ("y/a", "x/b"), ("y/a", "x/a")])?;
        f.lost += during
            .iter()
            .zip([Outcome::Reachable, Outcome::Blocked, before])
            .filter(|(g, w)| **g != *w)
            .count() as u64;
        api.set_down(false);
        let t = Instant::now();
        wait_programmed(&ns, api.rv(), Duration::from_secs(60))?;
        f.caught_up_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let now = if open {
            Outcome::Reachable
        } else {
            Outcome::Blocked
        };
        let after = probe_all(c, &[("x/a", "x/b"), ("y/a", "x/b"), ("y/a", "x/a")])?;
        match after[0] {
            Outcome::Reachable => {}
            _ => f.false_drops += 1,
        }
        if after[1] == Outcome::Reachable {
            f.leaks += 1;
        }
        if after[2] != now {
            f.not_enforced += 1;
        }
    }
    let (broken, trips, sent, arrived) = traffic.finish();
    f.broken = broken;
    f.roundtrips = trips;
    f.denied_sent = sent;
    f.denied_arrived = arrived;
    Ok(f)
}
