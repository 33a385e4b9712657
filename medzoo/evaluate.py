"""Evaluation: linear probe, full and surgical fine-tuning over label fractions and seeds.

The public entry points of :mod:`medzoo.evaluation`, kept under their historical module name:
``evaluate(cfg)`` runs a recipe's grid, ``show_plan(cfg)`` prints it without training,
``train_head`` registers a 100 % probe classifier.
"""

from __future__ import annotations

from medzoo.evaluation.classifiers import register_classifier, task_slug
from medzoo.evaluation.recipe import EvalConfig, ProbeConfig, load_eval_config, validate
from medzoo.evaluation.results import metrics_for_zoo, write_back_metrics
from medzoo.evaluation.run import evaluate, show_plan, train_head

__all__ = [
    "EvalConfig",
    "ProbeConfig",
    "evaluate",
    "load_eval_config",
    "metrics_for_zoo",
    "register_classifier",
    "show_plan",
    "task_slug",
    "train_head",
    "validate",
    "write_back_metrics",
]
