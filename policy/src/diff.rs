//! Diff: the ordered list of map writes that takes the maps from one [`MapSet`] to
//! another without ever opening a gap.
//!
//! Order, and why every address sees either the old or the new semantics at every
//! moment:
//!
//! 1. Policy entry upserts (new entries and changed values), longest prefix first.
//!    While they run, the entries present are all old ones (old values unless already
//!    rewritten) plus the new ones written so far. For an address whose longest match
//!    is an already-written entry, every longer new entry was written before it
//!    (longest first), so that match is also its longest match in the new set: new
//!    semantics. Otherwise its match is an untouched old entry and, since no old
//!    entry is gone yet, also its longest match in the old set: old semantics.
//!    Writing a /16 before the /24 except hole inside it could briefly open the hole;
//!    this order cannot.
//! 2. Service frontend upserts (independent of the policy entries).
//! 3. Endpoint upserts: the per-endpoint switch. Isolation flags, fail-closed and the
//!    endpoint id change atomically in one write, after every entry the new state
//!    needs exists. An endpoint becoming isolated flips only once its allow entries
//!    are in; one leaving fail-closed flips only once its entries are in.
//! 4. Policy entry deletes, shortest prefix first. Remaining entries are the new set
//!    plus the old-only entries at least as long as the ones being deleted. An address matching an old-only entry therefore matches its
//!    longest old entry (any longer old-only entry is still there, and a longer entry
//!    present in both sets would have been its match): old semantics; an address
//!    matching a new entry has no longer new entry: new semantics. Deleting the /24
//!    before its enclosing /16 would briefly give the /24's addresses the old /16
//!    value, which is neither.
//! 5. Service frontend deletes.
//! 6. Endpoint deletes, last: a removed pod keeps its (deny-by-default) state until
//!    its entries are gone.
//!
//! Unchanged entries produce no writes.

use std::collections::BTreeMap;

use palisade_common::{Endpoint, PolicyKeyV4, PolicyKeyV6, PolicyValue, ServiceKey};

use crate::encode::MapSet;
use crate::object::PodKey;

/// One map write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapWrite {
    PolicyV4Upsert {
        prefix_len: u32,
        key: PolicyKeyV4,
        value: PolicyValue,
    },
    PolicyV4Delete {
        prefix_len: u32,
        key: PolicyKeyV4,
    },
    PolicyV6Upsert {
        prefix_len: u32,
        key: PolicyKeyV6,
        value: PolicyValue,
    },
    PolicyV6Delete {
        prefix_len: u32,
        key: PolicyKeyV6,
    },
    EndpointUpsert {
        pod: PodKey,
        ep: Endpoint,
    },
    EndpointDelete {
        pod: PodKey,
    },
    ServiceUpsert(ServiceKey),
    ServiceDelete(ServiceKey),
}

impl MapWrite {
    /// Apply this write to an in-memory map set (for tests and for the agent's
    /// record of what it wrote).
    pub fn apply_to(&self, m: &mut MapSet) {
        match self {
            MapWrite::PolicyV4Upsert {
                prefix_len,
                key,
                value,
            } => {
                m.policy_v4.insert((*prefix_len, *key), *value);
            }
            MapWrite::PolicyV4Delete { prefix_len, key } => {
                m.policy_v4.remove(&(*prefix_len, *key));
            }
            MapWrite::PolicyV6Upsert {
                prefix_len,
                key,
                value,
            } => {
                m.policy_v6.insert((*prefix_len, *key), *value);
            }
            MapWrite::PolicyV6Delete { prefix_len, key } => {
                m.policy_v6.remove(&(*prefix_len, *key));
            }
            MapWrite::EndpointUpsert { pod, ep } => {
                m.endpoints.insert(pod.clone(), *ep);
            }
            MapWrite::EndpointDelete { pod } => {
                m.endpoints.remove(pod);
            }
            MapWrite::ServiceUpsert(k) => {
                m.services.insert(*k);
            }
            MapWrite::ServiceDelete(k) => {
                m.services.remove(k);
            }
        }
    }
}

/// Writes grouped by kind, before ordering.
#[derive(Default)]
pub(crate) struct WriteSet {
    pub up4: Vec<(u32, PolicyKeyV4, PolicyValue)>,
    pub up6: Vec<(u32, PolicyKeyV6, PolicyValue)>,
    pub del4: Vec<(u32, PolicyKeyV4)>,
    pub del6: Vec<(u32, PolicyKeyV6)>,
    pub svc_up: Vec<ServiceKey>,
    pub svc_del: Vec<ServiceKey>,
    pub ep_up: Vec<(PodKey, Endpoint)>,
    pub ep_del: Vec<PodKey>,
}

