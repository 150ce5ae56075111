"""Counting driver probes on a real kernel, for the early-hold tests (test_early, test_dracut).

Booted with `PROBE_LOG`, the kernel logs every probe attempt (dyndbg on drivers/base/dd.c):
`pci 0000:00:03.0: ... really_probe: probing driver e1000e with device`. A match refused by the
device's driver_override never gets there: no such line for a held device means its host driver
never probed it, and one for its unconfigured twin means that the race was live.
"""

from __future__ import annotations

from .harness import BootResult

PROBE_LOG = ('dyndbg="file drivers/base/dd.c +p"', "log_buf_len=8M")
#: The scenario's shell line that reports the probes of this boot (key `probes`), and the
#: attempts the kernel turned away before the driver's code ran (`igbvf: probe of 0000:01:10.0
#: rejects match -19`: a VF while its PF's sriov_drivers_autoprobe is 0).
REPORT_PROBES = "dmesg | grep -E 'really_probe: probing driver|rejects match' | blob probes"
#: The scenario's shell function `wait_for BDF DRIVER`: up to 60 s, for the udev-triggered
#: reload after a hot add, until the device is on DRIVER and pcipassd is active.
WAIT_FOR = r"""wait_for() {
    for i in $(seq 60); do
        [ "$(basename "$(readlink /sys/bus/pci/devices/$1/driver)")" = "$2" ] &&
            [ "$(systemctl is-active pcipassd)" = active ] && return 0
        sleep 1
    done
    return 1
}"""


def probes(res: BootResult, bdf: str, driver: str = "e1000e") -> int:
    """How many times `driver`'s probe ran on the device at `bdf` in this boot: the attempts,
    less those the kernel rejected before calling it."""
    attempt = f"really_probe: probing driver {driver} with device {bdf}"
    return (sum(1 for line in res["probes"].splitlines() if line.endswith(attempt))
            - rejected(res, bdf, driver))


def rejected(res: BootResult, bdf: str, driver: str) -> int:
    """How many of `driver`'s attempts on `bdf` the kernel rejected (-ENODEV) before the
    driver's probe ran."""
    return sum(1 for line in res["probes"].splitlines()
               if f"{driver}: probe of {bdf} rejects match" in line)


def probed(res: BootResult, bdf: str, driver: str = "e1000e") -> bool:
    return probes(res, bdf, driver) > 0


# A paused QEMU (-S) inside the guest: it opens the vfio group and realizes the devices.
# `qemu_start NAME ARGS...` starts it with a monitor socket, waits until it has a vfio group open,
# and reports NAME.running and NAME.vfio; `qemu_end NAME` stops it and captures its output.
NESTED_QEMU = r"""
qemu_start() {
    local name=$1; shift
    rm -f /tmp/$name.mon
    qemu-system-x86_64 -machine q35 -accel tcg,tb-size=64 -m 64 -nodefaults \
        -display none -S -monitor unix:/tmp/$name.mon,server=on,wait=off -serial none \
        "$@" </dev/null >/tmp/$name.out 2>&1 &
    qemu=$!
    for i in $(seq 90); do
        ls -l /proc/$qemu/fd 2>/dev/null | grep -q ' /dev/vfio/[0-9]' && [ -S /tmp/$name.mon ] &&
            break
        kill -0 $qemu 2>/dev/null || break
        sleep 1
    done
    result $name.running "$(kill -0 $qemu 2>/dev/null && echo yes || echo no)"
    result $name.vfio "$(ls -l /proc/$qemu/fd 2>/dev/null | grep -c ' /dev/vfio/[0-9]')"
}
monitor() {  # monitor NAME COMMAND: the answer of the QEMU's human monitor
    python3 - /tmp/$1.mon "$2" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(sys.argv[1])
def answer():
    data = b""
    while not data.endswith(b"(qemu) "):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")
answer()
s.sendall(sys.argv[2].encode() + b"\n")
print(answer())
PY
}
qemu_end() {
    kill $qemu
    for i in $(seq 30); do kill -0 $qemu 2>/dev/null || break; sleep 1; done
    kill -9 $qemu 2>/dev/null
    capture $1.out cat /tmp/$1.out
}
"""
