//! Traffic that runs through every part of the soak: echoes on long-lived
//! allowed connections x/a -> x/b TCP 80, and datagrams y/a -> x/b UDP 81,
//! which no policy allows (an echo is a datagram that got in).
use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use palisade_harness::{in_netns, Cluster, Connection, Peer, Transport, Via};

/// Long-lived connections x/a -> x/b.
pub const CONNECTIONS: usize = 4;

/// Traffic that runs through both parts: echoes on the allowed connections,
/// datagrams to the denied port.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    /// Connections that failed a round trip at least once.
    broken: Arc<AtomicU64>,
    roundtrips: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    /// Echoes of datagrams sent to the denied port: each one reached it.
    leaked: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(c: &Cluster) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let broken = Arc::new(AtomicU64::new(0));
        let roundtrips = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let leaked = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let (a, b) = (Peer::parse("x/a")?, Peer::parse("x/b")?);
        for _ in 0..CONNECTIONS {
            let mut conn: Connection = c.connect(&a, &b, 80, Transport::Tcp, Via::Pod)?;
            let (stop, broken, roundtrips) = (stop.clone(), broken.clone(), roundtrips.clone());
            threads.push(thread::spawn(move || {
                let mut failed = false;
                while !stop.load(Ordering::Relaxed) {
                    if conn.roundtrip(Duration::from_secs(3)) {
                        roundtrips.fetch_add(1, Ordering::Relaxed);
                    } else if !failed {
                        failed = true;
                        broken.fetch_add(1, Ordering::Relaxed);
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }));
        }
        // y/a -> x/b UDP 81: no rule allows it.
        let to = SocketAddr::new(c.pod_ip("x/b")?, 81);
        let ns = c.pod_netns("y/a")?.to_string();
        let sock = in_netns(&ns, || UdpSocket::bind("0.0.0.0:0"))?.context("UDP socket in y/a")?;
        sock.set_nonblocking(true)?;
        let (stop2, sent2, leaked2) = (stop.clone(), sent.clone(), leaked.clone());
        threads.push(thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop2.load(Ordering::Relaxed) {
                if sock.send_to(b"must-not-arrive", to).is_ok() {
                    sent2.fetch_add(1, Ordering::Relaxed);
                }
                while sock.recv_from(&mut buf).is_ok() {
                    leaked2.fetch_add(1, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(5));
            }
        }));
        Ok(Self {
            stop,
            broken,
            roundtrips,
            sent,
            leaked,
            threads,
        })
    }

    /// (broken connections, round trips, datagrams sent, datagrams leaked).
    pub fn finish(self) -> (u64, u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        (
            self.broken.load(Ordering::Relaxed),
            self.roundtrips.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
            self.leaked.load(Ordering::Relaxed),
        )
    }
}
