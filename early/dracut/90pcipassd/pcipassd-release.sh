#!/bin/sh
# pcipassd, dracut `pre-pivot` hook: off means off, as initramfs-tools' init-bottom script does.
# The real root is mounted at $NEWROOT: if pcipassd.service is not enabled there (disabled,
# masked, or the package removed), give back what the initramfs held, so that the devices reach
# their original drivers even though this image was built while pcipassd was on; else arm the
# udev rule. Sourced by dracut's init (or dracut-pre-pivot.service): no `exit`. The messages go
# to the kernel log while /dev/kmsg is the initramfs's. PCIPASS_ROOT: the test suite's
# simulated root.
if [ -x "${PCIPASS_ROOT:-}/usr/lib/pcipassd/pcipassd-early" ]; then
    if [ -w "${PCIPASS_ROOT:-}/dev/kmsg" ]; then
        "${PCIPASS_ROOT:-}/usr/lib/pcipassd/pcipassd-early" root "${NEWROOT:-/sysroot}" \
            2>>"${PCIPASS_ROOT:-}/dev/kmsg"
    else
        "${PCIPASS_ROOT:-}/usr/lib/pcipassd/pcipassd-early" root "${NEWROOT:-/sysroot}"
    fi
fi
