//! Interface roles: which programs each interface of the node gets. Pure, so
//! the rules are unit-tested without a kernel.
use std::{collections::BTreeSet, net::IpAddr};

use super::links::Links;
use crate::datapath::Hook;
pub use crate::datapath::Role;

/// Every interface of the scan with its role. Every veth that is not an uplink
/// is a pod interface (even before its pod is known: attached first, it drops
/// everything until its record is written, i.e. fails closed); uplinks get the
/// Service egress hook; loopback and everything else nothing. A pod's own
/// interface (`pod_ifs`) is never an uplink, whatever routes it carries (a
/// pod's router advertisement could add one).
pub fn plan(
    links: &Links,
    pod_ifs: &BTreeSet<u32>,
    uplinks: &[String],
    node_ips: &[IpAddr],
) -> Vec<Role> {
    links
        .by_name
        .iter()
        .map(|(name, idx)| {
            let uplink = !pod_ifs.contains(idx) && is_uplink(name, links, uplinks, node_ips);
            let hooks: &'static [Hook] = if name == "lo" {
                &[]
            } else if uplink {
                &[Hook::SvcEgress]
            } else if links.veths.contains_key(name) {
                &[Hook::FromPod, Hook::ToPod]
            } else {
                &[]
            };
            Role {
                name: name.clone(),
                ifindex: *idx,
                hooks,
                uplink,
            }
        })
        .collect()
}

/// Whether interface `name` leads out of the node (Service egress hook) rather
/// than to a pod. With `uplinks` given, exactly those (a trailing `*` matches a
/// prefix). Without: every interface but the veths, plus the veths that are the
/// node's own link, recognised by a node address or a route via a gateway
/// (pod veths carry neither: host routes and connected bridge subnets only).
pub fn is_uplink(name: &str, links: &Links, uplinks: &[String], node_ips: &[IpAddr]) -> bool {
    if !uplinks.is_empty() {
        return uplinks.iter().any(|u| match u.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => u == name,
        });
    }
    !links.veths.contains_key(name)
        || links.gateway_devs.contains(name)
        || node_ips
            .iter()
            .any(|ip| links.addr_devs.get(ip).is_some_and(|d| d == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kind node: eth0 is a veth with the default route and the node's
    /// address; pod veths carry host routes only; cni0 is a bridge.
    fn kind_node() -> Links {
        let mut l = Links::default();
        for (i, n) in ["lo", "eth0", "veth1", "veth2", "cni0"].iter().enumerate() {
            l.by_name.insert(n.to_string(), i as u32 + 1);
        }
        for (n, i) in [("eth0", 2), ("veth1", 3), ("veth2", 4)] {
            l.veths.insert(n.to_string(), i);
        }
        l.gateway_devs.insert("eth0".into());
        l.addr_devs
            .insert("172.18.0.2".parse().expect("ip"), "eth0".into());
        l.addr_devs
            .insert("10.244.1.1".parse().expect("ip"), "veth1".into());
        l
    }

    #[test]
    fn a_veth_with_a_gateway_route_or_the_node_address_is_an_uplink() {
        let l = kind_node();
        assert!(is_uplink("eth0", &l, &[], &[]));
        assert!(is_uplink("cni0", &l, &[], &[]));
        assert!(!is_uplink("veth1", &l, &[], &[]));
        assert!(!is_uplink("veth2", &l, &[], &[]));

        // Without the gateway route (a single node with connected routes only),
        // the node address alone tells.
        let mut l = kind_node();
        l.gateway_devs.clear();
        assert!(!is_uplink("eth0", &l, &[], &[]));
        let node_ip: IpAddr = "172.18.0.2".parse().expect("ip");
        assert!(is_uplink("eth0", &l, &[], &[node_ip]));
        assert!(!is_uplink("veth1", &l, &[], &[node_ip]));
    }

    #[test]
    fn explicit_uplinks_are_exactly_those() {
        let l = kind_node();
        let up = vec!["eth*".to_string()];
        assert!(is_uplink("eth0", &l, &up, &[]));
        assert!(!is_uplink("cni0", &l, &up, &[]));
        assert!(!is_uplink("veth1", &l, &["veth2".into()], &[]));
        assert!(is_uplink("veth2", &l, &["veth2".into()], &[]));
    }

    #[test]
    fn pod_veths_get_both_pod_hooks_uplinks_the_service_hook_loopback_none() {
        let l = kind_node();
        let roles = plan(&l, &BTreeSet::from([3]), &[], &[]);
        let of = |n: &str| roles.iter().find(|r| r.name == n).expect("role").hooks;
        assert_eq!(of("lo"), &[] as &[Hook]);
        assert_eq!(of("eth0"), &[Hook::SvcEgress]);
        assert_eq!(of("cni0"), &[Hook::SvcEgress]);
        assert_eq!(of("veth1"), &[Hook::FromPod, Hook::ToPod]);
        // A veth whose pod is not known yet is still a pod interface.
        assert_eq!(of("veth2"), &[Hook::FromPod, Hook::ToPod]);
    }

    #[test]
    fn a_pods_own_veth_is_never_an_uplink() {
        let mut l = kind_node();
        // veth1's pod sent a router advertisement: a gateway route via veth1.
        l.gateway_devs.insert("veth1".into());
        let roles = plan(&l, &BTreeSet::from([3]), &[], &[]);
        let veth1 = roles.iter().find(|r| r.name == "veth1").expect("veth1");
        assert!(!veth1.uplink);
        assert_eq!(veth1.hooks, &[Hook::FromPod, Hook::ToPod]);
    }
}
