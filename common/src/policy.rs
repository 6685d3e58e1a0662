//! Policy entries: the LPM keys (endpoint scope, then peer prefix), the value
//! (protocols and port ranges allowed towards those peers), and the one
//! per-entry verdict ([`entry_verdict`]) that the TC programs, the engine's
//! encoder and its lookups all call.

use crate::event::Reason;

/// Port ranges one policy entry can carry. A union that does not fit is refused.
pub const MAX_PORT_RANGES: usize = 24;

/// Scope of a policy entry: which endpoint and which direction. Part of the LPM key,
/// always fully matched (the prefix length counts these 64 bits first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyScope {
    /// Endpoint id, big-endian so the trie's byte order matches numeric order.
    pub endpoint_be: [u8; 4],
    pub direction: u8,
    /// Padding as integers (see `IpKey`).
    pub _pad0: u8,
    pub _pad1: u16,
}
const _: () = assert!(core::mem::size_of::<PolicyScope>() == 8);

impl PolicyScope {
    pub const fn new(endpoint_id: u32, direction: u8) -> Self {
        Self {
            endpoint_be: endpoint_id.to_be_bytes(),
            direction,
            _pad0: 0,
            _pad1: 0,
        }
    }
}

/// Bits of the LPM key that belong to the scope.
pub const SCOPE_BITS: u32 = 64;

/// Data of the IPv4 LPM key: scope then peer address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKeyV4 {
    pub scope: PolicyScope,
    pub addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<PolicyKeyV4>() == 12);

/// Data of the IPv6 LPM key: scope then peer address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKeyV6 {
    pub scope: PolicyScope,
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<PolicyKeyV6>() == 24);

/// Protocol bits for `PolicyValue::all_ports`: the protocol is allowed on every port.
pub const PBIT_TCP: u8 = 1 << 0;
pub const PBIT_UDP: u8 = 1 << 1;
pub const PBIT_SCTP: u8 = 1 << 2;
/// `PolicyValue::all_ports`: every protocol other than TCP, UDP and SCTP (ICMP,
/// ICMPv6, ...) is allowed. A ClusterNetworkPolicy can allow those while denying
/// some TCP port, which `PV_ALL` cannot say. A packet whose protocol is not TCP,
/// UDP or SCTP is allowed by a value iff `PV_ALL` or this bit is set.
pub const PBIT_OTHER: u8 = 1 << 3;

/// Map an IP protocol number to its `PBIT_*` bit (0 for protocols without ports).
#[inline(always)]
pub const fn proto_bit(proto: u8) -> u8 {
    use crate::net::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};
    match proto {
        PROTO_TCP => PBIT_TCP,
        PROTO_UDP => PBIT_UDP,
        PROTO_SCTP => PBIT_SCTP,
        _ => 0,
    }
}

/// The `all_ports` bit that allows `proto` whatever its port: its `PBIT_*` for
/// TCP, UDP and SCTP, `PBIT_OTHER` for every other protocol. Never 0.
#[inline(always)]
pub const fn all_ports_bit(proto: u8) -> u8 {
    match proto_bit(proto) {
        0 => PBIT_OTHER,
        b => b,
    }
}

/// An inclusive port range for one protocol: allowed (`reason` 0), or denied
/// for the `Reason` whose code `reason` is (a ClusterNetworkPolicy tier's deny
/// that differs from the entry's `deny_reason`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub proto: u8,
    pub reason: u8,
    pub first: u16,
    pub last: u16,
    pub _pad1: u16,
}
const _: () = assert!(core::mem::size_of::<PortRange>() == 8);

/// `PolicyValue::flags`: every protocol and port (a rule without `ports`).
pub const PV_ALL: u8 = 1 << 0;

/// What is allowed towards/from the peers under one prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    pub flags: u8,
    /// `PBIT_*`: protocols allowed on every port; `PBIT_OTHER`: protocols
    /// without ports (see [`all_ports_bit`]).
    pub all_ports: u8,
    /// Number of valid entries in `ranges`: the allowed ranges first, then the
    /// denied ones (the first range containing the port decides).
    pub count: u8,
    /// `Reason` code of a packet that nothing in the entry matches (0:
    /// `NoPolicyAllows`).
    pub deny_reason: u8,
    /// `Reason` code of a denied packet of a protocol without ports (0: as
    /// `deny_reason`).
    pub other_reason: u8,
    pub _pad0: [u8; 3],
    pub ranges: [PortRange; MAX_PORT_RANGES],
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 8 + 8 * MAX_PORT_RANGES);

