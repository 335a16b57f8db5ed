//! Tunnel sockets: VXLAN and GRE done in userspace over the host's IPv4 stack.
//!
//! - Receiving: VXLAN arrives on a UDP socket bound to its port (4789 by default);
//!   `IP_PKTINFO` tells which local address it was sent to. GRE arrives on a raw IP
//!   socket of protocol 47, which works without the kernel's GRE module (this
//!   machine has none). One socket serves every tunnel port of its kind, address and
//!   UDP port (a [`TunnelRx`]); the datapath picks the port per packet from the
//!   outer source and the key ([`ofproto::tunnel::TunnelDemux`]).
//! - Receiving is zero-copy: a packet is read into a slot at [`RX_AT`], and the slot
//!   is then made to start 10 bytes before the inner frame, where an empty virtio-net
//!   header is written — the datapath sees an ordinary slot.
//! - Sending over IPv4: one raw socket (`IPPROTO_RAW`, so `IP_HDRINCL`) for all
//!   tunnel ports; the datapath writes the outer IPv4 header (TOS, TTL,
//!   don't-fragment) and the UDP or GRE header, the kernel routes it and fills in
//!   length, ID, checksum and, when unspecified, the source address. Over IPv6 the
//!   kernel writes the IPv6 header: raw sockets of protocol UDP (with
//!   `IPV6_CHECKSUM`, as IPv6 requires UDP checksums) and GRE, with traffic class, hop
//!   limit and source given per send as ancillary data, and `IPV6_DONTFRAG`. Each
//!   message is two parts — outer headers and the inner frame — so the frame is not
//!   copied.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ofproto::tunnel::{self, DecapError};
use ofproto::vnet_hdr::VNET_HDR_LEN;

use super::{recv_batch, send_batch, sys, Dest, RxBatch, TxBatch, TxResult, BATCH, BUF_SIZE};

/// Where in a slot's buffer a tunnel packet is read: room for the virtio-net header
/// in front of the inner frame even after the shortest outer header (VXLAN's 8 bytes).
pub const RX_AT: usize = 16;
/// Tunnel sockets both receive and send bursts.
const BOTH_BUFFERS: &[(libc::c_int, libc::c_int)] = &[
    (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    Vxlan,
    Gre,
}

/// What the outer headers of one received packet said.
#[derive(Debug, Clone, Copy)]
pub struct RxMeta {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub key: u32,
    /// Why the packet cannot be decapsulated; its slot is then empty.
    pub err: Option<DecapError>,
}

impl Default for RxMeta {
    fn default() -> Self {
        RxMeta {
            src: Ipv4Addr::UNSPECIFIED.into(),
            dst: Ipv4Addr::UNSPECIFIED.into(),
            key: 0,
            err: None,
        }
    }
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn socket(family: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before wrapping.
    let fd = check(unsafe {
        libc::socket(family, ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, proto)
    })?;
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A socket address for `ip` and `port`, in the storage `sendmmsg` takes.
pub fn dest(ip: IpAddr, port: u16) -> Dest {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match ip {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sa = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = port.to_be();
            sa.sin_addr.s_addr = u32::from(a).to_be();
            mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sa = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = port.to_be();
            sa.sin6_addr.s6_addr = a.octets();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    Dest {
        addr: ss,
        len: len as libc::socklen_t,
    }
}

/// The address in a socket address the kernel filled in.
fn addr_of(ss: &libc::sockaddr_storage) -> IpAddr {
    match i32::from(ss.ss_family) {
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6, which fits the storage.
            let sa = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let a = Ipv6Addr::from(sa.sin6_addr.s6_addr);
            // An IPv4 sender seen through a dual-stack socket.
            a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)
        }
        _ => {
            // SAFETY: AF_INET (or unset, all zero): a sockaddr_in fits the storage.
            let sa = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)))
        }
    }
}

fn bind(fd: RawFd, d: &Dest) -> io::Result<()> {
    // SAFETY: d.addr is a valid socket address of length d.len.
    check(unsafe {
        libc::bind(
            fd,
            &d.addr as *const libc::sockaddr_storage as *const libc::sockaddr,
            d.len,
        )
    })
    .map(|_| ())
}

/// The receiving socket shared by the tunnel ports of one kind, IP version, local
/// address and (for VXLAN) UDP port.
pub struct TunnelRx {
    pub kind: TunnelKind,
    v6: bool,
    fd: OwnedFd,
}

/// An IPv6 socket that reports each packet's destination address (IPV6_PKTINFO):
/// the tunnel's `tun_dst`.
fn v6_with_pktinfo(ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    let fd = socket(libc::AF_INET6, ty, proto)?;
    sys::setsockopt(
        fd.as_raw_fd(),
        libc::IPPROTO_IPV6,
        libc::IPV6_RECVPKTINFO,
        &1i32,
    )?;
    Ok(fd)
}

