"""Running a plan: each planned run trains on its subset, selects on val, then scores on test.

:func:`evaluate` validates the recipe, makes the plan (:mod:`medzoo.evaluation.plan`) and runs it.
Every run reads only the train subset and its validation subset while it trains and selects
(probe weight decay, early stopping, the surgical-auto block); the test split is read once, in
:func:`score_on_test`, after selection is over. The probe trains from features cached once per
(weights, dataset, split, preprocessing) (:mod:`medzoo.probe`); fine-tuning lives in
:mod:`medzoo.finetune`; results, the summary and zoo write-back in
:mod:`medzoo.evaluation.results`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medzoo import report
from medzoo.config import to_dict
from medzoo.data.fractions import stratified_indices
from medzoo.errors import MedzooError
from medzoo.evaluation.classifiers import register_classifier
from medzoo.evaluation.inits import InitContext, init_context, is_random, split_features
from medzoo.evaluation.plan import Plan, PlannedRun, make_plan, plan_text
from medzoo.evaluation.recipe import SPLITS, EvalConfig, Strategy, validate
from medzoo.evaluation.results import write_back_metrics, write_report
from medzoo.finetune import FinetuneResult, finetune_split, predict_probs
from medzoo.probe import ProbeHead, feature_stats, fit_probe, fit_probes, resolve_device

log = logging.getLogger("medzoo")


# --------------------------------------------------------------------------- the plan


def read_class_counts(root: Path, dataset: str, task: str | None) -> tuple[list[int], list[int]]:
    """Train and val images per class, from the label and split files only (no images)."""
    from medzoo.data.mimeta import class_names, read_info, read_labels, split_indices, task_info

    entry = task_info(read_info(root, dataset), task)
    labels = read_labels(root, dataset, entry["task_name"])
    num_classes = len(class_names(entry))
    counts = []
    for split in ("train", "val"):
        rows = split_indices(root, dataset, split)
        counts.append(np.bincount(labels[rows], minlength=num_classes).tolist())
    empty = [c for c, n in enumerate(counts[0]) if n == 0]
    if empty:
        raise MedzooError(
            f"{dataset}: class(es) {', '.join(map(str, empty))} have no training images, so no "
            "label budget can hold one image per class; check the dataset's train split"
        )
    return counts[0], counts[1]


def plan_grid(cfg: EvalConfig, root: Path) -> tuple[Plan, list[str]]:
    """Validate the recipe and plan its grid; returns the plan and the inits that will run."""
    inits, strategies = validate(cfg, root)
    counts = {d: read_class_counts(root, d, cfg.tasks.get(d)) for d in cfg.datasets}
    random_inits = frozenset(i for i in inits if is_random(i))
    return make_plan(cfg, inits, strategies, counts, random_inits), inits


def show_plan(cfg: EvalConfig, *, data_root: str | Path | None = None) -> str:
    """The plan of ``cfg`` as text (``medzoo evaluate --plan``): nothing is trained or written."""
    from medzoo.config import data_root as resolve_root

    plan, _ = plan_grid(cfg, resolve_root(data_root or cfg.data_root))
    return plan_text(cfg, plan)


# --------------------------------------------------------------------------- one run


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


class InitRunner:
    """One init on one dataset: its contexts (one per seed for a random init) and features.

    Train and val features are extracted (or read from the cache) when a run first needs them;
    test features only by :meth:`test_features`, which scoring alone calls. :meth:`fit_probes`
    fits the probe heads of many runs at once; :meth:`probe_head` hands them out.
    """

    def __init__(
        self, init: str, dataset: str, splits: dict[str, Any], root: Path, cfg: EvalConfig,
        device: torch.device,
    ) -> None:  # fmt: skip
        self.init, self.dataset, self.splits, self.root = init, dataset, splits, root
        self.cfg, self.device = cfg, device
        self.random = is_random(init)
        self._features: dict[tuple[int | None, str], torch.Tensor] = {}
        # (features' seed, budget key, run seed) -> (probe head, its share of the fit's seconds)
        self._heads: dict[tuple[int | None, str, int], tuple[ProbeHead, float]] = {}

    def context(self, seed: int) -> InitContext:
        return init_context(self.init, self.splits["train"].channels, seed if self.random else None)

    def _get(self, ctx: InitContext, split: str) -> torch.Tensor:
        if (ctx.seed, split) not in self._features:
            subset = {split: self.splits[split]}
            feats = split_features(ctx, subset, self.root, self.dataset, self.cfg, self.device)
            self._features[(ctx.seed, split)] = feats[split]
        return self._features[(ctx.seed, split)]

    def features(self, ctx: InitContext) -> dict[str, torch.Tensor]:
        """Train and val features (for fitting and selecting a probe)."""
        return {split: self._get(ctx, split) for split in ("train", "val")}

    def test_features(self, ctx: InitContext) -> torch.Tensor:
        return self._get(ctx, "test")

    def _head_key(self, run: PlannedRun) -> tuple[int | None, str, int]:
        # the features' seed as init_context sets it (only a random init has one), without
        # reading the registry again for every run
        return (run.seed if self.random else None, run.budget.key, run.seed)

    def fit_probes(self, runs: list[PlannedRun]) -> None:
        """Fit the probe heads of ``runs`` (probe and LP-FT runs) together: one batched L-BFGS
        per feature set (:func:`medzoo.probe.fit_probes`), each head with its own optimiser
        state, so every head equals the one a single run would fit. Two runs on the same
        subset (a probe and an LP-FT start) share one head."""
        groups: dict[int | None, dict[tuple[int | None, str, int], PlannedRun]] = {}
        for run in runs:
            if run.strategy.kind in ("probe", "lp-ft"):
                key = self._head_key(run)
                groups.setdefault(key[0], {}).setdefault(key, run)
        train, val = self.splits["train"], self.splits["val"]
        for by_key in groups.values():
            ctx = self.context(next(iter(by_key.values())).seed)
            features = self.features(ctx)
            subsets = [run_subsets(self, run) for run in by_key.values()]
            start = time.perf_counter()
            heads = fit_probes(
                features["train"], train.labels, features["val"], val.labels, train.num_classes,
                [s for s, _ in subsets], [v for _, v in subsets],
                weight_decays=self.cfg.probe.weight_decays, max_iter=self.cfg.probe.max_iter,
                stats=feature_stats(features["train"]), device=self.device,
            )  # fmt: skip
            share = (time.perf_counter() - start) / len(heads)
            for key, head in zip(by_key, heads, strict=True):
                self._heads[key] = (head, share)

    def probe_head(
        self, run: PlannedRun, subset: np.ndarray, val_subset: np.ndarray
    ) -> tuple[ProbeHead, float]:
        """The run's probe head, and its share of the seconds of a batched fit that ran before
        this run: charged to the first run that takes the head (0 after that, and 0 when the
        head is fitted now, inside the run's own time)."""
        key = self._head_key(run)
        if key not in self._heads:
            ctx = self.context(run.seed)
            head = fit_probe_head(
                self.features(ctx), self.splits, subset, val_subset, self.cfg, self.device
            )
            self._heads[key] = (head, 0.0)
        head, seconds = self._heads[key]
        self._heads[key] = (head, 0.0)
        return head, seconds


def run_subsets(runner: InitRunner, run: PlannedRun) -> tuple[np.ndarray, np.ndarray]:
    """The run's labelled train subset and its validation subset (stratified, by its seed)."""
    train, val = runner.splits["train"], runner.splits["val"]
    budget = run.budget
    subset = stratified_indices(train.labels, dict(enumerate(budget.per_class)), run.seed)
    val_subset = stratified_indices(val.labels, dict(enumerate(budget.val_per_class)), run.seed)
    return subset, val_subset


def fit_probe_head(
    features: dict[str, torch.Tensor],
    splits: dict[str, Any],
    subset: np.ndarray,
    val_subset: np.ndarray,
    cfg: EvalConfig,
    device: torch.device,
) -> Any:
    """The linear probe on ``subset``, its weight decay chosen on ``val_subset``."""
    train, val = splits["train"], splits["val"]
    idx, vidx = torch.from_numpy(subset), torch.from_numpy(val_subset)
    return fit_probe(
        features["train"][idx], train.labels[idx], features["val"][vidx], val.labels[vidx],
        train.num_classes, weight_decays=cfg.probe.weight_decays, max_iter=cfg.probe.max_iter,
        stats=feature_stats(features["train"]), device=device,
    )  # fmt: skip


def _finetune(
    runner: InitRunner,
    ctx: InitContext,
    strategy: Strategy,
    groups: tuple[str, ...] | None,
    subset: np.ndarray,
    val_subset: np.ndarray,
    seed: int,
    head: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> FinetuneResult:
    cfg = runner.cfg
    surgical = strategy.kind.startswith("surgical")
    return finetune_split(
        runner.init, runner.splits, subset, config=cfg.surgical if surgical else cfg.finetune,
        mean=ctx.mean, std=ctx.std, in_chans=ctx.in_chans, device=runner.device,
        trainable_groups=groups, dataset=runner.dataset, data_root=runner.root, seed=seed,
        precision=cfg.precision,
        val_subset=val_subset, from_scratch=runner.random, init_seed=ctx.seed, head=head,
    )  # fmt: skip


def select(
    runner: InitRunner, run: PlannedRun, subset: np.ndarray, val_subset: np.ndarray
) -> tuple[Any, dict[str, Any]]:
    """Train and select one run on train + val only; returns what scoring needs and the row."""
    strategy, ctx = run.strategy, runner.context(run.seed)
    if strategy.kind == "probe":
        head, seconds = runner.probe_head(run, subset, val_subset)
        return (ctx, head), {
            "val_accuracy": head.val_accuracy, "weight_decay": head.weight_decay,
            "probe_iterations": head.iterations, "probe_converged": head.converged,
            "fit_seconds": round(seconds, 3),
        }  # fmt: skip
    start_head, fit_seconds = None, 0.0
    if strategy.kind == "lp-ft":  # Kumar et al. 2022: fine-tune from the fitted linear probe
        probe, fit_seconds = runner.probe_head(run, subset, val_subset)
        start_head = probe.folded()
    candidates = [(g,) for g in strategy.groups] if strategy.kind == "surgical-auto" else [None]
    if strategy.kind == "surgical":
        candidates = [strategy.groups]
    best: tuple[tuple[str, ...] | None, FinetuneResult] | None = None
    for groups in candidates:
        result = _finetune(runner, ctx, strategy, groups, subset, val_subset, run.seed, start_head)
        if best is None or result.val_accuracy > best[1].val_accuracy:
            best = (groups, result)  # ties keep the earlier (shallower) block
    groups, result = best
    row = {
        "val_accuracy": result.val_accuracy, "steps": result.steps, "best_step": result.best_step,
        "lr": result.lr, "head_lr": result.head_lr,
        "surgical_block": "+".join(groups) if groups else "", "fit_seconds": round(fit_seconds, 3),
    }  # fmt: skip
    return (ctx, result.model), row


def score_on_test(runner: InitRunner, run: PlannedRun, chosen: Any) -> np.ndarray:
    """Test probabilities of the selected model: the only place a run reads the test split."""
    ctx, model = chosen
    if run.strategy.kind == "probe":
        return torch.softmax(model.logits(runner.test_features(ctx)), 1).cpu().numpy()
    test = runner.splits["test"]
    return predict_probs(
        model, test.images, ctx.mean, ctx.std, in_chans=ctx.in_chans, device=runner.device,
        batch_size=runner.cfg.finetune.eval_batch_size, precision=runner.cfg.precision,
    )  # fmt: skip


def run_one(runner: InitRunner, run: PlannedRun) -> tuple[dict[str, Any], np.ndarray, Any]:
    """One cell of the grid: its result row, test probabilities, and the probe head (if any)."""
    start = time.perf_counter()
    train, val, test = (runner.splits[s] for s in SPLITS)
    budget = run.budget
    subset, val_subset = run_subsets(runner, run)
    chosen, extra = select(runner, run, subset, val_subset)
    probs = score_on_test(runner, run, chosen)
    metrics = report.classification_metrics(test.labels.numpy(), probs, test.class_names)
    row = {
        "dataset": run.dataset, "task": train.task, "init": run.init,
        "strategy": run.strategy.name, "budget": budget.label, "budget_key": budget.key,
        "fraction": budget.fraction, "shots": budget.shots, "seed": run.seed,
        "n_train": len(subset), "images_per_class": budget.images_per_class,
        "n_val_used": len(val_subset), "val_budget": runner.cfg.val_budget,
        "n_val": len(val), "n_test": len(test),
        **{m: metrics[m] for m in report.METRICS}, "steps": 0, "best_step": 0, "lr": None,
        "head_lr": None, "surgical_block": "", "weight_decay": None, "probe_iterations": None,
        "probe_converged": None, "fit_seconds": 0.0, **extra,
        "merged_budgets": ", ".join(budget.merged), "recall": metrics["recall"],
    }  # fmt: skip
    # a batched probe fit ran before this run: its share counts here, not where it ran
    row["seconds"] = round(time.perf_counter() - start + row.pop("fit_seconds"), 3)
    head = chosen[1] if run.strategy.kind == "probe" else None
    return row, probs, head


# --------------------------------------------------------------------------- the grid


# long: runs the plan: the loop that ties selection, scoring and reporting together
def evaluate(
    cfg: EvalConfig, *, data_root: str | Path | None = None, out: str | Path | None = None
) -> Path:
    """Run the recipe's plan; returns the run folder (results, summary, figures, provenance)."""
    from medzoo.config import data_root as resolve_root
    from medzoo.config import dump_toml
    from medzoo.progress import Counter
    from medzoo.provenance import (
        atomic_write_json,
        atomic_write_text,
        ensure_writable_dir,
        provenance,
    )

    root = resolve_root(data_root or cfg.data_root)
    plan, inits = plan_grid(cfg, root)
    out = Path(out) if out is not None else default_out(cfg)
    if (out / "results.json").exists():
        raise MedzooError(f"{out} already holds results; choose another --out or remove it")
    device = resolve_device(cfg.device)
    ensure_writable_dir(out, what="the evaluation folder")  # before any work, not after it
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "recipe.json", to_dict(cfg))
    atomic_write_text(out / "recipe.toml", dump_toml(to_dict(cfg)))  # re-runnable as is
    atomic_write_text(out / "plan.md", plan_text(cfg, plan))
    atomic_write_json(
        out / "provenance.json",
        {**provenance(), "data_root": str(root), "device": str(device), "inits": inits},
    )
    for note in plan.notes:
        log.info("medzoo: note: %s", note)
    rows: list[dict[str, Any]] = []
    keep: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray, tuple[str, ...], str]] = {}
    bar = Counter(len(plan.runs), desc="evaluate", unit="run")
    first_seed = min(cfg.seeds)
    for dataset in cfg.datasets:
        splits = load_splits(root, dataset, cfg)
        largest = plan.budgets[dataset][-1]
        for init in inits:
            runner = InitRunner(init, dataset, splits, root, cfg, device)
            full_head = None  # the probe on 100 % of the labels, for a classifier entry
            runs = [r for r in plan.runs if (r.dataset, r.init) == (dataset, init)]
            bar.note(f"{dataset} {init}: fitting the probe heads")
            runner.fit_probes(runs)
            for run in runs:
                bar.note(f"{dataset} {init} {run.strategy.name} {run.budget.label} s{run.seed}")
                row, probs, head = run_one(runner, run)
                rows.append(row)
                if head is not None and run.budget.full:
                    full_head = full_head or head
                if run.budget == largest and run.seed == first_seed:
                    test = splits["test"]
                    keep[(dataset, init, run.strategy.name)] = (
                        test.labels.numpy(), probs.argmax(1), test.class_names, largest.label,
                    )  # fmt: skip
                bar.advance()
                if run.seed == max(cfg.seeds) or run.budget.full:
                    report.write_results(rows, out)  # a crash keeps what was done
            _after_init(runner, full_head, cfg, out)
    bar.close()
    report.write_results(rows, out)
    write_report(rows, keep, cfg, plan, out)
    if cfg.update_zoo:
        write_back_metrics(rows, inits)
        from medzoo.zoo.index import attach_evaluation

        for init in inits:  # summary and figures into the entry, for its model card
            attach_evaluation(init, out)
    return out


