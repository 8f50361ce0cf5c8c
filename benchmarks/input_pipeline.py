"""Input pipeline speed: CIFAR10DataModule's train DataLoader against a plain albumentations Compose.

Both make the same training batches: PadIfNeeded to 40x40 (reflect), RandomCrop 32, HorizontalFlip, one 8x8
CoarseDropout hole filled with the dataset mean, Normalize, then NCHW float32 batches of 512. Both read the
same uint8 images: the 400 train images of tests/data/cifar10, decoded once and tiled to `--images`.

- ours: `CIFAR10DataModule(...).train_dataloader()` after `setup()`, its train set's images tiled (the same
  AugmentedImages, transform, NormalizeCollate and DataLoader settings the trainer gets);
- plain: what a user writes with albumentations: a torch Dataset whose `__getitem__` runs
  `A.Compose([PadIfNeeded, RandomCrop, HorizontalFlip, CoarseDropout, A.Normalize(mean, std), ToTensorV2()])`
  on one image, and the DataLoader's default collate. Same DataLoader settings otherwise (batch size,
  shuffle, workers, persistent workers, pin memory).

Before timing, the script checks that the two do the same work: with the same seed they must produce the
same batch (max abs difference printed; only float rounding of Normalize differs).

Measured per configuration (pipeline x num_workers in `--workers`): one full epoch, from `iter(loader)` to
the last batch received (workers are persistent and warmed by one untimed epoch, so the figure is steady
state and includes collation and, for num_workers > 0, the transfer of each batch to the main process).
Repetitions are interleaved (every repetition runs every configuration, the order alternating), medians
reported. Two figures per configuration:
- images/s (wall clock): what the main process receives;
- images per CPU-second of the process that does the work (the worker for num_workers > 0, read from
  /proc/<pid>/stat; the main process for num_workers = 0, with torch on 1 thread as in a worker): the
  per-core throughput, much less sensitive than wall clock to other jobs sharing the machine.

Then a breakdown of where one worker's time goes for ours (in-process CPU time per image, medians of 7):
each albumentations transform called alone, the Compose's own bookkeeping around them, NormalizeCollate,
and the whole `__getitems__` + collate; the rest of a worker's CPU time (compare with the table) is the
DataLoader's worker loop and the transfer of each batch to the main process.

Run: `python benchmarks/input_pipeline.py [--images 20480] [--repeats 5] [--workers 1 0] [--batch-size 512]`
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import DataLoader, Dataset, default_collate

from resnet_cifar.preprocess import CIFAR10_MEAN, CIFAR10_STD
from training.config import AugmentConfig, DataConfig
from training.data import AugmentedImages, CIFAR10DataModule, NormalizeCollate

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "cifar10"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class PlainAlbumentations(Dataset):
    """The usual albumentations recipe: one image per __getitem__, Normalize + ToTensorV2 inside the Compose."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: A.Compose) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(image=self.images[index])["image"], int(self.labels[index])


def plain_transforms(fill: tuple[int, int, int], config: AugmentConfig = AugmentConfig()) -> A.Compose:
    """The same augmentation written as one per-sample Compose, as a user would."""
    size = 32
    padded = size + 2 * config.pad
    hole = (config.cutout, config.cutout)
    return A.Compose(
        [
            A.PadIfNeeded(padded, padded, border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(size, size),
            A.HorizontalFlip(p=config.flip_p),
            A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=hole, hole_width_range=hole, fill=fill,
                            p=config.cutout_p),
            A.Normalize(mean=CIFAR10_MEAN, std=CIFAR10_STD),
            ToTensorV2(),
        ]
    )


