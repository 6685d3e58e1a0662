//! Reading deny/audit events from the ring buffer and decoding them.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{MapData, RingBuf};
use palisade_common::{Event, FAMILY_V4};
use tokio::io::unix::AsyncFd;

use crate::datapath::{Datapath, DatapathError};

/// Decode one ring-buffer record; `None` if it is not an `Event` (wrong size).
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < core::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: length checked above; Event is plain old data, read unaligned.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

pub fn event_addrs(ev: &Event) -> (IpAddr, IpAddr) {
    let conv = |a: [u8; 16]| -> IpAddr {
        if ev.family == FAMILY_V4 {
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(a))
        }
    };
    (conv(ev.src), conv(ev.dst))
}

/// Reader over the `EVENTS` ring buffer: synchronous `drain`, or async
/// `next_batch` (registers with the tokio reactor on first use).
pub struct EventReader {
    rb: Option<RingBuf<MapData>>,
    fd: Option<AsyncFd<RingBuf<MapData>>>,
}

fn drain_rb(rb: &mut RingBuf<MapData>, out: &mut Vec<Event>) {
    while let Some(item) = rb.next() {
        if let Some(ev) = decode(&item) {
            out.push(ev);
        }
    }
}

impl EventReader {
    pub fn new(dp: &mut Datapath) -> Result<Self, DatapathError> {
        let name = palisade_common::maps::EVENTS;
        let map = dp.take_map(name)?;
        let rb: RingBuf<MapData> = map.try_into().map_err(|source| DatapathError::Map {
            name,
            source: Box::new(source),
        })?;
        Ok(Self {
            rb: Some(rb),
            fd: None,
        })
    }

    /// Wait for events and return all that are available. Must run inside tokio.
    pub async fn next_batch(&mut self) -> std::io::Result<Vec<Event>> {
        if let Some(rb) = self.rb.take() {
            // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd, so
            // the fd stays open for as long as it is registered.
            let fd = unsafe { AsyncFd::register(rb) }
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.fd = Some(fd);
        }
        let Some(fd) = self.fd.as_mut() else {
            return Err(std::io::Error::other("event reader lost its ring buffer"));
        };
        loop {
            let mut guard = fd.readable_mut().await?;
            let mut out = Vec::new();
            drain_rb(guard.get_inner_mut(), &mut out);
            guard.clear_ready();
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    /// Non-blocking drain.
    pub fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        if let Some(rb) = self.rb.as_mut() {
            drain_rb(rb, &mut out);
        } else if let Some(fd) = self.fd.as_mut() {
            drain_rb(fd.get_mut(), &mut out);
        }
        out
    }
}
