//! Agent launch, readiness, logs, restart and teardown, with a
//! stand-in agent (tests/fake_agent.py) so the harness can be checked before
//! and independently of the real agent. Needs root and python3: `#[ignore]`d
//! for plain `cargo test`, run by `cargo xtask test`.

use std::path::PathBuf;
use std::time::Duration;

use palisade_harness::*;

mod common;

/// Fails the test, saying why, unless it runs as root with python3 to run
/// the stand-in agent.
fn require_root_and_python() {
    common::require_root();
    let py = std::process::Command::new("python3")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(py, "this test needs python3 for tests/fake_agent.py");
}

fn fake_agent() -> AgentConfig {
    let mut cfg =
        AgentConfig::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake_agent.py"));
    cfg.ready_timeout = Duration::from_secs(10);
    cfg
}

#[test]
#[ignore = "needs root, network namespaces and python3: run through cargo xtask test"]
fn agents_start_report_revisions_and_restart() {
    require_root_and_python();
    let spec = ClusterSpec::default_model(Family::Ipv4);
    let opts = ClusterOptions {
        agent: Some(fake_agent()),
        keep_temp: false,
        ..Default::default()
    };
    let mut c = Cluster::build(&spec, opts).expect("build");
    let id = c.id().to_string();
    c.start_agents().expect("agents ready");

    // Each agent runs inside its node namespace and sees that node's veths.
    for n in 1..=2 {
        let lines = c.deny_log_lines(n).expect("lines");
        let start = lines
            .iter()
            .find(|l| l["event"] == "start")
            .expect("start line");
        let ifaces: Vec<&str> = start["ifaces"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(ifaces.contains(&"eth0"), "{ifaces:?}");
        let pod_veth = c
            .pod_host_veth(if n == 1 { "x/a" } else { "x/b" })
            .expect("veth");
        assert!(ifaces.contains(&pod_veth), "{ifaces:?} lacks {pod_veth}");
        assert_eq!(start["node"], format!("node-{n}"));
        let files: Vec<&str> = start["files"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for f in [
            "REVISION",
            "namespace-x.yaml",
            "pod-x-a.yaml",
            "service-x-s-x-a.yaml",
            "endpointslice-x-s-x-a.yaml",
        ] {
            assert!(files.contains(&f), "{files:?} lacks {f}");
        }
        assert!(!c.agent_log_tail(n, 10).is_empty());
    }

    // A change: the harness waits for the new revision on every node.
    let policy = serde_json::json!({
        "metadata": {"name": "deny", "namespace": "x"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
    });
    c.apply_policy(&policy).expect("apply");
    let rev = c.sync().expect("sync");
    let text = std::fs::read_to_string(
        c.source_dir(2)
            .expect("dir")
            .join("networkpolicy-x-deny.yaml"),
    )
    .expect("policy file");
    assert!(
        text.contains("kind: NetworkPolicy") && text.contains("apiVersion: networking.k8s.io/v1"),
        "{text}"
    );
    for n in 1..=2 {
        assert!(c
            .deny_log_lines(n)
            .expect("lines")
            .iter()
            .any(|l| l["revision"] == rev.as_str()));
    }

    // Restart one agent: it must report the current revision again.
    c.stop_agent(2).expect("stop");
    assert!(!c.agent_running(2));
    c.delete_policy("x", "deny").expect("delete");
    assert!(c.delete_policy("x", "deny").is_err());
    c.publish().expect("publish");
    c.start_agent(2).expect("restart");
    assert!(c.agent_running(2));
    assert_eq!(
        c.deny_log_lines(2)
            .expect("lines")
            .iter()
            .filter(|l| l["event"] == "start")
            .count(),
        2
    );

    c.teardown().expect("teardown");
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&id));
}

#[test]
#[ignore = "needs root, network namespaces and python3: run through cargo xtask test"]
fn agent_that_never_gets_ready_is_reported() {
    require_root_and_python();
    let mut spec = ClusterSpec::default_model(Family::Ipv4);
    spec.pods.truncate(2);
    let mut cfg = AgentConfig::new("/bin/sleep");
    cfg.ready_timeout = Duration::from_secs(1);
    // `sleep` rejects the agent's flags and exits: the harness must say so.
    let mut c = Cluster::build(
        &spec,
        ClusterOptions {
            agent: Some(cfg),
            keep_temp: false,
            ..Default::default()
        },
    )
    .expect("build");
    let e = format!("{:#}", c.start_agents().expect_err("must fail"));
    // Both agents exit; whichever the harness notices first is the one it names.
    assert!(
        (e.contains("node-1") || e.contains("node-2"))
            && (e.contains("exited") || e.contains("did not report")),
        "{e}"
    );
}
