//! Metrics: what `GET /metrics` serves (OpenMetrics text, `prometheus-client`).
//!
//! Packet and byte counts are read from the kernel's per-CPU statistics at
//! scrape time (never counted from events, which are rate-limited), through a
//! handle of their own on the pinned maps; map occupancy the same way
//! (`kernel`). The sync loop records passes, programming latency, map writes,
//! repairs and attachments as they happen; the event reader records events;
//! the sources their health.
mod classic;
mod kernel;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use palisade_common::{Event, VERDICT_ALLOWED, VERDICT_AUDIT};
use palisade_policy::PodKey;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub use classic::to_classic_text;
use kernel::KernelCounters;

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
    pub kernel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub hook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

/// Programming latency buckets: 1 ms to 10 s, three per decade.
const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

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

/// The agent's metrics, shared by the sync loop and the event reader (which
/// update them) and the HTTP endpoint (which encodes them).
pub struct Metrics {
    registry: Registry,
    pub passes: Family<PassLabels, Counter>,
    pub programming_seconds: Histogram,
    pub map_writes: Counter,
    pub repairs: Counter,
    pub endpoints: Family<StateLabels, Gauge>,
    pub policies: Family<KindLabels, Gauge>,
    pub interfaces_attached: Family<HookLabels, Gauge>,
    pub events: Family<VerdictLabels, Counter>,
    pub events_suppressed: Counter,
    pub events_throttled: Counter,
    pub event_readers_dropped: Counter,
    pub source_up: Family<ResourceLabels, Gauge>,
    pub source_restarts: Family<ResourceLabels, Counter>,
    /// Endpoint id -> pod, for the per-pod series (`--metrics-pod-labels`).
    pods: Option<Arc<Mutex<BTreeMap<u32, PodKey>>>>,
}

/// Registers a metric and hands it back.
fn reg<M: prometheus_client::registry::Metric + Clone>(
    r: &mut Registry,
    name: &str,
    help: &str,
    m: M,
) -> M {
    r.register(name, help, m.clone());
    m
}

impl Metrics {
    /// `pod_labels`: also per-pod series (`--metrics-pod-labels`).
    pub fn new(pin_dir: PathBuf, attach_mode: &str, pod_labels: bool) -> Self {
        let mut r = Registry::default();
        let passes = reg(
            &mut r,
            "palisade_programming_passes",
            "Programming passes of the sync loop, by kind and outcome",
            Family::<PassLabels, Counter>::default(),
        );
        let programming_seconds = reg(
            &mut r,
            "palisade_policy_programming_seconds",
            "From a source change (or an interface change, or the resync) to its map writes done",
            Histogram::new(LATENCY_BUCKETS),
        );
        let map_writes = reg(
            &mut r,
            "palisade_map_writes",
            "BPF map writes (upserts and deletes) made",
            Counter::default(),
        );
        let repairs = reg(
            &mut r,
            "palisade_repairs",
            "Pins and attachments found missing and restored",
            Counter::default(),
        );
        let endpoints = reg(
            &mut r,
            "palisade_endpoints",
            "Local pods, by state: enforced, fail_closed (rules do not fit), missing_interface",
            Family::<StateLabels, Gauge>::default(),
        );
        let policies = reg(
            &mut r,
            "palisade_policies",
            "Policies known, by kind: networkpolicy, clusternetworkpolicy",
            Family::<KindLabels, Gauge>::default(),
        );
        let interfaces_attached = reg(
            &mut r,
            "palisade_interfaces_attached",
            "Interfaces with a program of this agent attached, by hook: to_pod, from_pod, svc_egress",
            Family::<HookLabels, Gauge>::default(),
        );
        let events = reg(
            &mut r,
            "palisade_events",
            "Events read from the datapath, by verdict: denied, audit, allowed (flow events)",
            Family::<VerdictLabels, Counter>::default(),
        );
        let events_suppressed = reg(
            &mut r,
            "palisade_events_suppressed",
            "Events the per-flow rate limit dropped (as reported by the next event of the flow)",
            Counter::default(),
        );
        let events_throttled = reg(
            &mut r,
            "palisade_events_throttled",
            "Events the per-pod budget dropped (as reported by the pod's next event)",
            Counter::default(),
        );
        let event_readers_dropped = reg(
            &mut r,
            "palisade_event_readers_dropped",
            "GET /events readers disconnected for falling behind the stream",
            Counter::default(),
        );
        let source_up = reg(
            &mut r,
            "palisade_source_up",
            "Whether the source of a resource is current (1) or failing (0)",
            Family::<ResourceLabels, Gauge>::default(),
        );
        let source_restarts = reg(
            &mut r,
            "palisade_source_restarts",
            "Times the list/watch of a resource failed and was restarted",
            Family::<ResourceLabels, Counter>::default(),
        );
        // Prometheus' convention for build information: a gauge at 1.
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                attach_mode: attach_mode.to_string(),
                kernel: kernel_release(),
            })
            .set(1);
        r.register(
            "palisade_build_info",
            "Agent version, attach mode and kernel release (always 1)",
            build,
        );
        let pods = pod_labels.then(|| Arc::new(Mutex::new(BTreeMap::new())));
        r.register_collector(Box::new(KernelCounters::new(pin_dir, pods.clone())));
        Self {
            registry: r,
            passes,
            programming_seconds,
            map_writes,
            repairs,
            endpoints,
            policies,
            interfaces_attached,
            events,
            events_suppressed,
            events_throttled,
            event_readers_dropped,
            source_up,
            source_restarts,
            pods,
        }
    }

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

    /// The interfaces with a program attached, per hook (program name).
    pub fn record_attached(&self, per_hook: &[(&'static str, usize)]) {
        for (hook, n) in per_hook {
            self.interfaces_attached
                .get_or_create(&HookLabels { hook })
                .set(*n as i64);
        }
    }

    /// The local pods by endpoint id, for the per-pod series; a pod no longer
    /// listed loses its series at the next scrape.
    pub fn set_pods(&self, by_id: &BTreeMap<u32, PodKey>) {
        if let Some(p) = &self.pods {
            if let Ok(mut p) = p.lock() {
                p.clone_from(by_id);
            }
        }
    }

    /// One event read from the ring buffer.
    pub fn record_event(&self, ev: &Event) {
        let verdict = match ev.verdict {
            VERDICT_ALLOWED => "allowed",
            VERDICT_AUDIT => "audit",
            _ => "denied",
        };
        self.events.get_or_create(&VerdictLabels { verdict }).inc();
        self.events_suppressed.inc_by(u64::from(ev.suppressed));
        self.events_throttled.inc_by(u64::from(ev.throttled));
    }

    /// A source's health: `up`, and whether its stream restarted.
    pub fn record_source(&self, resource: &str, up: bool, restarted: bool) {
        let labels = ResourceLabels {
            resource: resource.to_string(),
        };
        self.source_up.get_or_create(&labels).set(i64::from(up));
        let restarts = self.source_restarts.get_or_create(&labels);
        if restarted {
            restarts.inc();
        }
    }

    /// The OpenMetrics text of every metric.
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

/// The running kernel's release (`uname -r`).
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}
