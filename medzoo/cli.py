"""The ``medzoo`` command: a thin argparse front over the library.

Each command group lives in ``medzoo/commands/<group>.py`` with a ``register(subparsers)``
function that adds its subcommands and sets ``func`` to a handler taking the parsed args. The
handlers only choose and call library functions. A :class:`~medzoo.errors.MedzooError` becomes
one line on stderr and exit status 2; so do the error families a user or a disk can cause
(:func:`medzoo.errors.user_error`: disk errors by errno, damaged images, HDF5 files, non-UTF-8
text). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from medzoo import __version__
from medzoo.errors import MedzooError, user_error

COMMAND_MODULES = ("demo", "data", "pretrain", "evaluate", "zoo", "export", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medzoo",
        description="Self-supervised (Barlow Twins) ResNet-18 backbones for MIMeta medical imaging: "
        "pre-train, evaluate, load, export, benchmark and publish.",
    )
    parser.add_argument("--version", action="version", version=f"medzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"medzoo.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from medzoo.commands.common import program_logging

    try:
        with program_logging(quiet=getattr(args, "quiet", False)):
            result = args.func(args)
    except MedzooError as err:
        print(f"medzoo: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        message = user_error(err)
        if message is None:
            raise
        print(f"medzoo: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medzoo: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
