"""The release layout, the lowest floor of the library: the folder's file names, each file read with its checks
(safetensors never unpickled, JSON bounded) and the folder written atomically.

A release is what `resnet-cifar-train` writes, `resnet-cifar-push` uploads, the Space serves and
`ResNet9.from_pretrained` reads. Every other part of the project takes its names and its rules from here; the
model (model.py) and the card (card.py) build on this module, and `resnet_cifar.release` on all three.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import safetensors.torch
from safetensors import SafetensorError
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError

from . import __version__
from .captions import mistake
from .errors import first_line

__all__ = ["LIBRARY_NAME", "LICENSE", "TAGS", "download", "WEIGHTS_NAME", "CONFIG_NAME", "CARD_NAME",
           "MISCLASSIFIED_NAME", "TRAINING_CONFIG_NAME", "METRICS_NAME", "PLOTS", "REQUIRED_FILES", "FILES", "PICKLE_NAMES", "MAX_CONFIG_BYTES", "FILE_MODE", "FOLDER_MODE",
           "ReleaseError", "files", "read_bytes", "load_tensors", "save_tensors", "is_local", "locate", "read_json",
           "MisclassifiedSet", "save_misclassified", "load_misclassified", "write", "write_json"]

# What the Hub shows and counts for every release: written into config.json's metadata by the mixin (model.py)
# and into the card (card.py), and sent with every download, as timm sends its own (library_name/version).
LIBRARY_NAME = "resnet-cifar"
LICENSE = "mit"
TAGS = ("image-classification", "cifar10", "resnet", "pytorch")
WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE  # "model.safetensors": the mixin's own name
CONFIG_NAME = constants.CONFIG_NAME  # "config.json": ResNet9's init arguments
CARD_NAME = constants.REPOCARD_NAME  # "README.md": the model card
MISCLASSIFIED_NAME = "misclassified.safetensors"
TRAINING_CONFIG_NAME = "training_config.json"  # the resolved config of the run that trained the weights
METRICS_NAME = "metrics.json"  # the run's measured figures: test split and images, accuracy, ECE, speed, device
# Plots the card shows, in the order it shows them, each with its caption.
PLOTS: dict[str, str] = {
    "lr_finder.png": "LR finder",
    "lr_schedule.png": "One Cycle LR schedule",
    "metrics.png": "Loss and accuracy per epoch",
    "confusion_matrix.png": "Test confusion matrix",
    "reliability.png": "Reliability diagram: confidence against accuracy, before and after temperature scaling",
    "misclassified.png": "Most confident mistakes on the test set",
    "gradcam.png": "Grad-CAM of the predicted class on those mistakes",
}
REQUIRED_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
FILES = (*REQUIRED_FILES, MISCLASSIFIED_NAME, TRAINING_CONFIG_NAME, METRICS_NAME, *PLOTS)
PICKLE_NAMES = (constants.PYTORCH_WEIGHTS_NAME, "pytorch_model.pt", "model.pt", "model.pth", "model.ckpt")
MAX_CONFIG_BYTES = 1_000_000  # a config is a few hundred bytes; a larger one is refused before it is parsed
FILE_MODE, FOLDER_MODE = 0o644, 0o755  # a release is meant to be read by anyone


class ReleaseError(ValueError):
    """A release folder or repo that is incomplete or holds something a release must not."""


# ---------------------------------------------------------------- which files, and reading them safely


def files(folder: str | Path) -> list[str]:
    """The release files present in `folder`, in FILES order: regular files only, required ones checked.

    Anything else in the folder (checkpoints, logs, hidden or nested files) is not part of the release. A
    release name that is a symbolic link or not a regular file is refused: a push must never upload what a
    link points to.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReleaseError(f"{folder} is not a folder; a release is a folder holding {', '.join(REQUIRED_FILES)}")
    present = []
    for name in FILES:
        try:
            mode = os.lstat(folder / name).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            raise ReleaseError(f"{folder / name} is {kind}; a release holds regular files only")
        present.append(name)
    missing = [name for name in REQUIRED_FILES if name not in present]
    if missing:
        raise ReleaseError(f"{folder} is not a complete release: missing {', '.join(missing)}")
    return present


def read_bytes(folder: str | Path, name: str) -> bytes:
    """The content of one release file, opened without following a link (a swap after files() is refused too)."""
    if name not in FILES:
        raise ReleaseError(f"{name!r} is not a release file; release files are {', '.join(FILES)}")
    path = Path(folder) / name
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise ReleaseError(f"cannot open {path} as a regular file: {err.strerror}") from err
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ReleaseError(f"{path} is not a regular file")
        return f.read()


