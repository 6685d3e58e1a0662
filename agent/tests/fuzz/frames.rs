//! Frames for the fuzz: valid packets of every kind the programs parse
//! (TCP, UDP, SCTP, ICMP echo and errors quoting earlier flows, neighbour
//! discovery, other protocols, IPv4 options, IPv6 extension header chains,
//! fragments), replies of earlier frames, and mutations of them (truncation
//! at any offset, flipped bytes, bad lengths and versions, random bytes).
use std::net::{Ipv4Addr, Ipv6Addr};

use palisade_agent::packet::{self, IpOpts, L4};

use super::model::{PROTO_ICMP, PROTO_ICMPV6};

/// xorshift64*: seeded, so a failing run is reproduced from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

/// The addresses a frame's ends are drawn from.
pub struct Plan {
    pub pod4: Ipv4Addr,
    pub pod6: Ipv6Addr,
    pub peers4: Vec<Ipv4Addr>,
    pub peers6: Vec<Ipv6Addr>,
}

const ETH_HLEN: usize = 14;

const PORTS: [u16; 10] = [53, 80, 443, 1000, 1500, 2000, 2001, 2500, 9, 40000];

/// Which hook a frame is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    ToPod,
    FromPod,
}

/// A flow sent earlier: its reply, or an ICMP error quoting it, comes later.
#[derive(Clone)]
struct Sent {
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    l4: L4,
    hook: Hook,
}

pub struct Frames {
    rng: Rng,
    plan: Plan,
    history: Vec<Sent>,
}

fn v4(a: &[u8; 16]) -> Ipv4Addr {
    Ipv4Addr::new(a[0], a[1], a[2], a[3])
}

fn bytes4(a: Ipv4Addr) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&a.octets());
    b
}

impl Frames {
    pub fn new(seed: u64, plan: Plan) -> Self {
        Self {
            rng: Rng::new(seed),
            plan,
            history: Vec::new(),
        }
    }

    /// The next frame and the hook it goes through.
    pub fn next(&mut self) -> (Hook, Vec<u8>) {
        let (hook, mut frame) = if !self.history.is_empty() && self.rng.chance(25) {
            self.answer()
        } else {
            self.fresh()
        };
        if self.rng.chance(25) {
            self.mutate(&mut frame);
        }
        (hook, frame)
    }

    fn port(&mut self) -> u16 {
        if self.rng.chance(10) {
            self.rng.next() as u16
        } else {
            self.rng.pick(&PORTS)
        }
    }

    fn l4(&mut self, v6: bool) -> L4 {
        let (sport, dport) = (self.port(), self.port());
        match self.rng.below(10) {
            0..=2 => L4::Tcp { sport, dport },
            3..=4 => L4::Udp { sport, dport },
            5 => L4::Sctp { sport, dport },
            6 => L4::IcmpEchoRequest { id: sport },
            7 => L4::IcmpEchoReply { id: sport },
            8 if v6 => L4::Icmp6Type(self.rng.pick(&[130, 133, 134, 135, 136, 137, 143, 200])),
            _ => {
                // Other protocols, ICMP of the other family among them.
                let proto = self.rng.pick(&[47, 50, PROTO_ICMP, PROTO_ICMPV6, 255]);
                let n = self.rng.below(24);
                L4::Raw {
                    proto,
                    bytes: (0..n).map(|_| self.rng.next() as u8).collect(),
                }
            }
        }
    }

    /// A peer address: one of the plan's (policy entries cover them), or any.
    fn peer(&mut self, v6: bool) -> [u8; 16] {
        if v6 {
            if self.rng.chance(85) {
                self.rng.pick(&self.plan.peers6).octets()
            } else {
                let mut a = [0u8; 16];
                a.iter_mut().for_each(|b| *b = self.rng.next() as u8);
                a
            }
        } else if self.rng.chance(85) {
            bytes4(self.rng.pick(&self.plan.peers4))
        } else {
            bytes4(Ipv4Addr::from(self.rng.next() as u32))
        }
    }

