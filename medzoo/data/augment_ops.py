"""Batched image operations with per-sample parameters, each matching torchvision v2's kernel.

Every function takes a float batch ``[B, C, H, W]`` in [0, 1] (C = 1 or 3; ``resized_crop``
also takes uint8) and per-sample parameters as tensors ``[B]`` on the same device, and never
reads a value back to the host. ``tests/test_augment.py`` compares each with its
``torchvision.transforms.v2.functional`` counterpart for fixed parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # op ids 0..3 in a jitter order
_NO_OP = len(JITTER_OPS)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision and PIL
SOLARIZE_THRESHOLD = 128 / 255  # PIL's ImageOps.solarize(threshold=128) on uint8 images


# --------------------------------------------------------------------------- geometry


def _cubic_filter(x: Tensor) -> Tensor:
    """Keys cubic with a = -0.5: PIL's and torch's antialiased bicubic kernel."""
    a = -0.5
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _linear_filter(x: Tensor) -> Tensor:
    return (1 - x.abs()).clamp_(min=0)


def resample_matrix(
    start: Tensor,
    length: Tensor,
    in_size: int,
    out_size: int,
    interpolation: str = "bicubic",
    flip: Tensor | None = None,
    scale: float = 1.0,
) -> Tensor:
    """Per-sample ``[B, out_size, in_size]`` weights that crop ``[start, start + length)`` of an
    axis and resize it to ``out_size``, exactly as ``F.interpolate(..., antialias=True)`` (the
    kernel torchvision's resize uses): separable filter support widened by the scale when
    downscaling, window clipped to the crop and renormalised. ``flip`` reverses the output.

    Only the few taps of each output pixel are computed (``[B, out, taps]``) and scattered into
    the dense matrix.
    """
    support_base = 2.0 if interpolation == "bicubic" else 1.0
    kernel = _cubic_filter if interpolation == "bicubic" else _linear_filter
    taps = math.ceil(2 * support_base * max(in_size / out_size, 1.0)) + 2  # widest window
    # float64: coordinates up to a few hundred pixels with float32 would cost ~1e-5 in weights
    length_f = length.to(torch.float64)
    step = length_f / out_size  # input pixels per output pixel
    support = torch.where(step >= 1, support_base * step, torch.full_like(step, support_base))
    invscale = torch.where(step >= 1, 1 / step, torch.ones_like(step))
    out_idx = torch.arange(out_size, dtype=torch.float64, device=start.device)
    center = step[:, None] * (out_idx + 0.5)  # [B, out], in crop coordinates
    low = torch.trunc(center - support[:, None] + 0.5).clamp_(min=0)
    high = torch.minimum(torch.trunc(center + support[:, None] + 0.5), length_f[:, None])
    rel = low[:, :, None] + torch.arange(taps, dtype=torch.float64, device=start.device)
    weights = kernel((rel - center[:, :, None] + 0.5) * invscale[:, None, None])
    weights *= rel < high[:, :, None]
    total = weights.sum(dim=-1, keepdim=True)
    weights /= torch.where(total == 0, torch.ones_like(total), total)
    # no denormal float32 weights (from float64 values near a filter's zero): x86 multiplies
    # by them many times slower
    weights = torch.where(weights.abs() < 1e-20, torch.zeros_like(weights), weights)
    index = (rel + start[:, None, None]).clamp_(max=in_size - 1).long()  # masked taps add 0
    if flip is not None:
        weights = torch.where(flip[:, None, None], weights.flip(1), weights)
        index = torch.where(flip[:, None, None], index.flip(1), index)
    dense = torch.zeros(start.shape[0], out_size, in_size, device=start.device)
    return dense.scatter_add_(2, index, (weights * scale).to(torch.float32))


def resized_crop(
    images: Tensor,
    top: Tensor,
    left: Tensor,
    height: Tensor,
    width: Tensor,
    size: int,
    *,
    hflip: Tensor | None = None,
    vflip: Tensor | None = None,
    rot90: Tensor | None = None,
    interpolation: str = "bicubic",
    input_scale: float = 1.0,
) -> Tensor:
    """Crop each sample's box, resize to ``size x size``, then flip and rotate, in one pass.

    Equals torchvision's ``resized_crop(..., antialias=True)`` then ``hflip``, ``vflip`` and
    ``rotate(90 * k)`` per sample (float32 result times ``input_scale``, no rounding or clamping).
    The rotation by k quarter turns after the flips is rewritten as flips then a transpose:
    rot90_1 = transpose . hflip, rot90_2 = hflip . vflip, rot90_3 = transpose . vflip.
    """
    batch, channels, in_h, in_w = images.shape
    hflip = torch.zeros_like(top, dtype=torch.bool) if hflip is None else hflip
    vflip = torch.zeros_like(top, dtype=torch.bool) if vflip is None else vflip
    if rot90 is not None:
        k = rot90.remainder(4)
        hflip = hflip ^ ((k == 1) | (k == 2))
        vflip = vflip ^ ((k == 2) | (k == 3))
    rows = resample_matrix(top, height, in_h, size, interpolation, vflip, input_scale)
    cols = resample_matrix(left, width, in_w, size, interpolation, hflip)
    # channels beside the columns ([B, H, C, W]) make both passes plain batched GEMMs with one
    # weight matrix per sample: [B, H*C, W] @ [B, W, S], then [B, S, H] @ [B, H, C*S]
    x = torch.empty(batch, in_h, channels, in_w, device=images.device)
    x.copy_(images.permute(0, 2, 1, 3))  # converts to float in the same pass
    x = torch.bmm(x.view(batch, in_h * channels, in_w), cols.transpose(1, 2))
    x = torch.bmm(rows, x.view(batch, in_h, channels * size))
    x = x.view(batch, size, channels, size).permute(0, 2, 1, 3)
    out = torch.empty(batch, channels, size, size, device=images.device)
    if rot90 is not None:
        torch.where((k % 2 == 1)[:, None, None, None], x.transpose(-1, -2), x, out=out)
    else:
        out.copy_(x)
    return out


# --------------------------------------------------------------------------- selection


def masked(
    mask: Tensor,
    fn: Callable[..., Tensor],
    x: Tensor,
    *args: Tensor,
    inplace: bool = False,
    where: bool | None = None,
) -> Tensor:
    """``fn(x, *args)`` for the samples where ``mask`` is True, ``x`` unchanged elsewhere.

    ``args`` are per-sample tensors (batch dim first). Two selections of the same values:

    - *index* (CPU, eager): only the selected samples are computed (a blur with p 0.1 costs a
      tenth); reading the mask is free there. ``inplace`` lets it write them into ``x``.
    - *where*: every sample is computed and ``torch.where`` selects, so the host never waits for
      the device and the shapes never depend on the mask's values (a graph for torch.compile).

    ``where = None`` picks *where* off the CPU and while torch.compile traces, *index* otherwise.
    """
    if where is None:
        where = x.device.type != "cpu" or torch.compiler.is_compiling()
    if where:
        return torch.where(mask.view(-1, 1, 1, 1), fn(x, *args), x)
    index = mask.nonzero().squeeze(1)
    if index.numel() == 0:
        return x
    if index.numel() == x.shape[0]:
        return fn(x, *args)
    picked = fn(x.index_select(0, index), *(a.index_select(0, index) for a in args))
    return x.index_copy_(0, index, picked) if inplace else x.index_copy(0, index, picked)


# --------------------------------------------------------------------------- colour


def _luma(x: Tensor) -> Tensor:
    """``[B, 1, H, W]`` gray level (the image itself when it has one channel)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return (
        r.mul(GRAY_WEIGHTS[0])
        .add_(g, alpha=GRAY_WEIGHTS[1])
        .add_(b, alpha=GRAY_WEIGHTS[2])[:, None]
    )


def _per_sample(values: Tensor) -> Tensor:
    return values.to(torch.float32).view(-1, 1, 1, 1)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Gray level replicated over the input's channels (``rgb_to_grayscale(num_output_channels=C)``)."""
    return _luma(x).expand_as(x).clone()


def blend_op(
    x: Tensor, op: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor
) -> Tensor:
    """Brightness (op 0), contrast (1), saturation (2) or nothing (3, 4), chosen per sample.

    All three are torchvision's ``_blend``: ``clamp(r * x + (1 - r) * target, 0, 1)`` with target
    0, the mean gray level, or the gray image; one pass with per-sample ratio and target does any.
    Saturation of a one-channel image is the identity (as PIL and torchvision).
    """
    if x.shape[1] == 1:
        op = torch.where(op == 2, _NO_OP, op)
    one = torch.ones_like(brightness, dtype=torch.float32)
    ratio = torch.where(op == 0, brightness, one)
    ratio = torch.where(op == 1, contrast, ratio)
    ratio = torch.where(op == 2, saturation, ratio).to(torch.float32)
    gray = _luma(x)
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    away = _per_sample(1 - ratio)
    target = torch.addcmul(mean * away * _per_sample(op == 1), gray, away * _per_sample(op == 2))
    return torch.addcmul(target, x, _per_sample(ratio)).clamp_(0, 1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return blend_op(x, torch.zeros_like(factor, dtype=torch.long), factor, factor, factor)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    return blend_op(x, torch.ones_like(factor, dtype=torch.long), factor, factor, factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    return blend_op(x, torch.full_like(factor, 2, dtype=torch.long), factor, factor, factor)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue by ``shift`` turns (per sample), keeping S and V, in closed form.

    With max M, min m, chroma C = M - m and hue h in sixths of a turn ([0, 6)), HSV -> RGB is
    ``channel = m + C * ramp(h)`` with the ramps ``|h - 3| - 1``, ``2 - |h - 2|``, ``2 - |h - 4|``
    for R, G, B clamped to [0, 1]: no stacking or gathering, continuous in h, and equal to
    torchvision's ``_rgb_to_hsv``/``_hsv_to_rgb`` round trip up to float rounding.
    """
    if x.shape[1] == 1:
        return x.clone()
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    # elementwise max/min of three planes: much faster on CPU than aminmax over dim 1
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    chroma = maxc - minc
    # 0/1 masks and lerp instead of torch.where, which is several times slower on CPU;
    # lerp is exact at weights 0 and 1. Priority as torchvision: red, then green, then blue.
    red_max = (maxc == r).to(x.dtype)
    green_max = (maxc == g).to(x.dtype)
    numerator = torch.lerp(torch.lerp(r - g, b - r, green_max), g - b, red_max)
    base = (1 - red_max) * (4 - 2 * green_max)
    # where chroma is 0 the numerator is 0 too, and the hue does not matter
    sixths = numerator.div_(chroma.clamp(min=torch.finfo(x.dtype).tiny)).add_(base)
    sixths += 6 * _per_sample(shift)
    sixths.sub_(torch.floor(sixths * (1 / 6)), alpha=6)  # mod 6; remainder_ is slower on CPU
    ramps = ((3.0, 1.0, -1.0), (2.0, -1.0, 2.0), (4.0, -1.0, 2.0))  # (centre, sign, offset)
    if torch.compiler.is_compiling():  # no out= into a slice in a graph; Inductor fuses the cat
        planes = [
            torch.addcmul(minc, chroma, (sixths - c).abs().mul(s).add(o).clamp(0, 1))
            for c, s, o in ramps
        ]
        return torch.cat(planes, dim=1)
    out = torch.empty_like(x)
    # one plane per channel: broadcasting [B, 1, H, W] against [1, 3, 1, 1] is slow on CPU
    for channel, (centre, sign, offset) in enumerate(ramps):
        ramp = (sixths - centre).abs_().mul_(sign).add_(offset).clamp_(0, 1)
        torch.addcmul(minc, chroma, ramp, out=out[:, channel : channel + 1])
    return out


def color_jitter(
    x: Tensor,
    brightness: Tensor,
    contrast: Tensor,
    saturation: Tensor,
    hue: Tensor,
    order: Tensor,
    enabled: tuple[str, ...] = JITTER_OPS,
) -> Tensor:
    """Colour jitter with each sample's ops in its own random order, as torchvision's ColorJitter.

    ``order`` is a permutation of the ids of :data:`JITTER_OPS` per sample; ops not in
    ``enabled`` (strength 0) are skipped. Brightness, contrast and saturation run as
    :func:`blend_op` passes; hue is costly, so it runs once: a sample's blends before its hue go
    into "pre" passes, those after into "post" passes (len(enabled) - 1 of each, identity for
    the samples without an op there). The order is exact.
    """
    use_hue = "hue" in enabled and x.shape[1] == 3
    skip = {i for i, name in enumerate(JITTER_OPS) if name not in enabled}
    if x.shape[1] == 1:
        skip |= {JITTER_OPS.index("saturation"), JITTER_OPS.index("hue")}  # no-ops, as PIL
    ops = order
    for op_id in skip:
        ops = torch.where(ops == op_id, _NO_OP, ops)  # not ops[mask] = ...: that syncs on CUDA
    # move the skipped ops to the end, keeping the order of the others
    ops = ops.gather(1, torch.argsort((ops == _NO_OP).to(torch.int8), dim=1, stable=True))
    count = len(JITTER_OPS) - len(skip)
    factors = (brightness, contrast, saturation)
    if not use_hue:
        slots = [ops[:, slot] for slot in range(count)]
        return _blend_slots(x, slots, factors)
    hue_pos = torch.argmax((ops == JITTER_OPS.index("hue")).to(torch.int8), dim=1)
    no_op = torch.full_like(hue_pos, _NO_OP)
    before = [torch.where(slot < hue_pos, ops[:, slot], no_op) for slot in range(count - 1)]
    after = []
    for slot in range(count - 1):
        index = hue_pos + 1 + slot
        op = ops.gather(1, index.clamp(max=len(JITTER_OPS) - 1)[:, None])[:, 0]
        after.append(torch.where(index < count, op, no_op))
    out = adjust_hue(_blend_slots(x, before, factors), hue)
    return _blend_slots(out, after, factors)


def _blend_slots(x: Tensor, slots: list[Tensor], factors: tuple[Tensor, ...]) -> Tensor:
    # every sample goes through every pass: for a sample without an op in a pass blend_op is
    # x * 1 + 0, bit for bit the identity, and this is cheaper than selecting the others
    for op in slots:
        x = blend_op(x, op, *factors)
    return x


# --------------------------------------------------------------------------- filters


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """``[B, K]`` normalised 1-D Gaussian kernels, torchvision's ``_get_gaussian_kernel1d``."""
    half = (kernel_size - 1) / 2
    offsets = torch.arange(kernel_size, device=sigma.device) - half
    weights = torch.exp(-0.5 * (offsets[None] / sigma.to(torch.float32)[:, None]) ** 2)
    weights = weights / weights.sum(dim=1, keepdim=True)
    # Zero the far tail: below ~1e-38 float32 weights are denormal, and x86 multiplies by
    # denormals many times slower (a 23-tap blur with sigma < 0.6 ran ~10x slower). The
    # change to any pixel is below 23 * 1e-20.
    return torch.where(weights < 1e-20, torch.zeros_like(weights), weights)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Per-sample Gaussian blur: two 1-D passes (grouped convolutions), reflect padding.

    torchvision convolves once with the 2-D outer-product kernel; two 1-D passes are the same
    sum in another order (K + K instead of K * K multiplies per pixel).
    """
    batch, channels, height, width = x.shape
    if torch.compiler.is_compiling():
        return _blur_shifted(x, gaussian_kernels(sigma, kernel_size))
    weight = gaussian_kernels(sigma, kernel_size).repeat_interleave(channels, dim=0)  # [B*C, K]
    pad = kernel_size // 2
    groups = batch * channels
    flat = x.reshape(1, groups, height, width)
    flat = F.conv2d(
        F.pad(flat, (pad, pad, 0, 0), mode="reflect"), weight[:, None, None, :], groups=groups
    )
    flat = F.conv2d(
        F.pad(flat, (0, 0, pad, pad), mode="reflect"), weight[:, None, :, None], groups=groups
    )
    return flat.view(batch, channels, height, width)


def _blur_shifted(x: Tensor, kernels: Tensor) -> Tensor:
    """:func:`gaussian_blur` as weighted sums of shifted planes, for torch.compile: Inductor
    fuses each pass into one kernel, and no convolution's ``groups`` ties the graph to one batch
    size (a grouped convolution specialises it). Equal to the convolution up to float rounding
    (the taps are summed in another order)."""
    taps = kernels.shape[1]
    pad = taps // 2
    for dim, padding in ((3, (pad, pad, 0, 0)), (2, (0, 0, pad, pad))):
        size = x.shape[dim]
        padded = F.pad(x, padding, mode="reflect")
        x = sum(
            padded.narrow(dim, tap, size) * kernels[:, tap].view(-1, 1, 1, 1) for tap in range(taps)
        )
    return x


def solarize(x: Tensor, threshold: float = SOLARIZE_THRESHOLD) -> Tensor:
    """Invert the pixels at or above ``threshold`` (torchvision's ``solarize`` on [0, 1] floats)."""
    return torch.lerp(x, 1 - x, (x >= threshold).to(x.dtype))  # torch.where is slower on CPU
