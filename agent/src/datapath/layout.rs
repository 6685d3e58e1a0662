//! Pinned maps of another layout (an agent of another version wrote them).
//! The loader adopts a pin by its name alone, so before the object is loaded,
//! when any pin's type, key size, value size, capacity or flags differ from
//! this build's [`SPECS`], or a `PAL_*` pin is one this build does not
//! declare, every pin is moved to `<pin_dir>/stale` and the loader creates
//! all maps anew. The programs already attached keep the maps they were
//! loaded with, a consistent set, so they go on enforcing from the old ones
//! until the first pass has filled the new maps from the agent's state and
//! re-pointed every hook; only then are the stale pins removed (see
//! `SyncLoop::program`). A restart in between finds the stale pins and goes
//! on with the upgrade.
//!
//! Conntrack tables whose keys and values keep their size (unchanged, or of a
//! new capacity or flags) are copied into the new tables, so established
//! connections keep their replies; of any other changed conntrack layout only
//! the known earlier one is carried (`migrate`), else replies of connections opened
//! before the upgrade are judged as new packets until the flow's next packet
//! in its own direction records it again.
use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, Map, MapData, MapInfo};
use palisade_common::{
    maps::{self as names, MapSpec, SPECS},
    CtKeyV4, CtKeyV6, CtValue,
};

use super::DatapathError;

/// Where pins of another layout wait until the new maps are in use.
pub const STALE_DIR: &str = "stale";

/// What a map is, as the kernel reports it or as this build declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub kind: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {} key {} B value {} B capacity {} flags {:#x}",
            self.kind, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// A pin set aside: its name, what it was and what this build wants (`None`:
/// a map this build does not have).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stale {
    pub name: String,
    pub found: Shape,
    pub want: Option<Shape>,
}

fn shape_of(spec: &MapSpec, max_entries: u32) -> Shape {
    Shape {
        kind: spec.kind as u32,
        key_size: spec.key_size,
        value_size: spec.value_size,
        max_entries,
        flags: spec.flags,
    }
}

fn found_shape(path: &Path) -> Result<Shape, DatapathError> {
    let info = MapInfo::from_pin(path).map_err(|e| DatapathError::PinLink {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let kind = info.map_type().map_or(u32::MAX, |t| t as u32);
    Ok(Shape {
        kind,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

fn stale_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(STALE_DIR)
}

/// When any pin under `maps_dir` is one this build would misread, moves
/// every `PAL_*` pin there to `<pin_dir>/stale`, and returns every pin in
/// `stale`; `capacity` gives the capacity this load asks of a map.
///
/// All of them move, not only those that differ: the programs attached read
/// the old maps as one set (an endpoint's id in the old records keys its
/// entries in the old policy maps), while this build's first pass gives out
/// ids and writes entries afresh. Pins already in `stale` are an interrupted
/// upgrade's, whose programs may still be attached: the upgrade goes on.
/// The legacy conntrack pins stay: `migrate` reads them after the load.
pub fn set_aside(
    pin_dir: &Path,
    maps_dir: &Path,
    capacity: impl Fn(&MapSpec) -> u32,
) -> Result<Vec<Stale>, DatapathError> {
    let dir_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DatapathError::PinDir { path, source }
    };
    let want_of = |name: &str| {
        SPECS
            .iter()
            .find(|s| s.pinned && s.name == name)
            .map(|s| shape_of(s, capacity(s)))
    };
    let mut pins = Vec::new();
    for e in fs::read_dir(maps_dir).map_err(dir_err(maps_dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("PAL_") || names::LEGACY_CONNTRACK.contains(&name.as_str()) {
            continue;
        }
        let found = found_shape(&e.path())?;
        pins.push((name, e.path(), found));
    }
    let aside = stale_dir(pin_dir);
    if pins
        .iter()
        .any(|(name, _, found)| want_of(name) != Some(*found))
    {
        fs::create_dir_all(&aside).map_err(dir_err(&aside))?;
        for (name, path, _) in &pins {
            let to = aside.join(name);
            // A pin left by an earlier interrupted upgrade is older still: the
            // programs using it (if any) keep it alive without its pin.
            if to.exists() {
                fs::remove_file(&to).map_err(dir_err(&to))?;
            }
            fs::rename(path, &to).map_err(dir_err(path))?;
        }
    }
    let mut stale = Vec::new();
    let Ok(entries) = fs::read_dir(&aside) else {
        return Ok(stale);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let found = found_shape(&e.path())?;
        let want = want_of(&name);
        stale.push(Stale { name, found, want });
    }
    stale.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(stale)
}

/// A conntrack table, opened by its pin (aya reads an LRU hash as a hash).
pub(super) type Table<K> = HashMap<MapData, K, CtValue>;

/// Entries a table held and entries copied, or why it could not be read.
pub type Copied = Result<(usize, usize), String>;

pub(super) fn open<K: aya::Pod>(path: &Path) -> Result<Table<K>, String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let data = MapData::from_pin(path).map_err(|e| err(&e))?;
    let map = Map::from_map_data(data).map_err(|e| err(&e))?;
    Table::<K>::try_from(map).map_err(|e| err(&e))
}

fn copy<K: aya::Pod>(from: &Path, to: &Path) -> Copied {
    let old: Table<K> = open(from)?;
    let mut new: Table<K> = open(to)?;
    let (mut found, mut carried) = (0, 0);
    for (k, v) in old.iter().flatten() {
        found += 1;
        carried += usize::from(new.insert(k, v, 0).is_ok());
    }
    Ok((found, carried))
}

/// Copies the entries of set-aside conntrack tables whose key and value
/// sizes are this build's into the new tables (pinned by the loader).
/// Returns, per table carried, its name and how many entries it held and
/// how many were copied (a smaller table keeps what fits).
pub fn carry_conntrack(pin_dir: &Path, maps_dir: &Path, stale: &[Stale]) -> Vec<(String, Copied)> {
    let mut out = Vec::new();
    for s in stale {
        let Some(want) = s.want else { continue };
        if want.key_size != s.found.key_size || want.value_size != s.found.value_size {
            continue;
        }
        let from = stale_dir(pin_dir).join(&s.name);
        let to = maps_dir.join(&s.name);
        let copied = match s.name.as_str() {
            names::CONNTRACK_V4 | names::CT_NEW_V4 => copy::<CtKeyV4>(&from, &to),
            names::CONNTRACK_V6 | names::CT_NEW_V6 => copy::<CtKeyV6>(&from, &to),
            _ => continue,
        };
        out.push((s.name.clone(), copied));
    }
    out
}

/// Removes the set-aside pins (the new maps are in use on every hook). Maps
/// still referenced by a program elsewhere live on without their pin.
pub fn remove_stale(pin_dir: &Path) -> Result<usize, DatapathError> {
    let dir = stale_dir(pin_dir);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in entries.flatten() {
        fs::remove_file(e.path()).map_err(|source| DatapathError::PinDir {
            path: e.path(),
            source,
        })?;
        n += 1;
    }
    fs::remove_dir(&dir).map_err(|source| DatapathError::PinDir { path: dir, source })?;
    Ok(n)
}