    fn fresh(&mut self) -> (Hook, Vec<u8>) {
        let v6 = self.rng.chance(50);
        let hook = if self.rng.chance(50) {
            Hook::ToPod
        } else {
            Hook::FromPod
        };
        let pod = if v6 {
            self.plan.pod6.octets()
        } else {
            bytes4(self.plan.pod4)
        };
        let peer = self.peer(v6);
        let (src, dst) = match hook {
            Hook::ToPod => (peer, pod),
            // Mostly the pod's own address; sometimes spoofed or link-local.
            Hook::FromPod if self.rng.chance(85) => (pod, peer),
            Hook::FromPod if v6 && self.rng.chance(50) => {
                let ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 5).octets();
                (if self.rng.chance(50) { ll } else { [0; 16] }, peer)
            }
            Hook::FromPod => (self.peer(v6), peer),
        };
        let l4 = if !self.history.is_empty() && self.rng.chance(10) {
            self.icmp_error(v6)
        } else {
            self.l4(v6)
        };
        self.history.push(Sent {
            v6,
            src,
            dst,
            l4: l4.clone(),
            hook,
        });
        if self.history.len() > 64 {
            self.history.remove(0);
        }
        (hook, self.ip(v6, src, dst, &l4))
    }

    /// An ICMP error quoting an earlier flow of the family, either way round.
    fn icmp_error(&mut self, v6: bool) -> L4 {
        let same: Vec<Sent> = self
            .history
            .iter()
            .filter(|s| s.v6 == v6)
            .cloned()
            .collect();
        let Some(s) = same.get(self.rng.below(same.len().max(1))).cloned() else {
            return self.l4(v6);
        };
        let (a, b) = if self.rng.chance(50) {
            (s.src, s.dst)
        } else {
            (s.dst, s.src)
        };
        let mut inner = if v6 {
            packet::ipv6(
                Ipv6Addr::from(a),
                Ipv6Addr::from(b),
                &s.l4,
                &IpOpts::default(),
                None,
            )
        } else {
            packet::ipv4(v4(&a), v4(&b), &s.l4, &IpOpts::default())
        };
        // Errors quote as much as fits: sometimes less than the ports.
        if self.rng.chance(20) {
            inner.truncate(self.rng.below(inner.len() + 1));
        }
        let ty = if v6 {
            self.rng.pick(&[1, 2, 3, 4])
        } else {
            self.rng.pick(&[3, 11, 12])
        };
        L4::IcmpError { ty, code: 0, inner }
    }

    /// The reply of an earlier flow, through the other hook.
    fn answer(&mut self) -> (Hook, Vec<u8>) {
        let s = self.history[self.rng.below(self.history.len())].clone();
        let l4 = match s.l4 {
            L4::Tcp { sport, dport } => L4::Tcp {
                sport: dport,
                dport: sport,
            },
            L4::Udp { sport, dport } => L4::Udp {
                sport: dport,
                dport: sport,
            },
            L4::Sctp { sport, dport } => L4::Sctp {
                sport: dport,
                dport: sport,
            },
            L4::IcmpEchoRequest { id } => L4::IcmpEchoReply { id },
            other => other,
        };
        let hook = match s.hook {
            Hook::ToPod => Hook::FromPod,
            Hook::FromPod => Hook::ToPod,
        };
        (hook, self.ip(s.v6, s.dst, s.src, &l4))
    }

    fn ip(&mut self, v6: bool, src: [u8; 16], dst: [u8; 16], l4: &L4) -> Vec<u8> {
        let mut o = IpOpts::default();
        if self.rng.chance(10) {
            o.frag_offset = 1 + self.rng.below(100) as u16;
        }
        o.more_fragments = self.rng.chance(10);
        if v6 {
            let first = self.v6_ext(&mut o);
            packet::ether(&packet::ipv6(
                Ipv6Addr::from(src),
                Ipv6Addr::from(dst),
                l4,
                &o,
                first,
            ))
        } else {
            if self.rng.chance(15) {
                o.v4_options = (0..self.rng.below(41))
                    .map(|_| self.rng.next() as u8)
                    .collect();
            }
            packet::ether(&packet::ipv4(v4(&src), v4(&dst), l4, &o))
        }
    }

    /// A chain of up to 9 extension headers (more than the programs walk,
    /// sometimes); the last one's next header is patched to the transport.
    fn v6_ext(&mut self, o: &mut IpOpts) -> Option<u8> {
        if !self.rng.chance(25) {
            return None;
        }
        let kinds: Vec<u8> = (0..1 + self.rng.below(9))
            .map(|_| self.rng.pick(&[0, 43, 60, 44, 51]))
            .collect();
        for (i, &k) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).copied().unwrap_or(59);
            let mut h = match k {
                44 => {
                    let mut h = vec![0u8; 8];
                    if o.frag_offset != 0 && self.rng.chance(50) {
                        h[2..4].copy_from_slice(&(o.frag_offset << 3).to_be_bytes());
                    }
                    h
                }
                51 => {
                    let len = self.rng.below(3);
                    let mut h = vec![0u8; (len + 2) * 4];
                    h[1] = len as u8;
                    h
                }
                _ => {
                    let len = self.rng.below(3);
                    let mut h = vec![0u8; (len + 1) * 8];
                    h[1] = len as u8;
                    h
                }
            };
            h[0] = next;
            o.v6_ext.extend_from_slice(&h);
        }
        o.frag_offset = 0;
        kinds.first().copied()
    }

    fn mutate(&mut self, f: &mut Vec<u8>) {
        match self.rng.below(6) {
            // BPF_PROG_TEST_RUN takes no frame shorter than an Ethernet
            // header (nor does a veth carry one).
            0 | 1 if f.len() > ETH_HLEN => {
                let n = ETH_HLEN + self.rng.below(f.len() - ETH_HLEN + 1);
                f.truncate(n);
            }
            2 => {
                for _ in 0..1 + self.rng.below(3) {
                    if !f.is_empty() {
                        let i = self.rng.below(f.len().min(96));
                        f[i] ^= 1 << self.rng.below(8);
                    }
                }
            }
            3 if f.len() > 14 => {
                // Version and header length byte.
                f[14] = self.rng.next() as u8;
            }
            4 if f.len() > 13 => {
                let et = self.rng.pick(&[0x0800u16, 0x86dd, 0x0806, 0x8100]);
                f[12..14].copy_from_slice(&et.to_be_bytes());
            }
            _ => {
                let n = ETH_HLEN + self.rng.below(106);
                *f = (0..n).map(|_| self.rng.next() as u8).collect();
                if n > 14 && self.rng.chance(70) {
                    let et = self.rng.pick(&[0x0800u16, 0x86dd]);
                    f[12..14].copy_from_slice(&et.to_be_bytes());
                }
            }
        }
    }
}
