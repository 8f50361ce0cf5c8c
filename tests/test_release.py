"""resnet_cifar.release: the file list, safe reading, atomic writing, reading a whole release from a folder or the
Hub, and the misclassified set (save/load round trip, shape validation, captions)."""

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from conftest import N_MISCLASSIFIED, make_release, tree_digest

import resnet_cifar
from resnet_cifar import release
from resnet_cifar.release import (
    FILES, MISCLASSIFIED_NAME, MisclassifiedSet, ReleaseError, load_misclassified, save_misclassified,
)


def sample(n: int = 5) -> MisclassifiedSet:
    """n random misclassified images with labels and probabilities."""
    rng = np.random.default_rng(0)
    return MisclassifiedSet(
        images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        true_labels=rng.integers(0, 10, n),
        predicted_labels=rng.integers(0, 10, n),
        probabilities=rng.random(n).astype(np.float32),
    )


def assert_same(a: MisclassifiedSet, b: MisclassifiedSet) -> None:
    """Equal arrays, and the dtypes the format promises."""
    for name in ("images", "true_labels", "predicted_labels", "probabilities"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert b.images.dtype == np.uint8 and b.true_labels.dtype == np.int64
    assert b.predicted_labels.dtype == np.int64 and b.probabilities.dtype == np.float32


def test_round_trip_through_a_folder(tmp_path):
    original = sample()
    path = save_misclassified(tmp_path / "release", original)
    assert path == tmp_path / "release" / MISCLASSIFIED_NAME
    loaded = load_misclassified(tmp_path / "release")
    assert len(loaded) == 5
    assert_same(original, loaded)
    assert_same(original, load_misclassified(str(tmp_path / "release")))


def test_labels_of_other_integer_types_are_stored_as_int64(tmp_path):
    original = sample(3)
    narrow = MisclassifiedSet(
        original.images, original.true_labels.astype(np.int32), original.predicted_labels.astype(np.uint8),
        original.probabilities.astype(np.float64),
    )
    save_misclassified(tmp_path, narrow)
    assert_same(original, load_misclassified(tmp_path))


def test_empty_set_round_trips(tmp_path):
    empty = sample(0)
    save_misclassified(tmp_path, empty)
    assert len(load_misclassified(tmp_path)) == 0


def test_round_trip_through_a_hub_repo_id(tmp_path, fake_hub):
    original = sample()
    save_misclassified(tmp_path / "release", original)
    fake_hub.add("someone/resnet9", tmp_path / "release")
    loaded = load_misclassified("someone/resnet9", revision="v2")
    assert_same(original, loaded)
    assert fake_hub.calls == [{"repo_id": "someone/resnet9", "filename": MISCLASSIFIED_NAME, "revision": "v2",
                               "library_name": "resnet-cifar", "library_version": resnet_cifar.__version__}]


def test_missing_file_in_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no {MISCLASSIFIED_NAME} in folder"):
        load_misclassified(tmp_path)


def test_file_missing_keys_is_refused(tmp_path):
    safetensors.numpy.save_file({"images": np.zeros((1, 32, 32, 3), np.uint8)}, str(tmp_path / MISCLASSIFIED_NAME))
    with pytest.raises(ValueError, match=r"lacks \['predicted_labels', 'probabilities', 'true_labels'\]"):
        load_misclassified(tmp_path)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"images": np.zeros((5, 32, 32), np.uint8)}, "N x H x W x 3 uint8"),
        ({"images": np.zeros((5, 32, 32, 4), np.uint8)}, "N x H x W x 3 uint8"),
        ({"images": np.zeros((5, 32, 32, 3), np.float32)}, "N x H x W x 3 uint8"),
        ({"true_labels": np.zeros(4, np.int64)}, r"true_labels must have shape \(5,\)"),
        ({"predicted_labels": np.zeros((5, 1), np.int64)}, r"predicted_labels must have shape \(5,\)"),
        ({"probabilities": np.zeros(6, np.float32)}, r"probabilities must have shape \(5,\)"),
    ],
)
def test_shapes_are_validated(change, words):
    fields = vars(sample()) | change
    with pytest.raises(ValueError, match=words):
        MisclassifiedSet(**fields)


