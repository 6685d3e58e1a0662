//! `kubectl palisade` as users run it: the binary (and through the real
//! kubectl's plugin lookup), on manifests and event files in `tests/data/` and
//! on the engine's golden clusters: `explain`'s verdicts and walks, its
//! agreement with the compiled maps, `observe`'s filters and output.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kubectl-palisade")
}

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(p)
}

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn explain_json(dir: &Path, from: &str, to: &str, port: &str) -> (i32, Value) {
    let d = dir.to_string_lossy().to_string();
    let o = run(&[
        "explain",
        "--source-dir",
        &d,
        "--from",
        from,
        "--to",
        to,
        "--port",
        port,
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{from} -> {to}:{port}: {e}: {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap_or(-1), v)
}

#[test]
fn explain_names_the_rule_that_decided_each_side() {
    let dir = data("shop");
    // Allowed by a NetworkPolicy rule on a named port.
    let (code, v) = explain_json(&dir, "shop/web", "shop/api", "8080");
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["allowed"], true);
    assert_eq!(v["egress"]["tier"], "default");
    assert_eq!(v["ingress"]["tier"], "networkpolicy");
    assert_eq!(v["ingress"]["allowed_by"], serde_json::json!(["shop/api"]));
    // Denied: isolated by shop/api, no rule allows db.
    let (code, v) = explain_json(&dir, "shop/db", "shop/api", "8080");
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["allowed"], false);
    assert_eq!(v["ingress"]["allowed"], false);
    assert_eq!(v["ingress"]["policies"], serde_json::json!(["shop/api"]));
    assert_eq!(v["ingress"]["reason"], "no-policy-allows");
    // Denied by an Admin ClusterNetworkPolicy rule, named.
    let (code, v) = explain_json(&dir, "dev/tool", "shop/db", "5432");
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["ingress"]["tier"], "admin");
    assert_eq!(v["ingress"]["cluster_policy"], "no-dev-to-db");
    assert_eq!(v["ingress"]["rule_name"], "keep-dev-out");
    assert_eq!(v["ingress"]["action"], "Deny");
    // The reason the datapath (and so the deny line) gives for the drop.
    assert_eq!(v["ingress"]["reason"], "admin-deny");
    assert!(v["egress"].get("reason").is_none(), "{v:#}");
    // By address, to something that is no pod: only the egress side judges.
    let (code, v) = explain_json(&dir, "10.0.0.1", "192.0.2.9", "53");
    assert_eq!(code, 0, "{v:#}");
    assert!(v["ingress"].is_null());
    // Through a Service: judged on the backend at the port it serves (80 ->
    // the EndpointSlice's 8080, the pod's named port `http`).
    let (code, v) = explain_json(&dir, "shop/web", "svc/shop/api", "80");
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["backends_allowed"], 1, "{v:#}");
    assert_eq!(v["backends"][0]["port"], 8080, "{v:#}");
    assert_eq!(
        v["backends"][0]["ingress"]["allowed_by"],
        serde_json::json!(["shop/api"])
    );
    let (code, v) = explain_json(&dir, "shop/db", "svc/shop/api", "80");
    assert_eq!((code, &v["allowed"]), (1, &Value::Bool(false)), "{v:#}");
    let o = run(&[
        "explain",
        "--source-dir",
        &dir.to_string_lossy(),
        "--from",
        "shop/web",
        "--to",
        "svc/shop/api",
        "--port",
        "81",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("Service shop/api has no TCP port 81 (it has 80/TCP)"),
        "{o:?}"
    );
    // The text form says the same.
    let o = run(&[
        "explain",
        "--source-dir",
        &dir.to_string_lossy(),
        "--from",
        "dev/tool",
        "--to",
        "shop/db",
        "--port",
        "5432",
    ]);
    let text = stdout(&o);
    assert!(
        text.starts_with("dev/tool (10.1.0.5) -> shop/db (10.0.0.3) TCP port 5432: denied"),
        "{text}"
    );
    assert!(text.contains("ingress at shop/db: denied by admin clusternetworkpolicy no-dev-to-db rule 0 (keep-dev-out)"), "{text}");
}

