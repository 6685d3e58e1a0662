//! The node: its interfaces (scanned, cached between netlink changes), the
//! roles they play, managed neighbour entries and the netlink watch.
pub mod links;
pub mod neighbours;
pub mod roles;
pub mod watch;

use std::{collections::BTreeSet, net::IpAddr, time::Instant};

use tracing::{error, warn};

pub use links::{Links, NodeError, NEIGH_PROTOCOL};
use neighbours::NeighWake;

/// What woke the sync loop from the node's side.
pub enum Wake {
    /// An interface, address or route changed: rediscover before the next pass.
    Links,
    /// A neighbour or bridge FDB entry changed: rediscover if a local pod has no
    /// interface yet (bridge-style nodes find pods through those entries).
    Neigh,
    /// No netlink watch runs: discover on every pass.
    Unwatched,
}

/// The interfaces as last scanned, and when to scan again.
pub struct Interfaces {
    /// Reused until netlink reports a change (a scan forks `ip`, which costs
    /// more than a small change).
    links: Option<Links>,
    /// Whether the netlink watch runs (otherwise every pass scans).
    watched: bool,
    /// Netlink reported a change since `links` was scanned.
    stale: bool,
    last_scan: Instant,
    /// A neighbour change that arrived too soon after a scan, to rescan for.
    neigh_retry: Option<Instant>,
    /// Local pods the last pass found no interface for.
    pub missing: usize,
    /// The last scan failure and neighbour-entry failure (each logged once).
    scan_error: Option<String>,
    neigh_error: Option<String>,
}

impl Default for Interfaces {
    fn default() -> Self {
        Self {
            links: None,
            watched: true,
            stale: true,
            last_scan: Instant::now(),
            neigh_retry: None,
            missing: 0,
            scan_error: None,
            neigh_error: None,
        }
    }
}

impl Interfaces {
    /// Whether the wake calls for a pass.
    pub fn on_wake(&mut self, w: Wake) -> bool {
        match w {
            Wake::Links => self.stale = true,
            Wake::Neigh => match neighbours::on_neigh(self.missing, self.last_scan, Instant::now())
            {
                NeighWake::Ignore => return false,
                NeighWake::RetryAt(at) => {
                    // One pending retry: a burst coalesces into it.
                    self.neigh_retry = Some(at);
                    return false;
                }
                NeighWake::Rescan => self.stale = true,
            },
            Wake::Unwatched => {
                self.watched = false;
                self.stale = true;
            }
        }
        true
    }

    /// When a deferred neighbour rescan is due.
    pub fn retry_at(&self) -> Option<Instant> {
        self.neigh_retry
    }

    /// The deferred rescan is due: the next pass scans.
    pub fn retry_now(&mut self) {
        self.neigh_retry = None;
        self.stale = true;
    }

    /// The interfaces for this pass, and what `find` (the local pods' interfaces
    /// and how many were not found) makes of them. The cached scan serves while
    /// netlink reports no change, on incremental passes, and while every local
    /// pod is found on it (a pod without one may be waiting for a neighbour or
    /// FDB entry). `None`: nothing known to program against.
    pub fn for_pass<T>(
        &mut self,
        incremental: bool,
        find: impl Fn(&Links) -> (T, usize),
    ) -> Option<(Links, T)> {
        let prev = self.links.take();
        let reuse = !self.stale && self.watched && incremental;
        let links = match prev {
            Some(l) if reuse => {
                let (found, missing) = find(&l);
                if missing == 0 {
                    self.missing = 0;
                    return Some((l, found));
                }
                self.discover(Some(l))
            }
            prev => self.discover(prev),
        }?;
        let (found, missing) = find(&links);
        self.missing = missing;
        Some((links, found))
    }

    /// The ifindex of interface `name` as the last pass found it.
    pub fn ifindex(&self, name: &str) -> Option<u32> {
        self.links.as_ref()?.by_name.get(name).copied()
    }

    /// Keeps the pass's interfaces for the next one. After a failed scan
    /// `stale` stays set: the next pass scans again.
    pub fn keep(&mut self, links: Links) {
        self.links = Some(links);
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
                self.stale = false;
                Some(l)
            }
            Err(e) => {
                let e = e.to_string();
                if self.scan_error.as_ref() != Some(&e) {
                    error!(error = %e, "interface discovery failed; keeping the interfaces found last (none: nothing is programmed until it works)");
                    self.scan_error = Some(e);
                }
                prev
            }
        }
    }

    /// Managed neighbour entries for the local pods' addresses (bridge-style
    /// nodes); one line per distinct failure (an old kernel refuses every entry).
    pub fn manage_neighbours(&mut self, links: &mut Links, local: &BTreeSet<IpAddr>) {
        let failures = neighbours::manage(links, local);
        let summary = failures.first().map(ToString::to_string);
        if summary != self.neigh_error {
            if let Some(e) = &summary {
                warn!(error = %e, failed = failures.len(), "managed neighbour entries for bridge-style pods: pods are found once they send or receive traffic");
            }
            self.neigh_error = summary;
        }
    }
}
