//! Conntrack table pressure: how full each table is, checked on every full
//! pass (the resync), logged when a table nears its capacity and again once
//! it has room, so an operator hears of a full table before established
//! connections lose their entries. `palisade_map_entries` and
//! `palisade_map_capacity` carry the same figures for alerts.
use std::{collections::BTreeSet, path::Path};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use palisade_common::{maps as names, CtKeyV4, CtKeyV6, CtValue, MAX_CONNTRACK, MAX_CT_NEW};
use tracing::{info, warn};

use crate::datapath::open_pinned_map;

/// Fill (entries / capacity) from which a table is reported as nearly full.
pub const WARN_AT: f64 = 0.9;
/// Fill below which a reported table is reported as having room again.
pub const CLEAR_AT: f64 = 0.8;

/// One table's fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    pub table: &'static str,
    pub entries: usize,
    pub capacity: u32,
}

impl Level {
    fn fill(&self) -> f64 {
        self.entries as f64 / f64::from(self.capacity.max(1))
    }
}

/// Which tables are reported as nearly full.
#[derive(Default)]
pub struct Pressure {
    full: BTreeSet<&'static str>,
}

impl Pressure {
    /// Takes new levels; returns the tables whose state changed, with
    /// whether each is nearly full now.
    pub fn update(&mut self, levels: &[Level]) -> Vec<(Level, bool)> {
        let mut changed = Vec::new();
        for l in levels {
            let was = self.full.contains(l.table);
            if !was && l.fill() >= WARN_AT {
                self.full.insert(l.table);
                changed.push((*l, true));
            } else if was && l.fill() < CLEAR_AT {
                self.full.remove(l.table);
                changed.push((*l, false));
            }
        }
        changed
    }

    /// Reads the pinned conntrack tables under `pin_dir` and logs changes.
    pub fn check(&mut self, pin_dir: &Path) {
        let levels = read(pin_dir);
        for (l, full) in self.update(&levels) {
            let percent = (l.fill() * 100.0).round();
            if full {
                warn!(
                    table = l.table,
                    entries = l.entries,
                    capacity = l.capacity,
                    percent,
                    "conntrack table nearly full: new connections evict the oldest entries of this table, whose replies are then judged as new packets"
                );
            } else {
                info!(
                    table = l.table,
                    entries = l.entries,
                    capacity = l.capacity,
                    percent,
                    "conntrack table has room again"
                );
            }
        }
    }
}

fn count<K: aya::Pod>(pin_dir: &Path, name: &str) -> Option<usize> {
    let data: MapData = open_pinned_map(pin_dir, name).ok()?;
    let map: BpfHashMap<MapData, K, CtValue> = Map::from_map_data(data).ok()?.try_into().ok()?;
    Some(map.keys().count())
}

/// The conntrack tables' fill; a table that cannot be read is left out.
fn read(pin_dir: &Path) -> Vec<Level> {
    let tables = [
        ("conntrack_v4", names::CONNTRACK_V4, MAX_CONNTRACK, false),
        ("conntrack_new_v4", names::CT_NEW_V4, MAX_CT_NEW, false),
        ("conntrack_v6", names::CONNTRACK_V6, MAX_CONNTRACK, true),
        ("conntrack_new_v6", names::CT_NEW_V6, MAX_CT_NEW, true),
    ];
    tables
        .into_iter()
        .filter_map(|(table, name, capacity, v6)| {
            let entries = if v6 {
                count::<CtKeyV6>(pin_dir, name)?
            } else {
                count::<CtKeyV4>(pin_dir, name)?
            };
            Some(Level {
                table,
                entries,
                capacity,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_reported_once_when_nearly_full_and_once_when_it_has_room() {
        let at = |entries| Level {
            table: "conntrack_v4",
            entries,
            capacity: 1000,
        };
        let mut p = Pressure::default();
        assert!(p.update(&[at(899)]).is_empty());
        assert_eq!(p.update(&[at(900)]), [(at(900), true)]);
        assert!(p.update(&[at(950)]).is_empty(), "reported once");
        assert!(p.update(&[at(850)]).is_empty(), "not yet below 80%");
        assert_eq!(p.update(&[at(799)]), [(at(799), false)]);
        assert!(p.update(&[at(500)]).is_empty());
    }
}
