"""`pcipassd schema`: the configuration's JSON schema."""

from __future__ import annotations

import sys

from pcipassd.exits import EXIT_OK

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipassd.context import Context


def run(ctx: Context) -> int:
    from pcipassd.config import schema_text  # noqa: PLC0415

    sys.stdout.write(schema_text())
    return EXIT_OK
