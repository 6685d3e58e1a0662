//! A user-space model of the TC programs' parse-and-decide, written from the
//! decision order the eBPF crate's module docs and `docs/datapath.md` state
//! (not from the eBPF code): header parsing and what is malformed, the hooks'
//! order of checks, the policy entries' longest-prefix match and port test,
//! and conntrack (one entry per connection, a reply is the other end on the
//! other hook, the first reply confirms). Tables never fill in a run of the
//! fuzz, so the model has no eviction.
use std::collections::HashMap;

use palisade_common::{
    Reason, DIR_EGRESS, DIR_INGRESS, EP_AUDIT, EP_EGRESS_ISOLATED, EP_FAIL_CLOSED, EP_HAS_V4,
    EP_HAS_V6, EP_INGRESS_ISOLATED, PBIT_OTHER, PBIT_SCTP, PBIT_TCP, PBIT_UDP, PV_ALL,
};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// What the model makes of a frame's headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub v6: bool,
    pub proto: u8,
    pub fragment: bool,
    pub icmp_error: bool,
    pub nd: bool,
    pub nd_router: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub inner_off: usize,
}

pub enum Parsed {
    NotIp,
    Malformed,
    Ip(Flow),
}

fn bytes(b: &[u8], off: usize, n: usize) -> Option<&[u8]> {
    b.get(off..off.checked_add(n)?)
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    bytes(b, off, 2).map(|x| u16::from_be_bytes([x[0], x[1]]))
}

/// Ethernet, then IPv4 or IPv6. A frame too short for an Ethernet header is
/// malformed; so is an IP ethertype without room for an IPv4 header.
pub fn parse(b: &[u8]) -> Parsed {
    let Some(et) = be16(b, 12) else {
        return Parsed::Malformed;
    };
    if et != 0x0800 && et != 0x86dd {
        return Parsed::NotIp;
    }
    if b.len() < 34 {
        return Parsed::Malformed;
    }
    let mut f = Flow::default();
    let ok = if et == 0x0800 {
        ipv4(b, &mut f, 14, true)
    } else {
        ipv6(b, &mut f, 14, true)
    };
    match ok {
        Some(()) => Parsed::Ip(f),
        None => Parsed::Malformed,
    }
}

/// IPv4 at `off`: the real header length (options must be there), a non-first
/// fragment has no ports; `l4` false for the header an ICMP error quotes.
pub fn ipv4(b: &[u8], f: &mut Flow, off: usize, l4: bool) -> Option<()> {
    let h = bytes(b, off, 20)?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let hlen = usize::from(h[0] & 0x0f) * 4;
    if hlen < 20 || b.len() < off + hlen {
        return None;
    }
    f.v6 = false;
    f.proto = h[9];
    f.src = [0; 16];
    f.dst = [0; 16];
    f.src[..4].copy_from_slice(&h[12..16]);
    f.dst[..4].copy_from_slice(&h[16..20]);
    if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
        f.fragment = true;
        return Some(());
    }
    if l4 {
        transport(b, f, off + hlen)
    } else {
        quoted_ports(b, f, off + hlen);
        Some(())
    }
}

/// IPv6 at `off`, up to 8 extension headers (more is malformed).
pub fn ipv6(b: &[u8], f: &mut Flow, off: usize, l4: bool) -> Option<()> {
    let h = bytes(b, off, 40)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    f.v6 = true;
    f.src.copy_from_slice(&h[8..24]);
    f.dst.copy_from_slice(&h[24..40]);
    let mut next = h[6];
    let mut pos = off + 40;
    let mut walked = 0;
    loop {
        match next {
            0 | 43 | 60 | 51 | 44 if walked == 8 => return None,
            0 | 43 | 60 => {
                let e = bytes(b, pos, 2)?;
                next = e[0];
                pos += (usize::from(e[1]) + 1) * 8;
            }
            44 => {
                let e = bytes(b, pos, 4)?;
                next = e[0];
                pos += 8;
                if u16::from_be_bytes([e[2], e[3]]) >> 3 != 0 {
                    f.proto = next;
                    f.fragment = true;
                    return Some(());
                }
            }
            51 => {
                let e = bytes(b, pos, 2)?;
                next = e[0];
                pos += (usize::from(e[1]) + 2) * 4;
            }
            _ => break,
        }
        walked += 1;
    }
    f.proto = next;
    if l4 {
        transport(b, f, pos)
    } else {
        quoted_ports(b, f, pos);
        Some(())
    }
}

