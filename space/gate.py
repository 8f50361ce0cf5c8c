"""The Space's API gate: ASGI middleware that refuses a malformed call before gradio sees it, with one line that
says what to send. Code of ours only because gradio 6.31 falls short, each gap pinned by tests/test_gradio_gaps.py
(a test there fails the day gradio mends one): a refused upload, a wrong or missing argument and an out-of-range
example index are answered `{"error": null}` or not at all, and an unknown endpoint is a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from resnet_cifar.checks import short
from uploads import UPLOAD_HINT, UploadFolder, is_file_payload

log = logging.getLogger("space.gate")


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
    fn_index (the page's private events too: they arrive through /queue/join) to its parameters. A call by fn_index
    that names the component that triggered it (`trigger_id`: the page's) may leave a required image out: the
    page's side of the event answers an empty image with nothing; a file it sends is checked all the same.

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
        # The page's calls name the component that triggered them; on the page an image may be left out (its
        # handler answers an empty image with nothing; an API caller's call with no trigger must send one).
        page = by_index and request.get("trigger_id") is not None
        for param, value in zip(params, data):
            refusal = self._check_value(param, value, page)
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

    def _check_value(self, param: Param, value: Any, page: bool = False) -> tuple[int, str, str | None] | None:
        """An image argument must be an upload of this server (or None where none is required, or on the page); an
        index must be one of its choices."""
        if param.choices is not None:
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < param.choices:
                return None
            return (422, f"send the number of one of the {param.choices} choices, from 0 to {param.choices - 1}, "
                         f"got {short(value)}", param.name)
        if not param.file or (value is None and (page or not param.required)):
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
