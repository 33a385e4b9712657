"""What every consumer of an exported model shares: file names, metadata, sessions, inputs.

The ONNX export (:mod:`medzoo.export.onnx`), its checks (:mod:`~medzoo.export.parity`,
:mod:`~medzoo.export.int8`), the benchmark and ``medzoo predict`` all read and run exported files
through these helpers; this module imports none of them, so the export package has no circles.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medzoo.errors import MedzooError

MODEL_FILE = "model.onnx"
FP16_FILE = "model_fp16.onnx"
INT8_FILE = "model_int8.onnx"
REPORT_FILE = "export.json"
INPUT_NAME = "input"
OUTPUT_NAME = "output"
META_PREFIX = "medzoo."
SHA256_SUFFIX = ".sha256"  # model.onnx.sha256 beside model.onnx: `sha256sum -c` reads it


# --------------------------------------------------------------------------- integrity
#
# The sha256 of every exported file is recorded at export time, in export.json ("sha256") and in
# a sidecar beside the file; whatever runs an exported file verifies it first, so an edited graph
# or weight (same metadata, other numbers) is refused instead of run.


def file_sha256(path: str | os.PathLike[str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(path.name + SHA256_SUFFIX)


def sidecar_text(path: str | os.PathLike[str], sha256: str) -> str:
    return f"{sha256}  {Path(path).name}\n"


def recorded_sha256(path: str | os.PathLike[str]) -> list[str]:
    """Every sha256 recorded for exported file ``path`` (its sidecar, then export.json)."""
    import json

    path = Path(path)
    found = []
    with contextlib.suppress(OSError, UnicodeDecodeError, IndexError):
        found.append(sidecar_path(path).read_text("utf-8").split()[0].lower())
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        report = json.loads((path.parent / REPORT_FILE).read_text("utf-8"))
        value = report["sha256"].get(path.name) if isinstance(report.get("sha256"), dict) else None
        if isinstance(value, str):
            found.append(value.lower())
    return found


def verify_onnx(path: str | os.PathLike[str]) -> str:
    """Refuse, in one line, an exported file whose bytes differ from what the export recorded.

    Returns the sha256. A file without any record (made by hand, or by an older medzoo) is
    refused too: it cannot be told apart from an edited one.
    """
    path = Path(path)
    records = recorded_sha256(path)
    if not records:
        raise MedzooError(
            f"{path} has no recorded sha256 ({sidecar_path(path).name} or {REPORT_FILE}), so it "
            "cannot be verified: re-export it with `medzoo export NAME`"
        )
    try:
        actual = file_sha256(path)
    except OSError as err:
        raise MedzooError(f"cannot read {path}: {err.strerror or err}") from None
    if any(record != actual for record in records):
        raise MedzooError(
            f"{path} was changed after export: its sha256 {actual[:12]}... does not match the "
            f"recorded {records[0][:12]}...; re-export it with `medzoo export NAME`"
        )
    return actual


# --------------------------------------------------------------------------- metadata


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``medzoo.*`` metadata of an exported file, without the prefix."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # truncated or foreign file: protobuf's DecodeError, OSError
        raise MedzooError(
            f"{path} is not a readable ONNX file ({type(err).__name__}): re-export it with "
            "`medzoo export NAME`"
        ) from None
    return {
        p.key[len(META_PREFIX) :]: p.value
        for p in model.metadata_props
        if p.key.startswith(META_PREFIX)
    }


def set_props(model: Any, props: Mapping[str, str]) -> Any:
    """Write ``props`` into ``model.metadata_props`` (a seam the parity tests break on purpose)."""
    import onnx

    onnx.helper.set_model_props(model, dict(props))
    model.doc_string = f"medzoo export of {props.get(META_PREFIX + 'name', '?')}"
    return model


# --------------------------------------------------------------------------- inputs


def normalize(images: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """uint8 ``[N, C, H, W]`` -> float32 ``(x / 255 - mean) / std`` (what the zoo models expect)."""
    import torch

    x = torch.as_tensor(images).float().div(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


def model_input(
    images: np.ndarray, meta: Mapping[str, Any], include_preprocessing: bool
) -> np.ndarray:
    if include_preprocessing:
        return np.ascontiguousarray(images)
    return normalize(images, meta["mean"], meta["std"]).numpy()


# --------------------------------------------------------------------------- onnxruntime


# Packages whose chatter an export hides. onnxruntime.quantization logs its advice with the
# module-level logging.warning(), i.e. through the root logger, so its records are recognised by
# the file they come from rather than by a logger name.
QUIET_PACKAGES = ("onnxruntime", "onnxscript", "onnx_ir", "torch/onnx", "torch\\onnx")
QUIET_LOGGERS = ("onnxruntime", "onnxscript", "onnx_ir", "onnx", "torch.onnx")


class _DropExporterRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        return not any(part in record.pathname for part in QUIET_PACKAGES)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hide the exporter's and onnxruntime's warnings and info records (errors still show).

    Scoped to those packages: their own loggers go to ERROR for the duration, and a filter on the
    root logger drops only the records onnxruntime.quantization logs there; other loggers, the
    root logger's level and ``sys.stdout`` are left alone.
    """
    drop = _DropExporterRecords()
    root = logging.getLogger()
    named = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in named]
    root.addFilter(drop)  # only onnxruntime's records, which it logs on the root logger
    for logger in named:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for package in QUIET_LOGGERS:
                warnings.filterwarnings("ignore", module=package.replace(".", r"\.") + r"(\.|$)")
            yield
    finally:
        root.removeFilter(drop)
        for logger, level in zip(named, levels):
            logger.setLevel(level)


def cpu_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An onnxruntime CPU session (quiet: warnings only at error level)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:
        first = str(err).strip().splitlines()[0]
        raise MedzooError(
            f"onnxruntime {ort.__version__} cannot load {Path(path).name}: {first}"
        ) from err


def run_session(session: Any, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    name = session.get_inputs()[0].name
    outs = [
        session.run(None, {name: inputs[i : i + batch_size]})[0]
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(outs).astype(np.float32)