def tiled(array: np.ndarray, n: int) -> np.ndarray:
    """The first n items of `array` repeated end to end."""
    reps = -(-n // len(array))
    return np.ascontiguousarray(np.concatenate([array] * reps)[:n])


def make_loaders(n_images: int, batch_size: int, workers: int) -> tuple[DataLoader, DataLoader, CIFAR10DataModule]:
    """(ours, plain) train loaders over the same tiled sample images."""
    dm = CIFAR10DataModule(DataConfig(dataset=str(SAMPLE), batch_size=batch_size, num_workers=workers))
    dm.setup("fit")
    assert dm.train_set is not None
    images, labels = tiled(dm.train_set.images, n_images), tiled(dm.train_set.labels, n_images)
    dm.train_set = AugmentedImages(images, labels, dm.train_set.transform)
    ours = dm.train_dataloader()
    fill = tuple(int(round(m * 255)) for m in dm.mean)
    plain = DataLoader(PlainAlbumentations(images, labels, plain_transforms(fill, dm.augment)),
                       batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=ours.pin_memory,
                       persistent_workers=workers > 0, drop_last=ours.drop_last)
    return ours, plain, dm


def collate(dm: CIFAR10DataModule) -> NormalizeCollate:
    """The collate the training loader uses."""
    return NormalizeCollate(dm.mean, dm.std)


def check_same_work(dm: CIFAR10DataModule, n: int = 256) -> float:
    """Max abs difference between ours and plain on the same images with the same seed (must be ~1e-7)."""
    assert dm.train_set is not None
    fill = tuple(int(round(m * 255)) for m in dm.mean)
    ours = AugmentedImages(dm.train_set.images, dm.train_set.labels, dm.train_set.transform)
    plain = PlainAlbumentations(dm.train_set.images, dm.train_set.labels, plain_transforms(fill, dm.augment))
    plain.transform.set_random_seed(torch.initial_seed() % 2**32)  # the seed AugmentedImages uses
    idx = list(range(n))
    a, la, _ = collate(dm)(ours.__getitems__(idx))
    b, lb = default_collate([plain[i] for i in idx])
    if not (torch.equal(la, lb) and a.shape == b.shape and a.dtype == b.dtype):
        raise AssertionError("ours and plain do not produce the same batches")
    diff = float((a - b).abs().max())
    if diff > 1e-5:
        raise AssertionError(f"ours and plain differ by {diff}: not the same augmentation")
    return diff


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def worker_pids(loader: DataLoader) -> list[int]:
    """Pids of a persistent loader's worker processes (after its first epoch)."""
    iterator = getattr(loader, "_iterator", None)
    return [w.pid for w in getattr(iterator, "_workers", [])]


def timed_epoch(loader: DataLoader) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the working process(es), images) for one full epoch."""
    pids = worker_pids(loader) if loader.num_workers > 0 else []
    cpu0 = sum(proc_cpu_seconds(p) for p in pids) if pids else time.process_time()
    t0 = time.perf_counter()
    n = 0
    for images, labels in loader:
        n += len(labels)
    wall = time.perf_counter() - t0
    cpu = (sum(proc_cpu_seconds(p) for p in pids) if pids else time.process_time()) - cpu0
    return wall, cpu, n


def per_image_cpu_us(fn: Callable[[], object], n_images: int, repeats: int = 7) -> float:
    """Median process CPU microseconds per image of fn() over `repeats` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append((time.process_time() - t0) / n_images * 1e6)
    return statistics.median(times)


