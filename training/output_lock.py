"""One run per output folder: a lock held for the run's whole life.

Two runs writing one folder at once both "succeed": the log gets two epoch-0 rows and the release belongs to
whichever finished last. The lock is an advisory `flock` on OUTPUT_DIR/.run.lock, which the kernel drops when
the holding process ends in any way (return, exception, SIGKILL), so a lock file left by a killed run is stale by
construction and the next run simply takes it; nothing ever has to delete it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".run.lock"


class FolderInUse(RuntimeError):
    """Another live run holds the output folder; the message names it and says what to do."""


def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text())
        return f"process {int(info['pid'])} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def is_rank_zero_process() -> bool:
    """Whether this process is the one that owns a run (not a DDP worker Lightning launched for it)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


@contextlib.contextmanager
def hold(folder: Path) -> Iterator[Path]:
    """Hold `folder`'s run lock until the block ends (creating the folder); FolderInUse at once if it is held."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUse(f"{folder} is in use by a run that is still going ({_holder(lock)}); wait for it to "
                              "end, or pick another --output-dir (nothing was changed)") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        yield lock
    finally:
        os.close(fd)  # closing the only descriptor releases the flock
