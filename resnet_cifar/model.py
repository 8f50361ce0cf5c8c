"""ResNet9: the custom ResNet-9 for CIFAR-10, loadable from the Hugging Face Hub or a local folder."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from . import layout
from .checks import short, whole_number
from .preprocess import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, ImageLike, preprocess
from .layout import CONFIG_NAME, PICKLE_NAMES, WEIGHTS_NAME

MAX_CLASSES = 1000  # the linear head is 512 x num_classes: a config asking for millions would allocate gigabytes
MAX_NAME_LENGTH = 100
STD_RANGE = (1e-3, 1.0)  # the spread of pixel values in [0, 1]: above 0 by more than rounding, at most 1
ACTIVATIONS = ("relu", "celu")  # relu: the course's ResNet-9; celu: Page's smoothed ReLU (bag of tricks)
CELU_ALPHA_RANGE = (0.01, 10.0)


def activation_layer(activation: str = "relu", celu_alpha: float = 0.3) -> nn.Module:
    """The nonlinearity after every batch norm; it has no weights, so both kinds share one weights layout."""
    # Not inplace: Grad-CAM hooks on a block need its activations intact.
    return nn.CELU(alpha=celu_alpha) if activation == "celu" else nn.ReLU()


def conv_bn(in_channels: int, out_channels: int, pool: bool = False, activation: str = "relu",
            celu_alpha: float = 0.3) -> nn.Sequential:
    """3x3 conv (no bias), optional 2x2 max-pool, batch norm, activation: the unit every block is made of."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(out_channels), activation_layer(activation, celu_alpha)]
    return nn.Sequential(*layers)


class ResidualLayer(nn.Module):
    """conv-pool-BN-act, then optionally x + res(x) with res two conv-BN-act at the same width."""

    def __init__(self, in_channels: int, out_channels: int, residual: bool, **act: Any) -> None:
        super().__init__()
        self.conv = conv_bn(in_channels, out_channels, pool=True, **act)
        self.res = (nn.Sequential(conv_bn(out_channels, out_channels, **act), conv_bn(out_channels, out_channels, **act))
                    if residual else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block output (after the residual addition, so hooks see the sum)."""
        x = self.conv(x)
        if self.res is not None:
            x = x + self.res(x)
        return x


def _real(value: Any) -> bool:
    """A finite real number that is not a bool (JSON true would otherwise pass as 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value: Any, low: float, high: float) -> bool:
    """Three finite numbers in [low, high], one per RGB channel."""
    return (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3
            and all(_real(v) and low <= v <= high for v in value))


def validate_config(config: Mapping[str, Any], where: str = "ResNet9") -> None:
    """Raise ValueError naming `where`, the bad argument and what is allowed; cheap, before any allocation."""
    n, names = config.get("num_classes", 10), config.get("class_names", CIFAR10_CLASSES)
    mean, std = config.get("mean", CIFAR10_MEAN), config.get("std", CIFAR10_STD)
    dropout, logit_scale = config.get("dropout", 0.0), config.get("logit_scale", 1.0)
    activation, alpha = config.get("activation", "relu"), config.get("celu_alpha", 0.3)
    problems = []
    if not (isinstance(n, int) and not isinstance(n, bool) and 2 <= n <= MAX_CLASSES):
        problems.append(f"num_classes must be an integer from 2 to {MAX_CLASSES}, got {short(n)}")
    if not isinstance(names, Sequence) or isinstance(names, str):
        problems.append(f"class_names must be a list of names, got {type(names).__name__} {short(names)}")
    elif isinstance(n, int) and len(names) != n:
        problems.append(f"class_names must list exactly num_classes={short(n)} names, got {len(names)}")
    elif not all(isinstance(c, str) and 0 < len(c) <= MAX_NAME_LENGTH for c in names) or len(set(names)) != len(names):
        problems.append(f"class_names must be distinct strings of 1 to {MAX_NAME_LENGTH} characters, "
                        f"got {short(list(names))}")
    if not _numbers(mean, 0.0, 1.0):
        problems.append(f"mean must be 3 numbers in [0, 1] (per RGB channel, pixels scaled to [0, 1]), got {short(mean)}")
    if not _numbers(std, *STD_RANGE):
        problems.append(f"std must be 3 numbers in [{STD_RANGE[0]:g}, {STD_RANGE[1]:g}] (per RGB channel), "
                        f"got {short(std)}")
    if not (_real(dropout) and 0.0 <= dropout < 1.0):
        problems.append(f"dropout must be a number in [0, 1), got {short(dropout)}")
    if not (_real(logit_scale) and 0.0 < logit_scale <= 1000.0):
        problems.append(f"logit_scale must be a number in (0, 1000], got {short(logit_scale)}")
    if not (isinstance(activation, str) and activation in ACTIVATIONS):
        problems.append(f"activation must be one of {', '.join(ACTIVATIONS)}, got {short(activation)}")
    if not (_real(alpha) and CELU_ALPHA_RANGE[0] <= alpha <= CELU_ALPHA_RANGE[1]):
        problems.append(f"celu_alpha must be a number in [{CELU_ALPHA_RANGE[0]:g}, {CELU_ALPHA_RANGE[1]:g}], "
                        f"got {short(alpha)}")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))


