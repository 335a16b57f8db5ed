//! Merging the TCP segments of one coalesced tunnel datagram back into one
//! super-frame (software GRO), in place.
//!
//! With `UDP_GRO` on its VXLAN socket the kernel hands over a burst of same-sized
//! datagrams from one sender as one buffer: segment `k` starts at `k * seg`, each a
//! VXLAN header and an inner frame. When those inner frames are consecutive
//! segments of one TCP stream — what a sender's UDP GSO of one super-frame produces —
//! they are merged into one frame with a virtio-net GSO header, so the rest of the
//! path (the bridge, the AF_PACKET or TAP port to the VM, the VM's TCP) handles one
//! frame instead of ~45. Like Linux's GRO, a merge ends where the stream says so (a
//! segment with PSH or FIN is the last merged) or where the next segment does not
//! fit (a gap, other headers, a bad checksum): the segments merged so far are one
//! frame and the caller tries the rest again — a burst the network coalesced across
//! two super-frames becomes two. Fewer than two mergeable segments at the start are
//! refused, and the caller delivers that segment on its own.
//!
//! The rules are Linux's `tcp_gro_receive`: identical tunnel, Ethernet, IP and TCP
//! headers except lengths, IP ID, checksums and sequence; contiguous sequence
//! numbers; every segment but the last exactly the first's size; CWR only on the
//! first, PSH and FIN only on the last, never SYN, RST or URG. Each segment's TCP
//! checksum is verified before merging: the merged frame leaves with a partial
//! checksum (`NEEDS_CSUM`), which receivers trust, so a corrupt segment must not be
//! hidden inside it.

use std::ops::Range;

use crate::checksum;
use crate::gso::{PROTO_TCP, TCP_CWR, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG};
use crate::vnet_hdr::{VnetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN};

const ETH_LEN: usize = 14;

/// Why a coalesced datagram cannot become one frame (it is then delivered segment
/// by segment, which is always correct).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("segments cannot be merged: {0}")]
pub struct Unmergeable(pub &'static str);

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A TCP segment's layout (of the first segment, for a merge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) v4: bool,
    /// Where TCP starts in the frame.
    pub(crate) l4: usize,
    /// Headers: Ethernet, IP, TCP with options.
    pub(crate) hl: usize,
}

/// The layout of `inner`, an untagged Ethernet frame, if it is a TCP segment that
/// may be merged (IPv4 not a fragment, IPv6 without extension headers).
pub(crate) fn layout(inner: &[u8]) -> Result<Layout, Unmergeable> {
    if inner.len() < ETH_LEN + 40 {
        return Err(Unmergeable("too short"));
    }
    let (v4, l4) = match be16(inner, 12) {
        0x0800 => {
            let ihl = usize::from(inner[ETH_LEN] & 0x0f) * 4;
            if inner[ETH_LEN] >> 4 != 4 || ihl < 20 || inner.len() < ETH_LEN + ihl + 20 {
                return Err(Unmergeable("bad IPv4 header"));
            }
            if inner[ETH_LEN + 9] != PROTO_TCP {
                return Err(Unmergeable("not TCP"));
            }
            // More-fragments or an offset: a fragment, not a segment.
            if be16(inner, ETH_LEN + 6) & 0x3fff != 0 {
                return Err(Unmergeable("IPv4 fragment"));
            }
            (true, ETH_LEN + ihl)
        }
        0x86dd => {
            if inner.len() < ETH_LEN + 60 || inner[ETH_LEN] >> 4 != 6 {
                return Err(Unmergeable("bad IPv6 header"));
            }
            // Only TCP right after the fixed header; extension headers are not merged.
            if inner[ETH_LEN + 6] != PROTO_TCP {
                return Err(Unmergeable("not TCP"));
            }
            (false, ETH_LEN + 40)
        }
        _ => return Err(Unmergeable("not IP")),
    };
    let th = usize::from(inner[l4 + 12] >> 4) * 4;
    if th < 20 || inner.len() < l4 + th {
        return Err(Unmergeable("bad TCP header"));
    }
    if v4 && !ipv4_header_ok(inner, l4) {
        return Err(Unmergeable("bad IPv4 header checksum"));
    }
    Ok(Layout {
        v4,
        l4,
        hl: l4 + th,
    })
}