def load_tensors(path: str | Path, what: str, framework: str = "numpy") -> dict[str, Any]:
    """The tensors of a safetensors file (never pickle), as numpy arrays or torch tensors on the CPU.

    A file that is not safetensors (truncated, a zip or pickle renamed, a header that lies about its sizes,
    offsets, dtypes or shapes) is one ReleaseError naming the file, not the parser's bare error.
    """
    try:
        if framework == "torch":
            return safetensors.torch.load_file(str(path), device="cpu")
        return safetensors.numpy.load_file(str(path))
    except (SafetensorError, TypeError) as err:
        reason = first_line(err)
        raise ReleaseError(f"{what} ({path}) is not a readable safetensors file ({reason}); it is truncated, "
                           "corrupt or another format: download it again or re-save it with save_pretrained()"
                           ) from None


def save_tensors(tensors: Mapping[str, Any], path: str | Path, metadata: Mapping[str, str] | None = None,
                 framework: str = "numpy") -> None:
    """Write a safetensors file; a failed write (a full disk, a read-only folder) is an OSError naming the file."""
    try:
        if framework == "torch":
            safetensors.torch.save_file(dict(tensors), str(path), metadata=dict(metadata or {}))
        else:
            safetensors.numpy.save_file(dict(tensors), str(path), metadata=dict(metadata or {}))
    except SafetensorError as err:
        reason = first_line(err)
        raise OSError(f"cannot write {path}: {reason} (is the disk full or the folder read-only?)") from None


def is_local(source: str | Path) -> bool:
    """Whether a source names a local folder rather than a Hub repo id."""
    return os.path.isdir(source)


def download(repo_id: str, filename: str, revision: str | None = None, **download_kwargs: Any) -> str:
    """hf_hub_download of one release file, tagged with this library's name and version (the Hub's statistics)."""
    return hf_hub_download(repo_id=repo_id, filename=filename, revision=revision, library_name=LIBRARY_NAME,
                           library_version=__version__, **download_kwargs)


