"""Augmentation speed: the batched two-view pipeline against per-image torchvision v2.

Both pipelines make the same two views (same per-sample parameters, drawn once by
``TwoViewAugment.sample_params``) from uint8 images at 224 px on the CPU, in one process.
The torchvision side is what a Dataset's ``__getitem__`` would do per image: the v2 functional
ops on a uint8 tensor (crop + bicubic antialiased resize, flips, rotation, colour jitter in the
sample's order, grayscale, 23 px Gaussian blur, solarise, to float, normalise).

Run: .venv/bin/python bench/augment.py [--preset histology] [--batch 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision.transforms.v2.functional as TF

from medzoo.config import AugmentConfig, default_mean_std
from medzoo.data.augment import TwoViewAugment, ViewParams, resolve_augment
from medzoo.data.augment_ops import JITTER_OPS, SOLARIZE_THRESHOLD


def torchvision_view(
    image: torch.Tensor, prm: ViewParams, i: int, aug: TwoViewAugment
) -> torch.Tensor:
    """One view of one uint8 image with sample i's parameters, op by op with torchvision v2."""
    size = [aug.image_size, aug.image_size]
    interp = TF.InterpolationMode(aug.params.interpolation)
    box = [int(v[i]) for v in (prm.top, prm.left, prm.height, prm.width)]
    x = TF.resized_crop(image, *box, size, interpolation=interp, antialias=True)
    if prm.hflip[i]:
        x = TF.horizontal_flip(x)
    if prm.vflip[i]:
        x = TF.vertical_flip(x)
    if prm.rot90[i]:
        x = TF.rotate(x, 90.0 * int(prm.rot90[i]))
    if prm.jitter[i] and aug.params.color_jitter_prob > 0:
        for op in prm.order[i].tolist():
            name = JITTER_OPS[op]
            value = float(getattr(prm, name)[i])
            if value != (0.0 if name == "hue" else 1.0):
                x = getattr(TF, f"adjust_{name}")(x, value)
    if prm.grayscale[i] and x.shape[0] == 3:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if prm.blur[i]:
        k = aug.blur_kernel_size
        x = TF.gaussian_blur(x, [k, k], [float(prm.sigma[i])] * 2)
    if prm.solarize[i]:
        x = TF.solarize(x, round(SOLARIZE_THRESHOLD * 255))
    x = TF.to_dtype(x, torch.float32, scale=True)
    return TF.normalize(x, list(aug.mean), list(aug.std))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="histology", choices=["histology", "ct"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--chunk", type=int, default=4, help="CPU chunk of the batched pass, in 224 px images"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    channels = 3 if args.preset == "histology" else 1
    mean, std = default_mean_std(channels)
    params = resolve_augment(AugmentConfig(preset=args.preset))
    aug = TwoViewAugment(params, args.size, mean, std, cpu_chunk_pixels=args.chunk * 224 * 224)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (args.batch, channels, args.size, args.size), dtype=torch.uint8, generator=gen
    )
    params = [aug.sample_params(images, view, gen) for view in (0, 1)]

    def batched() -> None:
        for view in (0, 1):
            aug.apply(images, params[view])

    def per_image() -> None:
        for i in range(args.batch):
            for view in (0, 1):
                torchvision_view(images[i], params[view], i, aug)

    batched()  # warm-up (allocator, oneDNN primitives)
    per_image()
    wall: dict[str, list[float]] = {"batched": [], "torchvision": []}
    cpu: dict[str, list[float]] = {"batched": [], "torchvision": []}
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        for name, fn in (("batched", batched), ("torchvision", per_image)):
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    print(
        f"preset={args.preset} size={args.size} batch={args.batch} threads={args.threads} "
        f"chunk={args.chunk} (two views per sample, best of {args.repeats} interleaved runs)"
    )
    # CPU time is less disturbed by other processes on a shared machine than wall time
    for label, times in (("wall", wall), ("cpu", cpu)):
        rate = {name: args.batch / min(t) for name, t in times.items()}
        print(
            f"{label:4s} samples/s: batched {rate['batched']:8.1f}  torchvision "
            f"{rate['torchvision']:7.1f}  ratio {rate['batched'] / rate['torchvision']:6.2f}x"
        )


if __name__ == "__main__":
    main()