impl WriteSet {
    /// Add the difference of one LPM map pair.
    pub fn lpm4(
        &mut self,
        old: &BTreeMap<(u32, PolicyKeyV4), PolicyValue>,
        new: &BTreeMap<(u32, PolicyKeyV4), PolicyValue>,
    ) {
        diff_lpm(old, new, &mut self.up4, &mut self.del4);
    }

    pub fn lpm6(
        &mut self,
        old: &BTreeMap<(u32, PolicyKeyV6), PolicyValue>,
        new: &BTreeMap<(u32, PolicyKeyV6), PolicyValue>,
    ) {
        diff_lpm(old, new, &mut self.up6, &mut self.del6);
    }

    /// The writes in gap-free order (see the module docs).
    pub fn into_ordered(mut self) -> Vec<MapWrite> {
        // Longest prefix first for upserts, shortest first for deletes.
        self.up4.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        self.up6.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        self.del4.sort();
        self.del6.sort();
        let mut w = Vec::with_capacity(
            self.up4.len()
                + self.up6.len()
                + self.del4.len()
                + self.del6.len()
                + self.svc_up.len()
                + self.svc_del.len()
                + self.ep_up.len()
                + self.ep_del.len(),
        );
        w.extend(
            self.up4
                .into_iter()
                .map(|(prefix_len, key, value)| MapWrite::PolicyV4Upsert {
                    prefix_len,
                    key,
                    value,
                }),
        );
        w.extend(
            self.up6
                .into_iter()
                .map(|(prefix_len, key, value)| MapWrite::PolicyV6Upsert {
                    prefix_len,
                    key,
                    value,
                }),
        );
        w.extend(self.svc_up.into_iter().map(MapWrite::ServiceUpsert));
        w.extend(
            self.ep_up
                .into_iter()
                .map(|(pod, ep)| MapWrite::EndpointUpsert { pod, ep }),
        );
        w.extend(
            self.del4
                .into_iter()
                .map(|(prefix_len, key)| MapWrite::PolicyV4Delete { prefix_len, key }),
        );
        w.extend(
            self.del6
                .into_iter()
                .map(|(prefix_len, key)| MapWrite::PolicyV6Delete { prefix_len, key }),
        );
        w.extend(self.svc_del.into_iter().map(MapWrite::ServiceDelete));
        w.extend(
            self.ep_del
                .into_iter()
                .map(|pod| MapWrite::EndpointDelete { pod }),
        );
        w
    }
}

fn diff_lpm<K: Ord + Copy>(
    old: &BTreeMap<(u32, K), PolicyValue>,
    new: &BTreeMap<(u32, K), PolicyValue>,
    up: &mut Vec<(u32, K, PolicyValue)>,
    del: &mut Vec<(u32, K)>,
) {
    up.extend(
        new.iter()
            .filter(|(k, v)| old.get(k) != Some(v))
            .map(|(&(p, k), v)| (p, k, *v)),
    );
    del.extend(old.keys().filter(|k| !new.contains_key(k)).copied());
}

/// Difference of two endpoint tables.
pub(crate) fn diff_endpoints(
    ws: &mut WriteSet,
    old: &BTreeMap<PodKey, Endpoint>,
    new: &BTreeMap<PodKey, Endpoint>,
) {
    for (pod, ep) in new {
        if old.get(pod) != Some(ep) {
            ws.ep_up.push((pod.clone(), *ep));
        }
    }
    for pod in old.keys() {
        if !new.contains_key(pod) {
            ws.ep_del.push(pod.clone());
        }
    }
}

/// The ordered writes from `old` to `new` (see the module docs for the order).
pub fn diff(old: &MapSet, new: &MapSet) -> Vec<MapWrite> {
    let mut ws = WriteSet::default();
    ws.lpm4(&old.policy_v4, &new.policy_v4);
    ws.lpm6(&old.policy_v6, &new.policy_v6);
    ws.svc_up
        .extend(new.services.difference(&old.services).copied());
    ws.svc_del
        .extend(old.services.difference(&new.services).copied());
    diff_endpoints(&mut ws, &old.endpoints, &new.endpoints);
    ws.into_ordered()
}
