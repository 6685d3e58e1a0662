//! `--uninstall`: detach everything an agent attached under a pin directory
//! and remove the pins.
use std::{fs, io, path::Path};

use super::{
    interface_name, link_pin_parts, netlink_priority, remove_netlink_filter, DatapathError, Hook,
};
use crate::pins::PinLock;

/// What [`uninstall`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Uninstalled {
    /// Whether anything of Palisade's was pinned there at all.
    pub found: bool,
    /// TCX links unpinned (each detaches with its last reference).
    pub links: usize,
    /// Netlink TC filters deleted.
    pub filters: usize,
    /// Filters that could not be deleted: their records are kept.
    pub failed: Vec<String>,
}

/// Detach every program an agent attached under `pin_dir` and remove the pin
/// dir (maps go with their last reference). For after the agent is gone: its
/// pins are what keeps the last state enforced across restarts, so without this
/// a removed agent's programs go on enforcing a state nothing updates. An
/// interface that no longer exists took its attachments with it. Refused while
/// an agent holds the pin directory (it would attach everything again).
pub fn uninstall(pin_dir: &Path) -> Result<Uninstalled, DatapathError> {
    let io_err = |path: &Path, source: io::Error| DatapathError::PinDir {
        path: path.to_path_buf(),
        source,
    };
    let mut done = Uninstalled::default();
    if !pin_dir.is_dir() {
        return Ok(done);
    }
    let _lock = PinLock::take(pin_dir).map_err(DatapathError::Lock)?;
    done.found = pin_dir.join("maps").is_dir() || pin_dir.join("links").is_dir();
    let links = pin_dir.join("links");
    let entries = match fs::read_dir(&links) {
        Ok(e) => e.flatten().collect::<Vec<_>>(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err(&links, e)),
    };
    for e in entries {
        let path = e.path();
        if path.is_dir() {
            // Netlink mode: `<ifindex>-<program>/prio-N` records the filter.
            let name = e.file_name().to_string_lossy().into_owned();
            let parts = link_pin_parts(&name);
            let hook = parts.and_then(|(_, prog)| Hook::from_program(prog));
            let iface = parts.and_then(|(ifindex, _)| interface_name(ifindex));
            if let (Some(hook), Some(iface), Some(prio)) = (hook, iface, netlink_priority(&path)) {
                match remove_netlink_filter(&iface, hook, prio) {
                    Ok(true) => done.filters += 1,
                    Ok(false) => {}
                    Err(e) => {
                        done.failed.push(format!("{iface}: {e}"));
                        continue;
                    }
                }
            }
            fs::remove_dir_all(&path).map_err(|e| io_err(&path, e))?;
        } else {
            fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
            done.links += 1;
        }
    }
    if !done.failed.is_empty() {
        return Ok(done);
    }
    match fs::remove_dir_all(pin_dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(pin_dir, e)),
        _ => Ok(done),
    }
}
