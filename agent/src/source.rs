//! Policy sources: where cluster state comes from.
//!
//! A source sends `SourceEvent`s into the sync loop: objects applied and deleted,
//! and `Synced` whenever what it has sent so far is a consistent view (the file
//! source after each scan; the kube source once every watcher has listed). Nothing
//! is programmed before the first `Synced`.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use palisade_policy::{parse_yaml_documents, Object, ObjectRef};
use tokio::sync::mpsc;

#[derive(Debug)]
pub enum SourceEvent {
    Apply {
        obj: Object,
        origin: String,
    },
    Delete(ObjectRef),
    /// An input that could not be read or parsed at all (file, field, reason).
    Error {
        origin: String,
        message: String,
    },
    /// Everything sent so far is a consistent snapshot at `revision`.
    Synced {
        revision: String,
    },
}

/// The name of the optional file whose content the agent reports as the programmed
/// revision (see README, "Readiness").
pub const REVISION_FILE: &str = "REVISION";

/// Watches a directory of Kubernetes YAML files (`*.yaml`, `*.yml`, `*.json`).
pub struct FileSource {
    dir: PathBuf,
    poll: Duration,
    /// file -> (mtime, len) at the last scan
    seen: BTreeMap<PathBuf, (SystemTime, u64)>,
    /// file -> objects it defined
    objects: BTreeMap<PathBuf, Vec<ObjectRef>>,
    revision_stamp: Option<(SystemTime, u64)>,
    first: bool,
}

impl FileSource {
    pub fn new(dir: &Path, poll: Duration) -> Self {
        Self {
            dir: dir.to_path_buf(),
            poll,
            seen: BTreeMap::new(),
            objects: BTreeMap::new(),
            revision_stamp: None,
            first: true,
        }
    }

    fn list(&self) -> std::io::Result<BTreeMap<PathBuf, (SystemTime, u64)>> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let p = e.path();
            let ext_ok = p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| matches!(x, "yaml" | "yml" | "json"));
            if !ext_ok {
                continue;
            }
            if let Ok(m) = e.metadata() {
                if m.is_file() {
                    out.insert(p, (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
                }
            }
        }
        Ok(out)
    }

    fn revision_stamp(&self) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(self.dir.join(REVISION_FILE)).ok()?;
        Some((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    }

    /// One scan: send what changed since the last one, then `Synced`.
    fn scan(&mut self, tx: &mpsc::UnboundedSender<SourceEvent>) -> bool {
        let now = match self.list() {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(SourceEvent::Error {
                    origin: self.dir.display().to_string(),
                    message: format!("reading directory: {e}"),
                });
                return false;
            }
        };
        let rev_stamp = self.revision_stamp();
        if !self.first && now == self.seen && rev_stamp == self.revision_stamp {
            return false;
        }
        let mut deleted: Vec<ObjectRef> = Vec::new();
        for (path, stamp) in &now {
            if self.seen.get(path) == Some(stamp) {
                continue;
            }
            let origin = path.display().to_string();
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    let _ = tx.send(SourceEvent::Error {
                        origin,
                        message: format!("reading file: {e}"),
                    });
                    continue;
                }
            };
            let mut refs = Vec::new();
            for r in parse_yaml_documents(&text, &origin) {
                match r {
                    Ok(obj) => {
                        refs.push(obj.object_ref());
                        let _ = tx.send(SourceEvent::Apply {
                            obj,
                            origin: origin.clone(),
                        });
                    }
                    Err(e) => {
                        let _ = tx.send(SourceEvent::Error {
                            origin: origin.clone(),
                            message: e.to_string(),
                        });
                    }
                }
            }
            // Objects this file no longer defines are deleted.
            if let Some(old) = self.objects.insert(path.clone(), refs.clone()) {
                deleted.extend(old.into_iter().filter(|r| !refs.contains(r)));
            }
        }
        let gone: Vec<PathBuf> = self
            .seen
            .keys()
            .filter(|p| !now.contains_key(*p))
            .cloned()
            .collect();
        for p in gone {
            deleted.extend(self.objects.remove(&p).unwrap_or_default());
        }
        // An object that moved to another file is still alive.
        for r in deleted {
            if !self.objects.values().any(|refs| refs.contains(&r)) {
                let _ = tx.send(SourceEvent::Delete(r));
            }
        }
        self.seen = now;
        self.revision_stamp = rev_stamp;
        self.first = false;
        let revision = std::fs::read_to_string(self.dir.join(REVISION_FILE))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        tx.send(SourceEvent::Synced { revision }).is_ok()
    }

    /// Scan forever (polling keeps it independent of inotify limits and works on
    /// any filesystem; the interval bounds change-to-enforced latency).
    pub async fn run(mut self, tx: mpsc::UnboundedSender<SourceEvent>) {
        loop {
            self.scan(&tx);
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}
