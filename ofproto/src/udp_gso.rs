//! Coalescing a run of one UDP flow's datagrams, queued for one port, into one UDP
//! GSO super-frame (virtio-net `GSO_UDP_L4`).
//!
//! What a port costs per frame is mostly the kernel's: one skb, one pass through the
//! qdisc and the device, and — for a veth or a TAP — the receiving side's IP layer,
//! all run for every 64-byte datagram. A super-frame of a flow's consecutive
//! datagrams pays those once; it is cut back into the same datagrams where it must
//! be (the receiving socket's UDP layer, a device without UDP segmentation, a guest
//! without USO), exactly as Linux's own UDP GRO forwarding does.
//!
//! A run is datagrams that Linux's segmentation gives back unchanged: the same
//! Ethernet, IP and UDP headers but for lengths, IPv4 ID and checksums; the same
//! payload size but for the last, which may be shorter; no IP options, fragments or
//! padding; no VLAN tag (a packet socket would refuse the super-frame). The IPv4 ID is rewritten by the segmentation to count up from the first
//! datagram's: a run requires that of datagrams without don't-fragment, and takes any
//! ID for datagrams with it, whose ID RFC 6864 makes meaningless (Linux's GRO does
//! the same). Checksums are trusted only where the kernel vouches for them (partial
//! or validated); otherwise each datagram's is checked first, so that a corrupt one
//! is never given a fresh checksum; a datagram without one (IPv4, checksum 0) does
//! not join, since the segmentation would add one. The IPv4 header checksum is always
//! checked (Linux's GRO does too).

use crate::checksum;
use crate::vnet_hdr::{VnetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_NONE, GSO_UDP_L4, VNET_HDR_LEN};

const PROTO_UDP: u8 = 17;
/// Longest header a super-frame's first part holds: virtio-net, Ethernet, IPv6, UDP.
pub const HEAD_MAX: usize = VNET_HDR_LEN + 14 + 40 + 8;
/// Most datagrams one super-frame carries (the kernel's `UDP_MAX_SEGMENTS`).
pub const MAX_SEGMENTS: usize = 64;

/// Where a datagram's layers are and what a run needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    l3: u16,
    l4: u16,
    /// UDP payload bytes.
    pub payload: u16,
    v4: bool,
    /// IPv4 don't-fragment (IPv6: true).
    df: bool,
    /// IPv4 ID (IPv6: 0).
    id: u16,
}

