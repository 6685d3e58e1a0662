//! The netlink watch: wakes the sync loop when an interface, address, route,
//! neighbour or FDB entry of this network namespace changes.

/// What a batch of netlink notifications changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetlinkChange {
    /// An interface, address or route (or unknown: messages were lost).
    Links,
    /// Only neighbour or bridge FDB entries.
    Neigh,
}

/// Classifies a buffer of netlink messages: neighbour messages only, or more.
pub fn classify(buf: &[u8]) -> NetlinkChange {
    const RTM_NEWNEIGH: u16 = 28;
    const RTM_DELNEIGH: u16 = 29;
    let mut off = 0;
    let mut any = false;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < 16 || off + len > buf.len() {
            return NetlinkChange::Links;
        }
        if ty != RTM_NEWNEIGH && ty != RTM_DELNEIGH {
            return NetlinkChange::Links;
        }
        any = true;
        // Messages are 4-byte aligned.
        off += (len + 3) & !3;
    }
    if any {
        NetlinkChange::Neigh
    } else {
        NetlinkChange::Links
    }
}

/// Block until the kernel reports a link, address, route, neighbour or FDB change
/// in this network namespace, then call `on_change` with what changed; loops
/// forever. Runs on its own thread.
pub fn watch_netlink(mut on_change: impl FnMut(NetlinkChange) -> bool) -> std::io::Result<()> {
    const RTMGRP_LINK: u32 = 0x1;
    const RTMGRP_NEIGH: u32 = 0x4;
    const RTMGRP_IPV4_IFADDR: u32 = 0x10;
    const RTMGRP_IPV4_ROUTE: u32 = 0x40;
    const RTMGRP_IPV6_IFADDR: u32 = 0x100;
    const RTMGRP_IPV6_ROUTE: u32 = 0x400;
    // SAFETY: plain socket syscalls on a fd we own; the buffer outlives recv.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = RTMGRP_LINK
            | RTMGRP_NEIGH
            | RTMGRP_IPV4_IFADDR
            | RTMGRP_IPV4_ROUTE
            | RTMGRP_IPV6_IFADDR
            | RTMGRP_IPV6_ROUTE;
        if libc::bind(
            fd,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        ) < 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        let mut buf = vec![0u8; 65536];
        loop {
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            let change = match usize::try_from(n) {
                Ok(n) => classify(&buf[..n.min(buf.len())]),
                Err(_) => NetlinkChange::Links,
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                // ENOBUFS: we missed messages; a rescan covers them.
                if e.raw_os_error() != Some(libc::ENOBUFS) && e.raw_os_error() != Some(libc::EINTR)
                {
                    libc::close(fd);
                    return Err(e);
                }
            }
            if !on_change(change) {
                libc::close(fd);
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, payload: usize) -> Vec<u8> {
        let len = 16 + payload;
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.resize(len, 0);
        m.resize((len + 3) & !3, 0);
        m
    }

    #[test]
    fn neighbour_messages_alone_are_a_neighbour_change() {
        let mut buf = msg(28, 13);
        buf.extend(msg(29, 12));
        assert_eq!(classify(&buf), NetlinkChange::Neigh);
    }

    #[test]
    fn any_other_message_or_damage_is_a_link_change() {
        let mut buf = msg(28, 12);
        buf.extend(msg(16, 20)); // RTM_NEWLINK
        assert_eq!(classify(&buf), NetlinkChange::Links);
        assert_eq!(classify(&msg(24, 8)), NetlinkChange::Links); // RTM_NEWROUTE
        assert_eq!(classify(&[]), NetlinkChange::Links);
        let mut torn = msg(28, 12);
        torn.truncate(20);
        assert_eq!(classify(&torn), NetlinkChange::Links);
    }
}
