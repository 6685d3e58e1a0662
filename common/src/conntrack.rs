//! Connection tracking records: which flows a hook allowed, so that their
//! replies (and ICMP errors about them) pass the other hook.

/// Connection tracking key: the 5-tuple as first seen, scoped to the interface that
/// created it so one pod cannot open state for another.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub ifindex: u32,
    pub family: u8,
    pub proto: u8,
    pub _pad0: [u8; 2],
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);

/// Connection tracking value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// `DIR_*` of the hook that created the entry.
    pub direction: u8,
    pub _pad0: [u8; 7],
    pub created_ns: u64,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 16);
