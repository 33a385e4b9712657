"""The grid plan: which runs an evaluation recipe makes, as a pure function of the recipe.

A plan is datasets x inits x strategies x label budgets x seeds, with two reductions that keep
every reported number honest:

- **Budgets that give the same subset are one budget.** On organs (< 150 train images per class)
  0.5 % and 1 % both keep one image per class: the same training subset, so it is trained once and
  reported once, under the first label, with a note naming the merged ones. A budget is a fraction
  of each class (``fractions``) or a number of images per class (``shots``), resolved against the
  train split's class counts into images per class; two budgets are the same when those counts are.
- **Deterministic runs run once.** The probe on 100 % of the labels of a fixed backbone sees the
  same subset and the same features for every seed (L-BFGS, full batch): it is fitted once and its
  sd is n/a, not a fake 0. A random-init backbone is drawn per seed, so its runs stay per seed.

``make_plan`` needs only class counts, so ``medzoo evaluate --plan`` prints the whole grid (runs,
subset sizes, step budgets) without loading an image or training anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from medzoo.data.fractions import per_class_count
from medzoo.evaluation.recipe import EvalConfig, Strategy


@dataclass(frozen=True)
class Budget:
    """One distinct label budget of one dataset: how many train (and val) images per class."""

    label: str  # "10 %" or "5-shot": the summary's column
    key: str  # "0.1" or "5shot": the zoo metric key
    fraction: float | None  # the recipe's fraction, or None for shots
    shots: int | None
    per_class: tuple[int, ...]  # train images per class
    val_per_class: tuple[int, ...]  # val images per class used for model selection
    full: bool  # the whole train split
    merged: tuple[str, ...] = ()  # labels of budgets that gave the same subset

    @property
    def n_train(self) -> int:
        return sum(self.per_class)

    @property
    def n_val(self) -> int:
        return sum(self.val_per_class)

    @property
    def images_per_class(self) -> str:
        low, high = min(self.per_class), max(self.per_class)
        return str(low) if low == high else f"{low}-{high}"


@dataclass(frozen=True)
class PlannedRun:
    dataset: str
    init: str
    strategy: Strategy
    budget: Budget
    seed: int


@dataclass(frozen=True)
class Plan:
    runs: tuple[PlannedRun, ...]
    budgets: dict[str, tuple[Budget, ...]]  # per dataset, smallest first
    notes: tuple[str, ...] = field(default=())


def _val_counts(
    per_class: Sequence[int], train: Sequence[int], val: Sequence[int], cfg: EvalConfig
) -> tuple[int, ...]:
    """Val images per class: all of them ("full"), or the train budget's share of each class,
    at least ``val_min_per_class`` ("matched")."""
    if cfg.val_budget == "full":
        return tuple(val)
    return tuple(
        min(v, max(cfg.val_min_per_class, per_class_count(v, k / n))) if n else v
        for k, n, v in zip(per_class, train, val)
    )


def label_budgets(
    cfg: EvalConfig, train_counts: Sequence[int], val_counts: Sequence[int]
) -> tuple[tuple[Budget, ...], tuple[str, ...]]:
    """The distinct budgets of one dataset (smallest first) and a note per merged budget."""
    asked: list[tuple[str, str, float | None, int | None, tuple[int, ...]]] = []
    for fraction in cfg.fractions:
        counts = tuple(per_class_count(n, fraction) if n else 0 for n in train_counts)
        asked.append((f"{fraction * 100:g} %", str(float(fraction)), float(fraction), None, counts))
    for shot in cfg.shots:
        counts = tuple(min(n, shot) for n in train_counts)
        asked.append((f"{shot}-shot", f"{shot}shot", None, int(shot), counts))
    by_counts: dict[tuple[int, ...], list] = {}
    for item in asked:
        by_counts.setdefault(item[4], []).append(item)
    budgets, notes = [], []
    for counts, same in by_counts.items():
        label, key, fraction, shots, _ = same[0]
        merged = tuple(other[0] for other in same[1:])
        if merged:
            notes.append(
                f"{label} and {', '.join(merged)} give the same subset "
                f"({sum(counts)} images, {_per_class_text(counts)} per class): trained once, "
                f"reported as {label}"
            )
        budgets.append(
            Budget(
                label,
                key,
                fraction,
                shots,
                counts,
                _val_counts(counts, train_counts, val_counts, cfg),
                full=tuple(counts) == tuple(train_counts),
                merged=merged,
            )  # fmt: skip
        )
    return tuple(sorted(budgets, key=lambda b: (b.n_train, b.label))), tuple(notes)


def _per_class_text(counts: Sequence[int]) -> str:
    low, high = min(counts), max(counts)
    return str(low) if low == high else f"{low}-{high}"


def make_plan(
    cfg: EvalConfig,
    inits: Sequence[str],
    strategies: Sequence[Strategy],
    class_counts: dict[str, tuple[Sequence[int], Sequence[int]]],
    random_inits: frozenset[str] = frozenset(),
) -> Plan:
    """Every run of the grid, in execution order.

    Args:
        class_counts: dataset -> (train images per class, val images per class).
        random_inits: inits drawn per seed (random initialisation): never deduplicated over seeds.
    """
    runs, budgets, notes = [], {}, []
    first_seed = min(cfg.seeds)
    for dataset in cfg.datasets:
        train, val = class_counts[dataset]
        budgets[dataset], merged = label_budgets(cfg, train, val)
        notes += [f"{dataset}: {note}" for note in merged]
        for init in inits:
            for strategy in strategies:
                for budget in budgets[dataset]:
                    once = strategy.kind == "probe" and budget.full and init not in random_inits
                    for seed in (first_seed,) if once else cfg.seeds:
                        runs.append(PlannedRun(dataset, init, strategy, budget, int(seed)))
    full = any(b.full for bs in budgets.values() for b in bs)
    if len(cfg.seeds) > 1 and full and any(s.kind == "probe" for s in strategies):
        notes.append(
            "the 100 % probe of a fixed backbone is deterministic (same subset, L-BFGS): "
            f"fitted once (seed {first_seed}), sd n/a"
        )
    return Plan(tuple(runs), budgets, tuple(notes))


def step_budget(cfg: EvalConfig, strategy: Strategy) -> str:
    """What one run of ``strategy`` may spend, in words."""
    if strategy.kind == "probe":
        return f"L-BFGS <= {cfg.probe.max_iter} it"
    hp = cfg.surgical if strategy.kind.startswith("surgical") else cfg.finetune
    text = f"{hp.min_steps}-{hp.max_steps} steps"
    if strategy.kind == "surgical-auto":
        text = f"{len(strategy.groups)} x {text}"
    if strategy.kind == "lp-ft":
        text = f"probe + {text}"
    return text


def plan_text(cfg: EvalConfig, plan: Plan) -> str:
    """The plan as a table: one line per run, then the notes and the totals."""
    lines = [
        f"# plan of {cfg.name}: {len(plan.runs)} runs",
        "",
        "| dataset | init | strategy | budget | n_train | per class | n_val used | seed | budget of steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in plan.runs:
        b = run.budget
        lines.append(
            f"| {run.dataset} | {run.init} | {run.strategy.name} | {b.label} | {b.n_train} | "
            f"{b.images_per_class} | {b.n_val} | {run.seed} | {step_budget(cfg, run.strategy)} |"
        )
    if plan.notes:
        lines += ["", *[f"- note: {note}" for note in plan.notes]]
    return "\n".join(lines) + "\n"
