//! Loading the eBPF object, attaching it to interfaces, and pinning/adopting state.
//!
//! Maps are pinned by name under `<pin_dir>/maps`, so a restarted agent loads its new
//! programs against the very maps (policy, endpoints, conntrack) the old one wrote.
//! Attachments are kept across restarts too: TCX links are pinned under
//! `<pin_dir>/links` and atomically re-pointed at the new program on adoption;
//! with netlink TC (kernels before 6.6) the filters stay in the kernel after the
//! process exits, and a new filter is added before the old one is removed, so at
//! every instant at least one of them is checking traffic.
use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    maps::MapData,
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use palisade_common::progs;
use thiserror::Error;

use crate::pins::PinLock;
use tracing::warn;

/// The compiled eBPF object, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade"));

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("creating pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error("loading the eBPF object (pin dir {path}): {source}")]
    Load {
        path: PathBuf,
        source: Box<aya::EbpfError>,
    },
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {name} to {iface}: {source}")]
    Attach {
        name: &'static str,
        iface: String,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinning link {path}: {reason}")]
    PinLink { path: PathBuf, reason: String },
    #[error("detaching {name} from {iface}: {reason}")]
    Detach {
        name: &'static str,
        iface: String,
        reason: String,
    },
    #[error(transparent)]
    Lock(crate::pins::LockError),
    #[error("{iface}: {name} programs of another Palisade agent are attached beside this agent's (program ids {ids:?}): an agent with another pin directory or on another bpffs mount is (or was) running here, and its programs go on deciding; stop it, or remove them (`palisade-agent --uninstall --pin-dir` with its pin directory)")]
    Foreign {
        name: &'static str,
        iface: String,
        ids: Vec<u32>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<aya::maps::MapError>,
    },
}

/// How programs are attached on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Tcx,
    Netlink,
}

impl AttachMode {
    pub fn detect() -> Self {
        if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) {
            Self::Tcx
        } else {
            Self::Netlink
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        }
    }
}

/// Which hook of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// Pod veth, host side, TC egress.
    ToPod,
    /// Pod veth, host side, TC ingress.
    FromPod,
    /// Any other node interface, TC egress.
    SvcEgress,
}

impl Hook {
    pub fn program(self) -> &'static str {
        match self {
            Self::ToPod => progs::TO_POD,
            Self::FromPod => progs::FROM_POD,
            Self::SvcEgress => progs::SVC_EGRESS,
        }
    }
    fn from_program(name: &str) -> Option<Self> {
        [Self::ToPod, Self::FromPod, Self::SvcEgress]
            .into_iter()
            .find(|h| h.program() == name)
    }
    pub(crate) fn attach_type(self) -> TcAttachType {
        match self {
            Self::FromPod => TcAttachType::Ingress,
            Self::ToPod | Self::SvcEgress => TcAttachType::Egress,
        }
    }
    /// The two netlink filter priorities this hook alternates between. Hooks
    /// of one direction never share one: a filter is removed by priority, and
    /// an interface whose role changed has both kinds for a moment.
    fn netlink_priorities(self) -> [u16; 2] {
        match self {
            Self::FromPod | Self::ToPod => [1, 2],
            Self::SvcEgress => [3, 4],
        }
    }
    pub(crate) fn direction(self) -> &'static str {
        match self.attach_type() {
            TcAttachType::Ingress => "ingress",
            _ => "egress",
        }
    }
}

/// The loaded object plus where its state lives.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub pin_dir: PathBuf,
    pub mode: AttachMode,
    /// Interfaces we attached (or adopted) in this process, by (ifindex, hook).
    pub(crate) attached: BTreeMap<(u32, Hook), Held>,
    /// A handle on every pinned map: a map whose pin is removed stays alive
    /// and is pinned again ([`Datapath::repair_pins`]).
    pub(crate) pinned_maps: Vec<(String, MapData)>,
    pub(crate) lock: PinLock,
}

/// What this process holds of one attachment.
pub(crate) enum Held {
    /// TCX: the link itself. Holding it keeps the program attached while the
    /// agent runs even if its pin is removed; the pin carries it across
    /// restarts.
    Tcx(PinnedLink),
    /// Netlink TC: the filter outlives any handle; its priority.
    Netlink { priority: u16 },
}

impl Datapath {
    /// Load the object, reusing maps already pinned under `pin_dir` (adoption) or
    /// creating and pinning them.
    pub fn load(pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::load_with(pin_dir, None)
    }

