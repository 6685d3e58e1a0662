//! Source events into the cluster index: objects applied and deleted, each
//! invalid object and unusable input logged once and kept for `/ready`, and
//! the revision the source last declared consistent.
use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use palisade_policy::{ClusterIndex, ErrorKind, Kind, Object, PodKey, PodSpec};
use tracing::{error, info};

use crate::source::SourceEvent;

#[derive(Default)]
pub struct Ingest {
    /// Shared with the deny log (explanations) through a weak reference: a
    /// change copies it only while a batch of events is being rendered.
    pub index: Arc<ClusterIndex>,
    /// Errors per object (invalid objects), so each is logged once per change.
    errors: BTreeMap<String, String>,
    /// The file source's unusable inputs (file -> why), as it last reported them.
    input_errors: BTreeMap<String, String>,
    /// The source has sent a consistent view at least once.
    pub synced: bool,
    pub revision: String,
    pub revisions: BTreeMap<String, String>,
    /// Addresses the CNI plugin reported for local pods, used while the API
    /// server has none for them yet (the kubelet reports them after the
    /// sandbox is up): the pod is enforced, and a peer, from its first packet.
    cni_ips: BTreeMap<PodKey, Vec<IpAddr>>,
}

impl Ingest {
    /// Applies one event; whether it changed what is to be programmed.
    pub fn handle(&mut self, ev: SourceEvent) -> bool {
        match ev {
            SourceEvent::Apply { mut obj, origin } => {
                if let Object::Pod(p) = &mut obj {
                    self.fill_in(p);
                }
                let r = obj.object_ref();
                let key = format!("{r}");
                let out = Arc::make_mut(&mut self.index).apply(obj);
                match out.error {
                    Some(e) => {
                        // The engine's error names the file it came from.
                        let msg = e.to_string();
                        if self.errors.get(&key) != Some(&msg) {
                            let effect = match (r.kind, e.kind) {
                                (Kind::ClusterNetworkPolicy, ErrorKind::Unsupported) => {
                                    "unsupported rule: handled as the message says (never allowing more)"
                                }
                                (Kind::ClusterNetworkPolicy, _) => {
                                    "invalid ClusterNetworkPolicy: not admitted, it changes nothing (the version in force, if any, stays)"
                                }
                                (Kind::NetworkPolicy, _) => {
                                    "invalid object: its pods are isolated with nothing allowed by it"
                                }
                                _ => "invalid object: not used",
                            };
                            error!(object = %key, input = %origin, error = %msg, "{effect}");
                            self.errors.insert(key, msg);
                        }
                    }
                    None => {
                        self.errors.remove(&key);
                        if out.changed {
                            info!(object = %r, "applied");
                        }
                    }
                }
                out.changed
            }
            SourceEvent::Delete(r) => {
                self.errors.remove(&format!("{r}"));
                if r.kind == Kind::Pod {
                    self.cni_ips.remove(&PodKey::new(&r.namespace, &r.name));
                }
                let changed = Arc::make_mut(&mut self.index).delete(&r);
                if changed {
                    info!(object = %r, "deleted");
                }
                changed
            }
            SourceEvent::Error { origin, message } => {
                if self.errors.get(&origin) != Some(&message) {
                    error!(input = %origin, error = %message, "cannot read input; other inputs are still enforced");
                    self.errors.insert(origin, message);
                }
                false
            }
            SourceEvent::InputErrors(now) => {
                for (input, message) in &now {
                    if self.input_errors.get(input) != Some(message) {
                        error!(input = %input, error = %message, "cannot use input; everything else is still enforced");
                    }
                }
                for input in self.input_errors.keys() {
                    if !now.contains_key(input) {
                        info!(input = %input, "input error cleared");
                    }
                }
                let changed = now != self.input_errors;
                self.input_errors = now;
                changed
            }
            // Health goes to the metrics, before the index.
            SourceEvent::Health { .. } => false,
            SourceEvent::Synced {
                revision,
                revisions,
            } => {
                let changed = !self.synced || revision != self.revision;
                self.synced = true;
                self.revision = revision;
                self.revisions = revisions;
                changed
            }
        }
    }

    /// A pod without addresses gets the ones its CNI ADD reported; once the
    /// API server reports its own, those are used and the CNI's forgotten.
    fn fill_in(&mut self, p: &mut PodSpec) {
        if !p.ips.is_empty() {
            self.cni_ips.remove(&p.key());
        } else if !p.host_network {
            if let Some(ips) = self.cni_ips.get(&p.key()) {
                p.ips = ips.clone();
            }
        }
    }

    /// Record the addresses a CNI ADD reported for `pod` and give them to it
    /// if the index has it without any. Whether the index changed.
    pub fn cni_addresses(&mut self, pod: PodKey, ips: &[IpAddr]) -> bool {
        if ips.is_empty() {
            return false;
        }
        // At most one per family, as the API's podIPs.
        let mut one_each: Vec<IpAddr> = Vec::new();
        for ip in ips {
            if !one_each.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
                one_each.push(*ip);
            }
        }
        self.cni_ips.insert(pod.clone(), one_each);
        let Some(mut p) = self.index.pod(&pod).cloned() else {
            return false;
        };
        if !p.ips.is_empty() || p.host_network {
            return false;
        }
        self.fill_in(&mut p);
        Arc::make_mut(&mut self.index).apply(Object::Pod(p)).changed
    }

    /// CNI DEL: the sandbox and its addresses are gone. A pod whose addresses
    /// came from its ADD alone loses them again (they may go to another pod
    /// next). Whether the index changed.
    pub fn cni_forget(&mut self, pod: &PodKey) -> bool {
        let Some(ips) = self.cni_ips.remove(pod) else {
            return false;
        };
        match self.index.pod(pod).cloned() {
            Some(mut p) if p.ips == ips => {
                p.ips.clear();
                Arc::make_mut(&mut self.index).apply(Object::Pod(p)).changed
            }
            _ => false,
        }
    }

    /// What `/ready` lists as errors: invalid objects, unusable inputs.
    pub fn error_lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self.errors.values().cloned().collect();
        out.extend(
            self.input_errors
                .iter()
                .map(|(input, message)| format!("{input}: {message}")),
        );
        out
    }
}
