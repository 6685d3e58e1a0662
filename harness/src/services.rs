//! Services as kube-proxy's iptables mode writes them: the whole `nat` table
//! of a node (KUBE-SERVICES jumped from PREROUTING and OUTPUT, one KUBE-SVC-*
//! chain per service port choosing a KUBE-SEP-* endpoint chain at random with
//! `-m statistic`, DNAT to the backend, hairpin and off-cluster masquerade via
//! KUBE-MARK-MASQ / KUBE-POSTROUTING), rendered as `iptables-restore` input.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::model::{cluster_cidr, Family, Transport};

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Service port name (unique within the Service).
    pub name: String,
    /// The port clients connect to on the ClusterIP.
    pub port: u16,
    /// The container port on the backends.
    pub target_port: u16,
    pub protocol: Transport,
}

/// One backend (endpoint) of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// `namespace/name` of the backend pod.
    pub pod: String,
    pub ip: IpAddr,
    /// 1-based node of the backend pod.
    pub node: usize,
}

/// A Service with its allocated ClusterIP and its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: IpAddr,
    pub ports: Vec<ServicePort>,
    pub backends: Vec<Backend>,
}

/// Chain-name suffix: kube-proxy uses 16 characters of a hash of the service
/// port name and protocol; any stable hash does for us.
fn chain_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

fn ip_with_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Renders the complete `nat` table for one node.
///
/// `with_sctp` is false where the kernel has no SCTP: iptables cannot load the
/// sctp match there, and SCTP probes are skipped anyway.
pub fn render_nat_table(family: Family, services: &[Service], with_sctp: bool) -> String {
    let host = family.host_prefix();
    let mut chains = String::new();
    let mut rules = String::new();
    for c in ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        let _ = writeln!(chains, ":{c} - [0:0]");
    }
    rules.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    for svc in services {
        if svc.cluster_ip.is_ipv4() != (family == Family::Ipv4) {
            continue;
        }
        for sp in &svc.ports {
            if sp.protocol == Transport::Sctp && !with_sctp {
                continue;
            }
            let proto = sp.protocol.iptables();
            let port_name = format!("{}/{}:{}", svc.namespace, svc.name, sp.name);
            let svc_chain = format!("KUBE-SVC-{}", chain_hash(&format!("{port_name}{proto}")));
            let _ = writeln!(chains, ":{svc_chain} - [0:0]");
            if svc.backends.is_empty() {
                // kube-proxy rejects traffic to a service without endpoints.
                let _ = writeln!(
                    rules,
                    "-A KUBE-SERVICES -d {}/{host} -p {proto} -m comment --comment \"{port_name} has no endpoints\" -m {proto} --dport {} -j REJECT",
                    svc.cluster_ip, sp.port
                );
                continue;
            }
            let _ = writeln!(
                rules,
                "-A KUBE-SERVICES -d {}/{host} -p {proto} -m comment --comment \"{port_name} cluster IP\" -m {proto} --dport {} -j {svc_chain}",
                svc.cluster_ip, sp.port
            );
            let _ = writeln!(
                rules,
                "-A {svc_chain} ! -s {} -d {}/{host} -p {proto} -m comment --comment \"{port_name} cluster IP\" -m {proto} --dport {} -j KUBE-MARK-MASQ",
                cluster_cidr(family),
                svc.cluster_ip,
                sp.port
            );
            let n = svc.backends.len();
            for (i, be) in svc.backends.iter().enumerate() {
                let dest = ip_with_port(be.ip, sp.target_port);
                let sep_chain = format!(
                    "KUBE-SEP-{}",
                    chain_hash(&format!("{port_name}{proto}{dest}"))
                );
                let _ = writeln!(chains, ":{sep_chain} - [0:0]");
                if i + 1 < n {
                    // Same arithmetic as kube-proxy: the i-th of n endpoints is
                    // taken with probability 1/(n-i), which makes the choice uniform.
                    let p = 1.0 / (n - i) as f64;
                    let _ = writeln!(
                        rules,
                        "-A {svc_chain} -m comment --comment \"{port_name} -> {dest}\" -m statistic --mode random --probability {p:.10} -j {sep_chain}"
                    );
                } else {
                    let _ = writeln!(
                        rules,
                        "-A {svc_chain} -m comment --comment \"{port_name} -> {dest}\" -j {sep_chain}"
                    );
                }
                let _ = writeln!(
                    rules,
                    "-A {sep_chain} -s {}/{host} -m comment --comment \"{port_name}\" -j KUBE-MARK-MASQ",
                    be.ip
                );
                let _ = writeln!(
                    rules,
                    "-A {sep_chain} -p {proto} -m comment --comment \"{port_name}\" -m {proto} -j DNAT --to-destination {dest}"
                );
            }
        }
    }
    format!("*nat\n{chains}{rules}COMMIT\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_random_choice_over_three_backends() {
        let svc = Service {
            namespace: "x".into(),
            name: "multi".into(),
            cluster_ip: "10.96.0.50".parse().unwrap(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 8080,
                target_port: 80,
                protocol: Transport::Tcp,
            }],
            backends: (0..3)
                .map(|i| Backend {
                    pod: format!("x/p{i}"),
                    ip: format!("10.100.1.{}", 10 + i).parse().unwrap(),
                    node: 1,
                })
                .collect(),
        };
        let t = render_nat_table(Family::Ipv4, &[svc], false);
        assert!(t.contains("--probability 0.3333333333"));
        assert!(t.contains("--probability 0.5000000000"));
        assert_eq!(t.matches("-j DNAT").count(), 3);
        assert!(t.contains("--to-destination 10.100.1.12:80"));
        assert!(t.ends_with("COMMIT\n"));
    }

    #[test]
    fn ipv6_dnat_uses_brackets() {
        let svc = Service {
            namespace: "x".into(),
            name: "s".into(),
            cluster_ip: "fd00:96::a".parse().unwrap(),
            ports: vec![ServicePort {
                name: "u".into(),
                port: 53,
                target_port: 5353,
                protocol: Transport::Udp,
            }],
            backends: vec![Backend {
                pod: "x/a".into(),
                ip: "fd00:100:1::a".parse().unwrap(),
                node: 1,
            }],
        };
        let t = render_nat_table(Family::Ipv6, &[svc], false);
        assert!(t.contains("--to-destination [fd00:100:1::a]:5353"));
        assert!(t.contains("-d fd00:96::a/128"));
    }
}
