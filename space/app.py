"""The resnet-cifar Space: classify an image with ResNet-9 and show where it looks, with Captum Grad-CAM.

Thin wiring over `resnet_cifar`: the release is loaded once with `ResNet9.from_pretrained` (strict,
safetensors only) from `MODEL_ID` (a Hub repo id or a local release folder) or, when unset, from the
bundled `space/model/`. Four public API endpoints, each validating every argument on the server:
`/classify`, `/gradcam`, `/misclassified` and `/compare` (see README.md). Run: `python space/app.py`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import logging
import math
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import gradio as gr
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from resnet_cifar import ResNet9
from resnet_cifar.artifacts import MISCLASSIFIED_NAME, MisclassifiedSet, load_misclassified
from resnet_cifar.gradcam import LAYER_DESCRIPTIONS, LAYERS, explain, overlay
from resnet_cifar.preprocess import MAX_PIXELS, check_size, resize_rgb, to_rgb_uint8

HERE = Path(__file__).resolve().parent
BUNDLED_MODEL = HERE / "model"
EXAMPLES_DIR = HERE / "examples"

log = logging.getLogger("space")

# PIL refuses bombs itself above twice this; between 1x and 2x it only warns, and we refuse those ourselves.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

GalleryItems = list[tuple[np.ndarray, str]]
RUNNER_UP = "runner-up"  # /compare's class_name for "the second most likely class, whichever it is"
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """Every knob of the Space in one place."""

    display_size: int = 160  # 32x32 images are upscaled (bicubic) to this before overlaying, to be readable
    max_gradcam_images: int = 10
    max_misclassified_shown: int = 100  # one batched Grad-CAM over more would cost a free Space seconds
    default_top_k: int = 3
    default_gradcam_images: int = 5
    default_misclassified_shown: int = 10
    default_layer: str = "layer3"
    default_opacity: float = 0.5
    default_why_not: str = "runner-up"
    max_file_size: str = "10mb"
    queue_size: int = 64
    concurrency: int = 2  # requests running at once, each on its own model replica: a free Space has 2 vCPUs
    # One torch thread per request: two requests already fill 2 vCPUs, and on a busy machine 2 threads per pass
    # were no faster than 1, at times several times slower (OpenMP workers waiting for each other; BENCHMARKS.md).
    torch_threads: int = 1
    delete_cache: tuple[int, int] = (3600, 3600)  # purge cached gallery files older than an hour, hourly


SETTINGS = Settings()


class RequestError(gr.Error):
    """A request the Space refuses; the message (shown to the visitor) says what was wrong and what is allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, print_exception=False)  # the visitor's mistake, not a server fault


class UploadError(RequestError):
    """An upload that cannot be read as an image."""


# ---------------------------------------------------------------- validation of API arguments


def whole_number(value: Any, name: str, low: int, high: int) -> int:
    """`value` as an int in [low, high]; 3.0 is accepted, 2.5, True, "3" and NaN are not."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (is_number and math.isfinite(value) and float(value).is_integer() and low <= value <= high):
        raise RequestError(f"{name} must be a whole number from {low} to {high}; got {value!r}")
    return int(value)


def check_opacity(value: Any) -> float:
    """The heatmap opacity as a float in [0, 1]."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (is_number and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise RequestError(f"opacity must be a number from 0 to 1; got {value!r}")
    return float(value)


def check_layer(value: Any) -> str:
    """One of resnet_cifar.gradcam.LAYERS."""
    if not isinstance(value, str) or value not in LAYERS:
        raise RequestError(f"unknown layer {value!r}; allowed are {', '.join(LAYERS)}")
    return value


def check_flag(value: Any, name: str) -> bool:
    """A real boolean (JSON true/false), not a truthy string or number."""
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false; got {value!r}")
    return value


# ---------------------------------------------------------------- uploads


