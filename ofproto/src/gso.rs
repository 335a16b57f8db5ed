//! Finishing offloaded work in the switch: completing partial checksums and cutting
//! GSO super-frames into wire-sized segments.
//!
//! Used only when a frame must leave through a port that cannot take it as it is —
//! a socket without virtio-net headers, and later a tunnel. Between ports that speak
//! virtio-net headers super-frames pass through whole, which is what makes TCP fast.
//!
//! Layout (where L3 and L4 start) is parsed from the frame itself, not taken from
//! `hdr_len`: packet sockets report the skb's linear length there, which can be far
//! more than the headers. `csum_start` is trusted when `NEEDS_CSUM` is set, because
//! the kernel derives it from the skb's own transport offset (it also skips IPv6
//! extension headers for us).

use std::ops::Range;

use crate::checksum;
use crate::vnet_hdr::{VnetHdr, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_PSH: u8 = 0x08;
pub(crate) const TCP_URG: u8 = 0x20;
pub(crate) const TCP_CWR: u8 = 0x80;
pub(crate) const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("checksum at {start}+{offset} lies outside the {len}-byte frame")]
    BadChecksumOffsets {
        start: usize,
        offset: usize,
        len: usize,
    },
    #[error("unsupported GSO type {0}")]
    UnsupportedGso(u8),
    #[error("malformed super-frame: {0}")]
    Malformed(&'static str),
}

/// Where the layers of a frame start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    l3: usize,
    v4: bool,
    l4: usize,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn layout(frame: &[u8], hdr: &VnetHdr) -> Result<Layout, OffloadError> {
    let mut off = 12;
    loop {
        if frame.len() < off + 2 {
            return Err(OffloadError::Malformed("truncated Ethernet header"));
        }
        match be16(frame, off) {
            0x8100 | 0x88a8 => off += 4,
            0x0800 => {
                let l3 = off + 2;
                if frame.len() < l3 + 20 {
                    return Err(OffloadError::Malformed("truncated IPv4 header"));
                }
                let ihl = usize::from(frame[l3] & 0x0f) * 4;
                if ihl < 20 || frame.len() < l3 + ihl {
                    return Err(OffloadError::Malformed("bad IPv4 header length"));
                }
                let l4 = if hdr.needs_csum() {
                    usize::from(hdr.csum_start)
                } else {
                    l3 + ihl
                };
                return Ok(Layout { l3, v4: true, l4 });
            }
            0x86dd => {
                let l3 = off + 2;
                if frame.len() < l3 + 40 {
                    return Err(OffloadError::Malformed("truncated IPv6 header"));
                }
                let l4 = if hdr.needs_csum() {
                    usize::from(hdr.csum_start)
                } else {
                    l3 + 40
                };
                return Ok(Layout { l3, v4: false, l4 });
            }
            _ => return Err(OffloadError::Malformed("not IPv4 or IPv6")),
        }
    }
}

