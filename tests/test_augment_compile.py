"""`augment.compile`: the augmentation as one torch.compile graph, against the eager pass.

Tolerances:

- the graph-friendly pass run eagerly (whole batch, ``torch.where`` selection) against the CPU
  index pass (chunks, only the selected samples computed): SELECT_ATOL = 1e-6. The same float
  ops run on every sample in the same order; measured: equal for histology, 5e-7 apart for ct
  (a convolution or reduction over another batch may take another kernel and summation order).
- compiled against eager: COMPILE_ATOL = 1e-4 in normalised units, as the pipeline-vs-torchvision
  tolerance of tests/test_augment.py. Inductor fuses and reorders float32 arithmetic (contracted
  multiply-adds, its own reductions for the contrast mean), ~1e-7 relative per op over ten ops,
  divided by std ~0.23: 2e-6 to 5e-6 measured. A pixel that lands within that rounding of the
  solarise threshold (128/255) may flip in one pass and not the other (neither is more exact),
  so at most COMPILE_FLIP_FRACTION of the elements may exceed the tolerance.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from medzoo.config import AugmentConfig, augment_compiled, load_pretrain_config
from medzoo.data import augment_ops as ops
from medzoo.data.augment import TwoViewAugment, ViewParams, resolve_augment
from medzoo.errors import MedzooError

ROOT = Path(__file__).resolve().parents[1]
SELECT_ATOL = 1e-6
COMPILE_ATOL = 1e-4
COMPILE_FLIP_FRACTION = 1e-4
CASES = [("histology", 3), ("ct", 1)]


def _augment(preset: str, channels: int, size: int = 24, compile: bool = False) -> TwoViewAugment:
    mean = (0.485, 0.456, 0.406) if channels == 3 else (0.449,)
    std = (0.229, 0.224, 0.225) if channels == 3 else (0.226,)
    params = resolve_augment(AugmentConfig(preset=preset))
    return TwoViewAugment(
        params, size, mean, std, cpu_chunk_pixels=3 * size * size, compile=compile
    )


def _images(batch: int, channels: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=gen)


def _mixed_params(aug: TwoViewAugment, images: torch.Tensor, view: int) -> ViewParams:
    """Drawn parameters with every optional op on for some samples and off for others."""
    prm = aug.sample_params(images, view, torch.Generator().manual_seed(view))
    n = images.shape[0]
    index = torch.arange(n)
    return dataclasses.replace(
        prm,
        jitter=index % 4 != 0,
        grayscale=index % 3 == 0,
        blur=index % 2 == 0,
        solarize=index % 3 == 1,
    )


# --------------------------------------------------------------------------- default suite


@pytest.mark.parametrize("op", ["jitter", "grayscale", "blur", "solarize"])
def test_masked_where_equals_index_for_each_op(op: str) -> None:
    x = torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([True, False, True, True, False, False])
    factor = torch.linspace(0.6, 1.4, 6)
    calls = {
        "jitter": (
            ops.color_jitter,
            (factor, factor, factor, factor - 1, torch.randperm(4).repeat(6, 1)),
        ),
        "grayscale": (ops.rgb_to_grayscale, ()),
        "blur": (lambda b, s: ops.gaussian_blur(b, s, kernel_size=5), (factor,)),
        "solarize": (ops.solarize, ()),
    }
    fn, args = calls[op]
    index = ops.masked(mask, fn, x.clone(), *args, where=False)
    where = ops.masked(mask, fn, x.clone(), *args, where=True)
    assert torch.allclose(index, where, atol=SELECT_ATOL)
    assert torch.equal(where[~mask], x[~mask])


@pytest.mark.parametrize("preset, channels", CASES)
def test_graph_pass_equals_the_cpu_index_pass(preset: str, channels: int) -> None:
    """apply_graph (what torch.compile traces), run eagerly, equals apply on the CPU."""
    aug = _augment(preset, channels)
    images = _images(10, channels)  # 3 images per chunk: a ragged last chunk of 1
    for view in (0, 1):
        prm = _mixed_params(aug, images, view)
        assert torch.allclose(
            aug.apply_graph(images, prm), aug.apply(images, prm), atol=SELECT_ATOL
        )


def test_augment_compile_follows_training_compile_on_cuda_unless_set() -> None:
    recipe = ROOT / "recipes" / "demo.toml"
    compiled = load_pretrain_config(recipe, ["training.compile=true"])
    assert not augment_compiled(load_pretrain_config(recipe), "cuda")
    assert augment_compiled(compiled, "cuda")
    assert augment_compiled(compiled, torch.device("cuda", 1))
    assert not augment_compiled(compiled, "cpu")  # auto: eager on CPU, measured faster at 224 px
    assert not augment_compiled(
        load_pretrain_config(recipe, ["training.compile=true", "augment.compile=false"]), "cuda"
    )
    assert augment_compiled(load_pretrain_config(recipe, ["augment.compile=true"]), "cpu")
    assert not augment_compiled(load_pretrain_config(recipe, ["augment.compile=auto"]), "cuda")


def test_a_compile_failure_falls_back_to_the_eager_views(monkeypatch, caplog) -> None:
    """Compiling is an optimisation: torch.compile's recompile limit under fullgraph, or a
    machine without a compiler, must not stop a pre-training run; the eager views go on."""

    def broken(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("recompile limit reached\nmore detail")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    aug, eager = _augment("histology", 3, compile=True), _augment("histology", 3)
    images = _images(6, 3)
    prm = _mixed_params(eager, images, 0)
    with caplog.at_level("WARNING", logger="medzoo"):
        out = aug.apply(images, prm)
    assert torch.equal(out, eager.apply(images, prm)) and aug.compile is False
    assert "compiled augmentation failed (RuntimeError: recompile limit reached)" in caplog.text

    def out_of_memory(fn, **kwargs):
        def call(*args, **kw):
            raise torch.OutOfMemoryError("CUDA out of memory")

        return call

    monkeypatch.setattr(torch, "compile", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):  # not a compile problem: eager would not help
        _augment("histology", 3, compile=True).apply(images, prm)


@pytest.mark.parametrize("value", ["ture", "yes", "1", '"true"'])
def test_augment_compile_typo_is_refused(value: str) -> None:
    with pytest.raises(MedzooError) as err:
        load_pretrain_config(ROOT / "recipes" / "demo.toml", [f"augment.compile={value}"])
    message = str(err.value)
    assert "augment.compile" in message and '"auto", true, false' in message
    assert "\n" not in message


def test_augment_compile_key_typo_names_the_key() -> None:
    with pytest.raises(MedzooError, match="augment.compil'.*did you mean 'compile'"):
        load_pretrain_config(ROOT / "recipes" / "demo.toml", ["augment.compil=true"])


def test_a_checkpoint_from_before_the_key_still_resumes() -> None:
    """A run saved before augment.compile existed has no such key in its checkpoint's recipe: it
    counts as the default ("auto"), so --resume accepts it; a real difference is still refused."""
    import copy

    from medzoo.config import to_dict
    from medzoo.pretrain import recipe_matches

    current = to_dict(load_pretrain_config(ROOT / "recipes" / "demo.toml"))
    old = copy.deepcopy(current)
    del old["augment"]["compile"]
    assert recipe_matches(old, current)
    assert not recipe_matches({**old, "augment": {**old["augment"], "compile": True}}, current)
    assert not recipe_matches({**old, "training": {**old["training"], "seed": 5}}, current)
    assert not recipe_matches({**old, "augment": {"compil": True}}, current)
    assert not recipe_matches(["not", "a", "recipe"], current)


def test_trainer_and_breakdown_compile_the_augmentation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both the training loop and the breakdown hand apply_graph to torch.compile (spied on:
    the graph runs eagerly here, the compiled parity is the slow test below)."""
    from medzoo.pretrain import benchmark

    compiled = []

    def spy(fn, **kwargs):
        compiled.append(getattr(fn, "__name__", type(fn).__name__))
        return fn

    monkeypatch.setattr(torch, "compile", spy)
    overrides = ["data.image_size=16", "training.batch_size=4", "model.projector_dims=[32]"]
    overrides.append("augment.compile=true")
    cfg = load_pretrain_config(ROOT / "recipes" / "demo.toml", overrides)
    result = benchmark(cfg, steps=1, synthetic=True, warmup_steps=0, breakdown=True)
    assert result["compile_augment"] is True and result["compile"] is False
    assert compiled == ["apply_graph", "apply_graph"]  # the loop's, then the breakdown's


