//! The sync loop: source events -> ClusterIndex -> incremental compile (only the
//! endpoints a change can affect) -> map writes, plus attaching programs to the
//! interfaces of local pods.
//!
//! Nothing is written before the source's first `Synced`. Events are coalesced:
//! the loop drains everything pending, then programs once. Interface changes
//! (netlink) and a periodic resync also trigger programming. The first pass, every
//! resync and the pass after a failed write compile everything and diff against
//! what the maps actually hold (an earlier agent's pins, or drift); the passes in
//! between go through the engine's `Compiler`, whose cost follows the change, not
//! the cluster.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use palisade_common::{Endpoint, EP_FAIL_CLOSED, EP_HAS_V4, EP_HAS_V6};
use palisade_policy::{
    compile::is_local, diff, ClusterIndex, Compiler, Direction, ErrorKind, Kind, MapSet, MapWrite,
    NodeInfo, PodKey,
};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::{
    datapath::{Datapath, Hook},
    discovery::{self, Links},
    maps::{Maps, WriteError},
    source::SourceEvent,
};

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
    /// any pod address -> pod key
    pub by_ip: BTreeMap<IpAddr, PodKey>,
    /// pod key -> (ingress policies, egress policies) selecting it
    pub policies: BTreeMap<PodKey, (Vec<String>, Vec<String>)>,
    pub node_addrs: Vec<IpAddr>,
    /// `ns/name` of the NetworkPolicies that failed validation.
    pub invalid: BTreeSet<String>,
    /// The cluster as programmed: deny lines say which tier, policy and rule
    /// decided, from the engine's own explanation. A weak reference, so that
    /// the sync loop's next change does not copy the index (it detaches this
    /// instead; lines rendered before the next pass then go without it).
    pub index: std::sync::Weak<ClusterIndex>,
}

pub struct Shared {
    pub ready: Mutex<Readiness>,
    pub names: Mutex<Names>,
    /// When the sync loop last went round (liveness).
    pub heartbeat: Mutex<Instant>,
    /// How long the loop may stay silent before `/healthz` fails: it wakes at
    /// least at every resync, so only a pass stuck in a syscall or a child
    /// process stays silent longer.
    pub stall_after: Duration,
    /// What `/metrics` serves; `None` where no datapath is loaded (tests).
    pub metrics: Option<crate::metrics::Metrics>,
}

impl Shared {
    pub fn new(node: &str, resync: Duration) -> Self {
        Shared {
            ready: Mutex::new(Readiness::default()),
            // The node is named from the start: adopted programs may report
            // denies before the first pass fills in the rest.
            names: Mutex::new(Names {
                node: node.to_string(),
                ..Default::default()
            }),
            heartbeat: Mutex::new(Instant::now()),
            stall_after: resync * 3 + Duration::from_secs(30),
            metrics: None,
        }
    }

    /// With metrics.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Whether the sync loop went round recently enough.
    pub fn alive(&self) -> bool {
        self.heartbeat
            .lock()
            .map(|t| t.elapsed() <= self.stall_after)
            .unwrap_or(false)
    }

    fn beat(&self) {
        if let Ok(mut t) = self.heartbeat.lock() {
            *t = Instant::now();
        }
    }
}

pub struct Options {
    pub node: String,
    pub audit: bool,
    pub uplinks: Vec<String>,
    pub node_ips: Vec<IpAddr>,
    pub resync: Duration,
}

pub struct SyncLoop {
    opts: Options,
    dp: Datapath,
    maps: Maps,
    /// Shared with the deny log (explanations) through a weak reference: a
    /// change copies it only while a batch of events is being rendered.
    index: Arc<ClusterIndex>,
    /// The incremental compiler, in step with the maps; `None` until a full pass
    /// has brought the maps to a known state.
    compiler: Option<Compiler>,
    /// Pod -> ifindex its endpoint record was written under.
    written_if: BTreeMap<PodKey, u32>,
    /// Interfaces found by the last discovery, reused until netlink reports a
    /// change (discovery forks `ip`, which costs more than a small change).
    links: Option<Links>,
    /// Whether the netlink watch runs (otherwise every pass discovers).
    links_watched: bool,
    /// Netlink reported a change since `links` was scanned.
    links_stale: bool,
    /// When the interfaces were last scanned.
    last_scan: Instant,
    /// A neighbour change that arrived too soon after a scan, to rescan for.
    neigh_retry: Option<Instant>,
    /// Local pods the last pass found no interface for.
    missing_ifaces: usize,
    /// The last failure to add or remove a managed neighbour entry.
    neigh_error: Option<String>,
    /// The last failure to scan the interfaces.
    scan_error: Option<String>,
    ids: BTreeMap<PodKey, u32>,
    /// Errors per object (invalid objects), so each is logged once per change.
    errors: BTreeMap<String, String>,
    /// The file source's unusable inputs (file -> why), as it last reported them.
    input_errors: BTreeMap<String, String>,
    synced: bool,
    revision: String,
    revisions: BTreeMap<String, String>,
    generation: u64,
    shared: Arc<Shared>,
    adopted: Option<Adopted>,
    /// Repairs made since start (see `repair`).
    repairs: u64,
    /// The fail-closed endpoints of the last pass (logged once each).
    fail_closed: Vec<String>,
    /// Addresses claimed by two pods, as of the last pass (logged once each).
    duplicates: Vec<String>,
    /// The errors the last pass found (fail-closed pods, attach and write
    /// failures), for `/ready` between passes.
    pass_errors: Vec<String>,
}

