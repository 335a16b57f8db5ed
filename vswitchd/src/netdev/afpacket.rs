//! `system` ports: an AF_PACKET socket bound to an existing interface.
//!
//! Socket options, and why:
//! - `PACKET_VNET_HDR`: veths and taps hand the stack 64 KiB super-frames with
//!   unfinished checksums; the header says so. Without it those frames are
//!   indistinguishable from corrupt ones (Open vSwitch's netdev datapath forwards
//!   ping but no TCP here). On transmit, the kernel segments and checksums for us.
//! - `PACKET_IGNORE_OUTGOING`: never read back the frames we (or anyone) transmit
//!   on the device; otherwise every output frame would be switched again.
//! - `PACKET_MR_PROMISC` membership: a switch port must see every frame, and the
//!   kernel drops the membership when the socket closes.
//! - large forced socket buffers: a burst of super-frames must not overflow them.
//! - `PACKET_AUXDATA`: veths and most NICs strip the 802.1Q tag into skb metadata on
//!   receive; the tag comes back as auxiliary data and is put back inline
//!   ([`RxBatch::reinsert_vlan`]), so a tagged frame leaves tagged.
//!
//! Reads come from a `TPACKET_V2` receive ring ([`super::rx_ring`]; `recvmmsg`, a
//! batch per system call, where a ring cannot be had), writes go out with
//! `sendmmsg` on a second, transmit-only socket. With `options:offload=false` that
//! socket has no virtio-net headers and the datapath finishes checksums and segments
//! itself.
//!
//! Not `PACKET_QDISC_BYPASS`: a veth has no queue to bypass, and frames sent around
//! the queue are invisible to `tcpdump` on the port — an operator's first tool.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ofproto::vnet_hdr::VNET_HDR_LEN;

use super::rx_ring::{stripped_tag, RxRing};
use super::sys::setsockopt;
use super::{
    recv_batch, send_batch, sys, NetdevError, RxBatch, TxBatch, TxResult, BUF_SIZE, HEADROOM,
};

const ETH_P_ALL: u16 = 0x0003;

pub struct PacketSocket {
    pub name: String,
    pub ifindex: u32,
    /// Declared before `rx`: unmapped before the socket closes.
    ring: Option<RxRing>,
    rx: OwnedFd,
    /// The transmit socket: with virtio-net headers unless `options:offload=false`.
    /// Separate from `rx`, and never polled: the kernel frees each sent frame with a
    /// "writable again" wake-up of whoever waits on the socket, and on `rx` that would
    /// be our epoll set, once per frame (6% of the datapath thread in a 64 B flood).
    tx: OwnedFd,
    pub tx_vnet: bool,
}