/// Whether the IPv4 header of `inner` (up to `l4`) has a right checksum. A merge
/// writes a fresh one, so a wrong one must be caught before (Linux's GRO does too).
fn ipv4_header_ok(inner: &[u8], l4: usize) -> bool {
    checksum::checksum(&inner[ETH_LEN..l4]) == 0
}

/// Whether the TCP checksum of segment `inner`, laid out as `lay`, is right.
pub(crate) fn tcp_checksum_ok(inner: &[u8], lay: &Layout) -> bool {
    let l4_len = inner.len() - lay.l4;
    checksum::finish(checksum::add(pseudo(inner, lay, l4_len), &inner[lay.l4..])) == 0
}

/// Whether inner frame `b` has the same headers as `a` where a merge needs them
/// equal, with `a` laid out as `lay`.
pub(crate) fn same_headers(a: &[u8], b: &[u8], lay: &Layout) -> bool {
    let l3 = ETH_LEN;
    let ip_same = if lay.v4 {
        // All but total length (2..4), ID (4..6) and checksum (10..12).
        a[l3..l3 + 2] == b[l3..l3 + 2]
            && a[l3 + 6..l3 + 10] == b[l3 + 6..l3 + 10]
            && a[l3 + 12..lay.l4] == b[l3 + 12..lay.l4]
    } else {
        // All but payload length (4..6).
        a[l3..l3 + 4] == b[l3..l3 + 4] && a[l3 + 6..lay.l4] == b[l3 + 6..lay.l4]
    };
    let t = lay.l4;
    // Ethernet; TCP ports (0..4), ack (8..12), data offset (12), window (14..16),
    // urgent pointer (18..20) and options; not sequence, flags or checksum.
    a[..ETH_LEN] == b[..ETH_LEN]
        && ip_same
        && a[t..t + 4] == b[t..t + 4]
        && a[t + 8..t + 13] == b[t + 8..t + 13]
        && a[t + 14..t + 16] == b[t + 14..t + 16]
        && a[t + 18..lay.hl] == b[t + 18..lay.hl]
}

/// The pseudo-header sum of a TCP segment of `l4_len` bytes in `inner`.
pub(crate) fn pseudo(inner: &[u8], lay: &Layout, l4_len: usize) -> u64 {
    checksum::pseudo_at(inner, ETH_LEN, lay.v4, PROTO_TCP, l4_len)
}

/// Whether no merge can go past inner frame `inner`: a TCP segment carrying PSH or
/// FIN (a merge ends with it) or SYN, RST or URG (never merged). A sender that
/// batches one flow's frames into one UDP GSO datagram ends the batch after such a
/// frame, so that the receiver's merge of the batch is not refused for it.
pub fn ends_merge(inner: &[u8]) -> bool {
    let Ok(lay) = layout(inner) else {
        return false;
    };
    inner[lay.l4 + 13] & (TCP_PSH | TCP_FIN | TCP_SYN | TCP_RST | TCP_URG) != 0
}

/// A merge's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// Where in the buffer the virtio-net header and the merged frame are.
    pub frame: Range<usize>,
    /// How many bytes of the datagram, from its start, the merge took: all of it, or
    /// whole segments, the rest left as it was for the caller to try again.
    pub used: usize,
}