/// Map contents found at start (an earlier agent's state).
struct Adopted {
    endpoints: BTreeMap<u32, Endpoint>,
}

pub enum Wake {
    /// An interface, address or route changed: rediscover before the next pass.
    Links,
    /// A neighbour or bridge FDB entry changed: rediscover if a local pod has no
    /// interface yet (bridge-style nodes find pods through those entries).
    Neigh,
    /// No netlink watch runs: discover on every pass.
    Unwatched,
}

impl SyncLoop {
    pub fn new(opts: Options, dp: Datapath, maps: Maps, shared: Arc<Shared>) -> Self {
        let endpoints: BTreeMap<u32, Endpoint> = maps.endpoints().into_iter().collect();
        if !endpoints.is_empty() {
            info!(
                endpoints = endpoints.len(),
                policy_entries = maps.policy_v4_entries().len() + maps.policy_v6_entries().len(),
                "adopting state pinned by an earlier agent"
            );
        }
        Self {
            opts,
            dp,
            maps,
            index: Arc::new(ClusterIndex::new()),
            compiler: None,
            written_if: BTreeMap::new(),
            links: None,
            links_watched: true,
            links_stale: true,
            last_scan: Instant::now(),
            neigh_retry: None,
            missing_ifaces: 0,
            neigh_error: None,
            scan_error: None,
            ids: BTreeMap::new(),
            errors: BTreeMap::new(),
            input_errors: BTreeMap::new(),
            synced: false,
            revision: String::new(),
            revisions: BTreeMap::new(),
            generation: 0,
            shared,
            adopted: Some(Adopted { endpoints }),
            repairs: 0,
            fail_closed: Vec::new(),
            duplicates: Vec::new(),
            pass_errors: Vec::new(),
        }
    }

    fn handle(&mut self, ev: SourceEvent) -> bool {
        match ev {
            SourceEvent::Apply { obj, origin } => {
                let r = obj.object_ref();
                let key = format!("{r}");
                let out = Arc::make_mut(&mut self.index).apply(obj);
                match out.error {
                    Some(e) => {
                        // The engine's error names the file it came from.
                        let msg = e.to_string();
                        if self.errors.get(&key) != Some(&msg) {
                            let effect = match (r.kind, e.kind) {
                                (Kind::ClusterNetworkPolicy, ErrorKind::Unsupported) => {
                                    "unsupported rule: handled as the message says (never allowing more)"
                                }
                                (Kind::ClusterNetworkPolicy, _) => {
                                    "invalid ClusterNetworkPolicy: not admitted, it changes nothing (the version in force, if any, stays)"
                                }
                                (Kind::NetworkPolicy, _) => {
                                    "invalid object: its pods are isolated with nothing allowed by it"
                                }
                                _ => "invalid object: not used",
                            };
                            error!(object = %key, input = %origin, error = %msg, "{effect}");
                            self.errors.insert(key, msg);
                        }
                    }
                    None => {
                        self.errors.remove(&key);
                        if out.changed {
                            info!(object = %r, "applied");
                        }
                    }
                }
                out.changed
            }
            SourceEvent::Delete(r) => {
                self.errors.remove(&format!("{r}"));
                let changed = Arc::make_mut(&mut self.index).delete(&r);
                if changed {
                    info!(object = %r, "deleted");
                }
                changed
            }
            SourceEvent::Error { origin, message } => {
                if self.errors.get(&origin) != Some(&message) {
                    error!(input = %origin, error = %message, "cannot read input; other inputs are still enforced");
                    self.errors.insert(origin, message);
                }
                false
            }
            SourceEvent::InputErrors(now) => {
                for (input, message) in &now {
                    if self.input_errors.get(input) != Some(message) {
                        error!(input = %input, error = %message, "cannot use input; everything else is still enforced");
                    }
                }
                for input in self.input_errors.keys() {
                    if !now.contains_key(input) {
                        info!(input = %input, "input error cleared");
                    }
                }
                let changed = now != self.input_errors;
                self.input_errors = now;
                // /ready says so at once, also before anything is programmed.
                let mut errors = self.object_error_keys();
                errors.extend(self.pass_errors.iter().cloned());
                if let Ok(mut r) = self.shared.ready.lock() {
                    r.errors = errors;
                }
                changed
            }
            SourceEvent::Synced {
                revision,
                revisions,
            } => {
                let changed = !self.synced || revision != self.revision;
                self.synced = true;
                self.revision = revision;
                self.revisions = revisions;
                changed
            }
        }
    }

