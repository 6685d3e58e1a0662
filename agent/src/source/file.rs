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

use palisade_policy::{parse_yaml_documents, Object, ObjectRef};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    inotify::{DirWatch, Drained},
    SourceEvent,
};

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
        let listed = match self.list() {
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

/// What a directory entry is to the file source; `None` for entries it never
/// reads nor reports (dot-entries, REVISION).
fn classify(dir: &Path, name: &std::ffi::OsStr) -> Option<Listed> {
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
fn read_objects(path: &Path, origin: &str, len: u64) -> Result<Vec<Object>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str, team: &str) -> String {
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {{team: {team}}}\n")
    }

    /// A source on a fresh directory; inotify is the only way it learns of
    /// changes (the poll interval is never reached).
    struct Fixture {
        dir: PathBuf,
        rx: mpsc::UnboundedReceiver<SourceEvent>,
        task: tokio::task::JoinHandle<()>,
        errors: BTreeMap<String, String>,
    }

    /// What one batch (up to a `Synced`) sent.
    #[derive(Debug, Default)]
    struct Batch {
        applied: Vec<(String, String)>,
        deleted: Vec<String>,
        revision: String,
    }

    impl Fixture {
        async fn new(tag: &str, setup: impl FnOnce(&Path)) -> Self {
            let dir =
                std::env::temp_dir().join(format!("palisade-src-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            setup(&dir);
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(FileSource::new(&dir, Duration::from_secs(3600)).run(tx));
            Self {
                dir,
                rx,
                task,
                errors: BTreeMap::new(),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.join(name)
        }

        async fn batch(&mut self) -> Batch {
            let mut b = Batch::default();
            loop {
                let ev = tokio::time::timeout(Duration::from_secs(30), self.rx.recv())
                    .await
                    .expect("an event within 30 s")
                    .expect("source alive");
                match ev {
                    SourceEvent::Apply { obj, origin } => {
                        let labels = match &obj {
                            Object::Namespace(n) => {
                                n.labels.get("team").cloned().unwrap_or_default()
                            }
                            _ => String::new(),
                        };
                        b.applied.push((obj.object_ref().name.clone(), labels));
                        let _ = origin;
                    }
                    SourceEvent::Delete(r) => b.deleted.push(r.name.clone()),
                    SourceEvent::InputErrors(e) => self.errors = e,
                    SourceEvent::Error { origin, message } => panic!("{origin}: {message}"),
                    SourceEvent::Synced { revision, .. } => {
                        b.revision = revision;
                        return b;
                    }
                }
            }
        }

        /// Batches until REVISION reads `rev`, merged.
        async fn until(&mut self, rev: &str) -> Batch {
            std::fs::write(self.path(REVISION_FILE), rev).expect("revision");
            let mut all = Batch::default();
            loop {
                let b = self.batch().await;
                all.applied.extend(b.applied);
                all.deleted.extend(b.deleted);
                if b.revision == rev {
                    all.revision = b.revision;
                    return all;
                }
            }
        }

        fn error_of(&self, name: &str) -> Option<&String> {
            self.errors.get(&self.path(name).display().to_string())
        }

        fn done(self) {
            self.task.abort();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[tokio::test]
    async fn a_new_file_is_seen_without_waiting_for_the_poll() {
        let mut f = Fixture::new("new", |_| {}).await;
        f.batch().await;
        std::fs::write(f.path("ns.yaml"), ns("n1", "a")).expect("write");
        let b = f.until("r1").await;
        assert_eq!(b.applied.len(), 1, "{b:?}");
        f.done();
    }

    /// Edits, deletions and revisions in a large directory are all seen through
    /// the named-file path alone, and only the named files are read again.
    #[tokio::test]
    async fn edits_deletes_and_revisions_are_seen_through_inotify_alone() {
        let mut f = Fixture::new("named", |dir| {
            for i in 0..200 {
                std::fs::write(dir.join(format!("ns-{i}.yaml")), ns(&format!("n{i}"), "a"))
                    .expect("write");
            }
        })
        .await;
        let b = f.batch().await;
        assert_eq!(b.applied.len(), 200, "the first scan reads everything");
        std::fs::write(f.path("ns-7.yaml"), ns("n7", "b")).expect("edit");
        let b = f.until("r1").await;
        let names: Vec<&str> = b.applied.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["n7"], "only the edited file is read again");
        assert!(b.deleted.is_empty());
        std::fs::remove_file(f.path("ns-9.yaml")).expect("delete");
        let b = f.until("r2").await;
        assert!(b.applied.is_empty(), "{b:?}");
        assert_eq!(b.deleted, ["n9"]);
        f.done();
    }

    /// A file that stops parsing, is emptied, holds another kind, is not UTF-8
    /// or is too large keeps its last good objects, and says so until fixed.
    #[tokio::test]
    async fn a_broken_file_keeps_its_last_good_objects_until_fixed() {
        let mut f = Fixture::new("broken", |dir| {
            std::fs::write(dir.join("a.yaml"), ns("n1", "a")).expect("write");
        })
        .await;
        assert_eq!(f.batch().await.applied.len(), 1);
        let big = format!(
            "{}\n#{}",
            ns("n1", "z"),
            "x".repeat(MAX_FILE_BYTES as usize)
        );
        let breakages: [(&str, Vec<u8>, &str); 5] = [
            (
                "unparseable",
                b"kind: Namespace\nmetadata: [oops\n".to_vec(),
                "invalid YAML",
            ),
            ("empty", Vec::new(), "holds no object"),
            (
                "other kind",
                b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n".to_vec(),
                "unsupported kind",
            ),
            ("not UTF-8", vec![0xff, 0xfe, 0x00, 0x41], "not UTF-8"),
            ("too large", big.into_bytes(), "over the limit"),
        ];
        for (i, (what, bytes, says)) in breakages.iter().enumerate() {
            std::fs::write(f.path("a.yaml"), bytes).expect("break");
            let b = f.until(&format!("broken-{i}")).await;
            assert!(
                b.deleted.is_empty() && b.applied.is_empty(),
                "{what}: the last good objects stay: {b:?}"
            );
            let e = f.error_of("a.yaml").cloned().unwrap_or_default();
            assert!(e.contains(says), "{what}: {e}");
            assert!(e.contains("last good 1 object(s) stay"), "{what}: {e}");
            assert!(
                !e.contains(&f.path("a.yaml").display().to_string()),
                "the path is not repeated: {e}"
            );
        }
        std::fs::write(f.path("a.yaml"), ns("n1", "b")).expect("fix");
        let b = f.until("fixed").await;
        assert_eq!(b.applied, [("n1".to_string(), "b".to_string())]);
        assert!(f.errors.is_empty(), "the error cleared: {:?}", f.errors);
        // Broken, then removed: the error goes and so do the objects.
        std::fs::write(f.path("a.yaml"), "metadata: [oops").expect("break");
        f.until("broken-again").await;
        assert!(f.error_of("a.yaml").is_some());
        std::fs::remove_file(f.path("a.yaml")).expect("remove");
        let b = f.until("removed").await;
        assert_eq!(b.deleted, ["n1"]);
        assert!(f.errors.is_empty(), "{:?}", f.errors);
        f.done();
    }

    /// A file is read once its writer closes it, not while it is written.
    #[tokio::test]
    async fn a_file_is_read_when_its_writer_closes_it() {
        use std::io::Write;
        let mut f = Fixture::new("slow", |_| {}).await;
        f.batch().await;
        let text = ns("n1", "a");
        let (head, tail) = text.split_at(text.len() / 2);
        let mut file = std::fs::File::create(f.path("a.yaml")).expect("create");
        file.write_all(head.as_bytes()).expect("head");
        file.flush().expect("flush");
        // Not a timing assertion: nothing may arrive however long this takes.
        let early = tokio::time::timeout(Duration::from_millis(300), f.rx.recv()).await;
        assert!(
            early.is_err(),
            "nothing is read before the close: {early:?}"
        );
        file.write_all(tail.as_bytes()).expect("tail");
        drop(file);
        let b = f.batch().await;
        assert_eq!(b.applied.len(), 1, "{b:?}");
        assert!(f.errors.is_empty(), "{:?}", f.errors);
        f.done();
    }

    /// Symlinked files are read (at start and later) and stay; a ConfigMap
    /// volume's `..data` swap is seen; dot-entries, subdirectories and other
    /// files are skipped.
    #[tokio::test]
    async fn a_configmap_volume_is_read_through_its_symlinks_and_updated_by_its_swap() {
        use std::os::unix::fs::symlink;
        let mut f = Fixture::new("configmap", |dir| {
            let v1 = dir.join("..2026_12_01_v1");
            std::fs::create_dir(&v1).expect("v1");
            std::fs::write(v1.join("ns.yaml"), ns("n1", "a")).expect("write");
            symlink("..2026_12_01_v1", dir.join("..data")).expect("..data");
            symlink("..data/ns.yaml", dir.join("ns.yaml")).expect("link");
            std::fs::create_dir(dir.join("sub")).expect("subdir");
            std::fs::write(dir.join("sub/x.yaml"), ns("hidden", "a")).expect("write");
            std::fs::write(dir.join("notes.txt"), "hello").expect("write");
            std::fs::write(dir.join("UPPER.YAML"), ns("n2", "a")).expect("write");
        })
        .await;
        let b = f.batch().await;
        let mut names: Vec<&str> = b.applied.iter().map(|(n, _)| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["n1", "n2"], "read at start through the symlink");
        // The update: a new data directory, `..data` swapped by rename.
        let v2 = f.path("..2026_12_01_v2");
        std::fs::create_dir(&v2).expect("v2");
        std::fs::write(v2.join("ns.yaml"), ns("n1", "b")).expect("write");
        symlink("..2026_12_01_v2", f.path("..data_tmp")).expect("tmp");
        std::fs::rename(f.path("..data_tmp"), f.path("..data")).expect("swap");
        std::fs::remove_dir_all(f.path("..2026_12_01_v1")).expect("old");
        let b = f.until("r1").await;
        assert_eq!(b.applied, [("n1".to_string(), "b".to_string())]);
        assert!(b.deleted.is_empty(), "{b:?}");
        assert!(f.errors.is_empty(), "{:?}", f.errors);
        f.done();
    }

    /// The same object in two files: the first by path is applied and the
    /// conflict reported; when that file goes, the other copy applies.
    #[tokio::test]
    async fn an_object_in_two_files_is_taken_from_the_first_and_the_other_applies_after() {
        let mut f = Fixture::new("dup", |dir| {
            std::fs::write(dir.join("a.yaml"), ns("n1", "a")).expect("write");
            std::fs::write(dir.join("b.yaml"), ns("n1", "b")).expect("write");
        })
        .await;
        let b = f.batch().await;
        assert_eq!(b.applied, [("n1".to_string(), "a".to_string())]);
        let e = f.error_of("b.yaml").cloned().unwrap_or_default();
        assert!(
            e.contains("namespace n1") && e.contains(&f.path("a.yaml").display().to_string()),
            "{e}"
        );
        std::fs::remove_file(f.path("a.yaml")).expect("remove");
        let b = f.until("r1").await;
        assert_eq!(b.applied, [("n1".to_string(), "b".to_string())]);
        assert!(b.deleted.is_empty(), "{b:?}");
        assert!(f.errors.is_empty(), "{:?}", f.errors);
        f.done();
    }

    /// A removed and recreated directory is watched again: a change in it is
    /// seen without the poll.
    #[tokio::test]
    async fn a_recreated_directory_is_watched_again() {
        let mut f = Fixture::new("recreate", |dir| {
            std::fs::write(dir.join("a.yaml"), ns("n1", "a")).expect("write");
        })
        .await;
        f.batch().await;
        std::fs::remove_dir_all(&f.dir).expect("remove dir");
        let b = f.batch().await;
        assert!(
            b.deleted.is_empty(),
            "a missing directory deletes nothing: {b:?}"
        );
        std::fs::create_dir_all(&f.dir).expect("recreate");
        std::fs::write(f.path("a.yaml"), ns("n1", "b")).expect("write");
        let b = f.until("r1").await;
        assert_eq!(b.applied, [("n1".to_string(), "b".to_string())]);
        std::fs::write(f.path("c.yaml"), ns("n3", "a")).expect("write");
        let b = f.until("r2").await;
        assert_eq!(b.applied.len(), 1, "seen through the new watch: {b:?}");
        f.done();
    }
}
