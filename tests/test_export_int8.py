"""int8 export gated on the task metric: a trained probe classifier passes, a tampered model fails.

The classifier is built the way the demo builds its own: a linear probe trained on frozen
features (``medzoo.evaluate.train_head``, standardisation folded into the head) and registered as
``<init>-<task>``. On it, top-1 agreement alone is a poor gate (near-ties flip both ways); the
gate is the balanced accuracy on the labelled test split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medzoo.cli import main
from medzoo.errors import MedzooError
from medzoo.export import int8 as mi
from medzoo.export import onnx as mo

BACKBONE = "t8-crc-r18"
PROBE = "t8-crc-r18-tissue"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    """A 32-px random-init backbone and a linear probe trained on it (registered like the demo's)."""
    import timm

    from medzoo.evaluate import train_head
    from medzoo.zoo.entry import ZooEntry
    from medzoo.zoo.index import save_entry

    home = tmp_path_factory.mktemp("int8-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDZOO_HOME", str(home))
        torch.manual_seed(0)
        backbone = timm.create_model("resnet18", num_classes=0, zero_init_last=False).eval()
        entry = ZooEntry(name=BACKBONE, datasets=("crc",), domain="crc", input_size=(3, 32, 32))
        save_entry(entry, backbone.state_dict())
        name, metrics = train_head(BACKBONE, "crc", data_root=synth_root, name=PROBE, device="cpu")
        assert name == PROBE and metrics["balanced_accuracy"] > 0.3  # well above chance (1/9)
    return home


@pytest.fixture
def zoo(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDZOO_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def probe_export(home: Path, synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`medzoo export PROBE --int8 --calibration-data ROOT --include-preprocessing`."""
    out = tmp_path_factory.mktemp("exports") / PROBE
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDZOO_HOME", str(home))
        argv = ["export", PROBE, "--int8", "--calibration-data", str(synth_root)]
        assert main([*argv, "--include-preprocessing", "--out", str(out)]) == 0
    return out


def test_int8_of_a_trained_probe_passes_the_accuracy_gate(
    probe_export: Path, zoo: Path, synth_root: Path
) -> None:
    from medzoo.data.mimeta import load_split

    test = load_split(synth_root, "crc", "test")
    report = json.loads((probe_export / "export.json").read_text())
    check = report["parity"]["int8"]
    assert check["passed"] and check["images"] == len(test)
    assert check["balanced_accuracy_change"] >= -0.01 - 1e-9
    assert check["balanced_accuracy_fp32"] > 0.3
    assert 0.0 <= check["top1_agreement"] <= 1.0 and report["int8_agreement"] is not None
    assert set(check["per_class"]) == set(test.class_names)
    assert sum(c["images"] for c in check["per_class"].values()) == len(test)
    # the calibration method was measured, not assumed
    assert {t["method"] for t in check["trials"]} == set(mi.CALIBRATION_METHODS)
    assert check["format"] in mi.FORMATS and check["method"] in mi.CALIBRATION_METHODS
    meta = mo.read_metadata(probe_export / "model_int8.onnx")
    assert meta["precision"] == "int8" and check["method"] in meta["int8_recipe"]
    # raw uint8 pixels in, and the recorded balanced accuracy is what the file gives
    session = mo.cpu_session(probe_export / "model_int8.onnx")
    assert session.get_inputs()[0].type == "tensor(uint8)"
    logits = mo.run_session(session, test.images.numpy())
    assert mi.balanced_accuracy(logits.argmax(1), test.labels.numpy()) == pytest.approx(
        check["balanced_accuracy_int8"]
    )


def _tamper(path: Path, seed: int = 0) -> None:
    """Scale every quantised convolution's weights per output channel by 0.5-1.5 (in place)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {init.name: init for init in model.graph.initializer}
    rng = np.random.default_rng(seed)
    scaled = 0
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            weights = numpy_helper.to_array(inits[node.input[0]])
            if weights.ndim != 4:  # conv weights only
                continue
            scale = inits[node.input[1]]
            array = numpy_helper.to_array(scale)
            factor = rng.uniform(0.5, 1.5, size=array.shape).astype(array.dtype)
            scale.CopyFrom(numpy_helper.from_array(array * factor, scale.name))
            scaled += 1
    assert scaled > 10
    onnx.save(model, str(path))


def test_the_gate_refuses_a_tampered_int8_model(
    probe_export: Path, zoo: Path, synth_root: Path, tmp_path: Path
) -> None:
    from medzoo.data.mimeta import load_split
    from medzoo.zoo.index import model_info

    meta = mo.entry_metadata(model_info(PROBE))
    train = load_split(synth_root, "crc", "train").images.numpy()
    test = load_split(synth_root, "crc", "test")
    fp32 = probe_export / "model.onnx"  # takes uint8 (--include-preprocessing)
    honest, tampered = tmp_path / "honest.onnx", tmp_path / "tampered.onnx"
    for path in (honest, tampered):
        mi.quantize_int8(fp32, path, train, meta, True, method="minmax", quant_format="qdq")
    _tamper(tampered)
    images, labels = test.images.numpy(), test.labels.numpy()
    good = mi.score_int8(fp32, honest, meta, images, labels, True)
    bad = mi.score_int8(fp32, tampered, meta, images, labels, True)
    assert good["mean_cosine"] > bad["mean_cosine"]
    assert not bad["passed"] and bad["balanced_accuracy_change"] < -0.01
    # and the backbone gate (cosine) refuses it too
    backbone = {**meta, "num_classes": 0}
    assert not mi.score_int8(fp32, tampered, backbone, images, None, True)["passed"]


def test_a_tampered_search_fails_the_export_and_writes_nothing(
    zoo: Path, synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quantize = mi.quantize_int8

    def tampering(src, dst, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        quantize(src, dst, *args, **kwargs)
        _tamper(dst)

    monkeypatch.setattr(mi, "quantize_int8", tampering)
    monkeypatch.setattr(mi, "CALIBRATION_METHODS", ("minmax",))
    out = tmp_path / "exports" / PROBE
    with pytest.raises(MedzooError, match=r"int8 export failed its gate .* balanced accuracy"):
        mo.export_model(
            PROBE,
            out,
            int8=True,
            calibration_root=synth_root,
            gate=mi.Int8Gate(max_accuracy_drop=0.01),
        )
    assert not out.exists() and list((tmp_path / "exports").iterdir()) == []


def test_backbone_int8_gates_on_cosine_and_reports_its_probe(
    zoo: Path, synth_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / BACKBONE
    argv = ["export", BACKBONE, "--int8", "--calibration-data", str(synth_root)]
    assert main([*argv, "--out", str(out)]) == 0
    check = json.loads((out / "export.json").read_text())["parity"]["int8"]
    assert check["passed"] and check["mean_cosine"] >= 0.99
    assert "balanced_accuracy_change" not in check  # a backbone has no classes of its own
    probe = check["probes"][PROBE]
    assert probe["balanced_accuracy_change"] >= -0.01 - 1e-9 and 0 < probe["top1_agreement"] <= 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-accuracy-drop", "-1"], "--max-accuracy-drop -1.0 must be"),
        (["--min-cosine", "2"], "--min-cosine 2.0 must be"),
    ],
)
def test_bad_gate_arguments_give_one_line(
    argv: list[str], message: str, zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["export", PROBE, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_the_fastest_passing_format_is_kept_and_qoperator_may_need_another_rung(tmp_path) -> None:
    """QOperator quantises differently from QDQ: when it fails at the QDQ winner's fp32 set, the
    next set up is tried, and a passing QOperator model replaces QDQ only when it is faster."""
    dst, candidate = tmp_path / "int8.onnx", tmp_path / "candidate.onnx"
    dst.write_text("qdq")
    built: list[tuple[str, str, str]] = []
    # QOperator passes only with the last block in fp32, and there only with entropy
    passes = {("entropy", "stem+last-block")}

    def build(method: str, keep: str, fmt: str, target: Path) -> dict:
        built.append((method, keep, fmt))
        target.write_text(f"{method}/{keep}/{fmt}")
        return {"method": method, "keep_fp32": keep, "format": fmt,
                "passed": (method, keep) in passes}  # fmt: skip

    def latency(path: Path) -> float:
        return 2.0 if path.read_text() == "qdq" else 1.0

    best = {"method": "percentile", "keep_fp32": "stem", "format": "qdq", "passed": True}
    chosen = mi._faster_format(best, build, dst, candidate, mi.FP32_LADDER, mi.CALIBRATION_METHODS, latency)  # fmt: skip
    assert built[0] == ("percentile", "stem", "qoperator")  # the QDQ winner's method first
    assert ("entropy", "stem+last-block", "qoperator") in built
    assert not any(keep == "stem+layer4" for _, keep, _ in built)  # a passing rung ends it
    assert (chosen["format"], chosen["method"], chosen["keep_fp32"]) == ("qoperator", "entropy", "stem+last-block")  # fmt: skip
    assert dst.read_text() == "entropy/stem+last-block/qoperator"
    assert chosen["format_seconds_per_batch_of_8"] == {"qdq": 2.0, "qoperator": 1.0}

    # a passing QOperator model that is slower leaves the QDQ one in place
    dst.write_text("qdq")
    chosen = mi._faster_format(best, build, dst, candidate, mi.FP32_LADDER, mi.CALIBRATION_METHODS, lambda p: 1.0 if p.read_text() == "qdq" else 3.0)  # fmt: skip
    assert chosen is best and dst.read_text() == "qdq"
