"""Shared test setup and helpers: offline Hub, a seeded model, release folders, fakes at the Hub's edge, a launched
Space and hand-made image files. Test files import nothing from each other: what two of them need lives here."""

import os

# Before anything imports huggingface_hub: no test may reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import contextlib  # noqa: E402
import io  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
import zlib  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import CommitInfo, HfApi, constants  # noqa: E402
from huggingface_hub.errors import RemoteEntryNotFoundError  # noqa: E402
from PIL import Image  # noqa: E402

from resnet_cifar import ResNet9  # noqa: E402
from resnet_cifar.release import MisclassifiedSet, save_misclassified  # noqa: E402

# A plugin may have imported huggingface_hub before this file ran; make sure offline mode holds anyway.
constants.HF_HUB_OFFLINE = True

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "space"
# The Space runs as `python app.py` from its own folder and imports its siblings (uploads, gate) top-level.
sys.path.insert(0, str(SPACE))
SAMPLE = ROOT / "tests" / "data" / "cifar10"
EXAMPLES = sorted((SPACE / "examples").glob("*.png"))
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
N_MISCLASSIFIED = 30
TOKEN = "hf_FAKEtoken0123456789abcdefSECRET"


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


# ---------------------------------------------------------------- release folders


def make_release(folder: Path, misclassified: bool = True, card: str | None = None) -> Path:
    """A release folder like the one resnet-cifar-train writes: seeded random weights, a card, a misclassified set."""
    torch.manual_seed(0)
    ResNet9().save_pretrained(folder)
    if card is not None:
        (folder / "README.md").write_text(card)
    if misclassified:
        rng = np.random.default_rng(0)
        examples = [np.asarray(Image.open(p).convert("RGB")) for p in EXAMPLES]
        noise = rng.integers(0, 256, (N_MISCLASSIFIED - len(examples), 32, 32, 3), dtype=np.uint8)
        true = rng.integers(0, 10, N_MISCLASSIFIED)
        save_misclassified(folder, MisclassifiedSet(
            images=np.concatenate([np.stack(examples), noise]),
            true_labels=true.astype(np.int64),
            predicted_labels=((true + rng.integers(1, 10, N_MISCLASSIFIED)) % 10).astype(np.int64),
            probabilities=np.sort(rng.uniform(0.4, 1.0, N_MISCLASSIFIED))[::-1].astype(np.float32),
        ))
    return folder


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path) with a hash of its content: to show nothing changed."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the Hub, faked at its edge


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
    for module in ("resnet_cifar.layout", "huggingface_hub.hub_mixin"):
        monkeypatch.setattr(f"{module}.hf_hub_download", hub.hf_hub_download)
    return hub


class FakeHubApi:
    """Records what HfApi would send (repos, commits with their exact files and bytes, whoami); nothing leaves."""

    def __init__(self, fail_with: Exception | None = None, user: str = "someone", role: str = "write",
                 orgs: tuple[str, ...] = (), token_check_fails: bool = True) -> None:
        self.repos: list[dict] = []
        self.commits: list[dict] = []
        self.whoami_calls = 0
        self.fail_with, self.user, self.role, self.orgs = fail_with, user, role, orgs
        self.token_check_fails = token_check_fails  # False: whoami answers, and only the upload fails

    def install(self, monkeypatch: pytest.MonkeyPatch) -> "FakeHubApi":
        hub = self

        def create_repo(self, repo_id, **kwargs):
            hub.repos.append({"repo_id": repo_id, **kwargs})
            if hub.fail_with is not None:
                raise hub.fail_with
            return f"https://huggingface.co/{repo_id}"

        def create_commit(self, repo_id, operations, **kwargs):
            files = {op.path_in_repo: op.path_or_fileobj for op in operations if hasattr(op, "path_or_fileobj")}
            deleted = [op.path_in_repo for op in operations if not hasattr(op, "path_or_fileobj")]
            hub.commits.append({"repo_id": repo_id, "files": list(files), "contents": files, "deleted": deleted,
                                **kwargs})
            return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc123", commit_message="",
                              commit_description="", oid="abc123")

        def whoami(self, *args, **kwargs):
            hub.whoami_calls += 1
            if hub.fail_with is not None and hub.token_check_fails:
                raise hub.fail_with
            return {"name": hub.user, "orgs": [{"name": o} for o in hub.orgs],
                    "auth": {"accessToken": {"role": hub.role}}}

        def refuse(self, *args, **kwargs):
            raise AssertionError("only create_repo and one create_commit may reach the Hub")

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)
        monkeypatch.setattr(HfApi, "whoami", whoami)
        monkeypatch.setattr(HfApi, "upload_folder", refuse)
        monkeypatch.setattr(HfApi, "upload_file", refuse)
        return self


