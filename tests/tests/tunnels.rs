//! Issue 6: VXLAN and GRE tunnels between hypervisors. Each hypervisor is a network
//! namespace running its own vswitchd (its own run directory); VMs are namespaces
//! behind veths into their hypervisor; the underlay is veths between hypervisors.

use std::net::UdpSocket;

use vswitch_tests::*;

/// A hypervisor: a namespace and the daemon running in it (dropped first).
struct Hv {
    d: Daemon,
    ns: Netns,
}

impl Hv {
    fn new(tag: &str) -> Hv {
        let ns = Netns::new(tag);
        let d = Daemon::start_in(&ns);
        Hv { d, ns }
    }

    /// A bridge with `vm`'s port and a tunnel port `tun` (`type`, options).
    fn bridge(&self, vm: &Host, tun: &str, kind: &str, opts: &[String]) -> String {
        let br = uniq("br");
        let mut args: Vec<String> = [
            "add-br",
            &br,
            "--",
            "add-port",
            &br,
            &vm.port,
            "--",
            "add-port",
            &br,
            tun,
            "--",
            "set",
            "Interface",
            tun,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("type={kind}"));
        args.extend(opts.iter().cloned());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.d.vsctl_ok(&a);
        br
    }
}

/// A veth between two namespaces with an address on each end: an underlay link.
fn underlay(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str) {
    let (na, nb) = (uniq("ul"), uniq("ul"));
    sh_ok(&format!(
        "ip link add {na} netns {} type veth peer name {nb} netns {}",
        a.name, b.name
    ));
    a.exec_ok(&format!("ip addr add {a_ip} dev {na}"));
    a.exec_ok(&format!("ip link set {na} up"));
    b.exec_ok(&format!("ip addr add {b_ip} dev {nb}"));
    b.exec_ok(&format!("ip link set {nb} up"));
}

/// A VM behind hypervisor `hv`, with the inner MTU a VXLAN underlay of 1500 allows.
fn vm(tag: &str, ip: &str, hv: &Hv) -> Host {
    let h = Host::new_in(tag, ip, &hv.ns);
    h.ns.exec_ok("ip link set eth0 mtu 1450");
    h
}

fn stat(hv: &Hv, br: &str, port: &str, what: &str) -> u64 {
    hv.d.port_stats(br, port)[what].as_u64().unwrap()
}

#[test]
fn vxlan_joins_vms_per_vni_and_drops_what_it_cannot_carry() {
    let (hv1, hv2) = (Hv::new("hv1"), Hv::new("hv2"));
    underlay(&hv1.ns, "192.168.50.1/24", &hv2.ns, "192.168.50.2/24");
    let (a1, b1) = (
        vm("a1", "10.0.50.1/24", &hv1),
        vm("b1", "10.0.50.11/24", &hv1),
    );
    let (a2, b2) = (
        vm("a2", "10.0.50.2/24", &hv2),
        vm("b2", "10.0.50.12/24", &hv2),
    );
    let vx = |remote: &str, key: u32| {
        vec![
            format!("options:remote_ip={remote}"),
            format!("options:key={key}"),
        ]
    };
    // One bridge per VNI on each hypervisor; both tunnels of a hypervisor share its
    // UDP socket, so only the VNI tells their packets apart.
    let bra1 = hv1.bridge(&a1, "vxa", "vxlan", &vx("192.168.50.2", 5001));
    let brb1 = hv1.bridge(&b1, "vxb", "vxlan", &vx("192.168.50.2", 5002));
    hv2.bridge(&a2, "vxa", "vxlan", &vx("192.168.50.1", 5001));
    hv2.bridge(&b2, "vxb", "vxlan", &vx("192.168.50.1", 5002));

    assert!(a1.ping(&a2.ip), "VNI 5001 across hypervisors");
    assert!(b1.ping(&b2.ip), "VNI 5002 across hypervisors");
    assert!(!a1.ping(&b2.ip), "VNI 5001 reached VNI 5002");
    // TCP super-frames are segmented to the inner MTU before encapsulation.
    tcp_transfer(&a1, &a2, 8 << 20);
    tcp_transfer(&b2, &b1, 4 << 20);
    // The remote VM's MAC was learned on the tunnel port.
    let fdb = hv1.d.vsctl_ok(&["fdb-show", &bra1]);
    let vxa = hv1.d.vsctl_ok(&["get", "Interface", "vxa", "ofport"]);
    assert!(
        fdb.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first() == Some(&vxa.trim()) && f.get(2) == Some(&a2.mac.as_str())
        }),
        "{fdb}"
    );

    // A packet with a VNI no port has, from a known peer: dropped, counted on the
    // port to that peer. A packet too short to be VXLAN: an error there too.
    let dropped = stat(&hv1, &bra1, "vxa", "rx_dropped") + stat(&hv1, &brb1, "vxb", "rx_dropped");
    let errors = stat(&hv1, &bra1, "vxa", "rx_errors") + stat(&hv1, &brb1, "vxb", "rx_errors");
    hv2.ns.run(|| {
        let s = UdpSocket::bind("192.168.50.2:0").unwrap();
        let mut pkt = vec![0x08, 0, 0, 0, 0, 0x03, 0xe7, 0]; // VNI 999
        pkt.extend_from_slice(&frame("ff:ff:ff:ff:ff:ff", "02:00:00:00:09:99", None, 1));
        s.send_to(&pkt, "192.168.50.1:4789").unwrap();
        s.send_to(&[0x08, 0, 0], "192.168.50.1:4789").unwrap();
    });
    wait_for(std::time::Duration::from_secs(5), "drops counted", || {
        let d = stat(&hv1, &bra1, "vxa", "rx_dropped") + stat(&hv1, &brb1, "vxb", "rx_dropped");
        let e = stat(&hv1, &bra1, "vxa", "rx_errors") + stat(&hv1, &brb1, "vxb", "rx_errors");
        (d > dropped && e > errors).then_some(())
    });

    // A frame that does not fit the underlay's MTU once encapsulated is dropped and
    // counted, never fragmented or cut.
    let tx_errors = stat(&hv1, &bra1, "vxa", "tx_errors");
    a1.ns.exec_ok("ip link set eth0 mtu 1500");
    assert!(!a1
        .ns
        .exec(&format!("ping -c 1 -W 2 -s 1472 -M do {}", a2.ip))
        .status
        .success());
    assert!(stat(&hv1, &bra1, "vxa", "tx_errors") > tx_errors);
}
