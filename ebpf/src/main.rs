//! Palisade's TC programs: the entry points.
//!
//! - `to_pod`: TC egress of a pod's host-side veth, i.e. traffic entering the pod
//!   (the pod's ingress policy).
//! - `from_pod`: TC ingress of the host-side veth, i.e. traffic leaving the pod
//!   (the pod's egress policy, anti-spoofing).
//! - `svc_egress`: TC egress of the node's other interfaces; makes the egress
//!   decision for pod traffic to a Service after kube-proxy's DNAT picked the backend.
//!
//! Decision order of `to_pod` ([`hooks::try_to_pod`]):
//! 1. non-IP frames pass; malformed or truncated headers drop;
//! 2. IPv6 neighbour discovery passes (even to a pod not known yet);
//! 3. an interface without an endpoint drops (`unknown-endpoint`);
//! 4. a pending Service egress decision of a local client is made;
//! 5. replies of tracked flows, and ICMP errors quoting them, pass;
//! 6. traffic from the pod's own node passes;
//! 7. a direction the pod is not isolated in passes; a fail-closed endpoint
//!    drops; otherwise the peer-prefix LPM lookup and the entry's protocol/port
//!    set (`entry_verdict`) decide.
//!
//! Decision order of `from_pod` ([`hooks::try_from_pod`]):
//! 1. non-IP frames pass; malformed or truncated headers drop;
//! 2. an interface without an endpoint drops, except neighbour discovery that
//!    is not a router message;
//! 3. neighbour discovery (router messages excepted) from a link-local,
//!    unspecified or the pod's own address passes;
//! 4. any other source than the pod's address drops (`spoofed-source`);
//! 5. replies of tracked flows, and ICMP errors quoting them, pass;
//! 6. an egress-isolated pod's traffic to a Service frontend is marked and its
//!    decision deferred until after DNAT;
//! 7. as step 7 of `to_pod`.
//!
//! `svc_egress` passes unmarked packets and makes the deferred decision for
//! marked ones. Every allowed non-reply packet is judged by policy (withdrawn
//! allows take effect on established flows); conntrack only admits replies.
#![no_std]
#![no_main]

mod conntrack;
mod hooks;
mod maps;
mod parse;
mod report;
mod verdict;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};

/// What a program returns when it cannot judge a packet: fail closed.
const FAIL_ACTION: i32 = TC_ACT_SHOT;

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    match hooks::try_to_pod(&ctx) {
        Ok(v) => v,
        Err(_) => FAIL_ACTION,
    }
}

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    match hooks::try_from_pod(&ctx) {
        Ok(v) => v,
        Err(_) => FAIL_ACTION,
    }
}

#[classifier]
pub fn svc_egress(ctx: TcContext) -> i32 {
    match hooks::try_svc_egress(&ctx) {
        Ok(v) => v,
        Err(_) => FAIL_ACTION,
    }
}

/// Does nothing: the floor the benchmarks measure the other programs against.
#[classifier]
pub fn bench_floor(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
