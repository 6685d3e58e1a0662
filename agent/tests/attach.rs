//! Attaching the real programs to a real veth pair with `Datapath::attach`, then
//! re-attaching from a second load against the same pins (what a restarted agent
//! does). Each test thread unshares its own network namespace, so nothing is left
//! on the host. Needs root, bpffs, `ip` and `tc`: `#[ignore]`d for plain `cargo
//! test`; `cargo xtask test` and `cargo xtask vm-test` provide them and run it.
//!
//! `attach_in_the_kernels_mode` prints `PALISADE-VM-ATTACH-MODE: <mode>`, which
//! `cargo xtask vm-test` reports per kernel (run it with `--nocapture` to see it).
use std::path::PathBuf;

use palisade_agent::datapath::{AttachMode, Datapath, Hook};

mod common;

use common::cmd;

struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Move this test thread into a fresh network namespace holding veth pva/pvb.
fn private_veth() -> u32 {
    common::private_veth("pva", "pvb").0
}

fn pin_dir(tag: &str) -> PinDir {
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/palisade-test/attach-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    PinDir(dir)
}

/// `pref` numbers of the bpf filters on one clsact hook.
fn netlink_prefs(iface: &str, hook: &str) -> Vec<u16> {
    let shown = cmd("tc", &["filter", "show", "dev", iface, hook]);
    let mut prefs: Vec<u16> = shown
        .lines()
        .filter(|l| l.contains(" bpf "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "pref")?;
            w.next()?.parse().ok()
        })
        .collect();
    prefs.sort_unstable();
    prefs.dedup();
    prefs
}

/// Attaches both pod programs to `pva`.
fn attach_pod_hooks(dp: &mut Datapath, idx: u32, what: &str) {
    for hook in [Hook::ToPod, Hook::FromPod] {
        dp.attach("pva", idx, hook)
            .unwrap_or_else(|e| panic!("{what} {hook:?}: {e:?}"));
    }
}

/// The netlink filters on both clsact hooks of `pva` are at `prefs`.
fn assert_both_prefs(prefs: &[u16]) {
    for hook in ["egress", "ingress"] {
        assert_eq!(netlink_prefs("pva", hook), prefs, "{hook}");
    }
}

/// Attach to_pod and from_pod, load again from the same pins and attach again.
fn attach_twice(forced: Option<AttachMode>, tag: &str) -> AttachMode {
    let idx = private_veth();
    let dir = pin_dir(tag);
    let mut first = Datapath::load(&dir.0).expect("load eBPF object");
    if let Some(m) = forced {
        first.mode = m;
    }
    let mode = first.mode;
    attach_pod_hooks(&mut first, idx, "attach");
    assert!(first.is_attached(idx, Hook::ToPod));
    assert_eq!(first.pinned_ifindexes(), vec![idx]);
    if mode == AttachMode::Netlink {
        assert_both_prefs(&[1]);
    }
    drop(first);

    // A restarted agent: new programs against the pinned maps, replacing the old
    // attachments without a gap.
    let mut second = Datapath::load(&dir.0).expect("reload against pinned maps");
    second.mode = mode;
    attach_pod_hooks(&mut second, idx, "re-attach");
    match mode {
        AttachMode::Netlink => assert_both_prefs(&[2]),
        AttachMode::Tcx => {
            assert!(netlink_prefs("pva", "egress").is_empty());
            for p in ["to_pod", "from_pod"] {
                let pin = dir.0.join("links").join(format!("{idx}-{p}"));
                assert!(pin.exists(), "no pinned TCX link {}", pin.display());
            }
        }
    }
    mode
}

#[test]
#[ignore = "needs root, BPF and network namespaces: run through cargo xtask test"]
fn attach_in_the_kernels_mode() {
    common::require_root();
    let mode = attach_twice(None, "auto");
    assert_eq!(mode, AttachMode::detect());
    println!("PALISADE-VM-ATTACH-MODE: {}", mode.as_str());
}

