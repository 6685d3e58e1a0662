//! PID 1 of the `cargo xtask vm-test` guest.
//!
//! Mounts proc, sys, devtmpfs, bpffs and cgroup2, loads the kernel modules listed
//! in `/palisade/modules` (one path a line, dependencies first), runs every suite
//! in `/palisade/suites` (`name<TAB>binary<TAB>args...`, libtest binaries), echoes
//! their output to the console, and ends with one marker line the host reads:
//!
//! ```text
//! PALISADE-VM-SUITE: <name> status=ok|FAILED passed=N failed=N ignored=N secs=S min_available_mib=M
//! PALISADE-VM-RESULT: PASS|FAIL passed=N failed=N ignored=N
//! ```
//!
//! then powers the machine off. Anything that goes wrong is printed and counted as
//! a failure; the guest never stays up.
use std::{
    ffi::CString,
    fs,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// The lowest `MemAvailable` (KiB) seen since the last reset: the guest has
/// 2 GiB and no swap, and every agent preallocates its conntrack tables, so a
/// suite's low-water mark shows how close it came to memory exhaustion.
static MIN_AVAILABLE_KIB: AtomicU64 = AtomicU64::new(u64::MAX);

fn mem_available_kib() -> Option<u64> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples `MemAvailable` every 200 ms for the life of the guest.
fn watch_memory() {
    std::thread::spawn(|| loop {
        if let Some(kib) = mem_available_kib() {
            MIN_AVAILABLE_KIB.fetch_min(kib, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(200));
    });
}

fn main() {
    let ok = std::panic::catch_unwind(run).unwrap_or_else(|_| {
        println!("PALISADE-VM-RESULT: FAIL init panicked");
        false
    });
    let _ = std::io::stdout().flush();
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF);
    }
    // Not reached as PID 1; useful when run by hand.
    std::process::exit(if ok { 0 } else { 1 });
}

fn mount(src: &str, target: &str, fstype: &str) {
    let _ = fs::create_dir_all(target);
    let c = |s: &str| CString::new(s).expect("no NUL");
    let (s, t, f) = (c(src), c(target), c(fstype));
    let r = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    if r != 0 {
        println!(
            "palisade-vm-init: mount {fstype} on {target}: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn load_module(path: &str) -> Result<(), String> {
    let file = fs::File::open(path).map_err(|e| format!("open: {e}"))?;
    let params = CString::default();
    let r = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            params.as_ptr(),
            0,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e.to_string());
        }
    }
    Ok(())
}

#[derive(Default)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// libtest's `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; ...`, or
/// the conformance runner's last line `3 passed, 0 failed, 1 skipped`.
fn parse_result(line: &str, c: &mut Counts) -> bool {
    let rest = match line.strip_prefix("test result: ") {
        Some(rest) => rest.replace(',', ";"),
        None if line.ends_with(" skipped") && line.contains(" passed, ") => {
            line.replace(',', ";").replace("skipped", "ignored")
        }
        None => return false,
    };
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(what), Some(n)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => c.passed += n,
            "failed" => c.failed += n,
            "ignored" => c.ignored += n,
            _ => {}
        }
    }
    true
}

fn run_suite(name: &str, bin: &str, args: &[&str], total: &mut Counts) -> bool {
    println!("PALISADE-VM-SUITE-START: {name}");
    MIN_AVAILABLE_KIB.store(mem_available_kib().unwrap_or(u64::MAX), Ordering::Relaxed);
    let start = Instant::now();
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            println!("PALISADE-VM-SUITE: {name} status=FAILED could not start {bin}: {e}");
            total.failed += 1;
            return false;
        }
    };
    let mut c = Counts::default();
    let mut saw_result = false;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            saw_result |= parse_result(&line, &mut c);
        }
    }
    let status = child.wait().map(|s| s.success()).unwrap_or(false);
    let ok = status && saw_result && c.failed == 0;
    if !ok && c.failed == 0 {
        // Crashed or never summarised: count the suite itself as a failure.
        c.failed = 1;
    }
    println!(
        "PALISADE-VM-SUITE: {name} status={} passed={} failed={} ignored={} secs={:.1} min_available_mib={}",
        if ok { "ok" } else { "FAILED" },
        c.passed,
        c.failed,
        c.ignored,
        start.elapsed().as_secs_f64(),
        MIN_AVAILABLE_KIB.load(Ordering::Relaxed) >> 10
    );
    total.passed += c.passed;
    total.failed += c.failed;
    total.ignored += c.ignored;
    ok
}

fn run() -> bool {
    std::env::set_var("PATH", "/bin:/sbin:/usr/bin:/usr/sbin");
    std::env::set_var("RUST_BACKTRACE", "1");
    if fs::metadata("/palisade/bin/palisade-agent").is_ok() {
        std::env::set_var("PALISADE_AGENT", "/palisade/bin/palisade-agent");
    }
    if fs::metadata("/palisade/bin/palisade-agent-test-layout").is_ok() {
        std::env::set_var(
            "PALISADE_AGENT_TEST_LAYOUT",
            "/palisade/bin/palisade-agent-test-layout",
        );
    }
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    mount("tmpfs", "/tmp", "tmpfs");
    mount("tmpfs", "/run", "tmpfs");
    mount("bpf", "/sys/fs/bpf", "bpf");
    mount("cgroup2", "/sys/fs/cgroup", "cgroup2");
    watch_memory();
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("PALISADE-VM-KERNEL: {}", release.trim());

    let mut ok = true;
    for path in fs::read_to_string("/palisade/modules")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        if let Err(e) = load_module(path) {
            println!("PALISADE-VM-MODULE: {path} FAILED: {e}");
            ok = false;
        }
    }
    // Loopback up: some tests talk over it.
    let _ = Command::new("/bin/ip")
        .args(["link", "set", "lo", "up"])
        .status();

    let mut total = Counts::default();
    let suites = fs::read_to_string("/palisade/suites").unwrap_or_default();
    for line in suites.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = line.split('\t');
        let (Some(name), Some(bin)) = (f.next(), f.next()) else {
            continue;
        };
        let args: Vec<&str> = f.collect();
        ok &= run_suite(name, bin, &args, &mut total);
    }
    if suites.trim().is_empty() {
        println!("palisade-vm-init: no suites in /palisade/suites");
        ok = false;
    }
    println!(
        "PALISADE-VM-RESULT: {} passed={} failed={} ignored={}",
        if ok { "PASS" } else { "FAIL" },
        total.passed,
        total.failed,
        total.ignored
    );
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libtest_and_conformance_summaries() {
        let mut c = Counts::default();
        assert!(parse_result(
            "test result: ok. 18 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1.1s",
            &mut c
        ));
        assert!(parse_result("6 passed, 0 failed, 1 skipped", &mut c));
        assert!(!parse_result("PASS 380-sctp-port", &mut c));
        assert_eq!((c.passed, c.failed, c.ignored), (24, 1, 3));
    }
}
