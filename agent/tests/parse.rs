//! Header parsing in the real programs (BPF_PROG_TEST_RUN): IPv4 options,
//! IPv6 extension headers, fragments, and headers cut short at every layer.
//! Needs root and bpffs (see `datapath.rs`).

use palisade_agent::packet::{self, IpOpts, L4};
use palisade_common::*;

mod common;
#[allow(dead_code, reason = "each test file uses part of the fixture")]
mod dp;

use dp::*;

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
