//! Finding local pods' host-side interfaces and the node's own addresses.
//!
//! ptp-style CNIs (kindnet, Calico, the harness) route each pod address to its
//! veth: a host route `<pod ip> dev <veth>` names the interface. Bridge-style CNIs
//! put the veth on a bridge: the neighbour entry of the pod address gives its MAC,
//! and the bridge's forwarding database gives the port (the veth) that MAC is on.
//! Reads the kernel's tables through `ip -json` / `bridge -json` (iproute2 speaks
//! netlink), so the agent itself holds no netlink parsing code.
use std::{collections::BTreeMap, net::IpAddr, process::Command};

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
    /// Host routes (/32, /128) to an interface: address -> interface name.
    pub host_routes: BTreeMap<IpAddr, String>,
    /// Neighbour address -> MAC (bridge-style CNIs).
    pub neigh: BTreeMap<IpAddr, String>,
    /// MAC -> bridge port interface name.
    pub fdb: BTreeMap<String, String>,
}

fn ip_json(args: &[&str]) -> Vec<Value> {
    let out = Command::new("ip").arg("-json").args(args).output();
    match out {
        Ok(o) if o.status.success() => {
            serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

fn bridge_json(args: &[&str]) -> Vec<Value> {
    let out = Command::new("bridge").arg("-json").args(args).output();
    match out {
        Ok(o) if o.status.success() => {
            serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

impl Links {
    pub fn scan() -> Self {
        let mut l = Links::default();
        for link in ip_json(&["-details", "link", "show"]) {
            let (Some(name), Some(idx)) = (link["ifname"].as_str(), link["ifindex"].as_u64())
            else {
                continue;
            };
            let Ok(idx) = u32::try_from(idx) else {
                continue;
            };
            l.by_name.insert(name.to_string(), idx);
            if link["linkinfo"]["info_kind"].as_str() == Some("veth") {
                l.veths.insert(name.to_string(), idx);
            }
        }
        for a in ip_json(&["addr", "show"]) {
            if a["ifname"].as_str() == Some("lo") {
                continue;
            }
            for info in a["addr_info"].as_array().into_iter().flatten() {
                if info["scope"].as_str() == Some("link") {
                    continue;
                }
                if let Some(ip) = info["local"].as_str().and_then(|s| s.parse().ok()) {
                    if !l.node_addrs.contains(&ip) {
                        l.node_addrs.push(ip);
                    }
                }
            }
        }
        for fam in ["-4", "-6"] {
            for r in ip_json(&[fam, "route", "show", "table", "main"]) {
                let (Some(dst), Some(dev)) = (r["dst"].as_str(), r["dev"].as_str()) else {
                    continue;
                };
                if r["gateway"].is_string() {
                    continue;
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
        for n in ip_json(&["neigh", "show"]) {
            if let (Some(dst), Some(mac)) = (n["dst"].as_str(), n["lladdr"].as_str()) {
                if let Ok(ip) = dst.parse() {
                    l.neigh.insert(ip, mac.to_lowercase());
                }
            }
        }
        if l.by_name
            .keys()
            .any(|n| n.starts_with("br") || n.starts_with("cni"))
        {
            for f in bridge_json(&["fdb", "show"]) {
                if let (Some(mac), Some(dev)) = (f["mac"].as_str(), f["ifname"].as_str()) {
                    l.fdb.insert(mac.to_lowercase(), dev.to_string());
                }
            }
        }
        l
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

/// Block until the kernel reports a link, address or route change in this network
/// namespace, then call `on_change`; loops forever. Runs on its own thread.
pub fn watch_netlink(mut on_change: impl FnMut() -> bool) -> std::io::Result<()> {
    const RTMGRP_LINK: u32 = 0x1;
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
            if n < 0 {
                let e = std::io::Error::last_os_error();
                // ENOBUFS: we missed messages; a rescan covers them.
                if e.raw_os_error() != Some(libc::ENOBUFS) && e.raw_os_error() != Some(libc::EINTR)
                {
                    libc::close(fd);
                    return Err(e);
                }
            }
            if !on_change() {
                libc::close(fd);
                return Ok(());
            }
        }
    }
}
