//! Encoding: desired state to the ABI map entries of `palisade-common`, with exact
//! longest-prefix semantics, and [`MapSet::lookup`], the datapath's decision over
//! those entries.
//!
//! LPM exactness: for one endpoint and direction, let P be the set of every grant
//! network and every `except` network. For an address `a`, the prefixes of P that
//! contain `a` form a chain; let `p` be the longest. A grant contains `a` iff its
//! network contains `p` and none of its excepts contains `p` (every grant network and
//! except is in P, and a prefix of P containing `a` contains `p`). So writing, for
//! each `p` in P, the union of the grants that contain `p` in this sense gives every
//! address exactly the union of what applies to it; an except hole gets an entry
//! with what other grants still allow there, possibly nothing. Entries equal to what
//! the nearest kept ancestor already gives are dropped (no change for any address),
//! and so are empty entries without an ancestor (a miss denies too).
//!
//! No truncation: a value needing more than `MAX_PORT_RANGES` ranges makes the whole
//! endpoint fail closed (`EP_FAIL_CLOSED`, no policy entries) and is reported in
//! [`MapSet::overflow`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use palisade_common::{
    entry_verdict, Endpoint, EntryVerdict, PolicyKeyV4, PolicyKeyV6, PolicyScope, PolicyValue,
    PortRange, Reason, ServiceKey, DIR_EGRESS, DIR_INGRESS, ENDPOINT_PAD, EP_AUDIT,
    EP_EGRESS_ISOLATED, EP_FAIL_CLOSED, EP_HAS_V4, EP_HAS_V6, EP_INGRESS_ISOLATED, FAMILY_V4,
    FAMILY_V6, MAX_PORT_RANGES, PV_ALL, SCOPE_BITS,
};

use crate::desired::{Desired, DesiredEndpoint, Grant, ServiceFrontend};
use crate::object::PodKey;
use crate::portset::PortSet;

/// Everything the agent writes into the maps for one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapSet {
    /// By pod; the agent maps the pod to its veth ifindex when writing.
    pub endpoints: BTreeMap<PodKey, Endpoint>,
    /// `(LPM prefix length including SCOPE_BITS, key)`.
    pub policy_v4: BTreeMap<(u32, PolicyKeyV4), PolicyValue>,
    pub policy_v6: BTreeMap<(u32, PolicyKeyV6), PolicyValue>,
    pub services: BTreeSet<ServiceKey>,
    /// Endpoints whose rules did not fit, with the reason: fail closed, no entries.
    pub overflow: Vec<(PodKey, String)>,
}

/// The entries of one endpoint, for both families and directions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointEntries {
    pub endpoint: Endpoint,
    pub v4: BTreeMap<(u32, PolicyKeyV4), PolicyValue>,
    pub v6: BTreeMap<(u32, PolicyKeyV6), PolicyValue>,
    pub overflow: Option<String>,
}

/// Encode the desired state. Pods without an id in `ids` are left out (the agent
/// assigns an id to every local pod it has a veth for).
pub fn encode(desired: &Desired, ids: &BTreeMap<PodKey, u32>, audit: bool) -> MapSet {
    let mut out = MapSet {
        services: encode_services(&desired.services),
        ..Default::default()
    };
    for (pod, ep) in &desired.endpoints {
        let Some(&id) = ids.get(pod) else { continue };
        let e = encode_endpoint(ep, id, audit);
        out.add_endpoint(pod, e);
    }
    out
}

impl MapSet {
    pub(crate) fn add_endpoint(&mut self, pod: &PodKey, e: EndpointEntries) {
        self.endpoints.insert(pod.clone(), e.endpoint);
        self.policy_v4.extend(e.v4);
        self.policy_v6.extend(e.v6);
        if let Some(msg) = e.overflow {
            self.overflow.push((pod.clone(), msg));
        }
    }

    /// Exactly the datapath's decision for a packet judged at `endpoint` in `dir`
    /// (`DIR_INGRESS`: `peer` is the source; `DIR_EGRESS`: the destination).
    /// `port` is `None` for a non-first fragment. The node rule (ingress from the
    /// pod's own node) is applied by the datapath before this and is not encoded.
    pub fn lookup(
        &self,
        endpoint: &Endpoint,
        dir: u8,
        peer: IpAddr,
        proto: u8,
        port: Option<u16>,
    ) -> bool {
        self.judge(endpoint, dir, peer, proto, port).is_ok()
    }

