//! An upgrade across a change of map layout, with two agent builds: the build
//! of `PALISADE_TEST_LAYOUT=1` (`$PALISADE_AGENT_TEST_LAYOUT`: an endpoint
//! record 8 bytes longer, a confirmed conntrack table of half the capacity)
//! enforces first; then this build's agent takes over each node's pins.
//! Under traffic throughout: no datagram of an allowed flow is lost (its
//! replies pass only by conntrack), no long-lived connection breaks, nothing
//! reaches a denied port; afterwards the maps have this build's layout, the
//! old pins are gone, and a restart adopts the new maps as they are. Needs
//! root: `#[ignore]`d for plain `cargo test`; `cargo xtask test` builds the
//! other agent and runs it.
use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use aya::maps::MapInfo;
use palisade_common::{maps as names, Endpoint};
use palisade_harness::{in_netns, Cluster, Connection, Outcome, Peer, Transport, Via};
use serde_json::json;

mod common;
mod probes;

fn other_build() -> PathBuf {
    let p = std::env::var_os("PALISADE_AGENT_TEST_LAYOUT").map(PathBuf::from);
    match p {
        Some(p) if p.is_file() => p,
        _ => panic!(
            "$PALISADE_AGENT_TEST_LAYOUT must name the agent built with another map layout: \
             `cargo xtask test` builds it (PALISADE_TEST_LAYOUT=1 cargo build --release \
             -p palisade-agent --target-dir target/test-layout)"
        ),
    }
}

/// x/a talks to x/b on port 80 (TCP and UDP) and takes no connection: the
/// replies it gets pass by conntrack alone. x/b takes only x/a on 80.
fn policies() -> [serde_json::Value; 2] {
    let ports = json!([{"port": 80, "protocol": "TCP"}, {"port": 80, "protocol": "UDP"}]);
    [
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "a-to-b-only", "namespace": "x"},
            "spec": {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "policyTypes": ["Ingress", "Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                            "ports": ports}]
            }
        }),
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "b-from-a", "namespace": "x"},
            "spec": {
                "podSelector": {"matchLabels": {"pod": "b"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}],
                             "ports": ports}]
            }
        }),
    ]
}

const ROWS: [probes::Expect<'static>; 3] = [
    ("allowed", "x/a", "x/b", Via::Pod, Outcome::Reachable),
    ("no rule", "y/a", "x/b", Via::Pod, Outcome::Blocked),
    (
        "x/a takes nothing",
        "x/b",
        "x/a",
        Via::Pod,
        Outcome::Blocked,
    ),
];

fn value_size(pin_dir: &Path, map: &str) -> u32 {
    MapInfo::from_pin(pin_dir.join("maps").join(map))
        .unwrap_or_else(|e| panic!("{map} under {}: {e}", pin_dir.display()))
        .value_size()
}

fn max_entries(pin_dir: &Path, map: &str) -> u32 {
    MapInfo::from_pin(pin_dir.join("maps").join(map))
        .unwrap_or_else(|e| panic!("{map} under {}: {e}", pin_dir.display()))
        .max_entries()
}

/// Counters of the traffic that runs through the upgrade.
#[derive(Default)]
struct Counts {
    udp_sent: AtomicU64,
    udp_echoed: AtomicU64,
    tcp_trips: AtomicU64,
    tcp_failed: AtomicU64,
    denied_sent: AtomicU64,
    denied_echoed: AtomicU64,
}

