//! `kubectl palisade` against a live cluster: the in-process API server the kube
//! source tests use (`palisade-fake-apiserver`), reached through a kubeconfig
//! and a context as kubectl reaches a cluster. `explain` and `advise` list the
//! objects from it; `observe` reads the agent pods' logs through it (every
//! node, one node, followed).
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use palisade_fake_apiserver::FakeApi;
use serde_json::{json, Value};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kubectl-palisade")
}

/// A scratch directory removed however the test ends.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pod(ns: &str, name: &str, labels: Value, node: &str, ip: &str, ports: Value) -> Value {
    json!({
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

fn event(
    time: &str,
    node: &str,
    verdict: &str,
    src: (&str, &str, &str),
    dst: (&str, &str, &str),
    port: u16,
) -> String {
    json!({
        "time": time, "event": if verdict == "allowed" { "palisade-allow" } else { "palisade-deny" },
        "node": node, "verdict": verdict,
        "reason": if verdict == "allowed" { "policy" } else { "no-policy-allows" },
        "direction": "ingress", "protocol": "TCP",
        "src_ip": src.2, "src_kind": "pod", "src_namespace": src.0, "src_pod": src.1, "src_port": 40000,
        "dst_ip": dst.2, "dst_kind": "pod", "dst_namespace": dst.0, "dst_pod": dst.1, "dst_port": port,
        "policies": ["shop/api"],
    })
    .to_string()
}

const WEB: (&str, &str, &str) = ("shop", "web", "10.0.0.1");
const API: (&str, &str, &str) = ("shop", "api", "10.0.0.2");
const DB: (&str, &str, &str) = ("shop", "db", "10.0.0.3");

fn seed(api: &FakeApi) {
    for ns in ["shop", "kube-system"] {
        api.put(
            "namespaces",
            json!({"metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}}),
        );
    }
    for (n, ip) in [("node-1", "172.18.0.2"), ("node-2", "172.18.0.3")] {
        api.put(
            "nodes",
            json!({"metadata": {"name": n}, "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
        );
    }
    api.put(
        "pods",
        pod(
            "shop",
            "web",
            json!({"app": "web"}),
            "node-1",
            WEB.2,
            json!([]),
        ),
    );
    api.put(
        "pods",
        pod(
            "shop",
            "api",
            json!({"app": "api"}),
            "node-2",
            API.2,
            json!([{"name": "http", "containerPort": 8080}]),
        ),
    );
    api.put(
        "pods",
        pod(
            "shop",
            "db",
            json!({"app": "db"}),
            "node-2",
            DB.2,
            json!([]),
        ),
    );
    api.put(
        "networkpolicies",
        json!({"metadata": {"namespace": "shop", "name": "api"}, "spec": {
            "podSelector": {"matchLabels": {"app": "api"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "http"}]}]
        }}),
    );
    // The agents: one pod per node, their logs the deny log and their own lines.
    for (i, node) in ["node-1", "node-2"].iter().enumerate() {
        api.put(
            "pods",
            json!({
                "metadata": {"namespace": "kube-system", "name": format!("palisade-agent-{i}"),
                             "labels": {"app.kubernetes.io/name": "palisade-agent"}},
                "spec": {"nodeName": node, "hostNetwork": true, "containers": [{"name": "agent"}]},
                "status": {"phase": "Running", "podIP": "172.18.0.9"},
            }),
        );
    }
    api.put(
        "pods",
        json!({"metadata": {"namespace": "kube-system", "name": "coredns", "labels": {"k8s-app": "kube-dns"}},
               "spec": {"nodeName": "node-1", "containers": [{"name": "c"}]}}),
    );
    api.append_log("kube-system", "palisade-agent-0", "agent started");
    api.append_log(
        "kube-system",
        "palisade-agent-0",
        &event(
            "2026-12-01T10:00:02.000Z",
            "node-1",
            "allowed",
            WEB,
            API,
            8080,
        ),
    );
    api.append_log(
        "kube-system",
        "palisade-agent-1",
        &event(
            "2026-12-01T10:00:01.000Z",
            "node-2",
            "denied",
            DB,
            API,
            8080,
        ),
    );
    api.append_log(
        "kube-system",
        "palisade-agent-1",
        &event(
            "2026-12-01T10:00:03.000Z",
            "node-2",
            "allowed",
            WEB,
            API,
            8080,
        ),
    );
}

/// A kubeconfig whose current context points nowhere and whose context `fake`
/// is the in-process API server.
fn kubeconfig(dir: &Path, api: &FakeApi) -> PathBuf {
    let p = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\n- name: nowhere\n  cluster: {{server: \"http://127.0.0.1:9\"}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: u}}\n- name: other\n  context: {{cluster: nowhere, user: u}}\ncurrent-context: other\n",
        api.addr
    );
    std::fs::write(&p, text).expect("kubeconfig");
    p
}

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("runs")
}

fn lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_read_a_live_cluster_through_a_kubeconfig_context() {
    let api = FakeApi::start().await;
    seed(&api);
    let dir = Scratch(std::env::temp_dir().join(format!("palisade-live-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("dir");
    let kc = kubeconfig(&dir.0, &api);
    let kc = kc.to_str().expect("path").to_string();
    let test = tokio::task::spawn_blocking(move || {
        let ctx = ["--kubeconfig", kc.as_str(), "--context", "fake"];
        // explain: the objects listed from the API server.
        let explain = |from: &str, port: &str| {
            let mut a = vec![
                "explain", "--from", from, "--to", "shop/api", "--port", port, "-o", "json",
            ];
            a.extend_from_slice(&ctx);
            run(&a)
        };
        let o = explain("shop/web", "8080");
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(v["ingress"]["allowed_by"], json!(["shop/api"]), "{v:#}");
        // No ClusterNetworkPolicy CRD on this API server: said, not fatal.
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("ClusterNetworkPolicy: not served"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(explain("shop/db", "8080").status.code(), Some(1));
        // The kubeconfig's current context points nowhere: an error naming it.
        let o = run(&[
            "explain",
            "--kubeconfig",
            &kc,
            "--from",
            "shop/web",
            "--to",
            "shop/api",
            "--port",
            "80",
        ]);
        assert_eq!(o.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("listing"),
            "{o:?}"
        );

        // observe: every agent's log, events only, in time order across nodes.
        let mut a = vec!["observe"];
        a.extend_from_slice(&ctx);
        let all = lines(&run(&a));
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(
            all[0].starts_with("2026-12-01T10:00:01.000Z node-2 shop/db -> shop/api:8080/TCP"),
            "{all:?}"
        );
        assert!(
            all[1].starts_with("2026-12-01T10:00:02.000Z node-1"),
            "{all:?}"
        );
        // --node picks that node's agent; filters apply as to any source.
        let mut a = vec!["observe", "--node", "node-2", "--verdict", "allowed"];
        a.extend_from_slice(&ctx);
        let two = lines(&run(&a));
        assert_eq!(two.len(), 1, "{two:?}");
        assert!(two[0].contains("node-2 shop/web -> shop/api"), "{two:?}");
        let mut a = vec!["observe", "--node", "node-9"];
        a.extend_from_slice(&ctx);
        let o = run(&a);
        assert_eq!(o.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("no agent pod"),
            "{o:?}"
        );
        kc
    })
    .await
    .expect("test thread");

    // --follow: what is logged later arrives while the command runs.
    let mut child = Command::new(bin())
        .args([
            "observe",
            "--kubeconfig",
            &test,
            "--context",
            "fake",
            "--follow",
            "--verdict",
            "denied",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("observe --follow");
    let stdout = child.stdout.take().expect("stdout");
    let reader = tokio::task::spawn_blocking(move || {
        let mut r = BufReader::new(stdout);
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < 2 && Instant::now() < deadline {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 {
                break;
            }
            got.push(l.trim_end().to_string());
        }
        got
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.append_log(
        "kube-system",
        "palisade-agent-0",
        &event("2026-12-01T10:00:09.000Z", "node-1", "denied", DB, WEB, 80),
    );
    let got = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("lines in time")
        .expect("reader");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got.iter()
            .any(|l| l.contains("10:00:09.000Z node-1 shop/db -> shop/web:80/TCP")),
        "{got:?}"
    );
}
