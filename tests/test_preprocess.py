"""Any image -> normalized Nx3x32x32: every PIL mode, arrays, tensors, odd sizes, and the refusals."""

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import bad_uploads, good_uploads, rgba16_png
from PIL import ImageOps

from resnet_cifar import CIFAR10_MEAN, CIFAR10_STD, ImageError, ResNet9, load_image
from resnet_cifar.preprocess import WORKING_SIDE, _reduce, _reducible, check_size, preprocess, to_rgb_uint8


def normalized(rgb, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> torch.Tensor:
    """The expected 3x32x32 tensor of a uniform image of colour `rgb` (0..255)."""
    value = (torch.tensor(rgb, dtype=torch.float32) / 255 - torch.tensor(mean)) / torch.tensor(std)
    return value.view(3, 1, 1).expand(3, 32, 32)


def uniform_colour(image) -> tuple[int, int, int]:
    """The single RGB colour of an image that must have come out uniform."""
    rgb = to_rgb_uint8(image)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert (rgb == rgb[0, 0]).all(), "a uniform image came out non-uniform"
    return tuple(int(v) for v in rgb[0, 0])


def palette_image(transparent_index=None) -> Image.Image:
    """A 'P' image, all pixels palette entry 1 = (10, 20, 30), optionally marked transparent."""
    image = Image.new("P", (5, 4), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
    return image


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: Image.new("RGB", (5, 4), (10, 20, 30)), (10, 20, 30)),
        (lambda: Image.new("L", (5, 4), 100), (100, 100, 100)),
        (lambda: Image.new("LA", (5, 4), (100, 255)), (100, 100, 100)),
        (lambda: Image.new("LA", (5, 4), (100, 0)), (255, 255, 255)),
        (lambda: palette_image(), (10, 20, 30)),
        (lambda: palette_image(transparent_index=1), (255, 255, 255)),
        (lambda: palette_image(transparent_index=0), (10, 20, 30)),  # another entry is the transparent one
        (lambda: Image.new("RGBA", (5, 4), (10, 20, 30, 255)), (10, 20, 30)),
        (lambda: Image.new("RGBA", (5, 4), (10, 20, 30, 0)), (255, 255, 255)),  # on white, not black
        (lambda: Image.new("RGBA", (5, 4), (0, 0, 0, 51)), (204, 204, 204)),  # 80 % white shows through
        (lambda: Image.new("CMYK", (5, 4), (0, 255, 255, 0)), (255, 0, 0)),
        (lambda: Image.new("CMYK", (5, 4), (0, 0, 0, 0)), (255, 255, 255)),
        (lambda: Image.new("I;16", (5, 4), 65535), (255, 255, 255)),
        (lambda: Image.new("I;16", (5, 4), 32896), (128, 128, 128)),
        (lambda: Image.new("I;16", (5, 4), 257), (1, 1, 1)),
        (lambda: Image.new("I;16", (5, 4), 255), (1, 1, 1)),  # 16-bit data, however dark
        (lambda: Image.new("I", (5, 4), 65535), (255, 255, 255)),
        (lambda: Image.new("I", (5, 4), 200), (200, 200, 200)),
        (lambda: Image.new("F", (5, 4), 0.5), (128, 128, 128)),
        (lambda: Image.new("F", (5, 4), 1.0), (255, 255, 255)),
        (lambda: Image.new("1", (5, 4), 1), (255, 255, 255)),
        (lambda: Image.new("1", (5, 4), 0), (0, 0, 0)),
    ],
    ids=lambda v: v if isinstance(v, tuple) else "",
)
def test_every_pil_mode_becomes_rgb(make, expected):
    image = make()
    assert uniform_colour(image) == expected
    assert to_rgb_uint8(image).shape == (4, 5, 3)
    torch.testing.assert_close(preprocess(image)[0], normalized(expected))


