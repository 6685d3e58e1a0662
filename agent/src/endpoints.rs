//! Local endpoints: which interface each local pod is on, its endpoint id, and
//! the records an earlier agent left (adopted at start). The one owner of the
//! pod <-> ifindex relation.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use palisade_common::{Endpoint, EP_HAS_V4, EP_HAS_V6};
use palisade_policy::{compile::is_local, ClusterIndex, NodeInfo, PodKey};

use crate::node::Links;

/// Local pods found on an interface: pod -> (interface name, ifindex).
pub type PodInterfaces = BTreeMap<PodKey, (String, u32)>;

#[derive(Default)]
pub struct Endpoints {
    ids: BTreeMap<PodKey, u32>,
    /// Pod -> ifindex its endpoint record was written under.
    written_if: BTreeMap<PodKey, u32>,
    /// Records found in the maps at start (an earlier agent's), by ifindex;
    /// used by the first pass only.
    adopted: Option<BTreeMap<u32, Endpoint>>,
    /// Host interfaces a CNI ADD named for a pod: found there before any
    /// route or neighbour entry shows it (a bridge-style node learns a pod
    /// only when it sends).
    cni: BTreeMap<PodKey, Vec<String>>,
}

impl Endpoints {
    /// Starts from the records an earlier agent left in the maps.
    pub fn adopting(records: BTreeMap<u32, Endpoint>) -> Self {
        Self {
            adopted: Some(records),
            ..Default::default()
        }
    }

    pub fn ids(&self) -> &BTreeMap<PodKey, u32> {
        &self.ids
    }

    /// The ifindex the pod's record was last written under.
    pub fn written_if(&self, pod: &PodKey) -> Option<u32> {
        self.written_if.get(pod).copied()
    }

    /// Local pods (from the index) and the interface each was found on, and
    /// how many local pods have none.
    pub fn find(
        &self,
        index: &ClusterIndex,
        node: &NodeInfo,
        links: &Links,
    ) -> (PodInterfaces, usize) {
        let mut ifaces = BTreeMap::new();
        let mut missing = 0;
        for pod in index.pods_on_node(&node.name).filter(|p| is_local(p, node)) {
            let ip = pod.ipv4().map(IpAddr::V4).or(pod.ipv6().map(IpAddr::V6));
            let Some(ip) = ip else {
                missing += 1;
                continue;
            };
            // The interface a pod was found on stays its own while it exists:
            // on a bridge-style node, ARP or ND from another pod claiming the
            // address must not move the pod's record to that pod's interface.
            match self
                .known_interface(&pod.key(), ip, links)
                .or_else(|| self.cni_interface(&pod.key(), links))
                .or_else(|| links.pod_interface(ip))
            {
                Some(found) => {
                    ifaces.insert(pod.key(), found);
                }
                None => missing += 1,
            }
        }
        (ifaces, missing)
    }

    /// Record the host interfaces a CNI ADD named for `pod`.
    pub fn cni_add(&mut self, pod: PodKey, interfaces: Vec<String>) {
        self.cni.insert(pod, interfaces);
    }

    /// CNI DEL: the pod's interfaces are gone.
    pub fn cni_forget(&mut self, pod: &PodKey) {
        self.cni.remove(pod);
    }

    /// The first interface the pod's CNI ADD named that exists and is a veth
    /// (a bridge the result lists too is not the pod's).
    fn cni_interface(&self, pod: &PodKey, links: &Links) -> Option<(String, u32)> {
        self.cni
            .get(pod)?
            .iter()
            .find_map(|name| links.veths.get(name).map(|i| (name.clone(), *i)))
    }

    /// The interface a pod was found on before, while it still exists. On a
    /// bridge-style node a pod is found through its neighbour and FDB entries,
    /// which age out when the pod is idle (FDB after 300 s by default); losing
    /// the pod then would drop its traffic as an unknown endpoint until it sent
    /// something again. The record written under that interface (this run's,
    /// or one adopted from an earlier agent, matched by address) is the proof.
    fn known_interface(&self, pod: &PodKey, ip: IpAddr, links: &Links) -> Option<(String, u32)> {
        let idx = self.written_if.get(pod).copied().or_else(|| {
            self.adopted
                .as_ref()?
                .iter()
                .find(|(_, e)| endpoint_has(e, ip))
                .map(|(idx, _)| *idx)
        })?;
        let name = links
            .veths
            .iter()
            .find(|(_, i)| **i == idx)
            .map(|(n, _)| n.clone())?;
        Some((name, idx))
    }

    /// Ids for the pods found: kept across changes, and across restarts
    /// through the adopted records. Returns whether a pod's interface was
    /// replaced: it keeps its id and its rules, so only a full pass (which
    /// reads the records back per current interface) writes the new record.
    pub fn assign(&mut self, ifaces: &PodInterfaces) -> bool {
        let adopted = self.adopted.take();
        for (pod, (_, idx)) in ifaces {
            let reuse = adopted.as_ref().and_then(|a| a.get(idx)).map(|e| e.id);
            self.alloc_id(pod, reuse);
        }
        self.ids.retain(|p, _| ifaces.contains_key(p));
        if let Some(a) = &adopted {
            for ifindex in a.keys() {
                if let Some((pod, _)) = ifaces.iter().find(|(_, (_, i))| i == ifindex) {
                    self.written_if.insert(pod.clone(), *ifindex);
                }
            }
        }
        ifaces
            .iter()
            .any(|(p, (_, i))| self.written_if.get(p).is_some_and(|old| old != i))
    }

    fn alloc_id(&mut self, pod: &PodKey, reuse: Option<u32>) -> u32 {
        if let Some(id) = self.ids.get(pod) {
            return *id;
        }
        let used: BTreeSet<u32> = self.ids.values().copied().collect();
        let id = match reuse {
            Some(id) if !used.contains(&id) => id,
            _ => (1..).find(|i| !used.contains(i)).unwrap_or(u32::MAX),
        };
        self.ids.insert(pod.clone(), id);
        id
    }

    /// The pass wrote every found pod's record under its current interface.
    pub fn written(&mut self, ifaces: &PodInterfaces) {
        self.written_if = ifaces.iter().map(|(p, (_, i))| (p.clone(), *i)).collect();
    }
}

/// Whether an endpoint record carries address `ip`.
fn endpoint_has(ep: &Endpoint, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => ep.flags & EP_HAS_V4 != 0 && ep.ipv4 == a.octets(),
        IpAddr::V6(a) => ep.flags & EP_HAS_V6 != 0 && ep.ipv6 == a.octets(),
    }
}

#[cfg(test)]
mod tests {
    use palisade_common::ENDPOINT_PAD;

    use super::*;

    #[test]
    fn an_endpoint_record_is_matched_by_address() {
        let ep = Endpoint {
            id: 1,
            flags: EP_HAS_V4,
            ipv4: [10, 0, 0, 5],
            _pad0: [0; ENDPOINT_PAD],
            ipv6: [0; 16],
        };
        assert!(endpoint_has(&ep, "10.0.0.5".parse().expect("ip")));
        assert!(!endpoint_has(&ep, "10.0.0.6".parse().expect("ip")));
        assert!(!endpoint_has(&ep, "::".parse().expect("ip")));
    }
}
