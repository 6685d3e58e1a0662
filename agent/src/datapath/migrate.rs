//! Carrying conntrack entries over from the pins of an earlier map layout
//! (`PAL_CONNTRACK` and `PAL_CT_NEW`, one 44-byte key of the flow as first
//! seen for both families) into the per-family tables, so established
//! connections keep passing their replies across the upgrade. Entries the old
//! programs create after the copy, until the new programs are attached, are
//! not carried: their replies are judged as new packets until the flow's next
//! packet in its own direction records it again.
use std::path::Path;

use super::layout::{open, Table};
use palisade_common::{maps as names, CtKeyV4, CtKeyV6, CtValue, FlowKey, CT_ORIGIN_LO, FAMILY_V4};

/// How many entries each legacy table held and how many were carried.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Carried {
    pub found: usize,
    pub carried: usize,
}

/// Copy the entries of the legacy conntrack pins under `maps_dir` into the
/// new tables (pinned there by the loader), then remove the legacy pins. No
/// legacy pins: nothing to do. A table that cannot be read is reported and
/// its pin kept; enforcement does not depend on it.
pub fn carry_legacy_conntrack(maps_dir: &Path) -> Result<Option<Carried>, String> {
    let [old_confirmed, old_new] = names::LEGACY_CONNTRACK;
    if !maps_dir.join(old_confirmed).exists() && !maps_dir.join(old_new).exists() {
        return Ok(None);
    }
    let mut total = Carried::default();
    for (old, new4, new6) in [
        (old_confirmed, names::CONNTRACK_V4, names::CONNTRACK_V6),
        (old_new, names::CT_NEW_V4, names::CT_NEW_V6),
    ] {
        let path = maps_dir.join(old);
        if !path.exists() {
            continue;
        }
        let legacy: Table<FlowKey> = open(&maps_dir.join(old))?;
        let mut v4: Table<CtKeyV4> = open(&maps_dir.join(new4))?;
        let mut v6: Table<CtKeyV6> = open(&maps_dir.join(new6))?;
        for (k, v) in legacy.iter().flatten() {
            total.found += 1;
            let ok = if k.family == FAMILY_V4 {
                let mut src = [0u8; 4];
                let mut dst = [0u8; 4];
                src.copy_from_slice(&k.src[..4]);
                dst.copy_from_slice(&k.dst[..4]);
                let (key, lo) = CtKeyV4::of(k.ifindex, k.proto, src, k.sport, dst, k.dport);
                v4.insert(key, value(v, lo), 0).is_ok()
            } else {
                let (key, lo) = CtKeyV6::of(k.ifindex, k.proto, &k.src, k.sport, &k.dst, k.dport);
                v6.insert(key, value(v, lo), 0).is_ok()
            };
            if ok {
                total.carried += 1;
            }
        }
        std::fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
    }
    Ok(Some(total))
}

/// The legacy value with the origin of the new layout (its padding was zero).
fn value(v: CtValue, lo: bool) -> CtValue {
    CtValue {
        origin: if lo { CT_ORIGIN_LO } else { 0 },
        ..v
    }
}
