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
/// Returns the names of its two ends.
fn underlay(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str) -> (String, String) {
    let (na, nb) = (uniq("ul"), uniq("ul"));
    sh_ok(&format!(
        "ip link add {na} netns {} type veth peer name {nb} netns {}",
        a.name, b.name
    ));
    a.exec_ok(&format!("ip addr add {a_ip} dev {na}"));
    a.exec_ok(&format!("ip link set {na} up"));
    b.exec_ok(&format!("ip addr add {b_ip} dev {nb}"));
    b.exec_ok(&format!("ip link set {nb} up"));
    (na, nb)
}

/// A VM behind hypervisor `hv`, with the inner MTU a VXLAN underlay of 1500 allows.
fn vm(tag: &str, ip: &str, hv: &Hv) -> Host {
    let h = Host::new_in(tag, ip, &hv.ns);
    h.ns.exec_ok("ip link set eth0 mtu 1450");
    h
}

/// Where the UDP header of a VXLAN packet starts behind Ethernet and IPv4 or IPv6.
fn udp_at(frame: &[u8]) -> usize {
    if frame[12..14] == [0x86, 0xdd] {
        14 + 40
    } else {
        14 + 20
    }
}

/// The first VXLAN packet (UDP to 4789) from `src` (IPv4 or IPv6) longer than
/// `min_len` that link `ul` in `ns` carries within `tries` receives; the capture is
/// open when this returns.
fn capture_vxlan(
    ns: &Netns,
    ul: &str,
    src: std::net::IpAddr,
    min_len: usize,
    tries: usize,
) -> std::thread::JoinHandle<Option<Vec<u8>>> {
    use std::net::IpAddr;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let ul = ul.to_string();
    let cap = ns.spawn(move || {
        let s = RawSock::open(&ul);
        ready_tx.send(()).unwrap();
        (0..tries).find_map(|_| {
            s.recv().filter(|f| {
                let from = match src {
                    IpAddr::V4(a) => f[12..14] == [8, 0] && f[23] == 17 && f[26..30] == a.octets(),
                    IpAddr::V6(a) => {
                        f[12..14] == [0x86, 0xdd] && f[20] == 17 && f[22..38] == a.octets()
                    }
                };
                f.len() > min_len && from && f[udp_at(f) + 2..udp_at(f) + 4] == [0x12, 0xb5]
            })
        })
    });
    ready_rx.recv().unwrap();
    cap
}

/// The outer headers as sent by a port with `tos=0x20 ttl=9`: traffic class and
/// hop limit as configured, don't-fragment (IPv4; IPv6 routers never fragment), a
/// source port in the dynamic range, the VNI.
fn check_outer(outer: &[u8], vni: u32) {
    if outer[12..14] == [0x86, 0xdd] {
        let tclass = (outer[14] << 4) | (outer[15] >> 4);
        assert_eq!((tclass, outer[21]), (0x20, 9), "traffic class, hop limit");
    } else {
        assert_eq!((outer[15], outer[22]), (0x20, 9), "TOS, TTL");
        assert_eq!(outer[20] & 0x40, 0x40, "don't fragment");
    }
    let udp = udp_at(outer);
    assert!(
        u16::from_be_bytes([outer[udp], outer[udp + 1]]) >= 49152,
        "source port"
    );
    let mut vx = [0x08, 0, 0, 0, 0, 0, 0, 0];
    vx[4..7].copy_from_slice(&vni.to_be_bytes()[1..]);
    assert_eq!(&outer[udp + 8..udp + 16], &vx, "VXLAN header, VNI {vni}");
}

fn stat(hv: &Hv, br: &str, port: &str, what: &str) -> u64 {
    hv.d.port_stats(br, port)[what].as_u64().unwrap()
}

#[test]
fn vxlan_joins_vms_per_vni_and_drops_what_it_cannot_carry() {
    let (hv1, hv2) = (Hv::new("hv1"), Hv::new("hv2"));
    let (_, ul2) = underlay(&hv1.ns, "192.168.50.1/24", &hv2.ns, "192.168.50.2/24");
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
    let mut opts = vx("192.168.50.2", 5001);
    opts.extend(["options:tos=0x20".to_string(), "options:ttl=9".to_string()]);
    let bra1 = hv1.bridge(&a1, "vxa", "vxlan", &opts);
    let brb1 = hv1.bridge(&b1, "vxb", "vxlan", &vx("192.168.50.2", 5002));
    hv2.bridge(&a2, "vxa", "vxlan", &vx("192.168.50.1", 5001));
    hv2.bridge(&b2, "vxb", "vxlan", &vx("192.168.50.1", 5002));

    let cap = capture_vxlan(&hv2.ns, &ul2, [192, 168, 50, 1].into(), 50, 100);
    assert!(a1.ping(&a2.ip), "VNI 5001 across hypervisors");
    let outer = cap
        .join()
        .unwrap()
        .expect("no VXLAN packet on the underlay");
    check_outer(&outer, 5001);
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

    overflow_is_counted(&hv1, &bra1, "vxa", &a1, &a2);
}

