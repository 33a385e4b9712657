"""Named domains: the datasets a backbone is pre-trained on, and their augmentation preset.

``liver`` is the three CT views of the organs datasets concatenated (one label space, one
channel), ``crc`` the colorectal histology dataset. Any single dataset id is a domain of one.

The augmentation preset follows a dataset's imaging modality, the ``domain`` field of its
``info.yaml`` (:func:`modality_preset`): grayscale radiology (CT, MRI, X-ray, mammography,
ultrasound, OCT) gets ``ct`` (no flips, no turns: laterality and anatomy carry labels), histology
and other microscopy ``histology`` (flips and 90-degree turns: tissue has no orientation),
dermatology ``dermatology`` (the same geometric freedom, colour photographs), fundus photography
``fundus`` (colour, but no flips or turns: the optic disc's side tells the left eye from the
right). A recipe's ``augment.preset`` overrides it.
"""

from __future__ import annotations

import os
import re
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


# (preset, pattern over the lower-cased info.yaml ``domain``), first match wins; radiology first
# so that "retinal OCT" is a grayscale scan and not a fundus photograph
_MODALITY_RULES: tuple[tuple[str, str], ...] = (
    (
        "ct",
        r"\bct\b|computed tomograph|\bmri?\b|magnetic resonance|x-?ray|radiograph|mammo"
        r"|ultrasound|sonograph|\boct\b|optical coherence|angiograph|\bpet\b|radiolog",
    ),
    ("fundus", r"fundus|retina|ophthalm"),
    ("histology", r"histo|patholog|microscop|cytolog|blood|hematolog|haematolog|\bcells?\b"),
    ("dermatology", r"derm|skin|lesion|clinical photo"),
)


def modality_preset(modality: str) -> str | None:
    """The augmentation preset for an ``info.yaml`` ``domain`` string, or None if unrecognised."""
    text = str(modality).lower()
    for preset, pattern in _MODALITY_RULES:
        if re.search(pattern, text):
            return preset
    return None


def domain_preset(name: str, root: str | os.PathLike[str] | None = None) -> str:
    """The augmentation preset of domain (or dataset) ``name``.

    Named domains and the datasets medzoo knows come from tables; any other dataset from the
    ``domain`` field of its ``info.yaml`` in ``root`` (default: ``$MEDZOO_DATA``).
    """
    if name in _PRESETS:
        return _PRESETS[name]
    if name.startswith("organs_"):  # any CT organ view: left/right organs are distinct classes
        return "ct"
    if name in KNOWN_DATASETS:
        found = modality_preset(KNOWN_DATASETS[name].domain)
        if found:
            return found
    from medzoo.config import data_root

    info_path = data_root(root) / name / "info.yaml"
    if not info_path.is_file():
        raise MedzooError(
            f"no augmentation preset for domain '{name}': it is not a named domain and "
            f"{info_path} does not exist; pass --data-root or set augment.preset"
        )
    from medzoo.data.mimeta import read_info

    modality = read_info(info_path.parent.parent, name)["domain"]
    found = modality_preset(modality)
    if found is None:
        raise MedzooError(
            f"no augmentation preset for {name}'s modality '{modality}'; set augment.preset to "
            "ct, histology, dermatology or fundus in the recipe"
        )
    return found


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


def load_subset(
    root: str | os.PathLike[str],
    dataset_id: str,
    split: str,
    count: int,
    seed: int,
    image_size: int | None = None,
) -> SplitData:
    """A stratified, seeded subset of about ``count`` images of one split (the monitor's sets).

    Only the chosen rows are read, so a subset of crc's 85,000 training images costs what its
    size does.
    """
    import dataclasses

    from medzoo.data.fractions import label_fraction_indices

    plan = plan_read(check_root(root), dataset_id, split, None)
    if len(plan.rows) == 0:
        raise MedzooError(f"split '{split}' of {dataset_id} is empty")
    fraction = min(1.0, max(count, 1) / len(plan.rows))
    keep = label_fraction_indices(plan.labels, fraction, seed)
    plan = dataclasses.replace(plan, rows=plan.rows[keep], labels=plan.labels[keep])
    return load_plans([plan], image_size=image_size, memory_budget_gb=float("inf"))
