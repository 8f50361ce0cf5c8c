"""CIFAR10DataModule: CIFAR-10 (or any dataset in its layout) from HF datasets, augmented with albumentations."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from resnet_cifar.preprocess import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD

DEFAULT_DATASET = "uoft-cs/cifar10"


@dataclass(frozen=True)
class AugmentConfig:
    """The training augmentation of the course (pad 4 + random crop, flip, one cutout hole)."""

    size: int = 32
    pad: int = 4
    flip_p: float = 0.5
    cutout: int = 8
    cutout_p: float = 0.5


def train_transforms(fill_uint8: tuple[int, int, int], config: AugmentConfig = AugmentConfig()) -> A.Compose:
    """Random geometry and cutout on uint8 HxWx3; the cutout hole is filled with the dataset mean colour."""
    padded = config.size + 2 * config.pad
    return A.Compose(
        [
            A.PadIfNeeded(padded, padded, border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(config.size, config.size),
            A.HorizontalFlip(p=config.flip_p),
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=(config.cutout, config.cutout),
                hole_width_range=(config.cutout, config.cutout),
                fill=fill_uint8,
                p=config.cutout_p,
            ),
        ]
    )


class NormalizeCollate:
    """Collate uint8 HxWx3 samples and normalize the whole batch at once (= Normalize + ToTensorV2 per image)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1)
        self.shift = torch.tensor([m / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)

    def __call__(self, samples: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack, convert to Nx3xHxW float and normalize: (x / 255 - mean) / std."""
        stacked = torch.from_numpy(np.stack([s[0] for s in samples]))
        n, h, w, c = stacked.shape
        # Convert straight into a contiguous NCHW buffer, then scale in place: the same arithmetic on the
        # permuted (channels-last) view plus a final .contiguous() costs about 5x more (benchmarks/input_pipeline.py).
        images = torch.empty((n, c, h, w), dtype=torch.float32)
        images.copy_(stacked.permute(0, 3, 1, 2))
        labels = torch.tensor([s[1] for s in samples], dtype=torch.long)
        return images.mul_(self.scale).sub_(self.shift), labels


class AugmentedImages(Dataset):
    """uint8 images decoded once, augmented per sample (in whichever worker process fetches them)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: A.Compose | None = None) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform
        self._seed: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def _reseed(self) -> None:
        # A seeded Compose copied into N workers would give all N the same augmentations; torch's
        # per-worker seed is distinct per worker and reproducible under seed_everything(workers=True).
        seed = torch.initial_seed()
        if self.transform is not None and seed != self._seed:
            self.transform.set_random_seed(seed % 2**32)
            self._seed = seed

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[np.ndarray, int]]:
        """Fetch a whole batch in one call (the DataLoader uses this when present)."""
        self._reseed()
        images = self.images[indices]
        if self.transform is not None:
            images = [self.transform(image=image)["image"] for image in images]
        return [(image, int(label)) for image, label in zip(images, self.labels[indices])]


def default_num_workers() -> int:
    """Leave one core to the training process; more than 8 workers do not pay for this small input."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores - 1))


def local_cache_dir(folder: str | Path) -> str:
    """A datasets cache per local folder: datasets keys its cache on the folder's name, not its files."""
    folder = Path(folder).resolve()
    stats = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha256(repr((str(folder), stats)).encode()).hexdigest()[:16]
    root = Path(os.environ.get("HF_DATASETS_CACHE", Path.home() / ".cache" / "huggingface" / "datasets"))
    return str(root / "resnet_cifar_local" / digest)


