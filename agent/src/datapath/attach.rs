//! Attaching and detaching programs (TCX links or netlink TC filters), and
//! one pass's worth of it: every interface gets the programs its role calls
//! for.
use std::fs;

use aya::programs::{
    links::{FdLink, LinkError, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
    LinkOrder,
};
use tracing::{error, info, warn};

use super::{
    link_pin_parts, netlink_priority, remove_netlink_filter, AttachMode, Datapath, DatapathError,
    Held, Hook,
};

/// One interface and the programs its role calls for (see `node::roles`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub ifindex: u32,
    pub hooks: &'static [Hook],
    pub uplink: bool,
}

/// What putting the programs on the node's interfaces did.
#[derive(Debug, Default)]
pub struct AttachReport {
    pub errors: Vec<String>,
    /// Pins and attachments found missing and restored.
    pub repaired: Vec<String>,
    /// Another agent's programs are attached beside ours.
    pub foreign: bool,
}

impl Datapath {
    /// Puts on every interface the programs its role calls for, and takes off
    /// the programs of a role it no longer has: pod programs on the node's own
    /// link drop its traffic, and an uplink's program on a pod's veth ends the
    /// chain before the pod's. Those go once the new ones are all on (until
    /// then the old ones at least check something). With `check` (full passes)
    /// also restores removed pins and attachments and finds another agent's
    /// programs (see `crate::repair`).
    pub fn apply_roles(&mut self, roles: &[Role], check: bool) -> AttachReport {
        let mut report = AttachReport::default();
        if check {
            let (repaired, errors) = self.repair_pins();
            report.repaired.extend(repaired);
            report.errors.extend(errors);
        }
        for role in roles {
            let (name, idx) = (role.name.as_str(), role.ifindex);
            let mut all_on = true;
            for hook in role.hooks {
                if let Err(e) = self.attach(name, idx, *hook) {
                    report.errors.push(format!("{name}: {e}"));
                    all_on = false;
                    continue;
                }
                if !check {
                    continue;
                }
                match self.check(name, idx, *hook) {
                    Ok(Some(r)) => report.repaired.push(r),
                    Ok(None) => {}
                    Err(e) => {
                        report.foreign |= matches!(e, DatapathError::Foreign { .. });
                        report.errors.push(e.to_string());
                    }
                }
            }
            for hook in [Hook::FromPod, Hook::ToPod, Hook::SvcEgress] {
                if !all_on || role.hooks.contains(&hook) {
                    continue;
                }
                match self.detach(name, idx, hook) {
                    Ok(true) => info!(
                        interface = %name,
                        program = hook.program(),
                        uplink = role.uplink,
                        "detached a program the interface's role no longer calls for"
                    ),
                    Ok(false) => {}
                    Err(e) => report.errors.push(format!("{name}: {e}")),
                }
            }
        }
        for e in &report.errors {
            error!(error = %e, "attach failed");
        }
        for r in &report.repaired {
            warn!(repaired = %r, "enforcement state was missing and is restored");
        }
        report
    }

