"""Real faults, not faked ones: a real full tmpfs and a real read-only bind mount under every
write path (checkpoints, zoo entries, MEDZOO_HOME, exports, synth, push --dry-run), an edited
ONNX file, and the CLI's one error boundary. Mounting needs root (CI runs as root); elsewhere
these tests skip with the reason. Mounts are always unmounted by their fixture."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from medzoo.cli import main
from medzoo.errors import MedzooError

ROOT = Path(__file__).resolve().parents[1]
CRC = ROOT / "recipes" / "pretrain-crc.toml"
TINY = [
    "--set", 'name="tiny-bt"', "--set", "data.image_size=32", "--set", "model.projector_dims=[32, 32]",
    "--set", "training.batch_size=16", "--set", "optim.lr=1e-3",
]  # fmt: skip


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here ({result.stderr.strip() or 'not root'}); CI runs as root")


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` at ``path`` (ENOSPC when it is full)."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` bind-mounted read-only onto itself (EROFS for every write, root included)."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(path), str(path))
    try:
        result = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(path)], capture_output=True, check=False
        )
        if result.returncode:
            pytest.skip("cannot remount read-only here")
        yield path
    finally:
        _umount(path)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("medzoo: error: ") and "\n" not in err, err
    return err


def _tree(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in root.rglob("*")} if root.exists() else {}


@pytest.fixture
def backbone_entry() -> str:
    from medzoo.models import create_backbone
    from medzoo.zoo.entry import ZooEntry
    from medzoo.zoo.index import save_entry

    torch.manual_seed(0)
    entry = ZooEntry(name="tiny-r18", in_chans=3, domain="crc", input_size=(3, 32, 32))
    save_entry(entry, create_backbone("resnet18", in_chans=3).state_dict())
    return entry.name


# --------------------------------------------------------------------------- severe case 3


def test_real_full_disk_during_a_checkpoint_is_one_line(synth_root, tmp_path, capsys) -> None:
    """torch.save on a full disk raises RuntimeError ("unexpected pos"), not OSError."""
    with tmpfs(tmp_path / "full", "200m") as mnt:
        run = mnt / "run"
        code = main(
            ["pretrain", str(CRC), *TINY, "--set", "training.max_steps=4", "--set",
             "training.checkpoint_every_steps=2", "--data-root", str(synth_root), "--out",
             str(run), "--no-progress", "--no-register"]
        )  # fmt: skip
        err = _one_line(capsys)
        assert code == 2 and "checkpoint" in err and "previous checkpoint is intact" in err
        checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
        assert checkpoint["step"] == 2  # the first one, whole
        assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- full disks


def test_a_full_zoo_disk_keeps_the_old_entry(tmp_path, monkeypatch, capsys) -> None:
    import medzoo
    from medzoo.models import create_backbone
    from medzoo.zoo.entry import ZooEntry
    from medzoo.zoo.index import save_entry
    from medzoo.zoo.registry import file_sha256

    with tmpfs(tmp_path / "home", "60m") as home:  # room for one 45 MB entry, not two
        monkeypatch.setenv("MEDZOO_HOME", str(home))
        entry = ZooEntry(name="tiny-bt", in_chans=1, domain="liver", input_size=(1, 32, 32))
        torch.manual_seed(0)
        state = create_backbone("resnet18", in_chans=1).state_dict()
        folder = save_entry(entry, state)
        sha = file_sha256(folder / "model.safetensors")
        with pytest.raises(MedzooError, match="disk is full"):
            save_entry(entry, {k: v + 1 if v.is_floating_point() else v for k, v in state.items()})
        assert sorted(p.name for p in (home / "models").iterdir()) == ["tiny-bt"]
        assert file_sha256(folder / "model.safetensors") == sha
        medzoo.load("tiny-bt")


def test_a_full_disk_leaves_no_synthetic_dataset(tmp_path, capsys) -> None:
    with tmpfs(tmp_path / "full", "2m") as mnt:
        code = main(["data", "synth", str(mnt / "mimeta"), "--size", "128", "--per-class", "40"])
        err = _one_line(capsys)
        assert code == 2 and "disk is full" in err
        assert list(mnt.iterdir()) == []  # not 3 of 4 datasets, no temporary folder


# --------------------------------------------------------------------------- read-only targets


def test_read_only_targets_are_one_line_and_change_nothing(
    backbone_entry, synth_root, tmp_path, monkeypatch, capsys
) -> None:
    ro_dir = tmp_path / "ro"
    ro_dir.mkdir()
    (ro_dir / "keep.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    with read_only(ro_dir):
        before = _tree(ro_dir)
        cases = {
            "pretrain --out": ["pretrain", str(CRC), *TINY, "--data-root", str(synth_root),
                               "--out", str(ro_dir / "run"), "--no-register"],
            "export --out": ["export", backbone_entry, "--out", str(ro_dir / "exp")],
            "data synth": ["data", "synth", str(ro_dir / "mimeta"), "--size", "16"],
            "push --dry-run": ["push", backbone_entry, "--repo-id", "org/tiny", "--dry-run", str(ro_dir / "hub")],
        }  # fmt: skip
        for what, args in cases.items():
            code = main(args)
            err = _one_line(capsys)
            assert code == 2 and str(ro_dir) in err and "read-only" in err, (what, err)
        assert _tree(ro_dir) == before
        assert not (tmp_path / "runs").exists()


def test_a_read_only_medzoo_home_is_one_line(synth_root, tmp_path, monkeypatch, capsys) -> None:
    home = tmp_path / "ro-home"
    home.mkdir()
    monkeypatch.setenv("MEDZOO_HOME", str(home))
    with read_only(home):
        assert main(["list"]) == 0  # reading works
        capsys.readouterr()
        run = tmp_path / "run"
        code = main(
            ["pretrain", str(CRC), *TINY, "--data-root", str(synth_root), "--out", str(run)]
        )
        err = _one_line(capsys)
        assert code == 2 and "MEDZOO_HOME" in err and "read-only" in err
        assert not run.exists()  # refused before training


# --------------------------------------------------------------------------- outputs


def test_export_out_that_is_a_file_fails_before_exporting(
    backbone_entry, tmp_path, monkeypatch, capsys
) -> None:
    from medzoo.export import onnx as onnx_module

    calls = {"n": 0}
    monkeypatch.setattr(onnx_module, "_torch_export", lambda *a, **k: calls.__setitem__("n", 1))
    target = tmp_path / "file"
    target.write_text("x")
    for out in (target, target / "under"):
        assert main(["export", backbone_entry, "--out", str(out)]) == 2
        assert "is a file" in _one_line(capsys)
    assert calls["n"] == 0 and target.read_text() == "x"


def test_push_dry_run_under_a_file_or_through_a_symlink(backbone_entry, tmp_path, capsys) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for out in (target / "hub", tmp_path / "link"):
        assert main(["push", backbone_entry, "--repo-id", "org/tiny", "--dry-run", str(out)]) == 2
        _one_line(capsys)
    assert list((tmp_path / "real").iterdir()) == [] and target.read_text() == "x"


# --------------------------------------------------------------------------- severe case 2


def _edit_onnx_weight(path: Path) -> None:
    """Change one initializer with onnx.numpy_helper, keeping every metadata field."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)) if t.dims else 0)
    array = numpy_helper.to_array(init).copy()
    array.flat[0] += 1.0
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(model, str(path))


