#!/bin/bash
# Build the dracut variant of the cached base image: the same root file system with Debian's
# `dracut` package in place of initramfs-tools (dracut Conflicts: initramfs-tools), from the same
# mirror the base was built from.
#
# usage: build-dracut.sh BASEDIR OUTDIR SUITE MIRROR
#
# Produces OUTDIR/rootfs/, OUTDIR/vmlinuz (the base's kernel), OUTDIR/initrd.img (the image
# dracut built when it was installed: no pcipassd in it yet) and OUTDIR/kernel-release, then
# OUTDIR/.complete. Called by image.py, which keys OUTDIR on the base's key and a hash of this
# file. Nothing is mounted in the chroot: dracut there reads no /sys or /proc of this machine,
# which is why the image is a generic one (hostonly="no"), its drivers listed below.
set -euo pipefail

base=$1 out=$2 suite=$3 mirror=$4
root="$out/rootfs"

rm -rf "$out"
mkdir -p "$out"
cp -a --reflink=auto "$base/rootfs" "$root"
kver=$(cat "$base/kernel-release")

in_root() {
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@"
}

echo "== dracut configuration"
mkdir -p "$root/etc/dracut.conf.d" "$root/etc/modules-load.d"
# What mounts ext4 on virtio-blk, and e1000e: the race the early hold must win, twice over. The
# driver is in the image (add_drivers), as dracut puts the NIC and GPU drivers of a host there,
# and systemd-modules-load loads it in the initramfs (modules-load.d, as force_drivers or a
# host's own modules-load.d would), before udev's coldplug. drivers= keeps the image small (a
# rebuild in seconds), since dracut cannot detect this guest's hardware from a chroot.
cat >"$root/etc/dracut.conf.d/pcipass-vm.conf" <<'CONF'
hostonly="no"
drivers+=" virtio_pci virtio_blk ext4 "
add_drivers+=" e1000e "
install_items+=" /etc/modules-load.d/pcipass-vm.conf "
omit_dracutmodules+=" crypt dm nvdimm lunmask resume virtiofs overlay-root "
compress="gzip"
CONF
echo e1000e >"$root/etc/modules-load.d/pcipass-vm.conf"

echo "== apt-get install dracut from $mirror"
printf 'deb %s %s main\n' "$mirror" "$suite" >"$root/etc/apt/sources.list"
policy="$root/usr/sbin/policy-rc.d"
printf '#!/bin/sh\nexit 101\n' >"$policy"
chmod 0755 "$policy"
trap 'rm -f "$policy"' EXIT
in_root apt-get update -q
in_root apt-get install -y -q --no-install-recommends dracut
[ -x "$root/usr/bin/dracut" ] && [ ! -e "$root/usr/sbin/update-initramfs" ]
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
       "$root"/usr/share/doc/* "$root"/usr/share/man/*

cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$out/initrd.img"
echo "$kver" >"$out/kernel-release"
touch "$out/.complete"
echo "== done: initrd $(du -h "$out/initrd.img" | cut -f1)"
