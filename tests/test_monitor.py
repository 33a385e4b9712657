"""The online representation monitor: its metrics against reference formulas, its subsets,
collapse detection, and its place in the pre-training loop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from medzoo.monitor import (
    CollapseWatch,
    effective_rank,
    knn_accuracy,
    load_monitor_data,
    on_diagonal_correlation,
)


def _reference_knn(train, train_labels, test, test_labels, num_classes, k, temperature):
    """solo-learn's WeightedKNNClassifier, one test sample at a time."""
    correct = 0
    for feature, label in zip(test, test_labels):
        sims = torch.tensor(
            [torch.nn.functional.cosine_similarity(feature, t, dim=0).item() for t in train]
        )
        top = sims.argsort(descending=True)[:k]
        votes = torch.zeros(num_classes, dtype=torch.float64)
        for index in top:
            votes[train_labels[index]] += math.exp(sims[index].item() / temperature)
        correct += int(votes.argmax().item() == label)
    return correct / len(test)


def test_knn_matches_the_reference_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=generator)
    train_labels = torch.arange(60) % 4
    test_labels = torch.arange(25) % 4
    train = centres[train_labels] + 1.2 * torch.randn(60, 16, generator=generator)
    test = centres[test_labels] + 1.2 * torch.randn(25, 16, generator=generator)
    ours = knn_accuracy(train, train_labels, test, test_labels, num_classes=4, k=7, temperature=0.1)
    ref = _reference_knn(train, train_labels, test, test_labels, 4, 7, 0.1)
    assert ours == pytest.approx(ref)
    assert 0.3 < ours < 1.0  # neither trivial nor chance: the comparison has teeth
    # well-separated clusters are classified perfectly; shuffled labels are near chance
    tight = centres[train_labels] + 0.01 * torch.randn(60, 16, generator=generator)
    assert knn_accuracy(tight, train_labels, centres[test_labels], test_labels, num_classes=4) == 1


def test_effective_rank_counts_equal_directions() -> None:
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(64, 64, generator=generator))[0]
    for rank in (1, 5, 20):
        coefficients = torch.randn(500, rank, generator=generator)
        coefficients = torch.linalg.qr(coefficients)[0] * 10  # orthonormal columns: equal energy
        embeddings = coefficients @ basis[:rank] + 3.0  # the mean is removed
        assert effective_rank(embeddings) == pytest.approx(rank, rel=1e-3)
    assert effective_rank(torch.ones(10, 8)) == 0.0  # no variance at all: fully collapsed


def test_on_diagonal_correlation() -> None:
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(256, 32, generator=generator)
    assert on_diagonal_correlation(z, z) == pytest.approx(1.0, abs=1e-4)
    assert on_diagonal_correlation(z, -z) == pytest.approx(-1.0, abs=1e-4)
    assert abs(on_diagonal_correlation(z, torch.randn(256, 32, generator=generator))) < 0.1


def test_collapse_watch_needs_consecutive_low_readings() -> None:
    watch = CollapseWatch(threshold=5.0, patience=2)
    watch.update(0, 10.0)
    assert not watch.suspect
    watch.update(10, 3.0)
    assert watch.suspect and not watch.collapsed
    watch.update(20, 9.0)  # recovered: the count starts over
    assert not watch.suspect
    watch.update(30, 1.0)
    watch.update(40, 1.0)
    assert watch.collapsed and watch.low == [30, 40]


def test_subsets_are_stratified_fixed_and_never_test(synth_root: Path) -> None:
    first = load_monitor_data(
        synth_root, ["crc"], image_size=32, channels=3, val_size=18, train_size=27, seed=0
    )
    again = load_monitor_data(
        synth_root, ["crc"], image_size=32, channels=3, val_size=18, train_size=27, seed=0
    )
    assert not isinstance(first, str)
    assert torch.equal(first.val_images, again.val_images)
    assert torch.bincount(first.val_labels).tolist() == [2] * 9  # 18 of crc's 27 val images
    assert torch.bincount(first.train_labels).tolist() == [3] * 9
    # a mix gives each dataset its own label range; a 1-channel model sees crc's luminance
    mixed = load_monitor_data(
        synth_root, ["organs_axial", "crc"], image_size=32, channels=1, val_size=100,
        train_size=100, seed=0,
    )  # fmt: skip
    assert mixed.num_classes == 11 + 9 and mixed.val_images.shape[1] == 1
    assert set(mixed.val_labels.tolist()) == set(range(20))


def test_monitor_is_off_without_a_val_split(synth_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "root"
    shutil.copytree(synth_root / "crc", root / "crc")
    (root / "crc" / "splits" / "val.txt").unlink()
    found = load_monitor_data(
        root, ["crc"], image_size=32, channels=3, val_size=10, train_size=10, seed=0
    )
    assert isinstance(found, str) and "val" in found


def test_knn_accuracy_rises_during_a_short_cpu_run(synth_root: Path, tmp_path: Path) -> None:
    """The tiny crc run of the issue: the monitor must see learning (seeded, so reproducible)."""
    from medzoo.config import load_pretrain_config
    from medzoo.pretrain import pretrain

    cfg = load_pretrain_config(
        Path(__file__).resolve().parents[1] / "recipes" / "pretrain-crc.toml",
        [
            'name="tiny-monitor"', "data.image_size=32", "model.projector_dims=[128, 128]",
            "training.batch_size=16", "training.epochs=6", "training.monitor_every_steps=6",
            "training.checkpoint_every_steps=12", "optim.lr=1e-3",
        ],
    )  # fmt: skip
    run = tmp_path / "run"
    pretrain(cfg, data_root=synth_root, out=run, progress=False, register=False)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    readings = [r for r in log if "knn_acc" in r]
    assert [r["step"] for r in readings] == list(range(0, 37, 6))
    first, last = readings[0]["knn_acc"], readings[-1]["knn_acc"]
    assert last > first, [r["knn_acc"] for r in readings]
    assert all(r["effective_rank"] > 1 and -1 <= r["diag_corr"] <= 1 for r in readings)
    assert (run / "monitor.png").stat().st_size > 0


def test_collapse_stops_and_keeps_the_last_good_checkpoint(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medzoo.monitor
    from medzoo.config import load_pretrain_config
    from medzoo.errors import MedzooError
    from medzoo.pretrain import pretrain

    readings = iter([30.0, 30.0, 0.5, 0.4, 0.3, 0.2])  # healthy at steps 0 and 2, then collapsed
    monkeypatch.setattr(medzoo.monitor, "effective_rank", lambda z: next(readings))
    cfg = load_pretrain_config(
        Path(__file__).resolve().parents[1] / "recipes" / "pretrain-crc.toml",
        [
            'name="tiny-collapse"', "data.image_size=32", "model.projector_dims=[64, 64]",
            "training.batch_size=16", "training.epochs=3", "training.monitor_every_steps=2",
            "training.checkpoint_every_steps=2", "training.collapse_patience=3",
        ],
    )  # fmt: skip
    with pytest.raises(MedzooError, match="collapsed.*steps 4-8.*last good checkpoint"):
        pretrain(cfg, data_root=synth_root, out=tmp_path / "run", progress=False)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 2
