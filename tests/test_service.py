"""resnet_cifar.service on its own: the Space's four requests without gradio, on images as a notebook has them
(paths, PIL images, arrays), and the repeated-request memory."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT, make_release
from PIL import Image

from resnet_cifar import release
from resnet_cifar.preprocess import ImageError, load_image
from resnet_cifar.service import RUNNER_UP, Service, contact_sheet


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    folder = make_release(tmp_path_factory.mktemp("release"))
    return Service(release.read(folder), EXAMPLES[:3], display_size=64, max_gradcam_images=4,
                   max_misclassified_shown=5, workers=1)


def test_the_service_imports_no_web_framework():
    code = "import sys, resnet_cifar.service; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('gradio', 'fastapi', 'starlette')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_image_is_a_path_a_pil_image_or_an_array_and_anything_else_is_refused(service, tmp_path):
    rgb = load_image(EXAMPLES[2])
    answers = [service.classify(image, 3) for image in (EXAMPLES[2], str(EXAMPLES[2]), Image.open(EXAMPLES[2]), rgb)]
    assert all(answer == answers[0] for answer in answers), answers
    assert list(answers[0]) == [name for name, _ in service.model.predict(rgb, top_k=3)[0]]
    (_, shown), = service.gradcam(Image.fromarray(rgb).convert("RGBA"), 1, "layer3", 0.5)
    assert shown.startswith("your image: ")
    with pytest.raises(ValueError, match="no image given; upload an image"):
        service.classify(None, 3)
    with pytest.raises(TypeError, match="cannot read an image from dict; pass a PIL image, a file path"):
        service.classify({"path": str(EXAMPLES[2]), "meta": {"_type": "gradio.FileData"}}, 3)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="not an image that can be read"):
        service.compare(tmp_path / "broken.png", RUNNER_UP, "layer3", 0.5)


def test_gradcam_takes_its_settings_and_shows_a_picked_example_once(service):
    picked = EXAMPLES[1]
    gallery = service.gradcam(picked, 4, "layer3", 0.5)
    sources = [caption.split(":")[0] for _, caption in gallery]
    third = EXAMPLES[2].stem.split("_", 1)[1]
    assert sources == ["your image", f"example {EXAMPLES[0].stem.split('_', 1)[1]}", f"example {third}"]
    assert all(image.shape == (64, 64, 3) and image.dtype == np.uint8 for image, _ in gallery)
    with pytest.raises(ValueError, match="count must be a whole number from 1 to 4"):
        service.gradcam(None, 5, "layer3", 0.5)


@pytest.mark.parametrize("count, layer, opacity, words", [
    (5, "layer3", 0.5, "count must be a whole number from 1 to 4"),
    (2, "layer9", 0.5, "unknown Grad-CAM layer 'layer9'"),
    (2, "layer3", 1.5, "opacity must be a number from 0 to 1, got 1.5"),
])
def test_the_gradcam_settings_are_checked_once_by_the_rules_every_request_uses(service, count, layer, opacity, words):
    with pytest.raises(ValueError, match=words) as checked:
        service.gradcam_settings(count, layer, opacity)
    with pytest.raises(ValueError) as requested:
        service.gradcam(None, count, layer, opacity)
    assert str(requested.value) == str(checked.value)
    assert service.gradcam_settings(2.0, "prep", 0) == (2, "prep", 0.0)


def test_classify_and_compare_agree_on_the_prediction(service):
    picked = str(EXAMPLES[0])
    top = service.classify(picked, 2)
    first, second = list(top)
    (_, predicted), (_, why_not) = service.compare(picked, RUNNER_UP, "layer2", 0.3)
    assert predicted.startswith(f"predicted: {first} (") and why_not.startswith(f"why not {second}? {second} (")
    with pytest.raises(ValueError, match=r"unknown class 'zebra'; allowed are airplane, .* or 'runner-up'"):
        service.compare(picked, "zebra", "layer2", 0.3)


def test_misclassified_is_capped_by_the_setting(service):
    assert service.num_misclassified == 5
    plain = service.misclassified(5, False, "layer3", 0.0)
    mis = service.release.misclassified
    expected = np.asarray(Image.fromarray(mis.images[0]).resize((64, 64), Image.BICUBIC))
    assert np.abs(plain[0][0].astype(int) - expected.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="count must be a whole number from 1 to 5"):
        service.misclassified(6, False, "layer3", 0.0)


def test_the_misclassified_sheet_is_the_gallery_tile_by_tile_with_its_index(service):
    gallery = service.misclassified(5, True, "layer2", 0.4)
    sheet, index = service.misclassified_sheet(5, True, "layer2", 0.4)
    assert sheet.shape == (64, 5 * 64, 3) and sheet.dtype == np.uint8
    assert index["columns"] == 5 and index["tile"] == 64
    mis, names = service.release.misclassified, service.model.class_names
    for i, ((image, caption), entry) in enumerate(zip(gallery, index["images"], strict=True)):
        row, column = divmod(i, index["columns"])
        assert np.array_equal(sheet[row * 64:(row + 1) * 64, column * 64:(column + 1) * 64], image)
        assert entry == {"caption": caption, "predicted": names[mis.predicted_labels[i]],
                         "probability": round(float(mis.probabilities[i]), 4), "true": names[mis.true_labels[i]]}
    with pytest.raises(ValueError, match="count must be a whole number from 1 to 5"):
        service.misclassified_sheet(0, False, "layer3", 0.0)


def test_a_contact_sheet_fills_rows_of_ten_and_pads_the_last_with_white():
    tiles = [np.full((4, 6, 3), i, dtype=np.uint8) for i in range(23)]
    sheet = contact_sheet(tiles)
    assert sheet.shape == (3 * 4, 10 * 6, 3)
    assert sheet[4:8, 12:18].min() == sheet[4:8, 12:18].max() == 12  # image 12: row 1, column 2
    assert sheet[8:12, 18:].min() == 255  # past image 22: white
    assert contact_sheet(tiles[:3]).shape == (4, 18, 3)
    with pytest.raises(ValueError, match="one size"):
        contact_sheet([tiles[0], np.zeros((5, 6, 3), np.uint8)])
    with pytest.raises(ValueError, match="at least one image"):
        contact_sheet([])


def test_examples_are_decoded_with_the_library_limits(service):
    assert [e.shape for e in service.examples] == [load_image(p).shape for p in EXAMPLES[:3]]
