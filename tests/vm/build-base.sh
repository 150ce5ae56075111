#!/bin/bash
# Build the cached base image for the pcipassd VM harness.
#
# usage: build-base.sh OUTDIR SUITE MIRROR PKG[,PKG...]
#
# Produces OUTDIR/rootfs/ (a Debian minbase root filesystem with a kernel),
# OUTDIR/vmlinuz, OUTDIR/initrd.img and OUTDIR/kernel-release, then
# OUTDIR/.complete.  Called by image.py, which keys OUTDIR on a hash of this
# file, the suite and the package list.  Never touches the host's /sys:
# debootstrap's own chroot mounts are cleaned up on every exit path.
set -euo pipefail

out=$1 suite=$2 mirror=$3 packages=$4
root="$out/rootfs"

cleanup_mounts() {
    # Unmount anything debootstrap (or we) left mounted inside the target,
    # deepest first.  Only paths under $root are touched.
    local m
    [ -d "$root" ] || return 0
    local real
    real=$(realpath "$root")
    awk '{print $2}' /proc/mounts | { grep -E "^${real}/" || true; } | sort -r | while read -r m; do
        umount -l "$m" || true
    done
}
trap cleanup_mounts EXIT

rm -rf "$out"
mkdir -p "$out"

echo "== debootstrap $suite from $mirror"
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror"
cleanup_mounts

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

kver=$(ls "$root/lib/modules" | sort -V | tail -n1)
echo "== kernel $kver"

echo "== prune kernel modules not needed by a headless q35 guest"
moddir="$root/lib/modules/$kver/kernel"
keep_drivers=" base block char cpufreq crypto dca dma firmware gpu hid i2c input net pci pps ptp scsi tty uio vfio vhost video virt virtio "
for d in "$moddir"/drivers/*/; do
    d=${d%/}
    case "$keep_drivers" in *" ${d##*/} "*) ;; *) rm -rf "$d" ;; esac
done
# The GPU test card (tests/vm/test_handoff.py): bochs (bochs-drm, QEMU's VGA and bochs-display)
# and snd_hda_intel (ich9-intel-hda), with what they load; no other display or sound driver.
find "$moddir/drivers/gpu" -mindepth 1 -maxdepth 1 ! -name drm -exec rm -rf {} +
find "$moddir/drivers/gpu/drm" -mindepth 1 -maxdepth 1 -type d ! -name tiny ! -name ttm \
    -exec rm -rf {} +
find "$moddir/drivers/gpu/drm/tiny" -type f ! -name 'bochs.ko*' -delete
find "$moddir/drivers/video/fbdev" -mindepth 1 -maxdepth 1 ! -name core -exec rm -rf {} +
# igb (the SR-IOV PF of tests/vm/test_sriov.py) needs i2c-algo-bit; no other I2C driver.
find "$moddir/drivers/i2c" -mindepth 1 -maxdepth 1 ! -name algos -exec rm -rf {} +
if [ -d "$moddir/sound" ]; then
    find "$moddir/sound" -mindepth 1 -maxdepth 1 ! -name core ! -name hda ! -name pci \
        ! -name 'soundcore.ko*' -exec rm -rf {} +
    find "$moddir/sound/pci" -mindepth 1 -maxdepth 1 ! -name hda -exec rm -rf {} +
fi
for d in "$moddir"/drivers/net/ethernet/*; do
    [ "${d##*/}" = intel ] || rm -rf "$d"
done
for d in "$moddir"/drivers/scsi/*/; do rm -rf "$d"; done
for d in drivers/net/wireless drivers/net/can drivers/net/usb drivers/net/wwan \
         drivers/net/ieee802154 drivers/net/hamradio drivers/net/arcnet drivers/net/fddi \
         net/wireless net/mac80211 net/bluetooth net/can net/ieee802154 net/nfc \
         fs/ocfs2 fs/xfs fs/btrfs fs/f2fs fs/nfs fs/nfsd fs/cifs fs/smb fs/ceph fs/gfs2 \
         fs/ubifs fs/ntfs3 fs/jfs fs/reiserfs fs/dlm fs/afs; do
    rm -rf "${moddir:?}/$d"
done
in_root depmod -a "$kver"

echo "== small initramfs: what mounts ext4 on virtio-blk, and e1000e"
# e1000e is in the initramfs as Debian's default MODULES=most would put it there: the race the
# early hold must win. MODULES=list keeps update-initramfs inside a TCG guest at about a minute.
cat >"$root/etc/initramfs-tools/conf.d/pcipass-vm.conf" <<'CONF'
MODULES=list
COMPRESS=gzip
CONF
cat >>"$root/etc/initramfs-tools/modules" <<'MODS'
virtio_pci
virtio_blk
ext4
e1000e
MODS
in_root update-initramfs -u -k "$kver"

echo "== speed up boot, drop caches"
units="$root/etc/systemd/system"
for u in serial-getty@ttyS0.service serial-getty@ttyS1.service getty@tty1.service \
         getty.target systemd-networkd-wait-online.service systemd-networkd.service \
         apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service \
         e2scrub_all.timer e2scrub_reap.service fstrim.timer dpkg-db-backup.timer \
         man-db.timer systemd-tmpfiles-clean.timer systemd-timesyncd.service \
         systemd-hwdb-update.service systemd-firstboot.service \
         systemd-journal-catalog-update.service ldconfig.service \
         systemd-pstore.service; do
    ln -sf /dev/null "$units/$u"
done
# sshd only where a test starts it (the fleet test): not in every boot.
rm -f "$units/multi-user.target.wants/ssh.service" "$units/sshd.service" \
      "$units/sockets.target.wants/ssh.socket"
in_root systemd-hwdb update || true
[ -s "$root/etc/machine-id" ] || in_root systemd-machine-id-setup
echo pcipass-vm >"$root/etc/hostname"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 0\n' >"$root/etc/fstab"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
       "$root"/usr/share/info/*

cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$out/initrd.img"
echo "$kver" >"$out/kernel-release"
touch "$out/.complete"
echo "== done: $(du -sh "$root" | cut -f1) rootfs, initrd $(du -h "$out/initrd.img" | cut -f1)"
