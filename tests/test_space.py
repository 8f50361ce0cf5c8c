"""The Space (space/app.py): its handlers directly, then the launched app through gradio_client and raw HTTP, as a
visitor, a careless client and an attacker would call it.

Offline: the app serves a small release folder built here (random weights, a misclassified set), never the Hub.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pytest
from conftest import (
    EXAMPLES, N_MISCLASSIFIED, OFFLINE_ENV, ROOT, SPACE, assert_close_pixels, bad_uploads, concurrently, free_port,
    good_uploads, make_release, rgba16_png, running_space, wait_until_up,
)
from PIL import Image

from resnet_cifar import release
from resnet_cifar.gradcam import LAYER_DESCRIPTIONS, LAYERS, jet
from resnet_cifar.preprocess import resize_rgb
from space import app
from uploads import FILE_META, UploadFolder

# gradio_client's uploads and downloads time out after httpx's 5 s by default: too short for a busy CI machine.
CLIENT_KWARGS = {"verbose": False, "httpx_kwargs": {"timeout": 120}}
CARD = ("---\nlicense: mit\nmodel-index:\n- name: r\n  results:\n  - task: {type: image-classification}\n"
        "    dataset: {type: uoft-cs/cifar10, name: CIFAR-10}\n    metrics:\n    - {type: accuracy, value: 0.8885}\n"
        "---\n# card\n")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def release_folder(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("release"), card=CARD)


@pytest.fixture(scope="session")
def space(release_folder, tmp_path_factory):
    uploads = UploadFolder(tmp_path_factory.mktemp("space-tmp"))
    yield app.Space(release.read(release_folder), uploads)
    uploads.close()


def uploaded(space, path: Path) -> dict:
    """`path` as gradio hands an upload to the app: a FileData payload of a copy in the upload folder."""
    target = space.uploads.path / uuid.uuid4().hex / Path(path).name
    target.parent.mkdir(parents=True)
    shutil.copyfile(path, target)
    return {"path": str(target), "meta": FILE_META}


@pytest.fixture(scope="session")
def uploads(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads")
    return bad_uploads(folder / "bad"), good_uploads(folder / "good")


@pytest.fixture(scope="module")
def server(release_folder, tmp_path_factory):
    with running_space(release_folder, tmp_path_factory.mktemp("server") / "space.log") as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, **CLIENT_KWARGS)


# ---------------------------------------------------------------- the handlers, directly


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    return roots | {node.module.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module}


def test_app_imports_only_the_library_gradio_and_basics():
    siblings = {"uploads", "gate"}
    third_party = imported_roots(SPACE / "app.py") - set(sys.stdlib_module_names)
    assert third_party <= {"gradio", "numpy", "starlette", "torch", "resnet_cifar", *siblings}, third_party
    assert "training" not in third_party
    # The siblings speak HTTP and files only: no gradio, so a gradio upgrade cannot change them unseen.
    assert imported_roots(SPACE / "uploads.py") <= set(sys.stdlib_module_names)
    assert imported_roots(SPACE / "gate.py") - set(sys.stdlib_module_names) == {"resnet_cifar", "uploads"}


def test_classify_matches_the_library(space):
    for k in (1, 3, 10):
        result = space.classify(uploaded(space, EXAMPLES[0]), k)
        expected = space.model.predict(EXAMPLES[0], top_k=k)[0]
        assert list(result) == [name for name, _ in expected]
        assert np.allclose(list(result.values()), [p for _, p in expected], atol=1e-5)


def test_gradcam_puts_the_upload_first_then_the_examples_in_one_batched_pass(space, monkeypatch):
    from resnet_cifar import serving

    calls = []
    real = serving.explain
    monkeypatch.setattr(serving, "explain", lambda model, batch, layer, **kw: calls.append(len(batch)) or real(
        model, batch, layer, **kw))
    items = space.gradcam(uploaded(space, good_uploads_dir(space) / "gray.png"), 4, "layer2", 0.5)
    assert calls == [4]
    assert [caption.split(":")[0] for _, caption in items] == [
        "your image", *[f"example {p.stem.split('_', 1)[1]}" for p in EXAMPLES[:3]]]
    assert all(image.shape == (160, 160, 3) and image.dtype == np.uint8 for image, _ in items)
    assert all(re.fullmatch(r"[^:]+: \w+ \(\d\.\d\d\)", caption) for _, caption in items)
    only_examples = space.gradcam(None, 10, "layer3", 0.5)
    assert calls == [4, 10] and len(only_examples) == 10 and only_examples[9][1].startswith("example bird")


def good_uploads_dir(space) -> Path:
    folder = space.uploads.path.parent / "good-images"
    if not folder.exists():
        good_uploads(folder)
    return folder


def test_a_picked_example_is_shown_once_as_the_visitors_image(space):
    cat = space.gradcam(uploaded(space, EXAMPLES[0]), 5, "layer3", 0.5)
    sources = [caption.split(":")[0] for _, caption in cat]
    assert sources == ["your image", *[f"example {p.stem.split('_', 1)[1]}" for p in EXAMPLES[1:5]]]
    assert "example cat" not in sources


def test_gradcam_captions_come_from_the_explained_forward_pass(space):
    items = space.gradcam(None, 10, "layer2", 0.5)
    for (_, caption), path in zip(items, EXAMPLES):
        top = space.classify(uploaded(space, path), 1)
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
    assert len(space.gradcam(uploaded(space, EXAMPLES[3]), 2, layer, 0.7)) == 2


def test_misclassified_captions_and_optional_gradcam(space, release_folder, monkeypatch):
    from resnet_cifar import serving

    mis = release.load_misclassified(release_folder)
    names = space.model.class_names
    plain = space.misclassified(20, False, "layer3", 0.5)
    assert len(plain) == 20
    for (image, caption), pred, p, true in zip(plain, mis.predicted_labels, mis.probabilities, mis.true_labels):
        assert caption == f"{names[pred]} ({p:.2f}) / {names[true]}"
    assert np.array_equal(plain[0][0], resize_rgb(mis.images[0], 160))
    calls = []
    real = serving.explain
    monkeypatch.setattr(serving, "explain", lambda model, batch, layer, targets=None, **kw: calls.append(
        list(targets)) or real(model, batch, layer, targets=targets, **kw))
    overlaid = space.misclassified(N_MISCLASSIFIED, True, "layer1", 0.5)
    assert len(overlaid) == N_MISCLASSIFIED and calls == [mis.predicted_labels.tolist()]
    assert not np.array_equal(overlaid[0][0], plain[0][0])


def test_compare_explains_the_predicted_and_the_chosen_class(space):
    ranked = list(space.classify(uploaded(space, EXAMPLES[0]), 2))
    items = space.compare(uploaded(space, EXAMPLES[0]), "dog", "layer3", 0.5)
    assert len(items) == 2
    assert items[0][1].startswith(f"predicted: {ranked[0]} (")
    assert items[1][1].startswith("why not dog? dog (")
    runner_up = space.compare(uploaded(space, EXAMPLES[0]), "runner-up", "layer3", 0.5)
    assert runner_up[1][1].startswith(f"why not {ranked[1]}? {ranked[1]} (")
    assert not np.array_equal(runner_up[0][0], runner_up[1][0])


@pytest.mark.parametrize("call, pattern", [
    (lambda s: s.classify(None, 3), "no image given"),
    (lambda s: s.classify({"path": "/etc/passwd"}, 3), "not an uploaded image"),
    (lambda s: s.classify(uploaded(s, EXAMPLES[0]), 11), "top_k must be a whole number from 1 to 10, got 11"),
    (lambda s: s.gradcam(None, 0, "layer3", 0.5), "count must be a whole number from 1 to 10"),
    (lambda s: s.gradcam(None, 2, "fc", 0.5), "unknown Grad-CAM layer 'fc'; allowed are prep, layer1"),
    (lambda s: s.gradcam(None, 2, "layer3", 1.5), "opacity must be a number from 0 to 1"),
    (lambda s: s.misclassified(N_MISCLASSIFIED + 1, False, "layer3", 0.5), f"from 1 to {N_MISCLASSIFIED}"),
    (lambda s: s.misclassified(3, "yes", "layer3", 0.5), "show_gradcam must be true or false"),
    (lambda s: s.compare(uploaded(s, EXAMPLES[0]), "unicorn" * 50, "layer3", 0.5), r"unknown class 'unicorn.*\.\.\."),
])
def test_refusals_are_the_librarys_words(space, call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(space)


def test_release_without_misclassified_set(tmp_path):
    uploads = UploadFolder(tmp_path / "t")
    space = app.Space(release.read(make_release(tmp_path / "r", misclassified=False)), uploads)
    assert space.num_misclassified == 0
    with pytest.raises(ValueError, match="carries no misclassified images"):
        space.misclassified(1, False, "layer3", 0.5)
    assert len(space.gradcam(None, 2, "layer3", 0.5)) == 2
    uploads.close()


def test_the_page_names_the_model_and_its_accuracy_never_a_server_path(release_folder, fake_hub, tmp_path):
    local = release.read(release_folder)
    assert app.model_line(local) == "Model: the release bundled with this Space, 88.85 % test accuracy on CIFAR-10."
    fake_hub.add("someone/resnet9", release_folder)
    hub = release.read("someone/resnet9")
    assert app.model_line(hub) == ("Model: [someone/resnet9](https://huggingface.co/someone/resnet9), 88.85 % test "
                                   "accuracy on CIFAR-10.")
    assert str(tmp_path) not in app.model_line(local) + app.model_line(hub)


def test_model_source_is_model_id_then_space_json_then_the_bundled_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("MODEL_ID", "owner/some-release")
    monkeypatch.setenv("MODEL_REVISION", "v2")
    assert app.model_source() == ("owner/some-release", "v2")
    monkeypatch.delenv("MODEL_ID")
    assert app.model_source() == (str(SPACE / "model"), None)
    monkeypatch.setattr(app, "HERE", tmp_path)
    (tmp_path / "space.json").write_text('{"model": "someone/resnet9", "revision": "abc"}')
    assert app.model_source() == ("someone/resnet9", "abc")
    (tmp_path / "model").mkdir()
    (tmp_path / "space.json").write_text('{"model": "model", "revision": null}')
    assert app.model_source() == (str(tmp_path / "model"), None)
    (tmp_path / "space.json").unlink()
    monkeypatch.setattr(app, "BUNDLED_MODEL", tmp_path / "nothing")
    with pytest.raises(SystemExit, match=r"set MODEL_ID .* in .*nothing"):
        app.model_source()


@pytest.mark.parametrize("damage, words", [
    ("missing", "is not a folder; pass a release folder"),
    ("truncated", "model.safetensors of '.*' \\(.*model.safetensors\\) is not a readable safetensors file "
                  "\\(Error while deserializing header: invalid header length\\)"),
    ("placeholder", "must be 'owner/name'|Repo id must"),
])
def test_a_release_that_cannot_be_served_stops_the_start_in_one_line(release_folder, tmp_path, damage, words):
    source = str(tmp_path / "missing")
    if damage == "truncated":
        shutil.copytree(release_folder, tmp_path / "broken")
        weights = tmp_path / "broken" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        source = str(tmp_path / "broken")
    elif damage == "placeholder":
        source = "<your-user>/resnet9"
    env = {**os.environ, **OFFLINE_ENV, "MODEL_ID": source, "SPACE_TEMP_DIR": str(tmp_path / "t")}
    result = subprocess.run([sys.executable, str(SPACE / "app.py")], env=env, capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cannot serve {source}: "), result.stderr[-2000:]
    assert re.search(words, lines[0]), lines[0]


# ---------------------------------------------------------------- the launched app, through gradio_client


def call(client, api_name: str, *args):
    from gradio_client import handle_file

    return client.predict(*[handle_file(str(a)) if isinstance(a, Path) else a for a in args], api_name=api_name)


def refused(client, pattern: str, api_name: str, *args) -> None:
    """The call is refused (AppError from the handler, ValidationError from the gate) with a matching message."""
    from gradio_client.exceptions import AppError, ValidationError

    with pytest.raises((AppError, ValidationError), match=pattern):
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
    exec(compile(re.sub(r'Client\("[^"]+"', f'Client("{server}"', snippet), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert sum(line.split()[-1].endswith(".jpg") for line in printed if line.split()) == 4 + 2
    assert sum(line.endswith("(160, 160)") for line in printed) == 20
    assert printed[-1].startswith("10 images,")


def test_api_classify_returns_exactly_top_k(client, space):
    for k in (1, 3, 10):
        result = call(client, "/classify", EXAMPLES[6], k)
        assert len(result["confidences"]) == k
        expected = space.classify(uploaded(space, EXAMPLES[6]), k)
        assert [c["label"] for c in result["confidences"]] == list(expected)


def test_an_api_caller_asking_the_same_twice_is_answered_twice(client):
    """The page skips a repeated input (LastRequests); an API caller, calling the same event, is answered every time
    (app.one_event)."""
    first = call(client, "/classify", EXAMPLES[2], 3)
    assert call(client, "/classify", EXAMPLES[2], 3) == first and len(first["confidences"]) == 3
    galleries = [call(client, "/gradcam", None, 2, "layer3", 0.5) for _ in range(2)]
    assert [len(g) for g in galleries] == [2, 2] and [i["caption"] for i in galleries[0]] == \
        [i["caption"] for i in galleries[1]]


@pytest.mark.parametrize("top_k", [0, 11, -1, 2.5])
def test_api_classify_refuses_top_k_outside_1_to_10(client, top_k):
    refused(client, r"top_k must be a whole number from 1 to 10", "/classify", EXAMPLES[0], top_k)


def test_api_gradcam_galleries(client):
    with_upload = call(client, "/gradcam", EXAMPLES[6], 10, "layer2", 0.5)
    assert len(with_upload) == 10
    assert with_upload[0]["caption"].startswith("your image: ")
    assert with_upload[1]["caption"].startswith("example cat: ")
    assert Image.open(with_upload[0]["image"]).size == (160, 160)
    examples_only = call(client, "/gradcam", None, 1, "prep", 0.0)
    assert len(examples_only) == 1 and examples_only[0]["caption"].startswith("example cat: ")
    shown = np.asarray(Image.open(examples_only[0]["image"]).convert("RGB"))
    assert_close_pixels(shown, resize_rgb(np.asarray(Image.open(EXAMPLES[0]).convert("RGB")), 160))


@pytest.mark.parametrize("args, pattern", [
    ((0, "layer3", 0.5), r"count must be a whole number from 1 to 10"),
    ((1.5, "layer3", 0.5), r"count must be a whole number from 1 to 10"),
    ((3, "layer4", 0.5), r"unknown Grad-CAM layer 'layer4'; allowed are prep, layer1, layer2, layer3"),
    ((3, "layer3", -0.1), r"opacity must be a number from 0 to 1, got -0.1"),
])
def test_api_gradcam_refuses_bad_arguments(client, args, pattern):
    refused(client, pattern, "/gradcam", EXAMPLES[0], *args)


def test_api_misclassified_is_one_sheet_and_its_index_and_compare(client, space):
    sheet, index = call(client, "/misclassified", 20, False, "layer3", 0.5)
    expected = space.misclassified(20, False, "layer3", 0.5)
    assert Path(sheet).suffix == ".jpg" and index["columns"] == 10 and index["tile"] == 160
    assert [i["caption"] for i in index["images"]] == [caption for _, caption in expected]
    assert all(re.fullmatch(r"\w+ \(\d\.\d\d\) / \w+", i["caption"]) for i in index["images"])
    pixels = np.asarray(Image.open(sheet).convert("RGB"))
    assert pixels.shape == (2 * 160, 10 * 160, 3)
    for i in (0, 13, 19):  # tile i at row i // 10, column i % 10: the gallery's image i
        row, column = divmod(i, 10)
        assert_close_pixels(pixels[row * 160:(row + 1) * 160, column * 160:(column + 1) * 160], expected[i][0])
    everything_sheet, everything = call(client, "/misclassified", N_MISCLASSIFIED, True, "layer1", 0.6)
    assert [i["caption"] for i in everything["images"][:20]] == [i["caption"] for i in index["images"]]
    assert len(everything["images"]) == N_MISCLASSIFIED
    refused(client, f"from 1 to {N_MISCLASSIFIED}; got|from 1 to {N_MISCLASSIFIED}, got", "/misclassified",
            N_MISCLASSIFIED + 1, False, "layer3", 0.5)
    items = call(client, "/compare", EXAMPLES[2], "frog", "layer2", 0.5)
    assert items[1]["caption"].startswith("why not frog? frog (")
    refused(client, r"unknown class 'unicorn'; allowed are airplane, .* or 'runner-up'", "/compare",
            EXAMPLES[2], "unicorn", "layer2", 0.5)


def test_api_bad_uploads_are_refused_and_the_server_keeps_answering(client, uploads):
    bad, good = uploads
    for name, (path, pattern) in bad.items():
        refused(client, pattern, "/classify", path, 3)
    for name, path in good.items():
        assert len(call(client, "/classify", path, 2)["confidences"]) == 2, name
    assert len(call(client, "/classify", EXAMPLES[0], 3)["confidences"]) == 3


def test_api_answers_a_worst_case_upload(client, tmp_path):
    """40 megapixels of 16-bit RGBA in a 0.3 MB PNG: decoded within its budget and answered (BENCHMARKS.md has
    the memory of four at once)."""
    path = tmp_path / "rgba16.png"
    path.write_bytes(rgba16_png(8000, 5000))
    assert len(call(client, "/classify", path, 3)["confidences"]) == 3


def test_api_refuses_files_over_the_size_limit(server, tmp_path):
    import httpx

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (11 * 1024 * 1024))
    with open(big, "rb") as f:
        response = httpx.post(f"{server}gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=60)
    assert response.status_code == 413, response.text


# ---------------------------------------------------------------- the attacks of the security review, over HTTP


def post_call(server: str, name: str, data) -> tuple[int, str]:
    """POST /gradio_api/call/<name> and, when accepted, read the event's answer: (status, text)."""
    import httpx

    response = httpx.post(f"{server}gradio_api/call/{name}", json={"data": data} if data is not None else {},
                          timeout=60)
    if response.status_code != 200:
        return response.status_code, response.json()["error"]
    event = response.json()["event_id"]
    return 200, httpx.get(f"{server}gradio_api/call/{name}/{event}", timeout=120).text


