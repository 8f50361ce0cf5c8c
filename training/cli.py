"""resnet-cifar-train: find the LR, fit, test, report, save the release folder and push it to the Hub.

resnet-cifar-push: re-push a finished release folder (after a failed push).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.tuner import Tuner

from resnet_cifar import ResNet9, card, count_parameters
from resnet_cifar.artifacts import save_misclassified

from . import report
from .data import DEFAULT_DATASET, AugmentConfig, CIFAR10DataModule
from .module import OPTIMIZERS, LitResNet
from .resumable_log import ResumableCSVLogger
from .publish import PublishError, check_repo_id, publish

RELEASE_DIR = "release"
LR_FINDER_FILE = "lr_finder.json"


def _limit(value: str) -> int | float:
    """Lightning's limit_*_batches: an int is a batch count, a float a fraction."""
    number = float(value)
    return int(number) if number.is_integer() and "." not in value else number


def build_parser() -> argparse.ArgumentParser:
    """All hyperparameters of a run, with the course's values as defaults."""
    p = argparse.ArgumentParser(prog="resnet-cifar-train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=DEFAULT_DATASET, help="Hub dataset id or local folder in its layout")
    data.add_argument("--image-column", default="img")
    data.add_argument("--label-column", default="label")
    data.add_argument("--val-fraction", type=float, default=0.0, help="part of train held out for validation")
    data.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: cores - 1, at most 8)")
    data.add_argument("--cutout-p", type=float, default=AugmentConfig.cutout_p, help="probability of the 8x8 cutout")
    fit = p.add_argument_group("optimization")
    fit.add_argument("--epochs", type=int, default=24)
    fit.add_argument("--batch-size", type=int, default=512)
    fit.add_argument("--max-lr", type=float, default=None, help="peak One Cycle LR (omit to run the LR finder)")
    fit.add_argument("--lr-find-steps", type=int, default=100)
    fit.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    fit.add_argument("--weight-decay", type=float, default=1e-4)
    fit.add_argument("--momentum", type=float, default=0.9, help="SGD (Nesterov) momentum")
    fit.add_argument("--pct-start", type=float, default=5 / 24, help="fraction of steps rising to the peak")
    fit.add_argument("--div-factor", type=float, default=100.0, help="initial LR = max LR / div factor")
    fit.add_argument("--final-div-factor", type=float, default=100.0, help="final LR = initial LR / this")
    fit.add_argument("--label-smoothing", type=float, default=0.0)
    fit.add_argument("--dropout", type=float, default=0.0)
    fit.add_argument("--logit-scale", type=float, default=1.0, help="multiply logits (0.125 in the DAWNBench ResNet-9)")
    fit.add_argument("--ema-decay", type=float, default=None,
                     help="keep an EMA of the weights (e.g. 0.999) and release it instead of the last weights")
    fit.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    fit.add_argument("--seed", type=int, default=0)
    hw = p.add_argument_group("hardware (Lightning's own)")
    hw.add_argument("--precision", default="32-true", help="e.g. 32-true, bf16-mixed, 16-mixed")
    hw.add_argument("--accelerator", default="auto")
    hw.add_argument("--devices", default="auto")
    hw.add_argument("--strategy", default="auto")
    hw.add_argument("--num-nodes", type=int, default=1)
    hw.add_argument("--limit-train-batches", type=_limit, default=None, help="for smoke runs")
    hw.add_argument("--limit-test-batches", type=_limit, default=None, help="for smoke runs (the report still measures the whole test split)")
    out = p.add_argument_group("output")
    out.add_argument("--output-dir", type=Path, default=Path("runs/resnet9"))
    out.add_argument("--resume", default=None, help="checkpoint path, or 'last' for OUTPUT_DIR/checkpoints/last.ckpt")
    out.add_argument("--misclassified", type=int, default=100, help="mistakes kept in the release")
    out.add_argument("--push-to-hub", metavar="OWNER/NAME", default=None)
    out.add_argument("--private", action="store_true", help="create the Hub repo private")
    return p


def _checked_repo_id(parser: argparse.ArgumentParser, repo_id: str) -> None:
    """Exit with a usage error (status 2) unless repo_id is 'owner/name'."""
    try:
        check_repo_id(repo_id)
    except ValueError as err:
        parser.error(str(err))


def _devices(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def make_trainer(args: argparse.Namespace, resume: str | None = None) -> L.Trainer:
    """A Trainer with CSV logs, a last-epoch checkpoint every epoch and per-step LR logging."""
    resume_step = None
    if resume is not None:
        resume_step = int(torch.load(resume, map_location="cpu", mmap=True, weights_only=False)["global_step"])
    callbacks: list[L.Callback] = [
        # Lightning writes last.ckpt only beside a top-k save: keep the latest epoch (no monitor).
        ModelCheckpoint(dirpath=args.output_dir / "checkpoints", save_last=True, save_top_k=1, every_n_epochs=1),
        LearningRateMonitor(logging_interval="step"),
    ]
    if args.ema_decay is not None:
        if not 0.0 < args.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must be in (0, 1), got {args.ema_decay}")
        # Swaps the average into the model at the end of fit, so test and release use it.
        callbacks.append(EMAWeightAveraging(decay=args.ema_decay))
    return L.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=_devices(str(args.devices)),
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        precision=args.precision,
        default_root_dir=args.output_dir,
        # Flush every row: a killed run must not lose the epochs its checkpoint already covers.
        logger=ResumableCSVLogger(args.output_dir, name="", version="logs", flush_logs_every_n_steps=1,
                                  keep_before_step=resume_step),
        callbacks=callbacks,
        limit_train_batches=args.limit_train_batches,
        limit_test_batches=args.limit_test_batches,
        log_every_n_steps=5,
        num_sanity_val_steps=0,
    )


