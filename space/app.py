"""The resnet-cifar Space: classify an image with ResNet-9 and show where it looks, with Captum Grad-CAM.

Layout and wiring only: loading the release, decoding images, the model work, the checks of every argument and
the captions are resnet_cifar's (release, service, serving, gradcam, captions); what is gradio's lives beside this
file: uploads.py (the upload folder, and the check that an image is an upload of this Space) and gate.py (the
API gate). The release comes from MODEL_ID
(a Hub repo id or a release folder), else space.json (written by `resnet-cifar-space build`), else the bundled
model/ folder. Run: `python space/app.py`.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import threading
import time
import typing
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from starlette.middleware import Middleware

from resnet_cifar import captions, release
from resnet_cifar.errors import first_line
from resnet_cifar.gradcam import LAYER_DESCRIPTIONS, LAYERS, jet
from resnet_cifar.hub import NETWORK_ERRORS
from resnet_cifar.preprocess import ImageError
from resnet_cifar.service import RUNNER_UP, Service
from resnet_cifar.serving import return_freed_memory, save_image

# Siblings of this file, imported as the Space runs it (`python app.py`: its folder is first on sys.path).
from gate import ApiGate, Param  # noqa: E402
from uploads import UploadFolder, UploadRefused  # noqa: E402

HERE = Path(__file__).resolve().parent
BUNDLED_MODEL = HERE / "model"
EXAMPLES_DIR = HERE / "examples"
log = logging.getLogger("space")


@dataclass(frozen=True)
class Settings:
    """Every knob of the Space in one place."""

    display_size: int = 160  # 32x32 images are upscaled (bicubic) to this before overlaying, to be readable
    max_gradcam_images: int = 10
    max_misclassified_shown: int = 100
    default_top_k: int = 3
    default_gradcam_images: int = 5
    default_misclassified_shown: int = 10
    default_layer: str = "layer3"
    default_opacity: float = 0.5
    max_file_size: str = "10mb"
    # Uploads and generated images on disk, all visitors together: kept at every upload (oldest files go first).
    upload_budget_mb: int = 1024
    queue_size: int = 64
    concurrency: int = 2  # model threads, each with its own replica: a free Space has 2 vCPUs
    # Requests in progress at once: more than the model threads, so that a request waiting on a large decode
    # (one at a time) does not hold up small ones; each waits its turn for a model thread.
    requests: int = 6
    torch_threads: int = 1  # per request: two requests already fill 2 vCPUs (BENCHMARKS.md)


SETTINGS = Settings()


class ImageRefused(gr.Error):
    """A refused image (unreadable, too large, not an upload of this Space): the page takes it off."""


def refusals_as_errors(handler):
    """The one place library errors become what a visitor sees: one line, the library's own words; a refused
    image is an ImageRefused, a refused argument a plain gr.Error. Logs the server time of every request
    (decoding, model work, overlays; not gradio's own)."""

    @functools.wraps(handler)
    def checked(*args):
        start, images, outcome = time.perf_counter(), 0, " (failed)"
        try:
            result = handler(*args)
            images = len(result) if isinstance(result, list) else len(result[1]["images"]) \
                if isinstance(result, tuple) else 1  # a gallery, a (sheet, index), one image
            outcome = ""
            return result
        except (ImageError, UploadRefused) as err:
            raise ImageRefused(first_line(err, 400), print_exception=False) from None
        except (ValueError, TypeError) as err:
            raise gr.Error(first_line(err, 400), print_exception=False) from None
        finally:
            log.info("server time /%s images=%d %.1f ms%s", handler.__name__, images,
                     (time.perf_counter() - start) * 1000, outcome)

    return checked


class Space(Service):
    """The release served with this Space's examples and settings; an image is an upload of this Space."""

    def __init__(self, loaded: release.Release, uploads: UploadFolder, settings: Settings = SETTINGS) -> None:
        super().__init__(loaded, sorted(EXAMPLES_DIR.glob("*.png")), display_size=settings.display_size,
                         max_gradcam_images=settings.max_gradcam_images,
                         max_misclassified_shown=settings.max_misclassified_shown, workers=settings.concurrency)
        self.uploads, self.settings = uploads, settings

    def _image(self, payload: Any) -> np.ndarray:
        """A request's image: a file gradio received as an upload of this Space (UploadFolder.check), never a
        path or anything else a request names; the same methods and arguments as the Service's."""
        return super()._image(None if payload is None else self.uploads.check(payload))


def as_files(gallery, folder: Path):
    """A gallery handler returning (image file, caption) pairs; its signature (the API's names) is kept."""

    @functools.wraps(gallery)
    def files(*args):
        return [(save_image(image, folder), caption) for image, caption in gallery(*args)]

    return files


def as_sheet_file(handler, folder: Path):
    """A (sheet, index) handler returning (image file, index); its signature (the API's names) is kept."""

    @functools.wraps(handler)
    def sheet_file(*args):
        sheet, index = handler(*args)
        return save_image(sheet, folder), index

    return sheet_file


INTRO = """# ResNet-9 on CIFAR-10: what does it see?
Upload an image or click one of the CIFAR-10 test images below. The model sees every image at 32x32 pixels.
Grad-CAM highlights the regions that raised the score of a class (red: most), at the layer you choose.
{model}"""
CSS = """
/* Galleries as tall as their images (gradio reserves 450 px), each caption in full under its image. */
.fit-gallery .fixed-height { min-height: 0 !important; max-height: none !important; }
.fit-gallery .grid-container { grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr)) !important; }
.fit-gallery .thumbnail-item { height: auto !important; aspect-ratio: auto !important; flex-direction: column; }
.fit-gallery .thumbnail-item img { width: 100%; height: auto !important; aspect-ratio: 1 / 1; }
.fit-gallery .caption-label { position: static !important; max-width: none !important; width: auto !important;
  white-space: normal !important; overflow: visible !important; text-overflow: clip !important;
  text-align: center; line-height: 1.3; padding: 2px 4px !important; }
/* Phones and narrow windows: 3 columns, then 2; controls stack instead of clipping their labels. */
@media (max-width: 768px) { .fit-gallery .grid-container { grid-template-columns: repeat(3, minmax(0, 1fr)) !important; } }
@media (max-width: 480px) { .fit-gallery .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; } }
#show-gradcam, #show-misclassified, #misclassified-gradcam { min-width: min(200px, 100%) !important; }
#upload img { min-width: 128px; object-fit: contain !important; }
/* The heatmap's colour scale: a bar between its two ends, in words. */
.cam-scale { display: flex; align-items: center; gap: 8px; font-size: 0.9em; flex-wrap: wrap; }
.cam-bar { flex: 1 1 160px; min-width: 120px; height: 14px; border-radius: 3px; }
"""

SCALE_STOPS = 9


def colour_scale(stops: int = SCALE_STOPS) -> str:
    """The heatmap's legend: the very colour map the overlays use (gradcam.jet), from 0 to 1, in words."""
    colours = ", ".join(f"rgb({r}, {g}, {b}) {100 * i / (stops - 1):g}%"
                        for i, (r, g, b) in enumerate(jet(np.linspace(0.0, 1.0, stops)).tolist()))
    return ('<div class="cam-scale"><span>0: no part in the class score</span>'
            f'<div class="cam-bar" style="background: linear-gradient(to right, {colours});"></div>'
            "<span>1: raised it most (each image scaled to its own peak)</span></div>")


LAYER_LINE = "**What each layer shows:** " + " · ".join(LAYER_DESCRIPTIONS[n] for n in LAYERS)


def model_line(loaded: release.Release) -> str:
    """Which model answers, for visitors: its Hub page and the accuracy its card states, never a server path."""
    accuracy = "" if loaded.test_accuracy is None else f", {loaded.test_accuracy * 100:.2f} % test accuracy"
    if loaded.hub_id:
        return f"Model: [{loaded.hub_id}]({loaded.url}){accuracy} on CIFAR-10."
    return f"Model: the release bundled with this Space{accuracy} on CIFAR-10."


def layout(space: Space) -> dict[str, Any]:
    """Create the page's components, in reading order; returns them by name."""
    s, names, n_mis = space.settings, list(space.model.class_names), space.num_misclassified
    ui: dict[str, Any] = {}
    gr.Markdown(INTRO.format(model=model_line(space.release)))
    with gr.Row():
        with gr.Column():
            ui["image"] = gr.Image(type="filepath", image_mode=None, label="Your image", height=240,
                                   sources=["upload", "clipboard"], elem_id="upload")
            gr.Examples([[str(p)] for p in space.example_paths], inputs=ui["image"], label="Or click a CIFAR-10 test image",
                        examples_per_page=len(space.example_paths), api_visibility="private", elem_id="examples")
        with gr.Column():
            ui["top_k"] = gr.Slider(1, space.model.num_classes, s.default_top_k, step=1, label="Top classes",
                                    elem_id="top-k")
            ui["label"] = gr.Label(label="Prediction", elem_id="prediction")
    gr.Markdown("## Grad-CAM: where the model looks")
    with gr.Row():
        ui["show_cam"] = gr.Checkbox(True, label="Show Grad-CAM", elem_id="show-gradcam")
        ui["cam_count"] = gr.Slider(1, s.max_gradcam_images, s.default_gradcam_images, step=1, elem_id="gradcam-count",
                                    label="Number of Grad-CAM images", info="your image first, then the examples")
        ui["layer"] = gr.Dropdown([(LAYER_DESCRIPTIONS[n], n) for n in LAYERS], value=s.default_layer, label="Layer",
                                  elem_id="layer", min_width=280)
        ui["opacity"] = gr.Slider(0, 1, s.default_opacity, step=0.05, label="Heatmap opacity", elem_id="opacity")
    ui["cam_gallery"] = gr.Gallery(label="Grad-CAM", columns=5, format="jpeg", elem_id="gradcam-gallery",
                                   elem_classes="fit-gallery")
    gr.HTML(colour_scale(), elem_id="gradcam-scale")
    gr.Markdown(LAYER_LINE, elem_id="layer-line")
    gr.Markdown("## Why not ...? Your image explained for a class you pick, beside the predicted one")
    with gr.Row():
        ui["why_not"] = gr.Dropdown([("the runner-up (2nd most likely class)", RUNNER_UP), *names], value=RUNNER_UP,
                                    label="Explain your image as", scale=1, elem_id="why-not")
        ui["compare_gallery"] = gr.Gallery(label="Predicted class vs. your class", columns=2, format="jpeg", scale=1,
                                           elem_id="compare-gallery", elem_classes="fit-gallery")
    gr.Markdown("## Misclassified test images: the model's most confident mistakes")
    with gr.Row():
        ui["show_mis"] = gr.Checkbox(False, label="Show misclassified images", interactive=n_mis > 0,
                                     elem_id="show-misclassified")
        ui["mis_count"] = gr.Slider(1, max(n_mis, 1), min(s.default_misclassified_shown, max(n_mis, 1)), step=1,
                                    label=f"How many (of {n_mis})", elem_id="misclassified-count", min_width=200)
        ui["mis_cam"] = gr.Checkbox(False, label="Overlay Grad-CAM on them", elem_id="misclassified-gradcam")
    ui["mis_gallery"] = gr.Gallery(label=captions.MISTAKE_LEGEND, columns=5, format="jpeg", visible=False,
                                   elem_id="misclassified-gallery", elem_classes="fit-gallery")
    # The API's /misclassified answers one contact sheet and its index, never shown on the page: gradio_client
    # fetches every gallery image over a connection of its own, 100 of them took ~5 s (BENCHMARKS.md).
    ui["mis_sheet"] = gr.Image(type="filepath", format="jpeg", visible=False, label="Misclassified sheet")
    ui["mis_index"] = gr.JSON(visible=False, label="Misclassified index")
    return ui


API = {  # public endpoint -> (the page component of each argument, in the handler's order; output component(s))
    "classify": (("image", "top_k"), "label"),
    "gradcam": (("image", "cam_count", "layer", "opacity"), "cam_gallery"),
    "misclassified": (("mis_count", "mis_cam", "layer", "opacity"), ("mis_sheet", "mis_index")),
    "compare": (("image", "why_not", "layer", "opacity"), "compare_gallery"),
}
# The arguments' names, and whether an image may be left out, are the Service methods' own signatures (gradio's
# API page and clients take the names from them too): `endpoint_params` reads them, nothing repeats them.


def endpoint_params(handler, components: list[Any]) -> list[Param]:
    """The gate's description of one public endpoint: the handler's argument names, an image component's argument
    as a file (required unless the signature says `ImageInput | None`)."""
    arguments = list(inspect.signature(handler, eval_str=True).parameters.values())  # the annotations as types
    if len(arguments) != len(components):
        raise ValueError(f"{handler.__name__} takes {len(arguments)} arguments, its event has {len(components)}")
    return [Param(a.name, file=isinstance(c, gr.Image),
                  required=isinstance(c, gr.Image) and type(None) not in typing.get_args(a.annotation))
            for a, c in zip(arguments, components)]


def build_demo(space: Space) -> gr.Blocks:
    """The page and its API, each feature wired once (`wire`)."""
    with gr.Blocks(title="ResNet-9 CIFAR-10 explained") as demo:
        ui = layout(space)
        files = space.uploads.path / "gallery"  # inside gradio's cache folder: served, and swept with it
        handlers = {name: refusals_as_errors(getattr(space, name)) for name in API}
        handlers = {name: as_files(h, files) if name != "classify" else h for name, h in handlers.items()}
        wire(demo, space, ui, handlers, as_sheet_file(refusals_as_errors(space.misclassified_sheet), files))
    return demo


class LastRequests:
    """What the page remembers of each visitor session, the `size` most recent (session, key) pairs: the last
    inputs of each page event, to skip a request whose inputs have not changed since the last (gradio 6.31 fires a
    slider's change (and input) event twice for one number typed into its box, and neither trigger_mode nor the
    release event, which waits for the visitor to leave the box, does the job; tests/test_space_browser.py pins
    each on a bare gradio app), and a mark that classify refused the session's image."""

    def __init__(self, size: int = 4096) -> None:
        self.last: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self.size, self.lock = size, threading.Lock()

    def remember(self, session: str, key: str, value: Any) -> Any:
        """Remember `value` for this session's `key`; returns what was remembered before (None: nothing)."""
        with self.lock:
            before = self.last.get((session, key))
            self.last[(session, key)] = value
            self.last.move_to_end((session, key))
            while len(self.last) > self.size:
                self.last.popitem(last=False)
        return before

    def forget(self, session: str, key: str) -> Any:
        """What was remembered for this session's `key` (None: nothing); it is not any more."""
        with self.lock:
            return self.last.pop((session, key), None)

    def repeated(self, session: str, event: str, *inputs: Any) -> bool:
        """Whether `inputs` are this session's last inputs of `event`; remembers them either way."""
        return self.remember(session, event, inputs) == inputs


def session(request: gr.Request) -> str:
    """The visitor's session ('' for a request without one)."""
    return getattr(request, "session_hash", None) or ""


def from_page(event: gr.EventData) -> bool:
    """Whether the page asked: its events name the component that triggered them; an API caller's call names none
    (gradio_client, /call, /run and /queue/join without a trigger_id), which is also how gradio's own run history
    tells the two apart (gradio.route_utils._is_automatic_run). The page's load event names no component either:
    its one call (the examples' Grad-CAM at the defaults) is answered as an API caller's would be, the same
    gallery. tests/test_gradio_gaps.py pins the difference on a bare gradio app."""
    return getattr(event, "target", None) is not None


def kept(message: str) -> None:
    """A refused setting on the page: say so once, as a warning, and change nothing the visitor sees."""
    gr.Warning(message)


def one_event(name: str, api, page, last: LastRequests):
    """The handler of a feature's one event, the page's and the API's: an API caller gets `api` (every call
    answered, every refusal raised as an error); the page gets `page` (a refusal is one warning that keeps or
    clears what the page shows), its repeated inputs skipped (LastRequests).

    The arguments are `api`'s own, by its signature (the API's names: the Service method's), then the page's own
    State inputs (`page`'s further arguments but the last, the request: gradio keeps a State out of the API and
    hands an API caller's call the session's value), then the event and the request gradio adds."""
    arguments = list(inspect.signature(api).parameters.values())
    page_only = list(inspect.signature(page).parameters.values())[len(arguments):-1]

    def handler(*args):
        *inputs, event, request = args
        if not from_page(event):
            return api(*inputs[:len(arguments)])
        if last.repeated(session(request), name, *inputs):
            return gr.skip()
        return page(*inputs, request)

    handler.api = api  # type: ignore[attr-defined]  # the API's side, for the gate's description of the endpoint
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    handler.__name__ = handler.__qualname__ = name
    handler.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [p.replace(kind=positional, annotation=inspect.Parameter.empty) for p in arguments + page_only]
        + [inspect.Parameter("event", positional, annotation=gr.EventData),
           inspect.Parameter("request", positional, annotation=gr.Request)])
    handler.__annotations__ = {"event": gr.EventData, "request": gr.Request}  # what gradio reads to fill them in
    return handler


