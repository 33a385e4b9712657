"""ONNX export of zoo models: the export itself, its embedded metadata and fp16.

Every export is verified before it is kept: the graph passes ``onnx.checker`` (full check), runs
in onnxruntime with batches of 1 and 7 although it was traced with a batch of 2 (the batch
dimension really is dynamic), and gives the same outputs as the torch model on random images and,
when the entry's datasets are available, on real test images (:mod:`medzoo.export.parity`).
Anything that fails raises a :class:`MedzooError` and leaves nothing behind: the files are built
in a temporary folder beside the output folder and only moved in once every check has passed.
int8 quantisation and its agreement check live in :mod:`medzoo.export.int8`; file names,
metadata reading, input normalisation and onnxruntime sessions in :mod:`medzoo.export.runtime`
(their public names stay importable from here).

Exporter: ``torch.onnx.export(dynamo=True)``, the torch.export-based exporter. It is the default
and the maintained path in torch >= 2.9 (the TorchScript exporter is deprecated and warns), its
onnxscript optimiser folds BatchNorm into the convolutions, and it needs nothing from the
network. It supports opset 18 and newer, so that is the range :func:`export_model` accepts.

Files in the output folder:

- ``model.onnx``: fp32, always (the reference the other precisions are checked against);
- ``model_fp16.onnx`` with ``fp16=True``: fp16 weights and compute, fp32 inputs and outputs;
- ``model_int8.onnx`` with ``int8=True``: onnxruntime static quantisation, calibrated on train
  images and chosen by measurement (:func:`~medzoo.export.int8.search_int8`), kept only if it
  passes the task-metric gate on the test split (classifiers: balanced accuracy drops <= 1
  point; backbones: embedding cosine >= 0.99 and their probes' accuracy);
- ``export.json``: the :class:`ExportResult` (parity figures, agreement, metadata, provenance).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medzoo.errors import DISK_ERRNOS, MedzooError, disk_error

# parity and int8 were split out of this module; their public names stay importable from here
from medzoo.export.int8 import INT8_OPS as INT8_OPS
from medzoo.export.int8 import Int8Gate, ProbeCheck, score_int8, search_int8
from medzoo.export.parity import FP16_TOLERANCE as FP16_TOLERANCE
from medzoo.export.parity import FP32_TOLERANCE as FP32_TOLERANCE
from medzoo.export.parity import ParityInputs, check_parity, random_images
from medzoo.export.parity import compare as compare
from medzoo.export.parity import run_torch as run_torch
from medzoo.export.runtime import (
    FP16_FILE,
    INPUT_NAME,
    INT8_FILE,
    META_PREFIX,
    MODEL_FILE,
    OUTPUT_NAME,
    REPORT_FILE,
    file_sha256,
    model_input,
    quiet,
    read_metadata,
    set_props,
    sidecar_path,
    sidecar_text,
)
from medzoo.export.runtime import (
    cpu_session as cpu_session,
)
from medzoo.export.runtime import (
    normalize as normalize,
)
from medzoo.export.runtime import (
    run_session as run_session,
)
from medzoo.provenance import ensure_writable_dir

log = logging.getLogger("medzoo.export")

MIN_OPSET = 18  # the dynamo exporter emits opset 18 and newer
EXAMPLE_BATCH = 2  # traced with 2 so that no dimension is specialised to 1
CHECK_BATCHES = (1, 7)  # neither is the traced batch: proves the batch axis is dynamic
PARITY_REAL_IMAGES = 64  # real test images compared in every export (more adds time, not evidence)
CALIBRATION_IMAGES = 256


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and the evidence that it is right."""

    name: str
    out_dir: Path
    path: Path  # the file of the requested precision (int8 > fp16 > fp32)
    files: dict[str, str]  # precision -> file name in out_dir
    opset: int
    include_preprocessing: bool
    parity: dict[str, dict[str, Any]]  # precision -> {max_abs, max_rel, top1_mismatches, ...}
    int8_agreement: float | None = None  # classifiers: top-1 agreement with fp32 (reported)
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["out_dir"] = str(self.out_dir)
        out["path"] = str(self.path)
        return out


# --------------------------------------------------------------------------- metadata


