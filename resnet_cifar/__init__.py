"""resnet-cifar: a ResNet-9 for CIFAR-10, from training to the Hugging Face Hub to a Space.

The names below load on first use (PEP 562): `import resnet_cifar.checks` or a command's `--help` does not pay for
torch and huggingface_hub; `from resnet_cifar import ResNet9` works as ever.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"
_WHERE = {"ResNet9": "model", "count_parameters": "model", "CIFAR10_CLASSES": "preprocess",
          "CIFAR10_MEAN": "preprocess", "CIFAR10_STD": "preprocess", "ImageError": "preprocess",
          "load_image": "preprocess"}
# resnet_cifar.preprocess is the module (importing ResNet9 imports it): its function is ResNet9.preprocess or
# resnet_cifar.preprocess.preprocess.
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
