"""Classifier entries: a backbone plus its fitted linear probe, registered in the zoo."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from medzoo import report
from medzoo.evaluation.inits import InitContext

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
