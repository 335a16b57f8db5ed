//! The flow key: every header field a rule can match, extracted from a frame once
//! and packed into fixed 64-bit words.
//!
//! Why packed words: the classifier masks and hashes keys once per subtable per
//! lookup, and the flow cache hashes them per frame. With a fixed array of words,
//! masking is `FLOW_WORDS` ANDs and equality a memcmp — no per-field branching.
//! Each named field lives at a fixed (word, shift, width) given by [`FIELDS`], which
//! the flow-text parser and printer use too.
//!
//! Conventions follow Open vSwitch's (ovs-fields(7)): `vlan_tci` has the CFI bit
//! (0x1000) set when a tag is present; `dl_type` is the type after any VLAN tag;
//! ICMP type and code are carried in `tp_src`/`tp_dst`; ARP's sender and target IPv4
//! addresses in `nw_src`/`nw_dst` and its opcode in `nw_proto`.

use crate::ethernet::{EtherType, EthernetFrame};
use crate::PortNo;

pub const FLOW_WORDS: usize = 12;

/// A flow key (or, with the same layout, a mask).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug, PartialOrd, Ord)]
pub struct FlowKey(pub [u64; FLOW_WORDS]);

/// Where a field lives in a [`FlowKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub word: u8,
    pub shift: u8,
    pub bits: u8,
}

macro_rules! fields {
    ($($id:ident = $name:literal : $word:literal, $shift:literal, $bits:literal;)*) => {
        $(pub const $id: Field = Field { name: $name, word: $word, shift: $shift, bits: $bits };)*
        /// Every matchable field, by its ovs-fields(7) name.
        pub const FIELDS: &[Field] = &[$($id),*];
    };
}

fields! {
    IN_PORT = "in_port": 0, 0, 32;
    VLAN_TCI = "vlan_tci": 0, 32, 16;
    DL_TYPE = "dl_type": 0, 48, 16;
    DL_SRC = "dl_src": 1, 0, 48;
    NW_PROTO = "nw_proto": 1, 48, 8;
    NW_TOS = "nw_tos": 1, 56, 8;
    DL_DST = "dl_dst": 2, 0, 48;
    NW_TTL = "nw_ttl": 2, 48, 8;
    NW_SRC = "nw_src": 3, 0, 32;
    NW_DST = "nw_dst": 3, 32, 32;
    TP_SRC = "tp_src": 4, 0, 16;
    TP_DST = "tp_dst": 4, 16, 16;
    TCP_FLAGS = "tcp_flags": 4, 32, 12;
    METADATA = "metadata": 5, 0, 64;
    TUN_ID = "tun_id": 6, 0, 64;
    TUN_SRC = "tun_src": 7, 0, 32;
    TUN_DST = "tun_dst": 7, 32, 32;
    IPV6_SRC_HI = "ipv6_src_hi": 8, 0, 64;
    IPV6_SRC_LO = "ipv6_src_lo": 9, 0, 64;
    IPV6_DST_HI = "ipv6_dst_hi": 10, 0, 64;
    IPV6_DST_LO = "ipv6_dst_lo": 11, 0, 64;
}

impl Field {
    #[inline]
    fn mask(&self) -> u64 {
        if self.bits == 64 {
            u64::MAX
        } else {
            (1u64 << self.bits) - 1
        }
    }

    pub fn by_name(name: &str) -> Option<Field> {
        FIELDS.iter().copied().find(|f| f.name == name)
    }
}

impl FlowKey {
    #[inline]
    pub fn get(&self, f: Field) -> u64 {
        (self.0[usize::from(f.word)] >> f.shift) & f.mask()
    }

    #[inline]
    pub fn set(&mut self, f: Field, v: u64) {
        let w = &mut self.0[usize::from(f.word)];
        *w = (*w & !(f.mask() << f.shift)) | ((v & f.mask()) << f.shift);
    }