#[test]
fn explain_errors_name_the_flag() {
    let dir = data("shop");
    let d = dir.to_string_lossy().to_string();
    let o = run(&[
        "explain",
        "--source-dir",
        &d,
        "--from",
        "shop/nope",
        "--to",
        "shop/api",
        "--port",
        "80",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--from shop/nope: no pod shop/nope"), "{e}");
    let o = run(&[
        "explain",
        "--source-dir",
        &d,
        "--from",
        "shop/web",
        "--to",
        "shop/api",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--port is required"));
}

/// Every pod pair of the engine's golden clusters, on the ports they use:
/// the compiled maps and the model never disagree (exit status 3 otherwise),
/// and the verdict is the engine's.
#[test]
fn explain_agrees_with_the_compiled_maps_on_the_golden_clusters() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/golden");
    let mut checked = 0;
    for entry in std::fs::read_dir(&golden).expect("golden dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        // One cluster per directory, as the file source reads it.
        let dir = std::env::temp_dir().join(format!(
            "kubectl-palisade-test-{}-{}",
            std::process::id(),
            path.file_stem().unwrap_or_default().to_string_lossy()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::copy(&path, dir.join("cluster.yaml")).expect("copy");
        let text = std::fs::read_to_string(&path).expect("read");
        let pods: Vec<String> = palisade_policy::parse_yaml_documents(&text, "golden")
            .into_iter()
            .filter_map(Result::ok)
            .filter_map(|o| match o {
                palisade_policy::Object::Pod(p) if p.is_policy_pod() => Some(p.key().to_string()),
                _ => None,
            })
            .collect();
        for from in &pods {
            for to in &pods {
                if from == to {
                    continue;
                }
                for port in ["80", "443", "8080"] {
                    let (code, v) = explain_json(&dir, from, to, port);
                    assert_ne!(code, 3, "{}: {from} -> {to}:{port}: {v:#}", path.display());
                    assert_eq!(v["disagreements"], serde_json::json!([]));
                    let want = if v["allowed"] == true { 0 } else { 1 };
                    assert_eq!(code, want, "{}: {v:#}", path.display());
                    checked += 1;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(checked > 50, "only {checked} connections checked");
}

fn observe(args: &[&str]) -> Vec<String> {
    let f = data("events.jsonl");
    let mut all = vec!["observe", "--file", f.to_str().expect("path")];
    all.extend_from_slice(args);
    let o = run(&all);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    stdout(&o).lines().map(str::to_string).collect()
}

#[test]
fn observe_prints_compact_lines_and_skips_what_is_no_event() {
    assert_eq!(
        observe(&[]),
        [
            "2026-12-01T10:00:00.000Z node-2 shop/db -> shop/api:8080/TCP ingress denied no-policy-allows shop/api",
            "2026-12-01T10:00:01.000Z node-2 shop/web -> shop/api:8080/TCP ingress allowed policy shop/api",
            "2026-12-01T10:00:02.000Z node-1 shop/web -> 192.0.2.9:53/UDP egress denied admin-deny admin no-outside-dns rule block",
            "2026-12-01T10:00:03.000Z node-2 dev/tool-7d9f -> shop/db:5432/TCP ingress audit no-policy-allows shop/db",
        ]
    );
}

#[test]
fn observe_filters_select_exactly_their_events() {
    let count = |args: &[&str]| observe(args).len();
    assert_eq!(count(&["--verdict", "denied"]), 2);
    assert_eq!(count(&["--verdict", "allowed"]), 1);
    assert_eq!(count(&["--reason", "admin-deny"]), 1);
    assert_eq!(count(&["-n", "dev"]), 1);
    assert_eq!(count(&["-n", "shop"]), 4);
    assert_eq!(count(&["--from-namespace", "dev"]), 1);
    assert_eq!(count(&["--to-namespace", "shop"]), 3);
    assert_eq!(count(&["--pod", "shop/api"]), 2);
    assert_eq!(count(&["--from-pod", "dev/tool"]), 1, "a name prefix");
    assert_eq!(count(&["--to-pod", "db"]), 1);
    assert_eq!(count(&["--from-ip", "10.0.0.0/24"]), 3);
    assert_eq!(count(&["--to-ip", "192.0.2.9"]), 1);
    assert_eq!(count(&["--port", "53"]), 1);
    assert_eq!(count(&["--to-port", "8080"]), 2);
    assert_eq!(count(&["--protocol", "udp"]), 1);
    assert_eq!(count(&["--policy", "shop/api"]), 2);
    assert_eq!(count(&["--policy", "no-outside-dns"]), 1);
    assert_eq!(count(&["--node", "node-1"]), 1);
    assert_eq!(count(&["--verdict", "denied", "--node", "node-2"]), 1);
    assert_eq!(count(&["--last", "1"]), 1);
    // --not negates the filter after it; each is its own.
    assert_eq!(count(&["--not", "--verdict", "denied"]), 2);
    assert_eq!(count(&["--not", "--verdict=denied"]), 2);
    assert_eq!(count(&["--not", "-n", "dev"]), 3);
    assert_eq!(count(&["-n", "shop", "--not", "--to-pod", "api"]), 2);
    assert_eq!(
        count(&["--not", "--verdict", "denied", "--not", "--node", "node-1"]),
        2
    );
    let o = run(&["observe", "--file", "x", "--not"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--not must come before a filter"),
        "{o:?}"
    );
    let json = observe(&["-o", "json", "--verdict", "audit"]);
    let v: Value = serde_json::from_str(&json[0]).expect("json");
    assert_eq!(v["src_pod"], "tool-7d9f");
    let table = observe(&["-o", "table", "--node", "node-1"]);
    assert!(table[0].starts_with("TIME"), "{table:?}");
    assert_eq!(table.len(), 2);
}

/// kubectl finds the plugin on PATH and runs it (`kubectl palisade`).
#[test]
fn kubectl_runs_the_plugin() {
    let dir = Path::new(bin()).parent().expect("bin dir");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("kubectl")
        .args(["palisade", "--help"])
        .env("PATH", path)
        .output()
        .expect("kubectl is installed (cargo xtask setup installs kubernetes-client)");
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("explain") && out.contains("observe"), "{out}");
}

#[test]
fn diff_lists_the_connections_a_change_flips_and_the_observed_ones_it_blocks() {
    let dir = data("shop");
    let d = dir.to_string_lossy().to_string();
    let change = data("web-egress.yaml");
    let flows = data("events.jsonl");
    let o = run(&[
        "diff",
        "--source-dir",
        &d,
        "-f",
        change.to_str().expect("path"),
        "--flows",
        flows.to_str().expect("path"),
        "-o",
        "json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    // web may reach only db now: web -> api:8080 (api's named port) goes.
    let blocked: Vec<(String, String, u64)> = v["blocked"]
        .as_array()
        .expect("blocked")
        .iter()
        .map(|c| {
            (
                c["from"].as_str().unwrap_or("").to_string(),
                c["to"].as_str().unwrap_or("").to_string(),
                c["port"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(blocked, [("shop/web".into(), "shop/api".into(), 8080)]);
    assert_eq!(v["allowed"], serde_json::json!([]));
    // The observed web -> api connection; not the audited one, which was
    // denied before the change already.
    let observed = v["observed_blocked"].as_array().expect("observed");
    assert_eq!(observed.len(), 1, "{observed:#?}");
    assert_eq!(observed[0]["dst_ip"], "10.0.0.2");
    assert!(observed[0]["why"]
        .as_str()
        .unwrap_or("")
        .contains("shop/web-egress"));

    // Deleting the only policy of api opens it to everyone.
    let o = run(&[
        "diff",
        "--source-dir",
        &d,
        "--delete",
        "shop/api",
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let opened = v["allowed"].as_array().expect("allowed").len();
    assert_eq!(opened, 2, "db and tool reach api:8080 now: {v:#}");
    // A change that changes nothing: exit 0.
    let o = run(&[
        "diff",
        "--source-dir",
        &d,
        "-f",
        &format!("{d}/cluster.yaml"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    // An unknown object to delete is an error naming it.
    let o = run(&["diff", "--source-dir", &d, "--delete", "shop/nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--delete shop/nope"));
}

/// `--agent`: the request an agent's `/events` gets, and its stream read.
#[test]
fn observe_reads_an_agents_event_stream() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let events = std::fs::read_to_string(data("events.jsonl")).expect("events");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut request = String::new();
        r.read_line(&mut request).expect("request line");
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
            line.clear();
        }
        s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n",
        )
        .expect("head");
        s.write_all(events.as_bytes()).expect("body");
        request
    });
    let o = run(&[
        "observe",
        "--agent",
        &addr,
        "--verdict",
        "denied",
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let request = server.join().expect("server");
    assert!(
        request.starts_with("GET /events?follow=false&since=1970-01-01T00:00:00Z HTTP/1.1"),
        "{request}"
    );
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|v| v["verdict"] == "denied"));
}
