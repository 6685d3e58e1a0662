//! Applies the compiler's `MapWrite`s to the maps, reads back what the maps
//! hold (for full passes), and the fallbacks when writing fails: every local
//! endpoint fail-closed, and records no local pod owns removed.
use std::collections::{BTreeMap, BTreeSet};

use palisade_common::{Endpoint, EP_FAIL_CLOSED};
use palisade_policy::{MapSet, MapWrite, PodKey};

use crate::{
    endpoints::{Endpoints, PodInterfaces},
    maps::{Maps, WriteError},
};

/// Applies `writes` in order; returns the writes the kernel refused. Endpoint
/// records go under the pod's current interface (the one it was written under
/// before is cleared when it changed).
pub fn apply(
    maps: &mut Maps,
    writes: Vec<MapWrite>,
    ifaces: &PodInterfaces,
    endpoints: &Endpoints,
) -> Vec<WriteError> {
    writes
        .iter()
        .filter_map(|w| apply_one(maps, w, ifaces, endpoints).err())
        .collect()
}

fn apply_one(
    maps: &mut Maps,
    w: &MapWrite,
    ifaces: &PodInterfaces,
    endpoints: &Endpoints,
) -> Result<(), WriteError> {
    match w {
        MapWrite::PolicyV4Upsert {
            prefix_len,
            key,
            value,
        } => maps.upsert_v4(*prefix_len, *key, value),
        MapWrite::PolicyV4Delete { prefix_len, key } => maps.delete_v4(*prefix_len, *key),
        MapWrite::PolicyV6Upsert {
            prefix_len,
            key,
            value,
        } => maps.upsert_v6(*prefix_len, *key, value),
        MapWrite::PolicyV6Delete { prefix_len, key } => maps.delete_v6(*prefix_len, *key),
        MapWrite::EndpointUpsert { pod, ep } => {
            let Some((_, idx)) = ifaces.get(pod) else {
                return Ok(());
            };
            if let Some(old) = endpoints.written_if(pod) {
                if old != *idx {
                    maps.delete_endpoint(old)?;
                }
            }
            maps.upsert_endpoint(*idx, ep)
        }
        MapWrite::EndpointDelete { pod } => match endpoints.written_if(pod) {
            Some(idx) => maps.delete_endpoint(idx),
            None => Ok(()),
        },
        MapWrite::ServiceUpsert(k) => maps.upsert_service(*k),
        MapWrite::ServiceDelete(k) => maps.delete_service(*k),
    }
}

/// After a failed write no pod may be left half-open: every endpoint record
/// gets `EP_FAIL_CLOSED` until a full pass has rewritten the maps. Returns the
/// records that could not be marked (their pods keep their last rules).
pub fn fail_close_all(maps: &mut Maps) -> Vec<WriteError> {
    let mut failed = Vec::new();
    for (idx, mut ep) in maps.endpoints() {
        ep.flags |= EP_FAIL_CLOSED;
        if let Err(e) = maps.upsert_endpoint(idx, &ep) {
            failed.push(e);
        }
    }
    failed
}

/// Removes the records of interfaces no local pod owns (deleted pods, earlier
/// runs), so the interface drops traffic as an unknown endpoint. Returns the
/// records that could not be removed.
pub fn remove_unowned(maps: &mut Maps, owned: &BTreeSet<u32>) -> Vec<WriteError> {
    let mut failed = Vec::new();
    for (idx, _) in maps.endpoints() {
        if !owned.contains(&idx) {
            if let Err(e) = maps.delete_endpoint(idx) {
                failed.push(e);
            }
        }
    }
    failed
}

/// What the maps hold, keyed as the engine keys it; endpoint records are keyed by
/// pod through `pods_by_if` (pod -> its current ifindex), and records no pod owns
/// are left out (the pass removes them separately).
pub fn read_back(maps: &Maps, pods_by_if: &BTreeMap<PodKey, u32>) -> MapSet {
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