def test_captions_say_predicted_probability_and_true_class():
    mistakes = MisclassifiedSet(np.zeros((2, 32, 32, 3), np.uint8), np.array([5, 1]), np.array([3, 9]),
                                np.array([0.914, 0.5], np.float32))
    names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert mistakes.captions(names) == ["cat (0.91) / dog", "truck (0.50) / automobile"]


# --- which files a release is -----------------------------------------------------------------------------------


def test_files_lists_exactly_the_release_names_present(tmp_path):
    folder = make_release(tmp_path / "r", card="---\nlicense: mit\n---\n")
    (folder / "metrics.png").write_bytes(b"png")
    (folder / "notes.txt").write_text("not part of a release")
    (folder / ".hidden.png").write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "gradcam.png").write_bytes(b"x")
    assert release.files(folder) == ["model.safetensors", "config.json", "README.md", MISCLASSIFIED_NAME,
                                     "metrics.png"]
    assert set(release.files(folder)) <= set(FILES)


def test_a_symbolic_link_in_a_release_is_refused(tmp_path):
    folder = make_release(tmp_path / "r", card="card")
    secret = tmp_path / "secret.txt"
    secret.write_text("server secret")
    os.symlink(secret, folder / "metrics.png")
    with pytest.raises(ReleaseError, match="metrics.png is a symbolic link; a release holds regular files only"):
        release.files(folder)
    with pytest.raises(ReleaseError, match="cannot open .*metrics.png as a regular file"):
        release.read_bytes(folder, "metrics.png")


def test_an_incomplete_release_names_what_is_missing(tmp_path):
    folder = make_release(tmp_path / "r")
    (folder / "README.md").unlink()  # save_pretrained writes a card of its own
    with pytest.raises(ReleaseError, match="not a complete release: missing README.md"):
        release.files(folder)
    with pytest.raises(ReleaseError, match="is not a folder"):
        release.files(tmp_path / "nothing")


def test_read_bytes_reads_only_release_names(tmp_path):
    folder = make_release(tmp_path / "r", card="the card")
    assert release.read_bytes(folder, "README.md") == b"the card"
    with pytest.raises(ReleaseError, match="'../secret' is not a release file"):
        release.read_bytes(folder, "../secret")


# --- writing a release atomically ---------------------------------------------------------------------------------


def fill_with(model_dir: Path, extra=None):
    """A fill() that copies a made release, then runs `extra(staging)`."""
    def fill(staging: Path) -> None:
        for p in model_dir.iterdir():
            (staging / p.name).write_bytes(p.read_bytes())
        if extra:
            extra(staging)
    return fill


def test_write_makes_a_complete_world_readable_release(tmp_path):
    source = make_release(tmp_path / "made", card="card")
    os.chmod(source / "model.safetensors", 0o600)
    out = release.write(tmp_path / "out" / "release", fill_with(source))
    assert release.files(out) == release.files(source)
    assert all(stat.S_IMODE(os.stat(out / n).st_mode) == 0o644 for n in release.files(out))
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o755
    assert [p.name for p in out.parent.iterdir()] == ["release"], "no staging folder left behind"


@pytest.mark.parametrize("failure", ["exception", "disk full", "stray file"])
def test_a_failed_write_leaves_the_earlier_release_untouched(tmp_path, failure):
    source = make_release(tmp_path / "made", card="card")
    out = release.write(tmp_path / "out" / "release", fill_with(source))
    before = tree_digest(out)

    def fail(staging: Path) -> None:
        if failure == "exception":
            raise RuntimeError("plotting failed")
        if failure == "disk full":
            raise OSError(28, "No space left on device")
        (staging / "stray.ckpt").write_bytes(b"x")

    with pytest.raises((RuntimeError, OSError, ReleaseError)):
        release.write(out, fill_with(source, fail))
    assert tree_digest(out) == before
    assert [p.name for p in out.parent.iterdir()] == ["release"], "the staging folder is removed"


