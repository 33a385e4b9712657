"""Evaluation: linear probe, full and surgical fine-tuning over label fractions and seeds.

``evaluate(cfg)`` runs the seed paper's grid -- every dataset x init x strategy x label fraction
x seed -- on the official splits: heads and early stopping are chosen on ``val``, numbers are
reported on ``test``. The probe trains from features cached once per (weights, dataset, split,
preprocessing) (:mod:`medzoo.probe`); fine-tuning lives in :mod:`medzoo.finetune`; tables and
figures in :mod:`medzoo.report`.

The whole recipe is checked before any work starts (unknown inits, fractions outside (0, 1],
datasets without a test split, misspelt strategies, layer groups the architecture lacks).

Metrics written back to each evaluated zoo entry use one flat schema:
``"<dataset>/<strategy>/<fraction>/<metric>"`` -> mean over seeds, plus ``.../accuracy_sd``,
e.g. ``"crc/probe/1.0/accuracy"``; ``<metric>`` is one of :data:`medzoo.report.METRICS`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medzoo import report
from medzoo.config import apply_overrides, from_dict, load_toml, to_dict
from medzoo.errors import MedzooError
from medzoo.finetune import FinetuneConfig, SurgicalConfig, finetune_split
from medzoo.probe import (
    cached_features,
    data_fingerprint,
    extract_features,
    feature_stats,
    fit_probe,
    resolve_device,
)

STRATEGY_KINDS = ("probe", "finetune", "surgical")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ProbeConfig:
    """The linear probe (the ``[probe]`` recipe table)."""

    weight_decays: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # chosen on val
    max_iter: int = 100  # L-BFGS iterations (full batch, all weight decays in one run)
    batch_size: int = 256  # feature extraction batch


@dataclass(frozen=True)
class EvalConfig:
    """An evaluation recipe (``recipes/eval-*.toml``)."""

    name: str = "eval"
    datasets: tuple[str, ...] = ("crc",)  # MIMeta ids, each evaluated on its own
    tasks: dict[str, str] = field(default_factory=dict)  # dataset -> task (default: medzoo's)
    inits: tuple[str, ...] = ("random-r18",)  # zoo names
    strategies: tuple[str, ...] = ("probe",)  # probe | finetune | surgical | surgical-<g>[+<g>]
    fractions: tuple[float, ...] = (0.005, 0.01, 0.1, 0.25, 0.5, 1.0)
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
    kind: str  # probe | finetune | surgical
    groups: tuple[str, ...] = ()  # surgical: trained besides the head


@dataclass
class InitContext:
    """One init prepared for one dataset: entry, channels, statistics, cache identity."""

    name: str
    entry: Any
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights_id: str


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
    if name in ("probe", "finetune"):
        return Strategy(name, name)
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
        name, ["probe", "finetune", "surgical", "surgical-layer4"], n=1, cutoff=0.5
    )
    hint = (
        f"did you mean '{close[0]}'?"
        if close
        else "use probe, finetune, surgical or surgical-<group>"
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

    if (
        not cfg.fractions
        or not cfg.seeds
        or not cfg.datasets
        or not cfg.inits
        or not cfg.strategies
    ):
        raise MedzooError(
            "datasets, inits, strategies, fractions and seeds must each name at least one value"
        )
    for fraction in cfg.fractions:
        check_fraction(fraction)
    for what, values in (
        ("fractions", cfg.fractions),
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
        "probe.max_iter": cfg.probe.max_iter,
        "probe.batch_size": cfg.probe.batch_size,
    }
    for section in ("finetune", "surgical"):
        hp = getattr(cfg, section)
        for key in ("epochs", "batch_size", "patience", "eval_batch_size", "lr"):
            positive[f"{section}.{key}"] = getattr(hp, key)
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
    resolve_device(cfg.device)
    for dataset in cfg.datasets:
        _check_dataset(root, dataset, cfg.tasks.get(dataset))
    entries = {name: _check_init(name) for name in cfg.inits}
    for name, entry in entries.items():
        present = (
            _arch_groups(entry.arch) if any(s.kind == "surgical" for s in strategies) else set()
        )
        for strategy in (s for s in strategies if s.kind == "surgical"):
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
            print(f"medzoo: note: skipping init '{name}': {err}", file=sys.stderr)
            continue
        inits.append(name)
    if not inits:
        raise MedzooError("no init in the recipe has weights on this machine; nothing to evaluate")
    return inits, strategies


# --------------------------------------------------------------------------- one init


def _stats(values: tuple[float, ...], chans: int) -> tuple[float, ...]:
    return tuple(values) if len(values) == chans else (sum(values) / len(values),) * chans


def init_context(name: str, in_chans: int) -> InitContext:
    from medzoo.zoo.index import model_info

    entry = model_info(name)
    # the key of the weights: their sha256, or what makes them reproducible without a file
    weights_id = entry.sha256 or (
        f"timm:{entry.timm_name}" if entry.timm_name else f"{entry.method}:seed0:{entry.arch}"
    )
    return InitContext(
        name, entry, in_chans, _stats(entry.mean, in_chans), _stats(entry.std, in_chans), weights_id
    )


def split_features(
    ctx: InitContext,
    splits: dict[str, Any],
    root: Path,
    dataset: str,
    cfg: EvalConfig,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Features of every split, from the cache or extracted once with the frozen backbone."""
    from medzoo.zoo.index import load

    model = None
    out = {}
    for split, data in splits.items():
        material = {
            "weights": ctx.weights_id, "arch": ctx.entry.arch, "in_chans": ctx.in_chans,
            "dataset": dataset, "task": data.task, "split": split, "image_size": data.image_size,
            "mean": ctx.mean, "std": ctx.std, "data": data_fingerprint(root, dataset, data.labels, data.indices),
        }  # fmt: skip

        def compute(data: Any = data) -> torch.Tensor:
            nonlocal model
            if model is None:
                model = load(ctx.name, in_chans=ctx.in_chans)
            return extract_features(
                model,
                data.images,
                ctx.mean,
                ctx.std,
                in_chans=ctx.in_chans,
                device=device,
                batch_size=cfg.probe.batch_size,
            )

        out[split], _ = cached_features(
            material, data.labels, compute, use_cache=cfg.cache_features
        )
    return out


