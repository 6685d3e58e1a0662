//! Finding local pods' host-side interfaces and the node's own addresses.
//!
//! ptp-style CNIs (kindnet, Calico, the harness) route each pod address to its
//! veth: a host route `<pod ip> dev <veth>` names the interface. Bridge-style CNIs
//! put the veth on a bridge: the neighbour entry of the pod address gives its MAC,
//! and the bridge's forwarding database gives the port (the veth) that MAC is on.
//! Reads the kernel's tables through `ip -json` / `bridge -json` (iproute2 speaks
//! netlink), so the agent itself holds no netlink parsing code.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    process::Command,
};

use ipnet::IpNet;

use serde_json::Value;

/// Interfaces of this network namespace.
#[derive(Clone, Debug, Default)]
pub struct Links {
    /// name -> ifindex
    pub by_name: BTreeMap<String, u32>,
    /// Interfaces that are veths.
    pub veths: BTreeMap<String, u32>,
    /// The node's addresses (all interfaces but loopback), link-local excluded.
    pub node_addrs: Vec<IpAddr>,
    /// Interfaces that carry a route through a gateway (the node's own links).
    pub gateway_devs: BTreeSet<String>,
    /// Every address (link-local excluded) -> the interface holding it.
    pub addr_devs: BTreeMap<IpAddr, String>,
    /// Host routes (/32, /128) to an interface: address -> interface name.
    pub host_routes: BTreeMap<IpAddr, String>,
    /// Neighbour address -> MAC (bridge-style CNIs).
    pub neigh: BTreeMap<IpAddr, String>,
    /// MAC -> bridge port interface name.
    pub fdb: BTreeMap<String, String>,
    /// Subnets routed straight onto a bridge (a bridge-style pod CIDR) -> bridge.
    pub bridge_subnets: Vec<(IpNet, String)>,
    /// Neighbour entries this agent asked the kernel to keep resolved:
    /// address -> interface.
    pub managed: BTreeMap<IpAddr, String>,
}

/// The `protocol` of the managed neighbour entries Palisade adds, so that it
/// finds (and removes) its own and never anyone else's.
pub const NEIGH_PROTOCOL: u8 = 0x70;

/// Runs an iproute2 command with `-json` and parses its output. A failure is
/// an error, never an empty table: an empty table would unknow every pod.
fn run_json(mut cmd: Command, args: &[&str]) -> Result<Vec<Value>, String> {
    let what = format!(
        "{} -json {}",
        cmd.get_program().to_string_lossy(),
        args.join(" ")
    );
    let o = cmd
        .arg("-json")
        .args(args)
        .output()
        .map_err(|e| format!("{what}: {e} (iproute2 must be installed)"))?;
    if !o.status.success() {
        return Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    // iproute2 prints nothing at all for an empty table.
    if o.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&o.stdout).map_err(|e| format!("{what}: unreadable output: {e}"))
}

fn ip_json(args: &[&str]) -> Result<Vec<Value>, String> {
    run_json(Command::new("ip"), args)
}

fn bridge_json(args: &[&str]) -> Result<Vec<Value>, String> {
    run_json(Command::new("bridge"), args)
}

