"""The command line: `pcipassd VERB`. Errors are caught here, once, as one line plus a hint."""

from __future__ import annotations

import sys

# Each verb imports what it needs when it runs (see bench/noop_apply.py): `--version` and a
# converged `apply` stay near a bare interpreter start, and a missing dependency (PyYAML,
# jsonschema) is met inside main(), which names the package to install.
TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from types import SimpleNamespace

    from pcipassd.context import Context
    from pcipassd.errors import Problem
    from pcipassd.kernel import Kernel

# A dependency that is not installed: the package to install, by distribution.
PACKAGES = {
    "yaml": "python3-yaml (Fedora/RHEL: python3-pyyaml; pip: PyYAML)",
    "jsonschema": "python3-jsonschema",
}


# Each verb: where its `run(ctx) -> int` is ("module:function", imported when it runs), its
# help, and whether it takes --json (the verbs of output.JSON_KEYS).
VERBS: dict[str, tuple[str, str, bool]] = {
    "validate": ("pcipassd.verbs.validate:run",
                 "check the configuration files (all problems at once)", True),
    "check": ("pcipassd.verbs.check:run", "check that the IOMMU is on and passthrough can work",
              True),
    "plan": ("pcipassd.verbs.plan:run", "show what apply would do, changing nothing", True),
    "apply": ("pcipassd.sequence:apply",
              "bind the configured devices; restore those no longer configured", False),
    "restore": ("pcipassd.sequence:restore_all",
                "give every device pcipassd bound (or those at ADDRESS) back to its original "
                "driver", False),
    "status": ("pcipassd.verbs.status:run",
               "show each configured device and whether it is where it should be", True),
    "publish": ("pcipassd.verbs.publish:run",
                "write the node document (and node labels) again from what the host shows; "
                "moves nothing", False),
    "list": ("pcipassd.verbs.list:run",
             "list every PCI device by IOMMU group, and what can be passed through", True),
    "schema": ("pcipassd.verbs.schema:run", "print the configuration's JSON schema", False),
}


class _UsageError(Exception):
    """A wrong command line: main() says so and exits 64."""


def _verb(argv: Sequence[str]) -> str | None:
    """The verb of a command line, when it is plainly there: then only its own parser is built
    (building all eight costs more than a no-op apply's work). None: build them all."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        word = argv[i]
        if word in ("-h", "--help") or word.startswith("--v"):
            return None  # the help lists every verb; --version wants none
        takes_value = "=" not in word and len(word) > 2 and any(
            option.startswith(word) for option in ("--root", "--config"))  # also abbreviated
        i += 2 if takes_value else 1
    return argv[i] if i < len(argv) and argv[i] in VERBS else None


def _plain(argv: Sequence[str]) -> SimpleNamespace | None:
    """The command line as argparse would read it, when it is one the units run: `apply`,
    `restore` or `restore --on-stop` (ExecStop) last, before it only --root DIR, --config FILE,
    --debug, each at most once and spelt out, and no value that starts with "-". None for any
    other: argparse reads that."""
    from types import SimpleNamespace  # noqa: PLC0415

    given: dict[str, object] = {}
    if list(argv[-2:]) == ["restore", "--on-stop"]:
        given["on_stop"] = True
        argv = argv[:-1]
    i = 0
    while i < len(argv) - 1:
        word = argv[i]
        if word in ("--root", "--config") and word[2:] not in given:
            value = argv[i + 1]
            if not value or value.startswith("-"):
                return None
            given[word[2:]] = value
            i += 2
        elif word == "--debug" and "debug" not in given:
            given["debug"] = True
            i += 1
        else:
            return None
    if i != len(argv) - 1 or argv[i] not in ("apply", "restore"):
        return None
    if argv[i] == "restore":  # as argparse has them: no ADDRESS
        given.setdefault("on_stop", False)
        given["devices"] = []
    elif "on_stop" in given:
        return None
    return SimpleNamespace(**given, verb=argv[i])


def parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `verb`, only that verb's parser (see _verb). In cmdline.py, with
    argparse: `apply` and `restore` as the units run them need neither (see _plain)."""
    from pcipassd.cmdline import parser as build  # noqa: PLC0415

    return build(verb)


