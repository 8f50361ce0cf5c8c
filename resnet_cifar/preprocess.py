"""CIFAR-10 constants, image files decoded within a memory budget, and any image -> a normalized Nx3x32x32 batch."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

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
# Images longer than twice this are box-reduced by an integer factor straight after decoding, before any mode
# conversion: a 32x32 input (or a 160x160 display) needs no more, and every later step then works on at most
# ~4 megapixels. Decoding itself stores at most 4 bytes a pixel in PIL, so a file costs at most ~1.3x its pixels
# in 8-bit RGB, whatever its bit depth or alpha (a 16-bit RGBA PNG used to cost 12x through float conversions).
WORKING_SIDE = 1024
IMAGE_FORMATS = "PNG, JPEG, WebP, GIF, BMP or TIFF"

ImageLike = Union[Image.Image, np.ndarray, torch.Tensor, str, os.PathLike]
# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose does).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112
_HIGH_BIT_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageError(ValueError):
    """An image that cannot be used; the message says what was wrong and what is allowed."""


def check_size(height: int, width: int, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse zero-sized and absurdly large images before any pixel is decoded."""
    if height <= 0 or width <= 0:
        raise ImageError(f"image is empty ({width}x{height} pixels); need at least 1x1")
    if height * width > max_pixels:
        raise ImageError(f"image is {width}x{height} = {height * width:,} pixels; at most {max_pixels:,} are allowed")


def _float_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map floats in [0, 1] to uint8, refusing other ranges instead of guessing a scale."""
    if array.size and not np.isfinite(array).all():
        raise ImageError("float image contains NaN or infinity; values must lie in [0, 1]")
    lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ImageError(f"float image values span [{lo:.3g}, {hi:.3g}]; float images must lie in [0, 1]")
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
            raise ImageError(
                f"integer image values span [{array.min()}, {array.max()}]; allowed are 0..255 (uint8) "
                "or 0..65535 (16-bit)"
            )
        # uint16 (and PIL's I;16 modes) is 16-bit data whatever its maximum, so a dark 16-bit image stays
        # dark; for wider integers anything above 255 is taken as 16-bit data. 65535 maps to 255.
        is_16_bit = array.dtype.kind == "u" and array.dtype.itemsize == 2
        if is_16_bit or (array.dtype.itemsize > 1 and array.size and array.max() > 255):
            return (array.astype(np.float32) / 257.0).round().astype(np.uint8)
        return array.astype(np.uint8)
    raise ImageError(f"unsupported pixel type {array.dtype}; use uint8, 16-bit integers or floats in [0, 1]")


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
        raise ImageError(f"image array has shape {tuple(array.shape)}; allowed are HxW, HxWx1, HxWx3 and HxWx4")
    check_size(array.shape[0], array.shape[1])
    array = _to_uint8(array)
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:
        return _composite_on_white(array)
    return np.ascontiguousarray(array)


def _reducible(image: Image.Image) -> Image.Image:
    """The image in a mode PIL's reduce() supports (1, P and I;16 are not), converting as little as possible."""
    if image.mode == "1":
        return image.convert("L")
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode.startswith("I;16"):
        return image.convert("I")
    return image


