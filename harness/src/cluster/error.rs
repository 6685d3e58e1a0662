//! The errors of a namespace cluster that callers may want to tell apart:
//! an object the cluster does not have (or has already), a cluster built
//! without an agent, an agent that exited or never reached a revision, and a
//! source file that could not be removed. Each names the object concerned.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Lines of an agent's log quoted in [`ClusterError::AgentExited`] and
/// [`ClusterError::NotProgrammed`].
pub(super) const LOG_LINES: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no pod {0}")]
    NoPod(String),
    #[error("no node {0}")]
    NoNode(usize),
    #[error("no external @{0}")]
    NoExternal(String),
    #[error("no namespace {0}")]
    NoNamespace(String),
    #[error("no Service {namespace}/{name}")]
    NoService { namespace: String, name: String },
    #[error("no NetworkPolicy {namespace}/{name} to delete")]
    NoPolicy { namespace: String, name: String },
    #[error("no ClusterNetworkPolicy {0} to delete")]
    NoClusterPolicy(String),
    #[error("pod {0} exists")]
    PodExists(String),
    #[error("Service {namespace}/{name} exists")]
    ServiceExists { namespace: String, name: String },
    #[error("this cluster was built without an agent")]
    NoAgent,
    /// The agent on `node` exited while the cluster waited for `revision`.
    #[error(
        "agent on node-{node} exited ({status}) while waiting for revision {revision}\n--- agent log (last {LOG_LINES} lines) ---\n{log}"
    )]
    AgentExited {
        node: usize,
        status: String,
        revision: String,
        log: String,
    },
    /// The agent on `node` did not report `revision` in time; `last` is its
    /// last readiness answer.
    #[error(
        "agent on node-{node} did not report revision {revision} within {timeout:?}; last response: {last}\n--- agent log (last {LOG_LINES} lines) ---\n{log}"
    )]
    NotProgrammed {
        node: usize,
        revision: String,
        timeout: Duration,
        last: String,
        log: String,
    },
    /// A file of the agents' source directories could not be removed.
    #[error("remove {}", path.display())]
    RemoveSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
