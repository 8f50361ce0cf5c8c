"""CIFAR10DataModule and its transforms on the committed sample of the real CIFAR-10."""

from __future__ import annotations

import shutil
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import DataLoader

from resnet_cifar.preprocess import CIFAR10_MEAN, CIFAR10_STD
from training.data import AugmentConfig, AugmentedImages, CIFAR10DataModule, NormalizeCollate, train_transforms

SAMPLE = Path(__file__).parent / "data" / "cifar10"
FILL = tuple(int(round(m * 255)) for m in CIFAR10_MEAN)


@pytest.fixture(scope="module")
def datamodule() -> CIFAR10DataModule:
    dm = CIFAR10DataModule(dataset=str(SAMPLE), batch_size=32, num_workers=0)
    dm.setup()
    return dm


def test_train_transform_shape_and_dtype():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = train_transforms(FILL)(image=image)["image"]
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_cutout_is_one_8x8_hole_filled_with_the_mean_before_normalising():
    black = np.zeros((32, 32, 3), dtype=np.uint8)
    transform = train_transforms(FILL, AugmentConfig(cutout_p=1.0, flip_p=0.0))
    transform.set_random_seed(3)
    for _ in range(10):
        out = transform(image=black)["image"]
        filled = np.all(out == np.array(FILL, dtype=np.uint8), axis=2)
        assert filled.sum() == 64, "exactly one 8x8 hole"
        rows, cols = np.nonzero(filled)
        assert rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7
        assert (out[~filled] == 0).all(), "reflect padding of black stays black"


def test_pad_crop_shifts_by_at_most_4_pixels_and_flips():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[16, 16] = 255
    transform = train_transforms(FILL, AugmentConfig(cutout_p=0.0, flip_p=0.0))
    transform.set_random_seed(0)
    positions = set()
    for _ in range(200):
        out = transform(image=image)["image"]
        ys, xs = np.nonzero(out[..., 0] == 255)
        positions.add((int(ys[0]) - 16, int(xs[0]) - 16))
    assert all(abs(dy) <= 4 and abs(dx) <= 4 for dy, dx in positions)
    assert len(positions) > 30, "random crops move the image around"
    flip = train_transforms(FILL, AugmentConfig(cutout_p=0.0, flip_p=1.0, pad=0))
    assert np.array_equal(flip(image=image)["image"], image[:, ::-1])


def test_augmentation_is_deterministic_under_a_seed():
    images = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(8)

    def draw(seed: int) -> np.ndarray:
        torch.manual_seed(seed)
        ds = AugmentedImages(images, labels, train_transforms(FILL, AugmentConfig(cutout_p=1.0)))
        return np.stack([s[0] for s in ds.__getitems__(list(range(8)))])

    assert np.array_equal(draw(0), draw(0))
    assert not np.array_equal(draw(0), draw(1))


def test_workers_do_not_repeat_each_others_augmentations():
    # A seeded Compose copied into every worker would make both workers emit identical batches.
    images = np.repeat(np.random.default_rng(2).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), 8, axis=0)
    ds = AugmentedImages(images, np.zeros(8, dtype=np.int64), train_transforms(FILL, AugmentConfig(cutout_p=1.0)))
    torch.manual_seed(0)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=NormalizeCollate(CIFAR10_MEAN, CIFAR10_STD))
    first, second = [batch[0] for batch in loader]
    assert not torch.equal(first, second)


def test_batch_normalisation_equals_albumentations_normalize_and_to_tensor():
    images = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    reference = A.Compose([A.Normalize(mean=CIFAR10_MEAN, std=CIFAR10_STD), ToTensorV2()])
    expected = torch.stack([reference(image=im)["image"] for im in images])
    batch, labels = NormalizeCollate(CIFAR10_MEAN, CIFAR10_STD)([(im, i) for i, im in enumerate(images)])
    assert batch.shape == (5, 3, 32, 32) and batch.dtype == torch.float32
    assert torch.allclose(batch, expected, atol=1e-5)
    assert labels.tolist() == [0, 1, 2, 3, 4]