def _reduce(image: Image.Image, working_side: int | None) -> tuple[Image.Image, bool]:
    """Box-reduce an image longer than 2 x working_side by an integer factor; also says if it was 16-bit.

    Works in strips of whole boxes: PIL's reduce() would first convert an RGBA image to premultiplied RGBa (and
    1, P or I;16 to a reducible mode) at full size, doubling the memory a large upload costs. Strips give the
    same pixels, since no box crosses a strip border.
    """
    sixteen_bit = image.mode.startswith("I;16")
    factor = 1 if working_side is None else max(image.size) // working_side
    if factor < 2:
        return image, sixteen_bit
    width, height = image.size
    rows = factor * 64
    parts = [_reducible(image.crop((0, top, width, min(height, top + rows)))).reduce(factor)
             for top in range(0, height, rows)]
    reduced = Image.new(parts[0].mode, (parts[0].width, sum(p.height for p in parts)))
    top = 0
    for part in parts:
        reduced.paste(part, (0, top))
        top += part.height
    return reduced, sixteen_bit


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright) of an image, 1 when it has none or it cannot be read."""
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a readable picture unusable
        return 1


def _pil_to_rgb(image: Image.Image, working_side: int | None = WORKING_SIDE, max_pixels: int = MAX_PIXELS
                ) -> np.ndarray:
    """A PIL image of any mode -> HxWx3 uint8, upright per its EXIF orientation, transparency on white."""
    check_size(image.height, image.width, max_pixels)
    orientation = _orientation(image)  # read before reducing: reduce() drops the metadata
    image, sixteen_bit = _reduce(image, working_side)
    if orientation in _EXIF_TRANSPOSE:
        image = image.transpose(_EXIF_TRANSPOSE[orientation])
    mode = image.mode
    if mode in _HIGH_BIT_GRAY:
        # High-bit-depth grayscale: keep the dynamic range rather than PIL's clipping convert("L").
        array = np.asarray(image)
        return _array_to_rgb(array.astype(np.uint16) if sixteen_bit else array)
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8).copy()
    if mode == "La":  # premultiplied: over white, a pixel is L + (255 - alpha); PIL cannot convert La
        la = np.asarray(image).astype(np.int32)
        gray = np.clip(la[..., 0] + 255 - la[..., 1], 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        return _composite_on_white(np.asarray(image.convert("RGBA")))
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def _tensor_to_rgb(tensor: torch.Tensor) -> np.ndarray:
    """Convert a CxHxW (or HxW) tensor, uint8 or float in [0, 1], to HxWx3 uint8."""
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype != torch.float64:
        tensor = tensor.float()  # bfloat16 and float16 have no numpy counterpart that every version reads
    if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4):
        array = tensor.permute(1, 2, 0).numpy()
    elif tensor.ndim == 2:
        array = tensor.numpy()
    else:
        raise ImageError(f"image tensor has shape {tuple(tensor.shape)}; allowed are HxW and CxHxW with C in 1, 3, 4")
    return _array_to_rgb(array)


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, working_side: int | None = WORKING_SIDE
               ) -> np.ndarray:
    """Decode an image file into HxWx3 uint8 RGB within a memory budget, upright per its EXIF orientation.

    The size is checked on the header before a pixel is decoded; large images are reduced straight after
    decoding (see WORKING_SIDE). Every failure is an ImageError that says what was wrong and what is allowed.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"the image file is empty (0 bytes); send a {IMAGE_FORMATS} image")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we refuse on our own, lower limit
            with Image.open(path) as image:
                check_size(image.height, image.width, max_pixels)
                image.load()
                return _pil_to_rgb(image, working_side, max_pixels)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(f"image refused as a possible decompression bomb; at most {max_pixels:,} pixels are "
                         "allowed") from err
    except UnidentifiedImageError as err:
        raise ImageError(f"the file is not an image that can be read; send a {IMAGE_FORMATS} image") from err
    except FileNotFoundError as err:
        raise ImageError(f"no image file at {path}") from err
    except Exception as err:  # truncated or corrupt data: OSError, SyntaxError, EOFError, zlib.error ...
        raise ImageError(f"the image could not be decoded (truncated or corrupt file?): "
                         f"{type(err).__name__}: {str(err)[:80]}") from err


def to_rgb_uint8(image: ImageLike) -> np.ndarray:
    """One PIL image, image file path, numpy array or tensor -> HxWx3 uint8 RGB (large images box-reduced)."""
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if isinstance(image, torch.Tensor):
        return _tensor_to_rgb(image)
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    raise TypeError(
        f"cannot read an image from {type(image).__name__}; pass a PIL image, a file path, a numpy array or a tensor"
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
    """Accept one image or a non-empty sequence of images (a 4-D tensor or array is a batch)."""
    if isinstance(images, (Image.Image, str, os.PathLike)):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == 4 and len(images) == 0:
            raise ImageError("the batch is empty; pass one image or a non-empty batch")
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Sequence) and not isinstance(images, bytes):
        if len(images) == 0:
            raise ImageError("no images given; pass one image or a non-empty list of images")
        return list(images)
    raise TypeError(
        f"cannot read images from {type(images).__name__}; pass a PIL image, a file path, an array, a tensor "
        "or a list of them"
    )


def preprocess(
    images: ImageLike | Sequence[ImageLike],
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> torch.Tensor:
    """Convert one image or a list into a normalized float tensor of shape Nx3x32x32."""
    batch = np.stack([resize_rgb(to_rgb_uint8(image)) for image in as_image_list(images)])
    return normalize(batch, mean, std)