def upload_path(upload: Any) -> str:
    """The local path of an upload: gradio's FileData dict (events run with preprocess=False) or a path."""
    if upload is None:
        raise UploadError("no image given; upload an image (PNG, JPEG, WebP, GIF, BMP, TIFF) or pick an example")
    path = upload.get("path") if isinstance(upload, dict) else upload
    if not isinstance(path, (str, Path)) or not os.path.isfile(path):
        raise UploadError("the upload did not arrive as a file; send the image as a file (gradio_client: handle_file)")
    return str(path)


def read_image(upload: Any) -> np.ndarray:
    """Decode an upload ourselves, so that every PIL failure becomes a clear error: HxWx3 uint8 RGB."""
    path = upload_path(upload)
    if os.path.getsize(path) == 0:
        raise UploadError("the uploaded file is empty (0 bytes); upload an image such as a PNG or JPEG")
    try:
        with Image.open(path) as image:
            check_size(image.height, image.width)  # on the header, before a single pixel is decoded
            image.load()
            return to_rgb_uint8(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as err:
        raise UploadError(
            f"image refused as a possible decompression bomb: {err} At most {MAX_PIXELS:,} pixels are allowed"
        ) from err
    except UnidentifiedImageError as err:
        raise UploadError(
            "the file is not an image that can be read; upload a PNG, JPEG, WebP, GIF, BMP or TIFF"
        ) from err
    except ValueError as err:  # resnet_cifar's own limits: size, pixel types
        raise UploadError(f"image refused: {err}") from err
    except Exception as err:  # truncated or corrupt data surfaces as OSError, SyntaxError, EOFError, zlib.error...
        raise UploadError(f"the image could not be decoded (truncated or corrupt file?): {err}") from err


# ---------------------------------------------------------------- the model and what the Space shows


def model_source() -> str:
    """MODEL_ID when set, else the bundled release folder; a clear error when neither exists."""
    source = os.environ.get("MODEL_ID", "").strip()
    if source:
        return source
    if not BUNDLED_MODEL.is_dir():
        raise SystemExit(
            f"no model to serve: set MODEL_ID to a Hub repo id or a release folder, or put a release "
            f"(model.safetensors, config.json, {MISCLASSIFIED_NAME}) in {BUNDLED_MODEL}"
        )
    return str(BUNDLED_MODEL)


def load_examples(folder: Path = EXAMPLES_DIR) -> tuple[list[Path], list[np.ndarray]]:
    """The example images (sorted by file name) and their RGB pixels."""
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise SystemExit(f"no example images in {folder}")
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(to_rgb_uint8(image))
    return paths, images


def example_name(path: Path) -> str:
    """'0012_dog.png' -> 'dog'."""
    return path.stem.split("_", 1)[-1]


class Explainer:
    """The loaded release and the four things the Space does with it; arguments validated, gr.Error on misuse."""

    def __init__(
        self, model: ResNet9, misclassified: MisclassifiedSet | None, example_paths: list[Path],
        examples: list[np.ndarray], settings: Settings = SETTINGS, source: str = "",
    ) -> None:
        self.model = model.eval()
        self.misclassified = misclassified
        self.example_paths = example_paths
        self.examples = examples
        self.settings = settings
        self.source = source
        # Captum's hooks live on the module they explain, so two requests must never share a model at once. Model
        # work runs on `concurrency` dedicated threads, each with its own replica; keeping torch's allocations on
        # those few threads also keeps the memory of gradio's many worker threads from growing with them.
        replicas = [model] + [copy.deepcopy(model) for _ in range(settings.concurrency - 1)]
        self._replicas = queue.SimpleQueue()
        for replica in replicas:
            self._replicas.put(replica.to(memory_format=torch.channels_last))  # ~10% faster convolutions on CPU
        self._model_threads = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="model")
        self._thread_state = threading.local()

    @classmethod
    def load(cls, source: str, revision: str | None = None, settings: Settings = SETTINGS) -> "Explainer":
        """Load the release strictly from a folder or Hub repo id, with its misclassified set when it has one."""
        model = ResNet9.from_pretrained(source, revision=revision)
        try:
            misclassified = load_misclassified(source, revision=revision)
        except Exception as err:  # the weights alone still make a useful Space
            log.warning("no misclassified set in %s (%s); that section is disabled", source, err)
            misclassified = None
        paths, examples = load_examples()
        return cls(model, misclassified, paths, examples, settings, source)

    @property
    def num_misclassified(self) -> int:
        """How many misclassified images the Space can show (capped by the settings)."""
        n = 0 if self.misclassified is None else len(self.misclassified)
        return min(n, self.settings.max_misclassified_shown)

    def _display(self, image: np.ndarray) -> np.ndarray:
        """The image upscaled (or downscaled) to the gallery size."""
        return resize_rgb(image, self.settings.display_size)

    def _on_model_thread(self, work: Callable[[ResNet9], T]) -> T:
        """Run work(model) on a model thread, with the replica that thread owns."""

        def task() -> T:
            if not hasattr(self._thread_state, "model"):
                self._thread_state.model = self._replicas.get_nowait()
            return work(self._thread_state.model)

        return self._model_threads.submit(task).result()

    def _batch(self, images: list[np.ndarray]) -> torch.Tensor:
        """Normalized Nx3x32x32 batch in the replicas' memory format."""
        return self.model.preprocess(images).contiguous(memory_format=torch.channels_last)

    def _probabilities(self, images: list[np.ndarray]) -> torch.Tensor:
        """Class probabilities, N x num_classes."""
        batch = self._batch(images)
        return self._on_model_thread(lambda model: model.probabilities(batch))

    def _explain(self, images: list[np.ndarray], layer: str, targets: list[int] | None = None):
        """(probabilities, Grad-CAM maps) of all images from ONE batched forward and backward pass.

        The maps explain `targets` (default: each image's predicted class); a hook keeps the logits of the
        very forward pass Grad-CAM runs, so the captions cost no second forward.
        """
        batch = self._batch(images)

        def work(model: ResNet9):
            logits = []
            hook = model.register_forward_hook(lambda _module, _inputs, output: logits.append(output.detach()))
            try:
                maps = explain(model, batch, layer, targets=targets)
            finally:
                hook.remove()
            return torch.softmax(logits[-1], dim=1), maps

        return self._on_model_thread(work)

    def _caption(self, probs: torch.Tensor, index: int) -> str:
        """'cat (0.87)' for a class index."""
        return f"{self.model.class_names[index]} ({float(probs[index]):.2f})"

    def classify(self, image: Any, top_k: Any) -> dict[str, float]:
        """Top-k classes of an uploaded image: {class name: probability}, most likely first."""
        top_k = whole_number(top_k, "top_k", 1, self.model.num_classes)
        with timed("classify", 1):
            probs = self._probabilities([read_image(image)])
            values, indices = probs[0].topk(top_k)
            return {self.model.class_names[i]: float(p) for p, i in zip(values.tolist(), indices.tolist())}

    def gradcam(self, image_or_none: Any, count: Any, layer: Any, opacity: Any) -> GalleryItems:
        """`count` Grad-CAM overlays for the predicted class: the upload first (if any), then the examples."""
        count = whole_number(count, "count", 1, self.settings.max_gradcam_images)
        layer, opacity = check_layer(layer), check_opacity(opacity)
        with timed("gradcam", count):
            images = [] if image_or_none is None else [read_image(image_or_none)]
            sources = ["your image"] if images else []
            n_examples = count - len(images)
            images += self.examples[:n_examples]
            sources += [f"example {example_name(p)}" for p in self.example_paths[:n_examples]]
            probs, maps = self._explain(images, layer)
            return [
                (overlay(self._display(img), heat.numpy(), opacity), f"{src}: {self._caption(p, int(p.argmax()))}")
                for img, heat, p, src in zip(images, maps, probs, sources)
            ]

    def compare(self, image: Any, class_name: Any, layer: Any, opacity: Any) -> GalleryItems:
        """Grad-CAM of the predicted class beside that of a class the visitor picks ("why not dog?").

        `class_name` is one of the model's classes, or "runner-up" for the second most likely one.
        """
        names = self.model.class_names
        if not isinstance(class_name, str) or class_name not in (*names, RUNNER_UP):
            raise RequestError(f"unknown class {class_name!r}; allowed are {', '.join(names)} or {RUNNER_UP!r}")
        layer, opacity = check_layer(layer), check_opacity(opacity)
        with timed("compare", 2):
            rgb = read_image(image)
            probs = self._probabilities([rgb])[0]
            predicted, runner_up = probs.topk(2).indices.tolist()
            chosen = runner_up if class_name == RUNNER_UP else names.index(class_name)
            # One batched pass explains both classes: the image twice, one target each.
            _, maps = self._explain([rgb, rgb], layer, targets=[predicted, chosen])
            shown = self._display(rgb)
            return [
                (overlay(shown, maps[0].numpy(), opacity), f"predicted: {self._caption(probs, predicted)}"),
                (overlay(shown, maps[1].numpy(), opacity), f"why not {names[chosen]}? {self._caption(probs, chosen)}"),
            ]

    def misclassified_gallery(self, count: Any, show_gradcam: Any, layer: Any, opacity: Any) -> GalleryItems:
        """The release's most confident mistakes, captioned 'predicted (p) / true', optionally with Grad-CAM."""
        if self.num_misclassified == 0:
            raise RequestError(f"this release carries no misclassified images ({MISCLASSIFIED_NAME})")
        count = whole_number(count, "count", 1, self.num_misclassified)
        show_gradcam = check_flag(show_gradcam, "show_gradcam")
        layer, opacity = check_layer(layer), check_opacity(opacity)
        with timed("misclassified", count):
            mis = self.misclassified
            images = list(mis.images[:count])
            predicted = [int(i) for i in mis.predicted_labels[:count]]
            # Explain the (wrong) class the model chose: what made it think so.
            maps = self._explain(images, layer, targets=predicted)[1] if show_gradcam else [None] * count
            names = self.model.class_names
            return [
                (
                    self._display(img) if heat is None else overlay(self._display(img), heat.numpy(), opacity),
                    f"{names[pred]} ({float(p):.2f}) / {names[int(true)]}",
                )
                for img, heat, pred, p, true in zip(images, maps, predicted, mis.probabilities, mis.true_labels)
            ]


