//! The ABI shared by the TC programs and user space: map names and sizes, keys,
//! values and the deny-event record.
//!
//! Every type here crosses the kernel boundary, so each is `#[repr(C)]`, spells out
//! its padding as named fields (always written as zero), and has its size asserted
//! at compile time. Multi-byte addresses are kept in network byte order as byte
//! arrays; ports are host order `u16`.
#![no_std]

/// Map names (BPF object names are limited to 15 characters).
pub mod maps {
    pub const ENDPOINTS: &str = "PAL_ENDPOINTS";
    pub const ENDPOINT_BY_IP: &str = "PAL_EP_BY_IP";
    pub const POLICY_V4: &str = "PAL_POLICY_V4";
    pub const POLICY_V6: &str = "PAL_POLICY_V6";
    pub const NODE_ADDRS: &str = "PAL_NODE_ADDRS";
    pub const SERVICES: &str = "PAL_SERVICES";
    pub const CONNTRACK: &str = "PAL_CONNTRACK";
    pub const EVENTS: &str = "PAL_EVENTS";
    pub const EVENT_RATE: &str = "PAL_EVENT_RATE";
    pub const COUNTERS: &str = "PAL_COUNTERS";
    pub const CONFIG: &str = "PAL_CONFIG";
    pub const EVENT_BUDGET: &str = "PAL_EVENT_BUDGET";

    /// Every map, for pinning and adoption.
    pub const ALL: [&str; 11] = [
        ENDPOINTS,
        ENDPOINT_BY_IP,
        POLICY_V4,
        POLICY_V6,
        NODE_ADDRS,
        SERVICES,
        CONNTRACK,
        EVENTS,
        EVENT_RATE,
        COUNTERS,
        CONFIG,
    ];
}

/// Program names (also limited to 15 characters).
pub mod progs {
    /// Host veth TC egress: traffic going into the pod (pod ingress).
    pub const TO_POD: &str = "to_pod";
    /// Host veth TC ingress: traffic leaving the pod (pod egress).
    pub const FROM_POD: &str = "from_pod";
    /// TC egress of the node's other interfaces: the egress decision for pod
    /// traffic to a Service, made after kube-proxy's DNAT chose the backend.
    pub const SVC_EGRESS: &str = "svc_egress";
}

/// Map capacities. The writer refuses (fail closed for that endpoint) instead of
/// truncating when any of these would be exceeded.
pub const MAX_ENDPOINTS: u32 = 1024;
pub const MAX_POLICY_ENTRIES: u32 = 262_144;
pub const MAX_NODE_ADDRS: u32 = 256;
pub const MAX_SERVICES: u32 = 65_536;
pub const MAX_CONNTRACK: u32 = 262_144;
pub const MAX_EVENT_RATE: u32 = 65_536;
pub const EVENTS_RING_BYTES: u32 = 1 << 20;
/// Port ranges one policy entry can carry. A union that does not fit is refused.
pub const MAX_PORT_RANGES: usize = 24;
/// Minimum nanoseconds between two events for the same flow.
pub const EVENT_INTERVAL_NS: u64 = 1_000_000_000;
/// Events one endpoint may emit per second on one CPU (after the per-flow limit):
/// bounds what a flood of ever-new flows costs the agent. Overridden by
/// `Config::endpoint_events_per_sec`.
pub const ENDPOINT_EVENTS_PER_SEC: u32 = 200;

/// The skb mark bit `from_pod` sets on pod traffic to a Service address whose egress
/// decision is deferred until after DNAT (see `progs::SVC_EGRESS`). Chosen clear of
/// kube-proxy's 0x4000/0x8000 bits.
pub const MARK_SVC_PENDING: u32 = 0x0100_0000;

/// Address family tags used in keys and events.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers the datapath knows about.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// Endpoint flags.
pub const EP_INGRESS_ISOLATED: u32 = 1 << 0;
pub const EP_EGRESS_ISOLATED: u32 = 1 << 1;
pub const EP_AUDIT: u32 = 1 << 2;
pub const EP_HAS_V4: u32 = 1 << 3;
pub const EP_HAS_V6: u32 = 1 << 4;
/// The writer could not represent this endpoint's rules: deny everything that
/// policy would judge (fail closed), and report it.
pub const EP_FAIL_CLOSED: u32 = 1 << 5;

/// Direction of a policy decision, seen from the pod.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// One local pod, keyed by the ifindex of its host-side veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Agent-assigned id that scopes this pod's policy entries.
    pub id: u32,
    pub flags: u32,
    pub ipv4: [u8; 4],
    pub _pad0: [u8; 4],
    pub ipv6: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 32);

/// Key of `ENDPOINT_BY_IP` and `NODE_ADDRS`: an address of either family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpKey {
    pub family: u8,
    pub _pad0: [u8; 3],
    /// IPv4 in the first 4 bytes, rest zero.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<IpKey>() == 20);

/// Scope of a policy entry: which endpoint and which direction. Part of the LPM key,
/// always fully matched (the prefix length counts these 64 bits first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyScope {
    /// Endpoint id, big-endian so the trie's byte order matches numeric order.
    pub endpoint_be: [u8; 4],
    pub direction: u8,
    pub _pad0: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<PolicyScope>() == 8);

/// Bits of the LPM key that belong to the scope.
pub const SCOPE_BITS: u32 = 64;

/// Data of the IPv4 LPM key: scope then peer address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKeyV4 {
    pub scope: PolicyScope,
    pub addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<PolicyKeyV4>() == 12);

/// Data of the IPv6 LPM key: scope then peer address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKeyV6 {
    pub scope: PolicyScope,
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<PolicyKeyV6>() == 24);