def probe_head(
    features: dict[str, torch.Tensor],
    splits: dict[str, Any],
    subset: np.ndarray,
    cfg: EvalConfig,
    device: torch.device,
) -> Any:
    train = splits["train"]
    idx = torch.from_numpy(subset)
    return fit_probe(
        features["train"][idx], train.labels[idx], features["val"], splits["val"].labels, train.num_classes,
        weight_decays=cfg.probe.weight_decays, max_iter=cfg.probe.max_iter,
        stats=feature_stats(features["train"]), device=device,
    )  # fmt: skip


def finetune_run(
    ctx: InitContext,
    strategy: Strategy,
    splits: dict[str, Any],
    subset: np.ndarray,
    seed: int,
    dataset: str,
    cfg: EvalConfig,
    device: torch.device,
) -> tuple[np.ndarray, dict[str, Any]]:
    surgical = strategy.kind == "surgical"
    return finetune_split(
        ctx.name, splits, subset, config=cfg.surgical if surgical else cfg.finetune,
        mean=ctx.mean, std=ctx.std, in_chans=ctx.in_chans, device=device,
        trainable_groups=strategy.groups if surgical else None, dataset=dataset, seed=seed,
        precision=cfg.precision,
    )  # fmt: skip


# --------------------------------------------------------------------------- the grid


