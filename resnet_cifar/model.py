"""ResNet9: the custom ResNet-9 for CIFAR-10, loadable from the Hugging Face Hub or a local folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin, constants, hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError
from torch import nn

from .preprocess import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, ImageLike, preprocess

WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE  # "model.safetensors"
CONFIG_NAME = constants.CONFIG_NAME  # "config.json"
PICKLE_NAMES = (constants.PYTORCH_WEIGHTS_NAME, "pytorch_model.pt", "model.pt", "model.pth", "model.ckpt")
REPO_URL = "https://github.com/resnet-cifar/resnet-cifar"


def conv_bn(in_channels: int, out_channels: int, pool: bool = False) -> nn.Sequential:
    """3x3 conv (no bias), optional 2x2 max-pool, batch norm, ReLU: the unit every block is made of."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    # Not inplace: Grad-CAM hooks on a block need its activations intact.
    layers += [nn.BatchNorm2d(out_channels), nn.ReLU()]
    return nn.Sequential(*layers)


class ResidualLayer(nn.Module):
    """conv-pool-BN-ReLU, then optionally x + res(x) with res two conv-BN-ReLU at the same width."""

    def __init__(self, in_channels: int, out_channels: int, residual: bool) -> None:
        super().__init__()
        self.conv = conv_bn(in_channels, out_channels, pool=True)
        self.res = nn.Sequential(conv_bn(out_channels, out_channels), conv_bn(out_channels, out_channels)) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block output (after the residual addition, so hooks see the sum)."""
        x = self.conv(x)
        if self.res is not None:
            x = x + self.res(x)
        return x


def _validate_config(
    num_classes: int, class_names: Sequence[str], mean: Sequence[float], std: Sequence[float], dropout: float,
    logit_scale: float,
) -> None:
    """Raise ValueError naming the bad init argument and what is allowed."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if isinstance(class_names, str) or len(class_names) != num_classes:
        raise ValueError(
            f"class_names must list exactly num_classes={num_classes} names, got {len(class_names)}: {class_names!r}"
        )
    if not all(isinstance(n, str) and n for n in class_names) or len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be distinct non-empty strings, got {class_names!r}")
    if len(mean) != 3 or not all(isinstance(v, (int, float)) for v in mean):
        raise ValueError(f"mean must be 3 numbers (one per RGB channel), got {mean!r}")
    if len(std) != 3 or not all(isinstance(v, (int, float)) and v > 0 for v in std):
        raise ValueError(f"std must be 3 positive numbers (one per RGB channel), got {std!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if not logit_scale > 0:
        raise ValueError(f"logit_scale must be positive, got {logit_scale!r}")


class ResNet9(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="resnet-cifar",
    pipeline_tag="image-classification",
    license="mit",
    tags=["image-classification", "cifar10", "resnet", "pytorch"],
    repo_url=REPO_URL,
):
    """The ResNet-9 of the course (6.57 M parameters) for 32x32 RGB images; returns logits.

    Children `prep`, `layer1`, `layer2`, `layer3` are the four blocks whose outputs Grad-CAM can explain.
    """

    def __init__(
        self,
        num_classes: int = 10,
        class_names: Sequence[str] = CIFAR10_CLASSES,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        dropout: float = 0.0,
        logit_scale: float = 1.0,
    ) -> None:
        super().__init__()
        _validate_config(num_classes, class_names, mean, std, dropout, logit_scale)
        self.num_classes = num_classes
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.mean: tuple[float, ...] = tuple(float(v) for v in mean)
        self.std: tuple[float, ...] = tuple(float(v) for v in std)
        self.logit_scale = float(logit_scale)
        self.prep = conv_bn(3, 64)
        self.layer1 = ResidualLayer(64, 128, residual=True)
        self.layer2 = ResidualLayer(128, 256, residual=False)
        self.layer3 = ResidualLayer(256, 512, residual=True)
        self.pool = nn.MaxPool2d(4)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a normalized Nx3x32x32 batch to Nxnum_classes logits."""
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        x = self.pool(x).flatten(1)
        return self.fc(self.dropout(x)) * self.logit_scale

    @property
    def device(self) -> torch.device:
        """The device the weights live on."""
        return self.fc.weight.device

    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Convert one image or a list (PIL of any mode, array or tensor) into a normalized Nx3x32x32 batch."""
        return preprocess(images, self.mean, self.std).to(self.device)

    def predict(
        self, images: ImageLike | Sequence[ImageLike], top_k: int = 3, tta: bool = False
    ) -> list[list[tuple[str, float]]]:
        """Per image, the top_k (class name, probability) pairs, most likely first.

        With `tta=True` the probabilities are averaged over the image and its horizontal mirror.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= self.num_classes:
            raise ValueError(f"top_k must be an integer from 1 to {self.num_classes}, got {top_k!r}")
        probs = self.probabilities(self.preprocess(images), tta=tta)
        values, indices = probs.topk(top_k, dim=1)
        return [
            [(self.class_names[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist())]
            for row_p, row_i in zip(values, indices)
        ]

    def probabilities(self, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Softmax probabilities for a normalized batch, in eval mode (the model's mode is restored)."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                probs = F.softmax(self(batch), dim=1)
                if tta:
                    probs = (probs + F.softmax(self(batch.flip(3)), dim=1)) / 2
        finally:
            self.train(was_training)
        return probs

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> "ResNet9":
        """Load a release from a Hub repo id (optionally at `revision`) or a local folder, strictly."""
        source = str(pretrained_model_name_or_path)
        # A Hub id is "name" or "owner/name"; anything else that is not a folder is a mistyped path.
        looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1
        if not os.path.isdir(source) and (os.path.exists(source) or looks_like_path):
            raise FileNotFoundError(
                f"{source!r} is not a folder; pass a release folder (with {CONFIG_NAME} and {WEIGHTS_NAME}) "
                "or a Hub repo id like 'owner/name'"
            )
        return super().from_pretrained(source, **kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        config: dict | None = None,
        **model_kwargs: Any,
    ) -> "ResNet9":
        """Build the model from its config and load safetensors weights (never pickle), strictly by default."""
        if config is None:
            raise FileNotFoundError(
                f"no {CONFIG_NAME} in {model_id!r}: a resnet-cifar release carries its config "
                f"(num_classes, class_names, mean, std) beside {WEIGHTS_NAME}"
            )
        known = set(cls._hub_mixin_init_parameters) - {"self"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"{CONFIG_NAME} of {model_id!r} has unknown keys {unknown}; allowed are {sorted(known)}")
        weights_file = _weights_file(
            model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
            local_files_only=local_files_only, token=token,
        )
        model = cls(**model_kwargs)
        state = safetensors.torch.load_file(weights_file, device=str(map_location))
        _check_state_dict(model, state, model_id, strict)
        model.load_state_dict(state, strict=strict)
        return model.eval()


def _weights_file(model_id: str, **download_kwargs: Any) -> str:
    """Path of model.safetensors in a folder or Hub repo; a pickle-only source is refused without loading it."""
    refusal = (
        f"{model_id!r} has no {WEIGHTS_NAME}. resnet-cifar loads safetensors only and never unpickles weights "
        "(pickle can run arbitrary code); re-save the model with save_pretrained()"
    )
    if os.path.isdir(model_id):
        path = os.path.join(model_id, WEIGHTS_NAME)
        if os.path.isfile(path):
            return path
        found = [name for name in PICKLE_NAMES if os.path.isfile(os.path.join(model_id, name))]
        raise FileNotFoundError(refusal + (f"; found only {found}" if found else ""))
    try:
        return hf_hub_download(repo_id=model_id, filename=WEIGHTS_NAME, **download_kwargs)
    except RemoteEntryNotFoundError as err:  # the repo answered: no such file (a cache miss offline is not this)
        raise FileNotFoundError(refusal) from err


def _check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], model_id: str, strict: bool) -> None:
    """Explain a config/weights mismatch in one message instead of PyTorch's long traceback."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: weights {tuple(state[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if wrong_shape:
        problems.append("shape mismatch " + "; ".join(wrong_shape[:5]))
    if strict and missing:
        problems.append(f"missing from the weights {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
    if strict and unexpected:
        problems.append(f"not in the model {unexpected[:5]}" + (" ..." if len(unexpected) > 5 else ""))
    if problems:
        raise ValueError(
            f"{CONFIG_NAME} of {model_id!r} does not match its {WEIGHTS_NAME}: " + ", ".join(problems)
            + ". The config must describe the architecture the weights were saved from."
        )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
