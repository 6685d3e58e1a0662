//! Booting the guest: qemu under software emulation, its serial console read
//! until the init's result marker, a panic or the timeout; the summary table.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::Instant,
};

use super::{kernel::Kernel, Options};

/// What one boot of a guest found.
pub(super) struct Outcome {
    pub(super) kernel: String,
    pub(super) attach_mode: String,
    pub(super) passed: u64,
    pub(super) failed: u64,
    pub(super) ignored: u64,
    pub(super) secs: f64,
    pub(super) error: Option<String>,
    /// The guest kernel panicked (not a test failure).
    pub(super) kernel_fault: bool,
    /// The first boot's fault, when this outcome is of a second boot.
    pub(super) first_boot: Option<String>,
}

/// The guest kernel's command line. Warnings reach the console (loglevel 5:
/// the call traces of a warning or a lockup are printed at level 4), and a soft
/// lockup panics with every CPU's backtrace, so a hung guest ends at once with
/// its cause in the log instead of at the timeout with none.
const GUEST_CMDLINE: &str = "console=ttyS0 panic=-1 loglevel=5 softlockup_panic=1 \
    softlockup_all_cpu_backtrace=1 rdinit=/init mitigations=off";

pub(super) fn boot(kernel: &Kernel, initrd: &Path, opts: &Options) -> Outcome {
    let start = Instant::now();
    let mut outcome = Outcome {
        kernel: kernel.release.clone(),
        attach_mode: "-".into(),
        passed: 0,
        failed: 0,
        ignored: 0,
        secs: 0.0,
        error: None,
        kernel_fault: false,
        first_boot: None,
    };
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "2G", "-smp", "2", "-nodefaults"])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", GUEST_CMDLINE])
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
    outcome.kernel_fault = panic && !timed_out;
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

pub(super) fn print_summary(outcomes: &[Outcome]) {
    println!();
    println!(
        "{:<24} {:<8} {:>6} {:>6} {:>7} {:>7}  result",
        "kernel", "attach", "passed", "failed", "skipped", "secs"
    );
    for o in outcomes {
        let result = o.error.as_deref().unwrap_or("ok");
        let result = match &o.first_boot {
            Some(first) if o.error.is_none() => {
                format!("ok on the second boot (first boot: {first})")
            }
            Some(first) => format!("{result} (first boot: {first})"),
            None => result.to_string(),
        };
        println!(
            "{:<24} {:<8} {:>6} {:>6} {:>7} {:>7.1}  {}",
            o.kernel, o.attach_mode, o.passed, o.failed, o.ignored, o.secs, result
        );
    }
}