def test_an_edited_onnx_file_is_refused_by_predict_and_bench(
    backbone_entry, tmp_path, capsys
) -> None:
    from PIL import Image

    from medzoo.export.onnx import export_model
    from medzoo.export.runtime import read_metadata

    out = tmp_path / "exp"
    export_model(backbone_entry, out)
    sha = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    image = tmp_path / "img.png"
    Image.new("RGB", (32, 32), (120, 60, 90)).save(image)
    predict = ["predict", backbone_entry, str(image), "--onnx", "--export-dir", str(out)]
    assert main(predict) == 0
    capsys.readouterr()
    meta = read_metadata(out / "model.onnx")
    _edit_onnx_weight(out / "model.onnx")
    assert read_metadata(out / "model.onnx") == meta  # the metadata still claims the weights
    assert main(predict) == 2
    assert "changed after export" in _one_line(capsys)
    bench = ["bench", backbone_entry, "--export-dir", str(out), "--out", str(tmp_path / "b"),
             "--batch-sizes", "1", "--iterations", "1", "--warmup", "0"]  # fmt: skip
    assert main(bench) == 2
    assert "changed after export" in _one_line(capsys)
    assert json.loads((out / "export.json").read_text())["sha256"]["model.onnx"] == sha
    assert (out / "model.onnx.sha256").read_text().split() == [sha, "model.onnx"]
    (out / "model.onnx.sha256").unlink()  # no sidecar: export.json still holds the record
    assert main(predict) == 2
    assert "changed after export" in _one_line(capsys)


