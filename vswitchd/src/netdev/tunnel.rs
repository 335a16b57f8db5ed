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
//! - VXLAN sockets ask for `UDP_GRO`: a burst of same-sized datagrams from one
//!   sender (a peer's UDP GSO send of one super-frame, or the NIC's GRO) arrives as
//!   one buffer. Consecutive segments of one TCP stream are merged in place into one
//!   super-frame ([`ofproto::gro`]); anything else is delivered segment by segment,
//!   in order, what does not fit the batch carried over to the next receive.
//! - Sending over IPv4: one raw socket (`IPPROTO_RAW`, so `IP_HDRINCL`) for all
//!   tunnel ports; the datapath writes the outer IPv4 header (TOS, TTL,
//!   don't-fragment) and the UDP or GRE header, the kernel routes it and fills in
//!   length, ID, checksum and, when unspecified, the source address. Over IPv6 the
//!   kernel writes the IPv6 header: raw sockets of protocol UDP (with
//!   `IPV6_CHECKSUM`, as IPv6 requires UDP checksums) and GRE, with traffic class, hop
//!   limit and source given per send as ancillary data, and `IPV6_DONTFRAG`. Each
//!   message is two parts — outer headers and the inner frame — so the frame is not
//!   copied.
//! - VXLAN (over IPv4 and IPv6) sends a segmented super-frame with one `sendmsg` of
//!   UDP GSO (`UDP_SEGMENT`): one route lookup, one skb and one pass through the IP
//!   stack per super-frame instead of per segment; a peer with `UDP_GRO` receives it
//!   as one buffer. A UDP socket sends from the port it is bound to, so these go
//!   through a pool of [`POOL_SIZE`] sockets per IP version bound to ports of the
//!   dynamic range, and every VXLAN packet's source port (raw or GSO) is picked from
//!   its version's pool by the inner flow's hash: one flow, one port, whichever way
//!   it leaves. They send with UDP checksums, which GSO requires (the raw IPv4 path
//!   sends none, as RFC 7348 allows). GRE has no GSO for raw sockets: it goes
//!   segment by segment, batched with `sendmmsg`.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use ofproto::gro;
use ofproto::tunnel::{self, DecapError};
use ofproto::vnet_hdr::VNET_HDR_LEN;

use super::{
    is_congestion, recv_batch, send_batch, sys, Dest, RxBatch, TxBatch, TxResult, BATCH, BUF_SIZE,
};

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
    /// Datagrams read but not yet delivered (see [`Carry`]).
    carry: Mutex<Carry>,
}

/// Datagrams already read from the socket that did not fit the batch: the rest of
/// a coalesced datagram delivered segment by segment, and whatever the same
/// `recvmmsg` read after it (kept so that nothing overtakes it). Empty in steady
/// state; its buffers are kept for reuse.
struct Carry {
    buf: Vec<u8>,
    items: VecDeque<Carried>,
}

/// What is left of a coalesced datagram after its first frame: from byte `at`, to be
/// tried for a merge again or (`split`) delivered segment by segment.
struct Rest {
    at: usize,
    split: bool,
}

/// Where a received datagram came from and went to, and how it was coalesced.
#[derive(Clone, Copy)]
struct Arrival {
    src: IpAddr,
    dst: IpAddr,
    /// Segment size of a coalesced datagram; 0 for a single datagram.
    gso: usize,
}

struct Carried {
    arrival: Arrival,
    /// Its bytes in the carry's buffer.
    start: usize,
    len: usize,
    /// Known not to merge: delivered one segment at a time.
    split: bool,
}

impl Carry {
    /// A carry with room for what one receive call can leave over (its whole batch),
    /// reserved up front so that the receive path never allocates; the memory
    /// becomes resident only as it is first used.
    fn new() -> Carry {
        Carry {
            buf: Vec::with_capacity(BATCH * BUF_SIZE),
            items: VecDeque::with_capacity(BATCH),
        }
    }

    fn push(&mut self, arrival: Arrival, bytes: &[u8], split: bool) {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.items.push_back(Carried {
            arrival,
            start,
            len: bytes.len(),
            split,
        });
    }
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
        // Coalesced bursts (see the module's comment); an old kernel without it
        // delivers datagram by datagram, which is merely slower.
        let _ = sys::setsockopt(fd.as_raw_fd(), libc::IPPROTO_UDP, sys::UDP_GRO, &1i32);
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
            carry: Mutex::new(Carry::new()),
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
            carry: Mutex::new(Carry::new()),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether datagrams already read wait to be delivered: the caller must call
    /// [`TunnelRx::recv`] again before sleeping, since epoll cannot see them.
    pub fn has_carry(&self) -> bool {
        !self.carry.lock().unwrap().items.is_empty()
    }