def default_out(cfg: EvalConfig) -> Path:
    stem = cfg.name if cfg.name.startswith("eval") else f"eval-{cfg.name}"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def load_splits(root: Path, dataset: str, cfg: EvalConfig) -> dict[str, Any]:
    from medzoo.data.mimeta import load_split

    task = cfg.tasks.get(dataset)
    return {
        s: load_split(
            root,
            dataset,
            s,
            task=task,
            image_size=cfg.image_size,
            memory_budget_gb=cfg.memory_budget_gb,
        )
        for s in SPLITS
    }


def _run_one(
    ctx: InitContext,
    strategy: Strategy,
    splits: dict[str, Any],
    features: dict[str, torch.Tensor] | None,
    subset: np.ndarray,
    seed: int,
    dataset: str,
    cfg: EvalConfig,
    device: torch.device,
) -> tuple[dict[str, Any], np.ndarray, Any]:
    """One cell of the grid: its result row (without the grid keys), test probabilities, head."""
    start = time.perf_counter()
    head = None
    if strategy.kind == "probe":
        head = probe_head(features, splits, subset, cfg, device)
        probs = torch.softmax(head.logits(features["test"]), 1).cpu().numpy()
        extra = {"val_accuracy": head.val_accuracy, "weight_decay": head.weight_decay}
    else:
        probs, extra = finetune_run(ctx, strategy, splits, subset, seed, dataset, cfg, device)
    test = splits["test"]
    metrics = report.classification_metrics(test.labels.numpy(), probs, test.class_names)
    row = {
        "n_train": len(subset), "n_val": len(splits["val"]), "n_test": len(test),
        **{m: metrics[m] for m in report.METRICS}, **extra,
        "seconds": round(time.perf_counter() - start, 3), "recall": metrics["recall"],
    }  # fmt: skip
    return row, probs, head


def evaluate(
    cfg: EvalConfig, *, data_root: str | Path | None = None, out: str | Path | None = None
) -> Path:
    """Run the recipe's grid; returns the run folder (results, summary, figures, provenance)."""
    from tqdm.auto import tqdm

    from medzoo.config import data_root as resolve_root
    from medzoo.config import dump_toml
    from medzoo.data.fractions import label_fraction_indices
    from medzoo.provenance import atomic_write_json, atomic_write_text, provenance

    root = resolve_root(data_root or cfg.data_root)
    inits, strategies = validate(cfg, root)
    out = Path(out) if out is not None else default_out(cfg)
    if (out / "results.json").exists():
        raise MedzooError(f"{out} already holds results; choose another --out or remove it")
    device = resolve_device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "recipe.json", to_dict(cfg))
    atomic_write_text(out / "recipe.toml", dump_toml(to_dict(cfg)))  # re-runnable as is
    atomic_write_json(
        out / "provenance.json",
        {**provenance(), "data_root": str(root), "device": str(device), "inits": inits},
    )
    figures = out / "figures"
    rows: list[dict[str, Any]] = []
    keep: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray, tuple[str, ...], float]] = {}
    total = len(cfg.datasets) * len(inits) * len(strategies) * len(cfg.fractions) * len(cfg.seeds)
    bar = tqdm(total=total, desc="evaluate", unit="run", disable=None)
    largest, first_seed = max(cfg.fractions), min(cfg.seeds)
    for dataset in cfg.datasets:
        splits = load_splits(root, dataset, cfg)
        train, test = splits["train"], splits["test"]
        for init in inits:
            ctx = init_context(init, train.channels)
            features = None
            if (
                any(s.kind == "probe" for s in strategies)
                or cfg.register_classifiers
                or (cfg.plots and cfg.tsne)
            ):
                bar.set_postfix_str(f"{dataset} {init} features")
                features = split_features(ctx, splits, root, dataset, cfg, device)
            full_head = None  # the probe on 100 % of the labels, for a classifier entry
            for strategy in strategies:
                for fraction in cfg.fractions:
                    for seed in cfg.seeds:
                        bar.set_postfix_str(
                            f"{dataset} {init} {strategy.name} {fraction:g} s{seed}"
                        )
                        subset = label_fraction_indices(
                            train.labels, fraction, seed, num_classes=train.num_classes
                        )
                        row, probs, head = _run_one(
                            ctx, strategy, splits, features, subset, seed, dataset, cfg, device
                        )
                        rows.append(
                            {
                                "dataset": dataset,
                                "task": train.task,
                                "init": init,
                                "strategy": strategy.name,
                                "fraction": float(fraction),
                                "seed": int(seed),
                                **row,
                            }
                        )
                        full_head = head if head is not None and fraction == 1.0 else full_head
                        if fraction == largest and seed == first_seed:
                            keep[(dataset, init, strategy.name)] = (
                                test.labels.numpy(),
                                probs.argmax(1),
                                test.class_names,
                                fraction,
                            )
                        bar.update()
                report.write_results(rows, out)  # after every block: a crash keeps what was done
            if cfg.plots and cfg.tsne and features is not None:
                title = f"t-SNE of {init} test features on {dataset}"
                report.plot_tsne(
                    features["test"].numpy(),
                    test.labels.numpy(),
                    test.class_names,
                    title,
                    figures / f"tsne-{dataset}-{init}.png",
                    max_points=cfg.tsne_max_points,
                )
            # random features are not worth deploying: no classifier entry for them
            if cfg.register_classifiers and ctx.entry.method != "random":
                head = full_head or probe_head(features, splits, np.arange(len(train)), cfg, device)
                probs = torch.softmax(head.logits(features["test"]), 1).cpu().numpy()
                metrics = report.classification_metrics(
                    test.labels.numpy(), probs, test.class_names
                )
                register_classifier(ctx, head, dataset, train, metrics, recipe=to_dict(cfg))
    bar.close()
    report.write_results(rows, out)
    _write_report(rows, keep, cfg, out)
    if cfg.update_zoo:
        write_back_metrics(rows, inits)
        from medzoo.zoo.index import attach_evaluation

        for init in inits:  # summary and figures into the entry, for its model card
            attach_evaluation(init, out)
    return out


