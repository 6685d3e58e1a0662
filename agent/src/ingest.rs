//! Source events into the cluster index: objects applied and deleted, each
//! invalid object and unusable input logged once and kept for `/ready`, and
//! the revision the source last declared consistent.
use std::{collections::BTreeMap, sync::Arc};

use palisade_policy::{ClusterIndex, ErrorKind, Kind};
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
}

impl Ingest {
    /// Applies one event; whether it changed what is to be programmed.
    pub fn handle(&mut self, ev: SourceEvent) -> bool {
        match ev {
            SourceEvent::Apply { obj, origin } => {
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
