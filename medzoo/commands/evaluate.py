"""``medzoo evaluate RECIPE`` and ``medzoo train-head INIT --dataset ID``."""

from __future__ import annotations

import argparse

from medzoo.commands.common import add_data_root, add_set_option


def register(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser(
        "evaluate",
        help="linear probe / full / surgical fine-tuning over label fractions and seeds",
        description="Run an evaluation recipe (recipes/eval-*.toml): every dataset x init x "
        "strategy x label fraction x seed, model selection on val, numbers on the official test "
        "split. Writes results.csv/json, summary.md and figures to the run folder and the "
        "metrics back into each init's zoo entry.",
    )
    evaluate.add_argument("recipe", help="evaluation recipe (TOML), e.g. recipes/eval-crc.toml")
    add_data_root(evaluate, recipe=True)
    evaluate.add_argument("--out", help="run folder (default: runs/eval-<recipe>-<timestamp>/)")
    evaluate.add_argument(
        "--plan",
        action="store_true",
        help="print the grid (runs, subset sizes, step budgets) after validation; train nothing",
    )
    add_set_option(evaluate, "seeds=[0] --set finetune.max_steps=50")
    evaluate.set_defaults(func=_evaluate)

    head = subparsers.add_parser(
        "train-head",
        help="train the linear probe on 100%% of a dataset's labels and register the classifier",
        description="Fit the linear probe of INIT on all train labels of DATASET (weight decay "
        "chosen on val), report test metrics, and save backbone + head as the classifier zoo "
        "entry <init>-<task> (e.g. bt-crc-r18-tissue) for export and predict.",
    )
    head.add_argument("init", help="backbone zoo name, e.g. bt-crc-r18")
    head.add_argument(
        "--dataset", required=True, help="MIMeta dataset id, e.g. crc or organs_axial"
    )
    add_data_root(head)
    head.add_argument("--name", help="classifier name (default: <init>-<task-slug>)")
    head.add_argument("--task", help="MIMeta task (default: the dataset's medzoo task)")
    head.add_argument("--image-size", type=int, help="resize images (default: the data's size)")
    head.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    head.set_defaults(func=_train_head)


def _evaluate(args: argparse.Namespace) -> int:
    from medzoo.evaluate import evaluate, load_eval_config, show_plan

    cfg = load_eval_config(args.recipe, args.overrides)
    if args.plan:
        print(show_plan(cfg, data_root=args.data_root), end="")
        return 0
    out = evaluate(cfg, data_root=args.data_root, out=args.out)
    print(f"results: {out / 'results.csv'}")
    print(f"summary: {out / 'summary.md'}")
    return 0


def _train_head(args: argparse.Namespace) -> int:
    from medzoo.evaluate import train_head

    name, metrics = train_head(
        args.init,
        args.dataset,
        data_root=args.data_root,
        name=args.name,
        task=args.task,
        image_size=args.image_size,
        device=args.device,
    )
    print(
        f"registered {name}: test accuracy {metrics['accuracy']:.4f}, "
        f"balanced accuracy {metrics['balanced_accuracy']:.4f}"
    )
    return 0
