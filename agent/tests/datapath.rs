//! The real eBPF object in the real kernel, driven with crafted packets through
//! BPF_PROG_TEST_RUN. Needs root and bpffs: every test is `#[ignore]`d for plain
//! `cargo test`, and `cargo xtask test` and `cargo xtask vm-test` run them.
//!
//! Every test loads its own copy of the object with maps pinned in a private
//! directory, and uses ifindex 1 (loopback) as the endpoint's interface: test runs
//! need a real device index but send nothing anywhere.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use palisade_agent::{
    datapath::Datapath,
    events::EventReader,
    maps::Maps,
    packet::{self, IpOpts, L4},
};
use palisade_common::*;

mod common;

const OK: u32 = 0;
const SHOT: u32 = 2;
const IF: u32 = 1;
/// The programs: on a pod's veth, traffic to and from the pod; on other
/// interfaces, Service traffic after DNAT.
const TO: &str = "to_pod";
const FROM: &str = "from_pod";
const SVC: &str = "svc_egress";

const POD: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 10);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 20);
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 1, 0, 0, 0, 0, 0x10);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 2, 0, 0, 0, 0, 0x20);
/// A link-local source, and the all-nodes multicast group.
const LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 5);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

struct Fx {
    dp: Datapath,
    maps: Maps,
    events: EventReader,
    _dir: PinDir,
}

/// Removes the test's pin directory however the test ends.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture_with(policy_entries: Option<u32>) -> Fx {
    fixture_prepared(policy_entries, |_| {})
}

/// A fixture whose pin directory `prepare` sees (as `<dir>/maps`) before the
/// object is loaded.
fn fixture_prepared(policy_entries: Option<u32>, prepare: impl FnOnce(&std::path::Path)) -> Fx {
    common::require_root();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/palisade-test/dp-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let guard = PinDir(dir.clone());
    std::fs::create_dir_all(dir.join("maps")).expect("pin directory");
    prepare(&dir.join("maps"));
    let mut dp = Datapath::load_with(&dir, policy_entries).expect("load eBPF object");
    let maps = Maps::take(&mut dp).expect("maps");
    let events = EventReader::new(&mut dp).expect("ring buffer");
    Fx {
        dp,
        maps,
        events,
        _dir: guard,
    }
}

/// Give this test thread a private network namespace where ifindexes 2 and 3
/// exist (a veth pair after loopback), for tests that run programs as if on other
/// interfaces: BPF_PROG_TEST_RUN refuses an ifindex with no device behind it on
/// some kernels (6.1), and a VM guest has only loopback.
fn interfaces_2_and_3() {
    let (a, b) = common::private_veth("pdt2", "pdt3");
    let mut idx = [a, b];
    idx.sort_unstable();
    assert_eq!(idx, [2, 3], "ifindexes of the veth pair");
}

fn fixture() -> Fx {
    fixture_with(None)
}

/// A fixture with the endpoint on `IF`, flags as given.
fn fixture_for(flags: u32) -> Fx {
    let mut fx = fixture();
    fx.maps
        .upsert_endpoint(IF, &endpoint(flags))
        .expect("setup");
    fx
}

fn endpoint(flags: u32) -> Endpoint {
    Endpoint {
        id: 7,
        flags: flags | EP_HAS_V4 | EP_HAS_V6,
        ipv4: POD.octets(),
        _pad0: [0; 4],
        ipv6: POD6.octets(),
    }
}

fn ports(list: &[(u8, u16, u16)]) -> PolicyValue {
    let mut v = PolicyValue::default();
    for (i, (proto, first, last)) in list.iter().enumerate() {
        v.ranges[i] = PortRange {
            proto: *proto,
            reason: 0,
            first: *first,
            last: *last,
            _pad1: 0,
        };
    }
    v.count = list.len() as u8;
    v
}

/// A value allowing every protocol and port.
fn every_port() -> PolicyValue {
    PolicyValue {
        flags: PV_ALL,
        ..Default::default()
    }
}

fn allow_v4(fx: &mut Fx, dir: u8, net: Ipv4Addr, plen: u32, v: PolicyValue) {
    let key = PolicyKeyV4 {
        scope: PolicyScope::new(7, dir),
        addr: net.octets(),
    };
    fx.maps
        .upsert_v4(SCOPE_BITS + plen, key, &v)
        .expect("insert policy");
}

fn allow_v6(fx: &mut Fx, dir: u8, addr: Ipv6Addr, plen: u32, v: PolicyValue) {
    let key = PolicyKeyV6 {
        scope: PolicyScope::new(7, dir),
        addr: addr.octets(),
    };
    fx.maps
        .upsert_v6(SCOPE_BITS + plen, key, &v)
        .expect("insert policy");
}

impl Fx {
    fn run_mark(
        &mut self,
        prog: &'static str,
        frame: &[u8],
        ifindex: u32,
        mark: u32,
    ) -> (u32, u32) {
        let ctx_in = packet::skb_ctx(ifindex, mark);
        let mut ctx_out = vec![0u8; 256];
        let mut data_out = vec![0u8; frame.len() + 64];
        let p = self.dp.program(prog).expect("program");
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut data_out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        let mark_out = u32::from_ne_bytes([ctx_out[8], ctx_out[9], ctx_out[10], ctx_out[11]]);
        (r.return_value, mark_out)
    }
    fn run(&mut self, prog: &'static str, frame: &[u8]) -> u32 {
        self.run_mark(prog, frame, IF, 0).0
    }
    fn events(&mut self) -> Vec<Event> {
        self.events.drain()
    }
}

fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    packet::frame(src.into(), dst.into(), &L4::Tcp { sport, dport })
}
fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    packet::frame(src.into(), dst.into(), &L4::Udp { sport, dport })
}
fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    packet::frame(src.into(), dst.into(), &L4::Udp { sport, dport })
}
fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8) -> Vec<u8> {
    packet::frame(src.into(), dst.into(), &L4::Icmp6Type(ty))
}
fn echo(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, id: u16) -> Vec<u8> {
    packet::frame(src.into(), dst.into(), &L4::IcmpEchoRequest { id })
}
/// An IPv4 frame with header options or fragment fields.
fn ipv4_with(src: Ipv4Addr, dst: Ipv4Addr, l4: L4, opts: &IpOpts) -> Vec<u8> {
    packet::ether(&packet::ipv4(src, dst, &l4, opts))
}
/// An IPv6 frame with extension headers, the first of kind `first_ext`.
fn ipv6_with(src: Ipv6Addr, dst: Ipv6Addr, l4: L4, opts: &IpOpts, first_ext: u8) -> Vec<u8> {
    packet::ether(&packet::ipv6(src, dst, &l4, opts, Some(first_ext)))
}
/// UDP from port 1 to 53.
fn dns() -> L4 {
    L4::Udp {
        sport: 1,
        dport: 53,
    }
}

fn one_event(fx: &mut Fx) -> Event {
    let evs = fx.events();
    assert_eq!(evs.len(), 1, "expected exactly one event, got {evs:?}");
    evs[0]
}

/// One row of a table of runs: the case's name, the program, the frame, and
/// the verdict the program must return.
type Run<'a> = (&'static str, &'static str, &'a [u8], u32);

fn verdict_name(v: u32) -> &'static str {
    match v {
        OK => "TC_ACT_OK",
        SHOT => "TC_ACT_SHOT",
        _ => "another verdict",
    }
}