def _write_report(rows: list[dict[str, Any]], keep: dict, cfg: EvalConfig, out: Path) -> None:
    from medzoo.provenance import atomic_write_text

    atomic_write_text(
        out / "summary.md", report.summary_markdown(rows, title=f"Evaluation: {cfg.name}")
    )
    if not cfg.plots:
        return
    for dataset in cfg.datasets:
        report.plot_fraction_curves(rows, dataset, out / "figures" / f"curves-{dataset}.png")
    for (dataset, init, strategy), (labels, preds, names, fraction) in keep.items():
        matrix = report.confusion_matrix(labels, preds, len(names))
        title = f"{dataset}: {init} / {strategy}, {report.format_fraction(fraction)} labels (seed 0 or first)"
        report.plot_confusion(
            matrix, names, title, out / "figures" / f"confusion-{dataset}-{init}-{strategy}.png"
        )


def metrics_for_zoo(rows: list[dict[str, Any]], init: str) -> dict[str, float]:
    """``{"<dataset>/<strategy>/<fraction>/<metric>": mean over seeds, ".../accuracy_sd": sd}``.

    Ordered by dataset, strategy, then largest fraction first, so that ``medzoo list`` (which
    shows the first accuracies) shows the 100 % numbers.
    """
    sub = [r for r in rows if r["init"] == init]
    stats = {metric: report.aggregate(sub, metric) for metric in report.METRICS}
    cells = sorted(stats["accuracy"], key=lambda k: (k[0], k[2] != "probe", k[2], -k[3]))
    out: dict[str, float] = {}
    for cell in cells:
        dataset, _, strategy, fraction = cell
        key = f"{dataset}/{strategy}/{float(fraction)}"
        for metric in report.METRICS:
            if cell in stats[metric]:
                out[f"{key}/{metric}"] = round(stats[metric][cell][0], 6)
        out[f"{key}/accuracy_sd"] = round(stats["accuracy"][cell][1], 6)
    return out


