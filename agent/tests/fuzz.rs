//! Packet fuzz against a model: generated and mutated frames go through the
//! real TC programs (`BPF_PROG_TEST_RUN`) and through a user-space model of
//! their parse-and-decide written from the documented decision order
//! (`fuzz/model.rs`); any difference in verdict or drop reason fails, and so
//! does any difference in the node-wide counts by verdict and reason (which
//! also says why each packet passed).
//!
//! 20,000 frames by default; `PALISADE_FUZZ_FRAMES` sets the count (`cargo
//! xtask soak` runs 1,000,000) and `PALISADE_FUZZ_SEED` the seed, which a
//! failure prints.
mod common;
#[path = "fuzz/frames.rs"]
mod frames;
#[path = "fuzz/model.rs"]
mod model;

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::{MapData, PerCpuArray};
use palisade_agent::{datapath::Datapath, events::EventReader, maps::Maps, packet};
use palisade_common::*;

use frames::{Frames, Hook, Plan};
use model::{Entry, Model, Pass, Verdict};

const IF: u32 = 1;
const EP: u32 = 7;
/// Frames between two changes of the endpoint's flags.
const BATCH: usize = 2_000;
/// Frames between two fresh loads of the programs and maps (empty conntrack):
/// well below the unanswered table's size, so no entry is ever evicted.
const RELOAD: usize = 20_000;

const POD: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 10);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 1, 0, 0, 0, 0, 0x10);
const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SVC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);

/// Endpoint flags the batches cycle through; `None` is no endpoint record.
const FLAGS: [Option<u32>; 8] = [
    Some(EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED | EP_HAS_V4 | EP_HAS_V6),
    Some(EP_INGRESS_ISOLATED | EP_HAS_V4 | EP_HAS_V6),
    Some(EP_EGRESS_ISOLATED | EP_HAS_V4 | EP_HAS_V6),
    Some(EP_HAS_V4 | EP_HAS_V6),
    Some(EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED | EP_HAS_V4 | EP_HAS_V6 | EP_FAIL_CLOSED),
    Some(EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED | EP_HAS_V4 | EP_HAS_V6 | EP_AUDIT),
    Some(EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED | EP_HAS_V4),
    None,
];

fn v4(a: Ipv4Addr) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&a.octets());
    b
}

fn entry(dir: u8, addr: [u8; 16], v6: bool, plen: u32) -> Entry {
    Entry {
        dir,
        v6,
        addr,
        plen,
        flags: 0,
        all_ports: 0,
        ranges: Vec::new(),
        deny_reason: 0,
        other_reason: 0,
    }
}

/// Nested prefixes with host entries (the hash), CIDRs (the trie), port
/// ranges allowed and denied by tier, all-ports bits, and deny reasons.
fn entries() -> Vec<Entry> {
    let admin = Reason::AdminDeny as u8;
    let baseline = Reason::BaselineDeny as u8;
    let mut out = Vec::new();
    for v6 in [false, true] {
        let host = |a: Ipv4Addr, b: Ipv6Addr| if v6 { b.octets() } else { v4(a) };
        let len = |l4: u32| if v6 { l4 + 96 } else { l4 };
        let peer = host(
            Ipv4Addr::new(10, 100, 2, 20),
            Ipv6Addr::new(0xfd00, 0x100, 2, 0, 0, 0, 0, 0x20),
        );
        let net = host(
            Ipv4Addr::new(10, 100, 2, 0),
            Ipv6Addr::new(0xfd00, 0x100, 2, 0, 0, 0, 0, 0),
        );
        let wide = host(
            Ipv4Addr::new(10, 100, 0, 0),
            Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0),
        );
        let other = host(
            Ipv4Addr::new(192, 0, 2, 7),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7),
        );
        let mut e = entry(DIR_EGRESS, peer, v6, len(32));
        e.ranges = vec![(6, 80, 80, 0), (17, 53, 53, 0), (6, 443, 443, admin)];
        out.push(e);
        let mut e = entry(DIR_EGRESS, net, v6, len(24));
        e.flags = PV_ALL;
        out.push(e);
        let mut e = entry(DIR_EGRESS, wide, v6, len(16));
        e.all_ports = PBIT_TCP | PBIT_OTHER;
        e.deny_reason = baseline;
        out.push(e);
        let mut e = entry(DIR_EGRESS, other, v6, len(32));
        e.ranges = vec![(6, 1000, 2000, 0), (132, 1000, 2000, 0)];
        e.other_reason = admin;
        out.push(e);
        let mut e = entry(DIR_INGRESS, peer, v6, len(32));
        e.all_ports = PBIT_UDP;
        e.ranges = vec![(6, 1000, 2000, 0), (6, 2001, 2001, admin)];
        e.deny_reason = baseline;
        out.push(e);
        let mut e = entry(DIR_INGRESS, net, v6, len(24));
        e.all_ports = PBIT_OTHER;
        out.push(e);
        let mut e = entry(DIR_INGRESS, other, v6, len(32));
        e.flags = PV_ALL;
        out.push(e);
    }
    out
}