    /// Reads up to [`BATCH`] packets into `rx`, each slot holding a virtio-net header
    /// and the inner frame, and what the outer headers said into `meta`. A packet
    /// that cannot be decapsulated leaves an empty slot and `meta[i].err`.
    pub fn recv(&self, rx: &mut RxBatch, meta: &mut [RxMeta; BATCH]) -> io::Result<usize> {
        let mut carry = self.carry.lock().unwrap();
        if !carry.items.is_empty() {
            return Ok(self.drain(&mut carry, rx, meta));
        }
        // The slot after which the batch was cut: a coalesced datagram that did not
        // merge; its other segments and the datagrams after it wait in `carry`.
        let mut cut = None;
        let n = recv_batch(self.fd.as_raw_fd(), rx, RX_AT, |rx, i, m, name| {
            let len = (m.msg_len as usize).min(BUF_SIZE - RX_AT);
            let truncated = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let arrival = Arrival {
                src: addr_of(name),
                dst: pktinfo_dst(&m.msg_hdr),
                gso: gro_size(&m.msg_hdr),
            };
            let base = i * BUF_SIZE + RX_AT;
            if cut.is_some() {
                carry.push(arrival, &rx.storage[base..base + len], false);
                rx.set_stored(i, RX_AT, 0);
                return;
            }
            if let Some(rest) = self.settle(rx, i, len, arrival, &mut meta[i]) {
                carry.push(arrival, &rx.storage[base + rest.at..base + len], rest.split);
                cut = Some(i);
            }
            rx.truncated[i] = truncated;
        })?;
        Ok(match cut {
            Some(i) => {
                rx.count = i + 1;
                i + 1
            }
            None => n,
        })
    }

    /// Fills `rx` from `carry`, one slot per segment or merged datagram.
    fn drain(&self, carry: &mut Carry, rx: &mut RxBatch, meta: &mut [RxMeta; BATCH]) -> usize {
        let mut filled = 0;
        while filled < BATCH {
            let Some(it) = carry.items.front_mut() else {
                break;
            };
            // A datagram not yet tried whole (it may merge); else its next segment.
            let (take, gso) = if it.split {
                (it.len.min(it.arrival.gso), 0)
            } else {
                (it.len, it.arrival.gso)
            };
            let base = filled * BUF_SIZE + RX_AT;
            rx.storage[base..base + take].copy_from_slice(&carry.buf[it.start..it.start + take]);
            let arrival = Arrival { gso, ..it.arrival };
            let done = match self.settle(rx, filled, take, arrival, &mut meta[filled]) {
                Some(rest) => {
                    it.split = rest.split;
                    rest.at
                }
                None => take,
            };
            it.start += done;
            it.len -= done;
            if it.len == 0 {
                carry.items.pop_front();
            }
            filled += 1;
        }
        if carry.items.is_empty() {
            carry.buf.clear();
        }
        rx.count = filled;
        filled
    }