def wire(demo: gr.Blocks, space: Space, ui: dict[str, Any], handlers: dict[str, Any], sheet) -> None:
    """Every event of the page and the API. Each feature is one event: the page's components trigger it and API
    callers call it by its name (one_event tells them apart). On the page an empty image is no error; a bad upload
    is reported once, as a warning, and cleared from the page; a setting out of range (a number typed past a
    slider's end) is reported once and leaves the page as it was; repeated inputs are skipped; Grad-CAM is not
    computed while hidden. The API refuses each of them with an error (a warning would reach an API caller as an
    answer, and a raised error gives the page no output to clear: tests/test_gradio_gaps.py pins both).

    The misclassified set is the one feature with two answers: the page shows a gallery, /misclassified answers
    one contact sheet and its index (gradio_client fetches every gallery image over a connection of its own: 100
    of them took ~2.3 s, BENCHMARKS.md), so it has a page event and a public one with no trigger on the page."""
    last = LastRequests()
    refused = "refused image"  # LastRequests' mark for the image classify refused, not an event's name

    def shared_settings(layer, opacity) -> str | None:
        """What is wrong with the layer and opacity every Grad-CAM event shares (None: nothing)."""
        try:
            space.overlay_settings(layer, opacity)
        except ValueError as err:
            return first_line(err, 400)
        return None

    def classify(image, top_k, request: gr.Request):
        if image is None:
            return None
        try:
            return handlers["classify"](image, top_k)
        except ImageRefused as err:  # say it once; the next step takes the unreadable image off the page
            gr.Warning(err.message)
            last.remember(session(request), refused, True)
            return None
        except gr.Error as err:  # top-k out of range: the image and its prediction stay
            kept(err.message)
            return gr.skip()

    def clear_refused(request: gr.Request):
        """The page's next step after classify: the image classify refused, off the page. Its own step because an
        event hands the image back only as an output, and an output of the page's alone (a State) would reach the
        answers of /call/classify as one more value (tests/test_gradio_gaps.py)."""
        return None if last.forget(session(request), refused) else gr.skip()

    def gradcam(image, count, layer, opacity, shown, request: gr.Request):
        # The shared settings are reported here, once, whichever galleries are shown (the others stay silent);
        # checked by the Service's own rules, also when the gallery is hidden.
        try:
            space.gradcam_settings(count, layer, opacity)
        except ValueError as err:
            kept(first_line(err, 400))
            return gr.skip()
        if not shown:
            return gr.update(visible=False)
        try:
            return gr.update(visible=True, value=handlers["gradcam"](image, count, layer, opacity))
        except ImageRefused:  # the classifier reports the bad upload; the examples still explain
            return gr.update(visible=True, value=handlers["gradcam"](None, count, layer, opacity))

    def compare(image, class_name, layer, opacity, request: gr.Request):
        if shared_settings(layer, opacity) is not None:  # gradcam says what is wrong
            return gr.skip()
        try:
            return None if image is None else handlers["compare"](image, class_name, layer, opacity)
        except ImageRefused:
            return None
        except gr.Error as err:
            kept(err.message)
            return gr.skip()

    def page_misclassified(show, count, with_cam, layer, opacity, request: gr.Request):
        if last.repeated(session(request), "misclassified", show, count, with_cam, layer, opacity):
            return gr.skip()
        if not show or space.num_misclassified == 0:
            return gr.update(visible=False)
        if shared_settings(layer, opacity) is not None:  # gradcam says what is wrong
            return gr.skip()
        try:
            return gr.update(visible=True, value=handlers["misclassified"](count, with_cam, layer, opacity))
        except gr.Error as err:  # a count past the set: the gallery stays as it was
            kept(err.message)
            return gr.skip()

    def shown(show):
        """Whether Grad-CAM is shown, into the page's State: its change asks for the gallery when shown again."""
        return show

    def feature(name: str, triggers: list, page=None, *page_state):
        """The public event `name`: its arguments and output(s) as API names them, then the page's State; `page`:
        the page's side (one_event), None for an event the page does not trigger."""
        inputs, output = API[name]
        outputs = [ui[c] for c in output] if isinstance(output, tuple) else ui[output]
        handler = one_event(name, handlers[name], page, last) if page else sheet
        # preprocess=False: the app itself checks that an image is an upload of this Space, then decodes it.
        return gr.on(triggers, handler, [*(ui[c] for c in inputs), *page_state], outputs, api_name=name,
                     api_visibility="public", trigger_mode="always_last", **model)

    model = dict(preprocess=False, concurrency_limit=space.settings.requests, concurrency_id="model")
    private = dict(api_visibility="private")  # named after their handlers, never callable by name (the gate)
    cam_shown = gr.State(True)  # the page's own: gradio keeps a State out of the API
    explained = [ui["layer"].change, ui["opacity"].change]
    feature("classify", [ui["image"].change, ui["top_k"].change], classify).then(
        clear_refused, None, ui["image"], queue=False, **private)
    feature("gradcam", [demo.load, ui["image"].change, ui["cam_count"].change, *explained, cam_shown.change],
            gradcam, cam_shown)
    feature("misclassified", [])  # the API's contact sheet; the page's gallery is page_misclassified's
    feature("compare", [ui["image"].change, ui["why_not"].change, *explained], compare)
    # Through the queue: gradio 6.31 fires a State's change only for a queued event's answer (its changed_state_ids).
    ui["show_cam"].change(shown, ui["show_cam"], cam_shown, **private)
    gr.on([ui["show_mis"].change, ui["mis_count"].change, ui["mis_cam"].change, *explained], page_misclassified,
          [ui[k] for k in ("show_mis", "mis_count", "mis_cam", "layer", "opacity")], ui["mis_gallery"],
          trigger_mode="always_last", **model, **private)


