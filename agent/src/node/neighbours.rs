//! Managed neighbour entries for bridge-style pods, and when a neighbour or FDB
//! change calls for a rescan of the interfaces.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use super::links::{Links, NodeError, NEIGH_PROTOCOL};

/// Asks the kernel to resolve `ip` on `dev` and keep it resolved (a managed
/// neighbour entry, Linux 5.16+). On a bridge-style node a pod is found through
/// its neighbour and FDB entries, which exist only once the host has talked to
/// the pod: a pod that talks only to its bridge neighbours would otherwise stay
/// unknown, and an idle one would be lost when the entries age out. The kernel's
/// ARP/ND probes also keep the bridge's FDB entry for the pod fresh.
pub fn resolve_neighbour(ip: IpAddr, dev: &str) -> Result<(), NodeError> {
    let ip = ip.to_string();
    let proto = NEIGH_PROTOCOL.to_string();
    // `replace`: an entry without a link-layer address (failed, incomplete)
    // may exist; it becomes ours and is resolved again.
    let args = [
        "neigh", "replace", &ip, "dev", dev, "managed", "protocol", &proto,
    ];
    run_ip(&args)
}

/// Removes a managed neighbour entry this agent added.
pub fn forget_neighbour(ip: IpAddr, dev: &str) -> Result<(), NodeError> {
    let ip = ip.to_string();
    run_ip(&["neigh", "del", &ip, "dev", dev])
}

fn run_ip(args: &[&str]) -> Result<(), NodeError> {
    let command = format!("ip {}", args.join(" "));
    match Command::new("ip").args(args).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(NodeError::Failed {
            command,
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        }),
        Err(source) => Err(NodeError::Spawn { command, source }),
    }
}

/// Bridge-style nodes: every local pod address on a bridge subnet without a
/// neighbour entry gets a managed one (see [`resolve_neighbour`]); managed
/// entries of ours whose address no local pod holds are removed. What was done
/// is recorded in `links` (kept between scans), so later passes on the same
/// scan do not do it again. Returns the failures.
pub fn manage(links: &mut Links, local: &BTreeSet<IpAddr>) -> Vec<NodeError> {
    let mut failures = Vec::new();
    if links.bridge_subnets.is_empty() && links.managed.is_empty() {
        return failures;
    }
    for ip in local {
        if links.neigh.contains_key(ip) || links.managed.contains_key(ip) {
            continue;
        }
        if let Some(bridge) = links.bridge_for(*ip).map(str::to_string) {
            match resolve_neighbour(*ip, &bridge) {
                Ok(()) => {
                    links.managed.insert(*ip, bridge);
                }
                Err(e) => failures.push(e),
            }
        }
    }
    let gone: BTreeMap<IpAddr, String> = links
        .managed
        .iter()
        .filter(|(ip, _)| !local.contains(ip))
        .map(|(ip, dev)| (*ip, dev.clone()))
        .collect();
    for (ip, dev) in gone {
        links.managed.remove(&ip);
        if let Err(e) = forget_neighbour(ip, &dev) {
            failures.push(e);
        }
    }
    failures
}

/// At most one rescan a second for neighbour and FDB changes.
const NEIGH_RESCAN_EVERY: Duration = Duration::from_secs(1);

/// What a neighbour or FDB change calls for.
#[derive(Debug, PartialEq, Eq)]
pub enum NeighWake {
    /// Nothing: every local pod has its interface.
    Ignore,
    Rescan,
    /// A rescan then: the last one was too recent.
    RetryAt(Instant),
}

/// Neighbour entries change all the time (reachability): only a pod still
/// waiting for its interface needs them, and a burst of them costs one rescan
/// a second at most.
pub fn on_neigh(missing: usize, last_scan: Instant, now: Instant) -> NeighWake {
    let next = last_scan + NEIGH_RESCAN_EVERY;
    if missing == 0 {
        NeighWake::Ignore
    } else if now < next {
        NeighWake::RetryAt(next)
    } else {
        NeighWake::Rescan
    }
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
}
