//! The file source's directory watch (inotify): which names changed, and how.
//!
//! A file counts as written once its writer has closed it (`IN_CLOSE_WRITE`) or
//! it was renamed into place (`IN_MOVED_TO`); partial writes (`IN_MODIFY`) are not
//! watched, so a slow writer's half-written file is never read from here.
use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::Duration,
};

/// The events a name can carry that the file source acts on.
pub const WATCHED: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_ATTRIB;

/// An inotify watch on one directory.
pub struct DirWatch {
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
}

impl DirWatch {
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: plain syscalls; the fd is owned right after creation.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a valid inotify fd and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), WATCHED) };
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
    pub async fn changed(&mut self) -> std::io::Result<Drained> {
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
    pub fn drain_names(&mut self) -> std::io::Result<Drained> {
        drain(self.fd.get_ref())
    }
}

/// What an inotify queue held.
#[derive(Debug, PartialEq)]
pub enum Drained {
    /// The names that changed, each with the union of its event masks.
    Names(BTreeMap<OsString, u32>),
    /// Events were lost (queue overflow): only a full scan knows what happened.
    Overflow,
    /// The watched directory itself was removed or moved: the watch is dead
    /// and must be made again once the directory is back.
    Gone,
}

impl Drained {
    pub fn merge(&mut self, other: Drained) {
        match (&mut *self, other) {
            (Drained::Gone, _) | (_, Drained::Gone) => *self = Drained::Gone,
            (Drained::Names(a), Drained::Names(b)) => {
                for (k, m) in b {
                    *a.entry(k).or_default() |= m;
                }
            }
            (_, Drained::Overflow) => *self = Drained::Overflow,
            (Drained::Overflow, _) => {}
        }
    }
}

/// Read every queued inotify event.
fn drain(fd: &OwnedFd) -> std::io::Result<Drained> {
    // Room for many events per read (each is 16 bytes plus its padded name).
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Drained::Names(BTreeMap::new());
    loop {
        // SAFETY: reading into a buffer we own, of the length we pass.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
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
pub fn parse_events(mut buf: &[u8]) -> Drained {
    const HEADER: usize = 16;
    let mut names: BTreeMap<OsString, u32> = BTreeMap::new();
    let mut gone = false;
    while !buf.is_empty() {
        let (Some(mask), Some(len)) = (u32_at(buf, 4), u32_at(buf, 12)) else {
            return Drained::Overflow;
        };
        let end = HEADER + len as usize;
        let Some(raw) = buf.get(HEADER..end) else {
            return Drained::Overflow;
        };
        if mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
            gone = true;
        } else if mask & libc::IN_Q_OVERFLOW != 0 {
            return if gone {
                Drained::Gone
            } else {
                Drained::Overflow
            };
        }
        let name = raw.split(|b| *b == 0).next().unwrap_or_default();
        if !name.is_empty() {
            use std::os::unix::ffi::OsStrExt;
            *names
                .entry(OsStr::from_bytes(name).to_os_string())
                .or_default() |= mask;
        }
        buf = &buf[end..];
    }
    if gone {
        Drained::Gone
    } else {
        Drained::Names(names)
    }
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_ne_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The raw records the kernel writes for `events`.
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
    fn records_give_names_with_masks_or_ask_for_a_full_scan() {
        let buf = records(&[
            (libc::IN_CREATE, "pod-a.yaml"),
            (libc::IN_MOVED_TO, "REVISION"),
            (libc::IN_CLOSE_WRITE, "pod-a.yaml"),
        ]);
        let Drained::Names(names) = parse_events(&buf) else {
            panic!("names expected");
        };
        let names: Vec<(&str, u32)> = names
            .iter()
            .filter_map(|(n, m)| Some((n.to_str()?, *m)))
            .collect();
        assert_eq!(
            names,
            [
                ("REVISION", libc::IN_MOVED_TO),
                ("pod-a.yaml", libc::IN_CREATE | libc::IN_CLOSE_WRITE)
            ]
        );
        assert_eq!(
            parse_events(&records(&[
                (libc::IN_CLOSE_WRITE, "a.yaml"),
                (libc::IN_Q_OVERFLOW, "")
            ])),
            Drained::Overflow
        );
        assert_eq!(
            parse_events(&records(&[
                (libc::IN_DELETE_SELF, ""),
                (libc::IN_IGNORED, "")
            ])),
            Drained::Gone,
            "the directory itself went away"
        );
        let cut = records(&[(libc::IN_CLOSE_WRITE, "a-long-name.yaml")]);
        assert_eq!(parse_events(&cut[..20]), Drained::Overflow, "a torn record");
    }
}
