//! Real KVM/TCG guests for the tests: a Debian cloud kernel and a busybox initramfs
//! (built and cached by `tests/vm/build.sh`), booted by qemu on a tap with virtio-net
//! and `vnet_hdr=on` — the offloads a real VM uses.
//!
//! The guest serves HTTP on :80, a checksumming sink on :5001 (whose data it then
//! serves as `/blob`), and a one-command shell on :7000, and prints `VM-READY` on its
//! serial console, which is the readiness check.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::{sh, uniq, wait_for, Host};

/// The kernel and initramfs, built once per test binary (cached on disk).
pub fn artifacts() -> &'static (PathBuf, PathBuf) {
    static A: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    A.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = root.join("../target/vm-v3");
        let o = Command::new("bash")
            .arg(root.join("vm/build.sh"))
            .arg(&out)
            .output()
            .expect("run tests/vm/build.sh");
        assert!(
            o.status.success(),
            "building the test guest failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        (out.join("vmlinuz"), out.join("initrd.img"))
    })
}

/// How qemu accelerates: KVM when it can boot the guest here, else TCG. Decided
/// once (a KVM boot that does not reach VM-READY in 20 s means no), or forced with
/// `VSWITCH_VM_ACCEL=kvm|tcg`.
fn accel() -> &'static str {
    static A: OnceLock<&'static str> = OnceLock::new();
    A.get_or_init(|| {
        match std::env::var("VSWITCH_VM_ACCEL").as_deref() {
            Ok("kvm") => return "kvm",
            Ok("tcg") => return "tcg",
            _ => {}
        }
        if !Path::new("/dev/kvm").exists() {
            return "tcg";
        }
        let cache = artifacts().0.with_file_name("accel");
        if let Ok(a) = std::fs::read_to_string(&cache) {
            return if a.trim() == "kvm" { "kvm" } else { "tcg" };
        }
        let log = std::env::temp_dir().join(format!("vswitch-kvm-probe-{}.log", uniq("k")));
        let mut child = qemu("kvm", "10.255.255.1/32", &log, None, None)
            .spawn()
            .expect("start qemu");
        let ok = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(200));
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("VM-READY"))
        });
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&log);
        let a = if ok { "kvm" } else { "tcg" };
        let _ = std::fs::write(&cache, a);
        a
    })
}

/// The qemu command line for a guest with address `ip`; `net` is the `-netdev`
/// value (none: no network).
fn qemu(accel: &str, ip: &str, log: &Path, net: Option<&str>, mac: Option<&str>) -> Command {
    let (kernel, initrd) = artifacts();
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-accel", accel, "-m", "384", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            &format!("console=ttyS0 quiet panic=-1 vm.ip={ip}"),
            "-serial",
            &format!("file:{}", log.display()),
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if accel == "kvm" {
        c.args(["-cpu", "host"]);
    }
    match (net, mac) {
        (Some(n), Some(m)) => {
            c.args([
                "-netdev",
                n,
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={m}"),
            ]);
        }
        _ => {
            c.args(["-net", "none"]);
        }
    }
    c
}

/// A running guest. Dropping it ends qemu (by its PID), which removes the tap.
pub struct Guest {
    child: Child,
    pub tap: String,
    pub ip: String,
    pub mac: String,
    log: PathBuf,
}

/// How the guest's tap is connected.
pub enum TapSetup<'a> {
    /// qemu creates the tap and leaves it alone (`script=no`); the test adds it.
    Plain,
    /// qemu runs these scripts with the tap's name, as `-netdev tap,script=,downscript=`
    /// does for Open vSwitch users; `path` goes first in the scripts' PATH and `env`
    /// into their environment.
    Scripts {
        up: &'a Path,
        down: &'a Path,
        path: &'a Path,
        env: &'a [(&'a str, String)],
    },
}

