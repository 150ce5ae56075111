"""pytest glue for the VM harness.

Every test in tests/vm is marked ``vm`` (deselect with ``-m "not vm"``, or set
``PCIPASSD_SKIP_VM=1``).  The session fixture ``vm_base`` builds or loads the
cached base image; the VM tests are skipped with one reason when this host
cannot run them (not root, qemu/debootstrap not installable).

Per test, ``vm_image(...)`` builds a disk under the test's tmp_path and
``vm_boot(image, ...)`` boots it with logs under
``tests/vm/out/<test name>/boot-N/`` (or ``$PCIPASSD_VM_OUT/<test name>``).
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from .harness import DEFAULT_TIMEOUT, DEFAULT_TOPOLOGY, BootResult, Topology, boot
from .image import (
    HERE,
    BaseImage,
    FileContent,
    HarnessUnavailable,
    Image,
    Installer,
    build_image,
    ensure_base,
    ensure_host_tools,
    install_project,
)

#: The VM scenarios, longest first (seconds of boots on a 2-core TCG host, from CI's
#: --durations), with two workers (--dist loadscope --no-loadscope-reorder: scopes in this
#: order, not by their number of tests): the longest scenario first, so that one worker waits
#: for the VM images (.ci/run builds them in the background) and boots it as soon as they are
#: there, while the other runs the tests without VMs; then the other scenarios, longest first.
LONGEST_FIRST = ("test_early", "test_fleet", "test_package", "test_scenarios", "test_dracut",
                 "test_handoff", "test_sriov", "test_uplink", "test_installed")


def _order(item: pytest.Item) -> int:
    path = Path(str(item.fspath)).resolve()
    if not path.is_relative_to(HERE):
        return 0  # after the longest scenario, before the others
    if path.stem not in LONGEST_FIRST:
        return len(LONGEST_FIRST)
    position = LONGEST_FIRST.index(path.stem)
    return -1 if position == 0 else position


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.vm)
    items.sort(key=_order)  # stable: each module's tests keep their order


def out_root() -> Path:
    return Path(os.environ.get("PCIPASSD_VM_OUT", str(HERE / "out")))


@pytest.fixture(scope="session")
def vm_base() -> BaseImage:
    if os.environ.get("PCIPASSD_SKIP_VM"):
        pytest.skip("VM tests disabled by PCIPASSD_SKIP_VM")
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("VM tests need an x86_64 Linux host")
    try:
        ensure_host_tools()
    except HarnessUnavailable as exc:
        pytest.skip(f"VM harness unavailable: {exc}")
    return ensure_base()


@pytest.fixture
def vm_out(request: pytest.FixtureRequest) -> Path:
    """This test's log directory (emptied of earlier runs' boots)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    path = out_root() / name
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("boot-*"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    return path


class ImageFactory(Protocol):
    def __call__(
        self,
        config_yaml: str | None,
        guest_script: str,
        extra_files: Mapping[str, FileContent] | None = None,
        *,
        install: Installer = ...,
        enable_pcipassd: bool = ...,
        remove_files: Sequence[str] = ...,
    ) -> Image: ...


class BootFn(Protocol):
    def __call__(
        self,
        image: Image,
        *,
        topology: Topology = ...,
        qemu_args: Sequence[str] = ...,
        kernel_args: Sequence[str] = ...,
        timeout: float = ...,
        check: bool = ...,
    ) -> BootResult: ...


@pytest.fixture
def vm_image(vm_base: BaseImage, tmp_path: Path) -> Iterator[ImageFactory]:
    """Build per-test disks under tmp_path; they are deleted after the test (logs stay in
    vm_out) unless ``PCIPASSD_VM_KEEP=1``."""
    count = 0
    images: list[Image] = []

    def factory(
        config_yaml: str | None,
        guest_script: str,
        extra_files: Mapping[str, FileContent] | None = None,
        *,
        install: Installer = install_project,
        enable_pcipassd: bool = True,
        remove_files: Sequence[str] = (),
    ) -> Image:
        nonlocal count
        count += 1
        image = build_image(
            config_yaml,
            guest_script,
            extra_files,
            base=vm_base,
            workdir=tmp_path / f"image-{count}",
            install=install,
            enable_pcipassd=enable_pcipassd,
            remove_files=remove_files,
        )
        images.append(image)
        return image

    yield factory
    if not os.environ.get("PCIPASSD_VM_KEEP"):
        for image in images:
            image.disk.unlink(missing_ok=True)


@pytest.fixture
def vm_boot(vm_out: Path) -> BootFn:
    count = 0

    def run(
        image: Image,
        *,
        topology: Topology = DEFAULT_TOPOLOGY,
        qemu_args: Sequence[str] = (),
        kernel_args: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> BootResult:
        nonlocal count
        count += 1
        return boot(
            image,
            topology=topology,
            qemu_args=qemu_args,
            kernel_args=kernel_args,
            timeout=timeout,
            log_dir=vm_out / f"boot-{count}",
            check=check,
        )

    return run
