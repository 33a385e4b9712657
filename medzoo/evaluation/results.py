"""What a finished grid leaves behind: the summary and figures, and metrics in the zoo.

Metrics written back to each evaluated zoo entry use one flat schema:
``"<dataset>/<strategy>/<fraction>/<metric>"`` -> mean over seeds, plus ``.../accuracy_sd``,
e.g. ``"crc/probe/1.0/accuracy"``; ``<metric>`` is one of :data:`medzoo.report.METRICS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medzoo import report
from medzoo.evaluation.recipe import EvalConfig


def write_report(rows: list[dict[str, Any]], keep: dict, cfg: EvalConfig, out: Path) -> None:
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
