"""``medzoo data``: synthesise, fetch, describe and benchmark MIMeta datasets."""

from __future__ import annotations

import argparse
import json

from medzoo.commands.common import add_data_root, add_json, data_root_of
from medzoo.errors import MedzooError


# long: argparse declarations only
def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="MIMeta datasets: synth, fetch, import, info, bench",
        description="Make, download, describe and benchmark MIMeta datasets "
        "(ROOT/<id>/info.yaml, images.hdf5, task_labels/, splits/).",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    synth = sub.add_parser(
        "synth",
        help="write synthetic datasets in the real MIMeta format",
        description="Write learnable synthetic stand-ins for crc (RGB, 9 tissue classes) and "
        "organs_axial/coronal/sagittal (grayscale, 11 organs) that the mimeta package reads.",
    )
    synth.add_argument("out", metavar="OUT", help="MIMeta root to write into")
    synth.add_argument(
        "--datasets", nargs="+", metavar="ID", default=None,
        help="dataset ids (default: crc organs_axial organs_coronal organs_sagittal)",
    )  # fmt: skip
    synth.add_argument("--size", type=int, default=224, help="image size in pixels (default 224)")
    synth.add_argument(
        "--per-class", type=int, default=50,
        help="training images per class; val and test get a quarter and a half (default 50)",
    )  # fmt: skip
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument(
        "--domain", default=None, metavar="MODALITY",
        help="for ids medzoo does not know (e.g. derm): the info.yaml domain, which picks the "
        "augmentation preset (Dermatoscopy, 'Chest X-ray', Histopathology, Fundus, ...)",
    )  # fmt: skip
    synth.add_argument(
        "--classes", type=int, default=None, help="for unknown ids: number of classes (default 4)"
    )
    synth.add_argument(
        "--channels", type=int, choices=(1, 3), default=None,
        help="for unknown ids: 1 or 3 (default: 1 for radiology, else 3)",
    )  # fmt: skip
    synth.set_defaults(func=_synth)

    fetch = sub.add_parser(
        "fetch",
        help="download MIMeta datasets into a root",
        description="Download datasets from where MedIMeta is published (Zenodo record 7884735) "
        "or another source, resumably, checksummed, unpacked into ROOT/<id>.",
    )
    fetch.add_argument("datasets", nargs="+", metavar="DATASET", help="ids, e.g. crc organs_axial")
    add_data_root(fetch, what="MIMeta root to unpack into", hidden_aliases=("--root",))
    fetch.add_argument(
        "--source", default=None,
        help="URL (archive, base URL or {id} template), hf:ORG/NAME (Hub dataset repo), "
        "zenodo:RECORD, or a local archive/folder (default: the MedIMeta Zenodo record)",
    )  # fmt: skip
    fetch.add_argument("--force", action="store_true", help="download even if already present")
    fetch.set_defaults(func=_fetch)

    _register_import(sub)

    info = sub.add_parser(
        "info",
        help="table of the datasets in a root",
        description="Datasets, tasks, classes, split sizes, image size, channels, modality "
        "(info.yaml domain) and the augmentation preset pre-training gives it.",
    )
    add_data_root(info, hidden_positional=True)
    add_json(info, "the table")
    info.set_defaults(func=_info)

    bench = sub.add_parser(
        "bench",
        help="reader speed: medzoo load_split vs mimeta.MIMeta[i]",
        description="Images/s of medzoo's batched HDF5 reader against mimeta.MIMeta.__getitem__ "
        "on the same split, both giving uint8 tensors at --image-size.",
    )
    add_data_root(bench, what="MIMeta root (e.g. from `medzoo data synth`)", hidden_positional=True)
    bench.add_argument("--dataset", default="crc", help="dataset id (default crc)")
    bench.add_argument("--split", default="train", help="split (default train)")
    bench.add_argument(
        "--limit", type=int, default=2000, help="images read through mimeta (default 2000)"
    )
    bench.add_argument("--image-size", type=int, default=224, help="output size (default 224)")
    bench.add_argument("--repeats", type=int, default=3, help="timed runs per reader (default 3)")
    add_json(bench, "the measurements")
    bench.set_defaults(func=_bench)


