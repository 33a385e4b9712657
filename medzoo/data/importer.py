"""Your own images as a MIMeta dataset: ``medzoo data import SRC --id NAME``.

``SRC`` holds one folder per class (the folder name is the class name); inside, any mix of

- PNG, JPEG, TIFF, BMP files (one image each; 8-bit as stored, 16-bit or float only through an
  explicit intensity window);
- DICOM files (``.dcm``, or any file under a class folder that pydicom reads; optional extra
  ``medzoo[dicom]``): each frame is a 2-D slice, rescaled to its modality units (HU for CT) by
  RescaleSlope/Intercept, then windowed;
- NIfTI volumes (``.nii``, ``.nii.gz``; optional extra ``medzoo[nifti]``): reoriented to RAS,
  one axial slice per index of the last axis, windowed.

The result is written to ``ROOT/<id>`` in the MIMeta format (``info.yaml``, ``images.hdf5``,
``task_labels/<task>.npy``, ``splits/``, ``original_splits/``, ``annotations.csv``), so
pretrain, evaluate, train-head and export work on it unchanged. Images are padded to a square
with black, then resized (bilinear, antialiased) to ``size`` x ``size``: nothing is cropped away.

Splits are stratified by class and seeded, and grouped by source: all slices of one DICOM series
(a folder) or NIfTI volume land in one split, so no patient leaks from train into test.
``--splits-from DIR`` takes official splits instead (``DIR/{train,val,test}.txt``, one source
path relative to SRC per line).

Everything is read and checked before anything is written; the dataset appears by an atomic
rename. A file that cannot be read is reported with its path and either stops the import
(``on_error="fail"``, the default) or is skipped and listed in ``info.yaml``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medzoo.errors import MedzooError

LOG = logging.getLogger("medzoo")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
# (center, width) in Hounsfield units: the usual radiology display windows
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
PER_IMAGE = "per-image-minmax"  # the only way to min-max scale each image, and it says so
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Window:
    """An intensity window: values in [center - width/2, center + width/2] map to 0..255."""

    center: float
    width: float
    name: str = "custom"

    def apply(self, values: np.ndarray) -> np.ndarray:
        low = self.center - self.width / 2
        scaled = (values.astype(np.float64) - low) / self.width * 255.0
        return np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8)


def parse_window(text: str | None) -> Window | str | None:
    """``"40,400"``, a preset name, ``per-image-minmax`` or None."""
    if text is None:
        return None
    if text == PER_IMAGE:
        return PER_IMAGE
    if text in WINDOW_PRESETS:
        return Window(*WINDOW_PRESETS[text], name=text)
    try:
        center, width = (float(part) for part in text.split(","))
    except ValueError:
        raise MedzooError(
            f"--window {text!r} is not CENTER,WIDTH or one of {', '.join(WINDOW_PRESETS)}, "
            f"{PER_IMAGE}"
        ) from None
    if width <= 0:
        raise MedzooError(f"--window width {width} must be positive")
    return Window(center, width)


def parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        ratios = tuple(float(part) for part in text.split(","))
    except ValueError:
        ratios = ()
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6 or ratios[0] <= 0:
        raise MedzooError(
            f"--split-ratios {text!r} must be three non-negative numbers TRAIN,VAL,TEST summing "
            "to 1, with TRAIN > 0 (e.g. 0.7,0.1,0.2)"
        )
    return ratios  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class Source:
    """One file under SRC: its class, path relative to SRC, kind, and split group."""

    path: Path
    relative: str
    label: int
    kind: str  # image | dicom | nifti
    group: str  # slices of one group stay in one split


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    return None


def scan(src: Path) -> tuple[list[str], list[Source], list[str]]:
    """Class names, the files found, and the files of no known kind (reported, never read)."""
    if not src.is_dir():
        raise MedzooError(f"{src} is not a folder; give a folder with one subfolder per class")
    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise MedzooError(
            f"{src} has {len(classes)} class folder(s); a classification dataset needs at least "
            "two (SRC/<class>/<image files>)"
        )
    sources, unknown = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (src / name).rglob("*") if p.is_file())
        files = [p for p in files if not p.name.startswith(".")]
        for path in files:
            relative = path.relative_to(src).as_posix()
            kind = _kind(path)
            if kind is None:
                unknown.append(relative)
                continue
            # a DICOM series is a folder of files: its folder is the group
            group = path.parent.relative_to(src).as_posix() if kind == "dicom" else relative
            if kind == "dicom" and path.parent == src / name:
                group = relative  # loose DICOM files directly in the class folder
            sources.append(Source(path, relative, label, kind, group))
        if not any(s.label == label for s in sources):
            raise MedzooError(f"class folder {src / name} holds no image, DICOM or NIfTI file")
    return classes, sources, unknown


# ------------------------------------------------------------------------------ reading


def _window_values(values: np.ndarray, window: Window | str | None, what: str) -> np.ndarray:
    """Non-8-bit values -> uint8, only through the declared window."""
    if window is None:
        raise MedzooError(
            f"{what} holds {values.dtype} values (range {values.min():g}..{values.max():g}); give "
            f"--window CENTER,WIDTH or a preset ({', '.join(WINDOW_PRESETS)}), or --window "
            f"{PER_IMAGE} to scale each image to its own range"
        )
    if window == PER_IMAGE:
        low, high = float(values.min()), float(values.max())
        return Window((low + high) / 2, max(high - low, 1e-12), PER_IMAGE).apply(values)
    return window.apply(values)


def _read_image(path: Path, window: Window | str | None) -> list[np.ndarray]:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode in ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr"):
            # 8-bit files are taken as stored (a window is for values beyond 8 bits)
            if image.mode in ("1", "L", "LA"):
                return [np.asarray(image.convert("L"))]
            rgb = np.asarray(image.convert("RGB"))
            gray = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
            return [rgb[..., 0].copy() if gray else rgb]  # a gray image saved as RGB is gray
        # 16-bit and float images: the values as stored, never scaled behind the user's back
        values = np.asarray(image)
    return [_window_values(values, window, str(path))]


def _read_dicom(path: Path, window: Window | str | None) -> list[np.ndarray]:
    try:
        import pydicom
    except ImportError:
        raise MedzooError(
            "DICOM files need the optional extra: pip install 'medzoo[dicom]' (pydicom)"
        ) from None
    dataset = pydicom.dcmread(path)
    values = dataset.pixel_array.astype(np.float64)
    slope = float(getattr(dataset, "RescaleSlope", 1) or 1)
    intercept = float(getattr(dataset, "RescaleIntercept", 0) or 0)
    values = values * slope + intercept  # stored values -> modality units (HU for CT)
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        values = values.max() + values.min() - values  # MONOCHROME1: high values are dark
    frames = values if values.ndim == 3 and values.shape[-1] not in (3, 4) else values[None]
    return [_window_values(frame, window, str(path)) for frame in frames]


def _read_nifti(path: Path, window: Window | str | None) -> list[np.ndarray]:
    try:
        import nibabel
    except ImportError:
        raise MedzooError(
            "NIfTI files need the optional extra: pip install 'medzoo[nifti]' (nibabel)"
        ) from None
    volume = nibabel.as_closest_canonical(nibabel.load(path))  # RAS: last axis inferior->superior
    values = np.asarray(volume.get_fdata(dtype=np.float64))
    if values.ndim == 2:
        values = values[..., None]
    if values.ndim != 3:
        raise ValueError(f"a NIfTI volume of {values.ndim} dimensions; expected 2 or 3")
    # slice k = values[:, :, k] (x right, y anterior); rotate so anterior is up, as displayed
    return [
        _window_values(np.rot90(values[:, :, k]), window, str(path)) for k in range(values.shape[2])
    ]


_READERS = {"image": _read_image, "dicom": _read_dicom, "nifti": _read_nifti}


def _square(array: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 HxW(x3) -> ``size`` x ``size`` (x3): padded to a square with black, then resized."""
    import torch

    from medzoo.data.channels import convert_channels
    from medzoo.data.mimeta import resize_uint8

    if array.ndim == 2:
        array = array[..., None]
    height, width = array.shape[:2]
    side = max(height, width)
    padded = np.zeros((side, side, array.shape[2]), dtype=np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    padded[top : top + height, left : left + width] = array
    tensor = torch.from_numpy(padded).permute(2, 0, 1)[None]
    tensor = convert_channels(resize_uint8(tensor, size), channels)
    out = tensor[0].permute(1, 2, 0).numpy()
    return out[..., 0] if channels == 1 else out


# ------------------------------------------------------------------------------ splitting


def _split_groups(
    sources: Sequence[Source], ratios: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """group -> split, stratified by class and seeded; each class keeps >= 1 train group."""
    by_class: dict[int, list[str]] = {}
    for source in sources:
        groups = by_class.setdefault(source.label, [])
        if source.group not in groups:
            groups.append(source.group)
    assignment = {}
    for label, groups in sorted(by_class.items()):
        order = np.random.default_rng([seed, label]).permutation(len(groups))
        n = len(groups)
        n_val = int(round(ratios[1] * n))
        n_test = int(round(ratios[2] * n))
        while n_val + n_test >= n and (n_val or n_test):  # keep at least one training group
            if n_test >= n_val and n_test:
                n_test -= 1
            else:
                n_val -= 1
        for rank, index in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            assignment[groups[index]] = split
    return assignment


def _splits_from(folder: Path, sources: Sequence[Source]) -> dict[str, str]:
    """relative path -> split from ``folder/{train,val,test}.txt``."""
    if not folder.is_dir():
        raise MedzooError(
            f"--splits-from {folder} is not a folder with train.txt, val.txt, test.txt"
        )
    listed: dict[str, str] = {}
    for split in SPLITS:
        path = folder / f"{split}.txt"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                if line in listed and listed[line] != split:
                    raise MedzooError(
                        f"{line} is listed in both {listed[line]} and {split} in {folder}"
                    )
                listed[line] = split
    if "train" not in listed.values():
        raise MedzooError(f"{folder}/train.txt is missing or empty")
    missing = [s.relative for s in sources if s.relative not in listed]
    if missing:
        raise MedzooError(
            f"{len(missing)} file(s) are in no split file of {folder}, e.g. {missing[0]}; list "
            "every file (paths relative to SRC) in train.txt, val.txt or test.txt"
        )
    return listed


# ------------------------------------------------------------------------------ the import


def import_folder(
    src: str | os.PathLike[str],
    root: str | os.PathLike[str],
    dataset_id: str,
    *,
    task: str = "class",
    size: int = 224,
    channels: int | None = None,
    split_ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
    splits_from: str | os.PathLike[str] | None = None,
    domain: str | None = None,
    window: str | None = None,
    on_error: str = "fail",
    seed: int = 0,
) -> Path:
    """Import the class-per-folder tree ``src`` as MIMeta dataset ``root/dataset_id``.

    Returns the dataset folder. See the module docstring for what is read and how.
    """
    src_path, root_path = Path(src), Path(root)
    target = _check_arguments(root_path, dataset_id, size, channels, on_error)
    parsed_window = parse_window(window)
    classes, sources, unknown = scan(src_path)
    for relative in unknown:
        LOG.warning("not an image, DICOM or NIfTI file, not imported: %s", src_path / relative)
    if splits_from is not None:
        split_of_file = _splits_from(Path(splits_from), sources)
        split_of = {s.relative: split_of_file[s.relative] for s in sources}
    else:
        groups = _split_groups(sources, split_ratios, seed)
        split_of = {s.relative: groups[s.group] for s in sources}
    slices, skipped = _read_all(sources, parsed_window, on_error)
    if channels is None:  # gray unless any colour image was imported
        channels = 3 if any(array.ndim == 3 for _, array in slices) else 1
    images = np.stack([_square(array, size, channels) for _, array in slices])
    kept = [source for source, _ in slices]
    labels = np.array([s.label for s in kept], dtype=np.int64)
    splits = np.array([split_of[s.relative] for s in kept])
    empty = [c for i, c in enumerate(classes) if not np.any((labels == i) & (splits == "train"))]
    if empty:
        raise MedzooError(f"class(es) {', '.join(empty)} have no readable training image")
    info = _info(
        dataset_id, classes, task, domain, channels, size, splits, src_path, parsed_window,
        skipped, splits_from, split_ratios, seed,
    )  # fmt: skip
    _write(target, images, labels, splits, kept, classes, task, info)
    return target


def _check_arguments(
    root: Path, dataset_id: str, size: int, channels: int | None, on_error: str
) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", dataset_id):
        raise MedzooError(
            f"--id {dataset_id!r} must be letters, digits, '_', '.' or '-' (no path parts)"
        )
    if not 8 <= size <= 1024:
        raise MedzooError(f"--size {size} is out of range; use 8 to 1024 pixels")
    if channels not in (None, 1, 3):
        raise MedzooError(f"--channels {channels} must be 1 or 3")
    if on_error not in ("skip", "fail"):
        raise MedzooError(f"--on-error {on_error!r} must be skip or fail")
    if root.exists() and not root.is_dir():
        raise MedzooError(f"data root {root} is a file")
    target = root / dataset_id
    if target.exists():
        raise MedzooError(f"{target} exists; choose another --id or remove it first")
    return target


def _read_all(
    sources: Sequence[Source], window: Window | str | None, on_error: str
) -> tuple[list[tuple[Source, np.ndarray]], list[dict[str, str]]]:
    slices, skipped = [], []
    for source in sources:
        try:
            arrays = _READERS[source.kind](source.path, window)
        except MedzooError as err:
            if on_error == "fail" or "optional extra" in str(err):
                raise
            reason = str(err)
        except Exception as err:  # a corrupt or foreign file: named, then skipped or fatal
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            if on_error == "fail":
                raise MedzooError(
                    f"cannot read {source.path} ({reason}); fix or remove it, or pass "
                    "--on-error skip to leave it out"
                ) from None
        else:
            slices.extend((source, array) for array in arrays)
            continue
        LOG.warning("skipped %s: %s", source.path, reason)
        skipped.append({"path": source.relative, "reason": reason})
    if not slices:
        raise MedzooError("no file could be read; nothing to import")
    return slices, skipped


def _info(
    dataset_id, classes, task, domain, channels, size, splits, src, window, skipped, splits_from,
    ratios, seed,
) -> dict[str, Any]:  # fmt: skip
    counts = {name: int(np.sum(splits == name)) for name in SPLITS}
    if isinstance(window, Window):
        window_record: Any = {"center": window.center, "width": window.width, "name": window.name}
    else:
        window_record = window  # None (8-bit as stored) or per-image-minmax
    return {
        "id": dataset_id,
        "name": dataset_id,
        "summary": f"Imported by medzoo from {src.resolve()}",
        "domain": domain or "unspecified",
        "tasks": [
            {
                "task_name": task,
                "task_target": "BINARY_CLASSIFICATION"
                if len(classes) == 2
                else "MULTICLASS_CLASSIFICATION",
                "labels": dict(enumerate(classes)),
            }
        ],
        "input_size": [channels, size, size],
        "total_num_samples": int(len(splits)),
        "splits_num_samples": counts,
        "original_splits_num_samples": counts,
        "domain_overlaps": [],
        "subject_overlaps": [],
        "license": "as the source images",
        "download_url": None,
        "import": {
            "source": str(src.resolve()),
            "resize": f"padded to a square with black, resized to {size}x{size} (bilinear, antialiased)",
            "window": window_record,
            "splits": f"from {Path(splits_from).resolve()}"
            if splits_from
            else f"stratified by class, grouped by series/volume, ratios {list(ratios)}, seed {seed}",
            "skipped": skipped,
        },
    }


def _write(target, images, labels, splits, kept, classes, task, info) -> None:
    import h5py
    import yaml

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        with h5py.File(tmp / "images.hdf5", "w") as handle:
            handle.create_dataset("images", data=images)
        (tmp / "task_labels").mkdir()
        np.save(tmp / "task_labels" / f"{task}.npy", labels)
        for folder in ("splits", "original_splits"):
            (tmp / folder).mkdir()
            for name in SPLITS:
                rows = np.flatnonzero(splits == name)
                if rows.size or folder == "splits":
                    text = "\n".join(f"images/{row:06d}.tiff" for row in rows)
                    (tmp / folder / f"{name}.txt").write_text(text, encoding="utf-8")
        lines = [f"filepath,split,tasks/{task},original_filepath,original_split,{task}"]
        lines += [
            f'images/{row:06d}.tiff,{split},{label},"{source.relative}",{split},"{classes[label]}"'
            for row, (split, label, source) in enumerate(zip(splits, labels, kept))
        ]
        (tmp / "annotations.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp / "info.yaml").write_text(yaml.safe_dump(info, sort_keys=False), encoding="utf-8")
        tmp.chmod(0o755)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
