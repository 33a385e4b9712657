"""CLI: ``medzoo export`` (verified ONNX files) and ``medzoo predict`` (classify or embed images)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from medzoo.commands.common import add_data_root, add_json, add_quiet


# long: argparse declarations only
def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="export a zoo model to ONNX, verified against torch",
        description="Export a zoo model to DIR/model.onnx (default exports/NAME/) with a dynamic "
        "batch axis and medzoo metadata. Every export is checked (onnx.checker, batches 1 and 7, "
        "torch vs onnxruntime parity on random and real test images) and nothing is written "
        "if a check fails.",
    )
    export.add_argument("name", help="zoo model name (see `medzoo list`)")
    export.add_argument("--out", metavar="DIR", help="output folder (default: exports/NAME)")
    export.add_argument(
        "--opset", type=int, default=18, help="ONNX opset, 18 or newer (default 18)"
    )
    export.add_argument(
        "--fp16",
        action="store_true",
        help="also write model_fp16.onnx (GPU providers; parity 1e-2)",
    )
    export.add_argument(
        "--int8",
        action="store_true",
        help="also write model_int8.onnx: onnxruntime static quantisation calibrated on train "
        "images (method and fp32 layers chosen by measurement); kept only if it passes the gate "
        "on the test split (balanced accuracy, or embedding cosine for a backbone)",
    )
    export.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=1.0,
        metavar="POINTS",
        help="int8 gate: largest balanced-accuracy drop allowed, in points (default 1.0)",
    )
    export.add_argument(
        "--min-cosine",
        type=float,
        default=0.99,
        help="int8 gate of a backbone: smallest mean cosine of the embeddings (default 0.99)",
    )
    export.add_argument("--calibration-data", dest="calibration_data", help=argparse.SUPPRESS)
    export.add_argument(
        "--include-preprocessing",
        action="store_true",
        help="the graph takes uint8 NCHW pixels and does the /255 and mean/std normalisation itself",
    )
    add_data_root(
        export,
        what="MIMeta root with the model's datasets: its test images join the parity check, its "
        "train images calibrate --int8",
    )
    add_json(export, "the files and their checks")
    add_quiet(export)
    export.set_defaults(func=run_export)

    predict = subparsers.add_parser(
        "predict",
        help="classify images (classifier entries) or embed them (backbones)",
        description="Read PNG/JPEG/TIFF files, resize them to the model's input size, convert "
        "them to its channels and print the top-k labels with probabilities (a classifier) or "
        "the embedding (a backbone).",
    )
    predict.add_argument("name", help="zoo model name")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    predict.add_argument(
        "--onnx",
        action="store_true",
        help="run exports/NAME/model.onnx in onnxruntime (exported first if missing)",
    )
    predict.add_argument(
        "--export-dir", metavar="DIR", help="where the ONNX export lives (default exports/NAME)"
    )
    predict.add_argument("--top-k", type=int, default=5, help="labels per image (default 5)")
    add_json(predict, "the predictions")
    predict.set_defaults(func=run_predict)


def run_export(args: argparse.Namespace) -> int:
    from medzoo.config import data_root
    from medzoo.errors import MedzooError
    from medzoo.export.int8 import Int8Gate
    from medzoo.export.onnx import export_model

    if args.calibration_data and args.data_root and args.calibration_data != args.data_root:
        raise MedzooError("--calibration-data is the old spelling of --data-root: give one")
    if not 0.0 <= args.max_accuracy_drop <= 100.0:
        raise MedzooError(f"--max-accuracy-drop {args.max_accuracy_drop} must be 0 to 100 points")
    if not -1.0 <= args.min_cosine <= 1.0:
        raise MedzooError(f"--min-cosine {args.min_cosine} must be -1 to 1")
    explicit = args.data_root or args.calibration_data
    result = export_model(
        args.name,
        args.out,
        opset=args.opset,
        fp16=args.fp16,
        int8=args.int8,
        calibration_root=data_root(explicit) if args.int8 else None,
        include_preprocessing=args.include_preprocessing,
        data_root=explicit,
        gate=Int8Gate(max_accuracy_drop=args.max_accuracy_drop / 100.0, min_cosine=args.min_cosine),
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return 0
    for precision, file_name in result.files.items():
        check = result.parity[precision]
        if precision == "int8":
            detail = (
                f"{check['reason']} on {check['images']} test images "
                f"({check['method']} calibration, fp32: {check['keep_fp32']}, {check['format']})"
            )
        else:
            detail = f"parity max abs {check['max_abs']:.2e}, rel {check['max_rel']:.2e} on {check['images']} images"
        print(f"{result.out_dir / file_name}  [{precision}] {detail}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from medzoo.export.predict import predict

    results = predict(
        args.name, args.images, onnx=args.onnx, top_k=args.top_k, export_dir=args.export_dir
    )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results, sys.stdout)
    return 0


def print_table(results: list[dict[str, Any]], stream: Any) -> None:
    for item in results:
        if "top_k" in item:
            labels = ", ".join(f"{p['label']} {p['probability']:.3f}" for p in item["top_k"])
            print(f"{item['path']}\t{labels}", file=stream)
        else:
            head = ", ".join(f"{v:.4f}" for v in item["embedding"][:4])
            print(
                f"{item['path']}\tembedding[{len(item['embedding'])}] = [{head}, ...]", file=stream
            )
