"""The model card of a zoo entry: huggingface_hub's ``ModelCard`` with medzoo's body.

Everything here is a pure function of a :class:`ZooEntry` and the facts passed in (the entry
folder for figures and summary, the Hub ids); nothing reads the registry, so the index, the Hub
publisher and the CLI can all use it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from medzoo.zoo.entry import ZooEntry

# Files from an entry folder that go to the Hub besides config, weights and card; checkpoints,
# pickles and anything unknown stay local.
PUBLISHED_FILES = ("recipe.toml", "provenance.json", "metrics.json", "summary.md", "results.csv")
PUBLISHED_PATTERNS = ("*.png",)
METRIC_NAMES = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "f1", "auroc", "top1")
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_MAX_EVAL_RESULTS = 100

CITATIONS = """\
```bibtex
@misc{elsherif_barlow_twins_medical,
  title  = {Leveraging Self-Supervised Learning for Enhanced Medical Image Analysis: A Comparative
            Study of Barlow Twins Pre-training and ImageNet Fine-Tuning},
  author = {Elsherif, Mohamed and Frank, Simon and Kemp, Daniela and Krause, Gwent and Rebig, Tim},
  note   = {Department of Computer Science, Eberhard Karls University of T{\\"u}bingen}
}
@inproceedings{zbontar2021barlow,
  title     = {Barlow Twins: Self-Supervised Learning via Redundancy Reduction},
  author    = {Zbontar, Jure and Jing, Li and Misra, Ishan and LeCun, Yann and Deny, St{\\'e}phane},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2021},
  eprint    = {2103.03230},
  archivePrefix = {arXiv}
}
@misc{woerner2024mimeta,
  title  = {A comprehensive and easy-to-use multi-domain multi-task medical imaging meta-dataset
            (MedIMeta)},
  author = {Woerner, Stefano and Jaques, Arthur and Baumgartner, Christian F.},
  year   = {2024},
  eprint = {2404.16000},
  archivePrefix = {arXiv}
}
```
"""


# --------------------------------------------------------------------------- metrics


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict, keyed by their path ("crc/probe/1.0/accuracy")."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flat_metrics(value, path))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[path] = float(value)
    return out


# medzoo's metric names -> the Hub's metric ids (the `evaluate` library's), with their arguments.
# Balanced accuracy is the macro-averaged recall.
HUB_METRICS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "accuracy": ("accuracy", "Accuracy", None),
    "balanced_accuracy": ("recall", "Balanced accuracy (macro recall)", {"average": "macro"}),
    "macro_f1": ("f1", "Macro F1", {"average": "macro"}),
    "macro_auroc": (
        "roc_auc",
        "Macro AUROC (one-vs-rest)",
        {"average": "macro", "multi_class": "ovr"},
    ),
}
STRATEGY_NAMES = {
    "probe": "linear probe",
    "linear-probe": "linear probe",
    "finetune": "full fine-tuning",
    "fine-tuned": "full fine-tuning",
}
# Hub dataset ids of training data that really is on the Hub (`datasets:` takes only those).
HUB_DATASETS = {"imagenet": ["ILSVRC/imagenet-1k"]}


def evaluation_cells(entry: ZooEntry) -> dict[tuple[str, str, float], dict[str, float]]:
    """``{(dataset, strategy, label fraction): {metric: value, "accuracy_sd": ...}}``.

    Reads the two shapes evaluation writes: ``dataset/strategy/fraction/metric`` (a backbone over
    the grid) and ``dataset/strategy/metric`` or ``dataset/test/metric`` (all labels; ``test`` is a
    classifier's own head). Other
    numbers (``pretrain/final_loss``, ``weight_decay``) are not evaluation results.
    """
    cells: dict[tuple[str, str, float], dict[str, float]] = {}
    for path, value in flat_metrics(entry.metrics).items():
        parts = path.split("/")
        metric = parts[-1]
        if metric not in HUB_METRICS and metric != "accuracy_sd":
            continue
        if len(parts) == 4:
            dataset, strategy, fraction_text = parts[:3]
        elif len(parts) == 3:  # all labels: a classifier's own head is "dataset/test/metric"
            dataset, strategy, fraction_text = parts[0], parts[1], "1.0"
            strategy = entry.method if strategy == "test" else strategy
        else:
            continue
        try:
            fraction = float(fraction_text)
        except ValueError:
            continue
        if math.isfinite(value):
            cells.setdefault((dataset, strategy, fraction), {})[metric] = value
    return dict(sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2])))


def headline_cells(entry: ZooEntry) -> dict[tuple[str, str, float], dict[str, float]]:
    """Per dataset and strategy: all labels (the largest fraction) and the fewest labels."""
    cells = evaluation_cells(entry)
    keep: dict[tuple[str, str, float], dict[str, float]] = {}
    for dataset, strategy in dict.fromkeys((d, s) for d, s, _ in cells):
        fractions = [f for d, s, f in cells if (d, s) == (dataset, strategy)]
        for fraction in dict.fromkeys((max(fractions), min(fractions))):
            keep[(dataset, strategy, fraction)] = cells[(dataset, strategy, fraction)]
    return keep


def format_fraction(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _eval_results(entry: ZooEntry) -> list[Any]:
    """The model-index: headline results only, one (task, dataset config, split) key each."""
    from huggingface_hub import EvalResult

    results = []
    for (dataset, strategy, fraction), metrics in headline_cells(entry).items():
        how = STRATEGY_NAMES.get(strategy, strategy)
        config = f"{dataset}-{strategy}-{format_fraction(fraction).replace('%', 'pct')}"
        for metric, (hub_id, label, args) in HUB_METRICS.items():
            if metric not in metrics:
                continue
            results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name=f"Image classification, {how}, {format_fraction(fraction)} of the labels",
                    dataset_type="mimeta",
                    dataset_name=f"MIMeta {dataset}",
                    dataset_config=config,
                    dataset_split="test",
                    dataset_args={"strategy": strategy, "label_fraction": fraction},
                    metric_type=hub_id,
                    metric_name=label,
                    metric_args=args,
                    metric_value=round(metrics[metric], 4),
                )
            )
    return results[:_MAX_EVAL_RESULTS]


def summary_table(entry: ZooEntry) -> list[str]:
    """Markdown rows: dataset, strategy, labels, accuracy +- sd, balanced accuracy, F1, AUROC."""
    cells = evaluation_cells(entry)
    if not cells:
        return []
    lines = [
        "| dataset | strategy | labels | accuracy | balanced accuracy | macro F1 | macro AUROC |",
        "|---|---|---|---|---|---|---|",
    ]
    for (dataset, strategy, fraction), m in cells.items():

        def cell(key: str, m: dict[str, float] = m) -> str:
            return f"{m[key]:.3f}" if key in m else "-"

        accuracy = cell("accuracy") + (f" ± {m['accuracy_sd']:.3f}" if "accuracy_sd" in m else "")
        lines.append(
            f"| {dataset} | {STRATEGY_NAMES.get(strategy, strategy)} | {format_fraction(fraction)} "
            f"| {accuracy} | {cell('balanced_accuracy')} | {cell('macro_f1')} | {cell('macro_auroc')} |"
        )
    return lines


# --------------------------------------------------------------------------- model card


def _recipe_text(entry: ZooEntry) -> str:
    if isinstance(entry.recipe, str):
        return f"```toml\n{entry.recipe.strip()}\n```\n"
    if isinstance(entry.recipe, dict):
        from medzoo.config import dump_toml

        try:
            return f"```toml\n{dump_toml(entry.recipe).strip()}\n```\n"
        except TypeError:  # deeper nesting than recipes use: show it as JSON
            return f"```json\n{json.dumps(entry.recipe, indent=2)}\n```\n"
    return ""


def _details(
    entry: ZooEntry, stats: dict[str, float] | None, dataset_licenses: dict[str, str] | None
) -> list[str]:
    kind = (
        "Image classification" if entry.num_classes else "Image classification / feature backbone"
    )
    how = {
        "barlow-twins": "Barlow Twins, self-supervised (no labels)",
        "imagenet": "supervised ImageNet-1k (torchvision weights)",
        "random": "none: a seeded random initialisation (baseline)",
        "fine-tuned": f"fine-tuned from {entry.base_model or 'a zoo backbone'}",
        "linear-probe": f"linear probe on the frozen {entry.base_model or 'zoo backbone'}",
    }[entry.method]
    lines = ["## Model Details", "", f"- **Model Type:** {kind}"]
    lines.append("- **Model Stats:**")
    if stats:
        lines.append(f"  - Params (M): {stats['params_m']:.1f}")
        lines.append(
            f"  - GMACs: {stats['gmacs']:.2f} (convolutions and linear layers at the input size)"
        )
    lines.append(f"  - Image size: {entry.input_size[1]} x {entry.input_size[2]}")
    lines.append(f"  - Channels: {entry.in_chans}")
    lines.append(
        f"  - Preprocessing: {entry.interpolation}, crop_pct {entry.crop_pct:g}, center crop, "
        f"mean {list(entry.mean)}, std {list(entry.std)}"
    )
    lines.append("- **Pre-training:** " + how)
    if entry.datasets:
        licences = dataset_licenses or {}
        data = ", ".join(
            f"MIMeta `{d}`" + (f" (licence: {licences[d]})" if d in licences else "")
            for d in entry.datasets
        )
        lines.append(f"- **Dataset:** {data}")
    if entry.task:
        lines.append(f"- **Task:** {entry.task} ({entry.num_classes} classes)")
    if entry.make_target or entry.recipe_file:
        lines.append(
            f"- **Recipe:** `{entry.recipe_file or 'recipe.toml'}` (`{entry.make_target or 'medzoo pretrain'}`)"
        )
    lines += [
        "- **Papers:**",
        "  - Barlow Twins: Self-Supervised Learning via Redundancy Reduction: https://arxiv.org/abs/2103.03230",
        "  - Deep Residual Learning for Image Recognition: https://arxiv.org/abs/1512.03385",
        "  - MedIMeta (MIMeta): https://arxiv.org/abs/2404.16000",
        f"- **Model licence:** {entry.license}",
        f"- **Weights:** `model.safetensors`, sha256 `{entry.sha256 or 'n/a'}`; made "
        f"{entry.created or 'n/a'} with medzoo at commit `{entry.git_commit or 'n/a'}`",
        "",
    ]
    return lines


# long: a text template of the model card
def _usage(entry: ZooEntry, repo_id: str) -> list[str]:
    mode = "L" if entry.in_chans == 1 else "RGB"
    load = f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()'
    head = [
        "```python",
        "import timm",
        "import torch",
        "from PIL import Image",
        "",
        f'img = Image.open("image.png").convert("{mode}")',
        load,
        "data_config = timm.data.resolve_model_data_config(model)  # the entry's own",
        "transform = timm.data.create_transform(**data_config, is_training=False)",
        "x = transform(img).unsqueeze(0)",
    ]
    lines = ["## Model Usage", ""]
    if entry.num_classes:
        lines += (
            ["### Image Classification", ""]
            + head
            + [
                "with torch.inference_mode():",
                "    probabilities = model(x).softmax(dim=1)",
                "top5 = probabilities.topk(min(5, probabilities.shape[1]))",
                'labels = model.pretrained_cfg["label_names"]',
                "```",
                "",
            ]
        )
    lines += ["### Feature Map Extraction", ""] + [
        "```python",
        "import timm",
        "import torch",
        "",
        f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True, features_only=True).eval()',
        f"feature_maps = model(torch.zeros(1, {entry.in_chans}, {entry.input_size[1]}, {entry.input_size[2]}))",
        "for f in feature_maps:",
        "    print(f.shape)  # strides 2, 4, 8, 16, 32; 64 to 512 channels",
        "```",
        "",
    ]
    lines += (
        ["### Image Embeddings", ""]
        + head
        + [
            "with torch.inference_mode():",
            "    embedding = model.forward_head(model.forward_features(x), pre_logits=True)  # [1, 512]",
            "```",
            "",
            "With medzoo installed the same steps are one call each, and work on MIMeta data directly:",
            "",
            "```python",
            "import medzoo",
            "from medzoo.data.dataset import MIMetaDataset",
            "",
            f'transform = medzoo.transforms("{entry.name}")  # timm.data.create_transform(**medzoo.data_config(...))',
            f'features = medzoo.extract_features("{entry.name}", images_uint8_or_loader)',
            'test = MIMetaDataset("data/mimeta", "DATASET", "test", transform=transform)',
            "```",
            "",
            "The weights also load into torchvision's `resnet18` with `strict=False` (only `fc` is "
            "missing for a backbone).",
            "",
        ]
    )
    return lines


def _body(
    entry: ZooEntry,
    repo_id: str,
    folder: Path | None,
    stats: dict[str, float] | None = None,
    dataset_licenses: dict[str, str] | None = None,
) -> str:
    what = {
        "barlow-twins": f"pre-trained with Barlow Twins (self-supervised, no labels) on MIMeta {entry.domain or ''}",
        "imagenet": "with ImageNet-1k weights",
        "random": "randomly initialised (a baseline)",
        "fine-tuned": f"fine-tuned on MIMeta {entry.task or ''} from {entry.base_model or 'a zoo backbone'}",
        "linear-probe": f"a linear probe on MIMeta {entry.task or ''} over {entry.base_model or 'a frozen zoo backbone'}",
    }[entry.method]
    kind = "classifier" if entry.num_classes else "backbone"
    lines = [
        f"# Model card for {entry.name}",
        "",
        f"A timm `{entry.arch}` {kind}, {what.strip()}. Made with medzoo, a model zoo of "
        "self-supervised backbones for medical imaging.",
        "",
    ]
    lines += _details(entry, stats, dataset_licenses)
    lines += _usage(entry, repo_id)
    lines += _results_section(entry, folder)
    recipe = _recipe_text(entry)
    if recipe:
        lines += ["## Recipe", "", recipe]
    lines += [
        "## Limitations",
        "",
        "For research use only. This model is not a medical device and must not be used for "
        "clinical decisions. It was trained and evaluated on public MIMeta datasets; accuracy on "
        "other scanners, stains, hospitals or populations is unknown.",
        "",
        "## Citation",
        "",
        CITATIONS,
    ]
    return "\n".join(lines)


def _results_section(entry: ZooEntry, folder: Path | None) -> list[str]:
    table = summary_table(entry)
    images = (
        sorted(p.name for pat in PUBLISHED_PATTERNS for p in folder.glob(pat)) if folder else []
    )
    summary = folder / "summary.md" if folder else None
    has_summary = bool(summary and summary.is_file())
    if not table and not images and not has_summary:
        return []
    lines = ["## Model Comparison", "", "Official MIMeta test splits; mean ± sd over seeds.", ""]
    lines += [*table, ""] if table else []
    lines += [f"![{Path(name).stem}]({name})\n" for name in images]
    if has_summary:
        lines += ["Every run of the evaluation: [summary.md](summary.md).", ""]
    return lines


def model_card(
    entry: ZooEntry,
    *,
    repo_id: str | None = None,
    folder: Path | None = None,
    base_model: str | None = None,
    stats: dict[str, float] | None = None,
    dataset_licenses: dict[str, str] | None = None,
) -> Any:
    """The huggingface_hub ``ModelCard`` for ``entry``, in timm's card layout.

    ``folder`` supplies figures and the summary; ``base_model`` is the Hub id of the model this
    one was made from (:func:`medzoo.zoo.registry.base_model_hub_id` resolves a zoo name);
    ``stats`` (``params_m``, ``gmacs``) and ``dataset_licenses`` (dataset id -> licence from its
    ``info.yaml``) are facts the caller measured or read.
    """
    from huggingface_hub import ModelCard, ModelCardData

    repo_id = repo_id or entry.hub_repo_id or f"ORG/{entry.name}"
    tags = ["image-classification", "timm", "medical-imaging", "mimeta", entry.arch]
    if entry.method == "barlow-twins":
        tags += ["self-supervised", "barlow-twins"]
    elif entry.method in ("fine-tuned", "linear-probe"):
        tags.append(entry.method)
    if entry.domain:
        tags.append(entry.domain)
    extra: dict[str, Any] = {}
    if dataset_licenses:
        extra["dataset_licenses"] = {d: dataset_licenses[d] for d in sorted(dataset_licenses)}
    data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification" if entry.num_classes else "image-feature-extraction",
        license=entry.license,
        tags=tags,
        datasets=HUB_DATASETS.get(entry.method),  # MIMeta is not a Hub dataset: named in the text
        base_model=base_model,
        model_name=entry.name,
        eval_results=_eval_results(entry) or None,
        **extra,
    )
    content = (
        f"---\n{data.to_yaml()}\n---\n\n{_body(entry, repo_id, folder, stats, dataset_licenses)}"
    )
    return ModelCard(content)


def model_card_text(
    entry: ZooEntry,
    *,
    repo_id: str | None = None,
    folder: Path | None = None,
    base_model: str | None = None,
    stats: dict[str, float] | None = None,
    dataset_licenses: dict[str, str] | None = None,
) -> str:
    return str(
        model_card(
            entry,
            repo_id=repo_id,
            folder=folder,
            base_model=base_model,
            stats=stats,
            dataset_licenses=dataset_licenses,
        )
    )