/// A frame that does not fit the underlay's MTU once encapsulated (`from` raises its
/// MTU to 1500 and sends a full-size ping to `to` through `port`) is dropped and
/// counted in the port's tx_errors, never fragmented or cut.
fn overflow_is_counted(hv: &Hv, br: &str, port: &str, from: &Host, to: &Host) {
    let before = stat(hv, br, port, "tx_errors");
    from.ns.exec_ok("ip link set eth0 mtu 1500");
    let ping = format!("ping -c 1 -W 2 -s 1472 -M do {}", to.ip);
    assert!(!from.ns.exec(&ping).status.success());
    assert!(stat(hv, br, port, "tx_errors") > before);
}

#[test]
fn gre_joins_two_hypervisors_with_keys_and_checksums() {
    let (hv1, hv2) = (Hv::new("hv1"), Hv::new("hv2"));
    underlay(&hv1.ns, "192.168.52.1/24", &hv2.ns, "192.168.52.2/24");
    let (a1, a2) = (
        vm("a1", "10.0.52.1/24", &hv1),
        vm("a2", "10.0.52.2/24", &hv2),
    );
    let (b1, b2) = (
        vm("b1", "10.0.52.11/24", &hv1),
        vm("b2", "10.0.52.12/24", &hv2),
    );
    // hv1 adds GRE checksums, hv2 does not: each must accept the other's packets.
    hv1.bridge(
        &a1,
        "gra",
        "gre",
        &[
            "options:remote_ip=192.168.52.2".into(),
            "options:key=77".into(),
            "options:csum=true".into(),
        ],
    );
    hv2.bridge(
        &a2,
        "gra",
        "gre",
        &[
            "options:remote_ip=192.168.52.1".into(),
            "options:key=77".into(),
        ],
    );
    // Another key between the same hypervisors: a separate segment.
    hv1.bridge(
        &b1,
        "grb",
        "gre",
        &[
            "options:remote_ip=192.168.52.2".into(),
            "options:key=78".into(),
        ],
    );
    hv2.bridge(
        &b2,
        "grb",
        "gre",
        &[
            "options:remote_ip=192.168.52.1".into(),
            "options:key=78".into(),
        ],
    );
    assert!(a1.ping(&a2.ip));
    assert!(b2.ping(&b1.ip));
    assert!(!a1.ping(&b2.ip), "key 77 reached key 78");
    tcp_transfer(&a1, &a2, 4 << 20);
    tcp_transfer(&a2, &a1, 4 << 20);
}

/// A Linux hypervisor: a kernel VXLAN device in a Linux bridge with a VM.
#[test]
fn vxlan_interoperates_with_the_linux_kernel() {
    let (hv1, hv2) = (Hv::new("hv1"), Hv::new("kv"));
    let (_, ul2) = underlay(&hv1.ns, "192.168.53.1/24", &hv2.ns, "192.168.53.2/24");
    // The kernel leaves the inner TCP checksum of what its VXLAN device sends to the
    // NIC (checksum offload); a veth never computes it, a real NIC would. Make this
    // veth behave like the wire: checksums computed before it.
    hv2.ns.exec_ok(&format!("ethtool -K {ul2} tx off"));
    let a1 = vm("a1", "10.0.53.1/24", &hv1);
    let a2 = vm("a2", "10.0.53.2/24", &hv2);
    hv1.bridge(
        &a1,
        "vx",
        "vxlan",
        &[
            "options:remote_ip=192.168.53.2".into(),
            "options:key=5001".into(),
        ],
    );
    hv2.ns.exec_ok(
        "ip link add vx0 type vxlan id 5001 remote 192.168.53.1 local 192.168.53.2 dstport 4789",
    );
    hv2.ns.exec_ok("ip link add kbr type bridge");
    hv2.ns.exec_ok(&format!(
        "ip link set vx0 master kbr && ip link set {} master kbr",
        a2.port
    ));
    hv2.ns.exec_ok("ip link set vx0 up");
    hv2.ns.exec_ok("ip link set kbr up");
    assert!(a1.ping(&a2.ip), "our VXLAN to the kernel's");
    assert!(a2.ping(&a1.ip), "the kernel's VXLAN to ours");
    tcp_transfer(&a1, &a2, 4 << 20);
    tcp_transfer(&a2, &a1, 4 << 20);
}

