//! Connection tracking: flows a hook allowed are recorded per interface, so
//! their replies and ICMP errors quoting them pass the other hook. Conntrack only
//! admits replies; every new packet is judged by policy.
//!
//! Two LRU tables: a new flow is recorded in `CT_NEW`, and its first reply moves
//! it to `CONNTRACK` (confirmed). A pod flooding new flows that nobody answers
//! churns `CT_NEW` only; confirmed connections are never evicted by it.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use palisade_common::{CtKey, CtValue, FAMILY_V4};

use crate::{
    maps::{scratch, scratch_key, CONNTRACK, CT_NEW},
    parse::{parse_v4, parse_v6, reset, Flow},
};

/// `BPF_NOEXIST`: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// Build a conntrack key (of `f`, or of its reverse) in per-CPU scratch slot
/// `slot` (0: conntrack lookups, 1: `report`'s rate key); keys on the stack cost
/// 48 bytes each of the 512.
#[inline(always)]
pub fn ct_key(slot: u32, ifindex: u32, f: &Flow, reverse: bool) -> Option<&'static CtKey> {
    let k = scratch_key(slot)?;
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
pub fn is_reply(ifindex: u32, f: &Flow, dir: u8) -> bool {
    let Some(key) = ct_key(0, ifindex, f, true) else {
        return false;
    };
    if let Some(v) = unsafe { CONNTRACK.get(key) } {
        return v.direction != dir;
    }
    match unsafe { CT_NEW.get(key) } {
        Some(v) if v.direction != dir => {
            // The first reply confirms the connection. Should the move fail,
            // the entry stays unconfirmed: its replies pass while it lives.
            let v = *v;
            let _ = CONNTRACK.insert(key, &v, 0);
            let _ = CT_NEW.remove(key);
            true
        }
        _ => false,
    }
}

/// Is `key` tracked, confirmed or not?
#[inline(always)]
fn tracked(key: &CtKey) -> bool {
    unsafe { CONNTRACK.get(key) }.is_some() || unsafe { CT_NEW.get(key) }.is_some()
}

/// An ICMP error quoting a flow tracked on this interface (either way round).
#[inline(always)]
pub fn icmp_error_of_tracked(ctx: &TcContext, ifindex: u32, f: &Flow) -> bool {
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
        Some(fwd) if tracked(fwd) => return true,
        _ => {}
    }
    match ct_key(0, ifindex, inner, true) {
        Some(rev) => tracked(rev),
        None => false,
    }
}

#[inline(always)]
pub fn ct_record(ifindex: u32, f: &Flow, dir: u8) -> bool {
    if f.fragment {
        return false;
    }
    let Some(key) = ct_key(0, ifindex, f, false) else {
        return false;
    };
    if tracked(key) {
        return false;
    }
    let v = CtValue {
        direction: dir,
        _pad0: [0; 7],
        created_ns: unsafe { bpf_ktime_get_ns() },
    };
    // LRU: never fails for lack of room; a racing insert by another CPU is
    // fine (that CPU's packet is the new connection's first).
    CT_NEW.insert(key, &v, BPF_NOEXIST).is_ok()
}
