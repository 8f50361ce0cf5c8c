"""benchmarks/gpu/stage.py, the path to the lent GPU machine and back, run here on the CPU: the plan of calls with
the real shard sizes, staging and receiving with checksums, training the recipe per seed with resnet-cifar-train
itself on the CIFAR-10 sample, and the release packed in pieces the device tool returns and rebuilt here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLE

from resnet_cifar import release

spec = importlib.util.spec_from_file_location("stage", ROOT / "benchmarks" / "gpu" / "stage.py")
stage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage)

# The real CIFAR-10 of the HF layout (uoft-cs/cifar10, as in ../shared/data/cifar10), bytes per file.
REAL_SHARDS = {"README.md": 4_122, "plain_text/test-00000-of-00001.parquet": 22_823_951,
               "plain_text/train-00000-of-00004.parquet": 28_409_087,
               "plain_text/train-00001-of-00004.parquet": 28_481_217,
               "plain_text/train-00002-of-00004.parquet": 28_467_038,
               "plain_text/train-00003-of-00004.parquet": 28_396_927}
WHEELS = 9_306_384  # the 12 wheels of benchmarks/gpu/wheels.txt for CPython 3.12, as downloaded on 2026-11-22


def sparse_dataset(folder: Path, sizes: dict[str, int]) -> Path:
    for name, size in sizes.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        with (folder / name).open("wb") as f:
            f.truncate(size)
    return folder


def test_the_real_dataset_goes_over_in_three_calls_once_the_bundled_model_is_out(tmp_path):
    data = sparse_dataset(tmp_path / "cifar10", REAL_SHARDS)
    model = sum(p.stat().st_size for p in (ROOT / "space" / "model").iterdir())
    checkout = stage.checkout_bytes() - model
    calls = stage.plan(data, checkout, WHEELS)
    assert len(calls) == 3
    sent = [str(p) for call in calls for p in call]
    assert sorted(sent) == sorted(REAL_SHARDS), "every file once"
    assert [str(p) for p in calls[-1]] == ["plain_text/test-00000-of-00001.parquet"]
    for number, call in enumerate(calls, 1):
        size = checkout + sum(REAL_SHARDS[str(p)] for p in call) + (WHEELS if number == 3 else 0)
        assert size <= stage.CALL_LIMIT - stage.MARGIN
    with_model = stage.plan(data, checkout + model, WHEELS)
    assert len(with_model) == 5, "still possible with the model in the tree, in more calls"
    assert "move space/model out" in stage.describe(with_model, data, checkout + model, WHEELS)


def test_a_shard_that_cannot_fit_is_refused_with_what_to_move(tmp_path):
    data = sparse_dataset(tmp_path / "d", {"plain_text/train-0.parquet": 50 * 2**20, "plain_text/test-0.parquet": 10})
    with pytest.raises(stage.StageError, match=r"train-0.parquet \(50.0 MiB\) does not fit .* move large files"):
        stage.plan(data, 20 * 2**20, WHEELS)
    with pytest.raises(stage.StageError, match="holds no parquet shards"):
        stage.plan(sparse_dataset(tmp_path / "empty", {"README.md": 10}), 0, 0)


def test_staged_calls_arrive_whole_and_a_damaged_file_is_refused(tmp_path):
    wheels = tmp_path / "whl"
    wheels.mkdir()
    (wheels / "x-1-py3-none-any.whl").write_bytes(b"wheel")
    received = tmp_path / "device" / "cifar10"
    calls = stage.plan(SAMPLE, stage.checkout_bytes(), stage.wheels_bytes(wheels))
    for number in range(1, len(calls) + 1):
        stage.prepare(number, SAMPLE, stage=tmp_path / "stage", wheels_dir=wheels)
        stage.receive(tmp_path / "stage", received)
    originals = {str(p) for call in calls for p in call}
    assert {str(p.relative_to(received)) for p in received.rglob("*") if p.is_file()} == originals
    assert all((received / name).read_bytes() == (SAMPLE / name).read_bytes() for name in originals)

    stage.prepare(1, SAMPLE, stage=tmp_path / "stage", wheels_dir=wheels)
    shard = next((tmp_path / "stage" / "data").rglob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(stage.StageError, match=r"arrived damaged \(SHA-256 differs\): stage this call again"):
        stage.receive(tmp_path / "stage", tmp_path / "elsewhere")
    with pytest.raises(stage.StageError, match="the last call carries the wheels"):
        stage.prepare(len(calls), SAMPLE, stage=tmp_path / "stage", wheels_dir=tmp_path / "none")


def test_seeds_train_over_two_calls_and_the_median_release_comes_back_whole(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    extra = ["--accelerator", "cpu", "--precision", "32-true", "--devices", "1", "--epochs", "1",
             "--batch-size", "100", "--limit-train-batches", "2", "--num-workers", "0"]
    stage.train([0, 1], SAMPLE, runs, tmp_path / "first-call", extra, wheels=None)
    summary = stage.train([0, 1, 2], SAMPLE, runs, out, extra, wheels=None)
    assert [s["reused"] for s in summary["seeds"]] == [True, True, False]
    accuracies = {s["seed"]: s["test_accuracy"] for s in summary["seeds"]}
    assert summary["median_seed"] == sorted(accuracies, key=accuracies.get)[1]
    assert all(len(s["epochs_logged"]) == 1 and s["optimizer_steps"] == 2 for s in summary["seeds"])
    assert json.loads((out / "summary.json").read_text()) == summary

    returned = [p for p in out.iterdir()]
    assert len(returned) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in returned), "the device tool's limits"
    model = stage.unpack(out, tmp_path / "here" / "model")
    loaded = release.read(model)
    assert loaded.test_accuracy == pytest.approx(accuracies[summary["median_seed"]], abs=1e-4)
    median_run = runs / f"seed{summary['median_seed']}" / "release"
    assert sorted(p.name for p in model.iterdir()) == sorted(p.name for p in median_run.iterdir())
    assert (model / "model.safetensors").read_bytes() == (median_run / "model.safetensors").read_bytes()

    piece = out / "release.tar.01"
    piece.write_bytes(b"x" + piece.read_bytes()[1:])
    with pytest.raises(stage.StageError, match="differ from what was packed"):
        stage.unpack(out, tmp_path / "again")
    assert not (tmp_path / "again").exists() and not list(tmp_path.glob(".again*"))


def test_the_plain_loop_runs_beside_a_timed_run_with_the_same_flags(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    extra = ["--accelerator", "cpu", "--precision", "32-true", "--devices", "1", "--epochs", "2",
             "--batch-size", "50", "--limit-train-batches", "2", "--num-workers", "0", "--augment-on-device",
             "--data-on-device", "--checkpoint-every", "0"]
    summary = stage.train([0], SAMPLE, runs, out, extra, wheels=None, release=False)
    assert not list(out.glob("release*")), "a run made only to be timed returns no release"
    timed = summary["seeds"][0]
    assert len(timed["epoch_seconds"]) == 2 and timed["images_per_second"] > 0 and timed["tflops"] > 0

    result = stage.plain([0], SAMPLE, runs, out, extra, wheels=None)["plain"][0]
    assert json.loads((out / "plain-runs-seed0.json").read_text()) == result
    assert result["extra_args"] == extra
    assert result["lightning_over_plain"] == pytest.approx(timed["train_seconds"] / result["train_seconds"])
    assert "lightning_over_plain_after_first" in result
    # The same work: the recipe's epochs, batch for batch, to the same losses and test accuracy.
    assert [e["train_loss"] for e in result["epochs_logged"]] == pytest.approx(
        [e["train_loss"] for e in timed["epochs_logged"]], rel=1e-5)
    assert result["test_accuracy"] == pytest.approx(timed["test_accuracy"], abs=1e-6)

    table = stage.report([out]).splitlines()
    rows = [line for line in table if line.startswith("| resnet-cifar-train") or line.startswith("| plain loop")]
    assert len(rows) == 4, "one row per run, one per set of flags"
    assert f"| {timed['test_accuracy'] * 100:.2f} % |" in rows[0]
    assert rows[1].startswith("| plain loop") and f"{result['lightning_over_plain_after_first']:.3f} |" in rows[1]
    epochs = [line for line in table if line.startswith(("| 1 |", "| 2 |"))]
    assert len(epochs) == 2 and all(len(line.split(" | ")) == 3 for line in epochs), "an epoch's seconds, per run"
    assert "Device: cpu, torch " in table[0] and "2.27 GFLOP a training image" in table[0]

    with pytest.raises(stage.StageError, match="plain-runs-seed0.log"):
        stage.plain([0], SAMPLE, runs, out, ["--max-lr", "none"], wheels=None)
