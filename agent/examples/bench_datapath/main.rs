//! Datapath benchmark: ns/packet of the real TC programs through BPF_PROG_TEST_RUN
//! with a large repeat count, against an empty program (the floor) measured in the
//! same run. Policy sizes of 10 to 100,000 peer prefixes, IPv4 and IPv6.
//!
//! Before the timings, each program's instruction and stack budget from the
//! kernel's program info ([`budget`]).
//!
//! `cargo xtask bench datapath [--quick]` runs it (root, bpffs). Prints tables and
//! writes `results/bench-datapath.json` and `.svg`.
mod budget;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::{Context, Result};
use palisade_agent::{
    datapath::Datapath,
    maps::Maps,
    packet::{self, L4},
};
use palisade_bench_report as report;
use palisade_common::*;

struct PinDir(PathBuf);
impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const IF: u32 = 1;
const EP: u32 = 7;

fn run(dp: &mut Datapath, prog: &'static str, frame: &[u8], repeat: u32) -> Result<f64> {
    // Median of 5 runs: the machine is shared and noisy.
    let mut samples = Vec::new();
    for _ in 0..5 {
        let r = packet::test_run(dp, prog, frame, IF, 0, repeat)?;
        samples.push(r.duration.as_nanos() as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[2])
}

fn value(ranges: usize) -> PolicyValue {
    let mut v = PolicyValue::default();
    for i in 0..ranges {
        v.ranges[i] = PortRange {
            proto: PROTO_TCP,
            reason: 0,
            first: 1000 + (i as u16) * 10,
            last: 1000 + (i as u16) * 10 + 5,
            _pad1: 0,
        };
    }
    v.count = ranges as u8;
    v
}

/// Peer i of n: spread over 10.0.0.0/8 (v4) / fd00:1::/32 (v6), prefix lengths
/// mixed: a third host entries (/32, /128: the host hash), the rest /28 and
/// /24 (/60 and /56), so the trie has depth.
fn peer_v4(i: u32) -> (Ipv4Addr, u32) {
    let a = 0x0a00_0000u32 | ((i.wrapping_mul(2_654_435_761)) & 0x00ff_ffff);
    let plen = [32u32, 28, 24][(i % 3) as usize];
    (Ipv4Addr::from(a & (u32::MAX << (32 - plen))), plen)
}

fn peer_v6(i: u32) -> (Ipv6Addr, u32) {
    let (v4, plen) = peer_v4(i);
    let o = v4.octets();
    let a = Ipv6Addr::new(
        0xfd00,
        1,
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([o[2], o[3]]),
        0,
        0,
        0,
        0,
    );
    // A pod address is a /128 entry, as an IPv4 one is a /32.
    (a, if plen == 32 { 128 } else { plen + 32 })
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[u32] = if quick {
        &[10, 1000]
    } else {
        &[10, 1000, 10_000, 100_000]
    };
    let repeat = if quick { 2_000 } else { 200_000 };
    let dir = PathBuf::from(format!("/sys/fs/bpf/palisade-bench-{}", std::process::id()));
    let _guard = PinDir(dir.clone());
    let mut dp = Datapath::load_with(
        &dir,
        Some(sizes.iter().max().copied().unwrap_or(10) * 2 + 16),
    )?;
    dp.program("bench_floor")?
        .load()
        .context("loading bench_floor")?;
    // Instruction and stack budget of every program, from the kernel.
    let mut budgets = Vec::new();
    for prog in [
        palisade_common::progs::TO_POD,
        palisade_common::progs::FROM_POD,
        palisade_common::progs::SVC_EGRESS,
        "bench_floor",
    ] {
        let b = budget::budget(dp.program(prog)?).with_context(|| format!("budget of {prog}"))?;
        budgets.push((prog, b));
    }
    println!("programs (kernel program info: verifier-processed and translated instructions, JITed size, deepest stack frame)");
    report::print_table(
        &[
            "program",
            "verified insns",
            "translated insns",
            "JITed bytes",
            "stack bytes",
        ],
        &budgets
            .iter()
            .map(|(p, b)| {
                vec![
                    p.to_string(),
                    b.verified.map_or("-".to_string(), |v| v.to_string()),
                    b.translated.to_string(),
                    b.jited_bytes.to_string(),
                    b.stack_bytes.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    let mut maps = Maps::take(&mut dp)?;
    let pod4 = Ipv4Addr::new(10, 100, 1, 10);
    let pod6 = Ipv6Addr::new(0xfd00, 0x100, 1, 0, 0, 0, 0, 0x10);
    maps.upsert_endpoint(
        IF,
        &Endpoint {
            id: EP,
            flags: EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED | EP_HAS_V4 | EP_HAS_V6,
            ipv4: pod4.octets(),
            _pad0: [0; ENDPOINT_PAD],
            ipv6: pod6.octets(),
        },
    )?;
    let mut rows: Vec<(String, f64)> = Vec::new();
    let floor_frame = packet::frame(
        pod4.into(),
        Ipv4Addr::new(10, 0, 0, 1).into(),
        &L4::Tcp { sport: 1, dport: 2 },
    );
    let floor = run(&mut dp, "bench_floor", &floor_frame, repeat)?;
    rows.push(("empty program (floor)".into(), floor));

    let mut inserted = 0u32;
    let ranges = 8;
    let v = value(ranges);
    for &n in sizes {
        while inserted < n {
            let (a4, p4) = peer_v4(inserted);
            let scope = PolicyScope::new(EP, DIR_EGRESS);
            maps.upsert_v4(
                SCOPE_BITS + p4,
                PolicyKeyV4 {
                    scope,
                    addr: a4.octets(),
                },
                &v,
            )?;
            let (a6, p6) = peer_v6(inserted);
            maps.upsert_v6(
                SCOPE_BITS + p6,
                PolicyKeyV6 {
                    scope,
                    addr: a6.octets(),
                },
                &v,
            )?;
            inserted += 1;
        }
        // The allowed flow matches the last port range of the last inserted
        // peer, a host entry (the hash); the CIDR rows a /24 (the trie).
        let (a4, _) = peer_v4(n - 1);
        let (a6, _) = peer_v6(n - 1);
        let (c4, c4len) = peer_v4(n - 2);
        let (c6, _) = peer_v6(n - 2);
        debug_assert_eq!(c4len, 24);
        let port = 1000 + (ranges as u16 - 1) * 10 + 3;
        for (fam, src, dst) in [
            ("IPv4", IpAddr::from(pod4), IpAddr::from(a4)),
            ("IPv6", IpAddr::from(pod6), IpAddr::from(a6)),
        ] {
            let allowed = packet::frame(
                src,
                dst,
                &L4::Tcp {
                    sport: 40000,
                    dport: port,
                },
            );
            let t = run(&mut dp, "from_pod", &allowed, repeat)?;
            rows.push((format!("{fam} allowed flow, {n} prefixes"), t));
            let denied = packet::frame(
                src,
                dst,
                &L4::Tcp {
                    sport: 40000,
                    dport: 9,
                },
            );
            let t = run(&mut dp, "from_pod", &denied, repeat)?;
            rows.push((format!("{fam} denied flow, {n} prefixes"), t));
            // Conntrack hit: the reply of the allowed flow on to_pod.
            let reply = packet::frame(
                dst,
                src,
                &L4::Tcp {
                    sport: port,
                    dport: 40000,
                },
            );
            let t = run(&mut dp, "to_pod", &reply, repeat)?;
            rows.push((format!("{fam} conntrack hit (reply), {n} prefixes"), t));
        }
        for (fam, src, dst) in [
            ("IPv4", IpAddr::from(pod4), IpAddr::from(c4)),
            ("IPv6", IpAddr::from(pod6), IpAddr::from(c6)),
        ] {
            let allowed = packet::frame(
                src,
                dst,
                &L4::Tcp {
                    sport: 40000,
                    dport: port,
                },
            );
            let t = run(&mut dp, "from_pod", &allowed, repeat)?;
            rows.push((
                format!("{fam} allowed flow to a CIDR peer (trie), {n} prefixes"),
                t,
            ));
        }
    }

    // ClusterNetworkPolicy entries: the same allowed ranges followed by as many
    // Admin-denied ones, the rest denied by Baseline, on the last peer of the
    // largest size; the allowed flow, a drop on the last denied range (the
    // longest scan) and a Baseline drop (no range matches).
    let n = sizes.iter().max().copied().unwrap_or(10);
    let mut tiered = value(ranges);
    for i in 0..ranges {
        tiered.ranges[ranges + i] = PortRange {
            proto: PROTO_TCP,
            reason: Reason::AdminDeny as u8,
            first: 2000 + (i as u16) * 10,
            last: 2000 + (i as u16) * 10 + 5,
            _pad1: 0,
        };
    }
    tiered.count = (2 * ranges) as u8;
    tiered.deny_reason = Reason::BaselineDeny as u8;
    let (a4, p4) = peer_v4(n - 1);
    let (a6, p6) = peer_v6(n - 1);
    let scope = PolicyScope::new(EP, DIR_EGRESS);
    let key4 = PolicyKeyV4 {
        scope,
        addr: a4.octets(),
    };
    maps.upsert_v4(SCOPE_BITS + p4, key4, &tiered)?;
    let key6 = PolicyKeyV6 {
        scope,
        addr: a6.octets(),
    };
    maps.upsert_v6(SCOPE_BITS + p6, key6, &tiered)?;
    let allowed_port = 1000 + (ranges as u16 - 1) * 10 + 3;
    let admin_port = 2000 + (ranges as u16 - 1) * 10 + 3;
    for (fam, src, dst) in [
        ("IPv4", IpAddr::from(pod4), IpAddr::from(a4)),
        ("IPv6", IpAddr::from(pod6), IpAddr::from(a6)),
    ] {
        for (what, dport) in [
            ("allowed flow", allowed_port),
            ("admin-deny", admin_port),
            ("baseline-deny", 9),
        ] {
            let frame = packet::frame(
                src,
                dst,
                &L4::Tcp {
                    sport: 40001,
                    dport,
                },
            );
            let t = run(&mut dp, "from_pod", &frame, repeat)?;
            rows.push((
                format!("{fam} ClusterNetworkPolicy {what}, {n} prefixes"),
                t,
            ));
        }
    }

    println!("datapath (BPF_PROG_TEST_RUN, {repeat} repeats, median of 5; ratio = time / floor)");
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|(name, ns)| {
            vec![
                name.clone(),
                format!("{ns:.1}"),
                format!("{:.2}", ns / floor),
                format!("{:.1}", ns - floor),
            ]
        })
        .collect();
    report::print_table(&["case", "ns/pkt", "ratio", "ns over floor"], &table);
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|(name, ns)| {
            serde_json::json!({
                "case": name,
                "ns_per_packet": ns,
                "ratio_to_floor": ns / floor,
                "ns_over_floor": ns - floor,
            })
        })
        .collect();
    let json_path = report::write_json(
        "datapath",
        &serde_json::json!({
            "machine": report::machine(),
            "repeat": repeat,
            "floor_ns": floor,
            "rows": json,
            "programs": budgets.iter().map(|(p, b)| serde_json::json!({
                "program": p,
                "verified_instructions": b.verified,
                "translated_instructions": b.translated,
                "jited_bytes": b.jited_bytes,
                "stack_bytes": b.stack_bytes,
            })).collect::<Vec<_>>(),
        }),
    )?;
    // One panel per family, so each scale shows its own spread across sizes.
    let panels: Vec<report::Panel> = ["IPv4", "IPv6"]
        .iter()
        .map(|fam| report::Panel {
            title: format!("{fam}: ns per packet (floor {floor:.0} ns)"),
            bars: rows
                .iter()
                .filter(|(name, _)| name.starts_with(fam) || name.starts_with("empty"))
                .map(|(name, ns)| {
                    (
                        name.clone(),
                        *ns,
                        format!("{ns:.0} ns, {:.2}x floor", ns / floor),
                    )
                })
                .collect(),
        })
        .collect();
    let svg_path = report::write_svg(
        "datapath",
        &format!("Palisade datapath, BPF_PROG_TEST_RUN x{repeat}"),
        &panels,
    )?;
    println!("wrote {} and {}", json_path.display(), svg_path.display());
    Ok(())
}
