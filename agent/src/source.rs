//! Policy sources: where cluster state comes from.
//!
//! A source sends `SourceEvent`s into the sync loop: objects applied and deleted,
//! and `Synced` whenever what it has sent so far is a consistent view (the file
//! source after each scan; the kube source once every watcher has listed). Nothing
//! is programmed before the first `Synced`.
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
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
        /// Per resource (kube source: `pods`, `namespaces`, ...), the highest
        /// resourceVersion delivered. Each resource is its own watch stream, so
        /// only this tells that a given write has arrived. Empty for files.
        revisions: BTreeMap<String, String>,
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
            if !has_object_extension(&p) {
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
        // REVISION is read before the directory: writers write their objects and
        // then REVISION, so everything that revision covers is on disk by the time
        // it is listed. Read after the listing, a revision could name objects the
        // listing missed, and the agent would report state it has not programmed.
        // Its stamp is taken before its content: a REVISION rewritten in between
        // changes the stamp, so the next scan reports it.
        let rev_stamp = self.revision_stamp();
        let revision = std::fs::read_to_string(self.dir.join(REVISION_FILE))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
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
        if !self.first && now == self.seen && rev_stamp == self.revision_stamp {
            return false;
        }
        let mut deleted: Vec<ObjectRef> = Vec::new();
        for (path, stamp) in &now {
            if self.seen.get(path) != Some(stamp) {
                self.read_file(path, tx, &mut deleted);
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
        self.send_deletes(deleted, tx);
        self.seen = now;
        self.revision_stamp = rev_stamp;
        self.first = false;
        tx.send(SourceEvent::Synced {
            revision,
            revisions: BTreeMap::new(),
        })
        .is_ok()
    }

    /// Reads and parses one file, sends its objects, records them, and adds what it
    /// no longer defines to `deleted`.
    fn read_file(
        &mut self,
        path: &Path,
        tx: &mpsc::UnboundedSender<SourceEvent>,
        deleted: &mut Vec<ObjectRef>,
    ) {
        let origin = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let _ = tx.send(SourceEvent::Error {
                    origin,
                    message: format!("reading file: {e}"),
                });
                return;
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
        if let Some(old) = self.objects.insert(path.to_path_buf(), refs.clone()) {
            deleted.extend(old.into_iter().filter(|r| !refs.contains(r)));
        }
    }

    /// Sends a delete for every object in `deleted` that no file defines any more
    /// (an object that moved to another file is still alive).
    fn send_deletes(&self, deleted: Vec<ObjectRef>, tx: &mpsc::UnboundedSender<SourceEvent>) {
        for r in deleted {
            if !self.objects.values().any(|refs| refs.contains(&r)) {
                let _ = tx.send(SourceEvent::Delete(r));
            }
        }
    }

    /// A scan of only the files inotify named: what a change costs no longer grows
    /// with the size of the directory. Same ordering rule as [`Self::scan`]:
    /// REVISION is read first, and the names queued up to that read are added,
    /// so every object a revision covers is read before it is reported.
    fn scan_named(
        &mut self,
        mut names: BTreeSet<OsString>,
        watch: &mut DirWatch,
        tx: &mpsc::UnboundedSender<SourceEvent>,
    ) -> std::io::Result<bool> {
        let rev_stamp = self.revision_stamp();
        let revision = std::fs::read_to_string(self.dir.join(REVISION_FILE))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        match watch.drain_names()? {
            Drained::Names(more) => names.extend(more),
            Drained::Overflow => return Ok(self.scan(tx)),
        }
        let mut changed = false;
        let mut deleted = Vec::new();
        for name in names {
            let path = self.dir.join(&name);
            if !has_object_extension(&path) {
                continue;
            }
            let stamp = std::fs::metadata(&path)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            match stamp {
                Some(st) if self.seen.get(&path) == Some(&st) => {}
                Some(st) => {
                    changed = true;
                    self.read_file(&path, tx, &mut deleted);
                    self.seen.insert(path, st);
                }
                None => {
                    if self.seen.remove(&path).is_some() {
                        changed = true;
                        deleted.extend(self.objects.remove(&path).unwrap_or_default());
                    }
                }
            }
        }
        if !changed && rev_stamp == self.revision_stamp {
            return Ok(false);
        }
        self.send_deletes(deleted, tx);
        self.revision_stamp = rev_stamp;
        Ok(tx
            .send(SourceEvent::Synced {
                revision,
                revisions: BTreeMap::new(),
            })
            .is_ok())
    }

    /// Scan forever: the files inotify names, at once, and the whole directory
    /// every poll interval regardless (the safety net for filesystems without
    /// inotify, or a full inotify queue, which also triggers a full scan). Without
    /// inotify (watch limit reached), polling alone bounds the latency.
    pub async fn run(mut self, tx: mpsc::UnboundedSender<SourceEvent>) {
        let mut watch = match DirWatch::new(&self.dir) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "no inotify watch; polling only");
                None
            }
        };
        self.scan(&tx);
        loop {
            if tx.is_closed() {
                return;
            }
            let Some(w) = watch.as_mut() else {
                tokio::time::sleep(self.poll).await;
                self.scan(&tx);
                continue;
            };
            let woke = tokio::select! {
                r = w.changed() => Some(r),
                _ = tokio::time::sleep(self.poll) => None,
            };
            match woke {
                None | Some(Ok(Drained::Overflow)) => {
                    self.scan(&tx);
                }
                Some(Ok(Drained::Names(names))) => {
                    if let Err(e) = self.scan_named(names, w, &tx) {
                        tracing::warn!(error = %e, "inotify failed; polling only");
                        watch = None;
                        self.scan(&tx);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "inotify failed; polling only");
                    watch = None;
                    self.scan(&tx);
                }
            }
        }
    }
}

