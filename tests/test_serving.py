"""resnet_cifar.serving: the thread-safe explainer, content-named image files, memory given back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, assert_close_pixels, concurrently, rgba16_png
from PIL import Image

from resnet_cifar import ResNet9, load_image
from resnet_cifar.gradcam import explain
from resnet_cifar.serving import Explainer, return_freed_memory, save_image

pytestmark = pytest.mark.usefixtures("single_thread")


# --- the explainer ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def explainer():
    torch.manual_seed(0)
    e = Explainer(ResNet9().eval(), workers=2)
    yield e
    e.close()


def test_explainer_matches_the_library_and_keeps_requests_apart(explainer):
    images = [load_image(p) for p in EXAMPLES]
    model = explainer.model
    expected_probs = model.probabilities(model.preprocess(images))
    torch.testing.assert_close(explainer.probabilities(images), expected_probs, atol=1e-5, rtol=1e-4)
    expected = {layer: explain(model, model.preprocess(images), layer) for layer in ("prep", "layer3")}

    def work(i: int) -> tuple[str, tuple]:
        layer = ("prep", "layer3")[i % 2]
        return layer, explainer.explain(images, layer)

    for layer, (maps, probs) in concurrently(work, 8):
        torch.testing.assert_close(maps, expected[layer], atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(probs, expected_probs, atol=1e-5, rtol=1e-4)


def test_large_images_are_decoded_one_at_a_time(explainer, tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    big.write_bytes(rgba16_png(2500, 2000))
    inside, most = 0, 0
    lock = threading.Lock()
    from resnet_cifar import serving

    real = serving.load_image

    def counting(path):
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        try:
            time.sleep(0.05)
            return real(path)
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(serving, "load_image", counting)
    threads = [threading.Thread(target=explainer.load_image, args=(big,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 1, "large decodes wait their turn"
    small = [threading.Thread(target=explainer.load_image, args=(EXAMPLES[0],)) for _ in range(4)]
    most = 0
    for t in small:
        t.start()
    for t in small:
        t.join()
    assert most > 1, "small images do not queue behind each other"


def test_save_image_is_named_by_content_and_written_once(tmp_path):
    image = np.asarray(Image.open(EXAMPLES[0]).convert("RGB").resize((160, 160), Image.BICUBIC))  # a gallery's size
    first, again = save_image(image, tmp_path), save_image(image, tmp_path)
    assert first == again and Path(first).suffix == ".jpg"
    assert_close_pixels(np.asarray(Image.open(first)), image)
    assert [p.name for p in tmp_path.iterdir()] == [Path(first).name], "no partial file left behind"
    other = save_image(image[::-1].copy(), tmp_path)
    assert other != first and sorted(p.name for p in tmp_path.iterdir()) == sorted({Path(first).name, Path(other).name})


def test_freed_memory_goes_back_to_the_system_on_glibc():
    assert return_freed_memory() is True



