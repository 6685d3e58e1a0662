//! The fixture of the datapath tests (`datapath.rs`, `parse.rs`,
//! `conntrack.rs`): the real eBPF object loaded with maps pinned in a private
//! directory, an endpoint on ifindex 1 (loopback: test runs need a real device
//! index but send nothing anywhere), frame builders and table checks.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use palisade_agent::{
    datapath::Datapath,
    events::EventReader,
    maps::Maps,
    packet::{self, IpOpts, L4},
};
use palisade_common::*;

use crate::common;

pub const OK: u32 = 0;
pub const SHOT: u32 = 2;
pub const IF: u32 = 1;
/// The programs: on a pod's veth, traffic to and from the pod; on other
/// interfaces, Service traffic after DNAT.
pub const TO: &str = "to_pod";
pub const FROM: &str = "from_pod";
pub const SVC: &str = "svc_egress";

pub const POD: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 10);
pub const PEER: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 20);
pub const OTHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
pub const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 1, 0, 0, 0, 0, 0x10);
pub const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 2, 0, 0, 0, 0, 0x20);
/// A link-local source, and the all-nodes multicast group.
pub const LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 5);
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

pub struct Fx {
    pub dp: Datapath,
    pub maps: Maps,
    pub events: EventReader,
    _dir: PinDir,
}

/// Removes the test's pin directory however the test ends.
pub struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn fixture_with(policy_entries: Option<u32>) -> Fx {
    fixture_prepared(policy_entries, |_| {})
}

/// A fixture whose pin directory `prepare` sees (as `<dir>/maps`) before the
/// object is loaded.
pub fn fixture_prepared(policy_entries: Option<u32>, prepare: impl FnOnce(&std::path::Path)) -> Fx {
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
pub fn interfaces_2_and_3() {
    let (a, b) = common::private_veth("pdt2", "pdt3");
    let mut idx = [a, b];
    idx.sort_unstable();
    assert_eq!(idx, [2, 3], "ifindexes of the veth pair");
}

pub fn fixture() -> Fx {
    fixture_with(None)
}

/// A fixture with the endpoint on `IF`, flags as given.
pub fn fixture_for(flags: u32) -> Fx {
    let mut fx = fixture();
    fx.maps
        .upsert_endpoint(IF, &endpoint(flags))
        .expect("setup");
    fx
}

pub fn endpoint(flags: u32) -> Endpoint {
    Endpoint {
        id: 7,
        flags: flags | EP_HAS_V4 | EP_HAS_V6,
        ipv4: POD.octets(),
        _pad0: [0; ENDPOINT_PAD],
        ipv6: POD6.octets(),
    }
}

pub fn ports(list: &[(u8, u16, u16)]) -> PolicyValue {
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
pub fn every_port() -> PolicyValue {
    PolicyValue {
        flags: PV_ALL,
        ..Default::default()
    }
}

pub fn allow_v4(fx: &mut Fx, dir: u8, net: Ipv4Addr, plen: u32, v: PolicyValue) {
    let key = PolicyKeyV4 {
        scope: PolicyScope::new(7, dir),
        addr: net.octets(),
    };
    fx.maps
        .upsert_v4(SCOPE_BITS + plen, key, &v)
        .expect("insert policy");
}

pub fn allow_v6(fx: &mut Fx, dir: u8, addr: Ipv6Addr, plen: u32, v: PolicyValue) {
    let key = PolicyKeyV6 {
        scope: PolicyScope::new(7, dir),
        addr: addr.octets(),
    };
    fx.maps
        .upsert_v6(SCOPE_BITS + plen, key, &v)
        .expect("insert policy");
}

impl Fx {
    pub fn run_mark(
        &mut self,
        prog: &'static str,
        frame: &[u8],
        ifindex: u32,
        mark: u32,
    ) -> (u32, u32) {
        let r = packet::test_run(&mut self.dp, prog, frame, ifindex, mark, 1)
            .expect("BPF_PROG_TEST_RUN");
        (r.action, r.mark)
    }
    pub fn run(&mut self, prog: &'static str, frame: &[u8]) -> u32 {
        self.run_mark(prog, frame, IF, 0).0
    }
    pub fn events(&mut self) -> Vec<Event> {
        self.events.drain()
    }
}

pub fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    packet::frame(src.into(), dst.into(), &L4::Tcp { sport, dport })
}
pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    packet::frame(src.into(), dst.into(), &L4::Udp { sport, dport })
}
pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    packet::frame(src.into(), dst.into(), &L4::Udp { sport, dport })
}
pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8) -> Vec<u8> {
    packet::frame(src.into(), dst.into(), &L4::Icmp6Type(ty))
}
pub fn echo(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, id: u16) -> Vec<u8> {
    packet::frame(src.into(), dst.into(), &L4::IcmpEchoRequest { id })
}
/// An IPv4 frame with header options or fragment fields.
pub fn ipv4_with(src: Ipv4Addr, dst: Ipv4Addr, l4: L4, opts: &IpOpts) -> Vec<u8> {
    packet::ether(&packet::ipv4(src, dst, &l4, opts))
}
/// An IPv6 frame with extension headers, the first of kind `first_ext`.
pub fn ipv6_with(src: Ipv6Addr, dst: Ipv6Addr, l4: L4, opts: &IpOpts, first_ext: u8) -> Vec<u8> {
    packet::ether(&packet::ipv6(src, dst, &l4, opts, Some(first_ext)))
}
/// UDP from port 1 to 53.
pub fn dns() -> L4 {
    L4::Udp {
        sport: 1,
        dport: 53,
    }
}

pub fn one_event(fx: &mut Fx) -> Event {
    let evs = fx.events();
    assert_eq!(evs.len(), 1, "expected exactly one event, got {evs:?}");
    evs[0]
}

/// One row of a table of runs: the case's name, the program, the frame, and
/// the verdict the program must return.
pub type Run<'a> = (&'static str, &'static str, &'a [u8], u32);

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        OK => "TC_ACT_OK",
        SHOT => "TC_ACT_SHOT",
        _ => "another verdict",
    }
}

impl Fx {
    /// Runs the rows in order (conntrack and event state carry over from one to
    /// the next) and checks each verdict, naming the row that differs.
    pub fn check(&mut self, runs: &[Run<'_>]) {
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

/// Keeps the calling test thread on CPU 0: per-CPU budgets (events,
/// conntrack confirmations) are then one budget.
pub fn on_one_cpu() {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}
