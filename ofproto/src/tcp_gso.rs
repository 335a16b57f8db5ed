//! Coalescing a run of one TCP stream's consecutive segments, queued for one port,
//! into one TSO super-frame (virtio-net `GSO_TCPV4`/`GSO_TCPV6`): the TCP
//! counterpart of [`crate::udp_gso`].
//!
//! A sender without segmentation offload — a guest whose virtio-net has no TSO, a
//! host or container with `tso off` — hands the switch wire-sized segments, and a
//! packet socket turns each into its own skb: one pass through the qdisc, the device
//! and the receiver's IP and TCP layers per 1448 bytes, and, since such an skb is
//! one tight linear buffer, the receiving TCP cannot merge it into the one before
//! (docs/benchmarks.md: it merged 4 of 1.7 M of ours, 2 M of 2.7 M of the bridge's).
//! A super-frame of a stream's consecutive segments pays the sending half once; a
//! device that cannot take it cuts it in software (`skb_segment`, sharing the
//! super-frame's pages, no copy), and the segments it gives the receiver are page
//! fragments the receiving TCP can merge, as it merges a bridge's.
//!
//! A run is what Linux's GRO would merge ([`crate::gro`]'s rules, Linux's
//! `tcp_gro_receive`): identical Ethernet, IP and TCP headers but for lengths, IPv4
//! ID, checksums, sequence and the flags below; contiguous sequence numbers; every
//! segment but the last the first's size; CWR only on the first; PSH or FIN only on
//! the last; never SYN, RST or URG. The cut numbers IPv4 IDs up from the first's: a
//! run takes segments whose IDs do so, or any ID with don't-fragment (RFC 6864;
//! Linux's GRO does the same). Checksums are trusted only where the kernel vouches
//! for them (partial or validated); otherwise each segment's is checked first, so
//! that a corrupt segment is never given a fresh checksum inside a super-frame; the
//! IPv4 header checksum always is ([`crate::gro`]'s layout check; Linux's GRO checks
//! it too).
//! Untagged frames only (a packet socket types a super-frame by its outer
//! Ethertype).

use crate::gro::{layout, same_headers, super_headers, tcp_checksum_ok, Layout};
use crate::gso::{TCP_CWR, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG};
use crate::vnet_hdr::{VnetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_NONE, VNET_HDR_LEN};

/// Longest header a super-frame's first part holds: virtio-net, Ethernet, IPv6,
/// TCP with the most options.
pub const HEAD_MAX: usize = VNET_HDR_LEN + 14 + 40 + 60;

/// Where a segment's layers are and what a run needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    lay: Layout,
    /// TCP payload bytes (never 0: a bare ACK joins nothing).
    pub payload: u16,
    seq: u32,
    flags: u8,
    /// IPv4 don't-fragment (IPv6: true).
    df: bool,
    /// IPv4 ID (IPv6: 0).
    id: u16,
}

impl Shape {
    /// Bytes before the payload: Ethernet, IP, TCP.
    pub fn head_len(&self) -> usize {
        self.lay.hl
    }

