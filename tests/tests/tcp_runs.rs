//! Issue 3: the consecutive TCP segments of one stream from a sender without
//! segmentation offload leave a port that takes virtio-net headers as one TSO
//! super-frame (one skb, one pass through the device and the receiver's IP layer,
//! per run), and the stream arrives intact — whether the receiving device takes the
//! super-frame whole or the kernel cuts it on the way.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use vswitch_tests::*;

const MSS: usize = 1448;

#[test]
fn tcp_segments_cross_as_super_frames_and_arrive_intact() {
    let hv = Netns::new("hv");
    let d = Daemon::start_in(&hv);
    let a = Host::new_in("a", "10.0.71.1/24", &hv);
    let b = Host::new_in("b", "10.0.71.2/24", &hv);
    let br = uniq("br");
    d.vsctl_ok(&["add-br", &br]);
    for port in [&a.port, &b.port] {
        d.vsctl_ok(&["add-port", &br, port]);
    }
    // A sends wire-sized segments with complete checksums; nothing merges them on
    // the way to the switch. No IPv6: its neighbour discovery would add frames to
    // the counts below.
    for h in [&a, &b] {
        h.ns.exec_ok("sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
    }
    a.ns.exec_ok("ethtool -K eth0 tx off tso off gso off");
    hv.exec_ok(&format!("ethtool -K {} gro off", a.port));
    assert!(a.ping(&b.ip));

    // The stream: a first burst of 10 segments (TCP's initial window), a second of
    // 40, then the rest unhindered.
    let (first, second, len) = (10 * MSS, 40 * MSS, 2 << 20);
    let data = pattern(len, 71);
    let want = fnv(&data);
    let (port_tx, port_rx) = mpsc::channel();
    let (got_tx, got_rx) = mpsc::channel();
    let ip = b.ip.clone();
    let server = b.ns.spawn(move || {
        let l = TcpListener::bind((ip.as_str(), 0)).unwrap();
        port_tx.send(l.local_addr().unwrap().port()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = vec![0u8; first];
        s.read_exact(&mut got).unwrap();
        got_tx.send(()).unwrap();
        s.read_to_end(&mut got).unwrap();
        (got.len(), fnv(&got))
    });
    let port = port_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (conn_tx, conn_rx) = mpsc::channel();
    let dst = format!("{}:{port}", b.ip);
    let client = a.ns.spawn(move || {
        let mut s = TcpStream::connect(&dst).unwrap();
        s.set_nodelay(true).unwrap();
        conn_tx.send(()).unwrap();
        for part in [0..first, first..first + second] {
            go_rx.recv().unwrap();
            s.write_all(&data[part]).unwrap();
        }
        go_rx.recv().unwrap();
        s.write_all(&data[first + second..]).unwrap();
    });
    conn_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    // Each burst waits in the frozen switch's receive ring, then leaves in batches.
    let burst = |segments: u64| {
        let frozen = Frozen::new(&d);
        let before = link_stat(&hv, &a.port, "rx_packets");
        go_tx.send(()).unwrap();
        wait_for(Duration::from_secs(10), "the burst in the ring", || {
            (link_stat(&hv, &a.port, "rx_packets") >= before + segments).then_some(())
        });
        drop(frozen);
    };

    // 1. To a veth that takes TSO: the kernel counts one packet per super-frame.
    // One per burst, or a few where the headers changed within it (the sender's
    // timestamp ticked, say: a run ends there, as Linux's GRO would end it); one per
    // segment (10, and 11 with whatever else b got) without runs.
    let skbs = link_stat(&hv, &b.port, "tx_packets");
    let frames = d.port_stats(&br, &b.port)["tx_packets"].as_u64().unwrap();
    burst(10);
    got_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let skbs = link_stat(&hv, &b.port, "tx_packets") - skbs;
    assert!(
        skbs <= 5,
        "{skbs} packets on {} for the 10 segments of the first burst: not sent as a super-frame",
        b.port
    );
    // The port's own counter counts the segments, not the super-frames: the 10,
    // and the one frame more that a sends alongside them (11 here every time).
    let frames = d.port_stats(&br, &b.port)["tx_packets"].as_u64().unwrap() - frames;
    assert!(
        (10..=11).contains(&frames),
        "{frames} frames counted on {} for 10 segments",
        b.port
    );

    // 2. To a veth that does not: the kernel cuts the super-frames again. (That the
    // same kind of burst forms a run is what part 1 shows; here the stream's bytes
    // are what is checked.)
    hv.exec_ok(&format!("ethtool -K {} tso off gso off", b.port));
    // (However far the window has grown, at least 10 of the 40 go at once.)
    burst(10);
    go_tx.send(()).unwrap();
    client.join().unwrap();
    let (n, h) = server.join().unwrap();
    assert_eq!(n, len, "receiver got {n} of {len} bytes");
    assert_eq!(h, want, "content differs");
}
