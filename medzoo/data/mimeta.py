"""The MIMeta on-disk format, read fast: metadata, split indices, labels and uint8 images.

A MIMeta root holds one folder per dataset::

    ROOT/<id>/info.yaml              name, id, domain, input_size, tasks (labels per task), sizes
    ROOT/<id>/images.hdf5            dataset ``images``: N x H x W (grayscale) or N x H x W x 3
    ROOT/<id>/task_labels/<task>.npy one label per HDF5 row
    ROOT/<id>/splits/<split>.txt     lines ``images/000123.tiff``; the number is the HDF5 row
    ROOT/<id>/original_splits/...    the splits of the source publication, same format

The ``mimeta`` package reads this one image at a time through PIL. Here a split is read with one
HDF5 read per run of consecutive rows, straight from the page cache into one uint8 array laid out
as stored (``[N, H, W, C]``) and handed out as its ``[N, C, H, W]`` channels_last view; it is
resized in batches on the way if asked, and lands in a memory map instead of RAM when it is
larger than the memory budget. Every file is checked before any pixel is read. Split indices are parsed exactly as ``mimeta`` parses them
(``int(line.split("/")[-1].split(".")[0])``, sorted, duplicates kept), so both agree row by row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medzoo.errors import MedzooError


@dataclasses.dataclass(frozen=True)
class KnownDataset:
    """What medzoo knows about a MIMeta dataset before reading its ``info.yaml``.

    Names, labels and sizes are those of the published MedIMeta v1.0 ``info.yaml`` files.
    """

    name: str  # the ``name`` field of the real info.yaml
    task: str  # the task medzoo uses (MIMeta datasets may carry several)
    class_names: tuple[str, ...]
    channels: int
    domain: str  # the ``domain`` field of the real info.yaml
    split_sizes: tuple[int, int, int]  # train, val, test of the real release
    original_split_sizes: tuple[int, int, int]  # train, val, test of the source publication


_TISSUE = (
    "adipose (ADI)",
    "background (BACK)",
    "debris (DEB)",
    "lymphocytes (LYM)",
    "mucus (MUC)",
    "smooth muscle (MUS)",
    "normal colon mucosa (NORM)",
    "cancer-associated stroma (STR)",
    "colorectal adenocarcinoma epithelium (TUM)",
)
_ORGANS = (
    "heart",
    "left lung",
    "right lung",
    "liver",
    "spleen",
    "pancreas",
    "left kidney",
    "right kidney",
    "bladder",
    "left femoral head",
    "right femoral head",
)

KNOWN_DATASETS: dict[str, KnownDataset] = {
    "crc": KnownDataset(
        "Colorectal Cancer Histopathology",
        "tissue class",
        _TISSUE,
        3,
        "Histopathology",
        (85_000, 15_000, 7_180),
        (100_000, 7_180, 0),  # NCT-CRC-HE-100K, and CRC-VAL-HE-7K as "val"
    ),
    **{
        f"organs_{view}": KnownDataset(
            f"{view.capitalize()} Organ Slices",
            "organ label",
            _ORGANS,
            1,
            "Abdominal CT",
            (871, 156, 618),
            (1_027, 0, 618),
        )
        for view in ("axial", "coronal", "sagittal")
    },
}

SPLITS = ("train", "val", "test")
REQUIRED_INFO_KEYS = ("name", "id", "domain", "input_size", "tasks")
REQUIRED_TASK_KEYS = ("task_name", "task_target", "labels")
CLASSIFICATION_TARGETS = ("MULTICLASS_CLASSIFICATION", "BINARY_CLASSIFICATION")


@dataclasses.dataclass(frozen=True)
class SplitData:
    """One or more splits of one or more datasets as uint8 images and int64 labels.

    Attributes:
        images: uint8 ``[N, C, H, W]`` in channels_last layout (a view of the pixels as stored,
            ``[N, H, W, C]``); may be backed by a memory map.
        labels: int64 ``[N]``.
        class_names: the task's class names, index = label.
        task: the task name (``tissue class``, ``organ label``).
        dataset_ids: the datasets the rows come from, in order.
        indices: int64 ``[N]``, the HDF5 row of each image within its dataset.
        dataset_index: int64 ``[N]``, position in ``dataset_ids`` of each row's dataset.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    task: str
    dataset_ids: tuple[str, ...]
    indices: torch.Tensor
    dataset_index: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


# ------------------------------------------------------------------------------- metadata


def check_root(root: str | os.PathLike[str]) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise MedzooError(
            f"MIMeta data root {root} does not exist; download with `medzoo data fetch DATASET "
            f"--data-root {root}`, make synthetic data with `medzoo data synth {root}`, or pass "
            "--data-root / set MEDZOO_DATA"
        )
    return root


