//! Deny and audit events: the record the programs write to the `EVENTS` ring
//! buffer, why a packet was dropped, and the rate-limit state behind them.

/// Why a packet was (or, in audit mode, would have been) dropped.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The pod is isolated in this direction and no policy allows the packet.
    NoPolicyAllows = 1,
    SpoofedSource = 2,
    Malformed = 3,
    UnknownEndpoint = 4,
    /// The endpoint's rules could not be represented; it is fail-closed.
    FailClosed = 5,
    /// A non-first fragment and no rule allows every port of its protocol.
    Fragment = 6,
    Internal = 7,
    /// A ClusterNetworkPolicy rule of the Admin tier denies the packet.
    AdminDeny = 8,
    /// A ClusterNetworkPolicy rule of the Baseline tier denies the packet (no
    /// NetworkPolicy isolates the pod in that direction).
    BaselineDeny = 9,
}

impl Reason {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::NoPolicyAllows,
            2 => Self::SpoofedSource,
            3 => Self::Malformed,
            4 => Self::UnknownEndpoint,
            5 => Self::FailClosed,
            6 => Self::Fragment,
            7 => Self::Internal,
            8 => Self::AdminDeny,
            9 => Self::BaselineDeny,
            _ => return None,
        })
    }

    /// The name used in deny logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoPolicyAllows => "no-policy-allows",
            Self::SpoofedSource => "spoofed-source",
            Self::Malformed => "malformed",
            Self::UnknownEndpoint => "unknown-endpoint",
            Self::FailClosed => "fail-closed",
            Self::Fragment => "fragment",
            Self::Internal => "internal-error",
            Self::AdminDeny => "admin-deny",
            Self::BaselineDeny => "baseline-deny",
        }
    }
}

/// `Event::verdict` values. An allowed event's `reason` is an `AllowReason`.
pub const VERDICT_DENIED: u8 = 1;
pub const VERDICT_AUDIT: u8 = 2;
pub const VERDICT_ALLOWED: u8 = 3;

/// `Event::flags`: the packet was a non-first fragment (no ports).
pub const EVF_FRAGMENT: u8 = 1 << 0;

/// A deny, audit or (with flow events on) allowed-flow event, written to the
/// `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Event {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub endpoint_id: u32,
    pub family: u8,
    pub proto: u8,
    pub direction: u8,
    pub reason: u8,
    pub verdict: u8,
    pub flags: u8,
    pub _pad0: [u8; 2],
    /// Events for this flow that the rate limit dropped before this one.
    pub suppressed: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// Events of this endpoint (any flow) that its per-second budget dropped on
    /// this CPU in the window before this event.
    pub throttled: u32,
}
const _: () = assert!(core::mem::size_of::<Event>() == 72);

/// Value of `EVENT_RATE`, keyed by `CtKey`: the per-flow rate limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RateValue {
    pub last_ns: u64,
    pub suppressed: u32,
    pub _pad0: u32,
}
const _: () = assert!(core::mem::size_of::<RateValue>() == 16);

/// Per-endpoint event budget state (per CPU), keyed by endpoint id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EventBudget {
    /// Start of the current one-second window.
    pub window_ns: u64,
    /// Events emitted in the window.
    pub emitted: u32,
    /// Events dropped in the window for want of budget.
    pub throttled: u32,
}
const _: () = assert!(core::mem::size_of::<EventBudget>() == 16);
