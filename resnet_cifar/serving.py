"""What a server of a release needs beyond the model: thread-safe model work, an upload folder it owns and
keeps bounded, and a gate that refuses malformed API calls before the web framework sees them.

Written for the Space (a gradio app) but imports no web framework: the gate is plain ASGI middleware that knows
gradio's URL scheme and its file payload ({"path": ..., "meta": {"_type": "gradio.FileData"}}).
"""

from __future__ import annotations

import asyncio
import copy
import ctypes
import hashlib
import io
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from .gradcam import explain
from .checks import short
from .model import ResNet9
from .preprocess import load_image

log = logging.getLogger(__name__)
T = TypeVar("T")
FILE_META = {"_type": "gradio.FileData"}
UPLOAD_HINT = ('send the image as a file uploaded to this server: POST it to /gradio_api/upload, then pass '
               '{"path": <the path that returns>, "meta": {"_type": "gradio.FileData"}} '
               '(gradio_client: handle_file("cat.png"))')


class UploadRefused(ValueError):
    """A request named a file that is not an upload of this server; every such refusal reads the same."""

    def __init__(self) -> None:
        super().__init__(f"not an uploaded image; {UPLOAD_HINT}")


# ---------------------------------------------------------------- model work


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


# ---------------------------------------------------------------- the upload folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class UploadFolder:
    """A temporary folder of this server process for uploads and generated files, kept bounded.

    It lives under `root` as a folder named by the process id. At start, the folders of processes that are
    gone (a crash, a restart) are removed with everything in them, aborted uploads included; while serving,
    `sweep()` (run every `sweep_every_s` by `start()`) deletes files older than `max_age_s`, then the oldest
    until at most `max_bytes` remain. ApiGate also sweeps around every upload request: before it, to make room
    for the bytes it announces, and after it, whether it finished or was cut off, so the folder stays within
    `max_bytes` between scheduled sweeps too.
    """

    def __init__(self, root: str | Path | None = None, max_age_s: float = 3600, max_bytes: int = 1 << 30,
                 sweep_every_s: float = 600) -> None:
        self.root = Path(root or Path(tempfile.gettempdir()) / "resnet-cifar-space").resolve()
        self.max_age_s, self.max_bytes, self.sweep_every_s = max_age_s, max_bytes, sweep_every_s
        self.root.mkdir(parents=True, exist_ok=True)
        self.removed_stale = self._remove_stale()
        self.path = self.root / str(os.getpid())
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(mode=0o700)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the sweeper thread and the gate's sweeps around uploads

    def _remove_stale(self) -> list[str]:
        stale = [p for p in self.root.iterdir() if p.is_dir() and p.name.isdigit() and not _alive(int(p.name))]
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        return [p.name for p in stale]

    def sweep(self, now: float | None = None, reserve: int = 0) -> int:
        """Delete files past their age, then the oldest until at most `max_bytes - reserve` remain (room for an
        upload of `reserve` bytes); returns how many went."""
        with self._lock:
            return self._sweep(time.time() if now is None else now, max(0, reserve))

    def _sweep(self, now: float, reserve: int) -> int:
        entries = []
        for dirpath, _, names in os.walk(self.path):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    info = os.lstat(path)
                except FileNotFoundError:
                    continue
                entries.append((info.st_mtime, info.st_size, path))
        entries.sort()
        total, removed = sum(size for _, size, _ in entries), 0
        for mtime, size, path in entries:
            if now - mtime <= self.max_age_s and total + reserve <= self.max_bytes:
                break
            try:
                os.remove(path)
                removed += 1
            except FileNotFoundError:
                pass
            total -= size
        for dirpath, dirnames, names in os.walk(self.path, topdown=False):
            if dirpath != str(self.path) and not dirnames and not names:
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
        return removed

    def start(self) -> None:
        """Sweep on a schedule, in a daemon thread, until close()."""

        def loop() -> None:
            while not self._stop.wait(self.sweep_every_s):
                try:
                    removed = self.sweep()
                    if removed:
                        log.info("swept %d old files from %s", removed, self.path)
                except Exception:  # noqa: BLE001 - the sweeper must outlive a transient error
                    log.exception("sweeping %s failed", self.path)

        threading.Thread(target=loop, name="upload-sweeper", daemon=True).start()

    def close(self) -> None:
        """Stop sweeping and remove the folder."""
        self._stop.set()
        shutil.rmtree(self.path, ignore_errors=True)

    def contains(self, path: str) -> bool:
        """Whether `path` is an absolute path to a regular file inside this folder, reached without a symbolic link."""
        if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
            return False  # gradio hands out absolute paths; a relative one would depend on the working directory
        absolute = os.path.normpath(path)
        if os.path.realpath(absolute) != absolute or os.path.commonpath([absolute, str(self.path)]) != str(self.path):
            return False
        try:
            return os.path.isfile(absolute) and not os.path.islink(absolute)
        except (OSError, ValueError):
            return False

    def check(self, payload: Any) -> str:
        """The local path of an uploaded file payload, or UploadRefused: the same words whatever was sent."""
        if not is_file_payload(payload) or not self.contains(payload["path"]):
            raise UploadRefused()
        return payload["path"]


