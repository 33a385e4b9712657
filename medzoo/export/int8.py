"""int8 quantisation of an fp32 export, chosen by measurement and gated on the task metric.

:func:`quantize_int8` is onnxruntime static quantisation: int8 per-channel weights and uint8
activations for the convolutions, calibrated on train images, with a chosen set of convolutions
(the stem, the last block, layer4) left in fp32. :func:`search_int8` tries the calibration
methods (percentile, entropy, min-max) with the fewest fp32 layers first, scores each candidate
on the labelled test split with :func:`score_int8`, keeps the best one that passes the gate, and
then keeps QDQ or QOperator format by measured speed.

The gate (:class:`Int8Gate`) is the task metric, as production quantisation tools gate
(Intel Neural Compressor, ONNX Runtime's guidance: <= 1 % accuracy loss), not top-1 agreement:
near-ties of a low-margin classifier flip both ways without changing its accuracy.

- classifier: balanced accuracy on the test split may drop by at most ``max_accuracy_drop``
  (default 1 point); top-1 agreement and per-class recall changes are reported;
- backbone (no labels of its own): mean cosine similarity of the embeddings >= ``min_cosine``
  (default 0.99), plus, for every linear-probe entry trained on it whose test data is at hand, the
  probe's balanced-accuracy change on int8 embeddings (gated like a classifier).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medzoo.export.runtime import (
    INPUT_NAME,
    META_PREFIX,
    cpu_session,
    model_input,
    quiet,
    read_metadata,
    run_session,
    set_props,
)

INT8_OPS = ("Conv",)
CALIBRATION_METHODS = ("percentile", "entropy", "minmax")
# Convolutions kept in fp32, fewest first: the stem sees raw pixels and holds 0.5 % of the
# weights; the last convolutions feed the head directly, where a linear probe's folded
# standardisation multiplies small feature errors (measured on the demo classifier).
FP32_LADDER: tuple[str, ...] = ("stem", "stem+last-block", "stem+layer4")
FORMATS = ("qdq", "qoperator")


@dataclass(frozen=True)
class Int8Gate:
    """What an int8 model must keep to be written (both configurable on the command line)."""

    max_accuracy_drop: float = 0.01  # balanced accuracy, as a fraction (0.01 = 1 point)
    min_cosine: float = 0.99  # backbones: mean cosine similarity of the embeddings


@dataclass
class ProbeCheck:
    """A linear-probe entry of a backbone: its head and its dataset's labelled test images."""

    name: str
    weight: np.ndarray  # [classes, features]
    bias: np.ndarray
    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray
    label_names: Sequence[str] = field(default_factory=tuple)