impl TunnelRx {
    /// A UDP socket on `local:port` (any address of the version when `local` is `None`).
    pub fn vxlan(v6: bool, local: Option<IpAddr>, port: u16) -> io::Result<TunnelRx> {
        let fd = if v6 {
            let fd = v6_with_pktinfo(libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
            sys::setsockopt(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &1i32)?;
            fd
        } else {
            let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
            sys::setsockopt(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, &1i32)?;
            fd
        };
        sys::big_buffers(fd.as_raw_fd(), BOTH_BUFFERS);
        let any: IpAddr = if v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        bind(fd.as_raw_fd(), &dest(local.unwrap_or(any), port))?;
        Ok(TunnelRx {
            kind: TunnelKind::Vxlan,
            v6,
            fd,
        })
    }

    /// A raw socket of IP protocol 47 (GRE): it sees every GRE packet to this host.
    /// Over IPv4 it reads the IP header too; over IPv6 only what follows it.
    pub fn gre(v6: bool) -> io::Result<TunnelRx> {
        let fd = if v6 {
            v6_with_pktinfo(libc::SOCK_RAW, libc::IPPROTO_GRE)?
        } else {
            socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_GRE)?
        };
        sys::big_buffers(fd.as_raw_fd(), BOTH_BUFFERS);
        Ok(TunnelRx {
            kind: TunnelKind::Gre,
            v6,
            fd,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads up to [`BATCH`] packets into `rx`, each slot holding an empty virtio-net
    /// header and the inner frame, and what the outer headers said into `meta`. A
    /// packet that cannot be decapsulated leaves an empty slot and `meta[i].err`.
    pub fn recv(&self, rx: &mut RxBatch, meta: &mut [RxMeta; BATCH]) -> io::Result<usize> {
        recv_batch(self.fd.as_raw_fd(), rx, RX_AT, |rx, i, m, name| {
            let len = (m.msg_len as usize).min(BUF_SIZE - RX_AT);
            let truncated = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let base = i * BUF_SIZE + RX_AT;
            let pkt = &rx.storage[base..base + len];
            let src = addr_of(name);
            let dst = pktinfo_dst(&m.msg_hdr);
            // (source, destination, key, where the inner frame starts)
            let decap = match (self.kind, self.v6) {
                (TunnelKind::Vxlan, _) => {
                    tunnel::vxlan_parse(pkt).map(|vni| (src, dst, vni, tunnel::VXLAN_HDR_LEN))
                }
                (TunnelKind::Gre, false) => tunnel::ipv4_parse(pkt).and_then(|(s, d, ihl)| {
                    let g = tunnel::gre_parse(&pkt[ihl..])?;
                    Ok((s.into(), d.into(), g.key, ihl + g.len))
                }),
                (TunnelKind::Gre, true) => tunnel::gre_parse(pkt).map(|g| (src, dst, g.key, g.len)),
            };
            match decap {
                Ok((src, dst, key, inner)) => {
                    meta[i] = RxMeta {
                        src,
                        dst,
                        key,
                        err: None,
                    };
                    // The slot starts an empty virtio-net header before the inner frame.
                    let start = RX_AT + inner - VNET_HDR_LEN;
                    rx.storage[i * BUF_SIZE + start..i * BUF_SIZE + start + VNET_HDR_LEN].fill(0);
                    rx.set_stored(i, start, len - inner + VNET_HDR_LEN);
                }
                Err(e) => {
                    let src = match (self.kind, self.v6) {
                        (TunnelKind::Gre, false) => tunnel::ipv4_parse(pkt)
                            .map_or(Ipv4Addr::UNSPECIFIED.into(), |(s, _, _)| s.into()),
                        _ => src,
                    };
                    meta[i] = RxMeta {
                        src,
                        dst,
                        key: 0,
                        err: Some(e),
                    };
                    rx.set_stored(i, RX_AT, 0);
                }
            }
            rx.truncated[i] = truncated;
        })
    }
}

/// The destination address from an `IP_PKTINFO` or `IPV6_PKTINFO` control message.
fn pktinfo_dst(m: &libc::msghdr) -> IpAddr {
    // SAFETY: the kernel filled msg_control/msg_controllen; CMSG_* walk within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(m);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in_pktinfo);
                return Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)).into();
            }
            if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in6_pktinfo);
                return Ipv6Addr::from(info.ipi6_addr.s6_addr).into();
            }
            c = libc::CMSG_NXTHDR(m, c);
        }
    }
    Ipv4Addr::UNSPECIFIED.into()
}