def main(argv: Sequence[str] | None = None, *, kernel: Kernel | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = _plain(argv) or parser(_verb(argv)).parse_args(argv)
    except _UsageError as e:
        from pcipassd.exits import EXIT_USAGE  # noqa: PLC0415
        from pcipassd.output import envelope, print_json  # noqa: PLC0415

        sys.stderr.write(f"{e}\n")
        if "--json" in argv:  # one object on every exit, a wrong command line too
            print_json(envelope(_verb(argv), EXIT_USAGE, {},
                                  (str(e).partition("error: ")[2], "see `pcipassd --help`")))
        raise SystemExit(EXIT_USAGE) from None
    for name, default in (("root", "/"), ("config", None), ("debug", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    ran: list[Context] = []
    from pcipassd.exits import EXIT_FAIL  # noqa: PLC0415
    from pcipassd.output import envelope, print_json  # noqa: PLC0415

    try:
        rc, error, problems = _run(args, kernel, ran)
    except Exception as e:  # --debug, or a bug: the traceback follows the one object
        if getattr(args, "json", False):
            from pcipassd.errors import PcipassError  # noqa: PLC0415

            out = ran[0].out if ran else {}
            if isinstance(e, PcipassError):
                print_json(envelope(args.verb, e.exit_code, out, (e.message, e.hint)))
            else:
                print_json(envelope(args.verb, EXIT_FAIL, out, (
                    f"{type(e).__name__}: {e}",
                    "a bug in pcipassd: please report it with the traceback")))
        raise
    if getattr(args, "json", False):
        out = ran[0].out if ran else {}
        try:
            print_json(envelope(args.verb, rc, out, error, problems))
            sys.stdout.flush()
        except BrokenPipeError:
            sys.stderr.close()
            return EXIT_FAIL
    return rc


def _run(args: argparse.Namespace | SimpleNamespace, kernel: Kernel | None,
         ran: list[Context]) -> tuple[int, tuple[str, str] | None, Sequence[Problem]]:
    """Run the verb; every error is caught here, once, and logged as one line plus a hint.
    Returns the exit status, the error (message, hint) and the config's problems, for the
    JSON envelope; `ran` gets the verb's Context (what it found before an error)."""
    import importlib  # noqa: PLC0415

    from pcipassd import log as logsetup  # noqa: PLC0415 - after --version and --help
    from pcipassd.context import Context  # noqa: PLC0415
    from pcipassd.errors import InvalidConfig, PcipassError  # noqa: PLC0415
    from pcipassd.exits import EXIT_FAIL  # noqa: PLC0415
    from pcipassd.output import log, log_problems  # noqa: PLC0415

    logsetup.setup(debug=args.debug)
    try:
        ctx = Context(args, kernel)
        ran.append(ctx)
        module, _, function = VERBS[args.verb][0].partition(":")
        rc = getattr(importlib.import_module(module), function)(ctx)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return rc, None, ()
    except InvalidConfig as e:
        log_problems(e.problems)
        log().error("invalid configuration: nothing was changed")
        return e.exit_code, ("invalid configuration: nothing was changed", e.hint), e.problems
    except PcipassError as e:
        log().error("%s%s", e.message, f" (hint: {e.hint})" if e.hint else "")
        if args.debug:
            raise
        return e.exit_code, (e.message, e.hint), ()
    except KeyboardInterrupt:
        return 130, ("interrupted", ""), ()
    except BrokenPipeError:  # `pcipassd plan | head`: the reader is gone; nothing to say
        sys.stderr.close()  # and no "Exception ignored" when Python flushes stdout at exit
        return EXIT_FAIL, None, ()
    except PermissionError as e:
        log().error("%s: %s", e.filename or "permission denied", e.strerror,
                  extra={"journal": {}})
        log().error("pcipassd %s needs root", args.verb)
        if args.debug:
            raise
        return EXIT_FAIL, (f"{e.filename or 'permission denied'}: {e.strerror}",
                           f"pcipassd {args.verb} needs root"), ()
    except ModuleNotFoundError as e:
        module = (e.name or "").partition(".")[0]
        if module not in PACKAGES or args.debug:
            raise
        log().error("pcipassd %s needs the Python module %s, which is not installed "
                  "(hint: install %s)", args.verb, module, PACKAGES[module])
        return EXIT_FAIL, (f"pcipassd {args.verb} needs the Python module {module}, which is "
                           "not installed", f"install {PACKAGES[module]}"), ()


if __name__ == "__main__":
    raise SystemExit(main())
