"""Device names come from the host's hwdb sources, else its pci.ids, else stay raw IDs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcipassd.address import PciId
from pcipassd.host import Host
from pcipassd.names import Name, NameDb

E1000E = PciId(0x8086, 0x10D3)
ETHERNET = 0x020000
UNKNOWN = PciId(0x8086, 0xBEEF)
VGA = 0x030000

PCI_IDS = """\
# pci.ids fixture
#\tcomment lines may hold anything
8086  Intel Corporation
\t10d2  82573L Gigabit Ethernet Controller
\t10d3  82574L Gigabit Network Connection
\t\t8086 a01f  Gigabit CT Desktop Adapter
10de  NVIDIA Corporation
\t10d3  Not an Intel device
C 02  Network controller
\t00  Ethernet controller
\t\t00  Not a prog-if name
C 03  Display controller
"""

VENDOR_MODEL = """\
# hwdb fixture

pci:v00008086*
 ID_VENDOR_FROM_DATABASE=Intel Corp. (hwdb)

pci:v00008086d000010D3*
 ID_MODEL_FROM_DATABASE=82574L (hwdb)

pci:v00008086d000010D3sv00008086sd0000A01F*
 ID_MODEL_FROM_DATABASE=Gigabit CT Desktop Adapter
"""

CLASSES = """\
pci:v*d*sv*sd*bc02*
 ID_PCI_CLASS_FROM_DATABASE=Network controller (hwdb)

pci:v*d*sv*sd*bc02sc00*
 ID_PCI_SUBCLASS_FROM_DATABASE=Ethernet controller (hwdb)

pci:v*d*sv*sd*bc02sc00i00*
 ID_PCI_INTERFACE_FROM_DATABASE=Not an interface name
