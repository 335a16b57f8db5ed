//! Bringing a frame's bytes in line with its flow key after actions changed it.
//!
//! Actions change the key ([`crate::actions`]); when the frame is output, [`commit`]
//! writes every header field that differs into the frame and updates the IPv4
//! header checksum and the TCP/UDP/ICMP checksum incrementally (RFC 1624), so a
//! rewrite costs a few additions, not a pass over the payload.
//!
//! Offloaded frames carry a *partial* L4 checksum (virtio-net `NEEDS_CSUM`): the
//! checksum field holds only the pseudo-header sum, and whoever completes it sums
//! the rest later. For those, address changes update that sum (addresses are in the
//! pseudo-header) and port changes leave it alone (the later pass covers them). The
//! VLAN tag is not handled here: the datapath applies tags when it sends.

use crate::checksum::fold;
use crate::flow::*;

/// The header fields [`commit`] writes into a frame.
pub const HEADER_FIELDS: &[Field] = &[
    DL_SRC,
    DL_DST,
    NW_SRC,
    NW_DST,
    NW_PROTO,
    NW_TOS,
    NW_TTL,
    TP_SRC,
    TP_DST,
    IPV6_LABEL,
    IPV6_SRC_HI,
    IPV6_SRC_LO,
    IPV6_DST_HI,
    IPV6_DST_LO,
];

/// Whether actions changed any header field [`commit`] writes. (`ARP_SHA`/`ARP_THA`
/// share words with the IPv6 addresses, so they are covered too.)
#[inline]
pub fn differs(a: &FlowKey, b: &FlowKey) -> bool {
    HEADER_FIELDS.iter().any(|&f| a.get(f) != b.get(f))
}

/// RFC 1624, eqn. 3: the checksum after the 16-bit words `old` became `new`.
fn replace(check: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut acc = u64::from(!check);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        acc += u64::from(!u16::from_be_bytes([o[0], o[1]]));
        acc += u64::from(u16::from_be_bytes([n[0], n[1]]));
    }
    !fold(acc)
}

/// The checksum field at `at` in `buf`, how to update it, if the frame has one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum L4Csum {
    /// No checksum to maintain (none present, UDP's "no checksum", or out of reach).
    None,
    /// A complete checksum.
    Full(usize),
    /// A partial checksum: the pseudo-header sum, not complemented.
    Partial(usize),
}

impl L4Csum {
    fn update(self, l4: &mut [u8], old: &[u8], new: &[u8], pseudo: bool) {
        match self {
            L4Csum::Full(at) => {
                let c = u16::from_be_bytes([l4[at], l4[at + 1]]);
                let mut c2 = replace(c, old, new);
                // UDP's 0 means "no checksum": a computed 0 is sent as 0xffff.
                if c2 == 0 {
                    c2 = 0xffff;
                }
                l4[at..at + 2].copy_from_slice(&c2.to_be_bytes());
            }
            L4Csum::Partial(at) if pseudo => {
                let c = u16::from_be_bytes([l4[at], l4[at + 1]]);
                let c2 = !replace(!c, old, new);
                l4[at..at + 2].copy_from_slice(&c2.to_be_bytes());
            }
            _ => {}
        }
    }
}

fn l4_csum(proto: u8, l4: &[u8], partial: bool, v6: bool) -> L4Csum {
    let at = match proto {
        6 => 16,
        17 => 6,
        1 if !v6 => 2,
        58 if v6 => 2,
        _ => return L4Csum::None,
    };
    if l4.len() < at + 2 {
        return L4Csum::None;
    }
    // ICMP checksums are never offloaded.
    if partial && matches!(proto, 6 | 17) {
        return L4Csum::Partial(at);
    }
    if proto == 17 && !v6 && l4[at] == 0 && l4[at + 1] == 0 {
        return L4Csum::None;
    }
    L4Csum::Full(at)
}

fn put_mac(dst: &mut [u8], v: u64) {
    dst.copy_from_slice(&v.to_be_bytes()[2..8]);
}

