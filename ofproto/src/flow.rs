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

pub const FLOW_WORDS: usize = 20;

/// A flow key (or, with the same layout, a mask).
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug, PartialOrd, Ord)]
pub struct FlowKey(pub [u64; FLOW_WORDS]);

/// Hashes only the non-zero words (and which they are). A masked key — what the
/// classifier's subtables and the flow cache hash — is mostly zeros: a typical
/// mask touches 2–5 of the 20 words, so this hashes a fraction of the key.
impl std::hash::Hash for FlowKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut present = 0u32;
        for (i, &w) in self.0.iter().enumerate() {
            if w != 0 {
                present |= 1 << i;
                state.write_u64(w);
            }
        }
        state.write_u32(present);
    }
}

/// Where a field lives in a [`FlowKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    IPV6_LABEL = "ipv6_label": 4, 44, 20;
    METADATA = "metadata": 5, 0, 64;
    TUN_ID = "tun_id": 6, 0, 64;
    TUN_SRC = "tun_src": 7, 0, 32;
    TUN_DST = "tun_dst": 7, 32, 32;
    IPV6_SRC_HI = "ipv6_src_hi": 8, 0, 64;
    IPV6_SRC_LO = "ipv6_src_lo": 9, 0, 64;
    IPV6_DST_HI = "ipv6_dst_hi": 10, 0, 64;
    IPV6_DST_LO = "ipv6_dst_lo": 11, 0, 64;
    // ARP's hardware addresses share words with the IPv6 addresses: a frame has one
    // or the other, and matching either requires its dl_type, so they never meet.
    ARP_SHA = "arp_sha": 8, 0, 48;
    ARP_THA = "arp_tha": 10, 0, 48;
    REG0 = "reg0": 12, 0, 32;
    REG1 = "reg1": 12, 32, 32;
    REG2 = "reg2": 13, 0, 32;
    REG3 = "reg3": 13, 32, 32;
    REG4 = "reg4": 14, 0, 32;
    REG5 = "reg5": 14, 32, 32;
    REG6 = "reg6": 15, 0, 32;
    REG7 = "reg7": 15, 32, 32;
    REG8 = "reg8": 16, 0, 32;
    REG9 = "reg9": 16, 32, 32;
    REG10 = "reg10": 17, 0, 32;
    REG11 = "reg11": 17, 32, 32;
    REG12 = "reg12": 18, 0, 32;
    REG13 = "reg13": 18, 32, 32;
    REG14 = "reg14": 19, 0, 32;
    REG15 = "reg15": 19, 32, 32;
}

/// The registers, by number.
pub const REGS: [Field; 16] = [
    REG0, REG1, REG2, REG3, REG4, REG5, REG6, REG7, REG8, REG9, REG10, REG11, REG12, REG13, REG14,
    REG15,
];

impl Field {
    #[inline]
    pub fn mask(&self) -> u64 {
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

/// How a named field reads and writes a key. Most fields are one [`Field`]; a few
/// are views of part of one (`dl_vlan` is 12 bits of `vlan_tci` that also mean "a
/// tag is present", `ip_dscp` the top 6 bits of `nw_tos`) or span two words (IPv6
/// addresses). Matching, `set_field`, `load` and `move` all go through this, so a
/// field means the same thing wherever it is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Key(Field),
    /// The VLAN ID; writing it pushes a tag if there was none.
    Vid,
    /// The VLAN priority; writing it pushes a tag if there was none.
    Pcp,
    Dscp,
    Ecn,
    Ipv6Src,
    Ipv6Dst,
}

impl Access {
    /// The value `key` holds, right-aligned.
    pub fn read(&self, key: &FlowKey) -> u128 {
        let tci = key.get(VLAN_TCI);
        u128::from(match *self {
            Access::Key(f) => key.get(f),
            Access::Vid => tci & 0x0fff,
            Access::Pcp => tci >> 13,
            Access::Dscp => key.get(NW_TOS) >> 2,
            Access::Ecn => key.get(NW_TOS) & 3,
            Access::Ipv6Src => {
                return (u128::from(key.get(IPV6_SRC_HI)) << 64) | u128::from(key.get(IPV6_SRC_LO))
            }
            Access::Ipv6Dst => {
                return (u128::from(key.get(IPV6_DST_HI)) << 64) | u128::from(key.get(IPV6_DST_LO))
            }
        })
    }

