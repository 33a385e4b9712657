"""Pre-training beyond liver and crc: any MIMeta dataset by its modality, evaluated after."""

from __future__ import annotations

from pathlib import Path

import pytest

from medzoo.cli import main
from medzoo.config import load_pretrain_config
from medzoo.data.domains import domain_preset, modality_preset
from medzoo.errors import MedzooError

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.image_size=32",
    "model.projector_dims=[64, 64]",
    "training.batch_size=16",
    "training.epochs=1",
    "training.max_steps=3",
    "training.checkpoint_every_steps=3",
    "training.log_every_steps=1",
    "optim.lr=1e-3",
]


@pytest.fixture(scope="module")
def derm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medzoo.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("derm")
    write_synthetic(root, ["derm"], size=32, per_class=8, classes=5, domain="Dermatoscopy")
    write_synthetic(root, ["cxr"], size=32, per_class=8, classes=2, domain="Chest X-ray")
    return root


@pytest.mark.parametrize(
    "modality, preset",
    [
        ("Abdominal CT", "ct"),
        ("Chest X-ray", "ct"),
        ("Brain MRI", "ct"),
        ("Mammography", "ct"),
        ("Breast Ultrasound", "ct"),
        ("Retinal OCT", "ct"),
        ("Histopathology", "histology"),
        ("Blood Cell Microscopy", "histology"),
        ("Dermatoscopy", "dermatology"),
        ("Skin lesion photographs", "dermatology"),
        ("Fundus photography", "fundus"),
        ("Weather radar", None),
    ],
)
def test_modality_picks_the_preset(modality: str, preset: str | None) -> None:
    assert modality_preset(modality) == preset


def test_unknown_ids_read_their_info_yaml(derm_root: Path) -> None:
    assert domain_preset("derm", derm_root) == "dermatology"
    assert domain_preset("cxr", derm_root) == "ct"
    assert domain_preset("crc") == "histology"  # known without a root
    with pytest.raises(MedzooError, match="set augment.preset"):
        domain_preset("nothing-here", derm_root)


def test_synth_needs_a_modality_for_unknown_ids(tmp_path: Path, capsys) -> None:
    assert main(["data", "synth", str(tmp_path / "r"), "--datasets", "derm"]) == 2
    assert "--domain" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path / "r"), "--datasets", "../x", "--domain", "CT"]) == 2
    assert main(["data", "synth", str(tmp_path / "r"), "--datasets", "x", "--domain", "CT",
                 "--classes", "40"]) == 2  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_info_shows_modality_and_preset(derm_root: Path, capsys) -> None:
    assert main(["data", "info", str(derm_root)]) == 0
    out = capsys.readouterr().out
    assert "Dermatoscopy" in out and "dermatology" in out and "Chest X-ray" in out


def test_pretrain_on_a_dermatology_dataset_then_evaluate(derm_root: Path, tmp_path: Path) -> None:
    import json

    from medzoo.config import from_dict
    from medzoo.evaluate import EvalConfig, evaluate
    from medzoo.pretrain import pretrain

    cfg = load_pretrain_config(
        ROOT / "recipes" / "pretrain-crc.toml",
        ['name="bt-derm-tiny"', 'data.domain="derm"', 'augment.preset="auto"', *TINY],
    )
    folder = pretrain(cfg, data_root=derm_root, out=tmp_path / "run", progress=False)
    config = json.loads((folder / "config.json").read_text())
    assert "dermatology" in (folder / "recipe.toml").read_text()  # the resolved preset is recorded
    assert "derm" in json.dumps(config)
    eval_cfg = from_dict(
        EvalConfig,
        {
            "name": "eval-derm",
            "datasets": ["derm"],
            "inits": ["bt-derm-tiny"],
            "strategies": ["probe"],
            "fractions": [1.0],
            "seeds": [0],
            "device": "cpu",
            "probe": {"weight_decays": [1e-3], "max_iter": 20},
        },
    )
    out = evaluate(eval_cfg, data_root=derm_root, out=tmp_path / "eval")
    rows = json.loads((out / "results.json").read_text())
    assert [(r["dataset"], r["init"]) for r in rows] == [("derm", "bt-derm-tiny")]
    assert 0.0 <= rows[0]["accuracy"] <= 1.0 and rows[0]["n_test"] == 5 * 4


