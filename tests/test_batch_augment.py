"""training.batch_augment, checked against the albumentations pipeline it stands in for: the same pixels for the
same random choices, the same distributions of choices, and the same batches through the DataModule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SAMPLE

from training import batch_augment
from training.config import AugmentConfig, DataConfig
from training.data import CIFAR10DataModule, train_transforms

FILL = (125, 123, 114)
CONFIGS = [AugmentConfig(), AugmentConfig(pad=2, flip_p=1.0, cutout=4, cutout_p=1.0),
           AugmentConfig(pad=0, flip_p=0.5, cutout=0), AugmentConfig(pad=4, flip_p=0.0, cutout=8, cutout_p=0.0)]


def albumentations_with(draws: batch_augment.Draws, i: int, image: np.ndarray, config: AugmentConfig) -> np.ndarray:
    """The training pipeline's own albumentations transforms, applied with image i's draws."""
    out = image
    for step in train_transforms(FILL, config).transforms:
        name = type(step).__name__
        top, left = int(draws.top[i]), int(draws.left[i])
        if name == "PadIfNeeded":
            out = step.apply(out, pad_top=config.pad, pad_bottom=config.pad, pad_left=config.pad,
                             pad_right=config.pad)
        elif name == "RandomCrop":
            out = step.apply(out, crop_coords=(left, top, left + 32, top + 32))
        elif name == "HorizontalFlip" and draws.flip[i]:
            out = step.apply(out)
        elif name == "CoarseDropout" and draws.hole_top[i] >= 0:
            y, x = int(draws.hole_top[i]), int(draws.hole_left[i])
            out = step.apply(out, holes=np.array([[x, y, x + config.cutout, y + config.cutout]]), seed=0)
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "pad2-cut4-always", "flip-only", "no-hole"])
def test_the_same_pixels_as_albumentations_for_the_same_choices(config):
    images = np.random.default_rng(0).integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    draws = batch_augment.draw(200, 32, config, generator=torch.Generator().manual_seed(3))
    ours = batch_augment.augment(torch.from_numpy(images), draws, config, FILL).numpy()
    for i in range(200):
        np.testing.assert_array_equal(ours[i], albumentations_with(draws, i, images[i], config), err_msg=str(i))
    if config.cutout and config.cutout_p == 1.0:
        assert (draws.hole_top >= 0).all() and (draws.hole_top <= 32 - config.cutout).all()


def coded_image() -> np.ndarray:
    """R = row, G = column, B = 255 (no fill colour has it): where each output pixel came from can be read."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([rows, cols, np.full_like(rows, 255)], -1).astype(np.uint8)


def choices_seen(outputs: np.ndarray) -> dict[str, np.ndarray]:
    """Crop corner, flip and hole of each augmented coded image, read from its pixels (pad 4, cutout 8)."""
    kept = outputs[..., 2] == 255
    rows = outputs[..., 0].astype(int)
    cols = outputs[..., 1].astype(int)
    # Row 15 and column 15 of the output read source row/column top + 11 or left + 11 (never reflected).
    top = np.array([np.median(r[15][k[15]]) - 11 for r, k in zip(rows, kept)])
    flipped = np.array([c[:, 10][k[:, 10]].mean() > c[:, 20][k[:, 20]].mean() for c, k in zip(cols, kept)])
    left = np.array([np.median(c[:, 15][k[:, 15]]) - 11 if not f else np.median(c[:, 16][k[:, 16]]) - 11
                     for c, k, f in zip(cols, kept, flipped)])
    holed = ~kept.all(axis=(1, 2))
    return {"top": top, "left": left, "flip": flipped, "hole": holed}


def test_the_choices_are_distributed_as_albumentations_makes_them():
    n, config = 4000, AugmentConfig()
    image = coded_image()
    pipeline = train_transforms(FILL, config)
    pipeline.set_random_seed(0)
    theirs = choices_seen(np.stack([pipeline(image=image)["image"] for _ in range(n)]))
    draws = batch_augment.draw(n, 32, config, generator=torch.Generator().manual_seed(0))
    ours_images = batch_augment.augment(torch.from_numpy(np.repeat(image[None], n, 0)), draws, config, FILL).numpy()
    ours = choices_seen(ours_images)
    np.testing.assert_array_equal(ours["top"], draws.top.numpy())  # the reading of choices is right
    np.testing.assert_array_equal(ours["flip"], draws.flip.numpy())
    np.testing.assert_array_equal(ours["hole"], (draws.hole_top >= 0).numpy())
    for key in ("top", "left"):
        their_counts = np.bincount(theirs[key].astype(int), minlength=9)
        our_counts = np.bincount(ours[key].astype(int), minlength=9)
        assert len(their_counts) == len(our_counts) == 9, "crop corners 0..8 on both sides"
        assert np.abs(their_counts - our_counts).max() < 0.03 * n, (key, their_counts, our_counts)
    for key in ("flip", "hole"):
        assert abs(theirs[key].mean() - 0.5) < 0.03 and abs(ours[key].mean() - 0.5) < 0.03, key


def test_the_datamodule_gives_the_same_kind_of_batches_either_way():
    on_cpu_workers = CIFAR10DataModule(DataConfig(dataset=str(SAMPLE), batch_size=64, num_workers=0))
    on_device = CIFAR10DataModule(DataConfig(dataset=str(SAMPLE), batch_size=64, num_workers=0),
                                  AugmentConfig(augment_on_device=True))
    for dm in (on_cpu_workers, on_device):
        dm.setup("fit")
    raw = next(iter(on_device.train_dataloader()))
    assert raw[0].dtype == torch.uint8 and raw[0].shape == (64, 32, 32, 3)
    finished = on_device.on_after_batch_transfer(raw, 0)
    reference = next(iter(on_cpu_workers.train_dataloader()))
    assert finished[0].shape == reference[0].shape == (64, 3, 32, 32) and finished[0].dtype == torch.float32
    assert torch.equal(finished[1], raw[1]) and torch.equal(finished[2], raw[2])
    # Without random steps the two paths give the very same floats: the on-device normalization is the collate's.
    plain = AugmentConfig(pad=0, flip_p=0.0, cutout=0)
    workers = CIFAR10DataModule(DataConfig(dataset=str(SAMPLE), batch_size=64, num_workers=0), plain)
    workers.setup("fit")
    x, _, index = next(iter(workers.train_dataloader()))
    images = torch.from_numpy(on_device.train_set.images[index.numpy()])
    ours = batch_augment.normalize(batch_augment.augment(images, batch_augment.draw(64, 32, plain), plain, FILL),
                                   on_device.mean, on_device.std)
    assert torch.equal(ours, x)
    test_batch = next(iter(on_device.test_dataloader()))
    assert on_device.on_after_batch_transfer(test_batch, 0) is test_batch, "evaluation batches pass untouched"