/// Three hypervisors on three subnets joined by a router namespace, in a full mesh
/// of VXLAN tunnels: a broadcast reaches every other VM exactly once (split
/// horizon: what came from a tunnel is not flooded into another), and never loops.
#[test]
fn vxlan_full_mesh_over_a_routed_underlay_floods_once() {
    let router = Netns::new("rt");
    router.exec_ok("sysctl -qw net.ipv4.ip_forward=1");
    let hvs: Vec<Hv> = (1..=3).map(|i| Hv::new(&format!("hv{i}"))).collect();
    for (i, hv) in hvs.iter().enumerate() {
        let n = i + 1;
        underlay(
            &hv.ns,
            &format!("10.{n}.0.2/24"),
            &router,
            &format!("10.{n}.0.1/24"),
        );
        hv.ns
            .exec_ok(&format!("ip route add default via 10.{n}.0.1"));
    }
    let vms: Vec<Host> = hvs
        .iter()
        .enumerate()
        .map(|(i, hv)| vm(&format!("m{}", i + 1), &format!("10.0.54.{}/24", i + 1), hv))
        .collect();
    let mut bridges = Vec::new();
    for (i, hv) in hvs.iter().enumerate() {
        let br = uniq("br");
        hv.d.vsctl_ok(&["add-br", &br, "--", "add-port", &br, &vms[i].port]);
        for j in (0..3).filter(|j| *j != i) {
            let p = format!("vx{}", j + 1);
            hv.d.vsctl_ok(&[
                "add-port",
                &br,
                &p,
                "--",
                "set",
                "Interface",
                &p,
                "type=vxlan",
                &format!("options:remote_ip=10.{}.0.2", j + 1),
                "options:key=100",
            ]);
        }
        bridges.push(br);
    }
    // One broadcast from VM 1: VMs 2 and 3 see it once each.
    let b = frame("ff:ff:ff:ff:ff:ff", &vms[0].mac, None, 7);
    let got = deliver(&vms[0], std::slice::from_ref(&b), &[&vms[1], &vms[2]]);
    assert_eq!(
        got[0],
        vec![b.clone()],
        "VM 2 saw the broadcast {} times",
        got[0].len()
    );
    assert_eq!(
        got[1],
        vec![b.clone()],
        "VM 3 saw the broadcast {} times",
        got[1].len()
    );
    // Every hypervisor pair forwards unicast too.
    assert!(vms[0].ping(&vms[1].ip));
    assert!(vms[1].ping(&vms[2].ip));
    assert!(vms[2].ping(&vms[0].ip));
    // No loop: each tunnel port carried a handful of frames, not a storm.
    for (i, hv) in hvs.iter().enumerate() {
        for j in (0..3).filter(|j| *j != i) {
            let rx = stat(hv, &bridges[i], &format!("vx{}", j + 1), "rx_packets");
            assert!(rx < 200, "hv{} vx{}: {rx} frames in: a loop?", i + 1, j + 1);
        }
    }
}

/// One `remote_ip=flow key=flow` port on hypervisor 1, steered by flows to two
/// other hypervisors with different keys; the key and remote of what comes back
/// are matchable (`tun_id`, `tun_src`).
#[test]
fn a_flow_based_tunnel_is_steered_by_flows() {
    let lan = Netns::new("lan");
    lan.exec_ok("ip link add sw type bridge && ip link set sw up");
    let hvs: Vec<Hv> = (1..=3).map(|i| Hv::new(&format!("hv{i}"))).collect();
    for (i, hv) in hvs.iter().enumerate() {
        let (a, b) = (uniq("ul"), uniq("ul"));
        sh_ok(&format!(
            "ip link add {a} netns {} type veth peer name {b} netns {}",
            hv.ns.name, lan.name
        ));
        hv.ns
            .exec_ok(&format!("ip addr add 192.168.55.{}/24 dev {a}", i + 1));
        hv.ns.exec_ok(&format!("ip link set {a} up"));
        lan.exec_ok(&format!("ip link set {b} master sw && ip link set {b} up"));
    }
    let vms: Vec<Host> = hvs
        .iter()
        .enumerate()
        .map(|(i, hv)| vm(&format!("f{}", i + 1), &format!("10.0.55.{}/24", i + 1), hv))
        .collect();
    // Hypervisors 2 and 3: ordinary ports to hypervisor 1, keys 7 and 8.
    for (i, key) in [(1usize, "7"), (2, "8")] {
        hvs[i].bridge(
            &vms[i],
            "vx1",
            "vxlan",
            &[
                "options:remote_ip=192.168.55.1".into(),
                format!("options:key={key}"),
            ],
        );
    }
    let br = hvs[0].bridge(
        &vms[0],
        "vxany",
        "vxlan",
        &["options:remote_ip=flow".into(), "options:key=flow".into()],
    );
    let to =
        |n: u8, key: u8| format!("set_field:192.168.55.{n}->tun_dst,set_tunnel:{key},output:vxany");
    let flows = format!(
        "priority=10,in_port={vm1},dl_dst={m2},actions={t2}\n\
         priority=10,in_port={vm1},dl_dst={m3},actions={t3}\n\
         priority=10,in_port={vm1},dl_dst=ff:ff:ff:ff:ff:ff,actions={t2},{t3}\n\
         priority=10,in_port=vxany,tun_id=7,tun_src=192.168.55.2,actions=output:{vm1}\n\
         priority=10,in_port=vxany,tun_id=8,tun_src=192.168.55.3,actions=output:{vm1}\n",
        vm1 = vms[0].port,
        m2 = vms[1].mac,
        m3 = vms[2].mac,
        t2 = to(2, 7),
        t3 = to(3, 8),
    );
    let file = hvs[0].d.dir.join("steer.txt");
    std::fs::write(&file, flows).unwrap();
    hvs[0]
        .d
        .vsctl_ok(&["add-flows", &br, file.to_str().unwrap()]);
    assert!(vms[0].ping(&vms[1].ip), "steered to hypervisor 2");
    assert!(vms[0].ping(&vms[2].ip), "steered to hypervisor 3");
    let rows = hvs[0].d.vsctl_json(&["dump-flows", &br]);
    for key in ["tun_id=0x7", "tun_id=0x8"] {
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["flow"].as_str().unwrap().contains(key))
            .unwrap_or_else(|| panic!("no flow with {key}: {rows}"));
        assert!(row["n_packets"].as_u64().unwrap() >= 3, "{key}: {row}");
    }
}

