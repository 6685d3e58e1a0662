//! The real eBPF object in the real kernel, driven with crafted packets through
//! BPF_PROG_TEST_RUN: endpoints, policy lookup (host hash, trie, port ranges,
//! tiers), anti-spoofing, the node's own traffic, audit and fail-closed
//! endpoints, Service egress after DNAT, events and map capacity. Header
//! parsing is in `parse.rs`, conntrack in `conntrack.rs`, the fixture in
//! `dp/`. Needs root and bpffs: every test is `#[ignore]`d for plain `cargo
//! test`, and `cargo xtask test` and `cargo xtask vm-test` run them.
use std::net::{Ipv4Addr, Ipv6Addr};

use palisade_agent::packet::{self, IpOpts, L4};
use palisade_common::*;

mod common;
#[allow(dead_code, reason = "each test file uses part of the fixture")]
mod dp;

use dp::*;

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
    on_one_cpu();
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
