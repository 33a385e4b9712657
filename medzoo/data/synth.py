"""Synthetic MIMeta datasets in the real on-disk format, learnable rather than noise.

``crc`` (RGB, 9 tissue classes): each class is a texture family in H&E-like colours, defined by
statistics that survive rotation and flips (as real tissue does): background and nucleus colour,
nucleus density and size, and the strength and frequency of fibre-like stripes whose
orientation is random per image. Within a class every image differs in stain colour, density,
blob positions, stripe phase and angle, and noise.

``organs_axial``, ``organs_coronal``, ``organs_sagittal`` (grayscale, 11 organ classes): a CT-like
slice, a body outline with a spine, the labelled organ drawn at full contrast with its own shape
and position, and two other organs faintly as distractors. Each ``left *`` organ is the mirror
image of its ``right *`` twin (x -> 1 - x, angle -> -angle) and everything else is left-right
symmetric in distribution, so a horizontal flip turns one class into the other: a flip
augmentation measurably hurts, as it does on the real data.

Any other dataset id (``derm``, ``my_xray``) is written from a spec, :func:`synth_spec`: a number
of classes, channels and an ``info.yaml`` domain (modality). RGB ids reuse the tissue texture
families (up to 9 classes), grayscale ids the axial organ shapes (up to 11 classes), so every
synthetic dataset is learnable and flows through pre-training and evaluation like a real one.

Generation is vectorised numpy, deterministic for a seed, and each dataset is written into a
temporary folder and renamed into place, so a crash leaves no half dataset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medzoo.data.mimeta import KNOWN_DATASETS, KnownDataset
from medzoo.errors import MedzooError

SYNTHETIC_DATASETS = ("crc", "organs_axial", "organs_coronal", "organs_sagittal")
_MARKER = "synthetic"  # info.yaml key that marks a dataset as ours (safe to overwrite)

# ------------------------------------------------------------------------------ tissue (crc)
# background RGB, nucleus RGB, nuclei per image area, nucleus radius (fraction of the image),
# stripe amplitude, stripe frequency (cycles per image width)
_TISSUE_SPECS = np.array(
    [
        # bg r, g, b     nucleus r, g, b   density radius  stripe  freq
        [0.95, 0.92, 0.95, 0.86, 0.55, 0.75, 25, 0.012, 0.10, 6],  # adipose
        [0.86, 0.85, 0.87, 0.78, 0.78, 0.80, 3, 0.080, 0.00, 1],  # background
        [0.85, 0.55, 0.68, 0.55, 0.30, 0.55, 40, 0.025, 0.03, 3],  # debris
        [0.72, 0.55, 0.75, 0.22, 0.10, 0.42, 420, 0.018, 0.00, 1],  # lymphocytes
        [0.78, 0.72, 0.88, 0.68, 0.60, 0.86, 6, 0.100, 0.07, 2],  # mucus
        [0.88, 0.42, 0.60, 0.45, 0.22, 0.52, 30, 0.015, 0.24, 10],  # smooth muscle
        [0.90, 0.63, 0.76, 0.34, 0.20, 0.60, 120, 0.022, 0.12, 4],  # normal colon mucosa
        [0.93, 0.68, 0.78, 0.52, 0.30, 0.62, 18, 0.014, 0.16, 16],  # cancer-associated stroma
        [
            0.78,
            0.50,
            0.70,
            0.30,
            0.14,
            0.50,
            160,
            0.035,
            0.00,
            1,
        ],  # colorectal adenocarcinoma epithelium
    ],
    dtype=np.float32,
)


def _tissue_images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, size, size, 3]`` uint8 H&E-like textures for tissue classes ``labels``."""
    n = len(labels)
    spec = _TISSUE_SPECS[labels]
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    ys, xs = coords[:, None], coords[None, :]
    # stain variation: one colour shift per image, shared by background and nuclei
    # (strong enough that colour alone does not give the class away: texture has to count)
    stain = rng.normal(0.0, 0.06, (n, 1, 3)).astype(np.float32)
    background = spec[:, None, 0:3] + stain + rng.normal(0, 0.015, (n, 1, 3)).astype(np.float32)
    nucleus = spec[:, None, 3:6] + stain + rng.normal(0, 0.015, (n, 1, 3)).astype(np.float32)
    # nuclei: Poisson points per unit area, blurred to blobs (Gaussian transfer function in FFT)
    density = spec[:, 6] * rng.uniform(0.6, 1.4, n).astype(np.float32)
    points = rng.random((n, size, size), dtype=np.float32) < (density / size**2)[:, None, None]
    sigma = spec[:, 7] * size * rng.uniform(0.8, 1.2, n).astype(np.float32)
    freq_y = np.fft.fftfreq(size).astype(np.float32)[:, None]
    freq_x = np.fft.rfftfreq(size).astype(np.float32)[None, :]
    transfer = np.exp(-2 * np.pi**2 * sigma[:, None, None] ** 2 * (freq_y**2 + freq_x**2))
    blobs = np.fft.irfft2(np.fft.rfft2(points) * transfer, s=(size, size)).astype(np.float32)
    blobs *= (2 * np.pi * np.maximum(sigma, 0.5) ** 2)[:, None, None]  # a lone blob peaks at ~1
    coverage = 1.0 - np.exp(-2.0 * np.clip(blobs, 0, None))  # overlapping nuclei saturate
    # fibres: a sine grating of random orientation and phase
    angle = rng.uniform(0, np.pi, n).astype(np.float32)[:, None, None]
    freq = spec[:, 9] * rng.uniform(0.85, 1.15, n).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    wave = np.sin(
        2 * np.pi * freq[:, None, None] * (xs * np.cos(angle) + ys * np.sin(angle)) + phase
    )
    stripes = (spec[:, 8] * rng.uniform(0.8, 1.2, n).astype(np.float32))[:, None, None] * wave
    image = background[:, :, None, :] + (nucleus - background)[:, :, None, :] * coverage[..., None]
    image = image - 0.5 * stripes[..., None] * np.array([0.2, 0.6, 0.4], dtype=np.float32)
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------------------- organs (CT)
# centre x, centre y (fractions of the image), half-axes a, b, angle (degrees), intensity;
# only one member of each left/right pair is listed (the patient's right lies on the image's
# left, as radiologists view CT); its twin is the mirror image
_AXIAL = {
    "heart": (0.53, 0.30, 0.14, 0.11, 25, 0.70),
    "right lung": (0.32, 0.30, 0.11, 0.16, 10, 0.10),
    "liver": (0.36, 0.40, 0.19, 0.12, -10, 0.62),
    "spleen": (0.72, 0.42, 0.07, 0.09, 30, 0.70),
    "pancreas": (0.55, 0.50, 0.13, 0.04, -15, 0.55),
    "right kidney": (0.31, 0.52, 0.06, 0.10, 20, 0.76),
    "bladder": (0.50, 0.72, 0.11, 0.08, 0, 0.85),
    "right femoral head": (0.31, 0.76, 0.065, 0.065, 0, 1.00),
}
_CORONAL = {
    "heart": (0.55, 0.26, 0.12, 0.10, 20, 0.70),
    "right lung": (0.32, 0.22, 0.11, 0.15, 0, 0.10),
    "liver": (0.35, 0.40, 0.17, 0.10, 10, 0.62),
    "spleen": (0.70, 0.40, 0.06, 0.08, -20, 0.70),
    "pancreas": (0.53, 0.52, 0.11, 0.035, -10, 0.56),
    "right kidney": (0.34, 0.56, 0.05, 0.09, 15, 0.76),
    "bladder": (0.50, 0.84, 0.09, 0.06, 0, 0.82),
    "right femoral head": (0.33, 0.88, 0.05, 0.10, 10, 1.00),
}


