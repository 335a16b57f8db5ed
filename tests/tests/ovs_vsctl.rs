//! Issue 7: `vsctl` answering as `ovs-vsctl`, with what scripts, libvirt and qemu's
//! helpers call: forgiving table/column names, get/clear/remove/list/find with
//! --columns, --format=list|table|json, --data=json, --bare, external_ids on every
//! table, Interface statistics with Open vSwitch's keys, and mtu_request.

use std::process::Command;

use serde_json::Value;
use vswitch_tests::*;

#[test]
fn what_scripts_call_works_through_the_ovs_vsctl_name() {
    let d = Daemon::start();
    let br = uniq("br");
    let h = Host::new("ov", "10.0.64.1/24");
    let ovs = |args: &[&str]| d.ovs_vsctl(args);
    ovs(&["--timeout=10", "add-br", &br]);
    ovs(&[
        "--may-exist",
        "add-port",
        &br,
        &h.port,
        "tag=10",
        "--",
        "set",
        "Interface",
        &h.port,
        "external-ids:iface-id=vif-1",
        "mtu_request=1400",
    ]);
    // --may-exist: the same port again is fine.
    ovs(&["--may-exist", "add-port", &br, &h.port]);

    // Forgiving names: case, '-' for '_', unique prefixes (trunk, Int).
    assert_eq!(ovs(&["get", "port", &h.port, "TAG"]).trim(), "10");
    ovs(&[
        "set",
        "Port",
        &h.port,
        "trunk=20,30",
        "vlan-mode=native-untagged",
    ]);
    assert_eq!(ovs(&["get", "Port", &h.port, "trunks"]).trim(), "[20, 30]");
    ovs(&["remove", "port", &h.port, "trunks", "20"]);
    assert_eq!(
        ovs(&["get", "Int", &h.port, "external-ids:iface-id"]).trim(),
        "vif-1"
    );
    // external_ids on every table.
    ovs(&["set", "Bridge", &br, "external-ids:owner=test"]);
    assert_eq!(
        ovs(&["get", "Bridge", &br, "external_ids:owner"]).trim(),
        "test"
    );
    ovs(&["set", "Port", &h.port, "external_ids:p=1"]);
    assert_eq!(
        ovs(&["get", "Port", &h.port, "external_ids"]).trim(),
        "{p=\"1\"}"
    );

    // find with --columns, in every format.
    let bare = ovs(&[
        "--bare",
        "--columns=name",
        "find",
        "Interface",
        "external_ids:iface-id=vif-1",
    ]);
    assert_eq!(bare.trim(), h.port);
    let j: Value = serde_json::from_str(&ovs(&[
        "--format=json",
        "--columns=name,ofport",
        "find",
        "Interface",
        &format!("name={}", h.port),
    ]))
    .unwrap();
    assert_eq!(j["headings"], serde_json::json!(["name", "ofport"]));
    assert_eq!(j["data"][0][0], serde_json::json!(h.port));
    let listed = ovs(&["--columns=name,tag", "list", "Port", &h.port]);
    assert_eq!(
        listed,
        format!("name               : {}\ntag                : 10\n", h.port)
    );
    let table = ovs(&[
        "--format=table",
        "--no-headings",
        "--columns=name,type",
        "find",
        "Interface",
        "type=internal",
    ]);
    assert_eq!(
        table.split_whitespace().collect::<Vec<_>>(),
        vec![br.as_str(), "internal"]
    );
    assert_eq!(
        ovs(&["--data=json", "get", "Interface", &h.port, "external_ids"]).trim(),
        "[\"map\",[[\"iface-id\",\"vif-1\"]]]"
    );
    assert_eq!(ovs(&["iface-to-br", &h.port]).trim(), br);

    // mtu_request reaches the device; statistics count what crossed the port.
    let mtu = std::fs::read_to_string(format!("/sys/class/net/{}/mtu", h.port)).unwrap();
    assert_eq!(mtu.trim(), "1400");
    assert_eq!(ovs(&["get", "Interface", &h.port, "mtu"]).trim(), "1400");
    // The bridge's internal port follows the smallest MTU of its other ports.
    let local = std::fs::read_to_string(format!("/sys/class/net/{br}/mtu")).unwrap();
    assert_eq!(local.trim(), "1400");
    h.ns.exec("ping -c 2 -W 1 10.0.64.9");
    let rx: u64 = ovs(&["get", "Interface", &h.port, "statistics:rx_packets"])
        .trim()
        .parse()
        .unwrap();
    assert!(rx >= 2, "statistics:rx_packets = {rx}");
    let stats = ovs(&["get", "Interface", &h.port, "statistics"]);
    for k in [
        "rx_packets",
        "rx_bytes",
        "rx_dropped",
        "rx_errors",
        "tx_packets",
        "tx_bytes",
        "tx_dropped",
        "tx_errors",
    ] {
        assert!(stats.contains(&format!("{k}=")), "{k} missing: {stats}");
    }

    // clear and --if-exists.
    ovs(&["clear", "Interface", &h.port, "external_ids"]);
    assert_eq!(
        ovs(&["get", "Interface", &h.port, "external_ids"]).trim(),
        "{}"
    );
    ovs(&["--if-exists", "del-port", &h.port]);
    ovs(&["--if-exists", "del-port", &h.port]);
    assert!(ovs(&["list-ports", &br]).trim().is_empty());
    // A typo still names what is wrong.
    let o = Command::new(d.ovs_vsctl_dir().join("ovs-vsctl"))
        .env("VSWITCH_RUNDIR", &d.dir)
        .args(["get", "Bridge", &br, "extrnal_ids"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("extrnal_ids"));
}
