//! `palisade-pod`, what the pods of `cargo xtask kind e2e` run, exercised for real
//! in a network namespace of its own: the exact command line the e2e puts in a
//! Pod serves every port, `probe` reports reachable and blocked targets in the
//! format the kube backend parses, `get` reads an HTTP answer, and `sctp` agrees
//! with the kernel. Needs root: `#[ignore]`d for plain `cargo test`, run by
//! `cargo xtask test`.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade_harness::{
    in_netns, kube,
    podtool::{format_target, parse_results},
    sctp_supported, Family, Outcome, PodPlan, PortPlan, Transport,
};

mod common;

const TOOL: &str = env!("CARGO_BIN_EXE_palisade-pod");

/// A network namespace of the test's own, deleted on drop (also on failure).
struct Netns(String);

impl Netns {
    fn new(test: &str) -> Netns {
        let name = format!("pal-podtool-{test}-{}", std::process::id());
        let ok = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip");
            assert!(st.success(), "ip {args:?}");
        };
        ok(&["netns", "add", &name]);
        let ns = Netns(name);
        ok(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }
    fn cmd(&self, args: &[String]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(args);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn probe(ns: &Netns, targets: &[String]) -> Vec<Outcome> {
    let mut args = vec![TOOL.to_string(), "probe".into()];
    args.extend(targets.iter().cloned());
    let out = ns.cmd(&args).output().expect("palisade-pod probe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_results(&String::from_utf8_lossy(&out.stdout), targets).expect("result lines")
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn the_pod_command_of_the_e2e_serves_and_probes_report() {
    common::require_root();
    let ns = Netns::new("serve");
    let mut ports = vec![
        PortPlan::new(8080, Transport::Tcp).named("http"),
        PortPlan::new(8081, Transport::Udp),
    ];
    if sctp_supported() {
        ports.push(PortPlan::new(8082, Transport::Sctp));
    }
    let spec = PodPlan {
        namespace: "x".into(),
        name: "a".into(),
        labels: Default::default(),
        node: 1,
        ports,
    };
    // The command exactly as the Pod manifest carries it.
    let pod = kube::pod_manifest(&spec, "node", "img", Family::Ipv4);
    let mut command: Vec<String> = pod["spec"]["containers"][0]["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(|v| v.as_str().expect("string").to_string())
        .collect();
    assert_eq!(command[0], "/palisade-pod");
    command[0] = TOOL.to_string();
    let _server = Killed(
        ns.cmd(&command)
            .stdout(Stdio::null())
            .spawn()
            .expect("palisade-pod serve"),
    );

    let at = |p: Transport, port: u16| format_target(SocketAddr::from(([127, 0, 0, 1], port)), p);
    let mut targets = vec![at(Transport::Tcp, 8080), at(Transport::Udp, 8081)];
    if sctp_supported() {
        targets.push(at(Transport::Sctp, 8082));
    }
    // Served ports come up within moments; poll a fact rather than sleep.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut res = probe(&ns, &targets);
    while res.iter().any(|o| *o != Outcome::Reachable) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        res = probe(&ns, &targets);
    }
    assert!(
        res.iter().all(|o| *o == Outcome::Reachable),
        "{targets:?}: {res:?}"
    );

    // Nothing listens there: blocked, in the order given, never reordered.
    let mixed = vec![
        at(Transport::Tcp, 9),
        at(Transport::Tcp, 8080),
        at(Transport::Udp, 9),
    ];
    assert_eq!(
        probe(&ns, &mixed),
        [Outcome::Blocked, Outcome::Reachable, Outcome::Blocked]
    );

    // `sctp` answers what this kernel can do.
    let st = ns
        .cmd(&[TOOL.to_string(), "sctp".into()])
        .status()
        .expect("palisade-pod sctp");
    assert_eq!(st.success(), sctp_supported());
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn get_prints_the_body_and_exits_3_on_a_non_200_answer() {
    common::require_root();
    let ns = Netns::new("get");
    for (status, body, code) in [
        ("200 OK", "{\"ready\":true,\"revision\":\"42\"}", 0),
        ("503 Service Unavailable", "{\"ready\":false}", 3),
    ] {
        let listener = in_netns(&ns.0, || TcpListener::bind("127.0.0.1:0"))
            .expect("netns")
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let responder = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).expect("request");
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            req
        });
        let out = ns
            .cmd(&[
                TOOL.to_string(),
                "get".into(),
                addr.to_string(),
                "/ready".into(),
            ])
            .output()
            .expect("palisade-pod get");
        let req = responder.join().expect("responder");
        assert!(req.starts_with("GET /ready HTTP/1."), "{req:?}");
        assert_eq!(out.status.code(), Some(code), "{status}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), body);
    }
}