def list_datasets(root: str | os.PathLike[str]) -> list[str]:
    """Ids of the datasets under ``root`` (folders holding an ``info.yaml``), sorted."""
    root = check_root(root)
    return sorted(p.name for p in root.iterdir() if (p / "info.yaml").is_file())


def dataset_dir(root: str | os.PathLike[str], dataset_id: str) -> Path:
    """The folder of ``dataset_id``; a MedzooError listing what exists when it is absent."""
    root = check_root(root)
    folder = root / dataset_id
    if not (folder / "info.yaml").is_file():
        available = list_datasets(root)
        known = ", ".join(available) if available else "none"
        raise MedzooError(
            f"dataset '{dataset_id}' not found in {root} (datasets there: {known}); "
            f"fetch it with `medzoo data fetch {dataset_id} --data-root {root}`"
        )
    return folder


def read_info(root: str | os.PathLike[str], dataset_id: str) -> dict[str, Any]:
    """The parsed ``info.yaml`` of ``dataset_id``, checked for the keys medzoo and mimeta need."""
    import yaml

    path = dataset_dir(root, dataset_id) / "info.yaml"
    try:
        info = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0]
        raise MedzooError(f"{path} is not valid YAML ({reason}); re-download the dataset") from None
    if not isinstance(info, dict):
        raise MedzooError(f"{path} is not a YAML mapping; re-download the dataset")
    missing = [key for key in REQUIRED_INFO_KEYS if key not in info]
    if missing:
        raise MedzooError(
            f"{path} lacks the key(s) {', '.join(missing)}; re-download the dataset or "
            "regenerate it with `medzoo data synth`"
        )
    if not isinstance(info["tasks"], list) or not info["tasks"]:
        raise MedzooError(f"{path}: 'tasks' must be a non-empty list; re-download the dataset")
    for number, task in enumerate(info["tasks"]):
        lacking = [k for k in REQUIRED_TASK_KEYS if not isinstance(task, dict) or k not in task]
        if lacking:
            raise MedzooError(
                f"{path}: task {number} lacks the key(s) {', '.join(lacking)}; re-download the dataset"
            )
    size = info["input_size"]
    if not (isinstance(size, list) and len(size) == 3 and size[0] in (1, 3)):
        raise MedzooError(
            f"{path}: input_size must be [channels, height, width] with 1 or 3 channels, got {size!r}"
        )
    return info


def task_info(info: dict[str, Any], task: str | None = None) -> dict[str, Any]:
    """The entry of ``info['tasks']`` for ``task`` (default: the known task, else the first)."""
    tasks = info["tasks"]
    if task is None:
        known = KNOWN_DATASETS.get(str(info["id"]))
        names = [t["task_name"] for t in tasks]
        task = known.task if known is not None and known.task in names else names[0]
    for entry in tasks:
        if entry["task_name"] == task:
            if entry["task_target"] not in CLASSIFICATION_TARGETS:
                raise MedzooError(
                    f"task '{task}' of {info['id']} is {entry['task_target']}; medzoo handles "
                    "single-label classification tasks only, choose another task"
                )
            return entry
    names = ", ".join(repr(t["task_name"]) for t in tasks)
    raise MedzooError(f"dataset {info['id']} has no task '{task}'; its tasks: {names}")


def class_names(entry: dict[str, Any]) -> tuple[str, ...]:
    """Class names from a task's ``labels`` (a mapping index -> name, or a list)."""
    labels = entry["labels"]
    if isinstance(labels, dict):
        return tuple(str(labels[k]) for k in sorted(labels, key=int))
    return tuple(str(name) for name in labels)


def split_indices(
    root: str | os.PathLike[str],
    dataset_id: str,
    splits: str | Sequence[str],
    *,
    original: bool = False,
) -> np.ndarray:
    """Sorted HDF5 rows of ``splits``, parsed as ``mimeta`` parses them (duplicates kept)."""
    folder = dataset_dir(root, dataset_id) / ("original_splits" if original else "splits")
    names = [splits] if isinstance(splits, str) else list(splits)
    if not names:
        raise MedzooError(f"no split named for {dataset_id}; use one of train, val, test")
    rows: list[int] = []
    for name in names:
        path = folder / f"{name}.txt"
        if not path.is_file():
            there = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
            raise MedzooError(
                f"split '{name}' not found for {dataset_id} ({path} is missing); "
                f"available splits: {', '.join(there) or 'none'}"
            )
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(int(line.split("/")[-1].split(".")[0]))
            except ValueError:
                raise MedzooError(
                    f"{path}:{number}: '{line}' is not like images/000123.tiff; "
                    "re-download the dataset"
                ) from None
    return np.sort(np.asarray(rows, dtype=np.int64), kind="stable")