@contextmanager
def timed(endpoint: str, images: int) -> Iterator[None]:
    """Log the server-side time of one request (decode, model, overlays; not gradio's own work)."""
    start, failed = time.perf_counter(), True
    try:
        yield
        failed = False
    finally:
        ms = (time.perf_counter() - start) * 1000
        log.info("server time /%s images=%d %.1f ms%s", endpoint, images, ms, " (failed)" if failed else "")


def save_png(image: np.ndarray, folder: Path) -> str:
    """Write an image as a PNG named by its content, atomically, and return its path.

    Gradio would save returned arrays itself, but it rewrites an identical image's file in place, so a visitor
    downloading it while another request produces the same image (the default gallery of examples, say) gets a
    truncated file. A content-named file written once through a rename is never seen half-written.
    """
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    data = buffer.getvalue()
    path = folder / f"{hashlib.sha256(data).hexdigest()}.png"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{path.name}.{os.getpid()}.{threading.get_ident()}"
        partial.write_bytes(data)
        os.replace(partial, path)
    return str(path)


def as_png_files(gallery_fn, folder: Path):
    """Wrap a gallery function to return (PNG path, caption) pairs; the signature (API names) is kept."""

    @functools.wraps(gallery_fn)
    def gallery_files(*args):
        return [(save_png(image, folder), caption) for image, caption in gallery_fn(*args)]

    return gallery_files