def test_mix_recipe_runs_tiny_and_the_entry_records_the_mix(
    derm_root: Path, synth_root: Path, tmp_path: Path
) -> None:
    import json
    import shutil

    from medzoo.pretrain import pretrain

    root = tmp_path / "root"
    shutil.copytree(derm_root, root)
    shutil.copytree(synth_root / "crc", root / "crc")
    cfg = load_pretrain_config(
        ROOT / "recipes" / "pretrain-mix.toml",
        ['name="mix-tiny"', *TINY, "training.max_steps=4", "training.monitor_every_steps=2"],
    )
    assert cfg.data.domain == ("crc", "derm") and cfg.data.weights == (1.0, 1.0)
    folder = pretrain(cfg, data_root=root, out=tmp_path / "run", progress=False)
    mix = json.loads((folder / "mix.json").read_text())
    parts = {p["entry"]: p for p in mix["parts"]}
    assert parts["crc"]["preset"] == "histology" and parts["derm"]["preset"] == "dermatology"
    assert parts["crc"]["count"] == 108 and parts["derm"]["count"] == 40
    assert parts["crc"]["weight"] == parts["derm"]["weight"] == 0.5
    assert mix["channel_rule"] == "grayscale replicated to RGB"
    config = json.loads((folder / "config.json").read_text())
    assert "crc+derm" in json.dumps(config) and "derm" in json.dumps(config)
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "knn_acc" in r] == [0, 2, 4]


def test_weighted_epochs_draw_each_part_by_its_weight() -> None:
    import torch

    from medzoo.data.batches import WeightedBatchSource
    from medzoo.data.mix import MixPart

    parts = [
        MixPart("big", ("big",), "histology", 3, 90, 0.5),
        MixPart("small", ("small",), "ct", 1, 10, 0.5),
    ]
    images = torch.zeros(100, 1, 2, 2, dtype=torch.uint8)
    source = WeightedBatchSource(images, parts, 10, 0, 0, 1)
    rows = torch.cat([source.indices(step) for step in range(source.steps_per_epoch)])
    assert len(rows) == 100 and (rows >= 90).sum() == 50  # the small part: half of each epoch
    assert set((rows[rows >= 90] - 90).tolist()) == set(range(10))  # every image, 5 times


def test_mixed_augment_gives_each_sample_its_parts_views() -> None:
    import torch

    from medzoo.data.mix import MixedAugment

    def constant(value):
        return lambda batch, generator=None: (
            torch.full((len(batch), 3, 2, 2), value),
            torch.full((len(batch), 3, 2, 2), -value),
        )

    augment = MixedAugment([constant(1.0), constant(2.0)])
    groups = torch.tensor([1, 0, 0, 1, 1])
    view1, view2 = augment(torch.zeros(5, 3, 4, 4, dtype=torch.uint8), groups=groups)
    assert view1[:, 0, 0, 0].tolist() == [2.0, 1.0, 1.0, 2.0, 2.0]
    assert view2[:, 0, 0, 0].tolist() == [-2.0, -1.0, -1.0, -2.0, -2.0]


def test_a_mix_unifies_channels_by_the_stated_rule(derm_root: Path) -> None:
    import torch

    from medzoo.data.mimeta import load_split
    from medzoo.data.mix import load_mix_images, plan_mix

    cfg = load_pretrain_config(
        ROOT / "recipes" / "pretrain-mix.toml",
        ['data.domain=["derm", "cxr"]', "data.image_size=32", "data.weights=[2, 1]"],
    )
    parts = plan_mix(cfg, derm_root)
    assert [p.preset for p in parts] == ["dermatology", "ct"] and parts[1].channels == 1
    assert [round(p.weight, 3) for p in parts] == [0.667, 0.333]
    images = load_mix_images(cfg, derm_root, parts)
    cxr = load_split(derm_root, "cxr", "train").images
    assert images.shape == (40 + 16, 3, 32, 32)
    assert torch.equal(images[40:], cxr.expand(-1, 3, -1, -1))  # gray replicated to RGB
