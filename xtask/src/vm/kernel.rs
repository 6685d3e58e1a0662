//! The guest's kernel: the newest Debian package of a series, downloaded and
//! cached, its vmlinuz and the modules the tests need with their dependencies
//! (read from each module's `.modinfo`).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{output, run};

/// Modules the guest loads (their dependencies come along).
/// `crc32c_generic` first: sctp needs the crc32c algorithm, which the kernel would
/// otherwise request through modprobe (absent in the guest).
/// The netfilter pieces are for the conformance suite's kube-proxy-style Services
/// (iptables-nft: nf_tables with xtables matches and targets through nft_compat).
/// Names missing from a kernel's module tree are built in and skipped.
const MODULES: &[&str] = &[
    "veth",
    "sch_ingress",
    "bridge",
    // Bridge-style nodes of the cluster tests: kube-proxy's DNAT on bridged
    // replies.
    "br_netfilter",
    "cls_bpf",
    "crc32c_generic",
    "sctp",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_ct",
    "nf_nat",
    "nf_conntrack",
    "xt_comment",
    "xt_statistic",
    "xt_mark",
    "xt_MASQUERADE",
    "xt_nat",
    "xt_tcpudp",
    "xt_sctp",
    "xt_conntrack",
    "xt_addrtype",
    "ipt_REJECT",
    "ip6t_REJECT",
    "nft_reject_inet",
    "nft_masq",
];

pub(super) struct Kernel {
    pub(super) release: String,
    pub(super) vmlinuz: PathBuf,
    /// Uncompressed modules in load order (dependencies first).
    pub(super) modules: Vec<PathBuf>,
}

/// `6.1` -> highest `linux-image-6.1.0-N-amd64`; `6.12` -> highest
/// `linux-image-6.12.N+deb12-amd64`; an exact ABI (`6.1.0-56`) or package name works too.
fn pick_package(spec: &str, names: &[String]) -> Option<String> {
    let spec = spec.trim_start_matches("linux-image-");
    let spec = spec.strip_suffix("-amd64").unwrap_or(spec);
    let prefix = format!("linux-image-{spec}");
    names
        .iter()
        .filter_map(|n| {
            let rest = n.strip_prefix(&prefix)?.strip_suffix("-amd64")?;
            let fits = (rest.is_empty() || rest.starts_with(['.', '-']))
                && !rest.ends_with("-cloud")
                && !rest.ends_with("-rt");
            // A bare `linux-image-6.12-amd64` is a meta package unless it is all there is.
            fits.then(|| (rest.is_empty(), natural_key(n), n.clone()))
        })
        .max_by(|a, b| (!a.0, &a.1).cmp(&(!b.0, &b.1)))
        .map(|(_, _, n)| n)
}

fn natural_key(s: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        let mut chunk = String::new();
        let digits = c.is_ascii_digit();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_digit() != digits {
                break;
            }
            chunk.push(c);
            chars.next();
        }
        out.push(if digits {
            (chunk.parse().unwrap_or(u64::MAX), String::new())
        } else {
            (0, chunk)
        });
    }
    out
}

