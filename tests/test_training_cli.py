"""resnet-cifar-train end to end on the real CIFAR-10 sample, with the Hub faked only at its HTTP API: the release,
the push, and every way a run, a resume or a push can go wrong without losing what an earlier run wrote."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import pickle
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import numpy as np
import pytest
import torch
from conftest import ROOT, SAMPLE, TOKEN, FakeHubApi, run_cli, sample_split, tree_digest
from huggingface_hub.errors import HfHubHTTPError

from resnet_cifar import ResNet9, card, release
from resnet_cifar.preprocess import normalize
from training import cli
from training.publish import PublishError, publish

SMOKE = ["--dataset", str(SAMPLE), "--batch-size", "32", "--num-workers", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real run of the command: LR finder, fit, test, report, save, push to the faked Hub."""
    out = tmp_path_factory.mktemp("run")
    mp = pytest.MonkeyPatch()
    hub = FakeHubApi().install(mp)
    code, console = run_cli(SMOKE + ["--epochs", "2", "--limit-train-batches", "8", "--lr-find-steps", "50",
                                     "--output-dir", str(out), "--misclassified", "120",
                                     "--push-to-hub", "someone/resnet9-test"], env={"HF_TOKEN": TOKEN})
    mp.undo()
    (out / "console.log").write_text(console)
    return code, out, hub, console


def test_the_command_writes_a_complete_release(trained):
    code, out, _, console = trained
    assert code == 0, console[-3000:]
    rel = out / "release"
    names = release.files(rel)
    assert set(names) == set(release.FILES), "every release file, the plots of a short run included"
    readme = (rel / "README.md").read_text()
    for png in (n for n in names if n.endswith(".png")):
        assert f"]({png})" in readme, f"{png} is shown in the card"
    assert "a tenth of the LR at the lowest loss" in readme
    assert all(stat.S_IMODE(os.stat(rel / n).st_mode) == 0o644 for n in names), "releases are world-readable"
    assert (out / "checkpoints" / "last.ckpt").is_file()
    finder = json.loads((out / "lr_finder.json").read_text())
    assert len(finder["lr"]) == 50, "the finder ran all its steps, whatever the epoch count (2 x 8 batches)"
    assert "weights_only` was not set" not in console, "every checkpoint load is weights-only"


def test_the_release_records_its_resolved_config(trained):
    _, out, _, _ = trained
    recorded = json.loads((out / "release" / release.TRAINING_CONFIG_NAME).read_text())
    assert recorded["data"]["batch_size"] == 32 and recorded["optim"]["epochs"] == 2
    assert recorded["hardware"]["limit_train_batches"] == 8 and recorded["max_lr_used"] > 0
    readme = (out / "release" / "README.md").read_text()
    assert "| optim.epochs | 2 |" in readme and "| data.batch_size | 32 |" in readme
    assert "one 8x8 cutout hole filled with the dataset mean (p = 0.5)" in readme


def test_a_checkpoint_rebuilds_its_module_with_lightnings_own_loader(trained):
    """The checkpoint's hyper_parameters are LitResNet's init arguments (the model, the run's config, the LR it
    trains with: the finder's here), so Lightning's load_from_checkpoint rebuilds the very module, weights-only."""
    from training.module import LitResNet

    _, out, _, _ = trained
    recorded = json.loads((out / "release" / release.TRAINING_CONFIG_NAME).read_text())
    path = out / "checkpoints" / "last.ckpt"
    lit = LitResNet.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert lit.max_lr == saved["max_lr_used"] == recorded["max_lr_used"]
    assert lit.config.optim.epochs == 2 and lit.config.data.batch_size == 32
    state = lit.state_dict()
    assert state.keys() == saved["state_dict"].keys()
    assert all(torch.equal(state[k], v) for k, v in saved["state_dict"].items())


def test_one_evaluation_one_number_everywhere(trained):
    _, out, _, console = trained
    rel = out / "release"
    model = ResNet9.from_pretrained(rel)
    images, labels = sample_split("test")
    measured = float((model.probabilities(normalize(images, model.mean, model.std)).argmax(1).numpy() == labels).mean())
    metrics = json.loads((out / "metrics.json").read_text())
    tests = [r for r in csv.DictReader((out / "logs" / "metrics.csv").open()) if r.get("test_acc")]
    assert len(tests) == 2, "the test before the temperature, and the release's test after it"
    logged = tests[-1]
    assert card.test_accuracy_of(rel) == pytest.approx(measured, abs=1e-4)
    assert metrics["test_accuracy"] == pytest.approx(measured) == pytest.approx(float(logged["test_acc"]))
    assert float(logged["test_loss"]) == pytest.approx(metrics["test_loss"], rel=1e-5)
    assert f"| test loss | {metrics['test_loss']:.4f} |" in (rel / "README.md").read_text()
    mistakes = release.load_misclassified(rel)
    assert len(mistakes) == min(120, int(round((1 - measured) * len(labels))))
    assert (mistakes.predicted_labels != mistakes.true_labels).all()
    assert list(mistakes.probabilities) == sorted(mistakes.probabilities, reverse=True)


