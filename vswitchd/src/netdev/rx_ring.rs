//! A `TPACKET_V2` receive ring for an AF_PACKET socket: the kernel writes each frame
//! it hands the socket into a frame of a memory area it shares with us, and flips
//! the frame's status word; we read frames where they lie and flip the word back.
//!
//! Why this and not `recvmmsg`: a frame then costs no system call, no socket-buffer
//! queueing and no second copy on our thread — the kernel copies it once, in the
//! sender's softirq, and frees its buffer at once. On this 2-vCPU machine the
//! datapath thread spent 29% of its time in `recvmmsg` (docs/benchmarks.md).
//!
//! Why V2 and not V3: V3 packs frames into blocks and makes a block readable only
//! when it is full or its retire timer fires (1 ms at best), which would add up to a
//! millisecond to every lone frame; V2 wakes the reader per frame.
//!
//! Frames have a fixed size ([`FRAME_SIZE`]), enough for any frame of a 1500-byte
//! MTU with its virtio-net header. A larger one (a 64 KiB GSO super-frame, a jumbo
//! frame) does not fit: with `PACKET_COPY_THRESH` the kernel then queues it whole on
//! the socket as well, marks the ring frame `TP_STATUS_COPY`, and the caller reads it
//! with `recvmsg` — in order, since both happen under the same lock.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use ofproto::vnet_hdr::VNET_HDR_LEN;

use super::sys::setsockopt;
use super::{RxBatch, BATCH, HEADROOM};

/// Bytes per ring frame: the frame header (52 bytes with its address), alignment,
/// [`HEADROOM`], a virtio-net header and a 1522-byte tagged frame fit.
pub const FRAME_SIZE: usize = 2048;
/// Frames in the ring: a 2 MiB ring (resident from the start: the kernel maps all of
/// it at once), ~3 ms of 64-byte frames at the rate we forward here — room
/// for the datapath thread to lose its CPU to the hypervisor for a while.
pub const FRAMES: usize = 1024;
const BLOCK_SIZE: usize = 64 << 10;

const TPACKET_V2: libc::c_int = libc::tpacket_versions::TPACKET_V2 as libc::c_int;

/// The tag the kernel stripped from a frame, as (TPID, TCI), from the status word of
/// a ring frame or of `PACKET_AUXDATA` (the same bits) and its TPID and TCI fields.
pub fn stripped_tag(status: u32, tpid: u16, tci: u16) -> Option<(u16, u16)> {
    if status & libc::TP_STATUS_VLAN_VALID == 0 {
        return None;
    }
    // Kernels before 3.14 did not report the TPID: 802.1Q then.
    let tpid = if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
        tpid
    } else {
        0x8100
    };
    Some((tpid, tci))
}

/// What a ring frame says about the frame in it.
pub struct RingFrame {
    /// Bytes of the frame the ring holds (plus the virtio-net header before them).
    pub snaplen: usize,
    /// The frame's length on the wire (larger than `snaplen` when cut).
    pub len: usize,
    /// The whole frame waits on the socket; read it with `recvmsg`.
    pub copied: bool,
    /// A tag the kernel stripped: (TPID, TCI).
    pub vlan: Option<(u16, u16)>,
}

pub struct RxRing {
    map: NonNull<u8>,
    map_len: usize,
    /// Next frame to look at; only the datapath thread moves it.
    head: AtomicUsize,
    /// Frames handed out in the last batch, just before `head`; given back to the
    /// kernel at the next receive.
    held: AtomicUsize,
}

// SAFETY: the mapping is plain memory shared with the kernel; frame ownership is
// decided by the status words (atomics), and only one thread (the datapath) reads.
unsafe impl Send for RxRing {}
// SAFETY: see above; `head`/`held` are atomics.
unsafe impl Sync for RxRing {}

