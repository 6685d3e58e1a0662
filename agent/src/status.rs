//! What the agent says about itself between passes: readiness (`/ready`),
//! liveness, and the names table the deny log resolves pods and policies with.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use palisade_policy::{ClusterIndex, Direction, PodKey};

use crate::{
    endpoints::{Endpoints, PodInterfaces},
    stream::EventHub,
};

/// Events kept for `/events` readers unless `--event-history` says otherwise.
pub const DEFAULT_EVENT_HISTORY: usize = 10_000;

/// What the readiness endpoint reports.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub generation: u64,
    pub revision: String,
    /// Per resource, the highest resourceVersion programmed (kube source only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub revisions: BTreeMap<String, String>,
    pub endpoints: usize,
    /// Local pods whose interface was not found (yet): their traffic is not
    /// checked by anything of theirs until it is.
    pub missing_interfaces: usize,
    pub attach_mode: String,
    /// Pins and attachments found missing and restored since the agent
    /// started (a removed pin directory, a deleted filter, a detached link).
    pub repairs: u64,
    /// What the last full pass restored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<String>,
    /// Local pods whose rules do not fit the datapath: every direction they
    /// are isolated in denies everything (reason `fail-closed`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fail_closed: Vec<String>,
    pub errors: Vec<String>,
}

/// What the event logger needs to name pods and policies.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub node: String,
    /// ifindex -> pod key of local endpoints
    pub by_ifindex: BTreeMap<u32, PodKey>,
    /// endpoint id -> pod key
    pub by_id: BTreeMap<u32, PodKey>,
    /// any pod address -> pod key (shared with the next pass's table while
    /// the index does not change)
    pub by_ip: Arc<BTreeMap<IpAddr, PodKey>>,
    /// pod key -> (ingress policies, egress policies) selecting it
    pub policies: BTreeMap<PodKey, (Vec<String>, Vec<String>)>,
    pub node_addrs: Vec<IpAddr>,
    /// `ns/name` of the NetworkPolicies that failed validation (shared as
    /// `by_ip` is).
    pub invalid: Arc<BTreeSet<String>>,
    /// The cluster as programmed: deny lines say which tier, policy and rule
    /// decided, from the engine's own explanation. A weak reference, so that
    /// the sync loop's next change does not copy the index (it detaches this
    /// instead; lines rendered before the next pass then go without it).
    pub index: std::sync::Weak<ClusterIndex>,
}

pub struct Shared {
    pub ready: Mutex<Readiness>,
    /// Replaced whole by each pass; readers clone the `Arc`, not the table.
    pub names: Mutex<Arc<Names>>,
    /// When the sync loop last went round (liveness).
    pub heartbeat: Mutex<Instant>,
    /// How long the loop may stay silent before `/healthz` fails: it wakes at
    /// least at every resync, so only a pass stuck in a syscall or a child
    /// process stays silent longer.
    pub stall_after: Duration,
    /// What `/metrics` serves; `None` where no datapath is loaded (tests).
    pub metrics: Option<crate::metrics::Metrics>,
    /// What `/events` streams.
    pub events: EventHub,
}

impl Shared {
    pub fn new(node: &str, resync: Duration) -> Self {
        Shared {
            ready: Mutex::new(Readiness::default()),
            // The node is named from the start: adopted programs may report
            // denies before the first pass fills in the rest.
            names: Mutex::new(Arc::new(Names {
                node: node.to_string(),
                ..Default::default()
            })),
            heartbeat: Mutex::new(Instant::now()),
            stall_after: resync * 3 + Duration::from_secs(30),
            metrics: None,
            events: EventHub::new(DEFAULT_EVENT_HISTORY),
        }
    }

    /// Keeping the last `n` events for `/events` readers.
    pub fn with_event_history(mut self, n: usize) -> Self {
        self.events = EventHub::new(n);
        self
    }

    /// With metrics.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The names as of the last pass.
    pub fn names(&self) -> Arc<Names> {
        self.names.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// Whether the sync loop went round recently enough.
    pub fn alive(&self) -> bool {
        self.heartbeat
            .lock()
            .map(|t| t.elapsed() <= self.stall_after)
            .unwrap_or(false)
    }

    pub(crate) fn beat(&self) {
        if let Ok(mut t) = self.heartbeat.lock() {
            *t = Instant::now();
        }
    }
}

/// The names table for the pods found this pass, and the addresses two pods
/// claim (each a readable line). The cluster-wide part (every pod's address,
/// invalid policies) is taken from `prev` when the index is the one `prev`
/// was built from (a pass for an interface change, or the resync); only the
/// local pods' part is built again.
pub fn names_for_pass(
    prev: (&Names, &[String]),
    node: &str,
    index: &Arc<ClusterIndex>,
    ifaces: &PodInterfaces,
    endpoints: &Endpoints,
    node_addrs: Vec<IpAddr>,
) -> (Names, Vec<String>) {
    let mut names = Names {
        node: node.to_string(),
        node_addrs,
        index: Arc::downgrade(index),
        ..Default::default()
    };
    let same_index = prev
        .0
        .index
        .upgrade()
        .is_some_and(|i| Arc::ptr_eq(&i, index));
    let duplicates = if same_index {
        names.by_ip = Arc::clone(&prev.0.by_ip);
        names.invalid = Arc::clone(&prev.0.invalid);
        prev.1.to_vec()
    } else {
        cluster_names(index, &mut names)
    };
    for (pod, (_, idx)) in ifaces {
        names.by_ifindex.insert(*idx, pod.clone());
        if let Some(id) = endpoints.ids().get(pod) {
            names.by_id.insert(*id, pod.clone());
        }
        names.policies.insert(
            pod.clone(),
            (
                index.policies_selecting(pod, Direction::Ingress),
                index.policies_selecting(pod, Direction::Egress),
            ),
        );
    }
    (names, duplicates)
}

/// The cluster-wide part of the names: every policy pod's addresses (and the
/// addresses two pods claim), the invalid policies.
fn cluster_names(index: &ClusterIndex, names: &mut Names) -> Vec<String> {
    let mut by_ip = BTreeMap::new();
    let mut duplicates = Vec::new();
    for pod in index.pods() {
        if !pod.is_policy_pod() {
            continue;
        }
        for ip in pod
            .ipv4()
            .map(IpAddr::V4)
            .into_iter()
            .chain(pod.ipv6().map(IpAddr::V6))
        {
            if let Some(other) = by_ip.insert(ip, pod.key()) {
                duplicates.push(format!(
                    "pods {other} and {} both claim address {ip} (a stale pod object?): each is judged as its own interface says, and deny lines name the second",
                    pod.key()
                ));
            }
        }
    }
    names.by_ip = Arc::new(by_ip);
    names.invalid = Arc::new(
        index
            .policies()
            .filter(|p| p.error().is_some())
            .map(|p| p.id())
            .collect(),
    );
    duplicates
}
