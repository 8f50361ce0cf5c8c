"""Lightning overhead: seconds per training step of LitResNet in a Trainer against a plain PyTorch loop.

Both do the same work on the CPU, one process, the same torch threads:
- the same ResNet9 (same initial weights), channels_last as LitResNet sets it (`ModelConfig.channels_last`),
  inputs made channels_last in forward as LitResNet.forward does;
- the same optimizer (Adam with weight decay 1e-4, or SGD with Nesterov) and OneCycleLR with the same
  settings, stepped after every batch;
- cross-entropy (same label smoothing), and per-epoch train loss and torchmetrics accuracy accumulated
  every step (what LitResNet logs with on_epoch=True; the plain loop keeps a running loss sum and updates
  the same MulticlassAccuracy);
- the same pre-built batches: the 400 train images of tests/data/cifar10, normalized once, tiled, cut into
  a list of (x, y) CPU tensors that both iterate (no DataLoader workers, no augmentation: only the
  training step is measured).

Lightning: `Trainer(accelerator="cpu", devices=1, max_epochs=1, enable_checkpointing=False, logger=False,
enable_progress_bar=False, enable_model_summary=False)`, `fit(LitResNet(...), train_dataloaders=batches)`.

Timing: `time.perf_counter()` at the start of every batch: in Lightning a Callback's on_train_batch_start
(called after the batch is fetched and moved to the device), in the plain loop right after the batch is
taken from the list. A step's time is the interval to the next batch start, so it includes everything
the loop does per batch (forward, backward, optimizer and scheduler steps, metric updates, Lightning's
hooks, logging bookkeeping, progress tracking, fetching the next batch). Each run does `--warmup` steps
(dropped), `--steps` timed steps and one final untimed batch. Process CPU time is recorded at the same
points (a figure less sensitive to other jobs on the machine). Runs alternate Lightning and plain,
`--repeats` times each (the order flips every repetition), after one untimed short run of each.
Reported: median seconds per step of each, the ratio Lightning / plain, the median and range of the
per-run ratios, and whole-run wall time per batch (model, Trainer and optimizer setup included).

On a shared machine a ResNet9 step varies by tens of percent, more than the 5% to be resolved. So the
same comparison is repeated with the network swapped for `TinyNet` (one linear layer; in Lightning
`lit.model` is replaced, everything else unchanged): its steps take milliseconds, which exposes each
loop's own fixed cost per step (torch on 1 thread for this part, both loops). Lightning's extra fixed
cost divided by the plain ResNet9 step time is the overhead the ResNet9 ratio should show without noise.

On a machine shared with other jobs, `--threads 1` gives steadier ResNet9 figures: with 2 threads every
op waits at an OpenMP barrier for whichever thread the scheduler has parked.

Run: `python benchmarks/lightning_overhead.py [--steps 4] [--warmup 1] [--repeats 4] [--batch-size 64]
[--optimizer adam] [--threads N] [--fixed-steps 100]`
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from resnet_cifar import ResNet9
from resnet_cifar.preprocess import CIFAR10_MEAN, CIFAR10_STD
from training.data import NormalizeCollate, decode_split, local_cache_dir
from training.config import RunConfig
from training.module import LitResNet

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "cifar10"
MAX_LR = 0.01


def make_batches(n_batches: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Normalized NCHW float batches of the sample's train images, tiled to n_batches * batch_size."""
    import datasets

    data = datasets.load_dataset(str(SAMPLE), cache_dir=local_cache_dir(SAMPLE))
    images, labels = decode_split(data["train"], "img", "label", 10, "sample train")
    n = n_batches * batch_size
    idx = np.arange(n) % len(labels)
    x, y, _ = NormalizeCollate(CIFAR10_MEAN, CIFAR10_STD)(list(zip(images[idx], labels[idx].tolist(), idx)))
    return [(x[i:i + batch_size].clone(), y[i:i + batch_size].clone()) for i in range(0, n, batch_size)]


