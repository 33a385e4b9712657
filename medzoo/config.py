"""Recipe schema: frozen dataclasses loaded from TOML, with strict keys and ``--set`` overrides.

A recipe is a TOML file whose tables map onto the dataclasses below. Unknown keys are errors
that name the key and the closest valid one, so a typo never silently falls back to a default.
``--set section.key=value`` overrides any value; the value is parsed as TOML (so ``1e-3``,
``true`` and ``[2048, 2048]`` work) and falls back to a plain string.

The helpers :func:`from_dict`, :func:`load_toml` and :func:`apply_overrides` are generic: the
evaluation recipe (``medzoo.evaluate``) uses them with its own dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from medzoo.errors import MedzooError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_DATA_ROOT = "data/mimeta"


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The MIMeta root: ``--data-root``, else ``MEDZOO_DATA``, else ``data/mimeta``."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("MEDZOO_DATA") or DEFAULT_DATA_ROOT)


def medzoo_home() -> Path:
    """The zoo registry, weights and caches: ``MEDZOO_HOME``, else ``~/.cache/medzoo``."""
    return Path(os.environ.get("MEDZOO_HOME") or Path.home() / ".cache" / "medzoo").expanduser()


def default_mean_std(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics; for one channel their average, as timm adapts conv1 for in_chans=1."""
    if in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    mean = sum(IMAGENET_MEAN) / 3
    std = sum(IMAGENET_STD) / 3
    return (mean,) * in_chans, (std,) * in_chans


# --------------------------------------------------------------------------- pre-training recipe


@dataclass(frozen=True)
class DataConfig:
    domain: str = "crc"  # a domain (liver, crc) or a single MIMeta dataset id
    root: str | None = None  # None: --data-root, MEDZOO_DATA or data/mimeta
    splits: tuple[str, ...] = ("train",)  # pre-training never sees test
    image_size: int = 224  # images are resized once at load time if they differ
    channels: int = 3  # must match the domain's images (crc 3, organs 1)
    memory_budget_gb: float = 8.0  # above this the split is memory-mapped instead of loaded


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet18"
    projector_dims: tuple[int, ...] = (2048, 2048, 2048)  # paper: 512 -> 2048 -> 2048 -> 2048
    in_chans: int = 3
    init: str = "random"  # random | imagenet (timm pretrained weights, if present locally)


@dataclass(frozen=True)
class LossConfig:
    lambda_offdiag: float = field(default=0.0051, metadata={"key": "lambda"})  # Barlow Twins


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"  # adam | lars | sgd
    lr: float = 3e-2  # the paper's Adam learning rate
    bias_lr: float | None = None  # LARS recipe: separate rate for biases and norm parameters
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd and lars
    exclude_bias_and_norm: bool = True  # no weight decay (and no LARS adaptation) for them
    warmup_epochs: float = 0.0
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.0  # cosine ends at lr * min_lr_ratio
    lars_trust_coeff: float = 0.001  # LARS eta


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 1000
    batch_size: int = 256  # global batch; divided across processes under DDP
    max_steps: int | None = None  # stop early (benchmarks, smoke runs)
    precision: str = (
        "auto"  # auto | bf16 | fp16 | fp32 (auto: bf16 on CUDA if supported, fp32 on CPU)
    )
    channels_last: bool = True  # on CUDA only
    compile: bool = False
    seed: int = 0
    checkpoint_every_steps: int = 500
    log_every_steps: int = 10
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass(frozen=True)
class AugmentConfig:
    """A preset plus optional overrides; None means "what the preset says"."""

    preset: str = "histology"  # histology | ct
    crop_scale: tuple[float, float] | None = None
    hflip_prob: float | None = None
    vflip_prob: float | None = None
    rotate90: bool | None = None
    color_jitter_prob: float | None = None
    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    hue: float | None = None
    grayscale_prob: float | None = None
    blur_prob: tuple[float, float] | None = None  # (view 1, view 2)
    blur_sigma: tuple[float, float] | None = None
    solarize_prob: tuple[float, float] | None = None  # (view 1, view 2)


@dataclass(frozen=True)
class PretrainConfig:
    name: str = "bt-crc-r18"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        validate_pretrain(self)