/// Open vSwitch 3.1 with its userspace datapath, running in a namespace of its own
/// (its own database, run directory and log), as a tunnel peer. It terminates
/// tunnels the way its documentation describes ("userspace tunneling"): the
/// underlay address sits on an internal port `br-phy` that owns the underlay NIC.
struct Ovs {
    dir: std::path::PathBuf,
    ns: String,
}

impl Ovs {
    fn start(ns: &Netns) -> Ovs {
        assert!(
            sh("command -v ovs-vswitchd").status.success(),
            "Open vSwitch is not installed (scripts/test.sh installs openvswitch-switch)"
        );
        let dir = std::env::temp_dir().join(format!("vswitch-ovs-{}", uniq("o")));
        std::fs::create_dir_all(&dir).unwrap();
        let t = dir.display();
        let env = format!("OVS_RUNDIR={t} OVS_LOGDIR={t} OVS_DBDIR={t} OVS_SYSCONFDIR={t}");
        sh_ok(&format!(
            "ovsdb-tool create {t}/conf.db /usr/share/openvswitch/vswitch.ovsschema"
        ));
        ns.exec_ok(&format!(
            "env {env} ovsdb-server {t}/conf.db --remote=punix:{t}/db.sock \
             --pidfile={t}/ovsdb-server.pid --log-file={t}/ovsdb-server.log --detach"
        ));
        let o = Ovs {
            dir: dir.clone(),
            ns: ns.name.clone(),
        };
        o.vsctl("--no-wait init");
        ns.exec_ok(&format!(
            "env {env} ovs-vswitchd unix:{t}/db.sock --pidfile={t}/ovs-vswitchd.pid \
             --log-file={t}/ovs-vswitchd.log --detach"
        ));
        o
    }

    fn vsctl(&self, args: &str) -> String {
        sh_ok(&format!(
            "ovs-vsctl --db=unix:{}/db.sock --timeout=20 {args}",
            self.dir.display()
        ))
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        // Its netdev bridges' TAPs are persistent: remove the bridges first.
        let t = self.dir.display();
        let _ = sh(&format!(
            "ovs-vsctl --db=unix:{t}/db.sock --timeout=5 -- --if-exists del-br br-int -- --if-exists del-br br-phy"
        ));
        for name in ["ovs-vswitchd", "ovsdb-server"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join(format!("{name}.pid"))) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: signalling a process this test started, by its PID.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
        }
        let _ = sh(&format!("ip -n {} link del br-phy", self.ns));
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("Open vSwitch logs kept in {t}");
        }
    }
}

#[test]
fn vxlan_and_gre_interoperate_with_open_vswitch() {
    let hv1 = Hv::new("hv1");
    let ons = Netns::new("ovs");
    let (ul1, ulo) = underlay(&hv1.ns, "192.168.57.1/24", &ons, "192.168.57.2/24");
    // We send VXLAN super-frames as UDP GSO datagrams with partial checksums, as the
    // kernel's VXLAN device sends its own; a NIC would segment them and fill in the
    // checksums, a veth hands them over whole, which Open vSwitch's packet socket
    // cannot take. Make this veth behave like the wire.
    hv1.ns.exec_ok(&format!("ethtool -K {ul1} tx off"));
    let a1 = vm("a1", "10.0.57.1/24", &hv1);
    let a2 = Host::new_in("a2", "10.0.57.2/24", &ons);
    a2.ns.exec_ok("ip link set eth0 mtu 1450");
    // Open vSwitch's userspace datapath cannot complete offloaded checksums.
    a2.offloads_off();
    let ovs = Ovs::start(&ons);
    // The underlay address moves from the NIC to br-phy, which owns the NIC.
    ons.exec_ok(&format!("ip addr flush dev {ulo}"));
    let mac = ons.exec_ok(&format!("cat /sys/class/net/{ulo}/address"));
    ovs.vsctl(&format!(
        "add-br br-phy -- set bridge br-phy datapath_type=netdev other_config:hwaddr={} \
         -- add-port br-phy {ulo}",
        mac.trim()
    ));
    ons.exec_ok("ip addr add 192.168.57.2/24 dev br-phy && ip link set br-phy up");
    ovs.vsctl(&format!(
        "add-br br-int -- set bridge br-int datapath_type=netdev -- add-port br-int {} \
         -- add-port br-int t0 -- set interface t0 type=vxlan options:remote_ip=192.168.57.1 options:key=5001",
        a2.port
    ));
    hv1.bridge(
        &a1,
        "t0",
        "vxlan",
        &[
            "options:remote_ip=192.168.57.2".into(),
            "options:key=5001".into(),
        ],
    );
    assert!(a1.ping(&a2.ip), "VXLAN: ours to Open vSwitch");
    assert!(a2.ping(&a1.ip), "VXLAN: Open vSwitch to ours");
    tcp_transfer(&a1, &a2, 2 << 20);
    tcp_transfer(&a2, &a1, 2 << 20);

    // The same tunnel as GRE, on both sides.
    ovs.vsctl("set interface t0 type=gre options:key=77");
    hv1.d
        .vsctl_ok(&["set", "Interface", "t0", "type=gre", "options:key=77"]);
    assert!(a1.ping(&a2.ip), "GRE: ours to Open vSwitch");
    assert!(a2.ping(&a1.ip), "GRE: Open vSwitch to ours");
    tcp_transfer(&a1, &a2, 2 << 20);
    tcp_transfer(&a2, &a1, 2 << 20);
}