    /// As [`MapSet::lookup`], with the reason the datapath reports for a drop.
    pub fn judge(
        &self,
        endpoint: &Endpoint,
        dir: u8,
        peer: IpAddr,
        proto: u8,
        port: Option<u16>,
    ) -> Result<(), Reason> {
        let iso = if dir == DIR_INGRESS {
            EP_INGRESS_ISOLATED
        } else {
            EP_EGRESS_ISOLATED
        };
        if endpoint.flags & iso == 0 {
            return Ok(());
        }
        if endpoint.flags & EP_FAIL_CLOSED != 0 {
            return Err(Reason::FailClosed);
        }
        let scope = PolicyScope::new(endpoint.id, dir);
        let value = match peer {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                (0..=32u32).rev().find_map(|plen| {
                    let masked = if plen == 0 {
                        0
                    } else {
                        bits & (u32::MAX << (32 - plen))
                    };
                    let key = PolicyKeyV4 {
                        scope,
                        addr: masked.to_be_bytes(),
                    };
                    self.policy_v4.get(&(SCOPE_BITS + plen, key))
                })
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                (0..=128u32).rev().find_map(|plen| {
                    let masked = if plen == 0 {
                        0
                    } else {
                        bits & (u128::MAX << (128 - plen))
                    };
                    let key = PolicyKeyV6 {
                        scope,
                        addr: masked.to_be_bytes(),
                    };
                    self.policy_v6.get(&(SCOPE_BITS + plen, key))
                })
            }
        };
        match value.map(|v| entry_verdict(v, proto, port)) {
            None => Err(Reason::NoPolicyAllows),
            Some(EntryVerdict::Allow) => Ok(()),
            Some(EntryVerdict::Deny(r)) => Err(r),
            Some(EntryVerdict::DenyFragment) => Err(Reason::Fragment),
        }
    }
}

/// The datapath's test of one entry's value ([`entry_verdict`], the function the
/// TC programs call).
pub fn value_allows(v: &PolicyValue, proto: u8, port: Option<u16>) -> bool {
    entry_verdict(v, proto, port) == EntryVerdict::Allow
}

pub(crate) fn encode_services(s: &BTreeSet<ServiceFrontend>) -> BTreeSet<ServiceKey> {
    s.iter()
        .map(|f| {
            let (family, addr) = match f.ip {
                IpAddr::V4(a) => {
                    let mut b = [0u8; 16];
                    b[..4].copy_from_slice(&a.octets());
                    (FAMILY_V4, b)
                }
                IpAddr::V6(a) => (FAMILY_V6, a.octets()),
            };
            ServiceKey {
                family,
                proto: f.proto,
                port: f.port,
                addr,
            }
        })
        .collect()
}

/// Encode one endpoint with id `id`.
pub fn encode_endpoint(ep: &DesiredEndpoint, id: u32, audit: bool) -> EndpointEntries {
    let mut flags = 0;
    if ep.ingress_isolated {
        flags |= EP_INGRESS_ISOLATED;
    }
    if ep.egress_isolated {
        flags |= EP_EGRESS_ISOLATED;
    }
    if audit {
        flags |= EP_AUDIT;
    }
    if ep.ipv4.is_some() {
        flags |= EP_HAS_V4;
    }
    if ep.ipv6.is_some() {
        flags |= EP_HAS_V6;
    }
    let mut out = EndpointEntries {
        endpoint: Endpoint {
            id,
            flags,
            ipv4: ep.ipv4.map(|a| a.octets()).unwrap_or_default(),
            _pad0: [0; ENDPOINT_PAD],
            ipv6: ep.ipv6.map(|a| a.octets()).unwrap_or_default(),
        },
        ..Default::default()
    };
    let dirs = [
        (DIR_INGRESS, ep.ingress_isolated, &ep.ingress.grants),
        (DIR_EGRESS, ep.egress_isolated, &ep.egress.grants),
    ];
    for (dir, isolated, grants) in dirs {
        if !isolated {
            continue;
        }
        let scope = PolicyScope::new(id, dir);
        for (net, ports) in lpm_entries(grants) {
            let value = match to_value(&ports) {
                Ok(v) => v,
                Err(n) => {
                    out.endpoint.flags |= EP_FAIL_CLOSED;
                    out.v4.clear();
                    out.v6.clear();
                    let d = if dir == DIR_INGRESS {
                        "ingress"
                    } else {
                        "egress"
                    };
                    out.overflow = Some(format!(
                        "{d} entry for {net} needs {n} port ranges, more than {MAX_PORT_RANGES}: endpoint fails closed"
                    ));
                    return out;
                }
            };
            let plen = SCOPE_BITS + u32::from(net.prefix_len());
            match net {
                IpNet::V4(n) => {
                    out.v4.insert(
                        (
                            plen,
                            PolicyKeyV4 {
                                scope,
                                addr: n.network().octets(),
                            },
                        ),
                        value,
                    );
                }
                IpNet::V6(n) => {
                    out.v6.insert(
                        (
                            plen,
                            PolicyKeyV6 {
                                scope,
                                addr: n.network().octets(),
                            },
                        ),
                        value,
                    );
                }
            }
        }
    }
    out
}

