"""Property-based tests (hypothesis): for any generated recipe value or image bytes, medzoo either
works or stops with one line (exit status 2 through the CLI) and writes nothing. Few examples
in the default suite; set HYPOTHESIS_PROFILE=thorough for many more."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medzoo.cli import main
from medzoo.config import load_pretrain_config
from medzoo.errors import MedzooError

ROOT = Path(__file__).resolve().parents[1]
CRC = ROOT / "recipes" / "pretrain-crc.toml"

settings.register_profile(
    "default-suite",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default-suite"))

NUMERIC_KEYS = [
    "training.epochs", "training.batch_size", "training.max_steps", "training.seed",
    "training.log_every_steps", "training.checkpoint_every_steps", "data.image_size",
    "data.memory_budget_gb", "optim.lr", "optim.bias_lr", "optim.weight_decay", "optim.momentum",
    "optim.warmup_epochs", "optim.min_lr_ratio", "optim.lars_trust_coeff", "loss.lambda",
    "augment.hflip_prob", "augment.hue", "augment.brightness",
]  # fmt: skip
PAIR_KEYS = ["augment.crop_scale", "augment.blur_sigma", "augment.blur_prob"]

numbers = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
)


def _toml(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return str(value)


def _loaded_values_are_sane(cfg) -> None:
    """What a loaded recipe promises the training loop."""
    t, o = cfg.training, cfg.optim
    assert t.epochs >= 1 and t.batch_size >= 2 and t.seed >= 0
    assert t.log_every_steps >= 1 and t.checkpoint_every_steps >= 1
    assert math.isfinite(o.lr) and o.lr > 0 and 0 <= o.momentum < 1
    assert 0 <= o.min_lr_ratio <= 1 and o.warmup_epochs >= 0 and cfg.data.image_size >= 16
    crop = cfg.augment.crop_scale
    assert crop is None or 0 < crop[0] <= crop[1] <= 1


@given(key=st.sampled_from(NUMERIC_KEYS), value=numbers)
def test_any_numeric_value_is_accepted_sanely_or_refused_in_one_line(key, value) -> None:
    try:
        cfg = load_pretrain_config(CRC, [f"{key}={_toml(value)}"])
    except MedzooError as err:
        assert "\n" not in str(err)
        return
    _loaded_values_are_sane(cfg)


@given(key=st.sampled_from(PAIR_KEYS), pair=st.lists(numbers, min_size=0, max_size=3))
def test_any_pair_value_is_accepted_sanely_or_refused_in_one_line(key, pair) -> None:
    text = "[" + ", ".join(_toml(v) for v in pair) + "]"
    try:
        cfg = load_pretrain_config(CRC, [f"{key}={text}"])
    except MedzooError as err:
        assert "\n" not in str(err)
        return
    _loaded_values_are_sane(cfg)
    loaded = getattr(cfg.augment, key.split(".")[1])
    assert len(loaded) == 2 and all(math.isfinite(v) for v in loaded)


@given(device=st.text(max_size=12))
def test_any_device_string_is_known_or_refused(device) -> None:
    try:
        cfg = load_pretrain_config(CRC, [f"training.device={device!r}".replace("'", '"')])
    except MedzooError:
        return
    assert cfg.training.device == "auto" or cfg.training.device.startswith(("cpu", "cuda"))


@given(key=st.sampled_from(NUMERIC_KEYS), value=numbers)
def test_the_cli_exits_2_with_one_line_and_writes_nothing(
    key, value, tmp_path_factory, capsys
) -> None:
    """Through the CLI (no data root, so no run ever starts): exit 2, one line, no file."""
    work = tmp_path_factory.mktemp("work")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        code = main(["pretrain", str(CRC), "--set", f"{key}={_toml(value)}",
                     "--data-root", str(work / "absent")])  # fmt: skip
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("medzoo: error: ") and "\n" not in err, err
    assert list(work.iterdir()) == []
    assert not (Path(os.environ["MEDZOO_HOME"]) / "models").exists()


def _png(width: int, height: int, mode: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()


image_bytes = st.one_of(
    st.binary(max_size=512),
    st.builds(
        lambda data, cut, noise: data[:cut] + noise,
        st.sampled_from([_png(16, 16, "RGB"), _png(16, 16, "L"), _png(7, 33, "I;16")]),
        st.integers(min_value=0, max_value=400),
        st.binary(max_size=64),
    ),
    st.builds(
        lambda data, at, byte: data[:at] + bytes([byte]) + data[at + 1 :],
        st.sampled_from([_png(16, 16, "RGB"), _png(16, 16, "L")]),
        st.integers(min_value=0, max_value=200),
        st.integers(min_value=0, max_value=255),
    ),
)


@pytest.mark.parametrize("in_chans", [1, 3])
@given(data=image_bytes)
def test_any_image_bytes_decode_or_are_refused_in_one_line(
    data, in_chans, tmp_path_factory
) -> None:
    from medzoo.export.predict import read_images
    from medzoo.zoo.entry import ZooEntry

    path = tmp_path_factory.mktemp("img") / "x.png"
    path.write_bytes(data)
    entry = ZooEntry(name="x", in_chans=in_chans, input_size=(in_chans, 24, 24))
    try:
        array = read_images(entry, [path])
    except MedzooError as err:
        assert "\n" not in str(err)
        return
    assert array.dtype == np.uint8 and array.shape == (1, in_chans, 24, 24)
