//! Network-device backends. All `unsafe`, ioctl and socket code of the daemon lives
//! under this module; everything above it is safe Rust.
//!
//! Every backend moves frames in the same buffer layout: a 10-byte virtio-net
//! header followed by the frame (see [`ofproto::vnet_hdr`]). A backend that reads
//! without headers writes an empty one, so the datapath never has two code paths.
//!
//! - [`afpacket`]: `system` ports — an AF_PACKET socket bound to an existing
//!   interface (a NIC, a veth end, a VM's tap), with `PACKET_VNET_HDR`.
//! - [`tap`]: `internal` ports — a TAP device the switch creates, with `IFF_VNET_HDR`.

pub mod afpacket;
pub mod poll;
pub mod rx_ring;
pub mod sys;
pub mod tap;
pub mod tunnel;

use std::io;
use std::marker::PhantomData;
use std::os::fd::RawFd;

use ofproto::vnet_hdr::VNET_HDR_LEN;

/// Headroom in front of each receive slot, so a VLAN tag the kernel stripped into
/// `PACKET_AUXDATA` can be put back inline by moving 22 bytes, not the frame.
pub const HEADROOM: usize = 4;
/// Room for headroom, a virtio-net header and the largest GSO super-frame (64 KiB of
/// IP plus Ethernet and VLAN headers).
pub const BUF_SIZE: usize = HEADROOM + VNET_HDR_LEN + 65_535 + 64;
/// Frames read per system call.
pub const BATCH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    #[error("could not open network device {name} ({source})")]
    Open { name: String, source: io::Error },
    #[error("could not create internal device {name} ({source})")]
    Create { name: String, source: io::Error },
    #[error("could not configure network device {name}: {what} ({source})")]
    Configure {
        name: String,
        what: &'static str,
        source: io::Error,
    },
}

/// Receive buffers for one batch: up to `BATCH` slots, each holding a virtio-net
/// header and a frame. A slot lives either in the batch's own storage (`BUF_SIZE`
/// bytes per slot, allocated once per worker; only the pages a frame touches become
/// resident) or in a socket's receive ring ([`rx_ring`]), where the kernel wrote it:
/// the datapath sees the same bytes either way and never copies them.
///
/// Every slot has at least [`HEADROOM`] writable bytes in front of it, so a stripped
/// VLAN tag can be put back inline.
pub struct RxBatch {
    storage: Vec<u8>,
    /// Where slot `i`'s bytes start: in `storage`, or in a ring frame the socket that
    /// filled the batch holds for us until its next receive (see [`RxBatch::clear`]).
    ptrs: [*mut u8; BATCH],
    lens: [usize; BATCH],
    /// Writable bytes before `ptrs[i]` that belong to slot `i`.
    room: [usize; BATCH],
    /// Frames longer than the buffer (cut by the kernel); counted as rx errors.
    truncated: [bool; BATCH],
    count: usize,
}

impl Default for RxBatch {
    fn default() -> Self {
        let mut storage = vec![0u8; BATCH * BUF_SIZE];
        let base = storage.as_mut_ptr();
        RxBatch {
            // SAFETY: every offset is inside `storage`.
            ptrs: std::array::from_fn(|i| unsafe { base.add(i * BUF_SIZE + HEADROOM) }),
            storage,
            lens: [0; BATCH],
            room: [HEADROOM; BATCH],
            truncated: [false; BATCH],
            count: 0,
        }
    }
}

impl RxBatch {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Forgets the batch. The datapath calls it once a batch is sent, before the
    /// devices it came from may be closed: a ring slot must not be looked at after
    /// its socket let the kernel have the frame back.
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// Slot `i`: virtio-net header followed by the frame.
    #[inline]
    pub fn slot(&self, i: usize) -> &[u8] {
        assert!(
            i < self.count,
            "receive slot {i} of a batch of {}",
            self.count
        );
        // SAFETY: `ptrs[i]..+lens[i]` is either inside `storage` or inside a ring
        // frame the socket holds for this batch (status TP_STATUS_USER, so the kernel
        // does not write it) until the batch is cleared or refilled, and the ring's
        // mapping outlives that (the datapath holds the device while it uses a batch).
        unsafe { std::slice::from_raw_parts(self.ptrs[i], self.lens[i]) }
    }

    /// Slot `i` of `storage`, `start` bytes into its buffer, `len` bytes long.
    fn set_stored(&mut self, i: usize, start: usize, len: usize) {
        debug_assert!(start + len <= BUF_SIZE);
        // SAFETY: inside `storage` (start + len <= BUF_SIZE).
        self.ptrs[i] = unsafe { self.storage.as_mut_ptr().add(i * BUF_SIZE + start) };
        self.room[i] = start;
        self.lens[i] = len;
        self.truncated[i] = false;
    }

