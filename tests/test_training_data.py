"""CIFAR10DataModule and its transforms on the committed sample of the real CIFAR-10."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image
from torch.utils.data import DataLoader

from conftest import SAMPLE

from resnet_cifar.preprocess import CIFAR10_MEAN, CIFAR10_STD, normalize
from training.config import AugmentConfig, DataConfig
from training.data import AugmentedImages, CIFAR10DataModule, NormalizeCollate, default_batch_size, train_transforms

FILL = tuple(int(round(m * 255)) for m in CIFAR10_MEAN)


def data(**settings) -> DataConfig:
    """The sample, loaded in the test process, with other settings as given."""
    return DataConfig(**{"dataset": str(SAMPLE), "num_workers": 0, **settings})


@pytest.fixture(scope="module")
def datamodule() -> CIFAR10DataModule:
    dm = CIFAR10DataModule(data(batch_size=32))
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
    batch, labels, index = NormalizeCollate(CIFAR10_MEAN, CIFAR10_STD)(
        [(im, i, 10 + i) for i, im in enumerate(images)])
    assert batch.shape == (5, 3, 32, 32) and batch.dtype == torch.float32
    assert torch.allclose(batch, expected, atol=1e-5)
    assert labels.tolist() == [0, 1, 2, 3, 4] and index.tolist() == [10, 11, 12, 13, 14]
    exact, _, _ = NormalizeCollate(CIFAR10_MEAN, CIFAR10_STD, exact=True)([(im, 0, 0) for im in images])
    assert torch.equal(exact, normalize(images, CIFAR10_MEAN, CIFAR10_STD)), "test batches are the library's, bit for bit"


def test_datamodule_decodes_the_sample_once(datamodule):
    assert datamodule.class_names[:3] == ("airplane", "automobile", "bird") and datamodule.num_classes == 10
    assert datamodule.train_set.images.shape == (400, 32, 32, 3) and datamodule.train_set.images.dtype == np.uint8
    assert datamodule.test_set.images.shape == (300, 32, 32, 3)
    assert np.bincount(datamodule.test_set.labels).tolist() == [30] * 10
    x, y, index = next(iter(datamodule.train_dataloader()))
    assert x.shape == (32, 3, 32, 32) and y.shape == (32,)
    assert -3 < x.mean().item() < 3
    assert (datamodule.train_set.labels[index.numpy()] == y.numpy()).all()
    x_test, _, test_index = next(iter(datamodule.test_dataloader()))
    assert torch.equal(x_test, normalize(datamodule.test_set.images[:32], CIFAR10_MEAN, CIFAR10_STD)), \
        "test batches are normalized, never augmented"
    assert test_index.tolist() == list(range(32))
    assert datamodule.val_dataloader() == []


def test_validation_split_is_carved_from_train_with_a_fixed_seed():
    def split(seed: int) -> tuple[np.ndarray, np.ndarray]:
        dm = CIFAR10DataModule(data(val_fraction=0.1), seed=seed)
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
        CIFAR10DataModule(data(image_column="image")).setup()
    with pytest.raises(ValueError, match=r"no split \['validation'\].*\['train', 'test'\]"):
        CIFAR10DataModule(data(test_split="validation")).setup()
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    _write_dataset(tmp_path / "bad_labels", {"train": ([img, img], [0, 12]), "test": ([img], [1])})
    with pytest.raises(ValueError, match=r"labels \[12\] are outside 0..9"):
        CIFAR10DataModule(data(dataset=str(tmp_path / "bad_labels"))).setup()
    _write_dataset(tmp_path / "empty_test", {"train": ([img], [0]), "test": ([], [])})
    with pytest.raises(ValueError, match=r"cannot read dataset .*empty_test.*parquet shards in the layout"):
        CIFAR10DataModule(data(dataset=str(tmp_path / "empty_test"))).setup()


@pytest.mark.parametrize("content", [b"", b"not parquet at all", b"PAR1" + b"\0" * 100 + b"PAR1"],
                         ids=["empty", "junk", "broken footer"])
def test_a_folder_of_bad_parquet_is_one_line(tmp_path, content):
    for split in ("train", "test"):
        (tmp_path / "bad" / "plain_text").mkdir(parents=True, exist_ok=True)
        (tmp_path / "bad" / "plain_text" / f"{split}-00000-of-00001.parquet").write_bytes(content)
    with pytest.raises(ValueError, match=r"cannot read dataset .*bad'.*plain_text/train-\*.parquet") as err:
        CIFAR10DataModule(data(dataset=str(tmp_path / "bad"))).setup()
    assert "\n" not in str(err.value)


def test_a_corrupt_image_row_is_named(tmp_path):
    import datasets
    import io as _io

    good = _io.BytesIO()
    Image.new("RGB", (32, 32)).save(good, "PNG")
    rows = [{"bytes": good.getvalue(), "path": None}] * 3 + [{"bytes": b"\x89PNG broken", "path": None}]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    folder = tmp_path / "corrupt"
    folder.mkdir()
    for split in ("train", "test"):
        datasets.Dataset.from_dict({"img": rows, "label": [0, 1, 2, 3]}, features=features).to_parquet(
            str(folder / f"{split}-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match=r"split 'train' row 3: the image cannot be decoded .*fix or drop that row"):
        CIFAR10DataModule(data(dataset=str(folder))).setup()


def test_images_that_are_not_32x32_are_refused_at_setup(tmp_path):
    big, small = np.zeros((40, 40, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)
    _write_dataset(tmp_path / "sizes", {"train": ([small, small], [0, 1]), "test": ([small, big], [1, 2])})
    with pytest.raises(ValueError, match=r"split 'test' row 1: the image is 40x40; this ResNet9 trains on 32x32"):
        CIFAR10DataModule(data(dataset=str(tmp_path / "sizes"))).setup()


def test_a_hub_dataset_offline_is_one_line_that_says_to_pass_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError, match=r"'uoft-cs/cifar10' is not in the local cache and the Hub is off.*"
                                         r"pass a local copy with --dataset") as err:
        CIFAR10DataModule(data(dataset="uoft-cs/cifar10")).setup()
    assert "\n" not in str(err.value)


def test_a_hub_dataset_without_network_fails_at_once(tmp_path):
    """No network: one line within seconds (datasets alone retried for half a minute)."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: every request is refused at once
    code = ("from training.config import DataConfig\nfrom training.data import CIFAR10DataModule\n"
            "CIFAR10DataModule(DataConfig(dataset='uoft-cs/cifar10', num_workers=0)).setup()")
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}",
           "HF_DATASETS_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert re.search(r"cannot reach the Hub for dataset 'uoft-cs/cifar10' .*pass a local copy", last), last
    assert "Retrying" not in result.stderr


def test_the_default_batch_size_gives_small_splits_enough_steps():
    assert default_batch_size(50_000) == 512
    assert default_batch_size(400) == 50  # the committed sample: 8 steps an epoch, not one
    assert default_batch_size(10) == 16
    dm = CIFAR10DataModule(data())
    dm.setup()
    assert dm.batch_size == 50
    assert CIFAR10DataModule(data(batch_size=64)).batch_size == 64


def test_two_local_folders_with_the_same_name_do_not_share_a_cache(tmp_path, datamodule):
    # datasets keys its cache on the folder name: a second 'cifar10' folder must not get the first one's data.
    other = tmp_path / "cifar10"
    shutil.copytree(SAMPLE, other)
    for shard in (other / "plain_text").glob("*.parquet"):
        shard.unlink()
    img = np.full((32, 32, 3), 7, dtype=np.uint8)
    _write_dataset(other / "plain_text", {"train": ([img] * 3, [1, 2, 3]), "test": ([img] * 2, [4, 5])})
    dm = CIFAR10DataModule(data(dataset=str(other)))
    dm.setup()
    assert len(dm.train_set) == 3 and len(dm.test_set) == 2
    assert len(datamodule.train_set) == 400
