//! Repair: what the kernel and bpffs hold, checked against what this agent
//! attached and pinned, at every full pass. A pin removed under the agent (a
//! stray `rm`) is made again from the handle the agent holds; a program taken
//! off an interface (a `tc filter del`, a detached link) is attached again; the
//! programs of another agent on the same hook are an error that keeps the
//! agent unready, since they go on deciding whatever this agent programs.
use std::{fs, process::Command};

use aya::programs::{links::FdLink, SchedClassifier};

use crate::{
    datapath::{Datapath, DatapathError, Held, Hook},
    pins::PinLock,
};

impl Datapath {
    /// The pin directory, its lock and every map pin; what was made again.
    pub fn repair_pins(&mut self) -> (Vec<String>, Vec<String>) {
        let mut repaired = Vec::new();
        let mut errors = Vec::new();
        for d in [
            self.pin_dir.clone(),
            self.pin_dir.join("maps"),
            self.pin_dir.join("links"),
        ] {
            if d.is_dir() {
                continue;
            }
            match fs::create_dir_all(&d) {
                Ok(()) => repaired.push(format!("pin directory {} made again", d.display())),
                Err(e) => errors.push(format!("making pin directory {}: {e}", d.display())),
            }
        }
        if !self.lock.covers(&self.pin_dir) {
            match PinLock::take(&self.pin_dir) {
                Ok(l) => self.lock = l,
                Err(e) => errors.push(e.to_string()),
            }
        }
        let maps = self.pin_dir.join("maps");
        for (name, map) in &self.pinned_maps {
            let pin = maps.join(name);
            if fs::symlink_metadata(&pin).is_ok() {
                continue;
            }
            match map.pin(&pin) {
                Ok(()) => repaired.push(format!("map {name} pinned again")),
                Err(e) => errors.push(format!("pinning map {}: {e}", pin.display())),
            }
        }
        (repaired, errors)
    }

    /// Checks that `hook`'s program of this agent is attached to `iface` and
    /// pinned, and repairs what is not; what was repaired.
    pub fn check(
        &mut self,
        iface: &str,
        ifindex: u32,
        hook: Hook,
    ) -> Result<Option<String>, DatapathError> {
        let name = hook.program();
        let ours = self
            .program(name)?
            .info()
            .map_err(|source| DatapathError::Program {
                name,
                source: Box::new(source),
            })?
            .id();
        let pin = self.link_pin(ifindex, hook);
        let attached = attached_ids(iface, hook, self.is_tcx(ifindex, hook))?;
        let foreign: Vec<u32> = attached
            .iter()
            .filter(|(id, n, _)| *id != ours && n == name)
            .map(|(id, _, _)| *id)
            .collect();
        if !foreign.is_empty() {
            return Err(DatapathError::Foreign {
                name,
                iface: iface.to_string(),
                ids: foreign,
            });
        }
        let repaired = match self.attached.remove(&(ifindex, hook)) {
            None => return Ok(None),
            Some(Held::Tcx(link)) => {
                if !attached.iter().any(|(id, _, _)| *id == ours) {
                    drop(link);
                    let _ = fs::remove_file(&pin);
                    self.attach(iface, ifindex, hook)?;
                    "attached again (it had been detached)"
                } else if fs::symlink_metadata(&pin).is_err() {
                    let pinned =
                        FdLink::from(link)
                            .pin(&pin)
                            .map_err(|e| DatapathError::PinLink {
                                path: pin.clone(),
                                reason: e.to_string(),
                            })?;
                    self.attached.insert((ifindex, hook), Held::Tcx(pinned));
                    "link pinned again"
                } else {
                    self.attached.insert((ifindex, hook), Held::Tcx(link));
                    return Ok(None);
                }
            }
            Some(Held::Netlink { priority }) => {
                let present = attached
                    .iter()
                    .any(|(id, _, pref)| *id == ours && *pref == Some(priority));
                let mark = pin.join(format!("prio-{priority}"));
                if !present {
                    self.attach(iface, ifindex, hook)?;
                    "filter attached again (it had been deleted)"
                } else if !mark.is_dir() {
                    self.attached
                        .insert((ifindex, hook), Held::Netlink { priority });
                    fs::create_dir_all(&mark).map_err(|e| DatapathError::PinLink {
                        path: mark.clone(),
                        reason: e.to_string(),
                    })?;
                    "filter priority recorded again"
                } else {
                    self.attached
                        .insert((ifindex, hook), Held::Netlink { priority });
                    return Ok(None);
                }
            }
        };
        Ok(Some(format!("{iface}: {name} {repaired}")))
    }