def entry_metadata(entry: Any) -> dict[str, Any]:
    """The fields of a :class:`~medzoo.zoo.entry.ZooEntry` that an export needs."""
    return {
        "name": entry.name,
        "arch": entry.arch,
        "sha256": entry.sha256 or "",
        "in_chans": int(entry.in_chans),
        "input_size": [int(v) for v in entry.input_size],
        "mean": [float(v) for v in entry.mean],
        "std": [float(v) for v in entry.std],
        "num_classes": int(entry.num_classes),
        "label_names": list(entry.label_names),
        "datasets": list(entry.datasets),
        "interpolation": entry.interpolation,
        # the preprocessing rule (medzoo.data.transforms): resize short side, centre crop
        "crop_pct": float(entry.crop_pct),
        "crop_mode": "center",
    }


def _library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("medzoo", "torch", "timm", "onnx", "onnxscript", "onnxruntime-gpu", "onnxruntime"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def model_props(
    meta: Mapping[str, Any], *, precision: str, include_preprocessing: bool
) -> dict[str, str]:
    """ONNX ``metadata_props`` (string to string); lists and dicts are JSON."""
    from medzoo.provenance import utc_now

    props = {
        "name": meta["name"],
        "arch": meta.get("arch", ""),
        "sha256": meta.get("sha256", ""),
        "in_chans": str(meta["in_chans"]),
        "input_size": json.dumps(list(meta["input_size"])),
        "mean": json.dumps(list(meta["mean"])),
        "std": json.dumps(list(meta["std"])),
        "num_classes": str(meta["num_classes"]),
        "output": "logits" if meta["num_classes"] else "embedding",
        "precision": precision,
        "input": "uint8 NCHW pixels 0-255 (normalised in the graph)"
        if include_preprocessing
        else "float32 NCHW, (pixels / 255 - mean) / std",
        "include_preprocessing": "true" if include_preprocessing else "false",
        # how images become input_size pixels before the graph (timm's evaluation transform)
        "interpolation": str(meta.get("interpolation", "bilinear")),
        "crop_pct": str(meta.get("crop_pct", 1.0)),
        "crop_mode": str(meta.get("crop_mode", "center")),
        "resize": "short side to floor(size / crop_pct), then centre crop to input_size",
        "versions": json.dumps(_library_versions()),
        "created": utc_now(),
    }
    if meta["num_classes"]:
        props["label_names"] = json.dumps(list(meta.get("label_names") or []))
    return {META_PREFIX + key: value for key, value in props.items()}


# --------------------------------------------------------------------------- torch side


def _with_preprocessing(model: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """``model`` behind a uint8 -> normalised float front, so deployment feeds raw pixels."""
    import torch

    class Preprocessed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model((x.float() / 255.0 - self.mean) / self.std)

    return Preprocessed().eval()


def _torch_export(module: Any, example: Any, path: Path, opset: int) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with quiet():
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=True,
                verbose=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                external_data=False,  # one self-contained file (ResNet-18 is 45 MB)
                optimize=True,
            )
    except Exception as err:  # the exporter's errors are long; keep the first line
        disk = _disk_cause(err)
        if disk is not None:  # a full or read-only disk, not the opset
            raise disk_error(disk, f"writing the ONNX export {path.name}") from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MedzooError(f"torch.onnx.export failed: {first}; try --opset {MIN_OPSET}") from err


def _disk_cause(err: BaseException) -> OSError | None:
    """The disk OSError behind an exporter error (the exporter wraps it), or None."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
            return err
        err = err.__cause__ or err.__context__
        seen += 1
    return None


# --------------------------------------------------------------------------- fp16


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute with fp32 (or uint8) inputs and outputs, for GPU providers."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with quiet():
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    model = _toposort(model)  # the converter appends its input Casts at the end of the node list
    props = {p.key: p.value for p in model.metadata_props}
    props[META_PREFIX + "precision"] = "fp16"
    set_props(model, props)
    onnx.save(model, str(dst))


def _toposort(model: Any) -> Any:
    """``model`` with its nodes in topological order (onnx_ir's stable sort pass)."""
    import onnx_ir as ir
    from onnx_ir.passes.common import TopologicalSortPass

    try:
        ir_model = ir.from_proto(model)
        TopologicalSortPass()(ir_model)
        return ir.to_proto(ir_model)
    except Exception as err:  # a cycle or a dangling input: onnx_ir's errors vary by version
        raise MedzooError(
            f"the fp16 graph cannot be ordered ({type(err).__name__}); export fp32 instead"
        ) from None


def check_graph(path: Path) -> None:
    """``onnx.checker`` with full shape inference; its complaint becomes a one-line error."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise MedzooError(
            f"onnx.checker rejected {path.name}: {str(err).strip().splitlines()[0]}"
        ) from err


# --------------------------------------------------------------------------- the export


@dataclass
class ExportData:
    """Images the export checks with: parity (test), int8 calibration (train) and agreement."""

    test_images: np.ndarray | None = None
    train_images: np.ndarray | None = None
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None  # the int8 gate of a classifier scores on these
    probes: list[ProbeCheck] = field(default_factory=list)  # a backbone's linear-probe entries


# long: the export is one transaction: each check runs in order inside the temp-folder try/finally
def export_module(
    model: Any,
    meta: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    opset: int = MIN_OPSET,
    fp16: bool = False,
    int8: bool = False,
    include_preprocessing: bool = False,
    data: ExportData | None = None,
    gate: Int8Gate | None = None,
) -> ExportResult:
    """Export a torch ``model`` described by ``meta`` (see :func:`entry_metadata`) to ``out_dir``.

    Checks, then writes atomically: everything is built in a temporary folder beside ``out_dir``
    and moved in only after every check passed; on any failure nothing is written.
    """
    import onnx
    import torch

    data = data or ExportData()
    check_opset(opset)
    if int8 and (data.test_images is None or data.train_images is None):
        raise MedzooError("--int8 needs calibration data: pass --data-root ROOT (a MIMeta root)")
    if int8 and meta["num_classes"] and data.test_labels is None:
        raise MedzooError("--int8 of a classifier needs the labelled test split of its dataset")
    gate = gate or Int8Gate()
    out_dir = Path(out_dir)
    ensure_writable_dir(out_dir, what="the export folder")
    model = model.eval().float()
    module = (
        _with_preprocessing(model, meta["mean"], meta["std"]) if include_preprocessing else model
    )
    example = random_images(meta["input_size"], EXAMPLE_BATCH, seed=1)
    inputs = ParityInputs(
        random=random_images(meta["input_size"], 8, seed=2),
        real=None
        if data.test_images is None
        else data.test_images[_spread(len(data.test_images), PARITY_REAL_IMAGES)],
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        path = tmp / MODEL_FILE
        _torch_export(
            module, torch.from_numpy(model_input(example, meta, include_preprocessing)), path, opset
        )
        proto = onnx.load(str(path))
        set_props(
            proto, model_props(meta, precision="fp32", include_preprocessing=include_preprocessing)
        )
        onnx.save(proto, str(path))
        del proto
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except onnx.checker.ValidationError as err:
            raise MedzooError(
                f"onnx.checker rejected the export: {str(err).splitlines()[0]}"
            ) from err
        log.info("export %s: fp32 graph written and checked (opset %d)", meta["name"], opset)
        files = {"fp32": MODEL_FILE}
        parity = {
            "fp32": check_parity(
                module,
                path,
                meta,
                inputs,
                precision="fp32",
                include_preprocessing=include_preprocessing,
            )
        }
        _log_parity(meta["name"], "fp32", parity["fp32"])
        if fp16:
            convert_fp16(path, tmp / FP16_FILE)
            check_graph(tmp / FP16_FILE)
            parity["fp16"] = check_parity(
                module,
                tmp / FP16_FILE,
                meta,
                inputs,
                precision="fp16",
                include_preprocessing=include_preprocessing,
            )
            if data.test_images is not None and (
                data.test_labels is not None or not meta["num_classes"]
            ):
                # the task-metric gate int8 passes, on the whole labelled test split
                check = score_int8(
                    path, tmp / FP16_FILE, meta, data.test_images, data.test_labels,
                    include_preprocessing, gate, data.probes, precision="fp16",
                )  # fmt: skip
                parity["fp16"]["gate"] = check
                if not check["passed"]:
                    raise MedzooError(
                        f"{meta['name']} fp16 export failed its gate on {check['images']} test "
                        f"images: {check['reason']}; nothing written (use the fp32 export)"
                    )
            files["fp16"] = FP16_FILE
            _log_parity(meta["name"], "fp16", parity["fp16"])
        agreement = None
        if int8:
            calibration = data.train_images[_spread(len(data.train_images), CALIBRATION_IMAGES)]
            check = search_int8(
                path, tmp / INT8_FILE, meta, calibration=calibration,
                test_images=data.test_images, test_labels=data.test_labels,
                include_preprocessing=include_preprocessing, gate=gate, probes=data.probes,
            )  # fmt: skip
            parity["int8"] = check
            agreement = check.get("top1_agreement")
            if not check["passed"]:
                raise MedzooError(
                    f"{meta['name']} int8 export failed its gate on {check['images']} test "
                    f"images: best of {len(check['trials'])} candidates: {check['reason']}; "
                    "nothing written (use the fp32 or fp16 export, or loosen "
                    "--max-accuracy-drop / --min-cosine)"
                )
            files["int8"] = INT8_FILE
            log.info("export %s: int8 passed its gate (%s)", meta["name"], check.get("reason", ""))
        requested = files.get("int8") or files.get("fp16") or MODEL_FILE
        result = ExportResult(
            name=meta["name"],
            out_dir=out_dir,
            path=out_dir / requested,
            files=files,
            opset=opset,
            include_preprocessing=include_preprocessing,
            parity=parity,
            int8_agreement=agreement,
            metadata=read_metadata(path),
        )
        from medzoo.provenance import provenance

        digests = {}  # what predict, bench and anything else verify before running a file
        for file_name in files.values():
            digests[file_name] = file_sha256(tmp / file_name)
            sidecar_path(tmp / file_name).write_text(
                sidecar_text(file_name, digests[file_name]), "utf-8"
            )
        report = {**result.to_dict(), "sha256": digests, "provenance": provenance()}
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
        sidecars = [sidecar_path(name).name for name in files.values()]
        _move_in(tmp, out_dir, [*files.values(), *sidecars, REPORT_FILE])
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _log_parity(name: str, precision: str, check: Mapping[str, Any]) -> None:
    """One progress line per export step (the ``medzoo`` program shows them; ``--quiet`` not)."""
    log.info(
        "export %s: %s parity max abs %.2e, rel %.2e on %s images",
        name, precision, check.get("max_abs", float("nan")), check.get("max_rel", float("nan")),
        check.get("images", "?"),
    )  # fmt: skip


def _spread(n: int, k: int) -> np.ndarray:
    """``k`` indices spread evenly over ``range(n)`` (all of them if ``n <= k``)."""
    return (
        np.unique(np.linspace(0, n - 1, num=min(n, k)).round().astype(int))
        if n
        else np.zeros(0, int)
    )


def _move_in(tmp: Path, out_dir: Path, names: Sequence[str]) -> None:
    """Rename each checked file into ``out_dir`` (same file system: each rename is atomic).

    Precision files of an earlier export that this one did not produce are removed, so the
    folder never mixes files from two sets of weights.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (MODEL_FILE, FP16_FILE, INT8_FILE):
        for file_name in (stale, sidecar_path(stale).name):
            if file_name not in names:
                (out_dir / file_name).unlink(missing_ok=True)
    for name in names:
        with open(tmp / name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp / name, out_dir / name)


def check_opset(opset: int) -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise MedzooError(
            f"--opset {opset} is not supported: use {MIN_OPSET} to {newest} (default {MIN_OPSET})"
        )


def default_export_dir(name: str) -> Path:
    """``exports/NAME`` (relative to the working directory, like every medzoo output)."""
    from medzoo.zoo.entry import validate_name

    return Path("exports") / validate_name(name)


# --------------------------------------------------------------------------- by zoo name


def _dataset_ids(root: Path, meta: Mapping[str, Any]) -> list[str]:
    """The entry's datasets if it names them, else every dataset in ``root`` with its channels."""
    from medzoo.data.mimeta import KNOWN_DATASETS, list_datasets

    present = list_datasets(root)
    if meta.get("datasets"):
        return [d for d in meta["datasets"] if d in present]
    return [
        d for d in present if d in KNOWN_DATASETS and KNOWN_DATASETS[d].channels == meta["in_chans"]
    ]


def load_images(
    root: Path, meta: Mapping[str, Any], split: str, *, required: bool
) -> tuple[np.ndarray, np.ndarray] | None:
    """uint8 images and labels of ``split`` of the entry's datasets at its input size."""
    from medzoo.data.mimeta import load_split

    ids = _dataset_ids(root, meta) if root.is_dir() else []
    if not ids:
        if required:
            wanted = (
                ", ".join(meta.get("datasets") or []) or f"a {meta['in_chans']}-channel dataset"
            )
            raise MedzooError(
                f"{root} holds none of {wanted}; pass --calibration-data with the MIMeta root {meta['name']} was trained on"
            )
        return None
    images, labels = [], []
    for dataset_id in ids:
        split_data = load_split(root, dataset_id, split, image_size=int(meta["input_size"][-1]))
        if split_data.channels != meta["in_chans"]:
            raise MedzooError(
                f"{dataset_id} has {split_data.channels} channel(s) but {meta['name']} takes {meta['in_chans']}"
            )
        images.append(np.asarray(split_data.images.numpy()))
        labels.append(split_data.labels.numpy())
    return np.concatenate(images), np.concatenate(labels)


# long: argument checks and data loading before the export transaction, read top to bottom
def export_model(
    name: str,
    out: str | os.PathLike[str] | None = None,
    *,
    opset: int = MIN_OPSET,
    fp16: bool = False,
    int8: bool = False,
    calibration_root: str | os.PathLike[str] | None = None,
    include_preprocessing: bool = False,
    data_root: str | os.PathLike[str] | None = None,
    gate: Int8Gate | None = None,
) -> ExportResult:
    """Export zoo model ``name`` to ``out/model.onnx`` (default ``exports/NAME/``), verified.

    Args:
        name: a zoo name (``medzoo list``).
        out: the output folder.
        opset: ONNX opset, 18 or newer.
        fp16: also write ``model_fp16.onnx`` (parity tolerance 1e-2).
        int8: also write ``model_int8.onnx``, calibrated on the train split under
            ``calibration_root`` and kept only if it passes ``gate`` on its test split.
        calibration_root: the MIMeta root for int8 calibration (required with ``int8``).
        include_preprocessing: the graph takes uint8 pixels and normalises them itself.
        data_root: a MIMeta root whose test images join the parity check (default: ``--data-root``
            / ``MEDZOO_DATA`` / ``data/mimeta`` when it holds the entry's datasets).
        gate: the int8 gate (default :class:`~medzoo.export.int8.Int8Gate`: balanced accuracy
            drops <= 1 point; backbones: embedding cosine >= 0.99).
    """
    from medzoo.config import data_root as resolve_root
    from medzoo.zoo.index import load, model_info

    check_opset(opset)
    entry = model_info(name)
    out_dir = Path(out) if out is not None else default_export_dir(name)
    ensure_writable_dir(out_dir, what="the export folder")  # before the export, not after it
    if int8 and calibration_root is None:
        raise MedzooError(
            "--int8 needs calibration images: add --data-root ROOT (a MIMeta root with the model's datasets)"
        )
    if int8 and not Path(calibration_root).is_dir():
        raise MedzooError(
            f"--int8 needs calibration images from the data root {calibration_root}, which does not exist; pass "
            "--data-root ROOT (a MIMeta root with the model's datasets) or set MEDZOO_DATA"
        )
    meta = entry_metadata(entry)
    data = ExportData()
    if int8:
        root = Path(calibration_root)
        data.train_images, data.train_labels = load_images(root, meta, "train", required=True)
        data.test_images, data.test_labels = load_images(root, meta, "test", required=True)
        if not meta["num_classes"]:
            data.probes = probe_checks(name, root)
    else:
        found = load_images(resolve_root(data_root), meta, "test", required=data_root is not None)
        if found is not None:
            # all of them: parity takes a spread of 64, the fp16 gate scores the whole split
            data.test_images, data.test_labels = found
            if not meta["num_classes"]:
                data.test_labels = None  # several datasets' label spaces: no labels of its own
                if fp16:
                    data.probes = probe_checks(name, resolve_root(data_root))
    model = load(name)
    return export_module(
        model,
        meta,
        out_dir,
        opset=opset,
        fp16=fp16,
        int8=int8,
        include_preprocessing=include_preprocessing,
        data=data,
        gate=gate,
    )


def probe_checks(backbone: str, root: Path) -> list[ProbeCheck]:
    """The linear-probe entries trained on ``backbone`` whose test split is under ``root``."""
    from medzoo.zoo.index import list_models, load, model_info

    checks = []
    for name in list_models():
        entry = model_info(name)
        if entry.base_model != backbone or entry.method != "linear-probe":
            continue
        found = load_images(root, entry_metadata(entry), "test", required=False)
        if found is None:
            continue
        head = load(name).get_classifier()
        checks.append(
            ProbeCheck(
                name=name,
                weight=head.weight.detach().numpy().astype(np.float32),
                bias=head.bias.detach().numpy().astype(np.float32),
                images=found[0],
                labels=found[1],
                label_names=tuple(entry.label_names),
            )
        )
    return checks
