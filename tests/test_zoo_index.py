"""The zoo index: catalog + registry, save_entry, medzoo.load, timm round trips, integrity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

import medzoo
from medzoo.errors import MedzooError
from medzoo.zoo import index, loading
from medzoo.zoo.entry import ZooEntry

LABELS = ("adipose", "background", "debris", "mucus")


@pytest.fixture(scope="module")
def gray_backbone() -> dict[str, torch.Tensor]:
    from medzoo.models import create_backbone

    torch.manual_seed(1)
    return create_backbone("resnet18", in_chans=1).state_dict()


@pytest.fixture(scope="module")
def rgb_classifier() -> dict[str, torch.Tensor]:
    from medzoo.models import create_backbone

    torch.manual_seed(2)
    return create_backbone("resnet18", in_chans=3, num_classes=len(LABELS)).state_dict()


def _liver_entry(**changes) -> ZooEntry:
    return ZooEntry(
        name="bt-liver-r18", domain="liver", in_chans=1, datasets=("organs_axial",), **changes
    )


def _outputs_equal(a: torch.nn.Module, b: torch.nn.Module, in_chans: int) -> bool:
    x = torch.randn(2, in_chans, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


# --------------------------------------------------------------------------- list / info


def test_catalog_lists_the_known_models() -> None:
    names = medzoo.list_models()
    assert {"in1k-r18", "random-r18", "bt-liver-r18", "bt-crc-r18"} <= set(names)
    liver = medzoo.model_info("bt-liver-r18")
    assert (liver.in_chans, liver.domain, liver.make_target) == (1, "liver", "make pretrain-liver")
    assert medzoo.model_info("in1k-r18").timm_name == "resnet18.tv_in1k"
    assert medzoo.model_info("bt-crc-r18").hub_repo_id is None


def test_unknown_and_bad_names() -> None:
    with pytest.raises(MedzooError, match="unknown zoo model 'nope'.*bt-crc-r18"):
        medzoo.model_info("nope")
    for bad in ("../x", "a/b", "..", "/etc/passwd"):
        with pytest.raises(MedzooError, match="invalid zoo model name"):
            medzoo.load(bad)
        with pytest.raises(MedzooError, match="invalid zoo model name"):
            index.entry_folder(bad)


def test_registry_overrides_catalog_and_adds_names() -> None:
    index.register(ZooEntry(name="bt-crc-r18", domain="crc", hub_repo_id="lab/bt-crc-r18"))
    index.register(ZooEntry(name="mine", method="random"))
    assert medzoo.model_info("bt-crc-r18").hub_repo_id == "lab/bt-crc-r18"
    assert "mine" in medzoo.list_models()
    data = json.loads((index.medzoo_home() / "registry.json").read_text())
    assert set(data["models"]) == {"bt-crc-r18", "mine"}


# --------------------------------------------------------------------------- save + load


def test_save_entry_writes_a_timm_folder_and_loads(gray_backbone) -> None:
    folder = index.save_entry(
        _liver_entry(),
        gray_backbone,
        extra_files={"recipe.toml": 'name = "bt-liver-r18"\n', "train_log.jsonl": b"{}\n"},
    )
    assert folder == index.medzoo_home() / "models" / "bt-liver-r18"
    names = {p.name for p in folder.iterdir()}
    assert names == {
        "config.json",
        "model.safetensors",
        "README.md",
        "recipe.toml",
        "train_log.jsonl",
    }
    entry = medzoo.model_info("bt-liver-r18")
    assert entry.sha256 and entry.created and entry.versions.get("torch")
    config = json.loads((folder / "config.json").read_text())
    assert config["num_features"] == 512 and config["medzoo"]["sha256"] == entry.sha256
    assert index.weights_status(entry) == "local"

    model = medzoo.load("bt-liver-r18")
    assert not model.training and model.num_classes == 0
    assert model.pretrained_cfg["mean"] == entry.mean
    for key, value in gray_backbone.items():
        assert torch.equal(model.state_dict()[key], value), key

    via_timm = timm.create_model("local-dir:" + str(folder), pretrained=True)
    assert via_timm.num_classes == 0 and via_timm.conv1.in_channels == 1
    assert _outputs_equal(model, via_timm, 1)
    via_passthrough = medzoo.load("local-dir:" + str(folder))
    assert _outputs_equal(model, via_passthrough, 1)


def test_classifier_entry_round_trips_through_timm(rgb_classifier) -> None:
    entry = ZooEntry(
        name="bt-crc-r18-tissue",
        method="fine-tuned",
        domain="crc",
        datasets=("crc",),
        num_classes=len(LABELS),
        label_names=LABELS,
        base_model="bt-crc-r18",
        task="tissue class",
    )
    folder = index.save_entry(entry, rgb_classifier)
    model = medzoo.load("bt-crc-r18-tissue")
    via_timm = timm.create_model("local-dir:" + str(folder), pretrained=True)
    assert via_timm.num_classes == len(LABELS)
    assert tuple(via_timm.pretrained_cfg["label_names"]) == LABELS
    assert _outputs_equal(model, via_timm, 3)


def test_new_head_on_a_backbone(gray_backbone) -> None:
    index.save_entry(_liver_entry(), gray_backbone)
    model = medzoo.load("bt-liver-r18", num_classes=11)
    assert model.fc.out_features == 11 and model.pretrained_cfg["num_classes"] == 11
    assert torch.equal(model.layer4[1].bn2.running_mean, gray_backbone["layer4.1.bn2.running_mean"])
    rgb = index.load("bt-liver-r18", in_chans=3)  # conv1 adapted like timm does
    assert rgb.conv1.weight.shape[1] == 3


def test_update_metrics_merges_into_registry_and_folder(gray_backbone) -> None:
    index.save_entry(_liver_entry(), gray_backbone)
    index.update_metrics("bt-liver-r18", {"organs_axial": {"probe": {"accuracy": 0.7}}})
    index.update_metrics("bt-liver-r18", {"organs_sagittal": {"probe": {"accuracy": 0.6}}})
    index.update_metrics("bt-liver-r18", {"organs_axial": {"finetune": {"accuracy": 0.75}}})
    entry = medzoo.model_info("bt-liver-r18")
    assert set(entry.metrics) == {"organs_axial", "organs_sagittal"}
    assert entry.metrics["organs_axial"] == {
        "probe": {"accuracy": 0.7},
        "finetune": {"accuracy": 0.75},
    }
    config = json.loads((index.entry_folder("bt-liver-r18") / "config.json").read_text())
    assert config["medzoo"]["metrics"] == entry.metrics
    assert (
        "| organs_sagittal | linear probe | 100% | 0.600 |"
        in (index.entry_folder("bt-liver-r18") / "README.md").read_text()
    )
    with pytest.raises(TypeError):
        index.update_metrics("bt-liver-r18", {"bad": object()})


def test_save_entry_failure_leaves_the_old_folder(gray_backbone, monkeypatch) -> None:
    folder = index.save_entry(_liver_entry(), gray_backbone)
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(MedzooError, match="extra file"):
        index.save_entry(_liver_entry(), gray_backbone, extra_files={"../evil": "x"})

    with pytest.raises(MedzooError, match="does not fit a resnet18"):
        index.save_entry(_liver_entry(), {f"backbone.{k}": v for k, v in gray_backbone.items()})
    with pytest.raises(MedzooError, match="does not fit a resnet18"):
        index.save_entry(ZooEntry(name="bt-liver-r18", in_chans=3), gray_backbone)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(index, "_write_folder_files", boom)
    with pytest.raises(MedzooError, match="disk full"):  # one line, not a traceback
        index.save_entry(_liver_entry(), {k: v + 1 for k, v in gray_backbone.items()})
    assert (folder / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["bt-liver-r18"]  # no temp left


# --------------------------------------------------------------------------- catalog models


def test_random_init_is_deterministic() -> None:
    a, b = medzoo.load("random-r18"), medzoo.load("random-r18", num_classes=3)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert torch.equal(a.layer4[1].conv2.weight, b.layer4[1].conv2.weight)
    assert not a.training and b.fc.out_features == 3


def test_untrained_catalog_model_names_its_make_target() -> None:
    with pytest.raises(MedzooError, match="make pretrain-crc") as err:
        medzoo.load("bt-crc-r18")
    assert "\n" not in str(err.value)


def test_imagenet_offline_is_one_clear_line(monkeypatch) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr("timm.models._builder.load_state_dict_from_hf", offline)
    with pytest.raises(MedzooError, match="ImageNet weights for in1k-r18.*not in the local") as err:
        medzoo.load("in1k-r18")
    assert "\n" not in str(err.value)


def test_imagenet_loads_through_timm(monkeypatch, rgb_classifier) -> None:
    calls = []

    def cached(model_id, *args, **kwargs):
        calls.append(model_id)
        return {k: v for k, v in rgb_classifier.items() if not k.startswith("fc.")}

    monkeypatch.setattr("timm.models._builder.load_state_dict_from_hf", cached)
    monkeypatch.setattr(loading, "_timm_weights_cached", lambda name: True)
    model = medzoo.load("in1k-r18")
    assert calls == ["timm/resnet18.tv_in1k"] and model.num_classes == 0
    assert torch.equal(model.conv1.weight, rgb_classifier["conv1.weight"])


def test_offline_imagenet_fails_fast_in_one_line(monkeypatch) -> None:
    """No cache and no Hub: the error comes before any download attempt (no retry backoff)."""

    def no_download(*args, **kwargs):
        raise AssertionError("no download may be attempted offline")

    monkeypatch.setattr("timm.models._builder.load_state_dict_from_hf", no_download)
    monkeypatch.setattr(loading, "_timm_weights_cached", lambda name: False)
    with pytest.raises(
        MedzooError, match="not in the local Hugging Face cache and the Hub is unreachable"
    ):
        medzoo.load("in1k-r18")


def test_hf_hub_passthrough(gray_backbone, monkeypatch) -> None:
    """hf-hub:ORG/NAME goes to timm, with medzoo's safetensors + sha256 checks first."""
    import huggingface_hub

    folder = index.save_entry(_liver_entry(), gray_backbone)

    def fake_download(repo_id, filename, *args, **kwargs):
        assert repo_id == "lab/bt-liver-r18"
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr("timm.models._hub.hf_hub_download", fake_download)
    model = medzoo.load("hf-hub:lab/bt-liver-r18")
    assert _outputs_equal(model, medzoo.load("bt-liver-r18"), 1)


