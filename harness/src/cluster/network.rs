//! The cluster's network, as `ip -batch` scripts: namespaces and their
//! sysctls, the fabric bridge, each node's uplink, routes and pod veths (ptp
//! or bridge topology, see the layout in [`super`]), and the addresses and
//! routes inside pods and external hosts.

use std::net::IpAddr;

use anyhow::{anyhow, Result};

use super::{Cluster, PodState, Topology};
use crate::model::{
    bridge_gateway, external_cidr, node_addr, node_gateway, pod_cidr, service_cidr, Family,
};
use crate::netns::{self, exec_in, ip_batch, lock};

impl Cluster {
    /// Creates every namespace and all links, addresses and routes of the
    /// pods and externals recorded so far.
    pub(super) fn build_network(&mut self) -> Result<()> {
        let mut all_ns = vec![self.fabric_ns.clone()];
        all_ns.extend(self.node_ns.iter().cloned());
        all_ns.extend(self.pods.iter().map(|p| p.netns.clone()));
        all_ns.extend(self.externals.iter().map(|e| e.netns.clone()));
        self.create_netns(&all_ns)?;

        // Fabric: one bridge, one veth per node.
        let mut fab = String::from("link add br0 type bridge\nlink set br0 up\nlink set lo up\n");
        for (i, ns) in self.node_ns.iter().enumerate() {
            let i = i + 1;
            fab += &format!(
                "link add n{i} type veth peer name eth0 netns {ns}\nlink set n{i} master br0\nlink set n{i} up\n"
            );
        }
        ip_batch(&self.fabric_ns, &fab)?;

        // Nodes (host sides of every veth), in parallel.
        let scripts: Vec<(String, String)> = (1..=self.nodes)
            .map(|i| (self.node_ns[i - 1].clone(), self.node_script(i)))
            .collect();
        parallel(&scripts, |(ns, s)| ip_batch(ns, s))?;

        // Pod and external sides, in parallel.
        let mut scripts = Vec::new();
        for p in &self.pods {
            scripts.push((p.netns.clone(), self.pod_guest_script(p)));
        }
        for e in &self.externals {
            scripts.push((
                e.netns.clone(),
                self.guest_script(e.ip, node_gateway(self.family, 1)),
            ));
        }
        parallel(&scripts, |(ns, s)| ip_batch(ns, s))
    }

    pub(super) fn create_netns(&self, names: &[String]) -> Result<()> {
        lock(&self.res).netns.extend(names.iter().cloned());
        let script: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
        netns::run_cmd("ip", &["-batch", "-"], Some(&script))?;
        // DAD off everywhere (addresses usable at once, no 1-2 s IPv6 stall);
        // forwarding and loose rp_filter on nodes.
        parallel(names, |ns| {
            let mut args = vec![
                "-q",
                "-w",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ];
            if self.node_ns.contains(ns) {
                args.extend([
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                ]);
                if self.topology == Topology::Bridge {
                    // kube-proxy's DNAT must see bridged replies between pods
                    // of one node (br_netfilter), as on a real bridge node.
                    args.extend([
                        "net.bridge.bridge-nf-call-iptables=1",
                        "net.bridge.bridge-nf-call-ip6tables=1",
                    ]);
                }
            }
            exec_in(ns, "sysctl", &args, None).map(|_| ())
        })
    }

    fn addr_line(&self, ip: IpAddr, dev: &str) -> String {
        match ip {
            IpAddr::V4(_) => format!("addr add {ip}/32 dev {dev}\n"),
            IpAddr::V6(_) => format!("addr add {ip}/128 dev {dev} nodad\n"),
        }
    }

    fn gateway_line(&self, node: usize, dev: &str) -> String {
        match node_gateway(self.family, node) {
            IpAddr::V4(g) => format!("addr add {g}/32 dev {dev}\n"),
            IpAddr::V6(g) => format!("addr add {g}/64 dev {dev} nodad\n"),
        }
    }

    fn host_route(&self, ip: IpAddr, dev: &str) -> String {
        format!("route add {ip}/{} dev {dev}\n", self.family.host_prefix())
    }

