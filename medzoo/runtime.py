"""Where and how a process trains: device, DDP rank (torchrun), precision.

``make_runtime`` initialises torch.distributed when torchrun started the process (nccl on CUDA,
gloo on CPU), picks the device (``training.device``: auto = the local GPU, else CPU) and the
precision (auto = bf16 on CUDA where supported, fp16 + GradScaler otherwise, fp32 on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from medzoo.config import PretrainConfig
from medzoo.errors import MedzooError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    local_rank: int
    amp_dtype: torch.dtype | None  # None: fp32
    use_scaler: bool
    channels_last: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_pref: str) -> tuple[int, int, int]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """The one precision rule of pre-training and fine-tuning: "bf16", "fp16" or "fp32".

    ``auto`` is bf16 on a GPU that supports it, fp16 (with a GradScaler) on one that does not,
    and fp32 on CPU; an explicit bf16/fp16 needs a GPU.
    """
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise MedzooError(f"precision = {precision!r} is not one of auto, bf16, fp16, fp32")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision in ("bf16", "fp16") and device.type != "cuda":
        raise MedzooError(f'precision = {precision} needs a GPU: use "auto" or "fp32" on CPU')
    return precision


def make_runtime(cfg: PretrainConfig) -> Runtime:
    """Device, DDP rank and precision for this process."""
    training = cfg.training
    rank, world_size, local_rank = _init_distributed(training.device)
    if training.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(training.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise MedzooError(
                'training.device asks for CUDA but no GPU is visible: set training.device="auto" or "cpu"'
            )
        if device.type == "cuda" and world_size > 1:
            device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        precision = resolve_precision(device, training.precision)
    except MedzooError as err:
        raise MedzooError(f"training.{err}") from None
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return Runtime(
        device=device,
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        amp_dtype=amp_dtype,
        use_scaler=precision == "fp16",
        channels_last=training.channels_last and device.type == "cuda",
    )
