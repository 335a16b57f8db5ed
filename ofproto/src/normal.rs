//! The NORMAL action: an 802.1D learning switch, decided per frame.
//!
//! This is Open vSwitch's `xlate_normal` reduced to what a bridge without VLAN
//! configuration needs; VLAN admission and egress rules are layered on top by the
//! caller, which passes the frame's VLAN in. The decision is a value, not a side
//! effect on ports, so the same code serves the datapath and a future `trace`, and
//! every reason to drop is named.

use std::fmt;

use crate::mac_learning::{Learned, MacTable};
use crate::{MacAddr, PortNo};

/// Where NORMAL sends a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normal {
    /// To the one port the destination was learned on.
    Output(PortNo),
    /// To every port of the VLAN except the input port.
    Flood,
    Drop(DropReason),
}

/// Why NORMAL dropped a frame. `Display` narrates it, for logs and `trace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A group address can never be a source; such frames are forged or broken.
    MulticastSource(MacAddr),
    /// 01:80:c2:00:00:0x must not cross a bridge (STP, LACP, pause frames).
    ReservedMulticast(MacAddr),
    /// The destination lives behind the port the frame came in on.
    LearnedOnInputPort(MacAddr),
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::MulticastSource(m) => {
                write!(f, "dropping packet with multicast source address {m}")
            }
            DropReason::ReservedMulticast(m) => {
                write!(f, "dropping packet to reserved multicast address {m}")
            }
            DropReason::LearnedOnInputPort(m) => {
                write!(f, "dropping packet to {m}: learned on the input port")
            }
        }
    }
}

/// What NORMAL learned from a frame, for logs and `trace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learning {
    None,
    Did(Learned),
}

/// Decides the fate of a frame from `src` to `dst` in `vlan` that arrived on
/// `in_port`, learning `src` on the way.
#[inline]
pub fn normal(
    table: &mut MacTable,
    in_port: PortNo,
    vlan: u16,
    src: MacAddr,
    dst: MacAddr,
    now: u64,
) -> (Normal, Learning) {
    if src.is_multicast() {
        return (
            Normal::Drop(DropReason::MulticastSource(src)),
            Learning::None,
        );
    }
    let learned = Learning::Did(table.learn(vlan, src, in_port, now));
    if dst.is_multicast() {
        if dst.is_reserved_multicast() {
            return (Normal::Drop(DropReason::ReservedMulticast(dst)), learned);
        }
        return (Normal::Flood, learned);
    }
    match table.lookup(vlan, dst, now) {
        Some(p) if p == in_port => (Normal::Drop(DropReason::LearnedOnInputPort(dst)), learned),
        Some(p) => (Normal::Output(p), learned),
        None => (Normal::Flood, learned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);
    const C: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xc]);

    #[test]
    fn floods_unknown_then_forwards_learned() {
        let mut t = MacTable::default();
        // A → B: B unknown, flood; A learned on 1.
        assert_eq!(normal(&mut t, 1, 0, A, B, 0).0, Normal::Flood);
        // B → A: A known on 1.
        assert_eq!(normal(&mut t, 2, 0, B, A, 1).0, Normal::Output(1));
        // A → B: now known on 2; no more flooding.
        assert_eq!(normal(&mut t, 1, 0, A, B, 2).0, Normal::Output(2));
        // C is still unknown.
        assert_eq!(normal(&mut t, 1, 0, A, C, 3).0, Normal::Flood);
    }

    #[test]
    fn broadcast_and_multicast_flood_and_still_learn() {
        let mut t = MacTable::default();
        let (n, l) = normal(&mut t, 3, 0, A, MacAddr::BROADCAST, 0);
        assert_eq!(n, Normal::Flood);
        assert_eq!(l, Learning::Did(Learned::New { evicted: false }));
        let mcast = MacAddr([0x01, 0x00, 0x5e, 0, 0, 0xfb]);
        assert_eq!(normal(&mut t, 2, 0, B, mcast, 0).0, Normal::Flood);
        assert_eq!(t.lookup(0, A, 0), Some(3));
    }

    #[test]
    fn never_back_out_of_the_input_port() {
        let mut t = MacTable::default();
        normal(&mut t, 1, 0, A, B, 0);
        normal(&mut t, 1, 0, B, A, 0); // B also behind port 1 (e.g. a downstream switch)
        assert_eq!(
            normal(&mut t, 1, 0, A, B, 1).0,
            Normal::Drop(DropReason::LearnedOnInputPort(B))
        );
    }

    #[test]
    fn refuses_multicast_source_and_reserved_destinations() {
        let mut t = MacTable::default();
        let bad = MacAddr([0x03, 0, 0, 0, 0, 1]);
        assert_eq!(
            normal(&mut t, 1, 0, bad, A, 0),
            (
                Normal::Drop(DropReason::MulticastSource(bad)),
                Learning::None
            )
        );
        assert!(t.is_empty(), "a multicast source must not be learned");
        let stp = MacAddr([0x01, 0x80, 0xc2, 0, 0, 0]);
        assert_eq!(
            normal(&mut t, 1, 0, A, stp, 0).0,
            Normal::Drop(DropReason::ReservedMulticast(stp))
        );
        assert!(DropReason::ReservedMulticast(stp)
            .to_string()
            .contains("01:80:c2:00:00:00"));
    }

    #[test]
    fn mac_move_redirects_traffic() {
        let mut t = MacTable::default();
        normal(&mut t, 1, 0, A, B, 0);
        assert_eq!(normal(&mut t, 2, 0, B, A, 0).0, Normal::Output(1));
        // A moves from port 1 to port 4 (a VM migrated).
        normal(&mut t, 4, 0, A, MacAddr::BROADCAST, 5);
        assert_eq!(normal(&mut t, 2, 0, B, A, 6).0, Normal::Output(4));
    }

    #[test]
    fn learning_is_per_vlan() {
        let mut t = MacTable::default();
        normal(&mut t, 1, 10, A, MacAddr::BROADCAST, 0);
        assert_eq!(normal(&mut t, 2, 20, B, A, 0).0, Normal::Flood);
        assert_eq!(normal(&mut t, 2, 10, B, A, 0).0, Normal::Output(1));
    }

    #[test]
    fn aged_destination_is_flooded_again() {
        let mut t = MacTable::new(16, 10);
        normal(&mut t, 1, 0, A, B, 0);
        assert_eq!(normal(&mut t, 2, 0, B, A, 9_999).0, Normal::Output(1));
        assert_eq!(normal(&mut t, 2, 0, B, A, 10_000).0, Normal::Flood);
    }
}
