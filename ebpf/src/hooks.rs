//! The decision sequence of each hook, in the order the module docs of
//! `main.rs` state. Each `try_*` returns the TC action, or `Err(Internal)` when
//! the program cannot judge the packet at all (its scratch space is missing);
//! the entry points turn that into `FAIL_ACTION`.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use palisade_common::{
    AllowReason, IpKey, Reason, DIR_EGRESS, DIR_INGRESS, EP_EGRESS_ISOLATED, FAMILY_V6,
    MARK_SVC_NEW, MARK_SVC_PENDING,
};

use crate::{
    conntrack::{classify, ct_record, icmp_error_of_tracked, Ct},
    maps::{scratch, ENDPOINTS, EP_BY_IP},
    parse::{parse, Flow},
    report::{drop_early, finish, new_flow},
    verdict::{from_own_node, is_service, judge, own_address, Verdict},
};

/// The program could not judge the packet (no scratch space).
pub struct Internal;

#[inline(always)]
fn ifindex_of(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn mark_of(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).mark }
}

/// The opening both veth hooks share: the packet parsed into scratch slot 0.
enum Opened {
    /// Decided already: not IP (passes) or malformed (dropped and reported).
    Done(i32),
    Flow(u32, &'static Flow),
}

#[inline(always)]
fn open_veth(ctx: &TcContext, dir: u8) -> Result<Opened, Internal> {
    let ifindex = ifindex_of(ctx);
    let flow = scratch(0).ok_or(Internal)?;
    match parse(ctx, flow) {
        Ok(true) => Ok(Opened::Flow(ifindex, flow)),
        Ok(false) => Ok(Opened::Done(TC_ACT_OK)),
        Err(r) => {
            let ep_id = unsafe { ENDPOINTS.get(&ifindex) }.map_or(0, |e| e.id);
            Ok(Opened::Done(drop_early(ifindex, ep_id, dir, r, flow)))
        }
    }
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
    ctx.set_mark(mark & !(MARK_SVC_PENDING | MARK_SVC_NEW));
    let ipk = IpKey {
        family: f.family,
        _pad0: 0,
        _pad1: 0,
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
    let v = judge(ep, DIR_EGRESS, f);
    match v {
        Verdict::Allow(r) => {
            if mark & MARK_SVC_NEW != 0 {
                new_flow(src_if, ep.id, DIR_EGRESS, r, f);
            }
            None
        }
        v => {
            let act = finish(ctx, src_if, ep, DIR_EGRESS, f, v);
            if act == TC_ACT_OK {
                None
            } else {
                Some(act)
            }
        }
    }
}

/// Host veth TC egress: the pod's ingress.
#[inline(always)]
pub fn try_to_pod(ctx: &TcContext) -> Result<i32, Internal> {
    let (ifindex, flow) = match open_veth(ctx, DIR_INGRESS)? {
        Opened::Done(act) => return Ok(act),
        Opened::Flow(i, f) => (i, f),
    };
    // Neighbour discovery passes even to a pod not known yet: on a bridge-style
    // node the agent finds an IPv6 pod through the neighbour entry it resolves.
    if flow.nd {
        return Ok(TC_ACT_OK);
    }
    let ep = match unsafe { ENDPOINTS.get(&ifindex) } {
        Some(e) => e,
        None => {
            return Ok(drop_early(
                ifindex,
                0,
                DIR_INGRESS,
                Reason::UnknownEndpoint,
                flow,
            ))
        }
    };
    if let Some(act) = pending_service_egress(ctx, flow) {
        return Ok(act);
    }
    let ct = classify(ifindex, ep.id, flow, DIR_INGRESS);
    if ct == Ct::Reply || (flow.icmp_error && icmp_error_of_tracked(ctx, ifindex, flow)) {
        let reply = Verdict::Allow(AllowReason::Reply);
        return Ok(finish(ctx, ifindex, ep, DIR_INGRESS, flow, reply));
    }
    let v = if from_own_node(flow) {
        Verdict::Allow(AllowReason::Node)
    } else {
        judge(ep, DIR_INGRESS, flow)
    };
    if let Verdict::Allow(r) = v {
        if ct == Ct::New && ct_record(ifindex, flow, DIR_INGRESS) {
            new_flow(ifindex, ep.id, DIR_INGRESS, r, flow);
        }
    }
    Ok(finish(ctx, ifindex, ep, DIR_INGRESS, flow, v))
}

/// Host veth TC ingress: the pod's egress, and anti-spoofing.
#[inline(always)]
pub fn try_from_pod(ctx: &TcContext) -> Result<i32, Internal> {
    let (ifindex, flow) = match open_veth(ctx, DIR_EGRESS)? {
        Opened::Done(act) => return Ok(act),
        Opened::Flow(i, f) => (i, f),
    };
    let ep = match unsafe { ENDPOINTS.get(&ifindex) } {
        Some(e) => e,
        // A pod not known yet answers its node's neighbour solicitations (how a
        // bridge-style node learns it); router messages are never a pod's.
        None if flow.nd && !flow.nd_router => return Ok(TC_ACT_OK),
        None => {
            return Ok(drop_early(
                ifindex,
                0,
                DIR_EGRESS,
                Reason::UnknownEndpoint,
                flow,
            ))
        }
    };
    // Link-local (fe80::/10) and unspecified (::, duplicate address detection)
    // sources of IPv6 link control messages are the pod's own too; everything else
    // must carry the pod's address. A pod's router advertisement or redirect is
    // spoofed whatever its source.
    let link_local = flow.family == FAMILY_V6
        && ((flow.src[0] == 0xfe && flow.src[1] & 0xc0 == 0x80) || flow.src == [0u8; 16]);
    if flow.nd && !flow.nd_router && (link_local || own_address(ep, flow)) {
        return Ok(TC_ACT_OK);
    }
    if !own_address(ep, flow) {
        let spoofed = Verdict::Deny(Reason::SpoofedSource);
        return Ok(finish(ctx, ifindex, ep, DIR_EGRESS, flow, spoofed));
    }
    let ct = classify(ifindex, ep.id, flow, DIR_EGRESS);
    if ct == Ct::Reply || (flow.icmp_error && icmp_error_of_tracked(ctx, ifindex, flow)) {
        let reply = Verdict::Allow(AllowReason::Reply);
        return Ok(finish(ctx, ifindex, ep, DIR_EGRESS, flow, reply));
    }
    let v = if ep.flags & EP_EGRESS_ISOLATED != 0 && !flow.fragment && is_service(flow) {
        // The backend is not known until kube-proxy's DNAT: decide after it, in
        // to_pod (local backend) or svc_egress (anything else).
        ctx.set_mark(mark_of(ctx) | MARK_SVC_PENDING);
        Verdict::Allow(AllowReason::ServiceDeferred)
    } else {
        judge(ep, DIR_EGRESS, flow)
    };
    if let Verdict::Allow(r) = v {
        if ct == Ct::New && ct_record(ifindex, flow, DIR_EGRESS) {
            if matches!(r, AllowReason::ServiceDeferred) {
                // Reported once decided, against the backend.
                ctx.set_mark(mark_of(ctx) | MARK_SVC_NEW);
            } else {
                new_flow(ifindex, ep.id, DIR_EGRESS, r, flow);
            }
        }
    }
    Ok(finish(ctx, ifindex, ep, DIR_EGRESS, flow, v))
}

/// TC egress of the node's other interfaces: the deferred Service egress
/// decision, against the backend kube-proxy chose.
#[inline(always)]
pub fn try_svc_egress(ctx: &TcContext) -> Result<i32, Internal> {
    if mark_of(ctx) & MARK_SVC_PENDING == 0 {
        return Ok(TC_ACT_OK);
    }
    let flow = scratch(0).ok_or(Internal)?;
    match parse(ctx, flow) {
        Ok(true) => {}
        Ok(false) => {
            ctx.set_mark(mark_of(ctx) & !MARK_SVC_PENDING);
            return Ok(TC_ACT_OK);
        }
        Err(r) => return Ok(drop_early(ifindex_of(ctx), 0, DIR_EGRESS, r, flow)),
    }
    let flow: &Flow = flow;
    Ok(pending_service_egress(ctx, flow).unwrap_or(TC_ACT_OK))
}