# ---------------------------------------------------------------- the page


INTRO = """# ResNet-9 on CIFAR-10: what does it see?
Upload an image or click one of the CIFAR-10 test images below. The model sees every image at 32x32 pixels.
Grad-CAM highlights the regions that raised the score of a class (red: most), at the layer you choose.
Model: `{source}`."""

# Galleries as tall as their images (gradio's default reserves 450 px); tiny uploads shown at a visible size.
CSS = """
.fit-gallery .fixed-height { min-height: 0 !important; max-height: none !important; }
#upload img { min-width: 128px; object-fit: contain !important; }
"""


def build_demo(space: Explainer) -> gr.Blocks:
    """The page and its API: page events are private; the four public endpoints validate every argument."""
    with gr.Blocks(title="ResNet-9 CIFAR-10 explained", delete_cache=space.settings.delete_cache) as demo:
        ui = layout(space)
        # Gallery PNGs go inside gradio's cache, so that it serves them and its delete_cache schedule removes them.
        files = Path(ui.cam_gallery.GRADIO_CACHE) / "space"
        galleries = SimpleNamespace(
            gradcam=as_png_files(space.gradcam, files), compare=as_png_files(space.compare, files),
            misclassified=as_png_files(space.misclassified_gallery, files),
        )
        wire_api(space, ui, galleries)  # first: the public names must not be taken by page events
        wire_page(demo, space, ui, galleries)
    return demo


