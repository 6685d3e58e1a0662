//! Allowed-flow events (`--flow-events=new`) and the event stream (`GET
//! /events`) on a namespace cluster with the real agent: an allowed
//! connection is reported once with the policy that allowed it while a denied
//! one is still denied; two readers of `/events` see the same events, exactly
//! the ones the agent prints, while a reader that stops reading is
//! disconnected and counted. Needs root: `#[ignore]`d for plain `cargo test`;
//! `cargo xtask test` runs it.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use palisade_harness::{in_netns, Cluster, Outcome, Via};
use serde_json::{json, Value};

mod common;
mod probes;

/// The agent's HTTP endpoint inside a node's namespace.
const AGENT_ADDR: &str = "127.0.0.1:9464";

/// x/b (node 2) accepts x/a on TCP 80, nothing else.
fn b_from_a() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "b-from-a", "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "b"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}],
                         "ports": [{"port": 80}]}]
        }
    })
}

fn lines(c: &Cluster, node: usize) -> Vec<Value> {
    c.deny_log_lines(node).expect("agent stdout")
}

/// Lines of `node` after the first `from`, once `ok` holds for them (10 s).
fn wait_lines(c: &Cluster, node: usize, from: usize, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = lines(c, node);
        let new = all.get(from..).unwrap_or_default().to_vec();
        if ok(&new) {
            return new;
        }
        assert!(Instant::now() < deadline, "events of node-{node}: {new:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root, BPF and network namespaces: run through cargo xtask test"]
fn a_new_allowed_connection_is_reported_once_with_its_policy() {
    common::require_root();
    let mut c = common::cluster_with(&["--flow-events", "new"]);
    c.apply_policy(&b_from_a()).expect("policy");
    c.sync().expect("sync");
    let (n1, n2) = (lines(&c, 1).len(), lines(&c, 2).len());

    assert_eq!(
        probes::tcp80(&c, "x/a", "x/b", Via::Pod),
        Outcome::Reachable
    );
    let new = wait_lines(&c, 2, n2, |l| !l.is_empty());
    // Settle: nothing more may come of the same connection.
    std::thread::sleep(Duration::from_millis(1500));
    let new2 = lines(&c, 2)[n2..].to_vec();
    assert_eq!(new2.len(), 1, "one event for one connection: {new2:#?}");
    let e = &new[0];
    assert_eq!(e["event"], "palisade-allow", "{e}");
    assert_eq!(e["verdict"], "allowed", "{e}");
    assert_eq!(e["reason"], "policy", "{e}");
    assert_eq!(e["direction"], "ingress", "{e}");
    assert_eq!(e["policies"], json!(["x/b-from-a"]), "{e}");
    assert_eq!(e["src_pod"], "a", "{e}");
    assert_eq!(e["dst_pod"], "b", "{e}");
    assert_eq!(e["dst_port"], 80, "{e}");
    // x/a's egress is not isolated: `new` leaves it out (`all-new` would not).
    let from_a = lines(&c, 1)[n1..].to_vec();
    assert!(from_a.is_empty(), "{from_a:#?}");

    // A denied connection is still a deny.
    assert_eq!(probes::tcp80(&c, "x/c", "x/b", Via::Pod), Outcome::Blocked);
    let denies = wait_lines(&c, 2, n2 + 1, |l| {
        l.iter().any(|e| e["verdict"] == "denied")
    });
    let d = denies
        .iter()
        .find(|e| e["verdict"] == "denied")
        .expect("a deny");
    assert_eq!(d["event"], "palisade-deny", "{d}");
    assert_eq!(d["src_pod"], "c", "{d}");
    assert!(
        denies.iter().all(|e| e["verdict"] != "allowed"),
        "{denies:#?}"
    );
}

/// Reads `GET /events` lines on node `ns` until `n` have come or 20 s passed.
fn read_events(ns: String, n: usize) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        in_netns(&ns, move || {
            let mut s = TcpStream::connect(AGENT_ADDR).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            s.write_all(b"GET /events?verdict=denied HTTP/1.1\r\nHost: agent\r\n\r\n")
                .expect("request");
            let mut r = BufReader::new(s);
            let mut line = String::new();
            // The response head, up to its blank line.
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let mut out = Vec::new();
            while out.len() < n {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => out.push(line.trim_end().to_string()),
                }
            }
            out
        })
        .expect("netns")
    })
}

fn metric(ns: &str, name: &str) -> f64 {
    let text = in_netns(ns, || {
        let mut s = TcpStream::connect(AGENT_ADDR).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .ok()
    .flatten()
    .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
#[ignore = "needs root, BPF and network namespaces: run through cargo xtask test"]
fn event_stream_readers_see_the_same_events_and_a_stalled_one_is_dropped() {
    common::require_root();
    // A budget that never throttles: every denied flow is an event.
    let mut c = common::cluster_with(&["--endpoint-events-per-second", "1000000"]);
    c.apply_policy(&b_from_a()).expect("policy");
    c.sync().expect("sync");
    let ns = c.node_netns(2).expect("node 2").to_string();
    let before = lines(&c, 2).len();

    // A reader that sends its request and never reads.
    let stalled = in_netns(&ns, || {
        let mut s = TcpStream::connect(AGENT_ADDR).expect("connect");
        s.write_all(b"GET /events HTTP/1.1\r\nHost: agent\r\n\r\n")
            .expect("request");
        s
    })
    .expect("netns");
    // Enough denied flows (each from a port of its own) to fill the stalled
    // reader's socket buffers and the stream's backlog several times over.
    const FLOWS: usize = 6000;
    let readers = [
        read_events(ns.clone(), FLOWS),
        read_events(ns.clone(), FLOWS),
    ];
    std::thread::sleep(Duration::from_millis(500));
    let to = SocketAddr::new(c.pod_ip("x/b").expect("ip"), 81);
    in_netns(c.pod_netns("x/c").expect("ns"), move || {
        // Ports of its own, not ephemeral ones the kernel could hand out twice.
        for i in 0..FLOWS {
            let s = UdpSocket::bind(("0.0.0.0", 20_000 + i as u16)).expect("udp");
            s.send_to(b"ping", to).expect("send");
        }
    })
    .expect("netns");
    let seen: Vec<Vec<String>> = readers
        .into_iter()
        .map(|r| r.join().expect("reader"))
        .collect();
    assert_eq!(seen[0].len(), FLOWS, "reader 1 saw every event");
    assert_eq!(seen[0], seen[1], "both readers saw the same events");
    // Exactly what the agent printed, in the same order.
    let printed: Vec<Value> = wait_lines(&c, 2, before, |l| l.len() >= FLOWS);
    assert_eq!(printed.len(), FLOWS, "one event per denied flow");
    let streamed: Vec<Value> = seen[0]
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(streamed, printed);
    // The stalled reader was disconnected, and counted.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&ns, "palisade_event_readers_dropped_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the stalled reader was not dropped"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric(&ns, "palisade_event_readers_dropped_total"), 1.0);
    drop(stalled);
}
