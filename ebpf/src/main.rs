//! Palisade's TC programs.
//!
//! - `to_pod`: TC egress of a pod's host-side veth, i.e. traffic entering the pod
//!   (the pod's ingress policy).
//! - `from_pod`: TC ingress of the host-side veth, i.e. traffic leaving the pod
//!   (the pod's egress policy, anti-spoofing).
//! - `svc_egress`: TC egress of the node's other interfaces; makes the egress
//!   decision for pod traffic to a Service after kube-proxy's DNAT picked the backend.
//!
//! Decision order per packet (see README "Datapath"): non-IP passes; IPv6
//! neighbour discovery to a pod passes, and from a pod not known yet (router
//! messages excepted); unknown endpoint drops; malformed/truncated headers drop;
//! spoofed source (from_pod, router messages included) drops; IPv6 neighbour
//! discovery passes; a pending service egress decision is
//! made (to_pod); conntrack replies and ICMP errors about tracked flows pass; from
//! the pod's own node passes (to_pod); a direction the pod is not isolated in
//! passes; Service frontends defer the egress decision (from_pod); otherwise the
//! peer-prefix LPM lookup and the entry's port/protocol set decide. Every allowed
//! non-reply packet is re-checked against policy (strict: withdrawn allows take
//! effect on established flows); conntrack only admits replies.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{
        lpm_trie::Key as LpmKey, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap,
        RingBuf,
    },
    programs::TcContext,
};
use palisade_common::*;

#[map(name = "PAL_ENDPOINTS")]
static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map(name = "PAL_EP_BY_IP")]
static EP_BY_IP: HashMap<IpKey, u32> = HashMap::pinned(MAX_ENDPOINTS * 2, 0);

#[map(name = "PAL_POLICY_V4")]
static POLICY_V4: LpmTrie<PolicyKeyV4, PolicyValue> =
    LpmTrie::pinned(MAX_POLICY_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "PAL_POLICY_V6")]
static POLICY_V6: LpmTrie<PolicyKeyV6, PolicyValue> =
    LpmTrie::pinned(MAX_POLICY_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "PAL_NODE_ADDRS")]
static NODE_ADDRS: HashMap<IpKey, u32> = HashMap::pinned(MAX_NODE_ADDRS, 0);

#[map(name = "PAL_SERVICES")]
static SERVICES: HashMap<ServiceKey, u32> = HashMap::pinned(MAX_SERVICES, 0);

#[map(name = "PAL_CONNTRACK")]
static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(MAX_CONNTRACK, 0);

#[map(name = "PAL_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

#[map(name = "PAL_EVENT_RATE")]
static EVENT_RATE: LruHashMap<CtKey, RateValue> = LruHashMap::pinned(MAX_EVENT_RATE, 0);

#[map(name = "PAL_COUNTERS")]
static COUNTERS: PerCpuHashMap<u32, Counters> = PerCpuHashMap::pinned(MAX_ENDPOINTS, 0);

#[map(name = "PAL_EVENT_BUDGET")]
static EVENT_BUDGET: PerCpuHashMap<u32, EventBudget> =
    PerCpuHashMap::pinned(MAX_ENDPOINTS, BPF_F_NO_PREALLOC);

#[map(name = "PAL_CONFIG")]
static CONFIG: Array<Config> = Array::pinned(1, 0);

/// Per-CPU scratch flows: 0 is the packet being judged, 1 the flow an ICMP error
/// quotes. Kept in a map rather than on the stack because LLVM splits a stack
/// Flow into scalars and spills them around every helper call, which pushed
/// to_pod past the verifier's 512-byte stack limit on 6.1. Not pinned: scratch
/// only, never shared across programs' runs.
#[map(name = "PAL_SCRATCH")]
static SCRATCH: PerCpuArray<Flow> = PerCpuArray::with_max_entries(2, 0);

/// Per-CPU scratch conntrack keys, see `ct_key`.
#[map(name = "PAL_SCRATCH_KEY")]
static SCRATCH_KEY: PerCpuArray<CtKey> = PerCpuArray::with_max_entries(2, 0);

