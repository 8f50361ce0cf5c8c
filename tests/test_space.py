"""The Space (space/app.py): its functions directly, then the launched app through gradio_client.

Offline: the app serves a small release folder built here (random weights, a misclassified set), never the Hub.
The helpers at the top are also used by tests/test_space_browser.py.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import math
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_cifar import ResNet9
from resnet_cifar.artifacts import MisclassifiedSet, load_misclassified, save_misclassified
from resnet_cifar.gradcam import LAYERS
from resnet_cifar.preprocess import resize_rgb

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "space"
EXAMPLES = sorted((SPACE / "examples").glob("*.png"))
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
N_MISCLASSIFIED = 30
# gradio_client's uploads and downloads time out after httpx's 5 s by default: too short for a busy CI machine.
CLIENT_KWARGS = {"verbose": False, "httpx_kwargs": {"timeout": 120}}

for key, value in OFFLINE_ENV.items():
    os.environ.setdefault(key, value)


# ---------------------------------------------------------------- helpers shared with the browser test


def load_app():
    """Import space/app.py as a module (space/ is a folder of files, not a package)."""
    spec = importlib.util.spec_from_file_location("space_app", SPACE / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is being built
    spec.loader.exec_module(module)
    return module


def make_release(folder: Path, misclassified: bool = True) -> Path:
    """A small release folder like the one resnet-cifar-train writes: random weights, a misclassified set."""
    torch.manual_seed(0)
    ResNet9().save_pretrained(folder)
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


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_space(release: Path, log_path: Path, timeout: float = 300.0) -> Iterator[str]:
    """Start `python space/app.py` on a free port (GRADIO_SERVER_PORT) and yield its URL once it answers."""
    port = free_port()
    env = {**os.environ, **OFFLINE_ENV, "MODEL_ID": str(release), "GRADIO_SERVER_PORT": str(port),
           "GRADIO_SERVER_NAME": "127.0.0.1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(SPACE / "app.py")], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
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


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def header_only_png(width: int, height: int) -> bytes:
    """A tiny PNG file whose header declares width x height grayscale pixels (a decompression bomb when big)."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def bad_uploads(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files that must be refused, each with a regex the error message must match."""
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


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def release(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="session")
def app():
    return load_app()


@pytest.fixture(scope="session")
def space(app, release):
    return app.Explainer.load(str(release))


@pytest.fixture(scope="session")
def uploads(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads")
    return bad_uploads(folder / "bad"), good_uploads(folder / "good")


@pytest.fixture(scope="module")
def server(release, tmp_path_factory):
    with running_space(release, tmp_path_factory.mktemp("server") / "space.log") as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, **CLIENT_KWARGS)


# ---------------------------------------------------------------- the functions, directly