fn start_traffic(
    c: &Cluster,
    stop: &Arc<AtomicBool>,
    n: &Arc<Counts>,
) -> Vec<thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    let b = c.pod_ip("x/b").expect("x/b");
    // One UDP flow x/a -> x/b:80, a datagram every 2 ms, each echoed.
    let sock = in_netns(c.pod_netns("x/a").expect("x/a"), || {
        UdpSocket::bind("0.0.0.0:0")
    })
    .expect("netns")
    .expect("udp in x/a");
    sock.set_read_timeout(Some(Duration::from_millis(1)))
        .expect("timeout");
    let (stop1, n1) = (stop.clone(), n.clone());
    threads.push(thread::spawn(move || {
        let to = SocketAddr::new(b, 80);
        let mut buf = [0u8; 256];
        let mut drain_until = None;
        loop {
            if stop1.load(Ordering::Relaxed) && drain_until.is_none() {
                drain_until = Some(std::time::Instant::now() + Duration::from_millis(500));
            }
            if drain_until.is_some_and(|t| std::time::Instant::now() > t) {
                break;
            }
            if drain_until.is_none() && sock.send_to(b"allowed", to).is_ok() {
                n1.udp_sent.fetch_add(1, Ordering::Relaxed);
            }
            while sock.recv_from(&mut buf).is_ok() {
                n1.udp_echoed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }));
    // Two long-lived TCP connections x/a -> x/b:80, an echo every 20 ms.
    let (a, bp) = (
        Peer::parse("x/a").expect("a"),
        Peer::parse("x/b").expect("b"),
    );
    for _ in 0..2 {
        let mut conn: Connection = c
            .connect(&a, &bp, 80, Transport::Tcp, Via::Pod)
            .expect("connect x/a -> x/b:80");
        let (stop2, n2) = (stop.clone(), n.clone());
        threads.push(thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                if conn.roundtrip(Duration::from_secs(3)) {
                    n2.tcp_trips.fetch_add(1, Ordering::Relaxed);
                } else {
                    n2.tcp_failed.fetch_add(1, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    // y/a -> x/b UDP 81: no rule allows it; an echo is a datagram that got in.
    let sock = in_netns(c.pod_netns("y/a").expect("y/a"), || {
        UdpSocket::bind("0.0.0.0:0")
    })
    .expect("netns")
    .expect("udp in y/a");
    sock.set_nonblocking(true).expect("nonblocking");
    let (stop3, n3) = (stop.clone(), n.clone());
    threads.push(thread::spawn(move || {
        let to = SocketAddr::new(b, 81);
        let mut buf = [0u8; 64];
        while !stop3.load(Ordering::Relaxed) {
            if sock.send_to(b"must-not-arrive", to).is_ok() {
                n3.denied_sent.fetch_add(1, Ordering::Relaxed);
            }
            while sock.recv_from(&mut buf).is_ok() {
                n3.denied_echoed.fetch_add(1, Ordering::Relaxed);
            }
            thread::sleep(Duration::from_millis(2));
        }
        thread::sleep(Duration::from_millis(300));
        while sock.recv_from(&mut buf).is_ok() {
            n3.denied_echoed.fetch_add(1, Ordering::Relaxed);
        }
    }));
    threads
}

fn log_of(c: &Cluster, node: usize) -> String {
    let path = c.agent_log_path(node).expect("log path");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
#[ignore = "needs root, BPF and network namespaces: run through cargo xtask test"]
fn an_agent_of_another_map_layout_is_replaced_without_a_gap() {
    common::require_root();
    let other = other_build();
    let this = common::agent_binary();
    let mut c = common::cluster_of(common::agent_config(&[], palisade_harness::Uplinks::Named));
    c.set_agent_binary(&other).expect("binary");
    // The cluster started this build: start the other one in its place.
    for node in 1..=c.node_count() {
        c.stop_agent(node).expect("stop");
        c.start_agent(node).expect("start the other build");
    }
    for p in policies() {
        c.apply_policy(&p).expect("policy");
    }
    c.sync().expect("sync");
    let this_record = std::mem::size_of::<Endpoint>() as u32;
    for node in 1..=c.node_count() {
        let pins = c.pin_dir(node).expect("pin dir");
        assert_eq!(
            value_size(&pins, names::ENDPOINTS),
            this_record + 8,
            "node {node}: the other build's endpoint record"
        );
    }
    probes::expect(&c, &ROWS);

    let stop = Arc::new(AtomicBool::new(false));
    let n = Arc::new(Counts::default());
    let threads = start_traffic(&c, &stop, &n);
    thread::sleep(Duration::from_millis(500));
    c.set_agent_binary(&this).expect("binary");
    for node in 1..=c.node_count() {
        c.stop_agent(node).expect("stop the other build");
        c.start_agent(node).expect("start this build");
        thread::sleep(Duration::from_millis(300));
    }
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("traffic thread");
    }
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (sent, echoed) = (get(&n.udp_sent), get(&n.udp_echoed));
    eprintln!(
        "through the upgrade: {sent} datagrams sent, {echoed} echoed; {} TCP round trips, {} failed; {} datagrams to a denied port, {} arrived",
        get(&n.tcp_trips),
        get(&n.tcp_failed),
        get(&n.denied_sent),
        get(&n.denied_echoed)
    );
    assert!(sent > 100, "too little traffic to tell: {sent} datagrams");
    assert_eq!(
        echoed, sent,
        "datagrams of the allowed flow lost across the upgrade (replies pass by conntrack alone)"
    );
    assert!(
        get(&n.tcp_trips) > 20,
        "too few round trips: {}",
        get(&n.tcp_trips)
    );
    assert_eq!(
        get(&n.tcp_failed),
        0,
        "round trips of long-lived connections failed"
    );
    assert!(get(&n.denied_sent) > 100);
    assert_eq!(get(&n.denied_echoed), 0, "datagrams reached a denied port");

    for node in 1..=c.node_count() {
        let pins = c.pin_dir(node).expect("pin dir");
        assert_eq!(
            value_size(&pins, names::ENDPOINTS),
            this_record,
            "node {node}"
        );
        assert_eq!(
            max_entries(&pins, names::CONNTRACK_V4),
            palisade_common::MAX_CONNTRACK,
            "node {node}"
        );
        assert!(
            !pins.join("stale").exists(),
            "node {node}: the old pins are left"
        );
        let log = log_of(&c, node);
        for map in [names::ENDPOINTS, names::CONNTRACK_V4] {
            assert!(
                log.contains("pinned map of another layout") && log.contains(map),
                "node {node}: {map} not created anew:\n{}",
                c.agent_log_tail(node, 40)
            );
        }
        assert!(log.contains("map layout upgrade done"), "node {node}");
    }
    let node_a = c.pod_spec("x/a").expect("x/a").node;
    assert!(
        log_of(&c, node_a).contains("previous layout's table carried over"),
        "x/a's conntrack entries not carried"
    );

    // A restart of the same build adopts every map as it is.
    let before = log_of(&c, node_a).matches("maps are set aside").count();
    c.stop_agent(node_a).expect("stop");
    c.start_agent(node_a).expect("start");
    assert_eq!(
        log_of(&c, node_a).matches("maps are set aside").count(),
        before,
        "a restart of the same build set maps aside"
    );
    probes::expect(&c, &ROWS);
}
