//! The index's journal: the real changes, in order, each with the old and the new
//! projection of the object, numbered by generation and bounded in length. The
//! incremental compiler reads the changes since the generation it last compiled
//! to find the endpoints they can affect; when those are no longer kept it
//! recompiles everything.

use std::collections::VecDeque;

use crate::model::{ClusterNetworkPolicySpec, NamespaceSpec, NetworkPolicySpec, NodeSpec, PodSpec};

/// One real change, as the incremental compiler needs it (old and new projection).
#[derive(Clone, Debug)]
pub enum Change {
    Namespace {
        old: Option<NamespaceSpec>,
        new: Option<NamespaceSpec>,
    },
    Pod {
        old: Option<PodSpec>,
        new: Option<PodSpec>,
    },
    Policy {
        old: Option<NetworkPolicySpec>,
        new: Option<NetworkPolicySpec>,
    },
    Service,
    ClusterPolicy {
        old: Option<ClusterNetworkPolicySpec>,
        new: Option<ClusterNetworkPolicySpec>,
    },
    Node {
        old: Option<NodeSpec>,
        new: Option<NodeSpec>,
    },
}

/// Changes kept for the incremental compiler; past this it recompiles everything.
const JOURNAL_LIMIT: usize = 4096;

/// The last [`JOURNAL_LIMIT`] changes and the generation of the first one kept.
#[derive(Clone, Debug, Default)]
pub(crate) struct Journal {
    changes: VecDeque<Change>,
    /// Generation of `changes[0]`.
    start: u64,
}

impl Journal {
    pub(crate) fn record(&mut self, c: Change) {
        self.changes.push_back(c);
        if self.changes.len() > JOURNAL_LIMIT {
            self.changes.pop_front();
            self.start += 1;
        }
    }

    /// Generation after the last change (monotonic).
    pub(crate) fn generation(&self) -> u64 {
        self.start + self.changes.len() as u64
    }

    /// Changes after generation `since`, or `None` when they are no longer kept.
    pub(crate) fn since(&self, since: u64) -> Option<impl Iterator<Item = &Change>> {
        if since < self.start || since > self.generation() {
            return None;
        }
        Some(self.changes.iter().skip((since - self.start) as usize))
    }
}
