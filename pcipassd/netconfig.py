"""Which NICs the host's network configuration will bring up at boot (read-only; for the guard).

At boot pcipassd runs before the network is configured, so the guard sees no route and no
address. For a NIC pcipassd never judged while the network was up (see pcipassd.memory), this
module reads what will configure it, and maps each interface to its PCI device through
`/sys/class/net/IF/device` (and `/address` for a MAC):

systemd-networkd (when enabled)
    `*.network` in /etc, /run, /usr/local/lib, /usr/lib and /lib `systemd/network` (a name in
    an earlier directory hides the later ones; /dev/null or empty masks), plus their `.d/*.conf`
    drop-ins. Per interface the first file by name whose [Match] matches (Name, MACAddress,
    PermanentMACAddress, Type, Driver, Kind, Path) brings it up, unless [Link] says
    `Unmanaged=yes` or an `ActivationPolicy=` that keeps it down.
ifupdown
    /etc/network/interfaces and what it `source`s: the `auto` and `allow-hotplug` interfaces,
    followed through `bridge_ports`, `bond-slaves`, `vlan-raw-device` and `NAME.VLAN` names to
    the physical interfaces.
NetworkManager (when enabled)
    keyfiles (`system-connections/*.nmconnection` in /etc, /run, /usr/lib) and ifcfg-rh files
    that auto-connect, by `interface-name=`, `mac-address=` (`DEVICE=`, `HWADDR=`), or a VLAN's
    `parent=`.

What cannot be read reliably is said in a warning and, where a NIC could be the one, that NIC
is counted as brought up (`sure=False`), so that the guard fails closed: a networkd [Match]
with a condition pcipassd cannot evaluate, or a glob that matches several NICs; a
NetworkManager profile for any wired device, or NetworkManager's default of auto-connecting
every wired NIC that has no profile (unless `no-auto-default=*`); `bridge_ports all`; a netplan
configuration whose generated files are not in /run yet.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from pathlib import PurePosixPath

from pcipassd.host import Host
from pcipassd.hostfiles import exists, log, names, nearest_bdf, read, resolve, value
from pcipassd.value import frozen

__all__ = ["Interface", "Uplink", "Uplinks", "interfaces", "uplinks"]

NETWORKD_DIRS = ("/etc/systemd/network", "/run/systemd/network", "/usr/local/lib/systemd/network",
                 "/usr/lib/systemd/network", "/lib/systemd/network")
NM_DIRS = ("/etc/NetworkManager/system-connections", "/run/NetworkManager/system-connections",
           "/usr/lib/NetworkManager/system-connections")
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system",
             "/lib/systemd/system")
ARPHRD_ETHER = 1
_MAX_SOURCES = 64  # ifupdown `source` nesting: a loop stops here
_FALSE = ("false", "no", "0", "off")


@frozen
class Interface:
    """A network interface on a PCI device, as sysfs shows it."""

    name: str
    bdf: str
    mac: str  # lower case, "" when unreadable
    kind: str  # "ether", "wlan", or the ARPHRD number
    driver: str
    direct: bool  # the PCI device itself (not a USB NIC behind a USB controller)


@frozen
class Uplink:
    """An interface the configuration brings up at boot; `sure` False: it may be."""

    iface: Interface
    text: str  # "will be brought up at boot by ... (FILE)"
    sure: bool = True


class Uplinks:
    """The interfaces the network configuration brings up at boot, and what could not be read
    (a plain class: a dataclass costs start-up time, see bench/noop_apply.py)."""

    def __init__(self) -> None:
        self.found: list[Uplink] = []
        self.warnings: list[str] = []

    def add(self, iface: Interface, text: str, sure: bool = True) -> None:
        if all(u.iface != iface for u in self.found):
            self.found.append(Uplink(iface, text, sure))


def interfaces(host: Host) -> list[Interface]:
    """Every interface that rests directly on a PCI device (or a USB NIC on its controller)."""
    found = []
    for name in names(host, "/sys/class/net"):
        device = resolve(host, f"/sys/class/net/{name}/device")  # resolved: read as it is
        if device is None or not host.path(str(device)).exists():
            continue
        bdf = nearest_bdf(device)
        if bdf is None:
            continue
        uevent = read(host, f"/sys/class/net/{name}/uevent", optional=True) or ""
        arphrd = value(host, f"/sys/class/net/{name}/type", optional=True)
        if "DEVTYPE=wlan" in uevent.split() or exists(host, f"/sys/class/net/{name}/wireless"):
            kind = "wlan"
        else:
            kind = "ether" if arphrd == str(ARPHRD_ETHER) else arphrd
        driver = resolve(host, f"/sys/class/net/{name}/device/driver")
        found.append(Interface(
            name, bdf, value(host, f"/sys/class/net/{name}/address", optional=True).lower(),
            kind, driver.name if driver is not None and host.path(str(driver)).exists() else "",
            device.name == bdf))
    return found


def uplinks(host: Host, nics: list[Interface] | None = None) -> Uplinks:
    """The interfaces the host's network configuration brings up at boot, and what could not
    be read. `nics`: interfaces(host), when the caller has it already."""
    nics = interfaces(host) if nics is None else nics
    out = Uplinks()
    if _enabled(host, "systemd-networkd.service"):
        _networkd(host, nics, out)
    _ifupdown(host, nics, out)
    if _enabled(host, "NetworkManager.service"):
        _network_manager(host, nics, out)
    _netplan(host, out)
    return out


def _enabled(host: Host, unit: str) -> bool:
    """Whether a unit is pulled in at boot: a `*.wants/UNIT` link (or an alias of NM's)."""
    for directory in UNIT_DIRS:
        for wants in names(host, directory):
            if wants.endswith(".wants") and exists(host, f"{directory}/{wants}/{unit}"):
                return True
    return unit == "NetworkManager.service" and exists(
        host, "/etc/systemd/system/dbus-org.freedesktop.NetworkManager.service")


def _ini(text: str) -> dict[str, dict[str, list[str]]]:
    """[Section] Key=Value files (systemd units, NM keyfiles): every value of every key, in
    order; comments and continuation lines as systemd reads them."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in re.sub(r"\\\n", " ", text).splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1].strip(), {})
        elif "=" in line and current is not None:
            key, _, val = line.partition("=")
            current.setdefault(key.strip(), []).append(val.strip())
    return sections


def _globs(values: list[str]) -> tuple[list[str], bool]:
    """A systemd match list (an empty assignment resets it; a leading `!` inverts it)."""
    words: list[str] = []
    for val in values:
        words = [] if not val else words + val.split()
    invert = bool(words) and words[0].startswith("!")
    if invert:
        words[0] = words[0][1:]
    return [w for w in words if w], invert


# --- systemd-networkd ------------------------------------------------------------------------

_EVALUATED = ("Name", "MACAddress", "PermanentMACAddress", "Type", "Driver", "Kind", "Path")
_DOWN = ("down", "always-down", "manual")


def _networkd(host: Host, nics: list[Interface], out: Uplinks) -> None:
    files: dict[str, str] = {}  # file name -> the directory that wins
    for directory in NETWORKD_DIRS:
        for name in names(host, directory):
            if name.endswith(".network"):
                files.setdefault(name, directory)
    claimed: set[str] = set()
    for name in sorted(files):
        shown = f"{files[name]}/{name}"
        text = read(host, shown)
        if not text or resolve(host, shown) == PurePosixPath("/dev/null"):
            continue  # masked
        for directory in NETWORKD_DIRS:
            for dropin in names(host, f"{directory}/{name}.d"):
                if dropin.endswith(".conf"):
                    text += "\n" + (read(host, f"{directory}/{name}.d/{dropin}") or "")
        sections = _ini(text)
        match = sections.get("Match", {})
        unknown = sorted(k for k in match if k not in _EVALUATED)
        matched = [nic for nic in nics if nic.name not in claimed
                   and all(_networkd_matches(key, match[key], nic) for key in match
                           if key in _EVALUATED)]
        if not matched:
            continue
        claimed.update(nic.name for nic in matched)
        link = sections.get("Link", {})
        if (link.get("Unmanaged", ["no"])[-1].lower() not in _FALSE
                or link.get("ActivationPolicy", ["up"])[-1] in _DOWN):
            continue
        where = f"systemd-networkd ({shown})"
        if unknown or not match:
            why = (f"its [Match] has {', '.join(f'{k}=' for k in unknown)}, which pcipassd "
                   "cannot evaluate" if unknown else "it has no [Match]")
            out.warnings.append(f"{shown}: {why}; counting {_names(matched)} as brought up")
        elif len(matched) > 1:
            out.warnings.append(f"{shown} matches {_names(matched)}: counting each as brought "
                                "up; a run while the network is up tells which one carries it")
        sure = not unknown and bool(match) and len(matched) == 1
        for nic in matched:
            out.add(nic, f"{'will' if sure else 'may'} be brought up at boot by {where}", sure)


def _networkd_matches(key: str, values: list[str], nic: Interface) -> bool:
    words, invert = _globs(values)
    if not words:
        return True
    if key in ("MACAddress", "PermanentMACAddress"):
        hit = nic.mac in (w.lower() for w in words)
    elif key == "Kind":
        hit = False  # a physical NIC has no kind
    else:
        subject = {"Name": nic.name, "Type": nic.kind, "Driver": nic.driver,
                   "Path": f"pci-{nic.bdf}" if nic.direct else ""}[key]
        hit = any(fnmatch.fnmatchcase(subject, w) for w in words)
    return hit != invert


def _names(nics: list[Interface]) -> str:
    return ", ".join(nic.name for nic in nics)


# --- ifupdown --------------------------------------------------------------------------------


def _ifupdown_lines(host: Host, path: str, depth: int = 0) -> Iterator[tuple[str, list[str]]]:
    """(file, words) of each logical line of an interfaces(5) file, `source` followed."""
    text = read(host, path, optional=depth == 0)
    if text is None or depth > _MAX_SOURCES:
        return
    for line in re.sub(r"\\\n", " ", text).splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] in ("source", "source-directory"):
            for pattern in words[1:]:
                base = pattern if pattern.startswith("/") else f"/etc/network/{pattern}"
                for included in _expand(host, base, words[0] == "source-directory"):
                    yield from _ifupdown_lines(host, included, depth + 1)
            continue
        yield path, words


def _expand(host: Host, pattern: str, directory: bool) -> list[str]:
    """The files a `source` glob or a `source-directory` names, in order."""
    if directory:
        return [f"{pattern}/{n}" for n in names(host, pattern)
                if re.fullmatch(r"[A-Za-z0-9_-]+", n)]
    parent, _, glob = pattern.rpartition("/")
    return [f"{parent}/{n}" for n in names(host, parent or "/") if fnmatch.fnmatchcase(n, glob)]


def _ifupdown(host: Host, nics: list[Interface], out: Uplinks) -> None:
    started: list[tuple[str, str]] = []  # (interface, file)
    options: dict[str, dict[str, list[str]]] = {}
    stanza: dict[str, list[str]] | None = None
    for path, words in _ifupdown_lines(host, "/etc/network/interfaces"):
        if words[0] in ("auto", "allow-auto", "allow-hotplug"):
            started += [(name, path) for name in words[1:]]
            stanza = None
        elif words[0] == "iface" and len(words) > 1:
            stanza = options.setdefault(words[1], {})
        elif words[0] == "mapping":
            out.warnings.append(f"{path}: a `mapping` stanza, which pcipassd cannot follow")
            stanza = None
        elif stanza is not None:
            stanza.setdefault(words[0].replace("_", "-"), []).extend(words[1:])
    by_name = {nic.name: nic for nic in nics}
    for name, path in started:
        for physical in _lower(name, options, set()):
            if physical == "lo":
                continue
            if physical == "*":
                out.warnings.append(f"{path}: `bridge_ports all` on {name}: counting every "
                                    "wired NIC as brought up")
                for nic in nics:
                    if nic.kind == "ether":
                        out.add(nic, f"may be brought up at boot by ifupdown ({path})", False)
            elif physical in by_name:
                out.add(by_name[physical], f"will be brought up at boot by ifupdown ({path})")
            else:
                log.debug("%s brings up %s, which this host does not have now", path, physical)


def _lower(name: str, options: dict[str, dict[str, list[str]]], seen: set[str]) -> list[str]:
    """The physical interfaces under an ifupdown interface ("*": every one)."""
    if name in seen:
        return []
    seen.add(name)
    stanza = options.get(name, {})
    lower = [word for key in ("bridge-ports", "bond-slaves", "vlan-raw-device", "slaves")
             for word in stanza.get(key, []) if word not in ("none", "regex")]
    if "." in name and not lower:
        lower = [name.split(".", 1)[0]]
    if not lower:
        return [name]
    return ["*" if word == "all" else found
            for word in lower for found in _lower(word, options, seen)]


# --- NetworkManager --------------------------------------------------------------------------


def _network_manager(host: Host, nics: list[Interface], out: Uplinks) -> None:
    named: set[Interface] = set()
    profiles = [(f"{d}/{n}", _ini(read(host, f"{d}/{n}") or "")) for d in NM_DIRS
                for n in names(host, d) if n.endswith(".nmconnection")]
    profiles += [(f"/etc/sysconfig/network-scripts/{n}",
                  _ifcfg(read(host, f"/etc/sysconfig/network-scripts/{n}") or ""))
                 for n in names(host, "/etc/sysconfig/network-scripts")
                 if n.startswith("ifcfg-") and n != "ifcfg-lo"]
    for path, profile in profiles:
        connection = profile.get("connection", {})
        if connection.get("autoconnect", ["true"])[-1].lower() in _FALSE:
            continue
        kind = connection.get("type", [""])[-1]
        iface = connection.get("interface-name", [""])[-1]
        mac = (profile.get("ethernet", {}).get("mac-address")
               or profile.get("802-3-ethernet", {}).get("mac-address") or [""])[-1].lower()
        parent = profile.get("vlan", {}).get("parent", [""])[-1]
        hits = [nic for nic in nics if (iface and nic.name == iface) or (mac and nic.mac == mac)
                or (parent and nic.name == parent)]
        if hits:
            named.update(hits)
            for nic in hits:
                out.add(nic, f"will be brought up at boot by NetworkManager ({path})")
        elif kind in ("ethernet", "802-3-ethernet") and not (iface or mac):
            out.warnings.append(f"{path}: a NetworkManager profile for any wired NIC: "
                                "counting every wired NIC as brought up")
            for nic in nics:
                if nic.kind == "ether":
                    out.add(nic, f"may be brought up at boot by NetworkManager ({path})", False)
    skip = _no_auto_default(host)
    if skip is None:
        return
    unnamed = [nic for nic in nics if nic.kind == "ether" and nic not in named
               and nic.mac not in skip and f"interface-name:{nic.name}" not in skip]
    if unnamed:
        out.warnings.append(
            f"NetworkManager connects every wired NIC that has no profile ({_names(unnamed)}) "
            "unless `no-auto-default=*`: counting each as brought up")
    for nic in unnamed:
        out.add(nic, "may be brought up at boot by NetworkManager (it connects every wired NIC "
                     "that has no profile)", False)


def _ifcfg(text: str) -> dict[str, dict[str, list[str]]]:
    """An ifcfg-rh file (KEY=value, shell quoting) as the keyfile keys that matter here."""
    keys = {}
    for line in text.splitlines():
        key, sep, val = line.strip().partition("=")
        if sep and not key.startswith("#"):
            keys[key.strip()] = val.strip().strip("'\"")
    onboot = keys.get("ONBOOT", "yes").lower()
    return {"connection": {"autoconnect": ["false" if onboot in _FALSE else
                                                             "true"],
                           "type": ["ethernet" if keys.get("TYPE", "Ethernet") == "Ethernet"
                                    else keys.get("TYPE", "")],
                           "interface-name": [keys.get("DEVICE", "")]},
            "ethernet": {"mac-address": [keys.get("HWADDR", "")]}}


def _no_auto_default(host: Host) -> set[str] | None:
    """The wired NICs NetworkManager does not auto-connect (MACs, `interface-name:X`); None
    when it auto-connects none (`no-auto-default=*`)."""
    conf = ["/etc/NetworkManager/NetworkManager.conf"]
    for directory in ("/usr/lib/NetworkManager/conf.d", "/run/NetworkManager/conf.d",
                      "/etc/NetworkManager/conf.d"):
        conf += [f"{directory}/{n}" for n in names(host, directory) if n.endswith(".conf")]
    specs: list[str] = []
    for path in conf:
        for val in _ini(read(host, path, optional=True) or "").get("main", {}).get(
                "no-auto-default", []):
            specs = [s.strip().lower() for s in re.split(r"[,;]", val) if s.strip()]
    if "*" in specs:
        return None
    state = read(host, "/var/lib/NetworkManager/no-auto-default.state", optional=True) or ""
    specs += [s.strip().lower() for s in re.split(r"[,;\n]", state) if s.strip()]
    return {s.removeprefix("mac:") for s in specs}


# --- netplan ---------------------------------------------------------------------------------


def _netplan(host: Host, out: Uplinks) -> None:
    configs = [f"{d}/{n}" for d in ("/etc/netplan", "/run/netplan", "/lib/netplan")
               for n in names(host, d) if n.endswith(".yaml")]
    generated = [n for d in ("/run/systemd/network", "/run/NetworkManager/system-connections")
                 for n in names(host, d) if n.startswith(("10-netplan-", "netplan-"))]
    if configs and not generated:
        out.warnings.append(f"{configs[0]}: netplan's generated configuration is not in /run, "
                            "so pcipassd cannot read what it brings up")
