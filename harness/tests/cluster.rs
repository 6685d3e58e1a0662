//! Checks of the namespace cluster itself, with no agent: every
//! pair reachable pod-to-pod and via Service, Services with several backends
//! spread connections, externals and nodes reach pods, teardown leaves no
//! namespace, and leftovers of a dead run are cleaned.
//!
//! Needs root: `#[ignore]`d for plain `cargo test`, run by `cargo xtask test`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

use palisade_harness::*;

mod common;

fn all_pairs(c: &Cluster, protocol: Transport, port: u16, via: Via) -> Vec<Probe> {
    let keys = c.pod_keys();
    let mut v = Vec::new();
    for a in &keys {
        for b in &keys {
            if a != b {
                v.push(Probe {
                    from: Peer::Pod(a.clone()),
                    to: Peer::Pod(b.clone()),
                    port,
                    protocol,
                    via,
                });
            }
        }
    }
    v
}

fn check_full_mesh(family: Family) {
    let spec = ClusterSpec::default_model(family);
    let c = Cluster::build(&spec, ClusterOptions::default()).expect("build");
    let id = c.id().to_string();
    let mut probes = Vec::new();
    for via in [Via::Pod, Via::Service] {
        for proto in [Transport::Tcp, Transport::Udp] {
            for port in [80, 81] {
                probes.extend(all_pairs(&c, proto, port, via));
            }
        }
    }
    let t = Instant::now();
    let out = c.probe(&probes).expect("probe");
    let took = t.elapsed();
    let bad: Vec<String> = probes
        .iter()
        .zip(&out)
        .filter(|(_, o)| **o != Outcome::Reachable)
        .map(|(p, o)| {
            format!(
                "{} -> {} {}/{} {:?}: {o:?}",
                p.from, p.to, p.protocol, p.port, p.via
            )
        })
        .collect();
    assert!(bad.is_empty(), "unreachable: {bad:#?}");
    assert!(took.as_secs() < 5, "{} probes took {took:?}", probes.len());

    // Nodes reach every pod, through the Service too.
    let mut probes = Vec::new();
    for n in 1..=2 {
        for k in c.pod_keys() {
            for via in [Via::Pod, Via::Service] {
                probes.push(Probe {
                    from: Peer::Node(n),
                    to: Peer::Pod(k.clone()),
                    port: 80,
                    protocol: Transport::Tcp,
                    via,
                });
            }
        }
    }
    let out = c.probe(&probes).expect("probe");
    assert!(
        out.iter().all(|o| *o == Outcome::Reachable),
        "node probes: {out:?}"
    );

    // x/a to y/b's pod address.
    let a_to_b = |port, protocol| Probe {
        from: Peer::Pod("x/a".into()),
        to: Peer::Pod("y/b".into()),
        port,
        protocol,
        via: Via::Pod,
    };
    // A port nobody serves is blocked (refused), quickly.
    let out = c.probe(&[a_to_b(82, Transport::Tcp)]).expect("probe");
    assert_eq!(out, vec![Outcome::Blocked]);

    // SCTP reaches the pod where the kernel has it, and is skipped where not.
    let out = c.probe(&[a_to_b(80, Transport::Sctp)]).expect("probe");
    let sctp = if sctp_supported() {
        Outcome::Reachable
    } else {
        Outcome::Skipped
    };
    let support = sctp_supported();
    assert_eq!(out, vec![sctp], "SCTP (kernel support: {support})");

    c.teardown().expect("teardown");
    assert!(
        common::netns_with(&id).is_empty(),
        "left behind: {:?}",
        common::netns_with(&id)
    );
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn full_mesh_ipv4() {
    common::require_root();
    check_full_mesh(Family::Ipv4);
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn full_mesh_ipv6() {
    common::require_root();
    check_full_mesh(Family::Ipv6);
}

fn small_spec(family: Family) -> ClusterSpec {
    let mut spec = ClusterSpec::default_model(family);
    spec.pods.truncate(4);
    spec.externals.push(ExternalSpec {
        name: "backup".into(),
        ports: vec![
            PortPlan::new(80, Transport::Tcp),
            PortPlan::new(80, Transport::Udp),
        ],
    });
    spec
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn externals_reach_and_are_reached() {
    common::require_root();
    for family in [Family::Ipv4, Family::Ipv6] {
        let c = Cluster::build(&small_spec(family), ClusterOptions::default()).expect("build");
        let ext = Peer::External("backup".into());
        let mut probes = Vec::new();
        for k in c.pod_keys() {
            for proto in [Transport::Tcp, Transport::Udp] {
                probes.push(Probe {
                    from: Peer::Pod(k.clone()),
                    to: ext.clone(),
                    port: 80,
                    protocol: proto,
                    via: Via::Service,
                });
                probes.push(Probe {
                    from: ext.clone(),
                    to: Peer::Pod(k.clone()),
                    port: 80,
                    protocol: proto,
                    via: Via::Service,
                });
            }
        }
        for n in 1..=2 {
            probes.push(Probe {
                from: Peer::Node(n),
                to: ext.clone(),
                port: 80,
                protocol: Transport::Tcp,
                via: Via::Pod,
            });
        }
        let out = c.probe(&probes).expect("probe");
        let bad: Vec<_> = probes
            .iter()
            .zip(&out)
            .filter(|(_, o)| **o != Outcome::Reachable)
            .map(|(p, _)| format!("{} -> {} {}", p.from, p.to, p.protocol))
            .collect();
        assert!(bad.is_empty(), "{family}: unreachable {bad:?}");
        let ip = c.external_ip("backup").expect("ip");
        assert!(!c.pod_keys().iter().any(|k| c.pod_ip(k).ok() == Some(ip)));
    }
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn service_with_three_backends_spreads() {
    common::require_root();
    for family in [Family::Ipv4, Family::Ipv6] {
        let mut c = Cluster::build(&small_spec(family), ClusterOptions::default()).expect("build");
        let ip = c
            .add_service(
                "x",
                "multi",
                vec![
                    ServicePort {
                        name: "http".into(),
                        port: 8080,
                        target_port: 80,
                        protocol: Transport::Tcp,
                    },
                    ServicePort {
                        name: "dns".into(),
                        port: 5353,
                        target_port: 81,
                        protocol: Transport::Udp,
                    },
                ],
                &["x/b", "x/c", "y/a"],
            )
            .expect("add service");
        for (port, proto) in [(8080, Transport::Tcp), (5353, Transport::Udp)] {
            let mut seen = BTreeSet::new();
            for _ in 0..30 {
                let who = c
                    .whoami(&Peer::Pod("x/a".into()), SocketAddr::new(ip, port), proto)
                    .expect("whoami")
                    .expect("an answer");
                seen.insert(who);
            }
            assert!(seen.len() > 1, "{family} {proto}: always {seen:?}");
            assert!(
                seen.iter()
                    .all(|s| ["x/b", "x/c", "y/a"].contains(&s.as_str())),
                "{seen:?}"
            );
        }
        // Restricting the backends is honoured.
        c.set_service_backends("x", "multi", &["y/a"])
            .expect("set backends");
        for _ in 0..5 {
            let who = c
                .whoami(&Peer::Node(1), SocketAddr::new(ip, 8080), Transport::Tcp)
                .expect("whoami");
            assert_eq!(who.as_deref(), Some("y/a"));
        }
        // A pod's own Service answers from that pod.
        let own = c
            .target_addr(
                &Peer::Pod("x/a".into()),
                &Peer::Pod("y/a".into()),
                80,
                Transport::Tcp,
                Via::Service,
            )
            .expect("addr");
        let who = c
            .whoami(&Peer::Pod("x/a".into()), own, Transport::Tcp)
            .expect("whoami");
        assert_eq!(who.as_deref(), Some("y/a"));
    }
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn pods_added_and_removed_at_runtime() {
    common::require_root();
    let mut c =
        Cluster::build(&small_spec(Family::Ipv4), ClusterOptions::default()).expect("build");
    let spec = PodPlan {
        namespace: "z".into(),
        name: "late".into(),
        labels: [("pod".to_string(), "late".to_string())].into(),
        node: 2,
        ports: vec![PortPlan::new(80, Transport::Tcp)],
    };
    c.add_pod(spec).expect("add pod");
    c.sync().expect("sync");
    let src = c.source_dir(1).expect("dir");
    assert!(src.join("pod-z-late.yaml").exists());
    assert!(src.join("service-z-s-z-late.yaml").exists());
    let p = Probe {
        from: Peer::Pod("x/a".into()),
        to: Peer::Pod("z/late".into()),
        port: 80,
        protocol: Transport::Tcp,
        via: Via::Service,
    };
    assert_eq!(
        c.probe(std::slice::from_ref(&p)).expect("probe"),
        vec![Outcome::Reachable]
    );
    let ns = c.pod_netns("z/late").expect("ns").to_string();
    c.remove_pod("z/late").expect("remove");
    assert!(!src.join("pod-z-late.yaml").exists());
    assert!(common::netns_with(&ns).is_empty());
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn drop_during_panic_cleans_up() {
    common::require_root();
    let id = std::sync::Mutex::new(String::new());
    let r = std::panic::catch_unwind(|| {
        let c =
            Cluster::build(&small_spec(Family::Ipv4), ClusterOptions::default()).expect("build");
        *id.lock().unwrap() = c.id().to_string();
        panic!("test panic with a live cluster");
    });
    assert!(r.is_err());
    let id = id.lock().unwrap().clone();
    assert!(!id.is_empty());
    assert!(common::netns_with(&format!("{id}-")).is_empty());
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn leftovers_of_dead_runs_are_removed() {
    common::require_root();
    // A pid that certainly belonged to a process that is now gone.
    let mut child = std::process::Command::new("true").spawn().expect("spawn");
    let dead = child.id();
    child.wait().expect("wait");
    // Its lock file exists but nobody holds it: dead even if the pid is reused.
    std::fs::create_dir_all("/run/palisade-harness").expect("lock dir");
    std::fs::write(format!("/run/palisade-harness/{dead}.lock"), "").expect("lock file");
    let ns = format!("pal-{dead}-1-n1");
    let st = std::process::Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .expect("ip");
    assert!(st.success());
    let tmp = std::env::temp_dir().join(format!("palisade-harness-{dead}-1"));
    std::fs::create_dir_all(tmp.join("n1")).expect("mkdir");
    let removed = cleanup_leftovers();
    assert!(
        common::netns_with(&ns).is_empty(),
        "leftover {ns} still there"
    );
    assert!(!tmp.exists());
    assert!(removed.iter().any(|r| r.contains(&ns)), "{removed:?}");

    // A live cluster of ours survives the cleanup, and building one cleans too.
    let st = std::process::Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .expect("ip");
    assert!(st.success());
    let c = Cluster::build(&small_spec(Family::Ipv4), ClusterOptions::default()).expect("build");
    assert!(
        common::netns_with(&ns).is_empty(),
        "build did not clean {ns}"
    );
    cleanup_leftovers();
    assert!(
        !common::netns_with(&format!("{}-", c.id())).is_empty(),
        "own live namespaces removed"
    );
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn long_lived_connections_echo() {
    common::require_root();
    let c = Cluster::build(&small_spec(Family::Ipv4), ClusterOptions::default()).expect("build");
    for via in [Via::Service, Via::Pod] {
        let mut conn = c
            .connect(
                &Peer::Pod("x/a".into()),
                &Peer::Pod("y/a".into()),
                81,
                Transport::Tcp,
                via,
            )
            .expect("connect");
        for _ in 0..3 {
            assert!(conn.roundtrip(std::time::Duration::from_secs(1)), "{via:?}");
        }
    }
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn observed_matrix_prints_in_format_syntax() {
    common::require_root();
    let c = Cluster::build(&small_spec(Family::Ipv4), ClusterOptions::default()).expect("build");
    let peers: Vec<Peer> = c.pod_keys().into_iter().map(Peer::Pod).collect();
    let mut rows = peers.clone();
    rows.push(Peer::Node(2));
    let m = c
        .observe_matrix(&rows, &peers, 80, Transport::Tcp, Via::Service)
        .expect("matrix");
    let text = m.to_aligned_string();
    println!("{text}");
    let parsed = palisade_harness::matrix::Matrix::parse(&text).expect("reparse");
    assert_eq!(parsed, m);
    let row: Vec<&str> = text
        .lines()
        .nth(1)
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(row, ["x/a", "?", ".", ".", "."], "{text}");
}
