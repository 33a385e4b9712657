"""The evaluation protocol (issue 10): what each cell of the grid measures.

A real random baseline, step budgets, distinct label budgets, the deterministic 100 % probe run
once, model selection on val only (a spy on the test split), the plan printed without training.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from medzoo.cli import main
from medzoo.config import from_dict
from medzoo.errors import MedzooError
from medzoo.evaluate import EvalConfig, evaluate
from medzoo.evaluation.plan import make_plan
from medzoo.evaluation.recipe import parse_strategy
from medzoo.finetune import SurgicalConfig

TINY_FT = {
    "min_steps": 3,
    "max_steps": 6,
    "eval_every_steps": 1,
    "patience": 1,
    "batch_size": 8,
    "eval_batch_size": 128,
    "augment": False,
}


def _cfg(**changes) -> EvalConfig:
    raw = {
        "name": "eval-protocol",
        "datasets": ["organs_axial"],
        "inits": ["random-r18"],
        "strategies": ["probe"],
        "fractions": [0.1, 1.0],
        "seeds": [0],
        "device": "cpu",
        "probe": {"weight_decays": [1e-3, 1e-1], "max_iter": 20},
        "finetune": TINY_FT,
        "surgical": TINY_FT,
        "plots": False,
        "tsne": False,
        "update_zoo": False,
    }
    raw.update(changes)
    return from_dict(EvalConfig, raw)


# --------------------------------------------------------------------------- random baseline


def test_random_backbone_has_live_residual_branches_and_is_drawn_per_seed():
    import medzoo

    first, again, second = (medzoo.load("random-r18", seed=s) for s in (0, 0, 1))
    bn_last = [k for k in first.state_dict() if k.endswith("bn2.weight") and k.startswith("layer")]
    assert len(bn_last) == 8  # the last BatchNorm of each of the 8 basic blocks
    for key in bn_last:  # zero_init_last=True would make these exactly zero
        assert first.state_dict()[key].abs().min() > 0, key
    assert torch.equal(first.conv1.weight, again.conv1.weight)  # a seed is reproducible
    differ = [
        k
        for k in first.state_dict()
        if not torch.equal(first.state_dict()[k], second.state_dict()[k])
    ]
    assert {k.split(".")[0] for k in differ} >= {"conv1", "layer1", "layer2", "layer3", "layer4"}
    # in eval mode every residual branch contributes: a block is not its shortcut
    block = first.layer1[0].eval()
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(block(x), torch.relu(x))
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8).float() / 255
    with torch.no_grad():
        assert not torch.allclose(first(images), second(images))


def test_a_seed_is_refused_for_fixed_weights():
    import medzoo
    from medzoo.models import create_backbone
    from medzoo.zoo.entry import ZooEntry
    from medzoo.zoo.index import save_entry

    save_entry(
        ZooEntry(name="bt-seedless-r18", method="barlow-twins"), create_backbone().state_dict()
    )
    medzoo.load("bt-seedless-r18")
    with pytest.raises(MedzooError, match="seed= applies to random-init"):
        medzoo.load("bt-seedless-r18", seed=1)


# --------------------------------------------------------------------------- the plan


def test_plan_merges_budgets_that_give_the_same_subset_and_fits_the_full_probe_once():
    cfg = _cfg(fractions=[0.005, 0.01, 0.1, 1.0], shots=[1, 5], seeds=[0, 1, 2],
               strategies=["probe", "finetune"], inits=["bt-x", "random-r18"])  # fmt: skip
    strategies = [parse_strategy(s, SurgicalConfig()) for s in cfg.strategies]
    counts = {"organs_axial": ([79] * 10 + [60], [14] * 11)}
    plan = make_plan(cfg, ["bt-x", "random-r18"], strategies, counts, frozenset({"random-r18"}))
    budgets = plan.budgets["organs_axial"]
    assert [b.label for b in budgets] == ["0.5 %", "5-shot", "10 %", "100 %"]
    assert budgets[0].merged == ("1 %", "1-shot") and budgets[0].n_train == 11
    assert len({b.per_class for b in budgets}) == len(budgets)  # no two columns share a subset
    assert any("0.5 % and 1 %, 1-shot give the same subset" in n for n in plan.notes)
    assert budgets[2].per_class == (8,) * 10 + (6,) and budgets[3].full
    # matched val: the train share of each class, at least val_min_per_class (5)
    assert budgets[0].val_per_class == (5,) * 11 and budgets[3].val_per_class == (14,) * 11

    def seeds(init: str, strategy: str, label: str) -> list[int]:
        return [
            r.seed
            for r in plan.runs
            if (r.init, r.strategy.name, r.budget.label) == (init, strategy, label)
        ]

    assert seeds("bt-x", "probe", "100 %") == [0]  # deterministic: once
    assert seeds("random-r18", "probe", "100 %") == [0, 1, 2]  # a new backbone per seed
    assert seeds("bt-x", "finetune", "100 %") == [0, 1, 2]  # SGD: per seed
    assert seeds("bt-x", "probe", "0.5 %") == [0, 1, 2]
    full = make_plan(dataclasses.replace(cfg, val_budget="full"), ["bt-x"], strategies, counts)
    assert full.budgets["organs_axial"][0].val_per_class == (14,) * 11


def test_cli_plan_prints_the_grid_and_writes_nothing(synth_root, tmp_path, capsys):
    recipe = tmp_path / "eval-plan.toml"
    recipe.write_text(
        'datasets = ["organs_axial"]\ninits = ["random-r18"]\nstrategies = ["probe", "surgical-auto"]\n'
        "fractions = [0.05, 0.1, 1.0]\nshots = [2]\nseeds = [0, 1]\ndevice = 'cpu'\n"
    )
    code = main(
        [
            "evaluate",
            str(recipe),
            "--plan",
            "--data-root",
            str(synth_root),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    # 12 train images per class: 5 % and 10 % both keep 1 per class; 2-shot keeps 2
    assert "| organs_axial | random-r18 | surgical-auto | 2-shot | 22 | 2 |" in out
    assert "5 x 200-2000 steps" in out and "5 % and 10 % give the same subset" in out
    assert not (tmp_path / "run").exists() and not (tmp_path / "medzoo-home" / "cache").exists()


# --------------------------------------------------------------------------- running


def test_trained_runs_meet_min_steps_and_carry_their_choices(synth_root, tmp_path):
    cfg = _cfg(strategies=["finetune", "lp-ft", "surgical-auto"], fractions=[0.1, 1.0])
    out = evaluate(cfg, data_root=synth_root, out=tmp_path / "run")
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 3 * 2
    for r in rows:
        assert r["steps"] >= TINY_FT["min_steps"] and 1 <= r["best_step"] <= r["steps"]
        assert r["lr"] == 3e-3 and r["head_lr"] == 1e-3  # random init: the from-scratch rate
        assert r["n_val_used"] <= r["n_val"] and r["val_budget"] == "matched"
    small = [r for r in rows if r["budget"] == "10 %"]
    # 3 val images per class here, fewer than val_min_per_class (5): all of them are used
    assert {r["n_train"] for r in small} == {11} and {r["n_val_used"] for r in small} == {33}
    blocks = {r["surgical_block"] for r in rows if r["strategy"] == "surgical-auto"}
    assert blocks <= {"stem", "layer1", "layer2", "layer3", "layer4"} and blocks
    summary = (out / "summary.md").read_text()
    assert "**Protocol.**" in summary and "zero_init_last=False" in summary
    assert "10 % (n=11, 1/class)" in summary and "**optimiser steps**" in summary
    assert "surgical-auto: block chosen on val" in summary
    assert (out / "plan.md").is_file()


class _TestSpy(torch.Tensor):
    """A tensor that records every torch operation on it, with the phase it happened in."""

    phase = ["outside"]
    reads: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.reads.append(cls.phase[0])
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


def test_the_test_split_is_read_only_for_final_scoring(synth_root, tmp_path, monkeypatch):
    from medzoo.evaluation import run

    load_splits, select = run.load_splits, run.select

    def spied_splits(*args, **kwargs):
        splits = load_splits(*args, **kwargs)
        test = splits["test"]
        splits["test"] = dataclasses.replace(test, images=test.images.as_subclass(_TestSpy))
        return splits

    def spied_select(*args, **kwargs):
        _TestSpy.phase[0] = "selection"
        try:
            return select(*args, **kwargs)
        finally:
            _TestSpy.phase[0] = "scoring"

    monkeypatch.setattr(run, "load_splits", spied_splits)
    monkeypatch.setattr(run, "select", spied_select)
    _TestSpy.reads.clear()
    cfg = _cfg(
        strategies=["probe", "finetune", "lp-ft", "surgical-auto"],
        fractions=[0.1],
        cache_features=False,
    )
    evaluate(cfg, data_root=synth_root, out=tmp_path / "run")
    assert "selection" not in _TestSpy.reads  # never touched while choosing
    assert _TestSpy.reads.count("scoring") > 0  # but read to score: the spy works


# --------------------------------------------------------------------------- batched probe heads


def test_probe_heads_are_fitted_in_one_batched_call_per_feature_set_and_equal_single_fits(
    synth_root, tmp_path, monkeypatch
):
    """evaluate fits every probe head of a feature set in ONE fit_probes call (per seed for a
    random init, whose features differ per seed); each head has its own L-BFGS state, so the
    grid's rows are those of fitting every run by itself."""
    import medzoo.evaluation.run as run_module
    from medzoo.probe import fit_probe

    real = run_module.fit_probes
    calls: list[int] = []

    def spy(*args, **kwargs):
        calls.append(len(args[5]))
        return real(*args, **kwargs)

    def one_by_one(tx, ty, vx, vy, classes, subsets, val_subsets, **kwargs):
        return [
            fit_probe(tx[torch.as_tensor(s)], ty[torch.as_tensor(s)], vx[torch.as_tensor(v)],
                      vy[torch.as_tensor(v)], classes, **kwargs)
            for s, v in zip(subsets, val_subsets, strict=True)
        ]  # fmt: skip

    cfg = _cfg(fractions=[0.1, 0.5, 1.0], seeds=[0, 1], probe={"weight_decays": [1e-4, 1e-2]})
    monkeypatch.setattr(run_module, "fit_probes", spy)
    out = evaluate(cfg, data_root=synth_root, out=tmp_path / "a")
    batched = json.loads((out / "results.json").read_text())
    summary = (out / "summary.md").read_text()
    assert "probe heads" in summary and "L-BFGS iterations" in summary
    # one call per seed (a random init's features differ per seed), each with 10 %, 50 %, 100 %
    assert calls == [3, 3]
    monkeypatch.setattr(run_module, "fit_probes", one_by_one)
    single = json.loads(
        (evaluate(cfg, data_root=synth_root, out=tmp_path / "b") / "results.json").read_text()
    )
    assert len(batched) == len(single) == 6
    for a, b in zip(batched, single, strict=True):
        assert (a["budget"], a["seed"]) == (b["budget"], b["seed"])
        assert a["probe_iterations"] == b["probe_iterations"] > 0
        assert isinstance(a["probe_converged"], bool)
        assert a["weight_decay"] == b["weight_decay"]
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-9)
        assert a["balanced_accuracy"] == pytest.approx(b["balanced_accuracy"], abs=1e-9)
