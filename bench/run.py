#!/usr/bin/env python3
"""Side-by-side datapath benchmark: vswitchd vs Open vSwitch (userspace datapath)
vs the Linux bridge vs a direct veth pair, on the same topology, in one run.

Topology (built and removed by this script; names carry the PID):

    ns A: eth0 ──veth── va ─┐                 ┌─ vb ──veth── eth0 :ns B
    10.199.0.1              └─ switch under test ┘              10.199.0.2

("veth" joins A and B directly: the ceiling of the machine.)

Switches run alternately (A B C ... A B C ...), --reps times each; the table shows
medians. Metrics: 64-byte UDP packets/s delivered (sendmmsg generator, recvmmsg
sink) and TCP throughput (iperf3), each with veth offloads at their defaults and with
tx/tso/gso/gro off, UDP round-trip latency p50/p99, the switch's CPU seconds per
million packets delivered, and its RSS (idle and after the runs). Before each run
the machine's idle CPU is sampled; a run that starts on a busy machine is flagged.

With --kinds vxlan-vswitchd,vxlan-kernel,vxlan-ovs, A and B sit behind two hypervisor
namespaces joined by an underlay veth and the switches tunnel over VXLAN (over IPv6
with --underlay6).

Traffic stays between the namespaces this script creates. Run as root:  sudo bench/run.py
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
PID = os.getpid()
NS_A, NS_B = f"vsb-a-{PID}", f"vsb-b-{PID}"
VA, VB = f"vsba{PID % 100000}", f"vsbb{PID % 100000}"
IP_A, IP_B = "10.199.0.1", "10.199.0.2"
KINDS = ["vswitchd", "ovs", "ovs-tso", "bridge", "veth"]
# Extra cases, by --kinds: two bridges joined by a veth, untagged and as
# access→trunk→access (VLAN 10), to compare tagged with untagged forwarding; and
# one bridge with 10 000 installed flows, to compare with `vswitchd`.
EXTRA_KINDS = ["vswitchd-2br", "vswitchd-vlan", "vswitchd-10k", "nullfwd"]
# `nullfwd`: bench/src/bin/nullfwd.rs — vswitchd's device code (rings, sendmmsg) with
# no switching at all: the most any switch built on these sockets reaches here.
# `vswitchd-base`: the same case as `vswitchd` run from the binaries in --base-bin (an
# earlier build), alternating with the current one: before/after for a datapath change.
BASE_BIN = None
# --profile FILE: `perf record -g` of vswitchd during its 64 B UDP test.
PROFILE = None
# VXLAN between two hypervisor namespaces (A behind HV1, B behind HV2, an underlay veth
# between the hypervisors; inner MTU 1450): our daemon on each hypervisor, the
# kernel's VXLAN device in a Linux bridge on each, Open vSwitch netdev on each.
VXLAN_KINDS = ["vxlan-vswitchd", "vxlan-kernel", "vxlan-ovs"]
# `vxlan-vswitchd-base`: vxlan-vswitchd from the binaries in --base-bin (before/after).
HV1, HV2 = f"vsb-h1-{PID}", f"vsb-h2-{PID}"
UL1, UL2 = "192.168.199.1", "192.168.199.2"
UL_PREFIX = 24
# The inner MTU a 1500-byte underlay leaves: 50 bytes of VXLAN over IPv4, 70 over IPv6.
INNER_MTU = 1450
# --underlay6: the hypervisors' underlay is IPv6 (vxlan-vswitchd and vxlan-kernel).
UNDERLAY6 = False
# vswitchd --busy-poll-us for the runs (None: the daemon's default); see --busy-poll-us.
BUSY_POLL_US = None
# --pin: the traffic's ends (generator, sinks, iperf3, ping-pong) on CPU 0 and every
# thread of the switch under test on CPU 1 — a dedicated datapath core, as Open vSwitch
# is deployed with pmd-cpu-mask. The kernel paths (bridge, veth) have no process to
# pin: all of their work runs on CPU 0 with the traffic.
PIN = False
# --raw-gen: udpgen sends whole frames on an AF_PACKET socket (no sending UDP/IP stack),
# so the generator offers more from one core; with --pin, to find a switch's ceiling.
RAW_GEN = False
# --gso-gen N (default 32): udpgen hands its stack N datagrams per message with UDP
# segmentation, cut into 64 B frames on the generator's own veth (tx-udp-segmentation
# off there), so the switch sees what it saw from one datagram per message while one
# core offers 2-3x more: enough that the switches, not the generator, set the rate.
# --gso-gen 1: one datagram per message (the generator of results before 2026-11-23 15:28).
GSO_GEN = 32


def tool(cmd):
    """A traffic tool's command line, on CPU 0 with --pin."""
    return f"taskset -c 0 {cmd}" if PIN else cmd


