"""Barlow Twins pre-training: one loop from a 2-core CPU to many GPUs under torchrun.

The whole step is on the device: a uint8 batch is gathered from the in-memory (or memory-mapped)
split on a background thread, pinned and copied non-blocking; two views are made in one batched
pass (:class:`medzoo.data.augment.TwoViewAugment`); backbone + projector run channels_last under
bf16/fp16 autocast on CUDA (fp32 on CPU); the loss reduces the cross-correlation over all ranks.

Determinism and exact resume: the sample order of an epoch is a permutation seeded by
``(seed, epoch)`` and the augmentation generator is re-seeded from ``(seed, step, rank)`` at every
step, so a resumed run draws exactly what an uninterrupted one would; model, optimiser, scheduler
and scaler states are in the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medzoo.config import PretrainConfig, default_mean_std, dump_toml, to_dict
from medzoo.data.batches import (
    BatchSource,
    load_images_per_rank,
    synthetic_images,
)
from medzoo.errors import MedzooError
from medzoo.provenance import atomic_path, atomic_write_json, atomic_write_text, provenance
from medzoo.runtime import Runtime, make_runtime

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"


# --------------------------------------------------------------------------- model and optimiser


def build_model(cfg: PretrainConfig) -> nn.Module:
    from medzoo.models import BarlowTwinsModel, create_backbone

    backbone = create_backbone(
        cfg.model.arch,
        in_chans=cfg.model.in_chans,
        pretrained=cfg.model.init == "imagenet",
    )
    return BarlowTwinsModel(backbone, cfg.model.projector_dims)


def _param_groups(model: nn.Module, cfg: PretrainConfig) -> list[dict[str, Any]]:
    optim = cfg.optim
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        # Biases and norm weights are 1-D: no weight decay (and no LARS adaptation) for them.
        (no_decay if optim.exclude_bias_and_norm and param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": optim.weight_decay, "lr": optim.lr}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr": optim.bias_lr or optim.lr})
    return groups


def build_optimizer(model: nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg)
    optim = cfg.optim
    if optim.name == "adam":
        return torch.optim.Adam(groups, lr=optim.lr)
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)
    from timm.optim import Lars

    # timm's LARS adapts only groups with weight decay (always_adapt=False), which is the official
    # recipe's exclusion of biases and norm parameters.
    return Lars(groups, lr=optim.lr, momentum=optim.momentum, trust_coeff=optim.lars_trust_coeff)


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float
) -> float:
    """Linear warm-up, then cosine to ``min_ratio`` (or constant)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    path: Path, model: nn.Module, optimizer, scheduler, scaler, step: int, cfg_dict
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "step": step,
        "recipe": json.dumps(cfg_dict, sort_keys=True),
        "rng_cpu": torch.get_rng_state(),
    }
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError as err:  # e.g. ENOSPC: atomic_path has removed the partial file
        raise MedzooError(
            f"could not write checkpoint {path} at step {step} ({err.strerror or err}); the previous "
            "checkpoint is intact: free space, then rerun with --resume"
        ) from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise MedzooError(
            f"checkpoint {path} cannot be read ({type(err).__name__}): delete it to start over"
        ) from None


# --------------------------------------------------------------------------- the loop


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a resumed run restarts from."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def default_run_dir(cfg: PretrainConfig) -> Path:
    return Path("runs") / f"pretrain-{cfg.name}"


def pretrain(
    cfg: PretrainConfig,
    *,
    data_root: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    register: bool = True,
    images: torch.Tensor | None = None,
    progress: bool = True,
) -> Path:
    """Pre-train ``cfg`` and return the zoo entry folder (or the run folder if not registering).

    ``images`` (uint8 [N, C, H, W]) bypasses the data root (benchmarks, tests).
    """
    from medzoo.zoo.index import validate_name

    validate_name(cfg.name)
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    cfg_dict = to_dict(cfg)
    checkpoint_path = run_dir / CHECKPOINT
    if checkpoint_path.exists() and not resume:
        raise MedzooError(
            f"{run_dir} already holds a run: add --resume to continue it, or choose another --out"
        )
    runtime = make_runtime(cfg)
    if images is None:
        images = load_images_per_rank(cfg, data_root, runtime)
    state = _train(cfg, cfg_dict, runtime, images, run_dir, resume, progress)
    if runtime.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    if not runtime.is_main or not register:
        return run_dir
    return _register(cfg, cfg_dict, state, run_dir)


