"""`make demo`: the whole product end to end on the embedded default, on CPU, in minutes.

Synthetic MIMeta data -> Barlow Twins pre-training (``recipes/demo.toml``) -> evaluation against
random init, and ImageNet when its weights are cached (``recipes/eval-demo.toml``) -> the 100 %
probe registered as a classifier -> ONNX export with the parity check -> torch vs onnxruntime
benchmark -> a dry-run Hub folder -> a summary table. Every step is a library call; this module
only strings them together and reports.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medzoo.errors import MedzooError

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _recipe(name: str) -> Path:
    path = RECIPES / name
    if not path.is_file():
        raise MedzooError(f"recipe {path} is missing: run the demo from a medzoo checkout")
    return path


class _Steps:
    """Prints each step as it starts and keeps its wall time for the summary."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.times: dict[str, float] = {}

    def run(self, title: str, fn: Callable[[], Any]) -> Any:
        self.count += 1
        print(f"\n== [{self.count}/{self.total}] {title}", flush=True)
        start = time.perf_counter()
        result = fn()
        self.times[title] = time.perf_counter() - start
        print(f"   ({self.times[title]:.0f} s)", flush=True)
        return result


# long: the demo's script, one library call per step, read top to bottom
def run_demo(
    out: str | Path = "runs/demo",
    *,
    size: int = 64,
    per_class: int = 40,
    epochs: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the demo into ``out`` (data, runs, exports) and return its summary."""
    from medzoo.config import load_pretrain_config
    from medzoo.data.mimeta import KNOWN_DATASETS
    from medzoo.data.synth import write_synthetic
    from medzoo.evaluate import evaluate, load_eval_config, task_slug
    from medzoo.export.bench import run_bench
    from medzoo.export.onnx import export_model
    from medzoo.pretrain import pretrain
    from medzoo.zoo.hub import save_for_hub

    out = Path(out)
    overrides = [f"data.image_size={size}"]
    if epochs is not None:
        overrides.append(f"training.epochs={epochs}")
    cfg = load_pretrain_config(_recipe("demo.toml"), overrides)
    eval_cfg = load_eval_config(_recipe("eval-demo.toml"), [f"image_size={size}"])
    data = out / "data"
    steps = _Steps(7)
    started = time.perf_counter()

    # The demo owns `out`: earlier demo outputs are replaced, nothing else is touched.
    for sub in ("pretrain", "eval", "export", "bench", "hub"):
        shutil.rmtree(out / sub, ignore_errors=True)

    def synth() -> None:
        if (data / "organs_axial" / "info.yaml").is_file():
            print(f"   reusing synthetic data in {data}")
            return
        write_synthetic(data, size=size, per_class=per_class, seed=seed)

    steps.run(
        f"synthetic MIMeta data ({size} px, {per_class} train images per class) -> {data}", synth
    )
    entry_folder = steps.run(
        f"Barlow Twins pre-training of {cfg.name} ({cfg.training.epochs} epochs, CPU)",
        lambda: pretrain(cfg, data_root=data, out=out / "pretrain", overwrite=True),
    )
    from medzoo.monitor import summary_line

    print(f"   {summary_line(out / 'pretrain' / 'train_log.jsonl') or 'monitor: off'}")
    run_dir = steps.run(
        "evaluation: linear probe and step-budgeted fine-tune vs a real random init, over "
        "distinct label budgets and seeds",
        lambda: evaluate(eval_cfg, data_root=data, out=out / "eval"),
    )
    dataset = eval_cfg.datasets[0]
    task = eval_cfg.tasks.get(dataset) or KNOWN_DATASETS[dataset].task
    classifier = f"{cfg.name}-{task_slug(dataset, task)}"  # the name evaluation registers
    export = steps.run(
        f"ONNX export of {classifier} with the torch-vs-onnxruntime parity check",
        lambda: export_model(classifier, out / "export", data_root=data),
    )
    bench = steps.run(
        "benchmark: torch eager vs onnxruntime (CPU)",
        lambda: run_bench(
            classifier,
            batch_sizes=(1, 32),
            out=out / "bench",
            export_dir=out / "export",
            iterations=10,
        ),
    )
    hub = steps.run(
        f"dry-run Hugging Face Hub folder for {cfg.name}",
        lambda: save_for_hub(cfg.name, out / "hub"),
    )

    def summarise() -> dict[str, Any]:
        summary = {
            "backbone": str(entry_folder),
            "evaluation": str(run_dir),
            "export": str(export.path),
            "bench": str(out / "bench" / "bench.md"),
            "hub": str(hub),
            "seconds": round(time.perf_counter() - started),
        }
        text = _summary_text(run_dir, export, bench, summary, steps.times)
        (out / "summary.md").write_text(text, encoding="utf-8")
        print(text)
        return summary

    return steps.run("summary", summarise)


def _summary_text(
    run_dir: Path, export: Any, bench: dict[str, Any], paths: dict, times: dict
) -> str:
    lines = ["# medzoo demo", ""]
    summary_md = Path(run_dir) / "summary.md"
    if summary_md.is_file():
        lines += [
            "## Evaluation (test accuracy, mean +- sd over seeds)",
            "",
            "What this shows: the whole pipeline, the evaluation protocol and the artefacts. A few "
            "CPU minutes of Barlow Twins on synthetic slices are not the paper's 1000 GPU epochs, "
            "so the comparison with the true random baseline (live residual branches, a new draw "
            "per seed) is reported as it comes out, whichever wins; it says nothing about the "
            "paper's claim.",
            "",
            summary_md.read_text().strip(),
            "",
        ]
    parity = export.parity.get("fp32", {})
    lines += [
        "## Export",
        "",
        f"- {export.path}: max abs error {parity.get('max_abs', float('nan')):.2e}, "
        f"max rel error {parity.get('max_rel', float('nan')):.2e}, "
        f"top-1 mismatches {parity.get('top1_mismatches', 'n/a')}",
        "",
    ]
    bench_md = Path(paths["bench"])
    if bench_md.is_file():
        lines += ["## Benchmark", "", bench_md.read_text().strip(), ""]
    lines += ["## Outputs", ""]
    lines += [f"- {key}: {value}" for key, value in paths.items() if key != "seconds"]
    plots = sorted(Path(run_dir).rglob("*.png"))
    lines += [f"- plot: {p}" for p in plots]
    lines += ["", "## Time per step", ""]
    lines += [f"- {title}: {seconds:.0f} s" for title, seconds in times.items()]
    lines += [f"- total: {paths['seconds']} s", ""]
    return "\n".join(lines)
