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
import math
import os
import re
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
    domain: str | tuple[str, ...] = "crc"  # a domain (liver, crc), a dataset id, or a list: a mix
    root: str | None = None  # None: --data-root, MEDZOO_DATA or data/mimeta
    splits: tuple[str, ...] = ("train",)  # pre-training never sees test
    image_size: int = 224  # images are resized once at load time if they differ
    channels: int = 3  # must match the domain's images (crc 3, organs 1)
    memory_budget_gb: float = 8.0  # above this the split is memory-mapped instead of loaded
    weights: tuple[float, ...] | None = (
        None  # a mix's sampling weight per domain entry (None: by size)
    )

    def __post_init__(self) -> None:  # a TOML list arrives as a list: keep the dataclass frozen
        if isinstance(self.domain, list):
            object.__setattr__(self, "domain", tuple(self.domain))


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet18"
    projector_dims: tuple[int, ...] = (2048, 2048, 2048)  # paper: 512 -> 2048 -> 2048 -> 2048
    in_chans: int = 3
    init: str = "random"  # random | imagenet (timm pretrained weights, if present locally)
    # synchronise the backbone's BatchNorm across DDP ranks (official Barlow Twins); None: on
    # whenever world size > 1 (SyncBatchNorm on CUDA, medzoo's global-batch norm under gloo)
    sync_batchnorm: bool | None = None


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
    # online representation monitor (medzoo.monitor): kNN accuracy on a val subset, effective rank
    monitor_every_steps: int = 500  # 0: off; also measured at the start and the end
    monitor_val_size: int = 1000  # stratified val subset measured (never test)
    monitor_train_size: int = 2000  # stratified labelled train subset: the kNN neighbours
    stop_on_collapse: bool = (
        True  # stop when the effective rank stays low; keep the last good checkpoint
    )
    collapse_rank_fraction: float = (
        0.02  # low = below this fraction of min(projector width, val size)
    )
    collapse_patience: int = 3  # consecutive low readings before stopping


@dataclass(frozen=True)
class AugmentConfig:
    """A preset plus optional overrides; None means "what the preset says"."""

    preset: str = (
        "auto"  # auto (from the datasets' modality) | histology | ct | dermatology | fundus
    )
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
    # run the two-view augmentation under torch.compile (one fused graph per batch): "auto"
    # follows training.compile on CUDA (eager on CPU), true or false decide alone
    compile: bool | str = "auto"


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


def augment_compiled(cfg: PretrainConfig, device: Any) -> bool:
    """Whether the augmentation runs under torch.compile on ``device``: ``augment.compile``,
    where ``"auto"`` means ``training.compile`` on CUDA only (on CPU the eager path, which skips
    the samples an optional op does not touch, measured faster at 224 px: docs/benchmarks.md).
    The training loop and ``bench pretrain --breakdown`` both ask this one function."""
    if cfg.augment.compile == "auto":
        return bool(cfg.training.compile) and str(device).startswith("cuda")
    return bool(cfg.augment.compile)


# long: one check per recipe value, in the recipe's order
def validate_pretrain(cfg: PretrainConfig) -> None:
    def choice(value: str, allowed: tuple[str, ...], key: str) -> None:
        if value not in allowed:
            raise MedzooError(f"{key} = {value!r} is not one of {', '.join(allowed)}")

    choice(cfg.optim.name, ("adam", "lars", "sgd"), "optim.name")
    choice(cfg.optim.schedule, ("cosine", "constant"), "optim.schedule")
    choice(cfg.training.precision, ("auto", "bf16", "fp16", "fp32"), "training.precision")
    choice(
        cfg.augment.preset, ("auto", "histology", "ct", "dermatology", "fundus"), "augment.preset"
    )
    choice(cfg.model.init, ("random", "imagenet"), "model.init")
    if not (isinstance(cfg.augment.compile, bool) or cfg.augment.compile == "auto"):
        raise MedzooError(
            f'augment.compile = {cfg.augment.compile!r} is not one of "auto", true, false: '
            'write augment.compile = "auto" (follow training.compile on CUDA), true or false'
        )
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
    training = cfg.training
    if (
        training.monitor_every_steps < 0
        or min(training.monitor_val_size, training.monitor_train_size) < 2
    ):
        raise MedzooError(
            "training.monitor_every_steps must be >= 0 (0: off) and the monitor sizes at least 2"
        )
    if not 0 <= training.collapse_rank_fraction < 1 or training.collapse_patience < 1:
        raise MedzooError(
            "training.collapse_rank_fraction must lie in [0, 1) and collapse_patience be >= 1"
        )
    if cfg.training.batch_size < 2:
        raise MedzooError(
            "training.batch_size must be at least 2 (Barlow Twins normalises over the batch)"
        )
    domains = (cfg.data.domain,) if isinstance(cfg.data.domain, str) else cfg.data.domain
    if (
        not domains
        or not all(isinstance(d, str) and d for d in domains)
        or len(set(domains)) < len(domains)
    ):
        raise MedzooError("data.domain must be a name or a list of distinct names")
    if cfg.data.weights is not None and (
        len(cfg.data.weights) != len(domains) or min(cfg.data.weights) <= 0
    ):
        raise MedzooError(
            f"data.weights must give one positive weight per data.domain entry ({len(domains)})"
        )
    if cfg.model.in_chans != cfg.data.channels:
        raise MedzooError(
            f"model.in_chans = {cfg.model.in_chans} but data.channels = {cfg.data.channels}: set both alike"
        )
    if not cfg.model.projector_dims:
        raise MedzooError("model.projector_dims must name at least one layer width")
    check_pretrain_values(cfg)