    /// What `/ready` lists as errors: invalid objects, unusable inputs.
    fn object_error_keys(&self) -> Vec<String> {
        let mut out: Vec<String> = self.errors.values().cloned().collect();
        out.extend(
            self.input_errors
                .iter()
                .map(|(input, message)| format!("{input}: {message}")),
        );
        out
    }

    /// Run until the source closes.
    pub async fn run(
        mut self,
        mut src: mpsc::UnboundedReceiver<SourceEvent>,
        mut wake: mpsc::UnboundedReceiver<Wake>,
    ) {
        let mut resync = tokio::time::interval(self.opts.resync);
        // A pass slower than the period must not be followed by a burst of
        // catch-up resyncs: the next one is a period after it.
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        // Changes are programmed at batch boundaries: the source's `Synced` (both
        // sources send one after every batch), an interface event or the resync
        // timer. Programming on the first change of a batch would program twice
        // per change (once for the object, once more for the batch's revision).
        let mut pending = false;
        // When the change the next pass programs first arrived (latency).
        let mut pending_since: Option<Instant> = None;
        // The netlink watch may end (it then says `Unwatched`); a closed channel
        // must not be polled again, or the loop would spin.
        let mut wake_open = true;
        loop {
            let mut boundary = false;
            let mut full = false;
            let on_source = |this: &mut Self, ev: SourceEvent, boundary: &mut bool| {
                *boundary |= matches!(ev, SourceEvent::Synced { .. });
                this.handle(ev)
            };
            pending |= tokio::select! {
                ev = src.recv() => match ev {
                    Some(ev) => on_source(&mut self, ev, &mut boundary),
                    None => return,
                },
                w = wake.recv(), if wake_open => match w {
                    Some(w) => {
                        let relevant = self.on_wake(w);
                        boundary |= relevant;
                        relevant
                    }
                    None => {
                        wake_open = false;
                        false
                    }
                },
                _ = sleep_until_opt(self.neigh_retry), if self.neigh_retry.is_some() => {
                    self.neigh_retry = None;
                    self.links_stale = true;
                    boundary = true;
                    true
                }
                _ = resync.tick() => {
                    boundary = true;
                    full = true;
                    true
                }
            };
            // Coalesce whatever else is already queued.
            while let Ok(ev) = src.try_recv() {
                pending |= on_source(&mut self, ev, &mut boundary);
            }
            while let Ok(w) = wake.try_recv() {
                if self.on_wake(w) {
                    pending = true;
                    boundary = true;
                }
            }
            if pending && pending_since.is_none() {
                pending_since = Some(Instant::now());
            }
            if pending && boundary && self.synced {
                if full {
                    // The resync rewrites what the maps should hold, whatever
                    // they hold now (repairs drift, retries failed writes).
                    self.compiler = None;
                }
                self.program();
                if let (Some(m), Some(t)) = (&self.shared.metrics, pending_since.take()) {
                    m.programming_seconds.observe(t.elapsed().as_secs_f64());
                }
                pending = false;
            }
            self.shared.beat();
        }
    }

    /// Whether the wake calls for a pass.
    fn on_wake(&mut self, w: Wake) -> bool {
        match w {
            Wake::Links => self.links_stale = true,
            Wake::Neigh => match on_neigh(self.missing_ifaces, self.last_scan, Instant::now()) {
                NeighWake::Ignore => return false,
                NeighWake::RetryAt(at) => {
                    // One pending retry: a burst coalesces into it.
                    self.neigh_retry = Some(at);
                    return false;
                }
                NeighWake::Rescan => self.links_stale = true,
            },
            Wake::Unwatched => {
                self.links_watched = false;
                self.links_stale = true;
            }
        }
        true
    }

    /// Local pods (from the index) and the interface each was found on.
    fn pod_interfaces(
        &self,
        node: &NodeInfo,
        links: &Links,
    ) -> (BTreeMap<PodKey, (String, u32)>, usize) {
        let mut ifaces = BTreeMap::new();
        let mut missing = 0;
        for pod in self
            .index
            .pods_on_node(&node.name)
            .filter(|p| is_local(p, node))
        {
            let ip = pod.ipv4().map(IpAddr::V4).or(pod.ipv6().map(IpAddr::V6));
            let Some(ip) = ip else {
                missing += 1;
                continue;
            };
            // The interface a pod was found on stays its own while it exists:
            // on a bridge-style node, ARP or ND from another pod claiming the
            // address must not move the pod's record to that pod's interface.
            match self
                .known_interface(&pod.key(), ip, links)
                .or_else(|| links.pod_interface(ip))
            {
                Some(found) => {
                    ifaces.insert(pod.key(), found);
                }
                None => missing += 1,
            }
        }
        (ifaces, missing)
    }

