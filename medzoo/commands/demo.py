"""`medzoo demo`: the whole product end to end on synthetic data (what `make demo` runs)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run everything end to end on synthetic data, on CPU, in minutes",
        description="Write synthetic MIMeta data, pre-train Barlow Twins briefly, evaluate probe and "
        "fine-tuning against random init over label fractions and seeds, register the model and its "
        "probe classifier, export to ONNX with the parity check, benchmark torch vs onnxruntime, "
        "write a dry-run Hub folder, and print a summary.",
    )
    parser.add_argument("--out", default="runs/demo", help="demo folder (default: runs/demo)")
    parser.add_argument(
        "--size", type=int, default=64, help="image size of the synthetic data (default: 64)"
    )
    parser.add_argument(
        "--per-class", type=int, default=40, help="train images per class (default: 40)"
    )
    parser.add_argument(
        "--epochs", type=int, help="pre-training epochs (default: recipes/demo.toml)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medzoo.demo import run_demo

    run_demo(args.out, size=args.size, per_class=args.per_class, epochs=args.epochs)
    return 0
