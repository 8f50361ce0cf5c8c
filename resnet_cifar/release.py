"""A whole release, read: the model (strictly), its misclassified set and the accuracy its card states, from a
folder or a Hub repo id. Above the layout (layout.py), the model and the card; everything of the layout is
reachable from here too (`release.files`, `release.write`, `release.WEIGHTS_NAME`, ...), so that the commands and
the Space import one module for a release.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import constants

from .card import test_accuracy_of
from .layout import *  # noqa: F401,F403 (the layout's public names, as release.X)
from .layout import CARD_NAME, MisclassifiedSet, is_local, load_misclassified, locate
from .model import ResNet9


# ---------------------------------------------------------------- reading a release


@dataclass(frozen=True)
class Release:
    """A loaded release: the model, its misclassified set (None when it has none) and what its card states."""

    source: str
    revision: str | None
    model: ResNet9
    misclassified: MisclassifiedSet | None
    test_accuracy: float | None  # from the card's model-index; None when the card states none

    @property
    def hub_id(self) -> str | None:
        """The Hub repo id, for a release read from the Hub."""
        return None if is_local(self.source) else self.source

    @property
    def url(self) -> str | None:
        """The Hub page of the release (its model card), for a release read from the Hub."""
        if self.hub_id is None:
            return None
        return f"{constants.ENDPOINT}/{self.hub_id}" + (f"/tree/{self.revision}" if self.revision else "")


def read(source: str | Path, revision: str | None = None, **download_kwargs: Any) -> Release:
    """Load a release from a folder or a Hub repo id: the model strictly, the misclassified set and card if present."""
    source = str(source)
    model = ResNet9.from_pretrained(source, revision=revision, **download_kwargs)
    try:
        misclassified = load_misclassified(source, revision, num_classes=model.num_classes, **download_kwargs)
    except FileNotFoundError:
        misclassified = None
    try:
        accuracy = test_accuracy_of(locate(source, CARD_NAME, revision, **download_kwargs))
    except (FileNotFoundError, ValueError):
        accuracy = None
    return Release(source, revision, model, misclassified, accuracy)