def layout(space: Explainer) -> SimpleNamespace:
    """Create the page's components, in reading order; returns them by name."""
    s, names, n_mis = space.settings, list(space.model.class_names), space.num_misclassified
    ui = SimpleNamespace()
    gr.Markdown(INTRO.format(source=space.source))
    with gr.Row():
        with gr.Column():
            ui.image = gr.Image(type="filepath", image_mode=None, label="Your image", sources=["upload", "clipboard"],
                                height=240, elem_id="upload")
            gr.Examples([[str(p)] for p in space.example_paths], inputs=ui.image,
                        label="Or click a CIFAR-10 test image", examples_per_page=len(space.example_paths),
                        api_visibility="private", elem_id="examples")
        with gr.Column():
            ui.top_k = gr.Slider(1, space.model.num_classes, s.default_top_k, step=1, label="Top classes",
                                 elem_id="top-k")
            ui.label = gr.Label(label="Prediction", elem_id="prediction")
    gr.Markdown("## Grad-CAM: where the model looks")
    with gr.Row():
        ui.show_cam = gr.Checkbox(True, label="Show Grad-CAM", elem_id="show-gradcam")
        ui.cam_count = gr.Slider(1, s.max_gradcam_images, s.default_gradcam_images, step=1, elem_id="gradcam-count",
                                 label="Number of Grad-CAM images", info="your image first, then the examples")
        ui.layer = gr.Dropdown([(LAYER_DESCRIPTIONS[n], n) for n in LAYERS], value=s.default_layer, label="Layer",
                               elem_id="layer")
        ui.opacity = gr.Slider(0, 1, s.default_opacity, step=0.05, label="Heatmap opacity", elem_id="opacity")
    ui.cam_gallery = gr.Gallery(label="Grad-CAM", columns=5, format="png", elem_id="gradcam-gallery",
                                elem_classes="fit-gallery")
    gr.Markdown("## Why not ...? Your image explained for a class you pick, beside the predicted one")
    with gr.Row():
        ui.why_not = gr.Dropdown([("the runner-up (2nd most likely class)", RUNNER_UP), *names],
                                 value=s.default_why_not, label="Explain your image as", scale=1, elem_id="why-not")
        ui.compare_gallery = gr.Gallery(label="Predicted class vs. your class", columns=2, format="png", scale=1,
                                        elem_id="compare-gallery", elem_classes="fit-gallery")
    gr.Markdown("## Misclassified test images: the model's most confident mistakes")
    with gr.Row():
        ui.show_mis = gr.Checkbox(False, label="Show misclassified images", interactive=n_mis > 0,
                                  elem_id="show-misclassified")
        ui.mis_count = gr.Slider(1, max(n_mis, 1), min(s.default_misclassified_shown, max(n_mis, 1)), step=1,
                                 label=f"How many (of {n_mis})", elem_id="misclassified-count")
        ui.mis_cam = gr.Checkbox(False, label="Overlay Grad-CAM on them", elem_id="misclassified-gradcam")
    ui.mis_gallery = gr.Gallery(label="predicted (probability) / true", columns=5, format="png", visible=False,
                                elem_id="misclassified-gallery", elem_classes="fit-gallery")
    return ui


