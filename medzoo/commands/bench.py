"""CLI: ``medzoo bench NAME`` (inference providers) and ``medzoo bench pretrain RECIPE`` (training)."""

from __future__ import annotations

import argparse
import json

from medzoo.commands.common import add_data_root, add_json, add_set_option, refuse_unused

# flags of one benchmark that do nothing for the other: refused, never silently ignored
PRETRAIN_ONLY = {"--steps": "steps", "--synthetic": "synthetic", "--data-root": "data_root",
                 "--set": "overrides"}  # fmt: skip
INFERENCE_ONLY = {"--batch-sizes": "batch_sizes", "--providers": "providers", "--out": "out",
                  "--export-dir": "export_dir", "--iterations": "iterations",
                  "--warmup": "warmup", "--compile": "compile", "--no-torch": "no_torch"}  # fmt: skip

DESCRIPTION = """\
Two benchmarks share this command:

  medzoo bench NAME [--batch-sizes 1,8,32] [--providers cpu,cuda,tensorrt] [--out DIR]
      inference latency (p50/p95) and throughput of zoo model NAME in torch (eager,
      channels_last, --compile) and onnxruntime (CPU, int8 when exported, CUDA with
      IOBinding, TensorRT); writes bench.json and bench.md (default: exports/NAME/).
      Providers that cannot run here are reported as not available.

  medzoo bench pretrain RECIPE [--steps N] [--data-root ROOT] [--set key=value ...]
      pre-training steps per second and images per second for a recipe; --breakdown adds
      the time of each phase and the step against a bare loop on the same views.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark inference of a zoo model, or pre-training of a recipe",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target", metavar="NAME|pretrain", help="a zoo model name, or the word `pretrain`"
    )
    parser.add_argument(
        "recipe", nargs="?", metavar="RECIPE", help="with `pretrain`: the recipe TOML file"
    )
    model = parser.add_argument_group("inference (medzoo bench NAME)")
    model.add_argument("--batch-sizes", help="comma-separated batch sizes (default 1,8,32)")
    model.add_argument("--providers", help="comma-separated: cpu, cuda, tensorrt (default cpu)")
    model.add_argument("--out", metavar="DIR", help="report folder (default exports/NAME)")
    model.add_argument(
        "--export-dir", metavar="DIR", help="the model's ONNX export (default exports/NAME)"
    )
    model.add_argument(
        "--iterations", type=int, help="timed iterations per batch size (default 20)"
    )
    model.add_argument("--warmup", type=int, help="discarded warm-up iterations (default 3)")
    model.add_argument("--compile", action="store_true", help="add torch.compile rows")
    model.add_argument(
        "--no-torch", action="store_true", help="skip the torch rows (onnxruntime only)"
    )
    train = parser.add_argument_group("pre-training (medzoo bench pretrain RECIPE)")
    train.add_argument("--steps", type=int, help="timed training steps (default 20)")
    train.add_argument(
        "--synthetic",
        action="store_true",
        help="random uint8 images at the recipe's size in memory instead of a data root",
    )
    add_data_root(train, recipe=True)
    train.add_argument(
        "--breakdown",
        action="store_true",
        help="also time data, augmentation, forward, loss, backward and optimiser separately "
        "and report the step against a bare loop on the same views (goal >= 0.9)",
    )
    add_set_option(train, "training.batch_size=1024")
    add_json(parser, "the report (both benchmarks)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medzoo.errors import MedzooError

    if args.target == "pretrain":
        if not args.recipe:
            raise MedzooError(
                "medzoo bench pretrain needs a recipe: medzoo bench pretrain recipes/pretrain-crc.toml"
            )
        refuse_unused(
            args, INFERENCE_ONLY, "for `medzoo bench pretrain` (they are for `bench NAME`)"
        )
        return _pretrain(args)
    if args.recipe:
        raise MedzooError(
            f"unexpected argument {args.recipe!r}: a recipe goes with `medzoo bench pretrain RECIPE`"
        )
    refuse_unused(args, PRETRAIN_ONLY, "for `medzoo bench NAME` (they are for `bench pretrain`)")
    from medzoo.export.bench import parse_batch_sizes, run_bench

    report = run_bench(
        args.target,
        batch_sizes=parse_batch_sizes(args.batch_sizes or "1,8,32"),
        providers=[p.strip() for p in (args.providers or "cpu").split(",") if p.strip()],
        out=args.out,
        export_dir=args.export_dir,
        iterations=20 if args.iterations is None else args.iterations,
        warmup=3 if args.warmup is None else args.warmup,
        compile=args.compile,
        torch_baseline=not args.no_torch,
    )
    from pathlib import Path

    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(Path(report["out_dir"], "bench.md").read_text(), end="")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from medzoo import pretrain
    from medzoo.config import load_pretrain_config

    cfg = load_pretrain_config(args.recipe, args.overrides)
    result = pretrain.benchmark(
        cfg,
        steps=20 if args.steps is None else args.steps,
        data_root=args.data_root,
        synthetic=args.synthetic,
        breakdown=args.breakdown,
    )
    print(json.dumps(result, indent=None if args.json else 2, default=str))
    return 0
