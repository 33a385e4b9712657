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
import dataclasses
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

from medzoo.config import (
    PretrainConfig,
    augment_compiled,
    default_mean_std,
    dump_toml,
    medzoo_home,
    to_dict,
)
from medzoo.data.batches import (
    BatchSource,
    load_images_per_rank,
    synthetic_images,
)
from medzoo.errors import MedzooError
from medzoo.monitor import CollapseWatch
from medzoo.provenance import atomic_path, atomic_write_json, atomic_write_text, provenance
from medzoo.runtime import Runtime, make_runtime
from medzoo.trainlog import LOG, NonFiniteGuard, TrainLog, truncate_log

CHECKPOINT = "checkpoint.pt"


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
    except (OSError, RuntimeError) as err:
        # On a full disk torch.save's zip writer raises RuntimeError ("unexpected pos"), not
        # OSError; atomic_path has removed the partial file either way.
        if isinstance(err, RuntimeError) and not _is_write_failure(err, path):
            raise
        reason = err.strerror if isinstance(err, OSError) and err.strerror else "write failed"
        if isinstance(err, RuntimeError):
            reason = "the disk is full or failing (the checkpoint writer stopped mid-file)"
        raise MedzooError(
            f"could not write checkpoint {path} at step {step} ({reason}); the previous "
            "checkpoint is intact: free space, then rerun with --resume"
        ) from None


def _is_write_failure(err: RuntimeError, path: Path) -> bool:
    """torch.save's RuntimeErrors that mean the file could not be written (full disk, I/O)."""
    text = str(err)
    if any(
        k in text
        for k in ("unexpected pos", "file write failed", "PytorchStreamWriter", "iostream error")
    ):
        return True
    try:  # the disk really is full: say so rather than guess from the message
        stat = os.statvfs(path.parent)
        return stat.f_bavail * stat.f_frsize < 64 * 2**20
    except OSError:
        return True


CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "recipe", "rng_cpu")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`; anything else is one line, not a crash."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise MedzooError(
            f"checkpoint {path} cannot be read ({type(err).__name__}): delete it to start over"
        ) from None
    problem = None
    if not isinstance(ckpt, dict):
        problem = f"it holds a {type(ckpt).__name__}, not a medzoo checkpoint"
    elif missing := [k for k in CHECKPOINT_KEYS if k not in ckpt]:
        problem = f"it lacks {', '.join(missing)}: not a medzoo pre-training checkpoint"
    elif not isinstance(ckpt["step"], int) or ckpt["step"] < 0:
        problem = f"its step {ckpt['step']!r} is not a non-negative integer"
    elif not isinstance(ckpt["recipe"], str) or not isinstance(ckpt["rng_cpu"], torch.Tensor):
        problem = "its recipe or random state is malformed"
    if problem is None:
        try:
            json.loads(ckpt["recipe"])
        except ValueError:
            problem = "its recipe is not JSON"
    if problem is not None:
        raise MedzooError(
            f"checkpoint {path} is damaged or foreign ({problem}): delete it to start over"
        )
    return ckpt


def recipe_matches(saved: Any, current: dict[str, Any]) -> bool:
    """Whether a checkpoint's recipe is the run's: equal after the saved one's missing keys take
    their defaults, so a checkpoint written before a key existed (``augment.compile``) resumes."""
    from medzoo.config import from_dict

    if not isinstance(saved, dict):
        return False
    try:
        saved = to_dict(from_dict(PretrainConfig, saved))
    except MedzooError:  # a key this version does not know, or a value it refuses
        return False
    return json.loads(json.dumps(saved, sort_keys=True)) == json.loads(
        json.dumps(current, sort_keys=True)
    )


def _restore(what: str, path: Path, load: Any, state: Any) -> None:
    """``load(state)``; a state that does not fit this recipe's model is one line."""
    try:
        load(state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MedzooError(
            f"checkpoint {path}: the {what} state does not fit this recipe ({first[:200]}): "
            "resume with the recipe that made it, or delete it to start over"
        ) from None


# --------------------------------------------------------------------------- the loop


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def default_run_dir(cfg: PretrainConfig) -> Path:
    return Path("runs") / f"pretrain-{cfg.name}"


def resolve_preset(
    cfg: PretrainConfig, data_root: str | os.PathLike[str] | None = None
) -> PretrainConfig:
    """``cfg`` with ``augment.preset = "auto"`` replaced by its domain's modality preset, so the
    recorded recipe says what ran."""
    if cfg.augment.preset != "auto" or not isinstance(cfg.data.domain, str):
        return cfg  # set, or a mix: medzoo.data.mix.plan_mix resolves each part's preset
    from medzoo.data.domains import domain_preset

    preset = domain_preset(cfg.data.domain, data_root or cfg.data.root)
    return dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, preset=preset))


# long: every check before any training starts, then train and register
def pretrain(
    cfg: PretrainConfig,
    *,
    data_root: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    register: bool = True,
    images: torch.Tensor | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Pre-train ``cfg`` and return the zoo entry folder (or the run folder if not registering).

    ``images`` (uint8 [N, C, H, W]) bypasses the data root (benchmarks, tests). Registering a
    name that already holds weights needs ``overwrite``; that, the run folder and the zoo are
    checked before any training starts.
    """
    from medzoo.provenance import ensure_writable_dir
    from medzoo.zoo.index import check_can_register, read_registry, validate_name

    validate_name(cfg.name)
    cfg = resolve_preset(cfg, data_root)
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    cfg_dict = to_dict(cfg)
    checkpoint_path = run_dir / CHECKPOINT
    if checkpoint_path.exists() and not resume:
        raise MedzooError(
            f"{run_dir} already holds a run: add --resume to continue it, or choose another --out"
        )
    if resume and not checkpoint_path.is_file():
        raise MedzooError(
            f"--resume: {run_dir} holds no checkpoint ({CHECKPOINT}) to continue; drop --resume "
            "to start a new run there"
        )
    ensure_writable_dir(run_dir, what="the run folder")
    if register:
        read_registry()  # an unreadable registry stops the run now, not after training
        ensure_writable_dir(medzoo_home(), what="the zoo (MEDZOO_HOME)")
        if not overwrite:
            check_can_register(cfg.name)
    mix = None
    if not isinstance(cfg.data.domain, str):  # a multi-domain mix: planned from metadata first
        from medzoo.config import data_root as resolve_root
        from medzoo.data.mix import plan_mix

        mix = plan_mix(cfg, resolve_root(data_root or cfg.data.root))
    runtime = make_runtime(cfg)
    monitor_data = None
    if images is None:
        images = load_images_per_rank(cfg, data_root, runtime)
        if runtime.is_main:
            monitor_data = _monitor_data(cfg, data_root)
    state = _train(
        cfg, cfg_dict, runtime, images, run_dir, resume, progress, monitor_data=monitor_data,
        mix=mix,
    )  # fmt: skip
    state["datasets"] = _dataset_ids(cfg, data_root)
    if runtime.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    if not runtime.is_main or not register:
        return run_dir
    return _register(cfg, cfg_dict, state, run_dir, overwrite=overwrite)


def _monitor_data(cfg: PretrainConfig, data_root: str | os.PathLike[str] | None):
    """The monitor's fixed val/train subsets, or None (off, or nothing labelled to measure)."""
    import logging

    from medzoo.config import data_root as resolve_root
    from medzoo.monitor import load_monitor_data

    training = cfg.training
    if training.monitor_every_steps == 0:
        return None
    found = load_monitor_data(
        resolve_root(data_root or cfg.data.root), _dataset_ids(cfg, data_root),
        image_size=cfg.data.image_size, channels=cfg.data.channels,
        val_size=training.monitor_val_size, train_size=training.monitor_train_size,
        seed=training.seed,
    )  # fmt: skip
    if isinstance(found, str):
        logging.getLogger("medzoo").warning("representation monitor off: %s", found)
        return None
    return found


def _train(
    cfg, cfg_dict, runtime: Runtime, images, run_dir: Path, resume: bool, progress: bool,
    monitor_data=None, mix=None,
) -> dict:  # fmt: skip
    trainer = Trainer(cfg, cfg_dict, runtime, images, run_dir, monitor_data=monitor_data, mix=mix)
    return trainer.fit(resume=resume, progress=progress)


class Trainer:
    """Barlow Twins pre-training: :meth:`step` is the method; the rest is bookkeeping.

    Set-up (:meth:`__init__`) builds the batches, model, optimiser and schedule; :meth:`restore`
    or :meth:`start_run_dir` resumes or opens the run folder; :meth:`fit` drives the steps with
    logging (:class:`medzoo.trainlog.TrainLog`), the non-finite-loss policy
    (:class:`medzoo.trainlog.NonFiniteGuard`) and checkpoints.
    """

    def __init__(
        self, cfg: PretrainConfig, cfg_dict: dict, runtime: Runtime, images, run_dir: Path,
        monitor_data=None, mix=None,
    ) -> None:  # fmt: skip
        cfg = resolve_preset(cfg)  # already resolved by pretrain(); benchmarks may pass "auto"
        self.cfg, self.cfg_dict, self.runtime, self.run_dir = cfg, cfg_dict, runtime, run_dir
        training = cfg.training
        torch.manual_seed(training.seed)
        self.mix = mix
        self.source = _batch_source(images, training, runtime, mix, weighted=bool(cfg.data.weights))
        self.total_steps = training.epochs * self.source.steps_per_epoch
        if training.max_steps is not None:
            self.total_steps = min(self.total_steps, training.max_steps)
        warmup_steps = round(cfg.optim.warmup_epochs * self.source.steps_per_epoch)

        self.model = build_model(cfg).to(runtime.device)
        if runtime.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(
                s, self.total_steps, warmup_steps, cfg.optim.schedule, cfg.optim.min_lr_ratio
            ),
        )
        self.scaler = torch.amp.GradScaler("cuda") if runtime.use_scaler else None
        mean, std = default_mean_std(cfg.model.in_chans)
        # augment.compile: the views as one torch.compile graph per batch (compiled on the first
        # step); the parameters are still drawn eagerly from aug_generator, so resume is exact
        self.augment, self.groups = _augmenter(
            cfg, mix, mean, std, compile=augment_compiled(cfg, runtime.device)
        )
        self.aug_generator = torch.Generator(device=runtime.device)
        self.autocast = (
            torch.autocast(runtime.device.type, dtype=runtime.amp_dtype)
            if runtime.amp_dtype
            else nullcontext()
        )
        self.train_model: nn.Module = self.model  # wrapped by DDP / compile in fit()
        self.guard = NonFiniteGuard(runtime.device)
        self.monitor = None  # rank 0 measures (medzoo.monitor); the others wait at the next step
        if monitor_data is not None:
            from medzoo.monitor import Monitor

            # eager views for the monitor: its batches (another size, no gradients) would add
            # compiles, and its readings stay those of an uncompiled run
            compiled = augment_compiled(cfg, runtime.device)
            eager = _augmenter(cfg, mix, mean, std)[0] if compiled else self.augment
            self.monitor = Monitor(monitor_data, eager, mean, std, runtime.device)
        width = min(
            cfg.model.projector_dims[-1], len(monitor_data.val_labels) if monitor_data else 1
        )
        self.collapse = CollapseWatch(
            training.collapse_rank_fraction * width, training.collapse_patience
        )

    # ----------------------------------------------------------------------- the method

    def step(self, batch: torch.Tensor, step: int) -> torch.Tensor:
        """One Barlow Twins step on a uint8 batch: two views, one loss, one optimiser update."""
        from medzoo import losses

        view1, view2 = self.views(batch, step)
        with self.autocast:
            z1 = self.train_model(view1)
            z2 = self.train_model(view2)
        loss = losses.barlow_twins_loss(z1.float(), z2.float(), self.cfg.loss.lambda_offdiag)
        # Recorded on the device (no host sync in the step); checked when the loss is read for
        # the log and before every checkpoint, so a non-finite run is never saved.
        self.guard.record(loss, step)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()
        return loss

    def views(self, batch: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two augmented views, from a generator seeded by (seed, step, rank): exact resume."""
        seed = self.cfg.training.seed
        self.aug_generator.manual_seed((seed * 1_000_003 + step) * 1009 + self.runtime.rank)
        if self.groups is None:
            view1, view2 = self.augment(batch, generator=self.aug_generator)
        else:  # a mix: each sample's dataset picks its preset
            groups = self.groups[self.source.indices(step)]
            view1, view2 = self.augment(batch, generator=self.aug_generator, groups=groups)
        if self.runtime.channels_last:
            view1 = view1.contiguous(memory_format=torch.channels_last)
            view2 = view2.contiguous(memory_format=torch.channels_last)
        return view1, view2

    # ----------------------------------------------------------------------- bookkeeping

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def restore(self) -> int:
        """Load the run folder's checkpoint (same recipe only); returns the step to go on from."""
        ckpt = load_checkpoint(self.checkpoint_path)
        if not recipe_matches(json.loads(ckpt["recipe"]), self.cfg_dict):
            raise MedzooError(
                f"{self.checkpoint_path} was made with another recipe: resume with the same recipe and --set values"
            )
        checkpoint = self.checkpoint_path
        _restore("model", checkpoint, self.model.load_state_dict, ckpt["model"])
        _restore("optimizer", checkpoint, self.optimizer.load_state_dict, ckpt["optimizer"])
        _restore("scheduler", checkpoint, self.scheduler.load_state_dict, ckpt["scheduler"])
        if self.scaler is not None and ckpt["scaler"]:
            _restore("scaler", checkpoint, self.scaler.load_state_dict, ckpt["scaler"])
        _restore("random", checkpoint, torch.set_rng_state, ckpt["rng_cpu"])
        step = int(ckpt["step"])
        if self.runtime.is_main:
            truncate_log(self.run_dir / LOG, step)
        return step

    def start_run_dir(self) -> None:
        """A fresh run folder: the resolved recipe, provenance, and an empty log."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "recipe.toml", dump_toml(self.cfg_dict))
        atomic_write_json(self.run_dir / "provenance.json", provenance())
        if self.mix:
            from medzoo.data.mix import mix_record

            record = mix_record(self.mix, self.cfg.data.channels, bool(self.cfg.data.weights))
            atomic_write_json(self.run_dir / "mix.json", record)
        (self.run_dir / LOG).unlink(missing_ok=True)

    def wrap(self) -> None:
        """DDP across processes, then torch.compile, as the recipe says."""
        if self.runtime.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            device = self.runtime.device
            if self.cfg.model.sync_batchnorm is not False:  # the backbone's BN on the global batch
                from medzoo.models import sync_batchnorm

                sync_batchnorm(self.model.backbone, device)
            ids = [device.index] if device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        if self.cfg.training.compile:
            self.train_model = torch.compile(self.train_model)

    def save(self, step: int) -> None:
        """Checkpoint (and plot the monitor), unless the representation looks collapsed: then
        the last good checkpoint stays."""
        if self.collapse.suspect:
            return
        save_checkpoint(
            self.checkpoint_path, self.model, self.optimizer, self.scheduler, self.scaler, step,
            self.cfg_dict,
        )  # fmt: skip
        if self.monitor is not None:
            from medzoo.monitor import plot_monitor

            plot_monitor(self.run_dir / LOG, self.run_dir / "monitor.png")

    def observe(self, log: TrainLog, step: int) -> dict[str, float]:
        """Measure the representation (rank 0), log it, and stop the run if it collapsed."""
        reading: dict[str, float] = {}
        if self.monitor is not None:
            reading = self.monitor.measure(self.model)
            self.collapse.update(step, reading["effective_rank"])
            epoch = round(step / self.source.steps_per_epoch, 3)
            log.write({"step": step, "epoch": epoch, **reading})
            log.paused(reading["monitor_s"])
            log.show(
                knn=f"{100 * reading['knn_acc']:.1f}%", erank=f"{reading['effective_rank']:.1f}"
            )
        collapsed = self.collapse.collapsed and self.cfg.training.stop_on_collapse
        if self.runtime.world_size > 1:  # every rank stops together
            import torch.distributed as dist

            flag = torch.tensor([int(collapsed)], device=self.runtime.device)
            dist.broadcast(flag, src=0)
            collapsed = bool(flag.item())
        if collapsed:
            low = self.collapse.low
            kept = (
                f"the last good checkpoint is kept in {self.checkpoint_path}"
                if self.checkpoint_path.exists()
                else "no checkpoint was taken before it"
            )
            raise MedzooError(
                f"representation collapsed: effective rank {reading.get('effective_rank', 0):.1f} "
                f"< {self.collapse.threshold:.1f} at the {len(low)} monitor readings of steps "
                f"{low[0]}-{low[-1]}; {kept}: "
                "lower optim.lr or change the augmentation and start a new run "
                "(or set training.stop_on_collapse=false)"
            )
        return reading

    def log(self, log: TrainLog, step: int, loss: torch.Tensor) -> float:
        """Read the loss back (one host sync) and write a log line and the progress line."""
        value = loss.item()
        record = {
            "step": step,
            "epoch": round(step / self.source.steps_per_epoch, 3),
            "loss": value,
            "lr": self.optimizer.param_groups[0]["lr"],
            **log.throughput(),
        }
        log.write(record)
        log.show(
            loss=f"{value:.4g}",
            sps=f"{record['samples_per_s']:.1f}",
            wait=f"{100 * record['data_wait']:.0f}%",
        )
        return value

    def fit(self, *, resume: bool, progress: bool) -> dict[str, Any]:
        """Run to ``total_steps`` from the last checkpoint (``resume``) or from scratch."""
        runtime, training = self.runtime, self.cfg.training
        step = 0
        if resume and self.checkpoint_path.exists():
            step = self.restore()
        elif runtime.is_main:
            self.start_run_dir()
        self.wrap()
        pin = runtime.device.type == "cuda"
        last_loss, reading = float("nan"), {}
        every = training.monitor_every_steps
        with contextlib.ExitStack() as stack:
            log = TrainLog(
                stack, self.run_dir / LOG if runtime.is_main else None,
                total_steps=self.total_steps, step=step, desc=f"pretrain {self.cfg.name}",
                progress=progress and runtime.is_main,
            )  # fmt: skip
            # One batch ahead on a worker thread: gathering rows and pinning overlap the GPU step.
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
            ahead = _Prefetch(pool, self.source, pin, self.total_steps)
            stack.callback(ahead.cancel)
            ahead.submit(step)
            self.train_model.train()
            if every and step == 0:
                reading = self.observe(log, 0)
            while step < self.total_steps:
                wait_start = time.perf_counter()
                batch = ahead.take(step).to(runtime.device, non_blocking=True)
                log.waited(time.perf_counter() - wait_start)
                loss = self.step(batch, step)
                step += 1
                log_now = step % training.log_every_steps == 0 or step == self.total_steps
                save_now = step % training.checkpoint_every_steps == 0 or step == self.total_steps
                if log_now or save_now:
                    self.guard.check(self.checkpoint_path)
                log.stepped(training.batch_size)
                if log_now:
                    last_loss = self.log(log, step, loss)
                if every and (step % every == 0 or step == self.total_steps):
                    reading = self.observe(log, step)
                if runtime.is_main and save_now:
                    self.save(step)
        return {"model": _unwrap(self.model), "step": step, "loss": last_loss, "monitor": reading}


def _augmenter(cfg: PretrainConfig, mix, mean, std, *, compile: bool = False):
    """The two-view augmentation, and for a mix the part of every image (each its own preset).

    ``compile``: each :class:`TwoViewAugment` applies its views under torch.compile (a mix's
    parts vary in size from step to step: after the second size their graph has a symbolic batch).
    """
    from medzoo.data.augment import TwoViewAugment, resolve_augment

    size = cfg.data.image_size
    if mix:
        from medzoo.data.mix import MixedAugment, groups_of

        parts = [dataclasses.replace(cfg.augment, preset=part.preset) for part in mix]
        augments = [
            TwoViewAugment(resolve_augment(a), size, mean, std, compile=compile) for a in parts
        ]
        return MixedAugment(augments), groups_of(mix)
    augment = cfg.augment
    if augment.preset == "auto":  # a mix benchmarked without its data: the first entry's rules
        first = dataclasses.replace(cfg.data, domain=cfg.data.domain[0])
        augment = resolve_preset(dataclasses.replace(cfg, data=first)).augment
    return TwoViewAugment(resolve_augment(augment), size, mean, std, compile=compile), None


def _batch_source(images, training, runtime: Runtime, mix, *, weighted: bool) -> BatchSource:
    args = (training.batch_size, training.seed, runtime.rank, runtime.world_size)
    if mix and weighted:
        from medzoo.data.batches import WeightedBatchSource

        return WeightedBatchSource(images, mix, *args)
    return BatchSource(images, *args)


class _Prefetch:
    """The next batch, gathered (and pinned) on a worker thread while this one trains."""

    def __init__(self, pool: ThreadPoolExecutor, source: BatchSource, pin: bool, total: int):
        self.pool, self.source, self.pin, self.total = pool, source, pin, total
        self.pending = None

    def submit(self, step: int) -> None:
        self.pending = (
            self.pool.submit(self.source.load, step, self.pin) if step < self.total else None
        )

    def take(self, step: int) -> torch.Tensor:
        batch = self.pending.result()
        self.submit(step + 1)
        return batch

    def cancel(self) -> None:
        if self.pending is not None:
            self.pending.cancel()


def _dataset_ids(cfg: PretrainConfig, data_root: str | os.PathLike[str] | None) -> tuple[str, ...]:
    from medzoo.config import data_root as resolve_root
    from medzoo.data.domains import resolve_domain
    from medzoo.data.mix import entries

    root = resolve_root(data_root or cfg.data.root)
    return tuple(d for entry in entries(cfg) for d in resolve_domain(entry, root))


def _register(
    cfg: PretrainConfig, cfg_dict: dict, state: dict, run_dir: Path, *, overwrite: bool = False
) -> Path:
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
        domain=cfg.data.domain if isinstance(cfg.data.domain, str) else "+".join(cfg.data.domain),
        datasets=tuple(state["datasets"]),
        in_chans=cfg.model.in_chans,
        input_size=(cfg.model.in_chans, size, size),
        mean=tuple(mean),
        std=tuple(std),
        num_classes=0,
        recipe=cfg_dict,
        metrics={
            "pretrain/final_loss": state["loss"],
            "pretrain/steps": state["step"],
            **{f"pretrain/{k}": v for k, v in state.get("monitor", {}).items() if k != "monitor_s"},
        },
        created=prov["created"],
        versions=prov["versions"],
        git_commit=prov["git_commit"],
    )
    state_dict = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    extra = {
        "recipe.toml": dump_toml(cfg_dict),
        "provenance.json": json.dumps(prov, indent=2) + "\n",
    }
    for name in ("mix.json", "monitor.png"):
        if (run_dir / name).exists():
            extra[name] = (run_dir / name).read_bytes()
    log_path = run_dir / LOG
    if log_path.exists():
        extra["train_log.jsonl"] = log_path.read_text(encoding="utf-8")
    return save_entry(entry, state_dict, extra_files=extra, overwrite=overwrite)


# --------------------------------------------------------------------------- benchmark


# long: sets up the real loop and its optional breakdown on the same recipe and images
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
        "compile_augment": augment_compiled(cfg, runtime.device),
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
