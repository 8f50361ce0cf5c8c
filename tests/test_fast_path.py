"""The GPU speed options of resnet-cifar-train, run for real on the CPU with the CIFAR-10 sample: the training split
kept on the device (--data-on-device), torch.compile (--compile), no per-epoch checkpoint (--checkpoint-every 0),
the timing in metrics.json, and the plain PyTorch loop (benchmarks/plain_train.py) the GPU run is compared with."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, SAMPLE

from resnet_cifar import ResNet9, release
from training import cli, report, speed
from training.config import AugmentConfig, DataConfig
from training.data import CIFAR10DataModule, DeviceBatches, stack_samples

FAST = ["--dataset", str(SAMPLE), "--batch-size", "32", "--num-workers", "0", "--optimizer", "sgd",
        "--max-lr", "0.02", "--augment-on-device", "--data-on-device", "--precision", "32-true"]  # exact comparisons


def train(out: Path, *extra: str) -> dict:
    code = cli.main([*FAST, "--output-dir", str(out), *extra])
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


def epoch_rows(out: Path) -> list[dict[str, float]]:
    return [row for row in report.read_metrics(out / "logs" / "metrics.csv") if "train_loss" in row]


@pytest.fixture(scope="module")
def eager(tmp_path_factory):
    """Two epochs of four batches with the training split on the device, eager."""
    out = tmp_path_factory.mktemp("eager")
    return out, train(out, "--epochs", "2", "--limit-train-batches", "4")


# ---------------------------------------------------------------- the training split on the device


def test_every_epoch_is_a_seeded_permutation_in_the_layout_of_the_workers_batches():
    images = np.arange(50 * 4 * 4 * 3, dtype=np.int64).reshape(50, 4, 4, 3).astype(np.uint8)
    labels = np.arange(50) % 10
    batches = DeviceBatches(images, labels, batch_size=16, device=torch.device("cpu"), seed=3)
    assert len(batches) == 4  # 16 + 16 + 16 + 2: the short last batch is kept, as drop_last=False does

    def epoch(number: int) -> list[tuple[torch.Tensor, ...]]:
        batches.sampler.set_epoch(number)
        return list(batches)

    first = epoch(0)
    assert [len(b[0]) for b in first] == [16, 16, 16, 2]
    order = torch.cat([b[2] for b in first])
    assert sorted(order.tolist()) == list(range(50)), "each image once an epoch"
    reference = stack_samples([(images[i], int(labels[i]), int(i)) for i in first[0][2].tolist()])
    for got, want in zip(first[0], reference):
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert torch.equal(torch.cat([b[2] for b in epoch(0)]), order), "an epoch's order is fixed by (seed, epoch)"
    assert not torch.equal(torch.cat([b[2] for b in epoch(1)]), order), "and differs from epoch to epoch"


def test_the_split_on_the_device_needs_the_augmentation_there(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--dataset", str(SAMPLE), "--max-lr", "0.02", "--data-on-device", "--output-dir", "unused"])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--data-on-device needs --augment-on-device" in last and "drop --data-on-device" in last
    assert not Path("unused").exists()


def test_the_data_module_hands_out_the_split_on_the_device():
    dm = CIFAR10DataModule(DataConfig(dataset=str(SAMPLE), batch_size=50, data_on_device=True),
                           AugmentConfig(augment_on_device=True))
    dm.setup()
    loader = dm.train_dataloader()
    assert isinstance(loader, DeviceBatches) and len(loader) == 8
    assert loader is dm.train_dataloader(), "the split is moved to the device once"
    images, labels, index = next(iter(loader))
    finished = dm.finish_batch((images, labels, index))
    assert finished[0].shape == (50, 3, 32, 32) and finished[0].dtype == torch.float32


def test_a_run_with_the_split_on_the_device_trains_times_and_releases(eager):
    out, metrics = eager
    rows = epoch_rows(out)
    assert len(rows) == 2 and all(math.isfinite(r["train_loss"]) for r in rows)
    assert release.read(out / "release").test_accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-4)
    # The timing: one entry per epoch, the images it trained, within the fit's own wall time.
    assert len(metrics["epoch_seconds"]) == 2 and all(s > 0 for s in metrics["epoch_seconds"])
    assert metrics["train_images"] == 2 * 4 * 32
    assert metrics["train_seconds"] <= metrics["fit_seconds"]
    assert metrics["images_per_second"] == pytest.approx(metrics["train_images"] / metrics["train_seconds"])
    assert metrics["tflops"] == pytest.approx(metrics["images_per_second"] * 2.272032768e9 / 1e12)
    assert (metrics["device"], metrics["torch"], metrics["precision"]) == ("cpu", torch.__version__, "32-true")
    assert (out / "checkpoints" / "last.ckpt").is_file(), "a checkpoint every epoch by default"


# ---------------------------------------------------------------- FLOPs


def test_the_flops_of_a_training_step_are_counted_from_the_network_itself():
    # By hand: 2 x 3 x 3 x Cin x Cout x H x W per convolution, the head 2 x 512 x 10; backward twice the forward,
    # less the gradient of the input image.
    convs = [(3, 64, 32), (64, 128, 32), (128, 128, 16), (128, 128, 16), (128, 256, 16), (256, 512, 8),
             (512, 512, 4), (512, 512, 4)]
    forward = sum(18 * cin * cout * size * size for cin, cout, size in convs) + 2 * 512 * 10
    first_input_grad = 18 * 3 * 64 * 32 * 32
    assert speed.train_flops_per_image() == 3 * forward - first_input_grad == 2_272_032_768
    hundred = {"num_classes": 100, "class_names": [f"class {i}" for i in range(100)]}
    assert speed.train_flops_per_image(hundred) == 2_272_032_768 + 3 * 2 * 512 * 90


# ---------------------------------------------------------------- torch.compile


def test_a_compiled_run_learns_what_an_eager_one_does_and_releases_plain_weights(tmp_path):
    runs = {name: tmp_path / name for name in ("eager", "compiled")}
    for name, out in runs.items():
        train(out, "--epochs", "1", "--limit-train-batches", "2", "--no-recalibrate-bn", "--checkpoint-every", "0",
              *(["--compile"] if name == "compiled" else []))
        assert not (out / "checkpoints").exists(), "--checkpoint-every 0: no checkpoint at all"
    losses = {name: epoch_rows(out)[0]["train_loss"] for name, out in runs.items()}
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-2)
    weights = {name: ResNet9.from_pretrained(out / "release").state_dict() for name, out in runs.items()}
    assert weights["compiled"].keys() == weights["eager"].keys() == ResNet9().state_dict().keys()
    for key, value in weights["eager"].items():
        if value.is_floating_point():
            assert torch.allclose(weights["compiled"][key], value, rtol=1e-2, atol=1e-3), key


# ---------------------------------------------------------------- the plain PyTorch loop


def test_the_plain_loop_does_exactly_the_work_of_the_lightning_run(eager, tmp_path):
    out, metrics = eager
    result = tmp_path / "plain.json"
    finished = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "plain_train.py"), *FAST, "--epochs", "2",
         "--limit-train-batches", "4", "--json", str(result)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    plain = json.loads(result.read_text())
    # The same seed, batches, augmentation, optimizer and schedule: the same losses, step for step.
    for mine, theirs in zip(plain["epochs_logged"], epoch_rows(out), strict=True):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
        assert mine["train_acc"] == pytest.approx(theirs["train_acc"], abs=1e-6)
    assert plain["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert plain["optimizer_steps"] == metrics["optimizer_steps"] == 8
    assert plain["train_images"] == metrics["train_images"]
    assert len(plain["epoch_seconds"]) == 2


def test_the_plain_loop_refuses_to_guess_a_learning_rate():
    finished = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plain_train.py"), "--dataset", str(SAMPLE)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2
    assert "pass --max-lr" in finished.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- bf16 learns what fp32 learns


def test_bf16_autocast_learns_what_fp32_learns_step_for_step(tmp_path):
    """The same seed, batches and schedule in bf16-mixed: the plain loop's every step's loss and the Lightning
    run's epoch losses follow fp32's closely (bf16 rounds, so not exactly; BENCHMARKS.md has the real-data run).
    The recipe's logit scale of 1/8 keeps this short run from diverging, so the losses mean something. Two epochs
    of two batches: where the CPU has no native bf16 (no AVX512_BF16) every bf16 step is emulated, ~12 s each
    on 2 cores (2026-12-03), and this test's 16 steps took 232 s."""
    recipe = ["--epochs", "2", "--limit-train-batches", "2", "--logit-scale", "0.125"]
    runs = {}
    for precision in ("32-true", "bf16-mixed"):
        out = tmp_path / precision
        runs[precision] = (out, train(out, *recipe, "--precision", precision, "--checkpoint-every", "0"))
    (fp32_out, fp32), (bf16_out, bf16) = runs["32-true"], runs["bf16-mixed"]
    assert (bf16["precision"], fp32["precision"]) == ("bf16-mixed", "32-true")
    fp32_rows, bf16_rows = epoch_rows(fp32_out), epoch_rows(bf16_out)
    assert all(1.5 < row["train_loss"] < 2.6 for row in fp32_rows), "a run that learns, not one that diverged"
    for mine, theirs in zip(bf16_rows, fp32_rows, strict=True):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=0.02)
    assert abs(bf16["test_accuracy"] - fp32["test_accuracy"]) <= 0.05
    steps = {}
    for precision in ("32-true", "bf16-mixed"):
        result = tmp_path / f"{precision}.json"
        finished = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "plain_train.py"), *FAST, *recipe, "--precision", precision,
             "--json", str(result)],
            cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert finished.returncode == 0, finished.stderr[-2000:]
        steps[precision] = json.loads(result.read_text())["step_losses"]
    assert len(steps["32-true"]) == len(steps["bf16-mixed"]) == 4
    np.testing.assert_allclose(steps["bf16-mixed"], steps["32-true"], rtol=0.02)
    assert steps["bf16-mixed"] != steps["32-true"], "bf16 really ran: its losses are rounded differently"
