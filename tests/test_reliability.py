"""Reliability: bad input across every command is one line, a non-zero exit and nothing written;
a full disk during a checkpoint keeps the previous one; corrupted weights and ONNX files are
detected. docs/reliability.md lists these cases with the other tests that cover kills,
concurrent registrations and resume."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch

from medzoo.cli import main
from medzoo.errors import MedzooError

ROOT = Path(__file__).resolve().parents[1]
CRC = ROOT / "recipes" / "pretrain-crc.toml"
EVAL = ROOT / "recipes" / "eval-crc.toml"


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under the roots: 'nothing written' means equal snapshots."""
    files = {}
    for root in roots:
        if root.exists():
            for path in root.rglob("*"):
                if path.is_file():
                    stat = path.stat()
                    files[str(path)] = (stat.st_size, stat.st_mtime_ns)
                else:
                    files[str(path)] = (-1, -1)  # a new empty folder counts as written too
    return files


@pytest.fixture
def workspace(tmp_path: Path, synth_root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A registered tiny backbone, a copy of the synthetic data, and an empty working folder."""
    from medzoo.models import create_backbone
    from medzoo.zoo.entry import ZooEntry
    from medzoo.zoo.index import save_entry

    entry = ZooEntry(
        name="tiny-r18", arch="resnet18", method="barlow-twins", domain="crc", datasets=("crc",),
        in_chans=3, input_size=(3, 32, 32),
    )  # fmt: skip
    torch.manual_seed(0)
    save_entry(entry, create_backbone("resnet18", in_chans=3).state_dict())
    data = tmp_path / "data"
    shutil.copytree(synth_root / "crc", data / "crc")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "not-an-image.png").write_text("hello")
    bad_recipe = work / "bad.toml"
    bad_recipe.write_text("[training\nepochs = 1\n")
    return {"data": data, "work": work, "home": Path(os.environ["MEDZOO_HOME"])}


# (what is wrong, the command, a phrase the one-line message must contain)
BAD_INPUTS = [
    ("data: missing root", ["data", "info", "{work}/nowhere"], "does not exist"),
    ("data: unknown dataset", ["data", "synth", "{work}/s", "--datasets", "crcc"], "crc"),
    (
        "data: fetch from a source that does not exist",
        ["data", "fetch", "crc", "--root", "{work}/mimeta", "--source", "{work}/missing.zip"],
        "missing.zip",
    ),
    (
        "data: missing root for pretraining",
        ["pretrain", str(CRC), "--data-root", "{work}/none"],
        "medzoo data fetch",
    ),
    (
        "recipe: typo in a key",
        ["pretrain", str(CRC), "--set", "training.batch_szie=8"],
        "did you mean 'batch_size'",
    ),
    ("recipe: malformed TOML", ["pretrain", "{work}/bad.toml"], "not valid TOML"),
    ("recipe: missing file", ["evaluate", "{work}/none.toml"], "not found"),
    (
        "recipe: test split in pre-training",
        ["pretrain", str(CRC), "--set", 'data.splits=["test"]'],
        "test",
    ),
    (
        "recipe: impossible label fraction",
        ["evaluate", str(EVAL), "--data-root", "{data}", "--set", "fractions=[1.5]"],
        "fraction",
    ),
    (
        "recipe: misspelt strategy",
        ["evaluate", str(EVAL), "--data-root", "{data}", "--set", 'strategies=["prob"]'],
        "prob",
    ),
    (
        "recipe: unknown init",
        ["evaluate", str(EVAL), "--data-root", "{data}", "--set", 'inits=["bt-nope"]'],
        "bt-nope",
    ),
    (
        "recipe: layer group not in the arch",
        [
            "evaluate",
            str(EVAL),
            "--data-root",
            "{data}",
            "--set",
            'inits=["random-r18"]',
            "--set",
            'strategies=["surgical-layer9"]',
        ],
        "layer9",
    ),
    ("name: path separators", ["info", "../etc"], "name"),
    ("name: unknown model", ["info", "tiny-r19"], "tiny-r19"),
    (
        "name: pretrain --name with ..",
        ["pretrain", str(CRC), "--data-root", "{data}", "--name", "../evil"],
        "name",
    ),
    (
        "weights: catalog model not trained here",
        ["export", "bt-crc-r18", "--out", "{work}/x"],
        "make pretrain-crc",
    ),
    (
        "export: opset out of range",
        ["export", "tiny-r18", "--opset", "5", "--out", "{work}/x"],
        "opset",
    ),
    (
        "export: int8 without calibration data",
        ["export", "tiny-r18", "--int8", "--out", "{work}/x"],
        "calibration",
    ),
    ("predict: missing image", ["predict", "tiny-r18", "{work}/none.png"], "none.png"),
    (
        "predict: not an image",
        ["predict", "tiny-r18", "{work}/not-an-image.png"],
        "not-an-image.png",
    ),
    (
        "bench: unknown provider",
        ["bench", "tiny-r18", "--providers", "quantum", "--out", "{work}/b"],
        "quantum",
    ),
    ("push: malformed repo id", ["push", "tiny-r18", "--repo-id", "a/b/c"], "repo"),
    ("push: no token", ["push", "tiny-r18", "--repo-id", "org/tiny-r18"], "token"),
]


@pytest.mark.parametrize(
    ("what", "argv", "phrase"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_is_one_line_and_writes_nothing(
    what, argv, phrase, workspace, capsys, monkeypatch
) -> None:
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    argv = [a.format(**workspace) for a in argv]
    before = _snapshot(workspace["work"], workspace["home"], workspace["data"])
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, f"{what}: exit {code}, stderr {err!r}"
    assert err.startswith("medzoo: error: ") and "\n" not in err, f"{what}: {err!r}"
    assert "Traceback" not in err
    assert phrase.lower() in err.lower(), f"{what}: {err!r}"
    assert _snapshot(workspace["work"], workspace["home"], workspace["data"]) == before, (
        f"{what} wrote files"
    )


def test_full_disk_during_checkpoint_keeps_the_previous_one(
    synth_root: Path, tmp_path: Path, monkeypatch
) -> None:
    import medzoo.pretrain as pretrain_module
    from medzoo.config import load_pretrain_config

    cfg = load_pretrain_config(
        CRC,
        ['name="tiny-bt"', "data.image_size=32", "model.projector_dims=[32, 32]", "training.batch_size=16",
         "training.max_steps=4", "training.checkpoint_every_steps=2", "optim.lr=1e-3"],
    )  # fmt: skip
    real_save = torch.save
    saves = {"n": 0}

    def save_until_disk_full(obj, path, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:  # the second checkpoint: half a file, then ENOSPC
            Path(path).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(pretrain_module.torch, "save", save_until_disk_full)
    run = tmp_path / "run"
    with pytest.raises(MedzooError, match="No space left on device.*previous checkpoint is intact"):
        pretrain_module.pretrain(cfg, data_root=synth_root, out=run, progress=False)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 2
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt",
        "monitor.png",  # the representation monitor's plot, written with each checkpoint
        "provenance.json",
        "recipe.toml",
        "train_log.jsonl",
    ]


def test_corrupted_onnx_file_is_detected_not_loaded(workspace, capsys) -> None:
    from medzoo.export.onnx import export_model

    out = workspace["work"] / "exports" / "tiny-r18"
    export_model("tiny-r18", out)
    model = out / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    image = workspace["work"] / "img.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (120, 60, 90)).save(image)
    code = main(["predict", "tiny-r18", str(image), "--onnx", "--export-dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("medzoo: error: ") and "\n" not in err, err
    assert "model.onnx" in err