    fn is_tcx(&self, ifindex: u32, hook: Hook) -> bool {
        match self.attached.get(&(ifindex, hook)) {
            Some(Held::Tcx(_)) => true,
            Some(Held::Netlink { .. }) => false,
            None => self.mode == crate::datapath::AttachMode::Tcx,
        }
    }
}

/// (program id, program name, netlink priority) of what is attached to
/// `hook`'s direction of `iface`: TCX programs through the kernel's query,
/// netlink filters through `tc`.
fn attached_ids(
    iface: &str,
    hook: Hook,
    tcx: bool,
) -> Result<Vec<(u32, String, Option<u16>)>, DatapathError> {
    let err = |reason: String| DatapathError::Detach {
        name: hook.program(),
        iface: iface.to_string(),
        reason,
    };
    let mut out = Vec::new();
    if tcx {
        let (_, progs) = SchedClassifier::query_tcx(iface, hook.attach_type())
            .map_err(|e| err(format!("querying TCX programs: {e}")))?;
        for p in progs {
            out.push((p.id(), p.name_as_str().unwrap_or("").to_string(), None));
        }
    }
    let shown = Command::new("tc")
        .args(["filter", "show", "dev", iface, hook.direction()])
        .output()
        .map_err(|e| err(format!("tc: {e}")))?;
    if !shown.status.success() && !tcx {
        return Err(err(format!(
            "tc filter show: {}",
            String::from_utf8_lossy(&shown.stderr).trim()
        )));
    }
    for line in String::from_utf8_lossy(&shown.stdout).lines() {
        if let Some(f) = parse_filter_line(line) {
            out.push(f);
        }
    }
    Ok(out)
}

/// `filter protocol all pref 1 bpf chain 0 handle 0x1 to_pod direct-action
/// not_in_hw id 42 tag ... jited` -> (42, "to_pod", Some(1)).
fn parse_filter_line(line: &str) -> Option<(u32, String, Option<u16>)> {
    let w: Vec<&str> = line.split_whitespace().collect();
    if !w.contains(&"bpf") {
        return None;
    }
    let after = |key: &str| w.iter().position(|x| *x == key).and_then(|i| w.get(i + 1));
    let id = after("id")?.parse().ok()?;
    let pref = after("pref").and_then(|p| p.parse().ok());
    let name = after("handle")
        .and_then(|_| {
            let i = w.iter().position(|x| *x == "handle")?;
            w.get(i + 2)
        })
        .map(|n| n.split(':').next().unwrap_or(n).to_string())
        .unwrap_or_default();
    Some((id, name, pref))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tc_filter_lines_give_id_name_and_priority() {
        assert_eq!(
            parse_filter_line("filter protocol all pref 2 bpf chain 0 handle 0x1 to_pod direct-action not_in_hw id 42 tag 0123456789abcdef jited"),
            Some((42, "to_pod".to_string(), Some(2)))
        );
        assert_eq!(
            parse_filter_line("filter protocol all pref 3 bpf chain 0 handle 0x1 svc_egress:[1234] direct-action not_in_hw id 7 tag ab jited"),
            Some((7, "svc_egress".to_string(), Some(3)))
        );
        assert_eq!(
            parse_filter_line("filter protocol all pref 2 bpf chain 0 "),
            None
        );
    }
}