def test_dark_16_bit_images_stay_dark():
    """16-bit data is scaled by 65535 / 255 whatever its maximum: no jump between 255 and 256."""
    ramp = np.array([[0, 255, 256, 1000, 65535]], dtype=np.uint16)
    dark = np.array([[0, 128, 255]], dtype=np.uint16)
    for image in (Image.fromarray(ramp), ramp):
        assert to_rgb_uint8(image)[0, :, 0].tolist() == [0, 1, 1, 4, 255]
    for image in (Image.fromarray(dark), dark, dark.astype(">u2")):
        assert to_rgb_uint8(image)[0, :, 0].tolist() == [0, 0, 1]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 7), (6, 7, 1), (6, 7, 3), (6, 7, 4)])
def test_numpy_arrays(shape, dtype):
    rng = np.random.default_rng(0)
    if dtype == np.uint8:
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        as_uint8 = array
    else:
        array = (rng.integers(0, 256, shape) / 255).astype(dtype)
        as_uint8 = np.rint(array * 255).astype(np.uint8)
    if len(shape) == 3 and shape[2] == 4:
        as_uint8[..., 3] = 255  # opaque, so the colours must come through unchanged
        array[..., 3] = 255 if dtype == np.uint8 else 1.0
    rgb = to_rgb_uint8(array)
    gray = as_uint8 if as_uint8.ndim == 2 else as_uint8[..., 0]
    expected = np.repeat(gray[..., None], 3, axis=2) if len(shape) == 2 or shape[2] == 1 else as_uint8[..., :3]
    np.testing.assert_array_equal(rgb, expected)
    assert preprocess(array).shape == (1, 3, 32, 32)


def test_numpy_rgba_alpha_is_composited_on_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 0, 0, 255)
    rgba[1, 1, 3] = 0
    rgb = to_rgb_uint8(rgba)
    assert rgb[0, 0].tolist() == [200, 0, 0]
    assert rgb[1, 1].tolist() == [255, 255, 255]


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_tensors_chw(channels, dtype):
    hwc = np.random.default_rng(1).integers(0, 256, (9, 8, channels), dtype=np.uint8)
    if channels == 4:
        hwc[..., 3] = 255
    tensor = torch.from_numpy(hwc).permute(2, 0, 1)
    tensor = tensor if dtype == torch.uint8 else tensor.float() / 255
    np.testing.assert_array_equal(to_rgb_uint8(tensor), to_rgb_uint8(hwc))
    torch.testing.assert_close(preprocess(tensor), preprocess(hwc))


def test_orientation_is_kept_for_pil_numpy_and_tensors():
    """A tall image, red on top and blue below, stays red on top: no transposition anywhere."""
    array = np.zeros((40, 20, 3), dtype=np.uint8)
    array[:20, :, 0] = 255
    array[20:, :, 2] = 255
    for image in (array, Image.fromarray(array), torch.from_numpy(array).permute(2, 0, 1)):
        batch = preprocess(image, mean=(0, 0, 0), std=(1, 1, 1))
        assert batch.shape == (1, 3, 32, 32)
        assert batch[0, 0, :14].min() > 0.99 and batch[0, 2, :14].max() < 0.01
        assert batch[0, 2, 18:].min() > 0.99 and batch[0, 0, 18:].max() < 0.01


@pytest.mark.parametrize("height, width", [(1, 1), (1, 1000), (33, 31), (4000, 3), (32, 32), (7, 500)])
def test_odd_sizes_resize_to_32(height, width):
    colour = (12, 150, 240)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = colour
    batch = preprocess(image)
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == torch.float32
    torch.testing.assert_close(batch[0], normalized(colour))


def test_downscaling_is_antialiased():
    """A 1-pixel checkerboard at 64x64 must become mid-gray, not an aliased pattern of black or white."""
    checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    small = preprocess(checker, mean=(0, 0, 0), std=(1, 1, 1))[0]
    assert (small - 0.5).abs().max() < 0.05


