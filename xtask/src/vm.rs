//! `cargo xtask vm-test`: the datapath and attach tests on Debian kernels in qemu.
//!
//! For each kernel series: `apt-get download` the Debian kernel package (cached in
//! `~/.cache/palisade/vm/`), extract vmlinuz and the modules the tests need (with
//! their dependencies, read from each module's `.modinfo`), build a newc initramfs
//! holding `palisade-vm-init` as `/init`, the test binaries, `ip`/`tc` and the
//! shared libraries `ldd` names, boot it under `qemu-system-x86_64 -accel tcg`,
//! and read the serial console until the init's result marker, a panic or the
//! timeout. One summary table at the end; non-zero exit on any failure.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{cache_dir, cargo, have, output, run, step};

/// Kernel series tested when no `--kernel` is given: what Debian bookworm ships
/// (6.1) and its security-updates 6.12 series (TCX).
pub const DEFAULT_KERNELS: &[&str] = &["6.1", "6.12"];

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

/// Conformance cases run in the guest by default (`--conformance subset`): the
/// three SCTP cases (NetworkPolicy and ClusterNetworkPolicy), which the host
/// kernel cannot run, and one case for each of deny,
/// selectors, Services and replies. Under software emulation every agent start
/// costs tens of seconds of verifier time, so the whole suite is opt-in.
const CONFORMANCE_SUBSET: &[&str] = &[
    "010-default-deny-ingress.yaml",
    "170-three-tier.yaml",
    "360-via-service-and-pod.yaml",
    "372-replies-pass-both-ways.yaml",
    "380-sctp-port.yaml",
    "385-sctp-no-ports.yaml",
    "650-cnp-sctp.yaml",
];

/// Test binaries of palisade-agent run in the guest, with their libtest arguments
/// (after `--include-ignored`, which every suite gets: their tests need root and
/// are `#[ignore]`d for plain `cargo test`). `cluster` is real traffic: the agent
/// on a namespace cluster, restarted under an open connection, in the kernel's
/// own attach mode and in netlink mode.
const SUITES: &[(&str, &[&str])] = &[
    ("datapath", &[]),
    ("parse", &[]),
    ("conntrack", &[]),
    // The packet fuzz against the model, on this kernel's verifier and helpers.
    ("fuzz", &["--nocapture"]),
    ("attach", &["--nocapture"]),
    ("cluster", &["--test-threads", "2"]),
    // Repairs in this kernel's attach mode (netlink TC before 6.6).
    (
        "lapses",
        &[
            "--test-threads",
            "2",
            "removed_pins",
            "deleted_netlink_filter",
            "second_agent",
        ],
    ),
    // An upgrade across a change of map layout, in this kernel's attach mode.
    ("upgrade", &[]),
];

/// Host binaries copied into the guest's /bin (with their libraries).
/// `iptables-restore` is the xtables multi-binary, which dispatches on its name.
const GUEST_TOOLS: &[&str] = &[
    "ip",
    "tc",
    "bridge",
    "sysctl",
    "iptables-restore",
    "ip6tables-restore",
];

/// Where iptables loads its extensions from (dlopen, so `ldd` cannot see them).
const XTABLES_LIBDIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";

pub struct Options {
    pub kernels: Vec<String>,
    /// `subset`, `all` or `none`.
    pub conformance: String,
    /// Scenario files and directories to run instead of `conformance`.
    pub paths: Vec<PathBuf>,
    pub timeout: Duration,
    pub verbose: bool,
}

struct Outcome {
    kernel: String,
    attach_mode: String,
    passed: u64,
    failed: u64,
    ignored: u64,
    secs: f64,
    error: Option<String>,
}

