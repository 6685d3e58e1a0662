//! Metrics: what `GET /metrics` serves (OpenMetrics text, `prometheus-client`).
//!
//! Packet and byte counts are read from the kernel's per-CPU counters at scrape
//! time (never counted from events, which are rate-limited), through a handle
//! of their own on the pinned maps; map occupancy the same way. The sync loop
//! records passes, programming latency, map writes and repairs as they happen.
use std::{path::PathBuf, sync::Mutex};

use aya::maps::{HashMap as BpfHashMap, LpmTrie, Map, MapData, PerCpuHashMap};
use palisade_common::{
    maps as names, Counters, CtKey, CtValue, Endpoint, PolicyKeyV4, PolicyKeyV6, PolicyValue,
    MAX_CONNTRACK, MAX_ENDPOINTS, MAX_POLICY_ENTRIES,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};

use crate::datapath::open_pinned_map;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    /// `full` (everything against what the maps hold) or `incremental`.
    pub kind: &'static str,
    /// `ok`, or `error` when a write or an attach failed.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub attach_mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Programming latency buckets: 1 ms to 10 s, three per decade.
const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The agent's metrics, shared by the sync loop (which updates them) and the
/// HTTP endpoint (which encodes them).
/// What one programming pass did, for the pass metrics.
#[derive(Clone, Debug, Default)]
pub struct PassStats {
    pub full: bool,
    pub errors: bool,
    pub writes: usize,
    pub repaired: usize,
    pub endpoints: usize,
    pub fail_closed: usize,
    pub missing_interfaces: usize,
    pub policies: usize,
    pub cluster_policies: usize,
}

pub struct Metrics {
    registry: Registry,
    pub passes: Family<PassLabels, Counter>,
    pub programming_seconds: Histogram,
    pub map_writes: Counter,
    pub repairs: Counter,
    pub endpoints: Family<StateLabels, Gauge>,
    pub policies: Family<KindLabels, Gauge>,
}

