//! The host's side of `vm-test`: qemu and the tools that unpack kernel packages,
//! installed from Debian's packages when missing.
use std::{fs, process::Command};

use anyhow::{bail, Result};

use crate::{have, run, step};

pub(super) fn ensure_host_packages() -> Result<()> {
    step("vm-test: host packages");
    let needed = [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("dpkg-deb", "dpkg"),
        ("xz", "xz-utils"),
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("ldd", "libc-bin"),
    ];
    let mut missing: Vec<&str> = needed
        .iter()
        .filter(|(bin, _)| !have(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let hint = "Run as root on Debian with the package archive reachable.";
    // qemu-system-x86 should come from the suite the installed qemu packages
    // came from: with qemu-utils from backports, the plain suite's
    // qemu-system-x86 may conflict with it (apt: "pkgProblemResolver::Resolve
    // generated breaks"). Where that suite is not among apt's sources, the
    // plain suite's is tried.
    let suite = qemu_backports_suite();
    let install_from = |suite: Option<&str>| {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "-qq", "--no-install-recommends"]);
        if let Some(s) = suite {
            cmd.args(["-t", s]);
        }
        cmd.args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let install = || suite.as_deref().is_some_and(|s| install_from(Some(s))) || install_from(None);
    if !install() {
        run(
            Command::new("apt-get").args(["update", "-qq"]),
            "apt-get update",
            hint,
        )?;
        if !install() {
            bail!("apt-get install {} failed. {hint}", missing.join(" "));
        }
    }
    Ok(())
}

/// `<codename>-backports` when an installed qemu package came from Debian's
/// backports (its version carries `~bpo`), else `None`.
fn qemu_backports_suite() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Version}\n", "qemu-*"])
        .output()
        .ok()?;
    let from_backports = String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains("~bpo"));
    if !from_backports {
        return None;
    }
    let release = fs::read_to_string("/etc/os-release").ok()?;
    release_backports(&release)
}

fn release_backports(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| format!("{}-backports", c.trim().trim_matches('"')))
        .filter(|s| s.len() > "-backports".len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backports_suite_comes_from_os_release() {
        assert_eq!(
            release_backports(
                "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\n"
            )
            .as_deref(),
            Some("bookworm-backports")
        );
        assert_eq!(release_backports("ID=debian\n"), None);
        assert_eq!(release_backports("VERSION_CODENAME=\n"), None);
    }
}