# --------------------------------------------------------------------------- compiled (slow)


@pytest.mark.slow
@pytest.mark.parametrize("preset, channels", CASES)
def test_compiled_apply_equals_eager(preset: str, channels: int) -> None:
    """torch.compile(fullgraph=True) of the views on the CPU, against eager, same parameters;
    then a second batch size (a mix's part, the monitor's last batch) compiles once more, with a
    symbolic batch, and a third reuses it."""
    torch._dynamo.reset()
    eager, compiled = _augment(preset, channels), _augment(preset, channels, compile=True)
    torch._dynamo.utils.counters.clear()
    for batch in (12, 7, 5):
        images = _images(batch, channels, seed=batch)
        for view in (0, 1):
            prm = _mixed_params(eager, images, view)
            ours, ref = compiled.apply(images, prm), eager.apply(images, prm)
            assert ours.shape == ref.shape and ours.dtype == torch.float32
            far = (ours - ref).abs() > COMPILE_ATOL
            assert far.float().mean() <= COMPILE_FLIP_FRACTION, (
                batch,
                view,
                (ours - ref).abs().max(),
            )
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


@pytest.mark.slow
def test_a_mix_trains_with_compiled_parts_and_an_eager_monitor(tmp_path: Path) -> None:
    """A mix's parts change size every step: with augment.compile the parts compile at most two
    graphs each (a first size, then a symbolic batch), fullgraph; the monitor reads on."""
    import json

    from medzoo.data.synth import write_synthetic
    from medzoo.pretrain import pretrain

    root = tmp_path / "root"
    write_synthetic(root, ["derm"], size=32, per_class=8, classes=5, domain="Dermatoscopy")
    write_synthetic(root, ["crc"], size=32, per_class=12, seed=0)
    tiny = ["data.image_size=32", "model.projector_dims=[64, 64]", "training.batch_size=16"]
    tiny += ["training.epochs=1", "training.max_steps=4", "training.monitor_every_steps=2"]
    cfg = load_pretrain_config(
        ROOT / "recipes" / "pretrain-mix.toml",
        ['name="mix-compiled"', *tiny, "augment.compile=true", "optim.lr=1e-3"],
    )
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    folder = pretrain(cfg, data_root=root, out=tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "knn_acc" in r] == [0, 2, 4]
    # a first size, then one symbolic batch; crc (histology) and derm (dermatology) have equal
    # settings and share them (2 measured), at most two graphs per part otherwise
    assert 1 <= torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_apply_equals_eager_on_cuda() -> None:
    """The GPU's own parity (Triton kernels), same parameters, both presets; 1e-3 as
    tests/test_augment.py's CUDA test allows for TF32 matrix products if enabled globally."""
    for preset, channels in CASES:
        eager, compiled = _augment(preset, channels), _augment(preset, channels, compile=True)
        images = _images(16, channels).cuda()
        for view in (0, 1):
            prm = _mixed_params(eager, images.cpu(), view).to("cuda")
            ours, ref = compiled.apply(images, prm), eager.apply(images, prm)
            assert ours.device.type == "cuda"
            far = (ours - ref).abs() > 1e-3
            assert far.float().mean() <= COMPILE_FLIP_FRACTION, (preset, view)