const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_NOEXIST: u64 = 1;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
/// Bounded walk over IPv6 extension headers.
const MAX_EXT_HDRS: usize = 8;

/// The parsed packet: what policy and conntrack look at.
#[derive(Clone, Copy)]
struct Flow {
    family: u8,
    proto: u8,
    /// Non-first fragment: no ports.
    fragment: bool,
    /// ICMP error (unreachable, too big, time exceeded, parameter problem).
    icmp_error: bool,
    /// ICMPv6 neighbour discovery / router messages.
    nd: bool,
    /// Of those, router advertisements and redirects: a router's to send,
    /// never a pod's.
    nd_router: bool,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    /// Offset of the quoted packet of an ICMP error.
    inner_off: usize,
}

/// An Ethernet header followed by a fixed IPv4 header, as one load.
#[repr(C)]
#[derive(Clone, Copy)]
struct EthV4 {
    _macs: [u8; 12],
    ethertype: [u8; 2],
    ip: [u8; 20],
}

enum Verdict {
    Allow,
    Deny(Reason),
}

#[inline(always)]
fn load<T>(ctx: &TcContext, off: usize) -> Result<T, Reason> {
    ctx.load::<T>(off).map_err(|_| Reason::Malformed)
}

#[inline(always)]
fn be16(ctx: &TcContext, off: usize) -> Result<u16, Reason> {
    Ok(u16::from_be(load::<u16>(ctx, off)?))
}

