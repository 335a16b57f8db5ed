//! The options of a `vxlan` or `gre` interface, checked once and typed.
//!
//! Names and meanings follow ovs-vswitchd.conf.db(5): `remote_ip` (an address or
//! `flow`), `local_ip`, `key` (a number or `flow`), `dst_port` (VXLAN, default
//! 4789), `tos`, `ttl` (default 64) and `csum` (GRE). Unlike Open vSwitch, an unknown
//! or malformed option is refused when it is set, naming the option, instead of being
//! logged and ignored: a typo in `remote_ip` should not become a silent black hole.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ofproto::tunnel::{TunnelMatch, VXLAN_DEFAULT_PORT};

use crate::netdev::tunnel::TunnelKind;

/// A receive socket's identity: ports with equal endpoints share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub kind: TunnelKind,
    pub v6: bool,
    pub local: Option<IpAddr>,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelConfig {
    pub kind: TunnelKind,
    /// `None`: `remote_ip=flow` (the destination comes from the flow's `tun_dst`).
    pub remote: Option<IpAddr>,
    /// `None`: `key=flow` (the key comes from the flow's `tun_id`).
    pub key: Option<u32>,
    pub local: Option<IpAddr>,
    pub dst_port: u16,
    pub tos: u8,
    pub ttl: u8,
    /// GRE: add a checksum.
    pub csum: bool,
}

/// The options a tunnel interface understands.
pub const KNOWN_OPTIONS: &[&str] = &[
    "remote_ip",
    "local_ip",
    "key",
    "dst_port",
    "tos",
    "ttl",
    "csum",
];

/// `Err((option, reason))` names the option that is wrong.
pub type OptionError = (String, String);

fn num<T: TryFrom<u64>>(opt: &str, v: &str, max: u64) -> Result<T, OptionError> {
    let n = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    };
    n.filter(|n| *n <= max)
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| {
            (
                opt.to_string(),
                format!("\"{v}\" is not a number up to {max}"),
            )
        })
}

fn ip(opt: &str, v: &str) -> Result<IpAddr, OptionError> {
    v.parse::<IpAddr>()
        .map_err(|_| (opt.to_string(), format!("\"{v}\" is not an IP address")))
}

impl TunnelConfig {
    pub fn parse(kind: TunnelKind, o: &BTreeMap<String, String>) -> Result<Self, OptionError> {
        if let Some(k) = o
            .keys()
            .find(|k| !KNOWN_OPTIONS.contains(&k.as_str()) && k.as_str() != "offload")
        {
            return Err((
                k.clone(),
                format!(
                    "unknown tunnel option (known: {})",
                    KNOWN_OPTIONS.join(", ")
                ),
            ));
        }
        let remote = match o.get("remote_ip").map(String::as_str) {
            None => {
                return Err((
                    "remote_ip".into(),
                    "a tunnel needs remote_ip (an address, or flow)".into(),
                ))
            }
            Some("flow") => None,
            Some(v) => Some(ip("remote_ip", v)?),
        };
        let key_max = match kind {
            TunnelKind::Vxlan => (1 << 24) - 1,
            TunnelKind::Gre => u64::from(u32::MAX),
        };
        let key = match o.get("key").map(String::as_str) {
            None => Some(0),
            Some("flow") => None,
            Some(v) => Some(num("key", v, key_max)?),
        };
        let csum = match o.get("csum").map(String::as_str) {
            None | Some("false") => false,
            Some("true") if kind == TunnelKind::Gre => true,
            Some("true") => {
                return Err((
                    "csum".into(),
                    "only GRE checksums are supported (VXLAN over IPv4 sends none)".into(),
                ))
            }
            Some(v) => return Err(("csum".into(), format!("\"{v}\" is not true or false"))),
        };
        let dst_port = match (kind, o.get("dst_port")) {
            (TunnelKind::Vxlan, Some(v)) => num("dst_port", v, 65535)?,
            (TunnelKind::Vxlan, None) => VXLAN_DEFAULT_PORT,
            (TunnelKind::Gre, Some(_)) => {
                return Err(("dst_port".into(), "GRE has no ports".into()))
            }
            (TunnelKind::Gre, None) => 0,
        };
        let local = o.get("local_ip").map(|v| ip("local_ip", v)).transpose()?;
        // One family per port: the underlay is IPv4 or IPv6.
        if let (Some(r), Some(l)) = (remote, local) {
            if r.is_ipv4() != l.is_ipv4() {
                return Err((
                    "local_ip".into(),
                    format!("{l} and remote_ip {r} are not the same IP version"),
                ));
            }
        }
        if remote.is_none() && local.is_some_and(|l| l.is_ipv6()) {
            return Err((
                "remote_ip".into(),
                "remote_ip=flow steers IPv4 destinations (tun_dst) only".into(),
            ));
        }
        Ok(TunnelConfig {
            kind,
            remote,
            key,
            local,
            dst_port,
            tos: o.get("tos").map_or(Ok(0), |v| num("tos", v, 255))?,
            ttl: o.get("ttl").map_or(Ok(64), |v| num("ttl", v, 255))?,
            csum,
        })
    }

    /// Which received packets are this port's.
    pub fn matcher(&self) -> TunnelMatch {
        TunnelMatch {
            remote: self.remote,
            key: self.key,
            local: self.local,
        }
    }

    /// `local_ip` as the source of IPv4 packets; unspecified (the kernel picks by
    /// route) when unset or IPv6.
    pub fn local_v4(&self) -> Ipv4Addr {
        match self.local {
            Some(IpAddr::V4(a)) => a,
            _ => Ipv4Addr::UNSPECIFIED,
        }
    }