    /// Attach `hook`'s program to `iface`, replacing (atomically where the kernel
    /// allows) whatever an earlier agent left there. The attachment outlives this
    /// process.
    pub fn attach(&mut self, iface: &str, ifindex: u32, hook: Hook) -> Result<(), DatapathError> {
        if self.is_attached(ifindex, hook) {
            return Ok(());
        }
        let name = hook.program();
        let pin = self.link_pin(ifindex, hook);
        let mode = self.mode;
        let attach_err = |source| DatapathError::Attach {
            name,
            iface: iface.to_string(),
            source: Box::new(source),
        };
        match mode {
            AttachMode::Tcx => {
                let prog = self.program(name)?;
                let id = match PinnedLink::from_pin(&pin) {
                    Ok(old) => {
                        let link: SchedClassifierLink =
                            FdLink::from(old).try_into().map_err(|e: LinkError| {
                                DatapathError::PinLink {
                                    path: pin.clone(),
                                    reason: e.to_string(),
                                }
                            })?;
                        prog.attach_to_link(link).map_err(attach_err)?
                    }
                    Err(_) => prog
                        .attach_with_options(
                            iface,
                            hook.attach_type(),
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                        .map_err(attach_err)?,
                };
                let link = prog.take_link(id).map_err(attach_err)?;
                let fd: FdLink =
                    link.try_into()
                        .map_err(|e: LinkError| DatapathError::PinLink {
                            path: pin.clone(),
                            reason: e.to_string(),
                        })?;
                // A change of attach mode: the netlink filter an earlier agent
                // left goes once the TCX link is on (never both, never neither).
                if fs::symlink_metadata(&pin).is_ok_and(|m| m.is_dir()) {
                    if let Some(prio) = netlink_priority(&pin) {
                        if let Err(e) = remove_netlink_filter(iface, hook, prio) {
                            warn!(interface = iface, error = %e, "the netlink filter of the earlier attach mode stays");
                        }
                    }
                    let _ = fs::remove_dir_all(&pin);
                }
                // A stale pin (interface gone and index reused) is replaced.
                let _ = fs::remove_file(&pin);
                let _ = fs::create_dir_all(self.pin_dir.join("links"));
                let pinned = fd.pin(&pin).map_err(|e| DatapathError::PinLink {
                    path: pin.clone(),
                    reason: e.to_string(),
                })?;
                self.attached.insert((ifindex, hook), Held::Tcx(pinned));
            }
            AttachMode::Netlink => {
                // A change of attach mode: an earlier agent's TCX link is
                // unpinned (its last reference) once the filter is on.
                let tcx_pin = fs::symlink_metadata(&pin).is_ok_and(|m| !m.is_dir());
                let _ = tc::qdisc_add_clsact(iface);
                // Alternate between two priorities: the new filter goes in before
                // the old one is removed, so the interface is never unchecked.
                let old = netlink_priority(&pin);
                let [first, second] = hook.netlink_priorities();
                let priority = if old == Some(first) { second } else { first };
                let prog = self.program(name)?;
                let id = prog
                    .attach_with_options(
                        iface,
                        hook.attach_type(),
                        TcAttachOptions::Netlink(NlOptions {
                            priority,
                            ..Default::default()
                        }),
                    )
                    .map_err(attach_err)?;
                let link = prog.take_link(id).map_err(attach_err)?;
                // Dropping the link wrapper would detach the filter; the filter must
                // outlive this process, so the handle is deliberately leaked.
                std::mem::forget(link);
                if let Some(old) = old.filter(|o| *o != priority) {
                    if let Err(e) = remove_netlink_filter(iface, hook, old) {
                        warn!(interface = iface, error = %e, "the replaced filter stays");
                    }
                }
                if tcx_pin {
                    fs::remove_file(&pin).map_err(|e| DatapathError::PinLink {
                        path: pin.clone(),
                        reason: format!("removing the TCX link of the earlier attach mode: {e}"),
                    })?;
                }
                // bpffs holds only objects and directories, so the priority is
                // recorded as an empty directory `<pin>/prio-N`.
                let mark = pin.join(format!("prio-{priority}"));
                fs::create_dir_all(&mark).map_err(|e| DatapathError::PinLink {
                    path: mark.clone(),
                    reason: e.to_string(),
                })?;
                if let Some(old) = old.filter(|o| *o != priority) {
                    let _ = fs::remove_dir(pin.join(format!("prio-{old}")));
                }
                self.attached
                    .insert((ifindex, hook), Held::Netlink { priority });
            }
        }
        Ok(())
    }

    /// Take `hook`'s program off `iface` if this process attached it or an
    /// earlier agent pinned it there: for an interface whose role changed (a
    /// node's veth first taken for a pod's, or the reverse). Whether anything
    /// was there.
    pub fn detach(&mut self, iface: &str, ifindex: u32, hook: Hook) -> Result<bool, DatapathError> {
        let pin = self.link_pin(ifindex, hook);
        let err = |reason: String| DatapathError::Detach {
            name: hook.program(),
            iface: iface.to_string(),
            reason,
        };
        // A held TCX link goes at the end of this call: with its pin gone too,
        // that was its last reference and it detaches.
        let held = self.attached.remove(&(ifindex, hook));
        let held_prio = match &held {
            Some(Held::Netlink { priority }) => Some(*priority),
            _ => None,
        };
        // One stat: this runs for every interface on every pass.
        match fs::symlink_metadata(&pin) {
            Ok(m) if m.is_dir() => {
                // Netlink mode: the filter outlives any handle; `tc` removes it.
                if let Some(prio) = netlink_priority(&pin).or(held_prio) {
                    remove_netlink_filter(iface, hook, prio).map_err(err)?;
                }
                fs::remove_dir_all(&pin).map_err(|e| err(e.to_string()))?;
            }
            Ok(_) => fs::remove_file(&pin).map_err(|e| err(e.to_string()))?,
            Err(_) => {
                if let Some(prio) = held_prio {
                    remove_netlink_filter(iface, hook, prio).map_err(err)?;
                }
                return Ok(held.is_some());
            }
        }
        drop(held);
        Ok(true)
    }

    /// Forget an interface that disappeared (its attachments went with it).
    pub fn forget(&mut self, ifindex: u32) {
        for hook in [Hook::ToPod, Hook::FromPod, Hook::SvcEgress] {
            self.attached.remove(&(ifindex, hook));
            let pin = self.link_pin(ifindex, hook);
            if fs::remove_file(&pin).is_err() {
                let _ = fs::remove_dir_all(&pin);
            }
        }
    }

    /// Ifindexes that have pinned links from an earlier run.
    pub fn pinned_ifindexes(&self) -> Vec<u32> {
        let mut out: Vec<u32> = fs::read_dir(self.pin_dir.join("links"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name();
                link_pin_parts(n.to_str()?).map(|(ifindex, _)| ifindex)
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}