/// Parse transport ports (or the ICMP echo id) at `off`.
///
/// Headers are read with one `bpf_skb_load_bytes` each and picked apart on the
/// stack: fewer helper calls, and fewer stack temporaries than a load per field.
#[inline(always)]
fn parse_l4(ctx: &TcContext, flow: &mut Flow, off: usize) -> Result<(), Reason> {
    match flow.proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            // Require the whole fixed header: a header cut short is malformed.
            let min = match flow.proto {
                PROTO_TCP => 20,
                PROTO_UDP => 8,
                _ => 12,
            };
            // skb->len covers linear and paged data alike, so this is the same
            // test as loading the header's last byte, without a helper call.
            if (ctx.len() as usize) < off + min {
                return Err(Reason::Malformed);
            }
            let p: [u8; 4] = load(ctx, off)?;
            flow.sport = u16::from_be_bytes([p[0], p[1]]);
            flow.dport = u16::from_be_bytes([p[2], p[3]]);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let h: [u8; 8] = load(ctx, off)?;
            let ty = h[0];
            let id = u16::from_be_bytes([h[4], h[5]]);
            let v6 = flow.proto == PROTO_ICMPV6;
            let (echo_req, echo_rep) = if v6 { (128, 129) } else { (8, 0) };
            if ty == echo_req {
                flow.sport = id;
            } else if ty == echo_rep {
                flow.dport = id;
            } else if (!v6 && (ty == 3 || ty == 11 || ty == 12)) || (v6 && (1..=4).contains(&ty)) {
                flow.icmp_error = true;
                flow.inner_off = off + 8;
            } else if v6 && ((133..=137).contains(&ty) || matches!(ty, 130..=132 | 143)) {
                // Neighbour discovery and multicast listener messages: link-local
                // control traffic IPv6 cannot work without.
                flow.nd = true;
                flow.nd_router = ty == 134 || ty == 137;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Ports of the transport header quoted in an ICMP error (zero when cut off).
#[inline(always)]
fn quoted_ports(ctx: &TcContext, flow: &mut Flow, off: usize) {
    if let Ok(p) = load::<[u8; 4]>(ctx, off) {
        flow.sport = u16::from_be_bytes([p[0], p[1]]);
        flow.dport = u16::from_be_bytes([p[2], p[3]]);
    }
}

/// Parse an IPv4 header at `off` (real IHL, fragments) and its transport header.
#[inline(always)]
fn parse_v4(ctx: &TcContext, flow: &mut Flow, off: usize, l4: bool) -> Result<(), Reason> {
    let h: [u8; 20] = load(ctx, off)?;
    parse_v4_header(ctx, flow, off, &h, l4)
}

/// [`parse_v4`] with the fixed header `h` (read from `off`) already loaded.
#[inline(always)]
fn parse_v4_header(
    ctx: &TcContext,
    flow: &mut Flow,
    off: usize,
    h: &[u8; 20],
    l4: bool,
) -> Result<(), Reason> {
    if h[0] >> 4 != 4 {
        return Err(Reason::Malformed);
    }
    let hlen = ((h[0] & 0x0f) as usize) * 4;
    if hlen < 20 {
        return Err(Reason::Malformed);
    }
    if hlen > 20 {
        // The options must be there too.
        let _: u8 = load(ctx, off + hlen - 1)?;
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    flow.family = FAMILY_V4;
    flow.proto = h[9];
    flow.src = [0; 16];
    flow.dst = [0; 16];
    flow.src[..4].copy_from_slice(&h[12..16]);
    flow.dst[..4].copy_from_slice(&h[16..20]);
    if frag & 0x1fff != 0 {
        flow.fragment = true;
        return Ok(());
    }
    if l4 {
        parse_l4(ctx, flow, off + hlen)
    } else {
        // Quoted header inside an ICMP error: only the ports, if present.
        quoted_ports(ctx, flow, off + hlen);
        Ok(())
    }
}

/// Parse an IPv6 header at `off`, walk its extension headers (bounded), then the
/// transport header.
#[inline(always)]
fn parse_v6(ctx: &TcContext, flow: &mut Flow, off: usize, l4: bool) -> Result<(), Reason> {
    let h: [u8; 40] = load(ctx, off)?;
    if h[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    flow.family = FAMILY_V6;
    flow.src.copy_from_slice(&h[8..24]);
    flow.dst.copy_from_slice(&h[24..40]);
    let mut next = h[6];
    let mut pos = off + 40;
    let mut done = false;
    for _ in 0..MAX_EXT_HDRS {
        match next {
            // Hop-by-hop, routing, destination options: (next, len in 8-octet units - 1).
            0 | 43 | 60 => {
                let hdr: [u8; 2] = load(ctx, pos)?;
                next = hdr[0];
                pos += (hdr[1] as usize + 1) * 8;
            }
            // Fragment header: fixed 8 bytes.
            44 => {
                let hdr: [u8; 4] = load(ctx, pos)?;
                next = hdr[0];
                let offset = u16::from_be_bytes([hdr[2], hdr[3]]) >> 3;
                pos += 8;
                if offset != 0 {
                    flow.proto = next;
                    flow.fragment = true;
                    return Ok(());
                }
            }
            // Authentication header: length in 4-octet units - 2.
            51 => {
                let hdr: [u8; 2] = load(ctx, pos)?;
                next = hdr[0];
                pos += (hdr[1] as usize + 2) * 4;
            }
            _ => {
                done = true;
                break;
            }
        }
    }
    if !done {
        // More extension headers than we walk: refuse rather than guess.
        return Err(Reason::Malformed);
    }
    flow.proto = next;
    if l4 {
        parse_l4(ctx, flow, pos)
    } else {
        quoted_ports(ctx, flow, pos);
        Ok(())
    }
}

#[inline(always)]
fn empty_flow() -> Flow {
    Flow {
        family: 0,
        proto: 0,
        fragment: false,
        icmp_error: false,
        nd: false,
        nd_router: false,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        inner_off: 0,
    }
}

/// Clear the scalar fields; the parsers always write both addresses. Assigning a
/// whole `empty_flow()` compiles to a call of the byte-by-byte `memset`
/// subprogram, which was 16% of the datapath's cycles in `perf`.
#[inline(always)]
fn reset(flow: &mut Flow) {
    flow.family = 0;
    flow.proto = 0;
    flow.fragment = false;
    flow.icmp_error = false;
    flow.nd = false;
    flow.nd_router = false;
    flow.sport = 0;
    flow.dport = 0;
    flow.inner_off = 0;
}

#[inline(always)]
fn scratch(i: u32) -> Option<&'static mut Flow> {
    // SAFETY: per-CPU, and a TC program runs to completion on its CPU.
    SCRATCH.get_ptr_mut(i).map(|p| unsafe { &mut *p })
}

/// Parse the packet into `flow`. Returns `Ok(false)` for non-IP frames (they
/// pass). On error `flow` is reset, so events about malformed packets carry no
/// half-parsed fields.
#[inline(always)]
fn parse(ctx: &TcContext, flow: &mut Flow) -> Result<bool, Reason> {
    reset(flow);
    // The Ethernet header and a fixed IPv4 header in one helper call: the common
    // case. Shorter frames (no room for an IPv4 header) take the slow path.
    let r = match load::<EthV4>(ctx, 0) {
        Ok(b) => match u16::from_be_bytes(b.ethertype) {
            ETH_P_IP => parse_v4_header(ctx, flow, ETH_HLEN, &b.ip, true),
            ETH_P_IPV6 => parse_v6(ctx, flow, ETH_HLEN, true),
            _ => return Ok(false),
        },
        Err(_) => match be16(ctx, 12) {
            Ok(ETH_P_IP) | Ok(ETH_P_IPV6) => Err(Reason::Malformed),
            Ok(_) => return Ok(false),
            Err(e) => Err(e),
        },
    };
    if r.is_err() {
        *flow = empty_flow();
    }
    r.map(|_| true)
}

/// Build a conntrack key (of `f`, or of its reverse) in per-CPU scratch slot
/// `slot` (0: conntrack lookups, 1: `report`'s rate key); keys on the stack cost
/// 48 bytes each of the 512.
#[inline(always)]
fn ct_key(slot: u32, ifindex: u32, f: &Flow, reverse: bool) -> Option<&'static CtKey> {
    let k = SCRATCH_KEY.get_ptr_mut(slot)?;
    // SAFETY: per-CPU scratch, see `scratch`.
    let k = unsafe { &mut *k };
    k.ifindex = ifindex;
    k.family = f.family;
    k.proto = f.proto;
    k._pad0 = [0; 2];
    if reverse {
        k.src = f.dst;
        k.dst = f.src;
        k.sport = f.dport;
        k.dport = f.sport;
    } else {
        k.src = f.src;
        k.dst = f.dst;
        k.sport = f.sport;
        k.dport = f.dport;
    }
    Some(k)
}

/// Is this packet a reply of a flow the other hook of this interface allowed?
#[inline(always)]
fn is_reply(ifindex: u32, f: &Flow, dir: u8) -> bool {
    let Some(key) = ct_key(0, ifindex, f, true) else {
        return false;
    };
    match unsafe { CONNTRACK.get(key) } {
        Some(v) => v.direction != dir,
        None => false,
    }
}

/// An ICMP error quoting a flow tracked on this interface (either way round).
#[inline(always)]
fn icmp_error_of_tracked(ctx: &TcContext, ifindex: u32, f: &Flow) -> bool {
    let Some(inner) = scratch(1) else {
        return false;
    };
    reset(inner);
    let ok = if f.family == FAMILY_V4 {
        parse_v4(ctx, inner, f.inner_off, false)
    } else {
        parse_v6(ctx, inner, f.inner_off, false)
    };
    let inner: &Flow = inner;
    if ok.is_err() {
        return false;
    }
    match ct_key(0, ifindex, inner, false) {
        Some(fwd) if unsafe { CONNTRACK.get(fwd) }.is_some() => return true,
        _ => {}
    }
    match ct_key(0, ifindex, inner, true) {
        Some(rev) => unsafe { CONNTRACK.get(rev) }.is_some(),
        None => false,
    }
}

#[inline(always)]
fn ct_record(ifindex: u32, f: &Flow, dir: u8) {
    if f.fragment {
        return;
    }
    let Some(key) = ct_key(0, ifindex, f, false) else {
        return;
    };
    if unsafe { CONNTRACK.get(key) }.is_some() {
        return;
    }
    let v = CtValue {
        direction: dir,
        _pad0: [0; 7],
        created_ns: unsafe { bpf_ktime_get_ns() },
    };
    // LRU: never fails for lack of room; a racing insert by another CPU is fine.
    let _ = CONNTRACK.insert(key, &v, BPF_NOEXIST);
}

/// The peer-prefix lookup and the entry's port/protocol set.
#[inline(always)]
fn policy_allows(ep: &Endpoint, dir: u8, f: &Flow) -> Verdict {
    let peer = if dir == DIR_INGRESS { &f.src } else { &f.dst };
    let scope = PolicyScope::new(ep.id, dir);
    let value = if f.family == FAMILY_V4 {
        let mut addr = [0u8; 4];
        addr.copy_from_slice(&peer[..4]);
        let key = LpmKey::new(SCOPE_BITS + 32, PolicyKeyV4 { scope, addr });
        POLICY_V4.get(&key)
    } else {
        let key = LpmKey::new(SCOPE_BITS + 128, PolicyKeyV6 { scope, addr: *peer });
        POLICY_V6.get(&key)
    };
    let Some(v) = value else {
        return Verdict::Deny(Reason::NoPolicyAllows);
    };
    if v.flags & PV_ALL != 0 {
        return Verdict::Allow;
    }
    // Every port of the packet's protocol: its PBIT_*, or PBIT_OTHER for a
    // protocol without ports (ICMP and the rest).
    if v.all_ports & all_ports_bit(f.proto) != 0 {
        return Verdict::Allow;
    }
    if f.fragment {
        return Verdict::Deny(Reason::Fragment);
    }
    // A port-less protocol is allowed only by PV_ALL or PBIT_OTHER.
    if proto_bit(f.proto) == 0 {
        return Verdict::Deny(Reason::NoPolicyAllows);
    }
    let port = f.dport;
    let n = v.count as usize;
    for i in 0..MAX_PORT_RANGES {
        if i >= n {
            break;
        }
        let r = &v.ranges[i];
        if r.proto == f.proto && r.first <= port && port <= r.last {
            return Verdict::Allow;
        }
    }
    Verdict::Deny(Reason::NoPolicyAllows)
}

/// Judge one direction of an endpoint's policy (isolation, fail-closed, lookup).
#[inline(always)]
fn judge(ep: &Endpoint, dir: u8, f: &Flow) -> Verdict {
    let isolated = if dir == DIR_INGRESS {
        EP_INGRESS_ISOLATED
    } else {
        EP_EGRESS_ISOLATED
    };
    if ep.flags & isolated == 0 {
        return Verdict::Allow;
    }
    if ep.flags & EP_FAIL_CLOSED != 0 {
        return Verdict::Deny(Reason::FailClosed);
    }
    policy_allows(ep, dir, f)
}

#[inline(always)]
fn count(ep_id: u32, allowed: bool, audit: bool, bytes: u64, lost: bool) {
    if let Some(c) = COUNTERS.get_ptr_mut(&ep_id) {
        let c = unsafe { &mut *c };
        if lost {
            c.events_lost += 1;
        } else if audit {
            c.audit_packets += 1;
            c.allowed_packets += 1;
            c.allowed_bytes += bytes;
        } else if allowed {
            c.allowed_packets += 1;
            c.allowed_bytes += bytes;
        } else {
            c.denied_packets += 1;
            c.denied_bytes += bytes;
        }
    }
}

#[inline(always)]
fn endpoint_budget() -> u32 {
    match CONFIG.get(0) {
        Some(c) if c.endpoint_events_per_sec != 0 => c.endpoint_events_per_sec,
        _ => ENDPOINT_EVENTS_PER_SEC,
    }
}

/// Take one event from the endpoint's budget for this CPU. Returns the number of
/// events throttled in the previous window (to report with this one), or `None`
/// when the budget is spent and the event must be dropped.
#[inline(always)]
fn take_budget(ep_id: u32, now: u64) -> Option<u32> {
    let Some(b) = EVENT_BUDGET.get_ptr_mut(&ep_id) else {
        let b = EventBudget {
            window_ns: now,
            emitted: 1,
            throttled: 0,
        };
        let _ = EVENT_BUDGET.insert(&ep_id, &b, 0);
        return Some(0);
    };
    let b = unsafe { &mut *b };
    let mut carried = 0;
    if now.wrapping_sub(b.window_ns) >= 1_000_000_000 {
        carried = b.throttled;
        b.window_ns = now;
        b.emitted = 0;
        b.throttled = 0;
    }
    if b.emitted >= endpoint_budget() {
        b.throttled = b.throttled.saturating_add(1);
        return None;
    }
    b.emitted += 1;
    Some(carried)
}

#[inline(always)]
fn event_interval() -> u64 {
    match CONFIG.get(0) {
        Some(c) if c.event_interval_ns != 0 => c.event_interval_ns,
        _ => EVENT_INTERVAL_NS,
    }
}

/// Emit a deny/audit event unless this flow already reported one recently.
///
/// A real BPF subprogram (not inlined): its rate-limit key lives in its own frame,
/// which keeps the callers under the verifier's 512-byte combined stack limit on
/// kernels that count whole frames (6.1). At most five arguments, hence `what`.
#[inline(never)]
fn report(ifindex: u32, ep_id: u32, f: &Flow, what: u32) {
    let dir = what as u8;
    let reason = (what >> 8) as u8;
    let audit = what & REPORT_AUDIT != 0;
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(key) = ct_key(1, ifindex, f, false) else {
        return;
    };
    let mut suppressed = 0;
    if let Some(r) = EVENT_RATE.get_ptr_mut(key) {
        let r = unsafe { &mut *r };
        if now.wrapping_sub(r.last_ns) < event_interval() {
            r.suppressed = r.suppressed.saturating_add(1);
            return;
        }
        suppressed = r.suppressed;
        r.suppressed = 0;
        r.last_ns = now;
    } else {
        let v = RateValue {
            last_ns: now,
            suppressed: 0,
            _pad0: 0,
        };
        let _ = EVENT_RATE.insert(key, &v, 0);
    }
    // A flood of ever-new flows passes the per-flow limit; the endpoint's
    // budget bounds it (the dropped count rides on the next event).
    let Some(throttled) = take_budget(ep_id, now) else {
        return;
    };
    // Written field by field into the reserved slot: an Event built on the
    // stack first would cost 72 bytes of the 512-byte stack.
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(ep_id, false, false, 0, true);
        return;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).ts_ns = now;
        (*ev).ifindex = ifindex;
        (*ev).endpoint_id = ep_id;
        (*ev).family = f.family;
        (*ev).proto = f.proto;
        (*ev).direction = dir;
        (*ev).reason = reason;
        (*ev).verdict = if audit { VERDICT_AUDIT } else { VERDICT_DENIED };
        (*ev).flags = if f.fragment { EVF_FRAGMENT } else { 0 };
        (*ev)._pad0 = [0; 2];
        (*ev).suppressed = suppressed;
        (*ev).src = f.src;
        (*ev).dst = f.dst;
        (*ev).sport = f.sport;
        (*ev).dport = f.dport;
        (*ev).throttled = throttled;
    }
    entry.submit(0);
}

