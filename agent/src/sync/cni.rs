//! CNI requests in the sync loop: ADD records what the plugin says of the
//! pod (its host interfaces, its addresses), runs a pass at once (attach
//! only, before the source's first consistent view) and answers with how the
//! pod's interface is enforced; CHECK answers the same without a pass; DEL
//! forgets the pod's CNI hints unless a later ADD gave the pod another
//! sandbox.
use palisade_cni::protocol::{Command, Enforcement, Reply, Request};
use palisade_common::EP_FAIL_CLOSED;
use palisade_policy::{NodeInfo, PodKey};
use tracing::{info, warn};

use super::SyncLoop;
use crate::{cni::CniCall, datapath::Hook, node::Wake};

fn pod_key(req: &Request) -> Option<PodKey> {
    match (&req.pod_namespace, &req.pod_name) {
        (Some(ns), Some(name)) => Some(PodKey::new(ns, name)),
        _ => None,
    }
}

impl SyncLoop {
    pub(super) fn on_cni(&mut self, call: CniCall) {
        let req = &call.req;
        let reply = match req.command {
            Command::Add => self.cni_add(req),
            Command::Check => self.cni_state(req),
            Command::Del => {
                let mut changed = false;
                // A late or repeated DEL of a sandbox the pod's last ADD
                // replaced must not take the new sandbox's addresses.
                if let Some(pod) = pod_key(req).filter(|p| {
                    self.cni_sandboxes
                        .get(p)
                        .is_none_or(|c| *c == req.container_id)
                }) {
                    changed = self.ingest.cni_forget(&pod);
                    self.endpoints.cni_forget(&pod);
                    self.cni_sandboxes.remove(&pod);
                }
                // The interface is going: rediscover on the next pass, at once
                // if the pod lost the addresses its ADD gave it.
                self.interfaces.on_wake(Wake::Links);
                if changed && self.ingest.synced {
                    self.program();
                }
                Reply {
                    ok: true,
                    interface: None,
                    ifindex: None,
                    enforcement: None,
                    error: None,
                }
            }
        };
        let pod = pod_key(req).map_or_else(|| req.container_id.clone(), |p| p.to_string());
        match (&reply.ok, req.command) {
            (true, Command::Add) => info!(
                pod = %pod,
                interface = reply.interface.as_deref().unwrap_or(""),
                enforcement = ?reply.enforcement,
                "CNI ADD: pod enforced before it starts"
            ),
            (false, _) => warn!(
                pod = %pod,
                command = ?req.command,
                error = reply.error.as_deref().unwrap_or(""),
                "CNI request refused"
            ),
            _ => {}
        }
        // The plugin may have given up waiting; nothing is lost then.
        let _ = call.reply.send(reply);
    }

    fn cni_add(&mut self, req: &Request) -> Reply {
        if let Some(pod) = pod_key(req) {
            self.cni_sandboxes
                .insert(pod.clone(), req.container_id.clone());
            // A change of the index like any other: the pass below compiles it.
            self.ingest.cni_addresses(pod.clone(), &req.ips);
            self.endpoints.cni_add(pod, req.host_interfaces.clone());
        }
        // The pod's interface is new: scan before this pass.
        self.interfaces.on_wake(Wake::Links);
        if self.ingest.synced {
            self.program();
        } else if self.dp.upgrading() {
            // Attaching now would point every hook at maps not filled yet.
            return Reply::refused(
                "the agent is moving to a new map layout and has not read the cluster yet; the runtime retries",
            );
        } else {
            // No consistent view of the cluster yet: nothing is written, the
            // programs drop everything on the interface until it is.
            let node = NodeInfo {
                name: self.opts.node.clone(),
            };
            if let Some((links, ifaces)) = self.find_interfaces(&node) {
                let check = self.compiler.is_none();
                self.attach(&links, &ifaces, check);
                self.interfaces.keep(links);
            }
        }
        self.cni_state(req)
    }

    /// The first of the request's host interfaces with both pod programs
    /// attached, and whether its endpoint record is written.
    fn cni_state(&self, req: &Request) -> Reply {
        for name in &req.host_interfaces {
            let Some(idx) = self.interfaces.ifindex(name) else {
                continue;
            };
            if !(self.dp.is_attached(idx, Hook::ToPod) && self.dp.is_attached(idx, Hook::FromPod)) {
                continue;
            }
            // A record flagged fail-closed (rules that do not fit) drops
            // everything, as a missing one does.
            let by_policy = self
                .maps
                .endpoints
                .get(&idx, 0)
                .is_ok_and(|r| r.flags & EP_FAIL_CLOSED == 0);
            return Reply {
                ok: true,
                interface: Some(name.clone()),
                ifindex: Some(idx),
                enforcement: Some(if by_policy {
                    Enforcement::Policy
                } else {
                    Enforcement::FailClosed
                }),
                error: None,
            };
        }
        Reply::refused(format!(
            "none of the host interfaces {:?} is a pod interface with Palisade's programs attached (not found, not a veth, or attaching failed: see the agent's log and /ready)",
            req.host_interfaces
        ))
    }
}