class ResNet9(
    nn.Module,
    PyTorchModelHubMixin,
    library_name=layout.LIBRARY_NAME,
    pipeline_tag="image-classification",
    license=layout.LICENSE,
    tags=list(layout.TAGS),
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
        activation: str = "relu",
        celu_alpha: float = 0.3,
    ) -> None:
        super().__init__()
        validate_config({"num_classes": num_classes, "class_names": class_names, "mean": mean, "std": std,
                         "dropout": dropout, "logit_scale": logit_scale, "activation": activation,
                         "celu_alpha": celu_alpha})
        self.num_classes = num_classes
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.mean: tuple[float, ...] = tuple(float(v) for v in mean)
        self.std: tuple[float, ...] = tuple(float(v) for v in std)
        self.logit_scale = float(logit_scale)
        self.activation, self.celu_alpha = activation, float(celu_alpha)
        act = {"activation": activation, "celu_alpha": float(celu_alpha)}
        self.prep = conv_bn(3, 64, **act)
        self.layer1 = ResidualLayer(64, 128, residual=True, **act)
        self.layer2 = ResidualLayer(128, 256, residual=False, **act)
        self.layer3 = ResidualLayer(256, 512, residual=True, **act)
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
        """Convert one image or a list (PIL of any mode, file path, array or tensor) into a normalized Nx3x32x32 batch."""
        return preprocess(images, self.mean, self.std).to(self.device)

    def predict(
        self, images: ImageLike | Sequence[ImageLike], top_k: int = 3, tta: bool = False
    ) -> list[list[tuple[str, float]]]:
        """Per image, the top_k (class name, probability) pairs, most likely first.

        With `tta=True` the probabilities are averaged over the image and its horizontal mirror.
        """
        top_k = self.check_top_k(top_k)
        probs = self.probabilities(self.preprocess(images), tta=tta)
        values, indices = probs.topk(top_k, dim=1)
        return [
            [(self.class_names[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist())]
            for row_p, row_i in zip(values, indices)
        ]

    def check_top_k(self, top_k: object) -> int:
        """`top_k` as an int from 1 to num_classes, else a ValueError saying what is allowed."""
        return whole_number(top_k, "top_k", 1, self.num_classes)

    def probabilities(self, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Softmax probabilities for a normalized batch, in eval mode (the model's mode is restored)."""
        if not isinstance(tta, bool):
            raise ValueError(f"tta must be True or False, got {short(tta)}")
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

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's safetensors weights file, but a failed write (a full disk) is an OSError naming the file."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        layout.save_tensors(state, Path(save_directory) / WEIGHTS_NAME, metadata={"format": "pt"}, framework="torch")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> "ResNet9":
        """Load a release from a Hub repo id (optionally at `revision`) or a local folder, strictly.

        config.json is read and checked here first (a JSON object, known keys, sane values), so that a broken
        config is one ValueError naming the file, never a TypeError from deep inside or a NaN prediction.
        """
        source = str(pretrained_model_name_or_path)
        # A Hub id is "name" or "owner/name"; anything else that is not a folder is a mistyped path.
        looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1
        if not os.path.isdir(source) and (os.path.exists(source) or looks_like_path):
            raise FileNotFoundError(
                f"{source!r} is not a folder; pass a release folder (with {CONFIG_NAME} and {WEIGHTS_NAME}) "
                "or a Hub repo id like 'owner/name'"
            )
        download = {k: kwargs[k] for k in ("revision", "cache_dir", "force_download", "local_files_only", "token")
                    if k in kwargs}
        try:
            config_file = layout.locate(source, CONFIG_NAME, **download)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{err}: a resnet-cifar release carries its config (num_classes, class_names, mean, std) beside "
                f"{WEIGHTS_NAME}"
            ) from err
        cls.check_config(layout.read_json(config_file, f"{CONFIG_NAME} of {source!r}"), source)
        return super().from_pretrained(source, **kwargs)

    @classmethod
    def check_config(cls, config: Mapping[str, Any], source: str) -> None:
        """Refuse a release config with unknown keys or bad values, naming the file."""
        known = set(cls._hub_mixin_init_parameters) - {"self"}
        unknown = sorted(set(config) - known)
        where = f"{CONFIG_NAME} of {source!r}"
        if unknown:
            raise ValueError(f"{where} has unknown keys {short(unknown)}; allowed are {sorted(known)}")
        validate_config(config, where)

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
        """Build the model from its (checked) config and load safetensors weights (never pickle), strictly.

        Kept rather than the mixin's own (huggingface_hub 2.4), which tests/test_model.py shows: it prints
        "Loading weights from local directory" on stdout, defaults to strict=False (a release missing a layer
        loads silently), downloads pytorch_model.bin from a repo without safetensors before anything could refuse
        it, and does not tag its download with this library's name. Here: one tagged safetensors download, a
        missing file named with what to do, a config/weights mismatch explained (_check_state_dict).
        """
        weights_file = _weights_file(
            model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
            local_files_only=local_files_only, token=token,
        )
        model = cls(**model_kwargs)
        state = layout.load_tensors(weights_file, f"{WEIGHTS_NAME} of {model_id!r}", framework="torch")
        _check_state_dict(model, state, model_id, strict)
        model.load_state_dict(state, strict=strict)
        return model.to(map_location).eval()


    @classmethod
    def _load_as_pickle(cls, model: "ResNet9", model_file: str, map_location: str, strict: bool) -> "ResNet9":
        """The mixin's pickle loader, refused: should any path of the mixin reach it, nothing is unpickled."""
        raise FileNotFoundError(_pickle_refusal(str(model_file)))


def _pickle_refusal(model_id: str) -> str:
    return (f"{model_id!r} has no {WEIGHTS_NAME}. resnet-cifar loads safetensors only and never unpickles weights "
            "(pickle can run arbitrary code); re-save the model with save_pretrained()")


def _weights_file(model_id: str, **download_kwargs: Any) -> str:
    """Path of model.safetensors in a folder or Hub repo; a pickle-only source is refused without loading it."""
    refusal = _pickle_refusal(model_id)
    try:
        return layout.locate(model_id, WEIGHTS_NAME, **download_kwargs)
    except FileNotFoundError as err:
        found = [n for n in PICKLE_NAMES if os.path.isdir(model_id) and os.path.isfile(os.path.join(model_id, n))]
        raise FileNotFoundError(refusal + (f"; found only {found}" if found else "")) from err


def _check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], model_id: str, strict: bool) -> None:
    """Explain a config/weights mismatch, a wrong dtype or a non-finite weight in one message, naming the file."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    common = [k for k in expected if k in state]
    wrong_shape = [f"{k}: weights {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}"
                   for k in common if state[k].shape != expected[k].shape]
    wrong_dtype = [f"{k} is {str(state[k].dtype).removeprefix('torch.')}" for k in common
                   if state[k].dtype != expected[k].dtype]
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
    if wrong_dtype:
        raise ValueError(f"{WEIGHTS_NAME} of {model_id!r}: {', '.join(wrong_dtype[:5])}; a ResNet9 release stores "
                         "float32 weights (and int64 num_batches_tracked)")
    not_finite = [k for k in common if state[k].is_floating_point() and not torch.isfinite(state[k]).all()]
    if not_finite:
        raise ValueError(f"{WEIGHTS_NAME} of {model_id!r} holds NaN or infinite values in {not_finite[:5]}; "
                         "such weights predict nothing: retrain or re-save a finite model")
    negative = [k for k in common if k.endswith("running_var") and bool((state[k] < 0).any())]
    if negative:
        raise ValueError(f"{WEIGHTS_NAME} of {model_id!r} has negative BatchNorm variances in {negative[:5]}; a "
                         "variance is >= 0 (the model would predict NaN): retrain or re-save the model")


def forward_macs(num_classes: int = 10, size: int = 32) -> float:
    """Multiply-accumulates of one forward pass of a ResNet9 on one size x size RGB image, counted by torch's
    FlopCounterMode on the meta device (no memory, no compute): 0.38 G for CIFAR-10 at 32x32."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = ResNet9(num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)])
        image = torch.zeros(1, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        model(image)
    return counter.get_total_flops() / 2


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