const REPORT_AUDIT: u32 = 1 << 16;

/// `report`'s packed direction, reason and audit flag.
#[inline(always)]
fn report_what(dir: u8, reason: Reason, audit: bool) -> u32 {
    dir as u32 | (reason as u32) << 8 | if audit { REPORT_AUDIT } else { 0 }
}

/// Turn a verdict into a TC action, with counters, events and audit mode.
#[inline(always)]
fn finish(ctx: &TcContext, ifindex: u32, ep: &Endpoint, dir: u8, f: &Flow, v: Verdict) -> i32 {
    let bytes = ctx.len() as u64;
    match v {
        Verdict::Allow => {
            count(ep.id, true, false, bytes, false);
            TC_ACT_OK
        }
        Verdict::Deny(reason) => {
            // Audit mode relaxes policy verdicts only; spoofed and malformed
            // packets are not a policy question and stay dropped.
            let auditable = !matches!(reason, Reason::SpoofedSource | Reason::Malformed);
            let audit = auditable && ep.flags & EP_AUDIT != 0;
            report(ifindex, ep.id, f, report_what(dir, reason, audit));
            count(ep.id, false, audit, bytes, false);
            if audit {
                TC_ACT_OK
            } else {
                TC_ACT_SHOT
            }
        }
    }
}

