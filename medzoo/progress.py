"""One progress rule for every command: a tqdm bar on a terminal, plain lines otherwise.

On a terminal (stderr is a TTY) a tqdm bar; in a log file (nohup, Slurm, CI) one plain line per
unit of work (a run, an epoch, an export step) through ``logging.getLogger("medzoo")``, so the
log shows where a job is without carriage-return noise; ``enabled=False`` (``--quiet``) is silent.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

logger = logging.getLogger("medzoo")


def on_terminal() -> bool:
    """True when progress goes to an interactive terminal (stderr is a TTY)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress(
    iterable: Iterable[T],
    *,
    desc: str,
    unit: str = "it",
    total: int | None = None,
    enabled: bool = True,
    every: int = 1,
) -> Iterator[T]:
    """Yield from ``iterable`` while showing progress by the rule above.

    ``every`` thins the plain lines (one per ``every`` units, plus the last) for fine-grained
    units such as batches; the bar is unaffected.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not enabled:
        yield from iterable
        return
    if on_terminal():
        from tqdm.auto import tqdm

        yield from tqdm(iterable, desc=desc, unit=unit, total=total, leave=False)
        return
    count = 0
    for count, item in enumerate(iterable, 1):
        yield item
        if count % max(1, every) == 0 or count == total:
            of = f"/{total}" if total is not None else ""
            logger.info("%s: %d%s %s", desc, count, of, unit)
