//! Counts UDP datagrams with `recvmmsg` until none has arrived for `--idle` seconds
//! after the first (or `--max` seconds pass). Prints `{"received": N, "secs": T}`,
//! where T runs from the first to the last datagram.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vswitch_bench::{arg, req};

const BATCH: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bind = req(&args, "--bind");
    let idle: f64 = arg(&args, "--idle", 1.0);
    let max: f64 = arg(&args, "--max", 60.0);
    let sock = UdpSocket::bind(&bind).expect("bind");
    let fd = sock.as_raw_fd();
    let size: libc::c_int = 32 << 20;
    // SAFETY: setsockopt with a live int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const _ as *const libc::c_void,
            4,
        );
    }
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    println!("{{\"ready\": true}}");
    let mut bufs = vec![[0u8; 2048]; BATCH];
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: plain old data; all-zero is valid.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut received: u64 = 0;
    loop {
        // SAFETY: msgs point at BATCH writable buffers, alive for the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        let now = Instant::now();
        if n > 0 {
            received += n as u64;
            first.get_or_insert(now);
            last = now;
        } else if first.is_some_and(|_| now.duration_since(last).as_secs_f64() > idle) {
            break;
        }
        if now.duration_since(start).as_secs_f64() > max {
            break;
        }
    }
    let secs = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    println!("{{\"received\": {received}, \"secs\": {secs:.3}}}");
}