fn value(e: &Entry) -> PolicyValue {
    let mut v = PolicyValue {
        flags: e.flags,
        all_ports: e.all_ports,
        count: e.ranges.len() as u8,
        deny_reason: e.deny_reason,
        other_reason: e.other_reason,
        ..Default::default()
    };
    for (i, &(proto, first, last, reason)) in e.ranges.iter().enumerate() {
        v.ranges[i] = PortRange {
            proto,
            reason,
            first,
            last,
            _pad1: 0,
        };
    }
    v
}

/// Removes the pin directory however the test ends.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The programs with the model's state written into their maps.
struct Kernel {
    dp: Datapath,
    maps: Maps,
    events: EventReader,
    stats: PerCpuArray<MapData, Stat>,
    _dir: PinDir,
}

impl Kernel {
    fn load(n: usize, model: &Model) -> Self {
        let dir = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/palisade-test/fuzz-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let guard = PinDir(dir.clone());
        let mut dp = Datapath::load(&dir).expect("load eBPF object");
        let stats: PerCpuArray<MapData, Stat> = dp
            .take_map(maps::STATS)
            .expect("stats map")
            .try_into()
            .expect("per-CPU array");
        let mut maps = Maps::take(&mut dp).expect("maps");
        let events = EventReader::new(&mut dp).expect("ring buffer");
        // An event for every drop: no per-flow interval, no per-endpoint budget.
        maps.set_config(Config {
            event_interval_ns: 1,
            flags: 0,
            endpoint_events_per_sec: u32::MAX,
            ..Default::default()
        })
        .expect("config");
        for e in &model.entries {
            let scope = PolicyScope::new(EP, e.dir);
            if e.v6 {
                let key = PolicyKeyV6 {
                    scope,
                    addr: e.addr,
                };
                maps.upsert_v6(SCOPE_BITS + e.plen, key, &value(e))
                    .expect("policy");
            } else {
                let mut addr = [0u8; 4];
                addr.copy_from_slice(&e.addr[..4]);
                let key = PolicyKeyV4 { scope, addr };
                maps.upsert_v4(SCOPE_BITS + e.plen, key, &value(e))
                    .expect("policy");
            }
        }
        maps.set_node_addrs(&[NODE.into(), NODE6.into()])
            .expect("node addresses");
        for &(v6, proto, port, addr) in &model.services {
            let family = if v6 { FAMILY_V6 } else { FAMILY_V4 };
            maps.upsert_service(ServiceKey {
                family,
                proto,
                port,
                addr,
            })
            .expect("service");
        }
        Self {
            dp,
            maps,
            events,
            stats,
            _dir: guard,
        }
    }

    fn set_endpoint(&mut self, flags: Option<u32>) {
        match flags {
            Some(flags) => self
                .maps
                .upsert_endpoint(
                    IF,
                    &Endpoint {
                        id: EP,
                        flags,
                        ipv4: POD.octets(),
                        _pad0: [0; ENDPOINT_PAD],
                        ipv6: POD6.octets(),
                    },
                )
                .expect("endpoint"),
            None => self.maps.delete_endpoint(IF).expect("remove endpoint"),
        }
    }

    /// The action and the events of one frame; `None` when
    /// `BPF_PROG_TEST_RUN` refuses it (an IP ethertype with less than the
    /// fixed IP header behind it, which the test runner will not build into
    /// an skb).
    fn run(&mut self, hook: Hook, frame: &[u8]) -> Option<(u32, Vec<Event>)> {
        let prog = match hook {
            Hook::ToPod => progs::TO_POD,
            Hook::FromPod => progs::FROM_POD,
        };
        let r = packet::test_run(&mut self.dp, prog, frame, IF, 0, 1);
        match r {
            Ok(r) => Some((r.action, self.events.drain())),
            Err(_) if short_ip(frame) => None,
            Err(e) => panic!("BPF_PROG_TEST_RUN of {}: {e}", hex(frame)),
        }
    }