    /// Decapsulates the `len`-byte packet read into slot `i` at [`RX_AT`]. A
    /// coalesced VXLAN datagram becomes one merged frame from as many of its first
    /// segments as merge; when none do, the slot takes its first segment. What is
    /// left of the datagram is returned, for the caller to carry.
    fn settle(
        &self,
        rx: &mut RxBatch,
        i: usize,
        len: usize,
        arrival: Arrival,
        meta: &mut RxMeta,
    ) -> Option<Rest> {
        let Arrival { src, dst, gso } = arrival;
        let mut len = len;
        let mut rest = None;
        if self.kind == TunnelKind::Vxlan && gso > 0 && len > gso {
            let slot = &mut rx.storage[i * BUF_SIZE..(i + 1) * BUF_SIZE];
            if let Ok(vni) = tunnel::vxlan_parse(&slot[RX_AT..RX_AT + len]) {
                if let Ok(r) = gro::merge_tcp(slot, RX_AT, len, gso, tunnel::VXLAN_HDR_LEN) {
                    *meta = RxMeta {
                        src,
                        dst,
                        key: vni,
                        err: None,
                    };
                    rx.set_stored(i, r.frame.start, r.frame.len());
                    // The rest starts a new run (after a PSH, a gap): try it again.
                    return (r.used < len).then_some(Rest {
                        at: r.used,
                        split: false,
                    });
                }
            }
            // The first segment goes alone. If it ended its stream's run (the PSH
            // of a burst coalesced across two super-frames) and the second does
            // not, the rest may merge; else it goes segment by segment (anything
            // not TCP, or a run of PSH segments, which retrying would copy over and
            // over).
            let inner = |k: usize| {
                let s = RX_AT + k * gso + tunnel::VXLAN_HDR_LEN;
                &slot[s.min(RX_AT + len)..(RX_AT + (k + 1) * gso).min(RX_AT + len)]
            };
            let retry = gro::ends_merge(inner(0)) && !gro::ends_merge(inner(1));
            rest = Some(Rest {
                at: gso,
                split: !retry,
            });
            len = gso;
        }
        let base = i * BUF_SIZE + RX_AT;
        let pkt = &rx.storage[base..base + len];
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
                *meta = RxMeta {
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
                *meta = RxMeta {
                    src,
                    dst,
                    key: 0,
                    err: Some(e),
                };
                rx.set_stored(i, RX_AT, 0);
            }
        }
        rest
    }
}

/// The data of the first control message of `level` and `ty` in a received
/// message, read as a `T`.
fn cmsg<T>(m: &libc::msghdr, level: libc::c_int, ty: libc::c_int) -> Option<T> {
    // SAFETY: the kernel filled msg_control/msg_controllen; CMSG_* walk within it,
    // and a message of this level and type carries at least a T.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(m);
        while !c.is_null() {
            if (*c).cmsg_level == level && (*c).cmsg_type == ty {
                return Some(std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const T));
            }
            c = libc::CMSG_NXTHDR(m, c);
        }
    }
    None
}

/// The segment size of a coalesced datagram, from its `UDP_GRO` control message;
/// 0 for a single datagram.
fn gro_size(m: &libc::msghdr) -> usize {
    cmsg::<libc::c_int>(m, libc::IPPROTO_UDP, sys::UDP_GRO)
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(0)
}

/// The destination address from an `IP_PKTINFO` or `IPV6_PKTINFO` control message.
fn pktinfo_dst(m: &libc::msghdr) -> IpAddr {
    if let Some(i) = cmsg::<libc::in_pktinfo>(m, libc::IPPROTO_IP, libc::IP_PKTINFO) {
        return Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr)).into();
    }
    if let Some(i) = cmsg::<libc::in6_pktinfo>(m, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) {
        return Ipv6Addr::from(i.ipi6_addr.s6_addr).into();
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

/// UDP sockets in each pool (one per IP version) VXLAN sends super-frames through
/// (and takes its source ports from).
pub const POOL_SIZE: usize = 32;
/// Segments one UDP GSO send may carry (the kernel's `UDP_MAX_SEGMENTS` has been
/// 64 since Linux 5.0, 128 since 6.9).
const GSO_MAX_SEGMENTS: usize = 64;
/// The most UDP payload one send may carry: an IPv4 packet's 65535 bytes less the
/// IPv4 and UDP headers (IPv6's limit, 65535 bytes after its header, is looser).
const GSO_MAX_PAYLOAD: usize = 65_535 - 20 - 8;

/// The raw sockets every tunnel port sends through, and the pools of UDP sockets
/// VXLAN uses for UDP GSO, one per IP version (each opened on its first use, so a
/// host without VXLAN ports over that version holds no UDP ports for it).
pub struct TunnelTx {
    v4: OwnedFd,
    udp6: OwnedFd,
    gre6: OwnedFd,
    /// Indexed by `v6 as usize`.
    pools: [OnceLock<Vec<(u16, OwnedFd)>>; 2],
}

/// The sending half of a pool socket: it must not fragment (segments are sized by
/// the device's MTU, as raw sends are) and never queues what it might receive.
fn pool_setup(fd: RawFd, v6: bool) -> io::Result<()> {
    drop_everything(fd)?;
    if v6 {
        sys::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &1i32)?;
        sys::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, &1i32)
    } else {
        sys::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            &libc::IP_PMTUDISC_PROBE,
        )
    }
}