class PrebuiltBatches:
    """An iterable over ready (x, y) batches (Lightning would take a bare list as one loader per item)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchStartClock(L.Callback):
    """Records perf_counter and process CPU time at every on_train_batch_start."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())


class TinyNet(nn.Module):
    """One linear layer on the flattened image: a network that costs almost nothing, to expose the loops' own cost."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(3 * 32 * 32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the flattened image."""
        return self.fc(x.flatten(1))


def fresh(net: nn.Module, channels_last: bool) -> nn.Module:
    """A copy of `net` (same initial weights every run), channels_last as LitResNet sets it."""
    net = copy.deepcopy(net)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def run_lightning(net: nn.Module, optim: dict, batches: PrebuiltBatches) -> tuple[list[float], list[float], float]:
    """(per-step wall intervals, per-step CPU intervals, whole run seconds) of one Trainer.fit."""
    t0 = time.perf_counter()
    lit = LitResNet(config=RunConfig.from_dict({"optim": optim}).to_dict())
    lit.model = fresh(net, lit.config.model.channels_last)
    clock = BatchStartClock()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, enable_checkpointing=False, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[clock])
    trainer.fit(lit, train_dataloaders=batches)
    total = time.perf_counter() - t0
    assert len(clock.wall) == len(batches), (len(clock.wall), len(batches))
    return list(np.diff(clock.wall)), list(np.diff(clock.cpu)), total


