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

/// Why the node's tables could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{command}: {source} (iproute2 must be installed)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command}: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("{command}: unreadable output: {source}")]
    Unreadable {
        command: String,
        #[source]
        source: serde_json::Error,
    },
}

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
fn run_json(mut cmd: Command, args: &[&str]) -> Result<Vec<Value>, NodeError> {
    let command = format!(
        "{} -json {}",
        cmd.get_program().to_string_lossy(),
        args.join(" ")
    );
    let o = match cmd.arg("-json").args(args).output() {
        Ok(o) => o,
        Err(source) => return Err(NodeError::Spawn { command, source }),
    };
    if !o.status.success() {
        let stderr = String::from_utf8_lossy(&o.stderr).trim().to_string();
        return Err(NodeError::Failed { command, stderr });
    }
    // iproute2 prints nothing at all for an empty table.
    if o.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&o.stdout).map_err(|source| NodeError::Unreadable { command, source })
}

fn ip_json(args: &[&str]) -> Result<Vec<Value>, NodeError> {
    run_json(Command::new("ip"), args)
}

fn bridge_json(args: &[&str]) -> Result<Vec<Value>, NodeError> {
    run_json(Command::new("bridge"), args)
}

impl Links {
    /// Reads the node's interfaces, addresses, routes, neighbours and (with a
    /// bridge) FDB.
    pub fn scan() -> Result<Self, NodeError> {
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