def test_the_release_is_calibrated_and_carries_what_the_run_measured(trained):
    from resnet_cifar import calibration

    _, out, _, _ = trained
    rel = out / "release"
    metrics = json.loads((rel / release.METRICS_NAME).read_text())
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["test_images"] == metrics["test_split_images"] == 300 and metrics["split"] == "test"
    assert metrics["fit_seconds"] > 0 and metrics["images_per_second"] > 0 and metrics["device"] == "cpu"
    assert metrics["precision"] in ("bf16-mixed", "32-true") and metrics["precision_reason"].startswith("auto: ")
    fit = metrics["calibration"]
    trained_scale = json.loads((out / "release" / release.TRAINING_CONFIG_NAME).read_text())["model"]["logit_scale"]
    model = ResNet9.from_pretrained(rel)
    assert model.logit_scale == pytest.approx(trained_scale / fit["temperature"]), "the temperature is folded in"
    images, labels = sample_split("test")
    probs = model.probabilities(normalize(images, model.mean, model.std)).numpy()
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(metrics["ece"], abs=1e-4)
    unscaled = calibration.scaled(probs, 1 / fit["temperature"])
    assert calibration.expected_calibration_error(unscaled, labels) == pytest.approx(fit["ece_before"], abs=1e-4)
    assert np.array_equal(unscaled.argmax(1), probs.argmax(1)), "calibration keeps every prediction"
    readme = (rel / "README.md").read_text()
    assert f"| ECE, 15 bins, before | {fit['ece_before'] * 100:.2f} % |" in readme
    assert f"| ECE of these weights on all 300 test images | {metrics['ece'] * 100:.2f} % |" in readme
    assert "](reliability.png)" in readme and "Measured on all 300 images of the test split" in readme


def test_a_run_measured_on_part_of_the_test_split_says_so_in_its_model_index(finished):
    readme = (finished / "release" / "README.md").read_text()
    meta = card.validate(readme)
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["split"] == "test[:64]" and result["metrics"][0]["name"] == "Test accuracy (64 images)"
    assert "Measured on the first 64 of the 300 images of the test split (not the whole split)" in readme
    # And the training figures say what ran: 3 batches of 32 an epoch, not the whole training split.
    assert re.search(r"2 epochs, 6 optimizer steps, 192 images in all: 96 of the [\d,]+ training images an epoch "
                     r"\(a run limited by --limit-train-batches\)", readme), readme


def test_the_progress_bar_counts_epochs_from_one(trained):
    _, _, _, console = trained
    assert "Epoch 1/2" in console and "Epoch 2/2" in console and "Epoch 0/" not in console


def test_the_console_says_each_thing_once_and_which_evaluation_the_release_is(trained):
    _, out, _, console = trained
    fit = json.loads((out / "metrics.json").read_text())["calibration"]
    assert console.count("Test metric") == 1, "one table: the release's test evaluation, after the temperature"
    line = (f"temperature {fit['temperature']:.4f} fitted on the 300 test images (two folds, each measured on the "
            f"other): NLL {fit['nll_before']:.4f} -> {fit['nll_after_cross_fitted']:.4f}")
    assert line in console and console.index(line) < console.index("Test metric")
    assert "trained 2 epochs in" in console


def test_the_push_is_one_commit_of_exactly_the_release_without_the_token(trained):
    code, out, hub, console = trained
    assert code == 0
    assert hub.whoami_calls == 1 and console.index("will push to someone/resnet9-test as someone") < console.index(
        "max LR from the LR finder"), "the token was checked before any training"
    assert [r["repo_id"] for r in hub.repos] == ["someone/resnet9-test"]
    assert len(hub.commits) == 1, "one commit"
    commit = hub.commits[0]
    assert commit["files"] == release.files(out / "release")
    assert commit["commit_description"] == "Files: " + ", ".join(commit["files"])
    for name, content in commit["contents"].items():
        assert content == (out / "release" / name).read_bytes()
        assert TOKEN.encode() not in content, name
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in console and "pushed" in console and "commit/abc123" in console
    assert '"someone/resnet9-test"' in (out / "release" / "README.md").read_text(), "usage snippet names the repo"