def _synth(args: argparse.Namespace) -> int:
    from medzoo.data.synth import write_synthetic

    paths = write_synthetic(
        args.out, args.datasets, size=args.size, per_class=args.per_class, seed=args.seed,
        classes=args.classes, channels=args.channels, domain=args.domain,
    )  # fmt: skip
    for path in paths:
        print(f"wrote {path}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from medzoo.data.fetch import fetch_datasets

    root = data_root_of(args)
    for path in fetch_datasets(args.datasets, root, source=args.source, force=args.force):
        print(f"ready {path}")
    return 0


def format_table(rows: list[dict], columns: list[str]) -> str:
    cells = [columns] + [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _info(args: argparse.Namespace) -> int:
    from medzoo.data.domains import domain_preset
    from medzoo.data.mimeta import describe

    root = data_root_of(args)
    rows = describe(root)
    for row in rows:  # the augmentation preset pre-training would pick (augment.preset = "auto")
        try:
            row["preset"] = domain_preset(row["dataset"], root)
        except MedzooError:
            row["preset"] = "none: set augment.preset"
    if not rows:
        raise MedzooError(
            f"no datasets in {root}; run `medzoo data synth {root}` or "
            f"`medzoo data fetch crc --data-root {root}`"
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ["dataset", "task", "classes", "train", "val", "test", "image_size", "channels"]
    columns += ["modality", "preset"]
    print(format_table(rows, columns))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from medzoo.data.bench import format_bench, run_bench

    if args.limit < 1 or args.repeats < 1 or args.image_size < 1:
        raise MedzooError("--limit, --repeats and --image-size must be positive")
    result = run_bench(
        data_root_of(args), args.dataset, args.split, limit=args.limit, image_size=args.image_size,
        repeats=args.repeats,
    )  # fmt: skip
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def _register_import(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "import",
        help="turn a class-per-folder tree of images, DICOM or NIfTI into a MIMeta dataset",
        description="Import SRC/<class>/<files> (PNG, JPEG, TIFF, BMP; DICOM with medzoo[dicom]; "
        "NIfTI with medzoo[nifti]) as the MIMeta dataset DATA_ROOT/ID: padded to a square, "
        "resized, stratified seeded splits (slices of one series or volume stay together), "
        "info.yaml recording the source, window and skipped files. Nothing is written unless "
        "every check passes.",
        epilog="example: medzoo data import ~/scans --id my_ct --domain CT --window abdomen",
    )
    parser.add_argument("src", metavar="SRC", help="folder with one subfolder per class")
    parser.add_argument("--id", required=True, dest="dataset_id", help="dataset id to create")
    add_data_root(parser, what="MIMeta root to write into")
    parser.add_argument("--task", default="class", help="task name (default: class)")
    parser.add_argument("--size", type=int, default=224, help="image size in pixels (default 224)")
    parser.add_argument(
        "--channels", type=int, choices=(1, 3), default=None,
        help="1 (luminance) or 3 (gray replicated); default: 3 if any image is in colour, else 1",
    )  # fmt: skip
    splits = parser.add_mutually_exclusive_group()
    splits.add_argument(
        "--split-ratios", default="0.7,0.1,0.2", metavar="TRAIN,VAL,TEST",
        help="stratified, seeded split fractions (default 0.7,0.1,0.2)",
    )  # fmt: skip
    splits.add_argument(
        "--splits-from", metavar="DIR",
        help="official splits: DIR/{train,val,test}.txt listing paths relative to SRC",
    )  # fmt: skip
    parser.add_argument(
        "--domain", metavar="MODALITY",
        help="imaging modality for info.yaml (CT, MRI, 'Chest X-ray', Dermatoscopy, "
        "Histopathology, Fundus, ...); it picks the augmentation preset",
    )  # fmt: skip
    parser.add_argument(
        "--window", metavar="C,W|PRESET",
        help="intensity window for 16-bit, float, DICOM and NIfTI data: CENTER,WIDTH, a preset "
        "(abdomen, lung, bone, brain), or per-image-minmax",
    )  # fmt: skip
    parser.add_argument(
        "--on-error", choices=("skip", "fail"), default="fail",
        help="an unreadable file stops the import (fail, default) or is skipped and listed",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    from medzoo.data.importer import import_folder, parse_ratios

    folder = import_folder(
        args.src, data_root_of(args), args.dataset_id, task=args.task, size=args.size,
        channels=args.channels, split_ratios=parse_ratios(args.split_ratios),
        splits_from=args.splits_from, domain=args.domain, window=args.window,
        on_error=args.on_error, seed=args.seed,
    )  # fmt: skip
    print(f"wrote {folder}")
    return 0