def validate_pretrain(cfg: PretrainConfig) -> None:
    def choice(value: str, allowed: tuple[str, ...], key: str) -> None:
        if value not in allowed:
            raise MedzooError(f"{key} = {value!r} is not one of {', '.join(allowed)}")

    choice(cfg.optim.name, ("adam", "lars", "sgd"), "optim.name")
    choice(cfg.optim.schedule, ("cosine", "constant"), "optim.schedule")
    choice(cfg.training.precision, ("auto", "bf16", "fp16", "fp32"), "training.precision")
    choice(cfg.augment.preset, ("histology", "ct"), "augment.preset")
    choice(cfg.model.init, ("random", "imagenet"), "model.init")
    if "test" in cfg.data.splits:
        raise MedzooError("data.splits contains 'test': pre-training never sees the test split")
    for split in cfg.data.splits:
        choice(split, ("train", "val"), "data.splits entry")
    positive = {
        "training.epochs": cfg.training.epochs,
        "training.batch_size": cfg.training.batch_size,
        "training.checkpoint_every_steps": cfg.training.checkpoint_every_steps,
        "data.image_size": cfg.data.image_size,
        "optim.lr": cfg.optim.lr,
    }
    for key, value in positive.items():
        if value <= 0:
            raise MedzooError(f"{key} = {value} must be positive")
    if cfg.training.batch_size < 2:
        raise MedzooError(
            "training.batch_size must be at least 2 (Barlow Twins normalises over the batch)"
        )
    if cfg.model.in_chans != cfg.data.channels:
        raise MedzooError(
            f"model.in_chans = {cfg.model.in_chans} but data.channels = {cfg.data.channels}: set both alike"
        )
    if not cfg.model.projector_dims:
        raise MedzooError("model.projector_dims must name at least one layer width")


# --------------------------------------------------------------------------- generic loading


def _field_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise MedzooError(f"{where} must not be empty")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise MedzooError(f"{where} must be a table ([{where}]), got {value!r}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise MedzooError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise MedzooError(f"{where} must have {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise MedzooError(f"{where} must be a table, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise MedzooError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MedzooError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MedzooError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise MedzooError(f"{where} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``data``; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    fields = {_field_key(f): f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            full = f"{where}.{key}" if where else key
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(fields)}"
            raise MedzooError(f"unknown recipe key '{full}': {hint}")
        f = fields[key]
        full = f"{where}.{key}" if where else key
        kwargs[f.name] = _coerce(value, hints[f.name], full)
    try:
        return cls(**kwargs)
    except TypeError as err:  # pragma: no cover - a required field missing
        raise MedzooError(f"recipe section '{where or 'top level'}': {err}") from None


def to_dict(obj: Any) -> Any:
    """The inverse of :func:`from_dict`, with TOML key names, for writing resolved recipes."""
    if dataclasses.is_dataclass(obj):
        return {_field_key(f): to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a raw recipe dict (a new dict is returned)."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise MedzooError(f"--set {item!r} is not of the form section.key=value")
        dotted, text = item.split("=", 1)
        parts = [p.strip() for p in dotted.strip().split(".") if p.strip()]
        if not parts:
            raise MedzooError(f"--set {item!r} names no key")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MedzooError(f"--set {item!r}: '{part}' is a value, not a section")
        node[parts[-1]] = _parse_value(text.strip())
    return data


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MedzooError(f"recipe not found: {path} (see recipes/ for the shipped recipes)")
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise MedzooError(f"recipe {path} is not valid TOML: {err}") from None


def load_recipe(
    cls: type[T], path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()
) -> T:
    """Load a recipe file into ``cls`` after applying ``--set`` overrides."""
    raw = apply_overrides(load_toml(path), overrides)
    try:
        return from_dict(cls, raw)
    except MedzooError as err:
        raise MedzooError(f"{path}: {err}") from None


def load_pretrain_config(
    path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()
) -> PretrainConfig:
    return load_recipe(PretrainConfig, path, overrides)


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_without_none(v) for v in value]
    return value


def dump_toml(data: dict[str, Any]) -> str:
    """A recipe dict as TOML (tomli_w); None values are omitted, as TOML has no null."""
    import tomli_w

    return tomli_w.dumps(_without_none(data))