pub(super) fn prepare_kernel(vm_dir: &Path, spec: &str) -> Result<Kernel> {
    let kernels_dir = vm_dir.join("kernels");
    fs::create_dir_all(&kernels_dir)?;
    let apt_names = || -> Vec<String> {
        output(Command::new("apt-cache").args(["pkgnames", "linux-image-"]))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let mut names = apt_names();
    if pick_package(spec, &names).is_none() {
        // A fresh machine may have no (or stale) package lists.
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        names = apt_names();
    }
    // Kernels extracted earlier count as available even when apt cannot be reached.
    names.extend(
        fs::read_dir(&kernels_dir)?
            .flatten()
            .filter(|e| e.path().join(".extracted").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned()),
    );
    let pkg = pick_package(spec, &names).with_context(|| {
        format!("no Debian kernel package matches {spec:?} (apt-cache pkgnames linux-image-; run apt-get update?)")
    })?;
    let root = kernels_dir.join(&pkg);
    if !root.join(".extracted").exists() {
        let debs = vm_dir.join("debs");
        fs::create_dir_all(&debs)?;
        let find_deb = || {
            fs::read_dir(&debs).ok().and_then(|rd| {
                rd.flatten().map(|e| e.path()).find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
                })
            })
        };
        if find_deb().is_none() {
            eprintln!("    apt-get download {pkg}");
            run(
                Command::new("apt-get")
                    .args(["download", "-qq", &pkg])
                    .current_dir(&debs),
                &format!("apt-get download {pkg}"),
                "The Debian archive must be reachable (run apt-get update?).",
            )?;
        }
        let deb = find_deb().context("apt-get download left no .deb")?;
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
            "dpkg-deb -x",
            "The downloaded package may be damaged; delete it from ~/.cache/palisade/vm/debs.",
        )?;
        fs::write(root.join(".extracted"), "")?;
    }
    let vmlinuz = fs::read_dir(root.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .context("no boot/vmlinuz-* in the kernel package")?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    let mod_root = root.join("lib/modules").join(&release);
    let mut index = BTreeMap::new();
    index_modules(&mod_root.join("kernel"), &mut index)?;
    let ko_dir = root.join("ko");
    fs::create_dir_all(&ko_dir)?;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for m in MODULES {
        resolve_module(m, &index, &ko_dir, &mut seen, &mut order)?;
    }
    Ok(Kernel {
        release,
        vmlinuz,
        modules: order,
    })
}

fn index_modules(dir: &Path, index: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            index_modules(&p, index)?;
        } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
            if let Some(stem) = n
                .strip_suffix(".ko")
                .or_else(|| n.strip_suffix(".ko.xz"))
                .or_else(|| n.strip_suffix(".ko.zst"))
            {
                index.insert(stem.replace('-', "_"), p.clone());
            }
        }
    }
    Ok(())
}

/// Decompress `name` (cached) and its `depends=` modules, appending them to `order`
/// dependencies first. Built-in modules are not in the index and are skipped.
fn resolve_module(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    ko_dir: &Path,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<PathBuf>,
) -> Result<()> {
    let name = name.replace('-', "_");
    if !seen.insert(name.clone()) {
        return Ok(());
    }
    let Some(src) = index.get(&name) else {
        return Ok(()); // built in
    };
    let dst = ko_dir.join(format!("{name}.ko"));
    if !dst.exists() {
        let s = src.to_string_lossy();
        let bytes = if s.ends_with(".xz") {
            Command::new("xz").arg("-dc").arg(src).output()?.stdout
        } else if s.ends_with(".zst") {
            Command::new("zstd").arg("-dc").arg(src).output()?.stdout
        } else {
            fs::read(src)?
        };
        if bytes.len() < 64 {
            bail!("could not decompress {}", src.display());
        }
        fs::write(&dst, bytes)?;
    }
    let bytes = fs::read(&dst)?;
    let deps = find_modinfo(&bytes, "depends=").unwrap_or_default();
    for dep in deps.split(',').filter(|d| !d.is_empty()) {
        resolve_module(dep, index, ko_dir, seen, order)?;
    }
    order.push(dst);
    Ok(())
}

fn find_modinfo(bytes: &[u8], key: &str) -> Option<String> {
    let needle = format!("\0{key}");
    let pos = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())?;
    let start = pos + needle.len();
    let end = bytes[start..].iter().position(|&b| b == 0)? + start;
    Some(String::from_utf8_lossy(&bytes[start..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_flavourless_package() {
        let names: Vec<String> = [
            "linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-47-amd64",
            "linux-image-6.1.0-47-cloud-amd64",
            "linux-image-6.1.0-47-rt-amd64",
            "linux-image-6.1.0-47-amd64-dbg",
            "linux-image-6.1.0-47-amd64-unsigned",
            "linux-image-6.12-amd64",
            "linux-image-6.12.100+deb12-amd64",
            "linux-image-6.12.99+deb12-amd64",
            "linux-image-amd64",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            pick_package("6.1", &names).as_deref(),
            Some("linux-image-6.1.0-47-amd64")
        );
        assert_eq!(
            pick_package("6.12", &names).as_deref(),
            Some("linux-image-6.12.100+deb12-amd64")
        );
        assert_eq!(
            pick_package("6.1.0-9", &names).as_deref(),
            Some("linux-image-6.1.0-9-amd64")
        );
        assert_eq!(pick_package("5.10", &names), None);
    }
}
