"""The Space's upload folder (space/uploads.py: stale folders, sweeping, which paths count as uploads) and its API
gate (space/gate.py) as plain ASGI, without gradio."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time

import pytest
from conftest import EXAMPLES
from gate import ApiGate, Param
from uploads import FILE_META, UPLOAD_HINT, UploadFolder, UploadRefused

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def uploads(tmp_path):
    folder = UploadFolder(tmp_path / "space-tmp")
    yield folder
    folder.close()


def upload(folder: UploadFolder, name: str = "cat.png", data: bytes | None = None) -> str:
    """A file where gradio puts an upload: a random subfolder of the upload folder."""
    path = folder.path / "1f3a" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(EXAMPLES[0].read_bytes() if data is None else data)
    return str(path)


# --- the upload folder --------------------------------------------------------------------------------------------


def test_folders_of_dead_processes_are_removed_at_start(tmp_path):
    root = tmp_path / "space-tmp"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = root / str(dead.pid) / "abc" / "aborted-upload"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"\0" * 1_000_000)  # what an aborted upload leaves behind
    alive = root / str(os.getppid())  # a process that is running: another Space on the same machine
    alive.mkdir()
    folder = UploadFolder(root)
    assert not orphan.parent.parent.exists() and alive.exists()
    assert folder.removed_stale == [str(dead.pid)]
    assert folder.path == (root / str(os.getpid())).resolve() and folder.path.is_dir()
    folder.close()
    assert not folder.path.exists()


def test_sweep_removes_old_files_then_the_oldest_over_the_budget(tmp_path):
    folder = UploadFolder(tmp_path / "t", max_age_s=3600, max_bytes=2500)
    now = time.time()
    paths = []
    for i, age in enumerate([7200, 1800, 900, 60]):  # one past its age, three within
        path = folder.path / f"d{i}" / f"f{i}"
        path.parent.mkdir()
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - age, now - age))
        paths.append(path)
    assert folder.sweep(now) == 2  # the 2-hour-old file, then the oldest until 2,500 bytes remain
    assert [p.exists() for p in paths] == [False, False, True, True]
    assert not (folder.path / "d0").exists(), "emptied folders go too"
    folder.close()


def test_the_sweeper_runs_on_its_schedule(tmp_path):
    folder = UploadFolder(tmp_path / "t", max_age_s=0, sweep_every_s=0.05)
    old = folder.path / "old"
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 10, time.time() - 10))
    folder.start()
    deadline = time.monotonic() + 10
    while old.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    folder.close()
    assert not old.exists()


def test_only_regular_files_inside_the_folder_count_as_uploads(uploads, tmp_path):
    good = upload(uploads)
    assert uploads.check({"path": good, "meta": FILE_META}) == good
    outside = tmp_path / "outside.png"
    outside.write_bytes(EXAMPLES[0].read_bytes())
    link = uploads.path / "1f3a" / "link.png"
    os.symlink(outside, link)
    os.symlink("/etc", uploads.path / "etc")
    relative = os.path.relpath(good)
    refused = [
        {"path": "/etc/passwd", "meta": FILE_META}, {"path": "/etc/nonexistent", "meta": FILE_META},
        {"path": "/proc/self/environ", "meta": FILE_META}, {"path": str(outside), "meta": FILE_META},
        {"path": str(link), "meta": FILE_META}, {"path": str(uploads.path / "etc" / "passwd"), "meta": FILE_META},
        {"path": str(uploads.path / "1f3a" / ".." / ".." / ".." / "outside.png"), "meta": FILE_META},
        {"path": str(uploads.path / "1f3a"), "meta": FILE_META}, {"path": str(uploads.path / "nope.png"), "meta": FILE_META},
        {"path": good}, {"path": good, "meta": None}, {"path": good, "meta": {"_type": "other"}},
        good, {"path": relative, "meta": FILE_META}, 5, [good], None, {"path": 3, "meta": FILE_META},
        {"path": good + "\0", "meta": FILE_META},
    ]
    messages = set()
    for payload in refused:
        with pytest.raises(UploadRefused) as err:
            uploads.check(payload)
        messages.add(str(err.value))
    assert messages == {f"not an uploaded image; {UPLOAD_HINT}"}, "every refusal reads the same"


# --- the API gate ---------------------------------------------------------------------------------------------------


ENDPOINTS = {"classify": [Param("image", file=True, required=True), Param("top_k")],
             "gradcam": [Param("image_or_none", file=True), Param("count")]}
FUNCTIONS = {0: [Param("index")], 1: ENDPOINTS["classify"], 2: [Param("Your image", file=True), Param("k")],
             3: [Param("Dataset", choices=10)]}
DEEP = b'{"data": [' + b"[" * 5000 + b"]" * 5000 + b"], \"fn_index\": 0}"


def asgi_post(gate: ApiGate, path: str, body: bytes) -> tuple[int, dict | None, list[bytes]]:
    """POST `body` to `path` through the gate; returns (status, JSON answer, what reached the app)."""
    reached: list[bytes] = []
    gate.app = app_recording(reached)
    sent: list[dict] = []
    chunks = [body[:7], body[7:]]

    async def receive() -> dict:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path}
    asyncio.run(gate(scope, receive, send))
    status = sent[0]["status"]
    answer = json.loads(sent[1]["body"]) if sent[1].get("body") else None
    return status, answer, reached


def app_recording(reached: list[bytes]):
    async def app(scope, receive, send):
        message = await receive()
        reached.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
    return app


@pytest.fixture
def gate(uploads):
    return ApiGate(app_recording([]), ENDPOINTS, FUNCTIONS, uploads)


def body(*data, **extra) -> bytes:
    return json.dumps({"data": list(data), **extra}).encode()


def test_good_calls_reach_the_app_whole(gate, uploads):
    good = {"path": upload(uploads), "meta": FILE_META}
    for path, payload in [("/gradio_api/call/classify", body(good, 3)), ("/gradio_api/call/gradcam", body(None, 2)),
                          ("/gradio_api/queue/join", body(good, 3, fn_index=1, session_hash="s")),
                          # The page's call of a public event (it names its trigger): an image may be left out.
                          ("/gradio_api/queue/join", body(None, 3, fn_index=1, session_hash="s", trigger_id=7)),
                          ("/gradio_api/queue/join", body(None, 3, fn_index=2, session_hash="s")),
                          ("/gradio_api/run/classify", body(good, 3)),
                          ("/gradio_api/run/predict", body(7, fn_index=0, session_hash="s")),
                          ("/gradio_api/queue/join", body(0, fn_index=3, session_hash="s")),
                          ("/gradio_api/queue/join", body(9, fn_index=3, session_hash="s")),
                          ("/gradio_api/api/classify", body(good, 3)),
                          ("/gradio_api/call/v2/classify", json.dumps({"image": good, "top_k": 3}).encode()),
                          ("/gradio_api/call/v2/gradcam", json.dumps({"image_or_none": None, "count": 3}).encode())]:
        status, _, reached = asgi_post(gate, path, payload)
        assert status == 200 and reached == [payload], path


@pytest.mark.parametrize("path, payload, status, words", [
    ("/gradio_api/call/nope", body(1), 404, "unknown endpoint /nope; this server's endpoints are /classify, /gradcam"),
    ("/gradio_api/call/page_classify", body(None, 3), 404, "unknown endpoint /page_classify"),
    ("/gradio_api/call/" + "x" * 500, body(1), 404, "x{37}\\.\\.\\.;"),
    ("/gradio_api/call/classify", b"not json", 422, 'send a JSON object {"data": \\[...\\]}'),
    ("/gradio_api/call/classify", b"{}", 422, "send a JSON object"),
    ("/gradio_api/call/classify", body(None), 422, r"send exactly 2 arguments \(image, top_k\), got 1"),
    ("/gradio_api/call/classify", body(None, 3), 422, "image: no image given; send the image as a file uploaded"),
    ("/gradio_api/call/classify", body("/etc/passwd", 3), 422, "image: not an uploaded image"),
    ("/gradio_api/call/classify", body(5, 3), 422, "image: not an uploaded image"),
    ("/gradio_api/call/classify", body([1], 3), 422, "image: not an uploaded image"),
    ("/gradio_api/call/classify", body({"path": "/etc/passwd"}, 3), 422, "image: not an uploaded image"),
    ("/gradio_api/call/classify", body({"path": "/etc/passwd", "meta": None}, 3), 422, "not an uploaded image"),
    ("/gradio_api/call/classify", body({"path": "/etc/passwd", "meta": FILE_META}, 3), 422, "not an uploaded image"),
    ("/gradio_api/call/gradcam", body({"path": "space/examples/0000_cat.png"}, 1), 422,
     "image_or_none: not an uploaded image"),
    ("/gradio_api/queue/join", body(None, 3, fn_index=99), 404, "unknown fn_index"),
    ("/gradio_api/queue/join", body(None, 3, fn_index=1, session_hash="s"), 422, "image: no image given; send the"),
    ("/gradio_api/queue/join", body({"path": "/etc/passwd", "meta": FILE_META}, 3, fn_index=1, session_hash="s",
                                    trigger_id=7), 422, "image: not an uploaded image"),
    ("/gradio_api/queue/join", body(None, 3), 404, "unknown fn_index"),
    ("/gradio_api/queue/join", body({"path": "/etc/passwd", "meta": FILE_META}, 3, fn_index=2), 422,
     "Your image: not an uploaded image"),
    ("/gradio_api/run/predict", body({"path": "/etc/passwd"}, 3, fn_index=1), 422, "image: not an uploaded image"),
    ("/gradio_api/run/predict", body(1), 404, "unknown endpoint /predict"),
    ("/gradio_api/api/nope", body(1), 404, "unknown endpoint /nope"),
    ("/gradio_api/call/v2/classify", json.dumps({"image": {"path": "/etc/passwd"}, "top_k": 3}).encode(), 422,
     "image: not an uploaded image"),
    ("/gradio_api/call/v2/classify", json.dumps({"top_k": 3}).encode(), 422,
     "send a JSON object with exactly the arguments image, top_k"),
    ("/gradio_api/call/v2/nope", b"{}", 404, "unknown endpoint /nope"),
    # The page's example gallery: an index into its 10 examples, nothing else (gradio answered 500, or the last
    # example for -1).
    *[("/gradio_api/queue/join", body(bad, fn_index=3, session_hash="s"), 422,
       r"Dataset: send the number of one of the 10 choices, from 0 to 9, got " + re.escape(repr(bad)))
      for bad in (10, -1, "3", None, True, 2.0, [1])],
    ("/gradio_api/queue/join", DEEP, 422, "request body nested too deeply; send a JSON object"),
    ("/gradio_api/call/classify", b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}", 422, "nested too deeply"),
])
def test_bad_calls_are_refused_in_one_line_before_the_app(gate, path, payload, status, words):
    got, answer, reached = asgi_post(gate, path, payload)
    assert got == status and reached == []
    assert re.search(words, answer["error"]), answer
    assert "\n" not in answer["error"] and len(answer["error"]) < 400
    assert answer["detail"][0]["__type__"] == "validate" and answer["detail"][0]["is_valid"] is False


def test_an_oversized_body_is_refused(gate):
    status, answer, reached = asgi_post(gate, "/gradio_api/call/classify", b"x" * (300 * 1024))
    assert status == 413 and reached == [] and "send the arguments as JSON and images as uploads" in answer["error"]


def test_other_requests_pass_untouched(gate):
    reached: list[bytes] = []
    gate.app = app_recording(reached)
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"raw", "more_body": False}

    async def send(message):
        sent.append(message)

    for scope in ({"type": "http", "method": "POST", "path": "/gradio_api/upload"},
                  {"type": "http", "method": "GET", "path": "/gradio_api/call/nope/123"}):
        asyncio.run(gate(scope, receive, send))
    assert reached == [b"raw", b"raw"]