/// TCP, UDP and SCTP need their whole fixed header; ICMP of the packet's own
/// family its first 8 bytes (echo ids as ports, errors, neighbour discovery).
fn transport(b: &[u8], f: &mut Flow, off: usize) -> Option<()> {
    let min = match f.proto {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        PROTO_SCTP => 12,
        PROTO_ICMP if !f.v6 => 8,
        PROTO_ICMPV6 if f.v6 => 8,
        _ => return Some(()),
    };
    let h = bytes(b, off, min)?;
    if matches!(f.proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) {
        f.sport = u16::from_be_bytes([h[0], h[1]]);
        f.dport = u16::from_be_bytes([h[2], h[3]]);
        return Some(());
    }
    let (ty, id) = (h[0], u16::from_be_bytes([h[4], h[5]]));
    let (req, rep) = if f.v6 { (128, 129) } else { (8, 0) };
    if ty == req {
        f.sport = id;
    } else if ty == rep {
        f.dport = id;
    } else if (!f.v6 && matches!(ty, 3 | 11 | 12)) || (f.v6 && (1..=4).contains(&ty)) {
        f.icmp_error = true;
        f.inner_off = off + 8;
    } else if f.v6 && matches!(ty, 130..=137 | 143) {
        f.nd = true;
        f.nd_router = ty == 134 || ty == 137;
    }
    Some(())
}

fn quoted_ports(b: &[u8], f: &mut Flow, off: usize) {
    if let Some(p) = bytes(b, off, 4) {
        f.sport = u16::from_be_bytes([p[0], p[1]]);
        f.dport = u16::from_be_bytes([p[2], p[3]]);
    }
}

/// One policy entry: a prefix of one family and direction, and what it allows.
#[derive(Clone, Debug)]
pub struct Entry {
    pub dir: u8,
    pub v6: bool,
    pub addr: [u8; 16],
    pub plen: u32,
    pub flags: u8,
    pub all_ports: u8,
    /// (protocol, first, last, reason code: 0 allows).
    pub ranges: Vec<(u8, u16, u16, u8)>,
    pub deny_reason: u8,
    pub other_reason: u8,
}

impl Entry {
    fn covers(&self, addr: &[u8; 16]) -> bool {
        let (full, rest) = ((self.plen / 8) as usize, self.plen % 8);
        if addr[..full] != self.addr[..full] {
            return false;
        }
        rest == 0 || (addr[full] ^ self.addr[full]) >> (8 - rest) == 0
    }

    /// The per-entry test, from the documented order.
    fn judge(&self, f: &Flow) -> Result<(), Reason> {
        let bit = match f.proto {
            PROTO_TCP => PBIT_TCP,
            PROTO_UDP => PBIT_UDP,
            PROTO_SCTP => PBIT_SCTP,
            _ => PBIT_OTHER,
        };
        if self.flags & PV_ALL != 0 || self.all_ports & bit != 0 {
            return Ok(());
        }
        if f.fragment {
            return Err(Reason::Fragment);
        }
        let code = |c: u8| Reason::from_u8(c).unwrap_or(Reason::NoPolicyAllows);
        if bit == PBIT_OTHER {
            let c = if self.other_reason == 0 {
                self.deny_reason
            } else {
                self.other_reason
            };
            return Err(code(c));
        }
        for &(p, first, last, reason) in &self.ranges {
            if p == f.proto && (first..=last).contains(&f.dport) {
                return if reason == 0 {
                    Ok(())
                } else {
                    Err(code(reason))
                };
            }
        }
        Err(code(self.deny_reason))
    }
}

