"""GPU checks (marked `gpu`, excluded by default; run with `pytest -m gpu` on a CUDA machine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CRC = Path(__file__).resolve().parents[1] / "recipes" / "pretrain-crc.toml"


def test_pretrain_step_on_cuda_uses_bf16_and_channels_last() -> None:
    from medzoo.config import load_pretrain_config
    from medzoo.pretrain import benchmark

    cfg = load_pretrain_config(CRC, ["data.image_size=64", "training.batch_size=32"])
    result = benchmark(cfg, steps=3, synthetic=True, warmup_steps=1)
    assert result["device"].startswith("cuda")
    assert result["precision"] in ("bfloat16", "float16") and result["channels_last"]
    assert result["samples_per_s"] > 0 and result["peak_memory_gb"] > 0


def test_loss_on_cuda_matches_cpu() -> None:
    from medzoo.losses import barlow_twins_loss

    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(64, 128, generator=generator), torch.randn(64, 128, generator=generator)
    cpu = barlow_twins_loss(z1, z2)
    cuda = barlow_twins_loss(z1.cuda(), z2.cuda())
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-4, atol=1e-4)


def test_backbone_loads_on_cuda(tmp_path: Path) -> None:
    import medzoo

    model = medzoo.load("random-r18", device="cuda")
    with torch.inference_mode():
        out = model(torch.zeros(2, 3, 64, 64, device="cuda"))
    assert out.shape == (2, 512) and out.device.type == "cuda"