def resolve_resume(resume: str | None, output_dir: Path) -> str | None:
    """Turn --resume into a checkpoint path that exists, or explain what is missing."""
    if resume is None:
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if resume == "last" else Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no checkpoint at {path}")
    return str(path)


def find_max_lr(trainer: L.Trainer, lit: LitResNet, dm: CIFAR10DataModule, args: argparse.Namespace) -> dict[str, Any]:
    """Lightning's LR finder (exponential sweep, steepest descent); saved so a resumed run reuses it."""
    lit.max_lr = min_lr = 1e-6  # placeholder: the finder sweeps the LR itself from min_lr
    finder = Tuner(trainer).lr_find(lit, datamodule=dm, min_lr=min_lr, max_lr=1.0, num_training=args.lr_find_steps,
                                    attr_name="max_lr", update_attr=False,
                                    early_stop_threshold=None)
    suggestion = finder.suggestion() if finder is not None else None
    if suggestion is None:
        raise ValueError(f"the LR finder found no suggestion in {args.lr_find_steps} steps; "
                         "raise --lr-find-steps or pass --max-lr")
    return {"lr": [float(v) for v in finder.results["lr"]], "loss": [float(v) for v in finder.results["loss"]],
            "suggestion": float(suggestion)}


def recipe(args: argparse.Namespace, lit: LitResNet, found_lr: bool, trainer: L.Trainer) -> dict[str, Any]:
    """The settings the card lists under 'Training recipe'."""
    o = lit.optim
    return {
        "epochs": args.epochs,
        "batch size": args.batch_size,
        "optimizer": "Adam" if o.optimizer == "adam" else f"SGD, Nesterov momentum {o.momentum}",
        "max LR": f"{lit.max_lr:.4g}" + (" (Lightning LR finder)" if found_lr else ""),
        "schedule": f"One Cycle, linear, peak at {o.pct_start:.3f} of the steps, div {o.div_factor:g}, "
                    f"final div {o.final_div_factor:g}, stepped per batch",
        "weight decay": o.weight_decay,
        "label smoothing": o.label_smoothing,
        "EMA of the weights": f"decay {args.ema_decay}" if args.ema_decay else "no",
        "channels_last": o.channels_last,
        "precision": args.precision,
        "hardware": f"{trainer.num_nodes} node(s) x {trainer.num_devices} {type(trainer.accelerator).__name__}",
        "seed": args.seed,
        "dataset": args.dataset if not os.path.isdir(args.dataset) else f"{DEFAULT_DATASET} (local copy)",
    }


def write_release(args: argparse.Namespace, lit: LitResNet, dm: CIFAR10DataModule, trainer: L.Trainer,
                  lr_data: dict[str, Any] | None, fit_seconds: float) -> Path:
    """Measure the final weights on the whole test split and write the complete release folder atomically."""
    model = ResNet9(**lit.hparams["model_config"])
    model.load_state_dict({k: v.detach().cpu().contiguous() for k, v in lit.model.state_dict().items()})
    model.eval()
    assert dm.test_set is not None
    evaluation = report.evaluate(model, dm.test_set.images, dm.test_set.labels)
    mistakes = report.misclassified(dm.test_set.images, evaluation, args.misclassified)
    staging = args.output_dir / f".{RELEASE_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)
    save_misclassified(staging, mistakes)
    rows = report.read_metrics(args.output_dir / "logs" / "metrics.csv")
    table = report.epoch_table(rows)
    plots: list[tuple[str, str]] = []
    if lr_data:
        plots.append((report.plot_lr_finder(lr_data["lr"], lr_data["loss"], lr_data["suggestion"],
                                            staging / "lr_finder.png"), "LR finder"))
    for name, caption in ((report.plot_lr_schedule(rows, staging / "lr_schedule.png"), "One Cycle LR schedule"),
                          (report.plot_curves(table, staging / "metrics.png"), "Loss and accuracy per epoch")):
        if name:
            plots.append((name, caption))
    matrix = report.confusion_matrix(evaluation, model.num_classes)
    plots.append((report.plot_confusion(matrix, model.class_names, staging / "confusion_matrix.png"),
                  "Test confusion matrix"))
    plots += report.plot_mistakes(model, mistakes, staging)
    train_images = len(dm.train_set) if dm.train_set is not None else 0
    steps = trainer.global_step
    info = card.CardInfo(
        test_accuracy=evaluation.accuracy,
        tta_accuracy=evaluation.tta_accuracy,
        test_loss=evaluation.loss,
        per_class_accuracy=report.per_class_accuracy(evaluation, model.class_names),
        recipe=recipe(args, lit, lr_data is not None, trainer),
        parameters=count_parameters(model),
        repo_id=args.push_to_hub or "resnet-cifar/resnet9-cifar10",
        class_names=model.class_names,
        test_images=len(evaluation.labels),
        train_time=f"{fit_seconds / 60:.1f} min for this run's fit ({steps} optimizer steps, "
                   f"{train_images:,} training images)",
        epochs_table=table,
        plots=plots,
    )
    card.render(info).save(staging / "README.md")
    release = args.output_dir / RELEASE_DIR
    shutil.rmtree(release, ignore_errors=True)
    staging.rename(release)
    (args.output_dir / "metrics.json").write_text(json.dumps({
        "test_accuracy": evaluation.accuracy, "test_accuracy_tta": evaluation.tta_accuracy,
        "test_loss": evaluation.loss, "fit_seconds": fit_seconds, "optimizer_steps": steps,
        "epochs": trainer.current_epoch, "max_lr": lit.max_lr, "world_size": trainer.world_size,
    }, indent=2))
    return release


