"""The linear probe: frozen-backbone features, cached on disk, and a multinomial logistic head.

The backbone runs once per (weights, dataset, split, image size, preprocessing) in eval mode
under ``torch.inference_mode`` -- so neither its weights nor its BatchNorm statistics can move --
and the pooled features land in ``$MEDZOO_HOME/cache/features/<key>.safetensors``. Every probe of
a label-fraction x seed sweep then trains from that cache: a linear layer on standardised
features, fitted full-batch with L-BFGS on the cross-entropy of the raw logits (no softmax
before the loss), with the weight decay chosen on the validation split.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medzoo.errors import MedzooError

FEATURE_CACHE_VERSION = 1  # bump when the extraction itself changes (pooling, dtype, ...)


# --------------------------------------------------------------------------- inputs


def match_channels(images: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Give a uint8 batch the model's channel count: grayscale is repeated for an RGB model.

    RGB images for a one-channel model are refused: converting histology to grayscale throws
    away the stain colour the task depends on (one of the seed paper's mistakes).
    """
    channels = images.shape[1]
    if channels == in_chans:
        return images
    if channels == 1 and in_chans == 3:
        return images.expand(-1, 3, -1, -1)
    raise MedzooError(
        f"images have {channels} channel(s) but the model expects {in_chans}; "
        "use an init trained on images with the same channels"
    )


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedzooError(
            f"device {name!r} requested but CUDA is not available; use device = 'cpu'"
        )
    return device


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pooled pre-logits features of a timm model, whatever head it carries."""
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    return model(x)


def extract_features(
    model: nn.Module,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    in_chans: int,
    device: torch.device,
    batch_size: int = 256,
) -> torch.Tensor:
    """Pooled features ``[N, D]`` (float32, CPU) of uint8 ``images`` through a frozen ``model``.

    The model is put in eval mode (BatchNorm uses its running statistics and never updates them)
    and run under ``torch.inference_mode``; inputs are normalised with ``mean``/``std``, the
    statistics that belong to the weights. Runs in fp32 (channels_last on CUDA) so that cached
    features do not depend on an autocast setting.
    """
    from medzoo.data.augment import normalize_uint8

    model.eval()
    model.to(device)
    cuda = device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = match_channels(images[start : start + batch_size], in_chans)
            batch = batch.to(device, non_blocking=cuda)
            x = normalize_uint8(batch, mean, std)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            chunks.append(pooled_features(model, x).float().cpu())
    if not chunks:
        return torch.zeros(0, getattr(model, "num_features", 0))
    return torch.cat(chunks)


# --------------------------------------------------------------------------- the cache


def feature_cache_dir() -> Path:
    """``$MEDZOO_HOME/cache/features``."""
    from medzoo.config import medzoo_home

    return medzoo_home() / "cache" / "features"


def data_fingerprint(
    root: str | os.PathLike[str], dataset_id: str, labels: torch.Tensor, indices: torch.Tensor
) -> str:
    """Changes when the data root, its image file, the split rows or the labels change."""
    digest = hashlib.sha256(str(Path(root).resolve() / dataset_id).encode())
    hdf5 = Path(root) / dataset_id / "images.hdf5"
    if hdf5.is_file():
        stat = hdf5.stat()
        digest.update(f"|{stat.st_size}|{stat.st_mtime_ns}".encode())
    digest.update(np.ascontiguousarray(indices.numpy()).tobytes())
    digest.update(np.ascontiguousarray(labels.numpy()).tobytes())
    return digest.hexdigest()[:32]


def cache_key(material: dict[str, Any]) -> str:
    """A file name for the features described by ``material`` (JSON-able, order-independent)."""
    text = json.dumps({"version": FEATURE_CACHE_VERSION, **material}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def cached_features(
    material: dict[str, Any],
    labels: torch.Tensor,
    compute: Callable[[], torch.Tensor],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> tuple[torch.Tensor, bool]:
    """Features for ``material``: from the cache when present, else computed and stored.

    Returns ``(features, hit)``. A cached file whose labels differ from ``labels`` is stale (it
    cannot be, given the key, short of tampering) and is recomputed.
    """
    if not use_cache:
        return compute(), False
    import safetensors.torch

    from medzoo.provenance import atomic_path

    folder = Path(cache_dir) if cache_dir is not None else feature_cache_dir()
    target = folder / f"{cache_key(material)}.safetensors"
    if target.is_file():
        try:
            stored = safetensors.torch.load_file(str(target))
            if torch.equal(stored["labels"], labels.cpu()):
                return stored["features"], True
        except Exception:  # a truncated or foreign file: recompute and replace it
            pass
    features = compute()
    meta = {"medzoo": json.dumps(material, sort_keys=True, default=str)}
    with atomic_path(target) as tmp:
        safetensors.torch.save_file(
            {"features": features.contiguous(), "labels": labels.cpu().contiguous()},
            str(tmp),
            metadata=meta,
        )
    return features, False


# --------------------------------------------------------------------------- the linear head


@contextlib.contextmanager
def _few_threads_for_small(x: torch.Tensor) -> Iterator[None]:
    """One intra-op thread for small CPU problems, where thread hand-offs cost more than the
    arithmetic (measured: a 108 x 512 probe step took 10 ms on 2 threads, 0.8 ms on 1)."""
    if x.device.type != "cpu" or x.numel() > 2_000_000:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class ProbeHead:
    """A linear classifier on standardised features; ``linear`` sees ``(x - mean) / std``.

    ``iterations`` is how many L-BFGS iterations the chosen head ran and ``converged`` whether
    it stopped on a tolerance rather than on ``max_iter``.
    """

    linear: nn.Linear
    mean: torch.Tensor
    std: torch.Tensor
    weight_decay: float
    val_accuracy: float
    iterations: int = 0
    converged: bool = True

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = (features.to(self.mean.device) - self.mean) / self.std
            return self.linear(x.to(self.linear.weight.dtype)).float()

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` acting on raw features: the standardisation folded in."""
        with torch.no_grad():
            weight = self.linear.weight / self.std
            bias = self.linear.bias - weight @ self.mean
        return weight.float().cpu(), bias.float().cpu()


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (floored, so dead ReLU units do not divide by zero)."""
    mean = features.mean(0)
    std = features.std(0, unbiased=False).clamp_min(1e-6)
    return mean, std


# --------------------------------------------------------------------------- batched L-BFGS

# (theta [H, P], need [H] bool) -> (loss [H], grad [H, P]); rows not needed may hold anything
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LbfgsResult:
    """What :func:`batched_lbfgs` found: ``theta [H, P]``, and per head the loss ``[H]``, the
    iterations run ``[H]`` and whether it stopped on a tolerance (``converged [H]``)."""

    theta: torch.Tensor
    loss: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vecdot(a, b)  # one pass, no [H, P] temporary


# long: one optimiser: the two-loop recursion, the line search and the stopping test share state
def batched_lbfgs(
    objective: Objective,
    theta0: torch.Tensor,
    *,
    max_iter: int = 100,
    history_size: int = 20,
    tolerance_grad: float = 1e-6,
    tolerance_change: float = 1e-9,
    max_backtracks: int = 40,
) -> LbfgsResult:
    """Minimise ``H`` independent smooth functions at once with L-BFGS, one optimiser per head.

    ``objective(theta, need)`` returns the loss ``[H]`` and gradient ``[H, P]`` of at least the
    heads where ``need`` is True; head ``h``'s loss must depend on ``theta[h]`` only. Each head
    keeps its own curvature history and scaling, its own Armijo backtracking step (from 1,
    halving) and its own stopping test (max gradient entry <= ``tolerance_grad``, or a loss or
    step change < ``tolerance_change``, or ``max_iter`` iterations: torch's ``LBFGS`` tests).
    Every operation acts on each row alone, so a head's iterates are the ones it would have if
    it were solved by itself: batching changes the speed, not the answer. (One L-BFGS on the
    *summed* loss, which ``torch.optim.LBFGS`` would run, mixes the heads' curvature and shares
    one iteration budget; its small problems then stop elsewhere than they would alone.)
    Finished heads leave the working set, so the optimiser's arithmetic follows the heads
    still running, and ``need`` tells the objective which heads it may skip.

    A head whose step fails every backtrack is at its numerical optimum and stops; a pair with
    no positive curvature is not stored for that head; a direction that is not a descent
    direction restarts that head from its gradient.
    """
    theta = theta0.detach().clone()
    heads, device = theta.shape[0], theta.device
    every = torch.ones(heads, dtype=torch.bool, device=device)
    loss, grad = objective(theta, every)
    iterations = torch.zeros(heads, dtype=torch.long, device=device)
    running = torch.ones(heads, dtype=torch.bool, device=device)  # not stopped on a tolerance
    # the working set: rows of the heads still running, and their state
    keep = grad.abs().amax(1) > tolerance_grad
    running &= keep
    rows = keep.nonzero().squeeze(1)
    th, f, g = theta[rows], loss[rows], grad[rows]
    pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (s, y, rho) per row
    gamma = torch.ones(len(rows), device=device)
    has_pair = torch.zeros(len(rows), dtype=torch.bool, device=device)
    for _ in range(max_iter):
        if len(rows) == 0:
            break
        # the two-loop recursion, per row; a pair with rho 0 leaves that row's direction alone
        first_step = (1.0 / g.abs().sum(1).clamp_min(1e-12)).clamp(max=1.0)  # torch's first step
        q = -g
        alphas = []
        for s, y, rho in reversed(pairs):
            alpha = rho * _rowdot(s, q)
            q.addcmul_(alpha[:, None], y, value=-1.0)  # in place: q is this loop's own
            alphas.append(alpha)
        direction = q.mul_(torch.where(has_pair, gamma, first_step)[:, None])
        for (s, y, rho), alpha in zip(pairs, reversed(alphas), strict=True):
            beta = rho * _rowdot(y, direction)
            direction.addcmul_((alpha - beta)[:, None], s)
        slope = _rowdot(g, direction)
        restart = ~(slope < 0)
        if bool(restart.any()):  # not a descent direction: forget that head's history
            direction = torch.where(restart[:, None], -g * first_step[:, None], direction)
            slope = _rowdot(g, direction)
            pairs = [(s, y, rho * ~restart) for s, y, rho in pairs]
            has_pair &= ~restart
        # Armijo backtracking, per row
        step = torch.ones(len(rows), device=device)
        pending = torch.ones(len(rows), dtype=torch.bool, device=device)
        new_th, new_f, new_g = th, f, g
        for _ in range(max_backtracks):
            trial = th + step[:, None] * direction
            full = theta.index_copy(0, rows, trial)
            need = torch.zeros(heads, dtype=torch.bool, device=device).index_fill_(
                0, rows[pending], True
            )
            trial_f, trial_g = objective(full, need)
            trial_f, trial_g = trial_f[rows], trial_g[rows]
            ok = pending & torch.isfinite(trial_f) & (trial_f <= f + 1e-4 * step * slope)
            new_th = torch.where(ok[:, None], trial, new_th)
            new_f = torch.where(ok, trial_f, new_f)
            new_g = torch.where(ok[:, None], trial_g, new_g)
            pending &= ~ok
            if not bool(pending.any()):
                break
            step = torch.where(pending, step * 0.5, step)
        stalled = pending  # no decrease along the direction: the head is done
        s, y = new_th - th, new_g - g
        sy = _rowdot(s, y)
        valid = ~stalled & (sy > 1e-10)
        rho = torch.where(valid, 1.0 / torch.where(valid, sy, torch.ones_like(sy)), 0.0)
        pairs = [*pairs, (s, y, rho)][-history_size:]
        gamma = torch.where(valid, sy / _rowdot(y, y).clamp_min(1e-30), gamma)
        has_pair |= valid
        change = (new_f - f).abs()
        moved_by = (step[:, None] * direction).abs().amax(1)
        th, f, g = new_th, new_f, new_g
        theta.index_copy_(0, rows, th)
        loss.index_copy_(0, rows, f)
        iterations.index_add_(0, rows, torch.ones_like(rows))
        done = (
            stalled
            | (g.abs().amax(1) <= tolerance_grad)
            | (change < tolerance_change)
            | (moved_by <= tolerance_change)
        )
        if bool(done.any()):  # finished heads leave the working set
            running.index_fill_(0, rows[done], False)
            left = ~done
            rows, th, f, g = rows[left], th[left], f[left], g[left]
            gamma, has_pair = gamma[left], has_pair[left]
            pairs = [(s[left], y[left], rho[left]) for s, y, rho in pairs]
    return LbfgsResult(theta, loss, iterations, ~running)


# --------------------------------------------------------------------------- the linear heads


class _SoftmaxProblems:
    """The objective of every (problem, weight decay) head: multinomial logistic regression.

    Head ``p * G + g`` fits problem ``p``'s rows with weight decay ``decays[g]``: the mean
    cross-entropy of the raw logits over those rows (``log_softmax`` inside, no softmax before
    the loss) plus ``wd / 2 * |W|^2`` (not on the bias). ``theta [P * G, K * (D + 1)]`` holds
    each head's ``[K, D]`` weight and ``[K]`` bias side by side. The gradient is the closed
    form ``(softmax - onehot)^T x / n + wd * W``. Each problem's heads are evaluated together
    on its own rows only, so a head's arithmetic does not depend on the other problems.
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, rows: Sequence[torch.Tensor],
        decays: Sequence[float], num_classes: int,
    ) -> None:  # fmt: skip
        self.xs = [x.index_select(0, r) for r in rows]
        self.ys = [y.index_select(0, r) for r in rows]
        self.grid = len(decays)
        self.decay = torch.tensor([float(w) for w in decays], device=x.device).view(-1, 1, 1)
        self.classes, self.dim = num_classes, x.shape[1]

    def shape(self, theta: torch.Tensor) -> torch.Tensor:
        return theta.view(-1, self.classes, self.dim + 1)

    def __call__(
        self, theta: torch.Tensor, need: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.shape(theta)
        losses = torch.zeros(theta.shape[0], device=theta.device)
        grads = torch.zeros_like(params)
        # a problem's heads are evaluated together whenever one of them is needed, so that a
        # head's arithmetic never depends on which other heads are still running
        wanted = need.view(-1, self.grid).any(1).tolist()
        for p, (xp, yp) in enumerate(zip(self.xs, self.ys, strict=True)):
            if not wanted[p]:
                continue
            heads = slice(p * self.grid, (p + 1) * self.grid)
            weight, bias = params[heads, :, : self.dim], params[heads, :, self.dim]
            n = max(len(yp), 1)
            rows_n = len(yp)
            # plain matrix products: at probe sizes einsum's own overhead was half the cost
            flat = torch.mm(xp, weight.reshape(-1, self.dim).t())  # [n, G * K]
            logits = flat.view(rows_n, self.grid, self.classes).transpose(0, 1) + bias[:, None, :]
            logp = torch.log_softmax(logits, dim=2)
            target = yp.view(1, -1, 1).expand(self.grid, -1, 1)
            penalty = 0.5 * (self.decay * weight.pow(2)).sum((1, 2))
            losses[heads] = -logp.gather(2, target)[..., 0].sum(1) / n + penalty
            residual = logp.exp()
            residual.scatter_add_(
                2, target, torch.full((self.grid, len(yp), 1), -1.0, device=xp.device)
            )
            residual /= n
            per_row = residual.transpose(0, 1).reshape(rows_n, -1)  # [n, G * K]
            grads[heads, :, : self.dim] = torch.mm(per_row.t(), xp).view(
                self.grid, self.classes, -1
            )
            grads[heads, :, : self.dim] += self.decay * weight
            grads[heads, :, self.dim] = residual.sum(1)
        return losses, grads.view(theta.shape)


def _fit_linear_heads(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    rows: Sequence[torch.Tensor],
    decays: Sequence[float],
    max_iter: int,
    *,
    tolerance_grad: float = 1e-6,
    history_size: int = 20,
) -> tuple[list[nn.Linear], LbfgsResult]:
    """One zero-initialised linear head per (problem, decay), all fitted by one batched L-BFGS."""
    problem = _SoftmaxProblems(x, y, rows, decays, num_classes)
    heads_n, dim = len(rows) * len(decays), x.shape[1]
    theta = torch.zeros(heads_n, num_classes * (dim + 1), device=x.device)
    with torch.no_grad(), _few_threads_for_small(x):
        result = batched_lbfgs(
            problem, theta, max_iter=max_iter, tolerance_grad=tolerance_grad,
            history_size=history_size,
        )  # fmt: skip
    params = problem.shape(result.theta)
    heads = []
    for h in range(heads_n):
        linear = nn.Linear(dim, num_classes).to(x.device)
        with torch.no_grad():
            linear.weight.copy_(params[h, :, :dim])
            linear.bias.copy_(params[h, :, dim])
        heads.append(linear.eval().requires_grad_(False))
    return heads, result


def train_linear_grid(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decays: Sequence[float],
    *,
    max_iter: int = 100,
) -> list[nn.Linear]:
    """Multinomial logistic regression on ``x`` for every weight decay, full-batch L-BFGS.

    Cross-entropy on the raw logits plus ``wd / 2 * |W|^2`` (not on the bias); every weight
    decay is its own problem with its own optimiser state (:func:`batched_lbfgs`), solved side
    by side. Zero initialisation makes the fit deterministic: the seed of a run only chooses
    its label fraction.
    """
    rows = [torch.arange(len(y), device=x.device)]
    return _fit_linear_heads(x, y, num_classes, rows, list(weight_decays), max_iter)[0]


def train_linear(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, *, max_iter: int = 100
) -> nn.Linear:
    """One head of :func:`train_linear_grid`."""
    return train_linear_grid(x, y, num_classes, [weight_decay], max_iter=max_iter)[0]


def fit_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    *,
    weight_decays: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    max_iter: int = 100,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> ProbeHead:
    """Fit one head per weight decay on ``train``; keep the best on val (ties: larger decay).

    ``stats`` standardise the features (default: those of ``train_x``; evaluation passes the
    statistics of the whole unlabelled train split, which are steadier than those of a 0.5 %
    subset). :func:`fit_probes` with one subset covering ``train_x``.
    """
    return fit_probes(
        train_x, train_y, val_x, val_y, num_classes, [np.arange(len(train_y))],
        weight_decays=weight_decays, max_iter=max_iter, stats=stats, device=device,
    )[0]  # fmt: skip


def fit_probes(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    train_subsets: Sequence[Sequence[int]],
    val_subsets: Sequence[Sequence[int]] | None = None,
    *,
    weight_decays: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    max_iter: int = 100,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    tolerance_grad: float = 1e-6,
    history_size: int = 20,
) -> list[ProbeHead]:
    """:func:`fit_probe` for many label subsets of one feature set (a sweep's (fraction, seed)
    runs of one init), every (subset, weight decay) head in one batched L-BFGS.

    Each subset's heads minimise the mean cross-entropy over its own rows with their own
    optimiser state (:func:`batched_lbfgs`), so each head is the one :func:`fit_probe` finds
    for that subset alone. ``val_subsets`` (default: all of val for each) choose each subset's
    weight decay, ties to the larger one. ``stats`` default to those of the whole ``train_x``
    (what evaluation passes to every run). ``tolerance_grad`` and ``history_size`` go to
    :func:`batched_lbfgs` (``bench/probe_cache.py --convergence`` measures what they change).
    """
    device = torch.device(device)
    if not weight_decays:
        raise MedzooError("probe.weight_decays is empty: give at least one value, e.g. [1e-4]")
    if not train_subsets:
        return []
    mean, std = stats if stats is not None else feature_stats(train_x)
    mean, std = mean.to(device), std.to(device)
    tx = ((train_x.to(device) - mean) / std).float()
    vx = ((val_x.to(device) - mean) / std).float()
    ty, vy = train_y.to(device), val_y.to(device)
    decays = sorted(float(w) for w in weight_decays)
    rows = [_as_rows(s, device) for s in train_subsets]
    linears, result = _fit_linear_heads(
        tx, ty, num_classes, rows, decays, max_iter,
        tolerance_grad=tolerance_grad, history_size=history_size,
    )  # fmt: skip
    params = result.theta.view(len(linears), num_classes, -1)
    with torch.no_grad(), _few_threads_for_small(vx):  # every head's val predictions at once
        val_logits = torch.einsum("nd,hkd->hnk", vx, params[..., :-1]) + params[:, None, :, -1]
        correct = (val_logits.argmax(2) == vy[None]).float()  # [heads, n_val]
    out = []
    for p in range(len(rows)):
        every = torch.arange(len(vy), device=device)
        val_rows = every if val_subsets is None else _as_rows(val_subsets[p], device)
        chosen = correct[p * len(decays) : (p + 1) * len(decays)][:, val_rows]
        g = _choose_on_val(chosen)
        h = p * len(decays) + g
        accuracy = chosen[g].mean().item() if len(val_rows) else 0.0
        done = int(result.iterations[h]), bool(result.converged[h])
        out.append(ProbeHead(linears[h], mean, std, decays[g], accuracy, *done))
    return out


def _as_rows(subset: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(subset, dtype=np.int64), device=device)


def _choose_on_val(correct: torch.Tensor) -> int:
    """The index of the best head by val accuracy (``correct [G, n_val]``, weight decays in
    ascending order); ties go to the larger weight decay, the simpler model."""
    if correct.shape[1] == 0:
        return correct.shape[0] - 1
    accuracy = correct.mean(1).tolist()
    best = max(accuracy)
    return max(g for g, a in enumerate(accuracy) if a == best)