    /// `self & mask`, word by word.
    #[inline]
    pub fn and(&self, mask: &FlowKey) -> FlowKey {
        let mut out = [0u64; FLOW_WORDS];
        for (o, (a, b)) in out.iter_mut().zip(self.0.iter().zip(mask.0.iter())) {
            *o = a & b;
        }
        FlowKey(out)
    }

    /// Extracts the key of `frame` arriving on `in_port`. Never panics: a truncated
    /// header simply leaves the fields it would have held at zero.
    pub fn extract(frame: &[u8], in_port: PortNo) -> FlowKey {
        let mut k = FlowKey::default();
        k.set(IN_PORT, u64::from(in_port));
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return k;
        };
        k.set(DL_DST, mac_u64(&frame[0..6]));
        k.set(DL_SRC, mac_u64(&frame[6..12]));
        let mut l3 = 14;
        let mut ethertype = u16::from(eth.ethertype());
        if let Some(tci) = eth.vlan_tci() {
            k.set(VLAN_TCI, u64::from(tci | 0x1000));
            ethertype = be16(frame, 16).unwrap_or(0);
            l3 = 18;
        }
        k.set(DL_TYPE, u64::from(ethertype));
        let ip = &frame[l3.min(frame.len())..];
        match EtherType::from(ethertype) {
            EtherType::Ipv4 if ip.len() >= 20 => {
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                k.set(NW_TOS, u64::from(ip[1]));
                k.set(NW_TTL, u64::from(ip[8]));
                k.set(NW_PROTO, u64::from(ip[9]));
                k.set(
                    NW_SRC,
                    u64::from(u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]])),
                );
                k.set(
                    NW_DST,
                    u64::from(u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]])),
                );
                // Only the first fragment has L4 ports.
                let frag_off = be16(ip, 6).unwrap_or(0) & 0x1fff;
                if ihl >= 20 && frag_off == 0 {
                    extract_l4(&mut k, ip[9], ip.get(ihl..).unwrap_or(&[]));
                }
            }
            EtherType::Ipv6 if ip.len() >= 40 => {
                k.set(NW_TOS, u64::from((be16(ip, 0).unwrap_or(0) >> 4) & 0xff));
                k.set(NW_PROTO, u64::from(ip[6]));
                k.set(NW_TTL, u64::from(ip[7]));
                k.set(
                    IPV6_SRC_HI,
                    u64::from_be_bytes(ip[8..16].try_into().unwrap()),
                );
                k.set(
                    IPV6_SRC_LO,
                    u64::from_be_bytes(ip[16..24].try_into().unwrap()),
                );
                k.set(
                    IPV6_DST_HI,
                    u64::from_be_bytes(ip[24..32].try_into().unwrap()),
                );
                k.set(
                    IPV6_DST_LO,
                    u64::from_be_bytes(ip[32..40].try_into().unwrap()),
                );
                extract_l4(&mut k, ip[6], &ip[40..]);
            }
            EtherType::Arp if ip.len() >= 28 => {
                k.set(NW_PROTO, u64::from(be16(ip, 6).unwrap_or(0) & 0xff));
                k.set(
                    NW_SRC,
                    u64::from(u32::from_be_bytes([ip[14], ip[15], ip[16], ip[17]])),
                );
                k.set(
                    NW_DST,
                    u64::from(u32::from_be_bytes([ip[24], ip[25], ip[26], ip[27]])),
                );
            }
            _ => {}
        }
        k
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn mac_u64(b: &[u8]) -> u64 {
    b.iter().fold(0, |acc, &x| (acc << 8) | u64::from(x))
}

