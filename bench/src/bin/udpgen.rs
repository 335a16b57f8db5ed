//! Sends minimum-size UDP datagrams as fast as one core allows, with `sendmmsg`
//! batches of 64, for `--secs` seconds. Prints `{"sent": N, "secs": T}`.
//!
//! `--size` is the Ethernet frame size without FCS (default 60, i.e. a 64-byte frame
//! on the wire): UDP payload = size - 14 - 20 - 8.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vswitch_bench::{arg, req};

const BATCH: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dst = req(&args, "--dst");
    let secs: f64 = arg(&args, "--secs", 5.0);
    let size: usize = arg(&args, "--size", 60);
    let payload = vec![0x5au8; size.saturating_sub(42).max(1)];
    let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
    sock.connect(&dst).expect("connect");
    let fd = sock.as_raw_fd();
    let mut iov = [libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    }; BATCH];
    // SAFETY: plain old data; all-zero is valid.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let end = Duration::from_secs_f64(secs);
    let mut sent: u64 = 0;
    while start.elapsed() < end {
        // SAFETY: msgs point at BATCH iovecs over `payload`, alive for the call.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    println!(
        "{{\"sent\": {sent}, \"secs\": {:.3}}}",
        start.elapsed().as_secs_f64()
    );
}