/// Netlink TC is what kernels before 6.6 get; it must keep working on newer ones.
#[test]
#[ignore = "needs root, BPF and network namespaces: run through cargo xtask test"]
fn attach_with_netlink_tc() {
    common::require_root();
    assert_eq!(
        attach_twice(Some(AttachMode::Netlink), "netlink"),
        AttachMode::Netlink
    );
}

/// Creates a hash map of `key`/`value` bytes and pins it at `path` (the raw
/// `bpf(2)` calls: a map of another agent build's layout, without its object).
fn pin_hash_map(path: &std::path::Path, key: u32, value: u32, entries: u32) {
    use std::os::unix::ffi::OsStrExt;
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let mut attr = [0u8; 128];
    for (i, v) in [BPF_MAP_TYPE_HASH, key, value, entries].iter().enumerate() {
        attr[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    // SAFETY: bpf(2) reads `attr`, which outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_ptr(), attr.len()) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    let mut attr = [0u8; 128];
    attr[..8].copy_from_slice(&(c_path.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    // SAFETY: as above; `c_path` outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), attr.len()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: our own descriptor; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
    assert_eq!(rc, 0, "BPF_OBJ_PIN {}: {err}", path.display());
}

/// One pinned map of another layout sets every pin aside, not that one alone:
/// the programs attached keep the old maps as one set (an endpoint's id in
/// the old records keys the old policy entries) while this build writes ids
/// and entries afresh. A restart before the upgrade is done goes on with it.
#[test]
#[ignore = "needs root and BPF: run through cargo xtask test"]
fn a_map_of_another_layout_sets_every_pin_aside_until_the_upgrade_is_done() {
    use palisade_common::maps::{self as names, SPECS};
    common::require_root();
    let dir = pin_dir("layout");
    drop(Datapath::load(&dir.0).expect("load eBPF object"));
    let maps = dir.0.join("maps");
    let endpoints = maps.join(names::ENDPOINTS);
    let this = aya::maps::MapInfo::from_pin(&endpoints)
        .expect("endpoints pin")
        .value_size();
    std::fs::remove_file(&endpoints).expect("remove the endpoints pin");
    pin_hash_map(&endpoints, 4, this + 8, names::MAX_ENDPOINTS);

    let pinned: Vec<&str> = SPECS.iter().filter(|s| s.pinned).map(|s| s.name).collect();
    let stale_names = |dp: &Datapath| -> Vec<String> {
        let mut v: Vec<String> = dp.stale_maps().iter().map(|s| s.name.clone()).collect();
        v.sort();
        v
    };
    let mut want: Vec<String> = pinned.iter().map(|s| s.to_string()).collect();
    want.sort();

    let upgrading = Datapath::load(&dir.0).expect("load against the other layout");
    assert!(upgrading.upgrading());
    assert_eq!(stale_names(&upgrading), want, "every pinned map set aside");
    let changed: Vec<&str> = upgrading
        .stale_maps()
        .iter()
        .filter(|s| s.want != Some(s.found))
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(changed, [names::ENDPOINTS]);
    let info = aya::maps::MapInfo::from_pin(&endpoints).expect("new endpoints pin");
    assert_eq!(
        info.value_size(),
        this,
        "the new endpoints map has this build's record"
    );
    for name in &pinned {
        assert!(maps.join(name).exists(), "{name} created anew");
    }
    // Killed before its first pass: the next start goes on with the upgrade.
    drop(upgrading);
    let mut again = Datapath::load(&dir.0).expect("load after an interrupted upgrade");
    assert!(
        again.upgrading(),
        "the stale pins of an interrupted upgrade"
    );
    assert_eq!(stale_names(&again), want);
    assert_eq!(again.finish_upgrade().expect("finish"), want.len());
    drop(again);
    let done = Datapath::load(&dir.0).expect("load after the upgrade");
    assert!(!done.upgrading(), "nothing left aside after the upgrade");
}
