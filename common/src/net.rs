//! Address families, IP protocol numbers and directions as keys and events
//! carry them.

/// Address family tags used in keys and events.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers the datapath knows about.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// Direction of a policy decision, seen from the pod.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;
