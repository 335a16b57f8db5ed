//! Issue 2: a switch you can ping through. Every test runs the real daemon over real
//! namespaces, veths and TAPs (root required).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use vswitch_tests::*;

/// A daemon with a bridge (unique name: its internal port is a real TAP) and `n`
/// hosts 10.0.0.1.. on it.
fn switch_with_hosts(n: usize) -> (Daemon, String, Vec<Host>) {
    let (d, br) = Daemon::with_bridge();
    let hosts: Vec<Host> = (0..n)
        .map(|i| Host::new(&format!("h{i}"), &format!("10.0.0.{}/24", i + 1)))
        .collect();
    for h in &hosts {
        d.vsctl_ok(&["add-port", &br, &h.port]);
    }
    (d, br, hosts)
}

fn stat(d: &Daemon, br: &str, port: &str, key: &str) -> u64 {
    d.port_stats(br, port)[key].as_u64().unwrap()
}

/// Counts frames addressed to any of `macs` seen on `host`'s eth0 while `during` runs.
fn count_unicast_seen(host: &Host, macs: &[[u8; 6]], during: impl FnOnce()) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let s2 = stop.clone();
    let macs = macs.to_vec();
    let t = host.ns.spawn(move || {
        let sock = RawSock::open("eth0");
        ready_tx.send(()).unwrap();
        let mut n = 0;
        while !s2.load(Ordering::Relaxed) {
            if let Some(f) = sock.recv() {
                if f.len() >= 6 && macs.iter().any(|m| f[..6] == m[..]) {
                    n += 1;
                }
            }
        }
        n
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    during();
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap()
}

fn forwarding_between_two_hosts(offloads_off: bool) {
    let (d, br, h) = switch_with_hosts(3);
    let (a, b, c) = (&h[0], &h[1], &h[2]);
    if offloads_off {
        for x in [a, b, c] {
            x.offloads_off();
        }
    }
    assert!(a.ping(&b.ip), "ping a → b failed\n{}", d.log_tail());

    // Both MACs learned, on the right ports.
    let fdb = d.vsctl_json(&["fdb-show", &br]);
    for x in [a, b] {
        assert!(
            fdb.as_array()
                .unwrap()
                .iter()
                .any(|e| e["mac"] == x.mac.as_str() && e["port_name"] == x.port.as_str()),
            "{} not learned on {}: {fdb}",
            x.mac,
            x.port
        );
    }

    // Once learned, unicast between a and b never reaches c; a frame to an unknown
    // MAC does (the control that proves the capture works).
    let unknown = [0x02, 0, 0, 0x5e, 0x12, 0x34];
    let seen = count_unicast_seen(c, &[mac_bytes(&a.mac), mac_bytes(&b.mac)], || {
        tcp_transfer(a, b, 16 << 20);
        udp_exchange(a, b, 200);
        assert!(b.ping(&a.ip));
    });
    assert_eq!(seen, 0, "unicast between a and b was flooded to c");
    let flooded = count_unicast_seen(c, &[unknown], || {
        a.ns.run(|| {
            let s = RawSock::open("eth0");
            let mut f = vec![0u8; 60];
            f[..6].copy_from_slice(&unknown);
            f[6..12].copy_from_slice(&mac_bytes(&a.mac));
            f[12..14].copy_from_slice(&[0x88, 0xb5]);
            for _ in 0..5 {
                s.send(&f).unwrap();
            }
        });
        std::thread::sleep(Duration::from_millis(200));
    });
    assert!(
        flooded >= 1,
        "a frame to an unknown MAC was not flooded to c"
    );

    // Counters saw the transfer.
    assert!(stat(&d, &br, &a.port, "rx_bytes") >= 16 << 20);
    assert!(stat(&d, &br, &b.port, "tx_bytes") >= 16 << 20);
}

#[test]
fn ping_tcp_udp_with_default_offloads() {
    forwarding_between_two_hosts(false);
}

#[test]
fn ping_tcp_udp_with_offloads_off() {
    forwarding_between_two_hosts(true);
}

/// A port that cannot take offloaded frames (`options:offload=false`) makes the
/// switch complete checksums and segment TSO super-frames itself.
/// `options:rx_ring=false` reads a port with `recvmmsg` instead of a receive ring:
/// forwarding (incl. super-frames and a VLAN tag the veth strips into auxiliary data)
/// must work the same; a value other than true/false is refused, naming the column.
#[test]
fn ports_without_receive_ring_forward_the_same() {
    let (d, br, h) = switch_with_hosts(2);
    let (a, b) = (&h[0], &h[1]);
    let bad = d.vsctl(&["set", "Interface", &a.port, "options:rx_ring=maybe"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("options:rx_ring"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let mode = |p: &str| d.vsctl_ok(&["get", "Interface", p, "status:rx_mode"]);
    assert_eq!(mode(&a.port).trim(), "ring");
    for x in [a, b] {
        d.vsctl_ok(&["set", "Interface", &x.port, "options:rx_ring=false"]);
    }
    assert_eq!(
        mode(&a.port).trim(),
        "recvmmsg",
        "the device was not re-opened"
    );
    assert!(a.ping(&b.ip), "ping a → b failed\n{}", d.log_tail());
    tcp_transfer(a, b, 16 << 20);
    udp_exchange(a, b, 100);
    let tagged = frame(&b.mac, &a.mac, Some(0x2007), 7);
    let got = deliver(a, std::slice::from_ref(&tagged), &[b]).remove(0);
    assert_eq!(got, vec![tagged], "the tagged frame did not cross as sent");
    assert_eq!(stat(&d, &br, &a.port, "rx_errors"), 0);
}

/// Frames larger than a receive-ring frame (2 KiB) reach the datapath another way
/// (the kernel queues them on the socket and marks the ring frame): jumbo frames
/// must cross whole, and interleaved with small frames they must keep their order.
#[test]
fn jumbo_frames_cross_whole_and_in_order_with_small_ones() {
    let (d, br, h) = switch_with_hosts(2);
    let (a, b) = (&h[0], &h[1]);
    for x in [a, b] {
        x.offloads_off();
        x.ns.exec_ok("ip link set eth0 mtu 9000");
        sh_ok(&format!("ip link set {} mtu 9000", x.port));
    }
    assert!(a.ping(&b.ip), "ping a → b failed\n{}", d.log_tail());
    let big =
        a.ns.exec(&format!("ping -c 3 -i 0.2 -w 10 -M do -s 8000 {}", b.ip));
    assert!(
        big.status.success(),
        "8000-byte ping (DF) failed: {}\n{}",
        String::from_utf8_lossy(&big.stdout),
        d.log_tail()
    );
    // Every TCP segment is a 9000-byte frame here.
    tcp_transfer(a, b, 8 << 20);

    // 60 frames alternating 8000 and 64 bytes, numbered; all arrive, in order, intact.
    let frames: Vec<Vec<u8>> = (0..60u64)
        .map(|i| {
            let mut f = frame(&b.mac, &a.mac, None, i);
            f.extend_from_slice(&pattern(if i % 2 == 0 { 7_940 } else { 4 }, i));
            f
        })
        .collect();
    let got = deliver(a, &frames, &[b]).remove(0);
    assert_eq!(got.len(), frames.len(), "frames lost or added");
    for (i, (g, f)) in got.iter().zip(&frames).enumerate() {
        assert!(
            g == f,
            "frame {i} ({} bytes) arrived as {} bytes or altered or out of order",
            f.len(),
            g.len()
        );
    }
    assert_eq!(stat(&d, &br, &a.port, "rx_errors"), 0);
}

#[test]
fn switch_segments_and_checksums_for_ports_without_offload() {
    let (d, br, h) = switch_with_hosts(2);
    let (a, b) = (&h[0], &h[1]);
    d.vsctl_ok(&["set", "Interface", &b.port, "options:offload=false"]);
    assert!(a.ping(&b.ip));
    let before = stat(&d, &br, &b.port, "tx_packets");
    tcp_transfer(a, b, 16 << 20);
    udp_exchange(a, b, 100);
    // 16 MiB in frames of at most 1514 bytes: at least 11k frames left through b's port,
    // while far fewer super-frames arrived on a's.
    let sent = stat(&d, &br, &b.port, "tx_packets") - before;
    assert!(
        sent >= (16 << 20) / 1448,
        "only {sent} frames sent: not segmented?"
    );
    assert_eq!(stat(&d, &br, &b.port, "tx_errors"), 0);
}

#[test]
fn internal_port_reaches_namespace_and_del_port_removes_tap() {
    let (d, br, h) = switch_with_hosts(1);
    let a = &h[0];
    let p0 = add_internal(&d, &br);
    assert!(
        sh(&format!("ip link show {p0}")).status.success(),
        "TAP {p0} not created"
    );
    // Internal ports come up on creation (README): an address is all the host needs.
    let flags = sh_ok(&format!("cat /sys/class/net/{p0}/flags"));
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert!(
        flags & libc::IFF_UP as u32 != 0,
        "internal port {p0} is down"
    );
    sh_ok(&format!(
        "ip addr add 10.0.0.100/24 dev {p0} && ip link set {p0} up"
    ));
    assert!(
        a.ping("10.0.0.100"),
        "namespace cannot reach host via internal port"
    );
    let out = sh(&format!("ping -c 3 -i 0.2 -w 10 -I {p0} {}", a.ip));
    assert!(
        out.status.success(),
        "host cannot reach namespace via internal port"
    );
    d.vsctl_ok(&["del-port", &br, &p0]);
    assert!(
        !sh(&format!("ip link show {p0}")).status.success(),
        "TAP {p0} still exists after del-port"
    );
}

#[test]
fn patch_ports_join_two_bridges() {
    let d = Daemon::start();
    let a = Host::new("pa", "10.0.1.1/24");
    let b = Host::new("pb", "10.0.1.2/24");
    let (p1, p2) = (uniq("pt"), uniq("pt"));
    let (br0, br1) = (uniq("br"), uniq("br"));
    d.vsctl_ok(&["add-br", &br0, "--", "add-br", &br1]);
    d.vsctl_ok(&["add-port", &br0, &a.port, "--", "add-port", &br1, &b.port]);
    d.vsctl_ok(&[
        "add-port",
        &br0,
        &p1,
        "--",
        "set",
        "Interface",
        &p1,
        "type=patch",
        &format!("options:peer={p2}"),
        "--",
        "add-port",
        &br1,
        &p2,
        "--",
        "set",
        "Interface",
        &p2,
        "type=patch",
        &format!("options:peer={p1}"),
    ]);
    assert!(
        a.ping(&b.ip),
        "ping across the patch pair failed\n{}",
        d.log_tail()
    );
    tcp_transfer(&a, &b, 4 << 20);
    let show = d.vsctl_ok(&["show"]);
    assert!(show.contains(&format!("options: {{peer={p2}}}")), "{show}");
    assert!(d.port_stats(&br0, &p1)["tx_packets"].as_u64().unwrap() > 0);
}

#[test]
fn restart_after_sigkill_restores_bridges_and_forwarding() {
    let (mut d, br, h) = switch_with_hosts(2);
    let p0 = add_internal(&d, &br);
    assert!(h[0].ping(&h[1].ip));
    let before = d.vsctl_ok(&["show"]);
    d.stop(libc::SIGKILL);
    // The kernel removes our TAPs with the process.
    wait_for(Duration::from_secs(5), "TAP removal", || {
        (!sh(&format!("ip link show {p0}")).status.success()).then_some(())
    });
    d.launch();
    assert_eq!(d.vsctl_ok(&["show"]), before, "configuration not restored");
    assert!(
        sh(&format!("ip link show {p0}")).status.success(),
        "internal port not re-created"
    );
    assert!(h[0].ping(&h[1].ip), "no forwarding after restart");
}

#[test]
fn missing_device_is_reported_then_attached_when_it_appears() {
    let (d, br) = Daemon::with_bridge();
    let a = Host::new("ma", "10.0.2.1/24");
    d.vsctl_ok(&["add-port", &br, &a.port]);
    let late_name = uniq("late");
    d.vsctl_ok(&["add-port", &br, &late_name]);
    let st = d.vsctl_json(&["show"]);
    assert_eq!(st["status"][&late_name]["ofport"], -1);
    let err = st["status"][&late_name]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("No such device"), "{err}");
    assert!(d
        .vsctl_ok(&["show"])
        .contains("error: \"could not open network device"));

    // The device appears: a host whose root-side veth end has that name.
    let ns = Netns::new("mb");
    sh_ok(&format!(
        "ip link add {late_name} type veth peer name eth0 netns {}",
        ns.name
    ));
    ns.exec_ok("ip addr add 10.0.2.2/24 dev eth0");
    ns.exec_ok("ip link set eth0 up");
    wait_for(Duration::from_secs(10), "late device to attach", || {
        let st = d.vsctl_json(&["show"]);
        (st["status"][&late_name]["ofport"].as_i64() > Some(0)).then_some(())
    });
    assert!(a.ping("10.0.2.2"));
    let _ = sh(&format!("ip link del {late_name}"));
}

/// A device removed under its attached port (a VM's tap when the VM stops): the port
/// reports it, the others keep forwarding, and the datapath goes back to sleep — the
/// socket's error is taken, not left to wake the thread forever.
#[test]
fn a_device_removed_under_its_port_leaves_the_datapath_idle() {
    let (d, _br, h) = switch_with_hosts(3);
    let (a, b, c) = (&h[0], &h[1], &h[2]);
    assert!(a.ping(&c.ip));
    sh_ok(&format!("ip link del {}", c.port));
    wait_for(
        Duration::from_secs(10),
        "the removed device reported",
        || {
            let st = d.vsctl_json(&["show"]);
            st["status"][&c.port]["error"].as_str().map(|_| ())
        },
    );
    assert!(a.ping(&b.ip), "the other ports stopped forwarding");
    // The daemon's CPU time (user + system, in clock ticks) over one idle second.
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", d.pid())).unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after_comm.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let before = ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = ticks() - before;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        used * 4 < hz,
        "the idle daemon used {used} of {hz} ticks in a second: something keeps waking it"
    );
}

#[test]
fn garbage_frames_are_counted_and_dropped_while_forwarding_continues() {
    let (d, br, h) = switch_with_hosts(2);
    let (a, b) = (&h[0], &h[1]);
    assert!(a.ping(&b.ip));
    let dropped_before = stat(&d, &br, &a.port, "rx_dropped");
    // Frames with a multicast source address are invalid: dropped and counted.
    // The rest is random garbage of every length from a bare header up.
    let bad_src = 50u64;
    a.ns.run(|| {
        let s = RawSock::open("eth0");
        for i in 0..bad_src as usize {
            let mut f = pattern(14 + i * 29 % 1500, i as u64);
            f[6] |= 1; // group bit in the source MAC
            s.send(&f).unwrap();
        }
        for i in 0..200usize {
            let f = pattern(14 + (i * 7919) % 1500, 1000 + i as u64);
            s.send(&f).unwrap();
        }
        // Frames shorter than an Ethernet header: the kernel refuses to send them on
        // a veth (dev_validate_header), so they can never reach the switch this way.
        assert!(s.send(&[0u8; 5]).is_err());
    });
    assert!(
        a.ping(&b.ip),
        "forwarding stopped after garbage\n{}",
        d.log_tail()
    );
    tcp_transfer(a, b, 1 << 20);
    let dropped = stat(&d, &br, &a.port, "rx_dropped") - dropped_before;
    assert!(
        dropped >= bad_src,
        "only {dropped} of {bad_src} invalid frames counted as dropped"
    );
    assert!(
        sh(&format!("kill -0 {}", d.pid())).status.success(),
        "daemon died"
    );
}

fn raw_request(d: &Daemon, line: &[u8]) -> Value {
    let mut s = UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The daemon answers an oversized request and hangs up before reading it all;
    // the answer is still there to read after our write fails.
    let _ = s.write_all(line);
    let mut r = BufReader::new(s);
    let mut answer = String::new();
    r.read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("bad answer {answer:?}: {e}"))
}

#[test]
fn malformed_control_requests_get_errors_and_daemon_keeps_serving() {
    let (d, br) = Daemon::with_bridge();
    let v = raw_request(&d, b"{ this is not json\n");
    assert_eq!(v["error"]["code"], -32700);
    let v = raw_request(&d, b"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"fly\"}\n");
    assert_eq!(
        (v["id"].as_i64(), v["error"]["code"].as_i64()),
        (Some(7), Some(-32601))
    );
    let v = raw_request(&d, b"{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"transact\",\"params\":{\"ops\":[{\"op\":\"explode\"}]}}\n");
    assert_eq!(v["error"]["code"], -32602);
    let v = raw_request(&d, b"[1,2,3]\n");
    assert_eq!(v["error"]["code"], -32600);
    // Oversized: past the limit, without a newline.
    let mut big = vec![b'x'; vswitchd::rpc::MAX_REQUEST_BYTES + 1024];
    big.push(b'\n');
    let v = raw_request(&d, &big);
    assert_eq!(v["error"]["code"], -32600);
    assert!(v["error"]["message"].as_str().unwrap().contains("exceeds"));
    // Still serving, nothing changed.
    assert_eq!(d.vsctl_ok(&["list-br"]), format!("{br}\n"));
}

#[test]
fn vsctl_errors_name_the_problem_and_change_nothing() {
    let d = Daemon::start();
    // Names sort as b0 < b1, so list-br's order is known.
    let (b0, b1) = (uniq("br"), uniq("bs"));
    d.vsctl_ok(&["add-br", &b0]);
    let conf = std::fs::read(d.dir.join("conf.json")).unwrap();
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let o = d.vsctl(&["add-port", "nosuchbr", "p1"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "vsctl: no bridge named nosuchbr\n");
    // A chain whose last command fails applies nothing.
    let o = d.vsctl(&[
        "add-br",
        &b1,
        "--",
        "add-port",
        &b1,
        "x1",
        "--",
        "list-ports",
        "br9",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "vsctl: no bridge named br9\n");
    assert_eq!(d.vsctl_ok(&["list-br"]), format!("{b0}\n"));
    assert_eq!(
        std::fs::read(d.dir.join("conf.json")).unwrap(),
        conf,
        "config file changed"
    );
    let o = d.vsctl(&["set", "Interface", &b0, "colour=blue"]);
    assert_eq!(
        stderr(&o),
        "vsctl: table Interface has no column named colour\n"
    );
    let o = d.vsctl(&["frobnicate"]);
    assert!(stderr(&o).contains("unknown command 'frobnicate'"));

    // --may-exist / --if-exists, as ovs-vsctl.
    let o = d.vsctl(&["add-br", &b0]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"));
    d.vsctl_ok(&["--may-exist", "add-br", &b0]);
    d.vsctl_ok(&["add-port", &b0, "q1"]);
    assert!(!d.vsctl(&["add-port", &b0, "q1"]).status.success());
    d.vsctl_ok(&["--may-exist", "add-port", &b0, "q1"]);
    d.vsctl_ok(&["add-br", &b1]);
    let o = d.vsctl(&["--may-exist", "add-port", &b1, "q1"]);
    assert!(stderr(&o).contains(&format!("is actually attached to bridge {b0}")));
    assert!(!d.vsctl(&["del-port", "nosuch"]).status.success());
    d.vsctl_ok(&["--if-exists", "del-port", "nosuch"]);
    d.vsctl_ok(&["--if-exists", "del-br", "nosuch"]);
    assert!(!d.vsctl(&["del-br", "nosuch"]).status.success());

    // Queries and exit codes.
    assert_eq!(d.vsctl(&["br-exists", &b0]).status.code(), Some(0));
    assert_eq!(d.vsctl(&["br-exists", "nosuch"]).status.code(), Some(2));
    assert_eq!(d.vsctl_ok(&["list-ports", &b0]), "q1\n");
    assert_eq!(d.vsctl_ok(&["port-to-br", "q1"]), format!("{b0}\n"));
    assert_eq!(d.vsctl_json(&["list-br"]), serde_json::json!([b0, b1]));
    d.vsctl_ok(&["del-br", &b1]);
    assert_eq!(d.vsctl_ok(&["list-br"]), format!("{b0}\n"));

    // No daemon: a clear message, quickly, no hang.
    let o = std::process::Command::new(bin("vsctl"))
        .args(["--db=unix:/nonexistent/vswitchd.sock", "show"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o)
        .contains("cannot connect to vswitchd at /nonexistent/vswitchd.sock (is it running?)"));
}

#[test]
fn sigterm_removes_created_devices_and_keeps_config() {
    let (mut d, br, h) = switch_with_hosts(1);
    let p0 = add_internal(&d, &br);
    assert!(sh(&format!("ip link show {p0}")).status.success());
    d.stop(libc::SIGTERM);
    assert!(
        !sh(&format!("ip link show {p0}")).status.success(),
        "TAP survived SIGTERM"
    );
    assert!(
        !sh(&format!("ip link show {br}")).status.success(),
        "bridge's internal port survived SIGTERM"
    );
    assert!(!d.socket().exists(), "control socket left behind");
    let conf = std::fs::read_to_string(d.dir.join("conf.json")).unwrap();
    assert!(
        conf.contains(&p0) && conf.contains(&h[0].port),
        "config lost: {conf}"
    );
}
