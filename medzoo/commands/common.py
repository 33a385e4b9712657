"""The flags every command spells the same way: one CLI grammar, defined once.

- ``--data-root DIR``: wherever a command reads MIMeta data; the default is ``MEDZOO_DATA``, else
  ``data/mimeta`` (recipe-driven commands let the recipe's ``data.root`` come before both).
- ``--json``: machine-readable output on stdout, wherever a command has a result to print.
- ``--quiet``: no progress. Progress follows one rule everywhere (:mod:`medzoo.progress`): a
  bar on a terminal, one plain line per unit of work in a log file.
- ``--out DIR``: where a command writes.

Old spellings stay as hidden aliases only where the README used them (``data fetch --root``,
``data info ROOT``, ``data bench ROOT``, ``export --calibration-data``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DATA_ROOT_DEST = "data_root"


def add_data_root(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    what: str = "MIMeta root to read",
    recipe: bool = False,
    hidden_positional: bool = False,
    hidden_aliases: tuple[str, ...] = (),
) -> None:
    """``--data-root DIR`` (default ``MEDZOO_DATA``, else ``data/mimeta``).

    ``hidden_positional`` keeps an old ``ROOT`` positional working (not shown in ``--help``);
    ``hidden_aliases`` keeps old option spellings (e.g. ``--root``) the same way.
    """
    first = "the recipe's data.root, then " if recipe else ""
    parser.add_argument(
        "--data-root",
        dest=DATA_ROOT_DEST,
        metavar="DIR",
        default=None,
        help=f"{what} (default: {first}$MEDZOO_DATA, else data/mimeta)",
    )
    for alias in hidden_aliases:
        parser.add_argument(alias, dest=DATA_ROOT_DEST, default=None, help=argparse.SUPPRESS)
    if hidden_positional:
        parser.add_argument("legacy_root", nargs="?", default=None, help=argparse.SUPPRESS)


def data_root_of(args: argparse.Namespace) -> Path:
    """The data root a command reads: ``--data-root`` (or its old spellings), else the default."""
    from medzoo.config import data_root
    from medzoo.errors import MedzooError

    explicit = getattr(args, DATA_ROOT_DEST, None)
    legacy = getattr(args, "legacy_root", None)
    if explicit and legacy and Path(explicit) != Path(legacy):
        raise MedzooError(f"two data roots given ({legacy} and --data-root {explicit}): give one")
    return data_root(explicit or legacy)


def add_json(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "") -> None:
    parser.add_argument(
        "--json", action="store_true", help=f"print {what or 'the result'} as JSON on stdout"
    )


def add_quiet(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress output (a bar on a terminal, one line per step in a log otherwise)",
    )


def add_out(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: str, what: str
) -> None:
    parser.add_argument("--out", metavar="DIR", default=None, help=f"{what} (default: {default})")


def add_set_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, example: str) -> None:
    """The repeatable ``--set KEY=VALUE`` recipe override every recipe-driven command takes."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a recipe value, e.g. --set {example} (repeatable; values are TOML)",
    )


def progress_enabled(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def refuse_unused(args: argparse.Namespace, flags: dict[str, Any], why: str) -> None:
    """Refuse flags that do nothing here: ``flags`` maps a flag to its dest; unset means None."""
    from medzoo.errors import MedzooError

    given = [
        flag for flag, dest in flags.items() if getattr(args, dest, None) not in (None, False, [])
    ]
    if given:
        raise MedzooError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} nothing {why}")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # logging assigns it in __init__; ignored
        pass


@contextlib.contextmanager
def program_logging(quiet: bool = False) -> Iterator[None]:
    """For one run of the ``medzoo`` program: the ``medzoo`` logger's INFO lines on stderr.

    Only medzoo's own logger is touched (the root logger and other libraries' loggers are left
    as they are), and only while the command runs: ``main()`` called in-process leaves the
    logging setup as it found it. ``quiet`` shows warnings only.
    """
    logger = logging.getLogger("medzoo")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    # our handler shows medzoo's lines; a root handler that a library installs mid-run
    # (onnxruntime.quantization calls logging.basicConfig) must not print them a second time
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