/// Opens up to `want` UDP sockets of one IP version for sending, bound to distinct
/// free ports of the dynamic range (49152–65535) from a varying start, each refusing
/// everything it might receive. Ports someone else holds are skipped, never shared.
fn open_pool(v6: bool, want: usize) -> Vec<(u16, OwnedFd)> {
    let mut pool = Vec::with_capacity(want);
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    for k in 0..0x4000u32 {
        if pool.len() == want {
            break;
        }
        let port = 49152 | ((seed.wrapping_add(k.wrapping_mul(97))) & 0x3fff) as u16;
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        let Ok(fd) = socket(family, libc::SOCK_DGRAM, libc::IPPROTO_UDP) else {
            break;
        };
        let raw = fd.as_raw_fd();
        if pool_setup(raw, v6).is_err() {
            break;
        }
        let any: IpAddr = if v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        if bind(raw, &dest(any, port)).is_ok() {
            sys::big_buffers(raw, &[(libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)]);
            pool.push((port, fd));
        }
    }
    pool
}

/// What one UDP GSO send of a segmented super-frame needs besides its segments.
pub struct GsoSend<'a> {
    pub dst: &'a Dest,
    pub tos: u8,
    pub ttl: u8,
    /// The source address, of the underlay's IP version; unspecified: the kernel
    /// picks by route.
    pub src: IpAddr,
    /// The VXLAN header every segment goes behind.
    pub vxlan: &'a [u8; tunnel::VXLAN_HDR_LEN],
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
        Ok(TunnelTx {
            v4,
            udp6,
            gre6,
            pools: [OnceLock::new(), OnceLock::new()],
        })
    }

    /// The pool socket (and its port) the flow of `inner` sends from over IPv6 or
    /// IPv4; `None` if no pool socket could be opened.
    fn pool_socket(&self, v6: bool, inner: &[u8]) -> Option<&(u16, OwnedFd)> {
        let pool = self.pools[usize::from(v6)].get_or_init(|| open_pool(v6, POOL_SIZE));
        let e = usize::from(tunnel::entropy_port(inner));
        pool.get(e % pool.len().max(1))
    }

    /// The UDP source port of a VXLAN packet carrying `inner`: the port of the pool
    /// socket its flow's hash picks (so raw and GSO sends of one flow agree); the
    /// hash itself if no pool socket could be opened.
    pub fn vxlan_source_port(&self, v6: bool, inner: &[u8]) -> u16 {
        self.pool_socket(v6, inner)
            .map_or_else(|| tunnel::entropy_port(inner), |(port, _)| *port)
    }

    /// Sends frames `segs` (ranges of `buf`) that share a destination, VNI and
    /// source port — the segments of one super-frame, or consecutive frames of one
    /// flow — each behind `g.vxlan`, with UDP GSO from the pool socket their hash
    /// picks (the port [`TunnelTx::vxlan_source_port`] gives them): one `sendmsg`
    /// per up to [`GSO_MAX_SEGMENTS`] frames or 64 KiB. Every frame but the last
    /// must be the same size. Returns the counts and how many of `segs` were dealt
    /// with (sent, or dropped for want of room); the caller sends the rest one by
    /// one, so that a refusal (a frame too big for the path, say) is counted per
    /// frame and does not take a smaller frame sent with it down too. `None`: this
    /// cannot go as GSO (no pool, or unequal frames). `iov` is the caller's reusable
    /// scratch vector. Counts are per frame, bytes the inner frames'.
    pub fn send_gso(
        &self,
        g: &GsoSend<'_>,
        buf: &[u8],
        segs: &[Range<usize>],
        iov: &mut Vec<libc::iovec>,
    ) -> Option<(TxResult, usize)> {
        let first = segs.first()?.len();
        let v6 = g.src.is_ipv6();
        let fd = self.pool_socket(v6, &buf[segs[0].clone()])?.1.as_raw_fd();
        if segs.len() < 2 || segs[..segs.len() - 1].iter().any(|s| s.len() != first) {
            return None;
        }
        let seg = tunnel::VXLAN_HDR_LEN + first;
        let per_send = (GSO_MAX_PAYLOAD / seg).min(GSO_MAX_SEGMENTS);
        if per_send < 2 {
            return None;
        }
        let ctrl = gso_control(seg as u16, g.tos, g.ttl, g.src);
        let mut r = TxResult::default();
        let mut done = 0;
        for chunk in segs.chunks(per_send) {
            iov.clear();
            for s in chunk {
                for part in [&g.vxlan[..], &buf[s.clone()]] {
                    iov.push(libc::iovec {
                        iov_base: part.as_ptr() as *mut libc::c_void,
                        iov_len: part.len(),
                    });
                }
            }
            // SAFETY: plain old data; all-zero is valid.
            let mut m: libc::msghdr = unsafe { mem::zeroed() };
            m.msg_name = &g.dst.addr as *const libc::sockaddr_storage as *mut libc::c_void;
            m.msg_namelen = g.dst.len;
            m.msg_iov = iov.as_mut_ptr();
            m.msg_iovlen = iov.len();
            m.msg_control = ctrl.bytes().as_ptr() as *mut libc::c_void;
            m.msg_controllen = ctrl.bytes().len();
            let n = chunk.len() as u64;
            // SAFETY: the header points at `iov` (whose entries point into `segs` and
            // `g.vxlan`), `g.dst` and `ctrl`, all alive for the call; the kernel only
            // reads them.
            let sent = unsafe { libc::sendmsg(fd, &m, libc::MSG_DONTWAIT) };
            if sent >= 0 {
                r.sent += n;
                r.bytes += chunk.iter().map(|s| s.len() as u64).sum::<u64>();
            } else if is_congestion(&io::Error::last_os_error()) {
                r.dropped += n;
            } else {
                break;
            }
            done += chunk.len();
        }
        Some((r, done))
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
                let ctrl = v6_control(tclass, hops, src);
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

/// Ancillary data for a send, built one control message at a time: room for four
/// messages of up to 24 bytes of data (128 bytes, 8-byte aligned as cmsghdr needs).
struct Cmsgs {
    buf: [u64; 16],
    len: usize,
}

impl Cmsgs {
    fn new() -> Cmsgs {
        Cmsgs {
            buf: [0; 16],
            len: 0,
        }
    }

    /// Appends a message of `level`, `ty` carrying `val`.
    fn with<T: Copy>(mut self, level: libc::c_int, ty: libc::c_int, val: T) -> Cmsgs {
        let size = mem::size_of::<T>() as u32;
        // SAFETY: CMSG_SPACE/CMSG_LEN/CMSG_DATA are arithmetic on the header's
        // address; the assert keeps the header and data inside `buf`, and `len` (a
        // multiple of CMSG_SPACE's alignment) keeps the header aligned.
        unsafe {
            let space = libc::CMSG_SPACE(size) as usize;
            assert!(self.len + space <= mem::size_of_val(&self.buf));
            let h = (self.buf.as_mut_ptr() as *mut u8).add(self.len) as *mut libc::cmsghdr;
            (*h).cmsg_level = level;
            (*h).cmsg_type = ty;
            (*h).cmsg_len = libc::CMSG_LEN(size) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(h) as *mut T, val);
            self.len += space;
        }
        self
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: viewing initialized u64s as bytes.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr() as *const u8, self.len) }
    }
}