    /// Scans the node's interfaces; if that fails, keeps what the last scan
    /// found (an empty table would unknow every pod: a transient failure must
    /// not cut every pod off), and logs the failure once per message.
    fn discover(&mut self, prev: Option<Links>) -> Option<Links> {
        self.last_scan = Instant::now();
        self.neigh_retry = None;
        match Links::scan() {
            Ok(l) => {
                self.scan_error = None;
                self.links_stale = false;
                Some(l)
            }
            Err(e) => {
                if self.scan_error.as_ref() != Some(&e) {
                    error!(error = %e, "interface discovery failed; keeping the interfaces found last (none: nothing is programmed until it works)");
                    self.scan_error = Some(e);
                }
                prev
            }
        }
    }

    /// Bridge-style nodes: every local pod on a bridge subnet without a
    /// neighbour entry gets a managed one (see [`discovery::resolve_neighbour`]);
    /// managed entries of ours whose address no local pod holds are removed.
    fn manage_neighbours(&mut self, node: &NodeInfo, links: &mut Links) {
        if links.bridge_subnets.is_empty() && links.managed.is_empty() {
            return;
        }
        let local: BTreeSet<IpAddr> = self
            .index
            .pods_on_node(&node.name)
            .filter(|p| is_local(p, node))
            .flat_map(|p| [p.ipv4().map(IpAddr::V4), p.ipv6().map(IpAddr::V6)])
            .flatten()
            .collect();
        // `links` is kept between scans: record what was done in it, so that
        // later passes on the same scan do not do it again.
        let mut failures = Vec::new();
        for ip in &local {
            if links.neigh.contains_key(ip) || links.managed.contains_key(ip) {
                continue;
            }
            if let Some(bridge) = links.bridge_for(*ip).map(str::to_string) {
                match discovery::resolve_neighbour(*ip, &bridge) {
                    Ok(()) => {
                        links.managed.insert(*ip, bridge);
                    }
                    Err(e) => failures.push(e),
                }
            }
        }
        let gone: Vec<(IpAddr, String)> = links
            .managed
            .iter()
            .filter(|(ip, _)| !local.contains(ip))
            .map(|(ip, dev)| (*ip, dev.clone()))
            .collect();
        for (ip, dev) in gone {
            links.managed.remove(&ip);
            if let Err(e) = discovery::forget_neighbour(ip, &dev) {
                failures.push(e);
            }
        }
        // One line per distinct failure (an old kernel refuses every entry).
        let summary = failures.first().cloned();
        if summary != self.neigh_error {
            if let Some(e) = &summary {
                warn!(error = %e, failed = failures.len(), "managed neighbour entries for bridge-style pods: pods are found once they send or receive traffic");
            }
            self.neigh_error = summary;
        }
    }

    /// The interface a pod was found on before, while it still exists. On a
    /// bridge-style node a pod is found through its neighbour and FDB entries,
    /// which age out when the pod is idle (FDB after 300 s by default); losing
    /// the pod then would drop its traffic as an unknown endpoint until it sent
    /// something again. The record written under that interface (this run's,
    /// or one adopted from an earlier agent, matched by address) is the proof.
    fn known_interface(&self, pod: &PodKey, ip: IpAddr, links: &Links) -> Option<(String, u32)> {
        let idx = self.written_if.get(pod).copied().or_else(|| {
            let adopted = self.adopted.as_ref()?;
            adopted
                .endpoints
                .iter()
                .find(|(_, e)| endpoint_has(e, ip))
                .map(|(idx, _)| *idx)
        })?;
        let name = links
            .veths
            .iter()
            .find(|(_, i)| **i == idx)
            .map(|(n, _)| n.clone())?;
        Some((name, idx))
    }

    fn alloc_id(&mut self, pod: &PodKey, reuse: Option<u32>) -> u32 {
        if let Some(id) = self.ids.get(pod) {
            return *id;
        }
        let used: BTreeSet<u32> = self.ids.values().copied().collect();
        let id = match reuse {
            Some(id) if !used.contains(&id) => id,
            _ => (1..).find(|i| !used.contains(i)).unwrap_or(u32::MAX),
        };
        self.ids.insert(pod.clone(), id);
        id
    }

