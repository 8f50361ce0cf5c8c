"""misclassified.safetensors: save/load round trip from a folder and a Hub repo id, and shape validation."""

import numpy as np
import pytest
import safetensors.numpy

from resnet_cifar.artifacts import MISCLASSIFIED_NAME, MisclassifiedSet, load_misclassified, save_misclassified


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
    assert fake_hub.calls == [{"repo_id": "someone/resnet9", "filename": MISCLASSIFIED_NAME, "revision": "v2"}]


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
