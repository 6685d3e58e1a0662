//! Service frontends whose egress decision waits for kube-proxy's DNAT, and the
//! skb mark that carries the pending decision.

/// The skb mark bit `from_pod` sets on pod traffic to a Service address whose egress
/// decision is deferred until after DNAT (see `progs::SVC_EGRESS`). Chosen clear of
/// kube-proxy's 0x4000/0x8000 bits.
pub const MARK_SVC_PENDING: u32 = 0x0100_0000;

/// With `MARK_SVC_PENDING`: the packet opened a new connection (`from_pod`
/// created its conntrack entry), so the decision after DNAT reports it as a new
/// allowed flow (flow events name the backend, never the ClusterIP).
pub const MARK_SVC_NEW: u32 = 0x0200_0000;

/// Key of `SERVICES`: a frontend (ClusterIP, protocol and port) whose egress
/// decision waits for the DNAT.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub family: u8,
    pub proto: u8,
    pub port: u16,
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);
