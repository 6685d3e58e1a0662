//! The parts of `kubectl palisade` that tests and tools share: reading a
//! directory of manifests as the agent's file source does, or a live cluster
//! as its kube source does, and judging a
//! connection from the compiled maps and the model at once.
pub mod cluster;
pub mod judge;
pub mod manifests;
