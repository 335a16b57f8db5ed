//! Tunnel wire formats and which port a received tunnel packet belongs to.
//!
//! VXLAN (RFC 7348) carries an Ethernet frame in UDP behind an 8-byte header with a
//! 24-bit VNI; GRE (RFC 2784/2890) carries it behind a 4–16 byte header, protocol
//! 0x6558 (transparent Ethernet bridging), with an optional 32-bit key, checksum and
//! sequence number. The daemon receives VXLAN on a UDP socket and GRE on a raw IP
//! socket and sends both through a raw socket whose IPv4 header it writes itself, so
//! it controls TOS, TTL and the UDP source port (a hash of the inner flow, so that
//! ECMP in the underlay spreads tunnels' flows over paths).
//!
//! Everything here is a function of bytes: parsing never panics and never trusts a
//! length field beyond the buffer.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

pub const VXLAN_HDR_LEN: usize = 8;
pub const VXLAN_DEFAULT_PORT: u16 = 4789;
/// Transparent Ethernet bridging: what GRE carries here.
pub const GRE_PROTO_TEB: u16 = 0x6558;
pub const IPV4_HDR_LEN: usize = 20;
pub const UDP_HDR_LEN: usize = 8;
/// Longest outer header this module writes: IPv4 + GRE with checksum, key and sequence.
pub const MAX_OUTER_LEN: usize = IPV4_HDR_LEN + 16;

const GRE_C: u16 = 0x8000;
const GRE_K: u16 = 0x2000;
const GRE_S: u16 = 0x1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecapError {
    #[error("shorter than its header")]
    Short,
    #[error("VXLAN header without the VNI flag")]
    NoVni,
    #[error("GRE version or routing bits not supported")]
    GreVersion,
    #[error("GRE does not carry Ethernet (protocol {0:#06x})")]
    NotEthernet(u16),
    #[error("IPv4 header malformed")]
    BadIp,
}

/// A VXLAN header's VNI; `Err` for a header that is short or lacks the I flag.
pub fn vxlan_parse(b: &[u8]) -> Result<u32, DecapError> {
    if b.len() < VXLAN_HDR_LEN {
        return Err(DecapError::Short);
    }
    if b[0] & 0x08 == 0 {
        return Err(DecapError::NoVni);
    }
    Ok(u32::from_be_bytes([0, b[4], b[5], b[6]]))
}