impl Shape {
    /// Bytes before the payload: Ethernet, IP, UDP.
    pub fn head_len(&self) -> usize {
        usize::from(self.l4) + 8
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The shape of `frame` (without its virtio-net header `hdr`) if it may join a run.
pub fn shape(frame: &[u8], hdr: &VnetHdr) -> Option<Shape> {
    if hdr.gso_type != GSO_NONE {
        return None;
    }
    // Untagged only: a packet socket types a frame's GSO by its outer Ethertype, and
    // refuses UDP segmentation of a tagged one.
    let l3 = 14;
    let (v4, l4, df, id) = match be16(frame.get(..l3)?, 12) {
        0x0800 => {
            let ip = frame.get(l3..l3 + 20)?;
            // No options; not a fragment; the IP length is the frame's (no padding).
            if ip[0] != 0x45 || ip[9] != PROTO_UDP || be16(ip, 6) & 0x3fff != 0 {
                return None;
            }
            if usize::from(be16(ip, 2)) != frame.len() - l3 {
                return None;
            }
            // The cut writes a fresh header checksum: a wrong one must not be hidden.
            if checksum::checksum(ip) != 0 {
                return None;
            }
            (true, l3 + 20, ip[6] & 0x40 != 0, be16(ip, 4))
        }
        0x86dd => {
            let ip = frame.get(l3..l3 + 40)?;
            if ip[0] >> 4 != 6 || ip[6] != PROTO_UDP {
                return None;
            }
            if usize::from(be16(ip, 4)) != frame.len() - l3 - 40 {
                return None;
            }
            (false, l3 + 40, true, 0)
        }
        _ => return None,
    };
    let udp = frame.get(l4..l4 + 8)?;
    if usize::from(be16(udp, 4)) != frame.len() - l4 || frame.len() - l4 == 8 {
        return None;
    }
    let partial = hdr.flags & F_NEEDS_CSUM != 0;
    if partial && (usize::from(hdr.csum_start) != l4 || hdr.csum_offset != 6) {
        return None;
    }
    if !partial && v4 && be16(udp, 6) == 0 {
        return None;
    }
    if !partial && hdr.flags & F_DATA_VALID == 0 {
        let l4_len = frame.len() - l4;
        let pseudo = checksum::pseudo_at(frame, l3, v4, PROTO_UDP, l4_len);
        if checksum::finish(checksum::add(pseudo, &frame[l4..])) != 0 {
            return None;
        }
    }
    Some(Shape {
        l3: l3 as u16,
        l4: l4 as u16,
        payload: (frame.len() - l4 - 8) as u16,
        v4,
        df,
        id,
    })
}

/// Whether datagram `b` of shape `sb` can be datagram `k` of the run that `a`
/// (shape `sa`) starts: the same headers where segmentation copies them, an IPv4
/// ID segmentation reproduces (or don't-fragment on both), and `a`'s payload size
/// (shorter only for the run's last, which the caller then ends).
pub fn joins(a: &[u8], sa: &Shape, b: &[u8], sb: &Shape, k: usize) -> bool {
    if sa.l4 != sb.l4 || sb.payload > sa.payload {
        return false;
    }
    let (l3, l4) = (usize::from(sa.l3), usize::from(sa.l4));
    let same_ip = if sa.v4 {
        let id_ok = (sa.df && sb.df) || sb.id == sa.id.wrapping_add(k as u16);
        // Version to TOS; flags to protocol; addresses.
        id_ok
            && a[l3..l3 + 2] == b[l3..l3 + 2]
            && a[l3 + 6..l3 + 10] == b[l3 + 6..l3 + 10]
            && a[l3 + 12..l4] == b[l3 + 12..l4]
    } else {
        a[l3..l3 + 4] == b[l3..l3 + 4] && a[l3 + 6..l4] == b[l3 + 6..l4]
    };
    a[..l3] == b[..l3] && same_ip && a[l4..l4 + 4] == b[l4..l4 + 4]
}

/// Writes into `out` the virtio-net header and the headers of the super-frame that
/// carries `total` payload bytes of a run `first` (shape `s`) starts; the payloads
/// follow it on the wire. Returns its length. `None` if the run is too long for one
/// IP packet.
pub fn super_head(
    first: &[u8],
    s: &Shape,
    total: usize,
    out: &mut [u8; HEAD_MAX],
) -> Option<usize> {
    let (l3, l4) = (usize::from(s.l3), usize::from(s.l4));
    let udp_len = 8 + total;
    let ip_len = l4 - l3 + udp_len;
    if ip_len > 0xffff || (!s.v4 && udp_len > 0xffff) {
        return None;
    }
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_UDP_L4,
        hdr_len: (l4 + 8) as u16,
        gso_size: s.payload,
        csum_start: l4 as u16,
        csum_offset: 6,
    };
    hdr.emit((&mut out[..VNET_HDR_LEN]).try_into().unwrap());
    let h = &mut out[VNET_HDR_LEN..VNET_HDR_LEN + l4 + 8];
    h.copy_from_slice(&first[..l4 + 8]);
    if s.v4 {
        h[l3 + 2..l3 + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        h[l3 + 10..l3 + 12].fill(0);
        let c = checksum::checksum(&h[l3..l4]);
        h[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    } else {
        h[l3 + 4..l3 + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    }
    let pseudo = checksum::pseudo_at(h, l3, s.v4, PROTO_UDP, udp_len);
    h[l4 + 4..l4 + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    // A partial checksum, as a sending stack leaves it: the pseudo-header's sum.
    h[l4 + 6..l4 + 8].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    Some(VNET_HDR_LEN + l4 + 8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gso;
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    /// Datagram `k` of a flow: `len` payload bytes, IPv4 ID `id`, a complete checksum.
    fn datagram(v6: bool, k: u8, len: usize, id: u16, df: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut f = Vec::new();
        let payload = vec![k; len];
        if v6 {
            b.ipv6([0xfd; 16], [0xfe; 16], 64)
                .udp(5000, 9000)
                .write(&mut f, &payload)
                .unwrap();
        } else {
            let mut ip = etherparse::Ipv4Header::new(
                0,
                64,
                etherparse::IpNumber::UDP,
                [10, 0, 0, 1],
                [10, 0, 0, 2],
            )
            .unwrap();
            ip.identification = id;
            ip.dont_fragment = df;
            b.ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
                .udp(5000, 9000)
                .write(&mut f, &payload)
                .unwrap();
        }
        f
    }

    fn complete() -> VnetHdr {
        VnetHdr::NONE
    }

    /// What the kernel makes of a super-frame: our own software segmentation, which
    /// follows Linux's (IDs counting up, checksums computed).
    fn cut(head: &[u8], payloads: &[&[u8]]) -> Vec<Vec<u8>> {
        let hdr = VnetHdr::parse(head[..VNET_HDR_LEN].try_into().unwrap());
        let mut frame = head[VNET_HDR_LEN..].to_vec();
        for p in payloads {
            frame.extend_from_slice(p);
        }
        let (mut out, mut segs) = (Vec::new(), Vec::new());
        gso::segment(&frame, &hdr, &mut out, &mut segs).unwrap();
        segs.into_iter().map(|r| out[r].to_vec()).collect()
    }

    /// Merges `frames` (all joining) and cuts the result: the same frames come back.
    fn round_trip(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let s0 = shape(&frames[0], &complete()).unwrap();
        let mut total = 0;
        for (k, f) in frames.iter().enumerate() {
            let s = shape(f, &complete()).unwrap();
            assert!(joins(&frames[0], &s0, f, &s, k), "frame {k} does not join");
            total += usize::from(s.payload);
        }
        let mut head = [0u8; HEAD_MAX];
        let n = super_head(&frames[0], &s0, total, &mut head).unwrap();
        let payloads: Vec<&[u8]> = frames.iter().map(|f| &f[s0.head_len()..]).collect();
        cut(&head[..n], &payloads)
    }

    /// A run of one flow's datagrams, cut again as the kernel will, gives back the
    /// very same datagrams: IPv4 with consecutive IDs, and IPv6.
    #[test]
    fn a_run_cut_again_is_the_same_datagrams() {
        for v6 in [false, true] {
            let frames: Vec<Vec<u8>> = (0..5u8)
                .map(|k| {
                    datagram(
                        v6,
                        k,
                        if k == 4 { 7 } else { 18 },
                        100 + u16::from(k),
                        false,
                    )
                })
                .collect();
            assert_eq!(round_trip(&frames), frames, "v6 {v6}");
        }
    }

    /// Don't-fragment datagrams join whatever their IDs (RFC 6864), which the cut
    /// renumbers from the first's; everything else about them comes back the same.
    #[test]
    fn atomic_datagrams_join_with_any_id() {
        let frames: Vec<Vec<u8>> = (0..3u8).map(|k| datagram(false, k, 18, 0, true)).collect();
        let back = round_trip(&frames);
        for (k, (b, f)) in back.iter().zip(&frames).enumerate() {
            assert_eq!(u16::from_be_bytes([b[18], b[19]]), k as u16);
            assert_eq!(b[20..24], f[20..24]);
            assert_eq!(b[26..], f[26..]);
        }
        // Without DF, the IDs must count up.
        let a = datagram(false, 0, 18, 7, false);
        let b = datagram(false, 1, 18, 9, false);
        let (sa, sb) = (
            shape(&a, &complete()).unwrap(),
            shape(&b, &complete()).unwrap(),
        );
        assert!(!joins(&a, &sa, &b, &sb, 1));
    }

    /// What cannot be cut back the same never starts or joins a run.
    #[test]
    fn refuses_what_the_cut_would_change() {
        let f = datagram(false, 0, 18, 1, true);
        let s = shape(&f, &complete()).unwrap();
        let refused = |mutate: &dyn Fn(&mut Vec<u8>), hdr: VnetHdr, why: &str| {
            let mut g = f.clone();
            mutate(&mut g);
            assert_eq!(shape(&g, &hdr), None, "{why}");
        };
        refused(&|g| g[60 - 1] ^= 1, complete(), "bad checksum");
        refused(&|g| g[40..42].fill(0), complete(), "no checksum (IPv4)");
        // Header changes keep the IPv4 header checksum right, so that each case
        // is refused for its own reason.
        let fix_ip = |g: &mut Vec<u8>| {
            g[24..26].fill(0);
            let c = checksum::checksum(&g[14..34]);
            g[24..26].copy_from_slice(&c.to_be_bytes());
        };
        refused(
            &|g| {
                g[20] |= 0x20;
                fix_ip(g)
            },
            complete(),
            "a fragment",
        );
        // TTL changed: the UDP checksum still holds, the IPv4 header's does not.
        refused(&|g| g[22] ^= 1, complete(), "bad IPv4 header checksum");
        refused(&|g| g.push(0), complete(), "padding");
        refused(
            &|g| {
                g[23] = 6;
                fix_ip(g)
            },
            complete(),
            "not UDP",
        );
        refused(&|g| g.truncate(42), complete(), "no payload");
        refused(
            &|g| g.splice(12..12, [0x81, 0, 0, 10]).for_each(drop),
            complete(),
            "a VLAN tag",
        );
        let gso = VnetHdr {
            gso_type: GSO_UDP_L4,
            gso_size: 10,
            ..VnetHdr::NONE
        };
        refused(&|_| {}, gso, "already a super-frame");
        let odd_partial = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 14,
            csum_offset: 6,
            ..VnetHdr::NONE
        };
        refused(&|_| {}, odd_partial, "a partial checksum elsewhere");
        // A partial or validated checksum is trusted as the kernel says.
        let mut p = f.clone();
        p[40..42].copy_from_slice(&[0x12, 0x34]);
        let partial = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHdr::NONE
        };
        assert!(shape(&p, &partial).is_some());
        let valid = VnetHdr {
            flags: F_DATA_VALID,
            ..VnetHdr::NONE
        };
        assert!(shape(&p, &valid).is_some());
        // Another port, TOS or a longer payload does not join.
        for (at, v) in [(36, 0x99), (15, 0x20)] {
            let mut g = datagram(false, 1, 18, 2, true);
            g[at] = v;
            fix_ip(&mut g);
            let sg = shape(
                &g,
                &VnetHdr {
                    flags: F_DATA_VALID,
                    ..VnetHdr::NONE
                },
            )
            .unwrap();
            assert!(!joins(&f, &s, &g, &sg, 1), "byte {at}");
        }
        let long = datagram(false, 1, 19, 2, true);
        let sl = shape(&long, &complete()).unwrap();
        assert!(!joins(&f, &s, &long, &sl, 1));
    }

    proptest! {
        /// Any run — sizes, count, a shorter last — comes back as sent.
        #[test]
        fn any_run_comes_back_as_sent(
            v6 in any::<bool>(),
            size in 1usize..1400,
            n in 2usize..40,
            last in 1usize..1400,
            id in any::<u16>(),
        ) {
            let last = last.min(size);
            let frames: Vec<Vec<u8>> = (0..n)
                .map(|k| {
                    let len = if k + 1 == n { last } else { size };
                    datagram(v6, k as u8, len, id.wrapping_add(k as u16), false)
                })
                .collect();
            prop_assume!(frames.iter().map(|f| f.len()).sum::<usize>() < 60_000);
            prop_assert_eq!(round_trip(&frames), frames);
        }

        /// Hostile bytes never panic the shape test.
        #[test]
        fn any_bytes_are_safe(bytes in proptest::collection::vec(any::<u8>(), 0..200), flags in 0u8..4) {
            let hdr = VnetHdr { flags, csum_start: 34, csum_offset: 6, ..VnetHdr::NONE };
            let _ = shape(&bytes, &hdr);
        }
    }
}
