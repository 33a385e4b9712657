"""The training loop's bookkeeping, each piece on its own: the non-finite-loss policy, the log
and its throughput window, and log truncation on resume."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest
import torch

from medzoo.errors import MedzooError
from medzoo.trainlog import NonFiniteGuard, TrainLog, truncate_log


def test_guard_names_the_first_non_finite_step_only() -> None:
    guard = NonFiniteGuard(torch.device("cpu"))
    guard.record(torch.tensor(1.5), 0)
    guard.check(Path("ckpt.pt"))  # finite so far: nothing raised
    guard.record(torch.tensor(float("inf")), 1)
    guard.record(torch.tensor(float("nan")), 2)
    with pytest.raises(MedzooError, match="loss became inf at step 1.*ckpt.pt"):
        guard.check(Path("ckpt.pt"))


def test_log_lines_and_throughput_leave_pauses_out(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        log = TrainLog(
            stack, tmp_path / "log.jsonl", total_steps=4, step=0, desc="t", progress=False
        )
        time.sleep(0.05)
        log.paused(0.05)  # e.g. a monitor reading: not training time
        log.stepped(100)
        rate = log.throughput()["samples_per_s"]
        log.write({"step": 1, "loss": 2.0})
    assert rate > 100 / 0.04  # the paused 0.05 s did not count
    assert json.loads((tmp_path / "log.jsonl").read_text()) == {"step": 1, "loss": 2.0}


def test_truncate_log_drops_lines_after_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (0, 2, 4, 6)))
    truncate_log(path, 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 2, 4]