def run_plain(net: nn.Module, optim: dict, batches: PrebuiltBatches) -> tuple[list[float], list[float], float]:
    """The same training epoch written as a plain PyTorch loop; same work as run_lightning."""
    t0 = time.perf_counter()
    config = RunConfig.from_dict({"optim": optim})
    o = config.optim
    model = fresh(net, config.model.channels_last)
    model.train()
    if o.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=o.max_lr, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=o.max_lr, momentum=o.momentum, nesterov=True,
                              weight_decay=o.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=o.max_lr, total_steps=len(batches), pct_start=o.pct_start, anneal_strategy="linear",
        div_factor=o.div_factor, final_div_factor=o.final_div_factor, three_phase=False,
        cycle_momentum=o.cycle_momentum,
    )
    accuracy = MulticlassAccuracy(num_classes=model.num_classes, average="micro")
    loss_sum, seen = torch.zeros(()), 0
    wall, cpu = [], []
    for x, y in batches:
        wall.append(time.perf_counter())
        cpu.append(time.process_time())
        if o.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=o.label_smoothing)
        accuracy.update(logits.detach(), y)
        loss_sum += loss.detach() * len(y)
        seen += len(y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    epoch_loss, epoch_acc = float(loss_sum / seen), float(accuracy.compute())  # what Lightning logs at epoch end
    assert np.isfinite(epoch_loss) and 0 <= epoch_acc <= 1
    return list(np.diff(wall)), list(np.diff(cpu)), time.perf_counter() - t0


RUNNERS = {"lightning": run_lightning, "plain": run_plain}
Runs = dict[str, list[tuple[list[float], list[float], float]]]


def interleaved(net: nn.Module, optim: dict, batches: PrebuiltBatches, repeats: int, label: str) -> Runs:
    """One untimed run of each, then `repeats` runs of each alternating Lightning and plain."""
    threads = torch.get_num_threads()
    for run in RUNNERS.values():  # oneDNN primitives, allocator, lazy imports
        run(net, optim, PrebuiltBatches(batches.batches[:2]))
    results: Runs = {k: [] for k in RUNNERS}
    for r in range(repeats):
        for name in (("lightning", "plain") if r % 2 == 0 else ("plain", "lightning")):
            results[name].append(RUNNERS[name](net, optim, batches))
            if torch.get_num_threads() != threads:
                raise RuntimeError(f"{name} changed torch threads to {torch.get_num_threads()}")
        print(f"{label}: repeat {r + 1}/{repeats} done, loadavg {loadavg()}", flush=True)
    return results


def report(results: Runs, warmup: int, n_batches: int, unit: float, unit_name: str) -> dict[str, dict[str, float]]:
    """Print the table and ratios of one interleaved comparison; return median wall and CPU step times."""
    step = {k: [s for wall, _, _ in v for s in wall[warmup:]] for k, v in results.items()}
    cpu = {k: [s for _, c, _ in v for s in c[warmup:]] for k, v in results.items()}
    whole = {k: statistics.median(t / n_batches for _, _, t in v) for k, v in results.items()}
    paired = [statistics.median(lw[warmup:]) / statistics.median(pw[warmup:])
              for (lw, _, _), (pw, _, _) in zip(results["lightning"], results["plain"])]
    med = {k: statistics.median(v) for k, v in step.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"\n| loop | {unit_name}/step (median of {len(step['plain'])}) | min .. max | CPU {unit_name}/step (median) "
          f"| whole run {unit_name}/batch (median) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for k in RUNNERS:
        print(f"| {k} | {med[k] * unit:.3f} | {min(step[k]) * unit:.3f} .. {max(step[k]) * unit:.3f} "
              f"| {med_cpu[k] * unit:.3f} | {whole[k] * unit:.3f} |")
    print(f"\nLightning / plain: {med['lightning'] / med['plain']:.3f} (step medians), "
          f"{statistics.median(paired):.3f} (median of per-run ratios, range {min(paired):.3f} .. {max(paired):.3f}), "
          f"{med_cpu['lightning'] / med_cpu['plain']:.3f} (CPU per step), "
          f"{whole['lightning'] / whole['plain']:.3f} (whole run, setup included)")
    return {"wall": med, "cpu": med_cpu}


def loadavg() -> str:
    """The first three fields of /proc/loadavg."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    """ResNet9: interleaved Lightning and plain runs; then the same with TinyNet for the fixed per-step cost."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="timed ResNet9 steps per run")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every run")
    p.add_argument("--repeats", type=int, default=4, help="runs of each, interleaved")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--fixed-steps", type=int, default=100, help="timed TinyNet steps per run (0: skip)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    print(f"python {platform.python_version()}, torch {torch.__version__}, lightning {L.__version__}, "
          f"threads {torch.get_num_threads()}, cores {os.cpu_count()}, batch {args.batch_size}, "
          f"optimizer {args.optimizer}")
    print(f"loadavg before: {loadavg()}", flush=True)
    optim = {"optimizer": args.optimizer, "max_lr": MAX_LR}
    torch.manual_seed(0)

    batches = PrebuiltBatches(make_batches(args.warmup + args.steps + 1, args.batch_size))
    results = interleaved(ResNet9(), optim, batches, args.repeats, "ResNet9")
    print(f"\nResNet9: {args.repeats} runs each, {args.steps} timed steps per run after {args.warmup} warm-up")
    resnet = report(results, args.warmup, len(batches), 1.0, "s")

    if args.fixed_steps > 0:
        # One thread: TinyNet's ops are too small to split, and a second OpenMP thread descheduled by other
        # jobs would stall every op at its barrier, burying the Python-side cost this part is after.
        threads, warmup = torch.get_num_threads(), 5
        torch.set_num_threads(1)
        batches = PrebuiltBatches(make_batches(warmup + args.fixed_steps + 1, args.batch_size))
        results = interleaved(TinyNet(), optim, batches, args.repeats, "TinyNet")
        torch.set_num_threads(threads)
        print(f"\nTinyNet (the loops' own cost): {args.repeats} runs each, {args.fixed_steps} timed steps per run "
              f"after {warmup} warm-up")
        tiny = report(results, warmup, len(batches), 1e3, "ms")
        for clock in ("wall", "cpu"):
            extra = tiny[clock]["lightning"] - tiny[clock]["plain"]
            step = resnet[clock]["plain"]
            print(f"\nLightning's extra fixed cost ({clock}): {extra * 1e3:.2f} ms/step = {extra / step:.2%} of the "
                  f"plain ResNet9 step ({step:.3f} s), i.e. an implied ResNet9 ratio of {1 + extra / step:.4f}")
    print(f"loadavg after: {loadavg()}")


if __name__ == "__main__":
    main()