SERVER_FILES = ["/etc/passwd", "/etc/nonexistent", "/proc/self/environ", str(SPACE / "examples" / "0000_cat.png"),
                str(SPACE / "model" / "config.json"), "space/examples/0000_cat.png", "../../../../etc/hostname"]


@pytest.mark.parametrize("endpoint, args", [("gradcam", (1, "layer3", 0.0)), ("classify", (3,)),
                                            ("compare", ("cat", "layer3", 0.5))])
def test_no_server_file_is_ever_read_and_every_refusal_reads_the_same(server, endpoint, args):
    answers = set()
    for path in SERVER_FILES:
        for payload in ({"path": path}, {"path": path, "meta": FILE_META}, {"path": path, "meta": None}, path):
            status, text = post_call(server, endpoint, [payload, *args])
            assert status == 422, (path, text)
            answers.add(text)
    assert len(answers) == 1, answers
    (answer,) = answers
    assert "not an uploaded image" in answer and "POST it to /gradio_api/upload" in answer
    assert "\n" not in answer


def test_every_route_to_a_handler_is_gated(server):
    """gradio also runs handlers from /run, /api, /call/v2 and /queue/join (by fn_index): none reads a server file."""
    import httpx

    payload = {"path": "/etc/passwd", "meta": FILE_META}
    config = httpx.get(f"{server}config", timeout=60).json()
    index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "gradcam")
    images = {c["id"] for c in config["components"] if c["type"] == "image"}
    by_index = [d for d in config["dependencies"] if d["inputs"] and d["inputs"][0] in images]
    attempts = [
        ("run/gradcam", {"data": [payload, 1, "layer3", 0.0]}),
        ("api/gradcam", {"data": [payload, 1, "layer3", 0.0]}),
        ("run/predict", {"data": [payload, 1, "layer3", 0.0, None], "fn_index": index}),
        ("call/v2/gradcam", {"image_or_none": payload, "count": 1, "layer": "layer3", "opacity": 0.0}),
        # Every event that takes the image, by fn_index: as an API caller calls it, and as the page does (naming
        # the component that triggered it).
        *[("queue/join", {"data": [payload] + [None] * (len(d["inputs"]) - 1), "fn_index": d["id"], "session_hash": "x",
                          **trigger}) for d in by_index for trigger in ({}, {"trigger_id": d["inputs"][0]})],
    ]
    assert len(by_index) == 3 and len(attempts) == 4 + 2 * 3, "classify, gradcam and compare, the page's and the API's"
    for route, body in attempts:
        response = httpx.post(f"{server}gradio_api/{route}", json=body, timeout=60)
        assert response.status_code == 422, (route, response.text)
        assert "not an uploaded image" in response.json()["error"], route