/// The port set as an ABI value, or the number of ranges when they do not fit.
pub fn to_value(p: &PortSet) -> Result<PolicyValue, usize> {
    let mut v = PolicyValue::default();
    if p.all {
        v.flags = PV_ALL;
        return Ok(v);
    }
    v.all_ports = p.all_ports;
    v.deny_reason = p.deny.default;
    v.other_reason = p.deny.other;
    // Allowed ranges first: the first range containing a port decides.
    let n = p.ranges.len() + p.deny.ranges.len();
    if n > MAX_PORT_RANGES {
        return Err(n);
    }
    let ranges = p
        .ranges
        .iter()
        .map(|&(proto, first, last)| (proto, first, last, 0))
        .chain(p.deny.ranges.iter().copied());
    for (slot, (proto, first, last, reason)) in v.ranges.iter_mut().zip(ranges) {
        *slot = PortRange {
            proto,
            reason,
            first,
            last,
            _pad1: 0,
        };
    }
    // Fits: checked against MAX_PORT_RANGES (24) above.
    v.count = n as u8;
    Ok(v)
}

/// Sort key putting every prefix before the prefixes it contains.
pub(crate) fn net_order(n: &IpNet) -> (u8, u128, u8) {
    match n {
        IpNet::V4(v) => (4, u128::from(u32::from(v.network())), v.prefix_len()),
        IpNet::V6(v) => (6, u128::from(v.network()), v.prefix_len()),
    }
}

