//! Packet parsing: Ethernet, IPv4 (real header length, fragments), IPv6 with a
//! bounded walk over extension headers, and the transport ports (or ICMP echo
//! id) that policy and conntrack look at. A header cut short is `Malformed`.
//!
//! Headers are read in place from the packet's linear data (direct packet
//! access, no helper call). When a header is not in the linear part the
//! packet is pulled first (`bpf_skb_pull_data`), and a header past what could
//! be pulled is read with `bpf_skb_load_bytes`: the bytes, and what is
//! malformed, are the same either way.

use aya_ebpf::programs::TcContext;
use palisade_common::{
    Reason, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
    SCRATCH_FLOW_SIZE,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
/// Bounded walk over IPv6 extension headers.
const MAX_EXT_HDRS: usize = 8;

/// The parsed packet: what policy and conntrack look at. `repr(C)` with the
/// addresses first and 8-byte alignment, so clearing or copying an address is
/// two 8-byte stores, not a call of the byte-wise `memset`/`memmove`
/// subprograms that unaligned copies compile to.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Flow {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Offset of the quoted packet of an ICMP error.
    pub inner_off: usize,
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub proto: u8,
    /// Non-first fragment: no ports.
    pub fragment: bool,
    /// ICMP error (unreachable, too big, time exceeded, parameter problem).
    pub icmp_error: bool,
    /// ICMPv6 neighbour discovery / router messages.
    pub nd: bool,
    /// Of those, router advertisements and redirects: a router's to send,
    /// never a pod's.
    pub nd_router: bool,
}

const _: () = assert!(core::mem::size_of::<Flow>() as u32 == SCRATCH_FLOW_SIZE);

/// The Ethernet header and a fixed IPv4 header, read together.
const ETH_V4_LEN: usize = ETH_HLEN + 20;
/// How much of a packet is pulled into the linear part when less is there:
/// Ethernet, the largest IPv4 header (60) and a TCP header (20) or ICMP error
/// quoting an IPv4 header with ports.
const PULL_LEN: u32 = 128;
/// Largest header offset read in place: a bound the verifier needs to track
/// packet pointers with a variable offset. Beyond it, headers are loaded.
const MAX_DIRECT_OFF: usize = 1024;

#[inline(always)]
fn load<T>(ctx: &TcContext, off: usize) -> Result<T, Reason> {
    ctx.load::<T>(off).map_err(|_| Reason::Malformed)
}

/// Bytes `[off, off + N)` of the packet's linear data, in place, if they are
/// all there.
#[inline(always)]
fn linear<const N: usize>(ctx: &TcContext, off: usize) -> Option<&[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if off > MAX_DIRECT_OFF || start + off + N > end {
        return None;
    }
    // SAFETY: `[start + off, start + off + N)` lies in the linear data, checked
    // just above; a byte array has alignment 1.
    Some(unsafe { &*((start + off) as *const [u8; N]) })
}

/// `header!(h = ctx, off, N);` binds `h: &[u8; N]` to the packet's bytes
/// `[off, off + N)`: in place when they are in the linear data, else loaded
/// onto the stack; returns `Err(Malformed)` when the packet ends before them.
macro_rules! header {
    ($h:ident = $ctx:expr, $off:expr, $n:literal) => {
        let stack: [u8; $n];
        let $h: &[u8; $n] = match linear::<$n>($ctx, $off) {
            Some(h) => h,
            None => {
                stack = load($ctx, $off)?;
                &stack
            }
        };
    };
}

#[inline(always)]
fn be16(ctx: &TcContext, off: usize) -> Result<u16, Reason> {
    Ok(u16::from_be(load::<u16>(ctx, off)?))
}

/// Parse transport ports (or the ICMP echo id) at `off`.
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
            header!(p = ctx, off, 4);
            flow.sport = u16::from_be_bytes([p[0], p[1]]);
            flow.dport = u16::from_be_bytes([p[2], p[3]]);
        }
        // ICMP of the packet's own family only: protocol 58 in IPv4 (or 1 in
        // IPv6) is a protocol without ports like any other, never neighbour
        // discovery that would pass without policy.
        PROTO_ICMP | PROTO_ICMPV6 if (flow.proto == PROTO_ICMPV6) == (flow.family == FAMILY_V6) => {
            header!(h = ctx, off, 8);
            let ty = h[0];
            let id = u16::from_be_bytes([h[4], h[5]]);
            let v6 = flow.family == FAMILY_V6;
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
    let read = |flow: &mut Flow| -> Result<(), Reason> {
        header!(p = ctx, off, 4);
        flow.sport = u16::from_be_bytes([p[0], p[1]]);
        flow.dport = u16::from_be_bytes([p[2], p[3]]);
        Ok(())
    };
    let _ = read(flow);
}

