//! Reading one directory entry: which names are inputs, and a file's objects.
use std::path::Path;

use palisade_policy::{parse_yaml_documents, Object};

use super::{Listed, Stamp, MAX_FILE_BYTES, REVISION_FILE};

/// What a directory entry is to the file source; `None` for entries it never
/// reads nor reports (dot-entries, REVISION).
pub(super) fn classify(dir: &Path, name: &std::ffi::OsStr) -> Option<Listed> {
    let text = name.to_string_lossy();
    if text.starts_with('.') || text == REVISION_FILE {
        return None;
    }
    let path = dir.join(name);
    let meta = std::fs::metadata(&path);
    if let Ok(m) = &meta {
        if m.is_dir() {
            return Some(Listed::Skipped("subdirectories are not read"));
        }
    }
    if !has_object_extension(&path) {
        return Some(Listed::Skipped(
            "not a .yaml, .yml or .json file (nor REVISION)",
        ));
    }
    Some(match meta {
        Ok(m) if m.is_file() => Listed::Object(Ok(Stamp::of(&m))),
        Ok(_) => Listed::Object(Err("not a regular file".to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Listed, but not there through its link: a dangling symlink. A
            // name that vanished between listing and stat is caught by the
            // removal check of the caller.
            match std::fs::symlink_metadata(&path) {
                Ok(_) => Listed::Object(Err(
                    "dangling symlink (its target does not exist)".to_string()
                )),
                Err(_) => return None,
            }
        }
        Err(e) => Listed::Object(Err(format!("reading file: {e}"))),
    })
}

fn has_object_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|x| x.to_str())
        .is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "yaml" | "yml" | "json"))
}

/// The objects of one file, or why they cannot be taken: too large, not
/// readable, not UTF-8, not parseable, an unsupported kind, or no object at all.
pub(super) fn read_objects(path: &Path, origin: &str, len: u64) -> Result<Vec<Object>, String> {
    use std::io::Read;
    if len > MAX_FILE_BYTES {
        return Err(format!(
            "file is {len} bytes, over the limit of {MAX_FILE_BYTES}"
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("reading file: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("file is over the limit of {MAX_FILE_BYTES} bytes"));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for r in parse_yaml_documents(&text, origin) {
        match r {
            Ok(o) => objects.push(o),
            Err(e) => errors.push(strip_origin(&e.to_string(), origin)),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    if objects.is_empty() {
        return Err("holds no object (empty, or still being written)".to_string());
    }
    Ok(objects)
}

/// An engine error without the leading `origin: ` (the caller names the file).
fn strip_origin(e: &str, origin: &str) -> String {
    e.strip_prefix(origin)
        .and_then(|s| s.strip_prefix(": "))
        .unwrap_or(e)
        .to_string()
}
