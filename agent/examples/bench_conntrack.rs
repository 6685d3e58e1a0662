//! Conntrack under a flood: whether a pod opening new flows at full speed
//! evicts the conntrack entries of established connections. Through
//! BPF_PROG_TEST_RUN on the real programs: 1,000 established connections (their
//! first packet allowed by `from_pod`, so tracked, and answered once), then N
//! new flows from another pod, nobody answering them or a cooperating server
//! answering each once, then the reply of every established connection on
//! `to_pod`, whose ingress is isolated with no rule: a reply passes only while
//! its conntrack entry lives. Prints, per flood, the established connections
//! whose replies were dropped, and the flooder's replies dropped (an answered
//! flood's replies must pass too).
//!
//! `cargo xtask bench conntrack [--quick]` (root, bpffs). Writes
//! `results/bench-conntrack.json`.
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Result;
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

/// The two pods' interfaces (any device indexes; nothing is sent).
const VICTIM_IF: u32 = 1;
const FLOODER_IF: u32 = 2;
const VICTIM: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 10);
const FLOODER: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 11);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 20);
const ESTABLISHED: u16 = 1000;

fn run(dp: &mut Datapath, prog: &'static str, ifindex: u32, frame: &[u8]) -> Result<u32> {
    Ok(packet::test_run(dp, prog, frame, ifindex, 0, 1)?.action)
}

fn endpoint(id: u32, ip: Ipv4Addr) -> Endpoint {
    Endpoint {
        id,
        // Ingress isolated, no ingress rule: only replies of tracked flows pass.
        flags: EP_INGRESS_ISOLATED | EP_HAS_V4,
        ipv4: ip.octets(),
        _pad0: [0; ENDPOINT_PAD],
        ipv6: [0; 16],
    }
}

/// What one flood left.
struct After {
    broken: u32,
    flood_replies_dropped: u32,
    confirmed: u32,
    unanswered: u32,
}

/// Established connections whose reply is dropped after `flood` new flows,
/// each answered once if `answered`. Also the confirmed and unanswered
/// entries left.
fn broken_after(flood: u32, answered: bool, round: u32) -> Result<After> {
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/palisade-bench-ct-{}-{round}",
        std::process::id()
    ));
    let _guard = PinDir(dir.clone());
    let mut dp = Datapath::load_with(&dir, None)?;
    let ct_new: aya::maps::HashMap<aya::maps::MapData, CtKeyV4, CtValue> =
        dp.take_map(maps::CT_NEW_V4)?.try_into()?;
    let confirmed: aya::maps::HashMap<aya::maps::MapData, CtKeyV4, CtValue> =
        dp.take_map(maps::CONNTRACK_V4)?.try_into()?;
    let mut maps = Maps::take(&mut dp)?;
    maps.upsert_endpoint(VICTIM_IF, &endpoint(1, VICTIM))?;
    maps.upsert_endpoint(FLOODER_IF, &endpoint(2, FLOODER))?;
    let tcp = |src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16| {
        packet::frame(src.into(), dst.into(), &L4::Tcp { sport, dport })
    };
    // Established: opened, and answered once (a real connection's handshake).
    for i in 0..ESTABLISHED {
        run(
            &mut dp,
            "from_pod",
            VICTIM_IF,
            &tcp(VICTIM, SERVER, 20000 + i, 443),
        )?;
        let act = run(
            &mut dp,
            "to_pod",
            VICTIM_IF,
            &tcp(SERVER, VICTIM, 443, 20000 + i),
        )?;
        anyhow::ensure!(act == 0, "the first reply of connection {i} was dropped");
    }
    // The flood: every packet a new flow (destination address and port vary).
    let mut flood_replies_dropped = 0;
    for i in 0..flood {
        let dst = Ipv4Addr::from(0x0a80_0000u32 + (i >> 16));
        let sport = 1024 + (i % 60000) as u16;
        run(
            &mut dp,
            "from_pod",
            FLOODER_IF,
            &tcp(FLOODER, dst, sport, 80),
        )?;
        if answered {
            let act = run(&mut dp, "to_pod", FLOODER_IF, &tcp(dst, FLOODER, 80, sport))?;
            flood_replies_dropped += u32::from(act != 0);
        }
    }
    let mut broken = 0;
    for i in 0..ESTABLISHED {
        let act = run(
            &mut dp,
            "to_pod",
            VICTIM_IF,
            &tcp(SERVER, VICTIM, 443, 20000 + i),
        )?;
        if act != 0 {
            broken += 1;
        }
    }
    Ok(After {
        broken,
        flood_replies_dropped,
        confirmed: confirmed.keys().count() as u32,
        unanswered: ct_new.keys().count() as u32,
    })
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let floods: &[(u32, bool)] = if quick {
        &[(0, false), (10_000, false), (10_000, true)]
    } else {
        &[
            (0, false),
            (100_000, false),
            (250_000, false),
            (MAX_CONNTRACK, false),
            (2 * MAX_CONNTRACK, false),
            (100_000, true),
            (250_000, true),
            (MAX_CONNTRACK, true),
            (2 * MAX_CONNTRACK, true),
        ]
    };
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for (round, &(n, answered)) in floods.iter().enumerate() {
        let a = broken_after(n, answered, round as u32)?;
        let kind = if answered { "answered" } else { "unanswered" };
        rows.push(vec![
            format!("{n} {kind}"),
            format!("{} of {ESTABLISHED}", a.broken),
            if answered {
                format!("{} of {n}", a.flood_replies_dropped)
            } else {
                "-".into()
            },
            a.confirmed.to_string(),
            a.unanswered.to_string(),
        ]);
        json.push(serde_json::json!({
            "flood_new_flows": n,
            "answered": answered,
            "established": ESTABLISHED,
            "established_broken": a.broken,
            "flood_replies_dropped": a.flood_replies_dropped,
            "confirmed_entries_after": a.confirmed,
            "unanswered_entries_after": a.unanswered,
        }));
    }
    println!(
        "conntrack under a flood (confirmed connections: an LRU of {MAX_CONNTRACK}; unanswered: an LRU of {MAX_CT_NEW}; confirmations per endpoint and CPU: {CT_CONFIRM_PER_SEC}/s, bursts of {CT_CONFIRM_BURST_SECS} s; {ESTABLISHED} established connections, then N new flows from another pod)"
    );
    report::print_table(
        &[
            "new flows in the flood",
            "established connections broken",
            "flood replies dropped",
            "confirmed entries",
            "unanswered entries",
        ],
        &rows,
    );
    let p = report::write_json(
        "conntrack",
        &serde_json::json!({"machine": report::machine(), "confirmed_capacity": MAX_CONNTRACK, "unanswered_capacity": MAX_CT_NEW, "confirm_per_sec": CT_CONFIRM_PER_SEC, "confirm_burst_seconds": CT_CONFIRM_BURST_SECS, "rows": json}),
    )?;
    println!("wrote {}", p.display());
    Ok(())
}
