//! The real plugin, the real agent: pods added on a namespace cluster the way
//! a runtime adds them with `palisade-cni` chained after the pod network's
//! plugin, through the harness's CNI mode. Needs root: `#[ignore]`d for plain
//! `cargo test`, run by `cargo xtask test`.
use std::path::Path;

use palisade_harness::{
    AgentConfig, Cluster, ClusterOptions, ClusterSpec, Family, Outcome, Peer, PodPlan, PortPlan,
    Probe, Transport, Via,
};
use serde_json::json;

const PLUGIN: &str = env!("CARGO_BIN_EXE_palisade-cni");

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (BPF, network namespaces), not uid {euid}: run it through \
         `cargo xtask test`, or as root with `cargo test -- --include-ignored`"
    );
}

fn tcp80(c: &Cluster, from: &str, to: &str) -> Outcome {
    let p = Probe {
        from: Peer::parse(from).expect("peer"),
        to: Peer::parse(to).expect("peer"),
        port: 80,
        protocol: Transport::Tcp,
        via: Via::Pod,
    };
    c.probe(&[p]).expect("probe")[0]
}

fn pod(name: &str) -> PodPlan {
    PodPlan {
        namespace: "x".into(),
        name: name.into(),
        labels: [("pod".to_string(), name.to_string())].into(),
        node: 1,
        ports: vec![PortPlan::new(80, Transport::Tcp)],
    }
}

#[test]
#[ignore = "needs root, BPF and network namespaces: run through cargo xtask test"]
fn a_pod_added_through_the_plugin_is_enforced_from_its_first_packet() {
    require_root();
    let mut agent = AgentConfig::new(palisade_harness::default_agent_path());
    agent.cni = true;
    let mut c = Cluster::build(
        &ClusterSpec::default_model(Family::Ipv4),
        ClusterOptions {
            agent: Some(agent),
            keep_temp: false,
            ..Default::default()
        },
    )
    .expect("build cluster");
    c.start_agents().expect("start agents");
    // x/n may reach x/b only, and be reached from x/a only.
    c.apply_policy(&json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "n", "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "n"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]
        }
    }))
    .expect("policy");
    c.sync().expect("sync");
    let plugin = Path::new(PLUGIN);

    // The pod object is known without addresses; ADD brings them. Its policy
    // applies the moment ADD returns, before the API server has its address.
    let add = c.add_pod_via_cni(pod("n"), plugin).expect("ADD");
    assert!(add.success, "ADD failed: {} {}", add.stdout, add.stderr);
    assert!(add.stderr.contains("its policies apply"), "{}", add.stderr);
    assert_eq!(
        add.stdout["ips"][0]["address"],
        format!("{}/32", c.pod_ip("x/n").expect("ip"))
    );
    assert_eq!(
        tcp80(&c, "x/n", "x/b"),
        Outcome::Reachable,
        "allowed egress"
    );
    assert_eq!(tcp80(&c, "x/n", "x/c"), Outcome::Blocked, "denied egress");
    assert_eq!(
        tcp80(&c, "x/a", "x/n"),
        Outcome::Reachable,
        "allowed ingress"
    );
    assert_eq!(tcp80(&c, "y/a", "x/n"), Outcome::Blocked, "denied ingress");
    let check = c.cni("CHECK", "x/n", plugin).expect("CHECK");
    assert!(check.success, "CHECK: {} {}", check.stdout, check.stderr);
    // The kubelet reports the address: nothing changes.
    c.publish_pod("x/n").expect("publish");
    c.sync().expect("sync");
    assert_eq!(tcp80(&c, "x/n", "x/c"), Outcome::Blocked, "denied egress");
    assert_eq!(
        tcp80(&c, "x/n", "x/b"),
        Outcome::Reachable,
        "allowed egress"
    );
    let del = c.cni("DEL", "x/n", plugin).expect("DEL");
    assert!(del.success, "DEL: {} {}", del.stdout, del.stderr);

    // DEL before the API server ever reported the pod's address: the address
    // the ADD gave it goes (it may be another pod's next), and so does its
    // record.
    let add = c.add_pod_via_cni(pod("k"), plugin).expect("ADD");
    assert!(add.success, "ADD failed: {} {}", add.stdout, add.stderr);
    c.apply_policy(&json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "k", "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "k"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]
        }
    }))
    .expect("policy");
    c.sync().expect("sync");
    assert_eq!(tcp80(&c, "x/k", "x/b"), Outcome::Reachable, "before DEL");
    // A late DEL of a sandbox the runtime replaced: the pod keeps what its
    // last ADD gave it.
    let late = c
        .cni_for_sandbox("DEL", "x/k", plugin, "an-older-sandbox")
        .expect("DEL");
    assert!(late.success, "DEL: {} {}", late.stdout, late.stderr);
    assert_eq!(
        tcp80(&c, "x/k", "x/b"),
        Outcome::Reachable,
        "after a DEL of an older sandbox"
    );
    let del = c.cni("DEL", "x/k", plugin).expect("DEL");
    assert!(del.success, "DEL: {} {}", del.stdout, del.stderr);
    assert_eq!(tcp80(&c, "x/k", "x/b"), Outcome::Blocked, "after DEL");

    // A pod the agent knows nothing of: ADD still waits for the programs, and
    // the interface is closed until the pod is known.
    let p = pod("m");
    c.add_pod_network(p).expect("network");
    let add = c.cni("ADD", "x/m", plugin).expect("ADD");
    assert!(add.success, "ADD failed: {} {}", add.stdout, add.stderr);
    assert!(add.stderr.contains("fail-closed"), "{}", add.stderr);
    assert_eq!(tcp80(&c, "x/m", "x/b"), Outcome::Blocked, "unknown pod");
    assert_eq!(tcp80(&c, "x/a", "x/m"), Outcome::Blocked, "unknown pod");

    // No agent: ADD fails and tells the runtime to try again.
    c.stop_agent(1).expect("stop agent");
    let add = c.cni("ADD", "x/m", plugin).expect("ADD");
    assert!(!add.success);
    assert_eq!(add.stdout["code"], 11, "{}", add.stdout);
    c.teardown().expect("teardown");
}
