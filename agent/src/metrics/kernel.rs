//! What a scrape reads from the kernel: the programs' per-CPU statistics
//! (packets and bytes by direction, verdict and reason), per-pod counters
//! (`--metrics-pod-labels`), ring-buffer losses and map occupancy, through
//! handles of its own on the pinned maps.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use aya::maps::{HashMap as BpfHashMap, LpmTrie, Map, MapData, PerCpuArray};
use palisade_common::{
    maps as names, stat_reason_name, stat_slot, Counters, CtKeyV4, CtKeyV6, CtQuota, CtValue,
    Endpoint, PolicyKeyV4, PolicyKeyV6, PolicyValue, Stat, DIR_EGRESS, DIR_INGRESS, MAX_CONNTRACK,
    MAX_CT_NEW, MAX_ENDPOINTS, MAX_POLICY_ENTRIES, STAT_ALLOWED, STAT_AUDIT, STAT_DENIED,
    STAT_REASONS,
};
use palisade_policy::PodKey;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use crate::datapath::open_pinned_map;

/// The pinned maps a scrape reads, opened once.
struct Opened {
    stats: PerCpuArray<MapData, Stat>,
    counters: PerCpuArray<MapData, Counters>,
    ct_quota: PerCpuArray<MapData, CtQuota>,
    endpoints: BpfHashMap<MapData, u32, Endpoint>,
    policy_v4: LpmTrie<MapData, PolicyKeyV4, PolicyValue>,
    policy_v6: LpmTrie<MapData, PolicyKeyV6, PolicyValue>,
    policy_host_v4: BpfHashMap<MapData, PolicyKeyV4, PolicyValue>,
    policy_host_v6: BpfHashMap<MapData, PolicyKeyV6, PolicyValue>,
    /// LRU hashes; aya reads them through its HashMap type.
    ct4: BpfHashMap<MapData, CtKeyV4, CtValue>,
    ct4_new: BpfHashMap<MapData, CtKeyV4, CtValue>,
    ct6: BpfHashMap<MapData, CtKeyV6, CtValue>,
    ct6_new: BpfHashMap<MapData, CtKeyV6, CtValue>,
}

impl Opened {
    fn open(pin_dir: &std::path::Path) -> Option<Self> {
        let map = |n: &str| {
            open_pinned_map(pin_dir, n)
                .ok()
                .and_then(|d| Map::from_map_data(d).ok())
        };
        Some(Self {
            stats: map(names::STATS)?.try_into().ok()?,
            counters: map(names::COUNTERS)?.try_into().ok()?,
            ct_quota: map(names::CT_QUOTA)?.try_into().ok()?,
            endpoints: map(names::ENDPOINTS)?.try_into().ok()?,
            policy_v4: map(names::POLICY_V4)?.try_into().ok()?,
            policy_v6: map(names::POLICY_V6)?.try_into().ok()?,
            policy_host_v4: map(names::POLICY_HOST_V4)?.try_into().ok()?,
            policy_host_v6: map(names::POLICY_HOST_V6)?.try_into().ok()?,
            ct4: map(names::CONNTRACK_V4)?.try_into().ok()?,
            ct4_new: map(names::CT_NEW_V4)?.try_into().ok()?,
            ct6: map(names::CONNTRACK_V6)?.try_into().ok()?,
            ct6_new: map(names::CT_NEW_V6)?.try_into().ok()?,
        })
    }

    /// One statistics slot summed over CPUs.
    fn stat(&self, slot: u32) -> Stat {
        let mut sum = Stat::default();
        if let Ok(per_cpu) = self.stats.get(&slot, 0) {
            for s in per_cpu.iter() {
                sum.add(s);
            }
        }
        sum
    }
}

/// Reads the kernel's counters and map sizes at scrape time.
pub(super) struct KernelCounters {
    pin_dir: PathBuf,
    maps: Mutex<Option<Opened>>,
    /// Endpoint id -> pod, with `--metrics-pod-labels`.
    pods: Option<Arc<Mutex<BTreeMap<u32, PodKey>>>>,
}

impl KernelCounters {
    pub(super) fn new(pin_dir: PathBuf, pods: Option<Arc<Mutex<BTreeMap<u32, PodKey>>>>) -> Self {
        Self {
            pin_dir,
            maps: Mutex::new(None),
            pods,
        }
    }
}