/// Why a packet passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    NotIp,
    Nd,
    Reply,
    Node,
    NotIsolated,
    Policy,
    ServiceDeferred,
}

/// The model's verdict: passed, dropped, or passed in audit mode (an event
/// with the reason it would have been dropped for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass(Pass),
    Drop(Reason),
    Audit(Reason),
}

#[derive(Clone, Copy, Debug)]
struct CtEntry {
    dir: u8,
    origin_lo: bool,
}

/// The endpoint, its policy entries, the node's addresses, Service frontends
/// and conntrack: everything the programs read.
pub struct Model {
    /// flags, IPv4, IPv6 of the one endpoint; `None`: no endpoint record.
    pub endpoint: Option<(u32, [u8; 4], [u8; 16])>,
    pub entries: Vec<Entry>,
    pub node_addrs: Vec<(bool, [u8; 16])>,
    /// (IPv6, protocol, port, address).
    pub services: Vec<(bool, u8, u16, [u8; 16])>,
    conntrack: HashMap<CtKey, CtEntry>,
}

type CtKey = (bool, u8, [u8; 16], u16, [u8; 16], u16);

/// The connection's key (ends in canonical order) and whether `f`'s source
/// is its lower end.
fn ct_key(f: &Flow) -> (CtKey, bool) {
    let lo = (f.src, f.sport) <= (f.dst, f.dport);
    if lo {
        ((f.v6, f.proto, f.src, f.sport, f.dst, f.dport), true)
    } else {
        ((f.v6, f.proto, f.dst, f.dport, f.src, f.sport), false)
    }
}

#[derive(PartialEq, Eq)]
enum Ct {
    Reply,
    Tracked,
    New,
}

impl Model {
    pub fn new(
        entries: Vec<Entry>,
        node_addrs: Vec<(bool, [u8; 16])>,
        services: Vec<(bool, u8, u16, [u8; 16])>,
    ) -> Self {
        Self {
            endpoint: None,
            entries,
            node_addrs,
            services,
            conntrack: HashMap::new(),
        }
    }

    fn classify(&self, f: &Flow, dir: u8) -> Ct {
        let (k, lo) = ct_key(f);
        match self.conntrack.get(&k) {
            Some(e) if e.dir != dir && e.origin_lo != lo => Ct::Reply,
            Some(_) => Ct::Tracked,
            None => Ct::New,
        }
    }

    fn record(&mut self, f: &Flow, dir: u8) {
        if f.fragment {
            return;
        }
        let (k, lo) = ct_key(f);
        self.conntrack
            .entry(k)
            .or_insert(CtEntry { dir, origin_lo: lo });
    }

    /// An ICMP error whose quoted packet (of the same family) is a tracked
    /// connection, either way round.
    fn quotes_tracked(&self, frame: &[u8], f: &Flow) -> bool {
        let mut inner = Flow::default();
        let ok = if f.v6 {
            ipv6(frame, &mut inner, f.inner_off, false)
        } else {
            ipv4(frame, &mut inner, f.inner_off, false)
        };
        ok.is_some() && self.conntrack.contains_key(&ct_key(&inner).0)
    }

    fn own_address(&self, f: &Flow) -> bool {
        let Some((flags, v4, v6)) = self.endpoint else {
            return false;
        };
        if f.v6 {
            flags & EP_HAS_V6 != 0 && f.src == v6
        } else {
            flags & EP_HAS_V4 != 0 && f.src[..4] == v4
        }
    }

    fn judge(&self, flags: u32, dir: u8, f: &Flow) -> Result<Pass, Reason> {
        let isolated = if dir == DIR_INGRESS {
            EP_INGRESS_ISOLATED
        } else {
            EP_EGRESS_ISOLATED
        };
        if flags & isolated == 0 {
            return Ok(Pass::NotIsolated);
        }
        if flags & EP_FAIL_CLOSED != 0 {
            return Err(Reason::FailClosed);
        }
        let peer = if dir == DIR_INGRESS { &f.src } else { &f.dst };
        let best = self
            .entries
            .iter()
            .filter(|e| e.dir == dir && e.v6 == f.v6 && e.covers(peer))
            .max_by_key(|e| e.plen);
        match best {
            None => Err(Reason::NoPolicyAllows),
            Some(e) => e.judge(f).map(|()| Pass::Policy),
        }
    }

