//! The servers every pod (and external host) runs on its listed ports: a TCP
//! listener and an SCTP listener that echo (or answer `whoami` with the
//! server's identity), and a UDP echo (same `whoami` rule). One dedicated
//! thread per namespace enters it, binds all sockets and serves them with
//! poll(2) until stopped; that thread is never used for anything else.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use socket2::{Domain, Protocol as SockProto, SockAddr, Socket, Type};

use crate::model::{Family, PortPlan, Transport};
use crate::netns::{enter_netns, netns_path};

/// Request that makes a server answer with its identity instead of echoing.
pub const WHOAMI: &[u8] = b"whoami";

const IPPROTO_SCTP: i32 = 132;

/// Whether the running kernel can create SCTP sockets. Probed once, in a
/// throwaway socket; the answer decides whether SCTP servers start and SCTP
/// probes run or are reported as skipped.
pub fn sctp_supported() -> bool {
    static SCTP: OnceLock<bool> = OnceLock::new();
    *SCTP.get_or_init(|| {
        Socket::new(
            Domain::IPV4,
            Type::STREAM,
            Some(SockProto::from(IPPROTO_SCTP)),
        )
        .is_ok()
    })
}

pub(crate) fn stream_socket(domain: Domain, proto: Transport) -> std::io::Result<Socket> {
    match proto {
        Transport::Tcp => Socket::new(domain, Type::STREAM, Some(SockProto::TCP)),
        Transport::Sctp => Socket::new(domain, Type::STREAM, Some(SockProto::from(IPPROTO_SCTP))),
        Transport::Udp => Socket::new(domain, Type::DGRAM, Some(SockProto::UDP)),
    }
}

/// Running servers of one namespace; stopped (and joined) on drop.
pub struct ServerSet {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ServerSet {
    /// Enters `ns`, binds every port in `ports` (SCTP only when supported) on
    /// the wildcard address of `family`, and serves them on a dedicated thread.
    /// `identity` is what a `whoami` request gets back.
    pub fn start(ns: &str, family: Family, identity: &str, ports: &[PortPlan]) -> Result<Self> {
        Self::start_on(ns, family, identity, ports, None)
    }