    /// Whether a run must end with this segment: PSH or FIN, or shorter than the
    /// run's first `first` (only the last segment of a cut is).
    pub fn ends_run(&self, first: &Shape) -> bool {
        self.flags & (TCP_PSH | TCP_FIN) != 0 || self.payload < first.payload
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The shape of `frame` (without its virtio-net header `hdr`) if it may join a run.
pub fn shape(frame: &[u8], hdr: &VnetHdr) -> Option<Shape> {
    if hdr.gso_type != GSO_NONE {
        return None;
    }
    let lay = layout(frame).ok()?;
    const L3: usize = 14;
    // The IP length must cover exactly this frame (no padding).
    let ip_len = if lay.v4 {
        usize::from(be16(frame, L3 + 2))
    } else {
        usize::from(be16(frame, L3 + 4)) + 40
    };
    if ip_len != frame.len() - L3 || frame.len() <= lay.hl {
        return None;
    }
    let t = lay.l4;
    let flags = frame[t + 13];
    if flags & (TCP_SYN | TCP_RST | TCP_URG) != 0 {
        return None;
    }
    let partial = hdr.flags & F_NEEDS_CSUM != 0;
    if partial && (usize::from(hdr.csum_start) != t || hdr.csum_offset != 16) {
        return None;
    }
    if !partial && hdr.flags & F_DATA_VALID == 0 && !tcp_checksum_ok(frame, &lay) {
        return None;
    }
    let (df, id) = if lay.v4 {
        (frame[L3 + 6] & 0x40 != 0, be16(frame, L3 + 4))
    } else {
        (true, 0)
    };
    Some(Shape {
        lay,
        payload: (frame.len() - lay.hl) as u16,
        seq: be32(frame, t + 4),
        flags,
        df,
        id,
    })
}

/// Whether segment `b` (shape `sb`) can be segment `k` of the run that `a` (shape
/// `sa`) starts, `offset` payload bytes after `a`'s first byte. A segment with PSH
/// or FIN starts no run; the caller ends a run where [`Shape::ends_run`] says.
pub fn joins(a: &[u8], sa: &Shape, b: &[u8], sb: &Shape, k: usize, offset: usize) -> bool {
    let same_flags = sb.flags & !(TCP_PSH | TCP_FIN) == sa.flags & !TCP_CWR;
    let id_ok = !sa.lay.v4 || (sa.df && sb.df) || sb.id == sa.id.wrapping_add(k as u16);
    sa.flags & (TCP_PSH | TCP_FIN) == 0
        && sb.lay == sa.lay
        && sb.payload <= sa.payload
        && sb.seq == sa.seq.wrapping_add(offset as u32)
        && same_flags
        && id_ok
        && same_headers(a, b, &sa.lay)
}

/// Writes into `out` the virtio-net header and the headers of the super-frame that
/// carries `total` payload bytes of a run `first` (shape `s`) starts and a segment
/// with flags `last_flags` ends; the payloads follow it on the wire. Returns its
/// length. `None` if the run is too long for one IP packet.
pub fn super_head(
    first: &[u8],
    s: &Shape,
    total: usize,
    last: &Shape,
    out: &mut [u8; HEAD_MAX],
) -> Option<usize> {
    let hl = s.lay.hl;
    // IPv4's total length, or IPv6's payload length, must fit 16 bits.
    let ip_len = if s.lay.v4 { hl - 14 } else { hl - 54 } + total;
    if ip_len > 0xffff {
        return None;
    }
    let h = &mut out[VNET_HDR_LEN..VNET_HDR_LEN + hl];
    h.copy_from_slice(&first[..hl]);
    let flags = s.flags | (last.flags & (TCP_PSH | TCP_FIN));
    let hdr = super_headers(h, &s.lay, total, flags, usize::from(s.payload));
    hdr.emit((&mut out[..VNET_HDR_LEN]).try_into().unwrap());
    Some(VNET_HDR_LEN + hl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum;
    use crate::gso::{self, PROTO_TCP};
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    const MSS: usize = 1448;

    /// Segment `k` of a stream: `len` payload bytes at sequence 1000 + k * MSS, with
    /// TCP `flags` (ACK added), IPv4 ID 7 + k with don't-fragment, and a timestamp
    /// option, checksums complete.
    fn segment(v4: bool, k: usize, len: usize, flags: u8) -> Vec<u8> {
        let payload: Vec<u8> = (0..len).map(|i| (k * 31 + i) as u8).collect();
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let b = if v4 {
            b.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        } else {
            b.ipv6([0xfd; 16], [0xfe; 16], 64)
        };
        let mut t = b
            .tcp(40000, 5201, 1000 + (k * MSS) as u32, 512)
            .ack(77)
            .options(&[etherparse::TcpOptionElement::Timestamp(5, 6)])
            .unwrap();
        if flags & TCP_PSH != 0 {
            t = t.psh();
        }
        if flags & TCP_FIN != 0 {
            t = t.fin();
        }
        if flags & TCP_CWR != 0 {
            t = t.cwr();
        }
        let mut f = Vec::new();
        t.write(&mut f, &payload).unwrap();
        if v4 {
            f[18..20].copy_from_slice(&(7 + k as u16).to_be_bytes());
            f[20] |= 0x40;
            f[24..26].fill(0);
            let c = checksum::checksum(&f[14..34]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
        }
        f
    }

    fn complete() -> VnetHdr {
        VnetHdr::default()
    }

    /// Plans runs over `frames` as the datapath does ([`crate::gso_runs::plan`]),
    /// builds each super-frame and cuts it with the kernel's rules (our own
    /// segmentation): the frames the receiver would get.
    fn round_trip(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut runs = Vec::new();
        let shape = |k: usize| {
            let f: &[u8] = &frames[k];
            crate::gso_runs::RunShape::of(f, &complete(), true).map(|s| (f, s))
        };
        crate::gso_runs::plan(frames.len(), shape, |r, head, len| {
            runs.push((r, head[..len].to_vec()))
        });
        let mut out = Vec::new();
        let mut i = 0;
        for (r, head) in runs {
            out.extend(frames[i..r.start].iter().cloned());
            let hdr = VnetHdr::parse(head[..VNET_HDR_LEN].try_into().unwrap());
            let mut sup = head[VNET_HDR_LEN..].to_vec();
            for f in &frames[r.clone()] {
                sup.extend_from_slice(&f[head.len() - VNET_HDR_LEN..]);
            }
            let (mut buf, mut segs) = (Vec::new(), Vec::new());
            gso::segment(&sup, &hdr, &mut buf, &mut segs).unwrap();
            out.extend(segs.into_iter().map(|r| buf[r].to_vec()));
            i = r.end;
        }
        out.extend(frames[i..].iter().cloned());
        out
    }

    /// The segments come back as sent but for what a cut rewrites: the IPv4 ID
    /// (counted up from the first's, as the senders' were) and nothing else.
    #[test]
    fn a_run_cut_again_is_the_same_segments() {
        for v4 in [true, false] {
            let mut frames: Vec<_> = (0..9).map(|k| segment(v4, k, MSS, 0)).collect();
            frames.push(segment(v4, 9, 300, TCP_PSH));
            assert_eq!(round_trip(&frames), frames, "v4 {v4}");
            // One super-frame: the first shape joins all the others.
            let sa = shape(&frames[0], &complete()).unwrap();
            let mut off = MSS;
            for (k, f) in frames.iter().enumerate().skip(1) {
                let sb = shape(f, &complete()).unwrap();
                assert!(joins(&frames[0], &sa, f, &sb, k, off), "segment {k}");
                off += usize::from(sb.payload);
            }
        }
    }

    /// CWR on the first segment stays on the first: the super-frame says ECN.
    #[test]
    fn cwr_on_the_first_segment_marks_the_super_frame_ecn() {
        let frames: Vec<_> = (0..3)
            .map(|k| segment(true, k, MSS, if k == 0 { TCP_CWR } else { 0 }))
            .collect();
        assert_eq!(round_trip(&frames), frames);
        let s = shape(&frames[0], &complete()).unwrap();
        let mut head = [0u8; HEAD_MAX];
        super_head(&frames[0], &s, 3 * MSS, &s, &mut head).unwrap();
        let hdr = VnetHdr::parse(head[..VNET_HDR_LEN].try_into().unwrap());
        assert_eq!(
            hdr.gso_type,
            crate::vnet_hdr::GSO_TCPV4 | crate::vnet_hdr::GSO_ECN
        );
    }

    #[test]
    fn refuses_what_the_stream_or_the_cut_would_change() {
        let f0 = segment(true, 0, MSS, 0);
        let s0 = shape(&f0, &complete()).unwrap();
        let try_join = |f: &[u8], k: usize, off: usize| {
            shape(f, &complete()).is_some_and(|s| joins(&f0, &s0, f, &s, k, off))
        };
        assert!(try_join(&segment(true, 1, MSS, 0), 1, MSS));
        // A gap in the sequence.
        assert!(!try_join(&segment(true, 2, MSS, 0), 1, MSS));
        // Longer than the first.
        assert!(!try_join(&segment(true, 1, MSS + 1, 0), 1, MSS));
        // CWR after the first.
        assert!(!try_join(&segment(true, 1, MSS, TCP_CWR), 1, MSS));
        // Another ACK number, window or timestamp: not the same headers.
        for at in [14 + 20 + 8, 14 + 20 + 14, 14 + 20 + 26] {
            let mut f = segment(true, 1, MSS, 0);
            f[at] ^= 1;
            // Keep its checksum right, so that only the header differs.
            f[14 + 20 + 16..14 + 20 + 18].fill(0);
            let l4 = f.len() - 34;
            let c = checksum::finish(checksum::add(
                checksum::pseudo_at(&f, 14, true, PROTO_TCP, l4),
                &f[34..],
            ));
            f[50..52].copy_from_slice(&c.to_be_bytes());
            assert!(shape(&f, &complete()).is_some(), "byte {at}: still valid");
            assert!(!try_join(&f, 1, MSS), "byte {at}");
        }
        // An IPv4 ID flipped on the way (not compared, rewritten by the cut): only
        // the header checksum catches it.
        let mut id = segment(true, 1, MSS, 0);
        id[19] ^= 1;
        assert!(
            shape(&id, &complete()).is_none(),
            "bad IPv4 header checksum"
        );
        // A corrupt segment has no shape, so it is forwarded as it came.
        let mut bad = segment(true, 1, MSS, 0);
        bad[100] ^= 0x40;
        assert!(shape(&bad, &complete()).is_none());
        // Trusted when the kernel vouches for it.
        let valid = VnetHdr {
            flags: F_DATA_VALID,
            ..VnetHdr::default()
        };
        assert!(shape(&bad, &valid).is_some());
        // Without don't-fragment the IDs must count up.
        let nodf = |k: usize, id: u16| {
            let mut f = segment(true, k, MSS, 0);
            f[18..20].copy_from_slice(&id.to_be_bytes());
            f[20] &= !0x40;
            f[24..26].fill(0);
            let c = checksum::checksum(&f[14..34]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
            f
        };
        let (a, b, c) = (nodf(0, 50), nodf(1, 51), nodf(1, 60));
        let (sa, sb, sc) = (
            shape(&a, &complete()).unwrap(),
            shape(&b, &complete()).unwrap(),
            shape(&c, &complete()).unwrap(),
        );
        assert!(joins(&a, &sa, &b, &sb, 1, MSS));
        assert!(!joins(&a, &sa, &c, &sc, 1, MSS));
        // SYN, RST or URG, bare ACKs, super-frames and padded frames have no shape.
        let mut syn = segment(true, 0, MSS, 0);
        syn[47] |= TCP_SYN;
        assert!(shape(&syn, &complete()).is_none());
        assert!(shape(&segment(true, 0, 0, 0), &complete()).is_none());
        let gso = VnetHdr {
            gso_type: crate::vnet_hdr::GSO_TCPV4,
            ..VnetHdr::default()
        };
        assert!(shape(&f0, &gso).is_none());
        let mut padded = segment(true, 0, 2, 0);
        padded.extend_from_slice(&[0; 4]);
        assert!(shape(&padded, &complete()).is_none());
        // A segment with PSH or FIN ends a run and starts none.
        let p = segment(true, 0, MSS, TCP_PSH);
        let sp = shape(&p, &complete()).unwrap();
        let n = segment(true, 1, MSS, 0);
        let sn = shape(&n, &complete()).unwrap();
        assert!(sp.ends_run(&sp));
        assert!(!joins(&p, &sp, &n, &sn, 1, MSS));
    }

    proptest! {
        /// Whatever the run breaks on, the receiver gets every segment's bytes in
        /// order, and a mangled segment is never hidden inside a super-frame.
        #[test]
        fn any_stream_comes_back_as_sent(
            lens in proptest::collection::vec(1usize..=MSS, 1..20),
            psh_at in 0usize..25,
            mangle in proptest::option::of((0usize..20, 0usize..1600)),
            v4 in any::<bool>(),
        ) {
            let mut seq = 0usize;
            let mut frames = Vec::new();
            for (k, &len) in lens.iter().enumerate() {
                let mut f = segment(v4, 0, len, if k == psh_at { TCP_PSH } else { 0 });
                let t = if v4 { 34 } else { 54 };
                f[t + 4..t + 8].copy_from_slice(&(1000 + seq as u32).to_be_bytes());
                f[t + 16..t + 18].fill(0);
                let c = checksum::finish(checksum::add(
                    checksum::pseudo_at(&f, 14, v4, PROTO_TCP, f.len() - t),
                    &f[t..],
                ));
                f[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
                if v4 {
                    f[18..20].copy_from_slice(&(7 + k as u16).to_be_bytes());
                    f[24..26].fill(0);
                    let c = checksum::checksum(&f[14..34]);
                    f[24..26].copy_from_slice(&c.to_be_bytes());
                }
                seq += len;
                frames.push(f);
            }
            if let Some((k, at)) = mangle {
                if k < frames.len() && at < frames[k].len() && at >= 14 + 20 {
                    frames[k][at] ^= 0x5a;
                }
            }
            prop_assert_eq!(round_trip(&frames), frames);
        }

        #[test]
        fn any_bytes_are_safe(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = shape(&bytes, &complete());
        }
    }
}