# --------------------------------------------------------------------------- integrity


def test_sha_mismatch_refuses_the_load(gray_backbone) -> None:
    folder = index.save_entry(_liver_entry(), gray_backbone)
    weights = folder / "model.safetensors"
    tensors = safetensors.torch.load_file(str(weights))
    tensors["conv1.weight"] = tensors["conv1.weight"] * 0  # a valid file, but not the entry's
    safetensors.torch.save_file(tensors, str(weights))
    with pytest.raises(MedzooError, match="sha256 mismatch for bt-liver-r18"):
        medzoo.load("bt-liver-r18")
    with pytest.raises(MedzooError, match="sha256 mismatch"):
        medzoo.load("local-dir:" + str(folder))


def test_pickle_weights_are_refused(gray_backbone) -> None:
    folder = index.save_entry(_liver_entry(), gray_backbone)
    (folder / "model.safetensors").unlink()
    torch.save(gray_backbone, folder / "pytorch_model.bin")
    with pytest.raises(MedzooError, match="only from safetensors"):
        medzoo.load("bt-liver-r18")
    with pytest.raises(MedzooError, match="only from safetensors"):
        medzoo.load("local-dir:" + str(folder))


def test_truncated_weights_are_an_error_not_a_crash(gray_backbone) -> None:
    folder = index.save_entry(_liver_entry(), gray_backbone)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(MedzooError, match="sha256 mismatch"):
        medzoo.load("bt-liver-r18")
    # even when the recorded hash matches the damaged file, parsing fails cleanly
    from medzoo.zoo.entry import sha256_bytes

    index.update_entry("bt-liver-r18", sha256=sha256_bytes(weights.read_bytes()))
    with pytest.raises(MedzooError, match="not a valid safetensors"):
        medzoo.load("bt-liver-r18")