def test_datamodule_decodes_the_sample_once(datamodule):
    assert datamodule.class_names[:3] == ("airplane", "automobile", "bird") and datamodule.num_classes == 10
    assert datamodule.train_set.images.shape == (400, 32, 32, 3) and datamodule.train_set.images.dtype == np.uint8
    assert datamodule.test_set.images.shape == (300, 32, 32, 3)
    assert np.bincount(datamodule.test_set.labels).tolist() == [30] * 10
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == (32, 3, 32, 32) and y.shape == (32,)
    assert -3 < x.mean().item() < 3
    x_test, _ = next(iter(datamodule.test_dataloader()))
    expected = NormalizeCollate(CIFAR10_MEAN, CIFAR10_STD)([(im, 0) for im in datamodule.test_set.images[:32]])[0]
    assert torch.allclose(x_test, expected), "test batches are normalized, never augmented"
    assert datamodule.val_dataloader() == []


def test_validation_split_is_carved_from_train_with_a_fixed_seed():
    def split(seed: int) -> tuple[np.ndarray, np.ndarray]:
        dm = CIFAR10DataModule(dataset=str(SAMPLE), val_fraction=0.1, seed=seed, num_workers=0)
        dm.setup()
        return dm.train_set.images, dm.val_set.images

    train, val = split(0)
    assert len(train) == 360 and len(val) == 40
    assert np.array_equal(val, split(0)[1])
    assert not np.array_equal(val, split(1)[1])
    train_rows = {im.tobytes() for im in train}
    assert not any(im.tobytes() in train_rows for im in val)


def _write_dataset(folder: Path, splits: dict[str, tuple[list[np.ndarray], list[int]]]) -> None:
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in splits.items():
        ds = datasets.Dataset.from_dict({"img": images, "label": labels},
                                        features=datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")}))
        ds.to_parquet(str(folder / f"{name}-00000-of-00001.parquet"))


def test_errors_name_what_the_dataset_has(tmp_path):
    with pytest.raises(ValueError, match=r"no image column 'image'.*\['img', 'label'\]"):
        CIFAR10DataModule(dataset=str(SAMPLE), image_column="image", num_workers=0).setup()
    with pytest.raises(ValueError, match=r"no split \['validation'\].*\['train', 'test'\]"):
        CIFAR10DataModule(dataset=str(SAMPLE), test_split="validation", num_workers=0).setup()
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    _write_dataset(tmp_path / "bad_labels", {"train": ([img, img], [0, 12]), "test": ([img], [1])})
    with pytest.raises(ValueError, match=r"labels \[12\] are outside 0..9"):
        CIFAR10DataModule(dataset=str(tmp_path / "bad_labels"), num_workers=0).setup()
    _write_dataset(tmp_path / "empty_test", {"train": ([img], [0]), "test": ([], [])})
    with pytest.raises(ValueError, match=r"cannot load .*empty_test.*no data.*'test' each need at least one image"):
        CIFAR10DataModule(dataset=str(tmp_path / "empty_test"), num_workers=0).setup()
    with pytest.raises(ValueError, match="val_fraction"):
        CIFAR10DataModule(val_fraction=1.0)


def test_two_local_folders_with_the_same_name_do_not_share_a_cache(tmp_path, datamodule):
    # datasets keys its cache on the folder name: a second 'cifar10' folder must not get the first one's data.
    other = tmp_path / "cifar10"
    shutil.copytree(SAMPLE, other)
    for shard in (other / "plain_text").glob("*.parquet"):
        shard.unlink()
    img = np.full((32, 32, 3), 7, dtype=np.uint8)
    _write_dataset(other / "plain_text", {"train": ([img] * 3, [1, 2, 3]), "test": ([img] * 2, [4, 5])})
    dm = CIFAR10DataModule(dataset=str(other), num_workers=0)
    dm.setup()
    assert len(dm.train_set) == 3 and len(dm.test_set) == 2
    assert len(datamodule.train_set) == 400
