//! The file source: cluster state from the YAML/JSON files of one directory.
//!
//! It reads the files directly in one directory whose names end in
//! `.yaml`, `.yml` or `.json` (any case), following symlinks (a ConfigMap mounted
//! as a volume is a directory of symlinks into `..data`). Names starting with a
//! dot are not read (ConfigMap internals, editors' temporary files); a change to
//! one starting with two dots triggers a full scan (the `..data` swap of a
//! ConfigMap update).
//! Subdirectories and other files are skipped, each logged once.
//!
//! A file's objects go away only when the file is removed, or when a complete,
//! valid read of it no longer holds them. A file that cannot be read, does not
//! parse, holds an object of an unsupported kind, holds no object at all (as a
//! file being rewritten in place does at first) or is larger than
//! [`MAX_FILE_BYTES`] keeps its last good objects, and is reported until it is
//! fixed. An object defined by two files is taken from the first by path, and
//! the conflict is reported; when that file goes, the other's copy applies.
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use palisade_policy::{Object, ObjectRef};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    inotify::{DirWatch, Drained},
    SourceEvent,
};

mod read;

use read::{classify, read_objects};

/// The name of the optional file whose content the agent reports as the programmed
/// revision (see README, "Readiness").
pub const REVISION_FILE: &str = "REVISION";

/// Files larger than this are not read (their last good objects stay): a
/// ConfigMap holds at most 1 MiB, and a mistaken multi-megabyte file must not
/// grow the agent by its size.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// A file modified more recently than this is left for its writer to finish
/// (its `IN_CLOSE_WRITE`) when a poll finds it, unless a newer REVISION says
/// the writer is done with it.
const SETTLE: Duration = Duration::from_secs(1);