# ---------------------------------------------------------------- a launched Space


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, log_path: Path, timeout: float) -> float:
    """Poll the page until it answers 200; fail with the server log if the process dies or time runs out."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            pytest.fail(f"the Space exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the Space did not answer within {timeout:.0f} s:\n{log_path.read_text(errors='replace')}")


@contextmanager
def running_space(release: Path | str, log_path: Path, timeout: float = 300.0, app: Path = SPACE / "app.py",
                  python: str = sys.executable, env: dict | None = None, cwd: Path = ROOT) -> Iterator[str]:
    """Start a Space's app.py on a free port (GRADIO_SERVER_PORT) and yield its URL once it answers."""
    port = free_port()
    env = {**os.environ, **OFFLINE_ENV, "MODEL_ID": str(release), "GRADIO_SERVER_PORT": str(port),
           "GRADIO_SERVER_NAME": "127.0.0.1", **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([python, str(app)], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, proc, log_path, timeout)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- hand-made image files


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def header_only_png(width: int, height: int) -> bytes:
    """A tiny PNG file whose header declares width x height grayscale pixels (a decompression bomb when big)."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def rgba16_png(width: int, height: int) -> bytes:
    """A real, highly compressible PNG of width x height RGBA at 16 bits per channel (8 bytes a pixel)."""
    row = b"\0" + b"\x7f" * (width * 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def bad_uploads(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files that must be refused, each with a regex the error message must match."""
    import io

    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    files = {
        "empty.png": (b"", r"empty \(0 bytes\)"),
        "truncated.png": (buf.getvalue()[: len(buf.getvalue()) // 2], r"could not be decoded.*truncated"),
        "text.png": (b"hello, I am a text file with a .png name\n", r"not an image"),
        "bomb.png": (header_only_png(20000, 20000), r"decompression bomb.*40,000,000"),
        "huge.png": (header_only_png(10000, 5000), r"10000x5000 = 50,000,000 pixels; at most 40,000,000"),
    }
    out = {}
    for name, (data, pattern) in files.items():
        (folder / name).write_bytes(data)
        out[name] = (folder / name, pattern)
    return out


def good_uploads(folder: Path) -> dict[str, Path]:
    """Images in modes that must just work: 16-bit, CMYK, palette, RGBA, grayscale, and an odd-sized RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    ramp = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)
    images = {
        "gray16.png": Image.fromarray(ramp),
        "cmyk.jpg": Image.new("CMYK", (40, 30), (0, 128, 255, 0)),
        "palette.png": Image.new("RGB", (40, 30), (200, 10, 10)).convert("P", palette=Image.Palette.ADAPTIVE),
        "rgba.png": Image.new("RGBA", (40, 30), (200, 10, 10, 100)),
        "gray.png": Image.new("L", (33, 17), 128),
        "wide.webp": Image.new("RGB", (300, 20), (10, 200, 10)),
    }
    out = {}
    for name, image in images.items():
        image.save(folder / name)
        out[name] = folder / name
    assert Image.open(out["gray16.png"]).mode.startswith("I;16")
    return out


def concurrently(work, n: int) -> list:
    """`work(i)` for i in 0..n-1, each on a thread of its own, all at once; their results in order. Fails with
    every thread's exception if any raised."""
    results, errors = [None] * n, []

    def run(i: int) -> None:
        try:
            results[i] = work(i)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(repr(err))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def assert_close_pixels(shown: np.ndarray, expected: np.ndarray) -> None:
    """A served gallery JPEG against the pixels the library computes: close, as JPEG at quality 95 is."""
    diff = np.abs(shown.astype(int) - expected.astype(int))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 16, (diff.mean(), diff.max())


def sample_split(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """A split of the committed CIFAR-10 sample as (N x 32 x 32 x 3 uint8, N labels)."""
    import datasets

    from training.data import local_cache_dir

    data = datasets.load_dataset(str(SAMPLE), cache_dir=local_cache_dir(SAMPLE))[split]
    return np.stack([np.asarray(im.convert("RGB")) for im in data["img"]]), np.asarray(data["label"])


def run_cli(argv: list[str], env: dict | None = None) -> tuple[int, str]:
    """resnet-cifar-train (training.cli.main) in this process: (exit status, everything it printed)."""
    from training import cli  # Lightning loads only for the tests that train

    buffer = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            try:
                code = cli.main(argv)
            except SystemExit as exit_:
                code = exit_.code
    return code, buffer.getvalue()


# ---------------------------------------------------------------- the quick run: python -m pytest -m "not slow"
# Slow: real training (a Lightning or plain run), launched apps, browsers, fresh virtual environments, other
# processes. Chosen from `python -m pytest --durations=80` of the whole suite on 2 cores (2026-12-02: 643 tests in
# 642 s; every test or fixture setup of 1.5 s or more is here): the quick run keeps the unit tests of every module.
SLOW_FILES = {"test_training_cli.py", "test_fast_path.py", "test_gpu_staging.py", "test_space_browser.py",
              "test_gradio_gaps.py"}
SLOW_FIXTURES = {"trained", "finished", "tricked", "eager", "browser_setup", "driver", "server", "client"}
SLOW_TESTS = {
    "test_a_large_16_bit_rgba_png_costs_a_small_multiple_of_its_rgb_pixels",
    "test_a_release_that_cannot_be_served_stops_the_start_in_one_line",
    "test_a_weights_write_on_a_full_disk_is_an_os_error_naming_the_file",
    "test_aborted_uploads_do_not_outlive_a_crash_and_restart",
    "test_api_answers_a_worst_case_upload",
    "test_a_hub_dataset_without_network_fails_at_once",
    "test_one_cycle_runs_every_step_and_peaks_at_pct_start",
    "test_sgd_momentum_is_what_the_flag_says",
    "test_the_test_evaluation_is_one_set_of_numbers",
    "test_training_reduces_the_loss_on_real_images",
    "test_the_service_imports_no_web_framework",
    "test_the_upload_folder_stays_within_its_budget_at_every_upload",
    "test_usage_snippet_runs_verbatim",
    "test_readme_api_snippet_runs",
    "test_help_and_bad_arguments_answer_before_torch_lightning_or_datasets_load",
}


def pytest_collection_modifyitems(config, items):
    """Mark the slow tests (above); `.ci/run` and a plain `python -m pytest` still run every one."""
    for item in items:
        name = getattr(item, "originalname", None) or item.name
        if (item.path.name in SLOW_FILES or name in SLOW_TESTS
                or SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.slow)