def read_labels(root: str | os.PathLike[str], dataset_id: str, task: str) -> np.ndarray:
    """All labels of ``task`` (one per HDF5 row) as int64."""
    path = dataset_dir(root, dataset_id) / "task_labels" / f"{task}.npy"
    if not path.is_file():
        raise MedzooError(f"labels file {path} is missing; re-download {dataset_id}")
    try:
        labels = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise MedzooError(
            f"{path} is not a readable .npy file ({err}); re-download {dataset_id}"
        ) from None
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise MedzooError(
            f"{path} holds {labels.dtype} labels of shape {labels.shape}; expected one integer "
            "class per image"
        )
    return labels.astype(np.int64)


# ---------------------------------------------------------------------------------- images


@dataclasses.dataclass(frozen=True)
class ReadPlan:
    """Everything checked about one dataset's split before a byte of image data is read."""

    dataset_id: str
    hdf5: Path
    rows: np.ndarray  # sorted HDF5 rows
    labels: np.ndarray  # labels of ``rows``
    class_names: tuple[str, ...]
    task: str
    channels: int  # channels of the output (info.yaml's input_size[0])
    stored_channels: int  # channels in the HDF5 file
    height: int
    width: int


def plan_read(
    root: Path, dataset_id: str, splits: str | Sequence[str], task: str | None
) -> ReadPlan:
    import h5py

    info = read_info(root, dataset_id)
    entry = task_info(info, task)
    names = class_names(entry)
    rows = split_indices(root, dataset_id, splits)
    all_labels = read_labels(root, dataset_id, entry["task_name"])
    hdf5 = dataset_dir(root, dataset_id) / "images.hdf5"
    if not hdf5.is_file():
        raise MedzooError(f"{hdf5} is missing; re-download {dataset_id}")
    try:
        with h5py.File(hdf5, "r") as handle:
            if "images" not in handle:
                raise MedzooError(f"{hdf5} has no dataset 'images'; re-download {dataset_id}")
            shape, dtype = handle["images"].shape, handle["images"].dtype
    except OSError as err:
        raise MedzooError(
            f"{hdf5} is not a readable HDF5 file ({err}); re-download {dataset_id}"
        ) from None
    if dtype != np.uint8:
        raise MedzooError(f"{hdf5}: images are {dtype}, expected uint8; re-download {dataset_id}")
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3))):
        raise MedzooError(
            f"{hdf5}: images have shape {shape}, expected N x H x W or N x H x W x 3; "
            f"re-download {dataset_id}"
        )
    declared = tuple(int(v) for v in info["input_size"][1:])
    if tuple(shape[1:3]) != declared:
        raise MedzooError(
            f"{hdf5}: images are {shape[1]}x{shape[2]} but info.yaml's input_size says "
            f"{declared[0]}x{declared[1]}; re-download {dataset_id}"
        )
    count = shape[0]
    if len(all_labels) != count:
        raise MedzooError(
            f"{dataset_id}: task_labels/{entry['task_name']}.npy has {len(all_labels)} labels but "
            f"images.hdf5 has {count} images; re-download {dataset_id}"
        )
    if rows.size and (rows[0] < 0 or rows[-1] >= count):
        bad = int(rows[-1] if rows[-1] >= count else rows[0])
        raise MedzooError(
            f"{dataset_id}: split {splits!r} names image {bad} but images.hdf5 has rows 0..{count - 1}; "
            f"re-download {dataset_id}"
        )
    labels = all_labels[rows]
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise MedzooError(
            f"{dataset_id}: labels outside 0..{len(names) - 1} for the {len(names)} classes of "
            f"'{entry['task_name']}'; re-download {dataset_id}"
        )
    stored = 1 if len(shape) == 3 else shape[3]
    return ReadPlan(
        dataset_id, hdf5, rows, labels, names, entry["task_name"], int(info["input_size"][0]),
        stored, shape[1], shape[2],
    )  # fmt: skip


def _convert_channels(block: np.ndarray, plan: ReadPlan) -> np.ndarray:
    """``[b, H, W(, c)]`` as stored -> ``[b, H, W, C]`` with the channels info.yaml declares,
    by the one channel rule (:func:`medzoo.data.channels.convert_channels`)."""
    from medzoo.data.channels import convert_channels

    if block.ndim == 3:
        block = block[..., None]
    if block.shape[-1] == plan.channels:
        return block
    nchw = torch.from_numpy(np.ascontiguousarray(block)).permute(0, 3, 1, 2)
    return convert_channels(nchw, plan.channels).permute(0, 2, 3, 1).numpy()


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize of a uint8 ``[b, C, H, W]`` batch to ``size`` x ``size``."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    resized = torch.nn.functional.interpolate(
        images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end positions of the runs of consecutive HDF5 rows in sorted ``rows``."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return np.concatenate([[0], breaks]), np.concatenate([breaks, [len(rows)]])


