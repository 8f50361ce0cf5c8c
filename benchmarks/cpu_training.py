"""CPU training speed, side by side in one run: what each of resnet-cifar-train's CPU choices is worth, and what
this CPU can physically do.

Four parts, all in this one process (or its children), one after the other, on the same machine and load:

1. Peak: this CPU's measured matmul rate in fp32 and in bf16 (square `torch.matmul` of --matmul-size, best of
   --matmul-repeats), the physical limit the training step is compared with.
2. Training step: ResNet9 as the release recipe builds it (logit scale 1/8), SGD with Nesterov momentum 0.9 and
   weight decay 5e-4, cross-entropy with label smoothing 0.2, on fixed normalized inputs (a step's time does not
   depend on the pixels). Variants: fp32 and bf16 autocast, contiguous and channels_last, batch 256, 512, and
   512 as 2 x 256 with accumulated gradients (the same averaged gradient, but BatchNorm normalizes each half on
   its own statistics, so not quite the recipe's math). Interleaved: every repetition runs every variant
   (the order reverses each repetition), one untimed warm-up step then --steps timed steps; the median step.
   images/s and achieved TFLOP/s (training.speed.train_flops_per_image: forward + backward) against the peak of
   the precision the convolutions run in.
3. Whole runs: `resnet-cifar-train` (Lightning, as `python -m training.cli` from this checkout) and `benchmarks/plain_train.py` (a plain PyTorch loop), each with
   the training augmentation in DataLoader workers (albumentations per image, the default worker count) and as
   batched tensor ops on the split held in memory (`--augment-on-device --data-on-device`), on the real dataset
   at --dataset with the release recipe (recipes/cpu-dawnbench-24.yaml): 2 epochs of --run-batches batches, the
   last epoch's images/s (the first pays for warm-up). Interleaved over --run-repeats repetitions.
4. Learning: the plain loop (which does exactly the Lightning run's work, tests/test_fast_path.py) in fp32 and in
   bf16-mixed from the same seed on the same batches: the recipe's One Cycle compressed into --learn-steps steps
   of 512 real training images, every step's loss side by side, then accuracy on the whole test split (fp32).

Run: python benchmarks/cpu_training.py --dataset ../shared/data/cifar10 [--steps 3] [--repeats 2]
     [--run-batches 6] [--run-repeats 2] [--learn-steps 60] [--json FILE] [--skip PART ...]
Prints markdown tables and writes every figure to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from resnet_cifar import ResNet9  # noqa: E402
from training import speed  # noqa: E402

RECIPE = ROOT / "recipes" / "cpu-dawnbench-24.yaml"
PARTS = ("peak", "step", "runs", "learn")


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = speed.cpu_flags()
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16"}), "torch": torch.__version__,
            "python": platform.python_version()}


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# ---------------------------------------------------------------- 1. peak


def matmul_peak(size: int, repeats: int) -> dict[str, float]:
    """Best TFLOP/s of a size x size matmul in fp32 and bf16."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
        out[name] = 2 * size ** 3 / best / 1e12
    return out


# ---------------------------------------------------------------- 2. the training step


VARIANTS = [  # name, autocast dtype, channels_last, batch, accumulation steps
    ("fp32, batch 512", None, False, 512, 1),
    ("fp32, channels_last, batch 512", None, True, 512, 1),
    ("bf16, batch 512", torch.bfloat16, False, 512, 1),
    ("bf16, channels_last, batch 256", torch.bfloat16, True, 256, 1),
    ("bf16, channels_last, batch 512 (the release)", torch.bfloat16, True, 512, 1),
    ("bf16, channels_last, 2 x 256 accumulated", torch.bfloat16, True, 256, 2),
]


