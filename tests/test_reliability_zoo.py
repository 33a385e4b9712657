"""Registration as a transaction: the previous weights survive any failure or kill, leftovers of
an interrupted registration are rolled forward or back by the sha256 the registry holds, a name
that holds weights is replaced only with --overwrite, malformed registry entries are skipped by
name, and a loader racing a re-registration never sees a false sha256 mismatch."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import medzoo
from medzoo.cli import main
from medzoo.errors import MedzooError
from medzoo.zoo import index, registry
from medzoo.zoo.entry import ZooEntry

ROOT = Path(__file__).resolve().parents[1]
NAME = "tiny-bt"


def _entry() -> ZooEntry:
    return ZooEntry(name=NAME, in_chans=1, domain="liver", input_size=(1, 32, 32))


@pytest.fixture(scope="module")
def states() -> tuple[dict, dict]:
    """Two different 1-channel backbones (weights A and B)."""
    from medzoo.models import create_backbone

    torch.manual_seed(0)
    a = create_backbone("resnet18", in_chans=1).state_dict()
    b = {k: (v + 1 if v.is_floating_point() else v) for k, v in a.items()}
    return a, b


def _home() -> Path:
    return Path(os.environ["MEDZOO_HOME"])


def _models() -> list[str]:
    folder = _home() / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _registered_sha() -> str:
    return json.loads((_home() / "registry.json").read_text())["models"][NAME]["sha256"]


def _loads_with_registered_sha() -> str:
    sha = _registered_sha()
    assert _sha(_home() / "models" / NAME / "model.safetensors") == sha
    medzoo.load(NAME)  # sha256-checked load
    return sha


# --------------------------------------------------------------------------- severe case 1


def test_unreadable_registry_keeps_the_previous_weights(states) -> None:
    """Old medzoo swapped the folder in before reading the registry: the weights were lost."""
    a, b = states
    folder = index.save_entry(_entry(), a)
    sha_a = _registered_sha()
    registry_file = _home() / "registry.json"
    good = registry_file.read_bytes()
    registry_file.write_bytes(good[:300])  # truncate -s 300
    with pytest.raises(MedzooError, match="unreadable"):
        index.save_entry(_entry(), b)
    registry_file.write_bytes(good)  # the user restores the registry
    assert _sha(folder / "model.safetensors") == sha_a
    assert _loads_with_registered_sha() == sha_a
    assert _models() == [NAME]  # no temporary or aside folder left


def test_a_failed_registry_write_keeps_the_old_entry(states, monkeypatch) -> None:
    a, b = states
    index.save_entry(_entry(), a)
    sha_a = _registered_sha()

    def full_disk(models):
        raise OSError(28, "No space left on device", str(_home() / "registry.json"))

    with monkeypatch.context() as patch:
        patch.setattr(index, "write_registry", full_disk)
        with pytest.raises(MedzooError, match="disk is full"):
            index.save_entry(_entry(), b)
    assert _loads_with_registered_sha() == sha_a
    assert _models() == [NAME]


# --------------------------------------------------------------------------- recovery


@pytest.fixture(scope="module")
def snaps(states, tmp_path_factory) -> dict[str, Path]:
    """Folder and registry copies of weights A and B, to rebuild any half-state from (made once
    in a home of their own, so each kill point only copies files)."""
    a, b = states
    keep = tmp_path_factory.mktemp("snapshots")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDZOO_HOME", str(keep / "home"))
        for label, state in (("a", a), ("b", b)):
            folder = index.save_entry(_entry(), state)
            shutil.copytree(folder, keep / label)
            shutil.copy(keep / "home" / "registry.json", keep / f"registry-{label}.json")
    return {"a": keep / "a", "b": keep / "b", "reg-a": keep / "registry-a.json",
            "reg-b": keep / "registry-b.json"}  # fmt: skip


# (registry, models/NAME, leftovers, the weights the entry must have afterwards)
KILL_POINTS = {
    "while writing the new folder": ("a", "a", {".tiny-bt.new-1": "partial"}, "a"),
    "after writing it, before the registry": ("a", "a", {".tiny-bt.new-1": "b"}, "a"),
    "after the registry, before the swap": ("b", "a", {".tiny-bt.new-1": "b"}, "b"),
    "old moved aside, new not yet in": ("b", None, {".tiny-bt.old-1": "a", ".tiny-bt.new-1": "b"}, "b"),
    "new in, old not yet deleted": ("b", "b", {".tiny-bt.old-1": "a"}, "b"),
    "first registration, before the registry": (None, None, {".tiny-bt.new-1": "b"}, None),
    "first registration, after the registry": ("b", None, {".tiny-bt.new-1": "b"}, "b"),
    "an older medzoo's mkdtemp folder": ("a", "a", {".tiny-bt.x1y2z3.tmp": "b"}, "a"),
}  # fmt: skip


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_every_kill_point_recovers_to_a_registered_entry(snaps, point) -> None:
    reg, current, leftovers, expected = KILL_POINTS[point]
    models = _home() / "models"
    models.mkdir(parents=True)
    if reg:
        shutil.copy(snaps[f"reg-{reg}"], _home() / "registry.json")
    if current:
        shutil.copytree(snaps[current], models / NAME)
    for leftover, what in leftovers.items():
        if what == "partial":
            (models / leftover).mkdir()
            (models / leftover / "model.safetensors").write_bytes(b"\0" * 100)
        else:
            shutil.copytree(snaps[what], models / leftover)
    (_home() / ".registry.json.abc.tmp").write_text("{")  # a killed registry write
    assert main(["list"]) == 0  # any command that opens the registry recovers
    assert not (_home() / ".registry.json.abc.tmp").exists()
    if expected is None:
        assert _models() == []
        assert NAME not in medzoo.list_models()
    else:
        assert _models() == [NAME]
        sha = _loads_with_registered_sha()
        assert sha == _sha(snaps[expected] / "model.safetensors")


def test_leftover_names_are_parsed_back_to_their_entry() -> None:
    assert registry.leftover_owner(".bt-crc-r18.new-0a1b") == "bt-crc-r18"
    assert registry.leftover_owner(".bt.crc.old-0a1b") == "bt.crc"
    assert registry.leftover_owner(".bt-crc-r18.k2j_x9.tmp") == "bt-crc-r18"
    assert registry.leftover_owner("bt-crc-r18") is None
    assert registry.leftover_owner(".hidden") is None


# --------------------------------------------------------------------------- no silent replacement


PRETRAIN = [
    "pretrain", str(ROOT / "recipes" / "pretrain-crc.toml"), "--no-progress",
    "--set", 'name="tiny-bt"', "--set", "data.image_size=32", "--set", "model.projector_dims=[32, 32]",
    "--set", "training.batch_size=16", "--set", "training.max_steps=2", "--set", "optim.lr=1e-3",
]  # fmt: skip


def test_registering_an_existing_name_needs_overwrite(
    states, synth_root, tmp_path, capsys, monkeypatch
) -> None:
    from medzoo import pretrain as pretrain_module

    entry = ZooEntry(name=NAME, in_chans=3, domain="crc", input_size=(3, 32, 32))
    from medzoo.models import create_backbone

    index.save_entry(entry, create_backbone("resnet18", in_chans=3).state_dict())
    before = _registered_sha()
    trained = {"n": 0}
    real_train = pretrain_module._train

    def counting_train(*args, **kwargs):
        trained["n"] += 1
        return real_train(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "_train", counting_train)
    run = tmp_path / "run"
    args = [*PRETRAIN, "--data-root", str(synth_root), "--out", str(run)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medzoo: error: ") and "\n" not in err and "--overwrite" in err, err
    assert trained["n"] == 0 and not run.exists()  # refused before any training or writing
    assert _registered_sha() == before
    assert main([*args, "--overwrite"]) == 0
    assert trained["n"] == 1 and _registered_sha() != before
    _loads_with_registered_sha()


def test_save_entry_without_overwrite_refuses_an_existing_name(states) -> None:
    a, b = states
    index.save_entry(_entry(), a, overwrite=False)
    sha = _registered_sha()
    with pytest.raises(MedzooError, match="--overwrite"):
        index.save_entry(_entry(), b, overwrite=False)
    assert _loads_with_registered_sha() == sha


# --------------------------------------------------------------------------- malformed entries


def test_a_malformed_registry_entry_is_skipped_by_name(states, capsys) -> None:
    a, _ = states
    index.save_entry(_entry(), a)
    path = _home() / "registry.json"
    data = json.loads(path.read_text())
    data["models"]["broken-one"] = {"name": "broken-one", "method": "telepathy"}
    data["models"]["not-a-table"] = [1, 2, 3]
    data["models"]["wrong-field"] = {"name": "wrong-field", "colour": "red"}
    path.write_text(json.dumps(data))
    assert main(["list"]) == 0
    out, err = capsys.readouterr()
    assert NAME in out and "random-r18" in out  # the rest of the zoo still works
    for bad in ("broken-one", "not-a-table", "wrong-field"):
        assert bad in err and bad not in out
    assert main(["info", "broken-one"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medzoo: error: ") and "\n" not in err and "broken-one" in err
    assert medzoo.load(NAME) is not None


# --------------------------------------------------------------------------- concurrency


_REREGISTER = """
import sys, torch
from medzoo.models import create_backbone
from medzoo.zoo.entry import ZooEntry
from medzoo.zoo.index import save_entry
torch.manual_seed(0)
a = create_backbone("resnet18", in_chans=1).state_dict()
entry = ZooEntry(name="tiny-bt", in_chans=1, domain="liver", input_size=(1, 32, 32))
for i in range(int(sys.argv[1])):
    save_entry(entry, {k: (v + i if v.is_floating_point() else v) for k, v in a.items()})
    print(i, flush=True)
