"""resnet-cifar-train: find the LR, fit, test, report, save the release folder and push it to the Hub.

resnet-cifar-push: re-push a finished release folder (after a failed push).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.tuner import Tuner

from resnet_cifar import ResNet9, calibration, card, count_parameters, release
from resnet_cifar.hub import PublishError, check_repo_id, check_write_access
from resnet_cifar.checks import short
from resnet_cifar.model import forward_macs

from . import checkpoints, commands, output_lock, report, speed, whiten
from .config import ConfigError, RunConfig
from .data import CIFAR10DataModule
from .module import Evaluation, LitResNet, recalibrate_batchnorm, schedule_of
from .publish import publish
from .resumable_log import ResumableCSVLogger

RELEASE_DIR = "release"
LR_FINDER_FILE = "lr_finder.json"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class Calibrated:
    """The temperature fitted after test, and the evaluations before and after it was folded into the model."""

    fit: calibration.Calibration
    before: Evaluation
    after: Evaluation


class RunError(RuntimeError):
    """A run that cannot go on or must not be released; the message says why and what to do (exit status 1)."""


class EpochProgressBar(TQDMProgressBar):
    """Lightning's bar, with epochs counted from 1 of N ("Epoch 2/2" on the last of two, not "Epoch 1")."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")


def _devices(value: Any) -> int | str:
    return int(value) if str(value).isdigit() else str(value)


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def check_hardware(config: RunConfig) -> None:
    """Refuse an accelerator this machine lacks or a device count it cannot run, before anything starts (Lightning
    would raise deep inside, or start one process per asked-for device and hang)."""
    hw = config.hardware
    accelerator = str(hw.accelerator).strip().lower()
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"--accelerator must be one of {', '.join(ACCELERATORS)}, got {short(hw.accelerator)}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if accelerator in ("gpu", "cuda") and not gpus:
        raise ConfigError(f"--accelerator {accelerator}: this machine has no CUDA GPU that torch {torch.__version__} "
                          "can use; run with --accelerator cpu (or auto)")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--accelerator mps: this machine has no Apple GPU; run with --accelerator cpu (or auto)")
    kind = speed.device_kind(accelerator)
    on_gpu = kind == "cuda"
    have, unit = {"cuda": (gpus, "GPU(s)"), "mps": (1, "Apple GPU")}.get(kind, (os.cpu_count() or 1, "CPU core(s)"))
    text = str(hw.devices).strip().strip("[]").replace(" ", "")
    if text in ("auto", "-1"):
        return
    parts = [part for part in text.split(",") if part]
    if not parts or not all(part.isdigit() for part in parts):
        raise ConfigError(f"--devices must be a count, a comma-separated list of GPU indices, -1 (all) or auto, "
                          f"got {short(hw.devices)}")
    if len(parts) == 1 and "," not in text:
        count = int(parts[0])
        if count < 1 or count > have:
            raise ConfigError(f"--devices {count}: this machine has {have} {unit}, so from 1 to {have} (or auto)")
        return
    if not on_gpu:
        raise ConfigError(f"--devices {text}: a list of indices names GPUs; on the CPU give a count from 1 to {have}")
    bad = [int(part) for part in parts if int(part) >= have]
    if bad or len(set(parts)) != len(parts):
        raise ConfigError(f"--devices {text}: this machine has GPUs 0 to {have - 1}, each named once")


# What Lightning and torch print that a user of this command does not need (each checked by a test that runs the
# command): deprecations inside Lightning, a summary that cannot size bf16 and counts 0 FLOPs (the run prints its
# own figures), an empty validation list when --val-fraction is 0, and the checkpoint loader's weights_only notice
# (every checkpoint is read weights-only by checkpoints.AtomicCheckpointIO whatever the caller asks).
QUIET_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r"Precision .* is not supported by the model summary.*",
    r"Total length of `.*` across ranks is zero.*",
    r"The number of training batches \(\d+\) is smaller than the logging interval.*",
    r".*`weights_only` was not set.*",
)


