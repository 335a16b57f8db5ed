//! Test harness for vswitch integration tests: network namespaces as hosts, veth
//! pairs, the real `vswitchd` and `vsctl` binaries, and raw AF_PACKET sockets for
//! exact-bytes send and capture.
//!
//! Every object is a guard that removes what it created when dropped, including
//! during a panic, and every name carries a per-process unique suffix so parallel
//! tests and parallel runs never collide. Tests need root.

pub mod vm;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use vswitchd::netdev::sys;

/// A short name unique to this process and call, fit for an interface (≤ 15 bytes).
pub fn uniq(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = format!("{tag}{:05x}{n:x}", std::process::id() & 0xfffff);
    assert!(name.len() <= 15, "name {name} too long");
    name
}

/// Path of a workspace binary, next to the test executable's `deps/` directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built; run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// Runs a shell command, returning its output.
pub fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().expect("sh")
}

/// Runs a shell command that must succeed.
pub fn sh_ok(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A network namespace, deleted on drop (which also deletes the veth ends inside).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("vst-{}", uniq(tag));
        sh_ok(&format!("ip netns add {name}"));
        sh_ok(&format!("ip -n {name} link set lo up"));
        // Test hosts speak IPv4 only; IPv6 router/neighbour chatter would otherwise
        // show up in frame counts and captures.
        sh_ok(&format!(
            "ip netns exec {name} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1"
        ));
        Netns { name }
    }

    /// Runs `cmd` with `sh -c` inside the namespace — all of it: `a && b` must not
    /// run `b` in the root namespace.
    pub fn exec(&self, cmd: &str) -> Output {
        sh(&self.in_ns(cmd))
    }

    pub fn exec_ok(&self, cmd: &str) -> String {
        sh_ok(&self.in_ns(cmd))
    }

    fn in_ns(&self, cmd: &str) -> String {
        format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', r"'\''")
        )
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it opens live there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                enter_netns(&path);
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }

    /// Spawns a thread inside this namespace (for servers).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter_netns(&path);
            f()
        })
    }
}

fn enter_netns(path: &str) {
    let f = std::fs::File::open(path).expect("open netns");
    // SAFETY: setns on a namespace fd affects only the calling thread's network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.name));
    }
}

/// A host: a namespace whose `eth0` is the far end of a veth; the near end (`port`)
/// stays in the root namespace, ready to be added to a bridge.
pub struct Host {
    pub ns: Netns,
    pub port: String,
    pub ip: String,
    pub mac: String,
    /// The namespace `port` lives in, when not the root one.
    parent: Option<String>,
}

impl Host {
    /// `ip` is an address with prefix, e.g. "10.0.0.1/24".
    pub fn new(tag: &str, ip_cidr: &str) -> Host {
        let ns = Netns::new(tag);
        let port = uniq(tag);
        sh_ok(&format!(
            "ip link add {port} type veth peer name eth0 netns {}",
            ns.name
        ));
        ns.exec_ok(&format!("ip addr add {ip_cidr} dev eth0"));
        ns.exec_ok("ip link set eth0 up");
        let mac = ns
            .exec_ok("cat /sys/class/net/eth0/address")
            .trim()
            .to_string();
        Host {
            ns,
            port,
            ip: ip_cidr.split('/').next().unwrap().to_string(),
            mac,
            parent: None,
        }
    }

    /// A host whose switch-side port lives in namespace `parent` (a hypervisor)
    /// instead of the root namespace.
    pub fn new_in(tag: &str, ip_cidr: &str, parent: &Netns) -> Host {
        let mut h = Host::new(tag, ip_cidr);
        sh_ok(&format!("ip link set {} netns {}", h.port, parent.name));
        parent.exec_ok(&format!("ip link set {} up", h.port));
        h.parent = Some(parent.name.clone());
        h
    }

    pub fn ping(&self, ip: &str) -> bool {
        self.ns
            .exec(&format!("ping -c 3 -i 0.2 -w 10 {ip}"))
            .status
            .success()
    }

