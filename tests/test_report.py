"""Metrics, result tables, the summary and the figures."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from medzoo import report

NAMES = ("adipose", "background", "smooth muscle")


def _rows() -> list[dict]:
    rows = []
    for init, base in (("bt-crc-r18", 0.8), ("random-r18", 0.4)):
        for fraction in (0.01, 0.1, 1.0):
            for seed in (0, 1):
                acc = base + 0.1 * fraction + 0.01 * seed
                rows.append({
                    "dataset": "crc", "task": "tissue class", "init": init, "strategy": "probe",
                    "fraction": fraction, "seed": seed, "n_test": 30, "accuracy": acc,
                    "balanced_accuracy": acc, "macro_f1": acc, "macro_auroc": math.nan,
                    "recall": {n: acc for n in NAMES},
                })  # fmt: skip
    return rows


def test_metrics_by_hand_with_a_class_missing_from_test():
    labels = np.array([0, 0, 1, 1])  # class 2 never occurs in this test set
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7]])
    m = report.classification_metrics(labels, probs, NAMES)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx(0.5)  # recall 0.5 and 0.5, class 2 left out
    assert m["recall"]["adipose"] == 0.5 and math.isnan(m["recall"]["smooth muscle"])
    # AUROC one-vs-rest over the classes present: class 0 scores 0.9, 0.2 vs 0.1, 0.1 -> 1.0;
    # class 1 scores 0.8, 0.2 vs 0.05, 0.7 -> 0.75
    assert m["macro_auroc"] == pytest.approx((1.0 + 0.75) / 2)
    # macro-F1 over classes in labels or predictions (preds 0, 1, 1, 2):
    # f1(0) = 2/3 (P 1, R 1/2), f1(1) = 1/2 (P 1/2, R 1/2), f1(2) = 0 (predicted, never true)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_auroc_is_nan_with_one_class():
    m = report.classification_metrics(
        np.array([1, 1]), np.array([[0.2, 0.8, 0.0], [0.6, 0.4, 0.0]]), NAMES
    )
    assert math.isnan(m["macro_auroc"]) and m["accuracy"] == 0.5


def test_write_results_csv_and_json(tmp_path):
    rows = _rows()
    csv_path, json_path = report.write_results(rows, tmp_path)
    with open(csv_path) as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows) == 12
    assert "recall[smooth muscle]" in table[0] and table[0]["macro_auroc"] == ""
    data = json.loads(json_path.read_text())
    assert len(data) == 12 and data[0]["macro_auroc"] is None and data[0]["recall"]["adipose"] > 0


def test_summary_is_mean_and_sd_over_seeds():
    text = report.summary_markdown(_rows())
    # bt at 100 %: accuracies 0.9 and 0.91 -> 90.50 +- 0.71
    assert "| bt-crc-r18 | probe |" in text and "90.50 ± 0.71" in text
    assert "| 1 % | 10 % | 100 % |" in text


def test_aggregate_counts_seeds():
    stats = report.aggregate(_rows())
    mean, sd, n = stats[("crc", "random-r18", "probe", "100 %")]
    assert n == 2 and mean == pytest.approx(0.505) and sd == pytest.approx(0.00707, abs=1e-4)


def _valid_png(path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_figures_are_valid_pngs(tmp_path):
    _valid_png(report.plot_fraction_curves(_rows(), "crc", tmp_path / "curves.png"))
    matrix = report.confusion_matrix(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]), 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    _valid_png(report.plot_confusion(matrix, NAMES, "test", tmp_path / "cm.png"))
    rng = np.random.default_rng(0)
    features = rng.normal(size=(12, 8)).astype(np.float32)  # small N: perplexity must adapt
    labels = np.arange(12) % 3
    _valid_png(report.plot_tsne(features, labels, NAMES, "tsne", tmp_path / "tsne.png"))
    assert report.plot_tsne(features[:3], labels[:3], NAMES, "tsne", tmp_path / "none.png") is None
