"""Grad-CAM over the named blocks of ResNet9 with Captum's LayerGradCam, batched, and heatmap overlays."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from PIL import Image
from torch import nn

LAYERS: tuple[str, ...] = ("prep", "layer1", "layer2", "layer3")
# Plain words for each layer, with the resolution of its feature map on a 32x32 input.
LAYER_DESCRIPTIONS: dict[str, str] = {
    "prep": "prep: edges and colours (32x32, fine)",
    "layer1": "layer1: textures and small parts (16x16)",
    "layer2": "layer2: object parts (8x8)",
    "layer3": "layer3: whole objects (4x4, coarse)",
}


def check_layer(layer: object) -> str:
    """`layer` if it is one of LAYERS, else a ValueError listing the allowed names."""
    if not isinstance(layer, str) or layer not in LAYERS:
        raise ValueError(f"unknown Grad-CAM layer {repr(layer)[:40]}; allowed are {', '.join(LAYERS)}")
    return layer


def check_opacity(opacity: object) -> float:
    """`opacity` as a float in [0, 1] (numpy numbers too), else a ValueError saying what is allowed."""
    if not (isinstance(opacity, numbers.Real) and not isinstance(opacity, (bool, np.bool_))
            and 0.0 <= float(opacity) <= 1.0):
        raise ValueError(f"opacity must be a number from 0 to 1, got {repr(opacity)[:40]}")
    return float(opacity)


def _layer(model: nn.Module, layer: str) -> nn.Module:
    """The child module named `layer`, or a ValueError listing the allowed names."""
    if not hasattr(model, check_layer(layer)):
        raise ValueError(f"the model has no block {layer!r}; Grad-CAM explains {', '.join(LAYERS)} of a ResNet9")
    return getattr(model, layer)


def _targets(targets: int | Sequence[int] | torch.Tensor | None, n: int, num_classes: int) -> torch.Tensor | None:
    """Validate explicit class targets (one per image, or one for all) as a LongTensor of length n."""
    if targets is None:
        return None
    t = torch.as_tensor(targets)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"targets must be integer class ids from 0 to {num_classes - 1}, got {t.dtype} values")
    t = t.long().flatten()
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"got {t.numel()} targets for {n} images; give one per image or a single class")
    if (t < 0).any() or (t >= num_classes).any():
        raise ValueError(f"targets must be class ids from 0 to {num_classes - 1}, got {t.tolist()[:10]}")
    return t


def explain(
    model: nn.Module,
    batch: torch.Tensor,
    layer: str = "layer3",
    targets: int | Sequence[int] | torch.Tensor | None = None,
    return_probabilities: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps (N x H x W, each scaled to [0, 1]) for a normalized NxCxHxW batch at a named layer.

    `targets` defaults to each image's predicted class. One forward and one backward serve the whole batch;
    with `return_probabilities=True` the softmax of that very forward comes back too, as (maps, N x C
    probabilities), so a caption costs no second pass. Works under an outer no_grad/inference_mode and restores
    the model's train/eval mode. Not safe to call from two threads on the same model at once (Captum hooks the
    model's layer): `resnet_cifar.serving.Explainer` gives each thread its own copy.
    """
    module = _layer(model, layer)
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or len(batch) == 0:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise ValueError(f"batch must be a non-empty N x C x H x W tensor, got {shape}")
    weight = next(model.parameters())
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is not None and batch.shape[1] != conv.in_channels:
        raise ValueError(f"batch must have {conv.in_channels} channels (a normalized RGB batch, N x "
                         f"{conv.in_channels} x H x W), got {batch.shape[1]}: convert grey images to RGB first")
    if not batch.is_floating_point():
        raise ValueError(f"batch must be a normalized float tensor, got {str(batch.dtype).removeprefix('torch.')} "
                         "(use model.preprocess or resnet_cifar.preprocess.preprocess)")
    batch = batch.to(device=weight.device, dtype=weight.dtype)  # a bf16 or float64 batch, in the model's dtype
    num_classes = getattr(model, "num_classes", None) or model(batch[:1]).shape[1]
    target = _targets(targets, batch.shape[0], num_classes)
    logits: list[torch.Tensor] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        logits.append(out.detach())
        return out

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            inputs = batch.detach().clone()
            if target is None:
                # Score of the arg-max class: the predicted class is explained in the same single pass.
                cam = LayerGradCam(lambda x: forward(x).max(dim=1).values, module)
                attr = cam.attribute(inputs, relu_attributions=True)
            else:
                cam = LayerGradCam(forward, module)
                attr = cam.attribute(inputs, target=target.to(inputs.device), relu_attributions=True)
    finally:
        model.train(was_training)
    attr = attr.detach()
    maps = F.interpolate(attr, size=batch.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    maps = maps.clamp_min(0)
    peak = maps.flatten(1).amax(dim=1).view(-1, 1, 1)
    maps = torch.where(peak > 0, maps / peak.clamp_min(1e-12), torch.zeros_like(maps))
    if return_probabilities:
        return maps, torch.softmax(logits[-1].float(), dim=1)
    return maps


def jet(values: np.ndarray) -> np.ndarray:
    """The 'jet' colour map: values in [0, 1] to uint8 RGB (blue for 0, red for 1)."""
    v = np.clip(values.astype(np.float32), 0.0, 1.0)[..., None]
    channels = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue centres at 3/4, 1/2, 1/4
    rgb = np.clip(1.5 - np.abs(4.0 * v - channels), 0.0, 1.0)
    return np.rint(rgb * 255.0).astype(np.uint8)


def overlay(image: np.ndarray | Image.Image, heatmap: np.ndarray | torch.Tensor, opacity: float = 0.5) -> np.ndarray:
    """Blend a colour-mapped heatmap (HxW in [0, 1]) over an RGB image (HxWx3 uint8 or PIL) with the given opacity.

    Opacity 0 returns the image unchanged, 1 the heatmap colours alone. A heatmap of another size is
    resized bilinearly to the image.
    """
    opacity = check_opacity(opacity)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be an HxWx3 uint8 array or a PIL image, got {got}")
    if 0 in image.shape[:2]:
        raise ValueError(f"image is empty ({image.shape[0]}x{image.shape[1]}); give an image of at least 1x1 pixel")
    if isinstance(heatmap, torch.Tensor):
        heatmap = heatmap.detach().float().cpu().numpy()
    heat = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))
    if heat.ndim != 2 or heat.numel() == 0:
        raise ValueError(f"heatmap must be a non-empty HxW map, got shape {tuple(heat.shape)}")
    if not torch.isfinite(heat).all():
        raise ValueError("heatmap holds NaN or infinite values; a Grad-CAM map is finite, in [0, 1]")
    if tuple(heat.shape) != image.shape[:2]:
        heat = F.interpolate(heat[None, None], size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    colours = jet(heat.numpy()).astype(np.float32)
    blended = (1.0 - opacity) * image.astype(np.float32) + opacity * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