    /// Turns off checksum offload, TSO, GSO and GRO on both ends of the veth.
    pub fn offloads_off(&self) {
        let k = "tx off tso off gso off gro off";
        self.ns.exec_ok(&format!("ethtool -K eth0 {k}"));
        match &self.parent {
            Some(p) => sh_ok(&format!("ip netns exec {p} ethtool -K {} {k}", self.port)),
            None => sh_ok(&format!("ethtool -K {} {k}", self.port)),
        };
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = match &self.parent {
            Some(p) => sh(&format!("ip -n {p} link del {}", self.port)),
            None => sh(&format!("ip link del {}", self.port)),
        };
    }
}

/// A running `vswitchd` with its own run directory and configuration file.
pub struct Daemon {
    pub dir: PathBuf,
    pid: Option<i32>,
    /// The namespace it runs in (a "hypervisor"), or `None` for the root namespace.
    netns: Option<String>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_opt(None)
    }

    /// A daemon running inside `ns`, as one hypervisor among several: its devices
    /// and tunnel sockets live there. vsctl still reaches it through its socket file.
    /// A daemon with one bridge of a unique name (its internal port is a real TAP);
    /// returns both.
    pub fn with_bridge() -> (Daemon, String) {
        let d = Daemon::start();
        let br = uniq("br");
        d.vsctl_ok(&["add-br", &br]);
        (d, br)
    }

    pub fn start_in(ns: &Netns) -> Daemon {
        Daemon::start_opt(Some(ns.name.clone()))
    }

    fn start_opt(netns: Option<String>) -> Daemon {
        let dir = std::env::temp_dir().join(format!("vswitch-test-{}", uniq("d")));
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = Daemon {
            dir,
            pid: None,
            netns,
        };
        d.launch();
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("vswitchd.sock")
    }

    /// Starts the daemon with `--detach`, which returns once the socket accepts commands.
    pub fn launch(&mut self) {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("vswitchd"));
                c
            }
            None => Command::new(bin("vswitchd")),
        };
        let out = cmd
            .arg("--rundir")
            .arg(&self.dir)
            .arg("--db")
            .arg(self.dir.join("conf.json"))
            .arg("--pidfile")
            .arg(self.dir.join("vswitchd.pid"))
            .arg("--log-file")
            .arg(self.dir.join("vswitchd.log"))
            .arg("--log-level")
            .arg("debug")
            .arg("--detach")
            .output()
            .expect("run vswitchd");
        assert!(
            out.status.success(),
            "vswitchd failed to start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid: i32 = std::fs::read_to_string(self.dir.join("vswitchd.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        self.pid = Some(pid);
    }

    pub fn pid(&self) -> i32 {
        self.pid.expect("daemon not running")
    }

    fn wait_exit(&mut self, pid: i32, timeout: Duration) -> bool {
        let start = Instant::now();
        // SAFETY: kill with signal 0 only checks for existence.
        while unsafe { libc::kill(pid, 0) } == 0 {
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Sends `sig` to the daemon (by PID) and waits for it to exit.
    pub fn stop(&mut self, sig: i32) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: signalling a process we started.
            unsafe { libc::kill(pid, sig) };
            if !self.wait_exit(pid, Duration::from_secs(10)) {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                self.wait_exit(pid, Duration::from_secs(5));
            }
        }
    }

    /// Runs vsctl against this daemon.
    pub fn vsctl(&self, args: &[&str]) -> Output {
        Command::new(bin("vsctl"))
            .arg(format!("--db=unix:{}", self.socket().display()))
            .arg("--timeout=20")
            .args(args)
            .output()
            .expect("run vsctl")
    }

    /// Runs vsctl, which must succeed; returns stdout.
    pub fn vsctl_ok(&self, args: &[&str]) -> String {
        let o = self.vsctl(args);
        assert!(
            o.status.success(),
            "vsctl {args:?} failed ({}): {}\n--- log ---\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs vsctl under the name `ovs-vsctl` (a symlink), finding the daemon the way
    /// scripts do (`VSWITCH_RUNDIR`); it must succeed. Returns stdout.
    pub fn ovs_vsctl(&self, args: &[&str]) -> String {
        let o = Command::new(self.ovs_vsctl_dir().join("ovs-vsctl"))
            .env("VSWITCH_RUNDIR", &self.dir)
            .args(args)
            .output()
            .expect("run ovs-vsctl");
        assert!(
            o.status.success(),
            "ovs-vsctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A directory holding `ovs-vsctl` → vsctl, for a PATH.
    pub fn ovs_vsctl_dir(&self) -> PathBuf {
        let dir = self.dir.join("bin");
        if !dir.join("ovs-vsctl").exists() {
            std::fs::create_dir_all(&dir).unwrap();
            std::os::unix::fs::symlink(bin("vsctl"), dir.join("ovs-vsctl")).unwrap();
        }
        dir
    }

    pub fn vsctl_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--format=json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.vsctl_ok(&a)).expect("vsctl json")
    }

    /// Counters of `port` on `bridge`.
    pub fn port_stats(&self, bridge: &str, port: &str) -> Value {
        let rows = self.vsctl_json(&["port-stats", bridge]);
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["port"] == port)
            .cloned()
            .unwrap_or_else(|| panic!("no stats for {port}: {rows}"))
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("vswitchd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(libc::SIGTERM);
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("daemon log kept in {}", self.dir.display());
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FNV-1a, to compare transferred content.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// Sends `len` bytes of TCP from `client` to `server` and checks the receiver got
/// exactly them.
pub fn tcp_transfer(client: &Host, server: &Host, len: usize) {
    tcp_transfer_via(client, server, &server.ip.clone(), len)
}

/// [`tcp_transfer`] with the client connecting to `via` (an address flows translate
/// to the server's) instead of the server's own address.
pub fn tcp_transfer_via(client: &Host, server: &Host, via: &str, len: usize) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let ip = server.ip.clone();
    let srv = server.ns.spawn(move || {
        let l = TcpListener::bind((ip.as_str(), 0)).expect("bind");
        ready_tx.send(l.local_addr().unwrap().port()).unwrap();
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::with_capacity(len);
        s.read_to_end(&mut got).expect("server read");
        let h = fnv(&got);
        s.write_all(&h.to_be_bytes()).unwrap();
        (got.len(), h)
    });
    let port = ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server ready");
    let data = pattern(len, len as u64);
    let want = fnv(&data);
    let ip = via.to_string();
    let echoed = client.ns.run(move || {
        let mut s = TcpStream::connect_timeout(
            &format!("{ip}:{port}").parse().unwrap(),
            Duration::from_secs(10),
        )
        .expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(&data).expect("client write");
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut h = [0u8; 8];
        s.read_exact(&mut h).expect("server's hash");
        u64::from_be_bytes(h)
    });
    let (n, h) = srv.join().expect("server");
    assert_eq!(n, len, "receiver got {n} of {len} bytes");
    assert_eq!(h, want, "content differs");
    assert_eq!(echoed, want);
}

/// An exchange of `count` UDP datagrams of varied sizes (up to 1400 bytes), each
/// echoed back by the server and checked byte for byte. A lost datagram is resent
/// up to three times; failing that, the test fails.
pub fn udp_exchange(client: &Host, server: &Host, count: usize) {
    let ip = server.ip.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = server.ns.spawn(move || {
        let s = UdpSocket::bind((ip.as_str(), 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        ready_tx.send(s.local_addr().unwrap().port()).unwrap();
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while let Ok((len, from)) = s.recv_from(&mut buf) {
            if &buf[..len] == b"done" {
                break;
            }
            s.send_to(&buf[..len], from).unwrap();
            n += 1;
        }
        n
    });
    let port = ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let ip = server.ip.clone();
    client.ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect((ip.as_str(), port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 2048];
        for i in 0..count {
            let msg = pattern(1 + (i * 97) % 1400, i as u64);
            let mut ok = false;
            for _ in 0..4 {
                s.send(&msg).unwrap();
                if let Ok(n) = s.recv(&mut buf) {
                    assert_eq!(&buf[..n], &msg[..], "datagram {i} came back altered");
                    ok = true;
                    break;
                }
            }
            assert!(ok, "datagram {i} never came back");
        }
        s.send(b"done").unwrap();
    });
    assert!(srv.join().unwrap() >= count);
}

/// A raw AF_PACKET socket on an interface of the current thread's namespace.
pub struct RawSock {
    fd: OwnedFd,
}

impl RawSock {
    pub fn open(ifname: &str) -> RawSock {
        let idx = {
            let c = std::ffi::CString::new(ifname).unwrap();
            // SAFETY: valid C string.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        };
        assert!(idx != 0, "no interface {ifname}");
        // SAFETY: plain socket(2), checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            )
        };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_ll is valid; filled below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = idx as i32;
        // SAFETY: sll is a valid sockaddr_ll.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        let raw = fd.as_raw_fd();
        // PACKET_AUXDATA reports VLAN tags the kernel stripped; a big buffer (forced:
        // we are root) holds a burst of jumbo frames while the capture catches up.
        sys::setsockopt(raw, libc::SOL_PACKET, libc::PACKET_AUXDATA, &1i32).unwrap();
        sys::setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &(8i32 << 20)).unwrap();
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        sys::setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv).unwrap();
        RawSock { fd }
    }

    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: frame is a valid buffer of the given length.
        let r = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Next frame as it was on the wire — a VLAN tag the kernel stripped into
    /// auxiliary data is put back — or None after the 100 ms receive timeout.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65_600];
        let mut ctrl = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: zeroed msghdr is valid; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&ctrl);
        // SAFETY: msg describes writable buffers.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        // SAFETY: walking cmsgs the kernel wrote within msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                    let aux = std::ptr::read_unaligned(
                        libc::CMSG_DATA(c) as *const libc::tpacket_auxdata
                    );
                    if aux.tp_status & 0x10 != 0 && buf.len() >= 12 {
                        let tpid = if aux.tp_status & 0x40 != 0 {
                            aux.tp_vlan_tpid
                        } else {
                            0x8100
                        };
                        let mut tag = tpid.to_be_bytes().to_vec();
                        tag.extend_from_slice(&aux.tp_vlan_tci.to_be_bytes());
                        buf.splice(12..12, tag);
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Some(buf)
    }
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn mac_bytes(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// A test frame: `dst`, `src`, an optional 802.1Q tag, ethertype 0x88b5 (local
/// experimental, so captures can tell test frames from host chatter) and 46 bytes
/// of `pattern(seed)`.
pub fn frame(dst: &str, src: &str, tci: Option<u16>, seed: u64) -> Vec<u8> {
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

/// Test frames carry this (local experimental) ethertype, so captures ignore
/// the hosts' own chatter (IPv6 neighbour discovery, ...).
pub fn is_test_frame(f: &[u8]) -> bool {
    f.len() >= 18 && (f[12..14] == [0x88, 0xb5] || (f[12] == 0x81 && f[16..18] == [0x88, 0xb5]))
}

/// Sends `frames` from `from` and returns, for each host in `to`, the test frames it saw.
pub fn deliver(from: &Host, frames: &[Vec<u8>], to: &[&Host]) -> Vec<Vec<Vec<u8>>> {
    let mut caps = Vec::new();
    for h in to {
        let (ready_tx, ready_rx) = mpsc::channel();
        caps.push(h.ns.spawn(move || {
            let s = RawSock::open("eth0");
            ready_tx.send(()).unwrap();
            let mut got = Vec::new();
            let mut idle = 0;
            // Stop after 500 ms without a test frame.
            while idle < 5 {
                match s.recv() {
                    Some(f) if is_test_frame(&f) => {
                        got.push(f);
                        idle = 0;
                    }
                    Some(_) => {}
                    None => idle += 1,
                }
            }
            got
        }));
        ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }
    let frames = frames.to_vec();
    from.ns.run(move || {
        let s = RawSock::open("eth0");
        for f in &frames {
            s.send(f).unwrap();
        }
    });
    caps.into_iter().map(|c| c.join().unwrap()).collect()
}

pub fn untag(f: &[u8]) -> Vec<u8> {
    let mut v = f[..12].to_vec();
    v.extend_from_slice(&f[16..]);
    v
}

pub fn with_tag(f: &[u8], tci: u16) -> Vec<u8> {
    let mut v = f[..12].to_vec();
    v.extend_from_slice(&[0x81, 0x00]);
    v.extend_from_slice(&tci.to_be_bytes());
    v.extend_from_slice(&f[12..]);
    v
}

/// Receives up to `count` UDP datagrams on `ip`, port `port`, in namespace `ns`
/// (waiting at most 5 s for each): their first bytes and sizes, in arrival order.
/// The socket is bound when this returns.
pub fn receive_udp(
    ns: &Netns,
    ip: &str,
    port: u16,
    count: usize,
) -> std::thread::JoinHandle<Vec<(u8, usize)>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let ip = ip.to_string();
    let rcv = ns.spawn(move || {
        let s = UdpSocket::bind((ip.as_str(), port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        ready_tx.send(()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = s.recv(&mut buf) {
            got.push((buf[0], n));
            if got.len() == count {
                break;
            }
        }
        got
    });
    ready_rx.recv().unwrap();
    rcv
}

/// Datagram `k` of a test burst of `n` (issue 3's UDP runs): 18 bytes of the value
/// `k` (a 64-byte frame), the last one 10 bytes — a shorter last datagram, as a
/// run may end with. The guest's `udptool send DST PORT n 18 10 ..` sends the same.
pub fn burst_payload(k: usize, n: usize) -> Vec<u8> {
    vec![k as u8; if k + 1 == n { 10 } else { 18 }]
}

/// What [`receive_udp`] returns for a whole burst of `n`.
pub fn burst_received(n: usize) -> Vec<(u8, usize)> {
    (0..n)
        .map(|k| (k as u8, burst_payload(k, n).len()))
        .collect()
}

/// Sends a burst of `n` datagrams from `from` to `to:port` while the daemon is
/// frozen, so that they wait in its receive ring and leave in batches.
pub fn udp_burst(d: &Daemon, from: &Host, to: &str, port: u16, n: usize) {
    let frozen = Frozen::new(d);
    let (src, dst) = (from.ip.clone(), format!("{to}:{port}"));
    from.ns.run(move || {
        let s = UdpSocket::bind((src.as_str(), 0)).unwrap();
        for k in 0..n {
            s.send_to(&burst_payload(k, n), &dst).unwrap();
        }
    });
    drop(frozen);
}

/// Stops a daemon this test started until dropped (even when the test fails).
pub struct Frozen(i32);

impl Frozen {
    pub fn new(d: &Daemon) -> Frozen {
        // SAFETY: a signal to the daemon this test started.
        unsafe { libc::kill(d.pid(), libc::SIGSTOP) };
        Frozen(d.pid())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as in `Frozen::new`.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// A counter of interface `link` in namespace `ns`, as the kernel keeps it.
pub fn link_stat(ns: &Netns, link: &str, what: &str) -> u64 {
    ns.exec_ok(&format!("cat /sys/class/net/{link}/statistics/{what}"))
        .trim()
        .parse()
        .unwrap()
}

/// [`link_stat`] for a link in the tests' own (root) namespace.
pub fn root_link_stat(link: &str, what: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{link}/statistics/{what}"))
        .unwrap_or_else(|e| panic!("{link}'s {what}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// Adds an internal port (a TAP the daemon creates) with a unique name; returns it.
pub fn add_internal(d: &Daemon, br: &str) -> String {
    let p = uniq("p");
    d.vsctl_ok(&[
        "add-port",
        br,
        &p,
        "--",
        "set",
        "Interface",
        &p,
        "type=internal",
    ]);
    p
}