pub fn vm_test(opts: Options) -> Result<()> {
    let kernels: Vec<String> = if opts.kernels.is_empty() {
        DEFAULT_KERNELS.iter().map(|s| s.to_string()).collect()
    } else {
        opts.kernels.clone()
    };
    ensure_host_packages()?;
    let vm_dir = cache_dir().join("vm");
    fs::create_dir_all(&vm_dir).context("creating ~/.cache/palisade/vm")?;

    step("vm-test: building the guest init and the test binaries");
    let init = build_init()?;
    // First: it builds the workspace's crates with the other layout, and the
    // test binaries and the agent below build them back.
    let other_layout = super::build_test_layout_agent()?;
    let mut suites = build_suites()?;
    let mut extra = Vec::new();
    let cases = if opts.paths.is_empty() {
        conformance_cases(&opts.conformance)?
    } else {
        let found = palisade_harness::scenario::collect_files(&opts.paths)?;
        if found.is_empty() {
            bail!("no scenario files (*.yaml) in {:?}", opts.paths);
        }
        found
    };
    // The init exports PALISADE_AGENT=/palisade/bin/palisade-agent for the
    // cluster tests and the conformance runner, and
    // PALISADE_AGENT_TEST_LAYOUT for the upgrade test.
    let agent = super::build_agent()?;
    extra.push(("palisade/bin/palisade-agent".to_string(), agent));
    extra.push((
        "palisade/bin/palisade-agent-test-layout".to_string(),
        other_layout,
    ));
    if !cases.is_empty() {
        let runner = super::build_harness_bin("palisade-conformance")?;
        extra.push(("palisade/bin/palisade-conformance".to_string(), runner));
        let mut args = vec![
            "--agent".to_string(),
            "/palisade/bin/palisade-agent".to_string(),
            "--require-sctp".to_string(),
        ];
        for (i, case) in cases.iter().enumerate() {
            let name = case
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("case.yaml");
            // Numbered: files of one name from two directories stay apart.
            let guest = format!("palisade/conformance/{i:04}-{name}");
            args.push(format!("/{guest}"));
            extra.push((guest, case.clone()));
        }
        suites.push((
            "conformance".to_string(),
            PathBuf::from("/palisade/bin/palisade-conformance"),
            args,
        ));
    }

    let mut outcomes = Vec::new();
    for spec in &kernels {
        step(&format!("vm-test: kernel {spec}"));
        let kernel = match prepare_kernel(&vm_dir, spec) {
            Ok(k) => k,
            Err(e) => {
                outcomes.push(Outcome {
                    kernel: spec.clone(),
                    attach_mode: "-".into(),
                    passed: 0,
                    failed: 0,
                    ignored: 0,
                    secs: 0.0,
                    error: Some(format!("{e:#}")),
                });
                continue;
            }
        };
        let initrd = vm_dir.join(format!("initramfs-{}.cpio", kernel.release));
        build_initramfs(&initrd, &init, &suites, &extra, &kernel.modules)
            .with_context(|| format!("building {}", initrd.display()))?;
        eprintln!(
            "    booting {} ({} modules, initramfs {} MiB)",
            kernel.release,
            kernel.modules.len(),
            fs::metadata(&initrd).map(|m| m.len() >> 20).unwrap_or(0)
        );
        outcomes.push(boot(&kernel, &initrd, &opts));
    }

    print_summary(&outcomes);
    let bad: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.error.is_some() || o.failed > 0)
        .map(|o| o.kernel.as_str())
        .collect();
    if !bad.is_empty() {
        bail!("vm-test failed on: {}", bad.join(", "));
    }
    Ok(())
}