    fn stats(&self) -> Vec<u64> {
        (0..STAT_SLOTS)
            .map(|i| {
                self.stats
                    .get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().map(|s| s.packets).sum())
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// The statistics slot the model's verdict counts in; `None` for packets
/// that pass before any verdict (not IP, neighbour discovery).
fn slot(hook: Hook, v: Verdict) -> Option<u32> {
    let dir = if hook == Hook::ToPod {
        DIR_INGRESS
    } else {
        DIR_EGRESS
    };
    Some(match v {
        Verdict::Pass(Pass::NotIp | Pass::Nd) => return None,
        Verdict::Pass(p) => {
            let r = match p {
                Pass::Policy => AllowReason::Policy,
                Pass::NotIsolated => AllowReason::NotIsolated,
                Pass::Reply => AllowReason::Reply,
                Pass::Node => AllowReason::Node,
                _ => AllowReason::ServiceDeferred,
            };
            stat_slot(dir, STAT_ALLOWED, r as u8)
        }
        Verdict::Drop(r) => stat_slot(dir, STAT_DENIED, r as u8),
        Verdict::Audit(r) => stat_slot(dir, STAT_AUDIT, r as u8),
    })
}

/// An IP ethertype without a whole fixed IP header behind it.
fn short_ip(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x00]) => frame.len() < 14 + 20,
        Some([0x86, 0xdd]) => frame.len() < 14 + 40,
        _ => false,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn frames_are_judged_as_the_model_judges() {
    common::require_root();
    let frames: usize = std::env::var("PALISADE_FUZZ_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("PALISADE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let mut model = Model::new(
        entries(),
        vec![(false, v4(NODE)), (true, NODE6.octets())],
        vec![(false, 6, 80, v4(SVC)), (true, 6, 80, SVC6.octets())],
    );
    let plan = Plan {
        pod4: POD,
        pod6: POD6,
        peers4: [
            [10, 100, 2, 20],
            [10, 100, 2, 9],
            [10, 100, 3, 5],
            [192, 0, 2, 7],
            [192, 0, 2, 8],
        ]
        .map(Ipv4Addr::from)
        .into_iter()
        .chain([NODE, SVC])
        .collect(),
        peers6: vec![
            Ipv6Addr::new(0xfd00, 0x100, 2, 0, 0, 0, 0, 0x20),
            Ipv6Addr::new(0xfd00, 0x100, 2, 0, 0, 0, 0, 9),
            Ipv6Addr::new(0xfd00, 0x100, 3, 0, 0, 0, 0, 5),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7),
            NODE6,
            SVC6,
        ],
    };
    let mut gen = Frames::new(seed, plan);
    let mut kernel = Kernel::load(0, &model);
    let mut want_stats = vec![0u64; STAT_SLOTS as usize];
    let mut mismatches = Vec::new();
    let mut refused = 0usize;
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..frames {
        if i % RELOAD == 0 && i > 0 {
            assert_eq!(
                kernel.stats(),
                want_stats,
                "counts by verdict and reason (seed {seed})"
            );
            model.clear_conntrack();
            kernel = Kernel::load(i, &model);
            want_stats.iter_mut().for_each(|s| *s = 0);
        }
        if i % BATCH == 0 {
            let flags = FLAGS[(i / BATCH) % FLAGS.len()];
            model.endpoint = flags.map(|f| (f, POD.octets(), POD6.octets()));
            kernel.set_endpoint(flags);
        }
        let (hook, frame) = gen.next();
        let Some((act, events)) = kernel.run(hook, &frame) else {
            refused += 1;
            continue;
        };
        let want = match hook {
            Hook::ToPod => model.judge_to_pod(&frame),
            Hook::FromPod => model.judge_from_pod(&frame),
        };
        *kinds.entry(format!("{want:?}")).or_default() += 1;
        if let Some(s) = slot(hook, want) {
            want_stats[s as usize] += 1;
        }
        let got = match (act, events.as_slice()) {
            (0, []) => None,
            (2, [e]) if e.verdict == VERDICT_DENIED => Some(Verdict::Drop(reason(e.reason))),
            (0, [e]) if e.verdict == VERDICT_AUDIT => Some(Verdict::Audit(reason(e.reason))),
            _ => {
                mismatches.push(format!(
                    "frame {i} ({hook:?}): model {want:?}, kernel action {act} with {} events {:?}: {}",
                    events.len(),
                    events.iter().map(|e| (e.verdict, e.reason)).collect::<Vec<_>>(),
                    hex(&frame)
                ));
                continue;
            }
        };
        let same = match (got, want) {
            (None, Verdict::Pass(_)) => true,
            (Some(g), w) => g == w,
            (None, _) => false,
        };
        if !same {
            mismatches.push(format!(
                "frame {i} ({hook:?}): model {want:?}, kernel {got:?}: {}",
                hex(&frame)
            ));
        }
        if mismatches.len() >= 20 {
            break;
        }
    }
    if mismatches.is_empty() {
        assert_eq!(
            kernel.stats(),
            want_stats,
            "counts by verdict and reason (seed {seed})"
        );
    }
    println!(
        "fuzz: {frames} frames ({refused} refused by BPF_PROG_TEST_RUN), seed {seed}, {} mismatches",
        mismatches.len()
    );
    for (k, n) in &kinds {
        println!("  {n:>8}  {k}");
    }
    assert!(
        mismatches.is_empty(),
        "{} frames judged otherwise than the model (seed {seed}, PALISADE_FUZZ_SEED reproduces):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

fn reason(code: u8) -> Reason {
    Reason::from_u8(code).unwrap_or(Reason::Internal)
}