def test_app_imports_only_the_library_gradio_and_basics():
    tree = ast.parse((SPACE / "app.py").read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    third_party = roots - set(sys.stdlib_module_names)
    assert third_party <= {"gradio", "numpy", "PIL", "torch", "resnet_cifar"}, third_party
    assert "training" not in roots


@pytest.mark.parametrize("value", [1, 3, 10, 3.0])
def test_whole_number_accepts(app, value):
    assert app.whole_number(value, "top_k", 1, 10) == int(value)


@pytest.mark.parametrize("value", [0, 11, -1, 2.5, True, "3", None, math.nan, math.inf])
def test_whole_number_refuses_with_the_allowed_range(app, value):
    with pytest.raises(app.gr.Error, match=r"top_k must be a whole number from 1 to 10"):
        app.whole_number(value, "top_k", 1, 10)


def test_opacity_layer_and_flag_checks(app):
    assert app.check_opacity(0) == 0.0 and app.check_opacity(1) == 1.0 and app.check_opacity(0.25) == 0.25
    for bad in (-0.1, 1.5, math.nan, "0.5", None, True):
        with pytest.raises(app.gr.Error, match="opacity must be a number from 0 to 1"):
            app.check_opacity(bad)
    assert [app.check_layer(name) for name in LAYERS] == list(LAYERS)
    for bad in ("layer4", "fc", "", None, "LAYER3"):
        with pytest.raises(app.gr.Error, match="allowed are prep, layer1, layer2, layer3"):
            app.check_layer(bad)
    with pytest.raises(app.gr.Error, match="show_gradcam must be true or false"):
        app.check_flag("yes", "show_gradcam")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the app ignores it too: it refuses them
def test_bad_uploads_are_clear_errors(app, uploads):
    bad, _ = uploads
    for name, (path, pattern) in bad.items():
        with pytest.raises(app.UploadError, match=pattern):
            app.read_image({"path": str(path)})
    with pytest.raises(app.UploadError, match="no image given"):
        app.read_image(None)


def test_every_image_mode_decodes_to_rgb(app, uploads):
    _, good = uploads
    for name, path in good.items():
        rgb = app.read_image(str(path))
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
    assert app.read_image(str(good["wide.webp"])).shape == (20, 300, 3)
    # RGBA is composited on white, 16-bit keeps its range instead of clipping to white.
    assert (app.read_image(str(good["rgba.png"]))[0, 0] > [200, 100, 100]).all()
    assert app.read_image(str(good["gray16.png"])).max() < 255


def test_classify_matches_the_library(space):
    for k in (1, 3, 10):
        result = space.classify({"path": str(EXAMPLES[0])}, k)
        expected = space.model.predict(Image.open(EXAMPLES[0]), top_k=k)[0]
        assert list(result) == [name for name, _ in expected]
        assert np.allclose(list(result.values()), [p for _, p in expected], atol=1e-5)


def test_gradcam_puts_the_upload_first_then_the_examples_in_one_batched_pass(app, space, monkeypatch):
    calls = []
    real_explain = app.explain
    monkeypatch.setattr(app, "explain", lambda model, batch, layer, **kw: calls.append(len(batch)) or real_explain(
        model, batch, layer, **kw))
    items = space.gradcam({"path": str(EXAMPLES[6])}, 4, "layer2", 0.5)
    assert calls == [4]
    assert [caption.split(":")[0] for _, caption in items] == [
        "your image", *[f"example {p.stem.split('_', 1)[1]}" for p in EXAMPLES[:3]]]
    assert all(image.shape == (160, 160, 3) and image.dtype == np.uint8 for image, _ in items)
    assert all(re.fullmatch(r"[^:]+: \w+ \(\d\.\d\d\)", caption) for _, caption in items)
    only_examples = space.gradcam(None, 10, "layer3", 0.5)
    assert calls == [4, 10] and len(only_examples) == 10 and only_examples[9][1].startswith("example bird")


def test_gradcam_captions_come_from_the_explained_forward_pass(space):
    """The probabilities in the captions are kept from Grad-CAM's own forward pass: they must be the model's."""
    items = space.gradcam(None, 10, "layer2", 0.5)
    for (_, caption), path in zip(items, EXAMPLES):
        top = space.classify({"path": str(path)}, 1)
        name, p = next(iter(top.items()))
        assert caption.endswith(f": {name} ({p:.2f})"), (caption, top)


def test_gradcam_opacity_zero_shows_the_upscaled_image(space):
    image, _ = space.gradcam(None, 1, "prep", 0.0)[0]
    example = np.asarray(Image.open(EXAMPLES[0]).convert("RGB"))
    assert np.array_equal(image, resize_rgb(example, 160))
    heat, _ = space.gradcam(None, 1, "prep", 1.0)[0]
    assert not np.array_equal(heat, image)


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_explains(space, layer):
    assert len(space.gradcam({"path": str(EXAMPLES[3])}, 2, layer, 0.7)) == 2


def test_misclassified_captions_and_optional_gradcam(app, space, release, monkeypatch):
    mis = load_misclassified(release)
    names = space.model.class_names
    plain = space.misclassified_gallery(20, False, "layer3", 0.5)
    assert len(plain) == 20
    for (image, caption), pred, p, true in zip(plain, mis.predicted_labels, mis.probabilities, mis.true_labels):
        assert caption == f"{names[pred]} ({p:.2f}) / {names[true]}"
    assert np.array_equal(plain[0][0], resize_rgb(mis.images[0], 160))
    calls = []
    real_explain = app.explain
    monkeypatch.setattr(app, "explain", lambda model, batch, layer, targets=None: calls.append(list(targets)) or
                        real_explain(model, batch, layer, targets=targets))
    overlaid = space.misclassified_gallery(N_MISCLASSIFIED, True, "layer1", 0.5)
    assert len(overlaid) == N_MISCLASSIFIED and calls == [mis.predicted_labels.tolist()]
    assert not np.array_equal(overlaid[0][0], plain[0][0])
    for bad in (0, N_MISCLASSIFIED + 1, 2.5):
        with pytest.raises(app.gr.Error, match=f"count must be a whole number from 1 to {N_MISCLASSIFIED}"):
            space.misclassified_gallery(bad, False, "layer3", 0.5)


def test_compare_explains_the_predicted_and_the_chosen_class(space):
    ranked = list(space.classify({"path": str(EXAMPLES[0])}, 2))
    items = space.compare({"path": str(EXAMPLES[0])}, "dog", "layer3", 0.5)
    assert len(items) == 2
    assert items[0][1].startswith(f"predicted: {ranked[0]} (")
    assert items[1][1].startswith("why not dog? dog (")
    runner_up = space.compare({"path": str(EXAMPLES[0])}, "runner-up", "layer3", 0.5)
    assert runner_up[1][1].startswith(f"why not {ranked[1]}? {ranked[1]} (")
    assert not np.array_equal(runner_up[0][0], runner_up[1][0])


def test_gallery_images_are_written_once_by_content(app, space, tmp_path):
    image, caption = space.gradcam(None, 1, "layer3", 0.5)[0]
    gallery = app.as_png_files(space.gradcam, tmp_path)
    first, again = gallery(None, 1, "layer3", 0.5), gallery(None, 1, "layer3", 0.5)
    assert first == again and first[0][1] == caption
    assert np.array_equal(np.asarray(Image.open(first[0][0])), image)
    assert [p.name for p in tmp_path.iterdir()] == [Path(first[0][0]).name]  # no partial files left behind


def test_release_without_misclassified_set(app, tmp_path):
    space = app.Explainer.load(str(make_release(tmp_path, misclassified=False)))
    assert space.num_misclassified == 0
    with pytest.raises(app.gr.Error, match="carries no misclassified images"):
        space.misclassified_gallery(1, False, "layer3", 0.5)
    assert len(space.gradcam(None, 2, "layer3", 0.5)) == 2


def test_loads_a_hub_repo_id(app, fake_hub, release):
    fake_hub.add("owner/release", release)
    space = app.Explainer.load("owner/release")
    assert space.num_misclassified == N_MISCLASSIFIED
    assert {call["filename"] for call in fake_hub.calls} >= {"model.safetensors", "misclassified.safetensors"}
    assert len(space.classify({"path": str(EXAMPLES[0])}, 3)) == 3


def test_serves_the_bundled_release_when_model_id_is_unset(app, monkeypatch):
    monkeypatch.delenv("MODEL_ID", raising=False)
    assert app.model_source() == str(SPACE / "model")
    space = app.Explainer.load(app.model_source())
    assert space.num_misclassified >= 20
    mistakes = space.misclassified_gallery(20, True, "layer3", 0.5)
    assert all(caption.split(" / ")[0].split(" (")[0] != caption.split(" / ")[1] for _, caption in mistakes)
    assert len(space.gradcam({"path": str(EXAMPLES[0])}, 10, "layer3", 0.5)) == 10


def test_model_source_is_model_id_or_the_bundled_folder(app, monkeypatch, tmp_path):
    monkeypatch.setenv("MODEL_ID", "owner/some-release")
    assert app.model_source() == "owner/some-release"
    monkeypatch.delenv("MODEL_ID")
    monkeypatch.setattr(app, "BUNDLED_MODEL", tmp_path / "model")
    with pytest.raises(SystemExit, match=r"set MODEL_ID .* in .*model"):
        app.model_source()
    (tmp_path / "model").mkdir()
    assert app.model_source() == str(tmp_path / "model")


def test_start_without_model_id_or_bundled_model_fails_clearly(release, tmp_path):
    if (SPACE / "model").is_dir():
        # The bundled release exists: `python space/app.py` must fail clearly on a wrong MODEL_ID instead.
        env = {**os.environ, **OFFLINE_ENV, "MODEL_ID": str(tmp_path / "missing")}
        expected = "not a folder"
    else:
        env = {k: v for k, v in {**os.environ, **OFFLINE_ENV}.items() if k != "MODEL_ID"}
        expected = "set MODEL_ID"
    result = subprocess.run([sys.executable, str(SPACE / "app.py")], env=env, capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode != 0
    assert expected in result.stderr


def test_space_files_deploy_on_their_own(app):
    import gradio
    import yaml

    readme = (SPACE / "README.md").read_text()
    meta = yaml.safe_load(readme.split("---")[1])
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__
    assert meta["app_file"] == "app.py" and (SPACE / meta["app_file"]).is_file()
    assert meta["license"] == "mit" and meta["models"] and len(meta["short_description"]) <= 60
    requirements = (SPACE / "requirements.txt").read_text()
    assert "git+https://github.com/resnet-cifar/resnet-cifar" in requirements and "gradio>=6.22" in requirements
    assert [p.stem.split("_", 1)[1] for p in EXAMPLES] and sorted(p.stem.split("_", 1)[1] for p in EXAMPLES) == sorted(
        ResNet9().class_names)
    for endpoint in ("/classify", "/gradcam", "/misclassified", "/compare"):
        assert f"`{endpoint}`" in readme


# ---------------------------------------------------------------- the launched app, through gradio_client


def call(client, api_name: str, *args):
    from gradio_client import handle_file

    return client.predict(*[handle_file(str(a)) if isinstance(a, Path) else a for a in args], api_name=api_name)


def refused(client, pattern: str, api_name: str, *args) -> None:
    """The call is refused with an error whose message matches `pattern`."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=pattern):
        call(client, api_name, *args)


def test_api_lists_exactly_the_four_documented_endpoints(client):
    api = client.view_api(return_format="dict", print_info=False)
    endpoints = {name: [p["parameter_name"] for p in info["parameters"]]
                 for name, info in api["named_endpoints"].items()}
    assert endpoints == {
        "/classify": ["image", "top_k"],
        "/gradcam": ["image_or_none", "count", "layer", "opacity"],
        "/misclassified": ["count", "show_gradcam", "layer", "opacity"],
        "/compare": ["image", "class_name", "layer", "opacity"],
    }
    assert not api.get("unnamed_endpoints")


def test_readme_api_snippet_runs(server, tmp_path, monkeypatch, capsys):
    readme = (SPACE / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "cat.png").write_bytes(EXAMPLES[0].read_bytes())
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet.replace("http://127.0.0.1:7860/", server), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert sum(line.endswith(".png") for line in printed) == 4 + 20 + 2  # one caption and path per image


def test_api_classify_returns_exactly_top_k(client, space):
    for k in (1, 3, 10):
        result = call(client, "/classify", EXAMPLES[6], k)
        assert len(result["confidences"]) == k
        expected = space.classify({"path": str(EXAMPLES[6])}, k)
        assert [c["label"] for c in result["confidences"]] == list(expected)
        assert result["label"] == next(iter(expected))


@pytest.mark.parametrize("top_k", [0, 11, -1, 2.5])
def test_api_classify_refuses_top_k_outside_1_to_10(client, top_k):
    refused(client, r"top_k must be a whole number from 1 to 10", "/classify", EXAMPLES[0], top_k)


def test_api_classify_without_image(client):
    refused(client, "no image given", "/classify", None, 3)


def test_api_gradcam_galleries(client):
    with_upload = call(client, "/gradcam", EXAMPLES[6], 10, "layer2", 0.5)
    assert len(with_upload) == 10
    assert with_upload[0]["caption"].startswith("your image: ")
    assert with_upload[1]["caption"].startswith("example cat: ")
    assert Image.open(with_upload[0]["image"]).size == (160, 160)
    examples_only = call(client, "/gradcam", None, 1, "prep", 0.0)
    assert len(examples_only) == 1 and examples_only[0]["caption"].startswith("example cat: ")
    shown = np.asarray(Image.open(examples_only[0]["image"]).convert("RGB"))
    assert np.array_equal(shown, resize_rgb(np.asarray(Image.open(EXAMPLES[0]).convert("RGB")), 160))


@pytest.mark.parametrize("args, pattern", [
    ((0, "layer3", 0.5), r"count must be a whole number from 1 to 10"),
    ((11, "layer3", 0.5), r"count must be a whole number from 1 to 10"),
    ((1.5, "layer3", 0.5), r"count must be a whole number from 1 to 10"),
    ((3, "layer4", 0.5), r"unknown layer 'layer4'; allowed are prep, layer1, layer2, layer3"),
    ((3, "fc", 0.5), r"unknown layer 'fc'"),
    ((3, "layer3", -0.1), r"opacity must be a number from 0 to 1; got -0.1"),
    ((3, "layer3", 1.5), r"opacity must be a number from 0 to 1; got 1.5"),
])
def test_api_gradcam_refuses_bad_arguments(client, args, pattern):
    refused(client, pattern, "/gradcam", EXAMPLES[0], *args)


def test_api_misclassified(client):
    plain = call(client, "/misclassified", 20, False, "layer3", 0.5)
    assert len(plain) == 20
    assert all(re.fullmatch(r"\w+ \(\d\.\d\d\) / \w+", item["caption"]) for item in plain)
    everything = call(client, "/misclassified", N_MISCLASSIFIED, True, "layer1", 0.6)
    assert len(everything) == N_MISCLASSIFIED
    assert [i["caption"] for i in everything[:20]] == [i["caption"] for i in plain]


@pytest.mark.parametrize("args, pattern", [
    ((0, False, "layer3", 0.5), f"count must be a whole number from 1 to {N_MISCLASSIFIED}"),
    ((N_MISCLASSIFIED + 1, False, "layer3", 0.5), f"from 1 to {N_MISCLASSIFIED}; got {N_MISCLASSIFIED + 1}"),
    ((5, "yes", "layer3", 0.5), "show_gradcam must be true or false"),
    ((5, True, "head", 0.5), "unknown layer 'head'"),
    ((5, True, "layer3", 1.5), "opacity must be a number from 0 to 1"),
])
def test_api_misclassified_refuses_bad_arguments(client, args, pattern):
    refused(client, pattern, "/misclassified", *args)


def test_api_compare(client):
    items = call(client, "/compare", EXAMPLES[2], "frog", "layer2", 0.5)
    assert [item["caption"].split(" ")[0] for item in items] == ["predicted:", "why"]
    assert items[1]["caption"].startswith("why not frog? frog (")
    refused(client, r"unknown class 'unicorn'; allowed are airplane, automobile, .* or 'runner-up'", "/compare",
            EXAMPLES[2], "unicorn", "layer2", 0.5)
    ranked = [c["label"] for c in call(client, "/classify", EXAMPLES[2], 2)["confidences"]]
    assert call(client, "/compare", EXAMPLES[2], "runner-up", "layer2", 0.5)[1]["caption"].startswith(
        f"why not {ranked[1]}? ")
    refused(client, "no image given", "/compare", None, "frog", "layer2", 0.5)
    refused(client, "opacity must be", "/compare", EXAMPLES[2], "frog", "layer2", -0.1)


def test_api_bad_uploads_are_refused_and_the_server_keeps_answering(client, uploads):
    bad, good = uploads
    for name, (path, pattern) in bad.items():
        refused(client, pattern, "/classify", path, 3)
        refused(client, pattern, "/compare", path, "cat", "layer3", 0.5)
    for name, path in good.items():
        assert len(call(client, "/classify", path, 2)["confidences"]) == 2, name
        assert len(call(client, "/gradcam", path, 2, "layer3", 0.5)) == 2, name
    assert len(call(client, "/classify", EXAMPLES[0], 3)["confidences"]) == 3


def test_api_refuses_files_over_the_size_limit(server, tmp_path):
    """max_file_size is enforced by the server itself, not only by the client."""
    import httpx

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (11 * 1024 * 1024))
    with open(big, "rb") as f:
        response = httpx.post(f"{server}gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=60)
    assert response.status_code == 413, response.text


def test_api_never_reads_or_serves_server_files(server):
    """allowed_paths is empty: a request naming a server path is refused, and such files are not served."""
    import httpx

    base = f"{server}gradio_api"
    for path in ("/etc/hostname", str(SPACE / "model" / "config.json"), str(EXAMPLES[0])):
        payload = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, 3]}
        event = httpx.post(f"{base}/call/classify", json=payload, timeout=60).json()["event_id"]
        answer = httpx.get(f"{base}/call/classify/{event}", timeout=120).text
        assert answer.startswith("event: error") and "confidences" not in answer, (path, answer)
        assert httpx.get(f"{base}/file={path}", timeout=60).status_code == 403, path


def test_api_concurrent_requests_get_their_own_answers(server, space):
    """Grad-CAM hooks live on the shared model: concurrent requests must not mix their activations."""
    from gradio_client import Client

    results, errors = {}, []

    def work(i: int) -> None:
        try:
            own = Client(server, **CLIENT_KWARGS)
            for _ in range(2):
                results[i] = call(own, "/gradcam", None, 1 + i % 10, LAYERS[i % 4], 0.5)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(repr(err))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, items in results.items():
        expected = space.gradcam(None, 1 + i % 10, LAYERS[i % 4], 0.5)
        assert [item["caption"] for item in items] == [caption for _, caption in expected]
        for item, (image, _) in zip(items, expected):
            shown = np.asarray(Image.open(item["image"]).convert("RGB")).astype(int)
            assert np.abs(shown - image).max() <= 2, (i, item["caption"])
