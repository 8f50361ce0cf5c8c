"""Shared test setup: offline Hub, a small seeded model, a saved release folder and a fake Hub."""

import os

# Before anything imports huggingface_hub: no test may reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import constants  # noqa: E402
from huggingface_hub.errors import RemoteEntryNotFoundError  # noqa: E402

from resnet_cifar import ResNet9  # noqa: E402

# A plugin may have imported huggingface_hub before this file ran; make sure offline mode holds anyway.
constants.HF_HUB_OFFLINE = True


@pytest.fixture
def single_thread():
    """Run torch on one thread for the test, then restore the setting.

    These tests push 1-3 images through the network: two threads barely help there, and when other work
    shares the 2 cores the threads wait on each other. Measured with a training run beside them (load 8):
    17 s with one thread against 48 s with two, and half the CPU time.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model() -> ResNet9:
    """A seeded, untrained ResNet9 in eval mode."""
    torch.manual_seed(0)
    return ResNet9().eval()


@pytest.fixture
def release_dir(tmp_path: Path, model: ResNet9) -> Path:
    """A folder written by save_pretrained: config.json and model.safetensors."""
    folder = tmp_path / "release"
    model.save_pretrained(folder)
    return folder


class FakeHub:
    """Stands in for hf_hub_download only: serves files of local folders named by repo id, records calls."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[dict] = []

    def add(self, repo_id: str, folder: Path) -> None:
        """Publish the files of `folder` as repo `repo_id`."""
        shutil.copytree(folder, self.root / repo_id)

    def hf_hub_download(self, repo_id: str, filename: str, **kwargs) -> str:
        """Return the local path of the file, or raise the error the Hub raises for a missing file."""
        self.calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
        path = self.root / repo_id / filename
        if not path.is_file():
            # The duck-typed response carries only what HfHubHTTPError reads.
            response = SimpleNamespace(headers={}, request=None)
            raise RemoteEntryNotFoundError(f"404: {filename} not in {repo_id}", response=response)
        return str(path)


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """Replace the network edge (every hf_hub_download the library reaches) with a local FakeHub."""
    hub = FakeHub(tmp_path / "hub")
    for module in ("resnet_cifar.model", "resnet_cifar.artifacts", "huggingface_hub.hub_mixin"):
        monkeypatch.setattr(f"{module}.hf_hub_download", hub.hf_hub_download)
    return hub
