"""Checkpoints that are written atomically, loaded without unpickling code, and resumed only into the run they
belong to."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from resnet_cifar.errors import first_line
from resnet_cifar.checks import short

from .config import RunConfig, upgraded

DEFAULTS = RunConfig().to_dict()
# Settings whose default became "auto" (None): a checkpoint written before that ran them as this.
DEFAULTS["data"]["data_on_device"] = DEFAULTS["augment"]["augment_on_device"] = False

LAST = "last.ckpt"
# What may differ between a run and its resumption: where it writes, where it pushes, how it loads data, how
# much of the test split it measures. Everything else shapes the weights or the schedule and must match.
MAY_DIFFER = {
    ("output", "output_dir"), ("output", "resume"), ("output", "push_to_hub"), ("output", "private"),
    ("output", "misclassified"), ("data", "num_workers"), ("hardware", "limit_test_batches"),
    ("hardware", "accelerator"), ("hardware", "devices"), ("hardware", "strategy"), ("hardware", "num_nodes"),
    ("hardware", "compile"), ("output", "checkpoint_every"), ("model", "calibrate"),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message says why and what to do."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but through a temporary file and a rename: a full disk or a kill mid-write
    leaves the previous checkpoint whole instead of a truncated one, and no temporary file behind. And its reader,
    but weights-only whatever the caller asks (the LR finder restores its own checkpoint with weights_only=False)."""

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        """Lightning's load, through torch's weights-only unpickler."""
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        """Write `checkpoint` to `path` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise


def load(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's contents through torch's weights-only unpickler: tensors and plain containers, never code."""
    try:
        empty = os.path.getsize(path) == 0
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror}; pass a checkpoint that exists") from None
    if empty:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint; delete it and resume from another "
                              "checkpoint, or start a new run")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = first_line(err, 160) if str(err).strip() else "objects outside the allow-list"
        raise CheckpointError(
            f"{path} holds more than tensors and plain values ({reason}); resnet-cifar never unpickles code from a "
            "checkpoint: resume only from checkpoints this command wrote") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({first_line(err, 120)}); delete it and resume from another "
            "checkpoint, or start a new run") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{path} is not a resnet-cifar-train checkpoint (no state_dict and hyper_parameters)")
    return checkpoint


def check_resumable(checkpoint: dict[str, Any], path: str | os.PathLike, config: dict[str, Any],
                    model_config: dict[str, Any]) -> None:
    """Refuse a checkpoint of another run: the model, the schedule and every setting that shapes them must match."""
    saved = checkpoint["hyper_parameters"]
    saved_config, saved_model = upgraded(saved.get("config") or {}, str(path)), saved.get("model_config") or {}
    if saved_model != model_config:
        keys = sorted(k for k in set(saved_model) | set(model_config) if saved_model.get(k) != model_config.get(k))
        raise CheckpointError(f"{path} is a checkpoint of another model ({', '.join(keys)} differ); resume it with "
                              "the dataset it was trained on, or start a new run in another --output-dir")
    epochs = (saved_config.get("optim") or {}).get("epochs")
    if epochs != config["optim"]["epochs"]:
        raise CheckpointError(
            f"{path} belongs to a run of {epochs} epochs: One Cycle's schedule is fixed by the number of epochs and "
            f"cannot be stretched to {config['optim']['epochs']}; resume with --epochs {epochs}, or start a new run")
    differ = []
    for section, values in config.items():
        for key, value in values.items():
            # A setting newer than the checkpoint ran with its default (the one that keeps the old behaviour).
            before = (saved_config.get(section) or {}).get(key, DEFAULTS[section].get(key))
            if (section, key) in MAY_DIFFER or before == value:
                continue
            if section == "optim" and key == "max_lr" and value is None:
                continue  # the LR finder's value, saved with the run, is reused on resume
            differ.append(f"--{key.replace('_', '-')} {short(before)} -> {short(value)}")
    if differ:
        raise CheckpointError(f"{path} was trained with other settings ({'; '.join(differ[:4])}); resume with the "
                              "run's own settings, or start a new run in another --output-dir")


def last_checkpoint(output_dir: Path) -> Path:
    """OUTPUT_DIR/checkpoints/last.ckpt, the only checkpoint `--resume last` means."""
    return output_dir / "checkpoints" / LAST
