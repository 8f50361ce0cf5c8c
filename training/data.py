"""CIFAR10DataModule: CIFAR-10 (or any dataset in its layout) from HF datasets, augmented with albumentations."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from resnet_cifar.errors import first_line
from resnet_cifar.preprocess import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, INPUT_SIZE, normalize

from . import batch_augment
from .config import DEFAULT_DATASET, AugmentConfig, DataConfig


def train_transforms(fill_uint8: tuple[int, int, int], config: AugmentConfig = AugmentConfig()) -> A.Compose:
    """Random geometry and cutout on uint8 HxWx3; the cutout hole is filled with the dataset mean colour.

    Only the steps the config turns on are in the pipeline (pad 0: no crop; cutout 0 or p 0: no hole).
    """
    size, padded = INPUT_SIZE, INPUT_SIZE + 2 * config.pad
    steps: list[A.BasicTransform] = []
    if config.pad:
        steps += [A.PadIfNeeded(padded, padded, border_mode=cv2.BORDER_REFLECT_101), A.RandomCrop(size, size)]
    if config.flip_p:
        steps.append(A.HorizontalFlip(p=config.flip_p))
    if config.cutout and config.cutout_p:
        steps.append(A.CoarseDropout(
            num_holes_range=(1, 1),
            hole_height_range=(config.cutout, config.cutout),
            hole_width_range=(config.cutout, config.cutout),
            fill=fill_uint8,
            p=config.cutout_p,
        ))
    return A.Compose(steps)


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # normalized images, labels, indices into the split


def stack_samples(samples: list[tuple[np.ndarray, int, int]]) -> Batch:
    """Collate (image, label, index) samples as they are: uint8 NxHxWx3, labels, indices. The training batches of
    --augment-on-device, augmented and normalized once on the training device."""
    images = torch.from_numpy(np.stack([s[0] for s in samples]))
    labels = torch.tensor([s[1] for s in samples], dtype=torch.long)
    return images, labels, torch.tensor([s[2] for s in samples], dtype=torch.long)


class NormalizeCollate:
    """Collate uint8 HxWx3 samples and normalize the whole batch at once (= Normalize + ToTensorV2 per image).

    `exact=True` (evaluation) uses the library's own `normalize`, so that a test batch is bit for bit what
    `ResNet9.preprocess` gives for the same images and the card's accuracy is what the released weights measure.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], exact: bool = False) -> None:
        self.mean, self.std, self.exact = mean, std, exact

    def __call__(self, samples: list[tuple[np.ndarray, int, int]]) -> Batch:
        """Stack, convert to Nx3xHxW float and normalize: (x / 255 - mean) / std."""
        images, labels, indices = stack_samples(samples)
        if self.exact:
            return normalize(images.numpy(), self.mean, self.std), labels, indices
        return batch_augment.normalize(images, self.mean, self.std), labels, indices


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

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[np.ndarray, int, int]]:
        """Fetch a whole batch in one call (the DataLoader uses this when present): (image, label, index)."""
        self._reseed()
        images = self.images[indices]
        if self.transform is not None:
            images = [self.transform(image=image)["image"] for image in images]
        return [(image, int(label), int(i)) for image, label, i in zip(images, self.labels[indices], indices)]


class DeviceBatches:
    """The training split as uint8 tensors on one device, shuffled there every epoch and cut into batches in the
    layout of `stack_samples` (--data-on-device): no workers, no host-to-device copy per step.

    Epoch e's order comes from a generator seeded with (seed, e), so a resumed run sees the order an unbroken run
    would have; Lightning calls `set_epoch` through `sampler`, as it does for a DataLoader's sampler.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, device: torch.device,
                 seed: int = 0) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(device)
        self.batch_size, self.device, self.seed, self.epoch = batch_size, device, seed, 0
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration gives."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)  # the last batch may be short, as with drop_last=False

    def __iter__(self) -> Any:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.labels), generator=generator, device=self.device)
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            yield self.images[index], self.labels[index], index


DEFAULT_BATCH_SIZE = 512
MIN_STEPS_PER_EPOCH, MIN_DEFAULT_BATCH = 8, 16


def default_batch_size(train_images: int) -> int:
    """512, or fewer for a small training split: one or two steps an epoch leave BatchNorm's running statistics
    (and so the eval-mode model) nowhere near the data, and the release predicts one class."""
    return max(MIN_DEFAULT_BATCH, min(DEFAULT_BATCH_SIZE, train_images // MIN_STEPS_PER_EPOCH))


LOCAL_HINT = "pass a local copy with --dataset path/to/cifar10 (a folder in its layout)"


def check_hub_dataset(dataset: str, revision: str | None) -> None:
    """Fail at once, in one line, when a Hub dataset cannot be reached (datasets would retry for half a minute)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if constants.HF_HUB_OFFLINE:
        return  # datasets then reads its cache, or fails at once (see CIFAR10DataModule.load)
    try:
        HfApi().dataset_info(dataset, revision=revision, timeout=10)
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise ValueError(f"no dataset {dataset!r}" + (f" at revision {revision!r}" if revision else "")
                         + f" on the Hub ({type(err).__name__}); check the id, or {LOCAL_HINT}") from None
    except Exception as err:  # noqa: BLE001 - no network, DNS, proxy, timeout: all mean the same to the user
        reason = first_line(err, 120)
        raise ValueError(f"cannot reach the Hub for dataset {dataset!r} ({reason}); {LOCAL_HINT}") from None


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