# --------------------------------------------------------------------------- the error boundary


def _raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as err:  # noqa: BLE001 - the test inspects what was raised
        return err
    raise AssertionError("nothing raised")


def test_the_boundary_maps_user_and_disk_families_to_one_line(tmp_path) -> None:
    import h5py
    from PIL import Image

    from medzoo.errors import user_error

    not_hdf5 = tmp_path / "x.hdf5"
    not_hdf5.write_bytes(b"not hdf5 at all" * 10)
    cases = {
        "full disk": OSError(errno.ENOSPC, "No space left on device", "/x"),
        "read-only": OSError(errno.EROFS, "Read-only file system", "/x"),
        "permission": PermissionError(errno.EACCES, "Permission denied", "/x"),
        "a file in the path": NotADirectoryError(errno.ENOTDIR, "Not a directory", "/x/y"),
        "not UTF-8": _raised(lambda: b"\xff\xfe".decode("utf-8")),
        "decompression bomb": Image.DecompressionBombError("too many pixels"),
        "HDF5": _raised(lambda: h5py.File(not_hdf5, "r")),
    }
    for what, err in cases.items():
        message = user_error(err)
        assert message and "\n" not in message, what
    for bug in (ZeroDivisionError("x"), KeyError("k"), AttributeError("a"), TypeError("t")):
        assert user_error(bug) is None  # a bug keeps its traceback


def test_a_bug_keeps_its_traceback(monkeypatch) -> None:
    from medzoo.commands import zoo

    def buggy(args):
        return 1 / 0

    monkeypatch.setattr(zoo, "_list", buggy)
    with pytest.raises(ZeroDivisionError):
        main(["list"])


# --------------------------------------------------------------------------- images


def _png_with_huge_text(path: Path) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 10), zip=True)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)


def test_image_decoding_errors_are_one_line(backbone_entry, tmp_path, monkeypatch, capsys) -> None:
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(good)
    files = {
        "truncated PNG": good.read_bytes()[:60],
        "PNG header then garbage": good.read_bytes()[:16] + os.urandom(200),
        "empty": b"",
        "text": b"hello",
        "truncated TIFF": b"II*\x00" + b"\x08\x00\x00\x00" + b"\xff" * 40,
    }
    for what, data in files.items():
        path = tmp_path / f"{what.replace(' ', '_')}.png"
        path.write_bytes(data)
        assert main(["predict", backbone_entry, str(path)]) == 2, what
        _one_line(capsys)
    huge_text = tmp_path / "huge_text.png"
    _png_with_huge_text(huge_text)
    assert main(["predict", backbone_entry, str(huge_text)]) == 2
    _one_line(capsys)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 3)  # 3x the limit: bomb error
    assert main(["predict", backbone_entry, str(good)]) == 2
    assert "too large" in _one_line(capsys)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 * 2 // 3)  # 1.5x: only a warning
    assert main(["predict", backbone_entry, str(good)]) == 2
    assert "too large" in _one_line(capsys)


# --------------------------------------------------------------------------- recipes and --set


