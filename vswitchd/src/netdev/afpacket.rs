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
//! Reads use `recvmmsg` (a batch per system call), writes `sendmmsg`.
//!
//! With `options:offload=false` a second socket, without virtio-net headers, is
//! used for transmit and the datapath finishes checksums and segments itself.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ofproto::vnet_hdr::VNET_HDR_LEN;

use super::{
    recv_batch, send_batch, sys, NetdevError, RxBatch, TxBatch, TxResult, BUF_SIZE, HEADROOM,
};

const ETH_P_ALL: u16 = 0x0003;
const TP_STATUS_VLAN_VALID: u32 = 0x10;
const TP_STATUS_VLAN_TPID_VALID: u32 = 0x40;
/// Room for one `cmsghdr` carrying a `tpacket_auxdata`, 8-byte aligned.
const SOCK_BUF: libc::c_int = 8 << 20;

pub struct PacketSocket {
    pub name: String,
    pub ifindex: u32,
    rx: OwnedFd,
    /// A separate transmit socket without virtio-net headers (`options:offload=false`).
    tx_plain: Option<OwnedFd>,
    pub tx_vnet: bool,
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a live T of the given size for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            val as *const T as *const libc::c_void,
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
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
                if aux.tp_status & TP_STATUS_VLAN_VALID != 0 {
                    let tpid = if aux.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 {
                        aux.tp_vlan_tpid
                    } else {
                        0x8100
                    };
                    return Some((tpid, aux.tp_vlan_tci));
                }
                return None;
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

impl PacketSocket {
    /// Attaches to the existing interface `name` and brings it up.
    pub fn open(name: &str, offload: bool) -> Result<PacketSocket, NetdevError> {
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
        // Forcing needs CAP_NET_ADMIN; fall back to the capped size without it.
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            if setsockopt(fd, libc::SOL_SOCKET, force, &SOCK_BUF).is_err() {
                let _ = setsockopt(fd, libc::SOL_SOCKET, plain, &SOCK_BUF);
            }
        }
        bind(fd, ifindex, ETH_P_ALL).map_err(open_err)?;
        // SAFETY: packet_mreq is plain old data.
        let mut mr: libc::packet_mreq = unsafe { mem::zeroed() };
        mr.mr_ifindex = ifindex as i32;
        mr.mr_type = libc::PACKET_MR_PROMISC as u16;
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mr)
            .map_err(|e| cfg_err("promiscuous mode", e))?;
        let tx_plain = if offload {
            None
        } else {
            let tx = packet_socket().map_err(open_err)?;
            for (force, plain) in [(libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
                if setsockopt(tx.as_raw_fd(), libc::SOL_SOCKET, force, &SOCK_BUF).is_err() {
                    let _ = setsockopt(tx.as_raw_fd(), libc::SOL_SOCKET, plain, &SOCK_BUF);
                }
            }
            // Protocol 0: this socket transmits only.
            bind(tx.as_raw_fd(), ifindex, 0).map_err(open_err)?;
            Some(tx)
        };
        sys::set_up(name).map_err(|e| cfg_err("bringing it up", e))?;
        Ok(PacketSocket {
            name: name.to_string(),
            ifindex,
            rx,
            tx_vnet: tx_plain.is_none(),
            tx_plain,
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

    pub fn recv(&self, rx: &mut RxBatch) -> io::Result<usize> {
        recv_batch(self.rx.as_raw_fd(), rx, HEADROOM, |rx, i, m, _| {
            let len = m.msg_len as usize;
            rx.truncated[i] =
                len > BUF_SIZE - HEADROOM || m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            rx.lens[i] = len.min(BUF_SIZE - HEADROOM);
            if let Some((tpid, tci)) = stripped_vlan(&m.msg_hdr) {
                rx.reinsert_vlan(i, tpid, tci);
            }
        })
    }

    pub fn send(&self, tx: &TxBatch<'_>) -> TxResult {
        let fd = match &self.tx_plain {
            Some(t) => t.as_raw_fd(),
            None => self.rx.as_raw_fd(),
        };
        let mut res = send_batch(fd, tx, None, None);
        if self.tx_vnet {
            res.bytes = res.bytes.saturating_sub(res.sent * VNET_HDR_LEN as u64);
        }
        res
    }
}
