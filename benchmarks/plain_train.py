"""A run of resnet-cifar-train's recipe in a plain PyTorch loop: the yardstick for Lightning's cost on a GPU.

It takes the same flags and recipe files as resnet-cifar-train (training/config.py) and does the same work with
the same pieces, so that the difference in time is the training loop itself:
- the splits decoded by CIFAR10DataModule; training batches from the split kept on the device (DeviceBatches,
  --data-on-device) or from the DataModule's own DataLoader moved to the device;
- the same augmentation and normalization (the DataModule's finish_batch for --augment-on-device batches);
- ResNet9 built after the same seeding, channels_last when the config says, the training forward compiled with
  torch.compile(dynamic=False) under --compile, as LitResNet does;
- the optimizer and the One Cycle schedule of training.module (stepped every batch), cross-entropy with the
  recipe's label smoothing, under torch.autocast(bfloat16 / float16) for the bf16-mixed / 16-mixed precisions
  (what Lightning's precision plugin does; 16-mixed also scales the loss);
- the per-epoch training loss and accuracy accumulated on the device every step (what LitResNet logs), and every
  step's loss (`step_losses`, for comparing precisions step by step);
- after the epochs, BatchNorm statistics recomputed (training.module.recalibrate_batchnorm) and the test split
  evaluated in fp32, plain and with the flip.
Not done: the LR finder (give --max-lr, or a recipe that sets it), checkpoints, CSV logs, the progress bar.

Each epoch is timed from its start to the next epoch's start with the device synchronized (training.speed), as
resnet-cifar-train's metrics.json does; the result is one JSON document on stdout (and in --json).

Run: python benchmarks/plain_train.py --config recipes/dawnbench-24.yaml --dataset DIR [resnet-cifar-train flags]
     [--json FILE]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resnet_cifar import ResNet9  # noqa: E402
from resnet_cifar.evaluate import predict_split  # noqa: E402
from training import speed  # noqa: E402
from training.cli import model_config_of, resolve_input_path, resolve_precision  # noqa: E402
from training.config import ConfigError, RunConfig, build_parser, resolve  # noqa: E402
from training.data import CIFAR10DataModule  # noqa: E402
from training.module import make_optimizer, one_cycle, recalibrate_batchnorm  # noqa: E402

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def pick_device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError(f"--accelerator {accelerator}: no CUDA device here; use --accelerator cpu")
        return torch.device("cuda", 0)
    return torch.device("cpu")


def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, mean: tuple, std: tuple,
             batch_size: int = 1000) -> tuple[float, float]:
    """Test accuracy, plain and with the flip, by the evaluation LitResNet.test_step runs (resnet_cifar.evaluate):
    fp32, eval mode, on contiguous weights."""
    model.to(memory_format=torch.contiguous_format)
    probs, tta = predict_split(model, images, mean, std, batch_size)
    y = labels.astype(np.int64)
    return float((probs.argmax(1) == y).mean()), float((tta.argmax(1) == y).mean())


def train(config: RunConfig) -> dict[str, Any]:
    """The recipe's epochs in a plain loop; the figures resnet-cifar-train's metrics.json gives for the same run."""
    if config.optim.max_lr is None:
        raise ConfigError("the plain loop has no LR finder: pass --max-lr (the DAWNBench recipe sets 0.4)")
    device = pick_device(config.hardware.accelerator)
    resolve_precision(config)  # --precision auto: the same choice the Lightning command makes
    resolve_input_path(config)  # and the same input path
    L.seed_everything(config.random.seed, workers=True)
    dm = CIFAR10DataModule(config.data, config.augment, seed=config.random.seed)
    dm.setup()
    assert dm.train_set is not None and dm.test_set is not None
    model_config = model_config_of(dm, config)
    model = ResNet9(**model_config).to(device)
    memory = torch.channels_last if config.model.channels_last else torch.contiguous_format
    model.to(memory_format=memory)
    forward = torch.compile(model, dynamic=False) if config.hardware.compile else model

    batches: Any = dm.device_batches(device) if config.data.data_on_device else dm.train_dataloader()
    steps_per_epoch = len(batches)
    if isinstance(config.hardware.limit_train_batches, int):
        steps_per_epoch = min(steps_per_epoch, config.hardware.limit_train_batches)
    optimizer = make_optimizer(model.parameters(), config, config.optim.max_lr)
    schedule = one_cycle(optimizer, config.optim.max_lr, steps_per_epoch * config.optim.epochs, config)
    dtype = AUTOCAST.get(config.hardware.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    smoothing = config.optim.label_smoothing

    seconds: list[float] = []
    images: list[int] = []
    epochs: list[dict[str, float]] = []
    step_losses: list[torch.Tensor] = []  # every step's loss, kept on the device (no sync per step)
    start = time.perf_counter()
    speed.synchronize(device)
    for epoch in range(config.optim.epochs):
        epoch_start = time.perf_counter()
        getattr(getattr(batches, "sampler", None), "set_epoch", lambda e: None)(epoch)
        model.train()
        loss_sum = torch.zeros((), device=device)
        right = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for step, batch in enumerate(batches):
            if step >= steps_per_epoch:
                break
            batch = dm.finish_batch([t.to(device, non_blocking=True) for t in batch])
            x, y = batch[0].contiguous(memory_format=memory), batch[1]
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = forward(x)
                loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            loss_sum += loss.detach() * len(y)
            step_losses.append(loss.detach().float())
            right += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
        speed.synchronize(device)
        seconds.append(time.perf_counter() - epoch_start)
        images.append(seen)
        epochs.append({"epoch": epoch, "train_loss": float(loss_sum) / seen, "train_acc": int(right) / seen})
    train_seconds = time.perf_counter() - start

    if config.model.recalibrate_bn:
        with torch.no_grad():
            recalibrate_batchnorm(model, batches, dm.finish_batch)
    accuracy, tta = evaluate(model, dm.test_set.images, dm.test_set.labels, dm.mean, dm.std)
    return {"loop": "plain PyTorch", "device": speed.device_name(device),
            "torch": torch.__version__, "precision": config.hardware.precision, "seed": config.random.seed,
            "test_accuracy": accuracy, "test_accuracy_tta": tta, "test_images": len(dm.test_set.labels),
            "optimizer_steps": steps_per_epoch * config.optim.epochs, "loop_seconds": train_seconds,
            "epochs_logged": epochs, "step_losses": [float(x) for x in step_losses],
            **speed.summary(seconds, images, speed.train_flops_per_image(model_config))}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(prog="plain_train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    out = args.__dict__.pop("json")
    try:
        result = train(resolve(args))
    except (ConfigError, ValueError) as err:
        parser.error(str(err))
    text = json.dumps(result, indent=2)
    if out is not None:
        out.write_text(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