def is_file_payload(value: Any) -> bool:
    """A gradio file payload: a dict with a string path and gradio's FileData marker."""
    return isinstance(value, dict) and value.get("meta") == FILE_META and isinstance(value.get("path"), str)


# ---------------------------------------------------------------- the API gate


@dataclass(frozen=True)
class Param:
    """One argument of an endpoint: its name, whether it is an image file, and whether that image is required."""

    name: str
    file: bool = False
    required: bool = False
    choices: int | None = None  # an index into this many choices (a gallery of examples): 0 to choices - 1


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class ApiGate:
    """ASGI middleware in front of a gradio app: a call of an unknown endpoint, with the wrong number of
    arguments, or with a file argument that is not an upload of this server is answered at once with one line
    that says what to send (gradio would answer `{"error": null}` or a 500).

    `endpoints` maps the public API names (without "/") to their parameters; `functions` maps every event's
    fn_index (the page's private events too: they arrive through /queue/join) to its parameters.

    What gradio 6.31 does with these calls by itself is pinned by tests/test_gradio_gaps.py: a file payload
    without its FileData marker skips gradio's upload check and the component opens any server file; a refused
    file, a wrong argument or a missing one is answered `{"error": null}`; an unknown endpoint is a 500; an
    example index out of range fails without a message and -1 is taken. A test there fails when gradio mends one.
    """

    def __init__(self, app: ASGIApp, endpoints: Mapping[str, Sequence[Param]],
                 functions: Mapping[int, Sequence[Param]], uploads: UploadFolder, prefix: str = "/gradio_api",
                 max_body: int = 256 * 1024) -> None:
        self.app, self.endpoints, self.functions, self.uploads = app, endpoints, functions, uploads
        self.prefix, self.max_body = prefix, max_body

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope.get("type") == "http" and scope.get("method") == "POST" and \
                scope.get("path", "").rstrip("/") == f"{self.prefix}/upload":
            await self._upload(scope, receive, send)
            return
        route = self._route(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        body, too_big = await self._body(receive)
        if too_big:
            await self._answer(send, 413, f"request body over {self.max_body:,} bytes; send the arguments as JSON "
                                          "and images as uploads")
            return
        refusal = self._refusal(route, body)
        if refusal is not None:
            log.info("refused %s %s: %s", route[0], route[1] or "", refusal[1][:200])
            await self._answer(send, *refusal)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _upload(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                      send: Callable[[dict], Awaitable[None]]) -> None:
        """An upload: room made for its announced size first, the budget enforced again once it is over (a
        finished upload, or the partial file of one cut off)."""
        headers = dict(scope.get("headers") or [])
        announced = headers.get(b"content-length", b"")
        reserve = int(announced) if announced.isdigit() else 0
        await asyncio.to_thread(self.uploads.sweep, None, min(reserve, self.uploads.max_bytes))
        try:
            await self.app(scope, receive, send)
        finally:
            await asyncio.to_thread(self.uploads.sweep)

    def _route(self, scope: dict) -> tuple[str, str] | None:
        """(kind, endpoint name) of a request this gate checks, None for everything else.

        Kinds: "call" (/call/NAME: {"data": [...]}), "v2" (/call/v2/NAME: {argument: value}), "run" (/run/NAME and
        /api/NAME: by name, or by fn_index when the body has one) and "join" (/queue/join, by fn_index).
        """
        if scope.get("type") != "http" or scope.get("method") != "POST":
            return None
        path = scope.get("path", "").rstrip("/")
        for kind, start in (("v2", "/call/v2/"), ("call", "/call/"), ("run", "/run/"), ("run", "/api/")):
            if path.startswith(self.prefix + start):
                return kind, path[len(self.prefix + start):]
        if path == f"{self.prefix}/queue/join":
            return "join", ""
        return None
    async def _body(self, receive: Callable[[], Awaitable[dict]]) -> tuple[bytes, bool]:
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", True
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks), False

    def _refusal(self, route: tuple[str, str], body: bytes) -> tuple[int, str, str | None] | None:
        """(status, message, parameter) for a call to refuse; None to let it through."""
        kind, name = route
        api = ", ".join(f"/{n}" for n in self.endpoints)
        try:
            request = json.loads(body or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError):
            request = None
        except RecursionError:  # gradio's own parse would answer 500
            return 422, ('request body nested too deeply; send a JSON object {"data": [...]} with the endpoint\'s '
                         "arguments in order"), None
        by_index = kind == "join" or (kind == "run" and isinstance(request, dict) and "fn_index" in request)
        if not by_index and name not in self.endpoints:
            shown = name[:40] + ("..." if len(name) > 40 else "")
            return 404, f"unknown endpoint /{shown}; this server's endpoints are {api}", None
        if kind == "v2":
            return self._check_named(self.endpoints[name], request)
        if not isinstance(request, dict) or not isinstance(request.get("data"), list):
            return 422, 'send a JSON object {"data": [...]} with the endpoint\'s arguments in order', None
        if by_index:
            index = request.get("fn_index")
            if not isinstance(index, int) or isinstance(index, bool) or index not in self.functions:
                return 404, f"unknown fn_index; this server's API endpoints are {api}", None
            params = self.functions[index]
        else:
            params = self.endpoints[name]
        data = request["data"]
        if len(data) != len(params):
            names = ", ".join(p.name for p in params)
            return 422, f"send exactly {len(params)} arguments ({names}), got {len(data)}", None
        for param, value in zip(params, data):
            refusal = self._check_value(param, value)
            if refusal is not None:
                return refusal
        return None

    def _check_named(self, params: Sequence[Param], request: Any) -> tuple[int, str, str | None] | None:
        """/call/v2: a JSON object of arguments by name."""
        names = [p.name for p in params]
        if not isinstance(request, dict) or set(request) - set(names) - {"oauth_token"} or \
                not set(names) <= set(request):
            return 422, f"send a JSON object with exactly the arguments {', '.join(names)}", None
        for param in params:
            refusal = self._check_value(param, request[param.name])
            if refusal is not None:
                return refusal
        return None

    def _check_value(self, param: Param, value: Any) -> tuple[int, str, str | None] | None:
        """An image argument must be an upload of this server (or None where none is required); an index must be
        one of its choices."""
        if param.choices is not None:
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < param.choices:
                return None
            return (422, f"send the number of one of the {param.choices} choices, from 0 to {param.choices - 1}, "
                         f"got {short(value)}", param.name)
        if not param.file or (value is None and not param.required):
            return None
        if is_file_payload(value) and self.uploads.contains(value["path"]):
            return None
        problem = "no image given" if value is None else "not an uploaded image"
        return 422, f"{problem}; {UPLOAD_HINT}", param.name

    async def _answer(self, send: Callable[[dict], Awaitable[None]], status: int, message: str,
                      parameter: str | None = None) -> None:
        # gradio_client raises ValidationError("- <parameter>: <message>") from `detail`; others read `error`.
        detail = [{"__type__": "validate", "is_valid": False, "message": message,
                   "parameter_name": parameter or "request"}]
        body = json.dumps({"error": f"{parameter}: {message}" if parameter else message, "detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
