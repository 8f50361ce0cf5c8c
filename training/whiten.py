"""Patch whitening of the prep convolution (Page, "How to train your ResNet 8: bag of tricks"), as a training-only
reparametrization that leaves the release's network as it is.

Page's network starts with a frozen 3x3 convolution onto the 27 whitening directions of the training images' 3x3
patches (PCA, each direction scaled by 1/sqrt(its variance + eps)), then a learnt 1x1 convolution to 64 channels,
then batch norm. Both are linear and the 1x1 needs no padding, so the pair is exactly one 3x3 convolution with
weight[o] = sum_k coefficients[o, k] * basis[k]: the ResNet9's own `prep.0.weight`. Here that weight is a
parametrization of the coefficients; training moves the coefficients (whitened, better-conditioned gradients) and
`fold` writes the 3x3 weight back, so the release, Grad-CAM and from_pretrained never know.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from resnet_cifar.preprocess import normalize

EPS = 1e-2  # Page's: added to each direction's variance (the images are normalized to unit variance per channel)
IMAGES = 10_000  # Page's: the first 10,000 training images


class Whitened(nn.Module):
    """weight (O x C x k x k) = coefficients (O x K x 1 x 1) through a fixed basis (K x C x k x k)."""

    def __init__(self, basis: torch.Tensor, channels_last: bool = False) -> None:
        super().__init__()
        self.register_buffer("basis", basis)
        self.channels_last = channels_last

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        weight = torch.einsum("ok,kchw->ochw", coefficients.flatten(1), self.basis.to(coefficients.dtype))
        return weight.contiguous(memory_format=torch.channels_last) if self.channels_last else weight

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The coefficients that give `weight` (exact while the basis spans all K = C x k x k directions)."""
        basis = self.basis.flatten(1).to(torch.float64)  # K x (C k k)
        coefficients = torch.linalg.lstsq(basis.T, weight.detach().flatten(1).to(torch.float64).T).solution.T
        return coefficients.to(weight.dtype)[..., None, None].contiguous()


def basis_of(images: np.ndarray, mean: Sequence[float], std: Sequence[float], size: int = 3,
             limit: int = IMAGES, eps: float = EPS) -> torch.Tensor:
    """The whitening basis (C k k) x C x k x k of the k x k patches of `images` (N x H x W x C uint8), normalized
    as the model normalizes them: eigenvectors of the patches' second moment, largest first, each divided by
    sqrt(eigenvalue + eps)."""
    if images.ndim != 4 or images.shape[-1] != len(mean) or len(images) == 0:
        raise ValueError(f"whitening needs N x H x W x {len(mean)} images, got an array of shape {images.shape}")
    channels = images.shape[-1]
    moment = torch.zeros(channels * size * size, channels * size * size, dtype=torch.float64)
    count = 0
    for start in range(0, min(limit, len(images)), 1000):
        x = normalize(images[start:min(start + 1000, limit)], mean, std)  # as the model sees them
        patches = F.unfold(x, size).transpose(1, 2).reshape(-1, channels * size * size).double()  # (c, kh, kw) order
        moment += patches.T @ patches
        count += len(patches)
    values, vectors = torch.linalg.eigh(moment / max(count - 1, 1))
    values, vectors = values.flip(0), vectors.flip(1)
    basis = vectors.T / torch.sqrt(values.clamp_min(0) + eps)[:, None]
    return basis.reshape(-1, channels, size, size).float()


def register(conv: nn.Conv2d, channels_last: bool = False) -> None:
    """Make `conv.weight` the parametrization; the basis is the identity (the same weight) until `set_basis`."""
    k = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    identity = torch.eye(k).reshape(k, conv.in_channels, *conv.kernel_size)
    parametrize.register_parametrization(conv, "weight", Whitened(identity, channels_last), unsafe=True)


def set_basis(conv: nn.Conv2d, basis: torch.Tensor) -> None:
    """Train `conv` through `basis` from now on; its coefficients are kept (a fresh 1x1 init, as Page's)."""
    target = conv.parametrizations.weight[0].basis
    if basis.shape != target.shape:
        raise ValueError(f"whitening basis must be {tuple(target.shape)}, got {tuple(basis.shape)}")
    with torch.no_grad():
        target.copy_(basis)


def is_whitened(conv: nn.Module) -> bool:
    return parametrize.is_parametrized(conv, "weight")


def fold(conv: nn.Conv2d) -> None:
    """Write the 3x3 weight the coefficients give into a plain `conv.weight` and drop the parametrization."""
    if is_whitened(conv):
        parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