class _NoTips(logging.Filter):
    """Lightning's advertisement for its cloud logger, printed once per Trainer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def quiet() -> None:
    """Keep a run's console to what its user needs (QUIET_WARNINGS, Lightning's tips)."""
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in log.filters):
            log.addFilter(_NoTips())


def release_average(trainer: L.Trainer, lit: LitResNet) -> None:
    """Put the EMA of the weights into the model once fit returns, however it returned.

    Lightning's EMAWeightAveraging copies the average in at on_train_end, but a fit resumed from the checkpoint of
    a finished run skips the training loop and that hook with it (FitLoop.run returns at once when done), leaving
    the checkpoint's current weights, not their average: the release would silently lose its EMA. Its own copy
    runs here again; after a normal end it changes nothing (the model already holds the average).
    """
    for callback in trainer.callbacks:
        if isinstance(callback, EMAWeightAveraging) and callback._average_model is not None:
            callback._copy_average_to_current(lit)


def make_trainer(config: RunConfig, resumed: dict[str, Any] | None = None) -> L.Trainer:
    """A Trainer with CSV logs, an atomically written last-epoch checkpoint and per-step LR logging.

    `resumed` is the checkpoint a resumed run continues from: its log keeps the rows that checkpoint covers.
    """
    out, hw = config.output.output_dir, config.hardware
    callbacks: list[L.Callback] = [
        LearningRateMonitor(logging_interval="step", log_momentum=config.optim.cycle_momentum),
        EpochProgressBar(),
        speed.EpochTimer(),
    ]
    every = config.output.checkpoint_every
    if every:
        # Lightning writes last.ckpt only beside a top-k save: keep the latest epoch (no monitor). No version
        # counter: a run has one last.ckpt, never a last-v1.ckpt that --resume last would not find.
        callbacks.insert(0, ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, save_top_k=1,
                                            every_n_epochs=every, enable_version_counter=False))
    if config.optim.ema_decay is not None:
        # Swaps the average into the model at the end of fit, so test and release use it.
        callbacks.append(EMAWeightAveraging(decay=config.optim.ema_decay, update_every_n_steps=config.optim.ema_every))
    return L.Trainer(
        max_epochs=config.optim.epochs,
        accelerator=hw.accelerator,
        devices=_devices(hw.devices),
        strategy=hw.strategy,
        num_nodes=hw.num_nodes,
        precision=hw.precision,
        default_root_dir=out,
        # Flush every row: a killed run must not lose the epochs its checkpoint already covers.
        logger=ResumableCSVLogger(out, name="", version="logs", flush_logs_every_n_steps=1,
                                  keep_before_step=int(resumed["global_step"]) if resumed else None,
                                  epoch_row=resumed.get("epoch_log_row") if resumed else None),
        callbacks=callbacks,
        enable_checkpointing=bool(every),
        plugins=[checkpoints.AtomicCheckpointIO()],
        limit_train_batches=hw.limit_train_batches,
        limit_test_batches=hw.limit_test_batches,
        log_every_n_steps=5,
        enable_model_summary=False,  # it counts 0 FLOPs and cannot size bf16: the run prints its own line (pipeline)
        num_sanity_val_steps=0,
    )


# ---------------------------------------------------------------- the LR finder


def find_max_lr(model_config: dict[str, Any], dm: CIFAR10DataModule, config: RunConfig) -> dict[str, Any]:
    """Lightning's LR finder on a module and a Trainer of its own (the run's module is built afterwards, with the
    LR settled), so it runs all its steps whatever the epoch count.

    The suggestion is a tenth of the LR at the lowest (smoothed) loss of the sweep: Lightning's own pick, the
    steepest point of the curve, lands on the recovery from an early bump as easily as on the real descent.
    A sweep whose loss never fell clearly is refused rather than trained on.
    """
    steps = config.optim.lr_find_steps
    assert dm.train_set is not None
    batches = max(1, math.ceil(len(dm.train_set) / dm.batch_size))
    if isinstance(config.hardware.limit_train_batches, int):
        batches = min(batches, config.hardware.limit_train_batches)
    hw = config.hardware
    finder_trainer = L.Trainer(
        max_epochs=math.ceil(steps / batches) + 1, accelerator=hw.accelerator, devices=1, precision=hw.precision,
        logger=False, enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
        limit_train_batches=hw.limit_train_batches, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=config.output.output_dir, plugins=[checkpoints.AtomicCheckpointIO()],
    )
    sweep = LitResNet(model_config, config.to_dict(), max_lr=FINDER_MIN_LR)  # the sweep sets its own LR each step
    finder = Tuner(finder_trainer).lr_find(sweep, datamodule=dm, min_lr=FINDER_MIN_LR, max_lr=1.0,
                                           num_training=steps, attr_name="max_lr", update_attr=False,
                                           early_stop_threshold=None)
    lrs = [float(v) for v in finder.results["lr"]] if finder is not None else []
    losses = [float(v) for v in finder.results["loss"]] if finder is not None else []
    return {"lr": lrs, "loss": losses, "suggestion": suggest_max_lr(lrs, losses, steps)}


LR_FINDER_RULE = "a tenth of the LR at the lowest loss of the LR finder's sweep"
FINDER_MIN_LR = 1e-6  # where the finder's sweep starts (it ends at 1.0)


def suggest_max_lr(lrs: list[float], losses: list[float], steps: int) -> float:
    """A tenth of the LR at the lowest loss; RunError unless the sweep ran and its loss fell by 10 % or more."""
    hint = "pass --max-lr (e.g. 1e-3 for Adam, 0.1 for SGD)"
    finite = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss)]
    if len(finite) < max(10, steps // 2):
        raise RunError(f"the LR finder ran {len(finite)} of {steps} steps and found no learning rate; {hint}")
    finite = finite[max(1, steps // 20):]  # the first steps measure the initial weights, not the learning rate
    best = min(range(len(finite)), key=lambda i: finite[i][1])
    best_lr, lowest = finite[best]
    start = max(loss for _, loss in finite[: best + 1])  # the top of the descent (early steps can rise first)
    if not lowest < 0.9 * start:
        raise RunError(f"the LR finder's loss never fell clearly ({start:.3f} at most, {lowest:.3f} at best over "
                       f"{len(finite)} steps), so any LR it suggests would be noise; {hint}, or give it more data "
                       "per step (--batch-size)")
    return best_lr / 10


# ---------------------------------------------------------------- the run


def model_config_of(dm: CIFAR10DataModule, config: RunConfig) -> dict[str, Any]:
    """ResNet9's init kwargs for a run: the dataset's classes and statistics, the config's model settings."""
    model = {"num_classes": dm.num_classes, "class_names": list(dm.class_names), "mean": list(dm.mean),
             "std": list(dm.std), "dropout": config.model.dropout, "logit_scale": config.model.logit_scale}
    if config.model.activation != "relu":  # the course's network keeps the config (and checkpoints) it always had
        model.update(activation=config.model.activation, celu_alpha=config.model.celu_alpha)
    return model