def locate(source: str | Path, name: str, revision: str | None = None, **download_kwargs: Any) -> str:
    """Local path of a release file from a folder or a Hub repo id; FileNotFoundError when the source lacks it.

    Only a 404 from the Hub means "no such file"; an offline cache miss keeps its own error.
    """
    source = str(source)
    if is_local(source):
        path = os.path.join(source, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {name} in folder {source!r}")
        return path
    try:
        return download(source, name, revision, **download_kwargs)
    except RemoteEntryNotFoundError as err:
        raise FileNotFoundError(f"no {name} in Hub repo {source!r}" + (f" at {revision}" if revision else "")) from err


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON object from a release file, with errors that name the file."""
    size = os.path.getsize(path)
    if size > MAX_CONFIG_BYTES:
        raise ReleaseError(f"{what} is {size:,} bytes; a release's JSON files are at most {MAX_CONFIG_BYTES:,}")
    with open(path, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if raw.startswith(b"\xef\xbb\xbf"):
        raise ReleaseError(f"{what} starts with a UTF-8 byte-order mark, which JSON does not allow (RFC 8259, "
                           "section 8.1) and the Hub's loaders refuse: save it as UTF-8 without the mark")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReleaseError(f"{what} is not valid JSON: {err}") from None
    except RecursionError:
        raise ReleaseError(f"{what} is nested too deeply to be a release config; a config is one flat JSON "
                           "object of a few keys") from None
    except ReleaseError as err:  # NaN or Infinity
        raise ReleaseError(f"{what}: {err}") from None
    if not isinstance(data, dict):
        raise ReleaseError(f"{what} must hold a JSON object ({{...}}), got a JSON {type(data).__name__}")
    return data


def _no_constants(name: str) -> None:
    """json.load hook: NaN and Infinity are not JSON, and no release value may be one."""
    raise ReleaseError(f"{name} is not a number a release may hold")


# ---------------------------------------------------------------- the misclassified set


@dataclass(frozen=True)
class MisclassifiedSet:
    """Test images the model got wrong, most confident mistakes first."""

    images: np.ndarray  # N x 32 x 32 x 3 uint8
    true_labels: np.ndarray  # N int64
    predicted_labels: np.ndarray  # N int64
    probabilities: np.ndarray  # N float32: the probability given to the predicted label

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[3] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be N x H x W x 3 uint8, got {self.images.dtype} {self.images.shape}")
        for name in ("true_labels", "predicted_labels", "probabilities"):
            value = getattr(self, name)
            if value.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},) to match {n} images, got {value.shape}")
        for name in ("true_labels", "predicted_labels"):
            value = getattr(self, name)
            if not np.issubdtype(value.dtype, np.integer) or (n and value.min() < 0):
                raise ValueError(f"{name} must be class ids (whole numbers >= 0), got {value.dtype} "
                                 f"{value.min() if n else ''}".rstrip())
        probs = self.probabilities
        if not np.issubdtype(probs.dtype, np.floating) or not np.all((probs >= 0) & (probs <= 1)):
            raise ValueError("probabilities must be numbers in [0, 1] (no NaN), one per image")

    def check_classes(self, num_classes: int, where: str) -> None:
        """Refuse class ids the model does not have (ValueError naming `where`)."""
        for name in ("true_labels", "predicted_labels"):
            value = getattr(self, name)
            if len(value) and value.max() >= num_classes:
                raise ReleaseError(f"{where}: {name} holds class {int(value.max())}, but the model has "
                                   f"{num_classes} classes (0 to {num_classes - 1})")

    def __len__(self) -> int:
        return len(self.images)

    def captions(self, class_names: tuple[str, ...] | list[str]) -> list[str]:
        """'predicted (p) / true' for each mistake, the caption everything that shows them uses."""
        return [mistake(class_names[p], prob, class_names[t])
                for p, prob, t in zip(self.predicted_labels, self.probabilities, self.true_labels)]


def save_misclassified(folder: str | Path, misclassified: MisclassifiedSet) -> Path:
    """Write misclassified.safetensors into `folder` and return its path."""
    path = Path(folder) / MISCLASSIFIED_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "images": np.ascontiguousarray(misclassified.images, dtype=np.uint8),
        "true_labels": np.ascontiguousarray(misclassified.true_labels, dtype=np.int64),
        "predicted_labels": np.ascontiguousarray(misclassified.predicted_labels, dtype=np.int64),
        "probabilities": np.ascontiguousarray(misclassified.probabilities, dtype=np.float32),
    }
    save_tensors(tensors, path, metadata={"format": "resnet-cifar.misclassified.v1"})
    return path


def load_misclassified(source: str | Path, revision: str | None = None, num_classes: int | None = None,
                       **download_kwargs: Any) -> MisclassifiedSet:
    """Load the misclassified set of a release: a local folder or a Hub repo id (at `revision`), checked (shapes,
    class ids, and with `num_classes` that every id is one of the model's classes); ReleaseError names the file."""
    path = locate(source, MISCLASSIFIED_NAME, revision, **download_kwargs)
    data = load_tensors(path, f"{MISCLASSIFIED_NAME} of {source!r}")
    missing = {"images", "true_labels", "predicted_labels", "probabilities"} - set(data)
    if missing:
        raise ReleaseError(f"{path} lacks {sorted(missing)}; it was not written by save_misclassified")
    try:
        found = MisclassifiedSet(images=data["images"], true_labels=data["true_labels"],
                                 predicted_labels=data["predicted_labels"], probabilities=data["probabilities"])
    except ValueError as err:
        raise ReleaseError(f"{MISCLASSIFIED_NAME} of {source!r}: {err}") from None
    if num_classes is not None:
        found.check_classes(num_classes, f"{MISCLASSIFIED_NAME} of {source!r}")
    return found


# ---------------------------------------------------------------- writing a release


def write(folder: str | Path, fill: Callable[[Path], None]) -> Path:
    """Write a release folder atomically: `fill(staging)` writes the files, then the folder replaces `folder`.

    A failure at any point (a full disk, an exception in `fill`) removes the staging folder and leaves an
    earlier release at `folder` untouched; the new release appears whole or not at all. Files are made 0644.
    """
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    previous = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        fill(staging)
        names = files(staging)  # the release is complete and holds regular files only
        for entry in staging.iterdir():
            if entry.name not in names:
                raise ReleaseError(f"{entry.name!r} is not a release file; release files are {', '.join(FILES)}")
            os.chmod(entry, FILE_MODE)
        os.chmod(staging, FOLDER_MODE)
        if folder.exists():
            os.replace(folder, previous)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if previous.exists() and not folder.exists():
            os.replace(previous, folder)
        raise
    shutil.rmtree(previous, ignore_errors=True)
    return folder


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """A release JSON file: sorted keys, indented, no NaN."""
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