/// Merges the coalesced datagram `buf[at..at + len]`, made of segments of `seg`
/// bytes (the last may be shorter), each `skip` bytes of tunnel header that must be
/// the same in all of them and then an inner frame: as many segments from the first
/// as make one stream's run (at least two). The merged frame starts
/// `VNET_HDR_LEN - skip` bytes before `at`, which must be in `buf`. On failure the
/// buffer is unchanged; on success, so is every byte after the `used` ones.
pub fn merge_tcp(
    buf: &mut [u8],
    at: usize,
    len: usize,
    seg: usize,
    skip: usize,
) -> Result<Merged, Unmergeable> {
    if at + skip < VNET_HDR_LEN || at + len > buf.len() {
        return Err(Unmergeable("no room for the virtio-net header"));
    }
    if seg <= skip || len <= seg {
        return Err(Unmergeable("fewer than two segments"));
    }
    let n = len.div_ceil(seg);
    let data = &buf[at..at + len];
    let first = &data[..seg];
    let lay = layout(&first[skip..])?;
    let hl = lay.hl;
    if seg <= skip + hl {
        return Err(Unmergeable("no payload"));
    }
    let mss = seg - skip - hl;
    let inner0 = &first[skip..];
    let flags0 = inner0[lay.l4 + 13];
    let seq0 = be32(inner0, lay.l4 + 4);
    if flags0 & (TCP_SYN | TCP_RST | TCP_URG) != 0 {
        return Err(Unmergeable("SYN, RST or URG"));
    }
    if flags0 & (TCP_PSH | TCP_FIN) != 0 {
        return Err(Unmergeable("PSH or FIN on the first segment"));
    }
    let base_flags = flags0 & !(TCP_CWR | TCP_PSH | TCP_FIN);
    let mut total = 0usize;
    let mut last_flags = 0;
    let ctx = JoinCtx {
        first,
        skip,
        hl,
        mss,
        base_flags,
        lay: &lay,
    };
    // Segments merged: up to the first that cannot join, or through a PSH or FIN.
    let mut m = n;
    for k in 0..n {
        let s = &data[k * seg..((k + 1) * seg).min(len)];
        let seq = seq0.wrapping_add(total as u32);
        if let Err(why) = joins(s, k, k + 1 == n, seq, &ctx) {
            if k < 2 {
                return Err(why);
            }
            m = k;
            break;
        }
        let inner = &s[skip..];
        total += inner.len() - hl;
        last_flags = inner[lay.l4 + 13];
        if last_flags & (TCP_PSH | TCP_FIN) != 0 {
            m = k + 1;
            break;
        }
    }
    let frame = at + skip;
    // IP and TCP headers and the payload must fit one IP length field.
    if hl - ETH_LEN + total > 0xffff {
        return Err(Unmergeable("too long for one IP packet"));
    }
    // Move every later segment's payload up behind the one before it.
    let mut w = frame + hl + mss;
    for k in 1..m {
        let from = at + k * seg + skip + hl;
        let end = (at + (k + 1) * seg).min(at + len);
        buf.copy_within(from..end, w);
        w += end - from;
    }
    let flags = flags0 | (last_flags & (TCP_PSH | TCP_FIN));
    let hdr = super_headers(
        &mut buf[frame..frame + hl],
        &lay,
        w - frame - hl,
        flags,
        mss,
    );
    let v = frame - VNET_HDR_LEN;
    hdr.emit((&mut buf[v..frame]).try_into().unwrap());
    Ok(Merged {
        frame: v..w,
        used: if m == n { len } else { m * seg },
    })
}

