//! `internal` ports: a TAP device the switch creates, owns and removes.
//!
//! Created with the `tun-rs` crate rather than `tun-tap`: `tun-rs` opens the TAP
//! with `IFF_VNET_HDR` and sets `TUNSETOFFLOAD` (checksum, TSO4/6, USO), so the host
//! stack hands us super-frames with partial checksums and accepts them back — TCP
//! between the host and a port runs at full segment size. `tun-tap` can do neither
//! virtio-net headers nor offloads nor multi-queue.
//!
//! The device is not persistent: closing the descriptor (dropping [`Tap`]) removes
//! it, so a crash never leaves devices behind. It is brought up on creation (tun-rs's
//! default; Open vSwitch leaves internal ports down), so an address is all the host
//! needs to use it. A TAP has no batch read, so a batch
//! is a loop of non-blocking reads until the queue is empty. Not io_uring: it would
//! make the batch one system call, but its cost per request is more than a whole
//! `read` here (measured on an empty queue: 0.3 µs per `RWF_NOWAIT` read submitted 32
//! at a time, 0.2 µs per plain `read`; docs/benchmarks.md).

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use ofproto::vnet_hdr::VNET_HDR_LEN;
use tun_rs::{DeviceBuilder, Layer, SyncDevice};

use super::{is_congestion, sys, NetdevError, RxBatch, TxBatch, TxResult, BATCH, HEADROOM};

pub struct Tap {
    pub name: String,
    pub ifindex: u32,
    dev: SyncDevice,
}

impl Tap {
    pub fn create(name: &str) -> Result<Tap, NetdevError> {
        let err = |source| NetdevError::Create {
            name: name.to_string(),
            source,
        };
        let dev = DeviceBuilder::new()
            .name(name)
            .layer(Layer::L2)
            .offload(true)
            .build_sync()
            .map_err(err)?;
        dev.set_nonblocking(true).map_err(err)?;
        let ifindex = sys::ifindex(name).map_err(err)?;
        Ok(Tap {
            name: name.to_string(),
            ifindex,
            dev,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }

    pub fn recv(&self, rx: &mut RxBatch) -> io::Result<usize> {
        let mut n = 0;
        while n < BATCH {
            let buf = rx.slot_buf(n);
            match self.dev.recv(buf) {
                Ok(len) => {
                    rx.set_stored(n, HEADROOM, len);
                    rx.truncated[n] = len < VNET_HDR_LEN;
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    rx.count = n;
                    if n > 0 {
                        break;
                    }
                    return Err(e);
                }
            }
        }
        rx.count = n;
        Ok(n)
    }

    pub fn send(&self, tx: &TxBatch<'_>) -> TxResult {
        let mut res = TxResult::default();
        for i in 0..tx.len() {
            let parts = tx.parts(i);
            // SAFETY: the iovecs point into buffers borrowed for the batch's lifetime;
            // writev only reads them. One writev is one frame on a TAP.
            let n = unsafe { libc::writev(self.fd(), parts.as_ptr(), parts.len() as libc::c_int) };
            let (frames, extra) = tx.weight(i);
            if n >= 0 {
                res.sent += frames;
                res.bytes += (n as u64 + extra).saturating_sub(frames * VNET_HDR_LEN as u64);
            } else {
                let e = io::Error::last_os_error();
                if is_congestion(&e) {
                    res.dropped += frames;
                } else {
                    res.errors += frames;
                }
            }
        }
        res
    }
}
