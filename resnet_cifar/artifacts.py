"""The files a release carries beside its weights: the misclassified test images."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from huggingface_hub import hf_hub_download

MISCLASSIFIED_NAME = "misclassified.safetensors"


@dataclass(frozen=True)
class MisclassifiedSet:
    """Test images the model got wrong, most confident mistakes first."""

    images: np.ndarray  # N x 32 x 32 x 3 uint8
    true_labels: np.ndarray  # N int64
    predicted_labels: np.ndarray  # N int64
    probabilities: np.ndarray  # N float32: the probability given to the predicted label

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[3] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be N x H x W x 3 uint8, got {self.images.dtype} {self.images.shape}")
        for name in ("true_labels", "predicted_labels", "probabilities"):
            value = getattr(self, name)
            if value.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},) to match {n} images, got {value.shape}")

    def __len__(self) -> int:
        return len(self.images)


def save_misclassified(folder: str | Path, misclassified: MisclassifiedSet) -> Path:
    """Write misclassified.safetensors into `folder` and return its path."""
    path = Path(folder) / MISCLASSIFIED_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "images": np.ascontiguousarray(misclassified.images, dtype=np.uint8),
        "true_labels": np.ascontiguousarray(misclassified.true_labels, dtype=np.int64),
        "predicted_labels": np.ascontiguousarray(misclassified.predicted_labels, dtype=np.int64),
        "probabilities": np.ascontiguousarray(misclassified.probabilities, dtype=np.float32),
    }
    safetensors.numpy.save_file(tensors, str(path), metadata={"format": "resnet-cifar.misclassified.v1"})
    return path


def load_misclassified(source: str | Path, revision: str | None = None, **download_kwargs: Any) -> MisclassifiedSet:
    """Load the misclassified set of a release: a local folder or a Hub repo id (at `revision`)."""
    source = str(source)
    if os.path.isdir(source):
        path = os.path.join(source, MISCLASSIFIED_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {MISCLASSIFIED_NAME} in folder {source!r}")
    else:
        path = hf_hub_download(repo_id=source, filename=MISCLASSIFIED_NAME, revision=revision, **download_kwargs)
    data = safetensors.numpy.load_file(path)
    missing = {"images", "true_labels", "predicted_labels", "probabilities"} - set(data)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}; it was not written by save_misclassified")
    return MisclassifiedSet(
        images=data["images"],
        true_labels=data["true_labels"],
        predicted_labels=data["predicted_labels"],
        probabilities=data["probabilities"],
    )