#[inline(always)]
fn ifindex_of(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn mark_of(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).mark }
}

/// Report a drop that happened before the flow could be parsed or the endpoint found.
#[inline(always)]
fn drop_early(ifindex: u32, ep_id: u32, dir: u8, reason: Reason, f: &Flow) -> i32 {
    report(ifindex, ep_id, f, report_what(dir, reason, false));
    count(ep_id, false, false, 0, false);
    TC_ACT_SHOT
}

/// Make the deferred egress decision for a local pod's Service traffic, now that the
/// destination is the backend. Returns `None` when the packet carries no pending
/// decision (or it passed), `Some(action)` when it was dropped.
#[inline(always)]
fn pending_service_egress(ctx: &TcContext, f: &Flow) -> Option<i32> {
    let mark = mark_of(ctx);
    if mark & MARK_SVC_PENDING == 0 {
        return None;
    }
    ctx.set_mark(mark & !MARK_SVC_PENDING);
    let ipk = IpKey {
        family: f.family,
        _pad0: [0; 3],
        addr: f.src,
    };
    let src_if = match unsafe { EP_BY_IP.get(&ipk) } {
        Some(i) => *i,
        None => return Some(drop_early(0, 0, DIR_EGRESS, Reason::Internal, f)),
    };
    let ep = match unsafe { ENDPOINTS.get(&src_if) } {
        Some(e) => e,
        None => {
            return Some(drop_early(
                src_if,
                0,
                DIR_EGRESS,
                Reason::UnknownEndpoint,
                f,
            ))
        }
    };
    let v = judge(&ep, DIR_EGRESS, f);
    match v {
        Verdict::Allow => None,
        v => {
            let act = finish(ctx, src_if, &ep, DIR_EGRESS, f, v);
            if act == TC_ACT_OK {
                None
            } else {
                Some(act)
            }
        }
    }
}

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    let ifindex = ifindex_of(&ctx);
    let Some(flow) = scratch(0) else {
        return TC_ACT_SHOT;
    };
    match parse(&ctx, flow) {
        Ok(true) => {}
        Ok(false) => return TC_ACT_OK,
        Err(r) => {
            let ep_id = unsafe { ENDPOINTS.get(&ifindex) }.map_or(0, |e| e.id);
            return drop_early(ifindex, ep_id, DIR_INGRESS, r, flow);
        }
    }
    let flow: &Flow = flow;
    // Neighbour discovery passes even to a pod not known yet: on a bridge-style
    // node the agent finds an IPv6 pod through the neighbour entry it resolves.
    if flow.nd {
        return TC_ACT_OK;
    }
    let ep = match unsafe { ENDPOINTS.get(&ifindex) } {
        Some(e) => e,
        None => return drop_early(ifindex, 0, DIR_INGRESS, Reason::UnknownEndpoint, flow),
    };
    if let Some(act) = pending_service_egress(&ctx, &flow) {
        return act;
    }
    if is_reply(ifindex, &flow, DIR_INGRESS)
        || (flow.icmp_error && icmp_error_of_tracked(&ctx, ifindex, &flow))
    {
        return finish(&ctx, ifindex, &ep, DIR_INGRESS, &flow, Verdict::Allow);
    }
    let v = if from_own_node(&flow) {
        Verdict::Allow
    } else {
        judge(&ep, DIR_INGRESS, &flow)
    };
    if matches!(v, Verdict::Allow) {
        ct_record(ifindex, &flow, DIR_INGRESS);
    }
    finish(&ctx, ifindex, &ep, DIR_INGRESS, &flow, v)
}