def _mirror_layout(half: dict[str, tuple[float, ...]]) -> dict[str, tuple[float, ...]]:
    layout = dict(half)
    for name, (x, y, a, b, angle, value) in half.items():
        if name.startswith("right "):
            layout[name.replace("right ", "left ", 1)] = (1 - x, y, a, b, -angle, value)
    return layout


def _squeeze_x(layout: dict[str, tuple[float, ...]]) -> dict[str, tuple[float, ...]]:
    """The sagittal stand-in: coronal positions pulled towards the midline, shapes taller."""
    return {
        name: (0.5 + 0.6 * (x - 0.5), 0.1 + 0.85 * y, 0.8 * a, 1.15 * b, angle, value)
        for name, (x, y, a, b, angle, value) in layout.items()
    }


_LAYOUTS = {
    "organs_axial": _mirror_layout(_AXIAL),
    "organs_coronal": _mirror_layout(_CORONAL),
    "organs_sagittal": _squeeze_x(_mirror_layout(_CORONAL)),
}


def _ellipses(params: np.ndarray, xs: np.ndarray, ys: np.ndarray, edge: float) -> np.ndarray:
    """Soft ``[n, S, S]`` masks of ellipses ``params[:, (x, y, a, b, angle_rad)]``."""
    x, y, a, b, angle = (params[:, i, None, None] for i in range(5))
    dx, dy = xs - x, ys - y
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = (dx * cos + dy * sin) / a, (-dx * sin + dy * cos) / b
    radius = np.sqrt(u * u + v * v)
    return 1.0 / (1.0 + np.exp(-np.clip((1.0 - radius) / edge, -30, 30)))