    /// Sets the bits of `mask` to those of `value` (both right-aligned).
    pub fn write(&self, key: &mut FlowKey, value: u128, mask: u128) {
        let merge = |old: u64, shift: u32, width: u32| -> u64 {
            let m = ((mask as u64) & ((1u64 << width) - 1)) << shift;
            (old & !m) | (((value as u64) << shift) & m)
        };
        match *self {
            Access::Key(f) => {
                let m = (mask as u64) & f.mask();
                key.set(f, (key.get(f) & !m) | ((value as u64) & m));
            }
            // A VID or PCP write on an untagged frame pushes a tag (CFI set).
            Access::Vid => key.set(VLAN_TCI, merge(key.get(VLAN_TCI), 0, 12) | 0x1000),
            Access::Pcp => key.set(VLAN_TCI, merge(key.get(VLAN_TCI), 13, 3) | 0x1000),
            Access::Dscp => key.set(NW_TOS, merge(key.get(NW_TOS), 2, 6)),
            Access::Ecn => key.set(NW_TOS, merge(key.get(NW_TOS), 0, 2)),
            Access::Ipv6Src | Access::Ipv6Dst => {
                let (hi, lo) = if *self == Access::Ipv6Src {
                    (IPV6_SRC_HI, IPV6_SRC_LO)
                } else {
                    (IPV6_DST_HI, IPV6_DST_LO)
                };
                let old = self.read(key);
                let new = (old & !mask) | (value & mask);
                key.set(hi, (new >> 64) as u64);
                key.set(lo, new as u64);
            }
        }
    }

    /// Adds "`value` under `mask`" to a match being built (`v`, `m`).
    pub fn put_match(&self, v: &mut FlowKey, m: &mut FlowKey, value: u128, mask: u128) {
        let mut add = |f: Field, val: u64, msk: u64| {
            v.set(f, v.get(f) | (val & msk));
            m.set(f, m.get(f) | msk);
        };
        match *self {
            Access::Key(f) => add(f, value as u64, mask as u64),
            // A VID or PCP match implies a tag is present (CFI bit set).
            Access::Vid => add(VLAN_TCI, 0x1000 | (value as u64 & 0xfff), 0x1fff),
            Access::Pcp => add(VLAN_TCI, 0x1000 | ((value as u64 & 7) << 13), 0xf000),
            Access::Dscp => add(NW_TOS, (value as u64) << 2, 0xfc),
            Access::Ecn => add(NW_TOS, value as u64 & 3, 0x03),
            Access::Ipv6Src => {
                add(IPV6_SRC_HI, (value >> 64) as u64, (mask >> 64) as u64);
                add(IPV6_SRC_LO, value as u64, mask as u64);
            }
            Access::Ipv6Dst => {
                add(IPV6_DST_HI, (value >> 64) as u64, (mask >> 64) as u64);
                add(IPV6_DST_LO, value as u64, mask as u64);
            }
        }
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

    /// Clears what is not part of the frame — registers, `metadata`, tunnel fields —
    /// as a frame crossing a patch port starts afresh in the peer bridge (Open
    /// vSwitch does the same).
    pub fn clear_metadata(&mut self) {
        for w in [5, 6, 7, 12, 13, 14, 15, 16, 17, 18, 19] {
            self.0[w] = 0;
        }
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
                let w0 = u32::from_be_bytes([ip[0], ip[1], ip[2], ip[3]]);
                k.set(NW_TOS, u64::from((w0 >> 20) & 0xff));
                k.set(IPV6_LABEL, u64::from(w0 & 0xf_ffff));
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
                k.set(ARP_SHA, mac_u64(&ip[8..14]));
                k.set(ARP_THA, mac_u64(&ip[18..24]));
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