fn ensure_host_packages() -> Result<()> {
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

fn build_init() -> Result<PathBuf> {
    run(
        cargo().args(["build", "--release", "-p", "palisade-vm-init"]),
        "building palisade-vm-init",
        "See the compiler output above.",
    )?;
    Ok(super::target_dir().join("release/palisade-vm-init"))
}

/// The scenario files `--conformance` asks for.
fn conformance_cases(which: &str) -> Result<Vec<PathBuf>> {
    let dir = super::workspace_root().join("tests/conformance");
    let mut all: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    all.sort();
    match which {
        "none" => Ok(Vec::new()),
        "all" => Ok(all),
        "subset" => CONFORMANCE_SUBSET
            .iter()
            .map(|name| {
                let p = dir.join(name);
                if p.exists() {
                    Ok(p)
                } else {
                    bail!("conformance subset names {name}, which is not in tests/conformance")
                }
            })
            .collect(),
        other => bail!("--conformance {other}: expected subset, all or none"),
    }
}

/// Build the agent's test binaries and return (suite name, executable, args).
fn build_suites() -> Result<Vec<(String, PathBuf, Vec<String>)>> {
    let mut cmd = cargo();
    cmd.args(["test", "--release", "-p", "palisade-agent", "--no-run"])
        .args(["--message-format", "json-render-diagnostics"]);
    for (name, _) in SUITES {
        cmd.args(["--test", name]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the agent's test binaries failed; see the compiler output above");
    }
    let mut exes = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) {
            exes.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    SUITES
        .iter()
        .map(|(name, args)| {
            let exe = exes
                .get(*name)
                .with_context(|| format!("cargo named no executable for test {name}"))?;
            let args = std::iter::once(&"--include-ignored")
                .chain(args.iter())
                .map(|s| s.to_string())
                .collect();
            Ok((name.to_string(), exe.clone(), args))
        })
        .collect()
}

struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    /// Uncompressed modules in load order (dependencies first).
    modules: Vec<PathBuf>,
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

fn prepare_kernel(vm_dir: &Path, spec: &str) -> Result<Kernel> {
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

/// A newc cpio archive assembled in memory.
#[derive(Default)]
struct Cpio {
    /// path (no leading slash) -> (mode, contents)
    entries: BTreeMap<String, (u32, Vec<u8>)>,
}

impl Cpio {
    fn dirs_for(&mut self, path: &str) {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            self.entries
                .entry(acc.clone())
                .or_insert((0o040755, Vec::new()));
        }
    }
    fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        let path = path.trim_start_matches('/').to_string();
        self.dirs_for(&path);
        self.entries.insert(path, (0o100000 | mode, data));
    }
    fn host_file(&mut self, path: &str, host: &Path) -> Result<()> {
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        self.file(path, 0o755, data);
        Ok(())
    }
    fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut ino = 1u32;
        let mut header = |out: &mut dyn Write, name: &str, mode: u32, size: usize| {
            let namesize = name.len() + 1;
            write!(
                out,
                "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
                0, 0, 1, 0, 0, 0, 0, 0, 0
            )?;
            ino += 1;
            out.write_all(name.as_bytes())?;
            out.write_all(&[0])?;
            out.write_all(&[0; 3][..(4 - (110 + namesize) % 4) % 4])
        };
        for (name, (mode, data)) in &self.entries {
            header(out, name, *mode, data.len())?;
            out.write_all(data)?;
            out.write_all(&[0; 3][..(4 - data.len() % 4) % 4])?;
        }
        header(out, "TRAILER!!!", 0, 0)
    }
}

/// Add `bin`'s shared libraries (as `ldd` names them) to the archive.
fn add_libs(cpio: &mut Cpio, bin: &Path) -> Result<()> {
    for lib in crate::image::shared_libraries(bin)? {
        let p = lib.to_string_lossy();
        if !cpio.entries.contains_key(p.trim_start_matches('/')) {
            cpio.host_file(&p, &lib)?;
        }
    }
    Ok(())
}

fn build_initramfs(
    out: &Path,
    init: &Path,
    suites: &[(String, PathBuf, Vec<String>)],
    extra: &[(String, PathBuf)],
    modules: &[PathBuf],
) -> Result<()> {
    let mut cpio = Cpio::default();
    for d in ["proc", "sys", "dev", "tmp", "run", "root", "etc"] {
        cpio.entries.insert(d.into(), (0o040755, Vec::new()));
    }
    cpio.host_file("init", init)?;
    add_libs(&mut cpio, init)?;
    let mut list = String::new();
    for (guest, host) in extra {
        cpio.host_file(guest, host)?;
        add_libs(&mut cpio, host)?;
    }
    for (name, exe, args) in suites {
        // Test binaries are copied from the host; a guest path is already there.
        let guest = if exe.starts_with("/palisade/") {
            exe.to_string_lossy().trim_start_matches('/').to_string()
        } else {
            let guest = format!("palisade/tests/{name}");
            cpio.host_file(&guest, exe)?;
            add_libs(&mut cpio, exe)?;
            guest
        };
        list.push_str(&format!("{name}\t/{guest}"));
        for a in args {
            list.push('\t');
            list.push_str(a);
        }
        list.push('\n');
    }
    cpio.file("palisade/suites", 0o644, list.into_bytes());
    let mut mods = String::new();
    for m in modules {
        let name = m.file_name().and_then(|n| n.to_str()).unwrap_or("x.ko");
        let guest = format!("palisade/ko/{name}");
        cpio.file(&guest, 0o644, fs::read(m)?);
        mods.push_str(&format!("/{guest}\n"));
    }
    cpio.file("palisade/modules", 0o644, mods.into_bytes());
    for tool in GUEST_TOOLS {
        let host = crate::find_tool(tool)?;
        cpio.host_file(&format!("bin/{tool}"), &host)?;
        add_libs(&mut cpio, &host)?;
    }
    if let Ok(dir) = fs::read_dir(XTABLES_LIBDIR) {
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "so") {
                cpio.host_file(&p.to_string_lossy(), &p)?;
            }
        }
    }
    if let Ok(protocols) = fs::read("/etc/protocols") {
        cpio.file("etc/protocols", 0o644, protocols);
    }
    let mut f = std::io::BufWriter::new(fs::File::create(out)?);
    cpio.write(&mut f)?;
    f.flush()?;
    Ok(())
}

