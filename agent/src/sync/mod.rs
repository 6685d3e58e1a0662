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
//! the cluster. CNI requests (`cni`) are answered between passes, each with a
//! pass of its own.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use palisade_policy::{compile::is_local, diff, Compiler, MapWrite, NodeInfo, PodKey};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

mod cni;
mod upgrade;

use crate::{
    cni::CniCall,
    datapath::{AttachReport, Datapath},
    endpoints::{Endpoints, PodInterfaces},
    ingest::Ingest,
    maps::Maps,
    metrics::PassStats,
    node::{roles, Interfaces, Links, Wake},
    pressure::Pressure,
    source::SourceEvent,
    status::{names_for_pass, Readiness, Shared},
    writer,
};

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
    /// Source events into the index.
    ingest: Ingest,
    /// The incremental compiler, in step with the maps; `None` until a full pass
    /// has brought the maps to a known state.
    compiler: Option<Compiler>,
    interfaces: Interfaces,
    endpoints: Endpoints,
    generation: u64,
    shared: Arc<Shared>,
    /// Repairs made since start (see `repair`).
    repairs: u64,
    /// The fail-closed endpoints of the last pass (logged once each).
    fail_closed: Vec<String>,
    /// Addresses claimed by two pods, as of the last pass (logged once each).
    duplicates: Vec<String>,
    /// The errors the last pass found (fail-closed pods, attach and write
    /// failures), for `/ready` between passes.
    pass_errors: Vec<String>,
    /// Conntrack tables reported as nearly full (checked on full passes).
    pressure: Pressure,
    /// The sandbox (CNI container id) of each pod's last CNI ADD.
    cni_sandboxes: BTreeMap<PodKey, String>,
}

/// What one pass compiled.
struct Compiled {
    full: bool,
    writes: Vec<MapWrite>,
    /// Pods whose rules do not fit the datapath, and why.
    overflow: Vec<(PodKey, String)>,
}

impl SyncLoop {
    pub fn new(opts: Options, dp: Datapath, maps: Maps, shared: Arc<Shared>) -> Self {
        let records: BTreeMap<_, _> = maps.endpoints().into_iter().collect();
        if !records.is_empty() {
            info!(
                endpoints = records.len(),
                policy_entries = maps.policy_v4_entries().len() + maps.policy_v6_entries().len(),
                "adopting state pinned by an earlier agent"
            );
        }
        Self {
            opts,
            dp,
            maps,
            ingest: Ingest::default(),
            compiler: None,
            interfaces: Interfaces::default(),
            endpoints: Endpoints::adopting(records),
            generation: 0,
            shared,
            repairs: 0,
            fail_closed: Vec::new(),
            duplicates: Vec::new(),
            pass_errors: Vec::new(),
            pressure: Pressure::default(),
            cni_sandboxes: BTreeMap::new(),
        }
    }

    fn handle(&mut self, ev: SourceEvent) -> bool {
        if let SourceEvent::Health {
            resource,
            up,
            restarted,
        } = &ev
        {
            if let Some(m) = &self.shared.metrics {
                m.record_source(resource, *up, *restarted);
            }
            return false;
        }
        let inputs = matches!(ev, SourceEvent::InputErrors(_));
        let changed = self.ingest.handle(ev);
        if inputs {
            // /ready says so at once, also before anything is programmed.
            let mut errors = self.ingest.error_lines();
            errors.extend(self.pass_errors.iter().cloned());
            if let Ok(mut r) = self.shared.ready.lock() {
                r.errors = errors;
            }
        }
        changed
    }

