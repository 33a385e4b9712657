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


class Counter:
    """A counted job shown by the rule above when the loop is not a plain iterable.

    ``note(text)`` names the unit in progress; ``advance()`` counts one unit done: the bar moves
    on a terminal, and elsewhere one plain line (``desc: 3/12 unit, note``) goes to the log.
    """

    def __init__(
        self, total: int, *, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0
    ) -> None:
        self.total, self.desc, self.unit, self.count = total, desc, unit, initial
        self.enabled, self.text, self.bar = enabled, "", None
        if enabled and on_terminal():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)

    def note(self, text: str) -> None:
        self.text = text
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def advance(self, n: int = 1) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            suffix = f", {self.text}" if self.text else ""
            logger.info("%s: %d/%d %s%s", self.desc, self.count, self.total, self.unit, suffix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