    /// Compile and write what changed; then report the revision as programmed.
    pub fn program(&mut self) {
        let started = Instant::now();
        let node = NodeInfo {
            name: self.opts.node.clone(),
        };
        // Local pods and their interfaces. Cached interfaces serve while netlink
        // reports no change, on incremental passes, and while every local pod is
        // found (a pod without one may be waiting for a neighbour or FDB entry;
        // their changes wake a pass only while such a pod exists).
        let prev = self.links.take();
        let reuse = !self.links_stale && self.links_watched && self.compiler.is_some();
        // Interfaces found on the cached scan, when they serve.
        let mut found = None;
        let links = match prev {
            Some(l) if reuse => {
                let on_cached = self.pod_interfaces(&node, &l);
                if on_cached.1 == 0 {
                    found = Some(on_cached);
                    Some(l)
                } else {
                    self.discover(Some(l))
                }
            }
            prev => self.discover(prev),
        };
        let Some(mut links) = links else {
            // Nothing known to program against: leave the maps as they are.
            return;
        };
        let (ifaces, missing) = match found {
            Some(f) => f,
            None => self.pod_interfaces(&node, &links),
        };
        self.missing_ifaces = missing;
        self.manage_neighbours(&node, &mut links);
        let discover_ms = started.elapsed().as_millis() as u64;
        // Endpoint ids: keep ids across restarts (adopted records) and changes.
        let adopted = self.adopted.take();
        let pods: Vec<PodKey> = ifaces.keys().cloned().collect();
        for pod in &pods {
            let reuse = adopted
                .as_ref()
                .and_then(|a| a.endpoints.get(&ifaces[pod].1))
                .map(|e| e.id);
            self.alloc_id(pod, reuse);
        }
        self.ids.retain(|p, _| ifaces.contains_key(p));
        if let Some(a) = &adopted {
            for ifindex in a.endpoints.keys() {
                if let Some((pod, _)) = ifaces.iter().find(|(_, (_, i))| i == ifindex) {
                    self.written_if.insert(pod.clone(), *ifindex);
                }
            }
        }
        // A pod whose interface was replaced keeps its id and its rules, so only a
        // full pass (which reads the records back per current interface) notices
        // that the new interface has no record yet.
        if ifaces
            .iter()
            .any(|(p, (_, i))| self.written_if.get(p).is_some_and(|old| old != i))
        {
            self.compiler = None;
        }

        // Every veth that is not an uplink is a pod interface: attach before writing,
        // so an interface whose pod is not known yet (or whose record is not written
        // yet) drops everything (fail closed).
        let mut attach_errors = Vec::new();
        // A full pass also checks what the kernel and bpffs hold: pins removed
        // under the agent, programs taken off an interface, another agent's
        // programs beside ours (see `repair`).
        let check = self.compiler.is_none();
        let mut repaired = Vec::new();
        let mut foreign = false;
        if check {
            let (r, e) = self.dp.repair_pins();
            repaired.extend(r);
            attach_errors.extend(e);
        }
        for (name, idx) in &links.by_name {
            // A pod's own interface is never an uplink, whatever routes it
            // carries (a pod's router advertisement could add one).
            let pod_if = ifaces.values().any(|(_, i)| i == idx);
            let uplink =
                !pod_if && is_uplink(name, &links, &self.opts.uplinks, &self.opts.node_ips);
            let hooks: &[Hook] = if name == "lo" {
                &[]
            } else if uplink {
                &[Hook::SvcEgress]
            } else if links.veths.contains_key(name) {
                &[Hook::FromPod, Hook::ToPod]
            } else {
                &[]
            };
            let mut all_on = true;
            for hook in hooks {
                if let Err(e) = self.dp.attach(name, *idx, *hook) {
                    attach_errors.push(format!("{name}: {e}"));
                    all_on = false;
                    continue;
                }
                if !check {
                    continue;
                }
                match self.dp.check(name, *idx, *hook) {
                    Ok(Some(r)) => repaired.push(r),
                    Ok(None) => {}
                    Err(e) => {
                        foreign |= matches!(e, crate::datapath::DatapathError::Foreign { .. });
                        attach_errors.push(e.to_string());
                    }
                }
            }
            // A role change leaves the other role's programs behind: pod
            // programs on the node's own link drop its traffic, and an
            // uplink's program on a pod's veth ends the chain before the pod's.
            // Taken off once the new ones are all on (until then the old ones
            // at least check something).
            for hook in [Hook::FromPod, Hook::ToPod, Hook::SvcEgress] {
                if !all_on || hooks.contains(&hook) {
                    continue;
                }
                match self.dp.detach(name, *idx, hook) {
                    Ok(true) => info!(
                        interface = %name,
                        program = hook.program(),
                        uplink,
                        "detached a program the interface's role no longer calls for"
                    ),
                    Ok(false) => {}
                    Err(e) => attach_errors.push(format!("{name}: {e}")),
                }
            }
        }
        for e in &attach_errors {
            error!(error = %e, "attach failed");
        }
        for r in &repaired {
            warn!(repaired = %r, "enforcement state was missing and is restored");
        }
        self.repairs += repaired.len() as u64;
        let n_repaired = repaired.len();

        let t = Instant::now();
        let full = self.compiler.is_none();
        let (writes, overflow) = match self.compiler.as_mut() {
            Some(c) => {
                let writes = c.update(&self.index, &self.ids);
                (writes, c.overflow())
            }
            None => {
                // Full pass: everything against what the maps hold now, endpoint
                // records as found under each pod's current interface.
                let current: BTreeMap<PodKey, u32> =
                    ifaces.iter().map(|(p, (_, i))| (p.clone(), *i)).collect();
                let written = read_back(&self.maps, &current);
                // A fresh compiler compiles the whole node once; its writes assume
                // empty maps, so they are dropped for a diff of its state (pods
                // with an id only, i.e. with an interface) against reality.
                let mut c = Compiler::new(node.clone(), self.opts.audit);
                let _ = c.update(&self.index, &self.ids);
                let new = c.map_set();
                let writes = diff(&written, &new);
                self.compiler = Some(c);
                (writes, new.overflow)
            }
        };
        let compile_ms = t.elapsed().as_millis() as u64;
        let mut fail_closed = Vec::new();
        for (pod, why) in &overflow {
            let msg =
                format!("{pod}: rules do not fit the datapath ({why}); the pod is fail-closed");
            if !self.fail_closed.contains(&msg) {
                error!(pod = %pod, reason = %why, "rules do not fit the datapath; pod is fail-closed");
            }
            fail_closed.push(msg);
        }
        self.fail_closed = fail_closed.clone();
        let n_writes = writes.len();
        let t = Instant::now();
        let mut write_errors = Vec::new();
        for w in writes {
            if let Err(e) = self.apply_write(&w, &ifaces) {
                write_errors.push(e.to_string());
            }
        }
        let write_ms = t.elapsed().as_millis() as u64;
        // A pod whose writes failed must not be left half-open: every local
        // endpoint fails closed until a full pass (the next change or resync)
        // has rewritten the maps from what they actually hold.
        if !write_errors.is_empty() {
            for e in &write_errors {
                error!(error = %e, "map write failed; affected pods are fail-closed");
            }
            for (idx, mut ep) in self.maps.endpoints() {
                ep.flags |= EP_FAIL_CLOSED;
                let _ = self.maps.upsert_endpoint(idx, &ep);
            }
            self.compiler = None;
        }
        // Records of interfaces no local pod owns (deleted pods, earlier runs): remove,
        // so the interface is fail-closed as an unknown endpoint.
        let known: BTreeSet<u32> = ifaces.values().map(|(_, i)| *i).collect();
        for (idx, _) in self.maps.endpoints() {
            if !known.contains(&idx) {
                let _ = self.maps.delete_endpoint(idx);
            }
        }
        for idx in self.dp.pinned_ifindexes() {
            if !links.by_name.values().any(|i| *i == idx) {
                self.dp.forget(idx);
            }
        }
        if let Err(e) = self.maps.set_node_addrs(&links.node_addrs) {
            error!(error = %e, "writing node addresses");
        }
        self.written_if = ifaces.iter().map(|(p, (_, i))| (p.clone(), *i)).collect();
        let node_addrs = links.node_addrs.clone();
        // After a failed scan `links_stale` stays set: the next pass scans again.
        self.links = Some(links);

        self.generation += 1;

        // Names for the deny log.
        let mut names = Names {
            node: self.opts.node.clone(),
            node_addrs,
            index: Arc::downgrade(&self.index),
            ..Default::default()
        };
        let mut duplicates = Vec::new();
        for pod in self.index.pods() {
            if !pod.is_policy_pod() {
                continue;
            }
            for ip in pod
                .ipv4()
                .map(IpAddr::V4)
                .into_iter()
                .chain(pod.ipv6().map(IpAddr::V6))
            {
                if let Some(other) = names.by_ip.insert(ip, pod.key()) {
                    duplicates.push(format!(
                        "pods {other} and {} both claim address {ip} (a stale pod object?): each is judged as its own interface says, and deny lines name the second",
                        pod.key()
                    ));
                }
            }
        }
        for d in &duplicates {
            if !self.duplicates.contains(d) {
                warn!(warning = %d, "two pods with one address");
            }
        }
        self.duplicates = duplicates.clone();
        names.invalid = self
            .index
            .policies()
            .filter(|p| p.error().is_some())
            .map(|p| p.id())
            .collect();
        for (pod, (_, idx)) in &ifaces {
            names.by_ifindex.insert(*idx, pod.clone());
            if let Some(id) = self.ids.get(pod) {
                names.by_id.insert(*id, pod.clone());
            }
            names.policies.insert(
                pod.clone(),
                (
                    self.index.policies_selecting(pod, Direction::Ingress),
                    self.index.policies_selecting(pod, Direction::Egress),
                ),
            );
        }
        if let Ok(mut n) = self.shared.names.lock() {
            *n = names;
        }
        let mut pass_errors: Vec<String> = fail_closed.clone();
        pass_errors.extend(duplicates);
        pass_errors.extend(attach_errors);
        pass_errors.extend(write_errors);
        self.pass_errors = pass_errors.clone();
        let errors_now = !self.pass_errors.is_empty();
        let mut errors = self.object_error_keys();
        errors.extend(pass_errors);
        if let Ok(mut r) = self.shared.ready.lock() {
            *r = Readiness {
                // Another agent's programs beside ours decide whatever we
                // program: not ready until they are gone.
                ready: !foreign,
                generation: self.generation,
                revision: self.revision.clone(),
                revisions: self.revisions.clone(),
                endpoints: ifaces.len(),
                missing_interfaces: missing,
                attach_mode: self.dp.mode.as_str().to_string(),
                repairs: self.repairs,
                repaired,
                fail_closed: fail_closed.clone(),
                errors,
            };
        }
        if let Some(m) = &self.shared.metrics {
            let outcome = if errors_now { "error" } else { "ok" };
            let kind = if full { "full" } else { "incremental" };
            m.passes
                .get_or_create(&crate::metrics::PassLabels { kind, outcome })
                .inc();
            m.map_writes.inc_by(n_writes as u64);
            m.repairs.inc_by(n_repaired as u64);
            let fail_closed_n = self.fail_closed.len() as i64;
            for (state, n) in [
                ("enforced", ifaces.len() as i64 - fail_closed_n),
                ("fail_closed", fail_closed_n),
                ("missing_interface", missing as i64),
            ] {
                m.endpoints
                    .get_or_create(&crate::metrics::StateLabels { state })
                    .set(n);
            }
            for (kind, n) in [
                ("networkpolicy", self.index.policies().count() as i64),
                (
                    "clusternetworkpolicy",
                    self.index.cluster_policies().count() as i64,
                ),
            ] {
                m.policies
                    .get_or_create(&crate::metrics::KindLabels { kind })
                    .set(n);
            }
        }
        info!(
            generation = self.generation,
            revision = %self.revision,
            endpoints = ifaces.len(),
            missing_interfaces = missing,
            writes = n_writes,
            took_ms = started.elapsed().as_millis() as u64,
            full,
            discover_ms,
            compile_ms,
            write_ms,
            "programmed"
        );
    }