def wire_api(space: Explainer, ui: SimpleNamespace, galleries: SimpleNamespace) -> None:
    """The public endpoints: no page event triggers them; clients call them by name.

    preprocess=False hands over the upload's path undecoded, so that decoding failures become clear errors
    (gradio's own decoder would fail with a generic one).
    """
    api = dict(preprocess=False, concurrency_limit=space.settings.concurrency, concurrency_id="model",
               api_visibility="public")
    gr.on([], space.classify, [ui.image, ui.top_k], ui.label, api_name="classify", **api)
    gr.on([], galleries.gradcam, [ui.image, ui.cam_count, ui.layer, ui.opacity], ui.cam_gallery, api_name="gradcam",
          **api)
    gr.on([], galleries.misclassified, [ui.mis_count, ui.mis_cam, ui.layer, ui.opacity], ui.mis_gallery,
          api_name="misclassified", **api)
    gr.on([], galleries.compare, [ui.image, ui.why_not, ui.layer, ui.opacity], ui.compare_gallery,
          api_name="compare", **api)


def wire_page(demo: gr.Blocks, space: Explainer, ui: SimpleNamespace, galleries: SimpleNamespace) -> None:
    """Page events: private, tolerant of an empty image; a bad upload is reported once, by the classifier."""

    def page_classify(image, top_k):
        return None if image is None else space.classify(image, top_k)

    def page_gradcam(image, show, count, layer, opacity):
        if not show:
            return gr.update(visible=False)
        try:
            return gr.update(visible=True, value=galleries.gradcam(image, count, layer, opacity))
        except UploadError:
            return gr.update(visible=True, value=galleries.gradcam(None, count, layer, opacity))

    def page_compare(image, class_name, layer, opacity):
        try:
            return None if image is None else galleries.compare(image, class_name, layer, opacity)
        except UploadError:
            return None

    def page_misclassified(show, count, with_cam, layer, opacity):
        if not show or space.num_misclassified == 0:
            return gr.update(visible=False)
        return gr.update(visible=True, value=galleries.misclassified(count, with_cam, layer, opacity))

    page = dict(preprocess=False, concurrency_limit=space.settings.concurrency, concurrency_id="model",
                api_visibility="private", trigger_mode="always_last")
    explained = [ui.layer.change, ui.opacity.change]
    gr.on([ui.image.change, ui.top_k.change], page_classify, [ui.image, ui.top_k], ui.label, **page)
    gr.on([demo.load, ui.image.change, ui.show_cam.change, ui.cam_count.change, *explained], page_gradcam,
          [ui.image, ui.show_cam, ui.cam_count, ui.layer, ui.opacity], ui.cam_gallery, **page)
    gr.on([ui.image.change, ui.why_not.change, *explained], page_compare,
          [ui.image, ui.why_not, ui.layer, ui.opacity], ui.compare_gallery, **page)
    gr.on([ui.show_mis.change, ui.mis_count.change, ui.mis_cam.change, *explained], page_misclassified,
          [ui.show_mis, ui.mis_count, ui.mis_cam, ui.layer, ui.opacity], ui.mis_gallery, **page)


def main() -> None:
    """Load the release and serve the Space on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (gradio reads both)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(os.environ.get("SPACE_LOG_LEVEL", "INFO"))
    torch.set_num_threads(int(os.environ.get("SPACE_TORCH_THREADS", SETTINGS.torch_threads)))
    source = model_source()
    space = Explainer.load(source, revision=os.environ.get("MODEL_REVISION") or None)
    log.info("serving %s (%d misclassified images, torch threads %d)", source, space.num_misclassified,
             torch.get_num_threads())
    demo = build_demo(space)
    demo.queue(max_size=SETTINGS.queue_size, default_concurrency_limit=SETTINGS.concurrency)
    # allowed_paths stays empty: the server hands out only its own cache and the examples.
    demo.launch(max_file_size=SETTINGS.max_file_size, show_error=False, css=CSS)


if __name__ == "__main__":
    main()