impl RxRing {
    /// Gives `fd` (an AF_PACKET socket, before it is bound, with `PACKET_VNET_HDR`
    /// already set) a receive ring and maps it.
    pub fn attach(fd: RawFd) -> io::Result<RxRing> {
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_VERSION, &TPACKET_V2)?;
        // Guarantees HEADROOM bytes before the virtio-net header in every frame.
        setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_RESERVE,
            &(HEADROOM as libc::c_uint),
        )?;
        let one: libc::c_int = 1;
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_COPY_THRESH, &one)?;
        let req = libc::tpacket_req {
            tp_block_size: BLOCK_SIZE as u32,
            tp_block_nr: (FRAMES * FRAME_SIZE / BLOCK_SIZE) as u32,
            tp_frame_size: FRAME_SIZE as u32,
            tp_frame_nr: FRAMES as u32,
        };
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        let map_len = FRAMES * FRAME_SIZE;
        // SAFETY: maps the ring the kernel just allocated for `fd`; not populated, so
        // only frames that are used become resident.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RxRing {
            map: NonNull::new(p as *mut u8).expect("mmap returned null"),
            map_len,
            head: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
        })
    }

    fn frame(&self, i: usize) -> *mut u8 {
        // SAFETY: i < FRAMES, so the frame is inside the mapping.
        unsafe { self.map.as_ptr().add(i * FRAME_SIZE) }
    }

    fn status(&self, i: usize) -> &AtomicU32 {
        // SAFETY: a frame starts with its u32 status word, 16-byte aligned, and the
        // kernel only ever writes it as a whole word.
        unsafe { &*(self.frame(i) as *const AtomicU32) }
    }

    /// Whether a frame waits: one memory read, no system call.
    #[inline]
    pub fn ready(&self) -> bool {
        let head = self.head.load(Ordering::Relaxed);
        self.status(head).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    /// Gives the frames of the last batch back to the kernel.
    pub fn release(&self) {
        let held = self.held.swap(0, Ordering::Relaxed);
        let head = self.head.load(Ordering::Relaxed);
        for k in 0..held {
            let i = (head + FRAMES - held + k) % FRAMES;
            // Release: our reads of the frame happen before the kernel may reuse it.
            self.status(i)
                .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        }
    }

    /// Gives back the last batch, then puts up to [`BATCH`] waiting frames into `rx`
    /// (slot `i` for the `i`-th), calling `each(rx, i, frame)` for each, and sets the
    /// batch's count. Returns how many.
    pub fn recv(
        &self,
        rx: &mut RxBatch,
        mut each: impl FnMut(&mut RxBatch, usize, &RingFrame),
    ) -> usize {
        self.release();
        let mut head = self.head.load(Ordering::Relaxed);
        let mut n = 0;
        while n < BATCH {
            // Acquire: the kernel wrote the frame before it set the status.
            let status = self.status(head).load(Ordering::Acquire);
            if status & libc::TP_STATUS_USER == 0 {
                break;
            }
            let f = self.frame(head);
            // SAFETY: the frame is ours (TP_STATUS_USER) and starts with a
            // tpacket2_hdr the kernel filled in.
            let h = unsafe { std::ptr::read(f as *const libc::tpacket2_hdr) };
            let mac = usize::from(h.tp_mac);
            let snaplen = h.tp_snaplen as usize;
            let frame = RingFrame {
                snaplen,
                len: h.tp_len as usize,
                copied: status & libc::TP_STATUS_COPY != 0,
                vlan: stripped_tag(status, h.tp_vlan_tpid, h.tp_vlan_tci),
            };
            let start = mac.saturating_sub(VNET_HDR_LEN);
            let room = start.saturating_sub(libc::TPACKET2_HDRLEN);
            if start >= libc::TPACKET2_HDRLEN && mac + snaplen <= FRAME_SIZE {
                // SAFETY: `start..mac + snaplen` lies inside this frame, which stays
                // ours until `release`: called by the datapath once the batch is sent
                // and cleared, or at the next receive.
                unsafe { rx.set_ring(n, f.add(start), room, VNET_HDR_LEN + snaplen) };
            } else {
                rx.set_stored(n, HEADROOM, 0);
                rx.truncated[n] = true;
            }
            each(rx, n, &frame);
            head = (head + 1) % FRAMES;
            n += 1;
        }
        self.head.store(head, Ordering::Relaxed);
        self.held.store(n, Ordering::Relaxed);
        rx.count = n;
        n
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `attach` mapped; no slot points into it any more
        // (the datapath clears its batch before it lets go of a device).
        unsafe { libc::munmap(self.map.as_ptr() as *mut libc::c_void, self.map_len) };
    }
}