def _organ_images(
    labels: np.ndarray, size: int, rng: np.random.Generator, dataset_id: str
) -> np.ndarray:
    """``[n, size, size]`` uint8 CT-like slices for organ classes ``labels``."""
    names = KNOWN_DATASETS[dataset_id].class_names
    layout = _LAYOUTS[dataset_id]
    table = np.array([layout[name] for name in names], dtype=np.float32)
    table[:, 4] = np.deg2rad(table[:, 4])
    n = len(labels)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    ys, xs = coords[:, None], coords[None, :]
    edge = max(0.06, 1.5 / size)  # keep edges soft enough to survive 32-px sampling

    def jitter(rows: np.ndarray, scale: float) -> np.ndarray:
        params = table[rows].copy()
        params[:, 0:2] += rng.normal(0, 0.025 * scale, (len(rows), 2))
        params[:, 2:4] *= rng.uniform(1 - 0.15 * scale, 1 + 0.15 * scale, (len(rows), 2))
        params[:, 4] += rng.normal(0, np.deg2rad(8) * scale, len(rows))
        return params

    body = np.stack(
        [
            np.full(n, 0.5),
            rng.normal(0.5, 0.015, n),
            rng.uniform(0.40, 0.46, n),
            rng.uniform(0.33, 0.40, n),
            np.zeros(n),
        ],
        axis=1,
    ).astype(np.float32)
    spine = np.stack(
        [np.full(n, 0.5), rng.normal(0.64, 0.01, n), *(np.full((2, n), 0.045)), np.zeros(n)],
        axis=1,
    ).astype(np.float32)
    tissue = rng.uniform(0.32, 0.40, n).astype(np.float32)[:, None, None]
    image = 0.02 + (tissue - 0.02) * _ellipses(body, xs, ys, edge)
    image += 0.45 * _ellipses(spine, xs, ys, edge)
    # two distractor organs, faint, drawn under the labelled one
    for _ in range(2):
        other = rng.integers(0, len(names), n)
        strength = rng.uniform(0.15, 0.35, n).astype(np.float32)[:, None, None]
        value = table[other, 5][:, None, None]
        mask = _ellipses(jitter(other, 1.5), xs, ys, edge)
        image += strength * mask * (value - image)
    value = (table[labels, 5] * rng.uniform(0.92, 1.08, n)).astype(np.float32)[:, None, None]
    mask = _ellipses(jitter(labels, 1.0), xs, ys, edge)
    image += mask * (value - image)
    image += rng.normal(0, 0.04, image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------- writing


def split_counts(per_class: int) -> dict[str, int]:
    """Images per class in each split: ``per_class`` train, a fraction of it for val and test."""
    return {"train": per_class, "val": max(2, per_class // 4), "test": max(3, per_class // 2)}


# which generated splits make up each original split (the real files: crc's source test set,
# CRC-VAL-HE-7K, is its original "val"; the organs have no original val)
_ORIGINAL_SPLITS = {
    "crc": {"train": ("train", "val"), "val": ("test",), "test": ()},
    "organs": {"train": ("train", "val"), "val": (), "test": ("test",)},
}


MAX_CLASSES = {3: len(_TISSUE_SPECS), 1: 11}  # texture families (RGB), organ shapes (gray)


def synth_spec(
    dataset_id: str,
    *,
    classes: int | None = None,
    channels: int | None = None,
    domain: str | None = None,
) -> KnownDataset:
    """What to write for ``dataset_id``: the known dataset, or a generic one from the arguments.

    A generic dataset needs ``domain`` (its modality, e.g. ``Dermatoscopy``, ``Chest X-ray``);
    ``channels`` defaults to 1 for grayscale radiology and 3 otherwise, ``classes`` to 4.
    """
    import re

    from medzoo.data.domains import modality_preset

    if dataset_id in KNOWN_DATASETS:
        return KNOWN_DATASETS[dataset_id]
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", dataset_id):
        raise MedzooError(
            f"dataset id {dataset_id!r} must be letters, digits, '_', '.' or '-' (no path parts)"
        )
    if not domain:
        raise MedzooError(
            f"cannot synthesise {dataset_id} without a modality: medzoo does not know it; "
            "give the info.yaml domain with --domain "
            "(e.g. Dermatoscopy, 'Chest X-ray', Histopathology, Fundus)"
        )
    channels = channels or (1 if modality_preset(domain) == "ct" else 3)
    classes = 4 if classes is None else classes
    if channels not in MAX_CLASSES:
        raise MedzooError(f"--channels {channels} must be 1 or 3")
    if not 2 <= classes <= MAX_CLASSES[channels]:
        raise MedzooError(
            f"--classes {classes} is out of range for {channels}-channel synthetic data; "
            f"use 2 to {MAX_CLASSES[channels]}"
        )
    return KnownDataset(
        name=f"Synthetic {dataset_id}",
        task="class",
        class_names=tuple(f"class {i}" for i in range(classes)),
        channels=channels,
        domain=domain,
        split_sizes=(0, 0, 0),
        original_split_sizes=(0, 0, 0),
    )


def _original_groups(dataset_id: str) -> dict[str, tuple[str, ...]]:
    return _ORIGINAL_SPLITS["crc" if dataset_id == "crc" else "organs"]


def _info(
    dataset_id: str, size: int, counts: dict[str, int], known: KnownDataset
) -> dict[str, Any]:
    """An info.yaml with the keys of the published MedIMeta v1.0 files, marked synthetic."""
    overlaps = [d for d in SYNTHETIC_DATASETS if d.startswith("organs_") and d != dataset_id]
    if not dataset_id.startswith("organs_"):
        overlaps = []
    return {
        "id": dataset_id,
        "name": known.name,
        "summary": f"Synthetic stand-in for the MedIMeta '{dataset_id}' dataset, written by "
        "medzoo: learnable class families in the real on-disk format, not real images.",
        "domain": known.domain,
        "tasks": [
            {
                "task_name": known.task,
                "task_target": "MULTICLASS_CLASSIFICATION",
                "labels": dict(enumerate(known.class_names)),
            }
        ],
        "input_size": [known.channels, size, size],
        "total_num_samples": sum(counts.values()),
        "splits_num_samples": dict(counts),
        "original_splits_num_samples": {
            name: sum(counts[part] for part in parts)
            for name, parts in _original_groups(dataset_id).items()
        },
        "domain_overlaps": overlaps,
        "subject_overlaps": [],
        "license": "CC0 1.0 (synthetic data)",
        "project_website": "https://www.woerner.eu/projects/medimeta/",
        "download_url": None,
        _MARKER: True,
    }


def _write_split(path: Path, rows: np.ndarray) -> None:
    # as the MedIMeta writer: one "images/NNNNNN.tiff" per line, no trailing newline
    path.write_text("\n".join(f"images/{row:06d}.tiff" for row in rows), encoding="utf-8")


def _write_dataset(
    folder: Path, dataset_id: str, size: int, per_class: int, seed: int, known: KnownDataset
) -> None:
    import h5py
    import yaml

    rng = np.random.default_rng([seed, zlib.crc32(dataset_id.encode())])
    per_split = split_counts(per_class)
    num_classes = len(known.class_names)
    split_names = np.array(list(per_split))
    split_of = np.concatenate(
        [np.full(num_classes * k, i) for i, k in enumerate(per_split.values())]
    )
    labels = np.concatenate([np.tile(np.arange(num_classes), k) for k in per_split.values()])
    order = rng.permutation(len(labels))  # splits interleave in the file, as in the real data
    split_of, labels = split_of[order], labels[order].astype(np.int64)
    total = len(labels)

    shape = (total, size, size, 3) if known.channels == 3 else (total, size, size)
    batch = max(1, (32 << 20) // (size * size * 4 * known.channels))  # ~32 MiB float scratch
    with h5py.File(folder / "images.hdf5", "w") as handle:
        images = handle.create_dataset("images", shape=shape, dtype=np.uint8)
        for start in range(0, total, batch):
            rows = labels[start : start + batch]
            if known.channels == 3:
                images[start : start + len(rows)] = _tissue_images(rows, size, rng)
            else:
                layout = dataset_id if dataset_id in _LAYOUTS else "organs_axial"
                images[start : start + len(rows)] = _organ_images(rows, size, rng, layout)

    (folder / "task_labels").mkdir()
    np.save(folder / "task_labels" / f"{known.task}.npy", labels)
    (folder / "splits").mkdir()
    for index, name in enumerate(split_names):
        _write_split(folder / "splits" / f"{name}.txt", np.flatnonzero(split_of == index))
    (folder / "original_splits").mkdir()
    original_of = np.empty(total, dtype=object)
    for name, parts in _original_groups(dataset_id).items():
        members = np.isin(split_names[split_of], parts)
        original_of[members] = name
        if members.any():  # as the real files: no file for an empty original split
            _write_split(folder / "original_splits" / f"{name}.txt", np.flatnonzero(members))
    paths = [f"images/{row:06d}.tiff" for row in range(total)]
    task_column = np.asarray(known.class_names)[labels]
    lines = [f"filepath,split,tasks/{known.task},original_filepath,original_split,{known.task}"]
    lines += [
        f'{path},{split_names[s]},{label},synthetic/{path},{orig},"{name}"'
        for path, s, label, orig, name in zip(paths, split_of, labels, original_of, task_column)
    ]
    (folder / "annotations.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    counts = {name: num_classes * k for name, k in per_split.items()}
    info = _info(dataset_id, size, counts, known)
    (folder / "info.yaml").write_text(yaml.safe_dump(info, sort_keys=False), encoding="utf-8")


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an old synthetic ``target`` is swapped out, then removed."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _check_overwrite(target: Path) -> None:
    import yaml

    if not target.exists():
        return
    info_path = target / "info.yaml"
    try:
        info = (
            yaml.safe_load(info_path.read_text(encoding="utf-8")) if info_path.is_file() else None
        )
    except yaml.YAMLError:
        info = None
    if not (isinstance(info, dict) and info.get(_MARKER) is True):
        raise MedzooError(
            f"{target} exists and is not a synthetic dataset; refusing to overwrite it, "
            "choose another output folder"
        )


# long: all checks before the first byte, then one write-all-then-rename transaction
def write_synthetic(
    out: str | os.PathLike[str],
    datasets: Sequence[str] | None = None,
    *,
    size: int = 224,
    per_class: int = 50,
    seed: int = 0,
    classes: int | None = None,
    channels: int | None = None,
    domain: str | None = None,
) -> list[Path]:
    """Write synthetic MIMeta datasets under ``out``; returns their folders.

    Args:
        out: the MIMeta root to write into (created if needed).
        datasets: ids among ``crc``, ``organs_axial``, ``organs_coronal``, ``organs_sagittal``
            (default: all four), or any other id described by ``classes``, ``channels`` and
            ``domain`` (see :func:`synth_spec`).
        size: image height and width in pixels.
        per_class: training images per class; val gets ``max(2, per_class // 4)`` and test
            ``max(3, per_class // 2)`` per class.
        seed: the same seed writes the same bytes.
        classes, channels, domain: the spec of ids medzoo does not know.
    """
    ids = list(SYNTHETIC_DATASETS if datasets is None else dict.fromkeys(datasets))
    specs = {
        d: synth_spec(d, classes=classes, channels=channels, domain=domain)
        if d not in SYNTHETIC_DATASETS
        else KNOWN_DATASETS[d]
        for d in ids
    }
    if not ids:
        raise MedzooError(f"no dataset given; choose from {', '.join(SYNTHETIC_DATASETS)}")
    if not 8 <= int(size) <= 1024:
        raise MedzooError(f"--size {size} is out of range; use 8 to 1024 pixels")
    if int(per_class) < 1:
        raise MedzooError(f"--per-class {per_class} must be at least 1")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise MedzooError(f"{root} is a file; give a folder for the synthetic datasets")
    for dataset_id in ids:
        _check_overwrite(root / dataset_id)
    from medzoo.provenance import disk_error, ensure_writable_dir

    ensure_writable_dir(root, what="the synthetic data root")
    created_root = not root.exists()
    # All datasets are written to temporary folders first and renamed in only when every one is
    # complete: a full disk leaves none of them, not three of four.
    temporaries: dict[str, Path] = {}
    try:
        root.mkdir(parents=True, exist_ok=True)
        for dataset_id in ids:
            tmp = Path(tempfile.mkdtemp(prefix=f".{dataset_id}.tmp-", dir=root))
            temporaries[dataset_id] = tmp
            _write_dataset(tmp, dataset_id, int(size), int(per_class), int(seed), specs[dataset_id])
            tmp.chmod(0o755)  # mkdtemp makes 0700 folders; a dataset is meant to be shared
        for dataset_id, tmp in temporaries.items():
            _replace_dir(tmp, root / dataset_id)
    except OSError as err:
        raise disk_error(err, f"writing synthetic data to {root}") from None
    finally:
        for tmp in temporaries.values():
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if created_root and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
    return [root / dataset_id for dataset_id in ids]