impl Default for PolicyValue {
    fn default() -> Self {
        Self {
            flags: 0,
            all_ports: 0,
            count: 0,
            deny_reason: 0,
            other_reason: 0,
            _pad0: [0; 3],
            ranges: [PortRange::default(); MAX_PORT_RANGES],
        }
    }
}

/// What one policy entry says about a packet of a peer it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryVerdict {
    Allow,
    /// No allowing protocol bit or port range of the entry matches; why (the
    /// tier that denies, or `NoPolicyAllows`).
    Deny(Reason),
    /// A non-first fragment (it has no ports) and the entry does not allow
    /// every port of its protocol.
    DenyFragment,
}

/// The protocols and ports one entry allows, as [`PolicyValue`] holds them and
/// as the engine holds them before encoding.
pub trait PortRanges {
    /// The most ranges the representation holds: bounds the verdict's loop,
    /// which the verifier needs.
    const MAX_RANGES: usize;
    /// Every protocol and port (`PV_ALL`).
    fn allows_everything(&self) -> bool;
    /// `PBIT_*` of protocols allowed on every port.
    fn all_ports(&self) -> u8;
    fn range_count(&self) -> usize;
    /// Range `i` as `(protocol, first, last, reason)`, inclusive; `reason` 0
    /// allows, another `Reason` code denies; `None` past the end.
    fn range(&self, i: usize) -> Option<(u8, u16, u16, u8)>;
    /// `Reason` code of a packet nothing matches (0: `NoPolicyAllows`).
    fn deny_reason(&self) -> u8;
    /// `Reason` code of a denied protocol without ports (0: `deny_reason`).
    fn other_reason(&self) -> u8;
}

/// The reason a deny code names; 0 (and any unknown code) is `NoPolicyAllows`.
#[inline(always)]
pub const fn deny_reason_of(code: u8) -> Reason {
    match Reason::from_u8(code) {
        Some(r) => r,
        None => Reason::NoPolicyAllows,
    }
}

impl PortRanges for PolicyValue {
    const MAX_RANGES: usize = MAX_PORT_RANGES;
    #[inline(always)]
    fn allows_everything(&self) -> bool {
        self.flags & PV_ALL != 0
    }
    #[inline(always)]
    fn all_ports(&self) -> u8 {
        self.all_ports
    }
    #[inline(always)]
    fn range_count(&self) -> usize {
        self.count as usize
    }
    #[inline(always)]
    fn range(&self, i: usize) -> Option<(u8, u16, u16, u8)> {
        self.ranges
            .get(i)
            .map(|r| (r.proto, r.first, r.last, r.reason))
    }
    #[inline(always)]
    fn deny_reason(&self) -> u8 {
        self.deny_reason
    }
    #[inline(always)]
    fn other_reason(&self) -> u8 {
        self.other_reason
    }
}