    /// Like `load`, optionally with smaller policy maps (tests of map-full refusal).
    pub fn load_with(pin_dir: &Path, policy_entries: Option<u32>) -> Result<Self, DatapathError> {
        let maps_dir = pin_dir.join("maps");
        for d in [&maps_dir, &pin_dir.join("links")] {
            fs::create_dir_all(d).map_err(|source| DatapathError::PinDir {
                path: d.clone(),
                source,
            })?;
        }
        let lock = PinLock::take(pin_dir).map_err(DatapathError::Lock)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&maps_dir);
        if let Some(n) = policy_entries {
            loader.map_max_entries(palisade_common::maps::POLICY_V4, n);
            loader.map_max_entries(palisade_common::maps::POLICY_V6, n);
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|source| DatapathError::Load {
                path: pin_dir.to_path_buf(),
                source: Box::new(source),
            })?;
        for name in [progs::TO_POD, progs::FROM_POD, progs::SVC_EGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DatapathError::MissingProgram(name))?
                .try_into()
                .map_err(|source| DatapathError::Program {
                    name,
                    source: Box::new(source),
                })?;
            prog.load().map_err(|source| DatapathError::Program {
                name,
                source: Box::new(source),
            })?;
        }
        let mut pinned_maps = Vec::new();
        for e in fs::read_dir(&maps_dir)
            .map_err(|source| DatapathError::PinDir {
                path: maps_dir.clone(),
                source,
            })?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let map = MapData::from_pin(e.path()).map_err(|e| DatapathError::PinLink {
                path: maps_dir.join(&name),
                reason: e.to_string(),
            })?;
            pinned_maps.push((name, map));
        }
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            mode: AttachMode::detect(),
            attached: BTreeMap::new(),
            pinned_maps,
            lock,
        })
    }

    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        self.ebpf
            .program_mut(name)
            .ok_or(DatapathError::MissingProgram(name))?
            .try_into()
            .map_err(|source| DatapathError::Program {
                name,
                source: Box::new(source),
            })
    }

    /// Take a map out of the object (the typed writer owns it from then on).
    pub fn take_map(&mut self, name: &'static str) -> Result<aya::maps::Map, DatapathError> {
        self.ebpf
            .take_map(name)
            .ok_or(DatapathError::MissingMap(name))
    }

    pub(crate) fn link_pin(&self, ifindex: u32, hook: Hook) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("{ifindex}-{}", hook.program()))
    }

    pub fn is_attached(&self, ifindex: u32, hook: Hook) -> bool {
        self.attached.contains_key(&(ifindex, hook))
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

/// (ifindex, program name) of a link pin's file name (`Datapath::link_pin`).
fn link_pin_parts(name: &str) -> Option<(u32, &str)> {
    let (ifindex, prog) = name.split_once('-')?;
    Some((ifindex.parse().ok()?, prog))
}

/// The priority recorded for a netlink-mode attachment (see `attach`).
pub(crate) fn netlink_priority(pin: &Path) -> Option<u16> {
    fs::read_dir(pin)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("prio-")?.parse().ok())
        .max()
}

/// Remove the netlink filter of `hook` at `priority` if it is there and is
/// `hook`'s program (a pin may outlive its interface, and the index be reused);
/// whether it was removed.
pub(crate) fn remove_netlink_filter(
    iface: &str,
    hook: Hook,
    priority: u16,
) -> Result<bool, String> {
    let tc = |verb: &str| {
        let prio = priority.to_string();
        let args = [
            "filter",
            verb,
            "dev",
            iface,
            hook.direction(),
            "pref",
            &prio,
        ];
        std::process::Command::new("tc")
            .args(args)
            .output()
            .map_err(|e| format!("tc: {e}"))
    };
    let shown = tc("show")?;
    let ours = String::from_utf8_lossy(&shown.stdout)
        .split_whitespace()
        .any(|w| w == hook.program());
    if !ours {
        return Ok(false);
    }
    let out = tc("del")?;
    if !out.status.success() {
        return Err(format!(
            "tc filter del pref {priority}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(true)
}

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

/// The name of interface `ifindex` in this network namespace.
fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into `buf`.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Open one pinned map of an agent's pin dir (for tools and tests).
pub fn open_pinned_map(pin_dir: &Path, name: &str) -> io::Result<MapData> {
    MapData::from_pin(pin_dir.join("maps").join(name)).map_err(io::Error::other)
}
