"""Metrics, result tables, the markdown summary and the figures of an evaluation run.

- :func:`classification_metrics`: accuracy, balanced accuracy, macro-F1, macro AUROC
  (one-vs-rest over the classes present in the test labels) and per-class recall.
- :func:`write_results`: ``results.csv`` and ``results.json``, one row per run, atomically.
- :func:`summary_markdown`: the paper's tables, mean +- sd over seeds, rows init x strategy,
  columns label fractions, one table per dataset and metric.
- :func:`plot_fraction_curves`, :func:`plot_confusion`, :func:`plot_tsne`: PNG figures (the
  paper's Fig. 1/4, 2/3/5/6 and 7/8) with readable class names, drawn with matplotlib's Agg
  backend (imported lazily, as is sklearn.manifold).
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medzoo.provenance import atomic_path, atomic_write_json, atomic_write_text

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc")


# --------------------------------------------------------------------------- metrics


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Metrics of predicted probabilities ``[N, K]`` against integer ``labels``.

    Classes absent from ``labels`` (possible on small test sets) are left out of the balanced
    accuracy and the AUROC, and their recall is NaN; macro-F1 averages over the classes that
    occur in the labels or the predictions. AUROC is NaN when fewer than two classes occur.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        f1_score,
        recall_score,
        roc_auc_score,
    )

    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    preds = probs.argmax(1)
    num_classes = len(class_names)
    present = [c for c in range(num_classes) if np.any(labels == c)]
    per_class = recall_score(
        labels, preds, labels=list(range(num_classes)), average=None, zero_division=np.nan
    ) if len(labels) else np.full(num_classes, math.nan)  # fmt: skip
    recall = {name: float(per_class[c]) for c, name in enumerate(class_names)}
    f1_labels = sorted(set(present) | set(np.unique(preds).tolist()))
    macro_f1 = f1_score(labels, preds, labels=f1_labels, average="macro", zero_division=0)
    aurocs = []
    if len(present) >= 2:
        for c in present:
            aurocs.append(roc_auc_score(labels == c, probs[:, c]))
    with warnings.catch_warnings():  # classes only predicted, never true: ignored, as documented
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(labels, preds) if present else math.nan
    return {
        "accuracy": float(accuracy_score(labels, preds)) if len(labels) else math.nan,
        "balanced_accuracy": float(balanced),
        "macro_f1": float(macro_f1),
        "macro_auroc": float(np.mean(aurocs)) if aurocs else math.nan,
        "recall": recall,
    }


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]`` (sklearn.metrics.confusion_matrix over all classes)."""
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    return sk_confusion_matrix(labels, preds, labels=list(range(num_classes))).astype(np.int64)


# --------------------------------------------------------------------------- tables