pub fn vxlan_emit(vni: u32) -> [u8; VXLAN_HDR_LEN] {
    let v = vni.to_be_bytes();
    [0x08, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// A parsed GRE header: its key (0 when absent) and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gre {
    pub key: u32,
    pub len: usize,
}

pub fn gre_parse(b: &[u8]) -> Result<Gre, DecapError> {
    if b.len() < 4 {
        return Err(DecapError::Short);
    }
    let flags = u16::from_be_bytes([b[0], b[1]]);
    // Version 0 only; no routing (RFC 1701's R bit) or strict source route.
    if flags & 0x0007 != 0 || flags & 0x4000 != 0 || flags & 0x0800 != 0 {
        return Err(DecapError::GreVersion);
    }
    let proto = u16::from_be_bytes([b[2], b[3]]);
    if proto != GRE_PROTO_TEB {
        return Err(DecapError::NotEthernet(proto));
    }
    let mut len = 4;
    if flags & GRE_C != 0 {
        len += 4;
    }
    let mut key = 0;
    if flags & GRE_K != 0 {
        let k = b.get(len..len + 4).ok_or(DecapError::Short)?;
        key = u32::from_be_bytes([k[0], k[1], k[2], k[3]]);
        len += 4;
    }
    if flags & GRE_S != 0 {
        len += 4;
    }
    if b.len() < len {
        return Err(DecapError::Short);
    }
    Ok(Gre { key, len })
}

/// Writes a GRE header into `out`; returns its length. With `csum`, the checksum
/// field covers the GRE header and `payload` (RFC 2784).
pub fn gre_emit(out: &mut [u8], key: Option<u32>, csum: bool, payload: &[u8]) -> usize {
    let mut flags = 0u16;
    let mut len = 4;
    if csum {
        flags |= GRE_C;
        len += 4;
    }
    if key.is_some() {
        flags |= GRE_K;
        len += 4;
    }
    out[0..2].copy_from_slice(&flags.to_be_bytes());
    out[2..4].copy_from_slice(&GRE_PROTO_TEB.to_be_bytes());
    let mut at = 4;
    if csum {
        out[4..8].fill(0);
        at = 8;
    }
    if let Some(k) = key {
        out[at..at + 4].copy_from_slice(&k.to_be_bytes());
    }
    if csum {
        let acc = crate::checksum::add(crate::checksum::add(0, &out[..len]), payload);
        out[4..6].copy_from_slice(&crate::checksum::finish(acc).to_be_bytes());
    }
    len
}

/// The source and destination of an IPv4 packet and where its payload starts.
pub fn ipv4_parse(b: &[u8]) -> Result<(Ipv4Addr, Ipv4Addr, usize), DecapError> {
    if b.len() < IPV4_HDR_LEN || b[0] >> 4 != 4 {
        return Err(DecapError::BadIp);
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    if ihl < IPV4_HDR_LEN || b.len() < ihl {
        return Err(DecapError::BadIp);
    }
    let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
    let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
    Ok((src, dst, ihl))
}

/// Writes an outer IPv4 header for a raw socket with `IP_HDRINCL`: the kernel fills
/// in the total length, the ID and the checksum (and the source when it is
/// unspecified). Don't-fragment is set: a packet too big for the underlay is
/// refused (`EMSGSIZE`), counted and dropped, never fragmented or cut.
pub fn ipv4_emit(out: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, proto: u8, tos: u8, ttl: u8) {
    out[0] = 0x45;
    out[1] = tos;
    out[2..4].fill(0);
    out[4..6].fill(0);
    out[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    out[8] = ttl;
    out[9] = proto;
    out[10..12].fill(0);
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&dst.octets());
}

/// A UDP header with no checksum (RFC 7348 recommends zero over IPv4).
pub fn udp_emit(out: &mut [u8], src_port: u16, dst_port: u16, payload_len: usize) {
    out[0..2].copy_from_slice(&src_port.to_be_bytes());
    out[2..4].copy_from_slice(&dst_port.to_be_bytes());
    out[4..6].copy_from_slice(&((UDP_HDR_LEN + payload_len) as u16).to_be_bytes());
    out[6..8].fill(0);
}

/// A UDP source port from a hash of the inner frame's flow — MACs and EtherType,
/// then for IPv4 and IPv6 the protocol, the addresses and (TCP, UDP, SCTP without
/// IPv4 options) the ports — in the dynamic range 49152–65535. Never lengths, IDs,
/// TTLs or checksums, which change from packet to packet: every packet of one inner
/// flow gets one port (no reordering across ECMP paths); flows spread over them.
pub fn entropy_port(inner: &[u8]) -> u16 {
    let fnv = |h: u32, bytes: &[u8]| {
        bytes
            .iter()
            .fold(h, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
    };
    let mut h = fnv(0x811c_9dc5, &inner[..inner.len().min(14)]);
    let ports = |proto: u8, at: usize| matches!(proto, 6 | 17 | 132).then_some(at..at + 4);
    let rest = match inner.get(12..14) {
        Some([0x08, 0x00]) if inner.len() >= 34 => {
            let proto = inner[23];
            h = fnv(h, &[proto]);
            h = fnv(h, &inner[26..34]);
            // Ports only where an option-less header puts them, of a first fragment.
            let first = inner[20] & 0x1f == 0 && inner[21] == 0;
            ports(proto, 34).filter(|_| inner[14] == 0x45 && first)
        }
        Some([0x86, 0xdd]) if inner.len() >= 54 => {
            let proto = inner[20];
            h = fnv(h, &[proto]);
            h = fnv(h, &inner[22..54]);
            ports(proto, 54)
        }
        _ => None,
    };
    if let Some(r) = rest.filter(|r| r.end <= inner.len()) {
        h = fnv(h, &inner[r]);
    }
    49152 | ((h ^ (h >> 16)) as u16 & 0x3fff)
}

/// Where a tunnel port receives from: a remote address and a key, each either a
/// value or `flow` (any, recorded in the packet's metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TunnelMatch {
    /// `None`: `remote_ip=flow`.
    pub remote: Option<IpAddr>,
    /// `None`: `key=flow`.
    pub key: Option<u32>,
    /// `local_ip`, if set: only packets to this address.
    pub local: Option<IpAddr>,
}

type LocalPort<P> = (Option<IpAddr>, P);

/// Finds the port a received tunnel packet belongs to, with Open vSwitch's order of
/// preference: exact remote and key, then exact remote with `key=flow`, then
/// `remote_ip=flow` with an exact key, then `flow` for both.
#[derive(Debug, Default, Clone)]
pub struct TunnelDemux<P> {
    /// By (remote, key): the ports with that pair, each with its `local_ip`.
    exact: HashMap<(IpAddr, u32), Vec<LocalPort<P>>>,
    fallbacks: Vec<(TunnelMatch, P)>,
}

impl<P: Copy> TunnelDemux<P> {
    pub fn new() -> Self {
        TunnelDemux {
            exact: HashMap::new(),
            fallbacks: Vec::new(),
        }
    }

    pub fn insert(&mut self, m: TunnelMatch, port: P) {
        match (m.remote, m.key) {
            (Some(r), Some(k)) => self.exact.entry((r, k)).or_default().push((m.local, port)),
            _ => self.fallbacks.push((m, port)),
        }
    }

    /// The port for a packet from `src` to `dst` with key `key`.
    pub fn lookup(&self, src: IpAddr, dst: IpAddr, key: u32) -> Option<P> {
        let local_ok = |l: &Option<IpAddr>| l.is_none_or(|l| l == dst);
        if let Some(ps) = self.exact.get(&(src, key)) {
            if let Some((_, p)) = ps.iter().find(|(l, _)| local_ok(l)) {
                return Some(*p);
            }
        }
        let rank = |m: &TunnelMatch| match (m.remote, m.key) {
            (Some(_), None) => 0,
            (None, Some(_)) => 1,
            _ => 2,
        };
        self.fallbacks
            .iter()
            .filter(|(m, _)| {
                local_ok(&m.local)
                    && m.remote.is_none_or(|r| r == src)
                    && m.key.is_none_or(|k| k == key)
            })
            .min_by_key(|(m, _)| rank(m))
            .map(|(_, p)| *p)
    }

    /// Whether some port has `src` as its remote (to tell "wrong key" from "stranger").
    pub fn knows_remote(&self, src: IpAddr) -> Option<P> {
        self.exact
            .iter()
            .find(|((r, _), _)| *r == src)
            .and_then(|(_, ps)| ps.first().map(|(_, p)| *p))
            .or_else(|| {
                self.fallbacks
                    .iter()
                    .find(|(m, _)| m.remote == Some(src))
                    .map(|(_, p)| *p)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_round_trip_and_refusals() {
        let h = vxlan_emit(5001);
        assert_eq!(vxlan_parse(&h), Ok(5001));
        assert_eq!(vxlan_emit(0xff_ffff)[4..7], [0xff, 0xff, 0xff]);
        assert_eq!(vxlan_parse(&h[..7]), Err(DecapError::Short));
        let mut no_i = h;
        no_i[0] = 0;
        assert_eq!(vxlan_parse(&no_i), Err(DecapError::NoVni));
    }

    #[test]
    fn gre_round_trip_with_options() {
        let payload = b"an ethernet frame, more or less";
        for (key, csum) in [
            (None, false),
            (Some(77), false),
            (Some(77), true),
            (None, true),
        ] {
            let mut out = [0u8; 16];
            let n = gre_emit(&mut out, key, csum, payload);
            let g = gre_parse(&out[..n]).unwrap();
            assert_eq!((g.key, g.len), (key.unwrap_or(0), n));
            if csum {
                let acc = crate::checksum::add(crate::checksum::add(0, &out[..n]), payload);
                assert_eq!(crate::checksum::fold(acc), 0xffff, "checksum verifies");
            }
        }
        // Not Ethernet, routing bits, version 1, truncated options: refused.
        assert_eq!(
            gre_parse(&[0, 0, 0x08, 0x00]),
            Err(DecapError::NotEthernet(0x0800))
        );
        assert_eq!(
            gre_parse(&[0x40, 0, 0x65, 0x58]),
            Err(DecapError::GreVersion)
        );
        assert_eq!(gre_parse(&[0, 1, 0x65, 0x58]), Err(DecapError::GreVersion));
        assert_eq!(gre_parse(&[0x20, 0, 0x65, 0x58, 0]), Err(DecapError::Short));
        for n in 0..16 {
            let mut out = [0u8; 16];
            let len = gre_emit(&mut out, Some(1), true, b"");
            let _ = gre_parse(&out[..n.min(len)]);
        }
    }

    #[test]
    fn ipv4_parse_never_trusts_lengths() {
        let mut h = [0u8; 20];
        ipv4_emit(
            &mut h,
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(192, 0, 2, 2),
            47,
            0,
            64,
        );
        assert_eq!(
            ipv4_parse(&h),
            Ok((Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2), 20))
        );
        h[0] = 0x4f; // IHL 60 > buffer
        assert_eq!(ipv4_parse(&h), Err(DecapError::BadIp));
        assert_eq!(ipv4_parse(&h[..10]), Err(DecapError::BadIp));
    }

    #[test]
    fn entropy_ports_are_stable_and_spread() {
        // An option-less IPv4 TCP frame.
        let mut a = [1u8; 60];
        a[12..14].copy_from_slice(&[0x08, 0x00]);
        a[14] = 0x45;
        a[20..22].fill(0);
        a[23] = 6;
        let mut b = a;
        b[37] = 2; // another destination port
        assert_eq!(entropy_port(&a), entropy_port(&a));
        assert_ne!(entropy_port(&a), entropy_port(&b));
        // What changes from packet to packet of one flow does not move it: total
        // length, ID, TTL, checksum, TCP sequence and flags.
        let mut c = a;
        for i in [16, 17, 18, 19, 22, 24, 25, 38, 41, 47] {
            c[i] ^= 0x5a;
        }
        assert_eq!(entropy_port(&a), entropy_port(&c));
        assert!(entropy_port(&a) >= 49152);
        assert!(entropy_port(&[]) >= 49152);
        assert!(entropy_port(&a[..20]) >= 49152);
    }

    #[test]
    fn demux_prefers_exact_matches() {
        let (r1, r2, me): (IpAddr, IpAddr, IpAddr) = (
            Ipv4Addr::new(192, 0, 2, 1).into(),
            "2001:db8::2".parse().unwrap(),
            Ipv4Addr::new(192, 0, 2, 9).into(),
        );
        let m = |remote, key| TunnelMatch {
            remote,
            key,
            local: None,
        };
        let mut d = TunnelDemux::new();
        d.insert(m(Some(r1), Some(5001)), "exact");
        d.insert(m(Some(r1), None), "remote+flowkey");
        d.insert(m(None, Some(5001)), "flowremote+key");
        d.insert(m(None, None), "flow+flow");
        assert_eq!(d.lookup(r1, me, 5001), Some("exact"));
        assert_eq!(d.lookup(r1, me, 7), Some("remote+flowkey"));
        assert_eq!(d.lookup(r2, me, 5001), Some("flowremote+key"));
        assert_eq!(d.lookup(r2, me, 7), Some("flow+flow"));

        let mut strict = TunnelDemux::new();
        strict.insert(m(Some(r1), Some(5001)), 1);
        assert_eq!(strict.lookup(r1, me, 5002), None, "unknown VNI");
        assert_eq!(strict.lookup(r2, me, 5001), None, "unknown remote");
        assert_eq!(strict.knows_remote(r1), Some(1));
        assert_eq!(strict.knows_remote(r2), None);
        let mut local = TunnelDemux::new();
        local.insert(
            TunnelMatch {
                remote: Some(r1),
                key: Some(1),
                local: Some(me),
            },
            1,
        );
        assert_eq!(
            local.lookup(r1, r2, 1),
            None,
            "sent to another local address"
        );
        assert_eq!(local.lookup(r1, me, 1), Some(1));
    }
}
