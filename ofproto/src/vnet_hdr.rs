//! The virtio-net header (`struct virtio_net_hdr`, 10 bytes) that Linux puts in
//! front of every frame on a packet socket with `PACKET_VNET_HDR` and on a TAP with
//! `IFF_VNET_HDR`.
//!
//! Why we carry it: veths and TAPs have checksum offload and TSO/GSO on by default,
//! so the frames a switch reads are often 64 KiB TCP super-frames whose checksum has
//! not been computed yet. The header says so (`NEEDS_CSUM`, `gso_type`, `gso_size`).
//! Passed on to a port that also speaks it, the kernel (or the guest) finishes the
//! work; for a port that does not, [`crate::gso`] finishes it in the switch. A switch
//! that drops the header — Open vSwitch's userspace datapath by default — forwards
//! ping but silently corrupts TCP and UDP.
//!
//! The kernel writes the header in host byte order for these sockets (`vio_le()` is
//! true on little-endian hosts), so fields are read with native endianness.

/// Length of `struct virtio_net_hdr` (without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// A header that asks for nothing: a complete frame.
    pub const NONE: VnetHdr = VnetHdr {
        flags: 0,
        gso_type: GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Reads a header from the first [`VNET_HDR_LEN`] bytes of `b`.
    #[inline]
    pub fn parse(b: &[u8; VNET_HDR_LEN]) -> VnetHdr {
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16::from_ne_bytes([b[2], b[3]]),
            gso_size: u16::from_ne_bytes([b[4], b[5]]),
            csum_start: u16::from_ne_bytes([b[6], b[7]]),
            csum_offset: u16::from_ne_bytes([b[8], b[9]]),
        }
    }

    #[inline]
    pub fn emit(&self, b: &mut [u8; VNET_HDR_LEN]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }

    /// The frame is a super-frame that must be cut into `gso_size` pieces somewhere.
    #[inline]
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    /// The frame's L4 checksum has not been computed yet.
    #[inline]
    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    /// Nothing is left to do before the frame can go on a wire.
    #[inline]
    pub fn is_complete(&self) -> bool {
        !self.is_gso() && !self.needs_csum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.emit(&mut b);
        assert_eq!(VnetHdr::parse(&b), h);
        assert!(h.is_gso() && h.needs_csum() && !h.is_complete());
        assert!(VnetHdr::NONE.is_complete());
        let ecn_only = VnetHdr {
            gso_type: GSO_ECN,
            ..VnetHdr::NONE
        };
        assert!(!ecn_only.is_gso());
    }
}