impl std::fmt::Debug for KernelCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCounters")
            .field("pin_dir", &self.pin_dir)
            .finish()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PacketLabels {
    direction: &'static str,
    verdict: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    namespace: String,
    pod: String,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

/// Every (labels, slot) of the statistics with a named reason.
fn packet_series() -> Vec<(PacketLabels, u32)> {
    let mut out = Vec::new();
    for (dir, direction) in [(DIR_INGRESS, "ingress"), (DIR_EGRESS, "egress")] {
        for (v, verdict) in [
            (STAT_ALLOWED, "allowed"),
            (STAT_DENIED, "denied"),
            (STAT_AUDIT, "audit"),
        ] {
            for code in 0..STAT_REASONS as u8 {
                if let Some(reason) = stat_reason_name(v, code) {
                    let labels = PacketLabels {
                        direction,
                        verdict,
                        reason,
                    };
                    out.push((labels, stat_slot(dir, v, code)));
                }
            }
        }
    }
    out
}

impl Collector for KernelCounters {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Ok(mut guard) = self.maps.lock() else {
            return Ok(());
        };
        if guard.is_none() {
            *guard = Opened::open(&self.pin_dir);
        }
        let Some(m) = guard.as_ref() else {
            return Ok(());
        };
        let series = packet_series();
        let stats: Vec<(PacketLabels, Stat)> = series
            .into_iter()
            .map(|(l, slot)| (l, m.stat(slot)))
            .collect();
        let mut family = encoder.encode_descriptor(
            "palisade_packets",
            "Packets judged by the TC programs, by direction (of the pod), verdict (audit: would have been denied, passed) and reason",
            None,
            MetricType::Counter,
        )?;
        for (labels, s) in &stats {
            ConstCounter::new(s.packets).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "palisade_bytes",
            "Bytes of the packets judged, by direction, verdict and reason",
            None,
            MetricType::Counter,
        )?;
        for (labels, s) in &stats {
            ConstCounter::new(s.bytes).encode(family.encode_family(labels)?)?;
        }
        let mut per_endpoint: BTreeMap<u32, Counters> = BTreeMap::new();
        for (id, per_cpu) in m.counters.iter().enumerate() {
            let Ok(per_cpu) = per_cpu else { continue };
            let Ok(id) = u32::try_from(id) else { break };
            let c = per_endpoint.entry(id).or_default();
            for one in per_cpu.iter() {
                c.add(one);
            }
        }
        let lost: u64 = per_endpoint.values().map(|c| c.events_lost).sum();
        let family = encoder.encode_descriptor(
            "palisade_ringbuf_lost",
            "Events the kernel could not reserve in the ring buffer",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(lost).encode(family)?;
        // Confirmations refused, per endpoint id, summed over CPUs.
        let mut refused: BTreeMap<u32, u64> = BTreeMap::new();
        for (id, per_cpu) in m.ct_quota.iter().enumerate() {
            let Ok(per_cpu) = per_cpu else { continue };
            let Ok(id) = u32::try_from(id) else { break };
            let n: u64 = per_cpu.iter().map(|q| q.refused).sum();
            if n > 0 {
                refused.insert(id, n);
            }
        }
        let family = encoder.encode_descriptor(
            "palisade_conntrack_unconfirmed",
            "Replies whose connection stayed in the unanswered conntrack table because its pod had spent its confirmation budget (--conntrack-confirms-per-second); the replies passed",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(refused.values().sum::<u64>()).encode(family)?;
        if let Some(pods) = &self.pods {
            let pods = pods.lock().map(|p| p.clone()).unwrap_or_default();
            let mut family = encoder.encode_descriptor(
                "palisade_pod_conntrack_unconfirmed",
                "palisade_conntrack_unconfirmed for one local pod (--metrics-pod-labels)",
                None,
                MetricType::Counter,
            )?;
            for (id, pod) in &pods {
                let Some(n) = refused.get(id) else { continue };
                let labels = [
                    ("namespace", pod.namespace().to_string()),
                    ("pod", pod.name().to_string()),
                ];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
            let rows: Vec<(PodLabels, u64, Option<u64>)> = pods
                .iter()
                .filter_map(|(id, pod)| Some((pod, per_endpoint.get(id)?)))
                .flat_map(|(pod, c)| {
                    let label = |verdict| PodLabels {
                        namespace: pod.namespace().to_string(),
                        pod: pod.name().to_string(),
                        verdict,
                    };
                    // The datapath counts an audited packet as allowed too (it passes).
                    [
                        (
                            label("allowed"),
                            c.allowed_packets.saturating_sub(c.audit_packets),
                            Some(c.allowed_bytes),
                        ),
                        (label("audit"), c.audit_packets, None),
                        (label("denied"), c.denied_packets, Some(c.denied_bytes)),
                    ]
                })
                .collect();
            let mut family = encoder.encode_descriptor(
                "palisade_pod_packets",
                "Packets judged for one local pod, by verdict (--metrics-pod-labels)",
                None,
                MetricType::Counter,
            )?;
            for (labels, packets, _) in &rows {
                ConstCounter::new(*packets).encode(family.encode_family(labels)?)?;
            }
            let mut family = encoder.encode_descriptor(
                "palisade_pod_bytes",
                "Bytes judged for one local pod, by verdict: allowed (audited included), denied (--metrics-pod-labels)",
                None,
                MetricType::Counter,
            )?;
            for (labels, _, bytes) in &rows {
                if let Some(b) = bytes {
                    ConstCounter::new(*b).encode(family.encode_family(labels)?)?;
                }
            }
        }
        let entries = [
            ("endpoints", m.endpoints.keys().count(), MAX_ENDPOINTS),
            ("policy_v4", m.policy_v4.keys().count(), MAX_POLICY_ENTRIES),
            ("policy_v6", m.policy_v6.keys().count(), MAX_POLICY_ENTRIES),
            (
                "policy_host_v4",
                m.policy_host_v4.keys().count(),
                MAX_POLICY_ENTRIES,
            ),
            (
                "policy_host_v6",
                m.policy_host_v6.keys().count(),
                MAX_POLICY_ENTRIES,
            ),
            ("conntrack_v4", m.ct4.keys().count(), MAX_CONNTRACK),
            ("conntrack_new_v4", m.ct4_new.keys().count(), MAX_CT_NEW),
            ("conntrack_v6", m.ct6.keys().count(), MAX_CONNTRACK),
            ("conntrack_new_v6", m.ct6_new.keys().count(), MAX_CT_NEW),
        ];
        let mut family = encoder.encode_descriptor(
            "palisade_map_entries",
            "Entries in a BPF map (entries / palisade_map_capacity is its pressure)",
            None,
            MetricType::Gauge,
        )?;
        for (map, n, _) in entries {
            ConstGauge::new(n as i64).encode(family.encode_family(&MapLabels { map })?)?;
        }
        let mut family = encoder.encode_descriptor(
            "palisade_map_capacity",
            "Capacity of a BPF map",
            None,
            MetricType::Gauge,
        )?;
        for (map, _, cap) in entries {
            ConstGauge::new(i64::from(cap)).encode(family.encode_family(&MapLabels { map })?)?;
        }
        Ok(())
    }
}
