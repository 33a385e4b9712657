"""``medzoo list``, ``medzoo info NAME`` and ``medzoo push NAME --repo-id ORG/NAME``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from medzoo.commands.common import add_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "list",
        help="list the models in the zoo (catalog + local registry)",
        description="A table of every model medzoo knows: its method, domain, channels, classes, "
        "where its weights come from, key metrics where evaluated, and its Hub id.",
        epilog="example: medzoo list 'bt-*'   (fnmatch patterns, as timm.list_models)",
    )
    p.add_argument(
        "patterns", nargs="*", metavar="PATTERN", help="only names matching these fnmatch patterns"
    )
    add_json(p, "the entries")
    p.set_defaults(func=_list)

    p = subparsers.add_parser(
        "info",
        help="show every field of one zoo model",
        description="Show a zoo entry: preprocessing, provenance, recipe, metrics, Hub id.",
    )
    p.add_argument("name", help="zoo name, e.g. bt-crc-r18 (see medzoo list)")
    add_json(p, "the entry")
    p.set_defaults(func=_info)

    p = subparsers.add_parser(
        "push",
        help="publish a zoo model to the Hugging Face Hub",
        description="Upload a locally trained model (config.json, model.safetensors, model card, "
        "evaluation images and metrics) to a Hub repository, created if needed. The token comes "
        "from `hf auth login` or HF_TOKEN. With --dry-run DIR nothing is uploaded: the exact "
        "folder is written to DIR for inspection.",
    )
    p.add_argument("name", help="zoo name of a model with local weights")
    p.add_argument("--repo-id", required=True, help="Hub repository, ORG/NAME")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", help="branch to upload to (created if needed; default main)")
    p.add_argument("--dry-run", metavar="DIR", help="write the folder to DIR instead of uploading")
    p.add_argument("--json", action="store_true", help="print the written folder or URL as JSON")
    p.set_defaults(func=_push)

    p = subparsers.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script generated from this parser. Enable it with "
        'eval "$(medzoo completion bash)" in ~/.bashrc, or eval "$(medzoo completion zsh)" in '
        "~/.zshrc.",
    )
    p.add_argument("shell", choices=("bash", "zsh"), help="the shell")
    p.set_defaults(func=_completion)


def _completion(args: argparse.Namespace) -> int:
    from medzoo.cli import build_parser
    from medzoo.completion import completion_script

    print(completion_script(build_parser(), args.shell), end="")
    return 0


def _key_metrics(metrics: dict, limit: int = 2) -> str:
    from medzoo.zoo.card import METRIC_NAMES, flat_metrics

    flat = [
        (k, v) for k, v in flat_metrics(metrics).items() if k.rsplit("/", 1)[-1] in METRIC_NAMES
    ]
    flat.sort(key=lambda kv: kv[0].rsplit("/", 1)[-1] != "accuracy")  # accuracy first, stable
    return ", ".join(f"{k}={v:.3f}" for k, v in flat[:limit]) or "-"


def _list(args: argparse.Namespace) -> int:
    from medzoo.zoo import index

    entries, malformed = index.list_entries()
    for name, why in sorted(malformed.items()):  # the rest of the zoo still lists
        print(f"medzoo: warning: skipped malformed registry entry {name!r}: {why}", file=sys.stderr)
    if args.patterns:
        wanted = set(index.list_models(args.patterns))
        entries = [e for e in entries if e.name in wanted]
        if not entries:
            from medzoo.errors import MedzooError

            raise MedzooError(
                f"no zoo model matches {' '.join(args.patterns)}; all models: "
                f"{', '.join(index.list_models())}"
            )
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return 0
    header = ("name", "method", "domain", "in_chans", "classes", "weights", "metrics", "hub")
    rows = [header]
    for e in entries:
        rows.append(
            (
                e.name,
                e.method,
                e.domain or "-",
                str(e.in_chans),
                str(e.num_classes) if e.num_classes else "backbone",
                index.weights_status(e),
                _key_metrics(e.metrics),
                e.hub_repo_id or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _info(args: argparse.Namespace) -> int:
    from medzoo.zoo import index

    entry = index.model_info(args.name)
    if args.json:
        print(json.dumps(entry.to_dict(), indent=2))
        return 0
    print(f"{'weights':<14} {index.weights_status(entry)}")
    print(f"{'folder':<14} {index.entry_folder(entry.name)}")
    for field in dataclasses.fields(entry):
        value = getattr(entry, field.name)
        if isinstance(value, dict) or (field.name == "recipe" and isinstance(value, str)):
            text = value if isinstance(value, str) else json.dumps(value, indent=2)
            if value:
                print(f"{field.name}:")
                print("\n".join("    " + line for line in text.strip().splitlines()))
                continue
            value = "-"
        elif isinstance(value, tuple):
            value = ", ".join(str(v) for v in value) or "-"
        print(f"{field.name:<14} {'-' if value is None else value}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from medzoo.zoo import hub

    if args.dry_run:
        folder = hub.save_for_hub(args.name, args.dry_run, repo_id=args.repo_id)
        if args.json:
            files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
            print(json.dumps({"folder": str(folder), "uploaded": False, "files": files}, indent=2))
            return 0
        print(f"wrote {folder} (nothing uploaded):")
        for path in sorted(folder.iterdir()):
            print(f"  {path.name}  {path.stat().st_size:,} bytes")
        return 0
    url = hub.push_to_hub(args.name, args.repo_id, private=args.private, revision=args.revision)
    if args.json:
        print(json.dumps({"name": args.name, "url": str(url), "uploaded": True}))
        return 0
    print(f"pushed {args.name} to {url}")
    return 0
