//! `/metrics` scraped by a real Prometheus server (Debian's `prometheus`,
//! installed by `cargo xtask setup`) running in a harness node's network
//! namespace: the denied-packet counter (by direction and reason, and per pod
//! with `--metrics-pod-labels`) rises by exactly the datagrams the test sent
//! against policy, the programming histogram counts each change, the map
//! gauges match the maps, `promtool check metrics` accepts a scrape, and a
//! deleted pod's series go.
//! Needs root: `#[ignore]`d for plain `cargo test`; `cargo xtask test` runs
//! it with the release agent binary.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use palisade_harness::{in_netns, AgentConfig, Cluster, ClusterOptions, ClusterSpec, Family};
use serde_json::{json, Value};

mod common;
use common::agent_binary;

const PROM_ADDR: &str = "127.0.0.1:9091";

/// Prometheus in a node's namespace, stopped (and its data removed) on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_prometheus(ns: &str) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("palisade-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    std::fs::write(
        dir.join("prometheus.yml"),
        "global: {scrape_interval: 1s, scrape_timeout: 900ms}\nscrape_configs:\n- job_name: palisade\n  static_configs: [{targets: ['127.0.0.1:9464']}]\n",
    )
    .expect("config");
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "prometheus"])
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={PROM_ADDR}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus runs (cargo xtask setup installs it)");
    Prometheus { child, dir }
}

fn http_get(ns: &str, addr: &str, path: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().ok()?;
    let path = path.to_string();
    in_netns(ns, move || -> Option<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        s.write_all(req.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| body.to_string())
            .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
    })
    .ok()
    .flatten()
}

/// The value of a PromQL instant query with one series (None while there is none).
fn query(ns: &str, promql: &str) -> Option<f64> {
    let q: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = http_get(ns, PROM_ADDR, &format!("/api/v1/query?query={q}"))?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Waits (30 s at most) until the query satisfies `ok`.
fn wait_query(ns: &str, promql: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = query(ns, promql) {
            if ok(v) {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {promql} = {:?} after 30 s",
            query(ns, promql)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs root, BPF and network namespaces: run through cargo xtask test"]
fn a_real_prometheus_scrapes_exact_counters_latency_and_map_sizes() {
    common::require_root();
    let mut agent = AgentConfig::new(agent_binary());
    agent.extra_args = vec![
        "--resync-seconds".into(),
        "600".into(),
        "--metrics-pod-labels".into(),
        // A burst of 4 confirmations per pod and CPU: the connections below
        // spend it.
        "--conntrack-confirms-per-second".into(),
        "1".into(),
    ];
    let mut c = Cluster::build(
        &ClusterSpec::default_model(Family::Ipv4),
        ClusterOptions {
            agent: Some(agent),
            ..Default::default()
        },
    )
    .expect("cluster");
    c.start_agents().expect("agents");
    let ns = c.node_netns(2).expect("node 2").to_string();
    let _prom = start_prometheus(&ns);
    let denied = "palisade_packets_total{direction=\"ingress\",verdict=\"denied\",reason=\"no-policy-allows\"}";
    let pod_denied = "palisade_pod_packets_total{namespace=\"x\",pod=\"b\",verdict=\"denied\"}";
    let programmed = "palisade_policy_programming_seconds_count";
    let before = wait_query(&ns, denied, "first scrape", |_| true);
    let passes = wait_query(&ns, programmed, "first scrape", |_| true);
    let pod_before = wait_query(&ns, pod_denied, "x/b's series", |_| true);

    // x/b (node 2) accepts nothing on UDP from x/c: every datagram is denied.
    c.apply_policy(&json!({
        "metadata": {"name": "b-tcp-only", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "b"}},
                 "ingress": [{"ports": [{"port": 80, "protocol": "TCP"}]}]}
    }))
    .expect("policy");
    c.sync().expect("sync");
    wait_query(&ns, programmed, "the policy change is counted", |v| {
        v > passes
    });
    let to = SocketAddr::new(c.pod_ip("x/b").expect("ip"), 81);
    const SENT: u32 = 7;
    in_netns(c.pod_netns("x/c").expect("ns"), move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("udp");
        for _ in 0..SENT {
            s.send_to(b"ping", to).expect("send");
        }
    })
    .expect("netns");
    let after = wait_query(&ns, denied, "denied datagrams counted", |v| {
        v >= before + f64::from(SENT)
    });
    // Settle one more scrape: exactly the datagrams sent, nothing else.
    std::thread::sleep(Duration::from_millis(2500));
    let settled = query(&ns, denied).unwrap_or(after);
    assert_eq!(
        settled - before,
        f64::from(SENT),
        "denied packets counted exactly"
    );
    let pod_after = query(&ns, pod_denied).unwrap_or(pod_before);
    assert_eq!(
        pod_after - pod_before,
        f64::from(SENT),
        "x/b's own series counts them too"
    );

    // Ten TCP connections x/c -> x/b:80 (allowed): x/b's replies confirm
    // four of them, the rest stay unanswered and are counted.
    let to = SocketAddr::new(c.pod_ip("x/b").expect("ip"), 80);
    in_netns(c.pod_netns("x/c").expect("ns"), move || {
        for _ in 0..10 {
            let s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3));
            assert!(s.is_ok(), "x/c -> x/b:80: {s:?}");
        }
    })
    .expect("netns");
    let unconfirmed = wait_query(
        &ns,
        "palisade_conntrack_unconfirmed_total",
        "refused confirmations counted",
        |v| v >= 6.0,
    );
    let pod_unconfirmed = wait_query(
        &ns,
        "palisade_pod_conntrack_unconfirmed_total{namespace=\"x\",pod=\"b\"}",
        "x/b's refused confirmations",
        |v| v >= 6.0,
    );
    assert!(pod_unconfirmed <= unconfirmed);

    // The map gauges are what the maps hold: node 2 has its 4 local pods.
    let endpoints = wait_query(
        &ns,
        "palisade_map_entries{map=\"endpoints\"}",
        "map gauge",
        |v| v > 0.0,
    );
    assert_eq!(endpoints, 4.0);
    let cap = query(&ns, "palisade_map_capacity{map=\"conntrack_v4\"}").unwrap_or(0.0);
    assert_eq!(cap, f64::from(palisade_common::MAX_CONNTRACK));

    // promtool accepts a scrape as it is.
    let text = http_get(&ns, "127.0.0.1:9464", "/metrics").expect("a scrape");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // What a scrape costs the agent (printed, not asserted: a noisy machine).
    let t = Instant::now();
    const SCRAPES: u32 = 20;
    for _ in 0..SCRAPES {
        http_get(&ns, "127.0.0.1:9464", "/metrics").expect("a scrape");
    }
    eprintln!(
        "scrape of /metrics: {:.1} ms on average ({} bytes)",
        t.elapsed().as_secs_f64() * 1000.0 / f64::from(SCRAPES),
        text.len()
    );

    // A deleted pod's series go with it (scraped from the endpoint).
    c.remove_pod("x/b").expect("remove x/b");
    c.sync().expect("sync");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = http_get(&ns, "127.0.0.1:9464", "/metrics").unwrap_or_default();
        let gone = !text.contains("namespace=\"x\",pod=\"b\"");
        if gone && text.contains("namespace=\"y\",pod=\"a\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "x/b's series are still served 30 s after its deletion:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.teardown().expect("teardown");
}
