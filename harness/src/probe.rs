//! Reachability probes, run in parallel from inside source namespaces.
//!
//! Probes are grouped by source namespace; each group (in chunks, to bound
//! open sockets) gets a fresh thread that enters the namespace, starts every
//! probe without blocking (TCP/SCTP non-blocking connect, UDP datagram) and
//! waits for all of them together with poll(2). A whole matrix therefore takes
//! about one timeout, whatever its size.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use socket2::{Domain, SockAddr, Socket};

use crate::model::Transport;
use crate::netns::{enter_netns, netns_path};
use crate::servers::{sctp_supported, stream_socket, WHOAMI};

/// Default probe timeout (FORMAT.md: 1 s).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Probes per thread: bounds open sockets per thread and keeps poll sets small.
const CHUNK: usize = 256;

/// A probe between namespaces, in resolved form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawProbe {
    /// Source network namespace.
    pub netns: String,
    /// Destination address and port.
    pub to: SocketAddr,
    pub protocol: Transport,
}

/// Result of one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Connected (TCP/SCTP) or answered (UDP) within the timeout.
    Reachable,
    /// Timed out, refused or otherwise failed.
    Blocked,
    /// Not run: the kernel has no SCTP.
    Skipped,
}

/// Runs every probe in parallel and returns outcomes in input order.
pub fn run_probes(probes: &[RawProbe], timeout: Duration) -> Result<Vec<Outcome>> {
    let mut out = vec![Outcome::Skipped; probes.len()];
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in probes.iter().enumerate() {
        if p.protocol == Transport::Sctp && !sctp_supported() {
            continue;
        }
        groups.entry(p.netns.as_str()).or_default().push(i);
    }
    let mut jobs = Vec::new();
    for (ns, idxs) in groups {
        for chunk in idxs.chunks(CHUNK) {
            let file = File::open(netns_path(ns)).with_context(|| format!("open netns {ns}"))?;
            jobs.push((ns.to_string(), file, chunk.to_vec()));
        }
    }
    scatter(&mut out, jobs, |(ns, file, idxs)| {
        enter_netns(&file).with_context(|| format!("enter {ns}"))?;
        let batch: Vec<&RawProbe> = idxs.iter().map(|&i| &probes[i]).collect();
        let res = probe_group(&batch, timeout);
        Ok(idxs.into_iter().zip(res).collect())
    })?;
    Ok(out)
}

/// Probes `targets` from the calling process's own network namespace (a pod of a
/// real cluster: `palisade-pod probe`), all in parallel; outcomes in input order.
/// SCTP targets are [`Outcome::Skipped`] when the kernel has no SCTP.
pub fn probe_here(targets: &[(SocketAddr, Transport)], timeout: Duration) -> Result<Vec<Outcome>> {
    let probes: Vec<RawProbe> = targets
        .iter()
        .map(|&(to, protocol)| RawProbe {
            netns: String::new(),
            to,
            protocol,
        })
        .collect();
    let mut out = vec![Outcome::Skipped; probes.len()];
    let runnable: Vec<usize> = (0..probes.len())
        .filter(|&i| probes[i].protocol != Transport::Sctp || sctp_supported())
        .collect();
    scatter(&mut out, runnable.chunks(CHUNK), |idxs| {
        let batch: Vec<&RawProbe> = idxs.iter().map(|&i| &probes[i]).collect();
        Ok(idxs
            .iter()
            .copied()
            .zip(probe_group(&batch, timeout))
            .collect())
    })?;
    Ok(out)
}