def breakdown(dm: CIFAR10DataModule, batch_size: int, n_batches: int = 10) -> list[tuple[str, float]]:
    """CPU microseconds per image of each stage of ours, in this process (torch on 1 thread)."""
    assert dm.train_set is not None
    compose = dm.train_set.transform
    images = dm.train_set.images[: batch_size * n_batches]
    n = len(images)
    rows = []
    stage_inputs = list(images)
    for t in compose.transforms:
        inputs = stage_inputs
        rows.append((f"{type(t).__name__} (p={t.p:g}), called alone",
                     per_image_cpu_us(lambda: [t(image=im) for im in inputs], n)))
        stage_inputs = [t(image=im)["image"] for im in inputs]
    full = per_image_cpu_us(lambda: [compose(image=im) for im in images], n)
    rows.append(("Compose bookkeeping (whole Compose - transforms alone)", full - sum(r[1] for r in rows)))
    augmented = [(im, 0, i) for i, im in enumerate(stage_inputs[:batch_size])]
    rows.append(("NormalizeCollate (stack + uint8->float NCHW + normalize)",
                 per_image_cpu_us(lambda: [collate(dm)(augmented) for _ in range(n_batches)], n)))
    ds = dm.train_set
    indices = [list(range(i, i + batch_size)) for i in range(0, n, batch_size)]
    rows.append(("AugmentedImages.__getitems__ + collate (all of the above)",
                 per_image_cpu_us(lambda: [collate(dm)(ds.__getitems__(ix)) for ix in indices], n)))
    return rows


def loadavg() -> str:
    """The first three fields of /proc/loadavg."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    """Interleaved epochs of ours and plain per worker count; print a markdown table and the breakdown."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20480, help="images per epoch (the 400 sample images tiled)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per configuration, interleaved")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 0], help="num_workers values to measure")
    args = p.parse_args()
    torch.set_num_threads(1)  # num_workers=0 then runs on one core, as each worker does

    print(f"python {platform.python_version()}, torch {torch.__version__}, albumentations {A.__version__}, "
          f"opencv {cv2.__version__}, numpy {np.__version__}, cores {os.cpu_count()}")
    print(f"loadavg before: {loadavg()}")
    configs: list[tuple[str, int, DataLoader]] = []
    dm = None
    for w in args.workers:
        ours, plain, dm = make_loaders(args.images, args.batch_size, w)
        configs += [("ours", w, ours), ("plain", w, plain)]
    assert dm is not None
    print(f"same work: ours vs plain with the same seed, max abs diff {check_same_work(dm):.2e}")
    for _, _, loader in configs:  # warm-up: starts the persistent workers, untimed
        timed_epoch(loader)

    results: dict[tuple[str, int], list[tuple[float, float, int]]] = {(n, w): [] for n, w, _ in configs}
    for r in range(args.repeats):
        order = configs if r % 2 == 0 else configs[::-1]
        for name, w, loader in order:
            results[(name, w)].append(timed_epoch(loader))
        print(f"repeat {r + 1}/{args.repeats} done, loadavg {loadavg()}", flush=True)

    print(f"\n{args.images} images per epoch, batch {args.batch_size}, {args.repeats} interleaved epochs each; "
          "medians\n")
    print("| num_workers | pipeline | images/s (wall) | images per CPU-second (per core) | ours / plain (wall) "
          "| ours / plain (CPU) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for w in args.workers:
        med = {}
        for name in ("ours", "plain"):
            runs = results[(name, w)]
            med[name] = (statistics.median(n / wall for wall, _, n in runs),
                         statistics.median(n / cpu for _, cpu, n in runs if cpu > 0))
        for name in ("ours", "plain"):
            wall, cpu = med[name]
            ratio = (f"{med['ours'][0] / med['plain'][0]:.2f}", f"{med['ours'][1] / med['plain'][1]:.2f}") \
                if name == "ours" else ("", "")
            print(f"| {w} | {name} | {wall:,.0f} | {cpu:,.0f} | {ratio[0]} | {ratio[1]} |")
    print(f"\nloadavg after: {loadavg()}")

    print("\nWhere one worker's time goes (ours, CPU microseconds per image, in-process, torch 1 thread):\n")
    print("| stage | us/image | share |")
    print("| --- | ---: | ---: |")
    rows = breakdown(dm, args.batch_size)
    whole = rows[-1][1]
    for stage, us in rows:
        print(f"| {stage} | {us:.1f} | {us / whole:.0%} |")


if __name__ == "__main__":
    main()
