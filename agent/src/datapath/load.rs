//! Loading the eBPF object against the maps pinned under the pin directory
//! (an earlier agent's, adopted, where their layout is this build's) or
//! pinning new ones.
use std::{collections::BTreeMap, fs, path::Path};

use aya::{maps::MapData, EbpfLoader};
use palisade_common::{
    maps::{self as names, MapSpec},
    progs,
};

use super::{classifier, layout, AttachMode, Datapath, DatapathError, EBPF_OBJECT};
use crate::pins::PinLock;

/// The maps `load_with` may give a smaller capacity.
const POLICY_MAPS: [&str; 4] = [
    names::POLICY_V4,
    names::POLICY_V6,
    names::POLICY_HOST_V4,
    names::POLICY_HOST_V6,
];

impl Datapath {
    /// Load the object, reusing maps already pinned under `pin_dir` (adoption) or
    /// creating and pinning them.
    pub fn load(pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::load_with(pin_dir, None)
    }

    /// Like `load`, optionally with smaller policy maps (tests of map-full refusal).
    pub fn load_with(pin_dir: &Path, policy_entries: Option<u32>) -> Result<Self, DatapathError> {
        let maps_dir = pin_dir.join("maps");
        for d in [&maps_dir, &pin_dir.join("links")] {
            fs::create_dir_all(d).map_err(|source| DatapathError::PinDir {
                path: d.clone(),
                source,
            })?;
        }
        let lock = PinLock::take(pin_dir).map_err(DatapathError::Lock)?;
        let capacity = |s: &MapSpec| match policy_entries {
            Some(n) if POLICY_MAPS.contains(&s.name) => n,
            _ => s.max_entries,
        };
        let stale = layout::set_aside(pin_dir, &maps_dir, capacity)?;
        for s in stale.iter().filter(|s| s.want != Some(s.found)) {
            let want = s.want.map_or_else(|| "none".to_string(), |w| w.to_string());
            tracing::warn!(
                map = %s.name,
                found = %s.found,
                want = %want,
                "pinned map of another layout"
            );
        }
        if !stale.is_empty() {
            tracing::warn!(
                maps = stale.len(),
                "the previous layout's maps are set aside and every map is created anew; the programs attached go on using the old maps until the first pass has filled the new ones"
            );
        }
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&maps_dir);
        if let Some(n) = policy_entries {
            for name in POLICY_MAPS {
                loader.map_max_entries(name, n);
            }
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|source| DatapathError::Load {
                path: pin_dir.to_path_buf(),
                source: Box::new(source),
            })?;
        for name in [progs::TO_POD, progs::FROM_POD, progs::SVC_EGRESS] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    name,
                    source: Box::new(source),
                })?;
        }
        // Before the programs are attached: the old ones go on filling the
        // legacy tables until then.
        match super::migrate::carry_legacy_conntrack(&maps_dir) {
            Ok(None) => {}
            Ok(Some(c)) => tracing::info!(
                found = c.found,
                carried = c.carried,
                "conntrack entries of the previous map layout carried over"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "conntrack entries of the previous map layout not carried over: replies of connections opened before the upgrade are judged as new packets until the flow's next packet"
            ),
        }
        for (name, copied) in layout::carry_conntrack(pin_dir, &maps_dir, &stale) {
            match copied {
                Ok((found, carried)) => tracing::info!(
                    map = %name,
                    found,
                    carried,
                    "conntrack entries of the previous layout's table carried over"
                ),
                Err(e) => tracing::warn!(
                    map = %name,
                    error = %e,
                    "conntrack entries not carried over: replies of connections opened before the upgrade are judged as new packets until the flow's next packet"
                ),
            }
        }
        let mut pinned_maps = Vec::new();
        for e in fs::read_dir(&maps_dir)
            .map_err(|source| DatapathError::PinDir {
                path: maps_dir.clone(),
                source,
            })?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let map = MapData::from_pin(e.path()).map_err(|e| DatapathError::PinLink {
                path: maps_dir.join(&name),
                reason: e.to_string(),
            })?;
            pinned_maps.push((name, map));
        }
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            mode: AttachMode::detect(),
            attached: BTreeMap::new(),
            pinned_maps,
            stale,
            lock,
        })
    }
}
