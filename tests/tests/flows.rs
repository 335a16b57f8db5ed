//! Issue 5: programmable flow tables over real namespaces — flows change what the
//! datapath does, count what they match, survive restarts, and bad input changes
//! nothing.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use serde_json::Value;
use vswitch_tests::*;

fn setup() -> (Daemon, String, Host, Host) {
    let (d, br) = Daemon::with_bridge();
    let a = Host::new("fa", "10.0.12.1/24");
    let b = Host::new("fb", "10.0.12.2/24");
    d.vsctl_ok(&["add-port", &br, &a.port, "--", "add-port", &br, &b.port]);
    (d, br, a, b)
}

fn flows(d: &Daemon, br: &str) -> Vec<Value> {
    d.vsctl_json(&["dump-flows", br])
        .as_array()
        .unwrap()
        .clone()
}

fn flow_with<'a>(rows: &'a [Value], needle: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["flow"].as_str().unwrap().contains(needle))
        .unwrap_or_else(|| panic!("no flow containing {needle}: {rows:?}"))
}

/// Whether a TCP connection from `a` to `b`'s `port` gets through within 2 s.
fn tcp_connects(a: &Host, b: &Host, port: u16) -> bool {
    let ip = b.ip.clone();
    let listener =
        b.ns.run(move || TcpListener::bind((ip.as_str(), port)).unwrap());
    let ip = b.ip.clone();
    let ok = a.ns.run(move || {
        TcpStream::connect_timeout(
            &format!("{ip}:{port}").parse().unwrap(),
            Duration::from_secs(2),
        )
        .is_ok()
    });
    drop(listener);
    ok
}

#[test]
fn a_new_bridge_has_one_normal_flow() {
    let (d, br, a, b) = setup();
    let rows = flows(&d, &br);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["flow"], "table=0,priority=0,actions=NORMAL");
    let text = d.vsctl_ok(&["dump-flows", &br]);
    assert!(text.starts_with(" cookie=0x0, duration="), "{text}");
    assert!(
        text.contains("table=0, n_packets=0, n_bytes=0")
            && text.trim_end().ends_with("priority=0 actions=NORMAL"),
        "{text}"
    );
    assert!(a.ping(&b.ip));
}

#[test]
fn a_flow_drops_ssh_while_ping_and_other_tcp_pass() {
    let (d, br, a, b) = setup();
    d.vsctl_ok(&["add-flow", &br, "priority=200,tcp,tp_dst=22,actions=drop"]);
    assert!(a.ping(&b.ip), "ping blocked");
    assert!(!tcp_connects(&a, &b, 22), "ssh got through");
    assert!(tcp_connects(&a, &b, 2222), "other TCP blocked");
    let rows = flows(&d, &br);
    assert!(flow_with(&rows, "tp_dst=22")["n_packets"].as_u64().unwrap() >= 1);
    // Every echo request has the same flow key, so the datapath's flow cache holds
    // "NORMAL" for it now; a new flow must override that at once.
    d.vsctl_ok(&["add-flow", &br, "priority=300,icmp,actions=drop"]);
    assert!(!a.ping(&b.ip), "a cached decision outlived a flow change");
    d.vsctl_ok(&["del-flows", &br, "icmp"]);
    assert!(a.ping(&b.ip));
    // Deleting the flow restores ssh.
    d.vsctl_ok(&["del-flows", &br, "tcp,tp_dst=22"]);
    assert!(
        tcp_connects(&a, &b, 22),
        "ssh still blocked after del-flows"
    );
}