/// Completes a checksum the sender left partial (`NEEDS_CSUM`), in place.
///
/// The kernel stores the pseudo-header sum in the checksum field and leaves the rest
/// to whoever transmits; summing from `csum_start` to the end over that field
/// therefore yields the final value (as `skb_checksum_help` does).
pub fn finish_checksum(frame: &mut [u8], hdr: &VnetHdr) -> Result<(), OffloadError> {
    if !hdr.needs_csum() {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > frame.len() || start > at {
        return Err(OffloadError::BadChecksumOffsets {
            start,
            offset: usize::from(hdr.csum_offset),
            len: frame.len(),
        });
    }
    let mut sum = checksum::finish(checksum::add(0, &frame[start..]));
    // A UDP checksum of zero means "none"; RFC 768 sends 0xffff instead.
    if sum == 0 && hdr.csum_offset == 6 {
        sum = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Cuts the super-frame `frame` into frames of at most `gso_size` payload bytes, each
/// with complete IP and L4 checksums, appending their bytes to `out` and their ranges
/// in `out` to `segs`. Returns how many segments were made.
///
/// `out` and `segs` are the caller's reusable arenas: in steady state this allocates
/// nothing.
pub fn segment(
    frame: &[u8],
    hdr: &VnetHdr,
    out: &mut Vec<u8>,
    segs: &mut Vec<Range<usize>>,
) -> Result<usize, OffloadError> {
    let gso = hdr.gso_type & !crate::vnet_hdr::GSO_ECN;
    let lay = layout(frame, hdr)?;
    let (proto, l4_hlen) = match gso {
        GSO_TCPV4 | GSO_TCPV6 => {
            if frame.len() < lay.l4 + 20 {
                return Err(OffloadError::Malformed("truncated TCP header"));
            }
            (PROTO_TCP, usize::from(frame[lay.l4 + 12] >> 4) * 4)
        }
        GSO_UDP_L4 => (PROTO_UDP, 8),
        other => return Err(OffloadError::UnsupportedGso(other)),
    };
    if (gso == GSO_TCPV4) != lay.v4 && gso != GSO_UDP_L4 {
        return Err(OffloadError::Malformed(
            "GSO type does not match the IP version",
        ));
    }
    let hlen = lay.l4 + l4_hlen;
    if l4_hlen < 8 || frame.len() < hlen {
        return Err(OffloadError::Malformed("truncated L4 header"));
    }
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(OffloadError::Malformed("gso_size is zero"));
    }
    let payload = &frame[hlen..];
    let n = payload.len().div_ceil(mss).max(1);
    let ip_id0 = if lay.v4 { be16(frame, lay.l3 + 4) } else { 0 };
    let (seq0, flags0) = if proto == PROTO_TCP {
        (
            u32::from_be_bytes(frame[lay.l4 + 4..lay.l4 + 8].try_into().unwrap()),
            frame[lay.l4 + 13],
        )
    } else {
        (0, 0)
    };
    let (src, dst) = if lay.v4 {
        (lay.l3 + 12..lay.l3 + 16, lay.l3 + 16..lay.l3 + 20)
    } else {
        (lay.l3 + 8..lay.l3 + 24, lay.l3 + 24..lay.l3 + 40)
    };

    for i in 0..n {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let start = out.len();
        out.extend_from_slice(&frame[..hlen]);
        out.extend_from_slice(chunk);
        let seg = &mut out[start..];
        let l4_len = seg.len() - lay.l4;

        if lay.v4 {
            let ihl = usize::from(seg[lay.l3] & 0x0f) * 4;
            let tot = (seg.len() - lay.l3) as u16;
            seg[lay.l3 + 2..lay.l3 + 4].copy_from_slice(&tot.to_be_bytes());
            let id = ip_id0.wrapping_add(i as u16);
            seg[lay.l3 + 4..lay.l3 + 6].copy_from_slice(&id.to_be_bytes());
            seg[lay.l3 + 10..lay.l3 + 12].copy_from_slice(&[0, 0]);
            let c = checksum::checksum(&seg[lay.l3..lay.l3 + ihl]);
            seg[lay.l3 + 10..lay.l3 + 12].copy_from_slice(&c.to_be_bytes());
        } else {
            let plen = (seg.len() - lay.l3 - 40) as u16;
            seg[lay.l3 + 4..lay.l3 + 6].copy_from_slice(&plen.to_be_bytes());
        }

        let csum_at = if proto == PROTO_TCP {
            let seq = seq0.wrapping_add((i * mss) as u32);
            seg[lay.l4 + 4..lay.l4 + 8].copy_from_slice(&seq.to_be_bytes());
            let mut flags = flags0;
            if i + 1 != n {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if i != 0 {
                flags &= !TCP_CWR;
            }
            seg[lay.l4 + 13] = flags;
            lay.l4 + 16
        } else {
            seg[lay.l4 + 4..lay.l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            lay.l4 + 6
        };
        seg[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
        let pseudo = if lay.v4 {
            checksum::pseudo_v4(&seg[src.clone()], &seg[dst.clone()], proto, l4_len)
        } else {
            checksum::pseudo_v6(&seg[src.clone()], &seg[dst.clone()], proto, l4_len)
        };
        let mut c = checksum::finish(checksum::add(pseudo, &seg[lay.l4..]));
        if c == 0 && proto == PROTO_UDP {
            c = 0xffff;
        }
        seg[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        segs.push(start..out.len());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vnet_hdr::{F_NEEDS_CSUM, GSO_NONE};
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    fn tcp_frame(v6: bool, payload: &[u8], flags_fin_psh: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let b = if v6 {
            b.ipv6(
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
        } else {
            b.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        };
        let mut b = b.tcp(40000, 5201, 0xffff_fff0, 65535).ack(77);
        if flags_fin_psh {
            b = b.psh().fin();
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    /// Replaces the TCP/UDP checksum with the pseudo-header sum, as a sender using
    /// checksum offload leaves it, and returns the matching header.
    fn make_partial(frame: &mut [u8], gso_type: u8, gso_size: u16) -> VnetHdr {
        let lay = layout(frame, &VnetHdr::NONE).unwrap();
        let (proto, off) = if frame[lay.l3 + if lay.v4 { 9 } else { 6 }] == PROTO_TCP {
            (PROTO_TCP, 16)
        } else {
            (PROTO_UDP, 6)
        };
        let l4_len = frame.len() - lay.l4;
        let pseudo = if lay.v4 {
            checksum::pseudo_v4(
                &frame[lay.l3 + 12..lay.l3 + 16],
                &frame[lay.l3 + 16..lay.l3 + 20],
                proto,
                l4_len,
            )
        } else {
            checksum::pseudo_v6(
                &frame[lay.l3 + 8..lay.l3 + 24],
                &frame[lay.l3 + 24..lay.l3 + 40],
                proto,
                l4_len,
            )
        };
        let at = lay.l4 + off;
        frame[at..at + 2].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: 0,
            gso_size,
            csum_start: lay.l4 as u16,
            csum_offset: off as u16,
        }
    }

    fn assert_valid(seg: &[u8]) -> (u32, Vec<u8>, u8) {
        let lay = layout(seg, &VnetHdr::NONE).unwrap();
        let (proto, l4_len, pseudo) = if lay.v4 {
            let ihl = usize::from(seg[lay.l3] & 0xf) * 4;
            assert_eq!(
                checksum::checksum(&seg[lay.l3..lay.l3 + ihl]),
                0,
                "IPv4 header checksum"
            );
            assert_eq!(usize::from(be16(seg, lay.l3 + 2)), seg.len() - lay.l3);
            let p = seg[lay.l3 + 9];
            let l = seg.len() - lay.l4;
            (
                p,
                l,
                checksum::pseudo_v4(
                    &seg[lay.l3 + 12..lay.l3 + 16],
                    &seg[lay.l3 + 16..lay.l3 + 20],
                    p,
                    l,
                ),
            )
        } else {
            assert_eq!(usize::from(be16(seg, lay.l3 + 4)), seg.len() - lay.l3 - 40);
            let p = seg[lay.l3 + 6];
            let l = seg.len() - lay.l4;
            (
                p,
                l,
                checksum::pseudo_v6(
                    &seg[lay.l3 + 8..lay.l3 + 24],
                    &seg[lay.l3 + 24..lay.l3 + 40],
                    p,
                    l,
                ),
            )
        };
        assert_eq!(
            checksum::fold(checksum::add(pseudo, &seg[lay.l4..])),
            0xffff,
            "L4 checksum"
        );
        let _ = l4_len;
        let p = SlicedPacket::from_ethernet(seg).unwrap();
        match p.transport.unwrap() {
            TransportSlice::Tcp(t) => {
                let flags = seg[lay.l4 + 13];
                (t.sequence_number(), t.payload().to_vec(), flags)
            }
            TransportSlice::Udp(u) => {
                assert_eq!(proto, PROTO_UDP);
                (0, u.payload().to_vec(), 0)
            }
            _ => panic!("unexpected transport"),
        }
    }

    #[test]
    fn finishes_partial_checksums() {
        for v6 in [false, true] {
            let good = tcp_frame(v6, b"hello, checksum", false);
            let mut partial = good.clone();
            let hdr = make_partial(&mut partial, GSO_NONE, 0);
            assert_ne!(partial, good);
            finish_checksum(&mut partial, &hdr).unwrap();
            assert_eq!(partial, good);
        }
    }

    #[test]
    fn refuses_offsets_outside_the_frame() {
        let mut f = tcp_frame(false, b"x", false);
        let len = f.len();
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: len as u16,
            csum_offset: 16,
            ..VnetHdr::NONE
        };
        assert!(matches!(
            finish_checksum(&mut f, &hdr),
            Err(OffloadError::BadChecksumOffsets { .. })
        ));
    }

    #[test]
    fn segments_tcp_super_frames() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
            let mut frame = tcp_frame(v6, &payload, true);
            let hdr = make_partial(&mut frame, if v6 { GSO_TCPV6 } else { GSO_TCPV4 }, 1448);
            let (mut out, mut segs) = (Vec::new(), Vec::new());
            let n = segment(&frame, &hdr, &mut out, &mut segs).unwrap();
            assert_eq!(n, 7);
            let mut joined = Vec::new();
            let mut expect_seq = 0xffff_fff0u32;
            for (i, r) in segs.iter().enumerate() {
                let (seq, data, flags) = assert_valid(&out[r.clone()]);
                assert_eq!(seq, expect_seq, "segment {i} sequence number");
                expect_seq = expect_seq.wrapping_add(data.len() as u32);
                let last = i + 1 == n;
                assert_eq!(
                    flags & (TCP_FIN | TCP_PSH) != 0,
                    last,
                    "FIN/PSH only on the last segment"
                );
                assert!(data.len() <= 1448);
                joined.extend_from_slice(&data);
            }
            assert_eq!(joined, payload);
        }
    }

    #[test]
    fn segments_udp_l4_super_frames() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5000, 6000)
            .write(&mut frame, &payload)
            .unwrap();
        let hdr = make_partial(&mut frame, GSO_UDP_L4, 1000);
        let (mut out, mut segs) = (Vec::new(), Vec::new());
        assert_eq!(segment(&frame, &hdr, &mut out, &mut segs).unwrap(), 3);
        for (i, r) in segs.iter().enumerate() {
            let (_, data, _) = assert_valid(&out[r.clone()]);
            assert_eq!(data, payload[i * 1000..(i + 1) * 1000]);
        }
    }

    #[test]
    fn malformed_super_frames_are_errors_not_panics() {
        let mut frame = tcp_frame(false, &[0u8; 3000], false);
        let hdr = make_partial(&mut frame, GSO_TCPV4, 1000);
        let (mut out, mut segs) = (Vec::new(), Vec::new());
        // Every truncation of a valid super-frame, and garbage, must return, not panic.
        for n in 0..80 {
            let _ = segment(&frame[..n], &hdr, &mut out, &mut segs);
            let mut copy = frame[..n].to_vec();
            let _ = finish_checksum(&mut copy, &hdr);
        }
        let zero_mss = VnetHdr { gso_size: 0, ..hdr };
        assert!(segment(&frame, &zero_mss, &mut out, &mut segs).is_err());
        let legacy_ufo = VnetHdr {
            gso_type: crate::vnet_hdr::GSO_UDP,
            ..hdr
        };
        assert_eq!(
            segment(&frame, &legacy_ufo, &mut out, &mut segs),
            Err(OffloadError::UnsupportedGso(3))
        );
        let wrong_version = VnetHdr {
            gso_type: GSO_TCPV6,
            ..hdr
        };
        assert!(segment(&frame, &wrong_version, &mut out, &mut segs).is_err());
    }
}