"""


def _write(root: Path, path: str, text: str | bytes) -> None:
    file = Host(root).path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    file.write_bytes(text)


def _load(root: Path, *wanted: tuple[PciId, int]) -> NameDb:
    return NameDb.load(Host(root), wanted or [(E1000E, ETHERNET)])


def test_pci_ids_alone(tmp_path: Path) -> None:
    _write(tmp_path, "/usr/share/misc/pci.ids", PCI_IDS)
    db = _load(tmp_path)
    assert db.source == "/usr/share/misc/pci.ids"
    assert db.name(E1000E, ETHERNET) == Name(
        "Ethernet controller", "Intel Corporation", "82574L Gigabit Network Connection"
    )
    assert db.describe(E1000E, ETHERNET) == (
        "Ethernet controller [0200]: Intel Corporation 82574L Gigabit Network Connection"
        " [8086:10d3]"
    )


@pytest.mark.parametrize("path", ["/usr/share/hwdata/pci.ids", "/usr/share/pci.ids"])
def test_pci_ids_elsewhere(tmp_path: Path, path: str) -> None:
    _write(tmp_path, path, PCI_IDS)
    db = _load(tmp_path)
    assert db.source == path
    assert db.name(E1000E, ETHERNET).vendor == "Intel Corporation"


def test_hwdb_wins_over_pci_ids(tmp_path: Path) -> None:
    _write(tmp_path, "/usr/share/misc/pci.ids", PCI_IDS)
    _write(tmp_path, "/usr/lib/udev/hwdb.d/20-pci-vendor-model.hwdb", VENDOR_MODEL)
    _write(tmp_path, "/usr/lib/udev/hwdb.d/20-pci-classes.hwdb", CLASSES)
    db = _load(tmp_path)
    assert db.source == "/usr/lib/udev/hwdb.d/20-pci-vendor-model.hwdb"
    assert db.name(E1000E, ETHERNET) == Name(
        "Ethernet controller (hwdb)", "Intel Corp. (hwdb)", "82574L (hwdb)"
    )
    assert db.describe(E1000E, ETHERNET) == (
        "Ethernet controller (hwdb) [0200]: Intel Corp. (hwdb) 82574L (hwdb) [8086:10d3]"
    )


def test_hwdb_under_lib(tmp_path: Path) -> None:
    _write(tmp_path, "/lib/udev/hwdb.d/20-pci-vendor-model.hwdb", VENDOR_MODEL)
    db = _load(tmp_path)
    assert db.source == "/lib/udev/hwdb.d/20-pci-vendor-model.hwdb"
    # no classes file beside it: the class stays unknown, pci.ids is not consulted
    assert db.describe(E1000E, ETHERNET) == (
        "Class [0200]: Intel Corp. (hwdb) 82574L (hwdb) [8086:10d3]"
    )


def test_neither_shows_raw_ids(tmp_path: Path) -> None:
    db = _load(tmp_path)
    assert db.source is None
    assert db.name(E1000E, ETHERNET) == Name(None, None, None)
    assert db.describe(E1000E, ETHERNET) == "Class [0200]: Vendor 8086 Device 10d3 [8086:10d3]"


def test_subclass_name_preferred_over_class_name(tmp_path: Path) -> None:
    _write(tmp_path, "/usr/share/misc/pci.ids", PCI_IDS)
    db = _load(tmp_path, (E1000E, ETHERNET), (E1000E, 0x028000), (E1000E, VGA))
    assert db.name(E1000E, ETHERNET).cls == "Ethernet controller"
    assert db.name(E1000E, 0x028000).cls == "Network controller"  # subclass 80 not listed
    assert db.describe(E1000E, VGA).startswith("Display controller [0300]: ")


def test_hwdb_subclass_preferred_over_class(tmp_path: Path) -> None:
    _write(tmp_path, "/usr/lib/udev/hwdb.d/20-pci-vendor-model.hwdb", VENDOR_MODEL)
    _write(tmp_path, "/usr/lib/udev/hwdb.d/20-pci-classes.hwdb", CLASSES)
    db = _load(tmp_path, (E1000E, ETHERNET), (E1000E, 0x028000))
    assert db.name(E1000E, ETHERNET).cls == "Ethernet controller (hwdb)"
    assert db.name(E1000E, 0x028000).cls == "Network controller (hwdb)"


@pytest.mark.parametrize("hwdb", [False, True])
def test_unknown_device_of_known_vendor(tmp_path: Path, hwdb: bool) -> None:
    if hwdb:
        _write(tmp_path, "/usr/lib/udev/hwdb.d/20-pci-vendor-model.hwdb", VENDOR_MODEL)
        vendor = "Intel Corp. (hwdb)"
    else:
        _write(tmp_path, "/usr/share/misc/pci.ids", PCI_IDS)
        vendor = "Intel Corporation"
    db = _load(tmp_path, (UNKNOWN, ETHERNET))
    assert db.name(UNKNOWN, ETHERNET).device is None
    assert f": {vendor} Device beef [8086:beef]" in db.describe(UNKNOWN, ETHERNET)


def test_only_wanted_names_are_kept(tmp_path: Path) -> None:
    _write(tmp_path, "/usr/share/misc/pci.ids", PCI_IDS)
    db = _load(tmp_path)
    # 10de:10d3 has a name in the file, but was not asked for (nor is 8086's namesake used)
    assert db.name(PciId(0x10DE, 0x10D3), ETHERNET).vendor is None
    assert db.name(PciId(0x10DE, 0x10D3), ETHERNET).device is None


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    data = PCI_IDS.encode().replace(b"Intel Corporation", b"Intel \xff\xfe Corporation")
    _write(tmp_path, "/usr/share/misc/pci.ids", b"# caf\xe9\n" + data)
    db = _load(tmp_path)
    assert db.source == "/usr/share/misc/pci.ids"
    assert db.name(E1000E, ETHERNET).vendor == "Intel \ufffd\ufffd Corporation"
    assert db.name(E1000E, ETHERNET).device == "82574L Gigabit Network Connection"


def test_invalid_utf8_in_hwdb(tmp_path: Path) -> None:
    data = VENDOR_MODEL.encode().replace(b"82574L", b"\xc3(82574L")
    _write(tmp_path, "/usr/lib/udev/hwdb.d/20-pci-vendor-model.hwdb", data)
    assert _load(tmp_path).name(E1000E, ETHERNET).device == "\ufffd(82574L (hwdb)"


def test_unusable_files_are_skipped(tmp_path: Path) -> None:
    # a directory where the hwdb should be, and a pci.ids that is not one: on to the next
    Host(tmp_path).path("/usr/lib/udev/hwdb.d/20-pci-vendor-model.hwdb").mkdir(parents=True)
    _write(tmp_path, "/lib/udev/hwdb.d/20-pci-vendor-model.hwdb", "\x00\x01 garbage\n\tmore\n")
    _write(tmp_path, "/usr/share/misc/pci.ids", "<html>not found</html>\n\tzz\n")
    _write(tmp_path, "/usr/share/hwdata/pci.ids", PCI_IDS)
    db = _load(tmp_path)
    assert db.source == "/usr/share/hwdata/pci.ids"
    assert db.name(E1000E, ETHERNET).device == "82574L Gigabit Network Connection"


def test_crlf_and_records_sharing_properties(tmp_path: Path) -> None:
    text = "pci:v00001AF4*\r\npci:v00008086*\r\n ID_VENDOR_FROM_DATABASE=Shared\r\n"
    _write(tmp_path, "/usr/lib/udev/hwdb.d/20-pci-vendor-model.hwdb", text)
    virtio = PciId(0x1AF4, 0x1000)
    db = _load(tmp_path, (E1000E, ETHERNET), (virtio, ETHERNET))
    assert db.name(E1000E, ETHERNET).vendor == "Shared"
    assert db.name(virtio, ETHERNET).vendor == "Shared"
