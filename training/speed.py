"""How fast a run trains: wall seconds per epoch, images per second and achieved TFLOP/s.

GPU work is asynchronous: a clock read while kernels are still queued measures the queue, not the work. Every
reading here waits for the device first.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from resnet_cifar import ResNet9


def train_flops_per_image(model_config: dict[str, Any] | None = None) -> float:
    """Floating-point operations of one training step per image (forward and backward) of a ResNet9.

    Counted by torch's FlopCounterMode on the meta device (no memory, no compute): 2.27 GFLOP for the CIFAR-10
    ResNet9, three times its forward pass, less the input gradient nobody needs.
    """
    with torch.device("meta"):
        model = ResNet9(**(model_config or {}))
        images = torch.zeros(2, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        model(images).sum().backward()
    return counter.get_total_flops() / len(images)


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute bf16 natively
AUTO_PRECISION = "auto"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where that file does not exist)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def device_kind(accelerator: str) -> str:
    """Where `--accelerator` runs on this machine: "cuda", "mps" or "cpu" ("auto" as Lightning picks: a CUDA GPU,
    else an Apple GPU, else the CPU). The one answer the hardware checks, the input path and the precision share;
    whether the named device exists is check_hardware's to say."""
    accelerator = str(accelerator).strip().lower()
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return "mps"
    return "cpu"


def fastest_precision(accelerator: str, flags: set[str] | None = None) -> tuple[str, str]:
    """The precision `--precision auto` picks for `accelerator`, and why: bf16-mixed where the device computes bf16
    natively (2x fp32 on this project's AVX512-BF16 CPU, BENCHMARKS.md), else 32-true (emulated bf16 is slower)."""
    kind = device_kind(accelerator)
    if kind == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16-mixed", f"{name} computes bf16 natively"
        return "32-true", f"{name} has no native bf16"
    if kind == "cpu":
        native = sorted(set(BF16_CPU_FLAGS) & (cpu_flags() if flags is None else flags))
        if native:
            return "bf16-mixed", f"this CPU computes bf16 natively ({', '.join(native)})"
        return "32-true", f"this CPU has no native bf16 (none of {', '.join(BF16_CPU_FLAGS)}), so bf16 would be slower"
    return "32-true", f"no native bf16 known for --accelerator {accelerator}"


def device_name(device: torch.device) -> str:
    """The training device in words (its CUDA name on a GPU)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(L.Callback):
    """Wall seconds and images of every training epoch of the run, epoch start to next epoch start.

    Saved in each checkpoint, so a resumed run continues the list of the epochs before it.

    An epoch's time therefore holds everything the loop does for it: the steps, the logging, the end-of-epoch
    checkpoint. The first epoch also holds torch.compile's compilation (--compile) and cuDNN's autotuning.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.images: list[int] = []
        self._start: float | None = None
        self._count = 0
        self._pending: tuple[float, int] | None = None
        self.restored = 0  # epochs timed by the processes before a resume

    def _mark(self, pl_module: L.LightningModule) -> None:
        synchronize(pl_module.device)
        now = time.perf_counter()
        if self._start is not None:
            self.seconds.append(now - self._start)
            self.images.append(self._count)
        self._start, self._count, self._pending = now, 0, None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._count += len(batch[0])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(pl_module)
        self._start = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The epoch-end checkpoint is written after this hook: it then holds this epoch's time as well.
        synchronize(pl_module.device)
        self._pending = (time.perf_counter() - self._start, self._count) if self._start is not None else None

    def state_dict(self) -> dict[str, Any]:
        """The epochs timed so far (with the one ending now): a resumed run reports the whole run's speed."""
        pending = [self._pending] if self._pending else []
        return {"seconds": self.seconds + [s for s, _ in pending], "images": self.images + [n for _, n in pending]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the timings of the epochs an earlier process ran."""
        self.seconds, self.images = [float(s) for s in state["seconds"]], [int(n) for n in state["images"]]
        self.restored = len(self.seconds)


def summary(seconds: list[float], images: list[int], flops_per_image: float) -> dict[str, Any]:
    """metrics.json's speed figures: per-epoch seconds, their sum, images/s and TFLOP/s over all epochs and over
    the epochs after the first (which pays for compilation and autotuning)."""
    out: dict[str, Any] = {"epoch_seconds": [round(s, 4) for s in seconds], "epoch_images": list(images),
                           "train_seconds": sum(seconds),
                           "train_images": sum(images), "train_flops_per_image": flops_per_image}
    if seconds and sum(seconds) > 0:
        out["images_per_second"] = sum(images) / sum(seconds)
        out["tflops"] = flops_per_image * sum(images) / sum(seconds) / 1e12
    if len(seconds) > 1 and sum(seconds[1:]) > 0:
        out["images_per_second_after_first"] = sum(images[1:]) / sum(seconds[1:])
        out["tflops_after_first"] = flops_per_image * sum(images[1:]) / sum(seconds[1:]) / 1e12
    return out
