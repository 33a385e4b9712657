"""The bookkeeping around a training step, each piece testable on its own.

- :class:`NonFiniteGuard` remembers, on the device, the first step whose loss was not finite (no
  host sync in the step) and raises when asked, so a non-finite run is never checkpointed.
- :class:`TrainLog` owns ``train_log.jsonl`` (JSON lines, as barlowtwins' ``stats.txt``), the
  progress bar and the throughput window (samples/s and the fraction spent waiting for data).
- :func:`truncate_log` drops the lines a resumed run will write again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from medzoo.errors import MedzooError
from medzoo.provenance import atomic_write_text

LOG = "train_log.jsonl"


class NonFiniteGuard:
    """First non-finite loss, recorded on the loss's device without reading it back."""

    def __init__(self, device: torch.device) -> None:
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_loss = torch.zeros((), device=device)

    def record(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach()
        newly_bad = (self.first_bad < 0) & ~torch.isfinite(loss)
        self.first_bad = torch.where(newly_bad, step, self.first_bad)
        self.bad_loss = torch.where(newly_bad, loss, self.bad_loss)

    def check(self, checkpoint: Path) -> None:
        """Raise (one host sync) if any recorded loss was not finite."""
        if self.first_bad.item() >= 0:
            raise MedzooError(
                f"loss became {self.bad_loss.item()} at step {self.first_bad.item()}; the last good "
                f"checkpoint is kept in {checkpoint}: lower optim.lr or use "
                "training.precision=fp32, then --resume"
            )


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a resumed run restarts from.

    A last line cut short by the kill that ended the run is dropped; any other line that is not a
    JSON record with an integer step is a damaged log, refused in one line.
    """
    if not path.exists():
        return
    kept = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise MedzooError(
            f"the training log {path} cannot be read ({type(err).__name__})"
        ) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record_step = json.loads(line)["step"]
            if not isinstance(record_step, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                continue
            raise MedzooError(
                f"the training log {path} is damaged at line {number} (not a JSON record with a "
                "step): fix or remove that line, then --resume"
            ) from None
        if record_step <= step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


class TrainLog:
    """JSON-lines log, progress bar and throughput window of one process (files on rank 0 only)."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        path: Path | None,
        *,
        total_steps: int,
        step: int,
        desc: str,
        progress: bool,
    ) -> None:
        self.handle = None
        if path is not None:
            # closed by the caller's ExitStack, with the bar and the prefetch pool
            self.handle = stack.enter_context(open(path, "a", encoding="utf-8"))  # noqa: SIM115
        # the progress rule of every command (medzoo.progress): a bar on a terminal, else one
        # plain log line per progress update (each logged step and monitor reading)
        from medzoo.progress import on_terminal

        self.bar = None
        self.plain = progress and not on_terminal()
        self.desc, self.total_steps, self.step = desc, total_steps, step
        if progress and not self.plain:
            from tqdm.auto import tqdm

            self.bar = stack.enter_context(
                tqdm(total=total_steps, initial=step, desc=desc, unit="step", dynamic_ncols=True)
            )
        self.postfix: dict[str, str] = {}
        self._reset_window()

    def _reset_window(self) -> None:
        self.window_start, self.window_wait, self.window_samples = time.perf_counter(), 0.0, 0

    def waited(self, seconds: float) -> None:
        self.window_wait += seconds

    def paused(self, seconds: float) -> None:
        """Leave ``seconds`` of non-training work (the monitor) out of the throughput."""
        self.window_start += seconds

    def stepped(self, samples: int) -> None:
        self.window_samples += samples
        self.step += 1
        if self.bar is not None:
            self.bar.update(1)

    def throughput(self) -> dict[str, float]:
        """Samples/s and data-wait fraction since the last call; starts a new window."""
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        result = {
            "samples_per_s": self.window_samples / elapsed,
            "data_wait": self.window_wait / elapsed,
        }
        self._reset_window()
        return result

    def write(self, record: dict[str, Any]) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()

    def show(self, **values: str) -> None:
        """Update the progress line (values persist until replaced)."""
        self.postfix.update(values)
        if self.bar is not None:
            self.bar.set_postfix(self.postfix)
        elif self.plain:  # a log file: each update once, with only what it measured
            shown = " ".join(f"{k}={v}" for k, v in values.items())
            logging.getLogger("medzoo").info(
                "%s: step %d/%d %s", self.desc, self.step, self.total_steps, shown
            )
