//! Connection tracking records: which flows a hook allowed, so that their
//! replies (and ICMP errors about them) pass the other hook; and the flow key
//! of the event rate limit.
//!
//! A conntrack key holds a connection's two ends in canonical order, the lower
//! (address, port) first, so a packet and its reply find the same entry with
//! one lookup; the value says which end opened it. One key type per family:
//! an IPv4 key hashes 20 bytes, not the 44 an IPv6 address pair needs.

/// IPv4 conntrack key, scoped to the interface that created it so one pod
/// cannot open state for another.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKeyV4 {
    pub ifindex: u32,
    /// The lower (address, port) end.
    pub addr_lo: [u8; 4],
    pub addr_hi: [u8; 4],
    pub port_lo: u16,
    pub port_hi: u16,
    pub proto: u8,
    /// Padding as integers (see `IpKey`).
    pub _pad0: u8,
    pub _pad1: u16,
}
const _: () = assert!(core::mem::size_of::<CtKeyV4>() == 20);

/// IPv6 conntrack key, as [`CtKeyV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKeyV6 {
    pub ifindex: u32,
    pub proto: u8,
    pub _pad0: u8,
    pub _pad1: u16,
    pub addr_lo: [u8; 16],
    pub addr_hi: [u8; 16],
    pub port_lo: u16,
    pub port_hi: u16,
}
const _: () = assert!(core::mem::size_of::<CtKeyV6>() == 44);

/// Is (`a`, `ap`) the lower end of a connection to (`b`, `bp`)? Addresses
/// compare as big-endian numbers, then ports; equal ends count as lower.
/// Compared as words, not bytes: fewer branches for the verifier to walk.
#[inline(always)]
pub fn lower_end_v4(a: &[u8; 4], ap: u16, b: &[u8; 4], bp: u16) -> bool {
    let (x, y) = (u32::from_be_bytes(*a), u32::from_be_bytes(*b));
    x < y || (x == y && ap <= bp)
}

/// [`lower_end_v4`] for IPv6 addresses.
#[inline(always)]
pub fn lower_end_v6(a: &[u8; 16], ap: u16, b: &[u8; 16], bp: u16) -> bool {
    let word = |v: &[u8; 16], i: usize| {
        u64::from_be_bytes([
            v[i],
            v[i + 1],
            v[i + 2],
            v[i + 3],
            v[i + 4],
            v[i + 5],
            v[i + 6],
            v[i + 7],
        ])
    };
    let (x, y) = ((word(a, 0), word(a, 8), ap), (word(b, 0), word(b, 8), bp));
    x <= y
}

impl CtKeyV4 {
    /// The key of a packet from (`src`, `sport`) to (`dst`, `dport`), and
    /// whether its source is the lower end.
    #[inline(always)]
    pub fn of(
        ifindex: u32,
        proto: u8,
        src: [u8; 4],
        sport: u16,
        dst: [u8; 4],
        dport: u16,
    ) -> (Self, bool) {
        let lo = lower_end_v4(&src, sport, &dst, dport);
        let (addr_lo, port_lo, addr_hi, port_hi) = if lo {
            (src, sport, dst, dport)
        } else {
            (dst, dport, src, sport)
        };
        let k = Self {
            ifindex,
            addr_lo,
            addr_hi,
            port_lo,
            port_hi,
            proto,
            _pad0: 0,
            _pad1: 0,
        };
        (k, lo)
    }
}

impl CtKeyV6 {
    /// As [`CtKeyV4::of`], for IPv6.
    #[inline(always)]
    pub fn of(
        ifindex: u32,
        proto: u8,
        src: &[u8; 16],
        sport: u16,
        dst: &[u8; 16],
        dport: u16,
    ) -> (Self, bool) {
        let lo = lower_end_v6(src, sport, dst, dport);
        let (addr_lo, port_lo, addr_hi, port_hi) = if lo {
            (*src, sport, *dst, dport)
        } else {
            (*dst, dport, *src, sport)
        };
        let k = Self {
            ifindex,
            proto,
            _pad0: 0,
            _pad1: 0,
            addr_lo,
            addr_hi,
            port_lo,
            port_hi,
        };
        (k, lo)
    }
}

/// `CtValue::origin`: the opening packet came from the key's lower end.
pub const CT_ORIGIN_LO: u8 = 1;

/// Connection tracking value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// `DIR_*` of the hook that created the entry.
    pub direction: u8,
    /// `CT_ORIGIN_LO` when the opening packet's source is the key's lower end.
    pub origin: u8,
    pub _pad0: u16,
    pub _pad1: u32,
    pub created_ns: u64,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 16);

impl CtValue {
    /// Is a packet seen on hook `dir`, whose source is the lower end iff
    /// `lo`, a reply of this entry's connection? It must come from the other
    /// end, on the other hook.
    #[inline(always)]
    pub fn is_reply(&self, lo: bool, dir: u8) -> bool {
        self.direction != dir && (self.origin == CT_ORIGIN_LO) != lo
    }
}

