"""Where a pre-training step's time goes, timed from outside the training loop.

``medzoo bench pretrain RECIPE --breakdown`` runs the real loop (:func:`medzoo.pretrain.benchmark`)
and then this module, on the same recipe, device, images and model:

- the step phases, each timed alone with a device synchronisation after it: data (gather the
  uint8 rows and copy them to the device), augmentation (two views), forward (both views, under
  the recipe's autocast), loss, backward, optimiser (step, zero_grad, scheduler); the model and
  the augmentation compiled as the training loop compiles them (``training.compile``,
  ``augment.compile``), the compiling first step left out of the times;
- a *bare loop*: the model's forward + loss + backward + optimiser step on two views made once,
  i.e. what a plain training loop with no data or augmentation costs.

The ratio ``full step / bare loop`` (samples/s) is the loop's efficiency; the goal is >= 0.9 on
CPU and GPU. It is a ratio of two figures of one run, so it holds on a shared machine.
The phases are timed outside the loop on purpose: the loop itself is free to change shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

PHASES = ("data", "augment", "forward", "loss", "backward", "optimizer")
LOOP_EFFICIENCY_GOAL = 0.9


def _timer(device: torch.device) -> Callable[[], float]:
    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return now


# long: times each phase in turn on the same tensors; split, they would be passed everywhere
def step_breakdown(
    cfg: Any,
    images: torch.Tensor,
    runtime: Any,
    steps: int,
    *,
    build_model: Callable[[Any], torch.nn.Module],
    build_optimizer: Callable[[torch.nn.Module, Any], torch.optim.Optimizer],
) -> dict[str, Any]:
    """Seconds per step of each phase (mean over ``steps`` after one warm-up) and the bare loop.

    ``build_model`` and ``build_optimizer`` are the training loop's own (:mod:`medzoo.pretrain`
    passes them; this module does not import it, so the two stay free of an import cycle).
    """
    from medzoo import losses
    from medzoo.config import augment_compiled, default_mean_std
    from medzoo.data.augment import TwoViewAugment, resolve_augment
    from medzoo.data.batches import BatchSource

    training = cfg.training
    device = runtime.device
    torch.manual_seed(training.seed)
    source = BatchSource(images, training.batch_size, training.seed, 0, 1)
    model = build_model(cfg).to(device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run_model = torch.compile(model) if training.compile else model
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    mean, std = default_mean_std(cfg.model.in_chans)
    augment = TwoViewAugment(
        resolve_augment(cfg.augment),
        cfg.data.image_size,
        mean,
        std,
        compile=augment_compiled(cfg, device),  # the training loop's switch: timed as it trains
    )
    generator = torch.Generator(device=device)
    autocast = (
        torch.autocast(device.type, dtype=runtime.amp_dtype) if runtime.amp_dtype else nullcontext()
    )
    pin = device.type == "cuda"
    now = _timer(device)
    totals = dict.fromkeys(PHASES, 0.0)
    model.train()
    views = None
    for step in range(steps + 1):  # step 0 warms up (and compiles)
        t = [now()]
        batch = source.load(step, pin).to(device, non_blocking=True)
        t.append(now())
        generator.manual_seed(step)
        view1, view2 = augment(batch, generator=generator)
        if runtime.channels_last:
            view1 = view1.contiguous(memory_format=torch.channels_last)
            view2 = view2.contiguous(memory_format=torch.channels_last)
        t.append(now())
        with autocast:
            z1, z2 = run_model(view1), run_model(view2)
        t.append(now())
        loss = losses.barlow_twins_loss(z1.float(), z2.float(), cfg.loss.lambda_offdiag)
        t.append(now())
        loss.backward()
        t.append(now())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        t.append(now())
        if step:
            for phase, start, end in zip(PHASES, t[:-1], t[1:], strict=True):
                totals[phase] += end - start
        views = (view1, view2)

    assert views is not None
    view1, view2 = views

    def bare_step() -> None:
        with autocast:
            z1, z2 = run_model(view1), run_model(view2)
        loss = losses.barlow_twins_loss(z1.float(), z2.float(), cfg.loss.lambda_offdiag)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    bare_step()
    start = now()
    for _ in range(steps):
        bare_step()
    bare = (now() - start) / steps
    per_step = {phase: seconds / steps for phase, seconds in totals.items()}
    phases_sum = sum(per_step.values())
    return {
        "phase_seconds": per_step,
        "phase_fractions": {p: s / phases_sum for p, s in per_step.items()},
        "bare_loop_seconds": bare,
        "bare_loop_samples_per_s": training.batch_size / bare,
        "steps": steps,
    }


def add_efficiency(result: dict[str, Any], breakdown: dict[str, Any]) -> dict[str, Any]:
    """``result`` (the real loop's figures) with the breakdown and the efficiency ratio."""
    ratio = result["samples_per_s"] / breakdown["bare_loop_samples_per_s"]
    return {
        **result,
        "breakdown": breakdown,
        "loop_efficiency": ratio,
        "loop_efficiency_goal": LOOP_EFFICIENCY_GOAL,
        "loop_efficiency_met": ratio >= LOOP_EFFICIENCY_GOAL,
    }
