"""ResNet9: architecture, config validation, strict safetensors-only loading from folders and Hub ids, predict."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

import resnet_cifar
from resnet_cifar import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, ResNet9, count_parameters

pytestmark = pytest.mark.usefixtures("single_thread")


class CreatesMarker:
    """Unpickling this runs open(marker, "w"): proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def write_pickle_bomb(path: Path, marker: Path) -> None:
    """A pytorch_model.bin whose unpickling creates `marker`."""
    path.write_bytes(pickle.dumps({"fc.weight": CreatesMarker(marker)}))


def write_config(folder: Path, **config) -> None:
    """Write config.json into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))


# --- architecture ---------------------------------------------------------------------------------------------


def test_architecture_and_parameter_count(model):
    assert count_parameters(model) == 6_573_130
    assert sum(p.numel() for p in model.parameters()) == 6_573_130
    assert [name for name, _ in model.named_children()][:4] == ["prep", "layer1", "layer2", "layer3"]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    assert [c.out_channels for c in convs] == [64, 128, 128, 128, 256, 512, 512, 512]
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert (model.fc.in_features, model.fc.out_features) == (512, 10)


def test_block_output_shapes_and_logits(model):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        shapes = []
        h = x
        for name in ("prep", "layer1", "layer2", "layer3"):
            h = getattr(model, name)(h)
            shapes.append(tuple(h.shape[1:]))
        logits = model(x)
    assert shapes == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
    assert logits.shape == (2, 10)
    assert (logits < 0).any() and not torch.allclose(logits.sum(1), torch.ones(2))  # logits, not probabilities


def test_default_config_attributes(model):
    assert model.num_classes == 10
    assert model.class_names == CIFAR10_CLASSES
    assert model.mean == CIFAR10_MEAN
    assert model.std == CIFAR10_STD


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"num_classes": 5}, "class_names"),
        ({"num_classes": 2, "class_names": ["a"]}, "class_names"),
        ({"num_classes": 2, "class_names": ["a", "a"]}, "distinct"),
        ({"num_classes": 2, "class_names": "ab"}, "class_names"),
        ({"num_classes": 1, "class_names": ["a"]}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.2, 0.2, 0.0)}, "std"),
        ({"std": (0.2, 0.2, 0.2, 0.2)}, "std"),
        ({"dropout": 1.0}, "dropout"),
        ({"logit_scale": 0.0}, "logit_scale"),
        ({"mean": (float("nan"), 0.5, 0.5)}, r"mean must be 3 numbers in \[0, 1\]"),
        ({"mean": (float("inf"), 0.5, 0.5)}, "mean"),
        ({"std": (1e-300, 0.2, 0.2)}, r"std must be 3 numbers in \[0.001, 1\]"),
        ({"std": (float("inf"), 0.2, 0.2)}, "std"),
        ({"std": ("0.2", 0.2, 0.2)}, "std"),
        ({"logit_scale": float("inf")}, r"logit_scale must be a number in \(0, 1000\]"),
        ({"logit_scale": "1"}, "logit_scale"),
        ({"num_classes": "10"}, r"num_classes must be an integer from 2 to 1000, got '10'"),
        ({"num_classes": 10**6, "class_names": [str(i) for i in range(10**6)]}, "num_classes must be an integer"),
        ({"class_names": {str(i): c for i, c in enumerate(CIFAR10_CLASSES)}}, "class_names must be"),
    ],
)
def test_bad_config_is_refused(kwargs, words):
    with pytest.raises(ValueError, match=words) as refused:
        ResNet9(**kwargs)
    assert len(str(refused.value)) < 400, "an error echoes what it got, never a whole payload"


@pytest.mark.parametrize("config, words", [
    ({"num_classes": 10, "mean": [float("nan"), 0.5, 0.5]}, "NaN is not a number a release may hold"),
    ({"num_classes": 10, "std": [0, 0.2, 0.2]}, r"config.json of '.*': std must be 3 numbers"),
    ({"num_classes": 10, "std": [1e-300, 0.2, 0.2]}, "std must be"),
    ({"num_classes": 10, "logit_scale": 1e999}, "Infinity is not a number"),
    ({"num_classes": "10"}, "num_classes must be an integer"),
    ({"num_classes": 10, "mean": ["0.5", 0.5, 0.5]}, "mean must be"),
    ({"num_classes": 10, "class_names": {"0": "airplane"}}, "class_names must be a list of names, got dict"),
    ({"num_classes": 10**6, "class_names": [str(i) for i in range(10**6)]}, "bytes; a release's JSON files are at most"),
    ({"num_classes": 10**6}, "num_classes must be an integer from 2 to 1000"),
])
def test_a_bad_config_file_is_refused_naming_the_file(release_dir, config, words):
    (release_dir / "config.json").write_text(json.dumps(config, allow_nan=True))
    with pytest.raises(ValueError, match=words) as refused:
        ResNet9.from_pretrained(release_dir)
    assert "config.json" in str(refused.value)
    assert len(str(refused.value)) < 500


@pytest.mark.parametrize("text, words", [
    ("[1, 2, 3]", "must hold a JSON object .*got a JSON list"),
    ('"num_classes"', "got a JSON str"),
    ("{not json", "is not valid JSON"),
])
def test_a_config_file_that_is_not_a_json_object_is_refused(release_dir, text, words):
    (release_dir / "config.json").write_text(text)
    with pytest.raises(ValueError, match=words):
        ResNet9.from_pretrained(release_dir)


def test_a_huge_class_list_is_refused_before_the_model_is_built(release_dir, monkeypatch):
    names = [f"c{i}" for i in range(10**6)]
    (release_dir / "config.json").write_text(json.dumps({"num_classes": 10**6, "class_names": names}))
    monkeypatch.setattr(nn.Linear, "__init__", lambda *a, **k: pytest.fail("a layer was allocated"))
    with pytest.raises(ValueError, match="at most 1,000,000"):
        ResNet9.from_pretrained(release_dir)


@pytest.mark.parametrize("dtype", [torch.int8, torch.float16, torch.float64])
def test_weights_of_another_dtype_are_refused(release_dir, dtype):
    state = safetensors.torch.load_file(release_dir / "model.safetensors")
    state["fc.weight"] = state["fc.weight"].to(dtype)
    safetensors.torch.save_file(state, release_dir / "model.safetensors")
    with pytest.raises(ValueError, match=rf"model.safetensors of .*fc.weight is {str(dtype)[6:]}.*float32"):
        ResNet9.from_pretrained(release_dir)


def test_non_finite_weights_are_refused(release_dir):
    state = safetensors.torch.load_file(release_dir / "model.safetensors")
    state["layer2.conv.0.weight"][0, 0, 0, 0] = float("nan")
    safetensors.torch.save_file(state, release_dir / "model.safetensors")
    with pytest.raises(ValueError, match=r"NaN or infinite values in \['layer2.conv.0.weight'\]"):
        ResNet9.from_pretrained(release_dir)


# --- save_pretrained -> from_pretrained ------------------------------------------------------------------------


def test_round_trip_restores_weights_config_and_eval_mode(tmp_path):
    torch.manual_seed(1)
    names = ["cat", "dog", "emu"]
    model = ResNet9(num_classes=3, class_names=names, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), dropout=0.1)
    with torch.no_grad():  # non-default batch-norm statistics, so a lost buffer changes the outputs
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    model.train()
    model.save_pretrained(tmp_path / "out")

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["class_names"] == names and config["num_classes"] == 3
    assert not list((tmp_path / "out").glob("*.bin"))

    loaded = ResNet9.from_pretrained(tmp_path / "out")
    assert isinstance(loaded, ResNet9)
    assert not loaded.training
    assert loaded.class_names == tuple(names)
    assert loaded.mean == (0.5, 0.4, 0.3) and loaded.std == (0.2, 0.25, 0.3)
    assert loaded.dropout.p == 0.1
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    assert got.shape == (4, 3)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_round_trip_of_a_loaded_model_keeps_its_config(release_dir, tmp_path):
    loaded = ResNet9.from_pretrained(release_dir)
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == json.loads(
        (release_dir / "config.json").read_text()
    )


def test_mismatched_num_classes_is_refused(release_dir):
    write_config(release_dir, num_classes=5, class_names=list("abcde"))
    with pytest.raises(ValueError, match=r"fc\.weight: weights \(10, 512\) vs config \(5, 512\)"):
        ResNet9.from_pretrained(release_dir)


def test_config_with_inconsistent_class_names_is_refused(release_dir):
    write_config(release_dir, num_classes=5)  # class_names falls back to the 10 CIFAR-10 names
    with pytest.raises(ValueError, match="class_names must list exactly num_classes=5"):
        ResNet9.from_pretrained(release_dir)


def test_unknown_config_key_is_refused(release_dir):
    write_config(release_dir, num_classes=10, width=2)
    with pytest.raises(ValueError, match=r"unknown keys \['width'\]"):
        ResNet9.from_pretrained(release_dir)


def test_missing_and_extra_weights_are_refused(release_dir):
    state = safetensors.torch.load_file(release_dir / "model.safetensors")
    extra = dict(state, **{"head.weight": torch.zeros(2)})
    safetensors.torch.save_file(extra, release_dir / "model.safetensors")
    with pytest.raises(ValueError, match=r"not in the model \['head\.weight'\]"):
        ResNet9.from_pretrained(release_dir)

    del state["fc.bias"]
    safetensors.torch.save_file(state, release_dir / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing from the weights \['fc\.bias'\]"):
        ResNet9.from_pretrained(release_dir)


def test_folder_without_weights_is_a_clear_error(tmp_path):
    write_config(tmp_path / "empty", num_classes=10)
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        ResNet9.from_pretrained(tmp_path / "empty")


def test_folder_without_config_is_a_clear_error(release_dir):
    (release_dir / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ResNet9.from_pretrained(release_dir)


@pytest.mark.parametrize("kind", ["missing folder", "file"])
def test_a_path_that_is_not_a_folder_is_a_clear_error(tmp_path, kind):
    path = tmp_path / "nope"
    if kind == "file":
        path.write_text("{}")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        ResNet9.from_pretrained(str(path))


def test_the_pickle_bomb_is_live(tmp_path):
    """Guard for the refusal tests: the payload really would run if anything unpickled it."""
    write_pickle_bomb(tmp_path / "bomb.bin", tmp_path / "ran")
    pickle.loads((tmp_path / "bomb.bin").read_bytes())
    assert (tmp_path / "ran").exists()


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path, monkeypatch):
    folder = tmp_path / "pickled"
    write_config(folder, num_classes=10)
    marker = tmp_path / "unpickled"
    write_pickle_bomb(folder / "pytorch_model.bin", marker)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(FileNotFoundError, match=r"safetensors only.*found only \['pytorch_model\.bin'\]"):
        ResNet9.from_pretrained(folder)
    assert not marker.exists()


class PlainMixinModel(nn.Module, PyTorchModelHubMixin):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 2)


def test_the_mixins_own_loading_is_why_resnet9_keeps_its_own(tmp_path, capsys, monkeypatch):
    """What PyTorchModelHubMixin._from_pretrained does by itself (huggingface_hub 2.4), each the reason
    ResNet9._from_pretrained stays: this fails the day the mixin loads quietly, strictly and safetensors-only."""
    from huggingface_hub import hub_mixin
    from huggingface_hub.errors import EntryNotFoundError

    folder = tmp_path / "plain"
    PlainMixinModel().save_pretrained(folder)
    state = safetensors.torch.load_file(folder / "model.safetensors")
    del state["fc.bias"]
    safetensors.torch.save_file(state, folder / "model.safetensors")
    capsys.readouterr()
    PlainMixinModel.from_pretrained(folder)  # a missing layer loads without a word: strict=False by default
    assert "Loading weights from local directory" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"missing from the weights \['fc\.bias'\]"):
        ResNet9.from_pretrained(write_release_without(tmp_path / "ours", "fc.bias"))
    assert capsys.readouterr().out == ""

    # A Hub repo without safetensors: the mixin downloads pytorch_model.bin and hands it to _load_as_pickle.
    fetched = []

    def download(repo_id, filename, **kwargs):
        fetched.append((filename, kwargs.get("library_name")))
        if filename == "model.safetensors":
            raise EntryNotFoundError("no model.safetensors")
        if filename == "pytorch_model.bin":
            return str(tmp_path / "bomb.bin")
        return str(folder / filename)

    write_pickle_bomb(tmp_path / "bomb.bin", tmp_path / "ran")
    monkeypatch.setattr(hub_mixin, "hf_hub_download", download)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    reached = []
    monkeypatch.setattr(PlainMixinModel, "_load_as_pickle",
                        classmethod(lambda cls, model, model_file, *a: reached.append(model_file) or model))
    PlainMixinModel._from_pretrained(model_id="someone/plain", revision=None, cache_dir=None, force_download=False,
                                     local_files_only=False, token=None)
    assert reached == [str(tmp_path / "bomb.bin")]
    assert ("pytorch_model.bin", None) in fetched, "downloaded, and untagged"
    # Ours refuses even there, without opening the file.
    with pytest.raises(FileNotFoundError, match="safetensors only"):
        ResNet9._load_as_pickle(ResNet9(), str(tmp_path / "bomb.bin"), "cpu", True)
    assert not (tmp_path / "ran").exists()


def write_release_without(folder: Path, key: str) -> Path:
    ResNet9().save_pretrained(folder)
    state = safetensors.torch.load_file(folder / "model.safetensors")
    del state[key]
    safetensors.torch.save_file(state, folder / "model.safetensors")
    return folder


def test_strict_false_still_available(release_dir):
    state = safetensors.torch.load_file(release_dir / "model.safetensors")
    del state["fc.bias"]
    safetensors.torch.save_file(state, release_dir / "model.safetensors")
    loaded = ResNet9.from_pretrained(release_dir, strict=False)
    assert loaded.fc.bias.shape == (10,)


# --- Hub repo ids: only hf_hub_download is faked ----------------------------------------------------------------


def test_from_hub_repo_id_with_revision(fake_hub, release_dir, model):
    fake_hub.add("someone/resnet9", release_dir)
    loaded = ResNet9.from_pretrained("someone/resnet9", revision="v1.0")
    assert not loaded.training
    assert {c["filename"] for c in fake_hub.calls} == {"config.json", "model.safetensors"}
    assert all(c["repo_id"] == "someone/resnet9" and c["revision"] == "v1.0" for c in fake_hub.calls)
    # The library's downloads say who asks, as timm's do: the Hub counts the library's users by it. (The
    # mixin fetches config.json once more itself, through the cache, without the tag: huggingface_hub's call.)
    tagged = [c["filename"] for c in fake_hub.calls
              if c.get("library_name") == "resnet-cifar" and c.get("library_version") == resnet_cifar.__version__]
    assert sorted(set(tagged)) == ["config.json", "model.safetensors"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_pickle_only_hub_repo_is_refused_without_downloading_the_pickle(fake_hub, tmp_path):
    folder = tmp_path / "pickled"
    write_config(folder, num_classes=10)
    marker = tmp_path / "unpickled"
    write_pickle_bomb(folder / "pytorch_model.bin", marker)
    fake_hub.add("someone/pickled", folder)
    with pytest.raises(FileNotFoundError, match="has no model.safetensors.*never unpickles"):
        ResNet9.from_pretrained("someone/pickled")
    assert "pytorch_model.bin" not in {c["filename"] for c in fake_hub.calls}
    assert not marker.exists()


def test_hub_repo_without_config_is_a_clear_error(fake_hub, release_dir):
    (release_dir / "config.json").unlink()
    fake_hub.add("someone/noconfig", release_dir)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ResNet9.from_pretrained("someone/noconfig")


# --- predict ----------------------------------------------------------------------------------------------------


def image(seed: int = 0, size: int = 32) -> np.ndarray:
    """A random uint8 HxWx3 image."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_predict_is_sorted_and_uses_config_names():
    torch.manual_seed(0)
    names = [f"class{i}" for i in range(6)]
    model = ResNet9(num_classes=6, class_names=names, logit_scale=3.0).eval()
    result = model.predict([image(0), image(1)], top_k=3)
    assert len(result) == 2
    probs = model.probabilities(model.preprocess([image(0), image(1)]))
    for row, p in zip(result, probs):
        assert len(row) == 3
        values = [v for _, v in row]
        assert values == sorted(values, reverse=True) and values[0] > values[-1]
        assert 0 < sum(values) <= 1
        assert {n for n, _ in row} <= set(names)
        assert row[0] == (names[int(p.argmax())], pytest.approx(float(p.max())))
    full = model.predict(image(0), top_k=6)[0]
    assert sorted(n for n, _ in full) == names
    assert sum(v for _, v in full) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("top_k", [0, 11, -1, 2.5, True, "3", None, float("nan")])
