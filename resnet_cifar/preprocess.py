"""CIFAR-10 constants and the conversion of any image into a normalized 1x3x32x32 tensor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from PIL import Image

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# Per-channel statistics of the 50,000 CIFAR-10 training images (pixels scaled to [0, 1]).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

INPUT_SIZE = 32
# Larger than any photo a phone takes; beyond this an upload is more likely an attack than a picture.
MAX_PIXELS = 40_000_000

ImageLike = Union[Image.Image, np.ndarray, torch.Tensor]


def check_size(height: int, width: int) -> None:
    """Refuse zero-sized and absurdly large images before any pixel is decoded."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image is empty ({width}x{height} pixels); need at least 1x1")
    if height * width > MAX_PIXELS:
        raise ValueError(
            f"image is {width}x{height} = {height * width:,} pixels; at most {MAX_PIXELS:,} are allowed"
        )


def _float_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map floats in [0, 1] to uint8, refusing other ranges instead of guessing a scale."""
    if array.size and not np.isfinite(array).all():
        raise ValueError("float image contains NaN or infinity; values must lie in [0, 1]")
    lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"float image values span [{lo:.3g}, {hi:.3g}]; float images must lie in [0, 1]")
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Bring integer or float pixel values to uint8 (16-bit integers are scaled, not clipped)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        return _float_to_uint8(array.astype(np.float32))
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(
                f"integer image values span [{array.min()}, {array.max()}]; allowed are 0..255 (uint8) "
                "or 0..65535 (16-bit)"
            )
        # uint16 (and PIL's I;16 modes) is 16-bit data whatever its maximum, so a dark 16-bit image stays
        # dark; for wider integers anything above 255 is taken as 16-bit data. 65535 maps to 255.
        is_16_bit = array.dtype.kind == "u" and array.dtype.itemsize == 2
        if is_16_bit or (array.dtype.itemsize > 1 and array.size and array.max() > 255):
            return (array.astype(np.float32) / 257.0).round().astype(np.uint8)
        return array.astype(np.uint8)
    raise ValueError(f"unsupported pixel type {array.dtype}; use uint8, 16-bit integers or floats in [0, 1]")


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Blend an HxWx4 uint8 image over a white background."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """Turn an HxW, HxWx1, HxWx3 or HxWx4 array of any supported dtype into HxWx3 uint8."""
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        pass
    elif array.ndim == 2:
        array = array[..., None]
    else:
        raise ValueError(
            f"image array has shape {tuple(array.shape)}; allowed are HxW, HxWx1, HxWx3 and HxWx4"
        )
    check_size(array.shape[0], array.shape[1])
    array = _to_uint8(array)
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:
        return _composite_on_white(array)
    return np.ascontiguousarray(array)


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to HxWx3 uint8; transparency is composited on white."""
    check_size(image.height, image.width)
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # High-bit-depth grayscale: keep the dynamic range rather than PIL's clipping convert("L").
        return _array_to_rgb(np.asarray(image))
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8).copy()
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        return _composite_on_white(np.asarray(image.convert("RGBA")))
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def _tensor_to_rgb(tensor: torch.Tensor) -> np.ndarray:
    """Convert a CxHxW (or HxW) tensor, uint8 or float in [0, 1], to HxWx3 uint8."""
    tensor = tensor.detach().cpu()
    if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4):
        array = tensor.permute(1, 2, 0).numpy()
    elif tensor.ndim == 2:
        array = tensor.numpy()
    else:
        raise ValueError(
            f"image tensor has shape {tuple(tensor.shape)}; allowed are HxW and CxHxW with C in 1, 3, 4"
        )
    return _array_to_rgb(array)


def to_rgb_uint8(image: ImageLike) -> np.ndarray:
    """Convert one PIL image, numpy array or tensor into an HxWx3 uint8 RGB array."""
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if isinstance(image, torch.Tensor):
        return _tensor_to_rgb(image)
    raise TypeError(
        f"cannot read an image from {type(image).__name__}; pass a PIL image, a numpy array or a torch tensor"
    )


def resize_rgb(rgb: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Resize an HxWx3 uint8 image to size x size with antialiasing (PIL's bicubic filter)."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    resized = Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.uint8)


def normalize(batch_uint8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Turn an NxHxWx3 uint8 array into a normalized float Nx3xHxW tensor."""
    tensor = torch.from_numpy(np.ascontiguousarray(batch_uint8)).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (tensor - mean_t) / std_t


def as_image_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """Accept one image or a sequence of images (a 4-D tensor or array is a batch)."""
    if isinstance(images, (Image.Image,)):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        if len(images) == 0:
            raise ValueError("no images given; pass one image or a non-empty list of images")
        return list(images)
    raise TypeError(
        f"cannot read images from {type(images).__name__}; pass a PIL image, array, tensor or a list of them"
    )


def preprocess(
    images: ImageLike | Sequence[ImageLike],
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> torch.Tensor:
    """Convert one image or a list into a normalized float tensor of shape Nx3x32x32."""
    batch = np.stack([resize_rgb(to_rgb_uint8(image)) for image in as_image_list(images)])
    return normalize(batch, mean, std)
