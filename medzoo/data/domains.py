"""Named domains: the datasets a backbone is pre-trained on, and their augmentation preset.

``liver`` is the three CT views of the organs datasets concatenated (one label space, one
channel), ``crc`` the colorectal histology dataset. Any single dataset id is a domain of one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from medzoo.data.mimeta import (
    KNOWN_DATASETS,
    SplitData,
    check_root,
    list_datasets,
    load_plans,
    plan_read,
)
from medzoo.errors import MedzooError

DOMAINS: dict[str, tuple[str, ...]] = {
    "liver": ("organs_axial", "organs_coronal", "organs_sagittal"),
    "crc": ("crc",),
}

# what the augmentation may do to a domain's images (see medzoo.data.augment)
_PRESETS = {"liver": "ct", "crc": "histology"}


def resolve_domain(name: str, root: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """The dataset ids of domain ``name``; a dataset id (known, or present in ``root``) is a
    domain of one."""
    if name in DOMAINS:
        return DOMAINS[name]
    if name in KNOWN_DATASETS:
        return (name,)
    if root is not None and Path(root, name, "info.yaml").is_file():
        return (name,)
    choices = sorted(set(DOMAINS) | set(KNOWN_DATASETS))
    raise MedzooError(f"unknown domain '{name}'; use one of {', '.join(choices)}")


def domain_preset(name: str) -> str:
    """``"ct"`` (no horizontal flip, no hue jitter) or ``"histology"`` for domain ``name``."""
    if name in _PRESETS:
        return _PRESETS[name]
    if name.startswith("organs_"):  # any CT organ view: left/right organs are distinct classes
        return "ct"
    raise MedzooError(
        f"no augmentation preset for domain '{name}'; use one of "
        f"{', '.join(sorted(set(DOMAINS) | set(KNOWN_DATASETS)))}"
    )


def load_domain(
    root: str | os.PathLike[str],
    name: str,
    splits: str | Sequence[str],
    *,
    image_size: int | None = None,
    memory_budget_gb: float = 8.0,
    task: str | None = None,
    cache: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> SplitData:
    """The splits of every dataset in domain ``name``, concatenated in the domain's order.

    All datasets are checked (metadata, labels, split files) before any image is read; the
    memory budget applies to the whole domain.
    """
    root_path = check_root(root)
    ids = resolve_domain(name, root_path)
    missing = [d for d in ids if not (root_path / d / "info.yaml").is_file()]
    if missing:
        there = ", ".join(list_datasets(root_path)) or "none"
        raise MedzooError(
            f"domain '{name}' needs {', '.join(missing)}, not found in {root_path} (datasets "
            f"there: {there}); fetch with `medzoo data fetch {' '.join(missing)} --data-root {root_path}`"
        )
    plans = [plan_read(root_path, dataset_id, splits, task) for dataset_id in ids]
    return load_plans(
        plans, image_size=image_size, memory_budget_gb=memory_budget_gb, cache=cache,
        progress=progress,
    )  # fmt: skip
