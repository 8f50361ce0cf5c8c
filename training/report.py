"""After Trainer.test: the mistakes, per-class figures and the plots the model card shows, all from the one
evaluation the test produced."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from resnet_cifar import ResNet9, evaluate, gradcam  # noqa: E402
from resnet_cifar.calibration import Calibration, ece_of, reliability  # noqa: E402
from resnet_cifar.captions import MISTAKE_LEGEND  # noqa: E402
from resnet_cifar.preprocess import normalize  # noqa: E402
from resnet_cifar.release import MisclassifiedSet  # noqa: E402

from .module import Evaluation  # noqa: E402

GRID_IMAGES = 20  # mistakes shown in the misclassified and Grad-CAM grids


def per_class_accuracy(evaluation: Evaluation, class_names: Sequence[str]) -> dict[str, float | None]:
    """Accuracy over the test images of each true class (None for a class with no test image)."""
    return evaluate.per_class_accuracy(evaluation.predictions, evaluation.labels, class_names)


def confusion_matrix(evaluation: Evaluation, num_classes: int) -> np.ndarray:
    """C x C counts, rows true class, columns predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (evaluation.labels, evaluation.predictions), 1)
    return matrix


def misclassified(test_images: np.ndarray, evaluation: Evaluation, count: int = 100) -> MisclassifiedSet:
    """The `count` most confident mistakes (all of them if fewer), most confident first.

    `test_images` is the whole test split; the evaluation says which of its rows it measured.
    """
    preds = evaluation.predictions
    wrong = np.flatnonzero(preds != evaluation.labels)
    confidence = evaluation.probabilities[wrong, preds[wrong]]
    chosen = wrong[np.argsort(-confidence, kind="stable")][:count]
    return MisclassifiedSet(
        images=np.ascontiguousarray(test_images[evaluation.indices[chosen]]),
        true_labels=evaluation.labels[chosen],
        predicted_labels=preds[chosen],
        probabilities=evaluation.probabilities[chosen, preds[chosen]].astype(np.float32),
    )


def read_metrics(metrics_csv: str | Path) -> list[dict[str, float]]:
    """Rows of Lightning's CSVLogger metrics.csv, with empty cells dropped and numbers parsed."""
    path = Path(metrics_csv)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def epoch_table(rows: list[dict[str, float]]) -> list[dict[str, Any]]:
    """One row per epoch: train/val loss and accuracy and the learning rate at the epoch's end."""
    epochs: dict[int, dict[str, Any]] = {}
    last_lr = None
    for row in rows:
        lr = next((v for k, v in row.items() if k.startswith("lr-")), None)
        if lr is not None:
            last_lr = lr
        if "train_loss" in row or "val_loss" in row:
            e = int(row["epoch"])
            entry = epochs.setdefault(e, {"epoch": e + 1})
            for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
                if key in row:
                    entry[key] = round(row[key], 4)
            entry["lr"] = f"{last_lr:.2e}" if last_lr is not None else "-"
    return [{k: e.get(k, "-") for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")}
            for _, e in sorted(epochs.items())]


def _save(fig: plt.Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def plot_lr_finder(lrs: Sequence[float], losses: Sequence[float], suggestion: float | None, path: Path) -> str:
    """Loss against learning rate from Lightning's LR finder, with the chosen max LR marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    if suggestion is not None:
        ax.axvline(suggestion, color="red", linestyle="--", label=f"max LR {suggestion:.2e}")
        ax.legend()
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title="LR finder")
    return _save(fig, path)


def plot_lr_schedule(planned: Sequence[float], rows: list[dict[str, float]], path: Path,
                     momenta: Sequence[float | None] = ()) -> str:
    """The whole One Cycle schedule the scheduler runs (rise, peak, fall), with the LRs the run logged on it."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(len(planned)), planned, label="schedule")
    logged = [(row["step"], v) for row in rows for k, v in row.items() if k.startswith("lr-")]
    if logged:
        ax.plot(*zip(*logged), "o", markersize=3, label="logged")
    peak = int(np.argmax(planned))
    ax.axvline(peak, color="grey", linestyle=":", label=f"peak {planned[peak]:.2e} at step {peak}")
    if any(m is not None for m in momenta) and len(set(momenta)) > 1:
        ax2 = ax.twinx()
        ax2.plot(range(len(momenta)), momenta, color="tab:green", alpha=0.6)
        ax2.set_ylabel("momentum", color="tab:green")
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="One Cycle schedule")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_curves(table: list[dict[str, Any]], path: Path) -> str | None:
    """Loss and accuracy per epoch, train and validation."""
    if not table:
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("loss", ax_loss), ("acc", ax_acc)):
        for stage in ("train", "val"):
            points = [(r["epoch"], r[f"{stage}_{key}"]) for r in table if r[f"{stage}_{key}"] != "-"]
            if points:
                ax.plot(*zip(*points), marker="o", label=stage)
        ax.set(xlabel="epoch", ylabel=key, title=f"{key} per epoch")
        ax.legend()
    return _save(fig, path)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> str:
    """Confusion matrix of the test set with counts in the cells."""
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                color="white" if value > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="Test confusion matrix")
    return _save(fig, path)