"""


def test_a_loader_racing_a_reregistration_never_sees_a_mismatch(states) -> None:
    a, _ = states
    index.save_entry(_entry(), a)
    child = subprocess.Popen(
        [sys.executable, "-c", _REREGISTER, "6"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    loads = 0
    try:
        while child.poll() is None:
            medzoo.load(NAME)  # raises on a false "sha256 does not match"
            loads += 1
    finally:
        out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert loads > 0 and out.split()[-1] == "5"
    _loads_with_registered_sha()
    assert _models() == [NAME]


@pytest.mark.slow
def test_sigkill_loop_during_registration_always_leaves_a_loadable_entry(states) -> None:
    """>= 20 SIGKILLs at random moments of registering: the registry stays valid, the entry
    loads with the registered sha256, and the next command leaves no leftover folder."""
    a, _ = states
    index.save_entry(_entry(), a)
    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kills = 0
    for _ in range(24):
        child = subprocess.Popen(
            [sys.executable, "-c", _REREGISTER, "50"], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, env=env,
        )  # fmt: skip
        assert child.stdout is not None
        child.stdout.readline()  # imports done, one registration finished
        time.sleep(rng.uniform(0.0, 0.6))
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            kills += 1
        child.wait()
        child.stdout.close()
        json.loads((_home() / "registry.json").read_text())  # valid JSON
        assert main(["list"]) == 0  # the next command
        assert _models() == [NAME]
        _loads_with_registered_sha()
    assert kills >= 20


def test_recovery_inside_a_held_lock_does_not_deadlock() -> None:
    """update_entry of a catalog name asks model_info (which recovers) while holding the lock."""
    leftover = _home() / "models" / ".other.new-1"
    leftover.mkdir(parents=True)
    start = time.monotonic()
    index.update_metrics("random-r18", {"crc": {"probe": {"accuracy": 0.5}}})
    assert time.monotonic() - start < 30  # not the lock's 120 s timeout
    assert not leftover.exists()
    assert medzoo.model_info("random-r18").metrics["crc"]["probe"]["accuracy"] == 0.5


def test_a_nested_lookup_during_registration_keeps_the_new_folder(states) -> None:
    """A classifier's card asks model_info(base_model) while its own .new- folder exists: that
    folder is not a leftover and must survive, and the lookup must not wait out the lock."""
    import timm

    a, _ = states
    index.save_entry(_entry(), a)
    classifier = ZooEntry(
        name="tiny-bt-organ", method="linear-probe", base_model=NAME, num_classes=3,
        in_chans=1, domain="liver", input_size=(1, 32, 32),
    )  # fmt: skip
    torch.manual_seed(1)
    state = timm.create_model("resnet18", num_classes=3, in_chans=1).state_dict()
    start = time.monotonic()
    index.save_entry(classifier, state)
    assert time.monotonic() - start < 30
    assert _models() == [NAME, "tiny-bt-organ"]
    medzoo.load("tiny-bt-organ")
