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


def timm_config(entry: ZooEntry, num_features: int) -> dict[str, Any]:
    """The ``config.json`` timm reads from a ``local-dir:`` folder or an ``hf-hub:`` repository."""
    pretrained_cfg: dict[str, Any] = {
        "input_size": list(entry.input_size),
        "interpolation": entry.interpolation,
        "crop_pct": entry.crop_pct,
        "crop_mode": "center",
        "mean": list(entry.mean),
        "std": list(entry.std),
        "num_classes": entry.num_classes,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": entry.license,
    }
    config: dict[str, Any] = {
        "architecture": entry.arch,
        "num_classes": entry.num_classes,
        "num_features": num_features,
        "global_pool": "avg",
        # timm passes model_args to the model constructor: this is what makes in_chans=1 load
        "model_args": {"in_chans": entry.in_chans},
    }
    if entry.label_names:
        config["label_names"] = list(entry.label_names)  # timm moves it into pretrained_cfg
    config["pretrained_cfg"] = pretrained_cfg
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
