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
//! - Sending: one raw socket (`IPPROTO_RAW`, so `IP_HDRINCL`) for all tunnel ports;
//!   the datapath writes the outer IPv4 header (TOS, TTL, don't-fragment) and the UDP
//!   or GRE header, the kernel routes it and fills in length, ID, checksum and, when
//!   unspecified, the source address. Each message is two parts — outer headers and
//!   the inner frame — so the frame is not copied.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ofproto::tunnel::{self, DecapError};
use ofproto::vnet_hdr::VNET_HDR_LEN;

use super::{send_batch, RxBatch, TxBatch, TxResult, BATCH, BUF_SIZE};

/// Where in a slot's buffer a tunnel packet is read: room for the virtio-net header
/// in front of the inner frame even after the shortest outer header (VXLAN's 8 bytes).
pub const RX_AT: usize = 16;
const SOCK_BUF: libc::c_int = 8 << 20;
const CTRL_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    Vxlan,
    Gre,
}

/// What the outer headers of one received packet said.
#[derive(Debug, Clone, Copy)]
pub struct RxMeta {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub key: u32,
    /// Why the packet cannot be decapsulated; its slot is then empty.
    pub err: Option<DecapError>,
}

impl Default for RxMeta {
    fn default() -> Self {
        RxMeta {
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
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

fn socket(ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before wrapping.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_INET,
            ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            proto,
        )
    })?;
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `v` lives across the call; the kernel reads sizeof(int) bytes.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &v as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

fn big_buffers(fd: RawFd) {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, SOCK_BUF).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, SOCK_BUF);
        }
    }
}

pub fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is valid.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = u32::from(ip).to_be();
    sa
}

/// The receiving socket shared by the tunnel ports of one kind, local address and
/// (for VXLAN) UDP port.
pub struct TunnelRx {
    pub kind: TunnelKind,
    fd: OwnedFd,
}

impl TunnelRx {
    /// A UDP socket on `local:port` (any address when `local` is `None`).
    pub fn vxlan(local: Option<Ipv4Addr>, port: u16) -> io::Result<TunnelRx> {
        let fd = socket(libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
        setsockopt_int(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
        big_buffers(fd.as_raw_fd());
        let sa = sockaddr(local.unwrap_or(Ipv4Addr::UNSPECIFIED), port);
        // SAFETY: sa is a valid sockaddr_in for the call.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })?;
        Ok(TunnelRx {
            kind: TunnelKind::Vxlan,
            fd,
        })
    }

    /// A raw socket of IP protocol 47 (GRE): it sees every GRE packet to this host.
    pub fn gre() -> io::Result<TunnelRx> {
        let fd = socket(libc::SOCK_RAW, libc::IPPROTO_GRE)?;
        big_buffers(fd.as_raw_fd());
        Ok(TunnelRx {
            kind: TunnelKind::Gre,
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
        // SAFETY: all plain old data; all-zero is valid.
        let mut iov: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        let mut names: [libc::sockaddr_in; BATCH] = unsafe { mem::zeroed() };
        let mut ctrl = [[0u64; CTRL_LEN / 8]; BATCH];
        for (i, v) in iov.iter_mut().enumerate() {
            let buf = &mut rx.storage[i * BUF_SIZE + RX_AT..(i + 1) * BUF_SIZE];
            *v = libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
        }
        for (((m, v), c), n) in msgs
            .iter_mut()
            .zip(iov.iter_mut())
            .zip(ctrl.iter_mut())
            .zip(names.iter_mut())
        {
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_control = c.as_mut_ptr() as *mut libc::c_void;
            m.msg_hdr.msg_controllen = CTRL_LEN;
            m.msg_hdr.msg_name = n as *mut libc::sockaddr_in as *mut libc::c_void;
            m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as u32;
        }
        // SAFETY: every pointer refers to a live array above or to `rx`'s storage,
        // which outlive the call; the kernel writes at most each iov_len/controllen.
        let n = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            rx.count = 0;
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let n = n as usize;
        for (i, m) in msgs.iter().enumerate().take(n) {
            let len = (m.msg_len as usize).min(BUF_SIZE - RX_AT);
            rx.truncated[i] = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let base = i * BUF_SIZE + RX_AT;
            let pkt = &rx.storage[base..base + len];
            let decap = match self.kind {
                TunnelKind::Vxlan => tunnel::vxlan_parse(pkt).map(|vni| {
                    let src = Ipv4Addr::from(u32::from_be(names[i].sin_addr.s_addr));
                    let dst = pktinfo_dst(&m.msg_hdr).unwrap_or(Ipv4Addr::UNSPECIFIED);
                    (src, dst, vni, tunnel::VXLAN_HDR_LEN)
                }),
                TunnelKind::Gre => tunnel::ipv4_parse(pkt).and_then(|(src, dst, ihl)| {
                    let g = tunnel::gre_parse(&pkt[ihl..])?;
                    Ok((src, dst, g.key, ihl + g.len))
                }),
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
                    rx.starts[i] = start;
                    rx.lens[i] = len - inner + VNET_HDR_LEN;
                }
                Err(e) => {
                    let (src, dst) = match self.kind {
                        TunnelKind::Vxlan => (
                            Ipv4Addr::from(u32::from_be(names[i].sin_addr.s_addr)),
                            Ipv4Addr::UNSPECIFIED,
                        ),
                        TunnelKind::Gre => tunnel::ipv4_parse(pkt)
                            .map(|(s, d, _)| (s, d))
                            .unwrap_or((Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED)),
                    };
                    meta[i] = RxMeta {
                        src,
                        dst,
                        key: 0,
                        err: Some(e),
                    };
                    rx.starts[i] = RX_AT;
                    rx.lens[i] = 0;
                }
            }
        }
        rx.count = n;
        Ok(n)
    }
}

/// The destination address from an `IP_PKTINFO` control message.
fn pktinfo_dst(m: &libc::msghdr) -> Option<Ipv4Addr> {
    // SAFETY: the kernel filled msg_control/msg_controllen; CMSG_* walk within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(m);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in_pktinfo);
                return Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
            }
            c = libc::CMSG_NXTHDR(m, c);
        }
    }
    None
}

/// The one raw socket every tunnel port sends through.
pub struct TunnelTx {
    fd: OwnedFd,
}

impl TunnelTx {
    pub fn open() -> io::Result<TunnelTx> {
        // IPPROTO_RAW implies IP_HDRINCL and never receives.
        let fd = socket(libc::SOCK_RAW, libc::IPPROTO_RAW)?;
        big_buffers(fd.as_raw_fd());
        Ok(TunnelTx { fd })
    }

    /// Sends frame `i` of `tx` (outer headers of `outer_len` bytes, then the inner
    /// frame) to `dests[i]`. `bytes` counts the inner frames only; a frame too big
    /// for the underlay's MTU is refused by the kernel and counted in `errors`.
    pub fn send(
        &self,
        tx: &TxBatch<'_>,
        dests: &[libc::sockaddr_in],
        outer_len: usize,
    ) -> TxResult {
        let mut r = send_batch(self.fd.as_raw_fd(), tx, Some(dests));
        r.bytes = r.bytes.saturating_sub(r.sent * outer_len as u64);
        r
    }
}
