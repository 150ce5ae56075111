"""StrictModes, as sshd has them: pcipassd uses a config file only if no one but root (or the
user running pcipassd) can have written it.

A file, or a directory above it, that another user owns or that group or others may write lets
that user hand devices to a VM (`force: true` on the boot VGA device), so it is refused with
the fix. A directory with the sticky bit (/tmp) is safe to pass through: no one can replace
another's entries in it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def _owner(uid: int) -> str:
    import pwd  # noqa: PLC0415 - only when a file is refused

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def untrusted(st: os.stat_result) -> str:
    """Why a file or directory with this status is not to be trusted; "" when it is."""
    why = []
    if st.st_uid not in (0, os.geteuid()):
        why.append(f"is owned by {_owner(st.st_uid)}, not root")
    sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
    if st.st_mode & 0o022 and not sticky:
        who = " and ".join(w for bit, w in ((0o020, "group"), (0o002, "others"))
                           if st.st_mode & bit)
        why.append(f"is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})")
    return " and ".join(why)


def untrusted_dirs(file: Path, root: Path) -> list[tuple[Path, str]]:
    """The directories above `file` that are not to be trusted, up to `root` included when the
    file is under it, else up to /: those above the file a symlink points to, and those above
    the symlink itself (whoever may replace the link chooses the file)."""
    top = Path(os.path.realpath(root))
    out: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for start in (Path(os.path.realpath(file)).parent, Path(os.path.realpath(file.parent))):
        here = start
        while here not in seen:
            seen.add(here)
            try:
                why = untrusted(os.stat(here))
            except OSError:
                why = ""  # reading the file will say what is wrong
            if why:  # named under `root` as given, so that the caller can show it as on the host
                under = here == top or top in here.parents
                out.append((root / here.relative_to(top) if under else here, why))
            if here in (top, here.parent):
                break
            here = here.parent
    return out
