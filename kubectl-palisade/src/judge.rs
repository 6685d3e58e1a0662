//! Judging one connection two ways: each side from the map entries the agent on
//! that pod's node would write (compiled, encoded and looked up as the datapath
//! does), and the walk of the engine's model (the reference evaluator's
//! explanation). The two are compared side by side: the verdict, and for a drop
//! the tier its reason names.

use std::collections::BTreeMap;
use std::net::IpAddr;

use palisade_common::{Reason, DIR_EGRESS, DIR_INGRESS};
use palisade_policy::{
    compile, encode, explain, ClusterIndex, DecidedBy, Direction, Explanation, MapSet, NodeInfo,
    Packet, PodKey, SideExplanation,
};

/// One connection judged.
#[derive(Debug)]
pub struct Judgement {
    /// The model's walk; `walk.allowed` is the final verdict.
    pub walk: Explanation,
    /// Per side of `walk.egress`, the datapath's drop reason (`None`: allowed,
    /// or the pod is on no node and nothing there judges it).
    pub egress_reasons: Vec<Option<Reason>>,
    /// The same for `walk.ingress`.
    pub ingress_reasons: Vec<Option<Reason>>,
    /// Where the compiled maps and the model differ (empty unless a bug).
    pub disagreements: Vec<String>,
}

/// Judges connections on one cluster state, compiling each node's maps once.
pub struct Evaluator<'a> {
    index: &'a ClusterIndex,
    maps: BTreeMap<String, (MapSet, BTreeMap<PodKey, u32>)>,
}

/// The addresses of node `name` from its Node object.
pub fn node_addrs(index: &ClusterIndex, name: &str) -> Vec<IpAddr> {
    index
        .nodes()
        .filter(|n| n.name == name)
        .flat_map(|n| n.addresses.iter().copied())
        .collect()
}

impl<'a> Evaluator<'a> {
    pub fn new(index: &'a ClusterIndex) -> Self {
        Self {
            index,
            maps: BTreeMap::new(),
        }
    }

    /// The datapath's decision for one side (`None`: the pod is on no node).
    fn datapath_side(
        &mut self,
        side: &SideExplanation,
        packet: &Packet,
    ) -> Option<Result<(), Reason>> {
        // API: an isolated pod accepts connections from its own node; the
        // datapath applies this before any policy.
        if side.verdict.decided_by == DecidedBy::Node {
            return Some(Ok(()));
        }
        let node = self.index.pod(&side.pod)?.node_name.clone()?;
        let index = self.index;
        let (maps, ids) = self.maps.entry(node.clone()).or_insert_with(|| {
            let desired = compile(index, &NodeInfo { name: node });
            let ids: BTreeMap<PodKey, u32> = desired
                .endpoints
                .keys()
                .enumerate()
                .map(|(i, k)| (k.clone(), i as u32 + 1))
                .collect();
            (encode(&desired, &ids, false), ids)
        });
        ids.get(&side.pod)?;
        let ep = maps.endpoints.get(&side.pod)?;
        let (dir, peer) = match side.direction {
            Direction::Egress => (DIR_EGRESS, packet.dst),
            Direction::Ingress => (DIR_INGRESS, packet.src),
        };
        Some(maps.judge(ep, dir, peer, packet.proto, packet.port))
    }

    /// Judge `packet` both ways and compare.
    pub fn judge(&mut self, packet: &Packet) -> Judgement {
        let index = self.index;
        let addrs = |n: &str| node_addrs(index, n);
        let walk = explain(index, &addrs, packet);
        let mut disagreements = Vec::new();
        let mut reasons = [Vec::new(), Vec::new()];
        for (i, sides) in [&walk.egress, &walk.ingress].into_iter().enumerate() {
            for s in sides {
                let d = self.datapath_side(s, packet);
                reasons[i].push(d.and_then(Result::err));
                let Some(d) = d else { continue };
                let word = |a: bool| if a { "allowed" } else { "denied" };
                if d.is_ok() != s.verdict.allowed {
                    disagreements.push(format!(
                        "{s}: the compiled maps say {}, the model {}",
                        word(d.is_ok()),
                        word(s.verdict.allowed)
                    ));
                } else if let Err(r) = d {
                    if !s.verdict.decided_by.agrees_with_drop(r) {
                        disagreements.push(format!(
                            "{s}: the compiled maps drop it as {}, the model says {} decided",
                            r.as_str(),
                            s.verdict.tier()
                        ));
                    }
                }
            }
        }
        let [egress_reasons, ingress_reasons] = reasons;
        Judgement {
            walk,
            egress_reasons,
            ingress_reasons,
            disagreements,
        }
    }
}