/// A classic BPF program that accepts nothing: the IPv6 send sockets are raw
/// sockets of protocols the host receives (UDP, GRE), and must not queue copies.
fn drop_everything(fd: RawFd) -> io::Result<()> {
    let mut code = [libc::sock_filter {
        code: 0x06, // BPF_RET | BPF_K
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: prog points at one valid instruction for the duration of the call.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog as *const libc::sock_fprog as *const libc::c_void,
            mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// The raw sockets every tunnel port sends through.
pub struct TunnelTx {
    v4: OwnedFd,
    udp6: OwnedFd,
    gre6: OwnedFd,
}

impl TunnelTx {
    pub fn open() -> io::Result<TunnelTx> {
        // IPPROTO_RAW implies IP_HDRINCL and never receives.
        let v4 = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
        sys::big_buffers(v4.as_raw_fd(), BOTH_BUFFERS);
        let udp6 = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_UDP)?;
        // The kernel computes the UDP checksum at offset 6 (IPv6 requires one).
        sys::setsockopt(
            udp6.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_CHECKSUM,
            &6i32,
        )?;
        let gre6 = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_GRE)?;
        for fd in [&udp6, &gre6] {
            sys::big_buffers(fd.as_raw_fd(), BOTH_BUFFERS);
            drop_everything(fd.as_raw_fd())?;
            // Too big for the path: refused (EMSGSIZE), never fragmented.
            sys::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_DONTFRAG,
                &1i32,
            )?;
        }
        Ok(TunnelTx { v4, udp6, gre6 })
    }

    /// Sends frame `i` of `tx` (outer headers of `outer_len` bytes, then the inner
    /// frame) to `dests[i]`. Over IPv6, `v6` gives the traffic class, hop limit and
    /// source address (unspecified: the kernel picks). `bytes` counts the inner
    /// frames only; a frame too big for the underlay's MTU is refused by the kernel
    /// and counted in `errors`.
    pub fn send(
        &self,
        kind: TunnelKind,
        v6: Option<(u8, u8, Ipv6Addr)>,
        tx: &TxBatch<'_>,
        dests: &[Dest],
        outer_len: usize,
    ) -> TxResult {
        let mut r = match v6 {
            None => send_batch(self.v4.as_raw_fd(), tx, Some(dests), None),
            Some((tclass, hops, src)) => {
                let ctrl = V6Control::new(tclass, hops, src);
                let fd = match kind {
                    TunnelKind::Vxlan => &self.udp6,
                    TunnelKind::Gre => &self.gre6,
                };
                send_batch(fd.as_raw_fd(), tx, Some(dests), Some(ctrl.bytes()))
            }
        };
        r.bytes = r.bytes.saturating_sub(r.sent * outer_len as u64);
        r
    }
}

/// Ancillary data for an IPv6 send: traffic class, hop limit, source address.
struct V6Control {
    buf: [u64; 16],
    len: usize,
}

impl V6Control {
    fn new(tclass: u8, hops: u8, src: Ipv6Addr) -> V6Control {
        let mut c = V6Control {
            buf: [0; 16],
            len: 0,
        };
        // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic; the writes below stay within
        // `buf` (3 messages of at most 40 bytes each, 128 bytes available), walking it
        // with a msghdr that describes exactly that buffer.
        unsafe {
            let sizes = [
                libc::CMSG_SPACE(mem::size_of::<libc::c_int>() as u32),
                libc::CMSG_SPACE(mem::size_of::<libc::c_int>() as u32),
                libc::CMSG_SPACE(mem::size_of::<libc::in6_pktinfo>() as u32),
            ];
            let total: u32 = sizes.iter().sum();
            let mut m: libc::msghdr = mem::zeroed();
            m.msg_control = c.buf.as_mut_ptr() as *mut libc::c_void;
            m.msg_controllen = total as usize;
            let mut h = libc::CMSG_FIRSTHDR(&m);
            for (ty, val) in [
                (libc::IPV6_TCLASS, i32::from(tclass)),
                (libc::IPV6_HOPLIMIT, i32::from(hops)),
            ] {
                (*h).cmsg_level = libc::IPPROTO_IPV6;
                (*h).cmsg_type = ty;
                (*h).cmsg_len = libc::CMSG_LEN(mem::size_of::<libc::c_int>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(h) as *mut libc::c_int, val);
                h = libc::CMSG_NXTHDR(&m, h);
            }
            (*h).cmsg_level = libc::IPPROTO_IPV6;
            (*h).cmsg_type = libc::IPV6_PKTINFO;
            (*h).cmsg_len = libc::CMSG_LEN(mem::size_of::<libc::in6_pktinfo>() as u32) as usize;
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: src.octets(),
                },
                ipi6_ifindex: 0,
            };
            std::ptr::write_unaligned(libc::CMSG_DATA(h) as *mut libc::in6_pktinfo, info);
            c.len = total as usize;
        }
        c
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: viewing initialized u64s as bytes.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr() as *const u8, self.len) }
    }
}