def flat_row(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row: per-class recall spread into ``recall[<class>]`` columns."""
    out = {k: v for k, v in row.items() if k != "recall"}
    for name, value in (row.get("recall") or {}).items():
        out[f"recall[{name}]"] = value
    return out


def write_results(
    rows: Sequence[dict[str, Any]], folder: str | os.PathLike[str]
) -> tuple[Path, Path]:
    """``results.json`` (rows as they are) and ``results.csv`` (flattened), atomically."""
    folder = Path(folder)
    flat = [flat_row(r) for r in rows]
    columns: list[str] = []
    for r in flat:
        columns += [k for k in r if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for r in flat:
        writer.writerow(
            {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        )
    atomic_write_text(folder / "results.csv", buffer.getvalue())
    atomic_write_json(folder / "results.json", [_json_safe(r) for r in rows])
    return folder / "results.csv", folder / "results.json"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def budget_of(row: dict[str, Any]) -> str:
    """A row's label budget, the summary's column: ``"10 %"``, ``"5-shot"``."""
    return row.get("budget") or format_fraction(row["fraction"])


def aggregate(
    rows: Sequence[dict[str, Any]], metric: str = "accuracy"
) -> dict[tuple, tuple[float, float, int]]:
    """``(dataset, init, strategy, budget) -> (mean, sd, n_runs)`` of ``metric``.

    The sd of a single run is NaN (reported as n/a), never a fake 0.
    """
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        value = r.get(metric)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            groups[(r["dataset"], r["init"], r["strategy"], budget_of(r))].append(float(value))
    out = {}
    for key, values in groups.items():
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        out[key] = (float(np.mean(values)), sd, len(values))
    return out


def _ordered(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def format_fraction(fraction: float) -> str:
    return f"{fraction * 100:g} %"


def budget_columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(budget, header)`` per distinct budget, smallest subset first; the header carries
    ``n_train`` and the images per class."""
    sizes: dict[str, tuple[int, str, float]] = {}
    for r in rows:
        sizes.setdefault(
            budget_of(r),
            (
                int(r.get("n_train") or 0),
                str(r.get("images_per_class", "")),
                r.get("fraction") or 0,
            ),
        )
    order = sorted(sizes, key=lambda b: (sizes[b][0], sizes[b][2], b))
    columns = []
    for budget in order:
        n, per_class, _ = sizes[budget]
        detail = f"n={n}, {per_class}/class" if per_class else f"n={n}"
        columns.append((budget, f"{budget} ({detail})" if n else budget))
    return columns


def _cell(stat: tuple[float, float, int] | None, scale: float = 100.0, digits: int = 2) -> str:
    if stat is None or math.isnan(stat[0]):
        return "-"
    mean, sd, _ = stat
    spread = "n/a" if math.isnan(sd) else f"{sd * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {spread}"


# long: the summary's sections in reading order
def summary_markdown(
    rows: Sequence[dict[str, Any]],
    *,
    metrics: Sequence[str] = ("accuracy", "balanced_accuracy"),
    title: str = "Evaluation",
    preamble: str = "",
) -> str:
    """The paper's tables: test metric in %, mean ± sd over seeds, per dataset; columns are the
    distinct label budgets with their ``n_train``; then the optimiser steps of trained runs."""
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble.strip(), ""]
    for dataset in _ordered(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == dataset]
        columns = budget_columns(sub)
        pairs = _ordered((r["init"], r["strategy"]) for r in sub)
        seeds = sorted(set(r["seed"] for r in sub))
        lines += [f"## {dataset} ({sub[0].get('task', '')})", ""]
        lines += [
            f"Test split, n = {sub[0].get('n_test', '?')}; seeds {', '.join(map(str, seeds))}.",
            "",
        ]
        header = "| init | strategy | " + " | ".join(h for _, h in columns) + " |"
        rule = "|---|---|" + "---|" * len(columns)
        for metric in metrics:
            stats = aggregate(sub, metric)
            lines += [f"**{metric.replace('_', ' ')}** (%, mean ± sd)", "", header, rule]
            for init, strategy in pairs:
                cells = [_cell(stats.get((dataset, init, strategy, b))) for b, _ in columns]
                lines.append(f"| {init} | {strategy} | " + " | ".join(cells) + " |")
            lines.append("")
        trained = [
            (i, s)
            for i, s in pairs
            if any(r.get("steps") for r in sub if (r["init"], r["strategy"]) == (i, s))
        ]
        if trained:
            steps, best = aggregate(sub, "steps"), aggregate(sub, "best_step")
            lines += [
                "**optimiser steps** (mean; best step restored in brackets)",
                "",
                header,
                rule,
            ]
            for init, strategy in trained:
                cells = []
                for b, _ in columns:
                    run, chosen = (
                        steps.get((dataset, init, strategy, b)),
                        best.get((dataset, init, strategy, b)),
                    )
                    cells.append("-" if run is None else f"{run[0]:.0f} ({chosen[0]:.0f})")
                lines.append(f"| {init} | {strategy} | " + " | ".join(cells) + " |")
            lines.append("")
        blocks = _ordered(
            (r["init"], r["strategy"], budget_of(r), r["surgical_block"])
            for r in sub if r.get("surgical_block") and r["strategy"] == "surgical-auto"
        )  # fmt: skip
        if blocks:
            lines += ["**surgical-auto: block chosen on val** (per seed)", ""]
            for init, strategy in _ordered((i, s) for i, s, _, _ in blocks):
                for b, _ in columns:
                    chosen = [
                        r["surgical_block"]
                        for r in sub
                        if (r["init"], r["strategy"], budget_of(r)) == (init, strategy, b)
                    ]
                    if chosen:
                        lines.append(f"- {init} / {b}: {', '.join(chosen)}")
            lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_fraction_curves(
    rows: Sequence[dict[str, Any]],
    dataset: str,
    path: str | os.PathLike[str],
    metric: str = "accuracy",
) -> Path:
    """Test ``metric`` against label fraction (log x), one line per init x strategy, sd bars."""
    plt = _pyplot()
    sub = [r for r in rows if r["dataset"] == dataset]
    stats = aggregate(sub, metric)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    n_train = {budget_of(r): r.get("n_train") or r["fraction"] for r in sub}
    for init, strategy in _ordered((r["init"], r["strategy"]) for r in sub):
        points = sorted(
            (n_train[b], *stats[(d, i, s, b)][:2])
            for (d, i, s, b) in stats
            if (i, s) == (init, strategy)
        )
        if not points:
            continue
        xs, ys, sds = zip(*points)
        ax.errorbar(
            np.array(xs, dtype=float),
            np.array(ys) * 100,
            yerr=np.nan_to_num(np.array(sds, dtype=float)) * 100,
            marker="o",
            capsize=3,
            label=f"{init} / {strategy}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images (n_train)")
    ax.set_ylabel(f"test {metric.replace('_', ' ')} (%)")
    ax.set_title(f"{dataset}: {metric.replace('_', ' ')} vs label budget (mean ± sd over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_confusion(
    matrix: np.ndarray, class_names: Sequence[str], title: str, path: str | os.PathLike[str]
) -> Path:
    """A row-normalised confusion matrix (each true class sums to 1), with class names."""
    plt = _pyplot()
    totals = matrix.sum(1, keepdims=True)
    normalised = np.divide(
        matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0
    )
    size = max(5.0, 0.6 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    for i in ticks:
        for j in ticks:
            value = normalised[i, j]
            if value >= 0.005:
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > 0.5 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_tsne(
    features: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    title: str,
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    max_points: int = 2000,
) -> Path | None:
    """A 2-D t-SNE map of ``features`` coloured by class; None when there are too few points.

    The perplexity (default 30) shrinks to ``(N - 1) / 3`` for small test sets, since t-SNE
    needs perplexity < N. Above ``max_points`` a seeded, uniform subsample is drawn (Barnes-Hut
    t-SNE of the 7,180 crc test images alone takes minutes on a CPU).
    """
    from sklearn.manifold import TSNE

    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    if len(features) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(features), max_points, replace=False))
        features, labels = features[keep], labels[keep]
    if len(features) < 5:
        return None
    perplexity = float(min(30.0, max(1.0, (len(features) - 1) / 3)))
    # exact t-SNE is O(N^2) but, below a thousand points, far faster than Barnes-Hut's overhead
    method = "exact" if len(features) <= 1000 else "barnes_hut"
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, method=method)
    embedding = tsne.fit_transform(features)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab20" if len(class_names) > 10 else "tab10")
    for c, name in enumerate(class_names):
        mask = labels == c
        if mask.any():
            ax.scatter(
                embedding[mask, 0], embedding[mask, 1], s=8, color=cmap(c % cmap.N), label=name
            )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    return _save(fig, path)
