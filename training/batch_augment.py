"""The training augmentation as batched tensor ops, on whichever device the batch is (`--augment-on-device`).

The same steps as the albumentations pipeline of `training.data.train_transforms`, pixel for pixel: reflect-pad
(OpenCV's BORDER_REFLECT_101, the edge not repeated) and a random 32x32 crop, a horizontal flip, one square
cutout hole inside the image filled with the dataset mean colour; then the normalization of NormalizeCollate.
The random draws follow albumentations' distributions (crop offsets and hole corners uniform over every position
that fits), from torch's generator on the batch's device instead of a worker's numpy one.

Pad and crop are one gather: each output pixel reads its source pixel through the reflected index, so there is
no padded copy; the flip reverses the column indices and the hole is a mask. A batch of 512 is a few kernels on
a GPU instead of 512 Python calls per worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import AugmentConfig


@dataclass
class Draws:
    """One batch's random choices: crop corner in the padded image, flip, hole corner (-1: no hole)."""

    top: torch.Tensor
    left: torch.Tensor
    flip: torch.Tensor
    hole_top: torch.Tensor
    hole_left: torch.Tensor


def draw(n: int, size: int, config: AugmentConfig, device: torch.device | str = "cpu",
         generator: torch.Generator | None = None) -> Draws:
    """Random choices for `n` images of `size` x `size`, as albumentations makes them."""
    def integers(high: int) -> torch.Tensor:  # uniform over 0 .. high - 1
        return torch.randint(0, high, (n,), device=device, generator=generator)

    def chance(p: float) -> torch.Tensor:
        return torch.rand(n, device=device, generator=generator) < p

    zeros = torch.zeros(n, dtype=torch.long, device=device)
    top, left = (integers(2 * config.pad + 1), integers(2 * config.pad + 1)) if config.pad else (zeros, zeros)
    flip = chance(config.flip_p) if config.flip_p else torch.zeros(n, dtype=torch.bool, device=device)
    if config.cutout and config.cutout_p:
        holed = chance(config.cutout_p)
        hole_top = torch.where(holed, integers(size - config.cutout + 1), -1)
        hole_left = torch.where(holed, integers(size - config.cutout + 1), -1)
    else:
        hole_top = hole_left = zeros - 1
    return Draws(top, left, flip, hole_top, hole_left)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """BORDER_REFLECT_101 for indices in (-size, 2 * size - 1): -1 -> 1, size -> size - 2."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def augment(images: torch.Tensor, draws: Draws, config: AugmentConfig, fill: tuple[int, int, int]) -> torch.Tensor:
    """uint8 N x H x W x 3 images (square) augmented as `draws` say; uint8, same shape."""
    n, size = images.shape[0], images.shape[1]
    if config.pad > size - 1:
        raise ValueError(f"pad {config.pad} needs images of at least {config.pad + 1} pixels a side, got {size}")
    span = torch.arange(size, device=images.device)
    rows = _reflect(draws.top[:, None] + span[None, :] - config.pad, size)  # n x size: source row of each row
    columns = torch.where(draws.flip[:, None], span.flip(0)[None, :], span[None, :])  # flip after the crop
    columns = _reflect(draws.left[:, None] + columns - config.pad, size)
    batch = torch.arange(n, device=images.device)[:, None, None]
    out = images[batch, rows[:, :, None], columns[:, None, :]]  # n x size x size x 3, one gather
    if config.cutout:
        in_rows = (span[None, :] >= draws.hole_top[:, None]) & (span[None, :] < draws.hole_top[:, None] + config.cutout)
        in_cols = ((span[None, :] >= draws.hole_left[:, None])
                   & (span[None, :] < draws.hole_left[:, None] + config.cutout))
        hole = in_rows[:, :, None] & in_cols[:, None, :] & (draws.hole_top >= 0)[:, None, None]
        colour = torch.tensor(fill, dtype=images.dtype, device=images.device)
        out = torch.where(hole[..., None], colour, out)
    return out


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 N x H x W x 3 to float N x 3 x H x W: (x / 255 - mean) / std, wherever the batch is (NormalizeCollate
    in the DataLoader workers, finish_batch on the training device)."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=images.device).view(1, 3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], device=images.device).view(1, 3, 1, 1)
    # Convert straight into a contiguous NCHW buffer, then scale in place: the same arithmetic on the
    # permuted (channels-last) view plus a final .contiguous() costs about 5x more (benchmarks/input_pipeline.py).
    out = torch.empty(images.shape[0], 3, *images.shape[1:3], dtype=torch.float32, device=images.device)
    out.copy_(images.permute(0, 3, 1, 2))
    return out.mul_(scale).sub_(shift)
