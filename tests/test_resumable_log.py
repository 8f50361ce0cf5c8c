"""The resumed training log: whatever state a kill left metrics.csv in, the resumed run's rows stay under their
own columns, half-written lines are dropped, and the epoch row the checkpoint kept comes back once."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from training.resumable_log import ResumableCSVLogger

EPOCH_ROW = {"epoch": 0, "step": 5, "train_loss": 2.25, "train_acc": 0.125}  # as on_save_checkpoint records it
LR_ROW = {"lr-Adam": 0.0074, "step": 4}

# metrics.csv as Lightning's writer can leave it when the run is killed just after the epoch-0 checkpoint
KILLED = {
    # the first row ever logged is the LR monitor's: the file's header is only its keys until the epoch row
    "before the epoch row": "lr-Adam,step\n0.0074,4\n",
    "after the epoch row": "epoch,lr-Adam,step,train_acc,train_loss\n,0.0074,4,,\n0,,5,0.125,2.25\n",
    "in the middle of the epoch row": "epoch,lr-Adam,step,train_acc,train_loss\n,0.0074,4,,\n0,,5,0.125,2.",
    "in the middle of a header rewrite": "epoch,lr-Adam,st",
    "with the file just emptied for a rewrite": "",
}


def _rows(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


@pytest.mark.parametrize("state", list(KILLED))
def test_a_resumed_log_keeps_every_value_under_its_own_column(tmp_path, state):
    log = tmp_path / "logs" / "metrics.csv"
    log.parent.mkdir()
    log.write_text(KILLED[state])
    logger = ResumableCSVLogger(tmp_path, name="", version="logs", keep_before_step=6, epoch_row=EPOCH_ROW)
    logged = [({"lr-Adam": 0.0021}, 9), ({"epoch": 1, "train_loss": 1.5, "train_acc": 0.5}, 11),
              ({"lr-Adam": 0.0004}, 14), ({"epoch": 2, "train_loss": 1.25, "train_acc": 0.625}, 17)]
    for metrics, step in logged:
        logger.log_metrics(metrics, step=step)
        logger.save()
    logger.log_metrics({"epoch": 3, "test_acc": 0.75, "test_loss": 0.875}, step=18)  # new keys: Lightning rewrites
    logger.save()

    rows = _rows(log)
    resumed = [{**metrics, "step": step} for metrics, step in logged] + [
        {"epoch": 3, "test_acc": 0.75, "test_loss": 0.875, "step": 18}]
    assert rows[-len(resumed):] == resumed, "the resumed run's rows, each value under its own column"
    kept = rows[:-len(resumed)]
    if state not in ("in the middle of a header rewrite", "with the file just emptied for a rewrite"):
        assert kept[0] == LR_ROW, "the row logged before the kill is kept"
    assert kept[-1] == EPOCH_ROW, "the epoch row comes back whole, from the file or the checkpoint"
    assert [row for row in kept if "train_loss" in row] == [EPOCH_ROW], "once, and never its half-written copy"
    assert not (log.parent / "metrics.csv.partial").exists()


def test_rows_from_the_redone_part_of_the_epoch_are_dropped(tmp_path):
    log = tmp_path / "logs" / "metrics.csv"
    log.parent.mkdir()
    log.write_text("epoch,lr-Adam,step,train_acc,train_loss\n,0.0074,4,,\n0,,5,0.125,2.25\n,0.0021,9,,\n")
    logger = ResumableCSVLogger(tmp_path, name="", version="logs", keep_before_step=6, epoch_row=EPOCH_ROW)
    logger.log_metrics({"lr-Adam": 0.0022}, step=9)
    logger.save()
    assert _rows(log) == [LR_ROW, EPOCH_ROW, {"lr-Adam": 0.0022, "step": 9}]


def test_a_fresh_run_starts_a_new_log(tmp_path):
    log = tmp_path / "logs" / "metrics.csv"
    log.parent.mkdir()
    log.write_text("lr-Adam,step\n0.5,4\n")
    logger = ResumableCSVLogger(tmp_path, name="", version="logs")
    logger.log_metrics({"lr-Adam": 0.25}, step=0)
    logger.save()
    assert _rows(log) == [{"lr-Adam": 0.25, "step": 0}]