def resolve_resume(config: RunConfig) -> Path | None:
    """The checkpoint --resume names, or a refusal to start a new run over an earlier one."""
    out, resume = config.output.output_dir, config.output.resume
    if resume is None:
        earlier = [p for p in (checkpoints.last_checkpoint(out), out / "logs" / "metrics.csv", out / RELEASE_DIR)
                   if p.exists()]
        if earlier:
            raise RunError(f"{out} already holds a run ({earlier[0].relative_to(out)}); continue it with --resume "
                           "last, or pick another --output-dir (nothing was changed)")
        return None
    path = checkpoints.last_checkpoint(out) if resume == "last" else Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no checkpoint at {path}")
    return path


def check_finite(lit: LitResNet, evaluation_loss: float, lr: float | None) -> None:
    """Never save or push a model whose weights or test loss are not finite numbers."""
    bad = [name for name, t in lit.model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad or not math.isfinite(evaluation_loss):
        where = f"weights {bad[:3]}" if bad else f"test loss {evaluation_loss}"
        raise RunError(f"training diverged: the {where} are not finite numbers (max LR {lr}); nothing was saved or "
                       "pushed: lower --max-lr and train again")


def resolve_precision(config: RunConfig) -> str:
    """Settle `--precision auto` to the fastest precision the device computes natively; returns why it is the one."""
    hw = config.hardware
    if hw.precision != speed.AUTO_PRECISION:
        return "given (--precision or the recipe)"
    hw.precision, reason = speed.fastest_precision(hw.accelerator)
    return f"auto: {reason}"


def resolve_input_path(config: RunConfig, saved: dict[str, Any] | None = None) -> str:
    """Settle --data-on-device and --augment-on-device left at auto; returns why the run takes the path it does.

    A resumed run keeps the path its checkpoint ran with (a checkpoint from before the flags existed ran the
    DataLoader workers). A new run on one CPU takes the batch path: on this project's 2-core CPU it was as fast
    as the workers or faster, for the Lightning and the plain loop alike (BENCHMARKS.md, "CPU training: every
    choice side by side"), and it needs no worker process. Elsewhere (GPUs, several devices) the workers.
    """
    data, augment = config.data, config.augment
    if data.data_on_device is not None and augment.augment_on_device is not None:
        return "given (flags or the recipe)"
    if saved is not None:
        before = saved.get("hyper_parameters", {}).get("config") or {}
        for section, key in (("data", "data_on_device"), ("augment", "augment_on_device")):
            if getattr(getattr(config, section), key) is None:
                setattr(getattr(config, section), key, bool((before.get(section) or {}).get(key, False)))
        return "auto: as the resumed checkpoint ran"
    hw = config.hardware
    on_cpu = speed.device_kind(hw.accelerator) == "cpu"
    one_device = str(hw.devices).strip() in ("1", "auto") and hw.num_nodes == 1
    batched = on_cpu and one_device
    if augment.augment_on_device is None:
        augment.augment_on_device = batched if data.data_on_device is None else bool(data.data_on_device)
    if data.data_on_device is None:
        data.data_on_device = batched and augment.augment_on_device
    if batched:
        return "auto: one CPU device, so the batch path (no DataLoader worker takes a core from the training step)"
    return "auto: DataLoader workers (a GPU or several devices)"


def earlier_epoch_times(out: Path, saved: dict[str, Any]) -> tuple[list[float], list[int]]:
    """Epoch timings of a run resumed from a checkpoint written before checkpoints carried them: the run's own
    metrics.json in its output folder, when it covers exactly the checkpoint's epochs (else none)."""
    try:
        earlier = json.loads((out / METRICS_FILE).read_text())
        seconds, images = list(earlier["epoch_seconds"]), list(earlier.get("epoch_images") or [])
    except (OSError, ValueError, KeyError, TypeError):
        return [], []
    if len(seconds) != int(saved.get("epoch", -1)) + 1:
        return [], []
    if len(images) != len(seconds):  # metrics.json before epoch_images: every epoch saw the same images
        images = [int(earlier.get("train_images", 0)) // len(seconds)] * len(seconds)
    return [float(x) for x in seconds], [int(n) for n in images]


def calibrate(lit: LitResNet, trainer: L.Trainer, dm: CIFAR10DataModule) -> Calibrated:
    """Fit a temperature on the test evaluation by two-fold cross-fitting, fold it into the model's logit scale
    and evaluate again: the release's every figure (and its probabilities) are then those of the calibrated model.
    """
    before = lit.evaluation
    assert before is not None
    fitted = calibration.cross_fit(before.probabilities, before.labels)
    scale = lit.model.logit_scale / fitted.temperature
    lit.model.logit_scale = scale
    lit.hparams["model_config"]["logit_scale"] = scale
    if trainer.is_global_zero:  # said once, as Lightning's table is
        print(f"temperature {fitted.temperature:.4f} fitted on the {fitted.images:,} test images (two folds, each "
              f"measured on the other): NLL {fitted.nll_before:.4f} -> {fitted.nll_after:.4f}, ECE "
              f"{fitted.ece_before * 100:.2f} % -> {fitted.ece_after * 100:.2f} %; the release's test evaluation:",
              flush=True)
    trainer.test(lit, datamodule=dm)
    after = lit.evaluation
    assert after is not None
    if not np.array_equal(after.predictions, before.predictions):
        changed = int((after.predictions != before.predictions).sum())
        raise RunError(f"calibration changed {changed} predictions: a positive temperature cannot, so the two test "
                       "passes differ; nothing was released (rerun, or pass --no-calibrate)")
    return Calibrated(fitted, before, after)


def write_release(config: RunConfig, lit: LitResNet, dm: CIFAR10DataModule, trainer: L.Trainer,
                  lr_data: dict[str, Any] | None, metrics: dict[str, Any], calibrated: Calibrated | None) -> Path:
    """Write the complete release folder atomically from the one (calibrated) test evaluation and the run's
    measured figures (`metrics`, also written as the release's metrics.json)."""
    evaluation = lit.evaluation
    assert evaluation is not None and dm.test_set is not None
    model = ResNet9(**lit.hparams["model_config"])
    model.load_state_dict({k: v.detach().cpu().contiguous() for k, v in lit.model.state_dict().items()})
    model.eval()
    mistakes = report.misclassified(dm.test_set.images, evaluation, config.output.misclassified)
    rows = report.read_metrics(config.output.output_dir / "logs" / "metrics.csv")
    table = report.epoch_table(rows)
    planned, momenta = schedule_of(config, float(lit.max_lr), int(lit.total_steps))
    train_images = len(dm.train_set) if dm.train_set is not None else 0

    def fill(staging: Path) -> None:
        model.save_pretrained(staging)
        release.save_misclassified(staging, mistakes)
        release.write_json(staging / release.TRAINING_CONFIG_NAME, {**config.to_dict(), "max_lr_used": lit.max_lr})
        plots = []
        if lr_data:
            plots.append(report.plot_lr_finder(lr_data["lr"], lr_data["loss"], lr_data["suggestion"],
                                               staging / "lr_finder.png"))
        plots.append(report.plot_lr_schedule(planned, rows, staging / "lr_schedule.png", momenta))
        curves = report.plot_curves(table, staging / "metrics.png")
        plots += [curves] if curves else []
        plots.append(report.plot_confusion(report.confusion_matrix(evaluation, model.num_classes), model.class_names,
                                           staging / "confusion_matrix.png"))
        if calibrated is not None:
            plots.append(report.plot_reliability(calibrated.before, calibrated.after, calibrated.fit,
                                                 staging / "reliability.png"))
        plots += report.plot_mistakes(model, mistakes, staging)
        release.write_json(staging / release.METRICS_NAME, metrics)
        recipe = [("max LR used", f"{lit.max_lr:.4g}" + (f" ({LR_FINDER_RULE})" if lr_data else "")),
                  ("hardware", f"{trainer.num_nodes} node(s) x {trainer.num_devices} "
                               f"{type(trainer.accelerator).__name__}"),
                  *config.card_rows()]
        info = card.CardInfo(
            test_accuracy=evaluation.accuracy,
            tta_accuracy=evaluation.tta_accuracy,
            test_loss=evaluation.loss,
            per_class_accuracy=report.per_class_accuracy(evaluation, model.class_names),
            recipe=recipe,
            augmentation=config.augment.describe(),
            parameters=count_parameters(model),
            macs=forward_macs(model.num_classes),
            repo_id=config.output.push_to_hub,
            folder=str((config.output.output_dir / "release").resolve()),
            activation=(f"CELU (alpha {model.celu_alpha:g})" if model.activation == "celu" else "ReLU"),
            class_names=model.class_names,
            test_images=len(evaluation.labels),
            test_split_images=metrics["test_split_images"],
            dataset=str(config.data.dataset),
            train_time=train_time(metrics, train_images),
            run=metrics,
            calibration=calibration_rows(metrics, calibrated),
            epochs_table=table,
            plots=plots,
        )
        card.render(info).save(staging / release.CARD_NAME)

    return release.write(config.output.output_dir / RELEASE_DIR, fill)


def train_time(metrics: dict[str, Any], train_images: int) -> str:
    """What the card says of the fit: how long, how many steps, how many of the training images each epoch really
    saw (a run limited by --limit-train-batches says so), how fast, on what."""
    epochs = len(metrics.get("epoch_seconds") or [])
    seconds = metrics["train_seconds"] if epochs else metrics["fit_seconds"]
    text = f"{seconds / 60:.1f} min ({epochs or metrics['epochs']} epochs, {metrics['optimizer_steps']:,} optimizer steps"
    seen = metrics.get("epoch_images") or []
    if seen and min(seen) < train_images:
        text += (f", {sum(seen):,} images in all: {min(seen):,} of the {train_images:,} training images an epoch "
                 "(a run limited by --limit-train-batches)")
    else:
        text += f", all {train_images:,} training images each epoch"
    if metrics.get("images_per_second"):
        text += f", {metrics['images_per_second']:,.0f} images/s"
    return text + f") on {metrics['device']}, {metrics['precision']} ({metrics['precision_reason']})"


def calibration_rows(metrics: dict[str, Any], calibrated: Calibrated | None) -> list[tuple[str, str]]:
    """The card's calibration table: ECE and NLL before and after the temperature, and how it was fitted."""
    if calibrated is None:
        return []
    fit, n = calibrated.fit, metrics["test_images"]
    t0, t1 = fit.fold_temperatures
    return [
        ("temperature (folded into logit_scale)", f"{fit.temperature:.4f} (geometric mean of {t0:.4f} and {t1:.4f}, "
                                                  f"fitted by NLL on each half of the {n:,} test images)"),
        ("ECE, 15 bins, before", f"{fit.ece_before * 100:.2f} %"),
        ("ECE after, cross-fitted (each half scored with the other half's temperature)",
         f"{fit.ece_after * 100:.2f} %"),
        (f"ECE of these weights on all {n:,} test images", f"{metrics['ece'] * 100:.2f} %"),
        ("NLL before / after (cross-fitted) / these weights",
         f"{fit.nll_before:.4f} / {fit.nll_after:.4f} / {metrics['test_loss']:.4f}"),
    ]


def settle_max_lr(config: RunConfig, saved: dict[str, Any] | None, trainer: L.Trainer, dm: CIFAR10DataModule,
                  model_config: dict[str, Any]) -> tuple[float | None, dict[str, Any] | None]:
    """(the peak LR the run trains with, the LR finder's sweep or None), before the run's module is built:
    --max-lr when given; else the LR a resumed run used (no finder, no flag needed); else the finder's
    suggestion, its sweep written to OUTPUT_DIR/lr_finder.json."""
    lr_file = config.output.output_dir / LR_FINDER_FILE
    if config.optim.max_lr is not None:
        return config.optim.max_lr, None
    if saved is not None:
        return saved.get("max_lr_used"), json.loads(lr_file.read_text()) if lr_file.is_file() else None
    if trainer.world_size > 1:
        raise ConfigError("the LR finder runs on one device: pass --max-lr for multi-device training "
                          "(find it first with a --devices 1 run)")
    lr_data = find_max_lr(model_config, dm, config)
    lr_file.parent.mkdir(parents=True, exist_ok=True)
    lr_file.write_text(json.dumps(lr_data))
    print(f"max LR from the LR finder: {lr_data['suggestion']:.4g}", flush=True)
    return lr_data["suggestion"], lr_data


def run(config: RunConfig) -> Path | None:
    """The whole pipeline, holding the output folder's lock; returns the release folder on rank zero (None on
    other DDP ranks, which run inside the lock their launcher holds)."""
    out = config.output.output_dir
    if out.exists() and not out.is_dir():
        raise RunError(f"--output-dir {out} is a file; pass a folder (it is created if missing)")
    if not output_lock.is_rank_zero_process():
        return pipeline(config)
    with output_lock.hold(out):
        return pipeline(config)


def pipeline(config: RunConfig) -> Path | None:
    """Find the LR, fit, test, write the release (see run)."""
    out = config.output.output_dir
    precision_reason = resolve_precision(config)
    resume = resolve_resume(config)
    saved = checkpoints.load(resume) if resume is not None else None  # checked before the folder is touched
    input_reason = resolve_input_path(config, saved)
    config.validate()  # the settled input path obeys the same rules as a given one
    L.seed_everything(config.random.seed, workers=True)
    dm = CIFAR10DataModule(config.data, config.augment, seed=config.random.seed)
    dm.setup()
    # The run's config with its one automatic size settled: the batch size this split gets (recorded as used).
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, batch_size=dm.batch_size))
    model_config = model_config_of(dm, config)
    if saved is not None:  # everything is checked before anything in the output folder is touched
        checkpoints.check_resumable(saved, resume, config.to_dict(), model_config)
    trainer = make_trainer(config, saved)
    max_lr, lr_data = settle_max_lr(config, saved, trainer, dm, model_config)
    # The same initial weights whether the finder ran or not (said once, above).
    L.seed_everything(config.random.seed, workers=True, verbose=False)
    lit = LitResNet(model_config, config.to_dict(), max_lr=max_lr)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if config.model.whiten and saved is None:  # a resumed run's checkpoint restores the basis it was trained with
        assert dm.train_set is not None
        lit.set_whitening(whiten.basis_of(dm.train_set.images, dm.mean, dm.std))
    total = sum(p.numel() for p in lit.model.parameters())
    print(f"ResNet9: {total:,} parameters ({count_parameters(lit.model):,} trained), "
          f"{forward_macs(lit.model.num_classes) / 1e9:.3f} GMACs per 32x32 image", flush=True)
    trainer.fit(lit, datamodule=dm, ckpt_path=resume, weights_only=True)
    fit_seconds = time.perf_counter() - start
    release_average(trainer, lit)
    lit.fold_whitening()  # the release's plain 3x3 prep convolution, before BatchNorm statistics and test
    if config.model.recalibrate_bn:
        with torch.no_grad():
            seen = recalibrate_batchnorm(lit.model, dm.train_dataloader(), dm.finish_batch)
        print(f"BatchNorm statistics recomputed over {seen:,} training images", flush=True)
    # With a temperature to fit, this pass is its input and the table printed is the calibrated pass's: one table,
    # the release's figures (both passes are in logs/metrics.csv).
    trainer.test(lit, datamodule=dm, verbose=not config.model.calibrate)
    assert lit.evaluation is not None
    check_finite(lit, lit.evaluation.loss, lit.max_lr)
    calibrated = calibrate(lit, trainer, dm) if config.model.calibrate else None
    if not trainer.is_global_zero:
        return None
    timer = next(c for c in trainer.callbacks if isinstance(c, speed.EpochTimer))
    if saved is not None and not timer.seconds:
        timer.seconds, timer.images = earlier_epoch_times(out, saved)
        timer.restored = len(timer.seconds)
    earlier_seconds = sum(timer.seconds[: timer.restored])  # the fit time of the processes before this one
    pace = speed.summary(timer.seconds, timer.images, speed.train_flops_per_image(model_config))
    evaluation = lit.evaluation
    metrics = {
        "dataset": str(config.data.dataset), "split": "test", "test_images": len(evaluation.labels),
        "test_split_images": len(dm.test_set) if dm.test_set is not None else len(evaluation.labels),
        "test_accuracy": evaluation.accuracy, "test_accuracy_tta": evaluation.tta_accuracy,
        "test_loss": evaluation.loss,
        "ece": calibration.expected_calibration_error(evaluation.probabilities, evaluation.labels),
        "calibration": calibrated.fit.to_dict() if calibrated else None,
        "fit_seconds": earlier_seconds + fit_seconds, "fit_seconds_this_process": fit_seconds,
        "resumed_after_epochs": timer.restored, "optimizer_steps": trainer.global_step, "epochs": trainer.current_epoch,
        "max_lr": lit.max_lr, "world_size": trainer.world_size,
        "device": speed.device_name(trainer.strategy.root_device), "torch": torch.__version__,
        "precision": str(trainer.precision), "precision_reason": precision_reason,
        "input_path": "batched on the device" if config.augment.augment_on_device else "DataLoader workers",
        "input_path_reason": input_reason, **pace,
    }
    rel = write_release(config, lit, dm, trainer, lr_data, metrics, calibrated)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    if timer.seconds:
        epochs = len(timer.seconds)
        print(f"trained {epochs} epoch{'s' if epochs != 1 else ''} in {pace['train_seconds']:.1f} s "
              f"({pace['images_per_second']:,.0f} images/s)", flush=True)
    print(f"release written to {rel} (test accuracy {lit.evaluation.accuracy * 100:.2f} % on "
          f"{len(lit.evaluation.labels):,} images)", flush=True)
    return rel


