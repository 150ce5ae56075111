"""Config text on a terminal or in the journal: control characters shown, never obeyed.

A `name:` (or a drop-in's file name) may contain an escape sequence or a newline; printed raw, it
could repaint the terminal or forge a log line. `printable` spells such characters out as
`\\xNN`/`\\uNNNN`, as Python's repr would, and leaves every other character alone.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators and bidi overrides
_UNSAFE = "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
SHOWN = 60  # characters of a value shown in a message


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with its control characters escaped; plain text comes back unchanged."""
    if text.isprintable():  # none of _UNSAFE (all Cc, Cf, Zl, Zp): no need to compile it
        return text
    return re.sub(_UNSAFE, _escape, text)


def short(text: str, limit: int = SHOWN) -> str:
    """`text`, printable and cut to about `limit` characters (…) for a message."""
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def in_xml_comment(text: str) -> str:
    """`text`, printable, and never ending an XML comment (`--` may not occur inside one)."""
    text = printable(text)
    while "--" in text:
        text = text.replace("--", "- -")
    return text  # the caller puts a blank between it and the closing -->