    pub(super) fn pod_veth_lines(&self, p: &PodState) -> String {
        if self.topology == Topology::Bridge {
            return format!(
                "link add {v} type veth peer name eth0 netns {ns}\nlink set {v} master cni0\nlink set {v} up\n",
                v = p.host_veth,
                ns = p.netns,
            );
        }
        format!(
            "link add {v} type veth peer name eth0 netns {ns}\nlink set {v} up\n{}{}",
            self.gateway_line(p.spec.node, &p.host_veth),
            self.host_route(p.ip, &p.host_veth),
            v = p.host_veth,
            ns = p.netns,
        )
    }

    fn node_script(&self, i: usize) -> String {
        let f = self.family;
        let uplink = match (f, node_addr(f, i)) {
            (Family::Ipv4, a) => format!("addr add {a}/24 dev eth0\n"),
            (Family::Ipv6, a) => format!("addr add {a}/64 dev eth0 nodad\n"),
        };
        let mut s = format!("link set lo up\n{uplink}link set eth0 up\n");
        if self.topology == Topology::Bridge {
            s += "link add cni0 type bridge\nlink set cni0 up\n";
            s += &match bridge_gateway(f, i) {
                IpAddr::V4(g) => format!("addr add {g}/24 dev cni0\n"),
                IpAddr::V6(g) => format!("addr add {g}/64 dev cni0 nodad\n"),
            };
        }
        for j in 1..=self.nodes {
            if j != i {
                s += &format!("route add {} via {}\n", pod_cidr(f, j), node_addr(f, j));
            }
        }
        s += &format!("route add {} dev eth0\n", service_cidr(f));
        for p in self.pods.iter().filter(|p| p.spec.node == i) {
            s += &self.pod_veth_lines(p);
        }
        if i == 1 {
            for (k, e) in self.externals.iter().enumerate() {
                let v = format!("pale{}", k + 1);
                s += &format!(
                    "link add {v} type veth peer name eth0 netns {}\nlink set {v} up\n",
                    e.netns
                );
                s += &self.gateway_line(1, &v);
                s += &self.host_route(e.ip, &v);
            }
        } else if !self.externals.is_empty() {
            s += &format!("route add {} via {}\n", external_cidr(f), node_addr(f, 1));
        }
        s
    }

    /// Inside a pod: its address and the default route through its node.
    pub(super) fn pod_guest_script(&self, p: &PodState) -> String {
        if self.topology == Topology::Ptp {
            return self.guest_script(p.ip, node_gateway(self.family, p.spec.node));
        }
        // Bridge: the node's pod subnet is on-link (same-node pods talk over
        // layer 2), everything else goes through the bridge's address.
        let (addr, gw) = match (p.ip, bridge_gateway(self.family, p.spec.node)) {
            (IpAddr::V4(a), g) => (format!("addr add {a}/24 dev eth0\n"), g),
            (IpAddr::V6(a), g) => (format!("addr add {a}/64 dev eth0 nodad\n"), g),
        };
        format!("link set lo up\n{addr}link set eth0 up\nroute add default via {gw} dev eth0\n")
    }

    /// Inside a pod or external: address, gateway route, default route.
    fn guest_script(&self, ip: IpAddr, gw: IpAddr) -> String {
        let mut s = String::from("link set lo up\n");
        s += &self.addr_line(ip, "eth0");
        s += "link set eth0 up\n";
        match gw {
            IpAddr::V4(g) => {
                s += &format!("route add {g}/32 dev eth0 scope link\n");
                s += &format!("route add 0.0.0.0/0 via {g} dev eth0\n");
            }
            IpAddr::V6(g) => s += &format!("route add ::/0 via {g} dev eth0\n"),
        }
        s
    }
}

/// Runs `f` over items on parallel threads; first error wins.
pub(super) fn parallel<T: Sync, F>(items: &[T], f: F) -> Result<()>
where
    F: Fn(&T) -> Result<()> + Sync,
{
    std::thread::scope(|s| {
        let hs: Vec<_> = items.iter().map(|it| s.spawn(|| f(it))).collect();
        let mut first = Ok(());
        for h in hs {
            let r = h.join().unwrap_or_else(|_| Err(anyhow!("worker panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}
