"""`medzoo pretrain`: run a pre-training recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from medzoo.commands.common import add_data_root, add_quiet, add_set_option, progress_enabled
from medzoo.errors import MedzooError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pre-train a backbone with Barlow Twins from a recipe",
        description="Pre-train a timm backbone with Barlow Twins on a MIMeta domain, as a recipe "
        "says, and register the backbone in the zoo. Runs on CUDA with AMP and channels_last, on "
        "CPU in fp32, and on several GPUs or nodes with `torchrun --nproc_per_node N -m medzoo "
        "pretrain RECIPE`.",
        epilog="example: medzoo pretrain recipes/pretrain-crc.toml --set training.epochs=10. "
        "The online monitor (kNN accuracy on val, effective rank) runs every "
        "training.monitor_every_steps steps; readings in RUN/train_log.jsonl and RUN/monitor.png.",
    )
    parser.add_argument("recipe", help="recipe TOML file (see recipes/)")
    add_data_root(parser, recipe=True)
    parser.add_argument(
        "--out", help="run folder for checkpoints and logs (default: runs/pretrain-NAME)"
    )
    parser.add_argument("--name", help="zoo name to register (default: the recipe's name)")
    add_set_option(parser, "training.batch_size=64")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument(
        "--no-register", action="store_true", help="train only; do not write a zoo entry"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the zoo entry of the same name if it exists (checked before training)",
    )
    add_quiet(parser)
    parser.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medzoo.config import load_pretrain_config
    from medzoo.pretrain import default_run_dir, pretrain

    overrides = list(args.overrides)
    if args.name:
        overrides.append(f'name="{args.name}"')
    cfg = load_pretrain_config(args.recipe, overrides)
    try:
        folder = pretrain(
            cfg,
            data_root=args.data_root,
            out=args.out,
            resume=args.resume,
            register=not args.no_register,
            progress=progress_enabled(args),
            overwrite=args.overwrite,
        )
    except FileNotFoundError as err:
        raise MedzooError(f"{err.filename or err}: file not found") from None
    from medzoo.monitor import summary_line

    line = summary_line(Path(args.out or default_run_dir(cfg)) / "train_log.jsonl")
    if line:
        print(line)
    print(f"done: {folder}")
    return 0
