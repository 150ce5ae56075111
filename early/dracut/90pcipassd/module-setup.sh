#!/bin/bash
# dracut module: put pcipassd's early hold (the script and the list that `pcipassd apply`
# generated) into the image, as early/initramfs-tools/hooks/pcipassd does for initramfs-tools,
# and hold the configured devices before any module is loaded in the initramfs.
#
# Ordering, from dracut's sources: dracut-ng (github.com/dracut-ng/dracut-ng, modules.d/) and
# dracut 059 (Debian 12's dracut-core 059-4, /usr/lib/dracut/modules.d/):
# - shell init (no systemd module): init.sh (ng 80base, 059 99base) mounts /proc, /sys and /dev,
#   then sources the `cmdline` hooks, then `pre-udev`, then starts udevd. parse-kernel.sh, which
#   modprobes rd.driver.pre= (where dracut.sh also puts force_drivers, in
#   /etc/cmdline.d/20-force_drivers.conf), is `cmdline` hook 01 (ng 80base/module-setup.sh,
#   059 90kernel-modules/module-setup.sh); watchdog.sh, which modprobes watchdog drivers, is
#   hook 00 (ng 14watchdog, 059 04watchdog). inst_hook names a hook PRIO-FILE (dracut-init.sh)
#   and dracut-lib.sh's source_hook runs them in glob order, so 00-pcipassd-hold.sh is the
#   first: it writes the driver_override before the first modprobe of the initramfs.
# - systemd initrd: the `cmdline` hooks run from dracut-cmdline.service, ordered only
#   Before=dracut-pre-udev.service, not before systemd-modules-load.service; rd.driver.pre= is
#   modprobed by dracut-pre-udev.sh (ng 77dracut-systemd, 059 98dracut-systemd). So a unit of
#   our own, pcipassd-initrd.service, holds there, ordered Before=systemd-modules-load.service,
#   dracut-pre-udev.service and systemd-udevd.service.
# - the release: `pre-pivot` hooks are sourced once the real root is mounted at $NEWROOT
#   (init.sh; dracut-pre-pivot.service, Environment=NEWROOT=/sysroot, which runs when the
#   pre-pivot hook directory is not empty), before switch_root.
# The module's number only orders module-setup.sh among dracut's modules at build time (ng puts
# its core at 70-80, 059 at 90-99); nothing here depends on it.
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
