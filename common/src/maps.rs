//! Every BPF map: its name, type, key and value types' sizes, capacity and
//! flags, defined once. The eBPF crate declares its maps with these capacities
//! under these names (aya's `#[map]` takes only a literal name, so the agent's
//! tests check the built object against [`SPECS`]); user space opens maps by
//! these names.

use core::mem::size_of;

use crate::{
    Config, Counters, CtKeyV4, CtKeyV6, CtQuota, CtValue, Endpoint, EventBudget, FlowKey, IpKey,
    PolicyKeyV4, PolicyKeyV6, PolicyValue, RateValue, ServiceKey, Stat, STAT_SLOTS,
};

/// Map names: the names of their pins. The kernel keeps only the first 15
/// bytes as the map object's own name.
pub const ENDPOINTS: &str = "PAL_ENDPOINTS";
pub const ENDPOINT_BY_IP: &str = "PAL_EP_BY_IP";
pub const POLICY_V4: &str = "PAL_POLICY_V4";
pub const POLICY_V6: &str = "PAL_POLICY_V6";
/// Full-length (host) policy entries: a hash the programs probe before the
/// trie. A host entry is the longest prefix there is, so it is the trie's
/// answer too; one probe instead of a walk as deep as the trie.
pub const POLICY_HOST_V4: &str = "PAL_POLICY_H4";
pub const POLICY_HOST_V6: &str = "PAL_POLICY_H6";
pub const NODE_ADDRS: &str = "PAL_NODE_ADDRS";
pub const SERVICES: &str = "PAL_SERVICES";
/// IPv4 connections a reply has confirmed.
pub const CONNTRACK_V4: &str = "PAL_CT4";
/// IPv4 connections not answered yet: a flood of new flows churns this table
/// only, never the confirmed one.
pub const CT_NEW_V4: &str = "PAL_CT4_NEW";
/// The same two tables for IPv6.
pub const CONNTRACK_V6: &str = "PAL_CT6";
pub const CT_NEW_V6: &str = "PAL_CT6_NEW";
/// Per-endpoint budget of confirmations (`CtQuota`), indexed by endpoint id.
pub const CT_QUOTA: &str = "PAL_CT_QUOTA";
/// Conntrack pins of the one-table-per-direction layout with 44-byte keys for
/// both families; an agent finding them copies their entries and removes them.
pub const LEGACY_CONNTRACK: [&str; 2] = ["PAL_CONNTRACK", "PAL_CT_NEW"];
pub const EVENTS: &str = "PAL_EVENTS";
pub const EVENT_RATE: &str = "PAL_EVENT_RATE";
/// Per-endpoint counters, indexed by endpoint id (an array: one lookup without
/// hashing per packet).
pub const COUNTERS: &str = "PAL_EP_COUNTERS";
pub const CONFIG: &str = "PAL_CONFIG";
pub const EVENT_BUDGET: &str = "PAL_EVENT_BUDGET";
/// Named for its layout: an agent of another layout pins its own.
pub const STATS: &str = "PAL_STATS_R10";
/// Per-CPU scratch space of the programs; never pinned or read by user space.
pub const SCRATCH: &str = "PAL_SCRATCH";
pub const SCRATCH_KEY: &str = "PAL_SCRATCH_KEY";

/// Map capacities. The writer refuses (fail closed for that endpoint) instead of
/// truncating when any of these would be exceeded.
pub const MAX_ENDPOINTS: u32 = 1024;
/// Slots of the counters array: endpoint ids 1..=MAX_ENDPOINTS (the agent
/// gives out the smallest free id); slot 0 (no endpoint) is never counted.
pub const COUNTER_SLOTS: u32 = MAX_ENDPOINTS + 1;
/// Addresses of local pods: two per endpoint (IPv4 and IPv6).
pub const MAX_ENDPOINT_ADDRS: u32 = MAX_ENDPOINTS * 2;
/// The default; the agent may load the policy maps with another capacity.
pub const MAX_POLICY_ENTRIES: u32 = 262_144;
pub const MAX_NODE_ADDRS: u32 = 256;
pub const MAX_SERVICES: u32 = 65_536;
/// Confirmed connections, per family (half in the test layout, see
/// `build.rs`: a table of another capacity, whose entries an upgrade copies).
pub const MAX_CONNTRACK: u32 = if cfg!(palisade_test_layout) {
    131_072
} else {
    262_144
};
/// Unanswered connections, per family (an LRU of its own; a connection moves
/// to the confirmed table with its first reply).
pub const MAX_CT_NEW: u32 = 65_536;
pub const MAX_EVENT_RATE: u32 = 65_536;
pub const EVENTS_RING_BYTES: u32 = 1 << 20;
/// Slots of each scratch map: 0 for the packet being judged, 1 for the flow an
/// ICMP error quotes (`SCRATCH`); slot 0 of `SCRATCH_KEY` is the event rate
/// key.
pub const SCRATCH_SLOTS: u32 = 2;
/// Size of the programs' parsed-packet record kept in `SCRATCH` (private to the
/// programs, which assert it at compile time).
pub const SCRATCH_FLOW_SIZE: u32 = 56;