class _Calibration:
    """onnxruntime's CalibrationDataReader over a uint8 image array."""

    def __init__(
        self,
        images: np.ndarray,
        meta: Mapping[str, Any],
        include_preprocessing: bool,
        batch_size: int = 1,  # equal shapes: the histogram calibrators cannot stack ragged batches
    ) -> None:
        self._batches = iter(
            [
                model_input(images[i : i + batch_size], meta, include_preprocessing)
                for i in range(0, len(images), batch_size)
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def fp32_convs(path: Path, keep: str) -> list[str]:
    """Names of the convolutions that ``keep`` (one of :data:`FP32_LADDER`) leaves in fp32."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    convs = [node.name for node in graph.node if node.op_type == "Conv"]
    if keep not in FP32_LADDER:
        raise ValueError(f"keep must be one of {FP32_LADDER}, not {keep!r}")
    tail = {"stem": 0, "stem+last-block": 2, "stem+layer4": 5}[keep]
    return convs[:1] + (convs[-tail:] if tail else [])


def prepare(src: Path, dst: Path) -> None:
    """Fuse and infer shapes first, as onnxruntime recommends before ``quantize_static``."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with quiet():
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


# long: onnxruntime's quantisation call with every option documented beside it
def quantize_int8(
    src: Path,
    dst: Path,
    calibration: np.ndarray,
    meta: Mapping[str, Any],
    include_preprocessing: bool,
    *,
    method: str = "percentile",
    keep_fp32: str = "stem",
    quant_format: str = "qdq",
    prepared: Path | None = None,
) -> None:
    """Static quantisation of ``src`` (fp32) into ``dst``: int8 per-channel weights, uint8
    activations, calibrated on ``calibration`` (uint8 train images) with ``method``.

    ``prepared`` is ``src`` after :func:`prepare` (made here when not given).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
    }
    reader = type("Reader", (_Calibration, CalibrationDataReader), {})(
        calibration, meta, include_preprocessing
    )
    own = prepared is None
    prepared = prepared or dst.with_name(dst.stem + ".prep.onnx")
    if own:
        prepare(src, prepared)
    try:
        with quiet():
            quantize_static(
                str(prepared),
                str(dst),
                reader,
                quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                # percentile: 99.999th-percentile ranges, one outlier no longer stretches a scale
                calibrate_method=methods[method],
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                # convolutions carry ~all the compute; the fc head stays fp32 (small logit gaps)
                op_types_to_quantize=list(INT8_OPS),
                nodes_to_exclude=fp32_convs(prepared, keep_fp32),
            )
    finally:
        if own:
            prepared.unlink(missing_ok=True)
    import onnx

    model = onnx.load(str(dst))
    props = {META_PREFIX + k: v for k, v in read_metadata(src).items()}
    props[META_PREFIX + "precision"] = "int8"
    props[META_PREFIX + "int8_recipe"] = (
        f"static {quant_format}, per-channel int8 weights, uint8 activations, {method} "
        f"calibration on {len(calibration)} train images, fp32: {keep_fp32} and the head"
    )
    set_props(model, props)
    onnx.save(model, str(dst))


# --------------------------------------------------------------------------- scoring


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``labels``."""
    return float(np.mean([np.mean(predicted[labels == c] == c) for c in np.unique(labels)]))


def accuracy_change(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str] = (),
    precision: str = "int8",
) -> dict[str, Any]:
    """Balanced accuracy of both logits, its change, top-1 agreement, per-class recall changes."""
    ref, cand = reference.argmax(1), candidate.argmax(1)
    per_class = {}
    for c in np.unique(labels):
        rows = labels == c
        name = label_names[c] if c < len(label_names) else str(int(c))
        r, q = float(np.mean(ref[rows] == c)), float(np.mean(cand[rows] == c))
        per_class[name] = {"images": int(rows.sum()), "fp32": r, precision: q, "change": q - r}
    # rounded so that equal accuracies compare equal (the mean of recalls is not exact)
    fp32 = round(balanced_accuracy(ref, labels), 9)
    other = round(balanced_accuracy(cand, labels), 9)
    return {
        "images": int(len(labels)),
        "balanced_accuracy_fp32": fp32,
        f"balanced_accuracy_{precision}": other,
        "balanced_accuracy_change": round(other - fp32, 9),
        "top1_agreement": float(np.mean(ref == cand)),
        "per_class": per_class,
    }


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


# long: the gate: metrics, per-class changes and the verdict in one record
def score_int8(
    fp32_path: Path,
    int8_path: Path,
    meta: Mapping[str, Any],
    test_images: np.ndarray,
    test_labels: np.ndarray | None,
    include_preprocessing: bool,
    gate: Int8Gate = Int8Gate(),
    probes: Sequence[ProbeCheck] = (),
    precision: str = "int8",
) -> dict[str, Any]:
    """Run both files on the labelled test images; the figures and whether the gate passed.

    ``precision`` names the candidate in the report (the fp16 export is gated the same way).

    ``score`` orders candidates: the balanced-accuracy change for a classifier, the mean cosine
    (or the worst probe change when probes exist) for a backbone.
    """
    fp32_session, int8_session = cpu_session(fp32_path), cpu_session(int8_path)

    def both(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = model_input(images, meta, include_preprocessing)
        return run_session(fp32_session, x), run_session(int8_session, x)

    fp32, int8 = both(test_images)
    cosine = _cosine(fp32, int8)
    out: dict[str, Any] = {
        "images": int(len(test_images)),
        "mean_cosine": float(np.mean(cosine)),
        "min_cosine": float(np.min(cosine)),
        "max_abs": float(np.max(np.abs(fp32 - int8))),
        "gate": {"max_accuracy_drop": gate.max_accuracy_drop},
    }
    if meta["num_classes"]:
        if test_labels is None:
            raise ValueError("a classifier's int8 gate needs the test labels")
        names = meta.get("label_names") or ()
        out.update(accuracy_change(fp32, int8, test_labels, names, precision))
        drop = -out["balanced_accuracy_change"]
        out["passed"] = bool(drop <= gate.max_accuracy_drop + 1e-9)
        out["score"] = out["balanced_accuracy_change"]
        out["reason"] = (
            f"balanced accuracy {out['balanced_accuracy_fp32']:.1%} -> "
            f"{out[f'balanced_accuracy_{precision}']:.1%} ({100 * -drop:+.1f} points, top-1 agreement "
            f"{out['top1_agreement']:.1%})"
        )
        return out
    out["gate"]["min_cosine"] = gate.min_cosine
    passed = out["mean_cosine"] >= gate.min_cosine
    reasons = [f"mean cosine {out['mean_cosine']:.4f}"]
    out["probes"] = {}
    score = out["mean_cosine"] - 1.0
    for probe in probes:
        ref, cand = both(probe.images)
        logits = [e @ probe.weight.T + probe.bias for e in (ref, cand)]
        change = accuracy_change(*logits, probe.labels, probe.label_names, precision)
        out["probes"][probe.name] = change
        passed &= -change["balanced_accuracy_change"] <= gate.max_accuracy_drop + 1e-9
        score = min(score, change["balanced_accuracy_change"])
        reasons.append(f"probe {probe.name} {100 * change['balanced_accuracy_change']:+.1f} points")
    out["passed"] = bool(passed)
    out["score"] = float(score)
    out["reason"] = ", ".join(reasons)
    return out


# --------------------------------------------------------------------------- the search


def _latency(path: Path, meta: Mapping[str, Any], images: np.ndarray, include: bool) -> float:
    """Best of 5 runs of one batch (seconds): enough to rank two formats of one model."""
    session = cpu_session(path)
    x = model_input(images, meta, include)
    session.run(None, {INPUT_NAME: x})
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        session.run(None, {INPUT_NAME: x})
        best = min(best, time.perf_counter() - start)
    return best


def _rank(result: Mapping[str, Any]) -> tuple[bool, float, float]:
    """Passing first, then the gate's score, then the closeness of the outputs (ties)."""
    return (bool(result["passed"]), float(result["score"]), float(result["mean_cosine"]))


def _faster_format(
    best: dict[str, Any],
    build: Any,
    dst: Path,
    candidate: Path,
    ladder: Sequence[str],
    methods: Sequence[str],
    latency: Any,
) -> dict[str, Any]:
    """QOperator candidates against the passing QDQ ``best`` (at ``dst``): the fastest that
    passes the gate is kept. QOperator is often faster on CPU but quantises differently, so a
    method or an fp32 set other than the QDQ winner's may be the one that passes."""
    speeds = {"qdq": latency(dst)}
    chosen, fastest = best, speeds["qdq"]
    rung = ladder.index(best["keep_fp32"]) if best["keep_fp32"] in ladder else 0
    order = [best["method"], *(m for m in methods if m != best["method"])]
    for keep in ladder[rung : rung + 2]:
        passed_here = False
        for method in order:
            other = build(method, keep, "qoperator", candidate)
            if not other["passed"]:
                continue
            passed_here = True
            seconds = latency(candidate)
            speeds["qoperator"] = min(seconds, speeds.get("qoperator", seconds))
            if seconds < fastest:
                chosen, fastest = other, seconds
                candidate.replace(dst)
        if passed_here:
            break
    chosen["format_seconds_per_batch_of_8"] = speeds
    return chosen


# long: the candidate search: one loop over calibration methods and fp32 layer sets
def search_int8(
    src: Path,
    dst: Path,
    meta: Mapping[str, Any],
    *,
    calibration: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray | None,
    include_preprocessing: bool,
    gate: Int8Gate = Int8Gate(),
    probes: Sequence[ProbeCheck] = (),
    methods: Sequence[str] | None = None,
    ladder: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Find an int8 model of ``src`` that passes ``gate`` and write it to ``dst``.

    For each fp32 set of :data:`FP32_LADDER` (fewest fp32 layers first) every calibration method
    is measured; the best-scoring candidate that passes is kept, else the next rung is tried.
    The winner's rung (and the next one up, if none passes there) is then built in QOperator
    format with every method, and the fastest candidate that passes the gate, QDQ or QOperator,
    is kept (:func:`_faster_format`). Returns the chosen candidate's figures with ``passed`` and every ``trial``; when no
    candidate passes, ``passed`` is false, ``dst`` is absent and the best failure is reported.
    """
    methods = methods or CALIBRATION_METHODS
    ladder = ladder or FP32_LADDER
    prepared = dst.with_name(dst.stem + ".prep.onnx")
    candidate = dst.with_name(dst.stem + ".candidate.onnx")
    prepare(src, prepared)
    trials: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None

    def latency(path: Path) -> float:
        sample = test_images[: min(8, len(test_images))]
        return _latency(path, meta, sample, include_preprocessing)

    def build(method: str, keep: str, quant_format: str, target: Path) -> dict[str, Any]:
        quantize_int8(
            src, target, calibration, meta, include_preprocessing,
            method=method, keep_fp32=keep, quant_format=quant_format, prepared=prepared,
        )  # fmt: skip
        result = score_int8(
            src, target, meta, test_images, test_labels, include_preprocessing, gate, probes
        )
        result.update(method=method, keep_fp32=keep, format=quant_format)
        trials.append({k: result[k] for k in ("method", "keep_fp32", "format", "score", "passed")})
        return result

    try:
        for keep in ladder:
            for method in methods:
                result = build(method, keep, "qdq", candidate)
                if best is None or _rank(result) > _rank(best):
                    best = result
                    candidate.replace(dst)
            if best is not None and best["passed"]:
                break
        assert best is not None, "no calibration method or fp32 set to try"
        if best["passed"] and "qoperator" in FORMATS:
            best = _faster_format(best, build, dst, candidate, ladder, methods, latency)
        if not best["passed"]:
            dst.unlink(missing_ok=True)
        best["trials"] = trials
        best["calibration_images"] = int(len(calibration))
        return best
    finally:
        prepared.unlink(missing_ok=True)
        candidate.unlink(missing_ok=True)
