"""Publishing to the Hugging Face Hub: save the folder offline, then upload it unchanged.

As in timm (``save_for_hf`` kept apart from ``push_to_hf_hub``), :func:`save_for_hub` writes
exactly the folder that would be uploaded (config.json, model.safetensors, the model card and the
evaluation's images and metrics) and :func:`push_to_hub` only uploads such a folder. The model
card is built with huggingface_hub's ``ModelCard`` / ``ModelCardData``. huggingface_hub is
imported inside the functions that need it.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from medzoo.errors import MedzooError
from medzoo.zoo.entry import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    ZooEntry,
    read_weights,
    timm_config,
)

# Files from an entry folder that go to the Hub besides config, weights and card; checkpoints,
# pickles and anything unknown stay local.
PUBLISHED_FILES = ("recipe.toml", "provenance.json", "metrics.json", "summary.md", "results.csv")
PUBLISHED_PATTERNS = ("*.png",)
METRIC_NAMES = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "f1", "auroc", "top1")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
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


def _hub_base_model(entry: ZooEntry) -> str | None:
    """A Hub id for ``base_model`` (the Hub rejects anything else in that field)."""
    base = entry.base_model
    if not base:
        return None
    if _REPO_ID_RE.match(base):
        return base
    from medzoo.zoo.index import model_info

    try:
        parent = model_info(base)
    except MedzooError:
        return None
    if parent.hub_repo_id:
        return parent.hub_repo_id
    return f"timm/{parent.timm_name}" if parent.timm_name else None


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


def model_card(entry: ZooEntry, *, repo_id: str | None = None, folder: Path | None = None) -> Any:
    """The huggingface_hub ``ModelCard`` for ``entry``; ``folder`` supplies images and summary."""
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
        base_model=_hub_base_model(entry),
        model_name=entry.name,
        eval_results=_eval_results(entry) or None,
    )
    content = f"---\n{data.to_yaml()}\n---\n\n{_body(entry, repo_id, folder)}"
    return ModelCard(content)


def model_card_text(
    entry: ZooEntry, *, repo_id: str | None = None, folder: Path | None = None
) -> str:
    return str(model_card(entry, repo_id=repo_id, folder=folder))


# --------------------------------------------------------------------------- save and push


def save_for_hub(name: str, out_dir: str | Path, *, repo_id: str | None = None) -> Path:
    """Write exactly the folder :func:`push_to_hub` uploads for ``name`` into ``out_dir``.

    ``out_dir`` must not exist or be empty. The weights are sha256-checked first, and the folder
    is built beside ``out_dir`` and renamed into place, so a failure leaves nothing behind.
    """
    from medzoo.zoo.index import entry_folder, model_info, weights_status

    entry = model_info(name)
    source = entry_folder(name)
    if not (source / WEIGHTS_FILE).is_file():
        raise MedzooError(
            f"nothing to publish for {name}: no local weights ({weights_status(entry)}); "
            "only models trained or saved on this machine can be pushed"
        )
    if repo_id is not None:
        check_repo_id(repo_id)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MedzooError(f"{out_dir} exists and is not an empty folder; choose a new folder")
    read_weights(source / WEIGHTS_FILE, entry.sha256, what=name)  # never publish bad weights
    entry = entry.replace(hub_repo_id=repo_id or entry.hub_repo_id)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        shutil.copy2(source / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
        for path in sorted(source.iterdir()):
            if path.is_file() and (
                path.name in PUBLISHED_FILES or any(path.match(p) for p in PUBLISHED_PATTERNS)
            ):
                shutil.copy2(path, tmp / path.name)
        if entry.metrics:
            (tmp / "metrics.json").write_text(json.dumps(entry.metrics, indent=2) + "\n", "utf-8")
        config = timm_config(entry, _num_features_of(source))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", "utf-8")
        (tmp / CARD_FILE).write_text(model_card_text(entry, repo_id=repo_id, folder=tmp), "utf-8")
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _num_features_of(folder: Path) -> int:
    try:
        return int(json.loads((folder / CONFIG_FILE).read_text("utf-8"))["num_features"])
    except (OSError, ValueError, KeyError, TypeError):
        from medzoo.zoo.index import _num_features, model_info

        return _num_features(model_info(folder.name).arch)


def check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not _REPO_ID_RE.match(repo_id) or ".." in repo_id:
        raise MedzooError(
            f"invalid Hub repository id {repo_id!r}: use ORG/NAME, e.g. my-lab/bt-crc-r18"
        )
    return repo_id


def push_to_hub(
    name: str,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload ``name``'s :func:`save_for_hub` folder to ``repo_id``; returns the commit URL.

    The repository is created if needed (``exist_ok``), a ``revision`` branch too. On success
    the entry records ``hub_repo_id`` and the uploaded commit as ``hub_revision``, so
    ``medzoo.load(name)`` on another machine fetches exactly these weights. The token comes from
    ``token`` or huggingface_hub's login / ``HF_TOKEN``, and is never printed.
    """
    from huggingface_hub import HfApi, get_token

    from medzoo import __version__
    from medzoo.zoo.index import update_entry

    check_repo_id(repo_id)
    token = token or get_token()
    if not token:
        raise MedzooError(
            "no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again"
        )
    with tempfile.TemporaryDirectory(prefix="medzoo-push-") as tmp:
        folder = save_for_hub(name, Path(tmp) / name, repo_id=repo_id)
        api = HfApi(token=token, library_name="medzoo", library_version=__version__)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                revision=revision,
                commit_message=commit_message or f"Upload {name} with medzoo {__version__}",
            )
        except Exception as err:
            message = (str(err).splitlines() or [""])[0].replace(token, "***")
            raise MedzooError(
                f"upload of {name} to {repo_id} failed ({type(err).__name__}: {message}); nothing "
                "was recorded, fix the cause and push again"
            ) from None
    commit = getattr(info, "oid", None) or revision or "main"
    update_entry(name, hub_repo_id=repo_id, hub_revision=commit)
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")
