//! Issue 3: a burst of one UDP flow's datagrams leaves a port that takes virtio-net
//! headers as UDP GSO super-frames (one skb, one pass through the device and the
//! receiver's IP layer, per run), and arrives as the same datagrams, in order.

use vswitch_tests::*;

#[test]
fn a_udp_burst_crosses_as_super_frames_and_arrives_as_sent() {
    let hv = Netns::new("hv");
    let d = Daemon::start_in(&hv);
    let a = Host::new_in("a", "10.0.70.1/24", &hv);
    let b = Host::new_in("b", "10.0.70.2/24", &hv);
    let br = uniq("br");
    d.vsctl_ok(&["add-br", &br]);
    for port in [&a.port, &b.port] {
        d.vsctl_ok(&["add-port", &br, port]);
    }
    let p = add_internal(&d, &br);
    hv.exec_ok(&format!("ip addr add 10.0.70.100/24 dev {p}"));
    assert!(a.ping(&b.ip));
    assert!(a.ping("10.0.70.100"));
    const N: usize = 100;
    let want = burst_received(N);

    // To a veth: the kernel counts one packet per super-frame on it.
    let rcv = receive_udp(&b.ns, &b.ip, 7000, N);
    let (skbs, frames) = (
        link_stat(&hv, &b.port, "tx_packets"),
        d.port_stats(&br, &b.port)["tx_packets"].as_u64().unwrap(),
    );
    let bytes = d.port_stats(&br, &b.port)["tx_bytes"].as_u64().unwrap();
    udp_burst(&d, &a, &b.ip, 7000, N);
    assert_eq!(
        rcv.join().unwrap(),
        want,
        "every datagram, in order, at its size"
    );
    let skbs = link_stat(&hv, &b.port, "tx_packets") - skbs;
    assert!(
        skbs * 4 <= N as u64,
        "{skbs} packets on {} for {N} datagrams: not sent as super-frames",
        b.port
    );
    // The port's own counters count datagrams and their bytes on the wire.
    let st = d.port_stats(&br, &b.port);
    assert_eq!(st["tx_packets"].as_u64().unwrap() - frames, N as u64);
    let wire: usize = (0..N).map(|k| 42 + burst_payload(k, N).len()).sum();
    assert_eq!(st["tx_bytes"].as_u64().unwrap() - bytes, wire as u64);

    // To an internal port: written to its TAP as super-frames, the host's stack
    // cuts them again.
    let rcv = receive_udp(&hv, "10.0.70.100", 7001, N);
    let writes = link_stat(&hv, &p, "rx_packets");
    udp_burst(&d, &a, "10.0.70.100", 7001, N);
    assert_eq!(rcv.join().unwrap(), want, "through the internal port");
    let writes = link_stat(&hv, &p, "rx_packets") - writes;
    assert!(
        writes * 4 <= N as u64,
        "{writes} writes to the TAP {p} for {N} datagrams: not written as super-frames"
    );
}