/// `BPF_F_NO_PREALLOC`: entries allocated on insert (required by LPM tries;
/// the host-entry hashes use it too, so their capacity costs nothing unused).
pub const F_NO_PREALLOC: u32 = 1;

/// The BPF map types Palisade uses (`enum bpf_map_type`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash = 1,
    Array = 2,
    PerCpuHash = 5,
    PerCpuArray = 6,
    LruHash = 9,
    LpmTrie = 11,
    RingBuf = 27,
}

/// One map as the programs declare it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    /// Key size in bytes (LPM tries: with the 4-byte prefix length).
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    /// Pinned, so that enforcement survives an agent restart.
    pub pinned: bool,
}

const fn spec<K, V>(name: &'static str, kind: MapKind, max_entries: u32, flags: u32) -> MapSpec {
    let key_size = match kind {
        MapKind::LpmTrie => 4 + size_of::<K>() as u32,
        _ => size_of::<K>() as u32,
    };
    MapSpec {
        name,
        kind,
        key_size,
        value_size: size_of::<V>() as u32,
        max_entries,
        flags,
        pinned: true,
    }
}

/// Every map of the TC programs.
pub const SPECS: [MapSpec; 21] = [
    spec::<u32, Endpoint>(ENDPOINTS, MapKind::Hash, MAX_ENDPOINTS, 0),
    spec::<IpKey, u32>(ENDPOINT_BY_IP, MapKind::Hash, MAX_ENDPOINT_ADDRS, 0),
    spec::<PolicyKeyV4, PolicyValue>(
        POLICY_V4,
        MapKind::LpmTrie,
        MAX_POLICY_ENTRIES,
        F_NO_PREALLOC,
    ),
    spec::<PolicyKeyV6, PolicyValue>(
        POLICY_V6,
        MapKind::LpmTrie,
        MAX_POLICY_ENTRIES,
        F_NO_PREALLOC,
    ),
    spec::<PolicyKeyV4, PolicyValue>(
        POLICY_HOST_V4,
        MapKind::Hash,
        MAX_POLICY_ENTRIES,
        F_NO_PREALLOC,
    ),
    spec::<PolicyKeyV6, PolicyValue>(
        POLICY_HOST_V6,
        MapKind::Hash,
        MAX_POLICY_ENTRIES,
        F_NO_PREALLOC,
    ),
    spec::<IpKey, u32>(NODE_ADDRS, MapKind::Hash, MAX_NODE_ADDRS, 0),
    spec::<ServiceKey, u32>(SERVICES, MapKind::Hash, MAX_SERVICES, 0),
    spec::<CtKeyV4, CtValue>(CONNTRACK_V4, MapKind::LruHash, MAX_CONNTRACK, 0),
    spec::<CtKeyV4, CtValue>(CT_NEW_V4, MapKind::LruHash, MAX_CT_NEW, 0),
    spec::<CtKeyV6, CtValue>(CONNTRACK_V6, MapKind::LruHash, MAX_CONNTRACK, 0),
    spec::<CtKeyV6, CtValue>(CT_NEW_V6, MapKind::LruHash, MAX_CT_NEW, 0),
    spec::<u32, CtQuota>(CT_QUOTA, MapKind::PerCpuArray, COUNTER_SLOTS, 0),
    MapSpec {
        name: EVENTS,
        kind: MapKind::RingBuf,
        key_size: 0,
        value_size: 0,
        max_entries: EVENTS_RING_BYTES,
        flags: 0,
        pinned: true,
    },
    spec::<FlowKey, RateValue>(EVENT_RATE, MapKind::LruHash, MAX_EVENT_RATE, 0),
    spec::<u32, Counters>(COUNTERS, MapKind::PerCpuArray, COUNTER_SLOTS, 0),
    spec::<u32, EventBudget>(
        EVENT_BUDGET,
        MapKind::PerCpuHash,
        MAX_ENDPOINTS,
        F_NO_PREALLOC,
    ),
    spec::<u32, Config>(CONFIG, MapKind::Array, 1, 0),
    spec::<u32, Stat>(STATS, MapKind::PerCpuArray, STAT_SLOTS, 0),
    MapSpec {
        pinned: false,
        value_size: SCRATCH_FLOW_SIZE,
        ..spec::<u32, u8>(SCRATCH, MapKind::PerCpuArray, SCRATCH_SLOTS, 0)
    },
    MapSpec {
        pinned: false,
        ..spec::<u32, FlowKey>(SCRATCH_KEY, MapKind::PerCpuArray, SCRATCH_SLOTS, 0)
    },
];

/// The spec of the map called `name`.
pub fn spec_of(name: &str) -> Option<&'static MapSpec> {
    SPECS.iter().find(|s| s.name.as_bytes() == name.as_bytes())
}
