"""LitResNet in a real Lightning Trainer on the real CIFAR-10 sample: the One Cycle schedule and its momentum, the
optimizers, the loss, the one test evaluation, and BatchNorm recalibration."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SAMPLE

from training.config import ConfigError, RunConfig
from training.data import CIFAR10DataModule
from training.module import LitResNet, recalibrate_batchnorm, schedule_of


class Record(L.Callback):
    """Learning rate and momentum seen by every optimizer step, and the loss each step returned."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.momenta: list[float | None] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        group = trainer.optimizers[0].param_groups[0]
        self.lrs.append(group["lr"])
        self.momenta.append(group.get("momentum"))


def config(**optim) -> RunConfig:
    return RunConfig.from_dict({"data": {"dataset": str(SAMPLE), "batch_size": 50, "num_workers": 0},
                                "optim": {"optimizer": "sgd", "max_lr": 0.05, **optim}})


@pytest.fixture(scope="module")
def sample() -> CIFAR10DataModule:
    dm = CIFAR10DataModule(config().data)
    dm.setup()
    return dm


def trainer(epochs: int, batches: int | None = None, callbacks=()) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, limit_train_batches=batches, accelerator="cpu", logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     callbacks=list(callbacks))


def fit(dm: CIFAR10DataModule, epochs: int, batches: int, **optim) -> tuple[L.Trainer, LitResNet, Record]:
    L.seed_everything(0)
    lit = LitResNet(config=config(epochs=epochs, **optim).to_dict())
    record = Record()
    t = trainer(epochs, batches, [record])
    t.fit(lit, datamodule=dm)
    return t, lit, record


def test_one_cycle_runs_every_step_and_peaks_at_pct_start(sample):
    epochs, batches = 4, 6
    t, lit, record = fit(sample, epochs, batches, pct_start=0.25, div_factor=10, final_div_factor=100)
    total = epochs * batches
    assert t.estimated_stepping_batches == total
    # The course computed its step count by hand and never ran the last epoch: every step must run.
    assert len(record.lrs) == total == t.global_step
    assert record.lrs[0] == pytest.approx(0.05 / 10)
    peak = max(range(total), key=record.lrs.__getitem__)
    assert peak in (round(0.25 * total) - 1, round(0.25 * total))
    assert record.lrs[peak] == pytest.approx(0.05, rel=0.05)
    rising, falling = record.lrs[: peak + 1], record.lrs[peak:]
    assert rising == sorted(rising) and falling == sorted(falling, reverse=True)
    steps = [a - b for a, b in zip(falling, falling[1:])]
    assert max(steps) == pytest.approx(min(steps), rel=1e-3), "linear annealing"
    # The whole schedule, computed before a run, is the one the run follows.
    planned, _ = schedule_of(lit.config, 0.05, total)
    assert planned == pytest.approx(record.lrs, rel=1e-9)


def test_sgd_momentum_is_what_the_flag_says(sample):
    """OneCycleLR cycles momentum by default, overwriting SGD's: --momentum 0.9 ran 0.95 -> 0.85 -> 0.95."""
    _, _, constant = fit(sample, 2, 4, momentum=0.9)
    assert constant.momenta == [0.9] * 8
    _, _, cycled = fit(sample, 2, 4, momentum=0.9, cycle_momentum=True)
    assert cycled.momenta[0] == pytest.approx(0.95) and min(cycled.momenta) == pytest.approx(0.85, abs=0.02)
    _, momenta = schedule_of(config(cycle_momentum=True), 0.05, 8)
    assert momenta == pytest.approx(cycled.momenta)


def test_cycle_momentum_needs_sgd():
    with pytest.raises(ConfigError, match="--cycle-momentum needs --optimizer sgd"):
        config(optimizer="adam", cycle_momentum=True)


