//! Crafting Ethernet frames for `BPF_PROG_TEST_RUN` (datapath tests and
//! benchmarks), and running a program of the datapath on one ([`test_run`]).
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::programs::{TestRun, TestRunOptions};

use crate::datapath::{Datapath, DatapathError};

/// What to put after the IP header.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Sctp {
        sport: u16,
        dport: u16,
    },
    IcmpEchoRequest {
        id: u16,
    },
    IcmpEchoReply {
        id: u16,
    },
    /// ICMP(v6) error quoting `inner` (an IP packet without Ethernet).
    IcmpError {
        ty: u8,
        code: u8,
        inner: Vec<u8>,
    },
    /// ICMPv6 type without body (e.g. neighbour solicitation 135).
    Icmp6Type(u8),
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

/// Options for the IP layer.
#[derive(Clone, Debug, Default)]
pub struct IpOpts {
    /// IPv4 option bytes (padded to 4) / IPv6 extension headers as (next-header
    /// number, body) pairs, body padded by the builder.
    pub v4_options: Vec<u8>,
    pub v6_ext: Vec<u8>,
    /// Fragment offset in 8-byte units (non-zero = non-first fragment).
    pub frag_offset: u16,
    pub more_fragments: bool,
}

fn l4_bytes(l4: &L4, v6: bool) -> (u8, Vec<u8>) {
    let icmp = if v6 { 58 } else { 1 };
    match l4 {
        L4::Tcp { sport, dport } => {
            let mut b = vec![0u8; 20];
            b[..2].copy_from_slice(&sport.to_be_bytes());
            b[2..4].copy_from_slice(&dport.to_be_bytes());
            b[12] = 5 << 4;
            b[13] = 0x02; // SYN
            (6, b)
        }
        L4::Udp { sport, dport } => {
            let mut b = vec![0u8; 8];
            b[..2].copy_from_slice(&sport.to_be_bytes());
            b[2..4].copy_from_slice(&dport.to_be_bytes());
            b[4..6].copy_from_slice(&8u16.to_be_bytes());
            (17, b)
        }
        L4::Sctp { sport, dport } => {
            let mut b = vec![0u8; 12];
            b[..2].copy_from_slice(&sport.to_be_bytes());
            b[2..4].copy_from_slice(&dport.to_be_bytes());
            (132, b)
        }
        L4::IcmpEchoRequest { id } | L4::IcmpEchoReply { id } => {
            let req = matches!(l4, L4::IcmpEchoRequest { .. });
            let ty = match (v6, req) {
                (false, true) => 8,
                (false, false) => 0,
                (true, true) => 128,
                (true, false) => 129,
            };
            let mut b = vec![0u8; 8];
            b[0] = ty;
            b[4..6].copy_from_slice(&id.to_be_bytes());
            (icmp, b)
        }
        L4::IcmpError { ty, code, inner } => {
            let mut b = vec![*ty, *code, 0, 0, 0, 0, 0, 0];
            b.extend_from_slice(inner);
            (icmp, b)
        }
        L4::Icmp6Type(ty) => (
            58,
            vec![
                *ty, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ),
        L4::Raw { proto, bytes } => (*proto, bytes.clone()),
    }
}

/// An IPv4 packet (no Ethernet header).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, l4: &L4, o: &IpOpts) -> Vec<u8> {
    let (proto, body) = l4_bytes(l4, false);
    let mut opts = o.v4_options.clone();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let hlen = 20 + opts.len();
    let total = hlen + if o.frag_offset != 0 { 8 } else { body.len() };
    let mut p = vec![0u8; 20];
    p[0] = 0x40 | (hlen / 4) as u8;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    let frag = o.frag_offset | if o.more_fragments { 0x2000 } else { 0 };
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p.extend_from_slice(&opts);
    if o.frag_offset != 0 {
        p.extend_from_slice(&[0u8; 8]);
    } else {
        p.extend_from_slice(&body);
    }
    p
}