def test_model_preprocess_uses_its_own_statistics():
    model = ResNet9(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    batch = model.preprocess(Image.new("RGB", (32, 32), (255, 0, 128)))
    torch.testing.assert_close(batch[0], normalized((255, 0, 128), model.mean, model.std))
    assert batch[0, 0, 0, 0].item() == pytest.approx(2.0)


def test_lists_and_batches():
    images = [np.zeros((32, 32, 3), np.uint8), Image.new("L", (3, 3), 255), torch.ones(3, 5, 5)]
    batch = preprocess(images, mean=(0, 0, 0), std=(1, 1, 1))
    assert batch.shape == (3, 3, 32, 32)
    assert batch[0].max() == 0 and batch[1].min() == 1 and batch[2].min() == 1
    assert preprocess(np.zeros((4, 8, 8, 3), np.uint8)).shape == (4, 3, 32, 32)
    assert preprocess(torch.zeros(2, 3, 8, 8)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((0, 5, 3), np.uint8),
        np.zeros((5, 0), np.uint8),
        torch.zeros(3, 0, 4),
        Image.new("RGB", (0, 5)),
        Image.new("L", (5, 0)),
    ],
    ids=["numpy 0xW", "numpy Hx0", "tensor", "PIL 0xH", "PIL Wx0"],
)
def test_zero_sized_images_are_refused(image):
    with pytest.raises(ValueError, match="image is empty"):
        preprocess(image)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels but holds almost no data: PIL opens it lazily."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.open(io.BytesIO(png_header_only(8000, 6000))),  # 48 MP, nothing decoded
        lambda: np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (7000, 7000, 3)),  # no memory behind it
        lambda: torch.zeros(3, 1, 1).expand(3, 1, 50_000_000),
    ],
    ids=["PIL lazy PNG 8000x6000", "numpy 7000x7000", "tensor 1x50M"],
)
def test_huge_images_are_refused_before_decoding(make):
    image = make()
    with pytest.raises(ValueError, match="at most 40,000,000 are allowed"):
        preprocess(image)
    if isinstance(image, Image.Image):
        assert image._im is None, "refused from the header: not a pixel was decoded"


def test_size_limit_is_inclusive():
    check_size(5000, 8000)  # exactly 40 MP: allowed (checked directly: decoding it would take seconds)
    with pytest.raises(ValueError, match="8001x5000 = 40,005,000 pixels"):
        check_size(5000, 8001)


@pytest.mark.parametrize(
    "image, words",
    [
        (np.full((4, 4, 3), 1.5, np.float32), r"float images must lie in \[0, 1\]"),
        (np.full((4, 4), -0.1, np.float64), r"float images must lie in \[0, 1\]"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (torch.full((3, 4, 4), 255.0), r"float images must lie in \[0, 1\]"),
        (Image.new("F", (4, 4), 255.0), r"float images must lie in \[0, 1\]"),
        (np.full((4, 4), -1, np.int32), "integer image values"),
        (np.full((4, 4), 70000, np.int64), "integer image values"),
        (np.zeros((4, 4, 2), np.uint8), "HxW, HxWx1, HxWx3 and HxWx4"),
        (np.zeros((4,), np.uint8), "HxW, HxWx1, HxWx3 and HxWx4"),
        (torch.zeros(2, 4, 4), "CxHxW with C in 1, 3, 4"),
        (np.zeros((4, 4), np.complex64), "unsupported pixel type"),
        ([], "no images given"),
    ],
    ids=lambda v: "" if not isinstance(v, str) else v[:20],
)
def test_bad_values_are_refused(image, words):
    with pytest.raises(ValueError, match=words):
        preprocess(image)


@pytest.mark.parametrize("image", [b"\x89PNG", 3, None])
def test_non_images_are_a_type_error(image):
    with pytest.raises(TypeError, match="cannot read"):
        preprocess(image)


# --- image files: what the Space and `predict("photo.jpg")` read, within a memory budget --------------------------


def test_every_kind_of_file_decodes_and_matches_the_pil_path(tmp_path):
    for name, path in good_uploads(tmp_path).items():
        rgb = load_image(path)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
        with Image.open(path) as image:
            np.testing.assert_array_equal(rgb, to_rgb_uint8(image), err_msg=name)
        torch.testing.assert_close(preprocess(str(path)), preprocess(rgb))
    assert load_image(tmp_path / "wide.webp").shape == (20, 300, 3)


def test_bad_files_are_one_clear_error_each(tmp_path):
    for name, (path, pattern) in bad_uploads(tmp_path).items():
        with pytest.raises(ImageError, match=pattern):
            load_image(path)
    with pytest.raises(ImageError, match="no image file at"):
        load_image(tmp_path / "missing.png")


def exif_jpeg(path, orientation: int) -> np.ndarray:
    """Save a JPEG stored sideways with an EXIF orientation tag; return the upright pixels a viewer shows."""
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20, 0] = 255  # red on the left half of the stored pixels
    stored[:, 20:, 2] = 255
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, quality=95)
    with Image.open(path) as saved:
        return np.asarray(ImageOps.exif_transpose(saved).convert("RGB"))


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_is_honoured_for_files_and_pil_images_alike(tmp_path, orientation):
    path = tmp_path / f"photo-{orientation}.jpg"
    upright = exif_jpeg(path, orientation)
    from_file = load_image(path)
    with Image.open(path) as image:
        from_pil = to_rgb_uint8(image)
    assert from_file.shape == upright.shape == from_pil.shape
    np.testing.assert_array_equal(from_file, upright)
    np.testing.assert_array_equal(from_pil, upright)
    if orientation in (6, 8):
        assert upright.shape[:2] == (40, 20), "a sideways photo comes out tall"
    torch.testing.assert_close(preprocess(path), preprocess(upright))


