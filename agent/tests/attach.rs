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
