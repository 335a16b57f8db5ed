//! The I/O floor of the datapath: forwards every frame between two interfaces with
//! vswitchd's own device code (receive rings, `sendmmsg`, virtio-net headers) and no
//! switching at all — no parsing, learning, lookup or counters. `bench/run.py
//! --kinds nullfwd` runs it like a switch: what it reaches is the most any switch
//! built on these sockets can reach on the machine, so the gap between it and
//! vswitchd is what our own code costs.
//!
//! `nullfwd IF_A IF_B`; prints `{"ready": true}` once both are open; stops on SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};

use vswitchd::netdev::afpacket::PacketSocket;
use vswitchd::netdev::{Netdev, RxBatch, TxBatch, TxStore, BATCH};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, a, b] = &args[..] else {
        eprintln!("usage: nullfwd IF_A IF_B");
        std::process::exit(2);
    };
    let open = |name: &str| {
        let p = PacketSocket::open(name, true, true).unwrap_or_else(|e| {
            eprintln!("nullfwd: {e}");
            std::process::exit(1)
        });
        Netdev::Packet(p)
    };
    let ports = [open(a), open(b)];
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) };
    println!("{{\"ready\": true}}");
    let mut rx = RxBatch::default();
    let mut store = TxStore::with_capacity(BATCH);
    while !STOP.load(Ordering::Relaxed) {
        let mut any = false;
        for (from, to) in [(0, 1), (1, 0)] {
            if !ports[from].rx_ready() {
                continue;
            }
            // A frame too big for a ring frame (a super-frame) still marks its ring
            // frame (TP_STATUS_COPY), so the status word speaks for every frame.
            let n = ports[from].recv(&mut rx).unwrap_or(0);
            if n == 0 {
                continue;
            }
            any = true;
            let mut tx = TxBatch::new(std::mem::take(&mut store));
            for i in 0..n {
                tx.push(rx.slot(i));
            }
            ports[to].send(&tx);
            store = tx.into_store();
            ports[from].release(&mut rx);
        }
        if !any {
            // As the datapath does between polls: let the processes we forward for
            // have the CPU.
            std::thread::yield_now();
        }
    }
}
