//! Reading a directory of manifests into the engine's cluster index, as the
//! agent's file source does: the `.yaml`, `.yml` and `.json` files directly in
//! the directory (not dot-files), in path order; an object defined twice is
//! taken from the first file.
use std::{collections::BTreeSet, path::Path};

use anyhow::{bail, Context, Result};
use palisade_policy::{parse_yaml_documents, ClusterIndex};

/// The index of the objects in `dir`, and the errors of the objects that
/// could not be read (each naming its file), which are left out.
pub fn load(dir: &Path) -> Result<(ClusterIndex, Vec<String>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("--source-dir {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().to_string());
            let ext = p
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase());
            !name.is_some_and(|n| n.starts_with('.'))
                && p.is_file()
                && matches!(ext.as_deref(), Some("yaml" | "yml" | "json"))
        })
        .collect();
    if files.is_empty() {
        bail!(
            "--source-dir {}: no .yaml, .yml or .json files",
            dir.display()
        );
    }
    files.sort();
    let mut index = ClusterIndex::new();
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        for o in parse_yaml_documents(&text, &f.display().to_string()) {
            match o {
                Ok(o) => {
                    if seen.insert(o.object_ref()) {
                        let out = index.apply(o);
                        if let Some(e) = out.error {
                            errors.push(e.to_string());
                        }
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    Ok((index, errors))
}
