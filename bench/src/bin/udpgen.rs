//! Sends minimum-size UDP datagrams as fast as one core allows, with `sendmmsg`
//! batches of 64, for `--secs` seconds. Prints `{"sent": N, "secs": T}`.
//!
//! `--size` is the Ethernet frame size without FCS (default 60, i.e. a 64-byte frame
//! on the wire): UDP payload = size - 14 - 20 - 8.
//!
//! `--gso N` puts N datagrams in each message with UDP segmentation (`UDP_SEGMENT`):
//! the sending stack runs once per N datagrams and cuts them into separate frames
//! at the device — if the device cannot take UDP super-frames
//! (`tx-udp-segmentation off`, which `bench/run.py --gso-gen` sets on the
//! generator's veth), so that the switch under test still sees 64-byte frames.
//! One core then offers several times more.
//!
//! `--raw IFACE --src IP --dst-mac MAC` sends the same datagrams as whole Ethernet
//! frames on an AF_PACKET socket instead: no UDP/IP stack on the sending side, so one
//! core offers far more (`bench/run.py --raw-gen`). The frames carry a complete UDP
//! checksum (computed once: they are all the same), as a host's would: with a zero
//! one (which IPv4 allows) they would measure a path real traffic does not take —
//! vswitchd sends no UDP super-frame of such datagrams (a cut would give them checksums).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use ofproto::checksum::checksum;
use ofproto::vnet_hdr::{VnetHdr, F_NEEDS_CSUM};
use ofproto::MacAddr;
use vswitch_bench::{arg, req};

const BATCH: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dst = req(&args, "--dst");
    let secs: f64 = arg(&args, "--secs", 5.0);
    let size: usize = arg(&args, "--size", 60);
    let payload_len = size.saturating_sub(42).max(1);
    let gso: usize = arg(&args, "--gso", 1);
    // One descriptor either way: the UDP socket, or a packet socket for whole frames.
    let (sock, payload): (OwnedFd, Vec<u8>) = match args.iter().position(|a| a == "--raw") {
        Some(_) => {
            let iface = req(&args, "--raw");
            let dst: SocketAddrV4 = dst.parse().expect("--dst IPV4:PORT");
            let src: Ipv4Addr = req(&args, "--src").parse().expect("--src IPV4");
            let mac = |s: &str| -> [u8; 6] { s.trim().parse::<MacAddr>().expect("MAC address").0 };
            let dst_mac = mac(&req(&args, "--dst-mac"));
            let src_mac = mac(
                &std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
                    .expect("interface address"),
            );
            let frame = frame(src_mac, dst_mac, src, dst, payload_len);
            let ifindex = vswitchd::netdev::sys::ifindex(&iface).expect("interface");
            // The switch's own transmit-only packet socket.
            let sock = vswitchd::netdev::afpacket::tx_socket(ifindex).expect("packet socket");
            (sock, frame)
        }
        None => {
            let udp = UdpSocket::bind("0.0.0.0:0").expect("bind");
            udp.connect(&dst).expect("connect");
            if gso > 1 {
                let seg = payload_len as libc::c_int;
                // SAFETY: an int option of the right size for the call.
                let r = unsafe {
                    libc::setsockopt(
                        udp.as_raw_fd(),
                        libc::IPPROTO_UDP,
                        vswitchd::netdev::sys::UDP_SEGMENT,
                        &seg as *const libc::c_int as *const libc::c_void,
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                assert!(r == 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
            }
            (OwnedFd::from(udp), vec![0x5au8; payload_len * gso])
        }
    };
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
    // Datagrams per message (the raw generator's frames are whole, one each).
    let per_msg = if args.iter().any(|a| a == "--raw") {
        1
    } else {
        gso as u64
    };
    let start = Instant::now();
    let end = Duration::from_secs_f64(secs);
    let mut sent: u64 = 0;
    while start.elapsed() < end {
        // SAFETY: msgs point at BATCH iovecs over `payload`, alive for the call.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64 * per_msg;
        }
    }
    println!(
        "{{\"sent\": {sent}, \"secs\": {:.3}}}",
        start.elapsed().as_secs_f64()
    );
}

/// Ethernet + IPv4 (don't-fragment, TTL 64) + UDP (source port 9999), checksums
/// complete.
fn frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: SocketAddrV4,
    payload: usize,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42 + payload);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&9999u16.to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(42 + payload, 0x5a);
    // As a host's stack leaves it for the device (the pseudo-header sum in the
    // field), then finished by the switch's own code for partial checksums.
    let pseudo =
        ofproto::checksum::fold(ofproto::checksum::pseudo_at(&f, 14, true, 17, 8 + payload));
    f[40..42].copy_from_slice(&pseudo.to_be_bytes());
    let partial = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..VnetHdr::default()
    };
    ofproto::gso::finish_checksum(&mut f, &partial).expect("offsets inside the frame");
    f
}
