"""CLI command groups; each module has ``register(subparsers)`` (see ``medzoo/cli.py``).

The flags they share are defined once in :mod:`medzoo.commands.common`.
"""

from __future__ import annotations

from medzoo.commands.common import add_set_option

__all__ = ["add_set_option"]
