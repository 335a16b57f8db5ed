//! 802.1Q handling that holds for every port today (Open vSwitch's default mode:
//! a trunk of all VLANs). Tagged frames are sent and captured with raw sockets,
//! because this kernel has no VLAN devices; veths strip tags into auxiliary data on
//! receive, so both the switch and the capture must put them back.

use std::sync::mpsc;
use std::time::Duration;

use vswitch_tests::*;

fn frame(dst: &str, src: &str, tci: Option<u16>, seed: u64) -> Vec<u8> {
    let mut f = mac_bytes(dst).to_vec();
    f.extend_from_slice(&mac_bytes(src));
    if let Some(t) = tci {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&t.to_be_bytes());
    }
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    f.extend_from_slice(&pattern(46, seed));
    f
}

/// Sends `frames` from `from`'s eth0 and returns what `to`'s eth0 received that
/// came from `from`'s MAC.
fn send_and_capture(from: &Host, to: &Host, frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let src = mac_bytes(&from.mac);
    let n = frames.len();
    let cap = to.ns.spawn(move || {
        let s = RawSock::open("eth0");
        ready_tx.send(()).unwrap();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < n && std::time::Instant::now() < deadline {
            if let Some(f) = s.recv() {
                if f.len() >= 12 && f[6..12] == src {
                    got.push(f);
                }
            }
        }
        got
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    from.ns.run(move || {
        let s = RawSock::open("eth0");
        for f in &frames {
            s.send(f).unwrap();
        }
    });
    cap.join().unwrap()
}

#[test]
fn tagged_frames_cross_a_default_port_with_tag_and_pcp_intact() {
    let d = Daemon::start();
    let br = uniq("br");
    d.vsctl_ok(&["add-br", &br]);
    let a = Host::new("va", "10.0.7.1/24");
    let b = Host::new("vb", "10.0.7.2/24");
    d.vsctl_ok(&["add-port", &br, &a.port, "--", "add-port", &br, &b.port]);
    let sent = vec![
        frame(&b.mac, &a.mac, Some(0xa00a), 1), // PCP 5, VID 10
        frame(&b.mac, &a.mac, Some(0x6000), 2), // priority tag: PCP 3, VID 0
        frame(&b.mac, &a.mac, None, 3),
        frame("ff:ff:ff:ff:ff:ff", &a.mac, Some(0x2fff), 4), // PCP 1, VID 4095
    ];
    let got = send_and_capture(&a, &b, sent.clone());
    assert_eq!(got.len(), sent.len(), "frames lost");
    for (g, s) in got.iter().zip(&sent) {
        assert_eq!(g, s, "frame altered crossing the switch");
    }
    // Learning is per VLAN: a's MAC is known in VLAN 10 and in VLAN 0.
    let fdb = d.vsctl_json(&["fdb-show", &br]);
    let vlans: Vec<u64> = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["mac"] == a.mac.as_str())
        .map(|e| e["vlan"].as_u64().unwrap())
        .collect();
    assert!(
        vlans.contains(&10) && vlans.contains(&0),
        "a learned in VLANs {vlans:?}"
    );
}
