//! A typed, zero-copy view over an Ethernet II frame.
//!
//! Once [`EthernetFrame::new_checked`] has accepted a buffer, no accessor can
//! panic: the only length that matters (the 14-byte header) has been verified.

use crate::MacAddr;

mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: usize = 14;
}

/// Length of an Ethernet header without VLAN tags.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// EtherType values the switch cares about; everything else is kept as `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtherType {
    Ipv4,
    Arp,
    Vlan,
    QinQ,
    Ipv6,
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(v: u16) -> Self {
        match v {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x8100 => EtherType::Vlan,
            0x88a8 => EtherType::QinQ,
            0x86dd => EtherType::Ipv6,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(v: EtherType) -> u16 {
        match v {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Vlan => 0x8100,
            EtherType::QinQ => 0x88a8,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(v) => v,
        }
    }
}

/// Why a buffer is not an Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than an Ethernet header")]
    Runt(usize),
}

#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buf` after checking it can hold an Ethernet header.
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, FrameError> {
        let len = buf.as_ref().len();
        if len < HEADER_LEN {
            return Err(FrameError::Runt(len));
        }
        Ok(EthernetFrame { buf })
    }

    #[inline]
    pub fn dst(&self) -> MacAddr {
        MacAddr::from_slice(&self.buf.as_ref()[field::DST])
    }

    #[inline]
    pub fn src(&self) -> MacAddr {
        MacAddr::from_slice(&self.buf.as_ref()[field::SRC])
    }

    #[inline]
    pub fn ethertype(&self) -> EtherType {
        let b = &self.buf.as_ref()[field::ETHERTYPE];
        EtherType::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// The TCI of the outer 802.1Q/802.1ad tag, if the frame carries one whole.
    #[inline]
    pub fn vlan_tci(&self) -> Option<u16> {
        let b = self.buf.as_ref();
        match self.ethertype() {
            EtherType::Vlan | EtherType::QinQ if b.len() >= HEADER_LEN + 4 => {
                Some(u16::from_be_bytes([b[14], b[15]]))
            }
            _ => None,
        }
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[field::PAYLOAD..]
    }

    pub fn into_inner(self) -> T {
        self.buf
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    #[inline]
    pub fn set_dst(&mut self, mac: MacAddr) {
        self.buf.as_mut()[field::DST].copy_from_slice(&mac.0);
    }

    #[inline]
    pub fn set_src(&mut self, mac: MacAddr) {
        self.buf.as_mut()[field::SRC].copy_from_slice(&mac.0);
    }

    #[inline]
    pub fn set_ethertype(&mut self, t: EtherType) {
        self.buf.as_mut()[field::ETHERTYPE].copy_from_slice(&u16::from(t).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // An ARP request captured from a veth: who-has 10.0.0.2 tell 10.0.0.1.
    const ARP_REQ: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 10, 0, 0, 1,
        0, 0, 0, 0, 0, 0, 10, 0, 0, 2,
    ];

    #[test]
    fn deconstruct() {
        let f = EthernetFrame::new_checked(&ARP_REQ[..]).unwrap();
        assert_eq!(f.dst(), MacAddr::BROADCAST);
        assert_eq!(f.src(), MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(f.ethertype(), EtherType::Arp);
        assert_eq!(f.payload().len(), 28);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 42];
        buf[14..].copy_from_slice(&ARP_REQ[14..]);
        let mut f = EthernetFrame::new_checked(&mut buf[..]).unwrap();
        f.set_dst(MacAddr::BROADCAST);
        f.set_src(MacAddr([2, 0, 0, 0, 0, 1]));
        f.set_ethertype(EtherType::Arp);
        assert_eq!(buf, ARP_REQ);
    }

    #[test]
    fn vlan_tci_of_tagged_frames() {
        let mut tagged = [0u8; 64];
        tagged[12..18].copy_from_slice(&[0x81, 0x00, 0xa0, 0x0a, 0x08, 0x00]);
        assert_eq!(
            EthernetFrame::new_checked(&tagged[..]).unwrap().vlan_tci(),
            Some(0xa00a)
        );
        tagged[12..14].copy_from_slice(&[0x88, 0xa8]);
        assert_eq!(
            EthernetFrame::new_checked(&tagged[..]).unwrap().vlan_tci(),
            Some(0xa00a)
        );
        // A tag cut short is not a tag.
        assert_eq!(
            EthernetFrame::new_checked(&tagged[..16])
                .unwrap()
                .vlan_tci(),
            None
        );
        assert_eq!(
            EthernetFrame::new_checked(&ARP_REQ[..]).unwrap().vlan_tci(),
            None
        );
    }

    #[test]
    fn runts_are_refused() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&ARP_REQ[..n]).unwrap_err(),
                FrameError::Runt(n)
            );
        }
        assert_eq!(EtherType::from(0x1234), EtherType::Unknown(0x1234));
        assert_eq!(u16::from(EtherType::Unknown(0x1234)), 0x1234);
    }
}
