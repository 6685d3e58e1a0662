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

const POD: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 10);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 20);
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 1, 0, 0, 0, 0, 0x10);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 2, 0, 0, 0, 0, 0x20);

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
    common::require_root();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/palisade-test/dp-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let guard = PinDir(dir.clone());
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
            _pad0: 0,
            first: *first,
            last: *last,
            _pad1: 0,
        };
    }
    v.count = list.len() as u8;
    v
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

fn one_event(fx: &mut Fx) -> Event {
    let evs = fx.events();
    assert_eq!(evs.len(), 1, "expected exactly one event, got {evs:?}");
    evs[0]
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn non_ip_passes_even_without_endpoint() {
    common::require_root();
    let mut fx = fixture();
    assert_eq!(fx.run("to_pod", &packet::arp()), OK);
    assert_eq!(fx.run("from_pod", &packet::arp()), OK);
    assert!(fx.events().is_empty());
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn unknown_endpoint_fails_closed_and_reports() {
    common::require_root();
    let mut fx = fixture();
    assert_eq!(fx.run("to_pod", &tcp(PEER, POD, 40000, 80)), SHOT);
    let ev = one_event(&mut fx);
    assert_eq!(ev.reason, Reason::UnknownEndpoint as u8);
    assert_eq!(ev.verdict, VERDICT_DENIED);
    assert_eq!(ev.ifindex, IF);
    assert_eq!(ev.direction, DIR_INGRESS);
    assert_eq!(fx.run("from_pod", &tcp(POD, PEER, 40000, 80)), SHOT);
    assert_eq!(one_event(&mut fx).direction, DIR_EGRESS);
    // Neighbour discovery is how a bridge-style node learns a new IPv6 pod: the
    // node's solicitation reaches it, its advertisement (from its global
    // address) gets out. A router advertisement of its own does not.
    let ns = packet::frame(PEER6.into(), POD6.into(), &L4::Icmp6Type(135));
    assert_eq!(fx.run("to_pod", &ns), OK);
    let na = packet::frame(POD6.into(), PEER6.into(), &L4::Icmp6Type(136));
    assert_eq!(fx.run("from_pod", &na), OK);
    let ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 5);
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let ra = packet::frame(ll.into(), all_nodes.into(), &L4::Icmp6Type(134));
    assert_eq!(fx.run("from_pod", &ra), SHOT);
    assert_eq!(one_event(&mut fx).reason, Reason::UnknownEndpoint as u8);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn not_isolated_allows_everything() {
    common::require_root();
    let mut fx = fixture();
    fx.maps.upsert_endpoint(IF, &endpoint(0)).unwrap();
    assert_eq!(fx.run("to_pod", &tcp(PEER, POD, 40000, 80)), OK);
    assert_eq!(fx.run("from_pod", &udp(POD, OTHER, 5353, 53)), OK);
    let c = fx.maps.counters(7).unwrap();
    assert_eq!(c.allowed_packets, 2);
    assert_eq!(c.denied_packets, 0);
    assert!(fx.events().is_empty());
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn prefix_port_range_and_protocol_decide() {
    common::require_root();
    let mut fx = fixture();
    fx.maps
        .upsert_endpoint(IF, &endpoint(EP_INGRESS_ISOLATED))
        .unwrap();
    allow_v4(
        &mut fx,
        DIR_INGRESS,
        Ipv4Addr::new(10, 100, 2, 0),
        24,
        ports(&[(PROTO_TCP, 80, 80), (PROTO_UDP, 8000, 8005)]),
    );
    assert_eq!(
        fx.run("to_pod", &tcp(PEER, POD, 40000, 80)),
        OK,
        "allowed port"
    );
    assert_eq!(
        fx.run("to_pod", &udp(PEER, POD, 40000, 8000)),
        OK,
        "range start"
    );
    assert_eq!(
        fx.run("to_pod", &udp(PEER, POD, 40000, 8005)),
        OK,
        "range end"
    );
    assert!(fx.events().is_empty());
    assert_eq!(
        fx.run("to_pod", &udp(PEER, POD, 40000, 8006)),
        SHOT,
        "past range end"
    );
    assert_eq!(
        fx.run("to_pod", &tcp(PEER, POD, 40000, 81)),
        SHOT,
        "other port"
    );
    assert_eq!(
        fx.run("to_pod", &udp(PEER, POD, 40001, 80)),
        SHOT,
        "other protocol"
    );
    assert_eq!(
        fx.run("to_pod", &tcp(OTHER, POD, 40000, 80)),
        SHOT,
        "other prefix"
    );
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
    assert_eq!(fx.run("from_pod", &tcp(POD, OTHER, 40000, 9999)), OK);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn longest_prefix_wins_for_nested_blocks() {
    common::require_root();
    let mut fx = fixture();
    fx.maps
        .upsert_endpoint(IF, &endpoint(EP_EGRESS_ISOLATED))
        .unwrap();
    let all = PolicyValue {
        flags: PV_ALL,
        ..Default::default()
    };
    // /8 allows all, the /24 hole (an except) allows only TCP 443, a /32 inside it all again.
    allow_v4(&mut fx, DIR_EGRESS, Ipv4Addr::new(10, 0, 0, 0), 8, all);
    allow_v4(
        &mut fx,
        DIR_EGRESS,
        Ipv4Addr::new(10, 100, 2, 0),
        24,
        ports(&[(PROTO_TCP, 443, 443)]),
    );
    allow_v4(&mut fx, DIR_EGRESS, PEER, 32, all);
    assert_eq!(
        fx.run("from_pod", &udp(POD, Ipv4Addr::new(10, 1, 2, 3), 1000, 53)),
        OK
    );
    assert_eq!(
        fx.run(
            "from_pod",
            &tcp(POD, Ipv4Addr::new(10, 100, 2, 9), 1000, 80)
        ),
        SHOT
    );
    assert_eq!(
        fx.run(
            "from_pod",
            &tcp(POD, Ipv4Addr::new(10, 100, 2, 9), 1000, 443)
        ),
        OK
    );
    assert_eq!(fx.run("from_pod", &tcp(POD, PEER, 1000, 80)), OK);
    let icmp = packet::frame(
        POD.into(),
        Ipv4Addr::new(10, 100, 2, 9).into(),
        &L4::IcmpEchoRequest { id: 1 },
    );
    assert_eq!(
        fx.run("from_pod", &icmp),
        SHOT,
        "ICMP needs a rule without ports"
    );
    let icmp = packet::frame(
        POD.into(),
        Ipv4Addr::new(10, 9, 9, 9).into(),
        &L4::IcmpEchoRequest { id: 1 },
    );
    assert_eq!(fx.run("from_pod", &icmp), OK);
}

/// `PBIT_OTHER` (a ClusterNetworkPolicy can deny TCP/80 and allow the rest):
/// protocols without ports pass on it alone, TCP/UDP/SCTP only on their own
/// bits or ranges.
#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn the_other_protocols_bit_allows_protocols_without_ports() {
    common::require_root();
    let mut fx = fixture();
    fx.maps
        .upsert_endpoint(IF, &endpoint(EP_EGRESS_ISOLATED))
        .unwrap();
    // Everything but TCP/80: UDP and SCTP on every port, TCP except 80, and
    // every protocol without ports.
    let mut v = ports(&[(PROTO_TCP, 1, 79), (PROTO_TCP, 81, 65535)]);
    v.all_ports = PBIT_UDP | PBIT_SCTP | PBIT_OTHER;
    allow_v4(&mut fx, DIR_EGRESS, PEER, 32, v);
    let icmp = packet::frame(POD.into(), PEER.into(), &L4::IcmpEchoRequest { id: 1 });
    assert_eq!(fx.run("from_pod", &icmp), OK, "ICMP on PBIT_OTHER");
    assert_eq!(fx.run("from_pod", &tcp(POD, PEER, 1000, 80)), SHOT);
    assert_eq!(fx.run("from_pod", &tcp(POD, PEER, 1000, 81)), OK);
    assert_eq!(fx.run("from_pod", &udp(POD, PEER, 1000, 80)), OK);
    // The same value without PBIT_OTHER: ICMP is denied, TCP unchanged.
    let mut v = ports(&[(PROTO_TCP, 1, 79), (PROTO_TCP, 81, 65535)]);
    v.all_ports = PBIT_UDP | PBIT_SCTP;
    allow_v4(&mut fx, DIR_EGRESS, PEER, 32, v);
    assert_eq!(fx.run("from_pod", &icmp), SHOT, "no PBIT_OTHER, no ICMP");
    assert_eq!(fx.run("from_pod", &tcp(POD, PEER, 1000, 81)), OK);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn ipv4_options_use_the_real_header_length() {
    common::require_root();
    let mut fx = fixture();
    fx.maps
        .upsert_endpoint(IF, &endpoint(EP_INGRESS_ISOLATED))
        .unwrap();
    allow_v4(
        &mut fx,
        DIR_INGRESS,
        PEER,
        32,
        ports(&[(PROTO_TCP, 80, 80)]),
    );
    let opts = IpOpts {
        v4_options: vec![1, 1, 1, 1, 1, 1, 1, 0],
        ..Default::default()
    };
    let f = packet::ether(&packet::ipv4(
        PEER,
        POD,
        &L4::Tcp {
            sport: 40000,
            dport: 80,
        },
        &opts,
    ));
    assert_eq!(fx.run("to_pod", &f), OK);
    let f = packet::ether(&packet::ipv4(
        PEER,
        POD,
        &L4::Tcp {
            sport: 40000,
            dport: 81,
        },
        &opts,
    ));
    assert_eq!(fx.run("to_pod", &f), SHOT);
    assert_eq!(one_event(&mut fx).dport, 81);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn ipv6_extension_headers_are_walked() {
    common::require_root();
    let mut fx = fixture();
    fx.maps
        .upsert_endpoint(IF, &endpoint(EP_INGRESS_ISOLATED))
        .unwrap();
    let key = PolicyKeyV6 {
        scope: PolicyScope::new(7, DIR_INGRESS),
        addr: PEER6.octets(),
    };
    fx.maps
        .upsert_v6(SCOPE_BITS + 128, key, &ports(&[(PROTO_UDP, 53, 53)]))
        .unwrap();
    let mut ext = packet::v6_ext(0, 60, 0);
    ext.extend(packet::v6_ext(60, 43, 0));
    ext.extend(packet::v6_ext(43, 0, 0));
    let opts = IpOpts {
        v6_ext: ext,
        ..Default::default()
    };
    let mk = |dport| {
        packet::ether(&packet::ipv6(
            PEER6,
            POD6,
            &L4::Udp { sport: 999, dport },
            &opts,
            Some(0),
        ))
    };
    assert_eq!(fx.run("to_pod", &mk(53)), OK);
    assert_eq!(fx.run("to_pod", &mk(54)), SHOT);
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
    let f = packet::ether(&packet::ipv6(
        PEER6,
        POD6,
        &L4::Udp {
            sport: 999,
            dport: 53,
        },
        &opts,
        Some(60),
    ));
    assert_eq!(fx.run("to_pod", &f), SHOT);
    assert_eq!(one_event(&mut fx).reason, Reason::Malformed as u8);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn fragments_match_only_all_port_rules() {
    common::require_root();
    let mut fx = fixture();
    fx.maps
        .upsert_endpoint(IF, &endpoint(EP_INGRESS_ISOLATED))
        .unwrap();
    allow_v4(
        &mut fx,
        DIR_INGRESS,
        PEER,
        32,
        ports(&[(PROTO_UDP, 53, 53)]),
    );
    let first = IpOpts {
        more_fragments: true,
        ..Default::default()
    };
    let later = IpOpts {
        frag_offset: 100,
        ..Default::default()
    };
    let f = packet::ether(&packet::ipv4(
        PEER,
        POD,
        &L4::Udp {
            sport: 1,
            dport: 53,
        },
        &first,
    ));
    assert_eq!(fx.run("to_pod", &f), OK, "first fragment carries ports");
    let f = packet::ether(&packet::ipv4(
        PEER,
        POD,
        &L4::Udp {
            sport: 1,
            dport: 53,
        },
        &later,
    ));
    assert_eq!(
        fx.run("to_pod", &f),
        SHOT,
        "non-first fragment: port rule does not match"
    );
    let ev = one_event(&mut fx);
    assert_eq!(ev.reason, Reason::Fragment as u8);
    assert_eq!(ev.flags & EVF_FRAGMENT, EVF_FRAGMENT);
    // A rule allowing every UDP port does match it.
    let v = PolicyValue {
        all_ports: PBIT_UDP,
        ..Default::default()
    };
    allow_v4(&mut fx, DIR_INGRESS, PEER, 32, v);
    assert_eq!(fx.run("to_pod", &f), OK);
    // IPv6 fragment header, non-first.
    let key = PolicyKeyV6 {
        scope: PolicyScope::new(7, DIR_INGRESS),
        addr: PEER6.octets(),
    };
    fx.maps
        .upsert_v6(SCOPE_BITS + 128, key, &ports(&[(PROTO_UDP, 53, 53)]))
        .unwrap();
    let opts = IpOpts {
        v6_ext: packet::v6_ext(44, 17, 10),
        ..Default::default()
    };
    let f = packet::ether(&packet::ipv6(
        PEER6,
        POD6,
        &L4::Udp {
            sport: 1,
            dport: 53,
        },
        &opts,
        Some(44),
    ));
    assert_eq!(fx.run("to_pod", &f), SHOT);
    let opts = IpOpts {
        v6_ext: packet::v6_ext(44, 17, 0),
        ..Default::default()
    };
    let f = packet::ether(&packet::ipv6(
        PEER6,
        POD6,
        &L4::Udp {
            sport: 1,
            dport: 53,
        },
        &opts,
        Some(44),
    ));
    assert_eq!(
        fx.run("to_pod", &f),
        OK,
        "IPv6 first fragment carries ports"
    );
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn truncated_headers_are_dropped_at_every_layer() {
    common::require_root();
    let mut fx = fixture();
    fx.maps.upsert_endpoint(IF, &endpoint(0)).unwrap();
    let full = tcp(PEER, POD, 40000, 80);
    // TCP ports cut, TCP fixed header cut. (BPF_PROG_TEST_RUN itself refuses frames
    // shorter than Ethernet + IPv4 header, so a cut IPv4 header is covered by the
    // IHL cases below.)
    for len in [14 + 20 + 2, 14 + 20 + 12] {
        assert_eq!(fx.run("to_pod", &full[..len]), SHOT, "length {len}");
    }
    // IHL claims options that are not there.
    let mut f = full[..14 + 20].to_vec();
    f[14] = 0x4f;
    assert_eq!(fx.run("to_pod", &f), SHOT, "IHL beyond packet");
    // IHL below 5.
    let mut f = full.clone();
    f[14] = 0x44;
    assert_eq!(fx.run("to_pod", &f), SHOT, "IHL < 5");
    // UDP cut, IPv6 cut, IPv6 extension header cut.
    let u = udp(PEER, POD, 1, 53);
    assert_eq!(fx.run("to_pod", &u[..14 + 20 + 6]), SHOT);
    let v6 = packet::frame(
        PEER6.into(),
        POD6.into(),
        &L4::Udp {
            sport: 1,
            dport: 53,
        },
    );
    assert_eq!(fx.run("to_pod", &v6[..14 + 40 + 3]), SHOT);
    let opts = IpOpts {
        v6_ext: packet::v6_ext(0, 17, 0),
        ..Default::default()
    };
    let f = packet::ether(&packet::ipv6(
        PEER6,
        POD6,
        &L4::Udp {
            sport: 1,
            dport: 53,
        },
        &opts,
        Some(0),
    ));
    assert_eq!(fx.run("to_pod", &f[..14 + 40 + 4]), SHOT);
    let evs = fx.events();
    assert!(!evs.is_empty());
    assert!(
        evs.iter().all(|e| e.reason == Reason::Malformed as u8),
        "{evs:?}"
    );
    // Even in audit mode malformed packets stay dropped.
    fx.maps.upsert_endpoint(IF, &endpoint(EP_AUDIT)).unwrap();
    assert_eq!(fx.run("to_pod", &full[..14 + 20 + 2]), SHOT);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn spoofed_source_is_dropped() {
    common::require_root();
    let mut fx = fixture();
    fx.maps.upsert_endpoint(IF, &endpoint(0)).unwrap();
    assert_eq!(fx.run("from_pod", &tcp(OTHER, PEER, 1, 80)), SHOT);
    let ev = one_event(&mut fx);
    assert_eq!(ev.reason, Reason::SpoofedSource as u8);
    assert_eq!(
        Reason::from_u8(ev.reason).unwrap().as_str(),
        "spoofed-source"
    );
    // IPv6 too, and the real address passes.
    let f = packet::frame(
        PEER6.into(),
        POD6.into(),
        &L4::Udp {
            sport: 1,
            dport: 53,
        },
    );
    assert_eq!(fx.run("from_pod", &f), SHOT);
    let f = packet::frame(
        POD6.into(),
        PEER6.into(),
        &L4::Udp {
            sport: 1,
            dport: 53,
        },
    );
    assert_eq!(fx.run("from_pod", &f), OK);
    // Neighbour solicitation from the link-local address passes.
    let ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 5);
    let ns = packet::frame(ll.into(), PEER6.into(), &L4::Icmp6Type(135));
    assert_eq!(fx.run("from_pod", &ns), OK);
    // So does an MLDv2 report to link-local multicast.
    let mld = packet::frame(
        ll.into(),
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16).into(),
        &L4::Icmp6Type(143),
    );
    assert_eq!(fx.run("from_pod", &mld), OK);
    // But any other ICMPv6 from a link-local source is spoofed.
    let echo = packet::frame(ll.into(), PEER6.into(), &L4::IcmpEchoRequest { id: 9 });
    assert_eq!(fx.run("from_pod", &echo), SHOT);
    // And a pod is no router: its router advertisements and redirects are
    // spoofed whatever their source (an advertisement could give its node a
    // route through the pod).
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let _ = fx.events();
    // (Different destinations: events are rate-limited per flow.)
    for (ty, dst) in [(134, all_nodes), (137, PEER6)] {
        let f = packet::frame(ll.into(), dst.into(), &L4::Icmp6Type(ty));
        assert_eq!(fx.run("from_pod", &f), SHOT, "ICMPv6 type {ty}");
        assert_eq!(one_event(&mut fx).reason, Reason::SpoofedSource as u8);
    }
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn replies_pass_through_conntrack_and_withdrawn_allows_apply_at_once() {
    common::require_root();
    interfaces_2_and_3();
    let mut fx = fixture();
    fx.maps
        .upsert_endpoint(IF, &endpoint(EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED))
        .unwrap();
    // Egress to PEER:80 allowed; nothing allowed in.
    allow_v4(&mut fx, DIR_EGRESS, PEER, 32, ports(&[(PROTO_TCP, 80, 80)]));
    assert_eq!(fx.run("from_pod", &tcp(POD, PEER, 40000, 80)), OK);
    assert_eq!(
        fx.run("to_pod", &tcp(PEER, POD, 80, 40000)),
        OK,
        "reply passes"
    );
    assert_eq!(
        fx.run("to_pod", &tcp(PEER, POD, 80, 40001)),
        SHOT,
        "not a reply"
    );
    assert_eq!(
        fx.run("to_pod", &udp(PEER, POD, 80, 40000)),
        SHOT,
        "other protocol"
    );
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
    assert_eq!(fx.run("from_pod", &tcp(POD, PEER, 40000, 80)), SHOT);
    assert_eq!(one_event(&mut fx).reason, Reason::NoPolicyAllows as u8);
    // Replies of what was already allowed still pass (the peer's answers).
    assert_eq!(fx.run("to_pod", &tcp(PEER, POD, 80, 40000)), OK);
    // Ingress-created flow: the pod's replies pass though egress allows nothing there.
    let all = PolicyValue {
        flags: PV_ALL,
        ..Default::default()
    };
    allow_v4(&mut fx, DIR_INGRESS, OTHER, 32, all);
    assert_eq!(fx.run("to_pod", &udp(OTHER, POD, 5000, 53)), OK);
    assert_eq!(fx.run("from_pod", &udp(POD, OTHER, 53, 5000)), OK);
    // Conntrack is scoped by interface: another interface has no such state.
    let (r, _) = fx.run_mark("to_pod", &tcp(PEER, POD, 80, 40000), 2, 0);
    assert_eq!(r, SHOT);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn icmp_errors_of_tracked_flows_pass() {
    common::require_root();
    let mut fx = fixture();
    fx.maps
        .upsert_endpoint(IF, &endpoint(EP_INGRESS_ISOLATED))
        .unwrap();
    assert_eq!(fx.run("from_pod", &tcp(POD, PEER, 40000, 80)), OK);
    let router = Ipv4Addr::new(10, 255, 0, 9);
    let quoted = packet::ipv4(
        POD,
        PEER,
        &L4::Tcp {
            sport: 40000,
            dport: 80,
        },
        &IpOpts::default(),
    );
    let err = packet::frame(
        router.into(),
        POD.into(),
        &L4::IcmpError {
            ty: 3,
            code: 4,
            inner: quoted[..28].to_vec(),
        },
    );
    assert_eq!(fx.run("to_pod", &err), OK, "frag-needed for a tracked flow");
    let quoted = packet::ipv4(
        POD,
        PEER,
        &L4::Tcp {
            sport: 40001,
            dport: 80,
        },
        &IpOpts::default(),
    );
    let err = packet::frame(
        router.into(),
        POD.into(),
        &L4::IcmpError {
            ty: 3,
            code: 4,
            inner: quoted[..28].to_vec(),
        },
    );
    assert_eq!(fx.run("to_pod", &err), SHOT, "error about an unknown flow");
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn own_node_always_reaches_the_pod() {
    common::require_root();
    let mut fx = fixture();
    fx.maps
        .upsert_endpoint(IF, &endpoint(EP_INGRESS_ISOLATED))
        .unwrap();
    let node: IpAddr = Ipv4Addr::new(10, 255, 0, 1).into();
    assert_eq!(
        fx.run(
            "to_pod",
            &tcp(Ipv4Addr::new(10, 255, 0, 1), POD, 5555, 8080)
        ),
        SHOT
    );
    fx.maps.set_node_addrs(&[node]).unwrap();
    assert_eq!(
        fx.run(
            "to_pod",
            &tcp(Ipv4Addr::new(10, 255, 0, 1), POD, 5555, 8080)
        ),
        OK
    );
    assert_eq!(
        fx.run(
            "to_pod",
            &tcp(Ipv4Addr::new(10, 255, 0, 2), POD, 5555, 8080)
        ),
        SHOT,
        "another node is an ordinary peer"
    );
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn audit_mode_passes_and_reports() {
    common::require_root();
    let mut fx = fixture();
    fx.maps
        .upsert_endpoint(IF, &endpoint(EP_INGRESS_ISOLATED | EP_AUDIT))
        .unwrap();
    assert_eq!(fx.run("to_pod", &tcp(PEER, POD, 40000, 80)), OK);
    let ev = one_event(&mut fx);
    assert_eq!(ev.verdict, VERDICT_AUDIT);
    assert_eq!(ev.reason, Reason::NoPolicyAllows as u8);
    assert_eq!(fx.maps.counters(7).unwrap().audit_packets, 1);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn fail_closed_endpoint_denies_what_policy_judges() {
    common::require_root();
    let mut fx = fixture();
    fx.maps
        .upsert_endpoint(IF, &endpoint(EP_INGRESS_ISOLATED | EP_FAIL_CLOSED))
        .unwrap();
    let all = PolicyValue {
        flags: PV_ALL,
        ..Default::default()
    };
    allow_v4(&mut fx, DIR_INGRESS, PEER, 32, all);
    assert_eq!(fx.run("to_pod", &tcp(PEER, POD, 40000, 80)), SHOT);
    assert_eq!(one_event(&mut fx).reason, Reason::FailClosed as u8);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn service_egress_is_decided_after_dnat() {
    common::require_root();
    interfaces_2_and_3();
    let mut fx = fixture();
    fx.maps
        .upsert_endpoint(IF, &endpoint(EP_EGRESS_ISOLATED))
        .unwrap();
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
    allow_v4(
        &mut fx,
        DIR_EGRESS,
        PEER,
        32,
        ports(&[(PROTO_TCP, 8080, 8080)]),
    );
    // To the ClusterIP: passes with the decision pending.
    let (r, mark) = fx.run_mark("from_pod", &tcp(POD, vip, 40000, 80), IF, 0);
    assert_eq!(r, OK);
    assert_eq!(mark & MARK_SVC_PENDING, MARK_SVC_PENDING);
    // Translated to an allowed backend: passes, mark cleared.
    let (r, mark) = fx.run_mark(
        "svc_egress",
        &tcp(POD, PEER, 40000, 8080),
        2,
        MARK_SVC_PENDING,
    );
    assert_eq!(r, OK);
    assert_eq!(mark & MARK_SVC_PENDING, 0);
    // Translated to a backend policy does not allow: dropped, reported as the pod's egress.
    let (r, _) = fx.run_mark(
        "svc_egress",
        &tcp(POD, OTHER, 40000, 8080),
        2,
        MARK_SVC_PENDING,
    );
    assert_eq!(r, SHOT);
    let ev = one_event(&mut fx);
    assert_eq!(
        (ev.direction, ev.endpoint_id, ev.ifindex),
        (DIR_EGRESS, 7, IF)
    );
    // Same decision when the backend is a local pod (to_pod on its veth).
    let (r, _) = fx.run_mark("to_pod", &tcp(POD, OTHER, 40000, 8080), 3, MARK_SVC_PENDING);
    assert_eq!(r, SHOT);
    // Unmarked traffic on other interfaces is not ours.
    let (r, _) = fx.run_mark("svc_egress", &tcp(OTHER, PEER, 1, 2), 2, 0);
    assert_eq!(r, OK);
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn events_are_rate_limited_per_flow() {
    common::require_root();
    let mut fx = fixture();
    fx.maps
        .upsert_endpoint(IF, &endpoint(EP_INGRESS_ISOLATED))
        .unwrap();
    for _ in 0..50 {
        assert_eq!(fx.run("to_pod", &tcp(PEER, POD, 40000, 80)), SHOT);
    }
    assert_eq!(fx.run("to_pod", &tcp(PEER, POD, 40001, 80)), SHOT);
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
    assert_eq!(fx.run("to_pod", &tcp(PEER, POD, 40000, 80)), SHOT);
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
    let mut fx = fixture();
    fx.maps
        .upsert_endpoint(IF, &endpoint(EP_INGRESS_ISOLATED))
        .unwrap();
    fx.maps
        .set_config(Config {
            endpoint_events_per_sec: 3,
            ..Default::default()
        })
        .unwrap();
    // Ten new flows (a new source port each): the per-flow limit lets all of
    // them through, the endpoint's budget only three.
    for sport in 40000..40010 {
        assert_eq!(fx.run("to_pod", &tcp(PEER, POD, sport, 80)), SHOT);
    }
    let evs = fx.events();
    assert_eq!(evs.len(), 3, "the budget caps events per endpoint");
    assert!(evs.iter().all(|e| e.throttled == 0));
    assert_eq!(fx.maps.counters(7).unwrap().denied_packets, 10);
    // The next window's first event reports what the last one dropped. (Waiting
    // out the one-second window; nothing here is timed.)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(fx.run("to_pod", &tcp(PEER, POD, 41000, 80)), SHOT);
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