def main(argv: list[str] | None = None) -> int:
    """resnet-cifar-train in this process (the console command is commands.train: the same, lighter to start)."""
    return execute(*commands.parse_train(argv))


def execute(parser: argparse.ArgumentParser, config: RunConfig) -> int:
    """Check the hardware and the Hub id, train, release, push: the exit status of resnet-cifar-train."""
    quiet()
    try:
        check_hardware(config)
        if config.output.push_to_hub is not None:
            check_repo_id(config.output.push_to_hub)
    except (ConfigError, ValueError) as err:
        parser.error(str(err))
    if config.output.push_to_hub is not None:
        try:
            user = check_write_access(config.output.push_to_hub)
        except PublishError as err:
            print(f"resnet-cifar-train: error: {err}; nothing was trained", file=sys.stderr)
            return 2
        print(f"will push to {config.output.push_to_hub} as {user}", flush=True)
    try:
        released = run(config)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"resnet-cifar-train: error: {err}", file=sys.stderr)
        return 2
    except (RunError, output_lock.FolderInUse) as err:
        print(f"resnet-cifar-train: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a full disk, a file size limit, a folder that cannot be written
        print(f"resnet-cifar-train: error: {err}; nothing was released (checkpoints are written whole or not at "
              "all: free the space and continue with --resume last)", file=sys.stderr)
        return 1
    if released is None or config.output.push_to_hub is None:
        return 0
    try:
        url = publish(released, config.output.push_to_hub, private=config.output.private)
    except PublishError as err:
        print(f"resnet-cifar-train: error: {err}", file=sys.stderr)
        return 1
    print(f"pushed {released} to {url}", flush=True)
    return 0


def push_main(argv: list[str] | None = None) -> int:
    """resnet-cifar-push in this process (the console command is commands.push)."""
    parser = commands.push_parser()
    return push(parser, parser.parse_args(argv))


def push(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Upload a finished release folder in one commit: the exit status of resnet-cifar-push."""
    try:
        check_repo_id(args.repo_id, "OWNER/NAME")
        release.files(args.folder)  # a complete release, before the network is asked anything
    except ValueError as err:
        parser.error(str(err))
    try:
        user = check_write_access(args.repo_id)  # a missing, rejected or read-only token: one line, nothing sent
        url = publish(args.folder, args.repo_id, private=args.private)
    except PublishError as err:
        print(f"resnet-cifar-push: error: {err}", file=sys.stderr)
        return 1
    print(f"pushed {args.folder} to {url} as {user}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
