"""The four things a visitor of a release can ask for (top-k classes, Grad-CAM galleries, "why not ...?", the
misclassified set), each checking its own arguments and answering images with captions; no web framework.

Images are what ResNet9.preprocess takes (file paths, PIL images, HxWx3 arrays), never a web payload: the Space
(space/app.py) checks its uploads first, lays the requests out on a page and publishes them as its API; a notebook
or another server can use them as they are.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import captions, release
from .gradcam import check_layer, check_opacity, overlay
from .checks import short, whole_number
from .preprocess import load_image, resize_rgb, to_rgb_uint8
from .serving import Explainer

RUNNER_UP = "runner-up"  # compare's class_name for "the second most likely class, whichever it is"
Gallery = list[tuple[np.ndarray, str]]
# An image argument (a path, a PIL image, an array); `ImageInput | None` in a signature: the image may be left out.
# The Space's gate reads these signatures: they are the one description of each request's arguments.
ImageInput = Any
SHEET_COLUMNS = 10


def contact_sheet(images: Sequence[np.ndarray], columns: int = SHEET_COLUMNS) -> np.ndarray:
    """Equal-sized HxWx3 images in one image, row by row, `columns` a row (fewer when there are fewer images);
    image i sits at row i // columns, column i % columns, with no gap; a short last row is padded with white."""
    if not images:
        raise ValueError("a contact sheet needs at least one image")
    height, width = images[0].shape[:2]
    if any(image.shape != images[0].shape for image in images):
        raise ValueError(f"a contact sheet takes images of one size, got {sorted({i.shape for i in images})}")
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    sheet = np.full((rows * height, columns * width, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        sheet[row * height:(row + 1) * height, column * width:(column + 1) * width] = image
    return sheet


class Service:
    """A release served: its explainer, its example images and the four requests, each argument checked.

    An image is a file path (decoded within the library's memory budget, large ones one at a time), a PIL image
    or an HxWx3 array; gallery images are RGB arrays of `display_size` pixels a side, overlaid with Grad-CAM when
    asked.
    """

    def __init__(self, loaded: release.Release, examples: Sequence[Path], *,
                 display_size: int = 160, max_gradcam_images: int = 10, max_misclassified_shown: int = 100,
                 workers: int = 2) -> None:
        self.release, self.model = loaded, loaded.model
        self.display_size, self.max_gradcam_images = display_size, max_gradcam_images
        self.explainer = Explainer(loaded.model, workers=workers)
        self.example_paths = list(examples)
        self.examples = [load_image(p) for p in self.example_paths]
        mis = loaded.misclassified
        self.num_misclassified = 0 if mis is None else min(len(mis), max_misclassified_shown)

    def _image(self, image: Any) -> np.ndarray:
        """An image argument as HxWx3 uint8; ImageError or TypeError says what was wrong."""
        if image is None:
            raise ValueError("no image given; upload an image (PNG, JPEG, WebP, GIF, BMP, TIFF) or pick an example")
        if isinstance(image, (str, os.PathLike)):
            return self.explainer.load_image(image)
        return to_rgb_uint8(image)

    def _shown(self, image: np.ndarray, heat: Any = None, opacity: float = 0.0) -> np.ndarray:
        shown = resize_rgb(image, self.display_size)
        return shown if heat is None else overlay(shown, heat.numpy(), opacity)

    def _caption(self, index: int, probability: Any) -> str:
        return captions.class_probability(self.model.class_names[index], probability)

    @staticmethod
    def overlay_settings(layer: Any, opacity: Any) -> tuple[str, float]:
        """The layer and opacity every Grad-CAM request shares, checked: ValueError names the bad one."""
        return check_layer(layer), check_opacity(opacity)

    def gradcam_settings(self, count: Any, layer: Any, opacity: Any) -> tuple[int, str, float]:
        """The Grad-CAM gallery's settings, checked (count first, as `gradcam` checks them)."""
        return (whole_number(count, "count", 1, self.max_gradcam_images), *self.overlay_settings(layer, opacity))

    def classify(self, image: ImageInput, top_k: Any) -> dict[str, float]:
        """Top-k classes of an image: {class name: probability}, most likely first."""
        top_k = self.model.check_top_k(top_k)
        probs = self.explainer.probabilities([self._image(image)])[0]
        values, indices = probs.topk(top_k)
        return {self.model.class_names[i]: float(p) for p, i in zip(values.tolist(), indices.tolist())}

    def gradcam(self, image_or_none: ImageInput | None, count: Any, layer: Any, opacity: Any) -> Gallery:
        """`count` Grad-CAM overlays for the predicted class: the given image first (if any), then examples."""
        count, layer, opacity = self.gradcam_settings(count, layer, opacity)
        images, sources = [], []
        if image_or_none is not None:
            images, sources = [self._image(image_or_none)], ["your image"]
        for path, example in zip(self.example_paths, self.examples):
            if len(images) < count and not any(np.array_equal(example, shown) for shown in images):
                images.append(example)  # an example the visitor picked is shown once, as theirs
                sources.append(f"example {path.stem.split('_', 1)[-1]}")
        maps, probs = self.explainer.explain(images, layer)
        return [(self._shown(img, heat, opacity), f"{src}: {self._caption(int(p.argmax()), p.max())}")
                for img, heat, p, src in zip(images, maps, probs, sources)]

    def compare(self, image: ImageInput, class_name: Any, layer: Any, opacity: Any) -> Gallery:
        """Grad-CAM of the predicted class beside that of a class the visitor picks ("why not dog?")."""
        names = self.model.class_names
        if not isinstance(class_name, str) or class_name not in (*names, RUNNER_UP):
            raise ValueError(f"unknown class {short(class_name)}; allowed are {', '.join(names)} or {RUNNER_UP!r}")
        layer, opacity = self.overlay_settings(layer, opacity)
        rgb = self._image(image)
        probs = self.explainer.probabilities([rgb])[0]
        predicted, runner_up = probs.topk(2).indices.tolist()
        chosen = runner_up if class_name == RUNNER_UP else names.index(class_name)
        maps, _ = self.explainer.explain([rgb, rgb], layer, targets=[predicted, chosen])  # one batched pass
        return [(self._shown(rgb, maps[0], opacity), f"predicted: {self._caption(predicted, probs[predicted])}"),
                (self._shown(rgb, maps[1], opacity), f"why not {names[chosen]}? {self._caption(chosen, probs[chosen])}")]

    def misclassified(self, count: Any, show_gradcam: Any, layer: Any, opacity: Any) -> Gallery:
        """The release's most confident test mistakes, captioned 'predicted (p) / true', optionally with Grad-CAM."""
        if self.num_misclassified == 0:
            raise ValueError(f"this release carries no misclassified images ({release.MISCLASSIFIED_NAME})")
        count = whole_number(count, "count", 1, self.num_misclassified)
        if not isinstance(show_gradcam, bool):
            raise ValueError(f"show_gradcam must be true or false, got {short(show_gradcam)}")
        layer, opacity = self.overlay_settings(layer, opacity)
        mis = self.release.misclassified
        images = list(mis.images[:count])
        # Explain the (wrong) class the model chose: what made it think so.
        maps = (self.explainer.explain(images, layer, targets=mis.predicted_labels[:count].tolist())[0]
                if show_gradcam else [None] * count)
        return [(self._shown(img, heat, opacity), caption)
                for img, heat, caption in zip(images, maps, mis.captions(self.model.class_names))]

    def misclassified_sheet(self, count: Any, show_gradcam: Any, layer: Any, opacity: Any
                            ) -> tuple[np.ndarray, dict[str, Any]]:
        """The same mistakes as `misclassified`, as one contact sheet and its index: {"columns", "tile" (pixels a
        side), "images": [{"caption", "predicted", "probability", "true"}, ...]}, image i at row i // columns,
        column i % columns. One image instead of `count`: a client fetches one file (BENCHMARKS.md)."""
        gallery = self.misclassified(count, show_gradcam, layer, opacity)
        mis, names = self.release.misclassified, self.model.class_names
        sheet = contact_sheet([image for image, _ in gallery])
        index = {"columns": sheet.shape[1] // self.display_size, "tile": self.display_size, "images": [
            {"caption": caption, "predicted": names[int(mis.predicted_labels[i])],
             "probability": round(float(mis.probabilities[i]), 4), "true": names[int(mis.true_labels[i])]}
            for i, (_, caption) in enumerate(gallery)]}
        return sheet, index