def api_gate(demo: gr.Blocks, space: Space) -> Middleware:
    """The HTTP gate in front of gradio: every event's arguments, images only as uploads of this Space."""

    events = demo.get_config_file()["dependencies"]

    def inputs(event: dict) -> list[Any]:
        return [demo.blocks[i] for i in event["inputs"]]

    def api_handler(event: dict):
        fn = demo.fns[event["id"]].fn
        return getattr(fn, "api", fn)  # one_event's API side

    # A public event's arguments are its API handler's, less the page's own State inputs.
    by_name = {event["api_name"]: event for event in events}
    endpoints = {name: endpoint_params(api_handler(by_name[name]),
                                       [c for c in inputs(by_name[name]) if not isinstance(c, gr.State)])
                 for name in API}

    def param(component: gr.components.Component) -> Param:
        name = str(component.label or type(component).__name__)
        if isinstance(component, gr.Dataset):  # the examples: an index into them
            return Param(name, choices=len(component.raw_samples))
        return Param(name, file=isinstance(component, gr.Image))  # a State: gradio uses the session's, whatever is sent

    # Every event by the fn_index a client sends, read from the config gradio hands its clients (the page's events
    # and gradio_client's calls arrive through /queue/join): the public ones by their API names, then any State of
    # the page's; the page's own events by their components.
    functions = {}
    for event in events:
        params = [param(c) for c in inputs(event)]
        named = endpoints.get(event["api_name"], [])
        functions[event["id"]] = [*named, *params[len(named):]]
    return Middleware(ApiGate, endpoints=endpoints, functions=functions, uploads=space.uploads)