/// An IPv6 underlay between two namespaces (whose IPv6 the harness turned off).
fn underlay6(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str) -> (String, String) {
    for n in [a, b] {
        n.exec_ok(
            "sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0",
        );
    }
    let (na, nb) = (uniq("ul"), uniq("ul"));
    sh_ok(&format!(
        "ip link add {na} netns {} type veth peer name {nb} netns {}",
        a.name, b.name
    ));
    for (n, link, ip) in [(a, &na, a_ip), (b, &nb, b_ip)] {
        n.exec_ok(&format!(
            "ip addr add {ip} dev {link} nodad && ip link set {link} up"
        ));
    }
    (na, nb)
}

#[test]
fn vxlan_and_gre_over_an_ipv6_underlay() {
    let (hv1, hv2) = (Hv::new("hv1"), Hv::new("hv2"));
    underlay6(&hv1.ns, "fd00:58::1/64", &hv2.ns, "fd00:58::2/64");
    // IPv6 outer headers are 20 bytes longer: inner MTU underlay − 70.
    let vm6 = |tag: &str, ip: &str, hv: &Hv| {
        let h = Host::new_in(tag, ip, &hv.ns);
        h.ns.exec_ok("ip link set eth0 mtu 1430");
        h
    };
    let (a1, a2) = (
        vm6("a1", "10.0.58.1/24", &hv1),
        vm6("a2", "10.0.58.2/24", &hv2),
    );
    let (b1, b2) = (
        vm6("b1", "10.0.58.11/24", &hv1),
        vm6("b2", "10.0.58.12/24", &hv2),
    );
    let br1 = hv1.bridge(
        &a1,
        "vx",
        "vxlan",
        &[
            "options:remote_ip=fd00:58::2".into(),
            "options:key=5001".into(),
            "options:ttl=9".into(),
        ],
    );
    hv2.bridge(
        &a2,
        "vx",
        "vxlan",
        &[
            "options:remote_ip=fd00:58::1".into(),
            "options:key=5001".into(),
        ],
    );
    hv1.bridge(
        &b1,
        "gr",
        "gre",
        &[
            "options:remote_ip=fd00:58::2".into(),
            "options:key=9".into(),
            "options:csum=true".into(),
        ],
    );
    hv2.bridge(
        &b2,
        "gr",
        "gre",
        &[
            "options:remote_ip=fd00:58::1".into(),
            "options:key=9".into(),
        ],
    );
    assert!(a1.ping(&a2.ip), "VXLAN over IPv6");
    assert!(b2.ping(&b1.ip), "GRE over IPv6");
    assert!(!a1.ping(&b2.ip), "VNI 5001 reached GRE key 9");
    tcp_transfer(&a1, &a2, 4 << 20);
    tcp_transfer(&b1, &b2, 4 << 20);
    overflow_is_counted(&hv1, &br1, "vx", &a1, &a2);
}

