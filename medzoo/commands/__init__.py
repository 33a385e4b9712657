"""CLI command groups; each module has ``register(subparsers)`` (see ``medzoo/cli.py``)."""

from __future__ import annotations

import argparse


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