    /// [`ServerSet::start`], bound to `addr` instead of the wildcard: a node
    /// has several addresses, and a UDP answer must come from the one the
    /// client asked (a connected client drops any other).
    pub fn start_on(
        ns: &str,
        family: Family,
        identity: &str,
        ports: &[PortPlan],
        addr: Option<IpAddr>,
    ) -> Result<Self> {
        let file = File::open(netns_path(ns)).with_context(|| format!("open netns {ns}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Result<()>>();
        let ports: Vec<PortPlan> = ports
            .iter()
            .filter(|p| p.protocol != Transport::Sctp || sctp_supported())
            .cloned()
            .collect();
        let identity = identity.to_string();
        let stop2 = stop.clone();
        let ns_name = ns.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("srv-{ns}"))
            .spawn(move || {
                let sockets = match enter_netns(&file).and_then(|_| bind_all(family, &ports, addr))
                {
                    Ok(s) => {
                        let _ = tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.context(format!("servers in {ns_name}"))));
                        return;
                    }
                };
                serve(sockets, identity.as_bytes(), &stop2);
            })
            .context("spawn server thread")?;
        match rx.recv() {
            Ok(Ok(())) => Ok(ServerSet {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(anyhow!("server thread for {ns} died during start")),
        }
    }

    /// Asks the thread to stop without waiting (so many sets stop in parallel).
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stops serving and waits for the thread (at most one poll interval).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerSet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds every port in `ports` in the calling process's own network namespace and
/// serves them until the process ends: what a pod of a real cluster runs
/// (`palisade-pod serve`). SCTP ports are left out when the kernel has no SCTP.
pub fn serve_here(family: Family, identity: &str, ports: &[PortPlan]) -> Result<()> {
    let ports: Vec<PortPlan> = ports
        .iter()
        .filter(|p| p.protocol != Transport::Sctp || sctp_supported())
        .cloned()
        .collect();
    let sockets = bind_all(family, &ports, None)?;
    serve(sockets, identity.as_bytes(), &AtomicBool::new(false));
    Ok(())
}

enum Kind {
    Listener,
    Udp,
    Conn { answered: bool },
}

fn wildcard(family: Family, port: u16) -> SocketAddr {
    match family {
        Family::Ipv4 => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        Family::Ipv6 => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
    }
}

fn bind_all(family: Family, ports: &[PortPlan], on: Option<IpAddr>) -> Result<Vec<(Socket, Kind)>> {
    let domain = match family {
        Family::Ipv4 => Domain::IPV4,
        Family::Ipv6 => Domain::IPV6,
    };
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for p in ports {
        // Two names for the same port/protocol would bind twice; one server suffices.
        if !seen.insert((p.port, p.protocol)) {
            continue;
        }
        let addr = match on {
            Some(ip) => SocketAddr::new(ip, p.port),
            None => wildcard(family, p.port),
        };
        let s = stream_socket(domain, p.protocol)
            .with_context(|| format!("{} socket for port {}", p.protocol, p.port))?;
        if family == Family::Ipv6 {
            s.set_only_v6(true)?;
        }
        s.set_reuse_address(true)?;
        s.bind(&SockAddr::from(addr))
            .with_context(|| format!("bind {} {addr}", p.protocol))?;
        let kind = if p.protocol == Transport::Udp {
            Kind::Udp
        } else {
            s.listen(1024)?;
            Kind::Listener
        };
        s.set_nonblocking(true)?;
        out.push((s, kind));
    }
    Ok(out)
}

fn serve(mut socks: Vec<(Socket, Kind)>, identity: &[u8], stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut pfds: Vec<libc::pollfd> = socks
            .iter()
            .map(|(s, _)| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: pfds is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 100) };
        if n <= 0 {
            continue;
        }
        let mut new_conns = Vec::new();
        let mut closed: HashMap<usize, ()> = HashMap::new();
        for (i, pfd) in pfds.iter().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            let (sock, kind) = &mut socks[i];
            match kind {
                Kind::Listener => {
                    while let Ok((c, _)) = sock.accept() {
                        if c.set_nonblocking(true).is_ok() {
                            new_conns.push((c, Kind::Conn { answered: false }));
                        }
                    }
                }
                Kind::Udp => loop {
                    // SAFETY: u8 and MaybeUninit<u8> have the same layout; recv only writes.
                    let ubuf = unsafe {
                        &mut *(buf.as_mut_slice() as *mut [u8] as *mut [MaybeUninit<u8>])
                    };
                    match sock.recv_from(ubuf) {
                        Ok((len, from)) => {
                            let data = &buf[..len];
                            let reply = if data.starts_with(WHOAMI) {
                                identity
                            } else {
                                data
                            };
                            let _ = sock.send_to(reply, &from);
                        }
                        Err(_) => break,
                    }
                },
                Kind::Conn { answered } => {
                    let mut s: &Socket = sock;
                    match s.read(&mut buf) {
                        Ok(0) => {
                            closed.insert(i, ());
                        }
                        Ok(len) => {
                            if !*answered && buf[..len].starts_with(WHOAMI) {
                                let mut reply = identity.to_vec();
                                reply.push(b'\n');
                                let _ = s.write_all(&reply);
                                closed.insert(i, ());
                            } else {
                                *answered = true;
                                // Echo; a peer that does not read is its own problem.
                                let _ = s.write(&buf[..len]);
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => {
                            closed.insert(i, ());
                        }
                    }
                }
            }
        }
        if !closed.is_empty() {
            let mut i = 0;
            socks.retain(|_| {
                let keep = !closed.contains_key(&i);
                i += 1;
                keep
            });
        }
        socks.extend(new_conns);
    }
}
