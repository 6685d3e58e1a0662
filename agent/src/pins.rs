//! The pin directory: one agent at a time (an exclusive lock on it), and the
//! diagnosis when it is not on a bpffs that the node's programs are pinned in.
use std::{
    fs, io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

/// An exclusive `flock` on the pin directory, held for the agent's life. bpffs
/// holds only BPF objects and directories, so the lock is on the directory
/// itself and its holder is found through `/proc/locks`.
pub struct PinLock {
    _fd: OwnedFd,
    dev: u64,
    ino: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("opening pin directory {path} to lock it: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("another agent holds the pin directory {path} ({holder}); two agents on one pin directory would undo each other's state: stop it first")]
    Held { path: PathBuf, holder: String },
    #[error("locking pin directory {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
}

/// How often and how long apart a held lock is tried again.
const LOCK_TRIES: u32 = 20;
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

impl PinLock {
    pub fn take(dir: &Path) -> Result<Self, LockError> {
        let f = fs::File::open(dir).map_err(|source| LockError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        let meta = f.metadata().map_err(|source| LockError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        let fd = OwnedFd::from(f);
        // A holder that is going away (an agent being replaced, or a child
        // process between fork and exec that still has a copy of its fd)
        // lets go within moments: wait up to a second before refusing.
        let mut tries = 0;
        // SAFETY: flock on an fd we own.
        while unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) && tries < LOCK_TRIES {
                tries += 1;
                std::thread::sleep(LOCK_RETRY);
                continue;
            }
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(LockError::Held {
                    path: dir.to_path_buf(),
                    holder: holder(meta.dev(), meta.ino())
                        .map(|pid| format!("pid {pid}"))
                        .unwrap_or_else(|| "holder unknown".to_string()),
                });
            }
            return Err(LockError::Lock {
                path: dir.to_path_buf(),
                source: e,
            });
        }
        Ok(Self {
            _fd: fd,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether `dir` is still the directory this lock is on (it may have been
    /// removed and made again).
    pub fn covers(&self, dir: &Path) -> bool {
        fs::metadata(dir).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }
}

/// The pid holding a `flock` on (dev, ino), from `/proc/locks` lines such as
/// `1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF`.
fn holder(dev: u64, ino: u64) -> Option<u32> {
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t)
    );
    let locks = fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        (w.get(1) == Some(&"FLOCK") && w.get(5) == Some(&want.as_str()))
            .then(|| w.get(4)?.parse().ok())
            .flatten()
    })
}

/// Why `pin_dir` is not on a bpffs mount, and what to do: the usual cause is
/// `ip netns exec`, which mounts a fresh sysfs over /sys where the node's bpffs
/// (and every pin an earlier agent made there) is not visible. Mounting a new
/// bpffs there would start an agent with fresh maps beside the old pinned
/// programs, which keep deciding.
pub fn not_bpffs_advice(pin_dir: &Path, mounted: &[&str]) -> String {
    let netns = named_netns();
    let base = format!(
        "{} is not on a bpffs mount (bpffs mounted at: {mounted:?})",
        pin_dir.display()
    );
    match netns {
        Some(name) => format!(
            "{base}. This process is in network namespace {name:?}, most likely entered with `ip netns exec`, which mounts a fresh /sys where the node's bpffs and the pins of any earlier agent are not visible. Run the agent with `nsenter --net=/run/netns/{name} -- palisade-agent ...` instead, which keeps the node's mounts; do not mount a new bpffs here (programs pinned in the node's bpffs would go on deciding beside the new agent's)."
        ),
        None => format!(
            "{base}. Mount the node's bpffs there (`mount -t bpf bpf /sys/fs/bpf`; systemd does this at boot), or point --pin-dir at a directory on it. In a container, mount the host's /sys/fs/bpf into it."
        ),
    }
}

/// The name under /run/netns of this process's network namespace, if it has one
/// and is not the namespace of PID 1.
fn named_netns() -> Option<String> {
    let ours = fs::metadata("/proc/self/ns/net").ok()?;
    if fs::metadata("/proc/1/ns/net").is_ok_and(|m| m.ino() == ours.ino() && m.dev() == ours.dev())
    {
        return None;
    }
    fs::read_dir("/run/netns").ok()?.flatten().find_map(|e| {
        let m = fs::metadata(e.path()).ok()?;
        (m.ino() == ours.ino()).then(|| e.file_name().to_string_lossy().into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_naming_the_holder() {
        let dir = std::env::temp_dir().join(format!("palisade-lock-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let first = PinLock::take(&dir).expect("first lock");
        let second = PinLock::take(&dir);
        let pid = std::process::id().to_string();
        match second {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, format!("pid {pid}")),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        assert!(first.covers(&dir));
        drop(first);
        let again = PinLock::take(&dir).expect("free again once the holder is gone");
        drop(again);
        let _ = fs::remove_dir_all(&dir);
        assert!(
            PinLock::take(&dir).is_err(),
            "a missing directory cannot be locked"
        );
    }
}