# --------------------------------------------------------------------------- concurrency


_REGISTER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from medzoo.zoo.entry import ZooEntry
    from medzoo.zoo.index import register
    worker, start, rounds = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    while time.time() < start:
        time.sleep(0.001)
    for i in range(rounds):
        register(ZooEntry(name=f"w{worker}-m{i}", method="random"))
        if i == 0:
            print("writing", flush=True)  # the parent kills us mid-loop after this
    """
)


def _spawn(args: list[str], home: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "MEDZOO_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-c", _REGISTER_SCRIPT, *args], env=env, **kwargs)


def test_concurrent_registrations_all_land(_isolated_home: Path) -> None:
    start = time.time() + 2.0  # every process is up before any registers
    procs = [_spawn([str(w), str(start), "5"], _isolated_home) for w in range(8)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 8
    data = json.loads((_isolated_home / "registry.json").read_text())
    assert set(data["models"]) == {f"w{w}-m{i}" for w in range(8) for i in range(5)}
    assert set(medzoo.list_models()) >= set(data["models"])


def test_killed_writer_leaves_a_valid_registry(_isolated_home: Path) -> None:
    index.register(ZooEntry(name="keep", method="random"))
    for delay in (0.0, 0.05, 0.13):
        proc = _spawn(["0", "0", "100000"], _isolated_home, stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"writing"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        data = json.loads((_isolated_home / "registry.json").read_text())  # valid JSON
        assert "keep" in data["models"]


def test_registered_entry_loads_with_its_own_data_config(gray_backbone) -> None:
    """medzoo.load, local-dir: and timm all resolve the entry's own 1-channel 224 px config."""
    index.save_entry(_liver_entry(), gray_backbone)
    entry = medzoo.model_info("bt-liver-r18")
    folder = index.entry_folder("bt-liver-r18")
    for model in (
        medzoo.load("bt-liver-r18"),
        timm.create_model("local-dir:" + str(folder), pretrained=True),
    ):
        config = timm.data.resolve_model_data_config(model, use_test_size=True)
        assert tuple(config["input_size"]) == entry.input_size == (1, 224, 224)
        assert tuple(config["mean"]) == entry.mean and tuple(config["std"]) == entry.std