def test_a_write_replaces_an_earlier_release_whole(tmp_path):
    first = make_release(tmp_path / "first", card="first card")
    out = release.write(tmp_path / "release", fill_with(first))
    (tmp_path / "second").mkdir()
    make_release(tmp_path / "second", misclassified=False, card="second card")
    release.write(out, fill_with(tmp_path / "second"))
    assert (out / "README.md").read_text() == "second card"
    assert not (out / MISCLASSIFIED_NAME).exists(), "nothing of the earlier release lingers"


# --- reading a whole release --------------------------------------------------------------------------------------


CARD = ("---\nlicense: mit\nmodel-index:\n- name: r\n  results:\n  - task: {type: image-classification}\n"
        "    dataset: {type: uoft-cs/cifar10, name: CIFAR-10}\n    metrics:\n    - {type: accuracy, value: 0.8885}\n"
        "---\n# card\n")


def test_read_a_folder(tmp_path):
    loaded = release.read(make_release(tmp_path / "r", card=CARD))
    assert not loaded.model.training and len(loaded.misclassified) == N_MISCLASSIFIED
    assert loaded.test_accuracy == 0.8885
    assert loaded.hub_id is None and loaded.url is None


def test_read_a_hub_repo_without_optional_files(tmp_path, fake_hub):
    fake_hub.add("someone/bare", make_release(tmp_path / "r", misclassified=False))
    loaded = release.read("someone/bare", revision="v1")
    assert loaded.misclassified is None and loaded.test_accuracy is None
    assert loaded.hub_id == "someone/bare" and loaded.url == "https://huggingface.co/someone/bare/tree/v1"
    assert {c["filename"] for c in fake_hub.calls} >= {"model.safetensors", MISCLASSIFIED_NAME, "README.md"}


# ---------------------------------------------------------------- hostile and broken release files


def safetensors_header(header: dict, body: bytes = b"") -> bytes:
    import json
    import struct

    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def malformed(kind: str, good: bytes) -> bytes:
    """A file that is not a valid safetensors file, in one of the ways the review tried."""
    import io
    import pickle
    import struct
    import zipfile

    f32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    if kind == "truncated":
        return good[:1000]
    if kind == "empty":
        return b""
    if kind == "header too large":
        return struct.pack("<Q", 10 ** 12) + b"{}"
    if kind == "not json":
        return struct.pack("<Q", 5) + b"hello"
    if kind == "overlapping offsets":
        return safetensors_header({"a": f32, "b": {**f32, "data_offsets": [4, 12]}}, b"\0" * 12)
    if kind == "offsets out of range":
        return safetensors_header({"a": {**f32, "data_offsets": [0, 800]}}, b"\0" * 8)
    if kind == "unknown dtype":
        return safetensors_header({"a": {**f32, "dtype": "Q99"}}, b"\0" * 8)
    if kind == "negative shape":
        return safetensors_header({"a": {**f32, "shape": [-2]}}, b"\0" * 8)
    if kind == "a pickle":
        return pickle.dumps({"weights": [1.0, 2.0]})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("archive/data.pkl", b"x")
    return buffer.getvalue()


MALFORMED = ["truncated", "empty", "header too large", "not json", "overlapping offsets", "offsets out of range",
             "unknown dtype", "negative shape", "a pickle", "a zip"]


@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_weights_are_one_error_naming_the_file(tmp_path, kind):
    from resnet_cifar import ResNet9

    folder = make_release(tmp_path / "r")
    weights = folder / "model.safetensors"
    weights.write_bytes(malformed(kind, weights.read_bytes()))
    with pytest.raises(ReleaseError) as err:
        ResNet9.from_pretrained(folder)
    message = str(err.value)
    assert message.startswith(f"model.safetensors of {str(folder)!r} ({weights}) is not a readable safetensors file")
    assert "download it again or re-save it with save_pretrained()" in message and "\n" not in message


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_misclassified_set_is_one_error_naming_the_file(tmp_path, kind):
    folder = make_release(tmp_path / "r")
    path = folder / MISCLASSIFIED_NAME
    path.write_bytes(malformed(kind, path.read_bytes()))
    with pytest.raises(ReleaseError, match=r"^misclassified.safetensors of .* is not a readable safetensors file"):
        release.read(folder)