def _train(
    cfg, cfg_dict, runtime: Runtime, images, run_dir: Path, resume: bool, progress: bool
) -> dict:
    from medzoo import losses
    from medzoo.data.augment import TwoViewAugment, resolve_augment

    training = cfg.training
    torch.manual_seed(training.seed)
    source = BatchSource(
        images, training.batch_size, training.seed, runtime.rank, runtime.world_size
    )
    total_steps = training.epochs * source.steps_per_epoch
    if training.max_steps is not None:
        total_steps = min(total_steps, training.max_steps)
    warmup_steps = round(cfg.optim.warmup_epochs * source.steps_per_epoch)

    model = build_model(cfg).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(
            s, total_steps, warmup_steps, cfg.optim.schedule, cfg.optim.min_lr_ratio
        ),
    )
    scaler = torch.amp.GradScaler("cuda") if runtime.use_scaler else None
    step = 0
    if resume and (run_dir / CHECKPOINT).exists():
        ckpt = load_checkpoint(run_dir / CHECKPOINT)
        if json.loads(ckpt["recipe"]) != json.loads(json.dumps(cfg_dict, sort_keys=True)):
            raise MedzooError(
                f"{run_dir / CHECKPOINT} was made with another recipe: resume with the same recipe and --set values"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng_cpu"])
        step = int(ckpt["step"])
        if runtime.is_main:
            _truncate_log(run_dir / LOG, step)
    elif runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "recipe.toml", dump_toml(cfg_dict))
        atomic_write_json(run_dir / "provenance.json", provenance())
        (run_dir / LOG).unlink(missing_ok=True)

    train_model: nn.Module = model
    if runtime.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=ids)
    if training.compile:
        train_model = torch.compile(train_model)

    mean, std = default_mean_std(cfg.model.in_chans)
    augment = TwoViewAugment(resolve_augment(cfg.augment), cfg.data.image_size, mean, std)
    aug_generator = torch.Generator(device=runtime.device)
    pin = runtime.device.type == "cuda"
    autocast = (
        torch.autocast(runtime.device.type, dtype=runtime.amp_dtype)
        if runtime.amp_dtype
        else nullcontext()
    )

    with contextlib.ExitStack() as stack:
        bar = None
        if progress and runtime.is_main:
            from tqdm.auto import tqdm

            bar = stack.enter_context(
                tqdm(
                    total=total_steps,
                    initial=step,
                    desc=f"pretrain {cfg.name}",
                    unit="step",
                    dynamic_ncols=True,
                )
            )
        log_handle = (
            stack.enter_context(open(run_dir / LOG, "a", encoding="utf-8"))
            if runtime.is_main
            else None
        )
        # One batch ahead on a worker thread: gathering rows and pinning overlap the GPU step.
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
        stack.callback(lambda: pending is not None and pending.cancel())
        pending = pool.submit(source.load, step, pin) if step < total_steps else None
        window_start, window_wait, window_samples = time.perf_counter(), 0.0, 0
        last_loss = float("nan")
        first_bad = torch.full((), -1, dtype=torch.long, device=runtime.device)
        bad_loss = torch.zeros((), device=runtime.device)
        train_model.train()
        while step < total_steps:
            wait_start = time.perf_counter()
            batch = pending.result()
            pending = pool.submit(source.load, step + 1, pin) if step + 1 < total_steps else None
            batch = batch.to(runtime.device, non_blocking=True)
            window_wait += time.perf_counter() - wait_start

            aug_generator.manual_seed((training.seed * 1_000_003 + step) * 1009 + runtime.rank)
            view1, view2 = augment(batch, generator=aug_generator)
            if runtime.channels_last:
                view1 = view1.contiguous(memory_format=torch.channels_last)
                view2 = view2.contiguous(memory_format=torch.channels_last)
            with autocast:
                z1 = train_model(view1)
                z2 = train_model(view2)
            loss = losses.barlow_twins_loss(z1.float(), z2.float(), cfg.loss.lambda_offdiag)
            # Recorded on the device (no host sync in the step); checked when the loss is read for
            # the log and before every checkpoint, so a non-finite run is never saved.
            newly_bad = (first_bad < 0) & ~torch.isfinite(loss.detach())
            first_bad = torch.where(newly_bad, step, first_bad)
            bad_loss = torch.where(newly_bad, loss.detach(), bad_loss)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            step += 1
            window_samples += training.batch_size

            log_now = step % training.log_every_steps == 0 or step == total_steps
            save_now = step % training.checkpoint_every_steps == 0 or step == total_steps
            if (log_now or save_now) and first_bad.item() >= 0:
                raise MedzooError(
                    f"loss became {bad_loss.item()} at step {first_bad.item()}; the last good "
                    f"checkpoint is kept in {run_dir / CHECKPOINT}: lower optim.lr or use "
                    "training.precision=fp32, then --resume"
                )
            if log_now:
                last_loss = loss.item()
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                record = {
                    "step": step,
                    "epoch": round(step / source.steps_per_epoch, 3),
                    "loss": last_loss,
                    "lr": optimizer.param_groups[0]["lr"],
                    "samples_per_s": window_samples / elapsed,
                    "data_wait": window_wait / elapsed,
                }
                if log_handle is not None:
                    log_handle.write(json.dumps(record) + "\n")
                    log_handle.flush()
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{last_loss:.4g}",
                        sps=f"{record['samples_per_s']:.1f}",
                        wait=f"{100 * record['data_wait']:.0f}%",
                    )
                window_start, window_wait, window_samples = time.perf_counter(), 0.0, 0
            if bar is not None:
                bar.update(1)
            if runtime.is_main and save_now:
                save_checkpoint(
                    run_dir / CHECKPOINT, model, optimizer, scheduler, scaler, step, cfg_dict
                )
    return {"model": _unwrap(model), "step": step, "loss": last_loss}