def model_source() -> tuple[str, str | None]:
    """(source, revision) of the release to serve: MODEL_ID (and MODEL_REVISION) when set, else what space.json
    names (a built Space), else the bundled model/ folder; a clear error when there is none."""
    source = os.environ.get("MODEL_ID", "").strip()
    if source:
        return source, os.environ.get("MODEL_REVISION") or None
    config = HERE / "space.json"
    if config.is_file():
        named = json.loads(config.read_text())
        model = named.get("model")
        return (str(HERE / model) if (HERE / model).is_dir() else model), named.get("revision")
    if not BUNDLED_MODEL.is_dir():
        raise SystemExit(f"no model to serve: set MODEL_ID to a Hub repo id or a release folder, or put a release "
                         f"({', '.join(release.REQUIRED_FILES)}) in {BUNDLED_MODEL}")
    return str(BUNDLED_MODEL), None


def main() -> None:
    """Load the release and serve the Space on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (gradio reads both)."""
    import torch

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("space", "resnet_cifar"):
        logging.getLogger(name).setLevel(os.environ.get("SPACE_LOG_LEVEL", "INFO"))
    torch.set_num_threads(int(os.environ.get("SPACE_TORCH_THREADS", SETTINGS.torch_threads)))
    return_freed_memory()
    budget = int(os.environ.get("SPACE_UPLOAD_BUDGET_MB") or SETTINGS.upload_budget_mb)
    uploads = UploadFolder(os.environ.get("SPACE_TEMP_DIR") or None, max_bytes=budget << 20)
    os.environ["GRADIO_TEMP_DIR"] = str(uploads.path)  # before any component exists: they read it at creation
    uploads.start()
    source, revision = model_source()
    try:
        loaded = release.read(source, revision=revision)
    except NETWORK_ERRORS as err:  # a missing or malformed release, an unreachable Hub: one line, no traceback
        uploads.close()
        raise SystemExit(f"cannot serve {source}: {first_line(err, 500)}") from None
    space = Space(loaded, uploads)
    log.info("serving %s (%d misclassified images, uploads in %s, removed %d stale folders)", source,
             space.num_misclassified, uploads.path, len(uploads.removed_stale))
    demo = build_demo(space)
    demo.queue(max_size=SETTINGS.queue_size, default_concurrency_limit=SETTINGS.requests)
    try:
        # allowed_paths stays empty: the server hands out only its own cache folder.
        demo.launch(max_file_size=SETTINGS.max_file_size, show_error=False, css=CSS,
                    app_kwargs={"middleware": [api_gate(demo, space)]})
    finally:
        uploads.close()


if __name__ == "__main__":
    main()
