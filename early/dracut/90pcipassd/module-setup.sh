#!/bin/bash
# dracut module: put pcipassd's early hold (the script and the list that `pcipassd apply`
# generated) into the image, as early/initramfs-tools/hooks/pcipassd does for initramfs-tools,
# and hold the configured devices before any module is loaded in the initramfs.
#
# Ordering, from dracut's sources (dracut-ng, modules.d/; dracut 059 has the same files under
# 99base and 98dracut-systemd):
# - shell init (no systemd module): 80base/init.sh mounts /proc, /sys and /dev, then sources
#   the `cmdline` hooks, then `pre-udev`, then starts udevd. 80base/module-setup.sh installs
#   80base/parse-kernel.sh as `cmdline` hook 01: it modprobes rd.driver.pre= (where dracut.sh
#   also puts force_drivers, /etc/cmdline.d/20-force_drivers.conf). Hooks run in glob order
#   (80base/dracut-lib.sh list_hooks/source_hook), so pcipassd-hold.sh as hook 00 writes the
#   driver_override before the first modprobe of the initramfs.
# - systemd initrd: the `cmdline` hooks run from dracut-cmdline.service, which is ordered only
#   Before=dracut-pre-udev.service, not before systemd-modules-load.service
#   (77dracut-systemd/dracut-cmdline.service); rd.driver.pre= is modprobed in dracut-pre-udev.sh.
#   So a unit of our own, pcipassd-initrd.service, holds there, ordered Before=
#   systemd-modules-load.service, dracut-pre-udev.service and systemd-udevd.service.
# - the release: `pre-pivot` hooks are sourced once the real root is mounted at $NEWROOT
#   (80base/init.sh; dracut-pre-pivot.service, Environment=NEWROOT=/sysroot, which runs when
#   the pre-pivot hook directory is not empty), before switch_root.
# Hooks are sourced, never executed: they end without `exit`.

# shellcheck disable=SC2154  # $moddir, $initdir, $systemdsystemunitdir: set by dracut

check() {
    return 0  # wherever pcipassd is installed; install() adds nothing without a hold list
}

depends() {
    return 0
}

install() {
    [ -r "${dracutsysrootdir:-}/etc/pcipass.early" ] || return 0  # nothing to hold
    inst_simple /etc/pcipass.early /etc/pcipass.early
    inst_simple @LIBDIR@/pcipassd-early /usr/lib/pcipassd/pcipassd-early
    inst_multiple mkdir rm
    if dracut_module_included systemd; then
        inst_simple "$moddir/pcipassd-initrd.service" \
            "$systemdsystemunitdir/pcipassd-initrd.service"
        ${SYSTEMCTL:-systemctl} -q --root "$initdir" add-wants sysinit.target \
            pcipassd-initrd.service
    else
        inst_hook cmdline 00 "$moddir/pcipassd-hold.sh"
    fi
    inst_hook pre-pivot 10 "$moddir/pcipassd-release.sh"
}