fn boot(kernel: &Kernel, initrd: &Path, opts: &Options) -> Outcome {
    let start = Instant::now();
    let mut outcome = Outcome {
        kernel: kernel.release.clone(),
        attach_mode: "-".into(),
        passed: 0,
        failed: 0,
        ignored: 0,
        secs: 0.0,
        error: None,
    };
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "1G", "-smp", "2", "-nodefaults"])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 loglevel=4 rdinit=/init mitigations=off",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            outcome.error = Some(format!("could not start qemu-system-x86_64: {e}"));
            return outcome;
        }
    };
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                if tx.send(line).is_err() {
                    break;
                }
                buf.clear();
            }
        });
    }
    drop(tx);
    let deadline = start + opts.timeout;
    let mut log = Vec::new();
    let mut result = None;
    let mut panic = false;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if opts.verbose {
                    eprintln!("    | {line}");
                } else if line.starts_with("PALISADE-VM-") {
                    eprintln!("    {line}");
                }
                if let Some(m) = line.split("PALISADE-VM-ATTACH-MODE: ").nth(1) {
                    outcome.attach_mode = m.trim().to_string();
                }
                if let Some(r) = line.split("PALISADE-VM-RESULT: ").nth(1) {
                    result = Some(r.to_string());
                    for kv in r.split_whitespace() {
                        if let Some((k, v)) = kv.split_once('=') {
                            let v = v.parse().unwrap_or(0);
                            match k {
                                "passed" => outcome.passed = v,
                                "failed" => outcome.failed = v,
                                "ignored" => outcome.ignored = v,
                                _ => {}
                            }
                        }
                    }
                }
                panic |= line.contains("Kernel panic");
                log.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait();
    outcome.secs = start.elapsed().as_secs_f64();
    outcome.error = if timed_out {
        Some(format!(
            "timed out after {} s (hang?)",
            opts.timeout.as_secs()
        ))
    } else if panic {
        Some("kernel panic".into())
    } else {
        match &result {
            None => Some(format!(
                "guest stopped without a result marker (qemu: {status:?})"
            )),
            Some(r) if !r.starts_with("PASS") => Some(format!("guest reported {r}")),
            Some(_) => None,
        }
    };
    if outcome.error.is_some() && !opts.verbose {
        eprintln!("---- guest output ({}) ----", kernel.release);
        for l in &log {
            eprintln!("| {l}");
        }
        eprintln!("---- end of guest output ----");
    }
    outcome
}

fn print_summary(outcomes: &[Outcome]) {
    println!();
    println!(
        "{:<24} {:<8} {:>6} {:>6} {:>7} {:>7}  result",
        "kernel", "attach", "passed", "failed", "skipped", "secs"
    );
    for o in outcomes {
        println!(
            "{:<24} {:<8} {:>6} {:>6} {:>7} {:>7.1}  {}",
            o.kernel,
            o.attach_mode,
            o.passed,
            o.failed,
            o.ignored,
            o.secs,
            o.error.as_deref().unwrap_or("ok")
        );
    }
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

    #[test]
    fn cpio_entries_are_aligned() {
        let mut c = Cpio::default();
        c.file("a/bc", 0o644, b"hello".to_vec());
        let mut out = Vec::new();
        c.write(&mut out).unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let s = String::from_utf8_lossy(&out);
        assert!(s.contains("a\0") && s.contains("a/bc\0") && s.contains("TRAILER!!!\0"));
    }
}
