//! Run-time settings user space gives the programs (the `CONFIG` array) and
//! their defaults.

/// Minimum nanoseconds between two events for the same flow.
pub const EVENT_INTERVAL_NS: u64 = 1_000_000_000;
/// Events one endpoint may emit per second on one CPU (after the per-flow limit):
/// bounds what a flood of ever-new flows costs the agent. Overridden by
/// `Config::endpoint_events_per_sec`.
pub const ENDPOINT_EVENTS_PER_SEC: u32 = 200;

/// `Config::flags`: report the first packet of every new connection allowed
/// by policy or by the pod's node (`--flow-events=new`).
pub const CFG_FLOW_NEW: u32 = 1 << 0;
/// `Config::flags`: also those of pods not isolated in that direction
/// (`--flow-events=all-new`).
pub const CFG_FLOW_ALL: u32 = 1 << 1;

/// `CONFIG` array index 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    /// Minimum nanoseconds between two events for one flow (0 = `EVENT_INTERVAL_NS`).
    pub event_interval_ns: u64,
    /// `CFG_*` flags.
    pub flags: u32,
    /// Per-endpoint, per-CPU event budget (0 = `ENDPOINT_EVENTS_PER_SEC`).
    pub endpoint_events_per_sec: u32,
    /// Per-endpoint, per-CPU conntrack confirmations a second (0 =
    /// `CT_CONFIRM_PER_SEC`); the burst is `CT_CONFIRM_BURST_SECS` of them.
    pub ct_confirm_per_sec: u32,
    pub _pad0: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 24);