impl Metrics {
    pub fn new(pin_dir: PathBuf, attach_mode: &str) -> Self {
        let mut registry = Registry::default();
        let passes = Family::<PassLabels, Counter>::default();
        registry.register(
            "palisade_programming_passes",
            "Programming passes of the sync loop, by kind and outcome",
            passes.clone(),
        );
        let programming_seconds = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "palisade_policy_programming_seconds",
            "From a source change (or an interface change, or the resync) to its map writes done",
            programming_seconds.clone(),
        );
        let map_writes = Counter::default();
        registry.register(
            "palisade_map_writes",
            "BPF map writes (upserts and deletes) made",
            map_writes.clone(),
        );
        let repairs = Counter::default();
        registry.register(
            "palisade_repairs",
            "Pins and attachments found missing and restored",
            repairs.clone(),
        );
        let endpoints = Family::<StateLabels, Gauge>::default();
        registry.register(
            "palisade_endpoints",
            "Local pods, by state: enforced, fail_closed (rules do not fit), missing_interface",
            endpoints.clone(),
        );
        let policies = Family::<KindLabels, Gauge>::default();
        registry.register(
            "palisade_policies",
            "Policies known, by kind: networkpolicy, clusternetworkpolicy",
            policies.clone(),
        );
        // Prometheus' convention for build information: a gauge at 1.
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                attach_mode: attach_mode.to_string(),
            })
            .set(1);
        registry.register(
            "palisade_build_info",
            "Agent version and attach mode (always 1)",
            build,
        );
        registry.register_collector(Box::new(KernelCounters {
            pin_dir,
            maps: Mutex::new(None),
        }));
        Self {
            registry,
            passes,
            programming_seconds,
            map_writes,
            repairs,
            endpoints,
            policies,
        }
    }

    /// The OpenMetrics text of every metric.
    /// Counts one programming pass and sets the gauges it determines.
    pub fn record_pass(&self, p: &PassStats) {
        let outcome = if p.errors { "error" } else { "ok" };
        let kind = if p.full { "full" } else { "incremental" };
        self.passes
            .get_or_create(&PassLabels { kind, outcome })
            .inc();
        self.map_writes.inc_by(p.writes as u64);
        self.repairs.inc_by(p.repaired as u64);
        for (state, n) in [
            ("enforced", p.endpoints.saturating_sub(p.fail_closed)),
            ("fail_closed", p.fail_closed),
            ("missing_interface", p.missing_interfaces),
        ] {
            self.endpoints
                .get_or_create(&StateLabels { state })
                .set(n as i64);
        }
        for (kind, n) in [
            ("networkpolicy", p.policies),
            ("clusternetworkpolicy", p.cluster_policies),
        ] {
            self.policies
                .get_or_create(&KindLabels { kind })
                .set(n as i64);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The same in Prometheus' classic text format (0.0.4), for clients that
    /// do not ask for OpenMetrics (`curl`, `promtool check metrics`).
    pub fn encode_classic(&self) -> String {
        to_classic_text(&self.encode())
    }
}

/// OpenMetrics text -> classic text format: a counter family's HELP and TYPE
/// lines name its samples (`x_total`), and `# EOF` / `# UNIT` go.
pub fn to_classic_text(open: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let open = "# HELP a_b Help.\n# TYPE a_b counter\na_b_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\n# UNIT g seconds\ng 1\n# EOF\n";
        assert_eq!(
            super::to_classic_text(open),
            "# HELP a_b_total Help.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}

/// The pinned maps a scrape reads, opened once.
struct Opened {
    counters: PerCpuHashMap<MapData, u32, Counters>,
    endpoints: BpfHashMap<MapData, u32, Endpoint>,
    policy_v4: LpmTrie<MapData, PolicyKeyV4, PolicyValue>,
    policy_v6: LpmTrie<MapData, PolicyKeyV6, PolicyValue>,
    /// An LRU hash; aya reads it through its HashMap type.
    conntrack: BpfHashMap<MapData, CtKey, CtValue>,
}

impl Opened {
    fn open(pin_dir: &std::path::Path) -> Option<Self> {
        let map = |n: &str| {
            open_pinned_map(pin_dir, n)
                .ok()
                .and_then(|d| Map::from_map_data(d).ok())
        };
        Some(Self {
            counters: map(names::COUNTERS)?.try_into().ok()?,
            endpoints: map(names::ENDPOINTS)?.try_into().ok()?,
            policy_v4: map(names::POLICY_V4)?.try_into().ok()?,
            policy_v6: map(names::POLICY_V6)?.try_into().ok()?,
            conntrack: map(names::CONNTRACK)?.try_into().ok()?,
        })
    }
}

/// Reads the kernel's counters and map sizes at scrape time.
struct KernelCounters {
    pin_dir: PathBuf,
    maps: Mutex<Option<Opened>>,
}

impl std::fmt::Debug for KernelCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCounters")
            .field("pin_dir", &self.pin_dir)
            .finish()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
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
        let mut sum = Counters::default();
        for (_, per_cpu) in m.counters.iter().flatten() {
            for c in per_cpu.iter() {
                sum.add(c);
            }
        }
        // The datapath counts an audited packet as allowed too (it passes).
        let packets = [
            (
                "allowed",
                sum.allowed_packets.saturating_sub(sum.audit_packets),
            ),
            ("audit", sum.audit_packets),
            ("denied", sum.denied_packets),
        ];
        let mut family = encoder.encode_descriptor(
            "palisade_packets",
            "Packets judged by the TC programs, by verdict (audit: would have been denied, passed)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (verdict, n) in packets {
            ConstCounter::new(n).encode(family.encode_family(&VerdictLabels { verdict })?)?;
        }
        let mut family = encoder.encode_descriptor(
            "palisade_bytes",
            "Bytes of the packets judged, by verdict (allowed includes audited packets)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (verdict, n) in [("allowed", sum.allowed_bytes), ("denied", sum.denied_bytes)] {
            ConstCounter::new(n).encode(family.encode_family(&VerdictLabels { verdict })?)?;
        }
        let lost = encoder.encode_descriptor(
            "palisade_ringbuf_lost",
            "Events the kernel could not reserve in the ring buffer",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        ConstCounter::new(sum.events_lost).encode(lost)?;
        let entries = [
            ("endpoints", m.endpoints.keys().count(), MAX_ENDPOINTS),
            ("policy_v4", m.policy_v4.keys().count(), MAX_POLICY_ENTRIES),
            ("policy_v6", m.policy_v6.keys().count(), MAX_POLICY_ENTRIES),
            ("conntrack", m.conntrack.keys().count(), MAX_CONNTRACK),
        ];
        let mut family = encoder.encode_descriptor(
            "palisade_map_entries",
            "Entries in a BPF map (entries / palisade_map_capacity is its pressure)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (map, n, _) in entries {
            ConstGauge::new(n as i64).encode(family.encode_family(&MapLabels { map })?)?;
        }
        let mut family = encoder.encode_descriptor(
            "palisade_map_capacity",
            "Capacity of a BPF map",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (map, _, cap) in entries {
            ConstGauge::new(i64::from(cap)).encode(family.encode_family(&MapLabels { map })?)?;
        }
        Ok(())
    }
}