def test_premultiplied_la_is_composited_on_white():
    la = np.zeros((2, 2, 2), dtype=np.uint8)
    la[0, 0] = (100, 255)  # opaque grey
    la[0, 1] = (50, 128)  # premultiplied: grey 100 at half alpha
    la[1] = (0, 0)  # transparent
    rgb = to_rgb_uint8(Image.frombytes("La", (2, 2), la.tobytes()))
    assert rgb[0, 0].tolist() == [100] * 3
    assert rgb[0, 1].tolist() == [177] * 3  # 50 + (255 - 128)
    assert rgb[1, 0].tolist() == [255] * 3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tensors(dtype):
    tensor = torch.full((3, 4, 4), 0.5, dtype=dtype)
    assert to_rgb_uint8(tensor)[0, 0].tolist() == [128, 128, 128]
    assert preprocess(tensor).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("batch", [np.zeros((0, 8, 8, 3), np.uint8), torch.zeros(0, 3, 8, 8)], ids=["numpy", "tensor"])
def test_empty_batches_are_refused(batch):
    with pytest.raises(ValueError, match="the batch is empty"):
        preprocess(batch)


def test_large_images_are_reduced_right_after_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGBA", (5000, 1200), (200, 100, 50, 255)).save(path)
    rgb = load_image(path)
    assert max(rgb.shape[:2]) < 2 * WORKING_SIDE and rgb.shape[1] / rgb.shape[0] == pytest.approx(5000 / 1200, rel=0.01)
    assert (rgb == (200, 100, 50)).all()


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "LA", "L", "P", "1", "I;16", "I", "F", "CMYK"])
def test_reducing_in_strips_gives_the_pixels_of_a_whole_image_reduce(mode):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (2100, 3001, 4), dtype=np.uint8), "RGBA")
    image = Image.fromarray(rng.integers(0, 65536, (2100, 3001), dtype=np.uint16)) if mode == "I;16" else (
        image if mode == "RGBA" else image.convert(mode))
    whole = _reducible(image).reduce(max(image.size) // WORKING_SIDE)
    strips, _ = _reduce(image, WORKING_SIDE)
    assert strips.size == whole.size and strips.mode == whole.mode
    np.testing.assert_array_equal(np.asarray(strips), np.asarray(whole))


def test_a_large_16_bit_rgba_png_costs_a_small_multiple_of_its_rgb_pixels(tmp_path):
    """The hostile upload of the security review, at 10 megapixels: it cost 16x its pixels in 8-bit RGB (496 MB)
    through full-size conversions; decoding then reducing keeps it near the 4 bytes a pixel PIL stores."""
    path = tmp_path / "rgba16.png"
    path.write_bytes(rgba16_png(4000, 2500))
    code = ("import resource, sys\nfrom resnet_cifar.preprocess import load_image\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\nload_image(sys.argv[1])\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)")
    grew_kib = int(subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                                  check=True).stdout)
    rgb_kib = 4000 * 2500 * 3 / 1024
    assert grew_kib < 4 * rgb_kib, f"{grew_kib / 1024:.0f} MiB for a {rgb_kib / 1024:.0f} MiB RGB image"