/// Turns `h`, the headers (Ethernet, IP, TCP) of a merge's first segment laid out as
/// `lay`, into those of a super-frame of `payload` bytes cut at `mss`: IP length and
/// IPv4 checksum, TCP `flags`, and a partial TCP checksum (the pseudo-header's sum,
/// as a sending stack leaves it). Returns the super-frame's virtio-net header. The
/// caller has checked that the IP length fits.
pub(crate) fn super_headers(
    h: &mut [u8],
    lay: &Layout,
    payload: usize,
    flags: u8,
    mss: usize,
) -> VnetHdr {
    let l4_len = lay.hl - lay.l4 + payload;
    if lay.v4 {
        let l3 = ETH_LEN;
        let tot = (lay.hl - l3 + payload) as u16;
        h[l3 + 2..l3 + 4].copy_from_slice(&tot.to_be_bytes());
        h[l3 + 10..l3 + 12].fill(0);
        let c = checksum::checksum(&h[l3..lay.l4]);
        h[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    } else {
        h[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    h[lay.l4 + 13] = flags;
    let partial = checksum::fold(pseudo(h, lay, l4_len));
    h[lay.l4 + 16..lay.l4 + 18].copy_from_slice(&partial.to_be_bytes());
    // CWR on the first segment: the cut must keep it there only (Linux's
    // `tcp_gro_complete` says so the same way).
    let ecn = if flags & TCP_CWR != 0 { GSO_ECN } else { 0 };
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if lay.v4 { GSO_TCPV4 } else { GSO_TCPV6 } | ecn,
        hdr_len: lay.hl as u16,
        gso_size: mss as u16,
        csum_start: lay.l4 as u16,
        csum_offset: 16,
    }
}

/// What a segment is checked against to join a merge.
struct JoinCtx<'a> {
    /// The first segment, tunnel header included.
    first: &'a [u8],
    skip: usize,
    hl: usize,
    mss: usize,
    /// The first segment's flags but CWR, PSH and FIN.
    base_flags: u8,
    lay: &'a Layout,
}

/// Whether segment `k` (tunnel header included; `last`: the datagram's last),
/// which must start at sequence number `seq`, can join the merge: Linux's
/// `tcp_gro_receive` rules, and its TCP checksum verified.
fn joins(s: &[u8], k: usize, last: bool, seq: u32, c: &JoinCtx<'_>) -> Result<(), Unmergeable> {
    let (skip, hl, lay) = (c.skip, c.hl, c.lay);
    if s.len() <= skip + hl || s[..skip] != c.first[..skip] {
        return Err(Unmergeable("different tunnel header or no payload"));
    }
    let inner = &s[skip..];
    // Only the datagram's last segment may be shorter (UDP GSO cuts equal sizes).
    if !last && inner.len() - hl != c.mss {
        return Err(Unmergeable("segment sizes differ"));
    }
    // The IP length must cover exactly this segment (no padding, no truncation).
    let ip_len = if lay.v4 {
        usize::from(be16(inner, ETH_LEN + 2))
    } else {
        usize::from(be16(inner, ETH_LEN + 4)) + 40
    };
    if ip_len != inner.len() - ETH_LEN || !same_headers(&c.first[skip..], inner, lay) {
        return Err(Unmergeable("headers differ"));
    }
    if be32(inner, lay.l4 + 4) != seq {
        return Err(Unmergeable("sequence gap"));
    }
    let f = inner[lay.l4 + 13];
    if f & !(TCP_CWR | TCP_PSH | TCP_FIN) != c.base_flags || (f & TCP_CWR != 0 && k != 0) {
        return Err(Unmergeable("flags"));
    }
    if lay.v4 && !ipv4_header_ok(inner, lay.l4) {
        return Err(Unmergeable("bad IPv4 header checksum"));
    }
    if !tcp_checksum_ok(inner, lay) {
        return Err(Unmergeable("bad TCP checksum"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gso;
    use proptest::prelude::*;

    const VX: [u8; 8] = [0x08, 0, 0, 0, 0, 0x13, 0x89, 0];

    /// A merge ends at PSH/FIN and never includes SYN/RST/URG; plain data segments
    /// and anything not TCP end nothing.
    #[test]
    fn merges_end_where_tcp_flags_say() {
        for v4 in [true, false] {
            for (flags, ends) in [
                (0x10, false),
                (0x10 | TCP_CWR, false),
                (0x10 | TCP_PSH, true),
                (0x10 | TCP_FIN, true),
                (TCP_SYN, true),
                (TCP_RST, true),
                (0x10 | TCP_URG, true),
            ] {
                let (f, _) = super_frame(v4, 100, flags);
                assert_eq!(ends_merge(&f), ends, "v4 {v4} flags {flags:#x}");
            }
        }
        let (mut udp, _) = super_frame(true, 100, TCP_PSH);
        udp[14 + 9] = 17;
        assert!(!ends_merge(&udp));
        assert!(!ends_merge(&[0u8; 20]));
    }

    /// A TCP super-frame of `payload` bytes, partial checksum, as a stack sends it.
    fn super_frame(v4: bool, payload: usize, flags: u8) -> (Vec<u8>, VnetHdr) {
        let mut f = Vec::new();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        let l4 = if v4 {
            f.extend_from_slice(&[0x08, 0x00]);
            let tot = (20 + 32 + payload) as u16;
            f.extend_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
            f[16..18].copy_from_slice(&tot.to_be_bytes());
            f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
            let c = checksum::checksum(&f[14..34]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
            34
        } else {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&((32 + payload) as u16).to_be_bytes());
            f.extend_from_slice(&[6, 64]);
            f.extend_from_slice(&[0xfd; 16]);
            f.extend_from_slice(&[0xfe; 16]);
            54
        };
        // Ports, seq, ack, data offset 8 (12 bytes of options), flags, window.
        f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0xff, 0xff, 0xff, 0x00]);
        f.extend_from_slice(&[0, 0, 0, 7, 0x80, flags, 0x01, 0xf5, 0, 0, 0, 0]);
        f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        f.extend((0..payload).map(|i| (i * 7 + 3) as u8));
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            // A sender's stack marks a super-frame with CWR as ECN.
            gso_type: if v4 { GSO_TCPV4 } else { GSO_TCPV6 }
                | if flags & TCP_CWR != 0 { GSO_ECN } else { 0 },
            hdr_len: (l4 + 32) as u16,
            gso_size: 1398,
            csum_start: l4 as u16,
            csum_offset: 16,
        };
        let l4_len = f.len() - l4;
        let p = if v4 {
            checksum::pseudo_v4(&f[26..30], &f[30..34], 6, l4_len)
        } else {
            checksum::pseudo_v6(&f[22..38], &f[38..54], 6, l4_len)
        };
        let c = checksum::fold(p);
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        (f, hdr)
    }

    /// What a sender puts in one UDP GSO datagram: each segment behind a VXLAN header,
    /// laid out from `at` in a buffer with room in front.
    fn coalesced(frame: &[u8], hdr: &VnetHdr, at: usize) -> (Vec<u8>, usize, usize) {
        let (mut out, mut segs) = (Vec::new(), Vec::new());
        gso::segment(frame, hdr, &mut out, &mut segs).unwrap();
        let seg = VX.len() + segs[0].len();
        let mut buf = vec![0xaa; at];
        for r in &segs {
            buf.extend_from_slice(&VX);
            buf.extend_from_slice(&out[r.clone()]);
        }
        let len = buf.len() - at;
        (buf, len, seg)
    }

    /// The merged frame is the super-frame the sender started from: same bytes but
    /// for the IP ID and a recomputed IPv4 checksum, and a header saying the same.
    #[test]
    fn a_segmented_super_frame_merges_back_whole() {
        for v4 in [true, false] {
            for (payload, flags) in [(10_000, 0x18), (1398 * 3, 0x10), (60_000, 0x19)] {
                let (f, hdr) = super_frame(v4, payload, flags | TCP_CWR);
                let (mut buf, len, seg) = coalesced(&f, &hdr, 16);
                let r = merge_tcp(&mut buf, 16, len, seg, VX.len()).unwrap();
                assert_eq!(r.used, len);
                let got = &buf[r.frame];
                let h = VnetHdr::parse(got[..VNET_HDR_LEN].try_into().unwrap());
                assert_eq!(h, hdr, "v4 {v4} payload {payload}");
                assert_eq!(&got[VNET_HDR_LEN..], &f[..], "v4 {v4} payload {payload}");
            }
        }
    }

    /// Anything that does not start as one stream's two consecutive segments is
    /// refused and the buffer left as it was.
    #[test]
    fn refuses_what_is_not_one_stream_and_changes_nothing() {
        let (f, hdr) = super_frame(true, 1398 * 4, 0x18);
        let (buf, len, seg) = coalesced(&f, &hdr, 16);
        let l4 = 16 + 8 + 34;
        // (why, byte, bits flipped), in the first two segments
        let cases = [
            ("sequence gap", seg + l4 + 7, 1),
            ("bad TCP checksum", seg * 2 - 1, 1),
            ("headers differ", seg + l4 + 14, 1), // window
            ("different tunnel header or no payload", 16 + seg + 6, 1), // VNI
            ("flags", seg + l4 + 13, TCP_SYN),
            ("headers differ", 16 + seg + 8 + 15, 4), // TOS
            ("PSH or FIN on the first segment", l4 + 13, TCP_PSH),
        ];
        for (why, at, bits) in cases {
            let mut b = buf.clone();
            b[at] ^= bits;
            let before = b.clone();
            assert_eq!(merge_tcp(&mut b, 16, len, seg, 8), Err(Unmergeable(why)));
            assert_eq!(b, before, "{why}: buffer changed");
        }
        // A SYN; inner UDP; a single segment; no room for the header.
        let (s, h) = super_frame(true, 1398 * 2, 0x02);
        let (mut b, l, sg) = coalesced(&s, &h, 16);
        assert!(merge_tcp(&mut b, 16, l, sg, 8).is_err());
        let mut u = buf.clone();
        u[16 + 8 + 23] = 17;
        assert_eq!(
            merge_tcp(&mut u, 16, len, seg, 8),
            Err(Unmergeable("not TCP"))
        );
        let mut one = buf.clone();
        assert!(merge_tcp(&mut one, 16, seg, seg, 8).is_err());
        let mut b = buf[15..].to_vec();
        assert!(merge_tcp(&mut b, 1, len, seg, 8).is_err());
    }

    /// A segment that cannot join (a gap, a bad checksum) or one that ends a stream's
    /// run (PSH) after two good ones: those merge, the rest is left as it was.
    #[test]
    fn merges_the_run_before_what_cannot_join() {
        let (f, hdr) = super_frame(true, 1398 * 4, 0x18);
        let (buf, len, seg) = coalesced(&f, &hdr, 16);
        let l4 = 16 + 8 + 34;
        // (byte, bits flipped, segments merged, flags of the merged frame)
        let cases = [
            (seg * 2 + l4 + 7, 1, 2, 0x10),    // a gap before the third
            (seg * 3 - 1, 1, 2, 0x10),         // the third's checksum
            (seg + l4 + 13, TCP_PSH, 2, 0x18), // PSH on the second
        ];
        for (at, bits, merged, flags) in cases {
            let mut b = buf.clone();
            b[at] ^= bits;
            if bits == TCP_PSH {
                // A sender's PSH: the segment's checksum covers it.
                let inner = 16 + seg + 8;
                let seg1 = &mut b[inner..16 + 2 * seg];
                seg1[34 + 16..34 + 18].fill(0);
                let p = checksum::pseudo_v4(&seg1[26..30], &seg1[30..34], 6, seg1.len() - 34);
                let c = checksum::finish(checksum::add(p, &seg1[34..]));
                seg1[34 + 16..34 + 18].copy_from_slice(&c.to_be_bytes());
            }
            let before = b.clone();
            let r = merge_tcp(&mut b, 16, len, seg, 8).unwrap();
            assert_eq!(r.used, merged * seg, "byte {at}");
            assert_eq!(
                &b[16 + r.used..],
                &before[16 + r.used..],
                "the rest changed"
            );
            let (want, h) = super_frame(true, 1398 * merged, flags);
            assert_eq!(&b[r.frame.start + VNET_HDR_LEN..r.frame.end], &want[..]);
            assert_eq!(
                VnetHdr::parse(b[r.frame][..VNET_HDR_LEN].try_into().unwrap()),
                h
            );
        }
    }

    /// Two super-frames of one stream coalesced into one datagram by the network
    /// (the first's last segment full-sized, with PSH) merge back as two.
    #[test]
    fn a_burst_of_two_super_frames_merges_as_two() {
        let (f, hdr) = super_frame(true, 1398 * 3, 0x18);
        let (mut buf, len1, seg) = coalesced(&f, &hdr, 16);
        // The second continues the sequence: 3 × 1398 bytes later, then 2 segments.
        let (mut g, ghdr) = super_frame(true, 1398 * 2, 0x10);
        let seq = 0xffff_ff00u32.wrapping_add(3 * 1398).to_be_bytes();
        g[38..42].copy_from_slice(&seq);
        let p = checksum::pseudo_v4(&g[26..30], &g[30..34], 6, g.len() - 34);
        g[50..52].copy_from_slice(&checksum::fold(p).to_be_bytes());
        let (b2, len2, _) = coalesced(&g, &ghdr, 0);
        buf.extend_from_slice(&b2);
        let len = len1 + len2;
        let r = merge_tcp(&mut buf, 16, len, seg, 8).unwrap();
        assert_eq!(r.used, len1);
        assert_eq!(&buf[r.frame.start + VNET_HDR_LEN..r.frame.end], &f[..]);
        let r2 = merge_tcp(&mut buf, 16 + len1, len2, seg, 8).unwrap();
        assert_eq!(r2.used, len2);
        assert_eq!(&buf[r2.frame.start + VNET_HDR_LEN..r2.frame.end], &g[..]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever a peer sends — any bytes, any segment size — merging never
        /// panics, and a refusal leaves the buffer as it was.
        #[test]
        fn hostile_datagrams_never_panic_and_refusals_change_nothing(
            bytes in proptest::collection::vec(any::<u8>(), 0..3000),
            at in 0usize..20,
            seg in 0usize..1600,
        ) {
            let mut buf = bytes.clone();
            let len = buf.len().saturating_sub(at);
            if merge_tcp(&mut buf, at, len, seg, 8).is_err() {
                prop_assert_eq!(buf, bytes);
            }
        }

        /// Any super-frame, cut at any MSS by our segmentation, merges back whole.
        #[test]
        fn any_segmented_super_frame_merges_back(
            v4 in any::<bool>(),
            payload in 2usize..20_000,
            mss in 536usize..1460,
            psh in any::<bool>(),
        ) {
            let (f, mut hdr) = super_frame(v4, payload, 0x10 | if psh { TCP_PSH } else { 0 });
            hdr.gso_size = mss as u16;
            prop_assume!(payload > mss);
            let (mut buf, len, seg) = coalesced(&f, &hdr, 16);
            let r = merge_tcp(&mut buf, 16, len, seg, 8).unwrap();
            prop_assert_eq!(r.used, len);
            let got = &buf[r.frame];
            prop_assert_eq!(VnetHdr::parse(got[..VNET_HDR_LEN].try_into().unwrap()), hdr);
            prop_assert_eq!(&got[VNET_HDR_LEN..], &f[..]);
        }

        /// A mangled byte anywhere in a later segment either still merges into a
        /// frame of valid checksum (a field merging rewrites anyway) or is refused
        /// with the buffer untouched — never a merged frame hiding bad data.
        #[test]
        fn a_mangled_segment_is_never_merged_silently(
            at_frac in 0.0f64..1.0,
            bits in 1u8..=255,
        ) {
            let (f, hdr) = super_frame(true, 1398 * 3, 0x18);
            let (buf, len, seg) = coalesced(&f, &hdr, 16);
            let mut b = buf.clone();
            let at = 16 + seg + ((len - seg) as f64 * at_frac) as usize;
            b[at] ^= bits;
            let before = b.clone();
            match merge_tcp(&mut b, 16, len, seg, 8) {
                Err(_) => prop_assert_eq!(b, before),
                Ok(r) if r.used < len => {
                    // Merged up to the mangled segment, which is left as it was.
                    prop_assert!(at - 16 >= r.used, "merged the mangled byte {}", at);
                    prop_assert_eq!(&b[16 + r.used..], &before[16 + r.used..]);
                    let (want, _) = super_frame(true, 1398 * (r.used / seg), 0x10);
                    prop_assert_eq!(&b[r.frame.start + VNET_HDR_LEN..r.frame.end], &want[..]);
                }
                Ok(r) => {
                    // Only a segment's IP ID or IP checksum may differ: the merge
                    // keeps the first's ID and recomputes the checksum. (A mangled TCP
                    // checksum must be refused: the payload is not verified otherwise.)
                    let off = (at - 16) % seg;
                    prop_assert!(
                        [8 + 18, 8 + 19, 8 + 24, 8 + 25].contains(&off),
                        "merged with byte {} (segment offset {}) mangled", at, off
                    );
                    prop_assert_eq!(&b[r.frame][VNET_HDR_LEN..], &f[..]);
                }
            }
        }
    }
}
