//! Protocol/port sets: what one grant or one LPM entry allows, normalised so that
//! equal sets compare equal, with the datapath's test ([`PortSet::allows`]), and
//! the reasons of what a set denies when a ClusterNetworkPolicy tier decides
//! ([`DenyReasons`]).

use palisade_common::{
    entry_verdict, proto_bit, EntryVerdict, PortRanges, Reason, PBIT_OTHER, PBIT_SCTP, PBIT_TCP,
    PBIT_UDP,
};

use crate::model::Protocol;

impl PortRanges for PortSet {
    const MAX_RANGES: usize = usize::MAX;
    fn allows_everything(&self) -> bool {
        self.all
    }
    fn all_ports(&self) -> u8 {
        self.all_ports
    }
    fn range_count(&self) -> usize {
        self.ranges.len() + self.deny.ranges.len()
    }
    fn range(&self, i: usize) -> Option<(u8, u16, u16, u8)> {
        match self.ranges.get(i) {
            Some(&(p, f, l)) => Some((p, f, l, 0)),
            None => self.deny.ranges.get(i - self.ranges.len()).copied(),
        }
    }
    fn deny_reason(&self) -> u8 {
        self.deny.default
    }
    fn other_reason(&self) -> u8 {
        self.deny.other
    }
}

/// Why the packets a set does not allow are denied, as the datapath reports it:
/// `Reason` codes, 0 meaning `NoPolicyAllows`. NetworkPolicy alone leaves it
/// empty; ClusterNetworkPolicy resolution names the tier that denies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DenyReasons {
    /// Every denied packet not covered below.
    pub default: u8,
    /// Denied protocols without ports (0: as `default`).
    pub other: u8,
    /// `(protocol number, first, last, reason)`: ports denied for a reason other
    /// than `default`. They may overlap allowed ranges, which take precedence.
    pub ranges: Vec<(u8, u16, u16, u8)>,
}

impl DenyReasons {
    /// The code a set uses for `r` (`NoPolicyAllows` is 0).
    pub fn code(r: Reason) -> u8 {
        match r {
            Reason::NoPolicyAllows => 0,
            r => r as u8,
        }
    }

    /// The code as a set stores it: `NoPolicyAllows`'s own code is 0.
    pub fn code_of(code: u8) -> u8 {
        if code == Reason::NoPolicyAllows as u8 {
            0
        } else {
            code
        }
    }

    fn normalize(&mut self) {
        if self.default == Reason::NoPolicyAllows as u8 {
            self.default = 0;
        }
        let default = self.default;
        let same = |c: u8| c == default || (default == 0 && c == Reason::NoPolicyAllows as u8);
        if same(self.other) {
            self.other = 0;
        }
        self.ranges.retain(|&(_, _, _, r)| !same(r));
        self.ranges.sort_unstable();
        self.ranges.dedup();
    }
}

/// A set of protocols and ports, normalised (sorted, merged ranges; nothing
/// redundant; a protocol's ranges covering 0..=65535 become its all-ports bit;
/// `PBIT_OTHER` with all three all-ports bits becomes `all`), so equal sets compare
/// equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSet {
    /// Every protocol and port (a rule without `ports`).
    pub all: bool,
    /// `PBIT_*` of protocols allowed on every port (a port entry without `port`),
    /// and `PBIT_OTHER`: every protocol other than TCP/UDP/SCTP (ICMP, ...), which
    /// only ClusterNetworkPolicy resolution produces on its own.
    pub all_ports: u8,
    /// Inclusive `(protocol number, first, last)` ranges, sorted, merged.
    pub ranges: Vec<(u8, u16, u16)>,
    /// Why the rest is denied (empty when NetworkPolicy alone decides).
    pub deny: DenyReasons,
}