#[test]
fn vxlan_over_ipv6_interoperates_with_the_linux_kernel() {
    let (hv1, hv2) = (Hv::new("hv1"), Hv::new("kv"));
    let (_, ul2) = underlay6(&hv1.ns, "fd00:59::1/64", &hv2.ns, "fd00:59::2/64");
    // As over IPv4: the veth must compute what a NIC would (see the IPv4 test).
    hv2.ns.exec_ok(&format!("ethtool -K {ul2} tx off"));
    let a1 = Host::new_in("a1", "10.0.59.1/24", &hv1.ns);
    let a2 = Host::new_in("a2", "10.0.59.2/24", &hv2.ns);
    for h in [&a1, &a2] {
        h.ns.exec_ok("ip link set eth0 mtu 1430");
    }
    hv1.bridge(
        &a1,
        "vx",
        "vxlan",
        &[
            "options:remote_ip=fd00:59::2".into(),
            "options:key=5001".into(),
        ],
    );
    hv2.ns.exec_ok(
        "ip link add vx0 type vxlan id 5001 remote fd00:59::1 local fd00:59::2 dstport 4789 \
         && ip link add kbr type bridge && ip link set vx0 master kbr \
         && ip link set vx0 up && ip link set kbr up",
    );
    hv2.ns
        .exec_ok(&format!("ip link set {} master kbr", a2.port));
    assert!(a1.ping(&a2.ip), "our VXLAN/IPv6 to the kernel's");
    assert!(a2.ping(&a1.ip), "the kernel's VXLAN/IPv6 to ours");
    tcp_transfer(&a1, &a2, 4 << 20);
    tcp_transfer(&a2, &a1, 4 << 20);
}

/// VXLAN carries TCP super-frames whole across the host: the sending hypervisor
/// hands each segmented super-frame to the kernel as one UDP GSO datagram (the
/// underlay veth counts a few packets per super-frame, not one per segment), and the
/// receiving one merges the segments back (the VM's port sends frames far larger
/// than the inner MTU). The bytes arrive intact and in order, and the GSO datagrams
/// carry the port's TOS and TTL, don't-fragment, a dynamic source port and the VNI.
#[test]
fn vxlan_carries_tcp_super_frames_whole_across_the_underlay() {
    super_frames_cross_whole(false);
}

/// The same over an IPv6 underlay (its own pool of sending sockets).
#[test]
fn vxlan_over_ipv6_carries_tcp_super_frames_whole() {
    super_frames_cross_whole(true);
}

fn super_frames_cross_whole(v6: bool) {
    let (hv1, hv2) = (Hv::new("hv1"), Hv::new("hv2"));
    let (ul1, _) = if v6 {
        underlay6(&hv1.ns, "fd00:61::1/64", &hv2.ns, "fd00:61::2/64")
    } else {
        underlay(&hv1.ns, "192.168.61.1/24", &hv2.ns, "192.168.61.2/24")
    };
    let (ip1, ip2) = if v6 {
        ("fd00:61::1", "fd00:61::2")
    } else {
        ("192.168.61.1", "192.168.61.2")
    };
    // The inner MTU the underlay's 1500 allows: 50 bytes of outer headers over
    // IPv4, 70 over IPv6; the TCP payload of a segment is 40 bytes less.
    let mtu = if v6 { 1430 } else { 1450 };
    let a1 = vm("a1", "10.0.61.1/24", &hv1);
    let a2 = vm("a2", "10.0.61.2/24", &hv2);
    for h in [&a1, &a2] {
        h.ns.exec_ok(&format!("ip link set eth0 mtu {mtu}"));
    }
    let vx = |remote: &str| {
        vec![
            format!("options:remote_ip={remote}"),
            "options:key=61".to_string(),
        ]
    };
    let mut opts = vx(ip2);
    opts.extend(["options:tos=0x20".to_string(), "options:ttl=9".to_string()]);
    hv1.bridge(&a1, "vx", "vxlan", &opts);
    let br2 = hv2.bridge(&a2, "vx", "vxlan", &vx(ip1));
    assert!(a1.ping(&a2.ip));
    // One GSO datagram as it crosses the underlay (a veth carries it unsegmented).
    let cap = capture_vxlan(&hv1.ns, &ul1, ip1.parse().unwrap(), 3000, 2000);
    let sent_before = link_stat(&hv1.ns, &ul1, "tx_packets");
    let to_vm = |what| stat(&hv2, &br2, &a2.port, what);
    let (frames_before, bytes_before) = (to_vm("tx_packets"), to_vm("tx_bytes"));
    let len = 32 << 20;
    tcp_transfer(&a1, &a2, len);
    let outer = cap
        .join()
        .unwrap()
        .expect("no GSO datagram on the underlay");
    check_outer(&outer, 61);
    let segments = (len / (mtu - 52)) as u64;
    let underlay_packets = link_stat(&hv1.ns, &ul1, "tx_packets") - sent_before;
    assert!(
        underlay_packets * 4 < segments,
        "{underlay_packets} packets on the underlay for {segments} segments: not sent as GSO"
    );
    let frames = to_vm("tx_packets") - frames_before;
    let bytes = to_vm("tx_bytes") - bytes_before;
    assert!(
        bytes / frames > 4 * 1500,
        "{frames} frames of {bytes} bytes to the VM: segments were not merged"
    );
}

/// A UDP socket bound to `addr` (in the calling thread's namespace) whose every send
/// is cut into datagrams of `seg` bytes by the kernel (UDP GSO): a peer's coalesced
/// burst.
fn gso_sender(addr: &str, seg: usize) -> UdpSocket {
    use std::os::fd::AsRawFd;
    let s = UdpSocket::bind(addr).unwrap();
    let seg = seg as libc::c_int;
    // SAFETY: setsockopt with a valid int for the call's duration.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_UDP,
            103, // UDP_SEGMENT
            &seg as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    assert_eq!(r, 0, "UDP_SEGMENT");
    s
}

