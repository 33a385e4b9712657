"""Batched two-view augmentation on the model's device, with per-sample random parameters.

The views are those of Barlow Twins (Zbontar et al. 2021, official ``main.py``): random resized
crop (scale 0.08-1, bicubic), horizontal flip 0.5, colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8,
grayscale p 0.2, Gaussian blur p 1.0 / 0.1 (sigma 0.1-2), solarisation p 0.0 / 0.2; the two
views differ only in the blur and solarisation probabilities. Two domain presets adapt them:

- ``histology`` (crc): horizontal AND vertical flips and random 90-degree rotations (tissue has
  no orientation), colour jitter as official.
- ``ct`` (organs, 1 channel): no horizontal flip (left and right organs are different classes),
  no vertical flip or rotation (anatomy has an orientation), no hue or saturation and no
  grayscale op (the images are gray); brightness/contrast jitter is the intensity jitter.
- ``dermatology``: as ``histology`` (a skin lesion has no orientation), for colour photographs.
- ``fundus``: colour jitter as official, but no flips or turns (laterality, vessel arcades).

Which preset a dataset gets follows its modality (:func:`medzoo.data.domains.modality_preset`).

A uint8 batch ``[B, C, H, W]`` (C = 1 or 3) on any device goes through one batched pass:

1. crop + resize + flips as two matrix products per sample (``W_y @ image @ W_x^T``): the
   weight rows are exactly the antialiased bicubic (Keys a = -0.5, PIL's) or bilinear filter
   that torchvision's ``resized_crop(..., antialias=True)`` uses, restricted to the crop box and
   renormalised at its edges, so crop and resize match torchvision to float rounding, also when
   downscaling; flips reverse the rows of a weight matrix and cost nothing; a 90-degree rotation
   adds a per-sample transpose. The 1/255 scaling is folded into the weights;
2. colour jitter in a random order drawn per sample, as torchvision's ``ColorJitter`` does
   (see :func:`color_jitter`), then grayscale, Gaussian blur (separable, per-sample sigma,
   reflect padding, grouped convolution), solarisation (threshold 128/255, as PIL's), and the
   mean/std normalisation.

No step reads a value back to the host, so on CUDA nothing synchronises. Random parameters are
drawn by :meth:`TwoViewAugment.sample_params` from an optional ``torch.Generator`` (exact resume,
deterministic tests) and applied by :meth:`TwoViewAugment.apply`. The per-operation kernels
live in :mod:`medzoo.data.augment_ops`.

``TwoViewAugment(..., compile=True)`` (the recipe's ``augment.compile``) runs ``apply`` as one
``torch.compile(fullgraph=True)`` graph of the whole batch (:meth:`TwoViewAugment.apply_graph`):
every op with p < 1 computed for all samples and selected with ``torch.where`` (the CPU's eager
index selection depends on the mask's values), the blur as shifted sums (a grouped convolution
would tie the graph to one batch size). A second batch size compiles once more, with a symbolic
batch; later sizes reuse it. The parameters are still drawn eagerly.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from medzoo.config import AugmentConfig
from medzoo.data import augment_ops as ops
from medzoo.errors import MedzooError

log = logging.getLogger("medzoo")

PRESETS = ("histology", "ct", "dermatology", "fundus")


@dataclass(frozen=True)
class AugmentParams:
    """Resolved augmentation settings: a preset's values with the recipe's overrides applied.

    Probabilities given as a pair are (view 1, view 2); everything else applies to both views.
    """

    preset: str = "histology"
    crop_scale: tuple[float, float] = (0.08, 1.0)  # fraction of the image area
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range, torchvision's default
    interpolation: str = "bicubic"  # bicubic (official) | bilinear
    hflip_prob: float = 0.5
    vflip_prob: float = 0.0
    rotate90: bool = False  # rotate by k * 90 degrees, k uniform in 0..3
    color_jitter_prob: float = 0.8
    brightness: float = 0.4  # factor uniform in [max(0, 1 - b), 1 + b]
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1  # shift uniform in [-h, h], h <= 0.5
    grayscale_prob: float = 0.2
    blur_prob: tuple[float, float] = (1.0, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # pixels, uniform per sample
    solarize_prob: tuple[float, float] = (0.0, 0.2)

    def __post_init__(self) -> None:
        _validate(self)


def _validate(params: AugmentParams) -> None:
    def fail(message: str) -> None:
        raise MedzooError(f"augment: {message}; fix the [augment] section of the recipe")

    if params.preset not in PRESETS:
        fail(f"preset {params.preset!r} is not one of {', '.join(PRESETS)}")
    if params.interpolation not in ("bicubic", "bilinear"):
        fail(f"interpolation {params.interpolation!r} is not bicubic or bilinear")
    probs = {
        "hflip_prob": (params.hflip_prob,),
        "vflip_prob": (params.vflip_prob,),
        "color_jitter_prob": (params.color_jitter_prob,),
        "grayscale_prob": (params.grayscale_prob,),
        "blur_prob": params.blur_prob,
        "solarize_prob": params.solarize_prob,
    }
    for name, values in probs.items():
        if not all(0.0 <= v <= 1.0 for v in values):
            fail(f"{name} = {values} must lie in [0, 1]")
    low, high = params.crop_scale
    if not 0.0 < low <= high <= 1.0:
        fail(f"crop_scale = {params.crop_scale} must satisfy 0 < min <= max <= 1")
    if not 0.0 < params.crop_ratio[0] <= params.crop_ratio[1]:
        fail(f"crop_ratio = {params.crop_ratio} must satisfy 0 < min <= max")
    for name in ("brightness", "contrast", "saturation"):
        if getattr(params, name) < 0:
            fail(f"{name} = {getattr(params, name)} must not be negative")
    if not 0.0 <= params.hue <= 0.5:
        fail(f"hue = {params.hue} must lie in [0, 0.5]")
    if not 0.0 < params.blur_sigma[0] <= params.blur_sigma[1]:
        fail(f"blur_sigma = {params.blur_sigma} must satisfy 0 < min <= max")


_PRESET_VALUES: dict[str, AugmentParams] = {
    "histology": AugmentParams(preset="histology", vflip_prob=0.5, rotate90=True),
    "ct": AugmentParams(
        preset="ct",
        hflip_prob=0.0,  # left and right organs (kidney, lung, femur) are different classes
        vflip_prob=0.0,
        rotate90=False,  # anatomy has an orientation
        saturation=0.0,  # gray images: intensity (brightness/contrast) jitter only
        hue=0.0,
        grayscale_prob=0.0,
    ),
    # dermoscopy and skin photographs: a lesion has no up or left, colour is kept official
    "dermatology": AugmentParams(preset="dermatology", vflip_prob=0.5, rotate90=True),
    # fundus photographs: the optic disc's side tells the left eye from the right (a label in
    # some tasks) and the vessels arch up and down, so no flips or turns; colour jitter official
    "fundus": AugmentParams(preset="fundus", hflip_prob=0.0, vflip_prob=0.0, rotate90=False),
}


def resolve_augment(cfg: AugmentConfig) -> AugmentParams:
    """The preset's values, replaced by every override in ``cfg`` that is not None.

    ``cfg.compile`` says how the views are computed, not which: it is not a parameter here
    (:func:`medzoo.config.augment_compiled` resolves it for :class:`TwoViewAugment`).
    """
    if cfg.preset not in _PRESET_VALUES:
        raise MedzooError(f"augment.preset = {cfg.preset!r} is not one of {', '.join(PRESETS)}")
    overrides = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name not in ("preset", "compile") and getattr(cfg, f.name) is not None
    }
    return dataclasses.replace(_PRESET_VALUES[cfg.preset], **overrides)


@dataclass(frozen=True)
class ViewParams:
    """Per-sample random parameters of one view; every field is a tensor with batch dim first."""

    top: Tensor  # int64 [B]: crop box in input pixels
    left: Tensor
    height: Tensor
    width: Tensor
    hflip: Tensor  # bool [B]
    vflip: Tensor  # bool [B]
    rot90: Tensor  # int64 [B]: counter-clockwise quarter turns, as torch.rot90
    jitter: Tensor  # bool [B]: colour jitter applied at all
    brightness: Tensor  # float [B] factors (1 = identity)
    contrast: Tensor
    saturation: Tensor
    hue: Tensor  # float [B] shift (0 = identity)
    order: Tensor  # int64 [B, 4]: a permutation of ops.JITTER_OPS per sample
    grayscale: Tensor  # bool [B]
    blur: Tensor  # bool [B]
    sigma: Tensor  # float [B]
    solarize: Tensor  # bool [B]

    def to(self, device: torch.device | str) -> ViewParams:
        return ViewParams(
            **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)}
        )


def _uniform(low: float, high: float, n: int, gen: torch.Generator | None, device) -> Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def _bernoulli(p: float, n: int, gen: torch.Generator | None, device) -> Tensor:
    return torch.rand(n, generator=gen, device=device) < p


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """torchvision's RandomResizedCrop box sampling, vectorised: ten tries per sample, the first
    valid one wins, else the central crop with the ratio clamped into range. Returns (top, left,
    height, width) as int64 [n]."""
    tries = 10
    area = float(height * width)
    log_low, log_high = torch.log(torch.tensor(ratio, dtype=torch.float64)).tolist()
    target = area * _uniform(*scale, n * tries, generator, device).double().view(n, tries)
    aspect = torch.exp(_uniform(log_low, log_high, n * tries, generator, device).double()).view(
        n, tries
    )
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(valid.to(torch.uint8), dim=1, keepdim=True)  # first True (0 if none)
    found = valid.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    u_top = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    u_left = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    # fallback: whole image, its aspect ratio clamped into the allowed range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw)).long()
    h = torch.where(found, h, torch.full_like(h, fh)).long()
    top = torch.floor(u_top * (height - h + 1)).long().clamp_(max=height - h)
    left = torch.floor(u_left * (width - w + 1)).long().clamp_(max=width - w)
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return top, left, h, w


def jitter_ranges(params: AugmentParams) -> dict[str, tuple[float, float]]:
    """Factor ranges of the enabled jitter ops (an op with strength 0 is skipped, as torchvision)."""
    ranges = {}
    for name in ("brightness", "contrast", "saturation"):
        strength = getattr(params, name)
        if strength > 0:
            ranges[name] = (max(0.0, 1.0 - strength), 1.0 + strength)
    if params.hue > 0:
        ranges["hue"] = (-params.hue, params.hue)
    return ranges


def normalize_uint8(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 ``[B, C, H, W]`` -> float32 ``(x / 255 - mean) / std``, no augmentation (evaluation)."""
    scale, shift = _normalise_affine(mean, std, images.shape[1], images.device)
    return torch.addcmul(shift, images.float(), scale / 255.0)