def sh(cmd, check=True, capture=True):
    r = subprocess.run(cmd, shell=True, text=True, capture_output=capture)
    if check and r.returncode != 0:
        raise RuntimeError(f"`{cmd}` failed: {r.stdout}{r.stderr}")
    return r.stdout if capture else ""


def ns(name, cmd, **kw):
    return sh(f"ip netns exec {name} {cmd}", **kw)


def jiffies_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_sample():
    """(total, idle+iowait, steal) jiffies from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4], v[7]


def busy_fraction(secs=1.0):
    """Fraction of all CPUs busy over `secs` (before a run: other processes' load)."""
    t0, i0, _ = cpu_sample()
    time.sleep(secs)
    t1, i1, _ = cpu_sample()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


class Topology:
    def __init__(self, kind):
        self.kind = kind
        self.tmp = tempfile.mkdtemp(prefix="vswitch-bench-")
        self.pid = None
        self.procs = []
        self.ovs_br = None
        self.links = []
        self.iperf_pids = []
        # Extra switch processes (the second hypervisor's), counted with self.pid.
        self.more_pids = []
        # Open vSwitch run directories to tear down (one per hypervisor).
        self.ovs_dirs = []

    # -- building -------------------------------------------------------------
    def up(self):
        sh(f"ip netns add {NS_A}")
        sh(f"ip netns add {NS_B}")
        if self.kind == "veth":
            sh(f"ip link add eth0 netns {NS_A} type veth peer name eth0 netns {NS_B}")
        else:
            sh(f"ip link add {VA} type veth peer name eth0 netns {NS_A}")
            sh(f"ip link add {VB} type veth peer name eth0 netns {NS_B}")
            sh(f"ip link set {VA} up && ip link set {VB} up")
        for n, ip in ((NS_A, IP_A), (NS_B, IP_B)):
            ns(n, f"ip addr add {ip}/24 dev eth0")
            ns(n, "ip link set eth0 up")
            ns(n, "ip link set lo up")
        getattr(self, "up_" + self.kind.replace("-", "_"))()
        # Wait until the path forwards.
        for _ in range(100):
            if subprocess.run(f"ip netns exec {NS_A} ping -c1 -W1 {IP_B}", shell=True, capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind}: no connectivity between the namespaces")

    def up_veth(self):
        pass

    # -- VXLAN between two hypervisors ------------------------------------------
    def _hypervisors(self):
        """HV1 holds VA, HV2 holds VB; an underlay veth joins them."""
        for hv in (HV1, HV2):
            sh(f"ip netns add {hv}")
            ns(hv, "ip link set lo up")
            if UNDERLAY6:
                ns(hv, "sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0")
        sh(f"ip link add u1 netns {HV1} type veth peer name u2 netns {HV2}")
        for hv, link, ip in ((HV1, "u1", UL1), (HV2, "u2", UL2)):
            ns(hv, f"ip addr add {ip}/{UL_PREFIX} dev {link}" + (" nodad" if UNDERLAY6 else ""))
            ns(hv, f"ip link set {link} up")
        for link, hv in ((VA, HV1), (VB, HV2)):
            sh(f"ip link set {link} netns {hv}")
            ns(hv, f"ip link set {link} mtu {INNER_MTU}")
            ns(hv, f"ip link set {link} up")
        for n in (NS_A, NS_B):
            ns(n, f"ip link set eth0 mtu {INNER_MTU}")

    def up_vxlan_vswitchd(self, bin_dir=None):
        b = bin_dir or BIN
        self._hypervisors()
        for i, (hv, link, remote) in enumerate(((HV1, VA, UL2), (HV2, VB, UL1))):
            d = os.path.join(self.tmp, f"hv{i}")
            os.makedirs(d)
            ns(hv, f"{b}/vswitchd --rundir {d} --db {d}/conf.json --detach --pidfile {d}/pid --log-level warn"
                   + (f" --busy-poll-us {BUSY_POLL_US}" if BUSY_POLL_US is not None else ""))
            pid = int(open(f"{d}/pid").read())
            if i == 0:
                self.pid = pid
            else:
                self.more_pids.append(pid)
            br = f"vsbx{i}"
            sh(f"{b}/vsctl --db=unix:{d}/vswitchd.sock add-br {br} -- add-port {br} {link}"
               f" -- add-port {br} vx -- set Interface vx type=vxlan options:remote_ip={remote} options:key=5001")

    def up_vxlan_vswitchd_base(self):
        if not BASE_BIN:
            raise RuntimeError("vxlan-vswitchd-base needs --base-bin DIR")
        self.up_vxlan_vswitchd(BASE_BIN)

    def up_vxlan_kernel(self):
        self._hypervisors()
        for hv, link, local, remote in ((HV1, VA, UL1, UL2), (HV2, VB, UL2, UL1)):
            ns(hv, f"ip link add vx0 type vxlan id 5001 remote {remote} local {local} dstport 4789")
            ns(hv, "ip link add kbr type bridge")
            ns(hv, f"ip link set vx0 master kbr")
            ns(hv, f"ip link set {link} master kbr")
            ns(hv, "ip link set vx0 up")
            ns(hv, "ip link set kbr up")

    def up_vxlan_ovs(self):
        if UNDERLAY6:
            raise RuntimeError("vxlan-ovs: --underlay6 is not built for Open vSwitch here")
        self._hypervisors()
        for i, (hv, ul, link, ip, remote) in enumerate(((HV1, "u1", VA, UL1, UL2), (HV2, "u2", VB, UL2, UL1))):
            t = os.path.join(self.tmp, f"ovs{i}")
            os.makedirs(t)
            self.ovs_dirs.append((hv, t))
            env = f"OVS_RUNDIR={t} OVS_LOGDIR={t} OVS_DBDIR={t} OVS_SYSCONFDIR={t}"
            sh(f"ovsdb-tool create {t}/conf.db /usr/share/openvswitch/vswitch.ovsschema")
            ns(hv, f"env {env} ovsdb-server {t}/conf.db --remote=punix:{t}/db.sock --pidfile={t}/ovsdb-server.pid "
                   f"--log-file={t}/ovsdb-server.log --detach")
            vs = f"ovs-vsctl --db=unix:{t}/db.sock --timeout=20"
            sh(f"{vs} --no-wait init")
            ns(hv, f"env {env} ovs-vswitchd unix:{t}/db.sock --pidfile={t}/ovs-vswitchd.pid "
                   f"--log-file={t}/ovs-vswitchd.log --detach")
            pid = int(open(f"{t}/ovs-vswitchd.pid").read())
            if i == 0:
                self.pid = pid
            else:
                self.more_pids.append(pid)
            # Userspace tunnelling: the underlay address lives on br-phy, which owns the NIC.
            mac = ns(hv, f"cat /sys/class/net/{ul}/address").strip()
            ns(hv, f"ip addr flush dev {ul}")
            sh(f"{vs} add-br br-phy -- set bridge br-phy datapath_type=netdev other_config:hwaddr={mac} -- add-port br-phy {ul}")
            ns(hv, f"ip addr add {ip}/24 dev br-phy")
            ns(hv, "ip link set br-phy up")
            sh(f"{vs} add-br br-int -- set bridge br-int datapath_type=netdev -- add-port br-int {link}"
               f" -- add-port br-int vx0 -- set interface vx0 type=vxlan options:remote_ip={remote} options:key=5001")

    def up_bridge(self):
        self.br = f"vsbbr{PID % 100000}"
        sh(f"ip link add {self.br} type bridge && ip link set {self.br} up")
        sh(f"ip link set {VA} master {self.br} && ip link set {VB} master {self.br}")

    def _start_vswitchd(self, bin_dir=None):
        """Starts our daemon; returns the vsctl command prefix."""
        bin_dir = bin_dir or BIN
        sock = os.path.join(self.tmp, "vswitchd.sock")
        sh(f"{bin_dir}/vswitchd --rundir {self.tmp} --db {self.tmp}/conf.json --detach --pidfile {self.tmp}/pid --log-level warn"
           + (f" --busy-poll-us {BUSY_POLL_US}" if BUSY_POLL_US is not None else ""))
        self.pid = int(open(f"{self.tmp}/pid").read())
        return f"{bin_dir}/vsctl --db=unix:{sock}"

    def up_vswitchd(self, bin_dir=None):
        v = self._start_vswitchd(bin_dir)
        sh(f"{v} add-br vsbr{PID % 100000} -- add-port vsbr{PID % 100000} {VA} -- add-port vsbr{PID % 100000} {VB}")

    def up_nullfwd(self):
        p = subprocess.Popen([f"{BIN}/nullfwd", VA, VB], text=True, stdout=subprocess.PIPE)
        self.procs.append(p)
        if "ready" not in p.stdout.readline():
            raise RuntimeError("nullfwd did not start")
        self.pid = p.pid

    def _two_bridges(self, vlan):
        """A → br0 → veth → br1 → B: with `vlan`, A and B are access ports in VLAN 10
        and the veth between the bridges is a trunk (access→trunk→access)."""
        v = self._start_vswitchd()
        t0, t1 = f"vsbt{PID % 100000}", f"vsbu{PID % 100000}"
        sh(f"ip link add {t0} type veth peer name {t1}")
        self.links.append(t0)
        b0, b1 = f"vsb0{PID % 100000}", f"vsb1{PID % 100000}"
        acc = " tag=10" if vlan else ""
        trk = " trunks=10" if vlan else ""
        sh(f"{v} add-br {b0} -- add-br {b1} -- add-port {b0} {VA}{acc} -- add-port {b0} {t0}{trk}"
           f" -- add-port {b1} {t1}{trk} -- add-port {b1} {VB}{acc}")

    def up_vswitchd_10k(self):
        """One bridge as in `vswitchd`, plus 10 000 flows the traffic does not hit (over
        two masks) above the NORMAL flow: every frame pays key extraction and a
        classifier lookup."""
        v = self._start_vswitchd()
        br = f"vsbr{PID % 100000}"
        sh(f"{v} add-br {br} -- add-port {br} {VA} -- add-port {br} {VB}")
        path = os.path.join(self.tmp, "flows.txt")
        with open(path, "w") as f:
            for i in range(10_000):
                if i % 2:
                    f.write(f"priority=100,ip,nw_dst=172.{16 + (i >> 16) % 16}.{(i >> 8) & 255}.{i & 255},actions=drop\n")
                else:
                    f.write(f"priority=90,udp,tp_dst={20000 + i},actions=drop\n")
            f.write("priority=0,actions=NORMAL\n")
        sh(f"{v} --timeout=60 add-flows {br} {path}")

    def up_vswitchd_base(self):
        if not BASE_BIN:
            raise RuntimeError("vswitchd-base needs --base-bin DIR")
        self.up_vswitchd(BASE_BIN)

    def up_vswitchd_2br(self):
        self._two_bridges(False)

    def up_vswitchd_vlan(self):
        self._two_bridges(True)

    def _ovs(self, tso):
        t = self.tmp
        env = f"OVS_RUNDIR={t} OVS_LOGDIR={t} OVS_DBDIR={t} OVS_SYSCONFDIR={t}"
        self.ovs_env = env
        sh(f"ovsdb-tool create {t}/conf.db /usr/share/openvswitch/vswitch.ovsschema")
        sh(f"{env} ovsdb-server {t}/conf.db --remote=punix:{t}/db.sock --pidfile={t}/ovsdb-server.pid "
           f"--log-file={t}/ovsdb-server.log --detach")
        vs = f"ovs-vsctl --db=unix:{t}/db.sock"
        sh(f"{vs} --no-wait init")
        if tso:
            sh(f"{vs} --no-wait set Open_vSwitch . other_config:userspace-tso-enable=true")
        if PIN:
            sh(f"{vs} --no-wait set Open_vSwitch . other_config:pmd-cpu-mask=0x2")
        sh(f"{env} ovs-vswitchd unix:{t}/db.sock --pidfile={t}/ovs-vswitchd.pid --log-file={t}/ovs-vswitchd.log --detach")
        self.pid = int(open(f"{t}/ovs-vswitchd.pid").read())
        br = self.ovs_br = f"ovsbr{PID % 100000}"
        sh(f"{vs} add-br {br} -- set bridge {br} datapath_type=netdev -- add-port {br} {VA} -- add-port {br} {VB}")

    def up_ovs(self):
        self._ovs(False)

    def up_ovs_tso(self):
        self._ovs(True)

    # -- tearing down -----------------------------------------------------------
    def down(self):
        for pidfile in self.iperf_pids:
            try:
                os.kill(int(open(pidfile).read().strip()), 15)
            except (OSError, ValueError):
                pass  # already exited after its one test
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.kind.startswith("vswitchd") and self.pid:
            self._stop(self.pid)
        if self.kind.startswith("vxlan-vswitchd"):
            for pid in [self.pid] + self.more_pids:
                if pid:
                    self._stop(pid)
        for hv, t in self.ovs_dirs:
            self._stop_ovs(t, ["br-int", "br-phy"])
        if self.kind.startswith("vxlan"):
            sh(f"ip netns del {HV1}", check=False)
            sh(f"ip netns del {HV2}", check=False)
        for link in self.links:
            sh(f"ip link del {link}", check=False)
        if self.kind.startswith("ovs"):
            self._stop_ovs(self.tmp, [self.ovs_br])
        if self.kind == "bridge":
            sh(f"ip link del {self.br}", check=False)
        if self.kind.startswith("ovs"):
            sh(f"ip link del {self.ovs_br}", check=False)
        sh(f"ip netns del {NS_A}", check=False)
        sh(f"ip netns del {NS_B}", check=False)
        sh(f"ip link del {VA}", check=False)
        sh(f"ip link del {VB}", check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
        time.sleep(0.3)

    def _stop_ovs(self, rundir, bridges):
        """Stops the Open vSwitch started in `rundir`. It makes its netdev bridges' TAPs
        persistent, so the bridges go first."""
        dels = " ".join(f"-- --if-exists del-br {b}" for b in bridges)
        sh(f"ovs-vsctl --db=unix:{rundir}/db.sock --timeout=5 {dels}", check=False)
        for name in ("ovs-vswitchd", "ovsdb-server"):
            try:
                self._stop(int(open(f"{rundir}/{name}.pid").read()))
            except (OSError, ValueError):
                pass

    @staticmethod
    def _stop(pid):
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            return
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, 9)

    # -- measuring ----------------------------------------------------------------
    def offloads_off(self):
        k = "tx off tso off gso off gro off"
        ns(NS_A, f"ethtool -K eth0 {k}")
        ns(NS_B, f"ethtool -K eth0 {k}")
        if self.kind.startswith("vxlan"):
            ns(HV1, f"ethtool -K {VA} {k}")
            ns(HV2, f"ethtool -K {VB} {k}")
        elif self.kind != "veth":
            sh(f"ethtool -K {VA} {k}")
            sh(f"ethtool -K {VB} {k}")

    def _start(self, nsname, cmd):
        p = subprocess.Popen(f"ip netns exec {nsname} {cmd}", shell=True, text=True, stdout=subprocess.PIPE)
        self.procs.append(p)
        line = p.stdout.readline()
        if "ready" not in line:
            raise RuntimeError(f"{cmd} did not start: {line!r}")
        return p

    def udp_pps(self, secs, phase="udp"):
        sink = self._start(NS_B, tool(f"{BIN}/udpsink --bind {IP_B}:9000 --idle 1 --max {secs + 5}"))
        pids = [p for p in [self.pid] + self.more_pids if p]
        perf = self._perf(phase)
        j0 = sum(jiffies_of(p) for p in pids)
        raw = ""
        if RAW_GEN:
            mac = ns(NS_B, "cat /sys/class/net/eth0/address").strip()
            raw = f" --raw eth0 --src {IP_A} --dst-mac {mac}"
        elif GSO_GEN > 1:
            # Cut into 64 B frames on the generator's side of its veth, not in the switch.
            ns(NS_A, "ethtool -K eth0 tx-udp-segmentation off")
            raw = f" --gso {GSO_GEN}"
        gen = json.loads(ns(NS_A, tool(f"{BIN}/udpgen --dst {IP_B}:9000 --secs {secs}{raw}")))
        j1 = sum(jiffies_of(p) for p in pids)
        self._perf_stop(perf)
        out, _ = sink.communicate(timeout=secs + 30)
        got = json.loads(out.strip().splitlines()[-1])
        pps = got["received"] / gen["secs"]
        cpu = (j1 - j0) / os.sysconf("SC_CLK_TCK") if self.pid else None
        per_m = cpu / (got["received"] / 1e6) if cpu is not None and got["received"] else None
        return {"udp_pps": pps, "udp_offered_pps": gen["sent"] / gen["secs"], "cpu_s_per_mpkt": per_m}

    def _perf(self, phase):
        """With --profile, starts `perf record -g` of the vswitchd case (or of both
        hypervisors' daemons in vxlan-vswitchd) into PROFILE.phase."""
        if not (PROFILE and self.kind in ("vswitchd", "vxlan-vswitchd")):
            return None
        pids = ",".join(str(p) for p in [self.pid] + self.more_pids)
        return subprocess.Popen(["perf", "record", "-g", "-q", "-p", pids, "-o", f"{PROFILE}.{phase}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @staticmethod
    def _perf_stop(perf):
        if perf:
            perf.send_signal(2)
            perf.wait()

    def tcp_gbps(self, secs, phase="tcp"):
        # -1 -D: one test then exit; the pidfile lets teardown end it when the
        # client never got through (Open vSwitch with default offloads).
        pidfile = os.path.join(self.tmp, f"iperf3-{len(self.iperf_pids)}.pid")
        ns(NS_B, tool(f"iperf3 -s -1 -D -p 5299 -I {pidfile}"))
        self.iperf_pids.append(pidfile)
        time.sleep(0.3)
        perf = self._perf(phase)
        r = subprocess.run(f"ip netns exec {NS_A} timeout {secs + 30} "
                           + tool(f"iperf3 -c {IP_B} -p 5299 -t {secs} -J --connect-timeout 3000"),
                           shell=True, text=True, capture_output=True)
        self._perf_stop(perf)
        try:
            j = json.loads(r.stdout)
            return j["end"]["sum_received"]["bits_per_second"] / 1e9
        except (ValueError, KeyError):
            return 0.0  # no TCP got through (Open vSwitch with default offloads)

    def latency(self, count):
        srv = self._start(NS_B, tool(f"{BIN}/pingpong --serve {IP_B}:9001 --max 120"))
        r = json.loads(ns(NS_A, tool(f"{BIN}/pingpong --to {IP_B}:9001 --count {count}")))
        # Through a switch that drops UDP the server never sees "quit".
        srv.kill()
        srv.wait()
        return r


def run_one(kind, args):
    noise = busy_fraction(1.0)
    t = Topology(kind)
    c0 = cpu_sample()
    try:
        t.up()
        if PIN:
            for pid in [t.pid] + t.more_pids:
                if pid:
                    sh(f"taskset -a -p -c 1 {pid}")
        res = {"kind": kind, "noisy": noise > 0.10, "idle_busy": round(noise, 3), "pinned": PIN,
               "raw_gen": RAW_GEN, "gso_gen": GSO_GEN}
        if kind.startswith("vxlan"):
            res["underlay"] = "ipv6" if UNDERLAY6 else "ipv4"
        if t.pid:
            time.sleep(0.5)
            res["rss_idle_kib"] = sum(rss_kib(p) for p in [t.pid] + t.more_pids)
        res.update(t.udp_pps(args.secs))
        res["tcp_gbps_offload"] = t.tcp_gbps(args.secs)
        lat = t.latency(args.pings)
        res["lat_p50_us"], res["lat_p99_us"] = lat["p50_us"], lat["p99_us"]
        t.offloads_off()
        res["tcp_gbps_no_offload"] = t.tcp_gbps(args.secs, "tcp-off")
        # Open vSwitch's netdev datapath forwards no UDP with default offloads; this
        # is the case it can be compared in.
        off = t.udp_pps(args.secs, "udp-off")
        res["udp_pps_no_offload"] = off["udp_pps"]
        res["cpu_s_per_mpkt_no_offload"] = off["cpu_s_per_mpkt"]
        if t.pid:
            res["rss_kib"] = sum(rss_kib(p) for p in [t.pid] + t.more_pids)
        # CPU time the hypervisor took from this VM during the run: on a shared host
        # this, not the switch, can dominate the numbers.
        c1 = cpu_sample()
        res["steal"] = round((c1[2] - c0[2]) / max(1, c1[0] - c0[0]), 3)
        res["noisy"] = res["noisy"] or res["steal"] > 0.05
        return res
    finally:
        t.down()


METRICS = [
    ("udp_pps", "64 B UDP delivered (Mpps)", lambda v: v / 1e6, "{:.3f}"),
    ("udp_pps_no_offload", "64 B UDP, offloads off (Mpps)", lambda v: v / 1e6, "{:.3f}"),
    ("tcp_gbps_offload", "TCP, offloads default (Gbit/s)", lambda v: v, "{:.2f}"),
    ("tcp_gbps_no_offload", "TCP, tx/tso/gso/gro off (Gbit/s)", lambda v: v, "{:.2f}"),
    ("lat_p50_us", "UDP RTT p50 (µs)", lambda v: v, "{:.1f}"),
    ("lat_p99_us", "UDP RTT p99 (µs)", lambda v: v, "{:.1f}"),
    ("cpu_s_per_mpkt", "switch CPU s per Mpkt (UDP)", lambda v: v, "{:.2f}"),
    ("cpu_s_per_mpkt_no_offload", "switch CPU s per Mpkt (UDP, offloads off)", lambda v: v, "{:.2f}"),
    ("rss_idle_kib", "switch RSS idle (MiB)", lambda v: v / 1024, "{:.1f}"),
    ("rss_kib", "switch RSS after runs (MiB)", lambda v: v / 1024, "{:.1f}"),
]


def median(runs, kind, key):
    vals = [r[key] for r in runs if r["kind"] == kind and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def table(runs, kinds):
    base = "vswitchd" if "vswitchd" in kinds else kinds[0]
    others = [k for k in ("vswitchd-base", "nullfwd", "ovs", "ovs-tso", "bridge", "vswitchd-2br",
                          "vxlan-vswitchd-base", "vxlan-kernel", "vxlan-ovs")
              if k in kinds and k != base]
    cols = kinds + [f"{base}/{o}" for o in others]
    lines = ["| metric | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for key, label, conv, fmt in METRICS:
        cells = []
        meds = {k: median(runs, k, key) for k in kinds}
        for k in kinds:
            if meds[k] is None:
                cells.append("fails" if key.startswith("lat") and any(r["kind"] == k for r in runs) else "—")
            else:
                cells.append(fmt.format(conv(meds[k])))
        for other in others:
            a, b = meds.get(base), meds.get(other)
            if a is None or b is None:
                cells.append("—")
            elif b == 0:
                cells.append("∞ (other fails)" if a else "—")
            else:
                paired = paired_ratio(runs, base, other, key)
                cells.append(f"{a / b:.2f}×" + (f" ({paired:.2f}×)" if paired is not None else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Ratios are of the medians; in parentheses, the median of the per-round ratios (each round "
                 "runs every switch once, back to back, so a round's switches share the machine's state).")
    return "\n".join(lines)


def paired_ratio(runs, a_kind, b_kind, key):
    """Median over rounds of a/b within the round: the machine's drift from one round
    to the next cancels out. Drift within a round does not, so it can disagree with the
    ratio of the medians; the table prints both."""
    by_rep = {}
    for r in runs:
        if r.get(key) is not None:
            by_rep.setdefault(r["rep"], {})[r["kind"]] = r[key]
    ratios = [k[a_kind] / k[b_kind] for k in by_rep.values() if k.get(a_kind) and k.get(b_kind)]
    return statistics.median(ratios) if ratios else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--secs", type=float, default=5.0)
    ap.add_argument("--pings", type=int, default=5000)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--busy-poll-us", type=int, default=None,
                    help="vswitchd --busy-poll-us (default: the daemon's default)")
    ap.add_argument("--base-bin", default=None,
                    help="directory with an earlier build's vswitchd and vsctl, for the vswitchd-base kind")
    ap.add_argument("--profile", default=None,
                    help="perf record -g the vswitchd (and vxlan-vswitchd) case's throughput tests into "
                         "FILE.udp, FILE.tcp, FILE.tcp-off, FILE.udp-off")
    ap.add_argument("--results", default=os.path.join(ROOT, "bench", "results.jsonl"))
    ap.add_argument("--pin", action="store_true",
                    help="traffic ends on CPU 0, the switch's threads on CPU 1 (a dedicated datapath core)")
    ap.add_argument("--raw-gen", action="store_true",
                    help="64 B UDP from an AF_PACKET generator (no sending UDP/IP stack): offers more per core")
    ap.add_argument("--gso-gen", type=int, default=32, metavar="N",
                    help="the 64 B UDP generator puts N datagrams in each message with UDP "
                         "segmentation, cut into 64 B frames on its own veth (default %(default)s; "
                         "1: one datagram per message)")
    ap.add_argument("--underlay6", action="store_true",
                    help="vxlan-* kinds: an IPv6 underlay between the hypervisors (inner MTU 1430)")
    ap.add_argument("--show", metavar="TIME",
                    help="print the table of an earlier run from --results (its \"time\" stamp) and exit")
    args = ap.parse_args()
    if args.show:
        with open(args.results) as f:
            runs = [r for r in map(json.loads, f) if r.get("time") == args.show]
        if not runs:
            sys.exit(f"run.py: no run stamped {args.show} in {args.results}")
        print(summary(runs, args.results))
        print(table(runs, list(dict.fromkeys(r["kind"] for r in runs))))
        return
    global BUSY_POLL_US, BASE_BIN, PROFILE, PIN, RAW_GEN, GSO_GEN, UNDERLAY6, UL1, UL2, UL_PREFIX, INNER_MTU
    if args.underlay6:
        UNDERLAY6 = True
        UL1, UL2, UL_PREFIX, INNER_MTU = "fd00:199::1", "fd00:199::2", 64, 1430
    BASE_BIN = args.base_bin
    PIN = args.pin
    RAW_GEN = args.raw_gen
    GSO_GEN = args.gso_gen
    PROFILE = args.profile
    if args.busy_poll_us is not None:
        BUSY_POLL_US = args.busy_poll_us
    if os.geteuid() != 0:
        sys.exit("run.py: run as root (it builds namespaces and veths)")
    kinds = args.kinds.split(",")
    missing = [p for p, k in (("iperf3", "iperf3"), ("ethtool", "ethtool"), ("ping", "iputils-ping")) if not shutil.which(p)]
    if any("ovs" in k for k in kinds) and not shutil.which("ovs-vswitchd"):
        missing.append("openvswitch-switch")
    pkgs = {"iperf3": "iperf3", "ethtool": "ethtool", "ping": "iputils-ping", "openvswitch-switch": "openvswitch-switch"}
    if missing:
        sh("apt-get update -qq")
        sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq " + " ".join(pkgs[m] for m in missing))
    if not args.no_build:
        subprocess.run("cargo build --release --locked -p vswitchd -p vsctl -p vswitch-bench", shell=True, cwd=ROOT, check=True)

    runs = []
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    machine = f"{os.cpu_count()} CPU, {platform.machine()}, Linux {platform.release()}"
    # A guest that polls before halting wakes far faster; latency depends on it.
    try:
        with open("/sys/module/haltpoll/parameters/guest_halt_poll_ns") as f:
            machine += f", guest_halt_poll_ns {f.read().strip()}"
    except OSError:
        pass
    for rep in range(args.reps):
        for kind in kinds:
            print(f"[rep {rep + 1}/{args.reps}] {kind} ...", file=sys.stderr, flush=True)
            try:
                r = run_one(kind, args)
            except Exception as e:  # one failing switch must not lose the others' runs
                print(f"  {kind} failed: {e}", file=sys.stderr)
                continue
            r.update({"rep": rep, "time": stamp, "machine": machine, "secs": args.secs})
            runs.append(r)
            print("  " + json.dumps(r), file=sys.stderr, flush=True)
            with open(args.results, "a") as f:
                f.write(json.dumps(r) + "\n")
    print()
    print(summary(runs, args.results))
    print(table(runs, kinds))


def summary(runs, results):
    """The line above a table, from the runs themselves (so `--show` prints it too)."""
    if not runs:
        return "no runs"
    r0 = runs[0]
    noisy = sum(1 for r in runs if r["noisy"])
    steal = statistics.median([r.get("steal", 0) for r in runs])
    reps = max(r["rep"] for r in runs) + 1
    secs = f", {r0['secs']:g} s each" if "secs" in r0 else ""
    return (f"{r0['time']} — {r0['machine']}; medians of {reps} alternating runs{secs}; "
            f"median hypervisor steal {steal:.0%}"
            + ("; pinned: traffic on CPU 0, the switch on CPU 1" if r0.get("pinned") else "")
            + ("; AF_PACKET generator" if r0.get("raw_gen")
               else f"; generator: {r0['gso_gen']} datagrams per message" if r0.get("gso_gen", 1) > 1 else "")
            + ("; IPv6 underlay" if r0.get("underlay") == "ipv6" else "")
            + (f"; {noisy} of {len(runs)} run(s) noisy (busy before, or steal > 5%), see {results}" if noisy else ""))


if __name__ == "__main__":
    main()