/// A burst of one flow's wire-sized frames — not a super-frame — leaves as UDP GSO
/// datagrams of up to a batch of frames each, not one packet per frame: a VM's UDP
/// stream (here) or TCP with its offloads off. The receiving daemon delivers every
/// frame in order at its size; TCP from a VM without offloads arrives intact both
/// ways.
#[test]
fn vxlan_sends_a_burst_of_one_flows_frames_as_gso_datagrams() {
    let (hv1, hv2) = (Hv::new("hv1"), Hv::new("hv2"));
    let (ul1, _) = underlay(&hv1.ns, "192.168.63.1/24", &hv2.ns, "192.168.63.2/24");
    let a1 = vm("a1", "10.0.63.1/24", &hv1);
    let a2 = vm("a2", "10.0.63.2/24", &hv2);
    let vx = |remote: &str| {
        vec![
            format!("options:remote_ip={remote}"),
            "options:key=63".to_string(),
        ]
    };
    let br1 = hv1.bridge(&a1, "vx", "vxlan", &vx("192.168.63.2"));
    hv2.bridge(&a2, "vx", "vxlan", &vx("192.168.63.1"));
    assert!(a1.ping(&a2.ip));
    // Datagram k starts with byte k; all 500 bytes but the last, 300.
    const N: usize = 100;
    let size = |k: usize| if k == N - 1 { 300 } else { 500 };
    let rcv = receive_udp(&a2.ns, &a2.ip, 6363, N);
    let before = link_stat(&hv1.ns, &ul1, "tx_packets");
    // The sending daemon is frozen while the VM sends: the burst waits in its
    // port's receive ring and is read a batch at a time.
    let frozen = Frozen::new(&hv1.d);
    let (src, dst) = (a1.ip.clone(), format!("{}:6363", a2.ip));
    a1.ns.run(move || {
        let s = UdpSocket::bind((src.as_str(), 0)).unwrap();
        for k in 0..N {
            s.send_to(&vec![k as u8; size(k)], &dst).unwrap();
        }
    });
    drop(frozen);
    let got = rcv.join().unwrap();
    let want: Vec<(u8, usize)> = (0..N).map(|k| (k as u8, size(k))).collect();
    assert_eq!(got, want, "every frame, in order, at its size");
    let underlay_packets = link_stat(&hv1.ns, &ul1, "tx_packets") - before;
    assert!(
        underlay_packets * 4 <= N as u64,
        "{underlay_packets} packets on the underlay for {N} frames: not sent as GSO"
    );
    // A burst too big for the underlay is refused frame by frame (each counted), and
    // the shorter frame sent after it in the same run still arrives.
    let errors = stat(&hv1, &br1, "vx", "tx_errors");
    a1.ns.exec_ok("ip link set eth0 mtu 1500");
    let rcv = receive_udp(&a2.ns, &a2.ip, 6364, 1);
    let frozen = Frozen::new(&hv1.d);
    let (src, dst) = (a1.ip.clone(), format!("{}:6364", a2.ip));
    a1.ns.run(move || {
        let s = UdpSocket::bind((src.as_str(), 0)).unwrap();
        for _ in 0..10 {
            s.send_to(&[1; 1472], &dst).unwrap();
        }
        s.send_to(&[2; 100], &dst).unwrap();
    });
    drop(frozen);
    assert_eq!(rcv.join().unwrap(), [(2, 100)], "the short frame");
    assert_eq!(stat(&hv1, &br1, "vx", "tx_errors") - errors, 10);
    a1.ns.exec_ok("ip link set eth0 mtu 1450");
    for h in [&a1, &a2] {
        h.ns.exec_ok("ethtool -K eth0 tx off tso off gso off");
    }
    tcp_transfer(&a1, &a2, 8 << 20);
    tcp_transfer(&a2, &a1, 8 << 20);
}

