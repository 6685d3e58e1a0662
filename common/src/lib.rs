//! The ABI shared by the TC programs and user space: map names and sizes, keys,
//! values, the per-entry policy verdict and the event record.
//!
//! Every type here crosses the kernel boundary, so each is `#[repr(C)]`, spells out
//! its padding as named fields (always written as zero), and has its size asserted
//! at compile time. Multi-byte addresses are kept in network byte order as byte
//! arrays; ports are host order `u16`. One module per feature; everything is
//! re-exported here.
#![no_std]

pub mod config;
pub mod conntrack;
pub mod endpoint;
pub mod event;
pub mod maps;
pub mod net;
pub mod policy;
pub mod service;
pub mod stats;

pub use config::*;
pub use conntrack::*;
pub use endpoint::*;
pub use event::*;
pub use maps::{
    MapKind, MapSpec, COUNTER_SLOTS, EVENTS_RING_BYTES, MAX_CONNTRACK, MAX_CT_NEW, MAX_ENDPOINTS,
    MAX_ENDPOINT_ADDRS, MAX_EVENT_RATE, MAX_NODE_ADDRS, MAX_POLICY_ENTRIES, MAX_SERVICES,
    SCRATCH_FLOW_SIZE, SCRATCH_SLOTS,
};
pub use net::*;
pub use policy::*;
pub use service::*;
pub use stats::*;

/// Program names.
pub mod progs {
    /// Host veth TC egress: traffic going into the pod (pod ingress).
    pub const TO_POD: &str = "to_pod";
    /// Host veth TC ingress: traffic leaving the pod (pod egress).
    pub const FROM_POD: &str = "from_pod";
    /// TC egress of the node's other interfaces: the egress decision for pod
    /// traffic to a Service, made after kube-proxy's DNAT chose the backend.
    pub const SVC_EGRESS: &str = "svc_egress";
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all types are repr(C), Copy, contain only integers and byte arrays,
    // and have explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for IpKey {}
    unsafe impl aya::Pod for PolicyScope {}
    unsafe impl aya::Pod for PolicyKeyV4 {}
    unsafe impl aya::Pod for PolicyKeyV6 {}
    unsafe impl aya::Pod for PortRange {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for CtKeyV4 {}
    unsafe impl aya::Pod for CtKeyV6 {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for CtQuota {}
    unsafe impl aya::Pod for RateValue {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for EventBudget {}
    unsafe impl aya::Pod for Stat {}
}