fn has_object_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|x| x.to_str())
        .is_some_and(|x| matches!(x, "yaml" | "yml" | "json"))
}

/// An inotify watch on one directory: wakes the file source when a file in it is
/// written, created, moved or deleted.
struct DirWatch {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl DirWatch {
    fn new(dir: &Path) -> std::io::Result<Self> {
        use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
        // SAFETY: plain syscalls; the fd is owned right after creation.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mask = libc::IN_CLOSE_WRITE
            | libc::IN_MODIFY
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_ATTRIB;
        let wd = unsafe {
            libc::inotify_add_watch(std::os::fd::AsRawFd::as_raw_fd(&fd), path.as_ptr(), mask)
        };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: an OwnedFd always returns the fd it owns, open until dropped
        // together with the AsyncFd.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }?;
        Ok(Self { fd })
    }

    /// Wait for at least one change, then collect the names queued. A writer
    /// usually touches several files in a row (objects, then REVISION): a short
    /// settle time lets one scan see the whole batch.
    async fn changed(&mut self) -> std::io::Result<Drained> {
        let mut got = loop {
            let mut guard = self.fd.readable().await?;
            let d = drain(guard.get_inner())?;
            guard.clear_ready();
            match &d {
                Drained::Names(n) if n.is_empty() => continue,
                _ => break d,
            }
        };
        tokio::time::sleep(Duration::from_millis(2)).await;
        got.merge(self.drain_names()?);
        Ok(got)
    }

    /// The names queued now, without waiting.
    fn drain_names(&mut self) -> std::io::Result<Drained> {
        drain(self.fd.get_ref())
    }
}

/// What an inotify queue held.
#[derive(Debug, PartialEq)]
enum Drained {
    /// The names of the files that changed (possibly none).
    Names(BTreeSet<OsString>),
    /// Events were lost (queue overflow) or the watch itself changed: only a full
    /// scan knows what happened.
    Overflow,
}

impl Drained {
    fn merge(&mut self, other: Drained) {
        match (&mut *self, other) {
            (Drained::Names(a), Drained::Names(b)) => a.extend(b),
            (_, Drained::Overflow) => *self = Drained::Overflow,
            (Drained::Overflow, _) => {}
        }
    }
}

/// Read every queued inotify event.
fn drain(fd: &std::os::fd::OwnedFd) -> std::io::Result<Drained> {
    // Room for many events per read (each is 16 bytes plus its padded name).
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Drained::Names(BTreeSet::new());
    loop {
        // SAFETY: reading into a buffer we own, of the length we pass.
        let n = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(fd),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n > 0 {
            out.merge(parse_events(&buf[..n as usize]));
            continue;
        }
        if n == 0 {
            return Ok(out);
        }
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::WouldBlock => Ok(out),
            std::io::ErrorKind::Interrupted => continue,
            _ => Err(e),
        };
    }
}

