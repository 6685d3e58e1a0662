//! Network namespaces owned by this process: unique names, running code and
//! commands inside them, the per-process liveness lock, the registry of live
//! clusters torn down on SIGINT/SIGTERM, and cleanup of leftovers from runs
//! that died without tearing down.
//!
//! Every name this module creates starts with `pal-<pid>-`, so a later run can
//! tell whose namespace it is and whether that owner is still alive.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};

use anyhow::{anyhow, bail, Context, Result};

/// Prefix of every network namespace the harness creates.
pub const NETNS_PREFIX: &str = "pal-";
/// Parent directory of the agents' pin directories (on the host's bpffs).
pub const PIN_ROOT: &str = "/sys/fs/bpf/palisade-test";
/// Directory of the per-process liveness locks.
const LOCK_DIR: &str = "/run/palisade-harness";
/// Prefix of the per-cluster temporary directories under the system temp dir.
pub const TEMP_PREFIX: &str = "palisade-harness-";

static SEQ: AtomicU64 = AtomicU64::new(1);

/// A new run id, unique within this process and across live processes:
/// `pal-<pid>-<seq>`. Several clusters can exist at once in one process
/// (cargo runs tests on parallel threads), hence the sequence number.
pub fn new_run_id() -> String {
    format!(
        "{NETNS_PREFIX}{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `f` on a fresh thread that has entered network namespace `ns`.
///
/// The thread exists only for this call, so a thread that switched namespace
/// is never reused for anything else. Sockets created inside `f` stay in `ns`
/// and may be returned and used from any thread.
pub fn in_netns<F, R>(ns: &str, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let file = File::open(netns_path(ns)).with_context(|| format!("open netns {ns}"))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<R> {
            enter_netns(&file)?;
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
    .with_context(|| format!("in netns {ns}"))
}

/// Switches the calling thread into the network namespace behind `file`.
pub(crate) fn enter_netns(file: &File) -> Result<()> {
    // SAFETY: setns only reads the fd; it affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
    }
    Ok(())
}

pub(crate) fn netns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

/// Runs a command and fails with its stderr when it exits non-zero.
pub fn run_cmd(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {program} {}", args.join(" ")))?;
    if let Some(input) = stdin {
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(input.as_bytes())
                .with_context(|| format!("write stdin of {program}"))?;
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdin
                .map(|s| format!("\ninput was:\n{s}"))
                .unwrap_or_default()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args...` inside `ns` through `ip netns exec`.
pub fn exec_in(ns: &str, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run_cmd("ip", &full, stdin)
}

/// Runs an `ip -batch` script inside `ns` (one process for many commands).
pub fn ip_batch(ns: &str, script: &str) -> Result<()> {
    run_cmd("ip", &["-n", ns, "-batch", "-"], Some(script)).map(|_| ())
}

/// Names of all network namespaces (from `/run/netns`).
pub fn list_netns() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(rd) = fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            if let Some(n) = e.file_name().to_str() {
                names.push(n.to_string());
            }
        }
    }
    names.sort();
    names
}

/// Deletes a namespace after killing any process still inside it. Missing
/// namespaces are not an error: teardown must be idempotent because the
/// signal handler and Drop may both run it.
pub fn delete_netns(ns: &str) {
    if !netns_path(ns).exists() {
        return;
    }
    if let Ok(pids) = run_cmd("ip", &["netns", "pids", ns], None) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: plain kill(2) on a pid listed as living in our namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = run_cmd("ip", &["netns", "del", ns], None);
}

// ---------------------------------------------------------------- liveness lock

static LOCK: OnceLock<Option<File>> = OnceLock::new();

/// Takes this process's liveness lock (once). A later run decides whether the
/// owner of `pal-<pid>-*` is dead by trying the same lock: flock survives pid
/// reuse and works across pid namespaces, unlike a `/proc/<pid>` check.
pub(crate) fn hold_liveness_lock() {
    LOCK.get_or_init(|| {
        let _ = fs::create_dir_all(LOCK_DIR);
        let path = Path::new(LOCK_DIR).join(format!("{}.lock", std::process::id()));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .ok()?;
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        (rc == 0).then_some(f)
    });
}

/// Whether the process `pid` that created harness objects is gone.
pub fn owner_is_dead(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    let path = Path::new(LOCK_DIR).join(format!("{pid}.lock"));
    if let Ok(f) = OpenOptions::new().write(true).open(&path) {
        // SAFETY: flock on an fd we own; released when `f` drops.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        return rc == 0;
    }
    // No lock file: fall back to the pid itself.
    !Path::new("/proc").join(pid.to_string()).exists()
}

/// Parses the owner pid out of `pal-<pid>-...` / `<pid>-...` names.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NETNS_PREFIX).unwrap_or(name);
    rest.split('-').next()?.parse().ok()
}

/// Removes everything left by harness runs whose process is dead: network
/// namespaces `pal-<pid>-*` (and the processes inside them), pin directories
/// `/sys/fs/bpf/palisade-test/<pid>-*`, temp dirs and lock files. Objects of
/// live processes (including this one) are left alone. Returns what it removed.
pub fn cleanup_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let mut dead = BTreeSet::new();
    for ns in list_netns() {
        if !ns.starts_with(NETNS_PREFIX) {
            continue;
        }
        let Some(pid) = owner_pid(&ns) else { continue };
        if owner_is_dead(pid) {
            delete_netns(&ns);
            dead.insert(pid);
            removed.push(format!("netns {ns}"));
        }
    }
    if let Ok(rd) = fs::read_dir(PIN_ROOT) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = owner_pid(&name) {
                if owner_is_dead(pid) {
                    let _ = fs::remove_dir_all(e.path());
                    dead.insert(pid);
                    removed.push(format!("pin dir {}", e.path().display()));
                }
            }
        }
    }
    if let Ok(rd) = fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
                continue;
            };
            if let Some(pid) = owner_pid(rest) {
                if owner_is_dead(pid) {
                    let _ = fs::remove_dir_all(e.path());
                    removed.push(format!("temp dir {}", e.path().display()));
                }
            }
        }
    }
    if let Ok(rd) = fs::read_dir(LOCK_DIR) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_suffix(".lock")
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if owner_is_dead(pid) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    removed
}

// ---------------------------------------------------------------- teardown registry

/// What must be undone for one cluster. Shared between the cluster (Drop) and
/// the signal watcher, so both paths run the same idempotent teardown.
#[derive(Default, Debug)]
pub(crate) struct Resources {
    pub netns: Vec<String>,
    pub agent_pids: BTreeSet<i32>,
    pub pin_dirs: Vec<PathBuf>,
    pub temp_dir: Option<PathBuf>,
    pub keep_temp: bool,
}

pub(crate) type SharedResources = Arc<Mutex<Resources>>;

static REGISTRY: Mutex<Vec<SharedResources>> = Mutex::new(Vec::new());

pub(crate) fn register(res: &SharedResources) {
    install_signal_handler();
    lock(&REGISTRY).push(res.clone());
}

pub(crate) fn unregister(res: &SharedResources) {
    lock(&REGISTRY).retain(|r| !Arc::ptr_eq(r, res));
}

/// Locks a mutex, ignoring poisoning: teardown must run even after a panic
/// in another thread that held the lock.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills agents, deletes namespaces and removes pin dirs (and the temp dir
/// unless asked to keep it). Idempotent.
pub(crate) fn release(res: &mut Resources) {
    for pid in std::mem::take(&mut res.agent_pids) {
        // SAFETY: kill(2) on the pid of an agent this process started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let mut status = 0;
        // SAFETY: reaps our own child; WNOHANG-free wait is fine after SIGKILL.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    // Namespaces are independent: delete them in parallel (each takes two
    // `ip` processes).
    let names = std::mem::take(&mut res.netns);
    std::thread::scope(|s| {
        for ns in &names {
            s.spawn(move || delete_netns(ns));
        }
    });
    for dir in std::mem::take(&mut res.pin_dirs) {
        let _ = fs::remove_dir_all(dir);
    }
    if let Some(dir) = res.temp_dir.take() {
        if !res.keep_temp {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

// ---------------------------------------------------------------- signals

static SIGNAL_INIT: Once = Once::new();
static mut SIGNAL_PIPE_WR: libc::c_int = -1;

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only async-signal-safe work here: wake the watcher thread.
    // SAFETY: write(2) is async-signal-safe; the fd was set before the handler.
    unsafe {
        let fd = SIGNAL_PIPE_WR;
        if fd >= 0 {
            let b = 1u8;
            libc::write(fd, &b as *const u8 as *const libc::c_void, 1);
        }
    }
}

/// Installs SIGINT/SIGTERM handlers (once per process) that tear down every
/// live cluster and then exit with status 130. Called automatically when a
/// cluster is built; callable early by binaries that want it sooner.
pub fn install_signal_handler() {
    SIGNAL_INIT.call_once(|| {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills two fds.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return;
        }
        // SAFETY: set once, before any handler is installed.
        unsafe { SIGNAL_PIPE_WR = fds[1] };
        let rd = fds[0];
        let spawned = std::thread::Builder::new()
            .name("palisade-harness-signals".into())
            .spawn(move || {
                let mut b = [0u8; 1];
                // SAFETY: we own `rd`; File takes it over.
                let mut f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(rd) };
                if f.read(&mut b).is_ok() {
                    eprintln!("palisade-harness: interrupted, tearing down");
                    let all: Vec<_> = lock(&REGISTRY).clone();
                    for r in all {
                        release(&mut lock(&r));
                    }
                    std::process::exit(130);
                }
            });
        if spawned.is_err() {
            return;
        }
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: installs a handler that only calls write(2).
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    });
}

/// Checks that we can manage network namespaces at all (root, iproute2).
pub fn check_privileges() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(anyhow!(
            "the cluster harness needs root (it creates network namespaces)"
        ));
    }
    run_cmd("ip", &["-V"], None).context("iproute2 `ip` is required")?;
    Ok(())
}
