#!/bin/sh
# pcipassd, dracut `cmdline` hook 00 (shell init): hold the configured PCI devices before
# 80base's parse-kernel.sh (hook 01) modprobes rd.driver.pre= and force_drivers, and before
# udevd starts. Sourced by dracut's init: no `exit`. pcipassd-early itself honours
# `pcipassd=off` and `rd.pcipassd=off`. PCIPASS_ROOT: the test suite's simulated root.
if [ -x "${PCIPASS_ROOT:-}/usr/lib/pcipassd/pcipassd-early" ]; then
    "${PCIPASS_ROOT:-}/usr/lib/pcipassd/pcipassd-early" boot initramfs
fi
