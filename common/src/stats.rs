//! Node-wide packet statistics the programs keep per CPU (the `STATS` array):
//! packets and bytes by direction, verdict and reason, summed by user space at
//! scrape time.

use crate::event::Reason;

/// Why a packet passed.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllowReason {
    /// A policy rule allows it (the pod is isolated in this direction).
    Policy = 1,
    /// The pod is not isolated in this direction.
    NotIsolated = 2,
    /// A reply of a tracked flow, or an ICMP error about one.
    Reply = 3,
    /// From the pod's own node (kubelet probes are always allowed).
    Node = 4,
    /// Pod traffic to a Service frontend: its egress decision is made after
    /// DNAT, against the backend (a later drop is counted there too).
    ServiceDeferred = 5,
}

impl AllowReason {
    pub const ALL: [Self; 5] = [
        Self::Policy,
        Self::NotIsolated,
        Self::Reply,
        Self::Node,
        Self::ServiceDeferred,
    ];

    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Policy,
            2 => Self::NotIsolated,
            3 => Self::Reply,
            4 => Self::Node,
            5 => Self::ServiceDeferred,
            _ => return None,
        })
    }

    /// The name used in logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::NotIsolated => "not-isolated",
            Self::Reply => "reply",
            Self::Node => "node",
            Self::ServiceDeferred => "service-deferred",
        }
    }
}

/// Verdicts as the statistics index them.
pub const STAT_ALLOWED: u32 = 0;
pub const STAT_DENIED: u32 = 1;
/// Would have been denied; passed (audit mode).
pub const STAT_AUDIT: u32 = 2;
/// Reason codes per verdict: `AllowReason` for allowed packets, `Reason` for
/// the others; both below this.
pub const STAT_REASONS: u32 = 10;
/// Entries of `STATS`: two directions, three verdicts, ten reason codes.
pub const STAT_SLOTS: u32 = 2 * 3 * STAT_REASONS;

/// The `STATS` index of a direction (`DIR_*`), verdict (`STAT_*`) and reason
/// code. Always below `STAT_SLOTS`.
#[inline(always)]
pub const fn stat_slot(direction: u8, verdict: u32, reason: u8) -> u32 {
    ((direction as u32 & 1) * 3 + verdict % 3) * STAT_REASONS + (reason as u32 % STAT_REASONS)
}

/// One `STATS` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stat {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Stat>() == 16);

impl Stat {
    /// Adds `o` (another CPU's entry) to this one.
    pub fn add(&mut self, o: &Stat) {
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

/// The reason name of a statistics slot's code under a verdict.
pub const fn stat_reason_name(verdict: u32, code: u8) -> Option<&'static str> {
    if verdict == STAT_ALLOWED {
        match AllowReason::from_u8(code) {
            Some(r) => Some(r.as_str()),
            None => None,
        }
    } else {
        match Reason::from_u8(code) {
            Some(r) => Some(r.as_str()),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_is_distinct_and_in_range() {
        let mut seen = [false; STAT_SLOTS as usize];
        for dir in 0..2u8 {
            for verdict in 0..3u32 {
                for code in 0..STAT_REASONS as u8 {
                    let s = stat_slot(dir, verdict, code) as usize;
                    assert!(!seen[s], "slot {s} twice");
                    seen[s] = true;
                }
            }
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn reason_codes_fit_their_slots() {
        assert!((AllowReason::ServiceDeferred as u32) < STAT_REASONS);
        assert!((Reason::BaselineDeny as u32) < STAT_REASONS);
    }
}
