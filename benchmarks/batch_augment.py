"""Augmentation of one training batch: the albumentations pipeline per image (what each DataLoader worker runs)
against training.batch_augment on the whole batch (--augment-on-device), in one run, the same batches.

Both do the recipe's steps (reflect-pad 4 and random 32x32 crop, flip p 0.5, one 8x8 cutout p 0.5) and end with
a normalized float NCHW batch:
- albumentations: `train_transforms(...)` called on each uint8 image, then NormalizeCollate (the DataModule's
  worker path, minus the DataLoader's process hand-off);
- batched: `draw` + `augment` + `normalize` on the uint8 batch tensor, on the CPU here (on a GPU the same code
  runs as a few kernels; measure that on the device).

Images: the 400 train images of tests/data/cifar10, tiled to the batch size. torch on `--threads` threads (1: a
worker's share). Repetitions interleaved, medians reported as images per second.

    python benchmarks/batch_augment.py [--batch 512] [--repeats 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from training import batch_augment
from training.config import AugmentConfig
from training.data import NormalizeCollate, train_transforms

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def sample_images(n: int) -> np.ndarray:
    table = pq.read_table(next((ROOT / "tests/data/cifar10/plain_text").glob("train-*.parquet")))
    images = np.stack([np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"))
                       for cell in table.column("img").to_pylist()])
    return np.resize(images, (n, *images.shape[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config, fill = AugmentConfig(), tuple(int(round(m * 255)) for m in MEAN)
    images = sample_images(args.batch)
    pipeline, collate = train_transforms(fill, config), NormalizeCollate(MEAN, STD)
    pipeline.set_random_seed(0)
    tensor = torch.from_numpy(images)

    def albumentations_batch() -> torch.Tensor:
        return collate([(pipeline(image=image)["image"], 0, i) for i, image in enumerate(images)])[0]

    def batched() -> torch.Tensor:
        draws = batch_augment.draw(len(tensor), 32, config)
        return batch_augment.normalize(batch_augment.augment(tensor, draws, config, fill), MEAN, STD)

    runs = {"albumentations per image + NormalizeCollate": albumentations_batch, "batch_augment (tensor ops)": batched}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, fn in runs.items():
        fn()  # warm up
    for repeat in range(args.repeats):
        for name, fn in (runs.items() if repeat % 2 == 0 else reversed(runs.items())):
            start = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - start)
            assert out.shape == (args.batch, 3, 32, 32) and out.dtype == torch.float32
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"batch {args.batch}, {args.repeats} repeats (medians)")
    print("| path | ms per batch | images/s |\n| --- | --- | --- |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median * 1000:.1f} | {args.batch / median:,.0f} |")


if __name__ == "__main__":
    main()