#[test]
fn counters_match_the_frames_sent() {
    let (d, br, a, b) = setup();
    d.vsctl_ok(&[
        "add-flow",
        &br,
        "priority=100,udp,tp_dst=9999,actions=NORMAL",
    ]);
    assert!(a.ping(&b.ip));
    let ip = b.ip.clone();
    let sink =
        b.ns.run(move || UdpSocket::bind((ip.as_str(), 9999)).unwrap());
    let ip = b.ip.clone();
    a.ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..50u32 {
            s.send_to(&i.to_be_bytes(), (ip.as_str(), 9999)).unwrap();
        }
    });
    sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 16];
    for _ in 0..50 {
        sink.recv(&mut buf).expect("datagram lost");
    }
    let rows = flows(&d, &br);
    let f = flow_with(&rows, "tp_dst=9999");
    assert_eq!(f["n_packets"], 50);
    // 50 frames of 14 + 20 + 8 + 4 bytes.
    assert_eq!(f["n_bytes"], 50 * 46);
}

#[test]
fn flows_rewrite_vlan_tags_and_chain_tables() {
    let (d, br, a, b) = setup();
    let flows_text = format!(
        "table=0,priority=10,in_port={},actions=mod_vlan_vid:10,mod_vlan_pcp:5,resubmit(,1)\n\
         table=0,priority=10,in_port={},dl_vlan=10,actions=strip_vlan,output:{}\n\
         table=1,priority=0,actions=output:{}\n",
        a.port, b.port, a.port, b.port
    );
    let file = d.dir.join("flows.txt");
    std::fs::write(&file, flows_text).unwrap();
    d.vsctl_ok(&["replace-flows", &br, file.to_str().unwrap()]);
    // a → b: tagged by the flow (PCP 5, VID 10) and resubmitted to table 1's output.
    let from_a = frame("ff:ff:ff:ff:ff:ff", &a.mac, None, 1);
    let got = deliver(&a, std::slice::from_ref(&from_a), &[&b]);
    assert_eq!(got[0], vec![with_tag(&from_a, 0xa00a)]);
    // b → a tagged 10: the strip_vlan flow delivers it untagged.
    let from_b = frame("ff:ff:ff:ff:ff:ff", &b.mac, Some(0x000a), 2);
    let got = deliver(&b, std::slice::from_ref(&from_b), &[&a]);
    assert_eq!(got[0], vec![untag(&from_b)]);
    // Untagged traffic from b to a does not match the dl_vlan=10 flow: no NORMAL flow, dropped.
    assert!(!a.ping(&b.ip));
    let rows = flows(&d, &br);
    assert!(
        flow_with(&rows, "table=1")["n_packets"].as_u64().unwrap() >= 1,
        "resubmit never reached table 1"
    );
    let tables = d.vsctl_json(&["dump-tables", &br]);
    let t = tables.as_array().unwrap();
    assert_eq!(
        (t[0]["table"].as_u64(), t[0]["active"].as_u64()),
        (Some(0), Some(2)),
        "{tables}"
    );
    assert_eq!(
        (t[1]["table"].as_u64(), t[1]["active"].as_u64()),
        (Some(1), Some(1)),
        "{tables}"
    );
    assert!(t[0]["lookups"].as_u64().unwrap() >= t[0]["matched"].as_u64().unwrap());
    assert!(t[1]["matched"].as_u64().unwrap() >= 1, "{tables}");
    assert!(d
        .vsctl_ok(&["dump-tables", &br])
        .contains("table 1: active=1"));
}

#[test]
fn flows_survive_a_restart() {
    let (mut d, br, a, b) = setup();
    d.vsctl_ok(&["add-flow", &br, "priority=200,tcp,tp_dst=22,actions=drop"]);
    let before = flows(&d, &br)
        .iter()
        .map(|r| r["flow"].clone())
        .collect::<Vec<_>>();
    d.stop(libc::SIGKILL);
    d.launch();
    let after = flows(&d, &br)
        .iter()
        .map(|r| r["flow"].clone())
        .collect::<Vec<_>>();
    assert_eq!(before, after);
    assert!(a.ping(&b.ip));
    assert!(
        !tcp_connects(&a, &b, 22),
        "the ssh drop flow did not survive the restart"
    );
}

