"""LitResNet: ResNet9 with cross-entropy, accuracy metrics and a One Cycle schedule stepped per batch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from resnet_cifar import ResNet9

OPTIMIZERS = ("adam", "sgd")


@dataclass
class OptimConfig:
    """Optimizer and One Cycle settings; defaults are the course's (Adam, weight decay 1e-4, peak at 5/24)."""

    optimizer: str = "adam"
    max_lr: float | None = None  # None: set by the LR finder before fit
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only (Nesterov)
    pct_start: float = 5 / 24
    div_factor: float = 100.0
    final_div_factor: float = 100.0
    label_smoothing: float = 0.0
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.max_lr is not None and not self.max_lr > 0:
            raise ValueError(f"max_lr must be positive, got {self.max_lr}")
        if not 0 < self.pct_start < 1:
            raise ValueError(f"pct_start must be in (0, 1), got {self.pct_start}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


class LitResNet(L.LightningModule):
    """Trains a ResNet9 built from `model_config` (its init kwargs) with the optimizer settings in `optim`."""

    def __init__(self, model_config: dict[str, Any] | None = None, optim: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = ResNet9(**(model_config or {}))
        self.optim = OptimConfig(**(optim or {}))
        # The LR finder writes its suggestion here (Tuner.lr_find(attr_name="max_lr")).
        self.max_lr = self.optim.max_lr
        if self.optim.channels_last:
            self.model.to(memory_format=torch.channels_last)
        n = self.model.num_classes
        self.train_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=n, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the wrapped ResNet9."""
        if self.optim.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metric: MulticlassAccuracy) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        smoothing = self.optim.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        metric(logits.detach(), y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=len(y))
        self.log(f"{stage}_acc", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy (with optional label smoothing) on an augmented batch."""
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Loss and accuracy on the held-out part of train."""
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Loss and accuracy on the test split."""
        self._step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam or SGD-Nesterov with OneCycleLR over exactly the steps the trainer will run."""
        if self.max_lr is None:
            raise ValueError("max_lr is not set: pass --max-lr or run the LR finder before fit")
        o = self.optim
        if o.optimizer == "adam":
            opt = torch.optim.Adam(self.parameters(), lr=self.max_lr, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=self.max_lr, momentum=o.momentum, nesterov=True,
                                  weight_decay=o.weight_decay)
        # The course computed steps by hand and stopped one epoch short; the trainer knows the real count.
        total = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.max_lr, total_steps=total, pct_start=o.pct_start, anneal_strategy="linear",
            div_factor=o.div_factor, final_div_factor=o.final_div_factor, three_phase=False,
            cycle_momentum=o.optimizer == "sgd",
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def optim_summary(self) -> dict[str, Any]:
        """The optimizer settings actually used (with the found max_lr), for the model card."""
        return {**asdict(self.optim), "max_lr": self.max_lr}