/// The per-entry decision: everything (`PV_ALL`); or the protocol's all-ports
/// bit (`PBIT_OTHER` for protocols without ports, see [`all_ports_bit`]); a
/// non-first fragment (`port` is `None`) matches nothing else; a protocol
/// without ports matches no range (denied for `other_reason`); otherwise the
/// first range of the packet's protocol containing its destination port
/// decides, and none is a deny for `deny_reason`.
#[inline(always)]
pub fn entry_verdict<T: PortRanges + ?Sized>(v: &T, proto: u8, port: Option<u16>) -> EntryVerdict {
    if v.allows_everything() || v.all_ports() & all_ports_bit(proto) != 0 {
        return EntryVerdict::Allow;
    }
    let Some(port) = port else {
        return EntryVerdict::DenyFragment;
    };
    let deny = v.deny_reason();
    if proto_bit(proto) == 0 {
        let other = v.other_reason();
        return EntryVerdict::Deny(deny_reason_of(if other == 0 { deny } else { other }));
    }
    // The loop's shape matters to the verifier on older kernels: a constant trip
    // count, the entry's count as a separate exit, and no bounds-check panic.
    let n = v.range_count();
    for i in 0..T::MAX_RANGES {
        if i == n {
            break;
        }
        let Some((p, first, last, reason)) = v.range(i) else {
            break;
        };
        if p == proto && first <= port && port <= last {
            if reason == 0 {
                return EntryVerdict::Allow;
            }
            return EntryVerdict::Deny(deny_reason_of(reason));
        }
    }
    EntryVerdict::Deny(deny_reason_of(deny))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

    #[test]
    fn denied_ranges_and_defaults_name_their_reason() {
        let admin = Reason::AdminDeny as u8;
        let baseline = Reason::BaselineDeny as u8;
        let mut v = value(
            0,
            0,
            &[
                (PROTO_TCP, 80, 80),
                (PROTO_TCP, 22, 22),
                (PROTO_TCP, 1, 100),
            ],
        );
        v.ranges[1].reason = admin;
        v.ranges[2].reason = admin;
        v.deny_reason = baseline;
        // The allowed range comes first: 80 inside the denied 1-100 is allowed.
        assert_eq!(entry_verdict(&v, PROTO_TCP, Some(80)), EntryVerdict::Allow);
        assert_eq!(
            entry_verdict(&v, PROTO_TCP, Some(22)),
            EntryVerdict::Deny(Reason::AdminDeny)
        );
        assert_eq!(
            entry_verdict(&v, PROTO_TCP, Some(443)),
            EntryVerdict::Deny(Reason::BaselineDeny)
        );
        assert_eq!(
            entry_verdict(&v, PROTO_ICMP, Some(0)),
            EntryVerdict::Deny(Reason::BaselineDeny)
        );
        v.other_reason = admin;
        assert_eq!(
            entry_verdict(&v, PROTO_ICMP, Some(0)),
            EntryVerdict::Deny(Reason::AdminDeny)
        );
        assert_eq!(
            entry_verdict(&v, PROTO_TCP, None),
            EntryVerdict::DenyFragment
        );
    }

    fn value(flags: u8, all_ports: u8, ranges: &[(u8, u16, u16)]) -> PolicyValue {
        let mut v = PolicyValue {
            flags,
            all_ports,
            count: ranges.len() as u8,
            ..PolicyValue::default()
        };
        for (slot, &(proto, first, last)) in v.ranges.iter_mut().zip(ranges) {
            *slot = PortRange {
                proto,
                first,
                last,
                ..PortRange::default()
            };
        }
        v
    }

    const NO: EntryVerdict = EntryVerdict::Deny(Reason::NoPolicyAllows);

    #[test]
    fn everything_allows_fragments_and_portless_protocols() {
        let v = value(PV_ALL, 0, &[]);
        assert_eq!(entry_verdict(&v, PROTO_TCP, None), EntryVerdict::Allow);
        assert_eq!(entry_verdict(&v, PROTO_ICMP, Some(7)), EntryVerdict::Allow);
    }

    #[test]
    fn ranges_match_protocol_and_port_inclusively() {
        let v = value(0, 0, &[(PROTO_TCP, 80, 81), (PROTO_UDP, 53, 53)]);
        assert_eq!(entry_verdict(&v, PROTO_TCP, Some(81)), EntryVerdict::Allow);
        assert_eq!(entry_verdict(&v, PROTO_TCP, Some(82)), NO);
        assert_eq!(entry_verdict(&v, PROTO_UDP, Some(80)), NO);
        assert_eq!(
            entry_verdict(&v, PROTO_TCP, None),
            EntryVerdict::DenyFragment
        );
    }

    #[test]
    fn ranges_past_the_count_are_ignored() {
        let mut v = value(0, 0, &[(PROTO_TCP, 80, 80), (PROTO_TCP, 443, 443)]);
        v.count = 1;
        assert_eq!(entry_verdict(&v, PROTO_TCP, Some(443)), NO);
    }

    #[test]
    fn a_portless_protocol_needs_the_other_bit() {
        // An ICMP echo id must never be taken for a port.
        let v = value(0, PBIT_TCP, &[(PROTO_TCP, 7, 7)]);
        assert_eq!(entry_verdict(&v, PROTO_ICMP, Some(7)), NO);
        let v = value(0, PBIT_OTHER, &[]);
        assert_eq!(entry_verdict(&v, PROTO_ICMP, Some(7)), EntryVerdict::Allow);
        assert_eq!(entry_verdict(&v, PROTO_TCP, Some(7)), NO);
        assert_eq!(entry_verdict(&v, 47, None), EntryVerdict::Allow);
    }
}
