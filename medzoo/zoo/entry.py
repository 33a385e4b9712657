"""ZooEntry: one frozen record of a model's weights, preprocessing and provenance.

An entry is what ``medzoo.model_info(name)`` returns, what the local registry stores (as JSON)
and what the top-level ``"medzoo"`` block of an entry folder's ``config.json`` holds. Like timm's
``PretrainedCfg`` it is data, not code: fields are grouped below (identity, input, head,
provenance, publishing) and every field has a default except the name, so the pre-training loop
and evaluation can build one with only what they know.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from medzoo.errors import MedzooError

METHODS = ("barlow-twins", "imagenet", "random", "fine-tuned", "linear-probe")

# Lowercase letters, digits, '-', '_', '.'; starts with a letter or digit so that no name can be
# '.', '..' or a hidden file, and no name carries a path separator.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid zoo name, else raise a one-line :class:`MedzooError`."""
    if not isinstance(name, str) or not name:
        raise MedzooError("a zoo model name must be a non-empty string, e.g. bt-crc-r18")
    if "/" in name or "\\" in name or ".." in name or not _NAME_RE.match(name) or len(name) > 96:
        raise MedzooError(
            f"invalid zoo model name {name!r}: use lowercase letters, digits, '-', '_' and '.' "
            "(no path separators, no '..'), e.g. bt-crc-r18"
        )
    return name


@dataclass(frozen=True)
class ZooEntry:
    """One model in the zoo. ``num_classes == 0`` means a backbone (pooled features)."""

    # identity
    name: str
    arch: str = "resnet18"  # timm architecture
    method: str = "barlow-twins"  # one of METHODS
    domain: str | None = None  # liver, crc, ... (None for ImageNet / random)
    datasets: tuple[str, ...] = ()  # MIMeta dataset ids the weights were trained on
    task: str | None = None  # classifiers: the MIMeta task (e.g. "tissue class")
    base_model: str | None = None  # classifiers: the zoo name or Hub id they were trained from

    # input / preprocessing (what timm's pretrained_cfg carries)
    in_chans: int = 3
    input_size: tuple[int, int, int] | None = None  # (C, H, W); None: (in_chans, 224, 224)
    mean: tuple[float, ...] | None = None  # None: ImageNet statistics (averaged for 1 channel)
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"
    crop_pct: float = 1.0  # MIMeta images are already 224 px and centred: no centre crop

    # head
    num_classes: int = 0
    label_names: tuple[str, ...] = ()

    # provenance
    recipe: dict[str, Any] | str | None = None  # the resolved recipe (dict or TOML text)
    recipe_file: str | None = None  # catalog: the recipe in the repository that makes it
    make_target: str | None = None  # catalog: e.g. "make pretrain-crc"
    timm_name: str | None = None  # weights that come from timm itself, e.g. resnet18.tv_in1k
    sha256: str | None = None  # of model.safetensors
    metrics: dict[str, Any] = field(default_factory=dict)  # written back by evaluation
    license: str = "apache-2.0"
    created: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None

    # publishing
    hub_repo_id: str | None = None
    hub_revision: str | None = None

    def __post_init__(self) -> None:
        from medzoo.config import default_mean_std

        validate_name(self.name)
        if self.method not in METHODS:
            raise MedzooError(
                f"zoo entry {self.name}: method {self.method!r} is not one of {', '.join(METHODS)}"
            )
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "datasets", tuple(self.datasets))
        set_(self, "label_names", tuple(str(n) for n in self.label_names))
        in_chans = int(self.in_chans)
        set_(self, "in_chans", in_chans)
        size = tuple(int(v) for v in (self.input_size or (in_chans, 224, 224)))
        if len(size) != 3 or size[0] != in_chans:
            raise MedzooError(
                f"zoo entry {self.name}: input_size {size} must be (C, H, W) with C = in_chans {in_chans}"
            )
        set_(self, "input_size", size)
        default_mean, default_std = default_mean_std(in_chans)
        for key, default in (("mean", default_mean), ("std", default_std)):
            value = tuple(float(v) for v in (getattr(self, key) or default))
            if len(value) != in_chans:
                raise MedzooError(
                    f"zoo entry {self.name}: {key} has {len(value)} values for {in_chans} channel(s)"
                )
            set_(self, key, value)
        if self.num_classes < 0:
            raise MedzooError(f"zoo entry {self.name}: num_classes must be >= 0 (0 for a backbone)")
        if self.label_names and len(self.label_names) != self.num_classes:
            raise MedzooError(
                f"zoo entry {self.name}: {len(self.label_names)} label names for "
                f"{self.num_classes} classes"
            )
        set_(self, "metrics", dict(self.metrics or {}))
        set_(self, "versions", dict(self.versions or {}))

    @property
    def is_backbone(self) -> bool:
        return self.num_classes == 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists); :meth:`from_dict` inverts it."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZooEntry:
        """Build an entry from :meth:`to_dict` output; unknown keys are errors."""
        if not isinstance(data, dict):
            raise MedzooError("a zoo entry must be a JSON/TOML table")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise MedzooError(f"unknown zoo entry field {key!r}{hint}")
        if "name" not in data:
            raise MedzooError("a zoo entry has no 'name'")
        return cls(**data)

    def replace(self, **changes: Any) -> ZooEntry:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- the entry folder