#[test]
fn bad_flows_change_nothing_and_replace_keeps_counters() {
    let (d, br, a, b) = setup();
    d.vsctl_ok(&["add-flow", &br, "priority=5,arp,actions=NORMAL"]);
    assert!(a.ping(&b.ip));
    let before = flows(&d, &br);
    let arp_packets = flow_with(&before, "arp")["n_packets"].as_u64().unwrap();
    assert!(arp_packets >= 2);

    let file = d.dir.join("bad.txt");
    std::fs::write(
        &file,
        "priority=1,ip,actions=NORMAL\nip,nw_scr=10.0.0.1,actions=drop\n",
    )
    .unwrap();
    let o = d.vsctl(&["add-flows", &br, file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("flow 2: unknown field 'nw_scr' (did you mean 'nw_src'?) at column 4"),
        "{err}"
    );
    let o = d.vsctl(&["add-flow", &br, "actions=move:reg0[0..3]->reg1[0..7]"]);
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("reg0[0..3] is 4 bits but reg1[0..7] is 8 bits"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = d.vsctl(&["add-flow", &br, "in_port=nosuch,actions=drop"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no port named nosuch"));
    let same: Vec<Value> = flows(&d, &br).iter().map(|r| r["flow"].clone()).collect();
    assert_eq!(
        same,
        before.iter().map(|r| r["flow"].clone()).collect::<Vec<_>>(),
        "a refused change altered the tables"
    );

    // replace-flows keeps the counters of flows it leaves unchanged.
    std::fs::write(&file, "priority=5,arp,actions=NORMAL\npriority=0,actions=NORMAL\npriority=7,icmp,actions=NORMAL\n").unwrap();
    d.vsctl_ok(&["replace-flows", &br, file.to_str().unwrap()]);
    let after = flows(&d, &br);
    assert_eq!(after.len(), 3);
    assert!(
        flow_with(&after, "arp")["n_packets"].as_u64().unwrap() >= arp_packets,
        "replace-flows reset an unchanged flow"
    );
    // --strict deletes only the exact flow.
    d.vsctl_ok(&["--strict", "del-flows", &br, "priority=7,icmp"]);
    assert_eq!(flows(&d, &br).len(), 2);
    d.vsctl_ok(&["del-flows", &br]);
    assert!(flows(&d, &br).is_empty());
    assert!(!a.ping(&b.ip), "no flows must mean drop");
}

#[test]
fn idle_and_hard_timeouts_remove_flows() {
    let (d, br, a, b) = setup();
    d.vsctl_ok(&[
        "add-flow",
        &br,
        "priority=300,idle_timeout=2,icmp,actions=NORMAL",
    ]);
    d.vsctl_ok(&[
        "add-flow",
        &br,
        "priority=301,hard_timeout=3,arp,actions=NORMAL",
    ]);
    let installed = std::time::Instant::now();
    let has = |needle: &str| {
        flows(&d, &br)
            .iter()
            .any(|r| r["flow"].as_str().unwrap().contains(needle))
    };
    assert!(has("arp") && has("icmp"));
    // Traffic keeps the idle flow alive past its timeout...
    let pinger = a.ns.exec("ping -c 16 -i 0.25 -w 10 10.0.12.2");
    assert!(pinger.status.success());
    assert!(has("icmp"), "idle_timeout removed a flow that was in use");
    // ...the hard timeout does not care about traffic (timeouts are checked once a
    // second, in whole seconds, so it fires 3 to 4 s after install)...
    wait_for(
        Duration::from_secs(5),
        "the hard_timeout flow to expire",
        || (!has("arp")).then_some(()),
    );
    assert!(
        installed.elapsed() >= Duration::from_secs(3),
        "hard_timeout fired early"
    );
    // ...and once idle, the flow goes.
    wait_for(Duration::from_secs(10), "the idle flow to expire", || {
        (!has("icmp")).then_some(())
    });
    let conf = std::fs::read_to_string(d.dir.join("conf.json")).unwrap();
    assert!(
        !conf.contains("timeout="),
        "expired flows still persisted: {conf}"
    );
    assert!(a.ping(&b.ip), "the default flow should still forward");
}

#[test]
fn trace_narrates_tables_normal_and_vlans() {
    let (d, br) = Daemon::with_bridge();
    let a = Host::new("xa", "10.0.13.1/24");
    let b = Host::new("xb", "10.0.13.2/24");
    let c = Host::new("xc", "10.0.13.3/24");
    d.vsctl_ok(&[
        "add-port", &br, &a.port, "tag=10", "--", "add-port", &br, &b.port, "tag=10",
    ]);
    d.vsctl_ok(&["add-port", &br, &c.port, "trunks=10,20"]);
    assert!(a.ping(&b.ip));

    let t = d.vsctl_ok(&[
        "trace",
        &br,
        &format!("in_port={},dl_src={},dl_dst={}", a.port, a.mac, b.mac),
    ]);
    assert!(t.contains("0. table=0,priority=0,actions=NORMAL"), "{t}");
    assert!(
        t.contains(&format!(
            "NORMAL: {} learned on {} in VLAN 10",
            b.mac, b.port
        )),
        "{t}"
    );
    assert!(
        t.trim_end()
            .ends_with(&format!("Datapath actions: {}", b.port)),
        "{t}"
    );

    let t = d.vsctl_ok(&[
        "trace",
        &br,
        &format!(
            "in_port={},dl_src={},dl_dst=02:00:00:00:99:99",
            a.port, a.mac
        ),
    ]);
    assert!(
        t.contains("no learned port for 02:00:00:00:99:99 in VLAN 10, flooding"),
        "{t}"
    );
    assert!(
        t.contains(&format!("output to {} (untagged)", b.port))
            && t.contains(&format!("output to {} (VLAN 10 PCP 0)", c.port)),
        "{t}"
    );
    assert!(
        !t.contains(&format!("output to {}", a.port)),
        "flooded back out of the input port: {t}"
    );

    let t = d.vsctl_ok(&[
        "trace",
        &br,
        &format!("in_port={},dl_vlan=20,dl_dst={}", a.port, b.mac),
    ]);
    assert!(
        t.contains("dropping VLAN 20 tagged packet received on access port (VLAN 10)"),
        "{t}"
    );
    assert!(t.contains("Datapath actions: drop"), "{t}");

    d.vsctl_ok(&["add-flow", &br, "priority=200,tcp,tp_dst=22,actions=drop"]);
    let t = d.vsctl_ok(&[
        "trace",
        &br,
        &format!("in_port={},tcp,tp_dst=22,dl_dst={}", a.port, b.mac),
    ]);
    assert!(
        t.contains("0. table=0,priority=200,tcp,tp_dst=22,actions=drop")
            && t.contains("Datapath actions: drop"),
        "{t}"
    );
    // Tracing sends nothing: b's counters did not move.
    let before = d.port_stats(&br, &b.port)["tx_packets"].as_u64().unwrap();
    d.vsctl_ok(&[
        "trace",
        &br,
        &format!("in_port={},dl_dst={}", a.port, b.mac),
    ]);
    assert_eq!(
        d.port_stats(&br, &b.port)["tx_packets"].as_u64().unwrap(),
        before
    );
    assert!(
        !d.vsctl(&["trace", &br, "tcp"]).status.success(),
        "trace without in_port accepted"
    );
}

/// A flow pair that makes 10.0.12.99 (MAC 02:00:00:00:00:99) stand for b: a's
/// frames to it get b's MAC and address, b's answers get the virtual ones back.
/// A third flow translates a UDP port and rewrites TOS and TTL; b's raw socket
/// checks the result byte by byte, checksums included.
#[test]
fn flows_rewrite_headers_and_receivers_see_valid_checksums() {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let (d, br, a, b) = setup();
    let vmac = "02:00:00:00:00:99";
    let flows_text = format!(
        "priority=100,in_port={ap},ip,nw_dst=10.0.12.99,actions=mod_dl_dst:{bmac},mod_nw_dst:10.0.12.2,output:{bp}\n\
         priority=100,in_port={bp},ip,nw_src=10.0.12.2,nw_dst=10.0.12.1,actions=mod_dl_src:{vmac},set_field:10.0.12.99->nw_src,output:{ap}\n\
         priority=200,in_port={ap},udp,nw_dst=10.0.12.98,tp_dst=7000,actions=mod_dl_dst:{bmac},mod_nw_dst:10.0.12.2,mod_tp_dst:7001,mod_tp_src:5555,mod_nw_tos:0x20,dec_ttl,output:{bp}\n\
         priority=0,actions=NORMAL\n",
        ap = a.port,
        bp = b.port,
        bmac = b.mac,
    );
    let file = d.dir.join("nat.txt");
    std::fs::write(&file, flows_text).unwrap();
    d.vsctl_ok(&["replace-flows", &br, file.to_str().unwrap()]);
    for vip in ["10.0.12.99", "10.0.12.98"] {
        a.ns.exec_ok(&format!("ip neigh replace {vip} lladdr {vmac} dev eth0"));
    }

    // With offloads on, TCP super-frames with partial checksums are rewritten whole.
    tcp_transfer_via(&a, &b, "10.0.12.99", 8 << 20);
    // With offloads off, every frame carries complete checksums, which the receiving
    // kernels verify: a wrong one would stall the transfer.
    a.offloads_off();
    b.offloads_off();
    tcp_transfer_via(&a, &b, "10.0.12.99", 4 << 20);

    // A datagram to 10.0.12.98:7000 reaches b as 10.0.12.2:7001, from port 5555,
    // TOS 0x20, TTL one less, with valid IP and UDP checksums.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let cap = b.ns.spawn(move || {
        let s = RawSock::open("eth0");
        ready_tx.send(()).unwrap();
        for _ in 0..50 {
            if let Some(f) = s.recv() {
                let hit = SlicedPacket::from_ethernet(&f).is_ok_and(|p| {
                    matches!(&p.transport, Some(TransportSlice::Udp(u)) if u.destination_port() == 7001)
                });
                if hit {
                    return Some(f);
                }
            }
        }
        None
    });
    ready_rx.recv().unwrap();
    a.ns.run(|| {
        let s = UdpSocket::bind("10.0.12.1:4444").unwrap();
        s.send_to(b"rewritten datagram", "10.0.12.98:7000").unwrap();
    });
    let f = cap
        .join()
        .unwrap()
        .expect("b never saw the rewritten datagram");
    let p = SlicedPacket::from_ethernet(&f).unwrap();
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else {
        panic!("not Ethernet II")
    };
    assert_eq!(eth.destination(), mac_bytes(&b.mac));
    let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(udp))) = (&p.net, &p.transport) else {
        panic!("not IPv4/UDP: {f:02x?}")
    };
    let h = ip.header().to_header();
    assert_eq!(h.destination, [10, 0, 12, 2]);
    assert_eq!(h.dscp.value() << 2 | h.ecn.value(), 0x20);
    assert_eq!(h.time_to_live, 63);
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "IPv4 header checksum"
    );
    assert_eq!((udp.source_port(), udp.destination_port()), (5555, 7001));
    assert_eq!(udp.payload(), b"rewritten datagram");
    let want = udp
        .to_header()
        .calc_checksum_ipv4(&h, udp.payload())
        .unwrap();
    assert_eq!(udp.checksum(), want, "UDP checksum");

    let rows = flows(&d, &br);
    assert!(
        flow_with(&rows, "tp_dst=7000")["n_packets"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

/// The MAC-learning switch of Open vSwitch's "advanced features" tutorial, built
/// from flows: `learn` fills table 10 with one flow per source MAC, which loads
/// the port it was seen on into reg0; table 3 outputs by reg0 or floods.
#[test]
fn learn_builds_a_mac_learning_switch_from_flows() {
    let (d, br, a, b) = setup();
    let ofport = |p: &str| {
        d.vsctl_ok(&["get", "Interface", p, "ofport"])
            .trim()
            .to_string()
    };
    let (oa, ob) = (ofport(&a.port), ofport(&b.port));
    let flows_text = format!(
        "table=0,priority=0,actions=resubmit(,1)\n\
         table=1,actions=learn(table=10,NXM_OF_VLAN_TCI[0..11],NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],load:NXM_OF_IN_PORT[]->NXM_NX_REG0[0..15]),resubmit(,2)\n\
         table=2,priority=0,actions=resubmit(,10),resubmit(,3)\n\
         table=3,priority=50,actions=FLOOD\n\
         table=3,priority=99,reg0={oa},actions=output:{ap}\n\
         table=3,priority=99,reg0={ob},actions=output:{bp}\n",
        ap = a.port,
        bp = b.port,
    );
    let file = d.dir.join("learn.txt");
    std::fs::write(&file, flows_text).unwrap();
    d.vsctl_ok(&["replace-flows", &br, file.to_str().unwrap()]);
    assert!(a.ping(&b.ip));
    // Both MACs were learned, each with the port it came from.
    // (The bridge's own internal port may chatter too and be learned as well.)
    let learned_for = |rows: &[Value], mac: &str, port: &str| {
        let load = format!("load:{:#x}->reg0[0..15]", port.parse::<u32>().unwrap());
        rows.iter().any(|r| {
            let f = r["flow"].as_str().unwrap();
            f.starts_with("table=10,") && f.contains(&format!("dl_dst={mac}")) && f.contains(&load)
        })
    };
    wait_for(Duration::from_secs(5), "learned flows", || {
        let rows = flows(&d, &br);
        (learned_for(&rows, &a.mac, &oa) && learned_for(&rows, &b.mac, &ob)).then_some(())
    });
    // Unicast now goes by the learned port: the reg0 flows count frames.
    assert!(a.ping(&b.ip));
    let rows = flows(&d, &br);
    for o in [&oa, &ob] {
        let reg = format!("reg0={:#x},", o.parse::<u32>().unwrap());
        let n = flow_with(&rows, &reg)["n_packets"].as_u64().unwrap();
        assert!(n >= 1, "reg0={o} flow never used: {rows:?}");
    }
    // Learned flows are flows like any other: they survive a restart.
    let mut d = d;
    d.stop(libc::SIGKILL);
    d.launch();
    let rows = flows(&d, &br);
    assert!(learned_for(&rows, &a.mac, &oa) && learned_for(&rows, &b.mac, &ob));
}

/// Cookies as ovs-ofctl uses them: `cookie=V/M` selects flows in dump-flows,
/// mod-flows and del-flows; a second, unmasked `cookie=` in mod-flows sets it.
#[test]
fn cookies_select_flows() {
    let (d, br) = Daemon::with_bridge();
    d.vsctl_ok(&["add-flow", &br, "cookie=0x10,priority=10,ip,actions=NORMAL"]);
    d.vsctl_ok(&[
        "add-flow",
        &br,
        "cookie=0x21,priority=10,arp,actions=NORMAL",
    ]);
    let dump = |f: &str| -> Vec<String> {
        d.vsctl_json(&["dump-flows", &br, f])
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["flow"].as_str().unwrap().to_string())
            .collect()
    };
    let sel = dump("cookie=0x10/-1");
    assert!(sel.len() == 1 && sel[0].contains("ip,"), "{sel:?}");
    assert_eq!(
        dump("cookie=0x0/0xf0").len(),
        1,
        "only the default flow has cookie 0"
    );
    assert_eq!(dump("cookie=0x1/0x1").len(), 1);
    d.vsctl_ok(&["mod-flows", &br, "cookie=0x10/-1,cookie=0x30,actions=drop"]);
    let sel = dump("cookie=0x30/-1");
    assert!(
        sel.len() == 1 && sel[0].ends_with("actions=drop"),
        "{sel:?}"
    );
    d.vsctl_ok(&["del-flows", &br, "cookie=0x20/0xf0"]);
    let all = dump("");
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().all(|f| !f.contains("arp")));
}
