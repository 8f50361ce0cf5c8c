"""What a server of a release needs beyond the model, with no web framework: thread-safe model work, images
written once for handing out, and memory that a large decode gives back.

The Space uses them (space/app.py); what is gradio's (the upload folder, the API gate) lives in space/.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import io
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from .gradcam import explain
from .model import ResNet9
from .preprocess import load_image

log = logging.getLogger(__name__)
T = TypeVar("T")


class Explainer:
    """Thread-safe predictions and Grad-CAM for a server: `workers` dedicated threads, each with its own model.

    Captum hooks the module it explains, so two requests must never share a model at once; keeping torch's
    work on these few threads also keeps the memory of a server's many request threads from growing with them.
    Large images are decoded `large_decodes` at a time, so that a burst of huge uploads queues behind itself
    instead of filling memory or holding up small requests.
    """

    def __init__(self, model: ResNet9, workers: int = 2, large_image_pixels: int = 4_000_000,
                 large_decodes: int = 1) -> None:
        self.model = model.eval()
        self.large_image_pixels = large_image_pixels
        self._replicas: queue.SimpleQueue[ResNet9] = queue.SimpleQueue()
        for replica in [model] + [copy.deepcopy(model) for _ in range(workers - 1)]:
            self._replicas.put(replica.to(memory_format=torch.channels_last))  # ~10 % faster convolutions on CPU
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="model")
        self._local = threading.local()
        self._large = threading.BoundedSemaphore(large_decodes)

    def load_image(self, path: str | os.PathLike) -> np.ndarray:
        """Decode an image file (HxWx3 uint8) within the library's limits; large ones wait their turn."""
        try:
            with Image.open(path) as image:
                pixels = image.width * image.height
        except Exception:  # noqa: BLE001 - load_image says what is wrong with the file, in its own words
            pixels = 0
        if pixels <= self.large_image_pixels:
            return load_image(path)
        with self._large:
            return load_image(path)

    def _run(self, work: Callable[[ResNet9], T]) -> T:
        """Run work(model) on a model thread, with the replica that thread owns."""

        def task() -> T:
            if not hasattr(self._local, "model"):
                self._local.model = self._replicas.get_nowait()
            return work(self._local.model)

        return self._threads.submit(task).result()

    def _batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return self.model.preprocess(list(images)).contiguous(memory_format=torch.channels_last)

    def probabilities(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Class probabilities (N x num_classes) of HxWx3 uint8 images."""
        batch = self._batch(images)
        return self._run(lambda model: model.probabilities(batch))

    def explain(self, images: Sequence[np.ndarray], layer: str, targets: Sequence[int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(Grad-CAM maps, probabilities) of all images from one batched forward and backward pass."""
        batch = self._batch(images)
        return self._run(lambda model: explain(model, batch, layer, targets=targets, return_probabilities=True))

    def close(self) -> None:
        """Stop the model threads."""
        self._threads.shutdown(wait=False, cancel_futures=True)


def save_image(image: np.ndarray, folder: Path, format: str = "JPEG", quality: int = 95) -> str:
    """Write an image for a server to hand out, named by its pixels and written once, atomically; returns its path.

    Named by a hash of the pixels, so an image served before (the default gallery of examples, the misclassified
    set) is not encoded again; written through a rename, because gradio rewrote identical files in place and a
    visitor downloading one meanwhile got a truncated file. JPEG at quality 95 by default: 0.2 ms and ~6 KB for a
    160x160 overlay against PNG's 9 ms and ~26 KB (BENCHMARKS.md), and a mean difference under 1 level a channel.
    """
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{image.shape}{format}{quality}".encode() + image.tobytes()).hexdigest()
    path = Path(folder) / f"{digest[:40]}.{'jpg' if format.upper() == 'JPEG' else format.lower()}"
    if not path.exists():
        buffer = io.BytesIO()
        options = {"quality": quality, "subsampling": 0} if format.upper() == "JPEG" else {}
        Image.fromarray(image).save(buffer, format, **options)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        partial.write_bytes(buffer.getvalue())
        os.replace(partial, path)
    return str(path)


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """glibc: serve allocations of `threshold` bytes or more with mmap, so that a large decode's memory goes back
    to the system once freed. glibc raises its threshold after the first large free and keeps later large blocks
    in per-thread arenas: four 40-megapixel uploads held ~600 MB that way, against ~200 MB with this (BENCHMARKS.md).
    Returns whether it took effect (False off glibc)."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt(-3, threshold) == 1  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False
