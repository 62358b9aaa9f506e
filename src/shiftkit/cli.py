"""The `shiftkit` command.

Each subcommand lives in `shiftkit.commands.<module>` and exposes:
    HELP: str                          one line for the command list
    configure(parser) -> None          adds its arguments (and an example in the epilog)
    run(args) -> int                   0 success, 1 ran and found problems, 2 usage/input error
Modules are imported lazily so `shiftkit --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from shiftkit import __version__
from shiftkit.errors import ShiftkitError

# name -> module under shiftkit.commands; a missing module hides the command (work in progress).
COMMANDS: dict[str, str] = {
    "validate": "validate",
    "data": "data",
    "drift": "drift",
    "transfer": "transfer",
    "weights": "weights",
    "train": "train",
    "evaluate": "evaluate",
    "predict": "predict",
    "adapt": "adapt",
    "analyze": "analyze",
    "augment": "augment",
    "translator": "translator",
}


def _load(name: str):
    try:
        return importlib.import_module(f"shiftkit.commands.{COMMANDS[name]}")
    except ModuleNotFoundError as exc:
        if exc.name == f"shiftkit.commands.{COMMANDS[name]}":
            return None
        raise


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shiftkit",
        description="Diagnose and fix domain shift in computer vision datasets and models.",
        epilog="Run `shiftkit COMMAND --help` for the options and an example of each command.",
    )
    parser.add_argument("--version", action="version", version=f"shiftkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if only is not None and name != only:
            continue
        module = _load(name)
        if module is None:
            continue
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Import only the named command's module when one is given (fast startup).
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except ShiftkitError as exc:
        print(f"shiftkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shiftkit {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