    fn apply_write(
        &mut self,
        w: &MapWrite,
        ifaces: &BTreeMap<PodKey, (String, u32)>,
    ) -> Result<(), WriteError> {
        match w {
            MapWrite::PolicyV4Upsert {
                prefix_len,
                key,
                value,
            } => self.maps.upsert_v4(*prefix_len, *key, value),
            MapWrite::PolicyV4Delete { prefix_len, key } => self.maps.delete_v4(*prefix_len, *key),
            MapWrite::PolicyV6Upsert {
                prefix_len,
                key,
                value,
            } => self.maps.upsert_v6(*prefix_len, *key, value),
            MapWrite::PolicyV6Delete { prefix_len, key } => self.maps.delete_v6(*prefix_len, *key),
            MapWrite::EndpointUpsert { pod, ep } => {
                let Some((_, idx)) = ifaces.get(pod) else {
                    return Ok(());
                };
                if let Some(old) = self.written_if.get(pod) {
                    if old != idx {
                        self.maps.delete_endpoint(*old)?;
                    }
                }
                self.maps.upsert_endpoint(*idx, ep)
            }
            MapWrite::EndpointDelete { pod } => match self.written_if.get(pod) {
                Some(idx) => self.maps.delete_endpoint(*idx),
                None => Ok(()),
            },
            MapWrite::ServiceUpsert(k) => self.maps.upsert_service(*k),
            MapWrite::ServiceDelete(k) => self.maps.delete_service(*k),
        }
    }
}