#[inline(always)]
fn from_own_node(f: &Flow) -> bool {
    let k = IpKey {
        family: f.family,
        _pad0: [0; 3],
        addr: f.src,
    };
    unsafe { NODE_ADDRS.get(&k) }.is_some()
}

#[inline(always)]
fn own_address(ep: &Endpoint, f: &Flow) -> bool {
    if f.family == FAMILY_V4 {
        ep.flags & EP_HAS_V4 != 0 && f.src[..4] == ep.ipv4
    } else {
        ep.flags & EP_HAS_V6 != 0 && f.src == ep.ipv6
    }
}

#[inline(always)]
fn is_service(f: &Flow) -> bool {
    let k = ServiceKey {
        family: f.family,
        proto: f.proto,
        port: f.dport,
        addr: f.dst,
    };
    unsafe { SERVICES.get(&k) }.is_some()
}

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    let ifindex = ifindex_of(&ctx);
    let Some(flow) = scratch(0) else {
        return TC_ACT_SHOT;
    };
    match parse(&ctx, flow) {
        Ok(true) => {}
        Ok(false) => return TC_ACT_OK,
        Err(r) => {
            let ep_id = unsafe { ENDPOINTS.get(&ifindex) }.map_or(0, |e| e.id);
            return drop_early(ifindex, ep_id, DIR_EGRESS, r, flow);
        }
    }
    let flow: &Flow = flow;
    let ep = match unsafe { ENDPOINTS.get(&ifindex) } {
        Some(e) => e,
        // A pod not known yet answers its node's neighbour solicitations (how a
        // bridge-style node learns it); router messages are never a pod's.
        None if flow.nd && !flow.nd_router => return TC_ACT_OK,
        None => return drop_early(ifindex, 0, DIR_EGRESS, Reason::UnknownEndpoint, flow),
    };
    // Link-local (fe80::/10) and unspecified (::, duplicate address detection)
    // sources of IPv6 link control messages are the pod's own too; everything else
    // must carry the pod's address. A pod's router advertisement or redirect is
    // spoofed whatever its source.
    let link_local = flow.family == FAMILY_V6
        && ((flow.src[0] == 0xfe && flow.src[1] & 0xc0 == 0x80) || flow.src == [0u8; 16]);
    if flow.nd && !flow.nd_router && (link_local || own_address(&ep, &flow)) {
        return TC_ACT_OK;
    }
    if !own_address(&ep, &flow) {
        return finish(
            &ctx,
            ifindex,
            &ep,
            DIR_EGRESS,
            &flow,
            Verdict::Deny(Reason::SpoofedSource),
        );
    }
    if is_reply(ifindex, &flow, DIR_EGRESS)
        || (flow.icmp_error && icmp_error_of_tracked(&ctx, ifindex, &flow))
    {
        return finish(&ctx, ifindex, &ep, DIR_EGRESS, &flow, Verdict::Allow);
    }
    let v = if ep.flags & EP_EGRESS_ISOLATED != 0 && !flow.fragment && is_service(&flow) {
        // The backend is not known until kube-proxy's DNAT: decide after it, in
        // to_pod (local backend) or svc_egress (anything else).
        ctx.set_mark(mark_of(&ctx) | MARK_SVC_PENDING);
        Verdict::Allow
    } else {
        judge(&ep, DIR_EGRESS, &flow)
    };
    if matches!(v, Verdict::Allow) {
        ct_record(ifindex, &flow, DIR_EGRESS);
    }
    finish(&ctx, ifindex, &ep, DIR_EGRESS, &flow, v)
}

#[classifier]
pub fn svc_egress(ctx: TcContext) -> i32 {
    if mark_of(&ctx) & MARK_SVC_PENDING == 0 {
        return TC_ACT_OK;
    }
    let Some(flow) = scratch(0) else {
        return TC_ACT_SHOT;
    };
    match parse(&ctx, flow) {
        Ok(true) => {}
        Ok(false) => {
            ctx.set_mark(mark_of(&ctx) & !MARK_SVC_PENDING);
            return TC_ACT_OK;
        }
        Err(r) => return drop_early(ifindex_of(&ctx), 0, DIR_EGRESS, r, flow),
    }
    let flow: &Flow = flow;
    match pending_service_egress(&ctx, &flow) {
        Some(act) => act,
        None => TC_ACT_OK,
    }
}

/// Does nothing: the floor the benchmarks measure the other programs against.
#[classifier]
pub fn bench_floor(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
