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
        tx.send(SourceEvent::Synced { revision }).is_ok()
    }

    /// Scan forever: at once when inotify reports a change in the directory, and
    /// every poll interval regardless (the safety net for filesystems without
    /// inotify, or a full inotify queue). Without inotify (watch limit reached),
    /// polling alone bounds the latency.
    pub async fn run(mut self, tx: mpsc::UnboundedSender<SourceEvent>) {
        let mut watch = match DirWatch::new(&self.dir) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "no inotify watch; polling only");
                None
            }
        };
        loop {
            self.scan(&tx);
            if tx.is_closed() {
                return;
            }
            match watch.as_mut() {
                Some(w) => {
                    tokio::select! {
                        r = w.changed() => {
                            if let Err(e) = r {
                                tracing::warn!(error = %e, "inotify failed; polling only");
                                watch = None;
                            }
                        }
                        _ = tokio::time::sleep(self.poll) => {}
                    }
                }
                None => tokio::time::sleep(self.poll).await,
            }
        }
    }
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

    /// Wait for at least one change, then drain the queue. A writer usually
    /// touches several files in a row (objects, then REVISION): a short settle
    /// time lets one scan see the whole batch.
    async fn changed(&mut self) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            if drain(guard.get_inner())? {
                guard.clear_ready();
                break;
            }
            guard.clear_ready();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        let _ = drain(self.fd.get_ref());
        Ok(())
    }
}

/// Read every queued inotify event; true when there was at least one.
fn drain(fd: &std::os::fd::OwnedFd) -> std::io::Result<bool> {
    let mut buf = [0u8; 4096];
    let mut any = false;
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
            any = true;
            continue;
        }
        if n == 0 {
            return Ok(any);
        }
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::WouldBlock => Ok(any),
            std::io::ErrorKind::Interrupted => continue,
            _ => Err(e),
        };
    }
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
}