/// At most one rescan a second for neighbour and FDB changes.
const NEIGH_RESCAN_EVERY: Duration = Duration::from_secs(1);

/// What a neighbour or FDB change calls for.
#[derive(Debug, PartialEq, Eq)]
enum NeighWake {
    /// Nothing: every local pod has its interface.
    Ignore,
    Rescan,
    /// A rescan then: the last one was too recent.
    RetryAt(Instant),
}

/// Neighbour entries change all the time (reachability): only a pod still
/// waiting for its interface needs them, and a burst of them costs one rescan
/// a second at most.
fn on_neigh(missing: usize, last_scan: Instant, now: Instant) -> NeighWake {
    let next = last_scan + NEIGH_RESCAN_EVERY;
    if missing == 0 {
        NeighWake::Ignore
    } else if now < next {
        NeighWake::RetryAt(next)
    } else {
        NeighWake::Rescan
    }
}

/// Sleeps until `at` (forever without one; the caller guards on `is_some`).
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Whether interface `name` leads out of the node (Service egress hook) rather
/// than to a pod. With `uplinks` given, exactly those (a trailing `*` matches a
/// prefix). Without: every interface but the veths, plus the veths that are the
/// node's own link, recognised by a node address or a route via a gateway
/// (pod veths carry neither: host routes and connected bridge subnets only).
pub fn is_uplink(name: &str, links: &Links, uplinks: &[String], node_ips: &[IpAddr]) -> bool {
    if !uplinks.is_empty() {
        return uplinks.iter().any(|u| match u.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => u == name,
        });
    }
    !links.veths.contains_key(name)
        || links.gateway_devs.contains(name)
        || node_ips
            .iter()
            .any(|ip| links.addr_devs.get(ip).is_some_and(|d| d == name))
}