    /// Slot `i` is `len` bytes of a ring frame at `ptr`, with `room` writable bytes of
    /// the same frame before it.
    ///
    /// # Safety
    /// The memory must stay valid and unwritten by anyone else until the batch is
    /// cleared or refilled.
    unsafe fn set_ring(&mut self, i: usize, ptr: *mut u8, room: usize, len: usize) {
        self.ptrs[i] = ptr;
        self.room[i] = room;
        self.lens[i] = len;
        self.truncated[i] = false;
    }

    /// Puts back an 802.1Q/802.1ad tag the kernel stripped from slot `i` (it reported
    /// it in `PACKET_AUXDATA` or the ring frame's header), so that every frame carries
    /// its tags inline from here on. Moves only the virtio-net header and the MAC
    /// addresses into the headroom, and shifts the header's offsets past the tag.
    pub fn reinsert_vlan(&mut self, i: usize, tpid: u16, tci: u16) {
        if self.room[i] < 4 || self.lens[i] < VNET_HDR_LEN + 12 {
            return;
        }
        // SAFETY: the 4 bytes before the slot belong to it (`room`), and the first
        // VNET_HDR_LEN + 12 bytes are inside it (`lens`); `copy` allows overlap.
        let p = unsafe {
            let p = self.ptrs[i].sub(4);
            std::ptr::copy(self.ptrs[i], p, VNET_HDR_LEN + 12);
            p
        };
        self.ptrs[i] = p;
        self.room[i] -= 4;
        self.lens[i] += 4;
        // SAFETY: the slot now starts at `p` and is `lens[i]` bytes long; nothing else
        // borrows it (we hold `&mut self`).
        let slot = unsafe { std::slice::from_raw_parts_mut(p, self.lens[i]) };
        let tag = VNET_HDR_LEN + 12;
        slot[tag..tag + 2].copy_from_slice(&tpid.to_be_bytes());
        slot[tag + 2..tag + 4].copy_from_slice(&tci.to_be_bytes());
        let hdr_bytes: &mut [u8; VNET_HDR_LEN] = (&mut slot[..VNET_HDR_LEN]).try_into().unwrap();
        let mut hdr = ofproto::vnet_hdr::VnetHdr::parse(hdr_bytes);
        if hdr.needs_csum() {
            hdr.csum_start += 4;
        }
        if hdr.hdr_len != 0 {
            hdr.hdr_len += 4;
        }
        hdr.emit(hdr_bytes);
    }

    #[inline]
    pub fn truncated(&self, i: usize) -> bool {
        self.truncated[i]
    }

    /// The receive area of slot `i` in `storage` (after the headroom), reset for a new
    /// frame; [`RxBatch::set_stored`] says how much of it a frame filled.
    fn slot_buf(&mut self, i: usize) -> &mut [u8] {
        self.set_stored(i, HEADROOM, 0);
        &mut self.storage[i * BUF_SIZE + HEADROOM..(i + 1) * BUF_SIZE]
    }
}

/// Frames queued for one send call, each made of one or more parts (a rewritten
/// header prefix and the untouched rest of the frame, when a VLAN tag changes).
/// Built from reusable vectors so steady-state sending allocates nothing; the
/// lifetime ties the queued parts to the buffers they point into.
pub struct TxBatch<'a> {
    iov: Vec<libc::iovec>,
    msgs: Vec<Msg>,
    _frames: PhantomData<&'a [u8]>,
}

/// One message of a [`TxBatch`]: its iovecs, and the frames it stands for (a UDP GSO
/// super-frame carries several), so that counters count frames.
#[derive(Clone, Copy)]
struct Msg {
    /// Index of its first iovec, and how many it has.
    iov: u32,
    parts: u32,
    frames: u32,
    /// Bytes the frames would have taken as separate messages, less this one's.
    extra: u32,
}

/// The reusable storage behind a [`TxBatch`].
#[derive(Default)]
pub struct TxStore {
    iov: Vec<libc::iovec>,
    msgs: Vec<Msg>,
}

impl TxStore {
    pub fn with_capacity(frames: usize) -> TxStore {
        TxStore {
            iov: Vec::with_capacity(frames * 2),
            msgs: Vec::with_capacity(frames),
        }
    }
}

