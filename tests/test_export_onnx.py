"""ONNX export: metadata, a dynamic batch axis, enforced parity, the fp16/int8 gates, atomic output.

Exports cost seconds each, so the models are registered and exported once per module (in a
zoo home shared by the tests of this file) and the tests read what was written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medzoo.cli import main
from medzoo.errors import MedzooError
from medzoo.export import onnx as mo

BACKBONE = "t-crc-r18"
CLASSIFIER = "t-crc-r18-tissue"


def register_models(synth_root: Path) -> None:
    """A random-init backbone and a classifier whose head is the nearest-centroid rule on the
    synthetic train features (a real margin between classes, like a trained probe)."""
    import timm

    from medzoo.data.mimeta import load_split
    from medzoo.zoo.entry import ZooEntry
    from medzoo.zoo.index import save_entry

    torch.manual_seed(0)
    common = {"datasets": ("crc",), "domain": "crc", "input_size": (3, 32, 32)}
    backbone = timm.create_model("resnet18", num_classes=0).eval()
    save_entry(ZooEntry(name=BACKBONE, **common), backbone.state_dict())
    train = load_split(synth_root, "crc", "train")
    entry = ZooEntry(
        name=CLASSIFIER,
        method="linear-probe",
        task=train.task,
        num_classes=len(train.class_names),
        label_names=train.class_names,
        base_model=BACKBONE,
        **common,
    )
    classifier = timm.create_model("resnet18", num_classes=entry.num_classes).eval()
    classifier.load_state_dict(backbone.state_dict(), strict=False)
    with torch.no_grad():
        features = classifier.forward_head(
            classifier.forward_features(mo.normalize(train.images, entry.mean, entry.std)),
            pre_logits=True,
        )
        centroids = torch.stack(
            [features[train.labels == k].mean(0) for k in range(entry.num_classes)]
        )
        classifier.fc.weight.copy_(2 * centroids)  # argmax of 2 f.c - |c|^2 = nearest centroid
        classifier.fc.bias.copy_(-(centroids**2).sum(1))
    save_entry(entry, classifier.state_dict())


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    home = tmp_path_factory.mktemp("export-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDZOO_HOME", str(home))
        register_models(synth_root)
    return home


@pytest.fixture
def zoo(shared_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDZOO_HOME", str(shared_home))
    return shared_home


@pytest.fixture(scope="module")
def backbone_export(
    shared_home: Path, synth_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Exported through the CLI (fp32 + fp16), parity on real synthetic test images."""
    out = tmp_path_factory.mktemp("exports") / BACKBONE
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDZOO_HOME", str(shared_home))
        code = main(
            ["export", BACKBONE, "--out", str(out), "--fp16", "--data-root", str(synth_root)]
        )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def classifier_export(
    shared_home: Path, synth_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> mo.ExportResult:
    """uint8-input graph, fp32 and fp16, gated on the synthetic test split (int8: test_export_int8)."""
    out = tmp_path_factory.mktemp("exports") / CLASSIFIER
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDZOO_HOME", str(shared_home))
        return mo.export_model(
            CLASSIFIER, out, fp16=True, data_root=synth_root, include_preprocessing=True
        )


def test_backbone_export_carries_metadata_and_a_dynamic_batch(
    backbone_export: Path, zoo: Path
) -> None:
    import onnx
    import onnxruntime as ort

    from medzoo import data_config as medzoo_data_config
    from medzoo.zoo.index import model_info

    entry = model_info(BACKBONE)
    assert sorted(p.name for p in backbone_export.iterdir()) == [
        "export.json",
        "model.onnx",
        "model.onnx.sha256",  # the recorded sha256 that predict and bench verify
        "model_fp16.onnx",
        "model_fp16.onnx.sha256",
    ]
    meta = mo.read_metadata(backbone_export / "model.onnx")
    assert meta["name"] == BACKBONE and meta["sha256"] == entry.sha256
    assert json.loads(meta["mean"]) == pytest.approx(list(entry.mean))
    assert json.loads(meta["std"]) == pytest.approx(list(entry.std))
    assert json.loads(meta["input_size"]) == [3, 32, 32] and meta["in_chans"] == "3"
    assert {"medzoo", "torch", "onnx"} <= set(json.loads(meta["versions"]))
    assert "label_names" not in meta and meta["output"] == "embedding"
    # the preprocessing rule is recorded, the same one medzoo.data_config states
    rule = medzoo_data_config(BACKBONE)
    assert meta["interpolation"] == rule["interpolation"] and meta["crop_mode"] == "center"
    assert float(meta["crop_pct"]) == rule["crop_pct"]
    onnx.checker.check_model(str(backbone_export / "model.onnx"), full_check=True)
    session = ort.InferenceSession(
        str(backbone_export / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic, not the traced 2
    for batch in (1, 7):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        assert session.run(None, {"input": x})[0].shape == (batch, 512)
    report = json.loads((backbone_export / "export.json").read_text())
    fp32, fp16 = report["parity"]["fp32"], report["parity"]["fp16"]
    assert fp32["real_images"] > 0 and fp32["batches_checked"][:2] == [1, 7]
    assert fp32["max_rel"] <= 1e-4 and fp16["max_rel"] <= 1e-2
    assert mo.read_metadata(backbone_export / "model_fp16.onnx")["precision"] == "fp16"


def test_classifier_export_labels_uint8_input_and_the_fp16_gate(
    classifier_export: mo.ExportResult, zoo: Path, synth_root: Path
) -> None:
    from medzoo.data.mimeta import load_split
    from medzoo.zoo.index import load, model_info

    entry = model_info(CLASSIFIER)
    result = classifier_export
    assert result.path.name == "model_fp16.onnx" and result.files["fp32"] == "model.onnx"
    meta = mo.read_metadata(result.out_dir / "model.onnx")
    assert tuple(json.loads(meta["label_names"])) == entry.label_names
    assert meta["include_preprocessing"] == "true"
    assert mo.read_metadata(result.path)["precision"] == "fp16"
    gate = result.parity["fp16"]["gate"]
    assert gate["passed"] and gate["images"] == len(load_split(synth_root, "crc", "test"))
    assert gate["balanced_accuracy_change"] >= -0.01 and "fp16" in next(
        iter(gate["per_class"].values())
    )
    assert result.parity["fp32"]["top1_mismatches"] == 0
    # raw uint8 pixels in, the same outputs as torch on normalised images out (fp32 and fp16)
    images = load_split(synth_root, "crc", "test").images[:5]
    with torch.inference_mode():
        expected = load(CLASSIFIER)(mo.normalize(images, entry.mean, entry.std)).numpy()
    for file_name, tolerance in (("model.onnx", 1e-4), ("model_fp16.onnx", 2e-2)):
        session = mo.cpu_session(result.out_dir / file_name)
        assert session.get_inputs()[0].type == "tensor(uint8)"
        logits = session.run(None, {"input": images.numpy()})[0]
        scale = np.abs(expected).max()
        np.testing.assert_allclose(logits, expected, rtol=0, atol=tolerance * scale)


def test_broken_export_fails_parity_and_writes_nothing(
    zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnx import numpy_helper

    set_props = mo.set_props

    def scale_weights(model, props):  # noqa: ANN001, ANN202 - a subtle "bug" in the graph
        for init in model.graph.initializer:
            array = numpy_helper.to_array(init)
            if array.dtype == np.float32:  # 0.1 % per layer: well above float32 rounding
                init.CopyFrom(numpy_helper.from_array(array * np.float32(1.001), init.name))
        return set_props(model, props)

    monkeypatch.setattr(mo, "set_props", scale_weights)
    out = tmp_path / "exports" / BACKBONE
    with pytest.raises(MedzooError, match="failed parity: relative error"):
        mo.export_model(BACKBONE, out)
    assert not out.exists()
    assert list((tmp_path / "exports").iterdir()) == []  # no temporary folder left behind


def test_int8_below_the_bar_fails_and_says_so(
    zoo: Path, synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medzoo.export import int8 as mi

    monkeypatch.setattr(mi, "CALIBRATION_METHODS", ("minmax",))  # one try per rung: fast
    out = tmp_path / "x"
    with pytest.raises(MedzooError, match=r"int8 export failed its gate .* mean cosine 0\.\d"):
        mo.export_model(
            BACKBONE, out, int8=True, calibration_root=synth_root,
            gate=mi.Int8Gate(min_cosine=1.01),  # no int8 model can reach this
        )  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "no-such-model"], "unknown zoo model"),
        (["export", BACKBONE, "--opset", "11"], "--opset 11 is not supported"),
        (["export", BACKBONE, "--int8"], "--int8 needs calibration images from the data root"),
        (["export", BACKBONE, "--int8", "--data-root", "/nonexistent"], "pass --data-root"),
        (["export", BACKBONE, "--int8", "--calibration-data", "/nonexistent"], "does not exist"),
        (["export", "Bad/Name"], "invalid zoo model name"),
    ],
)
def test_bad_export_arguments_give_one_line(
    argv: list[str], message: str, zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_export_json_and_one_line_per_step(
    zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints the result on stdout; each export step is one plain line on stderr."""
    import logging

    from medzoo.commands.common import program_logging

    assert main(["export", BACKBONE, "--out", str(tmp_path / "e"), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["files"] == {"fp32": "model.onnx"} and result["parity"]["fp32"]["max_rel"] < 1e-4
    lines = captured.err.splitlines()
    assert [line.split(":")[1].split()[0] for line in lines] == ["fp32", "fp32"]
    assert "graph written and checked" in lines[0] and "parity max abs" in lines[1]
    with program_logging(quiet=True):  # what --quiet does: the medzoo logger shows warnings only
        assert logging.getLogger("medzoo").getEffectiveLevel() == logging.WARNING
    handlers = logging.getLogger("medzoo").handlers  # nothing left behind after the command
    assert all(isinstance(h, logging.NullHandler) for h in handlers)