def _register(cfg: PretrainConfig, cfg_dict: dict, state: dict, run_dir: Path) -> Path:
    from medzoo.data.domains import resolve_domain
    from medzoo.zoo.entry import ZooEntry
    from medzoo.zoo.index import save_entry

    backbone = state["model"].backbone
    mean, std = default_mean_std(cfg.model.in_chans)
    prov = provenance()
    size = cfg.data.image_size
    entry = ZooEntry(
        name=cfg.name,
        arch=cfg.model.arch,
        method="barlow-twins",
        domain=cfg.data.domain,
        datasets=tuple(resolve_domain(cfg.data.domain)),
        in_chans=cfg.model.in_chans,
        input_size=(cfg.model.in_chans, size, size),
        mean=tuple(mean),
        std=tuple(std),
        num_classes=0,
        recipe=cfg_dict,
        metrics={"pretrain/final_loss": state["loss"], "pretrain/steps": state["step"]},
        created=prov["created"],
        versions=prov["versions"],
        git_commit=prov["git_commit"],
    )
    state_dict = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    extra = {
        "recipe.toml": dump_toml(cfg_dict),
        "provenance.json": json.dumps(prov, indent=2) + "\n",
    }
    log_path = run_dir / LOG
    if log_path.exists():
        extra["train_log.jsonl"] = log_path.read_text(encoding="utf-8")
    return save_entry(entry, state_dict, extra_files=extra)


# --------------------------------------------------------------------------- benchmark


def benchmark(
    cfg: PretrainConfig,
    steps: int,
    *,
    data_root: str | os.PathLike[str] | None = None,
    synthetic: bool = False,
    warmup_steps: int = 2,
    breakdown: bool = False,
) -> dict[str, Any]:
    """Samples/s, data-wait fraction and peak memory of ``steps`` pre-training steps.

    ``breakdown`` adds the per-phase times and the loop's efficiency against a bare loop on the
    same views (:mod:`medzoo.stepbench`, timed outside the loop).

    Nothing is registered; checkpoints go to a temporary folder. ``synthetic`` uses random uint8
    images at the recipe's size instead of a data root.
    """
    import dataclasses
    import resource
    import tempfile

    if steps < 1:
        raise MedzooError("--steps must be at least 1")
    total = steps + warmup_steps
    training = dataclasses.replace(
        cfg.training, max_steps=total, log_every_steps=1, checkpoint_every_steps=10**9
    )
    cfg = dataclasses.replace(cfg, training=training)
    if synthetic:
        count = max(cfg.training.batch_size * 2, cfg.training.batch_size * min(total, 8))
        images = synthetic_images(count, cfg.data.channels, cfg.data.image_size)
    runtime = make_runtime(cfg)
    if not synthetic:
        images = load_images_per_rank(cfg, data_root, runtime)
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runtime.device)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        _train(cfg, to_dict(cfg), runtime, images, Path(tmp), False, progress=False)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in (Path(tmp) / LOG).read_text().splitlines()]
    measured = records[warmup_steps:] or records
    seconds = sum(cfg.training.batch_size / r["samples_per_s"] for r in measured)
    result = {
        "recipe": cfg.name,
        "device": str(runtime.device),
        "precision": str(runtime.amp_dtype or torch.float32).replace("torch.", ""),
        "channels_last": runtime.channels_last,
        "compile": cfg.training.compile,
        "batch_size": cfg.training.batch_size,
        "image_size": cfg.data.image_size,
        "steps": len(measured),
        "samples_per_s": len(measured) * cfg.training.batch_size / seconds,
        "data_wait": sum(
            r["data_wait"] * cfg.training.batch_size / r["samples_per_s"] for r in measured
        )
        / seconds,
        "wall_s": wall,
    }
    if runtime.device.type == "cuda":
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated(runtime.device) / 2**30
    else:
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if breakdown:
        from medzoo.stepbench import add_efficiency, step_breakdown

        phases = step_breakdown(
            cfg, images, runtime, steps, build_model=build_model, build_optimizer=build_optimizer
        )
        result = add_efficiency(result, phases)
    return result
