"""Backbone BatchNorm under DDP (gloo, 2 CPU processes): the global batch's statistics.

``models.sync_batchnorm`` turns every BatchNorm2d of a backbone into ``GlobalBatchNorm2d`` under
gloo. Two ranks holding unequal shares of a fixed batch must produce the outputs, input
gradients, summed affine gradients and running statistics of ONE process running plain
``nn.BatchNorm2d`` on the whole batch. The inputs have a large mean (|mean| >> std), where the
one-pass variance E[x^2] - mean^2 loses most of its float32 digits; the two-pass one does not.
"""

from __future__ import annotations

from pathlib import Path

import torch
from ddp_support import save_result, spawn, teardown
from torch import nn

WORLD_SIZE = 2
ROWS = (3, 5)  # unequal shares of an 8-image batch


def _problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 1, bias=False), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].weight.copy_(torch.rand(4, generator=gen) + 0.5)
        model[1].bias.copy_(torch.randn(4, generator=gen))
    x = 3000.0 + 0.5 * torch.randn(8, 2, 3, 3, generator=gen)  # mean >> std
    target = torch.randn(8, 4, 3, 3, generator=gen)
    return model, x, target


def _step(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y = model(x)
    (y * target).sum().backward()
    bn = model[1]
    return {"y": y.detach(), "x_grad": x.grad, "w_grad": bn.weight.grad, "b_grad": bn.bias.grad,
            "running_mean": bn.running_mean.clone(), "running_var": bn.running_var.clone()}  # fmt: skip


def _worker(rank: int, port: int, out_dir: str) -> None:
    from medzoo.models import GlobalBatchNorm2d, sync_batchnorm

    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        model, x, target = _problem()
        model = sync_batchnorm(model, torch.device("cpu"))
        assert isinstance(model[1], GlobalBatchNorm2d)
        rows = slice(sum(ROWS[:rank]), sum(ROWS[: rank + 1]))
        save_result(_step(model, x[rows], target[rows]), out_dir, rank)
    finally:
        teardown()


def test_global_batchnorm2d_equals_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    spawn(_worker, tmp_path, WORLD_SIZE)
    model, x, target = _problem()
    single = _step(model.double(), x.double(), target.double())  # float64 reference
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    start = 0
    for rank, got in enumerate(ranks):
        rows = slice(start, start + ROWS[rank])
        start += ROWS[rank]
        torch.testing.assert_close(got["y"].double(), single["y"][rows], atol=2e-3, rtol=0)
        torch.testing.assert_close(
            got["x_grad"].double(), single["x_grad"][rows], atol=5e-2, rtol=1e-2
        )
        for key in ("running_mean", "running_var"):
            torch.testing.assert_close(got[key].double(), single[key], atol=1e-3, rtol=1e-3)
    for key in ("w_grad", "b_grad"):  # DDP would sum (average) these over ranks
        total = sum(r[key].double() for r in ranks)
        torch.testing.assert_close(total, single[key], atol=2e-2, rtol=1e-3)


def test_sync_batchnorm_keeps_parameters_and_state_dict_keys() -> None:
    from medzoo.models import GlobalBatchNorm2d, create_backbone, sync_batchnorm

    backbone = create_backbone()
    keys, params = list(backbone.state_dict()), [id(p) for p in backbone.parameters()]
    sync_batchnorm(backbone, torch.device("cpu"))
    assert list(backbone.state_dict()) == keys and [id(p) for p in backbone.parameters()] == params
    assert isinstance(backbone.layer1[0].bn2, GlobalBatchNorm2d)
    # outside DDP it is plain BatchNorm2d
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(backbone(x), create_backbone_like(backbone)(x))


def create_backbone_like(converted: nn.Module) -> nn.Module:
    from medzoo.models import create_backbone

    plain = create_backbone()
    plain.load_state_dict(converted.state_dict())
    return plain
