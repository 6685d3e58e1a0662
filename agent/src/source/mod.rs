//! Policy sources: where cluster state comes from.
//!
//! A source sends `SourceEvent`s into the sync loop: objects applied and deleted,
//! and `Synced` whenever what it has sent so far is a consistent view (the file
//! source after each scan; the kube source once every watcher has listed). Nothing
//! is programmed before the first `Synced`.
use std::collections::BTreeMap;

use palisade_policy::{Object, ObjectRef};

mod backoff;
pub mod file;
pub mod inotify;
pub mod kube;

pub use backoff::BackoffConfig;
pub use file::{FileSource, MAX_FILE_BYTES, REVISION_FILE};
pub use kube::KubeSource;

#[derive(Debug)]
pub enum SourceEvent {
    Apply {
        obj: Object,
        origin: String,
    },
    Delete(ObjectRef),
    /// One object that could not be converted (kube source); reported until
    /// that object is applied or deleted.
    Error {
        origin: String,
        message: String,
    },
    /// The complete set of the source's input errors now (file source: input
    /// -> message): it replaces every input error the source reported before,
    /// so a fixed or removed file's error clears.
    InputErrors(BTreeMap<String, String>),
    /// The health of one resource's feed (kube source: one per watched
    /// resource; file source: `files`): `up` while it is current, and whether
    /// it just failed and restarts.
    Health {
        resource: String,
        up: bool,
        restarted: bool,
    },
    /// Everything sent so far is a consistent snapshot at `revision`.
    Synced {
        revision: String,
        /// Per resource (kube source: `pods`, `namespaces`, ...), the highest
        /// resourceVersion delivered. Each resource is its own watch stream, so
        /// only this tells that a given write has arrived. Empty for files.
        revisions: BTreeMap<String, String>,
    },
}