#
# An entry folder is exactly what timm loads with ``timm.create_model("local-dir:PATH")`` and what
# is uploaded to the Hub: config.json + model.safetensors (+ README.md). timm builds a
# ``PretrainedCfg(**config["pretrained_cfg"])``, so an unknown key in there is a TypeError: medzoo's
# own record goes at the top level, under "medzoo", which timm ignores.

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl", ".pickle", ".tar")


# Papers behind each kind of weights, as timm's PretrainedCfg records them (``paper_ids``).
_RESNET_PAPER = ("Deep Residual Learning for Image Recognition", "arXiv:1512.03385")
_BARLOW_TWINS_PAPER = (
    "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
    "arXiv:2103.03230",
)
# The PretrainedCfg fields that say where weights come from: timm's save_config_for_hf drops them
# from config.json (the folder or repository is the source).
SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "tag")


def adapt_stats(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    """Mean/std for ``in_chans`` channels: as given, else their average repeated (as timm does)."""
    if len(values) == in_chans:
        return values
    return (sum(values) / len(values),) * in_chans


def pretrained_cfg(
    entry: ZooEntry, *, in_chans: int | None = None, num_classes: int | None = None
) -> dict[str, Any]:
    """The entry's own timm ``PretrainedCfg``, every field set from the entry.

    Nothing is inherited from a timm default tag (``resnet18.a1_in1k`` would bring a 288 px test
    size, its licence and its paper): a field the entry does not set is ``None``, so
    ``timm.data.resolve_model_data_config(model, use_test_size=True)`` gives the entry's own size,
    channels, mean and std. ``in_chans`` / ``num_classes`` describe a model adapted from the entry
    (conv1 adapted, a new head); label names are kept only for the entry's own head.
    """
    chans = entry.in_chans if in_chans is None else int(in_chans)
    classes = entry.num_classes if num_classes is None else int(num_classes)
    height, width = entry.input_size[1:]
    paper_name, paper_id = (
        _BARLOW_TWINS_PAPER if entry.method == "barlow-twins" or entry.domain else _RESNET_PAPER
    )
    return {
        "url": None,
        "file": None,
        "state_dict": None,
        "hf_hub_id": entry.hub_repo_id,
        "hf_hub_filename": None,
        "source": "medzoo",
        "architecture": entry.arch,
        "tag": None,
        "custom_load": False,
        # input: what data_config / create_transform read
        "input_size": (chans, height, width),
        "test_input_size": None,  # no separate test resolution: evaluate at input_size
        "min_input_size": None,
        "fixed_input_size": False,
        "interpolation": entry.interpolation,
        "crop_pct": entry.crop_pct,
        "test_crop_pct": None,
        "crop_mode": "center",
        "mean": adapt_stats(entry.mean, chans),
        "std": adapt_stats(entry.std, chans),
        # head
        "num_classes": classes,
        "label_offset": None,
        "label_names": entry.label_names
        if entry.label_names and classes == entry.num_classes
        else None,
        "label_descriptions": None,
        # architecture facts timm's ResNet reports (stride 32)
        "pool_size": (max(1, height // 32), max(1, width // 32)),
        "test_pool_size": None,
        "first_conv": "conv1",
        "classifier": "fc",
        # provenance
        "license": entry.license,
        "description": _description(entry),
        "origin_url": f"https://huggingface.co/{entry.hub_repo_id}" if entry.hub_repo_id else None,
        "paper_name": paper_name,
        "paper_ids": paper_id,
        "notes": None,
    }


def _description(entry: ZooEntry) -> str:
    what = {
        "barlow-twins": "Barlow Twins self-supervised backbone",
        "imagenet": "ImageNet-1k supervised weights",
        "random": "seeded random initialisation",
        "fine-tuned": "fine-tuned classifier",
        "linear-probe": "linear-probe classifier",
    }[entry.method]
    on = f" on MIMeta {', '.join(entry.datasets)}" if entry.datasets else ""
    task = f" ({entry.task})" if entry.task else ""
    return f"medzoo {entry.name}: {entry.arch} {what}{on}{task}"


def timm_config(entry: ZooEntry, num_features: int) -> dict[str, Any]:
    """The ``config.json`` timm reads from a ``local-dir:`` folder or an ``hf-hub:`` repository.

    The same schema ``timm.models.save_config_for_hf`` writes (tested against it): source fields
    and ``None`` values dropped from ``pretrained_cfg``, ``architecture``, ``num_classes``,
    ``num_features``, ``global_pool`` and ``model_args`` at the top level, ``label_names`` inside
    ``pretrained_cfg``.
    """
    cfg = pretrained_cfg(entry)
    config: dict[str, Any] = {
        "architecture": cfg.pop("architecture"),
        "num_classes": entry.num_classes,
        "num_features": num_features,
        "global_pool": "avg",
    }
    # timm passes model_args to the model constructor: this is what makes in_chans=1 load
    config["model_args"] = {
        "global_pool": "avg",
        "in_chans": entry.in_chans,
        "num_classes": entry.num_classes,
    }
    config["pretrained_cfg"] = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in cfg.items()
        if key not in SOURCE_KEYS and value is not None
    }
    config["medzoo"] = entry.to_dict()
    return config


def sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def refuse_pickles(folder: Any) -> None:
    """A folder that offers pickle weights but no safetensors is refused, never unpickled."""
    from pathlib import Path

    folder = Path(folder)
    if (folder / WEIGHTS_FILE).is_file():
        return
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise MedzooError(
            f"{folder} offers {pickles[0]} but no {WEIGHTS_FILE}: medzoo loads weights only from "
            "safetensors (pickle files can run code); convert it with safetensors.torch.save_file"
        )
    raise MedzooError(f"no {WEIGHTS_FILE} in {folder}: the folder is not a zoo entry")


def read_weights(path: Any, expected_sha256: str | None, *, what: str = "") -> dict[str, Any]:
    """Read a safetensors file, checking its sha256 BEFORE parsing it.

    The bytes are read once, hashed, then parsed from memory, so the file that is checked is the
    file that is loaded. A mismatch, a pickle in disguise, or a corrupt or truncated file is a
    :class:`MedzooError`, never a crash.
    """
    from pathlib import Path

    import safetensors.torch

    path = Path(path)
    label = what or str(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise MedzooError(f"cannot read the weights of {label} ({err.strerror}): {path}") from None
    if expected_sha256 is not None:
        digest = sha256_bytes(data)
        if digest != expected_sha256:
            raise MedzooError(
                f"sha256 mismatch for {label}: {path} has {digest[:16]}..., the zoo entry expects "
                f"{expected_sha256[:16]}...; the file was corrupted or replaced, so it is not "
                "loaded (re-create or re-download it)"
            )
    # torch.save writes a zip (PK) or a raw pickle (0x80): say so rather than "invalid header"
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise MedzooError(
            f"{path} is a pickle file, not safetensors: medzoo refuses to unpickle weights "
            "(pickles can run code); convert it with safetensors.torch.save_file"
        )
    try:
        return safetensors.torch.load(data)
    except Exception as err:  # the parser's errors are not a stable API; any failure is bad data
        raise MedzooError(
            f"{path} is not a valid safetensors file ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'unreadable'}); it may be truncated: "
            "re-create or re-download it"
        ) from None


def num_features(arch: str) -> int:
    """The pooled feature width of timm architecture ``arch`` (built on the meta device)."""
    import timm
    import torch

    with torch.device("meta"):  # no memory, no init: only the attribute is wanted
        return int(timm.create_model(arch, pretrained=False, num_classes=0).num_features)


def model_stats(entry: ZooEntry) -> dict[str, float]:
    """Parameters (millions) and GMACs at the entry's input size, as timm's cards list them.

    Counted on the meta device (no memory, no weights) with ``torch.utils.flop_counter``, which
    counts convolutions and matrix products: MACs = FLOPs / 2.
    """
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = timm.create_model(
            entry.arch, pretrained=False, num_classes=entry.num_classes, in_chans=entry.in_chans
        ).eval()
        x = torch.empty(1, *entry.input_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    params = sum(p.numel() for p in model.parameters())
    return {"params_m": params / 1e6, "gmacs": counter.get_total_flops() / 2 / 1e9}
