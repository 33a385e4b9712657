"""Running a 2-process gloo test with torch.multiprocessing, and what counts as its failure.

Each worker saves its results (atomically) before tearing the process group down. On a loaded
2-core machine gloo's teardown has been seen to abort a worker *after* that ("terminate called
without an active exception", SIGABRT in ``destroy_process_group``), which says nothing about the
numbers under test. :func:`spawn` therefore accepts a SIGABRT only when every rank's result file
is complete, and warns; any other exit, or an abort before the results exist, fails the test.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def save_result(obj: Any, out_dir: str, rank: int) -> None:
    """``rank{rank}.pt`` in ``out_dir``, written under a temporary name and renamed."""
    path = Path(out_dir) / f"rank{rank}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def teardown() -> None:
    """Leave the group together (a barrier first), then destroy it."""
    try:
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def spawn(worker: Callable[..., None], out_dir: Path, world_size: int) -> None:
    try:
        mp.spawn(worker, args=(free_port(), str(out_dir)), nprocs=world_size, join=True)
    except mp.ProcessExitedException as err:
        done = all((out_dir / f"rank{r}.pt").is_file() for r in range(world_size))
        if err.signal_name != "SIGABRT" or not done:
            raise
        warnings.warn(
            f"a gloo worker aborted in teardown after saving its results: {err}", stacklevel=2
        )