impl Links {
    /// Reads the node's interfaces, addresses, routes, neighbours and (with a
    /// bridge) FDB.
    pub fn scan() -> Result<Self, String> {
        let mut l = Links::default();
        let mut bridges = Vec::new();
        for link in ip_json(&["-details", "link", "show"])? {
            let (Some(name), Some(idx)) = (link["ifname"].as_str(), link["ifindex"].as_u64())
            else {
                continue;
            };
            let Ok(idx) = u32::try_from(idx) else {
                continue;
            };
            l.by_name.insert(name.to_string(), idx);
            match link["linkinfo"]["info_kind"].as_str() {
                Some("veth") => {
                    l.veths.insert(name.to_string(), idx);
                }
                Some("bridge") => bridges.push(name.to_string()),
                _ => {}
            }
        }
        for a in ip_json(&["addr", "show"])? {
            if a["ifname"].as_str() == Some("lo") {
                continue;
            }
            for info in a["addr_info"].as_array().into_iter().flatten() {
                if info["scope"].as_str() == Some("link") {
                    continue;
                }
                if let Some(ip) = info["local"].as_str().and_then(|s| s.parse().ok()) {
                    if let Some(dev) = a["ifname"].as_str() {
                        l.addr_devs.insert(ip, dev.to_string());
                    }
                    if !l.node_addrs.contains(&ip) {
                        l.node_addrs.push(ip);
                    }
                }
            }
        }
        for fam in ["-4", "-6"] {
            // A kernel without IPv6 refuses the IPv6 table: no routes there.
            let routes = match ip_json(&[fam, "route", "show", "table", "main"]) {
                Err(_) if fam == "-6" => Vec::new(),
                r => r?,
            };
            for r in routes {
                let (Some(dst), Some(dev)) = (r["dst"].as_str(), r["dev"].as_str()) else {
                    continue;
                };
                if r["gateway"].is_string() {
                    l.gateway_devs.insert(dev.to_string());
                    continue;
                }
                if bridges.iter().any(|b| b == dev) {
                    if let Ok(net) = dst.parse::<IpNet>() {
                        l.bridge_subnets.push((net, dev.to_string()));
                    }
                }
                let host = dst.split('/').next().unwrap_or(dst);
                let plen_ok = match dst.split_once('/') {
                    None => true,
                    Some((_, p)) => p == "32" || p == "128",
                };
                if let (true, Ok(ip)) = (plen_ok, host.parse::<IpAddr>()) {
                    l.host_routes.insert(ip, dev.to_string());
                }
            }
        }
        for n in ip_json(&["neigh", "show"])? {
            let Some(ip) = n["dst"].as_str().and_then(|d| d.parse::<IpAddr>().ok()) else {
                continue;
            };
            if let Some(mac) = n["lladdr"].as_str() {
                l.neigh.insert(ip, mac.to_lowercase());
            }
            let ours =
                n["protocol"].as_str().and_then(|p| p.parse::<u8>().ok()) == Some(NEIGH_PROTOCOL);
            if let (true, Some(dev)) = (ours, n["dev"].as_str()) {
                l.managed.insert(ip, dev.to_string());
            }
        }
        if !bridges.is_empty() {
            for f in bridge_json(&["fdb", "show"])? {
                if let (Some(mac), Some(dev)) = (f["mac"].as_str(), f["ifname"].as_str()) {
                    l.fdb.insert(mac.to_lowercase(), dev.to_string());
                }
            }
        }
        Ok(l)
    }

    /// The bridge a local address is reached through without a gateway, if any.
    pub fn bridge_for(&self, ip: IpAddr) -> Option<&str> {
        self.bridge_subnets
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, dev)| dev.as_str())
    }

    /// The host-side interface of a local pod with address `ip`.
    pub fn pod_interface(&self, ip: IpAddr) -> Option<(String, u32)> {
        let name = match self.host_routes.get(&ip) {
            Some(dev) if self.veths.contains_key(dev) => dev.clone(),
            _ => {
                let mac = self.neigh.get(&ip)?;
                self.fdb.get(mac)?.clone()
            }
        };
        let idx = *self.veths.get(&name)?;
        Some((name, idx))
    }
}

/// Asks the kernel to resolve `ip` on `dev` and keep it resolved (a managed
/// neighbour entry, Linux 5.16+). On a bridge-style node a pod is found through
/// its neighbour and FDB entries, which exist only once the host has talked to
/// the pod: a pod that talks only to its bridge neighbours would otherwise stay
/// unknown, and an idle one would be lost when the entries age out. The kernel's
/// ARP/ND probes also keep the bridge's FDB entry for the pod fresh.
pub fn resolve_neighbour(ip: IpAddr, dev: &str) -> Result<(), String> {
    let ip = ip.to_string();
    let proto = NEIGH_PROTOCOL.to_string();
    // `replace`: an entry without a link-layer address (failed, incomplete)
    // may exist; it becomes ours and is resolved again.
    let args = [
        "neigh", "replace", &ip, "dev", dev, "managed", "protocol", &proto,
    ];
    run_ip(&args)
}

/// Removes a managed neighbour entry this agent added.
pub fn forget_neighbour(ip: IpAddr, dev: &str) -> Result<(), String> {
    let ip = ip.to_string();
    run_ip(&["neigh", "del", &ip, "dev", dev])
}

fn run_ip(args: &[&str]) -> Result<(), String> {
    match Command::new("ip").args(args).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("ip {}: {e}", args.join(" "))),
    }
}

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