def test_predict_refuses_bad_top_k(model, top_k):
    with pytest.raises(ValueError, match="top_k must be a whole number from 1 to 10"):
        model.predict(image(), top_k=top_k)


@pytest.mark.parametrize("tta", ["no", 1, None])
def test_predict_refuses_a_tta_that_is_not_a_bool(model, tta):
    with pytest.raises(ValueError, match="tta must be True or False"):
        model.predict(image(), tta=tta)


@pytest.mark.parametrize("top_k", [1, 10, np.int64(4), 3.0])
def test_predict_top_k_limits(model, top_k):
    assert len(model.predict(image(), top_k=top_k)[0]) == top_k


def test_predict_with_tta_averages_the_mirror(model):
    img = image(3)
    # A mirror-symmetric image is its own flip: averaging must change nothing for it.
    symmetric = np.concatenate([img[:, :16], img[:, :16][:, ::-1]], axis=1)
    batch = model.preprocess([img, symmetric])
    with torch.no_grad():
        plain = F.softmax(model(batch), 1)
        expected = (plain + F.softmax(model(batch.flip(3)), 1)) / 2
    (name, p), (sym_name, sym_p) = (row[0] for row in model.predict([img, symmetric], top_k=1, tta=True))
    assert name == CIFAR10_CLASSES[int(expected[0].argmax())]
    assert p == pytest.approx(float(expected[0].max()), abs=1e-6)
    assert p != pytest.approx(float(plain[0].max()), abs=1e-7)  # the mirror did count
    assert sym_name == CIFAR10_CLASSES[int(plain[1].argmax())]
    assert sym_p == pytest.approx(float(plain[1].max()), abs=1e-6)


def test_predict_restores_training_mode(model):
    model.train()
    model.predict(image(), top_k=1)
    assert model.training