/// Protocol bits for `PolicyValue::all_ports`: the protocol is allowed on every port.
pub const PBIT_TCP: u8 = 1 << 0;
pub const PBIT_UDP: u8 = 1 << 1;
pub const PBIT_SCTP: u8 = 1 << 2;
/// `PolicyValue::all_ports`: every protocol other than TCP, UDP and SCTP (ICMP,
/// ICMPv6, ...) is allowed. A ClusterNetworkPolicy can allow those while denying
/// some TCP port, which `PV_ALL` cannot say. A packet whose protocol is not TCP,
/// UDP or SCTP is allowed by a value iff `PV_ALL` or this bit is set.
pub const PBIT_OTHER: u8 = 1 << 3;

/// Map an IP protocol number to its `PBIT_*` bit (0 for protocols without ports).
#[inline(always)]
pub const fn proto_bit(proto: u8) -> u8 {
    match proto {
        PROTO_TCP => PBIT_TCP,
        PROTO_UDP => PBIT_UDP,
        PROTO_SCTP => PBIT_SCTP,
        _ => 0,
    }
}

/// The `all_ports` bit that allows `proto` whatever its port: its `PBIT_*` for
/// TCP, UDP and SCTP, `PBIT_OTHER` for every other protocol. Never 0.
#[inline(always)]
pub const fn all_ports_bit(proto: u8) -> u8 {
    match proto_bit(proto) {
        0 => PBIT_OTHER,
        b => b,
    }
}

/// An inclusive port range for one protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub proto: u8,
    pub _pad0: u8,
    pub first: u16,
    pub last: u16,
    pub _pad1: u16,
}
const _: () = assert!(core::mem::size_of::<PortRange>() == 8);

/// `PolicyValue::flags`: every protocol and port (a rule without `ports`).
pub const PV_ALL: u8 = 1 << 0;

/// What is allowed towards/from the peers under one prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    pub flags: u8,
    /// `PBIT_*`: protocols allowed on every port; `PBIT_OTHER`: protocols
    /// without ports (see [`all_ports_bit`]).
    pub all_ports: u8,
    /// Number of valid entries in `ranges`.
    pub count: u8,
    pub _pad0: [u8; 5],
    pub ranges: [PortRange; MAX_PORT_RANGES],
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 8 + 8 * MAX_PORT_RANGES);

impl Default for PolicyValue {
    fn default() -> Self {
        Self {
            flags: 0,
            all_ports: 0,
            count: 0,
            _pad0: [0; 5],
            ranges: [PortRange::default(); MAX_PORT_RANGES],
        }
    }
}

/// Value of `SERVICES`: marks a frontend (ClusterIP and port) whose egress decision
/// waits for the DNAT.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub family: u8,
    pub proto: u8,
    pub port: u16,
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

/// Connection tracking key: the 5-tuple as first seen, scoped to the interface that
/// created it so one pod cannot open state for another.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub ifindex: u32,
    pub family: u8,
    pub proto: u8,
    pub _pad0: [u8; 2],
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);

/// Connection tracking value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// `DIR_*` of the hook that created the entry.
    pub direction: u8,
    pub _pad0: [u8; 7],
    pub created_ns: u64,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 16);

/// Value of `EVENT_RATE`, keyed by `CtKey`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RateValue {
    pub last_ns: u64,
    pub suppressed: u32,
    pub _pad0: u32,
}
const _: () = assert!(core::mem::size_of::<RateValue>() == 16);

/// Per-endpoint counters (per CPU), keyed by endpoint id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Counters {
    pub allowed_packets: u64,
    pub allowed_bytes: u64,
    pub denied_packets: u64,
    pub denied_bytes: u64,
    pub audit_packets: u64,
    pub events_lost: u64,
}
const _: () = assert!(core::mem::size_of::<Counters>() == 48);

impl Counters {
    /// Adds `o` (another CPU's counters) to these.
    pub fn add(&mut self, o: &Counters) {
        self.allowed_packets += o.allowed_packets;
        self.allowed_bytes += o.allowed_bytes;
        self.denied_packets += o.denied_packets;
        self.denied_bytes += o.denied_bytes;
        self.audit_packets += o.audit_packets;
        self.events_lost += o.events_lost;
    }
}

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
        }
    }
}

/// `Event::verdict` values.
pub const VERDICT_DENIED: u8 = 1;
pub const VERDICT_AUDIT: u8 = 2;

/// `Event::flags`: the packet was a non-first fragment (no ports).
pub const EVF_FRAGMENT: u8 = 1 << 0;

/// A deny or audit event, written to the `EVENTS` ring buffer.
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
}
const _: () = assert!(core::mem::size_of::<Config>() == 16);

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

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all types are repr(C), Copy, contain only integers and byte arrays,
    // and have explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for IpKey {}
    unsafe impl aya::Pod for PolicyScope {}
    unsafe impl aya::Pod for PolicyKeyV4 {}
    unsafe impl aya::Pod for PolicyKeyV6 {}
    unsafe impl aya::Pod for PortRange {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for RateValue {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for EventBudget {}
}

impl IpKey {
    pub const fn v4(addr: [u8; 4]) -> Self {
        let mut a = [0u8; 16];
        a[0] = addr[0];
        a[1] = addr[1];
        a[2] = addr[2];
        a[3] = addr[3];
        Self {
            family: FAMILY_V4,
            _pad0: [0; 3],
            addr: a,
        }
    }
    pub const fn v6(addr: [u8; 16]) -> Self {
        Self {
            family: FAMILY_V6,
            _pad0: [0; 3],
            addr,
        }
    }
}

impl PolicyScope {
    pub const fn new(endpoint_id: u32, direction: u8) -> Self {
        Self {
            endpoint_be: endpoint_id.to_be_bytes(),
            direction,
            _pad0: [0; 3],
        }
    }
}