@pytest.mark.parametrize("failure", [
    httpx2.ConnectError("[Errno -3] Temporary failure in name resolution"),
    HfHubHTTPError(f"401 Client Error: Unauthorized (token {TOKEN})",
                   response=httpx2.Response(401, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))),
])
def test_a_failed_push_leaves_the_folder_intact_and_says_how_to_retry(trained, monkeypatch, capsys, failure):
    _, out, _, _ = trained
    rel = out / "release"
    before = tree_digest(rel)
    FakeHubApi(fail_with=failure, token_check_fails=False).install(monkeypatch)
    monkeypatch.setattr("resnet_cifar.hub.get_token", lambda: TOKEN)  # a saved login with write access
    code = cli.push_main([str(rel), "someone/resnet9-test"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, "one line"
    assert f"retry with: resnet-cifar-push {rel} someone/resnet9-test" in err
    assert TOKEN not in err
    assert tree_digest(rel) == before
    with pytest.raises(PublishError, match="intact"):
        publish(rel, "someone/resnet9-test", token=TOKEN)


def test_repush_of_a_finished_folder(trained, monkeypatch, capsys):
    _, out, _, _ = trained
    monkeypatch.setattr("resnet_cifar.hub.get_token", lambda: TOKEN)  # a saved login with write access
    hub = FakeHubApi().install(monkeypatch)
    assert cli.push_main([str(out / "release"), "someone/other", "--private"]) == 0
    assert hub.repos[0]["private"] is True and len(hub.commits) == 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # the run folder is not a release: refused before the network
        cli.push_main([str(out), "someone/other"])
    assert exit_.value.code == 2 and "not a complete release" in capsys.readouterr().err
    assert len(hub.commits) == 1 and hub.whoami_calls == 1


def test_the_push_never_follows_links_or_takes_other_files(trained, tmp_path, monkeypatch, capsys):
    _, out, _, _ = trained
    folder = tmp_path / "release"
    folder.mkdir()
    for name in release.files(out / "release"):
        (folder / name).write_bytes((out / "release" / name).read_bytes())
    (folder / "notes.png").write_bytes(b"not a release file")
    (folder / ".secret.png").write_bytes(b"hidden")
    (folder / "sub").mkdir()
    (folder / "sub" / "metrics.png").write_bytes(b"nested")
    monkeypatch.setattr("resnet_cifar.hub.get_token", lambda: TOKEN)  # a saved login with write access
    hub = FakeHubApi().install(monkeypatch)
    assert cli.push_main([str(folder), "someone/exact"]) == 0
    assert hub.commits[0]["files"] == release.files(out / "release"), "only the release's own files"
    (folder / "metrics.png").unlink()
    os.symlink("/etc/passwd", folder / "metrics.png")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # refused before the token check or any upload
        cli.push_main([str(folder), "someone/exact"])
    assert exit_.value.code == 2
    assert "metrics.png is a symbolic link; a release holds regular files only" in capsys.readouterr().err
    with pytest.raises(PublishError, match="metrics.png is a symbolic link.*; nothing was pushed"):
        publish(folder, "someone/exact", token=TOKEN)  # the library call refuses it too
    assert len(hub.commits) == 1, "nothing more was uploaded"


@pytest.mark.parametrize("hub, token, words", [
    (FakeHubApi(), None, "needs a Hugging Face token with write access: set HF_TOKEN or run `hf auth login`"),
    (FakeHubApi(role="read"), TOKEN, "the token of someone is read-only; someone/x needs a token with write access"),
    (FakeHubApi(fail_with=HfHubHTTPError("401 Client Error: Unauthorized", response=httpx2.Response(
        401, request=httpx2.Request("GET", "https://huggingface.co/api/whoami-v2")))), TOKEN, "cannot check the token"),
])
def test_the_push_command_checks_the_token_before_uploading(trained, monkeypatch, capsys, hub, token, words):
    _, out, _, _ = trained
    hub.install(monkeypatch)
    monkeypatch.setattr("resnet_cifar.hub.get_token", lambda: token)
    assert cli.push_main([str(out / "release"), "someone/x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and TOKEN not in err
    assert hub.repos == [] and hub.commits == [], "nothing was sent before the token was known to write"


def test_the_push_command_refuses_a_repo_id_with_a_trailing_newline(trained, monkeypatch, capsys):
    _, out, _, _ = trained
    hub = FakeHubApi().install(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        cli.push_main([str(out / "release"), "someone/x\n"])
    assert exit_.value.code == 2 and "OWNER/NAME must be 'owner/name'" in capsys.readouterr().err
    assert hub.whoami_calls == 0 and hub.commits == []


@pytest.mark.parametrize("hub, env, words", [
    (FakeHubApi(), {"HF_TOKEN": ""}, "needs a Hugging Face token with write access"),
    (FakeHubApi(role="read"), {"HF_TOKEN": TOKEN}, "the token of someone is read-only"),
    (FakeHubApi(user="other", orgs=("team",)), {"HF_TOKEN": TOKEN}, "other cannot write to someone/: the token's "
                                                                    "namespaces are other, team"),
    (FakeHubApi(fail_with=httpx2.ConnectError("no route")), {"HF_TOKEN": TOKEN}, "cannot check the token"),
])
def test_the_token_is_checked_before_training(tmp_path, monkeypatch, hub, env, words):
    hub.install(monkeypatch)
    monkeypatch.setattr("resnet_cifar.hub.get_token", lambda: os.environ.get("HF_TOKEN") or None)
    code, console = run_cli(SMOKE + ["--output-dir", str(tmp_path / "out"), "--push-to-hub", "someone/x"], env)
    assert code == 2 and words in console and "nothing was trained" in console
    assert not (tmp_path / "out").exists()
    assert TOKEN not in console


@pytest.mark.parametrize("bad, words", [
    *[(bad, "must be 'owner/name'") for bad in ("resnet9", "a/b/c", "owner/", "/name", "owner/na me",
                                                 "owner/name.git", "someone/resnet9\n")],
    ("OWNER/NAME", "is the placeholder from the docs"),
])
def test_a_bad_repo_id_is_refused_before_training(tmp_path, bad, words):
    code, console = run_cli(SMOKE + ["--output-dir", str(tmp_path / "out"), "--push-to-hub", bad])
    assert code == 2 and words in console
    assert not (tmp_path / "out").exists(), "nothing was trained"


@pytest.mark.parametrize("argv, words", [
    (["--div-factor", "0"], "--div-factor must be a number in [1, 1e6], got 0"),
    (["--limit-train-batches", "0"], "--limit-train-batches must be a whole number >= 1"),
    (["--max-lr", "inf"], "--max-lr must be a number in (0, 10], got inf"),
])
def test_bad_settings_are_one_line_before_any_work(tmp_path, argv, words):
    code, console = run_cli(SMOKE + ["--output-dir", str(tmp_path / "out"), *argv])
    assert code == 2 and words in console and "Traceback" not in console
    assert not (tmp_path / "out").exists()


def test_an_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "out").write_text("a file")
    code, console = run_cli(SMOKE + ["--output-dir", str(tmp_path / "out"), "--max-lr", "0.01"])
    assert code == 1 and "is a file; pass a folder" in console and "Traceback" not in console


def test_a_diverging_run_is_neither_saved_nor_pushed(tmp_path, monkeypatch):
    hub = FakeHubApi().install(monkeypatch)
    out = tmp_path / "out"
    code, console = run_cli(SMOKE + ["--optimizer", "sgd", "--max-lr", "10", "--momentum", "0.99", "--logit-scale",
                                     "1000", "--epochs", "1", "--limit-train-batches", "6", "--output-dir", str(out),
                                     "--push-to-hub", "someone/x"], env={"HF_TOKEN": TOKEN})
    assert code == 1, console[-2000:]
    assert "training diverged: the weights ['prep.0.weight'" in console
    assert "nothing was saved or pushed: lower --max-lr" in console
    assert not (out / "release").exists() and hub.commits == []


# ---------------------------------------------------------------- resuming, and what a failed resume leaves


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training.cli", *SMOKE, "--max-lr", "0.01", "--output-dir", str(out), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _train_rows(out: Path) -> list[dict[str, str]]:
    with (out / "logs" / "metrics.csv").open() as f:
        return [row for row in csv.DictReader(f) if row.get("train_loss")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run (no LR finder): the earlier run that failed resumes must leave alone."""
    out = tmp_path_factory.mktemp("finished") / "run"
    code, console = run_cli(SMOKE + ["--max-lr", "0.01", "--epochs", "2", "--limit-train-batches", "3",
                                     "--limit-test-batches", "2", "--output-dir", str(out)])
    assert code == 0, console[-2000:]
    return out


@pytest.mark.parametrize("extra, words", [
    ([], "already holds a run (checkpoints/last.ckpt); continue it with --resume last, or pick another --output-dir"),
    (["--resume", "last", "--epochs", "4"], "belongs to a run of 2 epochs: One Cycle's schedule is fixed by the "
                                            "number of epochs and cannot be stretched to 4; resume with --epochs 2"),
    (["--resume", "last", "--logit-scale", "0.5"], "is a checkpoint of another model (logit_scale differ)"),
    (["--resume", "last", "--weight-decay", "0.01"], "was trained with other settings (--weight-decay 0.0001 -> 0.01)"),
    (["--resume", "last", "--label-column", "label", "--image-column", "img", "--seed", "3"],
     "was trained with other settings (--seed 0 -> 3)"),
])
def test_a_refused_run_or_resume_changes_nothing_an_earlier_run_wrote(finished, extra, words):
    before = tree_digest(finished)
    code, console = run_cli(SMOKE + ["--max-lr", "0.01", "--epochs", "2", "--limit-train-batches", "3",
                                     "--limit-test-batches", "2", "--output-dir", str(finished), *extra])
    assert code in (1, 2) and words in console, console[-2000:]
    assert "Traceback" not in console
    assert tree_digest(finished) == before


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default():
    from training.checkpoints import CheckpointError, check_resumable
    from training.config import RunConfig

    run = RunConfig()
    run.data.data_on_device = run.augment.augment_on_device = False
    config = run.to_dict()
    older = {**config, "data": {k: v for k, v in config["data"].items() if k != "data_on_device"}}
    checkpoint = {"hyper_parameters": {"config": older, "model_config": {"num_classes": 10}}}
    resumed = RunConfig()
    cli.resolve_input_path(resumed, checkpoint)  # auto on resume: what the checkpoint ran, workers when it predates
    config = resumed.to_dict()
    check_resumable(checkpoint, "old.ckpt", config, {"num_classes": 10})  # ran without it: as the default does
    config["data"]["data_on_device"] = True
    with pytest.raises(CheckpointError, match=r"--data-on-device False -> True"):
        check_resumable(checkpoint, "old.ckpt", config, {"num_classes": 10})


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(finished, tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": Payload()}, evil)
    pickle.loads(pickle.dumps(Payload()))  # the payload is live: unpickling it creates the file
    assert (tmp_path / "ran").exists()
    (tmp_path / "ran").unlink()
    before = tree_digest(finished)
    code, console = run_cli(SMOKE + ["--max-lr", "0.01", "--epochs", "2", "--output-dir", str(finished),
                                     "--resume", str(evil)])
    assert code == 2 and "holds more than tensors and plain values" in console and "never unpickles" in console
    assert not (tmp_path / "ran").exists(), "the payload never ran"
    assert tree_digest(finished) == before


def test_a_truncated_checkpoint_is_refused_clearly(finished, tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes((finished / "checkpoints" / "last.ckpt").read_bytes()[:100_000])
    code, console = run_cli(SMOKE + ["--max-lr", "0.01", "--epochs", "2", "--output-dir", str(finished),
                                     "--resume", str(broken)])
    assert code == 2 and "is truncated or corrupt" in console and "Traceback" not in console


def test_an_empty_checkpoint_is_refused_clearly(finished, tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    code, console = run_cli(SMOKE + ["--max-lr", "0.01", "--epochs", "2", "--output-dir", str(finished),
                                     "--resume", str(empty)])
    assert code == 2 and f"{empty} is empty (0 bytes), not a checkpoint" in console, console[-2000:]
    assert "Traceback" not in console and "IndexError" not in console


def test_a_full_disk_while_a_resumed_run_writes_its_release_is_one_line(finished, tmp_path):
    """The finished run resumed from its last checkpoint goes straight to its release; the weights (26 MB) do not
    fit under the file size limit that stands in for a full disk."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = tree_digest(out / "release")
    failed = subprocess.run(_command(out, "--epochs", "2", "--limit-train-batches", "3", "--limit-test-batches", "2",
                                     "--resume", "last"),
                            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600,
                            preexec_fn=_fsize_limit(20_000_000))
    assert failed.returncode == 1, failed.stderr[-3000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("resnet-cifar-train: error: cannot write ") and "model.safetensors: " in last, last
    assert "File too large" in last and "continue with --resume last" in last and "Traceback" not in failed.stderr
    assert tree_digest(out / "release") == before, "the earlier release is untouched"


@pytest.mark.parametrize("flags, words", [
    (["--accelerator", "gpu"], "--accelerator gpu: this machine has no CUDA GPU"),
    (["--accelerator", "cpu", "--devices", "99"], "--devices 99: this machine has"),
    (["--devices", "0"], "--devices 0: this machine has"),
    (["--devices", "two"], "--devices must be a count, a comma-separated list of GPU indices, -1 (all) or auto"),
    (["--accelerator", "cpu", "--devices", "0,1"], "a list of indices names GPUs"),
    (["--accelerator", "quantum"], "--accelerator must be one of auto, cpu, gpu, cuda, mps, got 'quantum'"),
])
def test_hardware_the_machine_lacks_is_refused_before_anything_starts(tmp_path, flags, words):
    if "gpu" in flags and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, console = run_cli(SMOKE + ["--output-dir", str(tmp_path / "out"), *flags])
    assert code == 2 and words in console, console[-2000:]
    assert not (tmp_path / "out").exists(), "nothing started"


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    code, console = run_cli(SMOKE + ["--output-dir", str(tmp_path), "--resume", "last", "--max-lr", "0.01"])
    assert code == 2 and "no checkpoint at" in console


def _fsize_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_failed_checkpoint_write_leaves_no_truncated_checkpoint(tmp_path):
    """A write cut short (the file size limit stands in for a full disk): no partial checkpoint is left for
    --resume last to choke on, no half-written release, and the error is one line."""
    out = tmp_path / "run"
    failed = subprocess.run(_command(out, "--epochs", "1", "--limit-train-batches", "2"), cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=600, preexec_fn=_fsize_limit(30_000_000))
    assert failed.returncode == 1, failed.stderr[-2000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("resnet-cifar-train: error:") and "File too large" in last, last
    leftovers = [p.name for p in out.rglob("*") if "ckpt" in p.name or "tmp" in p.name or "partial" in p.name]
    assert leftovers == [] and not (out / "release").exists()
    resumed = subprocess.run(_command(out, "--epochs", "1", "--limit-train-batches", "2", "--resume", "last"),
                             cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 2 and "no checkpoint at" in resumed.stderr


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "run"
    args = ("--epochs", "3", "--limit-train-batches", "6")
    first = subprocess.Popen(_command(out, *args), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    checkpoint = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)  # the checkpoint appears whole (a rename): no need to wait for the write
    assert first.wait() == -signal.SIGKILL, "the first run was killed, not finished"
    assert not (out / "release").exists()
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    stopped_at = saved["epoch"]
    assert stopped_at < 2
    # Lightning writes the epoch's checkpoint before that epoch's log row: make the kill land in that gap for
    # certain by dropping the row, so the resumed log must come back whole from the checkpoint alone.
    assert saved["epoch_log_row"]["epoch"] == stopped_at and saved["epoch_log_row"]["step"] == 6 * stopped_at + 5
    log = out / "logs" / "metrics.csv"
    with log.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, kept = reader.fieldnames, [r for r in reader if not (r.get("train_loss") and
                                                                      int(r["epoch"]) == stopped_at)]
    with log.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    resumed = subprocess.run(_command(out, *args, "--resume", "last"), cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Restored all states" in resumed.stderr + resumed.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["optimizer_steps"] == 18
    rows = _train_rows(out)
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2], "one row per epoch, in one log"
    restored = rows[stopped_at]
    assert int(restored["step"]) == saved["epoch_log_row"]["step"]
    assert float(restored["train_loss"]) == pytest.approx(saved["epoch_log_row"]["train_loss"])
    lr_steps = [int(row["step"]) for row in csv.DictReader((out / "logs" / "metrics.csv").open())
                if any(k.startswith("lr-") and v for k, v in row.items())]
    assert lr_steps == [4, 9, 14], "every 5th step, before (4) and after (9, 14) the kill, once each"


def test_two_process_ddp_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    result = subprocess.run(
        _command(out, "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--epochs", "1",
                 "--limit-train-batches", "3"),
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stderr + result.stdout
    assert (result.stdout + result.stderr).count("fitted on the 300 test images") == 1, "rank zero says it"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["optimizer_steps"] == 3
    assert metrics["test_images"] == 300, "each test image counted once, though DDP pads its shards"
    assert ResNet9.from_pretrained(out / "release").num_classes == 10


def test_ddp_without_max_lr_is_refused(tmp_path):
    code, console = run_cli(["--dataset", str(SAMPLE), "--num-workers", "0", "--accelerator", "cpu", "--devices", "2",
                             "--strategy", "ddp", "--output-dir", str(tmp_path)])
    assert code == 2 and "pass --max-lr for multi-device training" in console


def test_ema_weights_are_what_gets_released(tmp_path):
    import safetensors.torch

    def weights(*extra: str) -> dict:
        out = tmp_path / ("ema" if extra else "plain")
        code, console = run_cli(SMOKE + ["--max-lr", "0.05", "--epochs", "1", "--limit-train-batches", "4",
                                         "--limit-test-batches", "1", "--output-dir", str(out), *extra])
        assert code == 0, console[-2000:]
        return safetensors.torch.load_file(out / "release" / "model.safetensors")

    plain, ema = weights(), weights("--ema-decay", "0.5")
    assert plain.keys() == ema.keys()
    assert any(not torch.equal(plain[k], ema[k]) for k in plain if k.endswith("weight"))
    assert "| optim.ema_decay | 0.5 |" in (tmp_path / "ema" / "release" / "README.md").read_text()


def test_augmentation_on_the_device_trains_and_says_so(tmp_path):
    out = tmp_path / "on-device"
    code, console = run_cli(SMOKE + ["--max-lr", "0.05", "--epochs", "2", "--limit-train-batches", "4",
                                     "--augment-on-device", "--output-dir", str(out)])
    assert code == 0, console[-2000:]
    assert "BatchNorm statistics recomputed over" in console, "recalibrated through the same on-device batches"
    card = (out / "release" / "README.md").read_text()
    assert "(batched on the training device)" in card and "| augment.augment_on_device | True |" in card
    losses = [float(row["train_loss"]) for row in _train_rows(out)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


# ---------------------------------------------------------------- the LR finder, and the default path


@pytest.mark.parametrize("losses, words", [
    ([2.3] * 100, "never fell clearly"),
    ([2.3 + 0.01 * i for i in range(100)], "never fell clearly"),
    ([2.3] * 8, "ran 8 of 100 steps"),
])
def test_an_lr_finder_curve_that_cannot_be_trusted_is_refused(losses, words):
    lrs = list(np.geomspace(1e-6, 1, len(losses)))
    with pytest.raises(cli.RunError, match=words):
        cli.suggest_max_lr(lrs, losses, 100)


def test_the_suggestion_is_a_tenth_of_the_lr_at_the_lowest_loss():
    lrs = list(np.geomspace(1e-6, 1, 100))
    losses = [2.3] * 5 + [4.0 - 0.05 * i for i in range(50)] + [1.6 + 0.1 * i for i in range(45)]
    assert cli.suggest_max_lr(lrs, losses, 100) == pytest.approx(lrs[54] / 10)


@pytest.mark.slow
def test_the_default_path_on_the_sample_is_better_than_chance(tmp_path):
    """The README's sample with nothing but --epochs 2: LR finder, a batch size that gives each epoch 8 steps,
    BatchNorm statistics recomputed after fit. 300 test images: chance is 10 % with a sigma of 1.7 %."""
    out = tmp_path / "default"
    result = subprocess.run([sys.executable, "-m", "training.cli", "--dataset", str(SAMPLE), "--epochs", "2",
                             "--output-dir", str(out)], cwd=ROOT, env=_env(), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.16, metrics
    console = result.stdout + result.stderr  # what a user sees: Lightning's log lines go to stderr
    assert console.count("Seed set to 0") == 1, "the reseed before the module is built is not said again"
    assert console.count("Test metric") == 1 and "temperature " in console
    predicted = ResNet9.from_pretrained(out / "release").predict(
        [img for img in sample_split("test")[0][:100]], top_k=1)
    assert len({row[0][0] for row in predicted}) >= 3, "not one class for everything"


# ---------------------------------------------------------------- one run per output folder


def _wait_for_lock_of(proc: subprocess.Popen, out: Path, timeout: float = 300) -> None:
    lock, deadline = out / ".run.lock", time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if lock.is_file() and f'"pid": {proc.pid}' in lock.read_text():
            return
        time.sleep(0.05)
    pytest.fail(f"the first process never took the lock (exit status {proc.poll()})")


def test_a_second_run_on_a_folder_in_use_is_refused_at_once(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(_command(out, "--epochs", "3", "--limit-train-batches", "6", "--limit-test-batches", "2"),
                             cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_lock_of(first, out)
        for extra in ([], ["--resume", "last"]):
            code, console = run_cli(SMOKE + ["--max-lr", "0.01", "--epochs", "3", "--limit-train-batches", "6",
                                             "--output-dir", str(out), *extra])
            assert code == 1 and f"is in use by a run that is still going (process {first.pid} on " in console
            assert "pick another --output-dir (nothing was changed)" in console and "Traceback" not in console
        assert "Epoch" not in console and "LR" not in console, "refused before any data or training"
        assert first.poll() is None, "the first run was still going when the others were refused"
    finally:
        console = first.communicate(timeout=600)[0]
    assert first.returncode == 0, console[-2000:]
    assert [int(row["epoch"]) for row in _train_rows(out)] == [0, 1, 2], "one row per epoch, of one run"
    assert json.loads((out / "metrics.json").read_text())["optimizer_steps"] == 18


def test_the_lock_of_a_killed_run_is_stale_and_the_next_run_takes_it(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from training import output_lock\nwith output_lock.hold(Path(sys.argv[1])):\n"
                               "    time.sleep(600)", str(out)], cwd=ROOT, env=_env())
    _wait_for_lock_of(holder, out, timeout=60)
    code, console = run_cli(SMOKE + ["--max-lr", "0.01", "--epochs", "1", "--output-dir", str(out)])
    assert code == 1 and f"(process {holder.pid} on " in console
    holder.send_signal(signal.SIGKILL)
    assert holder.wait() == -signal.SIGKILL
    assert (out / ".run.lock").is_file(), "the killed run left its lock file behind"
    code, console = run_cli(SMOKE + ["--max-lr", "0.01", "--epochs", "1", "--limit-train-batches", "2",
                                     "--limit-test-batches", "1", "--output-dir", str(out)])
    assert code == 0, console[-2000:]
    assert (out / "release" / "model.safetensors").is_file()


def test_the_lock_is_released_on_any_exit(tmp_path):
    from training import output_lock

    out = tmp_path / "run"
    code, console = run_cli(SMOKE + ["--optimizer", "sgd", "--max-lr", "10", "--momentum", "0.99", "--logit-scale",
                                     "1000", "--epochs", "1", "--limit-train-batches", "6", "--output-dir", str(out)])
    assert code == 1 and "training diverged" in console, console[-2000:]
    with output_lock.hold(out):  # the failed run let go of it
        with pytest.raises(output_lock.FolderInUse, match="is in use by a run that is still going"):
            with output_lock.hold(out):  # a second holder, even in one process (flock is per open file)
                pass
    with pytest.raises(ZeroDivisionError):
        with output_lock.hold(out):
            raise ZeroDivisionError
    with output_lock.hold(out):
        pass


# ---------------------------------------------------------------- the input path's default


def cpu_config(**hardware):
    from training.config import RunConfig

    config = RunConfig()
    config.hardware.accelerator = "cpu"
    for key, value in hardware.items():
        setattr(config.hardware, key, value)
    return config


def test_a_new_run_on_one_cpu_takes_the_batch_path_by_default():
    config = cpu_config()
    reason = cli.resolve_input_path(config)
    assert (config.data.data_on_device, config.augment.augment_on_device) == (True, True)
    assert reason.startswith("auto: one CPU device, so the batch path")


@pytest.mark.parametrize("change, expected", [
    ({"devices": "2"}, (False, False)),  # several processes: each gets its shard from the workers' sampler
    ({"augment": False}, (False, False)),
    ({"augment": True}, (True, True)),
    ({"data": False}, (False, False)),
])
def test_the_input_path_default_yields_to_flags_and_to_several_devices(change, expected):
    config = cpu_config(**({"devices": change["devices"]} if "devices" in change else {}))
    if "augment" in change:
        config.augment.augment_on_device = change["augment"]
    if "data" in change:
        config.data.data_on_device = change["data"]
    cli.resolve_input_path(config)
    assert (config.data.data_on_device, config.augment.augment_on_device) == expected
    config.validate()


@pytest.mark.parametrize("before, expected", [({}, (False, False)),
                                              ({"data_on_device": True, "augment_on_device": True}, (True, True))])
def test_a_resumed_run_keeps_the_input_path_its_checkpoint_ran(before, expected):
    config = cpu_config()
    saved = {"hyper_parameters": {"config": {
        "data": {k: v for k, v in before.items() if k == "data_on_device"},
        "augment": {k: v for k, v in before.items() if k == "augment_on_device"}}}}
    assert cli.resolve_input_path(config, saved) == "auto: as the resumed checkpoint ran"
    assert (config.data.data_on_device, config.augment.augment_on_device) == expected


def test_the_run_records_its_input_path_and_why(trained):
    _, out, _, _ = trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["input_path"] == "batched on the device"
    assert metrics["input_path_reason"].startswith("auto: one CPU device")
    saved = json.loads((out / "release" / "training_config.json").read_text())
    assert saved["data"]["data_on_device"] is True and saved["augment"]["augment_on_device"] is True


# ---------------------------------------------------------------- resnet-cifar-eval


def run_eval(argv: list[str], capsys) -> tuple[int, str]:
    from training import evaluate

    try:
        code = evaluate.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_eval_re_measures_a_release_and_finds_it_matches_its_card(trained, capsys, tmp_path):
    _, out, _, _ = trained
    metrics = json.loads((out / "metrics.json").read_text())
    code, console = run_eval([str(out / "release"), "--dataset", str(SAMPLE), "--json", str(tmp_path / "m.json")],
                             capsys)
    assert code == 0, console
    assert f"{metrics['test_images']:,} images of {SAMPLE} split 'test'" in console
    for words in ("test accuracy (no TTA)", "test accuracy (flip TTA)", "ECE (15 bins)", "NLL",
                  "card (model-index) accuracy"):
        line = next(line for line in console.splitlines() if line.startswith(words))
        assert line.endswith(": match"), line
    measured = json.loads((tmp_path / "m.json").read_text())
    assert measured["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6), "the same evaluation"
    assert measured["ece"] == pytest.approx(metrics["ece"], abs=1e-6)
    assert set(measured["per_class_accuracy"]) == set(release.read(out / "release").model.class_names)
    assert "every stated figure matches" in console


def test_eval_says_which_stated_figure_the_weights_do_not_measure(trained, capsys, tmp_path):
    _, out, _, _ = trained
    folder = tmp_path / "release"
    shutil.copytree(out / "release", folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["test_accuracy_tta"] = min(1.0, metrics["test_accuracy_tta"] + 0.05)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    code, console = run_eval([str(folder), "--dataset", str(SAMPLE)], capsys)
    assert code == 1
    lines = {line.split(":")[0]: line for line in console.splitlines() if ": " in line}
    assert lines["test accuracy (flip TTA)"].endswith("MISMATCH")
    assert lines["test accuracy (no TTA)"].endswith("match") and lines["NLL"].endswith("match")
    assert "some stated figures do not match what the weights measure" in console


def test_eval_of_a_source_that_is_no_release_is_one_line(tmp_path, capsys):
    code, console = run_eval([str(tmp_path / "nothing"), "--dataset", str(SAMPLE)], capsys)
    assert code == 2 and console.count("\n") == 1 and "resnet-cifar-eval: error:" in console


BUNDLED = ROOT / "space" / "model"  # states its figures on the 10,000 test images


def test_eval_on_a_split_smaller_than_the_release_states_is_one_line_that_says_what_to_pass(capsys):
    code, console = run_eval([str(BUNDLED), "--dataset", str(SAMPLE)], capsys)
    error = console.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in console
    assert error.startswith(f"resnet-cifar-eval: error: {BUNDLED} states its figures on 10,000 images of split 'test'")
    assert f"{SAMPLE} has 300" in error and "pass --limit N (1 to 300) to measure the first N without comparing" in error
    assert "--limit must be" not in error, "no --limit was given: the message must not blame one"


def test_eval_with_a_limit_other_than_the_stated_count_reports_without_judging(capsys, tmp_path):
    code, console = run_eval([str(BUNDLED), "--dataset", str(SAMPLE), "--limit", "300", "--json",
                              str(tmp_path / "m.json")], capsys)
    assert code == 0, console
    assert "not compared: the release states its figures on 10,000 images, these are 300" in console
    assert "MISMATCH" not in console and "match" not in console.replace("not compared", "")
    images, labels = sample_split("test")
    model = ResNet9.from_pretrained(BUNDLED)
    accuracy = float((model.probabilities(normalize(images, model.mean, model.std)).argmax(1).numpy() == labels).mean())
    measured = json.loads((tmp_path / "m.json").read_text())
    assert measured["test_images"] == 300 and measured["test_accuracy"] == pytest.approx(accuracy, abs=1 / 300)
    assert f"test accuracy (no TTA): {measured['test_accuracy'] * 100:.2f} %" in console
