"""The Space's upload folder: where gradio writes uploads and the Space its generated images, kept bounded, and
the one check that a request's image is a file gradio received as an upload of this server.

gradio 6.31 does not do either job (tests/test_gradio_gaps.py pins each gap, a test fails the day gradio mends
it): `gr.Blocks(delete_cache=(frequency, age))` deletes by age only, with no byte budget, and leaves the cache of
a crashed process behind; and a file payload without its FileData marker skips gradio's own upload check, so a
component opens any server file a request names.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("space.uploads")
FILE_META = {"_type": "gradio.FileData"}
UPLOAD_HINT = ('send the image as a file uploaded to this server: POST it to /gradio_api/upload, then pass '
               '{"path": <the path that returns>, "meta": {"_type": "gradio.FileData"}} '
               '(gradio_client: handle_file("cat.png"))')


class UploadRefused(ValueError):
    """A request named a file that is not an upload of this server; every such refusal reads the same."""

    def __init__(self) -> None:
        super().__init__(f"not an uploaded image; {UPLOAD_HINT}")


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
