"""Measuring a model on labelled images: the one evaluation every figure of a release comes from.

`resnet-cifar-train` measures its test split with `probabilities` (in LitResNet.test_step) and `figures`;
`resnet-cifar-eval` re-measures any release the same way and compares with what the release states.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import calibration
from .preprocess import normalize


def probabilities(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of a normalized batch and its average with the horizontal mirror's (flip TTA), in fp32 whatever the
    autocast around it; the model's train/eval mode is the caller's."""
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        probs = F.softmax(model(x).float(), dim=1)
        tta = (probs + F.softmax(model(x.flip(3)).float(), dim=1)) / 2
    return probs, tta


def predict_split(model: torch.nn.Module, images: np.ndarray, mean: Sequence[float], std: Sequence[float],
                  batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, flip-TTA probabilities), N x C float32, of N x 32 x 32 x 3 uint8 images, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    plain, tta = [], []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                p, t = probabilities(model, normalize(images[start:start + batch_size], mean, std).to(device))
                plain.append(p.cpu().numpy())
                tta.append(t.cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(plain), np.concatenate(tta)


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
                       ) -> dict[str, float | None]:
    """Accuracy over the images of each true class (None for a class with no image)."""
    return {name: float((predictions[labels == c] == c).mean()) if (labels == c).any() else None
            for c, name in enumerate(class_names)}


def figures(probs: np.ndarray, tta: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy with and without flip TTA, per class, ECE (15 bins) and NLL: the figures a release states."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probs.argmax(1)
    per_class = per_class_accuracy(predicted, labels, class_names)
    return {"test_images": int(len(labels)), "test_accuracy": float((predicted == labels).mean()),
            "test_accuracy_tta": float((tta.argmax(1) == labels).mean()),
            "ece": calibration.expected_calibration_error(probs, labels),
            "test_loss": calibration.negative_log_likelihood(probs, labels), "per_class_accuracy": per_class}