    /// Allowed packets of new flows are recorded; denials become drops, or
    /// audits where the endpoint is in audit mode (never for spoofed or
    /// malformed packets).
    fn finish(
        &mut self,
        flags: u32,
        dir: u8,
        f: &Flow,
        ct: Ct,
        v: Result<Pass, Reason>,
    ) -> Verdict {
        match v {
            Ok(p) => {
                if ct == Ct::New {
                    self.record(f, dir);
                }
                Verdict::Pass(p)
            }
            Err(r)
                if flags & EP_AUDIT != 0
                    && !matches!(r, Reason::SpoofedSource | Reason::Malformed) =>
            {
                Verdict::Audit(r)
            }
            Err(r) => Verdict::Drop(r),
        }
    }

    /// `to_pod`: the pod's ingress.
    pub fn judge_to_pod(&mut self, frame: &[u8]) -> Verdict {
        let f = match parse(frame) {
            Parsed::NotIp => return Verdict::Pass(Pass::NotIp),
            Parsed::Malformed => return Verdict::Drop(Reason::Malformed),
            Parsed::Ip(f) => f,
        };
        if f.nd {
            return Verdict::Pass(Pass::Nd);
        }
        let Some((flags, _, _)) = self.endpoint else {
            return Verdict::Drop(Reason::UnknownEndpoint);
        };
        let ct = self.classify(&f, DIR_INGRESS);
        if ct == Ct::Reply || (f.icmp_error && self.quotes_tracked(frame, &f)) {
            return Verdict::Pass(Pass::Reply);
        }
        let v = if self.node_addrs.contains(&(f.v6, f.src)) {
            Ok(Pass::Node)
        } else {
            self.judge(flags, DIR_INGRESS, &f)
        };
        self.finish(flags, DIR_INGRESS, &f, ct, v)
    }

    /// `from_pod`: the pod's egress and anti-spoofing.
    pub fn judge_from_pod(&mut self, frame: &[u8]) -> Verdict {
        let f = match parse(frame) {
            Parsed::NotIp => return Verdict::Pass(Pass::NotIp),
            Parsed::Malformed => return Verdict::Drop(Reason::Malformed),
            Parsed::Ip(f) => f,
        };
        let Some((flags, _, _)) = self.endpoint else {
            if f.nd && !f.nd_router {
                return Verdict::Pass(Pass::Nd);
            }
            return Verdict::Drop(Reason::UnknownEndpoint);
        };
        let link_local =
            f.v6 && ((f.src[0] == 0xfe && f.src[1] & 0xc0 == 0x80) || f.src == [0; 16]);
        if f.nd && !f.nd_router && (link_local || self.own_address(&f)) {
            return Verdict::Pass(Pass::Nd);
        }
        if !self.own_address(&f) {
            return Verdict::Drop(Reason::SpoofedSource);
        }
        let ct = self.classify(&f, DIR_EGRESS);
        if ct == Ct::Reply || (f.icmp_error && self.quotes_tracked(frame, &f)) {
            return Verdict::Pass(Pass::Reply);
        }
        let service = self.services.contains(&(f.v6, f.proto, f.dport, f.dst));
        let v = if flags & EP_EGRESS_ISOLATED != 0 && !f.fragment && service {
            Ok(Pass::ServiceDeferred)
        } else {
            self.judge(flags, DIR_EGRESS, &f)
        };
        self.finish(flags, DIR_EGRESS, &f, ct, v)
    }

    /// Forget every connection (the kernel's tables are emptied with it).
    pub fn clear_conntrack(&mut self) {
        self.conntrack.clear();
    }
}
