"""`medzoo demo` end to end at a tiny scale (~40 s), and the demo recipes' consistency."""

from __future__ import annotations

import json
from pathlib import Path

from medzoo.cli import main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_demo_recipes_fit_together() -> None:
    from medzoo.config import load_pretrain_config
    from medzoo.data.domains import resolve_domain
    from medzoo.evaluate import load_eval_config

    pretrain = load_pretrain_config(RECIPES / "demo.toml")
    evaluation = load_eval_config(RECIPES / "eval-demo.toml")
    assert pretrain.name in evaluation.inits and "random-r18" in evaluation.inits
    assert set(evaluation.datasets) <= set(resolve_domain(pretrain.data.domain))
    assert pretrain.augment.preset == "ct" and evaluation.register_classifiers


def test_demo_runs_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert (
        main(["demo", "--out", str(out), "--size", "32", "--per-class", "12", "--epochs", "1"]) == 0
    )
    summary = (out / "summary.md").read_text()
    assert "demo-bt-liver-r18" in summary and "random-r18" in summary
    assert "(n=" in summary and "**optimiser steps**" in summary and "1000 GPU epochs" in summary
    # every fine-tune run of the demo grid trains at least min_steps, at every budget
    from medzoo.evaluate import load_eval_config

    min_steps = load_eval_config(RECIPES / "eval-demo.toml").finetune.min_steps
    rows = json.loads((out / "eval" / "results.json").read_text())
    tuned = [r for r in rows if r["strategy"] == "finetune"]
    assert {r["budget"] for r in tuned} == {r["budget"] for r in rows} and len(tuned) >= 6
    assert all(r["steps"] >= min_steps for r in tuned), [r["steps"] for r in tuned]
    assert (out / "export" / "model.onnx").is_file()
    assert (out / "bench" / "bench.md").is_file()
    assert (out / "hub" / "model.safetensors").is_file() and (out / "hub" / "README.md").is_file()
    assert list((out / "eval" / "figures").glob("*.png"))
    assert "total:" in capsys.readouterr().out
    # issue 14: the demo's classifier exports to int8 with its accuracy gate (it was refused)
    int8 = out / "export-int8"
    argv = ["export", "demo-bt-liver-r18-axial-organ", "--int8", "--calibration-data"]
    assert main([*argv, str(out / "data"), "--out", str(int8)]) == 0
    check = json.loads((int8 / "export.json").read_text())["parity"]["int8"]
    assert check["passed"] and check["balanced_accuracy_change"] >= -0.01
    assert 0 <= check["top1_agreement"] <= 1 and len(check["per_class"]) == 11
