"""Running the grid: every dataset x init x strategy x label fraction x seed, one run each.

Heads and early stopping are chosen on ``val``, numbers are reported on ``test``. The probe
trains from features cached once per (weights, dataset, split, preprocessing)
(:mod:`medzoo.probe`); fine-tuning lives in :mod:`medzoo.finetune`; results, the summary and
zoo write-back in :mod:`medzoo.evaluation.results`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medzoo import report
from medzoo.config import to_dict
from medzoo.errors import MedzooError
from medzoo.evaluation.classifiers import register_classifier
from medzoo.evaluation.inits import InitContext, init_context, split_features
from medzoo.evaluation.recipe import SPLITS, EvalConfig, Strategy, validate
from medzoo.evaluation.results import write_back_metrics, write_report
from medzoo.finetune import finetune_split
from medzoo.probe import feature_stats, fit_probe, resolve_device


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
    write_report(rows, keep, cfg, out)
    if cfg.update_zoo:
        write_back_metrics(rows, inits)
    return out


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
