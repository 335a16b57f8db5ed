//! 802.1Q VLANs: access, trunk and native modes, per-VLAN learning and flooding.
//! Tagged frames are sent and captured with raw sockets,
//! because this kernel has no VLAN devices; veths strip tags into auxiliary data on
//! receive, so both the switch and the capture must put them back.

use vswitch_tests::*;

#[test]
fn tagged_frames_cross_a_default_port_with_tag_and_pcp_intact() {
    let (d, br) = Daemon::with_bridge();
    let a = Host::new("va", "10.0.7.1/24");
    let b = Host::new("vb", "10.0.7.2/24");
    d.vsctl_ok(&["add-port", &br, &a.port, "--", "add-port", &br, &b.port]);
    let sent = vec![
        frame(&b.mac, &a.mac, Some(0xa00a), 1), // PCP 5, VID 10
        frame(&b.mac, &a.mac, Some(0x6000), 2), // priority tag: PCP 3, VID 0
        frame(&b.mac, &a.mac, None, 3),
        frame("ff:ff:ff:ff:ff:ff", &a.mac, Some(0x2fff), 4), // PCP 1, VID 4095
    ];
    let got = deliver(&a, &sent, &[&b]).remove(0);
    // As in Open vSwitch (Port other_config:priority-tags=false, the default), a
    // VID-0 priority tag is dropped on egress in VLAN 0; every other tag is kept.
    let mut want = sent.clone();
    want[1] = untag(&sent[1]);
    assert_eq!(got, want, "frames lost or altered crossing the switch");
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

fn rx_dropped(d: &Daemon, br: &str, port: &str) -> u64 {
    d.port_stats(br, port)["rx_dropped"].as_u64().unwrap()
}

struct Rig {
    d: Daemon,
    br: String,
}

fn rig() -> Rig {
    let (d, br) = Daemon::with_bridge();
    Rig { d, br }
}

impl Rig {
    fn host(&self, tag: &str, ip: &str, settings: &[&str]) -> Host {
        let h = Host::new(tag, ip);
        let mut args = vec!["add-port", self.br.as_str(), h.port.as_str()];
        args.extend_from_slice(settings);
        self.d.vsctl_ok(&args);
        h
    }
}

#[test]
fn access_ports_isolate_vlans_even_for_broadcast() {
    let r = rig();
    let a = r.host("ia", "10.0.8.1/24", &["tag=10"]);
    let b = r.host("ib", "10.0.8.2/24", &["tag=10"]);
    let c = r.host("ic", "10.0.8.3/24", &["tag=20"]);
    assert!(a.ping(&b.ip), "hosts in VLAN 10 cannot talk");
    assert!(
        !c.ns
            .exec(&format!("ping -c 2 -i 0.2 -W 1 {}", a.ip))
            .status
            .success(),
        "VLAN 20 reached VLAN 10"
    );
    let bcast = frame("ff:ff:ff:ff:ff:ff", &a.mac, None, 7);
    let uni = frame(&b.mac, &a.mac, None, 8);
    let got = deliver(&a, &[bcast.clone(), uni.clone()], &[&b, &c]);
    assert_eq!(
        got[0],
        vec![bcast, uni],
        "VLAN 10 peer did not get both frames untagged"
    );
    assert!(
        got[1].is_empty(),
        "VLAN 20 port saw VLAN 10 traffic: {:?}",
        got[1]
    );
}

#[test]
fn trunk_tags_untags_keeps_pcp_and_drops_unlisted_vlans() {
    let r = rig();
    let a = r.host("ta", "10.0.9.1/24", &["tag=10"]);
    let t = r.host("tt", "10.0.9.9/24", &["trunks=10,20"]);
    let z = r.host("tz", "10.0.9.2/24", &["tag=20"]);

    // Access → trunk: tagged 10; a priority tag's PCP survives.
    let plain = frame(&t.mac, &a.mac, None, 1);
    let prio = frame(&t.mac, &a.mac, Some(0xa000), 2); // PCP 5, VID 0
    let got = deliver(&a, &[plain.clone(), prio.clone()], &[&t, &z]);
    assert_eq!(
        got[0],
        vec![with_tag(&plain, 0x000a), with_tag(&untag(&prio), 0xa00a)]
    );
    assert!(got[1].is_empty(), "VLAN 20 access port saw VLAN 10 frames");

    // Trunk → access: the tag comes off.
    let tagged10 = frame(&a.mac, &t.mac, Some(0x600a), 3);
    let got = deliver(&t, std::slice::from_ref(&tagged10), &[&a, &z]);
    assert_eq!(got[0], vec![untag(&tagged10)]);
    assert!(got[1].is_empty());

    // A VLAN the trunk does not carry is dropped and counted.
    let before = rx_dropped(&r.d, &r.br, &t.port);
    let tagged30 = frame("ff:ff:ff:ff:ff:ff", &t.mac, Some(0x001e), 4);
    let got = deliver(&t, &[tagged30], &[&a, &z]);
    assert!(
        got.iter().all(Vec::is_empty),
        "VLAN 30 frame crossed: {got:?}"
    );
    assert_eq!(rx_dropped(&r.d, &r.br, &t.port), before + 1);
    // Untagged frames on a trunk without VLAN 0 are dropped too.
    let got = deliver(
        &t,
        &[frame("ff:ff:ff:ff:ff:ff", &t.mac, None, 5)],
        &[&a, &z],
    );
    assert!(got.iter().all(Vec::is_empty));
    assert_eq!(rx_dropped(&r.d, &r.br, &t.port), before + 2);
    // A tagged frame on an access port is dropped.
    let before_a = rx_dropped(&r.d, &r.br, &a.port);
    let got = deliver(&a, &[frame(&t.mac, &a.mac, Some(0x000a), 6)], &[&t]);
    assert!(got[0].is_empty());
    assert_eq!(rx_dropped(&r.d, &r.br, &a.port), before_a + 1);
}

#[test]
fn native_tagged_and_native_untagged_both_ways() {
    let r = rig();
    let n = r.host(
        "nn",
        "10.0.10.9/24",
        &["tag=20", "vlan_mode=native-untagged", "trunks=30"],
    );
    let x = r.host("nx", "10.0.10.1/24", &["tag=20"]);
    let y = r.host("ny", "10.0.10.2/24", &["tag=30"]);

    // Untagged into the native port joins VLAN 20; tagged 30 joins 30.
    let u = frame("ff:ff:ff:ff:ff:ff", &n.mac, None, 1);
    let t30 = frame("ff:ff:ff:ff:ff:ff", &n.mac, Some(0x201e), 2);
    let got = deliver(&n, &[u.clone(), t30.clone()], &[&x, &y]);
    assert_eq!(got[0], vec![u.clone()]);
    assert_eq!(got[1], vec![untag(&t30)]);

    // Out of a native-untagged port: native VLAN untagged, others tagged.
    let from_x = frame("ff:ff:ff:ff:ff:ff", &x.mac, None, 3);
    let from_y = frame("ff:ff:ff:ff:ff:ff", &y.mac, None, 4);
    assert_eq!(
        deliver(&x, std::slice::from_ref(&from_x), &[&n])[0],
        vec![from_x.clone()]
    );
    assert_eq!(
        deliver(&y, std::slice::from_ref(&from_y), &[&n])[0],
        vec![with_tag(&from_y, 0x001e)]
    );

    // native-tagged: the native VLAN leaves tagged too; tagged-20 input still maps to 20.
    r.d.vsctl_ok(&["set", "port", &n.port, "vlan_mode=native-tagged"]);
    assert_eq!(
        deliver(&x, std::slice::from_ref(&from_x), &[&n])[0],
        vec![with_tag(&from_x, 0x0014)]
    );
    let t20 = frame("ff:ff:ff:ff:ff:ff", &n.mac, Some(0x0014), 5);
    assert_eq!(
        deliver(&n, std::slice::from_ref(&t20), &[&x])[0],
        vec![untag(&t20)]
    );
    let show = r.d.vsctl_ok(&["show"]);
    assert!(
        show.contains("tag: 20")
            && show.contains("trunks: [30]")
            && show.contains("vlan_mode: native-tagged"),
        "{show}"
    );
}

#[test]
fn same_mac_in_two_vlans_on_two_ports() {
    let r = rig();
    let p10 = r.host("m1", "10.0.11.1/24", &["tag=10"]);
    let p20 = r.host("m2", "10.0.11.2/24", &["tag=20"]);
    let t = r.host("mt", "10.0.11.9/24", &[]); // trunk of all VLANs
    let m = "02:00:00:aa:bb:cc";
    deliver(&p10, &[frame("ff:ff:ff:ff:ff:ff", m, None, 1)], &[]);
    deliver(&p20, &[frame("ff:ff:ff:ff:ff:ff", m, None, 2)], &[]);
    let fdb = r.d.vsctl_json(&["fdb-show", &r.br]);
    let mut rows: Vec<(u64, String)> = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["mac"] == m)
        .map(|e| {
            (
                e["vlan"].as_u64().unwrap(),
                e["port_name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(rows, vec![(10, p10.port.clone()), (20, p20.port.clone())]);
    // Unicast to M in each VLAN reaches only that VLAN's port, untagged.
    let to10 = frame(m, &t.mac, Some(0x000a), 3);
    let to20 = frame(m, &t.mac, Some(0x0014), 4);
    let got = deliver(&t, &[to10.clone(), to20.clone()], &[&p10, &p20]);
    assert_eq!(got[0], vec![untag(&to10)]);
    assert_eq!(got[1], vec![untag(&to20)]);
}

#[test]
fn vlan_commands_read_back_and_refuse_bad_values() {
    let r = rig();
    let p = uniq("q");
    let up = uniq("u");
    r.d.vsctl_ok(&[
        "add-port",
        &r.br,
        &p,
        "tag=10",
        "--",
        "add-port",
        &r.br,
        &up,
        "trunks=10,20",
    ]);
    assert_eq!(r.d.vsctl_ok(&["get", "port", &p, "tag"]), "10\n");
    assert_eq!(r.d.vsctl_ok(&["get", "Port", &up, "trunks"]), "[10, 20]\n");
    r.d.vsctl_ok(&["remove", "port", &up, "trunks", "20"]);
    assert_eq!(r.d.vsctl_ok(&["get", "port", &up, "trunks"]), "[10]\n");
    r.d.vsctl_ok(&["clear", "port", &p, "tag"]);
    assert_eq!(r.d.vsctl_ok(&["get", "port", &p, "tag"]), "[]\n");
    r.d.vsctl_ok(&[
        "set",
        "port",
        &p,
        "tag=20",
        "vlan_mode=native-untagged",
        "trunks=30",
    ]);
    let list = r.d.vsctl_ok(&["list", "port", &p]);
    assert!(
        list.contains("tag                : 20")
            && list.contains("vlan_mode          : native-untagged"),
        "{list}"
    );
    let conf = std::fs::read(r.d.dir.join("conf.json")).unwrap();
    for (bad, what) in [
        ("tag=4096", "not a VLAN ID"),
        ("trunks=10,abc", "not a VLAN ID"),
        ("vlan_mode=hybrid", "unknown VLAN mode"),
    ] {
        let o = r.d.vsctl(&["set", "port", &p, bad]);
        assert_eq!(o.status.code(), Some(1), "{bad} accepted");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(what),
            "{bad}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(
        std::fs::read(r.d.dir.join("conf.json")).unwrap(),
        conf,
        "a refused change was written"
    );
}