    /// `local_ip` as the source of IPv6 packets; unspecified when unset or IPv4.
    pub fn local_v6(&self) -> Ipv6Addr {
        match self.local {
            Some(IpAddr::V6(a)) => a,
            _ => Ipv6Addr::UNSPECIFIED,
        }
    }

    /// Whether the underlay is IPv6.
    pub fn v6(&self) -> bool {
        self.remote.or(self.local).is_some_and(|a| a.is_ipv6())
    }

    /// The receive socket this port shares with others like it: GRE has one raw
    /// socket per IP version; VXLAN one UDP socket per local address and port.
    pub fn endpoint(&self) -> Endpoint {
        let (local, port) = match self.kind {
            TunnelKind::Gre => (None, 0),
            TunnelKind::Vxlan => (self.local, self.dst_port),
        };
        Endpoint {
            kind: self.kind,
            v6: self.v6(),
            local,
            port,
        }
    }

    /// Bytes of outer headers this port writes in front of each frame (over IPv6,
    /// the kernel writes the IPv6 header).
    pub fn outer_len(&self) -> usize {
        use ofproto::tunnel::{IPV4_HDR_LEN, UDP_HDR_LEN, VXLAN_HDR_LEN};
        let ip = if self.v6() { 0 } else { IPV4_HDR_LEN };
        ip + match self.kind {
            TunnelKind::Vxlan => UDP_HDR_LEN + VXLAN_HDR_LEN,
            TunnelKind::Gre => {
                4 + if self.has_gre_key() { 4 } else { 0 } + if self.csum { 4 } else { 0 }
            }
        }
    }

    /// Writes the outer headers (`outer_len()` bytes) for `inner` to go to `dst`
    /// with key `key`: over IPv4 the IPv4 header (from `local_ip`, or whatever the
    /// kernel picks), then UDP (from `sport`, picked by the inner flow) and VXLAN, or
    /// GRE. Over IPv6 the kernel writes the IPv6 header and the UDP checksum.
    pub fn write_outer(&self, out: &mut [u8], key: u32, dst: IpAddr, inner: &[u8], sport: u16) {
        use ofproto::tunnel::*;
        let rest = match dst {
            IpAddr::V4(dst) => {
                let src = self.local_v4();
                let (ip, rest) = out.split_at_mut(IPV4_HDR_LEN);
                let proto = match self.kind {
                    TunnelKind::Vxlan => libc::IPPROTO_UDP,
                    TunnelKind::Gre => libc::IPPROTO_GRE,
                } as u8;
                ipv4_emit(ip, src, dst, proto, self.tos, self.ttl);
                rest
            }
            IpAddr::V6(_) => out,
        };
        match self.kind {
            TunnelKind::Vxlan => {
                let (udp, vx) = rest.split_at_mut(UDP_HDR_LEN);
                udp_emit(udp, sport, self.dst_port, VXLAN_HDR_LEN + inner.len());
                vx[..VXLAN_HDR_LEN].copy_from_slice(&vxlan_emit(key));
            }
            TunnelKind::Gre => {
                gre_emit(rest, self.has_gre_key().then_some(key), self.csum, inner);
            }
        }
    }

    /// GRE carries a key field unless the key is 0 (as in Open vSwitch).
    pub fn has_gre_key(&self) -> bool {
        self.key != Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_refuses_with_the_option_named() {
        let c = TunnelConfig::parse(
            TunnelKind::Vxlan,
            &opts(&[("remote_ip", "192.0.2.2"), ("key", "5001")]),
        )
        .unwrap();
        assert_eq!(
            (c.remote, c.key, c.dst_port, c.ttl),
            (
                Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))),
                Some(5001),
                4789,
                64
            )
        );
        assert_eq!(c.outer_len(), 36);
        let f = TunnelConfig::parse(
            TunnelKind::Vxlan,
            &opts(&[("remote_ip", "flow"), ("key", "flow")]),
        )
        .unwrap();
        assert_eq!((f.remote, f.key), (None, None));
        let g = TunnelConfig::parse(TunnelKind::Gre, &opts(&[("remote_ip", "192.0.2.3")])).unwrap();
        assert_eq!((g.key, g.outer_len()), (Some(0), 24));
        let bad =
            |k: TunnelKind, kv: &[(&str, &str)]| TunnelConfig::parse(k, &opts(kv)).unwrap_err();
        assert_eq!(bad(TunnelKind::Vxlan, &[]).0, "remote_ip");
        assert_eq!(
            bad(TunnelKind::Vxlan, &[("remote_ip", "192.0.2.300")]).0,
            "remote_ip"
        );
        let v6 =
            TunnelConfig::parse(TunnelKind::Vxlan, &opts(&[("remote_ip", "2001:db8::1")])).unwrap();
        assert!(v6.v6() && v6.outer_len() == 16);
        assert_eq!(
            bad(
                TunnelKind::Vxlan,
                &[("remote_ip", "2001:db8::1"), ("local_ip", "192.0.2.1")]
            )
            .0,
            "local_ip"
        );
        assert_eq!(
            bad(
                TunnelKind::Vxlan,
                &[("remote_ip", "192.0.2.2"), ("key", "16777216")]
            )
            .0,
            "key"
        );
        assert_eq!(
            bad(
                TunnelKind::Gre,
                &[("remote_ip", "192.0.2.2"), ("dst_port", "1")]
            )
            .0,
            "dst_port"
        );
        assert_eq!(
            bad(
                TunnelKind::Vxlan,
                &[("remote_ip", "192.0.2.2"), ("remote_pi", "1")]
            )
            .0,
            "remote_pi"
        );
        assert_eq!(
            bad(
                TunnelKind::Vxlan,
                &[("remote_ip", "192.0.2.2"), ("csum", "true")]
            )
            .0,
            "csum"
        );
    }
}
