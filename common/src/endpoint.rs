//! Local pods as the datapath knows them: the endpoint record keyed by the
//! host-side veth's ifindex, the address key, and per-endpoint counters.

use crate::net::{FAMILY_V4, FAMILY_V6};

/// Endpoint flags.
pub const EP_INGRESS_ISOLATED: u32 = 1 << 0;
pub const EP_EGRESS_ISOLATED: u32 = 1 << 1;
pub const EP_AUDIT: u32 = 1 << 2;
pub const EP_HAS_V4: u32 = 1 << 3;
pub const EP_HAS_V6: u32 = 1 << 4;
/// The writer could not represent this endpoint's rules: deny everything that
/// policy would judge (fail closed), and report it.
pub const EP_FAIL_CLOSED: u32 = 1 << 5;

/// Padding after `Endpoint::ipv4`; 8 bytes longer in the test layout (see
/// `build.rs`), a record of another size as a version of another layout has.
pub const ENDPOINT_PAD: usize = if cfg!(palisade_test_layout) { 12 } else { 4 };

/// One local pod, keyed by the ifindex of its host-side veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Agent-assigned id that scopes this pod's policy entries.
    pub id: u32,
    pub flags: u32,
    pub ipv4: [u8; 4],
    pub _pad0: [u8; ENDPOINT_PAD],
    pub ipv6: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 28 + ENDPOINT_PAD);

impl Default for Endpoint {
    fn default() -> Self {
        Self {
            id: 0,
            flags: 0,
            ipv4: [0; 4],
            _pad0: [0; ENDPOINT_PAD],
            ipv6: [0; 16],
        }
    }
}

/// Key of `ENDPOINT_BY_IP` and `NODE_ADDRS`: an address of either family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpKey {
    pub family: u8,
    /// Padding as integers: zeroing a byte array compiles to a call of the
    /// programs' byte-wise `memset` subprogram.
    pub _pad0: u8,
    pub _pad1: u16,
    /// IPv4 in the first 4 bytes, rest zero.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<IpKey>() == 20);

impl IpKey {
    pub const fn v4(addr: [u8; 4]) -> Self {
        let mut a = [0u8; 16];
        a[0] = addr[0];
        a[1] = addr[1];
        a[2] = addr[2];
        a[3] = addr[3];
        Self {
            family: FAMILY_V4,
            _pad0: 0,
            _pad1: 0,
            addr: a,
        }
    }
    pub const fn v6(addr: [u8; 16]) -> Self {
        Self {
            family: FAMILY_V6,
            _pad0: 0,
            _pad1: 0,
            addr,
        }
    }
}

/// Per-endpoint counters (per CPU), keyed by endpoint id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Counters {
    pub allowed_packets: u64,
    pub allowed_bytes: u64,
    pub denied_packets: u64,
    pub denied_bytes: u64,
    pub audit_packets: u64,
    pub events_lost: u64,
}
const _: () = assert!(core::mem::size_of::<Counters>() == 48);

impl Counters {
    /// Adds `o` (another CPU's counters) to these.
    pub fn add(&mut self, o: &Counters) {
        self.allowed_packets += o.allowed_packets;
        self.allowed_bytes += o.allowed_bytes;
        self.denied_packets += o.denied_packets;
        self.denied_bytes += o.denied_bytes;
        self.audit_packets += o.audit_packets;
        self.events_lost += o.events_lost;
    }
}