def write_back_metrics(rows: list[dict[str, Any]], inits: list[str]) -> None:
    from medzoo.zoo.index import update_metrics

    for init in inits:
        metrics = metrics_for_zoo(rows, init)
        if metrics:
            update_metrics(init, metrics)


# --------------------------------------------------------------------------- classifiers


def task_slug(dataset: str, task: str) -> str:
    """``crc``/``tissue class`` -> ``tissue``; ``organs_axial``/``organ label`` -> ``axial-organ``."""
    word = (task.split() or ["task"])[0].lower()
    return f"{dataset.rsplit('_', 1)[-1]}-{word}" if "_" in dataset else word


def register_classifier(
    ctx: InitContext,
    head: Any,
    dataset: str,
    train: Any,
    metrics: dict[str, Any],
    *,
    name: str | None = None,
    recipe: Any = None,
) -> str:
    """Save backbone + probe head as the classifier entry ``<init>-<task-slug>``; its name."""
    from medzoo.zoo.index import load, save_entry

    name = name or f"{ctx.name}-{task_slug(dataset, train.task)}"
    model = load(ctx.name, num_classes=train.num_classes, in_chans=ctx.in_chans)
    weight, bias = head.folded()  # standardisation folded in: the head acts on raw features
    with torch.no_grad():
        model.get_classifier().weight.copy_(weight)
        model.get_classifier().bias.copy_(bias)
    flat = {
        f"{dataset}/test/{m}": round(float(metrics[m]), 6)
        for m in report.METRICS
        if not math.isnan(metrics[m])
    }
    entry = dataclasses.replace(
        ctx.entry, name=name, method="linear-probe", task=train.task, base_model=ctx.name, datasets=(dataset,),
        in_chans=ctx.in_chans, input_size=(ctx.in_chans, train.image_size, train.image_size), mean=ctx.mean, std=ctx.std,
        num_classes=train.num_classes, label_names=tuple(train.class_names), metrics={**flat, "weight_decay": head.weight_decay},
        recipe=recipe, recipe_file=None, make_target=None, timm_name=None, sha256=None, created=None, versions={},
        git_commit=None, hub_repo_id=None, hub_revision=None,
    )  # fmt: skip
    save_entry(entry, model.state_dict())
    return name


def train_head(
    init: str,
    dataset: str,
    *,
    data_root: str | Path | None = None,
    name: str | None = None,
    task: str | None = None,
    image_size: int | None = None,
    device: str = "auto",
) -> tuple[str, dict[str, Any]]:
    """Train the probe on 100 % of ``dataset``'s train labels and register it as a classifier."""
    from medzoo.config import data_root as resolve_root

    cfg = EvalConfig(
        name="train-head",
        datasets=(dataset,),
        tasks={dataset: task} if task else {},
        inits=(init,),
        fractions=(1.0,),
        seeds=(0,),
        image_size=image_size,
        device=device,
    )
    root = resolve_root(data_root)
    if name is not None:
        from medzoo.zoo.entry import validate_name

        validate_name(name)
    validate(cfg, root)
    dev = resolve_device(device)
    splits = load_splits(root, dataset, cfg)
    ctx = init_context(init, splits["train"].channels)
    features = split_features(ctx, splits, root, dataset, cfg, dev)
    head = probe_head(features, splits, np.arange(len(splits["train"])), cfg, dev)
    test = splits["test"]
    probs = torch.softmax(head.logits(features["test"]), 1).cpu().numpy()
    metrics = report.classification_metrics(test.labels.numpy(), probs, test.class_names)
    registered = register_classifier(
        ctx, head, dataset, splits["train"], metrics, name=name, recipe=to_dict(cfg)
    )
    return registered, metrics