/// Writes into `frame` (starting at its Ethernet header) every field in which `to`
/// differs from `from`, the key the frame's bytes currently match. `csum_partial`:
/// the frame's L4 checksum is partial (virtio-net `NEEDS_CSUM`). Fields the frame
/// does not carry, or that lie beyond `frame`, are left alone; never panics.
pub fn commit(frame: &mut [u8], from: &FlowKey, to: &FlowKey, csum_partial: bool) {
    if frame.len() < 14 {
        return;
    }
    if from.get(DL_DST) != to.get(DL_DST) {
        put_mac(&mut frame[0..6], to.get(DL_DST));
    }
    if from.get(DL_SRC) != to.get(DL_SRC) {
        put_mac(&mut frame[6..12], to.get(DL_SRC));
    }
    let l3 = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x8100 | 0x88a8 => 18,
        _ => 14,
    };
    let Some(ip) = frame.get_mut(l3..) else {
        return;
    };
    match from.get(DL_TYPE) {
        0x0800 => ipv4(ip, from, to, csum_partial),
        0x86dd => ipv6(ip, from, to, csum_partial),
        0x0806 => arp(ip, from, to),
        _ => {}
    }
}

/// Rewrites ports (or ICMP type/code) at the start of `l4`.
fn ports(l4: &mut [u8], proto: u8, from: &FlowKey, to: &FlowKey, csum: L4Csum) {
    let icmp = matches!(proto, 1 | 58);
    if !(matches!(proto, 6 | 17 | 132) || icmp) || l4.len() < 4 {
        return;
    }
    if icmp {
        let new = [to.get(TP_SRC) as u8, to.get(TP_DST) as u8];
        if l4[0..2] != new {
            let old = [l4[0], l4[1]];
            l4[0..2].copy_from_slice(&new);
            csum.update(l4, &old, &new, false);
        }
        return;
    }
    for (f, at) in [(TP_SRC, 0), (TP_DST, 2)] {
        if from.get(f) != to.get(f) {
            let old = [l4[at], l4[at + 1]];
            let new = (to.get(f) as u16).to_be_bytes();
            l4[at..at + 2].copy_from_slice(&new);
            csum.update(l4, &old, &new, false);
        }
    }
}