/// LPM entries (network, allowed ports) giving every address exactly the union of
/// the grants containing it (see the module docs for why this is exact).
pub fn lpm_entries(grants: &[Grant]) -> Vec<(IpNet, PortSet)> {
    // Per prefix: grants whose network it is, grants for which it is an except.
    type Node = (IpNet, Vec<usize>, Vec<usize>);
    let mut nodes: BTreeMap<(u8, u128, u8), Node> = BTreeMap::new();
    for (i, g) in grants.iter().enumerate() {
        let net = g.net.trunc();
        nodes
            .entry(net_order(&net))
            .or_insert_with(|| (net, Vec::new(), Vec::new()))
            .1
            .push(i);
        for e in &g.except {
            let e = e.trunc();
            nodes
                .entry(net_order(&e))
                .or_insert_with(|| (e, Vec::new(), Vec::new()))
                .2
                .push(i);
        }
    }
    struct Frame {
        net: IpNet,
        active: Vec<usize>,
        value: PortSet,
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut out = Vec::new();
    let empty = PortSet::default();
    for (_, (net, adds, excepts)) in nodes {
        while stack.last().is_some_and(|f| !f.net.contains(&net)) {
            stack.pop();
        }
        let mut active: Vec<usize> = stack.last().map(|f| f.active.clone()).unwrap_or_default();
        active.retain(|g| !excepts.contains(g));
        for a in adds {
            if !active.contains(&a) {
                active.push(a);
            }
        }
        let mut value = PortSet::default();
        for &g in &active {
            value.union_with(&grants[g].ports);
            if value.all {
                break;
            }
        }
        let inherited = stack.last().map_or(&empty, |f| &f.value);
        if &value != inherited {
            out.push((net, value.clone()));
        }
        stack.push(Frame { net, active, value });
    }
    out
}

fn flag_names(flags: u32) -> String {
    let names = [
        (EP_INGRESS_ISOLATED, "ingress-isolated"),
        (EP_EGRESS_ISOLATED, "egress-isolated"),
        (EP_AUDIT, "audit"),
        (EP_HAS_V4, "v4"),
        (EP_HAS_V6, "v6"),
        (EP_FAIL_CLOSED, "FAIL-CLOSED"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "-".to_string()
    } else {
        v.join(",")
    }
}

fn value_text(v: &PolicyValue) -> String {
    if v.flags & PV_ALL != 0 {
        return "all".to_string();
    }
    let ports = |r: &PortRange| {
        let name = crate::model::Protocol::from_number(r.proto).map_or("?", |p| p.as_str());
        if r.first == r.last {
            format!("{name}/{}", r.first)
        } else {
            format!("{name}/{}-{}", r.first, r.last)
        }
    };
    let ranges = &v.ranges[..usize::from(v.count).min(MAX_PORT_RANGES)];
    let mut parts = Vec::new();
    for (bit, name) in [
        (palisade_common::PBIT_TCP, "TCP"),
        (palisade_common::PBIT_UDP, "UDP"),
        (palisade_common::PBIT_SCTP, "SCTP"),
    ] {
        if v.all_ports & bit != 0 {
            parts.push(format!("{name}/*"));
        }
    }
    if v.all_ports & palisade_common::PBIT_OTHER != 0 {
        parts.push("other".to_string());
    }
    parts.extend(ranges.iter().filter(|r| r.reason == 0).map(ports));
    let mut text = if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(",")
    };
    // Why the rest is denied, when a ClusterNetworkPolicy tier says so.
    let reason = |c: u8| palisade_common::deny_reason_of(c).as_str();
    let mut denied: Vec<String> = ranges
        .iter()
        .filter(|r| r.reason != 0)
        .map(|r| format!("{}={}", ports(r), reason(r.reason)))
        .collect();
    if v.other_reason != 0 {
        denied.push(format!("other={}", reason(v.other_reason)));
    }
    if v.deny_reason != 0 || !denied.is_empty() {
        denied.push(format!("rest={}", reason(v.deny_reason)));
        text.push_str(" | denied ");
        text.push_str(&denied.join(","));
    }
    text
}

impl MapSet {
    /// A stable, human-readable rendering (golden tests, debugging dumps): per
    /// endpoint its flags, then its entries per direction in LPM key order.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        for (pod, ep) in &self.endpoints {
            let v4 = std::net::Ipv4Addr::from(ep.ipv4);
            let v6 = std::net::Ipv6Addr::from(ep.ipv6);
            let _ = writeln!(
                s,
                "endpoint {pod} id={} flags={} ipv4={v4} ipv6={v6}",
                ep.id,
                flag_names(ep.flags)
            );
            for (dir, name) in [(DIR_INGRESS, "ingress"), (DIR_EGRESS, "egress")] {
                let scope = PolicyScope::new(ep.id, dir);
                let mut lines: Vec<(IpNet, String)> = Vec::new();
                for ((plen, k), v) in &self.policy_v4 {
                    if k.scope == scope {
                        let n = ipnet::Ipv4Net::new(k.addr.into(), (plen - SCOPE_BITS) as u8)
                            .map(IpNet::V4);
                        if let Ok(n) = n {
                            lines.push((n, value_text(v)));
                        }
                    }
                }
                for ((plen, k), v) in &self.policy_v6 {
                    if k.scope == scope {
                        let n = ipnet::Ipv6Net::new(k.addr.into(), (plen - SCOPE_BITS) as u8)
                            .map(IpNet::V6);
                        if let Ok(n) = n {
                            lines.push((n, value_text(v)));
                        }
                    }
                }
                lines.sort_by_key(|(n, _)| net_order(n));
                for (n, v) in lines {
                    let _ = writeln!(s, "  {name} {n} -> {v}");
                }
            }
        }
        for (pod, why) in &self.overflow {
            let _ = writeln!(s, "overflow {pod}: {why}");
        }
        for k in &self.services {
            let addr = if k.family == FAMILY_V4 {
                IpAddr::from([k.addr[0], k.addr[1], k.addr[2], k.addr[3]])
            } else {
                IpAddr::from(k.addr)
            };
            let proto = crate::model::Protocol::from_number(k.proto).map_or("?", |p| p.as_str());
            let _ = writeln!(s, "service {addr} {proto}/{}", k.port);
        }
        s
    }
}