@pytest.mark.parametrize("data, words", [
    ([5, 3], "image: not an uploaded image"),
    ([[1, 2], 3], "image: not an uploaded image"),
    ([None], r"send exactly 2 arguments \(image, top_k\), got 1"),
    (None, 'send a JSON object {"data": \\[...\\]}'),
])
def test_malformed_calls_get_one_line_that_says_what_to_send(server, data, words):
    status, text = post_call(server, "classify", data)
    assert status == 422 and re.search(words, text) and "\n" not in text


def test_unknown_endpoints_and_page_handlers_are_not_callable(server):
    for name in ("nope", "page_classify", "page_misclassified", "clear_refused", "shown", "load_example", "lambda"):
        status, text = post_call(server, name, [None, 3])
        assert status == 404, (name, text)
        assert text == (f"unknown endpoint /{name}; this server's endpoints are /classify, /gradcam, "
                        "/misclassified, /compare")


def test_server_files_are_not_served(server):
    import httpx

    for path in ("/etc/hostname", str(SPACE / "model" / "config.json"), str(EXAMPLES[0])):
        assert httpx.get(f"{server}gradio_api/file={path}", timeout=60).status_code == 403, path


def test_api_concurrent_requests_get_their_own_answers(server, space):
    """Grad-CAM hooks live on the model: concurrent requests must not mix their activations."""
    from gradio_client import Client

    def work(i: int) -> list:
        own = Client(server, **CLIENT_KWARGS)
        for _ in range(2):
            items = call(own, "/gradcam", None, 1 + i % 10, LAYERS[i % 4], 0.5)
        return items

    for i, items in enumerate(concurrently(work, 6)):
        expected = space.gradcam(None, 1 + i % 10, LAYERS[i % 4], 0.5)
        assert [item["caption"] for item in items] == [caption for _, caption in expected]
        for item, (image, _) in zip(items, expected):
            assert_close_pixels(np.asarray(Image.open(item["image"]).convert("RGB")), image)