fn ipv4(ip: &mut [u8], from: &FlowKey, to: &FlowKey, partial: bool) {
    if ip.len() < 20 {
        return;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 || ip.len() < ihl {
        return;
    }
    let proto = ip[9];
    let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
    let (hdr, l4) = ip.split_at_mut(ihl);
    let csum = if first_fragment {
        l4_csum(proto, l4, partial, false)
    } else {
        L4Csum::None
    };
    let mut ip_check = u16::from_be_bytes([hdr[10], hdr[11]]);
    // TOS shares a 16-bit word with version/IHL, TTL with the protocol.
    for (f, at) in [(NW_TOS, 1usize), (NW_TTL, 8)] {
        if from.get(f) != to.get(f) {
            let w = at & !1;
            let old = [hdr[w], hdr[w + 1]];
            hdr[at] = to.get(f) as u8;
            ip_check = replace(ip_check, &old, &[hdr[w], hdr[w + 1]]);
        }
    }
    for (f, at) in [(NW_SRC, 12usize), (NW_DST, 16)] {
        if from.get(f) != to.get(f) {
            let old: [u8; 4] = hdr[at..at + 4].try_into().unwrap();
            let new = (to.get(f) as u32).to_be_bytes();
            hdr[at..at + 4].copy_from_slice(&new);
            ip_check = replace(ip_check, &old, &new);
            // The addresses are in TCP's and UDP's pseudo-header, not ICMP's.
            if proto != 1 {
                csum.update(l4, &old, &new, true);
            }
        }
    }
    hdr[10..12].copy_from_slice(&ip_check.to_be_bytes());
    if first_fragment {
        ports(l4, proto, from, to, csum);
    }
}

fn ipv6(ip: &mut [u8], from: &FlowKey, to: &FlowKey, partial: bool) {
    if ip.len() < 40 {
        return;
    }
    let proto = ip[6];
    let (hdr, l4) = ip.split_at_mut(40);
    let csum = l4_csum(proto, l4, partial, true);
    if from.get(NW_TOS) != to.get(NW_TOS) || from.get(IPV6_LABEL) != to.get(IPV6_LABEL) {
        let w0 = (6u32 << 28) | ((to.get(NW_TOS) as u32) << 20) | (to.get(IPV6_LABEL) as u32);
        hdr[0..4].copy_from_slice(&w0.to_be_bytes());
    }
    if from.get(NW_TTL) != to.get(NW_TTL) {
        hdr[7] = to.get(NW_TTL) as u8;
    }
    for (hi, lo, at) in [
        (IPV6_SRC_HI, IPV6_SRC_LO, 8usize),
        (IPV6_DST_HI, IPV6_DST_LO, 24),
    ] {
        if from.get(hi) != to.get(hi) || from.get(lo) != to.get(lo) {
            let old: [u8; 16] = hdr[at..at + 16].try_into().unwrap();
            let mut new = [0u8; 16];
            new[..8].copy_from_slice(&to.get(hi).to_be_bytes());
            new[8..].copy_from_slice(&to.get(lo).to_be_bytes());
            hdr[at..at + 16].copy_from_slice(&new);
            csum.update(l4, &old, &new, true);
        }
    }
    ports(l4, proto, from, to, csum);
}

fn arp(a: &mut [u8], from: &FlowKey, to: &FlowKey) {
    if a.len() < 28 {
        return;
    }
    if from.get(NW_PROTO) != to.get(NW_PROTO) {
        a[7] = to.get(NW_PROTO) as u8;
    }
    if from.get(ARP_SHA) != to.get(ARP_SHA) {
        put_mac(&mut a[8..14], to.get(ARP_SHA));
    }
    if from.get(NW_SRC) != to.get(NW_SRC) {
        a[14..18].copy_from_slice(&(to.get(NW_SRC) as u32).to_be_bytes());
    }
    if from.get(ARP_THA) != to.get(ARP_THA) {
        put_mac(&mut a[18..24], to.get(ARP_THA));
    }
    if from.get(NW_DST) != to.get(NW_DST) {
        a[24..28].copy_from_slice(&(to.get(NW_DST) as u32).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::KeyOp;
    use crate::flow_syntax::FlowSpec;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    /// Runs `actions` on the key of `frame` and commits the result.
    fn run(frame: &mut [u8], actions: &str, partial: bool) -> FlowKey {
        let from = FlowKey::extract(frame, 1);
        let mut to = from;
        for a in FlowSpec::parse(&format!("actions={actions}"))
            .unwrap()
            .actions
        {
            KeyOp::of(&a).unwrap().apply(&mut to);
        }
        assert!(differs(&from, &to));
        commit(frame, &from, &to, partial);
        to
    }

    /// Checks every checksum in `frame` from scratch with etherparse's help.
    fn checksums_valid(frame: &[u8]) -> bool {
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let payload = match &p.transport {
            Some(TransportSlice::Tcp(t)) => t.payload(),
            Some(TransportSlice::Udp(u)) => u.payload(),
            Some(TransportSlice::Icmpv4(i)) => i.payload(),
            _ => &[][..],
        };
        let ok_l4 = match (&p.net, &p.transport) {
            (Some(etherparse::NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(t))) => {
                t.to_header()
                    .calc_checksum_ipv4(&ip.header().to_header(), payload)
                    .unwrap()
                    == t.checksum()
            }
            (Some(etherparse::NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(u))) => {
                u.to_header()
                    .calc_checksum_ipv4(&ip.header().to_header(), payload)
                    .unwrap()
                    == u.checksum()
            }
            (Some(etherparse::NetSlice::Ipv6(ip)), Some(TransportSlice::Tcp(t))) => {
                t.to_header()
                    .calc_checksum_ipv6(&ip.header().to_header(), payload)
                    .unwrap()
                    == t.checksum()
            }
            (Some(etherparse::NetSlice::Ipv4(_)), Some(TransportSlice::Icmpv4(i))) => {
                crate::checksum::checksum(i.slice()) == 0
            }
            _ => true,
        };
        let ok_ip = match &p.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                let h = ip.header().to_header();
                h.calc_header_checksum() == h.header_checksum
            }
            _ => true,
        };
        ok_l4 && ok_ip
    }

    fn tcp4(tagged: bool) -> Vec<u8> {
        let mut f = Vec::new();
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let payload = b"hello, rewritten world";
        if tagged {
            b.single_vlan(7.try_into().unwrap())
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(40000, 80, 1, 100)
                .write(&mut f, payload)
                .unwrap();
        } else {
            b.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(40000, 80, 1, 100)
                .write(&mut f, payload)
                .unwrap();
        }
        f
    }

    #[test]
    fn ipv4_tcp_rewrites_keep_checksums_valid() {
        for tagged in [false, true] {
            let mut f = tcp4(tagged);
            assert!(checksums_valid(&f));
            let k = run(
                &mut f,
                "mod_dl_src:0a:00:00:00:00:01,mod_nw_src:192.168.1.1,mod_nw_dst:172.16.0.9,\
                 mod_tp_src:1234,mod_tp_dst:8080,mod_nw_tos:0x20,dec_ttl",
                false,
            );
            assert!(checksums_valid(&f), "tagged={tagged}");
            assert_eq!(FlowKey::extract(&f, 1), k, "frame matches the key");
            // The checker notices a stale checksum (a rewrite without an update).
            let mut stale = f.clone();
            let at = if tagged { 18 + 16 } else { 14 + 16 };
            stale[at + 3] ^= 1;
            assert!(!checksums_valid(&stale));
        }
    }

    #[test]
    fn udp_and_icmp_rewrites_keep_checksums_valid() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5000, 53)
            .write(&mut f, b"query")
            .unwrap();
        run(&mut f, "set_field:10.9.9.9->ip_dst,mod_tp_dst:5353", false);
        assert!(checksums_valid(&f));

        // A UDP checksum of 0 ("none") stays 0.
        let l4 = 14 + 20;
        f[l4 + 6] = 0;
        f[l4 + 7] = 0;
        run(&mut f, "mod_nw_src:10.1.1.1", false);
        assert_eq!(&f[l4 + 6..l4 + 8], &[0, 0]);

        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut f, b"ping")
            .unwrap();
        run(&mut f, "mod_nw_dst:10.0.0.3,dec_ttl", false);
        assert!(checksums_valid(&f));
    }

    #[test]
    fn ipv6_rewrites_keep_checksums_valid() {
        let mut f = Vec::new();
        let a = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let b = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(a, b, 9)
            .tcp(1, 2, 3, 4)
            .write(&mut f, b"six")
            .unwrap();
        let k = run(
            &mut f,
            "set_field:fd00::99->ipv6_dst,mod_tp_src:7,set_field:0x12345->ipv6_label,dec_ttl",
            false,
        );
        assert!(checksums_valid(&f));
        assert_eq!(FlowKey::extract(&f, 1), k);
    }

    #[test]
    fn partial_checksums_follow_the_pseudo_header_only() {
        // A partial checksum holds the pseudo-header sum; after the rewrite it must
        // equal the new pseudo-header's sum, whatever the ports became.
        let mut f = tcp4(false);
        let l4 = 14 + 20;
        let seg_len = f.len() - l4;
        let pseudo = |f: &[u8]| {
            fold(crate::checksum::pseudo_v4(
                &f[26..30],
                &f[30..34],
                6,
                seg_len,
            ))
        };
        let p = pseudo(&f);
        f[l4 + 16..l4 + 18].copy_from_slice(&p.to_be_bytes());
        run(&mut f, "mod_nw_src:192.168.7.7,mod_tp_dst:443", true);
        assert_eq!(
            u16::from_be_bytes([f[l4 + 16], f[l4 + 17]]),
            pseudo(&f),
            "the partial checksum is the new pseudo-header sum"
        );
    }

    #[test]
    fn arp_and_truncated_frames() {
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&[
            2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 0, 1,
        ]);
        arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        let k = run(
            &mut arp,
            "set_field:10.0.0.7->arp_tpa,set_field:02:00:00:00:00:09->arp_sha",
            false,
        );
        assert_eq!(FlowKey::extract(&arp, 1), k);

        let full = tcp4(true);
        for n in 0..full.len() {
            let mut f = full[..n].to_vec();
            let from = FlowKey::extract(&full, 1);
            let mut to = from;
            to.set(NW_SRC, 1);
            to.set(TP_DST, 9);
            to.set(DL_DST, 5);
            commit(&mut f, &from, &to, false);
        }
    }
}