impl PortSet {
    pub fn everything() -> Self {
        Self {
            all: true,
            ..Self::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.all_ports == 0 && self.ranges.is_empty()
    }

    pub fn add_all_ports(&mut self, p: Protocol) {
        self.all_ports |= proto_bit(p.number());
        self.normalize();
    }

    /// Allow every protocol other than TCP, UDP and SCTP.
    pub fn add_other(&mut self) {
        self.all_ports |= PBIT_OTHER;
        self.normalize();
    }

    pub fn add_range(&mut self, p: Protocol, first: u16, last: u16) {
        self.ranges.push((p.number(), first, last));
        self.normalize();
    }

    /// Add inclusive `(protocol number, first, last)` ranges.
    pub(crate) fn add_ranges(&mut self, ranges: Vec<(u8, u16, u16)>) {
        self.ranges.extend(ranges);
        self.normalize();
    }

    /// The union of what both allow; a denied packet keeps the reason either
    /// gives (allowed ranges precede denied ones in the datapath's scan).
    pub fn union_with(&mut self, other: &PortSet) {
        self.all |= other.all;
        self.all_ports |= other.all_ports;
        self.ranges.extend_from_slice(&other.ranges);
        self.deny.ranges.extend_from_slice(&other.deny.ranges);
        if self.deny.default == 0 {
            self.deny.default = other.deny.default;
        }
        if self.deny.other == 0 {
            self.deny.other = other.deny.other;
        }
        self.normalize();
    }

    /// Set why the packets this set does not allow are denied.
    pub(crate) fn set_deny(&mut self, deny: DenyReasons) {
        self.deny = deny;
        self.normalize();
    }

    /// The datapath's test ([`entry_verdict`], the function the TC programs
    /// call on the encoded value).
    pub fn allows(&self, proto: u8, port: Option<u16>) -> bool {
        entry_verdict(self, proto, port) == EntryVerdict::Allow
    }

    fn normalize(&mut self) {
        if self.all_ports == PBIT_TCP | PBIT_UDP | PBIT_SCTP | PBIT_OTHER {
            self.all = true;
        }
        if self.all {
            self.all_ports = 0;
            self.ranges.clear();
            self.deny = DenyReasons::default();
            return;
        }
        self.deny.normalize();
        let bits = self.all_ports;
        self.ranges.retain(|&(p, _, _)| proto_bit(p) & bits == 0);
        self.ranges.sort_unstable();
        let mut out: Vec<(u8, u16, u16)> = Vec::with_capacity(self.ranges.len());
        for &(p, f, l) in &self.ranges {
            match out.last_mut() {
                // Merge overlapping and adjacent ranges of one protocol.
                Some((lp, _, ll)) if *lp == p && u32::from(f) <= u32::from(*ll) + 1 => {
                    *ll = (*ll).max(l);
                }
                _ => out.push((p, f, l)),
            }
        }
        // A protocol's ranges covering every port: its all-ports bit.
        let full: u8 = out
            .iter()
            .filter(|&&(_, f, l)| f == 0 && l == u16::MAX)
            .fold(0, |b, &(p, _, _)| b | proto_bit(p));
        if full != 0 {
            self.all_ports |= full;
            out.retain(|&(p, _, _)| proto_bit(p) & full == 0);
            self.ranges = out;
            self.normalize();
            return;
        }
        self.ranges = out;
    }
}

impl std::fmt::Display for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.all {
            return f.write_str("all");
        }
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut parts = Vec::new();
        for (bit, name) in [(PBIT_TCP, "TCP"), (PBIT_UDP, "UDP"), (PBIT_SCTP, "SCTP")] {
            if self.all_ports & bit != 0 {
                parts.push(format!("{name}/*"));
            }
        }
        if self.all_ports & PBIT_OTHER != 0 {
            parts.push("other".to_string());
        }
        for &(p, a, b) in &self.ranges {
            let name = Protocol::from_number(p).map_or("?", |p| p.as_str());
            if a == b {
                parts.push(format!("{name}/{a}"));
            } else {
                parts.push(format!("{name}/{a}-{b}"));
            }
        }
        f.write_str(&parts.join(","))
    }
}
