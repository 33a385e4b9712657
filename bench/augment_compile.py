"""Augmentation compiled (``augment.compile``) against eager, per sample, in one process.

Every variant makes the same two views of the same uint8 images from the same per-sample
parameters (drawn once, eagerly, by ``TwoViewAugment.sample_params``):

- ``eager``: what runs without compile: on CPU chunks of ~4 images at 224 px, ops with p < 1
  computed on the selected samples only (index selection);
- ``eager-where``: the graph-friendly pass run eagerly (whole batch, every op on every sample,
  ``torch.where`` selection): what compile starts from;
- ``compiled``: ``augment.compile = true``: ``torch.compile(fullgraph=True)`` of that pass over
  the whole batch (the library's choice);
- ``compiled-chunks``: the same graph compiled with ``dynamic=False`` and run over the eager
  path's CPU chunks; a ragged last chunk costs one more compile (counted below).

Compile time is measured on the first call and excluded from the per-sample times: the best of
``--repeats`` rounds after one warm call, the variants timed round robin so that a burst of load
from other jobs hits all of them. Output: one JSON line per (size, batch, variant); ``x_eager``
is eager's time over the variant's, from the same rounds.

With ``--step-sizes``, the same process then runs the whole CPU pre-training step
(``medzoo.pretrain.benchmark`` with the breakdown, ``recipes/demo.toml``: ct preset, 1 channel)
at that size and batch with ``augment.compile`` false, then true.

Run (docs/benchmarks.md; 1 thread, as two threads on a shared 2-core machine stall on the busy
core; a fresh Inductor cache so that the first call times a cold compile):

    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) PYTHONPATH=. .venv/bin/python bench/augment_compile.py \
        --presets histology,ct --sizes 64,224 --batch 50 --threads 1 --repeats 3 \
        --step-sizes 64 --step-steps 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from medzoo.config import AugmentConfig, default_mean_std
from medzoo.data.augment import TwoViewAugment, ViewParams, resolve_augment


def _chunks(aug: TwoViewAugment, images: torch.Tensor, params: ViewParams, graph) -> torch.Tensor:
    """``graph`` (a compiled ``apply_graph``) over the CPU chunks that eager ``apply`` uses."""
    pixels = max(images.shape[2] * images.shape[3], aug.image_size**2)
    chunk = max(1, aug.cpu_chunk_pixels // pixels)
    parts = []
    for start in range(0, images.shape[0], chunk):
        rows = slice(start, start + chunk)
        fields = {name: value[rows] for name, value in vars(params).items()}
        parts.append(graph(images[rows], ViewParams(**fields)))
    return torch.cat(parts)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(preset: str, size: int, batch: int, repeats: int, variants: list[str]) -> list[dict]:
    """One row per variant for ``batch`` images of ``size`` px (see the module docstring)."""
    channels = 1 if preset == "ct" else 3
    mean, std = default_mean_std(channels)
    params = resolve_augment(AugmentConfig(preset=preset))
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=gen)
    eager = TwoViewAugment(params, size, mean, std)
    compiled = TwoViewAugment(params, size, mean, std, compile=True)
    views = [eager.sample_params(images, view, gen) for view in (0, 1)]
    static = torch.compile(eager.apply_graph, fullgraph=True, dynamic=False)
    runs = {
        "eager": lambda: [eager.apply(images, p) for p in views],
        "eager-where": lambda: [eager.apply_graph(images, p) for p in views],
        "compiled": lambda: [compiled.apply(images, p) for p in views],
        "compiled-chunks": lambda: [_chunks(eager, images, p, static) for p in views],
    }
    reference = runs["eager"]()
    first, graphs, error = {}, {}, {}
    for name in variants:  # first call (compiles), a warm call, the error against eager
        torch._dynamo.utils.counters.clear()
        first[name] = _seconds(runs[name])
        graphs[name] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        error[name] = max((a - b).abs().max().item() for a, b in zip(runs[name](), reference))
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):  # round robin: a burst of load hits every variant alike
        for name in variants:
            best[name] = min(best[name], _seconds(runs[name]))
    torch._dynamo.reset()
    return [
        {
            "preset": preset,
            "size": size,
            "batch": batch,
            "threads": torch.get_num_threads(),
            "variant": name,
            "ms_per_sample_two_views": 1000 * best[name] / batch,
            "x_eager": best["eager"] / best[name] if "eager" in best else None,
            "first_call_s": first[name],
            "graphs_compiled": graphs[name],
            "max_abs_diff_vs_eager": error[name],
        }
        for name in variants
    ]


def step(size: int, batch: int, steps: int) -> list[dict]:
    """The demo recipe's whole CPU step with the augmentation eager, then compiled."""
    from medzoo.config import load_pretrain_config
    from medzoo.pretrain import benchmark

    rows = []
    for compiled in (False, True):
        overrides = [f"data.image_size={size}", f"training.batch_size={batch}"]
        cfg = load_pretrain_config(
            "recipes/demo.toml", [*overrides, f"augment.compile={str(compiled).lower()}"]
        )
        result = benchmark(cfg, steps, synthetic=True, warmup_steps=1, breakdown=True)
        phases = result["breakdown"]["phase_seconds"]
        rows.append(
            {
                "step": "demo.toml",
                "size": size,
                "batch": batch,
                "threads": torch.get_num_threads(),
                "compile_augment": result["compile_augment"],
                "samples_per_s": result["samples_per_s"],
                "augment_s_per_step": phases["augment"],
                "augment_share": result["breakdown"]["phase_fractions"]["augment"],
                "bare_loop_samples_per_s": result["breakdown"]["bare_loop_samples_per_s"],
                "loop_efficiency": result["loop_efficiency"],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="histology", help="histology, ct or both")
    parser.add_argument("--sizes", default="64,224")
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="eager,eager-where,compiled,compiled-chunks")
    parser.add_argument("--step-sizes", default="", help="also time the whole step at these")
    parser.add_argument("--step-steps", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    for preset in args.presets.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for row in measure(preset, size, args.batch, args.repeats, variants):
                print(json.dumps(row), flush=True)
    for size in (int(s) for s in args.step_sizes.split(",") if s):
        for row in step(size, args.batch, args.step_steps):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