/// A coalesced VXLAN datagram whose segments are not one TCP stream (here inner UDP)
/// is delivered segment by segment; two of them and a plain datagram after them
/// arrive complete and in the order they were sent, whatever the batch boundaries.
#[test]
fn vxlan_delivers_coalesced_datagrams_that_do_not_merge_in_order() {
    let hv1 = Hv::new("hv1");
    let peer = Netns::new("peer");
    let (_, ulp) = underlay(&hv1.ns, "192.168.62.1/24", &peer, "192.168.62.2/24");
    let a1 = vm("a1", "10.0.62.1/24", &hv1);
    hv1.bridge(
        &a1,
        "vx",
        "vxlan",
        &[
            "options:remote_ip=192.168.62.2".into(),
            "options:key=62".into(),
        ],
    );
    let a1_mac = mac_bytes(&a1.mac);
    let a1_ip: std::net::Ipv4Addr = a1.ip.parse().unwrap();
    // Datagram k carries "k" padded to its segment's size: 3 + 3 segments + 1.
    let inner = |k: u8, len: usize| {
        let mut payload = vec![k; len];
        payload[0] = b'0' + k;
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0x62, 2], a1_mac)
            .ipv4([10, 0, 62, 2], a1_ip.octets(), 64)
            .udp(40000, 6262)
            .write(&mut f, &payload)
            .unwrap();
        let mut d = vec![0x08, 0, 0, 0, 0, 0, 62, 0];
        d.extend_from_slice(&f);
        d
    };
    let rcv = receive_udp(&a1.ns, &a1.ip, 6262, 7);
    // Resolve the hypervisor's address first: only the datagrams cross after this.
    peer.exec_ok("ping -c 1 -W 2 192.168.62.1");
    let before = link_stat(&peer, &ulp, "tx_packets");
    // The daemon is frozen while they are sent, so one receive call finds all three
    // waiting: the first is cut into segments, the others wait behind it.
    let frozen = Frozen::new(&hv1.d);
    peer.run(|| {
        let (a, b) = (inner(0, 200), inner(2, 120));
        let s = gso_sender("192.168.62.2:0", a.len());
        for first in [0u8, 3] {
            let mut d = inner(first, 200);
            d.extend_from_slice(&inner(first + 1, 200));
            d.extend_from_slice(&inner(first + 2, 120));
            assert_eq!(d.len(), 2 * a.len() + b.len());
            s.send_to(&d, "192.168.62.1:4789").unwrap();
        }
        s.send_to(&inner(6, 50), "192.168.62.1:4789").unwrap();
    });
    drop(frozen);
    // The two 3-segment datagrams crossed the underlay as one packet each.
    assert_eq!(link_stat(&peer, &ulp, "tx_packets") - before, 3);
    let got = rcv.join().unwrap();
    let order: Vec<u8> = got.iter().map(|(k, _)| k - b'0').collect();
    assert_eq!(order, [0, 1, 2, 3, 4, 5, 6], "{got:?}");
    let sizes: Vec<usize> = got.iter().map(|(_, n)| *n).collect();
    assert_eq!(sizes, [200, 200, 120, 200, 200, 120, 50]);
}

/// A coalesced datagram of one TCP stream that crosses run boundaries — a lone PSH
/// segment (the end of an earlier super-frame), then two runs of two segments each
/// ending in PSH — is merged run by run: the VM's port sends three frames, in order,
/// of one, two and two segments' payload.
#[test]
fn vxlan_merges_a_coalesced_burst_run_by_run() {
    let hv1 = Hv::new("hv1");
    let peer = Netns::new("peer");
    underlay(&hv1.ns, "192.168.64.1/24", &peer, "192.168.64.2/24");
    let a1 = vm("a1", "10.0.64.1/24", &hv1);
    hv1.bridge(
        &a1,
        "vx",
        "vxlan",
        &[
            "options:remote_ip=192.168.64.2".into(),
            "options:key=64".into(),
        ],
    );
    let a1_mac = mac_bytes(&a1.mac);
    let a1_ip: std::net::Ipv4Addr = a1.ip.parse().unwrap();
    const P: usize = 1000;
    // Segment k of the stream: VXLAN header, then TCP with P bytes of payload.
    let segment = |k: u32, psh: bool| {
        let mut f = Vec::new();
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0x64, 2], a1_mac)
            .ipv4([10, 0, 64, 2], a1_ip.octets(), 64)
            .tcp(40000, 6464, 1000 + k * P as u32, 65535)
            .ack(1);
        let b = if psh { b.psh() } else { b };
        b.write(&mut f, &[k as u8; P]).unwrap();
        let mut d = vec![0x08, 0, 0, 0, 0, 0, 64, 0];
        d.extend_from_slice(&f);
        d
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let cap = a1.ns.spawn(move || {
        let s = RawSock::open("eth0");
        ready_tx.send(()).unwrap();
        let mut got = Vec::new();
        for _ in 0..200 {
            if let Some(f) = s.recv() {
                // TCP to port 6464: (first payload byte, payload length).
                if f.len() > 54 && f[12..14] == [8, 0] && f[23] == 6 && f[36..38] == [0x19, 0x40] {
                    got.push((f[54], f.len() - 54));
                    if got.len() == 3 {
                        break;
                    }
                }
            }
        }
        got
    });
    ready_rx.recv().unwrap();
    peer.exec_ok("ping -c 1 -W 2 192.168.64.1");
    peer.run(|| {
        let mut d = Vec::new();
        for (k, psh) in [(0, true), (1, false), (2, true), (3, false), (4, true)] {
            d.extend_from_slice(&segment(k, psh));
        }
        let s = gso_sender("192.168.64.2:0", segment(0, false).len());
        s.send_to(&d, "192.168.64.1:4789").unwrap();
    });
    assert_eq!(
        cap.join().unwrap(),
        [(0, P), (1, 2 * P), (3, 2 * P)],
        "(first segment, payload bytes) of each frame to the VM"
    );
}