BAD_VALUES = [
    "training.epochs=0", "training.batch_size=-4", "training.batch_size=1", "optim.lr=0.0",
    "optim.lr=nan", "optim.lr=inf", "optim.lr=-1e-3", 'training.device="tpu"',
    'training.device="cuda:x"', "training.max_steps=0", "training.log_every_steps=0",
    "training.checkpoint_every_steps=-1", "training.seed=-1", "data.image_size=0",
    "data.image_size=4", "optim.momentum=1.5", "optim.weight_decay=-0.1", "optim.min_lr_ratio=2.0",
    "optim.warmup_epochs=-1.0", "loss.lambda=nan", "loss.lambda=-0.5", "augment.crop_scale=[0.9, 0.2]",
    "augment.crop_scale=[0.0, 0.5]", "augment.hflip_prob=1.5", "augment.hue=0.9",
    "augment.blur_sigma=[2.0, 0.1]", "augment.blur_prob=[1.0, 1.5]", "model.projector_dims=[0, 8]",
    "data.memory_budget_gb=-1.0", "optim.bias_lr=0.0",
]  # fmt: skip


@pytest.mark.parametrize("value", BAD_VALUES)
def test_impossible_values_stop_before_anything_is_written(
    value, synth_root, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    code = main(["pretrain", str(CRC), *TINY, "--set", value, "--data-root", str(synth_root),
                 "--out", str(run)])  # fmt: skip
    err = _one_line(capsys)
    assert code == 2 and value.split("=")[0].split(".")[-1] in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["medzoo-home"] or not run.exists()
    assert not run.exists() and not (tmp_path / "medzoo-home" / "models").exists()


def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path, capsys) -> None:
    recipe = tmp_path / "latin1.toml"
    recipe.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    assert main(["pretrain", str(recipe)]) == 2
    assert "UTF-8" in _one_line(capsys)


# --------------------------------------------------------------------------- resume


def _run_args(synth_root: Path, run: Path, *extra: str) -> list[str]:
    return ["pretrain", str(CRC), *TINY, "--set", "training.max_steps=2", "--data-root",
            str(synth_root), "--out", str(run), "--no-progress", "--no-register", *extra]  # fmt: skip


def test_resume_refuses_missing_foreign_and_damaged_state(synth_root, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.toml").write_text("keep me")
    assert main(_run_args(synth_root, run, "--resume")) == 2
    assert "no checkpoint" in _one_line(capsys)
    assert (run / "recipe.toml").read_text() == "keep me"  # not overwritten
    shutil.rmtree(run)

    assert main(_run_args(synth_root, run)) == 0
    capsys.readouterr()
    checkpoint = run / "checkpoint.pt"
    good = checkpoint.read_bytes()
    foreign = [
        {"hello": torch.zeros(2)},  # someone else's file
        torch.zeros(3),  # not even a dict
    ]
    for state in foreign:
        torch.save(state, checkpoint)
        assert main(_run_args(synth_root, run, "--resume")) == 2
        assert "damaged or foreign" in _one_line(capsys)
    checkpoint.write_bytes(good[: len(good) // 3])  # truncated
    assert main(_run_args(synth_root, run, "--resume")) == 2
    assert "cannot be read" in _one_line(capsys)
    checkpoint.write_bytes(good)
    state = torch.load(checkpoint, weights_only=True)
    state["model"] = {"conv1.weight": torch.zeros(1)}  # a model that is not this recipe's
    torch.save(state, checkpoint)
    assert main(_run_args(synth_root, run, "--resume")) == 2
    assert "does not fit" in _one_line(capsys)
    checkpoint.write_bytes(good)
    log = run / "train_log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(["{not json", *lines]) + "\n")  # damaged in the middle
    assert main(_run_args(synth_root, run, "--resume")) == 2
    assert "damaged at line 1" in _one_line(capsys)
    log.write_text("\n".join([*lines, '{"step": 1, "lo']) + "\n")  # cut short by a kill: dropped
    assert main(_run_args(synth_root, run, "--resume", "--set", "training.max_steps=3")) == 2
    # a longer max_steps is another recipe: resume refuses it, in one line
    assert "another recipe" in _one_line(capsys)
    assert main(_run_args(synth_root, run, "--resume")) == 0


def test_a_full_disk_during_an_export_is_one_line_and_leaves_nothing(
    backbone_entry, tmp_path, capsys
) -> None:
    with tmpfs(tmp_path / "full", "8m") as mnt:  # a ResNet-18 graph is ~45 MB
        code = main(["export", backbone_entry, "--out", str(mnt / "exp")])
        err = _one_line(capsys)
        assert code == 2 and "full" in err, err
        assert list(mnt.iterdir()) == []  # no temporary folder, no half export
