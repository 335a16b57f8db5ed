#!/usr/bin/env bash
# Builds the test guest: a Debian cloud kernel and a busybox initramfs, into $1
# (default target/vm). Cached: does nothing when both files are there.
#
# The guest (see init below) loads the virtio-net driver stack, takes its address
# from the kernel command line (vm.ip=A.B.C.D/N), and serves:
#   :80    HTTP (busybox httpd), index.html = "hello from <ip>"
#   :5001  sink: reads to EOF into /www/blob (so HTTP serves it back), answers
#          "<bytes> <md5>"
#   :7000  a shell (one command line per connection) — the test guest is only ever
#          on a test bridge in a test namespace
# and has /bin/udptool (udptool.c: UDP bursts out of and into the guest),
# and it prints VM-READY on the serial console.
set -euo pipefail
# The directory name carries a version: change it when the guest changes.
out=${1:-$(dirname "$0")/../../target/vm-v3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ]; then
  exit 0
fi
for p in busybox cpio qemu-system-x86_64 cc; do
  command -v "$p" >/dev/null || { echo "build.sh: $p is missing (scripts/test.sh installs it)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$(cd "$(dirname "$0")" && pwd)
cd "$work"
pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image/{print $2; exit}')
apt-get download "$pkg" >/dev/null 2>&1 || { apt-get update -qq && apt-get download "$pkg" >/dev/null; }
dpkg -x ./*.deb kernel
kver=$(ls kernel/lib/modules)
mods=kernel/lib/modules/$kver/kernel
root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,tmp,www,lib/modules}
cp "$(command -v busybox)" "$root/bin/busybox"
cc -static -O2 -Wall -o "$root/bin/udptool" "$src/udptool.c"
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/core/failover \
         drivers/net/net_failover drivers/net/virtio_net; do
  cp "$mods/$m.ko" "$root/lib/modules/"
done
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net; do
  insmod /lib/modules/$m.ko
done
ip=$(sed -n 's/.*vm\.ip=\([^ ]*\).*/\1/p' /proc/cmdline)
mtu=$(sed -n 's/.*vm\.mtu=\([^ ]*\).*/\1/p' /proc/cmdline)
ip link set lo up
ip link set eth0 up
[ -n "$mtu" ] && ip link set eth0 mtu "$mtu"
ip addr add "$ip" dev eth0
echo "hello from ${ip%/*}" > /www/index.html
httpd -p 80 -h /www
nc -ll -p 5001 -e /bin/sink &
nc -ll -p 7000 -e /bin/sh &
echo VM-READY
exec sleep 1000000
INIT
cat > "$root/bin/sink" <<'SINK'
#!/bin/sh
rm -f /www/blob
cat > /tmp/blob
mv /tmp/blob /www/blob
echo "$(wc -c < /www/blob) $(md5sum /www/blob | cut -d' ' -f1)"
SINK
chmod +x "$root/init" "$root/bin/sink"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.img.tmp"
cp "kernel/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "build.sh: guest kernel $kver and initramfs in $out"