/// Connections one endpoint's replies may move into the confirmed table, per
/// second and CPU, unless `Config::ct_confirm_per_sec` says otherwise
/// (`PAL_CT_QUOTA`, a token bucket per endpoint id). Beyond it a connection
/// stays in the unanswered table, where its replies still pass while it
/// lives: a pod opening answered connections at full speed churns the
/// unanswered table, and turns the confirmed one over at this rate at most,
/// so the established connections of other pods keep their entries.
pub const CT_CONFIRM_PER_SEC: u32 = 2_000;
/// The bucket's depth, in seconds of the rate: a burst of that many
/// confirmations passes at once.
pub const CT_CONFIRM_BURST_SECS: u64 = 4;

/// One endpoint's confirmation budget on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtQuota {
    /// Confirmations left.
    pub tokens: u64,
    /// When tokens were last added.
    pub refilled_ns: u64,
    /// Confirmations refused for want of a token (the metric
    /// `palisade_conntrack_unconfirmed_total`).
    pub refused: u64,
}
const _: () = assert!(core::mem::size_of::<CtQuota>() == 24);

impl CtQuota {
    /// Takes one confirmation at `now_ns`, `per_sec` a second, if the budget
    /// has one. A zeroed slot (never used, or reset by the agent when it gives
    /// the id to a pod) starts with a full bucket.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, per_sec: u32) -> bool {
        let rate = (per_sec as u64).max(1);
        let burst = rate * CT_CONFIRM_BURST_SECS;
        // At most the time that fills the bucket (a slot never used has
        // `refilled_ns` 0): 4e9 ns times a u32 rate fits in a u64.
        let elapsed = now_ns
            .saturating_sub(self.refilled_ns)
            .min(CT_CONFIRM_BURST_SECS * 1_000_000_000);
        let add = elapsed * rate / 1_000_000_000;
        if add > 0 {
            self.tokens = (self.tokens + add).min(burst);
            // The time the tokens added stand for: the rest of `elapsed`
            // counts toward the next token (else the rate would fall to
            // half when calls come just under two tokens apart). A full
            // bucket keeps no credit.
            self.refilled_ns = if self.tokens == burst {
                now_ns
            } else {
                self.refilled_ns + add * 1_000_000_000 / rate
            };
        }
        if self.tokens == 0 {
            self.refused += 1;
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// A packet's 5-tuple as seen, scoped to its interface: the key of the event
/// rate limit (one event per flow and interval).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub ifindex: u32,
    pub family: u8,
    pub proto: u8,
    pub _pad0: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 44);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_confirmation_budget_refills_at_its_rate_whatever_the_call_spacing() {
        let mut q = CtQuota::default();
        let mut now = 10_000_000_000u64;
        // A zeroed slot starts full: a burst of 4 s worth, then nothing.
        let burst = (0..20_000).filter(|_| q.take(now, 2_000)).count();
        assert_eq!(burst, 8_000);
        assert!(!q.take(now, 2_000));
        // Calls every 300 us for 3 s at 2,000/s: 6,000 pass, not the 5,000
        // a refill that drops the rest of each interval would give.
        let mut passed = 0;
        for _ in 0..10_000 {
            now += 300_000;
            passed += usize::from(q.take(now, 2_000));
        }
        assert!((5_999..=6_000).contains(&passed), "{passed}");
        assert_eq!(q.refused, 1 + 10_000 - passed as u64 + 12_000);
    }

    #[test]
    fn a_packet_and_its_reply_share_one_key() {
        let (a, b) = ([10, 0, 0, 9], [10, 0, 0, 1]);
        let (k, lo) = CtKeyV4::of(3, 6, a, 40000, b, 80);
        let (r, rlo) = CtKeyV4::of(3, 6, b, 80, a, 40000);
        assert_eq!(k, r);
        assert!(!lo && rlo, "10.0.0.1 is the lower end");
        let v = CtValue {
            direction: 1,
            origin: if lo { CT_ORIGIN_LO } else { 0 },
            ..Default::default()
        };
        assert!(v.is_reply(rlo, 0), "the other end, on the other hook");
        assert!(!v.is_reply(lo, 0), "the same end is not a reply");
        assert!(!v.is_reply(rlo, 1), "the same hook is not a reply");
        // Equal addresses: ports decide.
        let (_, lo) = CtKeyV4::of(3, 17, a, 5, a, 6);
        assert!(lo);
        let x = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut y = x;
        y[8] = 1;
        let (k6, lo6) = CtKeyV6::of(4, 17, &y, 53, &x, 1000);
        let (r6, rlo6) = CtKeyV6::of(4, 17, &x, 1000, &y, 53);
        assert_eq!(k6, r6);
        assert!(!lo6 && rlo6, "the second word decides");
    }
}
