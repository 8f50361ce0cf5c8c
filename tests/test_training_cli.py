"""resnet-cifar-train end to end on the real CIFAR-10 sample, with the Hub faked only at its HTTP API."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import torch
import numpy as np
import pytest
from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import filter_repo_objects

from resnet_cifar import ResNet9, card
from resnet_cifar.artifacts import load_misclassified
from resnet_cifar.preprocess import normalize
from training import cli
from training.publish import ALLOW_PATTERNS, PublishError, publish

SAMPLE = Path(__file__).parent / "data" / "cifar10"
ROOT = Path(__file__).parent.parent
TOKEN = "hf_FAKEtoken0123456789abcdefSECRET"
SMOKE = ["--dataset", str(SAMPLE), "--batch-size", "32", "--num-workers", "0"]


class FakeHub:
    """Records what HfApi would send; nothing leaves the machine."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.repos: list[dict] = []
        self.commits: list[dict] = []
        self.fail_with = fail_with

    def install(self, monkeypatch: pytest.MonkeyPatch) -> "FakeHub":
        hub = self

        def create_repo(self, repo_id, **kwargs):
            hub.repos.append({"repo_id": repo_id, **kwargs})
            if hub.fail_with is not None:
                raise hub.fail_with
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, **kwargs):
            names = sorted(p.name for p in Path(folder_path).iterdir() if p.is_file())
            files = sorted(filter_repo_objects(names, allow_patterns=allow_patterns))
            hub.commits.append({"repo_id": repo_id, "files": files,
                                "contents": {f: (Path(folder_path) / f).read_bytes() for f in files}, **kwargs})
            return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc123", commit_message="",
                              commit_description="", oid="abc123")

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        return self


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _sample_test_split() -> tuple[np.ndarray, np.ndarray]:
    import datasets

    from training.data import local_cache_dir

    test = datasets.load_dataset(str(SAMPLE), cache_dir=local_cache_dir(SAMPLE))["test"]
    return np.stack([np.asarray(im.convert("RGB")) for im in test["img"]]), np.asarray(test["label"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real run of the command: LR finder, fit, test, report, save, push to the faked Hub."""
    out = tmp_path_factory.mktemp("run")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub = FakeHub().install(monkeypatch)
    log = out / "console.log"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = cli.main(SMOKE + ["--epochs", "2", "--limit-train-batches", "8", "--lr-find-steps", "16",
                                 "--output-dir", str(out), "--misclassified", "120",
                                 "--push-to-hub", "someone/resnet9-test"])
    log.write_text(buffer.getvalue())
    monkeypatch.undo()
    return code, out, hub, buffer.getvalue()


def test_the_command_writes_a_complete_release(trained):
    code, out, _, _ = trained
    assert code == 0
    release = out / "release"
    names = {p.name for p in release.iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "misclassified.safetensors"} <= names
    assert {"lr_finder.png", "lr_schedule.png", "metrics.png", "confusion_matrix.png", "misclassified.png",
            "gradcam.png"} <= names
    readme = (release / "README.md").read_text()
    for png in (n for n in names if n.endswith(".png")):
        assert f"]({png})" in readme, f"{png} is shown in the card"
    assert "(Lightning LR finder)" in readme
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((out / "lr_finder.json").read_text())["suggestion"] > 0


def test_card_accuracy_equals_what_the_saved_weights_measure(trained):
    _, out, _, _ = trained
    release = out / "release"
    model = ResNet9.from_pretrained(release)
    images, labels = _sample_test_split()
    measured = float((model.probabilities(normalize(images, model.mean, model.std)).argmax(1).numpy() == labels).mean())
    assert card.test_accuracy_of(release) == pytest.approx(measured, abs=1e-4)
    metadata = card.validate((release / "README.md").read_text(), measured)
    assert metadata["datasets"] == ["uoft-cs/cifar10"]
    mistakes = load_misclassified(release)
    assert len(mistakes) == min(120, int(round((1 - measured) * len(labels))))
    assert (mistakes.predicted_labels != mistakes.true_labels).all()
    assert list(mistakes.probabilities) == sorted(mistakes.probabilities, reverse=True)


def test_push_uploads_the_allow_listed_release_in_one_commit_without_the_token(trained):
    code, out, hub, console = trained
    assert code == 0
    assert [r["repo_id"] for r in hub.repos] == ["someone/resnet9-test"]
    assert len(hub.commits) == 1, "one commit"
    commit = hub.commits[0]
    assert commit["files"] == sorted(p.name for p in (out / "release").iterdir())
    assert all(any(Path(f).match(g) for g in ALLOW_PATTERNS) for f in commit["files"])
    assert "checkpoints" not in str(commit["files"]) and "last.ckpt" not in commit["files"]
    assert "pushed" in console and "commit/abc123" in console
    for name, content in commit["contents"].items():
        assert TOKEN.encode() not in content, name
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in console
    assert '"someone/resnet9-test"' in (out / "release" / "README.md").read_text(), "usage snippet names the repo"


@pytest.mark.parametrize("failure", [
    httpx2.ConnectError("[Errno -3] Temporary failure in name resolution"),
    HfHubHTTPError(f"401 Client Error: Unauthorized (token {TOKEN})",
                   response=httpx2.Response(401, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))),
])
def test_a_failed_push_leaves_the_folder_intact_and_says_how_to_retry(trained, monkeypatch, capsys, failure):
    _, out, _, _ = trained
    release = out / "release"
    before = _tree_digest(release)
    FakeHub(fail_with=failure).install(monkeypatch)
    code = cli.push_main([str(release), "someone/resnet9-test"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1, "one line"
    assert f"retry with: resnet-cifar-push {release} someone/resnet9-test" in err
    assert TOKEN not in err
    assert _tree_digest(release) == before
    with pytest.raises(PublishError, match="intact"):
        publish(release, "someone/resnet9-test", token=TOKEN)


def test_repush_of_a_finished_folder(trained, monkeypatch, capsys):
    _, out, _, _ = trained
    hub = FakeHub().install(monkeypatch)
    assert cli.push_main([str(out / "release"), "someone/other", "--private"]) == 0
    assert hub.repos[0]["private"] is True and len(hub.commits) == 1
    assert cli.push_main([str(out), "someone/other"]) == 1, "the run folder is not a release"
    assert "not a complete release" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["resnet9", "a/b/c", "owner/", "/name", "owner/na me", "owner/name.git"])
def test_a_bad_repo_id_is_refused_before_training(tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(SMOKE + ["--output-dir", str(tmp_path / "out"), "--push-to-hub", bad])
    assert exit_info.value.code == 2
    assert "must be 'owner/name'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "nothing was trained"


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert cli.main(SMOKE + ["--output-dir", str(tmp_path), "--resume", "last", "--max-lr", "0.01"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training.cli", *SMOKE, "--max-lr", "0.01", "--output-dir", str(out), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _train_rows(out: Path) -> list[dict[str, str]]:
    with (out / "logs" / "metrics.csv").open() as f:
        return [row for row in csv.DictReader(f) if row.get("train_loss")]


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "run"
    args = ("--epochs", "3", "--limit-train-batches", "6")
    first = subprocess.Popen(_command(out, *args), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    checkpoint = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # let the checkpoint write finish
    first.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL, "the first run was killed, not finished"
    assert not (out / "release").exists()
    import torch

    stopped_at = torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"]
    assert stopped_at < 2
    resumed = subprocess.run(_command(out, *args, "--resume", "last"), cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Restored all states" in resumed.stderr + resumed.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["optimizer_steps"] == 18
    epochs = [int(row["epoch"]) for row in _train_rows(out)]
    assert epochs == [0, 1, 2], "one row per epoch, before and after the kill, in one log"
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
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["optimizer_steps"] == 3
    assert ResNet9.from_pretrained(out / "release").num_classes == 10


def test_ddp_without_max_lr_is_refused(tmp_path, capsys):
    code = cli.main(["--dataset", str(SAMPLE), "--num-workers", "0", "--accelerator", "cpu", "--devices", "2",
                     "--strategy", "ddp", "--output-dir", str(tmp_path)])
    assert code == 2
    assert "pass --max-lr for multi-device training" in capsys.readouterr().err


def test_ema_weights_are_what_gets_released(tmp_path):
    import safetensors.torch

    def release(*extra: str) -> dict:
        out = tmp_path / ("ema" if extra else "plain")
        code = cli.main(SMOKE + ["--max-lr", "0.05", "--epochs", "1", "--limit-train-batches", "4",
                                 "--limit-test-batches", "1", "--output-dir", str(out), *extra])
        assert code == 0
        return safetensors.torch.load_file(out / "release" / "model.safetensors")

    plain, ema = release(), release("--ema-decay", "0.5")
    assert plain.keys() == ema.keys()
    assert any(not torch.equal(plain[k], ema[k]) for k in plain if k.endswith("weight"))
    assert "| EMA of the weights | decay 0.5 |" in (tmp_path / "ema" / "release" / "README.md").read_text()
    assert cli.main(SMOKE + ["--max-lr", "0.05", "--ema-decay", "1.5", "--output-dir", str(tmp_path / "bad")]) == 2