def test_optimizers_are_configured_as_asked(sample):
    t, _, _ = fit(sample, 1, 1, momentum=0.8, weight_decay=5e-4)
    opt = t.optimizers[0]
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["nesterov"] is True and opt.defaults["weight_decay"] == 5e-4 and opt.defaults["momentum"] == 0.8
    assert isinstance(t.lr_scheduler_configs[0].scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert t.lr_scheduler_configs[0].interval == "step"
    t, _, _ = fit(sample, 1, 1, optimizer="adam", max_lr=1e-3)
    assert isinstance(t.optimizers[0], torch.optim.Adam) and t.optimizers[0].defaults["weight_decay"] == 1e-4


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_the_training_loss_is_cross_entropy_with_the_label_smoothing_asked(sample, smoothing):
    L.seed_everything(0)
    # Confident logits: with near-uniform ones smoothing changes little.
    lit = LitResNet({"logit_scale": 50.0}, config(label_smoothing=smoothing).to_dict()).eval()
    x, _, _ = next(iter(sample.test_dataloader()))
    with torch.no_grad():
        y = lit(x).argmax(1)  # labels the model is sure of: smoothing then raises the loss clearly
    lit.log = lambda *args, **kwargs: None  # outside a Trainer
    loss = lit.training_step((x, y, torch.arange(len(y))), 0)
    logits = lit(x)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=smoothing).item(), rel=1e-6)
    if smoothing:
        assert loss.item() > 1.5 * F.cross_entropy(logits, y).item(), "smoothing changed it"


def test_the_test_evaluation_is_one_set_of_numbers(sample):
    t, lit, _ = fit(sample, 1, 4, optimizer="adam", max_lr=2e-3)
    logged = t.test(lit, datamodule=sample, verbose=False)[0]
    e = lit.evaluation
    assert len(e.labels) == 300 and e.indices.tolist() == list(range(300))
    assert (e.labels == sample.test_set.labels).all()
    assert logged["test_acc"] == pytest.approx(e.accuracy) == pytest.approx(float((e.predictions == e.labels).mean()))
    assert logged["test_acc_tta"] == pytest.approx(e.tta_accuracy)
    by_hand = float(-np.log(e.probabilities[np.arange(300), e.labels]).mean())
    assert logged["test_loss"] == pytest.approx(e.loss, rel=1e-5) == pytest.approx(by_hand, rel=1e-4)
    # What the released (contiguous, fp32) weights measure with the library's own preprocessing.
    model = lit.model.eval()
    probs = model.probabilities(model.preprocess(list(sample.test_set.images)))
    assert np.array_equal(probs.numpy().argmax(1), e.predictions)


def test_training_reduces_the_loss_on_real_images(sample):
    L.seed_everything(0)
    lit = LitResNet(config=config(optimizer="adam", max_lr=2e-3, epochs=3).to_dict())
    x, y, _ = next(iter(sample.test_dataloader()))
    before = F.cross_entropy(lit.eval()(x), y).item()
    t = trainer(3)
    t.fit(lit, datamodule=sample)
    assert t.callback_metrics["train_loss"].item() < before


def test_batchnorm_recalibration_gives_the_exact_statistics_of_the_data(sample):
    torch.manual_seed(0)
    lit = LitResNet(config=config().to_dict())
    for module in lit.model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.fill_(5.0)  # stale statistics, as after a short run
    seen = recalibrate_batchnorm(lit.model, sample.test_dataloader())
    assert seen == 300
    x = torch.cat([batch[0] for batch in sample.test_dataloader()])
    first = lit.model.prep[1]  # the BatchNorm after the first convolution
    with torch.no_grad():
        features = lit.model.prep[0](x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(first.running_mean, features.mean((0, 2, 3)), atol=1e-4, rtol=1e-4)
    assert first.momentum == 0.1, "the BatchNorm's own settings come back"


def test_max_lr_must_be_set_before_fit():
    with pytest.raises(ValueError, match="max_lr is not set"):
        LitResNet(config={"optim": {"max_lr": None}}).configure_optimizers()