impl<'a> TxBatch<'a> {
    /// Wraps `store` (emptied first); give it back with [`TxBatch::into_store`].
    pub fn new(store: TxStore) -> TxBatch<'a> {
        let TxStore { mut iov, mut msgs } = store;
        iov.clear();
        msgs.clear();
        TxBatch {
            iov,
            msgs,
            _frames: PhantomData,
        }
    }

    /// Queues a frame held in one buffer.
    #[inline]
    pub fn push(&mut self, frame: &'a [u8]) {
        self.push_parts(&[frame]);
    }

    /// Queues a frame whose bytes are the concatenation of `parts`.
    #[inline]
    pub fn push_parts(&mut self, parts: &[&'a [u8]]) {
        self.push_merged(parts.iter().copied(), 1, 0);
    }

    /// Queues one message made of `parts` that stands for `frames` frames, which as
    /// separate messages would have taken `extra` more bytes (a super-frame).
    pub fn push_merged(
        &mut self,
        parts: impl IntoIterator<Item = &'a [u8]>,
        frames: u32,
        extra: u32,
    ) {
        let iov = self.iov.len() as u32;
        for p in parts {
            self.iov.push(libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            });
        }
        self.msgs.push(Msg {
            iov,
            parts: self.iov.len() as u32 - iov,
            frames,
            extra,
        });
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// The iovecs of message `i`.
    fn parts(&self, i: usize) -> &[libc::iovec] {
        let m = self.msgs[i];
        &self.iov[m.iov as usize..(m.iov + m.parts) as usize]
    }

    /// The frames message `i` stands for, and the bytes they would have taken as
    /// separate messages beyond its own.
    fn weight(&self, i: usize) -> (u64, u64) {
        let m = self.msgs[i];
        (u64::from(m.frames), u64::from(m.extra))
    }

    pub fn into_store(self) -> TxStore {
        TxStore {
            iov: self.iov,
            msgs: self.msgs,
        }
    }
}

/// What a send call achieved, for the port's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxResult {
    pub sent: u64,
    pub bytes: u64,
    /// No room in the socket or device queue.
    pub dropped: u64,
    /// Refused by the kernel (too big for the MTU, device gone, ...).
    pub errors: u64,
}

impl std::ops::AddAssign for TxResult {
    fn add_assign(&mut self, o: TxResult) {
        self.sent += o.sent;
        self.bytes += o.bytes;
        self.dropped += o.dropped;
        self.errors += o.errors;
    }
}

/// An open device of either kind.
pub enum Netdev {
    Packet(afpacket::PacketSocket),
    Tap(tap::Tap),
}

impl Netdev {
    pub fn name(&self) -> &str {
        match self {
            Netdev::Packet(p) => &p.name,
            Netdev::Tap(t) => &t.name,
        }
    }

    pub fn ifindex(&self) -> u32 {
        match self {
            Netdev::Packet(p) => p.ifindex,
            Netdev::Tap(t) => t.ifindex,
        }
    }

    /// The descriptor to poll for received frames.
    pub fn rx_fd(&self) -> RawFd {
        match self {
            Netdev::Packet(p) => p.rx_fd(),
            Netdev::Tap(t) => t.fd(),
        }
    }

    /// Whether frames handed to [`Netdev::send`] keep their virtio-net header (and may
    /// be super-frames with partial checksums). When false, the datapath finishes
    /// checksums and segments first and hands over bare frames.
    pub fn takes_vnet_hdr(&self) -> bool {
        match self {
            Netdev::Packet(p) => p.tx_vnet,
            Netdev::Tap(_) => true,
        }
    }

    /// Frames the kernel dropped before we could read them, since the last call.
    pub fn take_kernel_drops(&self) -> u64 {
        match self {
            Netdev::Packet(p) => p.take_kernel_drops(),
            Netdev::Tap(_) => 0,
        }
    }

    /// Whether frames can be seen waiting without a system call (a receive ring);
    /// the others only epoll can ask.
    pub fn has_ring(&self) -> bool {
        matches!(self, Netdev::Packet(p) if p.has_ring())
    }

    /// Whether a frame waits in the receive ring (false without one).
    pub fn rx_ready(&self) -> bool {
        matches!(self, Netdev::Packet(p) if p.rx_ready())
    }

    /// How frames are read, for the interface's `status:rx_mode`.
    pub fn rx_mode(&self) -> &'static str {
        match self {
            Netdev::Packet(p) if p.has_ring() => "ring",
            Netdev::Packet(_) => "recvmmsg",
            Netdev::Tap(_) => "read",
        }
    }

    /// Done with `rx`, the batch the last [`Netdev::recv`] filled (its frames are sent,
    /// the kernel copied them): forgets it and gives its receive-ring frames back.
    /// One call, so that no slot can outlive the frame it points into.
    pub fn release(&self, rx: &mut RxBatch) {
        rx.clear();
        if let Netdev::Packet(p) = self {
            p.release();
        }
    }

    /// Reads up to [`BATCH`] frames without blocking. `Ok(0)` means nothing was
    /// waiting.
    pub fn recv(&self, rx: &mut RxBatch) -> io::Result<usize> {
        match self {
            Netdev::Packet(p) => p.recv(rx),
            Netdev::Tap(t) => t.recv(rx),
        }
    }

    pub fn send(&self, tx: &TxBatch<'_>) -> TxResult {
        match self {
            Netdev::Packet(p) => p.send(tx),
            Netdev::Tap(t) => t.send(tx),
        }
    }
}

