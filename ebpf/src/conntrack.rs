//! Connection tracking: flows a hook allowed are recorded per interface, so
//! their replies and ICMP errors quoting them pass the other hook. Conntrack only
//! admits replies; every new packet is judged by policy.
//!
//! One key per connection in canonical order (`palisade_common::conntrack`),
//! so a packet's one lookup tells a reply from a tracked flow's own packet and
//! from a new flow. Two LRU tables per family: a new flow is recorded in the
//! unanswered table, and its first reply moves it to the confirmed one, within
//! the endpoint's confirmation budget (`CtQuota`). A pod flooding new flows,
//! answered or not, churns the unanswered table; the confirmed one turns over
//! at the budget's rate at most.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::LruHashMap, programs::TcContext};
use palisade_common::{CtKeyV4, CtKeyV6, CtValue, CT_CONFIRM_PER_SEC, CT_ORIGIN_LO, FAMILY_V4};

use crate::{
    maps::{scratch, CONFIG, CT4, CT4_NEW, CT6, CT6_NEW, CT_QUOTA},
    parse::{parse_v4, parse_v6, reset, Flow},
};

/// `BPF_NOEXIST`: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// What conntrack knows of a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ct {
    /// A reply of a connection the other hook allowed.
    Reply,
    /// A packet of a tracked connection that is not its reply (judged by policy).
    Tracked,
    /// Not tracked.
    New,
}

#[inline(always)]
fn v4_key(ifindex: u32, f: &Flow) -> (CtKeyV4, bool) {
    let mut src = [0u8; 4];
    let mut dst = [0u8; 4];
    src.copy_from_slice(&f.src[..4]);
    dst.copy_from_slice(&f.dst[..4]);
    CtKeyV4::of(ifindex, f.proto, src, f.sport, dst, f.dport)
}

/// On the stack (44 bytes): copied from the scratch flow into a frame LLVM
/// knows is separate, so the copy is inline, not a `memmove` call.
#[inline(always)]
fn v6_key(ifindex: u32, f: &Flow) -> (CtKeyV6, bool) {
    CtKeyV6::of(ifindex, f.proto, &f.src, f.sport, &f.dst, f.dport)
}

/// Whether endpoint `ep_id` may confirm one more connection now.
#[inline(always)]
fn may_confirm(ep_id: u32) -> bool {
    let rate = match CONFIG.get(0) {
        Some(c) if c.ct_confirm_per_sec != 0 => c.ct_confirm_per_sec,
        _ => CT_CONFIRM_PER_SEC,
    };
    match CT_QUOTA.get_ptr_mut(ep_id) {
        // SAFETY: per-CPU, and a TC program runs to completion on its CPU.
        Some(q) => unsafe { &mut *q }.take(unsafe { bpf_ktime_get_ns() }, rate),
        None => true,
    }
}

/// Look `key` up in the confirmed table, then the unanswered one; a reply
/// found in the unanswered table confirms its connection if endpoint
/// `ep_id`'s budget allows (else it stays unanswered, its replies passing).
#[inline(always)]
fn classify_in<K>(
    confirmed: &LruHashMap<K, CtValue>,
    unanswered: &LruHashMap<K, CtValue>,
    key: &K,
    lo: bool,
    dir: u8,
    ep_id: u32,
) -> Ct {
    if let Some(v) = unsafe { confirmed.get(key) } {
        return if v.is_reply(lo, dir) {
            Ct::Reply
        } else {
            Ct::Tracked
        };
    }
    match unsafe { unanswered.get(key) } {
        Some(v) if v.is_reply(lo, dir) => {
            // Should the move fail, the entry stays unconfirmed: its replies
            // pass while it lives.
            if may_confirm(ep_id) {
                let v = *v;
                let _ = confirmed.insert(key, &v, 0);
                let _ = unanswered.remove(key);
            }
            Ct::Reply
        }
        Some(_) => Ct::Tracked,
        None => Ct::New,
    }
}

/// What conntrack knows of packet `f` seen by hook `dir` on `ifindex`, the
/// interface of endpoint `ep_id`.
#[inline(always)]
pub fn classify(ifindex: u32, ep_id: u32, f: &Flow, dir: u8) -> Ct {
    if f.family == FAMILY_V4 {
        let (k, lo) = v4_key(ifindex, f);
        classify_in(&CT4, &CT4_NEW, &k, lo, dir, ep_id)
    } else {
        let (k, lo) = v6_key(ifindex, f);
        classify_in(&CT6, &CT6_NEW, &k, lo, dir, ep_id)
    }
}

/// Is `key` tracked, confirmed or not?
#[inline(always)]
fn tracked_in<K>(
    confirmed: &LruHashMap<K, CtValue>,
    unanswered: &LruHashMap<K, CtValue>,
    key: &K,
) -> bool {
    unsafe { confirmed.get(key) }.is_some() || unsafe { unanswered.get(key) }.is_some()
}

/// An ICMP error quoting a flow tracked on this interface (either way round:
/// both are the same key).
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
    if inner.family == FAMILY_V4 {
        let (k, _) = v4_key(ifindex, inner);
        tracked_in(&CT4, &CT4_NEW, &k)
    } else {
        let (k, _) = v6_key(ifindex, inner);
        tracked_in(&CT6, &CT6_NEW, &k)
    }
}

/// Record a new allowed flow in the unanswered table. Returns whether this
/// packet created the entry (a racing insert by another CPU is fine: that
/// CPU's packet is the new connection's first).
#[inline(always)]
pub fn ct_record(ifindex: u32, f: &Flow, dir: u8) -> bool {
    if f.fragment {
        return false;
    }
    let value = |lo: bool| CtValue {
        direction: dir,
        origin: if lo { CT_ORIGIN_LO } else { 0 },
        _pad0: 0,
        _pad1: 0,
        created_ns: unsafe { bpf_ktime_get_ns() },
    };
    // LRU: never fails for lack of room.
    if f.family == FAMILY_V4 {
        let (k, lo) = v4_key(ifindex, f);
        CT4_NEW.insert(&k, &value(lo), BPF_NOEXIST).is_ok()
    } else {
        let (k, lo) = v6_key(ifindex, f);
        CT6_NEW.insert(&k, &value(lo), BPF_NOEXIST).is_ok()
    }
}
