"""The evaluation recipe: its schema (``recipes/eval-*.toml``), loading and validation.

The whole recipe is checked before any work starts (unknown inits, fractions outside (0, 1],
datasets without a test split, misspelt strategies, layer groups the architecture lacks).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medzoo.config import apply_overrides, from_dict, load_toml
from medzoo.errors import MedzooError
from medzoo.finetune import FinetuneConfig, SurgicalConfig
from medzoo.probe import resolve_device

STRATEGY_KINDS = ("probe", "finetune", "lp-ft", "surgical", "surgical-auto")
SURGICAL_BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4")  # surgical-auto picks one
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ProbeConfig:
    """The linear probe (the ``[probe]`` recipe table)."""

    weight_decays: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # chosen on val
    max_iter: int = 100  # L-BFGS iterations per head (full batch; every head its own state)
    batch_size: int = 256  # feature extraction batch


@dataclass(frozen=True)
class EvalConfig:
    """An evaluation recipe (``recipes/eval-*.toml``)."""

    name: str = "eval"
    datasets: tuple[str, ...] = ("crc",)  # MIMeta ids, each evaluated on its own
    tasks: dict[str, str] = field(default_factory=dict)  # dataset -> task (default: medzoo's)
    inits: tuple[str, ...] = ("random-r18",)  # zoo names
    # probe | finetune | lp-ft | surgical | surgical-<g>[+<g>] | surgical-auto
    strategies: tuple[str, ...] = ("probe",)
    fractions: tuple[float, ...] = (0.005, 0.01, 0.1, 0.25, 0.5, 1.0)
    shots: tuple[int, ...] = ()  # label budgets as images per class, besides fractions
    # model selection on a val subset scaled like the train budget ("matched", Oliver et al.
    # 2018) or on the whole val split ("full")
    val_budget: str = "matched"
    val_min_per_class: int = 5  # a matched val subset keeps at least this many per class
    seeds: tuple[int, ...] = (0, 1, 2)
    image_size: int | None = None  # None: the data's own size
    device: str = "auto"
    precision: str = "auto"  # fine-tuning autocast: auto (bf16 on CUDA) | bf16 | fp16 | fp32
    data_root: str | None = None
    memory_budget_gb: float = 8.0
    skip_unavailable: bool = False  # drop inits without weights here (with a warning)
    register_classifiers: bool = False  # save the 100 % probe as <init>-<task-slug>
    update_zoo: bool = True  # write metrics back into each init's zoo entry
    cache_features: bool = True
    plots: bool = True
    tsne: bool = True
    tsne_max_points: int = 2000
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    surgical: SurgicalConfig = field(default_factory=SurgicalConfig)


@dataclass(frozen=True)
class Strategy:
    name: str
    kind: str  # one of STRATEGY_KINDS
    groups: tuple[str, ...] = ()  # surgical: trained besides the head

    @property
    def uses_features(self) -> bool:
        """Needs the frozen backbone's cached features (the probe, LP-FT's first stage)."""
        return self.kind in ("probe", "lp-ft")

    @property
    def trains_backbone(self) -> bool:
        return self.kind != "probe"


def load_eval_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> EvalConfig:
    """Load a recipe; its file stem is the default run name."""
    raw = apply_overrides(load_toml(path), overrides)
    raw.setdefault("name", Path(path).stem)
    try:
        return from_dict(EvalConfig, raw)
    except MedzooError as err:
        raise MedzooError(f"{path}: {err}") from None


# --------------------------------------------------------------------------- validation


def parse_strategy(name: str, surgical: SurgicalConfig) -> Strategy:
    if name in ("probe", "finetune", "lp-ft", "surgical-auto"):
        return Strategy(name, name, SURGICAL_BLOCKS if name == "surgical-auto" else ())
    if name == "surgical" or name.startswith("surgical-"):
        groups = (
            surgical.groups if name == "surgical" else tuple(name[len("surgical-") :].split("+"))
        )
        from medzoo.models import RESNET_LAYER_GROUPS

        choices = [g for g in RESNET_LAYER_GROUPS if g != "head"]
        for group in groups:
            if group not in choices:
                raise MedzooError(
                    f"strategy '{name}': unknown layer group '{group}'; choose from "
                    f"{', '.join(choices)} (the head always trains), e.g. surgical-layer4"
                )
        return Strategy(name, "surgical", tuple(groups))
    close = difflib.get_close_matches(
        name,
        ["probe", "finetune", "lp-ft", "surgical", "surgical-auto", "surgical-layer4"],
        n=1,
        cutoff=0.5,
    )
    hint = (
        f"did you mean '{close[0]}'?"
        if close
        else "use probe, finetune, lp-ft, surgical, surgical-<group> or surgical-auto"
    )
    raise MedzooError(f"unknown strategy '{name}': {hint}")


def _arch_groups(arch: str) -> set[str]:
    """The layer groups that hold parameters in a timm ``arch`` (built on the meta device)."""
    import timm

    from medzoo.models import group_of

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=2)
    return {group_of(name) for name, _ in model.named_parameters()} - {None}


def _check_numbers(cfg: EvalConfig) -> None:
    from medzoo.data.fractions import check_fraction

    if not cfg.seeds or not cfg.datasets or not cfg.inits or not cfg.strategies:
        raise MedzooError("datasets, inits, strategies and seeds must each name at least one value")
    if not cfg.fractions and not cfg.shots:
        raise MedzooError("give label budgets: fractions = [0.1, 1.0] and/or shots = [1, 5]")
    for fraction in cfg.fractions:
        check_fraction(fraction)
    for shot in cfg.shots:
        if isinstance(shot, bool) or not isinstance(shot, int) or shot < 1:
            raise MedzooError(f"shots = {shot!r}: images per class must be integers >= 1")
    if cfg.val_budget not in ("matched", "full"):
        raise MedzooError(f'val_budget = {cfg.val_budget!r} is not "matched" or "full"')
    for what, values in (
        ("fractions", cfg.fractions),
        ("shots", cfg.shots),
        ("seeds", cfg.seeds),
        ("inits", cfg.inits),
        ("datasets", cfg.datasets),
        ("strategies", cfg.strategies),
    ):
        if len(set(values)) != len(values):
            raise MedzooError(f"{what} lists a value twice: {list(values)}")
    if cfg.precision not in ("auto", "bf16", "fp16", "fp32"):
        raise MedzooError(f"precision = {cfg.precision!r} is not one of auto, bf16, fp16, fp32")
    if not cfg.probe.weight_decays or any(w < 0 for w in cfg.probe.weight_decays):
        raise MedzooError("probe.weight_decays must list values >= 0, e.g. [1e-4, 1e-3, 1e-2]")
    positive = {
        "image_size": cfg.image_size or 1,
        "val_min_per_class": cfg.val_min_per_class,
        "probe.max_iter": cfg.probe.max_iter,
        "probe.batch_size": cfg.probe.batch_size,
    }
    for section in ("finetune", "surgical"):
        hp = getattr(cfg, section)
        for key in ("min_steps", "max_steps", "eval_every_steps", "batch_size", "patience",
                    "eval_batch_size", "lr", "head_lr", "scratch_lr"):  # fmt: skip
            positive[f"{section}.{key}"] = getattr(hp, key)
        if hp.min_steps > hp.max_steps:
            raise MedzooError(
                f"{section}.min_steps = {hp.min_steps} exceeds max_steps = {hp.max_steps}"
            )
    for key, value in positive.items():
        if value <= 0:
            raise MedzooError(f"{key} = {value} must be positive")
    for dataset in cfg.tasks:
        if dataset not in cfg.datasets:
            raise MedzooError(
                f"tasks names dataset '{dataset}' that is not in datasets {list(cfg.datasets)}"
            )


def _check_dataset(root: Path, dataset: str, task: str | None) -> None:
    from medzoo.data.mimeta import dataset_dir, read_info, task_info

    folder = dataset_dir(root, dataset)
    for split in ("train", "val", "test"):
        path = folder / "splits" / f"{split}.txt"
        if not path.is_file() or not path.read_text().strip():
            why = "reports on the official test split" if split == "test" else "needs it"
            raise MedzooError(
                f"dataset '{dataset}' has no {split} split ({path}); evaluation {why}"
            )
    task_info(read_info(root, dataset), task)


def _check_init(name: str) -> Any:
    from medzoo.zoo.index import list_models, model_info

    try:
        return model_info(name)
    except MedzooError:
        raise MedzooError(
            f"unknown init '{name}': the zoo has {', '.join(list_models())} (see medzoo list)"
        ) from None


def validate(cfg: EvalConfig, root: Path) -> tuple[list[str], list[Strategy]]:
    """Check the whole recipe; returns the inits to run and the parsed strategies."""
    from medzoo.zoo.index import load

    _check_numbers(cfg)
    strategies = [parse_strategy(s, cfg.surgical) for s in cfg.strategies]
    from medzoo.runtime import resolve_precision

    resolve_precision(resolve_device(cfg.device), cfg.precision)
    for dataset in cfg.datasets:
        _check_dataset(root, dataset, cfg.tasks.get(dataset))
    entries = {name: _check_init(name) for name in cfg.inits}
    for name, entry in entries.items():
        present = (
            _arch_groups(entry.arch)
            if any(s.kind.startswith("surgical") for s in strategies)
            else set()
        )
        for strategy in (s for s in strategies if s.kind.startswith("surgical")):
            missing = [g for g in strategy.groups if g not in present]
            if missing:
                raise MedzooError(
                    f"strategy '{strategy.name}': layer group '{missing[0]}' does not exist in "
                    f"{entry.arch} (init {name}); it has {', '.join(sorted(present))}"
                )
    inits = []
    for name in cfg.inits:
        try:
            load(name, device="cpu")  # weights present (sha256-checked) or creatable?
        except MedzooError as err:
            if not cfg.skip_unavailable:
                raise MedzooError(
                    f"init '{name}' is unavailable ({err}); or set skip_unavailable = true"
                ) from None
            logging.getLogger("medzoo").warning("medzoo: note: skipping init '%s': %s", name, err)
            continue
        inits.append(name)
    if not inits:
        raise MedzooError("no init in the recipe has weights on this machine; nothing to evaluate")
    return inits, strategies