/// Room for the control messages a receive may carry (PACKET_AUXDATA, IP_PKTINFO or
/// IPV6_PKTINFO, UDP_GRO).
const CTRL_LEN: usize = 96;

/// Reads up to [`BATCH`] messages from `fd` with one `recvmmsg`: message `i` into slot
/// `i` of `rx`, `at` bytes into its buffer (the slot starts there until `each` says
/// otherwise), then calls `each(rx, i, header, source address)` for every message
/// read, with its control messages reachable from the header. Sets `rx`'s count.
/// `Ok(0)`: nothing was waiting.
fn recv_batch(
    fd: RawFd,
    rx: &mut RxBatch,
    at: usize,
    mut each: impl FnMut(&mut RxBatch, usize, &libc::mmsghdr, &libc::sockaddr_storage),
) -> io::Result<usize> {
    // SAFETY: all plain old data; all-zero is valid.
    let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut names: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut ctrl = [[0u64; CTRL_LEN / 8]; BATCH];
    for (i, v) in iov.iter_mut().enumerate() {
        rx.set_stored(i, at, 0);
        let buf = &mut rx.storage[i * BUF_SIZE + at..(i + 1) * BUF_SIZE];
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
        m.msg_hdr.msg_name = n as *mut libc::sockaddr_storage as *mut libc::c_void;
        m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
    }
    // SAFETY: every pointer refers to a live array above or to `rx`'s storage, which
    // outlive the call; the kernel writes at most each iov_len/controllen/namelen.
    let n = unsafe {
        libc::recvmmsg(
            fd,
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
    for i in 0..n {
        each(rx, i, &msgs[i], &names[i]);
    }
    rx.count = n;
    Ok(n)
}

/// A destination address for `sendmmsg` (IPv4 or IPv6).
#[derive(Clone, Copy)]
pub struct Dest {
    pub addr: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

/// Sends every frame of `tx` on `fd` with `sendmmsg`, BATCH at a time; `names[i]`,
/// if given, is frame `i`'s destination, and `control`, if given, ancillary data for
/// every frame. A full queue drops the rest; a frame the kernel refuses (too big for
/// the MTU, ...) is counted as an error and skipped. `bytes` counts what the kernel
/// took, headers of the caller's included.
fn send_batch(
    fd: RawFd,
    tx: &TxBatch<'_>,
    names: Option<&[Dest]>,
    control: Option<&[u8]>,
) -> TxResult {
    let mut res = TxResult::default();
    let total = tx.len();
    let mut done = 0;
    while done < total {
        let chunk = (total - done).min(BATCH);
        // SAFETY: plain old data; all-zero is valid.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, m) in msgs.iter_mut().enumerate().take(chunk) {
            let parts = tx.parts(done + i);
            m.msg_hdr.msg_iov = parts.as_ptr() as *mut libc::iovec;
            m.msg_hdr.msg_iovlen = parts.len();
            if let Some(names) = names {
                let d = &names[done + i];
                m.msg_hdr.msg_name = &d.addr as *const libc::sockaddr_storage as *mut libc::c_void;
                m.msg_hdr.msg_namelen = d.len;
            }
            if let Some(c) = control {
                m.msg_hdr.msg_control = c.as_ptr() as *mut libc::c_void;
                m.msg_hdr.msg_controllen = c.len();
            }
        }
        // SAFETY: every msg points at iovecs in `tx` (and a name in `names`), both
        // borrowed for the call; the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                msgs.as_mut_ptr(),
                chunk as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            for (i, m) in msgs.iter().take(n as usize).enumerate() {
                let (frames, extra) = tx.weight(done + i);
                res.sent += frames;
                res.bytes += u64::from(m.msg_len) + extra;
            }
            done += n as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if is_congestion(&e) {
            res.dropped += (done..total).map(|i| tx.weight(i).0).sum::<u64>();
            break;
        }
        // The first message of the chunk was refused; skip it and go on.
        res.errors += tx.weight(done).0;
        done += 1;
    }
    res
}

/// Classifies a send error: a full queue is a drop, anything else an error.
fn is_congestion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOBUFS))
}