/// Whether an endpoint record carries address `ip`.
fn endpoint_has(ep: &Endpoint, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => ep.flags & EP_HAS_V4 != 0 && ep.ipv4 == a.octets(),
        IpAddr::V6(a) => ep.flags & EP_HAS_V6 != 0 && ep.ipv6 == a.octets(),
    }
}

/// What the maps hold, keyed as the engine keys it; endpoint records are keyed by
/// pod through `pods_by_if` (pod -> its current ifindex), and records no pod owns
/// are left out (the pass removes them separately).
fn read_back(maps: &Maps, pods_by_if: &BTreeMap<PodKey, u32>) -> MapSet {
    let mut written = MapSet::default();
    for (plen, k, v) in maps.policy_v4_entries() {
        written.policy_v4.insert((plen, k), v);
    }
    for (plen, k, v) in maps.policy_v6_entries() {
        written.policy_v6.insert((plen, k), v);
    }
    written.services = maps.services().into_iter().collect();
    let eps: BTreeMap<u32, Endpoint> = maps.endpoints().into_iter().collect();
    for (pod, idx) in pods_by_if {
        if let Some(ep) = eps.get(idx) {
            written.endpoints.insert(pod.clone(), *ep);
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbour_changes_rescan_only_for_a_missing_pod_and_once_a_second() {
        let scan = Instant::now();
        let at = |ms| scan + Duration::from_millis(ms);
        assert_eq!(on_neigh(0, scan, at(5000)), NeighWake::Ignore);
        assert_eq!(on_neigh(1, scan, at(1000)), NeighWake::Rescan);
        // A burst within the second after a scan: all wait for one moment.
        for ms in [0, 10, 500, 999] {
            assert_eq!(on_neigh(3, scan, at(ms)), NeighWake::RetryAt(at(1000)));
        }
    }

    /// A kind node: eth0 is a veth with the default route and the node's
    /// address; pod veths carry host routes only; cni0 is a bridge.
    fn kind_node() -> Links {
        let mut l = Links::default();
        for (i, n) in ["lo", "eth0", "veth1", "veth2", "cni0"].iter().enumerate() {
            l.by_name.insert(n.to_string(), i as u32 + 1);
        }
        for (n, i) in [("eth0", 2), ("veth1", 3), ("veth2", 4)] {
            l.veths.insert(n.to_string(), i);
        }
        l.gateway_devs.insert("eth0".into());
        l.addr_devs
            .insert("172.18.0.2".parse().expect("ip"), "eth0".into());
        l.addr_devs
            .insert("10.244.1.1".parse().expect("ip"), "veth1".into());
        l
    }

    #[test]
    fn a_veth_with_a_gateway_route_or_the_node_address_is_an_uplink() {
        let l = kind_node();
        assert!(is_uplink("eth0", &l, &[], &[]));
        assert!(is_uplink("cni0", &l, &[], &[]));
        assert!(!is_uplink("veth1", &l, &[], &[]));
        assert!(!is_uplink("veth2", &l, &[], &[]));

        // Without the gateway route (a single node with connected routes only),
        // the node address alone tells.
        let mut l = kind_node();
        l.gateway_devs.clear();
        assert!(!is_uplink("eth0", &l, &[], &[]));
        let node_ip: IpAddr = "172.18.0.2".parse().expect("ip");
        assert!(is_uplink("eth0", &l, &[], &[node_ip]));
        assert!(!is_uplink("veth1", &l, &[], &[node_ip]));
    }

    #[test]
    fn explicit_uplinks_are_exactly_those() {
        let l = kind_node();
        let up = vec!["eth*".to_string()];
        assert!(is_uplink("eth0", &l, &up, &[]));
        assert!(!is_uplink("cni0", &l, &up, &[]));
        assert!(!is_uplink("veth1", &l, &["veth2".into()], &[]));
        assert!(is_uplink("veth2", &l, &["veth2".into()], &[]));
    }

    #[test]
    fn an_endpoint_record_is_matched_by_address() {
        let ep = Endpoint {
            id: 1,
            flags: EP_HAS_V4,
            ipv4: [10, 0, 0, 5],
            _pad0: [0; 4],
            ipv6: [0; 16],
        };
        assert!(endpoint_has(&ep, "10.0.0.5".parse().expect("ip")));
        assert!(!endpoint_has(&ep, "10.0.0.6".parse().expect("ip")));
        assert!(!endpoint_has(&ep, "::".parse().expect("ip")));
    }
}