/// Ancillary data for a UDP GSO send: segment size, then the traffic class, hop
/// limit and source address of `src`'s IP version.
fn gso_control(gso: u16, tos: u8, ttl: u8, src: IpAddr) -> Cmsgs {
    match src {
        IpAddr::V4(src) => v4_control(tos, ttl, src),
        IpAddr::V6(src) => v6_control(tos, ttl, src),
    }
    .with(libc::IPPROTO_UDP, sys::UDP_SEGMENT, gso)
}

/// Ancillary data for an IPv4 send: TOS, TTL and (when given) the source address.
fn v4_control(tos: u8, ttl: u8, src: Ipv4Addr) -> Cmsgs {
    let c = Cmsgs::new()
        .with(libc::IPPROTO_IP, libc::IP_TOS, libc::c_int::from(tos))
        .with(libc::IPPROTO_IP, libc::IP_TTL, libc::c_int::from(ttl));
    if src.is_unspecified() {
        return c;
    }
    let info = libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(src).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    c.with(libc::IPPROTO_IP, libc::IP_PKTINFO, info)
}

/// Ancillary data for an IPv6 send: traffic class, hop limit, source address.
fn v6_control(tclass: u8, hops: u8, src: Ipv6Addr) -> Cmsgs {
    let info = libc::in6_pktinfo {
        ipi6_addr: libc::in6_addr {
            s6_addr: src.octets(),
        },
        ipi6_ifindex: 0,
    };
    Cmsgs::new()
        .with(
            libc::IPPROTO_IPV6,
            libc::IPV6_TCLASS,
            libc::c_int::from(tclass),
        )
        .with(
            libc::IPPROTO_IPV6,
            libc::IPV6_HOPLIMIT,
            libc::c_int::from(hops),
        )
        .with(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, info)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An option-less IPv4 TCP frame of flow `port`.
    fn frame(port: u16) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 6;
        f[36..38].copy_from_slice(&port.to_be_bytes());
        f
    }

    /// What the kernel will read: each control message where CMSG_NXTHDR finds it.
    #[test]
    fn control_messages_read_back_as_written() {
        let c = gso_control(1408, 0x20, 9, Ipv4Addr::new(192, 0, 2, 1).into());
        // SAFETY: plain old data; all-zero is valid.
        let mut m: libc::msghdr = unsafe { mem::zeroed() };
        m.msg_control = c.bytes().as_ptr() as *mut libc::c_void;
        m.msg_controllen = c.bytes().len();
        let ip = libc::IPPROTO_IP;
        assert_eq!(
            cmsg::<u16>(&m, libc::IPPROTO_UDP, sys::UDP_SEGMENT),
            Some(1408)
        );
        assert_eq!(cmsg::<libc::c_int>(&m, ip, libc::IP_TOS), Some(0x20));
        assert_eq!(cmsg::<libc::c_int>(&m, ip, libc::IP_TTL), Some(9));
        let pi = cmsg::<libc::in_pktinfo>(&m, ip, libc::IP_PKTINFO).unwrap();
        assert_eq!(u32::from_be(pi.ipi_spec_dst.s_addr), 0xc000_0201);
        let none = gso_control(1408, 0, 64, Ipv4Addr::UNSPECIFIED.into());
        m.msg_control = none.bytes().as_ptr() as *mut libc::c_void;
        m.msg_controllen = none.bytes().len();
        assert!(cmsg::<libc::in_pktinfo>(&m, ip, libc::IP_PKTINFO).is_none());
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let ip6 = libc::IPPROTO_IPV6;
        for (c6, gso) in [
            (v6_control(0x28, 7, src), None),
            (gso_control(1388, 0x28, 7, src.into()), Some(1388)),
        ] {
            m.msg_control = c6.bytes().as_ptr() as *mut libc::c_void;
            m.msg_controllen = c6.bytes().len();
            assert_eq!(cmsg::<libc::c_int>(&m, ip6, libc::IPV6_TCLASS), Some(0x28));
            assert_eq!(cmsg::<libc::c_int>(&m, ip6, libc::IPV6_HOPLIMIT), Some(7));
            let pi6 = cmsg::<libc::in6_pktinfo>(&m, ip6, libc::IPV6_PKTINFO).unwrap();
            assert_eq!(Ipv6Addr::from(pi6.ipi6_addr.s6_addr), src);
            assert_eq!(cmsg::<u16>(&m, libc::IPPROTO_UDP, sys::UDP_SEGMENT), gso);
        }
    }

    /// The source-port pools: one per IP version, each opened only by its own
    /// version's first packet; distinct dynamic-range ports, one per flow, the same
    /// whether the flow's packet goes raw or as GSO.
    #[test]
    fn source_ports_come_from_the_pool_of_their_ip_version() {
        let f = frame(80);
        for v6 in [true, false] {
            let tx = TunnelTx::open().unwrap();
            let port = tx.vxlan_source_port(v6, &f);
            assert!(
                tx.pools[usize::from(!v6)].get().is_none(),
                "a packet over IPv{} opened the other version's pool",
                if v6 { 6 } else { 4 }
            );
            let pool = tx.pools[usize::from(v6)].get().unwrap();
            assert_eq!(pool.len(), POOL_SIZE);
            let mut ports: Vec<u16> = pool.iter().map(|(p, _)| *p).collect();
            ports.sort_unstable();
            ports.dedup();
            assert_eq!(ports.len(), POOL_SIZE);
            assert!(ports.iter().all(|p| *p >= 49152));
            assert!(ports.contains(&port));
            assert_eq!(tx.vxlan_source_port(v6, &f), port, "one flow, one port");
            assert_eq!(
                tx.pool_socket(v6, &f).unwrap().0,
                port,
                "GSO sends from it too"
            );
            // Flows spread over the pool.
            let used: std::collections::HashSet<u16> = (0..200)
                .map(|p| tx.vxlan_source_port(v6, &frame(p)))
                .collect();
            assert!(used.len() > POOL_SIZE / 2, "{} ports used", used.len());
        }
    }
}
