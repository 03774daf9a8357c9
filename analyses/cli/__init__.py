"""The ``vestige`` command line: one module per subcommand, each with ``register(subparsers)`` and
``run(args) -> int``; the shared model and concept arguments live in ``common``.

Errors derived from ``VestigeError`` are printed as problem / cause / fix with exit code 2, no traceback;
a bad argument value is refused by argparse with its usage line, also with exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from analyses.cli import audit, bench, concepts, demo, heads, info, plan, unlearn
from probes.errors import VestigeError

COMMANDS = (info, plan, concepts, heads, unlearn, audit, demo, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vestige",
        description="Is the unlearned knowledge gone from the weights, or only hidden from the output?",
    )
    parser.add_argument("--no-progress", action="store_true", help="turn progress bars off")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub).set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, already printed)
        return int(e.code or 0)
    if args.no_progress:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        return int(args.run(args) or 0)
    except VestigeError as e:
        print(f"vestige: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(
            f"vestige: error: {e.filename or e}: no such file\n  cause: {e.strerror or e}\n"
            "  fix:   check the path (relative paths start from the current directory)",
            file=sys.stderr,
        )
        return 2
    except (IsADirectoryError, NotADirectoryError, FileExistsError, PermissionError) as e:
        # A path given on the command line that is the wrong kind of thing (a file where a folder must be,
        # or the reverse) or may not be written; the commands check their --out first, this is the net.
        print(
            f"vestige: error: cannot use {e.filename or e}\n  cause: {e.strerror or e}\n"
            "  fix:   pass a path of the right kind (a folder for --out, a file for input files) that you "
            "may read and write",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
