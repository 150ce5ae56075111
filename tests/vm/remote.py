"""A guest reached over SSH while it runs: a controller on this machine (Ansible) drives it.

The guest gets one more NIC, virtio-net at 00:09.0 on QEMU's user network, with the guest's
port 22 forwarded to a free loopback port here. Its scenario (``GUEST_SSH``) brings the NIC up,
starts sshd and waits until the controller is done (``DONE``), then reports and powers off as
any scenario does. ``boot_with_controller`` boots in a thread and runs the controller meanwhile.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .harness import BootError, BootResult, Topology, boot
from .image import Image

T = TypeVar("T")

SSH_BDF = "0000:00:09.0"
USER = "fleet"  # a non-root user with sudo (become), as a fleet's SSH user is
DONE = "/run/controller-done"
SEEN = "/tmp/controller-seen"  # the controller's first login: without it the guest gives up soon

# The scenario's start: the SSH NIC up (slirp's fixed addresses), sshd started, then wait.
GUEST_SSH = rf"""
modprobe virtio_net  # udev may not have loaded it yet when the scenario starts
# virtio-pci owns the PCI function; the NIC hangs below its virtio device
net="/sys/bus/pci/devices/{SSH_BDF}/virtio*/net"
for _ in $(seq 100); do ls -d $net >/dev/null 2>&1 && break; sleep 0.2; done
nic=$(ls $net)
ip link set lo up
ip link set "$nic" up
ip addr add 10.0.2.15/24 dev "$nic"
ip route add default via 10.0.2.2
systemctl start ssh.service
result sshd "$(systemctl is-active ssh.service)"
for _ in $(seq 300); do [ -e {SEEN} ] && break; sleep 1; done
result controller.seen "$([ -e {SEEN} ] && echo yes || echo no)"
[ -e {SEEN} ] && for _ in $(seq 1800); do [ -e {DONE} ] && break; sleep 1; done
result controller "$([ -e {DONE} ] && echo done || echo timeout)"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def qemu_args(port: int) -> tuple[str, ...]:
    return ("-netdev", f"user,id=net-ssh,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", f"virtio-net-pci,netdev=net-ssh,bus=pcie.0,addr=0x{SSH_BDF[-4:-2]}")


def keypair(directory: Path) -> tuple[Path, str]:
    """A fresh ed25519 key without a passphrase: (private key file, public key line)."""
    key = directory / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pcipassd-vm-test",
                    "-f", str(key)], check=True)
    return key, key.with_suffix(".pub").read_text().strip()


def add_user(rootfs: Path, public_key: str) -> None:
    """USER in the image: a home with the key, and sudo without a password (become)."""
    def chroot(*cmd: str) -> None:
        subprocess.run(["chroot", str(rootfs), *cmd], check=True)

    chroot("useradd", "--create-home", "--shell", "/bin/bash", USER)
    ssh = rootfs / "home" / USER / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "authorized_keys").write_text(public_key + "\n")
    chroot("chown", "-R", f"{USER}:{USER}", f"/home/{USER}/.ssh")
    sudoers = rootfs / "etc/sudoers.d" / USER
    sudoers.write_text(f"{USER} ALL=(ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)


def ssh_command(port: int, key: Path) -> list[str]:
    return ["ssh", "-p", str(port), "-i", str(key), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", f"{USER}@127.0.0.1"]


def wait_for_ssh(port: int, key: Path, deadline: float, running: Callable[[], bool]) -> None:
    """Until `true` runs in the guest over SSH; BootError if the guest stopped or time ran out."""
    while time.monotonic() < deadline:
        if not running():
            raise BootError("the guest stopped before its SSH server answered")
        probe = subprocess.run([*ssh_command(port, key), "touch", SEEN], capture_output=True,
                               timeout=60, check=False)
        if probe.returncode == 0:
            return
        time.sleep(3)
    raise BootError(f"no SSH on 127.0.0.1:{port} in time")


def boot_with_controller(image: Image, *, topology: Topology, key: Path, log_dir: Path,
                         controller: Callable[[int], T], timeout: float = 1800,
                         kernel_args: tuple[str, ...] = ()) -> tuple[BootResult, T]:
    """Boot `image` (its scenario starts with GUEST_SSH); once SSH answers, run
    `controller(port)` here, then tell the guest to finish. Returns the boot and what the
    controller returned. The guest is told to finish even when the controller fails."""
    port = free_port()
    booted: list[BootResult] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            booted.append(boot(image, topology=topology, qemu_args=qemu_args(port),
                               kernel_args=kernel_args, log_dir=log_dir, timeout=timeout))
        except BaseException as e:  # handed to the caller below
            failed.append(e)

    thread = threading.Thread(target=run, name="guest")
    thread.start()
    try:
        wait_for_ssh(port, key, time.monotonic() + timeout, thread.is_alive)
        outcome = controller(port)
    finally:
        if thread.is_alive():
            subprocess.run([*ssh_command(port, key), "sudo", "touch", DONE],
                           capture_output=True, timeout=120, check=False)
        thread.join()
    if failed:
        raise failed[0]
    return booted[0], outcome