    /// Run until the source closes.
    pub async fn run(
        mut self,
        mut src: mpsc::UnboundedReceiver<SourceEvent>,
        mut wake: mpsc::UnboundedReceiver<Wake>,
        mut cni: mpsc::UnboundedReceiver<CniCall>,
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
        let mut cni_open = true;
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
                        let relevant = self.interfaces.on_wake(w);
                        boundary |= relevant;
                        relevant
                    }
                    None => {
                        wake_open = false;
                        false
                    }
                },
                _ = sleep_until_opt(self.interfaces.retry_at()), if self.interfaces.retry_at().is_some() => {
                    self.interfaces.retry_now();
                    boundary = true;
                    true
                }
                _ = resync.tick() => {
                    boundary = true;
                    full = true;
                    true
                }
                c = cni.recv(), if cni_open => {
                    match c {
                        Some(call) => self.on_cni(call),
                        None => cni_open = false,
                    }
                    false
                }
            };
            // Coalesce whatever else is already queued.
            while let Ok(ev) = src.try_recv() {
                pending |= on_source(&mut self, ev, &mut boundary);
            }
            while let Ok(w) = wake.try_recv() {
                if self.interfaces.on_wake(w) {
                    pending = true;
                    boundary = true;
                }
            }
            if pending && pending_since.is_none() {
                pending_since = Some(Instant::now());
            }
            if pending && boundary && self.ingest.synced {
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

    /// Compile and write what changed; then report the revision as programmed.
    pub fn program(&mut self) {
        let started = Instant::now();
        let node = NodeInfo {
            name: self.opts.node.clone(),
        };
        let Some((links, ifaces)) = self.find_interfaces(&node) else {
            // Nothing known to program against: leave the maps as they are.
            return;
        };
        let discover_ms = started.elapsed().as_millis() as u64;
        if self.endpoints.assign(&ifaces) {
            self.compiler = None;
        }
        // After a change of map layout the new maps start empty, and the
        // programs attached still enforce from the old ones: fill the new
        // maps first, then point the hooks at them. Otherwise attach first,
        // so a new interface drops everything until its record is written.
        let upgrading = self.dp.upgrading();
        // A full pass also checks the hooks (pins, another agent's programs);
        // taken before `compile`, which sets the compiler up.
        let check = self.compiler.is_none();
        let early = (!upgrading).then(|| self.attach(&links, &ifaces, check));
        let t = Instant::now();
        let compiled = self.compile(&node, &ifaces);
        let compile_ms = t.elapsed().as_millis() as u64;
        let fail_closed = self.note_fail_closed(&compiled.overflow);
        let n_writes = compiled.writes.len();
        let t = Instant::now();
        let write_errors = self.write(compiled.writes, &ifaces, &links);
        let write_ms = t.elapsed().as_millis() as u64;
        let attached = match early {
            Some(a) => a,
            None => {
                let a = self.attach(&links, &ifaces, check);
                self.finish_upgrade(&a);
                a
            }
        };
        self.generation += 1;
        let node_addrs = links.node_addrs.clone();
        self.interfaces.keep(links);
        if compiled.full {
            self.pressure.check(&self.dp.pin_dir);
        }
        let stats = PassStats {
            full: compiled.full,
            writes: n_writes,
            repaired: attached.repaired.len(),
            endpoints: ifaces.len(),
            fail_closed: fail_closed.len(),
            missing_interfaces: self.interfaces.missing,
            policies: self.ingest.index.policies().count(),
            cluster_policies: self.ingest.index.cluster_policies().count(),
            errors: false,
        };
        let errors_now = self.publish(&ifaces, node_addrs, attached, fail_closed, write_errors);
        if let Some(m) = &self.shared.metrics {
            m.record_pass(&PassStats {
                errors: errors_now,
                ..stats
            });
        }
        info!(
            generation = self.generation,
            revision = %self.ingest.revision,
            endpoints = ifaces.len(),
            missing_interfaces = self.interfaces.missing,
            writes = n_writes,
            took_ms = started.elapsed().as_millis() as u64,
            full = compiled.full,
            discover_ms,
            compile_ms,
            write_ms,
            "programmed"
        );
    }

    /// The node's interfaces and the local pods found on them; managed
    /// neighbour entries for bridge-style pods.
    fn find_interfaces(&mut self, node: &NodeInfo) -> Option<(Links, PodInterfaces)> {
        let incremental = self.compiler.is_some();
        let (index, endpoints) = (&self.ingest.index, &self.endpoints);
        let (mut links, ifaces) = self
            .interfaces
            .for_pass(incremental, |l| endpoints.find(index, node, l))?;
        let local: BTreeSet<IpAddr> = self
            .ingest
            .index
            .pods_on_node(&node.name)
            .filter(|p| is_local(p, node))
            .flat_map(|p| [p.ipv4().map(IpAddr::V4), p.ipv6().map(IpAddr::V6)])
            .flatten()
            .collect();
        self.interfaces.manage_neighbours(&mut links, &local);
        Some((links, ifaces))
    }

    /// Programs on every interface as its role says, before any write: an
    /// interface whose pod is not known yet (or whose record is not written
    /// yet) drops everything (fail closed). A full pass also checks what the
    /// kernel and bpffs hold (see `repair`).
    fn attach(&mut self, links: &Links, ifaces: &PodInterfaces, check: bool) -> AttachReport {
        let pod_ifs: BTreeSet<u32> = ifaces.values().map(|(_, i)| *i).collect();
        let plan = roles::plan(links, &pod_ifs, &self.opts.uplinks, &self.opts.node_ips);
        let report = self.dp.apply_roles(&plan, check);
        self.repairs += report.repaired.len() as u64;
        report
    }

    /// The writes this pass makes: the incremental compiler's, or on a full
    /// pass the diff of a fresh compile against what the maps hold, endpoint
    /// records as found under each pod's current interface.
    fn compile(&mut self, node: &NodeInfo, ifaces: &PodInterfaces) -> Compiled {
        if let Some(c) = self.compiler.as_mut() {
            let writes = c.update(&self.ingest.index, self.endpoints.ids());
            return Compiled {
                full: false,
                writes,
                overflow: c.overflow(),
            };
        }
        let current: BTreeMap<PodKey, u32> =
            ifaces.iter().map(|(p, (_, i))| (p.clone(), *i)).collect();
        let written = writer::read_back(&self.maps, &current);
        // A fresh compiler compiles the whole node once; its writes assume empty
        // maps, so they are superseded by a diff of its state (pods with an id
        // only, i.e. with an interface) against what the maps hold.
        let mut c = Compiler::new(node.clone(), self.opts.audit);
        let _superseded = c.update(&self.ingest.index, self.endpoints.ids());
        let new = c.map_set();
        let writes = diff(&written, &new);
        self.compiler = Some(c);
        Compiled {
            full: true,
            writes,
            overflow: new.overflow,
        }
    }

    /// Logs each pod whose rules do not fit once; returns this pass's lines.
    fn note_fail_closed(&mut self, overflow: &[(PodKey, String)]) -> Vec<String> {
        let mut fail_closed = Vec::new();
        for (pod, why) in overflow {
            let msg =
                format!("{pod}: rules do not fit the datapath ({why}); the pod is fail-closed");
            if !self.fail_closed.contains(&msg) {
                error!(pod = %pod, reason = %why, "rules do not fit the datapath; pod is fail-closed");
            }
            fail_closed.push(msg);
        }
        self.fail_closed = fail_closed.clone();
        fail_closed
    }

    /// Applies the writes, then the state around them: fail-closed endpoints
    /// after a failed write, records no local pod owns removed, pins of gone
    /// interfaces forgotten, node addresses. Returns every failure.
    fn write(
        &mut self,
        writes: Vec<MapWrite>,
        ifaces: &PodInterfaces,
        links: &Links,
    ) -> Vec<String> {
        let mut errors: Vec<String> =
            writer::apply(&mut self.maps, writes, ifaces, &self.endpoints)
                .iter()
                .map(ToString::to_string)
                .collect();
        // A pod whose writes failed must not be left half-open: every local
        // endpoint fails closed until a full pass (the next change or resync)
        // has rewritten the maps from what they actually hold.
        if !errors.is_empty() {
            for e in &errors {
                error!(error = %e, "map write failed; affected pods are fail-closed");
            }
            for e in writer::fail_close_all(&mut self.maps) {
                error!(error = %e, "marking an endpoint fail-closed failed; it keeps its last rules");
                errors.push(format!("marking fail-closed: {e}"));
            }
            self.compiler = None;
        }
        let owned: BTreeSet<u32> = ifaces.values().map(|(_, i)| *i).collect();
        for e in writer::remove_unowned(&mut self.maps, &owned) {
            error!(error = %e, "removing the record of an interface no local pod owns failed");
            errors.push(format!("removing an unowned record: {e}"));
        }
        for idx in self.dp.pinned_ifindexes() {
            if !links.by_name.values().any(|i| *i == idx) {
                self.dp.forget(idx);
            }
        }
        if let Err(e) = self.maps.set_node_addrs(&links.node_addrs) {
            error!(error = %e, "writing node addresses");
            errors.push(format!("node addresses: {e}"));
        }
        self.endpoints.written(ifaces);
        errors
    }

    /// Names for the deny log, `/ready`; returns whether the pass had errors.
    fn publish(
        &mut self,
        ifaces: &PodInterfaces,
        node_addrs: Vec<IpAddr>,
        attached: AttachReport,
        fail_closed: Vec<String>,
        write_errors: Vec<String>,
    ) -> bool {
        let prev = self.shared.names();
        let (names, duplicates) = names_for_pass(
            (&prev, &self.duplicates),
            &self.opts.node,
            &self.ingest.index,
            ifaces,
            &self.endpoints,
            node_addrs,
        );
        for d in &duplicates {
            if !self.duplicates.contains(d) {
                warn!(warning = %d, "two pods with one address");
            }
        }
        self.duplicates = duplicates.clone();
        if let Some(m) = &self.shared.metrics {
            m.set_pods(&names.by_id);
            m.record_attached(&self.dp.attached_per_hook());
        }
        if let Ok(mut n) = self.shared.names.lock() {
            *n = Arc::new(names);
        }
        let mut pass_errors = fail_closed.clone();
        pass_errors.extend(duplicates);
        pass_errors.extend(attached.errors);
        pass_errors.extend(write_errors);
        self.pass_errors = pass_errors.clone();
        let mut errors = self.ingest.error_lines();
        errors.extend(pass_errors);
        if let Ok(mut r) = self.shared.ready.lock() {
            *r = Readiness {
                // Another agent's programs beside ours decide whatever we
                // program: not ready until they are gone.
                ready: !attached.foreign,
                generation: self.generation,
                revision: self.ingest.revision.clone(),
                revisions: self.ingest.revisions.clone(),
                endpoints: ifaces.len(),
                missing_interfaces: self.interfaces.missing,
                attach_mode: self.dp.mode.as_str().to_string(),
                repairs: self.repairs,
                repaired: attached.repaired,
                fail_closed,
                errors,
            };
        }
        !self.pass_errors.is_empty()
    }
}

/// Sleeps until `at` (forever without one; the caller guards on `is_some`).
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
