//! Shared pieces of the end-to-end benchmarks (`bench_e2e`, `bench_control`,
//! `bench_events`): threads inside a network namespace, iperf3 and the
//! connect/accept loop, process statistics from /proc, tables, JSON and a
//! hand-written SVG bar chart under `results/`.
//!
//! Every example includes this module with `mod bench_util;` and uses a part
//! of it, hence the `dead_code` allowance.
#![allow(
    dead_code,
    reason = "each benchmark that includes this module uses part of it"
)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

// ---------------------------------------------------------------- namespaces

/// Spawns a thread that enters network namespace `ns` and runs `f`.
pub fn spawn_in<F, R>(ns: &str, f: F) -> Result<std::thread::JoinHandle<Result<R>>>
where
    F: FnOnce() -> Result<R> + Send + 'static,
    R: Send + 'static,
{
    let file =
        File::open(Path::new("/run/netns").join(ns)).with_context(|| format!("open netns {ns}"))?;
    let ns = ns.to_string();
    Ok(std::thread::spawn(move || -> Result<R> {
        // SAFETY: setns only reads the fd; it affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("setns into {ns}"));
        }
        drop(file);
        f()
    }))
}

/// Joins a thread started by [`spawn_in`].
pub fn join<R>(h: std::thread::JoinHandle<Result<R>>) -> Result<R> {
    h.join().map_err(|_| anyhow!("benchmark thread panicked"))?
}

/// `ip netns exec <ns> sysctl -q -w <settings...>`.
pub fn sysctl_in(ns: &str, settings: &[&str]) -> Result<()> {
    let mut args = vec!["-q", "-w"];
    args.extend_from_slice(settings);
    palisade_harness::netns::exec_in(ns, "sysctl", &args, None).map(|_| ())
}

// ---------------------------------------------------------------- iperf3

/// An `iperf3 -s` running inside a namespace; killed on drop.
pub struct Iperf3Server(Child);

impl Iperf3Server {
    pub fn start(ns: &str, port: u16) -> Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "iperf3", "-s", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 -s (is iperf3 installed? cargo xtask setup installs it)")?;
        // iperf3 listens within a few ms; give it time before the first client.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Iperf3Server(child))
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        // `ip netns exec` execs iperf3 in place, so this pid is iperf3's.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs an iperf3 TCP client inside `ns` for `secs` seconds (after a 1 s
/// omitted warm-up) and returns the receiver's Gbit/s.
pub fn iperf3_tcp(ns: &str, server: std::net::IpAddr, port: u16, secs: u32) -> Result<f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "iperf3", "-J", "-c"])
        .arg(server.to_string())
        .args(["-p", &port.to_string(), "-t", &secs.to_string(), "-O", "1"])
        .stdin(Stdio::null())
        .output()
        .context("run iperf3 -c")?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("iperf3 -c {server}: {e}");
    }
    let bps = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .ok_or_else(|| anyhow!("iperf3 JSON has no end.sum_received.bits_per_second"))?;
    Ok(bps / 1e9)
}

// ---------------------------------------------------------------- connect/accept loop

/// A connect/accept server inside a namespace: accepts, reads one byte, writes
/// one byte, closes (the server closes first, so clients keep no TIME_WAIT
/// sockets and do not run out of ports). Stops on drop.
pub struct ConnServer {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
}

impl ConnServer {
    pub fn start(ns: &str, port: u16, threads: usize) -> Result<Self> {
        let listener = join(spawn_in(ns, move || {
            let l = TcpListener::bind(("0.0.0.0", port)).context("bind connect/accept server")?;
            // accept(2) honours SO_RCVTIMEO: threads wake up to see the stop flag.
            socket2::SockRef::from(&l).set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(l)
        })?)?;
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let mut hs = Vec::new();
        for _ in 0..threads.max(1) {
            let (l, stop) = (listener.clone(), stop.clone());
            hs.push(std::thread::spawn(move || -> Result<()> {
                let mut b = [0u8; 1];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut s, _)) = l.accept() else {
                        continue;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    if matches!(s.read(&mut b), Ok(1)) {
                        let _ = s.write_all(&b);
                    }
                }
                Ok(())
            }));
        }
        Ok(ConnServer { stop, threads: hs })
    }
}

impl Drop for ConnServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

/// Result of [`conn_rate`].
#[derive(Clone, Copy, Debug)]
pub struct ConnRate {
    pub per_sec: f64,
    pub connections: u64,
    pub failures: u64,
}

/// Opens connections from inside `ns` to `to` for `dur` on `threads` threads:
/// connect, write a byte, read the echo, read EOF, close. Returns completed
/// connections per second.
pub fn conn_rate(ns: &str, to: SocketAddr, dur: Duration, threads: usize) -> Result<ConnRate> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + dur;
    let mut hs = Vec::new();
    for _ in 0..threads.max(1) {
        let (done, failed) = (done.clone(), failed.clone());
        hs.push(spawn_in(ns, move || -> Result<()> {
            let mut b = [0u8; 1];
            while Instant::now() < deadline {
                let ok = (|| -> std::io::Result<bool> {
                    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
                    s.set_read_timeout(Some(Duration::from_secs(1)))?;
                    s.set_nodelay(true)?;
                    s.write_all(b"x")?;
                    s.read_exact(&mut b)?;
                    Ok(s.read(&mut b)? == 0)
                })()
                .unwrap_or(false);
                if ok {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })?);
    }
    for h in hs {
        join(h)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    Ok(ConnRate {
        per_sec: n as f64 / secs,
        connections: n,
        failures: failed.load(Ordering::Relaxed),
    })
}

// ---------------------------------------------------------------- /proc

/// Pids of processes named `comm` living in network namespace `ns`.
pub fn pids_in_netns(ns: &str, comm: &str) -> Vec<i32> {
    let Ok(out) = palisade_harness::netns::run_cmd("ip", &["netns", "pids", ns], None) else {
        return Vec::new();
    };
    out.split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == comm || comm.starts_with(c.trim()))
                .unwrap_or(false)
        })
        .collect()
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

// ---------------------------------------------------------------- statistics

/// The `q` quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median (mean of the two middle values for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

pub use palisade_bench_report::*;

/// The agent binary: `$PALISADE_AGENT` or `target/release/palisade-agent`.
pub fn agent_binary() -> Result<PathBuf> {
    let p = std::env::var_os("PALISADE_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/palisade-agent")
        });
    if !p.exists() {
        bail!(
            "agent binary {} not found: cargo build --release -p palisade-agent, or set PALISADE_AGENT",
            p.display()
        );
    }
    Ok(p)
}
