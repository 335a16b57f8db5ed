#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the integration tests,
# which drive the real daemon over real namespaces, veths and TAPs (root needed).
# Installs what the tests need on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: the integration tests create namespaces, veths and TAPs: run as root" >&2
  exit 1
fi

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v ethtool >/dev/null || need+=(ethtool)
# Open vSwitch (userspace datapath) is the interop peer of the tunnel tests.
command -v ovs-vswitchd >/dev/null || need+=(openvswitch-switch)
# The guest tests boot a Debian cloud kernel with a busybox initramfs under qemu
# (tests/vm/build.sh downloads the kernel package and caches the result in target/).
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
# ... and a small static C tool for UDP bursts in the guest (tests/vm/udptool.c).
command -v cc >/dev/null || need+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build --workspace --locked
# Integration tests run two at a time: each one pushes real traffic through its own
# daemon, and this machine class has two cores.
cargo test --workspace --locked -- --test-threads 2