@pytest.mark.parametrize("change, words", [
    ({"true_labels": np.array([0, 99, 1, 2, 3])}, r"true_labels holds class 99, but the model has 10 classes \(0 to 9\)"),
    ({"predicted_labels": np.array([0, -5, 1, 2, 3])}, "predicted_labels must be class ids .*>= 0.*-5"),
    ({"probabilities": np.array([0.5, np.nan, 0.2, 0.3, 0.9], np.float32)}, r"probabilities must be numbers in \[0, 1\]"),
    ({"probabilities": np.array([0.5, 1.5, 0.2, 0.3, 0.9], np.float32)}, r"probabilities must be numbers in \[0, 1\]"),
])
def test_a_misclassified_set_with_impossible_values_is_refused_when_read(tmp_path, change, words):
    folder = make_release(tmp_path / "r", misclassified=False)
    good = vars(sample())
    tensors = {k: np.ascontiguousarray(v) for k, v in (good | change).items()}
    safetensors.numpy.save_file(tensors, str(folder / MISCLASSIFIED_NAME))
    with pytest.raises(ReleaseError, match=words):
        release.read(folder)


def test_negative_batchnorm_variances_are_refused_when_read(tmp_path):
    import safetensors.torch

    from resnet_cifar import ResNet9

    folder = make_release(tmp_path / "r", misclassified=False)
    state = safetensors.torch.load_file(str(folder / "model.safetensors"))
    state["layer1.conv.2.running_var"][3] = -1.0
    safetensors.torch.save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"negative BatchNorm variances in \['layer1.conv.2.running_var'\]"):
        ResNet9.from_pretrained(folder)


def test_a_config_with_a_byte_order_mark_is_refused_saying_what_to_send(tmp_path):
    from resnet_cifar import ResNet9

    folder = make_release(tmp_path / "r", misclassified=False)
    config = folder / "config.json"
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    with pytest.raises(ReleaseError, match="starts with a UTF-8 byte-order mark.*save it as UTF-8 without the mark"):
        ResNet9.from_pretrained(folder)


def test_a_deeply_nested_config_is_refused_not_a_recursion_error(tmp_path):
    from resnet_cifar import ResNet9

    folder = make_release(tmp_path / "r", misclassified=False)
    (folder / "config.json").write_text('{"num_classes": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ReleaseError, match="nested too deeply to be a release config"):
        ResNet9.from_pretrained(folder)


def test_a_weights_write_on_a_full_disk_is_an_os_error_naming_the_file(tmp_path):
    """RLIMIT_FSIZE makes the write fail as a full disk does (EFBIG, 'File too large'), in a child process."""
    import subprocess
    import sys

    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "from resnet_cifar import ResNet9\n"
        "try:\n"
        f"    ResNet9().save_pretrained({str(tmp_path / 'out')!r})\n"
        "except OSError as err:\n"
        "    print(type(err).__name__, err)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"OSError cannot write {tmp_path / 'out' / 'model.safetensors'}: "), done.stdout
    assert "(is the disk full or the folder read-only?)" in done.stdout


def test_upload_folder_is_not_one_commit_here_so_a_push_builds_its_own(tmp_path, monkeypatch):
    """resnet_cifar.hub.commit builds the push's one commit by hand because HfApi.upload_folder does not make one
    here: with hf_xet installed (huggingface_hub's own dependency) it streams through a multi-commit pipeline, so
    a failed push could leave part of a release on the Hub. Should this fail, upload_folder is one create_commit
    again, and hub.commit can become upload_folder(allow_patterns=..., delete_patterns=...)."""
    import huggingface_hub._upload_pipeline as pipeline
    from huggingface_hub import HfApi

    (tmp_path / "config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(HfApi, "create_commit", lambda self, *args, **kwargs: calls.append("create_commit"))
    monkeypatch.setattr(pipeline, "pipelined_upload", lambda *args, **kwargs: calls.append("multi-commit pipeline"))
    HfApi(token="hf_FAKEtoken0123456789").upload_folder(folder_path=tmp_path, repo_id="someone/x",
                                                       allow_patterns=["config.json"])
    assert calls == ["multi-commit pipeline"]
