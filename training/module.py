"""LitResNet: ResNet9 with cross-entropy, accuracy metrics, a One Cycle schedule stepped per batch, and the one
evaluation of the test split that every number of a release comes from."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy

from resnet_cifar import ResNet9, evaluate

from . import whiten
from .config import RunConfig


@dataclass
class Evaluation:
    """The test split as trainer.test saw it, in fp32 and eval mode, once: every figure of a release is from here."""

    probabilities: np.ndarray  # N x C float32
    labels: np.ndarray  # N int64
    indices: np.ndarray  # N int64: the images' rows in the test split
    tta_probabilities: np.ndarray  # N x C float32: averaged with the horizontal mirror
    accuracy: float  # torchmetrics multiclass accuracy (micro), as logged: test_acc
    tta_accuracy: float  # the same with flip test-time augmentation: test_acc_tta
    loss: float  # mean cross-entropy, as logged: test_loss

    @property
    def predictions(self) -> np.ndarray:
        """Arg-max class per image."""
        return self.probabilities.argmax(1)


class CompiledForward:
    """torch.compile of a model, made on first use and kept out of the module tree: not in state_dict (the release
    saves the plain weights under their own names); a deep copy (the EMA callback's) compiles its own on first use."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.compiled: Any = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            self.compiled = torch.compile(self.model, dynamic=False)  # one graph per batch shape: two an epoch
        return self.compiled(x)

    def __deepcopy__(self, memo: dict[int, Any]) -> CompiledForward:
        return CompiledForward(copy.deepcopy(self.model, memo))

    def __getstate__(self) -> dict[str, Any]:
        return {"model": self.model, "compiled": None}


class LitResNet(L.LightningModule):
    """Trains a ResNet9 built from `model_config` (its init kwargs) as the run's `config` (RunConfig.to_dict()) says."""

    def __init__(self, model_config: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                 max_lr: float | None = None) -> None:
        """`max_lr`: the peak LR this module trains with, settled before it is built (given, found by the LR
        finder, or the resumed run's); None takes the config's --max-lr."""
        super().__init__()
        self.save_hyperparameters()  # plain values: the checkpoint records its run and loads with weights_only=True
        self.config = RunConfig.from_dict(config or {}, "the run's config")
        self.model = ResNet9(**(model_config or {}))
        self.max_lr = self.config.optim.max_lr if max_lr is None else float(max_lr)
        if self.config.model.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.config.optim.freeze_bn_scale:  # they stay at 1: the release saves them as the constants they are
            for module in self.model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.weight.requires_grad_(False)
        if self.config.model.whiten:  # the identity until the cli sets the training images' basis (set_whitening)
            whiten.register(self.model.prep[0], channels_last=self.config.model.channels_last)
        # Only training steps run compiled: evaluation (fp32, contiguous, eval mode) would recompile for one pass.
        self.__dict__["train_forward"] = CompiledForward(self.model) if self.config.hardware.compile else self.model
        n = self.model.num_classes
        self.train_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self._test_outputs: list[tuple[torch.Tensor, ...]] = []
        self.evaluation: Evaluation | None = None
        self.total_steps: int | None = None  # of the One Cycle schedule, once configure_optimizers has run

    def set_whitening(self, basis: torch.Tensor) -> None:
        """Train the prep convolution through this whitening basis (--whiten); a resumed run's checkpoint then
        restores the basis it was trained with."""
        whiten.set_basis(self.model.prep[0], basis)

    def fold_whitening(self) -> None:
        """Make the prep convolution one plain 3x3 weight again (after fit, before the BatchNorm pass and test)."""
        whiten.fold(self.model.prep[0])

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.config.model.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the wrapped ResNet9."""
        return self.model(self._input(x))

    def _step(self, batch: tuple[torch.Tensor, ...], stage: str, metric: MulticlassAccuracy) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self.train_forward(self._input(x)) if stage == "train" else self(x)
        smoothing = self.config.optim.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        metric(logits.detach(), y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=len(y))
        self.log(f"{stage}_acc", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        """Cross-entropy (with optional label smoothing) on an augmented batch."""
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        """Loss and accuracy on the held-out part of train."""
        self._step(batch, "val", self.val_acc)

    # ---------------------------------------------------------------- the one evaluation

    def on_test_start(self) -> None:
        # The release is loaded contiguous and in fp32: evaluate exactly so, and the card states what it measures.
        self.model.to(memory_format=torch.contiguous_format)
        self._test_outputs = []

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        """Probabilities of the plain and the mirrored batch, in fp32 whatever the training precision."""
        x, y, index = batch
        probs, tta = evaluate.probabilities(self.model, x)  # the evaluation resnet-cifar-eval runs too
        self._test_outputs.append((probs, tta, y, index))

    def on_test_epoch_end(self) -> None:
        """Gather every rank's images (each once: DDP pads its shards), then measure and log once."""
        probs, tta, labels, index = (torch.cat(parts) for parts in zip(*self._test_outputs))
        self._test_outputs = []
        if self.trainer.world_size > 1:
            probs, tta, labels, index = (self.all_gather(t).flatten(0, 1) for t in (probs, tta, labels, index))
        order = torch.argsort(index, stable=True)
        keep = torch.ones_like(order, dtype=torch.bool)
        keep[1:] = index[order][1:] != index[order][:-1]  # DistributedSampler repeats images to even out shards
        order = order[keep]
        probs, tta, labels, index = probs[order], tta[order], labels[order], index[order]
        n = self.model.num_classes
        accuracy = float(multiclass_accuracy(probs, labels, num_classes=n, average="micro"))
        tta_accuracy = float(multiclass_accuracy(tta, labels, num_classes=n, average="micro"))
        loss = float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), labels))
        # Every rank holds the gathered whole, so each logs the same numbers: no sync needed.
        self.log_dict({"test_loss": loss, "test_acc": accuracy, "test_acc_tta": tta_accuracy}, sync_dist=False)
        self.evaluation = Evaluation(
            probabilities=probs.cpu().numpy(), labels=labels.cpu().numpy(), indices=index.cpu().numpy(),
            tta_probabilities=tta.cpu().numpy(), accuracy=accuracy, tta_accuracy=tta_accuracy, loss=loss,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the LR the run uses (found or given): a resumed run needs no finder and no flag.

        Also the epoch's row of the training log: Lightning saves the epoch-end checkpoint before it logs that
        epoch's means, so a run killed between the two would resume without the row ever being written.
        """
        checkpoint["max_lr_used"] = self.max_lr
        means = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k in ("train_loss", "train_acc")}
        if self.trainer.training and means:
            checkpoint["epoch_log_row"] = {"epoch": self.trainer.current_epoch,
                                           "step": self.trainer.global_step - 1, **means}

    # ---------------------------------------------------------------- optimization

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam or SGD-Nesterov with OneCycleLR over exactly the steps the trainer will run."""
        if self.max_lr is None:
            raise ValueError("max_lr is not set: pass --max-lr or run the LR finder before fit")
        opt = make_optimizer(param_groups(self.model, self.config), self.config, self.max_lr)
        # The course computed steps by hand and stopped one epoch short; the trainer knows the real count.
        total = self.total_steps = int(self.trainer.estimated_stepping_batches)
        # cycle_momentum=True (OneCycleLR's default) would overwrite SGD's momentum with 0.95 -> 0.85 -> 0.95:
        # --momentum would then say one thing and the optimizer do another. It cycles only when asked.
        schedule = one_cycle(opt, self.max_lr, total, self.config)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def recalibrate_batchnorm(model: torch.nn.Module, loader: Any, finish: Any = None) -> int:
    """Recompute every BatchNorm's running mean and variance as plain averages over one pass of `loader`.

    Running averages mix the statistics of weights from all along training: after a short run (or an EMA of the
    weights) they do not describe the final weights, and the eval-mode model can collapse to one class.
    `finish` completes a batch once on the model's device (the DataModule's `finish_batch`: augmentation on the
    device). Returns the number of images seen.
    """
    device = next(model.parameters()).device
    seen = 0

    def counted() -> Any:
        nonlocal seen
        for batch in loader:
            seen += len(batch[0])
            yield batch[0].to(device) if finish is None else finish([t.to(device) for t in batch])[0]

    was_training = model.training
    torch.optim.swa_utils.update_bn(counted(), model, device=None)
    model.train(was_training)
    return seen


def param_groups(model: torch.nn.Module, config: RunConfig) -> list[dict[str, Any]]:
    """The trained parameters: one group, or weights and biases (every 1-d parameter) when --bias-lr-scale asks
    for the biases' LR x scale and weight decay / scale (Page's bag of tricks). Frozen ones are left out."""
    scale = config.optim.bias_lr_scale
    trained = [p for p in model.parameters() if p.requires_grad]
    if scale == 1.0:
        return [{"params": trained, "lr_scale": 1.0}]
    return [{"params": [p for p in trained if p.ndim > 1], "lr_scale": 1.0},
            {"params": [p for p in trained if p.ndim <= 1], "lr_scale": scale,
             "weight_decay": config.optim.weight_decay / scale}]


def make_optimizer(params: Any, config: RunConfig, max_lr: float) -> torch.optim.Optimizer:
    """Adam, or SGD with Nesterov momentum, with the run's weight decay (a group's own wins)."""
    o = config.optim
    if o.optimizer == "adam":
        return torch.optim.Adam(params, lr=max_lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=max_lr, momentum=o.momentum, nesterov=True, weight_decay=o.weight_decay)


def one_cycle(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int, config: RunConfig
              ) -> torch.optim.lr_scheduler.OneCycleLR:
    """The One Cycle schedule of a run (also used to plot the whole schedule before it has run); a group with an
    `lr_scale` peaks at max_lr x that scale."""
    o = config.optim
    peaks = [max_lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=peaks, total_steps=total_steps, pct_start=o.pct_start, anneal_strategy="linear",
        div_factor=o.div_factor, final_div_factor=o.final_div_factor, three_phase=False,
        cycle_momentum=o.cycle_momentum,
    )


def schedule_of(config: RunConfig, max_lr: float, total_steps: int) -> tuple[list[float], list[float | None]]:
    """(LR, momentum) at every optimizer step of a whole run, from the scheduler itself, before it runs."""
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], config, max_lr)
    schedule = one_cycle(opt, max_lr, total_steps, config)
    lrs, momenta = [], []
    for step in range(total_steps):
        group = opt.param_groups[0]
        lrs.append(group["lr"])
        momenta.append(group.get("momentum"))
        if step < total_steps - 1:
            opt.step()
            schedule.step()
    return lrs, momenta