/// `struct inotify_event` records: wd (i32), mask, cookie, len (u32 each), then
/// `len` bytes of NUL-padded name. A record that does not fit is treated like an
/// overflow: a full scan is always correct.
fn parse_events(mut buf: &[u8]) -> Drained {
    const HEADER: usize = 16;
    let mut names = BTreeSet::new();
    while !buf.is_empty() {
        let (Some(mask), Some(len)) = (u32_at(buf, 4), u32_at(buf, 12)) else {
            return Drained::Overflow;
        };
        let end = HEADER + len as usize;
        let Some(raw) = buf.get(HEADER..end) else {
            return Drained::Overflow;
        };
        if mask
            & (libc::IN_Q_OVERFLOW | libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF)
            != 0
        {
            return Drained::Overflow;
        }
        let name = raw.split(|b| *b == 0).next().unwrap_or_default();
        if !name.is_empty() {
            use std::os::unix::ffi::OsStrExt;
            names.insert(std::ffi::OsStr::from_bytes(name).to_os_string());
        }
        buf = &buf[end..];
    }
    Drained::Names(names)
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_ne_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: inotify-test\n";

    /// With a poll interval no test waits out, a new file can only be seen
    /// through inotify.
    #[tokio::test]
    async fn a_new_file_is_seen_without_waiting_for_the_poll() {
        let dir = std::env::temp_dir().join(format!("palisade-src-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(FileSource::new(&dir, Duration::from_secs(3600)).run(tx));
        let first = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await;
        assert!(
            matches!(first, Ok(Some(SourceEvent::Synced { .. }))),
            "{first:?}"
        );
        // Give the source a moment to block on the watch (not a timing assertion:
        // an earlier write would be picked up by the first scan anyway).
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(dir.join("ns.yaml"), NS).expect("write");
        let mut applied = false;
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            match ev {
                SourceEvent::Apply { .. } => applied = true,
                SourceEvent::Synced { .. } if applied => break,
                _ => {}
            }
        }
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(applied, "the new file was never read");
    }

    /// Parses the raw records the kernel writes for `names`.
    fn records(events: &[(u32, &str)]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (mask, name) in events {
            let mut padded = name.as_bytes().to_vec();
            if !padded.is_empty() {
                padded.resize(name.len().div_ceil(16) * 16 + 16, 0);
            }
            buf.extend_from_slice(&1i32.to_ne_bytes());
            buf.extend_from_slice(&mask.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&(padded.len() as u32).to_ne_bytes());
            buf.extend_from_slice(&padded);
        }
        buf
    }

    #[test]
    fn inotify_records_give_names_or_ask_for_a_full_scan() {
        let buf = records(&[
            (libc::IN_CLOSE_WRITE, "pod-a.yaml"),
            (libc::IN_MOVED_TO, "REVISION"),
            (libc::IN_CLOSE_WRITE, "pod-a.yaml"),
        ]);
        let Drained::Names(names) = parse_events(&buf) else {
            panic!("names expected");
        };
        let names: Vec<&str> = names.iter().filter_map(|n| n.to_str()).collect();
        assert_eq!(names, ["REVISION", "pod-a.yaml"]);
        assert_eq!(
            parse_events(&records(&[
                (libc::IN_CLOSE_WRITE, "a.yaml"),
                (libc::IN_Q_OVERFLOW, "")
            ])),
            Drained::Overflow
        );
        assert_eq!(
            parse_events(&records(&[(libc::IN_IGNORED, "")])),
            Drained::Overflow,
            "the directory itself went away"
        );
        let cut = records(&[(libc::IN_CLOSE_WRITE, "a-long-name.yaml")]);
        assert_eq!(parse_events(&cut[..20]), Drained::Overflow, "a torn record");
    }

    /// Edits, deletions and revisions in a large directory are all seen through
    /// the named-file path alone (the poll interval is never reached), and a
    /// revision is reported only after the objects written before it.
    #[tokio::test]
    async fn edits_deletes_and_revisions_are_seen_through_inotify_alone() {
        let dir = std::env::temp_dir().join(format!("palisade-src-named-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ns = |name: &str, team: &str| {
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {{team: {team}}}\n")
        };
        for i in 0..200 {
            std::fs::write(dir.join(format!("ns-{i}.yaml")), ns(&format!("n{i}"), "a"))
                .expect("write");
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(FileSource::new(&dir, Duration::from_secs(3600)).run(tx));
        // Events up to the next Synced: (applied names, deleted names, revision).
        async fn batch(
            rx: &mut mpsc::UnboundedReceiver<SourceEvent>,
        ) -> (Vec<String>, Vec<String>, String) {
            let (mut applied, mut deleted) = (Vec::new(), Vec::new());
            loop {
                let ev = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                    .await
                    .expect("an event within 30 s")
                    .expect("source alive");
                match ev {
                    SourceEvent::Apply { obj, .. } => applied.push(obj.object_ref().name.clone()),
                    SourceEvent::Delete(r) => deleted.push(r.name.clone()),
                    SourceEvent::Synced { revision, .. } => return (applied, deleted, revision),
                    SourceEvent::Error { origin, message } => panic!("{origin}: {message}"),
                }
            }
        }
        let (applied, _, _) = batch(&mut rx).await;
        assert_eq!(applied.len(), 200, "the first scan reads everything");
        tokio::time::sleep(Duration::from_millis(50)).await;

        std::fs::write(dir.join("ns-7.yaml"), ns("n7", "b")).expect("edit");
        std::fs::write(dir.join(REVISION_FILE), "r1").expect("revision");
        let (mut applied, mut deleted, mut rev) = batch(&mut rx).await;
        while rev != "r1" {
            // The edit and the revision may arrive in two batches.
            let (a, d, r) = batch(&mut rx).await;
            applied.extend(a);
            deleted.extend(d);
            rev = r;
        }
        assert_eq!(applied, ["n7"], "only the edited file is read again");
        assert!(deleted.is_empty());

        std::fs::remove_file(dir.join("ns-9.yaml")).expect("delete");
        std::fs::write(dir.join(REVISION_FILE), "r2").expect("revision");
        let (mut applied, mut deleted, mut rev) = batch(&mut rx).await;
        while rev != "r2" {
            let (a, d, r) = batch(&mut rx).await;
            applied.extend(a);
            deleted.extend(d);
            rev = r;
        }
        assert!(applied.is_empty(), "{applied:?}");
        assert_eq!(deleted, ["n9"]);
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