def _model_config(dm: CIFAR10DataModule, args: argparse.Namespace) -> dict[str, Any]:
    return {"num_classes": dm.num_classes, "class_names": list(dm.class_names), "mean": list(dm.mean),
            "std": list(dm.std), "dropout": args.dropout, "logit_scale": args.logit_scale}


def run(args: argparse.Namespace) -> Path | None:
    """The whole pipeline; returns the release folder on rank zero (None on other DDP ranks)."""
    args.output_dir.mkdir(parents=True, exist_ok=True)
    resume = resolve_resume(args.resume, args.output_dir)
    L.seed_everything(args.seed, workers=True)
    dm = CIFAR10DataModule(dataset=args.dataset, batch_size=args.batch_size, image_column=args.image_column,
                           label_column=args.label_column, val_fraction=args.val_fraction, seed=args.seed,
                           num_workers=args.num_workers, augment=AugmentConfig(cutout_p=args.cutout_p))
    dm.setup()
    optim = {"optimizer": args.optimizer, "max_lr": args.max_lr, "weight_decay": args.weight_decay,
             "momentum": args.momentum, "pct_start": args.pct_start, "div_factor": args.div_factor,
             "final_div_factor": args.final_div_factor, "label_smoothing": args.label_smoothing,
             "channels_last": args.channels_last}
    lit = LitResNet(_model_config(dm, args), optim)
    trainer = make_trainer(args, resume)
    lr_file = args.output_dir / LR_FINDER_FILE
    lr_data = None
    if args.max_lr is None:
        if resume and lr_file.is_file():
            lr_data = json.loads(lr_file.read_text())
        else:
            if trainer.world_size > 1:
                raise ValueError("the LR finder runs on one device: pass --max-lr for multi-device training "
                                 "(find it first with a --devices 1 run)")
            lr_data = find_max_lr(trainer, lit, dm, args)
            lr_file.write_text(json.dumps(lr_data))
        lit.max_lr = lr_data["suggestion"]
        print(f"max LR from the LR finder: {lit.max_lr:.4g}", flush=True)
    start = time.perf_counter()
    trainer.fit(lit, datamodule=dm, ckpt_path=resume)
    fit_seconds = time.perf_counter() - start
    trainer.test(lit, datamodule=dm)
    if not trainer.is_global_zero:
        return None
    release = write_release(args, lit, dm, trainer, lr_data, fit_seconds)
    print(f"release written to {release} (test accuracy "
          f"{card.test_accuracy_of(release) * 100:.2f} %)", flush=True)
    return release


def main(argv: list[str] | None = None) -> int:
    """Entry point of resnet-cifar-train."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.push_to_hub is not None:
        _checked_repo_id(parser, args.push_to_hub)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    try:
        release = run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"resnet-cifar-train: error: {err}", file=sys.stderr)
        return 2
    if release is None or args.push_to_hub is None:
        return 0
    try:
        url = publish(release, args.push_to_hub, private=args.private)
    except PublishError as err:
        print(f"resnet-cifar-train: error: {err}", file=sys.stderr)
        return 1
    print(f"pushed {release} to {url}", flush=True)
    return 0


def push_main(argv: list[str] | None = None) -> int:
    """Entry point of resnet-cifar-push: upload a finished release folder in one commit."""
    parser = argparse.ArgumentParser(prog="resnet-cifar-push", description="Push a release folder to the Hub.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("repo_id", metavar="OWNER/NAME")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    _checked_repo_id(parser, args.repo_id)
    try:
        url = publish(args.folder, args.repo_id, private=args.private)
    except PublishError as err:
        print(f"resnet-cifar-push: error: {err}", file=sys.stderr)
        return 1
    print(f"pushed {args.folder} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
