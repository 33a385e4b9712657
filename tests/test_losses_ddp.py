"""Barlow Twins under DDP: 2 gloo processes on CPU equal one process on the concatenated batch.

Each rank gets a share of a fixed batch, runs a small linear "projector" wrapped in DDP and
back-propagates the loss. The loss on every rank and the DDP-averaged parameter gradients must
equal those of a single process on the whole batch (to 1e-5). The samples' own input gradients
on a rank are world_size times the single-process ones (see barlow_twins_loss's docstring).
"""

from __future__ import annotations

from pathlib import Path

import torch
from ddp_support import save_result, spawn, teardown

from medzoo.losses import barlow_twins_loss

WORLD_SIZE = 2
BATCH, IN_DIM, OUT_DIM = 8, 6, 5
SPLITS = {"equal": (4, 4), "unequal": (3, 5)}  # rows per rank


def _fixed_problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(IN_DIM, OUT_DIM)
    with torch.no_grad():
        model.weight.copy_(torch.randn(OUT_DIM, IN_DIM, generator=gen))
        model.bias.copy_(torch.randn(OUT_DIM, generator=gen))
    x1 = torch.randn(BATCH, IN_DIM, generator=gen)
    x2 = x1 + 0.3 * torch.randn(BATCH, IN_DIM, generator=gen)
    return model, x1, x2


def _step(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
    x1 = x1.clone().requires_grad_(True)
    x2 = x2.clone().requires_grad_(True)
    loss = barlow_twins_loss(model(x1), model(x2), lambda_offdiag=0.1)
    loss.backward()
    params = dict(model.named_parameters())
    return {
        "loss": loss.detach(),
        "weight_grad": params["module.weight" if "module.weight" in params else "weight"].grad,
        "bias_grad": params["module.bias" if "module.bias" in params else "bias"].grad,
        "x1_grad": x1.grad,
        "x2_grad": x2.grad,
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        results = {}
        for name, sizes in SPLITS.items():
            model, x1, x2 = _fixed_problem()
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            start = sum(sizes[:rank])
            rows = slice(start, start + sizes[rank])
            results[name] = _step(ddp, x1[rows], x2[rows])
        save_result(results, out_dir, rank)
    finally:
        teardown()


def test_ddp_loss_and_gradients_equal_single_process(tmp_path: Path) -> None:
    spawn(_worker, tmp_path, WORLD_SIZE)
    model, x1, x2 = _fixed_problem()
    single = _step(model, x1, x2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    for name, sizes in SPLITS.items():
        start = 0
        for rank in range(WORLD_SIZE):
            got = ranks[rank][name]
            rows = slice(start, start + sizes[rank])
            start += sizes[rank]
            assert torch.allclose(got["loss"], single["loss"], atol=1e-5), (name, rank)
            assert torch.allclose(got["weight_grad"], single["weight_grad"], atol=1e-5), (
                name,
                rank,
            )
            assert torch.allclose(got["bias_grad"], single["bias_grad"], atol=1e-5), (name, rank)
            # a rank's own samples see world_size x the single-process gradient (documented)
            for key in ("x1_grad", "x2_grad"):
                want = WORLD_SIZE * single[key][rows]
                assert torch.allclose(got[key], want, atol=1e-5), (name, rank, key)
