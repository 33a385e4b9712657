"""Shared fixtures: an isolated MEDZOO_HOME per test, no network, and synthetic MIMeta data.

The synthetic data is written once per session by medzoo itself (``medzoo.data.synth``) in the
real MIMeta on-disk format, at 32 px so the CPU suite stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own zoo registry and never touches the network."""
    home = tmp_path / "medzoo-home"
    monkeypatch.setenv("MEDZOO_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("MEDZOO_DATA", raising=False)
    return home


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All four synthetic datasets (crc + the three organ views) at 32 px; read-only for tests."""
    from medzoo.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("mimeta")
    write_synthetic(root, size=32, per_class=12, seed=0)
    return root