/// Parse an IPv4 header at `off` (real IHL, fragments) and its transport header.
#[inline(always)]
pub fn parse_v4(ctx: &TcContext, flow: &mut Flow, off: usize, l4: bool) -> Result<(), Reason> {
    header!(h = ctx, off, 20);
    parse_v4_header(ctx, flow, off, h, l4)
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
        if (ctx.len() as usize) < off + hlen {
            return Err(Reason::Malformed);
        }
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    flow.family = FAMILY_V4;
    flow.proto = h[9];
    set_v4_addrs(
        flow,
        [h[12], h[13], h[14], h[15]],
        [h[16], h[17], h[18], h[19]],
    );
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
pub fn parse_v6(ctx: &TcContext, flow: &mut Flow, off: usize, l4: bool) -> Result<(), Reason> {
    header!(h = ctx, off, 40);
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
    // Eight headers walked and a ninth follows: more than we walk, refused
    // rather than guessed.
    if !done && matches!(next, 0 | 43 | 44 | 51 | 60) {
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

/// The frame's ethertype picks the parser; `None` for frames that are not IP.
#[inline(always)]
fn v4_or_v6(ctx: &TcContext, flow: &mut Flow, b: &[u8; ETH_V4_LEN]) -> Option<Result<(), Reason>> {
    match u16::from_be_bytes([b[12], b[13]]) {
        ETH_P_IP => {
            let ip: &[u8; 20] = match b[ETH_HLEN..].try_into() {
                Ok(ip) => ip,
                Err(_) => return Some(Err(Reason::Malformed)),
            };
            Some(parse_v4_header(ctx, flow, ETH_HLEN, ip, true))
        }
        ETH_P_IPV6 => Some(parse_v6(ctx, flow, ETH_HLEN, true)),
        _ => None,
    }
}

/// `flow` as 8-byte words. Stores to it are volatile, one per word: LLVM
/// merges plain stores of adjacent fields into a `memset`, which compiles to
/// a call of the byte-wise `memset` subprogram (16% of the datapath's cycles
/// in `perf` once).
#[inline(always)]
fn words(flow: &mut Flow) -> *mut u64 {
    (flow as *mut Flow).cast::<u64>()
}

/// Word indexes in `Flow` (`repr(C, align(8))`, 56 bytes): the addresses,
/// then `inner_off`, then the ports, family, protocol and flags with the
/// padding (all-zero is each field's cleared value).
const W_SRC: usize = 0;
const W_DST: usize = 2;
const W_SCALARS: usize = 4;
const FLOW_WORDS: usize = 7;
const _: () = assert!(core::mem::size_of::<Flow>() == FLOW_WORDS * 8);

/// Write IPv4 addresses (the rest of each 16-byte address zero).
#[inline(always)]
fn set_v4_addrs(flow: &mut Flow, src: [u8; 4], dst: [u8; 4]) {
    let w = words(flow);
    let word = |a: [u8; 4]| u64::from_ne_bytes([a[0], a[1], a[2], a[3], 0, 0, 0, 0]);
    // SAFETY: words 0..4 are `src` and `dst`, inside the aligned Flow.
    unsafe {
        w.add(W_SRC).write_volatile(word(src));
        w.add(W_SRC + 1).write_volatile(0);
        w.add(W_DST).write_volatile(word(dst));
        w.add(W_DST + 1).write_volatile(0);
    }
}

/// Clear the scalar fields; the parsers always write both addresses.
#[inline(always)]
pub fn reset(flow: &mut Flow) {
    let w = words(flow);
    for i in W_SCALARS..FLOW_WORDS {
        // SAFETY: inside the aligned Flow; zero is a valid value of every field.
        unsafe { w.add(i).write_volatile(0) };
    }
}

/// Clear everything, addresses included.
#[inline(always)]
fn clear(flow: &mut Flow) {
    let w = words(flow);
    for i in 0..FLOW_WORDS {
        // SAFETY: as in `reset`.
        unsafe { w.add(i).write_volatile(0) };
    }
}

/// Parse the packet into `flow`. Returns `Ok(false)` for non-IP frames (they
/// pass). On error `flow` is reset, so events about malformed packets carry no
/// half-parsed fields.
#[inline(always)]
pub fn parse(ctx: &TcContext, flow: &mut Flow) -> Result<bool, Reason> {
    reset(flow);
    // Headers not in the linear part are pulled in once, up front: every read
    // after that is in place. A failed pull leaves the loads to read them.
    let want = if ctx.len() < PULL_LEN {
        ctx.len()
    } else {
        PULL_LEN
    };
    if ctx.data_end() - ctx.data() < want as usize {
        let _ = ctx.pull_data(want);
    }
    // The Ethernet header and a fixed IPv4 header together: the common case.
    // Shorter frames (no room for an IPv4 header) take the slow path.
    let r = match linear::<ETH_V4_LEN>(ctx, 0) {
        Some(b) => v4_or_v6(ctx, flow, b),
        None => match load::<[u8; ETH_V4_LEN]>(ctx, 0) {
            Ok(b) => v4_or_v6(ctx, flow, &b),
            Err(_) => match be16(ctx, 12) {
                Ok(ETH_P_IP) | Ok(ETH_P_IPV6) => Some(Err(Reason::Malformed)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            },
        },
    };
    let Some(r) = r else {
        return Ok(false);
    };
    if r.is_err() {
        clear(flow);
    }
    r.map(|_| true)
}