class Step:
    """One variant's model, optimizer and inputs, and its training step."""

    def __init__(self, dtype: torch.dtype | None, channels_last: bool, batch: int, accumulate: int) -> None:
        torch.manual_seed(0)
        self.model = ResNet9(logit_scale=0.125).train()
        self.memory = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                         weight_decay=5e-4)
        self.x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=self.memory)
        self.y = torch.randint(0, 10, (batch,))
        self.dtype, self.accumulate = dtype, accumulate
        self.images = batch * accumulate

    def __call__(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        for _ in range(self.accumulate):
            with torch.autocast("cpu", dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                loss = F.cross_entropy(self.model(self.x), self.y, label_smoothing=0.2) / self.accumulate
            loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def training_steps(steps: int, repeats: int, peak: dict[str, float] | None) -> list[dict[str, Any]]:
    flops = speed.train_flops_per_image({"logit_scale": 0.125})
    built = [(name, Step(dtype, cl, batch, acc)) for name, dtype, cl, batch, acc in VARIANTS]
    times: dict[str, list[float]] = {name: [] for name, _ in built}
    cpu: dict[str, list[float]] = {name: [] for name, _ in built}
    for repeat in range(repeats):
        for name, step in (built if repeat % 2 == 0 else built[::-1]):
            step()  # warm-up: oneDNN picks its kernels for this shape and layout
            for _ in range(steps):
                wall, proc = time.perf_counter(), time.process_time()
                step()
                times[name].append(time.perf_counter() - wall)
                cpu[name].append(time.process_time() - proc)
            print(f"  step: {name}: {step.images / statistics.median(times[name][-steps:]):.0f} images/s",
                  flush=True)
    rows = []
    for (name, step), (_, dtype, *_rest) in zip(built, VARIANTS):
        seconds = statistics.median(times[name])
        rate = step.images / seconds
        row = {"variant": name, "images": step.images, "median_step_seconds": seconds, "images_per_second": rate,
               "cpu_seconds_per_step": statistics.median(cpu[name]), "tflops": rate * flops / 1e12}
        if peak:
            row["of_peak"] = row["tflops"] / peak["bf16" if dtype is torch.bfloat16 else "fp32"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------- 3. whole runs


RUNS = [  # name, command, extra flags
    ("Lightning, augmentation in DataLoader workers", "train", ["--no-augment-on-device", "--no-data-on-device"]),
    ("Lightning, batched augmentation on the split in memory", "train", []),
    ("plain loop, augmentation in DataLoader workers", "plain", ["--no-augment-on-device", "--no-data-on-device"]),
    ("plain loop, batched augmentation on the split in memory", "plain", []),
]


def whole_run(kind: str, extra: list[str], dataset: str, batches: int, work: Path) -> dict[str, Any]:
    common = ["--config", str(RECIPE), "--dataset", dataset, "--epochs", "2", "--limit-train-batches", str(batches),
              *extra]
    if kind == "train":
        out = Path(tempfile.mkdtemp(dir=work))
        command = [sys.executable, "-m", "training.cli", *common, "--output-dir", str(out),
                   "--limit-test-batches", "1", "--no-calibrate", "--misclassified", "0", "--checkpoint-every", "0",
                   "--no-recalibrate-bn"]
        result_file = out / "metrics.json"
    else:
        result_file = Path(tempfile.mkstemp(dir=work, suffix=".json")[1])
        command = [sys.executable, str(ROOT / "benchmarks" / "plain_train.py"), *common, "--no-recalibrate-bn",
                   "--json", str(result_file)]
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{finished.stderr[-3000:]}")
    result = json.loads(result_file.read_text())
    return {"images_per_second": result["epoch_images"][-1] / result["epoch_seconds"][-1],
            "process_seconds": time.perf_counter() - start}


def whole_runs(dataset: str, batches: int, repeats: int) -> list[dict[str, Any]]:
    rates: dict[str, list[float]] = {name: [] for name, *_ in RUNS}
    walls: dict[str, list[float]] = {name: [] for name, *_ in RUNS}
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(repeats):
            for name, kind, extra in (RUNS if repeat % 2 == 0 else RUNS[::-1]):
                got = whole_run(kind, extra, dataset, batches, Path(work))
                rates[name].append(got["images_per_second"])
                walls[name].append(got["process_seconds"])
                print(f"  run: {name}: {got['images_per_second']:.0f} images/s", flush=True)
    return [{"run": name, "images_per_second": statistics.median(rates[name]), "each": rates[name],
             "process_seconds": statistics.median(walls[name])} for name, *_ in RUNS]


# ---------------------------------------------------------------- 4. learning


def learning(dataset: str, steps: int) -> dict[str, Any]:
    import plain_train  # noqa: PLC0415  (benchmarks/plain_train.py)
    from training.config import build_parser, resolve  # noqa: PLC0415

    out = {}
    for precision in ("32-true", "bf16-mixed"):
        args = build_parser().parse_args(["--config", str(RECIPE), "--dataset", dataset, "--epochs", "1",
                                          "--limit-train-batches", str(steps), "--precision", precision])
        result = plain_train.train(resolve(args))
        out[precision] = {key: result[key] for key in ("step_losses", "test_accuracy", "test_accuracy_tta",
                                                       "test_images", "images_per_second", "epochs_logged")}
        print(f"  learn: {precision}: test {result['test_accuracy']:.4f}", flush=True)
    a, b = out["32-true"]["step_losses"], out["bf16-mixed"]["step_losses"]
    out["max_abs_loss_difference"] = max(abs(x - y) for x, y in zip(a, b, strict=True))
    out["final_loss_difference"] = b[-1] - a[-1]
    return out


# ---------------------------------------------------------------- report


def report(result: dict[str, Any]) -> str:
    lines = []
    if "peak" in result:
        p = result["peak"]
        lines += [f"Matmul peak ({result['matmul_size']}^2): fp32 {p['fp32']:.3f} TFLOP/s, "
                  f"bf16 {p['bf16']:.3f} TFLOP/s ({p['bf16'] / p['fp32']:.1f}x)", ""]
    if "step" in result:
        lines += ["| training step | images/step | median s/step | images/s | TFLOP/s | of peak |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['variant']} | {r['images']} | {r['median_step_seconds']:.2f} | {r['images_per_second']:.0f} "
                  f"| {r['tflops']:.3f} | {r.get('of_peak', float('nan')):.0%} |" for r in result["step"]]
        lines.append("")
    if "runs" in result:
        lines += ["| whole run (last epoch) | images/s | each | process s |", "| --- | ---: | --- | ---: |"]
        lines += [f"| {r['run']} | {r['images_per_second']:.0f} | {', '.join(f'{x:.0f}' for x in r['each'])} "
                  f"| {r['process_seconds']:.0f} |" for r in result["runs"]]
        lines.append("")
    if "learn" in result:
        learn = result["learn"]
        a, b = learn["32-true"], learn["bf16-mixed"]
        lines += ["| step | fp32 loss | bf16 loss |", "| ---: | ---: | ---: |"]
        n = len(a["step_losses"])
        for i in sorted({0, 1, 2, 4, 9, 19, 29, 39, 49, n - 1} & set(range(n))):
            lines.append(f"| {i + 1} | {a['step_losses'][i]:.4f} | {b['step_losses'][i]:.4f} |")
        lines += ["", f"Test accuracy ({a['test_images']} images): fp32 {a['test_accuracy']:.2%}, "
                      f"bf16 {b['test_accuracy']:.2%}; largest step-loss difference "
                      f"{learn['max_abs_loss_difference']:.4f}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(ROOT.parent / "shared" / "data" / "cifar10"),
                        help="CIFAR-10 folder (HF parquet layout) or Hub id, for parts runs and learn")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--matmul-repeats", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per variant and repetition")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--run-batches", type=int, default=6, help="batches of 512 per epoch of each whole run")
    parser.add_argument("--run-repeats", type=int, default=2)
    parser.add_argument("--learn-steps", type=int, default=60)
    parser.add_argument("--skip", nargs="*", choices=PARTS, default=[])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    result: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "load_before": load(),
                              "matmul_size": args.matmul_size, "args": {k: str(v) for k, v in vars(args).items()}}
    print(json.dumps(result["machine"]), flush=True)
    parts = {"peak": lambda: matmul_peak(args.matmul_size, args.matmul_repeats),
             "step": lambda: training_steps(args.steps, args.repeats, result.get("peak")),
             "runs": lambda: whole_runs(args.dataset, args.run_batches, args.run_repeats),
             "learn": lambda: learning(args.dataset, args.learn_steps)}
    for name, part in parts.items():
        if name in args.skip:
            continue
        result[name] = part()
        result["load_after"] = load()
        if args.json is not None:  # after every part: a later failure keeps what was measured
            args.json.write_text(json.dumps(result, indent=2))
    print(report(result))
    print(f"load average (1 min): {result['load_before']:.2f} before, {result['load_after']:.2f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