def _normalise_affine(mean, std, channels: int, device) -> tuple[Tensor, Tensor]:
    if len(mean) != channels or len(std) != channels:
        raise MedzooError(
            f"mean/std have {len(mean)}/{len(std)} values but the images have {channels} channels"
        )
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return 1.0 / std_t, -mean_t / std_t


class TwoViewAugment:
    """Two asymmetric Barlow Twins views of a uint8 batch, made in one batched pass.

    Args:
        params: resolved settings (:func:`resolve_augment`).
        image_size: side of the square output views.
        mean, std: per-channel normalisation of the [0, 1] output (len C).
        cpu_chunk_pixels: on CPU the batch is processed in chunks of about this many pixels per
            channel (4 images at 224 px) so that a chunk stays in cache through the chain of
            elementwise ops; on other devices the whole batch is one pass.
        compile: run :meth:`apply` as one ``torch.compile`` graph (``fullgraph``, the whole
            batch, ``torch.where`` selection): Inductor fuses the chain of elementwise kernels.
            The parameters are still drawn eagerly (:meth:`sample_params`).
    """

    def __init__(
        self,
        params: AugmentParams,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        cpu_chunk_pixels: int = 4 * 224 * 224,
        compile: bool = False,
    ) -> None:
        if image_size < 1:
            raise MedzooError(f"image_size = {image_size} must be positive")
        self.params = params
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.cpu_chunk_pixels = int(cpu_chunk_pixels)
        # 23 px at 224 as in the official recipe (about a tenth of the side), always odd
        self.blur_kernel_size = max(3, int(0.1 * self.image_size) | 1)
        self.compile = bool(compile)
        self._compiled: Callable[[Tensor, ViewParams], Tensor] | None = None

    def __call__(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Both views of ``images`` (uint8 ``[B, C, H, W]``): two float32 ``[B, C, S, S]``."""
        first = self.apply(images, self.sample_params(images, 0, generator))
        second = self.apply(images, self.sample_params(images, 1, generator))
        return first, second

    def single(
        self, images: Tensor, view: int = 0, generator: torch.Generator | None = None
    ) -> Tensor:
        """One augmented view (fine-tuning): view 0 or 1 chooses the blur/solarise probabilities."""
        return self.apply(images, self.sample_params(images, view, generator))

    def sample_params(
        self, images: Tensor, view: int = 0, generator: torch.Generator | None = None
    ) -> ViewParams:
        """Draw per-sample parameters for ``images``'s batch and size.

        They are drawn on the generator's device (the images' device without one) and moved to
        the images' device; pass a generator on the images' device to avoid the host copy.
        """
        if view not in (0, 1):
            raise ValueError(f"view must be 0 or 1, got {view}")
        _check_images(images)
        p = self.params
        n, _, height, width = images.shape
        dev = generator.device if generator is not None else images.device
        top, left, crop_h, crop_w = sample_crop_boxes(
            n, height, width, p.crop_scale, p.crop_ratio, generator, dev
        )
        rot90 = torch.zeros(n, dtype=torch.long, device=dev)
        if p.rotate90:
            rot90 = torch.randint(0, 4, (n,), generator=generator, device=dev)
        factors = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}
        drawn = {}
        for name, identity in factors.items():
            drawn[name] = torch.full((n,), identity, device=dev)
        for name, (low, high) in jitter_ranges(p).items():
            drawn[name] = _uniform(low, high, n, generator, dev)
        order = torch.argsort(
            torch.rand(n, len(ops.JITTER_OPS), generator=generator, device=dev), dim=1
        )
        sigma_low, sigma_high = p.blur_sigma
        result = ViewParams(
            top=top,
            left=left,
            height=crop_h,
            width=crop_w,
            hflip=_bernoulli(p.hflip_prob, n, generator, dev),
            vflip=_bernoulli(p.vflip_prob, n, generator, dev),
            rot90=rot90,
            jitter=_bernoulli(p.color_jitter_prob, n, generator, dev),
            order=order,
            grayscale=_bernoulli(p.grayscale_prob, n, generator, dev),
            blur=_bernoulli(p.blur_prob[view], n, generator, dev),
            sigma=_uniform(sigma_low, sigma_high, n, generator, dev),
            solarize=_bernoulli(p.solarize_prob[view], n, generator, dev),
            **drawn,
        )
        return result.to(images.device) if dev != images.device else result

    def apply(self, images: Tensor, params: ViewParams) -> Tensor:
        """Apply drawn parameters to a uint8 batch: float32 normalised ``[B, C, S, S]``."""
        _check_images(images)
        if self.compile:
            if self._compiled is None:
                # dynamic=None: a fixed batch shape compiles once; a second shape (a mix's parts,
                # the monitor's last batch) compiles one graph with a symbolic batch size
                self._compiled = torch.compile(self.apply_graph, fullgraph=True, dynamic=None)
            try:  # fp32 even inside the training loop's autocast region
                with torch.autocast(device_type=images.device.type, enabled=False):
                    return self._compiled(images, params)
            except torch.OutOfMemoryError:
                raise
            except Exception as error:  # noqa: BLE001 - compiling is an optimisation, never fatal
                # e.g. torch.compile's recompile limit (fullgraph raises instead of falling back)
                # or a compiler missing on the machine: the eager views are the same views
                reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
                log.warning(
                    "medzoo: the compiled augmentation failed (%s: %s); going on with the eager "
                    "one (set augment.compile = false to skip compiling)",
                    type(error).__name__, reason,
                )  # fmt: skip
                self.compile = False
        scale, shift = _normalise_affine(self.mean, self.std, images.shape[1], images.device)
        chunk = images.shape[0]
        if images.device.type == "cpu":
            pixels = max(images.shape[2] * images.shape[3], self.image_size**2)
            chunk = max(1, self.cpu_chunk_pixels // pixels)
        out = torch.empty(
            images.shape[0], images.shape[1], self.image_size, self.image_size, device=images.device
        )
        with torch.autocast(device_type=images.device.type, enabled=False):
            for start in range(0, images.shape[0], chunk):
                rows = slice(start, start + chunk)
                part = {f.name: getattr(params, f.name)[rows] for f in dataclasses.fields(params)}
                view = self._apply_chunk(images[rows], ViewParams(**part))
                torch.addcmul(shift, view, scale, out=out[rows])
        return out

    def apply_graph(self, images: Tensor, params: ViewParams) -> Tensor:
        """:meth:`apply` as one pass that ``torch.compile`` traces whole: the batch in one piece,
        every op with ``p < 1`` computed for all samples and selected with ``torch.where``
        (:func:`medzoo.data.augment_ops.masked`), no shape that depends on a value."""
        scale, shift = _normalise_affine(self.mean, self.std, images.shape[1], images.device)
        return torch.addcmul(shift, self._apply_chunk(images, params, where=True), scale)

    def _apply_chunk(self, images: Tensor, prm: ViewParams, where: bool | None = None) -> Tensor:
        p = self.params
        x = ops.resized_crop(
            images,
            prm.top,
            prm.left,
            prm.height,
            prm.width,
            self.image_size,
            hflip=prm.hflip,
            vflip=prm.vflip,
            rot90=prm.rot90 if p.rotate90 else None,
            interpolation=p.interpolation,
            input_scale=1.0 / 255.0,
        ).clamp_(0.0, 1.0)  # the uint8 pipeline clamps the bicubic overshoot too
        enabled = tuple(jitter_ranges(p))
        if p.color_jitter_prob > 0 and enabled:
            jitter = functools.partial(ops.color_jitter, enabled=enabled)
            factors = (prm.brightness, prm.contrast, prm.saturation, prm.hue, prm.order)
            x = ops.masked(prm.jitter, jitter, x, *factors, inplace=True, where=where)
        if p.grayscale_prob > 0 and x.shape[1] == 3:
            x = ops.masked(prm.grayscale, ops.rgb_to_grayscale, x, inplace=True, where=where)
        if max(p.blur_prob) > 0:
            blur = functools.partial(ops.gaussian_blur, kernel_size=self.blur_kernel_size)
            x = ops.masked(prm.blur, blur, x, prm.sigma, inplace=True, where=where)
        if max(p.solarize_prob) > 0:
            x = ops.masked(prm.solarize, ops.solarize, x, inplace=True, where=where)
        return x


def _check_images(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise MedzooError(
            f"augmentation needs a uint8 batch [B, C, H, W] with C = 1 or 3, got "
            f"{images.dtype} {tuple(images.shape)}; pass the images as loaded, before any conversion"
        )
