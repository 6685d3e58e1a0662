//! The datapath: the loaded eBPF object, its programs' attachments and pins.
//! Loading and adoption are in `load` (with `layout` for pins of another
//! layout and `migrate` for conntrack tables of the earlier one), attaching in `attach`, removal in `uninstall`,
//! restoring what went missing in `crate::repair`.
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
    programs::{links::PinnedLink, SchedClassifier, TcAttachType},
    util::KernelVersion,
    Ebpf,
};
use palisade_common::progs;
use thiserror::Error;

use crate::pins::PinLock;

mod attach;
pub mod layout;
mod load;
pub mod migrate;
mod uninstall;

pub use attach::{AttachReport, Role};
pub use uninstall::{uninstall, Uninstalled};

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
    /// Pins of another layout set aside by the load, until the new maps are
    /// filled and every hook runs this build's programs.
    pub(crate) stale: Vec<layout::Stale>,
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
    /// Interfaces with this agent's program attached, per hook (program name).
    pub fn attached_per_hook(&self) -> Vec<(&'static str, usize)> {
        [Hook::ToPod, Hook::FromPod, Hook::SvcEgress]
            .into_iter()
            .map(|h| {
                let n = self.attached.keys().filter(|(_, k)| *k == h).count();
                (h.program(), n)
            })
            .collect()
    }

    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        classifier(&mut self.ebpf, name)
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

    /// Whether the load set pins of another layout aside: the new maps must
    /// be filled before any hook is pointed at this build's programs.
    pub fn upgrading(&self) -> bool {
        !self.stale.is_empty()
    }

    /// The maps set aside by the load, for the log and `/ready`.
    pub fn stale_maps(&self) -> &[layout::Stale] {
        &self.stale
    }

    /// Every hook runs this build's programs on its new maps: removes the
    /// pins of the other layout. Returns how many went.
    pub fn finish_upgrade(&mut self) -> Result<usize, DatapathError> {
        let n = layout::remove_stale(&self.pin_dir)?;
        self.stale.clear();
        Ok(n)
    }
}

/// The TC program `name` of the object.
fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DatapathError::Program {
            name,
            source: Box::new(source),
        })
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
