"""Recipe schema: strict keys, closest-key hints, --set overrides, the shipped recipes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from medzoo.config import (
    PretrainConfig,
    apply_overrides,
    dump_toml,
    from_dict,
    load_pretrain_config,
    to_dict,
)
from medzoo.errors import MedzooError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize(
    "name", ["pretrain-crc", "pretrain-liver", "pretrain-crc-lars", "pretrain-liver-lars", "demo"]
)
def test_shipped_pretrain_recipes_load(name: str) -> None:
    cfg = load_pretrain_config(RECIPES / f"{name}.toml")
    assert cfg.model.in_chans == cfg.data.channels
    assert "test" not in cfg.data.splits


def test_paper_settings_in_pretrain_recipes() -> None:
    for name in ("pretrain-crc", "pretrain-liver"):
        cfg = load_pretrain_config(RECIPES / f"{name}.toml")
        assert (cfg.optim.name, cfg.optim.lr, cfg.training.batch_size, cfg.training.epochs) == (
            "adam",
            3e-2,
            256,
            1000,
        )
        assert cfg.model.projector_dims == (2048, 2048, 2048)
        assert cfg.loss.lambda_offdiag == 0.0051
    liver = load_pretrain_config(RECIPES / "pretrain-liver.toml")
    assert (liver.data.domain, liver.model.in_chans, liver.augment.preset) == ("liver", 1, "ct")
    lars = load_pretrain_config(RECIPES / "pretrain-crc-lars.toml")
    assert (lars.optim.name, lars.optim.bias_lr, lars.optim.warmup_epochs) == ("lars", 0.0048, 10.0)
    # the liver LARS recipe differs from pretrain-liver in the optimiser (and the name) only
    liver_lars = load_pretrain_config(RECIPES / "pretrain-liver-lars.toml")
    assert liver_lars.optim == lars.optim
    assert dataclasses.replace(liver_lars, name=liver.name, optim=liver.optim) == liver


def test_unknown_key_names_the_closest_valid_one() -> None:
    with pytest.raises(
        MedzooError, match=r"unknown recipe key 'training.batch_szie': did you mean 'batch_size'"
    ):
        from_dict(PretrainConfig, {"training": {"batch_szie": 4}})
    with pytest.raises(MedzooError, match="unknown recipe key 'trainig'"):
        from_dict(PretrainConfig, {"trainig": {}})


def test_wrong_types_and_values_are_one_line_errors() -> None:
    with pytest.raises(MedzooError, match="training.epochs must be an integer"):
        from_dict(PretrainConfig, {"training": {"epochs": "ten"}})
    with pytest.raises(MedzooError, match="optim.name = 'adamw' is not one of"):
        from_dict(PretrainConfig, {"optim": {"name": "adamw"}})
    with pytest.raises(MedzooError, match="never sees the test split"):
        from_dict(PretrainConfig, {"data": {"splits": ["train", "test"]}})
    with pytest.raises(MedzooError, match="model.in_chans = 1 but data.channels = 3"):
        from_dict(PretrainConfig, {"model": {"in_chans": 1}})


def test_overrides_parse_toml_values() -> None:
    raw = apply_overrides(
        {}, ["training.batch_size=32", "optim.lr=1e-3", "model.projector_dims=[64, 64]", "name=x-y"]
    )
    cfg = from_dict(PretrainConfig, raw)
    assert cfg.training.batch_size == 32 and cfg.optim.lr == 1e-3
    assert cfg.model.projector_dims == (64, 64) and cfg.name == "x-y"
    with pytest.raises(MedzooError, match="not of the form"):
        apply_overrides({}, ["training.batch_size"])


def test_missing_and_malformed_recipe_files(tmp_path: Path) -> None:
    with pytest.raises(MedzooError, match="recipe not found"):
        load_pretrain_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\nepochs = 1\n")
    with pytest.raises(MedzooError, match="not valid TOML"):
        load_pretrain_config(bad)


def test_dump_toml_round_trips(tmp_path: Path) -> None:
    import tomllib

    cfg = load_pretrain_config(RECIPES / "pretrain-crc-lars.toml")
    assert from_dict(PretrainConfig, tomllib.loads(dump_toml(to_dict(cfg)))) == cfg
