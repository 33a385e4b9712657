"""Benchmark: the probe sweep, uncached vs cached vs cached + batched, in one run.

The sweep is the paper's: 6 label fractions x 3 seeds for every init, on synthetic crc data at
the demo scale (64 px). "cached" extracts train/val/test features once per init (then reads
them from ``$MEDZOO_HOME/cache/features``) and fits every head from them, as ``medzoo evaluate``
does; "uncached" runs the frozen backbone again for every (fraction, seed), as a probe without a
cache would; "batched" extracts once and fits every (fraction, seed, weight decay) head of an
init in one batched L-BFGS (``medzoo.probe.fit_probes``, what ``medzoo evaluate`` calls), each head
with its own optimiser state, so its accuracies must equal the cached one-by-one sweep's.
Goal (issue 14): batched >= 10x uncached.

``--convergence`` instead measures what the solver's stopping test costs and changes: the first
init's 18 runs fitted with several (gradient tolerance, history) settings, each against heads
converged to 1e-8, in seconds and test-accuracy points.

    .venv/bin/python bench/probe_cache.py [--per-class 40] [--size 64] [--inits random-r18,...]
    .venv/bin/python bench/probe_cache.py --convergence
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def sweep(
    inits: list[str], root: Path, use_cache: bool, fractions: list[float], seeds: list[int]
) -> tuple[float, list[float]]:
    import numpy as np
    import torch

    from medzoo.data.fractions import label_fraction_indices
    from medzoo.evaluation.inits import init_context, split_features
    from medzoo.evaluation.recipe import EvalConfig
    from medzoo.evaluation.run import fit_probe_head, load_splits

    cfg = EvalConfig(datasets=("crc",), inits=tuple(inits), device="cpu", cache_features=use_cache)
    device = torch.device("cpu")
    splits = load_splits(root, "crc", cfg)  # data loading is common to both: not timed
    every_val = np.arange(len(splits["val"]))
    accuracies = []
    start = time.perf_counter()
    for init in inits:
        ctx = init_context(init, splits["train"].channels)
        features = split_features(ctx, splits, root, "crc", cfg, device) if use_cache else {}
        for fraction in fractions:
            for seed in seeds:
                if not use_cache:  # no cache: the backbone runs again for this run
                    features = split_features(ctx, splits, root, "crc", cfg, device)
                subset = label_fraction_indices(splits["train"].labels, fraction, seed)
                head = fit_probe_head(features, splits, subset, every_val, cfg, device)
                predictions = head.logits(features["test"]).argmax(1)
                accuracies.append(float((predictions == splits["test"].labels).float().mean()))
    return time.perf_counter() - start, accuracies


def batched_sweep(
    inits: list[str], root: Path, fractions: list[float], seeds: list[int]
) -> tuple[float, list[float]]:
    import torch

    from medzoo.data.fractions import label_fraction_indices
    from medzoo.evaluation.inits import init_context, split_features
    from medzoo.evaluation.recipe import EvalConfig
    from medzoo.evaluation.run import load_splits
    from medzoo.probe import feature_stats, fit_probes

    cfg = EvalConfig(datasets=("crc",), inits=tuple(inits), device="cpu", cache_features=True)
    device = torch.device("cpu")
    splits = load_splits(root, "crc", cfg)
    accuracies = []
    start = time.perf_counter()
    for init in inits:
        ctx = init_context(init, splits["train"].channels)
        features = split_features(ctx, splits, root, "crc", cfg, device)
        subsets = [
            label_fraction_indices(splits["train"].labels, fraction, seed)
            for fraction in fractions
            for seed in seeds
        ]
        heads = fit_probes(
            features["train"], splits["train"].labels, features["val"], splits["val"].labels,
            splits["train"].num_classes, subsets, weight_decays=cfg.probe.weight_decays,
            max_iter=cfg.probe.max_iter, stats=feature_stats(features["train"]), device=device,
        )  # fmt: skip
        for head in heads:
            predictions = head.logits(features["test"]).argmax(1)
            accuracies.append(float((predictions == splits["test"].labels).float().mean()))
    return time.perf_counter() - start, accuracies


def convergence(init: str, root: Path, fractions: list[float], seeds: list[int]) -> dict:
    import time

    import torch

    from medzoo.data.fractions import label_fraction_indices
    from medzoo.evaluation.inits import init_context, split_features
    from medzoo.evaluation.recipe import EvalConfig
    from medzoo.evaluation.run import load_splits
    from medzoo.probe import feature_stats, fit_probes

    cfg = EvalConfig(datasets=("crc",), inits=(init,), device="cpu")
    splits = load_splits(root, "crc", cfg)
    ctx = init_context(init, splits["train"].channels)
    features = split_features(ctx, splits, root, "crc", cfg, torch.device("cpu"))
    train, val, test = splits["train"], splits["val"], splits["test"]
    subsets = [label_fraction_indices(train.labels, f, s) for f in fractions for s in seeds]

    def fit(max_iter: int, tolerance_grad: float, history_size: int) -> tuple[float, list]:
        start = time.perf_counter()
        heads = fit_probes(
            features["train"], train.labels, features["val"], val.labels, train.num_classes,
            subsets, max_iter=max_iter, stats=feature_stats(features["train"]),
            tolerance_grad=tolerance_grad, history_size=history_size,
        )  # fmt: skip
        return time.perf_counter() - start, heads

    def accuracy(head) -> float:
        return float((head.logits(features["test"]).argmax(1) == test.labels).float().mean())

    _, reference = fit(2000, 1e-8, 20)
    rows = []
    for max_iter, tolerance, history in ((100, 1e-6, 20), (200, 1e-6, 20), (100, 1e-6, 10), (100, 1e-4, 20),
                                         (100, 1e-4, 10), (100, 1e-5, 10)):  # fmt: skip
        seconds, heads = fit(max_iter, tolerance, history)
        gaps = [100 * abs(accuracy(h) - accuracy(r)) for h, r in zip(heads, reference, strict=True)]
        rows.append({
            "max_iter": max_iter, "tolerance_grad": tolerance, "history_size": history,
            "seconds": round(seconds, 2), "mean_iterations": sum(h.iterations for h in heads) / len(heads),
            "converged": sum(h.converged for h in heads), "runs": len(heads),
            "same_weight_decay": sum(h.weight_decay == r.weight_decay for h, r in zip(heads, reference, strict=True)),
            "max_test_points_from_converged": round(max(gaps), 2),
            "mean_test_points_from_converged": round(sum(gaps) / len(gaps), 2),
        })  # fmt: skip
    return {"init": init, "reference": "max_iter 2000, tolerance_grad 1e-8", "settings": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--inits", default="random-r18,bench-r18")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--convergence", action="store_true", help="time and accuracy of stopping-test settings"
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEDZOO_HOME"] = str(Path(tmp) / "home")  # a cold, private cache
        from medzoo.data.synth import write_synthetic
        from medzoo.models import create_backbone
        from medzoo.zoo.entry import ZooEntry
        from medzoo.zoo.index import save_entry

        root = Path(tmp) / "mimeta"
        write_synthetic(root, ["crc"], size=args.size, per_class=args.per_class, seed=0)
        inits = args.inits.split(",")
        if (
            "bench-r18" in inits
        ):  # a second backbone with its own weights (a stand-in for bt-crc-r18)
            torch.manual_seed(1)
            save_entry(
                ZooEntry(name="bench-r18", method="barlow-twins", datasets=("crc",)),
                create_backbone().state_dict(),
            )
        fractions, seeds = [0.005, 0.01, 0.1, 0.25, 0.5, 1.0], [0, 1, 2]
        if args.convergence:
            print(json.dumps(convergence(inits[0], root, fractions, seeds), indent=2))
            return
        uncached, acc_uncached = sweep(inits, Path(root), False, fractions, seeds)
        for stale in (Path(tmp) / "home" / "cache").rglob("*.safetensors"):
            stale.unlink()  # the cached and batched sweeps start cold, as a first evaluation does
        cached, acc_cached = sweep(inits, root, True, fractions, seeds)
        for stale in (Path(tmp) / "home" / "cache").rglob("*.safetensors"):
            stale.unlink()
        batched, acc_batched = batched_sweep(inits, root, fractions, seeds)
        result = {
            "runs": len(acc_cached),
            "inits": inits,
            "images_per_extraction": "train+val+test of synthetic crc",
            "per_class": args.per_class,
            "size": args.size,
            "threads": args.threads,
            "cached_s": round(cached, 2),
            "uncached_s": round(uncached, 2),
            "batched_s": round(batched, 2),
            "speedup": round(uncached / cached, 1),
            "batched_speedup": round(uncached / batched, 1),
            "batched_goal_10x_met": uncached / batched >= 10,
            "same_accuracies": acc_cached == acc_uncached,
            "batched_max_accuracy_difference_vs_cached": max(
                abs(a - b) for a, b in zip(acc_batched, acc_cached, strict=True)
            ),
            "machine": "shared with other jobs: compare the ratios, not the seconds",
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
