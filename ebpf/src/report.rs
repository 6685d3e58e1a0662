//! Verdicts into TC actions: per-endpoint counters, node-wide statistics by
//! direction, verdict and reason, audit mode, and events (denies, audits, and
//! new allowed flows when asked for) under the per-flow rate limit and the
//! per-endpoint budget.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use palisade_common::{
    stat_slot, AllowReason, Endpoint, Event, EventBudget, FlowKey, RateValue, Reason, CFG_FLOW_ALL,
    CFG_FLOW_NEW, ENDPOINT_EVENTS_PER_SEC, EP_AUDIT, EVENT_INTERVAL_NS, EVF_FRAGMENT, STAT_ALLOWED,
    STAT_AUDIT, STAT_DENIED, VERDICT_ALLOWED, VERDICT_AUDIT, VERDICT_DENIED,
};

use crate::{
    maps::{scratch_key, CONFIG, COUNTERS, EVENTS, EVENT_BUDGET, EVENT_RATE, STATS},
    parse::Flow,
    verdict::Verdict,
};

/// Adds a packet to the node-wide statistics.
#[inline(always)]
fn stat(dir: u8, verdict: u32, reason: u8, bytes: u64) {
    if let Some(s) = STATS.get_ptr_mut(stat_slot(dir, verdict, reason)) {
        // SAFETY: per-CPU, and a TC program runs to completion on its CPU.
        let s = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += bytes;
    }
}

#[inline(always)]
fn count(ep_id: u32, allowed: bool, audit: bool, bytes: u64, lost: bool) {
    // Slot 0 is no endpoint: not counted.
    if ep_id == 0 {
        return;
    }
    if let Some(c) = COUNTERS.get_ptr_mut(ep_id) {
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
    let allowed = what & REPORT_ALLOWED != 0;
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(key) = scratch_key() else {
        return;
    };
    key.ifindex = ifindex;
    key.family = f.family;
    key.proto = f.proto;
    key._pad0 = 0;
    key.src = f.src;
    key.dst = f.dst;
    key.sport = f.sport;
    key.dport = f.dport;
    let key: &FlowKey = key;
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
        (*ev).verdict = if allowed {
            VERDICT_ALLOWED
        } else if audit {
            VERDICT_AUDIT
        } else {
            VERDICT_DENIED
        };
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
const REPORT_ALLOWED: u32 = 1 << 17;

/// `report`'s packed direction, reason and audit flag.
#[inline(always)]
fn report_what(dir: u8, reason: Reason, audit: bool) -> u32 {
    dir as u32 | (reason as u32) << 8 | if audit { REPORT_AUDIT } else { 0 }
}

/// Turn a verdict into a TC action, with counters, events and audit mode.
#[inline(always)]
pub fn finish(ctx: &TcContext, ifindex: u32, ep: &Endpoint, dir: u8, f: &Flow, v: Verdict) -> i32 {
    let bytes = ctx.len() as u64;
    match v {
        Verdict::Allow(r) => {
            count(ep.id, true, false, bytes, false);
            stat(dir, STAT_ALLOWED, r as u8, bytes);
            TC_ACT_OK
        }
        Verdict::Deny(reason) => {
            // Audit mode relaxes policy verdicts only; spoofed and malformed
            // packets are not a policy question and stay dropped.
            let auditable = !matches!(reason, Reason::SpoofedSource | Reason::Malformed);
            let audit = auditable && ep.flags & EP_AUDIT != 0;
            report(ifindex, ep.id, f, report_what(dir, reason, audit));
            count(ep.id, false, audit, bytes, false);
            let verdict = if audit { STAT_AUDIT } else { STAT_DENIED };
            stat(dir, verdict, reason as u8, bytes);
            if audit {
                TC_ACT_OK
            } else {
                TC_ACT_SHOT
            }
        }
    }
}

/// Report a drop that happened before the flow could be parsed or the endpoint found.
#[inline(always)]
pub fn drop_early(ifindex: u32, ep_id: u32, dir: u8, reason: Reason, f: &Flow) -> i32 {
    report(ifindex, ep_id, f, report_what(dir, reason, false));
    count(ep_id, false, false, 0, false);
    stat(dir, STAT_DENIED, reason as u8, 0);
    TC_ACT_SHOT
}

/// Reports the first packet of a new allowed connection when flow events are
/// on (`CFG_FLOW_NEW`; with `CFG_FLOW_ALL` also where the pod is not
/// isolated), through the same limits as denies.
#[inline(always)]
pub fn new_flow(ifindex: u32, ep_id: u32, dir: u8, reason: AllowReason, f: &Flow) {
    let flags = match CONFIG.get(0) {
        Some(c) => c.flags,
        None => return,
    };
    let wanted = match reason {
        AllowReason::NotIsolated => flags & CFG_FLOW_ALL != 0,
        _ => flags & (CFG_FLOW_NEW | CFG_FLOW_ALL) != 0,
    };
    if wanted {
        let what = dir as u32 | (reason as u32) << 8 | REPORT_ALLOWED;
        report(ifindex, ep_id, f, what);
    }
}
