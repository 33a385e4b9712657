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
