"""What a finished grid leaves behind: the summary and figures, and metrics in the zoo.

Metrics written back to each evaluated zoo entry use one flat schema:
``"<dataset>/<strategy>/<budget>/<metric>"`` -> mean over seeds, plus ``.../accuracy_sd``,
e.g. ``"crc/probe/1.0/accuracy"`` or ``"crc/finetune/5shot/accuracy"``; ``<metric>`` is one of :data:`medzoo.report.METRICS`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medzoo import report
from medzoo.evaluation.plan import Plan
from medzoo.evaluation.recipe import EvalConfig


def probe_convergence(rows: list[dict[str, Any]]) -> str:
    """How many of the chosen probe heads stopped on a tolerance rather than on ``max_iter``."""
    probes = [r for r in rows if r.get("probe_converged") is not None]
    if not probes:
        return ""
    converged = sum(bool(r["probe_converged"]) for r in probes)
    iterations = [int(r["probe_iterations"]) for r in probes]
    return (
        f" Chosen probe heads: {converged} of {len(probes)} converged "
        f"({min(iterations)}-{max(iterations)} L-BFGS iterations); {len(probes) - converged} "
        "stopped at `probe.max_iter`."
        if converged < len(probes)
        else f" All {len(probes)} chosen probe heads converged "
        f"({min(iterations)}-{max(iterations)} L-BFGS iterations)."
    )


def protocol_text(cfg: EvalConfig, plan: Plan, rows: list[dict[str, Any]] | None = None) -> str:
    """What every number of the summary means: budgets, selection, baseline init."""
    ft, sg = cfg.finetune, cfg.surgical
    surgical = any(s.startswith("surgical") for s in cfg.strategies)
    surgical_steps = f" (surgical {sg.min_steps}-{sg.max_steps})" if surgical else ""
    surgical_lr = f" (surgical {sg.lr:g})" if surgical else ""
    selection = (
        f"a stratified val subset matched to each train budget (the same share of each class, "
        f"at least {cfg.val_min_per_class} per class; Oliver et al. 2018)"
        if cfg.val_budget == "matched"
        else "the whole val split"
    )
    lines = [
        "**Protocol.** Numbers are on the official test split, read once per run after "
        f"selection. Model selection (probe weight decay, early stopping, surgical-auto block) "
        f'uses {selection} (`val_budget = "{cfg.val_budget}"`). Label budgets are stratified, '
        "seeded and nested; budgets that give the same training subset are trained once.",
        f"Fine-tuning is budgeted in optimiser steps: {ft.min_steps}-{ft.max_steps} steps"
        f"{surgical_steps}, validation every {ft.eval_every_steps}, "
        f"patience {ft.patience} evaluations after the minimum, best state restored; AdamW, "
        f"backbone lr {ft.lr:g}{surgical_lr}, head lr {ft.head_lr:g}, from-scratch lr "
        f"{ft.scratch_lr:g} for random init, weight decay {ft.weight_decay:g} on conv/linear "
        "weights only. The probe is L-BFGS on cached frozen features; the 100 % probe of a "
        "fixed backbone is deterministic and fitted once (sd n/a). Every probe head has its own "
        "L-BFGS state (all heads of a feature set are solved side by side, each as if alone)."
        + probe_convergence(rows or []),
        "`random-r18` is a real random baseline: timm's init with live residual branches "
        "(`zero_init_last=False`), a new draw per seed (its sd includes init variance).",
    ]
    lines += [f"- note: {note}" for note in plan.notes]
    return "\n\n".join(lines[:3]) + ("\n\n" + "\n".join(lines[3:]) if lines[3:] else "")


def write_report(
    rows: list[dict[str, Any]], keep: dict, cfg: EvalConfig, plan: Plan, out: Path
) -> None:
    """``summary.md`` (protocol + tables) and the figures, from the result rows only."""
    from medzoo.provenance import atomic_write_text

    text = report.summary_markdown(
        rows, title=f"Evaluation: {cfg.name}", preamble=protocol_text(cfg, plan, rows)
    )
    atomic_write_text(out / "summary.md", text)
    if not cfg.plots:
        return
    for dataset in cfg.datasets:
        report.plot_fraction_curves(rows, dataset, out / "figures" / f"curves-{dataset}.png")
    for (dataset, init, strategy), (labels, preds, names, budget) in keep.items():
        matrix = report.confusion_matrix(labels, preds, len(names))
        title = f"{dataset}: {init} / {strategy}, {budget} labels (first seed)"
        report.plot_confusion(
            matrix, names, title, out / "figures" / f"confusion-{dataset}-{init}-{strategy}.png"
        )


def metrics_for_zoo(rows: list[dict[str, Any]], init: str) -> dict[str, float]:
    """``{"<dataset>/<strategy>/<budget>/<metric>": mean over seeds, ".../accuracy_sd": sd}``.

    ``<budget>`` is the fraction (``1.0``) or ``<k>shot``. Ordered by dataset, strategy, then
    largest budget first, so that ``medzoo list`` (which shows the first accuracies) shows the
    100 % numbers. A budget run once (the deterministic 100 % probe) has no ``accuracy_sd``.
    """
    sub = [r for r in rows if r["init"] == init]
    stats = {metric: report.aggregate(sub, metric) for metric in report.METRICS}
    key_of = {report.budget_of(r): r.get("budget_key") or str(float(r["fraction"])) for r in sub}
    n_train = {
        (r["dataset"], report.budget_of(r)): r.get("n_train") or r.get("fraction") or 0 for r in sub
    }
    cells = sorted(
        stats["accuracy"], key=lambda k: (k[0], k[2] != "probe", k[2], -n_train[(k[0], k[3])])
    )
    out: dict[str, float] = {}
    for cell in cells:
        dataset, _, strategy, budget = cell
        key = f"{dataset}/{strategy}/{key_of[budget]}"
        for metric in report.METRICS:
            if cell in stats[metric]:
                out[f"{key}/{metric}"] = round(stats[metric][cell][0], 6)
        sd = stats["accuracy"][cell][1]
        if not math.isnan(sd):
            out[f"{key}/accuracy_sd"] = round(sd, 6)
    return out


def write_back_metrics(rows: list[dict[str, Any]], inits: list[str]) -> None:
    from medzoo.zoo.index import update_metrics

    for init in inits:
        metrics = metrics_for_zoo(rows, init)
        if metrics:
            update_metrics(init, metrics)
