//! Conntrack in the real programs (BPF_PROG_TEST_RUN): replies and withdrawn
//! allows, entries of the previous layout carried over, a flood of new flows,
//! ICMP errors of tracked flows. Needs root and bpffs (see `datapath.rs`).
use std::net::{IpAddr, Ipv4Addr};

use palisade_agent::packet::{self, IpOpts, L4};
use palisade_common::*;

mod common;
#[allow(dead_code, reason = "each test file uses part of the fixture")]
mod dp;

use dp::*;

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

/// A pod whose flows are all answered (a cooperating server) moves them into
/// the confirmed table within its budget only (`CT_CONFIRM_PER_SEC`); the
/// rest stay unanswered, their replies passing. So twice the confirmed
/// table's size of answered flows does not evict an established connection
/// (without the budget it does: `cargo xtask bench conntrack`).
#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn confirmed_connections_survive_a_flood_of_answered_flows() {
    common::require_root();
    let mut fx = fixture_for(EP_INGRESS_ISOLATED);
    assert_eq!(fx.run(FROM, &tcp(POD, PEER, 30000, 443)), OK);
    assert_eq!(fx.run(TO, &tcp(PEER, POD, 443, 30000)), OK);
    let mut dropped = 0u32;
    for i in 0..2 * MAX_CONNTRACK {
        let dst = Ipv4Addr::from(0x0a80_0000u32 + (i >> 16));
        let sport = 1024 + (i % 60000) as u16;
        fx.run(FROM, &tcp(POD, dst, sport, 80));
        dropped += u32::from(fx.run(TO, &tcp(dst, POD, 80, sport)) != OK);
    }
    assert_eq!(dropped, 0, "replies of the flood's own flows dropped");
    assert_eq!(
        fx.run(TO, &tcp(PEER, POD, 443, 30000)),
        OK,
        "the established connection's reply after the flood"
    );
}

/// `--conntrack-confirms-per-second` reaches the programs: at 1 a second (a
/// burst of 4), of six answered connections four are confirmed and two stay
/// unanswered, and the replies of all six pass.
#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn the_confirmation_budget_comes_from_the_config() {
    common::require_root();
    // The budget is per CPU.
    on_one_cpu();
    let mut fx = fixture_for(EP_INGRESS_ISOLATED);
    fx.maps
        .set_config(Config {
            ct_confirm_per_sec: 1,
            ..Default::default()
        })
        .expect("config");
    for i in 0..6 {
        assert_eq!(fx.run(FROM, &tcp(POD, PEER, 31000 + i, 443)), OK);
        assert_eq!(fx.run(TO, &tcp(PEER, POD, 443, 31000 + i)), OK, "reply {i}");
    }
    for i in 0..6 {
        assert_eq!(
            fx.run(TO, &tcp(PEER, POD, 443, 31000 + i)),
            OK,
            "second reply {i}"
        );
    }
    let count = |name: &str| {
        let map = palisade_agent::datapath::open_pinned_map(&fx.dp.pin_dir, name).expect(name);
        let t: aya::maps::HashMap<_, CtKeyV4, CtValue> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).expect(name);
        t.keys().count()
    };
    assert_eq!(count(maps::CONNTRACK_V4), 4, "confirmed within the burst");
    assert_eq!(count(maps::CT_NEW_V4), 2, "left unanswered beyond it");
    // Refused: the first and the second reply of each of the two.
    let quota: aya::maps::PerCpuArray<_, CtQuota> =
        aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(
            palisade_agent::datapath::open_pinned_map(&fx.dp.pin_dir, maps::CT_QUOTA)
                .expect("quota"),
        ))
        .expect("quota");
    let refused: u64 = quota
        .get(&endpoint(EP_INGRESS_ISOLATED).id, 0)
        .expect("slot")
        .iter()
        .map(|q| q.refused)
        .sum();
    assert_eq!(refused, 4, "refused confirmations counted");
}
