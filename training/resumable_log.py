"""A CSV logger that continues the log of a resumed run instead of deleting it."""

from __future__ import annotations

import csv
import os

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _ContinuingWriter(ExperimentWriter):
    """Keeps the rows logged before `keep_before_step`; rows of a partial epoch after it are redone."""

    def __init__(self, log_dir: str, keep_before_step: int | None, epoch_row: dict[str, float] | None) -> None:
        self._keep_before_step = keep_before_step
        self._epoch_row = epoch_row
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        # Lightning deletes an existing metrics.csv here; a resumed run keeps its earlier rows instead.
        if self._keep_before_step is None or not os.path.isfile(self.metrics_file_path):
            super()._check_log_dir_exists()
            return
        with open(self.metrics_file_path, newline="") as f:
            lines = f.read().splitlines(keepends=True)
        if lines and not lines[-1].endswith(("\n", "\r")):
            lines.pop()  # a line the kill cut short (a row, or the header of a file being rewritten)
        reader = csv.DictReader(lines)
        rows = [row for row in reader if None not in row and _step(row) is not None
                and _step(row) < self._keep_before_step]
        keys = set(reader.fieldnames or ())
        if self._epoch_row is not None and not any(
                row.get("train_loss") and row.get("epoch") and int(float(row["epoch"])) == self._epoch_row["epoch"]
                for row in rows):
            # killed after the checkpoint but before its epoch's row reached the file: the checkpoint has the row
            keys |= set(self._epoch_row)
            rows.append({k: self._epoch_row[k] for k in self._epoch_row})
        # Lightning appends rows in the order of its sorted metrics_keys without rewriting the header: the header
        # must be in that same order, or every later row lands under the wrong columns.
        self.metrics_keys = sorted(keys)
        partial = f"{self.metrics_file_path}.partial"
        with open(partial, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(partial, self.metrics_file_path)  # the earlier log is replaced whole or not at all


def _step(row: dict[str, str]) -> int | None:
    """The row's step, or None for a row without a whole number there."""
    try:
        return int(float(row.get("step") or ""))
    except (ValueError, OverflowError):
        return None


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, but a run resumed at global step N keeps the rows logged before N.

    `epoch_row` is the last finished epoch's row as its checkpoint recorded it; it is written back when the
    log lacks it.
    """

    def __init__(self, *args, keep_before_step: int | None = None, epoch_row: dict[str, float] | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._keep_before_step = keep_before_step
        self._epoch_row = epoch_row

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer, created on first use (on rank zero only, as in Lightning)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, self._keep_before_step, self._epoch_row)
        return self._experiment
