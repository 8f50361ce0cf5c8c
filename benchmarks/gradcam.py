"""Grad-CAM speed: resnet_cifar.gradcam.explain against pytorch-grad-cam's GradCAM on the same ResNet9.

Both explain the same inputs at the same layer (`layer3`) for the same classes (each image's predicted
class, computed once up front), at batch 1 and batch 10. The two are interleaved in one process: every
repetition runs both, alternating which goes first, after a warm-up of both. Reported: median wall time
per call in ms, the ratio theirs / ours (above 1 means ours is faster), and how well the maps agree
(Pearson correlation per image, the lowest over the batch; both scale maps to [0, 1] their own way, so
the correlation, which ignores scale and offset, is the fair comparison).

pytorch-grad-cam usage is the one its README shows: `with GradCAM(model, target_layers) as cam:
cam(input_tensor, targets=[ClassifierOutputTarget(c), ...])`; constructing the object (registering two
hooks) is inside the timed call, as it is in that usage.

A stand-in for torchvision, said plainly: `pip install grad-cam` requires torchvision, which this project
does not use and which has no CPU build here. pytorch-grad-cam imports it at import time only for names
that GradCAM never calls (`torchvision.transforms.Compose/Normalize/ToTensor` for its `preprocess_image`
helper, `torchvision.transforms.functional.resize` for SESS, `torchvision.ops.box_iou` for a Faster R-CNN
target). When torchvision is not installed this script registers a minimal stand-in module whose names
raise if they are ever called, so any use on the measured path would fail loudly rather than be faked.
Install for this benchmark: `pip install --no-deps grad-cam ttach` and `pip install scikit-learn`.

Run: `python benchmarks/gradcam.py [--repeats 30]` (leave OMP_NUM_THREADS unset to use every core).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable

import numpy as np
import torch

from resnet_cifar import ResNet9
from resnet_cifar.gradcam import explain

LAYER = "layer3"
BATCH_SIZES = (1, 10)


def install_torchvision_stand_in() -> bool:
    """Register a stand-in torchvision whose names raise when called; return whether it was needed."""
    if importlib.util.find_spec("torchvision") is not None:
        return False

    def unavailable(name: str) -> Callable:
        def call(*args, **kwargs):
            raise RuntimeError(f"torchvision stand-in: {name} was called; install torchvision to use it")

        return call

    names = {
        "torchvision": [],
        "torchvision.transforms": ["Compose", "Normalize", "ToTensor"],
        "torchvision.transforms.functional": ["resize"],
        "torchvision.ops": ["box_iou"],
    }
    for module_name, attributes in names.items():
        module = types.ModuleType(module_name)
        module.__doc__ = "stand-in installed by benchmarks/gradcam.py; every name raises when called"
        for attribute in attributes:
            setattr(module, attribute, unavailable(f"{module_name}.{attribute}"))
        sys.modules[module_name] = module
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision"].ops = sys.modules["torchvision.ops"]
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    return True


def ours(model: ResNet9, batch: torch.Tensor, targets: list[int]) -> np.ndarray:
    """resnet_cifar's Grad-CAM maps, N x 32 x 32."""
    return explain(model, batch, layer=LAYER, targets=targets).numpy()


def theirs(model: ResNet9, batch: torch.Tensor, targets: list[int]) -> np.ndarray:
    """pytorch-grad-cam's GradCAM maps, N x 32 x 32, as its README uses it."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[getattr(model, LAYER)]) as cam:
        return cam(input_tensor=batch, targets=[ClassifierOutputTarget(t) for t in targets])


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    """Wall time of one call in ms, and its result."""
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1000.0, result


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Lowest per-image Pearson correlation between two stacks of maps."""
    return min(float(np.corrcoef(x.ravel(), y.ravel())[0, 1]) for x, y in zip(a, b))


def bench(model: ResNet9, batch_size: int, repeats: int, warmup: int) -> dict[str, float]:
    """Interleaved timings of ours and theirs on one batch; medians, ratio and agreement."""
    batch = torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(batch_size))
    with torch.no_grad():
        targets = model(batch).argmax(1).tolist()
    runs = {"ours": lambda: ours(model, batch, targets), "theirs": lambda: theirs(model, batch, targets)}
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for rep in range(repeats):
        order = ["ours", "theirs"] if rep % 2 == 0 else ["theirs", "ours"]
        for name in order:
            ms, _ = timed(runs[name])
            times[name].append(ms)
    ours_maps, theirs_maps = runs["ours"](), runs["theirs"]()
    assert ours_maps.shape == theirs_maps.shape == (batch_size, 32, 32)
    median_ours, median_theirs = statistics.median(times["ours"]), statistics.median(times["theirs"])
    return {
        "batch": batch_size,
        "ours_ms": median_ours,
        "theirs_ms": median_theirs,
        "ratio": median_theirs / median_ours,
        # Same repetition, back to back: robust when other work loads the CPU unevenly over time.
        "paired_ratio": statistics.median(t / o for t, o in zip(times["theirs"], times["ours"])),
        "min_correlation": correlation(ours_maps, theirs_maps),
        "max_abs_diff": float(np.abs(ours_maps - theirs_maps).max()),
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    """Parse arguments, run both batch sizes and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls of each library per batch size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of each before timing")
    args = parser.parse_args()

    stand_in = install_torchvision_stand_in()
    import pytorch_grad_cam  # noqa: F401  (fail early, before any timing, if it cannot be imported)
    from importlib.metadata import version

    torch.manual_seed(0)
    model = ResNet9().eval()
    load_before = load_average()
    results = [bench(model, n, args.repeats, args.warmup) for n in BATCH_SIZES]
    load_after = load_average()

    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"captum {version('captum')}, grad-cam {version('grad-cam')}"
          + (", torchvision stand-in (never called)" if stand_in else f", torchvision {version('torchvision')}"))
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          f"load average before {load_before}, after {load_after}; {args.repeats} repeats, {args.warmup} warm-up")
    print()
    print("| batch | ours: explain (ms, median) | theirs: GradCAM (ms, median) | theirs / ours "
          "| median of paired ratios | maps: min correlation | maps: max abs diff |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['batch']} | {r['ours_ms']:.1f} | {r['theirs_ms']:.1f} | {r['ratio']:.2f} | "
              f"{r['paired_ratio']:.2f} | {r['min_correlation']:.4f} | {r['max_abs_diff']:.3f} |")


if __name__ == "__main__":
    main()