# ---------------------------------------------------------------- the upload folder over restarts


def aborted_upload(server: str) -> None:
    """Start a multipart upload of 1 MB, send half of it and hang up, as a visitor whose connection dies."""
    host, port = server.split("//")[1].rstrip("/").split(":")
    boundary = "resnetcifarboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"cat.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    length = len(head) + 1_000_000 + len(f"\r\n--{boundary}--\r\n")
    request = (f"POST /gradio_api/upload HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {length}\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request + head + b"\0" * 500_000)
        time.sleep(1.0)  # the server has written the first half to a file in its upload folder


def test_aborted_uploads_do_not_outlive_a_crash_and_restart(release_folder, tmp_path):
    root = tmp_path / "space-tmp"
    port = free_port()
    env = {**os.environ, **OFFLINE_ENV, "MODEL_ID": str(release_folder), "GRADIO_SERVER_PORT": str(port),
           "SPACE_TEMP_DIR": str(root)}
    log = tmp_path / "first.log"
    with open(log, "wb") as out:
        first = subprocess.Popen([sys.executable, str(SPACE / "app.py")], cwd=ROOT, env=env, stdout=out,
                                 stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, first, log, 300)
        for _ in range(3):
            aborted_upload(url)
        time.sleep(1.0)
        files = [p for p in root.rglob("*") if p.is_file() and p.stat().st_size >= 400_000]
        assert files, "the aborted uploads left partial files (what the review found surviving restarts)"
    finally:
        first.send_signal(signal.SIGKILL)  # a crash: nothing of the first process cleans up
        first.wait()
    assert all(p.exists() for p in files)
    with running_space(release_folder, tmp_path / "second.log", env={"SPACE_TEMP_DIR": str(root)}):
        assert not any(p.exists() for p in files), "the restart removed them"
        assert "removed 1 stale folders" in (tmp_path / "second.log").read_text()


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_the_upload_folder_stays_within_its_budget_at_every_upload(release_folder, tmp_path):
    """Uploads finished and cut off, faster than any scheduled sweep: the folder never holds more than its
    budget once a request is over (the review grew it by 283 MB in 3 s between sweeps)."""
    root, budget = tmp_path / "space-tmp", 2 << 20
    payload = tmp_path / "big.png"
    payload.write_bytes(os.urandom(600_000))
    with running_space(release_folder, tmp_path / "space.log",
                       env={"SPACE_TEMP_DIR": str(root), "SPACE_UPLOAD_BUDGET_MB": "2"}) as server:
        sizes = []
        for i in range(6):
            with open(payload, "rb") as f:
                response = httpx.post(f"{server}gradio_api/upload", files={"files": (f"u{i}.png", f, "image/png")},
                                      timeout=60)
            assert response.status_code == 200, response.text
            sizes.append(folder_bytes(root))
        assert sizes[2] >= 3 * 600_000, "three uploads fit the budget and stay"
        for _ in range(6):
            aborted_upload(server)
            time.sleep(0.5)  # the server has seen the hang-up and finished the request
            sizes.append(folder_bytes(root))
        assert max(sizes) <= budget, sizes


def test_the_example_gallery_takes_only_the_index_of_one_of_its_examples(space):
    """The page-only example event: gradio answered 500 for index 10, a string or null, and took -1 as the last
    example; the gate in front of the app refuses all of them in one line."""
    import asyncio
    import json

    import gradio as gr

    demo = app.build_demo(space)
    gate = app.api_gate(demo, space)
    kwargs = gate.kwargs
    examples = [index for index, fn in demo.fns.items() if any(isinstance(c, gr.Dataset) for c in fn.inputs)]
    assert examples, "the page has an example gallery event"
    for index in examples:
        (param,) = kwargs["functions"][index]
        assert param.choices == len(space.example_paths) == 10

    reached = []

    async def inner(scope, receive, send):
        reached.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    front = gate.cls(inner, **kwargs)
    for value, allowed in ((0, True), (9, True), (10, False), (-1, False), ("3", False), (None, False)):
        payload = json.dumps({"data": [value], "fn_index": examples[0], "session_hash": "s"}).encode()
        sent = []

        async def receive(payload=payload):
            return {"type": "http.request", "body": payload, "more_body": False}

        async def send(message, sent=sent):
            sent.append(message)

        asyncio.run(front({"type": "http", "method": "POST", "path": "/gradio_api/queue/join"}, receive, send))
        assert (sent[0]["status"] == 200) is allowed, value
        if not allowed:
            assert "send the number of one of the 10 choices, from 0 to 9" in json.loads(sent[1]["body"])["error"]
    assert len(reached) == 2


def test_the_heatmap_has_its_colour_scale_and_a_line_on_each_layer(space):
    """The legend is drawn from the overlays' own colour map, both ends named; each layer is described once."""
    demo = app.build_demo(space)
    html = {c.elem_id: c.value for c in demo.blocks.values() if getattr(c, "elem_id", None)}
    scale = html["gradcam-scale"]
    ends = jet(np.array([0.0, 1.0])).tolist()
    assert f"rgb({ends[0][0]}, {ends[0][1]}, {ends[0][2]}) 0%" in scale  # blue
    assert f"rgb({ends[1][0]}, {ends[1][1]}, {ends[1][2]}) 100%" in scale  # red
    assert ends[0][2] > ends[0][0] and ends[1][0] > ends[1][2]
    assert "0: no part in the class score" in scale and "1: raised it most" in scale
    line = html["layer-line"]
    assert all(line.count(LAYER_DESCRIPTIONS[name]) == 1 for name in LAYERS)


def test_last_requests_skips_only_an_unchanged_repeat_of_the_same_session_and_event():
    last = app.LastRequests(size=2)
    assert not last.repeated("a", "gradcam", "cat.png", 5)
    assert last.repeated("a", "gradcam", "cat.png", 5)
    assert not last.repeated("a", "gradcam", "cat.png", 6), "other inputs"
    assert not last.repeated("b", "gradcam", "cat.png", 6), "another visitor"
    assert not last.repeated("a", "compare", "cat.png", 6), "another event"
    assert not last.repeated("a", "gradcam", "cat.png", 6), "forgotten: only the 2 most recent keys are kept"
    assert len(last.last) == 2


PAGE = SimpleNamespace(target=object())  # what gradio hands a handler for an event the page triggered


def page_events(space) -> dict:
    """The page's side of each feature's event, called as gradio calls it for the page (app.from_page), one visitor
    session for all of them."""
    demo = app.build_demo(space)
    fns = {fn.fn.__name__: fn.fn for fn in demo.fns.values() if fn.fn is not None}
    request = SimpleNamespace(session_hash=uuid.uuid4().hex)
    return {"classify": lambda *a: fns["classify"](*a, PAGE, request),
            "gradcam": lambda *a: fns["gradcam"](*a, PAGE, request),
            "compare": lambda *a: fns["compare"](*a, PAGE, request),
            "misclassified": lambda *a: fns["page_misclassified"](*a, request),
            "clear_refused": lambda: fns["clear_refused"](request)}


@pytest.mark.parametrize("event, args, words", [
    ("classify", ("IMAGE", 11), "top_k must be a whole number from 1 to 10, got 11"),
    ("gradcam", ("IMAGE", 11, "layer3", 0.5, True), "count must be a whole number from 1 to 10, got 11"),
    ("gradcam", ("IMAGE", 3, "layer3", 1.5, True), "opacity must be"),
    ("gradcam", ("IMAGE", 3, "layer3", -0.5, False), "opacity must be"),
    ("misclassified", (True, 101, False, "layer3", 0.5), "count must be a whole number from 1 to"),
])
def test_a_setting_past_a_sliders_end_is_one_warning_and_the_page_stays(space, event, args, words):
    """Typed into a slider's number box, 11 or 1.5 reach the server: one warning, every output skipped."""
    image = uploaded(space, EXAMPLES[0])
    args = tuple(image if a == "IMAGE" else a for a in args)
    handlers = page_events(space)
    with pytest.warns(UserWarning) as caught:
        result = handlers[event](*args)
    assert [str(w.message) for w in caught] == [str(w.message) for w in caught][:1], "said once"
    assert words in str(caught[0].message) and not str(caught[0].message).startswith("'")
    outputs = result if isinstance(result, tuple) else (result,)
    assert all(out == gr.skip() for out in outputs), "nothing on the page changes: not the image, not a gallery"


def test_a_bad_opacity_is_said_once_for_all_the_galleries_that_use_it(space):
    image = uploaded(space, EXAMPLES[0])
    handlers = page_events(space)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [handlers["gradcam"](image, 3, "layer3", 1.5, True),
                   handlers["compare"](image, "runner-up", "layer3", 1.5),
                   handlers["misclassified"](True, 5, True, "layer3", 1.5)]
    messages = [str(w.message) for w in caught if "opacity" in str(w.message)]
    assert len(messages) == 1, messages
    assert all(r == gr.skip() for r in results)


def test_an_unreadable_upload_still_leaves_the_page_and_clears_only_the_image(space, tmp_path):
    bad = space.uploads.path / f"bad-{uuid.uuid4().hex}.png"
    bad.write_bytes(b"not an image at all")
    handlers = page_events(space)
    with pytest.warns(UserWarning):
        label = handlers["classify"]({"path": str(bad), "meta": FILE_META}, 3)
    assert label is None
    assert handlers["clear_refused"]() is None, "the page's next step takes the refused image off the page"
    assert handlers["clear_refused"]() == gr.skip(), "once"
    with pytest.warns(UserWarning):
        assert handlers["classify"](uploaded(space, EXAMPLES[0]), 11) == gr.skip()
    assert handlers["clear_refused"]() == gr.skip(), "a refused setting leaves the image"


def test_each_feature_is_one_event_the_page_triggers_and_the_api_calls(space):
    """Issue 16, item 2: classify, Grad-CAM and "why not" are each one event, public under its API name and
    triggered by the page's components; the misclassified set alone has two answers (the page's gallery, the API's
    contact sheet); the rest are page steps that touch no model."""
    demo = app.build_demo(space)
    events = {}
    for d in demo.get_config_file()["dependencies"]:
        triggers = sorted({(demo.blocks[t].elem_id or type(demo.blocks[t]).__name__) if t in demo.blocks else e
                           for t, e in d["targets"] if e != "then"})
        events[demo.fns[d["id"]].fn.__name__] = (d["api_visibility"], triggers)
    assert events == {
        "classify": ("public", ["top-k", "upload"]),
        "gradcam": ("public", ["State", "gradcam-count", "layer", "load", "opacity", "upload"]),  # State: shown
        "compare": ("public", ["layer", "opacity", "upload", "why-not"]),
        "misclassified_sheet": ("public", []),
        "page_misclassified": ("private", ["layer", "misclassified-count", "misclassified-gradcam", "opacity",
                                           "show-misclassified"]),
        "clear_refused": ("private", []),  # the step after classify
        "shown": ("private", ["show-gradcam"]),
        "load_example": ("private", ["examples"]),
    }


def test_hidden_gradcam_is_not_computed_and_the_api_is_answered_whatever_the_page_shows(space):
    handlers = page_events(space)
    assert handlers["gradcam"](None, 3, "layer3", 0.5, False) == gr.update(visible=False)
    demo = app.build_demo(space)
    (gradcam,) = [fn.fn for fn in demo.fns.values() if fn.fn.__name__ == "gradcam"]
    api = gradcam(None, 3, "layer3", 0.5, False, SimpleNamespace(target=None), SimpleNamespace(session_hash="s"))
    assert [caption for _, caption in api] == [caption for _, caption in space.gradcam(None, 3, "layer3", 0.5)]


def test_the_gates_description_of_each_endpoint_is_the_service_signature_and_the_events_components(space):
    demo = app.build_demo(space)
    endpoints = app.api_gate(demo, space).kwargs["endpoints"]
    Param = type(endpoints["classify"][0])
    assert endpoints == {
        "classify": [Param("image", file=True, required=True), Param("top_k")],
        "gradcam": [Param("image_or_none", file=True, required=False), Param("count"), Param("layer"),
                    Param("opacity")],
        "misclassified": [Param("count"), Param("show_gradcam"), Param("layer"), Param("opacity")],
        "compare": [Param("image", file=True, required=True), Param("class_name"), Param("layer"), Param("opacity")],
    }
    names = {name: [p["parameter_name"] for p in endpoint["parameters"]]
             for name, endpoint in demo.get_api_info()["named_endpoints"].items()}
    assert names == {f"/{name}": [p.name for p in params] for name, params in endpoints.items()}, "gradio's own API page"
    with pytest.raises(ValueError, match="classify takes 2 arguments, its event has 1"):
        app.endpoint_params(space.classify, [gr.Image()])