def decode_split(split: Any, image_column: str, label_column: str, num_classes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one split into (N x H x W x 3 uint8, N int64), with errors that list what the dataset has."""
    columns = list(split.column_names)
    for column, what in ((image_column, "image"), (label_column, "label")):
        if column not in columns:
            raise ValueError(f"{name}: no {what} column {column!r}; the dataset has columns {columns}")
    if len(split) == 0:
        raise ValueError(f"{name} is empty; need at least one image")
    labels = np.asarray(split[label_column], dtype=np.int64)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(f"{name}: labels {sorted(set(bad.tolist()))[:10]} are outside 0..{num_classes - 1}")
    images = np.stack([np.asarray(img.convert("RGB"), dtype=np.uint8) for img in split[image_column]])
    return images, labels


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 from a Hub id or a local folder in the same layout, decoded once, augmented in workers."""

    def __init__(
        self,
        dataset: str = DEFAULT_DATASET,
        batch_size: int = 512,
        image_column: str = "img",
        label_column: str = "label",
        train_split: str = "train",
        test_split: str = "test",
        val_fraction: float = 0.0,
        seed: int = 0,
        num_workers: int | None = None,
        augment: AugmentConfig = AugmentConfig(),
        mean: tuple[float, float, float] = CIFAR10_MEAN,
        std: tuple[float, float, float] = CIFAR10_STD,
        revision: str | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.dataset, self.batch_size, self.seed, self.revision = dataset, batch_size, seed, revision
        self.image_column, self.label_column = image_column, label_column
        self.train_split, self.test_split, self.val_fraction = train_split, test_split, val_fraction
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.augment, self.mean, self.std = augment, tuple(mean), tuple(std)
        self.class_names: tuple[str, ...] = CIFAR10_CLASSES
        self.collate = NormalizeCollate(self.mean, self.std)
        self.train_set: AugmentedImages | None = None
        self.val_set: AugmentedImages | None = None
        self.test_set: AugmentedImages | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes, from the dataset's ClassLabel feature once loaded."""
        return len(self.class_names)

    def load(self) -> Any:
        """load_dataset for a Hub id or a local folder (with a cache of its own)."""
        import datasets

        try:
            if os.path.isdir(self.dataset):
                return datasets.load_dataset(self.dataset, cache_dir=local_cache_dir(self.dataset))
            return datasets.load_dataset(self.dataset, revision=self.revision)
        except ValueError as err:  # datasets' own words, e.g. for an empty parquet shard
            raise ValueError(
                f"cannot load {self.dataset!r}: {err} (splits {self.train_split!r} and {self.test_split!r} "
                "each need at least one image)"
            ) from err

    def setup(self, stage: str | None = None) -> None:
        """Decode the splits once; later calls (fit then test) reuse the arrays."""
        if self.train_set is not None:
            return
        data = self.load()
        missing = [s for s in (self.train_split, self.test_split) if s not in data]
        if missing:
            raise ValueError(f"{self.dataset}: no split {missing}; it has splits {list(data.keys())}")
        feature = data[self.train_split].features.get(self.label_column)
        if feature is not None and getattr(feature, "names", None):
            self.class_names = tuple(feature.names)
        train_x, train_y = decode_split(data[self.train_split], self.image_column, self.label_column,
                                        self.num_classes, f"{self.dataset} split {self.train_split!r}")
        test_x, test_y = decode_split(data[self.test_split], self.image_column, self.label_column,
                                      self.num_classes, f"{self.dataset} split {self.test_split!r}")
        fill = tuple(int(round(m * 255)) for m in self.mean)
        if self.val_fraction > 0:
            order = np.random.default_rng(self.seed).permutation(len(train_y))
            n_val = max(1, int(round(len(train_y) * self.val_fraction)))
            val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
            self.val_set = AugmentedImages(train_x[val_idx], train_y[val_idx])
            train_x, train_y = train_x[train_idx], train_y[train_idx]
        self.train_set = AugmentedImages(train_x, train_y, train_transforms(fill, self.augment))
        self.test_set = AugmentedImages(test_x, test_y)

    def _loader(self, dataset: AugmentedImages, shuffle: bool) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=self.collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches."""
        assert self.train_set is not None, "call setup() first"
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches from the held-out part of train (none when val_fraction is 0)."""
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader:
        """Test batches, normalized, not augmented."""
        assert self.test_set is not None, "call setup() first"
        return self._loader(self.test_set, shuffle=False)