impl Fx {
    /// Runs the rows in order (conntrack and event state carry over from one to
    /// the next) and checks each verdict, naming the row that differs.
    fn check(&mut self, runs: &[Run<'_>]) {
        for (name, prog, frame, want) in runs {
            let got = self.run(prog, frame);
            assert_eq!(
                got,
                *want,
                "{name} ({prog}): {} ({got}), want {}",
                verdict_name(got),
                verdict_name(*want)
            );
        }
    }
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn non_ip_passes_even_without_endpoint() {
    common::require_root();
    let mut fx = fixture();
    fx.check(&[
        ("ARP to the pod", TO, &packet::arp(), OK),
        ("ARP from the pod", FROM, &packet::arp(), OK),
    ]);
    assert!(fx.events().is_empty());
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn unknown_endpoint_fails_closed_and_reports() {
    common::require_root();
    let mut fx = fixture();
    assert_eq!(fx.run(TO, &tcp(PEER, POD, 40000, 80)), SHOT);
    let ev = one_event(&mut fx);
    assert_eq!(ev.reason, Reason::UnknownEndpoint as u8);
    assert_eq!(ev.verdict, VERDICT_DENIED);
    assert_eq!(ev.ifindex, IF);
    assert_eq!(ev.direction, DIR_INGRESS);
    assert_eq!(fx.run(FROM, &tcp(POD, PEER, 40000, 80)), SHOT);
    assert_eq!(one_event(&mut fx).direction, DIR_EGRESS);
    // Neighbour discovery is how a bridge-style node learns a new IPv6 pod: the
    // node's solicitation reaches it, its advertisement (from its global
    // address) gets out. A router advertisement of its own does not.
    fx.check(&[
        ("the node's solicitation", TO, &icmp6(PEER6, POD6, 135), OK),
        ("its advertisement", FROM, &icmp6(POD6, PEER6, 136), OK),
        ("RA of its own", FROM, &icmp6(LL, ALL_NODES, 134), SHOT),
    ]);
    assert_eq!(one_event(&mut fx).reason, Reason::UnknownEndpoint as u8);
    // ICMPv6's protocol number in IPv4 is not neighbour discovery.
    let nd_in_v4 = packet::ether(&packet::ipv4(
        PEER,
        POD,
        &L4::Raw {
            proto: PROTO_ICMPV6,
            bytes: vec![135, 0, 0, 0, 0, 0, 0, 0],
        },
        &IpOpts::default(),
    ));
    assert_eq!(fx.run(TO, &nd_in_v4), SHOT);
    assert_eq!(one_event(&mut fx).reason, Reason::UnknownEndpoint as u8);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn not_isolated_allows_everything() {
    common::require_root();
    let mut fx = fixture_for(0);
    fx.check(&[
        ("TCP in", TO, &tcp(PEER, POD, 40000, 80), OK),
        ("UDP out", FROM, &udp(POD, OTHER, 5353, 53), OK),
    ]);
    let c = fx.maps.counters(7).unwrap();
    assert_eq!(c.allowed_packets, 2);
    assert_eq!(c.denied_packets, 0);
    assert!(fx.events().is_empty());
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn prefix_port_range_and_protocol_decide() {
    common::require_root();
    let mut fx = fixture_for(EP_INGRESS_ISOLATED);
    let v = ports(&[(PROTO_TCP, 80, 80), (PROTO_UDP, 8000, 8005)]);
    allow_v4(&mut fx, DIR_INGRESS, Ipv4Addr::new(10, 100, 2, 0), 24, v);
    fx.check(&[
        ("allowed port", TO, &tcp(PEER, POD, 40000, 80), OK),
        ("range start", TO, &udp(PEER, POD, 40000, 8000), OK),
        ("range end", TO, &udp(PEER, POD, 40000, 8005), OK),
    ]);
    assert!(fx.events().is_empty());
    fx.check(&[
        ("past range end", TO, &udp(PEER, POD, 40000, 8006), SHOT),
        ("other port", TO, &tcp(PEER, POD, 40000, 81), SHOT),
        ("other protocol", TO, &udp(PEER, POD, 40001, 80), SHOT),
        ("other prefix", TO, &tcp(OTHER, POD, 40000, 80), SHOT),
    ]);
    let evs = fx.events();
    assert_eq!(evs.len(), 4);
    let ev = evs[3];
    assert_eq!(ev.reason, Reason::NoPolicyAllows as u8);
    assert_eq!(ev.endpoint_id, 7);
    assert_eq!(ev.family, FAMILY_V4);
    assert_eq!(ev.proto, PROTO_TCP);
    assert_eq!(&ev.src[..4], &OTHER.octets());
    assert_eq!(&ev.dst[..4], &POD.octets());
    assert_eq!((ev.sport, ev.dport), (40000, 80));
    assert_eq!(ev.direction, DIR_INGRESS);
    // Egress is not isolated: anything goes out.
    assert_eq!(fx.run(FROM, &tcp(POD, OTHER, 40000, 9999)), OK);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn longest_prefix_wins_for_nested_blocks() {
    common::require_root();
    let mut fx = fixture_for(EP_EGRESS_ISOLATED);
    let all = every_port();
    // /8 allows all, the /24 hole (an except) allows only TCP 443, a /32 inside it all again.
    allow_v4(&mut fx, DIR_EGRESS, Ipv4Addr::new(10, 0, 0, 0), 8, all);
    let v = ports(&[(PROTO_TCP, 443, 443)]);
    allow_v4(&mut fx, DIR_EGRESS, Ipv4Addr::new(10, 100, 2, 0), 24, v);
    allow_v4(&mut fx, DIR_EGRESS, PEER, 32, all);
    let (in_8, in_24) = (Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(10, 100, 2, 9));
    let other_in_8 = Ipv4Addr::new(10, 9, 9, 9);
    fx.check(&[
        ("UDP in the /8", FROM, &udp(POD, in_8, 1000, 53), OK),
        ("TCP 80 in the /24", FROM, &tcp(POD, in_24, 1000, 80), SHOT),
        ("TCP 443 in the /24", FROM, &tcp(POD, in_24, 1000, 443), OK),
        ("TCP 80 to the /32", FROM, &tcp(POD, PEER, 1000, 80), OK),
        // ICMP needs a rule without ports.
        ("ICMP in the /24", FROM, &echo(POD, in_24, 1), SHOT),
        ("ICMP in the /8", FROM, &echo(POD, other_in_8, 1), OK),
    ]);
}

/// Full-length entries live in a hash the programs probe before the trie; a
/// host entry an agent of the trie-only layout left in the trie still
/// decides until the entry is deleted, which removes it from both.
#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn host_entries_answer_before_the_trie() {
    common::require_root();
    let mut fx = fixture_for(EP_EGRESS_ISOLATED);
    allow_v4(
        &mut fx,
        DIR_EGRESS,
        Ipv4Addr::new(10, 100, 2, 0),
        24,
        every_port(),
    );
    allow_v4(&mut fx, DIR_EGRESS, PEER, 32, ports(&[(PROTO_TCP, 80, 80)]));
    allow_v6(
        &mut fx,
        DIR_EGRESS,
        PEER6,
        128,
        ports(&[(PROTO_UDP, 53, 53)]),
    );
    assert_eq!(fx.maps.policy_host_v4.keys().count(), 1);
    assert_eq!(fx.maps.policy_host_v6.keys().count(), 1);
    assert_eq!(
        fx.maps.policy_v4.keys().count(),
        1,
        "only the /24 in the trie"
    );
    fx.check(&[
        ("the host entry's port", FROM, &tcp(POD, PEER, 1000, 80), OK),
        (
            "not the /24's every port",
            FROM,
            &udp(POD, PEER, 1000, 53),
            SHOT,
        ),
        (
            "another host in the /24",
            FROM,
            &udp(POD, Ipv4Addr::new(10, 100, 2, 9), 1000, 53),
            OK,
        ),
        (
            "the IPv6 host entry",
            FROM,
            &udp6(POD6, PEER6, 1000, 53),
            OK,
        ),
        ("its other ports", FROM, &udp6(POD6, PEER6, 1000, 54), SHOT),
    ]);
    // A /32 in the trie, as the trie-only layout wrote it: found through the trie,
    // read back as an entry, and removed from the trie by delete_v4.
    let stale = Ipv4Addr::new(192, 0, 2, 99);
    let key = PolicyKeyV4 {
        scope: PolicyScope::new(7, DIR_EGRESS),
        addr: stale.octets(),
    };
    fx.maps
        .policy_v4
        .insert(
            &aya::maps::lpm_trie::Key::new(SCOPE_BITS + 32, key),
            every_port(),
            0,
        )
        .expect("insert into the trie");
    assert_eq!(fx.run(FROM, &tcp(POD, stale, 1000, 80)), OK);
    assert!(fx
        .maps
        .policy_v4_entries()
        .iter()
        .any(|(p, k, _)| *p == SCOPE_BITS + 32 && *k == key));
    // The agent's write of the same key shadows the trie's; its delete removes both.
    allow_v4(
        &mut fx,
        DIR_EGRESS,
        stale,
        32,
        ports(&[(PROTO_TCP, 443, 443)]),
    );
    assert_eq!(fx.run(FROM, &tcp(POD, stale, 1000, 80)), SHOT);
    fx.maps.delete_v4(SCOPE_BITS + 32, key).expect("delete");
    assert_eq!(fx.run(FROM, &tcp(POD, stale, 1000, 443)), SHOT);
    assert_eq!(fx.maps.policy_v4.keys().count(), 1, "only the /24 left");
    // IPv6 replies are tracked in their own table.
    let mut fx = fixture_for(EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED);
    allow_v6(
        &mut fx,
        DIR_EGRESS,
        PEER6,
        128,
        ports(&[(PROTO_UDP, 53, 53)]),
    );
    fx.check(&[
        (
            "IPv6 allowed egress",
            FROM,
            &udp6(POD6, PEER6, 1000, 53),
            OK,
        ),
        ("its reply", TO, &udp6(PEER6, POD6, 53, 1000), OK),
        ("not its reply", TO, &udp6(PEER6, POD6, 53, 1001), SHOT),
    ]);
}

/// `PBIT_OTHER` (a ClusterNetworkPolicy can deny TCP/80 and allow the rest):
/// protocols without ports pass on it alone, TCP/UDP/SCTP only on their own
/// bits or ranges.
#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn the_other_protocols_bit_allows_protocols_without_ports() {
    common::require_root();
    let mut fx = fixture_for(EP_EGRESS_ISOLATED);
    // Everything but TCP/80: UDP and SCTP on every port, TCP except 80, and
    // every protocol without ports.
    let mut v = ports(&[(PROTO_TCP, 1, 79), (PROTO_TCP, 81, 65535)]);
    v.all_ports = PBIT_UDP | PBIT_SCTP | PBIT_OTHER;
    allow_v4(&mut fx, DIR_EGRESS, PEER, 32, v);
    let icmp = echo(POD, PEER, 1);
    fx.check(&[
        ("ICMP on PBIT_OTHER", FROM, &icmp, OK),
        ("TCP 80", FROM, &tcp(POD, PEER, 1000, 80), SHOT),
        ("TCP 81", FROM, &tcp(POD, PEER, 1000, 81), OK),
        ("UDP 80", FROM, &udp(POD, PEER, 1000, 80), OK),
    ]);
    // The same value without PBIT_OTHER: ICMP is denied, TCP unchanged.
    v.all_ports = PBIT_UDP | PBIT_SCTP;
    allow_v4(&mut fx, DIR_EGRESS, PEER, 32, v);
    fx.check(&[
        ("no PBIT_OTHER, no ICMP", FROM, &icmp, SHOT),
        ("TCP 81 unchanged", FROM, &tcp(POD, PEER, 1000, 81), OK),
    ]);
}

/// ClusterNetworkPolicy drops carry their tier: a denied range's reason, the
/// entry's reason for the rest and for protocols without ports, and a missing
/// entry's `no-policy-allows`, in IPv4 and IPv6; audit mode passes them.
#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn tier_denials_report_their_reason() {
    common::require_root();
    let mut fx = fixture_for(EP_INGRESS_ISOLATED);
    // From PEER: TCP/80 allowed inside an Admin-denied 1-1000, the rest denied
    // by Baseline, protocols without ports by Admin.
    let mut v = ports(&[(PROTO_TCP, 80, 80), (PROTO_TCP, 1, 1000)]);
    v.ranges[1].reason = Reason::AdminDeny as u8;
    v.deny_reason = Reason::BaselineDeny as u8;
    v.other_reason = Reason::AdminDeny as u8;
    allow_v4(&mut fx, DIR_INGRESS, PEER, 32, v);
    allow_v6(&mut fx, DIR_INGRESS, PEER6, 128, v);
    let cases: [(&str, Vec<u8>, Option<Reason>); 8] = [
        ("TCP 80 allowed", tcp(PEER, POD, 1000, 80), None),
        (
            "TCP 22 admin",
            tcp(PEER, POD, 1000, 22),
            Some(Reason::AdminDeny),
        ),
        (
            "TCP 2000 baseline",
            tcp(PEER, POD, 1000, 2000),
            Some(Reason::BaselineDeny),
        ),
        (
            "UDP 22 baseline",
            udp(PEER, POD, 1000, 22),
            Some(Reason::BaselineDeny),
        ),
        ("ICMP admin", echo(PEER, POD, 9), Some(Reason::AdminDeny)),
        (
            "no entry",
            tcp(OTHER, POD, 1000, 22),
            Some(Reason::NoPolicyAllows),
        ),
        (
            "IPv6 TCP 53 admin",
            packet::frame(
                PEER6.into(),
                POD6.into(),
                &L4::Tcp {
                    sport: 1000,
                    dport: 53,
                },
            ),
            Some(Reason::AdminDeny),
        ),
        (
            "IPv6 UDP 5353 baseline",
            udp6(PEER6, POD6, 1000, 5353),
            Some(Reason::BaselineDeny),
        ),
    ];
    for (name, frame, want) in &cases {
        let got = fx.run(TO, frame);
        let evs = fx.events();
        match want {
            None => {
                assert_eq!(got, OK, "{name}");
                assert!(evs.is_empty(), "{name}: {evs:?}");
            }
            Some(r) => {
                assert_eq!(got, SHOT, "{name}");
                assert_eq!(evs.len(), 1, "{name}: {evs:?}");
                assert_eq!(
                    Reason::from_u8(evs[0].reason),
                    Some(*r),
                    "{name}: reason {}",
                    evs[0].reason
                );
                assert_eq!(evs[0].verdict, VERDICT_DENIED, "{name}");
            }
        }
    }
    // Audit mode lets every tier's drop pass and reports it with its reason.
    fx.maps
        .upsert_endpoint(IF, &endpoint(EP_INGRESS_ISOLATED | EP_AUDIT))
        .expect("endpoint");
    assert_eq!(fx.run(TO, &tcp(PEER, POD, 1001, 22)), OK);
    let ev = one_event(&mut fx);
    assert_eq!(
        (Reason::from_u8(ev.reason), ev.verdict),
        (Some(Reason::AdminDeny), VERDICT_AUDIT)
    );
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn ipv4_options_use_the_real_header_length() {
    common::require_root();
    let mut fx = fixture_for(EP_INGRESS_ISOLATED);
    let v = ports(&[(PROTO_TCP, 80, 80)]);
    allow_v4(&mut fx, DIR_INGRESS, PEER, 32, v);
    let opts = IpOpts {
        v4_options: vec![1, 1, 1, 1, 1, 1, 1, 0],
        ..Default::default()
    };
    let to = |dport| {
        ipv4_with(
            PEER,
            POD,
            L4::Tcp {
                sport: 40000,
                dport,
            },
            &opts,
        )
    };
    fx.check(&[
        ("allowed port behind options", TO, &to(80), OK),
        ("other port behind options", TO, &to(81), SHOT),
    ]);
    assert_eq!(one_event(&mut fx).dport, 81);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn ipv6_extension_headers_are_walked() {
    common::require_root();
    let mut fx = fixture_for(EP_INGRESS_ISOLATED);
    allow_v6(
        &mut fx,
        DIR_INGRESS,
        PEER6,
        128,
        ports(&[(PROTO_UDP, 53, 53)]),
    );
    let mut ext = packet::v6_ext(0, 60, 0);
    ext.extend(packet::v6_ext(60, 43, 0));
    ext.extend(packet::v6_ext(43, 0, 0));
    let opts = IpOpts {
        v6_ext: ext,
        ..Default::default()
    };
    let to = |dport| ipv6_with(PEER6, POD6, L4::Udp { sport: 999, dport }, &opts, 0);
    fx.check(&[
        ("allowed port behind three headers", TO, &to(53), OK),
        ("other port behind three headers", TO, &to(54), SHOT),
    ]);
    let ev = one_event(&mut fx);
    assert_eq!((ev.family, ev.proto, ev.dport), (FAMILY_V6, PROTO_UDP, 54));
    // More extension headers than the bounded walk: malformed, dropped.
    let mut ext = Vec::new();
    for _ in 0..9 {
        ext.extend(packet::v6_ext(60, 60, 0));
    }
    let opts = IpOpts {
        v6_ext: ext,
        ..Default::default()
    };
    let f = ipv6_with(
        PEER6,
        POD6,
        L4::Udp {
            sport: 999,
            dport: 53,
        },
        &opts,
        60,
    );
    assert_eq!(fx.run(TO, &f), SHOT, "nine extension headers");
    assert_eq!(one_event(&mut fx).reason, Reason::Malformed as u8);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn fragments_match_only_all_port_rules() {
    common::require_root();
    let mut fx = fixture_for(EP_INGRESS_ISOLATED);
    let v = ports(&[(PROTO_UDP, 53, 53)]);
    allow_v4(&mut fx, DIR_INGRESS, PEER, 32, v);
    let first = IpOpts {
        more_fragments: true,
        ..Default::default()
    };
    let later = IpOpts {
        frag_offset: 100,
        ..Default::default()
    };
    let (first, later) = (
        ipv4_with(PEER, POD, dns(), &first),
        ipv4_with(PEER, POD, dns(), &later),
    );
    fx.check(&[
        ("first fragment carries ports", TO, &first, OK),
        ("non-first: port rule no match", TO, &later, SHOT),
    ]);
    let ev = one_event(&mut fx);
    assert_eq!(ev.reason, Reason::Fragment as u8);
    assert_eq!(ev.flags & EVF_FRAGMENT, EVF_FRAGMENT);
    // A rule allowing every UDP port does match it.
    let v = PolicyValue {
        all_ports: PBIT_UDP,
        ..Default::default()
    };
    allow_v4(&mut fx, DIR_INGRESS, PEER, 32, v);
    assert_eq!(
        fx.run(TO, &later),
        OK,
        "non-first fragment, every UDP port allowed"
    );
    // IPv6 fragment header, non-first and first.
    allow_v6(
        &mut fx,
        DIR_INGRESS,
        PEER6,
        128,
        ports(&[(PROTO_UDP, 53, 53)]),
    );
    let fragment = |offset| {
        let opts = IpOpts {
            v6_ext: packet::v6_ext(44, 17, offset),
            ..Default::default()
        };
        ipv6_with(PEER6, POD6, dns(), &opts, 44)
    };
    fx.check(&[
        ("IPv6 non-first fragment", TO, &fragment(10), SHOT),
        ("IPv6 first fragment carries ports", TO, &fragment(0), OK),
    ]);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn truncated_headers_are_dropped_at_every_layer() {
    common::require_root();
    let mut fx = fixture_for(0);
    let full = tcp(PEER, POD, 40000, 80);
    // IHL claims options that are not there, or is below 5.
    let mut ihl_beyond = full[..14 + 20].to_vec();
    ihl_beyond[14] = 0x4f;
    let mut ihl_below_5 = full.clone();
    ihl_below_5[14] = 0x44;
    let u = udp(PEER, POD, 1, 53);
    let v6 = udp6(PEER6, POD6, 1, 53);
    let opts = IpOpts {
        v6_ext: packet::v6_ext(0, 17, 0),
        ..Default::default()
    };
    let ext = ipv6_with(PEER6, POD6, dns(), &opts, 0);
    // (BPF_PROG_TEST_RUN itself refuses frames shorter than Ethernet + IPv4
    // header, so a cut IPv4 header is covered by the IHL cases.)
    fx.check(&[
        ("TCP ports cut", TO, &full[..14 + 20 + 2], SHOT),
        ("TCP fixed header cut", TO, &full[..14 + 20 + 12], SHOT),
        ("IHL beyond packet", TO, &ihl_beyond, SHOT),
        ("IHL < 5", TO, &ihl_below_5, SHOT),
        ("UDP cut", TO, &u[..14 + 20 + 6], SHOT),
        ("UDP after IPv6 cut", TO, &v6[..14 + 40 + 3], SHOT),
        ("IPv6 extension header cut", TO, &ext[..14 + 40 + 4], SHOT),
    ]);
    let evs = fx.events();
    assert!(!evs.is_empty());
    assert!(
        evs.iter().all(|e| e.reason == Reason::Malformed as u8),
        "{evs:?}"
    );
    // Even in audit mode malformed packets stay dropped.
    fx.maps.upsert_endpoint(IF, &endpoint(EP_AUDIT)).unwrap();
    assert_eq!(fx.run(TO, &full[..14 + 20 + 2]), SHOT);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn spoofed_source_is_dropped() {
    common::require_root();
    let mut fx = fixture_for(0);
    assert_eq!(fx.run(FROM, &tcp(OTHER, PEER, 1, 80)), SHOT);
    let ev = one_event(&mut fx);
    assert_eq!(ev.reason, Reason::SpoofedSource as u8);
    assert_eq!(
        Reason::from_u8(ev.reason).unwrap().as_str(),
        "spoofed-source"
    );
    let mld = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);
    fx.check(&[
        // IPv6 too, and the real address passes.
        ("IPv6, other source", FROM, &udp6(PEER6, POD6, 1, 53), SHOT),
        ("IPv6, own source", FROM, &udp6(POD6, PEER6, 1, 53), OK),
        // Neighbour solicitation from the link-local address passes, and so
        // does an MLDv2 report to link-local multicast.
        ("link-local NS", FROM, &icmp6(LL, PEER6, 135), OK),
        ("link-local MLDv2", FROM, &icmp6(LL, mld, 143), OK),
        // But any other ICMPv6 from a link-local source is spoofed.
        ("link-local echo", FROM, &echo(LL, PEER6, 9), SHOT),
    ]);
    // The two drops above, each reported as spoofed.
    let evs = fx.events();
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert!(
        evs.iter().all(|e| e.reason == Reason::SpoofedSource as u8),
        "{evs:?}"
    );
    // And a pod is no router: its router advertisements and redirects are
    // spoofed whatever their source (an advertisement could give its node a
    // route through the pod). (Different destinations: events are
    // rate-limited per flow.)
    for (ty, dst) in [(134, ALL_NODES), (137, PEER6)] {
        assert_eq!(fx.run(FROM, &icmp6(LL, dst, ty)), SHOT, "ICMPv6 type {ty}");
        assert_eq!(one_event(&mut fx).reason, Reason::SpoofedSource as u8);
    }
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn replies_pass_through_conntrack_and_withdrawn_allows_apply_at_once() {
    common::require_root();
    interfaces_2_and_3();
    let mut fx = fixture_for(EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED);
    // Egress to PEER:80 allowed; nothing allowed in.
    allow_v4(&mut fx, DIR_EGRESS, PEER, 32, ports(&[(PROTO_TCP, 80, 80)]));
    fx.check(&[
        ("allowed egress", FROM, &tcp(POD, PEER, 40000, 80), OK),
        ("reply passes", TO, &tcp(PEER, POD, 80, 40000), OK),
        ("not a reply", TO, &tcp(PEER, POD, 80, 40001), SHOT),
        ("other protocol", TO, &udp(PEER, POD, 80, 40000), SHOT),
    ]);
    fx.events();
    // Withdraw the allow: the established flow's next non-reply packet is re-checked.
    fx.maps
        .delete_v4(
            SCOPE_BITS + 32,
            PolicyKeyV4 {
                scope: PolicyScope::new(7, DIR_EGRESS),
                addr: PEER.octets(),
            },
        )
        .unwrap();
    assert_eq!(fx.run(FROM, &tcp(POD, PEER, 40000, 80)), SHOT);
    assert_eq!(one_event(&mut fx).reason, Reason::NoPolicyAllows as u8);
    // Replies of what was already allowed still pass (the peer's answers).
    assert_eq!(fx.run(TO, &tcp(PEER, POD, 80, 40000)), OK);
    // Ingress-created flow: the pod's replies pass though egress allows nothing there.
    let all = every_port();
    allow_v4(&mut fx, DIR_INGRESS, OTHER, 32, all);
    fx.check(&[
        ("allowed ingress", TO, &udp(OTHER, POD, 5000, 53), OK),
        ("the pod's reply", FROM, &udp(POD, OTHER, 53, 5000), OK),
    ]);
    // Conntrack is scoped by interface: another interface has no such state.
    let (r, _) = fx.run_mark(TO, &tcp(PEER, POD, 80, 40000), 2, 0);
    assert_eq!(r, SHOT);
}

/// Create and pin an LRU hash of the conntrack layout before per-family keys
/// (44-byte key of the flow as first seen, 16-byte value) holding `entries`.
fn pin_legacy_conntrack(path: &std::path::Path, entries: &[(FlowKey, CtValue)]) {
    #[repr(C)]
    struct Create {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    #[repr(C)]
    struct Pin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let attr = Create {
        map_type: palisade_common::MapKind::LruHash as u32,
        key_size: 44,
        value_size: 16,
        max_entries: 64,
        map_flags: 0,
    };
    // SAFETY: BPF_MAP_CREATE (0) reads `attr`, of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            &attr as *const Create,
            std::mem::size_of::<Create>(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let pin = Pin {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: BPF_OBJ_PIN (6) reads `pin` and the path it points to.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            6,
            &pin as *const Pin,
            std::mem::size_of::<Pin>(),
        )
    };
    assert_eq!(r, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: our own descriptor, pinned now.
    unsafe { libc::close(fd as i32) };
    let data = aya::maps::MapData::from_pin(path).expect("open the legacy pin");
    let mut m: aya::maps::HashMap<_, FlowKey, CtValue> = aya::maps::Map::from_map_data(data)
        .expect("map")
        .try_into()
        .expect("hash");
    for (k, v) in entries {
        m.insert(k, v, 0).expect("legacy entry");
    }
}

/// An agent finding the conntrack pins of the previous layout copies their
/// entries into the per-family tables before its programs run, and removes
/// them: replies of connections opened before the upgrade still pass.
#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn conntrack_of_the_previous_layout_is_carried_over() {
    common::require_root();
    let legacy = |src: IpAddr, dst: IpAddr, sport, dport| {
        let (family, a, b) = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
                a[..4].copy_from_slice(&s.octets());
                b[..4].copy_from_slice(&d.octets());
                (FAMILY_V4, a, b)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => (FAMILY_V6, s.octets(), d.octets()),
            _ => unreachable!("one family"),
        };
        let key = FlowKey {
            ifindex: IF,
            family,
            proto: if family == FAMILY_V4 {
                PROTO_TCP
            } else {
                PROTO_UDP
            },
            _pad0: 0,
            src: a,
            dst: b,
            sport,
            dport,
        };
        let v = CtValue {
            direction: DIR_EGRESS,
            ..Default::default()
        };
        (key, v)
    };
    let confirmed = [legacy(POD.into(), PEER.into(), 40000, 80)];
    let unanswered = [legacy(POD6.into(), PEER6.into(), 1000, 53)];
    let mut seen = None;
    let mut fx = fixture_prepared(None, |maps| {
        pin_legacy_conntrack(&maps.join("PAL_CONNTRACK"), &confirmed);
        pin_legacy_conntrack(&maps.join("PAL_CT_NEW"), &unanswered);
        seen = Some(maps.to_path_buf());
    });
    let maps_dir = seen.expect("prepared");
    for old in palisade_common::maps::LEGACY_CONNTRACK {
        assert!(!maps_dir.join(old).exists(), "{old} removed");
    }
    // Nothing is allowed in: only replies of tracked flows pass.
    fx.maps
        .upsert_endpoint(IF, &endpoint(EP_INGRESS_ISOLATED))
        .expect("setup");
    fx.check(&[
        ("carried IPv4 reply", TO, &tcp(PEER, POD, 80, 40000), OK),
        ("not its reply", TO, &tcp(PEER, POD, 80, 40001), SHOT),
        ("carried IPv6 reply", TO, &udp6(PEER6, POD6, 53, 1000), OK),
        ("not its reply", TO, &udp6(PEER6, POD6, 54, 1000), SHOT),
    ]);
}

/// Conntrack keeps unanswered flows in a table of their own: a flood of new
/// flows larger than that table evicts the flows nobody answered, never the
/// connections a reply confirmed.
#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn confirmed_connections_survive_a_flood_of_new_flows() {
    common::require_root();
    let mut fx = fixture_for(EP_INGRESS_ISOLATED);
    // Confirmed: opened and answered once. Unanswered: opened only.
    assert_eq!(fx.run(FROM, &tcp(POD, PEER, 30000, 443)), OK);
    assert_eq!(fx.run(TO, &tcp(PEER, POD, 443, 30000)), OK);
    assert_eq!(fx.run(FROM, &tcp(POD, PEER, 30001, 443)), OK);
    for i in 0..2 * MAX_CT_NEW {
        let dst = Ipv4Addr::from(0x0a80_0000u32 + (i >> 16));
        fx.run(FROM, &tcp(POD, dst, 1024 + (i % 60000) as u16, 80));
    }
    assert_eq!(
        fx.run(TO, &tcp(PEER, POD, 443, 30000)),
        OK,
        "the confirmed connection's reply"
    );
    assert_eq!(
        fx.run(TO, &tcp(PEER, POD, 443, 30001)),
        SHOT,
        "the unanswered flow was evicted by the flood"
    );
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn icmp_errors_of_tracked_flows_pass() {
    common::require_root();
    let mut fx = fixture_for(EP_INGRESS_ISOLATED);
    let router = Ipv4Addr::new(10, 255, 0, 9);
    // Fragmentation needed, quoting the pod's TCP from `sport` to PEER:80.
    let frag_needed = |sport| {
        let quoted = packet::ipv4(POD, PEER, &L4::Tcp { sport, dport: 80 }, &IpOpts::default());
        let inner = quoted[..28].to_vec();
        packet::frame(
            router.into(),
            POD.into(),
            &L4::IcmpError {
                ty: 3,
                code: 4,
                inner,
            },
        )
    };
    fx.check(&[
        ("the tracked flow", FROM, &tcp(POD, PEER, 40000, 80), OK),
        ("frag-needed, tracked flow", TO, &frag_needed(40000), OK),
        ("error about an unknown flow", TO, &frag_needed(40001), SHOT),
    ]);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn own_node_always_reaches_the_pod() {
    common::require_root();
    let mut fx = fixture_for(EP_INGRESS_ISOLATED);
    let node = Ipv4Addr::new(10, 255, 0, 1);
    let from_node = tcp(node, POD, 5555, 8080);
    let from_other_node = tcp(Ipv4Addr::new(10, 255, 0, 2), POD, 5555, 8080);
    assert_eq!(
        fx.run(TO, &from_node),
        SHOT,
        "the node before its address is known"
    );
    fx.maps.set_node_addrs(&[node.into()]).unwrap();
    fx.check(&[
        ("the node", TO, &from_node, OK),
        ("another node: an ordinary peer", TO, &from_other_node, SHOT),
    ]);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn audit_mode_passes_and_reports() {
    common::require_root();
    let mut fx = fixture_for(EP_INGRESS_ISOLATED | EP_AUDIT);
    assert_eq!(fx.run(TO, &tcp(PEER, POD, 40000, 80)), OK);
    let ev = one_event(&mut fx);
    assert_eq!(ev.verdict, VERDICT_AUDIT);
    assert_eq!(ev.reason, Reason::NoPolicyAllows as u8);
    assert_eq!(fx.maps.counters(7).unwrap().audit_packets, 1);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn fail_closed_endpoint_denies_what_policy_judges() {
    common::require_root();
    let mut fx = fixture_for(EP_INGRESS_ISOLATED | EP_FAIL_CLOSED);
    let all = every_port();
    allow_v4(&mut fx, DIR_INGRESS, PEER, 32, all);
    assert_eq!(fx.run(TO, &tcp(PEER, POD, 40000, 80)), SHOT);
    assert_eq!(one_event(&mut fx).reason, Reason::FailClosed as u8);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn service_egress_is_decided_after_dnat() {
    common::require_root();
    interfaces_2_and_3();
    let mut fx = fixture_for(EP_EGRESS_ISOLATED);
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&vip.octets());
    fx.maps
        .upsert_service(ServiceKey {
            family: FAMILY_V4,
            proto: PROTO_TCP,
            port: 80,
            addr: a,
        })
        .unwrap();
    let v = ports(&[(PROTO_TCP, 8080, 8080)]);
    allow_v4(&mut fx, DIR_EGRESS, PEER, 32, v);
    // To the ClusterIP: passes with the decision pending.
    let (r, mark) = fx.run_mark(FROM, &tcp(POD, vip, 40000, 80), IF, 0);
    assert_eq!(r, OK);
    assert_eq!(mark & MARK_SVC_PENDING, MARK_SVC_PENDING);
    // Translated to an allowed backend: passes, mark cleared.
    let (r, mark) = fx.run_mark(SVC, &tcp(POD, PEER, 40000, 8080), 2, MARK_SVC_PENDING);
    assert_eq!(r, OK);
    assert_eq!(mark & MARK_SVC_PENDING, 0);
    // Translated to a backend policy does not allow: dropped, reported as the pod's egress.
    let (r, _) = fx.run_mark(SVC, &tcp(POD, OTHER, 40000, 8080), 2, MARK_SVC_PENDING);
    assert_eq!(r, SHOT);
    let ev = one_event(&mut fx);
    assert_eq!(
        (ev.direction, ev.endpoint_id, ev.ifindex),
        (DIR_EGRESS, 7, IF)
    );
    // Same decision when the backend is a local pod (to_pod on its veth).
    let (r, _) = fx.run_mark(TO, &tcp(POD, OTHER, 40000, 8080), 3, MARK_SVC_PENDING);
    assert_eq!(r, SHOT);
    // Unmarked traffic on other interfaces is not ours.
    let (r, _) = fx.run_mark(SVC, &tcp(OTHER, PEER, 1, 2), 2, 0);
    assert_eq!(r, OK);
    let _ = fx.events();

    // Flow events name the backend, never the ClusterIP: a new connection to
    // the Service is marked new and reported once allowed after DNAT.
    fx.maps
        .set_config(Config {
            flags: CFG_FLOW_NEW,
            ..Default::default()
        })
        .unwrap();
    let (r, mark) = fx.run_mark(FROM, &tcp(POD, vip, 40001, 80), IF, 0);
    assert_eq!(r, OK);
    assert_eq!(
        mark & (MARK_SVC_PENDING | MARK_SVC_NEW),
        MARK_SVC_PENDING | MARK_SVC_NEW
    );
    assert!(fx.events().is_empty(), "no event for the deferred decision");
    let (r, mark) = fx.run_mark(SVC, &tcp(POD, PEER, 40001, 8080), 2, mark);
    assert_eq!(r, OK);
    assert_eq!(mark & (MARK_SVC_PENDING | MARK_SVC_NEW), 0);
    let ev = one_event(&mut fx);
    assert_eq!(ev.verdict, VERDICT_ALLOWED);
    assert_eq!(&ev.dst[..4], &PEER.octets(), "the backend");
    assert_eq!(AllowReason::from_u8(ev.reason), Some(AllowReason::Policy));
    // The same connection's next packet is no new flow: no event.
    let (_, mark) = fx.run_mark(FROM, &tcp(POD, vip, 40001, 80), IF, 0);
    assert_eq!(mark & MARK_SVC_NEW, 0);
    let (r, _) = fx.run_mark(SVC, &tcp(POD, PEER, 40001, 8080), 2, mark);
    assert_eq!(r, OK);
    assert!(fx.events().is_empty());
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn events_are_rate_limited_per_flow() {
    common::require_root();
    let mut fx = fixture_for(EP_INGRESS_ISOLATED);
    for _ in 0..50 {
        assert_eq!(fx.run(TO, &tcp(PEER, POD, 40000, 80)), SHOT);
    }
    assert_eq!(fx.run(TO, &tcp(PEER, POD, 40001, 80)), SHOT);
    let evs = fx.events();
    assert_eq!(evs.len(), 2, "one event per flow within the interval");
    assert_eq!(
        fx.maps.counters(7).unwrap().denied_packets,
        51,
        "every drop is counted"
    );
    // With a tiny interval the next event carries the suppressed count.
    fx.maps
        .set_config(Config {
            event_interval_ns: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(fx.run(TO, &tcp(PEER, POD, 40000, 80)), SHOT);
    assert_eq!(one_event(&mut fx).suppressed, 49);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn endpoint_budget_bounds_a_flood_of_new_flows() {
    common::require_root();
    // The budget is per CPU: keep every run on one CPU.
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
    let mut fx = fixture_for(EP_INGRESS_ISOLATED);
    fx.maps
        .set_config(Config {
            endpoint_events_per_sec: 3,
            ..Default::default()
        })
        .unwrap();
    // Ten new flows (a new source port each): the per-flow limit lets all of
    // them through, the endpoint's budget only three.
    for sport in 40000..40010 {
        assert_eq!(fx.run(TO, &tcp(PEER, POD, sport, 80)), SHOT);
    }
    let evs = fx.events();
    assert_eq!(evs.len(), 3, "the budget caps events per endpoint");
    assert!(evs.iter().all(|e| e.throttled == 0));
    assert_eq!(fx.maps.counters(7).unwrap().denied_packets, 10);
    // The next window's first event reports what the last one dropped. (Waiting
    // out the one-second window; nothing here is timed.)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(fx.run(TO, &tcp(PEER, POD, 41000, 80)), SHOT);
    assert_eq!(one_event(&mut fx).throttled, 7);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn full_policy_map_refuses_instead_of_truncating() {
    common::require_root();
    let mut fx = fixture_with(Some(4));
    let v = ports(&[(PROTO_TCP, 80, 80)]);
    for i in 0..4u8 {
        allow_v4(&mut fx, DIR_INGRESS, Ipv4Addr::new(10, 0, i, 0), 24, v);
    }
    let key = PolicyKeyV4 {
        scope: PolicyScope::new(7, DIR_INGRESS),
        addr: [10, 0, 9, 0],
    };
    let err = fx.maps.upsert_v4(SCOPE_BITS + 24, key, &v).unwrap_err();
    assert!(err.to_string().contains("PAL_POLICY_V4"), "{err}");
}
