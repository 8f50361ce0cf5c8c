"""How far a model's probabilities can be trusted, and the one-number fix: temperature scaling.

Expected calibration error as Guo et al. (2017, "On Calibration of Modern Neural Networks") define it: 15
equal-width bins of the top probability, ECE = sum over bins of |bin| / N * |accuracy(bin) - confidence(bin)|.
A temperature T divides the logits; it never changes which class is on top, so accuracy stays what it was.
Folded into ResNet9's `logit_scale` (scale / T), every consumer of the model gets the calibrated probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)  # anything outside is a broken model, not a calibration


@dataclass(frozen=True)
class Reliability:
    """Per bin of the top probability: its edges, the images in it, their mean confidence and accuracy."""

    edges: np.ndarray  # BINS + 1
    counts: np.ndarray  # BINS int
    confidence: np.ndarray  # BINS, NaN where empty
    accuracy: np.ndarray  # BINS, NaN where empty


def _check(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    if p.ndim != 2 or y.shape != (len(p),) or len(p) == 0:
        raise ValueError(f"need N x C probabilities and N labels (N >= 1), got {p.shape} and {y.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("probabilities must be finite and non-negative")
    if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must be integers in 0..{p.shape[1] - 1}")
    return p, y.astype(np.int64)


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> Reliability:
    """The reliability diagram's data: top-probability bins (0, 1/bins], ..., ((bins-1)/bins, 1]."""
    p, y = _check(probabilities, labels)
    confidence, correct = p.max(1), (p.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, confidence, minlength=bins) / counts
        mean_acc = np.bincount(which, correct, minlength=bins) / counts
    return Reliability(edges, counts, mean_conf, mean_acc)


def ece_of(r: Reliability) -> float:
    """ECE (a fraction in [0, 1]) of a reliability diagram's bins."""
    full = r.counts > 0
    return float((r.counts[full] * np.abs(r.accuracy[full] - r.confidence[full])).sum() / r.counts.sum())


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """ECE (a fraction in [0, 1]) over `bins` equal-width bins of the top probability."""
    return ece_of(reliability(probabilities, labels, bins))


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true class), with p clamped at 1e-12 (a zero would be infinite)."""
    p, y = _check(probabilities, labels)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Logits up to a per-image constant (softmax(log p / T) == softmax(z / T) for p = softmax(z))."""
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-30, None))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities the same model gives with its logits divided by `temperature`."""
    return _softmax(log_probabilities(probabilities) / temperature)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature with the lowest NLL on these images: golden-section search on log T (NLL is convex in 1/T)."""
    _check(probabilities, labels)
    logits = log_probabilities(probabilities)  # once: the search only divides them
    lo, hi = (math.log(t) for t in TEMPERATURE_RANGE)
    golden = (math.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return negative_log_likelihood(_softmax(logits / math.exp(log_t)), labels)

    a, b = lo + (1 - golden) * (hi - lo), lo + golden * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > 1e-6:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - golden) * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2)


@dataclass(frozen=True)
class Calibration:
    """A temperature fitted by two-fold cross-fitting, and what it does, measured on images it was not fit on.

    The images are split in two halves at random (seeded); a temperature is fitted on each half and applied to
    the other, so every "after" figure comes from a temperature that never saw the image it scores. The model
    ships with the geometric mean of the two fold temperatures.
    """

    temperature: float
    fold_temperatures: tuple[float, float]
    images: int
    ece_before: float
    nll_before: float
    ece_after: float  # cross-fitted
    nll_after: float  # cross-fitted

    def to_dict(self) -> dict[str, float | int | list[float]]:
        """Plain values for metrics.json."""
        return {"temperature": self.temperature, "fold_temperatures": list(self.fold_temperatures),
                "images": self.images, "ece_before": self.ece_before, "nll_before": self.nll_before,
                "ece_after_cross_fitted": self.ece_after, "nll_after_cross_fitted": self.nll_after}


def cross_fit(probabilities: np.ndarray, labels: np.ndarray, seed: int = 0) -> Calibration:
    """Fit a temperature on each half of the images, measure it on the other half (needs at least 4 images)."""
    p, y = _check(probabilities, labels)
    if len(y) < 4:
        raise ValueError(f"cross-fitting a temperature needs at least 4 images, got {len(y)}")
    order = np.random.default_rng(seed).permutation(len(y))
    halves = (order[: len(y) // 2], order[len(y) // 2:])
    temps = tuple(fit_temperature(p[h], y[h]) for h in halves)
    after = np.empty_like(p)
    after[halves[1]] = scaled(p[halves[1]], temps[0])
    after[halves[0]] = scaled(p[halves[0]], temps[1])
    return Calibration(
        temperature=math.sqrt(temps[0] * temps[1]), fold_temperatures=(temps[0], temps[1]), images=len(y),
        ece_before=expected_calibration_error(p, y), nll_before=negative_log_likelihood(p, y),
        ece_after=expected_calibration_error(after, y), nll_after=negative_log_likelihood(after, y),
    )
