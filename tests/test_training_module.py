"""LitResNet in a real Lightning Trainer: One Cycle schedule shape, optimizers, metrics."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from training.data import CIFAR10DataModule
from training.module import LitResNet, OptimConfig

SAMPLE = Path(__file__).parent / "data" / "cifar10"


class RecordLR(L.Callback):
    """Learning rate seen by every optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.fixture(scope="module")
def sample() -> CIFAR10DataModule:
    dm = CIFAR10DataModule(dataset=str(SAMPLE), batch_size=50, num_workers=0)
    dm.setup()
    return dm


def _fit(dm: CIFAR10DataModule, epochs: int, batches: int, **optim) -> tuple[L.Trainer, LitResNet, RecordLR]:
    L.seed_everything(0)
    lit = LitResNet(optim={"optimizer": "sgd", "max_lr": 0.05, **optim})
    record = RecordLR()
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=batches, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[record])
    trainer.fit(lit, datamodule=dm)
    return trainer, lit, record


def test_one_cycle_runs_every_step_and_peaks_at_pct_start(sample):
    epochs, batches = 4, 6
    trainer, lit, record = _fit(sample, epochs, batches, pct_start=0.25, div_factor=10, final_div_factor=100)
    total = epochs * batches
    assert trainer.estimated_stepping_batches == total
    # The course computed its step count by hand and never ran the last epoch: every step must run.
    assert len(record.lrs) == total == trainer.global_step
    assert record.lrs[0] == pytest.approx(0.05 / 10)
    peak = max(range(total), key=record.lrs.__getitem__)
    assert peak == round(0.25 * total) - 1 or peak == round(0.25 * total)
    assert record.lrs[peak] == pytest.approx(0.05, rel=0.05)
    assert record.lrs[-1] == pytest.approx(0.05 / 10 / 100, rel=0.3, abs=5e-4)
    rising, falling = record.lrs[: peak + 1], record.lrs[peak:]
    assert rising == sorted(rising) and falling == sorted(falling, reverse=True)
    # Linear annealing: equal decrements after the peak.
    steps = [a - b for a, b in zip(falling, falling[1:])]
    assert max(steps) == pytest.approx(min(steps), rel=1e-3)


def test_training_reduces_the_loss_on_real_images(sample):
    L.seed_everything(0)
    lit = LitResNet(optim={"optimizer": "adam", "max_lr": 2e-3})
    x, y = next(iter(sample.test_dataloader()))
    before = torch.nn.functional.cross_entropy(lit.eval()(x), y).item()
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(lit, datamodule=sample)
    metrics = trainer.callback_metrics
    assert {"train_loss", "train_acc"} <= set(metrics)
    after_train = trainer.test(lit, datamodule=sample, verbose=False)[0]
    assert 0.0 <= after_train["test_acc"] <= 1.0
    assert metrics["train_loss"].item() < before


def test_optimizers_and_label_smoothing_are_configured_as_asked(sample):
    trainer, lit, _ = _fit(sample, 1, 1, momentum=0.8, weight_decay=5e-4)
    opt = trainer.optimizers[0]
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["nesterov"] is True and opt.defaults["weight_decay"] == 5e-4
    assert isinstance(trainer.lr_scheduler_configs[0].scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert trainer.lr_scheduler_configs[0].interval == "step"
    trainer, lit, _ = _fit(sample, 1, 1, optimizer="adam", max_lr=1e-3)
    assert isinstance(trainer.optimizers[0], torch.optim.Adam)


def test_bad_optimizer_settings_are_refused():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        OptimConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="label_smoothing"):
        OptimConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="max_lr"):
        OptimConfig(max_lr=0)
    lit = LitResNet()
    with pytest.raises(ValueError, match="max_lr is not set"):
        lit.configure_optimizers()