# --------------------------------------------------------------------------- value validation
#
# The schema says what type a value has; these say which values make sense, so that an impossible
# value (zero, negative, NaN, an unknown device, a pair out of order) stops the command when the
# recipe is loaded, before anything is written or any tensor is made.

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d{1,2})?)$")
MAX_SEED = 2**31 - 1  # the augmentation generator is seeded from (seed, step, rank)


def check_finite(obj: Any, where: str = "") -> None:
    """Every float in a (nested) config dataclass is finite; the first that is not is one line."""
    if dataclasses.is_dataclass(obj):
        prefix = f"{where}." if where else ""
        for f in dataclasses.fields(obj):
            check_finite(getattr(obj, f.name), prefix + _field_key(f))
        return
    values = obj if isinstance(obj, (tuple, list)) else (obj,)
    for value in values:
        if isinstance(value, float) and not math.isfinite(value):
            raise MedzooError(f"{where} = {value} must be a finite number")


def _range(key: str, value: Any, low: float | None, high: float | None, *, open_low=False) -> None:
    if value is None:
        return
    bad_low = low is not None and (value <= low if open_low else value < low)
    bad_high = high is not None and value > high
    if bad_low or bad_high:
        lo = "" if low is None else f"{'>' if open_low else '>='} {low}"
        hi = "" if high is None else f"<= {high}"
        raise MedzooError(f"{key} = {value} must be {' and '.join(p for p in (lo, hi) if p)}")


def _pair(key: str, pair: tuple[float, float] | None, low: float, high: float | None) -> None:
    if pair is None:
        return
    if len(pair) != 2:
        raise MedzooError(f"{key} = {list(pair)} must be a pair [a, b]")
    for value in pair:
        _range(key, value, low, high)


def _ordered(key: str, pair: tuple[float, float] | None) -> None:
    if pair is not None and len(pair) == 2 and pair[0] > pair[1]:
        raise MedzooError(f"{key} = {list(pair)} must be ordered [low, high]")


def check_device(key: str, device: str) -> None:
    if not DEVICE_RE.match(device):
        raise MedzooError(f"{key} = {device!r} is not a device: use auto, cpu, cuda or cuda:N")


def check_pretrain_values(cfg: PretrainConfig) -> None:
    """Range and meaning of every pre-training value (see the comment above)."""
    check_finite(cfg)
    training, optim, data, model, aug = cfg.training, cfg.optim, cfg.data, cfg.model, cfg.augment
    check_device("training.device", training.device)
    _range("training.epochs", training.epochs, 1, None)
    _range("training.max_steps", training.max_steps, 1, None)
    _range("training.log_every_steps", training.log_every_steps, 1, None)
    _range("training.checkpoint_every_steps", training.checkpoint_every_steps, 1, None)
    _range("training.seed", training.seed, 0, MAX_SEED)
    _range("training.batch_size", training.batch_size, 2, 2**20)
    _range("data.image_size", data.image_size, 16, 4096)
    _range("data.memory_budget_gb", data.memory_budget_gb, 0, None)
    if data.channels not in (1, 3) or model.in_chans not in (1, 3):
        raise MedzooError("data.channels and model.in_chans must be 1 (grayscale) or 3 (RGB)")
    for width in model.projector_dims:
        _range("model.projector_dims entry", width, 1, 2**16)
    _range("loss.lambda", cfg.loss.lambda_offdiag, 0, None)
    _range("optim.lr", optim.lr, 0, 10, open_low=True)
    _range("optim.bias_lr", optim.bias_lr, 0, 10, open_low=True)
    _range("optim.weight_decay", optim.weight_decay, 0, 1)
    _range("optim.momentum", optim.momentum, 0, 1)
    if optim.momentum == 1:
        raise MedzooError("optim.momentum = 1 never forgets a gradient: use a value below 1")
    _range("optim.warmup_epochs", optim.warmup_epochs, 0, None)
    _range("optim.min_lr_ratio", optim.min_lr_ratio, 0, 1)
    _range("optim.lars_trust_coeff", optim.lars_trust_coeff, 0, None, open_low=True)
    _pair("augment.crop_scale", aug.crop_scale, 0, 1)
    _ordered("augment.crop_scale", aug.crop_scale)
    if aug.crop_scale is not None and aug.crop_scale[0] == 0:
        raise MedzooError("augment.crop_scale must start above 0 (a crop of no pixels)")
    for key in ("hflip_prob", "vflip_prob", "color_jitter_prob", "grayscale_prob"):
        _range(f"augment.{key}", getattr(aug, key), 0, 1)
    for key in ("brightness", "contrast", "saturation"):
        _range(f"augment.{key}", getattr(aug, key), 0, None)
    _range("augment.hue", aug.hue, 0, 0.5)
    _pair("augment.blur_prob", aug.blur_prob, 0, 1)
    _pair("augment.solarize_prob", aug.solarize_prob, 0, 1)
    _pair("augment.blur_sigma", aug.blur_sigma, 0, None)
    _ordered("augment.blur_sigma", aug.blur_sigma)


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
    except UnicodeDecodeError as err:  # tomllib decodes UTF-8 itself
        raise MedzooError(
            f"recipe {path} is not UTF-8 text (byte {err.start}): save it as UTF-8"
        ) from None
    except OSError as err:
        raise MedzooError(f"recipe {path} cannot be read: {err.strerror or err}") from None


def load_recipe(
    cls: type[T], path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()
) -> T:
    """Load a recipe file into ``cls`` after applying ``--set`` overrides."""
    raw = apply_overrides(load_toml(path), overrides)
    try:
        cfg = from_dict(cls, raw)
        check_finite(cfg)  # every recipe kind, not only pre-training
        return cfg
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