/// Runs `job` once per item of `jobs`, each on its own scoped thread, and writes
/// the (input index, outcome) pairs they return into `out`. A job's panic is
/// resumed here; the first error is returned once every job has finished.
pub(crate) fn scatter<J: Send>(
    out: &mut [Outcome],
    jobs: impl IntoIterator<Item = J>,
    job: impl Fn(J) -> Result<Vec<(usize, Outcome)>> + Sync,
) -> Result<()> {
    let results: Vec<Result<Vec<(usize, Outcome)>>> = std::thread::scope(|s| {
        let job = &job;
        let handles: Vec<_> = jobs.into_iter().map(|j| s.spawn(move || job(j))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    for r in results {
        for (i, o) in r? {
            out[i] = o;
        }
    }
    Ok(())
}

enum State {
    Connecting(Socket),
    Udp(Socket, Vec<u8>),
    Done(Outcome),
}

fn domain_of(a: &SocketAddr) -> Domain {
    if a.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

fn start(p: &RawProbe, seq: usize) -> State {
    let Ok(s) = stream_socket(domain_of(&p.to), p.protocol) else {
        return State::Done(Outcome::Blocked);
    };
    if s.set_nonblocking(true).is_err() {
        return State::Done(Outcome::Blocked);
    }
    let to = SockAddr::from(p.to);
    match p.protocol {
        Transport::Tcp | Transport::Sctp => match s.connect(&to) {
            Ok(()) => State::Done(Outcome::Reachable),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => State::Connecting(s),
            Err(_) => State::Done(Outcome::Blocked),
        },
        Transport::Udp => {
            // A connected UDP socket also reports ICMP unreachable as ECONNREFUSED.
            if s.connect(&to).is_err() {
                return State::Done(Outcome::Blocked);
            }
            let payload = format!("palisade-probe-{}-{seq}", std::process::id()).into_bytes();
            let _ = s.send(&payload);
            State::Udp(s, payload)
        }
    }
}

fn probe_group(probes: &[&RawProbe], timeout: Duration) -> Vec<Outcome> {
    let deadline = Instant::now() + timeout;
    let mut states: Vec<State> = probes
        .iter()
        .enumerate()
        .map(|(i, p)| start(p, i))
        .collect();
    let mut last_resend = Instant::now();
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // UDP has no retransmission of its own; resend so one datagram lost
        // while a neighbour entry resolves does not read as "blocked".
        if now.duration_since(last_resend) >= Duration::from_millis(250) {
            last_resend = now;
            for st in &states {
                if let State::Udp(s, payload) = st {
                    let _ = s.send(payload);
                }
            }
        }
        let mut pfds = Vec::new();
        let mut owners = Vec::new();
        for (i, st) in states.iter().enumerate() {
            let (fd, ev) = match st {
                State::Connecting(s) => (s.as_raw_fd(), libc::POLLOUT),
                State::Udp(s, _) => (s.as_raw_fd(), libc::POLLIN),
                State::Done(_) => continue,
            };
            pfds.push(libc::pollfd {
                fd,
                events: ev,
                revents: 0,
            });
            owners.push(i);
        }
        if pfds.is_empty() {
            break;
        }
        let wait = deadline
            .saturating_duration_since(now)
            .min(Duration::from_millis(250))
            .as_millis()
            .max(1) as libc::c_int;
        // SAFETY: pfds is a valid pollfd array for the duration of the call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, wait) };
        if n <= 0 {
            continue;
        }
        for (pfd, &i) in pfds.iter().zip(&owners) {
            if pfd.revents == 0 {
                continue;
            }
            let next = match &states[i] {
                State::Connecting(s) => match s.take_error() {
                    Ok(None) => Some(Outcome::Reachable),
                    _ => Some(Outcome::Blocked),
                },
                State::Udp(s, payload) => {
                    // SAFETY: same layout; recv only writes initialized bytes it reports.
                    let ubuf =
                        unsafe { &mut *(&mut buf[..] as *mut [u8] as *mut [MaybeUninit<u8>]) };
                    match s.recv(ubuf) {
                        Ok(len) if buf[..len] == payload[..] => Some(Outcome::Reachable),
                        Ok(_) => None,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                        Err(_) => Some(Outcome::Blocked),
                    }
                }
                State::Done(_) => None,
            };
            if let Some(o) = next {
                states[i] = State::Done(o);
            }
        }
    }
    states
        .into_iter()
        .map(|st| match st {
            State::Done(o) => o,
            _ => Outcome::Blocked,
        })
        .collect()
}

/// Asks the server behind `to` who it is (`whoami`), from inside `netns`.
/// Returns `None` when nothing answered within `timeout`. Used to see which
/// backend a Service picked.
pub fn whoami(
    netns: &str,
    to: SocketAddr,
    protocol: Transport,
    timeout: Duration,
) -> Result<Option<String>> {
    crate::netns::in_netns(netns, move || -> Option<String> {
        use std::io::{Read, Write};
        match protocol {
            Transport::Udp => {
                let s = stream_socket(domain_of(&to), Transport::Udp).ok()?;
                s.connect(&SockAddr::from(to)).ok()?;
                s.set_read_timeout(Some(timeout)).ok()?;
                s.send(WHOAMI).ok()?;
                let mut buf = [MaybeUninit::<u8>::uninit(); 512];
                let n = s.recv(&mut buf).ok()?;
                // SAFETY: recv initialized the first n bytes.
                let bytes: Vec<u8> = buf[..n]
                    .iter()
                    .map(|b| unsafe { b.assume_init() })
                    .collect();
                Some(String::from_utf8_lossy(&bytes).trim().to_string())
            }
            Transport::Tcp | Transport::Sctp => {
                if protocol == Transport::Sctp && !sctp_supported() {
                    return None;
                }
                let s = stream_socket(domain_of(&to), protocol).ok()?;
                s.connect_timeout(&SockAddr::from(to), timeout).ok()?;
                s.set_read_timeout(Some(timeout)).ok()?;
                let mut rw: &Socket = &s;
                rw.write_all(WHOAMI).ok()?;
                let mut out = String::new();
                let _ = rw.read_to_string(&mut out);
                let out = out.trim().to_string();
                (!out.is_empty()).then_some(out)
            }
        }
    })
}

/// A long-lived connection to an echo server, opened from inside a namespace:
/// for checks that established flows survive (agent restarts, policy
/// changes). The socket stays in the source namespace; the value can be used
/// from any thread.
pub struct Connection {
    sock: Socket,
    /// Where it connects.
    pub to: SocketAddr,
    seq: u64,
}

impl Connection {
    /// Connects from inside `netns` (TCP or SCTP) within `timeout`.
    pub fn open(
        netns: &str,
        to: SocketAddr,
        protocol: Transport,
        timeout: Duration,
    ) -> Result<Connection> {
        if protocol == Transport::Udp {
            anyhow::bail!("a Connection is TCP or SCTP");
        }
        let sock = crate::netns::in_netns(netns, move || -> std::io::Result<Socket> {
            let s = stream_socket(domain_of(&to), protocol)?;
            s.connect_timeout(&SockAddr::from(to), timeout)?;
            Ok(s)
        })?
        .with_context(|| format!("connect {protocol} {to} from {netns}"))?;
        Ok(Connection { sock, to, seq: 0 })
    }

    /// Sends a line and waits for its echo within `timeout`. False when the
    /// connection broke or nothing came back in time.
    pub fn roundtrip(&mut self, timeout: Duration) -> bool {
        use std::io::{Read, Write};
        self.seq += 1;
        let msg = format!("ping-{}\n", self.seq).into_bytes();
        let mut rw: &Socket = &self.sock;
        if self.sock.set_read_timeout(Some(timeout)).is_err() || rw.write_all(&msg).is_err() {
            return false;
        }
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.len() < msg.len() && Instant::now() < deadline {
            match rw.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got == msg
    }
}
