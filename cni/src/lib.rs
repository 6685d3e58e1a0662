//! The `palisade-cni` plugin's two wire formats: the CNI calling convention
//! ([`spec`]: environment, network configuration and `prevResult` on stdin,
//! results and errors on stdout) and the node agent's socket protocol
//! ([`protocol`]: one JSON request and one JSON reply per connection), which
//! the agent serves.
pub mod protocol;
pub mod spec;
