//! The options of a `vxlan` or `gre` interface, checked once and typed.
//!
//! Names and meanings follow ovs-vswitchd.conf.db(5): `remote_ip` (an address or
//! `flow`), `local_ip`, `key` (a number or `flow`), `dst_port` (VXLAN, default
//! 4789), `tos`, `ttl` (default 64) and `csum` (GRE). Unlike Open vSwitch, an unknown
//! or malformed option is refused when it is set, naming the option, instead of being
//! logged and ignored: a typo in `remote_ip` should not become a silent black hole.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ofproto::tunnel::{TunnelMatch, VXLAN_DEFAULT_PORT};

use crate::netdev::tunnel::TunnelKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelConfig {
    pub kind: TunnelKind,
    /// `None`: `remote_ip=flow` (the destination comes from the flow's `tun_dst`).
    pub remote: Option<Ipv4Addr>,
    /// `None`: `key=flow` (the key comes from the flow's `tun_id`).
    pub key: Option<u32>,
    pub local: Option<Ipv4Addr>,
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

fn ipv4(opt: &str, v: &str) -> Result<Ipv4Addr, OptionError> {
    match v.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok(a),
        Ok(IpAddr::V6(_)) => Err((
            opt.to_string(),
            "IPv6 underlays are not supported yet".to_string(),
        )),
        Err(_) => Err((opt.to_string(), format!("\"{v}\" is not an IP address"))),
    }
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
            Some(v) => Some(ipv4("remote_ip", v)?),
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
        Ok(TunnelConfig {
            kind,
            remote,
            key,
            local: o.get("local_ip").map(|v| ipv4("local_ip", v)).transpose()?,
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

    /// The receive socket this port shares with others like it: GRE has one raw
    /// socket for everything; VXLAN one UDP socket per local address and port.
    pub fn endpoint(&self) -> (TunnelKind, Option<Ipv4Addr>, u16) {
        match self.kind {
            TunnelKind::Gre => (TunnelKind::Gre, None, 0),
            TunnelKind::Vxlan => (TunnelKind::Vxlan, self.local, self.dst_port),
        }
    }

    /// Bytes of outer headers this port puts in front of each frame.
    pub fn outer_len(&self) -> usize {
        use ofproto::tunnel::{IPV4_HDR_LEN, UDP_HDR_LEN, VXLAN_HDR_LEN};
        match self.kind {
            TunnelKind::Vxlan => IPV4_HDR_LEN + UDP_HDR_LEN + VXLAN_HDR_LEN,
            TunnelKind::Gre => {
                IPV4_HDR_LEN
                    + 4
                    + if self.has_gre_key() { 4 } else { 0 }
                    + if self.csum { 4 } else { 0 }
            }
        }
    }

    /// Writes the outer headers (`outer_len()` bytes) for `inner` to go to `dst`
    /// with key `key`: IPv4 (from `local_ip`, or whatever the kernel picks), then
    /// UDP (source port from the inner flow) and VXLAN, or GRE.
    pub fn write_outer(&self, out: &mut [u8], key: u32, dst: Ipv4Addr, inner: &[u8]) {
        use ofproto::tunnel::*;
        let src = self.local.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let (ip, rest) = out.split_at_mut(IPV4_HDR_LEN);
        match self.kind {
            TunnelKind::Vxlan => {
                ipv4_emit(ip, src, dst, libc::IPPROTO_UDP as u8, self.tos, self.ttl);
                let (udp, vx) = rest.split_at_mut(UDP_HDR_LEN);
                udp_emit(
                    udp,
                    entropy_port(inner),
                    self.dst_port,
                    VXLAN_HDR_LEN + inner.len(),
                );
                vx[..VXLAN_HDR_LEN].copy_from_slice(&vxlan_emit(key));
            }
            TunnelKind::Gre => {
                ipv4_emit(ip, src, dst, libc::IPPROTO_GRE as u8, self.tos, self.ttl);
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
            (Some(Ipv4Addr::new(192, 0, 2, 2)), Some(5001), 4789, 64)
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
        assert!(bad(TunnelKind::Vxlan, &[("remote_ip", "2001:db8::1")])
            .1
            .contains("IPv6"));
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
