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


def _eval_results(entry: ZooEntry) -> list[Any]:
    from huggingface_hub import EvalResult

    results = []
    for path, value in flat_metrics(entry.metrics).items():
        parts = path.split("/")
        if parts[-1] not in METRIC_NAMES or not math.isfinite(value):  # no spreads, losses, NaN
            continue
        dataset = next((p for p in parts if p in entry.datasets), None)
        dataset = dataset or (entry.datasets[0] if entry.datasets else entry.domain or "mimeta")
        results.append(
            EvalResult(
                task_type="image-classification",
                dataset_type=dataset,
                dataset_name=f"MIMeta {dataset}",
                dataset_split="test",
                metric_type=parts[-1],
                metric_name=path,
                metric_value=value,
            )
        )
    return results[:_MAX_EVAL_RESULTS]


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


def _body(entry: ZooEntry, repo_id: str, folder: Path | None) -> str:
    kind = "classifier" if entry.num_classes else "backbone (pooled 512-d features, no head)"
    what = {
        "barlow-twins": f"pre-trained with Barlow Twins (self-supervised, no labels) on MIMeta {entry.domain or ''}",
        "imagenet": "with ImageNet-1k weights",
        "random": "randomly initialised (a baseline)",
        "fine-tuned": f"fine-tuned on MIMeta {entry.task or ''} from {entry.base_model or 'a zoo backbone'}",
        "linear-probe": f"a linear probe on MIMeta {entry.task or ''} over {entry.base_model or 'a frozen zoo backbone'}",
    }[entry.method]
    lines = [
        f"# {entry.name}",
        "",
        f"A timm `{entry.arch}` {kind}, {what.strip()}. Made with medzoo, "
        "a model zoo of self-supervised backbones for medical imaging.",
        "",
        f"- datasets: {', '.join(entry.datasets) or 'n/a'}",
        f"- input: {entry.in_chans} channel(s), {entry.input_size[1]}x{entry.input_size[2]} px, "
        f"mean {list(entry.mean)}, std {list(entry.std)}, {entry.interpolation}",
        f"- classes: {entry.num_classes or 'none (backbone)'}"
        + (f" ({', '.join(entry.label_names)})" if entry.label_names else ""),
        f"- sha256 of model.safetensors: `{entry.sha256}`",
        f"- made {entry.created or 'n/a'} at git commit `{entry.git_commit or 'n/a'}`",
        "",
        "## How to load",
        "",
        "```python",
        "import medzoo",
        f'model = medzoo.load("hf-hub:{repo_id}")  # timm model in eval mode, sha256 checked',
        f'model = medzoo.load("{entry.name}")  # by zoo name, where the zoo lists it',
        "",
        "import timm",
        f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True)',
        "```",
        "",
    ]
    recipe = _recipe_text(entry)
    if recipe or entry.make_target:
        lines += ["## Recipe", ""]
        if entry.make_target:
            lines += [
                f"Reproduce with `{entry.make_target}` ({entry.recipe_file or 'recipe'}).",
                "",
            ]
        lines += [recipe] if recipe else []
    lines += _results_section(entry, folder)
    lines += [
        "## Limitations",
        "",
        "For research use only. This model is not a medical device and must not be used for "
        "clinical decisions. It was trained and evaluated on public MIMeta datasets; accuracy on "
        "other scanners, stains, hospitals or populations is unknown.",
        "",
        "## Citations",
        "",
        CITATIONS,
    ]
    return "\n".join(lines)


def _results_section(entry: ZooEntry, folder: Path | None) -> list[str]:
    flat = flat_metrics(entry.metrics)
    images = (
        sorted(p.name for pat in PUBLISHED_PATTERNS for p in folder.glob(pat)) if folder else []
    )
    summary = folder / "summary.md" if folder else None
    if not flat and not images and not (summary and summary.is_file()):
        return []
    lines = ["## Evaluation (official MIMeta test splits)", ""]
    if summary and summary.is_file():
        lines += [summary.read_text("utf-8").strip(), ""]
    if flat:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {path} | {value:.4f} |" for path, value in flat.items()]
        lines.append("")
    lines += [f"![{Path(name).stem}]({name})\n" for name in images]
    return lines


def model_card(
    entry: ZooEntry,
    *,
    repo_id: str | None = None,
    folder: Path | None = None,
    base_model: str | None = None,
) -> Any:
    """The huggingface_hub ``ModelCard`` for ``entry``.

    ``folder`` supplies images and the summary; ``base_model`` is the Hub id of the model this
    one was made from (:func:`medzoo.zoo.registry.base_model_hub_id` resolves a zoo name).
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
    data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification" if entry.num_classes else "image-feature-extraction",
        license=entry.license,
        tags=tags,
        datasets=list(entry.datasets) or None,
        base_model=base_model,
        model_name=entry.name,
        eval_results=_eval_results(entry) or None,
    )
    content = f"---\n{data.to_yaml()}\n---\n\n{_body(entry, repo_id, folder)}"
    return ModelCard(content)


def model_card_text(
    entry: ZooEntry,
    *,
    repo_id: str | None = None,
    folder: Path | None = None,
    base_model: str | None = None,
) -> str:
    return str(model_card(entry, repo_id=repo_id, folder=folder, base_model=base_model))
