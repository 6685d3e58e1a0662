//! Policy verdicts: isolation and fail-closed per direction, the peer-prefix
//! LPM lookup, and the entry's protocol/port test (`palisade_common`'s
//! `entry_verdict`, the one the engine's encoder also uses); plus the address
//! tests the hooks make before policy (own node, own address, Service frontend).

use aya_ebpf::maps::lpm_trie::Key as LpmKey;
use palisade_common::{
    entry_verdict, AllowReason, Endpoint, EntryVerdict, IpKey, PolicyKeyV4, PolicyKeyV6,
    PolicyScope, Reason, ServiceKey, DIR_INGRESS, EP_EGRESS_ISOLATED, EP_FAIL_CLOSED, EP_HAS_V4,
    EP_HAS_V6, EP_INGRESS_ISOLATED, FAMILY_V4, SCOPE_BITS,
};

use crate::{
    maps::{NODE_ADDRS, POLICY_HOST_V4, POLICY_HOST_V6, POLICY_V4, POLICY_V6, SERVICES},
    parse::Flow,
};

pub enum Verdict {
    Allow(AllowReason),
    Deny(Reason),
}

/// The peer-prefix lookup and the entry's port/protocol set. The host-entry
/// hash first: a full-length entry is the longest prefix, so the trie would
/// answer the same; only peers without one walk the trie.
#[inline(always)]
fn policy_allows(ep: &Endpoint, dir: u8, f: &Flow) -> Verdict {
    let peer = if dir == DIR_INGRESS { &f.src } else { &f.dst };
    let scope = PolicyScope::new(ep.id, dir);
    let value = if f.family == FAMILY_V4 {
        let mut addr = [0u8; 4];
        addr.copy_from_slice(&peer[..4]);
        let key = PolicyKeyV4 { scope, addr };
        match unsafe { POLICY_HOST_V4.get(&key) } {
            Some(v) => Some(v),
            None => POLICY_V4.get(&LpmKey::new(SCOPE_BITS + 32, key)),
        }
    } else {
        let key = PolicyKeyV6 { scope, addr: *peer };
        match unsafe { POLICY_HOST_V6.get(&key) } {
            Some(v) => Some(v),
            None => POLICY_V6.get(&LpmKey::new(SCOPE_BITS + 128, key)),
        }
    };
    let Some(v) = value else {
        return Verdict::Deny(Reason::NoPolicyAllows);
    };
    let port = if f.fragment { None } else { Some(f.dport) };
    match entry_verdict(v, f.proto, port) {
        EntryVerdict::Allow => Verdict::Allow(AllowReason::Policy),
        EntryVerdict::Deny(reason) => Verdict::Deny(reason),
        EntryVerdict::DenyFragment => Verdict::Deny(Reason::Fragment),
    }
}

/// Judge one direction of an endpoint's policy (isolation, fail-closed, lookup).
#[inline(always)]
pub fn judge(ep: &Endpoint, dir: u8, f: &Flow) -> Verdict {
    let isolated = if dir == DIR_INGRESS {
        EP_INGRESS_ISOLATED
    } else {
        EP_EGRESS_ISOLATED
    };
    if ep.flags & isolated == 0 {
        return Verdict::Allow(AllowReason::NotIsolated);
    }
    if ep.flags & EP_FAIL_CLOSED != 0 {
        return Verdict::Deny(Reason::FailClosed);
    }
    policy_allows(ep, dir, f)
}

/// The source is one of this node's own addresses (the kubelet's probes).
#[inline(always)]
pub fn from_own_node(f: &Flow) -> bool {
    let k = IpKey {
        family: f.family,
        _pad0: 0,
        _pad1: 0,
        addr: f.src,
    };
    unsafe { NODE_ADDRS.get(&k) }.is_some()
}

/// The source is the pod's own address of the packet's family.
#[inline(always)]
pub fn own_address(ep: &Endpoint, f: &Flow) -> bool {
    if f.family == FAMILY_V4 {
        ep.flags & EP_HAS_V4 != 0 && f.src[..4] == ep.ipv4
    } else {
        ep.flags & EP_HAS_V6 != 0 && f.src == ep.ipv6
    }
}

/// The destination is a Service frontend (ClusterIP, protocol, port).
#[inline(always)]
pub fn is_service(f: &Flow) -> bool {
    let k = ServiceKey {
        family: f.family,
        proto: f.proto,
        port: f.dport,
        addr: f.dst,
    };
    unsafe { SERVICES.get(&k) }.is_some()
}