/// An IPv6 packet (no Ethernet header). `o.v6_ext` holds ready-made extension
/// headers; their first next-header value is given by `first_ext`.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, l4: &L4, o: &IpOpts, first_ext: Option<u8>) -> Vec<u8> {
    let (proto, body) = l4_bytes(l4, true);
    let mut ext = o.v6_ext.clone();
    // Patch the last extension header's next-header to the transport protocol.
    let next = match first_ext {
        Some(n) => {
            if let Some(last) = last_ext_offset(&ext, n) {
                ext[last] = proto;
            }
            n
        }
        None => proto,
    };
    let payload = ext.len() + body.len();
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
    p[6] = next;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p.extend_from_slice(&ext);
    p.extend_from_slice(&body);
    p
}

fn last_ext_offset(ext: &[u8], first: u8) -> Option<usize> {
    let mut pos = 0;
    let mut cur = first;
    let mut last = None;
    while pos + 2 <= ext.len() {
        last = Some(pos);
        let len = match cur {
            44 => 8,
            51 => (ext[pos + 1] as usize + 2) * 4,
            _ => (ext[pos + 1] as usize + 1) * 8,
        };
        cur = ext[pos];
        pos += len;
    }
    last
}

/// An IPv6 extension header of `kind` (0, 43, 60: 8 bytes; 44: fragment).
pub fn v6_ext(kind: u8, next: u8, frag_offset: u16) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0] = next;
    if kind == 44 {
        h[2..4].copy_from_slice(&(frag_offset << 3).to_be_bytes());
    }
    h
}

/// Wrap an IP packet in Ethernet.
pub fn ether(ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    let ethertype: u16 = if ip.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    };
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

/// Convenience: an Ethernet frame for a simple flow of either family.
pub fn frame(src: IpAddr, dst: IpAddr, l4: &L4) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ether(&ipv4(s, d, l4, &IpOpts::default())),
        (IpAddr::V6(s), IpAddr::V6(d)) => ether(&ipv6(s, d, l4, &IpOpts::default(), None)),
        _ => Vec::new(),
    }
}

/// An ARP request frame.
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x08, 0x06]);
    f.extend_from_slice(&[0u8; 28]);
    f
}

/// What one `BPF_PROG_TEST_RUN` returned.
#[derive(Clone, Copy, Debug)]
pub struct TestRunOutcome {
    /// The program's TC action.
    pub action: u32,
    /// The skb mark as the program left it.
    pub mark: u32,
    /// The kernel's time per run, averaged over the repeats.
    pub duration: Duration,
}

/// Runs program `prog` of `dp` `repeat` times on `frame`, as if it came
/// through interface `ifindex` with skb mark `mark`.
pub fn test_run(
    dp: &mut Datapath,
    prog: &'static str,
    frame: &[u8],
    ifindex: u32,
    mark: u32,
    repeat: u32,
) -> Result<TestRunOutcome, DatapathError> {
    let ctx_in = skb_ctx(ifindex, mark);
    let mut ctx_out = vec![0u8; 256];
    let mut data_out = vec![0u8; frame.len() + 256];
    let r = dp
        .program(prog)?
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data_out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            repeat,
            ..Default::default()
        })
        .map_err(|source| DatapathError::Program {
            name: prog,
            source: Box::new(source),
        })?;
    Ok(TestRunOutcome {
        action: r.return_value,
        mark: u32::from_ne_bytes([ctx_out[8], ctx_out[9], ctx_out[10], ctx_out[11]]),
        duration: r.duration,
    })
}

/// The leading part of `struct __sk_buff` that BPF_PROG_TEST_RUN accepts as input
/// context: we set `mark` and `ifindex`.
pub fn skb_ctx(ifindex: u32, mark: u32) -> Vec<u8> {
    let mut c = vec![0u8; 48];
    c[8..12].copy_from_slice(&mark.to_ne_bytes());
    c[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    c
}