fn extract_l4(k: &mut FlowKey, proto: u8, l4: &[u8]) {
    match proto {
        6 if l4.len() >= 14 => {
            k.set(TP_SRC, u64::from(be16(l4, 0).unwrap_or(0)));
            k.set(TP_DST, u64::from(be16(l4, 2).unwrap_or(0)));
            k.set(TCP_FLAGS, u64::from(be16(l4, 12).unwrap_or(0) & 0x0fff));
        }
        17 | 132 if l4.len() >= 4 => {
            k.set(TP_SRC, u64::from(be16(l4, 0).unwrap_or(0)));
            k.set(TP_DST, u64::from(be16(l4, 2).unwrap_or(0)));
        }
        1 | 58 if l4.len() >= 2 => {
            k.set(TP_SRC, u64::from(l4[0]));
            k.set(TP_DST, u64::from(l4[1]));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    #[test]
    fn extracts_tagged_tcp_over_ipv4() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .single_vlan(10.try_into().unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 22, 1, 100)
            .syn()
            .write(&mut f, b"x")
            .unwrap();
        let k = FlowKey::extract(&f, 3);
        assert_eq!(k.get(IN_PORT), 3);
        assert_eq!(k.get(DL_SRC), 0x0200_0000_0001);
        assert_eq!(k.get(DL_DST), 0x0200_0000_0002);
        assert_eq!(k.get(VLAN_TCI), 0x1000 | 10);
        assert_eq!(k.get(DL_TYPE), 0x0800);
        assert_eq!(k.get(NW_PROTO), 6);
        assert_eq!(k.get(NW_SRC), 0x0a00_0001);
        assert_eq!(k.get(NW_DST), 0x0a00_0002);
        assert_eq!(k.get(NW_TTL), 64);
        assert_eq!((k.get(TP_SRC), k.get(TP_DST)), (40000, 22));
        assert_eq!(k.get(TCP_FLAGS), 0x002);
    }

    #[test]
    fn extracts_udp6_icmp_and_arp() {
        let mut f = Vec::new();
        let a6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let b6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(a6, b6, 9)
            .udp(53, 5353)
            .write(&mut f, b"q")
            .unwrap();
        let k = FlowKey::extract(&f, 1);
        assert_eq!(
            (k.get(DL_TYPE), k.get(NW_PROTO), k.get(NW_TTL)),
            (0x86dd, 17, 9)
        );
        assert_eq!(
            (k.get(IPV6_SRC_HI), k.get(IPV6_SRC_LO)),
            (0xfd00_0000_0000_0000, 1)
        );
        assert_eq!((k.get(TP_SRC), k.get(TP_DST)), (53, 5353));

        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut f, b"ping")
            .unwrap();
        let k = FlowKey::extract(&f, 1);
        assert_eq!((k.get(NW_PROTO), k.get(TP_SRC), k.get(TP_DST)), (1, 8, 0));

        // ARP request 10.0.0.1 → who-has 10.0.0.2.
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&[
            2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 0, 1,
        ]);
        arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        let k = FlowKey::extract(&arp, 1);
        assert_eq!(
            (
                k.get(DL_TYPE),
                k.get(NW_PROTO),
                k.get(NW_SRC),
                k.get(NW_DST)
            ),
            (0x0806, 1, 0x0a000001, 0x0a000002)
        );
    }

    #[test]
    fn truncated_frames_never_panic() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .single_vlan(10.try_into().unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1, 2, 3, 4)
            .write(&mut f, b"")
            .unwrap();
        for n in 0..=f.len() {
            let _ = FlowKey::extract(&f[..n], 0);
        }
    }

    #[test]
    fn set_and_get_respect_field_bounds() {
        let mut k = FlowKey::default();
        for f in FIELDS {
            k.set(*f, u64::MAX);
            assert_eq!(k.get(*f), f.mask(), "{}", f.name);
        }
        let mut k = FlowKey::default();
        k.set(TP_DST, 0x1_0050); // too wide: only 16 bits kept
        assert_eq!(k.get(TP_DST), 0x50);
        assert_eq!(k.get(TP_SRC), 0);
        assert_eq!(Field::by_name("nw_dst"), Some(NW_DST));
    }
}