fn packet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); protocol 0 receives nothing until bound with a protocol.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A packet socket that only transmits, on interface `ifindex` (bound with protocol 0,
/// so it receives nothing), with a large send buffer. Non-blocking: a full buffer is
/// `EAGAIN`, counted as a drop. Also the benchmark's raw frame generator's socket.
pub fn tx_socket(ifindex: u32) -> io::Result<OwnedFd> {
    let tx = packet_socket()?;
    sys::big_buffers(tx.as_raw_fd(), &[(libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)]);
    bind(tx.as_raw_fd(), ifindex, 0)?;
    Ok(tx)
}

fn bind(fd: RawFd, ifindex: u32, protocol: u16) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain old data.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll and the length matches.
    let r = unsafe {
        libc::bind(
            fd,
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The VLAN tag the kernel stripped from a received frame, from its `PACKET_AUXDATA`.
fn stripped_vlan(hdr: &libc::msghdr) -> Option<(u16, u16)> {
    // SAFETY: the kernel filled msg_control with well-formed cmsgs of at most
    // msg_controllen bytes; CMSG_FIRSTHDR/NXTHDR stay within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                let aux =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::tpacket_auxdata);
                return stripped_tag(aux.tp_status, aux.tp_vlan_tpid, aux.tp_vlan_tci);
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

/// Slot `i` of `rx` got a `len`-byte frame (virtio-net header included) from a
/// receive with header `hdr`: notes its length and whether it was cut, and puts
/// back a VLAN tag the kernel stripped.
fn received(rx: &mut RxBatch, i: usize, len: usize, hdr: &libc::msghdr) {
    rx.set_stored(i, HEADROOM, len.min(BUF_SIZE - HEADROOM));
    rx.truncated[i] = len > BUF_SIZE - HEADROOM || hdr.msg_flags & libc::MSG_TRUNC != 0;
    if let Some((tpid, tci)) = stripped_vlan(hdr) {
        rx.reinsert_vlan(i, tpid, tci);
    }
}

/// Reads one frame into slot `i` of `rx` with `recvmsg`: a frame the receive ring had
/// no room for, which the kernel queued on the socket instead.
fn recv_one(fd: RawFd, rx: &mut RxBatch, i: usize) -> io::Result<()> {
    let buf = rx.slot_buf(i);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut ctrl = [0u64; 8];
    // SAFETY: msghdr is plain old data; all-zero is valid.
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
    hdr.msg_controllen = mem::size_of_val(&ctrl);
    // SAFETY: the iovec points into `rx`'s storage and the control buffer lives on
    // the stack, both for the whole call; the kernel writes at most their lengths.
    let n = unsafe { libc::recvmsg(fd, &mut hdr, libc::MSG_DONTWAIT | libc::MSG_TRUNC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    received(rx, i, n as usize, &hdr);
    Ok(())
}

impl PacketSocket {
    /// Attaches to the existing interface `name` and brings it up.
    /// `offload`: transmit with virtio-net headers; `rx_ring`: read through a
    /// receive ring (`false`: with `recvmmsg`, as before the rings, for a host that
    /// cannot spare the ring's 2 MiB per port).
    pub fn open(name: &str, offload: bool, rx_ring: bool) -> Result<PacketSocket, NetdevError> {
        let open_err = |source| NetdevError::Open {
            name: name.to_string(),
            source,
        };
        let cfg_err = |what, source| NetdevError::Configure {
            name: name.to_string(),
            what,
            source,
        };
        let ifindex = sys::ifindex(name).map_err(open_err)?;
        let rx = packet_socket().map_err(open_err)?;
        let fd = rx.as_raw_fd();
        let one: libc::c_int = 1;
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, &one)
            .map_err(|e| cfg_err("PACKET_VNET_HDR", e))?;
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one)
            .map_err(|e| cfg_err("PACKET_IGNORE_OUTGOING", e))?;
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_AUXDATA, &one)
            .map_err(|e| cfg_err("PACKET_AUXDATA", e))?;
        sys::big_buffers(fd, &[(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)]);
        // A receive ring (see rx_ring.rs); without one, recvmmsg does the same job.
        let ring = match rx_ring.then(|| RxRing::attach(fd)) {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                tracing::warn!("{name}: no receive ring ({e}); reading with recvmmsg");
                None
            }
        };
        bind(fd, ifindex, ETH_P_ALL).map_err(open_err)?;
        // SAFETY: packet_mreq is plain old data.
        let mut mr: libc::packet_mreq = unsafe { mem::zeroed() };
        mr.mr_ifindex = ifindex as i32;
        mr.mr_type = libc::PACKET_MR_PROMISC as u16;
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mr)
            .map_err(|e| cfg_err("promiscuous mode", e))?;
        let tx = tx_socket(ifindex).map_err(open_err)?;
        if offload {
            setsockopt(
                tx.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                &one,
            )
            .map_err(|e| cfg_err("PACKET_VNET_HDR", e))?;
        }
        sys::set_up(name).map_err(|e| cfg_err("bringing it up", e))?;
        Ok(PacketSocket {
            name: name.to_string(),
            ifindex,
            ring,
            rx,
            tx,
            tx_vnet: offload,
        })
    }

    pub fn rx_fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    /// Frames the kernel dropped because our receive buffer was full, since the last
    /// call (`PACKET_STATISTICS` resets on read).
    pub fn take_kernel_drops(&self) -> u64 {
        // SAFETY: tpacket_stats is plain old data.
        let mut st: libc::tpacket_stats = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: st and len are valid for writing; the kernel writes at most len bytes.
        let r = unsafe {
            libc::getsockopt(
                self.rx.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                &mut st as *mut libc::tpacket_stats as *mut libc::c_void,
                &mut len,
            )
        };
        if r < 0 {
            0
        } else {
            u64::from(st.tp_drops)
        }
    }

    /// Reads up to a batch of frames: from the receive ring if there is one (frames
    /// too big for a ring frame with `recvmsg`, one each), else with `recvmmsg`.
    pub fn recv(&self, rx: &mut RxBatch) -> io::Result<usize> {
        let fd = self.rx.as_raw_fd();
        if let Some(ring) = &self.ring {
            let n = ring.recv(rx, |rx, i, f| {
                if f.copied {
                    if recv_one(fd, rx, i).is_err() {
                        rx.set_stored(i, HEADROOM, 0);
                        rx.truncated[i] = true;
                    }
                    return;
                }
                if f.len > f.snaplen {
                    rx.truncated[i] = true;
                }
                if let Some((tpid, tci)) = f.vlan {
                    rx.reinsert_vlan(i, tpid, tci);
                }
            });
            if n > 0 {
                return Ok(n);
            }
            // An empty ring: the socket may have an error to report (the device
            // went down or away). Not read from its queue: that holds only frames
            // whose ring frame says TP_STATUS_COPY, and one may be queued a moment
            // before its ring frame is marked — reading it here would take it out of
            // its place.
            return match sys::take_socket_error(fd) {
                Some(e) => Err(e),
                None => Ok(0),
            };
        }
        recv_batch(fd, rx, HEADROOM, |rx, i, m, _| {
            received(rx, i, m.msg_len as usize, &m.msg_hdr)
        })
    }

    pub fn has_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// Whether a frame waits in the receive ring: a memory read, no system call
    /// (false without a ring).
    pub fn rx_ready(&self) -> bool {
        self.ring.as_ref().is_some_and(RxRing::ready)
    }

    /// Lets the kernel have the receive-ring frames of the last batch back.
    pub(super) fn release(&self) {
        if let Some(ring) = &self.ring {
            ring.release();
        }
    }

    pub fn send(&self, tx: &TxBatch<'_>) -> TxResult {
        let mut res = send_batch(self.tx.as_raw_fd(), tx, None, None);
        if self.tx_vnet {
            res.bytes = res.bytes.saturating_sub(res.sent * VNET_HDR_LEN as u64);
        }
        res
    }
}