def plot_reliability(before: Evaluation, after: Evaluation, fit: Calibration, path: Path) -> str:
    """Reliability diagrams (15 bins of the top probability) of the test set before and after the temperature:
    bars at each bin's accuracy against the diagonal of perfect calibration, with the images per bin below."""
    fig, axes = plt.subplots(2, 2, figsize=(9, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for column, (evaluation, name) in enumerate(((before, "before"), (after, f"after T = {fit.temperature:.3f}"))):
        r = reliability(evaluation.probabilities, evaluation.labels)
        title = f"{name}: ECE {ece_of(r) * 100:.2f} %"
        centers, width = (r.edges[:-1] + r.edges[1:]) / 2, r.edges[1] - r.edges[0]
        top, bottom = axes[0, column], axes[1, column]
        full = r.counts > 0
        top.bar(centers[full], r.accuracy[full], width=width * 0.95, color="tab:blue", label="accuracy")
        top.bar(centers[full], r.confidence[full] - r.accuracy[full], bottom=r.accuracy[full], width=width * 0.95,
                color="tab:red", alpha=0.35, label="gap to confidence")
        top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title)
        bottom.bar(centers, r.counts, width=width * 0.95, color="gray")
        bottom.set(yscale="log", xlabel="top probability (confidence)", ylabel="images")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Reliability on {len(before.labels):,} test images (15 equal-width bins)")
    return _save(fig, path)


def plot_grid(images: Sequence[np.ndarray], captions: Sequence[str], title: str, path: Path) -> str:
    """A grid of images with a caption under each."""
    cols = min(5, max(1, len(images)))
    rows = max(1, math.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_mistakes(model: ResNet9, mistakes: MisclassifiedSet, folder: Path, layer: str = "layer3") -> list[str]:
    """Misclassified grid and its Grad-CAM grid (explaining the predicted class); returns the file names."""
    if len(mistakes) == 0:
        return []
    shown = mistakes.images[:GRID_IMAGES]
    captions = mistakes.captions(model.class_names)[:GRID_IMAGES]
    names = [plot_grid(list(shown), captions, f"Misclassified: {MISTAKE_LEGEND}", folder / "misclassified.png")]
    batch = normalize(shown, model.mean, model.std).to(model.device)
    heatmaps = gradcam.explain(model, batch, layer=layer).cpu().numpy()
    overlays = [gradcam.overlay(image, heat, 0.5) for image, heat in zip(shown, heatmaps)]
    names.append(plot_grid(overlays, captions, f"Grad-CAM ({layer}) of the predicted class", folder / "gradcam.png"))
    return names