impl Guest {
    /// Boots a guest with address `ip_cidr` on a new tap, and waits for it.
    pub fn boot(tag: &str, ip_cidr: &str, setup: TapSetup<'_>) -> Guest {
        Guest::boot_on(&uniq(tag), ip_cidr, setup)
    }

    /// Boots a guest on a tap named `tap` (a VM started again keeps its tap's name).
    pub fn boot_on(tap: &str, ip_cidr: &str, setup: TapSetup<'_>) -> Guest {
        let tap = tap.to_string();
        let n: u32 = tap
            .bytes()
            .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
        let mac = format!(
            "52:54:00:{:02x}:{:02x}:{:02x}",
            (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8
        );
        let log = std::env::temp_dir().join(format!("vswitch-guest-{tap}.log"));
        let mut cmd;
        match setup {
            TapSetup::Plain => {
                let net = format!("tap,id=n0,ifname={tap},script=no,downscript=no,vnet_hdr=on");
                cmd = qemu(accel(), ip_cidr, &log, Some(&net), Some(&mac));
            }
            TapSetup::Scripts {
                up,
                down,
                path,
                env,
            } => {
                let net = format!(
                    "tap,id=n0,ifname={tap},script={},downscript={},vnet_hdr=on",
                    up.display(),
                    down.display()
                );
                cmd = qemu(accel(), ip_cidr, &log, Some(&net), Some(&mac));
                let old = std::env::var("PATH").unwrap_or_default();
                cmd.env("PATH", format!("{}:{old}", path.display()));
                for (k, v) in env {
                    cmd.env(k, v);
                }
            }
        }
        let child = cmd.spawn().expect("start qemu-system-x86_64");
        let g = Guest {
            child,
            tap,
            ip: ip_cidr.split('/').next().unwrap().to_string(),
            mac,
            log,
        };
        wait_for(Duration::from_secs(180), "the guest to boot", || {
            std::fs::read_to_string(&g.log)
                .ok()
                .filter(|l| l.contains("VM-READY"))
                .map(|_| ())
        });
        g
    }

    /// Connects from `via` to the guest's `port`, sends `request`, closes the
    /// sending side when `half_close` (the guest reads to end of input), and returns
    /// everything the guest sent back.
    fn exchange(&self, via: &Host, port: u16, request: Vec<u8>, half_close: bool) -> Vec<u8> {
        let ip = self.ip.clone();
        via.ns.run(move || {
            let mut s = TcpStream::connect_timeout(
                &format!("{ip}:{port}").parse().unwrap(),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("connect to the guest's port {port}: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
            s.write_all(&request).expect("send to the guest");
            if half_close {
                s.shutdown(Shutdown::Write).unwrap();
            }
            let mut out = Vec::new();
            s.read_to_end(&mut out).expect("the guest's answer");
            out
        })
    }

    /// Runs `cmd` in the guest's shell (reached over TCP from `via`, a namespace on
    /// the same segment) and returns what it printed.
    pub fn sh(&self, via: &Host, cmd: &str) -> String {
        let out = self.exchange(via, 7000, format!("{cmd}\n").into_bytes(), true);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Sends `data` to the guest's sink from `via`; returns its answer "<bytes> <md5>".
    pub fn upload(&self, via: &Host, data: Vec<u8>) -> String {
        let out = self.exchange(via, 5001, data, true);
        String::from_utf8_lossy(&out).trim().to_string()
    }

    /// `GET path` from the guest's web server, from `via`: the body.
    pub fn http_get(&self, via: &Host, path: &str) -> Vec<u8> {
        let req = format!("GET {path} HTTP/1.0\r\n\r\n").into_bytes();
        let mut out = self.exchange(via, 80, req, false);
        let at = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("HTTP header end")
            + 4;
        out.split_off(at)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("guest console kept in {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
        let _ = sh(&format!("ip link del {} 2>/dev/null", self.tap));
    }
}

/// The MD5 of `data` as `md5sum` prints it (what the guest's sink reports).
pub fn md5_hex(data: &[u8]) -> String {
    let mut c = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