def _after_init(runner: InitRunner, full_head: Any, cfg: EvalConfig, out: Path) -> None:
    """t-SNE of the test features, and the 100 % probe registered as a classifier."""
    test, train = runner.splits["test"], runner.splits["train"]
    ctx = runner.context(min(cfg.seeds))
    if cfg.plots and cfg.tsne:
        report.plot_tsne(
            runner.test_features(ctx).numpy(), test.labels.numpy(), test.class_names,
            f"t-SNE of {runner.init} test features on {runner.dataset}",
            out / "figures" / f"tsne-{runner.dataset}-{runner.init}.png",
            max_points=cfg.tsne_max_points,
        )  # fmt: skip
    # random features are not worth deploying: no classifier entry for them
    if cfg.register_classifiers and not runner.random:
        everything = np.arange(len(train))
        head = full_head or fit_probe_head(
            runner.features(ctx), runner.splits, everything, np.arange(len(runner.splits["val"])),
            cfg, runner.device,
        )  # fmt: skip
        probs = torch.softmax(head.logits(runner.test_features(ctx)), 1).cpu().numpy()
        metrics = report.classification_metrics(test.labels.numpy(), probs, test.class_names)
        register_classifier(ctx, head, runner.dataset, train, metrics, recipe=to_dict(cfg))


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
    """Train the probe on 100 % of ``dataset``'s train labels and register it as a classifier.

    The weight decay is chosen on the whole val split (the budget is every label).
    """
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
        val_budget="full",
    )
    root = resolve_root(data_root)
    if name is not None:
        from medzoo.zoo.entry import validate_name

        validate_name(name)
    validate(cfg, root)
    runner = InitRunner(
        init, dataset, load_splits(root, dataset, cfg), root, cfg, resolve_device(device)
    )
    ctx = runner.context(0)
    splits = runner.splits
    head = fit_probe_head(
        runner.features(ctx), splits, np.arange(len(splits["train"])),
        np.arange(len(splits["val"])), cfg, runner.device,
    )  # fmt: skip
    test = splits["test"]
    probs = torch.softmax(head.logits(runner.test_features(ctx)), 1).cpu().numpy()
    metrics = report.classification_metrics(test.labels.numpy(), probs, test.class_names)
    registered = register_classifier(
        ctx, head, dataset, splits["train"], metrics, name=name, recipe=to_dict(cfg)
    )
    return registered, metrics
