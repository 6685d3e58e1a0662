//! The programs' maps, declared with the names and capacities of
//! `palisade_common::maps` (the agent's tests check the built object against
//! `SPECS`), and the per-CPU scratch accessors.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use palisade_common::{maps::F_NO_PREALLOC, *};

use crate::parse::Flow;

#[map(name = "PAL_ENDPOINTS")]
pub static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map(name = "PAL_EP_BY_IP")]
pub static EP_BY_IP: HashMap<IpKey, u32> = HashMap::pinned(MAX_ENDPOINT_ADDRS, 0);

#[map(name = "PAL_POLICY_V4")]
pub static POLICY_V4: LpmTrie<PolicyKeyV4, PolicyValue> =
    LpmTrie::pinned(MAX_POLICY_ENTRIES, F_NO_PREALLOC);

#[map(name = "PAL_POLICY_V6")]
pub static POLICY_V6: LpmTrie<PolicyKeyV6, PolicyValue> =
    LpmTrie::pinned(MAX_POLICY_ENTRIES, F_NO_PREALLOC);

#[map(name = "PAL_POLICY_H4")]
pub static POLICY_HOST_V4: HashMap<PolicyKeyV4, PolicyValue> =
    HashMap::pinned(MAX_POLICY_ENTRIES, F_NO_PREALLOC);

#[map(name = "PAL_POLICY_H6")]
pub static POLICY_HOST_V6: HashMap<PolicyKeyV6, PolicyValue> =
    HashMap::pinned(MAX_POLICY_ENTRIES, F_NO_PREALLOC);

#[map(name = "PAL_NODE_ADDRS")]
pub static NODE_ADDRS: HashMap<IpKey, u32> = HashMap::pinned(MAX_NODE_ADDRS, 0);

#[map(name = "PAL_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, u32> = HashMap::pinned(MAX_SERVICES, 0);

#[map(name = "PAL_CT4")]
pub static CT4: LruHashMap<CtKeyV4, CtValue> = LruHashMap::pinned(MAX_CONNTRACK, 0);

#[map(name = "PAL_CT4_NEW")]
pub static CT4_NEW: LruHashMap<CtKeyV4, CtValue> = LruHashMap::pinned(MAX_CT_NEW, 0);

#[map(name = "PAL_CT6")]
pub static CT6: LruHashMap<CtKeyV6, CtValue> = LruHashMap::pinned(MAX_CONNTRACK, 0);

#[map(name = "PAL_CT6_NEW")]
pub static CT6_NEW: LruHashMap<CtKeyV6, CtValue> = LruHashMap::pinned(MAX_CT_NEW, 0);

#[map(name = "PAL_CT_QUOTA")]
pub static CT_QUOTA: PerCpuArray<CtQuota> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

#[map(name = "PAL_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

#[map(name = "PAL_EVENT_RATE")]
pub static EVENT_RATE: LruHashMap<FlowKey, RateValue> = LruHashMap::pinned(MAX_EVENT_RATE, 0);

#[map(name = "PAL_EP_COUNTERS")]
pub static COUNTERS: PerCpuArray<Counters> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

#[map(name = "PAL_EVENT_BUDGET")]
pub static EVENT_BUDGET: PerCpuHashMap<u32, EventBudget> =
    PerCpuHashMap::pinned(MAX_ENDPOINTS, F_NO_PREALLOC);

#[map(name = "PAL_CONFIG")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "PAL_STATS_R10")]
pub static STATS: PerCpuArray<Stat> = PerCpuArray::pinned(STAT_SLOTS, 0);

/// Per-CPU scratch flows: 0 is the packet being judged, 1 the flow an ICMP error
/// quotes. Kept in a map rather than on the stack because LLVM splits a stack
/// Flow into scalars and spills them around every helper call, which pushed
/// to_pod past the verifier's 512-byte stack limit on 6.1. Not pinned: scratch
/// only, never shared across programs' runs.
#[map(name = "PAL_SCRATCH")]
static SCRATCH: PerCpuArray<Flow> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

/// Per-CPU scratch event rate key, see [`scratch_key`].
#[map(name = "PAL_SCRATCH_KEY")]
static SCRATCH_KEY: PerCpuArray<FlowKey> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

/// Scratch flow `slot` of this CPU.
#[inline(always)]
pub fn scratch(slot: u32) -> Option<&'static mut Flow> {
    // SAFETY: per-CPU, and a TC program runs to completion on its CPU.
    SCRATCH.get_ptr_mut(slot).map(|p| unsafe { &mut *p })
}

/// This CPU's scratch event rate key: a key on the stack costs 48 bytes of
/// the 512.
#[inline(always)]
pub fn scratch_key() -> Option<&'static mut FlowKey> {
    // SAFETY: as for `scratch`.
    SCRATCH_KEY.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