def _read_into(dataset: Any, rows: np.ndarray, dest: np.ndarray) -> None:
    """Read sorted ``rows`` into ``dest`` (C-contiguous, as stored) with one read per run.

    A contiguous HDF5 dataset read with matching dtype goes from the page cache straight into
    ``dest``: one copy per byte, no per-image Python objects.
    """
    for start, end in zip(*_runs(rows)):
        first = int(rows[start])
        dataset.read_direct(
            dest, source_sel=np.s_[first : first + (end - start)], dest_sel=np.s_[start:end]
        )


def _fill(
    plan: ReadPlan, out: np.ndarray, offset: int, image_size: int | None, progress: Any
) -> None:
    """Read ``plan``'s rows into ``out[offset:offset + n]`` (``[N, H, W, C]``) in ~64 MiB chunks."""
    import h5py

    direct = plan.stored_channels == plan.channels and image_size in (None, plan.height)
    stored_shape = (plan.height, plan.width) + (
        (plan.stored_channels,) if plan.stored_channels > 1 else ()
    )
    chunk = max(1, min(8192, (64 << 20) // max(1, int(np.prod(stored_shape)))))
    buffer = None if direct else np.empty((min(chunk, len(plan.rows)), *stored_shape), np.uint8)
    with h5py.File(plan.hdf5, "r") as handle:
        dataset = handle["images"]
        for start in range(0, len(plan.rows), chunk):
            rows = plan.rows[start : start + chunk]
            begin, stop = offset + start, offset + start + len(rows)
            if direct:
                target = out[begin:stop]
                _read_into(dataset, rows, target.reshape(len(rows), *stored_shape))
            else:
                block = buffer[: len(rows)]
                _read_into(dataset, rows, block)
                block = _convert_channels(block, plan)
                if image_size is not None:
                    nchw = torch.from_numpy(block).permute(0, 3, 1, 2)
                    block = resize_uint8(nchw, image_size).permute(0, 2, 3, 1).numpy()
                out[begin:stop] = block
            if progress is not None:
                progress.update(len(rows))


def cache_dir() -> Path:
    """Where memory-mapped splits live: ``$MEDZOO_HOME/cache/data``."""
    from medzoo.config import medzoo_home

    return medzoo_home() / "cache" / "data"


def _cache_key(plans: Sequence[ReadPlan], shape: tuple[int, ...]) -> str:
    """A name that changes whenever the source files, the rows or the output shape change."""
    digest = hashlib.sha256(repr(shape).encode())
    for plan in plans:
        stat = plan.hdf5.stat()
        digest.update(f"{plan.hdf5.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        digest.update(plan.rows.tobytes())
    ids = "+".join(plan.dataset_id for plan in plans)
    return f"{ids}-{shape[1]}px-{digest.hexdigest()[:16]}"


def load_plans(
    plans: Sequence[ReadPlan],
    *,
    image_size: int | None,
    memory_budget_gb: float,
    cache: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> SplitData:
    """Read planned splits into one SplitData, in RAM or (above the budget) in a memory map.

    The pixels are kept as stored, ``[N, H, W, C]``, and ``images`` is the ``[N, C, H, W]``
    view of them: a channels_last tensor, which is what the model wants on the device anyway,
    and which saves a transposing copy of the whole split.
    """
    first = plans[0]
    for plan in plans[1:]:
        if plan.class_names != first.class_names or plan.channels != first.channels:
            raise MedzooError(
                f"{plan.dataset_id} and {first.dataset_id} do not share classes and channels; "
                "they cannot form one domain"
            )
        if image_size is None and (plan.height, plan.width) != (first.height, first.width):
            raise MedzooError(
                f"{plan.dataset_id} and {first.dataset_id} have different image sizes; "
                "set an image_size to resize them alike"
            )
    if image_size is not None and image_size < 1:
        raise MedzooError(f"image_size {image_size} must be a positive number of pixels")
    height, width = (image_size, image_size) if image_size else (first.height, first.width)
    total = sum(len(plan.rows) for plan in plans)
    shape = (total, height, width, first.channels)
    nbytes = int(np.prod(shape, dtype=np.int64))
    if memory_budget_gb is not None and nbytes > memory_budget_gb * 1e9:
        out = _memmap(plans, shape, cache, image_size, progress)
    else:
        out = np.empty(shape, dtype=np.uint8)
        _fill_all(plans, out, image_size, progress, nbytes)
    dataset_index = np.repeat(np.arange(len(plans)), [len(plan.rows) for plan in plans])
    return SplitData(
        images=torch.from_numpy(out).permute(0, 3, 1, 2),
        labels=torch.from_numpy(np.concatenate([plan.labels for plan in plans])),
        class_names=first.class_names,
        task=first.task,
        dataset_ids=tuple(plan.dataset_id for plan in plans),
        indices=torch.from_numpy(np.concatenate([plan.rows for plan in plans])),
        dataset_index=torch.from_numpy(dataset_index.astype(np.int64)),
    )


def _fill_all(
    plans: Sequence[ReadPlan],
    out: np.ndarray,
    image_size: int | None,
    progress: bool | None,
    nbytes: int,
) -> None:
    bar = None
    # a bar only for reads long enough to wonder about (~1 GB); tqdm hides itself off a terminal
    if progress or (progress is None and nbytes > 1e9):
        from tqdm.auto import tqdm

        ids = "+".join(plan.dataset_id for plan in plans)
        bar = tqdm(total=len(out), desc=f"reading {ids}", unit="img", disable=None)
    offset = 0
    try:
        for plan in plans:
            _fill(plan, out, offset, image_size, bar)
            offset += len(plan.rows)
    finally:
        if bar is not None:
            bar.close()


def _memmap(
    plans: Sequence[ReadPlan],
    shape: tuple[int, ...],
    cache: str | os.PathLike[str] | None,
    image_size: int | None,
    progress: bool | None,
) -> np.ndarray:
    """A memory map of the split in the cache, written once (atomically) and reused after."""
    folder = Path(cache) if cache is not None else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{_cache_key(plans, shape)}.u8"
    if not (target.is_file() and target.stat().st_size == int(np.prod(shape, dtype=np.int64))):
        from medzoo.provenance import atomic_path

        with atomic_path(target) as tmp:
            out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
            _fill_all(plans, out, image_size, progress, out.nbytes)
            out.flush()
            del out
    # copy-on-write: a writable array for torch, while the cache file itself never changes
    return np.memmap(target, dtype=np.uint8, mode="c", shape=shape)


def load_split(
    root: str | os.PathLike[str],
    dataset_id: str,
    split: str | Sequence[str],
    *,
    task: str | None = None,
    image_size: int | None = None,
    memory_budget_gb: float = 8.0,
    cache: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> SplitData:
    """One dataset's split (or several splits, concatenated) as uint8 images and labels.

    Args:
        root: the MIMeta root.
        dataset_id: e.g. ``crc``, ``organs_axial``.
        split: ``train``, ``val``, ``test`` or a list of them (rows sorted, as mimeta does).
        task: the task whose labels to load (default: the dataset's medzoo task).
        image_size: resize to this square size (bilinear, antialiased) while reading.
        memory_budget_gb: above this many GB the images go to a memory map in ``cache``.
        cache: folder for memory maps (default ``$MEDZOO_HOME/cache/data``).
        progress: a tqdm bar (None: only for reads above ~1 GB on a terminal).
    """
    plan = plan_read(check_root(root), dataset_id, split, task)
    return load_plans(
        [plan], image_size=image_size, memory_budget_gb=memory_budget_gb, cache=cache,
        progress=progress,
    )  # fmt: skip


def describe(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per dataset under ``root``: task, classes, split sizes, image size, channels."""
    import h5py

    rows = []
    for dataset_id in list_datasets(root):
        info = read_info(root, dataset_id)
        entry = task_info(info)
        sizes = {}
        for split in SPLITS:
            path = Path(root) / dataset_id / "splits" / f"{split}.txt"
            sizes[split] = len(split_indices(root, dataset_id, split)) if path.is_file() else 0
        hdf5 = Path(root) / dataset_id / "images.hdf5"
        shape = None
        if hdf5.is_file():
            with h5py.File(hdf5, "r") as handle:
                shape = handle["images"].shape if "images" in handle else None
        rows.append(
            {
                "dataset": dataset_id,
                "task": entry["task_name"],
                "classes": len(class_names(entry)),
                **sizes,
                "image_size": f"{shape[1]}x{shape[2]}" if shape else "missing",
                "channels": int(info["input_size"][0]),
                "modality": str(info["domain"]),
                "images": int(shape[0]) if shape else 0,
                "synthetic": bool(info.get("synthetic", False)),
            }
        )
    return rows
