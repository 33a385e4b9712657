"""The pre-training loop on CPU: a falling loss, a timm-loadable backbone, exact resume after
SIGKILL, NaN handling, torchrun with 2 gloo processes, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medzoo.cli import main
from medzoo.config import PretrainConfig, apply_overrides, from_dict, load_pretrain_config
from medzoo.errors import MedzooError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "pretrain-crc.toml"  # shrunk by TINY

TINY = [
    'name="tiny-bt"',
    "data.image_size=32",
    "model.projector_dims=[64, 64]",
    "training.batch_size=16",
    "training.epochs=3",
    "training.checkpoint_every_steps=2",
    "training.log_every_steps=1",
    "optim.lr=1e-3",
    "optim.warmup_epochs=0.0",
]


def tiny_cfg(*extra: str) -> PretrainConfig:
    return load_pretrain_config(DEMO, [*TINY, *extra])


def test_tiny_run_loss_falls_and_backbone_loads_into_timm(synth_root: Path, tmp_path: Path) -> None:
    import timm
    from safetensors.torch import load_file

    from medzoo.pretrain import pretrain

    cfg = tiny_cfg("training.epochs=8")
    folder = pretrain(cfg, data_root=synth_root, out=tmp_path / "run", progress=False)
    log = [
        json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 8 * (108 // 16)
    readings = [r for r in log if "knn_acc" in r]  # the monitor: at the start and the end
    assert [r["step"] for r in readings] == [0, 8 * (108 // 16)]
    assert (tmp_path / "run" / "monitor.png").stat().st_size > 0
    head, tail = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert tail < 0.9 * head, (head, tail)
    # The backbone alone, loadable strictly into a plain timm ResNet-18 (no projector keys).
    state = load_file(folder / "model.safetensors")
    model = timm.create_model("resnet18", num_classes=0)
    model.load_state_dict(state, strict=True)
    assert not any(k.startswith("projector") for k in state)
    # The folder carries its recipe, versions and commit.
    assert (folder / "recipe.toml").is_file() and (folder / "provenance.json").is_file()
    assert "torch" in json.loads((folder / "provenance.json").read_text())["versions"]


def test_registered_entry_loads_with_medzoo(synth_root: Path, tmp_path: Path) -> None:
    import medzoo
    from medzoo.pretrain import pretrain

    pretrain(
        tiny_cfg("training.max_steps=2"), data_root=synth_root, out=tmp_path / "run", progress=False
    )
    assert "tiny-bt" in medzoo.list_models()
    model = medzoo.load("tiny-bt")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 512)


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "medzoo", *args]


def test_sigkill_then_resume_gives_the_same_weights(synth_root: Path, tmp_path: Path) -> None:
    sets = [f"--set={s}" for s in [*TINY, "training.epochs=2", "training.checkpoint_every_steps=3"]]
    common = [
        "pretrain",
        str(DEMO),
        "--data-root",
        str(synth_root),
        "--no-register",
        "--no-progress",
        *sets,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        _cli([*common, "--out", str(tmp_path / "a")]), check=True, env=env, capture_output=True
    )

    proc = subprocess.Popen(
        _cli([*common, "--out", str(tmp_path / "b")]), env=env, stderr=subprocess.DEVNULL
    )
    ckpt = tmp_path / "b" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < killed_at < 2 * (108 // 16), "the kill must land mid-run"

    subprocess.run(
        _cli([*common, "--out", str(tmp_path / "b"), "--resume"]),
        check=True,
        env=env,
        capture_output=True,
    )
    a, b = _final_weights(tmp_path / "a"), _final_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert steps == sorted(set(steps)), "a resumed log has no repeated steps"


def test_nan_loss_stops_and_keeps_the_last_checkpoint(
    synth_root: Path, tmp_path: Path, monkeypatch
) -> None:
    import medzoo.losses
    from medzoo.pretrain import pretrain

    real = medzoo.losses.barlow_twins_loss
    calls = {"n": 0}

    def flaky(z1, z2, lambda_offdiag=0.0051):
        calls["n"] += 1
        loss = real(z1, z2, lambda_offdiag)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(medzoo.losses, "barlow_twins_loss", flaky)
    with pytest.raises(MedzooError, match="loss became nan at step 3.*last good checkpoint"):
        pretrain(tiny_cfg(), data_root=synth_root, out=tmp_path / "run", progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (Path(os.environ["MEDZOO_HOME"]) / "models" / "tiny-bt").exists()


def test_cli_bad_inputs_are_one_line(tmp_path: Path, capsys, synth_root: Path) -> None:
    assert main(["pretrain", str(DEMO), "--data-root", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "medzoo data fetch" in err
    assert main(["pretrain", str(DEMO), "--set", "training.batchsize=3"]) == 2
    assert "did you mean 'batch_size'" in capsys.readouterr().err
    assert main(["pretrain", str(tmp_path / "none.toml")]) == 2
    assert "recipe not found" in capsys.readouterr().err
    assert main(["pretrain", str(DEMO), "--data-root", str(synth_root), "--name", "../evil"]) == 2
    assert "name" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_existing_run_needs_resume(synth_root: Path, tmp_path: Path) -> None:
    from medzoo.pretrain import pretrain

    cfg = tiny_cfg("training.max_steps=2")
    pretrain(cfg, data_root=synth_root, out=tmp_path / "run", progress=False, register=False)
    with pytest.raises(MedzooError, match="add --resume"):
        pretrain(cfg, data_root=synth_root, out=tmp_path / "run", progress=False, register=False)
    other = from_dict(
        PretrainConfig, apply_overrides({"name": "tiny-bt"}, ["training.seed=5", *TINY[1:]])
    )
    with pytest.raises(MedzooError, match="another recipe"):
        pretrain(
            other,
            data_root=synth_root,
            out=tmp_path / "run",
            progress=False,
            register=False,
            resume=True,
        )


def test_torchrun_two_gloo_processes(synth_root: Path, tmp_path: Path) -> None:
    # a budget below one copy: the first process memory-maps the split, the second reuses the map
    sets = [
        f"--set={s}"
        for s in [
            *TINY,
            "training.max_steps=3",
            'training.device="cpu"',
            "data.memory_budget_gb=0.0001",
        ]
    ]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "medzoo", "pretrain", str(DEMO), "--data-root", str(synth_root), "--out", str(tmp_path / "run"),
        "--no-progress", *sets,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    log = [
        json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3], "only rank 0 logs"
    assert [r["step"] for r in log if "knn_acc" in r] == [0, 3], "rank 0 monitors"
    assert (Path(os.environ["MEDZOO_HOME"]) / "models" / "tiny-bt" / "model.safetensors").is_file()
    maps = list((Path(os.environ["MEDZOO_HOME"]) / "cache" / "data").glob("*"))
    assert len(maps) >= 1, "the split was memory-mapped once for both processes"


def test_benchmark_reports_throughput() -> None:
    from medzoo.pretrain import benchmark

    cfg = tiny_cfg()
    result = benchmark(cfg, steps=2, synthetic=True, warmup_steps=1)
    assert result["samples_per_s"] > 0 and 0 <= result["data_wait"] <= 1
    assert result["steps"] == 2 and result["device"] == "cpu"