def _decode(value: Any, row: int, name: str) -> np.ndarray:
    """One image cell (a PIL image, or datasets' undecoded {"bytes", "path"}) as 32x32x3 uint8."""
    from PIL import Image

    try:
        if isinstance(value, dict):
            image = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
        else:
            image = value
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as err:  # noqa: BLE001 - whatever PIL raises, the row number is what helps
        raise ValueError(f"{name} row {row}: the image cannot be decoded ({type(err).__name__}: "
                         f"{str(err)[:80]}); fix or drop that row") from None
    if array.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"{name} row {row}: the image is {array.shape[1]}x{array.shape[0]}; this ResNet9 trains on "
                         f"{INPUT_SIZE}x{INPUT_SIZE} images (resize the dataset first)")
    return array


def decode_split(split: Any, image_column: str, label_column: str, num_classes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one split into (N x 32 x 32 x 3 uint8, N int64), with errors that name the column, row or label."""
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
    # Undecoded cells: a corrupt image fails on its own row, with its number, not somewhere inside datasets.
    cells = split.cast_column(image_column, type(split.features[image_column])(decode=False))[image_column] \
        if hasattr(split.features[image_column], "decode") else split[image_column]
    images = np.stack([_decode(cell, row, name) for row, cell in enumerate(cells)])
    return images, labels


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 from a Hub id or a local folder in the same layout, decoded once, augmented in workers."""

    def __init__(self, data: DataConfig = DataConfig(), augment: AugmentConfig = AugmentConfig(), seed: int = 0,
                 mean: tuple[float, float, float] = CIFAR10_MEAN, std: tuple[float, float, float] = CIFAR10_STD
                 ) -> None:
        super().__init__()
        self.config, self.augment, self.seed = data, augment, seed
        self.batch_size = data.batch_size or DEFAULT_BATCH_SIZE  # settled by setup() when not given
        self.num_workers = default_num_workers() if data.num_workers is None else data.num_workers
        self.mean, self.std = tuple(mean), tuple(std)
        self.fill = tuple(int(round(m * 255)) for m in self.mean)  # the cutout hole: the mean colour
        self.class_names: tuple[str, ...] = CIFAR10_CLASSES
        self.train_set: AugmentedImages | None = None
        self.val_set: AugmentedImages | None = None
        self.test_set: AugmentedImages | None = None
        self._resident: DeviceBatches | None = None  # the training split on the device (--data-on-device)

    @property
    def dataset(self) -> str:
        """The Hub id or local folder the images come from."""
        return self.config.dataset

    @property
    def num_classes(self) -> int:
        """Number of classes, from the dataset's ClassLabel feature once loaded."""
        return len(self.class_names)

    def load(self) -> Any:
        """load_dataset for a Hub id or a local folder (with a cache of its own); every failure is one line."""
        import datasets

        layout = (f"a dataset folder holds parquet shards in the layout of {DEFAULT_DATASET} "
                  "(plain_text/train-*.parquet and plain_text/test-*.parquet, columns img and label)")
        local = os.path.isdir(self.dataset)
        if not local:
            check_hub_dataset(self.dataset, self.config.revision)
        try:
            if local:
                return datasets.load_dataset(self.dataset, cache_dir=local_cache_dir(self.dataset))
            return datasets.load_dataset(self.dataset, revision=self.config.revision)
        except ConnectionError as err:  # offline (HF_HUB_OFFLINE=1) without a cached copy: datasets says so at once
            raise ValueError(f"dataset {self.dataset!r} is not in the local cache and the Hub is off "
                             f"({type(err).__name__}); {LOCAL_HINT}") from None
        except Exception as err:  # noqa: BLE001 - datasets, pyarrow and fsspec each raise their own kinds
            cause = err
            while cause.__cause__ is not None or cause.__context__ is not None:
                cause = cause.__cause__ or cause.__context__
            reason = first_line(cause, 200)
            raise ValueError(f"cannot read dataset {self.dataset!r}: {reason}; {layout}") from None

    def setup(self, stage: str | None = None) -> None:
        """Decode the splits once; later calls (fit then test) reuse the arrays."""
        if self.train_set is not None:
            return
        c = self.config
        data = self.load()
        missing = [s for s in (c.train_split, c.test_split) if s not in data]
        if missing:
            raise ValueError(f"{self.dataset}: no split {missing}; it has splits {list(data.keys())}")
        feature = data[c.train_split].features.get(c.label_column)
        if feature is not None and getattr(feature, "names", None):
            self.class_names = tuple(feature.names)
        train_x, train_y = decode_split(data[c.train_split], c.image_column, c.label_column, self.num_classes,
                                        f"{self.dataset} split {c.train_split!r}")
        test_x, test_y = decode_split(data[c.test_split], c.image_column, c.label_column, self.num_classes,
                                      f"{self.dataset} split {c.test_split!r}")
        if c.val_fraction > 0:
            order = np.random.default_rng(self.seed).permutation(len(train_y))
            n_val = max(1, int(round(len(train_y) * c.val_fraction)))
            val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
            self.val_set = AugmentedImages(train_x[val_idx], train_y[val_idx])
            train_x, train_y = train_x[train_idx], train_y[train_idx]
        transform = None if self.augment.augment_on_device else train_transforms(self.fill, self.augment)
        self.train_set = AugmentedImages(train_x, train_y, transform)
        self.test_set = AugmentedImages(test_x, test_y)
        if c.batch_size is None:
            self.batch_size = default_batch_size(len(train_y))

    def _loader(self, dataset: AugmentedImages, shuffle: bool) -> DataLoader:
        workers = self.num_workers
        raw = shuffle and self.augment.augment_on_device  # training batches leave the workers as uint8
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=stack_samples if raw else NormalizeCollate(self.mean, self.std, exact=not shuffle),
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        """Shuffled training batches: augmented in workers, or left uint8 for the training device to augment
        (--augment-on-device), or cut on the device from the split kept there (--data-on-device)."""
        assert self.train_set is not None, "call setup() first"
        if not self.config.data_on_device:
            return self._loader(self.train_set, shuffle=True)
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            raise ValueError(f"--data-on-device keeps the whole training split on one device, and this run has "
                             f"{trainer.world_size}: use --devices 1, or drop --data-on-device")
        return self.device_batches(trainer.strategy.root_device if trainer is not None else torch.device("cpu"))

    def device_batches(self, device: torch.device) -> DeviceBatches:
        """The training split on `device` (moved there once), cut into this module's batches."""
        assert self.train_set is not None, "call setup() first"
        resident = self._resident
        if resident is None or resident.device != device:
            resident = self._resident = DeviceBatches(self.train_set.images, self.train_set.labels, self.batch_size,
                                                      device, self.seed)
        resident.batch_size = self.batch_size
        return resident

    def finish_batch(self, batch: Batch) -> Batch:
        """A training batch of uint8 images (--augment-on-device) augmented and normalized where it is; any
        other batch as it is."""
        images, *rest = batch
        if images.dtype != torch.uint8:
            return batch
        draws = batch_augment.draw(len(images), images.shape[1], self.augment, images.device)
        images = batch_augment.augment(images, draws, self.augment, self.fill)
        return (batch_augment.normalize(images, self.mean, self.std), *rest)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Lightning calls this with every batch once it is on the training device."""
        return self.finish_batch(batch)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches from the held-out part of train (none when val_fraction is 0)."""
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader:
        """Test batches, normalized, not augmented."""
        assert self.test_set is not None, "call setup() first"
        return self._loader(self.test_set, shuffle=False)