/// What identifies one version of a file (through symlinks): a ConfigMap update
/// swaps in new files, whose inode differs even when size and time do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    mtime: SystemTime,
    len: u64,
    dev: u64,
    ino: u64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        Self {
            mtime: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            len: m.len(),
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// One object file: the version last read, its last good objects, and why the
/// last read did not replace them.
#[derive(Default)]
struct FileState {
    stamp: Option<Stamp>,
    good: Vec<Object>,
    error: Option<String>,
}

/// An entry of the directory listing.
enum Listed {
    /// An object file (its stamp, or why it cannot be stat'ed).
    Object(Result<Stamp, String>),
    /// Not read, for this reason.
    Skipped(&'static str),
}

/// Watches a directory of Kubernetes YAML files.
pub struct FileSource {
    dir: PathBuf,
    poll: Duration,
    files: BTreeMap<PathBuf, FileState>,
    /// What the sync loop has: object -> (file it came from, object).
    sent: BTreeMap<ObjectRef, (PathBuf, Object)>,
    sent_errors: Option<BTreeMap<String, String>>,
    dir_error: Option<String>,
    /// Names already logged as skipped.
    skipped: BTreeSet<PathBuf>,
    revision: String,
    revision_stamp: Option<Stamp>,
    first: bool,
    /// The health last reported (`Health` for `files`).
    up: Option<bool>,
}

impl FileSource {
    pub fn new(dir: &Path, poll: Duration) -> Self {
        Self {
            dir: dir.to_path_buf(),
            poll,
            files: BTreeMap::new(),
            sent: BTreeMap::new(),
            sent_errors: None,
            dir_error: None,
            skipped: BTreeSet::new(),
            revision: String::new(),
            revision_stamp: None,
            first: true,
            up: None,
        }
    }

    /// Every entry of the directory, classified.
    fn list(&self) -> std::io::Result<BTreeMap<PathBuf, Listed>> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(listed) = classify(&self.dir, &name) else {
                continue;
            };
            out.insert(e.path(), listed);
        }
        Ok(out)
    }

    fn revision_stamp(&self) -> Option<Stamp> {
        std::fs::metadata(self.dir.join(REVISION_FILE))
            .ok()
            .map(|m| Stamp::of(&m))
    }

    /// REVISION's stamp and content, read before any object file: writers write
    /// their objects and then REVISION, so everything that revision covers is on
    /// disk by the time the objects are read. Its stamp is taken before its
    /// content: a REVISION rewritten in between changes the stamp, so the next
    /// scan reports it.
    fn read_revision(&self) -> (Option<Stamp>, String) {
        let stamp = self.revision_stamp();
        let text = std::fs::read_to_string(self.dir.join(REVISION_FILE))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        (stamp, text)
    }

    /// A full scan. From the poll (`settle`), a file modified within
    /// [`SETTLE`] and after the current REVISION is left for later: its writer
    /// may not be done with it.
    fn scan(&mut self, tx: &mpsc::UnboundedSender<SourceEvent>, settle: bool) -> bool {
        let (rev_stamp, revision) = self.read_revision();
        let listed = self.list();
        let up = listed.is_ok();
        if self.up != Some(up) {
            self.up = Some(up);
            let _ = tx.send(SourceEvent::Health {
                resource: "files".to_string(),
                up,
                restarted: false,
            });
        }
        let listed = match listed {
            Ok(l) => {
                self.dir_error = None;
                l
            }
            Err(e) => {
                // Nothing is deleted: the objects read last stay enforced.
                self.dir_error = Some(format!("reading directory: {e}"));
                let rev = self.revision.clone();
                return self.publish(tx, rev, self.revision_stamp);
            }
        };
        let now = SystemTime::now();
        let mut changed = self.first;
        for (path, entry) in &listed {
            match entry {
                Listed::Skipped(why) => self.note_skipped(path, why),
                Listed::Object(Err(e)) => changed |= self.set_error(path, e.clone()),
                Listed::Object(Ok(stamp)) => {
                    if self.files.get(path).and_then(|f| f.stamp) == Some(*stamp) {
                        continue;
                    }
                    let fresh = now.duration_since(stamp.mtime).unwrap_or_default() < SETTLE;
                    let covered = rev_stamp.is_some_and(|r| r.mtime >= stamp.mtime);
                    if settle && fresh && !covered {
                        continue;
                    }
                    self.read_file(path, *stamp);
                    changed = true;
                }
            }
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !matches!(listed.get(*p), Some(Listed::Object(_))))
            .cloned()
            .collect();
        for p in gone {
            self.files.remove(&p);
            changed = true;
        }
        if !changed && rev_stamp == self.revision_stamp {
            return false;
        }
        self.publish(tx, revision, rev_stamp)
    }

    /// A scan of only the names inotify reported: what a change costs does not
    /// grow with the size of the directory. Same ordering rule as [`Self::scan`]:
    /// REVISION is read first, and the names queued up to that read are added.
    fn scan_named(
        &mut self,
        mut names: BTreeMap<OsString, u32>,
        watch: &mut DirWatch,
        tx: &mpsc::UnboundedSender<SourceEvent>,
    ) -> std::io::Result<bool> {
        let (rev_stamp, revision) = self.read_revision();
        match watch.drain_names()? {
            Drained::Names(more) => {
                for (k, m) in more {
                    *names.entry(k).or_default() |= m;
                }
            }
            Drained::Overflow | Drained::Gone => return Ok(self.scan(tx, false)),
        }
        // A ConfigMap volume's update swaps `..data` (its internal names start
        // with two dots): that changes what every visible symlink points at
        // without naming any of them. Other dot-entries (editors' and writers'
        // temporary files) change nothing read.
        if names.keys().any(|n| n.to_string_lossy().starts_with("..")) {
            return Ok(self.scan(tx, false));
        }
        let mut changed = false;
        for (name, mask) in names {
            let path = self.dir.join(&name);
            if std::fs::symlink_metadata(&path).is_err() {
                // Removed (or renamed away): its objects go.
                changed |= self.files.remove(&path).is_some();
                continue;
            }
            match classify(&self.dir, &name) {
                None => continue,
                Some(Listed::Skipped(why)) => {
                    self.note_skipped(&path, why);
                    // A file that became a directory (or lost its extension)
                    // is gone as an object file.
                    changed |= self.files.remove(&path).is_some();
                }
                Some(Listed::Object(Ok(stamp))) => {
                    // A new regular file is read once its writer closes it; a
                    // new symlink (created whole) at once.
                    let only_created =
                        mask & (libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_ATTRIB) == 0;
                    let symlink =
                        std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
                    if only_created && !symlink {
                        continue;
                    }
                    if self.files.get(&path).and_then(|f| f.stamp) != Some(stamp) {
                        self.read_file(&path, stamp);
                        changed = true;
                    }
                }
                Some(Listed::Object(Err(e))) => changed |= self.set_error(&path, e),
            }
        }
        if !changed && rev_stamp == self.revision_stamp {
            return Ok(false);
        }
        Ok(self.publish(tx, revision, rev_stamp))
    }

    fn note_skipped(&mut self, path: &Path, why: &str) {
        if self.skipped.insert(path.to_path_buf()) {
            info!(file = %path.display(), "skipped: {why}");
        }
    }

    /// Records an error for `path`, keeping its last good objects; whether
    /// anything changed.
    fn set_error(&mut self, path: &Path, message: String) -> bool {
        let f = self.files.entry(path.to_path_buf()).or_default();
        let changed = f.error.as_ref() != Some(&message);
        f.error = Some(message);
        f.stamp = None;
        changed
    }

    /// Reads one file. Only a complete, valid read replaces its objects.
    fn read_file(&mut self, path: &Path, stamp: Stamp) {
        let origin = path.display().to_string();
        let read = read_objects(path, &origin, stamp.len);
        let f = self.files.entry(path.to_path_buf()).or_default();
        f.stamp = Some(stamp);
        match read {
            Ok(objects) => {
                f.good = objects;
                f.error = None;
            }
            Err(e) => {
                let kept = if f.good.is_empty() {
                    "nothing from it is applied".to_string()
                } else {
                    format!("its last good {} object(s) stay", f.good.len())
                };
                f.error = Some(format!("{e}; {kept} until it is fixed or removed"));
            }
        }
    }

    /// Sends what differs from what the sync loop has, the errors if they
    /// changed, then `Synced`.
    fn publish(
        &mut self,
        tx: &mpsc::UnboundedSender<SourceEvent>,
        revision: String,
        rev_stamp: Option<Stamp>,
    ) -> bool {
        let mut effective: BTreeMap<ObjectRef, (PathBuf, Object)> = BTreeMap::new();
        let mut errors: BTreeMap<String, String> = BTreeMap::new();
        for (path, f) in &self.files {
            for obj in &f.good {
                let r = obj.object_ref();
                match effective.get(&r) {
                    Some((winner, _)) => {
                        // Deterministic: the first file by path wins.
                        let msg = format!(
                            "{r} is also defined in {}, whose copy is applied (the first file by path wins); this copy is ignored",
                            winner.display()
                        );
                        errors
                            .entry(path.display().to_string())
                            .and_modify(|e| {
                                e.push_str("; ");
                                e.push_str(&msg);
                            })
                            .or_insert(msg);
                    }
                    None => {
                        effective.insert(r, (path.clone(), obj.clone()));
                    }
                }
            }
            if let Some(e) = &f.error {
                errors.insert(path.display().to_string(), e.clone());
            }
        }
        if let Some(e) = &self.dir_error {
            errors.insert(self.dir.display().to_string(), e.clone());
        }
        for (r, entry) in &effective {
            if self.sent.get(r) != Some(entry) {
                let _ = tx.send(SourceEvent::Apply {
                    obj: entry.1.clone(),
                    origin: entry.0.display().to_string(),
                });
            }
        }
        for r in self.sent.keys() {
            if !effective.contains_key(r) {
                let _ = tx.send(SourceEvent::Delete(r.clone()));
            }
        }
        self.sent = effective;
        if self.sent_errors.as_ref() != Some(&errors) {
            let _ = tx.send(SourceEvent::InputErrors(errors.clone()));
            self.sent_errors = Some(errors);
        }
        self.revision = revision.clone();
        self.revision_stamp = rev_stamp;
        self.first = false;
        tx.send(SourceEvent::Synced {
            revision,
            revisions: BTreeMap::new(),
        })
        .is_ok()
    }

    /// Scan forever: the files inotify names, at once, and the whole directory
    /// every poll interval regardless (the safety net for filesystems without
    /// inotify, or a full inotify queue, which also triggers a full scan). A
    /// directory that is removed keeps its last objects; its watch is made
    /// again once it is back.
    pub async fn run(mut self, tx: mpsc::UnboundedSender<SourceEvent>) {
        let mut watch = self.watch(None);
        self.scan(&tx, false);
        loop {
            if tx.is_closed() {
                return;
            }
            if watch.is_none() && self.dir.is_dir() {
                watch = self.watch(Some(()));
                if watch.is_some() {
                    self.scan(&tx, false);
                }
            }
            let Some(w) = watch.as_mut() else {
                // Without a watch, poll (and retry the watch) at least every second
                // while the directory is missing.
                let wait = if self.dir.is_dir() {
                    self.poll
                } else {
                    self.poll.min(Duration::from_secs(1))
                };
                tokio::time::sleep(wait).await;
                self.scan(&tx, true);
                continue;
            };
            let woke = tokio::select! {
                r = w.changed() => Some(r),
                _ = tokio::time::sleep(self.poll) => None,
            };
            match woke {
                None => {
                    self.scan(&tx, true);
                }
                Some(Ok(Drained::Overflow)) => {
                    self.scan(&tx, false);
                }
                Some(Ok(Drained::Gone)) => {
                    warn!(dir = %self.dir.display(), "source directory removed or moved: the objects read last stay enforced; it is watched again once it is back");
                    watch = None;
                    self.scan(&tx, false);
                }
                Some(Ok(Drained::Names(names))) => {
                    if let Err(e) = self.scan_named(names, w, &tx) {
                        warn!(error = %e, "inotify failed; polling only");
                        watch = None;
                        self.scan(&tx, false);
                    }
                }
                Some(Err(e)) => {
                    warn!(error = %e, "inotify failed; polling only");
                    watch = None;
                    self.scan(&tx, false);
                }
            }
        }
    }

    /// A new watch on the directory; `again` when one existed before.
    fn watch(&self, again: Option<()>) -> Option<DirWatch> {
        match DirWatch::new(&self.dir) {
            Ok(w) => {
                if again.is_some() {
                    info!(dir = %self.dir.display(), "watching the source directory again");
                }
                Some(w)
            }
            Err(e) => {
                if again.is_none() {
                    warn!(dir = %self.dir.display(), error = %e, "no inotify watch; polling");
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
